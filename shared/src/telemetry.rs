//! Process setup: logging. One init per process. On Cloud Run every line is a JSON object in
//! Cloud Logging's structured format (`severity`, `message`, `time`,
//! `logging.googleapis.com/trace`, `…/spanId`, `…/sourceLocation`, `…/labels`), with the fields
//! of the enclosing spans (message id, subscription, delivery attempt) merged in. On a terminal,
//! or with `LOG_FORMAT=pretty`, lines are plain text. The filter comes from `RUST_LOG`
//! (default `info`).

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{Config, LogFormat};

/// Span field holding the full Cloud Logging trace name (`projects/P/traces/ID`).
pub const TRACE_FIELD: &str = "trace";
/// Span field holding the span id (16 hex digits).
pub const SPAN_ID_FIELD: &str = "span_id";

/// Formats events as Cloud Logging structured JSON lines.
#[derive(Debug, Clone, Default)]
pub struct CloudLoggingFormat {
    labels: BTreeMap<String, String>,
}

impl CloudLoggingFormat {
    /// `labels` go to `logging.googleapis.com/labels` on every line.
    pub fn new(labels: BTreeMap<String, String>) -> Self {
        Self { labels }
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), Value::from(value));
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut src = value.source();
        while let Some(s) = src {
            text.push_str(": ");
            text.push_str(&s.to_string());
            src = s.source();
        }
        self.0.insert(field.name().to_string(), Value::from(text));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), Value::from(format!("{value:?}")));
    }
}

impl<S, N> FormatEvent<S, N> for CloudLoggingFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(f) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&f.fields)
                {
                    fields.extend(m);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));

        let mut out = Map::new();
        out.insert("severity".into(), Value::from(severity(meta.level())));
        let message = fields.remove("message").unwrap_or(Value::from(""));
        out.insert("message".into(), message);
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        out.insert("time".into(), Value::from(now));
        if let Some(t) = fields.remove(TRACE_FIELD) {
            out.insert("logging.googleapis.com/trace".into(), t);
        }
        if let Some(s) = fields.remove(SPAN_ID_FIELD) {
            out.insert("logging.googleapis.com/spanId".into(), s);
        }
        if let (Some(file), Some(line)) = (meta.file(), meta.line()) {
            out.insert(
                "logging.googleapis.com/sourceLocation".into(),
                serde_json::json!({"file": file, "line": line.to_string(), "function": meta.target()}),
            );
        }
        if !self.labels.is_empty() {
            out.insert(
                "logging.googleapis.com/labels".into(),
                serde_json::to_value(&self.labels).unwrap_or_default(),
            );
        }
        out.insert("target".into(), Value::from(meta.target()));
        for (k, v) in fields {
            out.entry(k).or_insert(v);
        }
        let line = serde_json::to_string(&Value::Object(out)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

/// The labels every line carries: the service and, on Cloud Run, the revision.
pub fn labels_for(config: &Config) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([("service".to_string(), config.service.clone())]);
    if let Some(r) = &config.revision {
        labels.insert("revision".into(), r.clone());
    }
    labels
}

/// Installs the global subscriber writing to stdout. Safe to call twice (the second call does
/// nothing). Also routes panics through the log as ERROR lines.
pub fn init(config: &Config) {
    let json = match config.log_format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    if init_with_writer(json, labels_for(config), std::io::stdout) {
        route_panics_to_log();
    }
}

/// Replaces the panic hook with one that writes an ERROR log line (structured on Cloud Run).
pub fn route_panics_to_log() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".into());
        tracing::error!(panic = %message, %location, "panic");
    }));
}

/// Installs the global subscriber with a given writer (tests capture logs this way); false
/// when one was already installed.
pub fn init_with_writer<W>(json: bool, labels: BTreeMap<String, String>, writer: W) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    init_with_filter(json, labels, writer, "info")
}

/// Like [`init_with_writer`], with the filter used when `RUST_LOG` is unset.
pub fn init_with_filter<W>(
    json: bool,
    labels: BTreeMap<String, String>,
    writer: W,
    default_filter: &str,
) -> bool
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // One of the two layers is present: JSON for Cloud Logging, or plain lines.
    let (json_layer, plain_layer) = if json {
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(CloudLoggingFormat::new(labels))
            .with_writer(writer);
        (Some(layer), None)
    } else {
        let layer = tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(writer);
        (None, Some(layer))
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(json_layer)
        .with(plain_layer)
        .try_init()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_in_cloud_logging_shape() {
        let buf = Buf::default();
        let writer = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(CloudLoggingFormat::new(BTreeMap::from([(
                "service".to_string(),
                "instance-events".to_string(),
            )])))
            .with_writer(move || writer.clone());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "delivery",
                message_id = "42",
                subscription = "projects/p/subscriptions/s",
                trace = "projects/p/traces/4bf92f3577b34da6a3ce929d0e0e4736",
                span_id = "00f067aa0ba902b7"
            );
            let _g = span.enter();
            tracing::warn!(
                instance = "projects/p/zones/z/instances/n",
                attempts = 3u64,
                "retrying"
            );
        });
        let text = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let line: Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(line["severity"], "WARNING");
        assert_eq!(line["message"], "retrying");
        assert_eq!(
            line["logging.googleapis.com/trace"],
            "projects/p/traces/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(line["logging.googleapis.com/spanId"], "00f067aa0ba902b7");
        assert_eq!(
            line["logging.googleapis.com/labels"]["service"],
            "instance-events"
        );
        assert_eq!(line["message_id"], "42");
        assert_eq!(line["subscription"], "projects/p/subscriptions/s");
        assert_eq!(line["instance"], "projects/p/zones/z/instances/n");
        assert_eq!(line["attempts"], 3);
        assert!(line["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(line["logging.googleapis.com/sourceLocation"]["file"].is_string());
    }
}
