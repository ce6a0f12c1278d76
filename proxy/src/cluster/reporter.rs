//! The replica's report: a Lease `portcullis-proxy-REPLICA` whose annotation holds the JSON
//! [`ProxyReport`] and whose renew time says the replica is alive.
//!
//! Written with get/create/update (no server-side apply), so the proxy's Role needs no
//! `patch`; the last written Lease is kept to update it with one request per report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use portcullis_compiler::report::{ProxyReport, LEASE_PREFIX, REPORT_ANNOTATION, REPORT_LABEL};
use tokio::sync::{watch, Notify};

use super::ClusterOptions;
use crate::server::ConfigHandle;

/// Bound on one report write, so a hanging API server cannot hold up the next report or
/// shutdown.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on removing the Lease at shutdown.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("cannot serialize the report: {0}")]
    Json(#[from] serde_json::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// `--replica-id`, else `$POD_NAME`, else `HOSTNAME-PID`; made into a valid object name.
/// The ownerReference to this replica's Pod, from `$POD_NAME` and `$POD_UID` (the downward
/// API, as the Helm chart sets them); `None` outside a pod.
pub fn pod_owner() -> Option<OwnerReference> {
    let var = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: var("POD_NAME")?,
        uid: var("POD_UID")?,
        controller: None,
        block_owner_deletion: None,
    })
}

pub fn replica_id(flag: Option<&str>) -> String {
    let raw = flag
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    sanitize(&raw)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "proxy".to_string())
}

/// Lowercase alphanumerics, `-` and `.`, starting and ending alphanumeric, short enough to
/// fit the Lease name (a DNS subdomain of at most 253 characters) after the prefix.
fn sanitize(raw: &str) -> String {
    let max = 253 - LEASE_PREFIX.len();
    let mapped: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        "proxy".to_string()
    } else {
        trimmed.to_string()
    }
}

pub fn lease_name(replica: &str) -> String {
    format!("{LEASE_PREFIX}{replica}")
}

pub(super) async fn run(
    client: kube::Client,
    options: ClusterOptions,
    handle: ConfigHandle,
    swapped: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &options.namespace);
    let name = lease_name(&options.replica);
    let started_at = Timestamp::now().to_string();
    let mut cached: Option<Lease> = None;
    let lease_seconds = lease_seconds(options.report_interval);
    let mut ticker = tokio::time::interval(options.report_interval.max(Duration::from_millis(100)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // Report a new generation at once: the operator waits for it to mark objects
            // Programmed.
            _ = swapped.notified() => ticker.reset(),
            _ = stop.changed() => break,
        }
        let report = ProxyReport {
            replica: options.replica.clone(),
            generation: handle.loaded_generation(),
            started_at: started_at.clone(),
            routes: handle.route_counters(),
        };
        let written = tokio::time::timeout(
            WRITE_TIMEOUT,
            publish(
                &api,
                &name,
                &mut cached,
                &report,
                options.owner.as_ref(),
                lease_seconds,
            ),
        )
        .await
        .unwrap_or(Err(ReportError::Timeout(WRITE_TIMEOUT)));
        match written {
            Ok(()) => {
                tracing::debug!(lease = %name, generation = ?report.generation, "report written")
            }
            Err(error) => {
                // Next tick retries; until then the operator sees the previous report.
                tracing::warn!(lease = %name, %error, "writing the report failed");
                cached = None;
            }
        }
    }
    match tokio::time::timeout(DELETE_TIMEOUT, api.delete(&name, &DeleteParams::default())).await {
        Ok(Ok(_)) => tracing::info!(lease = %name, "report removed"),
        Ok(Err(kube::Error::Api(status))) if status.is_not_found() => {}
        Ok(Err(error)) => {
            tracing::warn!(lease = %name, %error, "removing the report failed; it will expire")
        }
        Err(_) => tracing::warn!(lease = %name, "removing the report timed out; it will expire"),
    }
}

/// How long the operator counts a silent replica as live: three report intervals, at least
/// 5 s, so that one slow write (a loaded API server) does not drop a live replica. The default 5 s interval gives
/// [`portcullis_compiler::report::LEASE_DURATION_SECONDS`].
fn lease_seconds(report_interval: Duration) -> i32 {
    let millis = report_interval.as_millis().saturating_mul(3);
    i32::try_from(millis.div_ceil(1000))
        .unwrap_or(i32::MAX)
        .max(5)
}

fn fill(
    lease: &mut Lease,
    name: &str,
    report: &ProxyReport,
    now: &MicroTime,
    lease_seconds: i32,
) -> Result<(), ReportError> {
    let meta = &mut lease.metadata;
    meta.name = Some(name.to_string());
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REPORT_LABEL.to_string(), "true".to_string());
    meta.annotations.get_or_insert_with(BTreeMap::new).insert(
        REPORT_ANNOTATION.to_string(),
        serde_json::to_string(report)?,
    );
    let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
    spec.holder_identity = Some(report.replica.clone());
    spec.lease_duration_seconds = Some(lease_seconds);
    spec.renew_time = Some(now.clone());
    if spec.acquire_time.is_none() {
        spec.acquire_time = Some(now.clone());
    }
    Ok(())
}

fn is_status(error: &ReportError, check: fn(&kube::core::Status) -> bool) -> bool {
    matches!(error, ReportError::Kube(kube::Error::Api(status)) if check(status))
}

async fn publish(
    api: &Api<Lease>,
    name: &str,
    cached: &mut Option<Lease>,
    report: &ProxyReport,
    owner: Option<&OwnerReference>,
    lease_seconds: i32,
) -> Result<(), ReportError> {
    let now = MicroTime(Timestamp::now());
    if let Some(mut lease) = cached.take() {
        fill(&mut lease, name, report, &now, lease_seconds)?;
        match api.replace(name, &PostParams::default(), &lease).await {
            Ok(written) => {
                *cached = Some(written);
                return Ok(());
            }
            // Someone else changed or removed it (an operator cleaning up, a restarted
            // replica with our id): start over from what is there now.
            Err(error) => {
                let error = ReportError::from(error);
                if !is_status(&error, |s| s.is_conflict() || s.is_not_found()) {
                    return Err(error);
                }
            }
        }
    }
    let written = match api.get_opt(name).await? {
        Some(mut lease) => {
            fill(&mut lease, name, report, &now, lease_seconds)?;
            api.replace(name, &PostParams::default(), &lease).await?
        }
        None => {
            let mut lease = Lease {
                metadata: ObjectMeta::default(),
                spec: None,
            };
            fill(&mut lease, name, report, &now, lease_seconds)?;
            lease.metadata.owner_references = owner.cloned().map(|o| vec![o]);
            api.create(&PostParams::default(), &lease).await?
        }
    };
    *cached = Some(written);
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use portcullis_compiler::report::LEASE_DURATION_SECONDS;

    use super::*;

    #[test]
    fn replica_ids_make_valid_lease_names() {
        assert_eq!(sanitize("Proxy_7f9c/X"), "proxy-7f9c-x");
        assert_eq!(sanitize("--"), "proxy");
        assert_eq!(replica_id(Some("pod-1")), "pod-1");
        let long = "a".repeat(400);
        assert_eq!(lease_name(&sanitize(&long)).len(), 253);
    }

    #[test]
    fn a_report_lasts_three_intervals() {
        assert_eq!(
            lease_seconds(Duration::from_secs(5)),
            LEASE_DURATION_SECONDS
        );
        assert_eq!(lease_seconds(Duration::from_secs(2)), 6);
        assert_eq!(lease_seconds(Duration::from_millis(2500)), 8);
        assert_eq!(lease_seconds(Duration::from_millis(100)), 5);
    }

    #[test]
    fn lease_carries_the_report() {
        let report = ProxyReport {
            replica: "r1".into(),
            generation: Some("g1".into()),
            started_at: "2025-01-01T00:00:00Z".into(),
            routes: BTreeMap::new(),
        };
        let mut lease = Lease {
            metadata: ObjectMeta::default(),
            spec: None,
        };
        fill(
            &mut lease,
            "portcullis-proxy-r1",
            &report,
            &MicroTime(Timestamp::now()),
            LEASE_DURATION_SECONDS,
        )
        .unwrap();
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("r1"));
        assert_eq!(spec.lease_duration_seconds, Some(LEASE_DURATION_SECONDS));
        let json = &lease.metadata.annotations.unwrap()[REPORT_ANNOTATION];
        assert_eq!(serde_json::from_str::<ProxyReport>(json).unwrap(), report);
        assert_eq!(lease.metadata.labels.unwrap()[REPORT_LABEL], "true");
    }
}
