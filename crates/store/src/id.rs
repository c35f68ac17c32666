//! 32-byte identifiers: blob, pack, index and snapshot ids.

use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::str::FromStr;

use crate::error::Error;

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident, $kind:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        pub struct $name([u8; 32]);

        impl $name {
            /// Wraps raw bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// The raw bytes.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters (same as `Display`).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first 8 hex characters, for logs and tables.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        // Ids are (keyed) hashes, uniformly distributed: 8 bytes make a good hash key and
        // skip SipHash in the hot dedup lookups.
        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                let mut head = [0u8; 8];
                head.copy_from_slice(&self.0[..8]);
                state.write_u64(u64::from_le_bytes(head));
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 64];
                hex::encode_to_slice(self.0, &mut buf).map_err(|_| fmt::Error)?;
                f.pad(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = Error;

            /// Parses 64 hex characters (either case).
            fn from_str(s: &str) -> Result<Self, Error> {
                let mut bytes = [0u8; 32];
                match hex::decode_to_slice(s, &mut bytes) {
                    Ok(()) => Ok(Self(bytes)),
                    Err(_) => Err(Error::InvalidId {
                        kind: $kind,
                        input: s.to_owned(),
                        expected: "64 hexadecimal characters",
                    }),
                }
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// Identifies a blob (one chunk of content): the BLAKE3 keyed hash of its plaintext, keyed
    /// with the repository's blob-id key. Equal content has equal ids within one repository and
    /// unrelated ids across repositories.
    BlobId,
    "blob"
);
id_type!(
    /// Identifies a pack file: the BLAKE3 hash of the pack object's bytes.
    PackId,
    "pack"
);
id_type!(
    /// Identifies an index file: the BLAKE3 hash of the index object's bytes.
    IndexId,
    "index"
);
id_type!(
    /// Identifies a snapshot: the BLAKE3 hash of the snapshot object's bytes (which include the
    /// snapshot time and host, so two snapshots never share an id).
    SnapshotId,
    "snapshot"
);

id_type!(
    /// Identifies a key slot: the BLAKE3 hash of the key slot object's bytes.
    KeyId,
    "key"
);

/// Hasher for maps keyed by ids: their `Hash` impls write one `u64` of already-random bits.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by the id types; fold anything else in so the hasher stays correct.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type IdMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<IdHasher>>;
pub(crate) type IdSet<K> = std::collections::HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_serde() {
        let id = BlobId::from_bytes([0xab; 32]);
        let text = id.to_string();
        assert_eq!(text, "ab".repeat(32));
        assert_eq!(text.parse::<BlobId>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<BlobId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<BlobId>(&json).unwrap(), id);
        assert_eq!(id.short(), "abababab");
        assert_eq!(format!("{id:?}"), format!("BlobId({text})"));
    }

    #[test]
    fn rejects_bad_hex() {
        let err = "abc".parse::<SnapshotId>().unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidId {
                    kind: "snapshot",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("64 hexadecimal characters"));
        assert!("zz".repeat(32).parse::<PackId>().is_err());
    }
}
