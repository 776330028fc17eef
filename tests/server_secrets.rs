//! Secret hygiene on the server side: all tracing output of validation cycles (JWT,
//! JWKS, introspection, static tokens, the verified-token cache) at TRACE level,
//! every answer, and the `Debug` of every validator and rejection hold no token, no
//! HMAC secret and no introspection client secret. A layer inside
//! `RequireBearerLayer` that logs the request headers prints `Sensitive`.
#![cfg(all(feature = "jwks", feature = "introspection"))]

mod common;

use std::net::SocketAddr;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::{send_raw, serve};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower_bearer::server::{
    Claims, Introspection, JwksValidator, JwtValidator, RequireBearerLayer, StaticTokens,
    Validator, VerifiedCache,
};

const HMAC: &str = "hmac-secret-Kp3x9-hmac-secret-Kp3x9";
const CLIENT_SECRET: &str = "introspect-secret-Wq7";
const OPAQUE_GOOD: &str = "opaque-good-Hj2k8";
const OPAQUE_BAD: &str = "opaque-revoked-Lm4n1";
const STATIC: &str = "static-token-Rt6y0";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn introspect(Form(form): Form<std::collections::HashMap<String, String>>) -> Json<Value> {
    Json(match form.get("token").map(String::as_str) {
        Some(OPAQUE_GOOD) => json!({"active": true, "sub": "alice", "exp": now() + 600}),
        _ => json!({"active": false}),
    })
}

/// Logs every request's headers at TRACE, as a request-logging layer would.
async fn log_headers(req: Request, next: Next) -> Response {
    tracing::trace!(headers = ?req.headers(), "request inside the bearer layer");
    next.run(req).await
}

fn route<V>(path: &str, validator: V) -> Router
where
    V: Validator<Claims = Claims> + Clone + Send + Sync + 'static,
{
    Router::new()
        .route(path, get(|| async { "ok" }))
        .layer(middleware::from_fn(log_headers))
        .layer(RequireBearerLayer::new(validator).realm("secrets"))
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("keys/rsa.key")).unwrap()
}

fn mint_rs(kid: &str, exp: i64) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, &json!({"sub": "alice", "exp": exp}), &rsa()).unwrap()
}

fn mint_hs(secret: &str, exp: i64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

// One thread: the subscriber is set for this thread, and the servers run here too.
#[tokio::test]
async fn no_secret_reaches_logs_answers_or_debug() {
    let (captured, _guard) = common::LogCapture::trace();

    let mut jwk = Jwk::from_encoding_key(&rsa(), Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks_body = json!({ "keys": [jwk] });
    let idp = serve(
        Router::new()
            .route("/jwks", get(move || async move { Json(jwks_body) }))
            .route("/introspect", post(introspect)),
    )
    .await;

    let jwt = JwtValidator::<Claims>::hmac(HMAC.as_bytes());
    let cached = VerifiedCache::new(jwt.clone());
    let jwks = JwksValidator::<Claims>::builder(&format!("http://{idp}/jwks"))
        .unwrap()
        .allow_insecure_http(true)
        .build()
        .unwrap();
    let introspection = Introspection::<Claims>::new(&format!("http://{idp}/introspect"))
        .unwrap()
        .client("api", CLIENT_SECRET);
    let statics = StaticTokens::new([(STATIC, Claims::default())]);
    let api: SocketAddr = serve(
        route("/jwt", jwt.clone())
            .merge(route("/cached", cached.clone()))
            .merge(route("/jwks", jwks.clone()))
            .merge(route("/introspect", introspection.clone()))
            .merge(route("/static", statics.clone())),
    )
    .await;

    let hs_good = mint_hs(HMAC, now() + 600);
    let hs_expired = mint_hs(HMAC, now() - 3600);
    let hs_forged = mint_hs("not-the-secret-not-the-secret-!!", now() + 600);
    let rs_good = mint_rs("k1", now() + 600);
    let rs_unknown_kid = mint_rs("k2", now() + 600);
    let cases: Vec<(&str, &str, u16)> = vec![
        ("/jwt", &hs_good, 200),
        ("/jwt", &hs_expired, 401),
        ("/jwt", &hs_forged, 401),
        ("/cached", &hs_good, 200),
        ("/cached", &hs_good, 200),
        ("/cached", &hs_forged, 401),
        ("/jwks", &rs_good, 200),
        ("/jwks", &rs_unknown_kid, 401),
        ("/introspect", OPAQUE_GOOD, 200),
        ("/introspect", OPAQUE_BAD, 401),
        ("/static", STATIC, 200),
        ("/static", "static-wrong-Zz9", 401),
    ];
    let mut answers = String::new();
    for (path, token, status) in &cases {
        let value = format!("Bearer {token}");
        let answer = send_raw(api, path, &[("authorization", value.as_bytes())]).await;
        assert_eq!(answer.status, *status, "{path}");
        answers.push_str(&format!("{:?}\n{}\n", answer.headers, answer.body));
    }

    let mut debug = String::new();
    debug.push_str(&format!(
        "{jwt:?}\n{cached:?}\n{jwks:?}\n{introspection:?}\n{statics:?}\n"
    ));
    for (path, token, _) in &cases {
        let rejection = match *path {
            "/jwt" | "/cached" => jwt.check(token).err(),
            _ => None,
        };
        if let Some(rejection) = rejection {
            debug.push_str(&format!("{rejection:?} {rejection}\n"));
        }
    }

    let logs = captured.text();
    assert!(
        logs.contains("request inside the bearer layer") && logs.contains("Sensitive"),
        "the inner layer logged the Authorization header as Sensitive"
    );
    // The secrets, and the forms a careless log would print them in.
    let mut secrets: Vec<String> = vec![
        HMAC.into(),
        URL_SAFE_NO_PAD.encode(HMAC),
        CLIENT_SECRET.into(),
        STANDARD.encode(format!("api:{CLIENT_SECRET}")),
        OPAQUE_GOOD.into(),
        OPAQUE_BAD.into(),
        STATIC.into(),
        "static-wrong-Zz9".into(),
    ];
    for token in [&hs_good, &hs_expired, &hs_forged, &rs_good, &rs_unknown_kid] {
        secrets.push(token.to_string());
        secrets.push(token.rsplit('.').next().unwrap().to_owned());
    }
    for (what, text) in [("logs", &logs), ("answers", &answers), ("Debug", &debug)] {
        assert!(!text.is_empty(), "{what} captured");
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} hold {secret}");
        }
    }
}
