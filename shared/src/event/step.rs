//! Step messages: the versioned orders that chain one VM's functions through Pub/Sub.
//! Pure: no I/O.
//!
//! A step is an order to converge one aspect, not a record of what happened: its handler
//! re-reads the world before acting. The schema is explicit (`nodewire.step/v1`); a message
//! with any other version is refused, never guessed at. Unknown fields inside v1 are ignored so
//! that a newer sender can add optional fields.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{Decode, DecodeError};
use crate::names::{InstanceRef, echo, validate_node_name};

/// The only schema this build reads and writes.
pub const STEP_SCHEMA: &str = "nodewire.step/v1";

/// One step of a VM's chain; each has its own topic and its own function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Bootstrap,
    AssignAlias,
    TagInstance,
    ProviderId,
    Finalize,
    ReleaseAlias,
    Decommission,
}

impl Step {
    /// Every step, in chain order.
    pub const ALL: [Step; 7] = [
        Step::Bootstrap,
        Step::AssignAlias,
        Step::TagInstance,
        Step::ProviderId,
        Step::Finalize,
        Step::ReleaseAlias,
        Step::Decommission,
    ];

    /// The kebab-case name used in messages, attributes and topic names.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Bootstrap => "bootstrap",
            Step::AssignAlias => "assign-alias",
            Step::TagInstance => "tag-instance",
            Step::ProviderId => "provider-id",
            Step::Finalize => "finalize",
            Step::ReleaseAlias => "release-alias",
            Step::Decommission => "decommission",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Step {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Step::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| DecodeError::Shape(format!("unknown step {:?}", echo(s))))
    }
}

/// Where a chain (or a link of it) came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CauseSource {
    /// A Compute Engine audit entry (instance created/deleted).
    GceAudit,
    /// A Kubernetes API server audit event (node registered/podCIDR set/deleted).
    K8sAudit,
    /// The previous step of the chain.
    Step,
    /// The drift sweep.
    Sweep,
    /// An operator's `nodewire replay`.
    Replay,
    /// A node VM reported its join to the `join` service (pull mode).
    JoinReport,
}

/// Why a step was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub source: CauseSource,
    /// The id of what caused it: audit operation id, audit id, message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A step message, schema `nodewire.step/v1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepMessage {
    pub schema: String,
    pub step: Step,
    pub instance: InstanceRef,
    /// The VM's numeric id as a decimal string (ids exceed 2^53, so never a JSON number).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The Node's name when known (nodewire's Nodes are named after their VM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub cause: Cause,
    /// The chain id: the trace id of the delivery that started the chain.
    pub chain: String,
}

impl StepMessage {
    /// A v1 step message.
    pub fn new(step: Step, instance: InstanceRef, cause: Cause, chain: impl Into<String>) -> Self {
        Self {
            schema: STEP_SCHEMA.to_string(),
            step,
            instance,
            instance_id: None,
            node: None,
            cause,
            chain: chain.into(),
        }
    }

    /// The next link of this chain: same VM, node and chain id; caused by this step.
    pub fn next(&self, step: Step) -> Self {
        Self {
            schema: STEP_SCHEMA.to_string(),
            step,
            instance: self.instance.clone(),
            instance_id: self.instance_id.clone(),
            node: self.node.clone(),
            cause: Cause {
                source: CauseSource::Step,
                id: Some(self.step.as_str().to_string()),
            },
            chain: self.chain.clone(),
        }
    }

    /// Serializes to JSON bytes.
    ///
    /// # Errors
    /// The serializer's error (a struct of strings and enums does not fail, but an empty
    /// message must never be published if it ever did).
    pub fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    fn validate(&self) -> Result<(), DecodeError> {
        if let Some(node) = &self.node {
            validate_node_name(node).map_err(DecodeError::Invalid)?;
        }
        if let Some(id) = &self.instance_id
            && (id.is_empty() || id.len() > 20 || !id.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(DecodeError::Shape(format!(
                "instanceId {:?} is not a decimal number",
                echo(id)
            )));
        }
        let chain_ok = !self.chain.is_empty()
            && self.chain.len() <= 64
            && self
                .chain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !chain_ok {
            return Err(DecodeError::Shape(format!(
                "chain {:?} must be 1 to 64 letters, digits, '-' or '_'",
                echo(&self.chain)
            )));
        }
        if let Some(id) = &self.cause.id
            && id.len() > 256
        {
            return Err(DecodeError::Shape(
                "cause.id is longer than 256 bytes".into(),
            ));
        }
        Ok(())
    }
}

impl Decode for StepMessage {
    fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let value: serde_json::Value = super::parse_json(data, "step message")?;
        match value.get("schema") {
            Some(serde_json::Value::String(s)) if s == STEP_SCHEMA => {}
            Some(serde_json::Value::String(s)) => {
                return Err(DecodeError::Schema(format!(
                    "unsupported step schema {:?} (this build reads {STEP_SCHEMA})",
                    echo(s)
                )));
            }
            _ => {
                return Err(DecodeError::Schema(format!(
                    "step message has no \"schema\" (expected {STEP_SCHEMA})"
                )));
            }
        }
        let msg: StepMessage = serde_json::from_value(value)
            .map_err(|e| DecodeError::Json(format!("step message: {e}")))?;
        msg.validate()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> StepMessage {
        let mut m = StepMessage::new(
            Step::AssignAlias,
            InstanceRef::new("example-project", "us-central1-a", "k8s-worker-1").expect("valid"),
            Cause {
                source: CauseSource::K8sAudit,
                id: Some("7c1b0a9e".into()),
            },
            "4bf92f3577b34da6a3ce929d0e0e4736",
        );
        m.node = Some("k8s-worker-1".into());
        m.instance_id = Some("2525602744967966726".into());
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = m.to_bytes().expect("serializes");
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(v["schema"], "nodewire.step/v1");
        assert_eq!(v["step"], "assign-alias");
        assert_eq!(v["instance"]["zone"], "us-central1-a");
        assert_eq!(v["instanceId"], "2525602744967966726");
        assert_eq!(v["cause"]["source"], "k8s-audit");
        let back = StepMessage::decode(&bytes).expect("decodes");
        assert_eq!(back, m);
        // The design doc's example shape decodes.
        let doc = br#"{"schema":"nodewire.step/v1","step":"assign-alias","instance":{"project":"example-project","zone":"us-central1-a","name":"n1"},"node":"n1","cause":{"source":"step"},"chain":"abc","extra":1}"#;
        assert_eq!(
            StepMessage::decode(doc).expect("decodes").step,
            Step::AssignAlias
        );
    }

    #[test]
    fn next_keeps_chain() {
        let m = sample();
        let n = m.next(Step::TagInstance);
        assert_eq!(n.step, Step::TagInstance);
        assert_eq!(n.chain, m.chain);
        assert_eq!(n.instance, m.instance);
        assert_eq!(n.cause.source, CauseSource::Step);
    }

    #[test]
    fn steps_parse() {
        for s in Step::ALL {
            assert_eq!(s.as_str().parse::<Step>().expect("parses"), s);
            assert_eq!(serde_json::to_value(s).expect("ser"), json!(s.as_str()));
        }
        assert!("set-alias-ip".parse::<Step>().is_err());
    }

    #[test]
    fn refuses_unknown_schema_and_bad_fields() {
        let mut v = serde_json::to_value(sample()).expect("ser");
        v["schema"] = json!("nodewire.step/v2");
        let err = StepMessage::decode(v.to_string().as_bytes()).expect_err("v2");
        assert!(
            matches!(err, DecodeError::Schema(ref m) if m.contains("v2")),
            "{err}"
        );
        v.as_object_mut().expect("obj").remove("schema");
        assert!(matches!(
            StepMessage::decode(v.to_string().as_bytes()),
            Err(DecodeError::Schema(_))
        ));
        // The pre-schema sample in formats/ (pubsub-push-envelope-dlq-ordering.json) is refused.
        let legacy = br#"{"step":"set-alias-ip","instance":"projects/example-project/zones/us-central1-a/instances/k8s-worker-1","node":"k8s-worker-1","podCIDR":"10.4.1.0/24","attempt":1}"#;
        assert!(matches!(
            StepMessage::decode(legacy),
            Err(DecodeError::Schema(_))
        ));
        for (field, bad) in [
            ("step", json!("set-alias-ip")),
            ("node", json!("Bad_Node")),
            ("chain", json!("")),
            ("chain", json!("a/b")),
            ("instanceId", json!("12x")),
            (
                "instance",
                json!({"project": "example-project", "zone": "us-central1-a", "name": "../x"}),
            ),
            ("instance", json!("projects/p/zones/z/instances/n")),
        ] {
            let mut v = serde_json::to_value(sample()).expect("ser");
            v[field] = bad.clone();
            assert!(
                StepMessage::decode(v.to_string().as_bytes()).is_err(),
                "{field}={bad}"
            );
        }
        assert!(StepMessage::decode(b"\x00\xff").is_err());
    }
}
