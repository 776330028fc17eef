//! A real MCP client, built on rmcp (Streamable HTTP: `initialize`, `tools/list`,
//! `tools/call` of every tool), with tower-bearer doing all the authorization
//! (`tower_bearer::mcp`): what the official MCP conformance suite runs
//! (`.ci/mcp-conformance`).
//!
//! ```text
//! cargo run --features rmcp --example mcp_conformance_client -- <server-url>
//! ```
//!
//! The server URL is the last argument. As the suite gives them:
//! `MCP_CONFORMANCE_SCENARIO` names the scenario, and `MCP_CONFORMANCE_CONTEXT`
//! (JSON) carries the credentials of the scenarios that have any:
//! - `client_id` and `private_key_pem` (`signing_algorithm`): client credentials with
//!   `private_key_jwt`;
//! - `idp_id_token`, `idp_token_endpoint`, `idp_client_id` with `client_id` and
//!   `client_secret`: cross-app access (an ID-JAG from the identity provider, then
//!   the JWT-bearer grant);
//! - `client_id` and `client_secret`: a pre-registered client, with the
//!   authorization code grant; with the client credentials grant in the scenario
//!   that asks for it (`auth/client-credentials-basic`).
//!
//! Without credentials the client registers itself: with its client ID metadata
//! document URL where the authorization server takes one, else dynamically. Logins
//! are headless (the authorization URL followed to the loopback redirect).

use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, JsonObject,
    ProtocolVersion,
};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use rmcp::ServiceExt as _;
use serde_json::{json, Value};
use tower_bearer::client::source::{token_type, ExchangeToken};
use tower_bearer::client::{Algorithm, AssertionKey, ClientInformation, TokenEndpoint};
use tower_bearer::mcp::{AuthorizedHttpClient, CrossApp, Grant, McpAuth, UserAgent};

/// The client ID metadata document URL the suite expects (`auth/basic-cimd`).
const METADATA_DOCUMENT: &str = "https://conformance-test.local/client-metadata.json";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    if let Err(e) = run().await {
        eprintln!("mcp_conformance_client: {e}");
        std::process::exit(1);
    }
}

/// A string member of the context.
fn field<'a>(context: &'a Value, name: &str) -> Option<&'a str> {
    context.get(name).and_then(Value::as_str)
}

fn required<'a>(context: &'a Value, name: &str) -> Result<&'a str, BoxError> {
    field(context, name).ok_or_else(|| format!("MCP_CONFORMANCE_CONTEXT lacks {name}").into())
}

/// The authorization for this scenario and its context.
fn authorization(url: &str, scenario: &str, context: &Value) -> Result<McpAuth, BoxError> {
    let builder = McpAuth::builder(url)
        .client_name("tower-bearer conformance client")
        .user_agent(UserAgent::Headless)
        .client_id_metadata_document(METADATA_DOCUMENT)
        .login_timeout(Duration::from_secs(20));
    let builder = if let Some(pem) = field(context, "private_key_pem") {
        let alg = match field(context, "signing_algorithm").unwrap_or("ES256") {
            "ES256" => Algorithm::ES256,
            "ES384" => Algorithm::ES384,
            "RS256" => Algorithm::RS256,
            "PS256" => Algorithm::PS256,
            "EdDSA" => Algorithm::EdDSA,
            other => return Err(format!("signing_algorithm {other:?} is not supported").into()),
        };
        builder
            .client(ClientInformation::new(required(context, "client_id")?))
            .private_key(AssertionKey::from_pem(alg, pem.as_bytes())?)
            .grant(Grant::ClientCredentials)
    } else if let Some(id_token) = field(context, "idp_id_token") {
        let identity_provider = TokenEndpoint::new(required(context, "idp_token_endpoint")?)?
            .client_id(required(context, "idp_client_id")?);
        let subject = ExchangeToken::fixed(id_token, token_type::ID_TOKEN);
        builder
            .client(
                ClientInformation::new(required(context, "client_id")?)
                    .secret(required(context, "client_secret")?),
            )
            .grant(Grant::cross_app(CrossApp::new(identity_provider, subject)))
    } else if let Some(secret) = field(context, "client_secret") {
        let client = ClientInformation::new(required(context, "client_id")?).secret(secret);
        let builder = builder.client(client);
        if scenario == "auth/client-credentials-basic" {
            builder.grant(Grant::ClientCredentials)
        } else {
            builder
        }
    } else {
        builder
    };
    Ok(builder.build()?)
}

/// Arguments for a tool from its input schema: a number, a string or `true` for each
/// property of those types.
fn arguments(schema: &JsonObject) -> JsonObject {
    let mut args = JsonObject::new();
    let Some(Value::Object(properties)) = schema.get("properties") else {
        return args;
    };
    for (i, (name, property)) in properties.iter().enumerate() {
        let value = match property.get("type").and_then(Value::as_str) {
            Some("number") | Some("integer") => json!(i + 2),
            Some("string") => json!("conformance"),
            Some("boolean") => json!(true),
            _ => continue,
        };
        args.insert(name.clone(), value);
    }
    args
}

async fn run() -> Result<(), BoxError> {
    let url = std::env::args()
        .next_back()
        .filter(|a| a.starts_with("http"))
        .ok_or("usage: mcp_conformance_client <server-url>")?;
    let scenario = std::env::var("MCP_CONFORMANCE_SCENARIO").unwrap_or_default();
    let context: Value = match std::env::var("MCP_CONFORMANCE_CONTEXT") {
        Ok(json) => serde_json::from_str(&json)
            .map_err(|e| format!("MCP_CONFORMANCE_CONTEXT is not JSON: {e}"))?,
        Err(_) => json!({}),
    };
    let auth = authorization(&url, &scenario, &context)?;
    let client = AuthorizedHttpClient::new(reqwest::Client::new(), auth);
    let transport = StreamableHttpClientTransport::with_client(
        client,
        StreamableHttpClientTransportConfig::with_uri(url.as_str()),
    );
    let config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("tower-bearer-conformance-client", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::V_2025_11_25);
    let service = config.serve(transport).await?;
    let tools = service.list_all_tools().await?;
    println!("{} tool(s)", tools.len());
    for tool in tools {
        let params = CallToolRequestParams::new(tool.name.clone())
            .with_arguments(arguments(&tool.input_schema));
        let result = service.call_tool(params).await?;
        println!("{}: {}", tool.name, serde_json::to_string(&result.content)?);
    }
    service.cancel().await?;
    Ok(())
}
