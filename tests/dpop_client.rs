//! The DPoP client (RFC 9449) against real loopback servers: a token endpoint that
//! checks its proofs and demands a nonce, and an axum API behind the crate's own
//! `RequireBearerLayer::dpop`, whose `DpopVerifier` checks every proof field.
#![cfg(all(feature = "dpop", feature = "reqwest"))]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::client::{
    AuthorizeLayer, AuthorizeMiddleware, Dpop, DpopKey, Refreshing, TokenEndpoint,
};
use tower_bearer::server::dpop::{thumbprint, DpopError, DpopVerifier};
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, Verified};
use tower_bearer::{Endpoint, Error};

const SECRET: &[u8] = b"dpop-client-test-secret-of-32-bytes";
const AS_NONCE: &str = "as-nonce-1";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn decode(part: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// How the token endpoint answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TokenType {
    /// `DPoP`, bound to the proof's key.
    Dpop,
    /// `DPoP`, the first token bound to another key.
    DpopFirstMisbound,
    /// `Bearer` (a server that ignores DPoP).
    Bearer,
}

struct As {
    addr: Mutex<Option<SocketAddr>>,
    answer: TokenType,
    /// Every token request: its proof's header and claims (or none).
    proofs: Mutex<Vec<Option<(Value, Value)>>>,
    issued: AtomicUsize,
}

/// The token endpoint: checks the proof (with the crate's verifier for everything
/// a token request's proof has: signature, typ, htm, htu, iat), demands its nonce
/// first, and issues HS256 JWTs bound (`cnf.jkt`) to the proof's key.
async fn token(State(state): State<Arc<As>>, headers: HeaderMap) -> Response {
    let addr = state.addr.lock().unwrap().unwrap();
    let Some(proof) = headers.get("dpop").map(|p| p.to_str().unwrap().to_owned()) else {
        state.proofs.lock().unwrap().push(None);
        return issue(&state, None);
    };
    let parts: Vec<&str> = proof.split('.').collect();
    let (header, claims) = (decode(parts[0]), decode(parts[1]));
    state
        .proofs
        .lock()
        .unwrap()
        .push(Some((header.clone(), claims.clone())));
    // A token request's proof has no `ath`: the verifier passes every check before
    // that one.
    let verifier = DpopVerifier::new()
        .external_origin(&format!("http://{addr}"))
        .unwrap();
    let checked = verifier.check(&Method::POST, &"/token".parse().unwrap(), &headers, "");
    assert_eq!(checked.unwrap_err(), DpopError::AccessTokenHash);
    if claims.get("nonce").and_then(Value::as_str) != Some(AS_NONCE) {
        return (
            StatusCode::BAD_REQUEST,
            [
                ("dpop-nonce", AS_NONCE),
                ("content-type", "application/json"),
            ],
            r#"{"error":"use_dpop_nonce","error_description":"use the nonce"}"#,
        )
            .into_response();
    }
    let jwk: Jwk = serde_json::from_value(header["jwk"].clone()).unwrap();
    issue(&state, Some(thumbprint(&jwk).unwrap()))
}

fn issue(state: &As, jkt: Option<String>) -> Response {
    let n = state.issued.fetch_add(1, Ordering::SeqCst);
    let jkt = match state.answer {
        TokenType::DpopFirstMisbound if n == 0 => Some("not-the-clients-key".to_owned()),
        _ => jkt,
    };
    let mut claims = json!({ "sub": "svc", "exp": unix_now() + 600, "n": n });
    if let Some(jkt) = jkt {
        claims["cnf"] = json!({ "jkt": jkt });
    }
    let access = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let token_type = match state.answer {
        TokenType::Bearer => "Bearer",
        _ => "DPoP",
    };
    axum::Json(json!({ "access_token": access, "token_type": token_type, "expires_in": 600 }))
        .into_response()
}

async fn start_as(answer: TokenType) -> (SocketAddr, Arc<As>) {
    let state = Arc::new(As {
        addr: Mutex::new(None),
        answer,
        proofs: Mutex::new(Vec::new()),
        issued: AtomicUsize::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    *state.addr.lock().unwrap() = Some(addr);
    let app = Router::new()
        .route("/token", post(token))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, state)
}

/// The API: `RequireBearerLayer::dpop` with the crate's verifier, nonces required
/// when `nonces`; counts the requests it gets.
async fn start_api(nonces: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    async fn whoami(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut verifier = DpopVerifier::new()
        .external_origin(&format!("http://{addr}"))
        .unwrap();
    if nonces {
        verifier = verifier
            .nonces(
                b"api-nonce-secret-0123456789abcdef",
                Duration::from_secs(300),
            )
            .unwrap();
    }
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let app = Router::new()
        .route("/items", get(whoami).post(whoami))
        .layer(RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET)).dpop(verifier))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counted.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

fn endpoint(addr: SocketAddr, key: &DpopKey) -> TokenEndpoint {
    TokenEndpoint::new(&format!("http://{addr}/token"))
        .unwrap()
        .client_id("svc")
        .client_secret("svc-secret")
        .dpop(key.clone())
}

type Hyper = Client<HttpConnector, Full<Bytes>>;

fn hyper() -> Hyper {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn call<S>(svc: &mut S, method: Method, url: &str) -> (u16, String)
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Debug,
{
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn every_request_carries_a_proof_the_crates_own_verifier_accepts() {
    let (as_addr, as_state) = start_as(TokenType::Dpop).await;
    let (api, hits) = start_api(false).await;
    let key = DpopKey::generate().unwrap();
    let authorizer = Dpop::new(
        key.clone(),
        Refreshing::new(endpoint(as_addr, &key).client_credentials()),
    );
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer).retry_unauthorized())
        .service(hyper());
    // Each proof is used once (the API's replay cache refuses a second use), for
    // its method and URL (the query is not part of `htu`).
    for i in 0..10 {
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        let url = format!("http://{api}/items?page={i}#frag");
        assert_eq!(call(&mut client, method, &url).await, (200, "svc".into()));
    }
    assert_eq!(hits.load(Ordering::SeqCst), 10, "no replay was needed");
    // One token, after one use_dpop_nonce round trip.
    assert_eq!(as_state.issued.load(Ordering::SeqCst), 1);
    let proofs = as_state.proofs.lock().unwrap().clone();
    assert_eq!(proofs.len(), 2, "the nonce retry and nothing more");
    let (h0, c0) = proofs[0].clone().expect("a proof");
    let (h1, c1) = proofs[1].clone().expect("a proof");
    assert_eq!(h0["typ"], "dpop+jwt");
    assert_eq!(h0["alg"], "ES256");
    assert_eq!(h0["jwk"]["kty"], "EC");
    assert!(h0["jwk"].get("d").is_none(), "no private member in the jwk");
    assert_eq!(c0["htm"], "POST");
    assert_eq!(c0["htu"], format!("http://{as_addr}/token"));
    assert!(c0.get("ath").is_none() && c0.get("nonce").is_none());
    assert_eq!(c1["nonce"], AS_NONCE);
    assert_ne!(c0["jti"], c1["jti"], "every proof has its own jti");
    assert_eq!(h0, h1);
    let jwk: Jwk = serde_json::from_value(h0["jwk"].clone()).unwrap();
    assert_eq!(thumbprint(&jwk).as_deref(), Some(key.thumbprint()));
}

#[tokio::test]
async fn the_resource_servers_nonce_is_learned_and_the_request_replayed_once() {
    let (as_addr, as_state) = start_as(TokenType::Dpop).await;
    let (api, hits) = start_api(true).await;
    let key = DpopKey::generate().unwrap();
    let authorizer = Dpop::new(
        key.clone(),
        Refreshing::new(endpoint(as_addr, &key).client_credentials()),
    );
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()).retry_unauthorized())
        .service(hyper());
    let items = format!("http://{api}/items");
    assert_eq!(
        call(&mut client, Method::GET, &items).await,
        (200, "svc".into())
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "a use_dpop_nonce answer, then the replay"
    );
    for _ in 0..5 {
        assert_eq!(
            call(&mut client, Method::GET, &items).await,
            (200, "svc".into())
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 7, "the nonce is remembered");
    assert_eq!(
        as_state.issued.load(Ordering::SeqCst),
        1,
        "use_dpop_nonce does not cost the token"
    );
    let stats = authorizer.get_ref().stats();
    assert_eq!(stats.refreshes, 1, "{stats:?}");
}

#[tokio::test]
async fn without_replay_the_nonce_answer_is_returned_and_the_next_request_carries_it() {
    let (as_addr, as_state) = start_as(TokenType::Dpop).await;
    let (api, hits) = start_api(true).await;
    let key = DpopKey::generate().unwrap();
    let authorizer = Dpop::new(
        key.clone(),
        Refreshing::new(endpoint(as_addr, &key).client_credentials()),
    );
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer))
        .service(hyper());
    let items = format!("http://{api}/items");
    assert_eq!(call(&mut client, Method::GET, &items).await.0, 401);
    assert_eq!(
        call(&mut client, Method::GET, &items).await,
        (200, "svc".into())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(
        as_state.issued.load(Ordering::SeqCst),
        1,
        "the token was kept"
    );
}

#[tokio::test]
async fn the_reqwest_middleware_sends_proofs_and_replays_the_nonce_answer() {
    let (as_addr, as_state) = start_as(TokenType::Dpop).await;
    let (api, hits) = start_api(true).await;
    let key = DpopKey::generate().unwrap();
    let authorizer = Dpop::new(
        key.clone(),
        Refreshing::new(endpoint(as_addr, &key).client_credentials()),
    );
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(authorizer))
        .build();
    for i in 0..4 {
        let res = client
            .post(format!("http://{api}/items?i={i}"))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(res.text().await.unwrap(), "svc");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 5, "one nonce round trip");
    assert_eq!(as_state.issued.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_dpop_invalid_token_answer_refuses_the_token_as_a_bearer_one_would() {
    // The first token is bound to another key: the API answers `DPoP
    // error="invalid_token"`, the cache drops it, and the replay carries a new one.
    let (as_addr, as_state) = start_as(TokenType::DpopFirstMisbound).await;
    let (api, hits) = start_api(false).await;
    let key = DpopKey::generate().unwrap();
    let authorizer = Dpop::new(
        key.clone(),
        Refreshing::new(endpoint(as_addr, &key).client_credentials()),
    );
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer).retry_unauthorized())
        .service(hyper());
    let items = format!("http://{api}/items");
    assert_eq!(
        call(&mut client, Method::GET, &items).await,
        (200, "svc".into())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(as_state.issued.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_token_type_other_than_the_one_asked_for_is_refused() {
    // A DPoP client given a bearer token: it would go unprotected.
    let (as_addr, _) = start_as(TokenType::Bearer).await;
    let key = DpopKey::generate().unwrap();
    let err = endpoint(as_addr, &key)
        .request(&[("grant_type", "client_credentials")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Token, why) if why.contains("is not DPoP")),
        "{err:?}"
    );
    // A bearer client given a DPoP-bound token: it cannot use it. (That server
    // wants a nonce: the proofless request gets a token at once.)
    let (as_addr, _) = start_as(TokenType::Dpop).await;
    let bearer = TokenEndpoint::new(&format!("http://{as_addr}/token"))
        .unwrap()
        .client_id("svc")
        .client_secret("svc-secret");
    let err = bearer
        .request(&[("grant_type", "client_credentials")])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Token, why) if why.contains("is not bearer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn the_same_token_sent_as_bearer_is_refused() {
    let (as_addr, _) = start_as(TokenType::Dpop).await;
    let (api, _) = start_api(false).await;
    let key = DpopKey::generate().unwrap();
    let token = endpoint(as_addr, &key)
        .request(&[("grant_type", "client_credentials")])
        .await
        .unwrap();
    assert!(token.is_dpop());
    assert!(token.authorization().to_str().unwrap().starts_with("DPoP "));
    let res = reqwest::Client::new()
        .get(format!("http://{api}/items"))
        .bearer_auth(token.expose_access_token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
}

#[test]
fn debug_never_shows_the_private_key() {
    let secret = [7u8; 32];
    let key = DpopKey::from_es256_secret(&secret).unwrap();
    let endpoint = TokenEndpoint::new("https://idp.example.com/token")
        .unwrap()
        .dpop(key.clone());
    let printed = format!(
        "{key:?} {endpoint:?} {:?}",
        Dpop::new(key.clone(), tower_bearer::client::NoAuth)
    );
    for needle in [
        URL_SAFE_NO_PAD.encode(secret),
        base64::engine::general_purpose::STANDARD.encode(secret),
        "0707070707".to_owned(),
        "[7, 7".to_owned(),
    ] {
        assert!(!printed.contains(&needle), "{printed}");
    }
    assert!(printed.contains(key.thumbprint()));
    assert!(DpopKey::from_es256_secret(&[0u8; 32]).is_err());
    assert!(DpopKey::from_es256_secret(b"short").is_err());
}

#[test]
fn a_relative_target_cannot_be_proven() {
    let key = DpopKey::generate().unwrap();
    let err = key
        .proof(&Method::GET, &"/relative".parse().unwrap(), Some("t"))
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)));
}

#[test]
fn keys_from_pem_sign_proofs_the_verifier_accepts() {
    let read =
        |f: &str| std::fs::read(format!("{}/tests/keys/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let verifier = DpopVerifier::new()
        .algorithms(&[
            Algorithm::ES256,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::PS256,
        ])
        .unwrap()
        .external_origin("https://api.example.com")
        .unwrap();
    for (alg, file) in [
        (Algorithm::ES256, "ec256.key"),
        (Algorithm::EdDSA, "ed25519.key"),
        (Algorithm::RS256, "rsa.key"),
        (Algorithm::PS256, "rsa.key"),
    ] {
        let key = DpopKey::from_pem(alg, &read(file)).unwrap();
        assert_eq!(key.algorithm(), alg);
        let again = DpopKey::from_pem(alg, &read(file)).unwrap();
        assert_eq!(
            key.thumbprint(),
            again.thumbprint(),
            "the same key, the same jkt"
        );
        let url = "https://api.example.com/items?x=1".parse().unwrap();
        let proof = key.proof(&Method::GET, &url, Some("tok")).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("dpop", proof);
        let checked = verifier
            .check(&Method::GET, &"/items".parse().unwrap(), &headers, "tok")
            .unwrap();
        assert_eq!(checked.jkt(), key.thumbprint(), "{alg:?}");
        let header = decode(headers["dpop"].to_str().unwrap().split('.').next().unwrap());
        assert_eq!(header["alg"], format!("{alg:?}"));
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(header["jwk"].get(private).is_none(), "{alg:?}: {private}");
        }
    }
    // The wrong kind of key, a symmetric or unsupported algorithm, or no PEM at all.
    assert!(DpopKey::from_pem(Algorithm::EdDSA, &read("ec256.key")).is_err());
    assert!(DpopKey::from_pem(Algorithm::ES256, &read("ed25519.key")).is_err());
    assert!(DpopKey::from_pem(Algorithm::RS256, &read("ec256.key")).is_err());
    assert!(DpopKey::from_pem(Algorithm::ES256, &read("rsa.key")).is_err());
    assert!(DpopKey::from_pem(Algorithm::HS256, &read("rsa.key")).is_err());
    assert!(DpopKey::from_pem(Algorithm::ES384, &read("ec384.key")).is_err());
    assert!(DpopKey::from_pem(Algorithm::ES256, b"not a pem").is_err());
}

#[test]
fn an_rsa_key_under_2048_bits_is_refused() {
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/keys/rsa1024.key"
    ))
    .unwrap();
    let err = DpopKey::from_pem(Algorithm::RS256, &pem).unwrap_err();
    assert!(err.to_string().contains("1024 bits"), "{err}");
}

#[test]
fn a_key_written_out_reads_back_as_the_same_key() {
    for key in [
        DpopKey::generate().unwrap(),
        DpopKey::from_pem(
            Algorithm::PS256,
            &std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa.key")).unwrap(),
        )
        .unwrap(),
    ] {
        let pem = key.to_pkcs8_pem().unwrap();
        let pem = secrecy::ExposeSecret::expose_secret(&pem);
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let again = DpopKey::from_pem(key.algorithm(), pem.as_bytes()).unwrap();
        assert_eq!(again.thumbprint(), key.thumbprint());
        assert_eq!(again.algorithm(), key.algorithm());
    }
}

#[test]
fn load_or_generate_keeps_one_key_across_restarts() {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-dpop-key-{}-{}",
        std::process::id(),
        unix_now()
    ));
    let path = dir.join("keys").join("dpop.pem");
    let first = DpopKey::load_or_generate(&path).unwrap();
    assert_eq!(first.algorithm(), Algorithm::ES256);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the key file is its owner's only");
    }
    // A restart: the same key, so the tokens bound to it stay usable.
    let second = DpopKey::load_or_generate(&path).unwrap();
    assert_eq!(second.thumbprint(), first.thumbprint());
    // Many processes at once: the one that wrote first gives everyone its key.
    let raced = dir.join("raced.pem");
    let keys: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| s.spawn(|| DpopKey::load_or_generate(&raced).unwrap()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().thumbprint().to_owned())
            .collect()
    });
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file left behind: {left:?}");
    // A file that is not a key is an error, and is left as it was.
    let bad = dir.join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    assert!(DpopKey::load_or_generate(&bad).is_err());
    assert_eq!(std::fs::read_to_string(&bad).unwrap(), "not a key");
    std::fs::remove_dir_all(&dir).unwrap();
}
