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
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Resource;
use portcullis_crds::ObjectStatusFields;
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

/// Queues Events for the conditions whose status changed.
pub fn record_transitions<K>(
    events: &EventSink,
    live: &K,
    current: Option<&ObjectStatusFields>,
    desired: &ObjectStatusFields,
) where
    K: Resource<DynamicType = ()>,
{
    let was = |type_: &str| {
        current
            .and_then(|c| c.conditions.iter().find(|x| x.type_ == type_))
            .map(|c| c.status.clone())
    };
    for condition in &desired.conditions {
        if was(&condition.type_).as_deref() == Some(condition.status.as_str()) {
            continue;
        }
        let first_time = was(&condition.type_).is_none();
        let ok = condition.status == "True";
        // Quiet on a healthy first sighting; loud on every problem and every change.
        if first_time && ok && condition.type_ != "Programmed" {
            continue;
        }
        let event = Event {
            type_: if ok {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: if ok {
                condition.type_.clone()
            } else {
                format!("Not{}", condition.type_)
            },
            note: Some(truncate(&condition.message, 1000)),
            action: "Reconcile".into(),
            secondary: None,
        };
        events.send(event, live.object_ref(&()));
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
