//! The operator's leadership terms: compete for the lease, act while holding it, step down
//! when it is lost, and compete again.
//!
//! While this replica leads, the reconcile loop runs beside the two status writers; a failed
//! reconcile is retried after [`RETRY_AFTER`] (every pass redoes everything, so a retry is
//! just an early wake-up). A replica that loses the lease (say, the API server was away for
//! longer than the lease) stops acting at once and competes again instead of exiting; on
//! shutdown a leader gives the lease up so that a follower takes over without waiting for
//! it to expire.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::events::EventSink;
use crate::gateway_status::GatewayStatusWriter;
use crate::leader::{Elector, LeaderError};
use crate::logs::Limiter;
use crate::metrics::{ErrorLabels, Metrics};
use crate::reconcile::{Reconciler, RETRY_AFTER};
use crate::trigger::Trigger;
use crate::watch::Stores;
use crate::writer::{StatusWriter, WriterContext};

/// Everything a leadership term needs besides the reconciler.
pub struct Leadership {
    pub client: Client,
    pub stores: Stores,
    pub metrics: Arc<Metrics>,
    pub events: EventSink,
    pub trigger: Arc<Trigger>,
    /// `None`: act without leader election (a single replica).
    pub elector: Option<Arc<Elector>>,
    /// Namespace and name of the proxies' Service, whose address goes into the status of
    /// Ingresses and Gateways.
    pub proxy_service: (String, String),
    /// Quiet period that batches a burst of changes into one compile.
    pub debounce: Duration,
    /// Full reconcile at least this often, to notice proxies whose reports stopped.
    pub resync: Duration,
}

/// How a term ended.
enum TermEnd {
    Lost(LeaderError),
    Shutdown,
}

impl Leadership {
    /// Runs leadership terms until `shutdown` completes; then releases the lease if held.
    pub async fn run(self, mut reconciler: Reconciler, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut failures = Limiter::default();
        loop {
            if let Some(elector) = &self.elector {
                tokio::select! {
                    () = elector.acquire() => {}
                    () = &mut shutdown => return,
                }
            }
            match self
                .term(&mut reconciler, &mut failures, &mut shutdown)
                .await
            {
                TermEnd::Lost(error) => {
                    tracing::warn!(%error, "stepped down; competing for the lease again");
                }
                TermEnd::Shutdown => {
                    tracing::info!("shutting down");
                    if let Some(elector) = &self.elector {
                        elector.release().await;
                    }
                    return;
                }
            }
        }
    }

    /// One term as leader: reconcile on every trigger (and at least every `resync`) until
    /// the lease is lost or shutdown is asked for.
    async fn term(
        &self,
        reconciler: &mut Reconciler,
        failures: &mut Limiter,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> TermEnd {
        self.metrics.leader.set(1);
        // Another leader may have published in between: publish afresh this term.
        reconciler.start_term();
        // Status writes run beside the reconcile loop, only while this replica leads.
        let writer = tokio::spawn(
            StatusWriter::new(WriterContext {
                client: self.client.clone(),
                stores: self.stores.clone(),
                metrics: self.metrics.clone(),
                events: self.events.clone(),
            })
            .run(reconciler.plans(), reconciler.publishing()),
        );
        let gateway_writer = tokio::spawn(
            GatewayStatusWriter::new(
                self.client.clone(),
                self.stores.clone(),
                self.events.clone(),
                self.proxy_service.clone(),
            )
            .run(reconciler.plans()),
        );
        let elector = self.elector.clone();
        let lost = async move {
            match elector {
                Some(elector) => elector.hold().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(lost);
        let end = loop {
            self.metrics.reconciles.inc();
            if let Err(e) = reconciler.reconcile().await {
                self.metrics
                    .errors
                    .get_or_create(&ErrorLabels {
                        reason: e.reason().into(),
                    })
                    .inc();
                if let Some(suppressed) = failures.allow(&e.to_string()) {
                    tracing::warn!(error = %e, suppressed, "reconcile failed; retrying");
                }
                let trigger = self.trigger.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(RETRY_AFTER).await;
                    trigger.wake();
                });
            }
            tokio::select! {
                () = self.trigger.notified() => {
                    // Batch the burst that usually follows one change.
                    tokio::time::sleep(self.debounce).await;
                }
                () = tokio::time::sleep(self.resync) => {}
                error = &mut lost => break TermEnd::Lost(error),
                () = shutdown.as_mut() => break TermEnd::Shutdown,
            }
        };
        writer.abort();
        gateway_writer.abort();
        self.metrics.leader.set(0);
        end
    }
}
