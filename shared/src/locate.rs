//! OBSERVE seam: which VM is behind a Node? Kubernetes audit events name the Node; the steps
//! are keyed by the VM. A [`Locator`] answers it for every event (a providerID written in an
//! event is only checked against the answer, never believed): [`ClusterLocator`] in production (the Node's providerID, else the
//! project's VMs of that name), [`NoLocator`] in a process without clients. (The fixed-table
//! locator of the tests is in `testing`.)

use crate::bus::BoxFuture;
use crate::error::{Cause, Classify as _};
use crate::names::InstanceRef;

/// Why a VM could not be located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    /// This process has no way to look VMs up.
    #[error("no VM locator is configured")]
    NotConfigured,
    /// The lookup failed in a way that may pass (API error, timeout).
    #[error("looking up the VM of node {node} failed")]
    Lookup {
        node: String,
        #[source]
        source: Cause,
    },
    /// The lookup cannot succeed (several VMs of that name, a refused request).
    #[error("the VM of node {node} cannot be determined")]
    Failed {
        node: String,
        #[source]
        source: Cause,
    },
}

impl crate::error::Classify for LocateError {
    fn is_retryable(&self) -> bool {
        matches!(self, LocateError::Lookup { .. })
    }
}

/// Finds the VM a Node runs on.
pub trait Locator: Send + Sync + 'static {
    /// `Ok(None)` when no VM of that name exists (any more).
    ///
    /// # Errors
    /// [`LocateError`] when the question could not be answered.
    fn locate<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceRef>, LocateError>>;
}

/// The locator of a process that has no Compute client: always [`LocateError::NotConfigured`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoLocator;

impl Locator for NoLocator {
    fn locate<'a>(
        &'a self,
        _node: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceRef>, LocateError>> {
        Box::pin(std::future::ready(Err(LocateError::NotConfigured)))
    }
}

/// The production locator: the Node's `spec.providerID` when it names a GCE VM, else the
/// project's VMs of that name (`aggregatedList` with a name filter).
#[derive(Debug, Clone)]
pub struct ClusterLocator {
    pub kube: Option<crate::act::k8s::Kube>,
    pub compute: Option<crate::act::compute::Compute>,
}

impl Locator for ClusterLocator {
    fn locate<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceRef>, LocateError>> {
        Box::pin(async move {
            let err = |retryable: bool, source: Cause| {
                let node = node.to_string();
                if retryable {
                    LocateError::Lookup { node, source }
                } else {
                    LocateError::Failed { node, source }
                }
            };
            if let Some(kube) = &self.kube {
                let found = kube
                    .get_node(node)
                    .await
                    .map_err(|e| err(e.is_retryable(), Cause::new(e)))?;
                if let Some(r) = found
                    .and_then(|n| n.provider_id)
                    .and_then(|p| InstanceRef::from_provider_id(&p).ok().flatten())
                {
                    return Ok(Some(r));
                }
            }
            let Some(compute) = &self.compute else {
                return if self.kube.is_some() {
                    Ok(None)
                } else {
                    Err(LocateError::NotConfigured)
                };
            };
            if crate::names::validate_gce_name("node name", node).is_err() {
                return Ok(None); // no VM can carry this name
            }
            let listed = compute
                .list_instances(Some(&format!("name = \"{node}\"")))
                .await
                .map_err(|e| err(e.is_retryable(), Cause::new(e)))?;
            match listed.items.as_slice() {
                // Not found, but a zone could not be listed: the VM may be there (retry).
                [] if !listed.unreachable.is_empty() => Err(err(
                    true,
                    Cause::msg(format!(
                        "no VM named {node} in the zones that answered; unreachable: {}",
                        listed.unreachable.join(", ")
                    )),
                )),
                [] => Ok(None),
                [one] => Ok(Some(one.instance.clone())),
                many => Err(err(
                    false,
                    Cause::msg(format!(
                        "{} VMs are named {node} (in zones {})",
                        many.len(),
                        many.iter()
                            .map(|v| v.instance.zone().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                )),
            }
        })
    }
}
