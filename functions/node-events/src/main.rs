//! Cloud Run service `node-events`: Kubernetes API server audit events about Nodes
//! (registered, podCIDR set, deleted) → the `assign-alias` or `release-alias` step.

use shared::{adapter, config::Config, deps::Deps, handlers::node_events, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env_or_exit("node-events");
    telemetry::init(&config);
    // Events without spec.providerID are located through the Node and the VM list.
    let deps = Deps::connect_with_clients(config).await?;
    adapter::serve(deps, node_events::handle).await?;
    Ok(())
}
