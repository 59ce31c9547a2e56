//! The command line's grammar: the global options and every subcommand with its arguments, as clap parses them.
//! Dispatch lives in the parent module.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use qsfs::config::{ByteSize, HumanDuration};

use super::store;

#[derive(Parser, Debug)]
#[command(
    name = "qsfs",
    version,
    about = "A quantum-safe storage filesystem: encrypted, erasure-coded, audited"
)]
pub struct Cli {
    /// The volume directory.
    #[arg(long, global = true, env = "QSFS_VOLUME", value_name = "DIR")]
    pub(super) volume: Option<PathBuf>,
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
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
        /// How long a closed small file's upload may wait for others to share its pack segment, e.g. 30s (at
        /// most 1h): fewer, fuller packs and fewer store requests, for longer spans in which only this machine
        /// holds the data. fsync never waits for it. Default: a pack uploads once closes pause for 20 ms, at
        /// most 500 ms after its first file.
        #[arg(long, value_name = "DURATION")]
        upload_lag: Option<HumanDuration>,
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
    pub(super) fn is_admin(&self) -> bool {
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
