//! Function `drift-sweep` (Cloud Scheduler, through an HTTP target or a Pub/Sub message): one
//! sweep per delivery; answers and logs the JSON report.

use crate::act::deps::ChainDeps;
use crate::adapter::{Classify, Handler, Outcome, PushEvent};
use crate::sweep::{self, SweepError, SweepRequest};

/// Why a sweep delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DriftSweepError {
    #[error(transparent)]
    Sweep(#[from] SweepError),
    #[error("serializing the sweep report failed")]
    Report(#[source] serde_json::Error),
}

impl Classify for DriftSweepError {
    fn is_retryable(&self) -> bool {
        match self {
            DriftSweepError::Sweep(e) => e.is_retryable(),
            DriftSweepError::Report(_) => false,
        }
    }
}

/// The adapter handler of `drift-sweep` over `deps`.
pub fn handler(deps: ChainDeps) -> impl Handler<SweepRequest> {
    move |event| {
        let deps = deps.clone();
        async move { handle(event, &deps).await }
    }
}

/// # Idempotency
/// The sweep writes nothing itself; the steps it publishes are idempotent.
///
/// # Errors
/// [`DriftSweepError`] when a list or a publish fails.
pub async fn handle(
    event: PushEvent<SweepRequest>,
    deps: &ChainDeps,
) -> Result<Outcome, DriftSweepError> {
    let report = sweep::run(deps, event.payload.dry_run, &event.meta.trace).await?;
    tracing::info!(
        drift = report.total(),
        steps = report.steps,
        vms = report.vms,
        nodes = report.nodes,
        dry_run = report.dry_run,
        duration_ms = report.duration_ms,
        "drift sweep done"
    );
    // Metadata mode: CSRs whose audit entry never reached node-events are decided here (the
    // kubelet is still waiting for them, up to kubeadm's TLS-bootstrap timeout). A failure
    // is logged, not the sweep's: node-events decides them on the next CSR's entry.
    if deps.chain.join_mode == crate::config::JoinMode::Metadata && !report.dry_run {
        match super::node_events::decide_bootstrap_csrs(&deps.kube).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(decided = n, "the sweep decided pending bootstrap CSRs"),
            Err(e) => tracing::warn!(error = %e, "deciding pending bootstrap CSRs failed"),
        }
    }
    let body = serde_json::to_value(&report).map_err(DriftSweepError::Report)?;
    Ok(Outcome::Report(body))
}
