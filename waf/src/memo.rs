//! Per-request memos of values that matched nothing: a value seen again as the same kind
//! of target is not inspected again.

use std::hash::Hasher;

use crate::parse::Kind;

/// Longest value remembered as clean within a request (longer ones are rarely repeated, and
/// hashing them would cost more than it saves).
pub(crate) const MEMO_MAX: usize = 256;
/// Fewest values in a collection for which the memo is kept.
pub(crate) const MEMO_MIN_TARGETS: usize = 16;
/// Entries of the JSON walk's memo of clean values (a power of two).
pub(crate) const MEMO_SLOTS: usize = 64;
const _: () = assert!(MEMO_SLOTS.is_power_of_two());

/// Values up to this many bytes are remembered by their bytes (two words), not by reference.
pub(crate) const MEMO_SHORT: usize = 16;

/// The JSON walk's memo of clean values: direct-mapped, one entry per hash slot, so a
/// lookup is a hash and one comparison (a hash set's probing cost as much as inspecting
/// a short value). A collision replaces the older value, which is then inspected again
/// if it comes back: the memo only saves work, it never changes a result.
///
/// Short values (most JSON keys, numbers and codes) are kept as their bytes packed into
/// two words with their length and kind: equal entries are equal values, so the lookup
/// is a multiplication and three word comparisons (hashing byte slices and calling
/// `memcmp` cost ~190 instructions per key or leaf, as much as the walk itself).
pub(crate) struct CleanMemo<'a> {
    pub(crate) short: [ShortKey; MEMO_SLOTS],
    pub(crate) long: [Option<(Kind, &'a str)>; MEMO_SLOTS],
}

/// The bytes of a value packed into two words (see [`ShortKey::of`]) and
/// `len << 8 | kind bit`; the tag of a real entry is never 0 (a kind bit is), so the
/// all-zero default matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ShortKey(u64, u64, u32);

impl ShortKey {
    #[inline(always)]
    pub(crate) fn of(kind: Kind, value: &str) -> Option<ShortKey> {
        let b = value.as_bytes();
        let len = b.len();
        // Two loads that together cover every byte (overlapping when the value is shorter
        // than both): for a given length they determine the bytes, and the length is in
        // the tag, so equal keys are equal values. Fixed-size loads, no `memcpy` call.
        let (lo, hi) = match len {
            0 => (0, 0),
            1..=3 => (
                u64::from(b[0]) | u64::from(b[len / 2]) << 8 | u64::from(b[len - 1]) << 16,
                0,
            ),
            4..=8 => (u64::from(load4(&b[..4])), u64::from(load4(&b[len - 4..]))),
            9..=MEMO_SHORT => (load8(&b[..8]), load8(&b[len - 8..])),
            _ => return None,
        };
        // `len` is at most MEMO_SHORT.
        let tag = (len as u32) << 8 | u32::from(kind.bit());
        Some(ShortKey(lo, hi, tag))
    }

    #[inline(always)]
    pub(crate) fn slot(self) -> usize {
        // Multiplicative hashing: the top bits of the product depend on every input bit.
        let x = (self.0 ^ self.1.rotate_left(29) ^ u64::from(self.2))
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        (x >> (64 - MEMO_SLOTS.trailing_zeros())) as usize
    }
}

/// The first four bytes of `b` (at least four), little-endian.
pub(crate) fn load4(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

/// The first eight bytes of `b` (at least eight), little-endian.
pub(crate) fn load8(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

impl Default for CleanMemo<'_> {
    fn default() -> Self {
        CleanMemo {
            short: [ShortKey::default(); MEMO_SLOTS],
            long: [None; MEMO_SLOTS],
        }
    }
}

impl<'a> CleanMemo<'a> {
    pub(crate) fn slot(kind: Kind, value: &str) -> usize {
        let mut h = FxHasher::default();
        h.write(value.as_bytes());
        h.write_usize(kind.bit().into());
        // FxHash leaves short keys poorly spread in any few bits: finish with MurmurHash3's
        // avalanche step before taking the slot.
        let mut x = h.finish();
        x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        (x ^ (x >> 33)) as usize % MEMO_SLOTS
    }

    #[inline(always)]
    pub(crate) fn contains(&self, kind: Kind, value: &str) -> bool {
        match ShortKey::of(kind, value) {
            Some(key) => self.short[key.slot()] == key,
            None => self.long[Self::slot(kind, value)] == Some((kind, value)),
        }
    }

    pub(crate) fn insert(&mut self, kind: Kind, value: &'a str) {
        match ShortKey::of(kind, value) {
            Some(key) => self.short[key.slot()] = key,
            None => self.long[Self::slot(kind, value)] = Some((kind, value)),
        }
    }
}

/// A word-at-a-time multiplicative hash (FxHash's) for the per-request memo of clean
/// values: short keys, no adversarial concern (a collision costs a comparison, and the set
/// is bounded by the request's values). FNV-1a, one multiplication per byte, cost more
/// than the inspection it saved on short JSON values.
#[derive(Default)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    const K: u64 = 0x517c_c1b7_2722_0a95;

    pub(crate) fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.mix(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.mix(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.mix(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.mix(i as u64);
    }

    fn write_isize(&mut self, i: isize) {
        self.mix(i as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
