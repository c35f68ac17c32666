//! The header every repository object starts with.
//!
//! ```text
//! offset 0  magic     4 bytes  b"MBKC" config, b"MBKP" pack, b"MBKI" index, b"MBKS" snapshot
//! offset 4  version   u8       format version of this object kind (1)
//! offset 5  envelope  u8       0 = plaintext; later: authenticated encryption of the rest
//! offset 6  reserved  2 bytes  zero
//! ```

use crate::error::{Error, Result};

/// Format version written by this build, and the highest one it reads.
pub(crate) const FORMAT_VERSION: u8 = 1;
/// Envelope byte for plaintext objects.
pub(crate) const ENVELOPE_PLAIN: u8 = 0;
/// Length of the object header.
pub(crate) const HEADER_LEN: usize = 8;

/// The kinds of objects in a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ObjectKind {
    Config,
    Pack,
    Index,
    Snapshot,
}

impl ObjectKind {
    pub(crate) const fn magic(self) -> [u8; 4] {
        match self {
            ObjectKind::Config => *b"MBKC",
            ObjectKind::Pack => *b"MBKP",
            ObjectKind::Index => *b"MBKI",
            ObjectKind::Snapshot => *b"MBKS",
        }
    }

    pub(crate) const fn name(self) -> &'static str {
        match self {
            ObjectKind::Config => "config",
            ObjectKind::Pack => "pack",
            ObjectKind::Index => "index",
            ObjectKind::Snapshot => "snapshot",
        }
    }
}

/// The 8-byte header for a plaintext object of `kind`.
pub(crate) const fn header(kind: ObjectKind) -> [u8; HEADER_LEN] {
    let m = kind.magic();
    [m[0], m[1], m[2], m[3], FORMAT_VERSION, ENVELOPE_PLAIN, 0, 0]
}

/// Checks the header of object `name` and returns the bytes after it.
///
/// # Errors
/// [`Error::CorruptObject`] if the magic is wrong or the object is too short,
/// [`Error::UnsupportedVersion`] / [`Error::UnsupportedEncoding`] if it is from a newer format.
pub(crate) fn strip_header<'a>(kind: ObjectKind, name: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
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
    if bytes[5] != ENVELOPE_PLAIN {
        return Err(Error::UnsupportedEncoding {
            kind: kind.name(),
            name: name.to_owned(),
            detail: format!("envelope type {} (an encrypted repository?)", bytes[5]),
        });
    }
    Ok(&bytes[HEADER_LEN..])
}

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

    #[test]
    fn header_round_trip_and_rejections() {
        let mut obj = header(ObjectKind::Index).to_vec();
        obj.extend_from_slice(b"body");
        assert_eq!(
            strip_header(ObjectKind::Index, "index/x", &obj).unwrap(),
            b"body"
        );

        let err = strip_header(ObjectKind::Pack, "data/x", &obj).unwrap_err();
        assert!(
            matches!(err, Error::CorruptObject { kind: "pack", .. }),
            "{err}"
        );

        let mut newer = obj.clone();
        newer[4] = 2;
        let err = strip_header(ObjectKind::Index, "index/x", &newer).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedVersion {
                    found: 2,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );

        let mut sealed = obj.clone();
        sealed[5] = 1;
        let err = strip_header(ObjectKind::Index, "index/x", &sealed).unwrap_err();
        assert!(matches!(err, Error::UnsupportedEncoding { .. }), "{err}");

        let err = strip_header(ObjectKind::Index, "index/x", b"MBK").unwrap_err();
        assert!(err.to_string().contains("3 bytes long"), "{err}");
    }
}
