//! The refreshing token cache against a real token endpoint on 127.0.0.1.

mod common;

use common::{credential as get, endpoint, until};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::Mode;
use tower_bearer::client::{Authorizer, HttpClient, Refreshing, TokenEndpoint, TokenSource};
use tower_bearer::{Error, Token};

/// The credential a caller would get now, without waiting.
fn now(a: &impl Authorizer) -> Option<Result<String, Error>> {
    a.credential()
        .now_or_pending()
        .ok()
        .map(|r| r.map(|c| c.unwrap().value.to_str().unwrap().to_owned()))
}

/// How long (on the paused tokio clock) a background refresh may take to land.
const LIMIT: Duration = Duration::from_secs(600);

fn expired_token(rt: &str) -> Token {
    Token::bearer("old-access")
        .unwrap()
        .with_expires_in(Duration::from_secs(1))
        .with_refresh_token(rt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_on_an_expired_token_make_one_token_request() {
    use tower::{Layer, ServiceExt};
    let s = common::start().await;
    s.idp.add_refresh_token("rt-0");
    s.idp.rotate.store(true, Ordering::SeqCst);
    s.idp.set_mode(Mode::Delay(Duration::from_millis(50)));
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
        .initial_token(expired_token("rt-0").with_expires_at(tokio::time::Instant::now()))
        .build();
    // The API checks each request's token against what the endpoint issued (in
    // process: 10,000 sockets at once would test the OS, not the cache).
    let idp = s.idp.clone();
    let api = tower::service_fn(move |req: http::Request<()>| {
        let token = common::bearer(req.headers());
        let valid = idp.access.lock().unwrap().contains_key(&token);
        async move { Ok::<_, std::convert::Infallible>(http::Response::new(valid)) }
    });
    let client = tower_bearer::AuthorizeLayer::new(cache.clone()).layer(api);
    let mut tasks = Vec::with_capacity(10_000);
    for _ in 0..10_000 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client.oneshot(http::Request::new(())).await
        }));
    }
    for t in tasks {
        let res = t.await.unwrap().expect("every request is sent");
        assert!(*res.body(), "every request carried a valid token");
    }
    assert_eq!(s.idp.tokens(), 1, "exactly one token request");
    assert_eq!(cache.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn near_expiry_one_background_refresh_and_nobody_waits() {
    let s = common::start().await;
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .refresh_before(Duration::from_secs(60))
        .jitter(Duration::ZERO)
        .initial_token(
            Token::bearer("first")
                .unwrap()
                .with_expires_in(Duration::from_secs(300)),
        )
        .build();
    // Fresh: served, nothing fetched.
    assert_eq!(now(&cache).unwrap().unwrap(), "Bearer first");
    tokio::time::advance(Duration::from_secs(250)).await;
    // Stale: every caller is served at once while one refresh runs behind.
    for _ in 0..1_000 {
        assert_eq!(now(&cache).expect("nobody waits").unwrap(), "Bearer first");
    }
    until(LIMIT, || {
        now(&cache).is_some_and(|c| c.unwrap() != "Bearer first")
    })
    .await;
    assert_eq!(s.idp.tokens(), 1, "one background refresh");
    assert_eq!(cache.stats().refreshes, 1);
    assert_eq!(cache.stats().waits, 0, "no caller waited");
    assert!(now(&cache).unwrap().unwrap().starts_with("Bearer at-"));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_caller_does_not_cancel_the_refresh() {
    let s = common::start().await;
    s.idp.set_mode(Mode::Delay(Duration::from_secs(2)));
    let cache = Refreshing::new(endpoint(&s).client_credentials());
    // The first caller starts the refresh and gives up after 100 ms.
    let first = tokio::time::timeout(Duration::from_millis(100), get(&cache)).await;
    assert!(first.is_err(), "the first caller was cancelled");
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { get(&cache).await })
        })
        .collect();
    for w in waiters {
        assert!(w.await.unwrap().unwrap().starts_with("Bearer at-"));
    }
    assert_eq!(s.idp.tokens(), 1, "the refresh carried on, once");
}

#[tokio::test(start_paused = true)]
async fn failures_are_typed_and_backoff_is_honoured() {
    type Expect = fn(&Error) -> bool;
    let cases: Vec<(Mode, Expect)> = vec![
        (
            Mode::Fail(500, "oops", None),
            |e| matches!(e, Error::TokenEndpoint(d) if d.status == 500),
        ),
        (
            Mode::Fail(503, r#"{"error":"temporarily_unavailable"}"#, None),
            |e| e.oauth_code() == Some("temporarily_unavailable"),
        ),
        (Mode::Delay(Duration::from_secs(120)), |e| {
            matches!(e, Error::Timeout(..))
        }),
        (Mode::BadJson, |e| matches!(e, Error::InvalidResponse(..))),
        (
            Mode::WrongType,
            |e| matches!(e, Error::InvalidResponse(_, m) if m.contains("mac")),
        ),
    ];
    for (mode, expected) in cases {
        let s = common::start().await;
        s.idp.set_mode(mode.clone());
        let cache = Refreshing::builder(
            endpoint(&s)
                .http_client(HttpClient::new().timeout(Duration::from_secs(5)))
                .client_credentials(),
        )
        .backoff(Duration::from_secs(10), Duration::from_secs(40))
        .build();
        let err = get(&cache).await.unwrap_err();
        assert!(expected(&err), "{mode:?}: {err:?}");
        assert_eq!(s.idp.tokens(), 1);
        // During the backoff: the last error at once, no new request.
        for _ in 0..100 {
            let again = now(&cache)
                .expect("an error at once during backoff")
                .unwrap_err();
            assert_eq!(again.to_string(), err.to_string());
        }
        assert_eq!(s.idp.tokens(), 1, "{mode:?}: backoff honoured");
        // After the backoff (at most 10 s with jitter): one new attempt, which succeeds.
        s.idp.set_mode(Mode::Normal);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            get(&cache).await.unwrap().starts_with("Bearer at-"),
            "{mode:?}"
        );
        assert_eq!(s.idp.tokens(), 2, "{mode:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn backoff_grows_and_honours_retry_after() {
    let s = common::start().await;
    s.idp.set_mode(Mode::Fail(503, "busy", Some(30)));
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .backoff(Duration::from_secs(1), Duration::from_secs(60))
        .build();
    let err = get(&cache).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    // Retry-After 30 s outweighs the 1 s backoff.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(now(&cache).unwrap().is_err());
    assert_eq!(s.idp.tokens(), 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(s.idp.tokens(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_valid_token_is_served_while_refreshes_fail() {
    let s = common::start().await;
    s.idp.set_mode(Mode::Fail(502, "bad gateway", None));
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .refresh_before(Duration::from_secs(60))
        .jitter(Duration::ZERO)
        .backoff(Duration::from_secs(4), Duration::from_secs(8))
        .initial_token(
            Token::bearer("still-good")
                .unwrap()
                .with_expires_in(Duration::from_secs(100)),
        )
        .build();
    tokio::time::advance(Duration::from_secs(50)).await;
    // 50 s of stale life, a caller every 100 ms: all served the valid token; refreshes
    // are attempted only as the backoff allows (at most one per 2 s to 8 s).
    for _ in 0..400 {
        assert_eq!(
            now(&cache).expect("served at once").unwrap(),
            "Bearer still-good"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let attempts = s.idp.tokens();
    assert!(
        (2..=25).contains(&attempts),
        "attempts bounded by backoff: {attempts}"
    );
    // Expired now, and still failing: an error, not the old token.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert!(matches!(get(&cache).await, Err(Error::TokenEndpoint(_))));
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_is_terminal_until_a_new_token_is_set() {
    let s = common::start().await;
    // rt-dead is not registered: the endpoint answers invalid_grant.
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-dead"))
        .backoff(Duration::from_secs(1), Duration::from_secs(2))
        .build();
    let err = get(&cache).await.unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err:?}");
    assert!(err.to_string().contains("log in again"), "{err}");
    tokio::time::advance(Duration::from_secs(3600)).await;
    for _ in 0..10 {
        assert!(matches!(get(&cache).await, Err(Error::InvalidGrant(_))));
    }
    assert_eq!(s.idp.tokens(), 1, "no retry loop after invalid_grant");
    // Reconfigured with a new token, it works again.
    s.idp.add_refresh_token("rt-new");
    cache
        .set_token(expired_token("rt-new").with_expires_at(tokio::time::Instant::now()))
        .await
        .unwrap();
    assert!(get(&cache).await.unwrap().starts_with("Bearer at-"));
    assert_eq!(s.idp.refresh_seen.lock().unwrap().last().unwrap(), "rt-new");
}

#[tokio::test(start_paused = true)]
async fn rotated_refresh_tokens_are_used_for_the_next_refresh() {
    let s = common::start_rotating().await;
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
        .jitter(Duration::ZERO)
        .build();
    for _ in 0..4 {
        assert!(get(&cache).await.unwrap().starts_with("Bearer at-"));
        tokio::time::advance(Duration::from_secs(101)).await;
    }
    let seen = s.idp.refresh_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], "rt-0");
    // Each refresh presented the token the previous one issued; none was refused.
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    assert!(seen
        .iter()
        .skip(1)
        .all(|rt| rt.starts_with("rt-") && rt != "rt-0"));
}

#[tokio::test(start_paused = true)]
async fn a_token_without_expiry_is_used_until_rejected() {
    let s = common::start().await;
    s.idp.set_lifetime(None);
    let cache = Refreshing::new(endpoint(&s).client_credentials());
    let first = get(&cache).await.unwrap();
    tokio::time::advance(Duration::from_secs(86_400 * 30)).await;
    assert_eq!(now(&cache).unwrap().unwrap(), first);
    assert_eq!(s.idp.tokens(), 1);
    cache.on_unauthorized(&http::HeaderValue::from_str(&first).unwrap());
    let second = get(&cache).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(s.idp.tokens(), 2);
}

#[tokio::test(start_paused = true)]
async fn default_lifetime_applies_to_tokens_without_expiry() {
    let s = common::start().await;
    s.idp.set_lifetime(None);
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .default_lifetime(Duration::from_secs(600))
        .refresh_before(Duration::from_secs(60))
        .jitter(Duration::ZERO)
        .build();
    let first = get(&cache).await.unwrap();
    tokio::time::advance(Duration::from_secs(601)).await;
    let second = get(&cache).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(s.idp.tokens(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_for_an_old_token_does_not_invalidate_the_new_one() {
    let s = common::start().await;
    let cache = Refreshing::new(endpoint(&s).client_credentials());
    let old = get(&cache).await.unwrap();
    cache.invalidate();
    let new = get(&cache).await.unwrap();
    assert_ne!(old, new);
    assert_eq!(s.idp.tokens(), 2);
    // A slow request that carried the old token comes back 401 now.
    cache.on_unauthorized(&http::HeaderValue::from_str(&old).unwrap());
    assert_eq!(now(&cache).unwrap().unwrap(), new, "the new token stays");
    // A 401 for the current token invalidates it, once.
    cache.on_unauthorized(&http::HeaderValue::from_str(&new).unwrap());
    cache.on_unauthorized(&http::HeaderValue::from_str(&new).unwrap());
    let third = get(&cache).await.unwrap();
    assert_ne!(third, new);
    assert_eq!(s.idp.tokens(), 3);
}

#[tokio::test]
async fn closures_are_token_sources() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let source = tower_bearer::client::source::from_fn(move |previous: Option<Token>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            assert_eq!(previous.is_some(), n > 0);
            Token::bearer(format!("closure-{n}"))
        }
    });
    let cache = Refreshing::new(source);
    assert_eq!(get(&cache).await.unwrap(), "Bearer closure-0");
    cache.invalidate();
    assert_eq!(get(&cache).await.unwrap(), "Bearer closure-1");
    // Boxed sources work too (for choosing a source at run time).
    let boxed: Box<dyn TokenSource> = Box::new(tower_bearer::client::source::from_fn(|_| async {
        Token::bearer("boxed")
    }));
    assert_eq!(get(&Refreshing::new(boxed)).await.unwrap(), "Bearer boxed");
}

#[test]
fn debug_prints_no_secret() {
    let endpoint = TokenEndpoint::new("https://idp.example.com/token")
        .unwrap()
        .client_id("id")
        .client_secret("client-secret-zz");
    let cache = Refreshing::builder(endpoint.refresh_token("refresh-secret-zz"))
        .initial_token(
            Token::bearer("access-secret-zz")
                .unwrap()
                .with_refresh_token("refresh-secret-zz"),
        )
        .build();
    let printed = format!(
        "{cache:?} {:?} {:?} {:?}",
        endpoint.refresh_token("refresh-secret-zz"),
        endpoint.password("alice", "password-zz"),
        endpoint.client_credentials()
    );
    assert!(!printed.contains("-zz"), "{printed}");
    assert!(printed.contains("alice"));
}

#[tokio::test(start_paused = true)]
async fn every_new_token_is_saved_before_it_is_served() {
    use tower_bearer::client::{MemoryStore, TokenStore};
    let s = common::start_rotating().await;
    let store = MemoryStore::new();
    let cache = common::stored_cache(&s, "rt-0", store.clone());
    for _ in 0..3 {
        let served = get(&cache).await.unwrap();
        let stored = store.load().await.unwrap().expect("saved");
        assert_eq!(
            format!(
                "Bearer {}",
                secrecy::ExposeSecret::expose_secret(stored.access_token())
            ),
            served
        );
        // The stored refresh token is the one the endpoint accepts now.
        let rt = secrecy::ExposeSecret::expose_secret(stored.refresh_token().unwrap()).to_owned();
        assert!(
            s.idp.refresh.lock().unwrap().contains_key(&rt),
            "{rt} is live"
        );
        tokio::time::advance(Duration::from_secs(101)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_another_process_saved_is_adopted_and_its_refresh_token_used() {
    use tower_bearer::client::{MemoryStore, TokenStore};
    let s = common::start_rotating().await;
    let store = MemoryStore::new();
    let a = common::stored_cache(&s, "rt-0", store.clone());
    let b = common::stored_cache(&s, "rt-0", store.clone());
    let from_a = get(&a).await.unwrap();
    // B starts later: it adopts A's token instead of spending rt-0 again.
    assert_eq!(get(&b).await.unwrap(), from_a);
    assert_eq!(s.idp.tokens(), 1);
    // After expiry B refreshes with the rotated refresh token A saved, and A adopts B's.
    tokio::time::advance(Duration::from_secs(101)).await;
    let from_b = get(&b).await.unwrap();
    assert_eq!(get(&a).await.unwrap(), from_b);
    assert_eq!(s.idp.tokens(), 2);
    let seen = s.idp.refresh_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_ne!(
        seen[0], seen[1],
        "the second refresh used the rotated token"
    );
    assert!(store.load().await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn a_token_set_during_a_failing_refresh_wins_and_holds_nothing_back() {
    let s = common::start().await;
    // The refresh token is dead, and the endpoint takes 10 s to say so.
    s.idp.set_mode(Mode::Delay(Duration::from_secs(10)));
    let cache = Refreshing::new(endpoint(&s).refresh_token("rt-dead"));
    let waiter = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    while s.idp.tokens() == 0 {
        tokio::task::yield_now().await;
    }
    // Meanwhile the user logs in again.
    s.idp.add_refresh_token("rt-new");
    cache
        .set_token(
            Token::bearer("from-login")
                .unwrap()
                .with_expires_in(Duration::from_secs(3600))
                .with_refresh_token("rt-new"),
        )
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(got.access_token()),
        "from-login"
    );
    assert_eq!(s.idp.tokens(), 1, "the dead refresh token was tried once");
    // The invalid_grant of the old refresh holds nothing back: the new token is
    // served, and refreshing it (from its own refresh token) works.
    s.idp.set_mode(Mode::Normal);
    assert_eq!(get(&cache).await.unwrap(), "Bearer from-login");
    cache.invalidate();
    assert!(get(&cache).await.unwrap().starts_with("Bearer at-"));
    assert_eq!(s.idp.tokens(), 2);
    assert_eq!(
        s.idp
            .refresh_seen
            .lock()
            .unwrap()
            .last()
            .map(String::as_str),
        Some("rt-new")
    );
}

/// Default settings, 3 s tokens, a caller every 50 ms for ten lifetimes: each token
/// is refreshed once, ahead of its expiry (nobody waits but the first caller), and
/// is used for most of its life: one token request per lifetime, not two.
#[tokio::test(start_paused = true)]
async fn a_short_token_costs_one_token_request_per_lifetime_with_defaults() {
    let s = common::start().await;
    s.idp.set_lifetime(Some(3));
    let cache = Refreshing::new(endpoint(&s).client_credentials());
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        assert!(get(&cache).await.unwrap().starts_with("Bearer at-"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let requests = s.idp.tokens();
    // The first token, then one refresh in the last tenth of each 3 s lifetime:
    // 1 + 30 / 2.7 = 12.1.
    assert!(
        requests <= 12,
        "{requests} token requests in ten lifetimes of 3 s"
    );
    assert_eq!(cache.stats().waits, 1, "every refresh ran ahead of expiry");
    // A long-lived token is still refreshed a minute (plus jitter) ahead.
    s.idp.set_lifetime(Some(3600));
    let long = Refreshing::new(endpoint(&s).client_credentials());
    get(&long).await.unwrap();
    let before = s.idp.tokens();
    tokio::time::advance(Duration::from_secs(3600 - 70 - 1)).await;
    get(&long).await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(s.idp.tokens(), before, "fresh until 70 s before expiry");
    tokio::time::advance(Duration::from_secs(11)).await;
    let first = get(&long).await.unwrap();
    until(LIMIT, || now(&long).is_some_and(|c| c.unwrap() != first)).await;
    assert_eq!(s.idp.tokens(), before + 1, "refreshed 60 s ahead of expiry");
    assert_eq!(long.stats().waits, 1, "only the first caller waited");
}

/// A real store whose `save` of a token from the endpoint (`at-…`) waits for the
/// test: a refresh's save still in flight when the logout comes.
struct HeldSave<T> {
    inner: T,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl<T: tower_bearer::client::TokenStore> tower_bearer::client::TokenStore for HeldSave<T> {
    fn load(&self) -> futures_util::future::BoxFuture<'_, Result<Option<Token>, Error>> {
        self.inner.load()
    }
    fn save<'a>(
        &'a self,
        token: &'a Token,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        use futures_util::FutureExt;
        use secrecy::ExposeSecret;
        async move {
            if token.access_token().expose_secret().starts_with("at-") {
                self.entered.notify_one();
                self.gate.acquire().await.unwrap().forget();
            }
            self.inner.save(token).await
        }
        .boxed()
    }
    fn clear(&self) -> futures_util::future::BoxFuture<'_, Result<(), Error>> {
        self.inner.clear()
    }
}

/// A token due for refresh now, with the refresh token `rt-0`.
fn due_token() -> Token {
    Token::bearer("old-access")
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token("rt-0")
}

fn token_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tb-logout-{name}-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("token.json")
}

/// Issue 29, defect 8 (principle 7), the case as reported: a logout while the refresh
/// waits on a slow token endpoint. Its token is neither served nor written to the
/// token file, and the next process finds no login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_during_a_slow_refresh_leaves_no_token_in_the_file() {
    use tower_bearer::client::{FileStore, TokenStore};
    let s = common::start_rotating().await;
    s.idp.set_mode(Mode::Delay(Duration::from_millis(300)));
    let path = token_file("slow");
    let store = FileStore::at(&path, "alice", s.token_url());
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
        .store(store)
        .initial_token(due_token())
        .build();
    let caller = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token().await })
    };
    until(Duration::from_secs(10), || s.idp.tokens() == 1).await;
    // No revocation endpoint: the logout says so, and forgets the tokens all the same.
    let _ = cache.logout().await;
    let refreshed = caller.await.unwrap();
    assert!(refreshed.is_err(), "the refresh's token was served");
    let next_process = FileStore::at(&path, "alice", s.token_url());
    let left = next_process.load().await.unwrap();
    assert!(
        left.is_none(),
        "the token file holds a token after the logout: {:?}",
        left.map(|t| secrecy::ExposeSecret::expose_secret(t.access_token()).to_owned())
    );
    assert!(cache.token().await.is_err(), "the cache serves a token");
}

/// Issue 29, defect 8: the refresh's save was still being written when the logout
/// cleared the file, and landed after it: a live token and its refresh token stayed
/// in the file, unrevoked, and the next process was logged in again. The logout and
/// the refresh's save are one step now: whichever comes second sees the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_while_the_refresh_saves_leaves_no_token_in_the_file() {
    use tower_bearer::client::{FileStore, TokenStore};
    let s = common::start_rotating().await;
    let path = token_file("saving");
    let entered = Arc::new(tokio::sync::Notify::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let store = HeldSave {
        inner: FileStore::at(&path, "alice", s.token_url()),
        entered: entered.clone(),
        gate: gate.clone(),
    };
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
        .store(store)
        .initial_token(due_token())
        .build();
    let caller = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.token().await })
    };
    entered.notified().await;
    let mut logout = tokio::spawn(cache.logout());
    // The logout may finish while the save is held (as it did), or wait for it.
    let early = tokio::time::timeout(Duration::from_millis(500), &mut logout).await;
    gate.add_permits(1);
    if early.is_err() {
        let _ = logout.await;
    }
    let refreshed = caller.await.unwrap();
    assert!(refreshed.is_err(), "the refresh's token was served");
    let next_process = FileStore::at(&path, "alice", s.token_url());
    let left = next_process.load().await.unwrap();
    assert!(
        left.is_none(),
        "the token file holds a token after the logout: {:?}",
        left.map(|t| secrecy::ExposeSecret::expose_secret(t.access_token()).to_owned())
    );
    assert!(cache.token().await.is_err(), "the cache serves a token");
}

/// Issue 29, friction "short tokens on a slow provider": with a 5 s token the cache
/// refreshed 0.5 s before expiry while the token endpoint took 0.6 s, so requests
/// went out with a token in its last moments and met a `401`. The cache now widens
/// its margin by the refresh latency it observed, and sends no token with less than
/// that left.
#[tokio::test(start_paused = true)]
async fn no_token_is_sent_in_its_last_moments_on_a_slow_provider() {
    let s = common::start().await;
    s.idp.set_lifetime(Some(5));
    let latency = Duration::from_millis(600);
    s.idp.set_mode(Mode::Delay(latency));
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .jitter(Duration::ZERO)
        .build();
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let value = get(&cache).await.unwrap();
        let token = value.trim_start_matches("Bearer ");
        let expires = s.idp.access.lock().unwrap()[token];
        let left = expires.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            left >= latency,
            "a request carried a token with {left:?} left, less than a refresh takes"
        );
        tokio::time::advance(Duration::from_millis(50)).await;
    }
    assert!(
        s.idp.tokens() >= 4,
        "tokens were refreshed: {}",
        s.idp.tokens()
    );
}

/// A revocation endpoint on 127.0.0.1 that records every token it is asked to
/// revoke and never answers: a provider that hangs at logout.
async fn hanging_revocation() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::routing::post;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/revoke",
        post(
            move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                let recorded = recorded.clone();
                async move {
                    recorded
                        .lock()
                        .unwrap()
                        .push(form.get("token").cloned().unwrap_or_default());
                    std::future::pending::<()>().await;
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/revoke"), seen)
}

/// A live token from a login, with the refresh token `rt-0`.
fn logged_in() -> Token {
    Token::bearer("login-access")
        .unwrap()
        .with_expires_in(Duration::from_secs(100))
        .with_refresh_token("rt-0")
}

/// A careful user bounds a logout whose provider hangs (`timeout(…, logout())`): the
/// tokens were still in the token file, because it was cleared only after the
/// revocations answered. Forgetting them here must not wait on the provider.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_cut_short_while_revoking_has_forgotten_the_stored_tokens() {
    use tower_bearer::client::{FileStore, Revocation, TokenStore};
    let s = common::start_rotating().await;
    let (revoke_url, seen) = hanging_revocation().await;
    let path = token_file("cut-short");
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
        .store(FileStore::at(&path, "alice", s.token_url()))
        .revocation(Revocation::new(&endpoint(&s), &revoke_url).unwrap())
        .build();
    cache.set_token(logged_in()).await.unwrap();
    let logout = tokio::spawn(cache.logout());
    until(Duration::from_secs(10), || !seen.lock().unwrap().is_empty()).await;
    // The caller gives up on the provider.
    logout.abort();
    let _ = logout.await;
    let left = FileStore::at(&path, "alice", s.token_url())
        .load()
        .await
        .unwrap();
    assert!(
        left.is_none(),
        "the token file still holds the session after a logout cut short while revoking"
    );
    assert!(cache.token().await.is_err(), "the cache serves a token");
}

/// Principle 3: the store gate was held across the revocation requests, so a new
/// login (`set_token`) during a logout whose provider hangs waited for the
/// revocations to time out (30 s each, up to four) before its token reached the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_during_a_hanging_logout_is_saved_without_waiting_for_the_provider() {
    use tower_bearer::client::{FileStore, Revocation, TokenStore};
    let s = common::start_rotating().await;
    let (revoke_url, seen) = hanging_revocation().await;
    let path = token_file("relogin");
    let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
        .store(FileStore::at(&path, "alice", s.token_url()))
        .revocation(Revocation::new(&endpoint(&s), &revoke_url).unwrap())
        .build();
    cache.set_token(logged_in()).await.unwrap();
    let logout = tokio::spawn(cache.logout());
    until(Duration::from_secs(10), || !seen.lock().unwrap().is_empty()).await;
    let again = Token::bearer("second-login")
        .unwrap()
        .with_expires_in(Duration::from_secs(100))
        .with_refresh_token("rt-0");
    // A hang detector, not a measure: the provider never answers.
    tokio::time::timeout(Duration::from_secs(10), cache.set_token(again))
        .await
        .expect("the new login waits for the logout's hanging revocation")
        .unwrap();
    logout.abort();
    let stored = FileStore::at(&path, "alice", s.token_url())
        .load()
        .await
        .unwrap()
        .expect("the new login is in the token file");
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(stored.access_token()),
        "second-login"
    );
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(cache.token().await.unwrap().access_token()),
        "second-login"
    );
}

/// The latency margin under attack: one refresh that takes 20 s (a provider hiccup)
/// with 30 s tokens. The margin is capped at half of each token's life and decays
/// by a quarter per refresh: every caller is served, and the token endpoint sees a
/// few extra requests, no storm.
#[tokio::test(start_paused = true)]
async fn one_slow_refresh_costs_a_few_early_refreshes_not_a_storm() {
    let s = common::start().await;
    s.idp.set_lifetime(Some(30));
    s.idp.set_mode(Mode::Delay(Duration::from_secs(20)));
    let cache = Refreshing::builder(endpoint(&s).client_credentials())
        .jitter(Duration::ZERO)
        .build();
    get(&cache).await.unwrap();
    s.idp.set_mode(Mode::Normal);
    let started = tokio::time::Instant::now();
    let mut served = 0u32;
    while started.elapsed() < Duration::from_secs(300) {
        let value = get(&cache).await.expect("every caller is served");
        let token = value.trim_start_matches("Bearer ");
        let expires = s.idp.access.lock().unwrap()[token];
        assert!(
            tokio::time::Instant::now() < expires,
            "an expired token was sent"
        );
        served += 1;
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(served >= 2_900);
    // 300 s of 30 s tokens: 10 at one per lifetime (27 s), 20 at two; the widened
    // margin decays back within a few refreshes.
    let tokens = s.idp.tokens();
    assert!(tokens <= 16, "{tokens} token requests in 300 s");
}
