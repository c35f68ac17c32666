//! Deterministic identifiers in Microsoft's formats, derived by hashing their parts, so that two
//! runs over the same corpus hand out the same ids.

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// SHA-256 over the parts, each terminated by a unit separator so `("ab","c")` ≠ `("a","bc")`.
pub(crate) fn digest(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0x1f]);
    }
    h.finalize().into()
}

fn long_digest(parts: &[&str], len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut counter = 0u32;
    while out.len() < len {
        let c = counter.to_string();
        let mut all: Vec<&str> = parts.to_vec();
        all.push(&c);
        out.extend_from_slice(&digest(&all));
        counter += 1;
    }
    out.truncate(len);
    out
}

/// A GUID (lower case, hyphenated) such as directory object ids.
pub(crate) fn guid(parts: &[&str]) -> String {
    let d = digest(parts);
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// An Exchange REST id: a prefix plus URL-safe base64 of 47 bytes, which ends in one `=`
/// like many real ids (so clients must escape ids in URLs).
pub(crate) fn exchange_id(prefix: &str, parts: &[&str]) -> String {
    let bytes = long_digest(parts, 47);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE.encode(bytes)
    )
}

/// A change key (also the `@odata.etag` payload) for an Exchange item at a given version.
pub(crate) fn change_key(id: &str, version: u64) -> String {
    let v = version.to_string();
    let d = digest(&["changekey", id, &v]);
    format!(
        "CQAAABYAAA{}",
        base64::engine::general_purpose::STANDARD.encode(&d[..15])
    )
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding.
fn base32(bytes: &[u8]) -> String {
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(BASE32[((acc << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A OneDrive for Business driveItem id: `01` + 32 base32 characters.
pub(crate) fn drive_item_id(parts: &[&str]) -> String {
    let d = digest(parts);
    format!("01{}", base32(&d[..20]))
}

/// A OneDrive for Business drive id: `b!` + URL-safe base64 (66 characters in all).
pub(crate) fn drive_id(parts: &[&str]) -> String {
    let bytes = long_digest(parts, 48);
    format!(
        "b!{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Upper-case GUID used inside driveItem `eTag`/`cTag` values.
pub(crate) fn tag_guid(item_id: &str) -> String {
    guid(&["tag", item_id]).to_ascii_uppercase()
}

/// A random id for run-time objects that need not be reproducible (upload sessions, request ids).
pub(crate) fn random_token() -> String {
    let b: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(
            exchange_id("AAMkA", &["a", "b"]),
            exchange_id("AAMkA", &["a", "b"])
        );
        assert_ne!(
            exchange_id("AAMkA", &["ab", ""]),
            exchange_id("AAMkA", &["a", "b"])
        );
        let id = exchange_id("AAMkA", &["x"]);
        assert!(id.ends_with('=') && !id.ends_with("=="), "{id}");
        let item = drive_item_id(&["x"]);
        assert_eq!(item.len(), 34);
        assert!(item.starts_with("01"));
        assert_eq!(drive_id(&["x"]).len(), 66);
        assert!(uuid::Uuid::parse_str(&guid(&["u"])).is_ok());
    }

    #[test]
    fn base32_matches_rfc4648() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }
}
