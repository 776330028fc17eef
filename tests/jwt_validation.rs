//! JwtValidator behind RequireBearerLayer in a real axum server: every algorithm,
//! and the hostile tokens it must refuse, each with its RFC 6750 answer.
#![cfg(feature = "jwt")]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use common::send_raw;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tower::ServiceBuilder;
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, RequireScopeLayer, Verified};

const HMAC: &[u8] = b"test-secret-test-secret-test-secret!";
const ISS: &str = "https://idp.test/";
const AUD: &str = "test-api";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> serde_json::Value {
    json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": now() + 600, "scope": "read"})
}

fn mint(alg: Algorithm, claims: &serde_json::Value) -> String {
    let key = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => EncodingKey::from_secret(HMAC),
        Algorithm::ES256 => EncodingKey::from_ec_pem(include_bytes!("keys/ec256.key")).unwrap(),
        Algorithm::ES384 => EncodingKey::from_ec_pem(include_bytes!("keys/ec384.key")).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(include_bytes!("keys/ed25519.key")).unwrap(),
        _ => EncodingKey::from_rsa_pem(include_bytes!("keys/rsa.key")).unwrap(),
    };
    encode(&Header::new(alg), claims, &key).unwrap()
}

fn validator(alg: Algorithm) -> JwtValidator<Claims> {
    let v = match alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => JwtValidator::hmac(HMAC),
        Algorithm::ES256 => JwtValidator::ec_pem(include_bytes!("keys/ec256.pub.pem")).unwrap(),
        Algorithm::ES384 => JwtValidator::ec_pem(include_bytes!("keys/ec384.pub.pem")).unwrap(),
        Algorithm::EdDSA => JwtValidator::ed_pem(include_bytes!("keys/ed25519.pub.pem")).unwrap(),
        _ => JwtValidator::rsa_pem(include_bytes!("keys/rsa.pub.pem")).unwrap(),
    };
    v.issuer(ISS).audience(AUD)
}

async fn me(Verified(claims): Verified<Claims>) -> String {
    claims.sub.unwrap_or_default()
}

async fn app(validator: JwtValidator<Claims>) -> std::net::SocketAddr {
    let admin = Router::new()
        .route("/admin", get(|| async { "admin area" }))
        .layer(RequireScopeLayer::<Claims>::new(["admin"]).realm("test"));
    common::serve(
        Router::new()
            .route("/me", get(me))
            .merge(admin)
            .layer(ServiceBuilder::new().layer(RequireBearerLayer::new(validator).realm("test"))),
    )
    .await
}

async fn get_with(addr: std::net::SocketAddr, path: &str, token: &str) -> common::Answer {
    let value = format!("Bearer {token}");
    send_raw(addr, path, &[("authorization", value.as_bytes())]).await
}

const ALGORITHMS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[tokio::test]
async fn every_algorithm_validates_and_puts_the_claims_in_the_request() {
    for alg in ALGORITHMS {
        let addr = app(validator(alg)).await;
        let answer = get_with(addr, "/me", &mint(alg, &claims())).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "alice"),
            "{alg:?}"
        );
    }
}

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn invalid(description: &str) -> String {
    format!(r#"Bearer realm="test", error="invalid_token", error_description="{description}""#)
}

#[tokio::test]
async fn hostile_tokens_are_refused_with_the_right_answer() {
    let rsa = app(validator(Algorithm::RS256)).await;
    let hmac = app(validator(Algorithm::HS256)).await;
    let good = mint(Algorithm::RS256, &claims());
    let parts: Vec<&str> = good.split('.').collect();

    // alg none, with and without a signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    // Algorithm confusion: HS256 signed with the RSA public key PEM as the secret.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(),
        &EncodingKey::from_secret(include_bytes!("keys/rsa.pub.pem")),
    )
    .unwrap();
    // The payload changed after signing.
    let mut tampered_claims = claims();
    tampered_claims["sub"] = json!("mallory");
    let tampered = format!("{}.{}.{}", parts[0], b64(&tampered_claims), parts[2]);
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = claims();
        f(&mut c);
        mint(Algorithm::RS256, &c)
    };

    type Case<'a> = (&'a str, String, u16, String);
    let cases: Vec<Case> = vec![
        (
            "alg none",
            none.clone(),
            401,
            invalid("the token is malformed"),
        ),
        (
            "alg none, no dot",
            none.trim_end_matches('.').to_owned(),
            401,
            invalid("the token is malformed"),
        ),
        (
            "HS256 with the RSA public key",
            confused,
            401,
            invalid("the token algorithm is not allowed"),
        ),
        (
            "expired beyond the leeway",
            with(&|c| c["exp"] = json!(now() - 120)),
            401,
            invalid("the token has expired"),
        ),
        (
            "nbf in the future",
            with(&|c| c["nbf"] = json!(now() + 3600)),
            401,
            invalid("the token is not valid yet"),
        ),
        (
            "wrong iss",
            with(&|c| c["iss"] = json!("https://evil.test/")),
            401,
            invalid("the token has the wrong issuer"),
        ),
        (
            "wrong aud",
            with(&|c| c["aud"] = json!("other-api")),
            401,
            invalid("the token is not for this audience"),
        ),
        (
            "aud array without ours",
            with(&|c| c["aud"] = json!(["a", "b"])),
            401,
            invalid("the token is not for this audience"),
        ),
        (
            "missing exp",
            with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            401,
            invalid("the token lacks the exp claim"),
        ),
        (
            "tampered payload",
            tampered,
            401,
            invalid("the token signature is invalid"),
        ),
        (
            "truncated",
            good[..good.len() - 10].to_owned(),
            401,
            invalid("the token signature is invalid"),
        ),
        (
            "signature stripped",
            format!("{}.{}.", parts[0], parts[1]),
            401,
            invalid("the token signature is invalid"),
        ),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            401,
            invalid("the token is malformed"),
        ),
        (
            "garbage",
            "not-a-jwt".to_owned(),
            401,
            invalid("the token is malformed"),
        ),
    ];
    for (name, token, status, challenge) in cases {
        let answer = get_with(rsa, "/me", &token).await;
        assert_eq!(answer.status, status, "{name}");
        assert_eq!(answer.challenge(), challenge, "{name}");
        assert!(
            !answer.challenge().contains(&token[..20.min(token.len())]),
            "{name}: token echoed"
        );
    }
    // The HMAC app refuses an RS256 token (wrong key type) the same way.
    let answer = get_with(hmac, "/me", &good).await;
    assert_eq!(
        answer.challenge(),
        invalid("the token algorithm is not allowed")
    );
    // A 100 KB token is refused before any decoding.
    let huge = format!("{}.{}.{}", parts[0], "A".repeat(100 * 1024), parts[2]);
    assert_eq!(get_with(rsa, "/me", &huge).await.status, 400);
}

#[tokio::test]
async fn scopes_are_checked_per_route() {
    let addr = app(validator(Algorithm::ES256)).await;
    let reader = mint(Algorithm::ES256, &claims());
    let answer = get_with(addr, "/admin", &reader).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.challenge(),
        r#"Bearer realm="test", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin""#
    );
    assert_eq!(get_with(addr, "/me", &reader).await.status, 200);
    let mut admin_claims = claims();
    admin_claims["scp"] = json!(["admin"]);
    let admin = mint(Algorithm::ES256, &admin_claims);
    let answer = get_with(addr, "/admin", &admin).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "admin area"));
}

#[tokio::test]
async fn validator_level_scopes_answer_403() {
    let addr = app(validator(Algorithm::HS256).require_scopes(["write"])).await;
    let answer = get_with(addr, "/me", &mint(Algorithm::HS256, &claims())).await;
    assert_eq!(answer.status, 403);
    assert!(
        answer.challenge().ends_with(r#"scope="write""#),
        "{}",
        answer.challenge()
    );
}

#[test]
fn algorithms_outside_the_key_type_are_refused_at_configuration() {
    let v = JwtValidator::<Claims>::rsa_pem(include_bytes!("keys/rsa.pub.pem")).unwrap();
    assert!(v.clone().algorithms(&[Algorithm::HS256]).is_err());
    assert!(v.clone().algorithms(&[]).is_err());
    assert!(v.algorithms(&[Algorithm::RS256, Algorithm::PS256]).is_ok());
    assert!(JwtValidator::<Claims>::rsa_pem(b"not a pem").is_err());
    assert!(JwtValidator::<Claims>::ec_pem(include_bytes!("keys/rsa.pub.pem")).is_err());
}
