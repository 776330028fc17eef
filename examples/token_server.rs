//! A small, complete token server that follows the Zebbra OAuth 2.0 guide, so the
//! guide's requests, exactly as written, work against it:
//!
//! - `POST /register`: a JSON body (sent without a content type, as
//!   `requests.post(url, data=json.dumps(form_data))` does) with `username`,
//!   `first_name`, `last_name`, `new_workspace_name`, `password`; answers the user
//!   with `_id`, `workspaces` and `models`, never the password. Duplicate usernames
//!   are refused.
//! - `POST /token`: form fields `username` and `password` (or
//!   `grant_type=refresh_token` with `refresh_token`); answers `access_token`,
//!   `token_type: "bearer"`, `expires_in` and `refresh_token`, with
//!   `Cache-Control: no-store`.
//! - `GET /user`: `Authorization: Bearer …` → that user, validated by this crate's
//!   `RequireBearerLayer`.
//! - `GET /token/expired`: `{"expired": false}`, or `{"expired": true}` for a genuine
//!   token past its expiry; a forged token gets `401`.
//!
//! Tokens are HS256 JWTs, valid 30 minutes by default, checked with zero leeway.
//! Passwords are stored as argon2 hashes.
//!
//! ```text
//! cargo run --example token_server -- --addr 127.0.0.1:8000 --token-ttl 30m
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Form, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use clap::Parser;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_bearer::server::{validator, Rejection, RequireBearerLayer, Verified};

#[derive(Parser, Debug)]
#[command(about = "A token server following the Zebbra OAuth 2.0 guide")]
struct Args {
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8000")]
    addr: SocketAddr,
    /// Access token lifetime: 30m, 90s, 1h, or seconds.
    #[arg(long, default_value = "30m", value_parser = parse_ttl)]
    token_ttl: Duration,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30m, 90s or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: use s, m or h")),
    };
    if secs == 0 {
        return Err("the token lifetime must be positive".into());
    }
    Ok(Duration::from_secs(secs))
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

struct Server {
    accounts: Mutex<HashMap<String, Account>>,
    refresh_tokens: Mutex<HashMap<String, String>>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl: Duration,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct TokenClaims {
    sub: String,
    exp: u64,
    iat: u64,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", fastrand::u8(..)))
        .collect()
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
async fn register(State(server): State<Arc<Server>>, body: Bytes) -> Response {
    let form: Registration = match serde_json::from_slice(&body) {
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
    let salt_bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    let hash = match SaltString::encode_b64(&salt_bytes)
        .map_err(|e| e.to_string())
        .and_then(|salt| {
            Argon2::default()
                .hash_password(form.password.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| e.to_string())
        }) {
        Ok(hash) => hash,
        Err(_) => {
            return detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not store the password",
            )
        }
    };
    let mut accounts = server.accounts.lock().unwrap();
    if accounts.contains_key(&form.username) {
        return detail(StatusCode::CONFLICT, "this username is already registered");
    }
    let user = User {
        id: random_hex(12),
        username: form.username.clone(),
        first_name: form.first_name,
        last_name: form.last_name,
        workspaces: vec![Workspace {
            id: random_hex(12),
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

/// `POST /token`: the password grant (with or without `grant_type`) and the
/// refresh-token grant. Refresh tokens are single use.
async fn token(
    State(server): State<Arc<Server>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let username = match form.get("grant_type").map(String::as_str) {
        None | Some("password") => {
            let (Some(username), Some(password)) = (form.get("username"), form.get("password"))
            else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "username and password are required",
                );
            };
            let accounts = server.accounts.lock().unwrap();
            let verified = accounts.get(username).is_some_and(|account| {
                PasswordHash::new(&account.password_hash).is_ok_and(|hash| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .is_ok()
                })
            });
            if !verified {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "incorrect username or password",
                );
            }
            username.clone()
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            match server.refresh_tokens.lock().unwrap().remove(&presented) {
                Some(username) => username,
                None => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        "the refresh token is not valid",
                    )
                }
            }
        }
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "use password or refresh_token",
            )
        }
    };
    let now = unix_now();
    let claims = TokenClaims {
        sub: username.clone(),
        iat: now,
        exp: now + server.ttl.as_secs(),
    };
    let Ok(access_token) = jsonwebtoken::encode(&Header::default(), &claims, &server.encoding)
    else {
        return detail(
            StatusCode::INTERNAL_SERVER_ERROR,
            "could not sign the token",
        );
    };
    let refresh_token = random_hex(32);
    server
        .refresh_tokens
        .lock()
        .unwrap()
        .insert(refresh_token.clone(), username);
    let body = json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": server.ttl.as_secs(),
        "refresh_token": refresh_token,
    });
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
    State(server): State<Arc<Server>>,
    Extension(Verified(claims)): Extension<Verified<TokenClaims>>,
) -> Response {
    match server.accounts.lock().unwrap().get(&claims.sub) {
        Some(account) => Json(account.user.clone()).into_response(),
        None => detail(StatusCode::NOT_FOUND, "no such user"),
    }
}

/// `GET /token/expired`: the signature is checked; the expiry is reported, not enforced.
async fn expired(State(server): State<Arc<Server>>, headers: axum::http::HeaderMap) -> Response {
    let token = match tower_bearer::server::header::bearer_token(&headers, 8 * 1024) {
        Ok(token) => token,
        Err(rejection) => return rejection.http_response("zebbra"),
    };
    let validation = Validation {
        validate_exp: false,
        leeway: 0,
        ..Validation::default()
    };
    match jsonwebtoken::decode::<TokenClaims>(token, &server.decoding, &validation) {
        Ok(data) => Json(json!({ "expired": unix_now() >= data.claims.exp })).into_response(),
        Err(_) => Rejection::invalid_token("the token is not genuine").http_response("zebbra"),
    }
}

fn app(server: Arc<Server>) -> Router {
    let decoding = server.decoding.clone();
    // The server checks its own tokens strictly: no leeway.
    let validation = Validation {
        leeway: 0,
        ..Validation::default()
    };
    let check = validator::from_fn(move |token: &str| {
        let claims = jsonwebtoken::decode::<TokenClaims>(token, &decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Rejection::invalid_token("the token has expired")
                }
                _ => Rejection::invalid_token("the token is not genuine"),
            })?;
        // RFC 7519: not accepted on or after `exp` (jsonwebtoken still accepts the
        // second of `exp` itself).
        if unix_now() >= claims.exp {
            return Err(Rejection::invalid_token("the token has expired"));
        }
        Ok(claims)
    });
    let protected = Router::new()
        .route("/user", get(user))
        .layer(RequireBearerLayer::new(check).realm("zebbra"));
    Router::new()
        .route("/register", post(register))
        .route("/token", post(token))
        .route("/token/expired", get(expired))
        .merge(protected)
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(server)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let secret: [u8; 32] = std::array::from_fn(|_| fastrand::u8(..));
    let server = Arc::new(Server {
        accounts: Mutex::new(HashMap::new()),
        refresh_tokens: Mutex::new(HashMap::new()),
        encoding: EncodingKey::from_secret(&secret),
        decoding: DecodingKey::from_secret(&secret),
        ttl: args.token_ttl,
    });
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    println!(
        "token server listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app(server)).await?;
    Ok(())
}
