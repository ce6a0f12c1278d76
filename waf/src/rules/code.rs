//! The checks written as code: protocol checks a regex over one value cannot express, the
//! request limits, libinjection. Each has its entry here, like a pattern rule, and is
//! recorded through it.
//!
//! Three ids mean something else than in CRS; they are kept (not renumbered) because policies'
//! `exclusions` name them and the corpus outcomes (`tests/outcomes.rs`) are compared by id:
//! - 920171 here is an unknown transfer coding; in CRS it is a GET or HEAD request with a
//!   `Transfer-Encoding` header.
//! - 920390 here is JSON nested deeper than `maxJsonDepth`; in CRS it is the total size of
//!   the arguments.
//! - 920400 here is a body that could not be parsed (invalid JSON or XML, multipart without
//!   its boundary); in CRS it is an uploaded file's size.

use super::Check;
use crate::Group::{self, CrossSiteScripting, PathTraversal, ProtocolEnforcement, SqlInjection};

const fn check(id: u32, group: Group, score: u32, msg: &'static str) -> Check {
    Check {
        id,
        group,
        pl: 1,
        score,
        msg,
    }
}

/// `allowedMethods` does not list the method.
pub const METHOD_NOT_ALLOWED: Check = check(
    911100,
    ProtocolEnforcement,
    5,
    "method not allowed by policy",
);
pub const CONTENT_LENGTH_NOT_A_NUMBER: Check = check(
    920160,
    ProtocolEnforcement,
    5,
    "Content-Length is not a number",
);
pub const GET_OR_HEAD_WITH_BODY: Check = check(
    920170,
    ProtocolEnforcement,
    5,
    "GET or HEAD request with a body",
);
/// Not CRS's 920171 (see the module documentation).
pub const UNKNOWN_TRANSFER_CODING: Check =
    check(920171, ProtocolEnforcement, 5, "unknown transfer coding");
pub const CONTENT_LENGTH_AND_TRANSFER_ENCODING: Check = check(
    920181,
    ProtocolEnforcement,
    5,
    "request smuggling: Content-Length and Transfer-Encoding",
);
pub const NUL_IN_REQUEST_LINE: Check = check(
    920270,
    ProtocolEnforcement,
    5,
    "NUL byte in the request line",
);
pub const NUL_IN_HEADER: Check = check(920274, ProtocolEnforcement, 5, "NUL byte in a header");
/// Score 3, as in CRS: HTTP/1.0 clients and health checks omit it.
pub const MISSING_HOST: Check = check(920280, ProtocolEnforcement, 3, "missing Host header");
pub const ARG_TOO_LONG: Check = check(
    920370,
    ProtocolEnforcement,
    5,
    "argument too long (maxArgLength)",
);
pub const TOO_MANY_ARGS: Check = check(
    920380,
    ProtocolEnforcement,
    5,
    "too many arguments (maxArgs)",
);
/// Not CRS's 920390 (see the module documentation).
pub const JSON_TOO_DEEP: Check = check(
    920390,
    ProtocolEnforcement,
    5,
    "JSON nested too deeply (maxJsonDepth)",
);
/// Not CRS's 920400 (see the module documentation).
pub const BODY_UNPARSABLE: Check = check(
    920400,
    ProtocolEnforcement,
    5,
    "request body could not be parsed",
);
pub const RESTRICTED_EXTENSION: Check =
    check(920440, ProtocolEnforcement, 5, "restricted file extension");
pub const RESTRICTED_HEADER: Check = check(920450, ProtocolEnforcement, 5, "restricted header");
pub const MALFORMED_CONTENT_TYPE: Check =
    check(920470, ProtocolEnforcement, 5, "malformed Content-Type");
pub const CHARSET_NOT_ALLOWED: Check = check(920480, ProtocolEnforcement, 5, "charset not allowed");
/// Shares its id with the pattern rule for named restricted files (CRS 930130, "restricted
/// file access"): any dot segment of the path (`/.env`, `/.git/`), `/.well-known/` excepted.
pub const HIDDEN_FILE: Check = check(
    930130,
    PathTraversal,
    5,
    "access to a hidden file or directory",
);
pub const XSS_LIBINJECTION: Check = check(941100, CrossSiteScripting, 5, "XSS (libinjection)");
pub const SQLI_LIBINJECTION: Check = check(942100, SqlInjection, 5, "SQL injection (libinjection)");

/// Every check above (the table tests and `docs/waf.md` list them).
pub const ALL: [&Check; 19] = [
    &METHOD_NOT_ALLOWED,
    &CONTENT_LENGTH_NOT_A_NUMBER,
    &GET_OR_HEAD_WITH_BODY,
    &UNKNOWN_TRANSFER_CODING,
    &CONTENT_LENGTH_AND_TRANSFER_ENCODING,
    &NUL_IN_REQUEST_LINE,
    &NUL_IN_HEADER,
    &MISSING_HOST,
    &ARG_TOO_LONG,
    &TOO_MANY_ARGS,
    &JSON_TOO_DEEP,
    &BODY_UNPARSABLE,
    &RESTRICTED_EXTENSION,
    &RESTRICTED_HEADER,
    &MALFORMED_CONTENT_TYPE,
    &CHARSET_NOT_ALLOWED,
    &HIDDEN_FILE,
    &XSS_LIBINJECTION,
    &SQLI_LIBINJECTION,
];

/// A request that one check written as code must flag: the example inputs of these checks,
/// as the pattern rules carry theirs. Evaluated under [`EXAMPLE_LIMITS`] and
/// [`EXAMPLE_ALLOWED_METHODS`] (so the limit checks have small limits to exceed).
#[derive(Debug, Clone, Copy)]
pub struct Example {
    pub check: &'static Check,
    pub method: &'static str,
    pub uri: &'static str,
    pub headers: &'static [(&'static str, &'static [u8])],
    pub body: &'static [u8],
}

/// `maxJsonDepth`, `maxArgs`, `maxArgLength` the examples run under.
pub const EXAMPLE_LIMITS: (u32, u32, u32) = (4, 8, 64);
pub const EXAMPLE_ALLOWED_METHODS: [&str; 3] = ["GET", "POST", "HEAD"];

const HOST: (&str, &[u8]) = ("Host", b"api.example.com");
const JSON: (&str, &[u8]) = ("Content-Type", b"application/json");

const fn example(
    check: &'static Check,
    method: &'static str,
    uri: &'static str,
    headers: &'static [(&'static str, &'static [u8])],
    body: &'static [u8],
) -> Example {
    Example {
        check,
        method,
        uri,
        headers,
        body,
    }
}

/// At least one example per entry of [`ALL`] (checked by a test).
pub const EXAMPLES: [Example; 21] = [
    example(&METHOD_NOT_ALLOWED, "TRACE", "/", &[HOST], b""),
    example(
        &CONTENT_LENGTH_NOT_A_NUMBER,
        "POST",
        "/",
        &[HOST, ("Content-Length", b"12a")],
        b"",
    ),
    example(
        &GET_OR_HEAD_WITH_BODY,
        "GET",
        "/",
        &[HOST, ("Content-Length", b"5")],
        b"",
    ),
    example(
        &UNKNOWN_TRANSFER_CODING,
        "POST",
        "/",
        &[HOST, ("Transfer-Encoding", b"chunked, xchunked")],
        b"",
    ),
    example(
        &CONTENT_LENGTH_AND_TRANSFER_ENCODING,
        "POST",
        "/",
        &[
            HOST,
            ("Content-Length", b"4"),
            ("Transfer-Encoding", b"chunked"),
        ],
        b"",
    ),
    example(&NUL_IN_REQUEST_LINE, "GET", "/a%00.txt", &[HOST], b""),
    example(&NUL_IN_REQUEST_LINE, "GET", "/a?f=x%2500y", &[HOST], b""),
    example(
        &NUL_IN_HEADER,
        "GET",
        "/",
        &[HOST, ("X-Note", b"a\0b")],
        b"",
    ),
    example(&MISSING_HOST, "GET", "/", &[], b""),
    example(
        &ARG_TOO_LONG,
        "GET",
        "/?q=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        &[HOST],
        b"",
    ),
    example(
        &TOO_MANY_ARGS,
        "GET",
        "/?a=1&b=2&c=3&d=4&e=5&f=6&g=7&h=8&i=9",
        &[HOST],
        b"",
    ),
    example(
        &JSON_TOO_DEEP,
        "POST",
        "/",
        &[HOST, JSON],
        b"{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":1}}}}}",
    ),
    example(
        &BODY_UNPARSABLE,
        "POST",
        "/",
        &[HOST, JSON],
        b"{\"a\": 1,,}",
    ),
    example(
        &BODY_UNPARSABLE,
        "POST",
        "/",
        &[HOST, ("Content-Type", b"multipart/form-data")],
        b"--x\r\n\r\n",
    ),
    example(
        &RESTRICTED_EXTENSION,
        "GET",
        "/backup/db.sqlite",
        &[HOST],
        b"",
    ),
    example(
        &RESTRICTED_HEADER,
        "POST",
        "/",
        &[HOST, ("X-HTTP-Method-Override", b"DELETE")],
        b"",
    ),
    example(
        &MALFORMED_CONTENT_TYPE,
        "POST",
        "/",
        &[HOST, ("Content-Type", b"text html")],
        b"",
    ),
    example(
        &CHARSET_NOT_ALLOWED,
        "POST",
        "/",
        &[HOST, ("Content-Type", b"text/plain; charset=utf-7")],
        b"",
    ),
    example(&HIDDEN_FILE, "GET", "/app/.git/config", &[HOST], b""),
    example(
        &XSS_LIBINJECTION,
        "GET",
        "/?c=%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E",
        &[HOST],
        b"",
    ),
    example(
        &SQLI_LIBINJECTION,
        "GET",
        "/?id=1%27%20OR%20%271%27%3D%271",
        &[HOST],
        b"",
    ),
];
