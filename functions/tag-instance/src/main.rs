//! Cloud Run service `tag-instance`: adds the node network tags to the VM.
//! The handler is `shared::handlers::steps::tag_instance`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    shared::handlers::steps::main(shared::event::Step::TagInstance).await
}
