//! The Pub/Sub path on the real emulator: audit entries published to a source topic are pushed
//! to function servers on loopback, which publish the next step on the next topic; transient
//! failures are redelivered; poison messages are dead-lettered exactly once; SIGTERM lets an
//! in-flight delivery finish.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use integration_tests::{
    PROJECT, config, emulator, pull_until, push_body, push_to, stop_pushing, topics_and_observers,
};
use nodewire::act::deps::Deps;
use nodewire::adapter::{Classify, Outcome, PushEvent, dead_letter_attr};
use nodewire::bus::OutboundMessage;
use nodewire::event::{Decode, Step, StepMessage};
use nodewire::handlers::{instance_events, node_events};
use nodewire::trace::TraceContext;

use nodewire::testing::fixture_json as fixture;

const SINK_ATTR: (&str, &str) = (
    "logging.googleapis.com/timestamp",
    "2024-11-19T13:13:47.971786Z",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_events_publishes_the_next_step_on_the_emulator() {
    let emu = emulator().await;
    topics_and_observers(
        &emu,
        &[
            "gce-audit",
            "nodewire-bootstrap",
            "nodewire-decommission",
            "nodewire-dead-letter",
        ],
        &[
            ("bootstrap-observer", "nodewire-bootstrap"),
            ("decommission-observer", "nodewire-decommission"),
            ("dlq-observer", "nodewire-dead-letter"),
        ],
    )
    .await;
    let f = integration_tests::serve_fn(
        config(&emu, "instance-events", &[]),
        instance_events::handler,
    )
    .await;
    push_to(&emu, "gce-audit-push", "gce-audit", &f).await;

    // The first entry of the operation is ignored; the last one starts the chain.
    let first = fixture("gce-insert-first.json").to_string();
    let last = fixture("gce-insert-last.json").to_string();
    emu.publish("gce-audit", first.as_bytes(), &[SINK_ATTR])
        .await
        .expect("publish");
    emu.publish("gce-audit", last.as_bytes(), &[SINK_ATTR])
        .await
        .expect("publish");

    let got = pull_until(&emu, "bootstrap-observer", 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1, "one bootstrap step");
    let m = &got[0];
    assert_eq!(m.attributes["step"], "bootstrap");
    assert_eq!(
        m.attributes["instance"],
        "projects/example-project/zones/us-central1-a/instances/k8s-worker-1"
    );
    assert_eq!(
        m.ordering_key.as_deref(),
        Some("example-project/us-central1-a/k8s-worker-1")
    );
    let tp = TraceContext::from_traceparent(&m.attributes["traceparent"])
        .expect("traceparent attribute");
    let step = StepMessage::decode(&m.data).expect("a valid step message");
    assert_eq!(step.step, Step::Bootstrap);
    assert_eq!(step.instance.name(), "k8s-worker-1");
    assert_eq!(step.instance_id.as_deref(), Some("2525602744967966726"));
    assert_eq!(step.chain, tp.trace_id(), "the chain id is the trace id");

    // A deletion's last entry → decommission.
    let mut del = fixture("gce-delete-first.json");
    del["operation"] =
        serde_json::json!({"id": "op-del", "producer": "compute.googleapis.com", "last": true});
    emu.publish("gce-audit", del.to_string().as_bytes(), &[SINK_ATTR])
        .await
        .expect("publish");
    let got = pull_until(&emu, "decommission-observer", 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes["step"], "decommission");

    // Nothing else was published anywhere.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        emu.pull("bootstrap-observer", 10)
            .await
            .expect("pull")
            .is_empty()
    );
    assert!(emu.pull("dlq-observer", 10).await.expect("pull").is_empty());
    stop_pushing(&emu, "gce-audit-push", f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_events_routes_registrations_on_the_emulator() {
    let emu = emulator().await;
    topics_and_observers(
        &emu,
        &[
            "k8s-audit",
            "nodewire-assign-alias",
            "nodewire-release-alias",
            "nodewire-dead-letter",
        ],
        &[("assign-observer", "nodewire-assign-alias")],
    )
    .await;
    // The VM is always located (a providerID in the event is only checked against it).
    let vm =
        nodewire::names::InstanceRef::new(PROJECT, "us-central1-a", "k8s-worker-1").expect("valid");
    let f = integration_tests::serve_fn(config(&emu, "node-events", &[]), move |d: Deps| {
        node_events::handler(
            d,
            std::sync::Arc::new(nodewire::testing::TableLocator::new([vm])),
            None,
        )
    })
    .await;
    push_to(&emu, "k8s-audit-push", "k8s-audit", &f).await;

    // Ops Agent LogEntry whose jsonPayload is a Request-level "create nodes" event: the
    // request object carries the providerID the kubelet registered with.
    let mut event = fixture("k8s-audit-node-create.json");
    event["level"] = serde_json::json!("Request");
    event["requestObject"] = serde_json::json!({
        "kind": "Node", "apiVersion": "v1", "metadata": {"name": "k8s-worker-1"},
        "spec": {"providerID": "gce://example-project/us-central1-a/k8s-worker-1"}
    });
    let mut entry = fixture("opsagent-k8s-audit-logentry.json");
    entry["jsonPayload"] = event;
    emu.publish("k8s-audit", entry.to_string().as_bytes(), &[])
        .await
        .expect("publish");

    let got = pull_until(&emu, "assign-observer", 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].attributes["step"], "assign-alias");
    assert_eq!(
        got[0].ordering_key.as_deref(),
        Some("example-project/us-central1-a/k8s-worker-1")
    );
    let step = StepMessage::decode(&got[0].data).expect("step");
    assert_eq!(step.node.as_deref(), Some("k8s-worker-1"));
    stop_pushing(&emu, "k8s-audit-push", f).await;
}

static ATTEMPTS: Mutex<Option<HashMap<String, u32>>> = Mutex::new(None);

#[derive(Debug, thiserror::Error)]
#[error("not yet (attempt {0})")]
struct NotYet(u32);
impl Classify for NotYet {
    fn is_retryable(&self) -> bool {
        true
    }
}

/// Fails transiently twice per message, then publishes to `flaky-done`.
async fn flaky(event: PushEvent<bytes::Bytes>, deps: &Deps) -> Result<Outcome, NotYet> {
    let n = {
        let mut guard = ATTEMPTS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let map = guard.get_or_insert_with(HashMap::new);
        let n = map.entry(event.meta.message_id.clone()).or_insert(0);
        *n += 1;
        *n
    };
    if n < 3 {
        return Err(NotYet(n));
    }
    deps.bus
        .publish(
            &format!("projects/{PROJECT}/topics/flaky-done"),
            OutboundMessage {
                data: event.payload.to_vec(),
                ..Default::default()
            },
        )
        .await
        .map_err(|_| NotYet(n))?;
    Ok(Outcome::Done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_leads_to_redelivery() {
    let emu = emulator().await;
    topics_and_observers(
        &emu,
        &["flaky-in", "flaky-done", "nodewire-dead-letter"],
        &[("done-observer", "flaky-done")],
    )
    .await;
    let f = integration_tests::serve_fn(config(&emu, "flaky", &[]), |d: Deps| {
        move |ev| {
            let d = d.clone();
            async move { flaky(ev, &d).await }
        }
    })
    .await;
    push_to(&emu, "flaky-push", "flaky-in", &f).await;
    let id = emu
        .publish("flaky-in", b"payload", &[])
        .await
        .expect("publish");
    let got = pull_until(&emu, "done-observer", 1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the message succeeded after redeliveries");
    assert_eq!(got[0].data, b"payload");
    let attempts = ATTEMPTS
        .lock()
        .expect("lock")
        .as_ref()
        .and_then(|m| m.get(&id).copied());
    assert_eq!(attempts, Some(3), "two 503s, then success");
    stop_pushing(&emu, "flaky-push", f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_dead_lettered_exactly_once() {
    let emu = emulator().await;
    topics_and_observers(
        &emu,
        &["gce-audit", "nodewire-bootstrap", "nodewire-dead-letter"],
        &[
            ("dlq-observer", "nodewire-dead-letter"),
            ("bootstrap-observer", "nodewire-bootstrap"),
        ],
    )
    .await;
    let f = integration_tests::serve_fn(
        config(&emu, "instance-events", &[]),
        instance_events::handler,
    )
    .await;
    push_to(&emu, "gce-audit-push", "gce-audit", &f).await;

    let poison = b"{\"protoPayload\": {\"serviceName\": \"compute.googleapis.com\"";
    let id = emu
        .publish("gce-audit", poison, &[("origin", "test")])
        .await
        .expect("publish");
    let got = pull_until(&emu, "dlq-observer", 1, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 1);
    let dl = &got[0];
    assert_eq!(dl.data, poison, "the original data is forwarded");
    assert_eq!(
        dl.attributes["origin"], "test",
        "original attributes are kept"
    );
    assert!(
        dl.attributes[dead_letter_attr::REASON].contains("undecodable"),
        "{:?}",
        dl.attributes
    );
    assert_eq!(dl.attributes[dead_letter_attr::MESSAGE_ID], id);
    assert_eq!(dl.attributes[dead_letter_attr::SERVICE], "instance-events");
    assert_eq!(
        dl.attributes[dead_letter_attr::SUBSCRIPTION],
        format!("projects/{PROJECT}/subscriptions/gce-audit-push")
    );
    // The emulator redelivers a nacked message after about 1 s; every delivery of this message
    // would dead-letter it again. Nothing more in 4 s means it was acked and not redelivered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        emu.pull("dlq-observer", 10).await.expect("pull").is_empty(),
        "dead-lettered once"
    );
    assert!(
        emu.pull("bootstrap-observer", 10)
            .await
            .expect("pull")
            .is_empty()
    );
    stop_pushing(&emu, "gce-audit-push", f).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_delivery_lets_it_finish() {
    let emu = emulator().await;
    topics_and_observers(
        &emu,
        &["slow-in", "nodewire-done", "nodewire-dead-letter"],
        &[("done-observer", "nodewire-done")],
    )
    .await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log_path = std::env::temp_dir().join(format!("nodewire-slow-fn-{port}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_slow-fn"))
        .env("PORT", port.to_string())
        .env("NODEWIRE_PROJECT", PROJECT)
        .env("NODEWIRE_PUSH_AUTH", "off")
        .env("PUBSUB_EMULATOR_HOST", emu.host())
        .env("LOG_FORMAT", "json")
        .env("NODEWIRE_SHUTDOWN_GRACE_SECS", "8")
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn slow-fn");
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !client
        .get(&health)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "slow-fn did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    emu.create_subscription(
        "slow-push",
        "slow-in",
        push_body(&format!("http://127.0.0.1:{port}/")),
    )
    .await
    .expect("push sub");
    emu.publish("slow-in", b"2500", &[]).await.expect("publish");
    // Wait until the handler is running, then send SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if log.contains("slow handler started") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the delivery never started; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = child.id().expect("pid").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("slow-fn exits within the grace period")
        .expect("wait");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(exit.success(), "exit status {exit}; log:\n{log}");
    assert!(log.contains("slow handler finished"), "{log}");
    assert!(log.contains("all deliveries finished"), "{log}");
    let got = pull_until(&emu, "done-observer", 1, Duration::from_secs(10)).await;
    assert_eq!(
        got.len(),
        1,
        "the in-flight delivery published its result; log:\n{log}"
    );
    assert_eq!(got[0].data, b"2500");
    // Every log line is Cloud Logging JSON.
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["severity"].is_string() && v["time"].is_string(), "{line}");
    }
    emu.delete_subscription("slow-push").await.expect("cleanup");
}
