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

use tower_bearer::client::{AuthorizeMiddleware, Refreshing};

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let servers = support::start(Duration::from_secs(3600)).await?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(Refreshing::new(
            servers.endpoint()?.client_credentials(),
        )))
        .build();

    support::run_requests(&servers, 3, |url| {
        let request = client.get(url);
        async move {
            let res = request.send().await?;
            let status = res.status();
            Ok((status, res.text().await?))
        }
    })
    .await
}
