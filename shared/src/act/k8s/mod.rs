//! ACT/OBSERVE: the Kubernetes API through `kube` + `k8s-openapi`.
//!
//! Writes are conflict-safe: each is computed from a fresh read and sent as a merge patch that
//! carries the `resourceVersion` it was computed from, so a concurrent writer makes it fail
//! with 409 `Conflict` instead of being overwritten; a conflict re-reads and recomputes (a
//! bounded number of times). 429, 5xx and connection errors are retried with backoff; 422 is a
//! typed permanent error with the API's message. kube's own retry layer is off: one policy,
//! ours, applies.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret, Taint};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

mod cluster_info;
mod csr;
mod error;
mod sweep_state;
mod tokens;

pub use cluster_info::{ClusterInfo, ca_pin, cluster_info_from_kubeconfig};
pub use csr::{APPROVAL_REASON, CsrDecision, CsrRecord, KUBELET_CLIENT_SIGNER, PendingCsr};
pub use error::KubeError;
pub use sweep_state::{MAX_REMEMBERED, SWEEP_STATE, SweepState};
pub use tokens::{
    BootstrapToken, IdentityRecord, TOKEN_IDENTITY_DIGEST_ANNOTATION,
    TOKEN_IDENTITY_IAT_ANNOTATION, TokenInfo, TokenSecret,
};

use super::toolkit::{self, Backoff, Listed, api_message};
use crate::config::KubeSettings;
use crate::names::ProviderIdConflict;
use error::{Class, classify, fail};

pub use crate::act::toolkit::WriteOutcome;
/// Label on nodewire's bootstrap-token Secrets naming the VM they were minted for.
pub const TOKEN_INSTANCE_LABEL: &str = "nodewire.io/instance";
/// Label on nodewire's bootstrap-token Secrets naming the VM's numeric id (when known).
pub const TOKEN_INSTANCE_ID_LABEL: &str = "nodewire.io/instance-id";
/// Annotation on nodewire's bootstrap-token Secrets repeating their expiration, so that they
/// can be listed metadata-only (the expiration proper is in the Secret's data).
pub const TOKEN_EXPIRATION_ANNOTATION: &str = "nodewire.io/expiration";
/// Label on nodewire's bootstrap-token Secrets naming that VM's zone.
pub const TOKEN_ZONE_LABEL: &str = "nodewire.io/zone";
/// Field manager of every write.
pub const FIELD_MANAGER: &str = "nodewire";

/// Retry settings of the Kubernetes client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubePolicy {
    /// Transient-error retries of one call.
    pub retry: Backoff,
    /// Re-reads after a 409 Conflict, at most.
    pub max_conflicts: u32,
    pub request_timeout: Duration,
}

impl Default for KubePolicy {
    fn default() -> Self {
        Self {
            retry: Backoff {
                max_attempts: 6,
                max_elapsed: Duration::from_secs(15),
                base: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            max_conflicts: 8,
            request_timeout: Duration::from_secs(15),
        }
    }
}

/// A kubeconfig's current context may not skip TLS verification nor run a credential plugin
/// (`exec`, `auth-provider`: code the kubeconfig's author chose, run with nodewire's rights),
/// unless explicitly allowed.
fn kubeconfig_is_acceptable(
    kc: &kube::config::Kubeconfig,
    allow_insecure_tls: bool,
    allow_exec: bool,
) -> Result<(), String> {
    let current = kc.current_context.as_deref().unwrap_or_default();
    let Some(ctx) = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
    else {
        return Err(format!("current context {current:?} is not defined"));
    };
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref());
    if !allow_insecure_tls && cluster.is_some_and(|c| c.insecure_skip_tls_verify == Some(true)) {
        return Err(
            "the cluster sets insecure-skip-tls-verify (set NODEWIRE_KUBE_ALLOW_INSECURE=true \
             to accept that anyone on the path can impersonate the API server)"
                .into(),
        );
    }
    let user = ctx.user.as_deref().and_then(|u| {
        kc.auth_infos
            .iter()
            .find(|a| a.name == u)
            .and_then(|a| a.auth_info.as_ref())
    });
    if !allow_exec && user.is_some_and(|u| u.exec.is_some() || u.auth_provider.is_some()) {
        return Err(
            "the user runs an exec or auth-provider credential plugin (set \
             NODEWIRE_KUBE_ALLOW_EXEC=true to run it)"
                .into(),
        );
    }
    Ok(())
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
    /// `metadata.creationTimestamp`, Unix seconds.
    pub created: Option<i64>,
    pub uid: Option<String>,
    /// Annotation [`NODE_INSTANCE_ID_ANNOTATION`]: the instance nodewire paired it with.
    pub instance_id: Option<String>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// `status.conditions` has `NetworkUnavailable` = `True` (set at registration where a
    /// cloud provider manages routes; see [`Kube::set_network_available`]).
    pub network_unavailable: bool,
}

/// Annotation on a Node: the numeric id of the VM instance nodewire paired it with (written
/// once, by `provider-id`; the admission policy allows nothing else).
pub const NODE_INSTANCE_ID_ANNOTATION: &str = "nodewire.io/instance-id";

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
            uid: n.metadata.uid.clone(),
            deleting: n.metadata.deletion_timestamp.is_some(),
            instance_id: n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NODE_INSTANCE_ID_ANNOTATION).cloned()),
            created: n
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.as_second()),
            network_unavailable: n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "NetworkUnavailable" && c.status == "True")
                }),
        }
    }

    /// True when the node carries the taint `key` (any effect).
    pub fn has_taint(&self, key: &str) -> bool {
        self.taints.iter().any(|(k, _)| k == key)
    }
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
    pub async fn new(conn: &KubeSettings, policy: KubePolicy) -> Result<Self, KubeError> {
        let mut cfg = match conn {
            KubeSettings::Kubeconfig {
                path,
                allow_insecure_tls,
                allow_exec,
            } => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    KubeError::Setup(crate::error::Cause::msg(format!("{}: {e}", path.display())))
                })?;
                kubeconfig_is_acceptable(&kc, *allow_insecure_tls, *allow_exec).map_err(|why| {
                    KubeError::Setup(crate::error::Cause::msg(format!(
                        "{}: {why}",
                        path.display()
                    )))
                })?;
                kube::Config::from_custom_kubeconfig(
                    kc,
                    &kube::config::KubeConfigOptions::default(),
                )
                .await
                .map_err(|e| KubeError::Setup(crate::error::Cause::new(e)))?
            }
            KubeSettings::Direct {
                url,
                token,
                token_file,
                ca_file,
                ca_pem,
            } => {
                if url.starts_with("http://") && !crate::names::is_loopback_http(url) {
                    return Err(KubeError::Setup(crate::error::Cause::msg(format!(
                        "{url}: plain HTTP is allowed only for a loopback address"
                    ))));
                }
                let uri: http::Uri = url.parse().map_err(|e| {
                    KubeError::Setup(crate::error::Cause::msg(format!("{url}: {e}")))
                })?;
                let mut cfg = kube::Config::new(uri);
                if let Some(f) = token_file {
                    // Read now, so a missing file fails at start; re-read by kube afterwards.
                    std::fs::metadata(f).map_err(|e| {
                        KubeError::Setup(crate::error::Cause::msg(format!(
                            "token file {}: {e}",
                            f.display()
                        )))
                    })?;
                    cfg.auth_info = kube::config::AuthInfo {
                        token_file: Some(f.display().to_string()),
                        ..Default::default()
                    };
                } else if let Some(t) = token {
                    cfg.auth_info = kube::config::AuthInfo {
                        token: Some(t.clone().into()),
                        ..Default::default()
                    };
                }
                let ca_pem = match (ca_pem, ca_file) {
                    (Some(pem), _) => Some(pem.clone()),
                    (None, Some(f)) => Some(std::fs::read_to_string(f).map_err(|e| {
                        KubeError::Setup(crate::error::Cause::msg(format!(
                            "CA file {}: {e}",
                            f.display()
                        )))
                    })?),
                    (None, None) => None,
                };
                if let Some(pem) = &ca_pem {
                    let der: Vec<Vec<u8>> = ::pem::parse_many(pem)
                        .map_err(|e| {
                            KubeError::Setup(crate::error::Cause::msg(format!("CA: {e}")))
                        })?
                        .into_iter()
                        .filter(|p| p.tag() == "CERTIFICATE")
                        .map(|p| p.into_contents())
                        .collect();
                    if der.is_empty() {
                        return Err(KubeError::Setup(crate::error::Cause::msg(
                            "CA: no CERTIFICATE block",
                        )));
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
        let client = kube::Client::try_from(cfg)
            .map_err(|e| KubeError::Setup(crate::error::Cause::new(e)))?;
        Ok(Self {
            nodes: Api::all(client.clone()),
            secrets: Api::namespaced(client.clone(), "kube-system"),
            client,
            policy,
        })
    }

    /// Runs `f` with the transient-retry policy; a 409 Conflict is returned to the caller
    /// (it must re-read).
    async fn retrying<T, F, Fut>(&self, call: &'static str, mut f: F) -> Result<T, Class>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let attempt = || {
            let fut = f();
            async move { fut.await.map_err(|e| classify(call, &e)) }
        };
        toolkit::retrying(&self.policy.retry, call, attempt, |x| {
            Class::Fail(KubeError::Transient {
                call,
                attempts: x.attempts,
                message: x.message,
            })
        })
        .await
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
    ) -> Result<Listed<NodeView>, KubeError> {
        let mut lp = ListParams::default().limit(500);
        if let Some(s) = label_selector {
            lp = lp.labels(s);
        }
        self.list_all("nodes.list", &self.nodes, lp, |n| {
            Some(NodeView::from_node(n))
        })
        .await
    }

    /// Every object of `api` that `lp` selects, page by page, reduced by `view`.
    async fn list_all<K, T>(
        &self,
        call: &'static str,
        api: &Api<K>,
        lp: ListParams,
        view: fn(&K) -> Option<T>,
    ) -> Result<Listed<T>, KubeError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.list_pages(call, lp, |p| async move {
            let page = api.list(&p).await?;
            Ok((
                page.items.iter().filter_map(view).collect(),
                page.metadata.continue_,
            ))
        })
        .await
    }

    /// Like [`Self::list_all`], asking for metadata only (`PartialObjectMetadataList`): the
    /// objects' contents never reach this process.
    async fn list_all_metadata<K, T>(
        &self,
        call: &'static str,
        api: &Api<K>,
        lp: ListParams,
        view: fn(&kube::core::PartialObjectMeta<K>) -> Option<T>,
    ) -> Result<Listed<T>, KubeError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        self.list_pages(call, lp, |p| async move {
            let page = api.list_metadata(&p).await?;
            Ok((
                page.items.iter().filter_map(view).collect(),
                page.metadata.continue_,
            ))
        })
        .await
    }

    /// Pages of a list (`fetch` one page for the given parameters), restarted when the
    /// continue token expired.
    async fn list_pages<T, F, Fut>(
        &self,
        call: &'static str,
        lp: ListParams,
        fetch: F,
    ) -> Result<Listed<T>, KubeError>
    where
        F: Fn(ListParams) -> Fut,
        Fut: Future<Output = Result<(Vec<T>, Option<String>), kube::Error>>,
    {
        // A continue token expires when etcd compacts the list's revision (410 `Expired`):
        // the list is started again, a bounded number of times. Every page read counts.
        const RESTARTS: u32 = 3;
        let lp = &lp;
        let fetch = &fetch;
        let calls = &std::sync::atomic::AtomicUsize::new(0);
        let mut restarts = 0;
        loop {
            let listed = toolkit::all_pages(|token| async move {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let page_params = match &token {
                    Some(t) => lp.clone().continue_token(t),
                    None => lp.clone(),
                };
                self.retrying(call, || fetch(page_params.clone()))
                    .await
                    .map_err(|c| fail(call, c))
            })
            .await;
            match listed {
                Err(KubeError::Refused { code: 410, .. }) if restarts < RESTARTS => {
                    restarts += 1;
                    tracing::info!(call, restarts, "list continue token expired; listing again");
                }
                Ok(mut l) => {
                    l.pages = calls.load(std::sync::atomic::Ordering::Relaxed);
                    return Ok(l);
                }
                Err(e) => return Err(e),
            }
        }
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
                Err(KubeError::ProviderIdConflict(ProviderIdConflict {
                    node: name.to_string(),
                    current,
                    wanted: provider_id.to_string(),
                }))
            }
        })
        .await
    }

    /// Alias-first (issue 22): sets `spec.podCIDR` and `spec.podCIDRs` to `cidr` while they
    /// are empty. A podCIDR already set is never changed (the API server allows it only from
    /// empty, and nodewire never overwrites someone else's): an equal one is left as it is,
    /// another is refused.
    ///
    /// # Errors
    /// [`KubeError::Invalid`] when the Node has another podCIDR; the other [`KubeError`]s.
    pub async fn set_pod_cidr(&self, name: &str, cidr: &str) -> Result<WriteOutcome, KubeError> {
        self.patch_node("nodes.patch(podCIDR)", name, |n| {
            let current = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.clone())
                .unwrap_or_default();
            if current == cidr {
                Ok(None)
            } else if current.is_empty() {
                Ok(Some(json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}})))
            } else {
                Err(KubeError::Invalid {
                    call: "nodes.patch(podCIDR)",
                    message: format!(
                        "Node {name} has podCIDR {current}, not {cidr}; a podCIDR is never changed"
                    ),
                })
            }
        })
        .await
    }

    /// Sets the Node's `NetworkUnavailable` condition to `False` when it is `True` (issue 22):
    /// its pod range is routed by its VM's alias IP range, as GKE's CloudAllocator reports it
    /// (kubernetes/cloud-provider-gcp pkg/controller/nodeipam/ipam/cloud_cidr_allocator.go:
    /// reason `RouteCreated`). A Node without the condition, or with it `False`, is left as it
    /// is. A strategic merge patch of `nodes/status`: conditions merge by `type`, so the
    /// kubelet's own conditions are untouched.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn set_network_available(&self, name: &str) -> Result<WriteOutcome, KubeError> {
        const CALL: &str = "nodes.patchStatus(NetworkUnavailable)";
        let Some(node) = self.get_node(name).await? else {
            return Err(KubeError::NotFound {
                call: CALL,
                message: format!("Node {name}"),
            });
        };
        if !node.network_unavailable {
            return Ok(WriteOutcome::Unchanged);
        }
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = json!({"status": {"conditions": [{
            "type": "NetworkUnavailable",
            "status": "False",
            "reason": "RouteCreated",
            "message": "nodewire: the VM's alias IP range is the Node's podCIDR",
            "lastTransitionTime": now,
            "lastHeartbeatTime": now,
        }]}});
        let pp = PatchParams::default();
        let patch = Patch::Strategic(patch);
        self.retrying(CALL, || self.nodes.patch_status(name, &pp, &patch))
            .await
            .map(|_| WriteOutcome::Changed)
            .map_err(|c| fail(CALL, c))
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

    /// Records instance `id` on Node `name` (annotation [`NODE_INSTANCE_ID_ANNOTATION`]) when
    /// it has none; `Unchanged` when it already has this one.
    ///
    /// # Errors
    /// [`KubeError::Invalid`] when it records another instance (the step re-plans from a fresh
    /// read); others of [`KubeError`].
    pub async fn record_node_instance(
        &self,
        name: &str,
        id: &str,
    ) -> Result<WriteOutcome, KubeError> {
        self.patch_node("nodes.patch(instance-id)", name, |n| {
            let current = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(NODE_INSTANCE_ID_ANNOTATION).cloned());
            match current.as_deref() {
                Some(c) if c == id => Ok(None),
                Some(other) => Err(KubeError::Invalid {
                    call: "nodes.patch(instance-id)",
                    message: format!("Node {name} already records instance {other}, not {id}"),
                }),
                None => Ok(Some(
                    json!({"metadata": {"annotations": {NODE_INSTANCE_ID_ANNOTATION: id}}}),
                )),
            }
        })
        .await
    }

    /// Deletes Node `name` only while its uid is `uid` (a delete precondition); `Unchanged`
    /// when it is gone.
    ///
    /// # Errors
    /// [`KubeError`]: a Conflict when the Node now has another uid (it was replaced).
    pub async fn delete_node_if_uid(
        &self,
        name: &str,
        uid: Option<&str>,
    ) -> Result<WriteOutcome, KubeError> {
        const CALL: &str = "nodes.delete";
        let dp = DeleteParams {
            preconditions: uid.map(|u| kube::api::Preconditions {
                uid: Some(u.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.retrying(CALL, || self.nodes.delete(name, &dp)).await {
            Ok(_) => Ok(WriteOutcome::Changed),
            Err(Class::Fail(KubeError::NotFound { .. })) => Ok(WriteOutcome::Unchanged),
            Err(c) => Err(fail(CALL, c)),
        }
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

    /// The names of the Nodes that have a core/v1 Event with this `reason` (in `default`,
    /// where [`Self::node_event`] records them), e.g. `CIDRNotAvailable`.
    ///
    /// # Errors
    /// [`KubeError`].
    pub async fn nodes_with_event(
        &self,
        reason: &str,
    ) -> Result<std::collections::BTreeSet<String>, KubeError> {
        use k8s_openapi::api::core::v1::Event;
        let events: Api<Event> = Api::namespaced(self.client.clone(), "default");
        let lp = ListParams::default()
            .limit(500)
            .fields(&format!("involvedObject.kind=Node,reason={reason}"));
        let listed = self
            .list_all("events.list", &events, lp, |e: &Event| {
                e.involved_object.name.clone()
            })
            .await?;
        Ok(listed.items.into_iter().collect())
    }

    /// Records a core/v1 Event about a Node (in `default`, where Events about cluster-scoped
    /// objects live). `type_` is `Normal` or `Warning`. The reference carries the Node's
    /// `uid` (read first): `kubectl describe node` selects Events by
    /// `involvedObject.uid` too, and would not show one without it. When the Node cannot be
    /// read the Event is still sent, without the uid.
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
        let uid = match self.get_node_raw(node).await {
            Ok(n) => n.and_then(|n| n.metadata.uid),
            Err(e) => {
                tracing::debug!(node, error = %e, "no uid for the event's reference");
                None
            }
        };
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
                uid,
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(api_message(message)),
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
}
