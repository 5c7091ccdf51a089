//! Discovery, as kubectl needs it before any request: `/api` (the core group's versions),
//! `/apis` (the other groups: none served here), `/api/v1` (the resources with their kinds,
//! scopes, verbs and short names). Only the legacy (unaggregated) form is served: kubectl asks
//! for the aggregated `APIGroupDiscoveryList` first and accepts `application/json` in the
//! same `Accept` header, which is what an API server without aggregated discovery answers.
//! Shapes: <https://kubernetes.io/docs/reference/using-api/api-concepts/#discovery-api>.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Sim;
use crate::server::{Answer, Call};

/// Discovery answers only authenticated users (kube-apiserver's `system:discovery` role is
/// bound to `system:authenticated`).
fn gate(sim: &Sim, call: &Call, body: Value) -> Response {
    match sim.authenticated(call) {
        Ok(_) => axum::Json(body).into_response(),
        Err(e) => Answer::from(e).into_response(),
    }
}

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

pub(super) async fn core_versions(State(sim): State<Arc<Sim>>, call: Call) -> Response {
    let body = json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    });
    gate(&sim, &call, body)
}

pub(super) async fn groups(State(sim): State<Arc<Sim>>, call: Call) -> Response {
    gate(
        &sim,
        &call,
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
    )
}

pub(super) async fn core_v1(State(sim): State<Arc<Sim>>, call: Call) -> Response {
    let body = json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": resources(),
    });
    gate(&sim, &call, body)
}
