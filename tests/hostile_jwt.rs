//! Hostile JWTs against real axum servers behind `RequireBearerLayer`: every case
//! with the exact RFC 6750 answer it must get. The token never appears in the
//! answer, and nothing the token names (`jku`, `x5u`, `jwk`, `kid`) is fetched.
#![cfg(all(feature = "jwks", feature = "axum"))]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{send_raw, serve, Answer};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_bearer::server::{Claims, JwksValidator, JwtValidator, RequireBearerLayer, Verified};

const REALM: &str = "hostile";
const HMAC: &[u8] = b"hostile-suite-secret-of-32-bytes!!";
const ISS: &str = "https://idp.test/";
const AUD: &str = "api";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("keys/rsa.key")).unwrap()
}

fn rsa2() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("keys/rsa2.key")).unwrap()
}

fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("keys/ec256.key")).unwrap()
}

/// Signs `header.payload` exactly as given (any bytes) with `key`.
fn sign_raw(header: &str, payload: &[u8], key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!("{}.{}", b64(header), b64(payload));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

/// Good claims, changed by `f`.
fn claims_with(f: impl FnOnce(&mut Value)) -> Value {
    let mut c = json!({
        "sub": "alice", "iss": ISS, "aud": AUD, "iat": now(), "exp": now() + 600,
        "scope": "read",
    });
    f(&mut c);
    c
}

/// An RS256 token with this header (JSON text) and these claims.
fn rs256_with(header: &str, claims: &Value) -> String {
    sign_raw(
        header,
        claims.to_string().as_bytes(),
        &rsa(),
        Algorithm::RS256,
    )
}

fn rs256(claims: &Value) -> String {
    rs256_with(r#"{"alg":"RS256","typ":"JWT"}"#, claims)
}

fn unsigned(header: &str, claims: &Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64(header), b64(claims.to_string()))
}

async fn me(Verified(claims): Verified<Claims>) -> String {
    claims.sub.unwrap_or_default()
}

async fn app<V>(validator: V) -> SocketAddr
where
    V: tower_bearer::server::Validator<Claims = Claims> + Clone + Send + Sync + 'static,
{
    serve(
        Router::new()
            .route("/me", get(me))
            .layer(RequireBearerLayer::new(validator).realm(REALM)),
    )
    .await
}

fn rs_validator() -> JwtValidator<Claims> {
    JwtValidator::rsa_pem(include_bytes!("keys/rsa.pub.pem"))
        .unwrap()
        .issuer(ISS)
        .audience(AUD)
}

fn invalid_token(description: &str) -> String {
    format!(r#"Bearer realm="{REALM}", error="invalid_token", error_description="{description}""#)
}

fn invalid_request(description: &str) -> String {
    format!(r#"Bearer realm="{REALM}", error="invalid_request", error_description="{description}""#)
}

const MALFORMED: &str = "the token is malformed";
const NOT_ALLOWED: &str = "the token algorithm is not allowed";
const BAD_SIGNATURE: &str = "the token signature is invalid";

async fn bearer(addr: SocketAddr, token: &str) -> Answer {
    let value = format!("Bearer {token}");
    send_raw(addr, "/me", &[("authorization", value.as_bytes())]).await
}

/// One hostile case: its name, the token, and the answer it must get.
struct Case {
    name: &'static str,
    token: String,
    status: u16,
    challenge: String,
}

fn refused(name: &'static str, token: String, description: &str) -> Case {
    Case {
        name,
        token,
        status: 401,
        challenge: invalid_token(description),
    }
}

fn bad_request(name: &'static str, token: String, description: &str) -> Case {
    Case {
        name,
        token,
        status: 400,
        challenge: invalid_request(description),
    }
}

fn accepted(name: &'static str, token: String) -> Case {
    Case {
        name,
        token,
        status: 200,
        challenge: String::new(),
    }
}

async fn run(addr: SocketAddr, cases: Vec<Case>) -> usize {
    let count = cases.len();
    for case in cases {
        let answer = bearer(addr, &case.token).await;
        let name = case.name;
        assert_eq!(answer.status, case.status, "{name}: {}", answer.challenge());
        assert_eq!(answer.challenge(), case.challenge, "{name}");
        if case.status == 200 {
            assert_eq!(answer.body, "alice", "{name}");
        } else {
            // Neither the answer's challenge nor its body quotes the token.
            let probe = &case.token[case.token.len().saturating_sub(16)..];
            assert!(
                probe.len() < 4
                    || (!answer.challenge().contains(probe) && !answer.body.contains(probe)),
                "{name}: the token is echoed"
            );
        }
    }
    count
}

/// Every case a single-key RS256 validator (with issuer and audience) must handle.
fn rs256_cases() -> Vec<Case> {
    let good = rs256(&claims_with(|_| {}));
    let parts: Vec<&str> = good.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let other = rs256(&claims_with(|c| c["sub"] = json!("bob")));
    let other_signature = other.rsplit('.').next().unwrap().to_owned();
    let claims = claims_with(|_| {});
    let none = |alg: &str| unsigned(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#), &claims, "");
    let confused_rsa = sign_raw(
        r#"{"alg":"HS256","typ":"JWT"}"#,
        claims.to_string().as_bytes(),
        &EncodingKey::from_secret(include_bytes!("keys/rsa.pub.pem")),
        Algorithm::HS256,
    );
    // Non-canonical base64: the last character of the 256-byte signature carries two
    // bits and four zero bits; setting one of those makes a different string that
    // lax decoders read as the same bytes.
    let non_canonical = {
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let last = *s.as_bytes().last().unwrap();
        let index = alphabet.iter().position(|c| *c == last).unwrap();
        let flipped = alphabet[index ^ 1] as char;
        format!("{h}.{p}.{}{flipped}", &s[..s.len() - 1])
    };
    let nested = format!(
        r#"{{"sub":"alice","iss":"{ISS}","aud":"{AUD}","exp":{},"deep":{}{}}}"#,
        now() + 600,
        "[".repeat(2000),
        "]".repeat(2000)
    );
    let tampered = format!(
        "{h}.{}.{s}",
        b64(claims_with(|c| c["scope"] = json!("read admin")).to_string())
    );
    let with = |f: fn(&mut Value)| rs256(&claims_with(f));
    vec![
        accepted("the genuine token (control)", good.clone()),
        // alg: none, in every spelling, with or without a signature.
        refused("alg none", none("none"), NOT_ALLOWED),
        refused("alg None", none("None"), NOT_ALLOWED),
        refused("alg NONE", none("NONE"), NOT_ALLOWED),
        refused(
            "alg none with a genuine signature",
            unsigned(r#"{"alg":"none"}"#, &claims, s),
            NOT_ALLOWED,
        ),
        refused(
            "alg none, two parts",
            none("none").trim_end_matches('.').to_owned(),
            MALFORMED,
        ),
        // Algorithm confusion and unknown algorithms.
        refused(
            "HS256 signed with the RSA public key",
            confused_rsa,
            NOT_ALLOWED,
        ),
        refused(
            "an unknown alg",
            unsigned(r#"{"alg":"XS256"}"#, &claims, s),
            NOT_ALLOWED,
        ),
        refused(
            "alg with a trailing space",
            unsigned(r#"{"alg":"RS256 "}"#, &claims, s),
            NOT_ALLOWED,
        ),
        refused(
            "alg as a number",
            unsigned(r#"{"alg":256}"#, &claims, s),
            MALFORMED,
        ),
        refused(
            "no alg",
            unsigned(r#"{"typ":"JWT"}"#, &claims, s),
            MALFORMED,
        ),
        refused(
            "two algs (RS256 then none)",
            rs256_with(r#"{"alg":"RS256","alg":"none"}"#, &claims),
            MALFORMED,
        ),
        refused(
            "a header that is not an object",
            unsigned(r#""RS256""#, &claims, s),
            MALFORMED,
        ),
        // crit: no extension is understood here (RFC 7515 §4.1.11).
        refused(
            "crit with an unknown extension",
            rs256_with(r#"{"alg":"RS256","crit":["x-bind"],"x-bind":1}"#, &claims),
            "the token has a critical header this server does not understand",
        ),
        refused(
            "crit empty",
            rs256_with(r#"{"alg":"RS256","crit":[]}"#, &claims),
            "the token has a critical header this server does not understand",
        ),
        refused(
            "crit null",
            rs256_with(r#"{"alg":"RS256","crit":null}"#, &claims),
            "the token has a critical header this server does not understand",
        ),
        // Found by fuzzing: bytes that are not UTF-8 in a header member that is
        // otherwise skipped (JSON is UTF-8; the token is still properly signed).
        refused(
            "header member not UTF-8",
            {
                let mut header = br#"{"alg":"RS256","typ":"JWT"#.to_vec();
                header.extend_from_slice(&[0xff, 0xfe, b'"', b'}']);
                let message = format!("{}.{}", b64(&header), b64(claims.to_string()));
                let signature =
                    jsonwebtoken::crypto::sign(message.as_bytes(), &rsa(), Algorithm::RS256)
                        .unwrap();
                format!("{message}.{signature}")
            },
            "the token is malformed",
        ),
        // Time claims (leeway 60 s).
        refused(
            "expired just beyond the leeway",
            with(|c| c["exp"] = json!(now() - 61)),
            "the token has expired",
        ),
        accepted(
            "expired within the leeway (control)",
            with(|c| c["exp"] = json!(now() - 30)),
        ),
        refused(
            "nbf in the future",
            with(|c| c["nbf"] = json!(now() + 3600)),
            "the token is not valid yet",
        ),
        refused(
            "iat far in the future",
            with(|c| c["iat"] = json!(now() + 86_400)),
            "the token was issued in the future",
        ),
        refused(
            "no exp",
            with(|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "the token lacks the exp claim",
        ),
        refused(
            "exp as a string",
            with(|c| c["exp"] = json!((now() + 600).to_string())),
            "the token's exp claim is malformed",
        ),
        accepted(
            "exp as a decimal NumericDate (control)",
            with(|c| c["exp"] = json!(now() as f64 + 600.5)),
        ),
        refused(
            "exp as a decimal in the past",
            with(|c| c["exp"] = json!(now() as f64 - 3600.5)),
            "the token has expired",
        ),
        refused(
            "exp as a huge number",
            with(|c| c["exp"] = json!(1e300)),
            "the token's exp claim is malformed",
        ),
        refused(
            "exp past year 9999",
            with(|c| c["exp"] = json!(9_007_199_254_740_993_u64)),
            "the token's exp claim is malformed",
        ),
        refused(
            "exp negative",
            with(|c| c["exp"] = json!(-1)),
            "the token's exp claim is malformed",
        ),
        refused(
            "nbf as an object",
            with(|c| c["nbf"] = json!({"at": 1})),
            "the token's nbf claim is malformed",
        ),
        // Issuer and audience.
        refused(
            "wrong iss",
            with(|c| c["iss"] = json!("https://evil.test/")),
            "the token has the wrong issuer",
        ),
        refused(
            "no iss",
            with(|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "the token lacks the iss claim",
        ),
        refused(
            "iss as an array holding ours",
            with(|c| c["iss"] = json!([ISS])),
            "the token's iss claim is malformed",
        ),
        refused(
            "no aud",
            with(|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
            "the token lacks the aud claim",
        ),
        refused(
            "wrong aud",
            with(|c| c["aud"] = json!("other-api")),
            "the token is not for this audience",
        ),
        refused(
            "aud array without ours",
            with(|c| c["aud"] = json!(["a", "b"])),
            "the token is not for this audience",
        ),
        accepted(
            "aud array with ours (control)",
            with(|c| c["aud"] = json!(["a", AUD])),
        ),
        refused(
            "aud array with ours and a number",
            with(|c| c["aud"] = json!([AUD, 7])),
            "the token's aud claim is malformed",
        ),
        // Signatures.
        refused("signature stripped", format!("{h}.{p}."), BAD_SIGNATURE),
        refused(
            "another token's signature",
            format!("{h}.{p}.{other_signature}"),
            BAD_SIGNATURE,
        ),
        refused("tampered payload", tampered, BAD_SIGNATURE),
        refused(
            "signed by another RSA key",
            sign_raw(
                r#"{"alg":"RS256"}"#,
                claims.to_string().as_bytes(),
                &rsa2(),
                Algorithm::RS256,
            ),
            BAD_SIGNATURE,
        ),
        refused(
            "an embedded jwk with the signer's key",
            sign_raw(
                &format!(
                    r#"{{"alg":"RS256","jwk":{}}}"#,
                    serde_json::to_string(
                        &Jwk::from_encoding_key(&rsa2(), Algorithm::RS256).unwrap()
                    )
                    .unwrap()
                ),
                claims.to_string().as_bytes(),
                &rsa2(),
                Algorithm::RS256,
            ),
            BAD_SIGNATURE,
        ),
        // Structure and encoding.
        refused("two parts", format!("{h}.{p}"), MALFORMED),
        refused("four parts", format!("{h}.{p}.{s}.{s}"), MALFORMED),
        refused(
            "five parts (JWE shape)",
            format!("{h}.{p}.{s}.{s}.{s}"),
            MALFORMED,
        ),
        refused("empty header and payload", format!("..{s}"), MALFORMED),
        refused("only dots", "..".to_owned(), MALFORMED),
        refused("empty payload", format!("{h}..{s}"), MALFORMED),
        refused(
            "standard base64 in the header",
            format!("{}+/.{p}.{s}", &h[..h.len() - 2]),
            MALFORMED,
        ),
        refused("padded signature", format!("{h}.{p}.{s}=="), MALFORMED),
        refused(
            "non-canonical base64 in the signature",
            non_canonical,
            MALFORMED,
        ),
        refused(
            "a payload that is not JSON",
            sign_raw(
                r#"{"alg":"RS256"}"#,
                b"alice, valid until 2100",
                &rsa(),
                Algorithm::RS256,
            ),
            MALFORMED,
        ),
        refused(
            "a payload that is a JSON array",
            sign_raw(r#"{"alg":"RS256"}"#, b"[1,2,3]", &rsa(), Algorithm::RS256),
            MALFORMED,
        ),
        refused(
            "deeply nested JSON in a claim",
            sign_raw(
                r#"{"alg":"RS256"}"#,
                nested.as_bytes(),
                &rsa(),
                Algorithm::RS256,
            ),
            MALFORMED,
        ),
        // What the header parser refuses before any decoding (400).
        bad_request(
            "a 9 KiB token",
            format!("{h}.{}.{s}", "A".repeat(9 * 1024)),
            "the Authorization header is too long",
        ),
        // hyper's own header limit answers first (431); the validator is tested
        // with 1 MB inputs directly below.
        Case {
            name: "a 1 MB token",
            token: format!("{h}.{}.{s}", "A".repeat(1 << 20)),
            status: 431,
            challenge: String::new(),
        },
        bad_request(
            "a space inside the token",
            format!("{h}. {p}.{s}"),
            "the bearer token is malformed",
        ),
        bad_request(
            "non-ASCII in the token",
            format!("{h}.{p}é.{s}"),
            "the bearer token is malformed",
        ),
        bad_request(
            "padding inside the token",
            format!("{h}=.{p}.{s}"),
            "the bearer token is malformed",
        ),
    ]
}

#[tokio::test]
async fn every_hostile_token_gets_its_rfc_6750_answer() {
    let addr = app(rs_validator()).await;
    let cases = rs256_cases();
    let hostile = cases.iter().filter(|c| c.status != 200).count();
    assert!(hostile >= 50, "{hostile} hostile cases");
    run(addr, cases).await;
}

#[tokio::test]
async fn algorithm_confusion_with_an_ec_key_is_refused() {
    let ec = JwtValidator::<Claims>::ec_pem(include_bytes!("keys/ec256.pub.pem"))
        .unwrap()
        .issuer(ISS)
        .audience(AUD);
    let addr = app(ec).await;
    let claims = claims_with(|_| {});
    let genuine = sign_raw(
        r#"{"alg":"ES256"}"#,
        claims.to_string().as_bytes(),
        &ec256(),
        Algorithm::ES256,
    );
    let as_hmac = |secret: &[u8]| {
        sign_raw(
            r#"{"alg":"HS256"}"#,
            claims.to_string().as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
    };
    let cases = vec![
        accepted("the genuine ES256 token (control)", genuine.clone()),
        refused(
            "HS256 signed with the EC public key PEM",
            as_hmac(include_bytes!("keys/ec256.pub.pem")),
            NOT_ALLOWED,
        ),
        refused("RS256 on an EC key", rs256(&claims), NOT_ALLOWED),
        refused(
            "ES384 on a P-256 key",
            unsigned(
                r#"{"alg":"ES384"}"#,
                &claims,
                genuine.rsplit('.').next().unwrap(),
            ),
            BAD_SIGNATURE,
        ),
    ];
    run(addr, cases).await;
}

#[tokio::test]
async fn an_hmac_validator_refuses_public_key_algorithms_and_other_secrets() {
    let addr = app(JwtValidator::<Claims>::hmac(HMAC).issuer(ISS).audience(AUD)).await;
    let claims = claims_with(|_| {});
    let hs = |secret: &[u8], alg| {
        sign_raw(
            r#"{"alg":"HS256"}"#,
            claims.to_string().as_bytes(),
            &EncodingKey::from_secret(secret),
            alg,
        )
    };
    let cases = vec![
        accepted(
            "the genuine HS256 token (control)",
            hs(HMAC, Algorithm::HS256),
        ),
        refused(
            "another secret",
            hs(b"another-secret-another-secret-!!!", Algorithm::HS256),
            BAD_SIGNATURE,
        ),
        refused("an RS256 token", rs256(&claims), NOT_ALLOWED),
        refused(
            "alg none",
            unsigned(r#"{"alg":"none"}"#, &claims, ""),
            NOT_ALLOWED,
        ),
    ];
    run(addr, cases).await;
}

/// A server that counts every request it gets: the attacker's, named by `jku` or
/// `x5u`, and the identity provider's JWKS.
async fn counting_jwks(keys: Value) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let app = Router::new().fallback(move || {
        let counter = Arc::clone(&counter);
        let keys = keys.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            Json(keys)
        }
    });
    (serve(app).await, hits)
}

fn public_jwk(key: &EncodingKey, kid: &str) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    serde_json::to_value(jwk).unwrap()
}

#[tokio::test]
async fn headers_naming_keys_or_urls_are_never_followed() {
    let (idp, idp_hits) = counting_jwks(json!({ "keys": [public_jwk(&rsa(), "k1")] })).await;
    let (attacker, attacker_hits) =
        counting_jwks(json!({ "keys": [public_jwk(&rsa2(), "evil")] })).await;
    let jwks = JwksValidator::<Claims>::builder(&format!("http://{idp}/jwks"))
        .unwrap()
        .allow_insecure_http(true)
        .rules(|v| v.issuer(ISS).audience(AUD))
        // Each unknown kid below waits for its own look-up: a short interval keeps
        // the test short.
        .first_sight_interval(std::time::Duration::from_millis(100))
        .build()
        .unwrap();
    let jwks_app = app(jwks).await;
    let single_key_app = app(rs_validator()).await;
    let claims = claims_with(|_| {});
    let by_attacker = |header: String| {
        sign_raw(
            &header,
            claims.to_string().as_bytes(),
            &rsa2(),
            Algorithm::RS256,
        )
    };
    let genuine_kid =
        |kid: &str| rs256_with(&json!({"alg": "RS256", "kid": kid}).to_string(), &claims);

    let unknown_key = invalid_token("the token's signing key is unknown");
    let jwks_cases = vec![
        accepted("the genuine token (control)", genuine_kid("k1")),
        Case {
            name: "jku naming the attacker's JWKS",
            token: by_attacker(format!(
                r#"{{"alg":"RS256","kid":"evil","jku":"http://{attacker}/jwks"}}"#
            )),
            status: 401,
            challenge: unknown_key.clone(),
        },
        Case {
            name: "x5u naming the attacker's certificate",
            token: by_attacker(format!(
                r#"{{"alg":"RS256","kid":"evil","x5u":"http://{attacker}/cert.pem"}}"#
            )),
            status: 401,
            challenge: unknown_key.clone(),
        },
        refused(
            "the genuine kid with the attacker's embedded jwk",
            by_attacker(format!(
                r#"{{"alg":"RS256","kid":"k1","jwk":{}}}"#,
                public_jwk(&rsa2(), "k1")
            )),
            BAD_SIGNATURE,
        ),
        // Unknown kids: each waits for the next look-up (one per interval), and
        // is refused once it is done.
        Case {
            name: "kid with path traversal",
            token: genuine_kid("../../../../etc/passwd"),
            status: 401,
            challenge: unknown_key.clone(),
        },
        Case {
            name: "kid with quotes and a backslash",
            token: genuine_kid(r#"k1" OR "1"="1\"#),
            status: 401,
            challenge: unknown_key.clone(),
        },
        Case {
            name: "kid as a number",
            token: rs256_with(r#"{"alg":"RS256","kid":1}"#, &claims),
            status: 401,
            challenge: invalid_token(MALFORMED),
        },
        bad_request(
            "a 10 KB kid",
            genuine_kid(&"k".repeat(10 * 1024)),
            "the Authorization header is too long",
        ),
    ];
    run(jwks_app, jwks_cases).await;

    let single_key_cases = vec![
        refused(
            "jku naming the attacker's JWKS (single key)",
            by_attacker(format!(
                r#"{{"alg":"RS256","jku":"http://{attacker}/jwks"}}"#
            )),
            BAD_SIGNATURE,
        ),
        refused(
            "x5u naming the attacker's certificate (single key)",
            by_attacker(format!(
                r#"{{"alg":"RS256","x5u":"http://{attacker}/c.pem"}}"#
            )),
            BAD_SIGNATURE,
        ),
        // A single-key validator does not read kid: a genuine signature is enough.
        accepted(
            "a kid with path traversal on a genuine token (single key)",
            genuine_kid("../../etc/passwd"),
        ),
    ];
    run(single_key_app, single_key_cases).await;

    assert_eq!(attacker_hits.load(Ordering::SeqCst), 0, "jku/x5u followed");
    // The first request fetched the keys; each of the four unknown-kid tokens after
    // it cost at most one look-up (none of them a fetch of its own URL).
    assert!(idp_hits.load(Ordering::SeqCst) <= 5, "{idp_hits:?}");
}

/// Sends raw request bytes and returns the status code hyper's server answered.
async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn control_characters_never_reach_the_validator() {
    let addr = app(rs_validator()).await;
    let good = rs256(&claims_with(|_| {}));
    for (name, token) in [
        ("a NUL byte", format!("{}\0", &good[..40])),
        ("a carriage return", format!("{}\rX", &good[..40])),
        ("an escape", format!("{}\x1b[31m", &good[..40])),
        ("DEL", format!("{}\x7f", &good[..40])),
    ] {
        let request = format!(
            "GET /me HTTP/1.1\r\nhost: test\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
        );
        let status = raw_status(addr, request.as_bytes()).await;
        assert_eq!(status, 400, "{name}");
    }
}

#[test]
fn the_validator_alone_never_panics_on_garbage() {
    let v = rs_validator();
    let good = rs256(&claims_with(|_| {}));
    let mut inputs: Vec<String> = vec![
        String::new(),
        ".".into(),
        "...".into(),
        "a.b.c".into(),
        "\u{0}.\u{0}.\u{0}".into(),
        "é.é.é".into(),
        format!("{}.{}.{}", "A".repeat(1 << 20), "B".repeat(1 << 20), "C"),
    ];
    // Every prefix and every single-character deletion of a genuine token.
    for i in 0..good.len() {
        inputs.push(good[..i].to_owned());
        inputs.push(format!("{}{}", &good[..i], &good[i + 1..]));
    }
    for input in &inputs {
        assert!(v.check(input).is_err(), "{input:?} accepted");
    }
    assert!(v.check(&good).is_ok());
}
