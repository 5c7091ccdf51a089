//! `nodewire replay`: republish logged events, dead-lettered messages, or a step for one VM.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nodewire::bus::{Bus, OutboundMessage};
use nodewire::config::Config;
use nodewire::event::{Cause, CauseSource, Step, StepMessage};
use nodewire::names::InstanceRef;
use serde_json::Value;

/// Where a logged entry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Compute Engine audit → the `gce-audit` topic (instance-events).
    Compute,
    /// Kubernetes API server audit → the `k8s-audit` topic (node-events).
    Kubernetes,
}

/// Reads a replay file: one LogEntry, a JSON array of them (which is what
/// `gcloud logging read --format=json` prints), or JSON lines.
///
/// # Errors
/// When the file is not JSON of one of those shapes.
pub fn entries(text: &str) -> anyhow::Result<Vec<Value>> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        bail!("the file is empty");
    }
    match serde_json::from_str::<Value>(trimmed) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(v @ Value::Object(_)) => Ok(vec![v]),
        Ok(_) => bail!("expected a LogEntry object or an array of them"),
        Err(first) => {
            // JSON lines (one entry per line), as some exports write them.
            let mut out = Vec::new();
            for (i, line) in trimmed
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty())
            {
                let v: Value = serde_json::from_str(line).with_context(|| {
                    format!("not JSON ({first}); line {} is not JSON either", i + 1)
                })?;
                out.push(v);
            }
            Ok(out)
        }
    }
}

/// Which topic an entry belongs to, or why it belongs to none.
pub fn classify(entry: &Value) -> Result<Source, String> {
    let is_audit_event = |v: &Value| {
        matches!(
            v.get("kind").and_then(Value::as_str),
            Some("Event" | "EventList")
        ) && v
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_some_and(|a| a.starts_with("audit.k8s.io/"))
    };
    if let Some(p) = entry.get("protoPayload") {
        let service = p.get("serviceName").and_then(Value::as_str).unwrap_or("");
        let method = p.get("methodName").and_then(Value::as_str).unwrap_or("");
        if service == "compute.googleapis.com" {
            return Ok(Source::Compute);
        }
        if method.starts_with("io.k8s.") {
            return Ok(Source::Kubernetes);
        }
        return Err(format!(
            "an audit entry of {service:?} ({method:?}) is not a nodewire event"
        ));
    }
    if entry.get("jsonPayload").is_some_and(is_audit_event) || is_audit_event(entry) {
        return Ok(Source::Kubernetes);
    }
    Err("neither a Compute Engine nor a Kubernetes audit entry".into())
}

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReplaySummary {
    pub published: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
}

/// Republishes each entry to its source topic, wrapped as a Logging sink would (data = the
/// LogEntry JSON, attribute `logging.googleapis.com/timestamp`).
pub async fn from_file(
    bus: &dyn Bus,
    config: &Config,
    entries: &[Value],
    dry_run: bool,
) -> ReplaySummary {
    let mut s = ReplaySummary::default();
    for (i, e) in entries.iter().enumerate() {
        let label = e
            .get("insertId")
            .and_then(Value::as_str)
            .map_or_else(|| format!("entry {i}"), |id| format!("entry {i} ({id})"));
        let source = match classify(e) {
            Ok(s) => s,
            Err(why) => {
                s.skipped.push(format!("{label}: {why}"));
                continue;
            }
        };
        let topic = match source {
            Source::Compute => config.pubsub.gce_audit_topic.clone(),
            Source::Kubernetes => config.pubsub.k8s_audit_topic.clone(),
        };
        if dry_run {
            s.published.push(format!("{label} → {topic} (dry run)"));
            continue;
        }
        let ts = e
            .get("timestamp")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let data = match serde_json::to_vec(e) {
            Ok(d) => d,
            Err(err) => {
                s.failed
                    .push(format!("{label}: serializing the entry failed: {err}"));
                continue;
            }
        };
        let msg = OutboundMessage {
            data,
            attributes: BTreeMap::from([("logging.googleapis.com/timestamp".to_string(), ts)]),
            ordering_key: None,
        };
        match bus.publish(&topic, msg).await {
            Ok(id) => s
                .published
                .push(format!("{label} → {topic} (message {id})")),
            Err(err) => s.failed.push(format!("{label}: {err}")),
        }
    }
    s
}

/// The step to start for one VM: `--step`, or what the planner says is missing first.
pub fn step_message(instance: &str, step: Step) -> anyhow::Result<StepMessage> {
    let r: InstanceRef = instance
        .parse()
        .map_err(|e| anyhow::anyhow!("--instance: {e}"))?;
    let trace = nodewire::trace::TraceContext::new_root();
    let mut m = StepMessage::new(
        step,
        r.clone(),
        Cause {
            source: CauseSource::Replay,
            id: None,
        },
        trace.trace_id(),
    );
    m.node = Some(r.name().to_string());
    Ok(m)
}

/// A dead-lettered message as shown to the operator.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    pub reason: String,
    pub service: String,
    pub instance: String,
    pub source_subscription: String,
    pub chosen: bool,
    pub republished_to: Option<String>,
    /// Where it would go back to (judged from its content).
    pub destination: Option<String>,
    /// Why it cannot be republished.
    pub refused: Option<String>,
}

const DL_PREFIXES: [&str; 2] = ["nodewire-dead-letter-", "CloudPubSubDeadLetter"];

fn source_subscription(attrs: &HashMap<String, String>, project: &str) -> Option<String> {
    if let Some(s) = attrs
        .get(nodewire::adapter::dead_letter_attr::SUBSCRIPTION)
        .filter(|s| !s.is_empty())
    {
        return Some(s.clone());
    }
    let sub = attrs.get("CloudPubSubDeadLetterSourceSubscription")?;
    if sub.starts_with("projects/") {
        return Some(sub.clone());
    }
    let p = attrs
        .get("CloudPubSubDeadLetterSourceSubscriptionProject")
        .map_or(project, String::as_str);
    Some(format!("projects/{p}/subscriptions/{sub}"))
}

/// Pub/Sub's REST API, for the unary pull / acknowledge / modifyAckDeadline the dead-letter
/// review needs (the client library offers streaming pull only, whose acknowledgements are
/// sent in the background).
struct PubSubRest {
    base: String,
    http: reqwest::Client,
    credentials: Option<google_cloud_auth::credentials::Credentials>,
}

impl PubSubRest {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let (base, credentials) = match &config.pubsub.emulator_endpoint {
            Some(ep) => (ep.clone(), None),
            None => (
                "https://pubsub.googleapis.com".to_string(),
                Some(
                    google_cloud_auth::credentials::Builder::default()
                        .build()
                        .context("Application Default Credentials")?,
                ),
            ),
        };
        Ok(Self {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
            credentials,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.base));
        if let Some(c) = &self.credentials
            && let google_cloud_auth::credentials::CacheableResource::New { data, .. } =
                c.headers(http::Extensions::new()).await?
        {
            req = req.headers(data);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{method} {path}: HTTP {status}: {text}");
        }
        Ok(if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }
}

/// Where a dead-lettered message goes back to, judged from what it is — never from a topic or
/// subscription named in its attributes, which whoever published it chose (issue 10, item 8):
/// a step message to its step's topic, a Compute audit entry to the Compute audit topic, a
/// Kubernetes one to the Kubernetes audit topic. Only nodewire's configured topics.
///
/// # Errors
/// Why the message has no destination.
pub fn destination(config: &Config, data: &[u8]) -> Result<String, String> {
    use nodewire::event::Decode as _;
    if let Ok(step) = nodewire::event::StepMessage::decode(data) {
        return Ok(config.pubsub.topic(step.step.as_str()));
    }
    let entry: Value = serde_json::from_slice(data)
        .map_err(|_| "neither a step message nor an audit entry (not JSON)".to_string())?;
    match classify(&entry)? {
        Source::Compute => Ok(config.pubsub.gce_audit_topic.clone()),
        Source::Kubernetes => Ok(config.pubsub.k8s_audit_topic.clone()),
    }
}

/// Messages pulled (and acknowledged) per batch.
pub const BATCH: u32 = 100;

/// Pulls the dead-letter subscription in batches of [`BATCH`] until it is empty for `quiet` or
/// `max` messages were seen, shows why each message died, republishes the chosen ones to the
/// nodewire topic their content belongs to ([`destination`]; the source subscription in their
/// attributes is shown, never followed), acknowledges those batch by batch as soon as they are
/// republished (a stop half-way does not republish them twice), and makes the others available
/// again at once.
///
/// # Errors
/// When the subscription cannot be read.
#[allow(clippy::too_many_arguments)]
pub async fn dead_letters(
    config: &Config,
    bus: &dyn Bus,
    subscription: &str,
    filter: Option<&str>,
    all: bool,
    dry_run: bool,
    quiet: Duration,
    max: usize,
) -> anyhow::Result<Vec<DeadLetter>> {
    use base64::Engine as _;
    let sub_name = if subscription.starts_with("projects/") {
        subscription.to_string()
    } else {
        format!(
            "projects/{}/subscriptions/{subscription}",
            config.pubsub.project
        )
    };
    let rest = PubSubRest::new(config)?;
    let mut out = Vec::new();
    let mut kept: Vec<String> = Vec::new();
    let mut last_message = tokio::time::Instant::now();
    while out.len() < max {
        let want = u32::try_from(max - out.len()).unwrap_or(BATCH).min(BATCH);
        let v = rest
            .call(
                reqwest::Method::POST,
                &format!("{sub_name}:pull"),
                Some(serde_json::json!({"maxMessages": want, "returnImmediately": true})),
            )
            .await?;
        let received = v["receivedMessages"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if received.is_empty() {
            if last_message.elapsed() >= quiet {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        last_message = tokio::time::Instant::now();
        let mut keep: Vec<String> = Vec::new();
        let mut done: Vec<String> = Vec::new();
        for rm in received {
            let ack_id = rm["ackId"].as_str().unwrap_or_default().to_string();
            let m = &rm["message"];
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["data"].as_str().unwrap_or_default())
                .unwrap_or_default();
            let attrs: HashMap<String, String> = m["attributes"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let reason = attrs
                .get(nodewire::adapter::dead_letter_attr::REASON)
                .cloned()
                .or_else(|| {
                    attrs
                        .get("CloudPubSubDeadLetterSourceDeliveryCount")
                        .map(|n| format!("undeliverable after {n} attempts"))
                })
                .unwrap_or_else(|| "(no reason recorded)".into());
            let instance = attrs.get("instance").cloned().unwrap_or_default();
            let source = source_subscription(&attrs, &config.pubsub.project).unwrap_or_default();
            let data_text = String::from_utf8_lossy(&data).into_owned();
            let chosen = all
                || filter.is_some_and(|f| {
                    reason.contains(f) || instance.contains(f) || data_text.contains(f)
                });
            let mut dl = DeadLetter {
                message_id: m["messageId"].as_str().unwrap_or_default().to_string(),
                reason,
                service: attrs
                    .get(nodewire::adapter::dead_letter_attr::SERVICE)
                    .cloned()
                    .unwrap_or_default(),
                instance: instance.clone(),
                source_subscription: source.clone(),
                chosen,
                republished_to: None,
                destination: None,
                refused: None,
            };
            match destination(config, &data) {
                Ok(t) => dl.destination = Some(t),
                Err(why) => dl.refused = Some(why),
            }
            let Some(topic) = dl.destination.clone().filter(|_| chosen && !dry_run) else {
                keep.push(ack_id);
                out.push(dl);
                continue;
            };
            let attributes: BTreeMap<String, String> = attrs
                .into_iter()
                .filter(|(k, _)| !DL_PREFIXES.iter().any(|p| k.starts_with(p)))
                .collect();
            let ordering_key = instance
                .parse::<InstanceRef>()
                .ok()
                .map(|r| r.ordering_key());
            match bus
                .publish(
                    &topic,
                    OutboundMessage {
                        data,
                        attributes,
                        ordering_key,
                    },
                )
                .await
            {
                Ok(_) => {
                    done.push(ack_id);
                    dl.republished_to = Some(topic);
                }
                Err(e) => {
                    keep.push(ack_id);
                    tracing::warn!(error = %e, message_id = %dl.message_id, "republishing failed; left on the dead-letter subscription");
                }
            }
            out.push(dl);
        }
        // This batch's republished messages are acknowledged now, the others released.
        if !done.is_empty() {
            rest.call(
                reqwest::Method::POST,
                &format!("{sub_name}:acknowledge"),
                Some(serde_json::json!({"ackIds": done})),
            )
            .await?;
        }
        if !keep.is_empty() {
            // Released at the end of the review rather than now: released at once, the
            // same messages would be pulled again in this run. Extend them meanwhile.
            rest.call(
                reqwest::Method::POST,
                &format!("{sub_name}:modifyAckDeadline"),
                Some(serde_json::json!({"ackIds": keep, "ackDeadlineSeconds": 600})),
            )
            .await?;
            kept.extend(keep);
        }
    }
    if !kept.is_empty() {
        for chunk in kept.chunks(BATCH as usize) {
            rest.call(
                reqwest::Method::POST,
                &format!("{sub_name}:modifyAckDeadline"),
                Some(serde_json::json!({"ackIds": chunk, "ackDeadlineSeconds": 0})),
            )
            .await?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use nodewire::testing::fixture_json as fixture;

    #[test]
    fn file_shapes() {
        let one = fixture("gce-insert-last.json");
        assert_eq!(entries(&one.to_string()).expect("object").len(), 1);
        let arr = json!([one, fixture("opsagent-k8s-audit-logentry.json")]);
        assert_eq!(entries(&arr.to_string()).expect("array").len(), 2);
        let pretty = serde_json::to_string_pretty(&arr).expect("pretty");
        assert_eq!(entries(&pretty).expect("gcloud's pretty array").len(), 2);
        let lines = format!(
            "{}\n{}\n",
            fixture("gce-insert-last.json"),
            fixture("gce-delete-first.json")
        );
        assert_eq!(entries(&lines).expect("json lines").len(), 2);
        assert!(entries("").is_err());
        assert!(entries("5").is_err());
        assert!(entries("{not json").is_err());
    }

    #[test]
    fn sources() {
        assert_eq!(
            classify(&fixture("gce-insert-last.json")),
            Ok(Source::Compute)
        );
        assert_eq!(
            classify(&fixture("opsagent-k8s-audit-logentry.json")),
            Ok(Source::Kubernetes)
        );
        assert_eq!(
            classify(&fixture("k8s-audit-node-create.json")),
            Ok(Source::Kubernetes)
        );
        let gke = json!({"protoPayload": {"serviceName": "k8s.io", "methodName": "io.k8s.core.v1.nodes.create"}});
        assert_eq!(classify(&gke), Ok(Source::Kubernetes));
        assert!(
            classify(&json!({"protoPayload": {"serviceName": "storage.googleapis.com"}})).is_err()
        );
        assert!(classify(&json!({"textPayload": "hello"})).is_err());
    }

    #[test]
    fn dead_letter_sources() {
        let ours = HashMap::from([(
            "nodewire-dead-letter-subscription".to_string(),
            "projects/p/subscriptions/gce-audit-push".to_string(),
        )]);
        assert_eq!(
            source_subscription(&ours, "p").as_deref(),
            Some("projects/p/subscriptions/gce-audit-push")
        );
        let native = HashMap::from([
            (
                "CloudPubSubDeadLetterSourceSubscription".to_string(),
                "bootstrap-push".to_string(),
            ),
            (
                "CloudPubSubDeadLetterSourceSubscriptionProject".to_string(),
                "proj".to_string(),
            ),
        ]);
        assert_eq!(
            source_subscription(&native, "p").as_deref(),
            Some("projects/proj/subscriptions/bootstrap-push")
        );
        assert_eq!(source_subscription(&HashMap::new(), "p"), None);
    }
}
