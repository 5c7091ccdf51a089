//! Contract tests: the production Kubernetes client against the API server simulator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use integration_tests::simfix::*;
use nodewire::act::k8s::{KubeError, WriteOutcome};
use nodewire::bus::InProcessBus;
use nodewire::error::Classify as _;
use nodewire::event::{Decode, NodeEvent, NodeEvents};
use nodewire::names::InstanceRef;
use nodewire::names::UNWIRED_TAINT;
use serde_json::json;
use sim::faults::{FaultSpec, InjectedError};
use sim::k8s::{AuditSink, IpamConfig, K8sConfig};

fn node(name: &str, taints: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name}, "spec": {"taints": taints}})
}

fn count(sim: &sim::k8s::K8sSim, method: &str, status: Option<u16>) -> usize {
    sim.chaos()
        .requests()
        .iter()
        .filter(|r| r.method == method && status.is_none_or(|s| r.status == s))
        .count()
}

#[tokio::test]
async fn nodes_list_in_pages() {
    let sim = k8s_sim(K8sConfig::default()).await;
    for i in 0..1201 {
        sim.seed("nodes", "", node(&format!("n-{i:04}"), json!([])))
            .expect("seed");
    }
    let k = kube_client(&sim, fast_kube_policy()).await;
    let all = k.list_nodes(None).await.expect("list").items;
    assert_eq!(all.len(), 1201);
    let lists: Vec<_> = sim
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "nodes.list")
        .collect();
    assert_eq!(lists.len(), 3);
    assert!(lists.iter().all(|r| r.query.contains("limit=500")));
    assert!(k.get_node("n-0001").await.expect("get").is_some());
    assert!(k.get_node("absent").await.expect("404 is None").is_none());
}

/// A continue token expires when etcd compacts the revision the list started at: the API
/// server answers 410 `Expired` and the client must start the list again (Kubernetes API
/// concepts, "Retrieving large results sets in chunks"; issue 9, item 13).
#[tokio::test]
async fn an_expired_continue_token_restarts_the_list() {
    let sim = k8s_sim(K8sConfig::default()).await;
    for i in 0..1001 {
        sim.seed("nodes", "", node(&format!("n-{i:04}"), json!([])))
            .expect("seed");
    }
    let k = kube_client(&sim, fast_kube_policy()).await;
    sim.compact_before_next_continue();
    let listed = k.list_nodes(None).await.expect("list");
    assert_eq!(listed.items.len(), 1001, "every Node once, nothing doubled");
    let mut names: Vec<&str> = listed.items.iter().map(|n| n.name.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 1001);
    assert_eq!(count(&sim, "nodes.list", Some(410)), 1, "one page expired");
    assert_eq!(
        listed.pages, 5,
        "page 1, the expired page 2, then the three pages of the new list"
    );
}

#[tokio::test]
async fn provider_id_is_set_once() {
    let sim = k8s_sim(K8sConfig::default()).await;
    sim.seed("nodes", "", node("n1", json!([]))).expect("seed");
    let k = kube_client(&sim, fast_kube_policy()).await;
    let id = "gce://example-project/us-central1-a/n1";
    assert_eq!(
        k.set_provider_id("n1", id).await.expect("set"),
        WriteOutcome::Changed
    );
    assert_eq!(
        k.set_provider_id("n1", id).await.expect("again"),
        WriteOutcome::Unchanged
    );
    assert_eq!(count(&sim, "nodes.patch", None), 1, "no second write");
    let err = k
        .set_provider_id("n1", "gce://example-project/us-central1-a/other")
        .await
        .expect_err("different");
    assert!(matches!(err, KubeError::ProviderIdConflict(_)), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("delete the Node"), "{err}");
    assert_eq!(
        count(&sim, "nodes.patch", None),
        1,
        "the conflict is detected before writing"
    );
    let patch = &sim
        .chaos()
        .requests()
        .into_iter()
        .find(|r| r.method == "nodes.patch")
        .expect("patch")
        .body;
    assert!(
        patch["metadata"]["resourceVersion"].is_string(),
        "writes carry the resourceVersion: {patch}"
    );
    assert!(matches!(
        k.set_provider_id("absent", id).await,
        Err(KubeError::NotFound { .. })
    ));
}

/// nodewire only ever removes its own taint (its admission policy refuses any other change to
/// taints), while another writer — here the cluster admin, cordoning or clearing a taint of its
/// own — may change the Node's taints at the same moment: neither change is lost.
#[tokio::test]
async fn taints_change_without_losing_a_concurrent_writers_taint() {
    let sim = k8s_sim(K8sConfig::default()).await;
    sim.seed(
        "nodes",
        "",
        node(
            "n1",
            json!([{"key": "keep", "effect": "NoSchedule"},
                   {"key": "other", "effect": "NoExecute"},
                   {"key": UNWIRED_TAINT, "effect": "NoSchedule"}]),
        ),
    )
    .expect("seed");
    // Both writers read the same resourceVersion; their patches are held and then handled one
    // after the other, so the second one conflicts (409), re-reads and recomputes.
    sim.chaos().set_faults(
        "nodes.patch",
        FaultSpec {
            latency: Duration::from_millis(200),
            ..FaultSpec::default()
        },
    );
    let k = kube_client(&sim, fast_kube_policy()).await;
    let admin = nodewire::act::k8s::Kube::new(
        &nodewire::config::KubeSettings::Direct {
            url: sim.endpoint(),
            token: Some(sim.admin_token()),
            token_file: None,
            ca_file: None,
            ca_pem: None,
        },
        fast_kube_policy(),
    )
    .await
    .expect("the admin's client");
    let (a, b) = tokio::join!(
        k.remove_taint("n1", UNWIRED_TAINT),
        admin.remove_taint("n1", "other")
    );
    assert_eq!(a.expect("remove unwired"), WriteOutcome::Changed);
    assert_eq!(b.expect("remove other"), WriteOutcome::Changed);
    assert!(
        count(&sim, "nodes.patch", Some(409)) >= 1,
        "a conflict happened"
    );
    let n = k.get_node("n1").await.expect("get").expect("exists");
    let keys: Vec<&str> = n.taints.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["keep"], "neither removal undid the other");
    // nodewire itself may not remove another taint (issue 20, item 5).
    assert!(k.remove_taint("n1", "keep").await.is_err());
    sim.chaos().clear_faults();
    assert_eq!(
        k.remove_taint("n1", UNWIRED_TAINT).await.expect("again"),
        WriteOutcome::Unchanged
    );
}

#[tokio::test]
async fn transient_errors_are_retried_within_the_bound() {
    let sim = k8s_sim(K8sConfig::default()).await;
    sim.seed("nodes", "", node("n1", json!([]))).expect("seed");
    let mut policy = fast_kube_policy();
    policy.retry.max_attempts = 3;
    let k = kube_client(&sim, policy).await;
    sim.chaos().set_faults(
        "nodes.get",
        FaultSpec {
            error_rate: 1.0,
            errors: vec![InjectedError::Unavailable],
            ..FaultSpec::default()
        },
    );
    let started = Instant::now();
    let err = k.get_node("n1").await.expect_err("always 503");
    assert!(
        matches!(err, KubeError::Transient { attempts: 3, .. }) && err.is_retryable(),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    sim.chaos().set_default_faults(FaultSpec {
        error_rate: 0.5,
        errors: vec![InjectedError::TooManyRequests, InjectedError::Unavailable],
        ..FaultSpec::default()
    });
    sim.chaos().set_faults(
        "nodes.get",
        FaultSpec {
            error_rate: 0.5,
            ..FaultSpec::default()
        },
    );
    let k = kube_client(&sim, fast_kube_policy()).await;
    assert_eq!(
        k.set_provider_id("n1", "gce://example-project/us-central1-a/n1")
            .await
            .expect("eventually"),
        WriteOutcome::Changed
    );
}

#[tokio::test]
async fn bootstrap_tokens_and_cluster_info() {
    let sim = k8s_sim(K8sConfig::default()).await;
    let ca = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/test-ca.crt"),
    )
    .expect("ca");
    let pin = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/test-ca.pin"),
    )
    .expect("pin");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.128.0.2:6443\n    certificate-authority-data: {}\n",
        base64::engine::general_purpose::STANDARD.encode(&ca)
    );
    let k = kube_client(&sim, fast_kube_policy()).await;
    assert!(matches!(
        k.cluster_info().await,
        Err(KubeError::ClusterInfo(_))
    ));
    sim.seed(
        "configmaps",
        "kube-public",
        json!({"metadata": {"name": "cluster-info"}, "data": {"kubeconfig": kubeconfig}}),
    )
    .expect("seed");
    let ci = k.cluster_info().await.expect("cluster-info");
    assert_eq!(ci.server, "https://10.128.0.2:6443");
    assert_eq!(ci.ca_pin, format!("sha256:{}", pin.trim()));

    let vm = InstanceRef::new(P, Z, "k8s-worker-1").expect("ref");
    let t = k
        .create_bootstrap_token(
            &vm,
            Some("2525602744967966726"),
            Duration::from_secs(900),
            "system:bootstrappers:kubeadm:default-node-token",
        )
        .await
        .expect("token");
    let secret = sim
        .object(
            "secrets",
            "kube-system",
            &format!("bootstrap-token-{}", t.id),
        )
        .expect("stored");
    assert_eq!(secret["type"], "bootstrap.kubernetes.io/token");
    let data = |k: &str| {
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(secret["data"][k].as_str().expect(k))
                .expect("b64"),
        )
        .expect("utf8")
    };
    assert_eq!(
        format!("{}.{}", data("token-id"), data("token-secret")),
        t.expose()
    );
    assert!(data("description").contains("2525602744967966726"));
    assert_eq!(data("usage-bootstrap-authentication"), "true");
    let exp = time::OffsetDateTime::parse(
        &data("expiration"),
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let ttl = exp - time::OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::seconds(880) && ttl <= time::Duration::seconds(900),
        "{ttl}"
    );
    // Through the API server's whole create path (stringData folded into data, the
    // creationTimestamp set, then admission), a token that outlives the configured TTL is
    // refused by the admission policy (issue 20, item 5).
    let long = k
        .create_bootstrap_token(
            &vm,
            Some("2525602744967966726"),
            Duration::from_secs(2 * 86_400),
            "system:bootstrappers:kubeadm:default-node-token",
        )
        .await;
    assert!(
        matches!(&long, Err(e) if e.to_string().contains("expire within")),
        "{long:?}"
    );
    let mine = k
        .list_bootstrap_tokens(Some("k8s-worker-1"))
        .await
        .expect("list")
        .items;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].id, t.id);
    // Listed metadata-only (issue 10, item 5): the expiration comes from the annotation, the
    // VM's id from its label, and no token secret ever crossed the wire to nodewire.
    assert_eq!(
        mine[0].expiration.as_deref(),
        Some(data("expiration").as_str())
    );
    assert_eq!(mine[0].instance_id.as_deref(), Some("2525602744967966726"));
    let lists: Vec<_> = sim
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "secrets.list")
        .collect();
    assert!(!lists.is_empty());
    for l in &lists {
        assert_eq!(
            l.response["kind"], "PartialObjectMetadataList",
            "{}",
            l.response
        );
        assert!(
            !l.response.to_string().contains(&data("token-secret")),
            "a token secret was listed: {}",
            l.response
        );
    }
    assert!(
        k.list_bootstrap_tokens(Some("other"))
            .await
            .expect("list")
            .items
            .is_empty()
    );
    assert_eq!(
        k.delete_bootstrap_token(&t.id).await.expect("delete"),
        WriteOutcome::Changed
    );
    assert_eq!(
        k.delete_bootstrap_token(&t.id).await.expect("again"),
        WriteOutcome::Unchanged
    );
    assert!(
        !format!("{t:?}").contains(&data("token-secret")),
        "Debug never shows the secret"
    );
}

#[tokio::test]
async fn ipam_and_audit_pipeline_speak_our_decoder() {
    let bus = InProcessBus::new();
    let topic = "projects/example-project/topics/k8s-audit";
    let mut rx = bus.subscribe(topic);
    let sim = k8s_sim(K8sConfig {
        ipam: Some(IpamConfig {
            cluster_cidr: cidr("10.4.0.0/16"),
            node_mask: 24,
            delay: Duration::from_millis(50),
        }),
        audit: Some(AuditSink {
            bus: Arc::new(bus.clone()),
            topic: topic.into(),
            delay: std::time::Duration::ZERO,
        }),
        ..K8sConfig::default()
    })
    .await;
    // The kubelet registers with its node credential.
    let kubelet = sim.node_credential("k8s-worker-1");
    let resp = reqwest::Client::new()
        .post(format!("{}/api/v1/nodes", sim.endpoint()))
        .bearer_auth(kubelet)
        .json(&json!({"metadata": {"name": "k8s-worker-1"}, "spec": {"providerID": "gce://example-project/us-central1-a/k8s-worker-1"}}))
        .send()
        .await
        .expect("create");
    assert_eq!(resp.status().as_u16(), 201);
    let mut kinds = Vec::new();
    let mut users = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("entry");
        let evs = NodeEvents::decode(&d.message.data)
            .expect("our decoder reads the simulator's audit entries");
        kinds.extend(evs.events);
        let raw: serde_json::Value = serde_json::from_slice(&d.message.data).expect("json");
        users.push(raw["jsonPayload"]["user"]["username"].clone());
    }
    // Each entry names who really acted: the kubelet, then the node IPAM controller.
    assert_eq!(
        users,
        [
            json!("system:node:k8s-worker-1"),
            json!("system:serviceaccount:kube-system:node-controller")
        ],
        "{users:?}"
    );
    assert!(
        matches!(&kinds[0], NodeEvent::Registered(c) if c.instance.as_ref().is_some_and(|i| i.name() == "k8s-worker-1")),
        "{kinds:?}"
    );
    assert!(
        matches!(&kinds[1], NodeEvent::CidrAssigned(c) if c.pod_cidr == Some(cidr("10.4.0.0/24"))),
        "{kinds:?}"
    );
    let k = kube_client(&sim, fast_kube_policy()).await;
    assert_eq!(
        k.get_node("k8s-worker-1")
            .await
            .expect("get")
            .expect("exists")
            .pod_cidr
            .as_deref(),
        Some("10.4.0.0/24")
    );
    assert_eq!(
        k.delete_node("k8s-worker-1").await.expect("delete"),
        WriteOutcome::Changed
    );
    assert_eq!(
        k.delete_node("k8s-worker-1").await.expect("again"),
        WriteOutcome::Unchanged
    );
    let d = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("entry");
    let evs = NodeEvents::decode(&d.message.data).expect("decodes");
    assert!(matches!(evs.events[0], NodeEvent::Deleted(_)));
}

#[tokio::test]
async fn node_events_are_recorded_in_default() {
    let sim = k8s_sim(K8sConfig::default()).await;
    let node = sim
        .seed("nodes", "", serde_json::json!({"metadata": {"name": "n1"}}))
        .expect("node");
    let k = kube_client(&sim, fast_kube_policy()).await;
    k.node_event(
        "n1",
        "Warning",
        "AliasRangeInUse",
        "alias 10.4.1.0/24 is held by vm-b",
    )
    .await
    .expect("event");
    let evs = sim.objects("events");
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["metadata"]["namespace"], "default");
    assert_eq!(evs[0]["involvedObject"]["kind"], "Node");
    assert_eq!(evs[0]["reason"], "AliasRangeInUse");
    // kubectl describe node selects the Node's Events by involvedObject.uid as well.
    assert_eq!(evs[0]["involvedObject"]["uid"], node["metadata"]["uid"]);
}

/// A real API server speaks only HTTPS: the production client, given the cluster's CA (as
/// `NODEWIRE_KUBE_CA_FILE` gives it) and a bearer token, talks to the simulator's HTTPS front;
/// with another CA it refuses to.
#[tokio::test]
async fn the_client_speaks_tls_with_the_clusters_ca() {
    use nodewire::act::k8s::Kube;
    use nodewire::config::KubeSettings;
    let sim = k8s_sim(K8sConfig::default()).await;
    sim.seed("nodes", "", json!({"metadata": {"name": "n1"}}))
        .expect("node");
    let front = sim.start_tls_front().await.expect("https front");
    let k = Kube::new(
        &KubeSettings::Direct {
            url: front.endpoint(),
            token: Some(sim.nodewire_token()),
            token_file: None,
            ca_file: None,
            ca_pem: Some(front.ca_pem().to_string()),
        },
        fast_kube_policy(),
    )
    .await
    .expect("client");
    let n = k.get_node("n1").await.expect("get over TLS");
    assert!(n.is_some());
    let other = sim.start_tls_front().await.expect("another front");
    let wrong = Kube::new(
        &KubeSettings::Direct {
            url: front.endpoint(),
            token: Some(sim.nodewire_token()),
            token_file: None,
            ca_file: None,
            ca_pem: Some(other.ca_pem().to_string()),
        },
        fast_kube_policy(),
    )
    .await
    .expect("client");
    assert!(
        wrong.get_node("n1").await.is_err(),
        "a server whose certificate the CA did not sign is refused"
    );
}

/// Issue 10, item 7: two sweeps never run at once. The lock is an update of one ConfigMap
/// under its resourceVersion: the second sweep sees it held; an expired lock (a sweep that
/// crashed) is free again; a release keeps what the sweep remembers (the cooldown).
#[tokio::test]
async fn the_sweep_lock_admits_one_sweep_at_a_time() {
    let sim = k8s_sim(K8sConfig::default()).await;
    let k = kube_client(&sim, fast_kube_policy()).await;
    let hold = Duration::from_secs(600);
    let now = 1_800_000_000;
    let mut a = k
        .acquire_sweep("sweep-a", now, hold)
        .await
        .expect("read")
        .expect("free: a takes it");
    assert!(
        k.acquire_sweep("sweep-b", now + 1, hold)
            .await
            .expect("read")
            .is_none(),
        "held by a"
    );
    a.healed
        .insert("projects/p/zones/z/instances/vm".into(), now);
    k.release_sweep(a).await.expect("release");
    let b = k
        .acquire_sweep("sweep-b", now + 2, hold)
        .await
        .expect("read")
        .expect("released: b takes it");
    assert_eq!(
        b.healed.get("projects/p/zones/z/instances/vm"),
        Some(&now),
        "the cooldown memory survives the release"
    );
    // b crashes without releasing: the lock expires.
    assert!(
        k.acquire_sweep("sweep-c", now + 3, hold)
            .await
            .expect("read")
            .is_none()
    );
    assert!(
        k.acquire_sweep("sweep-c", now + 700, hold)
            .await
            .expect("read")
            .is_some(),
        "an expired lock is free"
    );
    let cm = sim
        .object("configmaps", "kube-system", nodewire::act::k8s::SWEEP_STATE)
        .expect("the ConfigMap");
    assert_eq!(cm["data"]["holder"], "sweep-c");
}
