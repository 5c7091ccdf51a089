//! The step functions: `bootstrap`, `assign-alias`, `tag-instance`, `provider-id`,
//! `finalize`, `release-alias`, `decommission`. Each one re-reads the VM, its Node and its
//! tokens (observe), asks the planner what is missing (plan), does only that (act), and
//! publishes the step the planner names (publish).
//!
//! # Idempotency
//! A redelivered or duplicated step re-reads the world and finds nothing left to do: no write is
//! sent for an aspect that already holds (the clients compare before writing), and a wired
//! node plans nothing at all.

use std::collections::BTreeMap;

use crate::act::compute::{AliasRange, Compute, ComputeError};
use crate::act::k8s::{Kube, KubeError, UNWIRED_TAINT};
use crate::adapter::{Classify, Outcome, PushEvent};
use crate::bus::{BusError, OutboundMessage};
use crate::deps::{Deps, attr};
use crate::event::{Step, StepMessage};
use crate::join::{JOIN_METADATA_KEY, JoinParams, join_configuration};
use crate::observe::{node_facts, token_facts, vm_facts};
use crate::plan::{self, Action, Observed, Plan, Refusal};
use crate::trace::TraceContext;

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("a {got} message was delivered to the {expected} function (subscription misrouted)")]
    Misrouted { expected: Step, got: Step },
    #[error("the function is not configured for the chain: {0}")]
    NotConfigured(&'static str),
    #[error("not yet: {0}")]
    Wait(String),
    #[error("{0}")]
    Refused(#[from] Refusal),
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
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("publishing failed")]
    Publish(#[from] BusError),
}

impl Classify for StepError {
    fn is_retryable(&self) -> bool {
        match self {
            StepError::Wait(_) | StepError::Publish(_) => true,
            StepError::Compute(e) => e.is_retryable(),
            StepError::Kube(e) => e.is_retryable(),
            StepError::Misrouted { .. }
            | StepError::NotConfigured(_)
            | StepError::Refused(_)
            | StepError::AliasConflict { .. } => false,
        }
    }
}

macro_rules! step_fn {
    ($(#[$doc:meta])* $name:ident, $step:expr) => {
        $(#[$doc])*
        ///
        /// # Errors
        /// [`StepError`]; see [`Classify`] for which are retried.
        pub async fn $name(event: PushEvent<StepMessage>, deps: &Deps) -> Result<Outcome, StepError> {
            run($step, event, deps).await
        }
    };
}

step_fn!(
    /// `bootstrap`: mint a join token and write the JoinConfiguration into the VM's metadata.
    bootstrap,
    Step::Bootstrap
);
step_fn!(
    /// `assign-alias`: nic0's alias ranges = exactly the Node's podCIDR.
    assign_alias,
    Step::AssignAlias
);
step_fn!(
    /// `tag-instance`: add the node tags, keeping the others.
    tag_instance,
    Step::TagInstance
);
step_fn!(
    /// `provider-id`: set `spec.providerID` while it is empty.
    provider_id,
    Step::ProviderId
);
step_fn!(
    /// `finalize`: verify wired, remove the taint, revoke tokens, clear the join metadata,
    /// announce `node-wired`.
    finalize,
    Step::Finalize
);
step_fn!(
    /// `release-alias`: the Node is gone, the VM stays: give the pod range back.
    release_alias,
    Step::ReleaseAlias
);
step_fn!(
    /// `decommission`: the VM is gone: delete its Node and its tokens.
    decommission,
    Step::Decommission
);

/// Serves one step function with the process configuration (used by every step binary).
///
/// # Errors
/// When a client cannot be built or the server fails.
pub async fn main(step: Step) -> anyhow::Result<()> {
    let name = step.as_str();
    let config = crate::config::Config::from_env_or_exit(name);
    let chain = crate::config::ChainConfig::from_env_or_exit(name);
    if config.kube.is_none() {
        eprintln!(
            "{name}: configuration variable NODEWIRE_KUBECONFIG or NODEWIRE_KUBE_API_URL: is required by the step functions"
        );
        std::process::exit(crate::config::EXIT_CONFIG);
    }
    crate::telemetry::init(&config);
    let deps = Deps::connect_with_clients(config).await?.with_chain(chain);
    match step {
        Step::Bootstrap => crate::adapter::serve(deps, bootstrap).await?,
        Step::AssignAlias => crate::adapter::serve(deps, assign_alias).await?,
        Step::TagInstance => crate::adapter::serve(deps, tag_instance).await?,
        Step::ProviderId => crate::adapter::serve(deps, provider_id).await?,
        Step::Finalize => crate::adapter::serve(deps, finalize).await?,
        Step::ReleaseAlias => crate::adapter::serve(deps, release_alias).await?,
        Step::Decommission => crate::adapter::serve(deps, decommission).await?,
    }
    Ok(())
}

async fn run(step: Step, event: PushEvent<StepMessage>, deps: &Deps) -> Result<Outcome, StepError> {
    let msg = event.payload;
    if msg.step != step {
        return Err(StepError::Misrouted {
            expected: step,
            got: msg.step,
        });
    }
    if msg.instance.project() != deps.config.project {
        return Ok(Outcome::Ignored(format!(
            "VM {} is in project {}, not the configured {}",
            msg.instance,
            msg.instance.project(),
            deps.config.project
        )));
    }
    let chain = deps
        .chain
        .as_deref()
        .ok_or(StepError::NotConfigured("chain settings"))?;
    let cfg = chain.plan_config(&deps.config.project);
    let obs = observe(deps, &msg).await?;
    let node_name = obs
        .node
        .as_ref()
        .map_or_else(|| node_name(&msg), |n| n.name.clone());
    match plan::plan(step, &obs, &cfg) {
        Plan::Ignore(why) => Ok(Outcome::Ignored(why)),
        Plan::Wait(why) => Err(StepError::Wait(why)),
        Plan::Refuse(r) => {
            report_refusal(deps, &obs, &r).await;
            Err(StepError::Refused(r))
        }
        Plan::Act { actions, next } => {
            for a in &actions {
                execute(deps, &msg, &obs, &node_name, a, &event.meta.trace).await?;
            }
            let next = match next {
                None if actions.contains(&Action::Bootstrap) => {
                    after_bootstrap(deps, &node_name).await?
                }
                n => n,
            };
            if let Some(n) = next {
                deps.publish_step(&msg.next(n), &event.meta.trace).await?;
            }
            let names: Vec<&'static str> = actions.iter().map(action_name).collect();
            tracing::info!(instance = %msg.instance, %step, actions = ?names, next = ?next.map(Step::as_str), "step done");
            Ok(Outcome::Done)
        }
    }
}

/// The two clients every step uses.
fn clients(deps: &Deps) -> Result<(&Compute, &Kube), StepError> {
    let compute = deps
        .compute
        .as_ref()
        .ok_or(StepError::NotConfigured("Compute client"))?;
    let kube = deps
        .kube
        .as_ref()
        .ok_or(StepError::NotConfigured("Kubernetes client"))?;
    Ok((compute, kube))
}

/// A bootstrap that observed no Node can finish after the VM has joined with an earlier token
/// and the chain has already finalized (a redelivered bootstrap, slowed by retries): its token
/// and join metadata would then be left behind. Re-reading the Node after writing closes the
/// race: if it exists now, `finalize` runs again and cleans up.
async fn after_bootstrap(deps: &Deps, node: &str) -> Result<Option<Step>, StepError> {
    let (_, kube) = clients(deps)?;
    Ok(kube.get_node(node).await?.map(|_| Step::Finalize))
}

fn node_name(msg: &StepMessage) -> String {
    msg.node
        .clone()
        .unwrap_or_else(|| msg.instance.name().to_string())
}

fn action_name(a: &Action) -> &'static str {
    match a {
        Action::Bootstrap => "bootstrap",
        Action::RevokeTokens(_) => "revoke-tokens",
        Action::SetAlias { .. } => "set-alias",
        Action::ReleaseAlias { .. } => "release-alias",
        Action::AddTags(_) => "add-tags",
        Action::SetProviderId(_) => "set-provider-id",
        Action::RemoveTaint => "remove-taint",
        Action::ClearJoinMetadata => "clear-join-metadata",
        Action::DeleteNode => "delete-node",
        Action::AnnounceWired => "announce-wired",
    }
}

/// Reads the VM, the Node and the VM's tokens, concurrently, and reduces them to facts.
async fn observe(deps: &Deps, msg: &StepMessage) -> Result<Observed, StepError> {
    let (compute, kube) = clients(deps)?;
    let name = node_name(msg);
    let (vm, node, tokens) = tokio::join!(
        compute.get_instance(&msg.instance),
        kube.get_node(&name),
        kube.list_bootstrap_tokens(Some(msg.instance.name())),
    );
    let now = time::OffsetDateTime::now_utc();
    let vm = vm?.as_ref().map(vm_facts);
    let node = node?.as_ref().map(node_facts);
    let tokens = tokens?.iter().map(|t| token_facts(t, now)).collect();
    Ok(Observed {
        instance: msg.instance.clone(),
        vm,
        node,
        tokens,
    })
}

async fn execute(
    deps: &Deps,
    msg: &StepMessage,
    obs: &Observed,
    node: &str,
    action: &Action,
    trace: &TraceContext,
) -> Result<(), StepError> {
    let (compute, kube) = clients(deps)?;
    let chain = deps
        .chain
        .as_deref()
        .ok_or(StepError::NotConfigured("chain settings"))?;
    let vm = &msg.instance;
    match action {
        Action::Bootstrap => {
            let ci = kube.cluster_info().await?;
            let endpoint = chain
                .api_server_endpoint
                .clone()
                .unwrap_or_else(|| host_port(&ci.server));
            let token = kube
                .create_bootstrap_token(
                    vm,
                    msg.instance_id.as_deref(),
                    chain.token_ttl,
                    &chain.token_groups,
                )
                .await?;
            let secret = token.expose();
            let provider_id = vm.provider_id();
            let yaml = join_configuration(
                &JoinParams {
                    api_server: &endpoint,
                    token: &secret,
                    ca_pin: &ci.ca_pin,
                    node_name: vm.name(),
                    provider_id: &provider_id,
                    taint_key: UNWIRED_TAINT,
                },
                chain.join_api,
            );
            let written = compute
                .update_metadata(vm, |m| {
                    m.insert(JOIN_METADATA_KEY.to_string(), yaml.clone());
                })
                .await;
            if let Err(e) = written {
                // Do not leave a valid token behind that no VM will use.
                let _ = kube.delete_bootstrap_token(&token.id).await;
                return Err(e.into());
            }
            tracing::info!(instance = %vm, token_id = %token.id, expiration = %token.expiration, "join configuration written");
        }
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
            match compute.set_alias_ranges(vm, &ranges).await {
                Ok(_) => {}
                Err(source @ ComputeError::AliasInUse { .. }) => {
                    let holder = alias_holder(deps, vm, *cidr).await;
                    let err = StepError::AliasConflict {
                        cidr: cidr.to_string(),
                        node: node.to_string(),
                        holder,
                        source: Box::new(source),
                    };
                    let _ = kube
                        .node_event(node, "Warning", "AliasRangeInUse", &err.to_string())
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
            compute.set_alias_ranges(vm, &ranges).await?;
        }
        Action::AddTags(tags) => {
            compute.add_tags(vm, tags).await?;
        }
        Action::SetProviderId(id) => match kube.set_provider_id(node, id).await {
            Ok(_) => {}
            Err(KubeError::ProviderIdConflict {
                node,
                current,
                wanted,
            }) => {
                let r = Refusal::ProviderIdConflict {
                    node,
                    current,
                    wanted,
                };
                report_refusal(deps, obs, &r).await;
                return Err(r.into());
            }
            Err(e) => return Err(e.into()),
        },
        Action::RemoveTaint => {
            kube.remove_taint(node, UNWIRED_TAINT).await?;
        }
        Action::ClearJoinMetadata => {
            compute
                .update_metadata(vm, |m| {
                    m.remove(JOIN_METADATA_KEY);
                })
                .await?;
        }
        Action::DeleteNode => {
            kube.delete_node(node).await?;
        }
        Action::AnnounceWired => {
            let pod_cidr = obs
                .node
                .as_ref()
                .and_then(|n| n.pod_cidr.clone())
                .unwrap_or_default();
            let body = serde_json::json!({
                "schema": "nodewire.node-wired/v1",
                "instance": vm,
                "node": node,
                "podCIDR": pod_cidr,
                "chain": msg.chain,
            });
            let out = OutboundMessage {
                data: serde_json::to_vec(&body).unwrap_or_default(),
                attributes: BTreeMap::from([
                    (attr::INSTANCE.to_string(), vm.to_string()),
                    (attr::CHAIN.to_string(), msg.chain.clone()),
                    (
                        attr::TRACEPARENT.to_string(),
                        trace.child().to_traceparent(),
                    ),
                ]),
                ordering_key: Some(vm.ordering_key()),
            };
            deps.bus
                .publish(&deps.config.pubsub.topic("node-wired"), out)
                .await?;
            let text = format!(
                "Node is wired: VM {vm} holds alias range {pod_cidr}; taint {UNWIRED_TAINT} removed"
            );
            if let Err(e) = kube.node_event(node, "Normal", "NodeWired", &text).await {
                tracing::warn!(error = %e, node, "recording the NodeWired event failed");
            }
        }
    }
    Ok(())
}

/// `HOST:PORT` of an `https://HOST:PORT/...` URL (port 443 when absent).
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

/// The VM whose nic0 holds an alias overlapping `cidr` (for the error message).
async fn alias_holder(
    deps: &Deps,
    me: &crate::names::InstanceRef,
    cidr: crate::names::Cidr,
) -> String {
    let Some(compute) = deps.compute.as_ref() else {
        return "another resource".into();
    };
    match compute.list_instances(None).await {
        Ok(vms) => vms
            .into_iter()
            .filter(|v| v.instance != *me)
            .find(|v| {
                v.nic0.as_ref().is_some_and(|n| {
                    n.aliases.iter().any(|a| {
                        a.cidr
                            .parse::<crate::names::Cidr>()
                            .is_ok_and(|c| c.overlaps(&cidr))
                    })
                })
            })
            .map_or_else(
                || "another resource (not a VM of this project)".into(),
                |v| v.instance.to_string(),
            ),
        Err(e) => format!("another resource (lookup failed: {e})"),
    }
}

/// Records a refusal as a Warning event on the Node, when there is one.
async fn report_refusal(deps: &Deps, obs: &Observed, r: &Refusal) {
    let (Some(kube), Some(node)) = (deps.kube.as_ref(), obs.node.as_ref()) else {
        return;
    };
    let reason = match r {
        Refusal::ProviderIdConflict { .. } => "ProviderIDConflict",
        Refusal::PodCidrOutsideRange { .. } | Refusal::InvalidPodCidr { .. } => {
            "PodCIDROutsideRange"
        }
        Refusal::NoIpForwarding(_) | Refusal::WrongSubnet { .. } => "NotWirable",
    };
    if let Err(e) = kube
        .node_event(&node.name, "Warning", reason, &r.to_string())
        .await
    {
        tracing::warn!(error = %e, node = %node.name, "recording the refusal event failed");
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
        assert!(StepError::Wait("x".into()).is_retryable());
        assert!(
            !StepError::Misrouted {
                expected: Step::Bootstrap,
                got: Step::Finalize
            }
            .is_retryable()
        );
        assert!(!StepError::Refused(Refusal::NoIpForwarding("vm".into())).is_retryable());
        assert!(
            StepError::Compute(ComputeError::Contention {
                call: "c",
                resends: 1
            })
            .is_retryable()
        );
    }
}
