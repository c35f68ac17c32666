//! Pack files: many blobs in one immutable object, self-describing through a trailer.
//!
//! ```text
//! header   8 bytes          b"MBKP", version, envelope, 0, 0
//! blobs    stored bytes of each blob, back to back (each sealed on its own if encrypted)
//! trailer  blob_count u32, blob_count × entry (45 bytes), BLAKE3(count ‖ entries) 32 bytes
//!          (sealed as one unit if encrypted: nonce ‖ ciphertext ‖ tag)
//! footer   trailer_len u32 (bytes of the trailer as stored), b"MBKF"
//! entry    blob id 32 bytes, offset u32, stored_len u32, raw_len u32, compression u8
//! ```
//! All integers little-endian. The pack id is the BLAKE3 hash of the whole object.

use std::borrow::Cow;

use bytes::Bytes;
use object_store::path::Path;

use crate::blob::{Compression, EncodedBlob};
use crate::crypto::{Label, NONCE_LEN};
use crate::error::{Error, Result};
use crate::format::{Codec, ObjectKind, Reader, AUTH_FAILED, HEADER_LEN};
use crate::id::{BlobId, PackId};

/// Bytes per trailer / index entry.
pub(crate) const ENTRY_LEN: usize = 32 + 4 + 4 + 4 + 1;
/// Footer: trailer length + end magic.
pub(crate) const FOOTER_LEN: usize = 8;
const FOOTER_MAGIC: [u8; 4] = *b"MBKF";

/// Where one blob sits in its pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BlobEntry {
    pub id: BlobId,
    /// Offset of the stored bytes from the start of the pack object.
    pub offset: u32,
    pub stored_len: u32,
    pub raw_len: u32,
    pub compression: Compression,
}

impl BlobEntry {
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.compression as u8);
    }

    /// Reads one entry; `Err` says what is wrong.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, String> {
        let short = || "entry cut short".to_owned();
        let id = BlobId::from_bytes(r.array().ok_or_else(short)?);
        let offset = r.u32().ok_or_else(short)?;
        let stored_len = r.u32().ok_or_else(short)?;
        let raw_len = r.u32().ok_or_else(short)?;
        let c = r.u8().ok_or_else(short)?;
        let compression =
            Compression::from_u8(c).ok_or_else(|| format!("blob {id}: unknown compression {c}"))?;
        Ok(Self {
            id,
            offset,
            stored_len,
            raw_len,
            compression,
        })
    }

    /// Byte range of the stored blob in its pack.
    pub(crate) fn range(&self) -> std::ops::Range<u64> {
        u64::from(self.offset)..u64::from(self.offset) + u64::from(self.stored_len)
    }
}

/// Object path of a pack: `data/<first 2 hex>/<64 hex>`.
pub(crate) fn pack_path(id: &PackId) -> Path {
    let hex = id.to_hex();
    Path::from(format!("data/{}/{}", &hex[..2], hex))
}

/// A pack being filled. Holds the blobs' bytes as shared buffers: no copy until upload.
#[derive(Debug, Default)]
pub(crate) struct PackBuilder {
    parts: Vec<Bytes>,
    entries: Vec<BlobEntry>,
    len: u64,
}

impl PackBuilder {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the pack would have if sealed now, without the trailer.
    pub(crate) fn len(&self) -> u64 {
        HEADER_LEN as u64 + self.len
    }

    pub(crate) fn add(&mut self, blob: EncodedBlob) {
        let offset = u32::try_from(self.len()).expect("packs stay far below 4 GiB");
        let stored_len = u32::try_from(blob.data.len()).expect("blobs are at most 16 MiB");
        self.len += u64::from(stored_len);
        self.entries.push(BlobEntry {
            id: blob.id,
            offset,
            stored_len,
            raw_len: blob.raw_len,
            compression: blob.compression,
        });
        self.parts.push(blob.data);
    }

    /// Appends the trailer (sealed if `codec` is) and footer and computes the pack id (CPU:
    /// hashes the whole pack). The blobs must have been encoded with the same codec.
    pub(crate) fn seal(self, codec: &Codec) -> SealedPack {
        let header = codec.header(ObjectKind::Pack);
        // Room for the nonce in front: the trailer is sealed in place.
        let start = if codec.is_sealed() { NONCE_LEN } else { 0 };
        let mut trailer = Vec::with_capacity(
            codec.overhead() + 4 + self.entries.len() * ENTRY_LEN + 32 + FOOTER_LEN,
        );
        trailer.resize(start, 0);
        let count = u32::try_from(self.entries.len()).expect("blob count fits u32");
        trailer.extend_from_slice(&count.to_le_bytes());
        for entry in &self.entries {
            entry.encode(&mut trailer);
        }
        let checksum = blake3::hash(&trailer[start..]);
        trailer.extend_from_slice(checksum.as_bytes());
        if let Some(key) = codec.key() {
            key.seal_in_place(&header, Label::PackTrailer, &mut trailer, 0);
        }
        let trailer_len = u32::try_from(trailer.len()).expect("trailer fits u32");
        trailer.extend_from_slice(&trailer_len.to_le_bytes());
        trailer.extend_from_slice(&FOOTER_MAGIC);

        let mut parts = Vec::with_capacity(self.parts.len() + 2);
        parts.push(Bytes::copy_from_slice(&header));
        parts.extend(self.parts);
        parts.push(Bytes::from(trailer));

        let mut hasher = blake3::Hasher::new();
        for part in &parts {
            hasher.update(part);
        }
        let id = PackId::from_bytes(*hasher.finalize().as_bytes());
        let size = parts.iter().map(|p| p.len() as u64).sum();
        SealedPack {
            id,
            size,
            parts,
            entries: self.entries,
        }
    }
}

/// A finished pack, ready to upload.
#[derive(Debug)]
pub(crate) struct SealedPack {
    pub id: PackId,
    pub size: u64,
    pub parts: Vec<Bytes>,
    pub entries: Vec<BlobEntry>,
}

/// Parses the trailer of a whole pack object, checking header, footer, the trailer's
/// authentication (if sealed) and its checksum.
///
/// # Errors
/// [`Error::CorruptObject`] naming the pack and what is wrong.
pub(crate) fn parse_pack(codec: &Codec, id: &PackId, bytes: &[u8]) -> Result<Vec<BlobEntry>> {
    let name = pack_path(id).to_string();
    let header = codec.check_header(ObjectKind::Pack, &name, bytes)?;
    let corrupt = |detail: String| Error::CorruptObject {
        kind: "pack",
        name: name.clone(),
        detail,
    };
    if bytes.len() < HEADER_LEN + FOOTER_LEN {
        return Err(corrupt(format!("only {} bytes long", bytes.len())));
    }
    let footer = &bytes[bytes.len() - FOOTER_LEN..];
    if footer[4..] != FOOTER_MAGIC {
        return Err(corrupt(
            "no pack footer at the end (truncated or overwritten)".to_owned(),
        ));
    }
    let trailer_len = u32::from_le_bytes(footer[..4].try_into().expect("4 bytes")) as usize;
    let trailer_end = bytes.len() - FOOTER_LEN;
    if trailer_len < codec.overhead() + 4 + 32 || trailer_len > trailer_end - HEADER_LEN {
        return Err(corrupt(format!(
            "trailer length {trailer_len} is impossible"
        )));
    }
    let stored = &bytes[trailer_end - trailer_len..trailer_end];
    let trailer: Cow<'_, [u8]> = match codec.key() {
        None => Cow::Borrowed(stored),
        Some(key) => Cow::Owned(
            key.open(&header, Label::PackTrailer, stored)
                .map_err(|_| corrupt(format!("trailer {AUTH_FAILED}")))?,
        ),
    };
    let (listed, checksum) = trailer.split_at(trailer.len() - 32);
    if blake3::hash(listed).as_bytes() != checksum {
        return Err(corrupt("trailer checksum mismatch".to_owned()));
    }
    let mut r = Reader::new(listed);
    let count = r
        .u32()
        .ok_or_else(|| corrupt("trailer cut short".to_owned()))? as usize;
    if r.remaining() != count * ENTRY_LEN {
        return Err(corrupt(format!(
            "trailer lists {count} blobs but holds {} bytes of entries",
            r.remaining()
        )));
    }
    let data_end = (trailer_end - trailer_len) as u64;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let entry = BlobEntry::decode(&mut r).map_err(&corrupt)?;
        if entry.range().start < HEADER_LEN as u64 || entry.range().end > data_end {
            return Err(corrupt(format!(
                "blob {} at {:?} lies outside the data section",
                entry.id,
                entry.range()
            )));
        }
        entries.push(entry);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::{blob_id, encode};
    use crate::crypto::{random_key, SealingKey, SEAL_OVERHEAD};

    fn plain() -> Codec {
        Codec::plain(crate::format::FORMAT_VERSION)
    }

    fn build(codec: &Codec, blobs: &[&[u8]]) -> (SealedPack, Vec<u8>) {
        let key = [9u8; 32];
        let mut builder = PackBuilder::default();
        for data in blobs {
            builder.add(encode(blob_id(&key, data), data, 3, codec));
        }
        let sealed = builder.seal(codec);
        let bytes: Vec<u8> = sealed
            .parts
            .iter()
            .flat_map(|p| p.iter().copied())
            .collect();
        (sealed, bytes)
    }

    #[test]
    fn trailer_round_trips_and_id_is_hash() {
        for codec in [plain(), Codec::sealed(SealingKey::xchacha(&random_key()))] {
            let (sealed, bytes) = build(&codec, &[b"one", &[0u8; 10_000], b"three"]);
            assert_eq!(sealed.size, bytes.len() as u64);
            assert_eq!(sealed.id.as_bytes(), blake3::hash(&bytes).as_bytes());
            let entries = parse_pack(&codec, &sealed.id, &bytes).unwrap();
            assert_eq!(entries, sealed.entries);
            assert_eq!(entries[0].offset, 8);
            assert_eq!(entries[0].stored_len as usize, 3 + codec.overhead());
            assert_eq!(entries[1].compression, Compression::Zstd);
            assert!(pack_path(&sealed.id)
                .to_string()
                .starts_with(&format!("data/{}/", &sealed.id.to_hex()[..2])));
        }
    }

    #[test]
    fn sealed_pack_hides_ids_and_content() {
        let codec = Codec::sealed(SealingKey::xchacha(&random_key()));
        let (sealed, bytes) = build(&codec, &[b"secret words here", b"more secret words"]);
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        for e in &sealed.entries {
            assert!(!bytes.windows(32).any(|w| w == e.id.as_bytes()));
        }
        // Another key cannot read the trailer.
        let other = Codec::sealed(SealingKey::xchacha(&random_key()));
        let err = parse_pack(&other, &sealed.id, &bytes).unwrap_err();
        assert!(
            err.to_string().contains("trailer fails authentication"),
            "{err}"
        );
        // trailer: nonce, count, 2 entries, checksum, tag.
        let trailer_len = u32::from_le_bytes(bytes[bytes.len() - 8..][..4].try_into().unwrap());
        assert_eq!(trailer_len as usize, SEAL_OVERHEAD + 4 + 2 * ENTRY_LEN + 32);
    }

    #[test]
    fn damaged_trailer_and_truncation_are_reported() {
        let (sealed, bytes) = build(&plain(), &[b"one", b"two"]);
        let mut flipped = bytes.clone();
        let at = flipped.len() - FOOTER_LEN - 40;
        flipped[at] ^= 1;
        let err = parse_pack(&plain(), &sealed.id, &flipped).unwrap_err();
        assert!(
            err.to_string().contains("trailer checksum mismatch"),
            "{err}"
        );

        let err = parse_pack(&plain(), &sealed.id, &bytes[..bytes.len() - 3]).unwrap_err();
        assert!(err.to_string().contains("no pack footer"), "{err}");
        assert!(err.to_string().contains(&sealed.id.to_hex()), "{err}");

        let codec = Codec::sealed(SealingKey::xchacha(&random_key()));
        let (sealed, mut bytes) = build(&codec, &[b"one", b"two"]);
        let at = bytes.len() - FOOTER_LEN - 40;
        bytes[at] ^= 1;
        let err = parse_pack(&codec, &sealed.id, &bytes).unwrap_err();
        assert!(
            err.to_string().contains("trailer fails authentication"),
            "{err}"
        );
    }
}
