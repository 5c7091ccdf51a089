//! Cloud Run service `assign-alias`: sets nic0's alias range to the Node's podCIDR.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::AssignAlias.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::AssignAlias, deps)).await?;
    Ok(())
}
