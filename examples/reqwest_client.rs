//! A reqwest client (through reqwest-middleware) with `AuthorizeMiddleware` and a
//! refreshing client-credentials token, against an identity provider and API
//! started in this process.
//!
//! ```text
//! cargo run --example reqwest_client --features reqwest
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use tower_bearer::client::{AuthorizeMiddleware, Refreshing, TokenEndpoint};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let servers = support::start(Duration::from_secs(3600)).await?;

    let endpoint = TokenEndpoint::new(&servers.token_url())?
        .client_id(support::CLIENT_ID)
        .client_secret(support::CLIENT_SECRET);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(Refreshing::new(
            endpoint.client_credentials(),
        )))
        .build();

    for i in 1..=3 {
        let res = client.get(servers.api_url()).send().await?;
        let status = res.status();
        println!("request {i}: {status} {}", res.text().await?);
        if !status.is_success() {
            return Err(format!("request {i} failed: {status}").into());
        }
    }
    println!(
        "3 requests, {} token request(s), {} API request(s)",
        servers.token_requests(),
        servers.api_requests()
    );
    Ok(())
}
