//! `qsfs store add|drain|readmit URI`: growing, shrinking and re-admitting the volume's stores.

use anyhow::{Result, bail};
use clap::Subcommand;
use qsfs::Volume;
use qsfs::repair::RepairOptions;
use qsfs::repair::admin;

use super::repair::{print_report, with_bar};

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Add a store (capacity): writes its identity marker and appends it to qsfs.toml.
    Add {
        #[arg(value_name = "URI")]
        uri: String,
    },
    /// Move every shard off a store, then remove it from qsfs.toml so it can be retired.
    Drain {
        /// The store: its URI (as configured or as `status` shows it) or its id.
        #[arg(value_name = "URI")]
        uri: String,
        #[arg(long)]
        json: bool,
    },
    /// Re-admit a store that came back empty, without its identity marker (a wiped or replaced server at the
    /// same address): writes a fresh marker and queues every shard it held for rebuilding (`qsfs repair`).
    Readmit {
        #[arg(value_name = "URI")]
        uri: String,
    },
}

impl StoreCommand {
    /// The store the command names.
    pub fn uri(&self) -> &str {
        match self {
            StoreCommand::Add { uri }
            | StoreCommand::Drain { uri, .. }
            | StoreCommand::Readmit { uri } => uri,
        }
    }
}

pub fn run(vol: &Volume, cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Add { uri } => {
            let added = admin::add_store(vol, &uri)?;
            outln!("added store {} ({}) to the volume", added.id, added.uri);
            Ok(())
        }
        StoreCommand::Readmit { uri } => {
            let r = admin::readmit_store(vol, &uri)?;
            outln!(
                "re-admitted store {} ({}): wrote a fresh identity marker; {} shards queued for rebuilding — \
                 run `qsfs repair`",
                r.id,
                r.uri,
                r.queued
            );
            Ok(())
        }
        StoreCommand::Drain { uri, json } => {
            let mut opts = RepairOptions::new(&vol.config().audit);
            opts.throttle = super::output::admin_throttle();
            let drained = with_bar(|progress| admin::drain_store(vol, &uri, &opts, progress))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&drained)?);
            } else {
                print_report(&drained.repair)?;
            }
            if drained.retired {
                if !json {
                    outln!(
                        "drained store {} ({}): it holds no shards of this volume and was removed from qsfs.toml; \
                         its identity marker is still on it",
                        drained.id,
                        drained.uri
                    );
                }
                Ok(())
            } else {
                bail!(
                    "store {} ({}) still holds {} shards that could not be moved; it stays in qsfs.toml",
                    drained.id,
                    drained.uri,
                    drained.left
                )
            }
        }
    }
}
