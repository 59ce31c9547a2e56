//! Undoing a volume's creation that failed part-way (`init`, `restore`): what they wrote into the volume
//! directory, and the identity markers `init` wrote to the stores — left behind, those would make every retry
//! fail with "store belongs to another volume".

use std::path::Path;

use qsfs_backends::{StoreError, StoreIdentity, StoreUri, open_store};

use super::{CONFIG_FILE, KEY_FILE, META_FILE};
use crate::config::StoreConfig;
use crate::error::QsfsError;
use crate::store_set::PROBE_TIMEOUT;

/// Undoes a failed `init` or `restore`: removes what either writes into a volume directory, plus `extra` (init's
/// embedded stores; never a restore's, which may be the very stores it restores from), and the directory itself if
/// it did not exist before.
pub(crate) fn remove_partial_volume(root: &Path, existed: bool, extra: &[&str]) {
    let written = [
        CONFIG_FILE,
        KEY_FILE,
        META_FILE,
        "meta.db-wal",
        "meta.db-shm",
        "meta.db.restore.tmp",
        "cache",
        "lock",
    ];
    for name in written.iter().chain(extra) {
        let p = root.join(name);
        let _ = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    if !existed {
        let _ = std::fs::remove_dir(root);
    }
}

/// Removes the identity markers that name volume `volume_id` (never another volume's) from `stores`. Best
/// effort: a store that cannot be reached now keeps its marker, and the warning names it.
pub(super) async fn take_back_markers(stores: &[StoreConfig], volume_id: &str) {
    for c in stores {
        let identity = StoreIdentity {
            volume_id: volume_id.to_string(),
            store_id: c.id,
        };
        let removed = async {
            let uri = StoreUri::parse(&c.uri)?;
            let store = open_store(&uri, false).await?;
            tokio::time::timeout(PROBE_TIMEOUT, store.remove_identity(&identity))
                .await
                .map_err(|_| StoreError::Unavailable {
                    uri: uri.to_string(),
                    reason: format!("no answer within {PROBE_TIMEOUT:?}"),
                })??;
            Ok::<(), QsfsError>(())
        };
        if let Err(e) = removed.await {
            tracing::warn!(store = c.id, error = %e, "identity marker of the failed init left on its store");
        }
    }
}
