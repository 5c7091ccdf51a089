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
pub(crate) struct AuditLog(Option<tokio::sync::mpsc::UnboundedSender<Value>>);

impl AuditLog {
    /// Starts the sink's publishing task, if there is a sink.
    pub(crate) fn start(sink: Option<&AuditSink>) -> Self {
        Self(sink.cloned().map(AuditSink::spawn))
    }

    /// Whether entries are published at all (a simulator builds none otherwise).
    pub(crate) fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Queues `entry` for publication.
    pub(crate) fn publish(&self, entry: Value) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(entry);
        }
    }
}
