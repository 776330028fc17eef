//! An MCP server on rmcp's Streamable HTTP service, protected the way the Model
//! Context Protocol's authorization spec asks:
//!
//! - every request needs a bearer token from the authorization server (checked by
//!   `RequireBearerLayer` with `JwksValidator`, keys through OIDC discovery) whose
//!   audience is this server's canonical URI (`http://<addr>/mcp`): a token the
//!   client got for another resource is refused (`401` `invalid_token`);
//! - the OAuth 2.0 Protected Resource Metadata (RFC 9728) is served at
//!   `/.well-known/oauth-protected-resource/mcp`, and every `401` names it and the
//!   scope to ask for, so a client finds the authorization server from its first
//!   answer;
//! - each tool needs its own scope (`ToolScopeLayer`, feature `mcp`): `echo` needs
//!   `read`, `server_stats` needs `admin`; a token without it gets `403`
//!   `insufficient_scope` with `scope="…"`;
//! - only this server's own `Host` is served (DNS rebinding), and a request from a
//!   browser page (`Origin`) only when that origin is allowed with `--allow-origin`.
//!
//! With the token server of the examples (`mcp_client` is the client):
//!
//! ```text
//! cargo run --example token_server -- --addr 127.0.0.1:8000        # terminal 1
//! cargo run --example mcp_server --features mcp -- --oidc http://127.0.0.1:8000
//! cargo run --example mcp_client -- --url http://127.0.0.1:3001/mcp
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::Router;
use clap::Parser;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use tower::Layer;
use tower_bearer::mcp::server::ToolScopeLayer;
use tower_bearer::server::{Claims, JwksValidator, ProtectedResourceMetadata, RequireBearerLayer};

#[derive(Parser, Debug)]
#[command(about = "An MCP server (rmcp, Streamable HTTP) protected by OAuth 2.0")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:3001")]
    addr: SocketAddr,
    /// The authorization server (its issuer URL; keys through OIDC discovery).
    #[arg(long, value_name = "ISSUER_URL")]
    oidc: String,
    /// A browser origin allowed to call this server (`https://app.example.com:443`;
    /// repeat for several). A request with another `Origin` is refused `403`; one
    /// without (any client that is no browser) is served.
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    allowed_origins: Vec<String>,
}

/// The realm of every challenge.
const REALM: &str = "mcp";

/// What `echo` needs, and what the `401` asks for: the scope of most tools.
const READ: &str = "read";
/// What `server_stats` needs.
const ADMIN: &str = "admin";

/// The text `echo` answers.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    /// The text to answer.
    text: String,
}

/// The tools. rmcp makes one per request (stateless); the count is shared.
#[derive(Clone)]
struct Tools {
    calls: Arc<AtomicU64>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Answers the text it is given. Needs the scope read.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.calls.fetch_add(1, Ordering::Relaxed);
        text
    }

    #[tool(description = "How many tool calls this server answered. Needs the scope admin.")]
    fn server_stats(&self) -> String {
        let calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{calls} tool call(s) answered")
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build()).with_server_info(
            Implementation::new("tower-bearer-mcp-example", env!("CARGO_PKG_VERSION")),
        )
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let authority = listener.local_addr()?.to_string();
    // The canonical URI of this server: what tokens must be issued for.
    let resource = format!("http://{authority}/mcp");

    let audience = resource.clone();
    let validator = JwksValidator::<Claims>::discover(&args.oidc)?
        .rules(move |v| v.audience(&audience))
        .build()?;
    // Fail at start-up, not at the first request, when the keys cannot be found.
    validator.load().await?;

    let metadata = ProtectedResourceMetadata::new(&resource)
        .authorization_servers([&args.oidc])
        .scopes_supported([READ, ADMIN])
        .bearer_methods_supported(["header"])
        .resource_name("tower-bearer MCP example");
    let metadata_url = metadata.url()?;

    // rmcp's Streamable HTTP service, stateless with JSON answers: each POST is
    // answered on its own, so a load balancer needs no session affinity. Only this
    // server's own authority is accepted in `Host` (DNS rebinding), and only the
    // origins allowed in `Origin` (MCP's transport spec: servers MUST validate it, so
    // that a web page of another site cannot reach a local server).
    let calls = Arc::new(AtomicU64::new(0));
    let tools = move || {
        Ok(Tools {
            calls: Arc::clone(&calls),
            tool_router: Tools::tool_router(),
        })
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts([authority.clone()])
        .with_allowed_origins(args.allowed_origins)
        .enforce_origin_validation();
    let mcp = StreamableHttpService::new(tools, Arc::new(NeverSessionManager::default()), config);
    // A scope per tool, judged on the verified claims before rmcp runs the call.
    let scopes = ToolScopeLayer::<Claims>::new()
        .tool("echo", [READ])
        .tool("server_stats", [ADMIN])
        // A tool added without a line here is not open to every token.
        .other_tools([ADMIN]);
    let app = Router::new()
        .route_service("/mcp", scopes.layer(mcp))
        .layer(
            RequireBearerLayer::new(validator)
                .realm(REALM)
                .resource_metadata(&metadata_url)
                // What a client asks for first: the scope of most tools.
                .scope(READ),
        )
        // The document is public: outside the layer.
        .route_service(&metadata.path()?, metadata.service()?);
    println!("resource {resource}, metadata at {metadata_url}");
    println!("MCP server listening on http://{authority}");
    axum::serve(listener, app).await?;
    Ok(())
}
