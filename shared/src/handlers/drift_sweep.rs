//! Function `drift-sweep` (Cloud Scheduler, through an HTTP target or a Pub/Sub message): one
//! sweep per delivery; answers and logs the JSON report.

use crate::adapter::{Outcome, PushEvent};
use crate::deps::Deps;
use crate::sweep::{self, SweepError, SweepRequest};

/// # Idempotency
/// The sweep writes nothing itself; the steps it publishes are idempotent.
///
/// # Errors
/// [`SweepError`] when a list or a publish fails.
pub async fn handle(event: PushEvent<SweepRequest>, deps: &Deps) -> Result<Outcome, SweepError> {
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
    Ok(Outcome::Report(
        serde_json::to_value(&report).unwrap_or_default(),
    ))
}
