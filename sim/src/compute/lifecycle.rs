//! Creating and deleting VMs: `instances.insert` (a name taken, or being created, is 409
//! `alreadyExists`; nic0's subnetwork must be in the zone's region) and `instances.delete`. As
//! Cloud Logging's sink, each publishes its audit LogEntries: the `first` one when the
//! operation is accepted, the `last` one (with the error, if any) when it is DONE.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use nodewire::names::validate_gce_name;
use serde_json::{Value, json};

use super::mutations::{parse_body, request_id};
use super::subnets::{next_ip, subnet_ref};
use super::{
    Instance, Mutation, Nic, OpError, OpStatus, Sim, World, instance_link, invalid, not_found,
    now_rfc3339, refusal, validate_location,
};
use crate::server::{Answer, Call, Malformed, parse_query, run};

pub(super) async fn insert(
    State(sim): State<Arc<Sim>>,
    Path((project, zone)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    call: Call,
    body: Bytes,
) -> Response {
    run(&sim, "instances.insert", &call, &body, |sim| {
        validate_location(&project, &zone)?;
        let rid = request_id(&parse_query(q.as_deref(), Malformed::Skip))?;
        let body = parse_body(&body)?;
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
        if validate_gce_name("instance name", &name).is_err() {
            return Err(invalid(&format!("Invalid value for field 'resource.name': '{name}'. Must be a match of regex '[a-z](?:[-a-z0-9]{{0,61}}[a-z0-9])?'")));
        }
        let key = (project.clone(), zone.clone(), name.clone());
        let link = instance_link(&project, &zone, &name);
        let region = zone.rsplit_once('-').map_or(zone.as_str(), |(r, _)| r).to_string();
        let Some(nic_json) = body.get("networkInterfaces").and_then(Value::as_array).and_then(|a| a.first()).cloned() else {
            return Err(invalid("Invalid value for field 'resource.networkInterfaces': ''. At least one network interface is required."));
        };
        let Some(subnet_key) = nic_json.get("subnetwork").and_then(Value::as_str).and_then(|s| subnet_ref(&project, s)) else {
            return Err(invalid("Invalid value for field 'resource.networkInterfaces[0].subnetwork': a subnetwork is required."));
        };
        if subnet_key.1 != region {
            return Err(invalid(&format!("Invalid value for field 'resource.networkInterfaces[0].subnetwork': subnetwork is in region '{}', not '{region}'.", subnet_key.1)));
        }
        // One service account per VM at most; `default` is the project's Compute Engine default
        // account (https://cloud.google.com/compute/docs/access/service-accounts).
        let service_accounts: Vec<String> = match body.get("serviceAccounts") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(a)) if a.len() <= 1 => {
                let mut out = vec![];
                for sa in a {
                    match sa.get("email").and_then(Value::as_str) {
                        Some("default") => out.push(format!("{}-compute@developer.gserviceaccount.com", project_number(&project))),
                        Some(e) if e.contains('@') && e.len() <= 254 => out.push(e.to_ascii_lowercase()),
                        _ => return Err(invalid("Invalid value for field 'resource.serviceAccounts[0].email': a service account email is required.")),
                    }
                }
                out
            }
            Some(Value::Array(_)) => return Err(invalid("Invalid value for field 'resource.serviceAccounts': at most one service account per instance is supported.")),
            Some(_) => return Err(invalid("Invalid value for field 'resource.serviceAccounts': not a list.")),
        };
        let machine_type = body.get("machineType").and_then(Value::as_str).unwrap_or("n2-standard-4");
        let machine_type = machine_type.rsplit('/').next().unwrap_or(machine_type).to_string();
        let mut w = sim.world();
        if w.instances.contains_key(&key) || w.pending_inserts.contains(&key) {
            return Err(refusal(409, "alreadyExists", &format!("The resource '{link}' already exists")));
        }
        let Some((subnet, _)) = w.subnets.get(&subnet_key).cloned() else {
            return Err(not_found(&format!("projects/{}/regions/{}/subnetworks/{}", subnet_key.0, subnet_key.1, subnet_key.2)));
        };
        // Alias ranges asked for at creation ("Configuring alias IP ranges": explicit, or a
        // size such as `/24` for Compute Engine to allocate), checked now for syntax and
        // range, allocated when the operation ends.
        let wanted = super::nics::wanted_ranges(&nic_json, &subnet)?;
        super::nics::refuse_overlap(&wanted)?;
        let ip = next_ip(&mut w, &subnet);
        w.pending_inserts.insert(key.clone());
        drop(w);
        let release_delay = sim.config.release_delay;
        let id = sim.chaos.draw_u64() >> 2;
        let inst = Instance {
            project: project.clone(),
            zone: zone.clone(),
            name: name.clone(),
            id,
            created: now_rfc3339(),
            machine_type,
            status: if sim.config.boot_delay.is_zero() { "RUNNING" } else { "STAGING" }.into(),
            can_ip_forward: body.get("canIpForward").and_then(Value::as_bool).unwrap_or(false),
            tags: body.pointer("/tags/items").and_then(Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default(),
            tags_fp: sim.fp(),
            labels: body.get("labels").and_then(Value::as_object).map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default(),
            labels_fp: sim.fp(),
            metadata: body.pointer("/metadata/items").and_then(Value::as_array).map(|a| a.iter().map(|it| (it["key"].as_str().unwrap_or_default().to_string(), it["value"].as_str().unwrap_or_default().to_string())).collect()).unwrap_or_default(),
            metadata_fp: sim.fp(),
            nics: vec![Nic { name: "nic0".into(), network_link: subnet.network_link(), subnet: subnet_key, network_ip: ip, aliases: vec![], fingerprint: sim.fp() }],
            service_accounts,
        };
        let boot = (!sim.config.boot_delay.is_zero()).then(|| (sim.clone(), key.clone(), sim.config.boot_delay));
        let mut inst = inst;
        let mutation: Mutation = Box::new(move |w: &mut World| {
            w.pending_inserts.remove(&key);
            // A range taken or none left fails the insert's operation: no VM.
            let (taken, cooling) = super::nics::subnet_use(w, &inst.nics[0].subnet, None, release_delay);
            inst.nics[0].aliases = super::nics::allocate(wanted, &subnet, &taken, &cooling)?;
            w.instances.insert(key, inst);
            // The VM boots: STAGING until the boot delay has passed, then RUNNING.
            if let Some((sim, key, delay)) = boot {
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if let Some(i) = sim.world().instances.get_mut(&key).filter(|i| i.status == "STAGING") {
                        i.status = "RUNNING".into();
                    }
                });
            }
            Ok(())
        });
        let audited = Audited { project: project.clone(), zone: zone.clone(), name, id, method: "insert" };
        Ok(audited.start_operation(sim, &link, rid, mutation))
    })
    .await
}

pub(super) async fn delete(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    call: Call,
) -> Response {
    run(&sim, "instances.delete", &call, &[], |sim| {
        validate_location(&project, &zone)?;
        let rid = request_id(&parse_query(q.as_deref(), Malformed::Skip))?;
        let key = (project.clone(), zone.clone(), name.clone());
        let link = instance_link(&project, &zone, &name);
        let Some(id) = sim.world().instances.get(&key).map(|i| i.id) else {
            return Err(not_found(&link));
        };
        let gone = link.clone();
        let mutation: Mutation = Box::new(move |w: &mut World| {
            w.instances
                .remove(&key)
                .map(|_| ())
                .ok_or_else(|| OpError::not_found(&gone))
        });
        let audited = Audited {
            project: project.clone(),
            zone: zone.clone(),
            name: name.clone(),
            id,
            method: "delete",
        };
        Ok(audited.start_operation(sim, &link, rid, mutation))
    })
    .await
}

/// The VM and the method an audit entry is about.
struct Audited {
    project: String,
    zone: String,
    name: String,
    id: u64,
    /// `insert` or `delete`.
    method: &'static str,
}

impl Audited {
    /// Starts the operation of `instances.{method}`, publishes its `first` audit entry, and
    /// the `last` one once it is DONE.
    fn start_operation(
        self,
        sim: &Arc<Sim>,
        link: &str,
        rid: Option<String>,
        mutation: Mutation,
    ) -> Answer {
        let ans = sim.start_operation(
            &format!("instances.{}", self.method),
            &self.project,
            &self.zone,
            self.method,
            (link, self.id),
            rid,
            mutation,
        );
        let op_name = ans.body["name"].as_str().unwrap_or_default().to_string();
        sim.audit.publish(self.entry(&op_name, true, None));
        self.publish_last(sim.clone(), op_name);
        ans
    }

    /// Publishes the `last` audit entry once the operation is DONE (with the error, if any).
    fn publish_last(self, sim: Arc<Sim>, op: String) {
        if !sim.audit.is_on() {
            return;
        }
        tokio::spawn(async move {
            let key = (self.project.clone(), self.zone.clone(), op.clone());
            let done = sim.watch(None, |w| {
                w.operations
                    .get(&key)
                    .filter(|o| o.status == OpStatus::Done)
                    .cloned()
            });
            let Some(o) = done.await else { return };
            if self.method == "insert" && o.error.is_some() {
                sim.world().pending_inserts.remove(&(
                    self.project.clone(),
                    self.zone.clone(),
                    self.name.clone(),
                ));
            }
            sim.audit.publish(self.entry(&op, false, o.error.as_ref()));
        });
    }

    /// The Admin Activity audit LogEntry of operation `op`, `first` or `last`.
    fn entry(&self, op: &str, first: bool, failure: Option<&OpError>) -> Value {
        let Self {
            project,
            zone,
            name,
            id,
            method,
        } = self;
        let mut e = json!({
            "insertId": format!("{:x}", insert_id(*id, op, first)),
            "logName": format!("projects/{project}/logs/cloudaudit.googleapis.com%2Factivity"),
            "operation": {"id": op, "producer": "compute.googleapis.com"},
            "protoPayload": {
                "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
                "authenticationInfo": {"principalEmail": "provisioner@example-project.iam.gserviceaccount.com"},
                "serviceName": "compute.googleapis.com",
                "methodName": format!("v1.compute.instances.{method}"),
                "resourceName": instance_link(project, zone, name),
                "request": {"@type": format!("type.googleapis.com/compute.instances.{method}")},
            },
            "resource": {"type": "gce_instance", "labels": {"instance_id": id.to_string(), "project_id": project, "zone": zone}},
            "severity": "NOTICE",
            "timestamp": now_rfc3339(),
            "receiveTimestamp": now_rfc3339(),
        });
        e["operation"][if first { "first" } else { "last" }] = json!(true);
        if let Some(f) = failure {
            e["severity"] = json!("ERROR");
            e["protoPayload"]["status"] = json!({"code": 13, "message": f.message});
        }
        e
    }
}

/// A stable `insertId` for the entry (a hash of the VM id, the operation and which entry).
fn insert_id(id: u64, op: &str, first: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (id, op, first).hash(&mut h);
    h.finish()
}

/// The simulated project number of `project` (stable: derived from the id).
pub fn project_number(project: &str) -> u64 {
    // FNV-1a, folded into twelve digits like real project numbers.
    let h = project.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    100_000_000_000 + h % 900_000_000_000
}
