//! One replica of a fleet: a refreshing client whose refresh token rotates, shared
//! with every other replica through Redis (`--redis URL`, the default store) or
//! through a token file on this machine (`--store file:PATH`), calling an API until
//! told to stop. Start several against the same Redis (or the same file) and token
//! endpoint: together they make one token request per expiry.
//!
//! ```text
//! cargo run --features redis --example fleet_replica -- \
//!     --redis redis://127.0.0.1:6379/ --profile demo \
//!     --token-url http://127.0.0.1:8080/token --api-url http://127.0.0.1:8080/api \
//!     --refresh-token rt-0 --duration 5
//!
//! cargo run --features redis --example fleet_replica -- \
//!     --store file:/tmp/demo/alice.json --profile alice \
//!     --token-url http://127.0.0.1:8080/token --api-url http://127.0.0.1:8080/api \
//!     --refresh-token rt-0 --duration 5
//! ```
//!
//! With `--store file:PATH` the processes sharing `PATH` refresh once between them
//! through the file's OS locks (`FileStore::shared`); the token file belongs to the
//! user `--profile` at the issuer `--issuer` (the token URL when not given), and
//! Redis is not needed (the example is built with the `redis` feature for its
//! default mode only).
//!
//! Every request to the API carries `x-fleet-profile` (the profile) and
//! `x-fleet-replica` (`--replica`); every token request carries the form field
//! `fleet_replica`, so a test server can tell who asked. With `--status-every` it
//! prints, that often, a machine-readable line:
//! `status: replica=ID ok=N failed=N invalid_grant=N last=ok|err:KIND`, where KIND is
//! `invalid_grant`, `store`, `token_file`, `rejected`, `transport`, `timeout`, `token_endpoint`,
//! `no_token`, `aborted`, `status-NNN` (the API's answer) or `other`.
//!
//! The last line is a summary: `summary: requests=N ok=N failed=N invalid_grant=N`.

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use tokio::io::AsyncReadExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{
    AuthorizeError, AuthorizeLayer, FileStore, Refreshing, TokenEndpoint, TokenSource,
};
use tower_bearer::redis::RedisStore;

#[derive(Parser)]
struct Args {
    /// Where the replicas share their token: `redis` (the Redis of `--redis`) or
    /// `file:PATH` (a token file on this machine, locked by the OS).
    #[arg(long, default_value = "redis")]
    store: String,
    /// The Redis every replica shares (with `--store redis`).
    #[arg(long)]
    redis: Option<String>,
    /// The key profile in Redis; with `--store file:PATH`, the user the file
    /// belongs to.
    #[arg(long, default_value = "fleet-replica")]
    profile: String,
    /// The issuer recorded in the token file (`--store file:PATH`); the token URL
    /// when not given.
    #[arg(long)]
    issuer: Option<String>,
    /// The token endpoint.
    #[arg(long)]
    token_url: String,
    /// The API to call.
    #[arg(long)]
    api_url: String,
    /// The refresh token to start from when Redis holds none.
    #[arg(long)]
    refresh_token: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 8)]
    tasks: usize,
    /// Milliseconds each caller waits between two requests.
    #[arg(long, default_value_t = 10)]
    pause_ms: u64,
    /// Seconds before expiry to refresh.
    #[arg(long, default_value_t = 0.3)]
    refresh_before: f64,
    /// This replica's name in status lines, API requests and token requests.
    #[arg(long, default_value = "replica")]
    replica: String,
    /// Seconds the fleet's refresh lock lives without renewal (the library's
    /// default when not given; Redis only: the OS releases a file's lock).
    #[arg(long)]
    lock_ttl: Option<f64>,
    /// Seconds to wait for another replica's refresh before giving up (the
    /// library's default when not given).
    #[arg(long)]
    wait_timeout: Option<f64>,
    /// Seconds a process that takes over from a dead holder waits, from the
    /// holder's claim, before presenting the refresh token the holder presented
    /// (the library's default when not given; `--store file:PATH` only).
    #[arg(long)]
    claim_wait: Option<f64>,
    /// Polling interval while another replica refreshes: first, in milliseconds.
    #[arg(long, default_value_t = 5)]
    poll_min_ms: u64,
    /// Polling interval while another replica refreshes: at most, in milliseconds.
    #[arg(long, default_value_t = 50)]
    poll_max_ms: u64,
    /// Print a `status:` line this often, in seconds (0: never).
    #[arg(long, default_value_t = 0.0)]
    status_every: f64,
    /// Stop (with the summary) when standard input closes, so a replica started by
    /// a test does not outlive it.
    #[arg(long)]
    until_stdin_closes: bool,
}

/// What the last request got, for the status line.
#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    invalid_grant: AtomicU64,
    /// 0: no request yet, 1: ok, 2: an error (its kind in `last_error`).
    last: AtomicU8,
    last_error: Mutex<String>,
}

impl Counters {
    fn success(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.last.store(1, Ordering::Relaxed);
    }

    fn failure(&self, kind: String) {
        if kind == "invalid_grant" {
            self.invalid_grant.fetch_add(1, Ordering::Relaxed);
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = kind;
        self.last.store(2, Ordering::Relaxed);
    }

    fn status(&self, replica: &str) -> String {
        let last = match self.last.load(Ordering::Relaxed) {
            0 => "none".to_owned(),
            1 => "ok".to_owned(),
            _ => format!(
                "err:{}",
                self.last_error
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            ),
        };
        format!(
            "status: replica={replica} ok={} failed={} invalid_grant={} last={last}",
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            self.invalid_grant.load(Ordering::Relaxed),
        )
    }
}

/// The kind of a failed request, one word for the status line.
fn error_kind(e: &(dyn std::error::Error + 'static)) -> String {
    use tower_bearer::Error;
    let Some(e) = Error::find(e) else {
        return "other".into();
    };
    match e {
        Error::InvalidGrant(_) => "invalid_grant",
        Error::Store(_) => "store",
        Error::TokenFile(_) => "token_file",
        Error::Superseded(_) => "superseded",
        Error::Transport(..) => "transport",
        Error::Timeout(..) => "timeout",
        Error::TokenEndpoint(_) => "token_endpoint",
        Error::NoToken(_) => "no_token",
        Error::Aborted(_) => "aborted",
        _ => "other",
    }
    .into()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let endpoint = TokenEndpoint::new(&args.token_url)?
        .client_id("id")
        .client_secret("secret")
        .param("fleet_replica", args.replica.as_str());
    let seed = endpoint.refresh_token(args.refresh_token.as_str());
    let poll = (
        Duration::from_millis(args.poll_min_ms),
        Duration::from_millis(args.poll_max_ms),
    );
    if let Some(path) = args.store.strip_prefix("file:") {
        if args.lock_ttl.is_some() || args.redis.is_some() {
            return Err("--lock-ttl and --redis are for --store redis".into());
        }
        let issuer = args.issuer.as_deref().unwrap_or(&args.token_url);
        let mut source = FileStore::at(path, args.profile.as_str(), issuer)
            .shared(seed)
            .poll_interval(poll.0, poll.1);
        if let Some(timeout) = args.wait_timeout {
            source = source.wait_timeout(Duration::from_secs_f64(timeout));
        }
        if let Some(wait) = args.claim_wait {
            source = source.claim_wait(Duration::from_secs_f64(wait));
        }
        return serve(&args, source).await;
    }
    if args.store != "redis" {
        return Err(format!("--store {:?}: expected redis or file:PATH", args.store).into());
    }
    let Some(redis) = args.redis.as_deref() else {
        return Err("--store redis needs --redis URL".into());
    };
    if args.claim_wait.is_some() || args.issuer.is_some() {
        return Err("--claim-wait and --issuer are for --store file:PATH".into());
    }
    let store = RedisStore::connect(redis, &args.profile).await?;
    let mut source = store.fleet(seed).poll_interval(poll.0, poll.1);
    if let Some(ttl) = args.lock_ttl {
        source = source.lock_ttl(Duration::from_secs_f64(ttl));
    }
    if let Some(timeout) = args.wait_timeout {
        source = source.wait_timeout(Duration::from_secs_f64(timeout));
    }
    serve(&args, source).await
}

/// Calls the API with `source`'s tokens until the time is up or standard input
/// closes, printing the status lines and the summary.
async fn serve<S: TokenSource>(
    args: &Args,
    source: S,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let authorizer = Refreshing::builder(source)
        .refresh_before(Duration::from_secs_f64(args.refresh_before))
        .jitter(Duration::ZERO)
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build();
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer))
        .service(hyper);

    let counters = Arc::new(Counters::default());
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.tasks {
        let (client, url) = (client.clone(), args.api_url.clone());
        let (profile, replica) = (args.profile.clone(), args.replica.clone());
        let counters = counters.clone();
        let pause = Duration::from_millis(args.pause_ms);
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                let req = http::Request::get(url.as_str())
                    .header("x-fleet-profile", profile.as_str())
                    .header("x-fleet-replica", replica.as_str())
                    .body(Full::default());
                let res = match req {
                    Ok(req) => client.clone().oneshot(req).await,
                    Err(e) => Err(AuthorizeError::Service(e.into())),
                };
                match res {
                    Ok(res) if res.status().is_success() => counters.success(),
                    Ok(res) => {
                        eprintln!("API answered {}", res.status());
                        counters.failure(format!("status-{}", res.status().as_u16()));
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        counters.failure(error_kind(&e));
                    }
                }
                tokio::time::sleep(pause).await;
            }
        }));
    }
    let all_done = futures_util::future::join_all(tasks);
    let stdin_closed = async {
        if !args.until_stdin_closes {
            return std::future::pending().await;
        }
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let status = async {
        if args.status_every <= 0.0 {
            return std::future::pending().await;
        }
        let mut every = tokio::time::interval(Duration::from_secs_f64(args.status_every));
        loop {
            every.tick().await;
            let line = counters.status(&args.replica);
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    tokio::select! {
        results = all_done => {
            for r in results {
                r?;
            }
        }
        () = stdin_closed => {}
        () = status => {}
    }
    let ok = counters.ok.load(Ordering::Relaxed);
    let failed = counters.failed.load(Ordering::Relaxed);
    println!(
        "summary: requests={} ok={ok} failed={failed} invalid_grant={}",
        ok + failed,
        counters.invalid_grant.load(Ordering::Relaxed)
    );
    Ok(())
}
