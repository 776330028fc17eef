//! The client hot path: a request with a cached, valid token.
//!
//! `cargo bench --bench client`
//!
//! Every variant wraps the same inner service (an immediate `200`) and is measured in
//! the same run: no auth at all, tower-http's `AddAuthorizationLayer::bearer` (a
//! static header: the floor), `AuthorizeLayer` with a static token, and
//! `AuthorizeLayer` with a `Refreshing` cache holding a valid, expiring token.

use std::convert::Infallible;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing, StaticToken};
use tower_bearer::Token;

const TOKEN: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU";

fn inner(
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send> + Clone
{
    service_fn(|req: Request<()>| async move {
        std::hint::black_box(req);
        Ok::<_, Infallible>(Response::new(()))
    })
}

async fn one<S>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::get("http://api.test/items").body(()).unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    std::hint::black_box(res);
}

fn client_hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("client_hot_path");

    group.bench_function("no_auth", |b| {
        let mut svc = inner();
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move { one(&mut svc).await }
        });
        let _ = &mut svc;
    });

    group.bench_function("tower_http_add_authorization", |b| {
        let svc = tower_http::auth::AddAuthorizationLayer::bearer(TOKEN).layer(inner());
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move { one(&mut svc).await }
        });
    });

    group.bench_function("authorize_static", |b| {
        let svc = AuthorizeLayer::new(StaticToken::bearer(TOKEN).unwrap()).layer(inner());
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move { one(&mut svc).await }
        });
    });

    group.bench_function("authorize_refreshing", |b| {
        let cache = rt.block_on(async {
            Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
                Token::bearer(TOKEN).map(|t| t.with_expires_in(Duration::from_secs(3600)))
            }))
            .initial_token(
                Token::bearer(TOKEN)
                    .unwrap()
                    .with_expires_in(Duration::from_secs(3600)),
            )
            .build()
        });
        let svc = AuthorizeLayer::new(cache).layer(inner());
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move { one(&mut svc).await }
        });
    });
    group.finish();
}

criterion_group!(benches, client_hot_path);
criterion_main!(benches);
