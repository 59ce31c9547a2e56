//! Asking the stores how they are: the one probe `status`, `statfs` and repair's view of the stores use —
//! every store at once, each bounded by `PROBE_TIMEOUT`, so one stalled store costs seconds, never a hang.

use qsfs_backends::StoreHealth;
use tokio::task::JoinSet;

use super::{PROBE_TIMEOUT, StoreSet, StoreState};

impl StoreSet {
    /// Probes every store concurrently: its health, or why it is not answering (a store already marked down
    /// is not asked; its reason is given). In store order.
    pub async fn probe_all(&self) -> Vec<(u32, Result<StoreHealth, String>)> {
        let mut tasks = JoinSet::new();
        for slot in self.slots() {
            let slot = slot.clone();
            tasks.spawn(async move {
                let res = match slot.state() {
                    StoreState::Down(reason) => Err(reason),
                    StoreState::Up => match tokio::time::timeout(PROBE_TIMEOUT, slot.store.probe())
                        .await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("{}: no answer within {PROBE_TIMEOUT:?}", slot.uri)),
                    },
                };
                (slot.id, res)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            if let Ok(r) = joined {
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.0);
        out
    }
}
