//! The main demo: a token server, a protected API and a client, in one process on
//! loopback.
//!
//! The token server (`examples/token_server.rs`) issues short-lived EdDSA JWTs
//! (2 s by default) and rotating refresh tokens; the API (`examples/axum_api.rs`)
//! finds its keys through OIDC discovery and checks tokens with this crate's
//! `RequireBearerLayer` and `JwksValidator`, with no leeway. The client registers a
//! user, logs in with the password grant, and 64 tasks call `GET /me` and
//! `GET /admin` without pause through a hyper-util client wrapped in
//! `AuthorizeLayer` + `Refreshing`, across several token lifetimes. The cache
//! refreshes each token once (with the refresh token, which the server rotates), in
//! the background, shortly before it expires; no caller waits and no burst of token
//! requests happens.
//!
//! ```text
//! cargo run --example demo -- --tasks 64 --duration 7 --lifetime 2
//! ```
//!
//! With the `metrics` feature the API also serves this crate's metrics, client and
//! server side, at `/metrics` in the Prometheus format; `--linger` keeps it serving
//! after the run, to look at them:
//!
//! ```text
//! cargo run --example demo --features metrics -- --linger
//! curl -s http://127.0.0.1:PORT/metrics      # the address is printed at start
//! ```
//!
//! The last line of the run is `summary: requests=N ok=N failed=0 token_requests=K expiries=E`,
//! where E is the number of times the token's life (less the refresh margin) ran out
//! during the run: single flight means K is at most E + 1. The process exits non-zero
//! if a request failed or single flight did not hold.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing, TokenEndpoint};

#[derive(Parser, Debug)]
#[command(about = "tower-bearer demo: token server, protected API and client on loopback")]
struct Args {
    /// Concurrent client tasks.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 7.0)]
    duration: f64,
    /// Lifetime of the issued access tokens, in seconds.
    #[arg(long, default_value_t = 2.0)]
    lifetime: f64,
    /// After the run, keep the token server and the API (and its `/metrics`)
    /// serving until interrupted.
    #[arg(long)]
    linger: bool,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if !(args.lifetime >= 1.0 && args.duration > 0.0 && args.tasks > 0) {
        return Err("--lifetime must be at least 1 s, --duration and --tasks positive".into());
    }
    let lifetime = Duration::from_secs_f64(args.lifetime);
    let margin = lifetime / 4;
    support::metrics::install();
    let servers = Arc::new(support::start_with(lifetime, &[USER]).await?);
    println!(
        "token server on {}, API on http://{}; tokens live {lifetime:?}, refreshed {margin:?} before expiry",
        servers.idp.issuer(),
        servers.api_addr
    );
    if cfg!(feature = "metrics") {
        println!("metrics on http://{}/metrics", servers.api_addr);
    }
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    introduce(&hyper, &servers).await?;

    let endpoint = TokenEndpoint::new(&servers.token_url())?;
    let authorizer = Refreshing::builder(endpoint.password(USER, PASSWORD))
        .refresh_before(margin)
        .jitter(Duration::ZERO)
        .build();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()).retry_unauthorized())
        .service(hyper);

    let requests = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.duration);
    let me: http::Uri = servers.api_url().parse()?;
    let admin: http::Uri = format!("http://{}/admin", servers.api_addr).parse()?;

    let mut tasks = Vec::new();
    for task in 0..args.tasks {
        // Half the tasks read their claims, half use the admin scope.
        let url = if task % 2 == 0 {
            me.clone()
        } else {
            admin.clone()
        };
        let client = client.clone();
        let (requests, ok, failed) = (requests.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                let req = http::Request::get(url.clone())
                    .body(Full::default())
                    .unwrap();
                requests.fetch_add(1, Ordering::Relaxed);
                match client.clone().oneshot(req).await {
                    Ok(res) if res.status() == http::StatusCode::OK => {
                        let _ = res.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(res) => {
                        eprintln!("request failed: HTTP {}", res.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }

    let progress = {
        let (requests, ok, failed, servers) = (
            requests.clone(),
            ok.clone(),
            failed.clone(),
            servers.clone(),
        );
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(started + Duration::from_secs(1), Duration::from_secs(1));
            loop {
                tick.tick().await;
                println!(
                    "[{:>4.1}s] requests={} ok={} failed={} token_requests={}",
                    started.elapsed().as_secs_f64(),
                    requests.load(Ordering::Relaxed),
                    ok.load(Ordering::Relaxed),
                    failed.load(Ordering::Relaxed),
                    servers.token_requests(),
                );
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    progress.abort();

    let elapsed = started.elapsed();
    let usable = lifetime - margin;
    let expiries = (elapsed.as_secs_f64() / usable.as_secs_f64()).floor() as u64;
    // The first login and every refresh: each is one `POST /token`.
    let token_requests = servers.token_requests();
    let stats = authorizer.stats();
    let (requests, ok, failed) = (
        requests.load(Ordering::SeqCst),
        ok.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    println!(
        "ran {:.1}s with {} tasks; {} callers waited for a token (the first login), {} refreshes",
        elapsed.as_secs_f64(),
        args.tasks,
        stats.waits,
        stats.refreshes
    );
    println!("summary: requests={requests} ok={ok} failed={failed} token_requests={token_requests} expiries={expiries}");
    if failed > 0 || token_requests > expiries + 1 {
        std::process::exit(1);
    }
    if args.linger {
        println!("still serving (--linger); interrupt to stop");
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}

const USER: &str = "demo@example.com";
const PASSWORD: &str = "correct horse battery staple";

type Plain = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

/// Registers the demo user as the Zebbra guide does, and shows what the API answers
/// without a token.
async fn introduce(
    hyper: &Plain,
    servers: &support::Servers,
) -> Result<(), Box<dyn std::error::Error>> {
    let registration = serde_json::json!({
        "username": USER,
        "first_name": "Demo",
        "last_name": "User",
        "new_workspace_name": "Demo workspace",
        "password": PASSWORD,
    });
    let req = http::Request::post(format!("{}/register", servers.idp.issuer()))
        .body(Full::from(registration.to_string()))?;
    let res = hyper.request(req).await?;
    if !res.status().is_success() {
        return Err(format!("registration failed: HTTP {}", res.status()).into());
    }
    println!("registered {USER}");
    for path in ["/public", "/me"] {
        let req = http::Request::get(format!("http://{}{path}", servers.api_addr))
            .body(Full::default())?;
        let res = hyper.request(req).await?;
        let challenge = res
            .headers()
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        println!("GET {path} with no token: {}{challenge}", res.status());
    }
    Ok(())
}
