//! `instances.updateNetworkInterface`: the NIC's fingerprint is required (400 without it, 412
//! when stale); the sent alias list replaces the NIC's (PATCH: without `aliasIpRanges` the
//! aliases stay); each range must lie in the named secondary range of the NIC's subnet (400
//! otherwise); overlap with another VM's alias in that subnet ends the operation with
//! `IP_IN_USE_BY_ANOTHER_RESOURCE`; a request that drops one range and adds another is an
//! update, which the API refuses (400); a bare `/N` allocates a free block when the operation
//! completes, `IP_SPACE_EXHAUSTED` when none is left.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use nodewire::names::Cidr;
use serde_json::Value;

use super::mutations::Mutating;
use super::{Alias, Fingerprint, Mutation, OpError, Sim, SubnetSpec, World, invalid, refusal};
use crate::blocks::first_free;
use crate::server::{Answer, Call, run};

/// A requested alias range: explicit, or a prefix length to allocate.
pub(super) enum Wanted {
    Exact(Cidr),
    Allocate(u8),
}

pub(super) async fn update_network_interface(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    call: Call,
    body: Bytes,
) -> Response {
    let api_method = "instances.updateNetworkInterface";
    run(&sim, api_method, &call, &body, |sim| {
        let Mutating { q, rid, body, key, link, current } =
            Mutating::read(sim, (&project, &zone, &name), q.as_deref(), &body)?;
        // An instance still being created (PROVISIONING, STAGING) is refused, synchronously,
        // with 400 `resourceNotReady` (issue 22's text; the same refusal Compute Engine gives
        // an instance busy with another operation, see operations.rs): clients wait it out.
        if matches!(current.status.as_str(), "PROVISIONING" | "STAGING") {
            return Err(super::refusal(
                400,
                "resourceNotReady",
                &format!("The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready"),
            ));
        }
        let Some(nic_name) = q.get("networkInterface").cloned() else {
            return Err(invalid("Required field 'networkInterface' not specified"));
        };
        let Some(nic) = current.nics.iter().find(|n| n.name == nic_name).cloned() else {
            return Err(invalid(&format!("Invalid value for field 'networkInterface': '{nic_name}'. The network interface does not exist.")));
        };
        let Some((subnet, _)) = sim.world().subnets.get(&nic.subnet).cloned() else {
            return Err(invalid("The network interface's subnetwork no longer exists."));
        };
        let Some(fp) = body.get("fingerprint").and_then(Value::as_str) else {
            return Err(invalid("Invalid value for field 'resource.fingerprint': ''. Required field 'resource.fingerprint' not specified"));
        };
        if Fingerprint::parse(fp) != Some(nic.fingerprint) {
            return Err(refusal(412, "conditionNotMet", "Supplied fingerprint does not match current network interface fingerprint."));
        }
        // Validate the requested ranges (synchronously, as the API does for syntax and range).
        // PATCH semantics: without an `aliasIpRanges` key the aliases stay as they are.
        let replace_aliases = body.get("aliasIpRanges").is_some();
        let wanted = wanted_ranges(&body, &subnet)?;
        refuse_overlap(&wanted)?;
        if replace_aliases {
            refuse_update(&nic.aliases, &wanted)?;
        }
        let expected = nic.fingerprint;
        let new_fp = sim.fp();
        let subnet_key = nic.subnet.clone();
        let l = link.clone();
        let release_delay = sim.config.release_delay;
        let mutation: Mutation = Box::new(move |w: &mut World| {
            let link = l;
            let now = std::time::Instant::now();
            // Every alias in this subnet held by another VM (or another NIC), and the ranges
            // released moments ago.
            let (taken, cooling) =
                subnet_use(w, &subnet_key, Some((&key, nic_name.as_str())), release_delay);
            let inst = w.instances.get_mut(&key).ok_or_else(|| OpError::not_found(&link))?;
            let Some(nic) = inst.nics.iter_mut().find(|n| n.name == nic_name) else {
                return Err(OpError::not_found(&link));
            };
            if nic.fingerprint != expected {
                return Err(OpError::condition_not_met("network interface"));
            }
            if !replace_aliases {
                nic.fingerprint = new_fp;
                return Ok(());
            }
            let result = allocate(wanted, &subnet, &taken, &cooling)?;
            let removed: Vec<Cidr> = nic
                .aliases
                .iter()
                .map(|a| a.cidr)
                .filter(|c| !result.iter().any(|r| r.cidr == *c))
                .collect();
            nic.aliases = result;
            nic.fingerprint = new_fp;
            if !release_delay.is_zero() {
                w.released.extend(removed.into_iter().map(|c| (subnet_key.clone(), c, now)));
            }
            Ok(())
        });
        Ok(sim.start_operation(api_method, &project, &zone, "updateNetworkInterface", (&link, current.id), rid, mutation))
    })
    .await
}

/// Exact ranges of one request must not overlap each other (refused synchronously).
pub(super) fn refuse_overlap(wanted: &[(Wanted, Option<String>)]) -> Result<(), Answer> {
    let exact: Vec<Cidr> = wanted
        .iter()
        .filter_map(|(w, _)| {
            if let Wanted::Exact(c) = w {
                Some(*c)
            } else {
                None
            }
        })
        .collect();
    for (i, a) in exact.iter().enumerate() {
        if exact[i + 1..].iter().any(|b| a.overlaps(b)) {
            return Err(invalid(&format!(
                "Invalid value for field 'resource.aliasIpRanges': alias IP ranges overlap ({a})."
            )));
        }
    }
    Ok(())
}

/// The ranges `wanted` as the operation ends: an exact one must not overlap `taken` (another
/// VM's alias in the subnet) or `cooling` (released moments ago): `IP_IN_USE_BY_ANOTHER_RESOURCE`;
/// a `/N` gets the first free block of its range, `IP_SPACE_EXHAUSTED` when none is left.
pub(super) fn allocate(
    wanted: Vec<(Wanted, Option<String>)>,
    subnet: &SubnetSpec,
    taken: &[Cidr],
    cooling: &[Cidr],
) -> Result<Vec<Alias>, OpError> {
    let mut result: Vec<Alias> = Vec::new();
    for (w, range_name) in wanted {
        let parent = range_name
            .as_deref()
            .and_then(|rn| subnet.range(rn))
            .unwrap_or(subnet.ip_cidr_range);
        let cidr = match w {
            Wanted::Exact(c) => {
                if taken.iter().chain(cooling.iter()).any(|t| t.overlaps(&c)) {
                    return Err(OpError::ip_in_use(&c));
                }
                c
            }
            Wanted::Allocate(len) => {
                let in_use: Vec<Cidr> = taken
                    .iter()
                    .chain(cooling.iter())
                    .copied()
                    .chain(result.iter().map(|a| a.cidr))
                    .collect();
                first_free(parent, len, &in_use).ok_or_else(|| {
                    OpError::exhausted(
                        &subnet.self_link(),
                        range_name.as_deref().unwrap_or("primary"),
                    )
                })?
            }
        };
        result.push(Alias { cidr, range_name });
    }
    Ok(result)
}

/// Every alias held in subnet `subnet` (except by `except`'s NIC), and the ranges released
/// there less than `release_delay` ago (forgetting older ones).
pub(super) fn subnet_use(
    w: &mut World,
    subnet: &(String, String, String),
    except: Option<(&super::Key, &str)>,
    release_delay: std::time::Duration,
) -> (Vec<Cidr>, Vec<Cidr>) {
    let now = std::time::Instant::now();
    w.released
        .retain(|(_, _, at)| now.duration_since(*at) < release_delay);
    let cooling = w
        .released
        .iter()
        .filter(|(s, _, _)| s == subnet)
        .map(|(_, c, _)| *c)
        .collect();
    let taken = w
        .instances
        .iter()
        .flat_map(|(k, inst)| inst.nics.iter().map(move |n| (k, n)))
        .filter(|(k, n)| {
            n.subnet == *subnet && except.is_none_or(|(ek, en)| !(*k == ek && n.name == en))
        })
        .flat_map(|(_, n)| n.aliases.iter().map(|a| a.cidr))
        .collect();
    (taken, cooling)
}

/// "Alias IP ranges can be added or deleted, but they can't be updated" (Compute Engine docs,
/// "Configuring alias IP ranges", Limitations): one request may keep ranges and add new ones,
/// or keep ranges and drop some, but not drop one range and add another — that is an update,
/// refused synchronously. The wording of the message is ours; the refusal is the API's.
fn refuse_update(current: &[Alias], wanted: &[(Wanted, Option<String>)]) -> Result<(), Answer> {
    let kept = |a: &Alias| {
        wanted
            .iter()
            .any(|(w, rn)| matches!(w, Wanted::Exact(c) if *c == a.cidr) && *rn == a.range_name)
    };
    let added = wanted.iter().any(|(w, rn)| match w {
        Wanted::Exact(c) => !current.iter().any(|a| a.cidr == *c && a.range_name == *rn),
        Wanted::Allocate(_) => true,
    });
    match current.iter().find(|a| !kept(a)) {
        Some(gone) if added => Err(invalid(&format!(
            "Invalid value for field 'resource.aliasIpRanges': alias IP range '{}' cannot be updated in place; remove it in one request, then add the new range in another.",
            gone.cidr
        ))),
        _ => Ok(()),
    }
}

/// The sent `aliasIpRanges`, each checked against the range it names (the primary range when
/// it names none).
pub(super) fn wanted_ranges(
    body: &Value,
    subnet: &SubnetSpec,
) -> Result<Vec<(Wanted, Option<String>)>, Answer> {
    let mut wanted = Vec::new();
    for (i, a) in body
        .get("aliasIpRanges")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let raw = a
            .get("ipCidrRange")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let range_name = a
            .get("subnetworkRangeName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let parent = match &range_name {
            Some(rn) => subnet.range(rn).ok_or_else(|| {
                invalid(&format!(
                    "Invalid value for field 'resource.aliasIpRanges[{i}].subnetworkRangeName': '{rn}'. Secondary range '{rn}' does not exist in subnetwork '{}'.",
                    subnet.self_link()
                ))
            })?,
            None => subnet.ip_cidr_range,
        };
        let w = if let Some(len) = raw.strip_prefix('/') {
            match len.parse::<u8>() {
                Ok(l) if (parent.prefix_len()..=32).contains(&l) => Wanted::Allocate(l),
                _ => {
                    return Err(invalid(&format!(
                        "Invalid value for field 'resource.aliasIpRanges[{i}].ipCidrRange': '{raw}'."
                    )));
                }
            }
        } else {
            let c = if raw.contains('/') {
                raw.parse::<Cidr>()
            } else {
                format!("{raw}/32").parse::<Cidr>()
            };
            match c {
                Ok(c) if parent.contains(&c) => Wanted::Exact(c),
                Ok(_) => {
                    return Err(invalid(&format!(
                        "Invalid value for field 'resource.aliasIpRanges[{i}].ipCidrRange': '{raw}'. Alias IP range must be within the range '{}' ({parent}).",
                        range_name.as_deref().unwrap_or("primary")
                    )));
                }
                Err(_) => {
                    return Err(invalid(&format!(
                        "Invalid value for field 'resource.aliasIpRanges[{i}].ipCidrRange': '{raw}'. Invalid IPv4 CIDR."
                    )));
                }
            }
        };
        wanted.push((w, range_name));
    }
    Ok(wanted)
}
