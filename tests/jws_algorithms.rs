//! The JWS `alg` names a token or a key may give (RFC 9864's fully specified names
//! with the classic ones), and what is accepted of a signature's encoding: both
//! ECDSA forms, only canonical base64url. Tokens signed with real keys, checked
//! behind `RequireBearerLayer` in a real axum server and through a real JWKS.
#![cfg(all(feature = "jwks", feature = "axum"))]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::jwks::Idp;
use common::send_raw;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tower_bearer::server::{
    Claims, JwksValidator, JwtValidator, RequireBearerLayer, Validator, Verified,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ed25519() -> EncodingKey {
    EncodingKey::from_ed_pem(include_bytes!("keys/ed25519.key")).unwrap()
}

fn ec256() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("keys/ec256.key")).unwrap()
}

fn ec384() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("keys/ec384.key")).unwrap()
}

/// A token whose header is `header` (its `alg` any name), signed by `key` with
/// `alg`.
fn token(header: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let claims = json!({ "sub": "alice", "exp": now() + 600 });
    let message = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

async fn me(Verified(claims): Verified<Claims>) -> String {
    claims.sub.unwrap_or_default()
}

async fn status(validator: JwtValidator<Claims>, token: &str) -> (u16, String) {
    let addr = common::serve(
        Router::new()
            .route("/me", get(me))
            .layer(RequireBearerLayer::new(validator)),
    )
    .await;
    let value = format!("Bearer {token}");
    let answer = send_raw(addr, "/me", &[("authorization", value.as_bytes())]).await;
    let challenge = answer.challenge().to_owned();
    (answer.status, challenge)
}

/// Issue 29 item 13: tokens whose header gives RFC 9864's fully specified names
/// (`Ed25519`, `ESP256`, `ESP384`) are verified as `EdDSA`, `ES256` and `ES384`,
/// within the allow-list of those; unsupported names are refused.
#[tokio::test]
async fn tokens_with_fully_specified_algorithm_names_are_verified() {
    let ed = || JwtValidator::<Claims>::ed_pem(include_bytes!("keys/ed25519.pub.pem")).unwrap();
    let p256 = || JwtValidator::<Claims>::ec_pem(include_bytes!("keys/ec256.pub.pem")).unwrap();
    let p384 = || JwtValidator::<Claims>::ec_pem(include_bytes!("keys/ec384.pub.pem")).unwrap();
    let cases = [
        ("Ed25519", ed(), ed25519(), Algorithm::EdDSA),
        ("EdDSA", ed(), ed25519(), Algorithm::EdDSA),
        ("ESP256", p256(), ec256(), Algorithm::ES256),
        ("ESP384", p384(), ec384(), Algorithm::ES384),
    ];
    for (name, validator, key, alg) in cases {
        let t = token(&json!({ "alg": name, "typ": "JWT" }), &key, alg);
        assert_eq!(status(validator, &t).await, (200, String::new()), "{name}");
    }
    // Outside the allow-list, under either name.
    let es384_only = p384().algorithms(&[Algorithm::ES384]).unwrap();
    let t = token(&json!({ "alg": "ESP256" }), &ec256(), Algorithm::ES256);
    let (code, challenge) = status(es384_only, &t).await;
    assert_eq!(code, 401);
    assert!(
        challenge.contains("algorithm is not allowed"),
        "{challenge}"
    );
    // A P-384 signature under the P-256 name is not a P-256 signature.
    let t = token(&json!({ "alg": "ESP256" }), &ec384(), Algorithm::ES384);
    assert_eq!(status(p384(), &t).await.0, 401);
    // Names the backend cannot verify: refused as not allowed.
    for name in ["Ed448", "ES512", "ESP512", "ed25519", "none"] {
        let t = token(&json!({ "alg": name }), &ed25519(), Algorithm::EdDSA);
        let (code, challenge) = status(ed(), &t).await;
        assert_eq!(code, 401, "{name}");
        assert!(
            challenge.contains("algorithm is not allowed"),
            "{name}: {challenge}"
        );
    }
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str, alg_name: &str) -> Value {
    let mut jwk = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg_name);
    jwk
}

/// Issue 29 item 13, on a JWKS: keys whose `alg` is a fully specified name are
/// used for tokens under either name, and bound to that algorithm; a key whose
/// `alg` this crate cannot verify is skipped, not made to allow every algorithm
/// of its type.
#[tokio::test]
async fn jwks_keys_with_fully_specified_algorithm_names_verify_tokens() {
    let idp = Idp::start(vec![
        jwk(&ed25519(), Algorithm::EdDSA, "ed", "Ed25519"),
        jwk(&ec256(), Algorithm::ES256, "p256", "ESP256"),
        jwk(&ec384(), Algorithm::ES384, "p521", "ES512"),
    ])
    .await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    for (kid, name, key, alg) in [
        ("ed", "Ed25519", ed25519(), Algorithm::EdDSA),
        ("ed", "EdDSA", ed25519(), Algorithm::EdDSA),
        ("p256", "ESP256", ec256(), Algorithm::ES256),
        ("p256", "ES256", ec256(), Algorithm::ES256),
    ] {
        let t = token(&json!({ "alg": name, "kid": kid }), &key, alg);
        let claims = validator
            .validate(&t)
            .await
            .unwrap_or_else(|e| panic!("{kid} {name}: {e:?}"));
        assert_eq!(claims.sub.as_deref(), Some("alice"));
    }
    // The key named `ES512` is not used at all, not even for ES384.
    let t = token(
        &json!({ "alg": "ES384", "kid": "p521" }),
        &ec384(),
        Algorithm::ES384,
    );
    assert!(validator.validate(&t).await.is_err());
}

/// The order of P-256, big-endian.
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// Whether the 32-byte big-endian `s` is above half the order (a "high S").
fn high_s(s: &[u8]) -> bool {
    // n / 2, rounded down: the order shifted right by one bit.
    let mut half = [0u8; 32];
    let mut carry = 0u8;
    for (i, byte) in P256_ORDER.iter().enumerate() {
        half[i] = (byte >> 1) | (carry << 7);
        carry = byte & 1;
    }
    s > &half[..]
}

/// Issue 29 item 3, the choice made: both ECDSA forms of a signature are
/// accepted, because signers make both. OpenSSL, aws-lc and WebCrypto do not
/// normalise `s`, so about half of the ES256 tokens an issuer signs (and half of
/// the DPoP proofs a browser signs) have a high `s`; refusing them would refuse
/// those tokens. What is keyed on a token is keyed on what was signed instead (see
/// tests/fleet_denylist.rs).
#[tokio::test]
async fn es256_tokens_with_a_high_s_as_signers_make_them_are_accepted() {
    let validator = JwtValidator::<Claims>::ec_pem(include_bytes!("keys/ec256.pub.pem")).unwrap();
    let mut high = 0;
    for _ in 0..64 {
        let t = token(&json!({ "alg": "ES256" }), &ec256(), Algorithm::ES256);
        let signature = URL_SAFE_NO_PAD
            .decode(t.rsplit('.').next().unwrap())
            .unwrap();
        if high_s(&signature[32..]) {
            high += 1;
        }
        assert!(validator.check(&t).is_ok());
    }
    // 64 signatures all low by chance: one run in 2^64.
    assert!(
        high > 0,
        "this backend normalises s: no high-S signature in 64"
    );
}

/// A signature, header or payload in a non-canonical base64url (padding, set
/// trailing bits, the standard alphabet) is refused: one signed token has one
/// text, so nothing keyed on it can be dodged by re-encoding it.
#[test]
fn non_canonical_base64url_is_refused_in_every_part() {
    let hs = JwtValidator::<Claims>::hmac(b"a-secret-of-at-least-32-bytes!!!");
    let ed = JwtValidator::<Claims>::ed_pem(include_bytes!("keys/ed25519.pub.pem")).unwrap();
    let hs_token = {
        let key = EncodingKey::from_secret(b"a-secret-of-at-least-32-bytes!!!");
        token(&json!({ "alg": "HS256" }), &key, Algorithm::HS256)
    };
    let ed_token = token(&json!({ "alg": "EdDSA" }), &ed25519(), Algorithm::EdDSA);
    let es_token = token(&json!({ "alg": "ES256" }), &ec256(), Algorithm::ES256);
    let es = JwtValidator::<Claims>::ec_pem(include_bytes!("keys/ec256.pub.pem")).unwrap();
    for (validator, t) in [(&hs, &hs_token), (&ed, &ed_token), (&es, &es_token)] {
        assert!(validator.check(t).is_ok());
        let parts: Vec<&str> = t.split('.').collect();
        for part in 0..3 {
            let text = parts[part];
            let mut variants = Vec::new();
            // The last character with a trailing bit set (same bytes decoded),
            // when the part's length leaves trailing bits.
            if !text.len().is_multiple_of(4) {
                let last = text.as_bytes()[text.len() - 1];
                const ALPHABET: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
                let index = ALPHABET.iter().position(|c| *c == last).unwrap();
                let flipped = ALPHABET[index ^ 1] as char;
                variants.push(format!("{}{flipped}", &text[..text.len() - 1]));
                // Padded.
                let pad = "=".repeat(4 - text.len() % 4);
                variants.push(format!("{text}{pad}"));
            }
            for variant in variants {
                let mut changed: Vec<&str> = parts.clone();
                changed[part] = &variant;
                let forged = changed.join(".");
                assert!(
                    validator.check(&forged).is_err(),
                    "part {part} re-encoded as {variant:?} was accepted"
                );
            }
        }
    }
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("keys/rsa.key")).unwrap()
}

/// A JWK given to [`JwtValidator::from_jwk`] whose `alg` or `use` says it is an
/// encryption key (`RSA-OAEP`, `RSA1_5`, `ECDH-ES`, `use: enc`) verifies no
/// signature: it is refused, not made a key that allows every algorithm of its
/// type (an RSA decryption oracle on such a key can forge PKCS#1 signatures). Its
/// signing twin, the same key under a signing `alg`, still verifies.
#[tokio::test]
async fn a_jwk_for_encryption_is_refused_by_from_jwk() {
    let rs = token(&json!({ "alg": "RS256" }), &rsa(), Algorithm::RS256);
    let es = token(&json!({ "alg": "ES256" }), &ec256(), Algorithm::ES256);
    let parse = |v: Value| serde_json::from_value::<Jwk>(v).unwrap();
    for (what, jwk, t) in [
        (
            "RSA-OAEP",
            jwk(&rsa(), Algorithm::RS256, "k", "RSA-OAEP"),
            &rs,
        ),
        (
            "RSA-OAEP-256",
            jwk(&rsa(), Algorithm::RS256, "k", "RSA-OAEP-256"),
            &rs,
        ),
        ("RSA1_5", jwk(&rsa(), Algorithm::RS256, "k", "RSA1_5"), &rs),
        (
            "RSA-OAEP-384",
            jwk(&rsa(), Algorithm::RS256, "k", "RSA-OAEP-384"),
            &rs,
        ),
        (
            "ECDH-ES",
            jwk(&ec256(), Algorithm::ES256, "k", "ECDH-ES"),
            &es,
        ),
        (
            "use enc",
            {
                let mut j = jwk(&rsa(), Algorithm::RS256, "k", "RS256");
                j["use"] = json!("enc");
                j
            },
            &rs,
        ),
    ] {
        if let Ok(v) = JwtValidator::<Claims>::from_jwk(&parse(jwk)) {
            assert!(v.check(t).is_err(), "{what}: a signature verified");
            panic!("{what}: an encryption key was taken for verification");
        }
    }
    // The same keys for signing verify.
    for (jwk, t) in [
        (jwk(&rsa(), Algorithm::RS256, "k", "RS256"), &rs),
        (jwk(&ec256(), Algorithm::ES256, "k", "ES256"), &es),
    ] {
        let mut no_alg = jwk.clone();
        no_alg.as_object_mut().unwrap().remove("alg");
        for j in [jwk, no_alg] {
            let v = JwtValidator::<Claims>::from_jwk(&parse(j)).unwrap();
            assert!(v.check(t).is_ok());
        }
    }
    // An Ed25519 key under RFC 9864's name (which jsonwebtoken's `Jwk` forgets).
    let ed = token(&json!({ "alg": "Ed25519" }), &ed25519(), Algorithm::EdDSA);
    let v =
        JwtValidator::<Claims>::from_jwk(&parse(jwk(&ed25519(), Algorithm::EdDSA, "k", "Ed25519")))
            .unwrap();
    assert!(v.check(&ed).is_ok());
}

/// A JWKS whose keys for encryption (`RSA-OAEP` without `use`, `ECDH-ES`, an
/// unknown name) share the set with signing keys: those keys verify nothing, even
/// under a token that names their `kid`, and the set's signing keys still work. A
/// token whose `alg` names HMAC (under any name) is never checked with a public key.
#[tokio::test]
async fn a_jwks_encryption_key_verifies_nothing_and_spoils_nothing() {
    let idp = Idp::start(vec![
        jwk(&rsa(), Algorithm::RS256, "oaep", "RSA-OAEP"),
        jwk(&ec256(), Algorithm::ES256, "ecdh", "ECDH-ES"),
        jwk(&rsa(), Algorithm::RS256, "odd", "RSA-OAEP-384"),
        jwk(&ec384(), Algorithm::ES384, "sig", "ESP384"),
    ])
    .await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    for (kid, key, alg) in [
        ("oaep", rsa(), Algorithm::RS256),
        ("odd", rsa(), Algorithm::PS256),
        ("ecdh", ec256(), Algorithm::ES256),
    ] {
        let t = token(&json!({ "alg": format!("{alg:?}"), "kid": kid }), &key, alg);
        assert!(validator.validate(&t).await.is_err(), "{kid}");
    }
    let t = token(
        &json!({ "alg": "ES384", "kid": "sig" }),
        &ec384(),
        Algorithm::ES384,
    );
    assert!(validator.validate(&t).await.is_ok());
    // HMAC keyed with the published key's bytes: never tried.
    for name in ["HS256", "hs256", "HS256 "] {
        let header = json!({ "alg": name, "kid": "sig" });
        let secret = EncodingKey::from_secret(b"whatever");
        let t = token(&header, &secret, Algorithm::HS256);
        assert!(validator.validate(&t).await.is_err(), "{name}");
    }
}
