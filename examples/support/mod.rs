//! An in-process identity provider and protected API for the examples: a
//! client-credentials token endpoint issuing short-lived HS256 JWTs, and an API
//! behind this crate's `RequireBearerLayer` with a `JwtValidator`. Real axum servers
//! on loopback, so the examples run with no setup.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, Verified};

/// The client registration the examples use.
pub const CLIENT_ID: &str = "demo-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "demo-secret";

/// The signing key, the token lifetime and counters, shared by the token endpoint
/// and the API.
pub struct Issuer {
    lifetime: Duration,
    key: jsonwebtoken::EncodingKey,
    token_requests: AtomicU64,
    api_requests: AtomicU64,
    next: AtomicU64,
}

impl Issuer {
    /// Token requests answered so far.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::SeqCst)
    }

    /// API requests answered so far.
    pub fn api_requests(&self) -> u64 {
        self.api_requests.load(Ordering::SeqCst)
    }
}

/// A running identity provider and API.
pub struct Servers {
    /// Where both listen.
    pub addr: SocketAddr,
    /// Their shared state.
    pub issuer: Arc<Issuer>,
}

impl Servers {
    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The protected API.
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }
}

/// Starts the token endpoint (`POST /token`) and the API (`GET /api`) on an
/// ephemeral loopback port; tokens live `lifetime`.
pub async fn start(lifetime: Duration) -> std::io::Result<Servers> {
    let secret: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
    let issuer = Arc::new(Issuer {
        lifetime,
        key: jsonwebtoken::EncodingKey::from_secret(&secret),
        token_requests: AtomicU64::new(0),
        api_requests: AtomicU64::new(0),
        next: AtomicU64::new(0),
    });
    // The API checks its tokens with no leeway: an expired token is refused at once.
    let validator: JwtValidator<Claims> = JwtValidator::hmac(&secret)
        .issuer("demo-idp")
        .audience("demo-api")
        .leeway(Duration::ZERO);
    let api_routes = Router::new()
        .route("/api", get(api))
        .layer(RequireBearerLayer::new(validator).realm("demo"));
    let app = Router::new()
        .route("/token", post(token))
        .merge(api_routes)
        .with_state(issuer.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Servers { addr, issuer })
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code }))).into_response()
}

async fn token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    issuer.token_requests.fetch_add(1, Ordering::SeqCst);
    // client_secret_basic for CLIENT_ID:CLIENT_SECRET
    let client_ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == "Basic ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=");
    if !client_ok {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let n = issuer.next.fetch_add(1, Ordering::SeqCst);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    // `exp` is rounded up: the token lives at least the `expires_in` it is sold with
    // (rounded down, a 1 s token issued at x.9 s would be dead at x+1 s).
    let claims = serde_json::json!({
        "sub": CLIENT_ID,
        "iss": "demo-idp",
        "aud": "demo-api",
        "iat": now.floor() as u64,
        "exp": (now + issuer.lifetime.as_secs_f64()).ceil() as u64,
        "jti": n.to_string(),
    });
    let Ok(access) = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &issuer.key)
    else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    let body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": issuer.lifetime.as_secs_f64(),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn api(
    State(issuer): State<Arc<Issuer>>,
    Extension(Verified(claims)): Extension<Verified<Claims>>,
) -> Response {
    issuer.api_requests.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::OK,
        format!("ok {}", claims.sub.unwrap_or_default()),
    )
        .into_response()
}
