//! Owner-only local files. Everything qsfs keeps in a volume directory is plaintext (staging and queued segments,
//! small files inline in `meta.db`), a secret (`key`, store passwords in `qsfs.toml`) or a way to one (the argon2
//! salt and key check value allow offline passphrase guessing). So this module creates the volume's directories
//! mode 0700 and its files mode 0600 whatever the umask, and refuses to open a volume whose directory or config
//! group or others can read or change (the check is `qsfs_backends::secret::exposure`, shared with the key file and
//! store password files).

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{QsfsError, Result};

/// Creates `path` (and missing parents) mode 0700; an existing directory keeps its mode.
pub fn create_dir_all(path: &Path) -> Result<()> {
    let existed = path.is_dir();
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| QsfsError::io(format!("creating {}", path.display()), e))?;
    if !existed {
        // The umask could only have taken bits away; this makes the mode exact.
        std::fs::set_permissions(path, Permissions::from_mode(0o700))
            .map_err(|e| QsfsError::io(format!("setting the mode of {}", path.display()), e))?;
    }
    Ok(())
}

/// Options that create a file mode 0600 (the umask can only take more away).
pub fn file_options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(0o600);
    o
}

/// Refuses `path` if group or others can read, write or enter it, naming the `chmod` that fixes it.
pub fn check(path: &Path) -> Result<()> {
    match qsfs_backends::secret::exposure(path) {
        Ok(None) => Ok(()),
        Ok(Some(reason)) => Err(QsfsError::Exposed {
            path: path.to_path_buf(),
            reason,
        }),
        Err(e) => Err(QsfsError::io(format!("checking {}", path.display()), e)),
    }
}

/// Prepares `root` to become a volume directory: creates it 0700, or takes an existing empty directory and makes
/// it 0700. An existing directory with contents that others can reach is refused rather than chmodded: it is the
/// user's, and its other contents may need their access.
pub fn prepare_volume_dir(root: &Path) -> Result<()> {
    if !root.exists() {
        return create_dir_all(root);
    }
    if check(root).is_ok() {
        return Ok(());
    }
    let empty = std::fs::read_dir(root)
        .map_err(|e| QsfsError::io(format!("reading {}", root.display()), e))?
        .next()
        .is_none();
    if !empty {
        return check(root);
    }
    std::fs::set_permissions(root, Permissions::from_mode(0o700))
        .map_err(|e| QsfsError::io(format!("setting the mode of {}", root.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn volume_directories_become_private_or_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b");
        prepare_volume_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::set_permissions(&empty, Permissions::from_mode(0o755)).unwrap();
        prepare_volume_dir(&empty).unwrap();
        assert_eq!(mode(&empty), 0o700);
        let full = tmp.path().join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("x"), b"x").unwrap();
        std::fs::set_permissions(&full, Permissions::from_mode(0o755)).unwrap();
        let e = prepare_volume_dir(&full).unwrap_err().to_string();
        assert!(e.contains("chmod 700"), "{e}");
        assert_eq!(mode(&full), 0o755, "a user's directory is never chmodded");
    }

    #[test]
    fn files_are_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        file_options()
            .write(true)
            .create_new(true)
            .open(&p)
            .unwrap();
        assert_eq!(mode(&p), 0o600);
        check(&p).unwrap();
        std::fs::set_permissions(&p, Permissions::from_mode(0o604)).unwrap();
        assert!(check(&p).unwrap_err().to_string().contains("chmod 600"));
    }
}
