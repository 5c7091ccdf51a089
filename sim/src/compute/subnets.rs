//! Subnetworks: `subnetworks.get`, how a NIC names its subnetwork, and the primary addresses
//! handed to new VMs.

use std::net::Ipv4Addr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;

use super::{Key, Sim, SubnetSpec, World, not_found};
use crate::server::{Answer, Call, run};

pub(super) async fn get(
    State(sim): State<Arc<Sim>>,
    Path((project, region, subnet)): Path<(String, String, String)>,
    call: Call,
) -> Response {
    run(&sim, "subnetworks.get", &call, &[], |sim| {
        sim.world()
            .subnets
            .get(&(project.clone(), region.clone(), subnet.clone()))
            .map(|(s, fp)| Answer::ok(s.to_json(*fp)))
            .ok_or_else(|| {
                not_found(&format!(
                    "projects/{project}/regions/{region}/subnetworks/{subnet}"
                ))
            })
    })
    .await
}

/// Resolves a subnetwork reference (full URL, `projects/P/regions/R/subnetworks/S` or
/// `regions/R/subnetworks/S`).
pub(super) fn subnet_ref(project: &str, s: &str) -> Option<Key> {
    let path = s.split_once("/compute/v1/").map_or(s, |(_, p)| p);
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["projects", p, "regions", r, "subnetworks", n] => {
            Some(((*p).into(), (*r).into(), (*n).into()))
        }
        ["regions", r, "subnetworks", n] => Some((project.into(), (*r).into(), (*n).into())),
        _ => None,
    }
}

/// The next primary address of `subnet`, from `.2` up (`.0` is the network, `.1` the gateway).
pub(super) fn next_ip(w: &mut World, subnet: &SubnetSpec) -> Ipv4Addr {
    let key = (
        subnet.project.clone(),
        subnet.region.clone(),
        subnet.name.clone(),
    );
    let n = w.next_host.entry(key).or_insert(2);
    let base = u32::from(subnet.ip_cidr_range.net().network());
    let ip = Ipv4Addr::from(base.wrapping_add(*n));
    *n += 1;
    ip
}
