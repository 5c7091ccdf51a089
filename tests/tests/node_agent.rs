//! The VM agent is as unkind as kubeadm and the kubelet (issue 9, items 15 and 16), and
//! nodewire heals "VM alive, Node gone" the way that works on real nodes: a kubelet registers
//! its Node once (kubernetes/kubernetes#71398), `kubeadm join` fails its preflight on a VM that
//! joined before, so nodewire mints no new token and asks the node-side unit to restart the
//! kubelet instead, a bounded number of times.

use std::time::Duration;

use integration_tests::simfix::P;
use integration_tests::world::{World, WorldOptions};
use nodewire::join::{JOINED_METADATA_KEY, KUBELET_RESTART_METADATA_KEY};
use nodewire::sweep::DriftKind;
use sim::agent::AgentOutcome;
use sim::stack::Stack;

const ZONE: &str = "us-central1-a";

fn metadata_keys(w: &Stack, name: &str) -> Vec<String> {
    w.compute
        .instance_json(P, ZONE, name)
        .and_then(|v| v["metadata"]["items"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i["key"].as_str().map(str::to_string))
        .collect()
}

fn outcomes(w: &Stack, name: &str) -> Vec<AgentOutcome> {
    w.agent
        .events()
        .into_iter()
        .filter(|e| e.vm.ends_with(&format!("/{name}")))
        .map(|e| e.outcome)
        .collect()
}

/// Join credentials nodewire made: bootstrap tokens (metadata mode) and the join service's
/// certificate requests (pull mode).
fn token_creates(w: &Stack) -> usize {
    w.k8s
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.status == 201)
        .filter(|r| {
            r.method == "secrets.create"
                || (r.method == "certificatesigningrequests.create"
                    && r.body["metadata"]["labels"]["nodewire.io/instance"].is_string())
        })
        .count()
}

#[tokio::test]
async fn a_lost_node_comes_back_by_a_kubelet_restart_not_a_new_token() {
    lost_node_comes_back(false).await;
}

#[tokio::test]
async fn a_lost_node_comes_back_by_a_kubelet_restart_in_metadata_mode() {
    lost_node_comes_back(true).await;
}

async fn lost_node_comes_back(metadata_mode: bool) {
    let w = World::start(WorldOptions {
        metadata_mode,
        ..WorldOptions::default()
    })
    .await;
    let vm = "agent-1";
    w.insert_vm(P, ZONE, vm, &[("cluster", "demo")], true).await;
    assert!(
        w.wait_until(Duration::from_secs(60), |w| w.wired(ZONE, vm).is_ok())
            .await,
        "not wired: {:?}, agent {:?}, CSR requests {:?}",
        w.wired(ZONE, vm),
        outcomes(&w, vm),
        w.k8s
            .chaos()
            .requests()
            .iter()
            .filter(|r| r.method.starts_with("certificatesigningrequests") || r.status >= 400)
            .map(|r| format!("{} {} {}", r.method, r.status, r.response["message"]))
            .collect::<Vec<_>>()
    );
    let keys = metadata_keys(&w, vm);
    assert!(
        keys.iter().any(|k| k == JOINED_METADATA_KEY),
        "finalize marks the VM as joined: {keys:?}"
    );
    let minted = token_creates(&w);
    assert_eq!(minted, 1, "one credential for one join");

    // Let redeliveries of the chain's early steps drain first (the stack's push retries back off
    // up to 3 s): a `bootstrap` that waited for RUNNING and arrives after the Node is gone
    // would rightly ask for a kubelet restart, which is the heal, not the kubelet's own doing.
    tokio::time::sleep(Duration::from_secs(4)).await;
    // The Node disappears and nobody hears of it. A running kubelet does not register again.
    w.k8s.forget("nodes", "", vm).expect("node");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        w.k8s.object("nodes", "", vm).is_none(),
        "the kubelet registered again by itself: {:?}",
        outcomes(&w, vm)
    );

    // The sweep finds it lost and heals it without a token: the kubelet is restarted.
    let report = w.sweep(false).await;
    assert!(
        report
            .affected
            .get(&DriftKind::NodeLost)
            .is_some_and(|l| l.iter().any(|n| n == vm)),
        "{report:?}"
    );
    assert!(
        !report.affected.contains_key(&DriftKind::NeverBootstrapped)
            && !report.affected.contains_key(&DriftKind::BootstrapExpired),
        "{report:?}"
    );
    assert!(
        w.wait_until(Duration::from_secs(60), |w| w.wired(ZONE, vm).is_ok())
            .await,
        "not wired again: {:?}, agent {:?}",
        w.wired(ZONE, vm),
        outcomes(&w, vm)
    );
    assert!(outcomes(&w, vm).contains(&AgentOutcome::Reregistered));
    assert_eq!(token_creates(&w), minted, "no token for a VM that joined");
    let keys = metadata_keys(&w, vm);
    assert!(
        !keys.iter().any(|k| k == KUBELET_RESTART_METADATA_KEY),
        "the restart request is cleared once wired: {keys:?}"
    );

    if !metadata_mode {
        // Pull mode: the VM asked the join service once, and reported its join.
        assert!(outcomes(&w, vm).contains(&AgentOutcome::Reported));
        w.stop().await;
        return;
    }
    // kubeadm join on a VM that joined before fails its preflight. The configuration is put
    // back whenever nodewire clears it (a late step of the re-registration's chain may run
    // `finalize` once more, which removes join metadata it finds).
    let refused = w
        .wait_until(Duration::from_secs(10), |w| {
            w.compute.tamper(|world| {
                if let Some(i) =
                    world
                        .instances
                        .get_mut(&(P.to_string(), ZONE.to_string(), vm.to_string()))
                    && !i.metadata.iter().any(|(k, _)| k == "kubeadm-join")
                {
                    i.metadata.push((
                        "kubeadm-join".into(),
                        "apiVersion: kubeadm.k8s.io/v1beta4".into(),
                    ));
                }
            });
            outcomes(w, vm)
                .iter()
                .any(|o| matches!(o, AgentOutcome::Refused(why) if why.contains("[preflight]")))
        })
        .await;
    assert!(refused, "{:?}", outcomes(&w, vm));
    w.stop().await;
}

/// Issue 21, item 5: kubeadm and the kubelet with a Node of their name already there, as
/// upstream does it. kubeadm's kubelet-start phase (cmd/kubeadm/app/cmd/phases/join/kubelet.go)
/// refuses to join when that Node is Ready; when it is not (its kubelet gone: `Ready=Unknown`),
/// it joins, and the kubelet's registration (pkg/kubelet/kubelet_node_status.go,
/// tryRegisterWithAPIServer) takes the existing Node over, its spec as it was. nodewire never
/// lets a recreated VM get there (it deletes a previous instance's Node before the VM may join:
/// tests/tests/recreation.rs); this drives the agent directly with a JoinConfiguration in the
/// VM's metadata, seeded without an insert, so that no step runs.
#[tokio::test]
async fn kubeadm_refuses_a_ready_node_of_its_name_and_the_kubelet_adopts_one_that_is_not() {
    use integration_tests::simfix::{fast_kube_policy, kube_client};
    use nodewire::join::{Discovery, JoinParams, join_configuration};
    use serde_json::json;
    let w = World::start(WorldOptions {
        metadata_mode: true,
        ..WorldOptions::default()
    })
    .await;
    let k = kube_client(&w.k8s, fast_kube_policy()).await;
    let ci = k.cluster_info().await.expect("cluster-info");
    let api = ci.server.trim_start_matches("https://").to_string();
    let stamp = |ago: i64| {
        (time::OffsetDateTime::now_utc() - time::Duration::seconds(ago))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("time")
    };
    for (name, ready) in [("k8s-adopt-1", "Unknown"), ("k8s-adopt-2", "True")] {
        let vm = nodewire::names::InstanceRef::new(P, ZONE, name).expect("ref");
        // The Node a previous kubelet registered, with its own podCIDR.
        let seeded = w
            .k8s
            .seed(
                "nodes",
                "",
                json!({"metadata": {"name": name},
                    "spec": {"podCIDR": "10.4.200.0/24", "providerID": vm.provider_id()},
                    "status": {"conditions": [{"type": "Ready", "status": ready,
                        "lastHeartbeatTime": stamp(0)}]}}),
            )
            .expect("seed the Node");
        let token = k
            .create_bootstrap_token(
                &vm,
                None,
                Duration::from_secs(900),
                "system:bootstrappers:kubeadm:default-node-token",
            )
            .await
            .expect("a token");
        let token_text = token.expose();
        let pid = vm.provider_id();
        let yaml = join_configuration(
            &JoinParams {
                discovery: Discovery::Token {
                    api_server: &api,
                    token: &token_text,
                    ca_pin: &ci.ca_pin,
                },
                node_name: name,
                provider_id: &pid,
                taint_key: nodewire::names::UNWIRED_TAINT,
            },
            nodewire::config::JoinApi::V1beta4,
        );
        w.compute
            .seed_instance(sim::compute::InstanceSeed {
                metadata: vec![("kubeadm-join".into(), yaml)],
                ..sim::compute::InstanceSeed::node_vm(P, "us-central1", ZONE, name)
            })
            .expect("seed the VM");
        let done = w
            .wait_until(Duration::from_secs(60), |w| {
                outcomes(w, name)
                    .iter()
                    .any(|o| !matches!(o, AgentOutcome::Reported))
            })
            .await;
        assert!(done, "the agent did not join {name}");
        // The kubelet's network setup is beside the point here.
        let got: Vec<AgentOutcome> = outcomes(&w, name)
            .into_iter()
            .filter(|o| !matches!(o, AgentOutcome::CniConfigured(_)))
            .collect();
        let node = w.k8s.object("nodes", "", name).expect("the Node");
        assert_eq!(
            node["metadata"]["uid"], seeded["metadata"]["uid"],
            "the same Node"
        );
        assert_eq!(
            node["spec"]["podCIDR"], "10.4.200.0/24",
            "its spec as it was"
        );
        if ready == "True" {
            assert_eq!(got, vec![AgentOutcome::AlreadyRegistered], "{name}");
        } else {
            assert_eq!(got, vec![AgentOutcome::Adopted], "{name}");
            // The new kubelet reports on it: Ready again.
            assert!(
                w.wait_until(Duration::from_secs(30), |w| {
                    w.k8s
                        .object("nodes", "", name)
                        .and_then(|n| n.pointer("/status/conditions/0/status").cloned())
                        == Some(json!("True"))
                })
                .await,
                "{}",
                w.k8s.object("nodes", "", name).unwrap_or_default()
            );
        }
    }
    w.stop().await;
}

/// Issue 22, item 4: the kubelet polls its Node for a podCIDR set after registration
/// (pkg/kubelet/kubelet_node_status.go, `fastStatusUpdateOnce`) and the startup script writes
/// the CNI configuration then; until then the Node is NotReady. With kube-controller-manager's
/// node IPAM off (`--allocate-node-cidrs=false`, as the alias-first order needs) nobody sets
/// it: nodewire waits (the alias is the podCIDR's copy in the cluster-first order) and the
/// Node stays NotReady. Set by someone else (here the cluster admin, as an allocator of their
/// own would), the kubelet picks it up, the Node goes Ready, and nodewire wires the VM with
/// that range: never another one (podCIDR is immutable once set).
#[tokio::test]
async fn a_pod_cidr_set_after_registration_is_picked_up_and_never_overwritten() {
    use sim::stack::{BusChoice, StackOptions};
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        node_ipam: false,
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let name = "k8s-late-cidr-1";
    stack
        .insert_vm(P, ZONE, name, &[("cluster", "demo")], true)
        .await
        .expect("insert");
    let node = |s: &Stack| s.k8s.object("nodes", "", name).unwrap_or_default();
    let ready = |n: &serde_json::Value| {
        n.pointer("/status/conditions")
            .and_then(serde_json::Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .and_then(|c| c["status"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| ready(&node(s)) == "False")
            .await,
        "the Node registered and reports NotReady: {}",
        node(&stack)
    );
    // Longer than the kubelet's readiness delay: still no podCIDR, still NotReady, not wired.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = node(&stack);
    assert_eq!(n.pointer("/spec/podCIDR"), None, "{n}");
    assert_eq!(ready(&n), "False", "no network, not Ready: {n}");
    assert!(stack.wired(ZONE, name).is_err());
    assert!(
        !outcomes(&stack, name)
            .iter()
            .any(|o| matches!(o, AgentOutcome::CniConfigured(_)))
    );

    // Someone else's allocator sets it.
    let cidr = "10.4.200.0/24";
    let resp = reqwest::Client::new()
        .patch(format!("{}/api/v1/nodes/{name}", stack.k8s.endpoint()))
        .bearer_auth(stack.k8s.admin_token())
        .header("content-type", "application/merge-patch+json")
        .json(&serde_json::json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}}))
        .send()
        .await
        .expect("patch");
    assert!(resp.status().is_success(), "{}", resp.status());
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| s.wired(ZONE, name).is_ok())
            .await,
        "not wired: {:?}",
        stack.wired(ZONE, name)
    );
    assert_eq!(
        stack.wired(ZONE, name).as_deref(),
        Ok(cidr),
        "the range set, kept"
    );
    assert_eq!(ready(&node(&stack)), "True");
    assert!(
        outcomes(&stack, name).contains(&AgentOutcome::CniConfigured(cidr.into())),
        "{:?}",
        outcomes(&stack, name)
    );
    stack.stop().await;
}
