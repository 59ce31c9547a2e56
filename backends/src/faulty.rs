//! `FaultyStore`: wraps any store and injects failures on a plan, so tests can prove qsfs survives stores that
//! go down, answer slowly, lie about writes or hand back damaged bytes.
//!
//! A [`FaultPlan`] is a list of [`FaultRule`]s; each names the operations it applies to, the [`Fault`] and a
//! [`Trigger`] (always, the n-th matching call, the first n calls, every n-th call, or at random with a
//! probability). On each call every rule whose operation matches counts the call; delays of all firing rules add
//! up, and the first firing non-delay rule decides the fault. `set_plan` swaps plans at runtime (counters of the
//! new plan's triggers start at zero); [`FaultyStore::counts`] tells how many faults were injected.
//!
//! Corruption flips one bit of the middle byte (deterministic, so tests can reason about it); truncation keeps
//! the first half. `DropPut` claims success and returns the locator the inner store would have used for a
//! key-addressed store (the key's bytes); for a 0-db seq namespace that locator points nowhere, which is the point.
//!
//! This is a store like the others (the design lists it), so it is compiled without the `testing` feature:
//! `qsfs` can wrap real stores with it for fault drills.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Result, StoreError};
use crate::store::{Locator, ShardKey, ShardStore, StoreHealth, StoreIdentity};

/// A store operation, for choosing which calls a rule affects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    GetRange,
    Delete,
    Exists,
    Probe,
    List,
    WriteIdentity,
    ReadIdentity,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Put,
        Op::Get,
        Op::GetRange,
        Op::Delete,
        Op::Exists,
        Op::Probe,
        Op::List,
        Op::WriteIdentity,
        Op::ReadIdentity,
    ];
    /// The operations that return shard bytes (where read corruption applies).
    pub const READS: [Op; 2] = [Op::Get, Op::GetRange];
}

/// What happens to a call a rule fires on.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Fail with `Unavailable` (retryable) without calling the inner store.
    Unavailable,
    /// Fail with a non-retryable I/O error without calling the inner store.
    Permanent,
    /// Wait this long, then proceed (other rules may still fail the call).
    Delay(Duration),
    /// Put only: claim success but store nothing.
    DropPut,
    /// Get/GetRange: flip a bit in the returned bytes. Put: store the bytes with a bit flipped.
    Corrupt,
    /// Get/GetRange: return only the first half of the bytes. Put: store only the first half.
    Truncate,
}

/// When a rule fires, counted over the calls that match its operations.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    Always,
    /// Only the n-th matching call (1-based).
    Nth(u64),
    /// The first n matching calls, then never again (a store that comes back).
    FirstN(u64),
    /// Every matching call after the first n (a store that dies).
    AfterN(u64),
    /// Every n-th matching call (n, 2n, …).
    EveryNth(u64),
    /// Each matching call with this probability (0.0–1.0).
    Probability(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    /// Operations this rule applies to; empty means all.
    pub ops: Vec<Op>,
    pub fault: Fault,
    pub trigger: Trigger,
}

/// The set of rules in force.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultPlan {
    pub rules: Vec<FaultRule>,
}

impl FaultPlan {
    /// No faults: the wrapper is transparent.
    pub fn none() -> FaultPlan {
        FaultPlan::default()
    }

    /// Every operation fails as `Unavailable`: the store is down.
    pub fn down() -> FaultPlan {
        FaultPlan::none().with(&[], Fault::Unavailable, Trigger::Always)
    }

    /// Adds a rule (`ops` empty = all operations).
    pub fn with(mut self, ops: &[Op], fault: Fault, trigger: Trigger) -> FaultPlan {
        self.rules.push(FaultRule {
            ops: ops.to_vec(),
            fault,
            trigger,
        });
        self
    }
}

/// How many faults of each kind were injected, and how many calls were seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub calls: u64,
    pub unavailable: u64,
    pub permanent: u64,
    pub delayed: u64,
    pub dropped_puts: u64,
    pub corrupted: u64,
    pub truncated: u64,
}

struct PlanState {
    plan: FaultPlan,
    /// Matching calls seen per rule.
    seen: Vec<u64>,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    unavailable: AtomicU64,
    permanent: AtomicU64,
    delayed: AtomicU64,
    dropped_puts: AtomicU64,
    corrupted: AtomicU64,
    truncated: AtomicU64,
}

/// A fault-injecting wrapper around another store.
pub struct FaultyStore {
    inner: Arc<dyn ShardStore>,
    state: Mutex<PlanState>,
    counters: Counters,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore")
            .field("inner", &self.inner)
            .finish()
    }
}

/// The decision for one call.
#[derive(Default)]
struct Decision {
    delay: Duration,
    fault: Option<Fault>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ShardStore>, plan: FaultPlan) -> FaultyStore {
        let seen = vec![0; plan.rules.len()];
        FaultyStore {
            inner,
            state: Mutex::new(PlanState { plan, seen }),
            counters: Counters::default(),
        }
    }

    /// A transparent wrapper, to be given a plan later.
    pub fn wrap(inner: Arc<dyn ShardStore>) -> FaultyStore {
        FaultyStore::new(inner, FaultPlan::none())
    }

    pub fn inner(&self) -> &Arc<dyn ShardStore> {
        &self.inner
    }

    /// Replaces the plan; trigger counting restarts. Injected-fault counters are kept (see `reset_counts`).
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.seen = vec![0; plan.rules.len()];
        st.plan = plan;
    }

    pub fn plan(&self) -> FaultPlan {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plan
            .clone()
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            calls: l(&c.calls),
            unavailable: l(&c.unavailable),
            permanent: l(&c.permanent),
            delayed: l(&c.delayed),
            dropped_puts: l(&c.dropped_puts),
            corrupted: l(&c.corrupted),
            truncated: l(&c.truncated),
        }
    }

    pub fn reset_counts(&self) {
        let c = &self.counters;
        for a in [
            &c.calls,
            &c.unavailable,
            &c.permanent,
            &c.delayed,
            &c.dropped_puts,
            &c.corrupted,
            &c.truncated,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    fn decide(&self, op: Op) -> Decision {
        self.counters.calls.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let PlanState { plan, seen } = &mut *st;
        let mut d = Decision::default();
        for (rule, seen) in plan.rules.iter().zip(seen.iter_mut()) {
            if !rule.ops.is_empty() && !rule.ops.contains(&op) {
                continue;
            }
            *seen += 1;
            let n = *seen;
            let fires = match rule.trigger {
                Trigger::Always => true,
                Trigger::Nth(k) => n == k,
                Trigger::FirstN(k) => n <= k,
                Trigger::AfterN(k) => n > k,
                Trigger::EveryNth(k) => k > 0 && n % k == 0,
                Trigger::Probability(p) => rand::random::<f64>() < p,
            };
            if !fires {
                continue;
            }
            match &rule.fault {
                Fault::Delay(t) => d.delay += *t,
                f if d.fault.is_none() && applies(f, op) => d.fault = Some(f.clone()),
                _ => {}
            }
        }
        d
    }

    /// Applies delay and the failing faults; returns the data-altering fault (if any) for the caller.
    async fn enter(&self, op: Op) -> Result<Option<Fault>> {
        let d = self.decide(op);
        if !d.delay.is_zero() {
            self.counters.delayed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(d.delay).await;
        }
        match d.fault {
            Some(Fault::Unavailable) => {
                self.counters.unavailable.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Unavailable {
                    uri: self.inner.uri().to_string(),
                    reason: format!("injected fault ({op:?})"),
                })
            }
            Some(Fault::Permanent) => {
                self.counters.permanent.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Io {
                    uri: self.inner.uri().to_string(),
                    source: std::io::Error::other(format!("injected permanent fault ({op:?})")),
                })
            }
            other => Ok(other),
        }
    }

    /// Corrupts or truncates `data` in place per `fault`, counting what was done.
    fn damage(&self, fault: &Fault, data: &mut Vec<u8>) {
        match fault {
            Fault::Corrupt if !data.is_empty() => {
                let i = data.len() / 2;
                data[i] ^= 0x01;
                self.counters.corrupted.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Truncate if !data.is_empty() => {
                data.truncate(data.len() / 2);
                self.counters.truncated.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Whether a fault means anything for an operation (a `DropPut` rule on all ops must not fail a get).
fn applies(fault: &Fault, op: Op) -> bool {
    match fault {
        Fault::Unavailable | Fault::Permanent | Fault::Delay(_) => true,
        Fault::DropPut => op == Op::Put,
        Fault::Corrupt | Fault::Truncate => matches!(op, Op::Put | Op::Get | Op::GetRange),
    }
}

#[async_trait]
impl ShardStore for FaultyStore {
    fn uri(&self) -> &str {
        self.inner.uri()
    }

    fn supports_range(&self) -> bool {
        self.inner.supports_range()
    }

    fn max_value_size(&self) -> Option<u64> {
        self.inner.max_value_size()
    }

    fn locate(&self, key: &ShardKey) -> Option<Locator> {
        self.inner.locate(key)
    }

    async fn put(&self, key: &ShardKey, data: &[u8]) -> Result<Locator> {
        match self.enter(Op::Put).await? {
            Some(Fault::DropPut) => {
                self.counters.dropped_puts.fetch_add(1, Ordering::Relaxed);
                Ok(Locator::from_key(key))
            }
            Some(f @ (Fault::Corrupt | Fault::Truncate)) => {
                let mut bad = data.to_vec();
                self.damage(&f, &mut bad);
                self.inner.put(key, &bad).await
            }
            _ => self.inner.put(key, data).await,
        }
    }

    async fn get(&self, loc: &Locator, max_len: u64) -> Result<Vec<u8>> {
        let fault = self.enter(Op::Get).await?;
        let mut data = self.inner.get(loc, max_len).await?;
        if let Some(f) = fault {
            self.damage(&f, &mut data);
        }
        Ok(data)
    }

    async fn get_range(&self, loc: &Locator, offset: u64, len: u64) -> Result<Vec<u8>> {
        let fault = self.enter(Op::GetRange).await?;
        let mut data = self.inner.get_range(loc, offset, len).await?;
        if let Some(f) = fault {
            self.damage(&f, &mut data);
        }
        Ok(data)
    }

    async fn delete(&self, loc: &Locator) -> Result<()> {
        self.enter(Op::Delete).await?;
        self.inner.delete(loc).await
    }

    async fn exists(&self, loc: &Locator) -> Result<bool> {
        self.enter(Op::Exists).await?;
        self.inner.exists(loc).await
    }

    async fn probe(&self) -> Result<StoreHealth> {
        self.enter(Op::Probe).await?;
        self.inner.probe().await
    }

    async fn list(&self) -> Result<Vec<Locator>> {
        self.enter(Op::List).await?;
        self.inner.list().await
    }

    async fn write_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.enter(Op::WriteIdentity).await?;
        self.inner.write_identity(identity).await
    }

    async fn remove_identity(&self, identity: &StoreIdentity) -> Result<()> {
        self.enter(Op::WriteIdentity).await?;
        self.inner.remove_identity(identity).await
    }

    async fn read_identity(&self) -> Result<Option<StoreIdentity>> {
        self.enter(Op::ReadIdentity).await?;
        self.inner.read_identity().await
    }
}
