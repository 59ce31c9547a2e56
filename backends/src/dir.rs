//! `DirStore`: the embedded default store, one immutable file per shard in a local directory.
//!
//! Layout under the root:
//! - `qsfs-store.id`: the identity marker (`StoreIdentity::encode` text), created once, never overwritten.
//! - `shards/ab/cd/<hex locator>`: one file per shard, fanned out by the locator's first two bytes so no
//!   directory grows huge.
//! - `shards/ab/cd/.tmp-…`: a put in progress (or left by a crash); never listed, removed by `list` once stale.
//!
//! Durability: a put writes a temp file in the shard's final directory, fsyncs it, renames it into place and
//! fsyncs the directory (and the parents of any fan-out directory it created), so a put that returned survives a
//! crash and a put that did not leaves at most a temp file. Large shards are written with O_DIRECT where the
//! filesystem allows (`shard_file`). Files are never modified in place; a second put of the same key atomically
//! replaces the file with identical (or healed) content.
//!
//! Unmounted disks: `shards/` is created only when the store is created (`open(create = true)`); puts never
//! create it. So if the disk behind the root vanishes, the root is an empty mount point and every operation
//! answers `Unavailable` instead of quietly filling the root filesystem.
//!
//! Blocking file I/O runs on tokio's blocking pool (`spawn_blocking`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use crate::error::{Result, StoreError};
use crate::fanout::{FanoutDir, KnownDirs};
use crate::shard_file::{self, DirectSupport, ShardBytes};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};

const MARKER: &str = "qsfs-store.id";
const SHARDS: &str = "shards";
const TMP_PREFIX: &str = ".tmp-";
/// An identity marker is a few short lines: anything bigger at its path is not one (and is not read).
const MARKER_MAX: u64 = 4096;
/// Temp files older than this are leftovers of a crash (no put takes an hour), so `list` removes them.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// A shard store in a local directory.
#[derive(Debug, Clone)]
pub struct DirStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    uri: String,
    direct: DirectSupport,
    known_dirs: KnownDirs,
}

impl DirStore {
    /// Opens the store at `root` (an absolute path). With `create` the directory (and `shards/`) are created if
    /// missing; without it a missing root or `shards/` is `Unavailable` and nothing is created.
    pub async fn open(root: impl AsRef<Path>, create: bool) -> Result<DirStore> {
        let root = root.as_ref().to_path_buf();
        let uri = format!("dir:{}", root.display());
        let inner = Arc::new(Inner {
            root,
            uri,
            direct: DirectSupport::new(),
            known_dirs: KnownDirs::new(),
        });
        let i = inner.clone();
        blocking(&inner.uri, move || i.open(create)).await?;
        Ok(DirStore { inner })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the shard with locator `loc` lives (for tests and tools that inspect or damage files on purpose).
    pub fn shard_path(&self, loc: &Locator) -> Option<PathBuf> {
        self.inner.shard_path(loc)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(&self.inner.uri, move || f(&inner)).await
    }
}

async fn blocking<T: Send + 'static>(
    uri: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Io {
            uri: uri.to_string(),
            source: io::Error::other(format!("blocking task failed: {e}")),
        }),
    }
}

impl Inner {
    fn io(&self, e: io::Error) -> StoreError {
        // ENOSPC / EDQUOT: the disk or the quota is full; the caller places shards elsewhere.
        match e.raw_os_error() {
            Some(code) if code == nix::libc::ENOSPC || code == nix::libc::EDQUOT => {
                StoreError::Full {
                    uri: self.uri.clone(),
                }
            }
            _ => StoreError::Io {
                uri: self.uri.clone(),
                source: e,
            },
        }
    }

    fn unavailable(&self, reason: String) -> StoreError {
        StoreError::Unavailable {
            uri: self.uri.clone(),
            reason,
        }
    }

    fn shards_dir(&self) -> PathBuf {
        self.root.join(SHARDS)
    }

    fn open(&self, create: bool) -> Result<()> {
        if !self.root.is_absolute() {
            return Err(StoreError::InvalidUri {
                uri: self.uri.clone(),
                reason: "directory path must be absolute".into(),
            });
        }
        if create {
            fs::create_dir_all(&self.root).map_err(|e| self.io(e))?;
            match fs::create_dir(self.shards_dir()) {
                Ok(()) => {
                    sync_dir(&self.root).map_err(|e| self.io(e))?;
                    if let Some(parent) = self.root.parent() {
                        sync_dir(parent).map_err(|e| self.io(e))?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(self.io(e)),
            }
        }
        self.check_present()
    }

    /// The root and its `shards/` must exist: otherwise the disk is probably not mounted.
    fn check_present(&self) -> Result<()> {
        match fs::metadata(self.shards_dir()) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(self.unavailable(format!(
                "{} is not a directory",
                self.shards_dir().display()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.root.is_dir() {
                    Err(self.unavailable(format!(
                        "{} has no {SHARDS}/ directory: not a qsfs store, or the disk is not mounted",
                        self.root.display()
                    )))
                } else {
                    Err(self.unavailable(format!(
                        "directory {} does not exist (disk not mounted?); it is created only at volume init",
                        self.root.display()
                    )))
                }
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// `shards/ab/cd/<hex>`; `None` for locators this store never hands out (it only names shards by 32-byte keys).
    fn shard_path(&self, loc: &Locator) -> Option<PathBuf> {
        if loc.0.len() != 32 {
            return None;
        }
        let hex = loc.to_hex();
        Some(
            self.shards_dir()
                .join(&hex[0..2])
                .join(&hex[2..4])
                .join(hex),
        )
    }

    fn not_found(&self) -> StoreError {
        StoreError::NotFound {
            uri: self.uri.clone(),
        }
    }

    fn refused(&self, reason: String) -> StoreError {
        StoreError::Refused {
            uri: self.uri.clone(),
            reason,
        }
    }

    /// Opens a shard for reading and returns it with its size; a missing file is `NotFound` unless the whole store
    /// is missing. Nothing at the path is trusted: a symlink is not followed, a FIFO or device is opened without
    /// blocking and refused, and the type and size come from the open descriptor (no race with a swap).
    fn open_shard(&self, loc: &Locator) -> Result<(File, u64)> {
        let path = self.shard_path(loc).ok_or_else(|| self.not_found())?;
        match open_regular(&path) {
            Ok(Ok(opened)) => Ok(opened),
            Ok(Err(what)) => Err(self.refused(format!("{} is {what}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.check_present()?;
                Err(self.not_found())
            }
            Err(e) => Err(self.io(e)),
        }
    }

    /// Creates `dir` (one level) if missing and fsyncs its parent so the new entry is durable. Never creates
    /// `shards/` itself: see the module docs.
    fn ensure_dir(&self, dir: &Path) -> Result<()> {
        match fs::create_dir(dir) {
            Ok(()) => {
                sync_dir(dir.parent().expect("fan-out dir has a parent")).map_err(|e| self.io(e))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.check_present()?;
                Err(self.io(e))
            }
            Err(e) => Err(self.io(e)),
        }
    }

    fn put(&self, key: &ShardKey, data: &ShardBytes) -> Result<Locator> {
        let loc = Locator::from_key(key);
        let path = self.shard_path(&loc).expect("32-byte locator");
        let dir = path.parent().expect("shard path has a parent");
        let fanout = [
            (
                dir.parent().expect("fan-out has two levels"),
                FanoutDir::Top(loc.0[0]),
            ),
            (dir, FanoutDir::Leaf(loc.0[0], loc.0[1])),
        ];
        for (d, bit) in fanout {
            if !self.known_dirs.contains(bit) {
                self.ensure_dir(d)?;
                self.known_dirs.insert(bit);
            }
        }
        let tmp = dir.join(format!(
            "{TMP_PREFIX}{}-{:016x}",
            key.to_hex(),
            rand::random::<u64>()
        ));
        let write = || -> io::Result<()> {
            shard_file::write_new(&tmp, data, &self.direct)?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)
        };
        let mut result = write();
        if result
            .as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::NotFound)
        {
            // A fan-out directory believed to exist was removed behind our back: create it again, once.
            for (d, bit) in fanout {
                self.known_dirs.remove(bit);
                self.ensure_dir(d)?;
                self.known_dirs.insert(bit);
            }
            result = write();
        }
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(e));
        }
        Ok(loc)
    }

    fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        let (f, len) = self.open_shard(loc)?;
        if len > max_len {
            return Err(self.refused(format!(
                "shard file holds {len} bytes, more than the {max_len} expected"
            )));
        }
        // read_to_end fills the spare capacity without zero-filling it first; `take` keeps a file that grows
        // while read within the bound.
        let mut buf = Vec::with_capacity(len as usize);
        (&f).take(len)
            .read_to_end(&mut buf)
            .map_err(|e| self.io(e))?;
        if buf.len() as u64 != len {
            return Err(self.io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "shard file shrank from {len} to {} bytes while read",
                    buf.len()
                ),
            )));
        }
        Ok(buf)
    }

    fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        let (f, size) = self.open_shard(loc)?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(StoreError::RangeOutOfBounds {
                uri: self.uri.clone(),
                offset,
                len,
                size,
            });
        }
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, offset).map_err(|e| self.io(e))?;
        Ok(buf)
    }

    fn delete(&self, loc: &Locator) -> Result<()> {
        let Some(path) = self.shard_path(loc) else {
            return Ok(());
        };
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            // Absent is success, but only if the store itself is there: an unmounted disk is not "deleted".
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_present(),
            Err(e) => Err(self.io(e)),
        }
    }

    fn exists(&self, loc: &Locator) -> Result<bool> {
        let Some(path) = self.shard_path(loc) else {
            return Ok(false);
        };
        match fs::metadata(&path) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.check_present().map(|()| false),
            Err(e) => Err(self.io(e)),
        }
    }

    fn probe(&self) -> Result<StoreHealth> {
        self.check_present()?;
        let st = nix::sys::statvfs::statvfs(&self.root)
            .map_err(|e| self.io(io::Error::from_raw_os_error(e as i32)))?;
        let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64);
        Ok(StoreHealth {
            free_bytes: Some(free),
            used_bytes: None,
        })
    }

    fn list(&self) -> Result<Vec<Locator>> {
        self.check_present()?;
        let mut out = Vec::new();
        let now = SystemTime::now();
        for l1 in read_dir_sorted(&self.shards_dir()).map_err(|e| self.io(e))? {
            if !is_fanout_name(&l1) {
                continue;
            }
            let l1_path = self.shards_dir().join(&l1);
            for l2 in read_dir_sorted(&l1_path).map_err(|e| self.io(e))? {
                if !is_fanout_name(&l2) {
                    continue;
                }
                let l2_path = l1_path.join(&l2);
                for name in read_dir_sorted(&l2_path).map_err(|e| self.io(e))? {
                    if name.starts_with(TMP_PREFIX) {
                        remove_if_stale(&l2_path.join(&name), now);
                        continue;
                    }
                    // Only well-formed names in the right fan-out slot count; anything else is not ours.
                    match hex::decode(&name) {
                        Ok(bytes)
                            if bytes.len() == 32 && name.starts_with(&format!("{l1}{l2}")) =>
                        {
                            out.push(Locator(bytes))
                        }
                        _ => {
                            tracing::debug!(store = %self.uri, file = %name, "ignoring unknown file in shard directory")
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.check_present()?;
        let marker = self.root.join(MARKER);
        let tmp = self.root.join(format!(
            "{TMP_PREFIX}{MARKER}-{:016x}",
            rand::random::<u64>()
        ));
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&identity.encode())?;
            f.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(e));
        }
        // link(2) creates the marker only if absent, atomically: a racing or repeated init cannot overwrite it.
        let linked = fs::hard_link(&tmp, &marker);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => sync_dir(&self.root).map_err(|e| self.io(e)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => match self.read_identity()? {
                Some(found) => Err(StoreError::IdentityExists {
                    uri: self.uri.clone(),
                    volume: found.volume_id,
                    store: found.store_id,
                }),
                None => {
                    Err(self.unavailable("identity marker vanished while being written".into()))
                }
            },
            Err(e) => Err(self.io(e)),
        }
    }

    fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        if self.read_identity()?.as_ref() != Some(identity) {
            return Ok(());
        }
        match fs::remove_file(self.root.join(MARKER)) {
            Ok(()) => sync_dir(&self.root).map_err(|e| self.io(e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        let marker = self.root.join(MARKER);
        let read = open_regular(&marker).and_then(|opened| match opened {
            Ok((f, len)) if len <= MARKER_MAX => {
                let mut bytes = Vec::new();
                (&f).take(MARKER_MAX).read_to_end(&mut bytes)?;
                Ok(Ok(bytes))
            }
            Ok((_, len)) => Ok(Err(format!("{len} bytes"))),
            Err(what) => Ok(Err(what.to_string())),
        });
        match read {
            Ok(Err(what)) => Err(self.refused(format!(
                "{} is not a qsfs identity marker ({what})",
                marker.display()
            ))),
            Ok(Ok(bytes)) => {
                StoreIdentity::decode(&bytes)
                    .map(Some)
                    .ok_or_else(|| StoreError::Protocol {
                        uri: self.uri.clone(),
                        reason: format!("{MARKER} is not a qsfs identity marker"),
                    })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.root.is_dir() {
                    Ok(None)
                } else {
                    self.check_present().map(|()| None)
                }
            }
            Err(e) => Err(self.io(e)),
        }
    }
}

/// Opens `path` for reading if it is a regular file: `Ok(Err(what it is))` for a symlink, FIFO, device, socket or
/// directory. O_NOFOLLOW refuses a symlink (ELOOP); O_NONBLOCK makes opening a FIFO with no writer return at once
/// instead of hanging (it changes nothing for regular files); fstat on the descriptor gives the type and size of
/// what was actually opened.
fn open_regular(path: &Path) -> io::Result<std::result::Result<(File, u64), &'static str>> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = match OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => return Ok(Err("a symlink")),
        // Opening a FIFO for reading never blocks with O_NONBLOCK; ENXIO is the write-side answer, kept for devices.
        Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => return Ok(Err("a special file")),
        Err(e) => return Err(e),
    };
    let meta = f.metadata()?;
    let kind = meta.file_type();
    if kind.is_file() {
        return Ok(Ok((f, meta.len())));
    }
    Ok(Err(if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn is_fanout_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn read_dir_sorted(dir: &Path) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn remove_if_stale(path: &Path, now: SystemTime) {
    let stale = fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP)
        .unwrap_or(false);
    if stale {
        tracing::info!(file = %path.display(), "removing temp file left by an interrupted put");
        let _ = fs::remove_file(path);
    }
}

#[async_trait]
impl ShardStore for DirStore {
    fn uri(&self) -> &str {
        &self.inner.uri
    }

    fn supports_range(&self) -> bool {
        true
    }

    fn max_value_size(&self) -> Option<u64> {
        None
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        let key = *key;
        // The blocking pool needs owned data: this copy (aligned for O_DIRECT when large) is the only one.
        let data = ShardBytes::new(data, &self.inner.direct);
        self.run(move |i| i.put(&key, &data)).await
    }

    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        let loc = loc.clone();
        self.run(move |i| i.get(&loc, max_len)).await
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        let loc = loc.clone();
        self.run(move |i| i.get_range(&loc, offset, len)).await
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        let loc = loc.clone();
        self.run(move |i| i.delete(&loc)).await
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        let loc = loc.clone();
        self.run(move |i| i.exists(&loc)).await
    }

    async fn probe(&self) -> Result<StoreHealth> {
        self.run(|i| i.probe()).await
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        self.run(|i| i.list()).await
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        let identity = identity.clone();
        self.run(move |i| i.write_identity(&identity)).await
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        self.run(|i| i.read_identity()).await
    }

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        let identity = identity.clone();
        self.run(move |i| i.remove_identity(&identity)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_disk_and_quota_are_full() {
        let inner = Inner {
            root: "/x".into(),
            uri: "dir:/x".into(),
            direct: DirectSupport::new(),
            known_dirs: KnownDirs::new(),
        };
        for code in [nix::libc::ENOSPC, nix::libc::EDQUOT] {
            let e = inner.io(io::Error::from_raw_os_error(code));
            assert!(matches!(e, StoreError::Full { .. }), "{e}");
        }
        let e = inner.io(io::Error::from_raw_os_error(nix::libc::EIO));
        assert!(
            matches!(e, StoreError::Io { .. }) && !e.is_retryable(),
            "{e}"
        );
    }
}
