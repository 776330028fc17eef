//! The MCP client's authorization (feature `mcp`) attacked: a malicious or broken
//! MCP server and authorization server, and a careful user's configurations, each
//! against a real HTTP server on 127.0.0.1 (one axum app playing the MCP server and
//! its authorization server, behaving as each test sets it). One test per finding
//! of the review (notes/review-client.md has the table).

#![cfg(feature = "mcp")]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tower_bearer::client::{
    ClientInformation, ClientMetadata, FileRegistrations, MemoryRegistrations, MemoryStore,
};
use tower_bearer::mcp::{canonical_server_uri, discover, Grant, McpAuth, UserAgent};

/// How the test servers behave; changed by the tests as they go.
#[derive(Clone, Default)]
struct Setup {
    /// The MCP server answers `403 insufficient_scope` naming this scope to a token
    /// that was not granted it.
    required_scope: Option<String>,
    /// The MCP server answers `401` to every token.
    refuse_every_token: bool,
    /// The authorization endpoint redirects with this `state` instead of the one
    /// it was given.
    forged_state: Option<String>,
    /// The authorization endpoint redirects here instead of to the redirect URI.
    authorize_location: Option<String>,
    /// The authorization server promises `iss` in its redirects (RFC 9207)
    /// but sends none.
    promise_iss: bool,
    /// The authorization server's metadata names this issuer instead of its own.
    issuer: Option<String>,
    /// The registration endpoint answers `201` with this body.
    registration_junk: Option<String>,
    /// The authorization endpoint never answers.
    authorize_hangs: bool,
    /// The `resource_metadata` URL of the MCP server's challenges (default: its own).
    challenge_metadata: Option<String>,
    /// The `resource` of the resource metadata (default: this server's URL).
    prm_resource: Option<String>,
    /// The registration answer's `client_secret_expires_at`.
    secret_expires_at: Option<u64>,
}

#[derive(Default)]
struct World {
    setup: Mutex<Setup>,
    base: Mutex<String>,
    authorizations: AtomicUsize,
    registrations: AtomicUsize,
    token_requests: AtomicUsize,
    mcp_requests: AtomicUsize,
    /// code → (client id, scope asked for).
    codes: Mutex<HashMap<String, (String, String)>>,
    /// Live tokens → scope granted.
    tokens: Mutex<HashMap<String, String>>,
    /// Registered client id → the metadata it registered with.
    clients: Mutex<HashMap<String, Value>>,
    /// What the authorization server refused, in words.
    refusals: Mutex<Vec<String>>,
    /// The paths of every GET.
    gets: Mutex<Vec<String>>,
    /// Every authorization request's query, and every token request's form.
    authorize_queries: Mutex<Vec<HashMap<String, String>>>,
    token_forms: Mutex<Vec<HashMap<String, String>>>,
    /// code → PKCE challenge.
    challenges: Mutex<HashMap<String, String>>,
}

impl World {
    fn base(&self) -> String {
        self.base.lock().unwrap().clone()
    }
    fn url(&self) -> String {
        format!("{}/mcp", self.base())
    }
    fn setup(&self) -> Setup {
        self.setup.lock().unwrap().clone()
    }
    fn change(&self, f: impl FnOnce(&mut Setup)) {
        f(&mut self.setup.lock().unwrap());
    }
    fn count(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
    fn refuse(&self, why: String) -> Response {
        self.refusals.lock().unwrap().push(why.clone());
        json_answer(
            StatusCode::BAD_REQUEST,
            json!({"error": "unauthorized_client", "error_description": why}),
        )
    }
    /// The challenge of the MCP server's `401`.
    fn challenge(&self) -> String {
        let metadata = self
            .setup()
            .challenge_metadata
            .unwrap_or_else(|| format!("{}/.well-known/oauth-protected-resource/mcp", self.base()));
        format!("Bearer scope=\"mcp:basic\", resource_metadata=\"{metadata}\"")
    }
}

async fn start(setup: Setup) -> Arc<World> {
    let world = Arc::new(World::default());
    *world.setup.lock().unwrap() = setup;
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

/// Whether `redirect_uri` is one of `registered`, the port of a loopback one free
/// (RFC 8252 §7.3).
fn redirect_registered(registered: &Value, redirect_uri: &str) -> bool {
    let without_port = |u: &str| {
        let (scheme, rest) = u.split_once("://").unwrap_or(("", u));
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let host = authority.split(':').next().unwrap_or_default();
        format!("{scheme}://{host}/{path}")
    };
    registered["redirect_uris"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| without_port(r) == without_port(redirect_uri))
}

fn grants(registered: &Value) -> Vec<String> {
    registered["grant_types"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect()
}

async fn handle(State(world): State<Arc<World>>, req: Request) -> Response {
    let setup = world.setup();
    let base = world.base();
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
    match (method, path.as_str()) {
        (Method::GET, "/moved") => (
            StatusCode::FOUND,
            [(
                header::LOCATION,
                format!("{base}/.well-known/oauth-protected-resource/mcp"),
            )],
        )
            .into_response(),
        (Method::GET, "/huge") => {
            // 4 MiB of JSON: over the HTTP client's 1 MiB budget.
            let filler = "x".repeat(4 << 20);
            json_answer(
                StatusCode::OK,
                json!({"resource": world.url(), "authorization_servers": [base], "x": filler}),
            )
        }
        (Method::GET, "/.well-known/oauth-protected-resource/mcp") => json_answer(
            StatusCode::OK,
            json!({
                "resource": setup.prm_resource.clone().unwrap_or_else(|| world.url()),
                "authorization_servers": [base],
                "scopes_supported": ["mcp:basic"],
            }),
        ),
        (Method::GET, "/.well-known/oauth-authorization-server") => json_answer(
            StatusCode::OK,
            json!({
                "issuer": setup.issuer.clone().unwrap_or(base.clone()),
                "authorization_response_iss_parameter_supported": setup.promise_iss,
                "authorization_endpoint": format!("{base}/authorize"),
                "token_endpoint": format!("{base}/token"),
                "registration_endpoint": format!("{base}/register"),
                "token_endpoint_auth_methods_supported": ["none", "client_secret_post"],
                "grant_types_supported": ["authorization_code", "client_credentials"],
                "response_types_supported": ["code"],
                "code_challenge_methods_supported": ["S256"],
            }),
        ),
        (Method::POST, "/register") if setup.registration_junk.is_some() => (
            StatusCode::CREATED,
            [(header::CONTENT_TYPE, "application/json")],
            setup.registration_junk.clone().unwrap(),
        )
            .into_response(),
        (Method::POST, "/register") => {
            let n = world.registrations.fetch_add(1, Ordering::SeqCst);
            let asked: Value = serde_json::from_slice(&body).unwrap();
            let id = format!("dynamic-{n}");
            world
                .clients
                .lock()
                .unwrap()
                .insert(id.clone(), asked.clone());
            let mut answer = asked.clone();
            answer["client_id"] = json!(id);
            if asked["token_endpoint_auth_method"] != "none" {
                answer["client_secret"] = json!(format!("secret-{n}"));
                if let Some(at) = setup.secret_expires_at {
                    answer["client_secret_expires_at"] = json!(at);
                }
            }
            world
                .clients
                .lock()
                .unwrap()
                .insert(id.clone(), answer.clone());
            json_answer(StatusCode::CREATED, answer)
        }
        (Method::GET, "/authorize") => {
            let q = form(query.as_bytes());
            world.authorize_queries.lock().unwrap().push(q.clone());
            if setup.authorize_hangs {
                std::future::pending::<()>().await;
            }
            if let Some(location) = &setup.authorize_location {
                let location = location.replace("BASE", &base);
                return (StatusCode::FOUND, [(header::LOCATION, location)]).into_response();
            }
            let client_id = q.get("client_id").cloned().unwrap_or_default();
            let registered = world.clients.lock().unwrap().get(&client_id).cloned();
            let Some(registered) = registered else {
                return world.refuse(format!("unknown client {client_id}"));
            };
            // RFC 6749 §3.1.2.4: an unregistered redirect URI gets no redirect.
            if !redirect_registered(&registered, &q["redirect_uri"]) {
                return world.refuse(format!(
                    "{} is not a redirect URI of {client_id}",
                    q["redirect_uri"]
                ));
            }
            let n = world.authorizations.fetch_add(1, Ordering::SeqCst);
            let code = format!("code-{n}");
            world.challenges.lock().unwrap().insert(
                code.clone(),
                q.get("code_challenge").cloned().unwrap_or_default(),
            );
            world.codes.lock().unwrap().insert(
                code.clone(),
                (client_id, q.get("scope").cloned().unwrap_or_default()),
            );
            let state = setup.forged_state.clone().unwrap_or(q["state"].clone());
            let location = format!(
                "{}?{}",
                q["redirect_uri"],
                serde_urlencoded::to_string([("code", code.as_str()), ("state", &state)]).unwrap()
            );
            (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
        }
        (Method::POST, "/token") => {
            let n = world.token_requests.fetch_add(1, Ordering::SeqCst);
            let f = form(&body);
            world.token_forms.lock().unwrap().push(f.clone());
            let client_id = f.get("client_id").cloned().unwrap_or_default();
            let registered = world.clients.lock().unwrap().get(&client_id).cloned();
            let Some(registered) = registered else {
                return world.refuse(format!("unknown client {client_id}"));
            };
            if registered.get("client_secret").is_some()
                && f.get("client_secret").map(|s| json!(s))
                    != registered.get("client_secret").cloned()
            {
                return world.refuse(format!("{client_id} did not authenticate"));
            }
            let grant = f.get("grant_type").cloned().unwrap_or_default();
            if !grants(&registered).contains(&grant) {
                return world.refuse(format!("{client_id} is not registered for {grant}"));
            }
            let scope = match grant.as_str() {
                "authorization_code" => {
                    let code = f.get("code").cloned().unwrap_or_default();
                    match world.codes.lock().unwrap().remove(&code) {
                        Some((of, scope)) if of == client_id => scope,
                        _ => return world.refuse(format!("code {code} is not {client_id}'s")),
                    }
                }
                _ => f.get("scope").cloned().unwrap_or_default(),
            };
            let access = format!("access-{n}");
            world
                .tokens
                .lock()
                .unwrap()
                .insert(access.clone(), scope.clone());
            json_answer(
                StatusCode::OK,
                json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600,
                       "scope": scope}),
            )
        }
        (Method::POST, "/mcp") => mcp(&world, &setup, &headers),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The MCP server: every request needs a live token (and the required scope).
fn mcp(world: &World, setup: &Setup, headers: &HeaderMap) -> Response {
    world.mcp_requests.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let scope = token.and_then(|t| world.tokens.lock().unwrap().get(t).cloned());
    let Some(scope) = scope.filter(|_| !setup.refuse_every_token) else {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, world.challenge())],
        )
            .into_response();
    };
    if let Some(required) = &setup.required_scope {
        if !scope.split(' ').any(|s| s == required) {
            return (
                StatusCode::FORBIDDEN,
                [(
                    header::WWW_AUTHENTICATE,
                    format!(
                        "Bearer error=\"insufficient_scope\", scope=\"{required}\", \
                         resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
                        world.base()
                    ),
                )],
            )
                .into_response();
        }
    }
    json_answer(
        StatusCode::OK,
        json!({"jsonrpc": "2.0", "id": 1, "result": {}}),
    )
}

/// One MCP request the way [`tower_bearer::mcp::AuthorizedHttpClient`] sends it:
/// the current token; on `401` one authorization and once more; on `403
/// insufficient_scope` a step-up, within the limit. The final status, or the
/// authorization's error.
async fn call(auth: &McpAuth, world: &World) -> Result<StatusCode, tower_bearer::Error> {
    let http = reqwest::Client::new();
    let mut reauthorized = false;
    let mut step_ups = 0;
    loop {
        let sent = auth.credential().await?;
        let mut req = http.post(world.url()).body("{}");
        if let Some(token) = sent.token() {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let challenge = res
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        match res.status() {
            StatusCode::UNAUTHORIZED if !reauthorized => {
                reauthorized = true;
                auth.on_unauthorized(&sent, &challenge).await?;
            }
            StatusCode::FORBIDDEN if step_ups < auth.max_step_ups() => {
                step_ups += 1;
                auth.on_insufficient_scope(&sent, &challenge).await?;
            }
            status => return Ok(status),
        }
    }
}

fn headless(world: &World) -> tower_bearer::mcp::McpAuthBuilder {
    McpAuth::builder(world.url()).user_agent(UserAgent::Headless)
}

fn temp_file(world: &World, name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-mcp-attack-{}-{}",
        std::process::id(),
        world.base().rsplit(':').next().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

// Finding: with a token store, an authorization after a `401` adopted the very
// token the server had just refused (the store's copy, "newer" than the new
// cache's nothing), so a revoked token could never be replaced.
#[tokio::test]
async fn a_refused_token_is_not_adopted_again_from_the_token_store() {
    let world = start(Setup::default()).await;
    let store = MemoryStore::new();
    let auth = headless(&world).token_store(store.clone()).build().unwrap();
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::OK);
    assert_eq!(auth.credential().await.unwrap().token(), Some("access-0"));

    // The authorization server revokes it; the MCP server answers 401.
    world.tokens.lock().unwrap().remove("access-0");
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::OK);
    assert_eq!(World::count(&world.authorizations), 2);
    assert_eq!(auth.credential().await.unwrap().token(), Some("access-1"));

    // A restart with the same store adopts the live token, with no login.
    let restarted = headless(&world).token_store(store).build().unwrap();
    assert_eq!(call(&restarted, &world).await.unwrap(), StatusCode::OK);
    assert_eq!(World::count(&world.authorizations), 2);
}

// Finding: the same with a step-up: the new authorization adopted the stored
// token without the scope, so every step-up failed until the limit.
#[tokio::test]
async fn a_step_up_with_a_token_store_gets_the_wider_token() {
    let world = start(Setup::default()).await;
    let auth = headless(&world)
        .token_store(MemoryStore::new())
        .build()
        .unwrap();
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::OK);
    world.change(|s| s.required_scope = Some("mcp:write".into()));
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::OK);
    assert_eq!(World::count(&world.authorizations), 2);
    let codes = world.tokens.lock().unwrap().clone();
    assert_eq!(codes["access-1"], "mcp:basic mcp:write");
}

// Finding: a machine (client credentials) registered as a public client (`none`)
// wherever the server listed `none`, and then could not use its grant, which
// needs client authentication (RFC 6749 §4.4).
#[tokio::test]
async fn a_machine_registers_as_a_confidential_client() {
    let world = start(Setup::default()).await;
    let machine = headless(&world)
        .grant(Grant::ClientCredentials)
        .build()
        .unwrap();
    let answer = call(&machine, &world).await;
    assert!(matches!(answer, Ok(StatusCode::OK)), "{answer:?}");
    let clients = world.clients.lock().unwrap();
    assert_eq!(
        clients["dynamic-0"]["token_endpoint_auth_method"],
        "client_secret_post"
    );
}

// Finding: registrations were kept per issuer alone (principle 6), so a
// registration made for one client metadata was reused for another: a machine's
// client-credentials registration (no redirect URIs) for a person's login, or a
// registration with a redirect URI the user has since corrected.
#[tokio::test]
async fn a_registration_is_used_only_for_the_metadata_it_was_made_with() {
    let world = start(Setup::default()).await;
    let shared = MemoryRegistrations::new();
    let machine = headless(&world)
        .grant(Grant::ClientCredentials)
        .registrations(shared.clone())
        .build()
        .unwrap();
    assert_eq!(call(&machine, &world).await.unwrap(), StatusCode::OK);
    let person = headless(&world).registrations(shared).build().unwrap();
    let answer = call(&person, &world).await;
    assert!(
        matches!(answer, Ok(StatusCode::OK)),
        "{answer:?} {:?}",
        world.refusals.lock().unwrap()
    );
    assert_eq!(World::count(&world.registrations), 2);

    // A restart with corrected metadata registers again.
    let world = start(Setup::default()).await;
    let file = temp_file(&world, "registrations.json");
    let wrong = ClientMetadata::native("agent", ["http://127.0.0.1/elsewhere"]);
    let right = ClientMetadata::native("agent", ["http://127.0.0.1/callback"]);
    let first = headless(&world)
        .client_metadata(wrong)
        .registrations(FileRegistrations::new(&file))
        .build()
        .unwrap();
    assert!(call(&first, &world).await.is_err());
    let second = headless(&world)
        .client_metadata(right)
        .registrations(FileRegistrations::new(&file))
        .build()
        .unwrap();
    let answer = call(&second, &world).await;
    assert!(
        matches!(answer, Ok(StatusCode::OK)),
        "{answer:?} {:?}",
        world.refusals.lock().unwrap()
    );
    assert_eq!(World::count(&world.registrations), 2);
    std::fs::remove_file(&file).unwrap();
}

// Finding: a server that refuses every token (`401` forever) got one whole
// authorization (a login, a browser tab) per request: a storm driven by the
// caller's rate (principle 3: retries are throttled by time). A token refused
// once is re-authorized at once; refusals that follow wait a growing time.
#[tokio::test]
async fn a_server_that_refuses_every_token_gets_no_storm_of_authorizations() {
    let world = start(Setup {
        refuse_every_token: true,
        ..Setup::default()
    })
    .await;
    let auth = headless(&world).build().unwrap();
    // The first request: no token, one authorization, its token refused.
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::UNAUTHORIZED);
    // The second: its refused token is replaced once, through its cache (this
    // server gives no refresh token: the grant again, a second login).
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::UNAUTHORIZED);
    assert_eq!(World::count(&world.authorizations), 2);
    assert_eq!(World::count(&world.token_requests), 2);
    // Then neither logins nor token requests at the caller's rate.
    for _ in 0..5 {
        let err = call(&auth, &world).await.unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
    }
    assert_eq!(World::count(&world.authorizations), 2);
    assert_eq!(World::count(&world.token_requests), 2);
}

// Finding: a redirect with another login's `state` (a forged or confused
// authorization server) was refused by the login, but the headless user agent
// only logged it, and the login waited for its deadline (5 minutes) holding the
// authorization's gate.
#[tokio::test]
async fn a_redirect_with_a_forged_state_fails_the_headless_login_at_once() {
    let world = start(Setup {
        forged_state: Some("forged".into()),
        ..Setup::default()
    })
    .await;
    let auth = headless(&world).build().unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(30), call(&auth, &world))
        .await
        .expect("the login waited for its deadline");
    let err = answer.unwrap_err();
    assert!(err.to_string().contains("state"), "{err}");
    assert!(auth.credential().await.unwrap().token().is_none());
    assert_eq!(World::count(&world.token_requests), 0);
}

/// The GETs that reached the test server.
fn gets(world: &World) -> Vec<String> {
    world.gets.lock().unwrap().clone()
}

// Finding: a remote MCP server could make the client GET any loopback URL
// (`resource_metadata="http://127.0.0.1:<port>/…"`, the one place `http` is
// allowed): a blind request into the user's own machine. A server that is not on
// loopback may not send the client there.
#[tokio::test]
async fn a_remote_server_cannot_send_discovery_to_loopback() {
    let world = start(Setup::default()).await;
    let challenge = format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\"",
        world.base()
    );
    let err = discover(
        "https://mcp.example.com/mcp",
        Some(&challenge),
        &tower_bearer::client::HttpClient::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
    assert!(gets(&world).is_empty(), "{:?}", gets(&world));
}

// Held: discovery follows no redirect (a metadata URL that answers 302 to
// another place), reads no document beyond the HTTP client's budget, and takes
// no authorization server metadata whose issuer is not the one it was fetched
// for (RFC 8414 §3.3).
#[tokio::test]
async fn discovery_follows_no_redirect_reads_no_huge_document_takes_no_other_issuer() {
    let world = start(Setup::default()).await;
    let http = tower_bearer::client::HttpClient::new();
    let moved = format!("Bearer resource_metadata=\"{}/moved\"", world.base());
    let err = discover(&world.url(), Some(&moved), &http)
        .await
        .unwrap_err();
    assert_eq!(gets(&world), ["/moved"], "{err}");

    let huge = format!("Bearer resource_metadata=\"{}/huge\"", world.base());
    let err = discover(&world.url(), Some(&huge), &http)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("limit") || err.to_string().contains("large"),
        "{err}"
    );

    world.change(|s| s.issuer = Some("https://evil.example.com".into()));
    let err = discover(&world.url(), Some(&world.challenge()), &http)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("issuer"), "{err}");
    let auth = headless(&world).build().unwrap();
    assert!(call(&auth, &world).await.is_err());
    assert_eq!(World::count(&world.registrations), 0);
    assert_eq!(World::count(&world.authorizations), 0);
}

// Held: the headless user agent follows no redirect to another scheme (`file:`,
// `javascript:`, `data:`), gives up on a redirect loop, and fails the login at
// once on a page instead of a redirect; no code reaches the token endpoint.
#[tokio::test]
async fn the_headless_user_agent_stops_at_other_schemes_loops_and_pages() {
    for location in [
        "file:///etc/passwd",
        "javascript:alert(1)",
        "data:text/html,hi",
        "BASE/authorize?loop=1",
        "BASE/nowhere",
    ] {
        let world = start(Setup {
            authorize_location: Some(location.into()),
            ..Setup::default()
        })
        .await;
        let auth = headless(&world).build().unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), call(&auth, &world))
            .await
            .expect("the login waited for its deadline");
        assert!(answer.is_err(), "{location}: {answer:?}");
        assert_eq!(World::count(&world.token_requests), 0, "{location}");
        assert!(
            world.authorize_queries.lock().unwrap().len() <= 11,
            "{location}"
        );
    }
}

// Held: an authorization server that promises `iss` (RFC 9207) and sends none
// gets no token request.
#[tokio::test]
async fn a_missing_iss_where_promised_is_refused() {
    let world = start(Setup {
        promise_iss: true,
        ..Setup::default()
    })
    .await;
    let auth = headless(&world).build().unwrap();
    let err = call(&auth, &world).await.unwrap_err();
    assert!(err.to_string().contains("iss"), "{err}");
    assert_eq!(World::count(&world.token_requests), 0);
}

// Held: the MCP spec's MUSTs on the wire: `resource` (RFC 8707) is the canonical
// server URI on the authorization and the token request; PKCE S256, whose
// verifier matches the challenge; the canonical URI's rules.
#[tokio::test]
async fn resource_and_pkce_on_the_wire() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let world = start(Setup::default()).await;
    // Upper-case scheme and host, a trailing slash and a fragment: the same server.
    let given = format!("{}/mcp/#top", world.base().replace("http://", "HTTP://"));
    assert_eq!(canonical_server_uri(&given).unwrap(), world.url());
    let auth = McpAuth::builder(given)
        .user_agent(UserAgent::Headless)
        .build()
        .unwrap();
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::OK);
    let queries = world.authorize_queries.lock().unwrap().clone();
    let forms = world.token_forms.lock().unwrap().clone();
    assert_eq!(queries.len(), 1);
    assert_eq!(forms.len(), 1);
    assert_eq!(queries[0]["resource"], world.url());
    assert_eq!(forms[0]["resource"], world.url());
    assert_eq!(queries[0]["code_challenge_method"], "S256");
    let verifier = &forms[0]["code_verifier"];
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(sha2::Sha256::digest(verifier.as_bytes()));
    assert_eq!(world.challenges.lock().unwrap()["code-0"], challenge);
    assert!(verifier.len() >= 43);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Held: no secret (registered client secret, access token, authorization code,
// PKCE verifier) in the logs at any level, in errors or in `Debug`, through a
// registration, a login, a refusal and a step-up.
#[tokio::test]
async fn no_secret_in_logs_errors_or_debug() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let world = start(Setup::default()).await;
    let machine = headless(&world)
        .grant(Grant::ClientCredentials)
        .build()
        .unwrap();
    assert_eq!(call(&machine, &world).await.unwrap(), StatusCode::OK);
    let person = headless(&world).build().unwrap();
    assert_eq!(call(&person, &world).await.unwrap(), StatusCode::OK);
    world.tokens.lock().unwrap().clear();
    world.change(|s| s.required_scope = Some("mcp:write".into()));
    assert_eq!(call(&person, &world).await.unwrap(), StatusCode::OK);
    world.change(|s| s.forged_state = Some("forged".into()));
    world.tokens.lock().unwrap().clear();
    let err = call(&person, &world).await.unwrap_err();

    let mut secrets: Vec<String> = world
        .clients
        .lock()
        .unwrap()
        .values()
        .filter_map(|c| c["client_secret"].as_str().map(str::to_owned))
        .collect();
    assert!(!secrets.is_empty());
    secrets.extend(world.tokens.lock().unwrap().keys().cloned());
    for form in world.token_forms.lock().unwrap().iter() {
        secrets.extend(form.get("code").cloned());
        secrets.extend(form.get("code_verifier").cloned());
        secrets.extend(form.get("access_token").cloned());
    }
    secrets.extend((0..World::count(&world.token_requests)).map(|n| format!("access-{n}")));
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.len() > 100, "nothing was logged: {logs}");
    let shown = format!("{logs} {err} {err:?} {machine:?} {person:?}");
    for secret in &secrets {
        assert!(!shown.contains(secret.as_str()), "{secret} shown: {shown}");
    }
}

// Finding: a server URL with user information (`https://user:password@host/mcp`)
// kept it in the canonical URI, which goes to the authorization server as
// `resource` (RFC 8707 §2: an absolute URI; MCP: the canonical URI has none).
#[test]
fn the_canonical_uri_carries_no_user_information() {
    for url in [
        "https://user:hunter2@mcp.example.com/mcp",
        "https://hunter2@mcp.example.com/mcp",
    ] {
        let err = canonical_server_uri(url).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(McpAuth::builder(url).build().is_err(), "{url} was accepted");
    }
    assert_eq!(
        canonical_server_uri("https://MCP.example.com:8443/a/b/").unwrap(),
        "https://mcp.example.com:8443/a/b"
    );
}

// Held: a registration answer that is junk is a clear error, never a panic, and
// nothing is kept or sent on.
#[tokio::test]
async fn a_junk_registration_answer_is_a_clear_error() {
    for junk in [
        "not json",
        "[]",
        r#"{"client_id": ""}"#,
        r#"{"client_id": 42}"#,
        r#"{"client_secret": "s3cret-junk"}"#,
    ] {
        let world = start(Setup {
            registration_junk: Some(junk.into()),
            ..Setup::default()
        })
        .await;
        let registrations = MemoryRegistrations::new();
        let auth = headless(&world)
            .registrations(registrations.clone())
            .build()
            .unwrap();
        let err = call(&auth, &world).await.unwrap_err();
        assert!(err.to_string().contains("regist"), "{junk}: {err}");
        assert!(!err.to_string().contains("s3cret-junk"), "{err}");
        assert_eq!(World::count(&world.authorizations), 0, "{junk}");
        assert!(world.authorize_queries.lock().unwrap().is_empty());
    }
}

// Held: clones of one authorization refused at once make one registration and
// one authorization.
#[tokio::test]
async fn clones_refused_at_once_make_one_authorization() {
    let world = start(Setup::default()).await;
    let auth = headless(&world).build().unwrap();
    let clones: Vec<McpAuth> = (0..8).map(|_| auth.clone()).collect();
    let answers =
        futures_util::future::join_all(clones.iter().map(|auth| call(auth, &world))).await;
    for answer in answers {
        assert_eq!(answer.unwrap(), StatusCode::OK);
    }
    assert_eq!(World::count(&world.registrations), 1);
    assert_eq!(World::count(&world.authorizations), 1);
}

// Held: an authorization cancelled mid-login (its request dropped) leaves
// nothing stuck: the next request authorizes.
#[tokio::test]
async fn a_login_cancelled_midway_leaves_nothing_stuck() {
    let world = start(Setup {
        authorize_hangs: true,
        ..Setup::default()
    })
    .await;
    let auth = headless(&world).build().unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), call(&auth, &world)).await;
    assert!(waited.is_err(), "the hanging login finished: {waited:?}");
    world.change(|s| s.authorize_hangs = false);
    let answer = tokio::time::timeout(Duration::from_secs(30), call(&auth, &world))
        .await
        .expect("stuck after a cancelled login");
    assert_eq!(answer.unwrap(), StatusCode::OK);
}

// Finding: pre-registered credentials are for the authorization server they
// were registered with, yet a later challenge naming other resource metadata
// (whose `resource` claims the server, at another origin) sent the client id and
// secret to whatever authorization server that document named. The
// pre-registered client now stays with the first issuer it was used with.
#[tokio::test]
async fn pre_registered_credentials_stay_with_their_authorization_server() {
    let world = start(Setup::default()).await;
    let evil = start(Setup::default()).await;
    evil.change(|s| s.prm_resource = Some(world.url()));
    world.clients.lock().unwrap().insert(
        "pre".into(),
        json!({"grant_types": ["authorization_code"], "client_secret": "s3cret-pre",
               "redirect_uris": ["http://127.0.0.1/callback"]}),
    );
    let client = ClientInformation::new("pre")
        .secret("s3cret-pre")
        .auth_method("client_secret_post");
    let auth = headless(&world).client(client).build().unwrap();
    assert_eq!(call(&auth, &world).await.unwrap(), StatusCode::OK);

    // The server's challenges now name the other document; its token is refused.
    world.change(|s| {
        s.challenge_metadata = Some(format!(
            "{}/.well-known/oauth-protected-resource/mcp",
            evil.base()
        ))
    });
    world.tokens.lock().unwrap().clear();
    let err = call(&auth, &world).await.unwrap_err();
    assert!(err.to_string().contains("pre-registered"), "{err}");
    assert!(evil.authorize_queries.lock().unwrap().is_empty());
    assert!(evil.token_forms.lock().unwrap().is_empty());
}

// Finding: a registration whose secret had expired (`client_secret_expires_at`,
// RFC 7591 §3.2.1) was used on from memory (the in-process copy, and
// `MemoryRegistrations`) until a restart: `invalid_client` forever for a
// long-running agent. An expired registration is replaced by a new one.
#[tokio::test]
async fn a_registration_whose_secret_expired_is_replaced() {
    let world = start(Setup {
        secret_expires_at: Some(1),
        ..Setup::default()
    })
    .await;
    let machine = headless(&world)
        .grant(Grant::ClientCredentials)
        .build()
        .unwrap();
    assert_eq!(call(&machine, &world).await.unwrap(), StatusCode::OK);
    world.tokens.lock().unwrap().clear();
    assert_eq!(call(&machine, &world).await.unwrap(), StatusCode::OK);
    assert_eq!(World::count(&world.registrations), 2);
}
