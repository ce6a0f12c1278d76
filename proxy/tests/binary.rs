//! The `portcullis-proxy` binary as users run it: `--check`, serving, SIGTERM.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_portcullis-proxy");

fn quickstart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/quickstart")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(port: u16, path: &str, extra: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: localhost\r\n{extra}connection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[test]
fn check_passes_on_the_quickstart() {
    let out = Command::new(BIN)
        .arg("--manifests")
        .arg(quickstart())
        .arg("--check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ApiRoute demo/hello: Accepted=True"),
        "{stdout}"
    );
}

#[test]
fn check_fails_naming_the_object_and_field() {
    let dir = std::env::temp_dir().join(format!("portcullis-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("bad.yaml"),
        "apiVersion: portcullis.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: broken}\n\
         spec:\n  paths: [{type: Regex, value: \"/(\"}]\n  upstream: {targets: [{url: \"http://a:1\"}]}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--manifests")
        .arg(&dir)
        .arg("--check")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ApiRoute default/broken"), "{stdout}");
    assert!(stdout.contains("spec.paths[0].value"), "{stdout}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn serves_the_quickstart_and_stops_on_sigterm() {
    let (port, admin) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .arg("--manifests")
        .arg(quickstart())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ready = loop {
        if let Some(r) = http_get(admin, "/readyz", "") {
            break r;
        }
        assert!(Instant::now() < deadline, "proxy did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let hello = http_get(port, "/hello", "").unwrap();
    assert!(
        hello.starts_with("HTTP/1.1 200") && hello.ends_with("{\"hello\":\"world\"}"),
        "{hello}"
    );
    let denied = http_get(port, "/private", "").unwrap();
    assert!(denied.starts_with("HTTP/1.1 401"), "{denied}");
    let allowed = http_get(port, "/private", "x-api-key: demo-key-0123456789\r\n").unwrap();
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "proxy did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
