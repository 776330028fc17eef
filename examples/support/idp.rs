//! The token server of the examples: it follows the Zebbra OAuth 2.0 guide, so the
//! guide's requests, exactly as written, work against it, and it publishes its keys
//! the way identity providers do, so APIs can check its tokens through OIDC
//! discovery.
//!
//! - `POST /register`: a JSON body (sent without a content type, as
//!   `requests.post(url, data=json.dumps(form_data))` does) with `username`,
//!   `first_name`, `last_name`, `new_workspace_name`, `password`; answers the user
//!   with `_id`, `workspaces` and `models`, never the password. Duplicate usernames
//!   are refused.
//! - `POST /token`: form fields `username` and `password` (the password grant, with
//!   or without `grant_type`), `grant_type=refresh_token` (refresh tokens rotate:
//!   each is good once), or `grant_type=client_credentials` for the client
//!   [`CLIENT_ID`] (HTTP Basic); with `resource` (RFC 8707) the token's `aud` is that
//!   URI instead of the configured audience. Answers `access_token`, `token_type: "bearer"`,
//!   `expires_in` and `refresh_token`, with `Cache-Control: no-store`.
//! - `GET /user`: `Authorization: Bearer …` → that user, checked by this crate's
//!   `RequireBearerLayer` with zero leeway.
//! - `GET /token/expired`: `{"expired": false}`, or `{"expired": true}` for a genuine
//!   token past its expiry; a forged token gets `401`.
//! - `GET /.well-known/openid-configuration` and `GET /.well-known/jwks.json`: the
//!   issuer and its Ed25519 public key.
//!
//! Access tokens are EdDSA (Ed25519) JWTs with `iss`, `sub`, `aud`, `exp`, `iat`,
//! `jti` and `scope` (`read`, plus `admin` for the users named admins). The key is
//! made at start-up from the operating system's randomness. Passwords are stored as
//! argon2 hashes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Form, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tower_bearer::server::{Claims, JwtValidator, Rejection, RequireBearerLayer, Verified};

/// The client registered for the client-credentials grant.
pub const CLIENT_ID: &str = "demo-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "demo-secret";

/// How a token server is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Access token lifetime.
    pub ttl: Duration,
    /// The `aud` of every access token.
    pub audience: String,
    /// Users whose tokens carry the `admin` scope.
    pub admins: Vec<String>,
    /// The issuer URL; `None`: `http://<the address it listens on>`.
    pub issuer: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(30 * 60),
            audience: "api".into(),
            admins: Vec::new(),
            issuer: None,
        }
    }
}

/// A running token server.
#[derive(Clone)]
pub struct TokenServer {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<ServerState>,
}

impl TokenServer {
    /// The issuer URL (the `iss` of its tokens; discovery starts here).
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The token endpoint, for the examples' registered client ([`CLIENT_ID`],
    /// [`CLIENT_SECRET`]).
    pub fn endpoint(&self) -> Result<tower_bearer::client::TokenEndpoint, tower_bearer::Error> {
        Ok(tower_bearer::client::TokenEndpoint::new(&self.token_url())?
            .client_id(CLIENT_ID)
            .client_secret(CLIENT_SECRET))
    }

    /// `POST /token` requests answered so far, successful or not.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// The key id of the signing key.
    pub fn kid(&self) -> &str {
        &self.state.kid
    }
}

/// Starts a token server on `listener`, in the background.
pub fn start(listener: tokio::net::TcpListener, config: Config) -> std::io::Result<TokenServer> {
    let addr = listener.local_addr()?;
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(std::io::Error::other)?;
    let signing = ed25519_dalek::SigningKey::from_bytes(&seed);
    let der = signing.to_pkcs8_der().map_err(std::io::Error::other)?;
    let public = signing.verifying_key().to_bytes();
    let issuer = config.issuer.unwrap_or_else(|| format!("http://{addr}"));
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(std::io::Error::other)?;
    let decoy_password = random_hex(16).ok_or_else(no_randomness)?;
    let kid = format!("ed-{}", random_hex(4).ok_or_else(no_randomness)?);
    let decoy_hash = SaltString::encode_b64(&salt)
        .and_then(|salt| {
            Argon2::default()
                .hash_password(decoy_password.as_bytes(), &salt)
                .map(|hash| hash.to_string())
        })
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let state = Arc::new(ServerState {
        accounts: Mutex::new(HashMap::new()),
        decoy_hash,
        refresh_tokens: Mutex::new(HashMap::new()),
        encoding: EncodingKey::from_ed_der(der.as_bytes()),
        decoding: DecodingKey::from_ed_der(&public),
        kid,
        public,
        issuer,
        audience: config.audience,
        admins: config.admins,
        ttl: config.ttl,
        token_requests: AtomicU64::new(0),
        next_jti: AtomicU64::new(0),
    });
    let app = app(Arc::clone(&state));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(TokenServer { addr, state })
}

#[derive(Clone, Serialize)]
struct Workspace {
    #[serde(rename = "_id")]
    id: String,
    name: String,
}

#[derive(Clone, Serialize)]
struct User {
    #[serde(rename = "_id")]
    id: String,
    username: String,
    first_name: String,
    last_name: String,
    workspaces: Vec<Workspace>,
    models: Vec<serde_json::Value>,
}

struct Account {
    user: User,
    password_hash: String,
}

struct ServerState {
    accounts: Mutex<HashMap<String, Account>>,
    /// The hash of a random password, checked for unknown usernames.
    decoy_hash: String,
    /// Refresh token → username; each is removed when used (rotation).
    refresh_tokens: Mutex<HashMap<String, String>>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
    /// The raw Ed25519 public key.
    public: [u8; 32],
    issuer: String,
    audience: String,
    admins: Vec<String>,
    ttl: Duration,
    token_requests: AtomicU64,
    next_jti: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `bytes` bytes of the operating system's randomness, in hex; `None` when it has
/// none to give (never a weaker fallback: refresh tokens are made here).
fn random_hex(bytes: usize) -> Option<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).ok()?;
    Some(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn no_randomness() -> std::io::Error {
    std::io::Error::other("the operating system gave no randomness")
}

fn detail(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "detail": message }))).into_response()
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = json!({ "error": code, "error_description": description });
    (status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

#[derive(Deserialize)]
struct Registration {
    username: String,
    first_name: String,
    last_name: String,
    new_workspace_name: String,
    password: String,
}

/// `POST /register`: the body is JSON whatever the content type says.
async fn register(State(server): State<Arc<ServerState>>, body: Bytes) -> Response {
    let mut form: Registration = match serde_json::from_slice(&body) {
        Ok(form) => form,
        Err(e) => {
            return detail(
                StatusCode::UNPROCESSABLE_ENTITY,
                &format!("invalid registration: {e}"),
            )
        }
    };
    if form.username.trim().is_empty() || form.password.is_empty() {
        return detail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "username and password must not be empty",
        );
    }
    let mut salt = [0u8; 16];
    if getrandom::getrandom(&mut salt).is_err() {
        return detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no randomness for a salt",
        );
    }
    // Argon2 takes tens of milliseconds of CPU on purpose: off the async workers.
    let password = std::mem::take(&mut form.password);
    let hash = tokio::task::spawn_blocking(move || {
        SaltString::encode_b64(&salt).and_then(|salt| {
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
    })
    .await;
    let Ok(Ok(hash)) = hash else {
        return detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not store the password",
        );
    };
    let (Some(user_id), Some(workspace_id)) = (random_hex(12), random_hex(12)) else {
        return detail(StatusCode::INTERNAL_SERVER_ERROR, "no randomness for ids");
    };
    let mut accounts = lock(&server.accounts);
    if accounts.contains_key(&form.username) {
        return detail(StatusCode::CONFLICT, "this username is already registered");
    }
    let user = User {
        id: user_id,
        username: form.username.clone(),
        first_name: form.first_name,
        last_name: form.last_name,
        workspaces: vec![Workspace {
            id: workspace_id,
            name: form.new_workspace_name,
        }],
        models: Vec::new(),
    };
    accounts.insert(
        form.username,
        Account {
            user: user.clone(),
            password_hash: hash,
        },
    );
    (StatusCode::OK, Json(user)).into_response()
}

/// Why a token request is refused: the status and the RFC 6749 §5.2 error.
struct Refusal(StatusCode, &'static str, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let Refusal(status, code, description) = self;
        let mut res = oauth_error(status, code, description);
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6749 §5.2: a failed client authentication names the scheme.
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"token\""),
            );
        }
        res
    }
}

/// Who a grant is for, and whether it comes with a refresh token.
struct Grant {
    subject: String,
    refreshable: bool,
}

/// `POST /token`.
async fn token(
    State(server): State<Arc<ServerState>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    server.token_requests.fetch_add(1, Ordering::SeqCst);
    let grant = match form.get("grant_type").map(String::as_str) {
        None | Some("password") => password_grant(&server, &form).await,
        Some("refresh_token") => {
            let presented = form.get("refresh_token").map_or("", String::as_str);
            match lock(&server.refresh_tokens).remove(presented) {
                Some(subject) => Ok(Grant {
                    subject,
                    refreshable: true,
                }),
                None => Err(Refusal(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the refresh token is not valid",
                )),
            }
        }
        Some("client_credentials") => client_credentials(&headers),
        Some(_) => Err(Refusal(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "use password, refresh_token or client_credentials",
        )),
    };
    // RFC 8707: a token for the resource the client names (an absolute URI without a
    // fragment), else for the configured audience.
    let audience = match form.get("resource") {
        None => server.audience.as_str(),
        Some(r) if (r.starts_with("https://") || r.starts_with("http://")) && !r.contains('#') => r,
        Some(_) => {
            return Refusal(
                StatusCode::BAD_REQUEST,
                "invalid_target",
                "the resource is not an absolute URI",
            )
            .into_response()
        }
    };
    match grant {
        Ok(grant) => issue(&server, grant, audience),
        Err(refused) => refused.into_response(),
    }
}

async fn password_grant(
    server: &ServerState,
    form: &HashMap<String, String>,
) -> Result<Grant, Refusal> {
    let (Some(username), Some(password)) = (form.get("username"), form.get("password")) else {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "username and password are required",
        ));
    };
    let hash = lock(&server.accounts)
        .get(username)
        .map(|account| account.password_hash.clone());
    // An unknown user costs the same argon2 check as a wrong password, so the time
    // of the answer does not tell which usernames exist.
    let known = hash.is_some();
    let hash = hash.unwrap_or_else(|| server.decoy_hash.clone());
    let password = password.clone();
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
    })
    .await
    .unwrap_or(false);
    let verified = known && matches;
    if !verified {
        return Err(Refusal(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "incorrect username or password",
        ));
    }
    Ok(Grant {
        subject: username.clone(),
        refreshable: true,
    })
}

/// The client-credentials grant, for [`CLIENT_ID`] authenticated with HTTP Basic.
fn client_credentials(headers: &HeaderMap) -> Result<Grant, Refusal> {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    // Constant time (subtle, as `StaticTokens` compares): the secret is compared
    // without leaking where it differs.
    let ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|p| bool::from(p.as_bytes().ct_eq(expected.as_bytes())));
    if !ok {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        ));
    }
    Ok(Grant {
        subject: CLIENT_ID.into(),
        refreshable: false,
    })
}

/// Signs an access token for `grant` and answers it.
fn issue(server: &ServerState, grant: Grant, audience: &str) -> Response {
    let now = unix_now();
    let ttl = server.ttl.as_secs_f64();
    let scope = if server.admins.contains(&grant.subject) {
        "read admin"
    } else {
        "read"
    };
    // `exp` is rounded up: the token lives at least the `expires_in` it is sold
    // with (rounded down, a 1 s token issued at x.9 s would be dead at x+1 s).
    let claims = json!({
        "iss": server.issuer,
        "sub": grant.subject,
        "aud": audience,
        "iat": now.floor() as u64,
        "exp": (now + ttl).ceil() as u64,
        "jti": server.next_jti.fetch_add(1, Ordering::SeqCst).to_string(),
        "scope": scope,
    });
    let mut jwt_header = Header::new(Algorithm::EdDSA);
    jwt_header.kid = Some(server.kid.clone());
    let Ok(access_token) = jsonwebtoken::encode(&jwt_header, &claims, &server.encoding) else {
        return oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "could not sign the token",
        );
    };
    let expires_in = if server.ttl.subsec_nanos() == 0 {
        json!(server.ttl.as_secs())
    } else {
        json!(ttl)
    };
    let mut body = json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": expires_in,
        "scope": scope,
    });
    if grant.refreshable {
        let Some(refresh_token) = random_hex(32) else {
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "no randomness for a refresh token",
            );
        };
        lock(&server.refresh_tokens).insert(refresh_token.clone(), grant.subject);
        body["refresh_token"] = json!(refresh_token);
    }
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        Json(body),
    )
        .into_response()
}

/// `GET /user`, behind `RequireBearerLayer`.
async fn user(
    State(server): State<Arc<ServerState>>,
    Extension(Verified(claims)): Extension<Verified<Claims>>,
) -> Response {
    let subject = claims.sub.unwrap_or_default();
    match lock(&server.accounts).get(&subject) {
        Some(account) => Json(account.user.clone()).into_response(),
        None => detail(StatusCode::NOT_FOUND, "no such user"),
    }
}

/// `GET /token/expired`: the signature is checked; the expiry is reported, not
/// enforced.
async fn expired(State(server): State<Arc<ServerState>>, headers: HeaderMap) -> Response {
    let token = match tower_bearer::server::header::bearer_token(&headers, 8 * 1024) {
        Ok(token) => token,
        Err(rejection) => return rejection.http_response("zebbra"),
    };
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.set_issuer(&[&server.issuer]);
    match jsonwebtoken::decode::<Claims>(token, &server.decoding, &validation) {
        Ok(data) => {
            let exp = data.claims.exp.unwrap_or(0) as f64;
            Json(json!({ "expired": unix_now() >= exp })).into_response()
        }
        Err(_) => Rejection::invalid_token("the token is not genuine").http_response("zebbra"),
    }
}

/// OpenID Connect Discovery: where the keys are.
async fn discovery(State(server): State<Arc<ServerState>>) -> Response {
    let issuer = &server.issuer;
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "token_endpoint": format!("{issuer}/token"),
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "scopes_supported": ["read", "admin"],
    }))
    .into_response()
}

/// The public key as a JWK Set.
async fn jwks(State(server): State<Arc<ServerState>>) -> Response {
    let key = json!({
        "kty": "OKP",
        "crv": "Ed25519",
        "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(server.public),
        "kid": server.kid,
        "alg": "EdDSA",
        "use": "sig",
    });
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(json!({ "keys": [key] })),
    )
        .into_response()
}

fn app(server: Arc<ServerState>) -> Router {
    // The server checks its own tokens strictly: no leeway.
    let own: JwtValidator<Claims> = JwtValidator::ed_der(&server.public)
        .issuer(&server.issuer)
        .audience(&server.audience)
        .leeway(Duration::ZERO);
    let protected = Router::new()
        .route("/user", get(user))
        .layer(RequireBearerLayer::new(own).realm("zebbra"));
    Router::new()
        .route("/register", post(register))
        .route("/token", post(token))
        .route("/token/expired", get(expired))
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .merge(protected)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(server)
}
