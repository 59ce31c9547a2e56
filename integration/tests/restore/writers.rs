//! One writer: a copied volume directory or a restore onto a second machine starts read-only and never deletes the
//! first copy's shards; `take-over` moves the writer lease, and the old copy then refuses writes — a mount finds
//! out on its own within the lease's re-check interval.

use std::fs;
use std::time::Duration;

use super::{back_up_key, init_on_outside_dir_stores, restore};
use crate::fuse::fuse_available;
use crate::fuse::mount::{Mount, wait_for};
use crate::helpers::tree::{assert_same_file, random_file};
use crate::helpers::{Vol, run_qsfs, s};

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    assert!(
        std::process::Command::new("cp")
            .args(["-a", s(from), s(to)])
            .status()
            .unwrap()
            .success()
    );
}

/// `qsfs --volume DIR args…`
fn at(dir: &std::path::Path, args: &[&str]) -> crate::helpers::Run {
    let mut all = vec!["--volume", s(dir)];
    all.extend_from_slice(args);
    run_qsfs(&all, &[])
}

#[test]
fn a_copied_volume_is_read_only_until_it_takes_over_and_never_deletes_the_first_copys_shards() {
    let v = Vol::new();
    init_on_outside_dir_stores(&v);
    let src = v.scratch("src");
    random_file(&src.join("f"), 150_000, 1);
    random_file(&src.join("g"), 150_000, 2);
    v.ok(&["put", s(&src.join("f")), "/f"]);
    v.ok(&["put", s(&src.join("g")), "/g"]);

    let copy = v.fresh_path("copy");
    copy_dir(&v.path, &copy);
    let line = at(&copy, &["rm", "/f"]).failed();
    assert!(
        line.contains("read-only") && line.contains("qsfs take-over"),
        "{line}"
    );
    let line = at(&copy, &["put", s(&src.join("g")), "/h"]).failed();
    assert!(line.contains("read-only"), "{line}");
    assert_eq!(
        at(&copy, &["ls", "/"]).ok(),
        "f\ng\n",
        "a read-only copy still reads"
    );
    let got = v.scratch("got");
    v.ok(&["get", "/f", s(&got.join("f"))]);
    assert_same_file(&src.join("f"), &got.join("f"));

    // The copy takes over: it writes, the first copy is now the read-only one, and the shards of files the
    // copy removes are the copy's to delete; the first copy's view of other files stays readable.
    let out = at(&copy, &["take-over"]).ok();
    assert!(out.contains("now the volume's writer"), "{out}");
    at(&copy, &["rm", "/g"]).ok();
    let line = v.run(&["put", s(&src.join("g")), "/again"]).failed();
    assert!(line.contains("read-only"), "{line}");
    let line = v.run(&["rm", "/f"]).failed();
    assert!(line.contains("read-only"), "{line}");
    v.ok(&["get", "/f", s(&got.join("f2"))]);
    assert_same_file(&src.join("f"), &got.join("f2"));
    at(&copy, &["get", "/f", s(&got.join("f3"))]).ok();
    assert_same_file(&src.join("f"), &got.join("f3"));
}

#[test]
fn restore_on_a_second_machine_while_the_first_mounts_is_read_only_until_take_over() {
    if !fuse_available(
        "restore_on_a_second_machine_while_the_first_mounts_is_read_only_until_take_over",
    ) {
        return;
    }
    let v = Vol::new();
    let stores = init_on_outside_dir_stores(&v);
    let key = back_up_key(&v);
    let mp = v.scratch("mnt");
    let m = Mount::start(&v, &mp, &[]);
    fs::write(m.path("kept"), b"written by the first machine").unwrap();
    sync_file(&m.path("kept")).expect("fsync on the writer");

    let second = Vol::new();
    let uri = format!("dir:{}", stores.join("0").display());
    let out = restore(&second, &uri, &key, &[]).ok();
    assert!(out.contains("still holds the volume"), "{out}");
    let line = second.run(&["rm", "/kept"]).failed();
    assert!(line.contains("read-only"), "{line}");

    // The second machine takes over: within the re-check interval the first machine's mount refuses writes.
    second.ok(&["take-over"]);
    assert!(
        wait_for(Duration::from_secs(60), || {
            let p = m.path("late");
            match fs::write(&p, b"x").and_then(|()| sync_file(&p)) {
                Ok(()) => false,
                Err(e) => {
                    eprintln!("write after take-over: {e}");
                    true
                }
            }
        }),
        "the first machine's mount still writes after the take-over; its log:\n{}",
        m.log_text()
    );
    let log = m.log_text();
    assert!(
        log.contains("read-only"),
        "the first mount refused writes for another reason:\n{log}"
    );
    let got = second.fresh_path("kept");
    second.ok(&["get", "/kept", s(&got)]);
    assert_eq!(fs::read(&got).unwrap(), b"written by the first machine");
    drop(m);
}

fn sync_file(p: &std::path::Path) -> std::io::Result<()> {
    fs::OpenOptions::new().write(true).open(p)?.sync_all()
}
