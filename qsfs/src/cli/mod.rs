//! Command-line parsing and dispatch. Each subcommand opens the volume, does its work through `Volume`, prints a
//! human summary (or JSON where asked) and returns an error for the one-line message in `main`.

mod format;
mod progress;
mod transfer;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use qsfs::config::ByteSize;
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
        /// Shards that must be durable before a write commits (default K+M, at least K+1).
        #[arg(long, value_name = "N")]
        write_quorum: Option<usize>,
        /// A store: dir:/path, redis://[:password@]host:port/db, zdb://host:port/ns[?password-file=F&mode=seq].
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
            println!("created volume {}", root.display());
            println!(
                "  {data_shards} data + {parity_shards} parity shards, {segment_size} segments"
            );
            match passphrase_env {
                None => println!(
                    "  key: {} — back it up somewhere safe: without it nothing in this volume can be read",
                    root.join(qsfs::volume::KEY_FILE).display()
                ),
                Some(var) => println!(
                    "  key: derived from the passphrase in ${var}; remember the passphrase"
                ),
            }
            Ok(())
        }
        Command::Put { mut paths } => {
            let dest = paths.pop().expect("clap requires two paths");
            let dest = dest
                .to_str()
                .context("DEST must be a UTF-8 volume path like /a/b")?
                .to_string();
            let vol = Volume::open(&dir)?;
            transfer::put(&vol, &paths, &dest)
        }
        Command::Get { src, dest } => {
            let vol = Volume::open(&dir)?;
            transfer::get(&vol, &src, &dest)
        }
        Command::Ls { long, path } => {
            let vol = Volume::open(&dir)?;
            list(&vol, &path, long)
        }
        Command::Rm { recursive, path } => {
            let vol = Volume::open(&dir)?;
            vol.remove(&path, recursive)?;
            vol.collect_garbage()?;
            Ok(())
        }
        Command::Status { json } => {
            let vol = Volume::open(&dir)?;
            let st = vol.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                format::print_status(&st);
            }
            Ok(())
        }
    }
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
    for (name, inode, target) in rows {
        let name = String::from_utf8_lossy(&name);
        if long {
            println!("{}", format::long_line(&name, &inode, target.as_deref()));
        } else {
            println!("{name}");
        }
    }
    Ok(())
}
