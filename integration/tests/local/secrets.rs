//! Secrets never reach argv, an environment that outlives its use, or an error line: redis passwords come from
//! private files or variables, inline ones are refused on the command line, a broken config never echoes one,
//! and the background mount of a passphrase volume does not keep the passphrase in its environment.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use super::Unmount;
use crate::fuse::fuse_available;
use crate::fuse::mount::qsfs_umount;
use crate::helpers::{Redis, Vol, s};

/// Sets a password on a running redis-server (the test harness starts them without one).
fn require_pass(port: u16, password: &str) {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cmd = format!(
        "*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n${}\r\n{password}\r\n",
        password.len()
    );
    c.write_all(cmd.as_bytes()).unwrap();
    let mut reply = [0u8; 5];
    c.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"+OK\r\n");
}

#[test]
fn redis_passwords_come_from_private_files_or_variables() {
    let redis = Redis::start(6);
    let password = "pa/ss:w@rd?#1";
    for r in &redis.servers {
        require_pass(r.port(), password);
    }
    let mut v = Vol::new();
    let pw = v.scratch("secrets").join("redis.pw");
    fs::write(&pw, format!("{password}\n")).unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    v.envs.push(("QSFS_TEST_REDIS_PW".into(), password.into()));
    let mut args = vec!["init".to_string()];
    for (i, r) in redis.servers.iter().enumerate() {
        let q = if i == 0 {
            "password-env=QSFS_TEST_REDIS_PW".to_string()
        } else {
            format!("password-file={}", pw.display())
        };
        args.push("--store".into());
        args.push(format!("redis://127.0.0.1:{}/0?{q}", r.port()));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    v.ok(&argv);
    let f = v.scratch("src").join("f.txt");
    fs::write(&f, b"through authenticated stores\n").unwrap();
    v.ok(&["put", s(&f), "/f.txt"]);
    let back = v.scratch("out").join("f.txt");
    v.ok(&["get", "/f.txt", s(&back)]);
    assert_eq!(fs::read(&back).unwrap(), b"through authenticated stores\n");
    let config = fs::read_to_string(v.path.join("qsfs.toml")).unwrap();
    assert!(!config.contains(password), "the password reached qsfs.toml");
    let status = v.ok(&["status"]);
    assert!(!status.contains(password), "{status}");

    // A password file others can read is refused like a key file.
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    let run = v.run(&["put", s(&f), "/g.txt"]);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(!all.contains(password), "{all}");
    let err = run.failed();
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn inline_passwords_on_the_command_line_are_refused() {
    let v = Vol::new();
    let mut args = vec!["init".to_string()];
    for i in 0..6 {
        args.push("--store".into());
        args.push(format!("redis://:hunter2/x@127.0.0.1:{}/0", 7000 + i));
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = v.run(&argv);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    let err = run.failed();
    assert!(err.contains("password-file"), "{err}");
    assert!(!v.path.exists(), "a refused init created the volume");

    let v = Vol::new();
    v.init_default(&[]);
    let run = v.run(&["store", "add", "redis://user:hunter2@127.0.0.1:7100/0"]);
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
    let err = run.failed();
    assert!(err.contains("password-file"), "{err}");
}

/// A syntax error on the line holding a store password names the line and key, never the password.
#[test]
fn a_broken_config_never_echoes_a_password() {
    let v = Vol::new();
    v.init_default(&[]);
    let p = v.path.join("qsfs.toml");
    let text = fs::read_to_string(&p).unwrap();
    let first_uri = text
        .lines()
        .find(|l| l.starts_with("uri = "))
        .unwrap()
        .to_string();
    for broken in [
        "uri = \"redis://:S3cr/et!pw@127.0.0.1:6379/0",
        "uri = redis://:S3cr/et!pw@127.0.0.1:6379/0",
        "uri = \"redis://:S3cr/et!pw@127.0.0.1:6379/0\" junk",
        "id = \"redis://:S3cr/et!pw@127.0.0.1:6379/0\"",
    ] {
        fs::write(&p, text.replacen(&first_uri, broken, 1)).unwrap();
        let run = v.run(&["status"]);
        assert!(
            !run.stderr.contains("S3cr/et!pw"),
            "{broken}: {}",
            run.stderr
        );
        assert!(
            !run.stdout.contains("S3cr/et!pw"),
            "{broken}: {}",
            run.stdout
        );
        let err = run.failed();
        assert!(err.contains("qsfs.toml") && err.contains("line "), "{err}");
    }
}

/// The background mount of a passphrase volume gets the passphrase over a pipe: neither the variable nor the
/// passphrase is in the serving process's `/proc/PID/environ`.
#[test]
fn background_mount_does_not_keep_the_passphrase_in_its_environment() {
    if !fuse_available("background_mount_does_not_keep_the_passphrase_in_its_environment") {
        return;
    }
    let passphrase = "correct horse battery staple 9f3";
    let mut v = Vol::new();
    v.envs
        .push(("QSFS_TEST_PASSPHRASE".into(), passphrase.into()));
    v.init_default(&["--passphrase-env", "QSFS_TEST_PASSPHRASE"]);
    let mp = v.scratch("mnt");
    let log = v.scratch("logs").join("mount.out");
    let out = std::process::Command::new(crate::helpers::qsfs_bin())
        .args(["--volume", s(&v.path), "mount", s(&mp)])
        .env("QSFS_TEST_PASSPHRASE", passphrase)
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(fs::File::create(log.with_extension("err")).unwrap())
        .status()
        .unwrap();
    let guard = Unmount(mp.clone());
    assert!(
        out.success(),
        "{}",
        fs::read_to_string(log.with_extension("err")).unwrap()
    );
    let pid = fs::read_to_string(v.path.join("lock"))
        .unwrap()
        .trim()
        .to_string();
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("QSFS_TEST_PASSPHRASE"),
        "the variable is in the mount's environment"
    );
    assert!(
        !environ.contains(passphrase),
        "the passphrase is in the mount's environment"
    );
    fs::write(mp.join("x.txt"), b"mounted with the passphrase\n").unwrap();
    assert_eq!(
        fs::read(mp.join("x.txt")).unwrap(),
        b"mounted with the passphrase\n"
    );
    let out = qsfs_umount(&mp, Duration::from_secs(60)).unwrap();
    assert!(out.success(), "{}", out.describe());
    drop(guard);
}
