//! ARRIVE, wire side: the Pub/Sub push envelope and Eventarc CloudEvents (binary and
//! structured mode) → one [`PushMeta`]: the message's raw data and metadata; the adapter decodes the data into the
//! payload of a [`PushEvent`].
//! Pure: no I/O.

use std::collections::BTreeMap;

use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::names::echo;
use crate::trace::TraceContext;

/// The CloudEvent type Eventarc uses for a Pub/Sub message; its data is a push envelope.
const PUBSUB_CE_TYPE: &str = "google.cloud.pubsub.topic.v1.messagePublished";

/// How a delivery arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// A Pub/Sub push subscription (wrapped envelope).
    #[default]
    PubSubPush,
    /// Eventarc, CloudEvent binary mode (`ce-*` headers, data in the body).
    CloudEventBinary,
    /// Eventarc, CloudEvent structured mode (`application/cloudevents+json`).
    CloudEventStructured,
    /// A Cloud Scheduler HTTP target (`X-CloudScheduler` header): the body is the payload.
    Scheduler,
}

/// What the adapter knows about a delivery besides its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushMeta {
    pub message_id: String,
    /// Full subscription name for Pub/Sub pushes; the CloudEvent `source` for Eventarc.
    pub subscription: String,
    pub publish_time: Option<String>,
    pub attributes: BTreeMap<String, String>,
    /// Present only when the sender includes it (the emulator never does).
    pub ordering_key: Option<String>,
    /// Present only with a dead-letter policy on real Pub/Sub (the emulator never sends it).
    pub delivery_attempt: Option<u32>,
    pub trace: TraceContext,
    pub transport: Transport,
    /// The message data as received (base64-decoded), kept for dead-lettering.
    pub data: bytes::Bytes,
}

/// A typed event and its metadata: what a handler receives.
#[derive(Debug, Clone)]
pub struct PushEvent<T> {
    pub payload: T,
    pub meta: PushMeta,
}

impl<T> PushEvent<T> {
    /// An event built by hand, for tests and in-process callers.
    pub fn new(payload: T) -> Self {
        Self {
            payload,
            meta: PushMeta::default(),
        }
    }
}

/// A request that is not a delivery at all (no message to ack or dead-letter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Pub/Sub push or CloudEvent delivery: {0}")]
pub struct EnvelopeError(pub String);

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireEnvelope {
    message: Option<WireMessage>,
    subscription: Option<String>,
    #[serde(rename = "deliveryAttempt")]
    delivery_attempt: Option<u32>,
}

/// The emulator sends both camelCase and snake_case spellings of the same fields; serde
/// aliases would reject that as a duplicate, so both are separate optional fields.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct WireMessage {
    data: Option<String>,
    attributes: Option<BTreeMap<String, String>>,
    #[serde(rename = "messageId")]
    message_id_camel: Option<String>,
    #[serde(rename = "message_id")]
    message_id_snake: Option<String>,
    #[serde(rename = "publishTime")]
    publish_time_camel: Option<String>,
    #[serde(rename = "publish_time")]
    publish_time_snake: Option<String>,
    #[serde(rename = "orderingKey")]
    ordering_key_camel: Option<String>,
    #[serde(rename = "ordering_key")]
    ordering_key_snake: Option<String>,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

/// The trace of a delivery: the `traceparent` attribute our own publishers set (so a chain is
/// one trace), else the HTTP `traceparent`/`ce-traceparent`, else `X-Cloud-Trace-Context`,
/// else a new trace.
fn trace_of(headers: &HeaderMap, attributes: &BTreeMap<String, String>) -> TraceContext {
    attributes
        .get("traceparent")
        .and_then(|v| TraceContext::from_traceparent(v))
        .or_else(|| header(headers, "traceparent").and_then(TraceContext::from_traceparent))
        .or_else(|| header(headers, "ce-traceparent").and_then(TraceContext::from_traceparent))
        .or_else(|| {
            header(headers, "x-cloud-trace-context").and_then(TraceContext::from_cloud_trace)
        })
        .unwrap_or_else(TraceContext::new_root)
}

fn from_envelope(env: WireEnvelope, headers: &HeaderMap) -> Result<PushMeta, EnvelopeError> {
    let msg = env
        .message
        .ok_or_else(|| EnvelopeError("no \"message\" in the push body".into()))?;
    let data = match msg.data.as_deref() {
        None | Some("") => bytes::Bytes::new(),
        Some(b64) => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map(bytes::Bytes::from)
            .map_err(|e| EnvelopeError(format!("message.data is not base64: {e}")))?,
    };
    let message_id = msg
        .message_id_camel
        .or(msg.message_id_snake)
        .ok_or_else(|| EnvelopeError("message has no messageId".into()))?;
    let attributes = msg.attributes.unwrap_or_default();
    Ok(PushMeta {
        trace: trace_of(headers, &attributes),
        message_id,
        subscription: env.subscription.unwrap_or_default(),
        publish_time: msg.publish_time_camel.or(msg.publish_time_snake),
        ordering_key: msg
            .ordering_key_camel
            .or(msg.ordering_key_snake)
            .filter(|k| !k.is_empty()),
        delivery_attempt: env.delivery_attempt,
        attributes,
        transport: Transport::PubSubPush,
        data,
    })
}

fn parse_envelope(body: &[u8], headers: &HeaderMap) -> Result<PushMeta, EnvelopeError> {
    let env: WireEnvelope = serde_json::from_slice(body).map_err(|e| {
        let m = crate::text::shorten(&e.to_string(), crate::text::ERROR_MAX);
        EnvelopeError(format!("push body: {m}"))
    })?;
    from_envelope(env, headers)
}

/// Parses one HTTP delivery.
///
/// # Errors
/// [`EnvelopeError`] when the request is neither a Pub/Sub push nor a CloudEvent.
pub fn parse_delivery(headers: &HeaderMap, body: &[u8]) -> Result<PushMeta, EnvelopeError> {
    if header(headers, "x-cloudscheduler").is_some() {
        let job = header(headers, "x-cloudscheduler-jobname").unwrap_or("scheduler");
        let at = header(headers, "x-cloudscheduler-scheduletime").unwrap_or("");
        let attributes = BTreeMap::new();
        return Ok(PushMeta {
            trace: trace_of(headers, &attributes),
            message_id: format!("{}@{}", echo(job), echo(at)),
            subscription: format!("scheduler:{}", echo(job)),
            publish_time: Some(at.to_string()).filter(|t| !t.is_empty()),
            attributes,
            transport: Transport::Scheduler,
            data: bytes::Bytes::copy_from_slice(body),
            ..PushMeta::default()
        });
    }
    if let Some(ce_type) = header(headers, "ce-specversion").and(header(headers, "ce-type")) {
        return parse_binary_cloudevent(headers, ce_type, body);
    }
    let structured = header(headers, "content-type")
        .is_some_and(|ct| ct.starts_with("application/cloudevents+json"));
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        let m = crate::text::shorten(&e.to_string(), crate::text::ERROR_MAX);
        EnvelopeError(format!("body is not JSON: {m}"))
    })?;
    if structured || value.get("specversion").is_some() {
        return parse_structured_cloudevent(headers, value);
    }
    let env: WireEnvelope = serde_json::from_value(value).map_err(|e| {
        let m = crate::text::shorten(&e.to_string(), crate::text::ERROR_MAX);
        EnvelopeError(format!("push body: {m}"))
    })?;
    from_envelope(env, headers)
}

fn parse_binary_cloudevent(
    headers: &HeaderMap,
    ce_type: &str,
    body: &[u8],
) -> Result<PushMeta, EnvelopeError> {
    if ce_type == PUBSUB_CE_TYPE {
        let mut meta = parse_envelope(body, headers)?;
        meta.transport = Transport::CloudEventBinary;
        return Ok(meta);
    }
    let id = header(headers, "ce-id")
        .ok_or_else(|| EnvelopeError("binary CloudEvent without ce-id".into()))?;
    let attributes = BTreeMap::from([("ce-type".to_string(), ce_type.to_string())]);
    Ok(PushMeta {
        trace: trace_of(headers, &attributes),
        message_id: id.to_string(),
        subscription: header(headers, "ce-source").unwrap_or_default().to_string(),
        publish_time: header(headers, "ce-time").map(str::to_string),
        attributes,
        transport: Transport::CloudEventBinary,
        data: bytes::Bytes::copy_from_slice(body),
        ..PushMeta::default()
    })
}

fn parse_structured_cloudevent(headers: &HeaderMap, v: Value) -> Result<PushMeta, EnvelopeError> {
    let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let ce_type = field("type").ok_or_else(|| EnvelopeError("CloudEvent without type".into()))?;
    let id = field("id").ok_or_else(|| EnvelopeError("CloudEvent without id".into()))?;
    let data: bytes::Bytes = if let Some(b64) = v.get("data_base64").and_then(Value::as_str) {
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| EnvelopeError(format!("data_base64 is not base64: {e}")))?
            .into()
    } else {
        match v.get("data") {
            None | Some(Value::Null) => bytes::Bytes::new(),
            Some(Value::String(s)) => bytes::Bytes::from(s.clone().into_bytes()),
            Some(other) => serde_json::to_vec(other)
                .map_err(|e| EnvelopeError(e.to_string()))?
                .into(),
        }
    };
    if ce_type == PUBSUB_CE_TYPE {
        let mut meta = parse_envelope(&data, headers)?;
        meta.transport = Transport::CloudEventStructured;
        return Ok(meta);
    }
    let mut attributes = BTreeMap::from([("ce-type".to_string(), echo(&ce_type))]);
    if let Some(tp) = field("traceparent") {
        attributes.insert("traceparent".into(), tp);
    }
    Ok(PushMeta {
        trace: trace_of(headers, &attributes),
        message_id: id,
        subscription: field("source").unwrap_or_default(),
        publish_time: field("time"),
        attributes,
        transport: Transport::CloudEventStructured,
        data,
        ..PushMeta::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    use crate::testing::fixture_bytes;

    #[test]
    fn push_envelope_sample() {
        let meta = parse_delivery(
            &HeaderMap::new(),
            &fixture_bytes("pubsub-push-envelope.json"),
        )
        .expect("parses");
        assert_eq!(meta.message_id, "5187581549398349");
        assert_eq!(
            meta.subscription,
            "projects/example-project/subscriptions/gce-events-push"
        );
        assert_eq!(
            meta.publish_time.as_deref(),
            Some("2024-11-19T13:13:49.56Z")
        );
        assert_eq!(meta.transport, Transport::PubSubPush);
        let entry: Value = serde_json::from_slice(&meta.data).expect("data is the LogEntry");
        assert_eq!(entry["operation"]["last"], true);
        assert_eq!(meta.delivery_attempt, None);
    }

    #[test]
    fn push_envelope_with_ordering_and_attempt() {
        let meta = parse_delivery(
            &HeaderMap::new(),
            &fixture_bytes("pubsub-push-envelope-dlq-ordering.json"),
        )
        .expect("parses");
        assert_eq!(meta.ordering_key.as_deref(), Some("2525602744967966726"));
        assert_eq!(meta.delivery_attempt, Some(1));
        assert_eq!(
            meta.attributes.get("step").map(String::as_str),
            Some("set-alias-ip")
        );
    }

    #[test]
    fn emulator_shape_snake_case_only_and_escapes() {
        let body = br#"{"subscription":"projects\/test-project\/subscriptions\/s-basic-push","message":{"data":"eyJoZWxsbyI6IndvcmxkIn0=","publish_time":"2026-11-26T23:31:23.867Z","attributes":{},"message_id":"1"}}"#;
        let meta = parse_delivery(&HeaderMap::new(), body).expect("parses");
        assert_eq!(meta.message_id, "1");
        assert_eq!(
            meta.subscription,
            "projects/test-project/subscriptions/s-basic-push"
        );
        assert_eq!(&meta.data[..], br#"{"hello":"world"}"#);
    }

    #[test]
    fn trace_from_attribute_then_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let body = format!(
            r#"{{"subscription":"s","message":{{"data":"","messageId":"1","attributes":{{"traceparent":"{tp}"}}}}}}"#
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-cloud-trace-context",
            HeaderValue::from_static("105445aa7843bc8bf206b12000100000/1;o=1"),
        );
        let meta = parse_delivery(&headers, body.as_bytes()).expect("parses");
        assert_eq!(meta.trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let body = br#"{"subscription":"s","message":{"data":"","messageId":"1"}}"#;
        let meta = parse_delivery(&headers, body).expect("parses");
        assert_eq!(meta.trace.trace_id(), "105445aa7843bc8bf206b12000100000");
        headers.insert("traceparent", HeaderValue::from_static(tp));
        let meta = parse_delivery(&headers, body).expect("parses");
        assert_eq!(meta.trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn cloudevent_structured_sample() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "content-type",
            HeaderValue::from_static("application/cloudevents+json"),
        );
        let meta = parse_delivery(
            &headers,
            &fixture_bytes("eventarc-auditlog-structured.json"),
        )
        .expect("parses");
        assert_eq!(meta.transport, Transport::CloudEventStructured);
        assert!(
            meta.message_id
                .starts_with("projects/example-project/logs/")
        );
        let entry: Value = serde_json::from_slice(&meta.data).expect("data is the LogEntry");
        assert_eq!(
            entry["protoPayload"]["methodName"],
            "v1.compute.instances.insert"
        );
        // Without the content type, the specversion key is enough.
        let meta = parse_delivery(
            &HeaderMap::new(),
            &fixture_bytes("eventarc-auditlog-structured.json"),
        )
        .expect("parses");
        assert_eq!(meta.transport, Transport::CloudEventStructured);
    }

    #[test]
    fn cloudevent_binary_mode() {
        let structured: Value =
            serde_json::from_slice(&fixture_bytes("eventarc-auditlog-structured.json"))
                .expect("json");
        let body = serde_json::to_vec(&structured["data"]).expect("ser");
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-type", "google.cloud.audit.log.v1.written"),
            ("ce-id", "abc-1"),
            (
                "ce-source",
                "//cloudaudit.googleapis.com/projects/example-project/logs/activity",
            ),
            ("ce-time", "2024-11-19T13:13:48.651967398Z"),
            ("content-type", "application/json; charset=utf-8"),
        ] {
            headers.insert(k, HeaderValue::from_static(v));
        }
        let meta = parse_delivery(&headers, &body).expect("parses");
        assert_eq!(meta.transport, Transport::CloudEventBinary);
        assert_eq!(meta.message_id, "abc-1");
        assert_eq!(&meta.data[..], &body[..]);
        // A Pub/Sub message delivered by Eventarc carries the push envelope as its data.
        headers.insert("ce-type", HeaderValue::from_static(PUBSUB_CE_TYPE));
        let meta =
            parse_delivery(&headers, &fixture_bytes("pubsub-push-envelope.json")).expect("parses");
        assert_eq!(meta.message_id, "5187581549398349");
        assert_eq!(meta.transport, Transport::CloudEventBinary);
    }

    #[test]
    fn hostile_envelopes() {
        let h = HeaderMap::new();
        for bad in [
            &b""[..],
            b"not json",
            b"{\"message\": {\"data\": \"@@@\", \"messageId\": \"1\"}}",
            b"{\"message\": {\"data\": \"e30=\"}}",
            b"{\"subscription\": \"s\"}",
            b"{\"message\": 5}",
            b"{\"message\": {\"data\": 5, \"messageId\": \"1\"}}",
            b"{\"message\": {\"data\": \"e30=\", \"messageId\": \"1\"",
            b"[]",
            b"{\"specversion\": \"1.0\"}",
        ] {
            let err = parse_delivery(&h, bad).expect_err(&String::from_utf8_lossy(bad));
            assert!(err.to_string().len() < 400);
        }
    }
}
