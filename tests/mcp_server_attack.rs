//! An attacker's review of the MCP server side (issue 31): `ToolScopeLayer` in front
//! of rmcp's Streamable HTTP service behind `RequireBearerLayer`, and
//! `examples/mcp_server.rs` itself, on real listeners on 127.0.0.1 with real JWTs.
//!
//! Each case tries to run a tool the token has no scope for, to spend the server's
//! budget with junk, or to get a token accepted that was not issued for this
//! server. The tools count their runs: a refused call never adds one, whatever the
//! answer's status.
#![cfg(all(feature = "jwks", feature = "mcp"))]

mod common;

use std::convert::Infallible;
use std::process::Stdio;
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
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::Layer;
use tower_bearer::mcp::server::ToolScopeLayer;
use tower_bearer::server::{Claims, JwtValidator, ProtectedResourceMetadata, RequireBearerLayer};

const SECRET: &[u8] = b"an-attack-secret-of-32-bytes!!!!";
const ISSUER: &str = "https://idp.attack.test";

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

/// `echo` (scope `read`) and `server_stats` (scope `admin`); only the forbidden
/// tool's runs are counted.
#[derive(Clone)]
struct Tools {
    forbidden_runs: Arc<AtomicU64>,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl Tools {
    #[tool(description = "Answers the text it is given.")]
    fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    #[tool(description = "Needs admin.")]
    fn server_stats(&self) -> String {
        self.forbidden_runs.fetch_add(1, Ordering::SeqCst);
        "stats".to_owned()
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mcp-attack-test", "1"))
    }
}

/// A running server, built as `examples/mcp_server.rs` builds it (HS256 tokens).
struct Server {
    url: String,
    metadata_url: String,
    forbidden_runs: Arc<AtomicU64>,
    http: reqwest::Client,
}

async fn start(scopes: ToolScopeLayer<Claims>) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let url = format!("http://{authority}/mcp");
    let validator = JwtValidator::<Claims>::hmac(SECRET)
        .issuer(ISSUER)
        .audience(&url);
    let metadata = ProtectedResourceMetadata::new(&url)
        .authorization_servers([ISSUER])
        .scopes_supported(["read", "admin"]);
    let metadata_url = metadata.url().unwrap();
    let forbidden_runs = Arc::new(AtomicU64::new(0));
    let tools = {
        let runs = Arc::clone(&forbidden_runs);
        move || {
            Ok(Tools {
                forbidden_runs: Arc::clone(&runs),
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
        forbidden_runs,
        http: reqwest::Client::new(),
    }
}

fn example_scopes() -> ToolScopeLayer<Claims> {
    ToolScopeLayer::new()
        .tool("echo", ["read"])
        .tool("server_stats", ["admin"])
        .other_tools(["admin"])
}

/// An HS256 token with these claims, plus `iss`, `sub` and five minutes of life.
fn hs256(mut claims: Value) -> String {
    let now = common::server::now_plus(0);
    claims["iss"] = json!(ISSUER);
    claims["sub"] = json!("mallory");
    claims["iat"] = json!(now);
    claims["exp"] = json!(now + 300);
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn token(audience: &str, scope: &str) -> String {
    hs256(json!({ "aud": audience, "scope": scope }))
}

struct Answer {
    status: u16,
    challenge: String,
    body: Value,
    text: String,
}

async fn answer(res: reqwest::Response) -> Answer {
    let challenge = res
        .headers()
        .get_all("www-authenticate")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join(" | ");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    Answer {
        status,
        challenge,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

impl Server {
    fn request(&self, method: reqwest::Method, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, &self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {token}"))
    }

    async fn raw(&self, token: &str, body: impl Into<reqwest::Body>) -> Answer {
        let req = self.request(reqwest::Method::POST, token).body(body);
        answer(req.send().await.unwrap()).await
    }

    fn runs(&self) -> u64 {
        self.forbidden_runs.load(Ordering::SeqCst)
    }
}

/// A `tools/call` of `server_stats`, the `admin` tool.
const FORBIDDEN: &str =
    r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"server_stats"}}"#;

/// The tool name, the method and the keys spelled every way two JSON readers could
/// read differently: whatever the layer lets through, rmcp must not run
/// `server_stats` for a `read` token.
#[tokio::test]
async fn no_spelling_of_a_forbidden_call_runs_it() {
    let server = start(example_scopes()).await;
    let read = token(&server.url, "read");
    let deep = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"server_stats","arguments":{{"a":{}{}}}}}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let cases: Vec<(&str, String)> = vec![
        ("as is", FORBIDDEN.to_owned()),
        (
            "escaped name",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"server\u005fstats"}}"#.into(),
        ),
        (
            "escaped method",
            r#"{"jsonrpc":"2.0","id":1,"method":"tool\u0073\/call","params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "escaped key name",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"n\u0061me":"server_stats"}}"#.into(),
        ),
        (
            "name twice, the second escaped",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","n\u0061me":"server_stats","arguments":{"text":"x"}}}"#.into(),
        ),
        (
            "method twice, the second escaped",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","m\u0065thod":"tools/call","params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "params twice",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}},"params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "params as an array (serde reads a struct from a sequence)",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[null,"server_stats"]}"#.into(),
        ),
        (
            "notification",
            r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "method in another case",
            r#"{"jsonrpc":"2.0","id":1,"method":"Tools/Call","params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "method with a space",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call ","params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "name with a space",
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"server_stats "}}"#.into(),
        ),
        ("byte order mark", format!("\u{feff}{FORBIDDEN}")),
        ("trailing data", format!("{FORBIDDEN} x")),
        ("a second message after the first", format!("{FORBIDDEN}{FORBIDDEN}")),
        ("comment", format!("/* admin */{FORBIDDEN}")),
        (
            "NaN id",
            r#"{"jsonrpc":"2.0","id":NaN,"method":"tools/call","params":{"name":"server_stats"}}"#.into(),
        ),
        (
            "huge number",
            format!(
                r#"{{"jsonrpc":"2.0","id":1{},"method":"tools/call","params":{{"name":"server_stats"}}}}"#,
                "0".repeat(400)
            ),
        ),
        (
            "form feed first",
            format!("\u{c}{FORBIDDEN}"),
        ),
        (
            "batch of an allowed and a forbidden call",
            format!(
                r#"[{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"x"}}}}}},{FORBIDDEN}]"#
            ),
        ),
        ("batch of one", format!("[{FORBIDDEN}]")),
        ("nested batch", format!("[[{FORBIDDEN}]]")),
        ("deeply nested arguments", deep),
    ];
    for (case, body) in cases {
        let res = server.raw(&read, body).await;
        assert!(
            res.body["result"].is_null(),
            "{case}: {} {}",
            res.status,
            res.text
        );
        assert_eq!(server.runs(), 0, "{case}: the forbidden tool ran");
    }
    // Other media types: judged the same.
    for content_type in ["text/plain", "application/json-seq", "APPLICATION/JSON"] {
        let res = answer(
            server
                .request(reqwest::Method::POST, &read)
                .header("content-type", content_type)
                .body(FORBIDDEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_ne!(res.status, 200, "{content_type}");
    }
    // The server is still here, and still runs what the token allows.
    let echo = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"alive"}}}"#;
    let res = server.raw(&read, echo).await;
    assert_eq!(
        res.body["result"]["content"][0]["text"], "alive",
        "{}",
        res.text
    );
    assert_eq!(server.runs(), 0);
    // And the admin token does run it: the cases above were refused for their scope.
    let res = server
        .raw(&token(&server.url, "read admin"), FORBIDDEN)
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    assert_eq!(server.runs(), 1);
}

/// A tool call in the body of another method, or compressed: never run.
#[tokio::test]
async fn a_call_by_another_method_or_compressed_never_runs() {
    let server = start(example_scopes()).await;
    let read = token(&server.url, "read");
    for method in ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let res = server
            .request(method.clone(), &read)
            .body(FORBIDDEN)
            .send()
            .await
            .unwrap();
        assert_ne!(res.status(), 200, "{method}");
    }
    for encoding in ["gzip", "GZIP", "identity, gzip", "x-gzip", "br", ""] {
        let res = answer(
            server
                .request(reqwest::Method::POST, &read)
                .header("content-encoding", encoding)
                .body(FORBIDDEN)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(res.status, 415, "{encoding:?}");
    }
    // Two headers, the first harmless.
    let res = answer(
        server
            .request(reqwest::Method::POST, &read)
            .headers(two_encodings())
            .body(FORBIDDEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(res.status, 415);
    assert_eq!(server.runs(), 0);
}

/// `Content-Encoding: identity` and `Content-Encoding: gzip`, two fields.
fn two_encodings() -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    for value in ["identity", "gzip"] {
        headers.append(
            "content-encoding",
            reqwest::header::HeaderValue::from_static(value),
        );
    }
    headers
}

/// A body that drips in a byte at a time never ends: the deadline is for the whole
/// body, not for each byte, so a slow client cannot hold the connection longer.
#[tokio::test]
async fn a_dripping_body_is_given_up_at_the_whole_body_deadline() {
    let server = start(example_scopes().read_timeout(Duration::from_millis(300))).await;
    let admin = token(&server.url, "read admin");
    // A byte every 10 ms: 10 000 bytes would take 100 s.
    let drip = futures_util::stream::unfold(0u32, |n| async move {
        if n >= 10_000 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b" ")), n + 1))
    });
    let started = tokio::time::Instant::now();
    let res = server.raw(&admin, reqwest::Body::wrap_stream(drip)).await;
    assert_eq!(res.status, 408, "{}", res.text);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The audience must be this server's canonical URI, exactly (RFC 8707, MCP
/// "Token Audience Binding"): another spelling, a path under it, or another server
/// is refused; a token for several audiences, this one among them, is accepted
/// (RFC 7519 §4.1.3). Refusals name neither the token nor its audience.
#[tokio::test]
async fn only_this_servers_canonical_uri_is_an_audience() {
    let server = start(example_scopes()).await;
    let tools_list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
    let upper = server
        .url
        .replace("http://", "HTTP://")
        .replace("/mcp", "/MCP");
    for aud in [
        json!(format!("{}/", server.url)),
        json!(upper),
        json!(server.url.replace("127.0.0.1", "localhost")),
        json!(format!("{}/tools", server.url)),
        json!(format!("{}?x=1", server.url)),
        json!(server.url.strip_suffix("/mcp").unwrap()),
        json!([format!("{}/", server.url), "https://other.test"]),
        json!([]),
        json!(null),
    ] {
        let t = hs256(json!({ "aud": aud, "scope": "read admin" }));
        let res = server.raw(&t, tools_list).await;
        assert_eq!(res.status, 401, "{aud}");
        assert!(res.challenge.contains(r#"error="invalid_token""#), "{aud}");
        assert!(!res.challenge.contains(&t), "{aud}");
        assert!(!res.challenge.contains("other.test"), "{aud}");
        assert!(!res.text.contains(&t), "{aud}");
    }
    let several = hs256(json!({ "aud": ["https://other.test", &server.url], "scope": "read" }));
    assert_eq!(server.raw(&several, tools_list).await.status, 200);
    // The metadata's resource is what is checked.
    let doc = answer(server.http.get(&server.metadata_url).send().await.unwrap()).await;
    assert_eq!(doc.body["resource"], server.url.as_str());
}
/// A tool's scopes given as one space-separated string (`["read admin"]`, the form
/// of every `scope` value, RFC 6749 §3.3) are the scopes it lists: no token holds
/// a scope with a space in it, so read as one scope the tool could never be
/// called, and its `403` would send clients to ask again and again for what they
/// already hold.
#[tokio::test]
async fn scopes_given_as_one_string_are_the_scopes_it_lists() {
    let server = start(
        ToolScopeLayer::new()
            .tool("server_stats", ["read admin"])
            .other_tools([" admin  "]),
    )
    .await;
    let res = server
        .raw(&token(&server.url, "read admin"), FORBIDDEN)
        .await;
    assert_eq!(res.status, 200, "{} {}", res.challenge, res.text);
    assert_eq!(server.runs(), 1);
    // Lacking one of them: the 403 names each once.
    let res = server.raw(&token(&server.url, "read"), FORBIDDEN).await;
    assert_eq!(res.status, 403);
    assert!(
        res.challenge.contains(r#"scope="read admin""#),
        "{}",
        res.challenge
    );
    let other = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"new_tool"}}"#;
    let res = server.raw(&token(&server.url, "read"), other).await;
    assert_eq!(res.status, 403);
    assert!(
        res.challenge.contains(r#"scope="read admin""#),
        "{}",
        res.challenge
    );
}

/// The example server, run as a user runs it, with an identity provider that
/// publishes its keys (OIDC discovery).
struct Example {
    _child: tokio::process::Child,
    _idp: common::jwks::Idp,
    issuer: String,
    authority: String,
    url: String,
}

async fn example(args: &[&str]) -> Example {
    let idp =
        common::jwks::Idp::start(vec![common::jwks::public_jwk(&common::jwks::rsa1(), "k1")]).await;
    let issuer = idp.issuer.clone();
    let mut child = tokio::process::Command::new(common::bins::example_binary("mcp_server"))
        .args(["--addr", "127.0.0.1:0", "--oidc", &issuer])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let authority = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("MCP server listening on http://") {
                return rest.to_owned();
            }
        }
        panic!("the example exited before it listened");
    })
    .await
    .expect("the example did not listen within 60 s");
    let url = format!("http://{authority}/mcp");
    Example {
        _child: child,
        _idp: idp,
        issuer,
        authority,
        url,
    }
}

impl Example {
    fn token(&self, scope: &str) -> String {
        let claims = json!({
            "iss": self.issuer, "sub": "alice", "aud": self.url, "scope": scope,
            "exp": common::server::now_plus(300),
        });
        jsonwebtoken::encode(&common::jwks::rs256("k1"), &claims, &common::jwks::rsa1()).unwrap()
    }

    async fn initialize(&self, headers: &[(&str, &str)]) -> Answer {
        let body = json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": { "name": "attack", "version": "1" },
            },
        });
        let mut req = reqwest::Client::new()
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {}", self.token("read")));
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        answer(req.body(body.to_string()).send().await.unwrap()).await
    }
}

/// MCP's transport spec: servers MUST validate `Origin` (a browser page of another
/// site must not reach a local server), and should accept only their own `Host`
/// (DNS rebinding). The example does both.
#[tokio::test]
async fn the_example_refuses_other_origins_and_hosts() {
    let server = example(&[]).await;
    // A client that is no browser sends no Origin: served.
    let res = server.initialize(&[]).await;
    assert_eq!(res.status, 200, "{}", res.text);
    let port = server.authority.rsplit(':').next().unwrap();
    for host in [
        format!("evil.example:{port}"),
        format!("localhost:{port}"),
        "127.0.0.1".to_owned(),
    ] {
        let res = server.initialize(&[("host", &host)]).await;
        assert_eq!(res.status, 403, "Host {host}: {}", res.text);
    }
    for origin in ["http://evil.example", "null", "http://localhost"] {
        let res = server.initialize(&[("origin", origin)]).await;
        assert_eq!(res.status, 403, "Origin {origin}: {}", res.text);
    }
    // An origin the operator allowed is served; others still are not.
    let server = example(&["--allow-origin", "http://app.example:8080"]).await;
    let res = server
        .initialize(&[("origin", "http://app.example:8080")])
        .await;
    assert_eq!(res.status, 200, "{}", res.text);
    for origin in ["http://app.example:8081", "https://app.example:8080"] {
        let res = server.initialize(&[("origin", origin)]).await;
        assert_eq!(res.status, 403, "Origin {origin}: {}", res.text);
    }
}
