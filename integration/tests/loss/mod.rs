//! The promise "any M stores of any kind can be gone, at any moment", store kind by store kind: embedded dir
//! stores (`dir.rs`), real redis-servers (`redis.rs`) and the 0-db protocol test server (`zdb.rs`).
//!
//! Each kind implements [`Cluster`] — how to take one of its stores away ([`Loss`]) and how to bring it back —
//! and runs the same two scenarios on the default 4 data + 2 parity layout (write quorum K+M-1 = 5):
//!
//! - [`lost_before_open`]: stores go missing between commands, one, then M = 2, then M+1 = 3. With one gone every
//!   command works, `put` included; with two, reads, `ls`, `status`, `audit` and `fsck` work and a `put` (below
//!   the write quorum) fails and commits nothing; with three, a `get` fails naming the file and serves no wrong
//!   byte. Then the stores come back: those that were merely away with their data rejoin as they are, those that
//!   came back empty stay down (named in `status`, reads still work) until `qsfs store readmit`; after
//!   `qsfs repair`, `audit --full` is clean and every segment fully redundant.
//! - [`mounted::lost_during_mount`]: the same losses in the middle of a FUSE mount's writes.
//! - [`packs::packs_with_stores_lost`]: a mount's small files, uploaded in shared pack segments, with stores lost
//!   before a mount opens and while two are gone.

mod dir;
mod mounted;
mod packs;
mod redis;
mod s3;
mod zdb;

use std::fs;
use std::path::Path;

use crate::audit::{assert_clean_full_audit, audit, num, repair};
use crate::helpers::tree::{assert_no_wrong_files, assert_same_tree, random_file, standard_tree};
use crate::helpers::{Status, Vol, s, strs};

pub const KIB: u64 = 1024;
/// Parity shards of the default layout: how many stores may be gone at once.
pub const M: usize = 2;
/// The segment size of every volume here: small files still span several segments.
pub const SEGMENT: u64 = 32 * KIB;

/// How a store goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// Unreachable with its data intact: the directory moved away, the server killed.
    Gone,
    /// Reachable again, but with nothing: every file of the directory removed (identity marker included), the
    /// server restarted empty. It has no marker, so it stays down until `qsfs store readmit`.
    Emptied,
    /// Holding another volume's identity marker, as a disk of another volume mounted in its place would.
    Foreign,
}

impl Loss {
    /// Whether [`Cluster::back`] can bring the store back with its data (an emptied store's data is gone).
    pub fn recoverable(self) -> bool {
        self != Loss::Emptied
    }
}

/// Six stores of one kind for one volume, and the levers to lose them.
pub trait Cluster {
    /// `init` options selecting the stores (none for the default embedded dir stores).
    fn init_args(&self) -> Vec<String>;
    /// Takes store `i` of the volume `v` away as `how` says.
    fn lose(&mut self, v: &Vol, i: usize, how: Loss);
    /// Brings back store `i`, lost as [`Loss::Gone`] or [`Loss::Foreign`], exactly as it was when lost.
    fn back(&mut self, v: &Vol, i: usize);
}

/// `qsfs init` of `v` on the cluster's stores with [`SEGMENT`]-sized segments and the default quorum.
pub fn init(c: &dyn Cluster, v: &Vol) {
    let seg = format!("{SEGMENT}");
    let mut args = vec!["--segment-size".to_string(), seg];
    args.extend(c.init_args());
    if c.init_args().is_empty() {
        v.init_default(&strs(&args));
    } else {
        v.init(&strs(&args));
    }
    let st = v.status();
    assert_eq!(
        (st.data_shards, st.parity_shards, st.write_quorum),
        (4, 2, 5),
        "the default layout and write quorum K+M-1: {st:#?}"
    );
}

pub use crate::fuse::mount::wait_for as wait_until;

/// `qsfs repair` empties the queue, `audit --full` is clean and every segment is fully redundant again.
#[track_caller]
pub fn repair_to_full_redundancy(v: &Vol) {
    let (run, r) = repair(v, &[]);
    let d = run.describe();
    run.ok();
    assert_eq!(num(&r["remaining"]), 0, "{d}");
    assert_clean_full_audit(v);
    assert_full_redundancy(v);
}

/// Asserts `status --json` lists exactly `down` as unreachable, each with a non-empty reason; returns the status.
#[track_caller]
pub fn assert_down(v: &Vol, down: &[usize]) -> Status {
    let st = v.status();
    let want: Vec<u64> = down.iter().map(|&i| i as u64).collect();
    assert_eq!(st.unreachable(), want, "stores down in status: {st:#?}");
    for &i in down {
        let reason = st.stores[i].error.as_deref().unwrap_or("");
        assert!(
            !reason.trim().is_empty(),
            "store {i} is down without a reason: {st:#?}"
        );
        eprintln!("store {i} down: {reason}");
    }
    // The human-readable status names each down store too.
    let text = v.ok(&["status"]);
    for &i in down {
        assert!(
            text.contains("DOWN") && text.contains(&st.stores[i].uri),
            "`qsfs status` should show store {i} ({}) as DOWN:\n{text}",
            st.stores[i].uri
        );
    }
    st
}

/// Asserts every segment is fully redundant on six reachable stores.
#[track_caller]
pub fn assert_full_redundancy(v: &Vol) {
    let st = v.status();
    assert!(st.unreachable().is_empty(), "every store up: {st:#?}");
    assert!(st.segments.total > 0, "{st:#?}");
    assert_eq!(
        st.segments.healthy, st.segments.total,
        "every segment fully redundant: {st:#?}"
    );
}

/// `qsfs get /data` into a fresh directory: asserts it is byte-identical to `want`.
#[track_caller]
pub fn assert_reads(v: &Vol, want: &Path, what: &str) {
    let out = v.fresh_path(&format!("get-{}", rand::random::<u32>()));
    let r = v.run(&["get", "/data", s(&out)]);
    assert_eq!(r.code, Some(0), "get /data {what}:\n{}", r.describe());
    assert_same_tree(want, &out);
    let mut names: Vec<String> = fs::read_dir(want)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(v.ls("/data"), names, "ls /data {what}");
}

/// A sampled audit with stores down runs and reports them: exit 1 (degraded), the down stores' shards counted
/// unreachable, nothing lost.
#[track_caller]
pub fn assert_audit_sees_down(v: &Vol, down: &[usize]) {
    let (run, j) = audit(v, &[]);
    let d = run.describe();
    run.failed();
    assert!(
        j["verdict"] == "degraded" || j["verdict"] == "at_risk",
        "audit verdict with {down:?} down:\n{d}"
    );
    assert!(j["lost"].as_array().unwrap().is_empty(), "{d}");
    assert!(num(&j["totals"]["unreachable"]) > 0, "{d}");
    assert_eq!(
        (num(&j["totals"]["missing"]), num(&j["totals"]["corrupt"])),
        (0, 0),
        "a down store's shards are unreachable, not missing or corrupt:\n{d}"
    );
}

/// A `put` of a new file into /data fails (below the write quorum) and commits nothing.
#[track_caller]
pub fn assert_put_refused(v: &Vol, name: &str) {
    let before = v.status();
    let root = v.ls("/");
    let f = v.scratch("refused").join(name);
    random_file(&f, 3 * SEGMENT + 5, 99);
    let line = v.run(&["put", s(&f), &format!("/data/{name}")]).failed();
    assert!(
        line.contains("reachable") || line.contains("quorum"),
        "a put below the write quorum should say so: {line}"
    );
    crate::assert_nothing_committed(v, &before, &strs(&root));
    assert!(
        !v.ls("/data").contains(&name.to_string()),
        "{name} committed"
    );
}

/// Stores lost before the volume is opened: `losses[0]` takes store 1, `losses[1]` store 4, `losses[2]` store 2.
pub fn lost_before_open(c: &mut dyn Cluster, losses: [Loss; 3]) {
    let order = [1usize, 4, 2];
    let v = Vol::new();
    init(c, &v);
    let want = v.scratch("want").join("data");
    standard_tree(&want, SEGMENT, 0, 500);
    v.ok(&["put", s(&want), "/data"]);
    assert_reads(&v, &want, "with every store up");
    assert_full_redundancy(&v);

    // One store gone: everything works, a put included (5 stores = the write quorum).
    c.lose(&v, order[0], losses[0]);
    let st = assert_down(&v, &order[..1]);
    assert_eq!(
        (st.segments.healthy, st.segments.unreadable),
        (0, 0),
        "{st:#?}"
    );
    assert_reads(&v, &want, &format!("with store 1 {:?}", losses[0]));
    assert_audit_sees_down(&v, &order[..1]);
    v.ok(&["fsck"]);
    let extra = want.join("put-while-one-down.bin");
    random_file(&extra, 5 * SEGMENT + 17, 501);
    v.ok(&["put", s(&extra), "/data/put-while-one-down.bin"]);
    assert_reads(&v, &want, "after a put with one store down");

    // M = 2 gone: reads, ls, status, audit and fsck work; a put is below the quorum and commits nothing.
    c.lose(&v, order[1], losses[1]);
    let st = assert_down(&v, &order[..2]);
    assert_eq!(st.segments.unreadable, 0, "{st:#?}");
    assert_reads(&v, &want, &format!("with stores 1, 4 {losses:?}"));
    assert_audit_sees_down(&v, &order[..2]);
    v.ok(&["fsck"]);
    assert_put_refused(&v, "put-while-two-down.bin");

    // M + 1 gone: a get fails naming the file and leaves no wrong bytes; a put commits nothing.
    c.lose(&v, order[2], losses[2]);
    let st = assert_down(&v, &[1, 2, 4]);
    assert_eq!(st.segments.unreadable, st.segments.total, "{st:#?}");
    let out = v.fresh_path("out-three-down.bin");
    let line = v.run(&["get", "/data/multi-segment.bin", s(&out)]).failed();
    assert!(
        line.contains("multi-segment.bin"),
        "the error should name the unreadable file: {line}"
    );
    assert_no_wrong_files(&want.join("multi-segment.bin"), &out);
    let out = v.fresh_path("out-three-down");
    v.run(&["get", "/data", s(&out)]).failed();
    assert_no_wrong_files(&want, &out);
    assert_put_refused(&v, "put-while-three-down.bin");

    // The stores that were away with their data come back, latest loss first.
    let mut down: Vec<usize> = order.to_vec();
    for k in (0..3).rev() {
        if losses[k].recoverable() {
            c.back(&v, order[k]);
            down.retain(|&i| i != order[k]);
            down.sort();
            assert_down(&v, &down);
            if down.len() <= M {
                assert_reads(&v, &want, &format!("with {down:?} still down"));
            }
        }
    }
    // Those that came back empty stay down — named, with a reason — and reads still work without them.
    assert!(down.len() <= M, "a scenario may empty at most M stores");
    if !down.is_empty() {
        let st = assert_down(&v, &down);
        for &i in &down {
            let reason = st.stores[i].error.as_deref().unwrap();
            assert!(
                reason.contains("marker") || reason.contains("not a qsfs store"),
                "store {i} came back empty: its reason should say it has no identity marker: {reason}"
            );
        }
        assert_reads(&v, &want, &format!("with the emptied stores {down:?} down"));
        // The admin re-admits each emptied store; repair then rebuilds all it held.
        for &i in &down {
            v.ok(&["store", "readmit", &st.stores[i].uri]);
        }
    }
    repair_to_full_redundancy(&v);
    assert_reads(&v, &want, "after every store came back and repair");
    v.ok(&["fsck"]);
}
