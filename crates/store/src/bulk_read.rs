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
use crate::repository::{
    decode_located, decodes_inline, read_stored, RepoInner, Repository, MAX_RUN_BYTES,
};
use crate::snapshot::ContentRef;

/// Largest ranged read [`Repository::read_contents`] makes (stored bytes, gaps included): the
/// size of `read_content`'s runs. 2 MiB made no measurable difference to the restore time of
/// the vs-restic corpus and raised its peak RSS by 5-13 MiB.
const READ_BYTES: u64 = MAX_RUN_BYTES;
/// Bytes between two wanted blobs of a pack that are read rather than split into two reads:
/// fetching a few unwanted bytes costs less than another request.
const MAX_GAP_BYTES: u64 = 64 * 1024;
/// Reads fetched and decoded at once, ahead of the consumer (restore of the vs-restic corpus:
/// 0.79 s with 8, 0.84 s with 4; 12 was no faster).
const READ_AHEAD: usize = 8;

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
    /// Memory: the plan holds about 300 bytes per distinct blob of `contents` and 32 per use
    /// (callers restoring millions of items pass them in batches), plus up to eight reads of
    /// 1 MiB (or one blob, if larger) and their decoded blobs.
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
        // End at the first error: without this, `try_flatten` passes a read's error on and
        // the reads behind it go on yielding pieces.
        .scan(false, |failed, item| {
            let next = if *failed {
                None
            } else {
                *failed = item.is_err();
                Some(item)
            };
            futures::future::ready(next)
        })
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
    Ok(group_reads(wanted, pack_order, pack_blobs))
}

/// Groups located blobs into reads: packs in `pack_order`, each pack's blobs (`pack_blobs`:
/// indexes into `wanted`) in pack order, a blob joining the read before it when it starts at
/// most [`MAX_GAP_BYTES`] after that read's end and the read stays within [`READ_BYTES`].
fn group_reads(
    wanted: Vec<Wanted>,
    pack_order: Vec<PackId>,
    mut pack_blobs: HashMap<PackId, Vec<usize>>,
) -> Vec<PlannedRead> {
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
    reads
}

/// Reads one planned range and decodes its blobs (verifying each one's keyed hash), on the
/// compute pool unless the read is small; returns a piece for each use of each blob.
async fn fetch(inner: &Arc<RepoInner>, read: PlannedRead) -> Result<Vec<ContentPiece>> {
    let stored = read_stored(&*inner.store, read.pack, read.range.clone()).await?;
    let raw: u64 = read
        .blobs
        .iter()
        .map(|w| u64::from(w.located.entry.raw_len))
        .sum();
    // Decoded on the async thread under the same limits as `read_content`'s small blobs.
    let inline = decodes_inline(read.range.end - read.range.start, raw);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::Compression;
    use crate::pack::BlobEntry;

    const KIB: u32 = 1024;

    fn pack(n: u8) -> PackInfo {
        PackInfo {
            id: PackId::from_bytes([n; 32]),
            size: 64 << 20,
        }
    }

    /// A blob of `stored` bytes at `offset` in `pack`.
    fn at(pack: PackInfo, n: u8, offset: u32, stored: u32) -> Wanted {
        Wanted {
            located: Located {
                pack,
                entry: BlobEntry {
                    id: BlobId::from_bytes([n; 32]),
                    offset,
                    stored_len: stored,
                    raw_len: stored,
                    compression: Compression::None,
                },
            },
            uses: vec![(0, 0)],
        }
    }

    /// The reads as (pack byte, range, blob id bytes).
    fn grouped(wanted: Vec<Wanted>, order: &[u8]) -> Vec<(u8, std::ops::Range<u64>, Vec<u8>)> {
        let mut pack_blobs: HashMap<PackId, Vec<usize>> = HashMap::new();
        for (slot, w) in wanted.iter().enumerate() {
            pack_blobs.entry(w.located.pack.id).or_default().push(slot);
        }
        let order = order.iter().map(|&n| pack(n).id).collect();
        group_reads(wanted, order, pack_blobs)
            .into_iter()
            .map(|r| {
                (
                    r.pack.id.as_bytes()[0],
                    r.range,
                    r.blobs
                        .iter()
                        .map(|w| w.located.entry.id.as_bytes()[0])
                        .collect(),
                )
            })
            .collect()
    }

    #[test]
    fn adjacent_and_near_blobs_share_a_read_far_ones_do_not() {
        let p = pack(1);
        let gap = MAX_GAP_BYTES as u32;
        // Given out of pack order: a read follows the pack, not the order of use.
        let wanted = vec![
            at(p, 3, 300 * KIB + gap, 10 * KIB), // gap of exactly MAX_GAP_BYTES: joins
            at(p, 1, 100 * KIB, 100 * KIB),
            at(p, 2, 200 * KIB, 100 * KIB), // adjacent: joins
            at(p, 4, 310 * KIB + 2 * gap + 1, 10 * KIB), // one byte more: a new read
        ];
        let reads = grouped(wanted, &[1]);
        assert_eq!(
            reads,
            vec![
                (1, 100 * 1024..(310 * KIB + gap) as u64, vec![1, 2, 3]),
                (
                    1,
                    (310 * KIB + 2 * gap + 1) as u64..(320 * KIB + 2 * gap + 1) as u64,
                    vec![4]
                ),
            ]
        );
    }

    #[test]
    fn a_read_stays_within_read_bytes_but_a_larger_blob_is_read_whole() {
        let p = pack(1);
        let quarter = (READ_BYTES / 4) as u32;
        let wanted = vec![
            at(p, 1, 0, quarter),
            at(p, 2, quarter, quarter),
            at(p, 3, 2 * quarter, quarter),
            at(p, 4, 3 * quarter, quarter), // ends exactly at READ_BYTES: joins
            at(p, 5, 4 * quarter, 1),       // one byte over: a new read
            at(p, 6, 4 * quarter + 1, 3 * READ_BYTES as u32), // alone, larger than READ_BYTES
        ];
        let reads = grouped(wanted, &[1]);
        assert_eq!(
            reads.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
            vec![vec![1, 2, 3, 4], vec![5], vec![6]]
        );
        assert_eq!(reads[0].1, 0..READ_BYTES);
        assert_eq!(reads[2].1.end - reads[2].1.start, 3 * READ_BYTES);
    }

    #[test]
    fn packs_come_in_the_order_given() {
        let wanted = vec![
            at(pack(2), 1, 0, 10),
            at(pack(1), 2, 0, 10),
            at(pack(3), 3, 0, 10),
            at(pack(1), 4, 10, 10),
        ];
        let reads = grouped(wanted, &[2, 1, 3]);
        assert_eq!(
            reads,
            vec![
                (2, 0..10, vec![1]),
                (1, 0..20, vec![2, 4]),
                (3, 0..10, vec![3])
            ]
        );
    }
}
