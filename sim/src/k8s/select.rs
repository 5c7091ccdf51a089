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
