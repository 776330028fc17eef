//! The browser login (authorization code + PKCE on a loopback redirect, RFC 7636 and
//! RFC 8252) with hostile redirects: the test plays the browser, sending requests to
//! the login's real listener on 127.0.0.1, and a real token server on 127.0.0.1
//! checks the code exchange (the `S256` challenge against the verifier). The same
//! login against oidc-provider is in `tests/interop_oidc_provider.rs`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::{Form, Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::TokenEndpoint;
use tower_bearer::{Error, Token};

type Form_ = HashMap<String, String>;

/// A token server that exchanges the code `good-code` when the verifier hashes to
/// the challenge the login put in its authorization URL; records every form.
struct TokenServer {
    url: String,
    issuer: String,
    challenge: Arc<Mutex<Option<String>>>,
    forms: Arc<Mutex<Vec<Form_>>>,
}

async fn token_server() -> TokenServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    // The provider's discovery document: it promises `iss` on every redirect (RFC 9207).
    let doc = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "authorization_endpoint": "http://127.0.0.1:9/authorize",
        "authorization_response_iss_parameter_supported": true,
    });
    let challenge = Arc::new(Mutex::new(None::<String>));
    let forms = Arc::new(Mutex::new(Vec::new()));
    let (c, f) = (challenge.clone(), forms.clone());
    let app = Router::new()
        .route(
            "/token",
            post(move |Form(form): Form<Form_>| {
                let (c, f) = (c.clone(), f.clone());
                async move {
                    f.lock().unwrap().push(form.clone());
                    let expected = c.lock().unwrap().clone();
                    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
                    let hashed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
                    let ok = form.get("grant_type").map(String::as_str)
                        == Some("authorization_code")
                        && form.get("code").map(String::as_str) == Some("good-code")
                        && expected.as_deref() == Some(hashed.as_str())
                        && (43..=128).contains(&verifier.len());
                    if ok {
                        (
                            http::StatusCode::OK,
                            Json(serde_json::json!({
                                "access_token": "at-1", "token_type": "Bearer",
                                "expires_in": 300, "refresh_token": "rt-1"
                            })),
                        )
                    } else {
                        (
                            http::StatusCode::BAD_REQUEST,
                            Json(serde_json::json!({ "error": "invalid_grant" })),
                        )
                    }
                }
            }),
        )
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { Json(doc) }
            }),
        );
    let url = format!("{issuer}/token");
    tokio::spawn(async move { axum::serve(listener, app).await });
    TokenServer {
        url,
        issuer,
        challenge,
        forms,
    }
}

/// A running login and what it showed: the authorization URL's query.
struct Running {
    login: tokio::task::JoinHandle<Result<Token, Error>>,
    query: HashMap<String, String>,
    http: reqwest::Client,
}

impl Running {
    async fn start(server: &TokenServer, login: AuthorizationCode) -> Running {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let login = login.show(move |url| {
            let _ = tx.send(url.to_owned());
        });
        let login = tokio::spawn(async move { login.login().await });
        let url = rx.recv().await.unwrap();
        assert!(url.starts_with("http://127.0.0.1:9/authorize?"), "{url}");
        let query: HashMap<String, String> =
            serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
        *server.challenge.lock().unwrap() = query.get("code_challenge").cloned();
        Running {
            login,
            query,
            http: reqwest::Client::new(),
        }
    }

    fn redirect_uri(&self) -> &str {
        &self.query["redirect_uri"]
    }

    /// The browser follows a redirect to the login's listener with `params`.
    async fn redirect(&self, params: &[(&str, &str)]) -> Result<(u16, String), reqwest::Error> {
        let url = format!(
            "{}?{}",
            self.redirect_uri(),
            serde_urlencoded::to_string(params).unwrap()
        );
        let res = self.http.get(url).send().await?;
        Ok((res.status().as_u16(), res.text().await?))
    }

    async fn end(self) -> Result<Token, Error> {
        tokio::time::timeout(Duration::from_secs(10), self.login)
            .await
            .expect("the login did not end")
            .unwrap()
    }
}

fn login(server: &TokenServer) -> AuthorizationCode {
    let endpoint = TokenEndpoint::new(&server.url).unwrap().client_id("cli");
    AuthorizationCode::new(endpoint, "http://127.0.0.1:9/authorize")
        .unwrap()
        .scope("openid offline_access")
        .resource("https://api.example.com")
        .param("login_hint", "alice")
        .param("state", "an attempt to replace the login's own")
}

/// The URL carries everything RFC 7636 and 8252 ask for; a redirect with the right
/// `state` and code is exchanged with a verifier that hashes to the challenge, and
/// the page says the person can close it.
#[tokio::test]
async fn a_login_exchanges_the_code_with_the_verifier() {
    let server = token_server().await;
    let run = Running::start(&server, login(&server)).await;
    let q = &run.query;
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], "cli");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["scope"], "openid offline_access");
    assert_eq!(q["resource"], "https://api.example.com");
    assert_eq!(q["login_hint"], "alice");
    assert_eq!(q["state"].len(), 43, "256 random bits, not the extra param");
    assert!(
        q["redirect_uri"].starts_with("http://127.0.0.1:")
            && q["redirect_uri"].ends_with("/callback"),
        "{q:?}"
    );
    let state = q["state"].clone();

    let (status, page) = run
        .redirect(&[("code", "good-code"), ("state", &state)])
        .await
        .unwrap();
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("You can close this window"), "{page}");
    let redirect_uri = run.redirect_uri().to_owned();
    let token = run.end().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "at-1");
    assert_eq!(token.refresh_token().unwrap().expose_secret(), "rt-1");
    let forms = server.forms.lock().unwrap().clone();
    assert_eq!(forms.len(), 1);
    assert_eq!(forms[0]["redirect_uri"], redirect_uri);
    assert_eq!(forms[0]["resource"], "https://api.example.com");
    assert_eq!(forms[0]["client_id"], "cli");
}

/// A `state` of another login and another path are refused with a page and change
/// nothing: the login keeps waiting for its own redirect. After it ends, a second
/// redirect finds no listener.
#[tokio::test]
async fn wrong_state_other_paths_and_a_second_redirect() {
    let server = token_server().await;
    let run = Running::start(&server, login(&server)).await;
    let state = run.query["state"].clone();

    let (status, page) = run
        .redirect(&[("code", "good-code"), ("state", "forged")])
        .await
        .unwrap();
    assert_eq!(status, 400);
    assert!(page.contains("does not belong"), "{page}");
    let (status, _) = run.redirect(&[("code", "good-code")]).await.unwrap();
    assert_eq!(status, 400, "no state at all");
    let other = run.redirect_uri().replace("/callback", "/favicon.ico");
    let res = run.http.get(other).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(server.forms.lock().unwrap().is_empty(), "nothing exchanged");
    assert!(!run.login.is_finished(), "the login still waits");

    let (status, _) = run
        .redirect(&[("code", "good-code"), ("state", &state)])
        .await
        .unwrap();
    assert_eq!(status, 200);
    let redirect_uri = run.redirect_uri().to_owned();
    let http = run.http.clone();
    run.end().await.unwrap();
    let second = http
        .get(format!("{redirect_uri}?code=good-code&state={state}"))
        .send()
        .await;
    assert!(second.is_err(), "a second redirect found a listener");
    assert_eq!(server.forms.lock().unwrap().len(), 1);
}

/// An error redirect ends the login: `access_denied` as [`Error::AccessDenied`],
/// another code as [`Error::TokenEndpoint`] with that code; the page says so.
#[tokio::test]
async fn error_redirects_end_the_login() {
    let server = token_server().await;
    let run = Running::start(&server, login(&server)).await;
    let state = run.query["state"].clone();
    let (status, page) = run
        .redirect(&[
            ("error", "access_denied"),
            ("error_description", "the person said no"),
            ("state", &state),
        ])
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("declined"), "{page}");
    let err = run.end().await.unwrap_err();
    assert!(matches!(err, Error::AccessDenied(_)), "{err}");
    assert!(err.to_string().contains("the person said no"), "{err}");

    let run = Running::start(&server, login(&server)).await;
    let state = run.query["state"].clone();
    let (status, _) = run
        .redirect(&[("error", "invalid_scope"), ("state", &state)])
        .await
        .unwrap();
    assert_eq!(status, 502);
    let err = run.end().await.unwrap_err();
    assert!(matches!(err, Error::TokenEndpoint(_)), "{err}");
    assert_eq!(err.oauth_code(), Some("invalid_scope"));

    // A code the token server refuses: the page says the login failed.
    let run = Running::start(&server, login(&server)).await;
    let state = run.query["state"].clone();
    let (status, page) = run
        .redirect(&[("code", "stolen-code"), ("state", &state)])
        .await
        .unwrap();
    assert_eq!(status, 502, "{page}");
    assert!(matches!(run.end().await, Err(Error::InvalidGrant(_))));
    assert!(server.forms.lock().unwrap().len() == 1);
}

/// A port already taken is a clear configuration error, before anything is shown.
#[tokio::test]
async fn a_port_already_taken() {
    let server = token_server().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let shown = Arc::new(Mutex::new(0));
    let seen = shown.clone();
    let err = login(&server)
        .port(port)
        .show(move |_| *seen.lock().unwrap() += 1)
        .login()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
    assert_eq!(*shown.lock().unwrap(), 0, "nothing shown");
}

/// Nobody comes back: the login ends at its deadline (paused clock).
#[tokio::test(start_paused = true)]
async fn no_redirect_ends_at_the_deadline() {
    let server = token_server().await;
    let started = tokio::time::Instant::now();
    let err = login(&server)
        .timeout(Duration::from_secs(120))
        .show(|_| {})
        .login()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(..)), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(120));
}

/// Issue 29, defect 6: the provider's discovery document says
/// `authorization_response_iss_parameter_supported: true`, so a redirect without
/// `iss` (stripped by a mix-up attacker) is refused and its code never exchanged
/// (RFC 9207 §2.4); with the right `iss` the login succeeds; with another it fails.
#[tokio::test]
async fn a_redirect_without_iss_is_refused_when_the_provider_promises_it() {
    let server = token_server().await;
    let discovered = || async {
        TokenEndpoint::discover(&server.issuer)
            .await
            .unwrap()
            .client_id("cli")
            .authorization_code()
            .unwrap()
    };
    let run = Running::start(&server, discovered().await).await;
    let state = run.query["state"].clone();
    let (status, page) = run
        .redirect(&[("code", "good-code"), ("state", &state)])
        .await
        .unwrap();
    assert_eq!(status, 502, "{page}");
    let err = run.end().await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidResponse(tower_bearer::Endpoint::Authorization, _)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("RFC 9207"), "{err}");
    assert!(!err.to_string().contains("good-code"), "{err}");
    assert!(
        server.forms.lock().unwrap().is_empty(),
        "the code was exchanged"
    );

    let run = Running::start(&server, discovered().await).await;
    let state = run.query["state"].clone();
    let (status, _) = run
        .redirect(&[
            ("code", "good-code"),
            ("state", &state),
            ("iss", "https://evil.test"),
        ])
        .await
        .unwrap();
    assert_eq!(status, 502);
    assert!(matches!(run.end().await, Err(Error::InvalidResponse(..))));
    assert!(
        server.forms.lock().unwrap().is_empty(),
        "the code was exchanged"
    );

    let run = Running::start(&server, discovered().await).await;
    let state = run.query["state"].clone();
    let issuer = server.issuer.clone();
    let (status, page) = run
        .redirect(&[("code", "good-code"), ("state", &state), ("iss", &issuer)])
        .await
        .unwrap();
    assert_eq!(status, 200, "{page}");
    run.end().await.unwrap();
    assert_eq!(server.forms.lock().unwrap().len(), 1);
}

/// A redirect that carries `iss`, `code` or `state` twice (RFC 6749 §3.1: a parameter
/// is sent at most once) is refused and its code never exchanged: with the right
/// `iss` first and another after it, a reader of the last one would see another
/// issuer. An error redirect without the promised `iss` is refused as well (RFC 9207
/// §2.4 covers error responses).
#[tokio::test]
async fn a_redirect_with_a_parameter_twice_or_an_error_without_iss_is_refused() {
    let server = token_server().await;
    let discovered = || async {
        TokenEndpoint::discover(&server.issuer)
            .await
            .unwrap()
            .client_id("cli")
            .authorization_code()
            .unwrap()
    };
    let issuer = server.issuer.clone();
    for twice in ["iss", "code", "state"] {
        let run = Running::start(&server, discovered().await).await;
        let state = run.query["state"].clone();
        let mut params = vec![("code", "good-code"), ("state", &state), ("iss", &issuer)];
        let extra = match twice {
            "iss" => "https://evil.test",
            "code" => "other-code",
            _ => "another-state",
        };
        params.push((twice, extra));
        let (status, page) = run.redirect(&params).await.unwrap();
        assert_eq!(status, 502, "{twice}: {page}");
        let err = run.end().await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidResponse(tower_bearer::Endpoint::Authorization, _)
            ),
            "{twice}: {err}"
        );
        assert!(
            server.forms.lock().unwrap().is_empty(),
            "{twice}: the code was exchanged"
        );
    }

    let run = Running::start(&server, discovered().await).await;
    let state = run.query["state"].clone();
    let (status, _) = run
        .redirect(&[("error", "access_denied"), ("state", &state)])
        .await
        .unwrap();
    assert_eq!(status, 502);
    assert!(matches!(
        run.end().await,
        Err(Error::InvalidResponse(
            tower_bearer::Endpoint::Authorization,
            _
        ))
    ));
}
