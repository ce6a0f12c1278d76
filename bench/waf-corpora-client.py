#!/usr/bin/env python3
"""Sends Portcullis' own WAF corpora (waf/tests/corpora/portcullis/) to one or more gateways
and prints, per corpus, the share of requests each blocked (403). Same placements as
waf/tests/coverage.rs: an attack line starting with `?` is a whole query string, `{` a JSON
body, anything else a value in a query argument, a form field and a JSON string; benign lines
are plain text in a form field, a JSON document and a query argument.

    waf-corpora-client.py NAME=URL [NAME=URL ...]
"""
import http.client
import json
import os
import sys
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPORA = os.path.join(ROOT, "waf", "tests", "corpora", "portcullis")
ATTACKS = ["nosql", "ssti", "ssi", "ldap", "mail", "deserialization", "traversal", "cmdi", "heldout"]
BENIGN = ["prose", "groups"]
QUERY_ESCAPED = set(b' &#+="<>`{}|\\^[]')


def lines(name):
    with open(os.path.join(CORPORA, name), encoding="utf-8") as f:
        return [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]


def query_escape(payload):
    out = []
    for b in payload.encode():
        if b in QUERY_ESCAPED or b < 0x20 or b >= 0x7F:
            out.append("%%%02X" % b)
        else:
            out.append(chr(b))
    return "".join(out)


def form_escape(text):
    return "".join(chr(b) if chr(b).isalnum() and b < 0x80 or chr(b) in "-._~" else "%%%02X" % b
                   for b in text.encode())


def url_decode_once(text):
    raw = urllib.parse.unquote_to_bytes(text)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return text


def attack_requests(line):
    if line.startswith("?"):
        return [("GET", "/search" + line, None, None)]
    if line.startswith("{"):
        return [("POST", "/api", "application/json", line.encode())]
    return [
        ("GET", "/search?q=" + query_escape(line), None, None),
        ("POST", "/submit", "application/x-www-form-urlencoded",
         ("name=x&comment=" + query_escape(line)).encode()),
        ("POST", "/api", "application/json", json.dumps({"comment": url_decode_once(line)}).encode()),
    ]


def benign_requests(line):
    return [
        ("POST", "/submit", "application/x-www-form-urlencoded",
         ("name=x&comment=" + form_escape(line)).encode()),
        ("POST", "/api", "application/json",
         json.dumps({"title": "feedback", "comment": line, "code": line}).encode()),
        ("GET", "/search?q=" + form_escape(line), None, None),
    ]


def blocked(url, req):
    method, target, ctype, body = req
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    headers = {"Host": "api.example.com", "User-Agent": "Mozilla/5.0 (X11; Linux x86_64)",
               "Accept": "*/*"}
    if ctype:
        headers["Content-Type"] = ctype
    try:
        conn.request(method, target, body=body, headers=headers)
        status = conn.getresponse().status
    except (http.client.HTTPException, OSError):
        return None
    finally:
        conn.close()
    if status not in (200, 403, 400):
        print(f"  unexpected {status} from {url} for {method} {target[:80]}", file=sys.stderr)
    return status in (403, 400)


def main():
    targets = [a.split("=", 1) for a in sys.argv[1:]]
    print("| corpus | requests | " + " | ".join(f"{n} blocked" for n, _ in targets) + " |")
    print("|---|---|" + "---|" * len(targets))
    for kind, names, build in (("attack", ATTACKS, attack_requests), ("benign", BENIGN, benign_requests)):
        for name in names:
            reqs = [r for l in lines(f"{name}.{kind}.txt") for r in build(l)]
            cells = []
            for _, url in targets:
                results = [blocked(url, r) for r in reqs]
                hit = sum(1 for r in results if r)
                errors = sum(1 for r in results if r is None)
                cell = f"{100.0 * hit / len(reqs):.1f}% ({hit})"
                if errors:
                    cell += f", {errors} errors"
                cells.append(cell)
            print(f"| {name} ({kind}) | {len(reqs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
