//! ValidatingAdmissionPolicy, evaluated as the API server's admission plugin does it
//! (admissionregistration.k8s.io/v1; <https://kubernetes.io/docs/reference/access-authn-authz/validating-admission-policy/>):
//! the simulator loads nodewire's shipped `infra/k8s/nodewire-admission-policy.yaml` and runs
//! its CEL on every write, so every end-to-end test proves the policy allows what nodewire
//! really sends, and a write outside it is refused as a real cluster would refuse it.
//!
//! Modelled: a policy applies only through a binding (`policyName`) whose `validationActions`
//! include `Deny`; `matchConstraints.resourceRules` (core group, `operations`, `resources`);
//! `matchConditions` (all true, else the policy does not apply); `variables` in order, as
//! `variables.NAME`; `validations` (each must be true). The CEL environment has `object`
//! (null on DELETE), `oldObject` (null on CREATE) and `request` (`operation`, `userInfo`,
//! `resource`, `name`, `namespace`). An expression that fails to evaluate follows
//! `failurePolicy` (`Fail`, the default, denies). The denial is the API server's: the
//! validation's `reason` (default `Invalid`: 422; `Forbidden`: 403) and the message
//! `ValidatingAdmissionPolicy 'P' with binding 'B' denied request: MESSAGE`.
//!
//! Not modelled (a manifest using them does not load, so nothing is silently skipped): `params`
//! and `paramKind`, `authorizer`, `messageExpression`, `auditAnnotations`, bindings' own
//! `matchResources`, `namespaceSelector`/`objectSelector`, `matchPolicy`, other API groups.

use std::sync::Arc;

use cel_interpreter::{Context, Program, Value as Cel};
use serde::Deserialize;
use serde_json::{Value, json};

use super::status::ApiError;

/// nodewire's shipped ValidatingAdmissionPolicies and their bindings, as a template (Terraform
/// fills it in: [`nodewire_admission`] does the same here).
pub const NODEWIRE_ADMISSION: &str =
    include_str!("../../../infra/k8s/nodewire-admission-policy.yaml");

/// The shipped policies for a cluster: `project` of its VMs, node VM name `prefix` (may be
/// empty), and the join token TTL in seconds — the values Terraform's `templatefile` puts in;
/// the range order `cluster-first`.
pub fn nodewire_admission(project: &str, prefix: &str, token_ttl_secs: u64) -> String {
    nodewire_admission_ordered(project, prefix, token_ttl_secs, "cluster-first")
}

/// [`nodewire_admission`] with the range order (`NODEWIRE_RANGE_ORDER`) too.
pub fn nodewire_admission_ordered(
    project: &str,
    prefix: &str,
    token_ttl_secs: u64,
    range_order: &str,
) -> String {
    NODEWIRE_ADMISSION
        .replace("${project}", project)
        .replace("${instance_prefix}", prefix)
        .replace("${token_ttl_secs}", &token_ttl_secs.to_string())
        .replace("${range_order}", range_order)
}

/// One write, as admission sees it.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    pub user: &'a str,
    pub groups: &'a [String],
    /// `CREATE`, `UPDATE` or `DELETE`.
    pub operation: &'a str,
    /// Plural resource of the core group (`nodes`, `secrets`, …).
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub object: Option<&'a Value>,
    pub old_object: Option<&'a Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Doc {
    api_version: String,
    kind: String,
    metadata: Meta,
    #[serde(default)]
    spec: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Meta {
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    failure_policy: Option<String>,
    match_constraints: MatchConstraints,
    #[serde(default)]
    match_conditions: Vec<Named>,
    #[serde(default)]
    variables: Vec<Named>,
    validations: Vec<ValidationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MatchConstraints {
    resource_rules: Vec<ResourceRule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ResourceRule {
    api_groups: Vec<String>,
    api_versions: Vec<String>,
    operations: Vec<String>,
    resources: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Named {
    name: String,
    expression: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ValidationSpec {
    expression: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BindingSpec {
    policy_name: String,
    validation_actions: Vec<String>,
}

struct Compiled {
    name: String,
    binding: String,
    fail_closed: bool,
    rules: Vec<ResourceRule>,
    conditions: Vec<(String, Program)>,
    variables: Vec<(String, Program)>,
    validations: Vec<(Program, String, String, String)>,
}

/// The policies in force.
#[derive(Clone, Default)]
pub struct Admission {
    policies: Arc<Vec<Compiled>>,
    /// Set when the manifests did not load: every write is refused (fail closed).
    broken: Option<String>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field(
                "policies",
                &self.policies.iter().map(|p| &p.name).collect::<Vec<_>>(),
            )
            .field("broken", &self.broken)
            .finish()
    }
}

fn compile(what: &str, expr: &str) -> Result<Program, String> {
    for unsupported in ["params", "authorizer", "namespaceObject"] {
        if expr.contains(unsupported) {
            return Err(format!("{what}: `{unsupported}` is not modelled"));
        }
    }
    Program::compile(expr).map_err(|e| format!("{what}: CEL does not compile: {e}"))
}

impl Admission {
    /// The ValidatingAdmissionPolicies (and bindings) among `manifests`; other kinds are
    /// skipped.
    ///
    /// # Errors
    /// A manifest that does not parse, a field that is not modelled, CEL that does not compile,
    /// a binding without its policy.
    pub fn load(manifests: &[&str]) -> Result<Self, String> {
        let mut policies: Vec<(String, PolicySpec)> = vec![];
        let mut bindings: Vec<(String, BindingSpec)> = vec![];
        for text in manifests {
            if let Some(at) = text.find("${") {
                let end = text[at..].find('}').map_or(text.len(), |e| at + e + 1);
                return Err(format!(
                    "admission manifest: template placeholder {} not filled in",
                    &text[at..end]
                ));
            }
            let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)
                .map_err(|e| format!("admission manifest: {e}"))?;
            for raw in docs {
                let kind = raw["kind"].as_str().unwrap_or_default();
                if !kind.starts_with("ValidatingAdmissionPolicy") {
                    continue;
                }
                let d: Doc =
                    serde_json::from_value(raw.clone()).map_err(|e| format!("{kind}: {e}"))?;
                if d.api_version != "admissionregistration.k8s.io/v1" {
                    return Err(format!(
                        "{kind} {}: apiVersion {}",
                        d.metadata.name, d.api_version
                    ));
                }
                let spec = d.spec.unwrap_or(Value::Null);
                match d.kind.as_str() {
                    "ValidatingAdmissionPolicy" => policies.push((
                        d.metadata.name.clone(),
                        serde_json::from_value(spec)
                            .map_err(|e| format!("policy {}: {e}", d.metadata.name))?,
                    )),
                    "ValidatingAdmissionPolicyBinding" => bindings.push((
                        d.metadata.name.clone(),
                        serde_json::from_value(spec)
                            .map_err(|e| format!("binding {}: {e}", d.metadata.name))?,
                    )),
                    other => return Err(format!("kind {other} is not modelled")),
                }
            }
        }
        let mut compiled = vec![];
        for (binding, b) in bindings {
            let Some((name, p)) = policies.iter().find(|(n, _)| *n == b.policy_name) else {
                return Err(format!("binding {binding}: no policy {}", b.policy_name));
            };
            if !b.validation_actions.iter().any(|a| a == "Deny") {
                continue;
            }
            for r in &p.match_constraints.resource_rules {
                if r.api_groups != [""] || r.api_versions.iter().any(|v| v != "v1" && v != "*") {
                    return Err(format!("policy {name}: only the core v1 group is modelled"));
                }
            }
            let fail_closed = match p.failure_policy.as_deref() {
                None | Some("Fail") => true,
                Some("Ignore") => false,
                Some(other) => return Err(format!("policy {name}: failurePolicy {other}")),
            };
            let named = |list: &[Named], what: &str| -> Result<Vec<(String, Program)>, String> {
                list.iter()
                    .map(|n| {
                        compile(&format!("policy {name} {what} {}", n.name), &n.expression)
                            .map(|p| (n.name.clone(), p))
                    })
                    .collect()
            };
            let validations = p
                .validations
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    compile(&format!("policy {name} validation {i}"), &v.expression).map(|prog| {
                        (
                            prog,
                            v.expression.clone(),
                            v.message
                                .clone()
                                .unwrap_or_else(|| format!("failed expression: {}", v.expression)),
                            v.reason.clone().unwrap_or_else(|| "Invalid".into()),
                        )
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            compiled.push(Compiled {
                name: name.clone(),
                binding,
                fail_closed,
                rules: p
                    .match_constraints
                    .resource_rules
                    .iter()
                    .map(|r| ResourceRule {
                        api_groups: r.api_groups.clone(),
                        api_versions: r.api_versions.clone(),
                        operations: r.operations.clone(),
                        resources: r.resources.clone(),
                    })
                    .collect(),
                conditions: named(&p.match_conditions, "matchCondition")?,
                variables: named(&p.variables, "variable")?,
                validations,
            });
        }
        Ok(Self {
            policies: Arc::new(compiled),
            broken: None,
        })
    }

    /// Refuses every write (the manifests did not load: fail closed).
    pub fn broken(why: String) -> Self {
        Self {
            policies: Arc::new(vec![]),
            broken: Some(why),
        }
    }

    /// Admits or denies one write.
    ///
    /// # Errors
    /// The API server's denial: the validation's reason and message.
    pub fn admit(&self, a: &Attributes<'_>) -> Result<(), ApiError> {
        if let Some(why) = &self.broken {
            return Err(ApiError::new(
                500,
                "InternalError",
                format!("admission policies did not load: {why}"),
            ));
        }
        for p in self.policies.iter() {
            let applies = p.rules.iter().any(|r| {
                (r.resources.iter().any(|x| x == a.resource || x == "*"))
                    && r.operations.iter().any(|o| o == a.operation || o == "*")
            });
            if !applies {
                continue;
            }
            p.check(a)?;
        }
        Ok(())
    }
}

impl Compiled {
    fn denied(&self, reason: &str, message: &str) -> ApiError {
        let (code, reason): (u16, &'static str) = match reason {
            "Forbidden" => (403, "Forbidden"),
            "Unauthorized" => (401, "Unauthorized"),
            "RequestEntityTooLarge" => (413, "RequestEntityTooLarge"),
            "InternalError" => (500, "InternalError"),
            _ => (422, "Invalid"),
        };
        ApiError::new(
            code,
            reason,
            format!(
                "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: {message}",
                self.name, self.binding
            ),
        )
    }

    fn on_error(&self, what: &str, e: &str) -> Result<(), ApiError> {
        if self.fail_closed {
            Err(self.denied(
                "InternalError",
                &format!("{what} could not be evaluated: {e}"),
            ))
        } else {
            Ok(())
        }
    }

    fn check(&self, a: &Attributes<'_>) -> Result<(), ApiError> {
        let request = json!({
            "operation": a.operation,
            "userInfo": {"username": a.user, "groups": a.groups},
            "resource": {"group": "", "version": "v1", "resource": a.resource},
            "kind": {"group": "", "version": "v1"},
            "name": a.name,
            "namespace": a.namespace,
        });
        let mut ctx = Context::default();
        let secret = a.resource == "secrets";
        let to_cel = |v: Option<&Value>| -> Result<Cel, String> {
            match v {
                None => Ok(Cel::Null),
                Some(v) if secret => secret_to_cel(v),
                Some(v) => cel_interpreter::to_value(v).map_err(|e| e.to_string()),
            }
        };
        let vars = [
            ("object", a.object),
            ("oldObject", a.old_object),
            ("request", Some(&request)),
        ];
        for (name, v) in vars {
            match to_cel(v) {
                Ok(c) => ctx.add_variable_from_value(name, c),
                Err(e) => return self.on_error(name, &e),
            }
        }
        for (name, cond) in &self.conditions {
            match cond.execute(&ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Ok(()),
                Ok(other) => return self.on_error(name, &format!("not a bool: {other:?}")),
                Err(e) => return self.on_error(name, &e.to_string()),
            }
        }
        let mut variables = serde_json::Map::new();
        for (name, prog) in &self.variables {
            let v = match prog.execute(&ctx) {
                Ok(v) => v,
                Err(e) => return self.on_error(&format!("variable {name}"), &e.to_string()),
            };
            variables.insert(name.clone(), cel_to_json(&v));
            match cel_interpreter::to_value(Value::Object(variables.clone())) {
                Ok(c) => ctx.add_variable_from_value("variables", c),
                Err(e) => return self.on_error("variables", &e.to_string()),
            }
        }
        if self.variables.is_empty() {
            match cel_interpreter::to_value(json!({})) {
                Ok(c) => ctx.add_variable_from_value("variables", c),
                Err(e) => return self.on_error("variables", &e.to_string()),
            }
        }
        for (prog, expr, message, reason) in &self.validations {
            match prog.execute(&ctx) {
                Ok(Cel::Bool(true)) => {}
                Ok(Cel::Bool(false)) => return Err(self.denied(reason, message)),
                Ok(other) => return self.on_error(expr, &format!("not a bool: {other:?}")),
                Err(e) => return self.on_error(expr, &e.to_string()),
            }
        }
        Ok(())
    }
}

/// A Secret as CEL sees it: `data`'s values are bytes (the OpenAPI schema's `format: byte`),
/// not their base64 text.
fn secret_to_cel(v: &Value) -> Result<Cel, String> {
    use base64::Engine as _;
    let mut plain = v.clone();
    let data = plain.as_object_mut().and_then(|o| o.remove("data"));
    let Cel::Map(m) = cel_interpreter::to_value(&plain).map_err(|e| e.to_string())? else {
        return Err("a Secret is not an object".into());
    };
    let mut map = (*m.map).clone();
    if let Some(Value::Object(d)) = data {
        let mut bytes = std::collections::HashMap::new();
        for (k, b64) in d {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64.as_str().unwrap_or_default())
                .map_err(|e| format!("data.{k}: {e}"))?;
            bytes.insert(k, Cel::Bytes(std::sync::Arc::new(raw)));
        }
        map.insert("data".into(), Cel::from(bytes));
    }
    Ok(Cel::Map(cel_interpreter::objects::Map {
        map: std::sync::Arc::new(map),
    }))
}

/// A CEL value back as JSON (for `variables`): lists, maps, scalars.
fn cel_to_json(v: &Cel) -> Value {
    match v {
        Cel::Null => Value::Null,
        Cel::Bool(b) => json!(b),
        Cel::Int(i) => json!(i),
        Cel::UInt(u) => json!(u),
        Cel::Float(f) => json!(f),
        Cel::String(s) => json!(s.as_str()),
        Cel::List(l) => Value::Array(l.iter().map(cel_to_json).collect()),
        Cel::Map(m) => Value::Object(
            m.map
                .iter()
                .map(|(k, v)| (key_string(k), cel_to_json(v)))
                .collect(),
        ),
        other => json!(format!("{other:?}")),
    }
}

fn key_string(k: &cel_interpreter::objects::Key) -> String {
    match k {
        cel_interpreter::objects::Key::String(s) => s.to_string(),
        cel_interpreter::objects::Key::Int(i) => i.to_string(),
        cel_interpreter::objects::Key::Uint(u) => u.to_string(),
        cel_interpreter::objects::Key::Bool(b) => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NW: &str = "system:serviceaccount:kube-system:nodewire";

    fn shipped() -> Admission {
        Admission::load(&[&nodewire_admission("example-project", "k8s-", 900)])
            .expect("the shipped policies load")
    }

    fn write(
        user: &str,
        operation: &str,
        resource: &str,
        name: &str,
        old: Option<&Value>,
        new: Option<&Value>,
    ) -> Result<(), ApiError> {
        let namespace = if resource.starts_with("nodes") {
            ""
        } else {
            "kube-system"
        };
        shipped().admit(&Attributes {
            user,
            groups: &[],
            operation,
            resource,
            namespace,
            name,
            object: new,
            old_object: old,
        })
    }

    fn node(name: &str, spec: Value) -> Value {
        json!({"metadata": {"name": name}, "spec": spec})
    }

    fn node_update(old_taints: Value, new_taints: Value, user: &str) -> Result<(), ApiError> {
        let old = node("k8s-n", json!({"taints": old_taints}));
        let new = node("k8s-n", json!({"taints": new_taints}));
        write(user, "UPDATE", "nodes", "k8s-n", Some(&old), Some(&new))
    }

    /// Issue 22: on `nodes/status` nodewire may only set NetworkUnavailable to False; the
    /// kubelet's conditions and reported fields stay, and the control plane's Node is not its.
    #[test]
    fn node_status_only_network_available() {
        let status = |net: &str, ready: &str| {
            json!({"metadata": {"name": "k8s-n"}, "status": {
            "addresses": [{"type": "InternalIP", "address": "10.128.0.5"}],
            "capacity": {"cpu": "4"},
            "conditions": [
                {"type": "Ready", "status": ready, "reason": "KubeletReady"},
                {"type": "NetworkUnavailable", "status": net, "reason": "NoRouteCreated"},
            ]}})
        };
        let st = |old: &Value, new: &Value, user: &str, name: &str| {
            write(user, "UPDATE", "nodes/status", name, Some(old), Some(new))
        };
        let old = status("True", "True");
        assert!(st(&old, &status("False", "True"), NW, "k8s-n").is_ok());
        // Another condition changed, or NetworkUnavailable set to True: refused.
        let e = st(&old, &status("False", "False"), NW, "k8s-n").expect_err("Ready");
        assert_eq!(e.code, 403, "{e:?}");
        assert!(st(&status("False", "True"), &old, NW, "k8s-n").is_err());
        // Reported fields stay.
        let mut moved = status("False", "True");
        moved["status"]["addresses"][0]["address"] = json!("10.128.0.6");
        assert!(st(&old, &moved, NW, "k8s-n").is_err());
        let mut info = status("False", "True");
        info["status"]["nodeInfo"] = json!({"kubeletVersion": "v1.0.0"});
        assert!(st(&old, &info, NW, "k8s-n").is_err());
        // Not one of nodewire's node VMs.
        assert!(st(&old, &status("False", "True"), NW, "other").is_err());
        // Anyone else is not looked at.
        assert!(
            st(
                &old,
                &status("False", "False"),
                "system:node:k8s-n",
                "k8s-n"
            )
            .is_ok()
        );
    }

    #[test]
    fn only_nodewires_taint_may_be_removed_none_added_or_changed() {
        let ours = json!({"key": "nodewire.io/unwired", "effect": "NoSchedule"});
        let b = json!({"key": "b", "effect": "NoExecute", "value": "x"});
        assert!(node_update(json!([ours, b]), json!([b]), NW).is_ok());
        // Issue 20, item 5: another taint (a cordon, node.kubernetes.io/unreachable, …) stays.
        let other = node_update(json!([ours, b]), json!([ours]), NW).expect_err("removed b");
        assert_eq!((other.code, other.reason), (403, "Forbidden"));
        assert!(other.message.contains("its own taint"), "{}", other.message);
        let added = node_update(json!([ours]), json!([ours, b]), NW).expect_err("added");
        assert_eq!((added.code, added.reason), (403, "Forbidden"));
        let changed = json!({"key": "b", "effect": "NoExecute", "value": "y"});
        assert!(node_update(json!([ours, b]), json!([ours, changed]), NW).is_err());
        // Another identity is not this policy's business.
        assert!(node_update(json!([ours]), json!([ours, b]), "kubernetes-admin").is_ok());
    }

    /// Issue 20, item 5: a made-up owner would let the garbage collector delete the Node.
    #[test]
    fn owner_references_are_not_changed() {
        let old = node("k8s-n", json!({}));
        let mut owned = old.clone();
        owned["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "1"}]);
        let e = write(NW, "UPDATE", "nodes", "k8s-n", Some(&old), Some(&owned))
            .expect_err("an owner added");
        assert!(e.message.contains("ownerReferences"), "{}", e.message);
        assert!(write(NW, "UPDATE", "nodes", "k8s-n", Some(&owned), Some(&owned)).is_ok());
    }

    /// Issue 21: the one annotation nodewire writes on a Node is the instance it paired it
    /// with, once: added when absent (digits only, the others kept), never changed or removed.
    #[test]
    fn the_instance_id_is_recorded_once_and_nothing_else_changes() {
        let with = |a: Value| {
            let mut n = node("k8s-n", json!({}));
            n["metadata"]["annotations"] = a;
            n
        };
        let bare = node("k8s-n", json!({}));
        let kubelet =
            with(json!({"volumes.kubernetes.io/controller-managed-attach-detach": "true"}));
        let recorded = with(
            json!({"volumes.kubernetes.io/controller-managed-attach-detach": "true",
            "nodewire.io/instance-id": "4242"}),
        );
        let upd =
            |old: &Value, new: &Value| write(NW, "UPDATE", "nodes", "k8s-n", Some(old), Some(new));
        assert!(upd(&kubelet, &recorded).is_ok());
        assert!(upd(&bare, &with(json!({"nodewire.io/instance-id": "1"}))).is_ok());
        assert!(upd(&recorded, &recorded).is_ok());
        for (old, new, what) in [
            (
                &recorded,
                &with(
                    json!({"volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "nodewire.io/instance-id": "1"}),
                ),
                "changed",
            ),
            (&recorded, &kubelet, "removed"),
            (
                &kubelet,
                &with(json!({"nodewire.io/instance-id": "4242"})),
                "another dropped",
            ),
            (
                &kubelet,
                &with(
                    json!({"volumes.kubernetes.io/controller-managed-attach-detach": "false",
                "nodewire.io/instance-id": "4242"}),
                ),
                "another changed",
            ),
            (
                &bare,
                &with(json!({"nodewire.io/instance-id": "x1"})),
                "not digits",
            ),
            (
                &bare,
                &with(json!({"nodewire.io/instance-id": "1", "other": "y"})),
                "another added",
            ),
        ] {
            let e = upd(old, new).expect_err(what);
            assert!(e.message.contains("annotations"), "{what}: {}", e.message);
        }
    }

    /// Issue 20, item 5: providerIDs and Node deletes bound to the project, the node name
    /// prefix and the Node's own name; never the control plane.
    #[test]
    fn provider_ids_and_deletes_are_bound_to_the_project_and_prefix() {
        let empty = node("k8s-n", json!({}));
        let set = |p: &str| node("k8s-n", json!({"providerID": p}));
        let update = |name: &str, old: &Value, new: &Value| {
            write(NW, "UPDATE", "nodes", name, Some(old), Some(new))
        };
        assert!(
            update(
                "k8s-n",
                &empty,
                &set("gce://example-project/us-central1-a/k8s-n")
            )
            .is_ok()
        );
        for bad in [
            "gce://other-project/us-central1-a/k8s-n",
            "gce://example-project/us-central1-a/k8s-other",
            "gce://example-project/k8s-n",
            "aws:///us-east-1a/i-1",
        ] {
            assert!(update("k8s-n", &empty, &set(bad)).is_err(), "{bad}");
        }
        let cp = node("cp-1", json!({}));
        let cp_set = node(
            "cp-1",
            json!({"providerID": "gce://example-project/us-central1-a/cp-1"}),
        );
        assert!(update("cp-1", &cp, &cp_set).is_err(), "outside the prefix");
        let delete = |name: &str, old: &Value| write(NW, "DELETE", "nodes", name, Some(old), None);
        assert!(delete("k8s-n", &set("gce://example-project/us-central1-a/k8s-n")).is_ok());
        assert!(delete("k8s-n", &set("gce://other-project/us-central1-a/k8s-n")).is_err());
        assert!(delete("k8s-n", &empty).is_err());
        assert!(delete("cp-1", &cp_set).is_err());
        // A control-plane Node under the prefix.
        let mut labelled = set("gce://example-project/us-central1-a/k8s-n");
        labelled["metadata"]["labels"] = json!({"node-role.kubernetes.io/control-plane": ""});
        assert!(delete("k8s-n", &labelled).is_err());
    }

    /// Issue 20, item 5: a token nodewire creates expires within the configured TTL of its
    /// creation (as admission sees it: `data` folded and decoded, `creationTimestamp` set).
    #[test]
    fn token_secrets_expire_within_the_ttl() {
        use base64::Engine as _;
        let token = |expiration: &str| {
            let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            json!({
                "type": "bootstrap.kubernetes.io/token",
                "metadata": {"name": "bootstrap-token-abcdef", "namespace": "kube-system",
                             "labels": {"nodewire.io/instance": "k8s-n"},
                             "creationTimestamp": "2026-12-07T10:00:00Z"},
                "data": {"token-id": b("abcdef"), "token-secret": b("0123456789abcdef"),
                         "expiration": b(expiration),
                         "usage-bootstrap-authentication": b("true")}
            })
        };
        let create = |t: &Value| {
            write(
                NW,
                "CREATE",
                "secrets",
                "bootstrap-token-abcdef",
                None,
                Some(t),
            )
        };
        assert!(create(&token("2026-12-07T10:15:00Z")).is_ok(), "900 s");
        assert!(
            create(&token("2026-12-07T10:16:00Z")).is_ok(),
            "with the skew allowed"
        );
        let e = create(&token("2026-12-08T10:00:00Z")).expect_err("a day");
        assert!(e.message.contains("900 s"), "{}", e.message);
        let mut none = token("x");
        if let Some(d) = none["data"].as_object_mut() {
            d.remove("expiration");
        }
        assert!(create(&none).is_err(), "no expiration");
    }

    #[test]
    fn unmodelled_fields_and_unfilled_templates_do_not_load() {
        let rendered = nodewire_admission("example-project", "k8s-", 900);
        let with_params = rendered.replace(
            "  failurePolicy: Fail\n",
            "  failurePolicy: Fail\n  paramKind: {apiVersion: v1, kind: ConfigMap}\n",
        );
        assert_ne!(with_params, rendered, "the edit applies");
        assert!(Admission::load(&[&with_params]).is_err());
        let e = Admission::load(&[NODEWIRE_ADMISSION]).expect_err("a template");
        assert!(e.contains("${"), "{e}");
    }
}
