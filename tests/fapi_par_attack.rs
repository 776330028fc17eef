//! The FAPI 2.0 client (pushed authorization requests, signed request objects,
//! `dpop_jkt`, the `fapi2()` preset) attacked: a provider on 127.0.0.1 whose pushed
//! authorization request endpoint lies (request URIs that break the URL, lifetimes
//! of zero or less, redirects, DPoP nonces forever, echoes of what it was sent), a
//! redirect whose `iss` is almost the issuer, and settings changed after `fapi2()`.
//! The test plays the browser: it reads what was pushed and sends the redirect to
//! the login's real listener.
//!
//! The profile's requirements cited are the FAPI 2.0 Security Profile (Final,
//! February 2025): §5.3.3.1 (clients, general), §5.3.3.2 (clients, authorization
//! code flow), §5.4 (cryptography); RFC 9126 (PAR), RFC 9101 (JAR), RFC 9207 (iss).
#![cfg(all(feature = "jwt", feature = "dpop"))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::mpsc;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::{
    Algorithm, AssertionKey, ClientAssertion, DpopKey, TokenEndpoint, TokenEndpointAuth,
};
use tower_bearer::{Endpoint, Error, Token};

/// A form as sent, in order, repeated fields kept.
type Form = Vec<(String, String)>;

/// How the pushed authorization request endpoint answers its `n`-th push (from 0).
type ParAnswer = Arc<dyn Fn(usize) -> Response + Send + Sync>;

#[derive(Default)]
struct Seen {
    /// The pushes, with their headers.
    pushed: Vec<(Form, HeaderMap)>,
    /// The token requests.
    tokens: Vec<Form>,
}

struct Provider {
    issuer: String,
    seen: Arc<Mutex<Seen>>,
}

fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn count(form: &Form, name: &str) -> usize {
    form.iter().filter(|(k, _)| k == name).count()
}

/// A provider on 127.0.0.1: its discovery document (`doc` merged in, `{issuer}`
/// replaced, a `null` member dropped), a PAR endpoint answering with `par`, and a
/// token endpoint that issues a token for any code.
async fn provider(doc: serde_json::Value, par: ParAnswer) -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let mut document = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "authorization_endpoint": "http://127.0.0.1:9/authorize",
        "pushed_authorization_request_endpoint": format!("{issuer}/par"),
        "code_challenge_methods_supported": ["S256"],
    });
    let doc: serde_json::Value =
        serde_json::from_str(&doc.to_string().replace("{issuer}", &issuer)).unwrap();
    for (k, v) in doc.as_object().unwrap() {
        if v.is_null() {
            document.as_object_mut().unwrap().remove(k);
        } else {
            document[k] = v.clone();
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (s1, s2) = (seen.clone(), seen.clone());
    let pushes = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || {
                let document = document.clone();
                async move { Json(document) }
            }),
        )
        .route(
            "/par",
            post(move |headers: HeaderMap, body: Bytes| {
                let form: Form = serde_urlencoded::from_bytes(&body).unwrap();
                s1.lock().unwrap().pushed.push((form, headers));
                let n = pushes.fetch_add(1, Ordering::SeqCst);
                let par = par.clone();
                async move { par(n) }
            }),
        )
        .route(
            "/token",
            post(move |headers: HeaderMap, body: Bytes| {
                let form: Form = serde_urlencoded::from_bytes(&body).unwrap();
                s2.lock().unwrap().tokens.push(form);
                let kind = if headers.contains_key("dpop") {
                    "DPoP"
                } else {
                    "Bearer"
                };
                async move {
                    Json(serde_json::json!({
                        "access_token": "at-1", "token_type": kind, "expires_in": 300
                    }))
                }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider { issuer, seen }
}

/// `201` with this `request_uri` (the push's number appended) and 60 s.
fn pushed_as(uri: &'static str) -> ParAnswer {
    Arc::new(move |n| {
        (
            StatusCode::CREATED,
            Json(serde_json::json!({"request_uri": format!("{uri}{n}"), "expires_in": 60})),
        )
            .into_response()
    })
}

/// Always this status and JSON body.
fn answer(status: u16, body: serde_json::Value) -> ParAnswer {
    Arc::new(move |_| {
        (
            StatusCode::from_u16(status).unwrap(),
            [("content-type", "application/json")],
            body.to_string(),
        )
            .into_response()
    })
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn es256() -> AssertionKey {
    AssertionKey::from_pem(Algorithm::ES256, &key("ec256.key"))
        .unwrap()
        .key_id("fapi-ec")
}

/// The discovered endpoint of `p` for `fapi-client`: private_key_jwt (ES256, `aud`
/// the issuer) and a DPoP key.
async fn fapi_endpoint(p: &Provider) -> (TokenEndpoint, DpopKey) {
    let dpop = DpopKey::generate().unwrap();
    let endpoint = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("fapi-client")
        .auth_method(ClientAssertion::private_key(es256()).audience_issuer())
        .dpop(dpop.clone());
    (endpoint, dpop)
}

/// A public client's login of `p` that pushes.
async fn plain_pushed(p: &Provider) -> AuthorizationCode {
    TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .auth_method(TokenEndpointAuth::None)
        .authorization_code()
        .unwrap()
        .pushed_authorization_requests()
}

/// What starting a login came to: the URL it showed (the login still running), or
/// its end before showing one.
enum Start {
    Shown(tokio::task::JoinHandle<Result<Token, Error>>, String),
    Ended(Result<Token, Error>),
}

impl Start {
    fn shown(self) -> (tokio::task::JoinHandle<Result<Token, Error>>, String) {
        match self {
            Start::Shown(running, url) => (running, url),
            Start::Ended(result) => panic!("the login ended without a URL: {result:?}"),
        }
    }

    fn refused(self) -> Error {
        match self {
            Start::Shown(running, url) => {
                running.abort();
                panic!("a URL was shown: {url}")
            }
            Start::Ended(result) => result.expect_err("the login succeeded"),
        }
    }
}

async fn start(login: AuthorizationCode) -> Start {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let login = login.show(move |url| {
        let _ = tx.send(url.to_owned());
    });
    let mut running = tokio::spawn(async move { login.login().await });
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            url = rx.recv() => Ok(url),
            ended = &mut running => Err(ended.unwrap()),
        }
    })
    .await
    .expect("the login neither showed a URL nor ended");
    match first {
        Ok(Some(url)) => Start::Shown(running, url),
        Ok(None) => Start::Ended(running.await.unwrap()),
        Err(result) => Start::Ended(result),
    }
}

async fn end(running: tokio::task::JoinHandle<Result<Token, Error>>) -> Result<Token, Error> {
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the login did not end")
        .unwrap()
}

fn query_of(url: &str) -> Form {
    serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap()
}

fn jwt_claims(jwt: &str) -> serde_json::Value {
    let bytes = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        jwt.split('.').nth(1).unwrap(),
    )
    .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The browser brings the redirect (`query` as given, already encoded) to the
/// login's listener.
async fn redirect_raw(redirect_uri: &str, query: &str) -> u16 {
    reqwest::get(format!("{redirect_uri}?{query}"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn enc(params: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(params).unwrap()
}

// ---------------------------------------------------------------------------------
// The PAR answer: request_uri and expires_in (RFC 9126 §2.2).
// ---------------------------------------------------------------------------------

/// A `request_uri` with URL syntax in it (`&`, `=`, `#`, `?`) is one parameter of
/// the authorization URL, encoded: the browser gets `client_id` and that
/// `request_uri` and nothing else (FAPI 2.0 §5.3.3.2: "only client_id and
/// request_uri"), and no fragment.
#[tokio::test]
async fn a_request_uri_with_url_syntax_stays_one_encoded_parameter() {
    let p = provider(
        serde_json::json!({}),
        pushed_as("urn:x:1&redirect_uri=https://evil.example/cb?a=b#frag"),
    )
    .await;
    let (running, url) = start(plain_pushed(&p).await).await.shown();
    running.abort();
    assert!(!url.contains('#'), "{url}");
    assert!(!url.contains("evil.example/"), "{url}");
    assert_eq!(
        query_of(&url),
        [
            ("client_id".to_owned(), "cli".to_owned()),
            (
                "request_uri".to_owned(),
                "urn:x:1&redirect_uri=https://evil.example/cb?a=b#frag0".to_owned()
            )
        ],
        "{url}"
    );
}

/// Request URIs that cannot be put in a URL (CR LF, a space, 4 KiB, empty, not a
/// string) and lifetimes that are not a positive number of seconds (0, negative,
/// under a second, a string, null, missing) are refused as invalid answers of the
/// PAR endpoint, before any URL is shown, without quoting them. A huge lifetime is
/// taken (it is only logged).
#[tokio::test]
async fn unusable_request_uris_and_lifetimes_are_refused_unquoted() {
    let long = format!("urn:MARK:{}", "a".repeat(4096));
    let bad = [
        serde_json::json!({"request_uri": "urn:MARK:1\r\nSet-Cookie: x=y", "expires_in": 60}),
        serde_json::json!({"request_uri": "urn:MARK:1 2", "expires_in": 60}),
        serde_json::json!({"request_uri": long, "expires_in": 60}),
        serde_json::json!({"request_uri": "", "expires_in": 60}),
        serde_json::json!({"request_uri": ["urn:MARK:1"], "expires_in": 60}),
        serde_json::json!({"request_uri": "urn:MARK:1", "expires_in": 0}),
        serde_json::json!({"request_uri": "urn:MARK:1", "expires_in": -60}),
        serde_json::json!({"request_uri": "urn:MARK:1", "expires_in": 0.5}),
        serde_json::json!({"request_uri": "urn:MARK:1", "expires_in": "60"}),
        serde_json::json!({"request_uri": "urn:MARK:1", "expires_in": null}),
        serde_json::json!({"request_uri": "urn:MARK:1"}),
    ];
    for body in bad {
        let p = provider(serde_json::json!({}), answer(201, body.clone())).await;
        let err = start(plain_pushed(&p).await).await.refused();
        assert!(
            matches!(
                &err,
                Error::InvalidResponse(Endpoint::PushedAuthorization, _)
            ),
            "{body}: {err:?}"
        );
        assert!(!err.to_string().contains("MARK"), "{body}: {err}");
        assert!(!format!("{err:?}").contains("MARK"), "{body}: {err:?}");
    }
    let p = provider(
        serde_json::json!({}),
        answer(
            201,
            serde_json::json!({"request_uri": "urn:x:1", "expires_in": 1e300}),
        ),
    )
    .await;
    let (running, url) = start(plain_pushed(&p).await).await.shown();
    running.abort();
    assert!(url.contains("request_uri=urn%3Ax%3A1"), "{url}");
}

/// RFC 9126 §2.2 answers `201`; a `200` with the same body is taken (as lenient
/// peers do). A redirect (`307` to another server) is not followed: the client
/// assertion is not sent to a host the metadata did not name, and the login fails
/// with the PAR endpoint's status.
#[tokio::test]
async fn a_push_answered_200_is_taken_and_a_redirect_is_not_followed() {
    let p = provider(
        serde_json::json!({}),
        answer(
            200,
            serde_json::json!({"request_uri": "urn:x:200", "expires_in": 60}),
        ),
    )
    .await;
    let (running, url) = start(plain_pushed(&p).await).await.shown();
    running.abort();
    assert!(url.contains("request_uri=urn%3Ax%3A200"), "{url}");

    let elsewhere = Arc::new(AtomicUsize::new(0));
    let hits = elsewhere.clone();
    let other = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_url = format!("http://{}/par", other.local_addr().unwrap());
    let app = Router::new().route(
        "/par",
        post(move || {
            hits.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::CREATED }
        }),
    );
    tokio::spawn(async move { axum::serve(other, app).await });
    let p = provider(
        serde_json::json!({}),
        Arc::new(move |_| {
            (
                StatusCode::TEMPORARY_REDIRECT,
                [("location", other_url.clone())],
            )
                .into_response()
        }),
    )
    .await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    let login = endpoint.authorization_code().unwrap().fapi2().unwrap();
    let err = start(login).await.refused();
    assert!(
        matches!(&err, Error::TokenEndpoint(e) if e.status == 307),
        "{err:?}"
    );
    assert_eq!(
        elsewhere.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

// ---------------------------------------------------------------------------------
// One request per login; the request object's claims.
// ---------------------------------------------------------------------------------

/// Two logins push two requests (FAPI 2.0 §5.3.3.2: a PKCE challenge "specifically
/// for each authorization request"): each browser URL carries its own `request_uri`,
/// and the request objects differ in `state`, challenge and `jti` (RFC 9101 §10.2
/// replay). Each request object's `aud` is the issuer as a string, `iss` and
/// `client_id` the client, `exp - nbf` its lifetime (at most 60 minutes, Message
/// Signing), and it carries neither `request` nor `request_uri` (RFC 9101 §4).
#[tokio::test]
async fn each_login_pushes_a_fresh_signed_request() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    let login = endpoint
        .authorization_code()
        .unwrap()
        .signed_request_object()
        .request_object_lifetime(Duration::from_secs(3600))
        .fapi2()
        .unwrap();
    let mut seen_uris = Vec::new();
    for _ in 0..2 {
        let (running, url) = start(login.clone()).await.shown();
        running.abort();
        seen_uris.push(field(&query_of(&url), "request_uri").unwrap().to_owned());
    }
    assert_eq!(seen_uris, ["urn:x:0", "urn:x:1"]);
    let seen = p.seen.lock().unwrap();
    let claims: Vec<serde_json::Value> = seen
        .pushed
        .iter()
        .map(|(form, _)| {
            assert_eq!(count(form, "request"), 1);
            assert!(field(form, "request_uri").is_none());
            jwt_claims(field(form, "request").unwrap())
        })
        .collect();
    for name in ["state", "code_challenge", "jti"] {
        assert_ne!(claims[0][name], claims[1][name], "{name} reused");
    }
    for c in &claims {
        assert_eq!(c["aud"], serde_json::Value::String(p.issuer.clone()));
        assert_eq!(c["iss"], "fapi-client");
        assert_eq!(c["client_id"], "fapi-client");
        assert_eq!(
            c["exp"].as_u64().unwrap() - c["nbf"].as_u64().unwrap(),
            3600
        );
        assert!(c.get("request").is_none() && c.get("request_uri").is_none());
    }
}

/// RFC 9126 §2.1: `request_uri` "MUST NOT be provided" in a pushed request, and
/// RFC 9101 §4: a request object has neither `request` nor `request_uri`. Extra
/// parameters of those names (given with `param`) are not pushed: the login
/// refuses them before anything is sent.
#[tokio::test]
async fn request_and_request_uri_parameters_are_never_pushed() {
    for (name, signed) in [
        ("request_uri", false),
        ("request_uri", true),
        ("request", false),
        ("request", true),
    ] {
        let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
        let (endpoint, _) = fapi_endpoint(&p).await;
        let mut login = endpoint
            .authorization_code()
            .unwrap()
            .fapi2()
            .unwrap()
            .param(name, "urn:attacker:1");
        if signed {
            login = login.signed_request_object();
        }
        let err = start(login).await.refused();
        assert!(
            matches!(&err, Error::Configuration(m) if m.contains(name)),
            "{name} (signed {signed}): {err:?}"
        );
        assert!(p.seen.lock().unwrap().pushed.is_empty(), "{name}: pushed");
    }
}

// ---------------------------------------------------------------------------------
// The preset: settings changed after fapi2().
// ---------------------------------------------------------------------------------

/// Every setting of the login that comes after `fapi2()` is judged when the login
/// starts: a `response_type` or `code_challenge_method` parameter asking for
/// another, an RS256 request object key, an over-long request object: refused with
/// nothing pushed. Parameters the login sets itself (`redirect_uri`, `state`,
/// `client_id`, `dpop_jkt`, …) given again are not pushed: the login's own go, once
/// each, and the browser still gets only `client_id` and `request_uri`.
#[tokio::test]
async fn settings_after_fapi2_cannot_weaken_the_request() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let (endpoint, dpop) = fapi_endpoint(&p).await;
    let base = endpoint.authorization_code().unwrap().fapi2().unwrap();
    let rs256 = AssertionKey::from_pem(Algorithm::RS256, &key("rsa.key")).unwrap();
    let refused = [
        base.clone().param("response_type", "token"),
        base.clone().param("code_challenge_method", "plain"),
        base.clone().request_object_key(rs256),
        base.clone()
            .signed_request_object()
            .request_object_lifetime(Duration::from_secs(3601)),
    ];
    for login in refused {
        let err = start(login).await.refused();
        assert!(
            matches!(&err, Error::Configuration(m) if m.starts_with("FAPI 2.0: ")),
            "{err:?}"
        );
    }
    assert!(p.seen.lock().unwrap().pushed.is_empty());

    let login = base
        .param("redirect_uri", "https://evil.example/cb")
        .param("state", "fixed-state")
        .param("code_challenge", "fixed-challenge")
        .param("client_id", "other-client")
        .param("dpop_jkt", "attacker-thumbprint")
        .param("scope", "admin");
    let (running, url) = start(login).await.shown();
    running.abort();
    let names: Vec<String> = query_of(&url).into_iter().map(|(k, _)| k).collect();
    assert_eq!(names, ["client_id", "request_uri"], "{url}");
    assert_eq!(field(&query_of(&url), "client_id"), Some("fapi-client"));
    let (pushed, _) = p.seen.lock().unwrap().pushed[0].clone();
    for name in [
        "redirect_uri",
        "state",
        "code_challenge",
        "client_id",
        "dpop_jkt",
        "response_type",
        "code_challenge_method",
    ] {
        assert_eq!(count(&pushed, name), 1, "{name}: {pushed:?}");
    }
    assert!(field(&pushed, "redirect_uri")
        .unwrap()
        .starts_with("http://127.0.0.1:"));
    assert_ne!(field(&pushed, "state"), Some("fixed-state"));
    assert_ne!(field(&pushed, "code_challenge"), Some("fixed-challenge"));
    assert_eq!(field(&pushed, "client_id"), Some("fapi-client"));
    assert_eq!(field(&pushed, "dpop_jkt"), Some(dpop.thumbprint()));
    assert_eq!(field(&pushed, "response_type"), Some("code"));
    assert_eq!(field(&pushed, "code_challenge_method"), Some("S256"));
}

/// FAPI 2.0 §5.4: RSA keys of at least 2048 bits. A 1024-bit RSA key for the
/// client assertions or the request objects is refused (at load or by `fapi2()`).
#[tokio::test]
async fn fapi2_refuses_a_1024_bit_rsa_key() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let small = match AssertionKey::from_pem(Algorithm::PS256, &key("rsa1024.key")) {
        // Refused at load (the backend will not sign with it): nothing to configure.
        Err(err) => {
            assert!(matches!(err, Error::Configuration(_)), "{err:?}");
            return;
        }
        Ok(small) => small,
    };
    let (endpoint, _) = fapi_endpoint(&p).await;
    let as_request_key = endpoint
        .clone()
        .authorization_code()
        .unwrap()
        .request_object_key(small.clone())
        .fapi2();
    assert!(
        matches!(&as_request_key, Err(Error::Configuration(_))),
        "{as_request_key:?}"
    );
    let as_assertion = endpoint
        .auth_method(ClientAssertion::private_key(small).audience_issuer())
        .authorization_code()
        .unwrap()
        .fapi2();
    assert!(
        matches!(&as_assertion, Err(Error::Configuration(_))),
        "{as_assertion:?}"
    );
}

/// FAPI 2.0 §5.3.3.1: access tokens sender-constrained. `certificate_bound_tokens()`
/// with an HTTP client that presents no certificate cannot bind anything: the
/// preset refuses it (the default `HttpClient` has none).
#[tokio::test]
async fn fapi2_refuses_certificate_bound_tokens_without_a_certificate() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let base = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("fapi-client")
        .auth_method(ClientAssertion::private_key(es256()).audience_issuer());
    for endpoint in [
        base.clone().certificate_bound_tokens(),
        base.clone().auth_method(TokenEndpointAuth::TlsClientAuth),
        base.clone()
            .auth_method(TokenEndpointAuth::SelfSignedTlsClientAuth)
            .http_client(tower_bearer::HttpClient::new()),
    ] {
        let result = endpoint.authorization_code().unwrap().fapi2();
        assert!(
            matches!(&result, Err(Error::Configuration(m)) if m.contains("client certificate")),
            "{result:?}"
        );
    }
    // A client of the caller's own (its TLS unseen) is taken on trust.
    let opaque = tower_bearer::HttpClient::from_service(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>(),
    );
    base.certificate_bound_tokens()
        .http_client(opaque)
        .authorization_code()
        .unwrap()
        .fapi2()
        .unwrap();
}

// ---------------------------------------------------------------------------------
// iss on the redirect (RFC 9207; FAPI 2.0 §5.3.3.2).
// ---------------------------------------------------------------------------------

/// Starts a FAPI 2.0 login of `p`, sends the redirect with `extra` (an encoded
/// query suffix) after the right `state`, and returns how the login ended.
async fn fapi_redirect(p: &Provider, extra: &str) -> (u16, Result<Token, Error>) {
    let (endpoint, _) = fapi_endpoint(p).await;
    let login = endpoint.authorization_code().unwrap().fapi2().unwrap();
    let before = p.seen.lock().unwrap().pushed.len();
    let (running, _) = start(login).await.shown();
    let (pushed, _) = p.seen.lock().unwrap().pushed[before].clone();
    let query = format!(
        "{}&{extra}",
        enc(&[("state", field(&pushed, "state").unwrap())])
    );
    let status = redirect_raw(field(&pushed, "redirect_uri").unwrap(), &query).await;
    (status, end(running).await)
}

/// `iss` is compared exactly with the discovered issuer (RFC 9207 §2.4, simple
/// string comparison after form-decoding): a trailing slash, another case, a
/// second `iss`, or none at all on a code or on an error are refused under the
/// profile, and no code is exchanged. The exact issuer, percent-encoded or not,
/// passes; an error with it is the provider's error.
#[tokio::test]
async fn fapi2_compares_iss_exactly() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let upper = p.issuer.replace("http://", "HTTP://");
    let refused = [
        enc(&[("code", "c1"), ("iss", &format!("{}/", p.issuer))]),
        enc(&[("code", "c1"), ("iss", &upper)]),
        enc(&[("code", "c1"), ("iss", &format!("{} ", p.issuer))]),
        enc(&[
            ("code", "c1"),
            ("iss", &p.issuer),
            ("iss", "https://evil.example"),
        ]),
        enc(&[
            ("code", "c1"),
            ("iss", "https://evil.example"),
            ("iss", &p.issuer),
        ]),
        enc(&[("code", "c1")]),
        enc(&[("error", "access_denied")]),
        enc(&[("error", "access_denied"), ("iss", "https://evil.example")]),
    ];
    for query in &refused {
        let (_, result) = fapi_redirect(&p, query).await;
        assert!(
            matches!(
                &result,
                Err(Error::InvalidResponse(Endpoint::Authorization, _))
            ),
            "{query}: {result:?}"
        );
    }
    assert!(
        p.seen.lock().unwrap().tokens.is_empty(),
        "a code was exchanged"
    );

    let (_, result) =
        fapi_redirect(&p, &enc(&[("error", "access_denied"), ("iss", &p.issuer)])).await;
    assert!(matches!(result, Err(Error::AccessDenied(_))), "{result:?}");
    // Every byte percent-encoded: the same issuer once decoded.
    let encoded: String = p.issuer.bytes().map(|b| format!("%{b:02X}")).collect();
    let (status, result) = fapi_redirect(&p, &format!("code=c1&iss={encoded}")).await;
    assert_eq!(status, 200);
    assert!(result.unwrap().is_dpop());
}

/// Without the profile and without the metadata's promise, an `iss` that is there
/// is still compared (RFC 9207 §2.4: "if the parameter is present").
#[tokio::test]
async fn a_wrong_iss_is_refused_even_without_the_promise() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let login = plain_pushed(&p).await;
    let (running, _) = start(login).await.shown();
    let (pushed, _) = p.seen.lock().unwrap().pushed[0].clone();
    let query = enc(&[
        ("state", field(&pushed, "state").unwrap()),
        ("code", "c1"),
        ("iss", &format!("{}/", p.issuer)),
    ]);
    redirect_raw(field(&pushed, "redirect_uri").unwrap(), &query).await;
    let result = end(running).await;
    assert!(
        matches!(&result, Err(Error::InvalidResponse(Endpoint::Authorization, m)) if m.contains("RFC 9207")),
        "{result:?}"
    );
    assert!(p.seen.lock().unwrap().tokens.is_empty());
}

// ---------------------------------------------------------------------------------
// DPoP nonces on the push (RFC 9449 §8, §10.1).
// ---------------------------------------------------------------------------------

fn use_dpop_nonce(nonce: &'static str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [("dpop-nonce", nonce), ("content-type", "application/json")],
        r#"{"error":"use_dpop_nonce","error_description":"nonce needed"}"#,
    )
        .into_response()
}

/// A PAR endpoint that asks for a nonce once gets the push again with it; one that
/// asks forever gets two pushes, not a loop, and the login fails with its code.
#[tokio::test]
async fn a_dpop_nonce_on_the_push_is_retried_once() {
    let p = provider(
        serde_json::json!({}),
        Arc::new(|n| {
            if n == 0 {
                use_dpop_nonce("n-1")
            } else {
                (
                    StatusCode::CREATED,
                    Json(serde_json::json!({"request_uri": "urn:x:ok", "expires_in": 60})),
                )
                    .into_response()
            }
        }),
    )
    .await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    let login = endpoint.authorization_code().unwrap().fapi2().unwrap();
    let (running, url) = start(login).await.shown();
    running.abort();
    assert!(url.contains("urn%3Ax%3Aok"), "{url}");
    {
        let seen = p.seen.lock().unwrap();
        assert_eq!(seen.pushed.len(), 2);
        let proof = seen.pushed[1].1["dpop"].to_str().unwrap();
        assert_eq!(jwt_claims(proof)["nonce"], "n-1");
    }

    let p = provider(serde_json::json!({}), Arc::new(|_| use_dpop_nonce("n-x"))).await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    let login = endpoint.authorization_code().unwrap().fapi2().unwrap();
    let err = start(login).await.refused();
    assert_eq!(err.oauth_code(), Some("use_dpop_nonce"), "{err:?}");
    assert_eq!(p.seen.lock().unwrap().pushed.len(), 2, "not retried once");
}

// ---------------------------------------------------------------------------------
// Secrets in errors and Debug.
// ---------------------------------------------------------------------------------

/// A PAR endpoint that refuses the push and echoes the client assertion in its
/// `error_description`: the assertion (a credential the provider accepts until it
/// expires, at its PAR and token endpoints) is never repeated whole in the error's
/// text or Debug, nor any part of it: JWT-shaped words of a provider's text are
/// redacted (before, only the 256-character cut kept the signature out, and the
/// header and claims were repeated).
#[tokio::test]
async fn a_par_endpoint_echoing_the_client_assertion_is_not_repeated_whole() {
    let sent = Arc::new(Mutex::new(String::new()));
    let keep = sent.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_url = format!("http://{}/par", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/par",
        post(move |body: Bytes| {
            let form: Form = serde_urlencoded::from_bytes(&body).unwrap();
            let assertion = field(&form, "client_assertion").unwrap().to_owned();
            *keep.lock().unwrap() = assertion.clone();
            async move {
                (
                    StatusCode::BAD_REQUEST,
                    Json(serde_json::json!({
                        "error": "invalid_request",
                        "error_description": assertion,
                    })),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let p = provider(
        serde_json::json!({"pushed_authorization_request_endpoint": echo_url}),
        pushed_as("urn:x:"),
    )
    .await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    let login = endpoint
        .authorization_code()
        .unwrap()
        .signed_request_object()
        .fapi2()
        .unwrap();
    let err = start(login).await.refused();
    assert_eq!(err.oauth_code(), Some("invalid_request"), "{err:?}");
    let assertion = sent.lock().unwrap().clone();
    let signature = assertion.rsplit('.').next().unwrap();
    assert!(signature.len() > 40, "{assertion}");
    let text = format!("{err} {err:?}");
    assert!(
        !text.contains(&assertion),
        "the assertion is repeated: {text}"
    );
    assert!(
        !text.contains(signature),
        "its signature is repeated: {text}"
    );
    // Nor any part of it: a JWT-shaped word in a provider's text is redacted.
    let payload = assertion.split('.').nth(1).unwrap();
    assert!(
        !text.contains(&payload[..16]),
        "its claims are repeated: {text}"
    );
    assert!(text.contains("[redacted]"), "{text}");
}

/// `Debug` of a login with a request object key and of its endpoint with a secret
/// shows neither the key nor the secret.
#[tokio::test]
async fn debug_of_a_login_shows_no_key_or_secret() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let login = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .client_secret("s3cret-MARK-0123456789")
        .authorization_code()
        .unwrap()
        .request_object_key(es256())
        .pushed_authorization_requests();
    let debug = format!("{login:?}");
    assert!(!debug.contains("MARK"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    assert!(!debug.contains("PRIVATE"), "{debug}");
}

// ---------------------------------------------------------------------------------
// Where the push goes: the metadata's endpoints, checked.
// ---------------------------------------------------------------------------------

/// A PAR endpoint (or its mTLS alias) in clear text to a remote host spoils the
/// discovery document; a document naming another issuer (a trailing slash) is
/// refused (FAPI 2.0 §5.3.3.1: the issuer URL and the metadata's issuer match).
#[tokio::test]
async fn clear_text_par_endpoints_and_another_issuer_spoil_discovery() {
    for doc in [
        serde_json::json!({"pushed_authorization_request_endpoint": "http://idp.example.com/par"}),
        serde_json::json!({"mtls_endpoint_aliases": {
            "pushed_authorization_request_endpoint": "http://idp.example.com/par"
        }}),
        serde_json::json!({"issuer": "{issuer}/"}),
    ] {
        let p = provider(doc.clone(), pushed_as("urn:x:")).await;
        let err = TokenEndpoint::discover(&p.issuer).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidResponse(Endpoint::Discovery, _)),
            "{doc}: {err:?}"
        );
    }
}

/// A PAR endpoint on another host than the issuer's (the metadata is the authority,
/// RFC 8414; FAPI 2.0 §5.3.3.1) gets the push; its client assertion names the
/// issuer alone as `aud` (the audience-injection defence), so that host cannot
/// replay it as a token endpoint of another provider.
#[tokio::test]
async fn a_par_endpoint_elsewhere_gets_an_assertion_for_the_issuer() {
    let other = provider(serde_json::json!({}), pushed_as("urn:other:")).await;
    let p = provider(
        serde_json::json!({
            "pushed_authorization_request_endpoint": format!("{}/par", other.issuer)
        }),
        pushed_as("urn:x:"),
    )
    .await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    let login = endpoint.authorization_code().unwrap().fapi2().unwrap();
    let (running, url) = start(login).await.shown();
    running.abort();
    assert!(url.contains("urn%3Aother%3A0"), "{url}");
    assert!(p.seen.lock().unwrap().pushed.is_empty());
    let (pushed, headers) = other.seen.lock().unwrap().pushed[0].clone();
    let claims = jwt_claims(field(&pushed, "client_assertion").unwrap());
    assert_eq!(claims["aud"], serde_json::Value::String(p.issuer.clone()));
    let proof = jwt_claims(headers["dpop"].to_str().unwrap());
    assert_eq!(proof["htu"], format!("{}/par", other.issuer));
}

/// FAPI 2.0 §5.3.3.1: the client uses only the metadata of the provider's own
/// document. A discovered token endpoint with an authorization endpoint given by
/// hand (`AuthorizationCode::new`) that is not the one the metadata names is
/// refused, as a token endpoint that was not discovered is; the metadata's own
/// passes.
#[tokio::test]
async fn fapi2_refuses_an_authorization_endpoint_the_metadata_does_not_name() {
    let p = provider(serde_json::json!({}), pushed_as("urn:x:")).await;
    let (endpoint, _) = fapi_endpoint(&p).await;
    for elsewhere in [
        "http://127.0.0.1:9/authorize/",
        "http://127.0.0.1:9/authorize?prompt=none",
        "http://127.0.0.1:10/authorize",
    ] {
        let login = AuthorizationCode::new(endpoint.clone(), elsewhere).unwrap();
        let result = login.fapi2();
        assert!(
            matches!(&result, Err(Error::Configuration(m)) if m.contains("authorization_endpoint")),
            "{elsewhere}: {result:?}"
        );
    }
    AuthorizationCode::new(endpoint, "http://127.0.0.1:9/authorize")
        .unwrap()
        .fapi2()
        .unwrap();
}

/// A PAR answer naming `request_uri` twice (JSON with duplicate members: which one
/// counts depends on the reader) is refused, or at most one of them reaches the
/// browser, alone.
#[tokio::test]
async fn a_pushed_answer_with_two_request_uris() {
    let p = provider(
        serde_json::json!({}),
        Arc::new(|_| {
            (
                StatusCode::CREATED,
                [("content-type", "application/json")],
                r#"{"request_uri":"urn:x:a","expires_in":60,"request_uri":"urn:x:b"}"#,
            )
                .into_response()
        }),
    )
    .await;
    match start(plain_pushed(&p).await).await {
        Start::Ended(result) => assert!(
            matches!(
                &result,
                Err(Error::InvalidResponse(Endpoint::PushedAuthorization, _))
            ),
            "{result:?}"
        ),
        Start::Shown(running, url) => {
            running.abort();
            let query = query_of(&url);
            assert_eq!(count(&query, "request_uri"), 1, "{url}");
            assert_eq!(query.len(), 2, "{url}");
        }
    }
}
