//! Leader election on a `coordination.k8s.io/v1` Lease, so that two operator replicas never
//! write config or status at the same time.
//!
//! Optimistic concurrency (the Lease's resourceVersion) decides races. A leader that cannot
//! renew within the lease duration steps down before another replica may take over: the
//! reconcile loop stops at once and the replica competes for the lease again.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;

pub const LEASE_NAME: &str = "portcullis-operator";

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub retry_period: Duration,
    /// Owner of the Lease when this replica creates it ([`crate::owner`]).
    pub owner: Option<OwnerReference>,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            owner: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("lost the leader lease: {0}")]
    Lost(String),
}

fn expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let Some(renew) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(10));
    // Milliseconds, not whole seconds: a standby takes over up to a second sooner.
    renew.as_millisecond() + duration * 1000 < now.as_millisecond()
}

fn holder(lease: &Lease) -> Option<&str> {
    lease.spec.as_ref()?.holder_identity.as_deref()
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
}

impl Elector {
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    fn spec(&self, acquire: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.lease_duration.as_secs() as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to take or keep the lease. `Ok(true)` when we hold it afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(LEASE_NAME).await?;
        let Some(mut lease) = current else {
            let mut lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.into()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            crate::owner::attach(&mut lease.metadata, self.config.owner.as_ref());
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let mine = holder(&lease) == Some(self.config.identity.as_str());
        if !mine && !expired(&lease, Timestamp::now()) {
            return Ok(false);
        }
        let previous = lease.spec.clone().unwrap_or_default();
        let transitions = previous.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquire = if mine { previous.acquire_time } else { None };
        lease.spec = Some(self.spec(acquire, transitions));
        // `replace` carries the resourceVersion we read: a concurrent writer makes it fail.
        match self
            .api
            .replace(LEASE_NAME, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    tracing::info!(identity = %self.config.identity, "became leader");
                    return;
                }
                Ok(false) => tracing::debug!("another replica leads; waiting"),
                Err(e) => tracing::warn!(error = %e, "leader election: cannot reach the lease"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews until renewal fails for a whole lease duration; then returns the reason.
    pub async fn hold(&self) -> LeaderError {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => return LeaderError::Lost("another replica holds the lease".into()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader lease");
                    // Stop acting before another replica may legitimately take over.
                    if last_renewed.elapsed() + self.config.retry_period
                        >= self.config.lease_duration
                    {
                        return LeaderError::Lost(format!("renewal failing: {e}"));
                    }
                }
            }
        }
    }

    /// Gives the lease up on shutdown, so a follower takes over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await {
            if holder(&lease) == Some(self.config.identity.as_str()) {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.renew_time = None;
                }
                let _ = self
                    .api
                    .replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await;
            }
        }
    }
}
