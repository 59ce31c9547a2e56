//! The local machine and the user's input as adversaries: symlinks planted where `get` writes, permissions of
//! what qsfs leaves on disk, secrets that must never reach argv, a terminal or an error line, and inputs (paths,
//! names, numbers, timestamps) that must give one clear error instead of a panic or a silent surprise.

mod get;
mod input;
mod perms;
mod secrets;

/// Unmounts (forcibly) a mount a test left behind, also when the test fails.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if crate::fuse::mount::is_fuse_mount(&self.0) {
            crate::fuse::mount::force_unmount(&self.0);
        }
    }
}
