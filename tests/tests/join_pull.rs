//! Pull mode (issue 12): a VM gets its JoinConfiguration from the `join` service by proving
//! who it is with its instance identity token, and reports its join. Run on the whole stack
//! (Pub/Sub emulator, both simulators, the simulated metadata server, every function).
//!
//! What the real services do, modelled here:
//! - the metadata server issues identity tokens only with `Metadata-Flavor: Google`, for a
//!   non-empty audience, with `google.compute_engine` claims in `format=full`
//!   (<https://cloud.google.com/compute/docs/instances/verifying-instance-identity>);
//! - Google's ID tokens are RS256, `iss` `https://accounts.google.com`, one hour long
//!   (<https://cloud.google.com/docs/authentication/token-types#identity-tokens>);
//! - a VM created through the API without `serviceAccounts` runs as none
//!   (<https://cloud.google.com/compute/docs/access/create-enable-service-accounts-for-instances>).

use std::time::Duration;

use nodewire::testing::oidc::SigningKey;
use serde_json::{Value, json};
use sim::agent::AgentOutcome;
use sim::stack::{JOIN_AUDIENCE, Stack, StackOptions};

const P: &str = "example-project";
const Z: &str = "us-central1-a";
const SELECTOR: [(&str, &str); 1] = [("cluster", "demo")];

async fn stack(opts: StackOptions) -> Stack {
    match Stack::start(opts).await {
        Ok(s) => s,
        Err(e) => panic!("the stack did not start: {e}"),
    }
}

/// A stack whose VMs never run their startup script: the test plays the VM.
async fn idle_stack() -> Stack {
    stack(StackOptions {
        join_delay: Duration::from_secs(24 * 3600),
        ..StackOptions::default()
    })
    .await
}

fn join_url(s: &Stack) -> String {
    s.env()
        .get("NODEWIRE_JOIN_URL")
        .cloned()
        .expect("the stack's join URL")
}

fn vm_key(project: &str, name: &str) -> String {
    format!("{project}/{Z}/{name}")
}

async fn wait_running(s: &Stack, project: &str, name: &str) {
    let key = (project.to_string(), Z.to_string(), name.to_string());
    let up = s
        .wait_until(Duration::from_secs(20), |s| {
            s.compute
                .with_world(|w| w.instances.get(&key).is_some_and(|i| i.status == "RUNNING"))
        })
        .await;
    assert!(up, "VM {name} never ran");
}

/// POSTs `body` to `path` of the join service with `token` as bearer: status, body,
/// Retry-After.
async fn send(
    s: &Stack,
    path: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, String, Option<String>) {
    let http = reqwest::Client::new();
    let mut r = http.post(format!("{}{path}", join_url(s)));
    if let Some(t) = token {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.body(b);
    }
    let r = r.send().await.expect("the join service answers");
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, r.text().await.unwrap_or_default(), retry)
}

/// POSTs to `path` without a body.
async fn post(s: &Stack, path: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    send(s, path, token, None).await
}

/// `POST /v1/join` with `token` and a fresh certificate request for Node `node` (ECDSA P-256,
/// as the startup script makes it).
async fn join_req(s: &Stack, node: &str, token: Option<&str>) -> (u16, String, Option<String>) {
    send(s, "/v1/join", token, Some(request_for(node))).await
}

/// The CertificateSigningRequests in the cluster.
fn csrs(s: &Stack) -> Vec<Value> {
    s.k8s.objects("certificatesigningrequests")
}

fn token_for(s: &Stack, project: &str, name: &str) -> String {
    s.metadata
        .identity_token(&vm_key(project, name), JOIN_AUDIENCE)
        .expect("the metadata server issues a token")
}

/// Bootstrap-token Secrets created so far (from the API server's request log).
fn secrets_created(s: &Stack) -> usize {
    s.k8s
        .chaos()
        .requests()
        .iter()
        .filter(|r| r.method == "secrets.create" && r.status == 201)
        .count()
}

/// Every `setMetadata` nodewire sent, with its items.
fn set_metadata_bodies(s: &Stack) -> Vec<Value> {
    s.compute
        .chaos()
        .requests()
        .into_iter()
        .filter(|r| r.method == "instances.setMetadata")
        .map(|r| r.body)
        .collect()
}

/// A bootstrap token (`[a-z0-9]{6}.[a-z0-9]{16}`) anywhere in `text`.
fn holds_a_token(text: &str) -> bool {
    let b = text.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (0..b.len().saturating_sub(22)).any(|i| {
        b[i..i + 6].iter().all(|c| ok(*c))
            && b[i + 6] == b'.'
            && b[i + 7..i + 23].iter().all(|c| ok(*c))
            && (i == 0 || !ok(b[i - 1]))
            && b.get(i + 23).is_none_or(|c| !ok(*c))
    })
}

#[test]
fn the_token_pattern_matches_tokens_only() {
    assert!(holds_a_token("token: \"abcdef.0123456789abcdef\"\n"));
    assert!(!holds_a_token("startup-script: /opt/nodewire/join.sh"));
    assert!(!holds_a_token("abcdefg.0123456789abcdef"));
}

/// The VMs join in pull mode, are wired, and at no time does any VM's metadata hold a join
/// token; a token is minted once per VM that asked, and none for a VM outside the selector
/// (which asks too, and is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_mode_wires_vms_without_a_secret_in_metadata() {
    let s = stack(StackOptions::default()).await;
    let names = ["pull-1", "pull-2", "pull-3"];
    for n in names {
        s.insert_vm(P, Z, n, &SELECTOR, true).await.expect("insert");
    }
    s.insert_vm(P, Z, "stranger", &[("team", "web")], true)
        .await
        .expect("insert");
    let wired = s
        .wait_until(Duration::from_secs(60), |s| {
            names.iter().all(|n| s.wired(Z, n).is_ok())
        })
        .await;
    assert!(
        wired,
        "not wired: {:?}",
        names.iter().map(|n| s.wired(Z, n)).collect::<Vec<_>>()
    );
    // No setMetadata ever carried a join configuration or a token.
    for body in set_metadata_bodies(&s) {
        let text = body.to_string();
        assert!(
            !text.contains("kubeadm-join"),
            "join metadata written: {text}"
        );
        assert!(!holds_a_token(&text), "a token in metadata: {text}");
    }
    // No bootstrap token at all (issue 20): the request log shows no Secret created.
    assert_eq!(secrets_created(&s), 0, "pull mode created a Secret");
    for n in names {
        assert!(s.tokens_of(n).is_empty());
    }
    // Every wired Node's kubelet holds a certificate of its own VM's name: the one nodewire
    // had signed for the VM's key (the discovery credential) and the one the kubelet then got
    // for its own key, requested as that Node (selfnodeclient).
    let all = csrs(&s);
    for n in names {
        let node = format!("system:node:{n}");
        let by_nodewire: Vec<_> = all
            .iter()
            .filter(|c| c["metadata"]["labels"]["nodewire.io/instance"] == n)
            .collect();
        assert_eq!(by_nodewire.len(), 1, "{n}: {by_nodewire:?}");
        assert_eq!(
            by_nodewire[0]["spec"]["username"],
            "system:serviceaccount:kube-system:nodewire-join"
        );
        assert_eq!(
            integration_tests::issued_cn(by_nodewire[0]).as_deref(),
            Some(node.as_str())
        );
        let by_kubelet: Vec<_> = all
            .iter()
            .filter(|c| c["spec"]["username"] == node.as_str())
            .collect();
        assert_eq!(by_kubelet.len(), 1, "{n}: {by_kubelet:?}");
        assert_eq!(
            integration_tests::issued_cn(by_kubelet[0]).as_deref(),
            Some(node.as_str())
        );
    }
    // Every certificate issued names a VM of this test, and the one outside the selector got
    // none.
    for c in &all {
        let cn = integration_tests::issued_cn(c).unwrap_or_default();
        assert!(
            names.iter().any(|n| cn == format!("system:node:{n}")),
            "a certificate for {cn:?}: {c}"
        );
    }
    // No private key ever crossed the wire to the API server: the VM sends only requests.
    for r in s.k8s.chaos().requests() {
        assert!(
            !r.body.to_string().contains("PRIVATE KEY"),
            "a private key in {}: {}",
            r.method,
            r.body
        );
    }
    let events = s.agent.events();
    for n in names {
        let key = vm_key(P, n);
        assert!(
            events
                .iter()
                .any(|e| e.vm == key && e.outcome == AgentOutcome::Reported),
            "{n} did not report its join: {events:?}"
        );
    }
    assert!(
        events.iter().any(|e| e.vm == vm_key(P, "stranger")
            && matches!(&e.outcome, AgentOutcome::Refused(why) if why.contains("403"))),
        "the VM outside the selector was not refused: {events:?}"
    );
    s.stop().await;
}

/// Every refusal the issue names, each on its own VM (the rate limit is per instance).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_refuses_what_it_cannot_verify() {
    let s = idle_stack().await;
    for n in [
        "ok", "forged", "expired", "audience", "stopped", "noded", "standard", "marked",
    ] {
        s.insert_vm(P, Z, n, &SELECTOR, true).await.expect("insert");
    }
    s.insert_vm("other-project", Z, "foreign", &SELECTOR, true)
        .await
        .expect("insert");
    s.insert_vm(P, Z, "unlabelled", &[("team", "web")], true)
        .await
        .expect("insert");
    for n in [
        "ok",
        "forged",
        "expired",
        "audience",
        "stopped",
        "noded",
        "standard",
        "unlabelled",
        "marked",
    ] {
        wait_running(&s, P, n).await;
    }
    wait_running(&s, "other-project", "foreign").await;
    let before = secrets_created(&s);

    // Tag at bootstrap: no VM here runs its startup script, so no Node can exist, yet
    // `bootstrap` (started by the insert's audit entry) gives the VM its network tag.
    let key = (P.to_string(), Z.to_string(), "ok".to_string());
    let tagged = s
        .wait_until(Duration::from_secs(20), |s| {
            s.compute.with_world(|w| {
                w.instances
                    .get(&key)
                    .is_some_and(|i| i.tags.iter().any(|t| t == "k8s-node"))
            })
        })
        .await;
    assert!(tagged, "bootstrap did not tag the VM");
    assert!(s.k8s.object("nodes", "", "ok").is_none());

    // No token, or not a bearer one.
    assert_eq!(join_req(&s, "ok", None).await.0, 401);

    // Forged: the right claims, signed by a key Google never published.
    let claims = s
        .metadata
        .claims(&vm_key(P, "forged"), JOIN_AUDIENCE)
        .expect("claims");
    let forged = SigningKey::generate("sim-metadata-1").token(&claims);
    let (code, body, _) = join_req(&s, "ok", Some(&forged)).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("signature"), "{body}");

    // Expired: signed by the right key, an hour past its end.
    let mut claims = s
        .metadata
        .claims(&vm_key(P, "expired"), JOIN_AUDIENCE)
        .expect("claims");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    claims["iat"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    let (code, body, _) = join_req(&s, "ok", Some(&s.metadata.sign(&claims))).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("expired"), "{body}");

    // Another audience: a token the VM asked for some other service.
    let other = s
        .metadata
        .identity_token(&vm_key(P, "audience"), "https://example.com/")
        .expect("token");
    let (code, body, _) = join_req(&s, "ok", Some(&other)).await;
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("audience"), "{body}");

    // format=standard: no google.compute_engine claims, so no VM to check.
    let mut claims = s
        .metadata
        .claims(&vm_key(P, "standard"), JOIN_AUDIENCE)
        .expect("claims");
    claims.as_object_mut().expect("object").remove("google");
    let (code, body, _) = join_req(&s, "ok", Some(&s.metadata.sign(&claims))).await;
    assert_eq!(code, 401, "{body}");

    // A VM of another project (same service account name, valid token).
    let foreign = s
        .metadata
        .identity_token(&vm_key("other-project", "foreign"), JOIN_AUDIENCE)
        .expect("token");
    let (code, body, _) = join_req(&s, "ok", Some(&foreign)).await;
    assert!(code == 403, "{code} {body}");

    // A VM outside the selector.
    let (code, body, _) = join_req(&s, "ok", Some(&token_for(&s, P, "unlabelled"))).await;
    assert_eq!(code, 403, "{body}");

    // A stopped VM: its token was obtained while it ran.
    let t = token_for(&s, P, "stopped");
    s.compute.tamper(|w| {
        if let Some(i) = w
            .instances
            .get_mut(&(P.to_string(), Z.to_string(), "stopped".to_string()))
        {
            i.status = "TERMINATED".into();
        }
    });
    let (code, body, _) = join_req(&s, "ok", Some(&t)).await;
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("TERMINATED"), "{body}");

    // A VM whose Node exists: the door is shut (a Pod there could ask for a token too).
    s.k8s
        .seed(
            "nodes",
            "",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "noded"},
                   "spec": {"providerID": format!("gce://{P}/{Z}/noded")}}),
        )
        .expect("seed the Node");
    let (code, body, _) = join_req(&s, "ok", Some(&token_for(&s, P, "noded"))).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("Node"), "{body}");

    // A VM that joined before and lost its Node (issue 20, item 5): no new credential — a
    // process there, a Pod still running included, must not get one; the kubelet restart
    // nodewire asks for brings the Node back.
    s.compute.tamper(|w| {
        if let Some(i) = w
            .instances
            .get_mut(&(P.to_string(), Z.to_string(), "marked".to_string()))
        {
            i.metadata
                .push((nodewire::join::JOINED_METADATA_KEY.into(), "true".into()));
        }
    });
    let (code, body, _) = join_req(&s, "ok", Some(&token_for(&s, P, "marked"))).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("joined before"), "{body}");

    // Nothing so far minted or asked for anything.
    assert_eq!(
        secrets_created(&s),
        before,
        "a refused request minted a token"
    );
    assert!(csrs(&s).is_empty(), "a refused request made a CSR");

    // The VM that may join gets its configuration, once per identity token.
    let t = token_for(&s, P, "ok");
    let (code, yaml, _) = join_req(&s, "ok", Some(&t)).await;
    assert_eq!(code, 200, "{yaml}");
    assert!(yaml.contains("kind: JoinConfiguration"), "{yaml}");
    assert!(yaml.contains("name: \"ok\""), "{yaml}");
    assert!(!holds_a_token(&yaml), "{yaml}");
    assert!(!yaml.contains("PRIVATE KEY"), "{yaml}");
    assert!(yaml.contains("kubeConfigPath: \"/etc/kubernetes/nodewire-discovery.conf\""));
    assert!(yaml.contains("client-key: \"/var/lib/nodewire/startup/bootstrap-client.key\""));
    assert_eq!(secrets_created(&s), before, "a Secret was created");
    let made: Vec<Value> = csrs(&s)
        .into_iter()
        .filter(|c| c["metadata"]["labels"]["nodewire.io/instance"] == "ok")
        .collect();
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(
        integration_tests::issued_cn(&made[0]).as_deref(),
        Some("system:node:ok")
    );
    assert_eq!(
        made[0]["status"]["conditions"][0]["reason"],
        "NodewireInstanceIdentity"
    );
    let digest = nodewire::adapter::auth::hex_sha256(t.as_bytes());
    assert_eq!(
        made[0]["metadata"]["annotations"]["nodewire.io/identity-sha256"],
        json!(digest)
    );
    // The same identity token again: refused, nothing made.
    let (code, body, _) = join_req(&s, "ok", Some(&t)).await;
    assert_eq!(code, 409, "{body}");
    assert!(body.contains("used already"), "{body}");
    assert_eq!(csrs(&s).len(), 1);
    // The report before the Node exists: not yet.
    let (code, body, _) = post(&s, "/v1/joined", Some(&token_for(&s, P, "ok"))).await;
    assert_eq!(code, 409, "{body}");

    // No setMetadata at all: pull mode writes nothing into a VM's metadata to join it.
    for body in set_metadata_bodies(&s) {
        assert!(!body.to_string().contains("kubeadm-join"));
    }
    s.stop().await;
}

/// Requests are limited per instance: a VM hammering the service is answered 429 with a
/// Retry-After, and other VMs are not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn join_requests_are_rate_limited_per_instance() {
    let s = idle_stack().await;
    for n in ["loud", "quiet"] {
        s.insert_vm(P, Z, n, &SELECTOR, true).await.expect("insert");
    }
    wait_running(&s, P, "loud").await;
    wait_running(&s, P, "quiet").await;
    // Only a verified token names an instance; the limit counts every verified request.
    let mut limited = None;
    for i in 0..=nodewire::handlers::join::RATE_LIMIT {
        let (code, _, retry) = post(&s, "/v1/joined", Some(&token_for(&s, P, "loud"))).await;
        if code == 429 {
            limited = Some((i, retry));
            break;
        }
        assert_eq!(code, 409, "no Node yet");
    }
    let (n, retry) = limited.expect("never rate-limited");
    assert_eq!(n, nodewire::handlers::join::RATE_LIMIT, "limited after {n}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));
    let (code, body, _) = join_req(&s, "quiet", Some(&token_for(&s, P, "quiet"))).await;
    assert_eq!(code, 200, "another VM was held up: {body}");
    s.stop().await;
}

/// The metadata server is as strict as Google's: no `Metadata-Flavor: Google`, no token; no
/// audience, no token; a VM without a service account has none to give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_server_refuses_what_google_refuses() {
    let s = idle_stack().await;
    s.insert_vm(P, Z, "md", &SELECTOR, true)
        .await
        .expect("insert");
    wait_running(&s, P, "md").await;
    let http = reqwest::Client::new();
    let url = format!(
        "{}/instance/service-accounts/default/identity",
        s.metadata.url()
    );
    let ask = |flavor: bool, audience: Option<&str>, vm: &str| {
        let mut r = http
            .get(&url)
            .header(sim::metadata::INSTANCE_HEADER, vm_key(P, vm));
        if flavor {
            r = r.header("Metadata-Flavor", "Google");
        }
        if let Some(a) = audience {
            r = r.query(&[("audience", a), ("format", "full")]);
        }
        r.send()
    };
    let code = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        code(ask(false, Some(JOIN_AUDIENCE), "md").await.expect("answer")),
        403
    );
    assert_eq!(code(ask(true, None, "md").await.expect("answer")), 400);
    assert_eq!(
        code(ask(true, Some(JOIN_AUDIENCE), "md").await.expect("answer")),
        200
    );
    s.compute
        .seed_instance(sim::compute::InstanceSeed {
            service_accounts: vec![],
            ..sim::compute::InstanceSeed::node_vm(P, "us-central1", Z, "no-sa")
        })
        .expect("seed");
    assert_eq!(
        code(
            ask(true, Some(JOIN_AUDIENCE), "no-sa")
                .await
                .expect("answer")
        ),
        404
    );
    s.stop().await;
}

/// A certificate request for `CN=system:node:NODE, O=system:nodes` made with a fresh key (PEM),
/// as the startup script and the kubelet make them.
fn request_for(node: &str) -> String {
    sim::kubelet_cert::node_key_and_request(node)
        .expect("a request")
        .1
}

/// The first bootstrap token (`id.secret`) in `text`.
fn first_token(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let ok = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (0..b.len().saturating_sub(22))
        .find(|&i| {
            b[i..i + 6].iter().all(|c| ok(*c))
                && b[i + 6] == b'.'
                && b[i + 7..i + 23].iter().all(|c| ok(*c))
                && (i == 0 || !ok(b[i - 1]))
                && b.get(i + 23).is_none_or(|c| !ok(*c))
        })
        .map(|i| text[i..i + 23].to_string())
}

/// Issue 20's attack on the whole pull-mode stack: what VM A's identity buys is never a
/// certificate for VM B's Node. A asks the join service with its own identity token and a
/// certificate request for B's name; whatever credential the answer holds (a bootstrap token,
/// on the code before issue 20) and a bootstrap token that leaked (kubeadm init's, or any
/// minted one) are then used as an attacker would: a CSR for B posted to the API server. None
/// is ever approved or signed. Before issue 20 the join service answered 200 with a bootstrap
/// token and kube-controller-manager's nodeclient rule (kubeadm:node-autoapprove-bootstrap)
/// approved that CSR, so the last assertions failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vms_identity_never_gets_another_nodes_certificate() {
    let s = idle_stack().await;
    for n in ["k8s-a", "k8s-b"] {
        s.insert_vm(P, Z, n, &SELECTOR, true).await.expect("insert");
    }
    wait_running(&s, P, "k8s-a").await;
    wait_running(&s, P, "k8s-b").await;
    let http = reqwest::Client::new();
    let answer = http
        .post(format!("{}/v1/join", join_url(&s)))
        .bearer_auth(token_for(&s, P, "k8s-a"))
        .body(request_for("k8s-b"))
        .send()
        .await
        .expect("the join service answers");
    let code = answer.status().as_u16();
    let answer = answer.text().await.unwrap_or_default();

    let mut tokens: Vec<String> = first_token(&answer).into_iter().collect();
    s.k8s
        .seed(
            "secrets",
            "kube-system",
            sim::k8s::token_secret("leaked", "k8s-a", Z, "2099-01-01T00:00:00Z"),
        )
        .expect("a leaked token");
    tokens.push("leaked.0123456789abcdef".into());
    let csrs_url = format!(
        "{}/apis/certificates.k8s.io/v1/certificatesigningrequests",
        s.k8s.endpoint()
    );
    use base64::Engine as _;
    for t in &tokens {
        let body = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"generateName": "attack-"},
            "spec": {"request": base64::engine::general_purpose::STANDARD.encode(request_for("k8s-b")),
                     "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "usages": ["digital signature", "client auth"]}});
        let r = http
            .post(&csrs_url)
            .bearer_auth(t)
            .json(&body)
            .send()
            .await
            .expect("the API server answers");
        assert_eq!(r.status().as_u16(), 201, "a bootstrap token may post CSRs");
    }
    // The controllers act within milliseconds; give them a second and a half.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = csrs(&s);
    assert!(!all.is_empty());
    for c in &all {
        assert_ne!(
            integration_tests::issued_cn(c).as_deref(),
            Some("system:node:k8s-b"),
            "a certificate for k8s-b was signed: {c}"
        );
        assert!(
            c["status"]["conditions"]
                .as_array()
                .is_none_or(|l| l.iter().all(|x| x["type"] != "Approved")),
            "a CSR was approved: {c}"
        );
    }
    // Pull mode refuses the request outright: the subject is not the VM's, and nothing was made
    // for it.
    assert_eq!(code, 403, "{answer}");
    assert!(answer.contains("system:node:k8s-a"), "{answer}");
    assert!(
        all.iter()
            .all(|c| c["metadata"]["labels"]["nodewire.io/instance"].is_null()),
        "the join service made a CSR: {all:?}"
    );
    s.stop().await;
}

/// Credentials are counted per instance, not per name: three recent CSRs of a VM that was
/// deleted and recreated under the same name (another instance id) neither rate-limit the new
/// instance nor count as its replays; three of this very instance do rate-limit it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn credentials_are_counted_per_instance_not_per_name() {
    let s = idle_stack().await;
    for n in ["reborn", "busy"] {
        s.insert_vm(P, Z, n, &SELECTOR, true).await.expect("insert");
        wait_running(&s, P, n).await;
    }
    let id_of = |name: &str| {
        s.compute.with_world(|w| {
            w.instances
                .get(&(P.to_string(), Z.to_string(), name.to_string()))
                .map(|i| i.id)
                .expect("the VM")
        })
    };
    // Made as the cluster admin, through the API (the simulator's seeding has no CSRs).
    let http = reqwest::Client::new();
    let seed = |name: &str, instance_id: String, i: usize| {
        use base64::Engine as _;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let obj = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": format!("nodewire-{name}-seed{i}"),
                "labels": {"nodewire.io/instance": name, "nodewire.io/zone": Z,
                           "nodewire.io/instance-id": instance_id},
                // A newer identity token than any the test will ask for.
                "annotations": {"nodewire.io/identity-sha256": format!("{i:064}"),
                                "nodewire.io/identity-iat": (now + 3600).to_string()}},
            "spec": {"request": base64::engine::general_purpose::STANDARD.encode(request_for(name)),
                     "signerName": "kubernetes.io/kube-apiserver-client-kubelet",
                     "usages": ["digital signature", "client auth"]}});
        http.post(format!(
            "{}/apis/certificates.k8s.io/v1/certificatesigningrequests",
            s.k8s.endpoint()
        ))
        .bearer_auth(s.k8s.admin_token())
        .json(&obj)
        .send()
    };
    let reborn_id = id_of("reborn");
    for i in 0..3 {
        for (name, id) in [("reborn", reborn_id + 1), ("busy", id_of("busy"))] {
            let r = seed(name, id.to_string(), i)
                .await
                .expect("the API answers");
            assert_eq!(r.status().as_u16(), 201);
        }
    }
    let (code, body, _) = join_req(&s, "reborn", Some(&token_for(&s, P, "reborn"))).await;
    assert_eq!(
        code, 200,
        "the predecessor's CSRs held up the new instance: {body}"
    );
    let (code, body, _) = join_req(&s, "busy", Some(&token_for(&s, P, "busy"))).await;
    assert!(
        code == 409 || code == 429,
        "this instance's own CSRs count: {code} {body}"
    );
    s.stop().await;
}
