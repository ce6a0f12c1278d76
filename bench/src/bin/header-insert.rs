//! What one response header costs in `http`'s `HeaderMap`, the map hyper encodes from.
//!
//! Builds a response-like map (five fields, as the bench upstream's answer carries), then
//! inserts the three `RateLimit-*` fields, or one custom field of a given name length, and
//! prints the time added per map over the base build. Run pinned to one idle core:
//!
//!   cargo build --release -p portcullis-bench --bin header-insert
//!   taskset -c 0 target/release/header-insert

use std::hint::black_box;
use std::time::Instant;

use http::{header, HeaderMap, HeaderName, HeaderValue};

const MAPS: u32 = 2_000_000;

fn base() -> HeaderMap {
    let mut m = HeaderMap::with_capacity(16);
    m.append(header::SERVER, HeaderValue::from_static("nginx"));
    m.append(
        header::DATE,
        HeaderValue::from_static("Sun, 29 Nov 2026 11:00:00 GMT"),
    );
    m.append(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    m.append(header::CONTENT_LENGTH, HeaderValue::from_static("3"));
    m.insert(
        HeaderName::from_static("x-request-id"),
        HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
    );
    m
}

/// Nanoseconds per map built by `build`.
fn time(build: impl Fn() -> HeaderMap) -> f64 {
    let start = Instant::now();
    for _ in 0..MAPS {
        black_box(build());
    }
    start.elapsed().as_nanos() as f64 / f64::from(MAPS)
}

fn main() {
    let names = [
        "x-pad",
        "ratelimit-limit",
        "ratelimit-remaining",
        "x-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ]
    .map(HeaderName::from_static);
    let value = HeaderValue::from_static("1000000000");
    // Round 0 warms caches and the allocator and is not printed.
    for round in 0..=3 {
        let plain = time(base);
        let three = time(|| {
            let mut m = base();
            m.insert(names[1].clone(), value.clone());
            m.insert(names[2].clone(), value.clone());
            m.insert(HeaderName::from_static("ratelimit-reset"), value.clone());
            m
        });
        if round == 0 {
            continue;
        }
        print!(
            "round {round}: base map {plain:.1} ns; + the three RateLimit-* fields {:.1} ns",
            three - plain
        );
        for name in [&names[0], &names[1], &names[2], &names[3]] {
            let one = time(|| {
                let mut m = base();
                m.insert(name.clone(), value.clone());
                m
            });
            print!(
                "; + one {}-byte name {:.1} ns",
                name.as_str().len(),
                one - plain
            );
        }
        println!();
    }
}
