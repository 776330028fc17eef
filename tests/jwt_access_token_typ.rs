//! RFC 9068 §4: `JwtValidator::require_access_token_typ` (and `JwksValidator` through
//! its rules) lets through only JWTs whose header `typ` says they are access tokens,
//! so an ID token from the same provider cannot be used as one. Real axum servers on
//! 127.0.0.1.
#![cfg(all(feature = "axum", feature = "jwks"))]

mod common;

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use common::send_raw;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tower_bearer::server::{Claims, JwksValidator, JwtValidator, RequireBearerLayer, Verified};

const SECRET: &[u8] = b"access-token-typ-test-secret-32b!!!";

fn jwt(typ: Option<&str>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::HS256);
    header.typ = typ.map(str::to_owned);
    header.kid = Some("k1".into());
    encode(
        &header,
        &json!({"sub": "alice", "exp": exp, "scope": "read"}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn api(validator: JwtValidator<Claims>) -> SocketAddr {
    common::serve(
        Router::new()
            .route(
                "/me",
                get(|Verified(c): Verified<Claims>| async move { c.sub.unwrap_or_default() }),
            )
            .layer(RequireBearerLayer::new(validator)),
    )
    .await
}

async fn status(addr: SocketAddr, token: &str) -> (u16, String) {
    let auth = format!("Bearer {token}");
    let answer = send_raw(addr, "/me", &[("authorization", auth.as_bytes())]).await;
    (answer.status, answer.challenge().to_owned())
}

#[tokio::test]
async fn an_id_token_is_refused_where_an_access_token_is_required() {
    let strict = api(JwtValidator::hmac(SECRET).require_access_token_typ()).await;
    for typ in [
        "at+jwt",
        "application/at+jwt",
        "AT+JWT",
        "Application/At+Jwt",
    ] {
        assert_eq!(status(strict, &jwt(Some(typ))).await.0, 200, "{typ}");
    }
    for typ in [
        Some("JWT"),
        Some("jwt"),
        None,
        Some("at+jwt+x"),
        Some("application/jwt"),
    ] {
        let (code, challenge) = status(strict, &jwt(typ)).await;
        assert_eq!(code, 401, "{typ:?}");
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
        assert!(challenge.contains("typ at+jwt"), "{challenge}");
    }
}

#[tokio::test]
async fn without_the_option_any_typ_passes_as_before() {
    let lax = api(JwtValidator::hmac(SECRET)).await;
    for typ in [Some("JWT"), None, Some("at+jwt"), Some("something/else")] {
        assert_eq!(status(lax, &jwt(typ)).await.0, 200, "{typ:?}");
    }
}

/// A `typ` that is not a string: no access token's, and harmless without the option.
#[tokio::test]
async fn a_typ_that_is_not_a_string_is_no_access_token() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":["at+jwt"]}"#);
    let payload = URL_SAFE_NO_PAD.encode(json!({"sub": "alice", "exp": exp}).to_string());
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    let token = format!("{header}.{payload}.{signature}");
    let strict = api(JwtValidator::hmac(SECRET).require_access_token_typ()).await;
    assert_eq!(status(strict, &token).await.0, 401);
    let lax = api(JwtValidator::hmac(SECRET)).await;
    assert_eq!(status(lax, &token).await.0, 200);
}

/// `JwksValidator` applies it through its rules, to every key.
#[tokio::test]
async fn a_jwks_validator_requires_it_through_its_rules() {
    let key = EncodingKey::from_rsa_pem(include_bytes!("keys/rsa.key")).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("r1".into());
    let keys = json!({ "keys": [jwk] });
    let jwks = common::serve(Router::new().route(
        "/jwks",
        get(move || {
            let keys = keys.clone();
            async move { axum::Json(keys) }
        }),
    ))
    .await;
    let validator = JwksValidator::<Claims>::builder(&format!("http://{jwks}/jwks"))
        .unwrap()
        .rules(|v| v.require_access_token_typ())
        .build()
        .unwrap();
    let addr = common::serve(
        Router::new()
            .route("/me", get(|| async { "ok" }))
            .layer(RequireBearerLayer::new(validator)),
    )
    .await;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let rs256 = |typ: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.typ = Some(typ.to_owned());
        header.kid = Some("r1".into());
        encode(&header, &json!({"sub": "alice", "exp": exp}), &key).unwrap()
    };
    assert_eq!(status(addr, &rs256("at+jwt")).await.0, 200);
    assert_eq!(status(addr, &rs256("JWT")).await.0, 401);
}
