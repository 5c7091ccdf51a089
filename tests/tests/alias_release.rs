//! A range removed from one VM can take up to a minute to become assignable to another
//! (Compute Engine docs, "Configuring alias IP ranges", Limitations): Compute Engine answers
//! `IP_IN_USE_BY_ANOTHER_RESOURCE` although no VM holds it any more. That is transient — the
//! step is retried — and only a range a VM still holds is a permanent conflict with a Warning
//! Event naming the holder (issue 9, item 2).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use integration_tests::simfix::*;
use nodewire::act::compute::AliasRange;
use nodewire::act::deps::{ChainDeps, Deps};
use nodewire::act::execute::{ActError, Target, execute};
use nodewire::bus::InProcessBus;
use nodewire::config::{ChainConfig, Config};
use nodewire::error::Classify as _;
use nodewire::names::InstanceRef;
use nodewire::plan::{Action, Observed};
use nodewire::trace::TraceContext;
use sim::compute::{ComputeConfig, ComputeSim};
use sim::k8s::K8sConfig;

fn set_alias() -> Action {
    Action::SetAlias {
        cidr: cidr("10.4.1.0/24"),
        range_name: "pods".into(),
    }
}

async fn run(deps: &ChainDeps, vm: &InstanceRef) -> Result<(), ActError> {
    let observed = Observed {
        instance: vm.clone(),
        vm: None,
        node: None,
        tokens: vec![],
    };
    let target = Target {
        instance: vm,
        instance_id: None,
        node: vm.name(),
        chain: "test",
        observed: &observed,
        trace: &TraceContext::new_root(),
    };
    execute(deps, &target, &set_alias()).await
}

#[tokio::test]
async fn a_range_released_moments_ago_is_transient_one_held_by_a_vm_is_a_conflict() {
    let sim = ComputeSim::start(ComputeConfig {
        op_latency: Duration::ZERO,
        release_delay: Duration::from_millis(1500),
        subnets: vec![subnet("10.4.0.0/16")],
        ..ComputeConfig::default()
    })
    .await
    .expect("compute sim");
    let (a, b, c) = (seed(&sim, "vm-a"), seed(&sim, "vm-b"), seed(&sim, "vm-c"));
    let k8s = k8s_sim(K8sConfig::default()).await;
    let env = BTreeMap::from([
        ("NODEWIRE_PROJECT", P),
        ("NODEWIRE_SUBNET", "us-central1/k8s-nodes"),
        ("NODEWIRE_POD_RANGE", "10.4.0.0/16"),
        ("NODEWIRE_NODE_TAGS", "k8s-node"),
    ]);
    let deps = ChainDeps::new(
        Deps::new(
            Config::from_source(&env, "assign-alias").expect("config"),
            Arc::new(InProcessBus::new()),
        ),
        compute_client(&sim, fast_compute_policy()).await,
        kube_client(&k8s, fast_kube_policy()).await,
        ChainConfig::from_source(&env).expect("chain"),
    );
    let pods = AliasRange {
        cidr: "10.4.1.0/24".into(),
        range_name: Some("pods".into()),
    };
    deps.compute
        .set_alias_ranges(&a, &[pods])
        .await
        .expect("a holds the range");

    // Held by vm-a: a permanent conflict that names the holder.
    let err = run(&deps, &c).await.expect_err("held");
    assert!(
        matches!(&err, ActError::AliasConflict { holder, .. } if holder.contains("vm-a")),
        "{err}"
    );
    assert!(!err.is_retryable());

    // vm-a lets it go; at once vm-b cannot have it yet, and that is transient.
    deps.compute
        .set_alias_ranges(&a, &[])
        .await
        .expect("release");
    let err = run(&deps, &b).await.expect_err("not free yet");
    assert!(
        matches!(err, ActError::AliasNotYetFree { .. }),
        "a released range is not a conflict: {err}"
    );
    assert!(err.is_retryable(), "{err}");

    // A little later it is free, and the same step succeeds.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    run(&deps, &b)
        .await
        .expect("assignable after the release delay");
    let v = deps
        .compute
        .get_instance(&b)
        .await
        .expect("get")
        .expect("vm-b");
    let nic0 = v.nic0.expect("nic0");
    assert_eq!(nic0.aliases.len(), 1);
    assert_eq!(nic0.aliases[0].cidr, "10.4.1.0/24");
}
