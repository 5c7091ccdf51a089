//! Process setup: the dependencies a function uses, built once from [`Config`] and shared by
//! every delivery: [`Deps`] (configuration and bus) for every function, [`ChainDeps`] (also
//! the Compute and Kubernetes clients and the chain's settings, none of them optional) for the
//! steps, the sweep and the CLI.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::act::compute::{Compute, ComputeEndpoint, ComputePolicy};
use crate::act::k8s::{Kube, KubePolicy};
use crate::bus::{Bus, BusError, OutboundMessage, PubSubBus};
use crate::config::{ChainConfig, Config, KubeSettings};
use crate::event::StepMessage;
use crate::plan::PlanConfig;
use crate::trace::TraceContext;

/// Message attribute names nodewire sets on every step.
pub mod attr {
    pub const STEP: &str = "step";
    pub const INSTANCE: &str = "instance";
    pub const TRACEPARENT: &str = "traceparent";
    pub const CHAIN: &str = "chain";
}

/// What every function has: its configuration and its bus. The adapter runs on it (the
/// dead-letter topic, the limits, the flush at shutdown), and the routing functions need
/// nothing else. Cheap to clone.
#[derive(Clone)]
pub struct Deps {
    pub config: Arc<Config>,
    pub bus: Arc<dyn Bus>,
}

/// What the step functions, the drift sweep and the CLI use: every client is present, so
/// "not configured" cannot happen at run time (start-up refuses, exit 64). Cheap to clone.
#[derive(Clone)]
pub struct ChainDeps {
    pub base: Deps,
    pub compute: Compute,
    pub kube: Kube,
    pub chain: Arc<ChainConfig>,
    /// The planner's configuration, derived once from [`ChainConfig`] and the selector.
    pub plan: Arc<PlanConfig>,
    /// Pod ranges this process saw full lately (tried last).
    pub full_ranges: Arc<super::full_ranges::FullRanges>,
}

impl ChainDeps {
    /// Puts the chain's clients and settings together.
    pub fn new(base: Deps, compute: Compute, kube: Kube, chain: ChainConfig) -> Self {
        let plan = PlanConfig::new(&chain, &base.config.selector);
        Self {
            base,
            compute,
            kube,
            chain: Arc::new(chain),
            plan: Arc::new(plan),
            full_ranges: Arc::default(),
        }
    }

    /// The process configuration.
    pub fn config(&self) -> &Config {
        &self.base.config
    }
}

impl std::fmt::Debug for ChainDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainDeps")
            .field("service", &self.base.config.service)
            .finish_non_exhaustive()
    }
}

/// A dependency that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Compute(#[from] crate::act::compute::ComputeError),
    #[error(transparent)]
    Kube(#[from] crate::act::k8s::KubeError),
    #[error("the Kubernetes API is not configured (NODEWIRE_KUBECONFIG or NODEWIRE_KUBE_API_URL)")]
    NoKube,
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
        }
    }

    /// Connects to Pub/Sub (the emulator when `PUBSUB_EMULATOR_HOST` is set).
    ///
    /// # Errors
    /// [`SetupError::Bus`] when the client cannot be built.
    pub async fn connect(config: Config) -> Result<Self, SetupError> {
        let bus = PubSubBus::connect(&config.pubsub).await?;
        Ok(Self::new(config, Arc::new(bus)))
    }

    /// The Compute Engine client of this configuration (`NODEWIRE_COMPUTE_ENDPOINT`, else
    /// Google with Application Default Credentials).
    ///
    /// # Errors
    /// [`SetupError::Compute`] when the client cannot be built.
    pub async fn compute(&self) -> Result<Compute, SetupError> {
        Ok(Compute::new(
            &self.config.project,
            &ComputeEndpoint {
                url: self.config.compute_endpoint.clone(),
            },
            ComputePolicy::default(),
        )
        .await?)
    }

    /// The Kubernetes client of `settings`.
    ///
    /// # Errors
    /// [`SetupError`] when a file cannot be read or the client cannot be built.
    pub async fn kube(settings: &KubeSettings) -> Result<Kube, SetupError> {
        Ok(Kube::new(settings, KubePolicy::default()).await?)
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
            data: msg.to_bytes().map_err(BusError::Encode)?,
            attributes,
            ordering_key: Some(msg.instance.ordering_key()),
        };
        self.bus.publish(&topic, out).await
    }
}
