//! Reading instances: `instances.get`, `instances.list` and `instances.aggregatedList`, with
//! list filters ([`super::filter`]) and pagination (`maxResults` ≤ 500, `pageToken`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::filter::Filter;
use super::model::API;
use super::{Instance, Sim, instance_link, invalid, not_found, validate_location};
use crate::server::{Answer, Call, Malformed, Query, parse_query, run};

pub(super) async fn get(
    State(sim): State<Arc<Sim>>,
    Path((project, zone, name)): Path<(String, String, String)>,
    call: Call,
) -> Response {
    run(&sim, "instances.get", &call, &[], |sim| {
        validate_location(&project, &zone)?;
        sim.world()
            .instances
            .get(&(project.clone(), zone.clone(), name.clone()))
            .map(|i| Answer::ok(i.to_json()))
            .ok_or_else(|| not_found(&instance_link(&project, &zone, &name)))
    })
    .await
}

/// One page of a list: its size, where it starts, and the filter.
struct Page {
    max: usize,
    offset: usize,
    filter: Filter,
}

impl Page {
    fn from_query(q: Option<&str>) -> Result<Self, Answer> {
        let q = parse_query(q, Malformed::Skip);
        Ok(Self {
            max: max_results(&q)?,
            offset: offset(&q)?,
            filter: filter(&q)?,
        })
    }

    /// Adds `nextPageToken` when items remain after this page.
    fn link_next(&self, total: usize, body: &mut Value) {
        if self.offset + self.max < total {
            body["nextPageToken"] = json!(format!("sim-{}", self.offset + self.max));
        }
    }
}

fn max_results(q: &Query) -> Result<usize, Answer> {
    match q.get("maxResults") {
        None => Ok(500),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=500).contains(&n) => Ok(n),
            _ => Err(invalid(&format!(
                "Invalid value for field 'maxResults': '{v}'. Must be in the range [0, 500]."
            ))),
        },
    }
}

fn offset(q: &Query) -> Result<usize, Answer> {
    match q.get("pageToken").filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => t
            .strip_prefix("sim-")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| invalid(&format!("Invalid value for field 'pageToken': '{t}'."))),
    }
}

fn filter(q: &Query) -> Result<Filter, Answer> {
    match q.get("filter").filter(|f| !f.trim().is_empty()) {
        None => Ok(Filter::default()),
        Some(f) => Filter::parse(f)
            .map_err(|e| invalid(&format!("Invalid list filter expression '{f}': {e}"))),
    }
}

/// The answer as the `fields` parameter asks (all of it without one); a malformed selection
/// is a 400, as the API answers.
fn partial(q: Option<&str>, body: Value) -> Result<Value, Answer> {
    let q = parse_query(q, Malformed::Skip);
    match q.get("fields").filter(|f| !f.is_empty()) {
        None => Ok(body),
        Some(f) => super::fields::partial(&body, f)
            .map_err(|e| invalid(&format!("Invalid field selection '{f}': {e}"))),
    }
}

pub(super) async fn list(
    State(sim): State<Arc<Sim>>,
    Path((project, zone)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    call: Call,
) -> Response {
    run(&sim, "instances.list", &call, &[], |sim| {
        validate_location(&project, &zone)?;
        let page = Page::from_query(q.as_deref())?;
        let w = sim.world();
        let all: Vec<&Instance> = w
            .instances
            .values()
            .filter(|i| i.project == project && i.zone == zone && page.filter.matches(i))
            .collect();
        let items: Vec<Value> = all
            .iter()
            .skip(page.offset)
            .take(page.max)
            .map(|i| i.to_json())
            .collect();
        let mut body = json!({"kind": "compute#instanceList", "id": format!("projects/{project}/zones/{zone}/instances"), "items": items,
            "selfLink": format!("{API}projects/{project}/zones/{zone}/instances")});
        page.link_next(all.len(), &mut body);
        Ok::<_, Answer>(Answer::ok(body))
    })
    .await
}

pub(super) async fn aggregated_list(
    State(sim): State<Arc<Sim>>,
    Path(project): Path<String>,
    RawQuery(q): RawQuery,
    call: Call,
) -> Response {
    run(&sim, "instances.aggregatedList", &call, &[], |sim| {
        let page = Page::from_query(q.as_deref())?;
        let w = sim.world();
        let all: Vec<&Instance> = w
            .instances
            .values()
            .filter(|i| i.project == project && page.filter.matches(i))
            .filter(|i| !w.unreachable_zones.contains(&i.zone))
            .collect();
        let mut items: BTreeMap<String, Value> = BTreeMap::new();
        // A zone that could not be reached answers with an UNREACHABLE warning in place of its
        // instances; the list is partial, not empty (InstancesScopedList.warning, "Informational
        // warning which replaces the list of instances when the list is empty":
        // https://cloud.google.com/compute/docs/reference/rest/v1/instances/aggregatedList).
        for zone in &w.unreachable_zones {
            items.insert(
                format!("zones/{zone}"),
                json!({"warning": {"code": "UNREACHABLE",
                    "message": format!("Scope 'zones/{zone}' is unreachable."),
                    "data": [{"key": "scope", "value": format!("zones/{zone}")}]}}),
            );
        }
        for i in all.iter().skip(page.offset).take(page.max) {
            let scope = items
                .entry(format!("zones/{}", i.zone))
                .or_insert_with(|| json!({"instances": []}));
            if let Some(arr) = scope["instances"].as_array_mut() {
                arr.push(i.to_json());
            }
        }
        // The real API lists every zone, with a warning where there is nothing on the page.
        for s in w.subnets.values().filter(|(s, _)| s.project == project) {
            for letter in ["a", "b", "c"] {
                items.entry(format!("zones/{}-{letter}", s.0.region)).or_insert_with(|| {
                    json!({"warning": {"code": "NO_RESULTS_ON_PAGE", "message": "There are no results for scope on this page.",
                        "data": [{"key": "scope", "value": format!("zones/{}-{letter}", s.0.region)}]}})
                });
            }
        }
        let mut body = json!({"kind": "compute#instanceAggregatedList", "id": format!("projects/{project}/aggregated/instances"),
            "items": items, "selfLink": format!("{API}projects/{project}/aggregated/instances")});
        page.link_next(all.len(), &mut body);
        Ok::<_, Answer>(Answer::ok(partial(q.as_deref(), body)?))
    })
    .await
}
