//! ACT, Compute side: the writes — network tags, nic0's alias ranges, metadata — each a
//! fingerprint-guarded read-modify-write with a `requestId`, followed to its operation's end.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use google_cloud_compute_v1::model;
use rand::Rng as _;

use super::error::{Class, class_to_error, classify_error, classify_operation};
use super::{AliasRange, Compute, ComputeError, WriteOutcome};
use crate::names::InstanceRef;

/// A fresh `requestId` (a random UUID v4).
pub(super) fn request_id() -> String {
    uuid_text(rand::rng().random())
}

/// The `requestId` of a change computed from a read: a UUID derived from the call, the VM
/// (name and numeric id) and the change itself, fingerprint included. A step redelivered while
/// its operation still runs computes the same change from the same (not yet changed) state, so
/// it sends the same `requestId` and Compute Engine answers with the operation in flight
/// instead of starting a second one; once the operation applied, the fingerprint moved and a
/// later change gets another id.
fn derived_request_id(call: &str, r: &InstanceRef, id: Option<u64>, change: &Change) -> String {
    use sha2::Digest as _;
    let body = match change {
        Change::Tags(t) => serde_json::to_string(t),
        Change::Metadata(m) => serde_json::to_string(m),
        Change::Nic(name, n) => serde_json::to_string(&(name, n.as_ref())),
        Change::ClearAliases { nic, fingerprint } => serde_json::to_string(&(nic, fingerprint)),
    }
    .unwrap_or_default();
    let mut h = sha2::Sha256::new();
    for part in [call, &r.to_string(), &id.unwrap_or(0).to_string(), &body] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    uuid_text(b)
}

/// RFC 4122 text of 16 bytes, marked as a version-4-shaped UUID.
fn uuid_text(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A change to send, computed from a fresh read.
enum Change {
    Tags(model::Tags),
    Metadata(model::Metadata),
    Nic(String, Box<model::NetworkInterface>),
    /// An empty alias list, which the library would leave out of the body.
    ClearAliases {
        nic: String,
        fingerprint: Vec<u8>,
    },
}

impl Compute {
    /// Adds `tags` to the VM's network tags, keeping the others.
    ///
    /// # Idempotency
    /// No request is sent when every tag is already present.
    ///
    /// # Errors
    /// [`ComputeError`].
    pub async fn add_tags(
        &self,
        r: &InstanceRef,
        tags: &[String],
    ) -> Result<WriteOutcome, ComputeError> {
        self.mutate("instances.setTags", r, |i| {
            let current = i.tags.as_ref().map(|t| t.items.clone()).unwrap_or_default();
            let missing: Vec<&String> = tags.iter().filter(|t| !current.contains(t)).collect();
            if missing.is_empty() {
                return None;
            }
            let mut items = current;
            items.extend(missing.into_iter().cloned());
            let mut t = model::Tags::new().set_items(items);
            t.fingerprint = i.tags.as_ref().and_then(|t| t.fingerprint.clone());
            Some(Change::Tags(t))
        })
        .await
    }

    /// Sets nic0's alias ranges to exactly `ranges` (`(cidr, secondary range name)`).
    ///
    /// Compute Engine adds and deletes alias ranges but does not update them ("Configuring
    /// alias IP ranges", Limitations): a request that drops one range and adds another is
    /// refused. So when both are needed this converges in two operations — first drop what
    /// must go (keeping what stays), wait for that operation, re-read the fingerprint, then add
    /// — each a separate read-modify-write. Between the two the VM holds only the kept ranges.
    ///
    /// The library leaves an empty list out of the request body, which under PATCH semantics
    /// changes nothing; an empty list is therefore sent directly over HTTP with the same
    /// credentials, fingerprint and `requestId` rules.
    ///
    /// # Idempotency
    /// No request is sent when nic0 already has exactly these ranges; a redelivery after the
    /// removal went through finds the kept ranges and only adds.
    ///
    /// # Errors
    /// [`ComputeError::AliasInUse`], [`ComputeError::RangeExhausted`], [`ComputeError::Refused`]
    /// (e.g. a range outside the secondary range) are permanent.
    pub async fn set_alias_ranges(
        &self,
        r: &InstanceRef,
        ranges: &[AliasRange],
    ) -> Result<WriteOutcome, ComputeError> {
        // Removal, then addition; a third pass only confirms (and catches a racing writer).
        self.settle(3, "instances.updateNetworkInterface", r, |i| {
            let nic = i.network_interfaces.first()?;
            let current: Vec<AliasRange> = nic
                .alias_ip_ranges
                .iter()
                .map(|a| AliasRange {
                    cidr: a.ip_cidr_range.clone().unwrap_or_default(),
                    range_name: a.subnetwork_range_name.clone(),
                })
                .collect();
            let next = next_alias_list(&current, ranges)?;
            let nic_name = nic.name.clone().unwrap_or_else(|| "nic0".into());
            if next.is_empty() {
                return Some(Change::ClearAliases {
                    nic: nic_name,
                    fingerprint: nic
                        .fingerprint
                        .clone()
                        .map(|b| b.to_vec())
                        .unwrap_or_default(),
                });
            }
            let body = model::NetworkInterface::new()
                .set_alias_ip_ranges(next.iter().map(|a| {
                    let mut x = model::AliasIpRange::new().set_ip_cidr_range(a.cidr.clone());
                    x.subnetwork_range_name = a.range_name.clone();
                    x
                }))
                .set_or_clear_fingerprint(nic.fingerprint.clone());
            Some(Change::Nic(nic_name, Box::new(body)))
        })
        .await
    }

    /// Alias-first (issue 22): unless nic0 already has an alias range in one of `pod_ranges`
    /// (the names of every pod range), asks Compute Engine to allocate a `/prefix` block of
    /// `range_name` ("Configuring alias IP ranges": a
    /// netmask alone lets Compute Engine pick a free block, so no two VMs can get the same
    /// one), keeping nic0's other ranges. Re-read before writing, and a second pass confirms,
    /// so a redelivery or a racing writer never allocates a second block.
    ///
    /// # Errors
    /// [`ComputeError::RangeExhausted`] when no block is free (permanent), and the other
    /// [`ComputeError`]s of a write.
    pub async fn allocate_alias_range(
        &self,
        r: &InstanceRef,
        prefix: u8,
        range_name: &str,
        pod_ranges: &[String],
    ) -> Result<WriteOutcome, ComputeError> {
        self.settle(2, "instances.updateNetworkInterface", r, |i| {
            let nic = i.network_interfaces.first()?;
            if nic.alias_ip_ranges.iter().any(|a| {
                a.subnetwork_range_name
                    .as_deref()
                    .is_some_and(|n| n == range_name || pod_ranges.iter().any(|p| p == n))
            }) {
                return None;
            }
            let nic_name = nic.name.clone().unwrap_or_else(|| "nic0".into());
            let mut ranges = nic.alias_ip_ranges.clone();
            let mut asked = model::AliasIpRange::new().set_ip_cidr_range(format!("/{prefix}"));
            asked.subnetwork_range_name = Some(range_name.to_string());
            ranges.push(asked);
            let body = model::NetworkInterface::new()
                .set_alias_ip_ranges(ranges)
                .set_or_clear_fingerprint(nic.fingerprint.clone());
            Some(Change::Nic(nic_name, Box::new(body)))
        })
        .await
    }

    /// [`Self::mutate`] again until it finds nothing to change, at most `passes` times: each
    /// pass re-reads, so a later one confirms the earlier (and catches a racing writer).
    async fn settle(
        &self,
        passes: usize,
        call: &'static str,
        r: &InstanceRef,
        plan: impl Fn(&model::Instance) -> Option<Change>,
    ) -> Result<WriteOutcome, ComputeError> {
        let mut outcome = WriteOutcome::Unchanged;
        for _ in 0..passes {
            match self.mutate(call, r, &plan).await? {
                WriteOutcome::Unchanged => return Ok(outcome),
                WriteOutcome::Changed => outcome = WriteOutcome::Changed,
            }
        }
        Ok(outcome)
    }

    /// Read-modify-write of the VM's metadata: `edit` changes the item map; nothing is sent
    /// when it leaves the map as it was. `setMetadata` replaces all items, so the others are
    /// always sent back as read.
    ///
    /// # Errors
    /// [`ComputeError`].
    pub async fn update_metadata(
        &self,
        r: &InstanceRef,
        edit: impl Fn(&mut BTreeMap<String, String>),
    ) -> Result<WriteOutcome, ComputeError> {
        self.mutate("instances.setMetadata", r, |i| {
            let md = i.metadata.clone().unwrap_or_default();
            let before: Vec<(String, String)> = md
                .items
                .iter()
                .filter_map(|it| Some((it.key.clone()?, it.value.clone().unwrap_or_default())))
                .collect();
            let mut map: BTreeMap<String, String> = before.iter().cloned().collect();
            edit(&mut map);
            let unchanged =
                map.len() == before.len() && before.iter().all(|(k, v)| map.get(k) == Some(v));
            if unchanged {
                return None;
            }
            // Keep the original order of surviving keys, then the new ones.
            let mut items: Vec<model::metadata::Items> = Vec::new();
            for (k, _) in &before {
                if let Some(v) = map.remove(k) {
                    items.push(
                        model::metadata::Items::new()
                            .set_key(k.clone())
                            .set_value(v),
                    );
                }
            }
            for (k, v) in map {
                items.push(model::metadata::Items::new().set_key(k).set_value(v));
            }
            let body = model::Metadata::new()
                .set_items(items)
                .set_or_clear_fingerprint(md.fingerprint.clone());
            Some(Change::Metadata(body))
        })
        .await
    }

    /// The fingerprint-guarded read-modify-write loop shared by every mutation.
    async fn mutate(
        &self,
        call: &'static str,
        r: &InstanceRef,
        plan: impl Fn(&model::Instance) -> Option<Change>,
    ) -> Result<WriteOutcome, ComputeError> {
        // After an operation of ours failed, a derived id would name that failed operation
        // again (the server keeps it): from then on every send gets a fresh one.
        let mut fresh_ids = false;
        for resend in 0..=self.policy.max_resends {
            let Some(current) = self.get_model(r).await? else {
                return Err(ComputeError::NotFound {
                    call,
                    message: format!("The resource '{r}' was not found"),
                });
            };
            let Some(change) = plan(&current) else {
                return Ok(WriteOutcome::Unchanged);
            };
            // One requestId for every transient retry of this body: the server applies it once.
            let rid = if fresh_ids {
                request_id()
            } else {
                derived_request_id(call, r, current.id, &change)
            };
            let sent = self
                .retrying(call, || self.send(call, r, &change, &rid))
                .await;
            let op = match sent {
                Ok(op) if !fresh_ids && op_failed(&op) => {
                    // Already DONE with an error at once: the answer to an earlier attempt with
                    // this id (a delivery before this one). Send again under a fresh id.
                    tracing::debug!(call, instance = %r, "the derived requestId names a failed operation; resending under a fresh one");
                    fresh_ids = true;
                    continue;
                }
                Ok(op) => op,
                Err(Class::Precondition) => {
                    tracing::debug!(call, instance = %r, resend, "fingerprint race lost (412); re-reading");
                    continue;
                }
                Err(c) => return Err(class_to_error(call)(c)),
            };
            match self.wait_done(call, r.zone(), op).await {
                Ok(()) => return Ok(WriteOutcome::Changed),
                Err(Class::Precondition) => {
                    tracing::debug!(call, instance = %r, resend, "fingerprint race lost (CONDITION_NOT_MET); re-reading");
                }
                Err(Class::Retry(message)) => {
                    // The operation failed transiently and changed nothing: send again.
                    fresh_ids = true;
                    tracing::debug!(call, instance = %r, %message, "operation failed transiently; resending");
                    tokio::time::sleep(self.policy.retry.delay(resend + 1)).await;
                }
                Err(Class::Fail(e)) => return Err(e),
            }
        }
        Err(ComputeError::Contention {
            call,
            resends: self.policy.max_resends,
        })
    }

    async fn send(
        &self,
        call: &'static str,
        r: &InstanceRef,
        change: &Change,
        rid: &str,
    ) -> Result<model::Operation, Class> {
        let res = match change {
            Change::Tags(t) => {
                self.instances
                    .set_tags()
                    .set_project(r.project())
                    .set_zone(r.zone())
                    .set_instance(r.name())
                    .set_request_id(rid)
                    .set_body(t.clone())
                    .send()
                    .await
            }
            Change::Metadata(m) => {
                self.instances
                    .set_metadata()
                    .set_project(r.project())
                    .set_zone(r.zone())
                    .set_instance(r.name())
                    .set_request_id(rid)
                    .set_body(m.clone())
                    .send()
                    .await
            }
            Change::ClearAliases { nic, fingerprint } => {
                return self
                    .raw
                    .update_aliases(call, r, nic, fingerprint, &[], rid)
                    .await;
            }
            Change::Nic(name, n) => {
                self.instances
                    .update_network_interface()
                    .set_project(r.project())
                    .set_zone(r.zone())
                    .set_instance(r.name())
                    .set_network_interface(name.clone())
                    .set_request_id(rid)
                    .set_body(n.as_ref().clone())
                    .send()
                    .await
            }
        };
        res.map_err(|e| classify_error(call, &e))
    }

    /// Waits until the operation is DONE (`zoneOperations.wait`, which may return early, in a
    /// loop) or the deadline passes, then reads its error.
    async fn wait_done(
        &self,
        call: &'static str,
        zone: &str,
        mut op: model::Operation,
    ) -> Result<(), Class> {
        const WAIT: &str = "zoneOperations.wait";
        let deadline = Instant::now() + self.policy.operation_deadline;
        let name = op.name.clone().unwrap_or_default();
        while op.status != Some(model::operation::Status::Done) {
            if Instant::now() >= deadline {
                return Err(Class::Fail(ComputeError::OperationTimeout {
                    call,
                    operation: name,
                    deadline_ms: self.policy.operation_deadline.as_millis() as u64,
                }));
            }
            let timeout = || ComputeError::OperationTimeout {
                call,
                operation: name.clone(),
                deadline_ms: self.policy.operation_deadline.as_millis() as u64,
            };
            let next = self
                .retrying(WAIT, || async {
                    // Each retry of the wait gets only what is left of the deadline, and none
                    // once it passed: the delivery is never held past it.
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(Class::Fail(timeout()));
                    }
                    let req = self
                        .operations
                        .wait()
                        .set_project(&self.project)
                        .set_zone(zone)
                        .set_operation(&name);
                    match tokio::time::timeout(remaining.max(Duration::from_millis(10)), req.send())
                        .await
                    {
                        Ok(r) => r.map_err(|e| classify_error(WAIT, &e)),
                        Err(_) => Err(Class::Retry("wait timed out".into())),
                    }
                })
                .await;
            match next {
                Ok(o) => op = o,
                Err(Class::Fail(ComputeError::Transient { .. })) if Instant::now() >= deadline => {
                    continue;
                }
                Err(c) => return Err(c),
            }
        }
        match classify_operation(call, &op) {
            None => Ok(()),
            Some(c) => Err(c),
        }
    }
}

/// An operation that is over and failed.
fn op_failed(op: &model::Operation) -> bool {
    op.status == Some(model::operation::Status::Done) && op.error.is_some()
}

/// The alias list to send next on the way from `current` to `wanted`: `None` when there,
/// `wanted` itself when that is a pure addition or a pure removal, and otherwise the ranges
/// both share (the removal half of an update the API refuses in one request).
fn next_alias_list(current: &[AliasRange], wanted: &[AliasRange]) -> Option<Vec<AliasRange>> {
    if current == wanted {
        return None;
    }
    let drops = current.iter().any(|a| !wanted.contains(a));
    let adds = wanted.iter().any(|a| !current.contains(a));
    if drops && adds {
        Some(
            current
                .iter()
                .filter(|a| wanted.contains(a))
                .cloned()
                .collect(),
        )
    } else {
        Some(wanted.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(c: &str) -> AliasRange {
        AliasRange {
            cidr: c.into(),
            range_name: Some("pods".into()),
        }
    }

    #[test]
    #[allow(clippy::cloned_ref_to_slice_refs)] // one-element lists read best as literals here
    fn an_update_is_split_into_a_removal_then_an_addition() {
        let (a, b, c) = (r("10.4.1.0/24"), r("10.4.2.0/24"), r("10.4.3.0/24"));
        // Replace one range by another: drop first, to nothing.
        assert_eq!(next_alias_list(&[a.clone()], &[b.clone()]), Some(vec![]));
        // Then the addition is a pure add.
        assert_eq!(next_alias_list(&[], &[b.clone()]), Some(vec![b.clone()]));
        // A kept range stays through the removal.
        assert_eq!(
            next_alias_list(&[a.clone(), c.clone()], &[a.clone(), b.clone()]),
            Some(vec![a.clone()])
        );
        // Pure removal and pure addition go in one request.
        assert_eq!(
            next_alias_list(&[a.clone(), b.clone()], &[a.clone()]),
            Some(vec![a.clone()])
        );
        assert_eq!(
            next_alias_list(&[a.clone()], &[a.clone(), b.clone()]),
            Some(vec![a.clone(), b.clone()])
        );
        // The same range under another secondary range name is an update too.
        let renamed = AliasRange {
            cidr: a.cidr.clone(),
            range_name: Some("other".into()),
        };
        assert_eq!(next_alias_list(&[a.clone()], &[renamed]), Some(vec![]));
        assert_eq!(next_alias_list(&[a.clone()], &[a]), None);
    }
}
