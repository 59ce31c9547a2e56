//! FaultyStore: each fault kind does what it says, triggers fire when they should, plans change at runtime.

use std::sync::Arc;
use std::time::{Duration, Instant};

use qsfs_backends::testing::conformance;
use qsfs_backends::{
    DirStore, Fault, FaultCounts, FaultPlan, FaultyStore, Locator, Op, ShardKey, ShardStore,
    StoreError, Trigger,
};

async fn setup() -> (tempfile::TempDir, Arc<DirStore>, FaultyStore) {
    let tmp = tempfile::tempdir().unwrap();
    let inner = Arc::new(DirStore::open(tmp.path(), true).await.unwrap());
    let faulty = FaultyStore::wrap(inner.clone());
    (tmp, inner, faulty)
}

#[tokio::test]
async fn transparent_without_faults_passes_conformance() {
    let (_tmp, _inner, faulty) = setup().await;
    conformance::run(Arc::new(faulty)).await;
}

#[tokio::test]
async fn unavailable_and_permanent() {
    let (_tmp, inner, faulty) = setup().await;
    faulty.set_plan(FaultPlan::down());
    let err = faulty.put(&ShardKey([1; 32]), b"x").await.unwrap_err();
    assert!(
        matches!(err, StoreError::Unavailable { .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(faulty.probe().await.unwrap_err().is_retryable());
    assert!(
        inner.list().await.unwrap().is_empty(),
        "a failed put must not reach the inner store"
    );

    faulty.set_plan(FaultPlan::none().with(&[Op::Get], Fault::Permanent, Trigger::Always));
    let loc = faulty.put(&ShardKey([1; 32]), b"x").await.unwrap();
    let err = faulty.get(&loc, 1 << 24).await.unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(faulty.exists(&loc).await.unwrap(), "rule is limited to Get");
    let c = faulty.counts();
    assert_eq!((c.unavailable, c.permanent), (2, 1), "{c:?}");
}

#[tokio::test]
async fn delay_then_proceed() {
    let (_tmp, _inner, faulty) = setup().await;
    faulty.set_plan(FaultPlan::none().with(
        &[Op::Probe],
        Fault::Delay(Duration::from_millis(200)),
        Trigger::Always,
    ));
    let start = Instant::now();
    faulty.probe().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(faulty.counts().delayed, 1);
}

#[tokio::test]
async fn dropped_put_claims_success_but_stores_nothing() {
    let (_tmp, inner, faulty) = setup().await;
    faulty.set_plan(FaultPlan::none().with(&[], Fault::DropPut, Trigger::Always));
    let key = ShardKey([3; 32]);
    let loc = faulty.put(&key, b"lost").await.unwrap();
    assert_eq!(loc, Locator::from_key(&key));
    assert!(!inner.exists(&loc).await.unwrap());
    assert!(
        matches!(
            faulty.get(&loc, 1 << 24).await,
            Err(StoreError::NotFound { .. })
        ),
        "DropPut must not affect reads"
    );
    assert_eq!(faulty.counts().dropped_puts, 1);
}

#[tokio::test]
async fn corruption_on_read_and_on_store() {
    let (_tmp, inner, faulty) = setup().await;
    let data: Vec<u8> = (0..100u8).collect();
    let loc = faulty.put(&ShardKey([4; 32]), &data).await.unwrap();

    faulty.set_plan(FaultPlan::none().with(&Op::READS, Fault::Corrupt, Trigger::Always));
    let got = faulty.get(&loc, 1 << 24).await.unwrap();
    assert_eq!(got.len(), data.len());
    assert_eq!(
        got.iter().zip(&data).filter(|(a, b)| a != b).count(),
        1,
        "exactly one byte differs"
    );
    let range = faulty.get_range(&loc, 10, 20).await.unwrap();
    assert_ne!(range, data[10..30]);
    assert_eq!(
        inner.get(&loc, 1 << 24).await.unwrap(),
        data,
        "read corruption must not touch the stored copy"
    );

    faulty.set_plan(FaultPlan::none().with(&[Op::Put], Fault::Corrupt, Trigger::Always));
    let loc2 = faulty.put(&ShardKey([5; 32]), &data).await.unwrap();
    let stored = inner.get(&loc2, 1 << 24).await.unwrap();
    assert_eq!(stored.iter().zip(&data).filter(|(a, b)| a != b).count(), 1);
    assert_eq!(faulty.counts().corrupted, 3);
}

#[tokio::test]
async fn truncation_on_read_and_on_store() {
    let (_tmp, inner, faulty) = setup().await;
    let data = vec![9u8; 100];
    faulty.set_plan(FaultPlan::none().with(&[Op::Put], Fault::Truncate, Trigger::Nth(1)));
    let loc = faulty.put(&ShardKey([6; 32]), &data).await.unwrap();
    assert_eq!(inner.get(&loc, 1 << 24).await.unwrap().len(), 50);
    let loc2 = faulty.put(&ShardKey([7; 32]), &data).await.unwrap();
    assert_eq!(
        inner.get(&loc2, 1 << 24).await.unwrap().len(),
        100,
        "Nth(1) fires once"
    );

    faulty.set_plan(FaultPlan::none().with(&[Op::Get], Fault::Truncate, Trigger::Always));
    assert_eq!(faulty.get(&loc2, 1 << 24).await.unwrap().len(), 50);
    assert_eq!(faulty.counts().truncated, 2);
}

#[tokio::test]
async fn triggers() {
    let (_tmp, _inner, faulty) = setup().await;
    let loc = faulty.put(&ShardKey([8; 32]), b"x").await.unwrap();
    let f = |t: Trigger| FaultPlan::none().with(&[Op::Exists], Fault::Unavailable, t);
    assert_eq!(
        outcomes(&faulty, &loc, f(Trigger::Nth(2))).await,
        [true, false, true, true, true, true]
    );
    assert_eq!(
        outcomes(&faulty, &loc, f(Trigger::FirstN(2))).await,
        [false, false, true, true, true, true]
    );
    assert_eq!(
        outcomes(&faulty, &loc, f(Trigger::AfterN(4))).await,
        [true, true, true, true, false, false]
    );
    assert_eq!(
        outcomes(&faulty, &loc, f(Trigger::EveryNth(3))).await,
        [true, true, false, true, true, false]
    );
    assert_eq!(
        outcomes(&faulty, &loc, f(Trigger::Probability(0.0))).await,
        [true; 6]
    );
    assert_eq!(
        outcomes(&faulty, &loc, f(Trigger::Probability(1.0))).await,
        [false; 6]
    );
    // Calls to other operations do not advance a rule's count.
    faulty.set_plan(f(Trigger::Nth(1)));
    faulty.probe().await.unwrap();
    assert!(faulty.exists(&loc).await.is_err());
    faulty.reset_counts();
    assert_eq!(faulty.counts(), FaultCounts::default());
}

async fn outcomes(faulty: &FaultyStore, loc: &Locator, plan: FaultPlan) -> Vec<bool> {
    faulty.set_plan(plan);
    let mut v = Vec::new();
    for _ in 0..6 {
        v.push(faulty.exists(loc).await.is_ok());
    }
    v
}
