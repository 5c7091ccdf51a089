//! A stand-in for Google's ID-token issuer: an RSA key made at start, its JWKS served on
//! loopback (with a `Cache-Control` of the test's choosing, counting fetches), and tokens signed
//! with it, for the adapter's push authentication (`adapter::auth`) and, later, the instance
//! identity tokens of the metadata server. Nothing here reaches Google.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};
use base64::Engine as _;
use serde_json::{Value, json};

/// The issuer of Google's ID tokens.
pub const ISSUER: &str = "https://accounts.google.com";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// One signing key and its key id.
pub struct SigningKey {
    pub kid: String,
    pair: KeyPair,
}

impl SigningKey {
    /// A fresh 2048-bit RSA key.
    pub fn generate(kid: &str) -> Self {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        Self {
            kid: kid.to_string(),
            pair,
        }
    }

    /// Its public half as a JWK.
    pub fn jwk(&self) -> Value {
        let public = self.pair.public_key();
        json!({
            "kty": "RSA",
            "alg": "RS256",
            "use": "sig",
            "kid": self.kid,
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        })
    }

    /// A JWS over `header` and `claims`, signed RS256 with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut sig = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                signed.as_bytes(),
                &mut sig,
            )
            .expect("RS256 signature");
        format!("{signed}.{}", b64(&sig))
    }

    /// An ID token as Google mints them for a push: RS256 with this key's id.
    pub fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": "RS256", "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }
}

/// The claims of a push ID token for `audience` and `email`, issued now for one hour.
pub fn push_claims(audience: &str, email: &str) -> Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": ISSUER,
        "aud": audience,
        "azp": "113774264463038321964",
        "sub": "113774264463038321964",
        "email": email,
        "email_verified": true,
        "iat": now,
        "exp": now + 3600,
    })
}

/// A JWKS endpoint on loopback serving some keys.
pub struct KeyServer {
    addr: SocketAddr,
    fetches: Arc<AtomicUsize>,
    keys: Arc<std::sync::Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyServer {
    /// Serves `keys` with `Cache-Control: cache_control`.
    pub async fn start(keys: &[&SigningKey], cache_control: &'static str) -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(std::sync::Mutex::new(
            keys.iter().map(|k| k.jwk()).collect::<Vec<_>>(),
        ));
        let (f, s) = (fetches.clone(), served.clone());
        let app = axum::Router::new().route(
            "/oauth2/v3/certs",
            axum::routing::get(move || {
                let (f, s) = (f.clone(), s.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let keys = s.lock().map(|k| k.clone()).unwrap_or_default();
                    (
                        [(http::header::CACHE_CONTROL, cache_control)],
                        axum::Json(json!({ "keys": keys })),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the key server");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            fetches,
            keys: served,
            task,
        }
    }

    /// The JWKS URL (`NODEWIRE_OIDC_JWKS_URL`).
    pub fn url(&self) -> String {
        format!("http://{}/oauth2/v3/certs", self.addr)
    }

    /// How many times the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Replaces the served keys (a rotation).
    pub fn serve_keys(&self, keys: &[&SigningKey]) {
        if let Ok(mut k) = self.keys.lock() {
            *k = keys.iter().map(|k| k.jwk()).collect();
        }
    }
}

impl Drop for KeyServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
