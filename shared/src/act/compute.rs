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
//!   exponential backoff and full jitter, bounded in attempts and total time, with the same
//!   `requestId` (the server applies it at most once); then they surface as a transient error;
//! - 400/404/409 and the alias errors surface as typed permanent errors with the API's message.
//!
//! The library's own retries are off (`NeverRetry`): one policy, ours, applies.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use google_cloud_compute_v1::client::{Instances, Subnetworks, ZoneOperations};
use google_cloud_compute_v1::model;
use google_cloud_gax::error::rpc::StatusDetails;
use google_cloud_gax::retry_policy::NeverRetry;
use rand::Rng as _;

use crate::names::{Cidr, InstanceRef, echo};

/// Retry and deadline settings of the Compute client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputePolicy {
    /// Attempts of one call on transient errors (including the first).
    pub max_attempts: u32,
    /// Total time one call may spend retrying.
    pub max_elapsed: Duration,
    /// First backoff; doubles each attempt (full jitter).
    pub base_backoff: Duration,
    pub max_backoff: Duration,
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
            max_attempts: 6,
            max_elapsed: Duration::from_secs(20),
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(4),
            max_resends: 5,
            operation_deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong talking to Compute Engine. Classify with [`ComputeError::is_retryable`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ComputeError {
    /// The resource does not exist (404, or `RESOURCE_NOT_FOUND` in an operation).
    #[error("{call}: {message}")]
    NotFound { call: &'static str, message: String },
    /// The request was refused and resending it cannot help (400, 409, other 4xx).
    #[error("{call}: refused with HTTP {status} ({reason}): {message}")]
    Refused {
        call: &'static str,
        status: u16,
        reason: String,
        message: String,
    },
    /// The alias range is held by another resource.
    #[error("{call}: alias range in use by another resource: {message}")]
    AliasInUse { call: &'static str, message: String },
    /// No free block is left in the secondary range.
    #[error("{call}: secondary range exhausted: {message}")]
    RangeExhausted { call: &'static str, message: String },
    /// An operation finished with an error that resending cannot fix.
    #[error("{call}: operation {operation} failed with {code}: {message}")]
    OperationFailed {
        call: &'static str,
        operation: String,
        code: String,
        message: String,
    },
    /// Every attempt failed transiently (rate limits, 5xx, timeouts, connection errors).
    #[error("{call}: still failing after {attempts} attempt(s) in {elapsed_ms} ms: {message}")]
    Transient {
        call: &'static str,
        attempts: u32,
        elapsed_ms: u64,
        message: String,
    },
    /// Other writers kept changing the resource: every resend lost the fingerprint race.
    #[error("{call}: fingerprint race lost {resends} time(s) in a row")]
    Contention { call: &'static str, resends: u32 },
    /// The operation was not DONE before the deadline; it may still complete.
    #[error("{call}: operation {operation} not DONE after {deadline_ms} ms")]
    OperationTimeout {
        call: &'static str,
        operation: String,
        deadline_ms: u64,
    },
    /// The client could not be built.
    #[error("building the Compute Engine client failed: {0}")]
    Setup(String),
}

impl crate::error::Classify for ComputeError {
    /// True when trying the same thing again later may succeed.
    fn is_retryable(&self) -> bool {
        matches!(
            self,
            ComputeError::Transient { .. }
                | ComputeError::Contention { .. }
                | ComputeError::OperationTimeout { .. }
        )
    }
}

/// How one failed attempt is handled. The only place that interprets Google's error body.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Retry the same request after a backoff.
    Retry(String),
    /// The fingerprint was stale: re-read and resend.
    Precondition,
    /// Permanent.
    Fail(ComputeError),
}

fn reasons(e: &google_cloud_compute_v1::Error) -> Vec<String> {
    e.status()
        .map(|s| {
            s.details
                .iter()
                .filter_map(|d| match d {
                    StatusDetails::ErrorInfo(i) => Some(i.reason.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn classify_error(call: &'static str, e: &google_cloud_compute_v1::Error) -> Class {
    let message = e
        .status()
        .map(|s| s.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| e.to_string());
    let message = echo_long(&message);
    let Some(status) = e.http_status_code() else {
        if e.is_timeout() || e.is_io() || e.is_connect() || e.is_transport() || e.is_exhausted() {
            return Class::Retry(message);
        }
        return Class::Fail(ComputeError::Refused {
            call,
            status: 0,
            reason: "client".into(),
            message,
        });
    };
    let reasons = reasons(e);
    let has = |r: &str| reasons.iter().any(|x| x == r);
    match status {
        412 => Class::Precondition,
        429 | 500..=599 => Class::Retry(format!("HTTP {status}: {message}")),
        403 if has("rateLimitExceeded") || has("userRateLimitExceeded") => {
            Class::Retry(format!("HTTP 403 rateLimitExceeded: {message}"))
        }
        404 => Class::Fail(ComputeError::NotFound { call, message }),
        _ => Class::Fail(ComputeError::Refused {
            call,
            status,
            reason: reasons.first().cloned().unwrap_or_default(),
            message,
        }),
    }
}

fn classify_operation(call: &'static str, op: &model::Operation) -> Option<Class> {
    let errors = op
        .error
        .as_ref()
        .map(|e| e.errors.as_slice())
        .unwrap_or_default();
    let http = op.http_error_status_code;
    if errors.is_empty() && http.is_none() {
        return None;
    }
    let first = errors.first();
    let code = first.and_then(|e| e.code.clone()).unwrap_or_default();
    let message = echo_long(
        &first
            .and_then(|e| e.message.clone())
            .or_else(|| op.http_error_message.clone())
            .unwrap_or_default(),
    );
    let operation = op.name.clone().unwrap_or_default();
    Some(match code.as_str() {
        "CONDITION_NOT_MET" => Class::Precondition,
        "IP_IN_USE_BY_ANOTHER_RESOURCE" => Class::Fail(ComputeError::AliasInUse { call, message }),
        "IP_SPACE_EXHAUSTED" => Class::Fail(ComputeError::RangeExhausted { call, message }),
        "RESOURCE_NOT_FOUND" => Class::Fail(ComputeError::NotFound { call, message }),
        "RATE_LIMIT_EXCEEDED"
        | "RESOURCE_OPERATION_RATE_EXCEEDED"
        | "INTERNAL_ERROR"
        | "RESOURCE_NOT_READY" => Class::Retry(format!("{code}: {message}")),
        _ if http.is_some_and(|h| h == 429 || h >= 500) => {
            Class::Retry(format!("{code}: {message}"))
        }
        _ if http == Some(412) => Class::Precondition,
        _ => Class::Fail(ComputeError::OperationFailed {
            call,
            operation,
            code,
            message,
        }),
    })
}

fn echo_long(s: &str) -> String {
    if s.len() <= 300 {
        s.to_string()
    } else {
        echo(s)
    }
}

/// Whether a write was needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The change was made.
    Changed,
    /// The resource was already in the desired state; nothing was sent.
    Unchanged,
}

/// An alias IP range as nodewire sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasRange {
    /// As the API returns it (`10.4.1.0/24`).
    pub cidr: String,
    pub range_name: Option<String>,
}

/// A VM's first network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicView {
    pub name: String,
    /// Subnetwork self link.
    pub subnetwork: String,
    pub network_ip: Option<String>,
    pub aliases: Vec<AliasRange>,
}

/// The facts nodewire reads from a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub instance: InstanceRef,
    pub id: Option<u64>,
    pub status: String,
    pub can_ip_forward: bool,
    pub tags: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub nic0: Option<NicView>,
}

impl InstanceView {
    fn from_model(project: &str, zone_hint: &str, i: &model::Instance) -> Option<Self> {
        let name = i.name.clone()?;
        let zone = i
            .zone
            .as_deref()
            .and_then(|z| z.rsplit('/').next())
            .unwrap_or(zone_hint)
            .to_string();
        let instance = InstanceRef::new(project, zone, name).ok()?;
        let nic0 = i.network_interfaces.first().map(|n| NicView {
            name: n.name.clone().unwrap_or_else(|| "nic0".into()),
            subnetwork: n.subnetwork.clone().unwrap_or_default(),
            network_ip: n.network_ip.clone(),
            aliases: n
                .alias_ip_ranges
                .iter()
                .map(|a| AliasRange {
                    cidr: a.ip_cidr_range.clone().unwrap_or_default(),
                    range_name: a.subnetwork_range_name.clone(),
                })
                .collect(),
        });
        Some(Self {
            instance,
            id: i.id,
            status: i
                .status
                .as_ref()
                .and_then(|s| s.name())
                .unwrap_or("UNKNOWN")
                .to_string(),
            can_ip_forward: i.can_ip_forward.unwrap_or(false),
            tags: i.tags.as_ref().map(|t| t.items.clone()).unwrap_or_default(),
            labels: i
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            metadata: i
                .metadata
                .as_ref()
                .map(|m| {
                    m.items
                        .iter()
                        .filter_map(|it| {
                            Some((it.key.clone()?, it.value.clone().unwrap_or_default()))
                        })
                        .collect()
                })
                .unwrap_or_default(),
            nic0,
        })
    }
}

/// A subnetwork's ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetView {
    pub self_link: String,
    pub ip_cidr_range: Option<Cidr>,
    /// `(rangeName, range)`.
    pub secondary: Vec<(String, Cidr)>,
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

/// Direct HTTP to the Compute API, authenticated like the library clients.
#[derive(Clone)]
struct RawClient {
    base: String,
    http: reqwest::Client,
    /// `None` for a loopback `http://` endpoint (the simulator).
    credentials:
        Option<std::sync::Arc<tokio::sync::OnceCell<google_cloud_auth::credentials::Credentials>>>,
}

impl RawClient {
    fn new(endpoint: &ComputeEndpoint, policy: &ComputePolicy) -> Result<Self, ComputeError> {
        let base = endpoint
            .url
            .clone()
            .unwrap_or_else(|| "https://compute.googleapis.com".into())
            .trim_end_matches('/')
            .to_string();
        let anonymous = base.starts_with("http://");
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(policy.attempt_timeout)
                .build()
                .map_err(|e| ComputeError::Setup(e.to_string()))?,
            credentials: (!anonymous).then(|| std::sync::Arc::new(tokio::sync::OnceCell::new())),
            base,
        })
    }

    async fn auth_headers(&self) -> Result<Option<http::HeaderMap>, Class> {
        let Some(cell) = &self.credentials else {
            return Ok(None);
        };
        let creds = cell
            .get_or_try_init(|| async {
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| Class::Fail(ComputeError::Setup(e.to_string())))
            })
            .await?;
        match creds.headers(http::Extensions::new()).await {
            Ok(google_cloud_auth::credentials::CacheableResource::New { data, .. }) => {
                Ok(Some(data))
            }
            Ok(google_cloud_auth::credentials::CacheableResource::NotModified) => Ok(None),
            Err(e) => Err(Class::Retry(format!("credentials: {e}"))),
        }
    }

    /// `updateNetworkInterface` with an explicit (possibly empty) alias list.
    async fn update_aliases(
        &self,
        call: &'static str,
        r: &InstanceRef,
        nic: &str,
        fingerprint: &[u8],
        aliases: &[AliasRange],
        rid: &str,
    ) -> Result<model::Operation, Class> {
        use base64::Engine as _;
        let url = format!(
            "{}/compute/v1/projects/{}/zones/{}/instances/{}/updateNetworkInterface",
            self.base,
            r.project(),
            r.zone(),
            r.name()
        );
        let ranges: Vec<serde_json::Value> = aliases
            .iter()
            .map(|a| {
                let mut v = serde_json::json!({"ipCidrRange": a.cidr});
                if let Some(n) = &a.range_name {
                    v["subnetworkRangeName"] = serde_json::json!(n);
                }
                v
            })
            .collect();
        let body = serde_json::json!({
            "fingerprint": base64::engine::general_purpose::URL_SAFE.encode(fingerprint),
            "aliasIpRanges": ranges,
        });
        let mut req = self
            .http
            .patch(url)
            .query(&[("networkInterface", nic), ("requestId", rid)])
            .json(&body);
        if let Some(h) = self.auth_headers().await? {
            req = req.headers(h);
        }
        let resp = req.send().await.map_err(|e| Class::Retry(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Class::Retry(e.to_string()))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes).map_err(|e| {
                Class::Fail(ComputeError::Refused {
                    call,
                    status,
                    reason: "response".into(),
                    message: e.to_string(),
                })
            });
        }
        Err(classify_body(call, status, &bytes))
    }
}

/// Google's JSON error body (`{"error":{"code","message","errors":[{"reason"}]}}`) of a
/// request sent without the library.
fn classify_body(call: &'static str, status: u16, body: &[u8]) -> Class {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = echo_long(v["error"]["message"].as_str().unwrap_or("(no message)"));
    let reasons: Vec<&str> = v["error"]["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    match status {
        412 => Class::Precondition,
        429 | 500..=599 => Class::Retry(format!("HTTP {status}: {message}")),
        403 if reasons
            .iter()
            .any(|r| *r == "rateLimitExceeded" || *r == "userRateLimitExceeded") =>
        {
            Class::Retry(format!("HTTP 403 rateLimitExceeded: {message}"))
        }
        404 => Class::Fail(ComputeError::NotFound { call, message }),
        _ => Class::Fail(ComputeError::Refused {
            call,
            status,
            reason: reasons
                .first()
                .map(|r| (*r).to_string())
                .unwrap_or_default(),
            message,
        }),
    }
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
            .map_err(|e| ComputeError::Setup(e.to_string()))?
    }};
}

/// A fresh `requestId` (a random UUID v4).
fn request_id() -> String {
    let mut b: [u8; 16] = rand::rng().random();
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
    async fn retrying<T, F, Fut>(&self, call: &'static str, mut f: F) -> Result<T, Class>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Class>>,
    {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match f().await {
                Err(Class::Retry(message)) => {
                    let backoff = self.backoff(attempt);
                    if attempt >= self.policy.max_attempts
                        || started.elapsed() + backoff > self.policy.max_elapsed
                    {
                        return Err(Class::Fail(ComputeError::Transient {
                            call,
                            attempts: attempt,
                            elapsed_ms: started.elapsed().as_millis() as u64,
                            message,
                        }));
                    }
                    tracing::debug!(call, attempt, backoff_ms = backoff.as_millis() as u64, %message, "transient Compute error; retrying");
                    tokio::time::sleep(backoff).await;
                }
                other => return other,
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .policy
            .base_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.policy.max_backoff);
        let ms = exp.as_millis() as u64;
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms.max(1)))
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
    /// `nextPageToken`), optionally filtered (Compute filter syntax).
    ///
    /// # Errors
    /// [`ComputeError`] when a page cannot be read.
    pub async fn list_instances(
        &self,
        filter: Option<&str>,
    ) -> Result<Vec<InstanceView>, ComputeError> {
        Ok(self.list_instances_paged(filter).await?.0)
    }

    /// Like [`Compute::list_instances`], also returning how many pages were read.
    ///
    /// # Errors
    /// [`ComputeError`] when a page cannot be read.
    pub async fn list_instances_paged(
        &self,
        filter: Option<&str>,
    ) -> Result<(Vec<InstanceView>, usize), ComputeError> {
        const CALL: &str = "instances.aggregatedList";
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            pages += 1;
            let page = self
                .retrying(CALL, || async {
                    self.instances
                        .aggregated_list()
                        .set_project(&self.project)
                        .set_max_results(500u32)
                        .set_or_clear_filter(filter.map(str::to_string))
                        .set_or_clear_page_token(token.clone())
                        .send()
                        .await
                        .map_err(|e| classify_error(CALL, &e))
                })
                .await
                .map_err(class_to_error(CALL))?;
            for (scope, list) in &page.items {
                let zone = scope.strip_prefix("zones/").unwrap_or(scope);
                out.extend(
                    list.instances
                        .iter()
                        .filter_map(|i| InstanceView::from_model(&self.project, zone, i)),
                );
            }
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok((out, pages))
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
    /// The library leaves an empty list out of the request body, which under PATCH semantics
    /// changes nothing; an empty `ranges` is therefore sent directly over HTTP with the same
    /// credentials, fingerprint and `requestId` rules.
    ///
    /// # Idempotency
    /// No request is sent when nic0 already has exactly these ranges.
    ///
    /// # Errors
    /// [`ComputeError::AliasInUse`], [`ComputeError::RangeExhausted`], [`ComputeError::Refused`]
    /// (e.g. a range outside the secondary range) are permanent.
    pub async fn set_alias_ranges(
        &self,
        r: &InstanceRef,
        ranges: &[AliasRange],
    ) -> Result<WriteOutcome, ComputeError> {
        self.mutate("instances.updateNetworkInterface", r, |i| {
            let nic = i.network_interfaces.first()?;
            let current: Vec<AliasRange> = nic
                .alias_ip_ranges
                .iter()
                .map(|a| AliasRange {
                    cidr: a.ip_cidr_range.clone().unwrap_or_default(),
                    range_name: a.subnetwork_range_name.clone(),
                })
                .collect();
            if current == ranges {
                return None;
            }
            let nic_name = nic.name.clone().unwrap_or_else(|| "nic0".into());
            if ranges.is_empty() {
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
                .set_alias_ip_ranges(ranges.iter().map(|a| {
                    let mut x = model::AliasIpRange::new().set_ip_cidr_range(a.cidr.clone());
                    x.subnetwork_range_name = a.range_name.clone();
                    x
                }))
                .set_or_clear_fingerprint(nic.fingerprint.clone());
            Some(Change::Nic(nic_name, Box::new(body)))
        })
        .await
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
            let rid = request_id();
            let sent = self
                .retrying(call, || self.send(call, r, &change, &rid))
                .await;
            let op = match sent {
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
                    tracing::debug!(call, instance = %r, %message, "operation failed transiently; resending");
                    tokio::time::sleep(self.backoff(resend + 1)).await;
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
            let remaining = deadline.saturating_duration_since(Instant::now());
            let next = self
                .retrying(WAIT, || async {
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

fn class_to_error(call: &'static str) -> impl Fn(Class) -> ComputeError {
    move |c| match c {
        Class::Fail(e) => e,
        Class::Retry(message) => ComputeError::Transient {
            call,
            attempts: 1,
            elapsed_ms: 0,
            message,
        },
        Class::Precondition => ComputeError::Contention { call, resends: 0 },
    }
}

#[cfg(test)]
mod tests {
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
