//! Issue 22: the alias-first order. While a VM boots, `bootstrap` has Compute Engine allocate
//! a /24 of the pod range as its alias (by size, so two VMs can never get the same block);
//! when the Node registers, `assign-alias` copies that range into its podCIDR, the only
//! allocator (the Kubernetes simulator's node IPAM is off, as kube-controller-manager's is with
//! `--allocate-node-cidrs=false`), then the chain goes on as before.
//!
//! Run alone: `cargo test -p integration-tests --test alias_first -- --nocapture`

use std::collections::BTreeSet;
use std::time::Duration;

use integration_tests::simfix::P;
use nodewire::config::{JoinMode, RangeOrder};
use serde_json::Value;
use sim::stack::{BusChoice, Stack, StackOptions};

const Z: &str = "us-central1-a";

/// Waits until every VM of `names` is wired (60 s each at most); fails the test otherwise.
async fn all_wired(stack: &Stack, names: &[&str]) {
    for n in names {
        assert!(
            stack
                .wait_until(Duration::from_secs(60), |s| s.wired(Z, n).is_ok())
                .await,
            "{n} not wired: {:?}",
            stack.wired(Z, n)
        );
    }
}

/// Exhaustion is loud (issue 22, item 3): `name`'s Node gets a `CIDRNotAvailable` Warning
/// Event whose message contains `says` (60 s at most), keeps the unwired taint and no
/// podCIDR, is not wired, and a dry-run sweep reports it as `pod-cidr-missing`.
async fn assert_exhausted(stack: &Stack, name: &str, says: &str) {
    let cidr_not_available = |s: &Stack| {
        s.k8s
            .objects("events")
            .into_iter()
            .filter(|e| e["reason"] == "CIDRNotAvailable" && e["involvedObject"]["name"] == name)
            .collect::<Vec<_>>()
    };
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| !cidr_not_available(s)
                .is_empty())
            .await,
        "no CIDRNotAvailable Event; Node {:?}",
        stack.k8s.object("nodes", "", name)
    );
    let event = &cidr_not_available(stack)[0];
    assert_eq!(event["type"], "Warning");
    assert!(
        event["message"].as_str().is_some_and(|m| m.contains(says)),
        "{event}"
    );
    let node = stack
        .k8s
        .object("nodes", "", name)
        .expect("the Node registered");
    assert_eq!(node.pointer("/spec/podCIDR"), None, "{node}");
    assert!(
        node.pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t["key"] == nodewire::names::UNWIRED_TAINT)),
        "the taint is kept: {node}"
    );
    assert!(stack.wired(Z, name).is_err());
    let report = stack.sweep(true).await.expect("sweep");
    assert!(
        report
            .affected
            .get(&nodewire::sweep::DriftKind::PodCidrMissing)
            .is_some_and(|a| a.iter().any(|n| n.contains(name))),
        "{report:?}"
    );
}

async fn wire_all(join_mode: JoinMode) {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        join_mode,
        range_order: RangeOrder::AliasFirst,
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let names = ["k8s-af-1", "k8s-af-2", "k8s-af-3"];
    for n in names {
        stack
            .insert_vm(P, Z, n, &[("cluster", "demo")], true)
            .await
            .expect("insert");
    }
    all_wired(&stack, &names).await;
    let requests = stack.k8s.chaos().requests();
    let mut ranges = BTreeSet::new();
    for n in names {
        let node = stack.k8s.object("nodes", "", n).expect("the Node");
        let cidr = node["spec"]["podCIDR"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let alias = stack
            .compute
            .instance_json(P, Z, n)
            .and_then(|v| {
                v.pointer("/networkInterfaces/0/aliasIpRanges/0/ipCidrRange")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .unwrap_or_default();
        assert_eq!(cidr, alias, "{n}: the podCIDR is the VM's alias");
        assert_eq!(node["spec"]["podCIDRs"], serde_json::json!([cidr]));
        ranges.insert(cidr);
        // The podCIDR was written by nodewire (no IPAM controller runs), once.
        let sets: Vec<_> = requests
            .iter()
            .filter(|r| {
                r.method == "nodes.patch"
                    && r.status < 300
                    && r.path.ends_with(&format!("/nodes/{n}"))
                    && r.body.pointer("/spec/podCIDR").is_some()
            })
            .collect();
        assert_eq!(sets.len(), 1, "{n}: {sets:#?}");
    }
    assert_eq!(ranges.len(), names.len(), "distinct ranges: {ranges:?}");
    // The alias was asked for by size, before the Node existed.
    let by_size = stack
        .compute
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "instances.updateNetworkInterface"
                && r.body.pointer("/aliasIpRanges/0/ipCidrRange") == Some(&serde_json::json!("/24"))
        })
        .count();
    assert!(by_size >= names.len(), "allocations by size: {by_size}");
    let report = stack.sweep(true).await.expect("sweep");
    assert!(report.drift.is_empty(), "{report:?}");
    stack.stop().await;
}

#[tokio::test]
async fn alias_first_wires_vms_with_the_range_compute_engine_allocated() {
    wire_all(JoinMode::Pull).await;
}

#[tokio::test]
async fn alias_first_in_metadata_mode() {
    wire_all(JoinMode::Metadata).await;
}

/// A VM whose template asked Compute Engine for a /24 at creation keeps that range: nodewire
/// allocates nothing more and copies it into the Node's podCIDR. Beside it, a VM created
/// without one gets its own block, never the first VM's.
#[tokio::test]
async fn a_vm_whose_template_asked_for_a_range_keeps_it() {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        range_order: RangeOrder::AliasFirst,
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let demo = [("cluster", "demo")];
    stack
        .insert_vm_asking(P, Z, "k8s-tpl-1", &demo, true, Some("/24"))
        .await
        .expect("insert with /24");
    stack
        .insert_vm(P, Z, "k8s-tpl-2", &demo, true)
        .await
        .expect("insert");
    let alias = |s: &Stack, n: &str| {
        s.compute
            .instance_json(P, Z, n)
            .and_then(|v| v.pointer("/networkInterfaces/0/aliasIpRanges").cloned())
            .unwrap_or_default()
    };
    assert!(
        stack
            .wait_until(Duration::from_secs(10), |s| alias(s, "k8s-tpl-1")
                .as_array()
                .is_some_and(|a| a.len() == 1))
            .await,
        "Compute Engine allocated the template's range: {}",
        alias(&stack, "k8s-tpl-1")
    );
    let given = alias(&stack, "k8s-tpl-1");
    all_wired(&stack, &["k8s-tpl-1", "k8s-tpl-2"]).await;
    assert_eq!(
        alias(&stack, "k8s-tpl-1"),
        given,
        "the template's range kept"
    );
    assert_eq!(
        stack.wired(Z, "k8s-tpl-1").ok().as_deref(),
        given.pointer("/0/ipCidrRange").and_then(Value::as_str),
        "and copied into the podCIDR"
    );
    assert_ne!(stack.wired(Z, "k8s-tpl-1"), stack.wired(Z, "k8s-tpl-2"));
    // nodewire asked for a range only for the VM that had none.
    let asked: Vec<String> = stack
        .compute
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "instances.updateNetworkInterface" && r.status < 300)
        .map(|r| r.path)
        .collect();
    assert!(
        asked
            .iter()
            .all(|p| p.ends_with("/k8s-tpl-2/updateNetworkInterface"))
            && !asked.is_empty(),
        "{asked:#?}"
    );
    stack.stop().await;
}

/// Issue 22, item 3: exhaustion is loud. A pod range with room for two /24 blocks and three
/// VMs: the third VM's Node registers, keeps the unwired taint and no podCIDR, and carries a
/// `CIDRNotAvailable` Warning Event (the reason kube-controller-manager's IPAM uses); the sweep
/// reports it (`pod-cidr-missing`). Once a VM is deleted, its range goes with it and the next
/// sweep wires the third VM with that room.
#[tokio::test]
async fn an_exhausted_pod_range_is_loud_and_the_node_keeps_its_taint() {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        range_order: RangeOrder::AliasFirst,
        pods_range: "10.4.0.0/23".parse().expect("cidr"),
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let demo = [("cluster", "demo")];
    for n in ["k8s-ex-1", "k8s-ex-2"] {
        stack.insert_vm(P, Z, n, &demo, true).await.expect("insert");
    }
    all_wired(&stack, &["k8s-ex-1", "k8s-ex-2"]).await;
    let third = "k8s-ex-3";
    stack
        .insert_vm(P, Z, third, &demo, true)
        .await
        .expect("insert");
    assert_exhausted(&stack, third, "no /24 is free").await;

    // Room again: a VM deleted, its range with it.
    stack.delete_vm(Z, "k8s-ex-1").await.expect("delete");
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| s
                .compute
                .instance_json(P, Z, "k8s-ex-1")
                .is_none())
            .await
    );
    let report = stack.sweep(false).await.expect("sweep");
    assert!(report.steps >= 1, "{report:?}");
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s.wired(Z, third).is_ok())
            .await,
        "{third} not wired once a range was free: {:?}",
        stack.wired(Z, third)
    );
    stack.stop().await;
}

/// Issue 22, item 2: several pod ranges, as GKE's additional pod ranges. `pods` and `pods-b`
/// have room for two /24 blocks each. Three VMs are wired: two in `pods`, the third in
/// `pods-b` once `pods` refused (IP_SPACE_EXHAUSTED), each Node's podCIDR its VM's alias,
/// named after the range that holds it. A fourth goes to `pods-b` without asking `pods` again.
/// A fifth VM finds every range full: its Node keeps the taint and no podCIDR, and its
/// `CIDRNotAvailable` Event names both ranges.
#[tokio::test]
async fn when_the_first_pod_range_is_full_the_next_is_used() {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        range_order: RangeOrder::AliasFirst,
        pods_range: "10.4.0.0/23".parse().expect("cidr"),
        extra_pod_ranges: vec![("pods-b".into(), "10.8.0.0/23".parse().expect("cidr"))],
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let demo = [("cluster", "demo")];
    let names = ["k8s-mr-1", "k8s-mr-2", "k8s-mr-3"];
    for n in names {
        stack.insert_vm(P, Z, n, &demo, true).await.expect("insert");
    }
    all_wired(&stack, &names).await;
    let mut by_range: Vec<(String, String)> = names
        .iter()
        .map(|n| {
            let vm = stack.compute.instance_json(P, Z, n).expect("the VM");
            let alias = &vm["networkInterfaces"][0]["aliasIpRanges"][0];
            (
                alias["subnetworkRangeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                alias["ipCidrRange"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    by_range.sort();
    assert_eq!(
        by_range.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["pods", "pods", "pods-b"],
        "{by_range:?}"
    );
    assert_eq!(by_range[2].1, "10.8.0.0/24");
    // The second range was asked for only after the first refused.
    let asked = |s: &Stack, range: &str| {
        s.compute
            .chaos()
            .requests()
            .into_iter()
            .filter(|r| r.method == "instances.updateNetworkInterface")
            .filter_map(|r| {
                r.body
                    .pointer("/aliasIpRanges")
                    .and_then(Value::as_array)
                    .and_then(|a| a.last().cloned())
            })
            .filter(|a| a["ipCidrRange"] == "/24" && a["subnetworkRangeName"] == range)
            .count()
    };
    assert_eq!(asked(&stack, "pods-b"), 1, "pods-b asked once");
    let pods_asked = asked(&stack, "pods");
    assert!(pods_asked >= 3, "{pods_asked}");

    // The next VM goes to pods-b at once: pods, seen full, is tried last for a while
    // (FullRanges), so it costs no refused operation.
    stack
        .insert_vm(P, Z, "k8s-mr-4", &demo, true)
        .await
        .expect("insert");
    all_wired(&stack, &["k8s-mr-4"]).await;
    assert_eq!(
        stack.wired(Z, "k8s-mr-4").ok().as_deref(),
        Some("10.8.1.0/24")
    );
    assert_eq!(asked(&stack, "pods"), pods_asked, "pods not asked again");
    assert_eq!(asked(&stack, "pods-b"), 2);

    // Every range full.
    let fourth = "k8s-mr-5";
    stack
        .insert_vm(P, Z, fourth, &demo, true)
        .await
        .expect("insert");
    assert_exhausted(&stack, fourth, "pod range(s) pods, pods-b").await;
    // The three wired VMs are no drift.
    for n in names {
        assert!(stack.wired(Z, n).is_ok(), "{n}: {:?}", stack.wired(Z, n));
    }
    stack.stop().await;
}

/// Issue 22: in the cluster-first order, kube-controller-manager's IPAM does not know what
/// Compute Engine allocated by size. A VM outside the cluster (another team's, on the same
/// subnet) whose template asked for `pods:/24` holds the first block; the IPAM then gives that
/// block to a new Node. nodewire never takes it from the other VM: the alias write fails with
/// `IP_IN_USE_BY_ANOTHER_RESOURCE`, the Node gets an `AliasRangeInUse` Warning Event naming the
/// holder, keeps its taint, and the sweep reports it. Once the holder is gone the sweep heals
/// the node. (In the alias-first order this cannot happen: Compute Engine is the one allocator.)
#[tokio::test]
async fn cluster_first_a_pod_cidr_compute_engine_gave_another_vm_is_a_loud_conflict() {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let holder = "other-team-vm";
    stack
        .insert_vm_asking(P, Z, holder, &[("cluster", "other")], true, Some("/24"))
        .await
        .expect("insert");
    let alias_of = |s: &Stack, n: &str| {
        s.compute.instance_json(P, Z, n).and_then(|v| {
            v.pointer("/networkInterfaces/0/aliasIpRanges/0/ipCidrRange")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    };
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| alias_of(s, holder).is_some())
            .await
    );
    let taken = alias_of(&stack, holder).unwrap_or_default();

    let node = "k8s-col-1";
    stack
        .insert_vm(P, Z, node, &[("cluster", "demo")], true)
        .await
        .expect("insert");
    let in_use = |s: &Stack| {
        s.k8s
            .objects("events")
            .into_iter()
            .filter(|e| e["reason"] == "AliasRangeInUse" && e["involvedObject"]["name"] == node)
            .collect::<Vec<_>>()
    };
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| !in_use(s).is_empty())
            .await,
        "no AliasRangeInUse Event; Node {:?}, VM {:?}",
        stack.k8s.object("nodes", "", node),
        stack.compute.instance_json(P, Z, node)
    );
    let n = stack.k8s.object("nodes", "", node).expect("the Node");
    assert_eq!(
        n.pointer("/spec/podCIDR").and_then(Value::as_str),
        Some(taken.as_str()),
        "the IPAM gave the Node the block Compute Engine allocated to {holder}"
    );
    let event = &in_use(&stack)[0];
    assert_eq!(event["type"], "Warning");
    assert!(
        event["message"]
            .as_str()
            .is_some_and(|m| m.contains(holder)),
        "{event}"
    );
    assert_eq!(
        alias_of(&stack, holder),
        Some(taken.clone()),
        "never taken away"
    );
    assert_eq!(alias_of(&stack, node), None);
    assert!(
        n.pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|t| t["key"] == nodewire::names::UNWIRED_TAINT)),
        "the taint is kept: {n}"
    );
    let report = stack.sweep(true).await.expect("sweep");
    assert!(
        report.affected.values().flatten().any(|s| s.contains(node)),
        "the sweep reports {node}: {report:?}"
    );

    // The holder goes; the sweep heals the node with the range its podCIDR names.
    stack.delete_vm(Z, holder).await.expect("delete");
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| s
                .compute
                .instance_json(P, Z, holder)
                .is_none())
            .await
    );
    // A redelivery of the step may heal it first; otherwise the sweep does.
    let report = stack.sweep(false).await.expect("sweep");
    assert!(
        report.steps >= 1 || stack.wired(Z, node).is_ok(),
        "{report:?}"
    );
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s.wired(Z, node).is_ok())
            .await,
        "{node} not wired once {holder} was gone: {:?}",
        stack.wired(Z, node)
    );
    assert_eq!(alias_of(&stack, node), Some(taken));
    stack.stop().await;
}

/// Issue 22: a podCIDR someone else set before nodewire copied the alias (here the cluster
/// admin, while the VM's allocation is still in flight) is never overwritten — podCIDR is
/// immutable once set (kubernetes/kubernetes pkg/apis/core/validation/validation.go,
/// ValidateNodeUpdate) — and nodewire writes no podCIDR at all: the VM's alias follows the
/// Node's range instead (the allocated block dropped, the podCIDR's added).
#[tokio::test]
async fn a_pod_cidr_set_by_someone_else_first_is_kept_and_the_alias_follows_it() {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        range_order: RangeOrder::AliasFirst,
        // The allocation takes long enough for the Node to register before it is done.
        nic_op_latency: Some(Duration::from_secs(10)),
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let n = "k8s-theirs";
    stack
        .insert_vm(P, Z, n, &[("cluster", "demo")], true)
        .await
        .expect("insert");
    let asked_by_size = |s: &Stack| {
        s.compute
            .chaos()
            .requests()
            .into_iter()
            .filter(|r| {
                r.method == "instances.updateNetworkInterface"
                    && r.path.contains(&format!("/instances/{n}/"))
                    && r.body.pointer("/aliasIpRanges/0/ipCidrRange")
                        == Some(&serde_json::json!("/24"))
            })
            .count()
    };
    // The Node registered while the VM's allocation by size is in flight.
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| s
                .k8s
                .object("nodes", "", n)
                .is_some()
                && asked_by_size(s) >= 1)
            .await,
        "the Node registered and the allocation was asked for"
    );
    let theirs = "10.4.200.0/24";
    stack
        .admin_patch_node(
            n,
            &serde_json::json!({"spec": {"podCIDR": theirs, "podCIDRs": [theirs]}}),
        )
        .await
        .expect("the admin sets the podCIDR before nodewire does");
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s.wired(Z, n).is_ok())
            .await,
        "{n} not wired: {:?}",
        stack.wired(Z, n)
    );
    // The allocated block was dropped; the alias is the podCIDR someone else set.
    assert_eq!(stack.wired(Z, n).ok().as_deref(), Some(theirs));
    let node = stack.k8s.object("nodes", "", n).expect("the Node");
    assert_eq!(node["spec"]["podCIDRs"], serde_json::json!([theirs]));
    // nodewire never wrote a podCIDR (the one write is the admin's).
    let writes = stack
        .k8s
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "nodes.patch"
                && r.path.ends_with(&format!("/nodes/{n}"))
                && r.body.pointer("/spec/podCIDR").is_some()
        })
        .count();
    assert_eq!(writes, 1, "only the admin's podCIDR write");
    stack.stop().await;
}

/// Issue 22: where Nodes register with `NetworkUnavailable` = `True` (a cloud provider that
/// manages routes sets it: kubernetes/cloud-provider controllers/node/node_controller.go for
/// GCE), nodewire sets it to `False` once the VM's alias is the podCIDR — reason
/// `RouteCreated`, as GKE's CloudAllocator — through the admission policy
/// `nodewire-node-status`, leaving the kubelet's `Ready` condition as it was.
#[tokio::test]
async fn network_unavailable_is_set_to_false_once_the_range_is_routed() {
    let stack = Stack::start(StackOptions {
        bus: BusChoice::Emulator,
        range_order: RangeOrder::AliasFirst,
        network_unavailable: true,
        ..StackOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the stack did not start: {e}"));
    let n = "k8s-net-1";
    stack
        .insert_vm(P, Z, n, &[("cluster", "demo")], true)
        .await
        .expect("insert");
    let condition = |s: &Stack, kind: &str| {
        s.k8s.object("nodes", "", n).and_then(|node| {
            node.pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
        })
    };
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| condition(
                s,
                "NetworkUnavailable"
            )
            .is_some())
            .await,
        "the Node registered with the condition"
    );
    all_wired(&stack, &[n]).await;
    let net = condition(&stack, "NetworkUnavailable").expect("the condition");
    assert_eq!(net["status"], "False", "{net}");
    assert_eq!(net["reason"], "RouteCreated", "{net}");
    assert!(
        stack
            .wait_until(Duration::from_secs(30), |s| condition(s, "Ready")
                .is_some_and(|c| c["status"] == "True"))
            .await,
        "the kubelet's Ready condition is its own: {:?}",
        condition(&stack, "Ready")
    );
    let patched = stack
        .k8s
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "nodes.status.patch"
                && r.path.ends_with(&format!("/nodes/{n}/status"))
                && r.status < 300
        })
        .filter(|r| {
            r.body.pointer("/status/conditions/0/type")
                == Some(&serde_json::json!("NetworkUnavailable"))
        })
        .count();
    assert_eq!(patched, 1, "set once");
    let report = stack.sweep(true).await.expect("sweep");
    assert!(report.drift.is_empty(), "{report:?}");
    stack.stop().await;
}
