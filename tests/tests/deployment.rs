//! The deployment contract: `infra/terraform` (read and evaluated with the reference tfvars and
//! an image for every function) against the code.
//!
//! - one Cloud Run service per binary under `functions/`, started as its `main.rs` starts it;
//! - every environment variable a service gets is one the configuration reads, and the
//!   environment passes the start-up checks the binary makes (`startup::check`): every
//!   required variable is set and valid;
//! - topic names are the code's (`PubSubConfig::topic`, the dead-letter and audit topics);
//! - every push subscription delivers its function's source topic to that service's URL with
//!   an OIDC token whose audience and identity the service accepts, ordered, with a retry and a
//!   dead-letter policy, and an ack deadline no shorter than the service's request timeout,
//!   which is longer than the delivery deadline the code enforces;
//! - the Scheduler job targets `drift-sweep` with OIDC;
//! - each runtime identity's Compute permissions, `actAs`, publish grants, and the invoker
//!   grant of each service match the least-privilege table (`nodewire::privilege`); the RBAC
//!   manifest grants exactly the table's Kubernetes access; the docs' table says the same;
//! - the Ops Agent's log name, the `node-events` configuration and the sink filter agree.
//!
//! The `mutations_are_caught` test copies `infra/` and removes a topic, a variable, a
//! permission (and more), and proves each is reported.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use integration_tests::terraform::{Instance, Module};
use nodewire::config::Source;
use nodewire::event::Step;
use nodewire::privilege::{self, Grants};
use nodewire::startup::{self, ServiceKind};
use serde_json::{Value as Json, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// A [`Source`] over a map that remembers every key the parser asked for.
struct Recording<'a> {
    map: &'a BTreeMap<String, String>,
    asked: RefCell<BTreeSet<String>>,
}

impl Source for Recording<'_> {
    fn get(&self, key: &str) -> Option<String> {
        self.asked.borrow_mut().insert(key.to_string());
        self.map.get(key).filter(|v| !v.is_empty()).cloned()
    }
}

/// How a function's `main.rs` starts it.
fn kind_from_main(repo: &Path, function: &str) -> Result<ServiceKind, String> {
    let path = repo.join("functions").join(function).join("src/main.rs");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let found: Vec<ServiceKind> = [
        ("startup::router(", ServiceKind::Router),
        ("startup::node_router(", ServiceKind::NodeRouter),
        ("startup::chain(", ServiceKind::Chain),
    ]
    .into_iter()
    .filter(|(call, _)| text.contains(call))
    .map(|(_, k)| k)
    .collect();
    match found.as_slice() {
        [k] => Ok(*k),
        _ => Err(format!("{}: not exactly one start-up path", path.display())),
    }
}

fn secs(text: &str) -> Option<f64> {
    text.strip_suffix('s')?.parse().ok()
}

fn as_set<'a>(items: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    items.into_iter().map(str::to_string).collect()
}

/// The contract, checked against `repo` (a checkout, or a copy of its `infra/` beside the
/// real `functions/`). Every violation is one line.
fn violations(repo: &Path, infra: &Path) -> Vec<String> {
    let mut out = vec![];
    match check(repo, infra, &mut out) {
        Ok(()) => out,
        Err(e) => {
            out.push(e);
            out
        }
    }
}

#[allow(clippy::too_many_lines)]
fn check(repo: &Path, infra: &Path, out: &mut Vec<String>) -> Result<(), String> {
    // --- the functions -----------------------------------------------------------------
    let mut binaries: Vec<String> = std::fs::read_dir(repo.join("functions"))
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    binaries.sort();
    let table: BTreeSet<String> = privilege::TABLE
        .iter()
        .map(|g| g.function.to_string())
        .collect();
    if as_set(binaries.iter().map(String::as_str)) != table {
        out.push(format!(
            "the least-privilege table's functions {table:?} are not the binaries {binaries:?}"
        ));
    }
    let images: serde_json::Map<String, Json> = binaries
        .iter()
        .map(|b| {
            (
                b.clone(),
                json!(format!(
                    "asia-southeast1-docker.pkg.dev/example-project/nodewire/{b}@sha256:{}",
                    "0".repeat(64)
                )),
            )
        })
        .collect();
    let tf_dir = infra.join("terraform");
    let module = Module::load(
        &tf_dir,
        Some(&tf_dir.join("examples/reference.tfvars")),
        &BTreeMap::from([("images".to_string(), Json::Object(images))]),
    )
    .map_err(|e| format!("loading the Terraform: {e}"))?;
    let project = module
        .variables
        .get("project_id")
        .and_then(Json::as_str)
        .ok_or("variable project_id")?
        .to_string();
    let tf_functions: BTreeSet<String> = module
        .locals
        .get("functions")
        .and_then(Json::as_object)
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if tf_functions != table {
        out.push(format!(
            "local.functions {tf_functions:?} is not the function list {table:?}"
        ));
    }
    // Every resource evaluates (a file() that is not there, a reference to a missing key).
    let all = module
        .all_instances()
        .map_err(|e| format!("evaluating the Terraform: {e}"))?;
    if all.len() < 50 {
        out.push(format!("only {} resource instances evaluated", all.len()));
    }
    let inst = |kind: &str| module.instances(kind).map_err(|e| e.to_string());
    let resolve = |text: &str| module.reference(text).cloned();

    // --- Cloud Run services and their environment ---------------------------------------
    let services = inst("google_cloud_run_v2_service")?;
    let mut by_fn: BTreeMap<
        String,
        (Instance, BTreeMap<String, String>, nodewire::config::Config),
    > = BTreeMap::new();
    for g in privilege::TABLE {
        let f = g.function;
        let found: Vec<&Instance> = services
            .iter()
            .filter(|s| s.str_at("name") == Some(&format!("nodewire-{f}")))
            .collect();
        let [svc] = found.as_slice() else {
            out.push(format!(
                "{f}: {} Cloud Run services named nodewire-{f}, want 1",
                found.len()
            ));
            continue;
        };
        let kind = match kind_from_main(repo, f) {
            Ok(k) => k,
            Err(e) => {
                out.push(e);
                continue;
            }
        };
        if kind != g.kind {
            out.push(format!(
                "{f}: main.rs starts it as {kind:?}, the table says {:?}",
                g.kind
            ));
        }
        let containers = svc
            .value
            .pointer("/template/0/containers")
            .and_then(Json::as_array);
        let Some([container]) = containers.map(Vec::as_slice) else {
            out.push(format!("{f}: want exactly one container"));
            continue;
        };
        let mut env = BTreeMap::new();
        for e in container["env"].as_array().into_iter().flatten() {
            let (Some(n), Some(v)) = (e["name"].as_str(), e["value"].as_str()) else {
                out.push(format!(
                    "{f}: an env entry without a literal name and value: {e}"
                ));
                continue;
            };
            if env.insert(n.to_string(), v.to_string()).is_some() {
                out.push(format!("{f}: env {n} set twice"));
            }
        }
        let src = Recording {
            map: &env,
            asked: RefCell::new(BTreeSet::new()),
        };
        let parsed = startup::check(f, kind, &src);
        // Cloud Run sets these itself (PORT, K_SERVICE, K_REVISION).
        let asked = src.asked.borrow().clone();
        // docs/operations.md lists every variable the configuration reads.
        let page = std::fs::read_to_string(repo.join("docs/operations.md")).unwrap_or_default();
        for name in undocumented(&page, &asked) {
            out.push(format!(
                "{f}: the configuration reads {name}, which docs/operations.md does not list"
            ));
        }
        for name in env.keys() {
            if !asked.contains(name) {
                out.push(format!(
                    "{f}: env {name} is not a variable the configuration reads"
                ));
            }
        }
        for reserved in ["PORT", "K_SERVICE", "K_REVISION"] {
            if env.contains_key(reserved) {
                out.push(format!("{f}: env {reserved} is Cloud Run's to set"));
            }
        }
        let config = match parsed {
            Ok((config, chain)) => {
                if (kind == ServiceKind::Chain) != chain.is_some() {
                    out.push(format!("{f}: the chain configuration is missing"));
                }
                config
            }
            Err(e) => {
                out.push(format!("{f}: the service would not start: {e}"));
                continue;
            }
        };
        if svc.str_at("ingress") != Some("INGRESS_TRAFFIC_INTERNAL_ONLY") {
            out.push(format!("{f}: ingress is not internal-only"));
        }
        let timeout = svc.str_at("template/0/timeout").and_then(secs);
        match timeout {
            Some(t) if t > config.limits.request_timeout.as_secs_f64() + 5.0 => {}
            other => out.push(format!(
                "{f}: Cloud Run timeout {other:?} s is not above the delivery deadline {:?} (+5 s to answer)",
                config.limits.request_timeout
            )),
        }
        // The token and CA files are mounted from Secret Manager where the env says.
        if let Some(nodewire::config::KubeSettings::Direct {
            token_file,
            ca_file,
            ..
        }) = &config.kube
        {
            for file in [token_file, ca_file].into_iter().flatten() {
                let mounted = container["volume_mounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| {
                        let dir = m["mount_path"].as_str().unwrap_or_default();
                        let vol = m["name"].as_str().unwrap_or_default();
                        let item = file
                            .strip_prefix(dir)
                            .ok()
                            .and_then(|p| p.to_str().map(str::to_string));
                        svc.value
                            .pointer("/template/0/volumes")
                            .and_then(Json::as_array)
                            .into_iter()
                            .flatten()
                            .any(|v| {
                                v["name"].as_str() == Some(vol)
                                    && v.pointer("/secret/0/items")
                                        .and_then(Json::as_array)
                                        .into_iter()
                                        .flatten()
                                        .any(|i| {
                                            Some(i["path"].as_str().unwrap_or_default().to_string())
                                                == item
                                        })
                            })
                    });
                if !mounted {
                    out.push(format!(
                        "{f}: {} is not mounted from a secret",
                        file.display()
                    ));
                }
            }
            if svc.value.pointer("/template/0/vpc_access/0").is_none() {
                out.push(format!("{f}: no VPC access (the API server is on the VPC)"));
            }
            // Its Kubernetes identity is the one the table says: the join service's own token
            // for join, nodewire's for every other function.
            // (A reference to a resource's attribute evaluates to a `tfref-…` placeholder that
            // names the resource.)
            let want = match privilege::of(f).map(Grants::service_account) {
                Some(privilege::JOIN_SERVICE_ACCOUNT) => {
                    "tfref-secret-manager-secret-kube-join-token-secret-id"
                }
                _ => "tfref-secret-manager-secret-kube-token-secret-id",
            };
            let token_secret = svc
                .value
                .pointer("/template/0/volumes")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .find(|v| v["name"] == "kube-token")
                .and_then(|v| v.pointer("/secret/0/secret"))
                .and_then(Json::as_str)
                .map(str::to_string);
            if token_secret.as_deref() != Some(want) {
                out.push(format!(
                    "{f}: its Kubernetes token comes from {token_secret:?}, not {want:?}"
                ));
            }
        }
        by_fn.insert(f.to_string(), ((*svc).clone(), env, config));
    }

    // The Ops Agent log, node-events' filter, and the sink agree.
    let audit_log = by_fn
        .get("node-events")
        .map(|(_, _, c)| c.k8s_audit_log.clone());
    let log_id = module
        .locals
        .get("k8s_audit_log_id")
        .and_then(Json::as_str)
        .unwrap_or_default();
    // Each VM gets the startup library, then its script, as one startup-script.
    let startup = |script: &str| -> Result<String, String> {
        let read = |f: &str| {
            std::fs::read_to_string(infra.join("startup").join(f)).map_err(|e| format!("{f}: {e}"))
        };
        Ok(format!("{}\n{}", read("common.sh")?, read(script)?))
    };
    let want_cp = startup("control-plane.sh")?;
    let want_node = startup("node.sh")?;
    for (kind, want) in [
        ("google_compute_instance", &want_cp),
        ("google_compute_instance_template", &want_node),
    ] {
        let vms = inst(kind)?;
        if vms.is_empty()
            || vms
                .iter()
                .any(|vm| vm.str_at("metadata/startup-script") != Some(want.as_str()))
        {
            out.push(format!(
                "{kind}: the startup-script is not infra/startup/common.sh followed by its script"
            ));
        }
    }

    // What the control plane's startup script names its Ops Agent receiver (= the log id).
    let shipped: Vec<String> = inst("google_compute_instance")?
        .iter()
        .filter_map(|vm| {
            vm.str_at("metadata/nodewire-cluster-config")
                .map(str::to_string)
        })
        .filter_map(|c| serde_json::from_str::<Json>(&c).ok())
        .filter_map(|c| c["audit_log_name"].as_str().map(str::to_string))
        .collect();
    // The control plane drops kubeadm's auto-approval in the mode the functions run in, and
    // publishes the join service's token where that service reads it.
    let modes: Vec<(String, String)> = inst("google_compute_instance")?
        .iter()
        .filter_map(|vm| {
            vm.str_at("metadata/nodewire-cluster-config")
                .map(str::to_string)
        })
        .filter_map(|c| serde_json::from_str::<Json>(&c).ok())
        .map(|c| {
            (
                c["join_mode"].as_str().unwrap_or_default().to_string(),
                c["kube_join_token_secret"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect();
    // Unset is the default, pull.
    let function_mode = by_fn.get("join").map(|(_, env, _)| {
        env.get("NODEWIRE_JOIN_MODE")
            .cloned()
            .unwrap_or_else(|| "pull".into())
    });
    for (mode, secret) in &modes {
        if function_mode.as_deref() != Some(mode.as_str()) {
            out.push(format!(
                "the control plane runs join mode {mode:?}, the functions {function_mode:?}"
            ));
        }
        if secret != "tfref-secret-manager-secret-kube-join-token-secret-id" {
            out.push(format!(
                "the control plane publishes the join service's token to {secret:?}"
            ));
        }
    }
    if modes.len() != 1 {
        out.push(format!(
            "{} control planes with a cluster config",
            modes.len()
        ));
    }
    if shipped.len() != 1 || shipped.iter().any(|s| s != log_id) {
        out.push(format!(
            "the control plane ships the audit log as {shipped:?}, not {log_id:?}"
        ));
    }
    if audit_log.as_deref() != Some(&format!("projects/{project}/logs/{log_id}")) {
        out.push(format!(
            "node-events reads log {audit_log:?}, the Ops Agent writes {log_id:?}"
        ));
    }

    // --- topics -----------------------------------------------------------------------
    let topics = inst("google_pubsub_topic")?;
    let topic_names: BTreeSet<String> = topics
        .iter()
        .filter_map(|t| t.str_at("name").map(str::to_string))
        .collect();
    let short = |full: &str| full.rsplit('/').next().unwrap_or_default().to_string();
    let Some((_, _, any_config)) = by_fn.values().next() else {
        return Err("no service could be checked".into());
    };
    let ps = &any_config.pubsub;
    let mut wanted: BTreeSet<String> = Step::ALL
        .iter()
        .map(|s| short(&ps.topic(s.as_str())))
        .collect();
    wanted.insert(short(&ps.topic("node-wired")));
    wanted.insert(short(&ps.dead_letter_topic));
    wanted.insert(short(&ps.gce_audit_topic));
    wanted.insert(short(&ps.k8s_audit_topic));
    for missing in wanted.difference(&topic_names) {
        out.push(format!("topic {missing} the code uses is not created"));
    }
    for extra in topic_names.difference(&wanted) {
        out.push(format!(
            "topic {extra} is created but the code does not use it"
        ));
    }
    // The topic a Terraform value names: a literal name, an id, or a topic's attribute.
    let topic_of = |v: &str| -> Option<String> {
        match resolve(v) {
            Some(r) if r.kind == "google_pubsub_topic" => topics
                .iter()
                .find(|t| t.name == r.name && t.key == r.key)
                .and_then(|t| t.str_at("name").map(str::to_string)),
            Some(_) => None,
            None => Some(short(v)),
        }
    };

    // --- push subscriptions -----------------------------------------------------------
    let subs = inst("google_pubsub_subscription")?;
    for g in privilege::TABLE {
        let Some((svc, env, config)) = by_fn.get(g.function) else {
            continue;
        };
        let f = g.function;
        let url = env
            .get("NODEWIRE_PUSH_AUDIENCES")
            .cloned()
            .unwrap_or_default();
        let invoker = env
            .get("NODEWIRE_PUSH_INVOKERS")
            .cloned()
            .unwrap_or_default();
        let pushing: Vec<&Instance> = subs
            .iter()
            .filter(|s| s.str_at("push_config/0/push_endpoint") == Some(url.as_str()))
            .collect();
        let source = match g.source {
            privilege::Source::GceAudit => Some(short(&config.pubsub.gce_audit_topic)),
            privilege::Source::K8sAudit => Some(short(&config.pubsub.k8s_audit_topic)),
            privilege::Source::Step(s) => Some(short(&config.pubsub.topic(s))),
            privilege::Source::Scheduler => None,
            privilege::Source::NodeVms => {
                // Node VMs call it with their identity tokens: no subscription, the signature
                // verified in the container, and the node service accounts as the callers.
                if !pushing.is_empty() {
                    out.push(format!(
                        "{f}: a push subscription targets a service node VMs call"
                    ));
                }
                if env.get("NODEWIRE_PUSH_AUTH").map(String::as_str) != Some("oidc") {
                    out.push(format!(
                        "{f}: NODEWIRE_PUSH_AUTH must be oidc (it verifies identity tokens itself)"
                    ));
                }
                let nodes = env
                    .get("NODEWIRE_NODE_SERVICE_ACCOUNTS")
                    .cloned()
                    .unwrap_or_default();
                if invoker.is_empty() || invoker != nodes {
                    out.push(format!(
                        "{f}: NODEWIRE_PUSH_INVOKERS ({invoker:?}) must be the node service \
                         accounts ({nodes:?})"
                    ));
                }
                continue;
            }
        };
        let Some(source) = source else {
            if !pushing.is_empty() {
                out.push(format!(
                    "{f}: a push subscription targets a Scheduler-only service"
                ));
            }
            let jobs = inst("google_cloud_scheduler_job")?;
            let ok = jobs.iter().any(|j| {
                j.str_at("http_target/0/uri") == Some(url.as_str())
                    && j.str_at("http_target/0/oidc_token/0/audience") == Some(url.as_str())
                    && j.str_at("http_target/0/oidc_token/0/service_account_email")
                        == Some(invoker.as_str())
            });
            if !ok {
                out.push(format!(
                    "{f}: no Scheduler job calls {url} with an OIDC token of {invoker} for that audience"
                ));
            }
            continue;
        };
        let [sub] = pushing.as_slice() else {
            out.push(format!(
                "{f}: {} push subscriptions target {url}, want 1",
                pushing.len()
            ));
            continue;
        };
        let a = sub.address();
        let want_name = config.pubsub.push_subscription(f);
        if sub.str_at("name") != Some(want_name.as_str()) {
            out.push(format!(
                "{f}: {a} is named {:?}, the code's name is {want_name}",
                sub.str_at("name")
            ));
        }
        if sub.str_at("topic").and_then(topic_of).as_deref() != Some(source.as_str()) {
            out.push(format!("{f}: {a} does not read topic {source}"));
        }
        if sub.str_at("push_config/0/oidc_token/0/audience") != Some(url.as_str()) {
            out.push(format!(
                "{f}: {a}: the OIDC audience is not the service URL {url}"
            ));
        }
        if sub.str_at("push_config/0/oidc_token/0/service_account_email") != Some(invoker.as_str())
        {
            out.push(format!(
                "{f}: {a}: the OIDC identity is not the one the service accepts"
            ));
        }
        if sub.value.pointer("/push_config/0/no_wrapper").is_some() {
            out.push(format!(
                "{f}: {a}: no_wrapper: the adapter reads the push envelope"
            ));
        }
        match sub
            .str_at("dead_letter_policy/0/dead_letter_topic")
            .and_then(topic_of)
        {
            Some(t) if t == short(&config.pubsub.dead_letter_topic) => {}
            other => out.push(format!("{f}: {a}: dead-letter topic {other:?}")),
        }
        match sub
            .value
            .pointer("/dead_letter_policy/0/max_delivery_attempts")
            .and_then(Json::as_u64)
        {
            Some(n) if n >= 5 && n <= u64::from(nodewire::adapter::MAX_DELIVERY_ATTEMPTS) => {}
            other => out.push(format!("{f}: {a}: max_delivery_attempts {other:?}")),
        }
        if sub.value.pointer("/retry_policy/0").is_none() {
            out.push(format!("{f}: {a}: no retry policy (immediate redelivery)"));
        }
        if sub.value["enable_message_ordering"] != json!(true) {
            out.push(format!("{f}: {a}: message ordering is off"));
        }
        let ack = sub.value["ack_deadline_seconds"].as_f64();
        let run = svc.str_at("template/0/timeout").and_then(secs);
        if !matches!((ack, run), (Some(ack), Some(run)) if ack >= run) {
            out.push(format!(
                "{f}: {a}: ack deadline {ack:?} s is shorter than the Cloud Run timeout {run:?} s"
            ));
        }
    }
    // The CLI's dead-letter subscription: a pull subscription on the dead-letter topic.
    let dlq = short(&any_config.pubsub.dead_letter_topic);
    let review = any_config.pubsub.dead_letter_review_subscription();
    if !subs.iter().any(|s| {
        s.value.pointer("/push_config/0").is_none()
            && s.str_at("topic").and_then(topic_of) == Some(dlq.clone())
            && s.str_at("name") == Some(review.as_str())
    }) {
        out.push(format!(
            "no pull subscription {review} on {dlq} for `nodewire replay --dead-letter`"
        ));
    }

    // --- IAM ----------------------------------------------------------------------------
    let runtime_sa = |f: &str| -> Option<String> {
        by_fn
            .get(f)
            .and_then(|(svc, _, _)| svc.str_at("template/0/service_account").map(str::to_string))
    };
    let custom_roles = inst("google_project_iam_custom_role")?;
    let project_members = inst("google_project_iam_member")?;
    let sa_members = inst("google_service_account_iam_member")?;
    let topic_members = inst("google_pubsub_topic_iam_member")?;
    let invokers = inst("google_cloud_run_v2_service_iam_member")?;
    let node_sa = by_fn
        .get("bootstrap")
        .and_then(|(_, env, _)| env.get("NODEWIRE_NODE_SERVICE_ACCOUNTS").cloned());
    for g in privilege::TABLE {
        let f = g.function;
        let Some(sa) = runtime_sa(f) else {
            out.push(format!("{f}: no runtime service account"));
            continue;
        };
        let member = format!("serviceAccount:{sa}");
        let mut permissions = BTreeSet::new();
        for m in project_members
            .iter()
            .filter(|m| m.str_at("member") == Some(member.as_str()))
        {
            let role = m.str_at("role").unwrap_or_default();
            if let Some(r) = resolve(role).filter(|r| r.kind == "google_project_iam_custom_role") {
                if let Some(cr) = custom_roles
                    .iter()
                    .find(|c| c.name == r.name && c.key == r.key)
                {
                    for p in cr.value["permissions"].as_array().into_iter().flatten() {
                        permissions.insert(p.as_str().unwrap_or_default().to_string());
                    }
                }
            } else if role.starts_with("roles/compute.")
                || role == "roles/editor"
                || role == "roles/owner"
            {
                out.push(format!(
                    "{f}: predefined role {role} is broader than the table"
                ));
            }
        }
        let want = as_set(g.compute.iter().copied());
        if permissions != want {
            out.push(format!(
                "{f}: Compute permissions {permissions:?}, the least-privilege table says {want:?}"
            ));
        }
        let acts_as = sa_members.iter().any(|m| {
            m.str_at("member") == Some(member.as_str())
                && m.str_at("role") == Some("roles/iam.serviceAccountUser")
                && m.str_at("service_account_id")
                    .and_then(resolve)
                    .and_then(|r| sa_of(&r))
                    == node_sa
        });
        if acts_as != g.acts_as_node_account {
            out.push(format!(
                "{f}: actAs on the nodes' service account is {acts_as}, the table says {}",
                g.acts_as_node_account
            ));
        }
        let published: BTreeSet<String> = topic_members
            .iter()
            .filter(|m| {
                m.str_at("member") == Some(member.as_str())
                    && m.str_at("role") == Some("roles/pubsub.publisher")
            })
            .filter_map(|m| m.str_at("topic").and_then(topic_of))
            .collect();
        let Some((_, _, config)) = by_fn.get(f) else {
            continue;
        };
        let mut want: BTreeSet<String> = g
            .publishes
            .iter()
            .map(|s| short(&config.pubsub.topic(s)))
            .collect();
        want.insert(short(&config.pubsub.dead_letter_topic));
        if published != want {
            out.push(format!(
                "{f}: may publish to {published:?}, the table says {want:?}"
            ));
        }
    }
    // run.invoker: on each service, only its push identity.
    for (f, (_, env, _)) in &by_fn {
        let push = format!(
            "serviceAccount:{}",
            env.get("NODEWIRE_PUSH_INVOKERS")
                .cloned()
                .unwrap_or_default()
        );
        let granted: Vec<String> = invokers
            .iter()
            .filter(|m| m.str_at("role") == Some("roles/run.invoker"))
            .filter(|m| {
                m.str_at("name").and_then(resolve).is_some_and(|r| {
                    r.kind == "google_cloud_run_v2_service" && r.key.as_deref() == Some(f.as_str())
                })
            })
            .filter_map(|m| m.str_at("member").map(str::to_string))
            .collect();
        // `join` is called by node VMs, whose service account holds no role at all: nobody is
        // granted run.invoker there, and the service verifies the identity token itself.
        let node_vms = privilege::of(f).is_some_and(|g| g.source == privilege::Source::NodeVms);
        let want: Vec<String> = if node_vms { vec![] } else { vec![push.clone()] };
        if granted != want {
            out.push(format!(
                "{f}: run.invoker granted to {granted:?}, want only {want:?}"
            ));
        }
    }
    if project_members
        .iter()
        .any(|m| m.str_at("role") == Some("roles/run.invoker"))
    {
        out.push("run.invoker is granted project-wide".into());
    }

    // --- the Logging sinks --------------------------------------------------------------
    let sinks = inst("google_logging_project_sink")?;
    let filter_of = |topic: &str| -> Option<String> {
        sinks
            .iter()
            .find(|s| {
                s.str_at("destination")
                    .and_then(|d| d.strip_prefix("pubsub.googleapis.com/"))
                    .and_then(topic_of)
                    .as_deref()
                    == Some(topic)
            })
            .and_then(|s| s.str_at("filter").map(str::to_string))
    };
    match filter_of(&short(&any_config.pubsub.k8s_audit_topic)) {
        Some(f) if f.contains(&format!("logName=\"{}\"", any_config.k8s_audit_log)) => {
            // Metadata mode: node-events decides kubelet CSRs when their create reaches it;
            // the audit policy logs them and the sink must route them.
            if !f.contains("jsonPayload.objectRef.resource=\"certificatesigningrequests\"") {
                out.push("the Kubernetes audit sink does not select CSR creates".into());
            }
        }
        other => out.push(format!(
            "the Kubernetes audit sink does not select logName {:?}: {other:?}",
            any_config.k8s_audit_log
        )),
    }
    match filter_of(&short(&any_config.pubsub.gce_audit_topic)) {
        Some(f) => {
            if !f.contains(&format!(
                "logName=\"projects/{project}/logs/cloudaudit.googleapis.com%2Factivity\""
            )) {
                out.push(
                    "the Compute audit sink does not select the Admin Activity log exactly".into(),
                );
            }
            for method in ["insert", "bulkInsert", "delete"] {
                for prefix in ["", "v1.", "beta."] {
                    let m = format!("\"{prefix}compute.instances.{method}\"");
                    if !f.contains(&m) {
                        out.push(format!("the Compute audit sink filter lacks {m}"));
                    }
                }
            }
        }
        None => out.push("no Logging sink publishes to the Compute audit topic".into()),
    }

    // --- log-based metrics read lines the code writes -------------------------------------
    let sources = rust_sources(&repo.join("shared/src"));
    for m in inst("google_logging_metric")? {
        let mut text = m.str_at("filter").unwrap_or_default().to_string();
        text.push(' ');
        text.push_str(m.str_at("value_extractor").unwrap_or_default());
        if let Some(labels) = m.value["label_extractors"].as_object() {
            for v in labels.values() {
                text.push(' ');
                text.push_str(v.as_str().unwrap_or_default());
            }
        }
        for (field, value) in json_payload_terms(&text) {
            let logged = if field == "message" {
                value
                    .as_ref()
                    .is_some_and(|v| sources.contains(&format!("\"{v}\"")))
            } else {
                sources.contains(&format!("{field} = "))
                    && value
                        .as_ref()
                        .is_none_or(|v| sources.contains(&format!("{field} = \"{v}\"")))
            };
            if !logged {
                out.push(format!(
                    "{}: jsonPayload.{field}{} is not a log line or field the code writes",
                    m.address(),
                    value.map(|v| format!("={v:?}")).unwrap_or_default()
                ));
            }
        }
    }

    // --- RBAC: exactly the table's Kubernetes access ------------------------------------------
    let rbac =
        std::fs::read_to_string(infra.join("k8s/nodewire-rbac.yaml")).map_err(|e| e.to_string())?;
    out.extend(rbac_violations(&rbac));
    let metadata_mode = std::fs::read_to_string(infra.join("k8s/nodewire-rbac-metadata-mode.yaml"))
        .map_err(|e| e.to_string())?;
    out.extend(metadata_mode_rbac_violations(&rbac, &metadata_mode));
    Ok(())
}

/// Every `.rs` file under `dir`, concatenated.
fn rust_sources(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// `(field, compared value)` of every `jsonPayload.FIELD` in a Logging filter or extractor.
fn json_payload_terms(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = vec![];
    for (i, _) in text.match_indices("jsonPayload.") {
        let rest = &text[i + "jsonPayload.".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let field = rest[..end].to_string();
        let value = rest[end..]
            .strip_prefix("=\"")
            .and_then(|v| v.split('"').next())
            .map(str::to_string);
        out.push((field, value));
    }
    out
}

/// The email placeholder of the service account a Terraform reference names (the env names
/// accounts by their email).
fn sa_of(r: &integration_tests::terraform::Reference) -> Option<String> {
    (r.kind == "google_service_account").then(|| {
        integration_tests::terraform::placeholder_text(&integration_tests::terraform::Reference {
            attr: "email".into(),
            ..r.clone()
        })
    })
}

fn rbac_violations(rbac: &str) -> Vec<String> {
    let policy = match sim::k8s::rbac::Policy::load(&[rbac]) {
        Ok(p) => p,
        Err(e) => return vec![format!("RBAC: {e}")],
    };
    let mut out = vec![];
    for account in [privilege::SERVICE_ACCOUNT, privilege::JOIN_SERVICE_ACCOUNT] {
        let who = sim::k8s::rbac::Identity::service_account("kube-system", account);
        let grants: Vec<privilege::KubeGrant> = privilege::TABLE
            .iter()
            .filter(|g: &&Grants| g.service_account() == account)
            .flat_map(Grants::all_kube)
            .collect();
        out.extend(rbac_violations_of(&policy, &who, account, &grants));
    }
    out
}

/// Metadata mode: both manifests give nodewire's account its rows plus exactly
/// [`privilege::METADATA_MODE_GRANTS`], and the join service's account nothing more.
fn metadata_mode_rbac_violations(rbac: &str, metadata_mode: &str) -> Vec<String> {
    let policy = match sim::k8s::rbac::Policy::load(&[rbac, metadata_mode]) {
        Ok(p) => p,
        Err(e) => return vec![format!("RBAC (metadata mode): {e}")],
    };
    if privilege::METADATA_MODE_FUNCTIONS
        .iter()
        .any(|f| privilege::of(f).is_none_or(|g| g.service_account() != privilege::SERVICE_ACCOUNT))
    {
        return vec!["a metadata-mode function does not run as nodewire's account".into()];
    }
    let mut out = vec![];
    for account in [privilege::SERVICE_ACCOUNT, privilege::JOIN_SERVICE_ACCOUNT] {
        let who = sim::k8s::rbac::Identity::service_account("kube-system", account);
        let mut grants: Vec<privilege::KubeGrant> = privilege::TABLE
            .iter()
            .filter(|g: &&Grants| g.service_account() == account)
            .flat_map(Grants::all_kube)
            .collect();
        if account == privilege::SERVICE_ACCOUNT {
            grants.extend_from_slice(privilege::METADATA_MODE_GRANTS);
        }
        out.extend(
            rbac_violations_of(&policy, &who, account, &grants)
                .into_iter()
                .map(|v| format!("metadata mode: {v}")),
        );
    }
    out
}

fn rbac_violations_of(
    policy: &sim::k8s::rbac::Policy,
    who: &sim::k8s::rbac::Identity,
    account: &str,
    grants: &[privilege::KubeGrant],
) -> Vec<String> {
    let mut out = vec![];
    let verbs = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
        "approve",
        "sign",
    ];
    let resources = [
        "nodes",
        "secrets",
        "configmaps",
        "events",
        "pods",
        "serviceaccounts",
        "leases",
        "certificatesigningrequests",
        "certificatesigningrequests/approval",
        "certificatesigningrequests/status",
        "signers",
    ];
    let cluster_scoped =
        |r: &str| r == "nodes" || r.starts_with("certificatesigningrequests") || r == "signers";
    let namespaces = ["", "kube-system", "kube-public", "default"];
    let names = [
        "",
        "cluster-info",
        "nodewire-sweep",
        "some-object",
        privilege::KUBELET_CLIENT_SIGNER,
        "kubernetes.io/kube-apiserver-client",
        "kubernetes.io/*",
    ];
    for verb in verbs {
        for resource in resources {
            for ns in namespaces {
                for name in names {
                    // Nodes, CSRs and signers are cluster-scoped; for the others "" is a
                    // request across all namespaces.
                    if cluster_scoped(resource) && !ns.is_empty() {
                        continue;
                    }
                    let want = grants.iter().any(|g| {
                        g.resource == resource
                            && g.namespace.unwrap_or("") == ns
                            && g.verbs.contains(&verb)
                            && g.name.is_none_or(|n| n == name)
                    });
                    let req = sim::k8s::rbac::Request {
                        verb,
                        resource,
                        namespace: ns,
                        name,
                    };
                    let got = policy.allows(who, &req);
                    if got != want {
                        out.push(format!(
                            "RBAC ({account}): {verb} {resource} (namespace {ns:?}, name {name:?}) is {}, the table says {}",
                            if got { "allowed" } else { "refused" },
                            if want { "allowed" } else { "refused" },
                        ));
                    }
                }
            }
        }
    }
    out
}

/// The variables of `asked` that `page` does not name (as `` `NAME` ``).
fn undocumented(page: &str, asked: &BTreeSet<String>) -> Vec<String> {
    asked
        .iter()
        .filter(|n| !page.contains(&format!("`{n}`")))
        .cloned()
        .collect()
}

/// The configuration page's promise (docs/operations.md): a variable the configuration reads
/// that the page does not list fails the contract test.
#[test]
fn a_variable_the_page_does_not_list_is_caught() {
    let page = std::fs::read_to_string(root().join("docs/operations.md")).unwrap_or_default();
    let asked = as_set(["NODEWIRE_POD_RANGE", "NODEWIRE_TOKEN_TTL_SECS"]);
    assert!(
        undocumented(&page, &asked).is_empty(),
        "the page lists both"
    );
    let cut = page.replace("`NODEWIRE_TOKEN_TTL_SECS`", "TOKEN TTL");
    assert_eq!(undocumented(&cut, &asked), vec!["NODEWIRE_TOKEN_TTL_SECS"]);
}

#[test]
fn the_terraform_matches_the_code() {
    let repo = root();
    let v = violations(&repo, &repo.join("infra"));
    assert!(v.is_empty(), "{} violations:\n{}", v.len(), v.join("\n"));
}

/// The docs' least-privilege table names, per function, the table's Compute permissions.
#[test]
fn the_docs_table_matches_the_code() {
    let text = std::fs::read_to_string(root().join("docs/operations.md")).unwrap_or_default();
    let mut checked = 0;
    for g in privilege::TABLE {
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", g.function)));
        let Some(row) = row else {
            panic!(
                "docs/operations.md has no least-privilege row for {}",
                g.function
            );
        };
        let compute_cell = row.split('|').nth(2).unwrap_or_default();
        let named: BTreeSet<String> = compute_cell
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
            .filter(|w| w.starts_with("compute.") && w.matches('.').count() == 2)
            .map(str::to_string)
            .collect();
        assert_eq!(
            named,
            as_set(g.compute.iter().copied()),
            "docs/operations.md, row {}",
            g.function
        );
        checked += 1;
    }
    assert_eq!(checked, privilege::TABLE.len());
}

/// Copies `infra/` into a temporary directory, applies `edit` to one file, and returns the
/// violations.
fn mutated(file: &str, from: &str, to: &str) -> Vec<String> {
    let repo = root();
    let tmp = std::env::temp_dir().join(format!(
        "nodewire-contract-{}-{}",
        std::process::id(),
        file.replace('/', "_")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    copy_dir(&repo.join("infra"), &tmp.join("infra")).unwrap_or_else(|e| panic!("copy: {e}"));
    let path = tmp.join("infra").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    assert!(
        text.contains(from),
        "{file} does not contain {from:?}: the mutation is stale"
    );
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap_or_else(|e| panic!("{e}"));
    let v = violations(&repo, &tmp.join("infra"));
    let _ = std::fs::remove_dir_all(&tmp);
    v
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            if e.file_name() == ".terraform" {
                continue;
            }
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), target)?;
        }
    }
    Ok(())
}

fn expect(v: &[String], needle: &str) {
    assert!(
        v.iter().any(|l| l.contains(needle)),
        "no violation mentions {needle:?}; got:\n{}",
        v.join("\n")
    );
}

#[test]
fn mutations_are_caught() {
    // A topic removed.
    expect(
        &mutated(
            "terraform/nodewire.tf",
            "\"tag-instance\", \"provider-id\", \"finalize\", \"release-alias\"",
            "\"tag-instance\", \"provider-id\", \"finalize\"",
        ),
        // Terraform itself would refuse the dangling reference; either way it is named.
        "nodewire-release-alias",
    );
    // A required variable removed.
    expect(
        &mutated(
            "terraform/nodewire.tf",
            "NODEWIRE_SUBNET ",
            "NODEWIRE_SUBNET_GONE ",
        ),
        "NODEWIRE_SUBNET",
    );
    // A variable the code does not know.
    expect(
        &mutated(
            "terraform/nodewire.tf",
            "LOG_FORMAT ",
            "NODEWIRE_LOG_FORMAT ",
        ),
        "env NODEWIRE_LOG_FORMAT is not a variable the configuration reads",
    );
    // A permission removed.
    expect(
        &mutated(
            "terraform/nodewire.tf",
            "[\"compute.instances.get\", \"compute.instances.setTags\", ",
            "[\"compute.instances.get\", ",
        ),
        "tag-instance: Compute permissions",
    );
    // A push subscription's token for another audience.
    expect(
        &mutated(
            "terraform/pubsub.tf",
            "audience              = local.service_url[each.key]",
            "audience              = \"https://example.com\"",
        ),
        "the OIDC audience is not the service URL",
    );
    // node-events pointed at another log than the control plane's Ops Agent writes.
    expect(
        &mutated(
            "terraform/nodewire.tf",
            "NODEWIRE_K8S_AUDIT_LOG        = \"projects/${var.project_id}/logs/${local.k8s_audit_log_id}\"",
            "NODEWIRE_K8S_AUDIT_LOG        = \"projects/${var.project_id}/logs/kube_audit\"",
        ),
        "node-events reads log",
    );
    // The control plane told to ship the audit log under another name.
    expect(
        &mutated(
            "terraform/control_plane.tf",
            "audit_log_name     = local.k8s_audit_log_id",
            "audit_log_name     = \"kube_audit\"",
        ),
        "the control plane ships the audit log as",
    );
    // A metric counting a log line the code does not write.
    expect(
        &mutated(
            "terraform/observability.tf",
            "jsonPayload.verdict=\\\"dead-letter\\\"",
            "jsonPayload.verdict=\\\"dead-lettered\\\"",
        ),
        "jsonPayload.verdict=\"dead-lettered\" is not a log line or field the code writes",
    );
    // A node template delivered without the startup library.
    expect(
        &mutated(
            "terraform/nodes.tf",
            "join(\"\\n\", [file(\"${path.module}/../startup/common.sh\"), file(\"${path.module}/../startup/node.sh\")])",
            "file(\"${path.module}/../startup/node.sh\")",
        ),
        "google_compute_instance_template: the startup-script is not",
    );
    // An RBAC verb added.
    expect(
        &mutated(
            "k8s/nodewire-rbac.yaml",
            "verbs: [\"create\", \"list\", \"delete\"]",
            "verbs: [\"create\", \"list\", \"delete\", \"get\"]",
        ),
        "RBAC (nodewire): get secrets (namespace \"kube-system\", name \"some-object\") is allowed",
    );
    // The metadata-mode role may create CSRs (it only decides them).
    expect(
        &mutated(
            "k8s/nodewire-rbac-metadata-mode.yaml",
            "    verbs: [\"list\"]",
            "    verbs: [\"list\", \"create\"]",
        ),
        "metadata mode: RBAC (nodewire): create certificatesigningrequests (namespace \"\", name \"\") is allowed",
    );
    // The sink no longer routes CSR creates to node-events.
    expect(
        &mutated(
            "terraform/logging.tf",
            " OR jsonPayload.objectRef.resource=\\\"certificatesigningrequests\\\"",
            "",
        ),
        "the Kubernetes audit sink does not select CSR creates",
    );
}
