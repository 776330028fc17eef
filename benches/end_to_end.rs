//! End to end, group `end_to_end`: one axum 0.8 route on loopback, driven by an
//! in-process hyper client over keep-alive connections at a fixed concurrency, in
//! requests per second:
//!
//! - `no_auth`: the route alone;
//! - `passthrough_layer`: behind a tower layer that does nothing (`MapRequestLayer`
//!   with the identity): what axum's `Router::layer` costs any middleware;
//! - `tower_bearer`: behind `RequireBearerLayer` + `JwtValidator` (HS256);
//! - `tower_bearer_cached`: the same wrapped in `VerifiedCache` (every request
//!   repeats one token, so every request after the first is a cache hit);
//! - `jwt_authorizer`: behind the `jwt-authorizer` crate's layer with the same key,
//!   the peer users would pick.
//!
//! Every case gets the same request (with the same `Authorization` header, which
//! `no_auth` ignores), the same handler and the same server code; both validators
//! check the HS256 signature, `exp` (required, 60 s leeway), `nbf`, `iss` and `aud`,
//! and the setup checks that each refuses a token that fails any one of them.
//!
//! After the criterion group, unless a filter excludes it, the cases are also run in
//! alternating rounds and the median ratios printed: on a shared machine whose load
//! drifts, those ratios are steadier than ones from cases measured one after another.
//!
//! `cargo bench --bench end_to_end`

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use criterion::{Criterion, SamplingMode, Throughput};
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use jwt_authorizer::{AuthError, IntoLayer, JwtAuthorizer, RegisteredClaims};
use tower::util::MapRequestLayer;
use tower::ServiceBuilder;
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, VerifiedCache};

/// Requests in flight at any time: HTTP/1.1 has no multiplexing, so this is also the
/// number of keep-alive connections, each carrying one request after another.
const CONCURRENCY: usize = 32;
const SECRET: &str = "an-end-to-end-secret-of-32-bytes";
const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "bench-api";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token with these claims, signed with `secret`.
fn sign(claims: &serde_json::Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn good_claims() -> serde_json::Value {
    let now = now();
    serde_json::json!({
        "sub": "bench",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "scope": "items:read",
    })
}

/// The token every request carries.
fn token() -> String {
    sign(&good_claims(), SECRET)
}

/// Tokens that every validating case must refuse: proof that both validators check
/// the same things.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let now = now();
    let with = |name: &str, value: serde_json::Value| {
        let mut claims = good_claims();
        claims[name] = value;
        sign(&claims, SECRET)
    };
    let mut no_exp = good_claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    vec![
        (
            "another secret",
            sign(&good_claims(), "another-secret-of-at-least-32-b!"),
        ),
        ("expired", with("exp", (now - 3600).into())),
        ("no exp", sign(&no_exp, SECRET)),
        ("not valid yet", with("nbf", (now + 3600).into())),
        (
            "wrong issuer",
            with("iss", "https://other.example.com".into()),
        ),
        ("wrong audience", with("aud", "other-api".into())),
    ]
}

/// The one route every case serves.
fn router() -> Router {
    Router::new().route("/items", get(|| async { "items" }))
}

fn tower_bearer() -> JwtValidator<Claims> {
    JwtValidator::hmac(SECRET.as_bytes())
        .issuer(ISSUER)
        .audience(AUDIENCE)
}

/// jwt-authorizer's service needs `Response: From<AuthError>`, which it provides for
/// axum 0.7's response type only. This wrapper carries axum 0.8's response through
/// its layer unchanged (two moves per request) and turns a refusal into the same
/// status and headers that jwt-authorizer would send.
struct Peer(Response);

impl From<AuthError> for Peer {
    fn from(e: AuthError) -> Self {
        let (parts, _body) = http::Response::from(e).into_parts();
        Peer(Response::from_parts(parts, Body::empty()))
    }
}

async fn jwt_authorizer_router() -> Router {
    let authorizer = JwtAuthorizer::<RegisteredClaims>::from_secret(SECRET)
        .validation(
            jwt_authorizer::Validation::new()
                .iss(&[ISSUER])
                .aud(&[AUDIENCE])
                .nbf(true),
        )
        .build()
        .await
        .unwrap();
    router().layer(
        ServiceBuilder::new()
            .map_response(|peer: Peer| peer.0)
            .layer(authorizer.into_layer())
            .map_response(Peer),
    )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    connections: Vec<SendRequest<Empty<Bytes>>>,
}

async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends `n` requests one after another on one connection, reading every body.
async fn drive(
    mut sender: SendRequest<Empty<Bytes>>,
    n: u64,
    host: HeaderValue,
    authorization: HeaderValue,
) -> SendRequest<Empty<Bytes>> {
    for _ in 0..n {
        sender.ready().await.unwrap();
        let req = Request::get("/items")
            .header(HOST, host.clone())
            .header(AUTHORIZATION, authorization.clone())
            .body(Empty::new())
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"items");
    }
    sender
}

/// `total` requests spread over the target's connections; the wall time.
async fn run(target: &mut Target, total: u64, authorization: &HeaderValue) -> Duration {
    let host = HeaderValue::try_from(target.addr.to_string()).unwrap();
    let connections = std::mem::take(&mut target.connections);
    let n = connections.len() as u64;
    let start = Instant::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, sender)| {
            let share = total / n + u64::from((i as u64) < total % n);
            tokio::spawn(drive(sender, share, host.clone(), authorization.clone()))
        })
        .collect();
    for task in tasks {
        target.connections.push(task.await.unwrap());
    }
    start.elapsed()
}

fn setup(rt: &tokio::runtime::Runtime) -> Vec<Target> {
    rt.block_on(async {
        let apps = [
            ("no_auth", router()),
            (
                "passthrough_layer",
                router().layer(MapRequestLayer::new(|req: Request<Body>| req)),
            ),
            (
                "tower_bearer",
                router().layer(RequireBearerLayer::new(tower_bearer())),
            ),
            (
                "tower_bearer_cached",
                router().layer(RequireBearerLayer::new(VerifiedCache::new(tower_bearer()))),
            ),
            ("jwt_authorizer", jwt_authorizer_router().await),
        ];
        let mut targets = Vec::new();
        for (name, app) in apps {
            let addr = serve(app).await;
            let mut connections = Vec::new();
            for _ in 0..CONCURRENCY {
                connections.push(connect(addr).await);
            }
            let mut target = Target {
                name,
                addr,
                connections,
            };
            if name.starts_with("tower_bearer") || name == "jwt_authorizer" {
                for (why, bad) in bad_tokens() {
                    let authorization = HeaderValue::try_from(format!("Bearer {bad}")).unwrap();
                    let status = send(&mut target.connections[0], addr, &authorization).await;
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {why}");
                }
            }
            targets.push(target);
        }
        targets
    })
}

/// One request on `sender`; its status (the body is read and dropped).
async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    addr: SocketAddr,
    authorization: &HeaderValue,
) -> StatusCode {
    sender.ready().await.unwrap();
    let req = Request::get("/items")
        .header(HOST, addr.to_string())
        .header(AUTHORIZATION, authorization)
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status();
    res.into_body().collect().await.unwrap();
    status
}

fn end_to_end(c: &mut Criterion, rt: &tokio::runtime::Runtime, targets: &mut [Target]) {
    let authorization = HeaderValue::try_from(format!("Bearer {}", token())).unwrap();
    let mut group = c.benchmark_group("end_to_end");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .measurement_time(Duration::from_secs(10));
    for target in targets.iter_mut() {
        group.bench_function(target.name, |b| {
            b.iter_custom(|iters| rt.block_on(run(target, iters, &authorization)))
        });
    }
    group.finish();
}

/// The cases in alternating rounds; the median requests per second of each and their
/// ratios to `no_auth`.
fn interleaved(rt: &tokio::runtime::Runtime, targets: &mut [Target]) {
    const ROUNDS: usize = 15;
    const REQUESTS: u64 = 20_000;
    let authorization = HeaderValue::try_from(format!("Bearer {}", token())).unwrap();
    let mut rates = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (target, rates) in targets.iter_mut().zip(&mut rates) {
            let elapsed = rt.block_on(run(target, REQUESTS, &authorization));
            rates.push(REQUESTS as f64 / elapsed.as_secs_f64());
        }
    }
    for r in &mut rates {
        r.sort_by(f64::total_cmp);
    }
    let medians: Vec<f64> = rates.iter().map(|r| r[r.len() / 2]).collect();
    println!(
        "\nend_to_end interleaved: {ROUNDS} rounds of {REQUESTS} requests per case, \
         {CONCURRENCY} in flight; median requests/s (lowest, highest round)"
    );
    for ((target, median), r) in targets.iter().zip(&medians).zip(&rates) {
        println!(
            "  {:<20} {:>7.0}/s ({:.0}, {:.0})  {:.3}x no_auth",
            target.name,
            median,
            r[0],
            r[r.len() - 1],
            median / medians[0]
        );
    }
    let rate = |name: &str| medians[targets.iter().position(|t| t.name == name).unwrap()];
    println!(
        "  tower_bearer / jwt_authorizer: {:.3}x",
        rate("tower_bearer") / rate("jwt_authorizer")
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut targets = setup(&rt);
    let mut criterion = Criterion::default().configure_from_args();
    end_to_end(&mut criterion, &rt, &mut targets);
    criterion.final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not (nor does it
    // measure with `--test`), and then each case above ran once as a test.
    let args: Vec<String> = std::env::args().collect();
    let filtered_out = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_some_and(|filter| !"end_to_end/interleaved".contains(filter.as_str()));
    let measuring =
        args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--test" || a == "--list");
    if measuring && !filtered_out {
        interleaved(&rt, &mut targets);
    }
}
