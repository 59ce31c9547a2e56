//! `S3Store`: shards as objects in an S3-compatible bucket (AWS S3, Backblaze B2, MinIO, Garage, Ceph RGW, …),
//! spoken to through Apache OpenDAL so that other object services can follow without new store code.
//!
//! Layout under the URI's prefix: `shards/ab/<64 hex>` (the first byte of the key as a fan-out, so listings and
//! per-prefix request limits spread over 256 prefixes) and `identity`, the store's marker. Objects are written
//! once: puts carry `If-None-Match: *`, so where the server supports conditional writes an existing shard is
//! never overwritten — unless its bytes differ from what its content-derived name commits to (a damaged copy),
//! which a repair's put then replaces. Servers without conditional writes (Garage 2.x) treat the header as absent:
//! a re-put of a shard writes the same bytes, and the identity marker is checked for first.
//!
//! Every read is a ranged GET bounded by what the caller expects; the object's size comes back in
//! `Content-Range` and an oversized object is refused before its body is read (`client::BoundedFetch` bounds
//! the body itself, whatever the server claims). No network I/O happens in `new`: a volume whose bucket is
//! unreachable still opens, and the first request answers `Unavailable`.
//!
//! Capacity is unknown (`probe` reports none): S3 has no API for it. Retries are the caller's (the same wrapper
//! as every store); OpenDAL's own retry layer is not compiled in.

use std::ops::Range;

use async_trait::async_trait;
use futures::TryStreamExt;
use opendal::layers::HttpClientLayer;
use opendal::{BufferStream, ErrorKind, Operator};

use crate::error::{Result, StoreError};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};
use crate::uri::{S3Style, S3Uri};

mod client;
mod errors;

pub use client::read_credentials_file;

const SHARDS: &str = "shards/";
const IDENTITY: &str = "identity";
/// Largest identity marker accepted (a real one is under 200 bytes).
const IDENTITY_MAX: u64 = 64 * 1024;

/// A shard store in one bucket (under a prefix).
pub struct S3Store {
    uri: String,
    bucket: String,
    op: Operator,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store").field("uri", &self.uri).finish()
    }
}

impl S3Store {
    /// Prepares a store without contacting it; credentials (and a `ca-file`) are read now. Must be called inside a
    /// tokio runtime.
    pub fn new(uri: &S3Uri) -> Result<S3Store> {
        let shown = uri.to_string();
        let creds = client::Credentials::load(uri).map_err(|reason| StoreError::Auth {
            uri: shown.clone(),
            reason,
        })?;
        let mut builder = opendal::services::S3::default()
            .bucket(&uri.bucket)
            .root(&format!("/{}", uri.prefix))
            .region(&uri.region)
            .access_key_id(&creds.access_key_id)
            .secret_access_key(&creds.secret_access_key)
            // Nothing but what the URI and its credentials say: no ~/.aws/config, no instance metadata.
            .disable_config_load()
            .disable_ec2_metadata();
        if let Some(token) = &creds.session_token {
            builder = builder.session_token(token);
        }
        if let Some(endpoint) = &uri.endpoint {
            builder = builder.endpoint(endpoint);
        }
        if uri.style == S3Style::Virtual {
            builder = builder.enable_virtual_host_style();
        }
        let http = client::http_client(uri, &shown)?;
        let op = Operator::new(builder)
            .map_err(|e| StoreError::InvalidUri {
                uri: shown.clone(),
                reason: e.to_string(),
            })?
            .layer(HttpClientLayer::new(http))
            .finish();
        Ok(S3Store {
            uri: shown,
            bucket: uri.bucket.clone(),
            op,
        })
    }

    fn path(&self, loc: &Locator) -> Result<String> {
        let hex = loc.to_hex();
        if hex.len() < 2 {
            return Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: "empty locator".into(),
            });
        }
        Ok(format!("{SHARDS}{}/{hex}", &hex[..2]))
    }

    /// The locator of a listed object path, or `None` for anything not named like a shard.
    fn locator_of(path: &str) -> Option<Locator> {
        let (fan, hex) = path.strip_prefix(SHARDS)?.split_once('/')?;
        if fan.len() != 2 || !hex.starts_with(fan) {
            return None;
        }
        hex::decode(hex).ok().map(Locator)
    }

    fn err(&self, e: opendal::Error) -> StoreError {
        errors::map_error(&self.uri, &self.bucket, e)
    }

    fn refused(&self, reason: String) -> StoreError {
        StoreError::Refused {
            uri: self.uri.clone(),
            reason,
        }
    }

    /// Starts a GET of `range` of `path`: the object's whole size (from `Content-Range`) and its unread body.
    async fn open_read(
        &self,
        path: &str,
        range: Range<u64>,
    ) -> opendal::Result<(u64, BufferStream)> {
        let reader = self.op.reader(path).await?;
        let mut stream = reader.into_stream(range).await?;
        let size = stream.metadata().await?.content_length();
        Ok((size, stream))
    }

    /// The `want` bytes of a body, refused if a piece would take it past them. Not read to its end: OpenDAL
    /// checks a body against the range asked for, which may run past the object's end (a whole-object read asks
    /// for one byte more than it accepts), and the object's size already says how many bytes are due.
    async fn collect(&self, mut body: BufferStream, want: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        while (out.len() as u64) < want {
            let Some(buf) = body.try_next().await.map_err(|e| self.err(e))? else {
                return Err(StoreError::Unavailable {
                    uri: self.uri.clone(),
                    reason: format!("reply cut short after {} of {want} bytes", out.len()),
                });
            };
            if (out.len() + buf.len()) as u64 > want {
                return Err(self.refused(format!("served more than the {want} bytes due")));
            }
            for chunk in buf {
                out.extend_from_slice(&chunk);
            }
        }
        Ok(out)
    }

    async fn size_of(&self, path: &str) -> Result<u64> {
        let meta = self.op.stat(path).await.map_err(|e| self.err(e))?;
        Ok(meta.content_length())
    }

    /// The whole object at `path` if it holds at most `max_len` bytes.
    async fn read_object(&self, path: &str, max_len: u64) -> Result<Vec<u8>> {
        let (size, body) = match self.open_read(path, 0..max_len.saturating_add(1)).await {
            Ok(found) => found,
            // A range from 0 is unsatisfiable only for an empty object.
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => {
                return match self.size_of(path).await? {
                    0 => Ok(Vec::new()),
                    n => Err(self.refused(format!("{n}-byte object answered as empty"))),
                };
            }
            Err(e) => return Err(self.err(e)),
        };
        if size > max_len {
            return Err(self.refused(format!(
                "object holds {size} bytes, more than the {max_len} expected"
            )));
        }
        self.collect(body, size).await
    }

    /// Writes `data` at `path` unless an object is already there: `Ok(false)` when one was.
    async fn create(&self, path: &str, data: &[u8]) -> Result<bool> {
        match self
            .op
            .write_with(path, data.to_vec())
            .if_not_exists(true)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::ConditionNotMatch => Ok(false),
            Err(e) => Err(self.err(e)),
        }
    }

    fn out_of_bounds(&self, offset: u64, len: u64, size: u64) -> StoreError {
        StoreError::RangeOutOfBounds {
            uri: self.uri.clone(),
            offset,
            len,
            size,
        }
    }
}

#[async_trait]
impl ShardStore for S3Store {
    fn uri(&self) -> &str {
        &self.uri
    }

    fn supports_range(&self) -> bool {
        true
    }

    fn max_value_size(&self) -> Option<u64> {
        // One PUT takes up to 5 GiB: far above any shard.
        None
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        let loc = Locator::from_key(key);
        let path = self.path(&loc)?;
        if self.create(&path, data).await? {
            return Ok(loc);
        }
        // Already there. The name commits to the content: the same bytes mean done; other bytes are a damaged
        // copy, which a repair writes this put to replace.
        match self.read_object(&path, data.len() as u64).await {
            Ok(existing) if existing == data => Ok(loc),
            // Unreadable for now: the caller retries the put, which looks again.
            Err(e) if e.is_retryable() => Err(e),
            // Other bytes, too many of them, or gone since the create was refused.
            _ => {
                tracing::warn!(store = %self.uri, %path, "replacing a damaged copy of a shard");
                self.op
                    .write(&path, data.to_vec())
                    .await
                    .map_err(|e| self.err(e))?;
                Ok(loc)
            }
        }
    }

    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        self.read_object(&self.path(loc)?, max_len).await
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        let path = self.path(loc)?;
        let Some(end) = offset.checked_add(len).filter(|_| len > 0) else {
            // Nothing to fetch (or a range no object can hold): the answer depends on the size alone.
            let size = self.size_of(&path).await?;
            return match offset.checked_add(len) {
                Some(end) if end <= size => Ok(Vec::new()),
                _ => Err(self.out_of_bounds(offset, len, size)),
            };
        };
        let (size, body) = match self.open_read(&path, offset..end).await {
            Ok(found) => found,
            Err(e) if e.kind() == ErrorKind::RangeNotSatisfied => {
                let size = self.size_of(&path).await?;
                return Err(self.out_of_bounds(offset, len, size));
            }
            Err(e) => return Err(self.err(e)),
        };
        if end > size {
            return Err(self.out_of_bounds(offset, len, size));
        }
        self.collect(body, len).await
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        // S3 answers a delete of an absent object with success.
        self.op
            .delete(&self.path(loc)?)
            .await
            .map_err(|e| self.err(e))
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        self.op
            .exists(&self.path(loc)?)
            .await
            .map_err(|e| self.err(e))
    }

    async fn probe(&self) -> Result<StoreHealth> {
        // A one-key listing: unlike a HEAD, its error replies have a body, so a missing bucket or a refused key is
        // named as such.
        let mut lister = self
            .op
            .lister_with("")
            .limit(1)
            .await
            .map_err(|e| self.err(e))?;
        lister.try_next().await.map_err(|e| self.err(e))?;
        Ok(StoreHealth::default())
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        let mut lister = self
            .op
            .lister_with(SHARDS)
            .recursive(true)
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(entry) = lister.try_next().await.map_err(|e| self.err(e))? {
            if !entry.metadata().is_file() {
                continue;
            }
            match Self::locator_of(entry.path()) {
                Some(loc) => out.push(loc),
                None => {
                    tracing::warn!(store = %self.uri, path = %entry.path(), "ignoring an object not named like a shard")
                }
            }
        }
        Ok(out)
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        // Checked first for servers that ignore If-None-Match; the conditional create closes the race elsewhere.
        let exists = |found: StoreIdentity| StoreError::IdentityExists {
            uri: self.uri.clone(),
            volume: found.volume_id,
            store: found.store_id,
        };
        if let Some(found) = self.read_identity().await? {
            return Err(exists(found));
        }
        if self.create(IDENTITY, &identity.encode()).await? {
            return Ok(());
        }
        match self.read_identity().await? {
            Some(found) => Err(exists(found)),
            None => Err(StoreError::Protocol {
                uri: self.uri.clone(),
                reason: "the identity marker was refused as existing, yet is absent".into(),
            }),
        }
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        match self.read_object(IDENTITY, IDENTITY_MAX).await {
            Ok(bytes) => {
                StoreIdentity::decode(&bytes)
                    .map(Some)
                    .ok_or_else(|| StoreError::Protocol {
                        uri: self.uri.clone(),
                        reason: "the identity object is not a qsfs identity marker".into(),
                    })
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        if self.read_identity().await?.as_ref() == Some(identity) {
            self.op.delete(IDENTITY).await.map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}
