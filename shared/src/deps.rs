//! Process setup: the clients a function uses, built once from [`Config`] and shared by every
//! delivery.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::bus::{Bus, BusError, OutboundMessage, PubSubBus};
use crate::config::Config;
use crate::event::StepMessage;
use crate::locate::{Locator, NoLocator};
use crate::trace::TraceContext;

/// Message attribute names nodewire sets on every step.
pub mod attr {
    pub const STEP: &str = "step";
    pub const INSTANCE: &str = "instance";
    pub const TRACEPARENT: &str = "traceparent";
    pub const CHAIN: &str = "chain";
}

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub config: Arc<Config>,
    pub bus: Arc<dyn Bus>,
    /// Finds the VM behind a Node name when an event does not say.
    pub locator: Arc<dyn Locator>,
}

impl std::fmt::Debug for Deps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deps")
            .field("service", &self.config.service)
            .finish_non_exhaustive()
    }
}

impl Deps {
    /// Deps over a given bus (in-process, recording, or an already connected Pub/Sub bus).
    pub fn new(config: Config, bus: Arc<dyn Bus>) -> Self {
        Self {
            config: Arc::new(config),
            bus,
            locator: Arc::new(NoLocator),
        }
    }

    /// Replaces the locator.
    #[must_use]
    pub fn with_locator(mut self, locator: Arc<dyn Locator>) -> Self {
        self.locator = locator;
        self
    }

    /// Connects to Pub/Sub (the emulator when `PUBSUB_EMULATOR_HOST` is set).
    ///
    /// # Errors
    /// [`BusError::Connect`] when the client cannot be built.
    pub async fn connect(config: Config) -> Result<Self, BusError> {
        let bus = PubSubBus::connect(&config.pubsub).await?;
        Ok(Self::new(config, Arc::new(bus)))
    }

    /// Publishes a step to its topic with the attributes `step`, `instance`, `chain` and
    /// `traceparent` (a child span of `trace`) and ordering key `PROJECT/ZONE/NAME`.
    ///
    /// # Idempotency
    /// Publishing the same step twice is harmless: every step re-reads state.
    ///
    /// # Errors
    /// [`BusError`] when Pub/Sub did not accept it.
    pub async fn publish_step(
        &self,
        msg: &StepMessage,
        trace: &TraceContext,
    ) -> Result<String, BusError> {
        let topic = self.config.pubsub.topic(msg.step.as_str());
        let attributes = BTreeMap::from([
            (attr::STEP.to_string(), msg.step.as_str().to_string()),
            (attr::INSTANCE.to_string(), msg.instance.to_string()),
            (attr::CHAIN.to_string(), msg.chain.clone()),
            (
                attr::TRACEPARENT.to_string(),
                trace.child().to_traceparent(),
            ),
        ]);
        let out = OutboundMessage {
            data: msg.to_bytes(),
            attributes,
            ordering_key: Some(msg.instance.ordering_key()),
        };
        self.bus.publish(&topic, out).await
    }
}
