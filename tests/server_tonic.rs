//! RequireBearerLayer on a real tonic server on 127.0.0.1, called by a real tonic
//! client: the client sees UNAUTHENTICATED, PERMISSION_DENIED and UNAVAILABLE, and
//! the service reads the verified claims from `tonic::Request::extensions()`.
//!
//! The service is the gRPC example's (`examples/support/greeter.rs`, written by hand
//! over `tonic::server::Grpc` with a prost codec, so no protoc is needed).

#[path = "../examples/support/greeter.rs"]
mod greeter;

use greeter::{hello as hello_request, say_hello, Greeter};
use tonic::{Code, Status};
use tower_bearer::server::{
    from_async_fn, Claims, Rejection, RequireBearerLayer, RequireScopeLayer,
};

/// Tokens: "alice" (scope greet), "bob" (no scope), "down" (validator
/// unavailable); anything else is invalid.
fn validator() -> impl tower_bearer::server::Validator<Claims = Claims> {
    from_async_fn(|token: String| async move {
        let claims = |sub: &str, scope: Option<&str>| Claims {
            sub: Some(sub.into()),
            scope: scope.map(Into::into),
            ..Claims::default()
        };
        match token.as_str() {
            "alice" => Ok(claims("alice", Some("greet"))),
            "bob" => Ok(claims("bob", None)),
            "down" => Err(Rejection::Unavailable("introspection endpoint down".into())),
            _ => Err(Rejection::invalid_token("unknown token")),
        }
    })
}

async fn start() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(RequireBearerLayer::new(validator()).realm("grpc-test"))
            .layer(RequireScopeLayer::<Claims>::new(["greet"]).realm("grpc-test"))
            .add_service(Greeter)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}

async fn hello(addr: std::net::SocketAddr, token: Option<&str>) -> Result<String, Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    let mut request = hello_request("grpc");
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    say_hello(&mut client, request).await
}

#[tokio::test]
async fn a_valid_token_with_the_scope_reaches_the_service_with_its_claims() {
    let addr = start().await;
    assert_eq!(
        hello(addr, Some("alice")).await.unwrap(),
        "Hello grpc! (token subject: alice)"
    );
}

#[tokio::test]
async fn failures_become_grpc_statuses() {
    let addr = start().await;
    for (case, token, code, message) in [
        (
            "no token",
            None,
            Code::Unauthenticated,
            "missing bearer token",
        ),
        (
            "bad token",
            Some("mallory"),
            Code::Unauthenticated,
            "unknown token",
        ),
        (
            "missing scope",
            Some("bob"),
            Code::PermissionDenied,
            "the token lacks a required scope",
        ),
        (
            "validator down",
            Some("down"),
            Code::Unavailable,
            "introspection endpoint down",
        ),
    ] {
        let status = hello(addr, token).await.unwrap_err();
        assert_eq!(status.code(), code, "{case}: {status:?}");
        assert_eq!(status.message(), message, "{case}");
    }
}

#[tokio::test]
async fn a_malformed_header_is_unauthenticated_not_a_transport_error() {
    let addr = start().await;
    // Two spaces inside the token: not token68.
    let status = hello(addr, Some("a b")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

/// The client side over a tonic `Channel`: `AuthorizeLayer` with a refreshing
/// authorizer puts the token in the call's metadata, and an `UNAUTHENTICATED` answer
/// drops that token so the next call carries a fresh one.
#[tokio::test]
async fn a_tonic_client_with_authorize_layer_recovers_from_unauthenticated() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::Layer;
    use tower_bearer::client::{source, AuthorizeLayer, Refreshing};
    use tower_bearer::Token;

    let addr = start().await;
    let fetched = Arc::new(AtomicUsize::new(0));
    let f = fetched.clone();
    // The first token is refused by the server; the second is good.
    let cache = Refreshing::new(source::from_fn(move |_| {
        let n = f.fetch_add(1, Ordering::SeqCst);
        async move { Token::bearer(if n == 0 { "mallory" } else { "alice" }) }
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = tonic::client::Grpc::new(AuthorizeLayer::new(cache.clone()).layer(channel));
    let call = || {
        let mut client = client.clone();
        async move { say_hello(&mut client, hello_request("grpc")).await }
    };
    let first = call().await.unwrap_err();
    assert_eq!(first.code(), Code::Unauthenticated);
    assert_eq!(call().await.unwrap(), "Hello grpc! (token subject: alice)");
    assert_eq!(call().await.unwrap(), "Hello grpc! (token subject: alice)");
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        2,
        "one invalidation, one refresh"
    );
}

/// A tonic client behind `AuthorizeLayer` whose authorizer fails: the call's
/// `Status` holds the typed error as its source, and `Error::find` gives it back.
#[tokio::test]
async fn a_credential_failure_reaches_the_tonic_caller_typed() {
    use tower::Layer;
    use tower_bearer::client::{source, AuthorizeLayer, Refreshing};
    use tower_bearer::Error;

    let addr = start().await;
    let cache = Refreshing::new(source::from_fn(|_| async {
        Err::<tower_bearer::Token, _>(Error::NoToken("nobody logged in".into()))
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(AuthorizeLayer::new(cache).layer(channel));
    let status = say_hello(&mut client, hello_request("grpc"))
        .await
        .unwrap_err();
    assert!(status.message().contains("nobody logged in"), "{status:?}");
    assert!(
        matches!(Error::find(&status), Some(Error::NoToken(_))),
        "{status:?}"
    );
}
