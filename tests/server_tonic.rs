//! RequireBearerLayer on a real tonic server on 127.0.0.1, called by a real tonic
//! client: the client sees UNAUTHENTICATED, PERMISSION_DENIED and UNAVAILABLE, and
//! the service reads the verified claims from `tonic::Request::extensions()`.
//!
//! The service is written by hand (`tonic::server::Grpc` with a prost codec), so no
//! protoc is needed.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use http::uri::PathAndQuery;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::{NamedService, UnaryService};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;
use tower_bearer::server::{
    from_async_fn, Claims, Rejection, RequireBearerLayer, RequireScopeLayer, Verified,
};

#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

const PATH: &str = "/test.Greeter/Hello";

/// The gRPC service `test.Greeter` with one unary method, `Hello`.
#[derive(Clone)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = "test.Greeter";
}

struct Hello;

impl UnaryService<HelloRequest> for Hello {
    type Response = HelloReply;
    type Future = Ready<Result<tonic::Response<HelloReply>, Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let subject = request
            .extensions()
            .get::<Verified<Claims>>()
            .and_then(|Verified(claims)| claims.sub.clone())
            .unwrap_or_else(|| "nobody".into());
        let name = request.into_inner().name;
        ready(Ok(tonic::Response::new(HelloReply {
            message: format!("hello {name}, you are {subject}"),
        })))
    }
}

impl Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(async move {
            if req.uri().path() != PATH {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc =
                tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
            Ok(grpc.unary(Hello, req).await)
        })
    }
}

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
    client.ready().await.unwrap();
    let mut request = tonic::Request::new(HelloRequest {
        name: "grpc".into(),
    });
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let codec = ProstCodec::<HelloRequest, HelloReply>::default();
    let reply = client
        .unary(request, PathAndQuery::from_static(PATH), codec)
        .await?;
    Ok(reply.into_inner().message)
}

#[tokio::test]
async fn a_valid_token_with_the_scope_reaches_the_service_with_its_claims() {
    let addr = start().await;
    assert_eq!(
        hello(addr, Some("alice")).await.unwrap(),
        "hello grpc, you are alice"
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
        async move {
            client.ready().await.unwrap();
            let request = tonic::Request::new(HelloRequest {
                name: "grpc".into(),
            });
            let codec = ProstCodec::<HelloRequest, HelloReply>::default();
            client
                .unary(request, PathAndQuery::from_static(PATH), codec)
                .await
                .map(|r| r.into_inner().message)
        }
    };
    let first = call().await.unwrap_err();
    assert_eq!(first.code(), Code::Unauthenticated);
    assert_eq!(call().await.unwrap(), "hello grpc, you are alice");
    assert_eq!(call().await.unwrap(), "hello grpc, you are alice");
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        2,
        "one invalidation, one refresh"
    );
}
