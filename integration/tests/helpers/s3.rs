//! S3 stores for end-to-end tests: buckets on one real Garage server, each reached through its own loopback
//! [`Forwarder`] so that one store can vanish (connection refused) and come back while the others keep working,
//! and direct access to a bucket's objects (through the store implementation itself) to delete, damage or empty
//! them behind qsfs's back.

use std::sync::Arc;

use qsfs_backends::testing::GarageServer;
use qsfs_backends::{Locator, ShardStore, StoreUri, open_store};

use super::forwarder::Forwarder;

/// `n` buckets (`qsfs-0` … ) on one Garage node, each behind its own forwarder.
pub struct S3Buckets {
    pub garage: GarageServer,
    pub fwd: Vec<Forwarder>,
    rt: tokio::runtime::Runtime,
}

pub fn bucket(i: usize) -> String {
    format!("qsfs-{i}")
}

impl S3Buckets {
    pub fn start(n: usize) -> S3Buckets {
        let garage = GarageServer::start().unwrap_or_else(|e| panic!("cannot start garage: {e}"));
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], garage.s3_port(0)));
        let fwd = (0..n)
            .map(|i| {
                garage.create_bucket(&bucket(i)).unwrap();
                Forwarder::start(target)
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        S3Buckets { garage, fwd, rt }
    }

    /// The store URI of bucket `i` through its forwarder.
    pub fn uri(&self, i: usize) -> String {
        self.garage.uri_via(
            &bucket(i),
            &format!("http://127.0.0.1:{}", self.fwd[i].port),
        )
    }

    /// `--store URI` arguments for buckets `range`.
    pub fn store_args(&self, range: std::ops::Range<usize>) -> Vec<String> {
        range
            .flat_map(|i| ["--store".to_string(), self.uri(i)])
            .collect()
    }

    /// Bucket `i`, reached directly (not through its forwarder).
    fn direct(&self, i: usize) -> Arc<dyn ShardStore> {
        let uri = StoreUri::parse(&self.garage.uri(&bucket(i))).unwrap();
        self.rt.block_on(open_store(&uri, false)).unwrap()
    }

    /// Every object of bucket `i` named like a shard: shards and the metadata log's objects.
    pub fn objects(&self, i: usize) -> Vec<Locator> {
        let mut v = self.rt.block_on(self.direct(i).list()).unwrap();
        v.sort();
        v
    }

    /// The shards of bucket `i` (not the metadata log's objects), with their bytes.
    pub fn shards(&self, i: usize) -> Vec<(Locator, Vec<u8>)> {
        let store = self.direct(i);
        self.objects(i)
            .into_iter()
            .map(|l| {
                let bytes = self.rt.block_on(store.get(&l, 1 << 30)).unwrap();
                (l, bytes)
            })
            .filter(|(_, b)| !super::stores::is_metadata_object(b))
            .collect()
    }

    pub fn delete(&self, i: usize, loc: &Locator) {
        self.rt.block_on(self.direct(i).delete(loc)).unwrap();
    }

    /// Replaces object `loc` of bucket `i` with `bytes` (deleted first: a put of an existing name keeps it).
    pub fn overwrite(&self, i: usize, loc: &Locator, bytes: &[u8]) {
        let store = self.direct(i);
        self.rt.block_on(store.delete(loc)).unwrap();
        let key = qsfs_backends::ShardKey(loc.0.clone().try_into().expect("32-byte locator"));
        self.rt.block_on(store.put(&key, bytes)).unwrap();
    }

    /// Deletes every object of bucket `i`, its identity marker included: the bucket answers, holding nothing.
    pub fn empty(&self, i: usize) {
        let store = self.direct(i);
        for l in self.objects(i) {
            self.rt.block_on(store.delete(&l)).unwrap();
        }
        if let Some(id) = self.rt.block_on(store.read_identity()).unwrap() {
            self.rt.block_on(store.remove_identity(&id)).unwrap();
        }
    }

    /// Makes store `i` unreachable (connection refused).
    pub fn cut(&mut self, i: usize) {
        self.fwd[i].kill();
    }

    /// Makes store `i` reachable again.
    pub fn reconnect(&mut self, i: usize) {
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], self.garage.s3_port(0)));
        self.fwd[i].restart(target);
    }
}
