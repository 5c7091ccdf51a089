//! Cloud Run service `assign-alias`: sets nic0's alias range to the Node's podCIDR.
//! The handler is `shared::handlers::steps::assign_alias`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::AssignAlias).await
}
