//! Interop against a certified OpenID provider: panva's `oidc-provider` (npm, the
//! version pinned in `interop/package-lock.json`), started on 127.0.0.1 by
//! `interop/provider.mjs` with the clients and features each test needs.
//!
//! Needs `node` (20.18 or later); the pinned provider is installed into
//! `interop/node_modules` with `npm ci` when it is not there (`.ci/run` does both).
//! Without them the tests skip with a loud message, except under `CI`, where they
//! fail.
//!
//! The provider counts the requests it serves per endpoint and grant type
//! (`/_test/counts`, a route of the script): the tests assert one token request
//! per token lifetime, whatever the number of tasks.
#![cfg(all(feature = "jwks", feature = "introspection", feature = "reqwest"))]

mod common;

use common::provider::{Provider, TTL};

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::{sleep, timeout, Instant};
use tower_bearer::client::{
    AssertionKey, ClientAssertion, FileStore, MemoryStore, ProviderMetadata, Refreshing,
    TokenEndpoint, TokenEndpointAuth, TokenSource, TokenStore, TokenTypeHint,
};
use tower_bearer::server::{
    Claims, Introspection, IntrospectionKeys, JwksValidator, MultiIssuer, Rejection, Validator,
};
use tower_bearer::{Error, Token};

const JWT_API: &str = "https://api.jwt.test";
const OPAQUE_API: &str = "https://api.opaque.test";
const OTHER_API: &str = "https://other.opaque.test";

/// A new directory of this test run, for token files.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-interop-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn discover(provider: &Provider) -> TokenEndpoint {
    TokenEndpoint::discover(&provider.issuer).await.unwrap()
}

/// Many tasks use `authorizer` for `duration`, each token checked by `check`;
/// returns the number of uses.
async fn hammer<S, F, Fut>(authorizer: &Refreshing<S>, duration: Duration, check: F) -> u64
where
    S: tower_bearer::client::TokenSource,
    F: Fn(Token) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let uses = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let authorizer = authorizer.clone();
        let check = check.clone();
        let uses = Arc::clone(&uses);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let token = authorizer.token().await.expect("a token");
                check(token).await;
                uses.fetch_add(1, Ordering::Relaxed);
                sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    uses.load(Ordering::Relaxed)
}

/// The most token requests a cache may make in `duration` with `TTL` tokens: one
/// at start, then one per half lifetime (a token is refreshed at half its life).
fn at_most_per_lifetime(duration: Duration) -> u64 {
    1 + (duration.as_secs_f64() / (TTL as f64 / 2.0)).ceil() as u64
}

/// Client credentials with `client_secret_basic` (chosen by discovery) and
/// `client_secret_post`, JWT access tokens for a resource indicator, checked by
/// `JwksValidator::discover` with issuer and audience; one token request per
/// lifetime for 16 tasks; the discovery document fetched once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_jwt_validated_by_discovery() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let metadata = ProviderMetadata::discover(&provider.issuer).await.unwrap();
    assert_eq!(metadata.issuer, provider.issuer);
    assert_eq!(metadata.client_auth(), TokenEndpointAuth::Basic);
    assert_eq!(
        metadata.revocation_endpoint.as_deref(),
        Some(provider.url("/token/revocation").as_str())
    );
    let discovered = provider.count("discovery").await;
    assert_eq!(discovered, 1);

    let validator = JwksValidator::<Claims>::discover(&provider.issuer)
        .unwrap()
        .rules(|v| v.audience(JWT_API).require_access_token_typ())
        .build()
        .unwrap();
    let wrong_audience = JwksValidator::<Claims>::discover(&provider.issuer)
        .unwrap()
        .rules(|v| v.audience(OPAQUE_API))
        .build()
        .unwrap();

    for (client, secret, auth) in [
        ("svc-basic", "basic-secret-0123456789", None),
        (
            "svc-post",
            "post-secret-0123456789",
            Some(TokenEndpointAuth::Post),
        ),
    ] {
        let mut endpoint = discover(&provider)
            .await
            .client_id(client)
            .client_secret(secret)
            .param("resource", JWT_API);
        if let Some(auth) = auth {
            endpoint = endpoint.auth_method(auth);
        }
        let before = provider.count("token:client_credentials").await;
        let authorizer = Refreshing::new(endpoint.client_credentials().scope("read"));
        let duration = Duration::from_secs(5);
        let v = validator.clone();
        let uses = hammer(&authorizer, duration, move |token| {
            let v = v.clone();
            async move {
                let claims = v
                    .validate(token.access_token().expose_secret())
                    .await
                    .expect("the provider's JWT is valid for its audience");
                assert_eq!(claims.sub.as_deref(), Some(client));
            }
        })
        .await;
        // A refresh the last callers started ends.
        sleep(Duration::from_millis(300)).await;
        let requests = provider.count("token:client_credentials").await - before;
        let refreshes = authorizer.stats().refreshes;
        eprintln!("{client}: {uses} uses, {requests} token requests");
        assert_eq!(requests, refreshes, "{client}");
        assert!(
            (2..=at_most_per_lifetime(duration)).contains(&requests),
            "{client}: {requests} token requests in {duration:?} of {TTL} s tokens"
        );
        assert!(uses > 10 * requests, "{client}: {uses} uses");
        assert_eq!(provider.count("token:client_credentials:error").await, 0);

        let token = authorizer.token().await.unwrap();
        assert!(wrong_audience
            .validate(token.access_token().expose_secret())
            .await
            .is_err());
    }
    // The provider checks the secret, sent either way.
    for auth in [TokenEndpointAuth::Basic, TokenEndpointAuth::Post] {
        let wrong = discover(&provider)
            .await
            .client_id("svc-post")
            .client_secret("not-the-secret")
            .auth_method(auth)
            .param("resource", JWT_API);
        let err = wrong.client_credentials().fetch(None).await.unwrap_err();
        assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");
    }
    // Every TokenEndpoint::discover above reused the first document.
    assert_eq!(
        provider.count("discovery").await,
        discovered + 2,
        "the two validators fetch their own"
    );
}

/// Two providers, two issuers with their own keys, one `MultiIssuer`: the JWT
/// access tokens of each are accepted (routed by `iss`, RFC 9068 `at+jwt`
/// required); a token of one re-labelled with the other's `iss`, under its own kid
/// or the other's, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_issuers_behind_one_multi_issuer_validator() {
    let (Some(a), Some(b)) = tokio::join!(Provider::start(), Provider::start()) else {
        return;
    };
    assert_ne!(a.issuer, b.issuer);
    let tenant = |p: &Provider| {
        JwksValidator::<Claims>::discover(&p.issuer)
            .unwrap()
            .rules(|v| v.audience(JWT_API).require_access_token_typ())
            .build()
            .unwrap()
    };
    let validator = MultiIssuer::builder()
        .issuer(tenant(&a))
        .issuer(tenant(&b))
        .build()
        .unwrap();
    validator.load().await.unwrap();

    let token_of = |issuer: String| async move {
        let token = TokenEndpoint::discover(&issuer)
            .await
            .unwrap()
            .client_id("svc-basic")
            .client_secret("basic-secret-0123456789")
            .param("resource", JWT_API)
            .client_credentials()
            .scope("read")
            .fetch(None)
            .await
            .unwrap();
        token.access_token().expose_secret().to_owned()
    };
    let (from_a, from_b) = tokio::join!(token_of(a.issuer.clone()), token_of(b.issuer.clone()));
    for (token, provider) in [(&from_a, &a), (&from_b, &b)] {
        let claims = validator.validate(token).await.unwrap();
        assert_eq!(claims.iss.as_deref(), Some(provider.issuer.as_str()));
        assert_eq!(claims.sub.as_deref(), Some("svc-basic"));
    }

    // A's token re-labelled with B's iss (A's signature kept): B's keys refuse it,
    // under A's kid and under B's.
    let relabel = |token: &str, iss: &str, kid: &str| {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = token.split('.');
        let (header, payload, signature) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let mut header: serde_json::Value =
            serde_json::from_slice(&b64.decode(header).unwrap()).unwrap();
        header["kid"] = kid.into();
        let mut claims: serde_json::Value =
            serde_json::from_slice(&b64.decode(payload).unwrap()).unwrap();
        claims["iss"] = iss.into();
        format!(
            "{}.{}.{signature}",
            b64.encode(header.to_string()),
            b64.encode(claims.to_string())
        )
    };
    let forged = relabel(&from_a, &b.issuer, &a.kid);
    assert_eq!(
        validator.validate(&forged).await.unwrap_err(),
        Rejection::invalid_token("the token's signing key is unknown")
    );
    let forged = relabel(&from_a, &b.issuer, &b.kid);
    assert_eq!(
        validator.validate(&forged).await.unwrap_err(),
        Rejection::invalid_token("the token signature is invalid")
    );
    // The untouched tokens are still good.
    assert!(validator.validate(&from_a).await.is_ok());
    assert!(validator.validate(&from_b).await.is_ok());
}

/// A device login completed at the provider by a person (the test, through the
/// provider's dev interaction pages). The provider's device answer has no
/// `interval`: the default 5 s applies.
async fn device_login(provider: &Provider, endpoint: &TokenEndpoint) -> Token {
    let (codes, mut code) = tokio::sync::mpsc::unbounded_channel();
    let login = endpoint
        .device_code()
        .unwrap()
        .scope("openid offline_access")
        .show(move |auth| {
            let _ = codes.send(auth.user_code.clone());
        });
    let login = tokio::spawn(async move { login.login().await });
    let user_code = code.recv().await.unwrap();
    provider.approve(&user_code).await;
    let token = timeout(Duration::from_secs(60), login)
        .await
        .expect("the device login did not end")
        .unwrap()
        .unwrap();
    assert!(token.refresh_token().is_some(), "no refresh token");
    token
}

/// The device flow with a refresh token rotated on every refresh: 16 tasks for 6 s
/// cost one refresh per lifetime, each with the newest refresh token (a spent one
/// would be refused, and the provider would then revoke the whole grant). Logout
/// revokes the refresh and access tokens (RFC 7009) and clears the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_rotation_and_logout() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let endpoint = discover(&provider).await.client_id("cli");
    let first = device_login(&provider, &endpoint).await;
    assert_eq!(
        provider
            .count("token:urn:ietf:params:oauth:grant-type:device_code")
            .await,
        1,
        "one poll: the first comes after the default 5 s interval, once approved"
    );
    let first_refresh = first.refresh_token().unwrap().expose_secret().to_owned();

    let store = MemoryStore::new();
    let authorizer = Refreshing::builder(endpoint.refresh_token(first_refresh.clone()))
        .initial_token(first.clone())
        .store(store.clone())
        .revocation(endpoint.revocation().unwrap())
        .build();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    // Refreshed in the last tenth of each 4 s lifetime: two lifetimes and more.
    let duration = Duration::from_secs(8);
    let recorded = Arc::clone(&seen);
    hammer(&authorizer, duration, move |token| {
        let recorded = Arc::clone(&recorded);
        async move {
            let refresh = token.refresh_token().unwrap().expose_secret().to_owned();
            let mut seen = recorded.lock().unwrap();
            if seen.last() != Some(&refresh) {
                seen.push(refresh);
            }
        }
    })
    .await;
    // A refresh the last callers started ends.
    sleep(Duration::from_millis(300)).await;
    let refreshes = provider.count("token:refresh_token").await;
    assert_eq!(refreshes, authorizer.stats().refreshes);
    assert!(
        (2..at_most_per_lifetime(duration)).contains(&refreshes),
        "{refreshes} refreshes in {duration:?} of {TTL} s tokens"
    );
    assert_eq!(provider.count("token:refresh_token:error").await, 0);
    let seen = seen.lock().unwrap().clone();
    eprintln!(
        "device: {refreshes} refreshes, {} refresh tokens seen",
        seen.len()
    );
    let distinct: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "a refresh token came back");
    assert!(
        seen.len() as u64 >= refreshes,
        "every refresh rotated the refresh token"
    );

    // A fresh token, so that no refresh starts before the logout: the one revoked
    // is the one checked.
    authorizer.invalidate();
    let last = authorizer.token().await.unwrap();
    assert_eq!(provider.count("token:refresh_token").await, refreshes + 1);
    assert_eq!(
        store
            .load()
            .await
            .unwrap()
            .unwrap()
            .refresh_token()
            .unwrap()
            .expose_secret(),
        last.refresh_token().unwrap().expose_secret(),
        "the newest refresh token is in the store"
    );
    let access = last.access_token().expose_secret().to_owned();
    assert_eq!(provider.introspect(&access).await["active"], true);

    authorizer.logout().await.unwrap();
    let fetched = authorizer.stats().refreshes;
    assert_eq!(
        provider.count("revocation").await,
        2,
        "refresh token, then access token"
    );
    assert!(
        store.load().await.unwrap().is_none(),
        "the store is cleared"
    );
    assert!(matches!(authorizer.token().await, Err(Error::NoToken(_))));
    assert_eq!(provider.introspect(&access).await["active"], false);
    // The provider refuses the last refresh token: it was revoked.
    let err = endpoint
        .refresh_token(last.refresh_token().unwrap().expose_secret())
        .fetch(None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
    assert!(matches!(authorizer.token().await, Err(Error::NoToken(_))));
    assert_eq!(
        authorizer.stats().refreshes,
        fetched,
        "nothing fetched after logout"
    );
    assert_eq!(
        provider.count("token:refresh_token").await,
        refreshes + 2,
        "the test's own refresh above, refused"
    );
}

/// `generate_tokens --issuer … --logout` revokes the tokens of the token file
/// and clears it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_logout_revokes_the_saved_tokens() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let endpoint = discover(&provider).await.client_id("cli");
    let token = device_login(&provider, &endpoint).await;
    let dir = scratch_dir();
    let file = dir.join("alice.json");
    let store = FileStore::at(&file, "alice", endpoint.url().to_string());
    store
        .save(&token.clone().with_lineage(tower_bearer::Lineage::next()))
        .await
        .unwrap();
    assert!(file.exists());

    let out = Command::new(common::bins::example_binary("generate_tokens"))
        .args([
            "-u",
            "alice",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "cli",
        ])
        .arg("--token-file")
        .arg(&file)
        .arg("--logout")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Logged out"), "{stderr}");
    // A logout leaves its mark (a tombstone) for other processes sharing the file,
    // and no token.
    assert!(
        store.load().await.unwrap().is_none(),
        "the token file holds no token after the logout"
    );
    assert_eq!(provider.count("revocation").await, 2);
    let err = endpoint
        .refresh_token(token.refresh_token().unwrap().expose_secret())
        .fetch(None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Opaque tokens checked by `Introspection` at the discovered endpoint, with the
/// audience rule: a token for another resource is refused, a revoked one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tokens_through_introspection() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let metadata = ProviderMetadata::discover(&provider.issuer).await.unwrap();
    let introspection_url = metadata.introspection_endpoint.clone().unwrap();
    let api = || {
        Introspection::<Claims>::new(&introspection_url)
            .unwrap()
            .client("api", "api-secret-0123456789")
            .issuer(&provider.issuer)
            .audience(OPAQUE_API)
    };
    let endpoint = metadata
        .token_endpoint()
        .unwrap()
        .client_id("svc-basic")
        .client_secret("basic-secret-0123456789");
    let ours = endpoint
        .clone()
        .param("resource", OPAQUE_API)
        .client_credentials()
        .scope("read")
        .fetch(None)
        .await
        .unwrap();
    let theirs = endpoint
        .clone()
        .param("resource", OTHER_API)
        .client_credentials()
        .scope("read")
        .fetch(None)
        .await
        .unwrap();
    let ours = ours.access_token().expose_secret().to_owned();
    let theirs = theirs.access_token().expose_secret().to_owned();
    assert_eq!(ours.split('.').count(), 1, "opaque, not a JWT");

    let claims = api().validate(&ours).await.expect("our audience");
    assert_eq!(claims.iss.as_deref(), Some(provider.issuer.as_str()));
    assert!(api().validate(&theirs).await.is_err(), "another audience");
    assert_eq!(provider.count("introspection").await, 2);

    endpoint
        .revocation()
        .unwrap()
        .revoke(&ours, Some(TokenTypeHint::AccessToken))
        .await
        .unwrap();
    assert!(api().validate(&ours).await.is_err(), "revoked");
    assert_eq!(provider.count("revocation").await, 1);
    assert_eq!(provider.count("token:client_credentials").await, 2);
}

/// RFC 9701 against oidc-provider's `jwtIntrospection`: the API asks for signed
/// introspection answers and accepts only those, checked with the keys the provider
/// publishes (found through discovery): its token accepted (which only a signed,
/// checked answer can be), a token for another resource refused by the answer inside,
/// a revoked one refused. The provider names the API's client id in `aud`: a
/// validator that expects another refuses every answer (`503`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_introspection_answers() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let metadata = ProviderMetadata::discover(&provider.issuer).await.unwrap();
    let introspection_url = metadata.introspection_endpoint.clone().unwrap();
    let keys = || {
        IntrospectionKeys::jwks(JwksValidator::<Claims>::discover(&provider.issuer).unwrap())
            .unwrap()
    };
    let api = |keys: IntrospectionKeys| {
        Introspection::<Claims>::new(&introspection_url)
            .unwrap()
            .client("api", "api-secret-0123456789")
            .jwt_response(keys)
            .issuer(&provider.issuer)
            .audience(OPAQUE_API)
    };
    let endpoint = metadata
        .token_endpoint()
        .unwrap()
        .client_id("svc-basic")
        .client_secret("basic-secret-0123456789");
    let token_for = |resource: &'static str| {
        let endpoint = endpoint.clone();
        async move {
            let token = endpoint
                .param("resource", resource)
                .client_credentials()
                .scope("read")
                .fetch(None)
                .await
                .unwrap();
            token.access_token().expose_secret().to_owned()
        }
    };
    let ours = token_for(OPAQUE_API).await;
    let theirs = token_for(OTHER_API).await;

    // The provider really signs for this Accept.
    let res = provider
        .http
        .post(&introspection_url)
        .basic_auth("api", Some("api-secret-0123456789"))
        .header("accept", "application/token-introspection+jwt")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={ours}"))
        .send()
        .await
        .unwrap();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("application/token-introspection+jwt"),
        "{content_type}"
    );

    let claims = api(keys()).validate(&ours).await.expect("a signed answer");
    assert_eq!(claims.iss.as_deref(), Some(provider.issuer.as_str()));
    assert!(matches!(
        api(keys()).validate(&theirs).await,
        Err(Rejection::InvalidToken(_))
    ));
    let err = api(keys().audience("another-api"))
        .validate(&ours)
        .await
        .unwrap_err();
    assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");

    endpoint
        .revocation()
        .unwrap()
        .revoke(&ours, Some(TokenTypeHint::AccessToken))
        .await
        .unwrap();
    assert!(matches!(
        api(keys()).validate(&ours).await,
        Err(Rejection::InvalidToken(_))
    ));
}

/// The provider restarted with a new signing key: `JwksValidator::discover` takes
/// the new key at its first token and refuses tokens of the key that is gone.
/// Issue 29 item 12: 12 s later a junk token is looked up, and the provider at once
/// rotates again; the newest key is still taken at its first token (which waits
/// for the next look-up, 2 s after the junk's), not refused for a cool-down.
/// The clock is moved on by those 12 s (a current-thread runtime, paused for the
/// jump only), so the test lasts about the provider's three starts.
#[tokio::test]
async fn key_rotation_across_a_restart() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let validator = JwksValidator::<Claims>::discover(&provider.issuer)
        .unwrap()
        .rules(|v| v.audience(JWT_API).require_access_token_typ())
        .build()
        .unwrap();
    let jwt = |endpoint: TokenEndpoint| async move {
        endpoint
            .client_id("svc-basic")
            .client_secret("basic-secret-0123456789")
            .param("resource", JWT_API)
            .client_credentials()
            .fetch(None)
            .await
            .unwrap()
            .access_token()
            .expose_secret()
            .to_owned()
    };
    let old = jwt(discover(&provider).await).await;
    validator.validate(&old).await.expect("the first key");
    assert_eq!(validator.key_ids(), vec![provider.kid.clone()]);
    let old_kid = provider.kid.clone();

    let port = provider.stop().await;
    let provider = Provider::start_on(port).await;
    assert_ne!(provider.kid, old_kid, "a new key");
    let new = jwt(discover(&provider).await).await;
    validator
        .validate(&new)
        .await
        .expect("the new key is fetched");
    assert_eq!(validator.key_ids(), vec![provider.kid.clone()]);
    assert!(
        validator.validate(&old).await.is_err(),
        "the old key is gone"
    );
    assert_eq!(
        provider.count("jwks").await,
        1,
        "one fetch of the new key set"
    );

    // 12 s later: a junk kid is looked up (and refused), then the provider rotates.
    common::jwks::skip(12).await;
    let junk = common::jwks::unsigned(&common::jwks::rs256("junk"));
    assert!(
        matches!(
            validator.validate(&junk).await,
            Err(Rejection::InvalidToken(_))
        ),
        "the junk kid is looked up and refused"
    );
    assert_eq!(provider.count("jwks").await, 2, "the junk's look-up");
    let second_kid = provider.kid.clone();
    let port = provider.stop().await;
    let provider = Provider::start_on(port).await;
    assert_ne!(provider.kid, second_kid, "a newer key");
    let newest = jwt(discover(&provider).await).await;
    match validator.validate(&newest).await {
        Ok(_) => {}
        Err(rejection) => panic!("the newest key is refused: {rejection:?}"),
    }
    assert_eq!(validator.key_ids(), vec![provider.kid.clone()]);
    assert_eq!(
        provider.count("jwks").await,
        1,
        "one fetch of the newest key set"
    );
}

/// The provider answering errors, then down: callers get typed, retryable errors,
/// the cache backs off (a few requests, not one per caller), and recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_errors_and_outage() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let endpoint = discover(&provider)
        .await
        .client_id("svc-basic")
        .client_secret("basic-secret-0123456789")
        .param("resource", JWT_API);
    let authorizer = Refreshing::builder(endpoint.client_credentials())
        .backoff(Duration::from_millis(200), Duration::from_millis(400))
        .build();

    provider.fail_tokens(503).await;
    let mut failures = 0;
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        let mut calls = Vec::new();
        for _ in 0..8 {
            let a = authorizer.clone();
            calls.push(tokio::spawn(async move { a.token().await }));
        }
        for c in calls {
            let err = c.await.unwrap().unwrap_err();
            assert!(
                matches!(&err, Error::TokenEndpoint(e) if e.status == 503),
                "{err}"
            );
            assert!(err.is_retryable());
            failures += 1;
        }
        sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "errors: {} token requests for {failures} callers",
        provider.count("token:failed").await
    );
    // Attempts are a backoff apart: 100-200 ms after the first failure, then
    // 200-400 ms; at most about 11 in 2 s, whatever the number of callers.
    let failed = provider.count("token:failed").await;
    assert!(
        (2..=14).contains(&failed),
        "{failed} token requests for {failures} callers in 2 s of 200-400 ms backoff"
    );
    assert!(
        failures > 10 * failed,
        "{failures} callers, {failed} requests"
    );

    provider.fail_tokens(0).await;
    sleep(Duration::from_millis(500)).await;
    authorizer.token().await.expect("answers again");
    assert_eq!(provider.count("token:client_credentials").await, 1);

    let port = provider.stop().await;
    authorizer.invalidate();
    sleep(Duration::from_millis(500)).await;
    let err = authorizer.token().await.unwrap_err();
    assert!(matches!(err, Error::Transport(..)), "{err}");
    assert!(err.is_retryable());

    let provider = Provider::start_on(port).await;
    sleep(Duration::from_millis(500)).await;
    authorizer.token().await.expect("the provider is back");
    assert_eq!(provider.count("token:client_credentials").await, 1);
}

/// The key of the `svc-private-key-jwt` client registered in `interop/provider.mjs`.
fn assertion_key(alg: tower_bearer::client::Algorithm, file: &str, kid: &str) -> AssertionKey {
    AssertionKey::from_pem(alg, &common::server::key(file))
        .unwrap()
        .key_id(kid)
}

/// Client authentication with signed assertions (RFC 7523 §2.2) and resource
/// indicators (RFC 8707, the grant's `resource`) at the certified
/// provider: `private_key_jwt` with an ES256 and an EdDSA key, and
/// `client_secret_jwt` (HS256), each through a `Refreshing` cache hammered by 16
/// tasks (one token request per lifetime, each with a new assertion the provider
/// verifies, `jti` replay detection included), the token validated by
/// `JwksValidator`; revocation authenticated the same way; a key the provider does
/// not know refused with `invalid_client`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_assertions_private_key_jwt_and_client_secret_jwt() {
    use tower_bearer::client::Algorithm;
    let Some(provider) = Provider::start().await else {
        return;
    };
    let validator = JwksValidator::<Claims>::discover(&provider.issuer)
        .unwrap()
        .rules(|v| v.audience(JWT_API))
        .build()
        .unwrap();
    let cases: [(&str, ClientAssertion); 3] = [
        (
            "svc-private-key-jwt",
            ClientAssertion::private_key(assertion_key(Algorithm::ES256, "ec256.key", "svc-ec")),
        ),
        (
            "svc-private-key-jwt",
            ClientAssertion::private_key(assertion_key(Algorithm::EdDSA, "ed25519.key", "svc-ed"))
                .audience_issuer(),
        ),
        ("svc-client-secret-jwt", ClientAssertion::client_secret()),
    ];
    for (client, assertion) in cases {
        let method = assertion.method();
        let endpoint = discover(&provider)
            .await
            .client_id(client)
            .client_secret("jwt-secret-0123456789abcdef0123456789")
            .auth_method(assertion);
        let before = provider.count("token:client_credentials").await;
        let authorizer = Refreshing::new(
            endpoint
                .client_credentials()
                .scope("read")
                .resource(JWT_API),
        );
        let duration = Duration::from_secs(5);
        let v = validator.clone();
        let uses = hammer(&authorizer, duration, move |token| {
            let v = v.clone();
            async move {
                let claims = v
                    .validate(token.access_token().expose_secret())
                    .await
                    .expect("the provider's JWT is valid for its audience");
                assert_eq!(claims.sub.as_deref(), Some(client));
            }
        })
        .await;
        sleep(Duration::from_millis(300)).await;
        let requests = provider.count("token:client_credentials").await - before;
        eprintln!("{client} ({method}): {uses} uses, {requests} token requests");
        assert_eq!(requests, authorizer.stats().refreshes, "{client}");
        assert!(
            (2..=at_most_per_lifetime(duration)).contains(&requests),
            "{client}: {requests} token requests in {duration:?} of {TTL} s tokens"
        );
        assert!(uses > 10 * requests, "{client}: {uses} uses");
        assert_eq!(provider.count("token:client_credentials:error").await, 0);
    }

    // Revocation of an opaque token, the client authenticated by an assertion.
    let endpoint = discover(&provider)
        .await
        .client_id("svc-private-key-jwt")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::ES256,
            "ec256.key",
            "svc-ec",
        )));
    let token = endpoint
        .client_credentials()
        .resource(OPAQUE_API)
        .fetch(None)
        .await
        .unwrap();
    let access = token.access_token().expose_secret().to_owned();
    assert_eq!(provider.introspect(&access).await["active"], true);
    endpoint
        .revocation()
        .unwrap()
        .revoke(&access, Some(TokenTypeHint::AccessToken))
        .await
        .unwrap();
    assert_eq!(provider.count("revocation").await, 1);
    assert_eq!(provider.introspect(&access).await["active"], false);

    // A key the registration does not hold (RSA, under a known kid) is refused; the
    // registered one under that kid is not.
    let right = discover(&provider)
        .await
        .client_id("svc-private-key-jwt")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::ES256,
            "ec256.key",
            "svc-ec",
        )))
        .param("resource", JWT_API);
    right.client_credentials().fetch(None).await.unwrap();
    // A resource the provider does not serve: refused as RFC 8707 says.
    let err = right
        .client_credentials()
        .resource("https://unknown.test")
        .fetch(None)
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_target"), "{err}");
    let wrong = discover(&provider)
        .await
        .client_id("svc-private-key-jwt")
        .auth_method(ClientAssertion::private_key(assertion_key(
            Algorithm::PS256,
            "rsa2.key",
            "svc-ec",
        )))
        .param("resource", JWT_API);
    let err = wrong.client_credentials().fetch(None).await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");
    let wrong_secret = discover(&provider)
        .await
        .client_id("svc-client-secret-jwt")
        .client_secret("not-the-secret-0123456789abcdef0123456789")
        .auth_method(ClientAssertion::client_secret())
        .param("resource", JWT_API);
    let err = wrong_secret
        .client_credentials()
        .fetch(None)
        .await
        .unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err}");
}

/// Logs in with the authorization code grant and PKCE on a loopback redirect: the
/// person's browser (the provider's `/_test/browse`) is given the URL the login
/// shows. Returns the token and the page the browser showed.
async fn browser_login(
    provider: &Arc<Provider>,
    login: tower_bearer::client::source::AuthorizationCode,
    decline: bool,
) -> (Result<Token, Error>, (u16, String)) {
    let (urls, mut url) = tokio::sync::mpsc::unbounded_channel();
    let login = login.show(move |u| {
        let _ = urls.send(u.to_owned());
    });
    let login = tokio::spawn(async move { login.login().await });
    let url = url.recv().await.unwrap();
    let page = provider.browse(&url, decline).await;
    let token = timeout(Duration::from_secs(60), login)
        .await
        .expect("the browser login did not end")
        .unwrap();
    (token, page)
}

/// The browser login (RFC 7636 + RFC 8252) against the certified provider: one
/// authorization code exchanged (with the verifier, which the provider checks
/// against the `S256` challenge), a token the provider introspects as alice's, a
/// refresh token that `Refreshing` then uses; the page tells the person they can
/// close it. Declining at the provider is `AccessDenied`, and the page says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_with_pkce_on_a_loopback_redirect() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let provider = Arc::new(provider);
    let endpoint = discover(&provider).await.client_id("cli");
    let login = endpoint
        .authorization_code()
        .unwrap()
        .scope("openid offline_access read");
    let (token, (status, page)) = browser_login(&provider, login.clone(), false).await;
    let token = token.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("You can close this window"), "{page}");
    assert_eq!(provider.count("token:authorization_code").await, 1);
    assert_eq!(provider.count("token:authorization_code:error").await, 0);
    let access = token.access_token().expose_secret().to_owned();
    let info = provider.introspect(&access).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "alice", "{info}");
    assert_eq!(info["client_id"], "cli", "{info}");
    assert!(token.refresh_token().is_some(), "no refresh token");

    // As a token source: the login's token refreshes with its refresh token, and
    // no one is asked again.
    let authorizer = Refreshing::builder(login.clone())
        .initial_token(token)
        .build();
    authorizer.invalidate();
    let refreshed = authorizer.token().await.unwrap();
    assert_ne!(refreshed.access_token().expose_secret(), access);
    assert_eq!(provider.count("token:refresh_token").await, 1);
    assert_eq!(provider.count("token:authorization_code").await, 1);

    // The person cancels at the provider: access_denied comes back in the redirect.
    let (declined, (status, page)) = browser_login(&provider, login, true).await;
    let err = declined.unwrap_err();
    assert!(matches!(err, Error::AccessDenied(_)), "{err}");
    assert_eq!(err.oauth_code(), Some("access_denied"));
    assert_eq!(status, 200);
    assert!(page.contains("declined"), "{page}");
    assert_eq!(
        provider.count("token:authorization_code").await,
        1,
        "nothing exchanged for a declined login"
    );
}

/// `generate_tokens --issuer … --browser --no-open --whoami` prints the address to
/// open, and once the person has logged in there, prints the exports of a token the
/// provider knows as alice's, saves it to the token file, and says who logged in
/// from the validated ID token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_browser_login() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let dir = scratch_dir();
    let file = dir.join("alice.json");
    let mut child = Command::new(common::bins::example_binary("generate_tokens"))
        .args([
            "-u",
            "alice",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "cli",
        ])
        .args(["--browser", "--no-open", "--scope", "openid offline_access"])
        .arg("--whoami")
        .arg("--token-file")
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = timeout(Duration::from_secs(30), async {
        loop {
            let line = stderr.next_line().await.unwrap().expect("no address shown");
            if let Some(url) = line.trim().strip_prefix(&format!("{}/", provider.issuer)) {
                return format!("{}/{url}", provider.issuer);
            }
        }
    })
    .await
    .expect("generate_tokens showed no address");
    let (status, page) = provider.browse(&url, false).await;
    assert_eq!(status, 200, "{page}");
    let mut rest = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    let out = timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success(), "{rest}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let access = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export APP_ACCESS_TOKEN="))
        .expect("no access token export")
        .trim_matches('\'')
        .to_owned();
    assert!(stdout.contains("export APP_REFRESH_TOKEN="), "{stdout}");
    assert_eq!(provider.introspect(&access).await["sub"], "alice");
    assert_eq!(provider.count("token:authorization_code").await, 1);
    assert!(rest.contains("Saved the tokens"), "{rest}");
    // --whoami: the ID token, validated with the provider's keys, names alice.
    assert!(
        rest.contains(&format!("Logged in as alice at {}", provider.issuer)),
        "{rest}"
    );
    assert!(file.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The JWT-bearer grant (RFC 7523 §2.1, a service account's RS256 assertion) and
/// token exchange (RFC 8693, the subject token read from another `Refreshing`
/// cache), served by the provider through its grant extension point with node's
/// verifier (`interop/provider.mjs`). Each behind a `Refreshing` cache hammered by
/// 16 tasks: one token request per lifetime, a token the provider's introspection
/// describes as the subject's. A key the provider does not know, and a subject
/// token it did not issue, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_and_token_exchange_grants() {
    use tower_bearer::client::source::{token_type, ExchangeToken, JwtBearer};
    use tower_bearer::client::Algorithm;
    let Some(provider) = Provider::start().await else {
        return;
    };
    let duration = Duration::from_secs(5);
    let grants = [
        "token:urn:ietf:params:oauth:grant-type:jwt-bearer",
        "token:urn:ietf:params:oauth:grant-type:token-exchange",
    ];

    // JWT-bearer: the service account acts for alice.
    let robot = |file: &str| {
        JwtBearer::new(
            TokenEndpoint::insecure_http(&provider.url("/token"))
                .unwrap()
                .client_id("svc-jwt-bearer"),
            "robot@tower-bearer.test",
            assertion_key(Algorithm::RS256, file, "robot"),
        )
        .subject("alice")
        .scope("read")
    };
    let authorizer = Refreshing::new(robot("rsa.key"));
    let uses = hammer(&authorizer, duration, |_| async {}).await;
    sleep(Duration::from_millis(300)).await;
    let requests = provider.count(grants[0]).await;
    eprintln!("jwt-bearer: {uses} uses, {requests} token requests");
    assert_eq!(requests, authorizer.stats().refreshes);
    assert!(
        (2..=at_most_per_lifetime(duration)).contains(&requests),
        "jwt-bearer: {requests} token requests in {duration:?} of {TTL} s tokens"
    );
    assert_eq!(provider.count(&format!("{}:error", grants[0])).await, 0);
    let token = authorizer.token().await.unwrap();
    let info = provider
        .introspect(token.access_token().expose_secret())
        .await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "alice", "{info}");
    assert_eq!(info["client_id"], "svc-jwt-bearer", "{info}");
    assert_eq!(info["scope"], "read", "{info}");
    let err = robot("rsa2.key").fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
    assert_eq!(provider.count(&format!("{}:error", grants[0])).await, 1);

    // Token exchange: svc-exchange exchanges svc-post's current token.
    let subject = Refreshing::new(
        discover(&provider)
            .await
            .client_id("svc-post")
            .client_secret("post-secret-0123456789")
            .auth_method(TokenEndpointAuth::Post)
            .client_credentials(),
    );
    let exchanger = discover(&provider)
        .await
        .client_id("svc-exchange")
        .client_secret("exchange-secret-0123456789");
    let authorizer = Refreshing::new(
        exchanger
            .token_exchange(ExchangeToken::from_authorizer(
                subject.clone(),
                token_type::ACCESS_TOKEN,
            ))
            .requested_token_type(token_type::ACCESS_TOKEN)
            .scope("read"),
    );
    let uses = hammer(&authorizer, duration, |_| async {}).await;
    sleep(Duration::from_millis(300)).await;
    let requests = provider.count(grants[1]).await;
    // The provider counts lifetimes from a whole second (its `iat`), so a subject
    // token can lapse there up to a second before its `expires_in` says: the
    // exchange is refused, the subject's cache is told (and refreshes), and the
    // exchange is made once more with the fresh one.
    let refused = provider.count(&format!("{}:error", grants[1])).await;
    eprintln!(
        "token exchange: {uses} uses, {requests} token requests ({refused} refused), {} of the subject",
        subject.stats().refreshes
    );
    assert_eq!(requests - refused, authorizer.stats().refreshes);
    assert!(
        refused < subject.stats().refreshes,
        "a refusal without a lapsed subject"
    );
    assert!(
        (2..=at_most_per_lifetime(duration)).contains(&(requests - refused)),
        "token exchange: {requests} token requests in {duration:?} of {TTL} s tokens"
    );
    let token = authorizer.token().await.unwrap();
    let info = provider
        .introspect(token.access_token().expose_secret())
        .await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["sub"], "svc-post", "{info}");
    assert_eq!(info["act"]["sub"], "svc-exchange", "{info}");
    assert_eq!(info["client_id"], "svc-exchange", "{info}");

    let forged = exchanger.token_exchange(ExchangeToken::fixed(
        "not-a-token-of-theirs",
        token_type::ACCESS_TOKEN,
    ));
    let err = forged.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
}

/// An API on 127.0.0.1 that accepts only tokens the provider issued for `audience`
/// (introspected, then cached), and a counter of the requests it accepted.
async fn api_for(provider: &Provider, audience: &str) -> (String, Arc<AtomicU64>) {
    use tower_bearer::server::{RequireBearerLayer, VerifiedCache};
    let validator = Introspection::<Claims>::new(&provider.url("/token/introspection"))
        .unwrap()
        .client("api", "api-secret-0123456789")
        .issuer(&provider.issuer)
        .audience(audience);
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
    let app = axum::Router::new()
        .route(
            "/v1/whoami",
            axum::routing::get(move || {
                counter.fetch_add(1, Ordering::Relaxed);
                async { "ok" }
            }),
        )
        .layer(RequireBearerLayer::new(VerifiedCache::new(validator)));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, accepted)
}

/// One client calling two APIs that each accept only tokens for their own resource
/// (RFC 8707): `PerResource` keeps one `Refreshing` cache per API, picked by the URL
/// of each request, in the reqwest middleware and in the tower layer. Every request
/// is accepted, each cache asks for one token per lifetime, and a request to a host
/// under no API carries no token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_per_resource() {
    use tower_bearer::client::{AuthorizeLayer, AuthorizeMiddleware, PerResource};
    let Some(provider) = Provider::start().await else {
        return;
    };
    let (api_a, accepted_a) = api_for(&provider, OPAQUE_API).await;
    let (api_b, accepted_b) = api_for(&provider, OTHER_API).await;
    let endpoint = discover(&provider)
        .await
        .client_id("svc-basic")
        .client_secret("basic-secret-0123456789");
    let cache_a = Refreshing::new(endpoint.client_credentials().resource(OPAQUE_API));
    let cache_b = Refreshing::new(endpoint.client_credentials().resource(OTHER_API));
    let authorizer = PerResource::new()
        .at(&format!("{api_a}/v1"), cache_a.clone())
        .unwrap()
        .at(&api_b, cache_b.clone())
        .unwrap();

    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(authorizer.clone()))
        .build();
    let duration = Duration::from_secs(5);
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let client = client.clone();
        let url = format!("{}/v1/whoami", if i % 2 == 0 { &api_a } else { &api_b });
        tasks.push(tokio::spawn(async move {
            let mut uses = 0u64;
            while Instant::now() < end {
                let res = client.get(&url).send().await.unwrap();
                assert_eq!(res.status(), 200, "{url}");
                uses += 1;
            }
            uses
        }));
    }
    let mut uses = 0;
    for t in tasks {
        uses += t.await.unwrap();
    }
    sleep(Duration::from_millis(300)).await;
    let (a, b) = (cache_a.stats().refreshes, cache_b.stats().refreshes);
    let requests = provider.count("token:client_credentials").await;
    eprintln!("per resource: {uses} uses, {requests} token requests ({a} for A, {b} for B)");
    assert_eq!(requests, a + b);
    for n in [a, b] {
        assert!(
            (2..=at_most_per_lifetime(duration)).contains(&n),
            "{n} token requests in {duration:?} of {TTL} s tokens"
        );
    }
    assert_eq!(
        accepted_a.load(Ordering::Relaxed) + accepted_b.load(Ordering::Relaxed),
        uses
    );

    // The tower layer over a hyper client picks the same way.
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let service = tower::ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()))
        .service(hyper);
    for api in [&api_a, &api_b] {
        let req = http::Request::get(format!("{api}/v1/whoami"))
            .body(http_body_util::Empty::new())
            .unwrap();
        let res = tower::ServiceExt::oneshot(service.clone(), req)
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{api}");
    }
    // Outside API A's /v1 prefix, and on a host of no API: no token is sent.
    let seen = Arc::new(Mutex::new(Vec::<Option<String>>::new()));
    let record = Arc::clone(&seen);
    let echo = common::server::serve(axum::Router::new().route(
        "/",
        axum::routing::get(move |headers: http::HeaderMap| {
            let header = headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap_or("?").to_owned());
            record.lock().unwrap().push(header);
            async { "seen" }
        }),
    ))
    .await;
    let echo = format!("http://{echo}");
    for url in [format!("{api_a}/v2/whoami"), format!("{echo}/")] {
        let res = client.get(&url).send().await.unwrap();
        if url.starts_with(&echo) {
            assert_eq!(res.status(), 200);
        } else {
            assert_eq!(res.status(), 401, "{url}: no token, refused");
        }
    }
    assert_eq!(seen.lock().unwrap().as_slice(), [None::<String>]);
}

/// DPoP end to end (RFC 9449): a client with the `Dpop` authorizer gets DPoP-bound
/// JWT access tokens from the provider (its token requests carry proofs, the
/// provider's nonce round trip included) and calls an axum API on 127.0.0.1 behind
/// `RequireBearerLayer::dpop` over `JwksValidator::discover`, which asks for its own
/// nonces too; 16 tasks for a few seconds, every request accepted, one token
/// request per lifetime; the same token sent as a plain Bearer is refused; and the
/// `dpop` example does the same against the provider.
#[cfg(feature = "dpop")]
mod dpop {
    use super::*;
    use tower_bearer::client::{AuthorizeLayer, Dpop, DpopKey};
    use tower_bearer::server::{DpopVerifier, RequireBearerLayer, Verified};

    /// The API: the provider's JWTs for `JWT_API`, DPoP proofs for its own origin
    /// with nonces; counts the requests it accepts and those it gets.
    async fn dpop_api(provider: &Provider) -> (String, Arc<AtomicU64>, Arc<AtomicU64>) {
        let validator = JwksValidator::<Claims>::discover(&provider.issuer)
            .unwrap()
            .rules(|v| v.audience(JWT_API).require_access_token_typ())
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let verifier = DpopVerifier::new()
            .external_origin(&url)
            .unwrap()
            .nonces(
                b"interop-api-nonce-secret-0123456789",
                Duration::from_secs(60),
            )
            .unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let (counter, all) = (Arc::clone(&accepted), Arc::clone(&received));
        let app = axum::Router::new()
            .route(
                "/v1/whoami",
                axum::routing::get(
                    move |axum::Extension(Verified(claims)): axum::Extension<Verified<Claims>>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        async move { claims.sub.unwrap_or_default() }
                    },
                ),
            )
            .layer(RequireBearerLayer::new(validator).dpop(verifier))
            .layer(axum::middleware::from_fn(
                move |req: axum::extract::Request, next: axum::middleware::Next| {
                    all.fetch_add(1, Ordering::Relaxed);
                    next.run(req)
                },
            ));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, accepted, received)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dpop_bound_tokens_from_the_provider_to_a_dpop_api() {
        let Some(provider) = Provider::start().await else {
            return;
        };
        let (api, accepted, received) = dpop_api(&provider).await;
        let key = DpopKey::generate().unwrap();
        let endpoint = discover(&provider)
            .await
            .client_id("svc-basic")
            .client_secret("basic-secret-0123456789")
            .param("resource", JWT_API)
            .dpop(key.clone());
        let cache = Refreshing::new(endpoint.client_credentials().scope("read"));
        let authorizer = Dpop::new(key.clone(), cache.clone());
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let client = tower::ServiceBuilder::new()
            .layer(AuthorizeLayer::new(authorizer).retry_unauthorized())
            .service(hyper);

        let duration = Duration::from_secs(6);
        let end = Instant::now() + duration;
        let url = format!("{api}/v1/whoami");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let client = client.clone();
            let url = url.clone();
            tasks.push(tokio::spawn(async move {
                let mut uses = 0u64;
                while Instant::now() < end {
                    let req = http::Request::get(&url)
                        .body(http_body_util::Full::default())
                        .unwrap();
                    let res = tower::ServiceExt::oneshot(client.clone(), req)
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200, "{:?}", res.headers());
                    uses += 1;
                    sleep(Duration::from_millis(20)).await;
                }
                uses
            }));
        }
        let mut uses = 0;
        for t in tasks {
            uses += t.await.unwrap();
        }
        sleep(Duration::from_millis(300)).await;
        let counts = provider.counts().await;
        let get = |k: &str| counts.get(k).copied().unwrap_or(0);
        let requests = get("token:client_credentials");
        let nonce_answers = get("token:client_credentials:use_dpop_nonce");
        let refreshes = cache.stats().refreshes;
        eprintln!(
            "dpop: {uses} uses, {requests} token requests ({} with a proof, {nonce_answers} \
             use_dpop_nonce answers, {refreshes} tokens), API: {} requests for {} accepted",
            get("token:client_credentials:dpop"),
            received.load(Ordering::Relaxed),
            accepted.load(Ordering::Relaxed),
        );
        assert_eq!(
            accepted.load(Ordering::Relaxed),
            uses,
            "every request accepted"
        );
        assert_eq!(
            get("token:client_credentials:dpop"),
            requests,
            "every one with a proof"
        );
        assert!(nonce_answers >= 1, "the provider's nonce round trip");
        assert_eq!(
            get("token:client_credentials:error"),
            nonce_answers,
            "no error but the nonce answers"
        );
        assert_eq!(requests - nonce_answers, refreshes);
        assert!(
            (2..=at_most_per_lifetime(duration)).contains(&refreshes),
            "{refreshes} tokens in {duration:?} of {TTL} s tokens"
        );
        // The API asked for its nonce at most once per task (the 16 first requests
        // go out together, before any answer told the nonce), and for a new window;
        // not once per request.
        let api_nonce_answers = received.load(Ordering::Relaxed) - uses;
        assert!(
            (1..=16 + 2).contains(&api_nonce_answers),
            "{api_nonce_answers} use_dpop_nonce answers of the API"
        );

        // The token is DPoP-bound: as a plain Bearer, it is refused.
        let token = cache.token().await.unwrap();
        assert!(token.is_dpop(), "{token:?}");
        let res = provider
            .http
            .get(&url)
            .bearer_auth(token.expose_access_token())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 401);
        let claims: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                token.expose_access_token().split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["cnf"]["jkt"], key.thumbprint());
    }

    /// A DPoP-bound refresh token outlives the process when its key does: a public
    /// client logs in (device flow) with a key from `DpopKey::load_or_generate`; the
    /// provider binds the refresh token to that key (RFC 9449 §5). After a "restart"
    /// (the key read again from its file) the refresh token works; with any other
    /// key the provider refuses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_token_bound_to_a_key_kept_in_a_file_survives_a_restart() {
        let Some(provider) = Provider::start().await else {
            return;
        };
        let dir = scratch_dir();
        let key_file = dir.join("dpop.pem");
        let first_run = DpopKey::load_or_generate(&key_file).unwrap();
        let endpoint = discover(&provider).await.client_id("cli");
        let token = device_login(&provider, &endpoint.clone().dpop(first_run.clone())).await;
        assert!(token.is_dpop(), "a DPoP-bound token");
        let refresh = token.refresh_token().unwrap().expose_secret().to_owned();
        drop(first_run);

        let after_restart = DpopKey::load_or_generate(&key_file).unwrap();
        let refreshed = endpoint
            .clone()
            .dpop(after_restart)
            .refresh_token(refresh.as_str())
            .fetch(None)
            .await
            .unwrap();
        assert!(refreshed.is_dpop());
        let refresh = refreshed
            .refresh_token()
            .map(|r| r.expose_secret().to_owned())
            .unwrap_or(refresh);

        let another_key = DpopKey::generate().unwrap();
        let err = endpoint
            .clone()
            .dpop(another_key)
            .refresh_token(refresh.as_str())
            .fetch(None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
        // The refusal was the key's, not the token's: the kept key still refreshes.
        endpoint
            .dpop(DpopKey::load_or_generate(&key_file).unwrap())
            .refresh_token(refresh.as_str())
            .fetch(None)
            .await
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// `cargo run --example dpop -- --issuer <the provider>`: the example, as a
    /// person runs it, against the provider.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_dpop_example_runs_against_the_provider() {
        let Some(provider) = Provider::start().await else {
            return;
        };
        let issuer = provider.issuer.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(common::bins::example_binary("dpop"))
                .args(["--issuer", &issuer, "--client-id", "svc-basic"])
                .args(["--client-secret", "basic-secret-0123456789"])
                .args(["--resource", JWT_API, "--seconds", "3"])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("dpop example: {stdout}");
        assert!(stdout.contains("every request accepted"), "{stdout}");
        assert!(stdout.contains("as Bearer: 401"), "{stdout}");
        assert!(
            provider
                .count("token:client_credentials:use_dpop_nonce")
                .await
                >= 1
        );
    }
}
