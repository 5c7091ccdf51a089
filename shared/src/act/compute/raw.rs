//! ACT, Compute side: the requests sent without the library, over plain HTTP with the same
//! credentials: `updateNetworkInterface` with an empty alias list (which the library would
//! leave out of the body), with the same fingerprint and `requestId` rules; and
//! `aggregatedList` with the `fields` parameter (a partial response, which the library cannot
//! ask for).

use google_cloud_compute_v1::model;

use super::error::{Class, ComputeError, classify_body};
use super::{AliasRange, ComputeEndpoint, ComputePolicy};
use crate::names::InstanceRef;

/// Direct HTTP to the Compute API, authenticated like the library clients.
#[derive(Clone)]
pub(super) struct RawClient {
    base: String,
    http: reqwest::Client,
    /// `None` for a loopback `http://` endpoint (the simulator).
    credentials:
        Option<std::sync::Arc<tokio::sync::OnceCell<google_cloud_auth::credentials::Credentials>>>,
}

impl RawClient {
    pub(super) fn new(
        endpoint: &ComputeEndpoint,
        policy: &ComputePolicy,
    ) -> Result<Self, ComputeError> {
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
                .map_err(|e| ComputeError::Setup(crate::error::Cause::new(e)))?,
            credentials: (!anonymous).then(|| std::sync::Arc::new(tokio::sync::OnceCell::new())),
            base,
        })
    }

    pub(super) async fn auth_headers(&self) -> Result<Option<http::HeaderMap>, Class> {
        let Some(cell) = &self.credentials else {
            return Ok(None);
        };
        let creds = cell
            .get_or_try_init(|| async {
                google_cloud_auth::credentials::Builder::default()
                    .build()
                    .map_err(|e| Class::Fail(ComputeError::Setup(crate::error::Cause::new(e))))
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

    /// Sends `req` with the credentials and reads a JSON answer, or classifies the failure.
    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        call: &'static str,
        mut req: reqwest::RequestBuilder,
    ) -> Result<T, Class> {
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

    /// One page of `instances.aggregatedList`, asking only for `fields`.
    pub(super) async fn aggregated_page(
        &self,
        call: &'static str,
        project: &str,
        filter: Option<&str>,
        page_token: Option<&str>,
        fields: &str,
    ) -> Result<model::InstanceAggregatedList, Class> {
        let url = format!(
            "{}/compute/v1/projects/{project}/aggregated/instances",
            self.base
        );
        let mut query: Vec<(&str, &str)> = vec![("maxResults", "500"), ("fields", fields)];
        if let Some(f) = filter {
            query.push(("filter", f));
        }
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        let req = self.http.get(url).query(&query);
        self.send(call, req).await
    }

    /// `updateNetworkInterface` with an explicit (possibly empty) alias list.
    pub(super) async fn update_aliases(
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
        let req = self
            .http
            .patch(url)
            .query(&[("networkInterface", nic), ("requestId", rid)])
            .json(&body);
        self.send(call, req).await
    }
}
