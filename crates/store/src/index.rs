//! The index: which pack holds each blob. Index files, and the [`Index`] built from them (an
//! on-disk table with an in-memory filter, see `index_cache.rs`, plus the newest blobs in
//! memory).
//!
//! ```text
//! index object  header (b"MBKI", version, envelope, 0, 0) ‖ zstd(body), sealed if encrypted
//! body          pack_count u32, then per pack:
//!                 pack id 32 bytes, pack size u64, blob_count u32, blob_count × entry (45 bytes)
//! entry         as in the pack trailer: blob id, offset u32, stored_len u32, raw_len u32, compression u8
//! ```
//! The index file's name is the BLAKE3 hash of the object's bytes (as stored).

use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use crate::blob::Compression;
use crate::error::{Error, Result};
use crate::format::{Codec, ObjectKind, Reader};
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId};
use crate::index_cache::{self, CacheLocation, Rec, Run, Slot, Source, Table, TableMeta};
use crate::pack::{BlobEntry, ENTRY_LEN};
use crate::repository::RepoInner;

/// Index files fetched and decoded concurrently by a refresh.
const LIST_CONCURRENCY: usize = 8;

/// Object path of an index file: `index/<64 hex>`.
pub(crate) fn index_path(id: &IndexId) -> Path {
    Path::from(format!("index/{id}"))
}

/// One pack as listed in an index file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IndexPack {
    pub id: PackId,
    pub size: u64,
    pub blobs: Vec<BlobEntry>,
}

/// Encodes an index file; returns its id and bytes.
pub(crate) fn encode_index(
    codec: &Codec,
    packs: &[IndexPack],
    level: i32,
) -> Result<(IndexId, Bytes)> {
    let blob_count: usize = packs.iter().map(|p| p.blobs.len()).sum();
    let mut body = Vec::with_capacity(4 + packs.len() * 44 + blob_count * ENTRY_LEN);
    body.extend_from_slice(&(packs.len() as u32).to_le_bytes());
    for pack in packs {
        body.extend_from_slice(pack.id.as_bytes());
        body.extend_from_slice(&pack.size.to_le_bytes());
        body.extend_from_slice(&(pack.blobs.len() as u32).to_le_bytes());
        for blob in &pack.blobs {
            blob.encode(&mut body);
        }
    }
    let compressed = zstd::bulk::compress(&body, level).map_err(|e| Error::Internal {
        detail: format!("zstd failed on an index file: {e}"),
    })?;
    let out = codec.encode(ObjectKind::Index, &compressed);
    let id = IndexId::from_bytes(*blake3::hash(&out).as_bytes());
    Ok((id, Bytes::from(out)))
}

/// Decodes and verifies an index file.
///
/// # Errors
/// [`Error::CorruptObject`] if the bytes do not hash to `id`, fail authentication or do not
/// parse.
pub(crate) fn decode_index(codec: &Codec, id: &IndexId, bytes: &[u8]) -> Result<Vec<IndexPack>> {
    let name = index_path(id).to_string();
    let corrupt = |detail: String| Error::CorruptObject {
        kind: "index",
        name: name.clone(),
        detail,
    };
    codec.check_header(ObjectKind::Index, &name, bytes)?;
    if blake3::hash(bytes).as_bytes() != id.as_bytes() {
        return Err(corrupt("content does not hash to its name".to_owned()));
    }
    let body = codec.decode(ObjectKind::Index, &name, bytes)?;
    let body = zstd::stream::decode_all(&*body).map_err(|e| corrupt(format!("zstd: {e}")))?;
    let mut r = Reader::new(&body);
    let short = || corrupt("cut short".to_owned());
    let pack_count = r.u32().ok_or_else(short)?;
    let mut packs = Vec::with_capacity(pack_count.min(1 << 20) as usize);
    for _ in 0..pack_count {
        let pack_id = PackId::from_bytes(r.array().ok_or_else(short)?);
        let size = r.u64().ok_or_else(short)?;
        let n = r.u32().ok_or_else(short)? as usize;
        if r.remaining() < n * ENTRY_LEN {
            return Err(short());
        }
        let mut blobs = Vec::with_capacity(n);
        for _ in 0..n {
            blobs.push(BlobEntry::decode(&mut r).map_err(&corrupt)?);
        }
        packs.push(IndexPack {
            id: pack_id,
            size,
            blobs,
        });
    }
    if r.remaining() != 0 {
        return Err(corrupt(format!("{} trailing bytes", r.remaining())));
    }
    Ok(packs)
}

/// A pack known to the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PackInfo {
    pub id: PackId,
    pub size: u64,
}

/// A resolved blob location.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    pub pack: PackInfo,
    pub entry: BlobEntry,
}

/// Blobs held in memory (about 64 bytes each) before they are merged into the on-disk table.
#[cfg(not(test))]
pub(crate) const DELTA_LIMIT: usize = 256 * 1024;
/// Small in unit tests, so that a few thousand blobs take every path.
#[cfg(test)]
pub(crate) const DELTA_LIMIT: usize = 1500;
/// Records a load holds in memory before it spills a sorted run to a scratch file.
#[cfg(not(test))]
pub(crate) const RUN_LIMIT: usize = 512 * 1024;
#[cfg(test)]
pub(crate) const RUN_LIMIT: usize = 1000;
/// With a persistent cache, this many new index files found at a refresh are merged into the
/// cache file at once rather than read again by the next run.
pub(crate) const PERSIST_MIN_FILES: usize = 64;

fn slot_of(pack: u32, b: &BlobEntry) -> Slot {
    Slot {
        pack,
        offset: b.offset,
        stored_len: b.stored_len,
        raw_len: b.raw_len,
        compression: b.compression,
    }
}

fn entry_of(id: BlobId, slot: &Slot) -> BlobEntry {
    BlobEntry {
        id,
        offset: slot.offset,
        stored_len: slot.stored_len,
        raw_len: slot.raw_len,
        compression: slot.compression,
    }
}

/// The index: blob id → pack and position, for every index file merged so far.
///
/// Blobs live in an on-disk [`Table`] (the local index cache; see `index_cache.rs`) probed
/// through an in-memory Bloom filter, plus an in-memory map (the *delta*) of at most about
/// [`DELTA_LIMIT`] blobs added since the table was written. Memory: ~1.6 bytes per blob in the
/// table, ~64 per blob in the delta, ~80 per pack.
///
/// Changes that add packs or replace the table are made by one task at a time (the
/// repository's index refresh lock), so pack numbers stay stable.
#[derive(Default, Debug)]
pub(crate) struct Index {
    packs: Vec<PackInfo>,
    pack_pos: IdMap<PackId, u32>,
    pub(crate) table: Option<Arc<Table>>,
    /// Index files whose blobs are all in `table`.
    table_files: IdSet<IndexId>,
    /// Blobs not in `table`.
    delta: IdMap<BlobId, Slot>,
    /// Index files merged since `table` was written.
    delta_files: IdSet<IndexId>,
    location: CacheLocation,
    /// The persistent cache file was looked at (loaded, or found missing or unusable).
    pub(crate) cache_opened: bool,
    /// Writing the cache failed once: keep everything in memory from now on.
    pub(crate) in_memory_only: bool,
}

impl Index {
    /// An empty index with the same cache settings, for a rebuild.
    pub(crate) fn emptied(&self) -> Self {
        Index {
            location: self.location.clone(),
            cache_opened: true,
            in_memory_only: self.in_memory_only,
            ..Index::default()
        }
    }

    pub(crate) fn location(&self) -> &CacheLocation {
        &self.location
    }

    /// Where later tables go; a persistent location not yet looked at is opened at the next
    /// refresh.
    pub(crate) fn set_location(&mut self, location: CacheLocation) {
        if location != self.location {
            self.location = location;
            self.cache_opened = false;
        }
    }

    fn pack_number(&mut self, id: PackId, size: u64) -> u32 {
        *self.pack_pos.entry(id).or_insert_with(|| {
            self.packs.push(PackInfo { id, size });
            (self.packs.len() - 1) as u32
        })
    }

    /// Adds a pack's blobs to the in-memory delta; a blob already indexed keeps its first
    /// location.
    pub(crate) fn add_pack(&mut self, pack: &IndexPack) {
        let pos = self.pack_number(pack.id, pack.size);
        for b in &pack.blobs {
            if !self.contains(&b.id) {
                self.delta.insert(b.id, slot_of(pos, b));
            }
        }
    }

    /// Records that index file `id` has been merged.
    pub(crate) fn mark_file(&mut self, id: IndexId) {
        if !self.table_files.contains(&id) {
            self.delta_files.insert(id);
        }
    }

    pub(crate) fn has_file(&self, id: &IndexId) -> bool {
        self.table_files.contains(id) || self.delta_files.contains(id)
    }

    /// Every index file merged.
    pub(crate) fn files(&self) -> impl Iterator<Item = &IndexId> {
        self.table_files.iter().chain(self.delta_files.iter())
    }

    fn slot(&self, id: &BlobId) -> Option<Slot> {
        if let Some(slot) = self.delta.get(id) {
            return Some(*slot);
        }
        let slot = self.table.as_ref()?.get(id)?;
        // A record naming a pack the table does not list is damage, not a location.
        ((slot.pack as usize) < self.packs.len()).then_some(slot)
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.slot(id).is_some()
    }

    pub(crate) fn get(&self, id: &BlobId) -> Option<Located> {
        let slot = self.slot(id)?;
        Some(Located {
            pack: self.packs[slot.pack as usize],
            entry: entry_of(*id, &slot),
        })
    }

    pub(crate) fn blob_count(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.len() as usize) + self.delta.len()
    }

    /// Blobs in the in-memory delta.
    pub(crate) fn delta_len(&self) -> usize {
        self.delta.len()
    }

    /// True if the on-disk table failed a check since it was opened: rebuild.
    pub(crate) fn is_damaged(&self) -> bool {
        self.table.as_ref().is_some_and(|t| t.is_damaged())
    }

    /// Bytes of memory held for blobs: the table's filter, fences and sums, and the delta.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.table.as_ref().map_or(0, |t| t.memory_bytes())
            + self.delta.capacity() * (std::mem::size_of::<(BlobId, Slot)>() + 1)
    }

    pub(crate) fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    pub(crate) fn pack(&self, id: &PackId) -> Option<PackInfo> {
        self.pack_pos.get(id).map(|&p| self.packs[p as usize])
    }

    /// The blobs of each pack, in offset order (indexed like [`Index::packs`]). Reads the
    /// whole on-disk table; a damaged page ends the read there (logged, table marked damaged).
    pub(crate) fn entries_by_pack(&self) -> Vec<Vec<BlobEntry>> {
        let mut out = vec![Vec::new(); self.packs.len()];
        if let Some(table) = &self.table {
            for rec in table.iter() {
                match rec {
                    Ok((id, slot)) => {
                        if let Some(entries) = out.get_mut(slot.pack as usize) {
                            entries.push(entry_of(id, &slot));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the local index cache failed");
                        break;
                    }
                }
            }
        }
        for (id, slot) in &self.delta {
            out[slot.pack as usize].push(entry_of(*id, slot));
        }
        for entries in &mut out {
            entries.sort_by_key(|e| e.offset);
        }
        out
    }

    /// Takes a table opened from the persistent cache. Only on an empty index.
    pub(crate) fn install_cached(&mut self, table: Table, meta: TableMeta) {
        debug_assert!(self.packs.is_empty() && self.delta.is_empty());
        for p in &meta.packs {
            self.pack_number(p.id, p.size);
        }
        self.table_files = meta.files.into_iter().collect();
        self.table = Some(Arc::new(table));
    }

    /// Registers the packs of `load` (numbered when it was started from this index).
    ///
    /// # Errors
    /// [`Error::Internal`] if packs were added meanwhile (the refresh lock was not held).
    fn register_packs(&mut self, load: &IndexLoad) -> Result<()> {
        if self.packs.len() as u32 != load.first_pack {
            return Err(Error::Internal {
                detail: "index packs changed during a load".to_owned(),
            });
        }
        for p in &load.packs {
            self.pack_number(p.id, p.size);
        }
        Ok(())
    }

    /// Adds everything `load` read to the in-memory delta (reading back any spilled runs).
    ///
    /// # Errors
    /// [`Error::Internal`] as [`Index::register_packs`]; [`Error::Io`] if a spilled run cannot
    /// be read back.
    pub(crate) fn apply_in_memory(&mut self, load: IndexLoad) -> Result<()> {
        self.register_packs(&load)?;
        for run in &load.runs {
            for rec in run.iter() {
                let (id, slot) = rec.map_err(|detail| Error::Internal { detail })?;
                if !self.contains(&id) {
                    self.delta.insert(id, slot);
                }
            }
        }
        for (id, slot) in load.recs {
            if !self.contains(&id) {
                self.delta.insert(id, slot);
            }
        }
        for f in load.files {
            self.mark_file(f);
        }
        Ok(())
    }

    /// Everything needed to write a new table holding the current table, the delta and
    /// `load`, without holding the index lock. Registers `load`'s packs first.
    ///
    /// # Errors
    /// As [`Index::register_packs`].
    pub(crate) fn merge_job(&mut self, load: IndexLoad, repo_id: &str) -> Result<MergeJob> {
        self.register_packs(&load)?;
        let delta: Vec<Rec> = self.delta.iter().map(|(k, v)| (*k, *v)).collect();
        let capacity = self.blob_count() as u64 + load.total;
        let files = self
            .files()
            .copied()
            .chain(load.files.iter().copied())
            .collect();
        Ok(MergeJob {
            old: self.table.clone(),
            delta,
            load,
            capacity,
            meta: TableMeta {
                files,
                packs: self.packs.clone(),
            },
            location: self.location.clone(),
            repo_id: repo_id.to_owned(),
        })
    }

    /// Replaces table and delta by the table `job` wrote. The delta may only have grown
    /// since [`Index::merge_job`] with blobs the new table also holds (none: changes are
    /// serialized), so it is cleared.
    pub(crate) fn install_merged(&mut self, job: MergeJob, table: Table) {
        self.table = Some(Arc::new(table));
        self.table_files = job.meta.files.into_iter().collect();
        self.delta = IdMap::default();
        self.delta_files = IdSet::default();
    }
}

/// Index files being read in bulk: their packs (numbered after the index's), their blobs in
/// memory up to [`RUN_LIMIT`], beyond that in sorted runs on disk.
#[derive(Debug)]
pub(crate) struct IndexLoad {
    first_pack: u32,
    packs: Vec<PackInfo>,
    pack_pos: IdMap<PackId, u32>,
    recs: Vec<Rec>,
    runs: Vec<Run>,
    pub(crate) files: Vec<IndexId>,
    /// Blobs read (duplicates included).
    pub(crate) total: u64,
}

impl IndexLoad {
    pub(crate) fn new(index: &Index) -> Self {
        IndexLoad {
            first_pack: index.packs.len() as u32,
            packs: Vec::new(),
            pack_pos: IdMap::default(),
            // Address space only: pages are touched as blobs arrive.
            recs: Vec::with_capacity(RUN_LIMIT + RUN_LIMIT / 8),
            runs: Vec::new(),
            files: Vec::new(),
            total: 0,
        }
    }

    /// Adds one index file's packs and blobs.
    pub(crate) fn add_file(&mut self, index: &Index, id: IndexId, packs: &[IndexPack]) {
        for pack in packs {
            let pos = match index.pack_pos.get(&pack.id) {
                Some(&p) => p,
                None => *self.pack_pos.entry(pack.id).or_insert_with(|| {
                    self.packs.push(PackInfo {
                        id: pack.id,
                        size: pack.size,
                    });
                    self.first_pack + self.packs.len() as u32 - 1
                }),
            };
            self.recs
                .extend(pack.blobs.iter().map(|b| (b.id, slot_of(pos, b))));
            self.total += pack.blobs.len() as u64;
        }
        self.files.push(id);
    }

    /// True when the blobs held in memory should be spilled with [`IndexLoad::take_recs`].
    pub(crate) fn should_spill(&self) -> bool {
        self.recs.len() >= RUN_LIMIT
    }

    pub(crate) fn take_recs(&mut self) -> Vec<Rec> {
        // Room for one more run plus a large index file, so the buffer does not double.
        std::mem::replace(
            &mut self.recs,
            Vec::with_capacity(RUN_LIMIT + RUN_LIMIT / 8),
        )
    }

    /// Puts back blobs that could not be spilled.
    pub(crate) fn restore_recs(&mut self, recs: Vec<Rec>) {
        self.recs = recs;
    }

    pub(crate) fn push_run(&mut self, run: Run) {
        self.runs.push(run);
    }

    pub(crate) fn has_runs(&self) -> bool {
        !self.runs.is_empty()
    }
}

/// A table rewrite prepared by [`Index::merge_job`]; [`MergeJob::run`] does the blocking work.
#[derive(Debug)]
pub(crate) struct MergeJob {
    old: Option<Arc<Table>>,
    delta: Vec<Rec>,
    load: IndexLoad,
    capacity: u64,
    meta: TableMeta,
    location: CacheLocation,
    repo_id: String,
}

impl MergeJob {
    /// Writes the new table: old table, then delta, then the load's runs and blobs (the first
    /// location of a blob wins). Blocking I/O: run off the async threads.
    ///
    /// # Errors
    /// A sentence naming what failed; the job can then be undone with
    /// [`MergeJob::into_load`] and [`Index::apply_in_memory`].
    pub(crate) fn run(&mut self) -> std::result::Result<Table, String> {
        self.delta.sort_unstable_by_key(|r| r.0);
        // Equal ids within one load name equally valid copies: any may win.
        self.load.recs.sort_unstable_by_key(|r| r.0);
        let mut sources: Vec<Source<'_>> = Vec::new();
        if let Some(old) = &self.old {
            sources.push(Box::new(old.iter()));
        }
        sources.push(Box::new(self.delta.iter().copied().map(Ok)));
        for run in &self.load.runs {
            sources.push(Box::new(run.iter()));
        }
        sources.push(Box::new(self.load.recs.iter().copied().map(Ok)));
        index_cache::merge(
            &self.location,
            &self.repo_id,
            sources,
            self.capacity,
            &self.meta,
        )
    }

    /// The load, to apply in memory after a failed [`MergeJob::run`]. Its packs are already
    /// registered.
    pub(crate) fn into_load(self) -> IndexLoad {
        let mut load = self.load;
        load.first_pack += load.packs.len() as u32;
        load.packs.clear();
        load
    }
}

impl crate::repository::Repository {
    /// Keeps this repository's local index cache in `dir`: the file
    /// `<dir>/<repository id>.index` (mode 0600; `dir` is created with mode 0700), derived
    /// from the repository's index files and reused by later runs. `None` (the default): the
    /// cache lives in an unlinked file in the system's temporary directory and is rebuilt by
    /// every process. Either way the index needs about 1.6 bytes of memory per blob, not ~60.
    ///
    /// Takes effect at the next index refresh (`begin_backup`, or a read of a blob not yet
    /// indexed). The repository stays the source of truth: a cache that is missing, damaged,
    /// made for another repository, or lists index files that are gone is rebuilt (with a
    /// warning when damaged).
    ///
    /// The cache holds blob ids (keyed hashes, not content) and their pack locations: in an
    /// encrypted repository, keep it where only the backup operator can read it.
    pub fn set_index_cache_dir(&self, dir: Option<std::path::PathBuf>) {
        *self
            .inner
            .index_location
            .lock()
            .expect("index location lock") = match dir {
            Some(dir) => CacheLocation::Dir(dir),
            None => CacheLocation::Temporary,
        };
    }

    /// The persistent index cache file, if [`Repository::set_index_cache_dir`] set a directory.
    pub fn index_cache_file(&self) -> Option<std::path::PathBuf> {
        self.inner
            .index_location
            .lock()
            .expect("index location lock")
            .file(&self.inner.config.id)
    }
}

/// `$XDG_CACHE_HOME/m365bk`, else `$HOME/.cache/m365bk`: the conventional place for
/// [`Repository::set_index_cache_dir`](crate::Repository::set_index_cache_dir) when no other
/// is configured. `None` if neither variable is set to an absolute path.
pub fn default_cache_dir() -> Option<std::path::PathBuf> {
    let absolute = |v: std::ffi::OsString| {
        let p = std::path::PathBuf::from(v);
        p.is_absolute().then_some(p)
    };
    std::env::var_os("XDG_CACHE_HOME")
        .and_then(absolute)
        .or_else(|| {
            std::env::var_os("HOME")
                .and_then(absolute)
                .map(|h| h.join(".cache"))
        })
        .map(|d| d.join("m365bk"))
}

impl RepoInner {
    /// Brings the index up to date with the repository's `index/` listing. Callers hold
    /// `index_refresh`.
    ///
    /// First use of a persistent cache: open it (if it covers only index files that still
    /// exist). A damaged table, or an index file the index covers that is gone (prune), means
    /// a rebuild from scratch. New index files are read 8 at a time; their blobs go to the
    /// in-memory delta when few, or are merged with the table into a new table (sorted runs
    /// of [`RUN_LIMIT`] blobs spilled to scratch files keep a large load's memory bounded).
    ///
    /// # Errors
    /// The first damaged or unreadable index file ([`Error::CorruptObject`],
    /// [`Error::MissingObject`], [`Error::Backend`]). Failing to write the local cache is not
    /// an error: the index then stays in memory (warned).
    /// Reads and decodes one index file (decoding on the blocking pool).
    ///
    /// # Errors
    /// [`Error::Backend`] if it cannot be read, [`Error::CorruptObject`] (from
    /// [`decode_index`]) if its bytes do not match its name or do not parse.
    pub(crate) async fn read_index_file(&self, id: IndexId) -> Result<Vec<IndexPack>> {
        let bytes = self.get("index", &index_path(&id)).await?;
        let codec = self.codec.clone();
        tokio::task::spawn_blocking(move || decode_index(&codec, &id, &bytes))
            .await
            .map_err(Error::join)?
    }

    pub(crate) async fn refresh_index_locked(&self) -> Result<()> {
        let listed: IdSet<IndexId> = self
            .list_names("index")
            .await?
            .into_iter()
            .filter_map(|(name, _)| name.parse().ok())
            .collect();
        self.open_index_cache(&listed).await;
        let (new, mut load, location, in_memory_only, has_table) = {
            let index = self.index.read().expect("index lock");
            let new: Vec<IndexId> = listed
                .iter()
                .filter(|id| !index.has_file(id))
                .copied()
                .collect();
            (
                new,
                IndexLoad::new(&index),
                index.location().clone(),
                index.in_memory_only,
                index.table.is_some(),
            )
        };
        if new.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let mut spill_failed = in_memory_only;
        {
            let mut files = futures::stream::iter(new)
                .map(|id| async move { Ok::<_, Error>((id, self.read_index_file(id).await?)) })
                .buffer_unordered(LIST_CONCURRENCY);
            while let Some((id, packs)) = files.try_next().await? {
                load.add_file(&self.index.read().expect("index lock"), id, &packs);
                if !spill_failed && load.should_spill() {
                    let recs = load.take_recs();
                    let loc = location.clone();
                    match tokio::task::spawn_blocking(move || Run::write(&loc, recs))
                        .await
                        .map_err(Error::join)?
                    {
                        Ok(run) => load.push_run(run),
                        Err((e, recs)) => {
                            tracing::warn!(error = %e, "cannot write a scratch file for the index: keeping it in memory (more RAM)");
                            load.restore_recs(recs);
                            spill_failed = true;
                        }
                    }
                }
            }
        }
        let files = load.files.len();
        let delta_len = self.index.read().expect("index lock").delta_len();
        let persistent = matches!(location, CacheLocation::Dir(_));
        let merge = !spill_failed
            && (load.has_runs()
                || load.total as usize + delta_len > DELTA_LIMIT
                || (persistent && (!has_table || files >= PERSIST_MIN_FILES)));
        if merge {
            self.merge_index(load).await?;
        } else {
            self.index
                .write()
                .expect("index lock")
                .apply_in_memory(load)?;
        }
        let index = self.index.read().expect("index lock");
        tracing::debug!(
            files,
            blobs = index.blob_count(),
            in_memory = index.delta_len(),
            packs = index.packs().len(),
            index_memory_bytes = index.memory_bytes(),
            seconds = started.elapsed().as_secs_f64(),
            "index loaded"
        );
        Ok(())
    }

    /// Writes the index's table anew with the delta and `load` merged in, off the async
    /// threads. If the cache cannot be written, warns and keeps everything in memory.
    /// Callers hold `index_refresh`.
    ///
    /// # Errors
    /// [`Error::Internal`] if the refresh lock was not held.
    pub(crate) async fn merge_index(&self, load: IndexLoad) -> Result<()> {
        let mut job = self
            .index
            .write()
            .expect("index lock")
            .merge_job(load, &self.config.id)?;
        let (job, result) = tokio::task::spawn_blocking(move || {
            let result = job.run();
            (job, result)
        })
        .await
        .map_err(Error::join)?;
        let mut index = self.index.write().expect("index lock");
        match result {
            Ok(table) => {
                index.install_merged(job, table);
                tracing::debug!(blobs = index.blob_count(), "index cache written");
            }
            Err(detail) => {
                tracing::warn!(
                    %detail,
                    "cannot write the local index cache: keeping the index in memory for this \
                     run (about 64 bytes per blob). Make the cache directory writable or give \
                     another one"
                );
                index.in_memory_only = true;
                index.apply_in_memory(job.into_load())?;
            }
        }
        Ok(())
    }

    /// Called after blobs were added to the in-memory delta (a session's own index file):
    /// merges it into the table once it exceeds [`DELTA_LIMIT`]. Callers hold
    /// `index_refresh`.
    ///
    /// # Errors
    /// As [`RepoInner::merge_index`].
    pub(crate) async fn index_grew(&self) -> Result<()> {
        let load = {
            let index = self.index.read().expect("index lock");
            if index.in_memory_only || index.delta_len() <= DELTA_LIMIT {
                return Ok(());
            }
            IndexLoad::new(&index)
        };
        self.merge_index(load).await
    }

    /// Applies the cache directory setting; on first use opens the persistent table. Starts
    /// over (an empty index) if the table is damaged or covers an index file not `listed`.
    async fn open_index_cache(&self, listed: &IdSet<IndexId>) {
        let wanted = self
            .index_location
            .lock()
            .expect("index location lock")
            .clone();
        let path = {
            let mut index = self.index.write().expect("index lock");
            index.set_location(wanted);
            if index.is_damaged() {
                tracing::warn!(
                    "rebuilding the damaged local index cache from the repository's index files"
                );
                *index = index.emptied();
            }
            let gone = index.files().filter(|f| !listed.contains(f)).count();
            if gone > 0 {
                tracing::info!(
                    gone,
                    "index files were removed from the repository (prune): rebuilding the index"
                );
                *index = index.emptied();
            }
            if index.cache_opened {
                return;
            }
            index.cache_opened = true;
            if index.blob_count() > 0 || index.files().next().is_some() {
                return;
            }
            match index.location().file(&self.config.id) {
                Some(path) => path,
                None => return,
            }
        };
        let mut repo_id = [0u8; 32];
        if hex::decode_to_slice(&self.config.id, &mut repo_id).is_err() {
            return;
        }
        let open_path = path.clone();
        let repo_hex = self.config.id.clone();
        let opened = tokio::task::spawn_blocking(move || {
            if let Some(dir) = open_path.parent() {
                let removed = index_cache::remove_stale_temp_files(dir, &repo_hex);
                if removed > 0 {
                    tracing::info!(
                        removed,
                        "removed index cache files left by an interrupted run"
                    );
                }
            }
            Table::open(&open_path, &repo_id)
        })
        .await;
        let cache = path.display().to_string();
        match opened {
            Ok(Ok(Some((table, meta)))) => {
                let gone = meta.files.iter().filter(|f| !listed.contains(f)).count();
                if gone > 0 {
                    tracing::info!(%cache, gone, "the local index cache lists index files no longer in the repository (a prune or repair replaced them): rebuilding it");
                    return;
                }
                let mut index = self.index.write().expect("index lock");
                if index.blob_count() == 0 && index.files().next().is_none() {
                    index.install_cached(table, meta);
                    tracing::debug!(%cache, blobs = index.blob_count(), "local index cache opened");
                }
            }
            Ok(Ok(None)) => {
                tracing::info!(%cache, "no local index cache yet: building it from the repository's index files");
            }
            Ok(Err(detail)) => {
                tracing::warn!(%cache, %detail, "ignoring the local index cache: rebuilding it from the repository's index files");
            }
            Err(e) => {
                tracing::warn!(%cache, error = %e, "opening the local index cache failed: rebuilding it");
            }
        }
    }
}

/// One blob of a synthetic index file written by [`Repository::write_index_for_bench`]:
/// blob id, offset in the pack, stored length (raw length equal, uncompressed).
#[doc(hidden)]
pub type BenchBlob = (BlobId, u32, u32);

impl crate::repository::Repository {
    /// For benchmarks only (`benches/index_scale.rs`): writes one index file listing `packs`
    /// (pack id, pack size in bytes, blobs) without writing the packs, so a repository with
    /// millions of indexed blobs can be made in seconds. Such a repository fails `check`.
    ///
    /// # Errors
    /// [`Error::Backend`] if the index file cannot be written.
    #[doc(hidden)]
    pub async fn write_index_for_bench(
        &self,
        packs: Vec<(PackId, u64, Vec<BenchBlob>)>,
    ) -> Result<IndexId> {
        let inner = &self.inner;
        let packs: Vec<IndexPack> = packs
            .into_iter()
            .map(|(id, size, blobs)| IndexPack {
                id,
                size,
                blobs: blobs
                    .into_iter()
                    .map(|(id, offset, len)| BlobEntry {
                        id,
                        offset,
                        stored_len: len,
                        raw_len: len,
                        compression: Compression::None,
                    })
                    .collect(),
            })
            .collect();
        let codec = inner.codec.clone();
        let level = inner.config.compression.level;
        let (id, bytes) = tokio::task::spawn_blocking(move || encode_index(&codec, &packs, level))
            .await
            .map_err(Error::join)??;
        inner
            .put_new(&index_path(&id), object_store::PutPayload::from(bytes))
            .await?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;

    fn entry(n: u8, offset: u32) -> BlobEntry {
        BlobEntry {
            id: BlobId::from_bytes([n; 32]),
            offset,
            stored_len: 10,
            raw_len: 20,
            compression: Compression::Zstd,
        }
    }

    #[test]
    fn index_file_round_trip_and_hash_check() {
        let packs = vec![
            IndexPack {
                id: PackId::from_bytes([1; 32]),
                size: 100,
                blobs: vec![entry(1, 8), entry(2, 18)],
            },
            IndexPack {
                id: PackId::from_bytes([2; 32]),
                size: 50,
                blobs: vec![entry(3, 8)],
            },
        ];
        let codec = Codec::plain(crate::format::FORMAT_VERSION);
        let (id, bytes) = encode_index(&codec, &packs, 3).unwrap();
        assert_eq!(&bytes[..4], b"MBKI");
        assert_eq!(decode_index(&codec, &id, &bytes).unwrap(), packs);

        let sealed = Codec::sealed(crate::crypto::SealingKey::xchacha(
            &crate::crypto::random_key(),
        ));
        let (sealed_id, sealed_bytes) = encode_index(&sealed, &packs, 3).unwrap();
        assert_eq!(
            decode_index(&sealed, &sealed_id, &sealed_bytes).unwrap(),
            packs
        );
        let (again_id, _) = encode_index(&sealed, &packs, 3).unwrap();
        assert_ne!(again_id, sealed_id, "fresh nonce, new name");

        let mut damaged = bytes.to_vec();
        damaged[10] ^= 1;
        let err = decode_index(&codec, &id, &damaged).unwrap_err();
        assert!(
            err.to_string().contains("does not hash to its name"),
            "{err}"
        );
        assert!(err.to_string().contains(&format!("index/{id}")), "{err}");

        let mut index = Index::default();
        for p in &packs {
            index.add_pack(p);
        }
        assert_eq!(index.blob_count(), 3);
        let loc = index.get(&BlobId::from_bytes([2; 32])).unwrap();
        assert_eq!(loc.pack.size, 100);
        assert_eq!(loc.entry.offset, 18);
        assert_eq!(index.entries_by_pack()[0].len(), 2);
    }

    use crate::repository::{Encryption, InitOptions, Repository};
    use crate::KdfParams;

    fn plain() -> InitOptions {
        InitOptions::no_encryption()
    }

    fn encrypted() -> InitOptions {
        InitOptions {
            encryption: Encryption::Passphrase("index cache test".into()),
            kdf: KdfParams {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
            },
            cipher: Default::default(),
        }
    }

    /// Writes `files` synthetic index files of 2 packs × `per_pack` blobs; returns every
    /// (blob, pack, offset) listed.
    async fn synthetic(
        repo: &Repository,
        files: usize,
        per_pack: usize,
        seed: u64,
    ) -> Vec<(BlobId, PackId, u32)> {
        let mut all = Vec::new();
        for f in 0..files {
            let mut packs = Vec::new();
            for p in 0..2u64 {
                let pack = PackId::from_bytes(
                    *blake3::hash(&[seed, f as u64, p].map(u64::to_le_bytes).concat()).as_bytes(),
                );
                let blobs: Vec<BenchBlob> = (0..per_pack)
                    .map(|b| {
                        let id = BlobId::from_bytes(
                            *blake3::hash(
                                &[seed, f as u64, p, b as u64 + 1]
                                    .map(u64::to_le_bytes)
                                    .concat(),
                            )
                            .as_bytes(),
                        );
                        (id, 8 + 100 * b as u32, 100)
                    })
                    .collect();
                all.extend(blobs.iter().map(|&(id, off, _)| (id, pack, off)));
                packs.push((pack, 8 + 100 * per_pack as u64, blobs));
            }
            repo.write_index_for_bench(packs).await.unwrap();
        }
        all
    }

    fn assert_all_indexed(repo: &Repository, blobs: &[(BlobId, PackId, u32)]) {
        let index = repo.inner.index.read().unwrap();
        for (id, pack, offset) in blobs {
            let got = index.get(id).unwrap_or_else(|| panic!("{id} not indexed"));
            assert_eq!((got.pack.id, got.entry.offset), (*pack, *offset), "{id}");
        }
    }

    async fn reopen(
        dir: &std::path::Path,
        cache: &std::path::Path,
        opts: &InitOptions,
    ) -> Repository {
        let pass = match &opts.encryption {
            Encryption::Passphrase(p) => Some(p.clone()),
            Encryption::None => None,
        };
        let repo = Repository::open(dir.to_str().unwrap(), pass).await.unwrap();
        repo.set_index_cache_dir(Some(cache.to_owned()));
        repo.inner.refresh_index().await.unwrap();
        repo
    }

    fn cached_files(repo: &Repository) -> Vec<IndexId> {
        let path = repo.index_cache_file().unwrap();
        let mut id = [0u8; 32];
        hex::decode_to_slice(repo.id(), &mut id).unwrap();
        let (_, mut meta) = Table::open(&path, &id).unwrap().expect("a cache file");
        meta.files.sort();
        meta.files
    }

    fn repo_files(dir: &std::path::Path) -> Vec<IndexId> {
        let mut files: Vec<IndexId> = std::fs::read_dir(dir.join("index"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn large_load_spills_runs_merges_and_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().to_str().unwrap(), plain())
            .await
            .unwrap();
        // 12 × 2 × 300 = 7200 blobs: 7 runs of 1000 spilled, then one merge.
        let blobs = synthetic(&repo, 12, 300, 1).await;
        let reader = reopen(dir.path(), cache.path(), &plain()).await;
        assert_all_indexed(&reader, &blobs);
        {
            let index = reader.inner.index.read().unwrap();
            assert_eq!(index.blob_count(), blobs.len());
            assert_eq!(index.delta_len(), 0, "everything went to the table");
            assert!(!index.contains(&BlobId::from_bytes([9; 32])));
            assert_eq!(
                index.entries_by_pack().iter().map(Vec::len).sum::<usize>(),
                blobs.len()
            );
        }
        assert_eq!(cached_files(&reader), repo_files(dir.path()));

        // Another process adds files; the next open takes the cache and reads only those.
        let more = synthetic(&repo, 2, 100, 2).await;
        let again = reopen(dir.path(), cache.path(), &plain()).await;
        {
            let index = again.inner.index.read().unwrap();
            assert_eq!(index.delta_len(), 400, "only the new files were read");
            assert_eq!(index.blob_count(), blobs.len() + 400);
        }
        assert_all_indexed(&again, &blobs);
        assert_all_indexed(&again, &more);

        // The in-memory part is merged into the table once it passes the limit.
        let extra = synthetic(&repo, 3, 300, 3).await;
        again.inner.refresh_index().await.unwrap();
        assert_eq!(again.inner.index.read().unwrap().delta_len(), 0);
        assert_all_indexed(&again, &blobs);
        assert_all_indexed(&again, &more);
        assert_all_indexed(&again, &extra);
        assert_eq!(cached_files(&again), repo_files(dir.path()));
    }

    #[tokio::test]
    async fn deleted_or_corrupt_cache_is_rebuilt_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().to_str().unwrap(), plain())
            .await
            .unwrap();
        let blobs = synthetic(&repo, 3, 200, 4).await;
        let first = reopen(dir.path(), cache.path(), &plain()).await;
        let path = first.index_cache_file().unwrap();
        assert!(path.is_file());
        drop(first);

        std::fs::remove_file(&path).unwrap();
        let rebuilt = reopen(dir.path(), cache.path(), &plain()).await;
        assert_all_indexed(&rebuilt, &blobs);
        assert!(path.is_file(), "rebuilt after deletion");

        // Damage the footer's sections: refused at open, rebuilt.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 200] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let rebuilt = reopen(dir.path(), cache.path(), &plain()).await;
        assert_all_indexed(&rebuilt, &blobs);
        assert_eq!(
            cached_files(&rebuilt),
            repo_files(dir.path()),
            "rewritten whole"
        );

        // Damage a record: pages are checked when read, so the blob counts as absent (a
        // backup would store it again, never assume it present); the next refresh rebuilds.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let damaged = reopen(dir.path(), cache.path(), &plain()).await;
        let mut sorted: Vec<BlobId> = blobs.iter().map(|b| b.0).collect();
        sorted.sort();
        assert!(!damaged.inner.index.read().unwrap().contains(&sorted[0]));
        assert!(damaged.inner.index.read().unwrap().is_damaged());
        damaged.inner.refresh_index().await.unwrap();
        assert_all_indexed(&damaged, &blobs);
        assert!(!damaged.inner.index.read().unwrap().is_damaged());

        // A cache made for another repository with the same file name is refused.
        let other_dir = tempfile::tempdir().unwrap();
        let other = Repository::init(other_dir.path().to_str().unwrap(), plain())
            .await
            .unwrap();
        synthetic(&other, 1, 10, 5).await;
        let other = reopen(other_dir.path(), cache.path(), &plain()).await;
        let other_path = other.index_cache_file().unwrap();
        std::fs::copy(&path, &other_path).unwrap();
        let other = reopen(other_dir.path(), cache.path(), &plain()).await;
        assert_eq!(other.inner.index.read().unwrap().blob_count(), 20);
        assert!(!other.inner.index.read().unwrap().contains(&blobs[0].0));
    }

    #[tokio::test]
    async fn cache_follows_index_files_removed_by_prune() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().to_str().unwrap(), plain())
            .await
            .unwrap();
        let kept = synthetic(&repo, 1, 100, 6).await;
        let files_before = repo_files(dir.path());
        let dropped = synthetic(&repo, 1, 100, 7).await;
        let live = reopen(dir.path(), cache.path(), &plain()).await;
        assert_all_indexed(&live, &dropped);

        let gone = *repo_files(dir.path())
            .iter()
            .find(|f| !files_before.contains(f))
            .unwrap();
        std::fs::remove_file(dir.path().join("index").join(gone.to_hex())).unwrap();

        // A running process notices at its next refresh.
        live.inner.refresh_index().await.unwrap();
        assert_all_indexed(&live, &kept);
        for (id, _, _) in &dropped {
            assert!(
                !live.inner.index.read().unwrap().contains(id),
                "{id} is gone"
            );
        }
        // So does the next process, from the cache file.
        let next = reopen(dir.path(), cache.path(), &plain()).await;
        assert_all_indexed(&next, &kept);
        assert!(!next.inner.index.read().unwrap().contains(&dropped[0].0));
        assert_eq!(cached_files(&next), files_before);
    }

    #[tokio::test]
    async fn encrypted_repository_backup_dedups_through_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let opts = encrypted();
        let repo = Repository::init(dir.path().to_str().unwrap(), opts.clone())
            .await
            .unwrap();
        let marker = b"CONFIDENTIAL-MARKER-".repeat(20_000);
        let backup = repo.begin_backup().await.unwrap();
        let mut w = backup.content_writer();
        w.write(&marker).await.unwrap();
        let content = w.finish().await.unwrap();
        backup.finish().await.unwrap();

        let cache_dir = cache.path().join("made-by-m365bk");
        let reader = reopen(dir.path(), &cache_dir, &opts).await;
        let path = reader.index_cache_file().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(20).any(|w| w == &marker[..20]),
            "no content in the cache"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(&cache_dir).unwrap().permissions().mode() & 0o777,
                0o700
            );
        }
        let backup = reader.begin_backup().await.unwrap();
        assert!(backup.contains(&content));
        let mut w = backup.content_writer();
        w.write(&marker).await.unwrap();
        assert_eq!(w.finish().await.unwrap(), content);
        let stats = backup.finish().await.unwrap();
        assert_eq!(stats.blobs_new, 0, "all deduplicated through the cache");

        let read: Vec<bytes::Bytes> = reader.read_content(&content).try_collect().await.unwrap();
        assert_eq!(read.concat(), marker);
    }

    #[tokio::test]
    async fn session_blobs_are_found_and_the_delta_is_merged_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::init(dir.path().to_str().unwrap(), plain())
            .await
            .unwrap();
        // Temporary cache: a large enough delta still goes to an (unlinked) table.
        let _serial = repo.inner.index_refresh.lock().await;
        let pack = IndexPack {
            id: PackId::from_bytes([3; 32]),
            size: 1 << 20,
            blobs: (0..2000u32)
                .map(|i| BlobEntry {
                    id: BlobId::from_bytes(*blake3::hash(&i.to_le_bytes()).as_bytes()),
                    offset: 8 + i,
                    stored_len: 1,
                    raw_len: 1,
                    compression: Compression::None,
                })
                .collect(),
        };
        repo.inner.index.write().unwrap().add_pack(&pack);
        repo.inner
            .index
            .write()
            .unwrap()
            .mark_file(IndexId::from_bytes([4; 32]));
        repo.inner.index_grew().await.unwrap();
        let index = repo.inner.index.read().unwrap();
        assert_eq!(index.delta_len(), 0);
        assert!(index.table.is_some());
        assert!(index.has_file(&IndexId::from_bytes([4; 32])));
        for b in &pack.blobs {
            assert_eq!(index.get(&b.id).unwrap().entry.offset, b.offset);
        }
    }
}
