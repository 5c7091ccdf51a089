//! Cloud Run service `release-alias`: gives the pod range back when a Node is deleted and its VM stays.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::ReleaseAlias.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::ReleaseAlias, deps)).await?;
    Ok(())
}
