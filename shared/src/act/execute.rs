//! ACT: carry out the planner's actions for one VM with the chain's clients. The only code
//! that writes to Compute Engine and Kubernetes on behalf of a step.
//!
//! # Idempotency
//! Every action is safe to repeat: the clients compare before writing (tags, aliases,
//! metadata, taints), providerID is set only while empty, deletions of what is gone succeed,
//! and a bootstrap only runs when the planner saw no pending join.

use std::collections::BTreeMap;

use crate::act::compute::{AliasRange, ComputeError};
use crate::act::deps::{ChainDeps, attr};
use crate::act::k8s::KubeError;
use crate::bus::{BusError, OutboundMessage};
use crate::error::Classify;
use crate::join::{
    BOOTSTRAP_ATTEMPTS_METADATA_KEY, Discovery, JOIN_METADATA_KEY, JOINED_METADATA_KEY, JoinParams,
    KUBELET_RESTART_METADATA_KEY, join_configuration,
};
use crate::names::UNWIRED_TAINT;
use crate::names::{Cidr, InstanceRef};
use crate::plan::{Action, Attempts, Budget, Observed, Refusal};
use crate::trace::TraceContext;

/// Why an action failed.
#[derive(Debug, thiserror::Error)]
pub enum ActError {
    #[error(
        "alias range {cidr} for node {node} is held by {holder}; release it there or delete that VM"
    )]
    AliasConflict {
        cidr: String,
        node: String,
        holder: String,
        #[source]
        source: Box<ComputeError>,
    },
    /// Compute Engine says the range is in use, but no VM of the project holds it: a range
    /// removed from a VM can take up to a minute to become assignable to another (Compute
    /// Engine docs, "Configuring alias IP ranges"). Retried, bounded by redelivery.
    #[error(
        "alias range {cidr} for node {node} is not assignable yet (no VM holds it; a released range takes up to a minute to free)"
    )]
    AliasNotYetFree {
        cidr: String,
        node: String,
        #[source]
        source: Box<ComputeError>,
    },
    /// The API refused a change the planner could not foresee (providerID set meanwhile).
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("publishing node-wired failed")]
    Publish(#[from] BusError),
    #[error("serializing the {what} message failed")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Classify for ActError {
    fn is_retryable(&self) -> bool {
        match self {
            ActError::Compute(e) => e.is_retryable(),
            ActError::Kube(e) => e.is_retryable(),
            ActError::Publish(e) => e.is_retryable(),
            ActError::AliasNotYetFree { .. } => true,
            ActError::AliasConflict { .. } | ActError::Refused(_) | ActError::Serialize { .. } => {
                false
            }
        }
    }
}

/// What the actions of one step are about.
#[derive(Debug)]
pub struct Target<'a> {
    pub instance: &'a InstanceRef,
    /// The numeric VM id the step message carried (recorded on the token).
    pub instance_id: Option<&'a str>,
    pub node: &'a str,
    /// The chain id, carried into `node-wired`.
    pub chain: &'a str,
    pub observed: &'a Observed,
    pub trace: &'a TraceContext,
}

/// Carries out one action.
///
/// # Errors
/// [`ActError`]; see [`Classify`] for which are retried.
pub async fn execute(deps: &ChainDeps, t: &Target<'_>, action: &Action) -> Result<(), ActError> {
    let (compute, kube) = (&deps.compute, &deps.kube);
    match action {
        Action::Bootstrap => bootstrap(deps, t).await?,
        Action::RevokeTokens(ids) => {
            for id in ids {
                kube.delete_bootstrap_token(id).await?;
            }
        }
        Action::SetAlias { cidr, range_name } => {
            let ranges = [AliasRange {
                cidr: cidr.to_string(),
                range_name: Some(range_name.clone()),
            }];
            match compute.set_alias_ranges(t.instance, &ranges).await {
                Ok(_) => {}
                Err(source @ ComputeError::AliasInUse { .. }) => {
                    let holder = alias_holder(deps, t.instance, *cidr).await;
                    let (range, node) = (cidr.to_string(), t.node.to_string());
                    let source = Box::new(source);
                    let Some(holder) = holder else {
                        // Nobody holds it (or the lookup failed): transient, not a conflict.
                        return Err(ActError::AliasNotYetFree {
                            cidr: range,
                            node,
                            source,
                        });
                    };
                    let err = ActError::AliasConflict {
                        cidr: range,
                        node,
                        holder,
                        source,
                    };
                    record_event(deps, t.node, "Warning", "AliasRangeInUse", &err.to_string())
                        .await;
                    return Err(err);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Action::ReleaseAlias { keep } => {
            let ranges: Vec<AliasRange> = keep
                .iter()
                .map(|a| AliasRange {
                    cidr: a.cidr.clone(),
                    range_name: a.range_name.clone(),
                })
                .collect();
            compute.set_alias_ranges(t.instance, &ranges).await?;
        }
        Action::AddTags(tags) => {
            compute.add_tags(t.instance, tags).await?;
        }
        Action::AllocateAlias { prefix, ranges } => {
            // The first range with a free block, in the configured order (GKE's additional pod
            // ranges are used the same way: the next one once one is full). Each try is atomic
            // on Compute Engine's side; a full range costs one refused operation.
            let mut exhausted = Vec::new();
            for range_name in &deps.full_ranges.order(ranges) {
                match compute
                    .allocate_alias_range(t.instance, *prefix, range_name, ranges)
                    .await
                {
                    Ok(outcome) => {
                        // Unchanged: nic0 already had a block (of any pod range); that says
                        // nothing about this range's room.
                        if outcome == crate::act::toolkit::WriteOutcome::Changed {
                            deps.full_ranges.clear(range_name);
                        }
                        if !exhausted.is_empty() {
                            tracing::info!(instance = %t.instance, range = %range_name, full = %exhausted.join(","), "allocated from the next pod range");
                        }
                        return Ok(());
                    }
                    Err(ComputeError::RangeExhausted { message, .. }) => {
                        tracing::warn!(instance = %t.instance, range = %range_name, api = %message, "pod range full");
                        deps.full_ranges.mark(range_name);
                        exhausted.push(range_name.clone());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Loud: an ERROR line the log-based metric nodewire/pod_range_exhausted counts, a
            // Warning Event on the Node (when it exists) as kube-controller-manager's IPAM
            // records one, and a permanent refusal (dead-lettered at once, never retried by
            // age). The sweep tries again once its cooldown has passed.
            let r = Refusal::PodRangeExhausted {
                vm: t.instance.to_string(),
                // Every range was tried and refused; named in the configured order.
                ranges: ranges.join(", "),
                prefix: *prefix,
                taint: UNWIRED_TAINT,
            };
            tracing::error!(instance = %t.instance, ranges = %exhausted.join(","), "pod range exhausted");
            report_refusal(deps, t.observed, &r).await;
            return Err(r.into());
        }
        Action::SetNetworkAvailable => {
            kube.set_network_available(t.node).await?;
        }
        Action::SetPodCidr(cidr) => {
            kube.set_pod_cidr(t.node, &cidr.to_string()).await?;
        }
        Action::SetProviderId(id) => match kube.set_provider_id(t.node, id).await {
            Ok(_) => {}
            Err(KubeError::ProviderIdConflict(conflict)) => {
                let r = Refusal::ProviderIdConflict(conflict);
                report_refusal(deps, t.observed, &r).await;
                return Err(r.into());
            }
            Err(e) => return Err(e.into()),
        },
        Action::RemoveTaint => {
            kube.remove_taint(t.node, UNWIRED_TAINT).await?;
        }
        Action::ClearJoinMetadata => {
            // One write: the join configuration and any restart request go, the mark stays.
            compute
                .update_metadata(t.instance, |m| {
                    m.remove(JOIN_METADATA_KEY);
                    m.remove(KUBELET_RESTART_METADATA_KEY);
                    m.remove(BOOTSTRAP_ATTEMPTS_METADATA_KEY);
                    m.insert(JOINED_METADATA_KEY.to_string(), "true".to_string());
                })
                .await?;
        }
        Action::RestartKubelet(n) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            compute
                .update_metadata(t.instance, |m| {
                    m.insert(
                        KUBELET_RESTART_METADATA_KEY.to_string(),
                        Attempts::value(*n, now),
                    );
                })
                .await?;
        }
        Action::DeleteNode => {
            kube.delete_node(t.node).await?;
        }
        Action::DeleteStaleNode { uid } => {
            // Only while it is still the Node that was read: one registered meanwhile (the new
            // instance's kubelet) has another uid and is kept (409, the step re-plans).
            kube.delete_node_if_uid(t.node, uid.as_deref()).await?;
            tracing::info!(node = t.node, vm = %t.instance, "deleted the Node of a previous instance of this VM's name");
        }
        Action::RecordInstance(id) => {
            kube.record_node_instance(t.node, id).await?;
        }
        Action::AnnounceWired => announce_wired(deps, t).await?,
    }
    Ok(())
}

/// Mints a join token and writes the JoinConfiguration into the VM's metadata; a token whose
/// metadata write failed is revoked again.
async fn bootstrap(deps: &ChainDeps, t: &Target<'_>) -> Result<(), ActError> {
    let (compute, kube, chain) = (&deps.compute, &deps.kube, &deps.chain);
    let vm = t.instance;
    let ci = kube.cluster_info().await?;
    let token = kube
        .create_bootstrap_token(vm, t.instance_id, chain.token_ttl, &chain.token_groups)
        .await?;
    let yaml = render_join(deps, &ci, vm, &token);
    // The attempt is recorded in the same write: re-minting stays bounded (the planner and
    // the sweep read it back).
    let attempt = Attempts::next(
        t.observed.vm.as_ref().and_then(|v| v.bootstrap_attempts),
        &Budget::JOIN_TOKENS,
    )
    .unwrap_or(1);
    let attempts = Attempts::value(attempt, time::OffsetDateTime::now_utc().unix_timestamp());
    let written = compute
        .update_metadata(vm, |m| {
            m.insert(JOIN_METADATA_KEY.to_string(), yaml.clone());
            m.insert(
                BOOTSTRAP_ATTEMPTS_METADATA_KEY.to_string(),
                attempts.clone(),
            );
        })
        .await;
    if let Err(e) = written {
        // Do not leave a valid token behind that no VM will use; if revoking fails too, the
        // sweep finds it (leftover or expired token) — say so.
        if let Err(revoke) = kube.delete_bootstrap_token(&token.id).await {
            tracing::warn!(instance = %vm, token_id = %token.id, error = %revoke, "revoking the unused join token failed; the drift sweep will remove it");
        }
        return Err(e.into());
    }
    tracing::info!(instance = %vm, token_id = %token.id, expiration = %token.expiration, "join configuration written");
    Ok(())
}

/// Publishes `node-wired` and records the `NodeWired` event.
async fn announce_wired(deps: &ChainDeps, t: &Target<'_>) -> Result<(), ActError> {
    let vm = t.instance;
    let pod_cidr = t
        .observed
        .node
        .as_ref()
        .and_then(|n| n.pod_cidr.clone())
        .unwrap_or_default();
    let body = serde_json::json!({
        "schema": "nodewire.node-wired/v1",
        "instance": vm,
        "node": t.node,
        "podCIDR": pod_cidr,
        "chain": t.chain,
    });
    let data = serde_json::to_vec(&body).map_err(|source| ActError::Serialize {
        what: "node-wired",
        source,
    })?;
    let out = OutboundMessage {
        data,
        attributes: BTreeMap::from([
            (attr::INSTANCE.to_string(), vm.to_string()),
            (attr::CHAIN.to_string(), t.chain.to_string()),
            (
                attr::TRACEPARENT.to_string(),
                t.trace.child().to_traceparent(),
            ),
        ]),
        ordering_key: Some(vm.ordering_key()),
    };
    let base = &deps.base;
    base.bus
        .publish(&base.config.pubsub.topic("node-wired"), out)
        .await?;
    // The log-based metrics `nodewire/vms_wired` and `nodewire/time_to_wired` read this line.
    let registered = t.observed.node.as_ref().and_then(|n| n.registered_at);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match registered {
        Some(at) => tracing::info!(
            instance = %vm,
            node = %t.node,
            %pod_cidr,
            seconds_since_registration = now.saturating_sub(at).max(0),
            "node wired"
        ),
        None => tracing::info!(instance = %vm, node = %t.node, %pod_cidr, "node wired"),
    }
    let text = format!(
        "Node is wired: VM {vm} holds alias range {pod_cidr}; taint {UNWIRED_TAINT} removed"
    );
    record_event(deps, t.node, "Normal", "NodeWired", &text).await;
    Ok(())
}

/// Records a Kubernetes Event on the Node; a failure is logged, never fatal (events are
/// best-effort in Kubernetes too).
async fn record_event(deps: &ChainDeps, node: &str, kind: &str, reason: &str, text: &str) {
    if let Err(e) = deps.kube.node_event(node, kind, reason, text).await {
        tracing::warn!(error = %e, node, reason, "recording the event failed");
    }
}

/// Records a refusal as a Warning event on the Node, when there is one.
pub async fn report_refusal(deps: &ChainDeps, obs: &Observed, r: &Refusal) {
    let Some(node) = obs.node.as_ref() else {
        return;
    };
    let reason = match r {
        Refusal::ProviderIdConflict(_) => "ProviderIDConflict",
        Refusal::PodCidrOutsideRange { .. } | Refusal::InvalidPodCidr { .. } => {
            "PodCIDROutsideRange"
        }
        Refusal::NoIpForwarding(_) | Refusal::WrongSubnet { .. } => "NotWirable",
        // kube-controller-manager's node IPAM records the same reason when it has no range.
        Refusal::PodRangeExhausted { .. } => "CIDRNotAvailable",
    };
    record_event(deps, &node.name, "Warning", reason, &r.to_string()).await;
}

/// `HOST:PORT` of an `https://HOST:PORT/...` URL (port 443 when absent).
/// The JoinConfiguration of `vm` with `token`, for the cluster `ci` describes (the endpoint
/// configured, or the one cluster-info names). The result holds the token: never log it.
pub fn render_join(
    deps: &ChainDeps,
    ci: &crate::act::k8s::ClusterInfo,
    vm: &InstanceRef,
    token: &crate::act::k8s::BootstrapToken,
) -> String {
    let endpoint = api_endpoint(deps, ci);
    let secret = token.expose();
    let provider_id = vm.provider_id();
    join_configuration(
        &JoinParams {
            discovery: Discovery::Token {
                api_server: &endpoint,
                token: &secret,
                ca_pin: &ci.ca_pin,
            },
            node_name: vm.name(),
            provider_id: &provider_id,
            taint_key: UNWIRED_TAINT,
        },
        deps.chain.join_api,
    )
}

/// The pull-mode answer for `vm`: the discovery kubeconfig (the cluster's CA and server, the
/// client certificate signed for the VM's key) and the JoinConfiguration that names it.
pub fn render_pull_join(
    deps: &ChainDeps,
    ci: &crate::act::k8s::ClusterInfo,
    vm: &InstanceRef,
    cert_pem: &str,
) -> String {
    let endpoint = api_endpoint(deps, ci);
    let provider_id = vm.provider_id();
    let kubeconfig = crate::join::discovery_kubeconfig(
        &format!("https://{endpoint}"),
        &ci.ca_pem,
        cert_pem,
        vm.name(),
    );
    let jc = join_configuration(
        &JoinParams {
            discovery: Discovery::File,
            node_name: vm.name(),
            provider_id: &provider_id,
            taint_key: UNWIRED_TAINT,
        },
        deps.chain.join_api,
    );
    crate::join::pull_answer(&kubeconfig, &jc)
}

/// `HOST:PORT` of the API server a node joins: `NODEWIRE_API_SERVER_ENDPOINT`, else the one
/// cluster-info names.
fn api_endpoint(deps: &ChainDeps, ci: &crate::act::k8s::ClusterInfo) -> String {
    deps.chain
        .api_server_endpoint
        .clone()
        .unwrap_or_else(|| host_port(&ci.server))
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let hp = rest.split('/').next().unwrap_or(rest);
    if hp
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hp.to_string()
    } else {
        format!("{hp}:443")
    }
}

/// The VM of the project whose nic0 holds an alias overlapping `cidr`; `None` when no VM
/// does (a range released moments ago) or the lookup failed (then it is retried too).
async fn alias_holder(deps: &ChainDeps, me: &InstanceRef, cidr: Cidr) -> Option<String> {
    match deps.compute.list_instances(None).await {
        Ok(vms) => vms
            .items
            .into_iter()
            .filter(|v| v.instance != *me)
            .find(|v| {
                v.nic0.as_ref().is_some_and(|n| {
                    n.aliases.iter().any(|a| {
                        a.cidr
                            .parse::<Cidr>()
                            .is_ok_and(|c: Cidr| c.overlaps(&cidr))
                    })
                })
            })
            .map(|v| v.instance.to_string()),
        Err(e) => {
            tracing::warn!(error = %e, %cidr, "looking up the holder of an alias range failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        assert_eq!(host_port("https://10.122.16.1:6443"), "10.122.16.1:6443");
        assert_eq!(host_port("https://api.example.com"), "api.example.com:443");
        assert_eq!(host_port("https://10.0.0.1:6443/"), "10.0.0.1:6443");
    }

    #[test]
    fn classification() {
        assert!(
            ActError::Compute(ComputeError::Contention {
                call: "c",
                resends: 1
            })
            .is_retryable()
        );
        assert!(!ActError::Refused(Refusal::NoIpForwarding("vm".into())).is_retryable());
    }
}
