//! Cloud Run service `instance-events`: Compute Engine audit entries (instance inserted or
//! deleted) → the `bootstrap` or `decommission` step of that VM's chain.

use shared::{adapter, config::Config, deps::Deps, handlers::instance_events, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::from_env_or_exit("instance-events");
    telemetry::init(&config);
    let deps = Deps::connect(config).await?;
    adapter::serve(deps, instance_events::handle).await?;
    Ok(())
}
