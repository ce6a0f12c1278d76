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
    /// Starts a control plane; panics when it cannot (the `Option` is always `Some`).
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
            // A test that cannot run fails: a skipped one would pass without proving anything.
            panic!(
                "the test control plane did not start (e2e/env/ensure-apiserver.sh builds the \
                 cached kube-apiserver, e2e/install-deps.sh installs etcd):\n{log}"
            );
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

/// Status, headers (names in lowercase) and body of a response.
pub type FullResponse = (u16, Vec<(String, String)>, String);

/// One HTTP/1.1 request with the given `Host`.
pub fn http_full(
    port: u16,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<FullResponse> {
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
    let (head, body) = response.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Some((status, headers, body.to_string()))
}

/// A Linux bridge with addresses of its own, so that Services can have endpoints the API
/// server accepts (it refuses loopback addresses) while no packet leaves the machine.
/// Removed on drop. The addresses are 198.18.X.Y (RFC 2544 benchmarking space) with X from
/// the process id, so that tests running side by side do not collide.
pub struct Bridge {
    pub name: String,
    pub addresses: Vec<std::net::IpAddr>,
}

impl Bridge {
    pub fn create(tag: &str, count: u8) -> Bridge {
        let pid = std::process::id();
        let name = format!("pc{tag}{}", pid % 100_000);
        let third = (pid % 250) as u8 + 1;
        let _ = Command::new("ip").args(["link", "del", &name]).status();
        let run = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        // Creating links needs CAP_NET_ADMIN: the test fails (never skips) without it.
        run(&["link", "add", &name, "type", "bridge"]);
        let mut addresses = Vec::new();
        for i in 0..count {
            let addr = format!("198.18.{third}.{}", i + 10);
            run(&["addr", "add", &format!("{addr}/32"), "dev", &name]);
            addresses.push(addr.parse().unwrap());
        }
        run(&["link", "set", &name, "up"]);
        Bridge { name, addresses }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

/// An HTTP/1.1 upstream on one address that answers every request with its name (and the
/// request's path and headers as `x-seen-*` response headers). Stopped on drop.
pub struct Echo {
    pub addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Echo {
    /// On a free port of `ip`.
    pub fn start(ip: std::net::IpAddr, name: &str) -> Echo {
        Self::start_on(std::net::SocketAddr::new(ip, 0), name)
    }

    pub fn start_on(addr: std::net::SocketAddr, name: &str) -> Echo {
        let listener = TcpListener::bind(addr).unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let name = name.clone();
                        std::thread::spawn(move || serve_echo(stream, &name));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { addr, stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve_echo(mut stream: TcpStream, name: &str) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Requests without bodies only: a head ends the request.
        while let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            buffer.drain(..end + 4);
            let mut lines = head.lines();
            let path = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("")
                .to_string();
            let mut seen = format!("x-seen-path: {path}\r\n");
            for line in lines {
                if let Some((n, v)) = line.split_once(':') {
                    let n = n.trim().to_ascii_lowercase();
                    if n.starts_with("x-") || n == "host" {
                        seen.push_str(&format!("x-seen-{n}: {}\r\n", v.trim()));
                    }
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n{seen}\r\n{name}",
                name.len()
            );
            if stream.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A cluster-mode proxy (`--kube`) as the proxy ServiceAccount: (process, port, admin port).
pub fn spawn_proxy(cluster: &Cluster, name: &str, extra: &[&str]) -> (Process, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let mut args = vec![
        "--kube".to_string(),
        "--namespace".into(),
        "portcullis-system".into(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--replica-id".into(),
        name.into(),
        "--no-audit".into(),
    ];
    // `extra` may set its own interval (a flag given twice is an error).
    if !extra.contains(&"--report-interval") {
        args.extend(["--report-interval".into(), "1s".into()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let process = Process::spawn(
        name,
        &binary("portcullis-proxy"),
        &args,
        &cluster.kubeconfig("proxy"),
        &cluster.state,
    );
    (process, port, admin)
}

/// The operator as its ServiceAccount in `portcullis-system`, with `extra` flags: the
/// process and its admin port.
pub fn spawn_operator(cluster: &Cluster, name: &str, extra: &[&str]) -> (Process, u16) {
    let admin = free_port();
    let mut args = vec![
        "--namespace".to_string(),
        "portcullis-system".into(),
        "--admin-listen".into(),
        format!("127.0.0.1:{admin}"),
        "--identity".into(),
        name.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let process = Process::spawn(
        name,
        &binary("portcullis-operator"),
        &args,
        &cluster.kubeconfig("operator"),
        &cluster.state,
    );
    (process, admin)
}

/// A `redis-server` on a free loopback port, without persistence; killed on drop. A missing
/// `redis-server` fails the test (e2e/install-deps.sh installs it).
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is missing: run e2e/install-deps.sh");
        let redis = Redis { port, child };
        wait_for("redis-server", Duration::from_secs(10), || {
            (redis.command(&["PING"])? == "+PONG").then_some(())
        });
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command in RESP; the first line of the reply (`None` when unreachable).
    pub fn command(&self, args: &[&str]) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(b"\r\n") {
            if stream.read(&mut byte).ok()? == 0 {
                return None;
            }
            reply.push(byte[0]);
        }
        Some(String::from_utf8_lossy(&reply).trim_end().to_string())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kubectl get --watch` of one kind in one namespace, recording every version of every
/// object the API server sends (the initial list included) until [`Watch::stop`].
pub struct Watch {
    child: Child,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Cluster {
    pub fn watch(&self, resource: &str, namespace: &str) -> Watch {
        let mut child = Command::new("kubectl")
            .args([
                "get",
                resource,
                "-n",
                namespace,
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .env("KUBECONFIG", self.kubeconfig("admin"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let record = seen.clone();
        std::thread::spawn(move || {
            let events = serde_json::Deserializer::from_reader(std::io::BufReader::new(stdout))
                .into_iter::<Value>();
            for event in events {
                let Ok(mut event) = event else { return };
                record.lock().unwrap().push(event["object"].take());
            }
        });
        Watch { child, seen }
    }
}

impl Watch {
    /// Stops watching; every object version seen, in order.
    pub fn stop(mut self) -> Vec<Value> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
