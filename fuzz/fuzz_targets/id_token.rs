//! The push authenticator on any bearer token (claims-only mode, so no key server is needed
//! and the header, claims and their checks are what is fuzzed): refused or accepted, never a
//! panic.
#![no_main]
use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use nodewire::adapter::Authenticator;
use nodewire::config::{OidcSettings, PushAuthSettings, SignatureCheck};

fn parts() -> &'static (tokio::runtime::Runtime, Authenticator) {
    static P: OnceLock<(tokio::runtime::Runtime, Authenticator)> = OnceLock::new();
    P.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let auth = Authenticator::new(&PushAuthSettings::Oidc(OidcSettings {
            audiences: vec!["https://x.a.run.app".into()],
            invokers: BTreeSet::from(["a@p.iam.gserviceaccount.com".to_string()]),
            jwks_url: "http://127.0.0.1:9/certs".into(),
            clock_skew: Duration::from_secs(30),
            signature: SignatureCheck::RemovedByCloudRun,
            unknown_kid_refetch: Duration::from_secs(30),
        }));
        (rt, auth)
    })
}

fuzz_target!(|data: &[u8]| {
    let (rt, auth) = parts();
    let mut headers = http::HeaderMap::new();
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(data);
    value.extend_from_slice(b".SIGNATURE_REMOVED_BY_GOOGLE");
    if let Ok(v) = http::HeaderValue::from_bytes(&value) {
        headers.insert("authorization", v);
    }
    let _ = rt.block_on(auth.check(&headers));
});
