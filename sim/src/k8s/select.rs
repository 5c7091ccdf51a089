//! Lists: equality-based label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`; set-based ones are
//! refused with 400), and pagination with `limit` and an opaque `continue` token, with
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

/// The `{kind}List` of `resource` in `ns` (every namespace when `None`), in key order.
pub(super) fn list(
    st: &Store,
    resource: &str,
    kind: &str,
    ns: Option<&str>,
    q: &Query,
) -> Result<(StatusCode, Value), ApiError> {
    let limit = match q.get("limit").filter(|v| !v.is_empty()) {
        None => usize::MAX,
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {v:?}")))?
            .max(1),
    };
    let after = match q.get("continue").filter(|v| !v.is_empty()) {
        None => None,
        Some(t) => Some(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::bad_request("continue key is not valid: illegal base64 data")
                })?,
        ),
    };
    let sel = q.get("labelSelector").cloned().unwrap_or_default();
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
        meta["continue"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(l));
        meta["remainingItemCount"] = json!(remaining);
    }
    Ok((
        StatusCode::OK,
        json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": meta, "items": items}),
    ))
}
