//! The simulated Cloud Logging sinks: both simulators publish the audit LogEntries a real
//! project would route to Pub/Sub, in order, through one background task each.

use std::collections::BTreeMap;
use std::sync::Arc;

use nodewire::bus::{Bus, OutboundMessage};
use serde_json::Value;

/// Where audit entries go.
#[derive(Clone)]
pub struct AuditSink {
    pub bus: Arc<dyn Bus>,
    /// Full topic name (`projects/P/topics/T`).
    pub topic: String,
    /// How long an entry takes from the API call to the topic (Cloud Logging's routing to a
    /// sink takes seconds); entries keep their order.
    pub delay: std::time::Duration,
}

impl std::fmt::Debug for AuditSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditSink")
            .field("topic", &self.topic)
            .finish()
    }
}

impl AuditSink {
    /// Starts the publishing task; entries sent to the returned channel are published in order,
    /// as a Logging sink does (data = the LogEntry JSON, attribute
    /// `logging.googleapis.com/timestamp`).
    pub fn spawn(self) -> tokio::sync::mpsc::UnboundedSender<Value> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(std::time::Instant, Value)>();
        let tx = {
            // Stamp each entry when the API wrote it, so that the delay runs from then.
            let (stamped_tx, mut plain_rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
            tokio::spawn(async move {
                while let Some(e) = plain_rx.recv().await {
                    if tx.send((std::time::Instant::now(), e)).is_err() {
                        return;
                    }
                }
            });
            stamped_tx
        };
        let delay = self.delay;
        tokio::spawn(async move {
            while let Some((at, entry)) = rx.recv().await {
                tokio::time::sleep_until((at + delay).into()).await;
                let ts = entry["timestamp"].as_str().unwrap_or_default().to_string();
                let msg = OutboundMessage {
                    data: entry.to_string().into_bytes(),
                    attributes: BTreeMap::from([(
                        "logging.googleapis.com/timestamp".to_string(),
                        ts,
                    )]),
                    ordering_key: None,
                };
                if let Err(e) = self.bus.publish(&self.topic, msg).await {
                    tracing::warn!(error = %e, topic = %self.topic, "simulated sink: publishing an audit entry failed");
                }
            }
        });
        tx
    }
}

/// A simulator's side of its sink: entries go to the publishing task, or nowhere when no sink
/// is configured.
#[derive(Debug)]
pub(crate) struct AuditLog(
    Option<tokio::sync::mpsc::UnboundedSender<Value>>,
    std::sync::Mutex<Vec<Late>>,
);

/// Entries of one method that Logging routes late, and how many times: Cloud Logging gives
/// no order between entries and routes at least once, so at Google's pace the delete's entry
/// of a recreated VM often reaches the topic after the insert's (issue 21).
#[derive(Debug, Clone)]
pub struct Late {
    /// `protoPayload.methodName` (e.g. `v1.compute.instances.delete`).
    pub method: String,
    /// Added to the sink's delay.
    pub extra: std::time::Duration,
    /// How many copies arrive (2: a duplicate).
    pub copies: u8,
}

impl AuditLog {
    /// Starts the sink's publishing task, if there is a sink.
    pub(crate) fn start(sink: Option<&AuditSink>) -> Self {
        Self(
            sink.cloned().map(AuditSink::spawn),
            std::sync::Mutex::new(Vec::new()),
        )
    }

    /// Whether entries are published at all (a simulator builds none otherwise).
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Queues `entry` for publication.
    pub(crate) fn publish(&self, entry: Value) {
        let Some(tx) = &self.0 else { return };
        let method = entry
            .pointer("/protoPayload/methodName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let late = self
            .1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|l| l.method == method)
            .cloned();
        match late {
            None => {
                let _ = tx.send(entry);
            }
            Some(l) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(l.extra).await;
                    for _ in 0..l.copies {
                        let _ = tx.send(entry.clone());
                    }
                });
            }
        }
    }

    /// From now on, entries of `late.method` arrive late (and as many times as it says).
    pub(crate) fn make_late(&self, late: Late) {
        let mut v = self
            .1
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        v.retain(|l| l.method != late.method);
        v.push(late);
    }
}
