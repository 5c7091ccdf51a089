//! Cloud Run service `drift-sweep`: triggered by Cloud Scheduler; lists Nodes and VMs, finds
//! drift with the chain's planner and publishes the steps that heal it. Answers a JSON report.

use shared::{adapter, handlers::drift_sweep, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain("drift-sweep").await?;
    let state = deps.clone();
    adapter::serve(deps.base, move |event| {
        let deps = state.clone();
        async move { drift_sweep::handle(event, &deps).await }
    })
    .await?;
    Ok(())
}
