//! Introspection (RFC 7662) against a real introspection endpoint on 127.0.0.1 that
//! counts its calls: active, inactive, down, client authentication, the cache, and
//! one call for many concurrent requests.
#![cfg(feature = "introspection")]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use common::server::{get as send, now_plus, serve};
use serde_json::json;
use tower_bearer::server::{
    Claims, Introspection, IntrospectionAuth, RequireBearerLayer, Validator, Verified,
};

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
    /// Tokens revoked at the provider: answered `active: false`.
    revoked: Mutex<std::collections::HashSet<String>>,
    /// Answers computed (after the gate, before `deliver`).
    computed: AtomicUsize,
    /// While false, a computed answer is held back before it is sent.
    deliver: Mutex<Option<tokio::sync::watch::Receiver<bool>>>,
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
    let iss = "https://idp.example";
    let token = form.get("token").map(String::as_str);
    if token == Some("garbled") {
        // An answer that does not parse, for this token only.
        return (StatusCode::OK, r#"{"active":"garbled"}"#).into_response();
    }
    let revoked = token.is_some_and(|t| e.revoked.lock().unwrap().contains(t));
    let answer = match token {
        _ if revoked => json!({"active": false}),
        Some("good") => json!({
            "active": true, "sub": "alice", "scope": "read write", "exp": exp,
            "iss": iss, "aud": ["my-api", "billing-api"],
        }),
        Some("reader") => json!({
            "active": true, "sub": "bob", "scope": "read", "exp": exp, "iss": iss, "aud": "my-api",
        }),
        // Issued by the same provider for another resource server.
        Some("for-another-api") => json!({
            "active": true, "sub": "carol", "scope": "read write", "exp": exp,
            "iss": iss, "aud": "billing-api",
        }),
        Some("from-another-issuer") => json!({
            "active": true, "sub": "dave", "scope": "read write", "exp": exp,
            "iss": "https://other-idp.example", "aud": "my-api",
        }),
        Some("without-aud-or-iss") => json!({"active": true, "sub": "erin", "exp": exp}),
        Some(user) if user.starts_with("user-") => {
            json!({"active": true, "sub": user, "scope": "read", "exp": exp, "aud": "my-api"})
        }
        _ => json!({"active": false}),
    };
    e.computed.fetch_add(1, Ordering::SeqCst);
    let deliver = e.deliver.lock().unwrap().clone();
    if let Some(mut deliver) = deliver {
        let _ = deliver.wait_for(|open| *open).await;
    }
    Json(answer).into_response()
}

struct Setup {
    endpoint: Arc<Endpoint>,
    api: std::net::SocketAddr,
    gate: tokio::sync::watch::Sender<bool>,
    /// A clone of the API's validator (they share their caches).
    validator: Introspection<Claims>,
}

impl Setup {
    fn calls(&self) -> usize {
        self.endpoint.calls.load(Ordering::SeqCst)
    }
}

/// The introspection endpoint on 127.0.0.1, its gate open, and its URL.
async fn start_endpoint() -> (Arc<Endpoint>, tokio::sync::watch::Sender<bool>, String) {
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
    (endpoint, gate, format!("http://{idp}/introspect"))
}

async fn setup(configure: impl FnOnce(Introspection<Claims>) -> Introspection<Claims>) -> Setup {
    let (endpoint, gate, url) = start_endpoint().await;
    let validator = configure(
        Introspection::<Claims>::new(&url)
            .unwrap()
            .client("my-api", "s3cret:&"),
    );
    async fn me(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let api = serve(
        Router::new()
            .route("/me", get(me))
            .layer(RequireBearerLayer::new(validator.clone()).realm(REALM)),
    )
    .await;
    Setup {
        endpoint,
        api,
        gate,
        validator,
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
    // Past the TTL (30 s) the endpoint is asked again.
    skip(31).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2);
}

#[tokio::test]
async fn a_cached_answer_is_never_served_past_the_tokens_exp() {
    let s = setup(|v| v).await;
    *s.endpoint.exp_in.lock().unwrap() = 20;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 1);
    skip(21).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2, "exp (20 s) came before the TTL (30 s)");
}

#[tokio::test]
async fn an_inactive_token_is_refused_and_the_refusal_cached_briefly() {
    let s = setup(|v| v.client_auth(IntrospectionAuth::Post)).await;
    for _ in 0..3 {
        let answer = send(s.api, "/me", Some("revoked")).await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.challenge(),
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
        answer.challenge(),
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
    assert_eq!((answer.status, answer.challenge()), (503, ""));
    // Failures are not cached past the failure backoff (1 s): once it is back,
    // the token is accepted.
    s.endpoint.down.store(false, Ordering::SeqCst);
    skip(1).await;
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

/// Issue 13 item 7: refusals are cached apart from accepted answers, so a flood of
/// junk tokens (each refused, each a new entry) cannot evict the answers of the
/// users whose tokens are good.
#[tokio::test]
async fn a_flood_of_junk_tokens_does_not_evict_accepted_answers() {
    let s = setup(|v| v.max_entries(10).max_refusals(50)).await;
    for i in 0..10 {
        let answer = send(s.api, "/me", Some(&format!("user-{i}"))).await;
        assert_eq!((answer.status, answer.body), (200, format!("user-{i}")));
    }
    assert_eq!(s.calls(), 10);
    for i in 0..300 {
        assert_eq!(
            send(s.api, "/me", Some(&format!("junk-{i}"))).await.status,
            401
        );
    }
    assert_eq!(s.calls(), 310);
    for i in 0..10 {
        assert_eq!(
            send(s.api, "/me", Some(&format!("user-{i}"))).await.status,
            200
        );
    }
    assert_eq!(s.calls(), 310, "every accepted answer outlived the flood");
    let stats = s.validator.stats();
    assert_eq!(stats.accepted, 10);
    assert!(stats.refused <= 50, "the refusals stay bounded: {stats:?}");
}

/// Issue 13 item 7: against a provider that serves several resource servers, a
/// token it issued for another one (another `aud`), or a token of another issuer, is
/// refused once `audience` and `issuer` are set (RFC 7662 §4, RFC 8707).
#[tokio::test]
async fn a_token_for_another_resource_server_or_issuer_is_refused() {
    let s = setup(|v| v.audience("my-api").issuer("https://idp.example")).await;
    let refused = |what: &str| {
        format!(r#"Bearer realm="{REALM}", error="invalid_token", error_description="{what}""#)
    };
    // aud an array containing ours, or ours alone.
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(send(s.api, "/me", Some("reader")).await.status, 200);
    for _ in 0..2 {
        let answer = send(s.api, "/me", Some("for-another-api")).await;
        assert_eq!(answer.status, 401);
        assert_eq!(
            answer.challenge(),
            refused("the token is not for this audience")
        );
    }
    let answer = send(s.api, "/me", Some("from-another-issuer")).await;
    assert_eq!(
        answer.challenge(),
        refused("the token has the wrong issuer")
    );
    let answer = send(s.api, "/me", Some("without-aud-or-iss")).await;
    assert_eq!(answer.challenge(), refused("the token lacks the iss claim"));
    // Each answer was asked once: the refusal of for-another-api was cached.
    assert_eq!(s.calls(), 5);
    assert_eq!(s.validator.stats().refused, 3);

    // The audience alone, and a token that has no aud.
    let s = setup(|v| v.audiences(["other", "my-api"])).await;
    assert_eq!(
        send(s.api, "/me", Some("from-another-issuer")).await.status,
        200
    );
    let answer = send(s.api, "/me", Some("without-aud-or-iss")).await;
    assert_eq!(answer.challenge(), refused("the token lacks the aud claim"));
    // Without either, as before: any active token.
    let s = setup(|v| v).await;
    assert_eq!(
        send(s.api, "/me", Some("for-another-api")).await.status,
        200
    );
}

/// Issue 13 item 7: a request that finds the answer stored by a flight that just
/// ended leaves no flight behind. Six threads ask for each new token over and over
/// without waiting (more threads than cores, so they are preempted anywhere), so
/// that some asks fall between a flight storing its answer and forgetting itself.
#[test]
fn no_flight_is_left_behind() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_endpoint, _gate, url) = rt.block_on(start_endpoint());
    let validator = Introspection::<Claims>::new(&url)
        .unwrap()
        .client("my-api", "s3cret:&");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    std::thread::scope(|threads| {
        for _ in 0..6 {
            threads.spawn(|| {
                let _runtime = rt.enter();
                for round in 0..300 {
                    let token = format!("user-{round}");
                    loop {
                        match validator.validate(&token).now_or_pending() {
                            Ok(outcome) => {
                                assert_eq!(outcome.unwrap().sub.as_deref(), Some(token.as_str()));
                                break;
                            }
                            // Dropped: the call goes on in its own task.
                            Err(_pending) => {
                                assert!(std::time::Instant::now() < deadline, "round {round}")
                            }
                        }
                    }
                }
            });
        }
    });
    // The last flight forgets itself right after storing its answer.
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            while validator.stats().in_flight > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
    })
    .unwrap_or_else(|_| panic!("flights left behind: {:?}", validator.stats()));
    assert_eq!(validator.stats().accepted, 300);
}

/// A failing introspection endpoint is named as such in the log (and the `503`),
/// never as a "token endpoint".
#[tokio::test]
async fn failures_name_the_introspection_endpoint() {
    let (logs, _capturing) = common::LogCapture::start(tracing::Level::INFO);

    let s = setup(|v| v).await;
    s.endpoint.down.store(true, Ordering::SeqCst);
    let rejection = s.validator.validate("good").await.unwrap_err();
    assert!(
        rejection.to_string().contains("introspection endpoint"),
        "{rejection}"
    );
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unreachable = Introspection::<Claims>::new(&format!("http://{closed}/introspect"))
        .unwrap()
        .client("my-api", "s3cret");
    unreachable.validate("good").await.unwrap_err();
    let text = logs.text();
    assert!(
        text.contains("invalid introspection endpoint response: HTTP 502"),
        "{text}"
    );
    assert!(
        text.contains("introspection endpoint unreachable: "),
        "{text}"
    );
    assert!(!text.contains("token endpoint"), "{text}");
}

/// With the default settings a token revoked at the provider is refused within
/// 30 s (the TTL of an accepted answer), and no sooner: the cache's staleness is
/// the documented price of one call per token per TTL.
#[tokio::test]
async fn a_revoked_token_is_refused_within_the_default_ttl_of_30_s() {
    assert_eq!(
        tower_bearer::server::introspect::DEFAULT_TTL,
        Duration::from_secs(30)
    );
    let s = setup(|v| v).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    s.endpoint.revoked.lock().unwrap().insert("good".into());
    skip(29).await;
    assert_eq!(
        send(s.api, "/me", Some("good")).await.status,
        200,
        "the cached answer, until the TTL ends"
    );
    assert_eq!(s.calls(), 1);
    skip(2).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 401);
    assert_eq!(s.calls(), 2);
}

/// A TTL of zero asks the endpoint on every request: a revocation counts at once.
#[tokio::test]
async fn a_zero_ttl_sees_a_revocation_at_once() {
    let s = setup(|v| v.ttl(Duration::ZERO)).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    s.endpoint.revoked.lock().unwrap().insert("good".into());
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 401);
    assert_eq!(s.calls(), 2);
}

/// Issue 29 item 1: clones configured for other APIs share the answer cache, but each
/// judges the provider's answer with its own audience. The orders API's clone
/// accepting a token for the orders API must not make the billing API's clone accept
/// it, in either order, and the provider is still asked once.
#[tokio::test]
async fn a_clone_for_another_audience_judges_the_cached_answer_itself() {
    let (endpoint, _gate, url) = start_endpoint().await;
    let base = Introspection::<Claims>::new(&url)
        .unwrap()
        .client("my-api", "s3cret");
    let orders = base.clone().audience("my-api");
    let billing = base.clone().audience("billing-api");
    // "reader" is for my-api only.
    assert_eq!(
        orders.validate("reader").await.unwrap().sub.as_deref(),
        Some("bob")
    );
    assert_eq!(
        billing.validate("reader").await.unwrap_err(),
        tower_bearer::server::Rejection::invalid_token("the token is not for this audience"),
        "billing accepted a token for the orders API from the cache"
    );
    // The reverse order: refused first (kept apart), then accepted where it belongs.
    assert_eq!(
        billing
            .validate("for-another-api")
            .await
            .unwrap()
            .sub
            .as_deref(),
        Some("carol")
    );
    assert!(orders.validate("for-another-api").await.is_err());
    assert_eq!(
        endpoint.calls.load(Ordering::SeqCst),
        2,
        "the provider's answers are shared"
    );
}

/// Issue 29 item 1: a clone requiring `write` must not accept a read-only token
/// because a clone requiring `read` accepted it, and the reverse order must not
/// refuse it where `read` is enough.
#[tokio::test]
async fn a_clone_requiring_other_scopes_judges_the_cached_answer_itself() {
    use tower_bearer::server::Rejection;
    let (endpoint, _gate, url) = start_endpoint().await;
    let base = Introspection::<Claims>::new(&url)
        .unwrap()
        .client("my-api", "s3cret");
    let read = base.clone().require_scopes(["read"]);
    let write = base.clone().require_scopes(["write"]);
    assert!(read.validate("reader").await.is_ok());
    assert_eq!(
        write.validate("reader").await.unwrap_err(),
        Rejection::InsufficientScope("write".into()),
        "a read token performs writes"
    );
    // The reverse order, on another read-only token.
    assert_eq!(
        write.validate("user-1").await.unwrap_err(),
        Rejection::InsufficientScope("write".into())
    );
    assert_eq!(
        read.validate("user-1").await.unwrap().sub.as_deref(),
        Some("user-1"),
        "refused for write, wrongly refused for read"
    );
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
}

/// Issue 29 item 1: the freshness a clone demands is one of its rules too: a clone
/// with `ttl(0)` sees a revocation at once even when a clone with the default TTL
/// cached the answer.
#[tokio::test]
async fn a_clone_with_a_shorter_ttl_does_not_serve_an_older_answer() {
    let (endpoint, _gate, url) = start_endpoint().await;
    let base = Introspection::<Claims>::new(&url)
        .unwrap()
        .client("my-api", "s3cret");
    let eager = base.clone().ttl(Duration::ZERO);
    assert!(base.validate("good").await.is_ok());
    endpoint.revoked.lock().unwrap().insert("good".into());
    assert!(
        eager.validate("good").await.is_err(),
        "ttl(0) served an answer cached by another clone"
    );
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 2);
}

/// Issue 29 item 2: a `VerifiedCache` over `Introspection` sees a revocation within
/// the introspection TTL, as the bare validator does: the cache cannot undo it.
#[tokio::test]
async fn a_verified_cache_over_introspection_sees_a_revocation_within_the_ttl() {
    use tower_bearer::server::VerifiedCache;
    let (endpoint, _gate, url) = start_endpoint().await;
    let bare = Introspection::<Claims>::new(&url)
        .unwrap()
        .client("my-api", "s3cret")
        .ttl(Duration::from_secs(1));
    let cached = VerifiedCache::new(bare.clone());
    assert!(cached.validate("good").await.is_ok());
    assert!(cached.validate("good").await.is_ok());
    assert_eq!(endpoint.calls.load(Ordering::SeqCst), 1);
    endpoint.revoked.lock().unwrap().insert("good".into());
    tokio::time::pause();
    tokio::time::advance(Duration::from_millis(1500)).await;
    tokio::time::resume();
    assert!(bare.validate("good").await.is_err(), "the bare validator");
    assert!(
        cached.validate("good").await.is_err(),
        "the cached composition accepts a token revoked 1.5 s ago (ttl 1 s)"
    );
    assert!(cached.is_empty(), "and forgets it");
}

/// Waits (bounded) until `cond` holds.
async fn until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(20), async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

fn retry_after(answer: &common::server::Answer) -> Option<&str> {
    answer
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap())
}

/// Principle 3: a failing endpoint is not asked once per request. After a failure,
/// requests for tokens not cached are answered 503 with `Retry-After` for a short
/// backoff, without a call; past it the endpoint is asked again.
#[tokio::test]
async fn a_failing_endpoint_is_not_asked_again_within_the_backoff() {
    let s = setup(|v| v).await;
    s.endpoint.down.store(true, Ordering::SeqCst);
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 503);
    assert_eq!(s.calls(), 1);
    for i in 0..20 {
        let answer = send(s.api, "/me", Some(&format!("user-{i}"))).await;
        assert_eq!(answer.status, 503);
        assert_eq!(retry_after(&answer), Some("1"), "{answer:?}");
    }
    assert_eq!(s.calls(), 1, "no call within the backoff");
    s.endpoint.down.store(false, Ordering::SeqCst);
    skip(1).await;
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2);
}

/// A hanging endpoint: the call times out once; the requests after it get 503 with
/// `Retry-After` at once, instead of each opening a call that hangs in turn.
#[tokio::test]
async fn a_hanging_endpoint_times_out_once_then_backs_off() {
    let s = setup(|v| v).await;
    s.gate.send_replace(false);
    let api = s.api;
    let first = tokio::spawn(async move { send(api, "/me", Some("good")).await });
    until(|| s.calls() == 1).await;
    skip(31).await; // past the HTTP client's 30 s timeout
    assert_eq!(first.await.unwrap().status, 503);
    for i in 0..5 {
        let answer = send(s.api, "/me", Some(&format!("user-{i}"))).await;
        assert_eq!(answer.status, 503);
        assert!(retry_after(&answer).is_some(), "{answer:?}");
    }
    assert_eq!(s.calls(), 1);
    s.gate.send_replace(true);
}

/// The TTL counts from when the provider was asked, not from when its answer
/// arrived: a token revoked at the provider while a slow call was under way is
/// refused within the TTL of the question.
#[tokio::test]
async fn an_answer_is_aged_from_when_it_was_asked_for() {
    let s = setup(|v| v.ttl(Duration::from_secs(10))).await;
    let (deliver, rx) = tokio::sync::watch::channel(false);
    *s.endpoint.deliver.lock().unwrap() = Some(rx);
    let v = s.validator.clone();
    let first = tokio::spawn(async move { v.validate("good").await });
    until(|| s.endpoint.computed.load(Ordering::SeqCst) == 1).await;
    s.endpoint.revoked.lock().unwrap().insert("good".into());
    skip(8).await; // the answer is slow to come
    deliver.send_replace(true);
    assert!(first.await.unwrap().is_ok());
    skip(3).await; // 11 s after the question, 3 s after the answer
    assert_eq!(
        s.validator.validate("good").await.unwrap_err(),
        tower_bearer::server::Rejection::invalid_token("the token is not active")
    );
    assert_eq!(s.calls(), 2);
}

/// Two clones requiring different issuers wait on one call: each judges the
/// provider's answer with its own issuer.
#[tokio::test]
async fn clones_for_other_issuers_sharing_a_flight_judge_it_each_with_their_own() {
    let s = setup(|v| v).await;
    let ours = s.validator.clone().issuer("https://idp.example");
    let theirs = s.validator.clone().issuer("https://other-idp.example");
    s.gate.send_replace(false);
    let (a, b) = (ours.clone(), theirs.clone());
    let first = tokio::spawn(async move { a.validate("good").await });
    until(|| s.calls() == 1).await;
    let second = tokio::spawn(async move { b.validate("good").await });
    until(|| s.validator.stats().in_flight == 1).await;
    tokio::task::yield_now().await;
    s.gate.send_replace(true);
    assert!(first.await.unwrap().is_ok());
    assert_eq!(
        second.await.unwrap().unwrap_err(),
        tower_bearer::server::Rejection::invalid_token("the token has the wrong issuer")
    );
    assert_eq!(s.calls(), 1);
    // And from the cache, in the other order.
    assert!(theirs.validate("good").await.is_err());
    assert!(ours.validate("good").await.is_ok());
    assert_eq!(s.calls(), 1);
}

/// A request dropped while its call is under way (a client that hung up) does not
/// cancel the call: its answer is cached, and the next request is served from it.
#[tokio::test]
async fn a_request_dropped_mid_call_does_not_cancel_the_call() {
    let s = setup(|v| v).await;
    s.gate.send_replace(false);
    let v = s.validator.clone();
    let dropped = tokio::spawn(async move { v.validate("good").await });
    until(|| s.calls() == 1).await;
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    s.gate.send_replace(true);
    until(|| s.validator.stats().accepted == 1).await;
    assert!(s.validator.validate("good").await.is_ok());
    assert_eq!(s.calls(), 1);
}

/// A clone with a short negative TTL is not held to another clone's cached
/// refusal: it asks again once its own negative TTL ends.
#[tokio::test]
async fn a_clones_cached_refusal_lasts_only_the_other_clones_own_negative_ttl() {
    let s = setup(|v| v.negative_ttl(Duration::from_secs(60))).await;
    let quick = s.validator.clone().negative_ttl(Duration::from_secs(1));
    s.endpoint.revoked.lock().unwrap().insert("user-x".into());
    assert!(s.validator.validate("user-x").await.is_err());
    s.endpoint.revoked.lock().unwrap().clear();
    assert!(quick.validate("user-x").await.is_err(), "within its 1 s");
    assert_eq!(s.calls(), 1);
    skip(2).await;
    assert!(quick.validate("user-x").await.is_ok());
    assert_eq!(s.calls(), 2);
}

/// A failure that may be the token's own (an answer that does not parse for it)
/// holds back only that token for the backoff: the others are still asked.
#[tokio::test]
async fn a_failure_for_one_token_backs_off_only_that_token() {
    let s = setup(|v| v).await;
    for _ in 0..3 {
        let answer = send(s.api, "/me", Some("garbled")).await;
        assert_eq!(answer.status, 503);
        assert_eq!(retry_after(&answer), Some("1"), "{answer:?}");
    }
    assert_eq!(s.calls(), 1);
    assert_eq!(send(s.api, "/me", Some("good")).await.status, 200);
    assert_eq!(s.calls(), 2);
    skip(1).await;
    assert_eq!(send(s.api, "/me", Some("garbled")).await.status, 503);
    assert_eq!(s.calls(), 3);
}
