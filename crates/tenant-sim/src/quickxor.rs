//! Microsoft's QuickXorHash, the content hash OneDrive for Business reports in
//! `file.hashes.quickXorHash` (documented in OneDrive's "QuickXorHash" code snippet page).
//!
//! The hash is a 160-bit register: byte number `i` of the input is XORed in at bit position
//! `(i * 11) mod 160`, wrapping around the register; finally the input length (64-bit
//! little-endian) is XORed into the last 8 of the 20 output bytes. Because the shift pattern
//! repeats every 160 bytes, the input is first folded into 160 XOR accumulators.

use base64::Engine as _;

const WIDTH_BITS: usize = 160;
const SHIFT: usize = 11;

/// Incremental QuickXorHash.
///
/// ```
/// use m365bk_tenant_sim::QuickXorHash;
/// let mut h = QuickXorHash::new();
/// h.update(b"J");
/// assert_eq!(h.finish_base64(), "SgAAAAAAAAAAAAAAAQAAAAAAAAA=");
/// ```
#[derive(Debug, Clone)]
pub struct QuickXorHash {
    fold: [u8; WIDTH_BITS],
    pos: usize,
    len: u64,
}

impl Default for QuickXorHash {
    fn default() -> Self {
        Self::new()
    }
}

impl QuickXorHash {
    /// An empty hash state.
    pub fn new() -> Self {
        Self {
            fold: [0; WIDTH_BITS],
            pos: 0,
            len: 0,
        }
    }

    /// Feeds more input.
    pub fn update(&mut self, data: &[u8]) {
        let mut pos = self.pos;
        for &b in data {
            self.fold[pos] ^= b;
            pos += 1;
            if pos == WIDTH_BITS {
                pos = 0;
            }
        }
        self.pos = pos;
        self.len = self.len.wrapping_add(data.len() as u64);
    }

    /// The 20-byte digest.
    pub fn finish(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        for (i, &b) in self.fold.iter().enumerate() {
            if b == 0 {
                continue;
            }
            let start = (i * SHIFT) % WIDTH_BITS;
            for k in 0..8 {
                if (b >> k) & 1 == 1 {
                    let bit = (start + k) % WIDTH_BITS;
                    out[bit / 8] ^= 1 << (bit % 8);
                }
            }
        }
        for (i, lb) in self.len.to_le_bytes().iter().enumerate() {
            out[12 + i] ^= lb;
        }
        out
    }

    /// The digest in standard base64, as Graph reports it.
    pub fn finish_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.finish())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(s.replace('\n', ""))
            .unwrap()
    }

    // Published test vectors (input, expected) as used by rclone's OneDrive backend
    // (backend/onedrive/quickxorhash/quickxorhash_test.go); sizes 0, 1, 3, 16, 222, 333 bytes.
    const VECTORS: &[(&str, &str)] = &[
        ("", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        ("Sg==", "SgAAAAAAAAAAAAAAAQAAAAAAAAA="),
        ("0pZP", "0rDEEwAAAAAAAAAAAwAAAAAAAAA="),
        ("2fuxhBJXtpWFe8dOfdGeHw==", "O9tHLAghgSvYohKFyMMxnNCHaHg="),
        (
            "PfxMcUd0vIW6VbHG/uj/Y0W6qEoKmyBD0nYebEKazKaKG+UaDqBEcmQjbfQeVnVLuodMoPp7P7TR
1htX5n2VnkHh22xDyoJ8C/ZQKiSNqQfXvh83judf4RVr9exJCud8Uvgip6aVZTaPrJHVjQhMCp/d
EnGvqg0oN5OVkM2qqAXvA0teKUDhgNM71sDBVBCGXxNOR2bpbD1iM4dnuT0ey4L+loXEHTL0fqMe
UcEi2asgImnlNakwenDzz0x57aBwyq3AspCFGB1ncX4yYCr/OaCcS5OKi/00WH+wNQU3",
            "QX/YEpG0gDsmhEpCdWhsxDzsfVE=",
        ),
        (
            "w0LGhqU1WXFbdavqDE4kAjEzWLGGzmTNikzqnsiXHx2KRReKVTxkv27u3UcEz9+lbMvYl4xFf2Z4
aE1xRBBNd1Ke5C0zToSaYw5o4B/7X99nKK2/XaUX1byLow2aju2XJl2OpKpJg+tSJ2fmjIJTkfuY
Uz574dFX6/VXxSxwGH/xQEAKS5TCsBK3CwnuG1p5SAsQq3gGVozDWyjEBcWDMdy8/AIFrj/y03Lf
c/RNRCQTAfZbnf2QwV7sluw4fH3XJr07UoD0YqN+7XZzidtrwqMY26fpLZnyZjnBEt1FAZWO7RnK
G5asg8xRk9YaDdedXdQSJAOy6bWEWlABj+tVAigBxavaluUH8LOj+yfCFldJjNLdi90fVHkUD/m4
Mr5OtmupNMXPwuG3EQlqWUVpQoYpUYKLsk7a5Mvg6UFkiH596y5IbJEVCI1Kb3D1",
            "e3+wo77iKcILiZegnzyUNcjCdoQ=",
        ),
    ];

    #[test]
    fn matches_published_vectors_whole_and_in_blocks() {
        for (input, expected) in VECTORS {
            let data = b64(input);
            let mut h = QuickXorHash::new();
            h.update(&data);
            assert_eq!(h.finish_base64(), *expected, "size {}", data.len());
            for block in [1, 7, 64, 161] {
                let mut h = QuickXorHash::new();
                for chunk in data.chunks(block) {
                    h.update(chunk);
                }
                assert_eq!(
                    h.finish_base64(),
                    *expected,
                    "size {} block {block}",
                    data.len()
                );
            }
        }
    }
}
