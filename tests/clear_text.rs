//! RFC 6750 §5.3 ("Clients MUST always use TLS (https) or equivalent transport
//! security when making requests with bearer tokens") against the ways a request can
//! reach a remote host in clear text without saying `http://` and a remote name:
//! another scheme, an authority-form `CONNECT`, a name under `localhost` (which the
//! system resolver may hand to DNS), userinfo, numeric hosts. Each through the real
//! client a user would put under the layer (hyper-util's), whose resolver sends every
//! name to a recorder on 127.0.0.1: what a DNS answer or a remote host would get.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, ServiceExt};
use tower_bearer::client::{AuthorizeError, AuthorizeLayer, StaticToken};
use tower_bearer::Error;

/// A raw HTTP/1.1 peer on 127.0.0.1 that records every request head it gets and
/// answers `200` with an empty body.
async fn start_recorder() -> (Arc<Mutex<Vec<String>>>, SocketAddr) {
    start_peer("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into()).await
}

/// A raw HTTP/1.1 peer on 127.0.0.1 that records every request head and gives each
/// the same `answer`.
async fn start_peer(answer: String) -> (Arc<Mutex<Vec<String>>>, SocketAddr) {
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = heads.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                log.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream.write_all(answer.as_bytes()).await;
            });
        }
    });
    (heads, addr)
}

/// hyper-util's client, plain TCP for any scheme (as under a TLS connector that
/// wraps it), every name resolved to the recorder.
fn client(to: SocketAddr) -> Client<HttpConnector<ResolveAll>, Empty<Bytes>> {
    let mut connector = HttpConnector::new_with_resolver(ResolveAll(to));
    connector.enforce_http(false);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A resolver answering every name with one address (the recorder's): the answer
/// a DNS server on the path could give.
#[derive(Clone)]
struct ResolveAll(SocketAddr);

impl tower::Service<Name> for ResolveAll {
    type Response = std::iter::Once<SocketAddr>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Name) -> Self::Future {
        std::future::ready(Ok(std::iter::once(self.0)))
    }
}

/// Every request here goes to a host that is not (or may not be) loopback, in
/// clear text: the layer must refuse it with `Error::Configuration`, send nothing,
/// and never quote the token or the query.
#[tokio::test]
async fn rfc6750_no_clear_text_route_to_a_remote_host_carries_the_token() {
    let (heads, addr) = start_recorder().await;
    let port = addr.port();
    let layer = AuthorizeLayer::new(StaticToken::bearer("t0ken-secret").unwrap());
    let cases: Vec<(&str, http::Method, String)> = vec![
        // Another scheme: a connector that is not https sends it in clear.
        (
            "scheme",
            http::Method::GET,
            format!("foo://api.example:{port}/items"),
        ),
        // An authority-form CONNECT: hyper-util's client makes it http://.
        (
            "connect",
            http::Method::CONNECT,
            format!("api.example:{port}"),
        ),
        // Names under localhost, and localhost. (absolute): the system resolver
        // may ask DNS for them (glibc with `hosts: files dns` does).
        (
            "localhost name",
            http::Method::GET,
            format!("http://app.localhost:{port}/"),
        ),
        (
            "localhost.",
            http::Method::GET,
            format!("http://localhost.:{port}/"),
        ),
        // Held before: upper case, look-alike names, userinfo, numeric forms.
        (
            "upper case",
            http::Method::GET,
            format!("HTTP://api.example:{port}/"),
        ),
        (
            "look-alike",
            http::Method::GET,
            format!("http://127.0.0.1.evil.example:{port}/"),
        ),
        (
            "look-alike 2",
            http::Method::GET,
            format!("http://localhost.evil.example:{port}/"),
        ),
        (
            "userinfo",
            http::Method::GET,
            format!("http://127.0.0.1:{port}@api.example:{port}/"),
        ),
        (
            "hex",
            http::Method::GET,
            format!("http://0x7f000001:{port}/"),
        ),
        ("short", http::Method::GET, format!("http://127.1:{port}/")),
        (
            "decimal",
            http::Method::GET,
            format!("http://2130706433:{port}/"),
        ),
        (
            "query",
            http::Method::GET,
            format!("http://api.example:{port}/?code=s3cret-code"),
        ),
    ];
    let mut sent = Vec::new();
    for (case, method, uri) in cases {
        let req = http::Request::builder()
            .method(method)
            .uri(&uri)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = layer.layer(client(addr)).oneshot(req).await;
        let err = match res {
            Ok(_) => {
                sent.push(case);
                continue;
            }
            Err(err) => err,
        };
        assert!(
            matches!(err, AuthorizeError::Credential(Error::Configuration(_))),
            "{case}: {uri}: {err}"
        );
        let shown = err.to_string();
        assert!(!shown.contains("t0ken-secret"), "{case}: {shown}");
        assert!(!shown.contains("s3cret-code"), "{case}: {shown}");
    }
    assert!(sent.is_empty(), "sent with the token: {sent:?}");
    assert!(
        heads.lock().unwrap().is_empty(),
        "sent: {:?}",
        heads.lock().unwrap()
    );

    // Loopback by address, and `localhost` itself (the hosts file's), still pass.
    for uri in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://[::1]:{port}/"),
        format!("http://localhost:{port}/"),
        format!("https://api.example:{port}/"),
    ] {
        let req = http::Request::get(&uri)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let res = layer.layer(client(addr)).oneshot(req).await;
        match res {
            Ok(res) => assert_eq!(res.status(), 200, "{uri}"),
            // https:// over this plain client reaches the recorder, which answers
            // 200; anything else must not be the refusal.
            Err(err) => assert!(
                !matches!(err, AuthorizeError::Credential(_)),
                "{uri}: {err}"
            ),
        }
    }
}

/// The reqwest middleware: a name under `localhost` is no loopback either (reqwest
/// resolves it through the system resolver, as hyper-util does). And a redirect
/// reqwest follows by itself (the middleware runs once per `send`, not per hop)
/// from a loopback API to a remote `http://` host: reqwest drops `Authorization` on
/// a redirect to another host, port or scheme, so the remote host gets no token.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn rfc6750_the_middleware_refuses_localhost_names_and_a_redirect_drops_the_token() {
    use tower_bearer::client::AuthorizeMiddleware;
    let (heads, addr) = start_recorder().await;
    let port = addr.port();
    let http = reqwest::Client::builder()
        .resolve("app.localhost", addr)
        .resolve("api.example", addr)
        .build()
        .unwrap();
    let client = reqwest_middleware::ClientBuilder::new(http)
        .with(AuthorizeMiddleware::new(
            StaticToken::bearer("t0ken-secret").unwrap(),
        ))
        .build();
    let res = client
        .get(format!("http://app.localhost:{port}/"))
        .send()
        .await;
    let err = match res {
        Ok(res) => panic!("app.localhost was sent: {}", res.status()),
        Err(err) => err,
    };
    let inner = Error::find_in_reqwest(&err).expect("the crate's error");
    assert!(matches!(inner, Error::Configuration(_)), "{inner}");
    assert!(!err.to_string().contains("t0ken-secret"), "{err}");
    assert!(heads.lock().unwrap().is_empty());

    let (first, redirector) = start_peer(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://api.example:{port}/moved\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    ))
    .await;
    let res = client
        .get(format!("http://127.0.0.1:{}/start", redirector.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let first = first.lock().unwrap();
    assert!(
        first[0]
            .to_ascii_lowercase()
            .contains("authorization: bearer t0ken-secret"),
        "{first:?}"
    );
    let heads = heads.lock().unwrap();
    assert_eq!(heads.len(), 1, "{heads:?}");
    assert!(heads[0].starts_with("GET /moved"), "{heads:?}");
    assert!(
        !heads[0].to_ascii_lowercase().contains("authorization"),
        "the token followed the redirect: {heads:?}"
    );
}
