//! Model checks of the token cache's single flight with loom: every interleaving of
//! the real code (its locks, atomics and the token slot are loom's under
//! `--cfg tower_bearer_loom`), within a preemption bound.
//!
//! ```text
//! RUSTFLAGS="--cfg tower_bearer_loom" cargo test --release --manifest-path loom/Cargo.toml
//! ```
//!
//! Without a runtime the single flight runs its job inline, driven by whichever
//! waiter polls it: the same slot, recheck and publication code as with a spawned
//! task.
#![cfg(tower_bearer_loom)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use loom::future::block_on;
use loom::thread;
use tower_bearer::client::{source, Authorizer, Refreshing};
use tower_bearer::{EndpointError, Error, Token};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// A source that counts its calls and names each token after its call number;
/// `fail_first` makes the first call fail.
fn counting(fail_first: bool) -> (Arc<AtomicUsize>, impl source::TokenSource + Clone) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let src = source::from_fn(move |_prev: Option<Token>| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if fail_first && n == 0 {
                return Err(Error::TokenEndpoint(Box::new(EndpointError::status(
                    http::StatusCode::SERVICE_UNAVAILABLE,
                ))));
            }
            Token::bearer(format!("t{n}"))
        }
    });
    (calls, src)
}

fn value(r: Result<Option<tower_bearer::client::Credential>, Error>) -> Result<String, String> {
    r.map(|c| c.unwrap().value.to_str().unwrap().to_owned())
        .map_err(|e| e.to_string())
}

#[test]
fn two_callers_on_an_empty_cache_share_one_fetch() {
    model(|| {
        let (calls, src) = counting(false);
        let cache = Refreshing::new(src);
        let other = cache.clone();
        let t = thread::spawn(move || value(block_on(other.credential())));
        let a = value(block_on(cache.credential()));
        let b = t.join().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(a, Ok("Bearer t0".to_owned()));
        assert_eq!(a, b);
    });
}

#[test]
fn an_invalidation_racing_a_caller_refreshes_once() {
    model(|| {
        let (calls, src) = counting(false);
        let cache = Refreshing::builder(src)
            .initial_token(Token::bearer("old").unwrap())
            .build();
        let sent = cache
            .credential()
            .now_or_pending()
            .unwrap()
            .unwrap()
            .unwrap()
            .value;
        let other = cache.clone();
        let t = thread::spawn(move || value(block_on(other.credential())));
        cache.on_unauthorized(&sent);
        let after = value(block_on(cache.credential()));
        let concurrent = t.join().unwrap();
        // The rejected token is never served after the rejection; one fetch replaces it.
        assert_eq!(after, Ok("Bearer t0".to_owned()));
        assert!(concurrent == Ok("Bearer old".to_owned()) || concurrent == after);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A late 401 for the old token does not drop the new one.
        cache.on_unauthorized(&sent);
        assert_eq!(value(block_on(cache.credential())), after);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn a_caller_cancelled_during_the_refresh_strands_nobody() {
    model(|| {
        let (calls, src) = counting(false);
        let cache = Refreshing::new(src);
        let other = cache.clone();
        let t = thread::spawn(move || {
            // Starts the refresh, polls it once, and gives up.
            let mut fut = other.credential();
            block_on(async {
                let _ = futures_util::poll!(&mut fut);
            });
            drop(fut);
        });
        let a = value(block_on(cache.credential()));
        t.join().unwrap();
        assert!(a.is_ok(), "{a:?}");
        // After everyone is gone the cache still works and fetched at most twice.
        let b = value(block_on(cache.credential()));
        assert_eq!(a, b);
        assert!((1..=2).contains(&calls.load(Ordering::SeqCst)));
    });
}

#[test]
fn a_failure_is_shared_and_the_backoff_holds_for_a_late_caller() {
    model(|| {
        let (calls, src) = counting(true);
        let cache = Refreshing::new(src);
        let other = cache.clone();
        let t = thread::spawn(move || value(block_on(other.credential())));
        let a = value(block_on(cache.credential()));
        let b = t.join().unwrap();
        assert!(a.is_err() && b.is_err(), "{a:?} {b:?}");
        assert_eq!(a, b, "the same error for both");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "no second attempt during backoff"
        );
    });
}

/// Issue 13, the lineage rule: a refresh (which reads the store, fetches and saves)
/// racing `set_token` (a new login, written through to the store). Whatever the
/// interleaving, the cache and the store end on the login or a token refreshed from
/// it, never on one refreshed from an older token, and the store's older token is
/// never served.
#[test]
fn a_refresh_racing_set_token_and_a_store_load_never_goes_back() {
    use secrecy::ExposeSecret;
    use tower_bearer::client::{MemoryStore, TokenStore};
    model(|| {
        let store = MemoryStore::new();
        let expired = |name: &str| {
            Token::bearer(name)
                .unwrap()
                .with_expires_in(std::time::Duration::ZERO)
                .with_refresh_token("rt")
        };
        // What an earlier run stored: older than anything this run makes.
        block_on(store.save(&expired("stored"))).unwrap();
        // Each token is named after the one it was refreshed from.
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let src = source::from_fn(move |prev: Option<Token>| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            let from = prev.map_or("none".to_owned(), |p| {
                p.access_token().expose_secret().to_owned()
            });
            async move { Token::bearer(format!("t{n}-from-{from}")) }
        });
        let cache = Refreshing::builder(src)
            .store(store.clone())
            .initial_token(expired("given"))
            .build();
        let other = cache.clone();
        let t = thread::spawn(move || value(block_on(other.credential())));
        block_on(cache.set_token(Token::bearer("login").unwrap())).unwrap();
        let concurrent = t.join().unwrap().unwrap();
        assert!(!concurrent.contains("stored"), "{concurrent}");
        let last = value(block_on(cache.credential())).unwrap();
        assert!(
            last == "Bearer login" || last.ends_with("-from-login"),
            "the login or its refresh: {last}"
        );
        let stored = block_on(store.load()).unwrap().unwrap();
        assert_eq!(
            format!("Bearer {}", stored.access_token().expose_secret()),
            last,
            "the store holds what the cache serves"
        );
    });
}

/// A logout racing a refresh: whatever the interleaving, no token is served after
/// the logout (the refresh's token is dropped, not published).
#[test]
fn a_refresh_racing_logout_never_brings_a_token_back() {
    model(|| {
        let (_calls, src) = counting(false);
        let cache = Refreshing::builder(src)
            .initial_token(
                Token::bearer("expired")
                    .unwrap()
                    .with_expires_in(std::time::Duration::ZERO),
            )
            .build();
        let other = cache.clone();
        let t = thread::spawn(move || value(block_on(other.credential())));
        // No revocation endpoint: the tokens are forgotten, and it says so.
        assert!(block_on(cache.logout()).is_err());
        let _ = t.join().unwrap();
        let after = value(block_on(cache.credential()));
        assert!(after.is_err(), "served after the logout: {after:?}");
    });
}
