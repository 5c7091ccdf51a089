//! Per-delivery overhead of a function (criterion): one HTTP push delivery through the adapter
//! — envelope parse, decode, observe against the simulators at zero latency, plan, publish.
//!
//! `cargo bench -p nodewire-bench --bench delivery`

use axum::body::Body;
use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use http::Request;
use nodewire_bench::{P, deps, wired_cluster};
use serde_json::json;
use tower::ServiceExt as _;

fn envelope(data: &[u8]) -> String {
    json!({"subscription": "projects/example-project/subscriptions/bench",
           "message": {"data": base64::engine::general_purpose::STANDARD.encode(data), "messageId": "1",
                       "publishTime": "2030-01-01T00:00:00Z"}})
    .to_string()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (compute, k8s) = rt.block_on(wired_cluster(10));
    let audit = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/fixtures/gce-insert-last.json"),
    )
    .expect("fixture");
    let audit = envelope(&audit);
    let mut step = nodewire::event::StepMessage::new(
        nodewire::event::Step::TagInstance,
        nodewire::names::InstanceRef::new(P, "us-central1-a", "node-00000").expect("ref"),
        nodewire::event::Cause {
            source: nodewire::event::CauseSource::Sweep,
            id: None,
        },
        "bench",
    );
    step.node = Some("node-00000".into());
    let step = envelope(&step.to_bytes().expect("step"));
    let (ie, ti) = rt.block_on(async {
        (
            {
                let d = deps(&compute, &k8s, "instance-events").await.base;
                nodewire::adapter::router(
                    d.clone(),
                    nodewire::handlers::instance_events::handler(d),
                )
            },
            {
                let d = deps(&compute, &k8s, "tag-instance").await;
                nodewire::adapter::router(
                    d.base.clone(),
                    nodewire::handlers::steps::handler(nodewire::event::Step::TagInstance, d),
                )
            },
        )
    });
    let post = |body: &str| {
        Request::post("/")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    // The same function with push authentication on: an RS256 ID token verified against a
    // cached key set (the key server on loopback is asked once, before measuring).
    let aud = "https://instance-events-bench.a.run.app";
    let pusher = "push@example-project.iam.gserviceaccount.com";
    let key = nodewire::testing::oidc::SigningKey::generate("bench");
    let (ie_auth, token, _keys) = rt.block_on(async {
        let keys = nodewire::testing::oidc::KeyServer::start(&[&key], "max-age=3600").await;
        let mut d = deps(&compute, &k8s, "instance-events").await.base;
        let mut config = (*d.config).clone();
        config.push_auth =
            nodewire::config::PushAuthSettings::Oidc(nodewire::config::OidcSettings {
                audiences: vec![aud.into()],
                invokers: [pusher.to_string()].into(),
                jwks_url: keys.url(),
                clock_skew: std::time::Duration::from_secs(30),
                signature: nodewire::config::SignatureCheck::Verify,
                unknown_kid_refetch: nodewire::config::UNKNOWN_KID_REFETCH,
            });
        d.config = std::sync::Arc::new(config);
        let app =
            nodewire::adapter::router(d.clone(), nodewire::handlers::instance_events::handler(d));
        (
            app,
            key.token(&nodewire::testing::oidc::push_claims(aud, pusher)),
            keys,
        )
    });
    let post_auth = |body: &str| {
        Request::post("/")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .expect("request")
    };
    rt.block_on(async {
        let r = ie_auth
            .clone()
            .oneshot(post_auth(&audit))
            .await
            .expect("response");
        assert_eq!(r.status().as_u16(), 204, "the warm-up fetches the keys");
    });
    let mut g = c.benchmark_group("delivery");
    g.bench_function(
        "instance-events with push authentication (RS256, cached keys)",
        |b| {
            b.to_async(&rt).iter(|| async {
                let r = ie_auth
                    .clone()
                    .oneshot(post_auth(&audit))
                    .await
                    .expect("response");
                assert_eq!(r.status().as_u16(), 204);
            });
        },
    );
    g.bench_function("instance-events: audit entry → bootstrap step", |b| {
        b.to_async(&rt).iter(|| async {
            let r = ie.clone().oneshot(post(&audit)).await.expect("response");
            assert_eq!(r.status().as_u16(), 204);
        });
    });
    g.bench_function("tag-instance: observe (3 reads) + plan, wired VM", |b| {
        b.to_async(&rt).iter(|| async {
            let r = ti.clone().oneshot(post(&step)).await.expect("response");
            assert_eq!(r.status().as_u16(), 204);
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
