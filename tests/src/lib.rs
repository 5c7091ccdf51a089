//! Helpers for the cross-process tests: the Pub/Sub emulator (real), function servers on
//! loopback, push subscriptions between them, and polling with a deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nodewire::act::deps::Deps;
use nodewire::adapter::Handler;
use nodewire::config::Config;
use nodewire::event::Decode;
use serde_json::json;
pub use sim::emulator::{Emulator, PulledMessage};

/// The project every test uses, in the emulator and in the functions' configuration.
pub const PROJECT: &str = "example-project";

/// Starts the emulator or fails the test with the reason (never skips).
pub async fn emulator() -> Emulator {
    match Emulator::start(PROJECT).await {
        Ok(e) => e,
        Err(e) => panic!("the Pub/Sub emulator is required for this test: {e}"),
    }
}

/// The configuration of a function pointed at the emulator.
pub fn config(emu: &Emulator, service: &str, extra: &[(&str, &str)]) -> Config {
    let host = emu.host();
    let mut env: BTreeMap<&str, &str> = BTreeMap::from([
        ("NODEWIRE_PROJECT", PROJECT),
        ("PUBSUB_EMULATOR_HOST", host.as_str()),
        ("NODEWIRE_PUBLISH_TIMEOUT_SECS", "10"),
        // The emulator pushes without ID tokens; these servers listen on loopback only.
        ("NODEWIRE_PUSH_AUTH", "off"),
    ]);
    env.extend(extra.iter().copied());
    Config::from_source(&env, service).expect("valid test configuration")
}

pub use sim::stack::FnServer;

/// Connects a function's Pub/Sub bus (only) and serves `handler` on `127.0.0.1:0`; the
/// handler gets the connected [`Deps`].
pub async fn serve_fn<T, H>(config: Config, handler: impl FnOnce(Deps) -> H) -> FnServer
where
    T: Decode + Send + 'static,
    H: Handler<T>,
{
    let deps = Deps::connect(config).await.expect("Pub/Sub client");
    FnServer::start_with_deps(deps.clone(), handler(deps)).await
}

/// A push subscription body: ordering on, short ack deadline, fast retries.
pub fn push_body(endpoint: &str) -> serde_json::Value {
    json!({
        "pushConfig": {"pushEndpoint": endpoint},
        "ackDeadlineSeconds": 10,
        "enableMessageOrdering": true,
        "retryPolicy": {"minimumBackoff": "1s", "maximumBackoff": "2s"}
    })
}

/// A pull subscription body for observing a topic.
pub fn pull_body() -> serde_json::Value {
    json!({"ackDeadlineSeconds": 10, "enableMessageOrdering": true})
}

/// Pulls from `subscription` until `want` messages arrived or `timeout` passed.
pub async fn pull_until(
    emu: &Emulator,
    subscription: &str,
    want: usize,
    timeout: Duration,
) -> Vec<PulledMessage> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(emu.pull(subscription, 100).await.expect("pull"));
        if got.len() < want {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    got
}

/// Fixtures shared by the simulator-backed tests.
pub mod discovery;
pub mod terraform;

pub mod simfix {
    use std::time::Duration;

    use nodewire::act::compute::{Compute, ComputeEndpoint, ComputePolicy};
    use nodewire::act::k8s::{Kube, KubePolicy};
    use nodewire::config::KubeSettings;
    use nodewire::names::{Cidr, InstanceRef};
    use sim::compute::{ComputeConfig, ComputeSim, InstanceSeed, SubnetSpec};
    use sim::k8s::{K8sConfig, K8sSim};

    pub const P: &str = "example-project";
    pub const Z: &str = "us-central1-a";
    pub const REGION: &str = "us-central1";

    pub fn cidr(s: &str) -> Cidr {
        s.parse().expect("cidr")
    }

    /// The reference subnet: nodes `10.128.0.0/20`, pods `10.4.0.0/16`, services.
    pub fn subnet(pods: &str) -> SubnetSpec {
        SubnetSpec::node_subnet(
            P,
            REGION,
            cidr("10.128.0.0/20"),
            cidr(pods),
            cidr("172.16.16.0/21"),
        )
    }

    pub async fn compute_sim(op_latency_ms: u64) -> ComputeSim {
        ComputeSim::start(ComputeConfig {
            op_latency: Duration::from_millis(op_latency_ms),
            wait_max: Duration::from_millis(500),
            subnets: vec![subnet("10.4.0.0/16")],
            ..ComputeConfig::default()
        })
        .await
        .expect("compute sim")
    }

    pub fn seed(sim: &ComputeSim, name: &str) -> InstanceRef {
        sim.seed_instance(InstanceSeed {
            tags: vec!["base".into()],
            metadata: vec![("startup-script".into(), "#!/bin/sh".into())],
            ..InstanceSeed::node_vm(P, REGION, Z, name)
        })
        .expect("seed");
        InstanceRef::new(P, Z, name).expect("ref")
    }

    /// Short backoffs so that retry tests run in milliseconds.
    pub fn fast_compute_policy() -> ComputePolicy {
        ComputePolicy {
            retry: nodewire::act::toolkit::Backoff {
                max_attempts: 8,
                max_elapsed: Duration::from_secs(10),
                base: Duration::from_millis(5),
                max: Duration::from_millis(40),
            },
            max_resends: 8,
            operation_deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(10),
        }
    }

    pub async fn compute_client(sim: &ComputeSim, policy: ComputePolicy) -> Compute {
        Compute::new(
            P,
            &ComputeEndpoint {
                url: Some(sim.endpoint()),
            },
            policy,
        )
        .await
        .expect("compute client")
    }

    pub async fn k8s_sim(config: K8sConfig) -> K8sSim {
        K8sSim::start(config).await.expect("k8s sim")
    }

    pub fn fast_kube_policy() -> KubePolicy {
        KubePolicy {
            retry: nodewire::act::toolkit::Backoff {
                max_attempts: 8,
                max_elapsed: Duration::from_secs(10),
                base: Duration::from_millis(5),
                max: Duration::from_millis(40),
            },
            max_conflicts: 10,
            request_timeout: Duration::from_secs(10),
        }
    }

    /// A VM's metadata value as the simulator holds it (nodewire's views keep no values).
    pub fn metadata_value(
        sim: &sim::compute::ComputeSim,
        vm: &nodewire::names::InstanceRef,
        key: &str,
    ) -> Option<String> {
        sim.instance_json(vm.project(), vm.zone(), vm.name())?
            .pointer("/metadata/items")?
            .as_array()?
            .iter()
            .find(|it| it["key"] == key)
            .and_then(|it| it["value"].as_str().map(str::to_string))
    }

    pub async fn kube_client(sim: &K8sSim, policy: KubePolicy) -> Kube {
        Kube::new(
            &KubeSettings::Direct {
                url: sim.endpoint(),
                token: Some(sim.nodewire_token()),
                token_file: None,
                ca_file: None,
                ca_pem: None,
            },
            policy,
        )
        .await
        .expect("kube client")
    }
}

pub mod world;

/// Creates `topics`, then a pull subscription for each `(subscription, topic)` observer.
pub async fn topics_and_observers(emu: &Emulator, topics: &[&str], observers: &[(&str, &str)]) {
    for t in topics {
        emu.create_topic(t).await.expect("topic");
    }
    for (sub, topic) in observers {
        emu.create_subscription(sub, topic, pull_body())
            .await
            .expect("observer subscription");
    }
}

/// Pushes `topic` to the function `f` through the push subscription `sub`.
pub async fn push_to(emu: &Emulator, sub: &str, topic: &str, f: &FnServer) {
    emu.create_subscription(sub, topic, push_body(&f.endpoint()))
        .await
        .expect("push subscription");
}

/// Deletes the push subscription `sub` (so nothing is pushed any more) and stops `f`.
pub async fn stop_pushing(emu: &Emulator, sub: &str, f: FnServer) {
    emu.delete_subscription(sub).await.expect("cleanup");
    f.stop().await;
}

/// The subject CN of the certificate a CertificateSigningRequest was issued, if any.
pub fn issued_cn(csr: &serde_json::Value) -> Option<String> {
    use base64::Engine as _;
    let pem_text = base64::engine::general_purpose::STANDARD
        .decode(csr["status"]["certificate"].as_str()?)
        .ok()?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem_text).ok()?;
    let cert = pem.parse_x509().ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .map(str::to_string)
}
