//! Loopback servers and a raw HTTP client: `serve` an axum app on 127.0.0.1, send
//! it requests with exact header bytes, and read back an [`Answer`]; JWT minting
//! helpers with the keys under `tests/keys/`.

use std::net::SocketAddr;

use axum::http::header;
use axum::Router;

/// A hyper-util client for plain http.
pub fn http_client<B>(
) -> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// What a raw request got back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The `WWW-Authenticate` value, or "" when there is none (panics when it is
    /// not visible ASCII, so that an unreadable challenge never passes for none).
    pub fn challenge(&self) -> &str {
        self.headers
            .get(header::WWW_AUTHENTICATE)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

/// Sends `GET path` to `addr` with exactly these header lines (raw bytes, repeated
/// names kept), over a real connection.
pub async fn send_raw(addr: SocketAddr, path: &str, headers: &[(&str, &[u8])]) -> Answer {
    send_method(addr, "GET", path, headers).await
}

/// Sends `method path` to `addr` with exactly these header lines, over a real
/// connection.
pub async fn send_method(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Answer {
    use http_body_util::BodyExt;
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, http::HeaderValue::from_bytes(value).unwrap());
    }
    let req = req
        .body(http_body_util::Full::<bytes::Bytes>::default())
        .unwrap();
    let res = http_client().request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Serves `app` on an ephemeral loopback port.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

/// `GET path` with `Authorization: Bearer token` (or none).
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    match token {
        Some(token) => {
            let value = format!("Bearer {token}");
            send_raw(addr, path, &[("authorization", value.as_bytes())]).await
        }
        None => send_raw(addr, path, &[]).await,
    }
}

/// The contents of `tests/keys/<name>`.
pub fn key(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Seconds since the Unix epoch, plus `offset`.
pub fn now_plus(offset: i64) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    now + offset
}

/// A loopback port nobody listened on a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
