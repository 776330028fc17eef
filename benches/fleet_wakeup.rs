//! Fleet wake-ups: the time from the lock holder's write of a new token to the last
//! of 8 waiting replicas adopting it, with the pub/sub wake-up (`RedisStore::connect`)
//! and with polling only (the 10–200 ms backoff of a store made by
//! `RedisStore::with_connection`, which has no subscription: the behaviour before
//! wake-ups), in alternating rounds of the same run, against the Redis at `REDIS_URL`.
//!
//! `REDIS_URL=redis://127.0.0.1:6390/ cargo bench --features redis --bench fleet_wakeup`
//! (`ROUNDS`, default 60, rounds per mode).
//!
//! Each round the holder's token endpoint takes a random 100–400 ms (the same for
//! both modes), so the write lands anywhere in the pollers' backoff, as it would.
//! The clock starts when the endpoint's answer is in hand, just before the write
//! (the write's own round trip is inside the figure).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tower_bearer::client::{source, TokenSource, TokenStore};
use tower_bearer::redis::{RedisConfig, RedisStore};
use tower_bearer::{Error, Token};

const WAITERS: usize = 8;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    Wakeup,
    Polling,
}

async fn store(url: &str, profile: &str, mode: Mode) -> RedisStore {
    match mode {
        Mode::Wakeup => RedisStore::connect(url, profile).await.unwrap(),
        Mode::Polling => {
            let conn = RedisConfig::new(url).connect().await.unwrap();
            RedisStore::with_connection(conn, "tower-bearer:", profile)
        }
    }
}

/// One round: the milliseconds from the holder's write to the last waiter's token.
pub(crate) async fn round(url: &str, mode: Mode, n: usize, latency: Duration) -> f64 {
    let profile = format!("bench-wakeup-{}-{n}-{}", std::process::id(), mode as u8);
    let written = Arc::new(Mutex::new(None::<Instant>));
    let (entered_tx, entered_rx) = oneshot::channel();
    let entered_tx = Mutex::new(Some(entered_tx));
    let holder_source = {
        let written = written.clone();
        source::from_fn(move |_previous: Option<Token>| {
            let entered = entered_tx.lock().unwrap().take();
            let written = written.clone();
            async move {
                if let Some(tx) = entered {
                    let _ = tx.send(());
                }
                tokio::time::sleep(latency).await;
                let token = Token::bearer(format!("at-{n}"))?
                    .with_expires_in(Duration::from_secs(600))
                    .with_refresh_token("rt");
                *written.lock().unwrap() = Some(Instant::now());
                Ok(token)
            }
        })
    };
    let holder = store(url, &profile, mode).await.fleet(holder_source);
    let holder_task = tokio::spawn(async move { holder.fetch(None).await });
    // The holder has the lock and is at its token endpoint: now the waiters come.
    entered_rx.await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..WAITERS {
        let never = source::from_fn(|_previous: Option<Token>| async {
            Err::<Token, _>(Error::Configuration("a waiter never refreshes".into()))
        });
        let waiter = store(url, &profile, mode).await.fleet(never);
        waiters.push(tokio::spawn(async move {
            let token = waiter.fetch(None).await.unwrap();
            (Instant::now(), token)
        }));
    }
    holder_task.await.unwrap().unwrap();
    let mut last = None::<Instant>;
    for w in waiters {
        let (at, token) = w.await.unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(token.access_token()),
            &format!("at-{n}")
        );
        last = Some(last.map_or(at, |l| l.max(at)));
    }
    let written = written.lock().unwrap().expect("the holder wrote");
    let _ = store(url, &profile, Mode::Polling).await.clear().await;
    last.unwrap()
        .saturating_duration_since(written)
        .as_secs_f64()
        * 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("fleet_wakeup: run with `cargo bench --bench fleet_wakeup`");
        return;
    }
    let Ok(url) = std::env::var("REDIS_URL") else {
        println!("fleet_wakeup skipped: REDIS_URL is not set (a redis-server to run against)");
        return;
    };
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if let Err(e) = RedisStore::connect(&url, "bench-probe").await {
            println!("fleet_wakeup skipped: Redis at {url} is unreachable ({e})");
            return;
        }
        let mut wake = Vec::new();
        let mut poll = Vec::new();
        for n in 0..rounds {
            let latency = Duration::from_millis(fastrand::u64(100..=400));
            wake.push(round(&url, Mode::Wakeup, n, latency).await);
            poll.push(round(&url, Mode::Polling, n, latency).await);
        }
        for (name, samples) in [("pub/sub wake-up", &mut wake), ("polling only (before)", &mut poll)] {
            samples.sort_by(f64::total_cmp);
            println!(
                "fleet_wakeup {name:<22} write -> last of {WAITERS} waiters: p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms  ({} rounds)",
                percentile(samples, 0.5),
                percentile(samples, 0.99),
                samples[samples.len() - 1],
                samples.len()
            );
        }
    });
}
