//! The credential chain and the environment source against a real token endpoint
//! on 127.0.0.1: each source wins when present, refreshes use the refresh token,
//! deprecated variable names warn.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tower_bearer::client::source::{Chain, EnvSource, EnvVar, PasswordPrompt};
use tower_bearer::client::{
    Authorizer, FileStore, MemoryStore, Refreshing, TokenEndpoint, TokenSource, TokenStore,
};
use tower_bearer::{Error, Token};

fn endpoint(s: &common::Servers) -> TokenEndpoint {
    TokenEndpoint::new(&s.token_url()).unwrap().client_id("cli")
}

/// An environment from a map.
fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

/// A password prompt that answers `password` and counts how often it was asked.
fn prompt(s: &common::Servers, password: &'static str) -> (PasswordPrompt, Arc<AtomicUsize>) {
    let asked = Arc::new(AtomicUsize::new(0));
    let count = asked.clone();
    let p = PasswordPrompt::new(endpoint(s), "alice").ask(move |text| {
        assert_eq!(text, "Password for alice: ");
        count.fetch_add(1, Ordering::SeqCst);
        Ok(Some(SecretString::from(password)))
    });
    (p, asked)
}

fn stored(access: &str) -> MemoryStore {
    let store = MemoryStore::new();
    let token = Token::bearer(access)
        .unwrap()
        .with_expires_in(Duration::from_secs(600));
    futures_util::FutureExt::now_or_never(store.save(&token))
        .unwrap()
        .unwrap();
    store
}

/// The full chain: arguments → environment → store → password prompt.
fn chain(
    s: &common::Servers,
    args: Option<&str>,
    env: &[(&str, &str)],
    store: MemoryStore,
) -> (Chain, Arc<AtomicUsize>) {
    let (login, asked) = prompt(s, "wonderland");
    let chain = Chain::new()
        .refresh_with(endpoint(s))
        .tokens(args, None)
        .unwrap()
        .env(
            EnvSource::new("APP")
                .endpoint(endpoint(s))
                .lookup(env_of(env)),
        )
        .store(store)
        .login("password prompt", login);
    (chain, asked)
}

fn access(t: &Token) -> &str {
    t.access_token().expose_secret()
}

#[tokio::test]
async fn arguments_win_over_everything() {
    let s = common::start().await;
    let (c, asked) = chain(
        &s,
        Some("from-args"),
        &[("APP_ACCESS_TOKEN", "from-env")],
        stored("from-file"),
    );
    assert_eq!(access(&c.fetch(None).await.unwrap()), "from-args");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(s.idp.tokens(), 0);
}

#[tokio::test]
async fn the_environment_wins_without_arguments() {
    let s = common::start().await;
    let (c, asked) = chain(
        &s,
        None,
        &[
            ("APP_ACCESS_TOKEN", "from-env"),
            ("APP_REFRESH_TOKEN", "env-rt"),
        ],
        stored("from-file"),
    );
    let t = c.fetch(None).await.unwrap();
    assert_eq!(access(&t), "from-env");
    assert_eq!(t.refresh_token().unwrap().expose_secret(), "env-rt");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(s.idp.tokens(), 0);
}

#[tokio::test]
async fn the_token_file_wins_without_arguments_or_environment() {
    let s = common::start().await;
    let (c, asked) = chain(&s, None, &[], stored("from-file"));
    assert_eq!(access(&c.fetch(None).await.unwrap()), "from-file");
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(s.idp.tokens(), 0);
}

#[tokio::test]
async fn the_login_comes_last() {
    let s = common::start().await;
    let (c, asked) = chain(&s, None, &[], MemoryStore::new());
    let t = c.fetch(None).await.unwrap();
    assert!(access(&t).starts_with("at-"));
    assert!(t.refresh_token().is_some());
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert_eq!(*s.idp.grants.lock().unwrap(), ["password"]);
}

#[tokio::test]
async fn a_refresh_token_or_a_password_in_the_environment_is_exchanged() {
    let s = common::start().await;
    s.idp.add_refresh_token("env-rt");
    let (c, asked) = chain(
        &s,
        None,
        &[("APP_REFRESH_TOKEN", "env-rt")],
        MemoryStore::new(),
    );
    let t = c.fetch(None).await.unwrap();
    assert!(access(&t).starts_with("at-"));
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["env-rt"]);

    let (c, _) = chain(
        &s,
        None,
        &[("APP_USERNAME", "alice"), ("APP_PASSWORD", "wonderland")],
        MemoryStore::new(),
    );
    c.fetch(None).await.unwrap();
    assert_eq!(*s.idp.grants.lock().unwrap(), ["refresh_token", "password"]);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn later_refreshes_use_the_refresh_token_not_the_sources() {
    let s = common::start().await;
    s.idp.add_refresh_token("env-rt");
    let (c, asked) = chain(
        &s,
        None,
        &[
            ("APP_ACCESS_TOKEN", "from-env"),
            ("APP_REFRESH_TOKEN", "env-rt"),
        ],
        MemoryStore::new(),
    );
    let first = c.fetch(None).await.unwrap();
    assert_eq!(access(&first), "from-env");
    // The server refused it, or it expired: the chain refreshes it.
    let second = c.fetch(Some(&first)).await.unwrap();
    assert!(access(&second).starts_with("at-"), "{}", access(&second));
    assert_eq!(*s.idp.grants.lock().unwrap(), ["refresh_token"]);
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["env-rt"]);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_refresh_token_passed_in_code_is_exchanged() {
    let s = common::start().await;
    s.idp.add_refresh_token("arg-rt");
    let c = Chain::new()
        .refresh_with(endpoint(&s))
        .tokens(None, Some("arg-rt"))
        .unwrap();
    let t = c.fetch(None).await.unwrap();
    assert!(access(&t).starts_with("at-"));
    assert_eq!(t.refresh_token().unwrap().expose_secret(), "arg-rt");
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["arg-rt"]);
    // Nothing passed: the chain has no "arguments" source at all.
    let c = Chain::new().tokens(None, None).unwrap();
    assert_eq!(c.names().count(), 0);
}

#[tokio::test]
async fn a_dead_refresh_token_falls_back_to_logging_in() {
    let s = common::start().await;
    let (c, asked) = chain(&s, None, &[], MemoryStore::new());
    let dead = Token::bearer("old").unwrap().with_refresh_token("revoked");
    let t = c.fetch(Some(&dead)).await.unwrap();
    assert!(access(&t).starts_with("at-"));
    assert_eq!(*s.idp.grants.lock().unwrap(), ["refresh_token", "password"]);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_token_is_not_served_again() {
    let s = common::start().await;
    let (c, asked) = chain(
        &s,
        None,
        &[("APP_ACCESS_TOKEN", "stale")],
        MemoryStore::new(),
    );
    let stale = c.fetch(None).await.unwrap();
    assert_eq!(access(&stale), "stale");
    // The API said 401 to "stale", and it has no refresh token: the login runs.
    let t = c.fetch(Some(&stale)).await.unwrap();
    assert!(access(&t).starts_with("at-"));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn errors_stop_the_chain_and_nothing_says_so_clearly() {
    let s = common::start().await;
    // A wrong password is an error, not "nothing here": no other source is asked.
    let (wrong, _) = prompt(&s, "not-the-password");
    let after = Arc::new(AtomicUsize::new(0));
    let count = after.clone();
    let c = Chain::new().login("password prompt", wrong).source(
        "never",
        tower_bearer::client::source::from_fn(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
            async { Token::bearer("x") }
        }),
    );
    let err = c.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err:?}");
    assert_eq!(after.load(Ordering::SeqCst), 0);

    // No terminal: the prompt has nothing, and the chain says what it tried.
    let nobody = PasswordPrompt::new(endpoint(&s), "alice").ask(|_| Ok(None));
    let c = Chain::new()
        .env(EnvSource::new("APP").lookup(env_of(&[])))
        .store(MemoryStore::new())
        .login("password prompt", nobody);
    let err = c.fetch(None).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoToken(_)), "{err:?}");
    assert!(
        msg.contains("environment, token file, password prompt"),
        "{msg}"
    );
}

#[tokio::test]
async fn an_expired_token_from_a_source_is_refreshed() {
    let s = common::start().await;
    s.idp.add_refresh_token("file-rt");
    let store = MemoryStore::new();
    let expired = Token::bearer("expired")
        .unwrap()
        .with_expires_at(tokio::time::Instant::now())
        .with_refresh_token("file-rt");
    store.save(&expired).await.unwrap();
    let (c, asked) = chain(&s, None, &[], store);
    let t = c.fetch(None).await.unwrap();
    assert!(access(&t).starts_with("at-"));
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["file-rt"]);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
}

/// A person logs in once; the next run of the program finds the token file.
#[tokio::test]
async fn log_in_once_then_reuse_the_token_file() {
    let s = common::start().await;
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-chain-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let path = dir.join("alice.json");
    let run = |asked_password: &'static str| {
        let store = FileStore::at(&path, "alice", s.token_url());
        let (login, asked) = prompt(&s, asked_password);
        let chain = Chain::new()
            .refresh_with(endpoint(&s))
            .env(EnvSource::new("APP").lookup(env_of(&[])))
            .store(store.clone())
            .login("password prompt", login);
        (Refreshing::builder(chain).store(store).build(), asked)
    };
    let (first, asked) = run("wonderland");
    let cred = first.credential().await.unwrap().unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(path.exists());

    // The second run would fail to log in (wrong password): it must not need to.
    let (second, asked) = run("wrong");
    let again = second.credential().await.unwrap().unwrap();
    assert_eq!(again.value, cred.value);
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(s.idp.tokens(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

// --- environment variables and deprecated aliases ---

/// Captures what tracing prints while `f` runs.
fn capture<T>(level: tracing::Level, f: impl FnOnce() -> T) -> (T, String) {
    let (out, capturing) = common::LogCapture::start(level);
    let value = f();
    drop(capturing);
    (value, out.text())
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn an_alias_alone_is_used_with_a_warning_naming_the_new_variable() {
    let env = EnvSource::new("CHIME_FRB")
        .deprecated_prefix("FRB_MASTER")
        .lookup(env_of(&[("FRB_MASTER_ACCESS_TOKEN", "old-name-token")]));
    let (t, logs) = capture(tracing::Level::WARN, || block(env.fetch(None)));
    assert_eq!(access(&t.unwrap()), "old-name-token");
    assert!(logs.contains("WARN"), "{logs}");
    assert!(logs.contains("FRB_MASTER_ACCESS_TOKEN"), "{logs}");
    assert!(logs.contains("CHIME_FRB_ACCESS_TOKEN"), "{logs}");
    assert!(
        !logs.contains("old-name-token"),
        "the token is never logged: {logs}"
    );
}

#[test]
fn the_canonical_name_wins_without_a_warning() {
    let var = EnvVar::new("APP_ACCESS_TOKEN").alias("OLD_APP_ACCESS_TOKEN");
    let lookup = env_of(&[("APP_ACCESS_TOKEN", "new"), ("OLD_APP_ACCESS_TOKEN", "old")]);
    let (v, logs) = capture(tracing::Level::TRACE, || var.read(&lookup));
    assert_eq!(v.as_deref(), Some("new"));
    assert!(!logs.contains("deprecated"), "{logs}");
    // Empty counts as unset, and the second alias is still read.
    let var = var.alias("OLDER_APP_ACCESS_TOKEN");
    let lookup = env_of(&[
        ("APP_ACCESS_TOKEN", ""),
        ("OLDER_APP_ACCESS_TOKEN", "older"),
    ]);
    let (v, logs) = capture(tracing::Level::WARN, || var.read(&lookup));
    assert_eq!(v.as_deref(), Some("older"));
    assert!(logs.contains("OLDER_APP_ACCESS_TOKEN"), "{logs}");
}

#[test]
fn the_serving_source_is_named_in_a_debug_event_without_the_token() {
    let c = Chain::new()
        .env(EnvSource::new("APP").lookup(env_of(&[])))
        .store(stored("secret-from-file"));
    let (t, logs) = capture(tracing::Level::DEBUG, || block(c.fetch(None)));
    assert_eq!(access(&t.unwrap()), "secret-from-file");
    assert!(logs.contains("token file"), "{logs}");
    assert!(logs.contains("token source served"), "{logs}");
    assert!(!logs.contains("secret-from-file"), "{logs}");
}

#[test]
fn a_refresh_token_in_the_environment_needs_an_endpoint() {
    let env = EnvSource::new("APP").lookup(env_of(&[("APP_REFRESH_TOKEN", "rt")]));
    let err = block(env.fetch(None)).unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
    assert!(!err.to_string().contains("rt\""), "{err}");
}

// --- API keys: arguments, then the environment ---

#[tokio::test]
async fn an_api_key_comes_from_arguments_then_the_environment() {
    use tower_bearer::client::ApiKey;
    let var = EnvVar::new("APP_API_KEY").alias("OLD_APP_API_KEY");
    let header = |k: &ApiKey| {
        let c = futures_util::FutureExt::now_or_never(k.credential())
            .unwrap()
            .unwrap()
            .unwrap();
        (c.name.to_string(), c.value.to_str().unwrap().to_owned())
    };
    let env = env_of(&[("APP_API_KEY", "from-env")]);
    let k = ApiKey::from_arg_or_lookup("x-api-key", Some("from-args"), &var, &env).unwrap();
    assert_eq!(header(&k), ("x-api-key".into(), "from-args".into()));
    let k = ApiKey::from_arg_or_lookup("x-api-key", None, &var, &env).unwrap();
    assert_eq!(header(&k), ("x-api-key".into(), "from-env".into()));

    let old = env_of(&[("OLD_APP_API_KEY", "from-old-name")]);
    let (k, logs) = capture(tracing::Level::WARN, || {
        ApiKey::from_arg_or_lookup("x-api-key", None, &var, &old)
    });
    assert_eq!(header(&k.unwrap()).1, "from-old-name");
    assert!(
        logs.contains("OLD_APP_API_KEY") && logs.contains("set APP_API_KEY"),
        "{logs}"
    );
    assert!(!logs.contains("from-old-name"), "{logs}");

    let err = ApiKey::from_arg_or_lookup("x-api-key", None, &var, &env_of(&[])).unwrap_err();
    assert!(matches!(err, Error::NoToken(_)), "{err:?}");
    assert!(err.to_string().contains("APP_API_KEY"), "{err}");
    let bad = env_of(&[("APP_API_KEY", "line\nbreak-secret")]);
    let err = ApiKey::from_arg_or_lookup("x-api-key", None, &var, &bad).unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
    assert!(!err.to_string().contains("secret"), "{err}");
}

/// A rotated refresh token lands in the token file: the next run uses the new one.
#[tokio::test]
async fn a_rotated_refresh_token_is_saved_to_the_token_file() {
    let s = common::start().await;
    s.idp.rotate.store(true, Ordering::SeqCst);
    s.idp.add_refresh_token("rt-first");
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-rotate-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let store = FileStore::at(dir.join("alice.json"), "alice", s.token_url());
    let expired = Token::bearer("old")
        .unwrap()
        .with_expires_at(tokio::time::Instant::now())
        .with_refresh_token("rt-first");
    store.save(&expired).await.unwrap();

    let (login, asked) = prompt(&s, "wrong");
    let chain = Chain::new()
        .refresh_with(endpoint(&s))
        .store(store.clone())
        .login("password prompt", login);
    let authorizer = Refreshing::builder(chain).store(store.clone()).build();
    let cred = authorizer.credential().await.unwrap().unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 0);
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["rt-first"]);

    let saved = store.load().await.unwrap().unwrap();
    let new_rt = saved.refresh_token().unwrap().expose_secret().to_owned();
    assert_ne!(new_rt, "rt-first", "the rotated refresh token was saved");
    assert!(s.idp.refresh.lock().unwrap().contains_key(&new_rt));
    assert_eq!(
        format!("Bearer {}", access(&saved)),
        cred.value.to_str().unwrap()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 29, defect 11: README's chain (`refresh_with` + `.store(store)`) after
/// `invalid_grant`. The store holds the same expired token whose refresh token was
/// just refused; the chain must not present that refresh token a second time in
/// the same refresh, and goes on to the login.
#[tokio::test]
async fn a_refused_refresh_token_is_presented_once_even_when_the_store_serves_it_again() {
    let s = common::start().await;
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-chain-twice-{}-{}",
        std::process::id(),
        s.addr.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = FileStore::at(dir.join("alice.json"), "alice", "https://idp.test");
    // An expired token whose refresh token the provider no longer knows.
    let expired = Token::bearer("old-at")
        .unwrap()
        .with_refresh_token("rt-dead")
        .with_expires_at(tokio::time::Instant::now());
    store.save(&expired).await.unwrap();
    let (login, asked) = prompt(&s, "wonderland");
    let chain = Chain::new()
        .refresh_with(endpoint(&s))
        .store(store.clone())
        .login("password prompt", login);
    let cache = Refreshing::builder(chain).store(store.clone()).build();
    let token = cache.token().await.unwrap();
    assert!(access(&token).starts_with("at-"), "{}", access(&token));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let presented = s.idp.refresh_seen.lock().unwrap().clone();
    assert_eq!(
        presented.iter().filter(|rt| *rt == "rt-dead").count(),
        1,
        "the refused refresh token was presented again: {presented:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
