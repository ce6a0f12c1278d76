//! Golden tests: `testdata/NAME.in.yaml` → `testdata/NAME.out.json`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p portcullis-compiler --test golden`.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use portcullis_compiler::{compile, manifests, Snapshot};
use serde_json::json;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn compile_text(text: &str) -> serde_json::Value {
    let mut snapshot = Snapshot::default();
    let errors = manifests::parse_into(&mut snapshot, "in.yaml", text);
    let (config, statuses) = compile(&snapshot);
    json!({
        "manifestErrors": errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "statuses": statuses,
        "config": config,
    })
}

#[test]
fn golden_files_match() {
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(testdata())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.yaml"))
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty());
    let mut stale = Vec::new();
    for input in inputs {
        let text = std::fs::read_to_string(&input).unwrap();
        let actual = serde_json::to_string_pretty(&compile_text(&text)).unwrap() + "\n";
        let out = PathBuf::from(input.to_string_lossy().replace(".in.yaml", ".out.json"));
        if update {
            std::fs::write(&out, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&out).unwrap_or_default();
        if expected != actual {
            eprintln!("--- {} differs:\n{actual}", out.display());
            stale.push(out);
        }
    }
    assert!(
        stale.is_empty(),
        "stale golden files {stale:?}; rerun with UPDATE_GOLDEN=1 after checking the diff"
    );
}

#[test]
fn output_does_not_depend_on_input_order() {
    for name in [
        "basic",
        "conflicts",
        "invalid",
        "policies",
        "ratelimit",
        "ingress",
        "gateway",
    ] {
        let text = std::fs::read_to_string(testdata().join(format!("{name}.in.yaml"))).unwrap();
        let mut docs: Vec<&str> = text.split("\n---\n").collect();
        docs.reverse();
        let reversed = docs.join("\n---\n");
        let (a, b) = (compile_text(&text), compile_text(&reversed));
        assert_eq!(a["config"], b["config"], "{name}");
        assert_eq!(a["statuses"], b["statuses"], "{name}");
    }
}

#[test]
fn plaintext_keys_never_reach_the_config() {
    let text = std::fs::read_to_string(testdata().join("basic.in.yaml")).unwrap();
    let out = compile_text(&text).to_string();
    for secret in [
        "mobile-key-1",
        "mobile-key-2",
        "partner-key-1",
        "bW9iaWxlLWtleS0x",
    ] {
        assert!(
            !out.contains(secret),
            "{secret} leaked into the compiled config"
        );
    }
}

#[test]
fn redis_password_only_in_the_secret_half() {
    let text = std::fs::read_to_string(testdata().join("ratelimit.in.yaml")).unwrap();
    let out = compile_text(&text);
    let mut public = out["config"].clone();
    public.as_object_mut().unwrap().remove("secrets");
    assert!(!public.to_string().contains("s3cret-redis-pw"));
    assert!(!out["statuses"].to_string().contains("s3cret-redis-pw"));
    assert_eq!(
        out["config"]["secrets"]["redisPasswords"][0]["password"],
        "s3cret-redis-pw"
    );
}
