//! The step functions: `bootstrap`, `assign-alias`, `tag-instance`, `provider-id`,
//! `finalize`, `release-alias`, `decommission`. One handler serves them all: it re-reads the
//! VM, its Node and its tokens (observe), asks the planner what is missing (plan), does only
//! that (act), and publishes the step the planner names (publish).
//!
//! # Idempotency
//! A redelivered or duplicated step re-reads the world and finds nothing left to do: no write is
//! sent for an aspect that already holds (the clients compare before writing), and a wired
//! node plans nothing at all.

use crate::act::deps::ChainDeps;
use crate::act::execute::{ActError, Target, execute, report_refusal};
use crate::adapter::{Classify, Handler, Outcome, PushEvent};
use crate::bus::BusError;
use crate::event::{Step, StepMessage};
use crate::observe::{self, ObserveError};
use crate::plan::{self, Action, Plan, Refusal};

/// Why a step did not complete.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("a {got} message was delivered to the {expected} function (subscription misrouted)")]
    Misrouted { expected: Step, got: Step },
    #[error("not yet: {0}")]
    Wait(String),
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Observe(#[from] ObserveError),
    #[error(transparent)]
    Act(#[from] ActError),
    #[error("publishing failed")]
    Publish(#[from] BusError),
}

impl Classify for StepError {
    fn is_retryable(&self) -> bool {
        match self {
            StepError::Wait(_) => true,
            StepError::Publish(e) => e.is_retryable(),
            StepError::Observe(e) => e.is_retryable(),
            StepError::Act(e) => e.is_retryable(),
            StepError::Misrouted { .. } | StepError::Refused(_) => false,
        }
    }
}

/// The first pause before re-reading while waiting within a delivery; it doubles up to
/// [`EXPECT_MAX_PAUSE`] (a VM boots in tens of seconds; a podCIDR comes within a second).
pub const EXPECT_FIRST_PAUSE: std::time::Duration = std::time::Duration::from_millis(500);
/// The longest pause between re-reads while waiting within a delivery (each re-read is a
/// Compute and a Kubernetes read: at 100 VMs booting at once, about 25 Compute reads a second).
pub const EXPECT_MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(4);

/// How long a delivery waits within itself for what is expected: half its deadline, so that
/// the step's own work (an operation of seconds) still fits in the other half.
pub fn expect_budget(request_timeout: std::time::Duration) -> std::time::Duration {
    request_timeout / 2
}

/// The adapter handler of the step function `step`.
pub fn handler(step: Step, deps: ChainDeps) -> impl Handler<StepMessage> {
    move |event: PushEvent<StepMessage>| {
        let deps = deps.clone();
        async move { handle(step, event, &deps).await }
    }
}

/// Runs one delivery of the step function `step`: observe → plan → act → publish.
///
/// # Errors
/// [`StepError`]; see [`Classify`] for which are retried.
pub async fn handle(
    step: Step,
    event: PushEvent<StepMessage>,
    deps: &ChainDeps,
) -> Result<Outcome, StepError> {
    let msg = event.payload;
    let trace = &event.meta.trace;
    if msg.step != step {
        return Err(StepError::Misrouted {
            expected: step,
            got: msg.step,
        });
    }
    // Judged before any read or write: a VM that is not ours is never touched.
    if let Err(why) = deps.plan.selector.admits(&msg.instance) {
        return Ok(Outcome::Ignored(why.0));
    }
    // The Node is named like its VM (nodewire's JoinConfiguration sets nodeRegistration.name
    // to the VM's name). The message's `node` field is not believed: a forged one could point a
    // step at another VM's Node (issue 10, item 3); the planner then checks that the Node is
    // provably this VM's.
    let node = msg.instance.name().to_string();
    // Only the steps that mint or revoke join tokens read them.
    let tokens = match step {
        Step::Bootstrap | Step::AssignAlias | Step::Finalize | Step::Decommission => {
            observe::Tokens::Read
        }
        Step::TagInstance | Step::ProviderId | Step::ReleaseAlias => observe::Tokens::Skip,
    };
    let mut obs = observe::one_vm(&deps.compute, &deps.kube, &msg.instance, &node, tokens).await?;
    // What is expected to happen by itself soon (a VM booting, a podCIDR) is waited for here,
    // re-reading, within half the delivery's deadline; a redelivery is asked only after that.
    let started = std::time::Instant::now();
    let budget = expect_budget(deps.base.config.limits.request_timeout);
    let mut pause = EXPECT_FIRST_PAUSE;
    let mut waited = false;
    let planned = loop {
        match plan::plan(step, &obs, &deps.plan) {
            Plan::Expect(why) if started.elapsed() + pause <= budget => {
                tracing::debug!(instance = %msg.instance, %step, reason = %why, "waiting within the delivery");
                tokio::time::sleep(pause).await;
                waited = true;
                pause = (pause * 2).min(EXPECT_MAX_PAUSE);
                obs = observe::one_vm(&deps.compute, &deps.kube, &msg.instance, &node, tokens)
                    .await?;
            }
            p => break p,
        }
    };
    if waited {
        tracing::info!(instance = %msg.instance, %step, waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX), "waited within the delivery");
    }
    let node = obs.node.as_ref().map_or(node, |n| n.name.clone());
    let (actions, next) = match planned {
        Plan::Ignore(why) => return Ok(Outcome::Ignored(why)),
        Plan::Wait(why) | Plan::Expect(why) => return Err(StepError::Wait(why)),
        Plan::Refuse(r) => {
            report_refusal(deps, &obs, &r).await;
            return Err(StepError::Refused(r));
        }
        Plan::Act { actions, next } => (actions, next),
    };
    let target = Target {
        instance: &msg.instance,
        instance_id: msg.instance_id.as_deref(),
        node: &node,
        chain: &msg.chain,
        observed: &obs,
        trace,
    };
    for a in &actions {
        execute(deps, &target, a).await?;
    }
    let next = match next {
        None if actions.contains(&Action::Bootstrap) => after_bootstrap(deps, &node).await?,
        n => n,
    };
    if let Some(n) = next {
        deps.base.publish_step(&msg.next(n), trace).await?;
    }
    let names: Vec<&'static str> = actions.iter().map(Action::name).collect();
    tracing::info!(instance = %msg.instance, %step, actions = ?names, next = ?next.map(Step::as_str), "step done");
    Ok(Outcome::Done)
}

/// A bootstrap that observed no Node can finish after the VM has joined with an earlier token
/// and the chain has already finalized (a redelivered bootstrap, slowed by retries): its token
/// and join metadata would then be left behind. Re-reading the Node after writing closes the
/// race: if it exists now, `finalize` runs again and cleans up.
async fn after_bootstrap(deps: &ChainDeps, node: &str) -> Result<Option<Step>, StepError> {
    let found = deps.kube.get_node(node).await.map_err(ObserveError::from)?;
    Ok(found.map(|_| Step::Finalize))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            StepError::Act(ActError::Compute(
                crate::act::compute::ComputeError::Contention {
                    call: "c",
                    resends: 1
                }
            ))
            .is_retryable()
        );
    }
}
