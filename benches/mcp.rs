//! What `ToolScopeLayer` (feature `mcp`) adds to an MCP request, group
//! `mcp_tool_scope`, all in one run:
//!
//! - `inner`: the service alone, answering a `tools/call` request at once;
//! - `layer_allowed`: the same request through `ToolScopeLayer` (the body read, its
//!   tool found, the scope granted, the body handed on);
//! - `layer_refused`: a token without the tool's scope (the `403` built);
//! - `parse`: the reading of the body alone (`tools/call` and its name).
//!
//! `cargo bench --bench mcp --features mcp`

use std::convert::Infallible;

use bytes::Bytes;
use criterion::{criterion_group, Criterion};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_bearer::mcp::server::{PeekedBody, ToolScopeLayer};
use tower_bearer::server::{Claims, Verified};
use tower_layer::Layer;

/// A typical call: a tool, a short argument.
const BODY: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello from the bench"},"_meta":{"progressToken":7}}}"#;

fn claims(scope: &str) -> Verified<Claims> {
    Verified(serde_json::from_value(serde_json::json!({ "sub": "alice", "scope": scope })).unwrap())
}

fn request(claims: &Verified<Claims>) -> Request<Full<Bytes>> {
    let mut req = Request::post("http://127.0.0.1/mcp")
        .header("content-type", "application/json")
        .header("content-length", BODY.len())
        .body(Full::new(Bytes::from_static(BODY.as_bytes())))
        .unwrap();
    req.extensions_mut().insert(claims.clone());
    req
}

async fn answer<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"{}"))))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scopes = ToolScopeLayer::<Claims>::new()
        .tool("echo", ["read"])
        .tool("server_stats", ["admin"])
        .other_tools(["admin"]);
    let service = scopes.layer(tower::service_fn(answer::<PeekedBody<Full<Bytes>>>));
    let inner = tower::service_fn(answer::<Full<Bytes>>);
    let (reader, other) = (claims("read"), claims("write"));

    let mut group = c.benchmark_group("mcp_tool_scope");
    group.bench_function("inner", |b| {
        b.to_async(&rt).iter(|| {
            let req = request(&reader);
            async move { inner.oneshot(req).await.unwrap().status() }
        })
    });
    group.bench_function("layer_allowed", |b| {
        b.to_async(&rt).iter(|| {
            let mut service = service.clone();
            let req = request(&reader);
            async move {
                let status = service
                    .ready()
                    .await
                    .unwrap()
                    .call(req)
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 200);
                status
            }
        })
    });
    group.bench_function("layer_refused", |b| {
        b.to_async(&rt).iter(|| {
            let mut service = service.clone();
            let req = request(&other);
            async move {
                let status = service
                    .ready()
                    .await
                    .unwrap()
                    .call(req)
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, 403);
                status
            }
        })
    });
    group.bench_function("parse", |b| {
        b.iter(|| tower_bearer::__parsers::mcp_tool_calls(BODY.as_bytes()).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
