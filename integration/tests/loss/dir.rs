//! Dir stores lost: the directory moved away (and moved back), every file in it removed (identity marker
//! included; it stays down until readmitted), another volume's identity marker copied over its own.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::mounted::{Expect, lost_during_mount};
use super::packs::packs_with_stores_lost;
use super::{Cluster, Loss, lost_before_open};
use crate::fuse::fuse_available;
use crate::helpers::Vol;
use crate::helpers::stores::all_files;

const MARKER: &str = "qsfs-store.id";

/// The default embedded dir stores (VOLUME/stores/0..5).
struct Dirs {
    /// Where moved-away store directories wait (beside the volume, same filesystem).
    away: tempfile::TempDir,
    /// Another volume whose identity markers are copied in for [`Loss::Foreign`].
    other: Vol,
    /// The store's own marker, for bringing back a [`Loss::Foreign`] store.
    own_markers: HashMap<usize, Vec<u8>>,
    lost: HashMap<usize, Loss>,
}

impl Dirs {
    fn new() -> Dirs {
        let other = Vol::new();
        other.init_default(&[]);
        Dirs {
            away: tempfile::Builder::new()
                .prefix("qsfs-it-away-")
                .tempdir()
                .expect("temp dir"),
            other,
            own_markers: HashMap::new(),
            lost: HashMap::new(),
        }
    }

    fn away(&self, i: usize) -> PathBuf {
        self.away.path().join(i.to_string())
    }
}

/// Removes every regular file under `root`, keeping the directories (`shards/ab/cd/`).
fn remove_all_files(root: &Path) {
    let files = all_files(root);
    assert!(
        files.iter().any(|f| f.ends_with(MARKER)),
        "{} has no identity marker to lose",
        root.display()
    );
    for f in files {
        // A mount may be writing into the store as we go: a file that vanished is fine.
        let _ = fs::remove_file(&f);
    }
}

impl Cluster for Dirs {
    fn init_args(&self) -> Vec<String> {
        Vec::new()
    }

    fn lose(&mut self, v: &Vol, i: usize, how: Loss) {
        let dir = v.store_dir(i);
        match how {
            Loss::Gone => fs::rename(&dir, self.away(i))
                .unwrap_or_else(|e| panic!("move {} away: {e}", dir.display())),
            Loss::Emptied => remove_all_files(&dir),
            Loss::Foreign => {
                let own = fs::read(dir.join(MARKER)).expect("read the store's marker");
                let foreign = fs::read(self.other.store_dir(i).join(MARKER)).unwrap();
                assert_ne!(own, foreign);
                fs::write(dir.join(MARKER), foreign).unwrap();
                self.own_markers.insert(i, own);
            }
        }
        self.lost.insert(i, how);
    }

    fn back(&mut self, v: &Vol, i: usize) {
        let dir = v.store_dir(i);
        match self.lost.remove(&i).expect("store was lost") {
            Loss::Gone => fs::rename(self.away(i), &dir)
                .unwrap_or_else(|e| panic!("move {} back: {e}", dir.display())),
            Loss::Foreign => fs::write(dir.join(MARKER), &self.own_markers[&i]).unwrap(),
            Loss::Emptied => panic!("an emptied dir store cannot come back with its data"),
        }
    }
}

#[test]
fn loss_dir_missing_then_emptied_then_foreign_before_open() {
    lost_before_open(&mut Dirs::new(), [Loss::Gone, Loss::Emptied, Loss::Foreign]);
}

#[test]
fn loss_dir_emptied_then_foreign_then_missing_before_open() {
    lost_before_open(&mut Dirs::new(), [Loss::Emptied, Loss::Foreign, Loss::Gone]);
}

#[test]
fn loss_dir_foreign_then_missing_then_emptied_before_open() {
    lost_before_open(&mut Dirs::new(), [Loss::Foreign, Loss::Gone, Loss::Emptied]);
}

/// Two store directories moved away in the middle of a mount's writes, then moved back while it runs.
#[test]
fn loss_dir_missing_during_mount_writes() {
    if !fuse_available("loss_dir_missing_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Dirs::new(), Loss::Gone, Expect::Fail);
}

/// A store directory emptied mid-write (the mount may go on writing into it: it still answers), then a second
/// one moved away.
#[test]
fn loss_dir_emptied_during_mount_writes() {
    if !fuse_available("loss_dir_emptied_during_mount_writes") {
        return;
    }
    lost_during_mount(&mut Dirs::new(), Loss::Emptied, Expect::Any);
}

/// Packs with one store directory missing at the mount's open, then a second one holding a foreign marker.
#[test]
fn loss_dir_packs_missing_then_foreign() {
    if !fuse_available("loss_dir_packs_missing_then_foreign") {
        return;
    }
    packs_with_stores_lost(&mut Dirs::new(), [Loss::Gone, Loss::Foreign]);
}
