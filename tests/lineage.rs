//! Issue 13, "Token lineage": a token is replaced only by a newer one, `dead` is
//! declared only by the owner of what died, and no outside failure turns into a
//! storm. Each test is one of the sequences that broke before, against a real token
//! endpoint and APIs on 127.0.0.1.

mod common;

use common::{credential as get, endpoint};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Mode;
use futures_util::future::{BoxFuture, FutureExt};
use http::StatusCode;
use http_body_util::Full;
use secrecy::ExposeSecret;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Authorizer, MemoryStore, Refreshing, TokenStore};
use tower_bearer::{Error, Token};

fn last_refresh_token_seen(s: &common::Servers) -> Option<String> {
    s.idp.refresh_seen.lock().unwrap().last().cloned()
}

fn login(access: &str, rt: &str, lifetime: u64) -> Token {
    Token::bearer(access)
        .unwrap()
        .with_expires_in(Duration::from_secs(lifetime))
        .with_refresh_token(rt)
}

/// Sequence 1a: `set_token` after `invalid_grant`, with a store. Before, the store's
/// older token was adopted one lifetime later and its dead refresh token presented:
/// `invalid_grant` again, after every login.
#[tokio::test(start_paused = true)]
async fn a_login_after_invalid_grant_is_not_undone_by_the_store() {
    let s = common::start_rotating().await;
    let store = MemoryStore::new();
    let cache = common::stored_cache(&s, "rt-0", store.clone());
    get(&cache).await.unwrap();
    // The provider ends the session: every refresh token dies.
    s.idp.refresh.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(101)).await;
    assert!(matches!(get(&cache).await, Err(Error::InvalidGrant(_))));

    // The person logs in again; the application sets the new token.
    s.idp.add_refresh_token("rt-login");
    cache
        .set_token(login("from-login", "rt-login", 100))
        .await
        .unwrap();
    assert_eq!(get(&cache).await.unwrap(), "Bearer from-login");
    let stored = store.load().await.unwrap().unwrap();
    assert_eq!(
        stored.access_token().expose_secret(),
        "from-login",
        "set_token writes through to the store"
    );

    // One lifetime later the refresh uses the login's refresh token, not the store's.
    tokio::time::advance(Duration::from_secs(101)).await;
    let refreshed = get(&cache).await;
    assert!(refreshed.is_ok(), "{refreshed:?}");
    assert_eq!(last_refresh_token_seen(&s).as_deref(), Some("rt-login"));
}

/// Sequence 1b: a new login as another user (bob) after alice's tokens were stored.
/// Before, the refresh adopted alice's stored token: requests went out as alice.
#[tokio::test(start_paused = true)]
async fn a_login_as_another_user_never_goes_back_to_the_previous_user() {
    let s = common::start().await;
    s.idp.add_refresh_token("rt-alice");
    s.idp.add_refresh_token("rt-bob");
    s.idp.set_lifetime(Some(100));
    let store = MemoryStore::new();
    let cache = common::stored_cache(&s, "rt-alice", store.clone());
    get(&cache).await.unwrap();
    assert_eq!(last_refresh_token_seen(&s).as_deref(), Some("rt-alice"));

    cache
        .set_token(login("bob-access", "rt-bob", 100))
        .await
        .unwrap();
    assert_eq!(get(&cache).await.unwrap(), "Bearer bob-access");
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(101)).await;
        get(&cache).await.unwrap();
        assert_eq!(
            last_refresh_token_seen(&s).as_deref(),
            Some("rt-bob"),
            "every refresh after bob's login is bob's"
        );
    }
    let stored = store.load().await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token().unwrap().expose_secret(),
        "rt-bob",
        "the store holds bob's token"
    );
}

/// A [`MemoryStore`] whose saves fail while `failing` is set: a store that is down.
#[derive(Clone, Default)]
struct FlakyStore {
    inner: MemoryStore,
    failing: Arc<AtomicBool>,
}

impl TokenStore for FlakyStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Token>, Error>> {
        self.inner.load()
    }
    fn save<'a>(&'a self, token: &'a Token) -> BoxFuture<'a, Result<(), Error>> {
        if self.failing.load(Ordering::SeqCst) {
            return futures_util::future::ready(Err(Error::Store("down".into()))).boxed();
        }
        self.inner.save(token)
    }
    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.inner.clear()
    }
}

/// Sequence 1c: one failed `store.save`. Before, the next refresh adopted the older
/// stored token and presented a refresh token the provider had rotated away:
/// `invalid_grant` while memory held the live one.
#[tokio::test(start_paused = true)]
async fn a_failed_save_never_makes_the_cache_go_back() {
    let s = common::start_rotating().await;
    let store = FlakyStore::default();
    let cache = common::stored_cache(&s, "rt-0", store.clone());
    get(&cache).await.unwrap();

    // The second token's save fails: it is served anyway (its refresh token is the
    // only live one) and the failure is counted.
    store.failing.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(101)).await;
    let second = get(&cache).await.unwrap();
    assert_eq!(cache.stats().save_failures, 1);
    store.failing.store(false, Ordering::SeqCst);

    // The next refresh presents the live refresh token, not the stored (rotated) one,
    // and the unsaved token reached the store first.
    tokio::time::advance(Duration::from_secs(101)).await;
    let third = get(&cache).await;
    assert!(third.is_ok(), "{third:?}");
    assert_ne!(third.unwrap(), second);
    let seen = s.idp.refresh_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    assert_ne!(seen[2], seen[1], "the rotated refresh token was used");
    let stored = store.load().await.unwrap().unwrap();
    assert!(
        s.idp
            .refresh
            .lock()
            .unwrap()
            .contains_key(stored.refresh_token().unwrap().expose_secret()),
        "the store holds the live refresh token"
    );
}

/// Sequence 1, `initial_token`: a token given at start-up is newer than what an
/// earlier run stored. Before, the first refresh adopted the stored one.
#[tokio::test(start_paused = true)]
async fn an_initial_token_is_newer_than_the_store_and_written_through() {
    let s = common::start().await;
    s.idp.add_refresh_token("rt-stored");
    s.idp.add_refresh_token("rt-given");
    s.idp.set_lifetime(Some(100));
    let store = MemoryStore::new();
    store
        .save(&login("stored-access", "rt-stored", 1))
        .await
        .unwrap();
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-given"))
        .initial_token(login("given-access", "rt-given", 100))
        .store(store.clone())
        .build();
    assert_eq!(get(&cache).await.unwrap(), "Bearer given-access");
    tokio::time::advance(Duration::from_secs(101)).await;
    get(&cache).await.unwrap();
    assert_eq!(last_refresh_token_seen(&s).as_deref(), Some("rt-given"));
    assert_eq!(s.idp.tokens(), 1);
}

/// Before declaring itself logged out, the cache reads the store again: another
/// process that rotated the refresh token meanwhile saved the live one there.
#[tokio::test(start_paused = true)]
async fn invalid_grant_is_not_terminal_while_the_store_holds_a_newer_token() {
    let s = common::start_rotating().await;
    let store = MemoryStore::new();
    let a = common::stored_cache(&s, "rt-0", store.clone());
    get(&a).await.unwrap();
    // B shares the store and slowly refreshes with the same refresh token: the
    // provider rotates it at once but answers late.
    let b = common::stored_cache(&s, "rt-0", store.clone());
    assert_eq!(get(&b).await.unwrap(), get(&a).await.unwrap());
    tokio::time::advance(Duration::from_secs(101)).await;
    s.idp.set_mode(Mode::DelayAnswer(Duration::from_secs(5)));
    let slow = tokio::spawn({
        let b = b.clone();
        async move { get(&b).await }
    });
    while s.idp.tokens() < 2 {
        tokio::task::yield_now().await;
    }
    s.idp.set_mode(Mode::Normal);
    // A presents the same (now rotated) refresh token: invalid_grant, and the store
    // holds nothing newer yet. With a store that is not the end of A's session.
    let refused = get(&a).await;
    assert!(
        matches!(refused, Err(Error::InvalidGrant(_))),
        "{refused:?}"
    );
    let from_b = slow.await.unwrap().unwrap();
    // After the backoff A reads the store again and adopts B's token, without
    // presenting the dead refresh token again.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(get(&a).await.unwrap(), from_b);
    assert_eq!(s.idp.tokens(), 3, "one refresh each, and A's one refusal");
}

/// An API that refuses every token, beside one that accepts them.
async fn refusing_api() -> std::net::SocketAddr {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/api",
        get(|| async {
            (
                StatusCode::UNAUTHORIZED,
                [(
                    http::header::WWW_AUTHENTICATE,
                    r#"Bearer realm="other", error="invalid_token""#,
                )],
            )
        }),
    );
    common::serve(app).await
}

/// Sequence 3: mixed traffic. One backend rejects the token (a wrong audience, a
/// replica that has not fetched a rotated key), another accepts it. Before, every
/// 401 was a "first rejection" (any accepted answer reset the count): 50 requests
/// alternating between the two made 50 token requests.
#[tokio::test(start_paused = true)]
async fn mixed_traffic_does_not_storm_the_token_endpoint() {
    let s = common::start().await;
    let other = refusing_api().await;
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .backoff(Duration::from_secs(1), Duration::from_secs(60))
        .build();
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(cache.clone()))
        .service(common::http_client::<Full<Bytes>>());
    let urls = [s.api_url(), format!("http://{other}/api")];
    let mut accepted = 0;
    for i in 0..50 {
        let req = http::Request::get(&urls[i % 2])
            .body(Full::<Bytes>::default())
            .unwrap();
        let svc = client.ready().await.unwrap();
        match svc.call(req).await {
            Ok(res) if res.status() == StatusCode::OK => accepted += 1,
            Ok(_) | Err(_) => {}
        }
    }
    assert!(
        s.idp.tokens() <= 2,
        "{} token requests for 50 alternating requests",
        s.idp.tokens()
    );
    assert_eq!(
        accepted, 25,
        "the backend that accepts the token was never refused a request"
    );
    // Rejections go on: the next 401-triggered refresh waits at least the backoff,
    // and each one after waits longer.
    let phase_two = s.idp.tokens();
    for i in 0..400 {
        let req = http::Request::get(&urls[i % 2])
            .body(Full::<Bytes>::default())
            .unwrap();
        let _ = client.ready().await.unwrap().call(req).await;
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let times = s.idp.token_times.lock().unwrap().clone();
    let refreshes_at = &times[phase_two - 1..];
    let gaps: Vec<_> = refreshes_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_secs(1)),
        "401-triggered refreshes at least backoff_initial apart: {gaps:?}"
    );
    assert!(
        (3..=8).contains(&gaps.len()),
        "the gaps grow while rejections go on, over 40 s: {gaps:?}"
    );
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
}

/// Sequence 4: a refresh spawned on a runtime that then sits idle (a current-thread
/// runtime behind a blocking wrapper). Before, callers on every other runtime waited
/// forever: the HTTP timeout cannot fire in a task that is never polled.
#[test]
fn a_flight_nobody_drives_is_abandoned_and_another_starts() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = main.block_on(common::start());
    s.idp.set_mode(Mode::Delay(Duration::from_millis(200)));
    let cache = Refreshing::new(endpoint(&s).client_credentials());

    // A blocking wrapper: a current-thread runtime driven only inside `block_on`.
    let idle = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    idle.block_on(async {
        // The request starts the refresh on this runtime, is polled once and
        // returns (as a blocking call that timed out would).
        let mut first = cache.credential();
        assert!(futures_util::poll!(&mut first).is_pending());
    });

    // Callers on the driven runtime get a token in bounded time.
    let got =
        main.block_on(async { tokio::time::timeout(Duration::from_secs(30), get(&cache)).await });
    let got = got.expect("a caller waited for a flight nobody drives");
    assert!(got.unwrap().starts_with("Bearer at-"));
    drop(idle);
}

/// An endpoint that answers 503 with this `Retry-After`.
async fn busy_endpoint(retry_after: String) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use axum::routing::post;
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().route(
        "/token",
        post(move || {
            let retry_after = retry_after.clone();
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(http::header::RETRY_AFTER, retry_after)],
                    "busy",
                )
            }
        }),
    );
    let addr = common::serve(app).await;
    (format!("http://{addr}/token"), hits)
}

/// Sequence 5: a `Retry-After` longer than `backoff_max` was cut to `backoff_max`
/// (the docs said it is honoured when longer).
#[tokio::test(start_paused = true)]
async fn retry_after_seconds_longer_than_the_backoff_is_honoured() {
    let (url, hits) = busy_endpoint("120".into()).await;
    let source = common::endpoint_at(&url).client_credentials();
    let cache = Refreshing::builder(source)
        .backoff(Duration::from_secs(1), Duration::from_secs(10))
        .build();
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1, "held for Retry-After");
    tokio::time::advance(Duration::from_secs(61)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "asked again after 120 s");
}

/// Sequence 5, the HTTP-date form, which was ignored; and the cap of one hour.
#[tokio::test(start_paused = true)]
async fn retry_after_as_an_http_date_is_honoured_up_to_the_cap() {
    let when = std::time::SystemTime::now() + Duration::from_secs(300);
    let (url, hits) = busy_endpoint(httpdate::fmt_http_date(when)).await;
    let source = common::endpoint_at(&url).client_credentials();
    let cache = Refreshing::builder(source)
        .backoff(Duration::from_secs(1), Duration::from_secs(10))
        .build();
    assert!(get(&cache).await.is_err());
    tokio::time::advance(Duration::from_secs(200)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1, "held until the date");
    tokio::time::advance(Duration::from_secs(120)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 2);

    // A day is capped at one hour.
    let (url, hits) = busy_endpoint("86400".into()).await;
    let source = common::endpoint_at(&url).client_credentials();
    let cache = Refreshing::builder(source)
        .backoff(Duration::from_secs(1), Duration::from_secs(10))
        .build();
    assert!(get(&cache).await.is_err());
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one hour at most");
}
