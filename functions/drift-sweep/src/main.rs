//! Cloud Run service `drift-sweep`: triggered by Cloud Scheduler; lists Nodes and VMs, finds
//! drift with the chain's planner and publishes the steps that heal it. Answers a JSON report.

use shared::config::{ChainConfig, Config, EXIT_CONFIG};
use shared::{adapter, deps::Deps, handlers::drift_sweep, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env_or_exit("drift-sweep");
    let chain = ChainConfig::from_env_or_exit("drift-sweep");
    if config.kube.is_none() {
        eprintln!(
            "drift-sweep: configuration variable NODEWIRE_KUBECONFIG or NODEWIRE_KUBE_API_URL: is required"
        );
        std::process::exit(EXIT_CONFIG);
    }
    telemetry::init(&config);
    let deps = Deps::connect_with_clients(config).await?.with_chain(chain);
    adapter::serve(deps, drift_sweep::handle).await?;
    Ok(())
}
