//! Content-defined chunking with FastCDC.
//!
//! Implements the v2020 variant of FastCDC (gear hash, normalized chunking) from Xia et al.,
//! "FastCDC: a Fast and Efficient Content-Defined Chunking Approach for Data Deduplication",
//! USENIX ATC 2016, and its extended version "The Design of Fast Content-Defined Chunking for
//! Data Deduplication Based Storage Systems", IEEE TPDS 31(9), 2020, with exactly the cut points
//! of the `fastcdc` crate's `v2020::cut_gear` (its masks and gear tables are used as they are).
//! The gear table is XORed with a per-repository seed so chunk boundaries (and thus chunk sizes)
//! differ between repositories.
//!
//! Scan: `cut_gear` rolls the gear hash `H_i = (H_{i-1} << 1) + gear[data[i]]` from 0 at
//! `min_size` and cuts before the first offset `i` whose hash has none of the mask's bits set
//! (the strict mask below `avg_size`, the relaxed one from there on). One such scan is a serial
//! chain of a shift and an add per byte, so it is bound by their latency. Since every step
//! shifts the hash left by one bit, `H_i` only depends on the 64 bytes `i - 63..=i` (or on the
//! bytes from `min_size` when fewer). [`Chunker::next_cut`] therefore cuts the scanned range
//! into blocks of `STREAMS` consecutive `SEGMENT`-byte segments, starts each segment's hash
//! from the 64 bytes before it, and rolls the independent chains in lockstep, about twice as fast.
//! On a hit (rare: about one offset in 2^16..2^20 with the default sizes) it settles which
//! segment's first hit comes first; blocks go in order, so at most one block is hashed past the
//! cut. The lengths are equal
//! to `cut_gear`'s for every input, seed, size and normalization level; the tests below compare
//! the two.
//!
//! Streaming: a cut point depends only on the bytes from the chunk start up to the cut (at
//! most `max_size` bytes further), so cutting what a buffer holds and carrying over only the
//! last chunk, the one without a cut point yet, gives the same chunks as cutting the whole
//! stream at once, however the input was split into writes ([`Chunker::cut_all`]).

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
}

/// Hash chains rolled in lockstep, one per segment of a block.
const STREAMS: usize = 4;
/// Bytes of one segment.
const SEGMENT: usize = 4096;
/// Bytes the hash keeps: `H_i` does not depend on the bytes before `i - 63`.
const WINDOW: usize = 64;

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
        let (gear, _gear_ls) = v2020::get_gear_with_seed(config.gear_seed);
        Self {
            min_size: config.min_size as usize,
            avg_size,
            max_size: config.max_size as usize,
            mask_s,
            mask_l,
            gear,
        }
    }

    /// Largest chunk, in bytes.
    pub(crate) fn max_size(&self) -> usize {
        self.max_size
    }

    /// Length of the chunk starting at `data[0]`.
    ///
    /// If `data` holds fewer than `max_size` bytes and is not the whole rest of the stream,
    /// only a length shorter than `data` is final (a cut point was found); `data.len()` means
    /// the chunk goes on past what `data` holds.
    pub(crate) fn next_cut(&self, data: &[u8]) -> usize {
        // `cut_gear` returns inputs of at most `min_size` bytes whole. Otherwise it looks at the
        // first `n` bytes and tests each offset `i` in `min_size..n & !1` (an odd last byte is
        // never tested): `H_i` of bytes `min_size..=i` against `mask_s` below `c` and against
        // `mask_l` from `c` on. It returns the first `i` that passes, so the chunk ends before
        // byte `i`, or `n`. (It rolls two bytes per step and tests even offsets as
        // `(H_i << 1) & (mask << 1)`, the same test: no mask has bit 63 set.)
        let len = data.len();
        if len <= self.min_size {
            return len;
        }
        let n = len.min(self.max_size);
        let c = self.avg_size.min(n) & !1;
        let e = n & !1;
        let gear: &[u64; 256] = self.gear.as_ref().try_into().expect("256 gear entries");
        let base = self.min_size;
        first_hit(data, base, base, c, self.mask_s, gear)
            .or_else(|| first_hit(data, base, c, e, self.mask_l, gear))
            .unwrap_or(n)
    }

    /// Cuts `data` into chunks and returns their lengths. If `at_end` is false, the last
    /// chunk, whose end needs bytes not yet seen, is left for the next call: the rest, fewer
    /// than `max_size` bytes in which no cut point was found.
    ///
    /// A cut point found before the end of `data` is final even when fewer than `max_size`
    /// bytes follow the chunk's start: every position up to it is tested with the same hash
    /// and mask as in the whole stream. The hash restarts at each chunk's `min_size`. The
    /// strict mask applies below `avg_size`, or below the end of shorter data, which is
    /// earlier but tests only offsets that get the strict mask in the whole stream too. So
    /// only a chunk without a cut point inside `data` can end differently once more bytes
    /// arrive. Leaving just that chunk
    /// keeps the bytes a writer carries over to its next buffer to one partial chunk.
    pub(crate) fn cut_all(&self, data: &[u8], at_end: bool) -> Vec<usize> {
        let mut lens = Vec::with_capacity(data.len() / self.avg_size + 1);
        let mut pos = 0;
        while pos < data.len() {
            let rest = data.len() - pos;
            let len = self.next_cut(&data[pos..]);
            debug_assert!(len > 0);
            if !at_end && rest < self.max_size && len == rest {
                break;
            }
            lens.push(len);
            pos += len;
        }
        lens
    }
}

/// One step of the gear hash.
#[inline(always)]
fn roll(hash: u64, byte: u8, gear: &[u64; 256]) -> u64 {
    (hash << 1).wrapping_add(gear[usize::from(byte)])
}

/// `H_{p-1}`, the hash of `data[base..p]`, of which only the last `WINDOW` bytes count.
fn hash_before(data: &[u8], base: usize, p: usize, gear: &[u64; 256]) -> u64 {
    let from = p.saturating_sub(WINDOW).max(base);
    data[from..p].iter().fold(0, |h, &b| roll(h, b, gear))
}

/// The first offset `start + k` whose hash has no bit of `mask` set, rolling `bytes` from
/// `hash`, the hash before `start`.
fn scan(bytes: &[u8], start: usize, mut hash: u64, mask: u64, gear: &[u64; 256]) -> Option<usize> {
    for (k, &b) in bytes.iter().enumerate() {
        hash = roll(hash, b, gear);
        if hash & mask == 0 {
            return Some(start + k);
        }
    }
    None
}

/// The first `i` in `from..to` with `H_i & mask == 0`, where `H_i` hashes `data[base..=i]`.
///
/// Full blocks of `STREAMS` segments of `SEGMENT` bytes, in order, then blocks of shorter
/// segments, then a plain scan of the last bytes.
#[inline(always)]
fn first_hit(
    data: &[u8],
    base: usize,
    from: usize,
    to: usize,
    mask: u64,
    gear: &[u64; 256],
) -> Option<usize> {
    let mut pos = from;
    // `H_{pos-1}`: the first segment of each block carries on from the previous block.
    let mut carry = hash_before(data, base, pos, gear);
    while to - pos >= STREAMS * SEGMENT {
        match block(data, pos, carry, mask, gear) {
            Ok(last) => carry = last,
            Err(i) => return Some(i),
        }
        pos += STREAMS * SEGMENT;
    }
    // Below a few hundred bytes a segment, the warm-ups cost more than they save.
    while to - pos >= STREAMS * 256 {
        let seg = (to - pos) / STREAMS;
        let hit = short_block(data, base, pos, seg, mask, gear);
        if hit.is_some() {
            return hit;
        }
        pos += STREAMS * seg;
    }
    let hash = hash_before(data, base, pos, gear);
    scan(&data[pos..to], pos, hash, mask, gear)
}

/// Scans `data[pos..pos + STREAMS * SEGMENT]`, whose hash before is `carry`: the first hit
/// (`Err`), or the hash at the end of the block (`Ok`).
#[inline(always)]
fn block(data: &[u8], pos: usize, carry: u64, mask: u64, gear: &[u64; 256]) -> Result<u64, usize> {
    const { assert!(SEGMENT >= WINDOW) };
    let blk = &data[pos..][..STREAMS * SEGMENT];
    // Each later segment starts from the hash of the `WINDOW` bytes before it, all in the
    // block (so at or after `base`): its `H` exactly.
    let mut h = [carry; STREAMS];
    let mut warm = [0u64; STREAMS];
    for j in SEGMENT - WINDOW..SEGMENT {
        for k in 1..STREAMS {
            warm[k] = roll(warm[k], blk[(k - 1) * SEGMENT + j], gear);
        }
    }
    h[1..].copy_from_slice(&warm[1..]);
    for o in 0..SEGMENT {
        let mut any = false;
        for k in 0..STREAMS {
            h[k] = roll(h[k], blk[k * SEGMENT + o], gear);
            any |= h[k] & mask == 0;
        }
        if any {
            let segs: [&[u8]; STREAMS] = std::array::from_fn(|k| &blk[k * SEGMENT..][..SEGMENT]);
            return Err(settle(&segs, pos, o, &h, mask, gear));
        }
    }
    Ok(h[STREAMS - 1])
}

/// A block of `STREAMS` segments of `seg` bytes (`WINDOW <= seg < SEGMENT`) at `pos`.
#[inline(never)]
fn short_block(
    data: &[u8],
    base: usize,
    pos: usize,
    seg: usize,
    mask: u64,
    gear: &[u64; 256],
) -> Option<usize> {
    let segs: [&[u8]; STREAMS] = std::array::from_fn(|k| &data[pos + k * seg..][..seg]);
    let mut h: [u64; STREAMS] =
        std::array::from_fn(|k| hash_before(data, base, pos + k * seg, gear));
    for o in 0..seg {
        let mut any = false;
        for k in 0..STREAMS {
            h[k] = roll(h[k], segs[k][o], gear);
            any |= h[k] & mask == 0;
        }
        if any {
            return Some(settle(&segs, pos, o, &h, mask, gear));
        }
    }
    None
}

/// Cold path: some segment (at `pos`, `pos + seg`, ...) hits at offset `o`, where the hashes
/// are `h`, and none did before `o`. The first such segment's hit comes first, unless an
/// earlier segment hits after `o`.
#[cold]
#[inline(never)]
fn settle(
    segs: &[&[u8]; STREAMS],
    pos: usize,
    o: usize,
    h: &[u64; STREAMS],
    mask: u64,
    gear: &[u64; 256],
) -> usize {
    let seg = segs[0].len();
    for k in 0..STREAMS {
        let start = pos + k * seg;
        if h[k] & mask == 0 {
            return start + o;
        }
        if let Some(i) = scan(&segs[k][o + 1..], start + o + 1, h[k], mask, gear) {
            return i;
        }
    }
    unreachable!("a segment hit at offset {o}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RepoConfig;
    use proptest::prelude::*;

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

    /// Low-entropy data (runs of a few byte values) hits cut points at many offsets, so
    /// buffers end close after cut points and inside chunks of every size.
    fn runs(len: usize, seed: u64) -> Vec<u8> {
        let noise = pseudo_random(len / 64 + 1, seed);
        let mut out = Vec::with_capacity(len);
        let mut i = 0;
        while out.len() < len {
            let (byte, run) = (
                noise[i % noise.len()] % 4,
                noise[(i + 1) % noise.len()] as usize,
            );
            out.extend(std::iter::repeat_n(
                byte,
                (run % 7 + 1).min(len - out.len()),
            ));
            i += 2;
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Cutting a stream buffer by buffer, carrying over what `cut_all` leaves, gives the
        /// chunks of cutting it whole, for any buffer sizes.
        #[test]
        fn streaming_cuts_equal_whole_stream_cuts(
            len in 0usize..(9 << 20),
            seed in proptest::prelude::any::<u64>(),
            low_entropy in proptest::prelude::any::<bool>(),
            refills in proptest::collection::vec(50_000usize..(3 << 20), 1..12),
        ) {
            let mut config = RepoConfig::generate(None).chunker;
            config.gear_seed = seed;
            let chunker = Chunker::new(&config);
            let data = if low_entropy { runs(len, seed) } else { pseudo_random(len, seed | 1) };
            let whole = chunker.cut_all(&data, true);
            let mut streamed = Vec::new();
            let (mut buf, mut fed, mut i) = (Vec::new(), 0, 0);
            while fed < data.len() {
                let n = refills[i % refills.len()].min(data.len() - fed);
                buf.extend_from_slice(&data[fed..fed + n]);
                fed += n;
                i += 1;
                let lens = chunker.cut_all(&buf, fed == data.len());
                let consumed: usize = lens.iter().sum();
                streamed.extend(lens);
                buf.drain(..consumed);
            }
            proptest::prop_assert!(buf.is_empty());
            proptest::prop_assert_eq!(streamed, whole);
        }
    }

    /// `next_cut` tests even offsets as `H_i & mask`, `cut_gear` as `(H_i << 1) & (mask << 1)`:
    /// the same only while no mask has bit 63 set. Every average size a config may hold, at
    /// every level, so that a `fastcdc` release with other masks fails here.
    #[test]
    fn no_mask_has_bit_63() {
        let levels = [
            Normalization::Level0,
            Normalization::Level1,
            Normalization::Level2,
            Normalization::Level3,
        ];
        let mut avg = v2020::AVERAGE_MIN;
        while avg <= v2020::AVERAGE_MAX {
            for size in [avg - 2, avg, avg + 2, (avg * 3 / 2) & !1] {
                if !(v2020::AVERAGE_MIN..=v2020::AVERAGE_MAX).contains(&size) {
                    continue;
                }
                for level in levels {
                    let (s, l) = v2020::select_masks(size, level);
                    assert_eq!((s | l) >> 63, 0, "avg {size}, {level:?}");
                }
            }
            avg *= 2;
        }
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

    /// `v2020::cut_gear`'s length, called as `next_cut` did before it scanned by itself.
    fn cut_gear_len(chunker: &Chunker, seed: u64, data: &[u8]) -> usize {
        let (gear, gear_ls) = v2020::get_gear_with_seed(seed);
        let (_hash, len) = v2020::cut_gear(
            data,
            chunker.min_size,
            chunker.avg_size,
            chunker.max_size,
            chunker.mask_s,
            chunker.mask_l,
            chunker.mask_s << 1,
            chunker.mask_l << 1,
            &gear,
            &gear_ls,
        );
        len
    }

    /// Valid chunker sizes (see `RepoConfig::decode`), small enough for debug builds, or the
    /// default ones.
    fn chunker_config() -> impl Strategy<Value = ChunkerConfig> {
        let small = (32u32..4096, 0u32..8192, 0u32..16384).prop_map(|(min, avg, max)| {
            let min_size = 2 * min;
            let avg_size = (2 * (min + 1 + avg)).max(256);
            let max_size = (avg_size + 2 * (1 + max)).max(1024);
            (min_size, avg_size, max_size)
        });
        let sizes = prop_oneof![small, Just((64 << 10, 256 << 10, 2 << 20))];
        (sizes, 0u8..=3, any::<u64>()).prop_map(
            |((min_size, avg_size, max_size), normalization, gear_seed)| ChunkerConfig {
                min_size,
                avg_size,
                max_size,
                normalization,
                gear_seed,
                ..RepoConfig::generate(None).chunker
            },
        )
    }

    /// Sets `data[t - 3..=t]` so that `H_t` (from `min_size`) passes both masks, if it can.
    fn plant_hit(chunker: &Chunker, data: &mut [u8], t: usize) {
        let (min, mask) = (chunker.min_size, chunker.mask_s | chunker.mask_l);
        if t < min + 3 || t >= data.len() {
            return;
        }
        let gear: &[u64; 256] = chunker.gear.as_ref().try_into().unwrap();
        let h = hash_before(data, min, t - 3, gear);
        for b0 in 0..=255u8 {
            let h0 = roll(h, b0, gear);
            for b1 in 0..=255u8 {
                let h1 = roll(h0, b1, gear);
                for b2 in 0..=255u8 {
                    let h2 = roll(h1, b2, gear);
                    for b3 in 0..=255u8 {
                        if roll(h2, b3, gear) & mask == 0 {
                            data[t - 3..=t].copy_from_slice(&[b0, b1, b2, b3]);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// A byte whose runs never pass a mask, so that planted hits are the first ones.
    fn quiet_byte(chunker: &Chunker, seed: u64) -> Option<u8> {
        let len = chunker.max_size + 1;
        (0..=255u8).find(|&b| cut_gear_len(chunker, seed, &vec![b; len]) == chunker.max_size)
    }

    /// Single hits planted into runs of a byte without hits: at and after segment and block
    /// starts (where the lockstep chains start from their warm-up windows) in both mask
    /// ranges, and at the last bytes of short and odd inputs.
    #[test]
    fn planted_hits_at_segment_starts_and_ends() {
        for (min_size, avg_size, max_size, normalization) in [
            (64 << 10, 256 << 10, 2 << 20, 1),
            (1000, 4000, 200_000, 1),
            (64, 256, 100_000, 0),
        ] {
            for gear_seed in [0, 0x5eed] {
                let config = ChunkerConfig {
                    min_size,
                    avg_size,
                    max_size,
                    normalization,
                    gear_seed,
                    ..RepoConfig::generate(None).chunker
                };
                let chunker = Chunker::new(&config);
                let quiet = quiet_byte(&chunker, gear_seed).expect("a byte without hits");
                let (min, c) = (chunker.min_size, chunker.avg_size);
                let mut cases = Vec::new();
                for start in [min, c] {
                    for k in 1..=2 * STREAMS {
                        for d in [-1, 0, 1, 2, 3, 23, 24, 31, 32, 40, 47, 48, 62, 63, 64, 65] {
                            let t = (start + k * SEGMENT).wrapping_add_signed(d);
                            cases.push((t, t + 1 + 2 * STREAMS * SEGMENT + k % 3));
                        }
                    }
                }
                for len in [
                    min + 5,
                    min + 101,
                    c - 1,
                    c + 1,
                    c + 17,
                    4 * STREAMS * SEGMENT + 3,
                ] {
                    cases.extend([(len - 1, len), (len - 2, len), (len - 3, len)]);
                }
                for (t, len) in cases {
                    let mut data = vec![quiet; len];
                    plant_hit(&chunker, &mut data, t);
                    let want = cut_gear_len(&chunker, gear_seed, &data);
                    assert_eq!(
                        chunker.next_cut(&data),
                        want,
                        "{config:?} hit at {t}, {len} bytes"
                    );
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// `next_cut` cuts where `v2020::cut_gear` does: random sizes, levels and seeds; data
        /// random, of few distinct bytes or runs (hits at many offsets), or one byte without
        /// hits; hits planted around segment and block starts, warm-up windows, where the
        /// masks change and at the end.
        #[test]
        fn next_cut_equals_fastcdc_cut_gear(
            config in chunker_config(),
            len_pick in (0u8..4, any::<u32>()),
            kind in 0u8..4,
            alphabet in proptest::collection::vec(any::<u8>(), 1..4),
            data_seed in 1u64..,
            plants in proptest::collection::vec((0u8..5, 0usize..64, -4isize..=4, 0u8..3), 0..4),
        ) {
            let chunker = Chunker::new(&config);
            let (min, avg, max) = (chunker.min_size, chunker.avg_size, chunker.max_size);
            let len = match len_pick.0 {
                0 => len_pick.1 as usize % (max + 2 * SEGMENT),
                1 => min + (len_pick.1 as usize % 9) - 4,
                2 => avg + (len_pick.1 as usize % 9) - 4,
                _ => max + (len_pick.1 as usize % 9) - 4,
            };
            let mut data = match (kind, quiet_byte(&chunker, config.gear_seed)) {
                (1, _) => pseudo_random(len, data_seed)
                    .into_iter()
                    .map(|b| alphabet[usize::from(b) % alphabet.len()])
                    .collect(),
                (2, _) => runs(len, data_seed),
                (3, Some(b)) => vec![b; len],
                _ => pseudo_random(len, data_seed),
            };
            let c = avg.min(len) & !1;
            for &(anchor, k, delta, shift) in &plants {
                let at = match anchor {
                    0 => min + k * SEGMENT,
                    1 => c + k * SEGMENT,
                    2 => len - 1,
                    3 => avg,
                    _ => max.min(len),
                };
                let at = match shift {
                    0 => at,
                    1 => at + WINDOW,
                    _ => at.wrapping_sub(WINDOW),
                };
                plant_hit(&chunker, &mut data, at.wrapping_add_signed(delta));
            }
            prop_assert_eq!(chunker.next_cut(&data), cut_gear_len(&chunker, config.gear_seed, &data));
        }
    }
}
