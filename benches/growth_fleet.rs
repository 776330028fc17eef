//! A fleet as it grows (issue 32): 1, 10 and 100 replicas, each with its own
//! connections to the real Redis at `REDIS_URL`, sharing one rotating refresh token
//! from the token endpoint of `tests/common` (a real HTTP server on 127.0.0.1 that
//! rotates the refresh token at every refresh and answers after 50 ms by default).
//!
//! `REDIS_URL=redis://127.0.0.1:6390/ cargo bench --features redis --bench growth_fleet`
//! (`ROUNDS`, default 20 expiries per size; `FLEET_SIZES`, default `1,10,100`;
//! `FLEET_LATENCY_MS`, the token endpoint's time to answer, default 50;
//! `FLEET_SPREAD_MS`, the window over which the replicas' fetches begin, default 0).
//!
//! Each round is one expiry: every replica asks its `FleetSource` at the same
//! moment for a token newer than the one the fleet holds, as replicas' `Refreshing`
//! caches do when the token reaches its refresh point with no jitter (the worst
//! case for the lock: with the default 10 s of jitter most replicas come after the
//! write and read it; `FLEET_SPREAD_MS` spreads the fetches so). Per size the bench prints
//! - token requests per expiry (the token endpoint's count; must be 1),
//! - Redis commands per replica per expiry (`INFO commandstats` before and after
//!   the rounds, the bench's own `INFO` left out), with the commands by name,
//! - waiter adoption p50 / p99 / max: from the moment the replica that holds the
//!   lock has the endpoint's answer in hand (just before its write to Redis) to
//!   each other replica's `fetch` returning that token.
//!
//! A first round outside the figures connects each replica's subscription.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::{join_all, BoxFuture};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower_bearer::client::source::Presented;
use tower_bearer::client::{TokenSource, TokenStore};
use tower_bearer::redis::{FleetSource, RedisStore};
use tower_bearer::{Error, Token};

/// When the token endpoint's answer carrying each access token was in hand, and in
/// which replica.
type Answers = Arc<Mutex<HashMap<String, (usize, Instant)>>>;

/// A token source that notes when its answer is in hand (the fleet writes it next).
struct Answered<S> {
    inner: S,
    replica: usize,
    answers: Answers,
}

impl<S: TokenSource> TokenSource for Answered<S> {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        Box::pin(async move {
            let token = self.inner.fetch(previous).await?;
            self.answers.lock().unwrap().insert(
                token.access_token().expose_secret().to_owned(),
                (self.replica, Instant::now()),
            );
            Ok(token)
        })
    }

    fn shares_tokens(&self) -> bool {
        self.inner.shares_tokens()
    }

    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        self.inner.presents(previous)
    }
}

type Replica = FleetSource<Answered<tower_bearer::client::source::RefreshTokenGrant>>;

/// Every command's calls so far, by name, without `INFO`'s own.
async fn commandstats(redis: &common::redis::Redis) -> BTreeMap<String, u64> {
    let info: String = redis.query(redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let calls = rest.split(',').next()?.parse().ok()?;
            (name != "info").then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// Over how long the replicas' fetches of one expiry begin, at random
/// (`FLEET_SPREAD_MS`, default 0: all at once). `Refreshing`'s jitter spreads them
/// so (10 s by default).
fn spread() -> Duration {
    Duration::from_millis(
        std::env::var("FLEET_SPREAD_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0),
    )
}

/// How long the token endpoint takes to answer (`FLEET_LATENCY_MS`, default 50).
fn latency() -> Duration {
    Duration::from_millis(
        std::env::var("FLEET_LATENCY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(50),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Round {
    token_requests: usize,
    /// Milliseconds from the holder's answer to each waiter's adoption.
    adoptions: Vec<f64>,
    /// Replicas whose fetch began after the holder's answer (they read it).
    late: usize,
    token: Token,
}

/// One expiry: every replica asks for a token newer than `previous` at once.
async fn round(
    s: &common::Servers,
    replicas: &[Arc<Replica>],
    answers: &Answers,
    previous: Option<Token>,
) -> Round {
    let requests_before = s.idp.tokens();
    let tasks: Vec<_> = replicas
        .iter()
        .map(|r| {
            let r = r.clone();
            let previous = previous.clone();
            let delay = spread().mul_f64(fastrand::f64());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let start = Instant::now();
                let token = r.fetch(previous.as_ref()).await.expect("a token");
                (start, Instant::now(), token)
            })
        })
        .collect();
    let results: Vec<_> = join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let token = results[0].2.clone();
    let name = token.access_token().expose_secret().to_owned();
    for (_, _, t) in &results {
        assert_eq!(
            t.access_token().expose_secret(),
            &name,
            "every replica has the same token"
        );
    }
    let (holder, answered) = answers.lock().unwrap()[&name];
    let mut adoptions = Vec::new();
    let mut late = 0;
    for (i, (start, end, _)) in results.iter().enumerate() {
        if i == holder {
            continue;
        }
        if *start >= answered {
            late += 1;
        } else {
            adoptions.push(end.saturating_duration_since(answered).as_secs_f64() * 1000.0);
        }
    }
    Round {
        token_requests: s.idp.tokens() - requests_before,
        adoptions,
        late,
        token,
    }
}

async fn fleet(url: &str, n: usize, rounds: usize) {
    let redis = common::redis::Redis::at(url);
    let s = common::start().await;
    s.idp.add_refresh_token("rt-0");
    s.idp
        .rotate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    s.idp.set_lifetime(Some(3600));
    s.idp.set_mode(common::Mode::Delay(latency()));
    let profile = format!(
        "growth-fleet-{}-{n}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    );
    let answers: Answers = Arc::default();
    let mut replicas = Vec::new();
    for replica in 0..n {
        // Its own connections: RedisStore::connect makes one for commands, and the
        // fleet source one for its subscription when it first waits.
        let store = RedisStore::connect(url, &profile).await.unwrap();
        let source = Answered {
            inner: common::endpoint(&s).refresh_token("rt-0"),
            replica,
            answers: answers.clone(),
        };
        replicas.push(Arc::new(store.fleet(source)));
    }
    let first = round(&s, &replicas, &answers, None).await;
    let mut previous = Some(first.token);
    tokio::time::sleep(Duration::from_millis(50)).await;

    let before = commandstats(&redis).await;
    let mut token_requests = Vec::new();
    let mut adoptions = Vec::new();
    let mut late = 0;
    for _ in 0..rounds {
        let r = round(&s, &replicas, &answers, previous.take()).await;
        token_requests.push(r.token_requests);
        adoptions.extend(r.adoptions);
        late += r.late;
        previous = Some(r.token);
        // Let the last wake-ups and unsubscriptions land before the next expiry.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = commandstats(&redis).await;
    let per = (n * rounds) as f64;
    let total: u64 = after
        .iter()
        .map(|(k, v)| v - before.get(k).copied().unwrap_or(0))
        .sum();
    let by_name: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0);
            (d > 0).then(|| format!("{k} {:.2}", d as f64 / per))
        })
        .collect();
    let requests: usize = token_requests.iter().sum();
    let most = token_requests.iter().max().copied().unwrap_or(0);
    println!(
        "growth_fleet replicas {n:>3}: token requests per expiry {:.2} (most in one expiry: {most}{}); Redis commands per replica per expiry {:.2} ({})",
        requests as f64 / rounds as f64,
        if most == 1 { "" } else { " FAILED: must be 1" },
        total as f64 / per,
        by_name.join(", ")
    );
    if adoptions.is_empty() {
        println!("growth_fleet replicas {n:>3}: no waiters (the one replica is the holder)");
    } else {
        adoptions.sort_by(f64::total_cmp);
        println!(
            "growth_fleet replicas {n:>3}: waiter adoption p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms ({} waiters over {rounds} expiries; {late} came after the answer and read it)",
            percentile(&adoptions, 0.5),
            percentile(&adoptions, 0.99),
            adoptions[adoptions.len() - 1],
            adoptions.len()
        );
    }
    let _ = RedisStore::connect(url, &profile)
        .await
        .unwrap()
        .clear()
        .await;
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("growth_fleet: run with `cargo bench --features redis --bench growth_fleet`");
        return;
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("growth_fleet skipped: REDIS_URL is not set (a redis-server to run against)");
        return;
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20);
    let sizes: Vec<usize> = std::env::var("FLEET_SIZES")
        .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![1, 10, 100]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Err(e) = RedisStore::connect(&url, "bench-probe").await {
            println!("growth_fleet skipped: Redis at {url} is unreachable ({e})");
            return;
        }
        for n in sizes {
            fleet(&url, n, rounds).await;
        }
    });
}
