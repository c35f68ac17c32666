//! `repair index`: rebuilds the index from the packs themselves.
//!
//! After `check --read-data` finds a damaged pack, the index still lists the damaged blobs, so
//! every later backup deduplicates against them and its snapshots refer to bytes that cannot
//! be read. After a lost index file, the packs it listed are in no index and their snapshots
//! cannot be restored. Both are repaired the same way, under the exclusive lock: every pack in
//! `data/` is read whole, its trailer parsed (or, if the trailer is damaged, the index's
//! entries for it used), and every blob decrypted, decompressed and re-hashed; the blobs that
//! verify make up the new index. Order of writes, as prune's: new index files first, then the
//! old ones deleted, so a crash in between leaves the old entries beside the new (the state
//! before the repair, no worse) and running the repair again finishes it.
//!
//! A damaged pack (one that does not hash to its name, or whose trailer or a blob fails) is
//! salvaged: the blobs of it that verify are copied as they are into new packs, which the new
//! index lists instead of the damaged pack. The damaged pack is left in `data/`, listed by no
//! index file, for the next `prune` to delete; nothing here deletes a pack. A blob that does
//! not verify is left out of the index: the next backup stores that content again if the
//! source still has it, and `check` names the snapshots that refer to it.

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::blob::{self, EncodedBlob};
use crate::error::{Error, Result};
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId};
use crate::index::IndexPack;
use crate::lock::{LockKind, LockOptions};
use crate::pack::{self, pack_path, BlobEntry, PackBuilder};
use crate::repository::Repository;

/// What [`Repository::repair_index`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// True if nothing was written or deleted.
    pub dry_run: bool,
    /// Packs in `data/` read and verified.
    pub packs_read: u64,
    /// Blobs that verified: the new index lists them.
    pub blobs_kept: u64,
    /// Blobs left out of the new index (damaged, or in a pack that is missing).
    pub blobs_dropped: u64,
    /// Packs that no index file listed and that the new index lists (their index file was
    /// lost, or a backup was interrupted before writing it).
    pub packs_reindexed: u64,
    /// Index files that could not be read (their packs are indexed from the packs instead).
    pub index_files_unreadable: u64,
    /// True if the new index differs from the current one (so it is written, unless a dry
    /// run): a listed blob is left out, a pack is added, or an index file was unreadable.
    pub index_changed: bool,
    /// New packs written with the blobs salvaged from damaged ones (0 in a dry run).
    pub packs_written: u64,
    /// Index files written (0 if the index was already sound, or in a dry run).
    pub index_files_written: u64,
    /// Old index files deleted.
    pub index_files_deleted: u64,
    /// Each pack with a problem: what is wrong and how many of its blobs were dropped.
    pub damaged: Vec<DamagedPack>,
}

/// A pack [`Repository::repair_index`] found damaged or missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamagedPack {
    /// The pack's object path (`data/ab/…`).
    pub object: String,
    /// What is wrong with it.
    pub problem: String,
    /// Blobs of it that do not verify (or are in a pack that is gone): left out of the index.
    pub blobs_dropped: u64,
    /// Blobs of it that verified: copied into a new pack (the damaged pack itself is then
    /// listed by no index file, and the next prune deletes it).
    pub blobs_salvaged: u64,
}

impl Repository {
    /// Rebuilds the index from the packs in `data/`, keeping only blobs that verify (see the
    /// module documentation), under an exclusive [`LockKind::Repair`] lock. Reads every pack
    /// once (as `check --read-data`). Writes nothing if the index already lists exactly the
    /// blobs that verify ([`RepairReport::index_changed`] false) or `dry_run` is set.
    ///
    /// # Errors
    /// [`Error::RepositoryLocked`] while backups, restores, checks or a prune hold their locks;
    /// [`Error::LockLost`]; [`Error::Backend`] (a listing, write or delete that failed: nothing
    /// is deleted before every new index file is written).
    pub async fn repair_index(&self, dry_run: bool, lock: &LockOptions) -> Result<RepairReport> {
        let held = self.lock(LockKind::Repair, lock).await?;
        let result = self.repair_index_locked(dry_run, &held).await;
        held.release().await;
        result
    }

    async fn repair_index_locked(
        &self,
        dry_run: bool,
        held: &crate::lock::RepoLock,
    ) -> Result<RepairReport> {
        let inner = &self.inner;
        let mut report = RepairReport {
            dry_run,
            ..RepairReport::default()
        };

        let mut on_disk: Vec<(PackId, u64)> = Vec::new();
        for (name, size) in inner.list_names("data").await? {
            match name.parse::<PackId>() {
                Ok(id) => on_disk.push((id, size)),
                Err(_) => tracing::warn!(object = %name, "ignoring non-pack object under data/"),
            }
        }
        on_disk.sort();
        let index_files: Vec<IndexId> = inner
            .list_names("index")
            .await?
            .into_iter()
            .filter_map(|(name, _)| name.parse().ok())
            .collect();

        // What the index says now: each pack's entries (from every readable index file).
        let loaded: Vec<(IndexId, Result<Vec<IndexPack>>)> =
            futures::stream::iter(index_files.clone())
                .map(|id| async move { (id, inner.read_index_file(id).await) })
                .buffer_unordered(8)
                .collect()
                .await;
        let mut listed: IdMap<PackId, Vec<BlobEntry>> = IdMap::default();
        let mut listed_size: IdMap<PackId, u64> = IdMap::default();
        for (id, packs) in loaded {
            match packs {
                Ok(packs) => {
                    for p in packs {
                        listed_size.entry(p.id).or_insert(p.size);
                        listed.entry(p.id).or_default().extend(p.blobs);
                    }
                }
                // A damaged index file is replaced; anything else (the storage not answering,
                // a newer format) stops the repair before it writes anything.
                Err(Error::CorruptObject { detail, .. }) => {
                    tracing::warn!(index = %id, %detail, "index file damaged; its packs are indexed from the packs");
                    report.index_files_unreadable += 1;
                }
                Err(e) => return Err(e),
            }
        }

        // A pack listed in two index files (a checkpoint and a commit) once, in pack order.
        for entries in listed.values_mut() {
            entries.sort_by_key(|e| (e.offset, e.id));
            entries.dedup();
        }

        // Packs the index lists that are gone: their blobs are dropped.
        let present: IdSet<PackId> = on_disk.iter().map(|(id, _)| *id).collect();
        for (id, entries) in &listed {
            if !present.contains(id) {
                report.blobs_dropped += entries.len() as u64;
                report.damaged.push(DamagedPack {
                    object: pack_path(id).to_string(),
                    problem: "missing: the index lists it but it is not in the repository"
                        .to_owned(),
                    blobs_dropped: entries.len() as u64,
                    blobs_salvaged: 0,
                });
            }
        }

        // Every pack, read and verified; the good blobs of damaged packs copied into new ones.
        let mut new_index: Vec<IndexPack> = Vec::new();
        // Damaged packs and the entries of theirs that verified (their bytes are not kept:
        // a repair of many damaged packs must not hold them all in memory).
        let mut damaged: Vec<(PackId, Vec<BlobEntry>)> = Vec::new();
        for (id, size) in on_disk {
            held.ensure_valid(held.ttl() / 2)?;
            let path = pack_path(&id);
            let from_index = listed.get(&id).cloned().unwrap_or_default();
            let bytes = match inner.get("pack", &path).await {
                Ok(b) => b,
                // The storage did not answer: stop before anything is written.
                Err(e @ Error::Backend { .. }) => return Err(e),
                Err(e) => {
                    report.index_changed |= !from_index.is_empty();
                    report.blobs_dropped += from_index.len() as u64;
                    report.damaged.push(DamagedPack {
                        object: path.to_string(),
                        problem: format!("unreadable: {e}"),
                        blobs_dropped: from_index.len() as u64,
                        blobs_salvaged: 0,
                    });
                    continue;
                }
            };
            report.packs_read += 1;
            let (key, codec) = (inner.key.clone(), inner.codec.clone());
            let verified = tokio::task::spawn_blocking(move || {
                verify_pack_entries(&codec, &key, &id, &bytes, from_index)
            })
            .await
            .map_err(Error::join)?;
            let good_count = verified.good.len() as u64;
            report.blobs_kept += good_count;
            report.blobs_dropped += verified.dropped;
            if verified.problems.is_empty() {
                // Sound: indexed as it is.
                if !listed.contains_key(&id) {
                    report.packs_reindexed += 1;
                    report.index_changed = true;
                } else {
                    if listed[&id] != verified.good || listed_size.get(&id) != Some(&size) {
                        report.index_changed = true;
                    }
                }
                new_index.push(IndexPack {
                    id,
                    size,
                    blobs: verified.good,
                });
                continue;
            }
            // Damaged: left out of the index; what verified is salvaged.
            report.index_changed |= listed.contains_key(&id);
            report.damaged.push(DamagedPack {
                object: path.to_string(),
                problem: verified.problems.join("; "),
                blobs_dropped: verified.dropped,
                blobs_salvaged: good_count,
            });
            damaged.push((id, verified.good));
        }
        // A blob can be salvaged from two damaged packs, or be sound elsewhere: store it once.
        let mut have: IdSet<BlobId> = new_index
            .iter()
            .flat_map(|p| p.blobs.iter().map(|b| b.id))
            .collect();
        let damaged: Vec<(PackId, Vec<BlobEntry>)> = damaged
            .into_iter()
            .map(|(id, good)| (id, good.into_iter().filter(|e| have.insert(e.id)).collect()))
            .filter(|(_, good): &(PackId, Vec<BlobEntry>)| !good.is_empty())
            .collect();
        report.index_changed |= !damaged.is_empty();
        if !dry_run {
            // One damaged pack in memory at a time: read again, its sound blobs copied as
            // stored into new packs as they fill.
            let target = inner.config.pack_target_size;
            let mut salvage = PackBuilder::default();
            for (id, good) in damaged {
                held.ensure_valid(held.ttl() / 2)?;
                let path = pack_path(&id);
                let bytes = inner.get("pack", &path).await?;
                let wanted: IdSet<BlobId> = good.iter().map(|e| e.id).collect();
                let (key, codec) = (inner.key.clone(), inner.codec.clone());
                let verified = tokio::task::spawn_blocking(move || {
                    verify_pack_entries(&codec, &key, &id, &bytes, good)
                })
                .await
                .map_err(Error::join)?;
                for blob in verified
                    .blobs
                    .into_iter()
                    .filter(|b| wanted.contains(&b.id))
                {
                    salvage.add(blob);
                    if salvage.len() >= target {
                        new_index.push(self.upload_pack(std::mem::take(&mut salvage)).await?);
                        report.packs_written += 1;
                    }
                }
            }
            if !salvage.is_empty() {
                new_index.push(self.upload_pack(salvage).await?);
                report.packs_written += 1;
            }
        }
        report.damaged.sort_by(|a, b| a.object.cmp(&b.object));
        if report.index_files_unreadable > 0 || listed.keys().any(|id| !present.contains(id)) {
            report.index_changed = true;
        }

        if !report.index_changed || dry_run {
            tracing::info!(
                index_changed = report.index_changed,
                dry_run,
                blobs_dropped = report.blobs_dropped,
                packs_reindexed = report.packs_reindexed,
                "index repair: nothing written"
            );
            return Ok(report);
        }

        // New index files first, then the old ones deleted.
        let replaced = self
            .replace_index_files(&new_index, &index_files, held)
            .await?;
        report.index_files_written = replaced.written;
        report.index_files_deleted = replaced.deleted;
        inner.refresh_index().await?;
        tracing::info!(
            blobs_kept = report.blobs_kept,
            blobs_dropped = report.blobs_dropped,
            packs_reindexed = report.packs_reindexed,
            index_files_written = report.index_files_written,
            index_files_deleted = report.index_files_deleted,
            "index repaired"
        );
        Ok(report)
    }
}

/// One pack's verification.
struct Verified {
    /// Entries whose blob verified, in pack order, each id once.
    good: Vec<BlobEntry>,
    /// The stored bytes of `good`, for salvaging them if the pack is damaged.
    blobs: Vec<EncodedBlob>,
    /// Entries that did not verify.
    dropped: u64,
    /// What is wrong with the pack (empty if nothing).
    problems: Vec<String>,
}

/// Verifies the pack's hash and every blob its trailer lists (or, if the trailer cannot be
/// read, `from_index`, what the index listed for it).
fn verify_pack_entries(
    codec: &crate::format::Codec,
    key: &[u8; 32],
    id: &PackId,
    bytes: &bytes::Bytes,
    from_index: Vec<BlobEntry>,
) -> Verified {
    let mut problems = Vec::new();
    if blake3::hash(bytes).as_bytes() != id.as_bytes() {
        problems.push("content does not hash to its name".to_owned());
    }
    let mut entries = match pack::parse_pack(codec, id, bytes) {
        Ok(entries) => entries,
        Err(e) => {
            let detail = match e {
                Error::CorruptObject { detail, .. } => detail,
                e => e.to_string(),
            };
            problems.push(format!(
                "{detail} (the index's {} entries for it are tried instead)",
                from_index.len()
            ));
            from_index
        }
    };
    entries.sort_by_key(|e| (e.offset, e.id));
    let mut good: Vec<BlobEntry> = Vec::with_capacity(entries.len());
    let mut blobs = Vec::with_capacity(entries.len());
    let mut seen: IdSet<BlobId> = IdSet::default();
    let mut bad: Vec<(BlobId, String)> = Vec::new();
    for entry in entries {
        let range = entry.range();
        if range.end > bytes.len() as u64 {
            bad.push((entry.id, format!("blob {} lies beyond the end", entry.id)));
            continue;
        }
        let stored = bytes.slice(range.start as usize..range.end as usize);
        match blob::decode(
            key,
            codec,
            &entry.id,
            stored.clone(),
            entry.compression,
            entry.raw_len,
        ) {
            Ok(_) => {
                // Verified first, then deduplicated: a damaged copy never hides a good one.
                if seen.insert(entry.id) {
                    good.push(entry);
                    blobs.push(EncodedBlob {
                        id: entry.id,
                        raw_len: entry.raw_len,
                        compression: entry.compression,
                        data: stored,
                    });
                }
            }
            Err(detail) => bad.push((entry.id, detail)),
        }
    }
    // A blob that failed in one place and verified in another is not lost.
    bad.retain(|(id, _)| !seen.contains(id));
    if !bad.is_empty() {
        let first: Vec<&str> = bad.iter().take(3).map(|(_, d)| d.as_str()).collect();
        problems.push(format!(
            "{} blob(s) damaged ({}{})",
            bad.len(),
            first.join("; "),
            if bad.len() > 3 { "; …" } else { "" }
        ));
    }
    Verified {
        good,
        blobs,
        dropped: bad.len() as u64,
        problems,
    }
}
