//! Cloud Run service `finalize`: verifies the node is wired, removes the taint, revokes the token, clears the join metadata.
//! The handler is `nodewire::handlers::steps::handle` for this step.

use nodewire::{adapter, event::Step, handlers::steps, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain(Step::Finalize.as_str()).await?;
    adapter::serve(deps.base.clone(), steps::handler(Step::Finalize, deps)).await?;
    Ok(())
}
