//! Cloud Run service `provider-id`: sets the Node's spec.providerID while it is empty.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::ProviderId.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::ProviderId, deps)).await?;
    Ok(())
}
