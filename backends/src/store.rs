//! The `ShardStore` contract: what qsfs needs from a place that keeps opaque, immutable shard blobs.
//!
//! Stores are append-only in spirit: a shard is written once under a content-derived key and never changed in
//! place. A store knows nothing of segments, keys or metadata; it sees only ciphertext blobs and opaque names.

use std::fmt;

use async_trait::async_trait;

use crate::error::Result;

/// The content-derived name qsfs gives a shard (derived from its Merkle root and the volume's naming key).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey(pub [u8; 32]);

impl ShardKey {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShardKey({})", self.to_hex())
    }
}

/// Where a stored shard can be found again. For key-addressed stores (dir, redis, 0-db user mode) it is the
/// shard key's bytes; for 0-db sequential namespaces it is the 8-byte id the server assigned. The caller records it
/// in metadata and hands it back verbatim.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locator(pub Vec<u8>);

impl Locator {
    pub fn from_key(key: &ShardKey) -> Self {
        Locator(key.0.to_vec())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(&self.0)
    }
}

impl fmt::Debug for Locator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Locator({})", self.to_hex())
    }
}

/// Which volume and which of its store slots a store belongs to. Written once at `init`; checked on every open so a
/// wrong or empty store (an unmounted disk, a flushed redis) is refused rather than silently filled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreIdentity {
    pub volume_id: String,
    pub store_id: u32,
}

impl StoreIdentity {
    const MAGIC: &'static str = "qsfs-store-identity v1";

    /// The marker's on-store bytes: a small versioned text.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{}\nvolume={}\nstore={}\n",
            Self::MAGIC,
            self.volume_id,
            self.store_id
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<StoreIdentity> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != Self::MAGIC {
            return None;
        }
        let volume_id = lines.next()?.strip_prefix("volume=")?.to_string();
        let store_id = lines.next()?.strip_prefix("store=")?.parse().ok()?;
        Some(StoreIdentity {
            volume_id,
            store_id,
        })
    }
}

/// What a probe learned about a store: it answered, and how much room it has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Bytes that can still be written, when the store can tell.
    pub free_bytes: Option<u64>,
    /// Bytes the store reports as used by its data, when it can tell.
    pub used_bytes: Option<u64>,
}

/// A place that keeps shard blobs. Object-safe: qsfs holds stores as `Arc<dyn ShardStore>`.
///
/// Every method is one round trip (or a few) and returns `StoreError` variants that say whether a retry can help.
/// `put` returns only once the blob is durable on the store.
#[async_trait]
pub trait ShardStore: Send + Sync + fmt::Debug {
    /// The store's URI with any password removed: safe to log and show.
    fn uri(&self) -> &str;

    /// Whether `get_range` works. 0-db cannot read ranges; callers then read whole values.
    fn supports_range(&self) -> bool;

    /// The largest value the store accepts, if it has a limit (0-db: 8 MiB).
    fn max_value_size(&self) -> Option<u64>;

    /// Where a blob put under `key` can be read back, known without asking the store: `Some(key's bytes)` for
    /// key-addressed stores (the default), `None` where the store assigns locators (0-db seq mode). Lets a client
    /// with nothing but the key find well-known objects (the metadata log) on a store.
    fn locate(&self, key: &ShardKey) -> Option<Locator> {
        Some(Locator::from_key(key))
    }

    /// Stores `data` under `key` durably and says where to find it again. Writing the same key twice with the same
    /// bytes is not an error.
    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator>;

    /// The whole blob, if it is at most `max_len` bytes long. `NotFound` when absent; `Refused` when the store
    /// holds or sends more than `max_len` bytes (or something that is not a blob), checked before the bytes are
    /// buffered: a hostile store cannot make a reader allocate more than it expects. Callers know each shard's
    /// length from metadata and pass it (plus a little slack, so a slightly extended blob reaches verification).
    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>>;

    /// `len` bytes from `offset`. `RangeUnsupported` on stores that cannot; `RangeOutOfBounds` past the end.
    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Removes the blob. Deleting an absent blob succeeds (deletes are retried after crashes).
    async fn delete(&self, loc: &Locator) -> Result<()>;

    async fn exists(&self, loc: &Locator) -> Result<bool>;

    /// Checks the store answers and reports its capacity.
    async fn probe(&self) -> Result<StoreHealth>;

    /// Every shard locator the store holds (not the identity marker): lets `gc`/`fsck` find orphans.
    async fn list(&self) -> Result<Vec<Locator>>;

    /// Writes the identity marker at volume creation. `IdentityExists` if a marker is already there.
    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()>;

    /// The identity marker, or `None` when the store has none.
    async fn read_identity(&self) -> Result<Option<StoreIdentity>>;

    /// Removes the identity marker if it is `identity` — a volume whose creation failed undoing itself, so a retry
    /// finds the store free. Another volume's marker, or none, is left alone. A `Protocol` error where a marker is
    /// permanent (0-db seq mode: it is the namespace's first entry, and ids are never reused).
    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()>;
}

/// Confirms a store belongs to `expected`; the check every open makes before using a store.
pub async fn verify_identity(store: &dyn ShardStore, expected: &StoreIdentity) -> Result<()> {
    use crate::error::StoreError;
    match store.read_identity().await? {
        None => Err(StoreError::IdentityMissing {
            uri: store.uri().to_string(),
        }),
        Some(found) if &found == expected => Ok(()),
        Some(found) => Err(StoreError::IdentityMismatch {
            uri: store.uri().to_string(),
            found_volume: found.volume_id,
            found_store: found.store_id,
            expected_volume: expected.volume_id.clone(),
            expected_store: expected.store_id,
        }),
    }
}
