//! Pack segments on the volume's side: placing a pack, reading a packed file segment through a small cache of
//! recently read packs (reading a directory of small files — `cp -a`, `tar c` — fetches each pack once), and
//! compacting packs whose live share fell below [`COMPACT_BELOW`]. The rows are in `meta::packs`; which segments
//! go into a pack is the mount's uploader's choice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::Volume;
use crate::error::{QsfsError, Result};
use crate::meta::{self, PackMember, PackSlice, SegmentRecord};

/// Decoded packs kept for neighbouring reads (at most this many segments' worth of memory).
const PACK_CACHE_ENTRIES: usize = 8;

/// A pack is compacted once less than this share of its bytes is some file's: dead bytes in packs then stay
/// below the live ones, so packed data takes at most twice its live size before redundancy (K+M)/K.
pub const COMPACT_BELOW: f64 = 0.5;

/// Recently read packs' plaintext, most recent last.
#[derive(Default)]
pub(crate) struct PackCache {
    entries: Mutex<VecDeque<(u64, Arc<Vec<u8>>)>>,
}

impl PackCache {
    fn get(&self, id: u64) -> Option<Arc<Vec<u8>>> {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let at = e.iter().position(|(i, _)| *i == id)?;
        let hit = e.remove(at)?;
        let bytes = hit.1.clone();
        e.push_back(hit);
        Some(bytes)
    }

    fn put(&self, id: u64, bytes: Arc<Vec<u8>>) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.retain(|(i, _)| *i != id);
        e.push_back((id, bytes));
        while e.len() > PACK_CACHE_ENTRIES {
            e.pop_front();
        }
    }
}

/// What one compaction pass did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PackCompaction {
    /// Packs at the start of the pass, and their plaintext and live bytes.
    pub packs: u64,
    pub pack_bytes: u64,
    pub live_bytes: u64,
    /// Packs rewritten (their live members moved into new packs) and packs dropped (nothing live left).
    pub compacted: u64,
    pub dropped: u64,
    /// Live bytes copied into new packs.
    pub moved_bytes: u64,
}

impl Volume {
    /// Encodes `data` (the concatenated bytes of its members) as a new pack and places it. Nothing is committed.
    pub fn encode_and_place_pack(&self, data: &[u8]) -> Result<SegmentRecord> {
        let id = meta::new_segment_id();
        self.encode_and_place_as(id, meta::PACK_HOLDER, id, data)
    }

    /// The bytes of packed file segment `rec`. A compaction may have moved them to another pack since `rec` was
    /// read (and the old pack's shards may be gone): then the segment is looked up again, once.
    pub(super) fn read_packed(
        &self,
        rec: &SegmentRecord,
        slice: &PackSlice,
        name: &str,
    ) -> Result<Vec<u8>> {
        match self.slice_of_pack(rec, slice, name) {
            Ok(bytes) => Ok(bytes),
            Err(e) => {
                let now = self
                    .meta
                    .read(|c| meta::segment_at(c, rec.ino, rec.index))?;
                match now {
                    Some(again)
                        if again.id == rec.id
                            && again.pack.as_ref().map(|p| p.record.id)
                                != Some(slice.record.id) =>
                    {
                        let moved = again.pack.as_ref().expect("checked");
                        self.slice_of_pack(&again, moved, name)
                    }
                    _ => Err(e),
                }
            }
        }
    }

    fn slice_of_pack(&self, rec: &SegmentRecord, slice: &PackSlice, name: &str) -> Result<Vec<u8>> {
        let pack_id = slice.record.id;
        let pack = match self.packs.get(pack_id) {
            Some(bytes) => bytes,
            None => {
                let bytes = Arc::new(self.read_segment(&slice.record, name)?);
                self.packs.put(pack_id, bytes.clone());
                bytes
            }
        };
        let start = slice.offset as usize;
        let end = start.saturating_add(rec.info.plain_len as usize);
        pack.get(start..end)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| QsfsError::CorruptSegment {
                segment: pack_id,
                reason: format!("{name}: a packed segment lies past its pack's end"),
            })
    }

    /// The packs' sizes and live bytes, changing nothing (`gc --dry-run`).
    pub fn pack_census(&self) -> Result<PackCompaction> {
        Ok(census(&self.meta.read(meta::pack_usage)?))
    }

    /// Drops packs nothing lives in any more and rewrites those whose live share is below [`COMPACT_BELOW`]:
    /// their live members are read, packed anew (several sparse packs into one where they fit) and moved, which
    /// leaves the old packs dead. Their shards become garbage, deleted by `collect_garbage`.
    pub fn compact_packs(&self) -> Result<PackCompaction> {
        self.check_writer()?;
        let usage = self.meta.read(meta::pack_usage)?;
        let mut report = census(&usage);
        let limit = self.segment_size();
        let mut batch: Vec<(u64, PackMember, Vec<u8>)> = Vec::new();
        let mut batch_len = 0u64;
        for u in usage
            .iter()
            .filter(|u| u.members > 0 && (u.live as f64) < COMPACT_BELOW * u.plain_len as f64)
        {
            let rec = self.meta.read(|c| meta::pack_record(c, u.id))?;
            let bytes = self.read_segment(&rec, "a pack being compacted")?;
            for m in self.meta.read(|c| meta::pack_members(c, u.id))? {
                let (start, end) = (m.offset as usize, (m.offset + m.len) as usize);
                let Some(piece) = bytes.get(start..end) else {
                    continue;
                };
                if batch_len + m.len > limit {
                    report.moved_bytes += self.repack(std::mem::take(&mut batch))?;
                    batch_len = 0;
                }
                batch_len += m.len;
                batch.push((u.id, m, piece.to_vec()));
            }
            report.compacted += 1;
        }
        if !batch.is_empty() {
            report.moved_bytes += self.repack(batch)?;
        }
        // Packs emptied since are dropped by the commits that emptied them; this sweep also finds any a volume of
        // an earlier release left.
        report.dropped = self.meta.write(meta::drop_dead_packs)? as u64;
        Ok(report)
    }

    /// Writes `members` (each with the pack it is in now and its bytes) into one new pack and moves those that
    /// did not change meanwhile. Returns the bytes moved.
    fn repack(&self, members: Vec<(u64, PackMember, Vec<u8>)>) -> Result<u64> {
        let mut data = Vec::with_capacity(members.iter().map(|m| m.2.len()).sum());
        let mut offsets = Vec::with_capacity(members.len());
        for (_, _, bytes) in &members {
            offsets.push(data.len() as u64);
            data.extend_from_slice(bytes);
        }
        // Until the new pack commits, gc must not take its shards for orphans.
        let _placing = self.placements().begin();
        let rec = self.encode_and_place_pack(&data)?;
        self.meta.write(|c| {
            meta::put_pack(c, &rec)?;
            let mut moved = 0;
            for ((from, m, _), off) in members.iter().zip(&offsets) {
                if meta::move_member(c, m, *from, rec.id, *off)? {
                    moved += m.len;
                }
            }
            // A pack none of whose members could move is dead at once; so are the packs emptied here.
            let mut touched: Vec<u64> = members.iter().map(|(from, _, _)| *from).collect();
            touched.push(rec.id);
            touched.sort_unstable();
            touched.dedup();
            meta::drop_packs_if_dead(c, &touched)?;
            Ok(moved)
        })
    }
}

/// The packs' count, size and live bytes, from one read of their usage.
fn census(usage: &[meta::PackUse]) -> PackCompaction {
    PackCompaction {
        packs: usage.len() as u64,
        pack_bytes: usage.iter().map(|u| u.plain_len).sum(),
        live_bytes: usage.iter().map(|u| u.live).sum(),
        ..PackCompaction::default()
    }
}
