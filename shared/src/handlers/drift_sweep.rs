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
    let body = serde_json::to_value(&report).map_err(DriftSweepError::Report)?;
    Ok(Outcome::Report(body))
}
