//! Cloud Run service `node-events`: Kubernetes API server audit events about Nodes
//! (registered, podCIDR set, deleted) → the `assign-alias` or `release-alias` step.

use nodewire::{adapter, handlers::node_events, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Events without spec.providerID are located through the Node and the VM list.
    let (deps, locator) = startup::node_router("node-events").await?;
    adapter::serve(deps.clone(), node_events::handler(deps, locator)).await?;
    Ok(())
}
