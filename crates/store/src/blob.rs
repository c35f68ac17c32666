//! Blob encoding: hashing, compression decision, decoding with verification.

use bytes::Bytes;

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
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn with_compressor<R>(
    level: i32,
    f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> R,
) -> Option<R> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        slot.as_mut().map(|(_, c)| f(c))
    })
}

/// Compresses into a buffer one byte smaller than `data`; `None` if the result would not be
/// smaller (zstd stops with "destination too small") or zstd fails.
fn compress_if_smaller(level: i32, data: &[u8]) -> Option<Vec<u8>> {
    if data.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(data.len() - 1);
    match with_compressor(level, |c| c.compress_to_buffer(data, &mut out))? {
        Ok(n) if n < data.len() => Some(out),
        _ => None,
    }
}

/// Whether a sample of `data` shrinks by at least 3 % at zstd level 1. Compressed media
/// (JPEG, ZIP, MP4, encrypted PDFs) fails this test and skips the full compression attempt.
fn sample_compresses(data: &[u8]) -> bool {
    let w = SAMPLE_WINDOW_BYTES;
    let mid = data.len() / 2 - w / 2;
    let mut sample = Vec::with_capacity(3 * w);
    sample.extend_from_slice(&data[..w]);
    sample.extend_from_slice(&data[mid..mid + w]);
    sample.extend_from_slice(&data[data.len() - w..]);
    match compress_if_smaller(1, &sample) {
        Some(c) => c.len() * 100 <= sample.len() * 97,
        None => false,
    }
}

/// Encodes one chunk: compressed with zstd when that makes it smaller, otherwise stored as is.
pub(crate) fn encode(id: BlobId, data: &[u8], level: i32) -> EncodedBlob {
    let raw_len = u32::try_from(data.len()).expect("chunks are at most 16 MiB");
    let compressed = if data.len() >= SAMPLE_TEST_MIN_BYTES && !sample_compresses(data) {
        None
    } else {
        compress_if_smaller(level, data)
    };
    match compressed {
        Some(c) => EncodedBlob {
            id,
            raw_len,
            compression: Compression::Zstd,
            data: Bytes::from(c),
        },
        None => EncodedBlob {
            id,
            raw_len,
            compression: Compression::None,
            data: Bytes::copy_from_slice(data),
        },
    }
}

/// Decodes a stored blob and verifies its keyed hash. `Err` carries what is wrong.
pub(crate) fn decode(
    key: &[u8; 32],
    id: &BlobId,
    stored: Bytes,
    compression: Compression,
    raw_len: u32,
) -> Result<Bytes, String> {
    let raw = match compression {
        Compression::None => stored,
        Compression::Zstd => {
            let out = zstd::bulk::decompress(&stored, raw_len as usize)
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

    #[test]
    fn compressible_data_is_compressed_and_round_trips() {
        let key = [1u8; 32];
        let data = b"Subject: hello\r\n\r\nthe same words again and again ".repeat(4000);
        let id = blob_id(&key, &data);
        let blob = encode(id, &data, 3);
        assert_eq!(blob.compression, Compression::Zstd);
        assert!(
            blob.data.len() < data.len() / 10,
            "{} bytes",
            blob.data.len()
        );
        let back = decode(&key, &id, blob.data, blob.compression, blob.raw_len).unwrap();
        assert_eq!(&back[..], &data[..]);
    }

    #[test]
    fn random_data_is_stored_raw() {
        let key = [1u8; 32];
        let data: Vec<u8> = (0..300_000).map(|_| rand::random::<u8>()).collect();
        let id = blob_id(&key, &data);
        let blob = encode(id, &data, 3);
        assert_eq!(blob.compression, Compression::None);
        assert_eq!(blob.data.len(), data.len());
        // Small random data takes the full attempt and is also stored raw.
        let small = &data[..1000];
        let blob = encode(blob_id(&key, small), small, 3);
        assert_eq!(blob.compression, Compression::None);
    }

    #[test]
    fn decode_detects_damage() {
        let key = [2u8; 32];
        let data = vec![5u8; 1000];
        let id = blob_id(&key, &data);
        let blob = encode(id, &data, 3);
        let mut damaged = blob.data.to_vec();
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        let err = decode(&key, &id, damaged.into(), blob.compression, blob.raw_len).unwrap_err();
        assert!(err.contains(&id.to_string()), "{err}");
        let other_key = [3u8; 32];
        let err = decode(&other_key, &id, blob.data, blob.compression, blob.raw_len).unwrap_err();
        assert!(err.contains("hash mismatch"), "{err}");
    }
}
