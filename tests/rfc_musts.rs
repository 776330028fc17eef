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
use tower_bearer::client::source::{AuthorizationCode, DeviceCode};
use tower_bearer::client::{
    Revocation, TokenEndpoint, TokenEndpointAuth, TokenSource, TokenTypeHint,
};
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
    method: axum::http::Method,
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
    // Discovery also asks for the RFC 8414 document (a GET, answered 404): only
    // POSTs are the client's requests to the endpoints.
    if method != axum::http::Method::POST {
        return StatusCode::NOT_FOUND.into_response();
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

/// RFC 6749 §4.4: "The client credentials grant type MUST only be used by
/// confidential clients." A client-credentials grant over an endpoint with no
/// client authentication (no secret, no assertion, no TLS certificate) is refused
/// before anything is sent; the same client with a secret gets its token.
#[tokio::test]
async fn rfc6749_the_client_credentials_grant_needs_client_authentication() {
    let (provider, issuer) = start_provider().await;
    let public = TokenEndpoint::new(&format!("{issuer}/token"))
        .unwrap()
        .client_id("cli");
    let err = public.client_credentials().fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    // A secret with the `none` method authenticates nothing either.
    let none = public
        .clone()
        .client_secret("s3cret")
        .auth_method(TokenEndpointAuth::None);
    let err = none.client_credentials().fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(provider.posts().is_empty(), "nothing was sent");

    let confidential = public.client_secret("s3cret");
    let token = confidential.client_credentials().fetch(None).await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "at-1");
    assert_eq!(provider.posts().len(), 1);
}

/// The refusal of RFC 6749 §4.4 is the client-credentials grant's alone: a public
/// client (a client id, no secret) refreshes its token (§6: a public client sends
/// its `client_id` and no authentication) and uses the password grant, with no
/// `Authorization` header; the browser login of a public client is proved with
/// PKCE in tests/sources_browser.rs, the device login in tests/sources_device.rs.
#[tokio::test]
async fn rfc6749_a_public_client_refreshes_without_a_secret() {
    let (provider, issuer) = start_provider().await;
    let public = TokenEndpoint::new(&format!("{issuer}/token"))
        .unwrap()
        .client_id("cli");
    let token = public.refresh_token("rt-0").fetch(None).await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "at-1");
    public.password("alice", "pw").fetch(None).await.unwrap();
    let posts = provider.posts();
    assert_eq!(posts.len(), 2);
    for (_, authorization, form) in &posts {
        assert_eq!(*authorization, None);
        assert_eq!(field(form, "client_id"), Some("cli"));
    }
    assert_eq!(field(&posts[0].2, "grant_type"), Some("refresh_token"));
}

/// RFC 8707 §2: "Its value MUST be an absolute URI, as specified by Section 4.3 of
/// [RFC3986], which MAY include a query component, but MUST NOT include a fragment
/// component." A relative `resource`, or one with a fragment, is refused before
/// anything is sent, on every grant (and the device and browser logins); an
/// absolute URI with a query, or a URN, is sent as given.
#[tokio::test]
async fn rfc8707_a_resource_is_an_absolute_uri_without_a_fragment() {
    let (provider, issuer) = start_provider().await;
    let endpoint = TokenEndpoint::new(&format!("{issuer}/token"))
        .unwrap()
        .client_id("cli")
        .client_secret("s3cret");
    for wrong in [
        "api.example.com",
        "/v1/items",
        "https://api.example.com/v1#items",
        "",
        "1http://api.example.com",
        "https://api.example.com/a b",
    ] {
        let err = endpoint
            .client_credentials()
            .resource(wrong)
            .fetch(None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{wrong:?}: {err}");
        let err = endpoint
            .password("alice", "pw")
            .resource(wrong)
            .fetch(None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{wrong:?}: {err}");
        let err = endpoint
            .refresh_token("rt-0")
            .resource(wrong)
            .fetch(None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{wrong:?}: {err}");
        let err = endpoint
            .clone()
            .param("resource", wrong)
            .client_credentials()
            .fetch(None)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{wrong:?}: {err}");
        let device = DeviceCode::new(endpoint.clone(), &format!("{issuer}/device"))
            .unwrap()
            .resource(wrong)
            .show(|_| panic!("a code was shown"));
        let err = device.login().await.unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{wrong:?}: {err}");
        let shown = Arc::new(Mutex::new(0));
        let seen = shown.clone();
        let browser = AuthorizationCode::new(endpoint.clone(), &format!("{issuer}/authorize"))
            .unwrap()
            .resource(wrong)
            .show(move |_| *seen.lock().unwrap() += 1);
        let err = tokio::time::timeout(Duration::from_secs(10), browser.login())
            .await
            .expect("the login did not end")
            .unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{wrong:?}: {err}");
        assert_eq!(*shown.lock().unwrap(), 0, "{wrong:?}: the URL was shown");
    }
    assert!(provider.posts().is_empty(), "nothing was sent");

    for right in ["https://api.example.com/v1?tenant=a", "urn:example:api"] {
        endpoint
            .client_credentials()
            .resource(right)
            .fetch(None)
            .await
            .unwrap();
        let posts = provider.posts();
        assert_eq!(field(&posts.last().unwrap().2, "resource"), Some(right));
    }
}

/// RFC 7523 §3 item 2: "The JWT MUST contain a "sub" (subject) claim". A
/// JWT-bearer grant with no `subject(..)` names its issuer (the service account
/// acting for itself); with one, that subject.
#[cfg(feature = "jwt")]
#[tokio::test]
async fn rfc7523_the_grant_assertion_always_has_a_subject() {
    use tower_bearer::client::source::JwtBearer;
    use tower_bearer::client::{Algorithm, AssertionKey};
    let (provider, issuer) = start_provider().await;
    let endpoint = TokenEndpoint::new(&format!("{issuer}/token")).unwrap();
    let key = AssertionKey::from_pem(
        Algorithm::ES256,
        &std::fs::read("tests/keys/ec256.key").unwrap(),
    )
    .unwrap();
    let claims = |i: usize| -> serde_json::Value {
        let posts = provider.posts();
        let assertion = field(&posts[i].2, "assertion").unwrap().to_owned();
        let payload = assertion.split('.').nth(1).unwrap();
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let grant = JwtBearer::new(endpoint, "svc@example.iam", key);
    grant.fetch(None).await.unwrap();
    assert_eq!(claims(0)["iss"], "svc@example.iam");
    assert_eq!(claims(0)["sub"], "svc@example.iam", "{}", claims(0));
    grant
        .subject("alice@example.com")
        .fetch(None)
        .await
        .unwrap();
    assert_eq!(claims(1)["sub"], "alice@example.com");
}

/// An API on 127.0.0.1 that records the `Authorization` header of every request,
/// reached under a name that is not loopback (`api.example`, resolved to it by the
/// reqwest client): what a clear-text request to a remote host would carry.
#[cfg(feature = "reqwest")]
async fn start_api() -> (Arc<Mutex<Vec<Option<String>>>>, std::net::SocketAddr) {
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let log = seen.clone();
    let app = Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(
                headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned()),
            );
            "items"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, addr)
}

/// RFC 6750 §5.3: "Clients MUST always use TLS (https) or equivalent transport
/// security when making requests with bearer tokens"; RFC 6749 §10.3. The reqwest
/// middleware refuses to put a token on an `http://` request to a host that is not
/// loopback (nothing is sent, the error never quotes the token) unless
/// `allow_insecure_http()` says so; `http://` to 127.0.0.1 and `localhost` passes.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn rfc6750_the_reqwest_middleware_sends_no_token_in_clear_text_to_a_remote_host() {
    use tower_bearer::client::{AuthorizeMiddleware, StaticToken};
    let (seen, addr) = start_api().await;
    let http = reqwest::Client::builder()
        .resolve("api.example", addr)
        .build()
        .unwrap();
    let remote = format!("http://api.example:{}/items", addr.port());
    let token = StaticToken::bearer("t0ken-secret").unwrap();

    let strict = reqwest_middleware::ClientBuilder::new(http.clone())
        .with(AuthorizeMiddleware::new(token.clone()))
        .build();
    let err = strict.get(&remote).send().await.unwrap_err();
    assert!(!err.to_string().contains("t0ken-secret"), "{err}");
    let inner = Error::find_in_reqwest(&err).expect("the crate's error");
    assert!(matches!(inner, Error::Configuration(_)), "{inner}");
    assert!(seen.lock().unwrap().is_empty(), "the request was sent");

    for local in [
        format!("http://127.0.0.1:{}/items", addr.port()),
        format!("http://localhost:{}/items", addr.port()),
    ] {
        let res = strict.get(&local).send().await.unwrap();
        assert_eq!(res.status(), 200, "{local}");
    }
    let opted_in = reqwest_middleware::ClientBuilder::new(http)
        .with(AuthorizeMiddleware::new(token).allow_insecure_http())
        .build();
    let res = opted_in.get(&remote).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|a| a.as_deref() == Some("Bearer t0ken-secret")));
}

/// RFC 6750 §5.3 and RFC 6749 §10.3 for `AuthorizeLayer` over a real HTTP client:
/// an absolute `http://` URI to a host that is not loopback gets no credential and
/// is not sent (a static token and a refreshing cache alike), unless the layer
/// was told `allow_insecure_http()`; loopback and relative URIs pass.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn rfc6750_the_layer_sends_no_token_in_clear_text_to_a_remote_host() {
    use tower::{Layer, ServiceExt};
    use tower_bearer::client::{AuthorizeError, AuthorizeLayer, Refreshing, StaticToken};
    let (seen, addr) = start_api().await;
    let (_provider, issuer) = start_provider().await;
    let http = reqwest::Client::builder()
        .resolve("api.example", addr)
        .build()
        .unwrap();
    // The real client under the layer; a relative URI is sent to the API's address,
    // as a channel with its own origin would.
    let inner = tower::service_fn(move |mut req: http::Request<String>| {
        let http = http.clone();
        async move {
            if req.uri().scheme().is_none() {
                *req.uri_mut() = format!("http://{addr}{}", req.uri()).parse().unwrap();
            }
            let res = http.execute(reqwest::Request::try_from(req)?).await?;
            Ok::<_, reqwest::Error>(http::Response::new(res.status()))
        }
    });
    let remote = format!("http://api.example:{}/items", addr.port());
    let get = |uri: &str| http::Request::get(uri).body(String::new()).unwrap();
    let endpoint = TokenEndpoint::new(&format!("{issuer}/token"))
        .unwrap()
        .client_id("cli")
        .client_secret("s3cret");
    let refreshing = Refreshing::new(endpoint.client_credentials());
    let fixed = StaticToken::bearer("t0ken-secret").unwrap();

    let err = AuthorizeLayer::new(fixed.clone())
        .layer(inner.clone())
        .oneshot(get(&remote))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthorizeError::Credential(Error::Configuration(_))),
        "{err}"
    );
    assert!(!err.to_string().contains("t0ken-secret"), "{err}");
    let err = AuthorizeLayer::new(refreshing.clone())
        .layer(inner.clone())
        .oneshot(get(&remote))
        .await
        .unwrap_err();
    assert!(
        matches!(err, AuthorizeError::Credential(Error::Configuration(_))),
        "{err}"
    );
    assert!(seen.lock().unwrap().is_empty(), "the request was sent");

    let loopback = format!("http://127.0.0.1:{}/items", addr.port());
    for uri in [loopback.as_str(), "/items"] {
        let res = AuthorizeLayer::new(refreshing.clone())
            .layer(inner.clone())
            .oneshot(get(uri))
            .await
            .unwrap();
        assert_eq!(*res.body(), 200, "{uri}");
    }
    let res = AuthorizeLayer::new(fixed)
        .allow_insecure_http()
        .layer(inner)
        .oneshot(get(&remote))
        .await
        .unwrap();
    assert_eq!(*res.body(), 200);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].as_deref(), Some("Bearer t0ken-secret"));
}

/// RFC 6750 §3: the values of `error`, `error_description` and `scope` "MUST NOT
/// include characters outside the set %x20-21 / %x23-5B / %x5D-7E": a `"` or `\`
/// in a validator's description or in a required scope is left out of the
/// challenge (the realm, a quoted-string, keeps them escaped). Through a real
/// axum server on 127.0.0.1.
#[cfg(feature = "axum")]
#[tokio::test]
async fn rfc6750_challenge_values_never_carry_a_quote_or_a_backslash() {
    use tower_bearer::server::{
        Claims, Rejection, RequireBearerLayer, RequireScopeLayer, ValidationFuture, Validator,
    };
    struct Quoting;
    impl Validator for Quoting {
        type Claims = Claims;
        fn validate(&self, token: &str) -> ValidationFuture<Claims> {
            ValidationFuture::ready(if token == "good" {
                Ok(serde_json::from_value(serde_json::json!({ "scope": "read" })).unwrap())
            } else {
                Err(Rejection::invalid_token(r#"the "kid" \ is unknown"#))
            })
        }
    }
    let app = Router::new()
        .route(
            "/admin",
            axum::routing::get(|| async { "admin" })
                .layer(RequireScopeLayer::<Claims>::new([r#"ad"min\"#])),
        )
        .fallback(|| async { "ok" })
        .layer(RequireBearerLayer::new(Quoting).realm(r#"my "api""#));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let challenge = |path: &'static str, token: &'static str| async move {
        let res = reqwest::Client::new()
            .get(format!("http://{addr}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        challenge("/", "bad").await,
        r#"Bearer realm="my \"api\"", error="invalid_token", error_description="the kid  is unknown""#
    );
    assert_eq!(
        challenge("/admin", "good").await,
        r#"Bearer realm="my \"api\"", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin""#
    );
}

/// RFC 9728 §2: "`jwks_uri` ... The URL MUST use the https scheme" and
/// "`resource_signing_alg_values_supported` ... The value `none` MUST NOT be
/// used." A document breaking either is refused where it is wired in (its URL, its
/// path and its service), whether built with the builder or its public fields; a
/// good one is served on 127.0.0.1 with both members.
#[tokio::test]
async fn rfc9728_a_document_with_a_clear_text_jwks_uri_or_alg_none_is_refused() {
    use tower_bearer::server::ProtectedResourceMetadata;
    let good = ProtectedResourceMetadata::new("https://api.example.com/v1")
        .jwks_uri("https://api.example.com/jwks.json")
        .resource_signing_alg_values_supported(["RS256", "ES256"]);
    let mut fields = good.clone();
    fields.jwks_uri = Some("http://api.example.com/jwks.json".into());
    let wrong = [
        good.clone().jwks_uri("http://api.example.com/jwks.json"),
        good.clone().jwks_uri("http://127.0.0.1/jwks.json"),
        good.clone().jwks_uri("/jwks.json"),
        good.clone()
            .resource_signing_alg_values_supported(["RS256", "none"]),
        fields,
    ];
    for doc in wrong {
        assert!(matches!(doc.url(), Err(Error::Configuration(_))), "{doc:?}");
        assert!(
            matches!(doc.path(), Err(Error::Configuration(_))),
            "{doc:?}"
        );
        assert!(doc.service().is_err(), "{doc:?}");
    }

    let app = Router::new().route_service(&good.path().unwrap(), good.service().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = reqwest::get(format!(
        "http://{addr}/.well-known/oauth-protected-resource/v1"
    ))
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(doc["jwks_uri"], "https://api.example.com/jwks.json");
    assert_eq!(
        doc["resource_signing_alg_values_supported"],
        serde_json::json!(["RS256", "ES256"])
    );
}
