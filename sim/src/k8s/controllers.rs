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
}
