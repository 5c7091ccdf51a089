//! Instance mutations: the prologue every one of them starts from (location, `requestId`, body,
//! the instance as it is), and the fingerprinted whole-field writes `setTags`, `setMetadata` and
//! `setLabels`. A stale fingerprint is refused with 412 `conditionNotMet` at once, and checked
//! again when the operation completes.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use nodewire::names::validate_gce_name;
use serde_json::{Value, json};

use super::{
    Fingerprint, Instance, Key, Mutation, OpError, Sim, World, instance_link, invalid, not_found,
    refusal, validate_location,
};
use crate::server::{Answer, Call, Malformed, Query, parse_query, run};

/// The JSON body of a mutation; an empty one is `{}`.
pub(super) fn parse_body(body: &[u8]) -> Result<Value, Answer> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| invalid(&format!("Invalid JSON payload received. {e}")))
}

/// The optional `requestId` that makes a mutation idempotent.
pub(super) fn request_id(q: &Query) -> Result<Option<String>, Answer> {
    match q.get("requestId").filter(|r| !r.is_empty()) {
        None => Ok(None),
        Some(r) if r.len() <= 64 && r.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') => {
            Ok(Some(r.clone()))
        }
        Some(r) => Err(invalid(&format!(
            "Invalid value for field 'requestId': '{r}'. The requestId must be a valid UUID."
        ))),
    }
}

/// What every instance mutation starts from: a valid location, the query, its `requestId`, the
/// body, and the instance as it is now.
pub(super) struct Mutating {
    pub(super) q: Query,
    pub(super) rid: Option<String>,
    pub(super) body: Value,
    pub(super) key: Key,
    pub(super) link: String,
    pub(super) current: Instance,
}

impl Mutating {
    /// Checks, in the API's order, everything a mutation of `project/zone/name` needs before
    /// its own validation.
    pub(super) fn read(
        sim: &Sim,
        (project, zone, name): (&str, &str, &str),
        q: Option<&str>,
        body: &[u8],
    ) -> Result<Self, Answer> {
        validate_location(project, zone)?;
        let q = parse_query(q, Malformed::Skip);
        let rid = request_id(&q)?;
        // A requestId seen before answers with that operation, before anything else is looked
        // at: the request was received, so this one is ignored (the answer of the first may
        // have been lost; its fingerprint may be stale by now).
        if let Some(rid) = &rid {
            let w = sim.world();
            if let Some(op) = w.request_ids.get(rid).and_then(|k| w.operations.get(k)) {
                return Err(Answer::ok(op.to_json()));
            }
        }
        let body = parse_body(body)?;
        let key = (project.to_string(), zone.to_string(), name.to_string());
        let link = instance_link(project, zone, name);
        let current = sim
            .world()
            .instances
            .get(&key)
            .cloned()
            .ok_or_else(|| not_found(&link))?;
        Ok(Self {
            q,
            rid,
            body,
            key,
            link,
            current,
        })
    }
}

pub(super) async fn instance_action(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name, action)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
    call: Call,
    body: Bytes,
) -> Response {
    let api_method = format!("instances.{action}");
    run(&sim, &api_method, &call, &body, |sim| {
        let m = Mutating::read(sim, (&project, &zone, &name), q.as_deref(), &body)?;
        let mutation = match action.as_str() {
            "setTags" => set_tags(sim, &m)?,
            "setMetadata" => set_metadata(sim, &m)?,
            "setLabels" => set_labels(sim, &m)?,
            "stop" => stop(sim, &m),
            "start" => start(sim, &m),
            "suspend" => suspend(sim, &m)?,
            "resume" => resume(sim, &m)?,
            other => return Err(invalid(&format!("Unknown or unsupported method {other}"))),
        };
        let target = (m.link.as_str(), m.current.id);
        Ok(sim.start_operation(
            &api_method,
            &project,
            &zone,
            &action,
            target,
            m.rid,
            mutation,
        ))
    })
    .await
}

/// `instances.stop` (issue 21): a RUNNING VM is STOPPING at once and TERMINATED when its
/// operation is done; its instance id, NICs (alias ranges included), tags, labels and
/// metadata stay ("Stop or restart a VM": a stopped VM keeps its resources but not its
/// memory). Stopping a VM that is not running changes nothing.
fn stop(sim: &Sim, m: &Mutating) -> Mutation {
    let key = m.key.clone();
    let id = m.current.id;
    if let Some(i) = sim.world().instances.get_mut(&key)
        && i.status == "RUNNING"
    {
        i.status = "STOPPING".into();
    }
    Box::new(move |w: &mut World| {
        if let Some(i) = w.instances.get_mut(&key).filter(|i| i.id == id)
            && i.status == "STOPPING"
        {
            i.status = "TERMINATED".into();
        }
        Ok(())
    })
}

/// `instances.start`: a TERMINATED VM is STAGING at once and RUNNING when its operation is
/// done, with the same instance id; starting a VM that is not TERMINATED changes nothing.
fn start(sim: &Sim, m: &Mutating) -> Mutation {
    let key = m.key.clone();
    let id = m.current.id;
    if let Some(i) = sim.world().instances.get_mut(&key)
        && i.status == "TERMINATED"
    {
        i.status = "STAGING".into();
    }
    Box::new(move |w: &mut World| {
        if let Some(i) = w.instances.get_mut(&key).filter(|i| i.id == id)
            && i.status == "STAGING"
        {
            i.status = "RUNNING".into();
        }
        Ok(())
    })
}

/// `instances.suspend` (issue 21): only a RUNNING VM can be suspended; any other state is
/// refused synchronously with `UNSUPPORTED_OPERATION` ("Troubleshooting suspend and resume",
/// Invalid instance state: "You cannot suspend an instance that is stopped or terminated",
/// "… an already suspended instance"). It is SUSPENDING at once and SUSPENDED when its
/// operation is done, keeping its instance id, NICs and alias ranges (the guest's memory is
/// saved; "Suspend or resume a Compute Engine instance").
fn suspend(sim: &Sim, m: &Mutating) -> Result<Mutation, Answer> {
    let key = m.key.clone();
    let id = m.current.id;
    {
        let mut w = sim.world();
        let Some(i) = w.instances.get_mut(&key) else {
            return Err(not_found(&m.link));
        };
        match i.status.as_str() {
            "RUNNING" => i.status = "SUSPENDING".into(),
            "SUSPENDING" | "SUSPENDED" => {
                return Err(unsupported(
                    "You cannot suspend an already suspended instance.",
                ));
            }
            _ => {
                return Err(unsupported(
                    "You cannot suspend an instance that is stopped or terminated.",
                ));
            }
        }
    }
    Ok(Box::new(move |w: &mut World| {
        if let Some(i) = w.instances.get_mut(&key).filter(|i| i.id == id)
            && i.status == "SUSPENDING"
        {
            i.status = "SUSPENDED".into();
        }
        Ok(())
    }))
}

/// `instances.resume`: "resumes an instance that was suspended" (the method's reference);
/// the simulator refuses any other state the way `suspend` does (the real message for this
/// case is not documented). The VM is RUNNING again when the operation is done, same id, its
/// guest carrying on from where it was suspended (no boot: the startup script does not run).
fn resume(sim: &Sim, m: &Mutating) -> Result<Mutation, Answer> {
    let key = m.key.clone();
    let id = m.current.id;
    match sim.world().instances.get(&key).map(|i| i.status.clone()) {
        None => return Err(not_found(&m.link)),
        Some(s) if s == "SUSPENDED" => {}
        Some(_) => {
            return Err(unsupported(
                "You can only resume an instance that is suspended.",
            ));
        }
    }
    Ok(Box::new(move |w: &mut World| {
        if let Some(i) = w.instances.get_mut(&key).filter(|i| i.id == id)
            && i.status == "SUSPENDED"
        {
            i.status = "RUNNING".into();
        }
        Ok(())
    }))
}

/// 400 `UNSUPPORTED_OPERATION`, as Compute Engine refuses a lifecycle change the VM's state
/// does not allow.
fn unsupported(message: &str) -> Answer {
    refusal(400, "UNSUPPORTED_OPERATION", message)
}

fn set_tags(sim: &Sim, m: &Mutating) -> Result<Mutation, Answer> {
    Field::Tags.check(m)?;
    let items: Vec<String> = match m.body.get("items") {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().unwrap_or("").to_string())
            .collect(),
        Some(_) => return Err(invalid("Invalid value for field 'resource.items'.")),
    };
    if let Some(bad) = items.iter().find(|t| validate_gce_name("tag", t).is_err()) {
        return Err(invalid(&format!(
            "Invalid value for field 'resource.tags.items[]': '{bad}'. Must be a match of regex '(?:[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?)'"
        )));
    }
    if items.len() > 64 {
        return Err(invalid(
            "Invalid value for field 'resource.tags.items': too many tags (max 64).",
        ));
    }
    Ok(Field::Tags.write(sim, m, move |inst| {
        let mut seen = HashSet::new();
        inst.tags = items
            .into_iter()
            .filter(|t| seen.insert(t.clone()))
            .collect();
    }))
}

fn set_metadata(sim: &Sim, m: &Mutating) -> Result<Mutation, Answer> {
    Field::Metadata.check(m)?;
    let mut items = Vec::new();
    let mut keys = HashSet::new();
    let mut total = 0usize;
    for it in m
        .body
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let k = it
            .get("key")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let v = it
            .get("value")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let key_ok = !k.is_empty()
            && k.len() <= 128
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !key_ok {
            return Err(invalid(&format!(
                "Invalid value for field 'resource.items[].key': '{k}'. Must be a match of regex '[a-zA-Z0-9-_]{{1,128}}'"
            )));
        }
        if !keys.insert(k.clone()) {
            return Err(invalid(&format!(
                "Invalid value for field 'resource.items[].key': '{k}'. Duplicate keys are not allowed."
            )));
        }
        if v.len() > 256 * 1024 {
            return Err(invalid(&format!(
                "Value for metadata key '{k}' exceeds 256 KB."
            )));
        }
        total += k.len() + v.len();
        items.push((k, v));
    }
    if total > 512 * 1024 {
        return Err(invalid("Metadata exceeds the total limit of 512 KB."));
    }
    Ok(Field::Metadata.write(sim, m, move |inst| inst.metadata = items))
}

fn set_labels(sim: &Sim, m: &Mutating) -> Result<Mutation, Answer> {
    Field::Labels.check(m)?;
    let labels: BTreeMap<String, String> = m
        .body
        .get("labels")
        .and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    Ok(Field::Labels.write(sim, m, move |inst| inst.labels = labels))
}

/// A fingerprinted part of an instance that its `set*` method replaces whole.
#[derive(Debug, Clone, Copy)]
enum Field {
    Tags,
    Metadata,
    Labels,
}

impl Field {
    /// The body field that carries the fingerprint the write is based on.
    fn sent_in(self) -> &'static str {
        match self {
            Field::Tags | Field::Metadata => "fingerprint",
            Field::Labels => "labelFingerprint",
        }
    }

    fn current(self, inst: &Instance) -> Fingerprint {
        match self {
            Field::Tags => inst.tags_fp,
            Field::Metadata => inst.metadata_fp,
            Field::Labels => inst.labels_fp,
        }
    }

    fn slot(self, inst: &mut Instance) -> &mut Fingerprint {
        match self {
            Field::Tags => &mut inst.tags_fp,
            Field::Metadata => &mut inst.metadata_fp,
            Field::Labels => &mut inst.labels_fp,
        }
    }

    /// Refuses with 412 a write without the current fingerprint (a missing or unreadable one
    /// counts as stale).
    fn check(self, m: &Mutating) -> Result<(), Answer> {
        let sent = m
            .body
            .get(self.sent_in())
            .and_then(Value::as_str)
            .and_then(Fingerprint::parse);
        if sent == Some(self.current(&m.current)) {
            return Ok(());
        }
        let message = match self {
            Field::Tags => "Supplied fingerprint does not match current tags fingerprint.",
            Field::Metadata => "Supplied fingerprint does not match current metadata fingerprint.",
            Field::Labels => "Labels fingerprint either invalid or resource labels have changed",
        };
        Err(refusal(412, "conditionNotMet", message))
    }

    /// The write as applied when the operation completes: if the field changed since the
    /// request, the operation fails with `CONDITION_NOT_MET`; otherwise `set` replaces it and
    /// it gets a new fingerprint (drawn now).
    fn write(
        self,
        sim: &Sim,
        m: &Mutating,
        set: impl FnOnce(&mut Instance) + Send + 'static,
    ) -> Mutation {
        let expected = self.current(&m.current);
        let new_fp = sim.fp();
        let (key, link) = (m.key.clone(), m.link.clone());
        Box::new(move |w: &mut World| {
            let inst = w
                .instances
                .get_mut(&key)
                .ok_or_else(|| OpError::not_found(&link))?;
            if self.current(inst) != expected {
                let what = match self {
                    Field::Tags => "tags",
                    Field::Metadata => "metadata",
                    Field::Labels => "labels",
                };
                return Err(OpError::condition_not_met(what));
            }
            set(inst);
            *self.slot(inst) = new_fp;
            Ok(())
        })
    }
}

impl super::ComputeSim {
    /// Compute Engine preempts a Spot VM (issue 21): no API call of the project's, so no Admin
    /// Activity entry; the VM is STOPPING at once and TERMINATED when the operation of type
    /// `compute.instances.preempted` is done ("Create and use Spot VMs", Detect preemption:
    /// that operation type is how preemptions are found). Its id, NICs and alias ranges stay,
    /// as with a stop (the termination action STOP, the default). A VM that is not RUNNING is
    /// not preempted.
    ///
    /// # Errors
    /// When the VM does not exist or is not RUNNING.
    pub fn preempt(&self, project: &str, zone: &str, name: &str) -> Result<(), String> {
        let sim = self.sim();
        let key = (project.to_string(), zone.to_string(), name.to_string());
        let id = {
            let mut w = sim.world();
            let i = w
                .instances
                .get_mut(&key)
                .ok_or_else(|| format!("no VM {name} in {zone}"))?;
            if i.status != "RUNNING" {
                return Err(format!("VM {name} is {}, not RUNNING", i.status));
            }
            i.status = "STOPPING".into();
            i.id
        };
        let link = instance_link(project, zone, name);
        let k = key.clone();
        let ans = sim.start_operation(
            "instances.preempted",
            project,
            zone,
            "compute.instances.preempted",
            (&link, id),
            None,
            Box::new(move |w: &mut World| {
                if let Some(i) = w.instances.get_mut(&k).filter(|i| i.id == id)
                    && i.status == "STOPPING"
                {
                    i.status = "TERMINATED".into();
                }
                Ok(())
            }),
        );
        if !ans.status.is_success() {
            return Err(format!("preempting {name}: HTTP {}", ans.status));
        }
        Ok(())
    }
}
