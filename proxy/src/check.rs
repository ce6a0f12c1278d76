//! `--check`: compile the manifests and print every object's conditions and every manifest
//! error. Exit status 1 when anything is not Accepted.

use std::io::Write;
use std::path::PathBuf;

use crate::standalone::{compile_paths, describe_status, LoadError};

/// Writes the report to `out`; returns whether everything was accepted.
pub fn run(paths: &[PathBuf], out: &mut dyn Write) -> Result<bool, LoadError> {
    let compiled = compile_paths(paths)?;
    let mut ok = true;
    for error in &compiled.manifest_errors {
        ok = false;
        let _ = writeln!(out, "error: {error}");
    }
    for status in &compiled.statuses {
        ok &= status.is_healthy();
        let _ = writeln!(out, "{}", describe_status(status));
        for warning in status.warnings() {
            let _ = writeln!(
                out,
                "warning: {} {}/{}: {} ({})",
                status.kind.as_str(),
                status.namespace,
                status.name,
                warning.message,
                warning.reason.as_str()
            );
        }
    }
    let _ = writeln!(
        out,
        "{} objects, {} manifest errors: {}",
        compiled.statuses.len(),
        compiled.manifest_errors.len(),
        if ok { "OK" } else { "FAILED" }
    );
    Ok(ok)
}
