//! Issue 21: a Node belongs to one VM instance. A VM recreated under the same name (a managed
//! instance group's autohealing, `recreate-instances`, a person deleting and recreating it) has
//! a new instance id; nodewire records the id on the Node it pairs with the VM
//! (`nodewire.io/instance-id`), never counts a previous instance's Node as the new VM's, deletes
//! that Node (with a uid precondition) and lets the new VM join as a new node.
//!
//! Run alone: `cargo test -p integration-tests --test recreation -- --nocapture`

use std::time::Duration;

use integration_tests::simfix::P;
use integration_tests::world::{World, WorldOptions};
use serde_json::Value;

const Z: &str = "us-central1-a";

/// The VM's numeric id, the Node's uid and the id recorded on the Node.
fn ids(w: &sim::stack::Stack, name: &str) -> (Option<String>, Option<String>, Option<String>) {
    let vm = w
        .compute
        .instance_json(P, Z, name)
        .and_then(|v| v["id"].as_str().map(str::to_string));
    let node = w.k8s.object("nodes", "", name);
    let uid = node
        .as_ref()
        .and_then(|n| n.pointer("/metadata/uid"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let recorded = node
        .as_ref()
        .and_then(|n| n.pointer("/metadata/annotations/nodewire.io~1instance-id"))
        .and_then(Value::as_str)
        .map(str::to_string);
    (vm, uid, recorded)
}

/// The Node deletes the Kubernetes simulator accepted so far.
fn node_deletes(w: &sim::stack::Stack) -> Vec<sim::faults::LoggedRequest> {
    w.k8s
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "nodes.delete" && r.status < 300)
        .collect()
}

async fn wire_one(w: &World, name: &str) -> (String, String) {
    w.insert_vm(P, Z, name, &[("cluster", "demo")], true).await;
    assert!(
        w.wait_until(Duration::from_secs(60), |w| w.wired(Z, name).is_ok())
            .await,
        "not wired: {:?}",
        w.wired(Z, name)
    );
    let (vm, uid, recorded) = ids(w, name);
    let (vm, uid) = (vm.expect("an id"), uid.expect("a uid"));
    assert_eq!(
        recorded.as_deref(),
        Some(vm.as_str()),
        "the wired Node records its VM's instance id"
    );
    (vm, uid)
}

/// Deletes the VM the way `delete_audit` says: through the API (its audit entries reach
/// nodewire), or behind the API's back (the entries are lost).
async fn delete(w: &World, name: &str, delete_audit: bool) {
    if delete_audit {
        w.delete_vm(Z, name).await;
        assert!(
            w.wait_until(Duration::from_secs(30), |w| w
                .compute
                .instance_json(P, Z, name)
                .is_none())
                .await,
            "the VM was not deleted"
        );
    } else {
        w.compute.tamper(|world| {
            world
                .instances
                .remove(&(P.to_string(), Z.to_string(), name.to_string()))
        });
    }
}

async fn recreate(delete_audit: bool, metadata_mode: bool) {
    let w = World::start(WorldOptions {
        metadata_mode,
        ..WorldOptions::default()
    })
    .await;
    let name = "k8s-re-1";
    let (old_id, old_uid) = wire_one(&w, name).await;

    delete(&w, name, delete_audit).await;
    w.insert_vm(P, Z, name, &[("cluster", "demo")], true).await;
    let replaced = w
        .wait_until(Duration::from_secs(90), |w| {
            let (vm, uid, _) = ids(w, name);
            w.wired(Z, name).is_ok()
                && vm.is_some_and(|v| v != old_id)
                && uid.is_some_and(|u| u != old_uid)
        })
        .await;
    let (new_id, new_uid, recorded) = ids(&w, name);
    assert!(
        replaced,
        "the recreated VM is not wired with a new Node: {:?}, VM {new_id:?} (was {old_id}), Node \
         {new_uid:?} (was {old_uid}), recorded {recorded:?}",
        w.wired(Z, name)
    );
    assert_eq!(recorded, new_id, "the new Node records the new instance");
    // Exactly one Node was deleted, the previous instance's: nothing of the new instance.
    let deletes = node_deletes(&w);
    assert_eq!(deletes.len(), 1, "{deletes:#?}");
    if !delete_audit {
        // Lost delete entry: bootstrap deleted the stale Node, only while it had its old uid.
        assert_eq!(
            deletes[0]
                .body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str),
            Some(old_uid.as_str()),
            "{:#?}",
            deletes[0]
        );
        // The delete's entry arriving late after all (at Google's pace it usually comes after
        // the insert's), and twice: `instance-events` turns it into `decommission`, which finds
        // the VM there (the new instance) and leaves everything of it alone.
        let before = w.k8s.chaos().requests().len();
        for _ in 0..2 {
            let msg = nodewire::event::StepMessage::new(
                nodewire::event::Step::Decommission,
                nodewire::names::InstanceRef::new(P, Z, name).expect("ref"),
                nodewire::event::Cause {
                    source: nodewire::event::CauseSource::GceAudit,
                    id: Some("late-delete".into()),
                },
                "late",
            );
            let data = serde_json::to_vec(&msg).expect("json");
            w.emu()
                .publish("nodewire-decommission", &data, &[])
                .await
                .expect("publish");
        }
        // Both are delivered (each reads the VM's Node), then nothing has changed.
        let handled = w
            .wait_until(Duration::from_secs(20), |w| {
                w.k8s.chaos().requests()[before..]
                    .iter()
                    .filter(|r| r.method == "nodes.get" && r.path.ends_with(name))
                    .count()
                    >= 2
            })
            .await;
        assert!(handled, "the late delete steps were not delivered");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(ids(&w, name).1, new_uid, "the new Node is kept");
        assert!(w.wired(Z, name).is_ok(), "{:?}", w.wired(Z, name));
        assert_eq!(count(&w, "nodes.delete"), 1, "nothing more deleted");
    }
    w.stop().await;
}

/// The delete's audit entries reach nodewire (the fast pace: before the insert's):
/// `decommission` deletes the old Node, the new VM joins.
#[tokio::test]
async fn a_recreated_vm_becomes_a_new_node() {
    recreate(true, false).await;
}

/// The delete's audit entries are lost: the old Node is still there, recorded for the old
/// instance, when the new VM appears. It is never this VM's: `bootstrap` deletes it (uid
/// precondition) and the `join` service answers 503 until then, so the VM's script waits.
#[tokio::test]
async fn a_recreated_vm_whose_delete_entry_was_lost_becomes_a_new_node() {
    recreate(false, false).await;
}

/// The same in metadata mode: after deleting the previous instance's Node, `bootstrap` mints
/// the new VM's join token in the same run (or, while it boots, the next run does).
#[tokio::test]
async fn in_metadata_mode_a_recreated_vm_whose_delete_entry_was_lost_becomes_a_new_node() {
    recreate(false, true).await;
}

/// Everything pulled so far from the test's own subscription `sub` (the push subscriptions
/// of the functions are not touched), as JSON.
async fn drain(emu: &sim::emulator::Emulator, sub: &str, into: &mut Vec<Value>) {
    loop {
        let got = emu.pull(sub, 100).await.expect("pull");
        if got.is_empty() {
            return;
        }
        into.extend(
            got.iter()
                .map(|m| serde_json::from_slice(&m.data).unwrap_or(Value::Null)),
        );
    }
}

/// When each of `names` was first `done`, measured from `t` (polled every 100 ms, for at most
/// 300 s).
async fn each_done(
    s: &sim::stack::Stack,
    names: [&str; 2],
    t: std::time::Instant,
    done: impl Fn(&sim::stack::Stack, &str) -> bool,
) -> [Duration; 2] {
    let mut at = [None; 2];
    while at.iter().any(Option::is_none) && t.elapsed() < Duration::from_secs(300) {
        for (i, name) in names.into_iter().enumerate() {
            if at[i].is_none() && done(s, name) {
                at[i] = Some(t.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    at.map(|a| {
        a.unwrap_or_else(|| {
            panic!(
                "not done within 300 s: {:?}",
                names.map(|n| (n, s.wired(Z, n)))
            )
        })
    })
}

/// At Google's pace (`Latency::Realistic`), two recreations at once, each of a VM wired
/// before:
/// - `slow-mig-1` as a managed instance group recreates it (`instances.delete`, the operation
///   waited for, then `instances.insert` of the same name: a new id), with Cloud Logging
///   routing the delete's entries late (35 s after the call instead of 5 s, so after the
///   insert's) and twice;
/// - `slow-lost-1` whose delete's entries are lost (the previous instance's Node is still there
///   when the new VM boots).
///
/// Each replacement is wired with a new Node within the time its first instance took plus
/// 15 s; the only Node deleted of each is the previous instance's (uid precondition); the late
/// `decommission` steps leave everything of the new instance alone.
#[tokio::test]
async fn at_a_realistic_pace_recreated_vms_are_wired_within_a_new_vms_time() {
    use sim::audit::Late;
    use sim::stack::{BusChoice, Latency, Stack, StackOptions};
    use std::time::Instant;
    let stack = Stack::start(Latency::Realistic.apply(StackOptions {
        bus: BusChoice::Emulator,
        ..StackOptions::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let emu = stack.emu.as_ref().expect("emulator");
    let (late, lost) = ("slow-mig-1", "slow-lost-1");
    let demo = [("cluster", "demo")];
    let t = Instant::now();
    for name in [late, lost] {
        stack
            .insert_vm(P, Z, name, &demo, true)
            .await
            .expect("insert");
    }
    let first = each_done(&stack, [late, lost], t, |s, name| s.wired(Z, name).is_ok()).await;
    let old = [late, lost].map(|name| ids(&stack, name));

    // Taps on the audit topic and on the decommission steps, to see what arrived in which order.
    emu.create_subscription("tap-gce-audit", "gce-audit", serde_json::json!({}))
        .await
        .expect("tap");
    emu.create_subscription(
        "tap-decommission",
        "nodewire-decommission",
        serde_json::json!({}),
    )
    .await
    .expect("tap");
    stack.compute.make_audit_late(Late {
        method: "v1.compute.instances.delete".into(),
        extra: Duration::from_secs(30),
        copies: 2,
    });
    stack.compute.tamper(|world| {
        world
            .instances
            .remove(&(P.to_string(), Z.to_string(), lost.to_string()))
    });
    stack.delete_vm(Z, late).await.expect("delete");
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s
                .compute
                .instance_json(P, Z, late)
                .is_none())
            .await,
        "the delete did not finish"
    );
    let t = Instant::now();
    for name in [late, lost] {
        stack
            .insert_vm(P, Z, name, &demo, true)
            .await
            .expect("insert again");
    }
    let again = each_done(&stack, [late, lost], t, |s, name| {
        let i = usize::from(name == lost);
        let (vm, uid, _) = ids(s, name);
        s.wired(Z, name).is_ok() && vm != old[i].0 && uid != old[i].1
    })
    .await;
    println!(
        "new VMs → wired {first:?}; recreated (late delete entries, lost ones) → wired {again:?}"
    );
    for ((name, first), again) in [late, lost].into_iter().zip(&first).zip(&again) {
        assert!(
            *again <= *first + Duration::from_secs(15),
            "{name}: the replacement took {again:?}, the first instance {first:?}"
        );
    }
    let now = [late, lost].map(|name| (ids(&stack, name), alias_of(&stack, name)));

    // The late entries arrived after the insert's, twice, and became decommission steps.
    let (mut audit, mut steps) = (Vec::new(), Vec::new());
    let mut decommissions = 0;
    let order = |audit: &[Value]| -> Vec<String> {
        audit
            .iter()
            .filter(|e| e["resource"]["labels"]["instance_id"].is_string())
            .filter(|e| e.to_string().contains(late))
            .map(|e| {
                e["protoPayload"]["methodName"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string()
            })
            .collect()
    };
    for _ in 0..60 {
        drain(emu, "tap-gce-audit", &mut audit).await;
        drain(emu, "tap-decommission", &mut steps).await;
        decommissions = steps
            .iter()
            .filter(|m| m.to_string().contains(late))
            .count();
        let deletes = order(&audit)
            .iter()
            .filter(|m| m.ends_with("instances.delete"))
            .count();
        if deletes >= 4 && decommissions >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let order = order(&audit);
    let pos = |what: &str| order.iter().position(|o| o.ends_with(what));
    let (insert_at, delete_at) = (pos("instances.insert"), pos("instances.delete"));
    assert!(
        insert_at.is_some() && delete_at.is_some() && insert_at < delete_at,
        "the delete's entries were not after the insert's: {order:#?}"
    );
    assert_eq!(
        order
            .iter()
            .filter(|o| o.ends_with("instances.delete"))
            .count(),
        4,
        "first and last, twice each: {order:#?}"
    );
    assert!(decommissions >= 1, "no decommission step: {steps:#?}");
    // Let the decommission steps run (a Compute read and a Kubernetes read each).
    tokio::time::sleep(Duration::from_secs(10)).await;
    for ((name, (_, old_uid, _)), before) in [late, lost].into_iter().zip(&old).zip(&now) {
        assert!(
            stack.wired(Z, name).is_ok(),
            "{name}: {:?}",
            stack.wired(Z, name)
        );
        assert_eq!(
            &(ids(&stack, name), alias_of(&stack, name)),
            before,
            "{name}: the new instance, its Node and alias are kept"
        );
        let deletes: Vec<_> = node_deletes(&stack)
            .into_iter()
            .filter(|r| r.path.ends_with(&format!("/nodes/{name}")))
            .collect();
        assert_eq!(
            deletes.len(),
            1,
            "{name}: only the previous instance's Node: {deletes:#?}"
        );
        assert_eq!(
            deletes[0]
                .body
                .pointer("/preconditions/uid")
                .and_then(Value::as_str),
            old_uid.as_deref(),
            "{name}"
        );
    }
    stack.stop().await;
}

fn vm_status(w: &sim::stack::Stack, name: &str) -> String {
    w.compute
        .instance_json(P, Z, name)
        .and_then(|v| v["status"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Successful requests of `method` to the Kubernetes simulator so far.
fn count(w: &sim::stack::Stack, method: &str) -> usize {
    w.k8s
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.method == method && r.status < 300)
        .count()
}

/// How the same instance goes down and comes back (issue 21, item 3).
#[derive(Clone, Copy, Debug)]
enum Lifecycle {
    /// `instances.stop`, then `instances.start`: TERMINATED, then RUNNING with the same id.
    StopStart,
    /// `instances.suspend`, then `instances.resume`: SUSPENDED (memory saved), then RUNNING.
    SuspendResume,
    /// A Spot VM preempted by Compute Engine (no API call of ours, no Admin Activity entry;
    /// TERMINATED), then started again.
    Preemption,
}

impl Lifecycle {
    async fn down(self, s: &sim::stack::Stack, name: &str) {
        match self {
            Lifecycle::StopStart => s.vm_action(Z, name, "stop").await.expect("stop"),
            Lifecycle::SuspendResume => s.vm_action(Z, name, "suspend").await.expect("suspend"),
            Lifecycle::Preemption => s.compute.preempt(P, Z, name).expect("preempt"),
        }
    }

    fn down_status(self) -> &'static str {
        match self {
            Lifecycle::SuspendResume => "SUSPENDED",
            Lifecycle::StopStart | Lifecycle::Preemption => "TERMINATED",
        }
    }

    fn up(self) -> &'static str {
        match self {
            Lifecycle::SuspendResume => "resume",
            Lifecycle::StopStart | Lifecycle::Preemption => "start",
        }
    }
}

fn node(w: &sim::stack::Stack, name: &str) -> Value {
    w.k8s.object("nodes", "", name).unwrap_or_default()
}

fn ready(n: &Value) -> String {
    n.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn unreachable(n: &Value) -> bool {
    n.pointer("/spec/taints")
        .and_then(Value::as_array)
        .is_some_and(|t| {
            t.iter()
                .any(|t| t["key"] == "node.kubernetes.io/unreachable")
        })
}

fn alias_of(w: &sim::stack::Stack, name: &str) -> Option<Value> {
    w.compute
        .instance_json(P, Z, name)
        .and_then(|v| v.pointer("/networkInterfaces/0/aliasIpRanges").cloned())
}

/// What a wired VM's identity is made of, to compare before and after.
#[derive(Debug, PartialEq)]
struct Held {
    id: String,
    uid: String,
    recorded: Option<String>,
    pod_cidr: Option<String>,
    alias: Option<Value>,
}

fn held(w: &sim::stack::Stack, name: &str) -> Held {
    let (id, uid, recorded) = ids(w, name);
    Held {
        id: id.unwrap_or_default(),
        uid: uid.unwrap_or_default(),
        recorded,
        pod_cidr: node(w, name)
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .map(str::to_string),
        alias: alias_of(w, name),
    }
}

/// Issue 21, item 3: the same instance through a stop and a start, a suspend and a resume,
/// or a Spot preemption and a start keeps its Node, podCIDR and alias: nothing is deleted and
/// nothing minted again (no join token Secret, no kubelet CSR). A sweep while the VMs are down
/// finds nothing of theirs to heal, also once the node lifecycle controller marked their
/// Nodes `Ready=Unknown` and tainted them unreachable (kubelets silent longer than the grace
/// period). One VM per lifecycle, all in one stack; `wait` bounds each wait (the realistic
/// pace needs minutes).
async fn same_instances(w: &sim::stack::Stack, wait: Duration) {
    let all = [
        ("k8s-stop-1", Lifecycle::StopStart),
        ("k8s-susp-1", Lifecycle::SuspendResume),
        ("k8s-spot-1", Lifecycle::Preemption),
    ];
    for (name, _) in all {
        w.insert_vm(P, Z, name, &[("cluster", "demo")], true)
            .await
            .expect("insert");
    }
    for (name, _) in all {
        assert!(
            w.wait_until(wait, |w| w.wired(Z, name).is_ok()).await,
            "not wired: {:?}",
            w.wired(Z, name)
        );
    }
    let minted = |w: &sim::stack::Stack| {
        (
            count(w, "secrets.create"),
            count(w, "certificatesigningrequests.create"),
        )
    };
    let (was_minted, was_deleted) = (minted(w), count(w, "nodes.delete"));
    let before = all.map(|(name, _)| held(w, name));
    for (b, (name, _)) in before.iter().zip(all) {
        assert_eq!(b.recorded.as_deref(), Some(b.id.as_str()), "{name}");
    }
    let ours = |r: &nodewire::sweep::Report| {
        r.affected
            .values()
            .flatten()
            .filter(|a| all.iter().any(|(name, _)| a.ends_with(name)))
            .cloned()
            .collect::<Vec<_>>()
    };

    for (name, how) in all {
        how.down(w, name).await;
    }
    for (name, how) in all {
        assert!(
            w.wait_until(wait, |w| vm_status(w, name) == how.down_status())
                .await,
            "{how:?}: {name} is {}",
            vm_status(w, name)
        );
    }
    let report = w.sweep(false).await.expect("sweep");
    assert_eq!(ours(&report), Vec::<String>::new(), "down: {report:?}");
    for (name, how) in all {
        assert!(
            w.wait_until(wait, |w| {
                let n = node(w, name);
                ready(&n) == "Unknown" && unreachable(&n)
            })
            .await,
            "{how:?}: {}",
            node(w, name)
        );
    }
    let report = w.sweep(false).await.expect("sweep");
    assert_eq!(
        ours(&report),
        Vec::<String>::new(),
        "an unreachable Node is not nodewire's to heal: {report:?}"
    );

    for (name, how) in all {
        w.vm_action(Z, name, how.up()).await.expect("up again");
    }
    for (name, how) in all {
        assert!(
            w.wait_until(wait, |w| {
                let n = node(w, name);
                vm_status(w, name) == "RUNNING" && ready(&n) == "True" && !unreachable(&n)
            })
            .await,
            "{how:?}: {name} is {}: {}",
            vm_status(w, name),
            node(w, name)
        );
    }
    // Give the chain and the kubelets time to do anything they would do.
    tokio::time::sleep(wait / 10).await;
    for ((name, how), b) in all.into_iter().zip(&before) {
        assert!(w.wired(Z, name).is_ok(), "{how:?}: {:?}", w.wired(Z, name));
        assert_eq!(
            &held(w, name),
            b,
            "{how:?}: the same instance, Node, podCIDR and alias"
        );
    }
    assert_eq!(count(w, "nodes.delete"), was_deleted, "nothing deleted");
    assert_eq!(minted(w), was_minted, "nothing minted again");
}

#[tokio::test]
async fn stopped_suspended_and_preempted_vms_keep_their_nodes() {
    let w = World::start(WorldOptions::default()).await;
    same_instances(&w, Duration::from_secs(30)).await;
    w.stop().await;
}

#[tokio::test]
async fn in_metadata_mode_stopped_suspended_and_preempted_vms_keep_their_nodes() {
    let w = World::start(WorldOptions {
        metadata_mode: true,
        ..WorldOptions::default()
    })
    .await;
    same_instances(&w, Duration::from_secs(30)).await;
    w.stop().await;
}

/// The same at Google's pace: operations of seconds, Logging's delay, a kubelet reporting
/// every 10 s and the node lifecycle controller's 50 s grace period.
#[tokio::test]
async fn at_a_realistic_pace_stopped_suspended_and_preempted_vms_keep_their_nodes() {
    use sim::stack::{BusChoice, Latency, Stack, StackOptions};
    let stack = Stack::start(Latency::Realistic.apply(StackOptions {
        bus: BusChoice::Emulator,
        ..StackOptions::default()
    }))
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    same_instances(&stack, Duration::from_secs(240)).await;
    stack.stop().await;
}

/// The lifecycle calls are refused in a state that does not allow them, as Compute Engine
/// refuses them ("Troubleshooting suspend and resume", Invalid instance state).
#[tokio::test]
async fn suspend_and_resume_are_refused_in_the_wrong_state() {
    let w = World::start(WorldOptions::default()).await;
    let name = "k8s-susp-2";
    w.insert_vm(P, Z, name, &[("cluster", "demo")], true).await;
    assert!(
        w.wait_until(Duration::from_secs(30), |w| vm_status(w, name) == "RUNNING")
            .await
    );
    let err = w
        .vm_action(Z, name, "resume")
        .await
        .expect_err("resume while RUNNING");
    assert!(
        err.contains("HTTP 400") && err.contains("UNSUPPORTED_OPERATION"),
        "{err}"
    );
    w.vm_action(Z, name, "stop").await.expect("stop");
    assert!(
        w.wait_until(Duration::from_secs(30), |w| vm_status(w, name)
            == "TERMINATED")
            .await
    );
    let err = w
        .vm_action(Z, name, "suspend")
        .await
        .expect_err("suspend while TERMINATED");
    assert!(err.contains("stopped or terminated"), "{err}");
    assert!(
        w.compute.preempt(P, Z, name).is_err(),
        "a TERMINATED VM is not preempted"
    );
    w.stop().await;
}
