//! Step-up authentication (RFC 9470) on real axum servers on 127.0.0.1: the
//! resource's `RequireStepUpLayer` answers a weak or stale login with
//! `insufficient_user_authentication`, whichever validator read the claims (JWT,
//! introspection); the client's layer and middleware take that answer for what it is,
//! a valid token and a login to redo, and never refresh or retry on it.
#![cfg(all(feature = "axum", feature = "jwt", feature = "introspection"))]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post};
use axum::{Form, Json, Router};
use common::send_raw;
use common::server::{get as get_with, now_plus};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use tower::{Layer, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing, StepUpChallenge};
use tower_bearer::server::{
    from_fn, Claims, Introspection, JwtValidator, Rejection, RequireBearerLayer, RequireStepUpLayer,
};

const SECRET: &[u8] = b"step-up-test-secret-of-32-bytes!!!!";
const METADATA: &str = "http://127.0.0.1/.well-known/oauth-protected-resource";

fn jwt(claims: serde_json::Value) -> String {
    let mut claims = claims;
    claims["sub"] = "alice".into();
    claims["exp"] = now_plus(600).into();
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// `/transfer` wants `acr` `mfa` or `hwk` within the last 300 s; `/balance` only a
/// valid token. Both behind the bearer layer, realm `bank`, with its metadata URL.
fn bank<V>(validator: V) -> Router
where
    V: tower_bearer::server::Validator<Claims = Claims>,
{
    let transfer = Router::new()
        .route("/transfer", get(|| async { "sent" }))
        .route_layer(
            RequireStepUpLayer::<Claims>::new()
                .acr_values(["mfa", "hwk"])
                .max_age(Duration::from_secs(300)),
        );
    Router::new()
        .route("/balance", get(|| async { "42" }))
        .merge(transfer)
        .layer(
            RequireBearerLayer::new(validator)
                .realm("bank")
                .resource_metadata(METADATA),
        )
}

const STEP_UP: &str = r#"Bearer realm="bank", error="insufficient_user_authentication", error_description="a stronger or more recent user authentication is required", acr_values="mfa hwk", max_age="300", resource_metadata="http://127.0.0.1/.well-known/oauth-protected-resource""#;

#[tokio::test]
async fn a_weak_or_stale_login_is_answered_with_the_rfc_9470_challenge() {
    let addr = common::serve(bank(JwtValidator::<Claims>::hmac(SECRET))).await;
    let strong = jwt(json!({"acr": "hwk", "auth_time": now_plus(-10)}));
    let answer = get_with(addr, "/transfer", Some(&strong)).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "sent"));

    for (case, claims) in [
        (
            "a password-only login",
            json!({"acr": "pwd", "auth_time": now_plus(-10)}),
        ),
        (
            "a login an hour ago",
            json!({"acr": "mfa", "auth_time": now_plus(-3600)}),
        ),
        ("no auth_time", json!({"acr": "mfa"})),
        ("no acr", json!({"auth_time": now_plus(-10)})),
        (
            "acr of the wrong type",
            json!({"acr": ["mfa"], "auth_time": now_plus(-10)}),
        ),
    ] {
        let token = jwt(claims);
        let answer = get_with(addr, "/transfer", Some(&token)).await;
        assert_eq!(answer.status, 401, "{case}");
        assert_eq!(answer.challenge(), STEP_UP, "{case}");
        let weak_but_valid = get_with(addr, "/balance", Some(&token)).await;
        assert_eq!(
            weak_but_valid.status, 200,
            "{case}: the token itself is good"
        );
    }

    // Bad tokens are still the bearer layer's business.
    let answer = get_with(addr, "/transfer", Some("not-a-jwt")).await;
    assert_eq!(answer.status, 401);
    assert!(answer.challenge().contains(r#"error="invalid_token""#));

    // gRPC: UNAUTHENTICATED, with the same challenge alongside.
    let weak = format!("Bearer {}", jwt(json!({"acr": "pwd"})));
    let answer = send_raw(
        addr,
        "/transfer",
        &[
            ("authorization", weak.as_bytes()),
            ("content-type", b"application/grpc"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["grpc-status"], "16");
    assert_eq!(answer.challenge(), STEP_UP);
}

#[tokio::test]
async fn an_anonymous_request_gets_a_bare_challenge() {
    let app = Router::new()
        .route("/transfer", get(|| async { "sent" }))
        .route_layer(RequireStepUpLayer::<Claims>::new().max_age(Duration::ZERO))
        .layer(RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET)).allow_anonymous());
    let addr = common::serve(app).await;
    let answer = get_with(addr, "/transfer", None).await;
    assert_eq!(
        (answer.status, answer.challenge()),
        (401, r#"Bearer realm="api""#)
    );
}

/// An RFC 7662 endpoint on 127.0.0.1 that answers `acr` and `auth_time` as RFC 9470
/// §6.2 says, for the tokens `strong` and `weak`.
async fn introspection_endpoint() -> String {
    async fn introspect(
        Form(form): Form<std::collections::HashMap<String, String>>,
    ) -> Json<serde_json::Value> {
        let exp = now_plus(600);
        Json(match form.get("token").map(String::as_str) {
            Some("strong") => json!({
                "active": true, "sub": "alice", "exp": exp,
                "acr": "mfa", "auth_time": now_plus(-5),
            }),
            Some("weak") => json!({
                "active": true, "sub": "alice", "exp": exp,
                "acr": "pwd", "auth_time": now_plus(-5),
            }),
            _ => json!({"active": false}),
        })
    }
    let addr = common::serve(Router::new().route("/introspect", post(introspect))).await;
    format!("http://{addr}/introspect")
}

#[tokio::test]
async fn introspected_tokens_carry_acr_and_auth_time_too() {
    let url = introspection_endpoint().await;
    let validator = Introspection::<Claims>::new(&url)
        .unwrap()
        .client("bank", "s3cret");
    let addr = common::serve(bank(validator)).await;
    let answer = get_with(addr, "/transfer", Some("strong")).await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "sent"));
    let answer = get_with(addr, "/transfer", Some("weak")).await;
    assert_eq!((answer.status, answer.challenge()), (401, STEP_UP));
    assert_eq!(get_with(addr, "/balance", Some("weak")).await.status, 200);
}

/// A bank in front of the common token endpoint: it accepts exactly the access
/// tokens the token endpoint issued and still holds (a login with `acr` `pwd`), so
/// `/transfer` answers every one of them with a step-up challenge, and a token the
/// provider dropped with `invalid_token`.
async fn bank_for(servers: &common::Servers) -> SocketAddr {
    let idp = Arc::clone(&servers.idp);
    let validator = from_fn(move |token: &str| {
        if idp.access.lock().unwrap().contains_key(token) {
            Ok(serde_json::from_value::<Claims>(json!({"sub": "svc", "acr": "pwd"})).unwrap())
        } else {
            Err(Rejection::invalid_token("unknown token"))
        }
    });
    common::serve(bank(validator)).await
}

#[tokio::test]
async fn a_step_up_answer_neither_drops_the_token_nor_retries() {
    let servers = common::start().await;
    let addr = bank_for(&servers).await;
    let cache = Refreshing::new(common::endpoint(&servers).client_credentials());
    let api = AuthorizeLayer::new(cache.clone())
        .retry_unauthorized()
        .layer(common::http_client::<http_body_util::Full<bytes::Bytes>>());
    let request = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(http_body_util::Full::default())
            .unwrap()
    };

    for _ in 0..3 {
        let res = api.clone().oneshot(request("/transfer")).await.unwrap();
        assert_eq!(res.status(), 401);
        let step_up = res
            .extensions()
            .get::<StepUpChallenge>()
            .expect("the challenge, typed, in the answer's extensions");
        assert_eq!(step_up.acr_values, ["mfa", "hwk"]);
        assert_eq!(step_up.max_age, Some(300));
        assert_eq!(
            StepUpChallenge::from_headers(res.headers()).as_ref(),
            Some(step_up)
        );
    }
    assert_eq!(
        servers.idp.token_requests.load(Ordering::SeqCst),
        1,
        "no refresh on a step-up challenge"
    );
    assert_eq!(cache.stats().refreshes, 1);

    // The control: the same bank's invalid_token does drop the token, and the
    // request is retried with a fresh one.
    servers.idp.revoke_all_access();
    let res = api.clone().oneshot(request("/balance")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.extensions().get::<StepUpChallenge>().is_none());
    assert_eq!(servers.idp.token_requests.load(Ordering::SeqCst), 2);
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn the_reqwest_middleware_takes_a_step_up_for_what_it_is() {
    use tower_bearer::client::AuthorizeMiddleware;

    let servers = common::start().await;
    let addr = bank_for(&servers).await;
    let cache = Refreshing::new(common::endpoint(&servers).client_credentials());
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(cache.clone()))
        .build();
    for _ in 0..3 {
        let res = client
            .get(format!("http://{addr}/transfer"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let step_up = res.extensions().get::<StepUpChallenge>().cloned().unwrap();
        let error = tower_bearer::Error::from(step_up);
        assert!(matches!(error, tower_bearer::Error::StepUpRequired(_)));
        assert_eq!(
            error.to_string(),
            r#"the resource requires a stronger or more recent login: log in again with acr_values "mfa hwk" and max_age 300 s"#
        );
    }
    assert_eq!(servers.idp.token_requests.load(Ordering::SeqCst), 1);
    assert_eq!(
        servers.idp.api_requests.load(Ordering::SeqCst),
        0,
        "the bank, not the common API, answered"
    );
}
