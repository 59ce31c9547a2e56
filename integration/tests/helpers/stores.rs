//! Looking at what the stores hold from the outside: DirStore shard files, raw bytes of every file under a
//! store's directory (for "no plaintext leaves the client" checks), and corrupting shard files in place.

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Every regular file under `root`, recursively (empty when `root` does not exist).
pub fn all_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Magics of the metadata log's objects (records, head, lease, descriptor, snapshot pieces and the previous
/// release's whole snapshot chunks), which dir stores keep beside the shards.
pub const METADATA_MAGICS: [&[u8; 8]; 6] = [
    b"QSFSLOG1",
    b"QSFSHED1",
    b"QSFSLSE1",
    b"QSFSVOL1",
    b"QSFSSNP2",
    b"QSFSSNP1",
];

/// Whether a stored blob is one of the metadata log's objects rather than a shard.
pub fn is_metadata_object(bytes: &[u8]) -> bool {
    METADATA_MAGICS.iter().any(|m| bytes.starts_with(&m[..]))
}

/// The shard files of the DirStore rooted at `store_dir` (not the metadata log's objects beside them), checking
/// the `shards/ab/cd/<hex>` layout.
pub fn shard_files(store_dir: &Path) -> Vec<PathBuf> {
    let shards = store_dir.join("shards");
    let files: Vec<PathBuf> = all_files(&shards)
        .into_iter()
        // A put in flight writes a temporary file first (a mount busy writing has some at any moment).
        .filter(|f| {
            !f.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .filter(|f| {
            let mut head = [0u8; 8];
            let n = fs::File::open(f)
                .and_then(|mut h| std::io::Read::read(&mut h, &mut head))
                .unwrap_or(0);
            !is_metadata_object(&head[..n])
        })
        .collect();
    for f in &files {
        let rel = f.strip_prefix(&shards).unwrap();
        let parts: Vec<&str> = rel.iter().map(|c| c.to_str().unwrap()).collect();
        let hex = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_hexdigit());
        assert!(
            parts.len() == 3
                && parts[0].len() == 2
                && parts[1].len() == 2
                && parts.iter().all(|p| hex(p)),
            "DirStore file {} is not at shards/ab/cd/<hex>",
            f.display()
        );
    }
    files
}

/// Files under `root` whose bytes contain `needle`.
pub fn files_containing(root: &Path, needle: &[u8]) -> Vec<PathBuf> {
    assert!(!needle.is_empty());
    all_files(root)
        .into_iter()
        .filter(|f| {
            let mut data = Vec::new();
            // A file may vanish while we scan (e.g. a redis rewrite); that is not a hit.
            if fs::File::open(f)
                .and_then(|mut h| h.read_to_end(&mut data))
                .is_err()
            {
                return false;
            }
            contains(&data, needle)
        })
        .collect()
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.len() >= needle.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Flips (XOR 0xFF) `n` bytes at each of several places in `path`: the middle and near the end, where shard
/// payload lives whatever header the store format has. Leaves the length unchanged.
pub fn flip_bytes(path: &Path, n: u64) {
    let len = fs::metadata(path).unwrap().len();
    assert!(len > 0, "cannot corrupt empty file {}", path.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut places = vec![len / 2, len.saturating_sub(n + 1)];
    places.dedup();
    for at in places {
        let k = n.min(len - at) as usize;
        let mut buf = vec![0u8; k];
        f.seek(SeekFrom::Start(at)).unwrap();
        f.read_exact(&mut buf).unwrap();
        for b in &mut buf {
            *b ^= 0xFF;
        }
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}
