//! Signed introspection answers (RFC 9701) against a real authorization server on
//! 127.0.0.1: it publishes its keys (discovery and a JWKS), signs its answers with
//! the RSA keys under `tests/keys/`, and can be told to answer wrongly in each way an
//! answer can be wrong. Every wrong answer is refused (`503`, a logged reason, no
//! verdict); a good one is judged by the RFC 7662 rules as a plain answer is.
#![cfg(all(feature = "introspection", feature = "jwks"))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use common::jwks::{public_jwk, rsa1, rsa2};
use common::server::{key, now_plus, serve};
use common::LogCapture;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower_bearer::server::{
    Claims, Introspection, IntrospectionKeys, JwksValidator, JwtValidator, Rejection, Validator,
};

const CLIENT_ID: &str = "my-api";
const TYP: &str = "token-introspection+jwt";

/// How the authorization server answers.
#[derive(Clone, Debug)]
enum Mode {
    /// Signed as RFC 9701 says, with the current signing key.
    Signed,
    /// Plain RFC 7662 JSON, as if the `Accept` were ignored.
    Plain,
    /// `alg: none`, no signature.
    AlgNone,
    /// Signed with a key the server does not publish, under the published `kid`.
    OtherKey,
    /// HS256 keyed with the server's public key (the algorithm confusion attack).
    HmacWithPublicKey,
    /// This header `typ` (`None`: no `typ`).
    Typ(Option<&'static str>),
    /// This `iss`.
    Iss(&'static str),
    /// This `aud` (`Null`: none).
    Aud(Value),
    /// `iat` this many seconds from now (`None`: no `iat`).
    Iat(Option<i64>),
    /// This `token_introspection` claim (`Null`: none).
    Inner(Value),
    /// This body, with the signed answer's content type.
    Junk(&'static str),
    /// The last signed answer sent, whatever the token asked about.
    Replay,
}

struct AuthServer {
    issuer: Mutex<String>,
    mode: Mutex<Mode>,
    /// Which key signs: 1 (`k1`, tests/keys/rsa.key) or 2 (`k2`, rsa2.key).
    signer: Mutex<u8>,
    /// The keys published in the JWKS.
    published: Mutex<Vec<Value>>,
    calls: AtomicUsize,
    jwks_fetches: AtomicUsize,
    /// The `Accept` of each call.
    accepts: Mutex<Vec<String>>,
    /// The last signed answer sent.
    last_signed: Mutex<Option<String>>,
}

/// The RFC 7662 answer the server gives for `token`.
fn answer_for(token: &str, issuer: &str) -> Value {
    let exp = now_plus(600);
    match token {
        "good" => json!({
            "active": true, "sub": "alice", "scope": "read write", "exp": exp,
            "iss": issuer, "aud": CLIENT_ID, "jti": "jti-good",
        }),
        "write-only" => json!({
            "active": true, "sub": "bob", "scope": "write", "exp": exp,
            "iss": issuer, "aud": CLIENT_ID,
        }),
        "for-another-api" => json!({
            "active": true, "sub": "carol", "scope": "read", "exp": exp,
            "iss": issuer, "aud": "billing-api",
        }),
        _ => json!({"active": false}),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn signed_answer(mode: &Mode, signer: u8, issuer: &str, inner: Value) -> String {
    let (key, kid) = if signer == 1 {
        (rsa1(), "k1")
    } else {
        (rsa2(), "k2")
    };
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    header.typ = Some(TYP.to_owned());
    let mut claims = json!({
        "iss": issuer, "aud": CLIENT_ID, "iat": now_plus(0), "token_introspection": inner,
    });
    let mut key = key;
    match mode {
        Mode::OtherKey => key = if signer == 1 { rsa2() } else { rsa1() },
        Mode::HmacWithPublicKey => {
            header = Header::new(Algorithm::HS256);
            header.kid = Some(kid.to_owned());
            header.typ = Some(TYP.to_owned());
            key = EncodingKey::from_secret(&common::server::key("rsa.pub.pem"));
        }
        Mode::Typ(typ) => header.typ = typ.map(str::to_owned),
        Mode::Iss(iss) => claims["iss"] = json!(iss),
        Mode::Aud(Value::Null) => {
            claims.as_object_mut().unwrap().remove("aud");
        }
        Mode::Aud(aud) => claims["aud"] = aud.clone(),
        Mode::Iat(None) => {
            claims.as_object_mut().unwrap().remove("iat");
        }
        Mode::Iat(Some(offset)) => claims["iat"] = json!(now_plus(*offset)),
        Mode::Inner(Value::Null) => {
            claims
                .as_object_mut()
                .unwrap()
                .remove("token_introspection");
        }
        Mode::Inner(inner) => claims["token_introspection"] = inner.clone(),
        Mode::AlgNone => {
            let header = json!({"alg": "none", "typ": TYP, "kid": kid});
            return format!(
                "{}.{}.",
                b64(header.to_string().as_bytes()),
                b64(claims.to_string().as_bytes())
            );
        }
        _ => {}
    }
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

async fn introspect(
    State(s): State<Arc<AuthServer>>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    s.accepts.lock().unwrap().push(accept);
    let issuer = s.issuer.lock().unwrap().clone();
    let token = form.get("token").cloned().unwrap_or_default();
    let inner = answer_for(&token, &issuer);
    let mode = s.mode.lock().unwrap().clone();
    let jwt = |body: String| {
        (
            StatusCode::OK,
            [("content-type", "application/token-introspection+jwt")],
            body,
        )
            .into_response()
    };
    match mode {
        Mode::Plain => Json(inner).into_response(),
        Mode::Junk(body) => jwt(body.to_owned()),
        Mode::Replay => jwt(s.last_signed.lock().unwrap().clone().unwrap()),
        mode => {
            let signer = *s.signer.lock().unwrap();
            let body = signed_answer(&mode, signer, &issuer, inner);
            *s.last_signed.lock().unwrap() = Some(body.clone());
            jwt(body)
        }
    }
}

async fn discovery(State(s): State<Arc<AuthServer>>) -> Json<Value> {
    let issuer = s.issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "introspection_endpoint": format!("{issuer}/introspect"),
    }))
}

async fn jwks(State(s): State<Arc<AuthServer>>) -> Json<Value> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": s.published.lock().unwrap().clone() }))
}

struct Setup {
    server: Arc<AuthServer>,
    issuer: String,
}

impl Setup {
    async fn start() -> Setup {
        let server = Arc::new(AuthServer {
            issuer: Mutex::default(),
            mode: Mutex::new(Mode::Signed),
            signer: Mutex::new(1),
            published: Mutex::new(vec![public_jwk(&rsa1(), "k1")]),
            calls: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
            accepts: Mutex::default(),
            last_signed: Mutex::default(),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .with_state(Arc::clone(&server));
        let issuer = format!("http://{}", serve(app).await);
        *server.issuer.lock().unwrap() = issuer.clone();
        Setup { server, issuer }
    }

    fn set_mode(&self, mode: Mode) {
        *self.server.mode.lock().unwrap() = mode;
    }

    fn calls(&self) -> usize {
        self.server.calls.load(Ordering::SeqCst)
    }

    /// The server's keys, from its JWKS through discovery.
    fn published_keys(&self) -> IntrospectionKeys {
        IntrospectionKeys::jwks(JwksValidator::<Claims>::discover(&self.issuer).unwrap()).unwrap()
    }

    /// The server's first key, known in advance (its PEM).
    fn static_key(&self) -> IntrospectionKeys {
        IntrospectionKeys::key(
            &self.issuer,
            JwtValidator::<Claims>::rsa_pem(&key("rsa.pub.pem")).unwrap(),
        )
    }

    /// The API's validator: signed answers with `keys`, and its own RFC 7662 rules.
    fn validator(&self, keys: IntrospectionKeys) -> Introspection<Claims> {
        self.plain_validator()
            .jwt_response(keys)
            .issuer(&self.issuer)
            .audience(CLIENT_ID)
            .require_scopes(["read"])
    }

    fn plain_validator(&self) -> Introspection<Claims> {
        Introspection::<Claims>::new(&format!("{}/introspect", self.issuer))
            .unwrap()
            .client(CLIENT_ID, "api-secret")
    }
}

/// Good answers, signed and checked with the published keys, then judged by the
/// RFC 7662 rules: active and ours accepted with its claims, inactive `401`, another
/// audience `401`, a missing scope `403`; each token has its own cached answer.
#[tokio::test]
async fn signed_answers_are_asked_for_checked_and_judged() {
    let s = Setup::start().await;
    let v = s.validator(s.published_keys());

    let claims = v.validate("good").await.expect("a good signed answer");
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    assert_eq!(
        s.server.accepts.lock().unwrap()[0],
        "application/token-introspection+jwt",
        "signed answers are asked for, and only those"
    );
    assert!(matches!(
        v.validate("revoked").await,
        Err(Rejection::InvalidToken(_))
    ));
    assert!(matches!(
        v.validate("for-another-api").await,
        Err(Rejection::InvalidToken(_))
    ));
    assert!(matches!(
        v.validate("write-only").await,
        Err(Rejection::InsufficientScope(_))
    ));
    assert_eq!(s.calls(), 4);

    // Cached per token: the good answer again without a call, never for another one.
    v.validate("good").await.unwrap();
    assert_eq!(s.calls(), 4);
    assert!(v.validate("revoked-too").await.is_err());
    assert_eq!(s.calls(), 5);
}

/// A key known in advance (a PEM) verifies the answers as the JWKS does.
#[tokio::test]
async fn a_static_key_verifies_signed_answers() {
    let s = Setup::start().await;
    let v = s.validator(s.static_key());
    let claims = v.validate("good").await.expect("a good signed answer");
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    assert_eq!(s.server.jwks_fetches.load(Ordering::SeqCst), 0);
}

/// The server rotates its signing key (publishes `k2`, signs with it): the next
/// answer's unknown `kid` fetches the JWKS again, and is accepted.
#[tokio::test]
async fn the_signing_key_rotates_through_the_jwks() {
    let s = Setup::start().await;
    let v = s
        .validator(s.published_keys())
        .ttl(std::time::Duration::ZERO);
    v.validate("good").await.unwrap();
    let fetches = s.server.jwks_fetches.load(Ordering::SeqCst);
    s.server
        .published
        .lock()
        .unwrap()
        .push(public_jwk(&rsa2(), "k2"));
    *s.server.signer.lock().unwrap() = 2;
    // The first-sight interval (2 s) counts from the last fetch: let it pass on the
    // tokio clock.
    common::jwks::skip(3).await;
    let claims = v
        .validate("good")
        .await
        .expect("an answer under the new key");
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    assert_eq!(s.server.jwks_fetches.load(Ordering::SeqCst), fetches + 1);
}

/// Signed answers required, and the server answers plain JSON (it ignored the
/// `Accept`): refused, `503`, with a logged reason naming the cause; no verdict is
/// cached, and the endpoint is backed off (the next token gets `503` without a call).
#[tokio::test]
async fn an_unsigned_answer_is_refused_when_signed_ones_are_required() {
    let s = Setup::start().await;
    s.set_mode(Mode::Plain);
    let v = s.validator(s.static_key());
    let (logs, _capturing) = LogCapture::start(tracing::Level::WARN);
    let err = v.validate("good").await.unwrap_err();
    assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");
    let text = logs.text();
    assert!(
        text.contains("the answer is not signed (plain JSON)"),
        "{text}"
    );
    assert!(
        !text.contains("alice"),
        "the answer is never quoted: {text}"
    );
    assert_eq!(v.stats().accepted, 0);
    let err = v.validate("write-only").await.unwrap_err();
    assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");
    assert_eq!(s.calls(), 1, "backed off: no call");
}

/// With `allow_unsigned_response`, a plain answer is read (signed ones are still
/// asked for first); without `jwt_response`, nothing changes: plain JSON asked for.
#[tokio::test]
async fn an_unsigned_answer_is_read_only_when_allowed() {
    let s = Setup::start().await;
    s.set_mode(Mode::Plain);
    let v = s.validator(s.static_key()).allow_unsigned_response();
    let claims = v.validate("good").await.expect("a plain answer, allowed");
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    assert_eq!(
        s.server.accepts.lock().unwrap()[0],
        "application/token-introspection+jwt, application/json;q=0.5"
    );
    s.plain_validator().validate("good").await.unwrap();
    assert_eq!(s.server.accepts.lock().unwrap()[1], "application/json");
    // A signed answer is still checked when it comes.
    s.set_mode(Mode::Iss("https://evil.example"));
    let err = v.validate("write-only").await.unwrap_err();
    assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");
}

/// A validator's cache never serves an answer obtained under another signing
/// configuration (principle 6): a plain validator's cached answer is not reused by
/// its clone that requires signed answers, which asks for itself (and refuses the
/// plain answer it gets).
#[tokio::test]
async fn answers_are_not_shared_across_signing_configurations() {
    let s = Setup::start().await;
    s.set_mode(Mode::Plain);
    let plain = s.plain_validator();
    plain.validate("good").await.expect("plain is fine here");
    assert_eq!(s.calls(), 1);
    let signed = plain.clone().jwt_response(s.static_key());
    let err = signed.validate("good").await.unwrap_err();
    assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");
    assert_eq!(s.calls(), 2, "asked again, under its own configuration");
    // And the plain one still has its answer.
    plain.validate("good").await.unwrap();
    assert_eq!(s.calls(), 2);
}

/// Each wrong signed answer, with both key sources: refused (`503`, never a
/// verdict), its own reason logged, nothing of the answer quoted.
async fn refused(mode: Mode, reason: &str) {
    for published in [false, true] {
        let s = Setup::start().await;
        s.set_mode(mode.clone());
        let keys = if published {
            s.published_keys()
        } else {
            s.static_key()
        };
        let v = s.validator(keys);
        let (logs, capturing) = LogCapture::start(tracing::Level::WARN);
        let err = v.validate("good").await.unwrap_err();
        drop(capturing);
        assert!(
            matches!(err, Rejection::Unavailable(_)),
            "{mode:?} (published keys: {published}): {err:?}"
        );
        assert_eq!(v.stats().accepted, 0);
        let text = logs.text();
        assert!(
            text.contains("signed answer (RFC 9701) refused") && text.contains(reason),
            "{mode:?} (published keys: {published}): {text}"
        );
        assert!(!text.contains("alice"), "never quoted: {text}");
        assert_eq!(s.calls(), 1);
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    refused(Mode::AlgNone, "algorithm is not allowed").await;
}

#[tokio::test]
async fn an_answer_signed_with_another_key_is_refused() {
    refused(Mode::OtherKey, "signature is invalid").await;
}

#[tokio::test]
async fn hmac_keyed_with_the_public_key_is_refused() {
    refused(Mode::HmacWithPublicKey, "algorithm is not allowed").await;
}

#[tokio::test]
async fn a_wrong_or_missing_typ_is_refused() {
    refused(Mode::Typ(Some("JWT")), "typ is not token-introspection+jwt").await;
    refused(
        Mode::Typ(Some("at+jwt")),
        "typ is not token-introspection+jwt",
    )
    .await;
    refused(Mode::Typ(None), "typ is not token-introspection+jwt").await;
}

#[tokio::test]
async fn the_full_media_type_is_a_good_typ() {
    let s = Setup::start().await;
    s.set_mode(Mode::Typ(Some("Application/Token-Introspection+JWT")));
    s.validator(s.static_key()).validate("good").await.unwrap();
}

#[tokio::test]
async fn a_wrong_issuer_is_refused() {
    refused(
        Mode::Iss("https://evil.example"),
        "the answer has the wrong issuer",
    )
    .await;
}

#[tokio::test]
async fn a_wrong_or_missing_audience_is_refused() {
    refused(
        Mode::Aud(json!("billing-api")),
        "aud is not this resource server",
    )
    .await;
    refused(
        Mode::Aud(json!(["billing-api", "x"])),
        "aud is not this resource server",
    )
    .await;
    refused(Mode::Aud(Value::Null), "lacks the aud claim").await;
}

#[tokio::test]
async fn an_audience_list_naming_us_is_accepted() {
    let s = Setup::start().await;
    s.set_mode(Mode::Aud(json!(["billing-api", CLIENT_ID])));
    s.validator(s.static_key()).validate("good").await.unwrap();
}

#[tokio::test]
async fn an_old_future_or_missing_iat_is_refused() {
    refused(Mode::Iat(Some(-120)), "too old (iat)").await;
    refused(Mode::Iat(Some(3600)), "issued in the future").await;
    refused(Mode::Iat(None), "lacks the iat claim").await;
}

#[tokio::test]
async fn junk_is_refused() {
    refused(Mode::Junk("not a jws"), "not a compact JWS").await;
    refused(Mode::Junk("a.b.c.d.e"), "not a compact JWS").await;
    refused(Mode::Junk("e30.e30.c2ln"), "malformed").await;
    refused(
        Mode::Inner(Value::Null),
        "lacks the token_introspection claim",
    )
    .await;
    refused(
        Mode::Inner(json!("active")),
        "token_introspection is not an object",
    )
    .await;
}

/// RFC 9701's JWT names no token: a signed answer obtained for one token (here
/// `good`, alice's) and sent back later for another token (a captured answer
/// replayed by whoever sits on the path) is refused by its age; and each token's
/// answer is cached under that token only, so no answer is ever served for a token
/// it was not the answer to.
#[tokio::test]
async fn a_signed_answer_replayed_for_another_token_is_refused() {
    let s = Setup::start().await;
    // The captured answer: alice's, signed two minutes ago.
    s.set_mode(Mode::Iat(Some(-120)));
    let v = s
        .validator(s.static_key())
        .failure_backoff(std::time::Duration::ZERO);
    assert!(v.validate("good").await.is_err());
    s.set_mode(Mode::Replay);
    let err = v.validate("stolen-or-revoked").await.unwrap_err();
    assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");

    // A fresh answer for `good` is cached for `good` alone.
    s.set_mode(Mode::Signed);
    v.validate("good").await.unwrap();
    let calls = s.calls();
    assert!(matches!(
        v.validate("stolen-or-revoked").await,
        Err(Rejection::InvalidToken(_))
    ));
    assert_eq!(s.calls(), calls + 1, "its own call, its own answer");
}
