//! The client hot path: a request with a cached, valid token.
//!
//! `cargo bench --bench client`
//!
//! Every variant wraps the same inner service (an immediate `200`) and is measured in
//! the same run: no auth at all, tower-http's `AddAuthorizationLayer::bearer` (a
//! static header), the same followed by a look at each answer (`tower_http_inspecting`:
//! a `401`, or gRPC's `16` in the headers, the least any layer that reacts to a refused
//! credential must read: the floor of this crate's layer), `AuthorizeLayer` with a
//! static token, and `AuthorizeLayer` with a `Refreshing` cache holding a valid,
//! expiring token.
//!
//! Instruction counts instead of times (steady on a loaded machine): with
//! `CLIENT_CALLGRIND=client_hot_path/<case>:<n>` the binary sends `n` requests through
//! one `client_hot_path` case inside `measured`, and nothing else, for
//! `valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured*'`
//! (`benches/callgrind.sh`).

use std::convert::Infallible;
use std::future::Future as _;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
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

fn refreshing(rt: &tokio::runtime::Runtime) -> impl tower_bearer::client::Authorizer + Clone {
    rt.block_on(async {
        Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
            Token::bearer(TOKEN).map(|t| t.with_expires_in(Duration::from_secs(3600)))
        }))
        .initial_token(
            Token::bearer(TOKEN)
                .unwrap()
                .with_expires_in(Duration::from_secs(3600)),
        )
        .build()
    })
}

/// tower-http's static header, and a look at each answer as a layer that hears of
/// refused credentials must take: its status, and gRPC's status in its headers.
fn tower_http_inspecting(
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send> + Clone
{
    const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");
    fn inspect(res: Response<()>) -> Response<()> {
        let refused = res.status() == http::StatusCode::UNAUTHORIZED
            || res
                .headers()
                .get(&GRPC_STATUS)
                .is_some_and(|s| s.as_bytes() == b"16");
        std::hint::black_box(refused);
        res
    }
    tower::ServiceBuilder::new()
        .map_response(inspect as fn(Response<()>) -> Response<()>)
        .layer(tower_http::auth::AddAuthorizationLayer::bearer(TOKEN))
        .service(inner())
}

async fn one<S>(svc: &mut S)
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::get("https://api.test/items").body(()).unwrap();
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

    group.bench_function("tower_http_inspecting", |b| {
        let svc = tower_http_inspecting();
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
        let svc = AuthorizeLayer::new(refreshing(&rt)).layer(inner());
        b.to_async(&rt).iter(|| {
            let mut svc = svc.clone();
            async move { one(&mut svc).await }
        });
    });
    group.finish();
}

/// The classic design users would write instead: a token behind a
/// `tokio::sync::Mutex`, locked on every request.
#[derive(Clone)]
struct MutexCache {
    token: std::sync::Arc<tokio::sync::Mutex<Option<(http::HeaderValue, tokio::time::Instant)>>>,
}

impl tower_bearer::client::Authorizer for MutexCache {
    fn credential(&self) -> tower_bearer::client::CredentialFuture {
        let token = self.token.clone();
        tower_bearer::client::CredentialFuture::pending(async move {
            let guard = token.lock().await;
            let (value, expires) = guard.as_ref().expect("a token");
            if tokio::time::Instant::now() >= *expires {
                unreachable!("the benchmark token does not expire");
            }
            Ok(Some(tower_bearer::client::Credential::authorization(
                value.clone(),
            )))
        })
    }
}

/// Many tasks sending through one shared layer on the multi-thread runtime: the
/// cost per request as tasks grow, `Refreshing` against the mutex-guarded cache.
fn client_scaling(c: &mut Criterion) {
    use std::time::Instant as StdInstant;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("client_scaling");
    const PER_TASK: u64 = 1_000;
    let valid = || {
        Token::bearer(TOKEN)
            .unwrap()
            .with_expires_in(Duration::from_secs(3600))
    };
    for tasks in [1u64, 8, 64] {
        group.throughput(criterion::Throughput::Elements(tasks * PER_TASK));
        let refreshing = rt.block_on(async {
            Refreshing::builder(tower_bearer::client::source::from_fn(move |_| async move {
                Ok(valid())
            }))
            .initial_token(valid())
            .build()
        });
        let mutex = MutexCache {
            token: std::sync::Arc::new(tokio::sync::Mutex::new(Some((
                valid().authorization().clone(),
                tokio::time::Instant::now() + Duration::from_secs(3600),
            )))),
        };
        macro_rules! scale {
            ($name:expr, $authorizer:expr) => {{
                let svc = AuthorizeLayer::new($authorizer).layer(inner());
                group.bench_function(criterion::BenchmarkId::new($name, tasks), |b| {
                    b.iter_custom(|iters| {
                        let svc = svc.clone();
                        rt.block_on(async move {
                            let start = StdInstant::now();
                            for _ in 0..iters {
                                let handles: Vec<_> = (0..tasks)
                                    .map(|_| {
                                        let mut svc = svc.clone();
                                        tokio::spawn(async move {
                                            for _ in 0..PER_TASK {
                                                one(&mut svc).await;
                                            }
                                        })
                                    })
                                    .collect();
                                for h in handles {
                                    h.await.unwrap();
                                }
                            }
                            start.elapsed()
                        })
                    })
                });
            }};
        }
        scale!("refreshing", refreshing);
        scale!("mutex_cache", mutex.clone());
    }
    group.finish();
}

/// N callers on an expired token, against a token source with a fixed 5 ms latency:
/// wall time for all of them, with single flight (`Refreshing`) and without (each
/// caller that finds the token expired fetches its own: check, then fetch); and N
/// callers on a token inside the refresh margin, where nobody should wait. Token
/// requests per storm and the callers' waits (p50, p99) are printed once per case;
/// the test suite asserts the counts.
fn refresh_storm(c: &mut Criterion) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("refresh_storm");
    group.sample_size(10);
    const LATENCY: Duration = Duration::from_millis(5);
    let fetches = Arc::new(AtomicU64::new(0));
    let source = {
        let fetches = fetches.clone();
        tower_bearer::client::source::from_fn(move |_| {
            fetches.fetch_add(1, Ordering::Relaxed);
            async move {
                tokio::time::sleep(LATENCY).await;
                Ok(Token::bearer(TOKEN)?.with_expires_in(Duration::from_secs(3600)))
            }
        })
    };
    for callers in [100u64, 1_000, 10_000] {
        for (name, life_left) in [
            ("single_flight", Duration::ZERO),
            ("stale_in_margin", Duration::from_millis(200)),
        ] {
            let mut seen = Seen::default();
            group.bench_function(criterion::BenchmarkId::new(name, callers), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let cache = rt.block_on(async {
                            let now = tokio::time::Instant::now();
                            Refreshing::builder(source.clone())
                                .refresh_before(Duration::from_secs(60))
                                .initial_token(
                                    Token::bearer(TOKEN)
                                        .unwrap()
                                        .with_expires_at(now + life_left),
                                )
                                .build()
                        });
                        if !life_left.is_zero() {
                            // A token's refresh point is at least half its life away
                            // when it is cached: wait until it is inside the margin.
                            std::thread::sleep(life_left * 3 / 4);
                        }
                        let before = fetches.load(Ordering::Relaxed);
                        let c = cache.clone();
                        let (elapsed, waits) = rt.block_on(storm(callers, move || {
                            let cache = c.clone();
                            async move {
                                tower_bearer::client::Authorizer::credential(&cache)
                                    .await
                                    .unwrap()
                            }
                        }));
                        // Let a background refresh finish before counting.
                        rt.block_on(async {
                            while fetches.load(Ordering::Relaxed) == before {
                                tokio::task::yield_now().await
                            }
                        });
                        total += elapsed;
                        seen.add(
                            waits,
                            fetches.load(Ordering::Relaxed) - before,
                            cache.stats().waits,
                        );
                    }
                    total
                })
            });
            seen.report(name, callers);
        }
        let mut seen = Seen::default();
        group.bench_function(
            criterion::BenchmarkId::new("naive_check_then_fetch", callers),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        // The naive cache: read the token; if it is expired, fetch one and store it.
                        let expired = Token::bearer(TOKEN)
                            .unwrap()
                            .with_expires_at(tokio::time::Instant::now());
                        let slot = Arc::new(std::sync::Mutex::new(Some(expired)));
                        let count = Arc::new(AtomicU64::new(0));
                        let (s, n) = (slot.clone(), count.clone());
                        let (elapsed, waits) = rt.block_on(storm(callers, move || {
                            let (slot, count) = (s.clone(), n.clone());
                            async move {
                                let cached =
                                    slot.lock().unwrap().clone().filter(|t| !t.is_expired());
                                if let Some(t) = cached {
                                    return t;
                                }
                                count.fetch_add(1, Ordering::Relaxed);
                                tokio::time::sleep(LATENCY).await;
                                let t = Token::bearer(TOKEN)
                                    .unwrap()
                                    .with_expires_in(Duration::from_secs(3600));
                                *slot.lock().unwrap() = Some(t.clone());
                                t
                            }
                        }));
                        total += elapsed;
                        let requests = count.load(Ordering::Relaxed);
                        seen.add(waits, requests, requests);
                    }
                    total
                })
            },
        );
        seen.report("naive_check_then_fetch", callers);
    }
    group.finish();
}

/// What the storms saw: every caller's wait, and token requests and waiting callers
/// per storm (the largest seen).
#[derive(Default)]
struct Seen {
    waits: Vec<Duration>,
    requests: u64,
    waited: u64,
}

impl Seen {
    fn add(&mut self, mut waits: Vec<Duration>, requests: u64, waited: u64) {
        self.waits.append(&mut waits);
        self.requests = self.requests.max(requests);
        self.waited = self.waited.max(waited);
    }

    fn report(&mut self, name: &str, callers: u64) {
        if self.waits.is_empty() {
            return;
        }
        self.waits.sort();
        let p = |q: f64| self.waits[((self.waits.len() - 1) as f64 * q) as usize];
        eprintln!(
            "refresh_storm/{name}/{callers}: token requests per storm <= {}, callers that waited <= {}, wait p50 {:?} p99 {:?}",
            self.requests,
            self.waited,
            p(0.5),
            p(0.99)
        );
    }
}

/// Starts `callers` tasks at once; returns the wall time and each caller's wait.
async fn storm<F, Fut, T>(callers: u64, call: F) -> (Duration, Vec<Duration>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = std::time::Instant::now();
    let handles: Vec<_> = (0..callers)
        .map(|_| {
            let fut = call();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                std::hint::black_box(fut.await);
                t.elapsed()
            })
        })
        .collect();
    let mut waits = Vec::with_capacity(handles.len());
    for h in handles {
        waits.push(h.await.unwrap());
    }
    (start.elapsed(), waits)
}

/// Calls `f` `n` times; the only code collected in a callgrind run.
#[inline(never)]
fn measured(n: usize, mut f: impl FnMut()) {
    for _ in 0..n {
        f();
    }
}

/// `n` requests through one `client_hot_path` case, each driven to completion on a
/// current-thread runtime (see the module documentation).
fn callgrind(case: &str, n: usize) {
    fn run<S>(rt: &tokio::runtime::Runtime, n: usize, mut svc: S)
    where
        S: Service<Request<()>, Response = Response<()>>,
        S::Error: std::fmt::Debug,
    {
        rt.block_on(async {
            // One request outside the count: lazy set-up is not the hot path.
            one(&mut svc).await;
            let waker = std::task::Waker::noop();
            let mut cx = std::task::Context::from_waker(waker);
            measured(n, || {
                let mut fut = std::pin::pin!(one(&mut svc));
                assert!(
                    fut.as_mut().poll(&mut cx).is_ready(),
                    "the hot path is ready at once"
                );
            });
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match case.strip_prefix("client_hot_path/").unwrap_or(case) {
        "no_auth" => run(&rt, n, inner()),
        "tower_http_add_authorization" => run(
            &rt,
            n,
            tower_http::auth::AddAuthorizationLayer::bearer(TOKEN).layer(inner()),
        ),
        "tower_http_inspecting" => run(&rt, n, tower_http_inspecting()),
        "authorize_static" => run(
            &rt,
            n,
            AuthorizeLayer::new(StaticToken::bearer(TOKEN).unwrap()).layer(inner()),
        ),
        "authorize_refreshing" => run(&rt, n, AuthorizeLayer::new(refreshing(&rt)).layer(inner())),
        other => panic!("unknown case {other}"),
    }
}

criterion_group!(benches, client_hot_path, client_scaling, refresh_storm);

fn main() {
    if let Ok(spec) = std::env::var("CLIENT_CALLGRIND") {
        let (case, n) = spec.rsplit_once(':').expect("CLIENT_CALLGRIND=<case>:<n>");
        callgrind(case, n.parse().expect("a number of iterations"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
