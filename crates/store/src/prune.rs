//! `prune`: delete the data no snapshot refers to, and repack sparse packs.
//!
//! Under the exclusive lock, prune reads every index file and every snapshot (its item list
//! and the content of every item) to find the blobs in use. Then, per indexed pack:
//!
//! - no blob in use → delete the pack;
//! - more than [`PruneOptions::max_unused_percent`] of its bytes unused → *repack*: copy its
//!   used blobs (their stored bytes, verified against their ids first; nothing is re-encrypted)
//!   into new packs, and delete it;
//! - otherwise keep it as it is.
//!
//! Packs in `data/` that no index file lists (left by interrupted backups) are deleted too.
//!
//! The writes and deletes happen in an order that keeps the repository whole at every step,
//! so a crash anywhere leaves at most orphan packs (`check` lists them; the next prune
//! deletes them):
//!
//! 1. upload the new packs;
//! 2. write new index files listing the kept packs and the new ones;
//! 3. delete every index file that existed before (all of them are superseded);
//! 4. delete the packs that are no longer indexed.
//!
//! Until step 3 every old index file still lists packs that are all still there; from step 3
//! on, the new index files alone cover every blob in use.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::blob::{self, EncodedBlob};
use crate::error::{Error, Result};
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId};
use crate::index::{self, Index, IndexPack};
use crate::lock::{LockKind, LockOptions, RepoLock};
use crate::pack::{pack_path, PackBuilder};
use crate::repository::Repository;

/// Default for [`PruneOptions::max_unused_percent`]: a pack is repacked once more than half
/// of it is unused, so repacking never writes more bytes than it frees.
pub const DEFAULT_MAX_UNUSED_PERCENT: f64 = 50.0;
/// Packs listed per new index file.
const PACKS_PER_INDEX_FILE: usize = 2048;
/// Concurrent deletes.
const DELETE_CONCURRENCY: usize = 8;

/// How to prune.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PruneOptions {
    /// Repack a pack when more than this share of its bytes (0–100) belongs to unused blobs.
    /// 0 repacks every pack with any unused blob; 100 never repacks (only wholly unused packs
    /// are deleted).
    pub max_unused_percent: f64,
    /// Only compute and report; write and delete nothing.
    pub dry_run: bool,
    /// Dry runs only: count these snapshots as already forgotten, to predict what a prune
    /// after a `forget` would free (`forget --prune --dry-run`). A real prune with any is
    /// refused ([`Error::PruneRefused`]): it would delete data snapshots still use.
    pub assume_forgotten: Vec<crate::SnapshotId>,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            assume_forgotten: Vec::new(),
            max_unused_percent: DEFAULT_MAX_UNUSED_PERCENT,
            dry_run: false,
        }
    }
}

/// What prune found and did. Sizes in bytes, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    /// True if nothing was written or deleted.
    pub dry_run: bool,
    /// Snapshots whose blobs were kept.
    pub snapshots: u64,
    /// Distinct blobs in use.
    pub blobs_used: u64,
    /// Indexed blobs no snapshot uses (all their copies).
    pub blobs_unused: u64,
    /// Packs kept as they are.
    pub packs_kept: u64,
    /// Indexed packs deleted because no blob in them is used.
    pub packs_deleted: u64,
    /// Packs whose used blobs were copied into new packs, then deleted.
    pub packs_repacked: u64,
    /// Packs in `data/` listed in no index file, deleted.
    pub unindexed_packs_deleted: u64,
    /// New packs written by repacking.
    pub packs_written: u64,
    /// Index files deleted (superseded).
    pub index_files_deleted: u64,
    /// Index files written.
    pub index_files_written: u64,
    /// Bytes of packs and index files before.
    pub bytes_before: u64,
    /// Bytes of packs and index files after (in a dry run: an estimate).
    pub bytes_after: u64,
    /// `bytes_before - bytes_after`.
    pub bytes_freed: u64,
}

/// One indexed pack and what prune does with it.
struct PackPlan {
    info: IndexPack,
    on_disk: bool,
    used_bytes: u64,
    used: Vec<crate::pack::BlobEntry>,
    action: Action,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Action {
    Keep,
    Delete,
    Repack,
}

/// What [`Repository::replace_index_files`] did.
pub(crate) struct IndexReplaced {
    /// Index files written.
    pub written: u64,
    /// Their bytes.
    pub bytes_written: u64,
    /// Old index files deleted.
    pub deleted: u64,
}

impl Repository {
    /// Prunes the repository under an exclusive [`LockKind::Prune`] lock, waiting for it as
    /// `lock` says (a dry run takes the same lock, so its numbers are exact). See the `prune`
    /// section of `docs/repository-format.md` for the order of writes.
    ///
    /// # Errors
    /// [`Error::RepositoryLocked`] while backups, restores or checks hold their locks;
    /// [`Error::PruneRefused`] before deleting anything if an index file or snapshot is
    /// unreadable, a blob in use is in no index file or its pack is missing, or a blob to be
    /// repacked fails verification; [`Error::LockLost`]; [`Error::Backend`].
    pub async fn prune(&self, opts: &PruneOptions, lock: &LockOptions) -> Result<PruneReport> {
        let held = self.lock(LockKind::Prune, lock).await?;
        let result = self.prune_locked(opts, &held).await;
        held.release().await;
        result
    }

    async fn prune_locked(&self, opts: &PruneOptions, held: &RepoLock) -> Result<PruneReport> {
        let inner = &self.inner;
        let refuse = |detail: String| Error::PruneRefused { detail };
        if !opts.dry_run && !opts.assume_forgotten.is_empty() {
            return Err(refuse(
                "snapshots can be assumed forgotten only in a dry run; forget them first".into(),
            ));
        }
        let mut report = PruneReport {
            dry_run: opts.dry_run,
            ..PruneReport::default()
        };

        // Everything in data/ and index/.
        let mut on_disk: IdMap<PackId, u64> = IdMap::default();
        for (name, size) in inner.list_names("data").await? {
            if let Ok(id) = name.parse::<PackId>() {
                on_disk.insert(id, size);
                report.bytes_before += size;
            }
        }
        let mut index_files: Vec<IndexId> = Vec::new();
        for (name, size) in inner.list_names("index").await? {
            if let Ok(id) = name.parse::<IndexId>() {
                index_files.push(id);
                report.bytes_before += size;
            }
        }
        let index_bytes_before = report.bytes_before - on_disk.values().sum::<u64>();

        // Every index file, as written (a pack listed twice keeps its first listing).
        let loaded: Vec<(IndexId, Result<Vec<IndexPack>>)> =
            futures::stream::iter(index_files.clone())
                .map(|id| async move { (id, inner.read_index_file(id).await) })
                .buffer_unordered(8)
                .collect()
                .await;
        let mut index = Index::default();
        let mut listed: IdMap<PackId, IndexPack> = IdMap::default();
        for (id, packs) in loaded {
            let packs = packs.map_err(|e| {
                refuse(format!(
                    "index file {id} is unreadable ({e}); if `m365bk check` confirms the \
                         damage, `m365bk repair index` replaces it"
                ))
            })?;
            for p in packs {
                index.add_pack(&p);
                listed.entry(p.id).or_insert(p);
            }
        }

        // Blobs in use: every snapshot's item list and every item's content.
        let mut used: IdSet<BlobId> = IdSet::default();
        let scan = self.scan_snapshots().await?;
        let unreadable: Vec<_> = scan
            .unreadable
            .iter()
            .filter(|u| !opts.assume_forgotten.contains(&u.id))
            .collect();
        if let Some(bad) = unreadable.first() {
            let others = unreadable.len() - 1;
            return Err(refuse(format!(
                "snapshot {} is unreadable ({}){}, so prune cannot tell which data it still \
                 needs; if `m365bk check` confirms the damage, remove the snapshot with \
                 `m365bk forget --snapshot {}` and prune again",
                bad.id,
                bad.error,
                if others > 0 {
                    format!(", and {others} more")
                } else {
                    String::new()
                },
                bad.id
            )));
        }
        let snapshots: Vec<_> = scan
            .snapshots
            .into_iter()
            .filter(|s| !opts.assume_forgotten.contains(&s.id))
            .collect();
        for snapshot in &snapshots {
            used.extend(snapshot.tree.blobs.iter().copied());
            let items = crate::check::read_items(self, &index, snapshot)
                .await
                .map_err(|e| {
                    refuse(format!(
                        "the item list of snapshot {} is unreadable ({e}); run `m365bk check \
                         --read-data` and `m365bk repair index`, or remove the snapshot with \
                         `m365bk forget --snapshot ID`",
                        snapshot.id
                    ))
                })?;
            for item in items {
                if let Some(content) = item.content {
                    used.extend(content.blobs);
                }
            }
        }
        report.snapshots = snapshots.len() as u64;
        report.blobs_used = used.len() as u64;

        // Where each used blob is kept: its location in the merged index.
        let mut plans: BTreeMap<PackId, PackPlan> = listed
            .into_values()
            .map(|info| {
                let on_disk = on_disk.get(&info.id) == Some(&info.size);
                (
                    info.id,
                    PackPlan {
                        on_disk,
                        info,
                        used_bytes: 0,
                        used: Vec::new(),
                        action: Action::Keep,
                    },
                )
            })
            .collect();
        for blob in &used {
            let Some(loc) = index.get(blob) else {
                return Err(refuse(format!(
                    "blob {blob} is in use but in no index file (an index file was lost: \
                     `m365bk repair index` re-indexes the packs; or the blob was damaged and \
                     left out by a repair: forget the snapshots `m365bk check` names with \
                     `m365bk forget --snapshot ID`)"
                )));
            };
            let plan = plans.get_mut(&loc.pack.id).expect("indexed pack is listed");
            if !plan.on_disk {
                return Err(refuse(format!(
                    "pack {} holds blobs in use but is missing or has the wrong size \
                     (`m365bk repair index` drops what is lost from the index, so the next \
                     backup stores it again)",
                    pack_path(&loc.pack.id)
                )));
            }
            plan.used_bytes += u64::from(loc.entry.stored_len);
            plan.used.push(loc.entry);
        }
        let mut all_blobs: IdSet<BlobId> = IdSet::default();
        for plan in plans.values_mut() {
            all_blobs.extend(plan.info.blobs.iter().map(|b| b.id));
            // Shares of the blobs' bytes: a pack's header and trailer are neither used nor
            // unused (counting them as unused made `--max-unused 0` repack full packs).
            let blob_bytes: u64 = plan
                .info
                .blobs
                .iter()
                .map(|b| u64::from(b.stored_len))
                .sum();
            let unused_percent = if blob_bytes == 0 {
                100.0
            } else {
                100.0 * blob_bytes.saturating_sub(plan.used_bytes) as f64 / blob_bytes as f64
            };
            plan.action = if plan.used.is_empty() {
                Action::Delete
            } else if unused_percent > opts.max_unused_percent {
                Action::Repack
            } else {
                Action::Keep
            };
            plan.used.sort_by_key(|e| e.offset);
        }
        report.blobs_unused = all_blobs.iter().filter(|b| !used.contains(b)).count() as u64;
        let unindexed: Vec<(PackId, u64)> = on_disk
            .iter()
            .filter(|(id, _)| !plans.contains_key(id))
            .map(|(id, size)| (*id, *size))
            .collect();
        report.unindexed_packs_deleted = unindexed.len() as u64;
        for plan in plans.values() {
            match plan.action {
                Action::Keep => report.packs_kept += 1,
                Action::Delete => report.packs_deleted += u64::from(plan.on_disk),
                Action::Repack => report.packs_repacked += 1,
            }
        }
        let index_changes = plans.values().any(|p| p.action != Action::Keep);

        if opts.dry_run {
            let freed_packs: u64 = plans
                .values()
                .filter(|p| p.action != Action::Keep && p.on_disk)
                .map(|p| p.info.size)
                .sum::<u64>()
                + unindexed.iter().map(|(_, s)| s).sum::<u64>();
            let repacked: u64 = plans
                .values()
                .filter(|p| p.action == Action::Repack)
                .map(|p| p.used_bytes)
                .sum();
            report.bytes_after = report.bytes_before - freed_packs + repacked;
            report.bytes_freed = report.bytes_before - report.bytes_after;
            return Ok(report);
        }

        // 1. Repack.
        let mut new_packs: Vec<IndexPack> = Vec::new();
        let mut builder = PackBuilder::default();
        let target = inner.config.pack_target_size;
        for plan in plans.values().filter(|p| p.action == Action::Repack) {
            let path = pack_path(&plan.info.id);
            let bytes = inner.get("pack", &path).await.map_err(|e| {
                refuse(format!(
                    "pack {path} to repack is unreadable ({e}); run `m365bk check \
                         --read-data`, then `m365bk repair index`"
                ))
            })?;
            let key = inner.key.clone();
            let codec = inner.codec.clone();
            let entries = plan.used.clone();
            let blobs = tokio::task::spawn_blocking(move || {
                entries
                    .into_iter()
                    .map(|e| {
                        let range = e.range();
                        if range.end > bytes.len() as u64 {
                            return Err(format!("blob {} lies beyond its end", e.id));
                        }
                        let stored = bytes.slice(range.start as usize..range.end as usize);
                        blob::decode(
                            &key,
                            &codec,
                            &e.id,
                            stored.clone(),
                            e.compression,
                            e.raw_len,
                        )?;
                        Ok(EncodedBlob {
                            id: e.id,
                            raw_len: e.raw_len,
                            compression: e.compression,
                            data: stored,
                        })
                    })
                    .collect::<std::result::Result<Vec<_>, String>>()
            })
            .await
            .map_err(Error::join)?
            .map_err(|detail| {
                refuse(format!(
                    "pack {path} is damaged: {detail} (`m365bk repair index` drops the damaged \
                     blobs from the index, so the next backup stores them again)"
                ))
            })?;
            for b in blobs {
                builder.add(b);
                if builder.len() >= target {
                    new_packs.push(self.upload_pack(std::mem::take(&mut builder)).await?);
                }
            }
        }
        if !builder.is_empty() {
            new_packs.push(self.upload_pack(builder).await?);
        }
        report.packs_written = new_packs.len() as u64;

        // 2. New index files: kept packs as they were listed, plus the new packs.
        let mut written_index_bytes = 0u64;
        if index_changes {
            let mut keep: Vec<IndexPack> = plans
                .values()
                .filter(|p| p.action == Action::Keep)
                .map(|p| p.info.clone())
                .collect();
            keep.extend(new_packs.iter().cloned());
            // 3. Old index files.
            let replaced = self.replace_index_files(&keep, &index_files, held).await?;
            written_index_bytes = replaced.bytes_written;
            report.index_files_written = replaced.written;
            report.index_files_deleted = replaced.deleted;
        }

        // 4. Packs no index lists any more.
        held.ensure_valid(held.ttl() / 2)?;
        let mut doomed: Vec<Path> = unindexed.iter().map(|(id, _)| pack_path(id)).collect();
        if index_changes {
            doomed.extend(
                plans
                    .values()
                    .filter(|p| p.action != Action::Keep && p.on_disk)
                    .map(|p| pack_path(&p.info.id)),
            );
        }
        // A repacked pack can have the name of an orphan (in a plaintext repository, repacking
        // the same blobs again after a crash gives the same bytes): never delete a pack the
        // new index lists.
        let listed_now: IdSet<PackId> = new_packs.iter().map(|p| p.id).collect();
        doomed.retain(|path| {
            path.filename()
                .and_then(|name| name.parse::<PackId>().ok())
                .is_none_or(|id| !listed_now.contains(&id))
        });
        self.delete_all(doomed).await?;

        // This handle's index: the refresh sees the superseded index files gone and rebuilds.
        inner.refresh_index().await?;

        let kept_bytes: u64 = plans
            .values()
            .filter(|p| p.action == Action::Keep || !index_changes)
            .filter(|p| p.on_disk)
            .map(|p| p.info.size)
            .sum();
        let new_pack_bytes: u64 = new_packs.iter().map(|p| p.size).sum();
        let index_after = if index_changes {
            written_index_bytes
        } else {
            index_bytes_before
        };
        report.bytes_after = kept_bytes + new_pack_bytes + index_after;
        report.bytes_freed = report.bytes_before.saturating_sub(report.bytes_after);
        tracing::info!(
            packs_deleted = report.packs_deleted,
            packs_repacked = report.packs_repacked,
            unindexed_packs_deleted = report.unindexed_packs_deleted,
            bytes_freed = report.bytes_freed,
            "prune finished"
        );
        Ok(report)
    }

    /// Replaces the index: writes `packs` as new index files of at most
    /// [`PACKS_PER_INDEX_FILE`] packs each, then deletes the index files `old` (those read
    /// before), checking before each write and the deletes that `held` is still valid. A crash
    /// in between leaves old and new entries side by side, which readers merge.
    pub(crate) async fn replace_index_files(
        &self,
        packs: &[IndexPack],
        old: &[IndexId],
        held: &RepoLock,
    ) -> Result<IndexReplaced> {
        let inner = &self.inner;
        let mut written: IdSet<IndexId> = IdSet::default();
        let mut bytes_written = 0u64;
        for chunk in packs.chunks(PACKS_PER_INDEX_FILE) {
            let codec = inner.codec.clone();
            let level = inner.config.compression.level;
            let chunk = chunk.to_vec();
            let (id, bytes) =
                tokio::task::spawn_blocking(move || index::encode_index(&codec, &chunk, level))
                    .await
                    .map_err(Error::join)??;
            held.ensure_valid(held.ttl() / 2)?;
            bytes_written += bytes.len() as u64;
            inner
                .put_new(&index::index_path(&id), PutPayload::from(bytes))
                .await?;
            written.insert(id);
        }
        held.ensure_valid(held.ttl() / 2)?;
        // In a plaintext repository, a run that repeats one interrupted after its writes
        // writes the same bytes, so a "new" index file can be an old one: keep it.
        let doomed: Vec<Path> = old
            .iter()
            .filter(|id| !written.contains(id))
            .map(index::index_path)
            .collect();
        let deleted = doomed.len() as u64;
        self.delete_all(doomed).await?;
        Ok(IndexReplaced {
            written: written.len() as u64,
            bytes_written,
            deleted,
        })
    }

    /// Seals `builder` and writes it as a new pack (prune's repack, repair's salvage).
    pub(crate) async fn upload_pack(&self, builder: PackBuilder) -> Result<IndexPack> {
        let codec = self.inner.codec.clone();
        let sealed = tokio::task::spawn_blocking(move || builder.seal(&codec))
            .await
            .map_err(Error::join)?;
        let parts: Vec<Bytes> = sealed.parts;
        self.inner
            .put_new(&pack_path(&sealed.id), PutPayload::from_iter(parts))
            .await?;
        tracing::debug!(pack = %sealed.id, bytes = sealed.size, "repacked pack written");
        Ok(IndexPack {
            id: sealed.id,
            size: sealed.size,
            blobs: sealed.entries,
        })
    }

    /// Deletes `paths` (one already gone counts as deleted).
    pub(crate) async fn delete_all(&self, paths: Vec<Path>) -> Result<()> {
        let store = &self.inner.store;
        futures::stream::iter(paths)
            .map(|path| async move {
                match store.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(Error::backend("delete", path.to_string())(e)),
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::CheckOptions;
    use crate::forget::ForgetOptions;
    use crate::repository::{Encryption, InitOptions};
    use crate::snapshot::{ContentRef, Item, Snapshot, SnapshotDraft};
    use crate::KdfParams;

    /// Deterministic incompressible bytes.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    async fn repo(encrypted: bool) -> (tempfile::TempDir, Repository) {
        let dir = tempfile::tempdir().unwrap();
        let opts = if encrypted {
            InitOptions {
                encryption: Encryption::Passphrase("prune test".into()),
                kdf: KdfParams {
                    memory_kib: 64,
                    iterations: 1,
                    parallelism: 1,
                },
                cipher: Default::default(),
            }
        } else {
            InitOptions::no_encryption()
        };
        let repo = Repository::init(dir.path().to_str().unwrap(), opts)
            .await
            .unwrap();
        (dir, repo)
    }

    /// One backup session committing one snapshot of `resource` with the given items.
    async fn backup(repo: &Repository, resource: &str, items: &[(&str, Vec<u8>)]) -> Snapshot {
        let writer = repo.begin_backup().await.unwrap();
        let mut list = Vec::new();
        for (name, data) in items {
            let mut w = writer.content_writer();
            w.write(data).await.unwrap();
            let content = w.finish().await.unwrap();
            list.push(Item {
                kind: "file".into(),
                id: (*name).into(),
                parent_id: None,
                path: (*name).into(),
                change_key: None,
                size: data.len() as u64,
                modified: None,
                metadata: serde_json::Value::Null,
                content: Some(content),
            });
        }
        let s = writer
            .commit_snapshot(SnapshotDraft {
                service: "onedrive".into(),
                resource_id: resource.into(),
                resource_name: resource.into(),
                items: list,
                ..Default::default()
            })
            .await
            .unwrap();
        writer.finish().await.unwrap();
        // Distinct snapshot times for forget's ordering.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        s
    }

    async fn read(repo: &Repository, c: &ContentRef) -> Vec<u8> {
        let parts: Vec<Bytes> = repo.read_content(c).try_collect().await.unwrap();
        parts.concat()
    }

    /// Every remaining snapshot reads back exactly as `expected` (path → bytes).
    async fn assert_restores(repo: &Repository, expected: &BTreeMap<(String, String), Vec<u8>>) {
        let fresh = Repository::open(repo.location(), repo_passphrase(repo))
            .await
            .unwrap();
        for s in fresh.list_snapshots().await.unwrap() {
            for item in fresh.load_items(&s).await.unwrap() {
                let want = &expected[&(s.resource_id.clone(), item.path.clone())];
                let got = read(&fresh, item.content.as_ref().unwrap()).await;
                assert!(
                    got == *want,
                    "{}/{} differs after prune",
                    s.resource_id,
                    item.path
                );
            }
        }
    }

    fn repo_passphrase(repo: &Repository) -> Option<crate::SecretString> {
        repo.inner
            .codec
            .is_sealed()
            .then(|| crate::SecretString::from("prune test"))
    }

    fn count(dir: &tempfile::TempDir, sub: &str) -> usize {
        fn walk(p: &std::path::Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.map(|e| {
                        let e = e.unwrap();
                        if e.file_type().unwrap().is_dir() {
                            walk(&e.path())
                        } else {
                            usize::from(!e.file_name().to_string_lossy().contains('#'))
                        }
                    })
                    .sum()
                })
                .unwrap_or(0)
        }
        walk(&dir.path().join(sub))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_after_forget_frees_space_repacks_and_everything_left_restores() {
        for encrypted in [false, true] {
            let (dir, repo) = repo(encrypted).await;
            let a = noise(1, 300_000);
            let b = noise(2, 2_000_000);
            let c = noise(3, 1_000_000);
            let d = noise(4, 500_000);
            let mut expected = BTreeMap::new();
            for (r, p, data) in [
                ("r1", "a", &a),
                ("r1", "b", &b),
                ("r1", "c", &c),
                ("r2", "d", &d),
            ] {
                expected.insert((r.to_owned(), p.to_owned()), data.clone());
            }
            let s1 = backup(
                &repo,
                "r1",
                &[("a", a.clone()), ("b", b.clone()), ("c", c.clone())],
            )
            .await;
            let s2 = backup(&repo, "r1", &[("a", a.clone())]).await;
            let s3 = backup(&repo, "r2", &[("d", d.clone())]).await;
            assert_eq!(count(&dir, "data"), 3);

            // `forget --prune --dry-run`: a dry prune that assumes s1 forgotten predicts what
            // the prune after the real forget does; a real prune may not assume anything.
            let assume = PruneOptions {
                dry_run: true,
                assume_forgotten: vec![s1.id],
                ..PruneOptions::default()
            };
            let predicted = repo.prune(&assume, &LockOptions::default()).await.unwrap();
            let refused = repo
                .prune(
                    &PruneOptions {
                        dry_run: false,
                        ..assume.clone()
                    },
                    &LockOptions::default(),
                )
                .await
                .unwrap_err();
            assert!(matches!(refused, Error::PruneRefused { .. }), "{refused}");

            let forget = ForgetOptions {
                keep_last: 1,
                ..Default::default()
            };
            let report = repo
                .forget(&forget, false, &LockOptions::default())
                .await
                .unwrap();
            assert_eq!(report.plan.to_remove(), vec![s1.id]);
            assert_eq!(report.removed, 1);

            let before = repo.stats().await.unwrap();
            let dry = repo
                .prune(
                    &PruneOptions {
                        dry_run: true,
                        ..PruneOptions::default()
                    },
                    &LockOptions::default(),
                )
                .await
                .unwrap();
            assert_eq!(predicted, dry, "the assumed-forgotten dry run predicted it");
            assert!(dry.dry_run);
            assert_eq!(dry.packs_repacked, 1, "{dry:?}");
            assert_eq!(
                repo.stats().await.unwrap().pack_bytes,
                before.pack_bytes,
                "dry run changes nothing"
            );

            let pruned = repo
                .prune(&PruneOptions::default(), &LockOptions::default())
                .await
                .unwrap();
            assert_eq!(pruned.snapshots, 2);
            assert_eq!(pruned.packs_repacked, 1, "{pruned:?}");
            assert_eq!(pruned.packs_written, 1);
            assert_eq!(pruned.packs_kept, 2);
            assert_eq!(pruned.packs_deleted, 0);
            assert!(pruned.bytes_freed > 2_900_000, "{pruned:?}");
            let after = repo.stats().await.unwrap();
            assert!(
                before.total_bytes - after.total_bytes >= pruned.bytes_freed - 1024,
                "stats agree with the report: {before:?} → {after:?}, {pruned:?}"
            );
            assert!(after.pack_bytes < 900_000, "{after:?}");
            assert_eq!(
                dry.bytes_freed / 10_000,
                pruned.bytes_freed / 10_000,
                "dry run estimate"
            );

            let check = repo.check(CheckOptions::read_data()).await.unwrap();
            assert!(check.is_ok(), "{:?}", check.errors);
            assert!(check.unindexed_packs.is_empty());
            assert_eq!(check.snapshots_checked, 2);
            expected.remove(&("r1".to_owned(), "b".to_owned()));
            expected.remove(&("r1".to_owned(), "c".to_owned()));
            assert_restores(&repo, &expected).await;
            let ids: Vec<_> = repo
                .list_snapshots()
                .await
                .unwrap()
                .iter()
                .map(|s| s.id)
                .collect();
            assert_eq!(ids, vec![s2.id, s3.id]);

            // Nothing left to do: a second prune changes nothing.
            let again = repo
                .prune(&PruneOptions::default(), &LockOptions::default())
                .await
                .unwrap();
            assert_eq!(again.bytes_freed, 0, "{again:?}");
            assert_eq!(again.index_files_written, 0);

            // Forget everything of r2 but keep r1; the r2 pack is deleted whole.
            let only_r1 = ForgetOptions {
                keep_last: 1,
                tags: vec!["none".into()],
                ..Default::default()
            };
            assert!(repo
                .forget(&only_r1, false, &LockOptions::default())
                .await
                .unwrap()
                .plan
                .groups
                .is_empty());
            repo.inner
                .store
                .delete(&crate::snapshot::snapshot_path(&s3.id))
                .await
                .unwrap();
            let third = repo
                .prune(&PruneOptions::default(), &LockOptions::default())
                .await
                .unwrap();
            assert_eq!(third.packs_deleted, 1, "{third:?}");
            assert!(third.bytes_freed >= 500_000);
            let check = repo.check(CheckOptions::read_data()).await.unwrap();
            assert!(check.is_ok(), "{:?}", check.errors);
            expected.remove(&("r2".to_owned(), "d".to_owned()));
            assert_restores(&repo, &expected).await;
        }
    }

    /// Random sharing between snapshots, random forgets, every threshold: whatever prune
    /// deletes, every blob a remaining snapshot refers to is still readable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prune_keeps_every_referenced_blob() {
        for seed in 0..4u64 {
            let (_dir, repo) = repo(false).await;
            let pool: Vec<Vec<u8>> = (0..12)
                .map(|i| noise(seed * 100 + i, 70_000 + 9_000 * i as usize))
                .collect();
            let mut expected = BTreeMap::new();
            let mut snapshots = Vec::new();
            for s in 0..6u64 {
                let resource = format!("r{}", s % 2);
                let items: Vec<(String, Vec<u8>)> = (0..12u64)
                    .filter(|i| !(seed + s * 7 + i * 3).is_multiple_of(4))
                    .map(|i| (format!("f{i}"), pool[i as usize].clone()))
                    .collect();
                for (p, data) in &items {
                    expected.insert((resource.clone(), p.clone()), data.clone());
                }
                let refs: Vec<(&str, Vec<u8>)> =
                    items.iter().map(|(p, d)| (p.as_str(), d.clone())).collect();
                snapshots.push(backup(&repo, &resource, &refs).await);
            }
            // Forget a seed-dependent subset.
            for (i, s) in snapshots.iter().enumerate() {
                if (i as u64 + seed).is_multiple_of(3) {
                    repo.inner
                        .store
                        .delete(&crate::snapshot::snapshot_path(&s.id))
                        .await
                        .unwrap();
                }
            }
            let max_unused_percent = [0.0, 30.0, 50.0, 100.0][seed as usize];
            let report = repo
                .prune(
                    &PruneOptions {
                        max_unused_percent,
                        dry_run: false,
                        ..Default::default()
                    },
                    &LockOptions::default(),
                )
                .await
                .unwrap();
            if report.blobs_unused > 0 && max_unused_percent < 100.0 {
                assert!(report.bytes_freed > 0, "seed {seed}: {report:?}");
            }
            let check = repo.check(CheckOptions::read_data()).await.unwrap();
            assert!(check.is_ok(), "seed {seed}: {:?}", check.errors);
            assert!(check.unindexed_packs.is_empty());
            assert_restores(&repo, &expected).await;
        }
    }

    /// `max_unused_percent` 0 repacks every pack holding an unused blob, and no other: packs
    /// whose blobs are all in use stay, whatever their header and trailer weigh.
    #[tokio::test]
    async fn max_unused_zero_repacks_only_packs_with_unused_blobs() {
        let (_dir, repo) = repo(false).await;
        backup(&repo, "r1", &[("a", noise(1, 300_000))]).await;
        let zero = PruneOptions {
            max_unused_percent: 0.0,
            ..Default::default()
        };
        let report = repo.prune(&zero, &LockOptions::default()).await.unwrap();
        assert_eq!(
            (
                report.blobs_unused,
                report.packs_repacked,
                report.bytes_freed
            ),
            (0, 0, 0),
            "{report:?}"
        );
        // Now one unused blob next to a used one: that pack, and only it, is repacked.
        let gone = backup(
            &repo,
            "r2",
            &[("b", noise(2, 300_000)), ("c", noise(3, 300_000))],
        )
        .await;
        backup(&repo, "r3", &[("b", noise(2, 300_000))]).await;
        repo.inner
            .store
            .delete(&crate::snapshot::snapshot_path(&gone.id))
            .await
            .unwrap();
        let report = repo.prune(&zero, &LockOptions::default()).await.unwrap();
        // c's chunks (one or two: cut points depend on the repository's gear seed) and r2's
        // item list.
        assert!(report.blobs_unused >= 2, "{report:?}");
        assert_eq!(report.packs_repacked, 1, "{report:?}");
        assert!(repo.check(CheckOptions::read_data()).await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn prune_waits_for_or_refuses_a_running_backup() {
        let (_dir, repo) = repo(false).await;
        backup(&repo, "r1", &[("a", noise(9, 100_000))]).await;
        let writer = repo.begin_backup().await.unwrap();
        let err = repo
            .prune(&PruneOptions::default(), &LockOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::RepositoryLocked { holder, .. } if holder.kind == LockKind::Backup),
            "{err}"
        );
        // While prune waits, the backup finishes; then prune runs.
        let finisher = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(400)).await;
            writer.finish().await.unwrap();
        });
        let wait = LockOptions {
            wait: std::time::Duration::from_secs(30),
            ..LockOptions::default()
        };
        repo.prune(&PruneOptions::default(), &wait).await.unwrap();
        finisher.await.unwrap();
        // And a backup cannot start while a prune holds the lock.
        let held = repo
            .lock(LockKind::Prune, &LockOptions::default())
            .await
            .unwrap();
        assert!(matches!(
            repo.begin_backup().await,
            Err(Error::RepositoryLocked { .. })
        ));
        held.release().await;
    }

    #[tokio::test]
    async fn prune_deletes_unindexed_packs_and_refuses_when_an_index_file_is_lost() {
        let (dir, repo) = repo(false).await;
        let a = noise(5, 200_000);
        backup(&repo, "r1", &[("a", a.clone())]).await;
        // A pack no index lists (as an interrupted backup leaves).
        let mut builder = PackBuilder::default();
        let orphan = noise(6, 1000);
        builder.add(blob::encode(
            blob::blob_id(&repo.inner.key, &orphan),
            &orphan,
            3,
            &repo.inner.codec,
        ));
        let orphan_pack = repo.upload_pack(builder).await.unwrap();
        assert_eq!(
            repo.check(CheckOptions::default())
                .await
                .unwrap()
                .unindexed_packs,
            vec![orphan_pack.id]
        );
        let report = repo
            .prune(&PruneOptions::default(), &LockOptions::default())
            .await
            .unwrap();
        assert_eq!(report.unindexed_packs_deleted, 1);
        assert!(repo
            .check(CheckOptions::default())
            .await
            .unwrap()
            .unindexed_packs
            .is_empty());

        // Lose the index file: prune must not treat the snapshot's packs as garbage.
        let index_dir = dir.path().join("index");
        for e in std::fs::read_dir(&index_dir).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let packs_before = count(&dir, "data");
        let err = repo
            .prune(&PruneOptions::default(), &LockOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::PruneRefused { .. }), "{err}");
        assert!(err.to_string().contains("m365bk check"), "{err}");
        assert_eq!(count(&dir, "data"), packs_before, "nothing deleted");
        assert_eq!(count(&dir, "locks"), 0, "the prune lock was released");
    }

    /// A store that "crashes" after `left` more writes or deletes: that one and every later
    /// one fails, as if the process had died there. Reads go through.
    #[derive(Debug)]
    struct CrashAfter {
        inner: std::sync::Arc<dyn object_store::ObjectStore>,
        left: std::sync::Arc<std::sync::atomic::AtomicI64>,
    }

    type Fut<'a, T> =
        std::pin::Pin<Box<dyn std::future::Future<Output = object_store::Result<T>> + Send + 'a>>;

    fn spend(left: &std::sync::atomic::AtomicI64) -> object_store::Result<()> {
        if left.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) <= 0 {
            Err(object_store::Error::Generic {
                store: "crash",
                source: "simulated crash".into(),
            })
        } else {
            Ok(())
        }
    }

    impl std::fmt::Display for CrashAfter {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "CrashAfter({})", self.inner)
        }
    }

    impl object_store::ObjectStore for CrashAfter {
        fn put_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b Path,
            payload: PutPayload,
            opts: object_store::PutOptions,
        ) -> Fut<'c, object_store::PutResult>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async move {
                spend(&self.left)?;
                self.inner.put_opts(location, payload, opts).await
            })
        }

        fn put_multipart_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b Path,
            opts: object_store::PutMultipartOptions,
        ) -> Fut<'c, Box<dyn object_store::MultipartUpload>>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            Box::pin(async move {
                spend(&self.left)?;
                self.inner.put_multipart_opts(location, opts).await
            })
        }

        fn get_opts<'a, 'b, 'c>(
            &'a self,
            location: &'b Path,
            options: object_store::GetOptions,
        ) -> Fut<'c, object_store::GetResult>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.get_opts(location, options)
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<'static, object_store::Result<Path>>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<Path>> {
            let inner = self.inner.clone();
            let left = self.left.clone();
            locations
                .then(move |location| {
                    let inner = inner.clone();
                    let left = left.clone();
                    async move {
                        let location = location?;
                        spend(&left)?;
                        inner.delete(&location).await.map(|()| location)
                    }
                })
                .boxed()
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }

        fn list_with_delimiter<'a, 'b, 'c>(
            &'a self,
            prefix: Option<&'b Path>,
        ) -> Fut<'c, object_store::ListResult>
        where
            'a: 'c,
            'b: 'c,
            Self: 'c,
        {
            self.inner.list_with_delimiter(prefix)
        }

        fn copy_opts<'a, 'b, 'c, 'd>(
            &'a self,
            from: &'b Path,
            to: &'c Path,
            options: object_store::CopyOptions,
        ) -> Fut<'d, ()>
        where
            'a: 'd,
            'b: 'd,
            'c: 'd,
            Self: 'd,
        {
            Box::pin(async move {
                spend(&self.left)?;
                self.inner.copy_opts(from, to, options).await
            })
        }
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }

    /// Runs prune on a copy of `template` whose store fails every write and delete from the
    /// `budget`-th on. Returns the prune's outcome and the copy.
    async fn prune_crashing_after(
        template: &std::path::Path,
        budget: i64,
    ) -> (Result<PruneReport>, tempfile::TempDir, i64) {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template, dir.path());
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let left = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(budget));
        let store = std::sync::Arc::new(CrashAfter {
            inner: std::sync::Arc::new(local),
            left: left.clone(),
        });
        let repo = Repository::open_with_store(store, dir.path().to_str().unwrap(), None)
            .await
            .unwrap();
        let outcome = repo
            .prune(
                &PruneOptions {
                    max_unused_percent: 20.0,
                    dry_run: false,
                    ..Default::default()
                },
                &LockOptions::default(),
            )
            .await;
        finish_releases().await;
        let used = budget - left.load(std::sync::atomic::Ordering::SeqCst);
        (outcome, dir, used)
    }

    async fn finish_releases() {
        crate::lock::finish_lock_releases().await;
    }

    /// A crash at every write or delete of a prune (repack, new index file, old index files,
    /// packs): each time `check --read-data` finds no error, every snapshot restores, and a
    /// later prune finishes the job.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crash_at_any_point_of_prune_leaves_a_sound_repository() {
        let (template, repo) = repo(false).await;
        let a = noise(11, 200_000);
        let b = noise(12, 900_000);
        let c = noise(13, 300_000);
        let s1 = backup(&repo, "r1", &[("a", a.clone()), ("b", b.clone())]).await;
        backup(&repo, "r1", &[("a", a.clone())]).await;
        let s3 = backup(&repo, "r2", &[("c", c.clone())]).await;
        backup(&repo, "r3", &[("c", c.clone())]).await;
        // s1's unique blob b becomes garbage in a pack with a (repack); s3's pack holds only
        // its tree besides c, which r3 uses (kept or repacked); plus an orphan pack.
        for s in [s1.id, s3.id] {
            repo.inner
                .store
                .delete(&crate::snapshot::snapshot_path(&s))
                .await
                .unwrap();
        }
        let mut builder = PackBuilder::default();
        let orphan = noise(14, 5000);
        builder.add(blob::encode(
            blob::blob_id(&repo.inner.key, &orphan),
            &orphan,
            3,
            &repo.inner.codec,
        ));
        repo.upload_pack(builder).await.unwrap();
        let mut expected = BTreeMap::new();
        expected.insert(("r1".to_owned(), "a".to_owned()), a);
        expected.insert(("r3".to_owned(), "c".to_owned()), c);
        drop(repo);

        let index_files = std::fs::read_dir(template.path().join("index"))
            .unwrap()
            .count();
        // How many writes and deletes a whole prune makes.
        let (full, _dir, total) = prune_crashing_after(template.path(), i64::MAX / 2).await;
        let full = full.unwrap();
        assert!(
            full.packs_repacked >= 1 && full.unindexed_packs_deleted == 1,
            "{full:?}"
        );
        assert!(
            total >= 7,
            "lock, pack, index, 3 index deletes, pack deletes…: {total}"
        );
        eprintln!("a whole prune makes {total} writes and deletes: {full:?}");
        assert_eq!(full.index_files_deleted, index_files as u64);

        for budget in 0..total {
            let (outcome, dir, _) = prune_crashing_after(template.path(), budget).await;
            let location = dir.path().to_str().unwrap().to_owned();
            if budget < total - 1 {
                // The last operation is the lock's release, which prune does not wait on.
                assert!(
                    outcome.is_err(),
                    "crash after {budget} of {total}: {outcome:?}"
                );
            }
            let repo = Repository::open(&location, None).await.unwrap();
            let check = repo.check(CheckOptions::read_data()).await.unwrap();
            assert!(
                check.is_ok(),
                "crash after {budget} of {total} operations: {:?}",
                check.errors
            );
            assert_eq!(check.snapshots_checked, 2);
            assert_restores(&repo, &expected).await;

            // The crashed prune's lock is left behind; once it is gone (stale), prune finishes.
            let _ = std::fs::remove_dir_all(dir.path().join("locks"));
            repo.prune(&PruneOptions::default(), &LockOptions::default())
                .await
                .unwrap();
            let check = repo.check(CheckOptions::read_data()).await.unwrap();
            assert!(
                check.is_ok(),
                "prune after a crash after {budget}: {:?}",
                check.errors
            );
            assert!(
                check.unindexed_packs.is_empty(),
                "after {budget}: {check:?}"
            );
            assert_restores(&repo, &expected).await;
        }
    }
}
