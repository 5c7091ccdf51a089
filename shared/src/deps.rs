//! Process setup: the clients a function uses, built once from [`Config`] and shared by every
//! delivery.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::act::compute::{Compute, ComputeEndpoint, ComputePolicy};
use crate::act::k8s::{Kube, KubeConnection, KubePolicy};
use crate::bus::{Bus, BusError, OutboundMessage, PubSubBus};
use crate::config::{Config, KubeSettings};
use crate::event::StepMessage;
use crate::locate::{ClusterLocator, Locator, NoLocator};
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
    /// Compute Engine, when configured.
    pub compute: Option<Compute>,
    /// The Kubernetes API, when configured.
    pub kube: Option<Kube>,
    /// The chain's settings (step functions only).
    pub chain: Option<Arc<crate::config::ChainConfig>>,
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
    #[error("reading {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn read_file(path: &std::path::Path) -> Result<String, SetupError> {
    std::fs::read_to_string(path).map_err(|source| SetupError::File {
        path: path.display().to_string(),
        source,
    })
}

/// Builds the Kubernetes connection from the configuration (reads the token and CA files).
///
/// # Errors
/// [`SetupError::File`] when a file cannot be read.
pub fn kube_connection(s: &KubeSettings) -> Result<KubeConnection, SetupError> {
    Ok(match s {
        KubeSettings::Kubeconfig(p) => KubeConnection::Kubeconfig(p.clone()),
        KubeSettings::Direct {
            url,
            token_file,
            ca_file,
        } => KubeConnection::Direct {
            url: url.clone(),
            token: token_file
                .as_deref()
                .map(read_file)
                .transpose()?
                .map(|t| t.trim().to_string()),
            ca_pem: ca_file.as_deref().map(read_file).transpose()?,
        },
    })
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
            compute: None,
            kube: None,
            chain: None,
        }
    }

    /// Adds the chain's settings.
    #[must_use]
    pub fn with_chain(mut self, chain: crate::config::ChainConfig) -> Self {
        self.chain = Some(Arc::new(chain));
        self
    }

    /// Adds the Compute and Kubernetes clients (and the locator that uses them).
    #[must_use]
    pub fn with_clients(mut self, compute: Option<Compute>, kube: Option<Kube>) -> Self {
        if compute.is_some() || kube.is_some() {
            self.locator = Arc::new(ClusterLocator {
                kube: kube.clone(),
                compute: compute.clone(),
            });
        }
        self.compute = compute;
        self.kube = kube;
        self
    }

    /// Replaces the locator.
    #[must_use]
    pub fn with_locator(mut self, locator: Arc<dyn Locator>) -> Self {
        self.locator = locator;
        self
    }

    /// Connects to Pub/Sub only (the emulator when `PUBSUB_EMULATOR_HOST` is set): for the
    /// functions that only route events.
    ///
    /// # Errors
    /// [`SetupError::Bus`] when the client cannot be built.
    pub async fn connect(config: Config) -> Result<Self, SetupError> {
        let bus = PubSubBus::connect(&config.pubsub).await?;
        Ok(Self::new(config, Arc::new(bus)))
    }

    /// Connects to Pub/Sub, Compute Engine (`NODEWIRE_COMPUTE_ENDPOINT`, else Google with
    /// Application Default Credentials) and, when configured, the Kubernetes API: for the
    /// functions that read VMs or Nodes.
    ///
    /// # Errors
    /// [`SetupError`] when a client cannot be built.
    pub async fn connect_with_clients(config: Config) -> Result<Self, SetupError> {
        let bus = PubSubBus::connect(&config.pubsub).await?;
        let compute = Compute::new(
            &config.project,
            &ComputeEndpoint {
                url: config.compute_endpoint.clone(),
            },
            ComputePolicy::default(),
        )
        .await?;
        let kube = match &config.kube {
            Some(k) => Some(Kube::new(&kube_connection(k)?, KubePolicy::default()).await?),
            None => None,
        };
        Ok(Self::new(config, Arc::new(bus)).with_clients(Some(compute), kube))
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
