//! The Lua script that decides a request's Redis counters, and how its arguments are packed.
//! The script is its own file (`decide.lua`) so it reads, diffs and lints as Lua.

use crate::ratelimit::algorithms::Rule;

/// KEYS[i] is a counter; ARGV[i] its rule: four little-endian f64 (algorithm code as in
/// [`Kind::script_code`](crate::ratelimit::algorithms::Kind::script_code), limit, period in ms, burst). The last ARGV says how the counters
/// split into requests: two bytes (big-endian count) per request, in order. Each request is
/// decided as if alone, in order: its counters are written only when every one of them
/// admits. A key is read with one `GET` and written with one `SET` per call, whatever the
/// number of requests counting on it: the requests in between see each other's counts in
/// the script, and the last write is the one a `SET` per request would have left. Returns
/// 4 integers per counter: admitted (0/1), remaining, reset (ms), retry after (ms). Mirrors
/// `ratelimit/algorithms.rs`.
///
/// What it costs Redis (callgrind, per call): every `redis.call` costs a few thousand
/// instructions and every decimal string turned into a number (`tonumber`, i.e. `strtod`)
/// about two thousand, which dwarf the arithmetic. Hence rules arrive packed (no `tonumber`),
/// a counter is one string of three packed numbers read with `GET` and written with one
/// `SET … PX` (a hash needed `HMGET`, `HSET`, `PEXPIRE` and decimal formatting), and `TIME`
/// is parsed once.
pub const SCRIPT: &str = include_str!("decide.lua");

/// A rule as the script reads it: `struct.unpack('<dddd', …)`. Limits and periods pass
/// through a Lua number either way, so f64 loses nothing the script could use.
pub(crate) fn pack_rule(rule: &Rule) -> [u8; 32] {
    let mut out = [0u8; 32];
    #[allow(clippy::cast_precision_loss)]
    let fields = [
        rule.kind.script_code(),
        rule.limit as f64,
        rule.period_ms as f64,
        rule.burst as f64,
    ];
    for (chunk, v) in out.chunks_exact_mut(8).zip(fields) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}
