//! Cloud Run service `join` (pull mode): a node VM proves itself with its instance identity
//! token and receives its JoinConfiguration (`POST /v1/join`), then reports its join
//! (`POST /v1/joined`), which publishes `assign-alias` at once. Plain HTTP, not a Pub/Sub
//! subscriber. The handler is `nodewire::handlers::join`.

use nodewire::{adapter, handlers::join, startup};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = startup::chain("join").await?;
    let app = join::router(deps.clone()).unwrap_or_else(|e| {
        eprintln!("join: {e}");
        std::process::exit(nodewire::config::EXIT_CONFIG);
    });
    let listener = adapter::bind(&deps.base).await?;
    adapter::serve_router(
        listener,
        deps.base.clone(),
        app,
        nodewire::shutdown::signal(),
    )
    .await?;
    Ok(())
}
