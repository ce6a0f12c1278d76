//! A throwaway `redis-server` on a free loopback port, killed on drop.
//! Missing binary: skip with a message, or fail when `CI` is set.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok()
}

impl RedisServer {
    /// Panics when redis-server is not installed (the `Option` is always `Some`).
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// [`RedisServer::start`] with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Option<Self> {
        if !available() {
            // A test that cannot run fails: a skipped one would pass without proving anything.
            panic!("redis-server is not installed (e2e/install-deps.sh installs it)");
        }
        let dir = std::env::temp_dir().join(format!(
            "portcullis-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
        };
        server.spawn(extra);
        Some(server)
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["ping"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not start", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Makes Redis busy for `secs` (`DEBUG SLEEP`; start it with `--enable-debug-command
    /// yes`), from a thread: returns at once. The thread ends when the sleep does, or when
    /// the server dies under it.
    pub fn stall(&self, secs: &str) -> std::thread::JoinHandle<()> {
        let (port, secs) = (self.port.to_string(), secs.to_owned());
        std::thread::spawn(move || {
            let _ = Command::new("redis-cli")
                .args(["-p", &port, "debug", "sleep", &secs])
                .output();
        })
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Same port, empty data (as after a crash without persistence).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn(&[]);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A directory of a test's files, removed when dropped (also when the test fails).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh path under the system's temporary directory, named after `name`.
pub fn temp_dir(name: &str) -> TempDir {
    TempDir(std::env::temp_dir().join(format!(
        "portcullis-{name}-{}-{}",
        std::process::id(),
        free_port()
    )))
}
