//! One definition of "ours": with `NODEWIRE_INSTANCE_PREFIX` set, a VM whose name lacks the
//! prefix gets no write from any step function, however the step reaches it, and the drift
//! sweep neither reports nor heals it (nor a Node or token named outside the prefix).

use std::time::Duration;

use integration_tests::simfix::{P, REGION};
use integration_tests::world::{World, WorldOptions};
use nodewire::event::{Cause, CauseSource, Step, StepMessage};
use nodewire::names::InstanceRef;
use serde_json::json;
use sim::compute::InstanceSeed;

const Z: &str = "us-central1-a";

/// Every non-GET request either simulator received that names `needle`.
fn writes_naming(w: &World, needle: &str) -> Vec<String> {
    let compute = w
        .compute
        .chaos()
        .requests()
        .into_iter()
        .map(|r| (r.http_method, r.method, r.path));
    let k8s = w
        .k8s
        .chaos()
        .requests()
        .into_iter()
        .map(|r| (r.http_method, r.method, r.path));
    compute
        .chain(k8s)
        .filter(|(m, method, path)| {
            m != "GET" && !method.starts_with("zoneOperations") && path.contains(needle)
        })
        .map(|(m, method, path)| format!("{m} {method} {path}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vm_outside_the_prefix_is_never_touched_reported_or_healed() {
    let w = World::start(WorldOptions {
        name_prefix: Some("k8s-"),
        ..WorldOptions::default()
    })
    .await;
    // The control: a VM of ours is wired as usual.
    w.insert_vm(P, Z, "k8s-a", &[("cluster", "demo")], true)
        .await;
    // Everything else about web-1 says "ours": labels, subnet, IP forwarding. Only the name
    // lacks the prefix. It is seeded (no creation event), so only the sweep or a step can
    // reach it.
    w.compute
        .seed_instance(InstanceSeed::node_vm(P, REGION, Z, "web-1"))
        .expect("seed web-1");
    // A Node outside the prefix whose providerID names a VM that is gone, and a token for a
    // VM outside the prefix that is gone: drift, if they were ours.
    w.k8s
        .seed(
            "nodes",
            "",
            json!({"metadata": {"name": "web-gone"},
                   "spec": {"providerID": format!("gce://{P}/{Z}/web-gone")}}),
        )
        .expect("seed node");
    w.k8s
        .seed(
            "secrets",
            "kube-system",
            sim::k8s::token_secret("webtok", "web-old", Z, "2099-01-01T00:00:00Z"),
        )
        .expect("seed token");
    let ok = w
        .wait_until(Duration::from_secs(60), |w| w.wired(Z, "k8s-a").is_ok())
        .await;
    assert!(ok, "the VM of ours was wired");
    w.compute.chaos().clear_requests();
    w.k8s.chaos().clear_requests();

    // The sweep: nothing of web-* is drift.
    for dry_run in [true, false] {
        let r = w.sweep(dry_run).await;
        let named: Vec<&String> = r
            .affected
            .values()
            .flatten()
            .filter(|n| n.starts_with("web-"))
            .collect();
        assert!(
            named.is_empty(),
            "reported outside the prefix: {named:?} in {r:?}"
        );
        assert_eq!(r.total(), 0, "{r:?}");
        assert_eq!(r.steps, 0);
    }

    // Every step, published straight onto its topic as a forged or replayed message would be.
    let web1 = InstanceRef::new(P, Z, "web-1").expect("ref");
    for step in Step::ALL {
        let mut msg = StepMessage::new(
            step,
            web1.clone(),
            Cause {
                source: CauseSource::Sweep,
                id: None,
            },
            "selector-test",
        );
        msg.node = Some("web-gone".into());
        w.emu()
            .publish(
                &format!("nodewire-{}", step.as_str()),
                &msg.to_bytes().expect("step"),
                &[],
            )
            .await
            .expect("publish");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = [
        writes_naming(&w, "web-"),
        writes_naming(&w, "bootstrap-token"),
    ]
    .concat();
    assert!(
        writes.is_empty(),
        "writes for VMs outside the prefix: {writes:?}"
    );
    assert!(
        w.tokens_of("web-1").is_empty(),
        "no join token minted for web-1"
    );
    assert!(
        w.k8s.object("nodes", "", "web-gone").is_some(),
        "the Node outside the prefix stays"
    );
    assert!(w.wired(Z, "k8s-a").is_ok(), "the VM of ours is still wired");
    w.stop().await;
}
