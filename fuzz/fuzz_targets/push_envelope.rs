//! A Pub/Sub push envelope (or a Cloud Scheduler request) of any bytes: parsed or refused with
//! an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = http::HeaderMap::new();
    let (selector, body) = data.split_first().map_or((0, data), |(s, b)| (*s, b));
    headers.insert("content-type", http::HeaderValue::from_static("application/json"));
    if selector & 1 == 1 {
        headers.insert("x-cloudscheduler", http::HeaderValue::from_static("true"));
        headers.insert(
            "x-cloudscheduler-jobname",
            http::HeaderValue::from_static("nodewire-sweep"),
        );
    }
    let _ = nodewire::adapter::parse_delivery(&headers, body);
});
