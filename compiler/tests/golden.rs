//! Golden tests, one scenario per file: `testdata/golden/NAME.yaml` compiles to
//! `testdata/golden/NAME.json` (manifest errors, statuses and config). Each scenario is its
//! own test, named after its file; a mismatch shows a line diff of the two JSON documents.
//!
//! A new scenario: add `NAME.yaml`, add `NAME` to the list below, then
//! `UPDATE_GOLDEN=1 cargo test -p portcullis-compiler --test golden` writes `NAME.json`
//! (read it before committing). Without `UPDATE_GOLDEN` a missing `.json` fails.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portcullis_compiler::{compile, manifests, Snapshot};
use serde_json::json;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden")
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

fn input(name: &str) -> String {
    let path = golden_dir().join(format!("{name}.yaml"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("scenario {name}: cannot read {}: {e}", path.display()))
}

/// Compiles scenario `name` and compares (or, with `UPDATE_GOLDEN`, writes) its output.
fn check(name: &str) {
    let actual = serde_json::to_string_pretty(&compile_text(&input(name))).unwrap() + "\n";
    let out = golden_dir().join(format!("{name}.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&out, &actual).unwrap();
        return;
    }
    let expected = match std::fs::read_to_string(&out) {
        Ok(text) => text,
        Err(e) => panic!(
            "scenario {name}: no expected output {} ({e}); check this output, then write it \
             with UPDATE_GOLDEN=1:\n{actual}",
            out.display()
        ),
    };
    if expected != actual {
        panic!(
            "scenario {name}: the output differs from {} (- expected, + actual); if the change \
             is intended, rerun with UPDATE_GOLDEN=1 and commit the file:\n{}",
            out.display(),
            line_diff(&expected, &actual)
        );
    }
}

/// Changed lines with three lines of context, from a longest-common-subsequence table (the
/// files are a few hundred lines: the quadratic table is small).
fn line_diff(expected: &str, actual: &str) -> String {
    const CONTEXT: usize = 3;
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, expected line, actual line, text); tag ' ' for a common line.
    let mut ops: Vec<(char, usize, usize, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            ops.push((' ', i, j, a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j, a[i]));
            i += 1;
        } else {
            ops.push(('+', i, j, b[j]));
            j += 1;
        }
    }
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| ops[k].0 != ' ').collect();
    let mut text = String::new();
    let mut shown_until = 0;
    for &k in &changed {
        let from = k.saturating_sub(CONTEXT).max(shown_until);
        if from > shown_until || shown_until == 0 {
            let (_, line_a, line_b, _) = ops[from];
            text.push_str(&format!(
                "@@ expected line {}, actual line {} @@\n",
                line_a + 1,
                line_b + 1
            ));
        }
        let to = (k + CONTEXT + 1).min(ops.len());
        for op in &ops[from.max(shown_until)..to] {
            text.push_str(&format!("{}{}\n", op.0, op.3));
        }
        shown_until = to;
    }
    text
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        const SCENARIOS: &[&str] = &[$(stringify!($name)),*];
        $(
            #[test]
            fn $name() {
                check(stringify!($name));
            }
        )*
    };
}

scenarios!(
    auth_api_key_bad_header,
    auth_api_key_custom_header,
    auth_consumer_mobile_app,
    auth_consumer_weak,
    auth_forward_auth_only,
    auth_introspection_missing_secret,
    auth_introspection_only,
    auth_jwt_issuer_only,
    auth_route_bad_introspection,
    auth_route_bad_jwt,
    auth_route_opaque,
    auth_route_scopes_without_claims,
    auth_route_users,
    basic_shop,
    conflicts_same_match,
    gateway_filter_header_modifier,
    gateway_filter_redirect,
    gateway_filter_unsupported,
    gateway_httproute_intruder,
    gateway_httproute_mirror,
    gateway_httproute_sneaky,
    gateway_httproute_store,
    gateway_httproute_theirs,
    ingress_annotation_bad_value,
    ingress_annotation_ip_allow,
    ingress_annotation_misspelt,
    ingress_broken,
    ingress_fallback,
    ingress_newer,
    ingress_shop,
    ingress_theirs,
    ingress_unclassed,
    ingress_unprotected,
    invalid_consumer_lost_keys,
    invalid_route_both,
    invalid_route_broken,
    invalid_route_empty,
    invalid_route_good,
    paths_route_encoded_nul,
    paths_route_encoded_slash_rejected,
    paths_route_encoded_spellings,
    paths_route_pass_encoded,
    policies_ratelimit_broken,
    policies_ratelimit_per_client,
    policies_route_edge_api,
    policies_route_edge_refused,
    policies_route_future,
    policies_route_guarded,
    policies_waf_baseline,
    policies_waf_oversized,
    policies_waf_sloppy,
    policies_waf_strict,
    ratelimit_header_without_name,
    ratelimit_key_api_key,
    ratelimit_key_global,
    ratelimit_key_route,
    ratelimit_missing_policy,
    ratelimit_policy_bad_tiers,
    ratelimit_policy_no_password,
    ratelimit_policy_per_client,
    ratelimit_policy_per_ip,
    ratelimit_policy_per_tenant,
    ratelimit_route_other,
    ratelimit_route_plain,
    ratelimit_route_users,
    ratelimit_route_victim,
    ratelimit_redis_tls_sentinel,
    ratelimit_redis_invalid_backends,
    tenancy_bad_consumer_namespace,
    tenancy_consumer_namespaces,
    tenancy_host_ownership,
    tenancy_json_depth,
    tls_consumer_bad_mtls,
    tls_consumer_bound_app,
    tls_consumer_mobile_app,
    tls_consumer_unbound_ca,
    tls_route_api,
    tls_route_apps,
    tls_route_broken_cert,
    tls_route_broken_key,
    tls_route_missing_secret,
    tls_route_mtls_without_client_auth,
    tls_route_zz_second_claim,
    waf_bad_paranoia,
    waf_missing_policy,
    waf_policy_minimal,
);

/// Every `.yaml` in the folder is a listed scenario (a file nobody runs checks nothing), and
/// every `.json` belongs to one.
#[test]
fn every_scenario_file_is_listed() {
    let listed: BTreeSet<&str> = SCENARIOS.iter().copied().collect();
    assert_eq!(listed.len(), SCENARIOS.len(), "a scenario is listed twice");
    let mut unlisted = Vec::new();
    for entry in std::fs::read_dir(golden_dir()).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let stem = file
            .strip_suffix(".yaml")
            .or_else(|| file.strip_suffix(".json"))
            .unwrap_or(&file);
        if !listed.contains(stem) {
            unlisted.push(file);
        }
    }
    unlisted.sort();
    assert!(
        unlisted.is_empty(),
        "files in testdata/golden without a scenario in golden.rs: {unlisted:?}"
    );
}

#[test]
fn output_does_not_depend_on_input_order() {
    for name in SCENARIOS {
        let text = input(name);
        let mut docs: Vec<&str> = text.split("\n---\n").collect();
        if docs.len() < 2 {
            continue;
        }
        docs.reverse();
        let reversed = docs.join("\n---\n");
        let (a, b) = (compile_text(&text), compile_text(&reversed));
        assert_eq!(a["config"], b["config"], "scenario {name}");
        assert_eq!(a["statuses"], b["statuses"], "scenario {name}");
    }
}

#[test]
fn line_diff_shows_the_changed_lines_with_context() {
    let expected = "a\nb\nc\nd\ne\nf\ng\nh\n";
    let actual = "a\nb\nc\nd\nE\nf\ng\nh\n";
    assert_eq!(
        line_diff(expected, actual),
        "@@ expected line 2, actual line 2 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
    );
    assert_eq!(line_diff(expected, expected), "");
}

#[test]
fn plaintext_keys_never_reach_the_config() {
    let out = compile_text(&input("basic_shop")).to_string();
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
    let out = compile_text(&input("ratelimit_route_users"));
    let mut public = out["config"].clone();
    public.as_object_mut().unwrap().remove("secrets");
    assert!(!public.to_string().contains("s3cret-redis-pw"));
    assert!(!out["statuses"].to_string().contains("s3cret-redis-pw"));
    assert_eq!(
        out["config"]["secrets"]["redisPasswords"][0]["password"],
        "s3cret-redis-pw"
    );
}
