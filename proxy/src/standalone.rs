//! Standalone mode: YAML manifests (the four kinds plus `v1` Secrets) compiled in-process.
//!
//! Each `--manifests` path is a file or a directory; directories are read non-recursively,
//! taking `*.yaml` and `*.yml` files in name order. Loading is strict: any manifest error or
//! any object that is not Accepted fails the whole load, with messages naming the object
//! and field. At startup that is fatal; on reload the last good config stays in place.
//!
//! Reloads are triggered by file-system events on the given files' directories (watching
//! the directory, not the file, catches editors that write a new file and rename it over
//! the old one), debounced by [`DEBOUNCE`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use portcullis_compiler::manifests::{parse_into, ManifestError};
use portcullis_compiler::{compile, GatewayConfig, ObjectStatus, Snapshot};

use crate::server::ConfigHandle;

pub const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid manifests:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The result of reading and compiling manifests, before the strictness check.
pub struct Compiled {
    pub config: GatewayConfig,
    pub statuses: Vec<ObjectStatus>,
    pub manifest_errors: Vec<ManifestError>,
}

/// The `*.yaml`/`*.yml` files a path stands for.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let read_err = |source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(read_err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| e == "yaml" || e == "yml")
        })
        .collect();
    files.sort();
    Ok(files)
}

pub fn compile_paths(paths: &[PathBuf]) -> Result<Compiled, LoadError> {
    let mut snapshot = Snapshot {
        now_unix_secs: Some(portcullis_compiler::unix_now()),
        ..Snapshot::default()
    };
    let mut manifest_errors = Vec::new();
    for path in paths {
        for file in manifest_files(path)? {
            let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Read {
                path: file.clone(),
                source,
            })?;
            manifest_errors.extend(parse_into(
                &mut snapshot,
                &file.display().to_string(),
                &text,
            ));
        }
    }
    let (config, statuses) = compile(&snapshot);
    Ok(Compiled {
        config,
        statuses,
        manifest_errors,
    })
}

/// One line per object: `ApiRoute default/hello: Accepted=True (Accepted)`, plus messages.
pub fn describe_status(status: &ObjectStatus) -> String {
    let mut line = format!(
        "{} {}/{}:",
        status.kind.as_str(),
        status.namespace,
        status.name
    );
    for c in &status.conditions {
        line.push_str(&format!(
            " {}={} ({})",
            c.type_,
            if c.status { "True" } else { "False" },
            c.reason.as_str()
        ));
        if !c.status && !c.message.is_empty() {
            line.push_str(&format!(": {}", c.message));
        }
    }
    line
}

/// Reads, compiles and strictly checks the manifests.
pub fn load(paths: &[PathBuf]) -> Result<GatewayConfig, LoadError> {
    let compiled = compile_paths(paths)?;
    let mut problems: Vec<String> = compiled
        .manifest_errors
        .iter()
        .map(ToString::to_string)
        .collect();
    problems.extend(
        compiled
            .statuses
            .iter()
            .filter(|s| !s.is_healthy())
            .map(describe_status),
    );
    if problems.is_empty() {
        Ok(compiled.config)
    } else {
        Err(LoadError::Invalid(problems))
    }
}

/// Watches `paths` and reloads into `handle` on change. The returned watcher must be kept
/// alive for as long as reloading should happen.
pub fn watch(
    paths: Vec<PathBuf>,
    handle: ConfigHandle,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })?;
    for path in &paths {
        let dir = if path.is_dir() {
            path.clone()
        } else {
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        };
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    tokio::spawn(async move {
        let mut last: Option<GatewayConfig> = None;
        while rx.recv().await.is_some() {
            // Debounce: wait until events stop arriving for DEBOUNCE.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let paths = paths.clone();
            let loaded = tokio::task::spawn_blocking(move || load(&paths)).await;
            match loaded {
                Ok(Ok(config)) => {
                    if last.as_ref() == Some(&config) {
                        continue;
                    }
                    match handle.swap_config(&config) {
                        Ok(()) => {
                            tracing::info!(generation = %config.generation, routes = config.routes.len(), "manifests reloaded");
                            last = Some(config);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reload failed; keeping the last good config")
                        }
                    }
                }
                Ok(Err(e)) => {
                    handle.reload_failed("manifests");
                    tracing::error!(error = %e, "reload failed; keeping the last good config")
                }
                Err(e) => tracing::error!(error = %e, "reload task failed"),
            }
        }
    });
    Ok(watcher)
}
