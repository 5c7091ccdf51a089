//! Cloud Run service `instance-events`: Compute Engine audit entries (instance inserted or
//! deleted) → the `bootstrap` or `decommission` step of that VM's chain.

use nodewire::{adapter, handlers::instance_events, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::router("instance-events").await?;
    adapter::serve(deps.clone(), instance_events::handler(deps)).await?;
    Ok(())
}
