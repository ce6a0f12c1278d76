//! The WAF's JSON walker (`Collector::json`): strict, iterative, in place.
//!
//! Properties beyond "no panic":
//! - it accepts exactly the documents `serde_json` accepts (the walker replaced a
//!   `serde_json` parse: a document one accepts and the other refuses is inspected
//!   differently from what a backend reads);
//! - an accepted document keeps no more keys and leaves than `maxArgs`, and a refused one
//!   is inspected whole, as one body target of the document's length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_waf::parse::{Collector, Kind, ParseLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&max_args, doc)) = data.split_first() else {
        return;
    };
    let limits = ParseLimits {
        max_args: usize::from(max_args),
        max_arg_length: 64,
        max_json_depth: 16,
    };
    let mut c = Collector::new(&limits);
    c.json(doc, false);
    let refused = c.targets.iter().any(|t| t.kind == Kind::Body);
    let serde_ok = serde_json::from_slice::<serde_json::Value>(doc).is_ok();
    assert_eq!(!refused, serde_ok, "walker and serde_json disagree");
    if refused {
        assert_eq!(c.targets.len(), 1);
        assert_eq!(c.targets[0].raw_len, doc.len());
    } else {
        assert!(c.targets.len() <= usize::from(max_args));
        assert_eq!(c.issues.too_many_args, c.args > usize::from(max_args));
    }
});
