//! Input from the user: each of these once panicked, wrapped around or did something cp and ls would not.

use std::fs;
use std::process::{Command, Stdio};

use crate::helpers::{Vol, qsfs_bin, s};

fn volume_with_a_file() -> Vol {
    let v = Vol::new();
    v.init_default(&[]);
    let f = v.scratch("src").join("small.bin");
    fs::write(&f, b"small\n").unwrap();
    v.ok(&["put", s(&f), "/r1.bin"]);
    v
}

/// `qsfs ls | head -n 0`: the reader is gone before qsfs writes. qsfs stops quietly with status 141 (what a
/// shell shows for a command killed by SIGPIPE), no panic, no backtrace.
#[test]
fn closed_stdout_is_not_a_panic() {
    let v = volume_with_a_file();
    for args in [&["ls", "/"][..], &["status"][..]] {
        let mut child = Command::new(qsfs_bin())
            .arg("--volume")
            .arg(&v.path)
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "qsfs {args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(141), "qsfs {args:?}: {stderr}");
        assert!(stderr.trim().is_empty(), "qsfs {args:?} printed: {stderr}");
    }
}

fn edit_config(v: &Vol, from: &str, to: &str) {
    let p = v.path.join("qsfs.toml");
    let text = fs::read_to_string(&p).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(from))
        .unwrap_or_else(|| panic!("no `{from}` line in\n{text}"))
        .to_string();
    fs::write(&p, text.replace(&line, to)).unwrap();
}

#[test]
fn huge_audit_interval_is_a_config_error() {
    let v = volume_with_a_file();
    edit_config(&v, "interval =", "interval = 18446744073709551615");
    let err = v.run(&["status"]).failed();
    assert!(
        err.contains("audit.interval") && err.contains("qsfs.toml"),
        "{err}"
    );
}

#[test]
fn huge_argon2_memory_is_a_config_error_not_an_abort() {
    let mut v = Vol::new();
    v.envs.push((
        "QSFS_TEST_PASS".into(),
        "a long enough test passphrase".into(),
    ));
    v.init_default(&["--passphrase-env", "QSFS_TEST_PASS"]);
    edit_config(&v, "m_cost_kib =", "m_cost_kib = 4294967295");
    let err = v.run(&["ls", "/"]).failed();
    assert!(err.contains("m_cost_kib"), "{err}");
}

/// A local file dated 2446 is stored with the latest time the volume can hold (2262), not wrapped to 1861.
#[test]
fn far_future_mtime_saturates_instead_of_wrapping() {
    let v = Vol::new();
    v.init_default(&[]);
    let f = v.scratch("src").join("future.txt");
    fs::write(&f, b"from the future\n").unwrap();
    let year_2446 = std::time::UNIX_EPOCH + std::time::Duration::from_secs(15_045_000_000);
    fs::File::options()
        .write(true)
        .open(&f)
        .unwrap()
        .set_modified(year_2446)
        .unwrap();
    v.ok(&["put", s(&f), "/future.txt"]);
    let long = v.ok(&["ls", "-l", "/future.txt"]);
    assert!(long.contains(" 2262-"), "{long}");
    let out = v.scratch("out").join("future.txt");
    v.ok(&["get", "/future.txt", s(&out)]);
    let mtime = fs::metadata(&out).unwrap().modified().unwrap();
    let secs = mtime
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs > 9_000_000_000, "mtime wrapped to {secs}s after 1970");
}

#[test]
fn put_into_a_file_with_a_trailing_slash_is_not_a_directory() {
    let v = volume_with_a_file();
    let f = v.scratch("src2").join("other.bin");
    fs::write(&f, b"other\n").unwrap();
    let err = v.run(&["put", s(&f), "/r1.bin/"]).failed();
    assert!(err.to_lowercase().contains("not a directory"), "{err}");
    let back = v.scratch("back").join("r1.bin");
    v.ok(&["get", "/r1.bin", s(&back)]);
    assert_eq!(fs::read(&back).unwrap(), b"small\n", "/r1.bin was replaced");
}

#[test]
fn empty_components_and_trailing_slash_name_a_directory() {
    let v = volume_with_a_file();
    let f = v.scratch("src2").join("small.bin");
    fs::write(&f, b"small\n").unwrap();
    v.ok(&["put", s(&f), "//a//b/"]);
    assert_eq!(v.ls("/a/b"), vec!["small.bin"]);
    let long = v.ok(&["ls", "-l", "/a"]);
    assert!(
        long.starts_with('d') && long.trim_end().ends_with(" b"),
        "{long}"
    );
}

#[test]
fn names_longer_than_255_bytes_are_refused() {
    let v = volume_with_a_file();
    let f = v.scratch("src2").join("x");
    fs::write(&f, b"x").unwrap();
    let long = format!("/{}", "n".repeat(256));
    let err = v.run(&["put", s(&f), &long]).failed();
    assert!(err.contains("file name too long"), "{err}");
    assert_eq!(v.ls("/"), vec!["r1.bin"]);
}

#[test]
fn ls_escapes_control_characters_in_names() {
    let v = Vol::new();
    v.init_default(&[]);
    let dir = v.scratch("src").join("odd");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a\nb"), b"1").unwrap();
    fs::write(dir.join("t\x1b]0;owned\x07"), b"2").unwrap();
    v.ok(&["put", s(&dir), "/odd"]);
    let out = v.ok(&["ls", "/odd"]);
    assert_eq!(out, "$'a\\nb'\n$'t\\033]0;owned\\a'\n");
    let long = v.ok(&["ls", "-l", "/odd"]);
    assert_eq!(long.lines().count(), 2, "{long}");
    assert!(!long.contains('\x1b'), "{long:?}");
}

#[test]
fn putting_only_a_fifo_stores_nothing_and_fails() {
    let v = Vol::new();
    v.init_default(&[]);
    let fifo = v.scratch("src").join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let err = v.run(&["put", s(&fifo), "/pipe"]).failed();
    assert!(err.contains("nothing was stored"), "{err}");
    assert!(v.ls("/").is_empty());
}

#[test]
fn init_option_errors_name_the_option() {
    let v = Vol::new();
    let err = v.run(&["init", "--data-shards", "0"]).failed();
    assert!(
        err.contains("--data-shards") && !err.contains("qsfs.toml"),
        "{err}"
    );
    assert!(
        !v.path.exists(),
        "a refused init created {}",
        v.path.display()
    );
    let err = v.run(&["init", "--parity-shards", "300"]).failed();
    assert!(err.contains("--parity-shards"), "{err}");
    let err = v.run(&["init", "--write-quorum", "4"]).failed();
    assert!(err.contains("--write-quorum"), "{err}");
}

/// An init that fails after writing identity markers (here: one store listed twice under two spellings, so its
/// second marker finds the first) takes its markers back, so the corrected retry works.
#[test]
fn a_failed_init_leaves_no_markers_behind() {
    let v = Vol::new();
    let stores = v.scratch("stores");
    let uri = |i: usize| format!("dir:{}", stores.join(i.to_string()).display());
    let mut args = vec!["init".to_string()];
    for i in 0..6 {
        args.push("--store".into());
        args.push(if i == 1 {
            format!("dir://{}", stores.join("0").display())
        } else {
            uri(i)
        });
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    v.run(&argv).failed();
    assert!(!v.path.join("qsfs.toml").exists());
    let mut args = vec!["init".to_string()];
    for i in 0..6 {
        args.push("--store".into());
        args.push(uri(i));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    v.ok(&argv);
}

/// A new passphrase volume needs a passphrase that resists offline guessing (the argon2 salt and key check are on
/// the stores): a common one is refused naming the option, before anything is created; a long one works.
#[test]
fn a_weak_passphrase_is_refused_at_init() {
    let mut v = Vol::new();
    v.envs.push(("QSFS_TEST_PASS".into(), "password1".into()));
    let err = v
        .run(&["init", "--passphrase-env", "QSFS_TEST_PASS"])
        .failed();
    assert!(
        err.contains("--passphrase-env") && err.contains("too easy to guess"),
        "{err}"
    );
    assert!(
        !v.path.exists(),
        "a refused init created {}",
        v.path.display()
    );
    v.envs[0].1 = "seven quiet lanterns drift over marble".into();
    v.init_default(&["--passphrase-env", "QSFS_TEST_PASS"]);
}

/// `mount --upload-lag` longer than an hour (closed data would sit on this machine only for that long) or not a
/// duration is refused by name before anything is created or mounted.
#[test]
fn mount_refuses_an_upload_lag_past_an_hour_or_not_a_duration() {
    let v = Vol::new();
    v.init_default(&[]);
    let mp = v.fresh_path("mnt");
    let err = v.run(&["mount", "--upload-lag", "2h", s(&mp)]).failed();
    assert!(
        err.contains("--upload-lag") && err.contains("at most 1h"),
        "{err}"
    );
    assert!(!mp.exists(), "a refused mount created {}", mp.display());
    let err = v.run(&["mount", "--upload-lag", "soon", s(&mp)]).code(2);
    assert!(err.contains("--upload-lag"), "{err}");
    assert!(!mp.exists());
}
