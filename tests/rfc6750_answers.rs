//! RequireBearerLayer in a real axum server on 127.0.0.1, answered as RFC 6750 says:
//! status codes and the exact `WWW-Authenticate` header for each case.
#![cfg(feature = "axum")]

mod common;

use axum::routing::get;
use axum::Router;
use common::send_raw;
use tower_bearer::server::{RequireBearerLayer, StaticTokens, Verified};

async fn whoami(Verified(who): Verified<&'static str>) -> String {
    format!("you are {who}")
}

async fn hello(who: Option<Verified<&'static str>>) -> String {
    match who {
        Some(Verified(who)) => format!("hello {who}"),
        None => "hello stranger".to_owned(),
    }
}

async fn app(anonymous: bool) -> std::net::SocketAddr {
    let mut layer =
        RequireBearerLayer::new(StaticTokens::new([("good-token", "ci")])).realm("test");
    if anonymous {
        layer = layer.allow_anonymous();
    }
    common::serve(
        Router::new()
            .route("/whoami", get(whoami))
            .route("/hello", get(hello))
            .layer(layer),
    )
    .await
}

#[tokio::test]
async fn every_case_gets_its_rfc_6750_answer() {
    let addr = app(false).await;
    type Case<'a> = (&'a str, Vec<(&'a str, &'a [u8])>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no credentials", vec![], 401, r#"Bearer realm="test""#),
        (
            "another scheme",
            vec![("authorization", b"Basic dXNlcjpwYXNz")],
            401,
            r#"Bearer realm="test""#,
        ),
        (
            "two headers",
            vec![
                ("authorization", b"Bearer good-token"),
                ("authorization", b"Bearer good-token"),
            ],
            400,
            r#"Bearer realm="test", error="invalid_request", error_description="more than one Authorization header""#,
        ),
        (
            "no token",
            vec![("authorization", b"Bearer")],
            400,
            r#"Bearer realm="test", error="invalid_request", error_description="the bearer token is empty""#,
        ),
        (
            "a tab",
            vec![("authorization", b"Bearer\tgood-token")],
            400,
            r#"Bearer realm="test", error="invalid_request", error_description="the Authorization header is malformed""#,
        ),
        (
            "not token68",
            vec![("authorization", b"Bearer good token")],
            400,
            r#"Bearer realm="test", error="invalid_request", error_description="the bearer token is malformed""#,
        ),
        (
            "unknown token",
            vec![("authorization", b"Bearer wrong-token")],
            401,
            r#"Bearer realm="test", error="invalid_token", error_description="unknown token""#,
        ),
    ];
    for (name, headers, status, challenge) in cases {
        let answer = send_raw(addr, "/whoami", &headers).await;
        assert_eq!(answer.status, status, "{name}");
        assert_eq!(answer.challenge(), challenge, "{name}");
        assert!(
            !answer.body.contains("token-"),
            "{name}: the token is not echoed"
        );
    }
    let ok = send_raw(addr, "/whoami", &[("authorization", b"Bearer good-token")]).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "you are ci"));
    let lower = send_raw(addr, "/whoami", &[("authorization", b"bearer good-token")]).await;
    assert_eq!(lower.status, 200, "the scheme is case-insensitive");
    let upper = send_raw(addr, "/whoami", &[("authorization", b"BEARER good-token")]).await;
    assert_eq!(upper.status, 200, "the scheme is case-insensitive");
    // RFC 7235: one or more spaces after the scheme; HTTP strips the spaces around
    // a header value before the layer sees it.
    for spaced in [&b"Bearer   good-token"[..], b"Bearer good-token   "] {
        let answer = send_raw(addr, "/whoami", &[("authorization", spaced)]).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "you are ci"),
            "{:?}",
            String::from_utf8_lossy(spaced)
        );
    }
    let answer = send_raw(
        addr,
        "/whoami",
        &[("authorization", b"Bearer good-token x")],
    )
    .await;
    assert_eq!(answer.status, 400, "a second word after the token");
}

#[tokio::test]
async fn a_token_in_the_query_string_is_ignored() {
    let addr = app(false).await;
    let answer = send_raw(addr, "/whoami?access_token=good-token", &[]).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.challenge(), r#"Bearer realm="test""#);
}

#[tokio::test]
async fn oversized_headers_are_refused_before_validation() {
    let addr = app(false).await;
    let big = format!("Bearer {}", "a".repeat(9 * 1024));
    let answer = send_raw(addr, "/whoami", &[("authorization", big.as_bytes())]).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.challenge().contains("too long"),
        "{}",
        answer.challenge()
    );
    // 64 KiB: refused too (by the layer, or by the HTTP server's own header cap).
    let huge = format!("Bearer {}", "a".repeat(64 * 1024));
    let answer = send_raw(addr, "/whoami", &[("authorization", huge.as_bytes())]).await;
    assert!(
        answer.status == 400 || answer.status == 431,
        "{}",
        answer.status
    );
}

#[tokio::test]
async fn anonymous_mode_lets_requests_without_credentials_through() {
    let addr = app(true).await;
    let anonymous = send_raw(addr, "/hello", &[]).await;
    assert_eq!(
        (anonymous.status, anonymous.body.as_str()),
        (200, "hello stranger")
    );
    let known = send_raw(addr, "/hello", &[("authorization", b"Bearer good-token")]).await;
    assert_eq!(known.body, "hello ci");
    // A bad token is still refused.
    let bad = send_raw(addr, "/hello", &[("authorization", b"Bearer nope")]).await;
    assert_eq!(bad.status, 401);
    // A handler that needs claims answers an anonymous request with the challenge,
    // in the layer's realm (gRPC too).
    let needs = send_raw(addr, "/whoami", &[]).await;
    assert_eq!(needs.status, 401);
    assert_eq!(needs.challenge(), r#"Bearer realm="test""#);
    let grpc = send_raw(addr, "/whoami", &[("content-type", b"application/grpc")]).await;
    assert_eq!(grpc.headers["grpc-status"], "16");
    assert_eq!(grpc.challenge(), r#"Bearer realm="test""#);
}

#[tokio::test]
async fn grpc_requests_get_grpc_statuses() {
    let addr = app(false).await;
    let grpc = ("content-type", &b"application/grpc"[..]);
    let missing = send_raw(addr, "/whoami", &[grpc]).await;
    assert_eq!(missing.status, 200);
    assert_eq!(missing.headers["grpc-status"], "16");
    let bad = send_raw(addr, "/whoami", &[grpc, ("authorization", b"Bearer nope")]).await;
    assert_eq!(bad.headers["grpc-status"], "16");
    assert_eq!(bad.headers["grpc-message"], "unknown token");
}

/// `RequireBearerLayer::scope`: named in the layer's `401`s (RFC 6750 §3, as MCP
/// servers must), never in a `400`, and a `403` names the scope it lacks instead.
#[tokio::test]
async fn the_layers_scope_is_named_in_its_401s() {
    use tower_bearer::server::{Claims, RequireScopeLayer};

    let reader: Claims = serde_json::from_value(serde_json::json!({ "scope": "read" })).unwrap();
    let metadata = "https://api.example.test/.well-known/oauth-protected-resource";
    let layer = RequireBearerLayer::new(StaticTokens::new([("reader", reader)]))
        .realm("test")
        .resource_metadata(metadata)
        .scope("read");
    let addr = common::serve(
        Router::new()
            .route("/admin", get(|| async { "admin" }))
            .route_layer(RequireScopeLayer::<Claims>::new(["admin"]))
            .route("/read", get(|| async { "read" }))
            .layer(layer),
    )
    .await;
    let missing = send_raw(addr, "/read", &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.challenge(),
        format!(r#"Bearer realm="test", scope="read", resource_metadata="{metadata}""#)
    );
    let unknown = send_raw(addr, "/read", &[("authorization", b"Bearer nope")]).await;
    assert_eq!(unknown.status, 401);
    assert_eq!(
        unknown.challenge(),
        format!(
            r#"Bearer realm="test", error="invalid_token", error_description="unknown token", scope="read", resource_metadata="{metadata}""#
        )
    );
    let malformed = send_raw(addr, "/read", &[("authorization", b"Bearer")]).await;
    assert_eq!(malformed.status, 400);
    assert!(
        !malformed.challenge().contains("scope="),
        "{}",
        malformed.challenge()
    );
    let good = send_raw(addr, "/read", &[("authorization", b"Bearer reader")]).await;
    assert_eq!((good.status, good.body.as_str()), (200, "read"));
    let lacking = send_raw(addr, "/admin", &[("authorization", b"Bearer reader")]).await;
    assert_eq!(lacking.status, 403);
    assert_eq!(
        lacking.challenge(),
        format!(
            r#"Bearer realm="test", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin", resource_metadata="{metadata}""#
        )
    );
    // gRPC answers carry the same challenge.
    let grpc = send_raw(addr, "/read", &[("content-type", b"application/grpc")]).await;
    assert_eq!(grpc.headers["grpc-status"], "16");
    assert_eq!(grpc.challenge(), missing.challenge());
}
