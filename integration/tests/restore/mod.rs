//! `qsfs restore`: a volume rebuilt on a "new machine" (its directory deleted) from the key and one store's URI,
//! with up to M stores gone, on dir, redis and 0-db stores; and the metadata log's defences: a store that serves an
//! older chain, a truncated log, another volume's record, a flipped byte or a damaged
//! snapshot piece is outvoted and named.

mod mount;
mod tamper;
mod writers;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::helpers::{Vol, run_qsfs, s};

/// `--store dir:…` arguments for `n` dir stores in `root/0..n` (outside the volume directory, so deleting the
/// volume directory is the loss of the client machine, not of the stores).
pub fn dir_store_args(root: &Path, n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            [
                "--store".to_string(),
                format!("dir:{}", root.join(i.to_string()).display()),
            ]
        })
        .collect()
}

/// `init`s `v` with 64 KiB segments over six dir stores in its scratch area (outside the volume directory);
/// returns the stores' parent directory.
pub fn init_on_outside_dir_stores(v: &Vol) -> PathBuf {
    let stores = v.scratch("stores");
    let mut args = vec!["--segment-size".to_string(), "64KiB".to_string()];
    args.extend(dir_store_args(&stores, 6));
    v.init(&crate::helpers::strs(&args));
    stores
}

/// Copies the volume's key file aside (mode 0600), as the user was told to.
pub fn back_up_key(v: &Vol) -> PathBuf {
    let dest = v.scratch("backup").join("key");
    fs::copy(v.path.join("key"), &dest).expect("copy the key file");
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o600)).unwrap();
    dest
}

/// The client machine is gone: its whole volume directory.
pub fn lose_machine(v: &Vol) {
    fs::remove_dir_all(&v.path).expect("delete the volume directory");
}

/// `qsfs --volume V restore --store URI --key-file KEY [extra]`; returns the run.
pub fn restore(v: &Vol, store_uri: &str, key: &Path, extra: &[&str]) -> crate::helpers::Run {
    let mut args = vec![
        "--volume",
        s(&v.path),
        "restore",
        "--store",
        store_uri,
        "--key-file",
        s(key),
    ];
    args.extend_from_slice(extra);
    let envs: Vec<(&str, &str)> = v
        .envs
        .iter()
        .map(|(k, val)| (k.as_str(), val.as_str()))
        .collect();
    run_qsfs(&args, &envs)
}

/// Moves dir store `i` under `root` away (a disk that failed); returns where it went.
pub fn take_away(root: &Path, i: usize) -> PathBuf {
    let away = root.join(format!("away-{i}"));
    fs::rename(root.join(i.to_string()), &away).expect("move the store away");
    away
}

/// Files of a dir store that hold metadata log records (`QSFSLOG1` ‖ epoch ‖ seq), by sequence number.
pub fn log_records(store: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = crate::helpers::stores::all_files(store)
        .into_iter()
        .filter_map(|p| {
            let bytes = fs::read(&p).ok()?;
            (bytes.len() >= 24 && &bytes[..8] == b"QSFSLOG1")
                .then(|| (u64::from_le_bytes(bytes[16..24].try_into().unwrap()), p))
        })
        .collect();
    out.sort();
    out
}

/// Files of a dir store that hold pieces of an erasure-coded metadata snapshot (`QSFSSNP2` ‖ epoch ‖ seq ‖ chunk ‖
/// chunks ‖ piece ‖ k ‖ m ‖ chunk_len ‖ payload): (path, piece index, chunk_len, file length).
pub fn snapshot_pieces(store: &Path) -> Vec<(PathBuf, u32, u64, u64)> {
    crate::helpers::stores::all_files(store)
        .into_iter()
        .filter_map(|p| {
            let bytes = fs::read(&p).ok()?;
            let half = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
            (bytes.len() >= 48 && &bytes[..8] == b"QSFSSNP2")
                .then(|| (p.clone(), half(32), half(44) as u64, bytes.len() as u64))
        })
        .collect()
}
