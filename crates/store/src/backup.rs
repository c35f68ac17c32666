//! Writing: content writers, the shared packer, index and snapshot commits.
//!
//! Data flow: [`ContentWriter::write`] buffers up to two maximum-size chunks, then (on a
//! blocking thread) cuts chunks, hashes them, claims the new ones in the session, compresses
//! and (in an encrypted repository) seals those and appends them to the session's open pack. A full pack is sealed and uploaded by a
//! background task while writers go on; at most [`MAX_PACKS_IN_FLIGHT`] packs wait or upload at
//! once (back-pressure). [`BackupWriter::commit_snapshot`] seals the open pack, waits for every
//! pack sealed so far, writes one index file for the uploaded packs, then the snapshot.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};

use crate::blob::{self, EncodedBlob};
use crate::error::{Error, Result};
use crate::id::{BlobId, IdSet};
use crate::index::{self, IndexPack};
use crate::lock::RepoLock;
use crate::pack::{pack_path, PackBuilder};
use crate::repository::Repository;
use crate::snapshot::{self, ContentRef, Item, Snapshot, SnapshotDraft};

/// Packs sealed but not yet uploaded, across the session; writers wait beyond this. With the
/// open pack, at most three packs' bytes (48 MiB) are held: two uploads keep a local disk or an
/// object store busy, and more only raises peak memory.
pub(crate) const MAX_PACKS_IN_FLIGHT: usize = 2;
/// Concurrent pack uploads per session.
const UPLOAD_SLOTS: usize = 2;
/// Buffers this small are chunked on the async thread: a blocking-pool hop costs more.
const INLINE_BYTES: usize = 64 * 1024;
/// Item list bytes buffered before they are written as content.
const TREE_WRITE_BYTES: usize = 1024 * 1024;

/// Counters for one backup session. All sizes in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteStats {
    /// Bytes written through content writers (snapshot item lists included).
    pub bytes_in: u64,
    /// Chunks cut.
    pub blobs_in: u64,
    /// Chunks not already in the repository or this session.
    pub blobs_new: u64,
    /// Uncompressed bytes of the new chunks.
    pub bytes_new: u64,
    /// Bytes of pack files uploaded (headers and trailers included).
    pub bytes_stored: u64,
    /// Pack files uploaded.
    pub packs_written: u64,
}

/// One backup session.
///
/// Share it across tasks (`&self` methods; `Send + Sync`). Open one [`ContentWriter`] per item;
/// call [`BackupWriter::commit_snapshot`] once per backed-up resource and
/// [`BackupWriter::finish`] at the end.
///
/// Dropping it without `finish` loses only data no snapshot refers to (the open pack), and
/// releases its lock in the background (see [`crate::finish_lock_releases`]).
///
/// It holds a shared [`crate::LockKind::Backup`] lock for its whole life, so no prune runs
/// meanwhile; each commit first checks that the lock is still fresh
/// ([`crate::Error::LockLost`] otherwise).
pub struct BackupWriter {
    session: Arc<Session>,
    /// The shared backup lock, held from before the index was loaded until `finish`.
    lock: Option<RepoLock>,
}

pub(crate) struct Session {
    repo: Repository,
    state: Mutex<SessionState>,
    /// Sequence numbers of sealed packs not yet uploaded (or failed).
    in_flight: watch::Sender<BTreeSet<u64>>,
    upload_slots: Arc<Semaphore>,
    commit_lock: tokio::sync::Mutex<()>,
    /// Buffer size at which a content writer chunks what it holds.
    process_bytes: usize,
}

#[derive(Default)]
struct SessionState {
    /// Blobs stored by this session and not yet in a written index file.
    claimed: IdSet<BlobId>,
    open: PackBuilder,
    next_seq: u64,
    /// Uploaded packs not yet in an index file.
    unindexed: Vec<IndexPack>,
    failed: Option<String>,
    stats: WriteStats,
}

impl SessionState {
    fn check_failed(&self) -> Result<()> {
        match &self.failed {
            Some(detail) => Err(Error::SessionFailed {
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }
}

impl std::fmt::Debug for BackupWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupWriter")
            .field("repository", &self.session.repo)
            .field("stats", &self.stats())
            .finish()
    }
}

impl BackupWriter {
    pub(crate) fn new(repo: Repository, lock: RepoLock) -> Self {
        let process_bytes = 2 * repo.inner.chunker.max_size();
        BackupWriter {
            lock: Some(lock),
            session: Arc::new(Session {
                repo,
                state: Mutex::new(SessionState::default()),
                in_flight: watch::Sender::new(BTreeSet::new()),
                upload_slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
                commit_lock: tokio::sync::Mutex::new(()),
                process_bytes,
            }),
        }
    }

    /// Fails if the backup lock may have gone stale: a prune could then delete blobs this
    /// session deduplicated against. Half the lock's lifetime must be left, which bounds how
    /// long one index-and-snapshot write may take.
    fn ensure_locked(&self) -> Result<()> {
        match &self.lock {
            Some(lock) => lock.ensure_valid(lock.ttl() / 2),
            None => Ok(()),
        }
    }

    /// The backup lock this session holds.
    pub fn lock(&self) -> Option<&RepoLock> {
        self.lock.as_ref()
    }

    /// A writer for one item's content. Several may be open at once, in different tasks.
    pub fn content_writer(&self) -> ContentWriter {
        ContentWriter {
            session: self.session.clone(),
            buf: Vec::new(),
            blobs: Vec::new(),
            size: 0,
        }
    }

    /// True if every blob of `content` is in the repository's index or stored by this
    /// session, so an unchanged item's [`ContentRef`] from a parent snapshot can be reused.
    pub fn contains(&self, content: &ContentRef) -> bool {
        let state = self.session.state.lock().expect("session lock");
        let index = self.session.repo.inner.index.read().expect("index lock");
        content
            .blobs
            .iter()
            .all(|id| state.claimed.contains(id) || index.contains(id))
    }

    /// Stores the draft's item list, flushes all packs, writes an index file for the packs
    /// uploaded so far, then the snapshot object. The snapshot is durable when this returns.
    ///
    /// Every [`ContentRef`] returned by a finished [`ContentWriter`] of this session before the
    /// call is covered. May be called many times per session (one snapshot per resource);
    /// calls are serialized.
    ///
    /// # Errors
    /// [`Error::SessionFailed`] if a pack upload of this session failed, [`Error::Backend`] if
    /// the index or snapshot cannot be written (then nothing refers to the new data yet and
    /// the call may be retried).
    pub async fn commit_snapshot(&self, draft: SnapshotDraft) -> Result<Snapshot> {
        let _serial = self.session.commit_lock.lock().await;
        self.session.check_failed()?;
        let tree = self.write_tree(&draft.items).await?;
        self.ensure_locked()?;
        self.session.flush().await?;
        self.ensure_locked()?;
        let repo = &self.session.repo.inner;
        let (snapshot, bytes) = snapshot::encode_snapshot(
            &repo.codec,
            draft,
            tree,
            Utc::now(),
            snapshot::hostname(),
            repo.config.compression.level,
        )?;
        repo.put_new(
            &snapshot::snapshot_path(&snapshot.id),
            PutPayload::from(bytes),
        )
        .await?;
        tracing::info!(
            snapshot = %snapshot.id,
            service = %snapshot.service,
            resource = %snapshot.resource_id,
            items = snapshot.item_count,
            "snapshot committed"
        );
        Ok(snapshot)
    }

    async fn write_tree(&self, items: &[Item]) -> Result<ContentRef> {
        let mut writer = self.content_writer();
        let mut lines = Vec::with_capacity(TREE_WRITE_BYTES + 4096);
        for item in items {
            serde_json::to_writer(&mut lines, item).map_err(|e| Error::Internal {
                detail: format!("cannot encode item {:?}: {e}", item.id),
            })?;
            lines.push(b'\n');
            if lines.len() >= TREE_WRITE_BYTES {
                writer.write(&lines).await?;
                lines.clear();
            }
        }
        writer.write(&lines).await?;
        writer.finish().await
    }

    /// Counters so far.
    pub fn stats(&self) -> WriteStats {
        self.session.state.lock().expect("session lock").stats
    }

    /// Flushes the open pack, waits for all uploads and writes an index file for them, even
    /// if no snapshot refers to them (they are then kept until prune).
    ///
    /// # Errors
    /// As [`BackupWriter::commit_snapshot`].
    pub async fn finish(mut self) -> Result<WriteStats> {
        let serial = self.session.commit_lock.lock().await;
        self.session.check_failed()?;
        self.ensure_locked()?;
        self.session.flush().await?;
        drop(serial);
        let stats = self.stats();
        if let Some(lock) = self.lock.take() {
            lock.release().await;
        }
        Ok(stats)
    }
}

impl Session {
    fn check_failed(&self) -> Result<()> {
        self.state.lock().expect("session lock").check_failed()
    }

    fn fail(&self, detail: String) {
        tracing::error!(%detail, "backup session failed");
        let mut state = self.state.lock().expect("session lock");
        state.failed.get_or_insert(detail);
    }

    /// Cuts, hashes, dedups, compresses and packs `buf`; returns the chunk ids and how many
    /// bytes were consumed (all if `at_end`, else all but less than one maximum chunk).
    /// CPU-bound: call off the async threads for large buffers.
    fn ingest(
        self: &Arc<Self>,
        handle: &Handle,
        buf: &[u8],
        at_end: bool,
    ) -> Result<(Vec<BlobId>, usize)> {
        let repo = &self.repo.inner;
        let lens = repo.chunker.cut_all(buf, at_end);
        let mut chunks = Vec::with_capacity(lens.len());
        let mut pos = 0;
        for len in lens {
            let data = &buf[pos..pos + len];
            chunks.push((blob::blob_id(&repo.key, data), data));
            pos += len;
        }

        // Candidates: chunks neither indexed nor claimed by this session (first occurrence in
        // this buffer only). Compression happens outside the lock.
        let candidates: Vec<usize> = {
            let state = self.state.lock().expect("session lock");
            state.check_failed()?;
            let index = repo.index.read().expect("index lock");
            let mut seen = IdSet::default();
            chunks
                .iter()
                .enumerate()
                .filter(|(_, (id, _))| {
                    !index.contains(id) && !state.claimed.contains(id) && seen.insert(*id)
                })
                .map(|(i, _)| i)
                .collect()
        };
        let level = repo.config.compression.level;
        let encoded: Vec<EncodedBlob> = candidates
            .into_iter()
            .map(|i| blob::encode(chunks[i].0, chunks[i].1, level, &repo.codec))
            .collect();

        // Claim and append under one lock: a claimed blob is always in a pack (open, in
        // flight or uploaded), so a commit that seals the open pack covers every blob any
        // finished writer may refer to. A blob another writer stored meanwhile is dropped.
        let target = repo.config.pack_target_size;
        let mut state = self.state.lock().expect("session lock");
        let index = repo.index.read().expect("index lock");
        let state = &mut *state;
        state.stats.blobs_in += chunks.len() as u64;
        state.stats.bytes_in += pos as u64;
        for blob in encoded {
            if index.contains(&blob.id) || !state.claimed.insert(blob.id) {
                continue;
            }
            state.stats.blobs_new += 1;
            state.stats.bytes_new += u64::from(blob.raw_len);
            state.open.add(blob);
            if state.open.len() >= target {
                self.seal_open_pack(state, handle);
            }
        }
        drop(index);
        Ok((chunks.into_iter().map(|(id, _)| id).collect(), pos))
    }

    /// Takes the open pack and hands it to a background upload task. Called with the state
    /// lock held, so a committer that takes the lock afterwards sees the pack in flight.
    fn seal_open_pack(self: &Arc<Self>, state: &mut SessionState, handle: &Handle) {
        let builder = std::mem::take(&mut state.open);
        let seq = state.next_seq;
        state.next_seq += 1;
        self.in_flight.send_modify(|set| {
            set.insert(seq);
        });
        let session = self.clone();
        handle.spawn(async move { session.upload_pack(seq, builder).await });
    }

    async fn upload_pack(self: Arc<Self>, seq: u64, builder: PackBuilder) {
        let _slot = self.upload_slots.clone().acquire_owned().await;
        let codec = self.repo.inner.codec.clone();
        let sealed = match crate::compute::run(move || builder.seal(&codec)).await {
            Ok(sealed) => sealed,
            Err(e) => {
                self.fail(format!("sealing a pack failed: {e}"));
                self.in_flight.send_modify(|set| {
                    set.remove(&seq);
                });
                return;
            }
        };
        let path = pack_path(&sealed.id);
        let payload = PutPayload::from_iter(sealed.parts);
        let result = self.repo.inner.put_new(&path, payload).await;
        {
            let mut state = self.state.lock().expect("session lock");
            match result {
                Ok(()) => {
                    tracing::debug!(pack = %path, bytes = sealed.size, blobs = sealed.entries.len(), "pack uploaded");
                    state.stats.packs_written += 1;
                    state.stats.bytes_stored += sealed.size;
                    state.unindexed.push(IndexPack {
                        id: sealed.id,
                        size: sealed.size,
                        blobs: sealed.entries,
                    });
                }
                Err(e) => {
                    tracing::error!(pack = %path, error = %e, "pack upload failed");
                    for entry in &sealed.entries {
                        state.claimed.remove(&entry.id);
                    }
                    state.failed.get_or_insert(e.to_string());
                }
            }
        }
        self.in_flight.send_modify(|set| {
            set.remove(&seq);
        });
    }

    /// Waits until at most `limit` packs are in flight.
    async fn wait_in_flight_below(&self, limit: usize) {
        let mut rx = self.in_flight.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|set| set.len() <= limit).await.map(|_| ());
    }

    /// Seals the open pack, waits for every pack sealed so far, and writes an index file for
    /// the uploaded packs not yet indexed. Callers hold `commit_lock`.
    async fn flush(self: &Arc<Self>) -> Result<()> {
        let sealed_before = {
            let mut state = self.state.lock().expect("session lock");
            if !state.open.is_empty() {
                self.seal_open_pack(&mut state, &Handle::current());
            }
            state.next_seq
        };
        let mut rx = self.in_flight.subscribe();
        let _ = rx
            .wait_for(|set| set.first().is_none_or(|&first| first >= sealed_before))
            .await
            .map(|_| ());
        self.check_failed()?;

        let packs = std::mem::take(&mut self.state.lock().expect("session lock").unindexed);
        if packs.is_empty() {
            return Ok(());
        }
        let repo = &self.repo.inner;
        let level = repo.config.compression.level;
        let codec = repo.codec.clone();
        let (packs, encoded) = tokio::task::spawn_blocking(move || {
            let encoded = index::encode_index(&codec, &packs, level);
            (packs, encoded)
        })
        .await
        .map_err(Error::join)?;
        let written = match encoded {
            Ok((id, bytes)) => repo
                .put_new(&index::index_path(&id), PutPayload::from(bytes))
                .await
                .map(|()| id),
            Err(e) => Err(e),
        };
        // Adding packs to the index, and merging its in-memory part into the on-disk table
        // when it has grown large, is serialized with index refreshes.
        let _index_changes = repo.index_refresh.lock().await;
        {
            let mut state = self.state.lock().expect("session lock");
            match written {
                Ok(id) => {
                    let mut index = repo.index.write().expect("index lock");
                    for pack in &packs {
                        index.add_pack(pack);
                        for blob in &pack.blobs {
                            state.claimed.remove(&blob.id);
                        }
                    }
                    index.mark_file(id);
                    tracing::debug!(index = %id, packs = packs.len(), "index written");
                }
                Err(e) => {
                    state.unindexed.extend(packs);
                    return Err(e);
                }
            }
        }
        repo.index_grew().await
    }
}

/// Stores one item's content. Obtain from [`BackupWriter::content_writer`].
///
/// Memory: at most two maximum-size chunks (4 MiB) plus the caller's current slice.
/// Dropping it without `finish` leaves its chunks in the repository unreferenced.
pub struct ContentWriter {
    session: Arc<Session>,
    buf: Vec<u8>,
    blobs: Vec<BlobId>,
    size: u64,
}

impl std::fmt::Debug for ContentWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentWriter")
            .field("size", &self.size)
            .field("blobs", &self.blobs.len())
            .finish_non_exhaustive()
    }
}

impl ContentWriter {
    /// Appends bytes. Any slice sizes: chunk boundaries depend only on the content.
    ///
    /// # Errors
    /// [`Error::SessionFailed`] once a pack upload of the session has failed.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<()> {
        self.size += data.len() as u64;
        let limit = self.session.process_bytes;
        while !data.is_empty() {
            let n = (limit - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= limit {
                self.process(false).await?;
            }
        }
        Ok(())
    }

    /// Stores what is buffered and returns the content's reference.
    ///
    /// # Errors
    /// As [`ContentWriter::write`].
    pub async fn finish(mut self) -> Result<ContentRef> {
        self.process(true).await?;
        Ok(ContentRef {
            size: self.size,
            blobs: self.blobs,
        })
    }

    async fn process(&mut self, at_end: bool) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let handle = Handle::current();
        let (mut buf, result) = if buf.len() <= INLINE_BYTES {
            let result = self.session.ingest(&handle, &buf, at_end);
            (buf, result)
        } else {
            let session = self.session.clone();
            crate::compute::run(move || {
                let result = session.ingest(&handle, &buf, at_end);
                (buf, result)
            })
            .await
            .inspect_err(|err| self.session.fail(err.to_string()))?
        };
        let (ids, consumed) = result?;
        self.blobs.extend(ids);
        buf.drain(..consumed);
        self.buf = buf;
        self.session.wait_in_flight_below(MAX_PACKS_IN_FLIGHT).await;
        Ok(())
    }
}
