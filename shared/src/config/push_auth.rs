//! Who may deliver to a function: the settings of the adapter's OIDC check
//! (`adapter::auth`). Pub/Sub push subscriptions and Cloud Scheduler HTTP targets send a
//! Google-signed ID token in `Authorization: Bearer …`
//! (<https://cloud.google.com/pubsub/docs/authenticate-push-subscriptions>); the function
//! accepts a delivery only when that token is valid for one of its audiences and was issued to
//! one of the allowed service accounts.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{ConfigError, Source, err};
use crate::names::echo;

/// Google's published signing keys for ID tokens (JWKS).
pub const GOOGLE_JWKS_URL: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// How a delivery's ID token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAuthSettings {
    /// Nothing configured. A function's start-up refuses this (exit 64), and a router built
    /// with it refuses every delivery: there is no way to run unauthenticated by forgetting a
    /// variable.
    Unset,
    /// `NODEWIRE_PUSH_AUTH=off`: no check. Only for the sandbox and tests: the adapter then
    /// serves on loopback only and says so at start.
    Off,
    /// Check every delivery's ID token.
    Oidc(OidcSettings),
}

/// Whether the token's signature is checked here, or was checked by Cloud Run in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// `NODEWIRE_PUSH_AUTH=oidc` (the default): the RS256 signature is verified against the
    /// JWKS; a token whose signature was removed is refused. For services deployed with the
    /// invoker IAM check disabled, where the whole token reaches the container.
    Verify,
    /// `NODEWIRE_PUSH_AUTH=cloud-run-iam`: Cloud Run's invoker IAM check verified the token and
    /// replaced its signature with `SIGNATURE_REMOVED_BY_GOOGLE`
    /// (<https://cloud.google.com/run/docs/troubleshooting#signature-removed>); the claims are
    /// still checked here (issuer, audience, expiry, the allow-listed email). Only a token with
    /// that marker is accepted. This mode is safe only behind that IAM check (no `allUsers`
    /// invoker, the check not disabled): on a service without it, a forged token carrying the
    /// marker would be believed. A signed token reaching the container is refused, as the sign
    /// that the check did not run.
    RemovedByCloudRun,
}

/// The OIDC check's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// `NODEWIRE_PUSH_AUDIENCES` (comma-separated): the `aud` values accepted — the service's
    /// URL, which is what Terraform sets as the push subscription's audience.
    pub audiences: Vec<String>,
    /// `NODEWIRE_PUSH_INVOKERS` (comma-separated): the service accounts whose tokens are
    /// accepted (the push subscriptions' and the scheduler job's identities), compared
    /// case-insensitively.
    pub invokers: BTreeSet<String>,
    /// `NODEWIRE_OIDC_JWKS_URL`: where the signing keys are fetched (Google's by default;
    /// a test key server on loopback in tests).
    pub jwks_url: String,
    /// `NODEWIRE_OIDC_CLOCK_SKEW_SECS` (default 30, at most 300): tolerance on `exp`/`iat`.
    pub clock_skew: Duration,
    pub signature: SignatureCheck,
    /// A token under a key id the cached set does not know fetches the set again at most this
    /// often ([`UNKNOWN_KID_REFETCH`]; not a variable: shorter only in tests).
    pub unknown_kid_refetch: Duration,
}

/// See [`OidcSettings::unknown_kid_refetch`]: a flood of made-up key ids cannot make the
/// function hammer Google's key endpoint.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);

fn list(src: &impl Source, var: &'static str) -> Result<Vec<String>, ConfigError> {
    let raw = src.get(var).unwrap_or_default();
    let items: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.len() > 64 || items.iter().any(|i| i.len() > 512) {
        return Err(err(var, "at most 64 values of at most 512 bytes each"));
    }
    Ok(items)
}

impl PushAuthSettings {
    /// Parses `NODEWIRE_PUSH_AUTH`, `NODEWIRE_PUSH_AUDIENCES`, `NODEWIRE_PUSH_INVOKERS`,
    /// `NODEWIRE_OIDC_JWKS_URL` and `NODEWIRE_OIDC_CLOCK_SKEW_SECS`.
    ///
    /// # Errors
    /// [`ConfigError`] naming the variable that is invalid or, when verification is asked for,
    /// missing.
    pub fn from_source(src: &impl Source) -> Result<Self, ConfigError> {
        let mode = src.get("NODEWIRE_PUSH_AUTH");
        let audiences = list(src, "NODEWIRE_PUSH_AUDIENCES")?;
        let invokers = list(src, "NODEWIRE_PUSH_INVOKERS")?;
        let signature = match mode.as_deref() {
            Some("off") => {
                if !audiences.is_empty() || !invokers.is_empty() {
                    return Err(err(
                        "NODEWIRE_PUSH_AUTH",
                        "is off, yet NODEWIRE_PUSH_AUDIENCES or NODEWIRE_PUSH_INVOKERS is set: \
                         say which you mean",
                    ));
                }
                return Ok(Self::Off);
            }
            None if audiences.is_empty() && invokers.is_empty() => return Ok(Self::Unset),
            None | Some("oidc") => SignatureCheck::Verify,
            Some("cloud-run-iam") => SignatureCheck::RemovedByCloudRun,
            Some(other) => {
                return Err(err(
                    "NODEWIRE_PUSH_AUTH",
                    format!("{:?} is not one of oidc, cloud-run-iam, off", echo(other)),
                ));
            }
        };
        if audiences.is_empty() {
            return Err(err(
                "NODEWIRE_PUSH_AUDIENCES",
                "is required: the service URL the push subscriptions use as audience",
            ));
        }
        if let Some(a) = audiences.iter().find(|a| !a.starts_with("https://")) {
            return Err(err(
                "NODEWIRE_PUSH_AUDIENCES",
                format!("{:?}: an audience is the service's https:// URL", echo(a)),
            ));
        }
        if invokers.is_empty() {
            return Err(err(
                "NODEWIRE_PUSH_INVOKERS",
                "is required: the service accounts of the push subscriptions and the scheduler",
            ));
        }
        if let Some(i) = invokers.iter().find(|i| !plausible_email(i)) {
            return Err(err(
                "NODEWIRE_PUSH_INVOKERS",
                format!("{:?} is not a service account email", echo(i)),
            ));
        }
        let jwks_url = src
            .get("NODEWIRE_OIDC_JWKS_URL")
            .unwrap_or_else(|| GOOGLE_JWKS_URL.to_string());
        super::endpoint("NODEWIRE_OIDC_JWKS_URL", &jwks_url)?;
        let skew: u64 = match src.get("NODEWIRE_OIDC_CLOCK_SKEW_SECS") {
            None => 30,
            Some(v) => v.trim().parse().ok().filter(|s| *s <= 300).ok_or_else(|| {
                err(
                    "NODEWIRE_OIDC_CLOCK_SKEW_SECS",
                    "must be a whole number of seconds, at most 300",
                )
            })?,
        };
        Ok(Self::Oidc(OidcSettings {
            audiences,
            invokers: invokers.iter().map(|i| i.to_ascii_lowercase()).collect(),
            jwks_url,
            clock_skew: Duration::from_secs(skew),
            signature,
            unknown_kid_refetch: UNKNOWN_KID_REFETCH,
        }))
    }
}

fn plausible_email(s: &str) -> bool {
    s.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && domain.contains('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"@.-_+".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn parse(pairs: &[(&'static str, &'static str)]) -> Result<PushAuthSettings, ConfigError> {
        PushAuthSettings::from_source(&pairs.iter().copied().collect::<BTreeMap<_, _>>())
    }

    #[test]
    fn nothing_set_is_unset_and_off_must_be_said() {
        assert_eq!(parse(&[]), Ok(PushAuthSettings::Unset));
        assert_eq!(
            parse(&[("NODEWIRE_PUSH_AUTH", "off")]),
            Ok(PushAuthSettings::Off)
        );
    }

    #[test]
    fn oidc_needs_audiences_and_invokers() {
        let ok = parse(&[
            (
                "NODEWIRE_PUSH_AUDIENCES",
                "https://bootstrap-abc-as.a.run.app",
            ),
            (
                "NODEWIRE_PUSH_INVOKERS",
                "Push@P.iam.gserviceaccount.com, sched@p.iam.gserviceaccount.com",
            ),
        ]);
        let Ok(PushAuthSettings::Oidc(s)) = ok else {
            panic!("expected OIDC settings, got {ok:?}");
        };
        assert_eq!(s.signature, SignatureCheck::Verify);
        assert_eq!(s.jwks_url, GOOGLE_JWKS_URL);
        assert!(s.invokers.contains("push@p.iam.gserviceaccount.com"));
        assert_eq!(s.clock_skew, Duration::from_secs(30));

        for (pairs, var) in [
            (
                vec![("NODEWIRE_PUSH_INVOKERS", "a@p.iam.gserviceaccount.com")],
                "NODEWIRE_PUSH_AUDIENCES",
            ),
            (
                vec![("NODEWIRE_PUSH_AUDIENCES", "https://x.a.run.app")],
                "NODEWIRE_PUSH_INVOKERS",
            ),
            (
                vec![
                    ("NODEWIRE_PUSH_AUDIENCES", "http://x.a.run.app"),
                    ("NODEWIRE_PUSH_INVOKERS", "a@p.iam.gserviceaccount.com"),
                ],
                "NODEWIRE_PUSH_AUDIENCES",
            ),
            (
                vec![
                    ("NODEWIRE_PUSH_AUDIENCES", "https://x.a.run.app"),
                    ("NODEWIRE_PUSH_INVOKERS", "not an email"),
                ],
                "NODEWIRE_PUSH_INVOKERS",
            ),
            (
                vec![
                    ("NODEWIRE_PUSH_AUDIENCES", "https://x.a.run.app"),
                    ("NODEWIRE_PUSH_INVOKERS", "a@p.iam.gserviceaccount.com"),
                    ("NODEWIRE_OIDC_JWKS_URL", "http://keys.example.com/certs"),
                ],
                "NODEWIRE_OIDC_JWKS_URL",
            ),
            (
                vec![
                    ("NODEWIRE_PUSH_AUDIENCES", "https://x.a.run.app"),
                    ("NODEWIRE_PUSH_INVOKERS", "a@p.iam.gserviceaccount.com"),
                    ("NODEWIRE_OIDC_CLOCK_SKEW_SECS", "3600"),
                ],
                "NODEWIRE_OIDC_CLOCK_SKEW_SECS",
            ),
            (
                vec![
                    ("NODEWIRE_PUSH_AUTH", "off"),
                    ("NODEWIRE_PUSH_INVOKERS", "a@p.iam.gserviceaccount.com"),
                ],
                "NODEWIRE_PUSH_AUTH",
            ),
            (vec![("NODEWIRE_PUSH_AUTH", "none")], "NODEWIRE_PUSH_AUTH"),
            (
                vec![("NODEWIRE_PUSH_AUTH", "oidc")],
                "NODEWIRE_PUSH_AUDIENCES",
            ),
        ] {
            let e = parse(&pairs).expect_err("must be refused");
            assert_eq!(e.var, var, "{pairs:?}: {e}");
        }
    }

    #[test]
    fn cloud_run_iam_mode_checks_claims_only_for_removed_signatures() {
        let s = parse(&[
            ("NODEWIRE_PUSH_AUTH", "cloud-run-iam"),
            ("NODEWIRE_PUSH_AUDIENCES", "https://x.a.run.app"),
            ("NODEWIRE_PUSH_INVOKERS", "a@p.iam.gserviceaccount.com"),
            ("NODEWIRE_OIDC_JWKS_URL", "http://127.0.0.1:9/certs"),
        ]);
        assert!(
            matches!(&s, Ok(PushAuthSettings::Oidc(o)) if o.signature == SignatureCheck::RemovedByCloudRun),
            "{s:?}"
        );
    }
}
