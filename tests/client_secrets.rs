//! Secret hygiene on the client side: all tracing output of full refresh cycles, at
//! TRACE level, and every `Debug` and error message, hold no token, refresh token,
//! client secret or password.

mod common;

use std::sync::atomic::Ordering;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Authorizer, MemoryStore, Refreshing, TokenEndpoint};

const CLIENT_SECRET: &str = "cs-Zq81x";
const PASSWORD: &str = "wonderland";

// One thread: the subscriber is set for this thread, and the refresh tasks run here too.
#[tokio::test]
async fn no_secret_reaches_logs_debug_or_errors() {
    let (captured, _guard) = common::LogCapture::trace();

    let s = common::start().await;
    s.idp.rotate.store(true, Ordering::SeqCst);
    s.idp.set_lifetime(Some(2));
    let endpoint = TokenEndpoint::new(&s.token_url())
        .unwrap()
        .client_id("id")
        .client_secret(CLIENT_SECRET);
    let store = MemoryStore::new();
    let cache = Refreshing::builder(endpoint.password("alice", PASSWORD))
        .refresh_before(Duration::from_millis(500))
        .jitter(Duration::ZERO)
        .store(store.clone())
        .build();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(cache.clone()).retry_unauthorized())
        .service(common::http_client::<Full<Bytes>>());
    let mut debug_prints = Vec::new();
    let mut secrets: Vec<String> = Vec::new();

    // Login, use, a 401 with retry, rotation through refreshes, and a failure.
    for round in 0..4 {
        let req = http::Request::get(s.api_url())
            .body(Full::default())
            .unwrap();
        assert_eq!(client.clone().oneshot(req).await.unwrap().status(), 200);
        if round == 1 {
            s.idp.revoke_all_access();
        }
        let token = cache.token().await.unwrap();
        secrets.push(secrecy::ExposeSecret::expose_secret(token.access_token()).to_owned());
        let refresh = token
            .refresh_token()
            .expect("the password grant issues refresh tokens");
        secrets.push(secrecy::ExposeSecret::expose_secret(refresh).to_owned());
        debug_prints.push(format!("{cache:?} {store:?} {endpoint:?} {token:?}"));
        cache.invalidate();
    }
    s.idp.refresh.lock().unwrap().clear();
    s.idp.set_mode(common::Mode::Fail(
        400,
        r#"{"error":"invalid_grant","error_description":"nope"}"#,
        None,
    ));
    cache.invalidate();
    let err = cache.credential().await.unwrap_err();
    debug_prints.push(format!("{err} {err:?}"));

    secrets.extend(s.idp.refresh_seen.lock().unwrap().iter().cloned());
    secrets.sort();
    secrets.dedup();
    assert!(
        secrets.len() >= 8,
        "tokens were issued and refreshed: {secrets:?}"
    );
    secrets.push(CLIENT_SECRET.to_owned());
    secrets.push(PASSWORD.to_owned());
    // The Basic header's base64 of "id:<secret>".
    secrets.push(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("id:{CLIENT_SECRET}"),
    ));

    let logs = captured.text();
    assert!(
        logs.contains("token refreshed"),
        "refreshes were traced:\n{logs}"
    );
    for secret in &secrets {
        // Token names like "at-1" are prefixes of "at-10": match whole words.
        let leaked = |text: &str| {
            text.match_indices(secret.as_str()).any(|(i, _)| {
                let after = text[i + secret.len()..].chars().next();
                !after.is_some_and(|c| c.is_ascii_alphanumeric())
            })
        };
        assert!(!leaked(&logs), "{secret} in the logs:\n{logs}");
        for printed in &debug_prints {
            assert!(!leaked(printed), "{secret} in {printed}");
        }
    }
}

/// Issue 29, defect 10: a token file whose `token` member is a bare string (or a
/// refresh token of the wrong shape). serde's message quotes the value it could not
/// use; neither the load error (Display, Debug) nor what `Refreshing` logs may hold
/// it.
#[tokio::test]
async fn a_malformed_token_file_never_quotes_its_token() {
    const MARKER: &str = "SECRET-MARKER-9f3e";
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-secret-file-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let bodies = [
        format!(
            r#"{{"version":1,"username":"alice","issuer":"https://idp.test","token":"{MARKER}"}}"#
        ),
        format!(
            r#"{{"version":1,"username":"alice","issuer":"https://idp.test","token":{{"access_token":"at","token_type":"Bearer","expires_at":"{MARKER}"}}}}"#
        ),
        format!(
            r#"{{"version":1,"username":"alice","issuer":"https://idp.test","token":{{"access_token":"at","token_type":"Bearer","refresh_token":"{MARKER}","lineage":"{MARKER}"}}}}"#
        ),
        format!(r#"{{"version":"{MARKER}"}}"#),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let path = dir.join(format!("t{i}.json"));
        std::fs::write(&path, body).unwrap();
        let store = tower_bearer::client::FileStore::at(&path, "alice", "https://idp.test");
        let err = tower_bearer::client::TokenStore::load(&store)
            .await
            .unwrap_err();
        assert!(matches!(err, tower_bearer::Error::TokenFile(_)), "{err}");
        for shown in [err.to_string(), format!("{err:?}")] {
            assert!(!shown.contains(MARKER), "{shown}");
        }

        std::fs::write(&path, body).unwrap();
        let (captured, _guard) = common::LogCapture::trace();
        let cache = Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
            Err::<tower_bearer::Token, _>(tower_bearer::Error::NoToken("none".into()))
        }))
        .store(store)
        .build();
        let err = cache.token().await.unwrap_err();
        for shown in [err.to_string(), format!("{err:?}"), captured.text()] {
            assert!(!shown.contains(MARKER), "{shown}");
        }
        drop(_guard);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A provider that echoes what it was sent in its error answers (its
/// `error_description` names the refresh token, the client secret, the password):
/// the error and the log never show them, and the error names the endpoint's URL.
#[tokio::test]
async fn a_provider_echoing_secrets_in_its_errors_is_not_repeated() {
    use tower_bearer::client::TokenSource;
    const RT: &str = "rt-MARKER-echoed";
    const SECRET: &str = "cs-MARKER-echoed";
    let app = axum::Router::new().route(
        "/token",
        axum::routing::post(|body: String| async move {
            let echoed = format!("bad request: {body} (client secret {SECRET})");
            let uri = format!("https://idp.test/help?{body}");
            (
                http::StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({
                    "error": "invalid_grant",
                    "error_description": echoed,
                    "error_uri": uri,
                })),
            )
        }),
    );
    let addr = common::server::serve(app).await;
    let endpoint = TokenEndpoint::new(&format!("http://{addr}/token"))
        .unwrap()
        .client_id("id")
        .client_secret(SECRET);
    let (captured, guard) = common::LogCapture::trace();
    let cache = Refreshing::builder(endpoint.refresh_token(RT)).build();
    let err = cache.token().await.unwrap_err();
    let direct = endpoint
        .password("alice", "pw-MARKER-echoed")
        .fetch(None)
        .await
        .unwrap_err();
    drop(guard);
    for shown in [
        err.to_string(),
        format!("{err:?}"),
        direct.to_string(),
        format!("{direct:?}"),
        captured.text(),
    ] {
        assert!(!shown.contains("MARKER"), "{shown}");
    }
    assert!(matches!(err, tower_bearer::Error::InvalidGrant(_)), "{err}");
    assert!(
        err.to_string().contains(&format!("http://{addr}/token")),
        "{err}"
    );
}

/// A provider that echoes secrets where the first fix did not look: in the `error`
/// code itself, across the 256-character cut of a long description (a part of the
/// secret would stay), and as the `Authorization: Basic` header it was sent (the
/// client secret in base64). None of it is shown.
#[tokio::test]
async fn secrets_echoed_in_the_code_cut_or_basic_header_are_not_repeated() {
    use base64::Engine as _;
    use tower_bearer::client::TokenSource;
    const RT: &str = "rt-MARKER-0123456789abcdefghijklmnopqrstuvwxyz";
    const SECRET: &str = "cs-MARKER-0123456789";
    let app = axum::Router::new()
        .route(
            "/code",
            axum::routing::post(|| async move {
                (
                    http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({ "error": RT })),
                )
            }),
        )
        .route(
            "/cut",
            axum::routing::post(|| async move {
                // The secret starts 20 characters before the 256-character cut.
                let description = format!("{}{RT} is refused", "x".repeat(236));
                (
                    http::StatusCode::BAD_REQUEST,
                    axum::Json(serde_json::json!({
                        "error": "invalid_grant",
                        "error_description": description,
                    })),
                )
            }),
        )
        .route(
            "/basic",
            axum::routing::post(|headers: http::HeaderMap| async move {
                let sent = headers
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none")
                    .to_owned();
                (
                    http::StatusCode::UNAUTHORIZED,
                    axum::Json(serde_json::json!({
                        "error": "invalid_client",
                        "error_description": format!("bad credentials: {sent}"),
                    })),
                )
            }),
        );
    let addr = common::server::serve(app).await;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("id:{SECRET}"));
    let (captured, guard) = common::LogCapture::trace();
    let mut shown = Vec::new();
    for path in ["code", "cut", "basic"] {
        let endpoint = TokenEndpoint::new(&format!("http://{addr}/{path}"))
            .unwrap()
            .client_id("id")
            .client_secret(SECRET);
        let err = endpoint.refresh_token(RT).fetch(None).await.unwrap_err();
        shown.push(err.to_string());
        shown.push(format!("{err:?}"));
    }
    drop(guard);
    shown.push(captured.text());
    // The part of the refresh token that would stay before the cut.
    let head = &RT[..20];
    for shown in shown {
        assert!(!shown.contains("MARKER"), "{shown}");
        assert!(!shown.contains(head), "{shown}");
        assert!(!shown.contains(&basic), "{shown}");
    }
}

/// `Debug` of every public client type built from a secret (a client secret, a
/// refresh token, a password, a subject token, a static token, an API key, a Basic
/// password) shows none of it.
#[tokio::test]
async fn debug_of_every_type_holding_a_secret_shows_none() {
    use tower_bearer::client::source::{Chain, ExchangeToken};
    use tower_bearer::client::{ApiKey, Basic, StaticToken};
    let endpoint = TokenEndpoint::new("https://idp.example.com/token")
        .unwrap()
        .client_id("id")
        .client_secret("cs-MARKER")
        .param("client_assertion", "param-MARKER");
    let token = tower_bearer::Token::bearer("at-MARKER")
        .unwrap()
        .with_refresh_token("rt-MARKER");
    let chain = Chain::new()
        .refresh_with(endpoint.clone())
        .tokens(Some("at2-MARKER"), Some("rt2-MARKER"))
        .unwrap();
    let printed = [
        format!("{endpoint:?}"),
        format!("{token:?}"),
        format!("{chain:?}"),
        format!("{:?}", endpoint.refresh_token("rt3-MARKER")),
        format!("{:?}", endpoint.password("alice", "pw-MARKER")),
        format!("{:?}", endpoint.client_credentials()),
        format!(
            "{:?}",
            endpoint.token_exchange(ExchangeToken::fixed("st-MARKER", "urn:x"))
        ),
        format!(
            "{:?}",
            Refreshing::new(endpoint.refresh_token("rt4-MARKER"))
        ),
        format!("{:?}", StaticToken::bearer("static-MARKER").unwrap()),
        format!("{:?}", Basic::new("alice", "basic-MARKER").unwrap()),
        format!("{:?}", ApiKey::new("x-api-key", "key-MARKER").unwrap()),
        format!(
            "{:?}",
            tower_bearer::client::source::AuthorizationCode::new(
                endpoint.clone(),
                "https://idp.example.com/authorize"
            )
            .unwrap()
            .param("login_hint", "alice")
        ),
    ];
    for shown in printed {
        assert!(!shown.contains("MARKER"), "{shown}");
    }
}
