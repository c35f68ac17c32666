//! Authenticated encryption of repository objects: XChaCha20-Poly1305 (the construction of the
//! expired IETF draft `draft-irtf-cfrg-xchacha`: HChaCha20 subkey + ChaCha20-Poly1305 of
//! RFC 8439) under the repository's 32-byte master key, with a random 24-byte nonce per sealed
//! unit. Random 192-bit nonces make collisions negligible however many writers seal at once,
//! without coordination.
//!
//! ```text
//! sealed unit   nonce 24 bytes ‖ ciphertext (as long as the plaintext) ‖ Poly1305 tag 16 bytes
//! associated    the 8-byte header of the object holding the unit ‖ a label naming the unit
//! ```
//! The label (`"config"`, `"pack blob"`, `"pack trailer"`, `"index"`, `"snapshot"`, `"key slot"`)
//! keeps a unit from being moved to an object of another kind or between a pack's blobs and its
//! trailer; the header (magic, version, envelope) is authenticated with it.

use chacha20poly1305::aead::inout::InOutBuf;
use chacha20poly1305::{AeadInOut, Key, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use crate::format::HEADER_LEN;

/// Bytes of a nonce.
pub(crate) const NONCE_LEN: usize = 24;
/// Bytes of a Poly1305 tag.
pub(crate) const TAG_LEN: usize = 16;
/// Bytes a sealed unit adds to its plaintext.
pub(crate) const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// Bytes of a key (master key, key-encryption key).
pub(crate) const KEY_LEN: usize = 32;

/// What a sealed unit is; part of its associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Label {
    Config,
    Blob,
    PackTrailer,
    Index,
    Snapshot,
    KeySlot,
    Lock,
}

impl Label {
    const fn as_bytes(self) -> &'static [u8] {
        match self {
            Label::Config => b"config",
            Label::Blob => b"pack blob",
            Label::PackTrailer => b"pack trailer",
            Label::Index => b"index",
            Label::Snapshot => b"snapshot",
            Label::KeySlot => b"key slot",
            Label::Lock => b"lock",
        }
    }
}

/// Associated data: header ‖ label, on the stack.
struct Aad {
    buf: [u8; HEADER_LEN + 16],
    len: usize,
}

impl Aad {
    fn new(header: &[u8; HEADER_LEN], label: Label) -> Self {
        let label = label.as_bytes();
        let mut buf = [0u8; HEADER_LEN + 16];
        buf[..HEADER_LEN].copy_from_slice(header);
        buf[HEADER_LEN..HEADER_LEN + label.len()].copy_from_slice(label);
        Aad {
            buf,
            len: HEADER_LEN + label.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A sealed unit failed authentication: damaged, or sealed under another key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OpenError;

/// An XChaCha20-Poly1305 key: the repository's master key, or a key derived from a passphrase.
/// The key bytes are zeroed when it is dropped.
pub(crate) struct SealingKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

/// 32 fresh random bytes (a master key, a blob-id key, a salt) from the thread-local CSPRNG
/// (ChaCha12 seeded from the operating system), held so they are zeroed when dropped.
pub(crate) fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::RngCore::fill_bytes(&mut rand::rng(), key.as_mut());
    key
}

impl SealingKey {
    pub(crate) fn new(bytes: &[u8; KEY_LEN]) -> Self {
        let mut key = Key::from(*bytes);
        let cipher = XChaCha20Poly1305::new(&key);
        key.as_mut_slice().zeroize();
        SealingKey { cipher }
    }

    /// Seals `buf[start + NONCE_LEN..]` in place: writes a fresh nonce into
    /// `buf[start..start + NONCE_LEN]` and appends the tag. Reserve `TAG_LEN` bytes of capacity
    /// beforehand to avoid a reallocation.
    pub(crate) fn seal_in_place(
        &self,
        header: &[u8; HEADER_LEN],
        label: Label,
        buf: &mut Vec<u8>,
        start: usize,
    ) {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        buf[start..start + NONCE_LEN].copy_from_slice(&nonce_bytes);
        let nonce = XNonce::from(nonce_bytes);
        let aad = Aad::new(header, label);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce,
                aad.as_slice(),
                InOutBuf::from(&mut buf[start + NONCE_LEN..]),
            )
            .expect("XChaCha20-Poly1305 seals up to 256 GiB per unit");
        buf.extend_from_slice(&tag);
    }

    /// Appends the sealed unit of `plaintext` to `out`.
    pub(crate) fn seal_append(
        &self,
        header: &[u8; HEADER_LEN],
        label: Label,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.reserve(SEAL_OVERHEAD + plaintext.len());
        out.extend_from_slice(&[0u8; NONCE_LEN]);
        out.extend_from_slice(plaintext);
        self.seal_in_place(header, label, out, start);
    }

    /// Opens a sealed unit in place, without allocating; returns where the plaintext is in
    /// `sealed` (between the nonce and the tag).
    ///
    /// # Errors
    /// [`OpenError`] if the unit is too short or fails authentication; `sealed` may then hold
    /// garbage.
    pub(crate) fn open_in_place(
        &self,
        header: &[u8; HEADER_LEN],
        label: Label,
        sealed: &mut [u8],
    ) -> Result<std::ops::Range<usize>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError);
        }
        let end = sealed.len() - TAG_LEN;
        let nonce = XNonce::try_from(&sealed[..NONCE_LEN]).map_err(|_| OpenError)?;
        let tag = Tag::try_from(&sealed[end..]).map_err(|_| OpenError)?;
        let aad = Aad::new(header, label);
        self.cipher
            .decrypt_inout_detached(
                &nonce,
                aad.as_slice(),
                InOutBuf::from(&mut sealed[NONCE_LEN..end]),
                &tag,
            )
            .map_err(|_| OpenError)?;
        Ok(NONCE_LEN..end)
    }

    /// Opens a sealed unit into a new buffer.
    ///
    /// # Errors
    /// [`OpenError`] if the unit is too short or fails authentication.
    pub(crate) fn open(
        &self,
        header: &[u8; HEADER_LEN],
        label: Label,
        sealed: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(OpenError);
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError)?;
        let tag = Tag::try_from(tag).map_err(|_| OpenError)?;
        let mut plaintext = vec![0u8; ciphertext.len()];
        let buf = InOutBuf::new(ciphertext, &mut plaintext).map_err(|_| OpenError)?;
        let aad = Aad::new(header, label);
        self.cipher
            .decrypt_inout_detached(&nonce, aad.as_slice(), buf, &tag)
            .map_err(|_| OpenError)?;
        Ok(plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: [u8; HEADER_LEN] = *b"MBKI\x02\x01\0\0";

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let key = SealingKey::new(&random_key());
        let mut sealed = Vec::new();
        key.seal_append(&HEADER, Label::Index, b"the index body", &mut sealed);
        assert_eq!(sealed.len(), 14 + SEAL_OVERHEAD);
        assert_eq!(
            key.open(&HEADER, Label::Index, &sealed).unwrap(),
            b"the index body"
        );

        // Same plaintext, fresh nonce: different bytes.
        let mut again = Vec::new();
        key.seal_append(&HEADER, Label::Index, b"the index body", &mut again);
        assert_ne!(sealed, again);

        // Every byte matters: nonce, ciphertext, tag.
        for at in [0, NONCE_LEN + 3, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert_eq!(key.open(&HEADER, Label::Index, &bad), Err(OpenError));
        }
        // Another kind, another header, another key, too short.
        assert_eq!(key.open(&HEADER, Label::Snapshot, &sealed), Err(OpenError));
        let mut other_header = HEADER;
        other_header[0] = b'X';
        assert_eq!(
            key.open(&other_header, Label::Index, &sealed),
            Err(OpenError)
        );
        let other = SealingKey::new(&random_key());
        assert_eq!(other.open(&HEADER, Label::Index, &sealed), Err(OpenError));
        assert_eq!(
            key.open(&HEADER, Label::Index, &sealed[..39]),
            Err(OpenError)
        );
    }

    #[test]
    fn seal_in_place_keeps_the_prefix() {
        let key = SealingKey::new(&random_key());
        let mut buf = b"prefix".to_vec();
        buf.extend_from_slice(&[0u8; NONCE_LEN]);
        buf.extend_from_slice(b"payload");
        key.seal_in_place(&HEADER, Label::Blob, &mut buf, 6);
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(buf.len(), 6 + SEAL_OVERHEAD + 7);
        assert_eq!(
            key.open(&HEADER, Label::Blob, &buf[6..]).unwrap(),
            b"payload"
        );
        let mut unit = buf[6..].to_vec();
        let range = key.open_in_place(&HEADER, Label::Blob, &mut unit).unwrap();
        assert_eq!(&unit[range], b"payload");
        unit[30] ^= 1;
        assert_eq!(
            key.open_in_place(&HEADER, Label::Blob, &mut unit),
            Err(OpenError)
        );
    }
}
