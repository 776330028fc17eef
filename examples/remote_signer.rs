//! Keys that never leave their vault: the client's private keys are in a "KMS" (a
//! small HTTP signing service, on 127.0.0.1 in this process), and every signature
//! the client needs is a request to it: the `private_key_jwt` assertion of each
//! token request, and the DPoP proof of each token request and each API call.
//!
//! ```text
//! cargo run --example remote_signer --features dpop
//! ```
//!
//! - The KMS holds two keys (ES256, made at start-up) and answers
//!   `GET /keys/<name>` (the public JWK) and `POST /keys/<name>/sign` (the JWS
//!   signature of the body). Its keys are the crate's in-memory [`DpopKey`]s, used
//!   through the same [`Signer`] trait the client uses for the remote ones.
//! - The client: a [`Signer`] that calls the KMS ([`KmsSigner`]), given to
//!   [`AssertionKey::from_signer`] (client authentication) and
//!   [`DpopKey::from_signer`] (proofs); a [`Dpop`] authorizer over a [`Refreshing`]
//!   cache in an [`AuthorizeLayer`] over a hyper client.
//! - A token endpoint (in this process) that knows the client by its public key
//!   only: it verifies the assertion and the proof, and issues tokens bound to the
//!   DPoP key; an API behind `RequireBearerLayer::dpop`.
//!
//! Last, a KMS key that never answers: the signature fails at the signer's deadline
//! (200 ms here; 5 s by default) with a clear error, and nothing is sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::Full;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{
    AssertionKey, AuthorizeLayer, ClientAssertion, Dpop, DpopKey, Refreshing, Signer,
    TokenEndpoint, TokenSource,
};
use tower_bearer::server::dpop::thumbprint;
use tower_bearer::server::{Claims, DpopVerifier, JwtValidator, RequireBearerLayer, Verified};
use tower_bearer::Error;

const CLIENT_ID: &str = "vault-client";
/// The token endpoint's HMAC key for the access tokens it issues.
const TOKEN_SECRET: &[u8] = b"the remote_signer example's token key";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kms = start_kms().await?;
    println!("KMS: {kms}");

    // The client's keys, as the KMS describes them: no private key in this process.
    let client_key = KmsSigner::connect(&kms, "client-key", None).await?;
    let registered = client_key.jwk.clone();
    let assertion_key = AssertionKey::from_signer(client_key)?;
    let dpop_key = DpopKey::from_signer(KmsSigner::connect(&kms, "dpop-key", None).await?)?;
    println!(
        "DPoP key in the KMS: {:?}, thumbprint {}",
        dpop_key.algorithm(),
        dpop_key.thumbprint()
    );

    // The token endpoint knows the client by its public key; the API checks proofs.
    let token_url = start_token_endpoint(registered).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}/whoami", listener.local_addr()?);
    let verifier = DpopVerifier::new()
        .default_scheme("http")?
        .require_nonces()?;
    let app = Router::new()
        .route("/whoami", get(whoami))
        .layer(RequireBearerLayer::new(JwtValidator::<Claims>::hmac(TOKEN_SECRET)).dpop(verifier));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let endpoint = TokenEndpoint::insecure_http(&token_url)?
        .client_id(CLIENT_ID)
        .auth_method(ClientAssertion::private_key(assertion_key.clone()))
        .dpop(dpop_key.clone());
    let cache = Refreshing::new(endpoint.client_credentials());
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(Dpop::new(dpop_key, cache.clone())).retry_unauthorized())
        .service(hyper);
    let mut accepted = 0;
    for i in 1..=3 {
        let req = http::Request::get(&api).body(Full::default())?;
        let res = client.clone().oneshot(req).await?;
        println!("request {i}: {}", res.status());
        accepted += u32::from(res.status() == StatusCode::OK);
    }
    println!(
        "{accepted} of 3 requests accepted, {} token(s) fetched",
        cache.stats().refreshes
    );

    // A key whose KMS never answers: bounded by the deadline, nothing sent.
    let slow = KmsSigner::connect(&kms, "client-key", Some("hang")).await?;
    let slow = AssertionKey::from_signer_with_deadline(slow, Duration::from_millis(200))?;
    let stuck = TokenEndpoint::insecure_http(&token_url)?
        .client_id(CLIENT_ID)
        .auth_method(ClientAssertion::private_key(slow));
    match stuck.client_credentials().fetch(None).await {
        Err(e @ Error::SignerTimeout(_)) => println!("a hanging KMS: {e}"),
        other => return Err(format!("expected the signer's deadline, got {other:?}").into()),
    }
    if accepted != 3 {
        return Err("some requests were refused".into());
    }
    println!("every request accepted");
    Ok(())
}

async fn whoami(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
    claims.sub.unwrap_or_default()
}

// ---------------------------------------------------------------------------------
// The client side of the KMS: a `Signer` whose every signature is an HTTP request.

/// A key in the KMS, by name.
struct KmsSigner {
    http: reqwest::Client,
    sign_url: String,
    alg: Algorithm,
    jwk: Value,
    kid: String,
}

impl KmsSigner {
    /// Asks the KMS for the key's algorithm and public JWK (`path` overrides the
    /// signing path: `hang` is one that never answers).
    async fn connect(kms: &str, name: &str, path: Option<&str>) -> Result<Self, Error> {
        let http = reqwest::Client::new();
        let unreachable = |_| Error::Signer("the KMS is unreachable".into());
        let body = http
            .get(format!("{kms}/keys/{name}"))
            .send()
            .await
            .map_err(unreachable)?
            .bytes()
            .await
            .map_err(unreachable)?;
        let info: Value = serde_json::from_slice(&body)
            .map_err(|_| Error::Signer("the KMS's key description is not JSON".into()))?;
        let alg = match info["alg"].as_str() {
            Some("ES256") => Algorithm::ES256,
            Some("EdDSA") => Algorithm::EdDSA,
            _ => {
                return Err(Error::Signer(
                    "the KMS key's algorithm is not supported".into(),
                ))
            }
        };
        Ok(KmsSigner {
            http,
            sign_url: format!("{kms}/keys/{name}/{}", path.unwrap_or("sign")),
            alg,
            jwk: info["jwk"].clone(),
            kid: name.to_owned(),
        })
    }
}

impl Signer for KmsSigner {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    fn key_id(&self) -> Option<&str> {
        Some(&self.kid)
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        Box::pin(async move {
            let res = self
                .http
                .post(&self.sign_url)
                .body(message.to_vec())
                .send()
                .await
                .map_err(|_| Error::Signer("the KMS is unreachable".into()))?;
            if !res.status().is_success() {
                // Its status only: a KMS's error body is not ours to repeat.
                let status = res.status().as_u16();
                return Err(Error::Signer(format!("the KMS answered {status}")));
            }
            let signature = res
                .bytes()
                .await
                .map_err(|_| Error::Signer("the KMS's answer was cut short".into()))?;
            Ok(signature.to_vec())
        })
    }
}

// ---------------------------------------------------------------------------------
// The KMS: in-memory keys behind HTTP.

async fn start_kms() -> std::io::Result<String> {
    let mut keys = HashMap::new();
    for name in ["client-key", "dpop-key"] {
        keys.insert(
            name.to_owned(),
            DpopKey::generate().map_err(std::io::Error::other)?,
        );
    }
    let app = Router::new()
        .route("/keys/{name}", get(describe))
        .route("/keys/{name}/sign", post(sign))
        .route("/keys/{name}/hang", post(hang))
        .with_state(Arc::new(keys));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

type Keys = Arc<HashMap<String, DpopKey>>;

async fn describe(State(keys): State<Keys>, Path(name): Path<String>) -> Response {
    match keys.get(&name) {
        Some(key) => Json(json!({ "alg": "ES256", "jwk": key.public_jwk() })).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn sign(State(keys): State<Keys>, Path(name): Path<String>, message: Bytes) -> Response {
    let Some(key) = keys.get(&name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match key.sign(&message).await {
        Ok(signature) => signature.into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn hang() -> Response {
    std::future::pending().await
}

// ---------------------------------------------------------------------------------
// The token endpoint: `private_key_jwt` checked with the registered public key, a
// DPoP proof required, HS256 access tokens bound to the proof's key.

struct Registration {
    token_url: String,
    client_key: DecodingKey,
}

async fn start_token_endpoint(client_jwk: Value) -> Result<String, Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let token_url = format!("http://{}/token", listener.local_addr()?);
    let jwk: Jwk = serde_json::from_value(client_jwk)?;
    let state = Arc::new(Registration {
        token_url: token_url.clone(),
        client_key: DecodingKey::from_jwk(&jwk)?,
    });
    let app = Router::new().route("/token", post(token)).with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(token_url)
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({ "error": code }))).into_response()
}

async fn token(
    State(reg): State<Arc<Registration>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[&reg.token_url]);
    validation.set_issuer(&[CLIENT_ID]);
    let authenticated = field("client_id") == CLIENT_ID
        && field("client_assertion_type") == tower_bearer::client::CLIENT_ASSERTION_TYPE
        && jsonwebtoken::decode::<Value>(field("client_assertion"), &reg.client_key, &validation)
            .is_ok_and(|t| t.claims["sub"] == CLIENT_ID && t.claims["jti"].is_string());
    if !authenticated {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let Some(jkt) = headers
        .get("dpop")
        .and_then(|p| p.to_str().ok())
        .and_then(|p| check_proof(p, &reg.token_url))
    else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof");
    };
    let now = unix_now();
    let claims = json!({ "sub": CLIENT_ID, "iat": now, "exp": now + 60, "cnf": { "jkt": jkt } });
    let Ok(access) = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TOKEN_SECRET),
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
