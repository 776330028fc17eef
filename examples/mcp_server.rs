//! An MCP-style server: a JSON-RPC 2.0 endpoint at `POST /mcp` (`initialize`,
//! `tools/list`, `tools/call`), protected the way the Model Context Protocol's
//! authorization spec asks:
//!
//! - every request needs a bearer token from the authorization server (checked by
//!   `RequireBearerLayer` with `JwksValidator`, keys through OIDC discovery);
//! - the OAuth 2.0 Protected Resource Metadata (RFC 9728) is served at
//!   `/.well-known/oauth-protected-resource/mcp`, and every `401` names it, so a
//!   client finds the authorization server from its first answer;
//! - each tool needs its own scope: `echo` needs `read`, `server_stats` needs
//!   `admin`; a token without it gets `403` `insufficient_scope` with `scope="…"`.
//!
//! With the token server of the examples (`mcp_client` is the client):
//!
//! ```text
//! cargo run --example token_server -- --addr 127.0.0.1:8000        # terminal 1
//! cargo run --example mcp_server -- --oidc http://127.0.0.1:8000   # terminal 2
//! cargo run --example mcp_client -- --url http://127.0.0.1:3001/mcp
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use clap::Parser;
use serde_json::{json, Value};
use tower_bearer::server::{
    Claims, JwksValidator, ProtectedResourceMetadata, Rejection, RequireBearerLayer, ScopedClaims,
    Verified,
};

#[derive(Parser, Debug)]
#[command(about = "An MCP-style JSON-RPC server protected by OAuth 2.0 (RFC 9728 metadata)")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3001")]
    addr: SocketAddr,
    /// The authorization server (its issuer URL; keys through OIDC discovery).
    #[arg(long, value_name = "ISSUER_URL")]
    oidc: String,
    /// The `aud` tokens must carry.
    #[arg(long, default_value = "api")]
    audience: String,
}

/// The realm of every challenge.
const REALM: &str = "mcp";

/// The tools, each with the scope it needs.
const TOOLS: [(&str, &str, &str); 2] = [
    ("echo", "read", "Answers the text it is given."),
    (
        "server_stats",
        "admin",
        "How many tool calls this server answered.",
    ),
];

struct Server {
    /// The metadata URL, for the `403` answers this handler gives itself.
    metadata_url: String,
    calls: AtomicU64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let resource = format!("http://{}/mcp", listener.local_addr()?);

    let audience = args.audience.clone();
    let validator = JwksValidator::<Claims>::discover(&args.oidc)?
        .rules(move |v| v.audience(&audience))
        .build()?;
    // Fail at start-up, not at the first request, when the keys cannot be found.
    validator.load().await?;

    let metadata = ProtectedResourceMetadata::new(&resource)
        .authorization_servers([&args.oidc])
        .scopes_supported(TOOLS.map(|(_, scope, _)| scope))
        .bearer_methods_supported(["header"])
        .resource_name("tower-bearer MCP example");
    let metadata_url = metadata.url()?;
    let server = Arc::new(Server {
        metadata_url: metadata_url.clone(),
        calls: AtomicU64::new(0),
    });
    let mcp = Router::new().route("/mcp", post(rpc)).layer(
        RequireBearerLayer::new(validator)
            .realm(REALM)
            .resource_metadata(&metadata_url),
    );
    let app = Router::new()
        // The document is public: outside the layer.
        .route_service(&metadata.path()?, metadata.service()?)
        .merge(mcp)
        .with_state(server);
    println!("resource {resource}, metadata at {metadata_url}");
    println!("MCP server listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// `POST /mcp`: one JSON-RPC 2.0 request (or notification) per body.
async fn rpc(
    State(server): State<Arc<Server>>,
    Extension(Verified(claims)): Extension<Verified<Claims>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Json(error(Value::Null, -32700, "parse error")).into_response();
    };
    let id = request.get("id").cloned();
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let Some(id) = id else {
        // A notification (`notifications/initialized`): no answer.
        return StatusCode::ACCEPTED.into_response();
    };
    let result = match method {
        "initialize" => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": { "tools": {} },
            "serverInfo": { "name": "tower-bearer-mcp-example", "version": env!("CARGO_PKG_VERSION") },
        }),
        "tools/list" => json!({
            "tools": TOOLS.map(|(name, scope, description)| json!({
                "name": name,
                "description": format!("{description} Needs the scope {scope}."),
                "inputSchema": { "type": "object" },
            })),
        }),
        "tools/call" => {
            let params = request.get("params").cloned().unwrap_or(Value::Null);
            let name = params.get("name").and_then(Value::as_str).unwrap_or("");
            let Some((_, scope, _)) = TOOLS.iter().find(|(n, _, _)| *n == name) else {
                return Json(error(id, -32602, "unknown tool")).into_response();
            };
            if !claims.has_scope(scope) {
                // The scope is per tool, so the handler answers it, as the layer
                // would: 403 insufficient_scope, naming the scope and the metadata.
                return Rejection::InsufficientScope((*scope).to_owned()).response_for_with(
                    &headers,
                    REALM,
                    Some(&server.metadata_url),
                );
            }
            let calls = server.calls.fetch_add(1, Ordering::Relaxed) + 1;
            let text = match name {
                "echo" => params["arguments"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                _ => format!("{calls} tool call(s) answered"),
            };
            json!({ "content": [{ "type": "text", "text": text }], "isError": false })
        }
        _ => return Json(error(id, -32601, "method not found")).into_response(),
    };
    Json(json!({ "jsonrpc": "2.0", "id": id, "result": result })).into_response()
}

fn error(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}
