//! Protocol checks written as code (request smuggling, headers, Content-Type, restricted
//! files): what a regex over one value cannot express.

use crate::build::Engine;
use crate::evaluation::Evaluation;
use crate::request::{ascii_lowercase, lossy_lowercase, RequestHead};
use crate::rules::code;
use crate::transform;

/// Dot files and directories (`.git`, `.env`, `.claude/settings.json`) hold configuration
/// and secrets and are never API resources; `/.well-known/` is the registered exception.
pub(crate) fn hidden_segment(path: &str) -> Option<&str> {
    // Segments found with a byte loop: `str::split` set up a char searcher per segment,
    // several per request on every path.
    let mut start = 0;
    for end in path
        .bytes()
        .enumerate()
        .filter_map(|(i, b)| (b == b'/').then_some(i))
        .chain(std::iter::once(path.len()))
    {
        // `/` is ASCII: both ends are char boundaries.
        let segment = path.get(start..end).unwrap_or("");
        if segment.len() > 1 && segment.starts_with('.') && segment != ".well-known" {
            return Some(segment);
        }
        start = end + 1;
    }
    None
}

pub(crate) fn restricted_extension(path: &str) -> bool {
    let last = path.rsplit('/').next().unwrap_or("");
    let Some((_, ext)) = last.rsplit_once('.') else {
        return false;
    };
    matches!(
        ext.to_ascii_lowercase().as_str(),
        "asa"
            | "asax"
            | "ascx"
            | "backup"
            | "bak"
            | "bat"
            | "cdx"
            | "cer"
            | "cfg"
            | "cmd"
            | "com"
            | "config"
            | "conf"
            | "cs"
            | "csproj"
            | "csr"
            | "dat"
            | "db"
            | "dbf"
            | "dll"
            | "dos"
            | "htr"
            | "htw"
            | "ida"
            | "idc"
            | "idq"
            | "inc"
            | "ini"
            | "key"
            | "licx"
            | "lnk"
            | "log"
            | "mdb"
            | "old"
            | "pass"
            | "pdb"
            | "pol"
            | "printer"
            | "pwd"
            | "rdb"
            | "resources"
            | "resx"
            | "sql"
            | "swp"
            | "sys"
            | "vb"
            | "vbs"
            | "vbproj"
            | "vsdisco"
            | "webinfo"
            | "xsd"
            | "xsx"
            | "sqlite"
            | "sqlite3"
            | "env"
            | "pem"
            | "orig"
            | "tmp"
            | "save"
    )
}

impl Engine {
    pub(crate) fn protocol_checks(
        &self,
        req: &RequestHead<'_>,
        path_norm: &str,
        eval: &mut Evaluation,
    ) {
        let cl = req.header("content-length");
        let te = req.header("transfer-encoding");
        if cl.is_some() && te.is_some() {
            self.record(
                eval,
                path_norm,
                &code::CONTENT_LENGTH_AND_TRANSFER_ENCODING,
                "Header:content-length",
                "content-length with transfer-encoding",
            );
        }
        if let Some(cl) = cl {
            let text = String::from_utf8_lossy(cl);
            match text.trim().parse::<u64>() {
                Ok(n) if n > 0 && matches!(req.method, "GET" | "HEAD") => {
                    self.record(
                        eval,
                        path_norm,
                        &code::GET_OR_HEAD_WITH_BODY,
                        "Header:content-length",
                        &text,
                    );
                }
                Ok(_) => {}
                Err(_) => self.record(
                    eval,
                    path_norm,
                    &code::CONTENT_LENGTH_NOT_A_NUMBER,
                    "Header:content-length",
                    &text,
                ),
            }
        }
        if let Some(te) = te {
            let text = lossy_lowercase(te);
            if text.split(',').any(|t| {
                !matches!(
                    t.trim(),
                    "chunked" | "gzip" | "deflate" | "compress" | "identity"
                )
            }) {
                self.record(
                    eval,
                    path_norm,
                    &code::UNKNOWN_TRANSFER_CODING,
                    "Header:transfer-encoding",
                    &text,
                );
            }
        }
        if req.header("host").is_none() {
            self.record(eval, path_norm, &code::MISSING_HOST, "Header:host", "");
        }
        for (name, value) in req.headers {
            let lower = ascii_lowercase(name);
            if matches!(
                &*lower,
                "proxy"
                    | "lock-token"
                    | "content-range"
                    | "translate"
                    | "if"
                    | "x-http-method-override"
                    | "x-http-method"
                    | "x-method-override"
            ) {
                self.record(
                    eval,
                    path_norm,
                    &code::RESTRICTED_HEADER,
                    &format!("Header:{lower}"),
                    name,
                );
            }
            if value.contains(&0) {
                self.record(
                    eval,
                    path_norm,
                    &code::NUL_IN_HEADER,
                    &format!("Header:{lower}"),
                    "NUL byte",
                );
            }
        }
        if let Some(ct) = req.header("content-type") {
            let ct = lossy_lowercase(ct);
            let media = ct.split(';').next().unwrap_or("").trim();
            let well_formed = media.split_once('/').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes()
                        .chain(b.bytes())
                        .all(|c| c.is_ascii_alphanumeric() || b"!#$&-^_.+*".contains(&c))
            });
            if !well_formed {
                self.record(
                    eval,
                    path_norm,
                    &code::MALFORMED_CONTENT_TYPE,
                    "Header:content-type",
                    &ct,
                );
            }
            if let Some(charset) = ct
                .split(';')
                .skip(1)
                .find_map(|p| p.trim().strip_prefix("charset="))
            {
                let charset = charset.trim_matches('"');
                if !matches!(
                    charset,
                    "utf-8"
                        | "utf8"
                        | "iso-8859-1"
                        | "iso-8859-15"
                        | "windows-1252"
                        | "us-ascii"
                        | "ascii"
                ) {
                    self.record(
                        eval,
                        path_norm,
                        &code::CHARSET_NOT_ALLOWED,
                        "Header:content-type",
                        charset,
                    );
                }
            }
        }
        let raw = req.uri.as_bytes();
        if transform::url_decode_repeated(raw, false).contains(&0) {
            self.record(
                eval,
                path_norm,
                &code::NUL_IN_REQUEST_LINE,
                "Request",
                "NUL byte",
            );
        }
        if let Some(segment) = hidden_segment(path_norm).filter(|_| self.lfi) {
            self.record(eval, path_norm, &code::HIDDEN_FILE, "Path", segment);
        }
        if restricted_extension(path_norm) {
            self.record(
                eval,
                path_norm,
                &code::RESTRICTED_EXTENSION,
                "Path",
                path_norm,
            );
        }
    }
}
