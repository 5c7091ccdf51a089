//! Cloud Run service `provider-id`: sets the Node's spec.providerID while it is empty.
//! The handler is `shared::handlers::steps::provider_id`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::ProviderId).await
}
