//! Cloud Run service `decommission`: deletes the Node and tokens of a deleted VM.
//! The handler is `shared::handlers::steps::decommission`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::Decommission).await
}
