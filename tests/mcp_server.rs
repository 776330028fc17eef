//! An MCP server on rmcp's Streamable HTTP service behind `RequireBearerLayer` and
//! `ToolScopeLayer` (feature `mcp`), as `examples/mcp_server.rs` builds it, on a real
//! listener on 127.0.0.1, with real JWTs (HS256) checked for their audience.
//!
//! What MCP's authorization spec asks of a server: the `401` names the resource
//! metadata and the scope; the metadata document describes this server; a token for
//! another resource is refused; a tool whose scope the token lacks gets `403`
//! `insufficient_scope` naming it; and bodies the layer cannot judge are refused
//! with a clear error, never reaching the service.
#![cfg(all(feature = "jwks", feature = "mcp"))]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use jsonwebtoken::{EncodingKey, Header};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ServerHandler};
use serde_json::{json, Value};
use tower::Layer;
use tower_bearer::mcp::server::ToolScopeLayer;
use tower_bearer::server::{Claims, JwtValidator, ProtectedResourceMetadata, RequireBearerLayer};

const SECRET: &[u8] = b"a-secret-of-at-least-32-bytes!!!";
const ISSUER: &str = "https://idp.example.test";

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(Clone)]
struct Tools {
    calls: Arc<AtomicU64>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Answers the text it is given.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        text
    }

    #[tool(description = "How many calls ran.")]
    fn server_stats(&self) -> String {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        format!("{calls} tool call(s) answered")
    }

    #[tool(description = "A tool the scope layer was not told about.")]
    fn unlisted(&self) -> String {
        self.calls.fetch_add(1, Ordering::SeqCst);
        "unlisted ran".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mcp-server-test", "1"))
    }
}

/// A running MCP server.
struct Server {
    /// The MCP endpoint: the resource, the tokens' audience.
    url: String,
    metadata_url: String,
    /// Tool calls rmcp ran: a refused call never adds one.
    calls: Arc<AtomicU64>,
    http: reqwest::Client,
}

/// Starts the server with `scopes` around rmcp (the example's, unless a test needs
/// a smaller limit).
async fn start(scopes: ToolScopeLayer<Claims>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let url = format!("http://{authority}/mcp");
    let validator = JwtValidator::<Claims>::hmac(SECRET)
        .issuer(ISSUER)
        .audience(&url);
    let metadata = ProtectedResourceMetadata::new(&url)
        .authorization_servers([ISSUER])
        .scopes_supported(["read", "admin"])
        .bearer_methods_supported(["header"]);
    let metadata_url = metadata.url().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let tools = {
        let calls = Arc::clone(&calls);
        move || {
            Ok(Tools {
                calls: Arc::clone(&calls),
                tool_router: Tools::tool_router(),
            })
        }
    };
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts([authority]);
    let mcp = StreamableHttpService::new(tools, Arc::new(NeverSessionManager::default()), config);
    let app = Router::new()
        .route_service("/mcp", scopes.layer(mcp))
        .layer(
            RequireBearerLayer::new(validator)
                .realm("mcp")
                .resource_metadata(&metadata_url)
                .scope("read"),
        )
        .route_service(&metadata.path().unwrap(), metadata.service().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Server {
        url,
        metadata_url,
        calls,
        http: reqwest::Client::new(),
    }
}

/// The example's scopes: `echo` needs `read`, `server_stats` and every other tool
/// `admin`.
fn example_scopes() -> ToolScopeLayer<Claims> {
    ToolScopeLayer::new()
        .tool("echo", ["read"])
        .tool("server_stats", ["admin"])
        .other_tools(["admin"])
}

/// A token for `audience` with `scope`, valid for five minutes.
fn token(audience: &str, scope: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "iss": ISSUER, "sub": "alice", "aud": audience, "scope": scope,
        "iat": now, "exp": now + 300,
    });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// What a request got back.
struct Answer {
    status: u16,
    challenge: String,
    content_type: String,
    body: Value,
}

impl Server {
    fn post(&self, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req
    }

    /// Sends one JSON-RPC request.
    async fn rpc(&self, token: Option<&str>, method: &str, params: Value) -> Answer {
        let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
        answer(
            self.post(token)
                .body(body.to_string())
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    async fn call_tool(&self, token: &str, tool: &str) -> Answer {
        let params = json!({ "name": tool, "arguments": { "text": "hi" } });
        self.rpc(Some(token), "tools/call", params).await
    }

    /// Sends `body` as it is.
    async fn raw(&self, token: &str, body: impl Into<reqwest::Body>) -> Answer {
        answer(self.post(Some(token)).body(body).send().await.unwrap()).await
    }
}

async fn answer(res: reqwest::Response) -> Answer {
    let header = |name| {
        res.headers()
            .get(name)
            .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (challenge, content_type) = (header("www-authenticate"), header("content-type"));
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        challenge,
        content_type,
        body,
    }
}

fn initialize() -> Value {
    json!({
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": { "name": "test", "version": "1" },
    })
}

#[tokio::test]
async fn the_401_names_the_metadata_and_the_scope_and_the_document_describes_the_server() {
    let server = start(example_scopes()).await;
    let res = server.rpc(None, "initialize", initialize()).await;
    assert_eq!(res.status, 401);
    assert_eq!(
        res.challenge,
        format!(
            r#"Bearer realm="mcp", scope="read", resource_metadata="{}""#,
            server.metadata_url
        )
    );
    // The URL the challenge names, RFC 9728's path-suffixed one.
    let base = server.url.strip_suffix("/mcp").unwrap();
    assert_eq!(
        server.metadata_url,
        format!("{base}/.well-known/oauth-protected-resource/mcp")
    );
    let doc = answer(server.http.get(&server.metadata_url).send().await.unwrap()).await;
    assert_eq!(doc.status, 200);
    assert!(doc.content_type.starts_with("application/json"));
    let doc = doc.body;
    assert_eq!(doc["resource"], server.url.as_str());
    assert_eq!(doc["authorization_servers"], json!([ISSUER]));
    assert_eq!(doc["scopes_supported"], json!(["read", "admin"]));
    assert_eq!(doc["bearer_methods_supported"], json!(["header"]));
    // The crate's own client reads the challenge back to the same document.
    let headers = {
        let mut h = http::HeaderMap::new();
        h.insert("www-authenticate", res.challenge.parse().unwrap());
        h
    };
    assert_eq!(
        tower_bearer::client::resource_metadata_url(&headers).as_deref(),
        Some(server.metadata_url.as_str())
    );
    // With a good token, rmcp answers.
    let good = token(&server.url, "read");
    let res = server.rpc(Some(&good), "initialize", initialize()).await;
    assert_eq!(res.status, 200, "{}", res.body);
    assert!(res.content_type.starts_with("application/json"));
    assert_eq!(res.body["result"]["serverInfo"]["name"], "mcp-server-test");
}

#[tokio::test]
async fn a_token_for_another_resource_is_refused() {
    let server = start(example_scopes()).await;
    for audience in [
        "https://api.example.test",
        // The same server under another name is another resource.
        &server.url.replace("127.0.0.1", "localhost"),
        // Not the metadata's resource either: a path of the server.
        &format!("{}/other", server.url),
    ] {
        let other = token(audience, "read admin");
        let res = server.rpc(Some(&other), "tools/list", json!({})).await;
        assert_eq!(res.status, 401, "{audience}");
        assert!(
            res.challenge
                .starts_with(r#"Bearer realm="mcp", error="invalid_token""#),
            "{}",
            res.challenge
        );
        assert!(
            res.challenge.ends_with(&format!(
                r#"scope="read", resource_metadata="{}""#,
                server.metadata_url
            )),
            "{}",
            res.challenge
        );
    }
    let res = server
        .call_tool(&token("https://api.example.test", "read admin"), "echo")
        .await;
    assert_eq!(res.status, 401);
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);
    // The right audience passes.
    let res = server
        .rpc(Some(&token(&server.url, "read")), "tools/list", json!({}))
        .await;
    assert_eq!(res.status, 200);
    let names: Vec<&str> = res.body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["echo", "server_stats", "unlisted"]);
}

#[tokio::test]
async fn each_tool_needs_its_scope_and_the_403_names_it() {
    let server = start(example_scopes()).await;
    let read = token(&server.url, "read");
    let res = server.call_tool(&read, "echo").await;
    assert_eq!(res.status, 200);
    assert_eq!(res.body["result"]["content"][0]["text"], "hi");

    for tool in ["server_stats", "unlisted"] {
        let res = server.call_tool(&read, tool).await;
        assert_eq!(res.status, 403, "{tool}");
        // What the tool needs, with what the token holds: the client asks for both.
        assert_eq!(
            res.challenge,
            format!(
                r#"Bearer realm="mcp", error="insufficient_scope", error_description="the token lacks a required scope", scope="read admin", resource_metadata="{}""#,
                server.metadata_url
            ),
            "{tool}"
        );
    }
    assert_eq!(
        server.calls.load(Ordering::SeqCst),
        1,
        "refused calls never ran"
    );

    // An admin token without read: echo names read (and keeps admin).
    let admin = token(&server.url, "admin");
    let res = server.call_tool(&admin, "echo").await;
    assert_eq!(res.status, 403);
    assert!(
        res.challenge.contains(r#"scope="read admin""#),
        "{}",
        res.challenge
    );
    let res = server.call_tool(&admin, "server_stats").await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.body["result"]["content"][0]["text"],
        "2 tool call(s) answered"
    );

    // A batch is judged call by call: one refused call refuses the request.
    let batch = json!([
        { "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": { "name": "echo", "arguments": { "text": "a" } } },
        { "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": { "name": "server_stats" } },
    ]);
    let res = server.raw(&read, batch.to_string()).await;
    assert_eq!(res.status, 403);
    assert_eq!(server.calls.load(Ordering::SeqCst), 2);

    // A name escaped is the name rmcp runs: judged as such.
    let escaped =
        r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"server_st\u0061ts"}}"#;
    let res = server.raw(&read, escaped.to_owned()).await;
    assert_eq!(res.status, 403);
    let res = server.raw(&admin, escaped.to_owned()).await;
    assert_eq!(res.status, 200);
    assert_eq!(
        res.body["result"]["content"][0]["text"],
        "3 tool call(s) answered"
    );

    // Other methods need no more than the bearer layer asked.
    let nothing = token(&server.url, "");
    let res = server.rpc(Some(&nothing), "tools/list", json!({})).await;
    assert_eq!(res.status, 200);
}

#[tokio::test]
async fn junk_bodies_get_a_clear_error_and_never_reach_the_service() {
    let server = start(example_scopes().max_body(64 * 1024)).await;
    let admin = token(&server.url, "read admin");
    let cases: [(&str, u16, i64); 7] = [
        ("", 400, -32700),
        ("{\"jsonrpc\":\"2.0\",", 400, -32700),
        ("\u{0}\u{1}binary", 400, -32700),
        ("42", 400, -32600),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            400,
            -32602,
        ),
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["echo"]}}"#,
            400,
            -32602,
        ),
        // Named twice: which one would the service run?
        (
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"server_stats"}}"#,
            400,
            -32602,
        ),
    ];
    for (body, status, code) in cases {
        let res = server.raw(&admin, body.to_owned()).await;
        assert_eq!(res.status, status, "{body:?}");
        assert_eq!(res.content_type, "application/json", "{body:?}");
        assert_eq!(res.body["jsonrpc"], "2.0");
        assert_eq!(res.body["id"], Value::Null);
        assert_eq!(res.body["error"]["code"], code, "{body:?}: {}", res.body);
        assert!(res.body["error"]["message"].as_str().is_some());
    }

    // Too large, declared or streamed.
    let large = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(100 * 1024)
    );
    let res = server.raw(&admin, large.clone()).await;
    assert_eq!(res.status, 413);
    assert_eq!(res.body["error"]["code"], -32600);
    let chunks = large
        .into_bytes()
        .chunks(8 * 1024)
        .map(|c| Ok::<_, Infallible>(Bytes::copy_from_slice(c)))
        .collect::<Vec<_>>();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let res = server.raw(&admin, streamed).await;
    assert_eq!(res.status, 413);

    // Compressed: it would be judged unread.
    let res = answer(
        server
            .post(Some(&admin))
            .header("content-encoding", "gzip")
            .body("\u{1f}\u{8b}")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 415);
    assert_eq!(res.body["error"]["code"], -32600);
    assert_eq!(server.calls.load(Ordering::SeqCst), 0);

    // Junk without a token is the bearer layer's: 401, the body unread.
    let res = answer(server.post(None).body("junk").send().await.unwrap()).await;
    assert_eq!(res.status, 401);
}

#[tokio::test]
async fn a_body_that_does_not_come_is_given_up_at_the_deadline() {
    let server = start(example_scopes().read_timeout(Duration::from_millis(300))).await;
    let admin = token(&server.url, "read admin");
    let head = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","#);
    // One chunk, then nothing, ever (the connection stays open).
    let stalled = futures_util::stream::iter([Ok::<_, Infallible>(head)])
        .chain(futures_util::stream::pending());
    let started = tokio::time::Instant::now();
    let res = server
        .raw(&admin, reqwest::Body::wrap_stream(stalled))
        .await;
    assert_eq!(res.status, 408);
    assert_eq!(res.body["error"]["code"], -32600);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn other_methods_pass_unread_to_rmcp() {
    let server = start(example_scopes()).await;
    let read = token(&server.url, "read");
    // A stateless server has no stream to GET: rmcp's answer, not the layer's.
    let res = answer(
        server
            .http
            .get(&server.url)
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {read}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 405);
    // And without a token, the bearer layer's.
    let res = answer(server.http.get(&server.url).send().await.unwrap()).await;
    assert_eq!(res.status, 401);
}

use futures_util::StreamExt as _;
