//! A protected axum API that checks tokens from any OpenID Connect provider (or any
//! JWKS) with this crate's `RequireBearerLayer` and `JwksValidator`:
//!
//! - `GET /public`: no token needed.
//! - `GET /me`: the verified claims as JSON (`sub` included).
//! - `GET /admin`: needs the scope `admin`.
//! - `GET /metrics`: the crate's metrics in the Prometheus format, when built with
//!   the `metrics` feature (`cargo run --example axum_api --features metrics -- …`).
//!
//! With the token server of the examples:
//!
//! ```text
//! cargo run --example token_server -- --admin alice      # terminal 1
//! cargo run --example axum_api -- --oidc http://127.0.0.1:8000 --audience api
//! ```
//!
//! `--jwks-url URL` instead of `--oidc` takes the keys from a JWKS directly (then
//! `--issuer` says which `iss` to accept; with `--oidc` it is the provider's).

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use tower_bearer::server::{Claims, JwksValidator};

#[derive(Parser, Debug)]
#[command(about = "A protected axum API: /public, /me and /admin")]
#[command(group(ArgGroup::new("keys").required(true).args(["jwks_url", "oidc"])))]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// The JWKS with the keys that sign tokens.
    #[arg(long, value_name = "URL")]
    jwks_url: Option<String>,
    /// The issuer whose keys are found through OpenID Connect discovery.
    #[arg(long, value_name = "ISSUER_URL")]
    oidc: Option<String>,
    /// The `iss` tokens must carry (with --oidc: the issuer itself).
    #[arg(long)]
    issuer: Option<String>,
    /// The `aud` tokens must carry.
    #[arg(long)]
    audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[arg(long, default_value_t = 30)]
    leeway: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    // Before the first key fetch, so that it is counted.
    support::metrics::install();
    let builder = match (&args.oidc, &args.jwks_url) {
        (Some(issuer), _) => {
            if args.issuer.as_ref().is_some_and(|i| i != issuer) {
                return Err("with --oidc the issuer is the provider's; drop --issuer".into());
            }
            JwksValidator::<Claims>::discover(issuer)?
        }
        (None, Some(url)) => JwksValidator::<Claims>::builder(url)?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let (issuer, audience, leeway) = (
        args.issuer.clone(),
        args.audience.clone(),
        Duration::from_secs(args.leeway),
    );
    let validator = builder
        .rules(move |mut v| {
            if let Some(issuer) = &issuer {
                v = v.issuer(issuer);
            }
            if let Some(audience) = &audience {
                v = v.audience(audience);
            }
            v.leeway(leeway)
        })
        .build()?;
    // Fail at start-up, not at the first request, when the keys cannot be found.
    validator.load().await?;
    println!("keys: {}", validator.key_ids().join(", "));
    let app = support::api::app(validator, Arc::new(support::api::Counters::default()));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!("API listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
