//! Cloud Run service `decommission`: deletes the Node and tokens of a deleted VM.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::Decommission.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::Decommission, deps)).await?;
    Ok(())
}
