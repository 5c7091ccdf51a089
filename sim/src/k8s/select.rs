//! Lists: equality-based label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`; set-based ones are
//! refused with 400), field selectors over the fields each kind supports (any other field label
//! is refused with 400 `field label not supported`, as the API server does), and pagination with `limit` and an opaque `continue` token, with
//! `remainingItemCount` while items remain.

use axum::http::StatusCode;
use base64::Engine as _;
use serde_json::{Value, json};

use super::{ApiError, Store};
use crate::server::Query;

fn selector_matches(
    sel: &str,
    labels: Option<&serde_json::Map<String, Value>>,
) -> Result<bool, ApiError> {
    for term in sel.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let ok = if let Some((k, v)) = term.split_once("!=") {
            get(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            get(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            get(k.trim()).is_none()
        } else if term.contains(' ') || term.contains('(') {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: set-based selector {term:?} is not supported by the simulator"
            )));
        } else {
            get(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The value of a field label for a field selector, `None` when the kind does not support the
/// label. Supported labels per kind, as kube-apiserver registers them (`metadata.name` and
/// `metadata.namespace` everywhere; pkg/registry/core/*/strategy.go for the rest).
fn field_value(resource: &str, obj: &Value, label: &str) -> Option<String> {
    let s = |p: &str| {
        obj.pointer(p)
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                _ => String::new(),
            })
            .unwrap_or_default()
    };
    let pointer = match (resource, label) {
        (_, "metadata.name") => "/metadata/name",
        (_, "metadata.namespace") => "/metadata/namespace",
        ("nodes", "spec.unschedulable") => {
            return Some(
                obj.pointer("/spec/unschedulable")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string(),
            );
        }
        ("secrets", "type") => "/type",
        ("events", "type") => "/type",
        ("events", "reason") => "/reason",
        ("events", "source") => "/source/component",
        ("events", "reportingComponent") => "/reportingComponent",
        ("events", l) if l.starts_with("involvedObject.") => {
            let f = l.trim_start_matches("involvedObject.");
            match f {
                "kind" | "namespace" | "name" | "uid" | "apiVersion" | "resourceVersion"
                | "fieldPath" => return Some(s(&format!("/involvedObject/{f}"))),
                _ => return None,
            }
        }
        // pkg/registry/certificates/certificates/strategy.go, SelectableFields.
        ("certificatesigningrequests", "spec.signerName") => "/spec/signerName",
        ("pods", "spec.nodeName") => "/spec/nodeName",
        ("pods", "spec.restartPolicy") => "/spec/restartPolicy",
        ("pods", "spec.schedulerName") => "/spec/schedulerName",
        ("pods", "spec.serviceAccountName") => "/spec/serviceAccountName",
        ("pods", "status.phase") => "/status/phase",
        ("pods", "status.podIP") => "/status/podIP",
        _ => return None,
    };
    Some(s(pointer))
}

/// Parses a field selector into `(label, value, equal)` terms, refusing unsupported labels.
fn field_terms(resource: &str, sel: &str) -> Result<Vec<(String, String, bool)>, ApiError> {
    let probe = json!({});
    sel.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| {
            let (label, value, equal) = if let Some((k, v)) = term.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, v, true)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid field selector: {term:?}: invalid selector: '{term}'; can't understand '{term}'"
                )));
            };
            let label = label.trim();
            if field_value(resource, &probe, label).is_none() {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {label}"
                )));
            }
            Ok((label.to_string(), value.trim().to_string(), equal))
        })
        .collect()
}

/// The `{kind}List` of `resource` in `ns` (every namespace when `None`), in key order.
pub(super) fn list(
    st: &mut Store,
    resource: &str,
    kind: &str,
    ns: Option<&str>,
    q: &Query,
) -> Result<(StatusCode, Value), ApiError> {
    // `limit=0` (or none) means no limit (ListOptions.limit).
    let limit = match q.get("limit").filter(|v| !v.is_empty()) {
        None => usize::MAX,
        Some(v) => match v
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?
        {
            0 => usize::MAX,
            n => n,
        },
    };
    // A continue token is `REVISION/KEY`: where the list started, and the last key served.
    let continued = match q.get("continue").filter(|v| !v.is_empty()) {
        None => None,
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| {
                    let (rv, key) = s.split_once('|')?;
                    Some((rv.parse::<u64>().ok()?, key.to_string()))
                })
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?,
        ),
    };
    if let Some((started, _)) = &continued {
        if st.compact_before_next_continue {
            st.compact_before_next_continue = false;
            // Writes went on meanwhile and etcd compacted up to now: every list that started
            // before is too old; a list started now is not.
            st.resource_version += 1;
            st.compacted = st.resource_version;
        }
        if *started < st.compacted {
            // kube-apiserver's answer once etcd has compacted the list's revision.
            return Err(ApiError::new(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. \
                 You can start a new list without the continue parameter, or use the continue token \
                 in this response to retrieve the remainder of the results. Continuing with the \
                 provided token results in an inconsistent list - objects that were created, \
                 modified, or deleted between the time the first chunk was returned and now may \
                 show up in the list.",
            ));
        }
    }
    let started = continued
        .as_ref()
        .map_or(st.resource_version, |(rv, _)| *rv);
    let after = continued.map(|(_, key)| key);
    let sel = q.get("labelSelector").cloned().unwrap_or_default();
    let fields = field_terms(resource, q.get("fieldSelector").map_or("", String::as_str))?;
    let mut items = Vec::new();
    let mut last = None;
    let mut remaining = 0usize;
    for ((r, n, name), obj) in &st.objects {
        if r != resource || ns.is_some_and(|ns| ns != n) {
            continue;
        }
        let key = format!("{n}/{name}");
        if after.as_deref().is_some_and(|a| key.as_str() <= a) {
            continue;
        }
        if !selector_matches(
            &sel,
            obj.pointer("/metadata/labels").and_then(Value::as_object),
        )? {
            continue;
        }
        if !fields.iter().all(|(label, value, equal)| {
            (field_value(resource, obj, label).as_deref() == Some(value.as_str())) == *equal
        }) {
            continue;
        }
        if items.len() < limit {
            items.push(obj.clone());
            last = Some(key);
        } else {
            remaining += 1;
        }
    }
    let mut meta = json!({"resourceVersion": st.resource_version.to_string()});
    if remaining > 0
        && let Some(l) = last
    {
        meta["continue"] = json!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{started}|{l}"))
        );
        meta["remainingItemCount"] = json!(remaining);
    }
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": meta, "items": items}),
    ))
}
