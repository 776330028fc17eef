//! One replica of a fleet: a refreshing client whose refresh token rotates, shared
//! with every other replica through Redis, calling an API until told to stop.
//! Start several against the same Redis and token endpoint: together they make one
//! token request per expiry.
//!
//! ```text
//! cargo run --features redis --example fleet_replica -- \
//!     --redis redis://127.0.0.1:6379/ --profile demo \
//!     --token-url http://127.0.0.1:8080/token --api-url http://127.0.0.1:8080/api \
//!     --refresh-token rt-0 --duration 5
//! ```
//!
//! The last line is a summary: `summary: requests=N ok=N failed=N invalid_grant=N`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing, TokenEndpoint};
use tower_bearer::redis::RedisStore;

#[derive(Parser)]
struct Args {
    /// The Redis every replica shares.
    #[arg(long)]
    redis: String,
    /// The key profile in Redis.
    #[arg(long, default_value = "fleet-replica")]
    profile: String,
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
    /// Seconds before expiry to refresh.
    #[arg(long, default_value_t = 0.3)]
    refresh_before: f64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let args = Args::parse();
    let store = RedisStore::connect(&args.redis, &args.profile).await?;
    let endpoint = TokenEndpoint::new(&args.token_url)?
        .client_id("id")
        .client_secret("secret");
    let source = store
        .fleet(endpoint.refresh_token(args.refresh_token.as_str()))
        .poll_interval(Duration::from_millis(5), Duration::from_millis(50));
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

    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let invalid_grant = Arc::new(AtomicU64::new(0));
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.tasks {
        let (client, url) = (client.clone(), args.api_url.clone());
        let (ok, failed, invalid_grant) = (ok.clone(), failed.clone(), invalid_grant.clone());
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < until {
                let req = http::Request::get(url.as_str()).body(Full::default());
                let res = match req {
                    Ok(req) => client.clone().oneshot(req).await,
                    Err(e) => Err(e.into()),
                };
                match res {
                    Ok(res) if res.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(res) => {
                        eprintln!("API answered {}", res.status());
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        let grant = e
                            .downcast_ref::<tower_bearer::Error>()
                            .is_some_and(|e| matches!(e, tower_bearer::Error::InvalidGrant(_)));
                        if grant {
                            invalid_grant.fetch_add(1, Ordering::Relaxed);
                        }
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!(
        "summary: requests={} ok={ok} failed={failed} invalid_grant={}",
        ok + failed,
        invalid_grant.load(Ordering::Relaxed)
    );
    Ok(())
}
