//! Token-file wake-ups: the time from the refresh holder's write of a new token to
//! the last of 8 waiting PROCESSES adopting it, when they share one token file
//! (`FileStore::shared`: the waiters poll the file, 5 ms doubling to 50 ms). Beside
//! it, when `REDIS_URL` is set and the `redis` feature is on, the same figure for a
//! fleet through Redis (`RedisStore::fleet`, pub/sub wake-up), measured as
//! `benches/fleet_wakeup.rs` does (its waiters are tasks of one process).
//!
//! `cargo bench --bench files_wakeup` (`ROUNDS`, default 60), or with the Redis
//! figures: `REDIS_URL=redis://127.0.0.1:6390/ cargo bench --features redis --bench files_wakeup`.
//!
//! The waiters are this bench binary run again as 8 child processes (`--child`),
//! kept for the whole run: each round the parent names a new token file, takes its
//! refresh lock as the holder, and lets the children wait on it; the holder's token
//! endpoint then takes a random 20–200 ms, so the write lands anywhere in the
//! waiters' backoff. The clock (the wall clock, common to the processes) starts when
//! the endpoint's answer is in hand, just before the write (the write is inside the
//! figure), and stops when a child's fetch returns the token.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Semaphore};
use tower_bearer::client::{source, FileStore, TokenSource};
use tower_bearer::{Error, Token};

#[cfg(feature = "redis")]
#[allow(dead_code)] // its own `main` and polling mode are not run from here
#[path = "fleet_wakeup.rs"]
mod fleet;

const WAITERS: usize = 8;
const USER: &str = "bench";
const ISSUER: &str = "https://idp.bench.example/";

/// Microseconds since the Unix epoch: one clock for every process of the machine.
fn now_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// A waiting process: reads a token file's path per line, says `ready`, waits for
/// the token through the shared file and answers `adopted <micros> <access token>`.
fn child() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let path = line.unwrap();
        let never = source::from_fn(|_previous: Option<Token>| async {
            Err::<Token, _>(Error::Configuration("a waiter never refreshes".into()))
        });
        let shared = FileStore::at(&path, USER, ISSUER).shared(never);
        writeln!(out, "ready").unwrap();
        out.flush().unwrap();
        let answer = rt.block_on(shared.fetch(None));
        let at = now_micros();
        match answer {
            Ok(token) => writeln!(
                out,
                "adopted {at} {}",
                secrecy::ExposeSecret::expose_secret(token.access_token())
            ),
            Err(e) => writeln!(out, "error {e}"),
        }
        .unwrap();
        out.flush().unwrap();
    }
}

struct Waiter {
    process: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Waiter {
    fn start() -> Waiter {
        let mut process = Command::new(std::env::current_exe().unwrap())
            .arg("--child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let input = process.stdin.take().unwrap();
        let output = BufReader::new(process.stdout.take().unwrap());
        Waiter {
            process,
            input,
            output,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }
}

/// One round: the milliseconds from the holder's write to the last waiter's token.
async fn round(dir: &Path, waiters: &mut [Waiter], n: usize, latency: Duration) -> f64 {
    let path = dir.join(format!("round-{n}.json"));
    let written = Arc::new(Mutex::new(None::<u128>));
    let gate = Arc::new(Semaphore::new(0));
    let (entered_tx, entered_rx) = oneshot::channel();
    let entered_tx = Mutex::new(Some(entered_tx));
    let holder_source = {
        let (written, gate) = (written.clone(), gate.clone());
        source::from_fn(move |_previous: Option<Token>| {
            let entered = entered_tx.lock().unwrap().take();
            let (written, gate) = (written.clone(), gate.clone());
            async move {
                if let Some(tx) = entered {
                    let _ = tx.send(());
                }
                gate.acquire().await.unwrap().forget();
                tokio::time::sleep(latency).await;
                let token = Token::bearer(format!("at-{n}"))?
                    .with_expires_in(Duration::from_secs(600))
                    .with_refresh_token("rt");
                *written.lock().unwrap() = Some(now_micros());
                Ok(token)
            }
        })
    };
    let holder = FileStore::at(&path, USER, ISSUER).shared(holder_source);
    let holder_task = tokio::spawn(async move { holder.fetch(None).await });
    // The holder has the refresh lock and is at its token endpoint: now the waiters
    // come, and once they all wait, the endpoint answers.
    entered_rx.await.unwrap();
    for w in waiters.iter_mut() {
        writeln!(w.input, "{}", path.display()).unwrap();
        w.input.flush().unwrap();
    }
    for w in waiters.iter_mut() {
        assert_eq!(w.line(), "ready");
    }
    gate.add_permits(1);
    holder_task.await.unwrap().unwrap();
    let mut last = 0u128;
    for w in waiters.iter_mut() {
        let line = w.line();
        let mut fields = line.split(' ');
        assert_eq!(fields.next(), Some("adopted"), "{line}");
        let at: u128 = fields.next().unwrap().parse().unwrap();
        assert_eq!(fields.next(), Some(format!("at-{n}").as_str()), "{line}");
        last = last.max(at);
    }
    let written = written.lock().unwrap().expect("the holder wrote");
    last.saturating_sub(written) as f64 / 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn report(name: &str, samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
    println!(
        "{name:<38} write -> last of {WAITERS} waiters: p50 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms  ({} rounds)",
        percentile(samples, 0.5),
        percentile(samples, 0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}

/// The Redis fleet's figure, as `fleet_wakeup` measures it, when it can be had.
async fn redis_figures(rounds: usize) {
    #[cfg(feature = "redis")]
    {
        let Ok(url) = std::env::var("REDIS_URL") else {
            println!("fleet_wakeup (Redis): not measured, REDIS_URL is not set; run `REDIS_URL=redis://127.0.0.1:6379/ cargo bench --features redis --bench files_wakeup`");
            return;
        };
        if let Err(e) = tower_bearer::redis::RedisStore::connect(&url, "bench-probe").await {
            println!("fleet_wakeup (Redis): not measured, Redis at {url} is unreachable ({e})");
            return;
        }
        let mut wake = Vec::new();
        for n in 0..rounds {
            let latency = Duration::from_millis(fastrand::u64(100..=400));
            wake.push(fleet::round(&url, fleet::Mode::Wakeup, n, latency).await);
        }
        report("fleet_wakeup Redis pub/sub (8 tasks)", &mut wake);
    }
    #[cfg(not(feature = "redis"))]
    {
        let _ = rounds;
        println!("fleet_wakeup (Redis): not measured, built without the `redis` feature; run `REDIS_URL=redis://127.0.0.1:6379/ cargo bench --features redis --bench files_wakeup`");
    }
}

fn main() {
    if std::env::args().any(|a| a == "--child") {
        child();
        return;
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this once: skip then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("files_wakeup: run with `cargo bench --bench files_wakeup`");
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|&r| r > 0)
        .unwrap_or(60);
    let dir =
        std::env::temp_dir().join(format!("tower-bearer-files-wakeup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut waiters: Vec<Waiter> = (0..WAITERS).map(|_| Waiter::start()).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut files = Vec::new();
        for n in 0..rounds {
            let latency = Duration::from_millis(fastrand::u64(20..=200));
            files.push(round(&dir, &mut waiters, n, latency).await);
        }
        report("files_wakeup token file (8 processes)", &mut files);
        redis_figures(rounds).await;
    });
    for w in waiters {
        drop(w.input);
        let mut process = w.process;
        let _ = process.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
