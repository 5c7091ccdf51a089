//! Server-side printing: when a client asks for `application/json;as=Table;v=v1;g=meta.k8s.io`
//! (kubectl get does), the API server answers a `meta.k8s.io/v1` `Table` with the columns of
//! the kind's printer (pkg/printers/internalversion/printers.go), each row carrying the
//! object's metadata as `PartialObjectMetadata`. Without that, kubectl falls back to NAME and
//! AGE only. Shape: <https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables>.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Whether the `Accept` header asks for a Table.
pub(super) fn wanted(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table") && first.contains("g=meta.k8s.io"))
}

/// `kubectl`'s short age: `45s`, `3m12s`, `44m`, `5h3m`, `20h`, `3d4h`, `12d`.
fn age(created: &str, now: OffsetDateTime) -> String {
    let Ok(t) = OffsetDateTime::parse(created, &Rfc3339) else {
        return "<unknown>".into();
    };
    let s = (now - t).whole_seconds().max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match s {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

fn text<'a>(o: &'a Value, p: &str) -> &'a str {
    o.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn count(o: &Value, p: &str) -> usize {
    o.pointer(p)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len)
}

fn node_status(n: &Value) -> String {
    let ready = n
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .map(|c| c["status"].as_str().unwrap_or(""));
    let mut s = match ready {
        Some("True") => "Ready".to_string(),
        None => "Unknown".to_string(),
        Some(_) => "NotReady".to_string(),
    };
    if n.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        s.push_str(",SchedulingDisabled");
    }
    s
}

fn node_roles(n: &Value) -> String {
    let roles: Vec<&str> = n
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn address(n: &Value, kind: &str) -> String {
    n.pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|a| a["type"] == kind))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("<none>")
        .to_string()
}

/// `(columns as (name, type, priority), cells)` of one object of `resource`.
fn columns(resource: &str) -> Vec<(&'static str, &'static str, u8)> {
    match resource {
        "nodes" => vec![
            ("Name", "string", 0),
            ("Status", "string", 0),
            ("Roles", "string", 0),
            ("Age", "string", 0),
            ("Version", "string", 0),
            ("Internal-IP", "string", 1),
            ("External-IP", "string", 1),
            ("OS-Image", "string", 1),
            ("Kernel-Version", "string", 1),
            ("Container-Runtime", "string", 1),
        ],
        "secrets" => vec![
            ("Name", "string", 0),
            ("Type", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        "configmaps" => vec![
            ("Name", "string", 0),
            ("Data", "string", 0),
            ("Age", "string", 0),
        ],
        "events" => vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Message", "string", 0),
        ],
        _ => vec![("Name", "string", 0), ("Age", "string", 0)],
    }
}

fn cells(resource: &str, o: &Value, now: OffsetDateTime) -> Vec<Value> {
    let name = json!(text(o, "/metadata/name"));
    let created = age(text(o, "/metadata/creationTimestamp"), now);
    match resource {
        "nodes" => vec![
            name,
            json!(node_status(o)),
            json!(node_roles(o)),
            json!(created),
            json!(text(o, "/status/nodeInfo/kubeletVersion")),
            json!(address(o, "InternalIP")),
            json!(address(o, "ExternalIP")),
            json!(text(o, "/status/nodeInfo/osImage")),
            json!(text(o, "/status/nodeInfo/kernelVersion")),
            json!(text(o, "/status/nodeInfo/containerRuntimeVersion")),
        ],
        "secrets" => vec![
            name,
            json!(text(o, "/type")),
            json!(count(o, "/data")),
            json!(created),
        ],
        "configmaps" => vec![name, json!(count(o, "/data")), json!(created)],
        "events" => {
            let last = [o.pointer("/lastTimestamp"), o.pointer("/eventTime")]
                .into_iter()
                .flatten()
                .find_map(Value::as_str)
                .map_or_else(|| created.clone(), |t| age(t, now));
            let object = format!(
                "{}/{}",
                text(o, "/involvedObject/kind").to_lowercase(),
                text(o, "/involvedObject/name")
            );
            vec![
                json!(last),
                json!(text(o, "/type")),
                json!(text(o, "/reason")),
                json!(object),
                json!(text(o, "/message")),
            ]
        }
        _ => vec![name, json!(created)],
    }
}

/// The Table for `body` (one object or a `…List`).
pub(super) fn render(resource: &str, body: &Value) -> Value {
    let now = OffsetDateTime::now_utc();
    let items: Vec<&Value> = match body.get("items").and_then(Value::as_array) {
        Some(items) => items.iter().collect(),
        None => vec![body],
    };
    let defs: Vec<Value> = columns(resource)
        .into_iter()
        .map(|(name, ty, priority)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = items
        .into_iter()
        .map(|o| {
            json!({"cells": cells(resource, o, now), "object": {
                "kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata").cloned().unwrap_or(Value::Null)}})
        })
        .collect();
    let mut meta = json!({});
    if let Some(m) = body.get("metadata").filter(|_| body.get("items").is_some()) {
        meta = m.clone();
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta,
        "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = OffsetDateTime::parse("2026-01-10T12:00:00Z", &Rfc3339).expect("time");
        for (t, want) in [
            ("2026-01-10T11:59:15Z", "45s"),
            ("2026-01-10T11:56:48Z", "3m12s"),
            ("2026-01-10T11:16:00Z", "44m"),
            ("2026-01-10T06:57:00Z", "5h3m"),
            ("2026-01-09T16:00:00Z", "20h"),
            ("2026-01-07T08:00:00Z", "3d4h"),
            ("2025-12-29T12:00:00Z", "12d"),
        ] {
            assert_eq!(age(t, now), want, "{t}");
        }
        assert_eq!(age("yesterday", now), "<unknown>");
    }

    #[test]
    fn a_node_list_becomes_rows() {
        let list = json!({"kind": "NodeList", "metadata": {"resourceVersion": "9"}, "items": [
            {"metadata": {"name": "n1", "labels": {"node-role.kubernetes.io/control-plane": ""}},
             "status": {"conditions": [{"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.33.0"}}},
            {"metadata": {"name": "n2"}, "spec": {"unschedulable": true}}]});
        let t = render("nodes", &list);
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        assert_eq!(t["rows"][0]["cells"][1], "Ready");
        assert_eq!(t["rows"][0]["cells"][2], "control-plane");
        assert_eq!(t["rows"][0]["cells"][4], "v1.33.0");
        assert_eq!(t["rows"][1]["cells"][1], "Unknown,SchedulingDisabled");
        assert_eq!(t["rows"][1]["object"]["metadata"]["name"], "n2");
        assert!(wanted(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
        ));
        assert!(!wanted("application/json"));
    }
}
