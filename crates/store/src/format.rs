//! The header every repository object starts with, and the [`Codec`] that writes and reads
//! objects in a repository's format (plaintext, or sealed with its master key).
//!
//! ```text
//! offset 0  magic     4 bytes  b"MBKC" config, b"MBKP" pack, b"MBKI" index, b"MBKS" snapshot,
//!                              b"MBKK" key slot, b"MBKL" lock
//! offset 4  version   u8       format version (1, 2 or 3; the repository's version)
//! offset 5  envelope  u8       0 = plaintext, 1 = sealed with XChaCha20-Poly1305 (version 2 on),
//!                              2 = sealed with XAES-256-GCM (version 3 on), under the master key
//! offset 6  reserved  2 bytes  zero
//! ```

use std::borrow::Cow;
use std::sync::Arc;

use crate::crypto::{Cipher, Label, SealingKey, SEAL_OVERHEAD};
use crate::error::{Error, Result};

/// Format version written by this build for new repositories, and the highest one it reads.
pub(crate) const FORMAT_VERSION: u8 = 3;
/// Envelope byte for plaintext objects.
pub(crate) const ENVELOPE_PLAIN: u8 = 0;
/// Envelope byte for objects sealed with XChaCha20-Poly1305 under the master key.
pub(crate) const ENVELOPE_XCHACHA: u8 = 1;
/// Envelope byte for objects sealed with XAES-256-GCM under the master key.
pub(crate) const ENVELOPE_XAES: u8 = 2;

/// The envelope byte of objects sealed with `cipher`.
pub(crate) const fn envelope(cipher: Cipher) -> u8 {
    match cipher {
        Cipher::XChaCha20Poly1305 => ENVELOPE_XCHACHA,
        Cipher::Xaes256Gcm => ENVELOPE_XAES,
    }
}

/// The cipher of a sealed object's envelope byte; `None` for plaintext (or unknown).
pub(crate) const fn envelope_cipher(envelope: u8) -> Option<Cipher> {
    match envelope {
        ENVELOPE_XCHACHA => Some(Cipher::XChaCha20Poly1305),
        ENVELOPE_XAES => Some(Cipher::Xaes256Gcm),
        _ => None,
    }
}

/// The format version a new repository gets: the lowest that can express it (3 for
/// XAES-256-GCM, 2 otherwise), so the builds that wrote version 2 can read what they could.
pub(crate) const fn version_for(cipher: Option<Cipher>) -> u8 {
    match cipher {
        Some(Cipher::Xaes256Gcm) => 3,
        _ => 2,
    }
}

/// The first format version with `envelope`.
const fn envelope_since(envelope: u8) -> u8 {
    match envelope {
        ENVELOPE_PLAIN => 1,
        ENVELOPE_XCHACHA => 2,
        _ => 3,
    }
}
/// Length of the object header.
pub(crate) const HEADER_LEN: usize = 8;

/// The kinds of objects in a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Config,
    Pack,
    Index,
    Snapshot,
    Key,
    Lock,
}

impl ObjectKind {
    pub(crate) const fn magic(self) -> [u8; 4] {
        match self {
            ObjectKind::Config => *b"MBKC",
            ObjectKind::Pack => *b"MBKP",
            ObjectKind::Index => *b"MBKI",
            ObjectKind::Snapshot => *b"MBKS",
            ObjectKind::Key => *b"MBKK",
            ObjectKind::Lock => *b"MBKL",
        }
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Key => "key",
            ObjectKind::Lock => "lock",
        }
    }

    /// The label of a whole-object sealed body of this kind.
    const fn label(self) -> Label {
        match self {
            ObjectKind::Config => Label::Config,
            ObjectKind::Pack => Label::PackTrailer,
            ObjectKind::Index => Label::Index,
            ObjectKind::Snapshot => Label::Snapshot,
            ObjectKind::Key => Label::KeySlot,
            ObjectKind::Lock => Label::Lock,
        }
    }
}

/// The 8-byte header for an object of `kind`.
pub(crate) const fn header(kind: ObjectKind, version: u8, envelope: u8) -> [u8; HEADER_LEN] {
    let m = kind.magic();
    [m[0], m[1], m[2], m[3], version, envelope, 0, 0]
}

/// Checks magic and version of object `name` and returns its header.
///
/// # Errors
/// [`Error::CorruptObject`] if the magic is wrong or the object is too short,
/// [`Error::UnsupportedVersion`] if it is from a newer format, [`Error::UnsupportedEncoding`]
/// for an unknown envelope.
pub(crate) fn read_header(kind: ObjectKind, name: &str, bytes: &[u8]) -> Result<[u8; HEADER_LEN]> {
    let corrupt = |detail: String| Error::CorruptObject {
        kind: kind.name(),
        name: name.to_owned(),
        detail,
    };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes long, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        )));
    }
    if bytes[..4] != kind.magic() {
        return Err(corrupt(format!(
            "starts with {:02x?}, not the {} magic {:?}",
            &bytes[..4],
            kind.name(),
            std::str::from_utf8(&kind.magic()).unwrap_or("?")
        )));
    }
    let version = bytes[4];
    if version == 0 {
        return Err(corrupt("format version 0".to_owned()));
    }
    if version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            kind: kind.name(),
            name: name.to_owned(),
            found: version.into(),
            supported: FORMAT_VERSION.into(),
        });
    }
    let envelope = bytes[5];
    if envelope > ENVELOPE_XAES || version < envelope_since(envelope) {
        return Err(Error::UnsupportedEncoding {
            kind: kind.name(),
            name: name.to_owned(),
            detail: format!("envelope type {envelope} in a version {version} object"),
        });
    }
    Ok(bytes[..HEADER_LEN].try_into().expect("8 bytes"))
}

/// How one repository's objects are written and read: the header version for new objects, and
/// the master key (with its cipher) if the repository is encrypted. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Codec {
    version: u8,
    key: Option<Arc<SealingKey>>,
}

impl Codec {
    /// Plaintext objects with `version` headers (1 for a version-1 repository).
    pub(crate) fn plain(version: u8) -> Self {
        Codec { version, key: None }
    }

    /// Objects sealed with the master key, current version.
    pub(crate) fn sealed(key: SealingKey) -> Self {
        Self::sealed_version(key, FORMAT_VERSION)
    }

    /// Objects sealed with the master key, `version` headers (the repository's version: a
    /// version-2 repository stays readable by the builds that made it).
    pub(crate) fn sealed_version(key: SealingKey, version: u8) -> Self {
        Codec {
            version,
            key: Some(Arc::new(key)),
        }
    }

    /// The header version of the objects this codec writes.
    pub(crate) fn version(&self) -> u8 {
        self.version
    }

    pub(crate) fn is_sealed(&self) -> bool {
        self.key.is_some()
    }

    pub(crate) fn key(&self) -> Option<&SealingKey> {
        self.key.as_deref()
    }

    /// The envelope byte of the objects this codec writes.
    pub(crate) fn envelope(&self) -> u8 {
        self.key
            .as_ref()
            .map_or(ENVELOPE_PLAIN, |k| envelope(k.cipher()))
    }

    /// The header this codec writes for `kind`.
    pub(crate) fn header(&self, kind: ObjectKind) -> [u8; HEADER_LEN] {
        header(kind, self.version, self.envelope())
    }

    /// Bytes sealing adds to each sealed unit (0 for plaintext).
    pub(crate) fn overhead(&self) -> usize {
        if self.is_sealed() {
            SEAL_OVERHEAD
        } else {
            0
        }
    }

    /// A whole object: header ‖ body, the body sealed as one unit if encrypted.
    pub(crate) fn encode(&self, kind: ObjectKind, body: &[u8]) -> Vec<u8> {
        let header = self.header(kind);
        let mut out = Vec::with_capacity(HEADER_LEN + self.overhead() + body.len());
        out.extend_from_slice(&header);
        match &self.key {
            Some(key) => key.seal_append(&header, kind.label(), body, &mut out),
            None => out.extend_from_slice(body),
        }
        out
    }

    /// Checks an object's header against this repository's format and returns it.
    ///
    /// # Errors
    /// As [`read_header`], and [`Error::CorruptObject`] if the object is plaintext in an
    /// encrypted repository or sealed in a plaintext one.
    pub(crate) fn check_header(
        &self,
        kind: ObjectKind,
        name: &str,
        bytes: &[u8],
    ) -> Result<[u8; HEADER_LEN]> {
        let header = read_header(kind, name, bytes)?;
        let found = envelope_cipher(header[5]);
        let want = self.key.as_ref().map(|k| k.cipher());
        if found == want {
            return Ok(header);
        }
        let detail = match (found, want) {
            (None, _) => {
                "stored in plaintext, but the repository is encrypted: m365bk did not write it"
                    .to_owned()
            }
            (Some(_), None) => "encrypted, but the repository is not".to_owned(),
            (Some(found), Some(want)) => {
                format!(
                    "sealed with {found}, but the repository uses {want}: m365bk did not write it"
                )
            }
        };
        Err(Error::CorruptObject {
            kind: kind.name(),
            name: name.to_owned(),
            detail,
        })
    }

    /// Checks the header of a whole object and returns its body, opened if sealed.
    ///
    /// # Errors
    /// As [`Codec::check_header`], and [`Error::CorruptObject`] if the body fails
    /// authentication.
    pub(crate) fn decode<'a>(
        &self,
        kind: ObjectKind,
        name: &str,
        bytes: &'a [u8],
    ) -> Result<Cow<'a, [u8]>> {
        let header = self.check_header(kind, name, bytes)?;
        let body = &bytes[HEADER_LEN..];
        match &self.key {
            None => Ok(Cow::Borrowed(body)),
            Some(key) => key
                .open(&header, kind.label(), body)
                .map(Cow::Owned)
                .map_err(|_| Error::CorruptObject {
                    kind: kind.name(),
                    name: name.to_owned(),
                    detail: AUTH_FAILED.to_owned(),
                }),
        }
    }
}

/// What a failed authentication means, for messages.
pub(crate) const AUTH_FAILED: &str =
    "fails authentication: damaged, or not written with this repository's key";

/// Little-endian reader over a byte slice; `None` when the slice runs out.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::random_key;

    #[test]
    fn header_round_trip_and_rejections() {
        let plain = Codec::plain(FORMAT_VERSION);
        let obj = plain.encode(ObjectKind::Index, b"body");
        assert_eq!(&obj[..6], b"MBKI\x03\x00");
        assert_eq!(
            &*plain.decode(ObjectKind::Index, "index/x", &obj).unwrap(),
            b"body"
        );

        let err = plain.decode(ObjectKind::Pack, "data/x", &obj).unwrap_err();
        assert!(
            matches!(err, Error::CorruptObject { kind: "pack", .. }),
            "{err}"
        );

        let mut newer = obj.clone();
        newer[4] = 4;
        let err = plain
            .decode(ObjectKind::Index, "index/x", &newer)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found: 4,
                    supported: 3,
                    ..
                }
            ),
            "{err}"
        );

        let mut unknown = obj.clone();
        unknown[5] = 7;
        let err = plain
            .decode(ObjectKind::Index, "index/x", &unknown)
            .unwrap_err();
        assert!(matches!(err, Error::UnsupportedEncoding { .. }), "{err}");

        let err = plain
            .decode(ObjectKind::Index, "index/x", b"MBK")
            .unwrap_err();
        assert!(err.to_string().contains("3 bytes long"), "{err}");

        // Version 1 objects (plaintext only) are still read.
        let v1 = Codec::plain(1).encode(ObjectKind::Index, b"old");
        assert_eq!(v1[4], 1);
        assert_eq!(
            &*plain.decode(ObjectKind::Index, "index/x", &v1).unwrap(),
            b"old"
        );
    }

    #[test]
    fn sealed_objects_round_trip_and_envelopes_must_match_the_repository() {
        let sealed = Codec::sealed(SealingKey::with_cipher(&random_key(), Cipher::Xaes256Gcm));
        let obj = sealed.encode(ObjectKind::Snapshot, b"snapshot body");
        assert_eq!(&obj[..6], b"MBKS\x03\x02");
        assert_eq!(obj.len(), HEADER_LEN + SEAL_OVERHEAD + 13);
        assert!(!obj.windows(8).any(|w| w == b"snapshot"));
        assert_eq!(
            &*sealed
                .decode(ObjectKind::Snapshot, "snapshots/x", &obj)
                .unwrap(),
            b"snapshot body"
        );

        // A sealed snapshot body presented as an index: magic differs, and so would the label.
        let mut as_index = obj.clone();
        as_index[..4].copy_from_slice(b"MBKI");
        let err = sealed
            .decode(ObjectKind::Index, "index/x", &as_index)
            .unwrap_err();
        assert!(err.to_string().contains("fails authentication"), "{err}");

        let plain = Codec::plain(FORMAT_VERSION);
        let err = plain
            .decode(ObjectKind::Snapshot, "snapshots/x", &obj)
            .unwrap_err();
        assert!(err.to_string().contains("encrypted, but"), "{err}");
        let planted = plain.encode(ObjectKind::Snapshot, b"{}");
        let err = sealed
            .decode(ObjectKind::Snapshot, "snapshots/x", &planted)
            .unwrap_err();
        assert!(err.to_string().contains("stored in plaintext"), "{err}");

        // The other cipher's envelope, under this repository's key: refused by name.
        let xchacha = Codec::sealed(SealingKey::xchacha(&random_key()));
        let other = xchacha.encode(ObjectKind::Snapshot, b"{}");
        assert_eq!(&other[..6], b"MBKS\x03\x01");
        let err = sealed
            .decode(ObjectKind::Snapshot, "snapshots/x", &other)
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("sealed with xchacha20-poly1305, but the repository uses xaes-256-gcm"),
            "{err}"
        );

        // Envelopes are newer than version 1, and XAES-256-GCM is newer than version 2.
        for (version, envelope) in [
            (1, ENVELOPE_XCHACHA),
            (1, ENVELOPE_XAES),
            (2, ENVELOPE_XAES),
        ] {
            let mut old = obj.clone();
            old[4] = version;
            old[5] = envelope;
            let err = sealed
                .decode(ObjectKind::Snapshot, "snapshots/x", &old)
                .unwrap_err();
            assert!(matches!(err, Error::UnsupportedEncoding { .. }), "{err}");
        }
        // A version-2 repository keeps writing version-2 headers.
        let v2 = Codec::sealed_version(SealingKey::xchacha(&random_key()), 2);
        assert_eq!(&v2.encode(ObjectKind::Index, b"i")[..6], b"MBKI\x02\x01");
    }
}
