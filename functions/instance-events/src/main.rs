//! Cloud Run service `instance-events`: Compute Engine audit entries (instance inserted or
//! deleted) → the `bootstrap` or `decommission` step of that VM's chain.

use shared::{adapter, handlers::instance_events, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::router("instance-events").await?;
    let state = deps.clone();
    adapter::serve(deps, move |event| {
        let deps = state.clone();
        async move { instance_events::handle(event, &deps).await }
    })
    .await?;
    Ok(())
}
