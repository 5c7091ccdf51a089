//! Cloud Run service `tag-instance`: adds the node network tags to the VM.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::TagInstance.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::TagInstance, deps)).await?;
    Ok(())
}
