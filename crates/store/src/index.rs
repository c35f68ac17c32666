//! The index: which pack holds each blob. Index files, and the in-memory map built from them.
//!
//! ```text
//! index object  header (b"MBKI", version, envelope, 0, 0) ‖ zstd(body), sealed if encrypted
//! body          pack_count u32, then per pack:
//!                 pack id 32 bytes, pack size u64, blob_count u32, blob_count × entry (45 bytes)
//! entry         as in the pack trailer: blob id, offset u32, stored_len u32, raw_len u32, compression u8
//! ```
//! The index file's name is the BLAKE3 hash of the object's bytes (as stored).

use bytes::Bytes;
use object_store::path::Path;

use crate::blob::Compression;
use crate::error::{Error, Result};
use crate::format::{Codec, ObjectKind, Reader};
use crate::id::{BlobId, IdMap, IdSet, IndexId, PackId};
use crate::pack::{BlobEntry, ENTRY_LEN};

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

/// A blob's location, compactly (the pack as a position in `Index::packs`).
#[derive(Clone, Copy, Debug)]
struct Slot {
    pack: u32,
    offset: u32,
    stored_len: u32,
    raw_len: u32,
    compression: Compression,
}

/// A resolved blob location.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Located {
    pub pack: PackInfo,
    pub entry: BlobEntry,
}

/// In-memory index: blob id → pack and position. About 60 bytes per blob.
#[derive(Default, Debug)]
pub(crate) struct Index {
    packs: Vec<PackInfo>,
    pack_pos: IdMap<PackId, u32>,
    blobs: IdMap<BlobId, Slot>,
    files: IdSet<IndexId>,
}

impl Index {
    /// Adds a pack's blobs; a blob already indexed keeps its first location.
    pub(crate) fn add_pack(&mut self, pack: &IndexPack) {
        let pos = *self.pack_pos.entry(pack.id).or_insert_with(|| {
            self.packs.push(PackInfo {
                id: pack.id,
                size: pack.size,
            });
            (self.packs.len() - 1) as u32
        });
        self.blobs.reserve(pack.blobs.len());
        for b in &pack.blobs {
            self.blobs.entry(b.id).or_insert(Slot {
                pack: pos,
                offset: b.offset,
                stored_len: b.stored_len,
                raw_len: b.raw_len,
                compression: b.compression,
            });
        }
    }

    /// Records that index file `id` has been merged.
    pub(crate) fn mark_file(&mut self, id: IndexId) {
        self.files.insert(id);
    }

    pub(crate) fn has_file(&self, id: &IndexId) -> bool {
        self.files.contains(id)
    }

    pub(crate) fn contains(&self, id: &BlobId) -> bool {
        self.blobs.contains_key(id)
    }

    pub(crate) fn get(&self, id: &BlobId) -> Option<Located> {
        let slot = self.blobs.get(id)?;
        Some(Located {
            pack: self.packs[slot.pack as usize],
            entry: BlobEntry {
                id: *id,
                offset: slot.offset,
                stored_len: slot.stored_len,
                raw_len: slot.raw_len,
                compression: slot.compression,
            },
        })
    }

    pub(crate) fn blob_count(&self) -> usize {
        self.blobs.len()
    }

    pub(crate) fn packs(&self) -> &[PackInfo] {
        &self.packs
    }

    pub(crate) fn pack(&self, id: &PackId) -> Option<PackInfo> {
        self.pack_pos.get(id).map(|&p| self.packs[p as usize])
    }

    /// The blobs of each pack, in offset order (indexed like [`Index::packs`]).
    pub(crate) fn entries_by_pack(&self) -> Vec<Vec<BlobEntry>> {
        let mut out = vec![Vec::new(); self.packs.len()];
        for (id, slot) in &self.blobs {
            out[slot.pack as usize].push(BlobEntry {
                id: *id,
                offset: slot.offset,
                stored_len: slot.stored_len,
                raw_len: slot.raw_len,
                compression: slot.compression,
            });
        }
        for entries in &mut out {
            entries.sort_by_key(|e| e.offset);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

        let sealed = Codec::sealed(crate::crypto::SealingKey::new(&crate::crypto::random_key()));
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
}
