//! JwtValidator behind RequireBearerLayer in a real axum server: every algorithm
//! and per-route scopes. The hostile tokens are in tests/hostile_jwt.rs.
#![cfg(feature = "jwt")]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
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
        // No realm of its own: it names the one of the RequireBearerLayer in front.
        .layer(RequireScopeLayer::<Claims>::new(["admin"]));
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

/// An Ed25519 key of the wrong size (a truncated or padded configuration value)
/// refuses every token instead of panicking inside the signature check.
#[test]
fn an_ed25519_key_of_the_wrong_size_refuses_tokens_without_panicking() {
    let token = mint(Algorithm::EdDSA, &claims());
    for len in [0, 1, 16, 31, 33, 64] {
        let v: JwtValidator<Claims> = JwtValidator::ed_der(&vec![7u8; len]);
        let refused = v.check(&token).unwrap_err();
        assert_eq!(
            refused.to_string(),
            tower_bearer::server::Rejection::invalid_token("the token signature is invalid")
                .to_string(),
            "{len}-byte key"
        );
    }
    // The right size but the wrong key: refused the same way.
    let v: JwtValidator<Claims> = JwtValidator::ed_der(&[7u8; 32]);
    assert!(v.check(&token).is_err());
}

#[tokio::test]
async fn a_scope_layer_with_a_realm_of_its_own_names_it() {
    let admin = Router::new()
        .route("/admin", get(|| async { "admin area" }))
        .layer(RequireScopeLayer::<Claims>::new(["admin"]).realm("admin-area"));
    let addr = common::serve(
        Router::new()
            .merge(admin)
            .layer(RequireBearerLayer::new(validator(Algorithm::HS256)).realm("test")),
    )
    .await;
    let answer = get_with(addr, "/admin", &mint(Algorithm::HS256, &claims())).await;
    assert_eq!(answer.status, 403);
    assert!(
        answer
            .challenge()
            .starts_with(r#"Bearer realm="admin-area", error="insufficient_scope""#),
        "{}",
        answer.challenge()
    );
}
