//! OBSERVE seam: which VM is behind a Node? Kubernetes audit events name the Node; the steps
//! are keyed by the VM. Events that carry `spec.providerID` answer it themselves; for the others
//! a [`Locator`] is asked (the Compute-backed one arrives with the Compute client).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::bus::BoxFuture;
use crate::names::InstanceRef;

/// Why a VM could not be located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    /// This process has no way to look VMs up.
    #[error("no VM locator is configured, and the event does not carry spec.providerID")]
    NotConfigured,
    /// The lookup failed in a way that may pass (API error, timeout).
    #[error("looking up the VM of node {node} failed: {reason}")]
    Lookup { node: String, reason: String },
}

impl LocateError {
    pub fn is_retryable(&self) -> bool {
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

/// A fixed table, for tests and the sandbox.
#[derive(Debug, Default)]
pub struct TableLocator {
    table: Mutex<BTreeMap<String, InstanceRef>>,
}

impl TableLocator {
    pub fn new(entries: impl IntoIterator<Item = InstanceRef>) -> Self {
        Self {
            table: Mutex::new(
                entries
                    .into_iter()
                    .map(|r| (r.name().to_string(), r))
                    .collect(),
            ),
        }
    }
}

impl Locator for TableLocator {
    fn locate<'a>(
        &'a self,
        node: &'a str,
    ) -> BoxFuture<'a, Result<Option<InstanceRef>, LocateError>> {
        let found = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}
