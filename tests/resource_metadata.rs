//! RFC 9728 protected resource metadata, on real axum servers on 127.0.0.1: the
//! document served at its well-known URL, `resource_metadata` in every challenge of
//! the layer, and the client finding the authorization servers from a `401`.
#![cfg(all(feature = "axum", feature = "jwt"))]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use axum::Router;
use common::{send_raw, Answer};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tower_bearer::client::{
    discover_from_challenge, resource_metadata_url, HttpClient, ProtectedResourceMetadata,
    TokenEndpoint,
};
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, RequireScopeLayer, Verified};
use tower_bearer::{Endpoint, Error};

const SECRET: &[u8] = b"resource-metadata-test-secret-32b!!";
const IDP: &str = "https://idp.example.com";

fn token(scope: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp, "scope": scope}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// The resource `http://{addr}/v1`: its document at the path-suffixed well-known URL,
/// outside the layer; `/v1/items` (needs `read`, checked by the validator's rule) and
/// `/v1/admin` (needs `admin`, checked by a `RequireScopeLayer`) behind it.
/// `metadata`: whether the layer names the document in its challenges.
async fn resource(metadata: bool) -> (SocketAddr, String) {
    resource_of(metadata, IDP).await
}

/// [`resource`], whose tokens come from the authorization server `issuer`.
async fn resource_of(metadata: bool, issuer: &str) -> (SocketAddr, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let resource = format!("http://{addr}/v1");
    let doc = ProtectedResourceMetadata::new(&resource)
        .authorization_servers([issuer])
        .scopes_supported(["read", "admin"])
        .bearer_methods_supported(["header"])
        .resource_signing_alg_values_supported(["RS256"])
        .resource_name("Items API")
        .field("resource_policy_uri", "https://api.example.com/policy")
        .max_age(Duration::from_secs(600));
    let mut layer =
        RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET).require_scopes(["read"]))
            .realm("items");
    if metadata {
        layer = layer.resource_metadata(doc.url().unwrap());
    }
    let admin = Router::new()
        .route("/v1/admin", get(|| async { "admin" }))
        .layer(RequireScopeLayer::<Claims>::new(["admin"]));
    let api = Router::new()
        .route(
            "/v1/items",
            get(|Verified(c): Verified<Claims>| async move { c.sub.unwrap_or_default() }),
        )
        .merge(admin)
        .layer(layer);
    let app = Router::new()
        .route_service(&doc.path().unwrap(), doc.service().unwrap())
        .merge(api);
    // Bound first: the document names the address it is served at.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, resource)
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
    common::server::send_method(addr, method, path, &[]).await
}

#[tokio::test]
async fn the_document_is_served_at_the_path_suffixed_well_known_url() {
    let (addr, resource) = resource(true).await;
    let answer = send_raw(addr, "/.well-known/oauth-protected-resource/v1", &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    assert_eq!(answer.headers["cache-control"], "public, max-age=600");
    let doc: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        doc,
        json!({
            "resource": resource,
            "authorization_servers": [IDP],
            "scopes_supported": ["read", "admin"],
            "bearer_methods_supported": ["header"],
            "resource_signing_alg_values_supported": ["RS256"],
            "resource_name": "Items API",
            "resource_policy_uri": "https://api.example.com/policy",
        })
    );
    // Not at the un-suffixed form (that would be the host's root resource): the
    // path falls through to the API's router, behind the layer.
    let root = send_raw(addr, "/.well-known/oauth-protected-resource", &[]).await;
    assert_eq!(root.status, 401);
    // A HEAD gets the headers, a POST a 405 naming the methods allowed.
    let head = request(addr, "HEAD", "/.well-known/oauth-protected-resource/v1").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    let post = request(addr, "POST", "/.well-known/oauth-protected-resource/v1").await;
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET, HEAD");
}

#[tokio::test]
async fn a_resource_without_a_path_is_served_at_the_bare_well_known_url() {
    let doc = ProtectedResourceMetadata::new("http://127.0.0.1/").authorization_servers([IDP]);
    assert_eq!(doc.path().unwrap(), "/.well-known/oauth-protected-resource");
    let addr =
        common::serve(Router::new().route_service(&doc.path().unwrap(), doc.service().unwrap()))
            .await;
    let answer = send_raw(addr, "/.well-known/oauth-protected-resource", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.headers["cache-control"], "public, max-age=3600");
    let back: ProtectedResourceMetadata = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(back.resource, "http://127.0.0.1/");
    assert_eq!(back.authorization_servers, [IDP]);
}

#[tokio::test]
async fn every_challenge_names_the_metadata() {
    let (addr, _) = resource(true).await;
    let meta =
        format!(r#"resource_metadata="http://{addr}/.well-known/oauth-protected-resource/v1""#);
    let read = format!("Bearer {}", token("read"));
    let none = format!("Bearer {}", token("write"));
    type Headers<'a> = &'a [(&'a str, &'a [u8])];
    let cases: [(&str, Headers, u16, &str); 5] = [
        ("/v1/items", &[], 401, r#"Bearer realm="items", "#),
        (
            "/v1/items",
            &[("authorization", b"Bearer not.a.jwt")],
            401,
            r#"error="invalid_token""#,
        ),
        (
            "/v1/items",
            &[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ],
            400,
            r#"error="invalid_request""#,
        ),
        (
            "/v1/items",
            &[("authorization", none.as_bytes())],
            403,
            r#"error="insufficient_scope""#,
        ),
        (
            "/v1/admin",
            &[("authorization", read.as_bytes())],
            403,
            r#"scope="admin""#,
        ),
    ];
    for (path, headers, status, part) in cases {
        let answer = send_raw(addr, path, headers).await;
        assert_eq!(answer.status, status, "{path} {}", answer.challenge());
        assert!(answer.challenge().contains(part), "{}", answer.challenge());
        assert!(
            answer.challenge().ends_with(&meta),
            "{}",
            answer.challenge()
        );
    }
    let ok = send_raw(addr, "/v1/items", &[("authorization", read.as_bytes())]).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "alice"));
    assert!(ok.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn without_it_challenges_are_unchanged() {
    let (addr, _) = resource(false).await;
    let missing = send_raw(addr, "/v1/items", &[]).await;
    assert_eq!(missing.challenge(), r#"Bearer realm="items""#);
    let read = format!("Bearer {}", token("read"));
    let scope = send_raw(addr, "/v1/admin", &[("authorization", read.as_bytes())]).await;
    assert_eq!(
        scope.challenge(),
        r#"Bearer realm="items", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin""#
    );
}

#[tokio::test]
async fn a_client_finds_the_authorization_servers_from_a_401() {
    let (addr, resource) = resource(true).await;
    let answer = send_raw(addr, "/v1/items", &[]).await;
    assert_eq!(answer.status, 401);
    let url = resource_metadata_url(&answer.headers).expect("a resource_metadata parameter");
    let http = HttpClient::new();
    let found = ProtectedResourceMetadata::fetch(&url, &resource, &http)
        .await
        .unwrap();
    assert_eq!(found.authorization_servers, [IDP]);
    assert_eq!(found.scopes_supported, ["read", "admin"]);
    assert_eq!(
        found.extra["resource_policy_uri"],
        "https://api.example.com/policy"
    );
    // The same from the resource identifier alone.
    let again = ProtectedResourceMetadata::fetch_for(&resource, &http)
        .await
        .unwrap();
    assert_eq!(again, found);
}

#[tokio::test]
async fn a_document_for_another_resource_is_refused() {
    let (addr, resource) = resource(true).await;
    let url = ProtectedResourceMetadata::url_for(&resource).unwrap();
    // The document of /v1 presented as that of /v2 (or of another host).
    for asked in [
        format!("http://{addr}/v2"),
        "https://api.example.com/v1".to_owned(),
    ] {
        let err = ProtectedResourceMetadata::fetch(&url, &asked, &HttpClient::new())
            .await
            .unwrap_err();
        match &err {
            Error::InvalidResponse(Endpoint::ResourceMetadata, why) => {
                assert!(why.contains("describes resource"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn missing_or_broken_documents_give_clear_errors() {
    let app = Router::new()
        .route(
            "/.well-known/oauth-protected-resource/broken",
            get(|| async { "<html>not json</html>" }),
        )
        .route(
            "/.well-known/oauth-protected-resource/shapeless",
            get(|| async { axum::Json(json!({"authorization_servers": [IDP]})) }),
        );
    let addr = common::serve(app).await;
    let http = HttpClient::new();
    let fetch = |path: &'static str| {
        let http = http.clone();
        async move {
            ProtectedResourceMetadata::fetch_for(&format!("http://{addr}{path}"), &http)
                .await
                .unwrap_err()
        }
    };
    let missing = fetch("/gone").await;
    assert!(
        matches!(&missing, Error::InvalidResponse(Endpoint::ResourceMetadata, why) if why.contains("answered HTTP 404")),
        "{missing}"
    );
    let broken = fetch("/broken").await;
    assert!(
        matches!(&broken, Error::InvalidResponse(Endpoint::ResourceMetadata, why) if why.contains("not a resource metadata document")),
        "{broken}"
    );
    let shapeless = fetch("/shapeless").await;
    assert!(
        matches!(&shapeless, Error::InvalidResponse(Endpoint::ResourceMetadata, why) if why.contains("missing field `resource`")),
        "{shapeless}"
    );
    // A clear-text URL to another host is refused before any request.
    let clear = ProtectedResourceMetadata::fetch_for("http://api.example.com/v1", &http)
        .await
        .unwrap_err();
    assert!(matches!(clear, Error::Configuration(_)), "{clear}");
}

/// The axum extractor (behind a layer that lets anonymous requests through) and the
/// gRPC answers name the metadata as the layer's HTTP answers do.
#[tokio::test]
async fn the_extractor_and_grpc_answers_name_it_too() {
    let url = "https://api.example.com/.well-known/oauth-protected-resource";
    let layer =
        RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET)).resource_metadata(url);
    let app = Router::new()
        .route(
            "/me",
            get(|Verified(c): Verified<Claims>| async move { c.sub.unwrap_or_default() }),
        )
        .layer(layer.clone().allow_anonymous());
    let addr = common::serve(app).await;
    let anonymous = send_raw(addr, "/me", &[]).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.challenge(),
        format!(r#"Bearer realm="api", resource_metadata="{url}""#)
    );
    let grpc = common::serve(
        Router::new()
            .route("/g", get(|| async { "ok" }))
            .layer(layer),
    )
    .await;
    let answer = send_raw(grpc, "/g", &[("content-type", b"application/grpc")]).await;
    assert_eq!(answer.headers["grpc-status"], "16");
    assert_eq!(
        answer.challenge(),
        format!(r#"Bearer realm="api", resource_metadata="{url}""#)
    );
}

/// An authorization server on 127.0.0.1: its OpenID Connect discovery document
/// (naming `claimed_issuer`, or its own URL) and a token endpoint that gives the
/// client `c` / `s` a token with the scope `read`. Answers its issuer URL.
async fn authorization_server(claimed_issuer: Option<&'static str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://{}", listener.local_addr().unwrap());
    let document = json!({
        "issuer": claimed_issuer.map_or(issuer.clone(), str::to_owned),
        "token_endpoint": format!("{issuer}/token"),
        "grant_types_supported": ["client_credentials"],
    });
    let app = Router::new()
        .route(
            "/.well-known/openid-configuration",
            get(move || async move { axum::Json(document) }),
        )
        .route(
            "/token",
            axum::routing::post(|headers: http::HeaderMap| async move {
                // HTTP Basic c:s
                if headers["authorization"] != "Basic Yzpz" {
                    return (http::StatusCode::UNAUTHORIZED, axum::Json(json!({"error": "invalid_client"})));
                }
                let body = json!({"access_token": token("read"), "token_type": "Bearer", "expires_in": 600});
                (http::StatusCode::OK, axum::Json(body))
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    issuer
}

#[tokio::test]
async fn one_call_leads_from_a_401_to_a_token_endpoint_that_works() {
    use tower::{Layer, ServiceExt};

    let issuer = authorization_server(None).await;
    let (addr, resource) = resource_of(true, &issuer).await;
    let answer = send_raw(addr, "/v1/items", &[]).await;
    assert_eq!(answer.status, 401);
    let http = HttpClient::new();
    let (metadata, provider) = discover_from_challenge(&answer.headers, &resource, &http)
        .await
        .unwrap();
    assert_eq!(metadata.resource, resource);
    assert_eq!(provider.issuer, issuer);

    let endpoint = TokenEndpoint::from_challenge(&answer.headers, &resource, &http)
        .await
        .unwrap()
        .client_id("c")
        .client_secret("s");
    let api = tower_bearer::client::AuthorizeLayer::new(tower_bearer::client::Refreshing::new(
        endpoint.client_credentials(),
    ))
    .layer(common::http_client::<http_body_util::Full<bytes::Bytes>>());
    let req = http::Request::get(format!("http://{addr}/v1/items"))
        .body(Default::default())
        .unwrap();
    let res = api.oneshot(req).await.unwrap();
    assert_eq!(
        res.status(),
        200,
        "the discovered token endpoint's token works"
    );

    // A challenge without resource_metadata: the resource's well-known URL.
    let (_, provider) = discover_from_challenge(&http::HeaderMap::new(), &resource, &http)
        .await
        .unwrap();
    assert_eq!(provider.issuer, issuer);
}

#[tokio::test]
async fn a_challenge_pointing_to_another_resources_document_is_refused() {
    let (victim, _) = resource(true).await;
    let victims_document = format!("http://{victim}/.well-known/oauth-protected-resource/v1");
    // A server whose 401 sends clients to the victim's document (and so to the
    // victim's authorization server, for a token to present here).
    let hostile = common::serve(Router::new().route(
        "/api",
        get(move || async move {
            (
                http::StatusCode::UNAUTHORIZED,
                [(
                    "www-authenticate",
                    format!(r#"Bearer resource_metadata="{victims_document}""#),
                )],
            )
        }),
    ))
    .await;
    let answer = send_raw(hostile, "/api", &[]).await;
    assert_eq!(answer.status, 401);
    let err = discover_from_challenge(
        &answer.headers,
        &format!("http://{hostile}/api"),
        &HttpClient::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::ResourceMetadata, why) if why.contains("describes resource")),
        "{err}"
    );
}

#[tokio::test]
async fn an_authorization_server_claiming_another_issuer_is_refused() {
    let impostor = authorization_server(Some(IDP)).await;
    let (addr, resource) = resource_of(true, &impostor).await;
    let answer = send_raw(addr, "/v1/items", &[]).await;
    let err = TokenEndpoint::from_challenge(&answer.headers, &resource, &HttpClient::new())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::Discovery, why) if why.contains("names issuer")),
        "{err}"
    );
}

#[tokio::test]
async fn a_document_naming_no_authorization_server_is_a_clear_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let doc = ProtectedResourceMetadata::new(format!("http://{addr}"));
    let app = Router::new().route_service(&doc.path().unwrap(), doc.service().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let err = discover_from_challenge(
        &http::HeaderMap::new(),
        &format!("http://{addr}"),
        &HttpClient::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse(Endpoint::ResourceMetadata, why) if why.contains("names no authorization server")),
        "{err}"
    );
}
