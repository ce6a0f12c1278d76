//! Kubernetes Events for condition changes, best effort and rate limited.
//!
//! Events are a courtesy for `kubectl describe`; status is the contract. They are sent from
//! their own task, so a status write never waits for one, and at most
//! [`EVENTS_PER_SECOND`]: the first status pass over 110,000 objects would otherwise create
//! 110,000 Events, doubling the API server's write load, and kube's `Recorder` scans its
//! whole six-minute cache on every publish (quadratic at that volume). When the queue is
//! full, new Events are dropped and counted (`portcullis_operator_events_dropped_total`),
//! as client-go's recorder drops them under its own rate limit.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Sustained Event rate.
pub const EVENTS_PER_SECOND: u64 = 20;
/// Events waiting to be sent; beyond this they are dropped.
const QUEUE: usize = 256;

#[derive(Clone)]
pub struct EventSink {
    queue: mpsc::Sender<(Event, ObjectReference)>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    /// Starts the sending task; it ends when every sink is dropped.
    pub fn spawn(recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        let (queue, mut events) = mpsc::channel::<(Event, ObjectReference)>(QUEUE);
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(1000 / EVENTS_PER_SECOND));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while let Some((event, reference)) = events.recv().await {
                pace.tick().await;
                if let Err(e) = recorder.publish(&event, &reference).await {
                    tracing::debug!(error = %e, "cannot record an event");
                }
            }
        });
        Self { queue, metrics }
    }

    pub fn send(&self, event: Event, reference: ObjectReference) {
        if self.queue.try_send((event, reference)).is_err() {
            self.metrics.events_dropped.inc();
        }
    }
}
