//! Cloud Run service `bootstrap`: mints a join token and writes the JoinConfiguration into the VM's metadata.
//! The handler is `shared::handlers::steps::bootstrap`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::Bootstrap).await
}
