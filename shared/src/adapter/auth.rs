//! ARRIVE: who sent a delivery. Pub/Sub push subscriptions and Cloud Scheduler HTTP targets
//! put a Google-signed OpenID Connect ID token in `Authorization: Bearer …`
//! (<https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions>,
//! <https://cloud.google.com/scheduler/docs/http-target-auth>). Before anything of a delivery
//! is read, the adapter checks that token here:
//!
//! - the header: `alg` RS256 only (no `none`, no HMAC: the algorithm is ours, not the token's),
//!   a `kid`, no `crit`;
//! - the signature, against Google's published keys (JWKS), fetched and cached for as long as
//!   their `Cache-Control: max-age` says, fetched again when a token names an unknown `kid`
//!   (at most once per [`crate::config::UNKNOWN_KID_REFETCH`], so a flood of made-up key ids cannot make us
//!   hammer Google), and used past their age only while Google cannot be reached;
//! - the claims: `iss` Google, `aud` one of the service's audiences, `exp` not passed and `iat`
//!   not in the future (both within the clock skew), a lifetime of at most
//!   [`MAX_TOKEN_LIFETIME`] (Google's ID tokens last one hour), `email_verified` true and the
//!   `email` in the allow-list of invokers.
//!
//! Missing or invalid → 401, a valid token of someone not allowed → 403, the keys unreachable →
//! 503 (Pub/Sub redelivers); nothing of the delivery is acted on, and the log line names the
//! reason and never the token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine as _;
use http::HeaderMap;
use serde::Deserialize;

use crate::config::{OidcSettings, PushAuthSettings, SignatureCheck};
use crate::text::shorten;

/// The issuers of Google's ID tokens (<https://accounts.google.com/.well-known/openid-configuration>;
/// Google documents both spellings).
pub const GOOGLE_ISSUERS: [&str; 2] = ["https://accounts.google.com", "accounts.google.com"];

/// What Cloud Run puts in place of the signature after its invoker IAM check verified it.
pub const REMOVED_SIGNATURE: &str = "SIGNATURE_REMOVED_BY_GOOGLE";

/// Google's ID tokens are valid for one hour
/// (<https://cloud.google.com/docs/authentication/token-types#identity-tokens>); a token that
/// claims more was not minted by Google for a push.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// A token longer than this is not an ID token (Google's are about 1 KB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The key set is kept at least this long and at most [`MAX_KEYS_AGE`], whatever its
/// `Cache-Control` says; without one, [`DEFAULT_KEYS_AGE`].
pub const MIN_KEYS_AGE: Duration = Duration::from_secs(60);
pub const MAX_KEYS_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_KEYS_AGE: Duration = Duration::from_secs(3600);
/// How long past its age a cached key set may still be used while fetching a new one keeps
/// failing; then tokens are answered 503 (redelivered) until the keys can be fetched.
pub const STALE_KEYS_GRACE: Duration = Duration::from_secs(3600);

/// A key set larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// The authenticated sender of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The service account the ID token was issued to (lowercase).
    pub email: String,
    /// The `google.compute_engine` claims, present in a VM's instance identity token asked for
    /// with `format=full`
    /// (<https://cloud.google.com/compute/docs/instances/verifying-instance-identity>).
    pub compute_engine: Option<ComputeEngineClaims>,
    /// `iat` and `exp` (Unix seconds).
    pub issued_at: i64,
    pub expires_at: i64,
    /// SHA-256 of the whole token, hex: names the token (replay checks) without revealing it.
    pub token_digest: String,
}

/// What a full-format instance identity token says of the VM that asked for it. Google signs
/// it; the values are still checked against a fresh `instances.get` before anything is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComputeEngineClaims {
    pub project_id: String,
    pub zone: String,
    /// The numeric instance id, as a decimal string.
    pub instance_id: String,
    pub instance_name: String,
}

#[derive(Deserialize)]
struct GoogleClaims {
    compute_engine: Option<RawComputeEngine>,
}

#[derive(Deserialize)]
struct RawComputeEngine {
    project_id: Option<String>,
    zone: Option<String>,
    instance_id: Option<serde_json::Value>,
    instance_name: Option<String>,
}

impl RawComputeEngine {
    fn checked(self) -> Result<ComputeEngineClaims, AuthError> {
        let bad = |what: &str| {
            AuthError::Invalid(format!(
                "google.compute_engine.{what} is missing or malformed"
            ))
        };
        let instance_id = match self.instance_id {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(bad("instance_id")),
        };
        if instance_id.is_empty()
            || instance_id.len() > 20
            || !instance_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad("instance_id"));
        }
        let short = |v: Option<String>, what: &str| match v {
            Some(s) if !s.is_empty() && s.len() <= 128 => Ok(s),
            _ => Err(bad(what)),
        };
        Ok(ComputeEngineClaims {
            project_id: short(self.project_id, "project_id")?,
            zone: short(self.zone, "zone")?,
            instance_id,
            instance_name: short(self.instance_name, "instance_name")?,
        })
    }
}

/// Why a delivery is not accepted. The texts name the check that failed, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header (401).
    #[error("no bearer token")]
    Missing,
    /// The token is not a well-formed, correctly signed, current ID token for this service
    /// (401).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// A valid token of a caller who may not invoke this service (403).
    #[error("caller not allowed: {0}")]
    Forbidden(String),
    /// Google's keys could not be fetched and none cached fits (503, redelivered).
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    /// This process was built without push authentication settings (401: fail closed).
    #[error("push authentication is not configured (NODEWIRE_PUSH_AUTH)")]
    NotConfigured,
}

/// The check of one function: built once from its settings, shared by every delivery.
#[derive(Clone)]
pub struct Authenticator {
    mode: Mode,
}

#[derive(Clone)]
enum Mode {
    Unset,
    Off,
    Oidc(Arc<Verifier>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match &self.mode {
            Mode::Unset => "unset",
            Mode::Off => "off",
            Mode::Oidc(_) => "oidc",
        };
        f.debug_struct("Authenticator")
            .field("mode", &mode)
            .finish()
    }
}

impl Authenticator {
    /// The check `settings` describe.
    pub fn new(settings: &PushAuthSettings) -> Self {
        let mode = match settings {
            PushAuthSettings::Unset => Mode::Unset,
            PushAuthSettings::Off => Mode::Off,
            PushAuthSettings::Oidc(s) => Mode::Oidc(Arc::new(Verifier::new(s.clone()))),
        };
        Self { mode }
    }

    /// True when deliveries are not checked (the sandbox and tests).
    pub fn is_off(&self) -> bool {
        matches!(self.mode, Mode::Off)
    }

    /// Checks a delivery's headers. `Ok(None)` when verification is off.
    ///
    /// # Errors
    /// [`AuthError`] saying why the delivery is refused.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Option<Caller>, AuthError> {
        match &self.mode {
            Mode::Unset => Err(AuthError::NotConfigured),
            Mode::Off => Ok(None),
            Mode::Oidc(v) => {
                let token = bearer(headers)?;
                v.verify(token, now_unix()).await.map(Some)
            }
        }
    }
}

/// Lowercase hex of SHA-256.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    d.as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The token of the one `Authorization: Bearer` header.
fn bearer(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(AuthError::Missing);
    };
    if values.next().is_some() {
        return Err(AuthError::Invalid(
            "more than one Authorization header".into(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| AuthError::Invalid("the Authorization header is not ASCII".into()))?;
    let (scheme, token) = value.split_once(' ').ok_or_else(|| {
        AuthError::Invalid("the Authorization header is not `Bearer TOKEN`".into())
    })?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::Invalid(format!(
            "the Authorization scheme is {:?}, not Bearer",
            shorten(scheme, 16)
        )));
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    Ok(token)
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: Option<String>,
    aud: Option<Audience>,
    exp: Option<i64>,
    iat: Option<i64>,
    nbf: Option<i64>,
    email: Option<String>,
    email_verified: Option<bool>,
    google: Option<GoogleClaims>,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Invalid(format!("the {what} is not base64url")))
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, AuthError> {
    serde_json::from_slice(bytes)
        .map_err(|_| AuthError::Invalid(format!("the {what} is not the expected JSON")))
}

/// A key of the set: RSA modulus and exponent, big-endian without leading zeros.
#[derive(Clone)]
struct Key {
    n: Vec<u8>,
    e: Vec<u8>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Key>,
    fresh_until: Option<Instant>,
    fetched_at: Option<Instant>,
}

impl KeySet {
    fn fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|t| now < t)
    }
    /// Fresh, or stale by less than [`STALE_KEYS_GRACE`]: what may still verify a token while
    /// refetching fails. Past that, a key Google may have revoked is not trusted any more.
    fn usable(&self, now: Instant) -> bool {
        self.fresh_until
            .is_some_and(|t| now < t.checked_add(STALE_KEYS_GRACE).unwrap_or(t))
    }
    fn fetched_recently(&self, now: Instant, interval: Duration) -> bool {
        self.fetched_at
            .is_some_and(|t| now.saturating_duration_since(t) < interval)
    }
}

/// Verifies ID tokens against one key set URL. Cheap to share (`Arc`).
struct Verifier {
    settings: OidcSettings,
    http: reqwest::Client,
    keys: tokio::sync::RwLock<KeySet>,
    /// One fetch at a time; the others wait and then use its result.
    fetching: tokio::sync::Mutex<()>,
}

impl Verifier {
    fn new(settings: OidcSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Self {
            settings,
            http,
            keys: tokio::sync::RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    async fn verify(&self, token: &str, now: i64) -> Result<Caller, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid(format!(
                "{} bytes is longer than any ID token",
                token.len()
            )));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Invalid(
                "not a JWS (three dot-separated parts)".into(),
            ));
        };
        let header: Header = json(&b64(h, "header")?, "header")?;
        if header.alg.as_deref() != Some("RS256") {
            return Err(AuthError::Invalid(format!(
                "algorithm {:?}; only RS256 is accepted",
                header.alg.as_deref().map(|a| shorten(a, 16))
            )));
        }
        if header.crit.is_some() {
            return Err(AuthError::Invalid(
                "critical header extensions are not supported".into(),
            ));
        }
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= 128)
            .ok_or_else(|| AuthError::Invalid("no usable key id (kid)".into()))?;
        match (self.settings.signature, sig == REMOVED_SIGNATURE) {
            (SignatureCheck::Verify, false) => {
                let signature = b64(sig, "signature")?;
                let key = self.key(&kid).await?;
                let signed = &token[..h.len() + 1 + c.len()];
                RsaPublicKeyComponents {
                    n: &key.n,
                    e: &key.e,
                }
                .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
                .map_err(|_| AuthError::Invalid("the signature does not verify".into()))?;
            }
            (SignatureCheck::Verify, true) => {
                return Err(AuthError::Invalid(
                    "the signature was removed (Cloud Run's invoker IAM check is on): \
                     set NODEWIRE_PUSH_AUTH=cloud-run-iam, or disable the IAM check"
                        .into(),
                ));
            }
            (SignatureCheck::RemovedByCloudRun, true) => {}
            (SignatureCheck::RemovedByCloudRun, false) => {
                return Err(AuthError::Invalid(
                    "a signed token reached the container: Cloud Run's invoker IAM check, \
                     which NODEWIRE_PUSH_AUTH=cloud-run-iam relies on, did not run"
                        .into(),
                ));
            }
        }
        let claims: Claims = json(&b64(c, "claims")?, "claims")?;
        let mut caller = self.check_claims(claims, now)?;
        caller.token_digest = hex_sha256(token.as_bytes());
        Ok(caller)
    }

    fn check_claims(&self, claims: Claims, now: i64) -> Result<Caller, AuthError> {
        let skew = i64::try_from(self.settings.clock_skew.as_secs()).unwrap_or(300);
        let iss = claims.iss.as_deref().unwrap_or_default();
        if !GOOGLE_ISSUERS.contains(&iss) {
            return Err(AuthError::Invalid(format!(
                "issuer {:?} is not Google",
                shorten(iss, 64)
            )));
        }
        let audiences: Vec<&str> = match &claims.aud {
            Some(Audience::One(a)) => vec![a.as_str()],
            Some(Audience::Many(a)) => a.iter().map(String::as_str).collect(),
            None => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|a| self.settings.audiences.iter().any(|ours| ours == a))
        {
            return Err(AuthError::Invalid(format!(
                "audience {:?} is not this service's",
                audiences.first().map(|a| shorten(a, 128))
            )));
        }
        let (Some(exp), Some(iat)) = (claims.exp, claims.iat) else {
            return Err(AuthError::Invalid("exp and iat are required".into()));
        };
        if now > exp.saturating_add(skew) {
            return Err(AuthError::Invalid(format!(
                "expired {}s ago",
                now.saturating_sub(exp)
            )));
        }
        if iat > now.saturating_add(skew)
            || claims.nbf.is_some_and(|n| n > now.saturating_add(skew))
        {
            return Err(AuthError::Invalid("issued in the future".into()));
        }
        let lifetime = exp.saturating_sub(iat);
        let max = i64::try_from(MAX_TOKEN_LIFETIME.as_secs()).unwrap_or(i64::MAX);
        if lifetime > max.saturating_add(skew) {
            return Err(AuthError::Invalid(format!(
                "a lifetime of {lifetime}s is longer than an ID token's"
            )));
        }
        let email = claims
            .email
            .as_deref()
            .ok_or_else(|| AuthError::Forbidden("the token carries no email".into()))?
            .to_ascii_lowercase();
        if claims.email_verified != Some(true) {
            return Err(AuthError::Forbidden(format!(
                "the email {:?} is not verified",
                shorten(&email, 128)
            )));
        }
        if !self.settings.invokers.contains(&email) {
            return Err(AuthError::Forbidden(format!(
                "{:?} is not an allowed invoker (NODEWIRE_PUSH_INVOKERS)",
                shorten(&email, 128)
            )));
        }
        let compute_engine = match claims.google.and_then(|g| g.compute_engine) {
            Some(raw) => Some(raw.checked()?),
            None => None,
        };
        Ok(Caller {
            email,
            compute_engine,
            issued_at: iat,
            expires_at: exp,
            token_digest: String::new(),
        })
    }

    /// The key `kid`, from the cache or a fetch of the key set.
    async fn key(&self, kid: &str) -> Result<Key, AuthError> {
        let interval = self.settings.unknown_kid_refetch;
        {
            let set = self.keys.read().await;
            let now = Instant::now();
            if set.fresh(now) {
                if let Some(k) = set.keys.get(kid) {
                    return Ok(k.clone());
                }
                if set.fetched_recently(now, interval) {
                    return Err(AuthError::Invalid("unknown key id".into()));
                }
            }
        }
        let _one_fetch = self.fetching.lock().await;
        // Another delivery may have fetched while this one waited.
        {
            let set = self.keys.read().await;
            let now = Instant::now();
            if set.fresh(now) || set.fetched_recently(now, interval) {
                if let Some(k) = set.keys.get(kid).filter(|_| set.usable(now)) {
                    return Ok(k.clone());
                }
                if set.fetched_recently(now, interval) {
                    return Err(AuthError::Invalid("unknown key id".into()));
                }
            }
        }
        match self.fetch().await {
            Ok((keys, age)) => {
                let now = Instant::now();
                let found = keys.get(kid).cloned();
                let mut set = self.keys.write().await;
                *set = KeySet {
                    keys,
                    fresh_until: Some(now + age),
                    fetched_at: Some(now),
                };
                found.ok_or_else(|| AuthError::Invalid("unknown key id".into()))
            }
            Err(e) => {
                let mut set = self.keys.write().await;
                let now = Instant::now();
                // Do not ask again at once: the next deliveries use what is cached.
                set.fetched_at = Some(now);
                match set.keys.get(kid) {
                    Some(k) if set.usable(now) => {
                        tracing::warn!(error = %e, "the signing keys could not be refreshed; using the cached ones");
                        Ok(k.clone())
                    }
                    Some(_) => Err(AuthError::KeysUnavailable(format!(
                        "{e}; the cached keys are more than {}s past their age",
                        STALE_KEYS_GRACE.as_secs()
                    ))),
                    None => Err(AuthError::KeysUnavailable(e)),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, Key>, Duration), String> {
        let resp = self
            .http
            .get(&self.settings.jwks_url)
            .send()
            .await
            .map_err(|e| format!("fetching the key set: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("the key set answered {}", resp.status()));
        }
        let age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .map_or(DEFAULT_KEYS_AGE, cache_age);
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_JWKS_BYTES as u64)
        {
            return Err("the key set is too large".into());
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the key set: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("the key set is too large".into());
        }
        Ok((parse_jwks(&body)?, age))
    }
}

/// The age `Cache-Control` allows (`max-age=N`), bounded by [`MIN_KEYS_AGE`] and
/// [`MAX_KEYS_AGE`]; [`MIN_KEYS_AGE`] for `no-cache`/`no-store`.
pub fn cache_age(cache_control: &str) -> Duration {
    let mut age = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return MIN_KEYS_AGE;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age.unwrap_or(DEFAULT_KEYS_AGE)
        .clamp(MIN_KEYS_AGE, MAX_KEYS_AGE)
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// The RS256 signing keys of a JWKS document, by key id. Keys of other types or uses are
/// skipped; a document without any usable key is an error.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Key>, String> {
    let set: Jwks = serde_json::from_slice(body).map_err(|e| format!("the key set: {e}"))?;
    let mut keys = HashMap::new();
    for k in set.keys.into_iter().take(64) {
        let usable = k.kty.as_deref() == Some("RSA")
            && k.alg.as_deref().is_none_or(|a| a == "RS256")
            && k.use_.as_deref().is_none_or(|u| u == "sig");
        let (Some(kid), Some(n), Some(e)) = (k.kid, k.n, k.e) else {
            continue;
        };
        if !usable || kid.len() > 128 {
            continue;
        }
        let decode = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .ok()
        };
        let (Some(n), Some(e)) = (decode(&n), decode(&e)) else {
            continue;
        };
        let n: Vec<u8> = n.into_iter().skip_while(|b| *b == 0).collect();
        let e: Vec<u8> = e.into_iter().skip_while(|b| *b == 0).collect();
        // RSA_PKCS1_2048_8192_SHA256 refuses shorter moduli at verification anyway.
        if n.len() < 256 || e.is_empty() {
            continue;
        }
        keys.insert(kid, Key { n, e });
    }
    if keys.is_empty() {
        return Err("the key set holds no RS256 signing key".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 20, item 5: cached keys do not verify tokens for ever while refetching fails.
    #[test]
    fn stale_keys_are_usable_only_within_the_grace() {
        let now = Instant::now();
        let set = |age_past: Option<Duration>, ahead: Option<Duration>| KeySet {
            keys: HashMap::new(),
            fresh_until: match (age_past, ahead) {
                (Some(p), _) => now.checked_sub(p),
                (None, Some(a)) => Some(now + a),
                (None, None) => None,
            },
            fetched_at: None,
        };
        assert!(
            set(None, Some(Duration::from_secs(10))).usable(now),
            "fresh"
        );
        let stale = set(Some(Duration::from_secs(60)), None);
        assert!(
            !stale.fresh(now) && stale.usable(now),
            "stale within the grace"
        );
        let Some(long) = STALE_KEYS_GRACE.checked_add(Duration::from_secs(1)) else {
            unreachable!()
        };
        if now.checked_sub(long).is_some() {
            assert!(!set(Some(long), None).usable(now), "past the grace");
        }
        assert!(!set(None, None).usable(now), "never fetched");
    }

    #[test]
    fn cache_control_bounds_the_age() {
        assert_eq!(
            cache_age("public, max-age=19045, must-revalidate, no-transform"),
            Duration::from_secs(19045)
        );
        assert_eq!(cache_age("max-age=1"), MIN_KEYS_AGE);
        assert_eq!(cache_age("max-age=99999999"), MAX_KEYS_AGE);
        assert_eq!(cache_age("no-store"), MIN_KEYS_AGE);
        assert_eq!(cache_age("public"), DEFAULT_KEYS_AGE);
        assert_eq!(cache_age("max-age=abc"), DEFAULT_KEYS_AGE);
    }

    #[test]
    fn bearer_header_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), Err(AuthError::Missing));
        h.insert(
            http::header::AUTHORIZATION,
            "Basic abc".parse().expect("value"),
        );
        assert!(matches!(bearer(&h), Err(AuthError::Invalid(_))));
        h.insert(
            http::header::AUTHORIZATION,
            "bearer a.b.c".parse().expect("value"),
        );
        assert_eq!(bearer(&h), Ok("a.b.c"));
        h.append(
            http::header::AUTHORIZATION,
            "Bearer d.e.f".parse().expect("value"),
        );
        assert!(matches!(bearer(&h), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn a_key_set_without_usable_keys_is_refused() {
        assert!(parse_jwks(br#"{"keys":[]}"#).is_err());
        assert!(parse_jwks(br#"{"keys":[{"kty":"EC","kid":"a","crv":"P-256"}]}"#).is_err());
        assert!(
            parse_jwks(br#"{"keys":[{"kty":"RSA","kid":"a","n":"AQAB","e":"AQAB"}]}"#).is_err()
        );
        assert!(parse_jwks(b"[[[[").is_err());
    }
}
