//! The OpenID Connect relying party (issue 33): `IdTokenValidator` against a real
//! provider on 127.0.0.1 (discovery, a JWKS, a token endpoint and UserInfo, axum),
//! hostile ID tokens each refused by the rule they break, the browser login's
//! `nonce`, `c_hash`, `at_hash` and `max_age` checked through a real redirect, the
//! ID token kept across refreshes and stores (files, sealed files, Redis).
#![cfg(feature = "jwks")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::{
    ExpectedIdToken, FileStore, IdTokenClaims, IdTokenValidator, Refreshing, TokenEndpoint,
    TokenSource, TokenStore,
};
use tower_bearer::{Error, Token};

use common::jwks::{public_jwk, rsa1, rsa2};
use common::server::{key, now_plus, serve};

const CLIENT: &str = "rp-cli";

// ------------------------------------------------------------------ provider

#[derive(Default)]
struct Op {
    issuer: Mutex<String>,
    keys: Mutex<Value>,
    jwks_fetches: AtomicUsize,
    /// The answer of an authorization code exchange.
    code_answer: Mutex<Value>,
    /// The answer of a refresh.
    refresh_answer: Mutex<Value>,
    userinfo: Mutex<Value>,
    userinfo_auth: Mutex<Option<String>>,
    /// The `DPoP` proofs UserInfo got.
    userinfo_proofs: Mutex<Vec<String>>,
    /// When set, UserInfo answers the next request without this nonce `401`
    /// `use_dpop_nonce` with it.
    userinfo_nonce: Mutex<Option<String>>,
}

struct Provider {
    op: Arc<Op>,
    issuer: String,
}

impl Provider {
    async fn start() -> Provider {
        let op = Arc::new(Op::default());
        *op.keys.lock().unwrap() = json!({ "keys": [public_jwk(&rsa1(), "k1")] });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(Arc::clone(&op));
        let addr = serve(app).await;
        let issuer = format!("http://{addr}");
        *op.issuer.lock().unwrap() = issuer.clone();
        Provider { op, issuer }
    }

    async fn endpoint(&self) -> TokenEndpoint {
        TokenEndpoint::discover(&self.issuer)
            .await
            .unwrap()
            .client_id(CLIENT)
    }

    async fn validator(&self) -> IdTokenValidator {
        self.endpoint()
            .await
            .id_token_validator()
            .unwrap()
            .build()
            .unwrap()
    }

    /// Claims every ID token of this provider for `CLIENT` must have.
    fn claims(&self) -> Value {
        json!({
            "iss": self.issuer,
            "sub": "alice",
            "aud": CLIENT,
            "exp": now_plus(600),
            "iat": now_plus(0),
        })
    }

    fn fetches(&self) -> usize {
        self.op.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn discovery(State(op): State<Arc<Op>>) -> Json<Value> {
    let issuer = op.issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "token_endpoint": format!("{issuer}/token"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
    }))
}

async fn jwks(State(op): State<Arc<Op>>) -> Json<Value> {
    op.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(op.keys.lock().unwrap().clone())
}

async fn token(
    State(op): State<Arc<Op>>,
    Form(form): Form<HashMap<String, String>>,
) -> Json<Value> {
    let answer = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => op.refresh_answer.lock().unwrap().clone(),
        _ => op.code_answer.lock().unwrap().clone(),
    };
    Json(answer)
}

async fn userinfo(State(op): State<Arc<Op>>, headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    *op.userinfo_auth.lock().unwrap() = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let proof = headers.get("dpop").map(|v| v.to_str().unwrap().to_owned());
    if let Some(proof) = &proof {
        op.userinfo_proofs.lock().unwrap().push(proof.clone());
    }
    let nonce = op.userinfo_nonce.lock().unwrap().clone();
    if let Some(nonce) = nonce {
        let carried = proof
            .as_deref()
            .and_then(|p| p.split('.').nth(1))
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .is_some_and(|claims| claims["nonce"] == nonce.as_str());
        if !carried {
            return (
                axum::http::StatusCode::UNAUTHORIZED,
                [
                    ("dpop-nonce", nonce.as_str()),
                    ("www-authenticate", "DPoP error=\"use_dpop_nonce\""),
                ],
            )
                .into_response();
        }
    }
    Json(op.userinfo.lock().unwrap().clone()).into_response()
}

// ------------------------------------------------------------------ helpers

fn rs256(kid: &str) -> Header {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some(kid.to_owned());
    h
}

fn sign(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).unwrap()
}

/// An ID token with `claims`, signed by the provider's key.
fn id_token(claims: &Value) -> String {
    sign(&rs256("k1"), claims, &rsa1())
}

/// `at_hash` / `c_hash` of `value` under RS256.
fn half_hash(value: &str) -> String {
    let digest = sha2::Sha256::digest(value.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// The refusal of `id_token`: an `Error::IdToken` whose message contains `rule`,
/// and never the token or its parts.
async fn refused(
    validator: &IdTokenValidator,
    id_token: &str,
    expected: ExpectedIdToken<'_>,
    rule: &str,
) {
    let err = validator
        .validate(id_token, &expected)
        .await
        .expect_err("a hostile ID token was accepted");
    let Error::IdToken(why) = &err else {
        panic!("expected Error::IdToken, got {err:?}");
    };
    assert!(why.contains(rule), "{why:?} does not name {rule:?}");
    let text = format!("{err} {err:?}");
    for part in id_token.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "the error quotes the token: {text}");
    }
}

fn with(mut claims: Value, changes: Value) -> Value {
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    claims
}

// ------------------------------------------------------------------ validation

/// The control: a good ID token is accepted, with its claims typed and the rest
/// in `other`; the keys were fetched once.
#[tokio::test]
async fn a_good_id_token_is_accepted_with_its_claims() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let claims = with(
        p.claims(),
        json!({ "nonce": "n-1", "auth_time": now_plus(-10), "email": "alice@example.com" }),
    );
    let got: IdTokenClaims = v
        .validate(&id_token(&claims), &ExpectedIdToken::new().nonce("n-1"))
        .await
        .unwrap();
    assert_eq!(got.sub, "alice");
    assert_eq!(got.iss, p.issuer);
    assert_eq!(got.aud, vec![CLIENT.to_owned()]);
    assert_eq!(got.nonce.as_deref(), Some("n-1"));
    assert!(got.auth_time.is_some());
    assert_eq!(got.other["email"], "alice@example.com");
    assert!(!got.other.contains_key("sub"));
    assert_eq!(p.fetches(), 1);
    // aud with several values is accepted with azp = the client.
    let several = with(
        p.claims(),
        json!({ "aud": [CLIENT, "other"], "azp": CLIENT }),
    );
    assert!(v
        .validate(&id_token(&several), &ExpectedIdToken::new())
        .await
        .is_ok());
}

#[tokio::test]
async fn wrong_nonce_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(p.claims(), json!({ "nonce": "theirs" })));
    refused(&v, &t, ExpectedIdToken::new().nonce("ours"), "nonce").await;
    // No nonce at all, when one was sent.
    let t = id_token(&p.claims());
    refused(&v, &t, ExpectedIdToken::new().nonce("ours"), "nonce").await;
}

#[tokio::test]
async fn wrong_aud_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(p.claims(), json!({ "aud": "another-client" })));
    refused(&v, &t, ExpectedIdToken::new(), "audience").await;
}

#[tokio::test]
async fn several_audiences_without_azp_or_with_a_wrong_one_are_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(p.claims(), json!({ "aud": [CLIENT, "other"] })));
    refused(&v, &t, ExpectedIdToken::new(), "azp").await;
    let t = id_token(&with(
        p.claims(),
        json!({ "aud": [CLIENT, "other"], "azp": "other" }),
    ));
    refused(&v, &t, ExpectedIdToken::new(), "azp").await;
    // A single audience with a wrong azp too.
    let t = id_token(&with(p.claims(), json!({ "azp": "other" })));
    refused(&v, &t, ExpectedIdToken::new(), "azp").await;
}

#[tokio::test]
async fn wrong_at_hash_and_c_hash_are_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(
        p.claims(),
        json!({ "at_hash": half_hash("another-at") }),
    ));
    refused(
        &v,
        &t,
        ExpectedIdToken::new().access_token("at-1"),
        "at_hash",
    )
    .await;
    let t = id_token(&with(
        p.claims(),
        json!({ "c_hash": half_hash("another-code") }),
    ));
    refused(&v, &t, ExpectedIdToken::new().code("code-1"), "c_hash").await;
    // Required and absent.
    let t = id_token(&p.claims());
    refused(
        &v,
        &t,
        ExpectedIdToken::new().code("code-1").require_c_hash(),
        "c_hash",
    )
    .await;
    // The right ones pass.
    let t = id_token(&with(
        p.claims(),
        json!({ "at_hash": half_hash("at-1"), "c_hash": half_hash("code-1") }),
    ));
    v.validate(
        &t,
        &ExpectedIdToken::new().access_token("at-1").code("code-1"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn alg_none_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let b64 = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let t = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none", "kid": "k1" })),
        b64(&p.claims())
    );
    refused(&v, &t, ExpectedIdToken::new(), "alg none").await;
    let t = format!(
        "{}.{}.",
        b64(&json!({ "alg": "None", "kid": "k1" })),
        b64(&p.claims())
    );
    refused(&v, &t, ExpectedIdToken::new(), "alg none").await;
}

/// The classic confusion: an HS256 token keyed with the bytes of the provider's
/// public key, which an RS256 verifier that takes `alg` from the token would check
/// with that "secret".
#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let public = key("rsa.pub.pem");
    let t = sign(&header, &p.claims(), &EncodingKey::from_secret(&public));
    refused(&v, &t, ExpectedIdToken::new(), "allow-list").await;
    // Even with HS256 allowed and the client secret configured, the public key is
    // not the secret.
    let v = p
        .endpoint()
        .await
        .id_token_validator()
        .unwrap()
        .client_secret("a-client-secret-of-32-bytes-or-more!")
        .algorithms(&[Algorithm::RS256, Algorithm::HS256])
        .build()
        .unwrap();
    refused(&v, &t, ExpectedIdToken::new(), "signature").await;
    // The control: signed with that secret, it passes.
    let good = sign(
        &header,
        &p.claims(),
        &EncodingKey::from_secret(b"a-client-secret-of-32-bytes-or-more!"),
    );
    v.validate(&good, &ExpectedIdToken::new()).await.unwrap();
}

#[tokio::test]
async fn an_algorithm_outside_the_allow_list_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    // A valid RS512 signature by the provider's own key: not in the default list.
    let mut header = Header::new(Algorithm::RS512);
    header.kid = Some("k1".into());
    let t = sign(&header, &p.claims(), &rsa1());
    refused(&v, &t, ExpectedIdToken::new(), "allow-list").await;
    // Allowed explicitly (and the JWK naming no algorithm), it passes: the
    // refusal was the list's.
    let mut jwk = public_jwk(&rsa1(), "k1");
    jwk.as_object_mut().unwrap().remove("alg");
    *p.op.keys.lock().unwrap() = json!({ "keys": [jwk] });
    let v = p
        .endpoint()
        .await
        .id_token_validator()
        .unwrap()
        .algorithms(&[Algorithm::RS512])
        .build()
        .unwrap();
    v.validate(&t, &ExpectedIdToken::new()).await.unwrap();
}

#[tokio::test]
async fn expired_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(
        p.claims(),
        json!({ "exp": now_plus(-120), "iat": now_plus(-720) }),
    ));
    refused(&v, &t, ExpectedIdToken::new(), "expired").await;
}

#[tokio::test]
async fn iat_far_in_the_future_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(
        p.claims(),
        json!({ "iat": now_plus(3600), "exp": now_plus(7200) }),
    ));
    refused(&v, &t, ExpectedIdToken::new(), "future").await;
}

#[tokio::test]
async fn signed_by_another_key_with_the_same_kid_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = sign(&rs256("k1"), &p.claims(), &rsa2());
    refused(&v, &t, ExpectedIdToken::new(), "signature").await;
}

#[tokio::test]
async fn wrong_iss_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(p.claims(), json!({ "iss": "https://evil.example" })));
    refused(&v, &t, ExpectedIdToken::new(), "issuer").await;
    // A prefix or a trailing slash is not the issuer either.
    let t = id_token(&with(
        p.claims(),
        json!({ "iss": format!("{}/", p.issuer) }),
    ));
    refused(&v, &t, ExpectedIdToken::new(), "issuer").await;
}

#[tokio::test]
async fn auth_time_older_than_max_age_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(p.claims(), json!({ "auth_time": now_plus(-3600) })));
    refused(
        &v,
        &t,
        ExpectedIdToken::new().max_age(Duration::from_secs(300)),
        "max_age",
    )
    .await;
    // No auth_time when max_age was asked.
    let t = id_token(&p.claims());
    refused(
        &v,
        &t,
        ExpectedIdToken::new().max_age(Duration::from_secs(300)),
        "auth_time",
    )
    .await;
    // Recent enough passes.
    let t = id_token(&with(p.claims(), json!({ "auth_time": now_plus(-60) })));
    v.validate(
        &t,
        &ExpectedIdToken::new().max_age(Duration::from_secs(300)),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn missing_sub_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = id_token(&with(p.claims(), json!({ "sub": null })));
    refused(&v, &t, ExpectedIdToken::new(), "sub").await;
    let t = id_token(&with(p.claims(), json!({ "sub": "" })));
    refused(&v, &t, ExpectedIdToken::new(), "sub").await;
}

/// Junk of every shape is refused with an `Error::IdToken`, never a panic, and the
/// JWKS is not fetched for it more than the first-sight throttle allows.
#[tokio::test]
async fn oversized_and_junk_tokens_are_refused_without_a_panic() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let huge = format!(
        "{}.{}.sig",
        b64(r#"{"alg":"RS256","kid":"k1"}"#),
        "A".repeat(20_000)
    );
    let junk = vec![
        String::new(),
        ".".into(),
        "..".into(),
        "a.b.c".into(),
        "a.b.c.d.e".into(),
        "\u{0}\u{1}.\u{ff}.x".into(),
        format!("{}.{}.", b64("[]"), b64("{}")),
        format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64("[1,2]")
        ),
        format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64("not json")
        ),
        format!(
            "{}.{}.!!!!",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64("{}")
        ),
        format!("{}.{}.AAAA", b64(r#"{"alg":"RS256","kid":7}"#), b64("{}")),
        format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"ES256","kid":"k1"}"#),
            b64("{}")
        ),
        format!(
            "{}.{}.AAAA",
            b64(r#"{"alg":"EdDSA","kid":"k1"}"#),
            b64("{}")
        ),
        huge,
    ];
    for t in &junk {
        let err = v.validate(t, &ExpectedIdToken::new()).await.unwrap_err();
        assert!(matches!(err, Error::IdToken(_)), "{err:?}");
    }
    assert!(p.fetches() <= 1, "{} JWKS fetches for junk", p.fetches());
}

/// A `kid` not among the keys fetches the JWKS again, once: a key the provider
/// rotated in a moment ago is found; a second unknown kid right after does not
/// cause another fetch (the throttle), and is refused.
#[tokio::test]
async fn an_unknown_kid_refetches_the_keys_once_and_is_throttled() {
    let p = Provider::start().await;
    let v = p.validator().await;
    v.validate(&id_token(&p.claims()), &ExpectedIdToken::new())
        .await
        .unwrap();
    assert_eq!(p.fetches(), 1);
    *p.op.keys.lock().unwrap() =
        json!({ "keys": [public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")] });
    let rotated = sign(&rs256("k2"), &p.claims(), &rsa2());
    v.validate(&rotated, &ExpectedIdToken::new()).await.unwrap();
    assert_eq!(p.fetches(), 2);
    let unknown = sign(&rs256("k3"), &p.claims(), &rsa2());
    let err = v
        .validate(&unknown, &ExpectedIdToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(_) | Error::InvalidResponse(..)),
        "{err:?}"
    );
    // At most one more fetch, however the throttle decided.
    assert!(p.fetches() <= 3, "{}", p.fetches());
}

// ------------------------------------------------------------------ UserInfo

#[tokio::test]
async fn userinfo_answers_for_the_same_sub_or_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let claims = v
        .validate(&id_token(&p.claims()), &ExpectedIdToken::new())
        .await
        .unwrap();
    let token = Token::bearer("at-userinfo")
        .unwrap()
        .with_id_token("id.token.x");
    *p.op.userinfo.lock().unwrap() = json!({ "sub": "alice", "email": "alice@example.com" });
    let info = v.userinfo(&token, &claims).await.unwrap();
    assert_eq!(info["email"], "alice@example.com");
    assert_eq!(
        p.op.userinfo_auth.lock().unwrap().as_deref(),
        Some("Bearer at-userinfo"),
        "the access token, and only it, is the credential"
    );
    *p.op.userinfo.lock().unwrap() = json!({ "sub": "mallory", "email": "m@example.com" });
    let err = v.userinfo(&token, &claims).await.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("5.3.4")),
        "{err:?}"
    );
    *p.op.userinfo.lock().unwrap() = json!({ "email": "no-sub@example.com" });
    assert!(matches!(
        v.userinfo(&token, &claims).await,
        Err(Error::IdToken(_))
    ));
}

/// A DPoP-bound token goes to UserInfo as `DPoP` with a proof of its key (with
/// `ath`), and a `401` that asks for the resource's nonce is retried once with it;
/// the bearer `userinfo` refuses a DPoP-bound token rather than send it unproven.
#[cfg(feature = "dpop")]
#[tokio::test]
async fn userinfo_with_a_dpop_bound_token_sends_a_proof_and_takes_the_nonce() {
    use tower_bearer::client::DpopKey;
    let p = Provider::start().await;
    let v = p.validator().await;
    let claims = v
        .validate(&id_token(&p.claims()), &ExpectedIdToken::new())
        .await
        .unwrap();
    // A DPoP-bound token, as a token endpoint answers it.
    let token = tower_bearer::client::StoredToken {
        access_token: "at-dpop-1".into(),
        token_type: "DPoP".into(),
        expires_at: None,
        refresh_token: None,
        scope: None,
        id_token: None,
        lineage: 0,
    }
    .to_token()
    .unwrap();
    assert!(token.is_dpop());
    assert!(matches!(
        v.userinfo(&token, &claims).await,
        Err(Error::Configuration(_))
    ));
    let key = DpopKey::generate().unwrap();
    *p.op.userinfo.lock().unwrap() = json!({ "sub": "alice" });
    *p.op.userinfo_nonce.lock().unwrap() = Some("resource-nonce-1".into());
    let info = v.userinfo_dpop(&token, &claims, &key).await.unwrap();
    assert_eq!(info["sub"], "alice");
    assert_eq!(
        p.op.userinfo_auth.lock().unwrap().as_deref(),
        Some("DPoP at-dpop-1")
    );
    let proofs = p.op.userinfo_proofs.lock().unwrap().clone();
    assert_eq!(proofs.len(), 2, "one retry with the nonce");
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(proofs[1].split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["nonce"], "resource-nonce-1");
    assert_eq!(payload["htm"], "GET");
    assert_eq!(payload["ath"], ath_of("at-dpop-1"));
}

/// base64url SHA-256 of `value` (a DPoP proof's `ath`).
#[cfg(feature = "dpop")]
fn ath_of(value: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(value.as_bytes()))
}

// ------------------------------------------------------------------ browser login

/// Runs a browser login against the test provider: reads the authorization URL
/// the login shows, has the token endpoint answer with the ID token `make` builds
/// from the URL's parameters, the code and the access token, then follows the
/// redirect. Returns the outcome, the URL's parameters and the page's status.
async fn browser<F>(
    p: &Provider,
    login: AuthorizationCode,
    make: F,
) -> (
    Result<(Token, Option<IdTokenClaims>), Error>,
    HashMap<String, String>,
    u16,
)
where
    F: FnOnce(&HashMap<String, String>, &str, &str) -> Option<String>,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let login = login.show(move |url| {
        let _ = tx.send(url.to_owned());
    });
    let task = tokio::spawn(async move {
        match login.login_with_id_token().await {
            Err(Error::Configuration(_)) => login.login().await.map(|t| (t, None)),
            other => other.map(|(t, c)| (t, Some(c))),
        }
    });
    let url = rx.recv().await.unwrap();
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
    let (code, access) = ("code-abc-123", "at-abc-123");
    let mut answer = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": 600,
        "refresh_token": "rt-1",
    });
    if let Some(t) = make(&query, code, access) {
        answer["id_token"] = json!(t);
    }
    *p.op.code_answer.lock().unwrap() = answer;
    let redirect = format!(
        "{}?{}",
        query["redirect_uri"],
        serde_urlencoded::to_string([("code", code), ("state", query["state"].as_str())]).unwrap()
    );
    let page = reqwest::get(&redirect).await.unwrap().status().as_u16();
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the login did not end")
        .unwrap();
    (result, query, page)
}

async fn openid_login(p: &Provider) -> AuthorizationCode {
    let endpoint = p.endpoint().await;
    endpoint
        .authorization_code()
        .unwrap()
        .scope("openid offline_access")
        .id_token_validator(p.validator().await)
}

/// The control: the login sends a fresh nonce, and the ID token carrying it (with
/// the right c_hash and at_hash) is validated and returned with the token.
#[tokio::test]
async fn browser_login_sends_a_nonce_and_returns_the_validated_id_token() {
    let p = Provider::start().await;
    let login = openid_login(&p).await.max_age(Duration::from_secs(600));
    let claims = p.claims();
    let (result, query, page) = browser(&p, login.clone(), |q, code, access| {
        Some(id_token(&with(
            claims,
            json!({
                "nonce": q["nonce"],
                "c_hash": half_hash(code),
                "at_hash": half_hash(access),
                "auth_time": now_plus(-5),
            }),
        )))
    })
    .await;
    let (token, who) = result.unwrap();
    let who = who.unwrap();
    assert_eq!(page, 200);
    assert_eq!(who.sub, "alice");
    assert_eq!(who.nonce.as_deref(), Some(query["nonce"].as_str()));
    assert!(query["nonce"].len() >= 43, "256 random bits");
    assert_eq!(query["max_age"], "600");
    assert!(token.expose_id_token().is_some());
    assert_eq!(token.authorization(), "Bearer at-abc-123");
    // A second login sends another nonce.
    let claims = p.claims();
    let (second, query2, _) = browser(&p, login, |q, _, _| {
        Some(id_token(&with(
            claims,
            json!({ "nonce": q["nonce"], "auth_time": now_plus(-5) }),
        )))
    })
    .await;
    second.unwrap();
    assert_ne!(query["nonce"], query2["nonce"]);
}

#[tokio::test]
async fn browser_login_with_a_wrong_nonce_fails() {
    let p = Provider::start().await;
    let claims = p.claims();
    let (result, _, page) = browser(&p, openid_login(&p).await, |_, _, _| {
        Some(id_token(&with(
            claims,
            json!({ "nonce": "a-replayed-nonce" }),
        )))
    })
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("nonce")),
        "{err:?}"
    );
    assert_eq!(page, 502, "the page says the login failed");
}

#[tokio::test]
async fn browser_login_with_a_wrong_c_hash_fails() {
    let p = Provider::start().await;
    let claims = p.claims();
    let (result, _, _) = browser(&p, openid_login(&p).await, |q, _, _| {
        Some(id_token(&with(
            claims,
            json!({ "nonce": q["nonce"], "c_hash": half_hash("another-code") }),
        )))
    })
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("c_hash")),
        "{err:?}"
    );
}

#[tokio::test]
async fn browser_login_with_a_wrong_at_hash_fails() {
    let p = Provider::start().await;
    let claims = p.claims();
    let (result, _, _) = browser(&p, openid_login(&p).await, |q, _, _| {
        Some(id_token(&with(
            claims,
            json!({ "nonce": q["nonce"], "at_hash": half_hash("another-access-token") }),
        )))
    })
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("at_hash")),
        "{err:?}"
    );
}

#[tokio::test]
async fn browser_login_with_an_old_auth_time_for_max_age_fails() {
    let p = Provider::start().await;
    let claims = p.claims();
    let login = openid_login(&p).await.max_age(Duration::from_secs(60));
    let (result, _, _) = browser(&p, login, |q, _, _| {
        Some(id_token(&with(
            claims,
            json!({ "nonce": q["nonce"], "auth_time": now_plus(-3600) }),
        )))
    })
    .await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("max_age")),
        "{err:?}"
    );
}

/// `max_age` given as a plain parameter is enforced as `.max_age()` is (the review's
/// left case: it was sent, and the ID token's `auth_time` never checked).
#[tokio::test]
async fn max_age_given_as_a_parameter_is_enforced() {
    let p = Provider::start().await;
    let claims = p.claims();
    let login = openid_login(&p).await.param("max_age", "60");
    let (result, query, _) = browser(&p, login, |q, _, _| {
        Some(id_token(&with(
            claims,
            json!({ "nonce": q["nonce"], "auth_time": now_plus(-3600) }),
        )))
    })
    .await;
    assert_eq!(query["max_age"], "60", "{query:?}");
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("max_age")),
        "{err:?}"
    );
}

#[tokio::test]
async fn browser_login_with_a_validator_and_no_id_token_fails() {
    let p = Provider::start().await;
    let (result, _, _) = browser(&p, openid_login(&p).await, |_, _, _| None).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("no id_token")),
        "{err:?}"
    );
}

/// Plain OAuth still works: no `openid`, no validator, no nonce sent, a token.
#[tokio::test]
async fn a_plain_oauth_browser_login_sends_no_nonce() {
    let p = Provider::start().await;
    let login = p
        .endpoint()
        .await
        .authorization_code()
        .unwrap()
        .scope("read");
    let (result, query, page) = browser(&p, login, |_, _, _| None).await;
    let (token, claims) = result.unwrap();
    assert!(claims.is_none());
    assert!(!query.contains_key("nonce"), "{query:?}");
    assert_eq!(page, 200);
    assert_eq!(token.expose_access_token(), "at-abc-123");
}

/// A refresh whose answer has no ID token keeps the login's (OIDC Core §12.2); one
/// that brings a new ID token for another `sub` is refused.
#[tokio::test]
async fn a_refresh_keeps_the_id_token_and_a_new_one_is_validated() {
    let p = Provider::start().await;
    let login = openid_login(&p).await;
    let claims = p.claims();
    let (result, _, _) = browser(&p, login.clone(), |q, _, _| {
        Some(id_token(&with(claims, json!({ "nonce": q["nonce"] }))))
    })
    .await;
    let (first, _) = result.unwrap();
    let first_id = first.expose_id_token().unwrap().to_owned();
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-refreshed", "token_type": "Bearer", "expires_in": 600,
    });
    let authorizer = Refreshing::builder(login.clone())
        .initial_token(first.clone())
        .build();
    authorizer.invalidate();
    let refreshed = authorizer.token().await.unwrap();
    assert_eq!(refreshed.expose_access_token(), "at-refreshed");
    assert_eq!(refreshed.expose_id_token(), Some(first_id.as_str()));

    // A refresh that brings an ID token for someone else.
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-refreshed-2", "token_type": "Bearer", "expires_in": 600,
        "id_token": id_token(&with(p.claims(), json!({ "sub": "mallory" }))),
    });
    let err = login.fetch(Some(&first)).await.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("12.2")),
        "{err:?}"
    );
    // And one for the same person is taken.
    let renewed = id_token(&p.claims());
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-refreshed-3", "token_type": "Bearer", "expires_in": 600,
        "id_token": renewed,
    });
    let t = login.fetch(Some(&first)).await.unwrap();
    assert_eq!(t.expose_id_token(), Some(renewed.as_str()));
}

/// The refresh-token grant on its own (and a chain's refresh) keeps the ID token of
/// the token it replaces when the answer has none (OIDC Core §12.2), and takes a
/// new one when the answer has it.
#[tokio::test]
async fn the_refresh_token_grant_keeps_the_previous_id_token() {
    let p = Provider::start().await;
    let endpoint = p.endpoint().await;
    let previous = Token::bearer("at-old")
        .unwrap()
        .with_refresh_token("rt-old")
        .with_id_token("the.login's.id-token");
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-new", "token_type": "Bearer", "expires_in": 600,
    });
    let grant = endpoint.refresh_token("rt-old");
    let t = grant.fetch(Some(&previous)).await.unwrap();
    assert_eq!(t.expose_access_token(), "at-new");
    assert_eq!(t.expose_id_token(), Some("the.login's.id-token"));
    let chain = tower_bearer::client::source::Chain::new().refresh_with(endpoint.clone());
    let t = chain.fetch(Some(&previous)).await.unwrap();
    assert_eq!(t.expose_id_token(), Some("the.login's.id-token"));
    // Nothing to keep: none.
    let t = grant.fetch(None).await.unwrap();
    assert_eq!(t.expose_id_token(), None);
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-newer", "token_type": "Bearer", "id_token": "a.new.one",
    });
    let t = grant.fetch(Some(&previous)).await.unwrap();
    assert_eq!(t.expose_id_token(), Some("a.new.one"));
}

/// `Debug` of the validator, its builder and the claims shows no secret: not the
/// client secret, not the nonce, not the claims' values beyond the registered ones.
#[tokio::test]
async fn debug_shows_no_secret() {
    let p = Provider::start().await;
    let builder = p
        .endpoint()
        .await
        .id_token_validator()
        .unwrap()
        .client_secret("a-client-secret-of-32-bytes-or-more!");
    let printed = format!("{builder:?}");
    let v = builder
        .algorithms(&[Algorithm::RS256, Algorithm::HS256])
        .build()
        .unwrap();
    let printed = format!(
        "{printed} {v:?} {:?}",
        ExpectedIdToken::new().nonce("nonce-secret-1")
    );
    assert!(!printed.contains("a-client-secret"), "{printed}");
    assert!(!printed.contains("nonce-secret-1"), "{printed}");
    let claims = v
        .validate(
            &id_token(&with(p.claims(), json!({ "email": "alice@example.com" }))),
            &ExpectedIdToken::new(),
        )
        .await
        .unwrap();
    assert!(!format!("{claims:?}").contains("alice@example.com"));
}

// ------------------------------------------------------------------ stores

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-oidc-{name}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const SECRET_ID_TOKEN: &str =
    "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZS1pZC10b2tlbi1tYXJrZXIifQ.c2lnbmF0dXJlLW1hcmtlcg";

fn token_with_id() -> Token {
    Token::bearer("at-stored-1")
        .unwrap()
        .with_refresh_token("rt-stored-1")
        .with_id_token(SECRET_ID_TOKEN)
        .with_expires_in(Duration::from_secs(600))
}

#[tokio::test]
async fn the_id_token_survives_a_file_store_and_is_sealed_when_it_encrypts() {
    let dir = temp_dir("file");
    let plain = dir.join("plain.json");
    let store = FileStore::at(&plain, "alice", "https://idp.example");
    store.save(&token_with_id()).await.unwrap();
    let back = FileStore::at(&plain, "alice", "https://idp.example")
        .load()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.expose_id_token(), Some(SECRET_ID_TOKEN));
    // The control: the plain file holds it.
    assert!(std::fs::read_to_string(&plain)
        .unwrap()
        .contains(SECRET_ID_TOKEN));

    let sealed = dir.join("sealed.json");
    let key = tower_bearer::client::AtRestKey::new("k1", &[7u8; 32]).unwrap();
    let store = FileStore::at(&sealed, "alice", "https://idp.example").encrypt_with(key.clone());
    store.save(&token_with_id()).await.unwrap();
    let bytes = std::fs::read_to_string(&sealed).unwrap();
    for part in SECRET_ID_TOKEN.split('.') {
        assert!(
            !bytes.contains(part),
            "the sealed file holds the ID token in clear"
        );
    }
    assert!(!bytes.contains("alice-id-token-marker"));
    let back = FileStore::at(&sealed, "alice", "https://idp.example")
        .encrypt_with(key)
        .load()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.expose_id_token(), Some(SECRET_ID_TOKEN));
    std::fs::remove_dir_all(dir).unwrap();
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn the_id_token_survives_a_redis_store_and_is_sealed_when_it_encrypts() {
    use common::redis::Redis;
    let Some(redis) = Redis::plain().await else {
        return;
    };
    let profile = format!("oidc-{}-{:x}", std::process::id(), fastrand::u64(..));
    let store = redis.store(&profile).await;
    store.save(&token_with_id()).await.unwrap();
    let back = redis.store(&profile).await.load().await.unwrap().unwrap();
    assert_eq!(back.expose_id_token(), Some(SECRET_ID_TOKEN));
    let entry: HashMap<String, String> = redis
        .query(redis::cmd("HGETALL").arg(store.token_key()))
        .await;
    let raw: String = entry.values().cloned().collect();
    assert!(
        raw.contains(SECRET_ID_TOKEN),
        "the control: a plain entry holds it"
    );

    let sealed_profile = format!("{profile}-sealed");
    let key = tower_bearer::client::AtRestKey::new("k1", &[9u8; 32]).unwrap();
    let store = redis.store(&sealed_profile).await.encrypt_with(key.clone());
    store.save(&token_with_id()).await.unwrap();
    let entry: HashMap<String, String> = redis
        .query(redis::cmd("HGETALL").arg(store.token_key()))
        .await;
    let raw: String = entry.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    for part in SECRET_ID_TOKEN.split('.') {
        assert!(
            !raw.contains(part),
            "the sealed entry holds the ID token in clear"
        );
    }
    let back = redis
        .store(&sealed_profile)
        .await
        .encrypt_with(key)
        .load()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.expose_id_token(), Some(SECRET_ID_TOKEN));
}
