//! Content-defined chunking with FastCDC.
//!
//! Implements the v2020 variant of FastCDC (gear hash, normalized chunking, two bytes per loop
//! iteration) from Xia et al., "FastCDC: a Fast and Efficient Content-Defined Chunking Approach
//! for Data Deduplication", USENIX ATC 2016, and its extended version "The Design of Fast
//! Content-Defined Chunking for Data Deduplication Based Storage Systems", IEEE TPDS 31(9),
//! 2020, via the `fastcdc` crate's `v2020::cut_gear`. The gear table is XORed with a
//! per-repository seed so chunk boundaries (and thus chunk sizes) differ between repositories.
//!
//! Streaming: a cut point depends only on the bytes from the chunk start up to at most
//! `max_size` bytes further, so cutting a buffer whenever it holds at least `max_size` bytes
//! (or the stream has ended) gives the same chunks as cutting the whole stream at once,
//! however the input was split into writes.

use std::borrow::Cow;

use fastcdc::v2020::{self, Normalization};

use crate::config::ChunkerConfig;

/// FastCDC v2020 with a seeded gear table.
#[derive(Clone, Debug)]
pub(crate) struct Chunker {
    min_size: usize,
    avg_size: usize,
    max_size: usize,
    mask_s: u64,
    mask_l: u64,
    gear: Cow<'static, [u64]>,
    gear_ls: Cow<'static, [u64]>,
}

impl Chunker {
    /// Builds the chunker described by a validated config.
    pub(crate) fn new(config: &ChunkerConfig) -> Self {
        let level = match config.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        };
        let avg_size = config.avg_size as usize;
        let (mask_s, mask_l) = v2020::select_masks(avg_size, level);
        let (gear, gear_ls) = v2020::get_gear_with_seed(config.gear_seed);
        Self {
            min_size: config.min_size as usize,
            avg_size,
            max_size: config.max_size as usize,
            mask_s,
            mask_l,
            gear,
            gear_ls,
        }
    }

    /// Largest chunk, in bytes.
    pub(crate) fn max_size(&self) -> usize {
        self.max_size
    }

    /// Length of the chunk starting at `data[0]`.
    ///
    /// `data` must hold either at least `max_size` bytes or the whole rest of the stream;
    /// otherwise the cut may differ from the one the whole stream would give.
    pub(crate) fn next_cut(&self, data: &[u8]) -> usize {
        let (_hash, len) = v2020::cut_gear(
            data,
            self.min_size,
            self.avg_size,
            self.max_size,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
            &self.gear,
            &self.gear_ls,
        );
        len
    }

    /// Cuts `data` into chunks and returns their lengths. If `at_end` is false, stops while
    /// fewer than `max_size` bytes remain, leaving them for the next call.
    pub(crate) fn cut_all(&self, data: &[u8], at_end: bool) -> Vec<usize> {
        let mut lens = Vec::with_capacity(data.len() / self.avg_size + 1);
        let mut pos = 0;
        while pos < data.len() && (at_end || data.len() - pos >= self.max_size) {
            let len = self.next_cut(&data[pos..]);
            debug_assert!(len > 0);
            lens.push(len);
            pos += len;
        }
        lens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RepoConfig;

    fn pseudo_random(len: usize, mut state: u64) -> Vec<u8> {
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[test]
    fn sizes_stay_within_bounds_and_average_near_target() {
        let chunker = Chunker::new(&RepoConfig::generate(None).chunker);
        let data = pseudo_random(24 << 20, 7);
        let lens = chunker.cut_all(&data, true);
        assert_eq!(lens.iter().sum::<usize>(), data.len());
        for &len in &lens[..lens.len() - 1] {
            assert!((64 << 10..=2 << 20).contains(&len), "chunk of {len} bytes");
        }
        let avg = data.len() / lens.len();
        assert!(
            (150 << 10..=450 << 10).contains(&avg),
            "average chunk {avg} bytes"
        );
    }

    #[test]
    fn small_input_is_one_chunk_and_zeros_cut_at_max() {
        let chunker = Chunker::new(&RepoConfig::generate(None).chunker);
        assert_eq!(chunker.cut_all(&[7u8; 60_000], true), vec![60_000]);
        assert_eq!(chunker.cut_all(&[], true), Vec::<usize>::new());
        let zeros = vec![0u8; 5 << 20];
        assert_eq!(
            chunker.cut_all(&zeros, true),
            vec![2 << 20, 2 << 20, 1 << 20]
        );
        // Not at the end: the last partial window waits for more data.
        assert_eq!(chunker.cut_all(&zeros, false), vec![2 << 20, 2 << 20]);
    }

    #[test]
    fn seed_changes_cut_points() {
        let data = pseudo_random(8 << 20, 99);
        let mut a = RepoConfig::generate(None).chunker;
        let mut b = a.clone();
        a.gear_seed = 1;
        b.gear_seed = 2;
        let cuts_a = Chunker::new(&a).cut_all(&data, true);
        let cuts_b = Chunker::new(&b).cut_all(&data, true);
        assert_ne!(cuts_a, cuts_b);
    }
}
