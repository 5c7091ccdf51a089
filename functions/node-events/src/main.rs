//! Cloud Run service `node-events`: Kubernetes API server audit events about Nodes
//! (registered, podCIDR set, deleted) → the `assign-alias` or `release-alias` step.

use shared::{adapter, config::Config, deps::Deps, handlers::node_events, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env_or_exit("node-events");
    telemetry::init(&config);
    let deps = Deps::connect(config).await?;
    adapter::serve(deps, node_events::handle).await?;
    Ok(())
}
