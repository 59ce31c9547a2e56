//! One writer. A volume directory copied (`cp -a`) or restored onto a second machine must never destroy the
//! first's data, and two writers must never interleave their metadata logs.
//!
//! The writer lease is a sealed object on every store that can hold named objects: the epoch, the holder's
//! fingerprint (a hash of the machine id, the volume directory's path and the volume id) and where the holder is.
//! Stores cannot all compare-and-swap (0-db cannot), so the lease is not a lock but a claim with an order: the
//! highest (epoch, holder) among the reachable stores' copies wins.
//!
//! - At open, a copy whose fingerprint holds the newest lease (or finds none: a volume from before leases) is the
//!   writer. Any other copy is read-only: every metadata change it tries is refused (`MetaStore` refuses
//!   transactions that change logged rows), so it writes no shard, ships no record and deletes nothing.
//! - `qsfs take-over` (or `restore --take-over`) writes a lease with a higher epoch, reads the leases back (a
//!   racing taker with the same epoch loses to the higher fingerprint), and starts the new epoch with a snapshot.
//!   Records are named by (epoch, seq), so a stale writer that has not noticed yet only adds records to its own
//!   abandoned epoch, which no restore follows.
//! - The writer re-reads the lease before deleting garbage and every `RECHECK` while mounted; finding a newer
//!   lease turns it read-only on the spot.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::record::Lease;
use crate::error::{QsfsError, Result};
use crate::meta::{self, journal};
use crate::volume::Volume;

/// How often a mount re-reads the lease.
pub const RECHECK: Duration = Duration::from_secs(15);

/// What this copy of the volume may do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Writer {
    /// It holds the lease of this epoch.
    Holder { epoch: u64 },
    /// No store could be asked (none that holds named objects answers): writes fail for lack of stores anyway.
    Unknown,
    /// Another copy holds the volume: the message says which and what to do.
    ReadOnly(String),
}

/// The lease state of an open volume.
pub struct LeaseState {
    writer: Mutex<Writer>,
    checked: Mutex<Option<Instant>>,
}

impl Default for LeaseState {
    fn default() -> Self {
        LeaseState {
            writer: Mutex::new(Writer::Unknown),
            checked: Mutex::new(None),
        }
    }
}

impl LeaseState {
    pub fn writer(&self) -> Writer {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, w: Writer) {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = w;
        *self.checked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// This copy's fingerprint and a description of where it is.
fn fingerprint(vol: &Volume) -> ([u8; 32], String) {
    let machine = std::fs::read_to_string("/etc/machine-id")
        .or_else(|_| std::fs::read_to_string("/var/lib/dbus/machine-id"))
        .unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into());
    let mut h = blake3::Hasher::new_derive_key("qsfs 2026 writer fingerprint");
    h.update(machine.trim().as_bytes());
    h.update(b"\0");
    h.update(vol.root().as_os_str().as_encoded_bytes());
    h.update(b"\0");
    h.update(vol.config().volume_id.as_bytes());
    (
        *h.finalize().as_bytes(),
        format!("{host}:{}", vol.root().display()),
    )
}

/// This copy's claim on `epoch`, taken now.
fn new_lease(holder: [u8; 32], description: String, epoch: u64) -> Lease {
    Lease {
        epoch,
        holder,
        taken_ns: meta::now_ns(),
        description,
    }
}

impl Volume {
    /// The newest lease any reachable store holds (`None` when none holds one), and whether any store answered.
    fn newest_lease(&self) -> (Option<Lease>, bool) {
        let keys = self.replica().keys();
        let mut newest: Option<Lease> = None;
        let mut answered = false;
        // Leases are written to the log quorum: any named − quorum + 1 answers include the newest one.
        let named = self.stores().named_slots().len();
        let quorum = self.config().write_quorum.min(named);
        let enough = named.saturating_sub(quorum) + 1;
        for (_, uri, served) in self
            .io()
            .block_on(self.stores().read_named_from(&keys.lease_key(), enough))
        {
            match served {
                Ok(found) => {
                    answered = true;
                    let Some(blob) = found else { continue };
                    match keys.open_lease(&blob) {
                        Ok(l) => {
                            if newest
                                .as_ref()
                                .is_none_or(|n| (l.epoch, l.holder) > (n.epoch, n.holder))
                            {
                                newest = Some(l);
                            }
                        }
                        Err(e) => tracing::warn!(store = %uri, error = %e, "writer lease ignored"),
                    }
                }
                Err(e) => tracing::debug!(store = %uri, error = %e, "writer lease unreadable"),
            }
        }
        (newest, answered)
    }

    fn read_only_message(lease: &Lease) -> String {
        format!(
            "this copy of the volume is read-only: its writer is {} (since {}, epoch {}); run `qsfs take-over` here \
             to make this copy the writer (the other copy then turns read-only)",
            lease.description,
            crate::meta::utc_time(lease.taken_ns),
            lease.epoch
        )
    }

    /// At open: decides whether this copy is the writer (see the module docs).
    pub(crate) fn claim_lease(&self) -> Result<()> {
        let (me, desc) = fingerprint(self);
        let (newest, answered) = self.newest_lease();
        let writer = match newest {
            Some(l) if l.holder == me => Writer::Holder { epoch: l.epoch },
            Some(l) => Writer::ReadOnly(Self::read_only_message(&l)),
            None if !answered => Writer::Unknown,
            None => {
                let epoch = self.meta().read(journal::log_state)?.epoch;
                self.write_lease(&new_lease(me, desc, epoch))?;
                Writer::Holder { epoch }
            }
        };
        self.apply_writer(writer);
        Ok(())
    }

    fn write_lease(&self, lease: &Lease) -> Result<()> {
        let keys = self.replica().keys();
        let quorum = self
            .config()
            .write_quorum
            .min(self.stores().named_slots().len());
        self.io().block_on(self.stores().replicate(
            &keys.lease_key(),
            &keys.seal_lease(lease),
            quorum,
        ))?;
        Ok(())
    }

    fn apply_writer(&self, writer: Writer) {
        match &writer {
            Writer::ReadOnly(why) => {
                tracing::warn!("{why}");
                self.meta().set_read_only(Some(why.clone()));
            }
            _ => self.meta().set_read_only(None),
        }
        self.replica().lease.set(writer);
    }

    /// Makes this copy read-only for the rest of its life (a `--read-only` mount), whatever the lease says.
    pub fn make_read_only(&self, why: &str) {
        self.apply_writer(Writer::ReadOnly(why.to_string()));
    }

    /// A mount remounted read-only (`true`) or back read-write: read-only until then, and afterwards this copy is
    /// the writer again if the lease says so.
    pub fn follow_remount(&self, read_only: bool) {
        if read_only {
            tracing::warn!("remounted read-only: nothing is written until a remount read-write");
            self.make_read_only("the mount was remounted read-only");
        } else if let Err(e) = self.claim_lease() {
            tracing::warn!(error = %e, "remounted read-write, but the writer lease could not be checked");
        }
    }

    /// Where the lease's holder is (host and volume path), when a store says.
    pub fn lease_holder(&self) -> Option<String> {
        self.newest_lease().0.map(|l| l.description)
    }

    /// What this copy may do.
    pub fn writer(&self) -> Writer {
        self.replica().lease.writer()
    }

    /// Fails with the reason when this copy is read-only.
    pub fn check_writer(&self) -> Result<()> {
        match self.writer() {
            Writer::ReadOnly(why) => Err(QsfsError::ReadOnly(why)),
            _ => Ok(()),
        }
    }

    /// Re-reads the lease (before deleting anything, and every `RECHECK` in a mount): a newer lease held by
    /// another copy turns this one read-only.
    pub fn recheck_lease(&self) -> Result<()> {
        let Writer::Holder { epoch } = self.writer() else {
            return self.check_writer();
        };
        let (me, _) = fingerprint(self);
        if let (Some(l), _) = self.newest_lease()
            && l.holder != me
            && l.epoch >= epoch
        {
            tracing::error!("the volume was taken over by another copy; this one is now read-only");
            self.apply_writer(Writer::ReadOnly(Self::read_only_message(&l)));
        } else {
            self.replica().lease.set(Writer::Holder { epoch });
        }
        self.check_writer()
    }

    /// `recheck_lease` if the last check is older than `RECHECK`.
    pub fn recheck_lease_if_due(&self) -> Result<()> {
        let due = self
            .replica()
            .lease
            .checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= RECHECK);
        if due {
            self.recheck_lease()
        } else {
            self.check_writer()
        }
    }

    /// Makes this copy the volume's writer: a lease with a higher epoch, read back, then a snapshot that starts
    /// the new epoch's log. Returns the previous holder's description, if another copy held it.
    pub fn take_over(&self) -> Result<Option<String>> {
        let (me, desc) = fingerprint(self);
        let (newest, answered) = self.newest_lease();
        if !answered {
            return Err(QsfsError::MetaLog(
                "no store that holds the writer lease answers: cannot take the volume over".into(),
            ));
        }
        let previous = newest
            .as_ref()
            .filter(|l| l.holder != me)
            .map(|l| l.description.clone());
        let local = self.meta().read(journal::log_state)?.epoch;
        let epoch = newest.as_ref().map_or(local, |l| l.epoch).max(local) + 1;
        let lease = new_lease(me, desc, epoch);
        self.write_lease(&lease)?;
        match self.newest_lease().0 {
            Some(l) if l == lease => {}
            Some(l) => {
                self.apply_writer(Writer::ReadOnly(Self::read_only_message(&l)));
                return Err(QsfsError::ReadOnly(format!(
                    "another copy took the volume over at the same time: {}",
                    l.description
                )));
            }
            None => {
                return Err(QsfsError::MetaLog(
                    "the new writer lease could not be read back".into(),
                ));
            }
        }
        self.apply_writer(Writer::Holder { epoch });
        self.snapshot_in_epoch(epoch)?;
        Ok(previous)
    }
}
