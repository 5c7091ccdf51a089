//! ACT/OBSERVE: the Kubernetes API through `kube` + `k8s-openapi`.
//!
//! Writes are conflict-safe: each is computed from a fresh read and sent as a merge patch that
//! carries the `resourceVersion` it was computed from, so a concurrent writer makes it fail
//! with 409 `Conflict` instead of being overwritten; a conflict re-reads and recomputes (a
//! bounded number of times). 429, 5xx and connection errors are retried with backoff; 422 is a
//! typed permanent error with the API's message. kube's own retry layer is off: one policy,
//! ours, applies.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Taint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use rand::Rng as _;
use serde_json::json;
use sha2::Digest as _;

use crate::names::{InstanceRef, echo};

pub use crate::act::compute::WriteOutcome;

/// The taint that keeps Pods off a node until it is wired.
pub const UNWIRED_TAINT: &str = "nodewire.io/unwired";
/// Label on nodewire's bootstrap-token Secrets naming the VM they were minted for.
pub const TOKEN_INSTANCE_LABEL: &str = "nodewire.io/instance";
/// Label on nodewire's bootstrap-token Secrets naming that VM's zone.
pub const TOKEN_ZONE_LABEL: &str = "nodewire.io/zone";
/// Field manager of every write.
pub const FIELD_MANAGER: &str = "nodewire";

/// Retry settings of the Kubernetes client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubePolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Re-reads after a 409 Conflict, at most.
    pub max_conflicts: u32,
    pub request_timeout: Duration,
}

impl Default for KubePolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            max_elapsed: Duration::from_secs(15),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_conflicts: 8,
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// How to reach the API server.
#[derive(Clone, PartialEq, Eq)]
pub enum KubeConnection {
    /// A kubeconfig file (its current context).
    Kubeconfig(std::path::PathBuf),
    /// URL, bearer token and CA, as a pod's service account has them.
    Direct {
        url: String,
        token: Option<String>,
        /// PEM.
        ca_pem: Option<String>,
    },
}

impl std::fmt::Debug for KubeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeConnection::Kubeconfig(p) => f.debug_tuple("Kubeconfig").field(p).finish(),
            KubeConnection::Direct { url, token, .. } => f
                .debug_struct("Direct")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "[redacted]"))
                .finish_non_exhaustive(),
        }
    }
}

/// True for `http://` URLs whose host is a loopback address (the only place plain HTTP is
/// allowed).
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host_port = rest.split('/').next().unwrap_or("");
    let host = if let Some(h) = host_port.strip_prefix('[') {
        h.split(']').next().unwrap_or("")
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// What went wrong talking to the API server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KubeError {
    /// 422: the API refused the change as invalid (immutable field, bad format).
    #[error("{call}: invalid: {message}")]
    Invalid { call: &'static str, message: String },
    /// The Node's providerID is set to something else; it can only be fixed by deleting the Node.
    #[error(
        "node {node} has spec.providerID {current:?}, not {wanted:?}; providerID cannot be changed once set \
         — delete the Node and let the kubelet register again"
    )]
    ProviderIdConflict {
        node: String,
        current: String,
        wanted: String,
    },
    /// The object does not exist.
    #[error("{call}: {message}")]
    NotFound { call: &'static str, message: String },
    /// Refused for another reason resending cannot fix (400, 401, 403, …).
    #[error("{call}: refused with HTTP {code} ({reason}): {message}")]
    Refused {
        call: &'static str,
        code: u16,
        reason: String,
        message: String,
    },
    /// Every attempt failed transiently (429, 5xx, timeouts, connection errors, conflicts).
    #[error("{call}: still failing after {attempts} attempt(s): {message}")]
    Transient {
        call: &'static str,
        attempts: u32,
        message: String,
    },
    /// `kube-public/cluster-info` is missing or unusable.
    #[error("cluster-info: {0}")]
    ClusterInfo(String),
    /// The client could not be built.
    #[error("building the Kubernetes client failed: {0}")]
    Setup(String),
}

impl crate::error::Classify for KubeError {
    fn is_retryable(&self) -> bool {
        matches!(self, KubeError::Transient { .. })
    }
}

/// How one failed attempt is handled; the only place that interprets kube's errors.
#[derive(Debug)]
enum Class {
    Retry(String),
    Conflict,
    Fail(KubeError),
}

fn io_kind(e: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur = Some(e);
    while let Some(x) = cur {
        if let Some(io) = x.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = x.source();
    }
    None
}

fn classify(call: &'static str, e: &kube::Error) -> Class {
    match e {
        kube::Error::Api(s) => {
            let message = echo_long(&s.message);
            match s.code {
                409 if s.reason == "Conflict" => Class::Conflict,
                0 | 429 | 500..=599 => {
                    Class::Retry(format!("HTTP {} {}: {message}", s.code, s.reason))
                }
                404 => Class::Fail(KubeError::NotFound { call, message }),
                422 => Class::Fail(KubeError::Invalid { call, message }),
                code => Class::Fail(KubeError::Refused {
                    call,
                    code,
                    reason: s.reason.clone(),
                    message,
                }),
            }
        }
        kube::Error::Service(b) => {
            if io_kind(b.as_ref()) == Some(std::io::ErrorKind::InvalidData) {
                Class::Fail(KubeError::Refused {
                    call,
                    code: 0,
                    reason: "tls".into(),
                    message: b.to_string(),
                })
            } else {
                Class::Retry(b.to_string())
            }
        }
        kube::Error::HyperError(h) => Class::Retry(h.to_string()),
        other => Class::Fail(KubeError::Refused {
            call,
            code: 0,
            reason: "client".into(),
            message: echo_long(&other.to_string()),
        }),
    }
}

fn echo_long(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        echo(s)
    }
}

/// The facts nodewire reads from a Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub provider_id: Option<String>,
    pub pod_cidr: Option<String>,
    /// `(key, effect)` of each taint.
    pub taints: Vec<(String, String)>,
    pub resource_version: Option<String>,
}

impl NodeView {
    fn from_node(n: &Node) -> Self {
        let spec = n.spec.clone().unwrap_or_default();
        Self {
            name: n.metadata.name.clone().unwrap_or_default(),
            provider_id: spec.provider_id.filter(|s| !s.is_empty()),
            pod_cidr: spec.pod_cidr.filter(|s| !s.is_empty()),
            taints: spec
                .taints
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.key, t.effect))
                .collect(),
            resource_version: n.metadata.resource_version.clone(),
        }
    }

    /// True when the node carries the taint `key` (any effect).
    pub fn has_taint(&self, key: &str) -> bool {
        self.taints.iter().any(|(k, _)| k == key)
    }
}

/// A bootstrap token's secret part. Never printed: `Debug` is redacted and there is no
/// `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret([redacted])")
    }
}

/// A freshly minted bootstrap token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    /// The public part (`[a-z0-9]{6}`), also the Secret's name suffix.
    pub id: String,
    secret: TokenSecret,
    /// RFC 3339.
    pub expiration: String,
}

impl BootstrapToken {
    /// `id.secret`, for the JoinConfiguration. The caller must not log it.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret.0)
    }
}

/// A bootstrap-token Secret as listed (no secret part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: String,
    pub instance: Option<String>,
    pub zone: Option<String>,
    pub expiration: Option<String>,
    pub description: Option<String>,
}

/// What a joining node needs to trust the API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The API server endpoint as published (`https://HOST:PORT`).
    pub server: String,
    /// `sha256:<hex>` of the CA's SubjectPublicKeyInfo (kubeadm's discovery-token-ca-cert-hash).
    pub ca_pin: String,
}

const LOWER_ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

fn random_string(n: usize) -> String {
    // ThreadRng is a CSPRNG (ChaCha, seeded and reseeded from the operating system).
    let mut rng = rand::rng();
    (0..n)
        .map(|_| LOWER_ALNUM[rng.random_range(0..LOWER_ALNUM.len())] as char)
        .collect()
}

/// The Kubernetes client nodewire uses. Cheap to clone.
#[derive(Clone)]
pub struct Kube {
    client: kube::Client,
    nodes: Api<Node>,
    secrets: Api<Secret>,
    policy: KubePolicy,
}

impl std::fmt::Debug for Kube {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kube").finish_non_exhaustive()
    }
}

impl Kube {
    /// Builds the client. Plain HTTP is accepted only for a loopback address.
    ///
    /// # Errors
    /// [`KubeError::Setup`] when the connection settings are unusable.
    pub async fn new(conn: &KubeConnection, policy: KubePolicy) -> Result<Self, KubeError> {
        let mut cfg = match conn {
            KubeConnection::Kubeconfig(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .map_err(|e| KubeError::Setup(format!("{}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| KubeError::Setup(e.to_string()))?
            }
            KubeConnection::Direct { url, token, ca_pem } => {
                if url.starts_with("http://") && !is_loopback_http(url) {
                    return Err(KubeError::Setup(format!(
                        "{url}: plain HTTP is allowed only for a loopback address"
                    )));
                }
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| KubeError::Setup(format!("{url}: {e}")))?;
                let mut cfg = kube::Config::new(uri);
                if let Some(t) = token {
                    cfg.auth_info = kube::config::AuthInfo {
                        token: Some(t.clone().into()),
                        ..Default::default()
                    };
                }
                if let Some(pem) = ca_pem {
                    let der: Vec<Vec<u8>> = ::pem::parse_many(pem)
                        .map_err(|e| KubeError::Setup(format!("CA: {e}")))?
                        .into_iter()
                        .filter(|p| p.tag() == "CERTIFICATE")
                        .map(|p| p.into_contents())
                        .collect();
                    if der.is_empty() {
                        return Err(KubeError::Setup("CA: no CERTIFICATE block".into()));
                    }
                    cfg.root_cert = Some(der);
                }
                cfg
            }
        };
        cfg.default_retry = false;
        cfg.read_timeout = Some(policy.request_timeout);
        cfg.reset_reader_on_write = true;
        cfg.write_timeout = Some(policy.request_timeout);
        cfg.connect_timeout = Some(policy.request_timeout);
        let client = kube::Client::try_from(cfg).map_err(|e| KubeError::Setup(e.to_string()))?;
        Ok(Self {
            nodes: Api::all(client.clone()),
            secrets: Api::namespaced(client.clone(), "kube-system"),
            client,
            policy,
        })
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.policy.max_backoff);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
    }

    /// Runs `f` with the transient-retry policy; a 409 Conflict is returned to the caller
    /// (it must re-read).
    async fn retrying<T, F, Fut>(&self, call: &'static str, mut f: F) -> Result<T, Class>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) => match classify(call, &e) {
                    Class::Retry(message) => {
                        let backoff = self.backoff(attempt);
                        if attempt >= self.policy.max_attempts
                            || started.elapsed() + backoff > self.policy.max_elapsed
                        {
                            return Err(Class::Fail(KubeError::Transient {
                                call,
                                attempts: attempt,
                                message,
                            }));
                        }
                        tracing::debug!(call, attempt, %message, "transient Kubernetes error; retrying");
                        tokio::time::sleep(backoff).await;
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Reads a Node; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn get_node(&self, name: &str) -> Result<Option<NodeView>, KubeError> {
        Ok(self
            .get_node_raw(name)
            .await?
            .as_ref()
            .map(NodeView::from_node))
    }

    async fn get_node_raw(&self, name: &str) -> Result<Option<Node>, KubeError> {
        const CALL: &str = "nodes.get";
        match self.retrying(CALL, || self.nodes.get(name)).await {
            Ok(n) => Ok(Some(n)),
            Err(Class::Fail(KubeError::NotFound { .. })) => Ok(None),
            Err(c) => Err(fail(CALL, c)),
        }
    }

    /// Lists Nodes page by page (`limit=500`, following `continue`).
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn list_nodes(
        &self,
        label_selector: Option<&str>,
    ) -> Result<Vec<NodeView>, KubeError> {
        Ok(self.list_nodes_paged(label_selector).await?.0)
    }

    /// Like [`Kube::list_nodes`], also returning how many pages were read.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn list_nodes_paged(
        &self,
        label_selector: Option<&str>,
    ) -> Result<(Vec<NodeView>, usize), KubeError> {
        const CALL: &str = "nodes.list";
        let mut pages = 0;
        let mut lp = ListParams::default().limit(500);
        if let Some(s) = label_selector {
            lp = lp.labels(s);
        }
        let mut out = Vec::new();
        loop {
            let page = self
                .retrying(CALL, || self.nodes.list(&lp))
                .await
                .map_err(|c| fail(CALL, c))?;
            pages += 1;
            out.extend(page.items.iter().map(NodeView::from_node));
            match page.metadata.continue_.as_deref() {
                Some(t) if !t.is_empty() => lp = lp.continue_token(t),
                _ => break,
            }
        }
        Ok((out, pages))
    }

    /// Re-read, compute a merge patch from the Node (None = nothing to do), send it with the
    /// read `resourceVersion`; on 409 Conflict start over.
    async fn patch_node(
        &self,
        call: &'static str,
        name: &str,
        compute: impl Fn(&Node) -> Result<Option<serde_json::Value>, KubeError>,
    ) -> Result<WriteOutcome, KubeError> {
        for _ in 0..=self.policy.max_conflicts {
            let Some(node) = self.get_node_raw(name).await? else {
                return Err(KubeError::NotFound {
                    call,
                    message: format!("nodes \"{name}\" not found"),
                });
            };
            let Some(mut patch) = compute(&node)? else {
                return Ok(WriteOutcome::Unchanged);
            };
            patch["metadata"]["resourceVersion"] = json!(node.metadata.resource_version);
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PatchParams::default()
            };
            let patch = Patch::Merge(&patch);
            match self
                .retrying(call, || self.nodes.patch(name, &pp, &patch))
                .await
            {
                Ok(_) => return Ok(WriteOutcome::Changed),
                Err(Class::Conflict) => {
                    tracing::debug!(call, node = name, "resourceVersion conflict; re-reading");
                }
                Err(c) => return Err(fail(call, c)),
            }
        }
        Err(KubeError::Transient {
            call,
            attempts: self.policy.max_conflicts + 1,
            message: "the Node kept changing (409 Conflict on every attempt)".into(),
        })
    }

    /// Sets `spec.providerID` when it is empty.
    ///
    /// # Idempotency
    /// Unchanged when it already has this value.
    ///
    /// # Errors
    /// [`KubeError::ProviderIdConflict`] (permanent) when it holds another value.
    pub async fn set_provider_id(
        &self,
        name: &str,
        provider_id: &str,
    ) -> Result<WriteOutcome, KubeError> {
        self.patch_node("nodes.patch(providerID)", name, |n| {
            let current = n
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.clone())
                .unwrap_or_default();
            if current == provider_id {
                Ok(None)
            } else if current.is_empty() {
                Ok(Some(json!({"spec": {"providerID": provider_id}})))
            } else {
                Err(KubeError::ProviderIdConflict {
                    node: name.to_string(),
                    current,
                    wanted: provider_id.to_string(),
                })
            }
        })
        .await
    }

    /// Adds a taint, keeping the others.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn add_taint(
        &self,
        name: &str,
        key: &str,
        value: Option<&str>,
        effect: &str,
    ) -> Result<WriteOutcome, KubeError> {
        self.patch_node("nodes.patch(taints)", name, |n| {
            let mut taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if taints.iter().any(|t| t.key == key && t.effect == effect) {
                return Ok(None);
            }
            taints.push(Taint {
                key: key.to_string(),
                value: value.map(str::to_string),
                effect: effect.to_string(),
                time_added: None,
            });
            Ok(Some(json!({"spec": {"taints": taints}})))
        })
        .await
    }

    /// Removes every taint with `key`, keeping the others.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn remove_taint(&self, name: &str, key: &str) -> Result<WriteOutcome, KubeError> {
        self.patch_node("nodes.patch(taints)", name, |n| {
            let taints = n
                .spec
                .as_ref()
                .and_then(|s| s.taints.clone())
                .unwrap_or_default();
            if !taints.iter().any(|t| t.key == key) {
                return Ok(None);
            }
            let kept: Vec<Taint> = taints.into_iter().filter(|t| t.key != key).collect();
            Ok(Some(json!({"spec": {"taints": kept}})))
        })
        .await
    }

    /// Deletes a Node; `Unchanged` when it was already gone.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn delete_node(&self, name: &str) -> Result<WriteOutcome, KubeError> {
        const CALL: &str = "nodes.delete";
        let dp = DeleteParams::default();
        match self.retrying(CALL, || self.nodes.delete(name, &dp)).await {
            Ok(_) => Ok(WriteOutcome::Changed),
            Err(Class::Fail(KubeError::NotFound { .. })) => Ok(WriteOutcome::Unchanged),
            Err(c) => Err(fail(CALL, c)),
        }
    }

    /// Mints a bootstrap token for one VM: a `bootstrap-token-<id>` Secret in `kube-system`
    /// with a fresh id and secret from a CSPRNG, an expiration `ttl` from now, the
    /// authentication and signing usages, `auth-extra-groups`, a description naming the
    /// instance id, and the label [`TOKEN_INSTANCE_LABEL`].
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn create_bootstrap_token(
        &self,
        instance: &InstanceRef,
        instance_id: Option<&str>,
        ttl: Duration,
        extra_groups: &str,
    ) -> Result<BootstrapToken, KubeError> {
        const CALL: &str = "secrets.create";
        let expiration = (time::OffsetDateTime::now_utc() + ttl)
            .replace_nanosecond(0)
            .map_err(|e| KubeError::Setup(e.to_string()))?
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| KubeError::Setup(e.to_string()))?;
        for _ in 0..5 {
            let id = random_string(6);
            let secret = random_string(16);
            let data = BTreeMap::from([
                ("token-id".to_string(), id.clone()),
                ("token-secret".to_string(), secret.clone()),
                ("expiration".to_string(), expiration.clone()),
                (
                    "usage-bootstrap-authentication".to_string(),
                    "true".to_string(),
                ),
                ("usage-bootstrap-signing".to_string(), "true".to_string()),
                ("auth-extra-groups".to_string(), extra_groups.to_string()),
                (
                    "description".to_string(),
                    format!(
                        "nodewire join token for {} (instance {})",
                        instance.name(),
                        instance_id.unwrap_or("unknown")
                    ),
                ),
            ]);
            let obj = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("bootstrap-token-{id}")),
                    namespace: Some("kube-system".into()),
                    labels: Some(BTreeMap::from([
                        (
                            TOKEN_INSTANCE_LABEL.to_string(),
                            instance.name().to_string(),
                        ),
                        (TOKEN_ZONE_LABEL.to_string(), instance.zone().to_string()),
                        (
                            "app.kubernetes.io/managed-by".to_string(),
                            FIELD_MANAGER.to_string(),
                        ),
                    ])),
                    ..Default::default()
                },
                type_: Some("bootstrap.kubernetes.io/token".into()),
                string_data: Some(data),
                ..Default::default()
            };
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match self.retrying(CALL, || self.secrets.create(&pp, &obj)).await {
                Ok(_) => {
                    return Ok(BootstrapToken {
                        id,
                        secret: TokenSecret(secret),
                        expiration,
                    });
                }
                Err(Class::Fail(KubeError::Refused { code: 409, .. })) => continue, // id collision
                Err(c) => return Err(fail(CALL, c)),
            }
        }
        Err(KubeError::Transient {
            call: CALL,
            attempts: 5,
            message: "token id collided five times".into(),
        })
    }

    /// nodewire's bootstrap tokens, optionally only those of one VM.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn list_bootstrap_tokens(
        &self,
        instance_name: Option<&str>,
    ) -> Result<Vec<TokenInfo>, KubeError> {
        Ok(self.list_bootstrap_tokens_paged(instance_name).await?.0)
    }

    /// Like [`Kube::list_bootstrap_tokens`], also returning how many pages were read.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn list_bootstrap_tokens_paged(
        &self,
        instance_name: Option<&str>,
    ) -> Result<(Vec<TokenInfo>, usize), KubeError> {
        const CALL: &str = "secrets.list";
        let mut pages = 0;
        let selector = match instance_name {
            Some(n) => format!("{TOKEN_INSTANCE_LABEL}={n}"),
            None => TOKEN_INSTANCE_LABEL.to_string(),
        };
        let mut lp = ListParams::default().labels(&selector).limit(500);
        let mut out = Vec::new();
        loop {
            let page = self
                .retrying(CALL, || self.secrets.list(&lp))
                .await
                .map_err(|c| fail(CALL, c))?;
            pages += 1;
            for s in &page.items {
                if s.type_.as_deref() != Some("bootstrap.kubernetes.io/token") {
                    continue;
                }
                let get = |k: &str| {
                    s.data
                        .as_ref()
                        .and_then(|d| d.get(k))
                        .and_then(|b| String::from_utf8(b.0.clone()).ok())
                };
                let Some(id) = s
                    .metadata
                    .name
                    .as_deref()
                    .and_then(|n| n.strip_prefix("bootstrap-token-"))
                else {
                    continue;
                };
                out.push(TokenInfo {
                    id: id.to_string(),
                    instance: s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(TOKEN_INSTANCE_LABEL).cloned()),
                    zone: s
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(TOKEN_ZONE_LABEL).cloned()),
                    expiration: get("expiration"),
                    description: get("description"),
                });
            }
            match page.metadata.continue_.as_deref() {
                Some(t) if !t.is_empty() => lp = lp.continue_token(t),
                _ => break,
            }
        }
        Ok((out, pages))
    }

    /// Deletes a bootstrap token; `Unchanged` when it was already gone.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn delete_bootstrap_token(&self, id: &str) -> Result<WriteOutcome, KubeError> {
        const CALL: &str = "secrets.delete";
        let name = format!("bootstrap-token-{id}");
        let dp = DeleteParams::default();
        match self
            .retrying(CALL, || self.secrets.delete(&name, &dp))
            .await
        {
            Ok(_) => Ok(WriteOutcome::Changed),
            Err(Class::Fail(KubeError::NotFound { .. })) => Ok(WriteOutcome::Unchanged),
            Err(c) => Err(fail(CALL, c)),
        }
    }

    /// Records a core/v1 Event about a Node (in `default`, where Events about cluster-scoped
    /// objects live). `type_` is `Normal` or `Warning`.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn node_event(
        &self,
        node: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), KubeError> {
        use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        const CALL: &str = "events.create";
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let ev = Event {
            metadata: kube::api::ObjectMeta {
                generate_name: Some(format!("{node}.")),
                namespace: Some("default".into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.to_string()),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(echo_long(message)),
            type_: Some(type_.to_string()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.into()),
                host: None,
            }),
            reporting_component: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        let pp = PostParams::default();
        self.retrying(CALL, || events.create(&pp, &ev))
            .await
            .map(|_| ())
            .map_err(|c| fail(CALL, c))
    }

    /// Reads `kube-public/cluster-info` and computes the CA pin.
    ///
    /// # Errors
    /// [`KubeError::ClusterInfo`] when it is missing or malformed.
    pub async fn cluster_info(&self) -> Result<ClusterInfo, KubeError> {
        const CALL: &str = "configmaps.get";
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), "kube-public");
        let cm = match self.retrying(CALL, || cms.get("cluster-info")).await {
            Ok(cm) => cm,
            Err(Class::Fail(KubeError::NotFound { .. })) => {
                return Err(KubeError::ClusterInfo(
                    "kube-public/cluster-info does not exist".into(),
                ));
            }
            Err(c) => return Err(fail(CALL, c)),
        };
        let text = cm
            .data
            .as_ref()
            .and_then(|d| d.get("kubeconfig"))
            .ok_or_else(|| KubeError::ClusterInfo("no data.kubeconfig".into()))?;
        cluster_info_from_kubeconfig(text)
    }
}

fn fail(call: &'static str, c: Class) -> KubeError {
    match c {
        Class::Fail(e) => e,
        Class::Retry(message) => KubeError::Transient {
            call,
            attempts: 1,
            message,
        },
        Class::Conflict => KubeError::Transient {
            call,
            attempts: 1,
            message: "409 Conflict".into(),
        },
    }
}

/// Parses the kubeconfig published in `cluster-info` and computes the CA pin.
///
/// # Errors
/// [`KubeError::ClusterInfo`] when it has no cluster, server or usable CA.
pub fn cluster_info_from_kubeconfig(text: &str) -> Result<ClusterInfo, KubeError> {
    let kc = kube::config::Kubeconfig::from_yaml(text)
        .map_err(|e| KubeError::ClusterInfo(format!("data.kubeconfig: {e}")))?;
    let cluster = kc
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| KubeError::ClusterInfo("data.kubeconfig has no cluster".into()))?;
    let server = cluster
        .server
        .clone()
        .ok_or_else(|| KubeError::ClusterInfo("the cluster has no server".into()))?;
    let ca_b64 = cluster.certificate_authority_data.clone().ok_or_else(|| {
        KubeError::ClusterInfo("the cluster has no certificate-authority-data".into())
    })?;
    let pem = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .map_err(|e| KubeError::ClusterInfo(format!("certificate-authority-data: {e}")))?;
    let pem =
        String::from_utf8(pem).map_err(|_| KubeError::ClusterInfo("CA is not PEM text".into()))?;
    Ok(ClusterInfo {
        server,
        ca_pin: ca_pin(&pem).map_err(KubeError::ClusterInfo)?,
    })
}

/// kubeadm's `discovery-token-ca-cert-hash`: `sha256:` + hex SHA-256 of the first certificate's
/// DER-encoded SubjectPublicKeyInfo.
///
/// # Errors
/// A message when the PEM holds no parseable certificate.
pub fn ca_pin(pem_text: &str) -> Result<String, String> {
    let block = ::pem::parse_many(pem_text)
        .map_err(|e| format!("CA PEM: {e}"))?
        .into_iter()
        .find(|p| p.tag() == "CERTIFICATE")
        .ok_or("CA PEM has no CERTIFICATE block")?;
    let spki = spki_der(block.contents()).ok_or("the CA certificate is not valid DER")?;
    let digest = sha2::Sha256::digest(spki);
    Ok(format!(
        "sha256:{}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// One DER element: tag, the whole element, its content, and what follows it.
type Tlv<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

/// Splits the first DER element off `input`.
fn tlv(input: &[u8]) -> Option<Tlv<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    let whole = input.get(..end)?;
    Some((tag, whole, &whole[header..], &input[end..]))
}

/// The SubjectPublicKeyInfo element of an X.509 certificate (RFC 5280 §4.1):
/// `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber,
/// signature, issuer, validity, subject, subjectPublicKeyInfo, … }, … }`.
fn spki_der(cert: &[u8]) -> Option<&[u8]> {
    let (0x30, _, cert_body, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, _, tbs, _) = tlv(cert_body)? else {
        return None;
    };
    let mut rest = tbs;
    let (tag, _, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after; // explicit version
    }
    // serialNumber, signature, issuer, validity, subject
    for expected in [0x02u8, 0x30, 0x30, 0x30, 0x30] {
        let (tag, _, _, after) = tlv(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (0x30, spki, _, _) = tlv(rest)? else {
        return None;
    };
    Some(spki)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name);
        std::fs::read_to_string(p).expect("fixture")
    }

    #[test]
    fn ca_pin_matches_openssl_for_rsa_and_ec() {
        for (crt, pin) in [
            ("test-ca.crt", "test-ca.pin"),
            ("test-ca-ec.crt", "test-ca-ec.pin"),
        ] {
            let expected = format!("sha256:{}", fixture(pin).trim());
            assert_eq!(ca_pin(&fixture(crt)).expect("pin"), expected, "{crt}");
        }
        assert!(ca_pin("not pem").is_err());
        assert!(ca_pin("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err());
    }

    #[test]
    fn cluster_info_kubeconfig() {
        let ca = base64::engine::general_purpose::STANDARD.encode(fixture("test-ca.crt"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    server: https://10.128.0.2:6443\n    certificate-authority-data: {ca}\ncontexts: []\nusers: []\n"
        );
        let ci = cluster_info_from_kubeconfig(&text).expect("parses");
        assert_eq!(ci.server, "https://10.128.0.2:6443");
        assert_eq!(
            ci.ca_pin,
            format!("sha256:{}", fixture("test-ca.pin").trim())
        );
        assert!(
            cluster_info_from_kubeconfig("apiVersion: v1\nkind: Config\nclusters: []\n").is_err()
        );
    }

    #[test]
    fn loopback_detection() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1",
            "http://[::1]:443/x",
            "http://127.1.2.3",
        ] {
            assert!(is_loopback_http(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:6443",
            "https://127.0.0.1",
            "http://example.com",
            "http://127.0.0.1.evil.com",
        ] {
            assert!(!is_loopback_http(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_are_well_formed_and_redacted() {
        let id = random_string(6);
        assert!(id.len() == 6 && id.bytes().all(|b| LOWER_ALNUM.contains(&b)));
        let t = BootstrapToken {
            id: "abcdef".into(),
            secret: TokenSecret("0123456789abcdef".into()),
            expiration: "2030-01-01T00:00:00Z".into(),
        };
        assert_eq!(t.expose(), "abcdef.0123456789abcdef");
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}
