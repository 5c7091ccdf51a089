//! Eventarc CloudEvents, binary (ce-* headers, fuzzed values) and structured
//! (`application/cloudevents+json` body): parsed or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (selector, rest) = data.split_first().map_or((0, data), |(s, b)| (*s, b));
    let mut headers = http::HeaderMap::new();
    if selector & 1 == 0 {
        headers.insert(
            "content-type",
            http::HeaderValue::from_static("application/cloudevents+json; charset=utf-8"),
        );
        let _ = nodewire::adapter::parse_delivery(&headers, rest);
        return;
    }
    // Binary mode: the first line is the ce-id, the second the ce-source, the rest the data.
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let id = parts.next().unwrap_or_default();
    let source = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    headers.insert("ce-specversion", http::HeaderValue::from_static("1.0"));
    headers.insert(
        "ce-type",
        http::HeaderValue::from_static("google.cloud.audit.log.v1.written"),
    );
    if let Ok(v) = http::HeaderValue::from_bytes(id) {
        headers.insert("ce-id", v);
    }
    if let Ok(v) = http::HeaderValue::from_bytes(source) {
        headers.insert("ce-source", v);
    }
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    let _ = nodewire::adapter::parse_delivery(&headers, body);
});
