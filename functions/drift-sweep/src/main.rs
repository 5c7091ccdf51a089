//! Cloud Run service `drift-sweep`: triggered by Cloud Scheduler; lists Nodes and VMs, finds
//! drift with the chain's planner and publishes the steps that heal it. Answers a JSON report.

use nodewire::{adapter, handlers::drift_sweep, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain("drift-sweep").await?;
    adapter::serve(deps.base.clone(), drift_sweep::handler(deps)).await?;
    Ok(())
}
