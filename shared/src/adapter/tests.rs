//! The adapter driven in-process with `oneshot`: envelope in, status and published messages out.

use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use http::{Request, StatusCode};
use tower::ServiceExt as _;

use super::*;
use crate::bus::InProcessBus;
use crate::event::StepMessage;
use crate::handlers::instance_events;

const DLQ: &str = "projects/example-project/topics/nodewire-dead-letter";

fn deps_with(extra: &[(&'static str, &'static str)]) -> (Deps, InProcessBus) {
    crate::testing::deps("test-fn", extra)
}

fn envelope(data: &[u8], publish_time: &str) -> String {
    serde_json::json!({
        "subscription": "projects/example-project/subscriptions/s",
        "message": {
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "messageId": "m-1",
            "publishTime": publish_time,
            "attributes": {"k": "v"}
        }
    })
    .to_string()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format")
}

fn post(body: impl Into<Body>) -> Request<Body> {
    Request::post("/")
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request")
}

use crate::testing::fixture_bytes;

#[derive(Debug, thiserror::Error)]
#[error("test failure ({0})")]
struct TestError(bool);
impl Classify for TestError {
    fn is_retryable(&self) -> bool {
        self.0
    }
}

async fn transient(_: PushEvent<bytes::Bytes>) -> Result<Outcome, TestError> {
    Err(TestError(true))
}
async fn permanent(_: PushEvent<bytes::Bytes>) -> Result<Outcome, TestError> {
    Err(TestError(false))
}
async fn panics(ev: PushEvent<bytes::Bytes>) -> Result<Outcome, TestError> {
    if &ev.payload[..] == b"boom" {
        panic!("handler exploded");
    }
    Ok(Outcome::Done)
}
async fn slow(_: PushEvent<bytes::Bytes>) -> Result<Outcome, TestError> {
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(Outcome::Done)
}

#[tokio::test]
async fn audit_entry_publishes_bootstrap() {
    let (deps, bus) = deps_with(&[]);
    let app = router(deps.clone(), instance_events::handler(deps.clone()));
    let body = fixture_bytes("pubsub-push-envelope.json");
    let resp = app.oneshot(post(body)).await.expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let out = bus.published_to("projects/example-project/topics/nodewire-bootstrap");
    assert_eq!(out.len(), 1);
    let step = StepMessage::decode(&out[0].message.data).expect("step");
    assert_eq!(step.instance.name(), "k8s-worker-1");
}

#[tokio::test]
async fn eventarc_binary_and_structured() {
    let (deps, bus) = deps_with(&[]);
    let app = router(deps.clone(), instance_events::handler(deps.clone()));
    let structured = fixture_bytes("eventarc-auditlog-structured.json");
    let resp = app
        .clone()
        .oneshot(
            Request::post("/")
                .header(
                    "content-type",
                    "application/cloudevents+json; charset=utf-8",
                )
                .body(Body::from(structured.clone()))
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let v: serde_json::Value = serde_json::from_slice(&structured).expect("json");
    let resp = app
        .oneshot(
            Request::post("/")
                .header("ce-specversion", "1.0")
                .header("ce-type", "google.cloud.audit.log.v1.written")
                .header("ce-id", "x-1")
                .header(
                    "ce-source",
                    "//cloudaudit.googleapis.com/projects/example-project/logs/activity",
                )
                .header("content-type", "application/json")
                .body(Body::from(v["data"].to_string()))
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        bus.published_to("projects/example-project/topics/nodewire-bootstrap")
            .len(),
        2
    );
}

#[tokio::test]
async fn not_a_delivery_is_400_and_publishes_nothing() {
    let (deps, bus) = deps_with(&[]);
    let app = router(deps.clone(), instance_events::handler(deps.clone()));
    for body in [
        "",
        "not json",
        "{\"message\": {\"data\": \"%%%\", \"messageId\": \"1\"}}",
    ] {
        let resp = app.clone().oneshot(post(body)).await.expect("response");
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    assert!(bus.published().is_empty());
}

#[tokio::test]
async fn body_over_the_cap_is_413() {
    let (deps, _bus) = deps_with(&[("NODEWIRE_MAX_BODY_BYTES", "2048")]);
    let app = router(deps.clone(), instance_events::handler(deps.clone()));
    let big = envelope(&vec![b'a'; 4096], &now());
    let resp = app.oneshot(post(big)).await.expect("response");
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn undecodable_payload_is_dead_lettered_once_and_acked() {
    let (deps, bus) = deps_with(&[]);
    let app = router(deps.clone(), instance_events::handler(deps.clone()));
    let resp = app
        .oneshot(post(envelope(b"{truncated", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dl = bus.published_to(DLQ);
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].message.data, b"{truncated");
    let attrs = &dl[0].message.attributes;
    assert!(
        attrs[dead_letter_attr::REASON].contains("undecodable"),
        "{attrs:?}"
    );
    assert_eq!(attrs[dead_letter_attr::SERVICE], "test-fn");
    assert_eq!(attrs[dead_letter_attr::MESSAGE_ID], "m-1");
    assert_eq!(
        attrs[dead_letter_attr::SUBSCRIPTION],
        "projects/example-project/subscriptions/s"
    );
    assert_eq!(attrs["k"], "v", "original attributes are kept");
    assert_eq!(bus.published().len(), 1);
}

#[tokio::test]
async fn transient_is_503_permanent_is_dead_lettered() {
    let (deps, bus) = deps_with(&[]);
    let resp = router(deps.clone(), transient)
        .oneshot(post(envelope(b"x", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(bus.published().is_empty());
    let resp = router(deps, permanent)
        .oneshot(post(envelope(b"x", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dl = bus.published_to(DLQ);
    assert_eq!(dl.len(), 1);
    assert_eq!(
        dl[0].message.attributes[dead_letter_attr::REASON],
        "test failure (false)"
    );
}

/// The answer was 204 and exactly one message went to the dead-letter topic; its reason.
fn dead_lettered_once(resp: &http::Response<Body>, bus: &InProcessBus) -> String {
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dl = bus.published_to(DLQ);
    assert_eq!(dl.len(), 1);
    dl[0].message.attributes[dead_letter_attr::REASON].clone()
}

#[tokio::test]
async fn transient_failure_of_an_old_message_is_dead_lettered() {
    let (deps, bus) = deps_with(&[("NODEWIRE_MAX_RETRY_AGE_SECS", "60")]);
    let resp = router(deps, transient)
        .oneshot(post(envelope(b"x", "2024-11-19T13:13:49.56Z")))
        .await
        .expect("response");
    assert!(dead_lettered_once(&resp, &bus).contains("still failing"));
}

/// Without a publish time the age of a failing message cannot be told: it is dead-lettered,
/// not retried without bound (issue 10, item 6).
#[tokio::test]
async fn a_transient_failure_without_a_publish_time_is_not_retried_for_ever() {
    let (deps, bus) = deps_with(&[]);
    let mut env: serde_json::Value = serde_json::from_str(&envelope(b"x", "")).expect("json");
    if let Some(m) = env["message"].as_object_mut() {
        m.remove("publishTime");
    }
    let resp = router(deps, transient)
        .oneshot(post(env.to_string()))
        .await
        .expect("response");
    assert!(dead_lettered_once(&resp, &bus).contains("no publish time"));
}

/// A message with Pub/Sub's maximum of 100 attributes still fits on the dead-letter topic
/// with the reason: some of its own are left out, and their number is said.
#[tokio::test]
async fn dead_lettering_keeps_within_the_attribute_limit() {
    let (deps, bus) = deps_with(&[]);
    let mut env: serde_json::Value = serde_json::from_str(&envelope(b"x", &now())).expect("json");
    let attrs: serde_json::Map<String, serde_json::Value> = (0..100)
        .map(|i| (format!("a{i:03}"), serde_json::json!("v")))
        .collect();
    env["message"]["attributes"] = serde_json::Value::Object(attrs);
    let resp = router(deps, permanent)
        .oneshot(post(env.to_string()))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dl = bus.published_to(DLQ);
    assert_eq!(dl.len(), 1);
    let a = &dl[0].message.attributes;
    assert!(a.len() <= 100, "{} attributes", a.len());
    assert_eq!(a[dead_letter_attr::REASON], "test failure (false)");
    assert_eq!(
        a[&format!("{}-attributes-dropped", dead_letter_attr::REASON)],
        "6"
    );
}

#[tokio::test]
async fn failed_dead_lettering_asks_for_redelivery() {
    let (deps, bus) = deps_with(&[]);
    bus.fail_topic(DLQ);
    let resp = router(deps, permanent)
        .oneshot(post(envelope(b"x", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Issue 10, item 6: a dead-letter topic that keeps failing does not make a message loop for
/// ever: past twice the retry bound it is acked and dropped (logged at ERROR).
#[tokio::test]
async fn dead_lettering_that_keeps_failing_is_bounded_too() {
    let (deps, bus) = deps_with(&[("NODEWIRE_MAX_RETRY_AGE_SECS", "60")]);
    bus.fail_topic(DLQ);
    let resp = router(deps, permanent)
        .oneshot(post(envelope(b"x", "2024-11-19T13:13:49.56Z")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

/// A payload that always panics is aged like any failure: dead-lettered once too old, or at
/// the delivery-attempt bound.
#[tokio::test]
async fn a_panic_that_keeps_happening_is_dead_lettered() {
    let (deps, bus) = deps_with(&[("NODEWIRE_MAX_RETRY_AGE_SECS", "60")]);
    let app = router(deps, panics);
    let resp = app
        .clone()
        .oneshot(post(envelope(b"boom", "2024-11-19T13:13:49.56Z")))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let mut env: serde_json::Value =
        serde_json::from_str(&envelope(b"boom", &now())).expect("json");
    env["deliveryAttempt"] = serde_json::json!(MAX_DELIVERY_ATTEMPTS);
    let resp = app.oneshot(post(env.to_string())).await.expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let dl = bus.published_to(DLQ);
    assert_eq!(dl.len(), 2);
    assert!(dl[0].message.attributes[dead_letter_attr::REASON].contains("panicked"));
    assert!(dl[1].message.attributes[dead_letter_attr::REASON].contains("delivery attempt"));
}

#[tokio::test]
async fn panic_is_500_and_the_server_keeps_serving() {
    let (deps, _bus) = deps_with(&[]);
    let app = router(deps, panics);
    let resp = app
        .clone()
        .oneshot(post(envelope(b"boom", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let resp = app
        .oneshot(post(envelope(b"fine", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

/// A payload type whose decoder panics: decoding runs inside the panic guard.
struct Exploding;
impl Decode for Exploding {
    fn decode(_: &[u8]) -> Result<Self, crate::event::DecodeError> {
        panic!("decoder exploded")
    }
}

#[tokio::test]
async fn a_panicking_decoder_is_500_not_a_dropped_connection() {
    let (deps, bus) = deps_with(&[]);
    let app = router(deps, |_: PushEvent<Exploding>| async {
        Ok::<_, TestError>(Outcome::Done)
    });
    let resp = app
        .oneshot(post(envelope(b"x", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    assert_eq!(&body[..], b"decoder exploded");
    assert!(bus.published().is_empty());
}

/// Non-ASCII text quoted by serde in a decoding error used to panic when the message was cut
/// at a byte index; now it is a permanent error: dead-lettered with the reason, acked.
#[tokio::test]
async fn non_ascii_in_a_wrongly_typed_field_is_dead_lettered() {
    let (deps, bus) = deps_with(&[]);
    let app = router(deps.clone(), instance_events::handler(deps.clone()));
    for pad in 0..3 {
        let mut entry: serde_json::Value =
            serde_json::from_slice(&fixture_bytes("gce-insert-last.json")).expect("fixture");
        entry["operation"]["last"] =
            serde_json::json!(format!("{}{}", "x".repeat(pad), "€".repeat(150)));
        let resp = app
            .clone()
            .oneshot(post(envelope(entry.to_string().as_bytes(), &now())))
            .await
            .expect("response");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "pad {pad}");
    }
    let dl = bus.published_to(DLQ);
    assert_eq!(dl.len(), 3);
    let reason = &dl[0].message.attributes[dead_letter_attr::REASON];
    assert!(reason.contains("invalid type"), "{reason}");
}

#[tokio::test]
async fn deadline_is_503() {
    let (deps, _bus) = deps_with(&[("NODEWIRE_REQUEST_TIMEOUT_SECS", "0.2")]);
    let started = std::time::Instant::now();
    let resp = router(deps, slow)
        .oneshot(post(envelope(b"x", &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn ignored_is_204_without_publishing() {
    let (deps, bus) = deps_with(&[]);
    let first = fixture_bytes("gce-insert-first.json");
    let resp = router(deps.clone(), instance_events::handler(deps.clone()))
        .oneshot(post(envelope(&first, &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(bus.published().is_empty());
}

#[tokio::test]
async fn healthz() {
    let (deps, _bus) = deps_with(&[]);
    let resp = router(deps, panics)
        .oneshot(Request::get("/healthz").body(Body::empty()).expect("req"))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_delivery_finish() {
    async fn two_secs(_: PushEvent<bytes::Bytes>, deps: &Deps) -> Result<Outcome, TestError> {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        deps.bus
            .publish(
                "projects/example-project/topics/done",
                crate::bus::OutboundMessage::default(),
            )
            .await
            .map_err(|_| TestError(true))?;
        Ok(Outcome::Done)
    }
    let (deps, bus) = deps_with(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let state = deps.clone();
    let handler = move |ev| {
        let deps = state.clone();
        async move { two_secs(ev, &deps).await }
    };
    let server = tokio::spawn(serve_on(listener, deps, handler, async move {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let req = client
        .post(format!("http://{addr}/"))
        .body(envelope(b"x", &now()))
        .send();
    let in_flight = tokio::spawn(req);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(());
    let resp = in_flight.await.expect("join").expect("response");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    server.await.expect("join").expect("clean exit");
    assert_eq!(
        bus.published_to("projects/example-project/topics/done")
            .len(),
        1
    );
    // After shutdown, nothing listens any more.
    assert!(client.post(format!("http://{addr}/")).send().await.is_err());
}

async fn reporting(ev: PushEvent<crate::sweep::SweepRequest>) -> Result<Outcome, TestError> {
    Ok(Outcome::Report(
        serde_json::json!({"dryRun": ev.payload.dry_run, "transport": format!("{:?}", ev.meta.transport)}),
    ))
}

#[tokio::test]
async fn scheduler_http_targets_and_reports() {
    let (deps, _bus) = deps_with(&[]);
    let app = router(deps, reporting);
    let resp = app
        .clone()
        .oneshot(
            Request::post("/")
                .header("x-cloudscheduler", "true")
                .header("x-cloudscheduler-jobname", "nodewire-sweep")
                .header("x-cloudscheduler-scheduletime", "2026-11-27T00:00:00Z")
                .body(Body::from(r#"{"dryRun": true}"#))
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "a report is answered 200 with its body"
    );
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["dryRun"], true);
    assert_eq!(v["transport"], "Scheduler");
    // An empty Scheduler body is a real sweep; the same handler also takes a Pub/Sub push.
    let resp = app
        .clone()
        .oneshot(
            Request::post("/")
                .header("x-cloudscheduler", "true")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .oneshot(post(envelope(br#"{"dryRun": false}"#, &now())))
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["transport"], "PubSubPush");
    assert_eq!(v["dryRun"], false);
}

/// The dead-letter metric's label names each way this module gives up, from the reasons it
/// really writes (not from copies of their text).
#[test]
fn every_give_up_has_its_reason_class() {
    let retry = || Verdict::Retry("compute unavailable".into());
    let class = |v: Verdict| match v {
        Verdict::Reject(r) => reason_class(&r),
        other => panic!("not given up: {other:?}"),
    };
    let attempts = PushMeta {
        delivery_attempt: Some(MAX_DELIVERY_ATTEMPTS),
        publish_time: Some(now()),
        ..PushMeta::default()
    };
    assert_eq!(
        class(give_up_if_too_old(
            retry(),
            &attempts,
            Duration::from_secs(3600)
        )),
        "attempts-exhausted"
    );
    let old = PushMeta {
        publish_time: Some("2020-01-01T00:00:00Z".into()),
        ..PushMeta::default()
    };
    assert_eq!(
        class(give_up_if_too_old(retry(), &old, Duration::from_secs(3600))),
        "retry-age-exhausted"
    );
    assert_eq!(
        class(give_up_if_too_old(
            retry(),
            &PushMeta::default(),
            Duration::from_secs(3600)
        )),
        "no-publish-time"
    );
    // A young message is retried, not classified.
    let young = PushMeta {
        publish_time: Some(now()),
        ..PushMeta::default()
    };
    assert!(matches!(
        give_up_if_too_old(retry(), &young, Duration::from_secs(3600)),
        Verdict::Retry(_)
    ));
    assert_eq!(
        reason_class("refused: the Node is another VM's"),
        "permanent"
    );
}
