//! A test function served by the real adapter, for the shutdown test: it sleeps for the number
//! of milliseconds in the message, then publishes to `{prefix}done`. Built only as a test
//! fixture; not deployed.

use std::time::Duration;

use nodewire::act::deps::Deps;
use nodewire::adapter::{self, Classify, Outcome, PushEvent};
use nodewire::bus::OutboundMessage;

#[derive(Debug, thiserror::Error)]
#[error("publishing the done message failed")]
struct SlowError(#[source] nodewire::bus::BusError);

impl Classify for SlowError {
    fn is_retryable(&self) -> bool {
        true
    }
}

async fn handle(event: PushEvent<bytes::Bytes>, deps: &Deps) -> Result<Outcome, SlowError> {
    let ms: u64 = std::str::from_utf8(&event.payload)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    tracing::info!(sleep_ms = ms, "slow handler started");
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let msg = OutboundMessage {
        data: event.payload.to_vec(),
        ..OutboundMessage::default()
    };
    deps.bus
        .publish(&deps.config.pubsub.topic("done"), msg)
        .await
        .map_err(SlowError)?;
    tracing::info!("slow handler finished");
    Ok(Outcome::Done)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let deps = nodewire::startup::router("slow-fn").await?;
    let state = deps.clone();
    adapter::serve(deps, move |event| {
        let deps = state.clone();
        async move { handle(event, &deps).await }
    })
    .await?;
    Ok(())
}
