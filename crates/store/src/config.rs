//! The repository `config` object: format version, repository id, chunker parameters, blob-id
//! key, compression.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{self, ObjectKind};
use crate::KIB;
use crate::MIB;

/// Name of the config object.
pub(crate) const CONFIG_NAME: &str = "config";
/// Repository format version written into `config`.
pub(crate) const REPO_VERSION: u32 = 1;

/// Minimum chunk size: mail bodies under this are always one chunk.
pub(crate) const CHUNK_MIN_BYTES: u32 = 64 * KIB as u32;
/// Target average chunk size.
pub(crate) const CHUNK_AVG_BYTES: u32 = 256 * KIB as u32;
/// Maximum chunk size.
pub(crate) const CHUNK_MAX_BYTES: u32 = 2 * MIB as u32;
/// A pack is sealed once it reaches this size.
pub(crate) const PACK_TARGET_BYTES: u64 = 16 * MIB;
/// zstd level for blobs, index files and snapshots.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// Contents of the `config` object (after its 8-byte header), as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RepoConfig {
    pub version: u32,
    /// Repository id, 64 hex characters.
    pub id: String,
    pub created: DateTime<Utc>,
    pub chunker: ChunkerConfig,
    pub blob_id: BlobIdConfig,
    pub compression: CompressionConfig,
    pub pack_target_size: u64,
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
    /// 32-byte key, hex. Stored in the clear until encryption wraps it.
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
    pub(crate) fn generate() -> Self {
        let id: [u8; 32] = rand::random();
        let key: [u8; 32] = rand::random();
        Self {
            version: REPO_VERSION,
            id: hex::encode(id),
            created: Utc::now(),
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
                key: hex::encode(key),
            },
            compression: CompressionConfig {
                algorithm: "zstd".to_owned(),
                level: ZSTD_LEVEL,
            },
            pack_target_size: PACK_TARGET_BYTES,
        }
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>> {
        let mut out = format::header(ObjectKind::Config).to_vec();
        serde_json::to_writer_pretty(&mut out, self).map_err(|e| Error::Internal {
            detail: format!("cannot encode config: {e}"),
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Parses and validates a `config` object.
    ///
    /// # Errors
    /// [`Error::CorruptObject`] for malformed or out-of-range values,
    /// [`Error::UnsupportedVersion`] for a newer repository version.
    pub(crate) fn decode(bytes: &[u8]) -> Result<(Self, [u8; 32])> {
        let body = format::strip_header(ObjectKind::Config, CONFIG_NAME, bytes)?;
        let corrupt = |detail: String| Error::CorruptObject {
            kind: "config",
            name: CONFIG_NAME.to_owned(),
            detail,
        };
        let config: RepoConfig =
            serde_json::from_slice(body).map_err(|e| corrupt(format!("invalid JSON: {e}")))?;
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
        let mut key = [0u8; 32];
        hex::decode_to_slice(&config.blob_id.key, &mut key)
            .map_err(|e| corrupt(format!("blob id key: {e}")))?;
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

    #[test]
    fn round_trip_and_validation() {
        let config = RepoConfig::generate();
        let bytes = config.encode().unwrap();
        assert_eq!(&bytes[..4], b"MBKC");
        let (back, key) = RepoConfig::decode(&bytes).unwrap();
        assert_eq!(back.id, config.id);
        assert_eq!(back.chunker.gear_seed, config.chunker.gear_seed);
        assert_eq!(hex::encode(key), config.blob_id.key);

        let mut newer = config.clone();
        newer.version = 2;
        let err = RepoConfig::decode(&newer.encode().unwrap()).unwrap_err();
        assert!(
            matches!(err, Error::UnsupportedVersion { found: 2, .. }),
            "{err}"
        );

        let mut odd = config;
        odd.chunker.avg_size = 1000;
        odd.chunker.max_size = 999;
        let err = RepoConfig::decode(&odd.encode().unwrap()).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }
}
