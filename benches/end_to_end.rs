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
//!   the peer users would pick;
//! - `tower_bearer_rs256` / `jwt_authorizer_rs256`, `tower_bearer_es256` /
//!   `jwt_authorizer_es256`: the same with a public key from a JWKS, as an identity
//!   provider publishes it (one key with its `kid`; `JwksValidator` fetches it from a
//!   loopback route at set-up, jwt-authorizer reads the same JSON).
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
//!
//! Instruction counts instead of rates (steady on a loaded machine): with
//! `END_TO_END_CALLGRIND=end_to_end/<case>:<n>` the binary sends `n` requests of one
//! case inside `measured`, client and server on one thread, and nothing else, for
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*'`
//! (`bash benches/callgrind.sh end_to_end/no_auth end_to_end/tower_bearer`): the
//! instructions of the whole request path, in user space, per request. Their ratio
//! is the share of the path the layer takes; the kernel's share of loopback I/O,
//! which callgrind does not see, only makes the layer's smaller in time.

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
use tower_bearer::server::{
    Claims, JwksValidator, JwtValidator, RequireBearerLayer, VerifiedCache,
};

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

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A public-key algorithm of the JWKS cases: its token and its JWKS (key id `k1`).
struct Asymmetric {
    token: String,
    jwks: String,
}

fn asymmetric(alg: jsonwebtoken::Algorithm) -> Asymmetric {
    let key = match alg {
        jsonwebtoken::Algorithm::RS256 => {
            jsonwebtoken::EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap()
        }
        _ => jsonwebtoken::EncodingKey::from_ec_pem(&key("ec256.key")).unwrap(),
    };
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &good_claims(), &key).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = serde_json::json!({ "keys": [jwk] }).to_string();
    Asymmetric { token, jwks }
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

async fn jwt_authorizer_router(jwks: Option<&str>) -> Router {
    let builder = match jwks {
        Some(jwks) => JwtAuthorizer::<RegisteredClaims>::from_jwks_text(jwks),
        None => JwtAuthorizer::<RegisteredClaims>::from_secret(SECRET),
    };
    let authorizer = builder
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

/// `RequireBearerLayer` + `JwksValidator` with the keys of `jwks` (served on loopback,
/// fetched once here) and the same rules as `tower_bearer()`.
async fn tower_bearer_jwks_router(jwks: String) -> Router {
    let idp = serve(Router::new().route("/jwks", get(move || async move { jwks }))).await;
    let validator = JwksValidator::<Claims>::builder(&format!("http://{idp}/jwks"))
        .unwrap()
        .rules(|v| v.issuer(ISSUER).audience(AUDIENCE))
        .build()
        .unwrap();
    validator.load().await.unwrap();
    router().layer(RequireBearerLayer::new(validator))
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
    /// The `Authorization` header of its requests.
    authorization: HeaderValue,
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
async fn run(target: &mut Target, total: u64) -> Duration {
    let authorization = target.authorization.clone();
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
    let hs256 = token();
    let rs256 = asymmetric(jsonwebtoken::Algorithm::RS256);
    let es256 = asymmetric(jsonwebtoken::Algorithm::ES256);
    rt.block_on(async {
        let apps = [
            ("no_auth", router(), &hs256),
            (
                "passthrough_layer",
                router().layer(MapRequestLayer::new(|req: Request<Body>| req)),
                &hs256,
            ),
            (
                "tower_bearer",
                router().layer(RequireBearerLayer::new(tower_bearer())),
                &hs256,
            ),
            (
                "tower_bearer_cached",
                router().layer(RequireBearerLayer::new(VerifiedCache::new(tower_bearer()))),
                &hs256,
            ),
            ("jwt_authorizer", jwt_authorizer_router(None).await, &hs256),
            (
                "tower_bearer_rs256",
                tower_bearer_jwks_router(rs256.jwks.clone()).await,
                &rs256.token,
            ),
            (
                "jwt_authorizer_rs256",
                jwt_authorizer_router(Some(&rs256.jwks)).await,
                &rs256.token,
            ),
            (
                "tower_bearer_es256",
                tower_bearer_jwks_router(es256.jwks.clone()).await,
                &es256.token,
            ),
            (
                "jwt_authorizer_es256",
                jwt_authorizer_router(Some(&es256.jwks)).await,
                &es256.token,
            ),
        ];
        let mut targets = Vec::new();
        for (name, app, token) in apps {
            let addr = serve(app).await;
            let mut connections = Vec::new();
            for _ in 0..CONCURRENCY {
                connections.push(connect(addr).await);
            }
            let mut target = Target {
                name,
                addr,
                connections,
                authorization: HeaderValue::try_from(format!("Bearer {token}")).unwrap(),
            };
            if name == "tower_bearer" || name == "tower_bearer_cached" || name == "jwt_authorizer" {
                for (why, bad) in bad_tokens() {
                    let authorization = HeaderValue::try_from(format!("Bearer {bad}")).unwrap();
                    let status = send(&mut target.connections[0], addr, &authorization).await;
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: {why}");
                }
            }
            if name.ends_with("256") {
                // The other algorithm's token (its kid is known, its key is not this one).
                let other = if name.ends_with("rs256") {
                    &es256.token
                } else {
                    &rs256.token
                };
                let authorization = HeaderValue::try_from(format!("Bearer {other}")).unwrap();
                let status = send(&mut target.connections[0], addr, &authorization).await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}: another key");
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
    let mut group = c.benchmark_group("end_to_end");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .measurement_time(Duration::from_secs(10));
    for target in targets.iter_mut() {
        group.bench_function(target.name, |b| {
            b.iter_custom(|iters| rt.block_on(run(target, iters)))
        });
    }
    group.finish();
}

/// The cases in alternating rounds; the median requests per second of each and their
/// ratios to `no_auth`.
fn interleaved(rt: &tokio::runtime::Runtime, targets: &mut [Target]) {
    const ROUNDS: usize = 15;
    const REQUESTS: u64 = 20_000;
    let mut rates = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (target, rates) in targets.iter_mut().zip(&mut rates) {
            let elapsed = rt.block_on(run(target, REQUESTS));
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
    // Paired per round (the cases of one round ran back to back, under the same load):
    // each round's ratio, their median, and a distribution-free confidence interval of
    // that median from the order statistics (binomial, p = 1/2).
    let (lo, hi, confidence) = median_interval(ROUNDS);
    let ratios = |a: usize, b: usize| {
        let mut r: Vec<f64> = rates[a].iter().zip(&rates[b]).map(|(x, y)| x / y).collect();
        r.sort_by(f64::total_cmp);
        (r[r.len() / 2], r[lo], r[hi])
    };
    println!(
        "paired per-round ratios: median [{:.1} % confidence interval of the median]",
        confidence * 100.0
    );
    let index = |name: &str| targets.iter().position(|t| t.name == name).unwrap();
    let pairs = [
        ("tower_bearer", "no_auth"),
        ("tower_bearer_cached", "no_auth"),
        ("jwt_authorizer", "no_auth"),
        ("tower_bearer", "jwt_authorizer"),
        ("tower_bearer_rs256", "jwt_authorizer_rs256"),
        ("tower_bearer_es256", "jwt_authorizer_es256"),
    ];
    for (a, b) in pairs {
        let (median, low, high) = ratios(index(a), index(b));
        println!("  {a} / {b}: {median:.3}x [{low:.3}, {high:.3}]");
    }
}

/// Indices (in the sorted sample of `n`) of a confidence interval for the median,
/// and its confidence: the widest symmetric pair of order statistics whose
/// coverage is at least 95 %: [x(k), x(n-1-k)] (from 0) covers it with probability
/// 1 - 2 P(Binomial(n, 1/2) <= k).
fn median_interval(n: usize) -> (usize, usize, f64) {
    let total = 2f64.powi(n as i32);
    let mut below = 0.0; // P(X <= k)
    let mut choose = 1.0; // C(n, k)
    let mut best = (0, n - 1, 1.0 - 2.0 / total);
    for k in 0..n / 2 {
        below += choose / total;
        let coverage = 1.0 - 2.0 * below;
        if coverage < 0.95 {
            break;
        }
        best = (k, n - 1 - k, coverage);
        choose = choose * (n - k) as f64 / (k + 1) as f64;
    }
    best
}

/// Calls `f` once; the only code collected in a callgrind run.
#[inline(never)]
fn measured(f: impl FnOnce()) {
    f()
}

/// `n` requests of one case, client and server on a current-thread runtime, the
/// requests inside `measured` (see the module documentation).
fn callgrind(case: &str, n: u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut targets = setup(&rt);
    let name = case.strip_prefix("end_to_end/").unwrap_or(case);
    let target = targets
        .iter_mut()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("unknown case {case}"));
    // Warm: connections, lazy set-up and the allocator's pools are not the hot path.
    rt.block_on(run(target, 2 * CONCURRENCY as u64));
    if n > 0 {
        measured(|| {
            rt.block_on(run(target, n));
        });
    } else {
        measured(|| {});
    }
}

fn main() {
    if let Ok(spec) = std::env::var("END_TO_END_CALLGRIND") {
        let (case, n) = spec
            .rsplit_once(':')
            .expect("END_TO_END_CALLGRIND=<case>:<n>");
        callgrind(case, n.parse().expect("a number of requests"));
        return;
    }
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
