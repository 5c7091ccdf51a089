//! Function `instance-events`: a Compute Engine audit entry → the first step of a chain.
//! A created VM of ours gets `bootstrap`; a deleted one gets `decommission`.

use crate::act::deps::Deps;
use crate::adapter::{Handler, Outcome, PushEvent};
use crate::event::{Cause, CauseSource, InstanceEvent, Step, StepMessage};

use super::RouteError;

/// The adapter handler of `instance-events` over `deps`.
pub fn handler(deps: Deps) -> impl Handler<InstanceEvent> {
    move |event| {
        let deps = deps.clone();
        async move { handle(event, &deps).await }
    }
}

/// # Idempotency
/// A redelivered entry publishes the same step again; steps re-read state, so that is harmless.
///
/// # Errors
/// [`RouteError::Publish`] (retryable) when the step could not be published.
pub async fn handle(event: PushEvent<InstanceEvent>, deps: &Deps) -> Result<Outcome, RouteError> {
    let (change, step) = match event.payload {
        InstanceEvent::Ignored(why) => return Ok(Outcome::Ignored(why)),
        InstanceEvent::Created(c) => (c, Step::Bootstrap),
        InstanceEvent::Deleted(c) => (c, Step::Decommission),
    };
    if let Err(why) = deps.config.selector.admits(&change.instance) {
        return Ok(Outcome::Ignored(why.0));
    }
    let trace = &event.meta.trace;
    let mut msg = StepMessage::new(
        step,
        change.instance.clone(),
        Cause {
            source: CauseSource::GceAudit,
            id: change.operation_id.clone(),
        },
        trace.trace_id(),
    );
    msg.instance_id = change.instance_id.map(|id| id.to_string());
    msg.node = Some(change.instance.name().to_string());
    deps.publish_step(&msg, trace)
        .await
        .map_err(|source| RouteError::Publish {
            step,
            instance: change.instance.to_string(),
            source,
        })?;
    tracing::info!(instance = %change.instance, %step, method = change.method, "published step");
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::Classify;
    use crate::bus::InProcessBus;
    use crate::event::{Decode, InstanceChange};
    use crate::names::InstanceRef;

    fn deps(prefix: Option<&'static str>) -> (Deps, InProcessBus) {
        match prefix {
            Some(p) => crate::testing::deps("instance-events", &[("NODEWIRE_INSTANCE_PREFIX", p)]),
            None => crate::testing::deps("instance-events", &[]),
        }
    }
    fn created(project: &str, name: &str) -> PushEvent<InstanceEvent> {
        PushEvent::new(InstanceEvent::Created(InstanceChange {
            instance: InstanceRef::new(project, "us-central1-a", name).expect("valid"),
            instance_id: Some(7),
            operation_id: Some("op-1".into()),
            timestamp: None,
            method: "compute.instances.insert",
        }))
    }

    #[tokio::test]
    async fn created_vm_gets_bootstrap() {
        let (deps, bus) = deps(None);
        let ev = created("example-project", "k8s-worker-1");
        let trace = ev.meta.trace;
        assert_eq!(handle(ev, &deps).await.expect("ok"), Outcome::Done);
        let out = bus.published_to("projects/example-project/topics/nodewire-bootstrap");
        assert_eq!(out.len(), 1);
        let m = &out[0].message;
        assert_eq!(
            m.ordering_key.as_deref(),
            Some("example-project/us-central1-a/k8s-worker-1")
        );
        assert_eq!(m.attributes["step"], "bootstrap");
        assert_eq!(
            m.attributes["instance"],
            "projects/example-project/zones/us-central1-a/instances/k8s-worker-1"
        );
        assert!(m.attributes["traceparent"].contains(&trace.trace_id()));
        let step = StepMessage::decode(&m.data).expect("valid step");
        assert_eq!(step.step, Step::Bootstrap);
        assert_eq!(step.chain, trace.trace_id());
        assert_eq!(step.instance_id.as_deref(), Some("7"));
        assert_eq!(step.cause.id.as_deref(), Some("op-1"));
    }

    #[tokio::test]
    async fn deleted_vm_gets_decommission() {
        let (deps, bus) = deps(None);
        let mut ev = created("example-project", "k8s-worker-1");
        if let InstanceEvent::Created(c) = ev.payload {
            ev.payload = InstanceEvent::Deleted(c);
        }
        handle(ev, &deps).await.expect("ok");
        assert_eq!(
            bus.published_to("projects/example-project/topics/nodewire-decommission")
                .len(),
            1
        );
        assert_eq!(bus.published().len(), 1);
    }

    #[tokio::test]
    async fn not_ours_is_ignored() {
        let (deps, bus) = deps(Some("k8s-"));
        let r = handle(created("other-project", "k8s-worker-1"), &deps)
            .await
            .expect("ok");
        assert!(
            matches!(r, Outcome::Ignored(ref why) if why.contains("other-project")),
            "{r:?}"
        );
        let r = handle(created("example-project", "web-1"), &deps)
            .await
            .expect("ok");
        assert!(
            matches!(r, Outcome::Ignored(ref why) if why.contains("prefix")),
            "{r:?}"
        );
        let r = handle(PushEvent::new(InstanceEvent::Ignored("x".into())), &deps)
            .await
            .expect("ok");
        assert_eq!(r, Outcome::Ignored("x".into()));
        assert!(bus.published().is_empty());
    }

    #[tokio::test]
    async fn publish_failure_is_retryable() {
        let (deps, bus) = deps(None);
        bus.fail_topic("projects/example-project/topics/nodewire-bootstrap");
        let err = handle(created("example-project", "k8s-worker-1"), &deps)
            .await
            .expect_err("fails");
        assert!(err.is_retryable());
    }
}
