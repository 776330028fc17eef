//! The MCP client's authorization rules that the conformance suite does not pin,
//! against a real MCP server and authorization server on 127.0.0.1 (one axum app
//! playing both, configured per test): the discovery order, a resource mismatch
//! refused before any authorization, a dynamic registration kept across a restart,
//! PKCE S256 required, one authorization for two refusals at once, the step-up
//! limit (through rmcp's client), and no secret in errors or `Debug`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tower_bearer::client::{ClientInformation, FileRegistrations, HttpClient};
use tower_bearer::mcp::{discover, McpAuth, UserAgent};
use tower_bearer::Error;

/// How the test server behaves.
#[derive(Clone)]
struct Setup {
    /// Where the resource metadata is served (`None`: nowhere).
    prm_path: Option<String>,
    /// The `resource` the metadata names (default: the server's URL).
    prm_resource: Option<String>,
    /// The authorization server's issuer path (`""` or `/tenant`).
    issuer_path: String,
    /// Where the authorization server's metadata is served.
    as_metadata_path: String,
    /// Whether the metadata lists PKCE S256.
    s256: bool,
    /// Whether the challenge names the metadata URL.
    challenge_names_metadata: bool,
    /// Every authorized MCP call answers `403 insufficient_scope` (scope `admin`).
    always_forbidden: bool,
    /// The token endpoint refuses, quoting the client's secret back.
    token_echoes_secret: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            prm_path: Some("/.well-known/oauth-protected-resource/mcp".into()),
            prm_resource: None,
            issuer_path: String::new(),
            as_metadata_path: "/.well-known/oauth-authorization-server".into(),
            s256: true,
            challenge_names_metadata: true,
            always_forbidden: false,
            token_echoes_secret: false,
        }
    }
}

#[derive(Default)]
struct World {
    setup: Mutex<Option<Setup>>,
    base: Mutex<String>,
    gets: Mutex<Vec<String>>,
    authorizations: AtomicUsize,
    registrations: AtomicUsize,
    token_requests: AtomicUsize,
    forbidden: AtomicUsize,
    /// code → scope asked for, until the code is used.
    codes: Mutex<HashMap<String, String>>,
    /// code → scope asked for, kept.
    asked: Mutex<HashMap<String, String>>,
    /// token → scope granted.
    tokens: Mutex<HashMap<String, String>>,
    /// refresh token → scope granted.
    refresh_tokens: Mutex<HashMap<String, String>>,
    refreshes: AtomicUsize,
    /// The client ids the token endpoint saw.
    token_clients: Mutex<Vec<String>>,
}

impl World {
    fn setup(&self) -> Setup {
        self.setup.lock().unwrap().clone().unwrap()
    }
    fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }
    fn url(&self) -> String {
        format!("{}/mcp", self.base())
    }
    fn gets(&self) -> Vec<String> {
        self.gets.lock().unwrap().clone()
    }
}

async fn start(setup: Setup) -> Arc<World> {
    let world = Arc::new(World::default());
    *world.setup.lock().unwrap() = Some(setup);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    *world.base.lock().unwrap() =
        format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&world));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    world
}

fn json_answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn form(body: &[u8]) -> HashMap<String, String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .unwrap()
        .into_iter()
        .collect()
}

async fn handle(State(world): State<Arc<World>>, req: Request) -> Response {
    let setup = world.setup();
    let base = world.base();
    let issuer = format!("{base}{}", setup.issuer_path);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers: HeaderMap = req.headers().clone();
    let body: Bytes = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap();
    if method == Method::GET {
        world.gets.lock().unwrap().push(path.clone());
    }
    let authorize = format!("{}/authorize", setup.issuer_path);
    let token = format!("{}/token", setup.issuer_path);
    let register = format!("{}/register", setup.issuer_path);
    match (method, path.as_str()) {
        (Method::GET, p) if Some(p) == setup.prm_path.as_deref() => json_answer(
            StatusCode::OK,
            json!({
                "resource": setup.prm_resource.clone().unwrap_or_else(|| world.url()),
                "authorization_servers": [issuer],
                "scopes_supported": ["mcp:basic"],
            }),
        ),
        (Method::GET, p) if p == setup.as_metadata_path => {
            let mut doc = json!({
                "issuer": issuer,
                "authorization_endpoint": format!("{issuer}/authorize"),
                "token_endpoint": format!("{issuer}/token"),
                "registration_endpoint": format!("{issuer}/register"),
                "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
                "response_types_supported": ["code"],
            });
            if setup.s256 {
                doc["code_challenge_methods_supported"] = json!(["S256"]);
            }
            json_answer(StatusCode::OK, doc)
        }
        (Method::GET, p) if p == authorize => {
            let n = world.authorizations.fetch_add(1, Ordering::SeqCst);
            let q = form(query.as_bytes());
            let code = format!("code-{n}");
            world
                .codes
                .lock()
                .unwrap()
                .insert(code.clone(), q.get("scope").cloned().unwrap_or_default());
            world
                .asked
                .lock()
                .unwrap()
                .insert(code.clone(), q.get("scope").cloned().unwrap_or_default());
            let location = format!(
                "{}?{}",
                q["redirect_uri"],
                serde_urlencoded::to_string([("code", code.as_str()), ("state", &q["state"])])
                    .unwrap()
            );
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        (Method::POST, p) if p == register => {
            let n = world.registrations.fetch_add(1, Ordering::SeqCst);
            let asked: Value = serde_json::from_slice(&body).unwrap();
            json_answer(
                StatusCode::CREATED,
                json!({
                    "client_id": format!("dynamic-{n}"),
                    "client_secret": format!("registered-secret-{n}"),
                    "token_endpoint_auth_method": "client_secret_post",
                    "redirect_uris": asked["redirect_uris"],
                }),
            )
        }
        (Method::POST, p) if p == token => {
            let n = world.token_requests.fetch_add(1, Ordering::SeqCst);
            let f = form(&body);
            world
                .token_clients
                .lock()
                .unwrap()
                .push(f.get("client_id").cloned().unwrap_or_default());
            if setup.token_echoes_secret {
                let echoed = format!(
                    "secret {} header {}",
                    f.get("client_secret").cloned().unwrap_or_default(),
                    headers
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                );
                return json_answer(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "invalid_client", "error_description": echoed}),
                );
            }
            let scope = if f.get("grant_type").map(String::as_str) == Some("refresh_token") {
                world.refreshes.fetch_add(1, Ordering::SeqCst);
                world
                    .refresh_tokens
                    .lock()
                    .unwrap()
                    .get(&f["refresh_token"])
                    .cloned()
            } else {
                world
                    .codes
                    .lock()
                    .unwrap()
                    .remove(f.get("code").map(String::as_str).unwrap_or_default())
            };
            let Some(scope) = scope else {
                return json_answer(StatusCode::BAD_REQUEST, json!({"error": "invalid_grant"}));
            };
            let access = format!("access-{n}");
            let refresh = format!("refresh-{n}");
            world
                .tokens
                .lock()
                .unwrap()
                .insert(access.clone(), scope.clone());
            world
                .refresh_tokens
                .lock()
                .unwrap()
                .insert(refresh.clone(), scope);
            json_answer(
                StatusCode::OK,
                json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh}),
            )
        }
        (Method::POST, "/mcp") => mcp(&world, &setup, &headers, &body),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A minimal MCP server: `initialize` and notifications without a token, anything
/// else with one.
fn mcp(world: &World, setup: &Setup, headers: &HeaderMap, body: &[u8]) -> Response {
    let message: Value = serde_json::from_slice(body).unwrap();
    let method = message["method"].as_str().unwrap_or_default();
    let id = message["id"].clone();
    if method == "initialize" {
        return json_answer(
            StatusCode::OK,
            json!({"jsonrpc": "2.0", "id": id, "result": {
                "protocolVersion": "2025-11-25",
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "test", "version": "1"},
            }}),
        );
    }
    if method.starts_with("notifications/") {
        return StatusCode::ACCEPTED.into_response();
    }
    let metadata = format!("{}/.well-known/oauth-protected-resource/mcp", world.base());
    let named = if setup.challenge_names_metadata {
        format!(", resource_metadata=\"{metadata}\"")
    } else {
        String::new()
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let known = token.is_some_and(|t| world.tokens.lock().unwrap().contains_key(t));
    if !known {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!("Bearer scope=\"mcp:basic\"{named}"),
            )],
        )
            .into_response();
    }
    if setup.always_forbidden {
        world.forbidden.fetch_add(1, Ordering::SeqCst);
        return (
            StatusCode::FORBIDDEN,
            [(
                header::WWW_AUTHENTICATE,
                format!("Bearer error=\"insufficient_scope\", scope=\"admin\"{named}"),
            )],
        )
            .into_response();
    }
    json_answer(
        StatusCode::OK,
        json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}}),
    )
}

fn headless(world: &World) -> tower_bearer::mcp::McpAuthBuilder {
    McpAuth::builder(world.url()).user_agent(UserAgent::Headless)
}

/// The challenge of the test server's `401`.
fn challenge(world: &World) -> String {
    format!(
        "Bearer scope=\"mcp:basic\", resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        world.base()
    )
}

#[tokio::test]
async fn discovery_tries_the_places_in_the_specs_order() {
    // Metadata at the root only, the authorization server's under its path, at the
    // last of the three places the spec lists for an issuer with a path.
    let world = start(Setup {
        prm_path: Some("/.well-known/oauth-protected-resource".into()),
        prm_resource: None,
        issuer_path: "/tenant".into(),
        as_metadata_path: "/tenant/.well-known/openid-configuration".into(),
        challenge_names_metadata: false,
        ..Setup::default()
    })
    .await;
    // The root document names the server itself here; one naming the origin is
    // covered too (below).
    let found = discover(&world.url(), Some("Bearer"), &HttpClient::new())
        .await
        .unwrap();
    assert_eq!(
        world.gets(),
        [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-authorization-server/tenant",
            "/.well-known/openid-configuration/tenant",
            "/tenant/.well-known/openid-configuration",
        ]
    );
    assert_eq!(found.provider.issuer, format!("{}/tenant", world.base()));
    assert_eq!(found.resource, world.url());

    // A document at the root naming the origin covers the server below it.
    let world = start(Setup {
        prm_path: Some("/.well-known/oauth-protected-resource".into()),
        challenge_names_metadata: false,
        ..Setup::default()
    })
    .await;
    *world.setup.lock().unwrap() = Some(Setup {
        prm_path: Some("/.well-known/oauth-protected-resource".into()),
        prm_resource: Some(world.base()),
        challenge_names_metadata: false,
        ..Setup::default()
    });
    let found = discover(&world.url(), None, &HttpClient::new())
        .await
        .unwrap();
    assert_eq!(found.resource, world.base());
    assert_eq!(
        world.gets(),
        [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-authorization-server",
        ]
    );
}

#[tokio::test]
async fn the_challenges_metadata_url_comes_first_and_no_well_known_url_is_tried() {
    let world = start(Setup::default()).await;
    discover(&world.url(), Some(&challenge(&world)), &HttpClient::new())
        .await
        .unwrap();
    assert_eq!(
        world.gets(),
        [
            "/.well-known/oauth-protected-resource/mcp",
            "/.well-known/oauth-authorization-server",
        ]
    );
}

#[tokio::test]
async fn metadata_for_another_resource_is_refused_before_any_authorization() {
    for other in [
        "https://evil.example.com/mcp".to_owned(),
        // Same origin, another path; and a path that only starts like the server's.
        "PLACEHOLDER/other".to_owned(),
        "PLACEHOLDER/mcp-evil".to_owned(),
        "PLACEHOLDER/mcp/deeper".to_owned(),
    ] {
        let world = start(Setup::default()).await;
        let other = other.replace("PLACEHOLDER", &world.base());
        *world.setup.lock().unwrap() = Some(Setup {
            prm_resource: Some(other.clone()),
            ..Setup::default()
        });
        let auth = headless(&world).build().unwrap();
        let sent = auth.credential().await.unwrap();
        assert!(sent.token().is_none());
        let err = auth
            .on_unauthorized(&sent, &challenge(&world))
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidResponse(..)) && err.to_string().contains("refused"),
            "{other}: {err}"
        );
        // Nothing went to the authorization server.
        assert_eq!(world.authorizations.load(Ordering::SeqCst), 0, "{other}");
        assert_eq!(world.registrations.load(Ordering::SeqCst), 0, "{other}");
        assert!(
            !world
                .gets()
                .iter()
                .any(|p| p.contains("authorization-server")),
            "{other}: {:?}",
            world.gets()
        );
        assert!(auth.credential().await.unwrap().token().is_none());
    }
}

#[tokio::test]
async fn an_authorization_server_without_pkce_s256_is_refused() {
    let world = start(Setup {
        s256: false,
        ..Setup::default()
    })
    .await;
    let auth = headless(&world).build().unwrap();
    let sent = auth.credential().await.unwrap();
    let err = auth
        .on_unauthorized(&sent, &challenge(&world))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("S256"), "{err}");
    assert_eq!(world.authorizations.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_dynamic_registration_is_kept_across_a_restart() {
    let world = start(Setup::default()).await;
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-mcp-registrations-{}-{}",
        std::process::id(),
        world.base().rsplit(':').next().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("registrations.json");

    for run in 0..2 {
        // A new process each time: nothing shared but the file.
        let auth = headless(&world)
            .registrations(FileRegistrations::new(&file))
            .build()
            .unwrap();
        let sent = auth.credential().await.unwrap();
        auth.on_unauthorized(&sent, &challenge(&world))
            .await
            .unwrap();
        let token = auth.credential().await.unwrap();
        assert_eq!(token.token(), Some(format!("access-{run}").as_str()));
        assert_eq!(world.registrations.load(Ordering::SeqCst), 1, "run {run}");
    }
    assert_eq!(world.authorizations.load(Ordering::SeqCst), 2);
    // Both logins presented the one registration.
    assert_eq!(
        *world.token_clients.lock().unwrap(),
        ["dynamic-0", "dynamic-0"]
    );
    let kept = std::fs::read_to_string(&file).unwrap();
    assert!(kept.contains("dynamic-0") && kept.contains(&world.base()));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the registrations file is readable by others"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn two_refusals_at_once_make_one_authorization() {
    let world = start(Setup::default()).await;
    let auth = headless(&world).build().unwrap();
    let sent = auth.credential().await.unwrap();
    let c = challenge(&world);
    let (a, b) = tokio::join!(
        auth.on_unauthorized(&sent, &c),
        auth.on_unauthorized(&sent, &c)
    );
    a.unwrap();
    b.unwrap();
    assert_eq!(world.authorizations.load(Ordering::SeqCst), 1);
    assert_eq!(world.registrations.load(Ordering::SeqCst), 1);
    // The scope came from the challenge; the token is the cache's from now on.
    assert_eq!(
        world
            .asked
            .lock()
            .unwrap()
            .get("code-0")
            .map(String::as_str),
        Some("mcp:basic")
    );
    let token = auth.credential().await.unwrap();
    assert_eq!(token.token(), Some("access-0"));
}

#[tokio::test]
async fn no_secret_in_errors_or_debug() {
    let secret = "pre-registered-s3cret-Zq9";
    let world = start(Setup {
        token_echoes_secret: true,
        ..Setup::default()
    })
    .await;
    let client = ClientInformation::new("pre-registered")
        .secret(secret)
        .auth_method("client_secret_post");
    assert!(!format!("{client:?}").contains(secret));
    let auth = headless(&world).client(client).build().unwrap();
    assert!(!format!("{auth:?}").contains(secret));
    let sent = auth.credential().await.unwrap();
    let err = auth
        .on_unauthorized(&sent, &challenge(&world))
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(!shown.contains(secret), "{shown}");

    // A token is not shown either.
    let world = start(Setup::default()).await;
    let auth = headless(&world).build().unwrap();
    let sent = auth.credential().await.unwrap();
    auth.on_unauthorized(&sent, &challenge(&world))
        .await
        .unwrap();
    let sent = auth.credential().await.unwrap();
    assert_eq!(sent.token(), Some("access-0"));
    assert!(!format!("{sent:?} {auth:?}").contains("access-0"));
}

#[cfg(feature = "rmcp")]
#[tokio::test]
async fn step_ups_stop_at_the_limit() {
    use rmcp::model::{ClientCapabilities, ClientConfig, Implementation, ProtocolVersion};
    use rmcp::transport::streamable_http_client::{
        StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
    };
    use rmcp::ServiceExt as _;
    use tower_bearer::mcp::AuthorizedHttpClient;

    for limit in [0, 1, 3] {
        let world = start(Setup {
            always_forbidden: true,
            ..Setup::default()
        })
        .await;
        let auth = headless(&world).max_step_ups(limit).build().unwrap();
        let transport = StreamableHttpClientTransport::with_client(
            AuthorizedHttpClient::new(reqwest::Client::new(), auth),
            StreamableHttpClientTransportConfig::with_uri(world.url()),
        );
        let service = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("test", "1"),
        )
        .with_protocol_version(ProtocolVersion::V_2025_11_25)
        .serve(transport)
        .await
        .unwrap();
        let err = service.list_all_tools().await.unwrap_err();
        assert!(err.to_string().contains("nsufficient"), "{err}");
        // The first authorization (on the 401), then one per step-up; a second
        // step-up for the scopes asked for already, right after the first, waits
        // for the refusal backoff (the error says so): 3 at most here.
        let made = 1 + limit.min(2);
        assert_eq!(world.authorizations.load(Ordering::SeqCst), made);
        assert_eq!(world.forbidden.load(Ordering::SeqCst), made);
        // The step-ups asked for the union of the scopes.
        if limit > 0 {
            let codes = world.asked.lock().unwrap();
            assert_eq!(codes["code-0"], "mcp:basic");
            assert_eq!(codes["code-1"], "mcp:basic admin");
        }
        let _ = service.cancel().await;
    }
}

#[tokio::test]
async fn a_refused_token_is_refreshed_before_anyone_is_asked_again() {
    let world = start(Setup::default()).await;
    let auth = headless(&world).build().unwrap();
    let sent = auth.credential().await.unwrap();
    auth.on_unauthorized(&sent, &challenge(&world))
        .await
        .unwrap();
    let sent = auth.credential().await.unwrap();
    assert_eq!(sent.token(), Some("access-0"));
    // The server forgets the token (revoked): its 401 leads to the refresh token.
    world.tokens.lock().unwrap().clear();
    auth.on_unauthorized(&sent, &challenge(&world))
        .await
        .unwrap();
    assert_eq!(auth.credential().await.unwrap().token(), Some("access-1"));
    assert_eq!(world.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(world.authorizations.load(Ordering::SeqCst), 1);
    // A refresh token refused too, later than the refusal backoff's first step
    // (a second refusal right away waits: see mcp_client_attack's storm test): a new
    // login, and discovery is not repeated.
    tokio::time::pause();
    tokio::time::advance(std::time::Duration::from_secs(3)).await;
    tokio::time::resume();
    let gets = world.gets().len();
    world.tokens.lock().unwrap().clear();
    world.refresh_tokens.lock().unwrap().clear();
    let sent = auth.credential().await.unwrap();
    auth.on_unauthorized(&sent, &challenge(&world))
        .await
        .unwrap();
    let fresh = auth.credential().await.unwrap();
    assert!(
        fresh
            .token()
            .is_some_and(|t| t != "access-1" && t.starts_with("access-")),
        "{:?}",
        fresh.token()
    );
    assert_eq!(world.authorizations.load(Ordering::SeqCst), 2);
    assert_eq!(world.gets().len(), gets + 1, "{:?}", world.gets());
}
