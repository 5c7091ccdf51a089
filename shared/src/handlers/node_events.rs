//! Function `node-events`: Kubernetes audit events about Nodes → `assign-alias` (registered,
//! podCIDR set) or `release-alias` (deleted). One delivery may carry many events (audit
//! webhook `EventList`); each is routed on its own.
//!
//! In metadata mode, a CSR created with a bootstrap token (the kubelet's TLS bootstrap) makes
//! it decide every pending kubelet-client CSR made with one: approved only when it names the
//! VM its token was minted for (`join::approve`; issue 20, item 2).

use std::sync::Arc;

use crate::act::deps::Deps;
use crate::adapter::{Handler, Outcome, PushEvent};
use crate::event::{Cause, CauseSource, NodeChange, NodeEvent, NodeEvents, Step, StepMessage};

use super::RouteError;
use crate::act::k8s::{CsrDecision, Kube};
use crate::config::JoinMode;
use crate::join::approve::{self, Verdict};
use crate::locate::Locator;

/// The adapter handler of `node-events` over `deps`, locating VMs with `locator`; `csrs` is
/// the Kubernetes client that decides bootstrap CSRs (metadata mode; `None` otherwise).
pub fn handler(
    deps: Deps,
    locator: Arc<dyn Locator>,
    csrs: Option<Kube>,
) -> impl Handler<NodeEvents> {
    move |event| {
        let (deps, locator, csrs) = (deps.clone(), locator.clone(), csrs.clone());
        async move { handle_with(event, &deps, locator.as_ref(), csrs.as_ref()).await }
    }
}

/// [`handle_with`] without a CSR decider.
///
/// # Errors
/// As [`handle_with`].
pub async fn handle(
    event: PushEvent<NodeEvents>,
    deps: &Deps,
    locator: &dyn Locator,
) -> Result<Outcome, RouteError> {
    handle_with(event, deps, locator, None).await
}

/// # Idempotency
/// A redelivered event publishes the same step again; steps re-read state.
///
/// # Errors
/// [`RouteError::Publish`] (retryable); [`RouteError::Locate`] when the VM behind a Node cannot
/// be determined; [`RouteError::Csr`] when the CSRs could not be decided; [`RouteError::Refused`]
/// (permanent) when some events of the delivery were malformed — after the valid ones were
/// routed.
pub async fn handle_with(
    event: PushEvent<NodeEvents>,
    deps: &Deps,
    locator: &dyn Locator,
    csrs: Option<&Kube>,
) -> Result<Outcome, RouteError> {
    let NodeEvents {
        events,
        rejected,
        log_name,
    } = event.payload;
    // Only entries of the audit log the control plane writes. Any log can be written by
    // anything with logging.logEntries.create (issue 10, item 2); the sink's filter routes the
    // right one here, and this refuses the rest should anything else reach the topic.
    if log_name.as_deref() != Some(deps.config.k8s_audit_log.as_str()) {
        return Ok(Outcome::Ignored(format!(
            "not an entry of the Kubernetes audit log {} (logName {:?})",
            deps.config.k8s_audit_log,
            log_name.as_deref().map(|l| crate::text::shorten(l, 200))
        )));
    }
    let mut routed = 0usize;
    let mut ignored = Vec::new();
    // One step per Node and kind per delivery: a step re-reads everything, so a second one
    // for the same Node adds nothing but load (an entry may carry many events of one Node).
    let mut seen: std::collections::BTreeSet<(String, Step)> = std::collections::BTreeSet::new();
    let mut csr_tokens: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for ev in events {
        let (change, step) = match ev {
            NodeEvent::Ignored(why) => {
                ignored.push(why);
                continue;
            }
            NodeEvent::BootstrapCsr { token_id, .. } => {
                csr_tokens.insert(token_id);
                continue;
            }
            NodeEvent::Registered(c) | NodeEvent::CidrAssigned(c) => (c, Step::AssignAlias),
            NodeEvent::Deleted(c) => (c, Step::ReleaseAlias),
        };
        if !seen.insert((change.node.clone(), step)) {
            continue;
        }
        match route(change, step, &event.meta, deps, locator).await? {
            Some(why) => ignored.push(why),
            None => routed += 1,
        }
    }
    if !csr_tokens.is_empty() {
        // One pass per delivery, whatever the number of CSR events: it reads every pending one.
        match (deps.config.join_mode, csrs) {
            (JoinMode::Metadata, Some(kube)) => {
                decide_bootstrap_csrs(kube).await.map_err(RouteError::Csr)?;
                routed += 1;
            }
            (JoinMode::Metadata, None) => {
                return Err(RouteError::Csr(crate::act::k8s::KubeError::Invalid {
                    call: "certificatesigningrequests.list",
                    message: "metadata mode, but node-events has no Kubernetes connection".into(),
                }));
            }
            (JoinMode::Pull, _) => {
                // Pull mode mints no bootstrap token; such a CSR is someone else's token (an
                // operator's `kubeadm token create`): nothing approves it, which is the point.
                let ids = csr_tokens.into_iter().collect::<Vec<_>>().join(", ");
                tracing::warn!(tokens = %ids, "a kubelet CSR was made with a bootstrap token in pull mode: nodewire leaves it pending");
                ignored.push(format!(
                    "CSR made with bootstrap token(s) {ids}: pull mode decides none"
                ));
            }
        }
    }
    if !rejected.is_empty() {
        let detail = rejected
            .iter()
            .map(|(i, e)| format!("item {i}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(RouteError::Refused {
            count: rejected.len(),
            detail,
        });
    }
    if routed == 0 {
        return Ok(Outcome::Ignored(if ignored.is_empty() {
            "the delivery carried no audit events".into()
        } else {
            ignored.join("; ")
        }));
    }
    for why in ignored {
        tracing::debug!(reason = %why, "audit event ignored");
    }
    Ok(Outcome::Done)
}

/// Decides every pending kubelet-client CSR made with a bootstrap token (metadata mode):
/// approved when it names the VM nodewire minted its token for, denied when it names another
/// or is not a kubelet's request, left pending when the token is not nodewire's. Returns how
/// many were decided.
///
/// # Errors
/// [`KubeError`](crate::act::k8s::KubeError) of a read or a write; the pass is redone on
/// redelivery (a decided CSR is no longer pending).
pub async fn decide_bootstrap_csrs(kube: &Kube) -> Result<usize, crate::act::k8s::KubeError> {
    let pending = kube.pending_bootstrap_csrs().await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let listed = kube.list_bootstrap_tokens(None).await?.items;
    let tokens: Vec<approve::Minted<'_>> = listed
        .iter()
        .map(|t| approve::Minted {
            id: &t.id,
            instance: t.instance.as_deref(),
            zone: t.zone.as_deref(),
            instance_id: t.instance_id.as_deref(),
        })
        .collect();
    let mut decided = 0;
    for csr in &pending {
        let request = approve::Pending {
            username: &csr.username,
            request_pem: &csr.request_pem,
            usages: &csr.usages,
        };
        match approve::judge(&request, &tokens) {
            Verdict::Approve { node, message } => {
                kube.decide_csr(
                    &csr.name,
                    CsrDecision::Approve,
                    approve::APPROVED_REASON,
                    &message,
                )
                .await?;
                tracing::info!(csr = %csr.name, %node, "kubelet CSR approved: its bootstrap token was minted for this VM");
                decided += 1;
            }
            Verdict::Deny { reason, message } => {
                kube.decide_csr(&csr.name, CsrDecision::Deny, reason, &message)
                    .await?;
                tracing::warn!(csr = %csr.name, requester = %csr.username, %reason, detail = %message, "kubelet CSR denied");
                decided += 1;
            }
            Verdict::Leave(why) => {
                tracing::info!(csr = %csr.name, reason = %why, "kubelet CSR left pending");
            }
        }
    }
    Ok(decided)
}

/// Publishes the step for one Node; `Ok(Some(reason))` when it is not nodewire's.
async fn route(
    change: NodeChange,
    step: Step,
    meta: &crate::adapter::PushMeta,
    deps: &Deps,
    locator: &dyn Locator,
) -> Result<Option<String>, RouteError> {
    // A Node is named like its VM: a name outside the prefix is not ours, whatever VM it is.
    if let Err(why) = deps.config.selector.admits_name(&change.node) {
        return Ok(Some(format!("node {why}")));
    }
    // The VM is located from the cluster and Compute Engine, never taken from the event: a
    // providerID written in an audit entry is what the writer of the entry says (issue 10,
    // item 3). One it carries must agree with what was found.
    let instance = match locator.locate(&change.node).await {
        Ok(Some(i)) => i,
        Ok(None) => {
            return Ok(Some(format!("no VM named {} exists", change.node)));
        }
        Err(source) => {
            return Err(RouteError::Locate {
                node: change.node,
                source,
            });
        }
    };
    if instance.name() != change.node {
        return Ok(Some(format!(
            "Node {} is located on VM {instance}, whose name differs: not a node nodewire joined",
            change.node
        )));
    }
    if let Some(claimed) = &change.instance
        && *claimed != instance
    {
        return Ok(Some(format!(
            "the event says Node {} is VM {claimed}, but it is VM {instance}",
            change.node
        )));
    }
    if let Err(why) = deps.config.selector.admits(&instance) {
        return Ok(Some(why.0));
    }
    let mut msg = StepMessage::new(
        step,
        instance.clone(),
        Cause {
            source: CauseSource::K8sAudit,
            id: change.audit_id,
        },
        meta.trace.trace_id(),
    );
    msg.node = Some(change.node.clone());
    deps.publish_step(&msg, &meta.trace)
        .await
        .map_err(|source| RouteError::Publish {
            step,
            instance: instance.to_string(),
            source,
        })?;
    tracing::info!(node = %change.node, %instance, %step, "published step");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::Classify;
    use crate::bus::InProcessBus;
    use crate::event::Decode;
    use crate::locate::NoLocator;
    use crate::names::InstanceRef;
    use crate::testing::TableLocator;
    use std::sync::Arc;

    fn vm(name: &str) -> InstanceRef {
        InstanceRef::new("example-project", "us-central1-a", name).expect("valid")
    }

    fn deps(locator: bool) -> (Deps, InProcessBus, Arc<dyn Locator>) {
        let (deps, bus) =
            crate::testing::deps("node-events", &[("NODEWIRE_INSTANCE_PREFIX", "k8s-")]);
        let loc: Arc<dyn Locator> = if locator {
            Arc::new(TableLocator::new([vm("k8s-worker-1")]))
        } else {
            Arc::new(NoLocator)
        };
        (deps, bus, loc)
    }

    fn change(node: &str, instance: Option<InstanceRef>) -> NodeChange {
        NodeChange {
            node: node.into(),
            pod_cidr: None,
            instance,
            audit_id: Some("a1".into()),
        }
    }

    fn events(evs: Vec<NodeEvent>) -> PushEvent<NodeEvents> {
        PushEvent::new(NodeEvents {
            events: evs,
            rejected: vec![],
            log_name: Some("projects/example-project/logs/k8s_audit".into()),
        })
    }

    /// Issue 20, item 5: an entry carrying many events of one Node routes one step for it.
    #[tokio::test]
    async fn one_step_per_node_and_kind_per_delivery() {
        let (deps, bus, loc) = deps(true);
        let many: Vec<NodeEvent> = (0..50)
            .map(|_| NodeEvent::CidrAssigned(change("k8s-worker-1", None)))
            .chain([NodeEvent::Deleted(change("k8s-worker-1", None))])
            .collect();
        let r = handle(events(many), &deps, loc.as_ref()).await.expect("ok");
        assert_eq!(r, Outcome::Done);
        let assign = bus.published_to("projects/example-project/topics/nodewire-assign-alias");
        let release = bus.published_to("projects/example-project/topics/nodewire-release-alias");
        assert_eq!((assign.len(), release.len()), (1, 1));
    }

    #[tokio::test]
    async fn registration_is_located_and_its_provider_id_checked() {
        let (deps, bus, _) = deps(false);
        let loc: Arc<dyn Locator> = Arc::new(TableLocator::new([vm("k8s-worker-2")]));
        // An event whose providerID names another VM than the one located: not routed.
        let forged = handle(
            events(vec![NodeEvent::Registered(change(
                "k8s-worker-2",
                Some(vm("k8s-worker-9")),
            ))]),
            &deps,
            loc.as_ref(),
        )
        .await
        .expect("ok");
        assert!(
            matches!(forged, Outcome::Ignored(ref why) if why.contains("k8s-worker-9")),
            "{forged:?}"
        );
        assert!(bus.published().is_empty());
        let r = handle(
            events(vec![NodeEvent::Registered(change(
                "k8s-worker-2",
                Some(vm("k8s-worker-2")),
            ))]),
            &deps,
            loc.as_ref(),
        )
        .await
        .expect("ok");
        assert_eq!(r, Outcome::Done);
        let out = bus.published_to("projects/example-project/topics/nodewire-assign-alias");
        assert_eq!(out.len(), 1);
        let step = StepMessage::decode(&out[0].message.data).expect("step");
        assert_eq!(step.node.as_deref(), Some("k8s-worker-2"));
        assert_eq!(step.cause.source, CauseSource::K8sAudit);
    }

    /// Issue 10, item 2: entries of another log than the configured audit log are not acted
    /// on, nor bare events that came in no LogEntry at all.
    #[tokio::test]
    async fn only_the_configured_audit_log_counts() {
        let (deps, bus, loc) = deps(true);
        for log in [
            Some("projects/example-project/logs/my-app".to_string()),
            Some("projects/other-project/logs/k8s_audit".to_string()),
            None,
        ] {
            let mut ev = events(vec![NodeEvent::CidrAssigned(change("k8s-worker-1", None))]);
            ev.payload.log_name = log.clone();
            let r = handle(ev, &deps, loc.as_ref()).await.expect("ok");
            assert!(
                matches!(r, Outcome::Ignored(ref why) if why.contains("not an entry of the Kubernetes audit log")),
                "{log:?}: {r:?}"
            );
        }
        assert!(bus.published().is_empty());
    }

    #[tokio::test]
    async fn cidr_and_delete_use_the_locator() {
        let (deps, bus, loc) = deps(true);
        let r = handle(
            events(vec![
                NodeEvent::CidrAssigned(change("k8s-worker-1", None)),
                NodeEvent::Deleted(change("k8s-worker-1", None)),
                NodeEvent::Deleted(change("k8s-gone", None)),
                NodeEvent::Ignored("status patch".into()),
            ]),
            &deps,
            loc.as_ref(),
        )
        .await
        .expect("ok");
        assert_eq!(r, Outcome::Done);
        assert_eq!(
            bus.published_to("projects/example-project/topics/nodewire-assign-alias")
                .len(),
            1
        );
        assert_eq!(
            bus.published_to("projects/example-project/topics/nodewire-release-alias")
                .len(),
            1
        );
        assert_eq!(bus.published().len(), 2);
    }

    #[tokio::test]
    async fn without_locator_a_node_without_provider_id_is_refused() {
        let (deps, bus, loc) = deps(false);
        let err = handle(
            events(vec![NodeEvent::Deleted(change("k8s-worker-1", None))]),
            &deps,
            loc.as_ref(),
        )
        .await
        .expect_err("no locator");
        assert!(!err.is_retryable());
        assert!(bus.published().is_empty());
    }

    #[tokio::test]
    async fn not_ours_and_refused_items() {
        let (deps, bus, loc) = deps(true);
        let r = handle(
            events(vec![NodeEvent::Registered(change("web-1", None))]),
            &deps,
            loc.as_ref(),
        )
        .await
        .expect("ok");
        assert!(matches!(r, Outcome::Ignored(ref w) if w.contains("prefix")));
        let other = InstanceRef::new("other-project", "us-central1-a", "k8s-x").expect("valid");
        let in_other_project: Arc<dyn Locator> = Arc::new(TableLocator::new([other.clone()]));
        let r = handle(
            events(vec![NodeEvent::Registered(change("k8s-x", Some(other)))]),
            &deps,
            in_other_project.as_ref(),
        )
        .await
        .expect("ok");
        assert!(matches!(r, Outcome::Ignored(ref w) if w.contains("other-project")));
        assert!(bus.published().is_empty());
        let mut ev = events(vec![NodeEvent::Registered(change("k8s-worker-1", None))]);
        ev.payload
            .rejected
            .push((1, crate::event::DecodeError::Shape("bad".into())));
        let err = handle(ev, &deps, loc.as_ref())
            .await
            .expect_err("refused item");
        assert!(!err.is_retryable());
        assert_eq!(bus.published().len(), 1, "the valid event was still routed");
    }
}
