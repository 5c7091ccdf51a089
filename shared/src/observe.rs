//! OBSERVE: the big API objects reduced to the planner's small facts. Pure.

use crate::act::compute::InstanceView;
use crate::act::k8s::{NodeView, TokenInfo, UNWIRED_TAINT};
use crate::join::JOIN_METADATA_KEY;
use crate::plan::{Alias, NodeFacts, TokenFacts, VmFacts};

/// True when a token's expiration has passed (or cannot be read).
pub fn expired(t: &TokenInfo, now: time::OffsetDateTime) -> bool {
    t.expiration
        .as_deref()
        .and_then(|e| {
            time::OffsetDateTime::parse(e, &time::format_description::well_known::Rfc3339).ok()
        })
        .is_none_or(|e| e <= now)
}

/// The planner's facts of a VM.
pub fn vm_facts(v: &InstanceView) -> VmFacts {
    VmFacts {
        instance: v.instance.clone(),
        labels: v.labels.clone(),
        can_ip_forward: v.can_ip_forward,
        subnet_link: v.nic0.as_ref().map(|n| n.subnetwork.clone()),
        aliases: v
            .nic0
            .as_ref()
            .map(|n| {
                n.aliases
                    .iter()
                    .map(|a| Alias {
                        cidr: a.cidr.clone(),
                        range_name: a.range_name.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        tags: v.tags.clone(),
        join_metadata: v.metadata.contains_key(JOIN_METADATA_KEY),
    }
}

/// The planner's facts of a Node.
pub fn node_facts(n: &NodeView) -> NodeFacts {
    NodeFacts {
        name: n.name.clone(),
        provider_id: n.provider_id.clone(),
        pod_cidr: n.pod_cidr.clone(),
        unwired_taint: n.has_taint(UNWIRED_TAINT),
    }
}

/// The planner's facts of a token, as of `now`.
pub fn token_facts(t: &TokenInfo, now: time::OffsetDateTime) -> TokenFacts {
    TokenFacts {
        id: t.id.clone(),
        expired: expired(t, now),
    }
}
