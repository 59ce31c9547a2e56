//! The conformance suite's hostile cases: a store whose server (or a man in the middle, `LyingProxy`) answers
//! shard reads with huge lengths, endless arrays, stalls, escape sequences or another shard's bytes. Each read must
//! fail fast with an error naming the store, cost bounded memory, show no raw control characters, and leave the
//! store working for the next honest read.

use std::time::{Duration, Instant};

use crate::error::StoreError;
use crate::store::{Locator, ShardKey, ShardStore};
use crate::testing::lying_proxy::{Lie, LyingProxy};

/// A refused lie must be refused within this long (the proxy would stream for a minute).
const FAST: Duration = Duration::from_secs(5);
/// How much the process may grow while refusing a lie of gigabytes.
const RSS_BOUND: u64 = 64 << 20;

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

macro_rules! check {
    ($store:expr, $cond:expr, $($msg:tt)+) => {
        assert!($cond, "hostile [{}]: {}", $store.uri(), format!($($msg)+))
    };
}

/// Runs the hostile cases against `s`, a fresh store whose connections go through `proxy`.
pub async fn run(s: &dyn ShardStore, proxy: &LyingProxy) {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let other: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let loc = s.put(&ShardKey(rand::random()), &data).await.expect("put");
    let len = data.len() as u64;

    for lie in [
        Lie::HugeBulk,
        Lie::HugeArray,
        Lie::DeepArray,
        Lie::Swap(other),
    ] {
        proxy.set_lie(lie.clone());
        let (before, start) = (rss_bytes(), Instant::now());
        let got = tokio::time::timeout(FAST, s.get(&loc, len)).await;
        let (took, grew) = (start.elapsed(), rss_bytes().saturating_sub(before));
        match got {
            Ok(Err(e @ StoreError::Refused { .. })) => {
                check!(
                    s,
                    e.uri() == s.uri() && e.to_string().contains(s.uri()),
                    "{lie:?}: error must name the store: {e}"
                )
            }
            Ok(other) => panic!(
                "hostile [{}]: {lie:?} must be Refused, got {:?}",
                s.uri(),
                other.map(|v| v.len())
            ),
            Err(_) => panic!(
                "hostile [{}]: {lie:?} still unanswered after {FAST:?}",
                s.uri()
            ),
        }
        check!(
            s,
            grew < RSS_BOUND,
            "{lie:?} grew the process by {grew} bytes in {took:?}"
        );
        recovers(s, proxy, &loc, &data).await;
    }

    proxy.set_lie(Lie::Escapes);
    let e = s
        .get(&loc, len)
        .await
        .expect_err("an error reply is an error");
    let shown = e.to_string();
    check!(
        s,
        !shown.chars().any(|c| c.is_control()),
        "raw control characters shown: {shown:?}"
    );
    check!(
        s,
        shown.contains(s.uri()),
        "error must name the store: {shown}"
    );
    recovers(s, proxy, &loc, &data).await;

    // A stall: the store's own timeout is long (30 s); the reader above it hedges and drops the read. A dropped
    // read must leave no half-read connection behind for the next one.
    proxy.set_lie(Lie::Stall);
    let stalled = tokio::time::timeout(Duration::from_millis(300), s.get(&loc, len)).await;
    check!(
        s,
        stalled.is_err(),
        "a stalled read answered: {:?}",
        stalled.map(|r| r.map(|v| v.len()))
    );
    recovers(s, proxy, &loc, &data).await;
    check!(
        s,
        proxy.lies_told() >= 6,
        "the proxy told only {} lies",
        proxy.lies_told()
    );
    s.delete(&loc).await.expect("delete");
}

/// Runs the lies against every read that is not a shard read — listing, health probe, range read, identity
/// marker — with the proxy lying to every command: each must fail fast with an error naming the store and
/// bounded memory, and the store must work again once the proxy is honest.
pub async fn run_every_read(s: &dyn ShardStore, proxy: &LyingProxy) {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let loc = s.put(&ShardKey(rand::random()), &data).await.expect("put");
    proxy.lie_to_everything(true);
    let told = proxy.lies_told();
    for lie in [Lie::HugeBulk, Lie::HugeArray, Lie::DeepArray] {
        proxy.set_lie(lie.clone());
        let before = rss_bytes();
        expect_refusal(s, &format!("{lie:?} list"), s.list()).await;
        expect_refusal(s, &format!("{lie:?} probe"), s.probe()).await;
        expect_refusal(s, &format!("{lie:?} identity"), s.read_identity()).await;
        if s.supports_range() {
            expect_refusal(s, &format!("{lie:?} range"), s.get_range(&loc, 10, 100)).await;
        }
        let grew = rss_bytes().saturating_sub(before);
        check!(
            s,
            grew < RSS_BOUND,
            "{lie:?} grew the process by {grew} bytes"
        );
    }
    check!(
        s,
        proxy.lies_told() >= told + 9,
        "only {} lies told",
        proxy.lies_told() - told
    );
    proxy.lie_to_everything(false);
    recovers(s, proxy, &loc, &data).await;
    let listed = s.list().await.expect("list after the lies");
    check!(s, listed.contains(&loc), "the shard is listed again");
    s.delete(&loc).await.expect("delete");
}

async fn expect_refusal<T: std::fmt::Debug>(
    s: &dyn ShardStore,
    what: &str,
    op: impl std::future::Future<Output = crate::error::Result<T>>,
) {
    match tokio::time::timeout(FAST, op).await {
        Ok(Err(e)) => check!(
            s,
            e.to_string().contains(s.uri()) && !e.to_string().chars().any(|c| c.is_control()),
            "{what}: the error must name the store: {e}"
        ),
        Ok(Ok(v)) => panic!("hostile [{}]: {what} accepted a lie: {v:?}", s.uri()),
        Err(_) => panic!("hostile [{}]: {what} unanswered after {FAST:?}", s.uri()),
    }
}

/// With the proxy honest again, the shard reads back whole at once.
async fn recovers(s: &dyn ShardStore, proxy: &LyingProxy, loc: &Locator, data: &[u8]) {
    proxy.set_lie(Lie::Honest);
    let back = tokio::time::timeout(FAST, s.get(loc, data.len() as u64)).await;
    check!(
        s,
        matches!(&back, Ok(Ok(b)) if b == data),
        "store did not recover after a lie: {:?}",
        back.map(|r| r.map(|v| v.len()))
    );
}
