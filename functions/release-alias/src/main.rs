//! Cloud Run service `release-alias`: gives the pod range back when a Node is deleted and its VM stays.
//! The handler is `shared::handlers::steps::release_alias`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::ReleaseAlias).await
}
