//! Nodes: `podCIDR`/`podCIDRs` defaulting, validation (the name, the pod CIDRs, taints unique by
//! key and effect, and `spec.providerID` and `spec.podCIDR(s)` changing only from empty, with
//! the API server's messages), and the audit LogEntries of node writes in the Ops Agent
//! `jsonPayload` shape.

use nodewire::names::{Cidr, validate_node_name};
use serde_json::{Value, json};

use super::objects::str_at;
use super::status::Subject;
use super::{ApiError, Sim};

/// Defaulting keeps podCIDR and podCIDRs in step.
pub(super) fn normalize(obj: &mut Value) {
    let single = str_at(obj, "/spec/podCIDR").to_string();
    let list_first = obj
        .pointer("/spec/podCIDRs/0")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        match (single.is_empty(), list_first) {
            (false, None) => {
                spec.insert("podCIDRs".into(), json!([single]));
            }
            (true, Some(first)) => {
                spec.insert("podCIDR".into(), json!(first));
            }
            _ => {}
        }
    }
}

/// `old`: the Node an update replaces.
pub(super) fn validate(
    subject: Subject<'_>,
    obj: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let name = subject.name;
    if validate_node_name(name).is_err() {
        return subject.invalid(
            "metadata.name",
            "FieldValueInvalid",
            &format!(
                "Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            ),
        );
    }
    let pod_cidr = str_at(obj, "/spec/podCIDR");
    if !pod_cidr.is_empty() && pod_cidr.parse::<Cidr>().is_err() {
        return subject.invalid(
            "spec.podCIDRs[0]",
            "FieldValueInvalid",
            &format!("Invalid value: {pod_cidr:?}: must be a valid CIDR"),
        );
    }
    if let Some(list) = obj.pointer("/spec/podCIDRs").and_then(Value::as_array)
        && list
            .first()
            .and_then(Value::as_str)
            .is_some_and(|f| f != pod_cidr)
    {
        return subject.invalid(
            "spec.podCIDRs",
            "FieldValueInvalid",
            "Invalid value: podCIDRs[0] must match podCIDR",
        );
    }
    let mut seen = std::collections::HashSet::new();
    for (i, t) in obj
        .pointer("/spec/taints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let key = str_at(t, "/key");
        let effect = str_at(t, "/effect");
        if key.is_empty() || key.len() > 316 || key.contains(' ') {
            return subject.invalid(
                &format!("spec.taints[{i}].key"),
                "FieldValueInvalid",
                &format!(
                    "Invalid value: {key:?}: name part must consist of alphanumeric characters, '-', '_' or '.'"
                ),
            );
        }
        if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
            return subject.invalid(
                &format!("spec.taints[{i}].effect"),
                "FieldValueNotSupported",
                &format!(
                    "Unsupported value: {effect:?}: supported values: \"NoSchedule\", \"PreferNoSchedule\", \"NoExecute\""
                ),
            );
        }
        if !seen.insert((key.to_string(), effect.to_string())) {
            return subject.invalid(
                &format!("spec.taints[{i}]"),
                "FieldValueDuplicate",
                &format!(
                    "Duplicate value: {{\"key\":{key:?},\"effect\":{effect:?}}}: taints must be unique by key and effect pair"
                ),
            );
        }
    }
    if let Some(old) = old {
        let (op, np) = (
            str_at(old, "/spec/providerID"),
            str_at(obj, "/spec/providerID"),
        );
        if !op.is_empty() && op != np {
            return subject.invalid(
                "spec.providerID",
                "FieldValueForbidden",
                "Forbidden: node updates may not change providerID except from \"\" to valid",
            );
        }
        let (oc, nc) = (str_at(old, "/spec/podCIDR"), str_at(obj, "/spec/podCIDR"));
        let (ol, nl) = (old.pointer("/spec/podCIDRs"), obj.pointer("/spec/podCIDRs"));
        if !oc.is_empty() && (oc != nc || ol != nl) {
            return subject.invalid(
                "spec.podCIDRs",
                "FieldValueForbidden",
                "Forbidden: node updates may not change podCIDR except from \"\" to valid",
            );
        }
    }
    Ok(())
}

impl Sim {
    /// Publishes the audit LogEntry of a Node write (`create`, `update`, `patch`, `delete`) by
    /// `user`, when an audit sink is configured.
    pub(super) fn audit_node(
        &self,
        verb: &str,
        name: &str,
        code: u16,
        who: &super::rbac::Identity,
        request_object: Option<Value>,
    ) {
        let uri = if verb == "create" {
            "/api/v1/nodes".to_string()
        } else {
            format!("/api/v1/nodes/{name}")
        };
        let object_ref = json!({"resource": "nodes", "name": name, "apiVersion": "v1"});
        self.audit_write("Request", verb, &uri, object_ref, code, who, request_object);
    }

    /// Publishes the audit LogEntry of a CSR create at the level nodewire's audit policy
    /// gives it (Metadata: no request object). A create with `generateName` has no name in
    /// its request; kube-apiserver's audit records the objectRef as the request names it.
    pub(super) fn audit_csr_create(&self, who: &super::rbac::Identity) {
        let object_ref = json!({"resource": "certificatesigningrequests",
            "apiGroup": "certificates.k8s.io", "apiVersion": "v1"});
        self.audit_write(
            "Metadata",
            "create",
            "/apis/certificates.k8s.io/v1/certificatesigningrequests",
            object_ref,
            201,
            who,
            None,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn audit_write(
        &self,
        level: &str,
        verb: &str,
        uri: &str,
        object_ref: Value,
        code: u16,
        who: &super::rbac::Identity,
        request_object: Option<Value>,
    ) {
        if !self.audit.is_on() {
            return;
        }
        let ts = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let id = self.chaos.draw_u64();
        let mut event = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level,
            "auditID": format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", id >> 32, (id >> 16) & 0xffff, id & 0xfff, (id >> 4) & 0xfff, id & 0xffff_ffff_ffff),
            "stage": "ResponseComplete", "requestURI": uri, "verb": verb,
            "user": {"username": who.user, "groups": who.groups},
            "sourceIPs": ["127.0.0.1"],
            "objectRef": object_ref,
            "responseStatus": {"metadata": {}, "code": code},
            "requestReceivedTimestamp": ts, "stageTimestamp": ts,
        });
        if let Some(r) = request_object {
            event["requestObject"] = r;
        }
        let entry = json!({
            "insertId": format!("{id:x}"),
            "jsonPayload": event,
            "resource": {"type": "gce_instance", "labels": {"instance_id": "4803188210937210115", "project_id": self.config.audit_project, "zone": self.config.audit_zone}},
            "timestamp": ts,
            "labels": {"compute.googleapis.com/resource_name": "k8s-cp-1", "agent.googleapis.com/log_file_path": "/var/log/kubernetes/audit/audit.log"},
            "logName": format!("projects/{}/logs/k8s_audit", self.config.audit_project),
            "receiveTimestamp": ts,
        });
        self.audit.publish(entry);
    }
}
