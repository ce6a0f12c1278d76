//! The manifest reader and compiler (`manifests::parse_into`, then `compile`): standalone
//! mode's YAML files, and what the operator compiles from the API server.
//!
//! Properties beyond "no panic": every document that fails is reported with its source
//! name; compiling is deterministic (the same snapshot gives the same config and statuses,
//! which the config hash and the golden tests rely on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_compiler::{compile, manifests, Snapshot};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut snapshot = Snapshot::default();
    let errors = manifests::parse_into(&mut snapshot, "fuzz.yaml", &text);
    for e in &errors {
        assert!(e.source_name.starts_with("fuzz.yaml#"));
    }
    let (config, statuses) = compile(&snapshot);
    let first = serde_json::to_string(&(&config, &statuses)).expect("config serialises");
    let (config, statuses) = compile(&snapshot);
    let second = serde_json::to_string(&(&config, &statuses)).expect("config serialises");
    assert_eq!(first, second, "compile is not deterministic");
});
