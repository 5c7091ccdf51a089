//! The whole system on one machine: both simulators (with their Logging sinks), the simulated
//! VM agent, every function as its own HTTP server on loopback, and Pub/Sub — the real
//! emulator with topics and push subscriptions wired as the Terraform wires them (ordering,
//! retry and dead-letter policies), or, when the emulator is not installed, the in-process bus
//! with an in-process pusher that delivers push envelopes to the same servers. Used by the
//! end-to-end tests, the sweep tests and `nodewire sandbox`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::emulator::Emulator;
use base64::Engine as _;
use nodewire::act::compute::{Compute, ComputeEndpoint, ComputePolicy};
use nodewire::act::deps::{ChainDeps, Deps};
use nodewire::act::k8s::{Kube, KubePolicy, TOKEN_INSTANCE_LABEL};
use nodewire::adapter::Handler;
use nodewire::bus::{BoxFuture, Bus, BusError, InProcessBus, OutboundMessage, PubSubBus};
use nodewire::config::KubeSettings;
use nodewire::config::{ChainConfig, Config, JoinMode, RangeOrder};
use nodewire::event::{Decode, Step};
use nodewire::handlers::{drift_sweep, instance_events, node_events, steps};
use nodewire::join::JOIN_METADATA_KEY;
use nodewire::locate::ClusterLocator;
use nodewire::names::Cidr;
use nodewire::names::UNWIRED_TAINT;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::agent::{AgentConfig, PullJoin, VmAgent};
use crate::audit::AuditSink;
use crate::compute::{ComputeConfig, ComputeSim, SubnetSpec};
use crate::faults::FaultSpec;
use crate::k8s::{IpamConfig, K8sConfig, K8sSim};
use crate::metadata::MetadataServer;

/// The audience of the simulated VMs' identity tokens: the `join` service's URL as Cloud Run
/// would name it (it is reached on loopback at another address).
pub const JOIN_AUDIENCE: &str = "https://nodewire-join-123456789012.us-central1.run.app";

/// A function served in-process on a loopback port.
pub struct FnServer {
    pub addr: SocketAddr,
    /// How many answers of each HTTP status the server gave (503: a delivery to redo).
    answers: Arc<Mutex<BTreeMap<u16, usize>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl std::fmt::Debug for FnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl FnServer {
    /// Serves `handler` with the given dependencies on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start_with_deps<T, H>(deps: Deps, handler: H) -> Self
    where
        T: Decode + Send + 'static,
        H: Handler<T>,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let app = nodewire::adapter::router(deps.clone(), handler);
        Self::start_router(listener, deps, app)
    }

    /// Serves an HTTP function's router (the `join` service) on a bound listener.
    pub fn start_router(listener: TcpListener, deps: Deps, app: axum::Router) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let answers: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
        let counted = answers.clone();
        let app = app.layer(axum::middleware::map_response(
            move |r: axum::response::Response| {
                let counted = counted.clone();
                async move {
                    if let Ok(mut a) = counted.lock() {
                        *a.entry(r.status().as_u16()).or_default() += 1;
                    }
                    r
                }
            },
        ));
        let task = tokio::spawn(nodewire::adapter::serve_router(
            listener,
            deps,
            app,
            async move {
                let _ = rx.await;
            },
        ));
        Self {
            addr,
            answers,
            stop: Some(tx),
            task,
        }
    }

    /// How many answers of each HTTP status the server gave so far.
    pub fn answers(&self) -> BTreeMap<u16, usize> {
        self.answers.lock().map(|a| a.clone()).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT/`: the push endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Stops the server (graceful) and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Which Pub/Sub to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BusChoice {
    /// The real emulator (must be installed).
    #[default]
    Emulator,
    /// The in-process bus and pusher (no Java, no emulator).
    InProcess,
}

/// How the stack is set up.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub bus: BusChoice,
    /// Probability of an injected fault on every method of both simulators.
    pub faults: f64,
    /// Publish every step message twice.
    pub duplicate_steps: bool,
    pub project: String,
    /// A second project with the same subnet, for "another project: untouched".
    pub other_project: Option<String>,
    pub region: String,
    pub nodes_range: Cidr,
    pub pods_range: Cidr,
    /// More secondary ranges of the node subnet for Pods, used in this order once `pods` is
    /// full (`NODEWIRE_ADDITIONAL_POD_RANGES`; alias-first only).
    pub extra_pod_ranges: Vec<(String, Cidr)>,
    pub services_range: Cidr,
    pub node_tag: String,
    /// `key=value` every node VM carries.
    pub selector: (String, String),
    /// `NODEWIRE_INSTANCE_PREFIX`, when set.
    pub name_prefix: Option<String>,
    pub op_latency: Duration,
    /// A NIC update's operation time, when it differs from `op_latency`.
    pub nic_op_latency: Option<Duration>,
    /// Cloud Logging's delay from an API call to its audit entry on the sink's topic.
    pub audit_delay: Duration,
    /// A new VM's time in STAGING before RUNNING (bootstrap waits for it).
    pub boot_delay: Duration,
    pub ipam_delay: Duration,
    pub join_delay: Duration,
    /// The kubelets' status update interval (10 s on real nodes; shorter here so that every
    /// Node sees other writers while nodewire works on it).
    pub kubelet_heartbeat: Duration,
    /// From registration to Ready (then the not-ready taint is lifted).
    pub kubelet_ready_after: Duration,
    /// The RBAC manifests the Kubernetes simulator enforces; `None`: nodewire's shipped ones.
    pub rbac_manifests: Option<Vec<String>>,
    /// How VMs get their JoinConfiguration (`NODEWIRE_JOIN_MODE`); pull, as in production,
    /// by default.
    pub join_mode: JoinMode,
    /// `NODEWIRE_REQUEST_TIMEOUT_SECS` of every function; the push subscriptions' ack deadline
    /// is 20 s more (as `infra/terraform` sets them: 100 s and 120 s).
    pub request_timeout: Duration,
    /// The push subscriptions' `retryPolicy` (minimum, maximum backoff); `infra/terraform`
    /// sets 10 s and 600 s.
    pub retry_backoff: (Duration, Duration),
    /// kube-controller-manager's node IPAM (`--allocate-node-cidrs`): on by default; off, no
    /// Node gets a podCIDR unless someone sets it.
    pub node_ipam: bool,
    /// `NODEWIRE_RANGE_ORDER`; alias-first turns the node IPAM off.
    pub range_order: RangeOrder,
    /// Nodes register with `NetworkUnavailable` = `True` (see `AgentConfig`).
    pub network_unavailable: bool,
}

/// How slow the simulated world is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Latency {
    /// Milliseconds everywhere: the tests' and the default sandbox's pace.
    #[default]
    Fast,
    /// Google Cloud's and a kubeadm node's pace, from their documentation and common
    /// experience: Compute operations of seconds (3 s; a NIC update 12 s), a VM STAGING for
    /// 20 s, Cloud Logging delivering an audit entry to its sink's topic after 5 s, the startup
    /// script reaching `kubeadm join` 20 s after boot, the IPAM controller 1 s, kubelets
    /// Ready after 15 s and reporting status every 10 s; and production's delivery settings
    /// (request timeout 100 s, ack deadline 120 s, redelivery backoff 10 s to 600 s).
    Realistic,
}

impl Latency {
    /// `opts` at this pace (the fast pace leaves them as they are).
    pub fn apply(self, opts: StackOptions) -> StackOptions {
        match self {
            Latency::Fast => opts,
            Latency::Realistic => StackOptions {
                op_latency: Duration::from_secs(3),
                nic_op_latency: Some(Duration::from_secs(12)),
                audit_delay: Duration::from_secs(5),
                boot_delay: Duration::from_secs(20),
                join_delay: Duration::from_secs(20),
                ipam_delay: Duration::from_secs(1),
                kubelet_heartbeat: Duration::from_secs(10),
                kubelet_ready_after: Duration::from_secs(15),
                // Production's delivery settings (infra/terraform's defaults).
                request_timeout: Duration::from_secs(100),
                retry_backoff: (Duration::from_secs(10), Duration::from_secs(600)),
                ..opts
            },
        }
    }
}

impl std::str::FromStr for Latency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fast" => Ok(Latency::Fast),
            "realistic" => Ok(Latency::Realistic),
            other => Err(format!(
                "unknown latency profile {other:?}: fast or realistic"
            )),
        }
    }
}

impl Default for StackOptions {
    /// The test cluster: `us-central1`, pods `10.4.0.0/16`.
    fn default() -> Self {
        Self {
            bus: BusChoice::Emulator,
            faults: 0.0,
            duplicate_steps: false,
            project: "example-project".into(),
            other_project: Some("other-project".into()),
            region: "us-central1".into(),
            nodes_range: parse("10.128.0.0/20"),
            pods_range: parse("10.4.0.0/16"),
            extra_pod_ranges: Vec::new(),
            services_range: parse("172.16.16.0/21"),
            node_tag: "k8s-node".into(),
            selector: ("cluster".into(), "demo".into()),
            name_prefix: None,
            op_latency: Duration::from_millis(60),
            nic_op_latency: None,
            audit_delay: Duration::ZERO,
            boot_delay: Duration::from_millis(200),
            ipam_delay: Duration::from_millis(200),
            join_delay: Duration::from_millis(300),
            rbac_manifests: None,
            kubelet_heartbeat: Duration::from_millis(500),
            kubelet_ready_after: Duration::from_millis(300),
            join_mode: JoinMode::Pull,
            request_timeout: Duration::from_secs(25),
            retry_backoff: (Duration::from_secs(1), Duration::from_secs(3)),
            node_ipam: true,
            range_order: RangeOrder::ClusterFirst,
            network_unavailable: false,
        }
    }
}

fn parse(s: &str) -> Cidr {
    s.parse().unwrap_or_else(|_| panic!("constant CIDR {s}"))
}

/// The CA whose pin the simulated cluster publishes (public certificate only).
const TEST_CA: &str = include_str!("../../shared/fixtures/test-ca.crt");

/// Publishes every message twice (at-least-once delivery, made visible).
struct Doubling(Arc<dyn Bus>);

impl Bus for Doubling {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        msg: OutboundMessage,
    ) -> BoxFuture<'a, Result<String, BusError>> {
        Box::pin(async move {
            let id = self.0.publish(topic, msg.clone()).await?;
            self.0.publish(topic, msg).await?;
            Ok(id)
        })
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        self.0.flush()
    }
}

/// Everything running.
pub struct Stack {
    pub opts: StackOptions,
    /// The emulator, when [`BusChoice::Emulator`].
    pub emu: Option<Emulator>,
    /// The in-process bus, when [`BusChoice::InProcess`].
    pub in_process: Option<InProcessBus>,
    pub compute: ComputeSim,
    pub k8s: K8sSim,
    /// The Kubernetes simulator over HTTPS, for kubectl.
    pub k8s_tls: crate::tls::TlsFront,
    pub agent: VmAgent,
    /// The metadata server issuing the VMs' identity tokens.
    pub metadata: MetadataServer,
    /// The `join` service (pull mode; it runs in metadata mode too, unused).
    join_server: FnServer,
    servers: Vec<(String, FnServer)>,
    subscriptions: Vec<String>,
    pushers: Vec<tokio::task::JoinHandle<()>>,
    sweep_server: FnServer,
    env: BTreeMap<String, String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("bus", &self.opts.bus)
            .finish_non_exhaustive()
    }
}

fn subnet(project: &str, o: &StackOptions) -> SubnetSpec {
    let mut s = SubnetSpec::node_subnet(
        project,
        &o.region,
        o.nodes_range,
        o.pods_range,
        o.services_range,
    );
    s.secondary.extend(o.extra_pod_ranges.iter().cloned());
    s
}

/// Which topic each function is pushed from.
fn source_topic(function: &str) -> String {
    match function {
        "instance-events" => "gce-audit".to_string(),
        "node-events" => "k8s-audit".to_string(),
        step => format!("nodewire-{step}"),
    }
}

impl Stack {
    /// Starts everything, in phases: Pub/Sub, the simulators and the VM agent, the functions'
    /// environment, the functions, the push wiring, then the fault injection.
    ///
    /// # Errors
    /// A message when a part cannot start (e.g. the emulator is not installed).
    pub async fn start(opts: StackOptions) -> Result<Self, String> {
        let (emu, base_bus, in_process) = Self::start_bus(&opts).await?;
        // The join service's address is its identity tokens' audience: known before the
        // agent (the VMs' startup scripts) starts.
        let join_listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding the join service: {e}"))?;
        let join_url = format!(
            "http://{}",
            join_listener
                .local_addr()
                .map_err(|e| format!("the join service's address: {e}"))?
        );
        let (compute, k8s, k8s_tls, agent, metadata) =
            Self::start_simulators(&opts, &base_bus, &join_url).await?;
        let mut env = Self::function_env(&opts, &compute, &k8s, emu.as_ref());
        env.insert("NODEWIRE_JOIN_MODE".into(), opts.join_mode.as_str().into());
        env.insert(
            "NODEWIRE_RANGE_ORDER".into(),
            opts.range_order.as_str().into(),
        );
        env.insert("NODEWIRE_JOIN_URL".into(), join_url.clone());
        // nodewire's service account token, in a file as a pod or Secret Manager mount has it,
        // for the CLI run against this stack.
        let token_file = std::env::temp_dir().join(format!(
            "nodewire-stack-{}-{}.token",
            std::process::id(),
            k8s.endpoint().rsplit(':').next().unwrap_or("0")
        ));
        std::fs::write(&token_file, k8s.nodewire_token())
            .map_err(|e| format!("writing {}: {e}", token_file.display()))?;
        env.insert(
            "NODEWIRE_KUBE_TOKEN_FILE".into(),
            token_file.display().to_string(),
        );
        // As against a real API server: HTTPS, trusting the cluster's CA.
        let ca_file = token_file.with_extension("ca.crt");
        std::fs::write(&ca_file, k8s_tls.ca_pem())
            .map_err(|e| format!("writing {}: {e}", ca_file.display()))?;
        env.insert("NODEWIRE_KUBE_API_URL".into(), k8s_tls.endpoint());
        env.insert(
            "NODEWIRE_KUBE_CA_FILE".into(),
            ca_file.display().to_string(),
        );
        let (servers, sweep_server, join_server) = Self::start_functions(
            &opts,
            &env,
            &k8s,
            &base_bus,
            emu.is_some(),
            (join_listener, &join_url, &metadata),
        )
        .await?;
        let (subscriptions, pushers) =
            Self::wire_push(&opts, emu.as_ref(), in_process.as_ref(), &servers).await?;
        Self::inject_faults(&opts, &compute, &k8s);
        Ok(Self {
            opts,
            emu,
            in_process,
            compute,
            k8s,
            k8s_tls,
            agent,
            metadata,
            join_server,
            servers,
            subscriptions,
            pushers,
            sweep_server,
            env,
            http: reqwest::Client::new(),
        })
    }

    /// Phase 1: the emulator (with every topic) or the in-process bus.
    async fn start_bus(
        opts: &StackOptions,
    ) -> Result<(Option<Emulator>, Arc<dyn Bus>, Option<InProcessBus>), String> {
        let p = opts.project.clone();
        let (emu, base_bus, in_process): (Option<Emulator>, Arc<dyn Bus>, Option<InProcessBus>) =
            match opts.bus {
                BusChoice::Emulator => {
                    let emu = Emulator::start(&p).await.map_err(|e| e.to_string())?;
                    let cfg = nodewire::config::PubSubConfig {
                        project: p.clone(),
                        emulator_endpoint: Some(emu.endpoint()),
                        topic_prefix: String::new(),
                        dead_letter_topic: String::new(),
                        publish_timeout: Duration::from_secs(10),
                        gce_audit_topic: String::new(),
                        k8s_audit_topic: String::new(),
                    };
                    let bus: Arc<dyn Bus> =
                        Arc::new(PubSubBus::connect(&cfg).await.map_err(|e| e.to_string())?);
                    (Some(emu), bus, None)
                }
                BusChoice::InProcess => {
                    let b = InProcessBus::new();
                    (None, Arc::new(b.clone()), Some(b))
                }
            };
        if let Some(emu) = &emu {
            let mut topics: Vec<String> = vec!["gce-audit".into(), "k8s-audit".into()];
            topics.extend(Step::ALL.iter().map(|s| format!("nodewire-{s}")));
            topics.extend([
                "nodewire-node-wired".into(),
                "nodewire-dead-letter".into(),
                "nodewire-undeliverable".into(),
            ]);
            for t in &topics {
                emu.create_topic(t).await.map_err(|e| e.to_string())?;
            }
        }
        Ok((emu, base_bus, in_process))
    }

    /// Phase 2: both simulators with their Logging sinks on `bus`, cluster-info, the VM agent.
    async fn start_simulators(
        opts: &StackOptions,
        base_bus: &Arc<dyn Bus>,
        join_url: &str,
    ) -> Result<
        (
            ComputeSim,
            K8sSim,
            crate::tls::TlsFront,
            VmAgent,
            MetadataServer,
        ),
        String,
    > {
        let p = opts.project.clone();
        let mut subnets = vec![subnet(&p, opts)];
        if let Some(o) = &opts.other_project {
            subnets.push(subnet(o, opts));
        }
        let compute = ComputeSim::start(ComputeConfig {
            seed: 7,
            op_latency: opts.op_latency,
            nic_op_latency: opts.nic_op_latency,
            boot_delay: opts.boot_delay,
            wait_max: Duration::from_secs(2),
            subnets,
            audit: Some(AuditSink {
                bus: base_bus.clone(),
                topic: format!("projects/{p}/topics/gce-audit"),
                delay: opts.audit_delay,
            }),
            ..ComputeConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let k8s = K8sSim::start(K8sConfig {
            seed: 11,
            // Alias-first: kube-controller-manager runs with --allocate-node-cidrs=false.
            ipam: (opts.node_ipam && opts.range_order == RangeOrder::ClusterFirst).then_some(
                IpamConfig {
                    cluster_cidr: opts.pods_range,
                    node_mask: 24,
                    delay: opts.ipam_delay,
                },
            ),
            audit: Some(AuditSink {
                bus: base_bus.clone(),
                topic: format!("projects/{p}/topics/k8s-audit"),
                delay: opts.audit_delay,
            }),
            audit_project: p.clone(),
            audit_zone: format!("{}-a", opts.region),
            rbac_manifests: opts.rbac_manifests.clone().unwrap_or_else(|| {
                // As control-plane.sh applies them: the metadata-mode role in that mode only.
                let mut m = vec![crate::k8s::rbac::NODEWIRE_RBAC.to_string()];
                if opts.join_mode == JoinMode::Metadata {
                    m.push(crate::k8s::rbac::NODEWIRE_RBAC_METADATA_MODE.to_string());
                }
                m
            }),
            admission_manifests: vec![crate::k8s::admission::nodewire_admission_ordered(
                &opts.project,
                opts.name_prefix.as_deref().unwrap_or_default(),
                // NODEWIRE_TOKEN_TTL_SECS's default: the stack leaves it unset.
                900,
                opts.range_order.as_str(),
            )],
            // control-plane.sh deletes kubeadm's auto-approval for bootstrap tokens in both
            // modes (in metadata mode node-events decides those CSRs).
            deleted_cluster_role_bindings: crate::k8s::CONTROL_PLANE_DELETES
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            // Five missed status updates, as kube-controller-manager's 50 s against the
            // kubelet's 10 s; at least 10 s, so that a busy test machine does not make the
            // fast pace's kubelets look unreachable.
            node_monitor_grace_period: Some(
                (opts.kubelet_heartbeat * 5).max(Duration::from_secs(10)),
            ),
        })
        .await
        .map_err(|e| e.to_string())?;
        k8s.publish_cluster_info_in(opts.nodes_range, TEST_CA)
            .map_err(|e| e.message.clone())?;
        let k8s_tls = k8s
            .start_tls_front()
            .await
            .map_err(|e| format!("the Kubernetes simulator's HTTPS front: {e}"))?;
        let metadata = MetadataServer::start(compute.view())
            .await
            .map_err(|e| format!("the metadata server: {e}"))?;
        let pull = (opts.join_mode == JoinMode::Pull).then(|| PullJoin {
            metadata_url: metadata.url(),
            join_url: join_url.to_string(),
            audience: JOIN_AUDIENCE.to_string(),
        });
        let agent = VmAgent::start(
            compute.view(),
            k8s.view(),
            AgentConfig {
                join_delay: opts.join_delay,
                poll: Duration::from_millis(100),
                k8s_endpoint: k8s.endpoint(),
                heartbeat: Some(opts.kubelet_heartbeat),
                ready_after: opts.kubelet_ready_after,
                network_unavailable: opts.network_unavailable,
                pull,
                tls: crate::kubelet_cert::K8sTls {
                    endpoint: k8s_tls.endpoint(),
                    server_ca_pem: k8s_tls.ca_pem().to_string(),
                },
            },
        );

        Ok((compute, k8s, k8s_tls, agent, metadata))
    }

    /// Phase 3: the environment every function (and the CLI) is configured from.
    fn function_env(
        opts: &StackOptions,
        compute: &ComputeSim,
        k8s: &K8sSim,
        emu: Option<&Emulator>,
    ) -> BTreeMap<String, String> {
        let p = opts.project.clone();
        let mut env: BTreeMap<String, String> = BTreeMap::from([
            ("NODEWIRE_PROJECT".into(), p.clone()),
            ("NODEWIRE_COMPUTE_ENDPOINT".into(), compute.endpoint()),
            ("NODEWIRE_KUBE_API_URL".into(), k8s.endpoint()),
            (
                "NODEWIRE_SUBNET".into(),
                format!("{}/k8s-nodes", opts.region),
            ),
            ("NODEWIRE_POD_RANGE".into(), opts.pods_range.to_string()),
            (
                "NODEWIRE_ADDITIONAL_POD_RANGES".into(),
                opts.extra_pod_ranges
                    .iter()
                    .map(|(n, c)| format!("{n}={c}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("NODEWIRE_NODE_TAGS".into(), opts.node_tag.clone()),
            // As the Terraform sets it: only a VM running as the node service account joins.
            (
                "NODEWIRE_NODE_SERVICE_ACCOUNTS".into(),
                crate::compute::node_service_account(&p),
            ),
            (
                "NODEWIRE_SELECTOR_LABELS".into(),
                format!("{}={}", opts.selector.0, opts.selector.1),
            ),
            (
                "NODEWIRE_REQUEST_TIMEOUT_SECS".into(),
                opts.request_timeout.as_secs().max(1).to_string(),
            ),
            // The emulator's push carries no ID token (it does not mint them); every function
            // of the stack listens on loopback, the only place authentication may be off.
            ("NODEWIRE_PUSH_AUTH".into(), "off".into()),
        ]);
        if let Some(emu) = emu {
            env.insert("PUBSUB_EMULATOR_HOST".into(), emu.host());
        }
        if let Some(prefix) = &opts.name_prefix {
            env.insert("NODEWIRE_INSTANCE_PREFIX".into(), prefix.clone());
        }
        env
    }

    /// Phase 4: every function as its own server on loopback, with its own clients.
    async fn start_functions(
        opts: &StackOptions,
        env: &BTreeMap<String, String>,
        k8s: &K8sSim,
        base_bus: &Arc<dyn Bus>,
        emulated: bool,
        join: (TcpListener, &str, &MetadataServer),
    ) -> Result<(Vec<(String, FnServer)>, FnServer, FnServer), String> {
        let src: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let chain = ChainConfig::from_source(&src).map_err(|e| e.to_string())?;
        // The functions reach the API server as in production: its HTTPS address, its CA.
        let kube_url = src
            .get("NODEWIRE_KUBE_API_URL")
            .map_or_else(|| k8s.endpoint(), |u| (*u).to_string());
        let kube_ca = src
            .get("NODEWIRE_KUBE_CA_FILE")
            .map(std::fs::read_to_string)
            .transpose()
            .map_err(|e| format!("the cluster CA: {e}"))?;
        // The join service has its own Kubernetes identity (infra/k8s/nodewire-rbac.yaml's
        // kube-system/nodewire-join); every other function is kube-system/nodewire.
        let deps_with = |src: &BTreeMap<&str, &str>, service: &str| {
            let config = Config::from_source(src, service).map_err(|e| e.to_string());
            let chain = chain.clone();
            let duplicate = opts.duplicate_steps;
            let base_bus = base_bus.clone();
            let kube_url = kube_url.clone();
            let kube_token = if service == "join" {
                k8s.service_account_token("kube-system", "nodewire-join")
            } else {
                k8s.nodewire_token()
            };
            let kube_ca = kube_ca.clone();
            async move {
                let config = config?;
                let bus: Arc<dyn Bus> = if emulated {
                    Arc::new(
                        PubSubBus::connect(&config.pubsub)
                            .await
                            .map_err(|e| e.to_string())?,
                    )
                } else {
                    base_bus
                };
                let bus: Arc<dyn Bus> = if duplicate {
                    Arc::new(Doubling(bus))
                } else {
                    bus
                };
                let compute = Compute::new(
                    &config.project,
                    &ComputeEndpoint {
                        url: config.compute_endpoint.clone(),
                    },
                    ComputePolicy::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
                let kube = Kube::new(
                    &KubeSettings::Direct {
                        url: kube_url,
                        token: Some(kube_token),
                        token_file: None,
                        ca_file: None,
                        ca_pem: kube_ca,
                    },
                    KubePolicy::default(),
                )
                .await
                .map_err(|e| e.to_string())?;
                Ok::<ChainDeps, String>(ChainDeps::new(
                    Deps::new(config, bus),
                    compute,
                    kube,
                    chain,
                ))
            }
        };
        let deps_for = |service: &str| deps_with(&src, service);
        let mut servers = Vec::new();
        let d = deps_for("instance-events").await?;
        servers.push((
            "instance-events".to_string(),
            FnServer::start_with_deps(d.base.clone(), instance_events::handler(d.base)).await,
        ));
        let d = deps_for("node-events").await?;
        let locator: Arc<dyn nodewire::locate::Locator> = Arc::new(ClusterLocator {
            kube: Some(d.kube.clone()),
            compute: Some(d.compute.clone()),
        });
        // Metadata mode: node-events decides the kubelets' bootstrap CSRs, as in production.
        let csrs = (opts.join_mode == JoinMode::Metadata).then(|| d.kube.clone());
        servers.push((
            "node-events".to_string(),
            FnServer::start_with_deps(d.base.clone(), node_events::handler(d.base, locator, csrs))
                .await,
        ));
        for step in Step::ALL {
            let d = deps_for(step.as_str()).await?;
            let server = FnServer::start_with_deps(d.base.clone(), steps::handler(step, d)).await;
            servers.push((step.as_str().to_string(), server));
        }
        // The sweep is called directly, as Cloud Scheduler's HTTP target calls it.
        let d = deps_for("drift-sweep").await?;
        let sweep_server = FnServer::start_with_deps(d.base.clone(), drift_sweep::handler(d)).await;
        // The join service verifies identity tokens as in production, against the metadata
        // server's test key (here only: the sandbox and the tests).
        let (join_listener, join_url, metadata) = join;
        let mut join_env = src.clone();
        join_env.insert("NODEWIRE_PUSH_AUTH", "oidc");
        let _ = join_url;
        join_env.insert("NODEWIRE_PUSH_AUDIENCES", JOIN_AUDIENCE);
        let node_sa = crate::compute::node_service_account(&opts.project);
        join_env.insert("NODEWIRE_PUSH_INVOKERS", &node_sa);
        let jwks = metadata.jwks_url();
        join_env.insert("NODEWIRE_OIDC_JWKS_URL", &jwks);
        let d = deps_with(&join_env, "join").await?;
        let app = nodewire::handlers::join::router(d.clone()).map_err(|e| e.to_string())?;
        let join_server = FnServer::start_router(join_listener, d.base.clone(), app);

        Ok((servers, sweep_server, join_server))
    }

    /// Phase 5: push subscriptions on the emulator (ordering, retry and dead-letter policies
    /// as Terraform sets them), or in-process pushers.
    async fn wire_push(
        opts: &StackOptions,
        emu: Option<&Emulator>,
        in_process: Option<&InProcessBus>,
        servers: &[(String, FnServer)],
    ) -> Result<(Vec<String>, Vec<tokio::task::JoinHandle<()>>), String> {
        let p = opts.project.clone();
        let mut subscriptions = Vec::new();
        let mut pushers = Vec::new();
        if let Some(emu) = emu {
            // Observers first, then the push subscriptions.
            for (sub, topic) in [
                ("dead-letter-observer", "nodewire-dead-letter"),
                ("node-wired-observer", "nodewire-node-wired"),
                ("undeliverable-observer", "nodewire-undeliverable"),
            ] {
                emu.create_subscription(sub, topic, json!({"ackDeadlineSeconds": 30}))
                    .await
                    .map_err(|e| e.to_string())?;
            }
            for (name, server) in servers {
                let sub = format!("{name}-push");
                emu.create_subscription(
                    &sub,
                    &source_topic(name),
                    json!({
                        "pushConfig": {"pushEndpoint": server.endpoint()},
                        "ackDeadlineSeconds": opts.request_timeout.as_secs() + 20,
                        "enableMessageOrdering": true,
                        "retryPolicy": {
                            "minimumBackoff": format!("{}s", opts.retry_backoff.0.as_secs()),
                            "maximumBackoff": format!("{}s", opts.retry_backoff.1.as_secs()),
                        },
                        "deadLetterPolicy": {"deadLetterTopic": format!("projects/{p}/topics/nodewire-undeliverable"), "maxDeliveryAttempts": 30},
                    }),
                )
                .await
                .map_err(|e| e.to_string())?;
                subscriptions.push(sub);
            }
        } else if let Some(bus) = in_process {
            for (name, server) in servers {
                let topic = format!("projects/{p}/topics/{}", source_topic(name));
                pushers.push(spawn_pusher(
                    bus,
                    &topic,
                    format!("projects/{p}/subscriptions/{name}-push"),
                    server.endpoint(),
                    opts.retry_backoff,
                ));
            }
        }
        Ok((subscriptions, pushers))
    }

    /// Phase 6: faults on every method nodewire calls (not on the user's VM inserts/deletes).
    fn inject_faults(opts: &StackOptions, compute: &ComputeSim, k8s: &K8sSim) {
        if opts.faults > 0.0 {
            compute
                .chaos()
                .set_default_faults(FaultSpec::flaky(opts.faults));
            k8s.chaos()
                .set_default_faults(FaultSpec::flaky(opts.faults));
            // VM creations and deletions stand for a user's; only nodewire's calls fail.
            compute
                .chaos()
                .set_faults("instances.insert", FaultSpec::default());
            compute
                .chaos()
                .set_faults("instances.delete", FaultSpec::default());
        }
    }

    /// The environment a function (or the CLI) needs to talk to this stack.
    /// Every function's answers so far, by HTTP status (`join` and `drift-sweep` included).
    pub fn answers(&self) -> BTreeMap<String, BTreeMap<u16, usize>> {
        let mut out: BTreeMap<String, BTreeMap<u16, usize>> = self
            .servers
            .iter()
            .map(|(name, s)| (name.clone(), s.answers()))
            .collect();
        out.insert("join".into(), self.join_server.answers());
        out.insert("drift-sweep".into(), self.sweep_server.answers());
        out
    }

    pub fn env(&self) -> &BTreeMap<String, String> {
        &self.env
    }

    /// Runs the drift sweep as Cloud Scheduler would (HTTP POST) and returns its report.
    ///
    /// # Errors
    /// A message when the sweep does not answer 200 with a report.
    pub async fn sweep(&self, dry_run: bool) -> Result<nodewire::sweep::Report, String> {
        let resp = self
            .http
            .post(self.sweep_server.endpoint())
            .header("x-cloudscheduler", "true")
            .header("x-cloudscheduler-jobname", "nodewire-sweep")
            .json(&json!({"dryRun": dry_run}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(format!(
                "the sweep answered HTTP {status}: {}",
                resp.text().await.unwrap_or_default()
            ));
        }
        resp.json().await.map_err(|e| e.to_string())
    }

    /// Creates a VM through `instances.insert`, as a user or an instance group would.
    ///
    /// # Errors
    /// A message when the simulator keeps refusing.
    pub async fn insert_vm(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        labels: &[(&str, &str)],
        can_ip_forward: bool,
    ) -> Result<(), String> {
        self.insert_vm_asking(project, zone, name, labels, can_ip_forward, None)
            .await
    }

    /// [`Stack::insert_vm`], nic0 asking for an alias range of the pod range at creation
    /// (`Some("/24")`: by size, as an instance template may).
    ///
    /// # Errors
    /// A message when the simulator keeps refusing.
    pub async fn insert_vm_asking(
        &self,
        project: &str,
        zone: &str,
        name: &str,
        labels: &[(&str, &str)],
        can_ip_forward: bool,
        pod_alias: Option<&str>,
    ) -> Result<(), String> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut nic = json!({"subnetwork": format!("projects/{project}/regions/{}/subnetworks/k8s-nodes", self.opts.region)});
        if let Some(a) = pod_alias {
            nic["aliasIpRanges"] = json!([{"ipCidrRange": a, "subnetworkRangeName": "pods"}]);
        }
        let body = json!({
            "name": name,
            "machineType": format!("zones/{zone}/machineTypes/n2-standard-4"),
            "canIpForward": can_ip_forward,
            "labels": labels,
            "networkInterfaces": [nic],
            "metadata": {"items": [{"key": "startup-script", "value": "#!/bin/sh\n/opt/nodewire/join.sh"}]},
            "serviceAccounts": [{"email": crate::compute::node_service_account(project), "scopes": ["https://www.googleapis.com/auth/userinfo.email"]}],
        });
        self.compute_call(
            reqwest::Method::POST,
            &format!("projects/{project}/zones/{zone}/instances"),
            Some(body),
        )
        .await
    }

    /// Deletes a VM through `instances.delete`.
    ///
    /// # Errors
    /// A message when the simulator keeps refusing.
    pub async fn delete_vm(&self, zone: &str, name: &str) -> Result<(), String> {
        let p = self.opts.project.clone();
        self.compute_call(
            reqwest::Method::DELETE,
            &format!("projects/{p}/zones/{zone}/instances/{name}"),
            None,
        )
        .await
    }

    /// `instances.ACTION` on a VM: `stop`, `start`, `suspend` or `resume`.
    ///
    /// # Errors
    /// A message when the simulator keeps refusing.
    pub async fn vm_action(&self, zone: &str, name: &str, action: &str) -> Result<(), String> {
        let p = self.opts.project.clone();
        self.compute_call(
            reqwest::Method::POST,
            &format!("projects/{p}/zones/{zone}/instances/{name}/{action}"),
            None,
        )
        .await
    }

    /// Sends a Compute request, retrying injected faults as gcloud would.
    async fn compute_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(), String> {
        for _ in 0..50 {
            let mut req = self.http.request(
                method.clone(),
                format!("{}/compute/v1/{path}", self.compute.endpoint()),
            );
            if let Some(b) = &body {
                req = req.json(b);
            }
            let resp = req.send().await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(());
            }
            if !(status == 429 || status == 403 || status >= 500) {
                return Err(format!(
                    "{method} {path}: HTTP {status}: {}",
                    resp.text().await.unwrap_or_default()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("{method} {path}: still failing"))
    }

    /// Deletes a Node as `kubectl delete node` would.
    ///
    /// # Errors
    /// A message when the simulator keeps refusing.
    pub async fn delete_node(&self, name: &str) -> Result<(), String> {
        for _ in 0..50 {
            let resp = self
                .http
                .delete(format!("{}/api/v1/nodes/{name}", self.k8s.endpoint()))
                // As a person with kubectl would: the cluster admin.
                .bearer_auth(self.k8s.admin_token())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if resp.status().is_success() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("deleting node {name} kept failing"))
    }

    /// A merge patch of a Node as the cluster admin (`kubectl patch node --type merge`), once.
    ///
    /// # Errors
    /// The status and body when the simulator refuses it.
    pub async fn admin_patch_node(&self, name: &str, patch: &Value) -> Result<(), String> {
        let resp = self
            .http
            .patch(format!("{}/api/v1/nodes/{name}", self.k8s.endpoint()))
            .bearer_auth(self.k8s.admin_token())
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        Err(format!(
            "{status}: {}",
            resp.text().await.unwrap_or_default()
        ))
    }

    /// `Ok(podCIDR)` when the VM is a wired node (read straight from the simulators' state);
    /// otherwise what is still missing.
    pub fn wired(&self, zone: &str, name: &str) -> Result<String, String> {
        let p = &self.opts.project;
        let vm = self.compute.instance_json(p, zone, name).ok_or("no VM")?;
        let node = self.k8s.object("nodes", "", name).ok_or("no Node")?;
        let pod = node
            .pointer("/spec/podCIDR")
            .and_then(Value::as_str)
            .ok_or("no podCIDR")?
            .to_string();
        let pod_cidr: Cidr = pod
            .parse()
            .map_err(|_| format!("podCIDR {pod} is not a CIDR"))?;
        let range_name = if self.opts.pods_range.contains(&pod_cidr) {
            "pods"
        } else {
            self.opts
                .extra_pod_ranges
                .iter()
                .find(|(_, c)| c.contains(&pod_cidr))
                .map(|(n, _)| n.as_str())
                .ok_or_else(|| format!("podCIDR {pod} outside the pod ranges"))?
        };
        let aliases = vm
            .pointer("/networkInterfaces/0/aliasIpRanges")
            .cloned()
            .unwrap_or(json!([]));
        if aliases != json!([{"ipCidrRange": pod, "subnetworkRangeName": range_name}]) {
            return Err(format!("aliases {aliases} != [{pod} of {range_name}]"));
        }
        if !vm["tags"]["items"]
            .as_array()
            .is_some_and(|t| t.iter().any(|x| *x == self.opts.node_tag))
        {
            return Err("tag missing".into());
        }
        if node.pointer("/spec/providerID").and_then(Value::as_str)
            != Some(format!("gce://{p}/{zone}/{name}").as_str())
        {
            return Err(format!("providerID {:?}", node.pointer("/spec/providerID")));
        }
        if node
            .pointer("/spec/taints")
            .and_then(Value::as_array)
            .is_some_and(|t| t.iter().any(|x| x["key"] == UNWIRED_TAINT))
        {
            return Err("taint left".into());
        }
        // Issue 21: the Node records the VM instance it was paired with.
        let recorded = node
            .pointer("/metadata/annotations/nodewire.io~1instance-id")
            .and_then(Value::as_str);
        if recorded.is_none() || recorded != vm["id"].as_str() {
            return Err(format!(
                "the Node records instance {recorded:?}, the VM is {}",
                vm["id"]
            ));
        }
        if !self.tokens_of(name).is_empty() {
            return Err("token left".into());
        }
        if vm["metadata"]["items"].as_array().is_some_and(|m| {
            m.iter().any(|i| {
                i["key"] == JOIN_METADATA_KEY
                    || i["key"] == nodewire::join::KUBELET_RESTART_METADATA_KEY
            })
        }) {
            return Err("join metadata left".into());
        }
        // Pull mode: `finalize` marks the VM joined after lifting the taint (the lost-Node heal
        // relies on the mark); the planner counts it as part of wired.
        if self.opts.join_mode == JoinMode::Pull
            && !vm["metadata"]["items"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|i| i["key"] == nodewire::join::JOINED_METADATA_KEY)
            })
        {
            return Err("the nodewire-joined mark is missing".into());
        }
        Ok(pod)
    }

    /// Bootstrap-token Secrets minted for a VM.
    pub fn tokens_of(&self, name: &str) -> Vec<Value> {
        let ptr = format!(
            "/metadata/labels/{}",
            TOKEN_INSTANCE_LABEL.replace('/', "~1")
        );
        self.k8s
            .objects("secrets")
            .into_iter()
            .filter(|s| s.pointer(&ptr).and_then(Value::as_str) == Some(name))
            .collect()
    }

    /// Polls `check` until it returns true or `timeout` passes.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        check(self)
    }

    /// Stops pushing and serving.
    pub async fn stop(self) {
        if let Some(emu) = &self.emu {
            for s in &self.subscriptions {
                let _ = emu.delete_subscription(s).await;
            }
        }
        for p in &self.pushers {
            p.abort();
        }
        for (_, s) in self.servers {
            s.stop().await;
        }
        self.sweep_server.stop().await;
        self.join_server.stop().await;
        for k in ["NODEWIRE_KUBE_TOKEN_FILE", "NODEWIRE_KUBE_CA_FILE"] {
            if let Some(f) = self.env.get(k) {
                let _ = std::fs::remove_file(f);
            }
        }
    }
}

/// Delivers the in-process bus's messages of one topic to a function as Pub/Sub push would:
/// the wrapped envelope, redelivery with backoff on any non-2xx answer (bounded), one message
/// at a time per ordering key (other keys are not held up).
/// The in-process push delivery, as Pub/Sub documents it rather than as the emulator does
/// it (issue 22, `nodewire-bench push-probe`): no cap on deliveries in flight (ordered per
/// ordering key), and a nacked delivery retried after the subscription's retry policy, an
/// exponential backoff from `backoff.0` to `backoff.1`, up to 30 attempts (the stack's
/// dead-letter policy).
fn spawn_pusher(
    bus: &InProcessBus,
    topic: &str,
    subscription: String,
    endpoint: String,
    retry: (Duration, Duration),
) -> tokio::task::JoinHandle<()> {
    let mut rx = bus.subscribe(topic);
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let locks: Arc<tokio::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
            Arc::default();
        while let Some(d) = rx.recv().await {
            let key = d
                .message
                .ordering_key
                .clone()
                .unwrap_or_else(|| d.message_id.clone());
            let lock = locks.lock().await.entry(key).or_default().clone();
            let (http, subscription, endpoint) =
                (http.clone(), subscription.clone(), endpoint.clone());
            tokio::spawn(async move {
                // Tokio's mutex is fair: per key, deliveries queue in arrival order.
                let _guard = lock.lock_owned().await;
                let publish_time = time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default();
                let body = json!({
                    "subscription": subscription,
                    "message": {
                        "data": base64::engine::general_purpose::STANDARD.encode(&d.message.data),
                        "attributes": d.message.attributes,
                        "messageId": d.message_id,
                        "publishTime": publish_time,
                    }
                });
                let mut backoff = retry.0;
                for _ in 0..30 {
                    if let Ok(r) = http.post(&endpoint).json(&body).send().await
                        && r.status().is_success()
                    {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(retry.1);
                }
                tracing::warn!(%subscription, message_id = %d.message_id, "in-process push: gave up after 30 attempts");
            });
        }
    })
}
