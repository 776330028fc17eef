//! How cost grows with size (issue 32): `MultiIssuer` with 1, 100 and 1,000 issuers,
//! `VerifiedCache` and `Introspection`'s cache at 10k, 100k and 1M distinct tokens,
//! and `Refreshing` from 1 to 1,024 concurrent tasks. BENCHMARKS.md ("Growth") has
//! the tables.
//!
//! `cargo bench --all-features --bench growth` prints what a run measures in time and
//! memory, each size beside the smallest in the same run:
//!
//! - `multi_issuer`: bytes held per issuer (a counting allocator) once every issuer's
//!   keys are loaded, with each issuer's own `HttpClient` (the default) and with one
//!   shared; time per validation of one issuer's token, as a ratio to 1 issuer;
//! - `verified_cache`, `introspection`: bytes held and resident memory per token
//!   once N distinct tokens are cached (capacity N), time per hit (a random cached
//!   token each time, so a large cache is read where the CPU's caches miss), and the
//!   hit ratio of N/2 users' tokens (each seen twice) while N one-time tokens pass,
//!   a user's request after every second one;
//! - `refreshing`: requests per second through `AuthorizeLayer<Refreshing>` on two
//!   worker threads with 1 to 1,024 tasks sharing one layer, as a ratio to 1 task,
//!   and the same for the inner service alone.
//!
//! `GROWTH_SIZES` (comma-separated, e.g. `10000,100000`) limits the cache sizes;
//! `GROWTH_ONLY` (`multi_issuer`, `verified_cache`, `introspection`, `refreshing`)
//! runs one part.
//!
//! Instruction counts, steady on a loaded machine: with `GROWTH_CALLGRIND=<case>:<n>`
//! the binary sets up one case and runs it `n` times inside `measured` for
//! `valgrind --tool=callgrind --toggle-collect='*measured*'` (`bash benches/growth.sh`
//! runs them all). Cases: `multi_issuer/<issuers>`, `verified_cache_hit/<tokens>`,
//! `introspection_hit/<tokens>`, `refreshing/<tasks>` and `no_auth/<tasks>` (`n`
//! requests shared by that many tasks on one thread, each yielding after each
//! request).
//!
//! The caches' inner validators are not in a hit's path: `VerifiedCache` wraps a
//! validator that accepts every token with the same claims (those of
//! `benches/server.rs`'s tokens: `sub`, `iss`, `exp`, `scope`), so that a million
//! entries fill in seconds; `Introspection` asks a real endpoint on 127.0.0.1.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::{Form, Json, Router};
use futures_util::{FutureExt, StreamExt};
use http::{Request, Response};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tower::{Layer, Service, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing};
use tower_bearer::server::{
    Claims, Introspection, JwksValidator, MultiIssuer, ValidationFuture, Validator, VerifiedCache,
};
use tower_bearer::{HttpClient, Token};

/// Bytes allocated and not freed, by the whole process.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Resident memory of the process, bytes (Linux; 0 elsewhere).
fn resident() -> isize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<isize>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Calls `f` `n` times; the only code collected in a callgrind run.
#[inline(never)]
fn measured<T>(n: usize, mut f: impl FnMut(usize) -> T) {
    for i in 0..n {
        std::hint::black_box(f(i));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------------
// MultiIssuer

const ISSUER_COUNTS: [usize; 3] = [1, 100, 1_000];

fn issuer(i: usize) -> String {
    format!("https://tenant-{i}.idp.example.com")
}

/// One JWKS server for every issuer (`/jwks/<i>`, the same ES256 key under kid
/// `k1`): each issuer's validator fetches and parses its own copy.
async fn jwks_server() -> (std::net::SocketAddr, EncodingKey) {
    let signing = EncodingKey::from_ec_pem(&key("ec256.key")).unwrap();
    let mut jwk = Jwk::from_encoding_key(&signing, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = Arc::new(json!({ "keys": [jwk] }));
    let app = Router::new().route(
        "/jwks/{i}",
        get(move || {
            let jwks = jwks.clone();
            // Closed after each answer: no connection, here or in the issuer's
            // pool, is counted in its memory.
            async move { ([(http::header::CONNECTION, "close")], Json((*jwks).clone())) }
        }),
    );
    (serve(app).await, signing)
}

/// `n` issuers with their keys loaded; the token of the last one.
async fn multi_issuer(n: usize, shared_http: bool) -> (MultiIssuer<Claims>, String) {
    let (addr, signing) = jwks_server().await;
    let http = HttpClient::new();
    let mut builder = MultiIssuer::<Claims>::builder();
    for i in 0..n {
        let mut v = JwksValidator::<Claims>::builder(&format!("http://{addr}/jwks/{i}"))
            .unwrap()
            .issuer(issuer(i));
        if shared_http {
            v = v.http_client(http.clone());
        }
        builder = builder.issuer(v.build().unwrap());
    }
    let multi = builder.build().unwrap();
    multi.load().await.unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let claims =
        json!({ "sub": "bench", "iss": issuer(n - 1), "exp": now() + 3600, "scope": "read" });
    let token = jsonwebtoken::encode(&header, &claims, &signing).unwrap();
    (multi, token)
}

fn validate_now<V: Validator>(v: &V, token: &str) -> V::Claims {
    v.validate(token)
        .now_or_pending()
        .expect("ready at once")
        .expect("accepted")
}

fn growth_multi_issuer(rt: &tokio::runtime::Runtime) {
    println!("multi_issuer: ES256 tokens, one key per issuer (kid k1), keys loaded");
    // Bytes held per issuer, each with its own HttpClient (the default), then with
    // one shared; the second set is kept for the times.
    let mut own = Vec::new();
    let mut kept = Vec::new();
    for shared in [false, true] {
        for &n in &ISSUER_COUNTS {
            let before = live();
            let (multi, token) = rt.block_on(multi_issuer(n, shared));
            // The JWKS answers close their connections: let them go.
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(200)).await });
            let held = (live() - before) as f64 / n as f64;
            if shared {
                validate_now(&multi, &token);
                kept.push((n, held, multi, token));
            } else {
                own.push(held);
                drop(multi);
            }
        }
    }
    // Alternating rounds: the machine's load moves all sizes alike.
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); kept.len()];
    for _ in 0..7 {
        for (i, (_, _, multi, token)) in kept.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..1_000 {
                std::hint::black_box(validate_now(multi, token));
            }
            ns[i].push(start.elapsed().as_secs_f64() / 1_000.0 * 1e9);
        }
    }
    let base = median(ns[0].clone());
    for (((n, held, _, _), ns), own) in kept.iter().zip(ns).zip(own) {
        let ns = median(ns);
        println!(
            "multi_issuer issuers {n:>5}: held per issuer {own:>9.0} B (own HttpClient each) {held:>7.0} B (one shared); validation {ns:>7.0} ns = {:.3}x of 1 issuer",
            ns / base
        );
    }
}

// ---------------------------------------------------------------------------------
// VerifiedCache and Introspection

const CACHE_SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

fn cache_sizes() -> Vec<usize> {
    match std::env::var("GROWTH_SIZES") {
        Ok(s) => s.split(',').map(|n| n.trim().parse().unwrap()).collect(),
        Err(_) => CACHE_SIZES.to_vec(),
    }
}

/// A token shaped and sized as `benches/server.rs`'s HS256 tokens (171 bytes), told
/// apart by `i` and by `kind` (users' and one-time tokens never collide).
fn token(kind: char, i: usize) -> String {
    format!(
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCIsImlzcyI6Imh0dHBzOi8vaWRwLmV4YW1wbGUuY29tIiwiZXhwIjoxNzk5OTk5OTk5LCJzY29wZSI6InJlYWQiLCJqdGkiOiJ{kind}{i:010}.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
    )
}

fn bench_claims() -> Claims {
    serde_json::from_value(
        json!({ "sub": "bench", "iss": "https://idp.example.com", "exp": now() + 3600, "scope": "read" }),
    )
    .unwrap()
}

/// Accepts every token with the same claims, and counts the calls (the cache's
/// misses).
#[derive(Clone)]
struct Accepting {
    claims: Claims,
    calls: Arc<AtomicUsize>,
}

impl Validator for Accepting {
    type Claims = Claims;
    fn validate(&self, _token: &str) -> ValidationFuture<Claims> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        ValidationFuture::ready(Ok(self.claims.clone()))
    }
}

fn verified_cache(capacity: usize) -> (VerifiedCache<Accepting>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let inner = Accepting {
        claims: bench_claims(),
        calls: calls.clone(),
    };
    (VerifiedCache::new(inner).max_entries(capacity), calls)
}

/// An introspection endpoint that answers every token active, with the claims of
/// [`bench_claims`]; counts its calls.
async fn introspection_server() -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let exp = now() + 3600;
    let app = Router::new().route(
        "/introspect",
        post(move |Form(form): Form<HashMap<String, String>>| {
            counted.fetch_add(1, Ordering::Relaxed);
            async move {
                std::hint::black_box(form.get("token"));
                Json(json!({
                    "active": true, "sub": "bench", "iss": "https://idp.example.com",
                    "exp": exp, "scope": "read"
                }))
            }
        }),
    );
    let addr = serve(app).await;
    (format!("http://{addr}/introspect"), calls)
}

fn introspection(endpoint: &str, capacity: usize) -> Introspection<Claims> {
    Introspection::<Claims>::new(endpoint)
        .unwrap()
        .client("bench", "bench-secret")
        .ttl(Duration::from_secs(3600))
        .max_entries(capacity)
}

/// Validates every token, up to 64 at a time.
async fn validate_all<V: Validator + Clone>(v: &V, tokens: impl Iterator<Item = String>) {
    futures_util::stream::iter(tokens)
        .map(|t| {
            let v = v.clone();
            async move { v.validate(&t).await.expect("accepted") }
        })
        .buffer_unordered(64)
        .for_each(|_| async {})
        .await;
}

/// Nanoseconds per hit over `picks` (cached tokens, in random order).
async fn hit_ns<V: Validator>(v: &V, picks: &[&str]) -> f64 {
    let start = Instant::now();
    for t in picks {
        std::hint::black_box(v.validate(t).await.unwrap());
    }
    start.elapsed().as_secs_f64() / picks.len() as f64 * 1e9
}

/// Users' hit ratio while `n` one-time tokens pass a cache of `n` entries (see the
/// module documentation), and how many users' requests there were.
async fn scan_hit_ratio<V: Validator + Clone>(
    v: &V,
    calls: &AtomicUsize,
    n: usize,
) -> (f64, usize) {
    let users = n / 2;
    for _ in 0..2 {
        validate_all(v, (0..users).map(|i| token('u', i))).await;
    }
    let mut requests = 0;
    let mut misses = 0;
    for chunk in 0..n / 2 {
        validate_all(v, (2 * chunk..2 * chunk + 2).map(|i| token('o', i))).await;
        let before = calls.load(Ordering::Relaxed);
        let u = token('u', fastrand::usize(..users));
        v.validate(&u).await.unwrap();
        misses += calls.load(Ordering::Relaxed) - before;
        requests += 1;
    }
    (1.0 - misses as f64 / requests as f64, requests)
}

/// A cache filled with `n` distinct tokens, what it holds, and random picks among
/// the tokens it still has.
struct Filled<'a, V> {
    cache: V,
    n: usize,
    held: isize,
    rss: isize,
    cached: usize,
    picks: Vec<&'a str>,
}

const HITS: usize = 100_000;

async fn fill<'a, V: Validator + Clone>(
    cache: V,
    calls: &AtomicUsize,
    tokens: &'a [String],
) -> Filled<'a, V> {
    // First tokens outside the count, as many at once as the fill sends: the HTTP
    // client's pooled connections and the server's, the runtime's buffers.
    validate_all(&cache, (0..64).map(|i| token('w', i))).await;
    let before = (live(), resident(), calls.load(Ordering::Relaxed));
    validate_all(&cache, tokens.iter().cloned()).await;
    let held = live() - before.0;
    let rss = resident() - before.1;
    assert_eq!(
        calls.load(Ordering::Relaxed) - before.2,
        tokens.len(),
        "one miss per token"
    );
    let cached = tokens
        .iter()
        .filter(|t| {
            let before = calls.load(Ordering::Relaxed);
            v_now(&cache, t) && calls.load(Ordering::Relaxed) == before
        })
        .count();
    let picks = resident_picks(&cache, calls, tokens, HITS);
    Filled {
        cache,
        n: tokens.len(),
        held,
        rss,
        cached,
        picks,
    }
}

async fn report<V: Validator + Clone>(which: &str, filled: Vec<Filled<'_, V>>) {
    // Alternating rounds: the machine's load moves all sizes alike.
    let mut ns: Vec<Vec<f64>> = vec![Vec::new(); filled.len()];
    for _ in 0..7 {
        for (i, f) in filled.iter().enumerate() {
            ns[i].push(hit_ns(&f.cache, &f.picks).await);
        }
    }
    let base = median(ns[0].clone());
    for (f, ns) in filled.iter().zip(ns) {
        let ns = median(ns);
        println!(
            "{which} tokens {:>8}: held {:>6.0} B/token, resident {:>6.0} B/token, {} cached after the fill ({:.1} %); hit {ns:>6.0} ns = {:.3}x of {} tokens",
            f.n,
            f.held as f64 / f.n as f64,
            f.rss as f64 / f.n as f64,
            f.cached,
            f.cached as f64 * 100.0 / f.n as f64,
            ns / base,
            filled[0].n,
        );
    }
}

fn growth_caches(rt: &tokio::runtime::Runtime, which: &str) {
    let (endpoint, endpoint_calls) = rt.block_on(introspection_server());
    let sizes = cache_sizes();
    let tokens: Vec<Vec<String>> = sizes
        .iter()
        .map(|&n| (0..n).map(|i| token('t', i)).collect())
        .collect();
    rt.block_on(async {
        if which == "verified_cache" {
            let mut filled = Vec::new();
            for tokens in &tokens {
                let (cache, calls) = verified_cache(tokens.len());
                let f = fill(cache, &calls, tokens).await;
                filled.push(f);
            }
            report(which, filled).await;
        } else {
            let mut filled = Vec::new();
            for tokens in &tokens {
                let cache = introspection(&endpoint, tokens.len());
                filled.push(fill(cache, &endpoint_calls, tokens).await);
            }
            report(which, filled).await;
        }
        for &n in &sizes {
            let (ratio, requests) = if which == "verified_cache" {
                let (cache, calls) = verified_cache(n);
                scan_hit_ratio(&cache, &calls, n).await
            } else {
                let cache = introspection(&endpoint, n);
                scan_hit_ratio(&cache, &endpoint_calls, n).await
            };
            println!(
                "{which} tokens {n:>8}: users' hit ratio while {n} one-time tokens pass: {:.2} % ({requests} requests of {} users)",
                ratio * 100.0,
                n / 2
            );
        }
    });
}

// ---------------------------------------------------------------------------------
// Refreshing

const TASKS: [usize; 6] = [1, 4, 16, 64, 256, 1_024];
const TOKEN: &str =
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJiZW5jaCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU";

fn inner(
) -> impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send> + Clone
{
    tower::service_fn(|req: Request<()>| async move {
        std::hint::black_box(req);
        Ok::<_, Infallible>(Response::new(()))
    })
}

fn refreshing() -> Refreshing<impl tower_bearer::client::TokenSource> {
    Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
        Token::bearer(TOKEN).map(|t| t.with_expires_in(Duration::from_secs(3600)))
    }))
    .initial_token(
        Token::bearer(TOKEN)
            .unwrap()
            .with_expires_in(Duration::from_secs(3600)),
    )
    .build()
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

/// `total` requests shared by `tasks` tasks through clones of `svc`, each task
/// yielding after each request, so that all of them are under way at once.
async fn spread<S>(svc: S, tasks: usize, total: usize)
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let mut svc = svc.clone();
            let mine = total / tasks + usize::from(t < total % tasks);
            tokio::spawn(async move {
                for _ in 0..mine {
                    one(&mut svc).await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for h in handles {
        h.await.unwrap();
    }
}

fn growth_refreshing() {
    println!("refreshing: requests/s on 2 worker threads, N tasks sharing one layer, median of 5 alternating rounds");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = 400_000;
    let layer = rt.block_on(async { AuthorizeLayer::new(refreshing()).layer(inner()) });
    let mut rates: HashMap<(usize, bool), Vec<f64>> = HashMap::new();
    for _round in 0..5 {
        for &tasks in &TASKS {
            for auth in [true, false] {
                let start = Instant::now();
                if auth {
                    rt.block_on(spread(layer.clone(), tasks, total));
                } else {
                    rt.block_on(spread(inner(), tasks, total));
                }
                let rate = total as f64 / start.elapsed().as_secs_f64();
                rates.entry((tasks, auth)).or_default().push(rate);
            }
        }
    }
    let base = |auth| median(rates[&(1, auth)].clone());
    for &tasks in &TASKS {
        let with = median(rates[&(tasks, true)].clone());
        let without = median(rates[&(tasks, false)].clone());
        println!(
            "refreshing tasks {tasks:>5}: Refreshing {:>6.2} M/s = {:.3}x of 1 task; inner alone {:>6.2} M/s = {:.3}x; Refreshing / inner alone {:.3}x",
            with / 1e6,
            with / base(true),
            without / 1e6,
            without / base(false),
            with / without
        );
    }
}

// ---------------------------------------------------------------------------------
// Instruction counts

fn callgrind(case: &str, n: usize) {
    let (kind, size) = case.rsplit_once('/').expect("<case>/<size>");
    let size: usize = size.parse().expect("a size");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match kind {
        "multi_issuer" => {
            let (multi, token) = rt.block_on(multi_issuer(size, true));
            validate_now(&multi, &token);
            measured(n, |_| validate_now(&multi, &token));
        }
        "verified_cache_hit" => {
            let tokens: Vec<String> = (0..size).map(|i| token('t', i)).collect();
            let (cache, calls) = verified_cache(size);
            rt.block_on(validate_all(&cache, tokens.iter().cloned()));
            let picks = resident_picks(&cache, &calls, &tokens, n);
            measured(n, |i| validate_now(&cache, picks[i]));
        }
        "introspection_hit" => {
            let tokens: Vec<String> = (0..size).map(|i| token('t', i)).collect();
            let (cache, picks) = rt.block_on(async {
                let (endpoint, calls) = introspection_server().await;
                let cache = introspection(&endpoint, size);
                validate_all(&cache, tokens.iter().cloned()).await;
                let picks = resident_picks(&cache, &calls, &tokens, n);
                (cache, picks)
            });
            measured(n, |i| validate_now(&cache, picks[i]));
        }
        "refreshing" | "no_auth" => {
            let layer = rt.block_on(async { AuthorizeLayer::new(refreshing()).layer(inner()) });
            // One request outside the count: lazy set-up is not the hot path.
            rt.block_on(spread(layer.clone(), 1, 1));
            measured(1, |_| {
                if kind == "refreshing" {
                    rt.block_on(spread(layer.clone(), size, n));
                } else {
                    rt.block_on(spread(inner(), size, n));
                }
            });
        }
        other => panic!("unknown case {other}"),
    }
}

/// `n` random tokens among those cached (a hit each, checked by the miss counter).
fn resident_picks<'a, V: Validator>(
    cache: &V,
    calls: &AtomicUsize,
    tokens: &'a [String],
    n: usize,
) -> Vec<&'a str> {
    let mut picks = Vec::with_capacity(n);
    while picks.len() < n {
        let t = tokens[fastrand::usize(..tokens.len())].as_str();
        let before = calls.load(Ordering::Relaxed);
        let hit = v_now(cache, t);
        if hit && calls.load(Ordering::Relaxed) == before {
            picks.push(t);
        }
    }
    picks
}

fn v_now<V: Validator>(v: &V, token: &str) -> bool {
    v.validate(token).now_or_never().is_some_and(|r| r.is_ok())
}

fn main() {
    if let Ok(spec) = std::env::var("GROWTH_CALLGRIND") {
        let (case, n) = spec.rsplit_once(':').expect("GROWTH_CALLGRIND=<case>:<n>");
        callgrind(case, n.parse().expect("a number of iterations"));
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("growth: run with `cargo bench --all-features --bench growth`");
        return;
    }
    let only = std::env::var("GROWTH_ONLY").ok();
    let run = |part: &str| only.as_deref().is_none_or(|o| o == part);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if run("multi_issuer") {
        growth_multi_issuer(&rt);
    }
    for which in ["verified_cache", "introspection"] {
        if run(which) {
            growth_caches(&rt, which);
        }
    }
    if run("refreshing") {
        growth_refreshing();
    }
}
