//! The Compute simulator refuses what the real API refuses. Raw HTTP, no nodewire client.

use std::time::Duration;

use nodewire::names::Cidr;
use serde_json::{Value, json};
use sim::compute::{ComputeConfig, ComputeSim, InstanceSeed, SubnetSpec};

const P: &str = "example-project";
const Z: &str = "us-central1-a";

fn cidr(s: &str) -> Cidr {
    s.parse().expect("cidr")
}

fn subnet(pods: &str) -> SubnetSpec {
    SubnetSpec::node_subnet(
        P,
        "us-central1",
        cidr("10.128.0.0/20"),
        cidr(pods),
        cidr("172.16.16.0/21"),
    )
}

async fn sim(latency_ms: u64, pods: &str) -> ComputeSim {
    let s = ComputeSim::start(ComputeConfig {
        op_latency: Duration::from_millis(latency_ms),
        subnets: vec![subnet(pods)],
        ..ComputeConfig::default()
    })
    .await
    .expect("start");
    for n in ["vm-a", "vm-b"] {
        s.seed_instance(InstanceSeed {
            tags: vec!["base".into()],
            labels: Default::default(),
            metadata: vec![("keep".into(), "me".into())],
            ..InstanceSeed::node_vm(P, "us-central1", Z, n)
        })
        .expect("seed");
    }
    s
}

fn url(s: &ComputeSim, rest: &str) -> String {
    format!("{}/compute/v1/projects/{P}/zones/{Z}/{rest}", s.endpoint())
}

async fn get(s: &ComputeSim, name: &str) -> Value {
    reqwest::get(url(s, &format!("instances/{name}")))
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn send(method: reqwest::Method, u: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, u)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn wait_done(s: &ComputeSim, op: &Value) -> Value {
    let name = op["name"].as_str().expect("op name");
    for _ in 0..100 {
        let (_, o) = send(
            reqwest::Method::POST,
            &url(s, &format!("operations/{name}/wait")),
            json!({}),
        )
        .await;
        if o["status"] == "DONE" {
            return o;
        }
    }
    panic!("operation never finished")
}

#[tokio::test]
async fn stale_or_missing_fingerprints_are_refused() {
    let s = sim(0, "10.4.0.0/16").await;
    let vm = get(&s, "vm-a").await;
    let fp = vm["tags"]["fingerprint"].as_str().expect("fp").to_string();
    assert!(
        !fp.contains('+') && !fp.contains('/'),
        "URL-safe base64: {fp}"
    );
    let (st, op) = send(
        reqwest::Method::POST,
        &url(&s, "instances/vm-a/setTags"),
        json!({"items": ["x"], "fingerprint": fp}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(op["status"], "DONE");
    // The same (now stale) fingerprint again: 412 conditionNotMet, as the API answers.
    let (st, body) = send(
        reqwest::Method::POST,
        &url(&s, "instances/vm-a/setTags"),
        json!({"items": ["y"], "fingerprint": fp}),
    )
    .await;
    assert_eq!(st, 412);
    assert_eq!(body["error"]["errors"][0]["reason"], "conditionNotMet");
    let (st, _) = send(
        reqwest::Method::POST,
        &url(&s, "instances/vm-a/setMetadata"),
        json!({"items": []}),
    )
    .await;
    assert_eq!(st, 412, "metadata without fingerprint");
    let (st, body) = send(
        reqwest::Method::PATCH,
        &url(
            &s,
            "instances/vm-a/updateNetworkInterface?networkInterface=nic0",
        ),
        json!({"aliasIpRanges": []}),
    )
    .await;
    assert_eq!(st, 400, "NIC update without fingerprint: {body}");
    assert_eq!(get(&s, "vm-a").await["tags"]["items"], json!(["x"]));
}

#[tokio::test]
async fn alias_ranges_are_validated() {
    let s = sim(0, "10.4.0.0/23").await;
    let nic_fp = |vm: &Value| {
        vm["networkInterfaces"][0]["fingerprint"]
            .as_str()
            .expect("fp")
            .to_string()
    };
    let nic = |s: &ComputeSim, name: &str| {
        url(
            s,
            &format!("instances/{name}/updateNetworkInterface?networkInterface=nic0"),
        )
    };
    let a = get(&s, "vm-a").await;
    // Outside the secondary range: 400.
    let (st, body) = send(reqwest::Method::PATCH, &nic(&s, "vm-a"), json!({"fingerprint": nic_fp(&a), "aliasIpRanges": [{"ipCidrRange": "10.9.0.0/24", "subnetworkRangeName": "pods"}]})).await;
    assert_eq!(st, 400, "{body}");
    // Unknown range name: 400.
    let (st, _) = send(reqwest::Method::PATCH, &nic(&s, "vm-a"), json!({"fingerprint": nic_fp(&a), "aliasIpRanges": [{"ipCidrRange": "10.4.0.0/24", "subnetworkRangeName": "nope"}]})).await;
    assert_eq!(st, 400);
    // A valid range.
    let (st, op) = send(reqwest::Method::PATCH, &nic(&s, "vm-a"), json!({"fingerprint": nic_fp(&a), "aliasIpRanges": [{"ipCidrRange": "10.4.0.0/24", "subnetworkRangeName": "pods"}]})).await;
    assert_eq!(st, 200);
    assert!(wait_done(&s, &op).await.get("error").is_none());
    // The same range on another VM: the operation fails with IP_IN_USE_BY_ANOTHER_RESOURCE.
    let b = get(&s, "vm-b").await;
    let (st, op) = send(reqwest::Method::PATCH, &nic(&s, "vm-b"), json!({"fingerprint": nic_fp(&b), "aliasIpRanges": [{"ipCidrRange": "10.4.0.128/25", "subnetworkRangeName": "pods"}]})).await;
    assert_eq!(st, 200);
    let done = wait_done(&s, &op).await;
    assert_eq!(
        done["error"]["errors"][0]["code"], "IP_IN_USE_BY_ANOTHER_RESOURCE",
        "{done}"
    );
    assert!(
        get(&s, "vm-b").await["networkInterfaces"][0]
            .get("aliasIpRanges")
            .is_none()
    );
    // A bare /24 allocates the free block; the next one finds the range exhausted.
    let (_, op) = send(reqwest::Method::PATCH, &nic(&s, "vm-b"), json!({"fingerprint": nic_fp(&get(&s, "vm-b").await), "aliasIpRanges": [{"ipCidrRange": "/24", "subnetworkRangeName": "pods"}]})).await;
    assert!(wait_done(&s, &op).await.get("error").is_none());
    assert_eq!(
        get(&s, "vm-b").await["networkInterfaces"][0]["aliasIpRanges"][0]["ipCidrRange"],
        "10.4.1.0/24"
    );
    let a = get(&s, "vm-a").await;
    let (_, op) = send(reqwest::Method::PATCH, &nic(&s, "vm-a"), json!({"fingerprint": nic_fp(&a), "aliasIpRanges": [{"ipCidrRange": "10.4.0.0/24", "subnetworkRangeName": "pods"}, {"ipCidrRange": "/24", "subnetworkRangeName": "pods"}]})).await;
    assert_eq!(
        wait_done(&s, &op).await["error"]["errors"][0]["code"],
        "IP_SPACE_EXHAUSTED"
    );
    // PATCH semantics: a body without aliasIpRanges leaves them as they are.
    let a = get(&s, "vm-a").await;
    let (_, op) = send(
        reqwest::Method::PATCH,
        &nic(&s, "vm-a"),
        json!({"fingerprint": nic_fp(&a)}),
    )
    .await;
    wait_done(&s, &op).await;
    assert_eq!(
        get(&s, "vm-a").await["networkInterfaces"][0]["aliasIpRanges"][0]["ipCidrRange"],
        "10.4.0.0/24"
    );
}

/// "Alias IP ranges can be added or deleted, but they can't be updated."
/// (<https://cloud.google.com/vpc/docs/configure-alias-ip-ranges>, Limitations.)
#[tokio::test]
async fn an_alias_range_is_added_or_deleted_never_updated() {
    let s = sim(0, "10.4.0.0/22").await;
    let fp = |vm: &Value| {
        vm["networkInterfaces"][0]["fingerprint"]
            .as_str()
            .expect("fp")
            .to_string()
    };
    let nic = url(
        &s,
        "instances/vm-a/updateNetworkInterface?networkInterface=nic0",
    );
    let range = |c: &str| json!({"ipCidrRange": c, "subnetworkRangeName": "pods"});
    let patch =
        |fp: String, ranges: Vec<Value>| json!({"fingerprint": fp, "aliasIpRanges": ranges});
    let (st, op) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(fp(&get(&s, "vm-a").await), vec![range("10.4.0.0/24")]),
    )
    .await;
    assert_eq!(st, 200);
    assert!(wait_done(&s, &op).await.get("error").is_none());
    // Replacing the range by another in one request is an update: refused at once, 400.
    let (st, body) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(fp(&get(&s, "vm-a").await), vec![range("10.4.1.0/24")]),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.4.0.0/24")),
        "{body}"
    );
    // So is moving the same block to another secondary range name, or a bare /N in its place.
    let (st, _) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(
            fp(&get(&s, "vm-a").await),
            vec![json!({"ipCidrRange": "10.4.0.0/24"})],
        ),
    )
    .await;
    assert_eq!(st, 400);
    let (st, _) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(fp(&get(&s, "vm-a").await), vec![range("/24")]),
    )
    .await;
    assert_eq!(st, 400);
    assert_eq!(
        get(&s, "vm-a").await["networkInterfaces"][0]["aliasIpRanges"][0]["ipCidrRange"],
        "10.4.0.0/24"
    );
    // Keeping it and adding one is an addition; dropping one is a deletion: both accepted.
    let (st, op) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(
            fp(&get(&s, "vm-a").await),
            vec![range("10.4.0.0/24"), range("10.4.1.0/24")],
        ),
    )
    .await;
    assert_eq!(st, 200);
    assert!(wait_done(&s, &op).await.get("error").is_none());
    let (st, op) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(fp(&get(&s, "vm-a").await), vec![range("10.4.1.0/24")]),
    )
    .await;
    assert_eq!(st, 200);
    assert!(wait_done(&s, &op).await.get("error").is_none());
    // Delete, then add: the way to move to another range.
    let (st, op) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(fp(&get(&s, "vm-a").await), vec![]),
    )
    .await;
    assert_eq!(st, 200);
    assert!(wait_done(&s, &op).await.get("error").is_none());
    let (st, op) = send(
        reqwest::Method::PATCH,
        &nic,
        patch(fp(&get(&s, "vm-a").await), vec![range("10.4.2.0/24")]),
    )
    .await;
    assert_eq!(st, 200);
    assert!(wait_done(&s, &op).await.get("error").is_none());
    assert_eq!(
        get(&s, "vm-a").await["networkInterfaces"][0]["aliasIpRanges"][0]["ipCidrRange"],
        "10.4.2.0/24"
    );
}

#[tokio::test]
async fn async_condition_not_met_and_request_id_idempotency() {
    let s = sim(300, "10.4.0.0/16").await;
    let vm = get(&s, "vm-a").await;
    let fp = vm["metadata"]["fingerprint"]
        .as_str()
        .expect("fp")
        .to_string();
    let u = url(
        &s,
        "instances/vm-a/setMetadata?requestId=6f1c2b7e-3d4a-4f5b-8c9d-0e1f2a3b4c5d",
    );
    let (st, op1) = send(
        reqwest::Method::POST,
        &u,
        json!({"fingerprint": fp, "items": [{"key": "a", "value": "1"}]}),
    )
    .await;
    assert_eq!(st, 200);
    assert_ne!(op1["status"], "DONE");
    // Same requestId: the same operation, not a second write.
    let (_, again) = send(
        reqwest::Method::POST,
        &u,
        json!({"fingerprint": fp, "items": [{"key": "a", "value": "1"}]}),
    )
    .await;
    assert_eq!(again["name"], op1["name"]);
    // A second change while op1 runs is refused at once: 400 resourceNotReady, as Compute
    // Engine answers it (shared/formats/gce-error-bodies.json, "400_resourceNotReady").
    let (st, busy) = send(
        reqwest::Method::POST,
        &url(&s, "instances/vm-a/setMetadata"),
        json!({"fingerprint": fp, "items": [{"key": "b", "value": "2"}]}),
    )
    .await;
    assert_eq!(st, 400, "{busy}");
    assert_eq!(busy["error"]["errors"][0]["reason"], "resourceNotReady");
    assert!(wait_done(&s, &op1).await.get("error").is_none());
    // A writer accepted with the current fingerprint still loses at DONE when the fingerprint
    // changed in between (another writer's change landed): CONDITION_NOT_MET, nothing applied.
    let fp = get(&s, "vm-a").await["metadata"]["fingerprint"]
        .as_str()
        .expect("fp")
        .to_string();
    let (st, op2) = send(
        reqwest::Method::POST,
        &url(&s, "instances/vm-a/setMetadata"),
        json!({"fingerprint": fp, "items": [{"key": "b", "value": "2"}]}),
    )
    .await;
    assert_eq!(st, 200);
    s.tamper(|w| {
        let i = w
            .instances
            .get_mut(&(P.into(), Z.into(), "vm-a".into()))
            .expect("vm");
        i.metadata_fp = sim::compute::Fingerprint(i.metadata_fp.0.wrapping_add(1));
    });
    let d2 = wait_done(&s, &op2).await;
    assert_eq!(d2["error"]["errors"][0]["code"], "CONDITION_NOT_MET");
    assert_eq!(d2["httpErrorStatusCode"], 412);
    assert_eq!(
        get(&s, "vm-a").await["metadata"]["items"],
        json!([{"key": "a", "value": "1"}])
    );
    let writes = s.with_world(|w| {
        w.operations
            .values()
            .filter(|o| o.op_type == "setMetadata")
            .count()
    });
    assert_eq!(
        writes, 2,
        "neither the duplicate requestId nor the refused change created an operation"
    );
}

#[tokio::test]
async fn operations_progress_and_wait_may_return_early() {
    let s = ComputeSim::start(ComputeConfig {
        op_latency: Duration::from_millis(600),
        wait_max: Duration::from_millis(400),
        wait_early_return: 1.0,
        subnets: vec![subnet("10.4.0.0/16")],
        ..ComputeConfig::default()
    })
    .await
    .expect("start");
    let (st, op) = send(
        reqwest::Method::POST,
        &url(&s, "instances"),
        json!({"name": "vm-new", "machineType": "zones/us-central1-a/machineTypes/e2-small", "canIpForward": true,
               "networkInterfaces": [{"subnetwork": "regions/us-central1/subnetworks/k8s-nodes"}]}),
    )
    .await;
    assert_eq!(st, 200);
    assert_eq!(op["status"], "PENDING");
    let name = op["name"].as_str().expect("name");
    let (_, w) = send(
        reqwest::Method::POST,
        &url(&s, &format!("operations/{name}/wait")),
        json!({}),
    )
    .await;
    assert_ne!(w["status"], "DONE", "wait returned early, before DONE");
    let done = wait_done(&s, &op).await;
    assert!(done.get("error").is_none());
    let vm = get(&s, "vm-new").await;
    assert_eq!(vm["canIpForward"], true);
    assert_eq!(
        vm["networkInterfaces"][0]["networkIP"], "10.128.0.2",
        "first host of the primary range"
    );
    let (st, _) = send(reqwest::Method::POST, &url(&s, "instances"), json!({"name": "vm-new", "networkInterfaces": [{"subnetwork": "regions/us-central1/subnetworks/k8s-nodes"}]})).await;
    assert_eq!(st, 409, "already exists");
    let (st, _) = send(reqwest::Method::POST, &url(&s, "instances"), json!({"name": "Bad_Name", "networkInterfaces": [{"subnetwork": "regions/us-central1/subnetworks/k8s-nodes"}]})).await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn lists_paginate_and_filter() {
    let s = sim(0, "10.4.0.0/16").await;
    let (st, body) = reqwest::get(format!(
        "{}/compute/v1/projects/{P}/aggregated/instances?maxResults=1",
        s.endpoint()
    ))
    .await
    .map(|r| (r.status().as_u16(), r))
    .expect("get");
    assert_eq!(st, 200);
    let body: Value = body.json().await.expect("json");
    assert_eq!(
        body["items"]["zones/us-central1-a"]["instances"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let token = body["nextPageToken"].as_str().expect("next page");
    let body: Value = reqwest::get(format!(
        "{}/compute/v1/projects/{P}/aggregated/instances?maxResults=1&pageToken={token}",
        s.endpoint()
    ))
    .await
    .expect("get")
    .json()
    .await
    .expect("json");
    assert_eq!(
        body["items"]["zones/us-central1-a"]["instances"][0]["name"],
        "vm-b"
    );
    assert!(body.get("nextPageToken").is_none());
    let r = reqwest::get(format!(
        "{}/compute/v1/projects/{P}/aggregated/instances?filter=name%20%3D%20%22vm-b%22",
        s.endpoint()
    ))
    .await
    .expect("get");
    let body: Value = r.json().await.expect("json");
    assert_eq!(
        body["items"]["zones/us-central1-a"]["instances"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    let r = reqwest::get(format!(
        "{}/compute/v1/projects/{P}/aggregated/instances?maxResults=501",
        s.endpoint()
    ))
    .await
    .expect("get");
    assert_eq!(r.status().as_u16(), 400);
    let r = reqwest::get(format!(
        "{}/compute/v1/projects/{P}/aggregated/instances?filter=bogus%20~%20x",
        s.endpoint()
    ))
    .await
    .expect("get");
    assert_eq!(r.status().as_u16(), 400);
}

/// "Configuring alias IP ranges": a VM can be created with alias ranges, explicit or by size
/// (`/24` from the secondary range it names, as `gcloud … --network-interface=…,aliases=pods:/24`
/// or an instance template asks); Compute Engine picks the block when it creates the VM. A block
/// another VM holds (`IP_IN_USE_BY_ANOTHER_RESOURCE`) or a full range (`IP_SPACE_EXHAUSTED`)
/// fails the insert's operation, and no VM is created; a range the subnet does not have, or
/// overlapping ranges in one request, are refused synchronously (issue 22).
#[tokio::test]
async fn an_insert_may_ask_for_alias_ranges_explicit_or_by_size() {
    // Two /24 blocks in the pod range; vm-a holds the first.
    let s = sim(0, "10.4.0.0/23").await;
    s.tamper(|w| {
        if let Some(i) = w
            .instances
            .get_mut(&(P.to_string(), Z.to_string(), "vm-a".to_string()))
        {
            i.nics[0].aliases = vec![sim::compute::Alias {
                cidr: cidr("10.4.0.0/24"),
                range_name: Some("pods".into()),
            }];
        }
    });
    let insert = |name: &str, aliases: Value| {
        json!({
            "name": name,
            "networkInterfaces": [{
                "subnetwork": format!("projects/{P}/regions/us-central1/subnetworks/k8s-nodes"),
                "aliasIpRanges": aliases,
            }],
        })
    };
    let by_size = json!([{"ipCidrRange": "/24", "subnetworkRangeName": "pods"}]);

    let (st, op) = send(
        reqwest::Method::POST,
        &url(&s, "instances"),
        insert("new-1", by_size.clone()),
    )
    .await;
    assert_eq!(st, 200, "{op}");
    let done = wait_done(&s, &op).await;
    assert!(done.get("error").is_none(), "{done}");
    let vm = get(&s, "new-1").await;
    assert_eq!(
        vm.pointer("/networkInterfaces/0/aliasIpRanges"),
        Some(&json!([{"ipCidrRange": "10.4.1.0/24", "subnetworkRangeName": "pods"}])),
        "the free block, not vm-a's: {vm}"
    );

    // The range is full now: the operation fails, no VM.
    let (st, op) = send(
        reqwest::Method::POST,
        &url(&s, "instances"),
        insert("new-2", by_size.clone()),
    )
    .await;
    assert_eq!(st, 200, "{op}");
    let done = wait_done(&s, &op).await;
    assert_eq!(
        done.pointer("/error/errors/0/code"),
        Some(&json!("IP_SPACE_EXHAUSTED")),
        "{done}"
    );
    assert!(
        get(&s, "new-2").await.get("error").is_some(),
        "no VM after a failed insert"
    );

    // A block another VM holds.
    let exact = json!([{"ipCidrRange": "10.4.0.0/24", "subnetworkRangeName": "pods"}]);
    let (_, op) = send(
        reqwest::Method::POST,
        &url(&s, "instances"),
        insert("new-3", exact),
    )
    .await;
    let done = wait_done(&s, &op).await;
    assert_eq!(
        done.pointer("/error/errors/0/code"),
        Some(&json!("IP_IN_USE_BY_ANOTHER_RESOURCE")),
        "{done}"
    );
    assert!(get(&s, "new-3").await.get("error").is_some());

    // Refused at once: a range the subnet does not have; overlapping ranges in one request.
    let (st, body) = send(
        reqwest::Method::POST,
        &url(&s, "instances"),
        insert(
            "new-4",
            json!([{"ipCidrRange": "/24", "subnetworkRangeName": "nope"}]),
        ),
    )
    .await;
    assert_eq!(st, 400, "{body}");
    let (st, body) = send(
        reqwest::Method::POST,
        &url(&s, "instances"),
        insert(
            "new-5",
            json!([
                {"ipCidrRange": "10.4.1.0/25", "subnetworkRangeName": "pods"},
                {"ipCidrRange": "10.4.1.0/24", "subnetworkRangeName": "pods"},
            ]),
        ),
    )
    .await;
    assert_eq!(st, 400, "{body}");
}
