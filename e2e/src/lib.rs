//! Harness for the end-to-end tests: a real control plane (`e2e/env/*.sh`), `kubectl`, and
//! the operator and proxies as real processes with their own ServiceAccount identities.
#![allow(clippy::unwrap_used)] // a test harness: failing loudly is the point

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A binary built by `cargo build --workspace --bins` (e2e/test-all.sh does that first).
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let path = target.join("debug").join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A control plane started by `e2e/env/start.sh`, stopped on drop.
pub struct Cluster {
    pub state: PathBuf,
    pub env: HashMap<String, String>,
}

impl Cluster {
    /// Starts a control plane. Returns `None` (test skipped) only when it cannot start and
    /// CI is unset; under CI a missing environment is a failure.
    pub fn start(name: &str) -> Option<Cluster> {
        let state =
            std::env::temp_dir().join(format!("portcullis-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let output = Command::new(repo_root().join("e2e/env/start.sh"))
            .arg(&state)
            .env("PORTCULLIS_IGNORE_KUBECONFIG", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if !output.status.success() {
            let log = String::from_utf8_lossy(&output.stderr);
            let _ = Command::new(repo_root().join("e2e/env/stop.sh"))
                .arg(&state)
                .status();
            if std::env::var_os("CI").is_some() {
                panic!("the test control plane did not start:\n{log}");
            }
            eprintln!("SKIPPED: no test control plane (e2e/env/start.sh failed):\n{log}");
            return None;
        }
        let text = std::fs::read_to_string(state.join("env")).unwrap();
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        let cluster = Cluster { state, env };
        cluster
            .apply_file(&repo_root().join("crds/manifests"))
            .unwrap();
        cluster
            .apply_file(&repo_root().join("e2e/manifests/rbac.yaml"))
            .unwrap();
        Some(cluster)
    }

    pub fn kubeconfig(&self, who: &str) -> PathBuf {
        match who {
            "admin" => self.state.join("kubeconfig"),
            other => self.state.join(format!("kubeconfig-{other}")),
        }
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl_as("admin", args, stdin)
    }

    /// `kubectl` as `who` (`admin`, `tenant-a`, `tenant-b`, `operator`, `proxy`).
    pub fn kubectl_as(&self, who: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.kubeconfig(who))
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
        }
        child.wait_with_output().unwrap()
    }

    /// `kubectl apply -f -`; Err carries kubectl's error output.
    pub fn apply(&self, yaml: &str) -> Result<String, String> {
        let out = self.kubectl(&["apply", "-f", "-"], Some(yaml));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// `kubectl apply -f -` as `who`.
    pub fn apply_as(&self, who: &str, yaml: &str) -> Result<String, String> {
        let out = self.kubectl_as(who, &["apply", "-f", "-"], Some(yaml));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn apply_file(&self, path: &Path) -> Result<String, String> {
        let out = self.kubectl(&["apply", "-f", &path.to_string_lossy()], None);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The object as JSON, or `None` when it does not exist (or the server is away).
    pub fn get(&self, resource: &str, namespace: &str, name: &str) -> Option<Value> {
        let out = self.kubectl(
            &["get", resource, "-n", namespace, name, "-o", "json"],
            None,
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// The status of condition `type_` of an object, with its reason and message.
    pub fn condition(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        type_: &str,
    ) -> Option<Value> {
        let object = self.get(resource, namespace, name)?;
        object["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
    }

    /// Waits until the condition has `status` for the object's current generation.
    pub fn wait_condition(
        &self,
        resource: &str,
        namespace: &str,
        name: &str,
        type_: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        wait_for(
            &format!("{resource} {namespace}/{name} {type_}={status}"),
            timeout,
            || {
                let object = self.get(resource, namespace, name)?;
                let generation = object["metadata"]["generation"].as_i64();
                let condition = object["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == type_)?
                    .clone();
                (condition["status"] == status
                    && condition["observedGeneration"].as_i64() == generation)
                    .then_some(object)
            },
        )
    }

    pub fn restart_apiserver(&self, stop_only: bool) {
        let mut command = Command::new(repo_root().join("e2e/env/restart-apiserver.sh"));
        command.arg(&self.state);
        if stop_only {
            command.arg("--stop-only");
        }
        assert!(
            command.status().unwrap().success(),
            "restart-apiserver.sh failed"
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("e2e/env/stop.sh"))
            .arg(&self.state)
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process killed on drop; its output goes to a log file kept for debugging.
pub struct Process {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        kubeconfig: &Path,
        dir: &Path,
    ) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(program)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Process {
            name: name.to_string(),
            child,
            log,
        }
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    /// SIGKILL: a crash, no chance to clean up.
    pub fn kill(&mut self) {
        self.signal("-KILL");
        let _ = self.child.wait();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection: (status, body). `None` when unreachable.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    http_host(port, "localhost", method, path, headers)
}

/// [`http`] with this `Host`.
pub fn http_host(
    port: u16,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}
