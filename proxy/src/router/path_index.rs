//! The routes of one host class looked up by path instead of scanned: the cost of finding a
//! route then depends on the request's path (one hash lookup per `/`-segment), not on how many
//! routes the host has, so 10,000 routes route about as fast as 10.
//!
//! Candidates come out in the class's rank order (`router` module documentation): exact
//! paths, then prefixes from the longest (the whole path, then the part before each `/`,
//! right to left), then the `/` prefix, then regexes. Every candidate still goes through its
//! path matcher and the route's other criteria, so the index only decides which entries are
//! looked at, never whether one matches.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::{Entry, PathMatcher};

/// Classes this small are scanned: a handful of comparisons costs less than the hashing.
pub(super) const SCAN_MAX: usize = 8;

/// Positions in the class's ranked entries.
type Positions = Box<[u32]>;

pub(super) struct PathIndex {
    exact: HashMap<Box<str>, Positions, RandomState>,
    /// The lengths of the exact paths: a path of another length is not hashed.
    exact_lengths: Lengths,
    prefix: HashMap<Box<str>, Positions, RandomState>,
    /// The lengths of the prefixes other than `/`.
    prefix_lengths: Lengths,
    /// `Prefix: /`, which matches every path.
    root: Positions,
    regex: Positions,
}

impl PathIndex {
    /// The index of `entries` (ranked), or `None` when scanning them is as good or better:
    /// few entries, or a prefix not starting with `/` (whose rank among same-length
    /// prefixes the index would not keep).
    pub(super) fn build(entries: &[Entry]) -> Option<PathIndex> {
        if entries.len() <= SCAN_MAX || u32::try_from(entries.len()).is_err() {
            return None;
        }
        let mut exact: HashMap<&str, Vec<u32>> = HashMap::new();
        let mut prefix: HashMap<&str, Vec<u32>> = HashMap::new();
        let (mut root, mut regex) = (Vec::new(), Vec::new());
        for (position, entry) in (0u32..).zip(entries) {
            match &entry.matcher {
                PathMatcher::Exact(p) => exact.entry(p).or_default().push(position),
                PathMatcher::Prefix(p) if &**p == "/" => root.push(position),
                PathMatcher::Prefix(p) if p.starts_with('/') => {
                    prefix.entry(p).or_default().push(position)
                }
                PathMatcher::Prefix(_) => return None,
                PathMatcher::Regex(_) => regex.push(position),
            }
        }
        let owned = |map: HashMap<&str, Vec<u32>>| -> HashMap<Box<str>, Positions, RandomState> {
            map.into_iter()
                .map(|(k, v)| (Box::from(k), v.into_boxed_slice()))
                .collect()
        };
        Some(PathIndex {
            exact_lengths: Lengths::of(exact.keys()),
            exact: owned(exact),
            prefix_lengths: Lengths::of(prefix.keys()),
            prefix: owned(prefix),
            root: root.into_boxed_slice(),
            regex: regex.into_boxed_slice(),
        })
    }

    /// The first `Some` that `try_at` gives for the positions that may match `path`, in rank
    /// order.
    pub(super) fn find<T>(
        &self,
        path: &str,
        mut try_at: impl FnMut(usize) -> Option<T>,
    ) -> Option<T> {
        let mut first = |positions: &[u32]| positions.iter().find_map(|&p| try_at(p as usize));
        if self.exact_lengths.has(path.len()) {
            if let Some(found) = self.exact.get(path).and_then(|ps| first(ps)) {
                return Some(found);
            }
        }
        if !self.prefix_lengths.is_empty() {
            // A prefix matches the whole path or the part before one of its `/`.
            let bytes = path.as_bytes();
            let mut end = bytes.len();
            loop {
                if self.prefix_lengths.has(end) {
                    if let Some(found) = self.prefix.get(&path[..end]).and_then(|ps| first(ps)) {
                        return Some(found);
                    }
                }
                // Paths are short: a plain loop beats memrchr's set-up here.
                match bytes[..end].iter().rposition(|&b| b == b'/') {
                    Some(slash) if slash > 0 => end = slash,
                    _ => break,
                }
            }
        }
        first(&self.root).or_else(|| first(&self.regex))
    }
}

/// A set of string lengths, one bit each: whether any key of a map has a length, before
/// hashing a candidate of that length.
struct Lengths(Box<[u64]>);

impl Lengths {
    fn of<'a>(keys: impl Iterator<Item = &'a &'a str> + Clone) -> Lengths {
        let longest = keys.clone().map(|k| k.len()).max();
        let mut bits = vec![0u64; longest.map_or(0, |l| l / 64 + 1)].into_boxed_slice();
        for k in keys {
            bits[k.len() / 64] |= 1 << (k.len() % 64);
        }
        Lengths(bits)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn has(&self, len: usize) -> bool {
        self.0
            .get(len / 64)
            .is_some_and(|word| word >> (len % 64) & 1 == 1)
    }
}
