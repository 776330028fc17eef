//! The client of `mcp_server`: it knows only the MCP endpoint's URL and its own
//! client registration. Its first request gets a `401` whose challenge names the
//! resource's metadata (RFC 9728); `discover_from_challenge` reads it, checks that it
//! describes this resource, and discovers the authorization server; a
//! client-credentials token from there, issued for this resource (RFC 8707
//! `resource`: the server accepts no token meant for another), then goes on every
//! request (`AuthorizeLayer`), and the client lists and calls the tools.
//!
//! The JSON-RPC messages are written by hand, as MCP's Streamable HTTP transport
//! carries them to a stateless server that answers in JSON (`mcp_server`); an
//! application would use an MCP client library (rmcp) with this crate's layer.
//!
//! ```text
//! cargo run --example mcp_client -- --url http://127.0.0.1:3001/mcp
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::client::{discover_from_challenge, AuthorizeLayer, HttpClient, Refreshing};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::Parser, Debug)]
#[command(about = "An MCP-style client that finds its authorization server from a 401")]
struct Args {
    /// The MCP endpoint (the resource).
    #[arg(long, default_value = "http://127.0.0.1:3001/mcp")]
    url: String,
    /// This client's registration at the authorization server.
    #[arg(long, default_value = "demo-client")]
    client_id: String,
    /// Its secret.
    #[arg(long, default_value = "demo-secret")]
    client_secret: String,
}

/// The `initialize` parameters of this client.
fn initialize() -> Value {
    json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": { "name": "tower-bearer-mcp-client", "version": env!("CARGO_PKG_VERSION") },
    })
}

/// A JSON-RPC request to `url` (Streamable HTTP: the client accepts JSON or an
/// event stream).
fn call(url: &str, id: u64, method: &str, params: Value) -> http::Request<Full<Bytes>> {
    let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
    http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(Full::from(body.to_string()))
        .expect("a valid request")
}

/// Sends `req`; answers the status, the headers and the body as JSON (`Null` if it
/// is not).
async fn send<S>(
    client: &mut S,
    req: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, http::HeaderMap, Value), BoxError>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: Into<BoxError>,
{
    let res = client
        .ready()
        .await
        .map_err(Into::into)?
        .call(req)
        .await
        .map_err(Into::into)?;
    let (parts, body) = res.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = <Args as clap::Parser>::parse();
    let url = args.url.as_str();
    let mut hyper =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<Full<Bytes>>();

    // 1. No token yet: the answer says where to find out how to get one.
    let (status, headers, _) = send(&mut hyper, call(url, 1, "initialize", initialize())).await?;
    let metadata_url = tower_bearer::client::resource_metadata_url(&headers)
        .ok_or("the 401 names no resource_metadata")?;
    println!(
        "unauthenticated: {}, resource metadata at {metadata_url}",
        status.as_u16()
    );

    // 2. From the 401 to the authorization server, checking the document is this
    //    resource's own and the server is the issuer it claims.
    let (resource, provider) = discover_from_challenge(&headers, url, &HttpClient::new()).await?;
    println!("authorization server: {}", provider.issuer);
    println!("scopes supported: {}", resource.scopes_supported.join(" "));

    // 3. A token from there on every request.
    let endpoint = provider
        .token_endpoint()?
        .client_id(&args.client_id)
        .client_secret(&args.client_secret);
    let tokens = Refreshing::new(endpoint.client_credentials().resource(&resource.resource));
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(tokens.clone()).retry_unauthorized())
        .service(hyper);

    let (status, _, answer) = send(&mut client, call(url, 2, "initialize", initialize())).await?;
    if !status.is_success() {
        return Err(format!("initialize: {status}").into());
    }
    println!(
        "initialize: {}",
        answer["result"]["serverInfo"]["name"]
            .as_str()
            .unwrap_or("?")
    );

    let (_, _, answer) = send(&mut client, call(url, 3, "tools/list", json!({}))).await?;
    let tools: Vec<&str> = answer["result"]["tools"]
        .as_array()
        .map(|tools| tools.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    println!("tools: {}", tools.join(", "));

    // 4. Each tool with its own scope.
    for tool in tools {
        let params = json!({ "name": tool, "arguments": { "text": "hello from mcp_client" } });
        let (status, headers, answer) =
            send(&mut client, call(url, 4, "tools/call", params)).await?;
        match answer["result"]["content"][0]["text"].as_str() {
            Some(text) if status.is_success() => println!("{tool}: {text}"),
            _ => {
                let challenge = headers
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                println!("{tool}: {} {challenge}", status.as_u16());
            }
        }
    }
    println!("{} token request(s)", tokens.stats().refreshes);
    Ok(())
}
