//! What the examples run against, in their own process on loopback: the token
//! server ([`idp`], the same one `cargo run --example token_server` starts) and the
//! protected API ([`api`], the same one `cargo run --example axum_api` starts),
//! which finds the token server's keys through OIDC discovery. Real axum servers,
//! so the examples run with no setup.
#![allow(dead_code)]

pub mod api;
pub mod idp;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tower_bearer::server::{Claims, JwksValidator};

#[allow(unused_imports)] // not every example uses the client registration
pub use idp::{CLIENT_ID, CLIENT_SECRET};

/// A running token server and API.
pub struct Servers {
    /// The token server.
    pub idp: idp::TokenServer,
    /// Where the API listens.
    pub api_addr: SocketAddr,
    api: Arc<api::Counters>,
}

impl Servers {
    /// The token endpoint.
    pub fn token_url(&self) -> String {
        self.idp.token_url()
    }

    /// The API's `GET /me`, which needs a token.
    pub fn api_url(&self) -> String {
        format!("http://{}/me", self.api_addr)
    }

    /// The token endpoint, for the examples' registered client.
    pub fn endpoint(&self) -> Result<tower_bearer::client::TokenEndpoint, tower_bearer::Error> {
        self.idp.endpoint()
    }

    /// Token requests the token server answered so far.
    pub fn token_requests(&self) -> u64 {
        self.idp.token_requests()
    }

    /// API requests that reached a handler so far.
    pub fn api_requests(&self) -> u64 {
        self.api.served()
    }
}

/// The client examples' loop: `requests` requests to the API through `get` (which
/// sends one and returns its status and body), each printed and required to
/// succeed, then how many token and API requests the servers saw.
pub async fn run_requests<F, Fut>(
    servers: &Servers,
    requests: usize,
    mut get: F,
) -> Result<(), BoxError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(http::StatusCode, String), BoxError>>,
{
    for i in 1..=requests {
        let (status, body) = get(servers.api_url()).await?;
        println!("request {i}: {status} {body}");
        if !status.is_success() {
            return Err(format!("request {i} failed: {status}").into());
        }
    }
    println!(
        "{requests} requests, {} token request(s), {} API request(s)",
        servers.token_requests(),
        servers.api_requests()
    );
    Ok(())
}

/// What the examples' `main` returns on failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Starts the token server (tokens live `lifetime`, audience `api`, `admins` get
/// the `admin` scope) and the API, each on an ephemeral loopback port. The API
/// checks tokens with no leeway: an expired token is refused at once.
pub async fn start_with(lifetime: Duration, admins: &[&str]) -> std::io::Result<Servers> {
    let config = idp::Config {
        ttl: lifetime,
        admins: admins.iter().map(|a| a.to_string()).collect(),
        ..idp::Config::default()
    };
    let idp = idp::start(tokio::net::TcpListener::bind("127.0.0.1:0").await?, config)?;
    let validator = JwksValidator::<Claims>::discover(idp.issuer())
        .map_err(std::io::Error::other)?
        .rules(|v| v.audience("api").leeway(Duration::ZERO))
        .build()
        .map_err(std::io::Error::other)?;
    // Fail early if the keys cannot be found.
    validator.load().await.map_err(std::io::Error::other)?;
    let counters = Arc::new(api::Counters::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api_addr = listener.local_addr()?;
    let app = api::app(validator, Arc::clone(&counters));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Servers {
        idp,
        api_addr,
        api: counters,
    })
}

/// [`start_with`] and no admins.
pub async fn start(lifetime: Duration) -> std::io::Result<Servers> {
    start_with(lifetime, &[]).await
}
