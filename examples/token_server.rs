//! A small, complete token server that follows the Zebbra OAuth 2.0 guide, so the
//! guide's requests, exactly as written, work against it (`POST /register`,
//! `POST /token`, `GET /user`, `GET /token/expired`), and that publishes its
//! Ed25519 key through OIDC discovery (`/.well-known/openid-configuration`,
//! `/.well-known/jwks.json`) so `axum_api` can check its tokens. What each route
//! does: `examples/support/idp.rs`.
//!
//! ```text
//! cargo run --example token_server -- --addr 127.0.0.1:8000 --token-ttl 30m --admin alice
//! ```

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "A token server following the Zebbra OAuth 2.0 guide")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Access token lifetime: 30m, 90s, 1h, or seconds.
    #[arg(long, default_value = "30m", value_parser = parse_ttl)]
    token_ttl: Duration,
    /// The `aud` of the access tokens.
    #[arg(long, default_value = "api")]
    audience: String,
    /// A user whose tokens carry the `admin` scope (repeatable).
    #[arg(long = "admin", value_name = "USERNAME")]
    admins: Vec<String>,
    /// The issuer URL (default: http://<the address it listens on>).
    #[arg(long)]
    issuer: Option<String>,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 90s or 1h"))?;
    let secs = match unit {
        "" | "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        _ => return Err(format!("{s:?}: use s, m or h")),
    };
    match secs {
        Some(0) => Err("the token lifetime must be positive".into()),
        Some(secs) if secs <= 366 * 24 * 3600 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{s:?}: at most a year")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let server = support::idp::start(
        listener,
        support::idp::Config {
            ttl: args.token_ttl,
            audience: args.audience,
            admins: args.admins,
            issuer: args.issuer,
        },
    )?;
    println!(
        "issuer {} (keys: {}/.well-known/jwks.json)",
        server.issuer(),
        server.issuer()
    );
    println!("token server listening on http://{}", server.addr);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
