//! Building trees of test files (empty files, odd sizes around segment boundaries, large random files, nested
//! and empty directories) and comparing two trees byte for byte.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

pub const MIB: u64 = 1024 * 1024;

/// What a tree holds, for checking `status` counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TreeInfo {
    pub files: u64,
    /// Directories, the tree's root included.
    pub directories: u64,
    pub bytes: u64,
}

impl TreeInfo {
    pub fn of(root: &Path) -> TreeInfo {
        let mut info = TreeInfo::default();
        for (_, entry) in walk(root) {
            match entry {
                Entry::Dir => info.directories += 1,
                Entry::File(len) => {
                    info.files += 1;
                    info.bytes += len;
                }
            }
        }
        info
    }
}

/// Writes `len` bytes of seeded random data to `path` (parent directories created).
pub fn random_file(path: &Path, len: u64, seed: u64) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut w = BufWriter::new(File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    w.flush().unwrap();
}

/// Writes about `len` bytes of highly compressible text with `marker` on every line.
pub fn text_file(path: &Path, len: u64, marker: &str) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    let mut w = BufWriter::new(File::create(path).unwrap());
    let mut written = 0u64;
    let mut i = 0u64;
    while written < len {
        let line = format!("line {i:08}: {marker} the quick brown fox jumps over the lazy dog\n");
        w.write_all(line.as_bytes()).unwrap();
        written += line.len() as u64;
        i += 1;
    }
    w.flush().unwrap();
}

/// Builds the standard test tree under `root` (created) for a volume with `segment_size`:
/// empty files, 1-byte and odd-sized files, files of exactly one segment and one byte either side of it, a
/// multi-segment file, nested and empty directories, names with spaces and non-ASCII characters, and, when
/// `big_mib > 0`, a `big/random.bin` of that many MiB of random data.
pub fn standard_tree(root: &Path, segment_size: u64, big_mib: u64, seed: u64) -> TreeInfo {
    fs::create_dir_all(root).unwrap();
    File::create(root.join("empty")).unwrap();
    random_file(&root.join("one-byte"), 1, seed + 1);
    random_file(&root.join("odd-4097.bin"), 4097, seed + 2);
    random_file(&root.join("odd-65521.bin"), 65521, seed + 3);
    random_file(
        &root.join("segment-minus-1.bin"),
        segment_size - 1,
        seed + 4,
    );
    random_file(&root.join("segment-exact.bin"), segment_size, seed + 5);
    random_file(&root.join("segment-plus-1.bin"), segment_size + 1, seed + 6);
    random_file(
        &root.join("multi-segment.bin"),
        3 * segment_size + 12345,
        seed + 7,
    );
    fs::write(
        root.join("name with spaces & ünïcødé.txt"),
        "hello, world\n",
    )
    .unwrap();
    let deep = root.join("nested/a/b/c");
    fs::create_dir_all(&deep).unwrap();
    text_file(&deep.join("deep.txt"), 100_000, "nested text");
    File::create(deep.join("empty-deep")).unwrap();
    random_file(&root.join("nested/a/sibling.bin"), 777, seed + 8);
    fs::create_dir_all(root.join("nested/empty-dir")).unwrap();
    fs::create_dir_all(root.join("empty-top-dir")).unwrap();
    if big_mib > 0 {
        random_file(&root.join("big/random.bin"), big_mib * MIB, seed + 9);
    }
    TreeInfo::of(root)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Dir,
    File(u64),
}

/// Every entry under `root` (root itself as ""), by relative path. Panics on anything but files and dirs.
pub fn walk(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let meta = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("stat {}: {e}", p.display()));
        if meta.is_dir() {
            out.insert(rel.clone(), Entry::Dir);
            for e in fs::read_dir(&p).unwrap() {
                stack.push(rel.join(e.unwrap().file_name()));
            }
        } else if meta.is_file() {
            out.insert(rel, Entry::File(meta.len()));
        } else {
            panic!("unexpected file type at {}", p.display());
        }
    }
    out
}

/// Asserts that trees (or single files) `a` and `b` hold the same names, types and bytes.
#[track_caller]
pub fn assert_same_tree(a: &Path, b: &Path) {
    let wa = walk(a);
    let wb = walk(b);
    if wa != wb {
        let only_a: Vec<_> = wa.iter().filter(|(k, v)| wb.get(*k) != Some(v)).collect();
        let only_b: Vec<_> = wb.iter().filter(|(k, v)| wa.get(*k) != Some(v)).collect();
        panic!(
            "trees differ:\n  {} has (not matched in the other): {only_a:?}\n  {} has (not matched in the other): {only_b:?}",
            a.display(),
            b.display()
        );
    }
    for (rel, e) in &wa {
        if let Entry::File(_) = e {
            assert_same_file(&join_rel(a, rel), &join_rel(b, rel));
        }
    }
}

/// `root/rel`, or `root` itself for the empty relative path (so single files work like trees).
fn join_rel(root: &Path, rel: &Path) -> PathBuf {
    if rel.as_os_str().is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Asserts two files hold the same bytes, naming the first differing offset.
#[track_caller]
pub fn assert_same_file(a: &Path, b: &Path) {
    if let Some(off) = first_difference(a, b) {
        panic!("{} and {} differ at byte {off}", a.display(), b.display());
    }
}

/// The offset of the first differing byte (or the shorter length), `None` when identical.
pub fn first_difference(a: &Path, b: &Path) -> Option<u64> {
    let mut fa = File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let mut fb = File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let mut ba = vec![0u8; MIB as usize];
    let mut bb = vec![0u8; MIB as usize];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        let n = na.min(nb);
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Some(off + i as u64);
        }
        if na != nb {
            return Some(off + n as u64);
        }
        if na == 0 {
            return None;
        }
        off += n as u64;
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]).unwrap() {
            0 => break,
            n => got += n,
        }
    }
    got
}

/// Asserts every regular file under `out` equals the file at the same relative path under `src` (used after
/// a failed get: whatever it left behind must not be wrong bytes).
#[track_caller]
pub fn assert_no_wrong_files(src: &Path, out: &Path) {
    if !out.exists() {
        return;
    }
    for (rel, e) in walk(out) {
        if let Entry::File(_) = e {
            let orig = join_rel(src, &rel);
            let left = join_rel(out, &rel);
            assert!(
                orig.is_file(),
                "failed get left {} which has no source counterpart",
                left.display()
            );
            if let Some(off) = first_difference(&orig, &left) {
                panic!(
                    "a failed get left {} with wrong bytes (first difference at byte {off}); it must not leave a \
                     silently wrong file",
                    left.display()
                );
            }
        }
    }
}
