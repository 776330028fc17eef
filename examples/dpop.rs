//! DPoP end to end (RFC 9449): a client whose tokens are bound to its key calls an
//! axum API that checks the binding.
//!
//! ```text
//! cargo run --example dpop --features dpop
//! cargo run --example dpop --features dpop -- --issuer http://127.0.0.1:9000 \
//!     --client-id svc-basic --client-secret basic-secret-0123456789 \
//!     --resource https://api.jwt.test
//! ```
//!
//! - The client: a fresh ES256 [`DpopKey`]; a [`TokenEndpoint`] (discovered from
//!   `--issuer`, or a tiny token server in this process) that asks for DPoP-bound
//!   tokens; the [`Dpop`] authorizer over a [`Refreshing`] cache in an
//!   [`AuthorizeLayer`] over a hyper client. Every request carries
//!   `Authorization: DPoP <token>` and a fresh proof.
//! - The API, on 127.0.0.1: `RequireBearerLayer::dpop` with a [`DpopVerifier`] that
//!   asks for its own nonces, over `JwksValidator::discover(issuer)` (or the tiny
//!   server's HMAC key).
//!
//! A few tasks call the API for `--seconds`; the example prints how many requests
//! were accepted and how many tokens it took, then sends the token as a plain
//! Bearer, which the API refuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use clap::Parser;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Dpop, DpopKey, Refreshing, TokenEndpoint};
use tower_bearer::server::dpop::thumbprint;
use tower_bearer::server::{
    Claims, DpopVerifier, JwksValidator, JwtValidator, RequireBearerLayer, Verified,
};

#[derive(Parser)]
struct Args {
    /// The issuer to discover the token endpoint and the keys from; without it, a
    /// token server in this process.
    #[arg(long)]
    issuer: Option<String>,
    /// The client's id at the issuer.
    #[arg(long, default_value = "demo-client")]
    client_id: String,
    /// The client's secret.
    #[arg(long, default_value = "demo-secret")]
    client_secret: String,
    /// The resource (RFC 8707) to ask tokens for: the API's audience.
    #[arg(long, default_value = "https://api.jwt.test")]
    resource: String,
    /// How long to call the API.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// How many tasks call it.
    #[arg(long, default_value_t = 8)]
    tasks: usize,
}

/// The tiny token server's HMAC key.
const LOCAL_SECRET: &[u8] = b"the dpop example's own signing key";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let key = DpopKey::generate()?;
    println!(
        "DPoP key {:?}, thumbprint {}",
        key.algorithm(),
        key.thumbprint()
    );

    // The API's proof checks: plain http (the origin is the request's `Host`), with
    // nonces under a secret drawn for this process (a fleet shares one through
    // `.nonces(secret, lifetime)`). Behind a proxy: `.external_origin(…)`, or
    // `.trust_forwarded()` when the proxy sets `Forwarded`.
    let verifier = DpopVerifier::new()
        .default_scheme("http")?
        .require_nonces()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin = format!("http://{}", listener.local_addr()?);

    // The token endpoint, and the API behind the DPoP-aware layer.
    let routes = Router::new().route("/whoami", get(whoami));
    let (endpoint, app) = match &args.issuer {
        Some(issuer) => {
            let audience = args.resource.clone();
            let validator = JwksValidator::<Claims>::discover(issuer)?
                .rules(move |v| v.audience(&audience))
                .build()?;
            (
                TokenEndpoint::discover(issuer).await?,
                routes.layer(RequireBearerLayer::new(validator).dpop(verifier)),
            )
        }
        None => {
            let url = local_token_server(&args).await?;
            println!("token server: {url}");
            let validator = JwtValidator::<Claims>::hmac(LOCAL_SECRET).audience(&args.resource);
            (
                TokenEndpoint::new(&url)?,
                routes.layer(RequireBearerLayer::new(validator).dpop(verifier)),
            )
        }
    };
    let endpoint = endpoint
        .client_id(&args.client_id)
        .client_secret(&args.client_secret)
        .param("resource", &args.resource)
        .dpop(key.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("API: {origin}/whoami");

    // The client.
    let cache = Refreshing::new(endpoint.client_credentials());
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(Dpop::new(key, cache.clone())).retry_unauthorized())
        .service(hyper);

    let url = format!("{origin}/whoami");
    let end = tokio::time::Instant::now() + Duration::from_secs(args.seconds);
    let (sent, accepted) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for _ in 0..args.tasks.max(1) {
        let (client, url) = (client.clone(), url.clone());
        let (sent, accepted) = (Arc::clone(&sent), Arc::clone(&accepted));
        tasks.push(tokio::spawn(async move {
            while tokio::time::Instant::now() < end {
                let req = http::Request::get(&url).body(Full::default()).unwrap();
                sent.fetch_add(1, Ordering::Relaxed);
                match client.clone().oneshot(req).await {
                    Ok(res) if res.status() == 200 => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(res) => eprintln!("refused: {} {:?}", res.status(), res.headers()),
                    Err(e) => eprintln!("failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let (sent, accepted) = (
        sent.load(Ordering::Relaxed),
        accepted.load(Ordering::Relaxed),
    );
    let tokens = cache.stats().refreshes;
    println!("{accepted} of {sent} requests accepted, {tokens} token(s) fetched");
    if sent > 0 && accepted == sent {
        println!("every request accepted");
    }

    // Stolen, the token alone is no use: sent as a plain Bearer, it is refused.
    let token = cache.token().await?;
    let res = reqwest::Client::new()
        .get(&url)
        .bearer_auth(token.expose_access_token())
        .send()
        .await?;
    println!("the same token as Bearer: {}", res.status().as_u16());
    if accepted != sent {
        return Err("some requests were refused".into());
    }
    Ok(())
}

async fn whoami(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
    claims.sub.unwrap_or_default()
}

/// A token server for the offline run: the client-credentials grant of
/// `--client-id`, a DPoP proof required (its signature, `typ`, `htm`, `htu` and
/// `iat` checked), HS256 access tokens bound to the proof's key for 60 s.
async fn local_token_server(args: &Args) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/token", listener.local_addr()?);
    let state = Arc::new(Local {
        url: url.clone(),
        client: (args.client_id.clone(), args.client_secret.clone()),
        audience: args.resource.clone(),
    });
    let app = Router::new().route("/token", post(token)).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

struct Local {
    url: String,
    client: (String, String),
    audience: String,
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

async fn token(
    State(local): State<Arc<Local>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", local.client.0, local.client.1))
    );
    if headers.get("authorization").map(|v| v.as_bytes()) != Some(basic.as_bytes()) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let Some(jkt) = headers
        .get("dpop")
        .and_then(|p| p.to_str().ok())
        .and_then(|p| check_proof(p, &local.url))
    else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    };
    let now = unix_now();
    let claims = json!({
        "sub": local.client.0, "aud": local.audience, "iat": now, "exp": now + 60,
        "cnf": { "jkt": jkt },
    });
    let Ok(access) = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(LOCAL_SECRET),
    ) else {
        return oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error");
    };
    Json(json!({ "access_token": access, "token_type": "DPoP", "expires_in": 60 })).into_response()
}

/// The thumbprint of a good token-request proof's key, or `None`.
fn check_proof(proof: &str, token_url: &str) -> Option<String> {
    let header = jsonwebtoken::decode_header(proof).ok()?;
    if header.typ.as_deref() != Some("dpop+jwt") || header.alg != Algorithm::ES256 {
        return None;
    }
    let jwk: Jwk = header.jwk?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let claims: Value =
        jsonwebtoken::decode(proof, &DecodingKey::from_jwk(&jwk).ok()?, &validation)
            .ok()?
            .claims;
    let fresh = claims["iat"].as_u64()?.abs_diff(unix_now()) <= 60;
    (fresh && claims["htm"] == "POST" && claims["htu"] == token_url && claims["jti"].is_string())
        .then(|| thumbprint(&jwk))?
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
