//! Client discovery against a provider on 127.0.0.1 that publishes only what each
//! test needs: the RFC 8414 document when there is no OpenID Connect one, the
//! cache, a document naming another issuer, a provider that accepts only
//! `client_secret_post`, and what is missing from a document.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_bearer::client::{ProviderMetadata, TokenEndpoint, TokenEndpointAuth, TokenSource};
use tower_bearer::{Endpoint, Error};

/// What the provider was asked (paths), and what it publishes.
#[derive(Clone, Default)]
struct Provider {
    asked: Arc<Mutex<Vec<String>>>,
    /// (path, document) pairs; every other GET is a 404.
    documents: Arc<Mutex<Vec<(String, String)>>>,
}

async fn serve(State(p): State<Provider>, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let path = uri.path().to_owned();
    p.asked.lock().unwrap().push(path.clone());
    if path.ends_with("/token") {
        // client_secret_post only: the secret in the form, no Basic header.
        let form: Vec<(String, String)> = serde_urlencoded::from_str(&body).unwrap();
        let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
        if headers.contains_key("authorization")
            || !has("client_id", "svc")
            || !has("client_secret", "s3cret")
        {
            return (
                StatusCode::UNAUTHORIZED,
                [("content-type", "application/json")],
                r#"{"error":"invalid_client"}"#,
            )
                .into_response();
        }
        return (
            [("content-type", "application/json")],
            r#"{"access_token":"a1","token_type":"Bearer","expires_in":60}"#,
        )
            .into_response();
    }
    let found = p
        .documents
        .lock()
        .unwrap()
        .iter()
        .find(|(at, _)| *at == path)
        .map(|(_, doc)| doc.clone());
    match found {
        Some(doc) => ([("content-type", "application/json")], doc).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A provider on a free port; returns it and its origin (`http://127.0.0.1:<port>`).
async fn start() -> (Provider, String) {
    let provider = Provider::default();
    let app = Router::new().fallback(serve).with_state(provider.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (provider, origin)
}

fn publish(p: &Provider, path: &str, doc: String) {
    p.documents.lock().unwrap().push((path.to_owned(), doc));
}

#[tokio::test]
async fn rfc8414_document_post_only_provider_and_the_cache() {
    let (p, origin) = start().await;
    let issuer = format!("{origin}/tenant");
    // No OpenID Connect document: the RFC 8414 one, before the issuer's path.
    publish(
        &p,
        "/.well-known/oauth-authorization-server/tenant",
        format!(
            r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token",
                "token_endpoint_auth_methods_supported":["client_secret_post","private_key_jwt"]}}"#
        ),
    );
    let endpoint = TokenEndpoint::discover(&issuer)
        .await
        .unwrap()
        .client_id("svc")
        .client_secret("s3cret");
    assert_eq!(
        p.asked.lock().unwrap().clone(),
        [
            "/tenant/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant"
        ]
    );
    assert_eq!(
        endpoint.metadata().unwrap().client_auth(),
        TokenEndpointAuth::Post
    );
    // The provider refuses Basic: this token proves the secret went in the form.
    let token = endpoint.client_credentials().fetch(None).await.unwrap();
    assert!(token.expires_at().is_some());

    // Cached: a second discovery asks nothing.
    let again = ProviderMetadata::discover(&issuer).await.unwrap();
    assert_eq!(again.issuer, issuer);
    assert_eq!(
        p.asked.lock().unwrap().len(),
        3,
        "two documents and one token"
    );

    // This document names no revocation or device endpoint: said plainly.
    let err = endpoint.revocation().unwrap_err();
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("revocation_endpoint")),
        "{err}"
    );
    let err = endpoint.device_code().unwrap_err();
    assert!(
        matches!(&err, Error::Configuration(m) if m.contains("device_authorization_endpoint")),
        "{err}"
    );
}

#[tokio::test]
async fn a_document_naming_another_issuer_is_refused() {
    let (p, origin) = start().await;
    publish(
        &p,
        "/.well-known/openid-configuration",
        r#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/token"}"#
            .to_owned(),
    );
    let err = TokenEndpoint::discover(&origin).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Discovery, m) if m.contains("idp.example.com") && m.contains(&origin)),
        "{err}"
    );
}

#[tokio::test]
async fn no_document_and_endpoints_not_discovered() {
    let (_p, origin) = start().await;
    let err = ProviderMetadata::discover(&origin).await.unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Discovery, m) if m.contains("404")),
        "{err}"
    );
    // A remote issuer over clear text is refused before any request.
    let err = ProviderMetadata::discover("http://idp.example.com")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
    // An endpoint made by hand knows no revocation endpoint.
    let err = TokenEndpoint::new("https://idp.example.com/token")
        .unwrap()
        .revocation()
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
}

/// Issue 29 friction (django-oauth-toolkit): the OpenID document names no
/// revocation or introspection endpoint; the RFC 8414 document of the same issuer
/// does. Both are read, and the endpoints come from the second. A second document
/// naming another issuer is not used (RFC 8414 §3.3, mix-up defence).
#[tokio::test]
async fn endpoints_missing_from_the_openid_document_come_from_the_rfc8414_one() {
    let (p, origin) = start().await;
    publish(
        &p,
        "/.well-known/openid-configuration",
        format!(r#"{{"issuer":"{origin}","token_endpoint":"{origin}/token"}}"#),
    );
    publish(
        &p,
        "/.well-known/oauth-authorization-server",
        format!(
            r#"{{"issuer":"{origin}","token_endpoint":"{origin}/token",
                "revocation_endpoint":"{origin}/revoke",
                "introspection_endpoint":"{origin}/introspect"}}"#
        ),
    );
    let endpoint = TokenEndpoint::discover(&origin).await.unwrap();
    let revocation = endpoint.revocation().unwrap();
    assert_eq!(revocation.url().to_string(), format!("{origin}/revoke"));
    assert_eq!(
        endpoint
            .metadata()
            .unwrap()
            .introspection_endpoint
            .as_deref(),
        Some(format!("{origin}/introspect").as_str())
    );

    // Another issuer's RFC 8414 document: its endpoints are not taken.
    let (p, origin) = start().await;
    publish(
        &p,
        "/.well-known/openid-configuration",
        format!(r#"{{"issuer":"{origin}","token_endpoint":"{origin}/token"}}"#),
    );
    publish(
        &p,
        "/.well-known/oauth-authorization-server",
        r#"{"issuer":"https://evil.test","revocation_endpoint":"https://evil.test/revoke"}"#
            .to_owned(),
    );
    let endpoint = TokenEndpoint::discover(&origin).await.unwrap();
    let err = endpoint.revocation().unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err}");
}

/// Issue 29 friction: an error names the endpoint's URL (without its query or
/// user information), and an answer that is not OAuth (an HTML 404 page) says so
/// with its content type, never quoting the body.
#[tokio::test]
async fn an_html_404_names_the_url_and_says_it_is_not_an_oauth_answer() {
    let app = Router::new().fallback(|| async {
        (
            StatusCode::NOT_FOUND,
            [("content-type", "text/html; charset=utf-8")],
            "<html><body>Page SECRET-BODY not found</body></html>",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let endpoint = TokenEndpoint::new(&format!("http://user:pw-MARKER@{addr}/o/token/?k=q-MARKER"))
        .unwrap()
        .client_id("svc")
        .client_secret("s3cret");
    let err = endpoint.client_credentials().fetch(None).await.unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains(&format!("http://{addr}/o/token/")),
        "the URL is not named: {shown}"
    );
    assert!(
        shown.contains("not an OAuth answer (content-type text/html)"),
        "{shown}"
    );
    for leak in ["SECRET-BODY", "MARKER", "s3cret"] {
        assert!(!shown.contains(leak), "{shown}");
        assert!(!format!("{err:?}").contains(leak), "{err:?}");
    }
}
