//! Forged input reaching a function (issue 10's attack suite; more to come with that issue).
//! Expected each time: nothing acted on.

use std::time::Duration;

use integration_tests::simfix::P;
use integration_tests::world::{World, WorldOptions};
use nodewire::event::{Cause, CauseSource, Step, StepMessage};
use nodewire::names::InstanceRef;
use serde_json::json;

/// A `decommission` step naming a Node that has no providerID — a kubeadm control-plane
/// Node has none — for a VM that does not exist. The old planner deleted any Node without a
/// providerID of the gone VM's name; now only a Node whose providerID names that VM goes.
#[tokio::test]
async fn a_forged_decommission_does_not_delete_a_node_without_provider_id() {
    let w = World::start(WorldOptions::default()).await;
    let name = "k8s-control-plane";
    w.k8s
        .seed(
            "nodes",
            "",
            json!({"metadata": {"name": name, "labels": {"node-role.kubernetes.io/control-plane": ""}}}),
        )
        .expect("control-plane node");
    let mut msg = StepMessage::new(
        Step::Decommission,
        InstanceRef::new(P, "us-central1-a", name).expect("ref"),
        Cause {
            source: CauseSource::Replay,
            id: None,
        },
        "forged",
    );
    msg.node = Some(name.to_string());
    let data = serde_json::to_vec(&msg).expect("json");
    let emu = w.emu.as_ref().expect("the emulator");
    emu.publish("nodewire-decommission", &data, &[])
        .await
        .expect("publish");
    // The step is delivered and handled (a request for the Node is made), and nothing deleted.
    let handled = w
        .wait_until(Duration::from_secs(20), |w| {
            w.k8s
                .chaos()
                .requests()
                .iter()
                .any(|r| r.method == "nodes.get" && r.path.ends_with(name))
        })
        .await;
    assert!(handled, "the forged step was not delivered");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        w.k8s.object("nodes", "", name).is_some(),
        "the control-plane Node was deleted"
    );
    assert!(
        !w.k8s
            .chaos()
            .requests()
            .iter()
            .any(|r| r.method == "nodes.delete"),
        "a delete was sent"
    );
    w.stop().await;
}
