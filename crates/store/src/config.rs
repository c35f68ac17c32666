//! The repository `config` object: format version, repository id, encryption, chunker
//! parameters (with the gear seed), blob-id key, compression. Sealed with the master key in an
//! encrypted repository, so the blob-id key and the gear seed never leave it in the clear.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::{self, Cipher, SealingKey, KEY_LEN};
use crate::error::{Error, Result};
use crate::format::{Codec, ObjectKind, FORMAT_VERSION};
use crate::KIB;
use crate::MIB;

/// Name of the config object.
pub(crate) const CONFIG_NAME: &str = "config";
/// Repository format version written into `config` (same as the object header version).
pub(crate) const REPO_VERSION: u32 = FORMAT_VERSION as u32;
/// `encryption` of a plaintext repository (and of every version-1 repository).
pub(crate) const ENCRYPTION_NONE: &str = "none";

/// Minimum chunk size: mail bodies under this are always one chunk.
pub(crate) const CHUNK_MIN_BYTES: u32 = 64 * KIB as u32;
/// Target average chunk size.
pub(crate) const CHUNK_AVG_BYTES: u32 = 256 * KIB as u32;
/// Maximum chunk size.
pub(crate) const CHUNK_MAX_BYTES: u32 = 2 * MIB as u32;
/// A pack is sealed once it reaches this size.
pub(crate) const PACK_TARGET_BYTES: u64 = 16 * MIB;
/// zstd level for blobs, index files and snapshots in a new repository (an existing one keeps
/// the level in its `config`). Level 2 rather than zstd's default 3: on the benchmark corpus's
/// mail (`benches/vs-restic.py`; 2,000 messages, 198 MB, each compressed alone as a blob is)
/// it stores 0.8 % more bytes (125.4 against 124.4 MB; level 1: 126.9) and compresses about a
/// quarter faster, which was about 8 % of a first backup's CPU time (2026-11-30).
pub(crate) const ZSTD_LEVEL: i32 = 2;

/// Contents of the `config` object (after its 8-byte header), as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RepoConfig {
    pub version: u32,
    /// Repository id, 64 hex characters.
    pub id: String,
    pub created: DateTime<Utc>,
    /// The cipher ([`Cipher::name`]: `"xaes-256-gcm"`, version 3 on, or `"xchacha20-poly1305"`),
    /// or `"none"` (absent in version 1: `"none"`).
    #[serde(default = "encryption_none")]
    pub encryption: String,
    pub chunker: ChunkerConfig,
    pub blob_id: BlobIdConfig,
    pub compression: CompressionConfig,
    pub pack_target_size: u64,
}

fn encryption_none() -> String {
    ENCRYPTION_NONE.to_owned()
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ChunkerConfig {
    /// `"fastcdc-v2020"`.
    pub algorithm: String,
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
    /// FastCDC normalization level (0..=3).
    pub normalization: u8,
    /// XORed into FastCDC's gear table, so cut points differ between repositories.
    pub gear_seed: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct BlobIdConfig {
    /// `"blake3-keyed"`.
    pub algorithm: String,
    /// 32-byte key, hex. Cleared in memory once decoded (see [`RepoConfig::decode`]).
    pub key: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct CompressionConfig {
    /// `"zstd"`.
    pub algorithm: String,
    pub level: i32,
}

impl RepoConfig {
    /// A new configuration with fresh random id, gear seed and blob-id key.
    pub(crate) fn generate(cipher: Option<Cipher>) -> Self {
        let id: [u8; 32] = rand::random();
        let key = crypto::random_key();
        Self {
            version: REPO_VERSION,
            id: hex::encode(id),
            created: Utc::now(),
            encryption: cipher.map_or(ENCRYPTION_NONE, Cipher::name).to_owned(),
            chunker: ChunkerConfig {
                algorithm: "fastcdc-v2020".to_owned(),
                min_size: CHUNK_MIN_BYTES,
                avg_size: CHUNK_AVG_BYTES,
                max_size: CHUNK_MAX_BYTES,
                normalization: 1,
                gear_seed: rand::random(),
            },
            blob_id: BlobIdConfig {
                algorithm: "blake3-keyed".to_owned(),
                key: hex::encode(*key),
            },
            compression: CompressionConfig {
                algorithm: "zstd".to_owned(),
                level: ZSTD_LEVEL,
            },
            pack_target_size: PACK_TARGET_BYTES,
        }
    }

    /// The `config` object: header ‖ JSON, the JSON sealed if `codec` is.
    pub(crate) fn encode(&self, codec: &Codec) -> Result<Vec<u8>> {
        let mut json =
            Zeroizing::new(
                serde_json::to_vec_pretty(self).map_err(|e| Error::Internal {
                    detail: format!("cannot encode config: {e}"),
                })?,
            );
        json.push(b'\n');
        Ok(codec.encode(ObjectKind::Config, &json))
    }

    /// Parses and validates a `config` object read with `codec` (see
    /// [`crate::format::read_header`] to choose it). Returns the config, its blob-id key
    /// removed, and the key.
    ///
    /// # Errors
    /// [`Error::CorruptObject`] for malformed or out-of-range values or a body that fails
    /// authentication, [`Error::UnsupportedVersion`] for a newer repository version.
    pub(crate) fn decode(bytes: &[u8], codec: &Codec) -> Result<(Self, Zeroizing<[u8; KEY_LEN]>)> {
        let body = Zeroizing::new(
            codec
                .decode(ObjectKind::Config, CONFIG_NAME, bytes)?
                .into_owned(),
        );
        let corrupt = |detail: String| Error::CorruptObject {
            kind: "config",
            name: CONFIG_NAME.to_owned(),
            detail,
        };
        let mut config: RepoConfig =
            serde_json::from_slice(&body).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
        if config.version > REPO_VERSION {
            return Err(Error::UnsupportedVersion {
                kind: "config",
                name: CONFIG_NAME.to_owned(),
                found: config.version,
                supported: REPO_VERSION,
            });
        }
        let c = &config.chunker;
        if c.algorithm != "fastcdc-v2020" {
            return Err(Error::UnsupportedEncoding {
                kind: "config",
                name: CONFIG_NAME.to_owned(),
                detail: format!("chunker {:?}", c.algorithm),
            });
        }
        let sizes_ok = (fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX)
            .contains(&(c.min_size as usize))
            && (fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX)
                .contains(&(c.avg_size as usize))
            && (fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX)
                .contains(&(c.max_size as usize))
            && c.min_size < c.avg_size
            && c.avg_size < c.max_size
            && [c.min_size, c.avg_size, c.max_size]
                .iter()
                .all(|s| s % 2 == 0)
            && c.normalization <= 3;
        if !sizes_ok {
            return Err(corrupt(format!(
                "chunker sizes {}/{}/{} level {} out of range",
                c.min_size, c.avg_size, c.max_size, c.normalization
            )));
        }
        if config.blob_id.algorithm != "blake3-keyed" {
            return Err(Error::UnsupportedEncoding {
                kind: "config",
                name: CONFIG_NAME.to_owned(),
                detail: format!("blob id algorithm {:?}", config.blob_id.algorithm),
            });
        }
        if config.version == 0 || config.version != u32::from(bytes[4]) {
            return Err(corrupt(format!(
                "says version {}, its header version {}",
                config.version, bytes[4]
            )));
        }
        let cipher = codec.key().map(SealingKey::cipher);
        if config.encryption != cipher.map_or(ENCRYPTION_NONE, Cipher::name) {
            return Err(corrupt(format!(
                "says encryption {:?}, but the object is {}",
                config.encryption,
                cipher.map_or("plaintext".to_owned(), |c| format!("sealed with {c}"))
            )));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(&config.blob_id.key, key.as_mut())
            .map_err(|e| corrupt(format!("blob id key: {e}")))?;
        config.blob_id.key.zeroize();
        if config.compression.algorithm != "zstd" {
            return Err(Error::UnsupportedEncoding {
                kind: "config",
                name: CONFIG_NAME.to_owned(),
                detail: format!("compression {:?}", config.compression.algorithm),
            });
        }
        if config.pack_target_size < MIB || config.pack_target_size > 256 * MIB {
            return Err(corrupt(format!(
                "pack_target_size {} out of range",
                config.pack_target_size
            )));
        }
        if config.id.len() != 64 || hex::decode(&config.id).is_err() {
            return Err(corrupt(format!(
                "repository id {:?} is not 64 hex characters",
                config.id
            )));
        }
        Ok((config, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SealingKey;

    #[test]
    fn round_trip_and_validation() {
        let codec = Codec::plain(FORMAT_VERSION);
        let config = RepoConfig::generate(None);
        let bytes = config.encode(&codec).unwrap();
        assert_eq!(&bytes[..4], b"MBKC");
        let (back, key) = RepoConfig::decode(&bytes, &codec).unwrap();
        assert_eq!(back.id, config.id);
        assert_eq!(back.chunker.gear_seed, config.chunker.gear_seed);
        assert_eq!(hex::encode(*key), config.blob_id.key);
        assert!(
            back.blob_id.key.is_empty(),
            "the key is not kept in the config"
        );

        let mut newer = config.clone();
        newer.version = 4;
        let err = RepoConfig::decode(&newer.encode(&codec).unwrap(), &codec).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 4, .. }),
            "{err}"
        );

        let mut odd = config.clone();
        odd.chunker.avg_size = 1000;
        odd.chunker.max_size = 999;
        let err = RepoConfig::decode(&odd.encode(&codec).unwrap(), &codec).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");

        // A version-1 config (no `encryption` field, header version 1) still reads.
        let mut v1 = config;
        v1.version = 1;
        let v1_codec = Codec::plain(1);
        let mut json: serde_json::Value =
            serde_json::from_slice(&v1.encode(&v1_codec).unwrap()[8..]).unwrap();
        json.as_object_mut().unwrap().remove("encryption");
        let mut bytes = crate::format::header(ObjectKind::Config, 1, 0).to_vec();
        bytes.extend_from_slice(json.to_string().as_bytes());
        let (back, _) = RepoConfig::decode(&bytes, &v1_codec).unwrap();
        assert_eq!((back.version, back.encryption.as_str()), (1, "none"));
    }

    #[test]
    fn sealed_config_hides_the_keys_and_must_say_encrypted() {
        for (cipher, envelope) in [(Cipher::Xaes256Gcm, 2), (Cipher::XChaCha20Poly1305, 1)] {
            let codec = Codec::sealed(SealingKey::with_cipher(&crypto::random_key(), cipher));
            let config = RepoConfig::generate(Some(cipher));
            let bytes = config.encode(&codec).unwrap();
            assert_eq!((bytes[4], bytes[5]), (3, envelope));
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains(&config.blob_id.key) && !text.contains("gear_seed"));
            let (back, key) = RepoConfig::decode(&bytes, &codec).unwrap();
            assert_eq!(back.encryption, cipher.name());
            assert_eq!(hex::encode(*key), config.blob_id.key);

            for lie in ["none", "xchacha20-poly1305", "xaes-256-gcm"] {
                if lie == cipher.name() {
                    continue;
                }
                let mut liar = config.clone();
                liar.encryption = lie.into();
                let err = RepoConfig::decode(&liar.encode(&codec).unwrap(), &codec).unwrap_err();
                assert!(err.to_string().contains("says encryption"), "{err}");
            }
        }
    }

    #[test]
    fn a_version_2_xchacha_config_still_reads() {
        let codec = Codec::sealed_version(SealingKey::xchacha(&crypto::random_key()), 2);
        let mut config = RepoConfig::generate(Some(Cipher::XChaCha20Poly1305));
        config.version = 2;
        let bytes = config.encode(&codec).unwrap();
        assert_eq!((bytes[4], bytes[5]), (2, 1));
        let (back, _) = RepoConfig::decode(&bytes, &codec).unwrap();
        assert_eq!(
            (back.version, back.encryption.as_str()),
            (2, "xchacha20-poly1305")
        );
        // XAES-256-GCM came with version 3: a version-2 object claiming it is refused.
        let mut forged = bytes.clone();
        forged[5] = 2;
        let err = crate::format::read_header(ObjectKind::Config, "config", &forged).unwrap_err();
        assert!(matches!(err, Error::UnsupportedEncoding { .. }), "{err}");
    }
}
