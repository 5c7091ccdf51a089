//! Cloud Run service `finalize`: verifies the node is wired, removes the taint, revokes the token, clears the join metadata.
//! The handler is `shared::handlers::steps::finalize`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::Finalize).await
}
