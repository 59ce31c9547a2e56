//! `qsfs mount` and `qsfs umount`.
//!
//! `qsfs mount DIR` backgrounds by default, like mount(8) helpers do: it re-runs itself as a detached child
//! (`--foreground`, in its own session, log in `VOLUME/mount.log`) and returns once the child reports the mount
//! is up, or prints the child's error. `--foreground` serves in the calling process (tests, systemd). No fork: the
//! child is a fresh exec, so no thread or lock of the parent leaks into it.
//!
//! `qsfs umount DIR` unmounts (refusing if busy, like umount(8); `--lazy` detaches anyway) and waits for the
//! serving process to finish draining, so when it returns everything closed is on the stores.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use qsfs::config::{ByteSize, HumanDuration, KeySource, VolumeConfig};
use qsfs::fuse::{self, MountOptions};
use qsfs::volume::{CONFIG_FILE, KEY_FILE};
use qsfs::{InitOptions, Volume};

/// Set in the environment of the background child so it knows to detach and to report readiness on stdout.
const CHILD_ENV: &str = "QSFS_MOUNT_CHILD";
/// Set (to `1`) when the child gets a passphrase volume's passphrase on stdin instead of in its environment: a
/// long-lived process's environment is readable in `/proc/PID/environ` for as long as it runs, and cannot be
/// cleared from safe Rust.
const PASS_ON_STDIN_ENV: &str = "QSFS_MOUNT_PASSPHRASE_ON_STDIN";
const READY: &str = "qsfs-mount-ready";
pub const LOG_FILE: &str = "mount.log";

pub struct MountArgs {
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub allow_other: bool,
    pub cache_size: ByteSize,
    pub staging_limit: Option<ByteSize>,
    pub sync_close: bool,
    pub upload_lag: Option<HumanDuration>,
    pub threads: usize,
    pub atime: qsfs::fuse::AtimeMode,
    pub read_only: bool,
    pub metrics: Option<std::net::SocketAddr>,
}

pub fn mount(volume: &Path, args: MountArgs) -> Result<()> {
    if let Some(lag) = args.upload_lag
        && lag.0 > std::time::Duration::from_secs(3600)
    {
        bail!("--upload-lag {lag}: at most 1h (data closed meanwhile is on this machine only)");
    }
    let child = std::env::var_os(CHILD_ENV).is_some();
    // A missing mountpoint is created, like the volume: `qsfs mount ~/qsfs` works on a fresh machine. Only
    // NotFound counts — a stale FUSE mountpoint fails stat with ENOTCONN and is cleaned by the mount itself.
    if let Err(e) = std::fs::symlink_metadata(&args.mountpoint)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        std::fs::create_dir_all(&args.mountpoint)
            .with_context(|| format!("creating mountpoint {}", args.mountpoint.display()))?;
    }
    if !child && !volume.join(CONFIG_FILE).exists() {
        let root = Volume::init(volume, &InitOptions::default())
            .with_context(|| format!("creating the default volume at {}", volume.display()))?;
        outln!(
            "created volume {} (4 data + 2 parity shards on local dir stores)",
            root.display()
        );
        outln!(
            "  key: {} — back it up somewhere safe: without it nothing in this volume can be read",
            root.join(KEY_FILE).display()
        );
    }
    if !args.foreground && !child {
        return spawn_background(volume, &args);
    }
    if child {
        // Leave the caller's session so its terminal's signals (Ctrl-C) do not reach the mount.
        let _ = nix::unistd::setsid();
    }
    // Before the volume starts its runtime threads, so they all inherit the mask (see fuse::block_signals).
    fuse::block_signals()?;
    // `--metrics` or, failing that, `[metrics] listen` in qsfs.toml.
    let metrics_addr = match args.metrics {
        Some(addr) => Some(addr),
        None => {
            qsfs::config::VolumeConfig::load(&volume.join(qsfs::volume::CONFIG_FILE))?
                .metrics
                .listen
        }
    };
    // Counted always (`qsfs stats` reads them through the control socket); served only at an address.
    let metrics = Some(qsfs::metrics::Metrics::new());
    let wrap = |id, store| -> Arc<dyn qsfs_backends::ShardStore> {
        match &metrics {
            Some(m) => Arc::new(qsfs::metrics::store::MeteredStore::wrap(
                id,
                store,
                m.clone(),
            )),
            None => store,
        }
    };
    // A background mount of a passphrase volume gets the passphrase over stdin from the mounting process.
    let passphrase = if child && std::env::var_os(PASS_ON_STDIN_ENV).is_some() {
        let mut pass = qsfs::keys::Passphrase::default();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut pass)
            .context("reading the passphrase from the mounting process")?;
        Some(pass)
    } else {
        None
    };
    let vol = if args.read_only {
        // Nothing written: no first snapshot or descriptor either (a read-write open adds them when missing).
        Volume::open_read_only(
            volume,
            &wrap,
            "the volume is mounted read-only (--read-only)",
            passphrase,
        )?
    } else {
        Volume::open_replicated_with(volume, &wrap, passphrase)?
    };
    let opts = MountOptions {
        allow_other: args.allow_other,
        cache_size: args.cache_size.0,
        staging_limit: args.staging_limit.map(|s| s.0),
        sync_close: args.sync_close,
        upload_lag: args.upload_lag.map(|d| d.0),
        threads: args.threads,
        read_only: args.read_only,
        atime: args.atime,
        metrics_addr,
        metrics,
    };
    let mp = args.mountpoint.clone();
    // Serves admin commands (status, audit, repair, gc, fsck, store) for as long as the mount runs.
    let mut control = None;
    // The mount's stderr is its log, maybe on a full disk: these lines must not panic (see `qsfs::log_writer`).
    let say = qsfs::log_writer::eprint_line;
    fuse::mount(vol, &args.mountpoint, &opts, |report, handle| {
        match super::control::ControlServer::start(handle.clone()) {
            Ok(server) => control = Some(server),
            Err(e) => say(&format!(
                "qsfs: warning: {e:#}; admin commands will need the volume unmounted"
            )),
        }
        if report.stale_cleaned {
            say(&format!("qsfs: cleaned a stale mount at {}", mp.display()));
        }
        if report.orphans_deleted > 0 {
            say(&format!(
                "qsfs: deleted {} files unlinked while open before a crash",
                report.orphans_deleted
            ));
        }
        if let Some(addr) = report.metrics_addr {
            say(&format!("qsfs: metrics at http://{addr}/metrics"));
        }
        if report.uploads_resumed > 0 {
            say(&format!(
                "qsfs: resuming {} queued uploads",
                report.uploads_resumed
            ));
        }
        if child {
            println!("{READY}");
        } else {
            say(&format!(
                "qsfs: mounted {} (Ctrl-C or `qsfs umount` to unmount)",
                mp.display()
            ));
        }
        // Under systemd (`Type=notify`, NOTIFY_SOCKET set) the unit is started only now that the mount serves;
        // elsewhere this does nothing.
        if let Err(e) = sd_notify::notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&format!("serving {}", mp.display())),
        ]) {
            tracing::warn!(error = %e, "could not tell systemd the mount is ready");
        }
    })?;
    // The session ended (unmounted or signalled) and the uploads are drained.
    drop(control);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    Ok(())
}

fn spawn_background(volume: &Path, args: &MountArgs) -> Result<()> {
    let exe = std::env::current_exe().context("finding the qsfs executable")?;
    let log_path = volume.join(LOG_FILE);
    // The log names files and stores: private like everything in the volume directory.
    let log = qsfs::private::file_options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("--volume")
        .arg(volume)
        .arg("mount")
        .arg(&args.mountpoint)
        .arg("--foreground")
        .arg("--cache-size")
        .arg(args.cache_size.to_string())
        .arg("--threads")
        .arg(args.threads.to_string());
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if let Some(limit) = args.staging_limit {
        cmd.arg("--staging-limit").arg(limit.to_string());
    }
    if let Some(addr) = args.metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    if args.read_only {
        cmd.arg("--read-only");
    }
    cmd.arg("--atime").arg(args.atime.to_string());
    if args.sync_close {
        cmd.arg("--sync-close");
    }
    if let Some(lag) = args.upload_lag {
        cmd.arg("--upload-lag").arg(lag.to_string());
    }
    // A passphrase volume: read the passphrase here and hand it over a pipe, out of the child's environment.
    let config = VolumeConfig::load(&volume.join(CONFIG_FILE))?;
    let passphrase = match config.key.source {
        KeySource::Passphrase => {
            let var = qsfs::volume::passphrase_var(&config);
            let pass = qsfs::volume::read_passphrase(&var)?;
            cmd.env_remove(&var).env(PASS_ON_STDIN_ENV, "1");
            Some(pass)
        }
        KeySource::File => None,
    };
    let mut child = cmd
        .env(CHILD_ENV, "1")
        .stdin(if passphrase.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting the background mount")?;
    if let (Some(pass), Some(mut stdin)) = (passphrase, child.stdin.take()) {
        // Written whole, then closed: the child reads to end of file. A child that died early is reported below.
        let _ = std::io::Write::write_all(&mut stdin, pass.as_bytes());
    }
    let stdout = child.stdout.take().context("child stdout")?;
    let mut line = String::new();
    let _ = BufReader::new(stdout).read_line(&mut line);
    if line.trim() == READY {
        outln!(
            "mounted {} at {} (pid {}, log {})",
            volume.display(),
            args.mountpoint.display(),
            child.id(),
            log_path.display()
        );
        return Ok(());
    }
    let status = child.wait().context("waiting for the background mount")?;
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = log_text.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    bail!(
        "the mount did not come up ({status}); from {}:\n{}",
        log_path.display(),
        tail.join("\n")
    )
}

pub fn umount(mountpoint: &Path, lazy: bool) -> Result<()> {
    let entry = fuse::find_mount(mountpoint);
    let Some(entry) = entry else {
        bail!("{}: not mounted", mountpoint.display());
    };
    if !entry.is_qsfs() {
        bail!(
            "{}: not a qsfs mount ({} from {})",
            mountpoint.display(),
            entry.fstype,
            entry.source
        );
    }
    let volume = entry.volume();
    let pid = volume
        .as_ref()
        .and_then(|v| std::fs::read_to_string(v.join("lock")).ok())
        .and_then(|p| p.trim().parse::<u32>().ok())
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
    let stale = fuse::is_stale_mount(mountpoint);
    fuse::unmount(mountpoint, lazy || stale)?;
    if let Some(pid) = pid.filter(|_| !stale) {
        let mut told = false;
        fuse::wait_for_exit(pid, |waited| {
            if !told && waited.as_secs() >= 2 {
                eprintln!("qsfs: waiting for the mount (pid {pid}) to finish uploading...");
                told = true;
            }
        });
        // The process's last threads may still hold the volume lock for a moment after it shows as exited:
        // return only when the volume is free, so the next command on it does not find it locked.
        if let Some(v) = &volume {
            wait_until_unlocked(&v.join("lock"));
        }
    }
    outln!("unmounted {}", mountpoint.display());
    Ok(())
}

fn wait_until_unlocked(lock: &Path) {
    use nix::fcntl::{Flock, FlockArg};
    for _ in 0..200 {
        let Ok(file) = std::fs::File::open(lock) else {
            return;
        };
        if Flock::lock(file, FlockArg::LockSharedNonblock).is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}
