//! The handlers of the functions, each a plain `async fn(PushEvent<T>, &Deps)`; the binaries
//! under `functions/` only wire one of them to the adapter.
//!
//! - [`instance_events`]: Compute Engine audit → `bootstrap` / `decommission`
//! - [`node_events`]: Kubernetes audit → `assign-alias` / `release-alias`

pub mod drift_sweep;
pub mod instance_events;
pub mod node_events;
pub mod steps;

use crate::adapter::Classify;
use crate::bus::BusError;
use crate::config::Config;
use crate::event::Step;
use crate::locate::LocateError;
use crate::names::InstanceRef;

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
}

impl Classify for RouteError {
    fn is_retryable(&self) -> bool {
        match self {
            RouteError::Publish { .. } => true,
            RouteError::Locate { source, .. } => source.is_retryable(),
            RouteError::Refused { .. } => false,
        }
    }
}

/// `None` when the VM is one nodewire manages; otherwise the reason it is not.
///
/// At this point only the project and the name prefix can be checked: the audit entry that
/// triggers a chain carries no labels or network, so the label/subnet part of the selector is
/// checked by `bootstrap`, which reads the VM.
pub fn not_ours(config: &Config, instance: &InstanceRef) -> Option<String> {
    if instance.project() != config.project {
        return Some(format!(
            "VM {instance} is in project {}, not the configured {}",
            instance.project(),
            config.project
        ));
    }
    if let Some(prefix) = &config.selector.name_prefix
        && !instance.name().starts_with(prefix.as_str())
    {
        return Some(format!(
            "VM {instance} does not match the name prefix {prefix:?}"
        ));
    }
    None
}
