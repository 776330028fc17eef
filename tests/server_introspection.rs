//! Introspection (RFC 7662) against a real introspection endpoint on 127.0.0.1 that
//! counts its calls: active, inactive, down, client authentication, the cache, and
//! one call for many concurrent requests.
#![cfg(feature = "introspection")]

mod common_server;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use common_server::{get as send, now_plus, serve};
use serde_json::json;
use tower_bearer::server::{Claims, ClientAuth, Introspection, RequireBearerLayer, Verified};

const REALM: &str = "introspect-test";

/// The credentials of a call: from Basic, and from the form.
type SeenAuth = (Option<String>, Option<(String, String)>);

#[derive(Default)]
struct Endpoint {
    calls: AtomicUsize,
    down: AtomicBool,
    /// The credentials of the last call: (from Basic, from the form).
    last_auth: Mutex<SeenAuth>,
    /// Tokens whose `exp` is this many seconds from now (default 600).
    exp_in: Mutex<i64>,
    gate: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
}

async fn introspect(
    State(e): State<Arc<Endpoint>>,
    headers: HeaderMap,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    e.calls.fetch_add(1, Ordering::SeqCst);
    let gate = e.gate.lock().unwrap().clone();
    if let Some(mut gate) = gate {
        let _ = gate.wait_for(|open| *open).await;
    }
    if e.down.load(Ordering::SeqCst) {
        return StatusCode::BAD_GATEWAY.into_response();
    }
    let basic = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let posted = form
        .get("client_id")
        .zip(form.get("client_secret"))
        .map(|(i, s)| (i.clone(), s.clone()));
    *e.last_auth.lock().unwrap() = (basic, posted);
    let exp = now_plus(*e.exp_in.lock().unwrap());
    let answer = match form.get("token").map(String::as_str) {
        Some("good") => json!({"active": true, "sub": "alice", "scope": "read write", "exp": exp}),
        Some("reader") => json!({"active": true, "sub": "bob", "scope": "read", "exp": exp}),
        _ => json!({"active": false}),
    };
    Json(answer).into_response()
}

struct Setup {
    endpoint: Arc<Endpoint>,
    api: std::net::SocketAddr,
    gate: tokio::sync::watch::Sender<bool>,
}

impl Setup {
    fn calls(&self) -> usize {
        self.endpoint.calls.load(Ordering::SeqCst)
    }
}

async fn setup(configure: impl FnOnce(Introspection<Claims>) -> Introspection<Claims>) -> Setup {
    let endpoint = Arc::new(Endpoint::default());
    *endpoint.exp_in.lock().unwrap() = 600;
    let (gate, rx) = tokio::sync::watch::channel(true);
    *endpoint.gate.lock().unwrap() = Some(rx);
    let idp = serve(
        Router::new()
            .route("/introspect", post(introspect))
            .with_state(Arc::clone(&endpoint)),
    )
    .await;
    let validator = configure(
        Introspection::<Claims>::new(&format!("http://{idp}/introspect"))
            .unwrap()
            .client("my-api", "s3cret:&"),
    );
    async fn me(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let api = serve(
        Router::new()
            .route("/me", get(me))
            .layer(RequireBearerLayer::new(validator).realm(REALM)),
    )
    .await;
    Setup {
        endpoint,
        api,
        gate,
    }
}

async fn skip(secs: u64) {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(secs)).await;
    tokio::time::resume();
}

#[tokio::test]
async fn an_active_token_is_asked_once_then_served_from_the_cache() {
    let s = setup(|v| v).await;
    for _ in 0..5 {
        let answer = send(s.api, "/me", Some("good")).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "alice"));
    }
    assert_eq!(s.calls(), 1, "four cache hits");
    // Basic auth, both parts form-encoded (RFC 6749 §2.3.1).
    let (basic, posted) = s.endpoint.last_auth.lock().unwrap().clone();
    assert_eq!(basic.as_deref(), Some("Basic bXktYXBpOnMzY3JldCUzQSUyNg=="));
    assert_eq!(posted, None);
    // Past the TTL (5 min) the endpoint is asked again.
    skip(301).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2);
}

#[tokio::test]
async fn a_cached_answer_is_never_served_past_the_tokens_exp() {
    let s = setup(|v| v).await;
    *s.endpoint.exp_in.lock().unwrap() = 40;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 1);
    skip(41).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2, "exp (40 s) came before the TTL (5 min)");
}

#[tokio::test]
async fn an_inactive_token_is_refused_and_the_refusal_cached_briefly() {
    let s = setup(|v| v.client_auth(ClientAuth::Post)).await;
    for _ in 0..3 {
        let answer = send(s.api, "/me", Some("revoked")).await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.challenge,
            format!(
                r#"Bearer realm="{REALM}", error="invalid_token", error_description="the token is not active""#
            )
        );
    }
    assert_eq!(s.calls(), 1);
    let (basic, posted) = s.endpoint.last_auth.lock().unwrap().clone();
    assert_eq!(basic, None);
    assert_eq!(posted, Some(("my-api".into(), "s3cret:&".into())));
    skip(11).await;
    assert_eq!(send(s.api, "/me", Some("revoked")).await.status, 401);
    assert_eq!(s.calls(), 2, "the negative answer expired after 10 s");
}

#[tokio::test]
async fn a_missing_scope_is_403_with_the_scope_needed() {
    let s = setup(|v| v.require_scopes(["write"])).await;
    let answer = send(s.api, "/me", Some("reader")).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.challenge,
        format!(
            r#"Bearer realm="{REALM}", error="insufficient_scope", error_description="the token lacks a required scope", scope="write""#
        )
    );
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
}

#[tokio::test]
async fn an_endpoint_that_is_down_gives_503_and_is_asked_again_next_time() {
    let s = setup(|v| v).await;
    s.endpoint.down.store(true, Ordering::SeqCst);
    let answer = send(s.api, "/me", Some("good")).await;
    assert_eq!((answer.status, answer.challenge.as_str()), (503, ""));
    // Failures are not cached: once it is back, the token is accepted.
    s.endpoint.down.store(false, Ordering::SeqCst);
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2);
}

#[tokio::test]
async fn concurrent_requests_for_one_token_make_one_call() {
    let s = setup(|v| v).await;
    s.gate.send_replace(false);
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let api = s.api;
            tokio::spawn(async move { send(api, "/me", Some("good")).await })
        })
        .collect();
    // The one call is held at the endpoint while the others pile up behind it.
    tokio::time::timeout(Duration::from_secs(20), async {
        while s.calls() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    s.gate.send_replace(true);
    for request in requests {
        assert_eq!(request.await.unwrap().status, 200);
    }
    assert_eq!(s.calls(), 1);
}
