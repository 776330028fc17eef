//! Token endpoints that fail, hang, reset, trickle, flood or lie: every case gives a
//! typed error, nothing panics, backoff holds, and a still-valid token is unaffected.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tower_bearer::client::{Authorizer, HttpClient, Refreshing, TokenEndpoint};
use tower_bearer::{Endpoint, Error, Token};

/// A raw TCP "token endpoint": for each connection, reads the request head and
/// runs `answer` on the socket.
async fn raw_server<F, Fut>(answer: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut seen = Vec::new();
                // Read until the end of the head and the small form body.
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                answer(socket).await;
            });
        }
    });
    (url, count)
}

fn cache(
    url: &str,
    timeout: Duration,
) -> Refreshing<tower_bearer::client::source::ClientCredentials> {
    let endpoint = TokenEndpoint::new(url)
        .unwrap()
        .client_id("id")
        .client_secret("secret")
        .http_client(HttpClient::new().timeout(timeout).max_body(64 * 1024));
    Refreshing::builder(endpoint.client_credentials())
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .build()
}

async fn get(a: &impl Authorizer) -> Result<String, Error> {
    a.credential()
        .await
        .map(|c| c.unwrap().value.to_str().unwrap().to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_reset_connection_is_a_transport_error() {
    let (url, count) = raw_server(|socket| async move { drop(socket) }).await;
    let err = get(&cache(&url, Duration::from_secs(5))).await.unwrap_err();
    assert!(matches!(err, Error::Transport(..)), "{err:?}");
    assert!(err.is_retryable());
    assert!(count.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_trickling_body_hits_the_timeout() {
    let (url, _) = raw_server(|mut socket| async move {
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 400\r\n\r\n{";
        let _ = socket.write_all(head.as_bytes()).await;
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if socket.write_all(b" ").await.is_err() {
                return;
            }
        }
    })
    .await;
    let err = get(&cache(&url, Duration::from_secs(5))).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(Endpoint::Token, d) if d == Duration::from_secs(5)),
        "{err:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_endpoint_hits_the_timeout() {
    let (url, _) = raw_server(|socket| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(socket);
    })
    .await;
    let err = get(&cache(&url, Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(..)), "{err:?}");
}

#[tokio::test]
async fn ten_megabytes_are_refused_with_or_without_a_length() {
    for chunked in [false, true] {
        let (url, _) = raw_server(move |mut socket| async move {
            let head = if chunked {
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
            } else {
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", 10 << 20)
            };
            let _ = socket.write_all(head.as_bytes()).await;
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..160 {
                let sent = if chunked {
                    let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
                    framed.extend_from_slice(&chunk);
                    framed.extend_from_slice(b"\r\n");
                    socket.write_all(&framed).await
                } else {
                    socket.write_all(&chunk).await
                };
                if sent.is_err() {
                    return;
                }
            }
        })
        .await;
        let err = get(&cache(&url, Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidResponse(Endpoint::Token, m) if m.contains("larger than")),
            "chunked={chunked}: {err:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn lying_answers_are_typed_errors() {
    let bodies: [(&str, &str); 8] = [
        (
            r#"{"token_type":"bearer","expires_in":60}"#,
            "no access_token",
        ),
        (r#"{"access_token":"a","token_type":"mac"}"#, "mac"),
        (
            r#"{"access_token":"a","token_type":"bearer","expires_in":-5}"#,
            "expires_in",
        ),
        (
            r#"{"access_token":"a","token_type":"bearer","expires_in":0}"#,
            "expires_in",
        ),
        (
            r#"{"access_token":"a","token_type":"bearer","expires_in":"soon"}"#,
            "expires_in",
        ),
        (
            r#"{"access_token":"sec ret","token_type":"bearer"}"#,
            "access_token",
        ),
        (r#"{"access_token":12,"token_type":"bearer"}"#, "JSON"),
        ("<html>hello</html>", "JSON"),
    ];
    for (body, says) in bodies {
        let (url, _) = raw_server(move |mut socket| async move {
            let res = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(res.as_bytes()).await;
        })
        .await;
        let err = get(&cache(&url, Duration::from_secs(5))).await.unwrap_err();
        assert!(
            matches!(&err, Error::InvalidResponse(Endpoint::Token, m) if m.contains(says)),
            "{body}: {err:?}"
        );
        assert!(
            !err.to_string().contains("sec ret"),
            "the token is not echoed: {err}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_huge_expires_in_means_no_expiry() {
    let (url, _) = raw_server(|mut socket| async move {
        let body =
            r#"{"access_token":"a","token_type":"bearer","expires_in":18446744073709551615}"#;
        let res = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = socket.write_all(res.as_bytes()).await;
    })
    .await;
    let cache = cache(&url, Duration::from_secs(5));
    assert_eq!(get(&cache).await.unwrap(), "Bearer a");
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    assert_eq!(get(&cache).await.unwrap(), "Bearer a");
    assert_eq!(cache.stats().refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn invalid_client_is_typed_and_retried_only_after_backoff() {
    let s = common::start().await;
    // Wrong secret: the endpoint answers 401 invalid_client.
    let endpoint = TokenEndpoint::new(&s.token_url())
        .unwrap()
        .client_id("id")
        .client_secret("wrong");
    let cache = Refreshing::builder(endpoint.client_credentials())
        .backoff(Duration::from_secs(5), Duration::from_secs(5))
        .build();
    for _ in 0..50 {
        let err = get(&cache).await.unwrap_err();
        assert_eq!(err.oauth_code(), Some("invalid_client"));
        assert!(!err.is_retryable());
    }
    assert_eq!(s.idp.tokens(), 1);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(get(&cache).await.is_err());
    assert_eq!(s.idp.tokens(), 2);
}

/// 2,000 callers spread over 30 s (paused clock) while the endpoint fails every
/// other request: each caller gets a token or a typed error (none is lost or
/// hangs), and token requests stay within the backoff schedule.
#[tokio::test(start_paused = true)]
async fn a_flaky_endpoint_under_load_loses_nobody() {
    let s = common::start().await;
    s.idp.set_lifetime(Some(4));
    let flip = Arc::new(AtomicUsize::new(0));
    let idp = s.idp.clone();
    let f = flip.clone();
    // Alternate the endpoint between failing and working on every token request.
    let source = tower_bearer::client::source::from_fn({
        let endpoint = TokenEndpoint::new(&s.token_url())
            .unwrap()
            .client_id("id")
            .client_secret("secret");
        move |_prev: Option<Token>| {
            let endpoint = endpoint.clone();
            let n = f.fetch_add(1, Ordering::SeqCst);
            let idp = idp.clone();
            async move {
                idp.set_mode(if n.is_multiple_of(2) {
                    common::Mode::Fail(503, "flaky", None)
                } else {
                    common::Mode::Normal
                });
                endpoint
                    .request(&[("grant_type", "client_credentials")])
                    .await
            }
        }
    });
    let cache = Refreshing::builder(source)
        .refresh_before(Duration::from_secs(1))
        .jitter(Duration::ZERO)
        .backoff(Duration::from_secs(1), Duration::from_secs(2))
        .build();
    let mut tasks = Vec::new();
    for i in 0..2_000u64 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 15)).await;
            tokio::time::timeout(Duration::from_secs(60), get(&cache)).await
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        match t.await.unwrap().expect("no caller hangs") {
            Ok(_) => ok += 1,
            Err(Error::TokenEndpoint(e)) if e.status == 503 => failed += 1,
            Err(other) => panic!("unexpected error: {other:?}"),
        }
    }
    eprintln!("ok={ok} failed={failed} token_requests={}", s.idp.tokens());
    assert_eq!(ok + failed, 2_000);
    assert!(
        ok > failed,
        "most callers are served: ok={ok} failed={failed}"
    );
    // 30 s with 4 s tokens and at most one attempt per backoff (>= 0.5 s): bounded.
    let requests = s.idp.tokens();
    assert!((8..=70).contains(&requests), "token requests {requests}");
}
