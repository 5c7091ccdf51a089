//! Issue 22: how the Pub/Sub emulator delivers to a push endpoint, measured against an
//! endpoint of our own (no nodewire code on the path): whether it honours a subscription's
//! `retryPolicy`, how many deliveries it keeps in flight per subscription, and whether it slows
//! down for an endpoint that answers 503. Pub/Sub documents the first ("Handle message
//! failures": redelivery after an exponential backoff between `minimumBackoff` and
//! `maximumBackoff`) and says of the others only that it "dynamically adjusts the rate of push
//! requests based on the rate at which it receives success responses" ("Push subscriptions",
//! workflow). The figures say which of the chain's delays at scale are the emulator's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::StatusCode;
use nodewire_bench::P;
use serde_json::{Value, json};
use sim::emulator::Emulator;

/// One delivery the endpoint saw.
#[derive(Debug, Clone)]
struct Seen {
    n: usize,
    at: Duration,
    answered: u16,
}

/// What the endpoint answers: 503 to a message's first `nacks` deliveries, then 204 after
/// holding the request for `hold`.
#[derive(Clone)]
struct Endpoint {
    t0: Instant,
    nacks: usize,
    hold: Duration,
    seen: Arc<Mutex<Vec<Seen>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

async fn push(State(ep): State<Endpoint>, body: axum::body::Bytes) -> StatusCode {
    let now = ep.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    ep.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = v
        .pointer("/message/attributes/n")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(usize::MAX);
    let earlier = ep
        .seen
        .lock()
        .map(|s| s.iter().filter(|x| x.n == n).count())
        .unwrap_or(0);
    let code = if earlier < ep.nacks {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        tokio::time::sleep(ep.hold).await;
        StatusCode::NO_CONTENT
    };
    if let Ok(mut s) = ep.seen.lock() {
        s.push(Seen {
            n,
            at: ep.t0.elapsed(),
            answered: code.as_u16(),
        });
    }
    ep.in_flight.fetch_sub(1, Ordering::SeqCst);
    code
}

/// Publishes `messages` at once to a fresh topic whose push subscription (`sub`) points at an
/// endpoint answering as `nacks`/`hold` say; waits until each was acknowledged (or `bound`).
async fn run(
    emu: &Emulator,
    name: &str,
    sub: Value,
    messages: usize,
    nacks: usize,
    hold: Duration,
    bound: Duration,
) -> anyhow::Result<(Vec<Seen>, usize)> {
    let ep = Endpoint {
        t0: Instant::now(),
        nacks,
        hold,
        seen: Arc::default(),
        in_flight: Arc::default(),
        max_in_flight: Arc::default(),
    };
    let app = axum::Router::new()
        .route("/", axum::routing::post(push))
        .with_state(ep.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    emu.create_topic(name).await?;
    let mut body = sub;
    body["pushConfig"] = json!({"pushEndpoint": format!("http://{addr}/")});
    emu.create_subscription(name, name, body).await?;
    for n in 0..messages {
        emu.publish(name, b"probe", &[("n", &n.to_string())])
            .await
            .context("publish")?;
    }
    let t = Instant::now();
    loop {
        let acked = ep
            .seen
            .lock()
            .map(|s| s.iter().filter(|x| x.answered == 204).count())
            .unwrap_or(0);
        if acked >= messages || t.elapsed() > bound {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    emu.delete_subscription(name).await?;
    server.abort();
    let seen = ep.seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((seen, ep.max_in_flight.load(Ordering::SeqCst)))
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The probe's report, as Markdown table rows.
pub async fn probe() -> anyhow::Result<()> {
    let emu = Emulator::start(P).await.context("the Pub/Sub emulator")?;
    let production = json!({
        "ackDeadlineSeconds": 30,
        "retryPolicy": {"minimumBackoff": "10s", "maximumBackoff": "600s"},
    });

    // 1. Redelivery of one message answered 503 three times, with production's retry policy.
    let (seen, _) = run(
        &emu,
        "probe-backoff",
        production.clone(),
        1,
        3,
        Duration::ZERO,
        Duration::from_secs(180),
    )
    .await?;
    let gaps: Vec<String> = seen
        .windows(2)
        .map(|w| format!("{:.2} s", secs(w[1].at.saturating_sub(w[0].at))))
        .collect();
    println!(
        "| 1 message, 503 three times, retryPolicy 10 s–600 s | deliveries {}, gaps {} |",
        seen.len(),
        gaps.join(", ")
    );

    // 2. Deliveries in flight: 100 messages, each held 1 s and acknowledged.
    let (seen, max) = run(
        &emu,
        "probe-window",
        production.clone(),
        100,
        0,
        Duration::from_secs(1),
        Duration::from_secs(300),
    )
    .await?;
    let last = seen.iter().map(|s| s.at).max().unwrap_or_default();
    println!(
        "| 100 messages, endpoint holds each 1 s | at most {max} in flight; all acknowledged after {:.2} s |",
        secs(last)
    );

    // 3. A burst of 20 messages each answered 503 once (a step waiting for RUNNING), then
    //    acknowledged at once.
    let (seen, max) = run(
        &emu,
        "probe-nacks",
        production,
        20,
        1,
        Duration::ZERO,
        Duration::from_secs(300),
    )
    .await?;
    let mut acked: Vec<Duration> = seen
        .iter()
        .filter(|s| s.answered == 204)
        .map(|s| s.at)
        .collect();
    acked.sort();
    let first: Vec<Duration> = (0..20)
        .filter_map(|n| seen.iter().find(|s| s.n == n).map(|s| s.at))
        .collect();
    println!(
        "| 20 messages, each 503 once, retryPolicy 10 s–600 s | first deliveries within {:.2} s; acknowledged: first {:.2} s, median {:.2} s, last {:.2} s; at most {max} in flight |",
        secs(first.iter().copied().max().unwrap_or_default()),
        secs(acked.first().copied().unwrap_or_default()),
        secs(acked.get(acked.len() / 2).copied().unwrap_or_default()),
        secs(acked.last().copied().unwrap_or_default()),
    );
    emu.stop();
    Ok(())
}
