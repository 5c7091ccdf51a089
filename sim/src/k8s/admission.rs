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

/// nodewire's shipped ValidatingAdmissionPolicy and its binding.
pub const NODEWIRE_ADMISSION: &str =
    include_str!("../../../infra/k8s/nodewire-admission-policy.yaml");

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
        let to_cel = |v: Option<&Value>| -> Result<Cel, String> {
            match v {
                None => Ok(Cel::Null),
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

    fn node_update(old_taints: Value, new_taints: Value, user: &str) -> Result<(), ApiError> {
        let adm = Admission::load(&[NODEWIRE_ADMISSION]).expect("the shipped policy loads");
        let old = json!({"metadata": {"name": "n"}, "spec": {"taints": old_taints}});
        let new = json!({"metadata": {"name": "n"}, "spec": {"taints": new_taints}});
        adm.admit(&Attributes {
            user,
            groups: &[],
            operation: "UPDATE",
            resource: "nodes",
            namespace: "",
            name: "n",
            object: Some(&new),
            old_object: Some(&old),
        })
    }

    const NW: &str = "system:serviceaccount:kube-system:nodewire";

    #[test]
    fn taints_may_be_removed_not_added_or_changed() {
        let a = json!({"key": "a", "effect": "NoSchedule"});
        let b = json!({"key": "b", "effect": "NoExecute", "value": "x"});
        assert!(node_update(json!([a, b]), json!([a]), NW).is_ok());
        assert!(node_update(json!([a, b]), json!([b]), NW).is_ok());
        let added = node_update(json!([a]), json!([a, b]), NW).expect_err("added");
        assert_eq!((added.code, added.reason), (403, "Forbidden"));
        let changed = json!({"key": "b", "effect": "NoExecute", "value": "y"});
        assert!(node_update(json!([a, b]), json!([a, changed]), NW).is_err());
        // Another identity is not this policy's business.
        assert!(node_update(json!([a]), json!([a, b]), "kubernetes-admin").is_ok());
    }

    #[test]
    fn unmodelled_fields_do_not_load() {
        let with_params = NODEWIRE_ADMISSION.replace(
            "  failurePolicy: Fail\n",
            "  failurePolicy: Fail\n  paramKind: {apiVersion: v1, kind: ConfigMap}\n",
        );
        assert_ne!(with_params, NODEWIRE_ADMISSION, "the edit applies");
        assert!(Admission::load(&[&with_params]).is_err());
    }
}
