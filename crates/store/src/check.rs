//! `check`: structural verification, and with `read_data` a re-hash of every blob.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use crate::blob;
use crate::error::{Error, Result};
use crate::format::Codec;
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId, SnapshotId};
use crate::index::{self, Index};
use crate::pack::{self, pack_path, BlobEntry};
use crate::repository::{fetch_blob, ItemParser, Repository};
use crate::snapshot::{snapshot_path, ContentRef, Snapshot};

/// A pack's problem when the index lists it but the repository does not hold it.
pub(crate) const MISSING_PACK: &str = "the index lists it but it is not in the repository";

/// What `check` should do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOptions {
    /// Also read packs and re-hash every blob in them.
    pub read_data: bool,
    /// With `read_data`: read only this percentage (1–100) of the indexed packs, drawn at
    /// random on every run, so that repeated runs cover the whole repository over time at a
    /// fraction of the bandwidth. `None` reads every pack.
    pub read_data_subset: Option<u8>,
}

impl CheckOptions {
    /// Structure only: no pack is read.
    pub fn structure() -> Self {
        CheckOptions::default()
    }

    /// Structure, and every pack read and re-hashed.
    pub fn read_data() -> Self {
        CheckOptions {
            read_data: true,
            read_data_subset: None,
        }
    }

    /// Structure, and a random `percent` (1–100, clamped) of the packs read and re-hashed.
    pub fn read_data_subset(percent: u8) -> Self {
        CheckOptions {
            read_data: true,
            read_data_subset: Some(percent.clamp(1, 100)),
        }
    }
}

/// One problem found by `check`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckProblem {
    /// The object concerned: its path in the repository (`data/ab/…`, `index/…`, `snapshots/…`).
    pub object: String,
    /// What is wrong, and what to do.
    pub problem: String,
    /// Snapshots whose data the problem makes (partly) unrestorable.
    pub affected_snapshots: Vec<SnapshotId>,
    /// For a damaged pack: the items whose content is in its damaged blobs, by snapshot (at most
    /// [`MAX_AFFECTED_ITEMS`]; the rest are counted in `more_affected_items`).
    #[serde(default)]
    pub affected_items: Vec<AffectedItem>,
    /// Affected items beyond those listed in `affected_items`.
    #[serde(default)]
    pub more_affected_items: u64,
}

/// An item (mail message, file, …) a damaged pack leaves (partly) unrestorable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AffectedItem {
    /// The snapshot holding it.
    pub snapshot: SnapshotId,
    /// Its path in that snapshot (`Inbox/…`, `Documents/…`), as `m365bk ls` shows it.
    pub path: String,
}

/// Items named per damaged pack; more are only counted, so that a pack shared by millions of
/// items does not make the report as large as the catalog.
pub const MAX_AFFECTED_ITEMS: usize = 1000;

/// The outcome of `check`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// Every problem found; empty means the repository is sound.
    pub errors: Vec<CheckProblem>,
    /// Packs read and verified (0 without `read_data`).
    pub packs_checked: u64,
    /// Packs the index lists (the whole set `read_data_subset` draws from).
    pub packs_indexed: u64,
    /// Blobs re-hashed with `read_data`; otherwise distinct blobs whose index entry and pack
    /// were checked.
    pub blobs_checked: u64,
    /// Snapshots whose item lists were read and checked.
    pub snapshots_checked: u64,
    /// Snapshots that could not be read, or whose item lists could not (each is also an error).
    #[serde(default)]
    pub snapshots_unreadable: u64,
    /// Packs in `data/` listed in no index file: left by an interrupted backup (harmless, prune
    /// removes them) or by a lost index file. Not counted as errors.
    pub unindexed_packs: Vec<PackId>,
}

impl CheckReport {
    /// True if no problem was found.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// What is wrong with one pack, and which snapshots it hurts.
#[derive(Default)]
struct PackTrouble {
    problems: Vec<String>,
    affected: BTreeSet<SnapshotId>,
    items: BTreeSet<AffectedItem>,
    more_items: u64,
}

impl Repository {
    /// Verifies the repository, never stopping at the first problem.
    ///
    /// Always: every index file parses and matches its name; every indexed pack exists with
    /// the size the index gives; every snapshot parses, its item list is readable, and every
    /// blob of the list and of each item's content is in the index. With
    /// [`CheckOptions::read_data`]: every indexed pack is read whole and every blob in it
    /// decompressed and re-hashed; each damaged pack is named with the snapshots it affects.
    ///
    /// Reads the index afresh from the repository (not from this handle's cache).
    ///
    /// # Errors
    /// Only if listing the repository fails ([`Error::Backend`]); damaged objects are
    /// reported in [`CheckReport::errors`].
    pub async fn check(&self, opts: CheckOptions) -> Result<CheckReport> {
        let inner = &self.inner;
        let mut report = CheckReport::default();

        let mut on_disk: IdMap<PackId, u64> = IdMap::default();
        for (name, size) in inner.list_names("data").await? {
            match name.parse::<PackId>() {
                Ok(id) => {
                    on_disk.insert(id, size);
                }
                Err(_) => tracing::warn!(object = %name, "ignoring non-pack object under data/"),
            }
        }

        // Index, from the repository.
        let mut index = Index::default();
        let index_ids: Vec<IndexId> = inner
            .list_names("index")
            .await?
            .into_iter()
            .filter_map(|(name, _)| name.parse().ok())
            .collect();
        let loaded: Vec<(IndexId, Result<Vec<index::IndexPack>>)> =
            futures::stream::iter(index_ids)
                .map(|id| async move { (id, inner.read_index_file(id).await) })
                .buffer_unordered(8)
                .collect()
                .await;
        for (id, packs) in loaded {
            match packs {
                Ok(packs) => {
                    for p in &packs {
                        index.add_pack(p);
                    }
                    index.mark_file(id);
                }
                Err(e) => report.errors.push(CheckProblem {
                    object: index::index_path(&id).to_string(),
                    problem: e.cause(),
                    affected_snapshots: Vec::new(),
                    ..Default::default()
                }),
            }
        }

        // Packs: present, right size.
        let mut troubles: BTreeMap<PackId, PackTrouble> = BTreeMap::new();
        for p in index.packs() {
            match on_disk.get(&p.id) {
                None => troubles
                    .entry(p.id)
                    .or_default()
                    .problems
                    .push(MISSING_PACK.to_owned()),
                Some(&size) if size != p.size => {
                    troubles.entry(p.id).or_default().problems.push(format!(
                        "{size} bytes long, the index says {}: truncated or overwritten",
                        p.size
                    ))
                }
                Some(_) => {}
            }
        }
        report.unindexed_packs = on_disk
            .keys()
            .filter(|id| index.pack(id).is_none())
            .copied()
            .collect();
        report.unindexed_packs.sort();

        // Pack contents.
        let mut damaged: IdSet<BlobId> = IdSet::default();
        let mut packs_read: IdSet<PackId> = IdSet::default();
        report.packs_indexed = index.packs().len() as u64;
        if opts.read_data {
            let by_pack = index.entries_by_pack();
            let chosen = chosen_packs(index.packs().len(), opts.read_data_subset);
            for (n, (info, entries)) in index.packs().iter().zip(by_pack).enumerate() {
                if !chosen[n] || !on_disk.contains_key(&info.id) {
                    continue;
                }
                packs_read.insert(info.id);
                let path = pack_path(&info.id);
                let bytes = match inner.get("pack", &path).await {
                    Ok(b) => b,
                    Err(e) => {
                        troubles
                            .entry(info.id)
                            .or_default()
                            .problems
                            .push(format!("unreadable: {}", e.cause()));
                        damaged.extend(entries.iter().map(|e| e.id));
                        continue;
                    }
                };
                let id = info.id;
                let key = inner.key.clone();
                let codec = inner.codec.clone();
                let (bad, pack_problems, n) = tokio::task::spawn_blocking(move || {
                    verify_pack(&codec, &key, &id, &bytes, &entries)
                })
                .await
                .map_err(Error::join)?;
                report.packs_checked += 1;
                report.blobs_checked += n;
                if !bad.is_empty() || !pack_problems.is_empty() {
                    let trouble = troubles.entry(info.id).or_default();
                    trouble.problems.extend(pack_problems);
                    if !bad.is_empty() {
                        let first: Vec<&str> =
                            bad.iter().take(3).map(|(_, d)| d.as_str()).collect();
                        trouble.problems.push(format!(
                            "{} of {n} blobs damaged ({}{})",
                            bad.len(),
                            first.join("; "),
                            if bad.len() > 3 { "; …" } else { "" }
                        ));
                    }
                    damaged.extend(bad.into_iter().map(|(id, _)| id));
                }
            }
        }

        // Snapshots.
        let mut referenced: IdSet<BlobId> = IdSet::default();
        for id in inner.snapshot_ids().await? {
            let object = snapshot_path(&id).to_string();
            let snapshot = match inner.load_snapshot(id).await {
                Ok(s) => s,
                Err(e) => {
                    report.snapshots_unreadable += 1;
                    report.errors.push(CheckProblem {
                        object,
                        problem: e.cause(),
                        affected_snapshots: vec![id],
                        ..Default::default()
                    });
                    continue;
                }
            };
            let mut missing: Vec<BlobId> = Vec::new();
            // Marks the snapshot as affected by each troubled pack `content` needs; returns
            // those packs.
            let mut visit = |content: &ContentRef,
                             troubles: &mut BTreeMap<PackId, PackTrouble>,
                             missing: &mut Vec<BlobId>|
             -> Vec<PackId> {
                let mut hit = Vec::new();
                for blob in &content.blobs {
                    referenced.insert(*blob);
                    match index.get(blob) {
                        None => missing.push(*blob),
                        Some(loc) => {
                            // A missing or truncated pack not read blob by blob: assume the
                            // worst for every blob in it.
                            let affected = damaged.contains(blob)
                                || (troubles.contains_key(&loc.pack.id)
                                    && !packs_read.contains(&loc.pack.id));
                            if affected {
                                troubles.entry(loc.pack.id).or_default().affected.insert(id);
                                if !hit.contains(&loc.pack.id) {
                                    hit.push(loc.pack.id);
                                }
                            }
                        }
                    }
                }
                hit
            };
            visit(&snapshot.tree, &mut troubles, &mut missing);
            let tree_indexed = missing.is_empty();
            match read_items(self, &index, &snapshot).await {
                // Reported below with the blobs missing from the index.
                Err(Error::BlobNotIndexed { .. }) if !tree_indexed => {
                    report.snapshots_unreadable += 1;
                }
                Ok(items) => {
                    report.snapshots_checked += 1;
                    for item in &items {
                        let Some(content) = &item.content else {
                            continue;
                        };
                        for pack in visit(content, &mut troubles, &mut missing) {
                            let t = troubles.entry(pack).or_default();
                            if t.items.len() < MAX_AFFECTED_ITEMS {
                                t.items.insert(AffectedItem {
                                    snapshot: id,
                                    path: item.path.clone(),
                                });
                            } else {
                                t.more_items += 1;
                            }
                        }
                    }
                }
                Err(e) => {
                    report.snapshots_unreadable += 1;
                    report.errors.push(CheckProblem {
                        object: object.clone(),
                        problem: format!("item list unreadable: {}", e.cause()),
                        affected_snapshots: vec![id],
                        ..Default::default()
                    });
                }
            }
            if !missing.is_empty() {
                missing.sort();
                missing.dedup();
                let hint = if report.unindexed_packs.is_empty() {
                    "their data is lost (a repair left damaged blobs out, or a pack was lost): restore these items \
                     from another snapshot; the next backup stores them again if Microsoft 365 still has them; \
                     remove this snapshot with `m365bk forget --snapshot ID` once you no longer need it (prune waits until then)"
                        .to_owned()
                } else {
                    format!(
                        "{} pack(s) in data/ are in no index file either: if an index file was lost, \
                         `m365bk repair index` re-indexes what in them verifies; what is still missing after a \
                         repair is lost (the next backup stores it again if Microsoft 365 still has it; \
                         `m365bk forget --snapshot ID` removes a snapshot you no longer need)",
                        report.unindexed_packs.len()
                    )
                };
                let what = if tree_indexed {
                    ""
                } else {
                    " (its item list among them, so its items cannot be listed)"
                };
                report.errors.push(CheckProblem {
                    object,
                    problem: format!(
                        "{} blob(s) it refers to are in no index file{what} (first: {}): {hint}",
                        missing.len(),
                        missing[0]
                    ),
                    affected_snapshots: vec![id],
                    ..Default::default()
                });
            }
        }
        if !opts.read_data {
            report.blobs_checked = referenced.len() as u64;
        }

        for (id, trouble) in troubles {
            if trouble.problems.is_empty() {
                continue;
            }
            let what = if trouble.affected.is_empty() && report.snapshots_unreadable > 0 {
                format!(
                    "no readable snapshot refers to its damaged blobs, but {} snapshot(s) could not be read \
                     (their own problems are listed) and may; prune removes the pack once those are dealt with",
                    report.snapshots_unreadable
                )
            } else if trouble.affected.is_empty() {
                "no snapshot refers to its damaged blobs; `m365bk repair index` moves its sound blobs \
                 into a new pack and drops it from the index, and the next prune deletes it"
                    .to_owned()
            } else {
                let items = trouble.items.len() as u64 + trouble.more_items;
                let who = if items > 0 {
                    format!(
                        "{items} item(s) in {} snapshot(s) are affected (listed with this problem)",
                        trouble.affected.len()
                    )
                } else {
                    format!(
                        "{} snapshot(s) are affected (their items could not be listed)",
                        trouble.affected.len()
                    )
                };
                format!(
                    "{who}; run `m365bk repair index` so that the next backup stores their content again \
                     (until then a backup deduplicates against the damaged blobs); restore what Microsoft 365 \
                     no longer has from a snapshot this check does not list, if one holds it"
                )
            };
            let state = if trouble.problems.iter().any(|p| p == MISSING_PACK) {
                "missing"
            } else {
                "damaged"
            };
            report.errors.push(CheckProblem {
                object: pack_path(&id).to_string(),
                problem: format!("pack is {state}: {}; {what}", trouble.problems.join("; ")),
                affected_snapshots: trouble.affected.into_iter().collect(),
                affected_items: trouble.items.into_iter().collect(),
                more_affected_items: trouble.more_items,
            });
        }
        tracing::info!(
            errors = report.errors.len(),
            packs = report.packs_checked,
            blobs = report.blobs_checked,
            snapshots = report.snapshots_checked,
            "check finished"
        );
        Ok(report)
    }
}

/// Reads a snapshot's item list through `index` (not the repository's cache).
pub(crate) async fn read_items(
    repo: &Repository,
    index: &Index,
    snapshot: &Snapshot,
) -> Result<Vec<crate::Item>> {
    let inner = &repo.inner;
    let mut parser = ItemParser::new(snapshot);
    let located: Vec<_> = snapshot
        .tree
        .blobs
        .iter()
        .map(|id| index.get(id).ok_or(Error::BlobNotIndexed { id: *id }))
        .collect::<Result<_>>()?;
    let mut blobs = futures::stream::iter(located)
        .map(|loc| fetch_blob(&*inner.store, &inner.codec, &inner.key, loc))
        .buffered(4);
    while let Some(bytes) = blobs.try_next().await? {
        parser.push(&bytes)?;
    }
    parser.finish()
}

/// Checks one whole pack against its index entries. Returns the damaged blobs (with what is
/// wrong), problems with the pack as a whole, and the number of blobs checked.
fn verify_pack(
    codec: &Codec,
    key: &[u8; 32],
    id: &PackId,
    bytes: &bytes::Bytes,
    entries: &[BlobEntry],
) -> (Vec<(BlobId, String)>, Vec<String>, u64) {
    let mut pack_problems = Vec::new();
    if blake3::hash(bytes).as_bytes() != id.as_bytes() {
        pack_problems.push("content does not hash to its name".to_owned());
    }
    match pack::parse_pack(codec, id, bytes) {
        Ok(listed) => {
            let listed: IdMap<BlobId, BlobEntry> = listed.into_iter().map(|e| (e.id, e)).collect();
            let disagree = entries
                .iter()
                .filter(|e| listed.get(&e.id) != Some(e))
                .count();
            if disagree > 0 {
                pack_problems.push(format!(
                    "its trailer disagrees with the index for {disagree} blob(s)"
                ));
            }
        }
        Err(Error::CorruptObject { detail, .. }) => pack_problems.push(detail),
        Err(e) => pack_problems.push(e.cause()),
    }
    let mut bad = Vec::new();
    for entry in entries {
        let range = entry.range();
        if range.end > bytes.len() as u64 {
            bad.push((
                entry.id,
                format!("blob {} lies beyond the end of the pack", entry.id),
            ));
            continue;
        }
        let stored = bytes.slice(range.start as usize..range.end as usize);
        if let Err(detail) = blob::decode(
            key,
            codec,
            &entry.id,
            stored,
            entry.compression,
            entry.raw_len,
        ) {
            bad.push((entry.id, detail));
        }
    }
    (bad, pack_problems, entries.len() as u64)
}

/// Which of `n` packs to read: all, or a random `percent` of them (at least one when there is
/// any), as a mask indexed like the packs.
fn chosen_packs(n: usize, percent: Option<u8>) -> Vec<bool> {
    use rand::seq::SliceRandom;
    let Some(percent) = percent else {
        return vec![true; n];
    };
    let take = (n * usize::from(percent.clamp(1, 100))).div_ceil(100);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rng());
    let mut mask = vec![false; n];
    for i in order.into_iter().take(take) {
        mask[i] = true;
    }
    mask
}
