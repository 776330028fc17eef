//! Pushed authorization requests (RFC 9126), signed request objects (RFC 9101),
//! `dpop_jkt`, mTLS endpoint aliases (RFC 8705 §5) and the FAPI 2.0 preset
//! (`AuthorizationCode::fapi2`), against a provider on 127.0.0.1: its discovery
//! document, a pushed authorization request endpoint that can fail or lie, and a
//! token endpoint. The test plays the browser: it reads the pushed request the
//! provider got and sends the redirect to the login's real listener. The same login
//! against oidc-provider with its FAPI 2.0 profile on is in `tests/interop_fapi.rs`.
#![cfg(all(feature = "jwt", feature = "dpop"))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use tokio::sync::mpsc;
use tower_bearer::client::source::AuthorizationCode;
use tower_bearer::client::{
    Algorithm, AssertionKey, ClientAssertion, DpopKey, TokenEndpoint, TokenEndpointAuth,
};
use tower_bearer::{Endpoint, Error, Token};

type Fields = HashMap<String, String>;

/// How the pushed authorization request endpoint answers.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Par {
    /// `201` with a `request_uri` and `expires_in`.
    Normal,
    /// `500` with an HTML page that quotes a secret-looking value.
    Fails,
    /// `201` with a body that is not JSON.
    Junk,
    /// `201` with `expires_in` but no `request_uri`.
    NoRequestUri,
    /// `400` `invalid_request` with a description.
    Refuses,
}

/// The provider: what it was sent, and how it answers.
#[derive(Default)]
struct Seen {
    /// The forms pushed to `/par`, and their `DPoP` header.
    pushed: Vec<(Fields, Option<String>)>,
    /// The forms pushed to the mTLS alias `/mtls/par`.
    pushed_mtls: Vec<Fields>,
    /// The token requests, and which endpoint took them (`/token`, `/mtls/token`).
    tokens: Vec<(String, Fields)>,
}

struct Provider {
    issuer: String,
    seen: Arc<Mutex<Seen>>,
}

/// A provider on 127.0.0.1 whose discovery document is `doc` with `issuer` and
/// its endpoints filled in (a `null` member is dropped).
async fn provider(par: Par, doc: serde_json::Value) -> Provider {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let mut document = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}/token"),
        "authorization_endpoint": "http://127.0.0.1:9/authorize",
        "pushed_authorization_request_endpoint": format!("{issuer}/par"),
        "revocation_endpoint": format!("{issuer}/revoke"),
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
    let (s1, s2, s3, s4) = (seen.clone(), seen.clone(), seen.clone(), seen.clone());
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
            post(move |headers: HeaderMap, Form(form): Form<Fields>| {
                let dpop = headers.get("dpop").map(|v| v.to_str().unwrap().to_owned());
                s1.lock().unwrap().pushed.push((form, dpop));
                async move { par_answer(par) }
            }),
        )
        .route(
            "/mtls/par",
            post(move |Form(form): Form<Fields>| {
                s2.lock().unwrap().pushed_mtls.push(form);
                async move { par_answer(Par::Normal) }
            }),
        )
        .route(
            "/token",
            post(move |headers: HeaderMap, Form(form): Form<Fields>| {
                s3.lock().unwrap().tokens.push(("/token".into(), form));
                async move { token_answer(&headers) }
            }),
        )
        .route(
            "/mtls/token",
            post(move |headers: HeaderMap, Form(form): Form<Fields>| {
                s4.lock().unwrap().tokens.push(("/mtls/token".into(), form));
                async move { token_answer(&headers) }
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Provider { issuer, seen }
}

fn par_answer(par: Par) -> Response {
    match par {
        Par::Normal => (
            StatusCode::CREATED,
            Json(serde_json::json!({"request_uri": "urn:example:pushed-1", "expires_in": 60})),
        )
            .into_response(),
        Par::Fails => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/html")],
            "<html>oops s3cr3t-internal-detail</html>",
        )
            .into_response(),
        Par::Junk => (
            StatusCode::CREATED,
            [("content-type", "application/json")],
            "{\"request_uri\": s3cr3t-internal-detail",
        )
            .into_response(),
        Par::NoRequestUri => (
            StatusCode::CREATED,
            Json(serde_json::json!({"expires_in": 60, "note": "s3cr3t-internal-detail"})),
        )
            .into_response(),
        Par::Refuses => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({
                "error": "invalid_request",
                "error_description": "redirect_uri not registered"
            })),
        )
            .into_response(),
    }
}

/// Any code is good here: the login's own checks are what is tested.
fn token_answer(headers: &HeaderMap) -> Response {
    let kind = if headers.contains_key("dpop") {
        "DPoP"
    } else {
        "Bearer"
    };
    Json(serde_json::json!({"access_token": "at-1", "token_type": kind, "expires_in": 300}))
        .into_response()
}

/// An HTTP client whose TLS the crate cannot see (as one of the caller's with its
/// own client certificate): `fapi2()` takes its mTLS on trust. The default
/// `HttpClient` presents no certificate, and `fapi2()` refuses mTLS with it.
fn opaque_http() -> tower_bearer::HttpClient {
    tower_bearer::HttpClient::from_service(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>(),
    )
}

fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn es256() -> AssertionKey {
    AssertionKey::from_pem(Algorithm::ES256, &key("ec256.key"))
        .unwrap()
        .key_id("fapi-ec")
}

/// The discovered endpoint of `p` for `fapi-client`, authenticating with
/// `private_key_jwt` (ES256).
async fn discovered(p: &Provider) -> TokenEndpoint {
    TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("fapi-client")
        .auth_method(ClientAssertion::private_key(es256()).audience_issuer())
}

/// A FAPI 2.0 login of `p` with a DPoP key.
async fn fapi_login(p: &Provider) -> (AuthorizationCode, DpopKey) {
    let dpop = DpopKey::generate().unwrap();
    let login = discovered(p)
        .await
        .dpop(dpop.clone())
        .authorization_code()
        .unwrap();
    (login, dpop)
}

/// Starts `login` and returns the URL it shows (after its push, if any).
async fn start(
    login: AuthorizationCode,
) -> (
    tokio::task::JoinHandle<Result<Token, Error>>,
    Option<String>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let login = login.show(move |url| {
        let _ = tx.send(url.to_owned());
    });
    let running = tokio::spawn(async move { login.login().await });
    let url = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .ok()
        .flatten();
    (running, url)
}

async fn end(running: tokio::task::JoinHandle<Result<Token, Error>>) -> Result<Token, Error> {
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the login did not end")
        .unwrap()
}

fn query_of(url: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(url.split_once('?').unwrap().1).unwrap()
}

/// The claims and header of a JWT, unverified.
fn jwt_parts(jwt: &str) -> (serde_json::Value, serde_json::Value) {
    let part = |i: usize| {
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            jwt.split('.').nth(i).unwrap(),
        )
        .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    (part(0), part(1))
}

/// The browser brings the redirect to the login's listener.
async fn redirect(redirect_uri: &str, params: &[(&str, &str)]) -> u16 {
    let url = format!(
        "{redirect_uri}?{}",
        serde_urlencoded::to_string(params).unwrap()
    );
    reqwest::get(url).await.unwrap().status().as_u16()
}

// ---------------------------------------------------------------------------------
// Pushed authorization requests, signed request objects, dpop_jkt.
// ---------------------------------------------------------------------------------

/// `require_pushed_authorization_requests` in the metadata is enough: a plain
/// public-client login pushes its parameters (with `client_id` once), and the
/// browser gets only `client_id` and the provider's `request_uri`; the redirect's
/// code is exchanged with the verifier whose challenge was pushed.
#[tokio::test]
async fn the_metadata_demand_makes_the_login_push() {
    let p = provider(
        Par::Normal,
        serde_json::json!({"require_pushed_authorization_requests": true}),
    )
    .await;
    let login = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .auth_method(TokenEndpointAuth::None)
        .authorization_code()
        .unwrap()
        .scope("read");
    let (running, url) = start(login).await;
    let url = url.expect("a URL");
    assert_eq!(
        query_of(&url),
        [
            ("client_id".to_owned(), "cli".to_owned()),
            ("request_uri".to_owned(), "urn:example:pushed-1".to_owned())
        ],
        "{url}"
    );
    let (pushed, dpop) = p.seen.lock().unwrap().pushed[0].clone();
    assert!(dpop.is_none(), "no DPoP key, no proof");
    assert_eq!(pushed["client_id"], "cli");
    assert_eq!(pushed["response_type"], "code");
    assert_eq!(pushed["code_challenge_method"], "S256");
    assert_eq!(pushed["scope"], "read");
    assert!(!pushed.contains_key("dpop_jkt"));
    let status = redirect(
        &pushed["redirect_uri"],
        &[("code", "c1"), ("state", &pushed["state"])],
    )
    .await;
    assert_eq!(status, 200);
    end(running).await.unwrap();
    let seen = p.seen.lock().unwrap();
    let (_, exchange) = &seen.tokens[0];
    assert_eq!(exchange["grant_type"], "authorization_code");
    let verifier = &exchange["code_verifier"];
    let challenge = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        <sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()),
    );
    assert_eq!(challenge, pushed["code_challenge"]);
}

/// Without the metadata's demand, nothing is pushed unless asked: the parameters
/// are in the URL; `pushed_authorization_requests()` pushes them.
#[tokio::test]
async fn pushing_is_asked_for_or_demanded() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let base = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .auth_method(TokenEndpointAuth::None)
        .authorization_code()
        .unwrap();
    let (running, url) = start(base.clone()).await;
    assert!(url.unwrap().contains("code_challenge="));
    running.abort();
    assert!(p.seen.lock().unwrap().pushed.is_empty());
    let (running, url) = start(base.pushed_authorization_requests()).await;
    assert!(url.unwrap().contains("request_uri="));
    running.abort();
    assert_eq!(p.seen.lock().unwrap().pushed.len(), 1);
}

/// A signed request object (RFC 9101), pushed: the push has `client_id`, the client
/// assertion, and `request`, nothing else; the request is an `oauth-authz-req+jwt`
/// signed by the client's ES256 key (verified with its public half), `iss` the
/// client, `aud` the issuer, `exp` 5 minutes after `nbf`, a `jti`, and every
/// parameter (the PKCE challenge, `state`, `dpop_jkt` the DPoP key's thumbprint).
/// The push carries a DPoP proof (RFC 9449 §10.1) for the PAR endpoint.
#[tokio::test]
async fn a_signed_request_object_is_pushed_with_a_dpop_proof() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let (login, dpop) = fapi_login(&p).await;
    let login = login
        .scope("openid")
        .resource("https://api.example")
        .resource("https://other.example")
        .signed_request_object()
        .fapi2()
        .unwrap();
    let (running, url) = start(login).await;
    assert!(url
        .unwrap()
        .contains("request_uri=urn%3Aexample%3Apushed-1"));
    running.abort();
    let (pushed, proof) = p.seen.lock().unwrap().pushed[0].clone();
    let mut names: Vec<&str> = pushed.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "client_assertion",
            "client_assertion_type",
            "client_id",
            "request"
        ]
    );
    let (header, claims) = jwt_parts(&pushed["request"]);
    assert_eq!(header["typ"], "oauth-authz-req+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "fapi-ec");
    let public = jsonwebtoken::DecodingKey::from_ec_pem(&key("ec256.pub.pem")).unwrap();
    let (message, signature) = pushed["request"].rsplit_once('.').unwrap();
    assert!(jsonwebtoken::crypto::verify(
        signature,
        message.as_bytes(),
        &public,
        jsonwebtoken::Algorithm::ES256
    )
    .unwrap());
    assert_eq!(claims["iss"], "fapi-client");
    assert_eq!(claims["client_id"], "fapi-client");
    assert_eq!(claims["aud"], p.issuer);
    assert_eq!(claims["response_type"], "code");
    assert_eq!(claims["code_challenge_method"], "S256");
    assert!(claims["state"].as_str().is_some_and(|s| s.len() >= 43));
    assert!(claims["jti"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["nbf"].as_u64().unwrap(),
        300
    );
    assert_eq!(claims["iat"], claims["nbf"]);
    assert_eq!(
        claims["resource"],
        serde_json::json!(["https://api.example", "https://other.example"])
    );
    assert_eq!(claims["dpop_jkt"], dpop.thumbprint());
    let (_, proof_claims) = jwt_parts(&proof.expect("a DPoP proof on the push"));
    assert_eq!(proof_claims["htu"], format!("{}/par", p.issuer));
    assert_eq!(proof_claims["htm"], "POST");
}

/// JAR without PAR: the URL has `client_id` and `request` only; the request object
/// carries the parameters.
#[tokio::test]
async fn a_signed_request_object_in_the_url() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let login = discovered(&p)
        .await
        .authorization_code()
        .unwrap()
        .signed_request_object();
    let (running, url) = start(login).await;
    running.abort();
    let query = query_of(&url.unwrap());
    let names: Vec<&str> = query.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["client_id", "request"]);
    let (_, claims) = jwt_parts(&query[1].1);
    assert!(claims["redirect_uri"]
        .as_str()
        .is_some_and(|u| u.starts_with("http://127.0.0.1:")));
    assert_eq!(claims["code_challenge_method"], "S256");
    assert!(p.seen.lock().unwrap().pushed.is_empty());
}

/// A request object needs a key: a client without `private_key_jwt` and no
/// `request_object_key` gets a clear configuration error, before anything is sent.
#[tokio::test]
async fn a_request_object_without_a_key_is_a_configuration_error() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let login = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .auth_method(TokenEndpointAuth::None)
        .authorization_code()
        .unwrap()
        .signed_request_object();
    let (running, url) = start(login).await;
    assert!(url.is_none());
    let err = end(running).await.unwrap_err();
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("request_object_key")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// A pushed authorization request endpoint that fails or lies.
// ---------------------------------------------------------------------------------

async fn pushed_error(par: Par) -> Error {
    let p = provider(par, serde_json::json!({})).await;
    let login = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .auth_method(TokenEndpointAuth::None)
        .authorization_code()
        .unwrap()
        .pushed_authorization_requests();
    let (running, url) = start(login).await;
    assert!(url.is_none(), "no URL shown when the push failed");
    let err = end(running).await.unwrap_err();
    assert!(
        !err.to_string().contains("s3cr3t-internal-detail"),
        "outside data quoted: {err}"
    );
    err
}

/// A `500` with a page: a token-endpoint-style error naming the status and the PAR
/// endpoint's URL, retryable, the page not quoted.
#[tokio::test]
async fn a_pushed_request_answered_500() {
    let err = pushed_error(Par::Fails).await;
    match &err {
        Error::TokenEndpoint(e) => {
            assert_eq!(e.status, 500);
            assert!(
                e.url.as_deref().is_some_and(|u| u.ends_with("/par")),
                "{e:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_retryable());
}

/// `201` with a body that is not JSON: an invalid answer of the PAR endpoint.
#[tokio::test]
async fn a_pushed_request_answered_junk() {
    let err = pushed_error(Par::Junk).await;
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::PushedAuthorization, m) if m.contains("not a JSON object")),
        "{err}"
    );
}

/// `201` without `request_uri`: an invalid answer naming the missing field.
#[tokio::test]
async fn a_pushed_request_answered_without_request_uri() {
    let err = pushed_error(Par::NoRequestUri).await;
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::PushedAuthorization, m) if m.contains("no request_uri")),
        "{err}"
    );
}

/// An OAuth error object (`400 invalid_request`): its code.
#[tokio::test]
async fn a_pushed_request_refused() {
    let err = pushed_error(Par::Refuses).await;
    assert_eq!(err.oauth_code(), Some("invalid_request"), "{err}");
}

/// Pushing with no PAR endpoint in the metadata: a configuration error.
#[tokio::test]
async fn pushing_without_an_endpoint() {
    let p = provider(
        Par::Normal,
        serde_json::json!({"pushed_authorization_request_endpoint": null}),
    )
    .await;
    let login = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("cli")
        .authorization_code()
        .unwrap()
        .pushed_authorization_requests();
    let (running, _) = start(login).await;
    let err = end(running).await.unwrap_err();
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("pushed_authorization_request_endpoint")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// mTLS endpoint aliases (RFC 8705 §5).
// ---------------------------------------------------------------------------------

/// A client authenticating with its certificate uses the aliases: the token
/// endpoint, the revocation endpoint and the PAR endpoint; the same registration
/// with `private_key_jwt` uses the plain ones, and with `certificate_bound_tokens()`
/// the aliases again. Requests go to the aliased endpoints of the provider.
#[tokio::test]
async fn mtls_clients_use_the_endpoint_aliases() {
    let p = provider(
        Par::Normal,
        serde_json::json!({"mtls_endpoint_aliases": {
            "token_endpoint": "{issuer}/mtls/token",
            "pushed_authorization_request_endpoint": "{issuer}/mtls/par",
            "revocation_endpoint": "{issuer}/mtls/revoke",
        }}),
    )
    .await;
    let plain = discovered(&p).await;
    assert_eq!(plain.url().to_string(), format!("{}/token", p.issuer));
    assert_eq!(
        plain.revocation().unwrap().url().to_string(),
        format!("{}/revoke", p.issuer)
    );
    let tls = plain
        .clone()
        .auth_method(TokenEndpointAuth::SelfSignedTlsClientAuth)
        .http_client(opaque_http());
    assert_eq!(tls.url().to_string(), format!("{}/mtls/token", p.issuer));
    assert_eq!(
        tls.revocation().unwrap().url().to_string(),
        format!("{}/mtls/revoke", p.issuer)
    );
    let bound = plain.clone().certificate_bound_tokens();
    assert_eq!(bound.url().to_string(), format!("{}/mtls/token", p.issuer));

    // For real: the grant and the push go to the aliases.
    tower_bearer::client::TokenSource::fetch(&tls.refresh_token("rt-1"), None)
        .await
        .unwrap();
    let login = tls.authorization_code().unwrap().fapi2().unwrap();
    let (running, url) = start(login).await;
    assert!(url.unwrap().contains("request_uri="));
    running.abort();
    let seen = p.seen.lock().unwrap();
    assert_eq!(seen.tokens.len(), 1);
    assert_eq!(seen.tokens[0].0, "/mtls/token");
    assert_eq!(seen.tokens[0].1["client_id"], "fapi-client");
    assert!(!seen.tokens[0].1.contains_key("client_assertion"));
    assert_eq!(seen.pushed_mtls.len(), 1);
    assert!(seen.pushed.is_empty(), "nothing to the plain PAR endpoint");
}

/// An alias that is not https (nor loopback http) spoils the document, as any
/// endpoint URL does.
#[tokio::test]
async fn a_clear_text_alias_is_refused() {
    let p = provider(
        Par::Normal,
        serde_json::json!({"mtls_endpoint_aliases": {"token_endpoint": "http://idp.example.com/token"}}),
    )
    .await;
    let err = TokenEndpoint::discover(&p.issuer).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Discovery, m) if m.contains("mtls_endpoint_aliases.token_endpoint")),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------
// The FAPI 2.0 preset: what it turns on, and each refusal.
// ---------------------------------------------------------------------------------

/// `fapi2()`'s refusal, with the text that names the rule.
fn refused(result: Result<AuthorizationCode, Error>) -> String {
    match result {
        Err(Error::Configuration(m)) => {
            assert!(m.starts_with("FAPI 2.0: "), "{m}");
            m
        }
        Err(other) => panic!("not a configuration error: {other:?}"),
        Ok(_) => panic!("accepted"),
    }
}

/// The reference configuration is accepted: private_key_jwt (ES256), DPoP (ES256),
/// a discovered provider with a PAR endpoint and S256.
#[tokio::test]
async fn fapi2_accepts_the_profile() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let (login, _) = fapi_login(&p).await;
    login.fapi2().unwrap();
}

/// §5.3: client authentication must be private_key_jwt or mTLS. A secret (basic,
/// post, client_secret_jwt) or a public client is refused.
#[tokio::test]
async fn fapi2_refuses_client_secrets_and_public_clients() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let dpop = DpopKey::generate().unwrap();
    let base = TokenEndpoint::discover(&p.issuer)
        .await
        .unwrap()
        .client_id("fapi-client")
        .dpop(dpop);
    let cases = [
        (
            base.clone().client_secret("s3cret-0123456789"),
            "client_secret_basic",
        ),
        (
            base.clone()
                .client_secret("s3cret-0123456789")
                .auth_method(TokenEndpointAuth::Post),
            "client_secret_post",
        ),
        (
            base.clone()
                .client_secret("s3cret-0123456789abcdef0123456789")
                .auth_method(ClientAssertion::client_secret()),
            "client_secret_jwt",
        ),
        (base.clone().auth_method(TokenEndpointAuth::None), "none"),
    ];
    for (endpoint, method) in cases {
        let m = refused(endpoint.authorization_code().unwrap().fapi2());
        assert!(
            m.contains("private_key_jwt or mTLS") && m.contains(method),
            "{method}: {m}"
        );
        assert!(!m.contains("s3cret"), "{m}");
    }
}

/// §5.4: JWTs signed with PS256, ES256 or EdDSA only: an RS256 client assertion
/// key, an RS256 request object key, an RS256 DPoP key or an ES384 key are refused;
/// PS256 and EdDSA pass.
#[tokio::test]
async fn fapi2_refuses_other_signing_algorithms() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let rs256 = AssertionKey::from_pem(Algorithm::RS256, &key("rsa.key")).unwrap();
    let es384 = AssertionKey::from_pem(Algorithm::ES384, &key("ec384.key")).unwrap();
    let dpop = DpopKey::generate().unwrap();
    let with_assertion = |k: AssertionKey| {
        let p = &p;
        let dpop = dpop.clone();
        async move {
            TokenEndpoint::discover(&p.issuer)
                .await
                .unwrap()
                .client_id("fapi-client")
                .auth_method(ClientAssertion::private_key(k).audience_issuer())
                .dpop(dpop)
                .authorization_code()
                .unwrap()
        }
    };
    let m = refused(with_assertion(rs256.clone()).await.fapi2());
    assert!(
        m.contains("client assertions") && m.contains("RS256"),
        "{m}"
    );
    let m = refused(with_assertion(es384).await.fapi2());
    assert!(
        m.contains("ES384") && m.contains("PS256, ES256 or EdDSA"),
        "{m}"
    );
    for ok in [
        AssertionKey::from_pem(Algorithm::PS256, &key("rsa.key")).unwrap(),
        AssertionKey::from_pem(Algorithm::EdDSA, &key("ed25519.key")).unwrap(),
    ] {
        with_assertion(ok).await.fapi2().unwrap();
    }
    let m = refused(
        with_assertion(es256())
            .await
            .request_object_key(rs256)
            .fapi2(),
    );
    assert!(m.contains("request objects") && m.contains("RS256"), "{m}");
    let rsa_dpop = DpopKey::from_pem(Algorithm::RS256, &key("rsa.key")).unwrap();
    let login = discovered(&p)
        .await
        .dpop(rsa_dpop)
        .authorization_code()
        .unwrap();
    let m = refused(login.fapi2());
    assert!(m.contains("DPoP proofs") && m.contains("RS256"), "{m}");
}

/// §5.3: a `private_key_jwt` assertion's `aud` is the issuer alone: the default
/// (the token endpoint's URL) and another fixed value are refused; the issuer,
/// given as `audience_issuer()` or as its URL, passes.
#[tokio::test]
async fn fapi2_refuses_client_assertions_for_another_audience() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let with = |assertion: ClientAssertion| {
        let p = &p;
        async move {
            TokenEndpoint::discover(&p.issuer)
                .await
                .unwrap()
                .client_id("fapi-client")
                .auth_method(assertion)
                .dpop(DpopKey::generate().unwrap())
                .authorization_code()
                .unwrap()
        }
    };
    for refused_aud in [
        ClientAssertion::private_key(es256()),
        ClientAssertion::private_key(es256()).audience(format!("{}/token", p.issuer)),
    ] {
        let m = refused(with(refused_aud).await.fapi2());
        assert!(m.contains("aud must be the issuer"), "{m}");
    }
    with(ClientAssertion::private_key(es256()).audience(p.issuer.clone()))
        .await
        .fapi2()
        .unwrap();
}

/// §5.3: tokens must be sender-constrained: private_key_jwt without DPoP or mTLS
/// is refused; with a DPoP key, or certificate-bound tokens, it passes.
#[tokio::test]
async fn fapi2_refuses_tokens_that_are_not_sender_constrained() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let m = refused(discovered(&p).await.authorization_code().unwrap().fapi2());
    assert!(m.contains("sender-constrained"), "{m}");
    discovered(&p)
        .await
        .certificate_bound_tokens()
        .http_client(opaque_http())
        .authorization_code()
        .unwrap()
        .fapi2()
        .unwrap();
    discovered(&p)
        .await
        .auth_method(TokenEndpointAuth::TlsClientAuth)
        .http_client(opaque_http())
        .authorization_code()
        .unwrap()
        .fapi2()
        .unwrap();
}

/// §5.3 and RFC 9126: pushed authorization requests are required: a provider
/// naming no PAR endpoint is refused.
#[tokio::test]
async fn fapi2_refuses_a_provider_without_pushed_requests() {
    let p = provider(
        Par::Normal,
        serde_json::json!({"pushed_authorization_request_endpoint": null}),
    )
    .await;
    let (login, _) = fapi_login(&p).await;
    let m = refused(login.fapi2());
    assert!(m.contains("pushed_authorization_request_endpoint"), "{m}");
}

/// §5.3: PKCE with S256: a provider listing only `plain`, or a
/// `code_challenge_method` parameter asking for another, is refused.
#[tokio::test]
async fn fapi2_refuses_pkce_other_than_s256() {
    let p = provider(
        Par::Normal,
        serde_json::json!({"code_challenge_methods_supported": ["plain"]}),
    )
    .await;
    let (login, _) = fapi_login(&p).await;
    let m = refused(login.fapi2());
    assert!(m.contains("S256"), "{m}");
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let (login, _) = fapi_login(&p).await;
    let m = refused(login.param("code_challenge_method", "plain").fapi2());
    assert!(m.contains("code_challenge_method"), "{m}");
}

/// §5.3: `response_type` `code` only: a parameter asking for another is refused.
#[tokio::test]
async fn fapi2_refuses_response_types_other_than_code() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let (login, _) = fapi_login(&p).await;
    let m = refused(login.param("response_type", "code id_token").fapi2());
    assert!(m.contains("response_type must be code"), "{m}");
}

/// Request objects live at most 60 minutes: 61 minutes is refused, at `fapi2()` and
/// when set after it (the login refuses to start, nothing pushed); 60 minutes
/// passes.
#[tokio::test]
async fn fapi2_refuses_request_objects_over_60_minutes() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let (login, _) = fapi_login(&p).await;
    let too_long = Duration::from_secs(61 * 60);
    let m = refused(login.clone().request_object_lifetime(too_long).fapi2());
    assert!(m.contains("60 minutes"), "{m}");
    login
        .clone()
        .request_object_lifetime(Duration::from_secs(3600))
        .fapi2()
        .unwrap();
    let late = login
        .fapi2()
        .unwrap()
        .signed_request_object()
        .request_object_lifetime(too_long);
    let (running, url) = start(late).await;
    assert!(url.is_none());
    let err = end(running).await.unwrap_err();
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("60 minutes")),
        "{err}"
    );
    assert!(p.seen.lock().unwrap().pushed.is_empty());
}

/// An endpoint that was not discovered has no issuer to check `iss` against: refused.
#[tokio::test]
async fn fapi2_refuses_an_endpoint_that_was_not_discovered() {
    let endpoint = TokenEndpoint::new("http://127.0.0.1:9/token")
        .unwrap()
        .client_id("fapi-client")
        .auth_method(ClientAssertion::private_key(es256()))
        .dpop(DpopKey::generate().unwrap());
    let login = AuthorizationCode::new(endpoint, "http://127.0.0.1:9/authorize").unwrap();
    let m = refused(login.fapi2());
    assert!(m.contains("discovered"), "{m}");
}

/// RFC 9207 under the profile: the redirect must carry `iss` even though this
/// provider's metadata does not promise it; without it the login fails and nothing
/// is exchanged. With the issuer's `iss`, the code is exchanged (with
/// private_key_jwt and a DPoP proof) for a DPoP token.
#[tokio::test]
async fn fapi2_refuses_a_redirect_without_iss() {
    let p = provider(Par::Normal, serde_json::json!({})).await;
    let (login, _) = fapi_login(&p).await;
    let login = login.fapi2().unwrap();
    assert!(!p.issuer.is_empty());
    let (running, _) = start(login.clone()).await;
    let (pushed, _) = p.seen.lock().unwrap().pushed[0].clone();
    redirect(
        &pushed["redirect_uri"],
        &[("code", "c1"), ("state", &pushed["state"])],
    )
    .await;
    let err = end(running).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Authorization, m) if m.contains("no iss")),
        "{err}"
    );
    assert!(
        p.seen.lock().unwrap().tokens.is_empty(),
        "nothing exchanged"
    );

    let (running, _) = start(login).await;
    let (pushed, _) = p.seen.lock().unwrap().pushed[1].clone();
    let status = redirect(
        &pushed["redirect_uri"],
        &[
            ("code", "c1"),
            ("state", &pushed["state"]),
            ("iss", &p.issuer),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let token = end(running).await.unwrap();
    assert!(token.is_dpop());
    let seen = p.seen.lock().unwrap();
    assert_eq!(
        seen.tokens[0].1["client_assertion_type"],
        tower_bearer::client::CLIENT_ASSERTION_TYPE
    );
}
