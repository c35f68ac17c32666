//! Blob encoding: hashing, compression decision, sealing, and decoding with verification.
//!
//! A stored blob is the chunk, zstd-compressed when that makes it smaller, then (in an
//! encrypted repository) sealed as one unit: `nonce ‖ ciphertext ‖ tag`, so a ranged read of
//! one blob can be opened on its own. Compression and sealing share one buffer: the compressor
//! writes after room for the nonce, the cipher works in place and appends the tag.

use bytes::{Bytes, BytesMut};

use crate::crypto::{Label, NONCE_LEN, TAG_LEN};
use crate::format::{Codec, ObjectKind, AUTH_FAILED};
use crate::id::BlobId;

/// How a blob's bytes are stored in a pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Compression {
    /// Stored as is.
    None = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl Compression {
    pub(crate) fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// A blob ready to go into a pack.
#[derive(Debug)]
pub(crate) struct EncodedBlob {
    pub id: BlobId,
    pub raw_len: u32,
    pub compression: Compression,
    pub data: Bytes,
}

/// The repository's blob id for `data`: BLAKE3 keyed with the repository key.
pub(crate) fn blob_id(key: &[u8; 32], data: &[u8]) -> BlobId {
    BlobId::from_bytes(*blake3::keyed_hash(key, data).as_bytes())
}

/// Chunks at least this long get the cheap sample test before a full compression attempt.
const SAMPLE_TEST_MIN_BYTES: usize = 64 * 1024;
/// Bytes per sample window (three windows: start, middle, end).
const SAMPLE_WINDOW_BYTES: usize = 8 * 1024;

thread_local! {
    /// This thread's compression contexts, one per level used (the sample test's level 1 and
    /// the repository's level): switching one context between levels would rebuild it for
    /// every chunk.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// One decompression context per thread: making one per blob costs more than decompressing
    /// a small blob.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Decompresses one zstd frame of at most `capacity` bytes with this thread's context.
fn decompress(data: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut().expect("set above").decompress(data, capacity)
    })
}

fn with_compressor<R>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R,
) -> Option<R> {
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let i = match all.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                all.push((level, zstd::bulk::Compressor::new(level).ok()?));
                all.len() - 1
            }
        };
        Some(f(&mut all[i].1))
    })
}

/// Compresses `data` into a new buffer after `prefix` zero bytes, with room for `spare` more
/// bytes at the end; `None` if the result would not be smaller than `data` (zstd stops with
/// "destination too small") or zstd fails.
fn compress_if_smaller(level: i32, data: &[u8], prefix: usize, spare: usize) -> Option<Vec<u8>> {
    if data.is_empty() {
        return None;
    }
    // zstd is bounded by the capacity after the cursor: one byte less than `data`, so output
    // that does not shrink stops early. `spare` keeps the later tag from reallocating.
    let mut out = Vec::with_capacity(prefix + data.len() - 1 + spare);
    out.resize(prefix, 0);
    let mut cursor = std::io::Cursor::new(&mut out);
    cursor.set_position(prefix as u64);
    let limit = data.len() - 1;
    match with_compressor(level, |c| c.compress_to_buffer(data, &mut cursor))? {
        Ok(n) if n <= limit => {
            // The buffer was sized for the input: give back what compression saved, or a pack
            // of well-compressed blobs would hold several times its size in memory.
            if out.capacity() - out.len() > spare + out.len() / 8 {
                out.shrink_to(out.len() + spare);
            }
            Some(out)
        }
        _ => None,
    }
}

/// Whether a sample of `data` shrinks by at least 3 % at zstd level 1. Compressed media
/// (JPEG, ZIP, MP4, encrypted PDFs) fails this test and skips the full compression attempt.
/// `data` must hold at least [`SAMPLE_TEST_MIN_BYTES`].
pub(crate) fn sample_compresses(data: &[u8]) -> bool {
    let w = SAMPLE_WINDOW_BYTES;
    let mid = data.len() / 2 - w / 2;
    let mut sample = Vec::with_capacity(3 * w);
    sample.extend_from_slice(&data[..w]);
    sample.extend_from_slice(&data[mid..mid + w]);
    sample.extend_from_slice(&data[data.len() - w..]);
    match compress_if_smaller(1, &sample, 0, 0) {
        Some(c) => c.len() * 100 <= sample.len() * 97,
        None => false,
    }
}

/// Encodes one chunk: compressed with zstd when that makes it smaller, otherwise stored as is;
/// then sealed if `codec` is. One copy of the chunk at most (into the compressor's or the
/// cipher's buffer).
pub(crate) fn encode(id: BlobId, data: &[u8], level: i32, codec: &Codec) -> EncodedBlob {
    let raw_len = u32::try_from(data.len()).expect("chunks are at most 16 MiB");
    let (prefix, spare) = if codec.is_sealed() {
        (NONCE_LEN, TAG_LEN)
    } else {
        (0, 0)
    };
    let compressed = if data.len() >= SAMPLE_TEST_MIN_BYTES && !sample_compresses(data) {
        None
    } else {
        compress_if_smaller(level, data, prefix, spare)
    };
    let (mut buf, compression) = match compressed {
        Some(c) => (c, Compression::Zstd),
        None => {
            let mut buf = Vec::with_capacity(prefix + data.len() + spare);
            buf.resize(prefix, 0);
            buf.extend_from_slice(data);
            (buf, Compression::None)
        }
    };
    if let Some(key) = codec.key() {
        key.seal_in_place(&codec.header(ObjectKind::Pack), Label::Blob, &mut buf, 0);
    }
    EncodedBlob {
        id,
        raw_len,
        compression,
        data: Bytes::from(buf),
    }
}

/// Opens (if sealed), decodes and verifies a stored blob against its keyed hash. `Err`
/// carries what is wrong. A sealed blob is opened in place when `stored` is the only owner of
/// its bytes, else in a copy (`stored` is left as it was).
pub(crate) fn decode(
    key: &[u8; 32],
    codec: &Codec,
    id: &BlobId,
    stored: Bytes,
    compression: Compression,
    raw_len: u32,
) -> Result<Bytes, String> {
    if codec.key().is_none() {
        return decompress_and_verify(key, id, stored, compression, raw_len);
    }
    decode_owned(key, codec, id, owned(stored), compression, raw_len)
}

/// `bytes` as a mutable buffer: itself when it is the only owner of its allocation, else a
/// copy.
pub(crate) fn owned(bytes: Bytes) -> BytesMut {
    bytes
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]))
}

/// [`decode`] for a buffer the caller gives up: a sealed blob is always opened in place (a
/// `BytesMut` split off a larger read, as restores fetch a run of blobs at once, owns its
/// range even though the allocation is shared).
pub(crate) fn decode_owned(
    key: &[u8; 32],
    codec: &Codec,
    id: &BlobId,
    stored: BytesMut,
    compression: Compression,
    raw_len: u32,
) -> Result<Bytes, String> {
    let opened = match codec.key() {
        None => stored.freeze(),
        Some(_) => open(codec, id, stored)?,
    };
    decompress_and_verify(key, id, opened, compression, raw_len)
}

/// Opens a sealed blob in place; the plaintext is a slice of the same buffer.
fn open(codec: &Codec, id: &BlobId, mut sealed: BytesMut) -> Result<Bytes, String> {
    let sealing = codec.key().expect("called for sealed repositories only");
    let range = sealing
        .open_in_place(&codec.header(ObjectKind::Pack), Label::Blob, &mut sealed)
        .map_err(|_| format!("blob {id} {AUTH_FAILED}"))?;
    Ok(sealed.freeze().slice(range))
}

fn decompress_and_verify(
    key: &[u8; 32],
    id: &BlobId,
    stored: Bytes,
    compression: Compression,
    raw_len: u32,
) -> Result<Bytes, String> {
    let raw = match compression {
        Compression::None => stored,
        Compression::Zstd => {
            let out = decompress(&stored, raw_len as usize)
                .map_err(|e| format!("blob {id} does not decompress: {e}"))?;
            Bytes::from(out)
        }
    };
    if raw.len() != raw_len as usize {
        return Err(format!(
            "blob {id} is {} bytes, the index says {raw_len}",
            raw.len()
        ));
    }
    if blob_id(key, &raw) != *id {
        return Err(format!("blob {id}: hash mismatch"));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{random_key, SealingKey, SEAL_OVERHEAD};

    fn plain() -> Codec {
        Codec::plain(crate::format::FORMAT_VERSION)
    }

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let key = [1u8; 32];
        let data = b"Subject: hello\r\n\r\nthe same words again and again ".repeat(4000);
        let id = blob_id(&key, &data);
        for codec in [plain(), Codec::sealed(SealingKey::xchacha(&random_key()))] {
            let blob = encode(id, &data, 3, &codec);
            assert_eq!(blob.compression, Compression::Zstd);
            assert!(
                blob.data.len() < data.len() / 10,
                "{} bytes",
                blob.data.len()
            );
            let back =
                decode(&key, &codec, &id, blob.data, blob.compression, blob.raw_len).unwrap();
            assert_eq!(&back[..], &data[..]);
        }
    }

    #[test]
    fn random_data_is_stored_raw() {
        let key = [1u8; 32];
        let data: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        let id = blob_id(&key, &data);
        let blob = encode(id, &data, 3, &plain());
        assert_eq!(blob.compression, Compression::None);
        assert_eq!(blob.data.len(), data.len());
        // Small random data takes the full attempt and is also stored raw.
        let small = &data[..1000];
        let blob = encode(blob_id(&key, small), small, 3, &plain());
        assert_eq!(blob.compression, Compression::None);
        // Sealed: raw plus nonce and tag, and no plaintext left.
        let sealed = Codec::sealed(SealingKey::xchacha(&random_key()));
        let blob = encode(id, &data, 3, &sealed);
        assert_eq!(blob.compression, Compression::None);
        assert_eq!(blob.data.len(), data.len() + SEAL_OVERHEAD);
        assert!(!blob.data.windows(64).any(|w| w == &data[1000..1064]));
        let back = decode(
            &key,
            &sealed,
            &id,
            blob.data,
            blob.compression,
            blob.raw_len,
        )
        .unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    #[test]
    fn incompressible_output_near_the_limit_is_stored_raw() {
        // zstd output of random data is a little larger than the input: the bounded buffer
        // makes zstd stop, and the blob is stored raw, sealed or not.
        let data: Vec<u8> = (0..4000).map(|_| rand::random::<u8>()).collect();
        for (prefix, spare) in [(0, 0), (NONCE_LEN, TAG_LEN)] {
            assert!(compress_if_smaller(3, &data, prefix, spare).is_none());
        }
        let text = b"abcabcabc".repeat(100);
        let c = compress_if_smaller(3, &text, NONCE_LEN, TAG_LEN).unwrap();
        assert_eq!(&c[..NONCE_LEN], &[0u8; NONCE_LEN]);
        assert_eq!(
            zstd::bulk::decompress(&c[NONCE_LEN..], text.len()).unwrap(),
            text
        );
    }

    #[test]
    fn decode_detects_damage() {
        let key = [2u8; 32];
        let data = vec![5u8; 1000];
        let id = blob_id(&key, &data);
        for codec in [plain(), Codec::sealed(SealingKey::xchacha(&random_key()))] {
            let blob = encode(id, &data, 3, &codec);
            let mut damaged = blob.data.to_vec();
            let last = damaged.len() - 1;
            damaged[last] ^= 0xff;
            let err = decode(
                &key,
                &codec,
                &id,
                damaged.into(),
                blob.compression,
                blob.raw_len,
            )
            .unwrap_err();
            assert!(err.contains(&id.to_string()), "{err}");
            let other_key = [3u8; 32];
            let err = decode(
                &other_key,
                &codec,
                &id,
                blob.data,
                blob.compression,
                blob.raw_len,
            )
            .unwrap_err();
            assert!(err.contains("hash mismatch"), "{err}");
        }
    }
}
