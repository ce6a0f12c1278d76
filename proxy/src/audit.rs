//! The audit log: one JSON object per request on stdout.
//!
//! Lines are handed to a writer thread through a bounded channel so request handling never
//! blocks on stdout; if the writer falls behind, lines are dropped and counted rather than
//! stalling traffic. Only the path is logged (never the query, which may carry credentials),
//! and never header values.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

const QUEUE: usize = 65_536;

#[derive(Serialize)]
pub struct AuditRecord<'a> {
    pub timestamp: String,
    pub request_id: &'a str,
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
    /// Collected in memory (tests).
    Memory(Arc<Mutex<Vec<String>>>),
    Disabled,
}

pub struct Audit {
    sink: AuditSink,
    sender: Option<SyncSender<Vec<u8>>>,
    dropped: AtomicU64,
}

impl Audit {
    pub fn new(sink: AuditSink) -> Self {
        let sender = match sink {
            AuditSink::Stdout => {
                let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
                let spawned = std::thread::Builder::new()
                    .name("audit-writer".into())
                    .spawn(move || {
                        let stdout = std::io::stdout();
                        let mut out = std::io::BufWriter::new(stdout.lock());
                        while let Ok(line) = rx.recv() {
                            let _ = out.write_all(&line);
                            // Flush only when idle, so bursts become few large writes.
                            while let Ok(line) = rx.try_recv() {
                                let _ = out.write_all(&line);
                            }
                            let _ = out.flush();
                        }
                    });
                match spawned {
                    Ok(_) => Some(tx),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the audit writer; audit disabled");
                        None
                    }
                }
            }
            _ => None,
        };
        Audit {
            sink,
            sender,
            dropped: AtomicU64::new(0),
        }
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
            AuditSink::Stdout => {
                if let Some(sender) = &self.sender {
                    if let Err(TrySendError::Full(_)) = sender.try_send(line) {
                        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
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
