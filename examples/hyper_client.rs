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
use tower_bearer::client::{AuthorizeLayer, Refreshing};

#[tokio::main]
async fn main() -> Result<(), support::BoxError> {
    let servers = support::start(Duration::from_secs(3600)).await?;
    let authorizer = Refreshing::new(servers.endpoint()?.client_credentials());

    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()).retry_unauthorized())
        .service(hyper);

    support::run_requests(&servers, 3, |url| {
        let client = client.clone();
        async move {
            let req = http::Request::get(url).body(Full::default())?;
            let res = client.oneshot(req).await?;
            let status = res.status();
            let body = res.into_body().collect().await?.to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
    })
    .await
}
