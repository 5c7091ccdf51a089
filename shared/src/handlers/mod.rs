//! The handlers of the functions. Each module has a plain `async fn handle` over a typed event and
//! the dependencies it uses, and a `handler(..)` constructor that returns it as an
//! [`adapter::Handler`](crate::adapter::Handler) (a closure owning what `handle` needs); the
//! binaries under `functions/` only pass one of them to the adapter.
//!
//! - [`instance_events`]: Compute Engine audit → `bootstrap` / `decommission`
//! - [`node_events`]: Kubernetes audit → `assign-alias` / `release-alias`
//! - [`steps`]: the seven step functions (one handler, parameterised by the step)
//! - [`drift_sweep`]: Cloud Scheduler → one sweep, answered with its report

pub mod drift_sweep;
pub mod instance_events;
pub mod join;
pub mod node_events;
pub mod steps;

use crate::adapter::Classify;
use crate::bus::BusError;
use crate::event::Step;
use crate::locate::LocateError;

/// Errors of the routing functions (the two that turn audit events into steps).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The step could not be published; redelivery will try again.
    #[error("publishing the {step} step for {instance} failed")]
    Publish {
        step: Step,
        instance: String,
        #[source]
        source: BusError,
    },
    /// The VM behind a Node could not be determined.
    #[error("locating the VM of node {node} failed")]
    Locate {
        node: String,
        #[source]
        source: LocateError,
    },
    /// Some events of a multi-event delivery were malformed; the others were routed.
    #[error("{count} audit event(s) of the delivery were refused: {detail}")]
    Refused { count: usize, detail: String },
    /// Deciding the pending kubelet CSRs (metadata mode) failed.
    #[error("deciding the kubelets' bootstrap CSRs failed")]
    Csr(#[source] crate::act::k8s::KubeError),
}

impl Classify for RouteError {
    fn is_retryable(&self) -> bool {
        match self {
            RouteError::Publish { source, .. } => source.is_retryable(),
            RouteError::Locate { source, .. } => source.is_retryable(),
            RouteError::Refused { .. } => false,
            RouteError::Csr(e) => crate::adapter::Classify::is_retryable(e),
        }
    }
}
