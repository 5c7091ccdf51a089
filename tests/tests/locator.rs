//! The production locator against both simulators: Node providerID first, then the VM list.

use integration_tests::simfix::*;
use nodewire::error::Classify as _;
use nodewire::locate::{ClusterLocator, LocateError, Locator};
use serde_json::json;
use sim::k8s::K8sConfig;

#[tokio::test]
async fn locates_by_provider_id_then_by_name() {
    let csim = compute_sim(0).await;
    let ksim = k8s_sim(K8sConfig::default()).await;
    let a = seed(&csim, "vm-a");
    seed(&csim, "vm-b");
    ksim.seed("nodes", "", json!({"metadata": {"name": "node-x"}, "spec": {"providerID": "gce://example-project/us-central1-a/vm-a"}})).expect("seed");
    let loc = ClusterLocator {
        kube: Some(kube_client(&ksim, fast_kube_policy()).await),
        compute: Some(compute_client(&csim, fast_compute_policy()).await),
    };
    assert_eq!(loc.locate("node-x").await.expect("by providerID"), Some(a));
    assert_eq!(
        loc.locate("vm-b")
            .await
            .expect("by name")
            .map(|r| r.name().to_string()),
        Some("vm-b".into())
    );
    assert_eq!(loc.locate("vm-none").await.expect("absent"), None);
    let filters: Vec<String> = csim
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "instances.aggregatedList")
        .map(|r| r.query)
        .collect();
    assert!(filters.iter().all(|q| q.contains("filter=")), "{filters:?}");
    // The same name in two zones cannot be resolved.
    csim.seed_instance(sim::compute::InstanceSeed {
        labels: Default::default(),
        ..sim::compute::InstanceSeed::node_vm(P, REGION, "us-central1-b", "vm-b")
    })
    .expect("seed");
    let err = loc.locate("vm-b").await.expect_err("ambiguous");
    assert!(
        matches!(err, LocateError::Failed { .. }) && !err.is_retryable(),
        "{err}"
    );
    let none = ClusterLocator {
        kube: None,
        compute: None,
    };
    assert!(matches!(
        none.locate("x").await,
        Err(LocateError::NotConfigured)
    ));
}
