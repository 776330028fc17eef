//! The OpenID Connect relying party against a certified OpenID provider: panva's
//! `oidc-provider` (tests/common/provider.rs starts it), client `cli`, scope
//! `openid`. A browser login through the provider's own pages returns an ID token
//! validated with the provider's keys and the login's `nonce` (and `auth_time`
//! for a `max_age`), UserInfo answers for the same `sub`, a refresh keeps (or
//! renews, validated) the ID token; the device login's ID token is validated too.
#![cfg(all(feature = "jwks", feature = "reqwest"))]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::timeout;
use tower_bearer::client::{IdTokenClaims, IdTokenValidator, TokenEndpoint, TokenSource};
use tower_bearer::Token;

use common::provider::Provider;

async fn cli(provider: &Provider) -> (TokenEndpoint, IdTokenValidator) {
    let endpoint = TokenEndpoint::discover(&provider.issuer)
        .await
        .unwrap()
        .client_id("cli");
    let validator = endpoint.id_token_validator().unwrap().build().unwrap();
    (endpoint, validator)
}

/// A browser login through the provider's pages (login, consent), the redirect
/// followed back to the loopback listener; returns the outcome and the parameters
/// of the authorization URL the login showed.
async fn browser_login(
    provider: &Arc<Provider>,
    login: tower_bearer::client::source::AuthorizationCode,
) -> ((Token, IdTokenClaims), HashMap<String, String>) {
    let (urls, mut url) = tokio::sync::mpsc::unbounded_channel();
    let login = login.show(move |u| {
        let _ = urls.send(u.to_owned());
    });
    let task = tokio::spawn(async move { login.login_with_id_token().await });
    let url = url.recv().await.unwrap();
    let (status, page) = provider.browse(&url, false).await;
    let outcome = timeout(Duration::from_secs(60), task)
        .await
        .expect("the browser login did not end")
        .unwrap();
    assert_eq!(status, 200, "{page}");
    let query: HashMap<String, String> =
        serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
    (outcome.unwrap(), query)
}

/// The browser login's ID token, validated (signature by the provider's key,
/// `iss`, `aud` = `cli`, the `nonce` the login sent, `auth_time` within the
/// `max_age` asked, `at_hash` when present); UserInfo with the access token names
/// the same `sub`; a refresh through the login as a token source keeps a valid ID
/// token for the same person.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_login_returns_a_validated_id_token_and_userinfo_agrees() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let provider = Arc::new(provider);
    let (endpoint, validator) = cli(&provider).await;
    let login = endpoint
        .authorization_code()
        .unwrap()
        .scope("openid offline_access")
        .max_age(Duration::from_secs(600))
        .id_token_validator(validator.clone());
    let ((token, who), query) = browser_login(&provider, login.clone()).await;
    assert_eq!(who.sub, "alice");
    assert_eq!(who.iss, provider.issuer);
    assert!(who.aud.iter().any(|a| a == "cli"), "{:?}", who.aud);
    assert!(query["nonce"].len() >= 43, "{query:?}");
    assert_eq!(who.nonce.as_deref(), Some(query["nonce"].as_str()));
    assert!(who.auth_time.is_some(), "max_age asked: auth_time present");
    assert!(token.expose_id_token().is_some());

    let info = validator.userinfo(&token, &who).await.unwrap();
    assert_eq!(info["sub"], "alice", "{info:?}");

    // A refresh: the provider's answer brings a new ID token (validated by the
    // source, same sub) or none (the login's is kept).
    let refreshed = login.fetch(Some(&token)).await.unwrap();
    assert_ne!(refreshed.expose_access_token(), token.expose_access_token());
    let id_token = refreshed.expose_id_token().expect("the ID token is kept");
    let again = validator
        .validate(id_token, &tower_bearer::client::ExpectedIdToken::new())
        .await
        .unwrap();
    assert_eq!(again.sub, "alice");
    // UserInfo with the refreshed access token too.
    let info = validator.userinfo(&refreshed, &again).await.unwrap();
    assert_eq!(info["sub"], "alice");
}

/// The device login's ID token (no nonce in this flow) is validated with the
/// provider's keys, and names the person who approved the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_login_returns_a_validated_id_token() {
    let Some(provider) = Provider::start().await else {
        return;
    };
    let (endpoint, validator) = cli(&provider).await;
    let (codes, mut code) = tokio::sync::mpsc::unbounded_channel();
    let login = endpoint
        .device_code()
        .unwrap()
        .scope("openid offline_access")
        .id_token_validator(validator.clone())
        .show(move |auth| {
            let _ = codes.send(auth.user_code.clone());
        });
    let task = tokio::spawn(async move { login.login_with_id_token().await });
    let user_code = code.recv().await.unwrap();
    provider.approve(&user_code).await;
    let (token, who) = timeout(Duration::from_secs(60), task)
        .await
        .expect("the device login did not end")
        .unwrap()
        .unwrap();
    assert_eq!(who.sub, "alice");
    assert!(who.nonce.is_none());
    let info = validator.userinfo(&token, &who).await.unwrap();
    assert_eq!(info["sub"], "alice");
}

/// A DPoP-bound login (RFC 9449: the provider demands its nonce on every proof):
/// the device login's ID token is validated, and UserInfo, asked with the
/// DPoP-bound access token and a proof by the same key, names the same person;
/// the bearer-only `userinfo` refuses that token instead of sending it unproven.
#[cfg(feature = "dpop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_bound_login_asks_userinfo_with_a_proof() {
    use tower_bearer::client::DpopKey;
    let Some(provider) = Provider::start().await else {
        return;
    };
    let key = DpopKey::generate().unwrap();
    let (endpoint, validator) = cli(&provider).await;
    let endpoint = endpoint.dpop(key.clone());
    let (codes, mut code) = tokio::sync::mpsc::unbounded_channel();
    let login = endpoint
        .device_code()
        .unwrap()
        .scope("openid offline_access")
        .id_token_validator(validator.clone())
        .show(move |auth| {
            let _ = codes.send(auth.user_code.clone());
        });
    let task = tokio::spawn(async move { login.login_with_id_token().await });
    let user_code = code.recv().await.unwrap();
    provider.approve(&user_code).await;
    let (token, who) = timeout(Duration::from_secs(60), task)
        .await
        .expect("the device login did not end")
        .unwrap()
        .unwrap();
    assert!(token.is_dpop(), "{token:?}");
    assert_eq!(who.sub, "alice");
    let err = validator.userinfo(&token, &who).await.unwrap_err();
    assert!(
        matches!(err, tower_bearer::Error::Configuration(_)),
        "{err}"
    );
    let info = validator.userinfo_dpop(&token, &who, &key).await.unwrap();
    assert_eq!(info["sub"], "alice");
    // Another key's proof is refused by the provider.
    let other = DpopKey::generate().unwrap();
    let err = validator
        .userinfo_dpop(&token, &who, &other)
        .await
        .unwrap_err();
    assert!(
        matches!(err, tower_bearer::Error::InvalidResponse(..)),
        "{err}"
    );
}
