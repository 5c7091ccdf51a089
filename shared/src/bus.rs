//! PUBLISH: outbound messages. [`Bus`] is the narrow trait every function publishes through;
//! [`PubSubBus`] is Google Cloud Pub/Sub through the official `google-cloud-pubsub` crate
//! (pointed at the emulator when configured), [`InProcessBus`] the embedded default of the
//! sandbox and the recorder of unit tests.
//!
//! Every publish is awaited: a handler reports success only once its next step is accepted by
//! Pub/Sub, so a lost publish becomes a redelivery, never a silent gap in the chain.

use crate::error::Cause;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_gax::retry_policy::RetryPolicyExt;
use google_cloud_pubsub::client::{BasePublisher, Publisher};
use google_cloud_pubsub::model::Message;
use tokio::sync::mpsc;

use crate::config::PubSubConfig;

/// A boxed future, for dyn-compatible async trait methods.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message to publish.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboundMessage {
    pub data: Vec<u8>,
    pub attributes: BTreeMap<String, String>,
    pub ordering_key: Option<String>,
}

/// A publish that did not succeed. Transient from the handler's point of view (the delivery
/// that tried to publish is redelivered), except a message that cannot be serialized.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("publishing to {topic} failed")]
    Publish {
        topic: String,
        #[source]
        source: Cause,
    },
    #[error("connecting to Pub/Sub failed")]
    Connect(#[source] Cause),
    /// The message could not be serialized (a bug: redelivery cannot help).
    #[error("serializing the message failed")]
    Encode(#[source] serde_json::Error),
}

impl crate::error::Classify for BusError {
    fn is_retryable(&self) -> bool {
        !matches!(self, BusError::Encode(_))
    }
}

/// Where functions publish.
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message to a topic (`projects/P/topics/T`) and waits until it is
    /// accepted; returns the message id.
    ///
    /// # Errors
    /// [`BusError`] when the message was not accepted within the configured bound.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: OutboundMessage,
    ) -> BoxFuture<'a, Result<String, BusError>>;

    /// Sends whatever is buffered; called once at shutdown.
    fn flush(&self) -> BoxFuture<'_, ()>;
}

/// Google Cloud Pub/Sub. One gRPC channel, one batching [`Publisher`] per topic, created on
/// first use.
pub struct PubSubBus {
    base: BasePublisher,
    publishers: tokio::sync::Mutex<HashMap<String, Publisher>>,
    timeout: Duration,
}

impl std::fmt::Debug for PubSubBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PubSubBus").finish_non_exhaustive()
    }
}

impl PubSubBus {
    /// Connects to the emulator (`emulator_endpoint`, anonymous credentials) or to Google
    /// (Application Default Credentials).
    ///
    /// # Errors
    /// [`BusError::Connect`] when the client cannot be built.
    pub async fn connect(cfg: &PubSubConfig) -> Result<Self, BusError> {
        let retry =
            google_cloud_pubsub::retry_policy::RetryableErrors.with_time_limit(cfg.publish_timeout);
        let mut builder = BasePublisher::builder().with_retry_policy(retry);
        if let Some(ep) = &cfg.emulator_endpoint {
            builder = builder.with_endpoint(ep.clone()).with_credentials(
                google_cloud_auth::credentials::anonymous::Builder::new().build(),
            );
        }
        let base = builder
            .build()
            .await
            .map_err(|e| BusError::Connect(Cause::new(e)))?;
        Ok(Self {
            base,
            publishers: tokio::sync::Mutex::new(HashMap::new()),
            timeout: cfg.publish_timeout,
        })
    }

    async fn publisher(&self, topic: &str) -> Publisher {
        let mut map = self.publishers.lock().await;
        map.entry(topic.to_string())
            .or_insert_with(|| {
                self.base
                    .publisher(topic.to_string())
                    // Step messages are sent one at a time by a handler that waits for them;
                    // batching would only add latency.
                    .set_delay_threshold(Duration::from_millis(1))
                    .build()
            })
            .clone()
    }
}

impl Bus for PubSubBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: OutboundMessage,
    ) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async move {
            let publisher = self.publisher(topic).await;
            let key = msg.ordering_key.clone();
            let mut m = Message::new()
                .set_data(msg.data)
                .set_attributes(msg.attributes);
            if let Some(k) = &key {
                m = m.set_ordering_key(k.clone());
            }
            let fail = |source: Cause| BusError::Publish {
                topic: topic.to_string(),
                source,
            };
            // The crate's retry policy bounds retries; this bounds everything else too.
            let res =
                tokio::time::timeout(self.timeout + Duration::from_secs(1), publisher.publish(m))
                    .await;
            match res {
                Ok(Ok(id)) => Ok(id),
                Ok(Err(e)) => {
                    // A failed publish pauses its ordering key; resume it so the redelivery of
                    // this delivery can publish again.
                    if let Some(k) = key {
                        publisher.resume_publish(k);
                    }
                    Err(fail(Cause::new(e)))
                }
                Err(_) => {
                    if let Some(k) = key {
                        publisher.resume_publish(k);
                    }
                    Err(fail(Cause::msg(format!(
                        "no answer within {:?}",
                        self.timeout
                    ))))
                }
            }
        })
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let publishers: Vec<Publisher> =
                self.publishers.lock().await.values().cloned().collect();
            for p in publishers {
                p.flush().await;
            }
        })
    }
}

/// A message as the in-process bus delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub topic: String,
    pub message_id: String,
    pub message: OutboundMessage,
}

#[derive(Default)]
struct InProcessState {
    next_id: u64,
    log: Vec<Delivered>,
    subscribers: HashMap<String, Vec<mpsc::UnboundedSender<Delivered>>>,
    #[cfg(any(test, feature = "testing"))]
    fail_topics: Vec<String>,
}

/// An in-process bus: the sandbox's embedded default when no emulator is installed, and the
/// recorder that handler unit tests assert on. It never stands in for Pub/Sub in tests of the
/// Pub/Sub path.
#[derive(Clone, Default)]
pub struct InProcessBus {
    state: Arc<Mutex<InProcessState>>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus").finish_non_exhaustive()
    }
}

impl InProcessBus {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InProcessState> {
        // A poisoned lock only means a test thread panicked; the data is still usable.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Receives every message published to `topic` from now on.
    pub fn subscribe(&self, topic: &str) -> mpsc::UnboundedReceiver<Delivered> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.state()
            .subscribers
            .entry(topic.to_string())
            .or_default()
            .push(tx);
        rx
    }

    /// Every message published so far, in order.
    pub fn published(&self) -> Vec<Delivered> {
        self.state().log.clone()
    }

    /// Messages published so far to one topic.
    pub fn published_to(&self, topic: &str) -> Vec<Delivered> {
        self.state()
            .log
            .iter()
            .filter(|d| d.topic == topic)
            .cloned()
            .collect()
    }

    /// Makes publishes to `topic` fail (for tests of the failure path).
    #[cfg(any(test, feature = "testing"))]
    pub fn fail_topic(&self, topic: &str) {
        self.state().fail_topics.push(topic.to_string());
    }
}

impl Bus for InProcessBus {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: OutboundMessage,
    ) -> BoxFuture<'a, Result<String, BusError>> {
        let result = {
            let mut st = self.state();
            #[cfg(any(test, feature = "testing"))]
            let failing = st.fail_topics.iter().any(|t| t == topic);
            #[cfg(not(any(test, feature = "testing")))]
            let failing = false;
            if failing {
                Err(BusError::Publish {
                    topic: topic.to_string(),
                    source: Cause::msg("injected failure"),
                })
            } else {
                st.next_id += 1;
                let d = Delivered {
                    topic: topic.to_string(),
                    message_id: st.next_id.to_string(),
                    message: msg,
                };
                st.log.push(d.clone());
                if let Some(subs) = st.subscribers.get_mut(topic) {
                    subs.retain(|tx| tx.send(d.clone()).is_ok());
                }
                Ok(d.message_id)
            }
        };
        Box::pin(std::future::ready(result))
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_process_records_and_delivers() {
        let bus = InProcessBus::new();
        let mut rx = bus.subscribe("projects/p/topics/a");
        let id = bus
            .publish(
                "projects/p/topics/a",
                OutboundMessage {
                    data: b"x".to_vec(),
                    ..Default::default()
                },
            )
            .await
            .expect("published");
        bus.publish("projects/p/topics/b", OutboundMessage::default())
            .await
            .expect("published");
        let got = rx.recv().await.expect("delivered");
        assert_eq!(got.message_id, id);
        assert_eq!(got.message.data, b"x");
        assert_eq!(bus.published().len(), 2);
        assert_eq!(bus.published_to("projects/p/topics/b").len(), 1);
        bus.fail_topic("projects/p/topics/a");
        assert!(
            bus.publish("projects/p/topics/a", OutboundMessage::default())
                .await
                .is_err()
        );
    }
}
