//! The audit log: one JSON object per request on stdout or in a file (`--audit-file`,
//! reopened on SIGHUP for log rotation).
//!
//! Lines are handed to a writer thread through a bounded queue so request handling never
//! blocks on the output. When the writer falls behind, allowed requests' lines are dropped
//! first: they may fill only three quarters of the queue, and denials' lines the rest, so a
//! denial is lost only once the queue is full of lines that could not be written. A failed
//! write (a full disk, a closed pipe) loses its batch. Both are counted in
//! `api_audit_dropped_total{reason}` and never stall traffic or end the process. Only the
//! path is logged (never the query, which may carry credentials), and never header values.

use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Lines the queue holds by default (`--audit-queue`).
pub const DEFAULT_QUEUE: usize = 65_536;

#[derive(Serialize)]
pub struct AuditRecord<'a> {
    pub timestamp: String,
    pub request_id: &'a str,
    /// W3C trace id of the request (continued or started by the proxy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<&'a str>,
    /// The replica that served it: its admin listener holds the decision record.
    pub replica: &'a str,
    pub client_ip: IpAddr,
    pub consumer: Option<&'a str>,
    pub route: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub latency_ms: f64,
    pub upstream_latency_ms: Option<f64>,
    pub decision: &'static str,
    pub step: Option<&'static str>,
    pub reason: Option<&'static str>,
    /// The RateLimitPolicy and limit that denied the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<&'a str>,
    /// WAF findings (every policy that found something, blocking or not) and the rule ids
    /// of a WAF denial.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waf: Option<Vec<crate::waf::WafAudit<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_ids: Option<Vec<u32>>,
}

/// Where audit lines go.
#[derive(Clone, Default)]
pub enum AuditSink {
    /// JSON lines on stdout through a writer thread.
    #[default]
    Stdout,
    /// JSON lines appended to a file through a writer thread; reopened on request.
    File(PathBuf),
    /// Collected in memory (tests).
    Memory(Arc<Mutex<Vec<String>>>),
    Disabled,
}

pub struct Audit {
    sink: AuditSink,
    sender: Option<SyncSender<Vec<u8>>>,
    /// Lines in the queue, and how many of them allowed lines may occupy.
    queued: Arc<AtomicUsize>,
    allowed_limit: usize,
    counters: AuditCounters,
    reopen: Arc<AtomicBool>,
}

/// Where lost lines are counted (`api_audit_dropped_total{reason}`).
#[derive(Clone, Default)]
pub struct AuditCounters {
    /// The writer was behind and the queue had no room.
    pub queue_full: Counter,
    /// The output failed (full disk, unwritable file, closed pipe).
    pub write_failed: Counter,
}

/// Asks the audit writer to reopen its file (log rotation); cheap to clone.
#[derive(Clone)]
pub struct AuditReopener(Arc<AtomicBool>);

impl AuditReopener {
    pub fn reopen(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn open_append(path: &PathBuf) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer thread: batches what is queued, writes it in one call, and counts what a
/// failed write loses (a full disk must cost lines, never the process or the traffic).
fn write_loop(
    rx: Receiver<Vec<u8>>,
    mut out: Box<dyn Write + Send>,
    path: Option<PathBuf>,
    reopen: Arc<AtomicBool>,
    queued: Arc<AtomicUsize>,
    dropped: Counter,
) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut failures: u64 = 0;
    while let Ok(line) = rx.recv() {
        batch.extend_from_slice(&line);
        let mut lines = 1u64;
        // Write only when idle or at 1 MiB, so bursts become few large writes.
        while batch.len() < (1 << 20) {
            match rx.try_recv() {
                Ok(line) => {
                    batch.extend_from_slice(&line);
                    lines += 1;
                }
                Err(_) => break,
            }
        }
        queued.fetch_sub(lines as usize, Ordering::Relaxed);
        if reopen.swap(false, Ordering::Relaxed) {
            if let Some(path) = &path {
                match open_append(path) {
                    Ok(file) => out = Box::new(file),
                    Err(e) => tracing::error!(path = %path.display(), error = %e,
                        "cannot reopen the audit file; still writing to the old one"),
                }
            }
        }
        if let Err(e) = out.write_all(&batch).and_then(|()| out.flush()) {
            dropped.inc_by(lines);
            failures += 1;
            if failures.is_power_of_two() {
                tracing::error!(error = %e, failures, "audit write failed; lines dropped");
            }
        }
        batch.clear();
    }
}

impl Audit {
    /// Starts the writer for `sink` with a queue of `queue` lines. Fails only when an audit
    /// file cannot be opened.
    pub fn new(sink: AuditSink, queue: usize, counters: AuditCounters) -> std::io::Result<Self> {
        let queue = queue.max(4);
        let queued = Arc::new(AtomicUsize::new(0));
        let reopen = Arc::new(AtomicBool::new(false));
        let output: Option<(Box<dyn Write + Send>, Option<PathBuf>)> = match &sink {
            AuditSink::Stdout => Some((Box::new(std::io::stdout()), None)),
            AuditSink::File(path) => Some((Box::new(open_append(path)?), Some(path.clone()))),
            AuditSink::Memory(_) | AuditSink::Disabled => None,
        };
        let sender = match output {
            Some((out, path)) => {
                let (tx, rx) = sync_channel::<Vec<u8>>(queue);
                let (reopen, dropped) = (reopen.clone(), counters.write_failed.clone());
                let queued = queued.clone();
                let spawned = std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || write_loop(rx, out, path, reopen, queued, dropped));
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the audit writer; audit disabled");
                        None
                    }
                }
            }
            None => None,
        };
        Ok(Audit {
            sink,
            sender,
            queued,
            allowed_limit: queue - queue / 4,
            counters,
            reopen,
        })
    }

    pub fn reopener(&self) -> AuditReopener {
        AuditReopener(self.reopen.clone())
    }

    pub fn enabled(&self) -> bool {
        !matches!(self.sink, AuditSink::Disabled)
    }

    pub fn write(&self, record: &AuditRecord<'_>) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(_) => return,
        };
        line.push(b'\n');
        match &self.sink {
            AuditSink::Stdout | AuditSink::File(_) => {
                if let Some(sender) = &self.sender {
                    let denial = record.decision == "deny";
                    // Allowed lines stop at the soft limit; denials may use the whole queue.
                    let before = self.queued.fetch_add(1, Ordering::Relaxed);
                    let admitted =
                        (denial || before < self.allowed_limit) && sender.try_send(line).is_ok();
                    if !admitted {
                        self.queued.fetch_sub(1, Ordering::Relaxed);
                        let dropped = self.counters.queue_full.inc() + 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(dropped, "audit writer is behind; lines dropped");
                        }
                    }
                }
            }
            AuditSink::Memory(lines) => {
                if let Ok(mut lines) = lines.lock() {
                    lines.push(String::from_utf8_lossy(&line).trim_end().to_string());
                }
            }
            AuditSink::Disabled => {}
        }
    }
}

/// RFC 3339 UTC timestamp with milliseconds, without pulling in a date crate.
pub fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        now.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_shape() {
        let t = timestamp();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
