//! The OpenID relying party attacked (review of the `oidc-rp` branch): hostile keys
//! and signatures, audience edges, the hash of each algorithm, duplicate claims, a
//! storm of unknown `kid`s, two providers sharing a key set, UserInfo answers that
//! redirect, grow or repeat `sub`, claims of another provider handed to UserInfo, a
//! login whose `openid` scope comes as a parameter, refreshed ID tokens of another
//! issuer or client or that cannot be checked (keys unreachable, rotation), access
//! and logout tokens passed off as ID tokens, `generate_tokens --whoami` with an
//! expired saved ID token or a `sub` full of terminal escapes. Everything against
//! real providers on 127.0.0.1 (axum) and the real example binary.
#![cfg(feature = "jwks")]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest as _;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::{ExpectedIdToken, IdTokenValidator, TokenEndpoint, TokenSource};
use tower_bearer::{Error, Token};

use common::jwks::{public_jwk, rsa1, rsa2};
use common::server::{now_plus, serve};

const CLIENT: &str = "rp-cli";

// ------------------------------------------------------------------ provider

/// An answer as sent: status, extra headers, body.
type Answer = (u16, Vec<(String, String)>, String);

#[derive(Default)]
struct Op {
    issuer: Mutex<String>,
    /// When set, the discovery document names this `jwks_uri` (another provider's).
    jwks_uri: Mutex<Option<String>>,
    keys: Mutex<Value>,
    jwks_fetches: AtomicUsize,
    code_answer: Mutex<Value>,
    refresh_answer: Mutex<Value>,
    /// UserInfo's answer: status, extra headers, body as sent.
    userinfo: Mutex<Answer>,
    userinfo_hits: AtomicUsize,
    /// The `Authorization` every request to `/elsewhere` carried.
    elsewhere_auth: Mutex<Vec<Option<String>>>,
    /// When set, the JWKS answers `503`.
    jwks_down: std::sync::atomic::AtomicBool,
    /// When set, refresh tokens rotate: one presented again is `invalid_grant`.
    rotate: std::sync::atomic::AtomicBool,
    /// Refresh tokens rotated away.
    consumed: Mutex<Vec<String>>,
}

struct Provider {
    op: Arc<Op>,
    issuer: String,
}

impl Provider {
    async fn start() -> Provider {
        let op = Arc::new(Op::default());
        *op.keys.lock().unwrap() = json!({ "keys": [public_jwk(&rsa1(), "k1")] });
        *op.userinfo.lock().unwrap() = (200, Vec::new(), json!({ "sub": "alice" }).to_string());
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .route("/elsewhere", get(elsewhere))
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

    fn claims(&self) -> Value {
        json!({
            "iss": self.issuer,
            "sub": "alice",
            "aud": CLIENT,
            "exp": now_plus(600),
            "iat": now_plus(0),
        })
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.op.keys.lock().unwrap() = json!({ "keys": keys });
    }

    fn set_userinfo(&self, status: u16, headers: &[(&str, &str)], body: impl Into<String>) {
        *self.op.userinfo.lock().unwrap() = (
            status,
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body.into(),
        );
    }

    fn fetches(&self) -> usize {
        self.op.jwks_fetches.load(Ordering::SeqCst)
    }
}

async fn discovery(State(op): State<Arc<Op>>) -> Json<Value> {
    let issuer = op.issuer.lock().unwrap().clone();
    let jwks_uri = op
        .jwks_uri
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| format!("{issuer}/jwks"));
    Json(json!({
        "issuer": issuer,
        "jwks_uri": jwks_uri,
        "token_endpoint": format!("{issuer}/token"),
        "authorization_endpoint": format!("{issuer}/authorize"),
        "userinfo_endpoint": format!("{issuer}/userinfo"),
    }))
}

async fn jwks(State(op): State<Arc<Op>>) -> Response {
    op.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if op.jwks_down.load(Ordering::SeqCst) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    Json(op.keys.lock().unwrap().clone()).into_response()
}

async fn token(State(op): State<Arc<Op>>, Form(form): Form<HashMap<String, String>>) -> Response {
    let answer = match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            // Rotation with reuse detection, as oidc-provider does.
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let mut consumed = op.consumed.lock().unwrap();
            if op.rotate.load(Ordering::SeqCst) && consumed.contains(&rt) {
                return (
                    axum::http::StatusCode::BAD_REQUEST,
                    Json(json!({ "error": "invalid_grant" })),
                )
                    .into_response();
            }
            consumed.push(rt);
            op.refresh_answer.lock().unwrap().clone()
        }
        _ => op.code_answer.lock().unwrap().clone(),
    };
    Json(answer).into_response()
}

async fn userinfo(State(op): State<Arc<Op>>) -> Response {
    op.userinfo_hits.fetch_add(1, Ordering::SeqCst);
    let (status, headers, body) = op.userinfo.lock().unwrap().clone();
    let mut res = (
        axum::http::StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body,
    )
        .into_response();
    for (k, v) in headers {
        res.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    res
}

async fn elsewhere(State(op): State<Arc<Op>>, headers: HeaderMap) -> Json<Value> {
    op.elsewhere_auth.lock().unwrap().push(
        headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
    );
    Json(json!({ "sub": "alice" }))
}

// ------------------------------------------------------------------ helpers

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    h
}

/// A token with exactly this header and payload text, signed by `key` with `alg`.
fn raw_token(header: &Value, payload: &str, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header.to_string()), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn id_token(claims: &Value) -> String {
    jsonwebtoken::encode(&header(Algorithm::RS256, Some("k1")), claims, &rsa1()).unwrap()
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

fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("keys/ec256.key")).unwrap()
}

fn ec384() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("keys/ec384.key")).unwrap()
}

fn ed25519() -> EncodingKey {
    EncodingKey::from_ed_pem(include_bytes!("keys/ed25519.key")).unwrap()
}

/// The public JWK of `key` for `alg` (`alg` named in it when `named`), with `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, named: bool) -> Value {
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    if !named {
        jwk.as_object_mut().unwrap().remove("alg");
    }
    jwk
}

/// `validate` refuses `t` with an `Error::IdToken` naming `rule`, quoting none of it.
async fn refused(v: &IdTokenValidator, t: &str, expected: ExpectedIdToken<'_>, rule: &str) {
    let err = v
        .validate(t, &expected)
        .await
        .expect_err("a hostile ID token was accepted");
    let Error::IdToken(why) = &err else {
        panic!("expected Error::IdToken, got {err:?}");
    };
    assert!(why.contains(rule), "{why:?} does not name {rule:?}");
    let text = format!("{err} {err:?}");
    for part in t.split('.').filter(|p| p.len() > 8) {
        assert!(!text.contains(part), "the error quotes the token: {text}");
    }
}

// ------------------------------------------------------------------ keys and signatures

/// A token without `kid` when the provider publishes several keys is not tried
/// against each of them: refused (the control: with one key, it is that key's).
#[tokio::test]
async fn a_kidless_token_with_several_keys_is_refused() {
    let p = Provider::start().await;
    p.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    let v = p.validator().await;
    let t = jsonwebtoken::encode(&header(Algorithm::RS256, None), &p.claims(), &rsa1()).unwrap();
    refused(&v, &t, ExpectedIdToken::new(), "").await;
    // With the same one key alone, a kid-less token is its key's.
    let p = Provider::start().await;
    let v = p.validator().await;
    let t = jsonwebtoken::encode(&header(Algorithm::RS256, None), &p.claims(), &rsa1()).unwrap();
    v.validate(&t, &ExpectedIdToken::new())
        .await
        .unwrap_or_else(|e| panic!("the one key's kid-less token: {e:?}"));
}

/// A key published for encryption (`use: enc`) verifies no ID token, even when the
/// token names its `kid` and is signed by it.
#[tokio::test]
async fn a_key_for_encryption_verifies_no_id_token() {
    let p = Provider::start().await;
    let mut enc = public_jwk(&rsa1(), "k1");
    enc["use"] = json!("enc");
    p.set_keys(vec![enc.clone(), public_jwk(&rsa2(), "k2")]);
    let v = p.validator().await;
    refused(&v, &id_token(&p.claims()), ExpectedIdToken::new(), "").await;
    // Alone in the set, it leaves no key to check with: an error, not a token.
    p.set_keys(vec![enc]);
    let v = p.validator().await;
    assert!(v
        .validate(&id_token(&p.claims()), &ExpectedIdToken::new())
        .await
        .is_err());
}

/// A JWK that names `RS256` does not verify a `PS256` token signed by its key,
/// though PS256 is in the default allow-list (the key is bound to its algorithm).
#[tokio::test]
async fn a_key_naming_rs256_does_not_verify_ps256() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let t =
        jsonwebtoken::encode(&header(Algorithm::PS256, Some("k1")), &p.claims(), &rsa1()).unwrap();
    refused(&v, &t, ExpectedIdToken::new(), "").await;
    // The control: the JWK naming no algorithm, PS256 by that key passes.
    p.set_keys(vec![jwk(&rsa1(), Algorithm::RS256, "k1", false)]);
    let v = p.validator().await;
    v.validate(&t, &ExpectedIdToken::new()).await.unwrap();
}

/// Converts a raw `r || s` ECDSA signature (32-byte halves) to ASN.1 DER.
fn der(raw: &[u8]) -> Vec<u8> {
    let int = |x: &[u8]| {
        let mut x: Vec<u8> = x.iter().copied().skip_while(|b| *b == 0).collect();
        if x.first().is_some_and(|b| b & 0x80 != 0) {
            x.insert(0, 0);
        }
        let mut out = vec![0x02, x.len() as u8];
        out.extend(x);
        out
    };
    let (r, s) = (int(&raw[..32]), int(&raw[32..]));
    let mut out = vec![0x30, (r.len() + s.len()) as u8];
    out.extend(r);
    out.extend(s);
    out
}

/// An ES256 ID token whose signature is re-encoded in DER (what OpenSSL makes)
/// instead of JOSE's fixed `r || s`: refused; the fixed form passes.
#[tokio::test]
async fn an_es256_signature_re_encoded_in_der_is_refused() {
    let p = Provider::start().await;
    p.set_keys(vec![jwk(&ec256(), Algorithm::ES256, "e1", true)]);
    let v = p.validator().await;
    let t = raw_token(
        &json!({ "alg": "ES256", "kid": "e1" }),
        &p.claims().to_string(),
        &ec256(),
        Algorithm::ES256,
    );
    v.validate(&t, &ExpectedIdToken::new()).await.unwrap();
    let (message, signature) = t.rsplit_once('.').unwrap();
    let raw = URL_SAFE_NO_PAD.decode(signature).unwrap();
    let reencoded = format!("{message}.{}", b64(der(&raw)));
    refused(&v, &reencoded, ExpectedIdToken::new(), "").await;
}

/// Two providers share one key set (a multi-tenant provider's common `jwks_uri`):
/// a token issued by one, signed by the shared key, is refused by the other's
/// validator (its `iss` is checked), and the validators keep separate caches.
#[tokio::test]
async fn two_issuers_sharing_one_key_set_do_not_take_each_others_tokens() {
    let a = Provider::start().await;
    let b = Provider::start().await;
    *b.op.jwks_uri.lock().unwrap() = Some(format!("{}/jwks", a.issuer));
    let va = a.validator().await;
    let vb = b.validator().await;
    let of_a = id_token(&a.claims());
    let of_b = id_token(&b.claims());
    va.validate(&of_a, &ExpectedIdToken::new()).await.unwrap();
    vb.validate(&of_b, &ExpectedIdToken::new()).await.unwrap();
    refused(&vb, &of_a, ExpectedIdToken::new(), "iss").await;
    refused(&va, &of_b, ExpectedIdToken::new(), "iss").await;
    // A clone of a validator shares its keys: no fetch of its own.
    let before = a.fetches();
    va.clone()
        .validate(&of_a, &ExpectedIdToken::new())
        .await
        .unwrap();
    assert_eq!(a.fetches(), before);
}

/// A storm of tokens with `kid`s never published costs at most the throttled
/// look-up, not one fetch each, and each is refused.
#[tokio::test]
async fn an_unknown_kid_storm_spends_no_fetches_beyond_the_throttle() {
    let p = Provider::start().await;
    let v = p
        .endpoint()
        .await
        .id_token_validator()
        .unwrap()
        .first_sight_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    v.validate(&id_token(&p.claims()), &ExpectedIdToken::new())
        .await
        .unwrap();
    assert_eq!(p.fetches(), 1);
    let claims = p.claims();
    let storm: Vec<_> = (0..40)
        .map(|i| {
            let v = v.clone();
            let t = jsonwebtoken::encode(
                &header(Algorithm::RS256, Some(&format!("junk-{i}"))),
                &claims,
                &rsa2(),
            )
            .unwrap();
            tokio::spawn(async move { v.validate(&t, &ExpectedIdToken::new()).await })
        })
        .collect();
    for t in storm {
        assert!(t.await.unwrap().is_err());
    }
    assert!(
        p.fetches() <= 2,
        "{} JWKS fetches for 40 junk kids",
        p.fetches()
    );
}

// ------------------------------------------------------------------ claims

/// `aud` edges: an empty list, a list with a non-string, another case, a trailing
/// space are refused; a one-element list needs no `azp`.
#[tokio::test]
async fn audience_edges() {
    let p = Provider::start().await;
    let v = p.validator().await;
    for aud in [
        json!([]),
        json!([CLIENT, 7]),
        json!("RP-CLI"),
        json!(format!("{CLIENT} ")),
        json!([format!("{CLIENT} ")]),
    ] {
        let t = id_token(&with(p.claims(), json!({ "aud": aud })));
        refused(&v, &t, ExpectedIdToken::new(), "").await;
    }
    let t = id_token(&with(p.claims(), json!({ "aud": [CLIENT] })));
    v.validate(&t, &ExpectedIdToken::new()).await.unwrap();
}

/// A claim given twice (`sub`, `iss`, `aud`, `exp`) is refused, not read as its
/// first or last value: one parser's `alice` is not another's `mallory`.
#[tokio::test]
async fn duplicate_registered_claims_are_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let base = format!(
        r#""iss":"{}","aud":"{CLIENT}","exp":{},"iat":{}"#,
        p.issuer,
        now_plus(600),
        now_plus(0)
    );
    let h = json!({ "alg": "RS256", "kid": "k1" });
    for payload in [
        format!(r#"{{"sub":"alice","sub":"mallory",{base}}}"#),
        format!(r#"{{"sub":"alice",{base},"iss":"https://evil.example"}}"#),
        format!(r#"{{"sub":"alice",{base},"aud":"other"}}"#),
        format!(r#"{{"sub":"alice",{base},"exp":1}}"#),
    ] {
        let t = raw_token(&h, &payload, &rsa1(), Algorithm::RS256);
        refused(&v, &t, ExpectedIdToken::new(), "").await;
    }
    // The control: the same without the duplicate passes.
    let t = raw_token(
        &h,
        &format!(r#"{{"sub":"alice",{base}}}"#),
        &rsa1(),
        Algorithm::RS256,
    );
    v.validate(&t, &ExpectedIdToken::new()).await.unwrap();
}

/// `at_hash` and `c_hash` are the left half of the hash of the token's algorithm:
/// SHA-384 for ES384 and PS384, SHA-512 for EdDSA (Ed25519, as oidc-provider);
/// the SHA-256 half is refused under them.
#[tokio::test]
async fn half_hashes_follow_the_algorithm() {
    let p = Provider::start().await;
    p.set_keys(vec![
        jwk(&ec384(), Algorithm::ES384, "p384", true),
        jwk(&ed25519(), Algorithm::EdDSA, "ed", true),
        jwk(&rsa1(), Algorithm::PS384, "ps", true),
    ]);
    let v = p
        .endpoint()
        .await
        .id_token_validator()
        .unwrap()
        .algorithms(&[Algorithm::ES384, Algorithm::EdDSA, Algorithm::PS384])
        .build()
        .unwrap();
    let half = |digest: &[u8]| b64(&digest[..digest.len() / 2]);
    let (at, code) = ("at-xyz-1", "code-xyz-1");
    for (kid, alg, key, name) in [
        ("p384", Algorithm::ES384, ec384(), "ES384"),
        ("ed", Algorithm::EdDSA, ed25519(), "EdDSA"),
        ("ps", Algorithm::PS384, rsa1(), "PS384"),
    ] {
        let (at_hash, c_hash) = if alg == Algorithm::EdDSA {
            (
                half(&sha2::Sha512::digest(at)),
                half(&sha2::Sha512::digest(code)),
            )
        } else {
            (
                half(&sha2::Sha384::digest(at)),
                half(&sha2::Sha384::digest(code)),
            )
        };
        let h = json!({ "alg": name, "kid": kid });
        let good = with(p.claims(), json!({ "at_hash": at_hash, "c_hash": c_hash }));
        let t = raw_token(&h, &good.to_string(), &key, alg);
        let expected = ExpectedIdToken::new().access_token(at).code(code);
        v.validate(&t, &expected)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let sha256 = with(
            p.claims(),
            json!({ "at_hash": half(&sha2::Sha256::digest(at)) }),
        );
        let t = raw_token(&h, &sha256.to_string(), &key, alg);
        refused(&v, &t, ExpectedIdToken::new().access_token(at), "at_hash").await;
    }
}

/// `max_age=0` (log in again now): an `auth_time` minutes old is refused, one of
/// now passes; `auth_time` of another type is refused, not ignored.
#[tokio::test]
async fn max_age_zero() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let zero = || ExpectedIdToken::new().max_age(Duration::ZERO);
    let t = id_token(&with(p.claims(), json!({ "auth_time": now_plus(-600) })));
    refused(&v, &t, zero(), "max_age").await;
    let t = id_token(&with(p.claims(), json!({ "auth_time": now_plus(0) })));
    v.validate(&t, &zero()).await.unwrap();
    let t = id_token(&with(p.claims(), json!({ "auth_time": "yesterday" })));
    refused(&v, &t, zero(), "auth_time").await;
}

// ------------------------------------------------------------------ UserInfo

async fn alice(p: &Provider, v: &IdTokenValidator) -> tower_bearer::client::IdTokenClaims {
    v.validate(&id_token(&p.claims()), &ExpectedIdToken::new())
        .await
        .unwrap()
}

/// UserInfo that redirects to another address is not followed: the access token
/// goes nowhere else, and the answer is an error.
#[tokio::test]
async fn userinfo_does_not_follow_a_redirect_with_the_token() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let who = alice(&p, &v).await;
    let token = Token::bearer("at-redirected").unwrap();
    let other = Provider::start().await;
    let location = format!("{}/elsewhere", other.issuer);
    p.set_userinfo(302, &[("location", location.as_str())], "");
    let err = v.userinfo(&token, &who).await.unwrap_err();
    assert!(matches!(err, Error::InvalidResponse(..)), "{err:?}");
    assert!(
        other.op.elsewhere_auth.lock().unwrap().is_empty(),
        "the redirect was followed"
    );
}

/// A UserInfo answer bigger than its bound is refused, without a panic.
#[tokio::test]
async fn a_huge_userinfo_answer_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let who = alice(&p, &v).await;
    let token = Token::bearer("at-huge").unwrap();
    for size in [70 * 1024, 3 * 1024 * 1024] {
        let body = format!(r#"{{"sub":"alice","pad":"{}"}}"#, "x".repeat(size));
        p.set_userinfo(200, &[], body);
        let err = v.userinfo(&token, &who).await.unwrap_err();
        assert!(matches!(err, Error::InvalidResponse(..)), "{size}: {err:?}");
    }
}

/// A UserInfo answer with `sub` twice is judged on the value it returns: whichever
/// the check reads is the one the caller sees.
#[tokio::test]
async fn a_userinfo_answer_with_sub_twice_is_judged_on_what_it_returns() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let who = alice(&p, &v).await;
    let token = Token::bearer("at-dup").unwrap();
    p.set_userinfo(200, &[], r#"{"sub":"alice","sub":"mallory"}"#);
    match v.userinfo(&token, &who).await {
        Err(Error::IdToken(_)) | Err(Error::InvalidResponse(..)) => {}
        Ok(info) => assert_eq!(info["sub"], "alice", "checked one sub, returned another"),
        Err(e) => panic!("{e:?}"),
    }
    p.set_userinfo(200, &[], r#"{"sub":"mallory","sub":"alice"}"#);
    match v.userinfo(&token, &who).await {
        Err(Error::IdToken(_)) | Err(Error::InvalidResponse(..)) => {}
        Ok(info) => assert_eq!(info["sub"], "alice", "checked one sub, returned another"),
        Err(e) => panic!("{e:?}"),
    }
}

/// The claims of an ID token of another provider (or for another client) are not
/// who this provider's UserInfo describes, though the `sub` strings are equal:
/// `sub` is unique only within its issuer (OIDC Core §2, §5.3.4). The access token
/// is not even sent.
#[tokio::test]
async fn userinfo_refuses_the_claims_of_another_provider() {
    let a = Provider::start().await;
    let b = Provider::start().await;
    let va = a.validator().await;
    let vb = b.validator().await;
    let alice_at_a = alice(&a, &va).await;
    let token = Token::bearer("at-of-b").unwrap();
    b.set_userinfo(200, &[], json!({ "sub": "alice" }).to_string());
    let err = vb.userinfo(&token, &alice_at_a).await.unwrap_err();
    assert!(matches!(err, Error::IdToken(_)), "{err:?}");
    assert_eq!(b.op.userinfo_hits.load(Ordering::SeqCst), 0);
    // Another client of the same provider.
    let other_client = b
        .endpoint()
        .await
        .client_id("another-client")
        .id_token_validator()
        .unwrap()
        .build()
        .unwrap();
    let alice_at_b = alice(&b, &vb).await;
    let err = other_client
        .userinfo(&token, &alice_at_b)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdToken(_)), "{err:?}");
    // The control: B's own claims.
    vb.userinfo(&token, &alice_at_b).await.unwrap();
}

// ------------------------------------------------------------------ browser login and refresh

/// Runs a browser login: the token endpoint answers with the ID token `make`
/// builds from the authorization URL's parameters.
async fn browser<F>(
    p: &Provider,
    login: AuthorizationCode,
    make: F,
) -> (Result<Token, Error>, HashMap<String, String>)
where
    F: FnOnce(&HashMap<String, String>) -> String,
{
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let login = login.show(move |url| {
        let _ = tx.send(url.to_owned());
    });
    let task = tokio::spawn(async move { login.login().await });
    let url = rx.recv().await.unwrap();
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
    *p.op.code_answer.lock().unwrap() = json!({
        "access_token": "at-1", "token_type": "Bearer", "expires_in": 600,
        "refresh_token": "rt-1", "id_token": make(&query),
    });
    let redirect = format!(
        "{}?{}",
        query["redirect_uri"],
        serde_urlencoded::to_string([("code", "code-1"), ("state", query["state"].as_str())])
            .unwrap()
    );
    let _ = reqwest::get(&redirect).await.unwrap();
    let result = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the login did not end")
        .unwrap();
    (result, query)
}

/// A login given an ID token validator binds its ID token with a nonce even when
/// `openid` comes through `param("scope", …)` rather than `scope(…)`: an ID
/// token carrying another login's nonce is refused.
#[tokio::test]
async fn a_validated_login_sends_a_nonce_when_openid_comes_as_a_parameter() {
    let p = Provider::start().await;
    let login = p
        .endpoint()
        .await
        .authorization_code()
        .unwrap()
        .param("scope", "openid offline_access")
        .id_token_validator(p.validator().await);
    let claims = p.claims();
    let (result, query) = browser(&p, login, |_| {
        id_token(&with(claims, json!({ "nonce": "another-logins-nonce" })))
    })
    .await;
    assert!(query.contains_key("nonce"), "no nonce sent: {query:?}");
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("nonce")),
        "{err:?}"
    );
}

/// The ID token of a first login (its nonce) replayed into a second is refused.
#[tokio::test]
async fn an_id_token_replayed_into_the_next_login_is_refused() {
    let p = Provider::start().await;
    let login = p
        .endpoint()
        .await
        .authorization_code()
        .unwrap()
        .scope("openid")
        .id_token_validator(p.validator().await);
    let claims = p.claims();
    let mut first = None;
    let (result, _) = browser(&p, login.clone(), |q| {
        let t = id_token(&with(claims, json!({ "nonce": q["nonce"] })));
        first = Some(t.clone());
        t
    })
    .await;
    result.unwrap();
    let first = first.unwrap();
    let (result, _) = browser(&p, login, |_| first).await;
    let err = result.unwrap_err();
    assert!(
        matches!(&err, Error::IdToken(why) if why.contains("nonce")),
        "{err:?}"
    );
}

/// A refresh bringing an ID token of another issuer (signed by the same key) or
/// for another client is refused; the same person's passes.
#[tokio::test]
async fn a_refreshed_id_token_of_another_issuer_or_client_is_refused() {
    let p = Provider::start().await;
    let login = p
        .endpoint()
        .await
        .authorization_code()
        .unwrap()
        .scope("openid")
        .id_token_validator(p.validator().await);
    let previous = Token::bearer("at-0")
        .unwrap()
        .with_refresh_token("rt-0")
        .with_id_token(id_token(&p.claims()));
    for changes in [
        json!({ "iss": "https://evil.example" }),
        json!({ "aud": "another-client" }),
        json!({ "aud": ["another-client", CLIENT], "azp": "another-client" }),
        json!({ "exp": now_plus(-3600), "iat": now_plus(-7200) }),
    ] {
        *p.op.refresh_answer.lock().unwrap() = json!({
            "access_token": "at-r", "token_type": "Bearer", "expires_in": 600,
            "id_token": id_token(&with(p.claims(), changes.clone())),
        });
        let err = login.fetch(Some(&previous)).await.unwrap_err();
        assert!(matches!(err, Error::IdToken(_)), "{changes}: {err:?}");
    }
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-r", "token_type": "Bearer", "expires_in": 600,
        "id_token": id_token(&with(p.claims(), json!({ "iat": now_plus(1) }))),
    });
    login.fetch(Some(&previous)).await.unwrap();
}

/// Tokens of other kinds the provider signs with the same keys are not ID tokens
/// (RFC 8725 §2.8, §3.11): an RFC 9068 access token (`typ: at+jwt`) for this
/// client, a back-channel logout token (`typ: logout+jwt`, an `events` claim and
/// no nonce: OIDC Back-Channel Logout §2.4, §4.1), a security event token
/// (`events`, RFC 8417 §4.3). Each is refused where no nonce is expected (a device
/// login, a refresh, `--whoami`); a plain `typ: JWT` passes.
#[tokio::test]
async fn tokens_of_other_kinds_are_not_id_tokens() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let payload = p.claims().to_string();
    for typ in ["at+jwt", "application/at+jwt", "logout+jwt", "Logout+JWT"] {
        let h = json!({ "alg": "RS256", "kid": "k1", "typ": typ });
        let t = raw_token(&h, &payload, &rsa1(), Algorithm::RS256);
        refused(&v, &t, ExpectedIdToken::new(), "").await;
    }
    let logout = with(
        p.claims(),
        json!({
            "jti": "j-1",
            "sid": "s-1",
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        }),
    );
    refused(&v, &id_token(&logout), ExpectedIdToken::new(), "").await;
    let h = json!({ "alg": "RS256", "kid": "k1", "typ": "JWT" });
    let t = raw_token(&h, &payload, &rsa1(), Algorithm::RS256);
    v.validate(&t, &ExpectedIdToken::new()).await.unwrap();
}

/// A header with `crit` names extensions the validator must understand (RFC 7515
/// §4.1.11): it understands none, so such a token is refused.
#[tokio::test]
async fn a_critical_header_extension_is_refused() {
    let p = Provider::start().await;
    let v = p.validator().await;
    let h = json!({ "alg": "RS256", "kid": "k1", "crit": ["b64"], "b64": false });
    let t = raw_token(&h, &p.claims().to_string(), &rsa1(), Algorithm::RS256);
    refused(&v, &t, ExpectedIdToken::new(), "").await;
}

// ------------------------------------------------------------------ generate_tokens --whoami

/// Runs `generate_tokens --whoami` with a token file holding `token`.
async fn whoami(p: &Provider, dir: &std::path::Path, token: &Token) -> std::process::Output {
    use tower_bearer::client::{FileStore, TokenStore};
    let file = dir.join("tokens.json");
    FileStore::at(&file, "alice", format!("{}/token", p.issuer))
        .save(token)
        .await
        .unwrap();
    tokio::process::Command::new(common::bins::example_binary("generate_tokens"))
        .args(["-u", "alice", "--issuer", &p.issuer, "--client-id", CLIENT])
        .args(["--scope", "openid", "--whoami", "--token-file"])
        .arg(&file)
        .env("XDG_CONFIG_HOME", dir)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

/// A saved ID token from an earlier login, expired since, is not shown as who is
/// logged in: `--whoami` fails in one line pointing at `--relogin`, quoting no
/// token; the control, a current one, names alice.
#[tokio::test]
async fn whoami_refuses_an_expired_saved_id_token() {
    let p = Provider::start().await;
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-oidc-attack-whoami-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let old = id_token(&with(
        p.claims(),
        json!({ "exp": now_plus(-3600), "iat": now_plus(-7200) }),
    ));
    let token = Token::bearer("at-saved-1")
        .unwrap()
        .with_expires_in(Duration::from_secs(600))
        .with_id_token(old.clone());
    let out = whoami(&p, &dir, &token).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("expired") && stderr.contains("--relogin"),
        "{stderr}"
    );
    assert!(!stderr.contains("Logged in as"), "{stderr}");
    // Nothing printed for the shell to use: the refusal comes first (the review's
    // left case: the exports were printed, then the exit status said failure).
    assert!(!stdout.contains("export "), "{stdout}");
    for part in old.split('.') {
        assert!(!stderr.contains(part) && !stdout.contains(part), "{stderr}");
    }
    // A newer token (its own lineage) with a current ID token.
    let token = Token::bearer("at-saved-2")
        .unwrap()
        .with_expires_in(Duration::from_secs(600))
        .with_id_token(id_token(&p.claims()));
    let out = whoami(&p, &dir, &token).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("Logged in as alice at {}", p.issuer)),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(stdout.contains("export "), "{stdout}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A refresh whose new ID token cannot be checked now (the provider's keys are
/// unreachable: a restarted process, a JWKS blip) still hands over the token the
/// provider issued, with the login's ID token in place of the unchecked one: with
/// refresh token rotation the old refresh token is spent, so failing the refresh
/// would lose the session (the next refresh is `invalid_grant`). A new ID token
/// that is refused (another `sub`) still fails it.
#[tokio::test]
async fn a_refresh_while_the_keys_are_unreachable_keeps_the_rotated_session() {
    let p = Provider::start().await;
    let login = p
        .endpoint()
        .await
        .authorization_code()
        .unwrap()
        .scope("openid")
        .id_token_validator(p.validator().await);
    let login_id = id_token(&p.claims());
    let previous = Token::bearer("at-0")
        .unwrap()
        .with_refresh_token("rt-1")
        .with_id_token(login_id.clone());
    let renewed = id_token(&with(p.claims(), json!({ "iat": now_plus(1) })));
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-r", "token_type": "Bearer", "expires_in": 600,
        "refresh_token": "rt-2", "id_token": renewed,
    });
    p.op.rotate.store(true, Ordering::SeqCst);
    p.op.jwks_down.store(true, Ordering::SeqCst);
    let got = login.fetch(Some(&previous)).await;
    assert!(p.fetches() >= 1, "the keys were asked for");
    assert_eq!(*p.op.consumed.lock().unwrap(), ["rt-1"]);
    let token = got.expect("the rotated session was dropped");
    assert_eq!(token.expose_refresh_token(), Some("rt-2"));
    assert_eq!(token.expose_access_token(), "at-r");
    assert_eq!(
        token.expose_id_token(),
        Some(login_id.as_str()),
        "an unchecked ID token was kept"
    );
    // Refused (not unreachable): still an error.
    p.op.jwks_down.store(false, Ordering::SeqCst);
    *p.op.refresh_answer.lock().unwrap() = json!({
        "access_token": "at-r2", "token_type": "Bearer", "expires_in": 600,
        "refresh_token": "rt-3",
        "id_token": id_token(&with(p.claims(), json!({ "sub": "mallory" }))),
    });
    let err = login.fetch(Some(&token)).await.unwrap_err();
    assert!(matches!(err, Error::IdToken(_)), "{err:?}");
}

/// `--whoami` prints the provider's `sub` to the terminal: control characters in it
/// (an escape sequence that retitles the window or rewrites the screen) come out
/// escaped, not raw.
#[tokio::test]
async fn whoami_does_not_print_control_characters_raw() {
    let p = Provider::start().await;
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-oidc-attack-whoami-esc-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let sub = "alice\u{1b}]0;owned\u{7}\u{1b}[2J\r\nLogged in as root";
    let token = Token::bearer("at-saved-esc")
        .unwrap()
        .with_expires_in(Duration::from_secs(600))
        .with_id_token(id_token(&with(p.claims(), json!({ "sub": sub }))));
    let out = whoami(&p, &dir, &token).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Logged in as alice"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}') && !stderr.contains('\u{7}') && !stderr.contains('\r'),
        "{stderr:?}"
    );
    assert!(!stderr.contains("\nLogged in as root"), "{stderr:?}");
    let _ = std::fs::remove_dir_all(dir);
}
