#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use portcullis_compiler::config::{HeaderMatch, PathKind};

#[tokio::test]
async fn path_precedence_exact_prefix_regex_and_longest_prefix() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut exact = route("exact", PathKind::Exact, "/api/users", &[&up]);
    exact.upstream.direct_response = Some(direct(200, "exact"));
    let mut short = route("short", PathKind::Prefix, "/api", &[&up]);
    short.upstream.direct_response = Some(direct(200, "short"));
    let mut long = route("long", PathKind::Prefix, "/api/users", &[&up]);
    long.upstream.direct_response = Some(direct(200, "long"));
    let mut regex = route("regex", PathKind::Regex, "/api/[a-z]+/\\d+", &[&up]);
    regex.upstream.direct_response = Some(direct(200, "regex"));
    let mut root = route("root", PathKind::Prefix, "/", &[&up]);
    root.upstream.direct_response = Some(direct(200, "root"));
    let proxy = start(config(vec![exact, short, long, regex, root])).await;
    let c = client();
    let a = proxy.local_addr();
    for (path, want) in [
        ("/api/users", "exact"),
        ("/api/users/7", "long"),
        ("/api/users/", "long"),
        ("/api/orders/7", "short"), // prefix beats regex
        ("/api", "short"),
        ("/apix", "root"), // segment-aware prefix
        ("/other", "root"),
    ] {
        let r = send(&c, a, get(path)).await;
        assert_eq!(r.body, want, "{path}");
    }
}

#[tokio::test]
async fn regex_is_anchored_and_used_when_no_prefix_matches() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut regex = route("regex", PathKind::Regex, "/v[0-9]+/items", &[&up]);
    regex.upstream.direct_response = Some(direct(200, "regex"));
    let proxy = start(config(vec![regex])).await;
    let c = client();
    assert_eq!(
        send(&c, proxy.local_addr(), get("/v2/items")).await.body,
        "regex"
    );
    let r = send(&c, proxy.local_addr(), get("/x/v2/items/y")).await;
    assert_eq!(r.status, 404);
    let j = r.json();
    assert_eq!(j["error"], "no route matched");
    assert!(j["request_id"].as_str().unwrap().len() >= 8);
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn host_precedence_exact_then_wildcard_then_any() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut exact = route("exact", PathKind::Prefix, "/", &[&up]);
    exact.hosts = vec!["api.example.com".into()];
    exact.upstream.direct_response = Some(direct(200, "exact"));
    let mut wild = route("wild", PathKind::Prefix, "/", &[&up]);
    wild.hosts = vec!["*.example.com".into()];
    wild.upstream.direct_response = Some(direct(200, "wild"));
    let mut any = route("any", PathKind::Prefix, "/", &[&up]);
    any.upstream.direct_response = Some(direct(200, "any"));
    let proxy = start(config(vec![any, wild, exact])).await;
    let c = client();
    let a = proxy.local_addr();
    for (host, want) in [
        ("api.example.com", "exact"),
        ("API.Example.com:8080", "exact"),
        ("www.example.com", "wild"),
        ("a.b.example.com", "any"),
        ("example.com", "any"),
        ("other.org", "any"),
    ] {
        let r = send(&c, a, get("/").header("host", host)).await;
        assert_eq!(r.body, want, "{host}");
    }
}

#[tokio::test]
async fn methods_headers_and_query_params() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut plain = route("a-plain", PathKind::Prefix, "/r", &[&up]);
    plain.upstream.direct_response = Some(direct(200, "plain"));
    let mut get_only = route("b-get", PathKind::Prefix, "/r", &[&up]);
    get_only.methods = vec!["GET".into()];
    get_only.upstream.direct_response = Some(direct(200, "get"));
    let mut v2 = route("c-v2", PathKind::Prefix, "/r", &[&up]);
    v2.methods = vec!["GET".into()];
    v2.headers = vec![HeaderMatch {
        name: "accept-version".into(),
        value: "2".into(),
    }];
    v2.upstream.direct_response = Some(direct(200, "v2-header"));
    let mut q = route("d-q", PathKind::Prefix, "/r", &[&up]);
    q.methods = vec!["GET".into()];
    q.query_params = vec![HeaderMatch {
        name: "version".into(),
        value: "3".into(),
    }];
    q.upstream.direct_response = Some(direct(200, "v3-query"));
    let mut only_post = route("post", PathKind::Exact, "/p", &[&up]);
    only_post.methods = vec!["POST".into()];
    only_post.upstream.direct_response = Some(direct(200, "post"));
    let proxy = start(config(vec![plain, get_only, v2, q, only_post])).await;
    let c = client();
    let a = proxy.local_addr();
    assert_eq!(send(&c, a, get("/r")).await.body, "get");
    assert_eq!(send(&c, a, get("/r").method("DELETE")).await.body, "plain");
    assert_eq!(
        send(&c, a, get("/r").header("accept-version", "2"))
            .await
            .body,
        "v2-header"
    );
    assert_eq!(
        send(&c, a, get("/r").header("accept-version", "9"))
            .await
            .body,
        "get"
    );
    assert_eq!(send(&c, a, get("/r?a=1&version=3")).await.body, "v3-query");
    assert_eq!(send(&c, a, get("/r?version=4")).await.body, "get");
    // Method mismatch is a 404, like any unmatched request.
    assert_eq!(send(&c, a, get("/p")).await.status, 404);
    assert_eq!(send(&c, a, get("/p").method("POST")).await.body, "post");
}

#[tokio::test]
async fn alphabetical_route_id_breaks_ties() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut b = route("ns/b", PathKind::Prefix, "/t", &[&up]);
    b.upstream.direct_response = Some(direct(200, "b"));
    let mut a_route = route("ns/a", PathKind::Prefix, "/t", &[&up]);
    a_route.upstream.direct_response = Some(direct(200, "a"));
    let proxy = start(config(vec![b, a_route])).await;
    assert_eq!(
        send(&client(), proxy.local_addr(), get("/t")).await.body,
        "a"
    );
}

#[tokio::test]
async fn strip_path_and_rewrite_prefix() {
    let up = upstream("u", Behaviour::Echo).await;
    let mut strip = route("strip", PathKind::Prefix, "/svc", &[&up]);
    strip.strip_path = true;
    let mut rewrite = route("rewrite", PathKind::Prefix, "/old", &[&up]);
    rewrite.rewrite_prefix = Some("/new/v2".into());
    let keep = route("keep", PathKind::Prefix, "/keep", &[&up]);
    let proxy = start(config(vec![strip, rewrite, keep])).await;
    let c = client();
    let a = proxy.local_addr();
    assert_eq!(
        send(&c, a, get("/svc/users?x=1")).await.json()["uri"],
        "/users?x=1"
    );
    assert_eq!(send(&c, a, get("/svc")).await.json()["uri"], "/");
    assert_eq!(
        send(&c, a, get("/old/items/1")).await.json()["uri"],
        "/new/v2/items/1"
    );
    assert_eq!(
        send(&c, a, get("/keep/a?q=%20")).await.json()["uri"],
        "/keep/a?q=%20"
    );
}
