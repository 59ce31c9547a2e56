//! Writing one new shard file durably, bypassing the page cache (O_DIRECT) for large shards when the filesystem
//! allows it.
//!
//! Why bypass: a shard is written once and read back rarely (reads go through qsfs's own cache of decoded
//! segments), so copying it into the page cache only to flush it at the fsync costs CPU — in a sequential-write
//! profile of the mount, that kernel copy was the largest single item — and evicts pages other programs use.
//! Small shards stay buffered: for them the copy is nothing next to the fsync, and padding them to the block size
//! would only add I/O. Filesystems without O_DIRECT (tmpfs, many FUSE filesystems) refuse it with EINVAL; the
//! store remembers that and writes buffered from then on.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::libc;

/// Buffer address, file offset and length alignment O_DIRECT needs (the largest logical block size in use).
const ALIGN: usize = 4096;
/// Shards at least this large are written with O_DIRECT.
pub const DIRECT_MIN: usize = 256 * 1024;

/// A shard's bytes, owned, ready for a blocking write. Large shards sit at an O_DIRECT-aligned address with zero
/// padding up to the next block, so building this is the only copy a put makes.
pub struct ShardBytes {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    aligned: bool,
}

impl ShardBytes {
    /// Copies `data`, aligned for O_DIRECT when it is large and `direct` is still believed to work.
    pub fn new(data: &[u8], direct: &DirectSupport) -> ShardBytes {
        if data.len() < DIRECT_MIN || !direct.enabled() {
            return ShardBytes {
                buf: data.to_vec(),
                start: 0,
                len: data.len(),
                aligned: false,
            };
        }
        let padded = data.len().next_multiple_of(ALIGN);
        let mut buf: Vec<u8> = Vec::with_capacity(padded + ALIGN);
        let start = buf.as_ptr().align_offset(ALIGN);
        // Only the few bytes before the aligned start and after the data are zero-filled, never the whole buffer.
        buf.resize(start, 0);
        buf.extend_from_slice(data);
        buf.resize(start + padded, 0);
        ShardBytes {
            buf,
            start,
            len: data.len(),
            aligned: true,
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    fn padded(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Whether O_DIRECT works on one store's filesystem: assumed until the filesystem refuses it once.
#[derive(Debug)]
pub struct DirectSupport(AtomicBool);

impl DirectSupport {
    pub fn new() -> DirectSupport {
        DirectSupport(AtomicBool::new(true))
    }

    fn enabled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn refused(&self, path: &Path) {
        if self.0.swap(false, Ordering::Relaxed) {
            tracing::debug!(path = %path.display(), "filesystem refuses O_DIRECT; writing shards buffered");
        }
    }
}

impl Default for DirectSupport {
    fn default() -> Self {
        DirectSupport::new()
    }
}

/// Creates `path` (which must not exist) holding exactly `bytes`, and fsyncs it. The caller renames it into place
/// and fsyncs the directory.
pub fn write_new(path: &Path, bytes: &ShardBytes, direct: &DirectSupport) -> io::Result<()> {
    if bytes.aligned && direct.enabled() {
        match write_direct(path, bytes) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                direct.refused(path);
                // A refused O_DIRECT write may have created the file; start over buffered.
                match fs::remove_file(path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        }
    }
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes.as_slice())?;
    f.sync_all()
}

fn write_direct(path: &Path, bytes: &ShardBytes) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    f.write_all(bytes.padded())?;
    // The padding was only there to satisfy the alignment rule: cut the file back to the shard's length.
    f.set_len(bytes.len as u64)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_shards_round_trip_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let direct = DirectSupport::new();
        for (i, len) in [
            0,
            1,
            4095,
            4096,
            DIRECT_MIN - 1,
            DIRECT_MIN,
            DIRECT_MIN + 4097,
        ]
        .into_iter()
        .enumerate()
        {
            let data: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            let bytes = ShardBytes::new(&data, &direct);
            assert_eq!(bytes.aligned, len >= DIRECT_MIN);
            assert!(bytes.as_slice() == &data[..]);
            let path = dir.path().join(format!("s{i}"));
            write_new(&path, &bytes, &direct).unwrap();
            assert!(
                fs::read(&path).unwrap() == data,
                "wrong bytes at length {len}"
            );
        }
    }

    #[test]
    fn falls_back_to_buffered_when_o_direct_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let direct = DirectSupport::new();
        let data = vec![9u8; DIRECT_MIN + 1];
        let mut bytes = ShardBytes::new(&data, &direct);
        // Knock the buffer off its alignment: the kernel answers the O_DIRECT write with EINVAL, as a filesystem
        // without O_DIRECT would.
        bytes.buf.insert(0, 0);
        bytes.start += 1;
        assert_ne!(bytes.padded().as_ptr().align_offset(ALIGN), 0);
        let path = dir.path().join("s");
        write_new(&path, &bytes, &direct).unwrap();
        assert!(
            fs::read(&path).unwrap() == data,
            "wrong bytes after the fallback"
        );
        assert!(
            !direct.enabled(),
            "a misaligned O_DIRECT write was accepted?"
        );
        // Later large shards are built unaligned and written buffered.
        assert!(!ShardBytes::new(&data, &direct).aligned);
    }

    #[test]
    fn refuses_to_overwrite_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        fs::write(&path, b"old").unwrap();
        let direct = DirectSupport::new();
        let bytes = ShardBytes::new(&vec![1u8; DIRECT_MIN], &direct);
        assert!(write_new(&path, &bytes, &direct).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }
}
