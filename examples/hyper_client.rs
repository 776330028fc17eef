//! A hyper-util client with `AuthorizeLayer` and a refreshing client-credentials
//! token, against an identity provider and API started in this process.
//!
//! ```text
//! cargo run --example hyper_client
//! ```

#[path = "support/mod.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing, TokenEndpoint};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let servers = support::start(Duration::from_secs(3600)).await?;

    let endpoint = TokenEndpoint::new(&servers.token_url())?
        .client_id(support::CLIENT_ID)
        .client_secret(support::CLIENT_SECRET);
    let authorizer = Refreshing::new(endpoint.client_credentials());

    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()).retry_unauthorized())
        .service(hyper);

    for i in 1..=3 {
        let req = http::Request::get(servers.api_url()).body(Full::default())?;
        let res = client.clone().oneshot(req).await?;
        let status = res.status();
        let body = res.into_body().collect().await?.to_bytes();
        println!("request {i}: {status} {}", String::from_utf8_lossy(&body));
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
