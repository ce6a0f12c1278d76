//! Where a custom rule or an exclusion applies: target selectors against the labels of
//! collected values (`Query:q`, `Header:user-agent`, `Json:$.a`), and path prefixes.

/// Custom-rule target selectors (docs/waf.md): `Path`, `Method`, `Query`, `Args`, `ArgNames`,
/// `Headers`, `Header:NAME`, `Cookies`, `Cookie:NAME`, `Body`, `JsonValues`, `Json:PATH`,
/// `Query:NAME`, `Args:NAME`.
pub(crate) fn selects(selector: &str, label: &str) -> bool {
    let (collection, key) = label.split_once(':').unwrap_or((label, ""));
    match selector {
        "Path" | "Method" | "Body" => label == selector,
        "Query" => collection == "Query",
        "Args" => matches!(collection, "Query" | "Form" | "Json" | "Multipart" | "Xml"),
        "ArgNames" => matches!(collection, "ArgName" | "JsonKey"),
        "Headers" => collection == "Header",
        "Cookies" => collection == "Cookie",
        "JsonValues" => collection == "Json",
        _ => match selector.split_once(':') {
            Some(("Header", name)) => collection == "Header" && key.eq_ignore_ascii_case(name),
            Some(("Args", name)) => {
                matches!(collection, "Query" | "Form" | "Json" | "Multipart") && key == name
            }
            Some((c, name)) => c == collection && key == name,
            None => false,
        },
    }
}

/// Exclusion target: an exact label (`Query:q`), a collection (`Query`, `Headers`), or a
/// custom-rule style selector.
pub(crate) fn target_matches(selector: &str, label: &str) -> bool {
    selector == label || selects(selector, label) || label.split(':').next() == Some(selector)
}

pub(crate) fn path_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}
