//! Writing: content writers, the shared packer, index and snapshot commits.
//!
//! Data flow: [`ContentWriter::write`] buffers up to two maximum-size chunks, then (on the
//! store's compute pool, as an urgent job) cuts chunks, hashes them and claims the new ones in
//! the session, and hands the writer its chunk ids. Compressing and (in an encrypted
//! repository) sealing the claimed chunks, and appending them to the session's open pack,
//! follows as a background job on the same pool while the writer goes on reading; the bytes
//! those jobs hold are bounded per session. A full pack is sealed and uploaded by a background
//! task; at most [`MAX_PACKS_IN_FLIGHT`] packs wait or upload at once (back-pressure).
//! [`BackupWriter::commit_snapshot`] waits for the claimed chunks to reach the open pack, seals
//! it, waits for every pack sealed so far, writes one index file for the uploaded packs, then
//! the snapshot.
//!
//! Between commits, index checkpoints ([`IndexCheckpoint`]) write an index file for the packs
//! uploaded so far (not the open pack), so the content a killed backup stored before its last
//! checkpoint is in the repository's index for the next session to reuse.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::sync::{watch, Semaphore};

use crate::blob::{self, EncodedBlob};
use crate::error::{Error, Result};
use crate::id::{BlobId, IdSet};
use crate::index::{self, IndexPack};
use crate::lock::{LockCheck, RepoLock};
use crate::pack::{pack_path, PackBuilder};
use crate::repository::Repository;
use crate::snapshot::{self, ContentRef, Item, Snapshot, SnapshotDraft};

/// Packs sealed but not yet uploaded, across the session; writers wait beyond this. With the
/// open pack, at most three packs' bytes (48 MiB) are held: two uploads keep a local disk or an
/// object store busy, and more only raises peak memory.
pub(crate) const MAX_PACKS_IN_FLIGHT: usize = 2;
/// Concurrent pack uploads per session.
const UPLOAD_SLOTS: usize = 2;
/// Buffers this small are chunked and compressed on the async thread: a hop to the compute
/// pool costs more.
const INLINE_BYTES: usize = 64 * 1024;
/// Writer buffers held by compression jobs, per compute thread, in units of the writers'
/// buffer size (two maximum-size chunks): two keep each thread busy while writers refill.
const ENCODE_BUFFERS_PER_THREAD: usize = 1;
/// Spare writer buffers kept per compute thread (see `Session::spare_buffers`).
const SPARE_BUFFERS_PER_THREAD: usize = 2;
/// Item list bytes buffered before they are written as content.
const TREE_WRITE_BYTES: usize = 1024 * 1024;

/// When a backup session writes an index file for its uploaded packs before its next commit.
///
/// A checkpoint is due when a pack upload completes and either `packs` uploaded packs are not
/// yet in an index file, or `interval` has passed since the session's last index file (or its
/// start). It covers the uploaded packs only: the open pack is not sealed for it. Checkpoints
/// are serialized with commits, check the backup lock as commits do, and a failed one is only
/// logged (the next checkpoint or commit indexes the same packs).
///
/// Each checkpoint is one more (small) index file: with the defaults, at most one per 8 packs
/// (128 MiB at the default pack size) or per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexCheckpoint {
    /// Uploaded packs not yet in an index file that make a checkpoint due. 0 turns
    /// checkpoints off (with `interval`, too).
    pub packs: usize,
    /// Time since the session's last index file after which one uploaded pack makes a
    /// checkpoint due. `Duration::ZERO`: after every pack upload.
    pub interval: Duration,
}

impl IndexCheckpoint {
    /// No index files between commits.
    pub const OFF: IndexCheckpoint = IndexCheckpoint {
        packs: 0,
        interval: Duration::MAX,
    };
}

impl Default for IndexCheckpoint {
    /// Every 8 packs or 60 seconds.
    fn default() -> Self {
        IndexCheckpoint {
            packs: 8,
            interval: Duration::from_secs(60),
        }
    }
}

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
    /// Sequence numbers of encode batches: chunks claimed and being compressed, not yet in the
    /// open pack.
    encoding: watch::Sender<BTreeSet<u64>>,
    /// KiB of writer buffers that encode batches may hold; writers wait beyond it.
    encode_budget: Arc<Semaphore>,
    /// Full-size writer buffers (capacity `process_bytes`) back from compression or from
    /// finished writers, for the next writer that carries a tail over (a content larger than
    /// one buffer) or reads with [`ContentWriter::write_from`]: reusing them keeps large
    /// buffers from being freed on one thread and allocated on another, which leaves glibc's
    /// per-thread arenas holding many freed copies. Writers of small contents through
    /// [`ContentWriter::write`] grow their own buffer to the content's size instead.
    spare_buffers: Mutex<Vec<Vec<u8>>>,
    commit_lock: tokio::sync::Mutex<()>,
    /// Buffer size at which a content writer chunks what it holds.
    process_bytes: usize,
    /// The backup lock, checked before each index checkpoint.
    lock_check: Option<LockCheck>,
}

struct SessionState {
    /// Blobs stored by this session and not yet in a written index file.
    claimed: IdSet<BlobId>,
    open: PackBuilder,
    next_seq: u64,
    next_encode_seq: u64,
    /// Uploaded packs not yet in an index file.
    unindexed: Vec<IndexPack>,
    failed: Option<String>,
    stats: WriteStats,
    checkpoint: IndexCheckpoint,
    /// When the session last wrote an index file (or started).
    last_index: Instant,
    /// A checkpoint is due or running: no second one is started meanwhile.
    checkpoint_pending: bool,
}

impl Default for SessionState {
    fn default() -> Self {
        SessionState {
            claimed: IdSet::default(),
            open: PackBuilder::default(),
            next_seq: 0,
            next_encode_seq: 0,
            unindexed: Vec::new(),
            failed: None,
            stats: WriteStats::default(),
            checkpoint: IndexCheckpoint::default(),
            last_index: Instant::now(),
            checkpoint_pending: false,
        }
    }
}

impl SessionState {
    /// True (and marks it pending) when an index checkpoint is due after an upload.
    fn take_due_checkpoint(&mut self) -> bool {
        let policy = self.checkpoint;
        let due = !self.checkpoint_pending
            && self.failed.is_none()
            && !self.unindexed.is_empty()
            && ((policy.packs > 0 && self.unindexed.len() >= policy.packs)
                || self.last_index.elapsed() >= policy.interval);
        self.checkpoint_pending |= due;
        due
    }

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
        let encode_kib = ENCODE_BUFFERS_PER_THREAD * crate::compute::threads() * kib(process_bytes);
        BackupWriter {
            session: Arc::new(Session {
                lock_check: Some(lock.check()),
                repo,
                state: Mutex::new(SessionState::default()),
                in_flight: watch::Sender::new(BTreeSet::new()),
                upload_slots: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
                encoding: watch::Sender::new(BTreeSet::new()),
                encode_budget: Arc::new(Semaphore::new(encode_kib)),
                spare_buffers: Mutex::new(Vec::new()),
                commit_lock: tokio::sync::Mutex::new(()),
                process_bytes,
            }),
            lock: Some(lock),
        }
    }

    /// Sets when this session writes index files between commits (default:
    /// [`IndexCheckpoint::default`]); applies from the next pack upload on.
    pub fn set_index_checkpoint(&self, checkpoint: IndexCheckpoint) {
        self.session.state.lock().expect("session lock").checkpoint = checkpoint;
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
            interrupted: false,
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
        // The items' chunks reach the open pack before their item list does, so a pack holds
        // a snapshot's content ahead of its item list, as it is written.
        self.session.wait_encoded().await?;
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

    /// An empty writer buffer with room for `process_bytes`.
    fn take_buffer(&self) -> Vec<u8> {
        self.spare_buffers
            .lock()
            .expect("buffer pool lock")
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.process_bytes))
    }

    /// Returns a writer buffer to the pool (at most one per compute thread and writer
    /// buffer in the encode budget are kept; smaller ones are dropped).
    fn recycle_buffer(&self, mut buf: Vec<u8>) {
        if buf.capacity() < self.process_bytes || buf.capacity() > 2 * self.process_bytes {
            return;
        }
        buf.clear();
        let mut spare = self.spare_buffers.lock().expect("buffer pool lock");
        if spare.len() < SPARE_BUFFERS_PER_THREAD * crate::compute::threads() {
            spare.push(buf);
        }
    }

    /// Cuts and hashes `buf` and claims the chunks neither indexed nor claimed by this session
    /// (each id once). Returns the chunk ids, how many bytes were consumed (all if `at_end`,
    /// else all but the last chunk, which may go on past `buf`: see
    /// [`crate::chunker::Chunker::cut_all`]), and the claimed chunks as an [`EncodeBatch`]
    /// that must reach the open pack ([`Session::encode_batch`]) before a commit may refer to
    /// them. CPU-bound: call off the async threads for large buffers.
    fn cut_and_claim(
        self: &Arc<Self>,
        buf: &[u8],
        at_end: bool,
    ) -> Result<(Vec<BlobId>, usize, Option<EncodeBatch>)> {
        let repo = &self.repo.inner;
        let lens = repo.chunker.cut_all(buf, at_end);
        let mut ids = Vec::with_capacity(lens.len());
        let mut ranges = Vec::with_capacity(lens.len());
        let mut pos = 0;
        for len in lens {
            ids.push(blob::blob_id(&repo.key, &buf[pos..pos + len]));
            ranges.push(pos..pos + len);
            pos += len;
        }

        let mut state = self.state.lock().expect("session lock");
        state.check_failed()?;
        let index = repo.index.read().expect("index lock");
        let state = &mut *state;
        state.stats.blobs_in += ids.len() as u64;
        state.stats.bytes_in += pos as u64;
        let mut chunks = Vec::new();
        for (id, range) in ids.iter().zip(ranges) {
            if !index.contains(id) && state.claimed.insert(*id) {
                state.stats.blobs_new += 1;
                state.stats.bytes_new += range.len() as u64;
                chunks.push((*id, range));
            }
        }
        drop(index);
        let batch = (!chunks.is_empty()).then(|| {
            let seq = state.next_encode_seq;
            state.next_encode_seq += 1;
            self.encoding.send_modify(|set| {
                set.insert(seq);
            });
            EncodeBatch {
                session: self.clone(),
                seq,
                chunks,
                done: false,
            }
        });
        Ok((ids, pos, batch))
    }

    /// Compresses and seals the chunks of `batch` (ranges of `buf`) and appends them to the
    /// open pack, sealing it whenever it reaches the target size. CPU-bound.
    fn encode_batch(self: &Arc<Self>, handle: &Handle, buf: &[u8], mut batch: EncodeBatch) {
        let repo = &self.repo.inner;
        let level = repo.config.compression.level;
        let encoded: Vec<EncodedBlob> = batch
            .chunks
            .iter()
            .map(|(id, range)| blob::encode(*id, &buf[range.clone()], level, &repo.codec))
            .collect();
        let target = repo.config.pack_target_size;
        let mut state = self.state.lock().expect("session lock");
        for blob in encoded {
            state.open.add(blob);
            if state.open.len() >= target {
                self.seal_open_pack(&mut state, handle);
            }
        }
        batch.done = true;
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
        let slot = self.upload_slots.clone().acquire_owned().await;
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
        drop(slot);
        let checkpoint = {
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
            state.take_due_checkpoint()
        };
        self.in_flight.send_modify(|set| {
            set.remove(&seq);
        });
        if checkpoint {
            self.checkpoint().await;
        }
    }

    /// Writes an index file for the uploaded packs not yet indexed, without sealing the open
    /// pack (see [`IndexCheckpoint`]). Waits for a commit in progress, which may have indexed
    /// them already.
    async fn checkpoint(self: &Arc<Self>) {
        let serial = self.commit_lock.lock().await;
        let margin = |l: &LockCheck| l.ttl() / 2;
        let result = match (&self.lock_check, self.check_failed()) {
            (_, Err(e)) => Err(e),
            (Some(lock), Ok(())) => match lock.ensure_valid(margin(lock)) {
                Ok(()) => self.write_index().await,
                Err(e) => Err(e),
            },
            (None, Ok(())) => self.write_index().await,
        };
        drop(serial);
        self.state.lock().expect("session lock").checkpoint_pending = false;
        match result {
            Ok(()) => {}
            // The session's next commit reports the failure.
            Err(e) => tracing::warn!(error = %e, "index checkpoint not written"),
        }
    }

    /// Waits until at most `limit` packs are in flight.
    async fn wait_in_flight_below(&self, limit: usize) {
        let mut rx = self.in_flight.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|set| set.len() <= limit).await.map(|_| ());
    }

    /// Waits until every chunk claimed so far is in the open pack (or in a pack sealed since).
    async fn wait_encoded(&self) -> Result<()> {
        let encoded_before = self.state.lock().expect("session lock").next_encode_seq;
        let mut rx = self.encoding.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx
            .wait_for(|set| set.first().is_none_or(|&first| first >= encoded_before))
            .await
            .map(|_| ());
        self.check_failed()
    }

    /// Seals the open pack, waits for every pack sealed so far, and writes an index file for
    /// the uploaded packs not yet indexed. Callers hold `commit_lock`.
    async fn flush(self: &Arc<Self>) -> Result<()> {
        self.wait_encoded().await?;
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
        self.write_index().await
    }

    /// Writes an index file for the uploaded packs not yet in one (if any), and adds them to
    /// the repository's index. Callers hold `commit_lock`.
    async fn write_index(self: &Arc<Self>) -> Result<()> {
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
                    state.last_index = Instant::now();
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
/// Memory: at most two maximum-size chunks (4 MiB) plus the caller's current slice; buffers
/// handed to compression count against the session's budget (two per compute thread).
/// Dropping it without `finish` leaves its chunks in the repository unreferenced.
pub struct ContentWriter {
    session: Arc<Session>,
    buf: Vec<u8>,
    blobs: Vec<BlobId>,
    size: u64,
    /// Set while a call holds the buffer across an await: still set afterwards, the call
    /// failed or its future was dropped before it completed, taking bytes already counted in
    /// `size` with it, so the writer refuses to go on.
    interrupted: bool,
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
        self.check_interrupted()?;
        self.size += data.len() as u64;
        let limit = self.session.process_bytes;
        while !data.is_empty() {
            let n = (limit - self.buf.len()).min(data.len());
            // Past the inline size, move to a full-size buffer at once (one from the pool when
            // there is one) instead of growing by doubling: each doubling copies the buffer.
            let want = self.buf.len() + n;
            if want > self.buf.capacity() && want > INLINE_BYTES {
                let mut full = self.session.take_buffer();
                full.extend_from_slice(&self.buf);
                self.buf = full;
            }
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= limit {
                self.process(false).await?;
            }
        }
        Ok(())
    }

    /// Appends everything `reader` yields, up to its end, reading it straight into the
    /// writer's buffer: unlike reading into a buffer of one's own and calling
    /// [`ContentWriter::write`], no byte is copied twice. The reads block, so they run on
    /// tokio's blocking pool, at most two maximum-size chunks (4 MiB) at a time. Returns the
    /// bytes read.
    ///
    /// # Errors
    /// The outer result fails as [`ContentWriter::write`] does. The inner one is `reader`'s
    /// first error: what the failed read returned before it is discarded and what earlier
    /// reads returned is kept (the writer's size counts exactly that), so the content is
    /// incomplete and the writer should be dropped rather than finished.
    pub async fn write_from<R>(&mut self, mut reader: R) -> Result<std::io::Result<u64>>
    where
        R: std::io::Read + Send + 'static,
    {
        self.check_interrupted()?;
        let limit = self.session.process_bytes;
        let mut total = 0u64;
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            if buf.capacity() < limit {
                let mut full = self.session.take_buffer();
                full.extend_from_slice(&buf);
                buf = full;
            }
            let before = buf.len();
            let room = (limit - before) as u64;
            self.interrupted = true;
            let (back, mut buf, read) = tokio::task::spawn_blocking(move || {
                let mut piece = std::io::Read::take(&mut reader, room);
                let read = std::io::Read::read_to_end(&mut piece, &mut buf);
                (reader, buf, read)
            })
            .await
            .map_err(Error::join)?;
            self.interrupted = false;
            reader = back;
            let n = match read {
                Ok(n) => n as u64,
                Err(e) => {
                    buf.truncate(before);
                    self.buf = buf;
                    return Ok(Err(e));
                }
            };
            self.buf = buf;
            total += n;
            self.size += n;
            if self.buf.len() >= limit {
                self.process(false).await?;
            }
            // `read_to_end` stops early only at the reader's end.
            if n < room {
                return Ok(Ok(total));
            }
        }
    }

    /// Stores what is buffered and returns the content's reference.
    ///
    /// # Errors
    /// As [`ContentWriter::write`].
    pub async fn finish(mut self) -> Result<ContentRef> {
        self.check_interrupted()?;
        self.process(true).await?;
        // A full-size buffer (one `write_from` took from the pool) goes back for the next
        // writer.
        self.session.recycle_buffer(std::mem::take(&mut self.buf));
        Ok(ContentRef {
            size: self.size,
            blobs: self.blobs,
        })
    }

    /// Fails once a call's future was dropped while it held the buffer (see `interrupted`).
    fn check_interrupted(&self) -> Result<()> {
        if self.interrupted {
            return Err(Error::Internal {
                detail: "an earlier write into this content writer failed or was cancelled \
                         before it completed, so its content is incomplete: drop the writer and \
                         store the item again"
                    .into(),
            });
        }
        Ok(())
    }

    async fn process(&mut self, at_end: bool) -> Result<()> {
        let buf = std::mem::take(&mut self.buf);
        self.interrupted = true;
        let session = &self.session;
        if buf.len() <= INLINE_BYTES {
            let (ids, consumed, batch) = session.cut_and_claim(&buf, at_end)?;
            if let Some(batch) = batch {
                session.encode_batch(&Handle::current(), &buf, batch);
            }
            self.blobs.extend(ids);
            let mut buf = buf;
            buf.drain(..consumed);
            self.buf = buf;
        } else {
            // The buffer goes to the compression job: hold its share of the budget until then.
            let permit = session
                .encode_budget
                .clone()
                .acquire_many_owned(u32::try_from(kib(buf.len())).unwrap_or(u32::MAX))
                .await
                .map_err(|_| Error::Internal {
                    detail: "the session's encode budget was closed".into(),
                })?;
            let handle = Handle::current();
            let job_session = session.clone();
            let (ids, tail) = crate::compute::run(move || {
                let (ids, consumed, batch) = job_session.cut_and_claim(&buf, at_end)?;
                let mut tail = Vec::new();
                if consumed < buf.len() {
                    tail = job_session.take_buffer();
                    tail.extend_from_slice(&buf[consumed..]);
                }
                match batch {
                    Some(batch) => {
                        let session = job_session.clone();
                        crate::compute::spawn_background(move || {
                            session.encode_batch(&handle, &buf, batch);
                            session.recycle_buffer(buf);
                            drop(permit);
                        });
                    }
                    None => job_session.recycle_buffer(buf),
                }
                Ok::<_, Error>((ids, tail))
            })
            .await
            .inspect_err(|err| session.fail(err.to_string()))??;
            self.blobs.extend(ids);
            self.buf = tail;
        }
        self.interrupted = false;
        self.session.wait_in_flight_below(MAX_PACKS_IN_FLIGHT).await;
        Ok(())
    }
}

/// Chunks claimed by a session and not yet in its open pack. Dropped unfinished (a panic while
/// compressing), it fails the session, so no commit can refer to chunks that were never
/// stored; either way it tells waiting commits that it is over.
struct EncodeBatch {
    session: Arc<Session>,
    seq: u64,
    chunks: Vec<(BlobId, Range<usize>)>,
    done: bool,
}

impl Drop for EncodeBatch {
    fn drop(&mut self) {
        if !self.done {
            self.session
                .fail("compressing chunks failed; nothing written by this session since the last commit is referenced".into());
        }
        self.session.encoding.send_modify(|set| {
            set.remove(&self.seq);
        });
    }
}

/// `bytes` in KiB, rounded up.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}
