//! Trace context: W3C `traceparent` and Cloud Run's `X-Cloud-Trace-Context`, so that one VM's
//! whole chain (every step message it causes) is one trace in Cloud Trace and one filter in
//! Cloud Logging. Pure: no I/O.

use std::fmt;

use rand::Rng;

/// A trace id, a span id and the sampled flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

impl Default for TraceContext {
    fn default() -> Self {
        Self::new_root()
    }
}

impl TraceContext {
    /// A fresh trace with a random id.
    pub fn new_root() -> Self {
        let mut rng = rand::rng();
        Self {
            trace_id: rng.random::<u128>().max(1),
            span_id: rng.random::<u64>().max(1),
            sampled: true,
        }
    }

    /// A new span in the same trace, for a message this delivery publishes.
    pub fn child(&self) -> Self {
        Self {
            span_id: rand::rng().random::<u64>().max(1),
            ..*self
        }
    }

    /// Parses a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`). Anything else, including
    /// all-zero ids, is `None`.
    pub fn from_traceparent(value: &str) -> Option<Self> {
        let parts: Vec<&str> = value.trim().split('-').collect();
        let [version, trace, span, flags] = parts.as_slice() else {
            return None;
        };
        if version.len() != 2 || *version == "ff" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        if flags.len() != 2
            || ![trace, span, flags]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// Parses `X-Cloud-Trace-Context: TRACE_ID/SPAN_ID;o=OPTIONS` (span id in decimal).
    pub fn from_cloud_trace(value: &str) -> Option<Self> {
        let (trace, rest) = value.trim().split_once('/')?;
        let (span, opts) = rest.split_once(';').unwrap_or((rest, ""));
        if trace.len() != 32
            || !trace.bytes().all(|b| b.is_ascii_hexdigit())
            || !span.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = span.parse::<u64>().ok().filter(|s| *s != 0)?;
        Some(Self {
            trace_id,
            span_id,
            sampled: opts.trim() != "o=0",
        })
    }

    /// 32 lowercase hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// 16 lowercase hex digits.
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }

    /// The W3C header value for this span.
    pub fn to_traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            self.trace_id(),
            self.span_id(),
            u8::from(self.sampled)
        )
    }

    /// Cloud Logging's `logging.googleapis.com/trace` value: `projects/P/traces/TRACE_ID`.
    pub fn logging_trace(&self, project: &str) -> String {
        format!("projects/{project}/traces/{}", self.trace_id())
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let v = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let t = TraceContext::from_traceparent(v).expect("valid");
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.span_id(), "00f067aa0ba902b7");
        assert!(t.sampled());
        assert_eq!(t.to_traceparent(), v);
        let c = t.child();
        assert_eq!(c.trace_id(), t.trace_id());
        assert_ne!(c.span_id(), t.span_id());
        assert_eq!(
            t.logging_trace("example-project"),
            "projects/example-project/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }

    #[test]
    fn traceparent_rejects_garbage() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::from_traceparent(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn cloud_trace_context() {
        let t = TraceContext::from_cloud_trace("105445aa7843bc8bf206b12000100000/1;o=1")
            .expect("valid");
        assert_eq!(t.trace_id(), "105445aa7843bc8bf206b12000100000");
        assert_eq!(t.span_id(), "0000000000000001");
        assert!(t.sampled());
        let t = TraceContext::from_cloud_trace("105445aa7843bc8bf206b12000100000/99;o=0")
            .expect("valid");
        assert!(!t.sampled());
        assert!(TraceContext::from_cloud_trace("105445aa7843bc8bf206b12000100000/1").is_some());
        assert!(TraceContext::from_cloud_trace("short/1;o=1").is_none());
        assert!(TraceContext::from_cloud_trace("105445aa7843bc8bf206b12000100000/x;o=1").is_none());
    }
}
