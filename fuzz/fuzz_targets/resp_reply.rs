//! The rate limiter's Redis (RESP2) reply parser, through its one public entry point
//! (`ratelimit::parse_resp_reply`): the Redis server, or anything answering on its port.
//!
//! Properties beyond "no panic":
//! - a complete reply ends where the parser says: its own bytes give the same reply, and
//!   every shorter prefix is incomplete (a partial read never yields a reply or an error,
//!   which would desynchronise the pipelined connection);
//! - an integer array's values are the same however much follows it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::ratelimit::{parse_resp_reply, RespReply};

fuzz_target!(|data: &[u8]| {
    let mut ints = Vec::new();
    let Ok(Some((reply, used))) = parse_resp_reply(data, &mut ints) else {
        return;
    };
    assert!(used > 0 && used <= data.len());
    if let RespReply::Error(range) = &reply {
        assert!(range.end <= used);
    }
    let first = ints.clone();
    let mut again = Vec::new();
    match parse_resp_reply(&data[..used], &mut again) {
        Ok(Some((r, n))) => {
            assert_eq!((r, n), (reply.clone(), used));
            if reply == RespReply::Ints {
                assert_eq!(again, first);
            }
        }
        other => panic!("the reply's own bytes give {other:?}"),
    }
    let cuts = if used <= 128 {
        (0..used).collect::<Vec<_>>()
    } else {
        vec![0, 1, used / 3, used / 2, used - 2, used - 1]
    };
    for cut in cuts {
        let r = parse_resp_reply(&data[..cut], &mut again);
        assert!(matches!(r, Ok(None)), "prefix of {cut}: {r:?}");
    }
});
