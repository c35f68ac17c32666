//! The local index cache: every indexed blob's location in one sorted file on local disk,
//! derived from the repository's index files, with a Bloom filter and page fences in memory.
//!
//! The repository stays the source of truth: the cache records which index files it covers,
//! and is extended when new index files appear and rebuilt when one it covers is gone (prune),
//! is damaged, or was written for another repository or cache version. Memory per indexed
//! blob: 1.25 bytes of filter ([`filter::BITS_PER_ID`] bits) and 0.375 bytes of page fence and
//! checksum, instead of ~60 bytes for an in-memory map; lookups that pass the filter read one
//! 3 KiB page (the OS page cache keeps hot pages).
//!
//! ```text
//! entries  entry_count × record (49 bytes), sorted by blob id, in pages of 64 records
//! record   blob id 32, pack number u32, offset u32, stored_len u32, raw_len u32, compression u8
//! files    file_count × index file id (32 bytes): the index files whose blobs are all here
//! packs    pack_count × { pack id 32, pack size u64 }: pack number n is the n-th
//! filter   filter_blocks × 64 bytes (see filter.rs)
//! fences   page_count × u64: big-endian first 8 bytes of each page's first blob id
//! sums     page_count × 16 bytes: BLAKE3 of the page's records, truncated
//! footer   "MBKX", cache version u32, repository id 32, entry_count u64, file_count u64,
//!          pack_count u64, filter_blocks u64, BLAKE3(files ‖ packs ‖ filter ‖ fences ‖ sums ‖
//!          footer up to here) 32
//! ```
//! All integers little-endian except the fences. `page_count` = ⌈entry_count / 64⌉. Opening
//! checks the length and the footer checksum (everything but the entries); each page is checked
//! against its sum when read, so damage is never trusted: a damaged page answers "not here"
//! (the blob is stored again, never assumed present) and marks the cache for rebuilding.
//!
//! Written to a temporary name (mode 0600), fsynced and renamed into place, so a crash leaves
//! the old cache or the new one (and a temporary file, removed by a later run once it is an
//! hour old). Without a cache directory the same file is made in the
//! system's temporary directory and unlinked at once: memory stays bounded, nothing persists.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::blob::Compression;
use crate::filter::BlobFilter;
use crate::id::{BlobId, IndexId, PackId};
use crate::index::PackInfo;

/// Bytes per record.
pub(crate) const REC_LEN: usize = 32 + 4 * 4 + 1;
/// Records per page: the unit of a lookup read and of a checksum.
pub(crate) const PAGE_ENTRIES: usize = 64;
const PAGE_BYTES: usize = REC_LEN * PAGE_ENTRIES;
const SUM_LEN: usize = 16;
const MAGIC: [u8; 4] = *b"MBKX";
/// Version of this file's layout (not of the repository format).
pub(crate) const CACHE_VERSION: u32 = 1;
const FOOTER_LEN: usize = 4 + 4 + 32 + 8 * 4 + 32;
const PACK_LEN: usize = 32 + 8;
/// Bytes read per call when streaming a table.
const STREAM_PAGES: usize = 256;

/// Where index cache tables are written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum CacheLocation {
    /// An unlinked file in the system's temporary directory: bounded memory, nothing kept.
    #[default]
    Temporary,
    /// `<dir>/<repository id>.index`, kept between runs.
    Dir(PathBuf),
}

impl CacheLocation {
    /// The persistent cache file of repository `repo_id` (hex), if any.
    pub(crate) fn file(&self, repo_id: &str) -> Option<PathBuf> {
        match self {
            CacheLocation::Temporary => None,
            CacheLocation::Dir(dir) => Some(dir.join(format!("{repo_id}.index"))),
        }
    }

    fn scratch_dir(&self) -> PathBuf {
        match self {
            CacheLocation::Temporary => std::env::temp_dir(),
            CacheLocation::Dir(dir) => dir.clone(),
        }
    }
}

/// A blob's location, compactly: the pack as a number in the index's pack list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot {
    pub pack: u32,
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
}

/// One record: a blob id and its slot.
pub(crate) type Rec = (BlobId, Slot);

fn encode_rec((id, slot): &Rec, out: &mut Vec<u8>) {
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(&slot.pack.to_le_bytes());
    out.extend_from_slice(&slot.offset.to_le_bytes());
    out.extend_from_slice(&slot.stored_len.to_le_bytes());
    out.extend_from_slice(&slot.raw_len.to_le_bytes());
    out.push(slot.compression as u8);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn decode_rec(b: &[u8]) -> Option<Rec> {
    let id = BlobId::from_bytes(b[..32].try_into().expect("32 bytes"));
    Some((
        id,
        Slot {
            pack: u32_at(b, 32),
            offset: u32_at(b, 36),
            stored_len: u32_at(b, 40),
            raw_len: u32_at(b, 44),
            compression: Compression::from_u8(b[48])?,
        },
    ))
}

/// Sort key of a blob id that orders like its bytes.
pub(crate) fn prefix(id: &BlobId) -> u64 {
    u64::from_be_bytes(id.as_bytes()[..8].try_into().expect("8 bytes"))
}

fn page_sum(records: &[u8]) -> [u8; SUM_LEN] {
    blake3::hash(records).as_bytes()[..SUM_LEN]
        .try_into()
        .expect("16 bytes")
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_read(file, buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

/// A new scratch file, readable and writable by the owner only (0600). With `unlink`, its
/// name is removed at once (the open handle keeps the data until dropped).
fn scratch_file(dir: &Path, stem: &str, unlink: bool) -> std::io::Result<(File, PathBuf)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    create_private_dir(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let path = dir.join(format!(
        "{stem}.tmp-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let file = opts.open(&path)?;
    if unlink {
        // On Windows an open file cannot be removed: it is left for the OS's temp cleanup.
        let _ = std::fs::remove_file(&path);
    }
    Ok((file, path))
}

/// Temporary names older than this are left by a process that died while writing a table.
const STALE_TEMP_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes `<repo_id_hex>.index.tmp-*` files in `dir` not modified for an hour: tables a
/// killed process was writing. Returns how many were removed; errors are ignored (the files
/// only cost disk space).
pub(crate) fn remove_stale_temp_files(dir: &Path, repo_id_hex: &str) -> usize {
    let prefix = format!("{repo_id_hex}.index.tmp-");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > STALE_TEMP_AGE)
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A sorted run of records spilled to an unlinked scratch file while loading many index files.
#[derive(Debug)]
pub(crate) struct Run {
    file: File,
    len: u64,
}

impl Run {
    /// Sorts `recs` by blob id and writes them. (Of equal ids any one may come first: each
    /// names a valid copy of the blob.)
    ///
    /// # Errors
    /// The I/O error, with the records given back.
    pub(crate) fn write(
        location: &CacheLocation,
        mut recs: Vec<Rec>,
    ) -> Result<Run, (std::io::Error, Vec<Rec>)> {
        recs.sort_unstable_by_key(|r| r.0);
        let written = (|| {
            let (file, _) = scratch_file(&location.scratch_dir(), "index-run", true)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let mut buf = Vec::with_capacity(REC_LEN);
            for rec in &recs {
                buf.clear();
                encode_rec(rec, &mut buf);
                out.write_all(&buf)?;
            }
            out.into_inner().map_err(|e| e.into_error())
        })();
        match written {
            Ok(file) => Ok(Run {
                file,
                len: recs.len() as u64,
            }),
            Err(e) => Err((e, recs)),
        }
    }

    /// The records, in order.
    pub(crate) fn iter(&self) -> RunIter<'_> {
        RunIter {
            run: self,
            buf: Vec::new(),
            pos: 0,
            next: 0,
            failed: false,
        }
    }
}

/// Records of a [`Run`], in order.
pub(crate) struct RunIter<'a> {
    run: &'a Run,
    buf: Vec<u8>,
    pos: usize,
    /// Index of the next record to read from the file.
    next: u64,
    failed: bool,
}

impl Iterator for RunIter<'_> {
    type Item = Result<Rec, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.pos >= self.buf.len() {
            let n = (self.run.len - self.next).min((STREAM_PAGES * PAGE_ENTRIES) as u64);
            if n == 0 {
                return None;
            }
            self.buf.resize(n as usize * REC_LEN, 0);
            if let Err(e) = read_exact_at(&self.run.file, &mut self.buf, self.next * REC_LEN as u64)
            {
                self.failed = true;
                return Some(Err(format!("reading a scratch file: {e}")));
            }
            self.next += n;
            self.pos = 0;
        }
        let rec = decode_rec(&self.buf[self.pos..self.pos + REC_LEN]);
        self.pos += REC_LEN;
        match rec {
            Some(rec) => Some(Ok(rec)),
            None => {
                self.failed = true;
                Some(Err("bad record in a scratch file".to_owned()))
            }
        }
    }
}

/// What a table's footer lists besides the records.
#[derive(Debug, Default)]
pub(crate) struct TableMeta {
    /// Index files whose blobs are all in the table.
    pub files: Vec<IndexId>,
    /// Pack number n is `packs[n]`.
    pub packs: Vec<PackInfo>,
}

/// One on-disk table of records, open for lookups.
pub(crate) struct Table {
    file: File,
    /// For messages: the file's path (the persistent name, or the unlinked scratch name).
    path: PathBuf,
    entries: u64,
    fences: Vec<u64>,
    sums: Vec<[u8; SUM_LEN]>,
    filter: BlobFilter,
    damaged: AtomicBool,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("path", &self.path)
            .field("entries", &self.entries)
            .field("damaged", &self.is_damaged())
            .finish_non_exhaustive()
    }
}

impl Table {
    /// Records in the table.
    pub(crate) fn len(&self) -> u64 {
        self.entries
    }

    /// Bytes of memory the table holds (filter, fences, sums).
    pub(crate) fn memory_bytes(&self) -> usize {
        self.filter.block_count() * crate::filter::BLOCK_BYTES
            + self.fences.len() * 8
            + self.sums.len() * SUM_LEN
    }

    /// True once a page failed its checksum or could not be read: rebuild the cache.
    pub(crate) fn is_damaged(&self) -> bool {
        self.damaged.load(Ordering::Relaxed)
    }

    fn mark_damaged(&self, detail: &str) {
        if !self.damaged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cache = %self.path.display(),
                %detail,
                "the local index cache is damaged: blobs on the damaged page count as absent \
                 (stored again, never assumed present) and the cache is rebuilt from the \
                 repository's index files at the next index refresh"
            );
        }
    }

    /// Opens the persistent table at `path` made for repository `repo_id`. `Ok(None)` if
    /// there is none.
    ///
    /// # Errors
    /// A sentence saying what is wrong (short, wrong checksum, other repository or version),
    /// for a warning; the caller rebuilds the cache.
    pub(crate) fn open(
        path: &Path,
        repo_id: &[u8; 32],
    ) -> Result<Option<(Table, TableMeta)>, String> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open it: {e}")),
        };
        let io = |e: std::io::Error| format!("cannot read it: {e}");
        let len = file.metadata().map_err(io)?.len();
        if len < FOOTER_LEN as u64 {
            return Err(format!("{len} bytes, shorter than its footer: truncated"));
        }
        let mut footer = [0u8; FOOTER_LEN];
        read_exact_at(&file, &mut footer, len - FOOTER_LEN as u64).map_err(io)?;
        if footer[..4] != MAGIC {
            return Err("not an m365bk index cache (wrong magic)".to_owned());
        }
        let version = u32_at(&footer, 4);
        if version != CACHE_VERSION {
            return Err(format!(
                "cache version {version}, this m365bk writes version {CACHE_VERSION}"
            ));
        }
        if footer[8..40] != repo_id[..] {
            return Err("made for another repository".to_owned());
        }
        let entries = u64_at(&footer, 40);
        let file_count = u64_at(&footer, 48);
        let pack_count = u64_at(&footer, 56);
        let filter_blocks = u64_at(&footer, 64);
        let pages = entries.div_ceil(PAGE_ENTRIES as u64);
        let sizes = [
            file_count.checked_mul(32),
            pack_count.checked_mul(PACK_LEN as u64),
            filter_blocks.checked_mul(crate::filter::BLOCK_BYTES as u64),
            pages.checked_mul(8),
            pages.checked_mul(SUM_LEN as u64),
        ];
        let meta_len = sizes
            .iter()
            .try_fold(0u64, |acc, s| acc.checked_add((*s)?))
            .ok_or("sizes in the footer overflow")?;
        let expected = entries
            .checked_mul(REC_LEN as u64)
            .and_then(|e| e.checked_add(meta_len))
            .and_then(|e| e.checked_add(FOOTER_LEN as u64))
            .ok_or("sizes in the footer overflow")?;
        if expected != len {
            return Err(format!(
                "{len} bytes long, its footer says {expected}: truncated or overwritten"
            ));
        }
        let mut meta = vec![0u8; meta_len as usize];
        read_exact_at(&file, &mut meta, entries * REC_LEN as u64).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update(&meta);
        hasher.update(&footer[..FOOTER_LEN - 32]);
        if hasher.finalize().as_bytes()[..] != footer[FOOTER_LEN - 32..] {
            return Err("checksum mismatch: damaged".to_owned());
        }
        let [files_len, packs_len, filter_len, fences_len, _] =
            sizes.map(|s| s.expect("checked") as usize);
        let (files, rest) = meta.split_at(files_len);
        let (packs, rest) = rest.split_at(packs_len);
        let (filter, rest) = rest.split_at(filter_len);
        let (fences, sums) = rest.split_at(fences_len);
        let filter = BlobFilter::from_bytes(filter).ok_or("empty filter")?;
        let table = Table {
            file,
            path: path.to_owned(),
            entries,
            fences: fences
                .chunks_exact(8)
                .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            sums: sums
                .chunks_exact(SUM_LEN)
                .map(|c| c.try_into().expect("16 bytes"))
                .collect(),
            filter,
            damaged: AtomicBool::new(false),
        };
        let meta = TableMeta {
            files: files
                .chunks_exact(32)
                .map(|c| IndexId::from_bytes(c.try_into().expect("32 bytes")))
                .collect(),
            packs: packs
                .chunks_exact(PACK_LEN)
                .map(|c| PackInfo {
                    id: PackId::from_bytes(c[..32].try_into().expect("32 bytes")),
                    size: u64_at(c, 32),
                })
                .collect(),
        };
        Ok(Some((table, meta)))
    }

    fn page_range(&self, page: usize) -> (u64, usize) {
        let first = (page * PAGE_ENTRIES) as u64;
        let n = (self.entries - first).min(PAGE_ENTRIES as u64) as usize;
        (first * REC_LEN as u64, n * REC_LEN)
    }

    /// The slot of `id`, if the table has it. Reads at most a page or two; a page that cannot
    /// be read or fails its checksum counts as not having it (and marks the table damaged).
    pub(crate) fn get(&self, id: &BlobId) -> Option<Slot> {
        if self.entries == 0 || !self.filter.maybe_contains(id) {
            return None;
        }
        let key = prefix(id);
        let mut page = self.fences.partition_point(|&f| f <= key);
        let mut buf = [0u8; PAGE_BYTES];
        while page > 0 {
            page -= 1;
            let (offset, len) = self.page_range(page);
            let records = &mut buf[..len];
            if let Err(e) = read_exact_at(&self.file, records, offset) {
                self.mark_damaged(&format!("page {page}: {e}"));
                return None;
            }
            if page_sum(records) != self.sums[page] {
                self.mark_damaged(&format!("page {page}: checksum mismatch"));
                return None;
            }
            let n = len / REC_LEN;
            let at = |i: usize| &records[i * REC_LEN..(i + 1) * REC_LEN];
            let (mut lo, mut hi) = (0, n);
            while lo < hi {
                let mid = (lo + hi) / 2;
                match at(mid)[..32].cmp(id.as_bytes()) {
                    std::cmp::Ordering::Less => lo = mid + 1,
                    std::cmp::Ordering::Greater => hi = mid,
                    std::cmp::Ordering::Equal => {
                        return match decode_rec(at(mid)) {
                            Some((_, slot)) => Some(slot),
                            None => {
                                self.mark_damaged(&format!("page {page}: bad record"));
                                None
                            }
                        }
                    }
                }
            }
            // Only a page starting with the same prefix can have `id` spill into the one
            // before it.
            if self.fences[page] < key {
                break;
            }
        }
        None
    }

    /// All records, in order, each page checked against its sum.
    pub(crate) fn iter(&self) -> TableIter<'_> {
        TableIter {
            table: self,
            next_page: 0,
            buf: Vec::new(),
            pos: 0,
            failed: false,
        }
    }
}

/// Records of a [`Table`], in order.
pub(crate) struct TableIter<'a> {
    table: &'a Table,
    next_page: usize,
    buf: Vec<u8>,
    pos: usize,
    failed: bool,
}

impl TableIter<'_> {
    fn fill(&mut self) -> Result<bool, String> {
        let pages = self.table.sums.len();
        if self.next_page >= pages {
            return Ok(false);
        }
        let last = (self.next_page + STREAM_PAGES).min(pages);
        let (start, _) = self.table.page_range(self.next_page);
        let (end_off, end_len) = self.table.page_range(last - 1);
        self.buf.resize((end_off - start) as usize + end_len, 0);
        read_exact_at(&self.table.file, &mut self.buf, start)
            .map_err(|e| format!("{}: {e}", self.table.path.display()))?;
        for page in self.next_page..last {
            let (off, len) = self.table.page_range(page);
            let at = (off - start) as usize;
            if page_sum(&self.buf[at..at + len]) != self.table.sums[page] {
                let detail = format!("page {page}: checksum mismatch");
                self.table.mark_damaged(&detail);
                return Err(format!("{}: {detail}", self.table.path.display()));
            }
        }
        self.next_page = last;
        self.pos = 0;
        Ok(true)
    }
}

impl Iterator for TableIter<'_> {
    type Item = Result<Rec, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.pos >= self.buf.len() {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let rec = decode_rec(&self.buf[self.pos..self.pos + REC_LEN]);
        self.pos += REC_LEN;
        match rec {
            Some(rec) => Some(Ok(rec)),
            None => {
                self.failed = true;
                Some(Err(format!("{}: bad record", self.table.path.display())))
            }
        }
    }
}

/// Writes a table: records in ascending id order, then [`TableWriter::finish`].
struct TableWriter {
    out: BufWriter<File>,
    temp: PathBuf,
    target: Option<PathBuf>,
    repo_id: [u8; 32],
    entries: u64,
    page: Vec<u8>,
    fences: Vec<u64>,
    sums: Vec<[u8; SUM_LEN]>,
    filter: BlobFilter,
}

impl TableWriter {
    fn create(
        location: &CacheLocation,
        repo_id_hex: &str,
        repo_id: [u8; 32],
        capacity: u64,
    ) -> std::io::Result<Self> {
        let target = location.file(repo_id_hex);
        let (file, temp) = scratch_file(
            &location.scratch_dir(),
            &format!("{repo_id_hex}.index"),
            target.is_none(),
        )?;
        Ok(TableWriter {
            out: BufWriter::with_capacity(1 << 20, file),
            temp,
            target,
            repo_id,
            entries: 0,
            page: Vec::with_capacity(PAGE_BYTES),
            fences: Vec::with_capacity(capacity.div_ceil(PAGE_ENTRIES as u64) as usize),
            sums: Vec::with_capacity(capacity.div_ceil(PAGE_ENTRIES as u64) as usize),
            filter: BlobFilter::with_capacity(capacity),
        })
    }

    fn push(&mut self, rec: &Rec) -> std::io::Result<()> {
        if self.page.is_empty() {
            self.fences.push(prefix(&rec.0));
        }
        encode_rec(rec, &mut self.page);
        self.filter.insert(&rec.0);
        self.entries += 1;
        if self.page.len() == PAGE_BYTES {
            self.end_page()?;
        }
        Ok(())
    }

    fn end_page(&mut self) -> std::io::Result<()> {
        self.sums.push(page_sum(&self.page));
        self.out.write_all(&self.page)?;
        self.page.clear();
        Ok(())
    }

    fn finish(mut self, meta: &TableMeta) -> std::io::Result<Table> {
        if !self.page.is_empty() {
            self.end_page()?;
        }
        let mut hasher = blake3::Hasher::new();
        let mut section = Vec::with_capacity(64 * 1024);
        let mut emit = |out: &mut BufWriter<File>, section: &mut Vec<u8>| {
            hasher.update(section);
            let r = out.write_all(section);
            section.clear();
            r
        };
        for f in &meta.files {
            section.extend_from_slice(f.as_bytes());
        }
        emit(&mut self.out, &mut section)?;
        for p in &meta.packs {
            section.extend_from_slice(p.id.as_bytes());
            section.extend_from_slice(&p.size.to_le_bytes());
        }
        emit(&mut self.out, &mut section)?;
        self.filter.write_to(&mut section);
        emit(&mut self.out, &mut section)?;
        for f in &self.fences {
            section.extend_from_slice(&f.to_be_bytes());
        }
        emit(&mut self.out, &mut section)?;
        for s in &self.sums {
            section.extend_from_slice(s);
        }
        emit(&mut self.out, &mut section)?;
        section.extend_from_slice(&MAGIC);
        section.extend_from_slice(&CACHE_VERSION.to_le_bytes());
        section.extend_from_slice(&self.repo_id);
        for n in [
            self.entries,
            meta.files.len() as u64,
            meta.packs.len() as u64,
            self.filter.block_count() as u64,
        ] {
            section.extend_from_slice(&n.to_le_bytes());
        }
        hasher.update(&section);
        section.extend_from_slice(hasher.finalize().as_bytes());
        self.out.write_all(&section)?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        let path = match self.target {
            Some(target) => {
                file.sync_all()?;
                std::fs::rename(&self.temp, &target)?;
                #[cfg(unix)]
                if let Some(dir) = target.parent() {
                    File::open(dir)?.sync_all()?;
                }
                target
            }
            None => self.temp,
        };
        Ok(Table {
            file,
            path,
            entries: self.entries,
            fences: self.fences,
            sums: self.sums,
            filter: self.filter,
            damaged: AtomicBool::new(false),
        })
    }
}

/// A source of records in ascending id order.
pub(crate) type Source<'a> = Box<dyn Iterator<Item = Result<Rec, String>> + Send + 'a>;

/// Merges sorted `sources` into a new table at `location`; of records with equal ids the one
/// from the earliest source (then the earliest in it) is kept. `capacity` bounds the record
/// count (it sizes the filter).
///
/// # Errors
/// A sentence naming what failed: writing the table, or reading a source.
pub(crate) fn merge(
    location: &CacheLocation,
    repo_id_hex: &str,
    sources: Vec<Source<'_>>,
    capacity: u64,
    meta: &TableMeta,
) -> Result<Table, String> {
    let mut repo_id = [0u8; 32];
    hex::decode_to_slice(repo_id_hex, &mut repo_id)
        .map_err(|e| format!("repository id {repo_id_hex:?}: {e}"))?;
    let where_ = || match location.file(repo_id_hex) {
        Some(p) => p.display().to_string(),
        None => format!("a scratch file in {}", location.scratch_dir().display()),
    };
    let io = |e: std::io::Error| format!("writing the local index cache ({}): {e}", where_());
    let writer = TableWriter::create(location, repo_id_hex, repo_id, capacity).map_err(io)?;
    let temp = writer.target.is_some().then(|| writer.temp.clone());
    let result = merge_into(writer, sources, meta, &io);
    if let (Err(_), Some(temp)) = (&result, temp) {
        let _ = std::fs::remove_file(temp);
    }
    result
}

fn merge_into(
    mut writer: TableWriter,
    mut sources: Vec<Source<'_>>,
    meta: &TableMeta,
    io: &dyn Fn(std::io::Error) -> String,
) -> Result<Table, String> {
    let mut heads: BinaryHeap<Reverse<(BlobId, usize)>> = BinaryHeap::new();
    let mut current: Vec<Option<Slot>> = vec![None; sources.len()];
    for (i, s) in sources.iter_mut().enumerate() {
        if let Some(rec) = s.next() {
            let (id, slot) = rec?;
            current[i] = Some(slot);
            heads.push(Reverse((id, i)));
        }
    }
    let mut last: Option<BlobId> = None;
    while let Some(Reverse((id, i))) = heads.pop() {
        let slot = current[i].take().expect("a head has a slot");
        if last != Some(id) {
            writer.push(&(id, slot)).map_err(io)?;
            last = Some(id);
        }
        if let Some(rec) = sources[i].next() {
            let (next_id, next_slot) = rec?;
            if next_id < id {
                return Err("a merge source is out of order".to_owned());
            }
            current[i] = Some(next_slot);
            heads.push(Reverse((next_id, i)));
        }
    }
    writer.finish(meta).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seed: u32, pack: u32) -> Rec {
        (
            BlobId::from_bytes(*blake3::hash(&seed.to_le_bytes()).as_bytes()),
            Slot {
                pack,
                offset: seed,
                stored_len: 100,
                raw_len: 200,
                compression: Compression::Zstd,
            },
        )
    }

    fn sorted(mut recs: Vec<Rec>) -> Vec<Rec> {
        recs.sort_by_key(|r| r.0);
        recs
    }

    const REPO: &str = "ab00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn merge_keeps_first_source_and_finds_every_record() {
        let dir = tempfile::tempdir().unwrap();
        let loc = CacheLocation::Dir(dir.path().to_owned());
        let a = sorted((0..1000).map(|i| rec(i, 0)).collect());
        let b = sorted((500..3000).map(|i| rec(i, 1)).collect());
        let run = Run::write(&loc, (2500..4000).map(|i| rec(i, 2)).collect())
            .map_err(|(e, _)| e)
            .unwrap();
        let meta = TableMeta {
            files: vec![IndexId::from_bytes([7; 32])],
            packs: (0..3)
                .map(|i| PackInfo {
                    id: PackId::from_bytes([i; 32]),
                    size: 1000,
                })
                .collect(),
        };
        let sources: Vec<Source<'_>> = vec![
            Box::new(a.clone().into_iter().map(Ok)),
            Box::new(b.into_iter().map(Ok)),
            Box::new(run.iter()),
        ];
        let table = merge(&loc, REPO, sources, 5500, &meta).unwrap();
        assert_eq!(table.len(), 4000);
        for i in 0..4000 {
            let (id, _) = rec(i, 0);
            let want = if i < 1000 {
                0
            } else if i < 3000 {
                1
            } else {
                2
            };
            assert_eq!(table.get(&id).unwrap().pack, want, "record {i}");
        }
        assert!(table.get(&rec(5000, 0).0).is_none());
        let all: Vec<Rec> = table.iter().map(Result::unwrap).collect();
        assert_eq!(all.len(), 4000);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));

        let repo_id: [u8; 32] = hex::decode(REPO).unwrap().try_into().unwrap();
        let path = loc.file(REPO).unwrap();
        let (reopened, got) = Table::open(&path, &repo_id).unwrap().unwrap();
        assert_eq!(got.files, meta.files);
        assert_eq!(got.packs, meta.packs);
        assert_eq!(reopened.get(&rec(3999, 0).0).unwrap().offset, 3999);
        assert!(Table::open(&path, &[0; 32])
            .unwrap_err()
            .contains("another repository"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Only the table is left: scratch runs and temporary names are gone.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn damaged_page_answers_absent_and_marks_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let loc = CacheLocation::Dir(dir.path().to_owned());
        let recs = sorted((0..300).map(|i| rec(i, 0)).collect());
        let meta = TableMeta::default();
        let table = merge(
            &loc,
            REPO,
            vec![Box::new(recs.clone().into_iter().map(Ok))],
            300,
            &meta,
        )
        .unwrap();
        drop(table);
        let path = loc.file(REPO).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[REC_LEN * 70 + 40] ^= 1; // page 1
        std::fs::write(&path, &bytes).unwrap();
        let repo_id: [u8; 32] = hex::decode(REPO).unwrap().try_into().unwrap();
        let (table, _) = Table::open(&path, &repo_id).unwrap().unwrap();
        assert!(!table.is_damaged());
        assert!(
            table.get(&recs[70].0).is_none(),
            "never trust a damaged page"
        );
        assert!(table.is_damaged());
        assert!(table.get(&recs[0].0).is_some(), "other pages still answer");
        assert!(table.iter().any(|r| r.is_err()));

        // A damaged footer section or a cut file is refused at open.
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - FOOTER_LEN - 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(Table::open(&path, &repo_id)
            .unwrap_err()
            .contains("checksum"));
        std::fs::write(&path, &bytes[..n - 10]).unwrap();
        assert!(Table::open(&path, &repo_id).unwrap_err().contains("magic"));
        std::fs::write(&path, &bytes[10..]).unwrap();
        assert!(Table::open(&path, &repo_id)
            .unwrap_err()
            .contains("truncated"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        /// Ids sharing their 8-byte prefix (the page fence) across page boundaries are all
        /// found; ids not written are not.
        #[test]
        fn every_record_found_even_with_shared_prefixes(
            ids in proptest::collection::btree_set((0u8..3, proptest::prelude::any::<[u8; 24]>()), 1..600),
            absent in proptest::collection::vec((0u8..3, proptest::prelude::any::<[u8; 24]>()), 20),
        ) {
            let make = |(p, rest): &(u8, [u8; 24])| {
                let mut b = [*p; 32];
                b[8..].copy_from_slice(rest);
                BlobId::from_bytes(b)
            };
            let recs: Vec<Rec> = ids
                .iter()
                .enumerate()
                .map(|(i, k)| (make(k), Slot { pack: 0, offset: i as u32, stored_len: 1, raw_len: 1, compression: Compression::None }))
                .collect();
            let mut sorted_recs = recs.clone();
            sorted_recs.sort_by_key(|r| r.0);
            let table = merge(&CacheLocation::Temporary, REPO, vec![Box::new(sorted_recs.into_iter().map(Ok))], recs.len() as u64, &TableMeta::default()).unwrap();
            for (id, slot) in &recs {
                proptest::prop_assert_eq!(table.get(id), Some(*slot));
            }
            for k in &absent {
                if !ids.contains(k) {
                    proptest::prop_assert_eq!(table.get(&make(k)), None);
                }
            }
            proptest::prop_assert!(!table.is_damaged());
        }
    }

    #[test]
    fn stale_temporary_names_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!("{REPO}.index.tmp-1-2-3"));
        let fresh = dir.path().join(format!("{REPO}.index.tmp-4-5-6"));
        let other = dir.path().join("ffff.index.tmp-1-2-3");
        for p in [&stale, &fresh, &other] {
            std::fs::write(p, b"partial").unwrap();
        }
        let old = std::time::SystemTime::now() - 2 * STALE_TEMP_AGE;
        for p in [&stale, &other] {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        assert_eq!(remove_stale_temp_files(dir.path(), REPO), 1);
        assert!(!stale.exists() && fresh.exists() && other.exists());
    }

    #[test]
    fn temporary_tables_leave_no_file() {
        let loc = CacheLocation::Temporary;
        let recs = sorted((0..100).map(|i| rec(i, 0)).collect());
        let table = merge(
            &loc,
            REPO,
            vec![Box::new(recs.clone().into_iter().map(Ok))],
            100,
            &TableMeta::default(),
        )
        .unwrap();
        assert!(!table.path.exists());
        assert!(recs.iter().all(|(id, _)| table.get(id).is_some()));
    }
}
