//! The Kubernetes simulator refuses what the real API server refuses. Raw HTTP.

use serde_json::{Value, json};
use sim::k8s::{K8sConfig, K8sSim};

async fn sim() -> K8sSim {
    K8sSim::start(K8sConfig::default()).await.expect("start")
}

/// A request as the cluster admin (`system:masters`), unless the test is about who asks.
async fn call(
    s: &K8sSim,
    method: reqwest::Method,
    url: &str,
    ct: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_as(Some(&s.admin_token()), method, url, ct, body).await
}

async fn call_as(
    token: Option<&str>,
    method: reqwest::Method,
    url: &str,
    ct: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .request(method, url)
        .header("content-type", ct);
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.body(b.to_string());
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

const MERGE: &str = "application/merge-patch+json";
const JSON: &str = "application/json";

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"pool": "a"}}, "spec": {}})
}

#[tokio::test]
async fn provider_id_and_pod_cidr_are_set_once() {
    let s = sim().await;
    let u = format!("{}/api/v1/nodes", s.endpoint());
    let (st, created) = call(&s, reqwest::Method::POST, &u, JSON, Some(node("n1"))).await;
    assert_eq!(st, 201);
    assert_eq!(created["metadata"]["resourceVersion"], "1");
    let (st, _) = call(&s, reqwest::Method::POST, &u, JSON, Some(node("n1"))).await;
    assert_eq!(st, 409, "AlreadyExists");
    let nu = format!("{u}/n1");
    let (st, _) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"spec": {"providerID": "gce://p/z/n1", "podCIDR": "10.4.1.0/24"}})),
    )
    .await;
    assert_eq!(st, 200, "from empty to a value is allowed");
    let (st, body) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"spec": {"providerID": "gce://p/z/other"}})),
    )
    .await;
    assert_eq!(st, 422);
    assert_eq!(body["reason"], "Invalid");
    assert_eq!(
        body["message"],
        "Node \"n1\" is invalid: spec.providerID: Forbidden: node updates may not change providerID except from \"\" to valid"
    );
    assert_eq!(body["details"]["causes"][0]["field"], "spec.providerID");
    let (st, body) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"spec": {"podCIDR": "10.4.2.0/24", "podCIDRs": ["10.4.2.0/24"]}})),
    )
    .await;
    assert_eq!(st, 422);
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("may not change podCIDR"))
    );
    let (st, got) = call(&s, reqwest::Method::GET, &nu, JSON, None).await;
    assert_eq!(st, 200);
    assert_eq!(
        got["spec"]["podCIDRs"],
        json!(["10.4.1.0/24"]),
        "podCIDRs defaulted from podCIDR"
    );
}

#[tokio::test]
async fn stale_resource_versions_conflict() {
    let s = sim().await;
    let u = format!("{}/api/v1/nodes", s.endpoint());
    call(&s, reqwest::Method::POST, &u, JSON, Some(node("n1"))).await;
    let nu = format!("{u}/n1");
    let (_, n) = call(&s, reqwest::Method::GET, &nu, JSON, None).await;
    let rv = n["metadata"]["resourceVersion"].clone();
    let (st, _) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"metadata": {"resourceVersion": rv, "labels": {"x": "1"}}})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, body) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"metadata": {"resourceVersion": rv, "labels": {"x": "2"}}})),
    )
    .await;
    assert_eq!(st, 409);
    assert_eq!(body["reason"], "Conflict");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("the object has been modified"))
    );
    let mut stale = n.clone();
    stale["metadata"]["labels"]["y"] = json!("1");
    let (st, _) = call(&s, reqwest::Method::PUT, &nu, JSON, Some(stale)).await;
    assert_eq!(st, 409, "PUT with a stale resourceVersion");
    let (st, body) = call(&s, reqwest::Method::PATCH, &nu, "application/json-patch+json", Some(json!([{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "add", "path": "/metadata/labels/z", "value": "1"}]))).await;
    assert_eq!(st, 422, "failed JSON patch test: {body}");
    let (st, _) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        "text/plain",
        Some(json!({})),
    )
    .await;
    assert_eq!(st, 415);
    let (st, body) = call(
        &s,
        reqwest::Method::GET,
        &format!("{u}/missing"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 404);
    assert_eq!(body["kind"], "Status");
    assert_eq!(body["reason"], "NotFound");
    assert_eq!(body["message"], "nodes \"missing\" not found");
}

#[tokio::test]
/// A strategic-merge patch of `spec.taints` replaces the list: `NodeSpec.Taints` declares no
/// patch strategy (k8s.io/api core/v1 types.go), so there is nothing to merge by.
async fn taints_are_validated_and_a_strategic_merge_replaces_them() {
    let s = sim().await;
    let u = format!("{}/api/v1/nodes", s.endpoint());
    call(&s, reqwest::Method::POST, &u, JSON, Some(node("n1"))).await;
    let nu = format!("{u}/n1");
    let (st, _) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"spec": {"taints": [{"key": "a", "effect": "Sometimes"}]}})),
    )
    .await;
    assert_eq!(st, 422);
    let (st, _) = call(&s, reqwest::Method::PATCH, &nu, MERGE, Some(json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "a", "effect": "NoSchedule"}]}}))).await;
    assert_eq!(st, 422, "duplicate taint");
    call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        MERGE,
        Some(json!({"spec": {"taints": [{"key": "a", "effect": "NoSchedule"}]}})),
    )
    .await;
    let (st, n) = call(
        &s,
        reqwest::Method::PATCH,
        &nu,
        "application/strategic-merge-patch+json",
        Some(json!({"spec": {"taints": [{"key": "b", "effect": "NoExecute"}]}})),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(
        n["spec"]["taints"],
        json!([{"key": "b", "effect": "NoExecute"}]),
        "replaced, not merged by key"
    );
}

#[tokio::test]
async fn bootstrap_token_secrets_and_events_are_validated() {
    let s = sim().await;
    let u = format!("{}/api/v1/namespaces/kube-system/secrets", s.endpoint());
    let good = json!({"metadata": {"name": "bootstrap-token-abcdef"}, "type": "bootstrap.kubernetes.io/token",
        "stringData": {"token-id": "abcdef", "token-secret": "0123456789abcdef", "expiration": "2030-01-01T00:00:00Z",
        "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
        "auth-extra-groups": "system:bootstrappers:kubeadm:default-node-token"}});
    let (st, created) = call(&s, reqwest::Method::POST, &u, JSON, Some(good.clone())).await;
    assert_eq!(st, 201, "{created}");
    assert!(
        created.get("stringData").is_none() && created["data"]["token-id"] == "YWJjZGVm",
        "stringData is merged into data"
    );
    for (field, value) in [
        ("/stringData/token-secret", json!("SHORT")),
        ("/stringData/token-id", json!("zzzzzz")),
        ("/stringData/expiration", json!("tomorrow")),
        ("/stringData/auth-extra-groups", json!("system:masters")),
        ("/metadata/name", json!("bootstrap-token-TOOLONG")),
    ] {
        let mut bad = good.clone();
        *bad.pointer_mut(field).expect("field") = value;
        if field != "/metadata/name" {
            bad["metadata"]["name"] = json!("bootstrap-token-zyxwvu");
            if field != "/stringData/token-id" {
                bad["stringData"]["token-id"] = json!("zyxwvu");
            }
        }
        let (st, body) = call(&s, reqwest::Method::POST, &u, JSON, Some(bad)).await;
        assert_eq!(st, 422, "{field}: {body}");
    }
    let ev = format!("{}/api/v1/namespaces/kube-system/events", s.endpoint());
    let event = json!({"metadata": {"generateName": "n1."}, "involvedObject": {"kind": "Node", "name": "n1"}, "reason": "NodeWired", "message": "m", "type": "Normal"});
    let (st, _) = call(&s, reqwest::Method::POST, &ev, JSON, Some(event.clone())).await;
    assert_eq!(
        st, 422,
        "an event about a cluster-scoped Node must live in default"
    );
    let (st, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("{}/api/v1/namespaces/default/events", s.endpoint()),
        JSON,
        Some(event),
    )
    .await;
    assert_eq!(st, 201);
}

#[tokio::test]
async fn lists_paginate_and_select() {
    let s = sim().await;
    let u = format!("{}/api/v1/nodes", s.endpoint());
    for i in 0..5 {
        let mut n = node(&format!("n{i}"));
        if i % 2 == 0 {
            n["metadata"]["labels"]["pool"] = json!("b");
        }
        call(&s, reqwest::Method::POST, &u, JSON, Some(n)).await;
    }
    let (_, page) = call(
        &s,
        reqwest::Method::GET,
        &format!("{u}?&limit=2"),
        JSON,
        None,
    )
    .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["metadata"]["remainingItemCount"], 3);
    let token = page["metadata"]["continue"].as_str().expect("continue");
    let (_, page2) = call(
        &s,
        reqwest::Method::GET,
        &format!("{u}?&limit=10&continue={token}"),
        JSON,
        None,
    )
    .await;
    assert_eq!(page2["items"].as_array().map(Vec::len), Some(3));
    assert!(page2["metadata"].get("continue").is_none());
    let (_, sel) = call(
        &s,
        reqwest::Method::GET,
        &format!("{u}?&labelSelector=pool%3Db"),
        JSON,
        None,
    )
    .await;
    assert_eq!(sel["items"].as_array().map(Vec::len), Some(3));
    let (st, _) = call(
        &s,
        reqwest::Method::GET,
        &format!("{u}?&continue=%%%"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 400);
}

/// `limit=0` is no limit; a continue token of a list whose revision etcd compacted answers
/// 410 `Expired` (Kubernetes API concepts, "Retrieving large results sets in chunks").
#[tokio::test]
async fn list_limits_and_expired_continue_tokens() {
    let s = sim().await;
    let u = format!("{}/api/v1/nodes", s.endpoint());
    for n in ["n1", "n2", "n3"] {
        let (st, _) = call(&s, reqwest::Method::POST, &u, JSON, Some(node(n))).await;
        assert_eq!(st, 201);
    }
    let sim_ref = &s;
    let list = |query: String| {
        let url = format!("{u}?{query}");
        async move { call(sim_ref, reqwest::Method::GET, &url, JSON, None).await }
    };
    let token_of = |page: &Value| page["metadata"]["continue"].as_str().map(str::to_string);
    let (st, all) = list("limit=0".into()).await;
    assert_eq!(st, 200);
    assert_eq!(all["items"].as_array().map(Vec::len), Some(3));
    assert!(token_of(&all).is_none());
    let (_, page) = list("limit=1".into()).await;
    let token = token_of(&page).expect("continue");
    let (st, next) = list(format!("limit=1&continue={token}")).await;
    assert_eq!(st, 200, "{next}");
    assert_eq!(next["items"][0]["metadata"]["name"], "n2");
    s.compact_before_next_continue();
    let (st, expired) = list(format!("limit=1&continue={token}")).await;
    assert_eq!(st, 410, "{expired}");
    assert_eq!(expired["reason"], "Expired");
    // A new list (no token) works, and its tokens are valid.
    let (st, again) = list("limit=2".into()).await;
    assert_eq!(st, 200);
    let token = token_of(&again).expect("continue");
    let (st, _) = list(format!("limit=2&continue={token}")).await;
    assert_eq!(st, 200);
}

/// Field selectors: only the labels a kind registers are accepted (`field label not
/// supported` otherwise, 400); Events filter by their `involvedObject` fields, which is how
/// `kubectl describe node` finds a Node's Events. Namespaced resources also list across
/// every namespace at `/api/v1/{resource}`.
#[tokio::test]
async fn field_selectors_are_per_kind() {
    let s = sim().await;
    let base = s.endpoint();
    let ev = format!("{base}/api/v1/namespaces/default/events");
    for (name, uid) in [("n1", "u-1"), ("n2", "u-2")] {
        let e = json!({"metadata": {"generateName": format!("{name}.")}, "involvedObject": {"kind": "Node", "name": name, "uid": uid}, "reason": "NodeWired", "message": "m", "type": "Normal"});
        let (st, _) = call(&s, reqwest::Method::POST, &ev, JSON, Some(e)).await;
        assert_eq!(st, 201);
    }
    let (st, l) = call(
        &s,
        reqwest::Method::GET,
        &format!(
            "{base}/api/v1/events?fieldSelector=involvedObject.kind%3DNode,involvedObject.uid%3Du-2"
        ),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 200, "{l}");
    assert_eq!(l["items"].as_array().map(Vec::len), Some(1), "{l}");
    assert_eq!(l["items"][0]["involvedObject"]["name"], "n2");
    let (_, l) = call(
        &s,
        reqwest::Method::GET,
        &format!("{ev}?fieldSelector=involvedObject.name!%3Dn2"),
        JSON,
        None,
    )
    .await;
    assert_eq!(l["items"].as_array().map(Vec::len), Some(1), "{l}");
    let (st, body) = call(
        &s,
        reqwest::Method::GET,
        &format!("{base}/api/v1/nodes?fieldSelector=spec.providerID%3Dx"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        body["message"],
        "field label not supported: spec.providerID"
    );
    let (st, _) = call(
        &s,
        reqwest::Method::GET,
        &format!("{base}/api/v1/nodes?fieldSelector=metadata.name%3Dn1"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 200);
    // Pods are there to be listed (kubectl describe node does), but none run in the simulation.
    let (st, l) = call(
        &s,
        reqwest::Method::GET,
        &format!("{base}/api/v1/pods?fieldSelector=spec.nodeName%3Dn1,status.phase!%3DSucceeded"),
        JSON,
        None,
    )
    .await;
    assert_eq!((st, l["kind"].clone()), (200, json!("PodList")));
    let (st, _) = call(
        &s,
        reqwest::Method::POST,
        &format!("{base}/api/v1/namespaces/default/pods"),
        JSON,
        Some(json!({"metadata": {"name": "p"}})),
    )
    .await;
    assert_eq!(st, 405);
}

/// Who asks matters: no token is `system:anonymous` (403 but for cluster-info), an unknown
/// token is 401, nodewire's service account gets exactly what `infra/k8s/nodewire-rbac.yaml`
/// grants, and a kubelet's credential (from the TLS bootstrap with a valid bootstrap token)
/// may register and modify only its own Node, never its taints (NodeRestriction).
#[tokio::test]
async fn requests_are_authenticated_and_authorized() {
    let s = sim().await;
    let base = s.endpoint();
    let nodes = format!("{base}/api/v1/nodes");
    let secrets = format!("{base}/api/v1/namespaces/kube-system/secrets");
    let (st, body) = call_as(None, reqwest::Method::GET, &nodes, JSON, None).await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("system:anonymous")),
        "{body}"
    );
    let (st, body) = call_as(Some("made-up"), reqwest::Method::GET, &nodes, JSON, None).await;
    assert_eq!((st, body["reason"].clone()), (401, json!("Unauthorized")));
    let (st, _) = call_as(
        None,
        reqwest::Method::GET,
        &format!("{base}/api"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 403, "discovery is for authenticated users");
    let (st, _) = call_as(
        None,
        reqwest::Method::GET,
        &format!("{base}/version"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let nw = s.nodewire_token();
    let nw = Some(nw.as_str());
    let (st, _) = call_as(nw, reqwest::Method::GET, &format!("{base}/api"), JSON, None).await;
    assert_eq!(st, 200);
    let (st, _) = call_as(nw, reqwest::Method::GET, &nodes, JSON, None).await;
    assert_eq!(st, 200);
    let (st, _) = call_as(nw, reqwest::Method::POST, &nodes, JSON, Some(node("n9"))).await;
    assert_eq!(st, 403, "nodewire never creates Nodes");
    let (st, body) = call_as(
        nw,
        reqwest::Method::GET,
        &format!("{secrets}/bootstrap-token-abcdef"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 403, "list and delete tokens, never read one: {body}");
    assert_eq!(
        body["message"],
        "secrets \"bootstrap-token-abcdef\" is forbidden: User \"system:serviceaccount:kube-system:nodewire\" cannot get resource \"secrets\" in API group \"\" in the namespace \"kube-system\""
    );
    // A kubelet holding its node credential: its own Node only.
    let kubelet = s.node_credential("vm-1");
    let k = Some(kubelet.as_str());
    let tainted = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "vm-1"},
        "spec": {"taints": [{"key": "nodewire.io/unwired", "effect": "NoSchedule"}]}});
    let (st, body) = call_as(k, reqwest::Method::POST, &nodes, JSON, Some(node("vm-2"))).await;
    assert_eq!(st, 403, "another Node: {body}");
    let (st, _) = call_as(k, reqwest::Method::POST, &nodes, JSON, Some(tainted)).await;
    assert_eq!(st, 201, "its own Node, with taints at registration");
    let (st, body) = call_as(
        k,
        reqwest::Method::PATCH,
        &format!("{nodes}/vm-1"),
        MERGE,
        Some(json!({"spec": {"taints": null}})),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("not allowed to modify taints")),
        "{body}"
    );
    let (st, _) = call_as(
        k,
        reqwest::Method::PATCH,
        &format!("{nodes}/vm-1"),
        MERGE,
        Some(json!({"metadata": {"labels": {"a": "b"}}})),
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = call_as(k, reqwest::Method::GET, &secrets, JSON, None).await;
    assert_eq!(st, 403);
}

/// nodewire's ValidatingAdmissionPolicy (`infra/k8s/nodewire-admission-policy.yaml`, loaded by
/// the simulator and evaluated as the API server does: CEL over `object`, `oldObject` and
/// `request`) narrows what RBAC grants its service account: RBAC cannot limit `nodes patch` to
/// two fields or `secrets create/delete` to bootstrap tokens; the policy does. The writes the
/// chain really makes go through it in every end-to-end test; here, the ones it must refuse.
/// <https://kubernetes.io/docs/reference/access-authn-authz/validating-admission-policy/>
#[tokio::test]
async fn the_admission_policy_narrows_nodewires_writes() {
    let s = sim().await;
    let base = s.endpoint();
    let nodes = format!("{base}/api/v1/nodes");
    let secrets = format!("{base}/api/v1/namespaces/kube-system/secrets");
    let tainted = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "vm-1", "labels": {"pool": "a"}},
        "spec": {"taints": [{"key": "nodewire.io/unwired", "effect": "NoSchedule"}]}});
    let (st, _) = call(&s, reqwest::Method::POST, &nodes, JSON, Some(tainted)).await;
    assert_eq!(st, 201);
    let nw = s.nodewire_token();
    let nw = Some(nw.as_str());
    let node_url = format!("{nodes}/vm-1");
    let denied = |st: u16, body: &Value, what: &str| {
        assert_eq!(st, 403, "{what}: {body}");
        assert!(
            // One policy per kind: nodewire-nodes, nodewire-secrets, nodewire-configmaps.
            body["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("ValidatingAdmissionPolicy 'nodewire-")
                    && m.contains("denied request:")),
            "{what}: {body}"
        );
    };
    // Refused: a label, a new taint, a providerID that is not gce://, podCIDR.
    for (what, patch) in [
        ("a label", json!({"metadata": {"labels": {"pool": "b"}}})),
        (
            "a taint added",
            json!({"spec": {"taints": [{"key": "nodewire.io/unwired", "effect": "NoSchedule"},
                                        {"key": "evil", "effect": "NoExecute"}]}}),
        ),
        (
            "a foreign providerID",
            json!({"spec": {"providerID": "aws:///i-1"}}),
        ),
        ("a podCIDR", json!({"spec": {"podCIDR": "10.0.0.0/24"}})),
        ("unschedulable", json!({"spec": {"unschedulable": true}})),
    ] {
        let (st, body) = call_as(nw, reqwest::Method::PATCH, &node_url, MERGE, Some(patch)).await;
        denied(st, &body, what);
    }
    // Allowed: what provider-id and finalize send.
    let (st, body) = call_as(
        nw,
        reqwest::Method::PATCH,
        &node_url,
        MERGE,
        Some(json!({"spec": {"providerID": "gce://example-project/us-central1-a/vm-1"}})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    let (st, body) = call_as(
        nw,
        reqwest::Method::PATCH,
        &node_url,
        MERGE,
        Some(json!({"spec": {"taints": null}})),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // The same writes by the cluster admin are not nodewire's and are not looked at.
    let (st, _) = call(
        &s,
        reqwest::Method::PATCH,
        &node_url,
        MERGE,
        Some(json!({"metadata": {"labels": {"pool": "c"}}})),
    )
    .await;
    assert_eq!(st, 200);
    // Secrets: RBAC lets nodewire create and delete any Secret in kube-system; the policy only
    // its bootstrap tokens.
    let opaque = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "not-a-token", "namespace": "kube-system"},
        "type": "Opaque", "stringData": {"password": "x"}});
    let (st, body) = call_as(
        nw,
        reqwest::Method::POST,
        &secrets,
        JSON,
        Some(opaque.clone()),
    )
    .await;
    denied(st, &body, "an Opaque Secret");
    // A token nodewire mints expires within its TTL (900 s by default).
    let soon = (time::OffsetDateTime::now_utc() + time::Duration::seconds(600))
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut unlabelled = sim::k8s::token_secret("abcdef", "vm-1", "z", &soon);
    unlabelled["metadata"]["labels"] = json!({});
    let (st, body) = call_as(nw, reqwest::Method::POST, &secrets, JSON, Some(unlabelled)).await;
    denied(st, &body, "a token without nodewire's label");
    let mut extra = sim::k8s::token_secret("abcdef", "vm-1", "z", &soon);
    extra["stringData"]["kubeconfig"] = json!("x");
    let (st, body) = call_as(nw, reqwest::Method::POST, &secrets, JSON, Some(extra)).await;
    denied(st, &body, "a token with an extra key");
    let long = sim::k8s::token_secret("abcdef", "vm-1", "z", "2099-01-01T00:00:00Z");
    let (st, body) = call_as(nw, reqwest::Method::POST, &secrets, JSON, Some(long)).await;
    denied(st, &body, "a token that outlives the TTL");
    let token = sim::k8s::token_secret("abcdef", "vm-1", "z", &soon);
    let (st, body) = call_as(nw, reqwest::Method::POST, &secrets, JSON, Some(token)).await;
    assert_eq!(st, 201, "a token as bootstrap mints it: {body}");
    let (st, _) = call(&s, reqwest::Method::POST, &secrets, JSON, Some(opaque)).await;
    assert_eq!(st, 201, "the admin's Secret");
    let (st, body) = call_as(
        nw,
        reqwest::Method::DELETE,
        &format!("{secrets}/not-a-token"),
        JSON,
        None,
    )
    .await;
    denied(st, &body, "deleting another Secret");
    let (st, body) = call_as(
        nw,
        reqwest::Method::DELETE,
        &format!("{secrets}/bootstrap-token-abcdef"),
        JSON,
        None,
    )
    .await;
    assert_eq!(st, 200, "revoking its token: {body}");
    // A Node that is not a GCE VM's is not nodewire's to delete.
    let (st, _) = call(&s, reqwest::Method::POST, &nodes, JSON, Some(node("bare"))).await;
    assert_eq!(st, 201);
    let (st, body) = call_as(
        nw,
        reqwest::Method::DELETE,
        &format!("{nodes}/bare"),
        JSON,
        None,
    )
    .await;
    denied(st, &body, "deleting a Node without a gce:// providerID");
}

/// A policy that does not load makes the simulator refuse every write (fail closed), rather
/// than run without it.
#[tokio::test]
async fn an_admission_policy_that_does_not_load_refuses_every_write() {
    let s = K8sSim::start(K8sConfig {
        admission_manifests: vec![
            sim::k8s::admission::nodewire_admission("example-project", "", 900).replace(
                "request.userInfo.username ==",
                "request.userInfo.username ===",
            ),
        ],
        ..K8sConfig::default()
    })
    .await
    .expect("start");
    let u = format!("{}/api/v1/nodes", s.endpoint());
    let (st, body) = call(&s, reqwest::Method::POST, &u, JSON, Some(node("n1"))).await;
    assert_eq!(st, 500, "{body}");
}

/// A kubelet client certificate is had only through the CSR API and an approval by someone RBAC
/// lets approve that signer; the certificate then authenticates on the HTTPS front as its CN
/// and O (the x509 authenticator), and a certificate from another CA does not get a connection.
#[tokio::test]
async fn client_certificates_come_from_approved_csrs_and_authenticate_as_their_subject() {
    use base64::Engine as _;
    let s = sim().await;
    let front = s.start_tls_front().await.expect("the TLS front");
    let tls = sim::kubelet_cert::K8sTls {
        endpoint: front.endpoint(),
        server_ca_pem: front.ca_pem().to_string(),
    };
    let admin = s.admin_token();
    let (key, request) = sim::kubelet_cert::node_key_and_request("vm-7").expect("request");
    let csrs = format!(
        "{}/apis/certificates.k8s.io/v1/certificatesigningrequests",
        s.endpoint()
    );
    let body = json!({"metadata": {"name": "vm-7-csr"},
        "spec": {"request": base64::engine::general_purpose::STANDARD.encode(&request),
                 "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                 "usages": ["digital signature", "client auth"]}});
    let (st, made) = call_as(Some(&admin), reqwest::Method::POST, &csrs, JSON, Some(body)).await;
    assert_eq!(st, 201, "{made}");
    // nodewire's main account may not approve (only the join service's may, for this signer).
    let nw = s.nodewire_token();
    let approval = json!({"status": {"conditions": [{"type": "Approved", "status": "True",
        "reason": "Test", "message": "approved by the test"}]}});
    let url = format!("{csrs}/vm-7-csr/approval");
    let (st, body) = call_as(
        Some(&nw),
        reqwest::Method::PATCH,
        &url,
        MERGE,
        Some(approval.clone()),
    )
    .await;
    assert_eq!(st, 403, "{body}");
    let join = s.service_account_token("kube-system", "nodewire-join");
    let (st, body) = call_as(
        Some(&join),
        reqwest::Method::PATCH,
        &url,
        MERGE,
        Some(approval.clone()),
    )
    .await;
    assert_eq!(st, 200, "{body}");
    // Removing the approval is refused.
    let (st, body) = call_as(
        Some(&admin),
        reqwest::Method::PATCH,
        &url,
        MERGE,
        Some(json!({"status": {"conditions": []}})),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    // The signer issues it (the controllers run right after the approval).
    let mut cert = None;
    for _ in 0..50 {
        let (_, got) = call_as(
            Some(&admin),
            reqwest::Method::GET,
            &format!("{csrs}/vm-7-csr"),
            JSON,
            None,
        )
        .await;
        if let Some(c) = got["status"]["certificate"].as_str() {
            cert = Some(c.to_string());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let cert = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(cert.expect("signed"))
            .expect("base64"),
    )
    .expect("PEM");
    let kubelet = sim::kubelet_cert::ApiClient::with_certificate(&tls, &cert, &key.serialize_pem())
        .expect("a client");
    let node = |n: &str| json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}});
    let r = kubelet
        .request(reqwest::Method::POST, "/api/v1/nodes")
        .json(&node("vm-8"))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        r.status().as_u16(),
        403,
        "system:node:vm-7 registers only vm-7"
    );
    let r = kubelet
        .request(reqwest::Method::POST, "/api/v1/nodes")
        .json(&node("vm-7"))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 201, "its own Node");
    // A certificate of the same subject from a CA the cluster does not trust: no connection.
    let foreign_ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let foreign = rcgen::Issuer::new(ca, foreign_ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::default();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "system:node:vm-7");
    leaf.distinguished_name
        .push(rcgen::DnType::OrganizationName, "system:nodes");
    let forged = leaf.signed_by(&leaf_key, &foreign).expect("signed");
    let imposter = sim::kubelet_cert::ApiClient::with_certificate(
        &tls,
        &forged.pem(),
        &leaf_key.serialize_pem(),
    )
    .expect("a client");
    let r = imposter
        .request(reqwest::Method::GET, "/api/v1/nodes/vm-7")
        .send()
        .await;
    assert!(
        r.is_err(),
        "a foreign CA's certificate got an answer: {r:?}"
    );
}
