//! OBSERVE: read what the steps and the sweep decide on, and reduce the big API objects to
//! the planner's small facts. The reads go through the clients in `act` (which own retries);
//! the reducers are pure. Nothing here writes.

use std::collections::BTreeMap;

use crate::act::compute::{Compute, ComputeError, InstanceView};
use crate::act::k8s::{Kube, KubeError, NodeView, TokenInfo};
use crate::error::Classify;
use crate::join::{
    BOOTSTRAP_ATTEMPTS_METADATA_KEY, JOIN_METADATA_KEY, JOINED_METADATA_KEY,
    KUBELET_RESTART_METADATA_KEY,
};
use crate::names::UNWIRED_TAINT;
use crate::names::{InstanceRef, SubnetRef};
use crate::plan::{Alias, Attempts, Budget, NodeFacts, Observed, TokenFacts, VmFacts, VmStatus};

/// A read that failed.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

impl Classify for ObserveError {
    fn is_retryable(&self) -> bool {
        match self {
            ObserveError::Compute(e) => e.is_retryable(),
            ObserveError::Kube(e) => e.is_retryable(),
        }
    }
}

/// Which of a VM's join tokens a read looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tokens {
    /// List them (metadata only): the steps that mint or revoke, the CLI.
    Read,
    /// Do not touch Secrets at all (issue 10, item 5): the steps that never act on tokens;
    /// a leftover token is the drift sweep's to find.
    Skip,
}

/// Reads one VM, its Node (`node`) and (with [`Tokens::Read`]) the VM's tokens, concurrently,
/// and reduces them to the planner's facts as of now.
///
/// # Errors
/// [`ObserveError`] when a read fails.
pub async fn one_vm(
    compute: &Compute,
    kube: &Kube,
    instance: &InstanceRef,
    node: &str,
    which: Tokens,
) -> Result<Observed, ObserveError> {
    let list_tokens = async {
        match which {
            Tokens::Read => kube.list_bootstrap_tokens(Some(instance.name())).await,
            Tokens::Skip => Ok(crate::act::toolkit::Listed {
                items: Vec::new(),
                pages: 0,
                unreachable: Vec::new(),
            }),
        }
    };
    let (vm, node, tokens) = tokio::join!(
        compute.get_instance(instance),
        kube.get_node(node),
        list_tokens,
    );
    let now = time::OffsetDateTime::now_utc();
    let vm = vm?;
    let vm_id = vm.as_ref().and_then(|v| v.id).map(|i| i.to_string());
    Ok(Observed {
        instance: instance.clone(),
        vm: vm.as_ref().map(|v| vm_facts(v, now)),
        node: node?.as_ref().map(node_facts),
        // Tokens are found by the VM's name, and kept only when minted for this very VM's
        // zone: a step naming a VM of the same name in another zone (forged or stale) must
        // not revoke — or count — another VM's join token.
        tokens: tokens?
            .items
            .iter()
            .filter(|t| t.zone.as_deref() == Some(instance.zone()))
            // and, when both are known, for this VM and not an earlier one of the same name.
            .filter(|t| match (&t.instance_id, &vm_id) {
                (Some(t), Some(v)) => t == v,
                _ => true,
            })
            .map(|t| token_facts(t, now))
            .collect(),
    })
}

/// Everything the drift sweep reads.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub vms: Vec<InstanceView>,
    pub nodes: Vec<NodeView>,
    pub tokens: Vec<TokenInfo>,
    /// Zones the VM list could not reach: a VM there is unknown, not gone.
    pub unreachable_zones: Vec<String>,
}

/// Reads everything the sweep needs: every VM of the project (the selector is applied in
/// code, so that a Node whose VM exists but is not selected is not taken for orphaned), every
/// Node, every nodewire token. Returns the list calls made per API.
///
/// # Errors
/// [`ObserveError`] when a list fails.
pub async fn inventory(
    compute: &Compute,
    kube: &Kube,
) -> Result<(Inventory, BTreeMap<String, usize>), ObserveError> {
    let (vms, nodes, tokens) = tokio::join!(
        compute.list_instances(None),
        kube.list_nodes(None),
        kube.list_bootstrap_tokens(None)
    );
    let (vms, nodes, tokens) = (vms?, nodes?, tokens?);
    let calls = BTreeMap::from([
        ("compute.instances.aggregatedList".to_string(), vms.pages),
        ("k8s.nodes.list".to_string(), nodes.pages),
        ("k8s.secrets.list".to_string(), tokens.pages),
    ]);
    let inventory = Inventory {
        vms: vms.items,
        nodes: nodes.items,
        tokens: tokens.items,
        unreachable_zones: vms.unreachable,
    };
    Ok((inventory, calls))
}

/// True when a token's expiration has passed (or cannot be read).
pub fn expired(t: &TokenInfo, now: time::OffsetDateTime) -> bool {
    t.expiration
        .as_deref()
        .and_then(|e| {
            time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_none_or(|e| e <= now)
}

/// The planner's facts of a VM, as of `now` (the age of nodewire's `COUNT@UNIX` records).
pub fn vm_facts(v: &InstanceView, now: time::OffsetDateTime) -> VmFacts {
    let now = now.unix_timestamp();
    VmFacts {
        instance: v.instance.clone(),
        id: v.id.map(|i| i.to_string()),
        created_at: v.created,
        status: VmStatus::parse(&v.status),
        labels: v.labels.clone(),
        can_ip_forward: v.can_ip_forward,
        subnet: v
            .nic0
            .as_ref()
            .and_then(|n| SubnetRef::from_link(&n.subnetwork)),
        aliases: v
            .nic0
            .as_ref()
            .map(|n| {
                n.aliases
                    .iter()
                    .map(|a| Alias::new(a.cidr.clone(), a.range_name.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        tags: v.tags.clone(),
        join_metadata: v.metadata.contains_key(JOIN_METADATA_KEY),
        joined: v.metadata.contains_key(JOINED_METADATA_KEY),
        kubelet_restarts: v
            .metadata
            .get(KUBELET_RESTART_METADATA_KEY)
            .map(|r| Attempts::parse(r, now, &Budget::KUBELET_RESTARTS)),
        service_accounts: v.service_accounts.clone(),
        bootstrap_attempts: v
            .metadata
            .get(BOOTSTRAP_ATTEMPTS_METADATA_KEY)
            .map(|r| Attempts::parse(r, now, &Budget::JOIN_TOKENS)),
    }
}

/// The planner's facts of a Node.
pub fn node_facts(n: &NodeView) -> NodeFacts {
    NodeFacts {
        name: n.name.clone(),
        provider_id: n.provider_id.clone(),
        pod_cidr: n.pod_cidr.clone(),
        unwired_taint: n.has_taint(UNWIRED_TAINT),
        registered_at: n.created,
        uid: n.uid.clone(),
        instance_id: n.instance_id.clone(),
        deleting: n.deleting,
        network_unavailable: n.network_unavailable,
    }
}

/// The planner's facts of a token, as of `now`.
pub fn token_facts(t: &TokenInfo, now: time::OffsetDateTime) -> TokenFacts {
    TokenFacts {
        id: t.id.clone(),
        expired: expired(t, now),
    }
}
