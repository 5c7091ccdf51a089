//! Zonal operations: every accepted mutation answers with one that goes PENDING → RUNNING →
//! DONE over the configured latency and applies the write when it completes;
//! `zoneOperations.get`, and `zoneOperations.wait`, which blocks up to its deadline and may
//! return before DONE.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::Response;
use tokio::time::Instant;

use super::model::API;
use super::{
    Key, Mutation, OpError, OpStatus, Operation, Sim, World, not_found, now_rfc3339, refusal,
};
use crate::server::{Answer, Call, run};

/// The instance changes nodewire sends, refused while another one runs on the same instance.
const BUSY_REFUSING: &[&str] = &[
    "setTags",
    "setMetadata",
    "setLabels",
    "updateNetworkInterface",
];

impl Sim {
    /// Registers an operation for `target`; the mutation is applied when it completes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_operation(
        self: &Arc<Self>,
        method: &str,
        project: &str,
        zone: &str,
        op_type: &str,
        target: (&str, u64),
        request_id: Option<String>,
        mutation: Mutation,
    ) -> Answer {
        let mut w = self.world();
        if let Some(rid) = &request_id
            && let Some(key) = w.request_ids.get(rid)
            && let Some(op) = w.operations.get(key)
        {
            // Same requestId: the same operation, applied at most once.
            return Answer::ok(op.to_json());
        }
        // Compute Engine refuses a second change to an instance while an operation on it is
        // still running, synchronously, with 400 `resourceNotReady` (the sample in
        // shared/formats/gce-error-bodies.json; issue 9, item 3). Inserts and deletes are the
        // user's and are not modelled here.
        let target_link = format!("{API}{}", target.0);
        if BUSY_REFUSING.contains(&op_type)
            && w.operations.values().any(|o| {
                o.target_link == target_link
                    && o.status != OpStatus::Done
                    && BUSY_REFUSING.contains(&o.op_type.as_str())
            })
        {
            return refusal(
                400,
                "resourceNotReady",
                &format!("The resource '{}' is not ready", target.0),
            );
        }
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let name = format!("operation-{now_ms}-{:012x}", self.chaos.draw_u64() >> 16);
        let op = Operation {
            project: project.to_string(),
            zone: zone.to_string(),
            name: name.clone(),
            id: self.chaos.draw_u64() >> 2,
            op_type: op_type.to_string(),
            target_link,
            target_id: target.1,
            status: OpStatus::Pending,
            insert_time: now_rfc3339(),
            start_time: None,
            end_time: None,
            client_operation_id: request_id.clone(),
            error: None,
        };
        let key = (project.to_string(), zone.to_string(), name);
        w.operations.insert(key.clone(), op);
        if let Some(rid) = request_id {
            w.request_ids.insert(rid, key.clone());
        }
        let async_fail = self.chaos.draw_async_failure(method);
        let latency = match (op_type, self.config.nic_op_latency) {
            ("updateNetworkInterface", Some(nic)) => nic,
            _ => self.config.op_latency,
        };
        if latency.is_zero() {
            complete(&mut w, &key, mutation, async_fail);
            let body = operation_json(&w, &key);
            drop(w);
            self.changed.notify_waiters();
            return Answer::ok(body);
        }
        let body = operation_json(&w, &key);
        drop(w);
        let sim = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(latency / 3).await;
            {
                let mut w = sim.world();
                if let Some(op) = w.operations.get_mut(&key) {
                    op.status = OpStatus::Running;
                    op.start_time = Some(now_rfc3339());
                }
            }
            sim.changed.notify_waiters();
            tokio::time::sleep(latency - latency / 3).await;
            {
                let mut w = sim.world();
                complete(&mut w, &key, mutation, async_fail);
            }
            sim.changed.notify_waiters();
        });
        Answer::ok(body)
    }

    /// Resolves with what `check` finds in the world, checking again after every change (and
    /// every second, for changes made around the API), or `None` at `deadline`.
    pub(super) async fn watch<T>(
        &self,
        deadline: Option<Instant>,
        check: impl Fn(&World) -> Option<T>,
    ) -> Option<T> {
        loop {
            let notified = self.changed.notified();
            let found = check(&self.world());
            if found.is_some() {
                return found;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return None;
            }
            let recheck = now + Duration::from_secs(1);
            let wake = deadline.map_or(recheck, |d| d.min(recheck));
            let _ = tokio::time::timeout_at(wake, notified).await;
        }
    }

    /// The operation as the API returns it, or 404.
    fn operation(&self, key: &Key) -> Result<Answer, Answer> {
        let (project, zone, op) = key;
        self.world()
            .operations
            .get(key)
            .map(|o| Answer::ok(o.to_json()))
            .ok_or_else(|| not_found(&format!("projects/{project}/zones/{zone}/operations/{op}")))
    }
}

fn operation_json(w: &World, key: &Key) -> serde_json::Value {
    w.operations
        .get(key)
        .map(Operation::to_json)
        .unwrap_or_default()
}

/// Ends the operation DONE: with the mutation's error, or an internal error when the draw said
/// it fails asynchronously (the mutation is then not applied).
fn complete(w: &mut World, key: &Key, mutation: Mutation, async_fail: bool) {
    let result = if async_fail {
        Err(OpError::internal())
    } else {
        mutation(w)
    };
    if let Some(op) = w.operations.get_mut(key) {
        op.status = OpStatus::Done;
        if op.start_time.is_none() {
            op.start_time = Some(now_rfc3339());
        }
        op.end_time = Some(now_rfc3339());
        op.error = result.err();
    }
}

pub(super) async fn get(State(sim): State<Arc<Sim>>, Path(key): Path<Key>, call: Call) -> Response {
    run(&sim, "zoneOperations.get", &call, &[], |sim| {
        sim.operation(&key)
    })
    .await
}

pub(super) async fn wait(
    State(sim): State<Arc<Sim>>,
    Path(key): Path<Key>,
    call: Call,
) -> Response {
    // Block (outside the request-log wrapper) until DONE, the deadline, or an early return.
    let early = sim.chaos.draw_bool(sim.config.wait_early_return);
    let limit = if early {
        sim.config.wait_max / 4
    } else {
        sim.config.wait_max
    };
    let deadline = Instant::now() + limit;
    sim.watch(Some(deadline), |w| {
        w.operations
            .get(&key)
            .is_none_or(|o| o.status == OpStatus::Done)
            .then_some(())
    })
    .await;
    run(&sim, "zoneOperations.wait", &call, &[], |sim| {
        sim.operation(&key)
    })
    .await
}
