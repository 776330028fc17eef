//! An in-process identity provider and protected API for the examples: a
//! client-credentials token endpoint issuing short-lived opaque tokens, and an API
//! that accepts only those tokens while they are valid. Real axum servers on
//! loopback, so the examples run with no setup.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use tokio::time::Instant;

/// The client registration the examples use.
pub const CLIENT_ID: &str = "demo-client";
/// Its secret.
pub const CLIENT_SECRET: &str = "demo-secret";

/// Issued tokens and counters, shared by the token endpoint and the API.
#[derive(Default)]
pub struct Issuer {
    lifetime: Duration,
    tokens: Mutex<HashMap<String, Instant>>,
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
    let issuer = Arc::new(Issuer {
        lifetime,
        ..Issuer::default()
    });
    let app = Router::new()
        .route("/token", post(token))
        .route("/api", get(api))
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
    let access = format!("demo-{n}-{:016x}", fastrand::u64(..));
    issuer
        .tokens
        .lock()
        .unwrap()
        .insert(access.clone(), Instant::now() + issuer.lifetime);
    let body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": issuer.lifetime.as_secs_f64(),
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn api(State(issuer): State<Arc<Issuer>>, headers: HeaderMap) -> Response {
    issuer.api_requests.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let valid = token.is_some_and(|t| {
        issuer
            .tokens
            .lock()
            .unwrap()
            .get(t)
            .is_some_and(|exp| Instant::now() < *exp)
    });
    if valid {
        (StatusCode::OK, "ok").into_response()
    } else {
        let challenge = if token.is_some() {
            r#"Bearer realm="demo", error="invalid_token""#
        } else {
            r#"Bearer realm="demo""#
        };
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response()
    }
}
