//! Keys in a vault (issue 33): a [`Signer`] that is a remote call, to a loopback
//! "KMS" (an axum server on 127.0.0.1 holding the private keys of `tests/keys` and
//! answering sign requests), used for `private_key_jwt` and the JWT-bearer grant at
//! the certified `oidc-provider`, and for DPoP proofs the crate's own
//! `RequireBearerLayer::dpop` accepts; its deadline, its failures (a `500`, junk, a
//! signature of the wrong length or by another key) and its concurrency.
#![cfg(feature = "dpop")]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::ecdsa::signature::Signer as _;
use serde_json::{json, Value};
use tokio::sync::watch;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::client::{
    AssertionKey, AuthorizeLayer, ClientAssertion, Dpop, DpopKey, Refreshing, Signer,
    TokenEndpoint, TokenSource,
};
use tower_bearer::server::dpop::{thumbprint, DpopError, DpopVerifier};
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, Verified};
use tower_bearer::Error;

/// What no error message may quote: the KMS puts it in its error answers.
const KMS_DETAIL: &str = "KMS-INTERNAL-DETAIL-7f3a";

fn key_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The public half of `tests/keys/<name>.jwk` (its private members removed).
fn public_jwk(name: &str) -> Value {
    let mut jwk: Value = serde_json::from_slice(&key_file(&format!("{name}.jwk"))).expect("a JWK");
    for private in ["d", "p", "q", "dp", "dq", "qi"] {
        jwk.as_object_mut().unwrap().remove(private);
    }
    jwk
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------
// The KMS: `POST /sign/<key>` with the signing input as the body answers the JWS
// signature bytes.

/// How the KMS answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Mode {
    Sign = 0,
    Fail500 = 1,
    /// `200` with an HTML page.
    Junk = 2,
    /// The signature without its last byte.
    Short = 3,
    /// A valid signature by another P-256 key.
    OtherKey = 4,
}

struct Kms {
    keys: HashMap<&'static str, (Algorithm, EncodingKey)>,
    other: p256::ecdsa::SigningKey,
    mode: AtomicU8,
    /// Sign requests received.
    requests: AtomicUsize,
    /// How many of the next requests are held until `release` says so.
    hold_next: AtomicUsize,
    held: watch::Sender<usize>,
    release: watch::Sender<bool>,
}

impl Kms {
    fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Sign,
            1 => Mode::Fail500,
            2 => Mode::Junk,
            3 => Mode::Short,
            _ => Mode::OtherKey,
        }
    }

    /// Holds the next `n` sign requests until [`release`](Self::release).
    fn hold(&self, n: usize) {
        self.release.send_replace(false);
        self.held.send_replace(0);
        self.hold_next.store(n, Ordering::SeqCst);
    }

    fn release(&self) {
        self.release.send_replace(true);
    }

    /// Waits (a hang guard of 30 s, not a time assertion) until `n` requests are held.
    async fn until_held(&self, n: usize) {
        let mut rx = self.held.subscribe();
        tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|held| *held >= n))
            .await
            .expect("the KMS never got the requests")
            .unwrap();
    }
}

async fn kms_sign(State(kms): State<Arc<Kms>>, Path(name): Path<String>, body: Bytes) -> Response {
    kms.requests.fetch_add(1, Ordering::SeqCst);
    if kms
        .hold_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut release = kms.release.subscribe();
        kms.held.send_modify(|n| *n += 1);
        let _ = release.wait_for(|r| *r).await;
    }
    let Some((alg, key)) = kms.keys.get(name.as_str()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let signature = || {
        let b64 = jsonwebtoken::crypto::sign(&body, key, *alg).unwrap();
        URL_SAFE_NO_PAD.decode(b64).unwrap()
    };
    match kms.mode() {
        Mode::Sign => signature().into_response(),
        Mode::Fail500 => (StatusCode::INTERNAL_SERVER_ERROR, KMS_DETAIL).into_response(),
        Mode::Junk => format!("<html>{KMS_DETAIL}</html>").into_response(),
        Mode::Short => {
            let mut s = signature();
            s.pop();
            s.into_response()
        }
        Mode::OtherKey => {
            let s: p256::ecdsa::Signature = kms.other.sign(&body);
            s.to_bytes().to_vec().into_response()
        }
    }
}

async fn start_kms() -> (SocketAddr, Arc<Kms>) {
    let mut keys = HashMap::new();
    keys.insert(
        "ec",
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(&key_file("ec256.key")).unwrap(),
        ),
    );
    keys.insert(
        "robot",
        (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(&key_file("rsa.key")).unwrap(),
        ),
    );
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    let kms = Arc::new(Kms {
        keys,
        other: p256::ecdsa::SigningKey::from_slice(&seed).unwrap(),
        mode: AtomicU8::new(Mode::Sign as u8),
        requests: AtomicUsize::new(0),
        hold_next: AtomicUsize::new(0),
        held: watch::channel(0).0,
        release: watch::channel(false).0,
    });
    let app = Router::new()
        .route("/sign/{name}", post(kms_sign))
        .with_state(kms.clone());
    (serve(app).await, kms)
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The client of the KMS: a [`Signer`] whose every signature is an HTTP request.
struct KmsSigner {
    http: reqwest::Client,
    url: String,
    alg: Algorithm,
    jwk: Value,
    kid: Option<String>,
}

impl KmsSigner {
    fn new(kms: SocketAddr, name: &str, alg: Algorithm, jwk: &str, kid: Option<&str>) -> Self {
        KmsSigner {
            http: reqwest::Client::new(),
            url: format!("http://{kms}/sign/{name}"),
            alg,
            jwk: public_jwk(jwk),
            kid: kid.map(str::to_owned),
        }
    }

    fn ec(kms: SocketAddr) -> Self {
        KmsSigner::new(kms, "ec", Algorithm::ES256, "ec256", Some("svc-ec"))
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
        self.kid.as_deref()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        Box::pin(async move {
            let res = self
                .http
                .post(&self.url)
                .body(message.to_vec())
                .send()
                .await
                .map_err(|_| Error::Signer("the KMS is unreachable".into()))?;
            if !res.status().is_success() {
                return Err(Error::Signer(format!(
                    "the KMS answered {}",
                    res.status().as_u16()
                )));
            }
            let body = res
                .bytes()
                .await
                .map_err(|_| Error::Signer("the KMS's answer was cut short".into()))?;
            Ok(body.to_vec())
        })
    }
}

// ---------------------------------------------------------------------------------
// A token endpoint of our own: it verifies the client assertion with the public key
// and counts what it sees.

#[derive(Default)]
struct TokenCounts {
    requests: AtomicUsize,
    accepted: AtomicUsize,
}

async fn start_token_endpoint() -> (String, Arc<TokenCounts>) {
    let counts = Arc::new(TokenCounts::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let aud = url.clone();
    let state = counts.clone();
    let app = Router::new().route(
        "/token",
        post(move |Form(form): Form<HashMap<String, String>>| {
            let state = state.clone();
            let aud = aud.clone();
            async move {
                state.requests.fetch_add(1, Ordering::SeqCst);
                let key = DecodingKey::from_ec_pem(&key_file("ec256.pub.pem")).unwrap();
                let mut validation = Validation::new(Algorithm::ES256);
                validation.set_audience(&[aud]);
                validation.set_issuer(&["svc"]);
                let assertion = form.get("client_assertion").cloned().unwrap_or_default();
                if jsonwebtoken::decode::<Value>(&assertion, &key, &validation).is_err() {
                    return (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(json!({ "error": "invalid_client" })),
                    )
                        .into_response();
                }
                state.accepted.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({
                    "access_token": "issued-token",
                    "token_type": "Bearer",
                    "expires_in": 600
                }))
                .into_response()
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, counts)
}

/// `private_key_jwt` (ES256) and the JWT-bearer grant (RS256), both signed by the
/// KMS, accepted by the certified provider; a signature by another key is caught
/// before it is sent: the provider never sees it.
#[cfg(feature = "reqwest")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_provider_accepts_assertions_signed_by_the_kms() {
    use tower_bearer::client::source::JwtBearer;
    let Some(provider) = common::provider::Provider::start().await else {
        return;
    };
    let (kms_addr, kms) = start_kms().await;
    let key = AssertionKey::from_signer(KmsSigner::ec(kms_addr)).unwrap();
    assert!(key.is_remote());
    assert_eq!(key.algorithm(), Algorithm::ES256);
    let endpoint = TokenEndpoint::discover(&provider.issuer)
        .await
        .unwrap()
        .client_id("svc-private-key-jwt")
        .auth_method(ClientAssertion::private_key(key));
    let grant = endpoint.client_credentials().scope("read");
    let token = grant.fetch(None).await.expect("the provider accepts it");
    assert!(!token.is_expired());
    assert_eq!(kms.requests.load(Ordering::SeqCst), 1, "signed by the KMS");
    assert_eq!(provider.count("token:client_credentials").await, 1);
    assert_eq!(provider.count("token:client_credentials:error").await, 0);

    // The JWT-bearer grant: the service account's RSA key is in the KMS.
    let robot = KmsSigner::new(kms_addr, "robot", Algorithm::RS256, "rsa", Some("robot"));
    let bearer = JwtBearer::new(
        TokenEndpoint::insecure_http(&format!("{}/token", provider.issuer))
            .unwrap()
            .client_id("svc-jwt-bearer"),
        "robot@tower-bearer.test",
        AssertionKey::from_signer(robot).unwrap(),
    )
    .subject("alice")
    .scope("read");
    bearer.fetch(None).await.expect("the provider accepts it");
    assert_eq!(kms.requests.load(Ordering::SeqCst), 2);
    let jwt_bearer = "token:urn:ietf:params:oauth:grant-type:jwt-bearer";
    assert_eq!(provider.count(jwt_bearer).await, 1);

    // A signature by another key: refused here, never presented.
    kms.set_mode(Mode::OtherKey);
    let err = grant.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::Signer(_)), "{err}");
    let err = bearer.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::Signer(_)), "{err}");
    assert_eq!(provider.count("token:client_credentials").await, 1);
    assert_eq!(provider.count(jwt_bearer).await, 1);
    assert_eq!(kms.requests.load(Ordering::SeqCst), 4, "the KMS was asked");
}

/// Each way a KMS can fail is a clear error that quotes nothing of its answer, for
/// assertions and DPoP proofs alike; the token endpoint never receives a broken
/// assertion; once the KMS signs again, the next attempt works.
#[tokio::test]
async fn kms_failures_are_clear_errors_and_nothing_broken_is_sent() {
    let (kms_addr, kms) = start_kms().await;
    let (token_url, counts) = start_token_endpoint().await;
    let key = AssertionKey::from_signer(KmsSigner::ec(kms_addr)).unwrap();
    let grant = TokenEndpoint::insecure_http(&token_url)
        .unwrap()
        .client_id("svc")
        .auth_method(ClientAssertion::private_key(key))
        .client_credentials();
    let dpop = DpopKey::from_signer(KmsSigner::ec(kms_addr)).unwrap();
    let url: http::Uri = "https://api.example.com/items".parse().unwrap();
    let cases = [
        (Mode::Fail500, "the KMS answered 500"),
        (Mode::Junk, "not the 64 of a ES256 signature"),
        (Mode::Short, "the signer answered 63 bytes"),
        (
            Mode::OtherKey,
            "does not verify with the signer's public key",
        ),
    ];
    for (mode, why) in cases {
        kms.set_mode(mode);
        let err = grant.fetch(None).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Signer(_)), "{mode:?}: {text}");
        assert!(text.contains(why), "{mode:?}: {text}");
        assert!(!text.contains(KMS_DETAIL), "{mode:?}: {text}");
        assert!(!err.is_retryable(), "{mode:?}");
        let err = dpop
            .proof_async(&Method::GET, &url, Some("t"))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Signer(_)), "{mode:?}: {err}");
        assert!(err.to_string().contains(why), "{mode:?}: {err}");
        assert_eq!(counts.requests.load(Ordering::SeqCst), 0, "{mode:?}");
    }
    assert_eq!(kms.requests.load(Ordering::SeqCst), 8);
    // A remote key cannot make a proof synchronously: a clear error, no panic.
    let err = dpop.proof(&Method::GET, &url, None).unwrap_err();
    assert!(err.to_string().contains("proof_async"), "{err}");

    kms.set_mode(Mode::Sign);
    let token = grant.fetch(None).await.expect("the KMS signs again");
    assert!(!token.is_expired());
    assert_eq!(counts.requests.load(Ordering::SeqCst), 1);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    dpop.proof_async(&Method::GET, &url, Some("t"))
        .await
        .unwrap();
}

/// A KMS that never answers: the signature fails with `SignerTimeout` after the
/// configured deadline (a short one; no time is asserted), and the next attempt
/// works. Signatures are not serialized: while 8 proofs of one key wait at the KMS,
/// a 9th of the same key is made and used; the 8 then complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_kms_is_bounded_by_the_deadline_and_holds_up_no_one() {
    let (kms_addr, kms) = start_kms().await;
    let url: http::Uri = "https://api.example.com/items".parse().unwrap();
    let deadline = Duration::from_millis(300);
    let short = DpopKey::from_signer_with_deadline(KmsSigner::ec(kms_addr), deadline).unwrap();
    kms.hold(1);
    let err = short
        .proof_async(&Method::GET, &url, Some("t"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SignerTimeout(d) if d == deadline),
        "{err}"
    );
    assert!(err.is_retryable());
    assert_eq!(*kms.held.borrow(), 1, "the KMS got the request and held it");
    // The next attempt is not held: it works, under the same short deadline.
    short
        .proof_async(&Method::GET, &url, Some("t"))
        .await
        .unwrap();

    // The same through an assertion at a token endpoint: refused before sending.
    let (token_url, counts) = start_token_endpoint().await;
    let grant = TokenEndpoint::insecure_http(&token_url)
        .unwrap()
        .client_id("svc")
        .auth_method(ClientAssertion::private_key(
            AssertionKey::from_signer_with_deadline(KmsSigner::ec(kms_addr), deadline).unwrap(),
        ))
        .client_credentials();
    kms.hold(1);
    let err = grant.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::SignerTimeout(_)), "{err}");
    assert_eq!(counts.requests.load(Ordering::SeqCst), 0);
    grant.fetch(None).await.expect("the next attempt");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);

    // Many signatures of one key at once; the deadline is the longest allowed (the
    // test releases them long before).
    let key = DpopKey::from_signer_with_deadline(
        KmsSigner::ec(kms_addr),
        tower_bearer::client::MAX_SIGNER_DEADLINE,
    )
    .unwrap();
    kms.hold(8);
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let key = key.clone();
            let url = url.clone();
            tokio::spawn(async move { key.proof_async(&Method::POST, &url, Some("t")).await })
        })
        .collect();
    kms.until_held(8).await;
    key.proof_async(&Method::GET, &url, Some("t"))
        .await
        .expect("not held up by the 8 in flight");
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "the 8 are still at the KMS"
    );
    kms.release();
    for w in waiting {
        w.await.unwrap().expect("released, each proof is signed");
    }
}

// ---------------------------------------------------------------------------------
// DPoP: a token endpoint that checks proofs and demands a nonce, and an API behind
// the crate's own `RequireBearerLayer::dpop` (as tests/dpop_client.rs).

const SECRET: &[u8] = b"remote-signer-test-secret-32-bytes!";
const AS_NONCE: &str = "as-nonce-remote";

struct As {
    addr: SocketAddr,
    proof_headers: Mutex<Vec<Value>>,
    issued: AtomicUsize,
}

async fn dpop_token(State(state): State<Arc<As>>, headers: HeaderMap) -> Response {
    let proof = headers.get("dpop").unwrap().to_str().unwrap().to_owned();
    let part = |i: usize| -> Value {
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(proof.split('.').nth(i).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let (header, claims) = (part(0), part(1));
    state.proof_headers.lock().unwrap().push(header.clone());
    let verifier = DpopVerifier::new()
        .external_origin(&format!("http://{}", state.addr))
        .unwrap();
    // Signature, typ, htm, htu, iat pass; a token request's proof has no `ath`.
    let checked = verifier.check(&Method::POST, &"/token".parse().unwrap(), &headers, "");
    assert_eq!(checked.unwrap_err(), DpopError::AccessTokenHash);
    if claims.get("nonce").and_then(Value::as_str) != Some(AS_NONCE) {
        return (
            StatusCode::BAD_REQUEST,
            [
                ("dpop-nonce", AS_NONCE),
                ("content-type", "application/json"),
            ],
            r#"{"error":"use_dpop_nonce"}"#,
        )
            .into_response();
    }
    let jwk: Jwk = serde_json::from_value(header["jwk"].clone()).unwrap();
    state.issued.fetch_add(1, Ordering::SeqCst);
    let access = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": "svc", "exp": unix_now() + 600, "cnf": { "jkt": thumbprint(&jwk).unwrap() } }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    axum::Json(json!({ "access_token": access, "token_type": "DPoP", "expires_in": 600 }))
        .into_response()
}

async fn start_dpop_servers() -> (SocketAddr, Arc<As>, SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let as_addr = listener.local_addr().unwrap();
    let state = Arc::new(As {
        addr: as_addr,
        proof_headers: Mutex::new(Vec::new()),
        issued: AtomicUsize::new(0),
    });
    let app = Router::new()
        .route("/token", post(dpop_token))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    async fn whoami(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = listener.local_addr().unwrap();
    let verifier = DpopVerifier::new()
        .external_origin(&format!("http://{api}"))
        .unwrap()
        .nonces(
            b"api-nonce-secret-0123456789abcdef",
            Duration::from_secs(300),
        )
        .unwrap();
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
    (as_addr, state, api, hits)
}

async fn call<S>(svc: &mut S, method: Method, url: &str) -> (u16, String)
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Display,
{
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    match svc.ready().await {
        Ok(svc) => match svc.call(req).await {
            Ok(res) => {
                let status = res.status().as_u16();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
            Err(e) => (0, e.to_string()),
        },
        Err(e) => (0, e.to_string()),
    }
}

/// DPoP with the key in the KMS: the token request's proofs (the nonce round trip
/// included) and every request's proof are signed remotely, through the `Dpop`
/// authorizer's future; the crate's own DPoP layer accepts each (its replay cache
/// refuses a proof used twice, so each one is fresh), and the tokens are bound to
/// the KMS key's thumbprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dpop_proofs_signed_by_the_kms_pass_the_crates_dpop_layer() {
    let (kms_addr, kms) = start_kms().await;
    let (as_addr, as_state, api, hits) = start_dpop_servers().await;
    let key = DpopKey::from_signer(KmsSigner::ec(kms_addr)).unwrap();
    let expected: Jwk = serde_json::from_value(public_jwk("ec256")).unwrap();
    assert_eq!(Some(key.thumbprint()), thumbprint(&expected).as_deref());
    assert!(key.to_pkcs8_pem().is_none(), "no private key here");
    assert!(format!("{key:?}").contains("remote signer"));
    let endpoint = TokenEndpoint::insecure_http(&format!("http://{as_addr}/token"))
        .unwrap()
        .client_id("svc")
        .client_secret("svc-secret")
        .dpop(key.clone());
    let authorizer = Dpop::new(key.clone(), Refreshing::new(endpoint.client_credentials()));
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer).retry_unauthorized())
        .service(Client::builder(TokioExecutor::new()).build_http());
    let items = format!("http://{api}/items");
    for i in 0..6 {
        let method = if i % 2 == 0 {
            Method::GET
        } else {
            Method::POST
        };
        assert_eq!(
            call(&mut client, method, &items).await,
            (200, "svc".into()),
            "request {i}"
        );
    }
    assert_eq!(as_state.issued.load(Ordering::SeqCst), 1);
    let headers = as_state.proof_headers.lock().unwrap().clone();
    assert_eq!(headers.len(), 2, "the nonce round trip, then the token");
    assert_eq!(headers[0]["alg"], "ES256");
    assert!(headers[0]["jwk"].get("d").is_none());
    // 2 token-request proofs, the API's nonce round trip (1 refused + its replay),
    // then one proof per request: every one signed by the KMS.
    assert_eq!(hits.load(Ordering::SeqCst), 7);
    assert_eq!(kms.requests.load(Ordering::SeqCst), 2 + 7);

    // A KMS that stops answering: the request fails with the signer's deadline
    // error (short here), the API is not called; a second client, with a key in
    // memory, is served meanwhile.
    let short =
        DpopKey::from_signer_with_deadline(KmsSigner::ec(kms_addr), Duration::from_millis(300))
            .unwrap();
    let endpoint = TokenEndpoint::insecure_http(&format!("http://{as_addr}/token"))
        .unwrap()
        .client_id("svc")
        .client_secret("svc-secret")
        .dpop(short.clone());
    let mut hanging = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(Dpop::new(
            short,
            Refreshing::new(endpoint.client_credentials()),
        )))
        .service(Client::builder(TokioExecutor::new()).build_http());
    kms.hold(usize::MAX);
    let before = hits.load(Ordering::SeqCst);
    let (status, text) = call(&mut hanging, Method::GET, &items).await;
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("did not answer within"), "{text}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "nothing reached the API"
    );
    let local = DpopKey::generate().unwrap();
    let endpoint = TokenEndpoint::insecure_http(&format!("http://{as_addr}/token"))
        .unwrap()
        .client_id("svc")
        .client_secret("svc-secret")
        .dpop(local.clone());
    let mut healthy = ServiceBuilder::new()
        .layer(
            AuthorizeLayer::new(Dpop::new(
                local,
                Refreshing::new(endpoint.client_credentials()),
            ))
            .retry_unauthorized(),
        )
        .service(Client::builder(TokioExecutor::new()).build_http());
    assert_eq!(
        call(&mut healthy, Method::GET, &items).await,
        (200, "svc".into())
    );
    kms.release();
}

/// The seam refuses a signer it cannot check: an HMAC algorithm, a JWK of another
/// kind, a JWK carrying its private key, a zero deadline.
#[tokio::test]
async fn a_signer_that_cannot_be_checked_is_refused() {
    let kms: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let with = |alg, jwk: &str| KmsSigner::new(kms, "ec", alg, jwk, None);
    assert!(AssertionKey::from_signer(with(Algorithm::HS256, "ec256")).is_err());
    assert!(AssertionKey::from_signer(with(Algorithm::RS256, "ec256")).is_err());
    assert!(AssertionKey::from_signer(with(Algorithm::ES384, "ec256")).is_err());
    assert!(DpopKey::from_signer(with(Algorithm::ES384, "ec384")).is_err());
    assert!(AssertionKey::from_signer(with(Algorithm::ES384, "ec384")).is_ok());
    assert!(AssertionKey::from_signer(with(Algorithm::PS256, "rsa")).is_ok());
    let mut private = with(Algorithm::ES256, "ec256");
    private.jwk = serde_json::from_slice(&key_file("ec256.jwk")).unwrap();
    let err = AssertionKey::from_signer(private).unwrap_err();
    assert!(err.to_string().contains("private members"), "{err}");
    assert!(AssertionKey::from_signer_with_deadline(
        with(Algorithm::ES256, "ec256"),
        Duration::ZERO
    )
    .is_err());
    let key = AssertionKey::from_signer(with(Algorithm::ES256, "ec256")).unwrap();
    assert!(format!("{key:?}").contains("remote signer"));
}

/// An authorizer whose DPoP token is at hand (a `Refreshing` cache hit).
struct ReadyDpopToken;

impl tower_bearer::client::Authorizer for ReadyDpopToken {
    fn credential(&self) -> tower_bearer::client::CredentialFuture {
        let value = http::HeaderValue::from_static("DPoP a-token");
        tower_bearer::client::CredentialFuture::ready(Ok(Some(
            tower_bearer::client::Credential::authorization(value),
        )))
    }
}

/// The per-request path: a key in memory gives its proof at once (a ready
/// `CredentialFuture`, no boxed future), as before the seam; a remote key's proof
/// comes through the pending future, which the layer awaits.
#[tokio::test]
async fn an_in_memory_key_answers_at_once_a_remote_one_through_the_future() {
    use tower_bearer::client::{Authorizer, Target};
    let (kms_addr, kms) = start_kms().await;
    let uri: http::Uri = "https://api.example.com/items".parse().unwrap();
    let local = Dpop::new(DpopKey::generate().unwrap(), ReadyDpopToken);
    let future = local.credential_for(Target::new(&Method::GET, &uri));
    assert!(!future.is_pending(), "a key in memory signs on the spot");
    let credential = future.await.unwrap().unwrap();
    assert!(credential.dpop.is_some());

    let remote = Dpop::new(
        DpopKey::from_signer(KmsSigner::ec(kms_addr)).unwrap(),
        ReadyDpopToken,
    );
    let future = remote.credential_for(Target::new(&Method::GET, &uri));
    assert!(future.is_pending(), "a remote key is awaited");
    assert_eq!(
        kms.requests.load(Ordering::SeqCst),
        0,
        "nothing before polled"
    );
    let credential = future.await.unwrap().unwrap();
    let proof = credential.dpop.expect("a proof");
    assert_eq!(kms.requests.load(Ordering::SeqCst), 1);
    let verifier = DpopVerifier::new()
        .external_origin("https://api.example.com")
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("dpop", proof);
    verifier
        .check(
            &Method::GET,
            &"/items".parse().unwrap(),
            &headers,
            "a-token",
        )
        .expect("the crate's verifier accepts the remote proof");
}
