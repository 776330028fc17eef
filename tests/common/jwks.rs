//! A test identity provider that publishes keys: OIDC discovery, a JWKS whose
//! answer can be changed, delayed (a gate), failed or given a `Cache-Control`, and
//! that counts its fetches; RSA keys and JWT minting for it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::server::{key, now_plus, serve};

#[derive(Default)]
pub struct IdpState {
    pub issuer: Mutex<String>,
    /// When set, the discovery document names this issuer instead.
    pub claimed_issuer: Mutex<Option<String>>,
    pub keys: Mutex<Value>,
    pub cache_control: Mutex<Option<String>>,
    pub down: AtomicBool,
    pub jwks_fetches: AtomicUsize,
    pub discoveries: AtomicUsize,
    pub attacker_fetches: AtomicUsize,
    /// While false, the JWKS answer is held back.
    pub gate: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

pub struct Idp {
    pub state: Arc<IdpState>,
    pub issuer: String,
    pub gate: tokio::sync::watch::Sender<bool>,
}

impl Idp {
    pub async fn start(keys: Vec<Value>) -> Idp {
        let state = Arc::new(IdpState::default());
        *state.keys.lock().unwrap() = json!({ "keys": keys });
        let (gate, rx) = tokio::sync::watch::channel(true);
        *state.gate.lock().unwrap() = Some(rx);
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/attacker-jwks", get(attacker_jwks))
            .with_state(Arc::clone(&state));
        let addr = serve(app).await;
        let issuer = format!("http://{addr}");
        *state.issuer.lock().unwrap() = issuer.clone();
        Idp {
            state,
            issuer,
            gate,
        }
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    pub fn set_keys(&self, keys: Vec<Value>) {
        *self.state.keys.lock().unwrap() = json!({ "keys": keys });
    }

    pub fn fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn discovery(State(s): State<Arc<IdpState>>) -> impl IntoResponse {
    s.discoveries.fetch_add(1, Ordering::SeqCst);
    let issuer = s.issuer.lock().unwrap().clone();
    let claimed = s.claimed_issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": claimed.unwrap_or_else(|| issuer.clone()),
        "jwks_uri": format!("{issuer}/jwks"),
    }))
}

async fn jwks(State(s): State<Arc<IdpState>>) -> axum::response::Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    let gate = s.gate.lock().unwrap().clone();
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    if s.down.load(Ordering::SeqCst) {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
    }
    let body = s.keys.lock().unwrap().clone();
    let mut res = Json(body).into_response();
    if let Some(cc) = s.cache_control.lock().unwrap().clone() {
        res.headers_mut()
            .insert("cache-control", cc.parse().unwrap());
    }
    res
}

async fn attacker_jwks(State(s): State<Arc<IdpState>>) -> Json<Value> {
    s.attacker_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": [public_jwk(&rsa2(), "k9")] }))
}

pub fn rsa1() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key("rsa.key")).unwrap()
}

pub fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(&key("rsa2.key")).unwrap()
}

pub fn public_jwk(key: &EncodingKey, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

pub fn mint(key: &EncodingKey, header: Header, iss: &str, sub: &str) -> String {
    let claims = json!({ "sub": sub, "iss": iss, "aud": "api", "exp": now_plus(600) });
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

/// A token with this header and a fake signature.
pub fn unsigned(header: &Header) -> String {
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let claims = json!({ "sub": "mallory", "exp": now_plus(600) });
    format!(
        "{}.{}.c2ln",
        b64(&serde_json::to_value(header).unwrap()),
        b64(&claims)
    )
}

pub fn rs256(kid: &str) -> Header {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    h
}

/// Moves the tokio clock past the fetch cool-down (30 s) and lets it run on; the
/// servers keep using real sockets.
pub async fn skip(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(secs)).await;
    tokio::time::resume();
}

/// [`skip`] by milliseconds.
pub async fn skip_ms(ms: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(ms)).await;
    tokio::time::resume();
}

/// Waits (yielding, never sleeping a guessed time) until `cond` holds.
pub async fn until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("condition not reached");
}
