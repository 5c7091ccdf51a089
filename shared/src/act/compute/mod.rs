//! ACT/OBSERVE: Compute Engine through the official `google-cloud-compute-v1` client.
//!
//! Every mutation is a read-modify-write guarded by the resource's fingerprint and carries a
//! `requestId`:
//! - the desired state is computed from a fresh read; when it already holds, nothing is sent
//!   ([`WriteOutcome::Unchanged`]);
//! - a 412 `conditionNotMet` (synchronous) or a DONE operation with `CONDITION_NOT_MET`
//!   (asynchronous) means another writer won the race: re-read, recompute, resend, at most
//!   `max_resends` times;
//! - 429, 403 `rateLimitExceeded`, 5xx, timeouts and connection errors are retried with
//!   jittered exponential backoff (the toolkit's loop), bounded in attempts and total time,
//!   with the same `requestId` (the server applies it at most once); then they surface as a
//!   transient error;
//! - 400/404/409 and the alias errors surface as typed permanent errors with the API's message.
//!
//! The library's own retries are off (`NeverRetry`): one policy, ours, applies.

use std::future::Future;
use std::time::Duration;

use google_cloud_compute_v1::client::{Instances, Subnetworks, ZoneOperations};
use google_cloud_compute_v1::model;

use google_cloud_gax::retry_policy::NeverRetry;

mod error;
mod raw;
mod view;
mod write;

pub use crate::act::toolkit::WriteOutcome;
pub use error::ComputeError;
pub use view::{AliasRange, InstanceView, MetadataView, NicView, SubnetView};

/// What `instances.aggregatedList` is asked for (partial response): what [`InstanceView`]
/// reads, the metadata's keys without their values, and what paging and unreachable zones need.
pub const VIEW_FIELDS: &str = "nextPageToken,unreachables,items/*/warning/code,\
items/*/instances(id,name,zone,status,creationTimestamp,canIpForward,labels,tags/items,metadata/items/key,\
networkInterfaces(name,subnetwork,networkIP,aliasIpRanges),serviceAccounts/email)";

use super::toolkit::{self, Backoff, Listed};
use crate::names::InstanceRef;
use error::{Class, class_to_error, classify_error};
use raw::RawClient;

/// Retry and deadline settings of the Compute client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputePolicy {
    /// Transient-error retries of one call.
    pub retry: Backoff,
    /// Re-read and resend after a lost fingerprint race, at most this often.
    pub max_resends: u32,
    /// How long to wait for an operation to be DONE.
    pub operation_deadline: Duration,
    /// Timeout of one HTTP attempt.
    pub attempt_timeout: Duration,
}

impl Default for ComputePolicy {
    fn default() -> Self {
        Self {
            retry: Backoff {
                max_attempts: 6,
                max_elapsed: Duration::from_secs(20),
                base: Duration::from_millis(250),
                max: Duration::from_secs(4),
            },
            max_resends: 5,
            operation_deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// Where the client connects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ComputeEndpoint {
    /// `None`: Google's endpoint with Application Default Credentials. `Some(url)`: that URL;
    /// an `http://` URL (the simulator) uses anonymous credentials.
    pub url: Option<String>,
}

/// The Compute Engine client nodewire uses. Cheap to clone.
#[derive(Clone)]
pub struct Compute {
    instances: Instances,
    operations: ZoneOperations,
    subnetworks: Subnetworks,
    project: String,
    policy: ComputePolicy,
    /// For the one request the library cannot express (see [`Compute::set_alias_ranges`]).
    raw: RawClient,
}

impl std::fmt::Debug for Compute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compute")
            .field("project", &self.project)
            .finish_non_exhaustive()
    }
}

macro_rules! build_client {
    ($ty:ty, $ep:expr, $policy:expr) => {{
        let mut b = <$ty>::builder()
            .with_retry_policy(NeverRetry)
            .with_attempt_timeout($policy.attempt_timeout);
        if let Some(url) = &$ep.url {
            b = b.with_endpoint(url.clone());
            if url.starts_with("http://") {
                b = b.with_credentials(
                    google_cloud_auth::credentials::anonymous::Builder::new().build(),
                );
            }
        }
        b.build()
            .await
            .map_err(|e| ComputeError::Setup(crate::error::Cause::new(e)))?
    }};
}

impl Compute {
    /// Builds the client for `project`.
    ///
    /// # Errors
    /// [`ComputeError::Setup`] when a client cannot be built (e.g. no credentials).
    pub async fn new(
        project: &str,
        endpoint: &ComputeEndpoint,
        policy: ComputePolicy,
    ) -> Result<Self, ComputeError> {
        Ok(Self {
            instances: build_client!(Instances, endpoint, policy),
            operations: build_client!(ZoneOperations, endpoint, policy),
            subnetworks: build_client!(Subnetworks, endpoint, policy),
            project: project.to_string(),
            policy,
            raw: RawClient::new(endpoint, &policy)?,
        })
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    /// Runs one call with the transient-retry policy.
    async fn retrying<T, F, Fut>(&self, call: &'static str, f: F) -> Result<T, Class>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Class>>,
    {
        toolkit::retrying(&self.policy.retry, call, f, |x| {
            Class::Fail(ComputeError::Transient {
                call,
                attempts: x.attempts,
                elapsed_ms: x.elapsed_ms,
                message: x.message,
            })
        })
        .await
    }

    async fn get_model(&self, r: &InstanceRef) -> Result<Option<model::Instance>, ComputeError> {
        const CALL: &str = "instances.get";
        let res = self
            .retrying(CALL, || async {
                self.instances
                    .get()
                    .set_project(r.project())
                    .set_zone(r.zone())
                    .set_instance(r.name())
                    .send()
                    .await
                    .map_err(|e| classify_error(CALL, &e))
            })
            .await;
        match res {
            Ok(i) => Ok(Some(i)),
            Err(Class::Fail(ComputeError::NotFound { .. })) => Ok(None),
            Err(Class::Fail(e)) => Err(e),
            Err(Class::Precondition | Class::Retry(_)) => Err(ComputeError::Refused {
                call: CALL,
                status: 412,
                reason: "conditionNotMet".into(),
                message: "unexpected precondition failure on a read".into(),
            }),
        }
    }

    /// Reads a VM; `Ok(None)` when it does not exist.
    ///
    /// # Errors
    /// [`ComputeError`] on any other failure.
    pub async fn get_instance(
        &self,
        r: &InstanceRef,
    ) -> Result<Option<InstanceView>, ComputeError> {
        Ok(self
            .get_model(r)
            .await?
            .and_then(|m| InstanceView::from_model(r.project(), r.zone(), &m)))
    }

    /// Lists the project's VMs in every zone (`aggregatedList`, `maxResults=500`, following
    /// `nextPageToken`), optionally filtered (Compute filter syntax), sorted.
    ///
    /// # Errors
    /// [`ComputeError`] when a page cannot be read.
    pub async fn list_instances(
        &self,
        filter: Option<&str>,
    ) -> Result<Listed<InstanceView>, ComputeError> {
        const CALL: &str = "instances.aggregatedList";
        // Each page yields VMs (Ok) and the zones it could not reach (Err).
        let listed = toolkit::all_pages(|token| async move {
            // Only the fields a view needs (issue 10, item 7): 15,000 VMs are not 15,000 whole
            // instance documents with their startup scripts.
            let page = self
                .retrying(CALL, || async {
                    self.raw
                        .aggregated_page(CALL, &self.project, filter, token.as_deref(), VIEW_FIELDS)
                        .await
                })
                .await
                .map_err(class_to_error(CALL))?;
            let mut items: Vec<Result<InstanceView, String>> = Vec::new();
            for (scope, list) in &page.items {
                let zone = scope.strip_prefix("zones/").unwrap_or(scope);
                items.extend(
                    list.instances
                        .iter()
                        .filter_map(|i| InstanceView::from_model(&self.project, zone, i))
                        .map(Ok),
                );
                if list
                    .warning
                    .as_ref()
                    .and_then(|w| w.code.as_ref())
                    .is_some_and(|c| *c == model::instances_scoped_list::warning::Code::Unreachable)
                {
                    items.push(Err(zone.to_string()));
                }
            }
            items.extend(
                page.unreachables
                    .iter()
                    .map(|u| Err(u.strip_prefix("zones/").unwrap_or(u).to_string())),
            );
            Ok::<_, ComputeError>((items, page.next_page_token))
        })
        .await?;
        let mut out = Listed {
            items: Vec::new(),
            pages: listed.pages,
            unreachable: Vec::new(),
        };
        for entry in listed.items {
            match entry {
                Ok(v) => out.items.push(v),
                Err(zone) if !out.unreachable.contains(&zone) => out.unreachable.push(zone),
                Err(_) => {}
            }
        }
        if !out.unreachable.is_empty() {
            tracing::warn!(zones = ?out.unreachable, "aggregatedList could not reach every zone; the VM list is partial");
        }
        // The list carries metadata keys only; the few VMs that carry one of nodewire's own
        // bookkeeping keys are read whole for its value.
        let needs_values: Vec<usize> = out
            .items
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                MetadataView::KEPT
                    .iter()
                    .any(|k| v.metadata.contains_key(k))
            })
            .map(|(i, _)| i)
            .collect();
        for chunk in needs_values.chunks(16) {
            let reads = futures::future::join_all(
                chunk
                    .iter()
                    .map(|i| self.get_instance(&out.items[*i].instance)),
            )
            .await;
            for (i, read) in chunk.iter().zip(reads) {
                if let Some(full) = read? {
                    out.items[*i] = full;
                }
            }
        }
        out.items.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(out)
    }

    /// Reads a subnetwork's ranges.
    ///
    /// # Errors
    /// [`ComputeError`]; `NotFound` when it does not exist.
    pub async fn get_subnetwork(
        &self,
        region: &str,
        name: &str,
    ) -> Result<SubnetView, ComputeError> {
        const CALL: &str = "subnetworks.get";
        let s = self
            .retrying(CALL, || async {
                self.subnetworks
                    .get()
                    .set_project(&self.project)
                    .set_region(region)
                    .set_subnetwork(name)
                    .send()
                    .await
                    .map_err(|e| classify_error(CALL, &e))
            })
            .await
            .map_err(class_to_error(CALL))?;
        Ok(SubnetView {
            self_link: s.self_link.clone().unwrap_or_default(),
            ip_cidr_range: s.ip_cidr_range.as_deref().and_then(|c| c.parse().ok()),
            secondary: s
                .secondary_ip_ranges
                .iter()
                .filter_map(|r| {
                    Some((
                        r.range_name.clone()?,
                        r.ip_cidr_range.as_deref()?.parse().ok()?,
                    ))
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::error::classify_operation;
    use super::write::request_id;
    use super::*;
    use crate::error::Classify as _;

    #[test]
    fn request_ids_are_uuids() {
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-'));
    }

    fn op_with(code: &str, http: Option<i32>) -> model::Operation {
        let mut op = model::Operation::new().set_name("operation-1");
        op.error = Some(
            model::operation::Error::new().set_errors([model::operation::error::Errors::new()
                .set_code(code)
                .set_message("msg")]),
        );
        op.http_error_status_code = http;
        op
    }

    #[test]
    fn operation_errors_are_typed() {
        assert_eq!(classify_operation("c", &model::Operation::new()), None);
        assert_eq!(
            classify_operation("c", &op_with("CONDITION_NOT_MET", Some(412))),
            Some(Class::Precondition)
        );
        assert!(matches!(
            classify_operation("c", &op_with("IP_IN_USE_BY_ANOTHER_RESOURCE", Some(400))),
            Some(Class::Fail(ComputeError::AliasInUse { .. }))
        ));
        assert!(matches!(
            classify_operation("c", &op_with("IP_SPACE_EXHAUSTED", Some(400))),
            Some(Class::Fail(ComputeError::RangeExhausted { .. }))
        ));
        assert!(matches!(
            classify_operation("c", &op_with("INTERNAL_ERROR", Some(503))),
            Some(Class::Retry(_))
        ));
        assert!(matches!(
            classify_operation("c", &op_with("SOMETHING_ELSE", Some(400))),
            Some(Class::Fail(ComputeError::OperationFailed { .. }))
        ));
    }

    #[test]
    fn retryability() {
        assert!(
            ComputeError::Contention {
                call: "c",
                resends: 3
            }
            .is_retryable()
        );
        assert!(
            ComputeError::Transient {
                call: "c",
                attempts: 1,
                elapsed_ms: 0,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !ComputeError::AliasInUse {
                call: "c",
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            !ComputeError::NotFound {
                call: "c",
                message: String::new()
            }
            .is_retryable()
        );
    }
}
