//! JwtValidator behind RequireBearerLayer in a real axum server: every algorithm
//! and per-route scopes. The hostile tokens are in tests/hostile_jwt.rs.
#![cfg(all(feature = "jwt", feature = "axum"))]

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

/// Layers in layers: the answers given further in name the realm of the innermost
/// bearer layer, its default `api` included, not an outer layer's.
#[tokio::test]
async fn the_innermost_bearer_layer_names_the_realm() {
    async fn scope_challenge(outer: Option<&str>, inner: Option<&str>) -> String {
        let with =
            |layer: RequireBearerLayer<JwtValidator<Claims>>, realm: Option<&str>| match realm {
                Some(realm) => layer.realm(realm),
                None => layer,
            };
        let admin = Router::new()
            .route("/admin", get(|| async { "admin area" }))
            .layer(RequireScopeLayer::<Claims>::new(["admin"]))
            .layer(with(
                RequireBearerLayer::new(validator(Algorithm::HS256)),
                inner,
            ))
            .layer(with(
                RequireBearerLayer::new(validator(Algorithm::HS256)),
                outer,
            ));
        let addr = common::serve(admin).await;
        let answer = get_with(addr, "/admin", &mint(Algorithm::HS256, &claims())).await;
        assert_eq!(answer.status, 403);
        answer.challenge().to_owned()
    }
    for (outer, inner, named) in [
        (Some("outer"), None, "api"),
        (None, Some("inner"), "inner"),
        (Some("outer"), Some("inner"), "inner"),
        (None, None, "api"),
    ] {
        let challenge = scope_challenge(outer, inner).await;
        assert!(
            challenge.starts_with(&format!(
                r#"Bearer realm="{named}", error="insufficient_scope""#
            )),
            "outer {outer:?}, inner {inner:?}: {challenge}"
        );
    }

    // An outer layer's resource metadata, under an inner layer with the defaults: the
    // inner layer's (none) are named. And the same for a request let through without
    // credentials, refused by the extractor of the handler.
    let metadata = "https://api.test/.well-known/oauth-protected-resource";
    let bearer = || RequireBearerLayer::new(validator(Algorithm::HS256));
    let scoped = Router::new()
        .route("/admin", get(|| async { "admin area" }))
        .layer(RequireScopeLayer::<Claims>::new(["admin"]))
        .layer(bearer())
        .layer(bearer().resource_metadata(metadata));
    let addr = common::serve(scoped).await;
    let answer = get_with(addr, "/admin", &mint(Algorithm::HS256, &claims())).await;
    assert_eq!(answer.status, 403);
    assert!(
        !answer.challenge().contains("resource_metadata"),
        "{}",
        answer.challenge()
    );
    let anonymous = Router::new()
        .route("/me", get(me))
        .layer(bearer().allow_anonymous())
        .layer(bearer().realm("outer").allow_anonymous());
    let addr = common::serve(anonymous).await;
    let answer = send_raw(addr, "/me", &[]).await;
    assert_eq!(answer.status, 401);
    assert!(
        answer.challenge().starts_with(r#"Bearer realm="api""#),
        "{}",
        answer.challenge()
    );
}

/// Headers and payloads are decoded on the stack up to a size, and into the heap
/// beyond: both are read whole, across the boundary, and a signature still covers
/// every byte of them.
#[tokio::test]
async fn long_headers_and_payloads_are_read_whole() {
    let v = validator(Algorithm::HS256);
    for pad in (1_900..2_200).step_by(7).chain([6_000]) {
        let mut c = claims();
        c["pad"] = json!("é".repeat(pad / 2));
        let mut header = Header::new(Algorithm::HS256);
        // A header of 450 to 530 bytes: on both sides of its own boundary too.
        header.kid = Some("k".repeat(pad / 4 - 60));
        let token = encode(&header, &c, &EncodingKey::from_secret(HMAC)).unwrap();
        let got = v.check(&token).unwrap_or_else(|e| panic!("pad {pad}: {e}"));
        assert_eq!(got.extra["pad"].as_str().unwrap().chars().count(), pad / 2);
        // One character of the payload changed, still valid base64: the signature
        // no longer matches.
        let (head, rest) = token.split_once('.').unwrap();
        let at = rest.len() / 3;
        let flipped = if &rest[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{head}.{}{flipped}{}", &rest[..at], &rest[at + 1..]);
        let err = v.check(&tampered).expect_err("a tampered token");
        assert!(err.to_string().contains("signature"), "pad {pad}: {err}");
    }
    // And through the server.
    let addr = app(v).await;
    let mut c = claims();
    c["pad"] = json!("x".repeat(5_000));
    let answer = get_with(addr, "/me", &mint(Algorithm::HS256, &c)).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "alice"));
}

/// A payload that is not UTF-8 is refused even when its signature is good.
#[test]
fn a_signed_payload_that_is_not_utf8_is_refused() {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(br#"{"alg":"HS256"}"#);
    let payload = format!(
        r#"{{"sub":"alice","iss":"{ISS}","aud":"{AUD}","exp":{},"x":"#,
        now() + 600
    );
    let mut payload = payload.into_bytes();
    payload.extend_from_slice(b"\"\xff\xfe\"}");
    let message = format!("{header}.{}", b64(&payload));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(HMAC),
        Algorithm::HS256,
    )
    .unwrap();
    let err = validator(Algorithm::HS256)
        .check(&format!("{message}.{signature}"))
        .unwrap_err();
    assert!(err.to_string().contains("malformed"), "{err}");
}

/// `JwtValidator<Claims>` reads a payload once and checks the registered claims from
/// it; any other claims type reads it twice, `ReadTwice` too, which is `Claims` under
/// another name. Both give the same verdict, in the same words, on every payload
/// below: well-formed or not, in time or not.
#[test]
fn claims_read_once_answer_as_claims_read_twice() {
    #[derive(Clone, serde::Deserialize)]
    #[serde(transparent)]
    struct ReadTwice(Claims);

    let t = now();
    let payloads = [
        json!({"sub": "alice", "iss": ISS, "aud": AUD, "exp": t + 600, "scope": "read"}),
        json!({"sub": "alice", "iss": ISS, "aud": [AUD, "other"], "exp": t + 600, "scp": ["read"]}),
        json!({"iss": ISS, "aud": ["other"], "exp": t + 600}),
        json!({"iss": ISS, "aud": [], "exp": t + 600}),
        json!({"iss": ISS, "aud": AUD, "exp": (t + 600) as f64 + 0.5}),
        json!({"iss": ISS, "aud": AUD, "exp": t - 600}),
        json!({"iss": ISS, "aud": AUD, "exp": t + 600, "nbf": t + 600}),
        json!({"iss": ISS, "aud": AUD, "exp": t + 600, "iat": t + 600}),
        json!({"iss": ISS, "aud": AUD, "exp": 253_402_300_800u64}),
        json!({"iss": ISS, "aud": AUD, "exp": 1e30}),
        json!({"iss": ISS, "aud": AUD, "exp": -5}),
        json!({"iss": ISS, "aud": AUD, "exp": "soon"}),
        json!({"iss": ISS, "aud": AUD, "exp": null}),
        json!({"iss": ISS, "aud": AUD}),
        json!({"iss": 7, "aud": AUD, "exp": t + 600}),
        json!({"iss": "https://other.test/", "aud": AUD, "exp": t + 600}),
        json!({"aud": AUD, "exp": t + 600}),
        json!({"iss": ISS, "aud": 5, "exp": t + 600}),
        json!({"iss": ISS, "exp": t + 600}),
        json!({"iss": ISS, "aud": AUD, "exp": t + 600, "sub": 42}),
        json!({"iss": ISS, "aud": AUD, "exp": t + 600, "scope": ["read"]}),
        json!({"iss": ISS, "aud": AUD, "exp": t + 600, "scope": "write"}),
        json!({"iss": ISS, "aud": AUD, "exp": t + 600, "jti": 17, "tenant": {"id": 1}}),
    ];
    fn rules<C>(scopes: &[&str]) -> JwtValidator<C>
    where
        C: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
    {
        JwtValidator::<C>::hmac(HMAC)
            .issuer(ISS)
            .audience(AUD)
            .require_claims(["exp"])
            .require_scopes(scopes.iter().copied())
    }
    for scopes in [&[][..], &["read"][..]] {
        let once = rules::<Claims>(scopes);
        let twice = rules::<ReadTwice>(scopes);
        for payload in &payloads {
            let token = mint(Algorithm::HS256, payload);
            let (a, b) = (once.check(&token), twice.check(&token));
            assert_eq!(
                a.as_ref()
                    .map(|c| c.sub.clone())
                    .map_err(ToString::to_string),
                b.as_ref()
                    .map(|c| c.0.sub.clone())
                    .map_err(ToString::to_string),
                "{payload} with scopes {scopes:?}"
            );
        }
    }
}

/// A token with this exact header text, signed with the test secret (HS256).
fn with_header(header: &str, claims: &serde_json::Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(
        signing_input.as_bytes(),
        &EncodingKey::from_secret(HMAC),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{signing_input}.{signature}")
}

/// The validator remembers the last header it read: a header that differs, by one
/// byte or in what it says, is read for itself, whatever was read before it and
/// by whichever clone.
#[test]
fn each_header_is_read_for_itself() {
    let v = validator(Algorithm::HS256)
        .algorithms(&[Algorithm::HS256])
        .unwrap()
        .require_access_token_typ();
    let clone = v.clone();
    let c = claims();
    let at = with_header(r#"{"alg":"HS256","typ":"at+jwt"}"#, &c);
    let why = |token: &str, v: &JwtValidator<Claims>| match v.check(token) {
        Ok(claims) => format!("ok {}", claims.sub.unwrap_or_default()),
        Err(rejection) => rejection.to_string(),
    };
    let cases = [
        (r#"{"alg":"HS256","typ":"JWT"}"#, "not an access token"),
        (
            r#"{"alg":"HS256","typ":"at+jwt","crit":["x"]}"#,
            "critical header",
        ),
        (r#"{"alg":"HS384","typ":"at+jwt"}"#, "algorithm"),
        (r#"{"alg":"none","typ":"at+jwt"}"#, "algorithm"),
        (r#"{"alg":"HS256","typ":"at+jwt""#, "malformed"),
        (r#"["HS256"]"#, "malformed"),
    ];
    for (header, refused) in cases {
        for v in [&v, &clone] {
            assert_eq!(why(&at, v), "ok alice");
            let other = with_header(header, &c);
            let answer = why(&other, v);
            assert!(answer.contains(refused), "{header}: {answer}");
            // Asked again right after, and then the accepted one again.
            assert_eq!(why(&other, v), answer, "{header}");
            assert_eq!(why(&at, v), "ok alice", "after {header}");
        }
    }
    // The same header says nothing of the rest: a bad signature is still refused.
    let (signed, _) = at.rsplit_once('.').unwrap();
    let forged = format!("{signed}.{}", "A".repeat(43));
    assert!(
        why(&forged, &v).contains("signature"),
        "{}",
        why(&forged, &v)
    );
    // A header that only differs in its spacing is the same to read, and read again.
    let spaced = with_header(r#"{"alg": "HS256", "typ": "at+jwt"}"#, &c);
    assert_eq!(why(&spaced, &v), "ok alice");
}
