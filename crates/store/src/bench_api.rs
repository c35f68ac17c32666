//! The stages of the ingest path, one at a time, for the criterion benches in `benches/`
//! (`cargo bench --bench store_stages`). Not a stable API: hidden from the docs, and may change
//! with any release.
//!
//! Each function runs exactly the code a backup runs for that stage, with the parameters a new
//! repository gets (FastCDC v2020 64 KiB / 256 KiB / 2 MiB, normalization 1; keyed BLAKE3;
//! zstd at the configured level; XAES-256-GCM or XChaCha20-Poly1305).

use crate::blob;
use crate::chunker;
use crate::config::RepoConfig;
use crate::crypto::{random_key, Cipher, SealingKey};
use crate::format::Codec;
use crate::id::BlobId;

/// A repository's chunker with a given gear seed.
#[derive(Clone, Debug)]
pub struct Chunker(chunker::Chunker);

impl Chunker {
    /// The chunker of a new repository, with gear seed `seed`.
    pub fn new(seed: u64) -> Self {
        let mut config = RepoConfig::generate(None).chunker;
        config.gear_seed = seed;
        Chunker(chunker::Chunker::new(&config))
    }

    /// Cuts all of `data` (the end of a stream) and returns the chunk lengths in bytes.
    pub fn cut_all(&self, data: &[u8]) -> Vec<usize> {
        self.0.cut_all(data, true)
    }
}

/// The blob id of `data`: BLAKE3 keyed with `key` (32 bytes).
pub fn blob_id(key: &[u8; 32], data: &[u8]) -> BlobId {
    blob::blob_id(key, data)
}

/// How [`encode`] stores blobs: plaintext, or sealed with a fresh random master key.
#[derive(Clone, Debug)]
pub struct Encoder {
    codec: Codec,
    level: i32,
}

impl Encoder {
    /// An encoder with zstd level `level` (a new repository's is
    /// [`Encoder::DEFAULT_LEVEL`]) that seals each blob with `cipher`, or stores it in
    /// plaintext for `None`.
    pub fn new(level: i32, cipher: Option<Cipher>) -> Self {
        let codec = match cipher {
            Some(cipher) => Codec::sealed(SealingKey::with_cipher(&random_key(), cipher)),
            None => Codec::plain(crate::format::FORMAT_VERSION),
        };
        Encoder { codec, level }
    }

    /// The zstd level of a new repository.
    pub const DEFAULT_LEVEL: i32 = crate::config::ZSTD_LEVEL;

    /// Encodes one chunk as a backup stores it: the sample test for incompressible data
    /// (chunks ≥ 64 KiB), zstd if that makes it smaller, then sealing. Returns
    /// (compressed, stored length in bytes).
    pub fn encode(&self, data: &[u8]) -> (bool, usize) {
        let id = BlobId::from_bytes([0; 32]);
        let b = blob::encode(id, data, self.level, &self.codec);
        (b.compression == blob::Compression::Zstd, b.data.len())
    }
}

/// The incompressibility test alone: whether a 24 KiB sample of `data` shrinks by at least
/// 3 % at zstd level 1.
///
/// # Panics
/// If `data` is shorter than 64 KiB (backups test only chunks at least that long).
pub fn sample_compresses(data: &[u8]) -> bool {
    assert!(
        data.len() >= 64 * 1024,
        "the sample test needs at least 64 KiB"
    );
    blob::sample_compresses(data)
}
