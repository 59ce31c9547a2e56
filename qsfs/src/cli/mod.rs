//! Command-line parsing and dispatch. Each subcommand opens the volume, does its work through `Volume`, prints a
//! human summary (or JSON where asked) and returns an error for the one-line message in `main`.

/// `println!` for command output, returning [`StdoutClosed`] from the enclosing function instead of panicking when
/// the reader of stdout has gone (`qsfs status | head -n 1`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        $crate::cli::output::write_line(format_args!($($arg)*)).map_err($crate::cli::stdout_error)?
    }};
}

mod args;
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
use clap::Parser;
use qsfs::meta::{self, FileKind};
use qsfs::{InitOptions, Volume};

pub use args::Cli;
use args::Command;

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
            upload_lag,
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
                    upload_lag,
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
