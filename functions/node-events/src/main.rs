//! Cloud Run service `node-events`: Kubernetes API server audit events about Nodes
//! (registered, podCIDR set, deleted) → the `assign-alias` or `release-alias` step.

use nodewire::{adapter, handlers::node_events, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Every Node's VM is located through the cluster and the VM list (a providerID in an
    // event is only checked against it).
    // In metadata mode the Kubernetes client also decides the kubelets' bootstrap CSRs.
    let (deps, locator, csrs) = startup::node_router("node-events").await?;
    adapter::serve(deps.clone(), node_events::handler(deps, locator, csrs)).await?;
    Ok(())
}
