//! Push authentication through the whole adapter (`oneshot`): a key server on loopback with
//! test keys stands in for Google's JWKS; no test reaches Google. Each refusal is checked for
//! its status, for the handler not having run (nothing published) and, for one, for the log
//! line not carrying the token.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use http::{Request, StatusCode};
use serde_json::json;
use tower::ServiceExt as _;

use super::*;
use crate::bus::InProcessBus;
use crate::config::{OidcSettings, PushAuthSettings, SignatureCheck};
use crate::handlers::instance_events;
use crate::testing::fixture_bytes;
use crate::testing::oidc::{KeyServer, SigningKey, push_claims};

const AUD: &str = "https://instance-events-abc123-as.a.run.app";
const PUSHER: &str = "nodewire-push@example-project.iam.gserviceaccount.com";
/// Production waits 30 s between fetches for unknown key ids; the tests, two seconds (long
/// enough that a loaded machine does not cross it between two requests).
const REFETCH: Duration = Duration::from_secs(2);
const BOOTSTRAP: &str = "projects/example-project/topics/nodewire-bootstrap";

fn settings(keys: &KeyServer, signature: SignatureCheck) -> PushAuthSettings {
    PushAuthSettings::Oidc(OidcSettings {
        audiences: vec![AUD.to_string()],
        invokers: BTreeSet::from([PUSHER.to_string()]),
        jwks_url: keys.url(),
        clock_skew: Duration::from_secs(30),
        signature,
        unknown_kid_refetch: REFETCH,
    })
}

fn app_with(auth: PushAuthSettings) -> (axum::Router, InProcessBus) {
    let (mut deps, bus) = crate::testing::deps("instance-events", &[]);
    let mut config = (*deps.config).clone();
    config.push_auth = auth;
    deps.config = Arc::new(config);
    (
        router(deps.clone(), instance_events::handler(deps.clone())),
        bus,
    )
}

fn delivery(token: Option<&str>) -> Request<Body> {
    let mut r = Request::post("/").header("content-type", "application/json");
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    r.body(Body::from(fixture_bytes("pubsub-push-envelope.json")))
        .expect("request")
}

async fn status(app: &axum::Router, token: Option<&str>) -> StatusCode {
    app.clone()
        .oneshot(delivery(token))
        .await
        .expect("response")
        .status()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn with(mut claims: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
    claims[key] = value;
    claims
}

#[tokio::test]
async fn a_valid_push_token_is_accepted_and_every_forgery_refused() {
    let key = SigningKey::generate("k1");
    let keys = KeyServer::start(&[&key], "public, max-age=19045, must-revalidate").await;
    let (app, bus) = app_with(settings(&keys, SignatureCheck::Verify));
    let good = push_claims(AUD, PUSHER);

    let other_signer = SigningKey::generate("k1");
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "kid": "k1"})),
        b64(good.clone())
    );
    let hs256 = key.sign(&json!({"alg": "HS256", "kid": "k1"}), &good);
    let signed = key.token(&good);
    let stripped = format!(
        "{}.{}",
        signed.rsplit_once('.').map(|(h, _)| h).unwrap_or_default(),
        auth::REMOVED_SIGNATURE
    );
    let tampered = {
        let mut parts: Vec<String> = signed.split('.').map(str::to_string).collect();
        parts[1] = b64(with(good.clone(), "email", json!("attacker@evil.example")));
        parts.join(".")
    };
    let cases: Vec<(&str, Option<String>, StatusCode)> = vec![
        ("no token", None, StatusCode::UNAUTHORIZED),
        ("not a JWT", Some("abc".into()), StatusCode::UNAUTHORIZED),
        (
            "expired",
            Some(key.token(&with(
                with(good.clone(), "exp", json!(now() - 120)),
                "iat",
                json!(now() - 3720),
            ))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "issued in the future",
            Some(key.token(&with(good.clone(), "iat", json!(now() + 600)))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a lifetime no Google token has",
            Some(key.token(&with(good.clone(), "exp", json!(now() + 86_400)))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong audience",
            Some(key.token(&with(
                good.clone(),
                "aud",
                json!("https://other-service.a.run.app"),
            ))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong issuer",
            Some(key.token(&with(good.clone(), "iss", json!("https://evil.example")))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "wrong signer, same key id",
            Some(other_signer.token(&good)),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "claims changed after signing",
            Some(tampered),
            StatusCode::UNAUTHORIZED,
        ),
        ("alg none", Some(unsigned), StatusCode::UNAUTHORIZED),
        ("alg HS256", Some(hs256), StatusCode::UNAUTHORIZED),
        (
            "signature removed, but this service verifies signatures",
            Some(stripped),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "email outside the allow-list",
            Some(key.token(&push_claims(
                AUD,
                "someone-else@example-project.iam.gserviceaccount.com",
            ))),
            StatusCode::FORBIDDEN,
        ),
        (
            "email not verified",
            Some(key.token(&with(good.clone(), "email_verified", json!(false)))),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (what, token, expected) in &cases {
        assert_eq!(status(&app, token.as_deref()).await, *expected, "{what}");
    }
    assert!(
        bus.published_to(BOOTSTRAP).is_empty(),
        "a refused delivery must not reach the handler"
    );

    // The genuine article: the handler runs. Case-insensitive email.
    assert_eq!(status(&app, Some(&signed)).await, StatusCode::NO_CONTENT);
    let upper = key.token(&with(good.clone(), "email", json!(PUSHER.to_uppercase())));
    assert_eq!(status(&app, Some(&upper)).await, StatusCode::NO_CONTENT);
    assert_eq!(bus.published_to(BOOTSTRAP).len(), 2);
    // One fetch served all of that: the set is cached per its Cache-Control.
    assert_eq!(keys.fetches(), 1, "the key set is fetched once and cached");
}

#[tokio::test]
async fn keys_are_refetched_for_a_new_key_id_but_not_for_a_flood_of_made_up_ones() {
    let old = SigningKey::generate("old");
    let new = SigningKey::generate("new");
    let keys = KeyServer::start(&[&old], "max-age=3600").await;
    let (app, _bus) = app_with(settings(&keys, SignatureCheck::Verify));
    assert_eq!(
        status(&app, Some(&old.token(&push_claims(AUD, PUSHER)))).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(keys.fetches(), 1);
    // Google rotates: a token under a new key id fetches the set again (once the refetch
    // interval has passed since the last fetch; before, it is refused and Pub/Sub retries).
    keys.serve_keys(&[&old, &new]);
    let new_token = new.token(&push_claims(AUD, PUSHER));
    assert_eq!(
        status(&app, Some(&new_token)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        keys.fetches(),
        1,
        "within the interval the set is not fetched again"
    );
    tokio::time::sleep(REFETCH + Duration::from_millis(50)).await;
    assert_eq!(status(&app, Some(&new_token)).await, StatusCode::NO_CONTENT);
    assert_eq!(keys.fetches(), 2);
    // Made-up key ids: refused, and the set is not fetched again within the refetch interval.
    let fake = SigningKey::generate("unused");
    for i in 0..20 {
        let token = fake.sign(
            &json!({"alg": "RS256", "kid": format!("made-up-{i}")}),
            &push_claims(AUD, PUSHER),
        );
        assert_eq!(status(&app, Some(&token)).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        keys.fetches(),
        2,
        "unknown key ids must not hammer the key server"
    );
}

#[tokio::test]
async fn unreachable_keys_answer_503_so_the_push_is_retried() {
    let key = SigningKey::generate("k1");
    let keys = KeyServer::start(&[&key], "max-age=3600").await;
    let url = keys.url();
    drop(keys);
    let (app, bus) = app_with(PushAuthSettings::Oidc(OidcSettings {
        audiences: vec![AUD.into()],
        invokers: BTreeSet::from([PUSHER.into()]),
        jwks_url: url,
        clock_skew: Duration::from_secs(30),
        signature: SignatureCheck::Verify,
        unknown_kid_refetch: REFETCH,
    }));
    assert_eq!(
        status(&app, Some(&key.token(&push_claims(AUD, PUSHER)))).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(bus.published_to(BOOTSTRAP).is_empty());
}

#[tokio::test]
async fn behind_cloud_runs_iam_check_only_removed_signatures_are_accepted_and_claims_still_count() {
    let key = SigningKey::generate("k1");
    let keys = KeyServer::start(&[&key], "max-age=3600").await;
    let (app, bus) = app_with(settings(&keys, SignatureCheck::RemovedByCloudRun));
    let strip = |t: String| {
        format!(
            "{}.{}",
            t.rsplit_once('.')
                .map(|(h, _)| h.to_string())
                .unwrap_or_default(),
            auth::REMOVED_SIGNATURE
        )
    };
    let good = strip(key.token(&push_claims(AUD, PUSHER)));
    assert_eq!(status(&app, Some(&good)).await, StatusCode::NO_CONTENT);
    // A signed token means the IAM check did not run: refused.
    assert_eq!(
        status(&app, Some(&key.token(&push_claims(AUD, PUSHER)))).await,
        StatusCode::UNAUTHORIZED
    );
    let outsider = strip(key.token(&push_claims(AUD, "x@other.iam.gserviceaccount.com")));
    assert_eq!(status(&app, Some(&outsider)).await, StatusCode::FORBIDDEN);
    let wrong_aud = strip(key.token(&push_claims("https://other.a.run.app", PUSHER)));
    assert_eq!(
        status(&app, Some(&wrong_aud)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(bus.published_to(BOOTSTRAP).len(), 1);
    assert_eq!(keys.fetches(), 0, "claims-only mode fetches no keys");
}

#[tokio::test]
async fn unconfigured_authentication_refuses_everything() {
    let (app, bus) = app_with(PushAuthSettings::Unset);
    assert_eq!(status(&app, None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status(&app, Some("a.b.c")).await, StatusCode::UNAUTHORIZED);
    assert!(bus.published_to(BOOTSTRAP).is_empty());
}

#[test]
fn off_is_for_loopback_only_and_unset_never_serves() {
    let lo: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let any: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("addr");
    assert!(check_exposure(&PushAuthSettings::Off, lo).is_ok());
    assert!(check_exposure(&PushAuthSettings::Off, any).is_err());
    assert!(check_exposure(&PushAuthSettings::Unset, lo).is_err());
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_refusal_is_logged_with_its_reason_and_without_the_token() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let key = SigningKey::generate("k1");
    let token = key.token(&push_claims(AUD, "intruder@evil.iam.gserviceaccount.com"));
    let signature = token.rsplit('.').next().unwrap_or_default().to_string();
    // A scoped subscriber shares tracing's global callsite cache with the tests running beside
    // it on other threads: an event can be filtered out by interest cached while this one was
    // being installed (seen in CI: an empty log, and once a log of other callsites without the
    // refusal's). The cache is rebuilt under this subscriber, and the request is made again, at
    // most five times, while the refusal's line is missing; a refusal that is never logged
    // still fails.
    let mut log = String::new();
    for _ in 0..5 {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || writer.clone()),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            rt.block_on(async {
                let keys = KeyServer::start(&[&key], "max-age=60").await;
                let (app, _bus) = app_with(settings(&keys, SignatureCheck::Verify));
                assert_eq!(status(&app, Some(&token)).await, StatusCode::FORBIDDEN);
            });
        });
        log = String::from_utf8(buf.0.lock().map(|b| b.clone()).unwrap_or_default()).expect("utf8");
        if log.contains("not an allowed invoker") {
            break;
        }
    }
    assert!(
        log.contains("not an allowed invoker"),
        "reason logged: {log}"
    );
    assert!(!log.contains(&signature), "the token must never be logged");
    assert!(
        !log.contains(&token[..40]),
        "the token must never be logged"
    );
}
