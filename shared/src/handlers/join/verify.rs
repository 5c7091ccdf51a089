//! The `join` service, verification: who is asking (the identity token, checked by the
//! adapter's OIDC verifier), which VM that really is (its `google.compute_engine` claims
//! against a fresh `instances.get`), and how often it may ask (a per-instance rate limit and a
//! one-use rule per identity token). Whether that VM may join is the planner's decision
//! (`plan::eligibility`), asked last.

use std::time::Instant;

use http::HeaderMap;

use super::{JoinService, MAX_REMEMBERED, RATE_LIMIT, RATE_WINDOW};
use crate::adapter::{Caller, RefusalClass, Refused};
use crate::names::InstanceRef;
use crate::observe;
use crate::plan::{Ineligible, VmFacts, eligibility};
use crate::text::shorten;

/// A VM proven to be the one its identity token names, and one the planner says may join.
pub(super) struct Verified {
    pub caller: Caller,
    pub vm: VmFacts,
    pub instance_id: String,
}

fn forbidden(reason: impl Into<String>) -> Refused {
    Refused::new(RefusalClass::Forbidden, reason)
}

/// A VM that may not join: 409 when a Node of its name exists or it joined before (a state),
/// 503 while a previous instance's Node is being deleted, 403 otherwise.
pub(super) fn ineligible(e: &Ineligible) -> Refused {
    let class = match e {
        Ineligible::NodeExists(_) | Ineligible::JoinedBefore(_) => RefusalClass::Conflict,
        // Cleared by nodewire within seconds: the script waits and asks again.
        Ineligible::StaleNode(_) => RefusalClass::Unavailable,
        _ => RefusalClass::Forbidden,
    };
    Refused::new(class, e.to_string())
}

impl JoinService {
    /// The token, the rate limit, the VM it names, and whether that VM may join (its Node
    /// aside: the caller decides what a Node means for its endpoint).
    pub(super) async fn verify(&self, headers: &HeaderMap) -> Result<Verified, Refused> {
        let caller = match self.auth.check(headers).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return Err(Refused::new(
                    RefusalClass::Failed,
                    "identity verification is off",
                ));
            }
            // 401 for a bad token; a valid token of another account is 403; 503 when
            // Google's keys cannot be fetched.
            Err(e) => return Err(Refused::from_auth(&e)),
        };
        let Some(ce) = caller.compute_engine.clone() else {
            return Err(Refused::new(
                RefusalClass::Unauthenticated,
                "not an instance identity token: ask the metadata server with format=full",
            ));
        };
        self.rate_limit(&ce.instance_id)?;
        let project = self.deps.compute.project();
        if ce.project_id != project {
            return Err(forbidden(format!(
                "the VM is in project {:?}, not this cluster's {project}",
                shorten(&ce.project_id, 64)
            )));
        }
        let instance = InstanceRef::new(&ce.project_id, &ce.zone, &ce.instance_name)
            .map_err(|e| forbidden(format!("the token names no valid VM: {e}")))?;
        let plan = &self.deps.plan;
        // By name first: a VM outside the selector is not even read.
        plan.selector
            .admits(&instance)
            .map_err(|why| forbidden(why.0))?;
        let view = self
            .deps
            .compute
            .get_instance(&instance)
            .await
            .map_err(|e| Refused::dependency("reading the VM", &e))?
            .ok_or_else(|| forbidden(format!("VM {instance} does not exist")))?;
        if view.id.map(|i| i.to_string()).as_deref() != Some(ce.instance_id.as_str()) {
            return Err(forbidden(format!(
                "VM {instance} has another instance id than the token's (deleted and created \
                 again?)"
            )));
        }
        let vm = observe::vm_facts(&view, time::OffsetDateTime::now_utc());
        eligibility::vm_may_join(&vm, plan, Some(&caller.email)).map_err(|e| ineligible(&e))?;
        Ok(Verified {
            caller,
            vm,
            instance_id: ce.instance_id,
        })
    }

    fn rate_limit(&self, instance_id: &str) -> Result<(), Refused> {
        let mut m = self
            .limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if m.len() >= MAX_REMEMBERED {
            m.retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
        }
        let e = m.entry(instance_id.to_string()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= RATE_WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
        if e.1 > RATE_LIMIT {
            let left = RATE_WINDOW.saturating_sub(now.saturating_duration_since(e.0));
            return Err(Refused::rate_limited(
                format!(
                    "more than {RATE_LIMIT} requests for instance {instance_id} in {}s",
                    RATE_WINDOW.as_secs()
                ),
                left.as_secs().max(1),
            ));
        }
        Ok(())
    }

    /// Marks the identity token used; refused when this process has seen it used before (the
    /// cluster's record, the annotations of the bootstrap token, covers the other processes).
    /// Forgets that the identity token was used: its request failed before an answer, so the
    /// VM may send it again (the cluster's record decides then).
    pub(super) fn release(&self, caller: &Caller) {
        self.used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&caller.token_digest);
    }

    pub(super) fn claim_once(&self, caller: &Caller) -> Result<(), Refused> {
        let mut m = self
            .used
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= MAX_REMEMBERED {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            m.retain(|_, exp| *exp > now);
            if m.len() >= MAX_REMEMBERED {
                m.clear();
            }
        }
        if m.insert(caller.token_digest.clone(), caller.expires_at)
            .is_some()
        {
            return Err(Refused::new(
                RefusalClass::Conflict,
                "this identity token was used already: ask the metadata server for a new one",
            ));
        }
        Ok(())
    }
}
