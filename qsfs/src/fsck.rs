//! `qsfs fsck`: checks that the metadata is consistent and that every referenced shard is recorded and present
//! on its store; with `repair`, fixes what can be fixed without losing data that is still there.
//!
//! Checks, in order: the root; directory entries (target and parent exist, parent is a directory); link counts
//! (files: one per entry; directories: 2 + subdirectories); orphan inodes (no entry names them: deleted if their
//! link count says they were unlinked, otherwise reconnected under `/lost+found`); segments (belong to a regular
//! file, lie within its size, have K+M shard rows, each good shard recorded with a known store and locator);
//! shards present on their stores (`exists`); upload queue rows and their local files; staging leftovers.
//!
//! The volume lock is held (fsck opens the volume), so no mount changes anything meanwhile.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::error::Result;
use crate::meta::{self, FileKind, NewInode, ROOT_INO, ShardState};
use crate::staging::StagingArea;
use crate::volume::Volume;

#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    pub what: String,
    pub repaired: bool,
    /// A shard the metadata names is absent from its store: damage to the data's redundancy that `qsfs repair`
    /// rebuilds, not an inconsistency of the metadata.
    pub missing_shard: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FsckReport {
    pub inodes: u64,
    pub segments: u64,
    pub shards_checked: u64,
    pub problems: Vec<Problem>,
    /// Not errors: stores that could not be asked, leftovers that are harmless, degraded redundancy.
    pub notes: Vec<String>,
}

impl FsckReport {
    pub fn unrepaired(&self) -> usize {
        self.problems.iter().filter(|p| !p.repaired).count()
    }

    fn problem(&mut self, what: String, repaired: bool) {
        self.problems.push(Problem {
            what,
            repaired,
            missing_shard: false,
        });
    }

    /// Problems of the metadata itself that remain (missing shards aside).
    pub fn metadata_problems(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| !p.repaired && !p.missing_shard)
            .count()
    }
}

/// Concurrent `exists` calls in flight per fsck.
const EXISTS_CONCURRENCY: usize = 64;

pub fn fsck(vol: &Volume, repair: bool) -> Result<FsckReport> {
    let mut r = FsckReport::default();
    check_namespace(vol, repair, &mut r)?;
    check_segments(vol, repair, &mut r)?;
    check_shards_present(vol, repair, &mut r)?;
    check_local(vol, repair, &mut r)?;
    if repair && r.problems.iter().any(|p| p.repaired) {
        vol.meta().sync()?;
        if let Err(e) = vol.collect_garbage() {
            r.notes
                .push(format!("garbage collection after repair failed: {e}"));
        }
    }
    Ok(r)
}

fn check_namespace(vol: &Volume, repair: bool, r: &mut FsckReport) -> Result<()> {
    let meta = vol.meta();
    // Entries pointing nowhere, or hanging from something that is not a directory.
    let bad = meta.read(meta::checks::bad_entries)?;
    for meta::checks::BadEntry {
        parent,
        name,
        ino,
        why,
    } in bad
    {
        if repair {
            meta.write(|c| meta::checks::delete_entry(c, parent, &name))?;
        }
        let name = String::from_utf8_lossy(&name);
        r.problem(
            format!("entry {name:?} (dir {parent}, inode {ino}) {why}"),
            repair,
        );
    }
    match meta.read(|c| meta::get_inode(c, ROOT_INO))? {
        Some(root) if root.kind == FileKind::Dir => {}
        _ => r.problem(
            "the root directory is missing or not a directory".into(),
            false,
        ),
    }
    let census = meta.read(meta::link_census)?;
    r.inodes = census.len() as u64;
    let mut lost_found: Option<u64> = None;
    for (inode, entries, subdirs) in census {
        if inode.ino == ROOT_INO {
            continue;
        }
        if inode.kind == FileKind::Dir && entries > 1 {
            r.problem(
                format!("directory inode {} has {entries} names", inode.ino),
                false,
            );
        }
        if entries == 0 {
            if inode.nlink == 0 {
                if repair {
                    meta.write(|c| meta::delete_inode_if_unreferenced(c, inode.ino).map(|_| ()))?;
                }
                r.problem(
                    format!("orphan inode {} (unlinked, never deleted)", inode.ino),
                    repair,
                );
            } else {
                if repair {
                    let lf = match lost_found {
                        Some(l) => l,
                        None => {
                            let l = ensure_lost_found(vol)?;
                            lost_found = Some(l);
                            l
                        }
                    };
                    meta.write(|c| {
                        meta::checks::clear_nlink(c, inode.ino)?;
                        meta::link(c, lf, format!("#{}", inode.ino).as_bytes(), inode.ino)
                    })?;
                }
                r.problem(
                    format!(
                        "inode {} has links but no name; reconnected under /lost+found",
                        inode.ino
                    ),
                    repair,
                );
            }
            continue;
        }
        let want = if inode.kind == FileKind::Dir {
            2 + subdirs
        } else {
            entries
        };
        if inode.nlink != want {
            if repair {
                meta.write(|c| meta::set_nlink(c, inode.ino, want))?;
            }
            r.problem(
                format!(
                    "inode {} has link count {} but {want} links",
                    inode.ino, inode.nlink
                ),
                repair,
            );
        }
        if inode.kind == FileKind::Symlink
            && meta.read(|c| meta::read_link(c, inode.ino))?.is_none()
        {
            r.problem(format!("symlink inode {} has no target", inode.ino), false);
        }
    }
    // The root's own count: 2 + its subdirectories.
    let root_want = meta.read(meta::checks::root_links_wanted)?;
    if let Some(root) = meta.read(|c| meta::get_inode(c, ROOT_INO))?
        && root.nlink != root_want
    {
        if repair {
            meta.write(|c| meta::set_nlink(c, ROOT_INO, root_want))?;
        }
        r.problem(
            format!("root has link count {} but {root_want} links", root.nlink),
            repair,
        );
    }
    Ok(())
}

fn ensure_lost_found(vol: &Volume) -> Result<u64> {
    vol.meta()
        .write(|c| match meta::lookup(c, ROOT_INO, b"lost+found")? {
            Some(ino) => Ok(ino),
            None => {
                let ino = meta::create_inode(
                    c,
                    &NewInode {
                        kind: FileKind::Dir,
                        mode: 0o700,
                        uid: 0,
                        gid: 0,
                        rdev: 0,
                        target: None,
                    },
                )?;
                meta::link(c, ROOT_INO, b"lost+found", ino)?;
                Ok(ino)
            }
        })
}

fn check_segments(vol: &Volume, repair: bool, r: &mut FsckReport) -> Result<()> {
    let meta = vol.meta();
    let seg = vol.segment_size();
    let known_stores: HashSet<u32> = vol.stores().slots().iter().map(|s| s.id).collect();
    // Segments of inodes that are gone or not regular files.
    let stray = meta.read(meta::checks::stray_segments)?;
    for (ino, idx) in stray {
        if repair {
            meta.write(|c| meta::drop_segments_from(c, ino as u64, 0))?;
        }
        r.problem(
            format!("segment {idx} belongs to inode {ino}, which is not a regular file"),
            repair,
        );
    }
    let files = meta.read(meta::checks::file_sizes)?;
    for (ino, size) in files {
        for rec in meta.read(|c| meta::segments_of(c, ino))? {
            r.segments += 1;
            let end = rec.index * seg + rec.info.plain_len;
            if end > size && rec.index * seg >= size {
                if repair {
                    meta.write(|c| meta::drop_segments_from(c, ino, size.div_ceil(seg)))?;
                }
                r.problem(
                    format!(
                        "inode {ino}: segment {} lies past the end of the file",
                        rec.index
                    ),
                    repair,
                );
            } else if end > size {
                // A boundary segment holding bytes past the end: cut it so regrowing the file reads zeros.
                let fixed = repair
                    && (|| -> Result<()> {
                        let data = vol.read_segment(&rec, &format!("inode {ino}"))?;
                        let keep = (size - rec.index * seg) as usize;
                        let new =
                            vol.encode_and_place(ino, rec.index, &data[..keep.min(data.len())])?;
                        meta.write(|c| meta::put_segment(c, ino, &new))
                    })()
                    .is_ok();
                r.problem(
                    format!(
                        "inode {ino}: segment {} holds bytes past the end of the file",
                        rec.index
                    ),
                    fixed,
                );
            }
            match &rec.pack {
                None => check_shard_rows(
                    vol,
                    &known_stores,
                    &rec,
                    &format!("inode {ino}: segment {}", rec.index),
                    repair,
                    r,
                )?,
                Some(p) if p.offset + rec.info.plain_len > p.record.info.plain_len => r.problem(
                    format!(
                        "inode {ino}: segment {} lies past the end of pack {}: data loss",
                        rec.index, p.record.id
                    ),
                    false,
                ),
                Some(_) => {}
            }
        }
    }
    // Packs: the shards of many small files' segments.
    for pack in meta.read(meta::pack_usage)? {
        let rec = meta.read(|c| meta::pack_record(c, pack.id))?;
        r.segments += 1;
        check_shard_rows(
            vol,
            &known_stores,
            &rec,
            &format!("pack {}", pack.id),
            repair,
            r,
        )?;
    }
    Ok(())
}

/// Checks one stored segment's shard rows: as many as K+M, each good one on a known store (one of
/// `known_stores`), at least K good.
fn check_shard_rows(
    vol: &Volume,
    known_stores: &HashSet<u32>,
    rec: &meta::SegmentRecord,
    what: &str,
    repair: bool,
    r: &mut FsckReport,
) -> Result<()> {
    let meta = vol.meta();
    let total = vol.config().data_shards + vol.config().parity_shards;
    let k = vol.config().data_shards;
    if rec.shards.len() != total {
        r.problem(
            format!(
                "{what} has {} shard rows, expected {total}",
                rec.shards.len()
            ),
            false,
        );
    }
    let mut good = 0;
    for s in &rec.shards {
        match (s.state, s.store_id, &s.locator) {
            (ShardState::Ok, Some(store), Some(_)) if known_stores.contains(&store) => good += 1,
            (ShardState::Ok, Some(store), Some(_)) => r.problem(
                format!("{what} shard {} is on unknown store {store}", s.index),
                false,
            ),
            (ShardState::Ok, _, _) => {
                if repair {
                    meta.write(|c| meta::mark_shard(c, rec.id, s.index, ShardState::Missing))?;
                }
                r.problem(
                    format!(
                        "{what} shard {} is marked good but has no store or locator",
                        s.index
                    ),
                    repair,
                );
            }
            _ => {}
        }
    }
    if good < k {
        r.problem(
            format!("{what} has only {good} good shards, {k} needed: data loss"),
            false,
        );
    } else if good < total {
        r.notes.push(format!(
            "{what} is degraded ({good}/{total} shards); `qsfs repair` restores it"
        ));
    }
    Ok(())
}

/// Asks each store whether every shard recorded on it is there.
fn check_shards_present(vol: &Volume, repair: bool, r: &mut FsckReport) -> Result<()> {
    let rows = vol.meta().read(meta::checks::good_shards)?;
    let mut unreachable: HashMap<u32, String> = HashMap::new();
    for slot in vol.stores().slots() {
        if let crate::store_set::StoreState::Down(why) = slot.state() {
            unreachable.insert(slot.id, why);
        }
    }
    let results = vol.io().block_on(async {
        let mut out = Vec::new();
        let mut tasks = JoinSet::new();
        for (seg, idx, store, loc, ino) in rows {
            if unreachable.contains_key(&store) {
                continue;
            }
            let Some(slot) = vol.stores().slot(store).cloned() else {
                continue;
            };
            if tasks.len() >= EXISTS_CONCURRENCY
                && let Some(Ok(x)) = tasks.join_next().await
            {
                out.push(x);
            }
            tasks.spawn(async move {
                let res = slot.store.exists(&qsfs_backends::Locator(loc)).await;
                (seg, idx, store, ino, res)
            });
        }
        while let Some(x) = tasks.join_next().await {
            if let Ok(x) = x {
                out.push(x);
            }
        }
        out
    });
    for (seg, idx, store, ino, res) in results {
        r.shards_checked += 1;
        match res {
            Ok(true) => {}
            Ok(false) => {
                if repair {
                    vol.meta()
                        .write(|c| meta::mark_shard(c, seg, idx, ShardState::Missing))?;
                }
                r.problem(
                    format!(
                        "inode {ino}: shard {idx} of segment {seg} is missing from store {store}{}",
                        if repair {
                            " (marked missing for `qsfs repair`)"
                        } else {
                            ""
                        }
                    ),
                    false,
                );
                if let Some(p) = r.problems.last_mut() {
                    p.missing_shard = true;
                }
            }
            Err(e) => {
                unreachable.entry(store).or_insert_with(|| e.to_string());
            }
        }
    }
    for (store, why) in unreachable {
        r.notes
            .push(format!("store {store} could not be checked: {why}"));
    }
    Ok(())
}

fn check_local(vol: &Volume, repair: bool, r: &mut FsckReport) -> Result<()> {
    let area = StagingArea::open(&vol.cache_dir(), false)?;
    let queued = vol.meta().read(meta::queued_segments)?;
    let mut named = HashSet::new();
    for q in &queued {
        named.insert(q.file.clone());
        if !q.inline && !area.queue_dir().join(&q.file).exists() {
            if repair {
                vol.meta().write(|c| meta::dequeue(c, q.id).map(|_| ()))?;
            }
            r.problem(
                format!(
                    "inode {}: queued segment {} has lost its local file (its bytes are gone)",
                    q.ino, q.index
                ),
                repair,
            );
        }
    }
    if !queued.is_empty() {
        r.notes.push(format!(
            "{} segments wait in the upload queue (the next mount uploads them)",
            queued.len()
        ));
    }
    for path in area.queue_files()? {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !named.contains(&name) {
            if repair {
                let _ = std::fs::remove_file(&path);
            }
            r.notes.push(format!(
                "leftover queue file {}{}",
                path.display(),
                if repair { " removed" } else { "" }
            ));
        }
    }
    let staging = area.staging_files()?;
    if !staging.is_empty() {
        if repair {
            for p in &staging {
                let _ = std::fs::remove_file(p);
            }
        }
        r.notes.push(format!(
            "{} staging files left by an interrupted mount (never promised durable){}",
            staging.len(),
            if repair {
                ", removed"
            } else {
                "; the next mount or --repair removes them"
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{InitOptions, PutOptions};

    #[test]
    fn finds_and_repairs_damage() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("vol");
        Volume::init(&root, &InitOptions::default()).unwrap();
        let vol = Volume::open(&root).unwrap();
        let opts = PutOptions {
            mode: 0o644,
            uid: 0,
            gid: 0,
            atime_ns: 0,
            mtime_ns: 0,
        };
        let ino = vol
            .put_file(ROOT_INO, b"f", &mut &[7u8; 5000][..], &opts, &mut |_| {})
            .unwrap();
        let clean = fsck(&vol, false).unwrap();
        assert_eq!(clean.unrepaired(), 0, "{:?}", clean.problems);
        assert_eq!(clean.shards_checked, 6);

        // Damage: a wrong link count, an orphan inode, a shard gone from its store.
        vol.meta().write(|c| meta::set_nlink(c, ino, 5)).unwrap();
        vol.meta()
            .write(|c| {
                let new = NewInode {
                    kind: FileKind::File,
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    target: None,
                };
                meta::create_inode(c, &new).map(|_| ())
            })
            .unwrap();
        let rec = vol
            .meta()
            .read(|c| meta::segments_of(c, ino))
            .unwrap()
            .remove(0);
        let shard = &rec.shards[0];
        let slot = vol.stores().slot(shard.store_id.unwrap()).unwrap().clone();
        let loc = qsfs_backends::Locator(shard.locator.clone().unwrap());
        vol.io().block_on(slot.store.delete(&loc)).unwrap();

        let found = fsck(&vol, false).unwrap();
        assert_eq!(found.unrepaired(), 3, "{:?}", found.problems);
        let repaired = fsck(&vol, true).unwrap();
        // The missing shard is marked for `qsfs repair`, not rebuilt by fsck: it stays a problem until then.
        assert_eq!(repaired.unrepaired(), 1, "{:?}", repaired.problems);
        let after = fsck(&vol, false).unwrap();
        assert_eq!(after.unrepaired(), 0, "{:?}", after.problems);
        assert!(after.notes.iter().any(|n| n.contains("degraded")));
    }
}
