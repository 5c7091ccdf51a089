//! The RBAC manifests nodewire ships (`infra/k8s/nodewire-rbac.yaml`) are what the Kubernetes
//! simulator enforces for nodewire's service account, so every end-to-end test proves they are
//! sufficient. This file proves the other half: take one verb the code needs out of them and
//! the chain stops at exactly that request with a 403, and the VM is not wired.

use std::time::Duration;

use integration_tests::simfix::P;
use integration_tests::world::{World, WorldOptions};
use sim::k8s::rbac::NODEWIRE_RBAC;

const ZONE: &str = "us-central1-a";

/// The shipped manifests with one verb removed from the rule whose `verbs:` line is `line`.
fn without(line: &str, verb: &str) -> &'static str {
    assert!(NODEWIRE_RBAC.contains(line), "the manifests have {line:?}");
    let narrowed = line
        .replace(&format!("\"{verb}\", "), "")
        .replace(&format!(", \"{verb}\""), "");
    assert_ne!(narrowed, line, "{verb} is in {line:?}");
    Box::leak(NODEWIRE_RBAC.replace(line, &narrowed).into_boxed_str())
}

/// Starts the chain under `rbac`, creates a VM, and waits for nodewire's service account to be
/// refused `method` (a 403 in the simulator's request log); the VM must not be wired.
async fn refused_at(rbac: &'static str, vm: &str, method: &str) {
    let w = World::start(WorldOptions {
        rbac_manifests: Some(rbac),
        ..WorldOptions::default()
    })
    .await;
    w.insert_vm(P, ZONE, vm, &[("cluster", "demo")], true).await;
    let refused = w
        .wait_until(Duration::from_secs(60), |w| {
            w.k8s
                .chaos()
                .requests()
                .iter()
                .any(|r| r.method == method && r.status == 403)
        })
        .await;
    let log: Vec<String> = w
        .k8s
        .chaos()
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.status))
        .collect();
    assert!(refused, "no 403 for {method}: {log:?}");
    assert!(
        w.wired(ZONE, vm).is_err(),
        "{vm} was wired without {method}"
    );
    w.stop().await;
}

#[tokio::test]
async fn the_shipped_rbac_is_sufficient_and_every_verb_in_it_is_needed() {
    // The shipped manifests: wired.
    let w = World::start(WorldOptions::default()).await;
    w.insert_vm(P, ZONE, "rbac-ok", &[("cluster", "demo")], true)
        .await;
    let wired = w
        .wait_until(Duration::from_secs(60), |w| {
            w.wired(ZONE, "rbac-ok").is_ok()
        })
        .await;
    assert!(
        wired,
        "not wired under the shipped RBAC: {:?}",
        w.wired(ZONE, "rbac-ok")
    );
    // No 403 for either of nodewire's accounts (kubeadm's file discovery reading cluster-info
    // with the node's certificate is refused by design: kubeadm warns and goes on).
    let refused: Vec<String> = w
        .k8s
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.status == 403)
        .map(|r| format!("{} {}", r.method, r.response["message"]))
        .collect();
    assert!(
        refused
            .iter()
            .all(|m| !m.contains("system:serviceaccount:kube-system:nodewire")),
        "a 403 under the shipped RBAC: {refused:?}"
    );
    assert!(
        refused
            .iter()
            .all(|m| m.starts_with("configmaps.get") && m.contains("system:node:rbac-ok")),
        "{refused:?}"
    );
    w.stop().await;

    // Without approving the VM's certificate request, nothing joins; without patching Nodes,
    // none is wired.
    let verbs = r#"resources: ["certificatesigningrequests/approval"]
    verbs: ["patch"]"#;
    refused_at(
        Box::leak(
            NODEWIRE_RBAC
                .replace(
                    verbs,
                    r#"resources: ["certificatesigningrequests/approval"]
    verbs: []"#,
                )
                .into_boxed_str(),
        ),
        "rbac-no-approve",
        "certificatesigningrequests.approval.patch",
    )
    .await;
    let verbs = r#"verbs: ["get", "list", "patch", "delete"]"#;
    refused_at(without(verbs, "patch"), "rbac-no-patch", "nodes.patch").await;
}
