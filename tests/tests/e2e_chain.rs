//! End to end, all real processes on loopback: the Pub/Sub emulator, both simulators, every
//! function as its own server, the VM agent. VMs created through `instances.insert` become
//! wired nodes with no other step; deleted VMs and Nodes are cleaned up.
//!
//! Run alone: `cargo test -p integration-tests --test e2e_chain -- --nocapture`

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use integration_tests::simfix::{P, cidr};
use integration_tests::world::{OTHER_PROJECT, World, WorldOptions};
use nodewire::adapter::dead_letter_attr;

/// Every log line of every in-process function, for the secrets check.
fn logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = buf.clone();
        nodewire::telemetry::init_with_filter(
            true,
            BTreeMap::new(),
            move || LogWriter(w.clone()),
            "info,nodewire=debug,sim=info",
        );
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    String::from_utf8_lossy(
        &logs()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .into_owned()
}

const ZONES: [&str; 2] = ["us-central1-a", "us-central1-b"];

fn vm_name(i: usize) -> (String, &'static str) {
    (format!("k8s-worker-{i:02}"), ZONES[i % 2])
}

/// Waits until the first `n` VMs are wired; fails the test naming what is missing otherwise.
async fn wait_all_wired(w: &World, n: usize, bound: Duration) {
    let ok = w
        .wait_until(bound, |w| {
            (0..n).all(|i| {
                let (name, zone) = vm_name(i);
                w.wired(zone, &name).is_ok()
            })
        })
        .await;
    if !ok {
        let missing: Vec<String> = (0..n)
            .filter_map(|i| {
                let (name, zone) = vm_name(i);
                w.wired(zone, &name).err().map(|e| format!("{name}: {e}"))
            })
            .collect();
        // The service's refusals and the agent's warnings name what held the missing VMs up.
        let text = log_text();
        let held: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("refused") || l.contains("WARN"))
            .rev()
            .take(40)
            .collect();
        panic!(
            "not wired within {bound:?}: {missing:?}\nagent: {:?}\nlast refusals: {held:#?}",
            w.agent.events()
        );
    }
}

/// The token secrets minted during the run, from the API server's request log.
fn minted_secrets(w: &World) -> Vec<String> {
    w.k8s
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "secrets.create" && r.status == 201)
        .filter_map(|r| {
            r.body
                .pointer("/stringData/token-secret")
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .or_else(|| {
                    let b64 = r.body.pointer("/data/token-secret")?.as_str()?;
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).ok()?)
                        .ok()
                })
        })
        .collect()
}

/// Mutations sent for a VM, from the Compute simulator's request log.
fn writes_for(w: &World, project: &str, name: &str) -> usize {
    w.compute
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| {
            matches!(
                r.method.as_str(),
                "instances.setTags"
                    | "instances.setMetadata"
                    | "instances.setLabels"
                    | "instances.updateNetworkInterface"
            )
        })
        .filter(|r| {
            r.path.contains(&format!("/projects/{project}/"))
                && r.path.contains(&format!("/instances/{name}/"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_vms_become_wired_nodes_and_are_cleaned_up() {
    let _ = logs();
    let w = World::start(WorldOptions::default()).await;
    let demo = [("cluster", "demo")];
    for i in 0..20 {
        let (name, zone) = vm_name(i);
        w.insert_vm(P, zone, &name, &demo, true).await;
    }
    // Three VMs nodewire must leave alone.
    w.insert_vm(P, "us-central1-a", "web-1", &[("cluster", "other")], true)
        .await;
    w.insert_vm(OTHER_PROJECT, "us-central1-a", "k8s-foreign", &demo, true)
        .await;
    w.insert_vm(P, "us-central1-a", "k8s-noforward", &demo, false)
        .await;

    wait_all_wired(&w, 20, Duration::from_secs(120)).await;
    // No two VMs' aliases overlap.
    let pods: Vec<String> = (0..20)
        .map(|i| {
            let (n, z) = vm_name(i);
            w.wired(z, &n).expect("wired")
        })
        .collect();
    for (i, a) in pods.iter().enumerate() {
        for b in &pods[i + 1..] {
            assert!(!cidr(a).overlaps(&cidr(b)), "{a} overlaps {b}");
        }
    }
    let wired_events = w
        .emu()
        .pull("node-wired-observer", 100)
        .await
        .expect("pull");
    assert!(
        wired_events.len() >= 20,
        "node-wired announced for every VM ({})",
        wired_events.len()
    );
    assert!(
        w.k8s
            .objects("events")
            .iter()
            .filter(|e| e["reason"] == "NodeWired")
            .count()
            >= 20
    );

    // Left alone: the request log proves no write reached them; each has its log line.
    for (project, name) in [
        (P, "web-1"),
        (OTHER_PROJECT, "k8s-foreign"),
        (P, "k8s-noforward"),
    ] {
        assert_eq!(writes_for(&w, project, name), 0, "{name} was written to");
        assert!(w.tokens_of(name).is_empty(), "{name} got a token");
        assert!(w.k8s.object("nodes", "", name).is_none());
    }
    let dl = w
        .emu()
        .pull("dead-letter-observer", 100)
        .await
        .expect("pull");
    let noforward: Vec<_> = dl
        .iter()
        .filter(|m| {
            m.attributes
                .get("instance")
                .is_some_and(|i| i.ends_with("/instances/k8s-noforward"))
        })
        .collect();
    assert_eq!(
        noforward.len(),
        1,
        "the VM without IP forwarding is dead-lettered once: {dl:?}"
    );
    assert!(
        noforward[0].attributes[dead_letter_attr::REASON].contains("canIpForward"),
        "{:?}",
        noforward[0].attributes
    );
    let text = log_text();
    assert!(
        text.contains("lacks the selector label cluster=demo"),
        "log line for web-1"
    );
    assert!(
        text.contains("is in project other-project"),
        "log line for k8s-foreign"
    );
    assert!(
        text.lines().any(|l| l.contains("\"severity\":\"ERROR\"")
            && l.contains("k8s-noforward")
            && l.contains("IP forwarding")),
        "ERROR line for k8s-noforward"
    );

    // Delete 5 VMs: their Nodes and tokens go.
    for i in 0..5 {
        let (n, z) = vm_name(i);
        w.delete_vm(z, &n).await;
    }
    let gone = w
        .wait_until(Duration::from_secs(60), |w| {
            (0..5).all(|i| {
                let (n, _) = vm_name(i);
                w.k8s.object("nodes", "", &n).is_none() && w.tokens_of(&n).is_empty()
            })
        })
        .await;
    assert!(gone, "Nodes of deleted VMs are deleted");
    // Delete 3 Nodes whose VMs remain: their alias ranges are released.
    for i in 5..8 {
        w.delete_node(&vm_name(i).0).await;
    }
    let released = w
        .wait_until(Duration::from_secs(60), |w| {
            (5..8).all(|i| {
                let (n, z) = vm_name(i);
                w.compute
                    .instance_json(P, z, &n)
                    .is_some_and(|vm| vm.pointer("/networkInterfaces/0/aliasIpRanges").is_none())
            })
        })
        .await;
    assert!(
        released,
        "aliases of VMs whose Node was deleted are released"
    );
    for i in 8..20 {
        let (n, z) = vm_name(i);
        assert!(w.wired(z, &n).is_ok(), "{n} stayed wired");
    }

    // Pull mode mints no bootstrap token at all (issue 20), and no credential reached the
    // logs: no certificate, no key, no discovery kubeconfig.
    let secrets = minted_secrets(&w);
    assert!(secrets.is_empty(), "tokens were minted ({})", secrets.len());
    let text = log_text();
    for needle in [
        "PRIVATE KEY",
        "BEGIN CERTIFICATE",
        "client-certificate-data",
    ] {
        assert!(!text.contains(needle), "{needle} appears in the logs");
    }
    assert!(
        !text.contains("caCertHashes"),
        "the join configuration was logged"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn duplicated_steps_and_twenty_percent_faults_reach_the_same_end_state() {
    let _ = logs();
    let w = World::start(WorldOptions {
        faults: 0.2,
        duplicate_steps: true,
        ..WorldOptions::default()
    })
    .await;
    for i in 0..20 {
        let (name, zone) = vm_name(i);
        w.insert_vm(P, zone, &name, &[("cluster", "demo")], true)
            .await;
    }
    wait_all_wired(&w, 20, Duration::from_secs(180)).await;
    let injected = w
        .compute
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.injected)
        .count()
        + w.k8s
            .chaos()
            .requests()
            .iter()
            .filter(|r| r.injected)
            .count();
    assert!(injected > 20, "faults were injected ({injected})");
    // No duplicate effective write: one successful setTags and one successful
    // updateNetworkInterface operation per VM, one successful providerID patch per Node.
    let ops: HashMap<(String, String), usize> = w.compute.with_world(|world| {
        let mut m = HashMap::new();
        for o in world.operations.values().filter(|o| o.error.is_none()) {
            *m.entry((
                o.target_link
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                o.op_type.clone(),
            ))
            .or_insert(0) += 1;
        }
        m
    });
    for i in 0..20 {
        let (n, _) = vm_name(i);
        assert_eq!(
            ops.get(&(n.clone(), "setTags".into())),
            Some(&1),
            "{n}: setTags"
        );
        assert_eq!(
            ops.get(&(n.clone(), "updateNetworkInterface".into())),
            Some(&1),
            "{n}: updateNetworkInterface"
        );
        let pid_patches = w
            .k8s
            .chaos()
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "nodes.patch"
                    && r.status == 200
                    && r.path.ends_with(&format!("/nodes/{n}"))
                    && r.body.pointer("/spec/providerID").is_some()
            })
            .count();
        assert!(pid_patches <= 1, "{n}: {pid_patches} providerID patches");
    }
    w.stop().await;
}
