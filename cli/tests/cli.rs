//! The `nodewire` binary as an operator runs it: subprocesses against the real Pub/Sub
//! emulator and the simulators.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use sim::emulator::Emulator;
use sim::stack::{Stack, StackOptions};

const P: &str = "example-project";

async fn nodewire(args: &[&str], env: &BTreeMap<String, String>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_nodewire"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("nodewire finished in time")
        .expect("nodewire ran")
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

use nodewire::testing::fixture_json as fixture;

async fn emulator() -> Emulator {
    Emulator::start(P)
        .await
        .unwrap_or_else(|e| panic!("the Pub/Sub emulator is required: {e}"))
}

fn env_for(emu: &Emulator) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("NODEWIRE_PROJECT".to_string(), P.to_string()),
        ("PUBSUB_EMULATOR_HOST".to_string(), emu.host()),
    ])
}

#[tokio::test]
async fn sandbox_runs_to_a_healed_summary() {
    for args in [
        vec!["--json", "sandbox", "--vms", "3"],
        vec!["--json", "sandbox", "--vms", "3", "--in-process"],
        vec![
            "--json",
            "sandbox",
            "--vms",
            "3",
            "--range-order",
            "cluster-first",
        ],
    ] {
        let out = nodewire(&args, &BTreeMap::new()).await;
        assert!(
            out.status.success(),
            "{args:?}: exit {:?}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let json_start = text.find("\n{").map_or(0, |i| i + 1);
        let summary: Value =
            serde_json::from_str(&text[json_start..]).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(summary["vms"], 3);
        assert_eq!(summary["wired"], 3, "{summary}");
        assert_eq!(summary["healed"], true);
        assert!(
            summary["drift_found"].as_u64().is_some_and(|n| n >= 3),
            "{summary}"
        );
        assert_eq!(summary["nodes"].as_array().map(Vec::len), Some(3));
        let expected_bus = if args.contains(&"--in-process") {
            "in-process"
        } else {
            "emulator"
        };
        assert_eq!(summary["bus"], expected_bus);
    }
    let bad = nodewire(
        &["sandbox", "--range-order", "pods-first"],
        &BTreeMap::new(),
    )
    .await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("cluster-first or alias-first"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = nodewire(&["sandbox", "--vms", "9"], &BTreeMap::new()).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--pods-range"));
}

#[tokio::test]
async fn replay_file_sends_each_entry_to_its_source_topic() {
    let emu = emulator().await;
    for t in ["gce-audit", "k8s-audit"] {
        emu.create_topic(t).await.expect("topic");
        emu.create_subscription(&format!("{t}-observer"), t, json!({}))
            .await
            .expect("sub");
    }
    let env = env_for(&emu);
    let dir = std::env::temp_dir().join(format!("nodewire-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // `gcloud logging read --format=json` prints a pretty JSON array.
    let gcloud = json!([fixture("gce-insert-last.json"), fixture("opsagent-k8s-audit-logentry.json"), {"insertId": "x", "textPayload": "hello"}]);
    let file = dir.join("gcloud.json");
    std::fs::write(&file, serde_json::to_string_pretty(&gcloud).expect("json")).expect("write");
    let out = nodewire(
        &[
            "replay",
            "--file",
            file.to_str().expect("path"),
            "--dry-run",
        ],
        &env,
    )
    .await;
    assert!(
        out.status.code() == Some(3),
        "one entry is skipped: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        emu.pull("gce-audit-observer", 10)
            .await
            .expect("pull")
            .is_empty(),
        "a dry run publishes nothing"
    );
    let out = nodewire(
        &["--json", "replay", "--file", file.to_str().expect("path")],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(3));
    let summary = stdout_json(&out);
    assert_eq!(summary["published"].as_array().map(Vec::len), Some(2));
    assert!(
        summary["skipped"][0]
            .as_str()
            .is_some_and(|s| s.contains("neither"))
    );
    let gce = emu.pull("gce-audit-observer", 10).await.expect("pull");
    assert_eq!(gce.len(), 1);
    assert_eq!(
        gce[0].attributes["logging.googleapis.com/timestamp"],
        "2024-11-19T13:13:47.971786Z"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&gce[0].data).expect("json"),
        fixture("gce-insert-last.json")
    );
    assert_eq!(
        emu.pull("k8s-audit-observer", 10)
            .await
            .expect("pull")
            .len(),
        1
    );
    // A single LogEntry.
    let one = dir.join("one.json");
    std::fs::write(&one, fixture("gce-insert-last.json").to_string()).expect("write");
    let out = nodewire(&["replay", "--file", one.to_str().expect("path")], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        emu.pull("gce-audit-observer", 10)
            .await
            .expect("pull")
            .len(),
        1
    );
    // Not JSON: a clear error, exit 1.
    let junk = dir.join("junk.json");
    std::fs::write(&junk, "not json at all").expect("write");
    let out = nodewire(&["replay", "--file", junk.to_str().expect("path")], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not JSON"));
    // Missing configuration: exit 64 naming the variable.
    let out = nodewire(
        &["replay", "--file", one.to_str().expect("path")],
        &BTreeMap::new(),
    )
    .await;
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NODEWIRE_PROJECT"));
}

#[tokio::test]
async fn dead_letters_are_shown_then_republished_by_choice() {
    let emu = emulator().await;
    for t in ["gce-audit", "nodewire-dead-letter"] {
        emu.create_topic(t).await.expect("topic");
    }
    // The subscription the messages died on, and an observer of the topic it reads.
    emu.create_subscription("gce-audit-push", "gce-audit", json!({}))
        .await
        .expect("sub");
    emu.create_subscription("gce-audit-observer", "gce-audit", json!({}))
        .await
        .expect("sub");
    emu.create_subscription(
        "dlq",
        "nodewire-dead-letter",
        json!({"ackDeadlineSeconds": 10}),
    )
    .await
    .expect("sub");
    let source = format!("projects/{P}/subscriptions/gce-audit-push");
    emu.publish(
        "nodewire-dead-letter",
        b"{truncated",
        &[
            (
                "nodewire-dead-letter-reason",
                "undecodable payload: malformed JSON",
            ),
            ("nodewire-dead-letter-subscription", &source),
            ("origin", "a"),
        ],
    )
    .await
    .expect("publish");
    let entry = fixture("gce-insert-last.json").to_string();
    emu.publish(
        "nodewire-dead-letter",
        entry.as_bytes(),
        &[
            ("nodewire-dead-letter-reason", "VM has no canIpForward"),
            ("nodewire-dead-letter-subscription", &source),
            (
                "instance",
                "projects/example-project/zones/us-central1-a/instances/k8s-worker-1",
            ),
            ("origin", "b"),
        ],
    )
    .await
    .expect("publish");
    let env = env_for(&emu);
    let out = nodewire(
        &[
            "--json",
            "replay",
            "--dead-letter",
            "dlq",
            "--quiet-secs",
            "2",
        ],
        &env,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = stdout_json(&out);
    assert_eq!(shown.as_array().map(Vec::len), Some(2), "{shown}");
    assert!(
        shown
            .as_array()
            .into_iter()
            .flatten()
            .all(|d| d["republished_to"].is_null())
    );
    assert!(
        emu.pull("gce-audit-observer", 10)
            .await
            .expect("pull")
            .is_empty()
    );
    // Only the chosen one is republished (and acknowledged).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = nodewire(
        &[
            "--json",
            "replay",
            "--dead-letter",
            "dlq",
            "--filter",
            "canIpForward",
            "--quiet-secs",
            "3",
        ],
        &env,
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = emu.pull("gce-audit-observer", 10).await.expect("pull");
    assert_eq!(back.len(), 1, "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(back[0].data, entry.as_bytes());
    assert_eq!(
        back[0].attributes.get("origin").map(String::as_str),
        Some("b")
    );
    assert!(
        !back[0]
            .attributes
            .keys()
            .any(|k| k.starts_with("nodewire-dead-letter-")),
        "{:?}",
        back[0].attributes
    );
    // A dead letter naming a subscription of someone else's (whose topic is not nodewire's):
    // shown, never followed. Its content (a Compute audit entry) decides where it goes back.
    emu.create_topic("elsewhere").await.expect("topic");
    emu.create_subscription("elsewhere-sub", "elsewhere", json!({}))
        .await
        .expect("sub");
    emu.create_subscription("elsewhere-observer", "elsewhere", json!({}))
        .await
        .expect("sub");
    let elsewhere = format!("projects/{P}/subscriptions/elsewhere-sub");
    emu.publish(
        "nodewire-dead-letter",
        entry.as_bytes(),
        &[
            ("nodewire-dead-letter-reason", "forged"),
            ("nodewire-dead-letter-subscription", &elsewhere),
            ("origin", "c"),
        ],
    )
    .await
    .expect("publish");
    let out = nodewire(
        &[
            "--json",
            "replay",
            "--dead-letter",
            "dlq",
            "--all",
            "--quiet-secs",
            "3",
        ],
        &env,
    )
    .await;
    assert!(out.status.success());
    let rest = stdout_json(&out);
    assert_eq!(
        rest.as_array().map(Vec::len),
        Some(2),
        "the republished one was acknowledged: {rest}"
    );
    // The truncated message has no destination: refused, left on the subscription.
    assert!(
        rest.as_array()
            .into_iter()
            .flatten()
            .any(|d| d["refused"].is_string() && d["republished_to"].is_null()),
        "{rest}"
    );
    let back = emu.pull("gce-audit-observer", 10).await.expect("pull");
    assert_eq!(back.len(), 1, "{rest}");
    assert_eq!(
        back[0].attributes.get("origin").map(String::as_str),
        Some("c")
    );
    assert!(
        emu.pull("elsewhere-observer", 10)
            .await
            .expect("pull")
            .is_empty(),
        "a destination named in a message is never followed"
    );
    // --max bounds a run: one message looked at, the rest left for later.
    let out = nodewire(
        &[
            "--json",
            "replay",
            "--dead-letter",
            "dlq",
            "--max",
            "1",
            "--quiet-secs",
            "1",
        ],
        &env,
    )
    .await;
    assert!(out.status.success());
    assert_eq!(stdout_json(&out).as_array().map(Vec::len), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_replay_instance_and_sweep_against_a_running_system() {
    // Metadata mode: a VM whose creation event was lost stays unbootstrapped until nodewire
    // acts (in pull mode its own join request would start it).
    let stack = Stack::start(StackOptions {
        join_mode: nodewire::config::JoinMode::Metadata,
        ..StackOptions::default()
    })
    .await
    .expect("stack");
    let env: BTreeMap<String, String> = stack.env().clone();
    // A VM whose creation event was lost.
    stack
        .compute
        .seed_instance(sim::compute::InstanceSeed::node_vm(
            P,
            "us-central1",
            "us-central1-a",
            "k8s-lost",
        ))
        .expect("seed");
    let out = nodewire(&["--json", "status", "k8s-lost"], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stdout_json(&out);
    assert_eq!(rows[0]["state"], "not bootstrapped", "{rows}");
    let out = nodewire(&["--json", "sweep", "--dry-run"], &env).await;
    let report = stdout_json(&out);
    assert_eq!(report["drift"]["never-bootstrapped"], 1, "{report}");
    assert_eq!(report["dry_run"], true);
    let path = "projects/example-project/zones/us-central1-a/instances/k8s-lost";
    let out = nodewire(&["replay", "--instance", path, "--dry-run"], &env).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("would publish bootstrap"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = nodewire(&["replay", "--instance", path], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s
                .wired("us-central1-a", "k8s-lost")
                .is_ok())
            .await,
        "replayed VM wired"
    );
    let out = nodewire(&["--json", "status"], &env).await;
    let rows = stdout_json(&out);
    assert!(
        rows.as_array()
            .into_iter()
            .flatten()
            .any(|r| r["vm"] == "k8s-lost" && r["state"] == "wired"),
        "{rows}"
    );
    let out = nodewire(&["--json", "sweep"], &env).await;
    assert_eq!(stdout_json(&out)["steps"], 0);
    let out = nodewire(&["status", "nope"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    let out = nodewire(&["replay", "--instance", "not/a/path"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    stack.stop().await;
}

/// Issue 19, item 2: a VM the `join` service refuses is shown by `nodewire status` with the
/// same reason — the planner's one decision — not as "waiting for the VM's join request"
/// forever. One VM per condition, each refused by the real service over HTTP first.
#[tokio::test]
async fn status_says_why_the_join_service_refuses_a_vm() {
    use sim::compute::InstanceSeed;
    const Z: &str = "us-central1-a";
    let stack = Stack::start(StackOptions::default()).await.expect("stack");
    let env: BTreeMap<String, String> = stack.env().clone();
    let seed = |s: InstanceSeed| stack.compute.seed_instance(s).expect("seed");
    let vm = |name: &str| InstanceSeed::node_vm(P, "us-central1", Z, name);
    // As `gcloud compute instances create` makes it without --service-account: the project's
    // Compute Engine default account.
    seed(InstanceSeed {
        service_accounts: vec!["123456789-compute@developer.gserviceaccount.com".into()],
        ..vm("k8s-sa")
    });
    seed(InstanceSeed {
        can_ip_forward: false,
        ..vm("k8s-nofwd")
    });
    seed(vm("k8s-subnet"));
    seed(InstanceSeed {
        labels: BTreeMap::new(),
        ..vm("k8s-nolabel")
    });
    seed(vm("k8s-stopped"));
    seed(vm("k8s-noded"));
    // Their identity tokens, asked while they run.
    let token = |name: &str| {
        stack
            .metadata
            .identity_token(&format!("{P}/{Z}/{name}"), sim::stack::JOIN_AUDIENCE)
            .unwrap_or_else(|e| panic!("a token for {name}: {e:?}"))
    };
    let tokens: BTreeMap<&str, String> = [
        "k8s-sa",
        "k8s-nofwd",
        "k8s-subnet",
        "k8s-nolabel",
        "k8s-stopped",
        "k8s-noded",
    ]
    .into_iter()
    .map(|n| (n, token(n)))
    .collect();
    stack.compute.tamper(|w| {
        for ((_, _, name), i) in w.instances.iter_mut() {
            match name.as_str() {
                "k8s-stopped" => i.status = "TERMINATED".into(),
                "k8s-subnet" => {
                    if let Some(nic) = i.nics.first_mut() {
                        nic.subnet.2 = "default".into();
                    }
                }
                _ => {}
            }
        }
    });
    // A Node of that name that another VM registered (another zone's VM of the same name).
    stack
        .k8s
        .seed(
            "nodes",
            "",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "k8s-noded"},
                   "spec": {"providerID": format!("gce://{P}/us-central1-b/k8s-noded")}}),
        )
        .expect("seed the Node");

    let join = format!(
        "{}/v1/join",
        env.get("NODEWIRE_JOIN_URL").expect("the join URL")
    );
    let http = reqwest::Client::new();
    let out = nodewire(&["--json", "status"], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stdout_json(&out);
    let cases = [
        ("k8s-sa", 403, "wrong-service-account"),
        ("k8s-nofwd", 403, "no-ip-forwarding"),
        ("k8s-subnet", 403, "wrong-subnet"),
        ("k8s-nolabel", 403, "not-selected"),
        ("k8s-stopped", 403, "not-running"),
        ("k8s-noded", 409, "node-exists"),
    ];
    for (name, code, kind) in cases {
        let resp = http
            .post(&join)
            .bearer_auth(&tokens[name])
            .send()
            .await
            .expect("the join service answers");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, code, "{name}: {body}");
        let row = rows
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["vm"] == name)
            .unwrap_or_else(|| panic!("no status row for {name}: {rows}"));
        assert_eq!(row["state"], "will not join", "{name}: {row}");
        assert_eq!(row["will_not_join"]["kind"], kind, "{name}: {row}");
        let why = row["will_not_join"]["why"].as_str().unwrap_or_default();
        if name == "k8s-sa" {
            // The service refuses its token before reading the VM: the token's account is
            // not a node account.
            assert!(body.contains("123456789-compute@"), "{body}");
            assert!(why.contains("--service-account=k8s-nodes@"), "{why}");
        } else {
            // The same decision, word for word.
            assert_eq!(body.trim(), why, "{name}");
        }
    }
    stack.stop().await;
}

/// Issue 22: `nodewire status` tells a Node waiting for a podCIDR that will come (the chain
/// is on it) from one whose VM found every pod range full (nodewire recorded a
/// `CIDRNotAvailable` Event on it). A pod range with room for one /24 and two VMs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_reports_a_node_for_which_every_pod_range_is_full() {
    let stack = Stack::start(StackOptions {
        range_order: nodewire::config::RangeOrder::AliasFirst,
        pods_range: "10.4.0.0/24".parse().expect("cidr"),
        ..StackOptions::default()
    })
    .await
    .expect("stack");
    let env: BTreeMap<String, String> = stack.env().clone();
    let z = "us-central1-a";
    let demo = [("cluster", "demo")];
    stack
        .insert_vm(P, z, "k8s-room", &demo, true)
        .await
        .expect("insert");
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s.wired(z, "k8s-room").is_ok())
            .await
    );
    stack
        .insert_vm(P, z, "k8s-full", &demo, true)
        .await
        .expect("insert");
    assert!(
        stack
            .wait_until(Duration::from_secs(60), |s| s
                .k8s
                .objects("events")
                .iter()
                .any(|e| e["reason"] == "CIDRNotAvailable"
                    && e["involvedObject"]["name"] == "k8s-full"))
            .await,
        "no CIDRNotAvailable Event"
    );
    // As nodewire's own ServiceAccount, which may not list Events: the state stays "waiting",
    // and stderr says why; status still succeeds.
    let out = nodewire(&["--json", "status", "k8s-full"], &env).await;
    assert!(out.status.success());
    assert_eq!(stdout_json(&out)[0]["state"], "waiting for podCIDR");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Events could not be read"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // As an operator runs it: with the cluster admin's credentials (docs/deploy.md).
    let token = std::env::temp_dir().join(format!("nodewire-admin-token-{}", std::process::id()));
    std::fs::write(&token, stack.k8s.admin_token()).expect("token file");
    let mut env = env;
    env.insert(
        "NODEWIRE_KUBE_TOKEN_FILE".into(),
        token.to_string_lossy().into_owned(),
    );
    let out = nodewire(&["--json", "status"], &env).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stdout_json(&out);
    let state = |vm: &str| {
        rows.as_array()
            .into_iter()
            .flatten()
            .find(|r| r["vm"] == vm)
            .map(|r| r["state"].clone())
    };
    assert_eq!(
        state("k8s-full"),
        Some(serde_json::json!(
            "no pod range free (Event CIDRNotAvailable)"
        )),
        "{rows} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        state("k8s-room"),
        Some(serde_json::json!("wired")),
        "{rows}"
    );
    let _ = std::fs::remove_file(&token);
    stack.stop().await;
}
