//! A blocked Bloom filter over blob ids: "is this blob maybe in the index cache?"
//!
//! Bloom, "Space/time trade-offs in hash coding with allowable errors", CACM 13(7), 1970; the
//! blocked variant (all of an id's bits in one 512-bit block, one cache line) from Putze,
//! Sanders and Singler, "Cache-, Hash- and Space-Efficient Bloom Filters", WEA 2007.
//!
//! Blob ids are keyed BLAKE3 hashes, already uniform, so the filter takes its bit positions
//! straight from the id's bytes instead of hashing again. No false negatives; at
//! [`BITS_PER_ID`] = 10 bits per id and 8 probes, about 1 % false positives, which the caller
//! confirms (or refutes) against the on-disk table. A static filter (xor, binary fuse) would be
//! ~20 % smaller but needs every key in memory at once to build; this one is built while the
//! table streams past.

use crate::id::BlobId;

/// Filter bits per id the filter is sized for.
pub(crate) const BITS_PER_ID: u64 = 10;
/// Bits set (and tested) per id, all within one block.
const PROBES: usize = 8;
/// u64 words per block: 8 × 64 = 512 bits.
const BLOCK_WORDS: usize = 8;
/// Bytes per block when serialized.
pub(crate) const BLOCK_BYTES: usize = BLOCK_WORDS * 8;

/// The filter: `blocks.len()` blocks of 512 bits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BlobFilter {
    blocks: Vec<[u64; BLOCK_WORDS]>,
}

impl BlobFilter {
    /// An empty filter sized for `capacity` ids (at least one block).
    pub(crate) fn with_capacity(capacity: u64) -> Self {
        let blocks = (capacity * BITS_PER_ID).div_ceil(512).max(1);
        BlobFilter {
            blocks: vec![[0; BLOCK_WORDS]; blocks as usize],
        }
    }

    /// Number of 512-bit blocks.
    pub(crate) fn block_count(&self) -> usize {
        self.blocks.len()
    }

    fn probe(&self, id: &BlobId) -> (usize, [u16; PROBES]) {
        let b = id.as_bytes();
        // Block from bytes 16..24 (multiply-shift maps 64 bits onto 0..blocks without bias
        // worth measuring); bit positions, 9 bits each, from bytes 24..32 and 8..16.
        let h0 = u64::from_le_bytes(b[16..24].try_into().expect("8 bytes"));
        let block = ((u128::from(h0) * self.blocks.len() as u128) >> 64) as usize;
        let mut bits = u128::from(u64::from_le_bytes(b[24..32].try_into().expect("8 bytes")))
            | u128::from(u64::from_le_bytes(b[8..16].try_into().expect("8 bytes"))) << 64;
        let mut out = [0u16; PROBES];
        for o in &mut out {
            *o = (bits & 511) as u16;
            bits >>= 9;
        }
        (block, out)
    }

    /// Adds `id`.
    pub(crate) fn insert(&mut self, id: &BlobId) {
        let (block, bits) = self.probe(id);
        let block = &mut self.blocks[block];
        for bit in bits {
            block[usize::from(bit >> 6)] |= 1 << (bit & 63);
        }
    }

    /// False if `id` was certainly never added; true if it probably was.
    pub(crate) fn maybe_contains(&self, id: &BlobId) -> bool {
        let (block, bits) = self.probe(id);
        let block = &self.blocks[block];
        bits.iter()
            .all(|&bit| block[usize::from(bit >> 6)] & (1 << (bit & 63)) != 0)
    }

    /// Appends the filter's bytes (little-endian words, block by block) to `out`.
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.reserve(self.blocks.len() * BLOCK_BYTES);
        for block in &self.blocks {
            for word in block {
                out.extend_from_slice(&word.to_le_bytes());
            }
        }
    }

    /// Reads a filter written by [`BlobFilter::write_to`]; `None` if `bytes` is not a whole,
    /// non-zero number of blocks.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(BLOCK_BYTES) {
            return None;
        }
        let blocks = bytes
            .chunks_exact(BLOCK_BYTES)
            .map(|chunk| {
                let mut block = [0u64; BLOCK_WORDS];
                for (w, b) in block.iter_mut().zip(chunk.chunks_exact(8)) {
                    *w = u64::from_le_bytes(b.try_into().expect("8 bytes"));
                }
                block
            })
            .collect();
        Some(BlobFilter { blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(seed: u64) -> BlobId {
        BlobId::from_bytes(*blake3::hash(&seed.to_le_bytes()).as_bytes())
    }

    proptest! {
        #[test]
        fn no_false_negatives(ids in proptest::collection::vec(any::<[u8; 32]>(), 0..2000), extra in 0u64..5000) {
            let mut filter = BlobFilter::with_capacity(ids.len() as u64 / 2 + extra);
            for b in &ids {
                filter.insert(&BlobId::from_bytes(*b));
            }
            for b in &ids {
                prop_assert!(filter.maybe_contains(&BlobId::from_bytes(*b)));
            }
            let mut bytes = Vec::new();
            filter.write_to(&mut bytes);
            prop_assert_eq!(BlobFilter::from_bytes(&bytes).unwrap(), filter);
        }
    }

    #[test]
    fn false_positive_rate_near_one_percent_at_capacity() {
        let n = 200_000;
        let mut filter = BlobFilter::with_capacity(n);
        for i in 0..n {
            filter.insert(&id(i));
        }
        let trials = 200_000;
        let false_positives = (n..n + trials)
            .filter(|&i| filter.maybe_contains(&id(i)))
            .count();
        let rate = false_positives as f64 / trials as f64;
        // Theory for 10 bits/id, 8 probes, 512-bit blocks: about 1.0–1.2 %.
        assert!((0.002..0.02).contains(&rate), "false positive rate {rate}");
        assert_eq!(filter.block_count() as u64, (n * BITS_PER_ID).div_ceil(512));
    }

    #[test]
    fn rejects_partial_blocks() {
        assert!(BlobFilter::from_bytes(&[]).is_none());
        assert!(BlobFilter::from_bytes(&[0; BLOCK_BYTES + 1]).is_none());
        assert!(BlobFilter::from_bytes(&[0; BLOCK_BYTES * 2]).is_some());
    }
}
