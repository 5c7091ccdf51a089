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
