//! Command-line parsing and dispatch. Each subcommand opens the volume, does its work through `Volume`, prints a
//! human summary (or JSON where asked) and returns an error for the one-line message in `main`.

/// `println!` for command output, returning [`StdoutClosed`] from the enclosing function instead of panicking when
/// the reader of stdout has gone (`qsfs status | head -n 1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        $crate::cli::output::write_line(format_args!($($arg)*)).map_err($crate::cli::stdout_error)?
    }};
}

mod audit;
mod control;
mod format;
mod fsck;
mod gc;
mod get;
mod mount;
pub mod mount_helper;
mod output;
mod progress;
mod quote;
mod repair;
mod restore;
mod stats;
mod store;
mod transfer;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qsfs::config::{ByteSize, HumanDuration};
use qsfs::meta::{self, FileKind};
use qsfs::{InitOptions, Volume};

#[derive(Parser, Debug)]
#[command(
    name = "qsfs",
    version,
    about = "A quantum-safe storage filesystem: encrypted, erasure-coded, audited"
)]
pub struct Cli {
    /// The volume directory.
    #[arg(long, global = true, env = "QSFS_VOLUME", value_name = "DIR")]
    volume: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new volume (refuses if one exists).
    Init {
        #[arg(long, default_value_t = 4, value_name = "K")]
        data_shards: usize,
        #[arg(long, default_value_t = 2, value_name = "M")]
        parity_shards: usize,
        /// Plaintext bytes per segment, e.g. 4MiB or 512KiB.
        #[arg(long, default_value = "4MiB", value_name = "SIZE")]
        segment_size: ByteSize,
        /// zstd level for segments (-7 ..= 22).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        zstd_level: i32,
        /// Shards that must be durable before a write commits (default K+M-1, so writes go on with one store down;
        /// at least K+1).
        #[arg(long, value_name = "N")]
        write_quorum: Option<usize>,
        /// A store: dir:/path, redis://host:port/db[?password-file=F | ?password-env=VAR],
        /// zdb://host:port/ns[?password-file=F&mode=seq]. Passwords are never accepted inline here.
        /// Repeat for each store; default: K+M dir stores inside the volume.
        #[arg(long = "store", value_name = "URI")]
        stores: Vec<String>,
        /// Derive the key from the passphrase in this environment variable instead of a random key file.
        #[arg(long, value_name = "VAR")]
        passphrase_env: Option<String>,
    },
    /// Copy local files and directory trees into the volume (like cp -r).
    Put {
        #[arg(required = true, num_args = 2.., value_name = "SRC... DEST")]
        paths: Vec<PathBuf>,
    },
    /// Copy a file or tree out of the volume (like cp -r).
    Get { src: String, dest: PathBuf },
    /// List a directory of the volume.
    Ls {
        /// Long format: type and mode, links, size, modification time.
        #[arg(short = 'l')]
        long: bool,
        #[arg(default_value = "/")]
        path: String,
    },
    /// Remove a file, symlink or (with -r) a directory tree.
    Rm {
        #[arg(short = 'r', long)]
        recursive: bool,
        path: String,
    },
    /// Show the volume's layout, stores and redundancy.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Check that the stores still hold every shard: random Merkle-proven samples per store (enough to catch a
    /// loss of δ of a store's shards with probability P, from qsfs.toml [audit]), or every byte with --full.
    /// Exits 1 when anything failed verification.
    Audit {
        /// Verify every shard whole (a scrub); resumes an interrupted full audit.
        #[arg(long)]
        full: bool,
        /// Only this store (its URI or id).
        #[arg(long, value_name = "URI", conflicts_with = "path")]
        store: Option<String>,
        /// Only the file, or the files of the tree, at this volume path: is each still retrievable? (per-file
        /// proof of retrievability; with --full every byte of them).
        #[arg(long, value_name = "PATH")]
        path: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild or move every shard in the repair queue now.
    Repair {
        #[arg(long)]
        json: bool,
        /// Treat stores unreachable for longer than this as lost (default: audit.lost_store_grace, 15m).
        #[arg(long, value_name = "DURATION")]
        grace: Option<HumanDuration>,
    },
    /// Link /sbin/mount.fuse.qsfs to this binary, so `mount -t fuse.qsfs qsfs:VOLUME MP -o OPTIONS` and
    /// /etc/fstab lines mount qsfs volumes.
    InstallHelper {
        /// Where mount(8) looks for helpers.
        #[arg(long, default_value = "/sbin", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Delete the shards of replaced or removed segments and orphan shards no metadata names (left by failed
    /// writes), reporting what each store got back.
    Gc {
        /// Only report what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Add, drain (retire) or re-admit a store.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// Mount the volume as a directory (creates the default volume first if there is none). Backgrounds once
    /// the mount is up unless --foreground.
    Mount {
        mountpoint: PathBuf,
        /// Serve in this process instead of a background one (Ctrl-C unmounts).
        #[arg(long)]
        foreground: bool,
        /// Let other users use the mount (non-root mounts need user_allow_other in /etc/fuse.conf).
        #[arg(long)]
        allow_other: bool,
        /// Memory for decoded segments (read cache), e.g. 256MiB.
        #[arg(long, default_value = "256MiB", value_name = "SIZE")]
        cache_size: qsfs::config::ByteSize,
        /// Most data written and not yet on the stores to keep locally (staging and the upload queue), e.g. 8GiB;
        /// writes past it wait for uploads, then fail with ENOSPC. Default: half the volume's disk.
        #[arg(long, value_name = "SIZE")]
        staging_limit: Option<qsfs::config::ByteSize>,
        /// Make every close(2) wait until the file's data and metadata are on the stores, like fsync (by
        /// default close returns once they are durable locally and uploads follow within seconds).
        #[arg(long)]
        sync_close: bool,
        /// Accepted for scripts written for earlier releases: local-first close is now the default.
        #[arg(long, hide = true)]
        writeback: bool,
        /// FUSE worker threads.
        #[arg(long, default_value_t = 8, value_name = "N")]
        threads: usize,
        /// Access times: relatime (written when older than the last change or a day old), noatime (never) or
        /// strictatime (at each open file's first read).
        #[arg(long, default_value = "relatime", value_name = "MODE")]
        atime: qsfs::fuse::AtimeMode,
        /// Mount read-only: reads, nothing written to the metadata or the stores (writes fail with EROFS).
        #[arg(long)]
        read_only: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
    },
    /// A live view of a mount: FUSE operations, throughput and store latency, one row per interval (like
    /// `juicefs stats`). Names the mount by MOUNTPOINT or --volume.
    Stats {
        mountpoint: Option<PathBuf>,
        /// Seconds between rows.
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        interval: f64,
        /// Stop after N rows (default: until Ctrl-C).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// One snapshot of the mount's counters in the Prometheus text format (what the view is made from).
        #[arg(long)]
        raw: bool,
    },
    /// Unmount, waiting until pending uploads are done.
    Umount {
        mountpoint: PathBuf,
        /// Detach even if files are open (they stay usable until closed).
        #[arg(long)]
        lazy: bool,
    },
    /// Rebuild the volume directory on this machine from its stores: needs one store's URI and the key (a copy of
    /// the key file, or the passphrase). Writes --volume (or the default volume), which must not hold a volume.
    Restore {
        /// A store of the volume (repeat to give several, e.g. with passwords the volume's descriptor omits).
        #[arg(long = "store", value_name = "URI", required = true)]
        stores: Vec<String>,
        /// A copy of the volume's key file.
        #[arg(long, value_name = "FILE")]
        key_file: Option<PathBuf>,
        /// For a passphrase volume: the environment variable that holds the passphrase.
        #[arg(long, value_name = "VAR")]
        passphrase_env: Option<String>,
        /// Make the restored copy the volume's writer even though another copy (the lost machine's) holds it;
        /// that copy turns read-only if it is still running.
        #[arg(long)]
        take_over: bool,
        #[arg(long)]
        json: bool,
    },
    /// Make this copy of the volume its writer, taking it from the copy that holds it (a copied or restored
    /// volume directory starts read-only); the other copy turns read-only.
    TakeOver,
    /// Check metadata consistency and that every referenced shard is on its store.
    Fsck {
        /// Fix what can be fixed.
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
}

impl Command {
    /// The admin commands: they run against a mounted volume through its control socket.
    fn is_admin(&self) -> bool {
        matches!(
            self,
            Command::Fsck { .. }
                | Command::Audit { .. }
                | Command::Repair { .. }
                | Command::Gc { .. }
                | Command::Store { .. }
                | Command::Status { .. }
        )
    }
}

/// Stdout was closed by its reader (EPIPE): `main` exits quietly, like coreutils killed by SIGPIPE.
#[derive(Debug, thiserror::Error)]
#[error("stdout closed")]
pub struct StdoutClosed;

/// Classifies a failed write to stdout: a closed pipe is [`StdoutClosed`], anything else a real error.
pub fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        anyhow::Error::new(StdoutClosed)
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

pub fn volume_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(v) = arg {
        return Ok(v);
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --volume DIR")?;
    Ok(PathBuf::from(home).join(".local/share/qsfs/default"))
}

pub fn run(cli: Cli) -> Result<()> {
    let dir = volume_dir(cli.volume)?;
    match cli.command {
        Command::Init {
            data_shards,
            parity_shards,
            segment_size,
            zstd_level,
            write_quorum,
            stores,
            passphrase_env,
        } => {
            refuse_inline_passwords(&stores)?;
            let opts = InitOptions {
                data_shards,
                parity_shards,
                segment_size,
                zstd_level,
                write_quorum,
                stores,
                passphrase_env: passphrase_env.clone(),
            };
            let root = Volume::init(&dir, &opts)?;
            outln!("created volume {}", root.display());
            outln!("  {data_shards} data + {parity_shards} parity shards, {segment_size} segments");
            match passphrase_env {
                None => outln!(
                    "  key: {} — back it up somewhere safe: without it nothing in this volume can be read",
                    root.join(qsfs::volume::KEY_FILE).display()
                ),
                Some(var) => {
                    outln!("  key: derived from the passphrase in ${var}; remember the passphrase")
                }
            }
            Ok(())
        }
        Command::Put { mut paths } => {
            let dest = paths.pop().expect("clap requires two paths");
            let dest = dest
                .to_str()
                .context("DEST must be a UTF-8 volume path like /a/b")?
                .to_string();
            let vol = open_volume(&dir)?;
            let result = transfer::put(&vol, &paths, &dest);
            finish(&vol, result)
        }
        Command::Get { src, dest } => {
            let vol = open_volume(&dir)?;
            let result = get::get(&vol, &src, &dest);
            finish_reading(&vol, result)
        }
        Command::Ls { long, path } => {
            let vol = open_volume(&dir)?;
            list(&vol, &path, long)
        }
        Command::Rm { recursive, path } => {
            let vol = open_volume(&dir)?;
            vol.remove(&path, recursive)?;
            // collect_garbage ships the removal to the stores' log before it deletes any shard it dropped.
            let result = vol.collect_garbage().map(|_| ()).map_err(Into::into);
            finish(&vol, result)
        }
        Command::Mount {
            mountpoint,
            foreground,
            allow_other,
            cache_size,
            staging_limit,
            sync_close,
            writeback,
            threads,
            atime,
            read_only,
            metrics,
        } => {
            if writeback {
                eprintln!(
                    "qsfs: --writeback is the default now (close is local-first; fsync waits for the stores)"
                );
            }
            mount::mount(
                &dir,
                mount::MountArgs {
                    mountpoint,
                    foreground,
                    allow_other,
                    cache_size,
                    staging_limit,
                    sync_close,
                    threads,
                    atime,
                    read_only,
                    metrics,
                },
            )
        }
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy),
        Command::Stats { raw: true, .. } => {
            if control::forward_if_mounted(&dir)? {
                return Ok(());
            }
            anyhow::bail!(
                "volume {} is not mounted: `qsfs stats` watches a running mount",
                dir.display()
            )
        }
        Command::Stats {
            mountpoint,
            interval,
            count,
            ..
        } => stats::run(&dir, mountpoint.as_deref(), interval, count),
        Command::Restore {
            stores,
            key_file,
            passphrase_env,
            take_over,
            json,
        } => {
            refuse_inline_passwords(&stores)?;
            restore::run(
                dir,
                restore::Args {
                    stores,
                    key_file,
                    passphrase_env,
                    take_over,
                    json,
                },
            )
        }
        Command::TakeOver => {
            let vol = open_volume(&dir)?;
            match vol.take_over()? {
                Some(previous) => outln!(
                    "this copy ({}) is now the volume's writer; the copy at {previous} is read-only",
                    vol.root().display()
                ),
                None => outln!(
                    "this copy ({}) is the volume's writer",
                    vol.root().display()
                ),
            }
            Ok(())
        }
        Command::InstallHelper { dir } => {
            let link = mount_helper::install(&dir)?;
            println!(
                "installed {link}: `mount -t fuse.qsfs qsfs:VOLUME MOUNTPOINT -o allow_other` and fstab lines now work",
                link = link.display()
            );
            Ok(())
        }
        // Every other command is an admin command (`Command::is_admin`).
        command => {
            if let Command::Store { command } = &command {
                refuse_inline_passwords(&[command.uri().to_string()])?;
            }
            // A mounted volume is locked by its mount: the command runs there, through its control socket.
            if control::forward_if_mounted(&dir)? {
                return Ok(());
            }
            let vol = open_volume(&dir)?;
            let result = run_admin(&vol, command, None);
            finish_reading(&vol, result)
        }
    }
}

/// The admin commands, against an open volume: this process's, or a mount's for a control client (`mount`).
fn run_admin(
    vol: &Volume,
    command: Command,
    mount: Option<&qsfs::fuse::MountHandle>,
) -> Result<()> {
    match command {
        Command::Fsck { repair, json } => fsck::fsck(vol, repair, json),
        Command::Audit {
            full,
            path: Some(path),
            json,
            ..
        } => audit::run_path(vol, &path, full, json),
        Command::Audit {
            full, store, json, ..
        } => audit::run(vol, full, store.as_deref(), json),
        Command::Repair { json, grace } => repair::run(vol, json, grace),
        Command::Gc { dry_run, json } => gc::run(vol, dry_run, json),
        Command::Store { command } => store::run(vol, command),
        Command::Status { json } => {
            let st = vol.status()?;
            let live = mount.map(|m| m.status()).transpose()?;
            if json {
                let mut value = serde_json::to_value(&st)?;
                if let (Some(live), Some(map)) = (&live, value.as_object_mut()) {
                    map.insert("mount".into(), serde_json::to_value(live)?);
                }
                outln!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                format::print_status(&st)?;
                if let Some(live) = &live {
                    format::print_mount_status(live)?;
                }
            }
            Ok(())
        }
        other => anyhow::bail!("not an admin command: {other:?}"),
    }
}

/// Runs a control client's command (`args` as typed after `qsfs`) in this mount.
fn run_in_mount(mount: &qsfs::fuse::MountHandle, args: &[String]) -> Result<()> {
    let argv = std::iter::once("qsfs".to_string()).chain(args.iter().cloned());
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        // --help, --version and usage errors: clap's text, as the client would have printed it.
        Err(e) => anyhow::bail!("{}", e.render().to_string().trim_end()),
    };
    let vol = mount.volume();
    match cli.command {
        Command::Stats { raw: true, .. } => {
            let text = mount
                .metrics_text()
                .context("this mount keeps no metrics")?;
            for line in text.lines() {
                outln!("{line}");
            }
            Ok(())
        }
        Command::Fsck { repair: true, .. } => anyhow::bail!(
            "fsck --repair needs a quiet volume: `qsfs umount` it first (fsck without --repair runs while mounted)"
        ),
        command if command.is_admin() => {
            let result = run_admin(vol, command, Some(mount));
            finish_reading(vol, result)
        }
        other => anyhow::bail!(
            "`qsfs {}` does not run through a mount's control socket: use the mountpoint, or unmount first",
            command_name(&other)
        ),
    }
}

/// The subcommand's name as typed.
fn command_name(command: &Command) -> String {
    let debug = format!("{command:?}");
    let name = debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("")
        .to_string();
    // InstallHelper → install-helper, TakeOver → take-over.
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// A failed command's one-line message: each cause once (errors that already print their source, as
/// `context: source`, are not followed by that source again).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !line.ends_with(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

/// Refuses store URIs typed on the command line that carry their password: every local user can read a
/// process's arguments (`ps`, `/proc/PID/cmdline`) and they stay in shell history. Refused rather than accepted
/// with a warning: by the time a warning shows, the password has been exposed — refusing at least keeps it out of
/// `qsfs.toml`, the stores' descriptor and every later command line, and teaches the form that never exposes it.
fn refuse_inline_passwords(uris: &[String]) -> Result<()> {
    for u in uris {
        if let Ok(parsed) = qsfs_backends::StoreUri::parse(u)
            && parsed.has_inline_password()
        {
            anyhow::bail!(
                "store {parsed}: a password on the command line is visible to every local user (ps, /proc) and \
                 stays in shell history; put it in a file only you can read (chmod 600) and use \
                 ?password-file=PATH, or name an environment variable with ?password-env=VAR"
            );
        }
    }
    Ok(())
}

/// Opens the volume for a command. Every command that changes something ends in `finish` or `finish_reading`, which ship
/// what it changed (a put, a repair's new shard locations, shards a read found bad) to the stores' metadata log.
fn open_volume(dir: &std::path::Path) -> Result<Volume> {
    Ok(Volume::open_replicated(dir)?)
}

/// Ends a command: ships its metadata changes to the stores even when the command failed part-way (what it did
/// commit must reach the stores too); the command's own error comes first.
fn finish(vol: &Volume, result: Result<()>) -> Result<()> {
    let shipped = vol.replicate_metadata();
    result?;
    Ok(shipped?)
}

/// Ends a command that reads or maintains: what it changed (shards found bad, repaired or queued) goes to the
/// stores when it can, but the command does not fail because the metadata log cannot reach its quorum — with M
/// stores down that is exactly when an admin runs it. Its changes stay pending locally and ship at the next
/// durability point (a restore in between finds the older shard locations and fsck queues them for repair).
fn finish_reading(vol: &Volume, result: Result<()>) -> Result<()> {
    if let Err(e) = vol.replicate_metadata() {
        tracing::warn!(error = %e, "metadata changes not yet on the stores");
    }
    result
}

fn list(vol: &Volume, path: &str, long: bool) -> Result<()> {
    let rows = vol.meta().read(|c| {
        let ino =
            meta::resolve(c, path)?.ok_or_else(|| qsfs::QsfsError::NotFound(path.to_string()))?;
        let inode =
            meta::get_inode(c, ino)?.ok_or_else(|| qsfs::QsfsError::NotFound(path.to_string()))?;
        let entries = if inode.kind == FileKind::Dir {
            meta::list_dir(c, ino)?
                .into_iter()
                .map(|e| (e.name, e.ino))
                .collect()
        } else {
            let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path);
            vec![(name.as_bytes().to_vec(), ino)]
        };
        let mut rows = Vec::new();
        for (name, ino) in entries {
            let Some(inode) = meta::get_inode(c, ino)? else {
                continue;
            };
            let target = if inode.kind == FileKind::Symlink {
                meta::read_link(c, ino)?
            } else {
                None
            };
            rows.push((name, inode, target));
        }
        Ok(rows)
    })?;
    let tty = output::stdout_is_terminal();
    for (name, inode, target) in rows {
        let name = quote::quote_name(&name, tty);
        if long {
            outln!(
                "{}",
                format::long_line(&name, &inode, target.as_deref(), tty)
            );
        } else {
            outln!("{name}");
        }
    }
    Ok(())
}
