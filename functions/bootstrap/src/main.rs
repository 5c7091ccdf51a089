//! Cloud Run service `bootstrap`: mints a join token and writes the JoinConfiguration into the VM's metadata.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::Bootstrap.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::Bootstrap, deps)).await?;
    Ok(())
}
