//! Kubernetes API server audit events about Nodes → [`NodeEvent`]s. Pure: no I/O.
//!
//! Accepted carriers, detected by shape:
//! - a LogEntry whose `jsonPayload` is an `audit.k8s.io` Event (Ops Agent shipping the
//!   kube-apiserver audit file of a self-managed cluster);
//! - a LogEntry whose `protoPayload` is a Cloud Audit Log with
//!   `methodName = io.k8s.core.v1.nodes.*` (the GKE form);
//! - a bare audit `Event`;
//! - an audit `EventList` (the audit webhook's body): one delivery, many events.
//!
//! Only completed (`ResponseComplete`), successful requests on the `nodes` resource count, and
//! only by the principal that does that in a cluster (issue 10, item 2): a Node's registration
//! by its own kubelet (`system:node:NAME`), a podCIDR by the node IPAM controller
//! (kube-controller-manager's `node-controller` service account, or its own identity without
//! `--use-service-account-credentials`). A deletion counts whoever made it (the step it
//! starts re-reads that the Node is gone). Anything else is ignored with the reason. The log a
//! LogEntry came from is kept in [`NodeEvents::log_name`] for `node-events` to check against
//! the configured audit log. An Ops Agent entry whose line was not parsed into `jsonPayload`
//! (`jsonPayload.message` holding the JSON text) is read too.

use serde::Deserialize;
use serde_json::Value;

use super::logentry::LogEntry;
use super::{Decode, DecodeError};
use crate::names::{Cidr, InstanceRef, echo, validate_node_name};

/// What one audit event means to nodewire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A Node object was created (kubelet registered). `pod_cidr` is usually still empty.
    Registered(NodeChange),
    /// The node IPAM controller (or anyone) set `spec.podCIDR`.
    CidrAssigned(NodeChange),
    /// The Node object was deleted.
    Deleted(NodeChange),
    /// A CertificateSigningRequest was created with a bootstrap token (the kubelet's TLS
    /// bootstrap in metadata mode): `node-events` decides the pending ones (issue 20, item 2).
    /// Only a trigger: the CSRs are re-read, never taken from the entry.
    BootstrapCsr {
        /// The bootstrap token's id (`system:bootstrap:ID`).
        token_id: String,
        audit_id: Option<String>,
    },
    /// Not something nodewire acts on; the reason says why.
    Ignored(String),
}

/// The Node an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeChange {
    pub node: String,
    pub pod_cidr: Option<Cidr>,
    /// `spec.providerID` when the request carried it (kubelet registering with
    /// `--provider-id`, audit level Request or higher), parsed into the VM it names.
    pub instance: Option<InstanceRef>,
    /// `auditID`, or the LogEntry `insertId` for the GKE form: the cause of the chain.
    pub audit_id: Option<String>,
}

/// All the events of one delivery, and the ones refused with the reason (by position).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeEvents {
    pub events: Vec<NodeEvent>,
    pub rejected: Vec<(usize, DecodeError)>,
    /// `logName` of the LogEntry that carried the events; `None` for a bare `Event` or
    /// `EventList`.
    pub log_name: Option<String>,
}

/// Who may make each change count.
const IPAM_PRINCIPALS: [&str; 2] = [
    "system:serviceaccount:kube-system:node-controller",
    "system:kube-controller-manager",
];

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct AuditEvent {
    kind: Option<String>,
    #[serde(rename = "auditID")]
    audit_id: Option<String>,
    stage: Option<String>,
    verb: Option<String>,
    object_ref: Option<ObjectRef>,
    response_status: Option<ResponseStatus>,
    request_object: Option<Value>,
    response_object: Option<Value>,
    user: Option<UserInfo>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct UserInfo {
    username: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct ObjectRef {
    resource: Option<String>,
    name: Option<String>,
    api_group: Option<String>,
    subresource: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ResponseStatus {
    code: Option<i64>,
}

impl Decode for NodeEvents {
    fn decode(data: &[u8]) -> Result<Self, DecodeError> {
        let value: Value = super::parse_json(data, "Kubernetes audit event")?;
        Self::from_value(value)
    }
}

impl NodeEvents {
    fn single(r: Result<NodeEvent, DecodeError>) -> Result<Self, DecodeError> {
        r.map(|e| NodeEvents {
            events: vec![e],
            rejected: vec![],
            log_name: None,
        })
    }

    /// Dispatches on the carrier's shape: a LogEntry (its `jsonPayload` unwrapped, at most
    /// [`MAX_CARRIERS`] deep, each level moved, never copied), an `EventList` (at most
    /// [`MAX_EVENTS`] items), or one audit `Event`.
    ///
    /// # Errors
    /// [`DecodeError`] when the payload is a single event we would act on but is malformed, or
    /// exceeds the caps. Malformed items of an `EventList` are listed in
    /// [`NodeEvents::rejected`] instead.
    pub fn from_value(mut value: Value) -> Result<Self, DecodeError> {
        // The outermost carrier's log is the one Logging routed.
        let mut log_name: Option<Option<String>> = None;
        for _ in 0..=MAX_CARRIERS {
            let Value::Object(obj) = &mut value else {
                return Err(DecodeError::Shape(
                    "audit payload is not a JSON object".into(),
                ));
            };
            if !(obj.contains_key("protoPayload") || obj.contains_key("jsonPayload")) {
                let mut out = Self::from_event_value(&value)?;
                if let Some(l) = log_name {
                    out.log_name = l;
                }
                return Ok(out);
            }
            // Taken out of the entry before the rest is read: the payload is moved on, not
            // copied (a 1 MiB entry must not cost a copy per level).
            let payload = obj.remove("jsonPayload").filter(|p| !p.is_null());
            let entry: LogEntry = serde_json::from_value(value)
                .map_err(|e| DecodeError::Json(format!("LogEntry: {e}")))?;
            let outer = log_name
                .get_or_insert_with(|| entry.log_name.clone())
                .clone();
            match payload {
                Some(p) => value = unparsed_line(p)?,
                None => {
                    let mut out = Self::single(from_gke_entry(&entry))?;
                    out.log_name = outer;
                    return Ok(out);
                }
            }
        }
        Err(DecodeError::Shape(format!(
            "LogEntries nested more than {MAX_CARRIERS} deep"
        )))
    }

    /// An `EventList`, an `Event`, or something else (ignored).
    fn from_event_value(value: &Value) -> Result<Self, DecodeError> {
        let Value::Object(obj) = value else {
            return Err(DecodeError::Shape(
                "audit payload is not a JSON object".into(),
            ));
        };
        match obj.get("kind").and_then(Value::as_str) {
            Some("EventList") => {
                let items = match obj.get("items") {
                    Some(Value::Array(items)) => items,
                    None | Some(Value::Null) => return Ok(Self::default()),
                    Some(_) => {
                        return Err(DecodeError::Shape("EventList.items is not an array".into()));
                    }
                };
                if items.len() > MAX_EVENTS {
                    return Err(DecodeError::Shape(format!(
                        "EventList of {} items; at most {MAX_EVENTS} per entry",
                        items.len()
                    )));
                }
                let mut out = NodeEvents::default();
                for (i, item) in items.iter().enumerate() {
                    match from_audit_value(item) {
                        Ok(e) => out.events.push(e),
                        Err(err) => out.rejected.push((i, err)),
                    }
                }
                Ok(out)
            }
            Some("Event") => Self::single(from_audit_value(value)),
            other => Self::single(Ok(NodeEvent::Ignored(format!(
                "not a Kubernetes audit event (kind {:?})",
                other.map(echo)
            )))),
        }
    }
}

/// LogEntries carried inside one another at most (the Ops Agent's entry holds the audit
/// event: one level; a Pub/Sub message of a sink is that entry).
pub const MAX_CARRIERS: usize = 4;

/// Audit events in one entry at most (kube-apiserver's log backend writes one per line; its
/// webhook backend batches up to 400 by default, `--audit-webhook-batch-max-size`).
pub const MAX_EVENTS: usize = 1000;

/// An Ops Agent entry whose line was not parsed as JSON carries it as text in
/// `jsonPayload.message`; that text is the audit event.
fn unparsed_line(payload: Value) -> Result<Value, DecodeError> {
    match &payload {
        Value::Object(m) if !m.contains_key("kind") => match m.get("message") {
            Some(Value::String(line)) => serde_json::from_str(line).map_err(|e| {
                DecodeError::Json(format!(
                    "jsonPayload.message is not an audit event: {}",
                    crate::text::shorten(&e.to_string(), crate::text::ERROR_MAX)
                ))
            }),
            _ => Ok(payload),
        },
        _ => Ok(payload),
    }
}

fn from_audit_value(value: &Value) -> Result<NodeEvent, DecodeError> {
    // Read from the borrowed value: no copy of the event.
    let ev = AuditEvent::deserialize(value)
        .map_err(|e| DecodeError::Json(format!("audit Event: {e}")))?;
    if ev.kind.as_deref() != Some("Event") {
        return Ok(NodeEvent::Ignored(
            "EventList item is not an audit Event".into(),
        ));
    }
    let oref = ev.object_ref.unwrap_or_default();
    let resource = oref.resource.as_deref().unwrap_or("");
    if resource == "certificatesigningrequests"
        && oref.api_group.as_deref() == Some("certificates.k8s.io")
    {
        return Ok(bootstrap_csr(
            ev.stage.as_deref(),
            ev.verb.as_deref(),
            ev.response_status.and_then(|s| s.code),
            oref.subresource.as_deref(),
            ev.user.and_then(|u| u.username).as_deref(),
            ev.audit_id,
        ));
    }
    if resource != "nodes" || oref.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
        return Ok(NodeEvent::Ignored(format!(
            "audit event on resource {:?}, not core nodes",
            echo(resource)
        )));
    }
    let stage = ev.stage.as_deref().unwrap_or("");
    if stage != "ResponseComplete" {
        return Ok(NodeEvent::Ignored(format!(
            "stage {:?} is not ResponseComplete",
            echo(stage)
        )));
    }
    let code = ev.response_status.and_then(|s| s.code);
    if !code.is_some_and(|c| (200..300).contains(&c)) {
        return Ok(NodeEvent::Ignored(format!(
            "request did not succeed (response code {code:?})"
        )));
    }
    if let Some(sub) = oref.subresource.as_deref().filter(|s| !s.is_empty()) {
        return Ok(NodeEvent::Ignored(format!(
            "request on subresource {:?}",
            echo(sub)
        )));
    }
    let name = oref
        .name
        .or_else(|| object_name(ev.response_object.as_ref()))
        .or_else(|| object_name(ev.request_object.as_ref()));
    classify(
        ev.verb.as_deref().unwrap_or(""),
        name,
        ev.request_object.as_ref(),
        ev.audit_id,
        ev.user.and_then(|u| u.username).as_deref(),
    )
}

/// A CSR created by a bootstrap token (`system:bootstrap:` followed by the token id, six
/// lowercase letters or digits: k8s.io/cluster-bootstrap/token/api), completed and
/// successful; anything else about CSRs is ignored with the reason.
fn bootstrap_csr(
    stage: Option<&str>,
    verb: Option<&str>,
    code: Option<i64>,
    subresource: Option<&str>,
    user: Option<&str>,
    audit_id: Option<String>,
) -> NodeEvent {
    if stage != Some("ResponseComplete") {
        return NodeEvent::Ignored(format!(
            "CSR event at stage {:?}, not ResponseComplete",
            stage.map(echo)
        ));
    }
    if verb != Some("create") || subresource.is_some_and(|s| !s.is_empty()) {
        return NodeEvent::Ignored(format!(
            "CSR event {:?} is not a create of the main resource",
            verb.map(echo)
        ));
    }
    if !code.is_some_and(|c| (200..300).contains(&c)) {
        return NodeEvent::Ignored(format!(
            "CSR create did not succeed (response code {code:?})"
        ));
    }
    let token_id = user.and_then(|u| u.strip_prefix("system:bootstrap:"));
    match token_id {
        Some(id)
            if id.len() == 6
                && id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            NodeEvent::BootstrapCsr {
                token_id: id.to_string(),
                audit_id,
            }
        }
        _ => NodeEvent::Ignored(format!(
            "CSR created by {:?}, not by a bootstrap token",
            user.map(echo)
        )),
    }
}

fn from_gke_entry(entry: &LogEntry) -> Result<NodeEvent, DecodeError> {
    let Some(audit) = entry.proto_payload.as_ref() else {
        return Ok(NodeEvent::Ignored("LogEntry has no audit payload".into()));
    };
    let method = audit.method_name.as_deref().unwrap_or("");
    let Some(verb) = method.strip_prefix("io.k8s.core.v1.nodes.") else {
        return Ok(NodeEvent::Ignored(format!(
            "method {:?} is not io.k8s.core.v1.nodes.*",
            echo(method)
        )));
    };
    if verb.contains('.') {
        return Ok(NodeEvent::Ignored(format!(
            "method {:?} is on a subresource",
            echo(method)
        )));
    }
    if let Some(why) = entry.reports_failure() {
        return Ok(NodeEvent::Ignored(format!(
            "request did not succeed ({why})"
        )));
    }
    // resourceName: core/v1/nodes/NAME
    let name = audit
        .resource_name
        .as_deref()
        .and_then(|r| r.strip_prefix("core/v1/nodes/"))
        .map(str::to_string)
        .or_else(|| object_name(audit.request.as_ref()));
    let actor = audit
        .authentication_info
        .as_ref()
        .and_then(|a| a.principal_email.as_deref());
    classify(
        verb,
        name,
        audit.request.as_ref(),
        entry.insert_id.clone(),
        actor,
    )
}

fn object_name(obj: Option<&Value>) -> Option<String> {
    obj?.pointer("/metadata/name")?.as_str().map(str::to_string)
}

/// `spec.podCIDR`, else the first of `spec.podCIDRs`, of a request or response object.
fn pod_cidr(obj: Option<&Value>) -> Result<Option<Cidr>, DecodeError> {
    let Some(spec) = obj.and_then(|o| o.get("spec")) else {
        return Ok(None);
    };
    let raw = match spec.get("podCIDR") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => spec
            .get("podCIDRs")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str),
    };
    raw.map(|s| s.parse::<Cidr>().map_err(DecodeError::Invalid))
        .transpose()
}

/// `spec.providerID` of a request object, when it names a GCE VM (`gce://P/Z/N`).
fn provider_instance(obj: Option<&Value>) -> Result<Option<InstanceRef>, DecodeError> {
    let Some(pid) = obj
        .and_then(|o| o.pointer("/spec/providerID"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    // Another provider's id is not a VM nodewire can act on, but not malformed either.
    InstanceRef::from_provider_id(pid).map_err(|e| match e {
        crate::names::ProviderIdError::Invalid(n) => DecodeError::Invalid(n),
        shape @ crate::names::ProviderIdError::Shape(_) => DecodeError::Shape(shape.to_string()),
    })
}

fn classify(
    verb: &str,
    name: Option<String>,
    request: Option<&Value>,
    audit_id: Option<String>,
    actor: Option<&str>,
) -> Result<NodeEvent, DecodeError> {
    if !matches!(verb, "create" | "patch" | "update" | "delete") {
        return Ok(NodeEvent::Ignored(format!(
            "verb {:?} is not create/patch/update/delete",
            echo(verb)
        )));
    }
    let node = name.ok_or_else(|| DecodeError::Shape("the event names no Node".into()))?;
    validate_node_name(&node).map_err(DecodeError::Invalid)?;
    let cidr = pod_cidr(request)?;
    let instance = provider_instance(request)?;
    let change = NodeChange {
        node,
        pod_cidr: cidr,
        instance,
        audit_id,
    };
    let actor = actor.unwrap_or("");
    Ok(match verb {
        "create" if actor == format!("system:node:{}", change.node) => {
            NodeEvent::Registered(change)
        }
        "create" => NodeEvent::Ignored(format!(
            "Node {} was created by {:?}, not by its own kubelet",
            change.node,
            echo(actor)
        )),
        "delete" => NodeEvent::Deleted(change),
        _ if change.pod_cidr.is_none() => NodeEvent::Ignored(format!(
            "{verb} of Node {} does not set spec.podCIDR",
            change.node
        )),
        _ if IPAM_PRINCIPALS.contains(&actor) => NodeEvent::CidrAssigned(change),
        _ => NodeEvent::Ignored(format!(
            "the podCIDR of Node {} was set by {:?}, not by the node IPAM controller",
            change.node,
            echo(actor)
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fixture_json as fixture;
    use serde_json::json;

    fn decode(v: &Value) -> Result<NodeEvents, DecodeError> {
        NodeEvents::decode(v.to_string().as_bytes())
    }

    fn one(v: &Value) -> NodeEvent {
        let evs = decode(v).expect("decodes");
        assert_eq!(evs.events.len(), 1, "{evs:?}");
        assert!(evs.rejected.is_empty());
        evs.events.into_iter().next().expect("one event")
    }

    fn cidr(s: &str) -> Option<Cidr> {
        Some(s.parse().expect("valid cidr"))
    }

    #[test]
    fn bare_events_from_samples() {
        let ev = one(&fixture("k8s-audit-node-create.json"));
        assert_eq!(
            ev,
            NodeEvent::Registered(NodeChange {
                node: "k8s-worker-1".into(),
                pod_cidr: None,
                instance: None,
                audit_id: Some("1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b".into())
            })
        );
        let ev = one(&fixture("k8s-audit-node-podcidr-patch.json"));
        assert!(
            matches!(ev, NodeEvent::CidrAssigned(ref c) if c.node == "k8s-worker-1" && c.pod_cidr == cidr("10.4.1.0/24")),
            "{ev:?}"
        );
        let ev = one(&fixture("k8s-audit-node-delete.json"));
        assert!(
            matches!(ev, NodeEvent::Deleted(ref c) if c.node == "k8s-worker-1"),
            "{ev:?}"
        );
    }

    #[test]
    fn provider_id_in_request_level_create() {
        let mut e = fixture("k8s-audit-node-create.json");
        e["level"] = json!("Request");
        e["requestObject"] = json!({"kind": "Node", "apiVersion": "v1", "metadata": {"name": "k8s-worker-1"},
            "spec": {"providerID": "gce://example-project/us-central1-a/k8s-worker-1",
                     "taints": [{"key": "nodewire.io/unwired", "effect": "NoSchedule"}]}});
        let ev = one(&e);
        let NodeEvent::Registered(c) = ev else {
            panic!("{ev:?}")
        };
        assert_eq!(
            c.instance.expect("instance").to_string(),
            "projects/example-project/zones/us-central1-a/instances/k8s-worker-1"
        );
        e["requestObject"]["spec"]["providerID"] = json!("aws:///us-east-1a/i-0abc");
        assert!(matches!(
            one(&e),
            NodeEvent::Registered(NodeChange { instance: None, .. })
        ));
        e["requestObject"]["spec"]["providerID"] = json!("gce://example-project/../../x");
        assert!(decode(&e).is_err());
    }

    /// Metadata mode: a CSR created by a bootstrap token is a trigger (the kubelet's TLS
    /// bootstrap, at the Metadata level nodewire's audit policy gives CSR creates); other
    /// CSR events are not.
    #[test]
    fn bootstrap_token_csr_creates() {
        let csr = |user: &str, verb: &str, code: i64, stage: &str| {
            json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
                "auditID": "a-1", "stage": stage, "verb": verb,
                "requestURI": "/apis/certificates.k8s.io/v1/certificatesigningrequests",
                "user": {"username": user, "groups": ["system:bootstrappers"]},
                "objectRef": {"resource": "certificatesigningrequests",
                    "apiGroup": "certificates.k8s.io", "apiVersion": "v1"},
                "responseStatus": {"metadata": {}, "code": code}})
        };
        assert_eq!(
            one(&csr(
                "system:bootstrap:abc123",
                "create",
                201,
                "ResponseComplete"
            )),
            NodeEvent::BootstrapCsr {
                token_id: "abc123".into(),
                audit_id: Some("a-1".into())
            }
        );
        for (user, verb, code, stage) in [
            // A Node renewing its own certificate: kube-controller-manager's selfnodeclient.
            ("system:node:k8s-a", "create", 201, "ResponseComplete"),
            ("system:bootstrap:ABC123", "create", 201, "ResponseComplete"),
            ("system:bootstrap:abc123", "create", 403, "ResponseComplete"),
            ("system:bootstrap:abc123", "create", 201, "ResponseStarted"),
            ("system:bootstrap:abc123", "get", 200, "ResponseComplete"),
        ] {
            let ev = one(&csr(user, verb, code, stage));
            assert!(matches!(ev, NodeEvent::Ignored(_)), "{user} {verb}: {ev:?}");
        }
        // CSRs of another group are not certificates.k8s.io's.
        let mut other = csr("system:bootstrap:abc123", "create", 201, "ResponseComplete");
        other["objectRef"]["apiGroup"] = json!("example.com");
        assert!(matches!(one(&other), NodeEvent::Ignored(_)));
    }

    #[test]
    fn ops_agent_logentry() {
        let ev = one(&fixture("opsagent-k8s-audit-logentry.json"));
        assert!(
            matches!(ev, NodeEvent::CidrAssigned(ref c) if c.pod_cidr == cidr("10.4.1.0/24")),
            "{ev:?}"
        );
    }

    #[test]
    fn gke_form() {
        let entry_by = |who: &str, method: &str, request: Value, status: Value| {
            json!({
                "insertId": "abc123",
                "logName": "projects/example-project/logs/cloudaudit.googleapis.com%2Factivity",
                "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "c", "location": "us-central1", "project_id": "example-project"}},
                "protoPayload": {
                    "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                    "serviceName": "k8s.io",
                    "methodName": method,
                    "resourceName": "core/v1/nodes/k8s-worker-1",
                    "authenticationInfo": {"principalEmail": who},
                    "request": request,
                    "status": status
                }
            })
        };
        let entry = |method: &str, request: Value, status: Value| {
            let who = if method.ends_with(".create") {
                "system:node:k8s-worker-1"
            } else {
                "system:serviceaccount:kube-system:node-controller"
            };
            entry_by(who, method, request, status)
        };
        // Registration by anyone but the Node's own kubelet does not count.
        let ev = one(&entry_by(
            "kubernetes-admin",
            "io.k8s.core.v1.nodes.create",
            json!({"metadata": {"name": "k8s-worker-1"}}),
            json!({}),
        ));
        assert!(matches!(ev, NodeEvent::Ignored(_)), "{ev:?}");
        let ev = one(&entry(
            "io.k8s.core.v1.nodes.create",
            json!({"metadata": {"name": "k8s-worker-1"}}),
            json!({}),
        ));
        assert!(
            matches!(ev, NodeEvent::Registered(ref c) if c.node == "k8s-worker-1" && c.audit_id.as_deref() == Some("abc123")),
            "{ev:?}"
        );
        let ev = one(&entry(
            "io.k8s.core.v1.nodes.patch",
            json!({"spec": {"podCIDR": "10.4.2.0/24"}}),
            json!({"code": 0}),
        ));
        assert!(
            matches!(ev, NodeEvent::CidrAssigned(ref c) if c.pod_cidr == cidr("10.4.2.0/24")),
            "{ev:?}"
        );
        let ev = one(&entry("io.k8s.core.v1.nodes.delete", json!({}), json!({})));
        assert!(matches!(ev, NodeEvent::Deleted(_)), "{ev:?}");
        let ev = one(&entry(
            "io.k8s.core.v1.nodes.status.patch",
            json!({}),
            json!({}),
        ));
        assert!(matches!(ev, NodeEvent::Ignored(_)), "{ev:?}");
        let ev = one(&entry(
            "io.k8s.core.v1.nodes.delete",
            json!({}),
            json!({"code": 7, "message": "forbidden"}),
        ));
        assert!(
            matches!(ev, NodeEvent::Ignored(ref r) if r.contains("forbidden")),
            "{ev:?}"
        );
        let ev = one(&entry("io.k8s.core.v1.pods.create", json!({}), json!({})));
        assert!(matches!(ev, NodeEvent::Ignored(_)), "{ev:?}");
    }

    #[test]
    fn event_list_many_events_and_rejections() {
        let mut bad = fixture("k8s-audit-node-create.json");
        bad["objectRef"]["name"] = json!("Bad/Name");
        let list = json!({
            "kind": "EventList",
            "apiVersion": "audit.k8s.io/v1",
            "items": [
                fixture("k8s-audit-node-create.json"),
                fixture("k8s-audit-node-podcidr-patch.json"),
                bad,
                fixture("k8s-audit-node-delete.json"),
            ]
        });
        let evs = decode(&list).expect("decodes");
        assert_eq!(evs.events.len(), 3);
        assert!(matches!(evs.events[0], NodeEvent::Registered(_)));
        assert!(matches!(evs.events[1], NodeEvent::CidrAssigned(_)));
        assert!(matches!(evs.events[2], NodeEvent::Deleted(_)));
        assert_eq!(evs.rejected.len(), 1);
        assert_eq!(evs.rejected[0].0, 2);
        assert!(
            decode(&json!({"kind": "EventList", "items": []}))
                .expect("empty")
                .events
                .is_empty()
        );
        assert!(decode(&json!({"kind": "EventList", "items": 5})).is_err());
    }

    /// Issue 10, item 2: an audit entry counts only when it names the principal that makes
    /// such a change in a cluster. The audit log's entries can be forged by whatever may write
    /// that log; a forged one must at least name the right actor, and even then it only starts
    /// a step that re-reads the Node and the VM.
    #[test]
    fn only_the_principal_that_makes_a_change_counts() {
        let create = fixture("k8s-audit-node-create.json");
        assert!(matches!(one(&create), NodeEvent::Registered(_)));
        for who in [
            "kubernetes-admin",
            "system:node:k8s-worker-2",
            "system:serviceaccount:default:evil",
        ] {
            let mut e = create.clone();
            e["user"]["username"] = json!(who);
            assert!(
                matches!(one(&e), NodeEvent::Ignored(ref r) if r.contains("own kubelet")),
                "{who}"
            );
        }
        let mut e = create.clone();
        e["user"] = json!(null);
        assert!(matches!(one(&e), NodeEvent::Ignored(_)));
        let patch = fixture("k8s-audit-node-podcidr-patch.json");
        assert!(matches!(one(&patch), NodeEvent::CidrAssigned(_)));
        let mut e = patch.clone();
        e["user"]["username"] = json!("system:kube-controller-manager");
        assert!(matches!(one(&e), NodeEvent::CidrAssigned(_)));
        for who in ["kubernetes-admin", "system:node:k8s-worker-1"] {
            let mut e = patch.clone();
            e["user"]["username"] = json!(who);
            assert!(
                matches!(one(&e), NodeEvent::Ignored(ref r) if r.contains("IPAM")),
                "{who}"
            );
        }
        // Deletions count whoever made them: release-alias checks the Node is really gone.
        assert!(matches!(
            one(&fixture("k8s-audit-node-delete.json")),
            NodeEvent::Deleted(_)
        ));
    }

    #[test]
    fn the_carriers_log_is_kept_and_an_unparsed_line_is_read() {
        let entry = fixture("opsagent-k8s-audit-logentry.json");
        let evs = decode(&entry).expect("decodes");
        assert_eq!(evs.log_name, entry["logName"].as_str().map(str::to_string));
        assert_eq!(
            decode(&fixture("k8s-audit-node-create.json"))
                .expect("decodes")
                .log_name,
            None
        );
        // The Ops Agent without a JSON parser: the line is text in jsonPayload.message.
        let mut raw = entry.clone();
        raw["jsonPayload"] = json!({"message": entry["jsonPayload"].to_string()});
        let evs = decode(&raw).expect("decodes");
        assert!(
            matches!(evs.events.as_slice(), [NodeEvent::CidrAssigned(_)]),
            "{evs:?}"
        );
        let mut raw = entry;
        raw["jsonPayload"] = json!({"message": "E1202 not json"});
        assert!(matches!(decode(&raw), Err(DecodeError::Json(_))));
    }

    #[test]
    fn what_does_not_count() {
        let mut e = fixture("k8s-audit-node-create.json");
        e["stage"] = json!("ResponseStarted");
        assert!(matches!(one(&e), NodeEvent::Ignored(ref r) if r.contains("stage")));
        let mut e = fixture("k8s-audit-node-create.json");
        e["responseStatus"]["code"] = json!(409);
        assert!(matches!(one(&e), NodeEvent::Ignored(ref r) if r.contains("409")));
        let mut e = fixture("k8s-audit-node-create.json");
        e["responseStatus"] = json!(null);
        assert!(matches!(one(&e), NodeEvent::Ignored(_)));
        let mut e = fixture("k8s-audit-node-create.json");
        e["objectRef"]["resource"] = json!("pods");
        assert!(matches!(one(&e), NodeEvent::Ignored(_)));
        let mut e = fixture("k8s-audit-node-podcidr-patch.json");
        e["objectRef"]["subresource"] = json!("status");
        assert!(matches!(one(&e), NodeEvent::Ignored(_)));
        let mut e = fixture("k8s-audit-node-podcidr-patch.json");
        e["requestObject"] =
            json!({"spec": {"providerID": "gce://example-project/us-central1-a/k8s-worker-1"}});
        assert!(matches!(one(&e), NodeEvent::Ignored(ref r) if r.contains("podCIDR")));
        let mut e = fixture("k8s-audit-node-podcidr-patch.json");
        e["verb"] = json!("get");
        assert!(matches!(one(&e), NodeEvent::Ignored(_)));
        // podCIDRs alone is enough.
        let mut e = fixture("k8s-audit-node-podcidr-patch.json");
        e["requestObject"] = json!({"spec": {"podCIDRs": ["10.4.9.0/24"]}});
        assert!(
            matches!(one(&e), NodeEvent::CidrAssigned(ref c) if c.pod_cidr == cidr("10.4.9.0/24"))
        );
        // A Compute entry is not a node event.
        assert!(matches!(
            one(&fixture("gce-insert-last.json")),
            NodeEvent::Ignored(_)
        ));
        assert!(matches!(
            one(&json!({"hello": "world"})),
            NodeEvent::Ignored(_)
        ));
    }

    /// Issue 20, item 5: nesting and event counts are capped, and the payload is moved, not
    /// copied, per level (the outermost log name is kept).
    #[test]
    fn carriers_and_events_are_capped() {
        let event = fixture("k8s-audit-node-create.json");
        let wrap = |inner: Value, log: &str| json!({"logName": log, "jsonPayload": inner});
        let mut v = event.clone();
        for i in 0..MAX_CARRIERS {
            v = wrap(v, &format!("projects/p/logs/level{i}"));
        }
        let ok = NodeEvents::from_value(v.clone()).expect("at the cap");
        assert_eq!(ok.events.len(), 1);
        assert_eq!(
            ok.log_name.as_deref(),
            Some(format!("projects/p/logs/level{}", MAX_CARRIERS - 1).as_str()),
            "the outermost carrier's log"
        );
        let deeper = wrap(v, "projects/p/logs/outer");
        assert!(matches!(
            NodeEvents::from_value(deeper),
            Err(DecodeError::Shape(ref w)) if w.contains("nested")
        ));
        let list = |n: usize| json!({"kind": "EventList", "items": vec![event.clone(); n]});
        assert_eq!(
            NodeEvents::from_value(list(MAX_EVENTS))
                .expect("at the cap")
                .events
                .len(),
            MAX_EVENTS
        );
        assert!(matches!(
            NodeEvents::from_value(list(MAX_EVENTS + 1)),
            Err(DecodeError::Shape(ref w)) if w.contains("at most")
        ));
    }

    #[test]
    fn hostile_input() {
        assert!(matches!(
            NodeEvents::decode(b"{\"kind\":\"Event\""),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            NodeEvents::decode(b"\"just a string\""),
            Err(DecodeError::Shape(_))
        ));
        let mut e = fixture("k8s-audit-node-podcidr-patch.json");
        e["requestObject"]["spec"]["podCIDR"] = json!("10.4.1.7/24");
        assert!(matches!(decode(&e), Err(DecodeError::Invalid(_))));
        let mut e = fixture("k8s-audit-node-podcidr-patch.json");
        e["requestObject"]["spec"]["podCIDR"] = json!("x".repeat(100_000));
        let err = decode(&e).expect_err("invalid cidr");
        assert!(err.to_string().len() < 300);
        let mut e = fixture("k8s-audit-node-create.json");
        e["objectRef"]["name"] = json!("../../etc/passwd");
        assert!(matches!(decode(&e), Err(DecodeError::Invalid(_))));
        let mut e = fixture("k8s-audit-node-create.json");
        e["objectRef"]["name"] = json!(null);
        assert!(matches!(decode(&e), Err(DecodeError::Shape(_))));
        let mut e = fixture("k8s-audit-node-create.json");
        e["stage"] = json!(42);
        assert!(matches!(decode(&e), Err(DecodeError::Json(_))));
    }
}
