//! FAPI 2.0 against the certified provider: panva's `oidc-provider` with its FAPI 2.0
//! profile on (`interop/provider.mjs --fapi`) for the client `fapi-client`
//! (`private_key_jwt` with tests/keys/ec256.key, DPoP-bound tokens), pushed
//! authorization requests required in its metadata, request objects accepted.
//!
//! A person logs in through the provider's own pages (`/_test/browse`); the login
//! pushes its request (found in the metadata, not asked for), signed as a request
//! object, with a DPoP proof; the DPoP-bound token is used on an API behind the
//! crate's own server layer with DPoP, refreshed, and revoked.
#![cfg(all(feature = "dpop", feature = "jwks", feature = "reqwest"))]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::provider::Provider;
use secrecy::ExposeSecret;
use tokio::time::timeout;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::{
    Algorithm, AssertionKey, AuthorizeLayer, ClientAssertion, Dpop, DpopKey, Refreshing,
    TokenEndpoint, TokenSource, TokenTypeHint,
};
use tower_bearer::server::{Claims, DpopVerifier, JwksValidator, RequireBearerLayer, Verified};
use tower_bearer::{Error, Token};

const JWT_API: &str = "https://api.jwt.test";

fn key_pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The `fapi-client` registration: its ES256 key (kid `fapi-ec`), assertions for
/// the issuer, tokens bound to `dpop`.
async fn fapi_endpoint(provider: &Provider, dpop: &DpopKey) -> TokenEndpoint {
    let key = AssertionKey::from_pem(Algorithm::ES256, &key_pem("ec256.key"))
        .unwrap()
        .key_id("fapi-ec");
    TokenEndpoint::discover(&provider.issuer)
        .await
        .unwrap()
        .client_id("fapi-client")
        .auth_method(ClientAssertion::private_key(key).audience_issuer())
        .dpop(dpop.clone())
}

/// Runs `login`, giving the person's browser the URL it shows; the token and the
/// URL.
async fn browser_login(
    provider: &Arc<Provider>,
    login: AuthorizationCode,
) -> (Result<Token, Error>, String, (u16, String)) {
    let (urls, mut url) = tokio::sync::mpsc::unbounded_channel();
    let login = login.show(move |u| {
        let _ = urls.send(u.to_owned());
    });
    let login = tokio::spawn(async move { login.login().await });
    let url = url.recv().await.expect("the login showed no URL");
    let page = provider.browse(&url, false).await;
    let token = timeout(Duration::from_secs(60), login)
        .await
        .expect("the browser login did not end")
        .unwrap();
    (token, url, page)
}

/// The API: the provider's JWTs for `JWT_API`, DPoP proofs for its own origin.
async fn dpop_api(provider: &Provider) -> (String, Arc<AtomicU64>) {
    let validator = JwksValidator::<Claims>::discover(&provider.issuer)
        .unwrap()
        .rules(|v| v.audience(JWT_API).require_access_token_typ())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let verifier = DpopVerifier::new().external_origin(&url).unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&accepted);
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
        .layer(RequireBearerLayer::new(validator).dpop(verifier));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, accepted)
}

/// The whole FAPI 2.0 login against the provider with its profile on:
/// - `fapi2()` accepts the registration (private_key_jwt ES256, DPoP);
/// - the request is pushed (the browser's URL has only `client_id` and
///   `request_uri`; the provider saw one push, with a DPoP proof and a signed request
///   object, and one authorization request by reference, none in plain);
/// - the provider's pages log alice in; the code is exchanged (its `iss` checked);
/// - the token is DPoP-bound to the login's key (`cnf.jkt`), and the API behind
///   `RequireBearerLayer::dpop` answers alice; as a plain Bearer it is refused;
/// - refreshed through `Refreshing` with the same key; revoked, after which the
///   refresh token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fapi2_login_pushed_signed_dpop_bound_refreshed_revoked() {
    let Some(provider) = Provider::start_with(&["--fapi"]).await else {
        return;
    };
    let provider = Arc::new(provider);
    let dpop = DpopKey::generate().unwrap();
    let endpoint = fapi_endpoint(&provider, &dpop).await;
    let metadata = endpoint.metadata().unwrap().clone();
    assert!(
        metadata.require_pushed_authorization_requests,
        "{metadata:?}"
    );
    assert!(metadata.pushed_authorization_request_endpoint.is_some());
    // The OpenID relying party too: the nonce travels inside the pushed, signed
    // request, and the ID token must come back with it.
    let id_tokens = endpoint.id_token_validator().unwrap().build().unwrap();
    let login = endpoint
        .authorization_code()
        .unwrap()
        .scope("openid offline_access read")
        .resource(JWT_API)
        .signed_request_object()
        .id_token_validator(id_tokens.clone())
        .fapi2()
        .unwrap();

    let (token, url, (status, page)) = browser_login(&provider, login.clone()).await;
    let token = token.unwrap();
    assert_eq!(status, 200, "{page}");
    let who = id_tokens
        .validate(
            token.expose_id_token().expect("no ID token"),
            &tower_bearer::client::ExpectedIdToken::new(),
        )
        .await
        .unwrap();
    assert_eq!(who.sub, "alice");
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
    let names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["client_id", "request_uri"], "{url}");
    let counts = provider.counts().await;
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert!(get("par") >= 1, "{counts:?}");
    assert_eq!(get("par:dpop"), get("par"), "every push with a proof");
    assert_eq!(get("par:request_object"), get("par"), "every push signed");
    assert_eq!(get("authorization:request_uri"), 1, "{counts:?}");
    assert_eq!(get("authorization:plain"), 0, "{counts:?}");
    assert_eq!(
        get("token:authorization_code:error"),
        get("token:authorization_code:use_dpop_nonce")
    );

    assert!(token.is_dpop(), "{token:?}");
    let access = token.access_token().expose_secret().to_owned();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            access.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["cnf"]["jkt"], dpop.thumbprint(), "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    assert_eq!(claims["client_id"], "fapi-client", "{claims}");

    // The API, with the DPoP authorizer over a cache that refreshes with the login.
    let (api, accepted) = dpop_api(&provider).await;
    let cache = Refreshing::builder(login.clone())
        .initial_token(token.clone())
        .build();
    let client = tower::ServiceBuilder::new()
        .layer(AuthorizeLayer::new(Dpop::new(dpop.clone(), cache.clone())).retry_unauthorized())
        .service(common::http_client::<http_body_util::Full<bytes::Bytes>>());
    let call = || async {
        let req = http::Request::get(format!("{api}/v1/whoami"))
            .body(http_body_util::Full::default())
            .unwrap();
        let res = tower::ServiceExt::oneshot(client.clone(), req)
            .await
            .unwrap();
        let status = res.status();
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    assert_eq!(call().await, (http::StatusCode::OK, "alice".to_owned()));
    let plain = reqwest::Client::new()
        .get(format!("{api}/v1/whoami"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 401, "a DPoP-bound token as a plain Bearer");

    // Refreshed with the same key: a new DPoP-bound token that the API takes.
    cache.invalidate();
    let refreshed = cache.token().await.unwrap();
    assert!(refreshed.is_dpop());
    assert_ne!(refreshed.access_token().expose_secret(), access);
    assert!(provider.count("token:refresh_token").await >= 1);
    assert_eq!(call().await, (http::StatusCode::OK, "alice".to_owned()));
    assert_eq!(accepted.load(Ordering::Relaxed), 2);

    // Revoked: the refresh token is refused afterwards.
    let refresh = refreshed
        .refresh_token()
        .unwrap()
        .expose_secret()
        .to_owned();
    endpoint
        .revocation()
        .unwrap()
        .revoke(&refresh, Some(TokenTypeHint::RefreshToken))
        .await
        .unwrap();
    let err = endpoint
        .refresh_token(refresh.as_str())
        .fetch(None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
}

/// The metadata's `require_pushed_authorization_requests` alone makes a login push:
/// a plain `cli` login (no FAPI preset, no request object, not asked to push) on the
/// same provider sends the browser with a `request_uri` only, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_alone_makes_a_plain_login_push() {
    let Some(provider) = Provider::start_with(&["--fapi"]).await else {
        return;
    };
    let provider = Arc::new(provider);
    let login = TokenEndpoint::discover(&provider.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .authorization_code()
        .unwrap()
        .scope("openid offline_access read");
    let (token, url, (status, page)) = browser_login(&provider, login).await;
    token.unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(url.contains("request_uri="), "{url}");
    assert!(!url.contains("code_challenge"), "{url}");
    assert_eq!(provider.count("par").await, 1);
    assert_eq!(provider.count("par:request_object").await, 0);
    assert_eq!(provider.count("authorization:request_uri").await, 1);
}
