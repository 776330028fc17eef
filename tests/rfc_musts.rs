//! RFC requirements the crate met without a test of their own, proved here against
//! a real provider on 127.0.0.1 (axum): each test names the clause it holds the
//! crate to. The full table of clauses, code and tests is `docs/RFC-MUSTS.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use secrecy::ExposeSecret;
use tokio::sync::mpsc;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::{Revocation, TokenEndpoint, TokenSource, TokenTypeHint};
use tower_bearer::{Endpoint, Error, Token};

type Form = Vec<(String, String)>;

/// One POST the provider got: its request target, its `Authorization` header, its form.
type Post = (String, Option<String>, Form);

/// A provider on loopback: its discovery document, a token endpoint that answers
/// with members RFC 6749 does not define, and a revocation endpoint whose status
/// the test sets. Records every POST (path, `Authorization` header, form).
#[derive(Clone, Default)]
struct Provider {
    issuer: Arc<Mutex<String>>,
    posts: Arc<Mutex<Vec<Post>>>,
    revoke_status: Arc<Mutex<u16>>,
}

impl Provider {
    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }
}

fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn provider_answer(
    State(p): State<Provider>,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    // The whole request target: a query would show (RFC 6749 §2.3.1).
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    let issuer = p.issuer.lock().unwrap().clone();
    let json = [("content-type", "application/json")];
    if path == "/.well-known/openid-configuration" {
        let doc = serde_json::json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "revocation_endpoint": format!("{issuer}/revoke"),
        });
        return (StatusCode::OK, json, doc.to_string()).into_response();
    }
    let form: Form = serde_urlencoded::from_str(&body).unwrap_or_default();
    let authorization = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    p.posts
        .lock()
        .unwrap()
        .push((path.clone(), authorization, form));
    match path.as_str() {
        "/token" => {
            // Members RFC 6749 §5.1 does not define, of every JSON type: the client
            // must ignore them (§5.1: "The client MUST ignore unrecognized value
            // names in the response").
            let answer = serde_json::json!({
                "access_token": "at-1",
                "token_type": "Bearer",
                "expires_in": 300,
                "refresh_token": "rt-1",
                "id_token": "eyJhbGciOiJub25lIn0.e30.",
                "not-before-policy": 0,
                "x_vendor": { "nested": [1, "two", null, { "deep": true }] },
                "session_state": null,
            });
            (StatusCode::OK, json, answer.to_string()).into_response()
        }
        "/revoke" => StatusCode::from_u16(*p.revoke_status.lock().unwrap())
            .unwrap()
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn start_provider() -> (Provider, String) {
    let provider = Provider {
        revoke_status: Arc::new(Mutex::new(200)),
        ..Provider::default()
    };
    let app = Router::new()
        .fallback(provider_answer)
        .with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    *provider.issuer.lock().unwrap() = issuer.clone();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (provider, issuer)
}

/// A browser login started with `login`, the query of the authorization URL it
/// showed, and a way to play the browser's redirect back to it.
struct Running {
    login: tokio::task::JoinHandle<Result<Token, Error>>,
    query: HashMap<String, String>,
}

impl Running {
    async fn start(login: AuthorizationCode) -> Running {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let login = login.show(move |url| {
            let _ = tx.send(url.to_owned());
        });
        let login = tokio::spawn(async move { login.login().await });
        let url = rx.recv().await.unwrap();
        let query = serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap();
        Running { login, query }
    }

    /// The browser arrives at the redirect URI with `code`, this login's `state`,
    /// `iss` and a parameter no RFC defines; then the login's result.
    async fn redirect_with_iss(self, iss: &str) -> Result<Token, Error> {
        let url = format!(
            "{}?{}",
            self.query["redirect_uri"],
            serde_urlencoded::to_string([
                ("code", "good-code"),
                ("state", self.query["state"].as_str()),
                ("iss", iss),
                ("session_state", "unknown-to-the-client"),
            ])
            .unwrap()
        );
        // The page's status is the login's business; the result is what counts.
        let _ = reqwest::get(url).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.login)
            .await
            .expect("the login did not end")
            .unwrap()
    }
}

/// RFC 9207 §2.4: a client that knows the issuer it sent the person to "MUST reject
/// the authorization response and MUST NOT proceed with the authorization grant"
/// when the response's `iss` is another one (simple string comparison). A redirect
/// naming another issuer (or the right one with a trailing slash) is refused before
/// any code exchange; the same redirect naming the discovered issuer is exchanged.
/// RFC 6749 §4.1.2: "The client MUST ignore unrecognized response parameters": the
/// redirect's `session_state` changes nothing.
#[tokio::test]
async fn rfc9207_an_authorization_response_from_another_issuer_is_refused() {
    let (provider, issuer) = start_provider().await;
    let endpoint = TokenEndpoint::discover(&issuer)
        .await
        .unwrap()
        .client_id("cli");
    let authorize = format!("{issuer}/authorize");

    for wrong in ["https://attacker.example", &format!("{issuer}/")] {
        let login = AuthorizationCode::new(endpoint.clone(), &authorize).unwrap();
        let err = Running::start(login)
            .await
            .redirect_with_iss(wrong)
            .await
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidResponse(Endpoint::Authorization, _)),
            "iss {wrong:?}: {err}"
        );
        assert!(
            provider.posts().is_empty(),
            "iss {wrong:?}: the code was exchanged"
        );
    }

    let login = AuthorizationCode::new(endpoint, &authorize).unwrap();
    let token = Running::start(login)
        .await
        .redirect_with_iss(&issuer)
        .await
        .unwrap();
    assert_eq!(token.access_token().expose_secret(), "at-1");
    let posts = provider.posts();
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].0, "/token");
    assert_eq!(field(&posts[0].2, "code"), Some("good-code"));
}

/// RFC 6749 §5.1: "The client MUST ignore unrecognized value names in the
/// response" (here of every JSON type, `null` included). RFC 6749 §2.3: "The
/// client MUST NOT use more than one authentication method in each request": with
/// `client_secret_basic` the body carries neither `client_id` nor `client_secret`,
/// and §2.3.1's Basic credentials are form-encoded (Appendix B) before base64.
#[tokio::test]
async fn rfc6749_unknown_answer_members_are_ignored_and_one_auth_method_is_used() {
    let (provider, issuer) = start_provider().await;
    let endpoint = TokenEndpoint::new(&format!("{issuer}/token"))
        .unwrap()
        .client_id("my app:1")
        .client_secret("s&cr=t é");
    let token = endpoint.client_credentials().fetch(None).await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "at-1");
    assert_eq!(token.refresh_token().unwrap().expose_secret(), "rt-1");

    let posts = provider.posts();
    assert_eq!(posts.len(), 1);
    let (path, authorization, form) = &posts[0];
    assert_eq!(
        path, "/token",
        "§2.3.1: credentials never in the request URI"
    );
    assert_eq!(field(form, "grant_type"), Some("client_credentials"));
    assert_eq!(field(form, "client_id"), None, "{form:?}");
    assert_eq!(field(form, "client_secret"), None, "{form:?}");
    let basic = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Basic "))
        .expect("client_secret_basic");
    let decoded = String::from_utf8(STANDARD.decode(basic).unwrap()).unwrap();
    assert_eq!(decoded, "my+app%3A1:s%26cr%3Dt+%C3%A9");
}

/// RFC 7009 §2.1: the revocation request is a POST of `token` (REQUIRED) with its
/// `token_type_hint` and the client's authentication; §2.2.1: a `503` means the
/// token still exists, so it is an error, never a successful logout.
#[tokio::test]
async fn rfc7009_revocation_sends_the_token_and_hint_and_a_503_is_no_success() {
    let (provider, issuer) = start_provider().await;
    let endpoint = TokenEndpoint::discover(&issuer)
        .await
        .unwrap()
        .client_id("cli")
        .client_secret("s3cret");
    let revocation = Revocation::new(&endpoint, &format!("{issuer}/revoke")).unwrap();
    revocation
        .revoke("rt-9", Some(TokenTypeHint::RefreshToken))
        .await
        .unwrap();
    let posts = provider.posts();
    assert_eq!(posts.len(), 1);
    let (path, authorization, form) = &posts[0];
    assert_eq!(path, "/revoke");
    assert_eq!(field(form, "token"), Some("rt-9"));
    assert_eq!(field(form, "token_type_hint"), Some("refresh_token"));
    assert!(
        authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic ")),
        "the client authenticates: {authorization:?}"
    );

    *provider.revoke_status.lock().unwrap() = 503;
    let err = revocation
        .revoke("rt-9", Some(TokenTypeHint::RefreshToken))
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "a 503 is a passing failure: {err}");
    assert!(
        !err.to_string().contains("rt-9"),
        "the error never quotes the token: {err}"
    );
}
