//! Discovery, as kubectl needs it before any request: `/api` (the core group's versions),
//! `/apis` (the other groups: none served here), `/api/v1` (the resources with their kinds,
//! scopes, verbs and short names). Only the legacy (unaggregated) form is served: kubectl asks
//! for the aggregated `APIGroupDiscoveryList` first and accepts `application/json` in the
//! same `Accept` header, which is what an API server without aggregated discovery answers.
//! Shapes: <https://kubernetes.io/docs/reference/using-api/api-concepts/#discovery-api>.

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The resources served, as `/api/v1` lists them.
fn resources() -> Value {
    let all = ["create", "delete", "get", "list", "patch", "update"];
    json!([
        {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
         "verbs": all, "shortNames": ["no"]},
        {"name": "secrets", "singularName": "secret", "namespaced": true, "kind": "Secret",
         "verbs": all},
        {"name": "configmaps", "singularName": "configmap", "namespaced": true,
         "kind": "ConfigMap", "verbs": all, "shortNames": ["cm"]},
        {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
         "verbs": all, "shortNames": ["ev"]},
        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
         "verbs": ["get", "list"], "shortNames": ["po"]},
    ])
}

pub(super) async fn core_versions() -> Response {
    axum::Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    }))
    .into_response()
}

pub(super) async fn groups() -> Response {
    axum::Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})).into_response()
}

pub(super) async fn core_v1() -> Response {
    axum::Json(json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": resources(),
    }))
    .into_response()
}
