//! Two kube-controller-manager controllers every kubeadm cluster runs
//! (`--controllers=*,bootstrapsigner,tokencleaner`), which decide whether a bootstrap token can
//! be used to join (<https://kubernetes.io/docs/reference/access-authn-authz/bootstrap-tokens/>):
//!
//! - the **bootstrap signer** keeps one `jws-kubeconfig-<token-id>` entry in
//!   `kube-public/cluster-info` for every unexpired token with `usage-bootstrap-signing: "true"`:
//!   a detached JWS (HS256, key = the token secret, `kid` = the token id) over the ConfigMap's
//!   `kubeconfig`, which `kubeadm join` verifies before it trusts anything in cluster-info; it
//!   removes the entries of tokens that are gone;
//! - the **token cleaner** deletes bootstrap-token Secrets once their `expiration` has passed;
//! - and, of the **node lifecycle controller**, the lifting of `node.kubernetes.io/not-ready`
//!   once a Node reports Ready.
//!
//! Both run after every write to Secrets or ConfigMaps and on a one-second timer, as the
//! controllers react to their informers within moments.

use base64::Engine as _;
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Key, Store};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The detached JWS `kubeadm` expects: `base64url(header)..base64url(HMAC-SHA256)` with the
/// header `{"alg":"HS256","kid":"<token-id>"}` and the token secret as the key (the payload
/// part is left out; the verifier puts the kubeconfig back in).
pub fn detached_jws(content: &str, token_id: &str, token_secret: &str) -> String {
    let header = B64.encode(format!(r#"{{"alg":"HS256","kid":"{token_id}"}}"#));
    let signing_input = format!("{header}.{}", B64.encode(content));
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(token_secret.as_bytes()) else {
        // HMAC takes a key of any length; this branch cannot be reached.
        return String::new();
    };
    mac.update(signing_input.as_bytes());
    format!("{header}..{}", B64.encode(mac.finalize().into_bytes()))
}

use super::secrets::secret_value as data;

fn expired(obj: &Value, now: OffsetDateTime) -> bool {
    data(obj, "expiration")
        .and_then(|e| OffsetDateTime::parse(&e, &Rfc3339).ok())
        .is_some_and(|e| e <= now)
}

fn is_token(k: &Key, obj: &Value) -> bool {
    k.0 == "secrets"
        && k.1 == "kube-system"
        && obj.get("type").and_then(Value::as_str) == Some("bootstrap.kubernetes.io/token")
}

/// One pass of both controllers; the names of the Secrets the cleaner deleted.
pub(super) fn reconcile(st: &mut Store) -> Vec<String> {
    let now = OffsetDateTime::now_utc();
    let gone: Vec<Key> = st
        .objects
        .iter()
        .filter(|(k, o)| is_token(k, o) && expired(o, now))
        .map(|(k, _)| k.clone())
        .collect();
    for k in &gone {
        st.objects.remove(k);
        st.resource_version += 1;
    }
    sign(st, now);
    lift_not_ready(st);
    if let Some(grace) = st.node_monitor_grace {
        monitor_node_health(st, now, grace);
    }
    gone.into_iter().map(|k| k.2).collect()
}

/// The node lifecycle controller's part that writes Nodes in their first seconds: once a
/// Node reports `Ready`, the `node.kubernetes.io/not-ready` taint it registered with goes (a
/// separate write, so the Node's `resourceVersion` moves under whoever else is writing).
fn lift_not_ready(st: &mut Store) {
    let ready: Vec<Key> = st
        .objects
        .iter()
        .filter(|(k, _)| k.0 == "nodes")
        .filter(|(_, n)| {
            n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
        })
        .filter(|(_, n)| {
            n.pointer("/spec/taints")
                .and_then(Value::as_array)
                .is_some_and(|t| t.iter().any(|t| t["key"] == NOT_READY))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in ready {
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        if let Some(n) = st.objects.get_mut(&k) {
            if let Some(t) = n.pointer_mut("/spec/taints").and_then(Value::as_array_mut) {
                t.retain(|t| t["key"] != NOT_READY);
            }
            n["metadata"]["resourceVersion"] = json!(rv);
        }
    }
}

/// The taint of a Node whose kubelet stopped posting status.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";

/// The node lifecycle controller's health monitor (pkg/controller/nodelifecycle/
/// node_lifecycle_controller.go: `tryUpdateNodeHealth`, `doNoScheduleTaintingPass`,
/// `doNoExecuteTaintingPass`): a Node whose `Ready` heartbeat is older than the grace period
/// gets every condition set to `Unknown` (reason `NodeStatusUnknown`, "Kubelet stopped posting
/// node status.") and the taints `node.kubernetes.io/unreachable` `NoSchedule` and `NoExecute`;
/// once its kubelet posts `Ready=True` again, those taints go. A Node that never posted status
/// is left alone here (the controller's `NodeStatusNeverUpdated` case is not modelled).
fn monitor_node_health(st: &mut Store, now: OffsetDateTime, grace: std::time::Duration) {
    let grace = time::Duration::try_from(grace).unwrap_or(time::Duration::seconds(50));
    let stamp = now
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default();
    let keys: Vec<Key> = st
        .objects
        .keys()
        .filter(|k| k.0 == "nodes")
        .cloned()
        .collect();
    for k in keys {
        let Some(n) = st.objects.get(&k) else {
            continue;
        };
        let conditions = n
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let Some(ready) = conditions.iter().find(|c| c["type"] == "Ready") else {
            continue;
        };
        let heartbeat = ready["lastHeartbeatTime"]
            .as_str()
            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok());
        let silent = heartbeat.is_some_and(|h| now - h > grace);
        let status = ready["status"].as_str().unwrap_or_default().to_string();
        let taints = n
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let tainted = taints.iter().any(|t| t["key"] == UNREACHABLE);
        let (new_conditions, new_taints) = if silent && status != "Unknown" {
            let conditions: Vec<Value> = conditions
                .iter()
                .map(|c| {
                    let mut c = c.clone();
                    c["status"] = json!("Unknown");
                    c["reason"] = json!("NodeStatusUnknown");
                    c["message"] = json!("Kubelet stopped posting node status.");
                    c["lastTransitionTime"] = json!(stamp);
                    c
                })
                .collect();
            let mut t = taints.clone();
            if !tainted {
                t.push(json!({"key": UNREACHABLE, "effect": "NoSchedule"}));
                t.push(json!({"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": stamp}));
            }
            (Some(conditions), Some(t))
        } else if status == "True" && tainted {
            let t: Vec<Value> = taints
                .into_iter()
                .filter(|t| t["key"] != UNREACHABLE)
                .collect();
            (None, Some(t))
        } else {
            (None, None)
        };
        if new_conditions.is_none() && new_taints.is_none() {
            continue;
        }
        st.resource_version += 1;
        let rv = st.resource_version.to_string();
        if let Some(n) = st.objects.get_mut(&k) {
            if let Some(c) = new_conditions {
                n["status"]["conditions"] = Value::Array(c);
            }
            if let Some(t) = new_taints {
                n["spec"]["taints"] = Value::Array(t);
            }
            n["metadata"]["resourceVersion"] = json!(rv);
        }
    }
}

/// The taint kubelets register with until their Node is Ready.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";

fn sign(st: &mut Store, now: OffsetDateTime) {
    let ci: Key = (
        "configmaps".into(),
        "kube-public".into(),
        "cluster-info".into(),
    );
    let Some(kubeconfig) = st
        .objects
        .get(&ci)
        .and_then(|c| c.pointer("/data/kubeconfig"))
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return;
    };
    let wanted: serde_json::Map<String, Value> = st
        .objects
        .iter()
        .filter(|(k, o)| is_token(k, o) && !expired(o, now))
        .filter(|(_, o)| data(o, "usage-bootstrap-signing").as_deref() == Some("true"))
        .filter_map(|(_, o)| {
            let (id, secret) = (data(o, "token-id")?, data(o, "token-secret")?);
            let jws = detached_jws(&kubeconfig, &id, &secret);
            Some((format!("jws-kubeconfig-{id}"), json!(jws)))
        })
        .collect();
    let rv = st.resource_version + 1;
    let Some(cm) = st.objects.get_mut(&ci) else {
        return;
    };
    let Some(d) = cm.get_mut("data").and_then(Value::as_object_mut) else {
        return;
    };
    let current: serde_json::Map<String, Value> = d
        .iter()
        .filter(|(k, _)| k.starts_with("jws-kubeconfig-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if current == wanted {
        return;
    }
    d.retain(|k, _| !k.starts_with("jws-kubeconfig-"));
    d.extend(wanted);
    cm["metadata"]["resourceVersion"] = json!(rv.to_string());
    st.resource_version = rv;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same construction as the Kubernetes bootstrap signer's (go-jose HS256 with the
    /// `kid` header, compact serialization with the payload cut out).
    #[test]
    fn detached_jws_has_the_shape_kubeadm_verifies() {
        let jws = detached_jws("kubeconfig text", "abcdef", "0123456789abcdef");
        let (header, sig) = jws.split_once("..").expect("detached");
        assert_eq!(
            B64.decode(header).expect("b64"),
            br#"{"alg":"HS256","kid":"abcdef"}"#
        );
        assert_eq!(B64.decode(sig).expect("b64").len(), 32);
        assert_ne!(
            jws,
            detached_jws("kubeconfig text", "abcdef", "0123456789abcdeX")
        );
        assert_ne!(
            jws,
            detached_jws("other text", "abcdef", "0123456789abcdef")
        );
    }

    /// The node lifecycle controller: silent past the grace period → `Unknown` and the two
    /// unreachable taints (other taints kept); `Ready=True` again → the taints go.
    #[test]
    fn a_silent_node_becomes_unknown_and_unreachable_until_it_reports_again() {
        let now = OffsetDateTime::now_utc();
        let at = |t: OffsetDateTime| t.format(&Rfc3339).expect("time");
        let mut st = Store::default();
        let key: Key = ("nodes".into(), String::new(), "k8s-a".into());
        let node = |hb: OffsetDateTime, status: &str| {
            json!({"metadata": {"name": "k8s-a", "resourceVersion": "1"},
                "spec": {"taints": [{"key": "other", "effect": "NoSchedule"}]},
                "status": {"conditions": [{"type": "Ready", "status": status,
                    "lastHeartbeatTime": at(hb)}]}})
        };
        let grace = std::time::Duration::from_secs(50);
        st.objects
            .insert(key.clone(), node(now - time::Duration::seconds(49), "True"));
        monitor_node_health(&mut st, now, grace);
        assert_eq!(
            st.objects[&key]["status"]["conditions"][0]["status"],
            "True"
        );
        st.objects
            .insert(key.clone(), node(now - time::Duration::seconds(51), "True"));
        monitor_node_health(&mut st, now, grace);
        let n = &st.objects[&key];
        assert_eq!(n["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(n["status"]["conditions"][0]["reason"], "NodeStatusUnknown");
        let keys: Vec<(&str, &str)> = n["spec"]["taints"]
            .as_array()
            .expect("taints")
            .iter()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or(""),
                    t["effect"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("other", "NoSchedule"),
                (UNREACHABLE, "NoSchedule"),
                (UNREACHABLE, "NoExecute")
            ]
        );
        // Reported again: the kubelet's status update replaces its Ready condition.
        st.objects.get_mut(&key).expect("node")["status"]["conditions"] =
            json!([{"type": "Ready", "status": "True", "lastHeartbeatTime": at(now)}]);
        monitor_node_health(&mut st, now, grace);
        assert_eq!(
            st.objects[&key]["spec"]["taints"],
            json!([{"key": "other", "effect": "NoSchedule"}])
        );
    }
}
