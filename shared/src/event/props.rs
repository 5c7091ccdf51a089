//! Issue 10, item 6: no decoder panics, whatever it is given — arbitrary bytes, arbitrary JSON,
//! real payloads with any field replaced by any value, and deeply nested or oversized input.
//! (The libFuzzer targets in `fuzz/` search the same space far longer; this runs in CI.)

use proptest::prelude::*;
use serde_json::{Value, json};

use super::{Decode, InstanceEvent, NodeEvents, StepMessage};
use crate::testing::fixture_json;

/// Every decoder of outside input, on the same bytes. A panic fails the property.
fn decode_everything(bytes: &[u8]) {
    let _ = InstanceEvent::decode(bytes);
    let _ = NodeEvents::decode(bytes);
    let _ = StepMessage::decode(bytes);
    let _ = crate::sweep::SweepRequest::decode(bytes);
    let mut headers = http::HeaderMap::new();
    let _ = crate::adapter::parse_delivery(&headers, bytes);
    headers.insert(
        "content-type",
        http::HeaderValue::from_static("application/cloudevents+json"),
    );
    let _ = crate::adapter::parse_delivery(&headers, bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = crate::names::InstanceRef::from_provider_id(text);
        let _ = text.parse::<crate::names::Cidr>();
        let _ = crate::names::SubnetRef::from_link(text);
        let _ = crate::plan::Attempts::parse(
            text,
            1_800_000_000,
            &crate::plan::Budget::KUBELET_RESTARTS,
        );
        let _ =
            crate::plan::Attempts::parse(text, 1_800_000_000, &crate::plan::Budget::JOIN_TOKENS);
        let _ = crate::act::k8s::cluster_info_from_kubeconfig(text);
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        // Strings that look like what decoders read: names, CIDRs, providerIDs, log names.
        prop::sample::select(vec![
            "gce://p/z/n",
            "10.4.1.0/24",
            "projects/p/zones/us-central1-a/instances/vm",
            "projects/p/logs/cloudaudit.googleapis.com%2Factivity",
            "system:node:vm",
            "€😀\u{0}\u{202e}",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "kind",
                    "data",
                    "message",
                    "jsonPayload",
                    "protoPayload",
                    "items",
                    "resource",
                    "labels",
                    "logName",
                    "operation",
                    "spec",
                    "schema",
                    "instance",
                    "step",
                    "user",
                    "objectRef",
                    "requestObject",
                    "x",
                ])
                .prop_map(str::to_string),
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a path chosen by `pick` in `v` with `with`.
fn replace_somewhere(v: &mut Value, pick: usize, with: Value) {
    let mut paths: Vec<String> = Vec::new();
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        out.push(at.clone());
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    walk(x, format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    walk(v, String::new(), &mut paths);
    let path = &paths[pick % paths.len()];
    if let Some(slot) = v.pointer_mut(path) {
        *slot = with;
    }
}

fn fixtures() -> Vec<Value> {
    [
        "gce-insert-last.json",
        "gce-delete-first.json",
        "eventarc-auditlog-structured.json",
        "k8s-audit-node-create.json",
        "k8s-audit-node-podcidr-patch.json",
        "opsagent-k8s-audit-logentry.json",
        "pubsub-push-envelope.json",
        "logging-sink-pubsub-message.json",
    ]
    .iter()
    .map(|f| fixture_json(f))
    .chain([json!({
        "schema": "nodewire.step/v1", "step": "bootstrap",
        "instance": "projects/example-project/zones/us-central1-a/instances/vm-1",
        "chain": "c", "cause": {"source": "sweep"}
    })])
    .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_json(v in arb_json()) {
        decode_everything(v.to_string().as_bytes());
    }

    #[test]
    fn decoders_never_panic_on_real_payloads_with_a_field_replaced(
        which in 0usize..9, pick in any::<usize>(), with in arb_json()
    ) {
        let mut v = fixtures()[which % 9].clone();
        replace_somewhere(&mut v, pick, with);
        decode_everything(v.to_string().as_bytes());
    }
}

/// Deeply nested input is refused with an error (serde_json's recursion limit of 128), never a
/// stack overflow; an oversized string is handled and its error stays short.
#[test]
fn deep_and_oversized_payloads_are_refused_cleanly() {
    for depth in [200usize, 10_000, 100_000] {
        let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        decode_everything(deep.as_bytes());
        assert!(InstanceEvent::decode(deep.as_bytes()).is_err());
        assert!(NodeEvents::decode(deep.as_bytes()).is_err());
        assert!(StepMessage::decode(deep.as_bytes()).is_err());
        let nested_obj = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(NodeEvents::decode(nested_obj.as_bytes()).is_err());
        // Deep inside a real carrier (the Ops Agent's jsonPayload.message holds text that is
        // parsed again): refused too.
        let mut entry = fixture_json("opsagent-k8s-audit-logentry.json");
        entry["jsonPayload"] = json!({"message": deep});
        assert!(NodeEvents::decode(entry.to_string().as_bytes()).is_err());
    }
    let mut big = fixture_json("gce-insert-last.json");
    big["protoPayload"]["methodName"] = json!("é".repeat(400_000));
    let r = InstanceEvent::decode(big.to_string().as_bytes());
    assert!(
        matches!(&r, Ok(InstanceEvent::Ignored(why)) if why.len() < 400),
        "{:?}",
        r.map_err(|e| e.to_string().len())
    );
}
