//! Reading many contents at once, pack by pack: what a restore of many items needs.
//!
//! [`Repository::read_content`] reads one content in order, so restoring thousands of small
//! items makes one ranged read per item, and a blob two items share is read and decoded twice.
//! [`Repository::read_contents`] plans the reads for all of them first: it groups the blobs by
//! pack, reads each pack's blobs with as few ranged reads as their layout allows, decodes each
//! blob once, and hands every use of it to the caller with its content and offset. This is the
//! order restic's restorer works in (`internal/restorer/filerestorer.go`: packs in order of
//! first use, each blob written to every file offset that holds it).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};

use crate::blob;
use crate::error::Result;
use crate::id::{BlobId, PackId};
use crate::index::{Located, PackInfo};
use crate::pack::pack_path;
use crate::repository::{decode_located, read_stored, RepoInner, Repository};
use crate::snapshot::ContentRef;

/// Largest ranged read [`Repository::read_contents`] makes (stored bytes, gaps included): as
/// `read_content`'s runs. 2 MiB made no measurable difference to the restore time of the
/// vs-restic corpus and raised its peak RSS by 5-13 MiB.
const READ_BYTES: u64 = 1024 * 1024;
/// Bytes between two wanted blobs of a pack that are read rather than split into two reads:
/// fetching a few unwanted bytes costs less than another request.
const MAX_GAP_BYTES: u64 = 64 * 1024;
/// Reads fetched and decoded at once, ahead of the consumer (restore of the vs-restic corpus:
/// 0.79 s with 8, 0.84 s with 4; 12 was no faster).
const READ_AHEAD: usize = 8;
/// Reads whose stored bytes are at most this long are decoded on the async thread (as
/// `read_content` does for small blobs): a hop to the compute pool costs more.
const DECODE_INLINE_BYTES: u64 = 64 * 1024;

/// A piece of one of the contents given to [`Repository::read_contents`]: the plaintext of one
/// blob, at `offset` bytes into content number `content`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentPiece {
    /// Position of the content in the slice given to [`Repository::read_contents`].
    pub content: usize,
    /// Offset of `data` from the start of that content, in bytes.
    pub offset: u64,
    /// The blob's verified plaintext (shared, not copied, between the pieces of one blob).
    pub data: Bytes,
}

/// One distinct blob the contents need, and where each use of it goes.
struct Wanted {
    located: Located,
    /// (content, offset) of each use.
    uses: Vec<(usize, u64)>,
}

/// One ranged read of a pack and the wanted blobs it covers, in pack order.
struct PlannedRead {
    pack: PackInfo,
    range: std::ops::Range<u64>,
    blobs: Vec<Wanted>,
}

impl Repository {
    /// Streams the bytes of all of `contents`, ordered by where they are stored rather than by
    /// content: packs in the order the contents first need them, each pack's wanted blobs
    /// fetched with as few ranged reads as their layout allows (blobs at most 64 KiB apart
    /// share a read of up to 1 MiB), eight reads at once, each yielding its pieces as soon as
    /// it is decoded. Each blob is decoded and its keyed hash verified once, however many
    /// contents (or places in one content) use it; each use is one [`ContentPiece`].
    ///
    /// The pieces of one content do not come in order, but together they cover it exactly
    /// once: write each at its offset. A content without blobs yields no piece.
    ///
    /// Memory: the plan holds about 100 bytes per distinct blob of `contents` (callers
    /// restoring millions of items pass them in batches), plus up to eight reads of 1 MiB and
    /// their decoded blobs.
    ///
    /// # Errors
    /// Every item is an error as for [`Repository::read_content`]: [`crate::Error::BlobNotIndexed`]
    /// (from planning, before any piece), [`crate::Error::MissingObject`] (pack gone),
    /// [`crate::Error::CorruptObject`] naming the pack (hash mismatch, truncation),
    /// [`crate::Error::Backend`]. The stream ends after the first error; pieces already
    /// yielded are sound.
    pub fn read_contents(
        &self,
        contents: &[ContentRef],
    ) -> impl Stream<Item = Result<ContentPiece>> + Send + 'static {
        let inner = self.inner.clone();
        let contents: Vec<Vec<BlobId>> = contents.iter().map(|c| c.blobs.clone()).collect();
        futures::stream::once({
            let inner = inner.clone();
            async move { plan(&inner, &contents).await }
        })
        .map_ok(move |reads| {
            let inner = inner.clone();
            futures::stream::iter(reads)
                .map(move |read| {
                    let inner = inner.clone();
                    async move { fetch(&inner, read).await }
                })
                .buffer_unordered(READ_AHEAD)
        })
        .try_flatten()
        .map_ok(|pieces| futures::stream::iter(pieces.into_iter().map(Ok)))
        .try_flatten()
    }
}

/// Locates every blob of `contents` and groups them into reads: packs in order of first use,
/// blobs in pack order, adjacent ones merged while a read stays within [`READ_BYTES`].
async fn plan(inner: &RepoInner, contents: &[Vec<BlobId>]) -> Result<Vec<PlannedRead>> {
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut slot_of: HashMap<BlobId, usize> = HashMap::new();
    // Packs in order of first use, each with its wanted blobs (slots).
    let mut pack_order: Vec<PackId> = Vec::new();
    let mut pack_blobs: HashMap<PackId, Vec<usize>> = HashMap::new();
    for (content, blobs) in contents.iter().enumerate() {
        let mut offset = 0u64;
        for id in blobs {
            let slot = match slot_of.get(id) {
                Some(&slot) => slot,
                None => {
                    let located = inner.locate_or_refresh(*id).await?;
                    let slot = wanted.len();
                    wanted.push(Wanted {
                        located,
                        uses: Vec::new(),
                    });
                    slot_of.insert(*id, slot);
                    pack_blobs
                        .entry(located.pack.id)
                        .or_insert_with(|| {
                            pack_order.push(located.pack.id);
                            Vec::new()
                        })
                        .push(slot);
                    slot
                }
            };
            wanted[slot].uses.push((content, offset));
            offset += u64::from(wanted[slot].located.entry.raw_len);
        }
    }
    drop(slot_of);
    let mut slots: Vec<Option<Wanted>> = wanted.into_iter().map(Some).collect();
    let mut reads = Vec::new();
    for pack in pack_order {
        let mut in_pack = pack_blobs.remove(&pack).unwrap_or_default();
        in_pack.sort_by_key(|&s| slots[s].as_ref().map(|w| w.located.entry.offset));
        let mut current: Option<PlannedRead> = None;
        for slot in in_pack {
            let blob = slots[slot].take().expect("each slot is planned once");
            let at = blob.located.entry.range();
            match &mut current {
                Some(read)
                    if at.start >= read.range.end
                        && at.start - read.range.end <= MAX_GAP_BYTES
                        && at.end - read.range.start <= READ_BYTES =>
                {
                    read.range.end = at.end;
                    read.blobs.push(blob);
                }
                _ => {
                    reads.extend(current.take());
                    current = Some(PlannedRead {
                        pack: blob.located.pack,
                        range: at,
                        blobs: vec![blob],
                    });
                }
            }
        }
        reads.extend(current);
    }
    Ok(reads)
}

/// Reads one planned range and decodes its blobs (verifying each one's keyed hash), on the
/// compute pool unless the read is small; returns a piece for each use of each blob.
async fn fetch(inner: &Arc<RepoInner>, read: PlannedRead) -> Result<Vec<ContentPiece>> {
    let stored = read_stored(&*inner.store, read.pack, read.range.clone()).await?;
    let inline = read.range.end - read.range.start <= DECODE_INLINE_BYTES;
    let inner = inner.clone();
    let decode = move || -> Result<Vec<ContentPiece>> {
        let path = pack_path(&read.pack.id);
        let mut rest = blob::owned(stored);
        let mut at = read.range.start;
        let mut pieces = Vec::new();
        for wanted in read.blobs {
            let range = wanted.located.entry.range();
            // Skip the gap before this blob (bytes of blobs nobody asked for).
            let _ = rest.split_to((range.start - at) as usize);
            let piece = rest.split_to((range.end - range.start) as usize);
            at = range.end;
            let data = decode_located(&inner.codec, &inner.key, &path, wanted.located, piece)?;
            for (content, offset) in wanted.uses {
                pieces.push(ContentPiece {
                    content,
                    offset,
                    data: data.clone(),
                });
            }
        }
        Ok(pieces)
    };
    if inline {
        decode()
    } else {
        crate::compute::run(decode).await?
    }
}
