//! AuthorizeLayer over a real hyper-util client, against a real API on 127.0.0.1.

mod common;

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};
use tower_bearer::client::{
    ApiKey, AuthorizeError, AuthorizeLayer, Refreshing, StaticToken, TokenEndpoint,
};
use tower_bearer::{Error, Token};

fn cache(s: &common::Servers) -> Refreshing<tower_bearer::client::source::ClientCredentials> {
    let endpoint = TokenEndpoint::new(&s.token_url())
        .unwrap()
        .client_id("id")
        .client_secret("secret");
    Refreshing::new(endpoint.client_credentials())
}

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::default()).unwrap()
}

/// Sends a GET to the API through `client`; the answer's status.
async fn send<S>(client: &mut S, s: &common::Servers) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Debug,
{
    let svc = client.ready().await.unwrap();
    svc.call(get(&s.api_url())).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_hyper_share_one_token_request() {
    let s = common::start().await;
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(cache(&s)).retry_unauthorized())
        .service(common::http_client::<Full<Bytes>>());
    let mut tasks = Vec::new();
    for _ in 0..300 {
        let client = client.clone();
        let url = s.api_url();
        tasks.push(tokio::spawn(async move {
            let res = client.oneshot(get(&url)).await.unwrap();
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, body)
        }));
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "hello");
    }
    assert_eq!(s.idp.tokens(), 1);
    assert_eq!(s.idp.api(), 300);
}

#[tokio::test]
async fn a_401_invalidates_once_and_the_request_is_retried_once() {
    let s = common::start().await;
    let authorizer = cache(&s);
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()).retry_unauthorized())
        .service(common::http_client::<Full<Bytes>>());
    assert_eq!(send(&mut client, &s).await, StatusCode::OK);
    assert_eq!((s.idp.tokens(), s.idp.api()), (1, 1));

    // The API forgets every token: the next request is refused once, the token is
    // dropped, a new one fetched, and the request sent again.
    s.idp.revoke_all_access();
    assert_eq!(send(&mut client, &s).await, StatusCode::OK);
    assert_eq!(s.idp.tokens(), 2, "one refresh after the 401");
    assert_eq!(s.idp.api(), 3, "one retry");
    assert_eq!(s.idp.api_unauthorized.load(Ordering::SeqCst), 1);

    // An API that refuses everything, right after that 401-triggered refresh: the
    // throttle holds, so the token is kept (another API may take it), no token is
    // fetched, and the retry, which would carry the same token, is not sent.
    s.idp.api_rejects_all.store(true, Ordering::SeqCst);
    assert_eq!(send(&mut client, &s).await, StatusCode::UNAUTHORIZED);
    assert_eq!((s.idp.api(), s.idp.tokens()), (4, 2));
    assert_eq!(send(&mut client, &s).await, StatusCode::UNAUTHORIZED);
    assert_eq!((s.idp.api(), s.idp.tokens()), (5, 2));
}

#[tokio::test]
async fn an_api_that_refuses_every_token_does_not_turn_requests_into_token_requests() {
    let s = common::start().await;
    let endpoint = TokenEndpoint::new(&s.token_url())
        .unwrap()
        .client_id("id")
        .client_secret("secret");
    // A long backoff, so that no hold runs out while the test runs in real time.
    let authorizer = Refreshing::builder(endpoint.client_credentials())
        .backoff(Duration::from_secs(30), Duration::from_secs(120))
        .build();
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer.clone()))
        .service(common::http_client::<Full<Bytes>>());
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::OK
    );
    s.idp.api_rejects_all.store(true, Ordering::SeqCst);

    // The first rejection may be a revocation: the next request refreshes at once.
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.idp.tokens(), 2);
    // The new token was refused too, right after a 401-triggered refresh: the next
    // such refresh waits the backoff, however many requests are refused meanwhile.
    for _ in 0..50 {
        let status = send_or_error(&mut client, &s).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(s.idp.tokens(), 2);

    // After the backoff (30 s, plus up to a tenth of jitter) one token is fetched;
    // refused again, the gap doubles.
    skip(Duration::from_secs(34)).await;
    for _ in 0..3 {
        let _ = send_or_error(&mut client, &s).await;
    }
    wait_for_token_requests(&s, 3).await;
    // The second gap is 60 s (plus jitter): still held 55 s later.
    skip(Duration::from_secs(55)).await;
    for _ in 0..3 {
        let _ = send_or_error(&mut client, &s).await;
    }
    assert_eq!(s.idp.tokens(), 3, "held");

    // The API takes tokens again: when the gap ends one token is fetched, and
    // requests go through.
    s.idp.api_rejects_all.store(false, Ordering::SeqCst);
    skip(Duration::from_secs(11)).await;
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::OK
    );
    wait_for_token_requests(&s, 4).await;
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(s.idp.tokens(), 4);
    // Long after the last rejection, a revocation is a first rejection again:
    // refreshed at once.
    skip(Duration::from_secs(241)).await;
    s.idp.revoke_all_access();
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send_or_error(&mut client, &s).await.unwrap(),
        StatusCode::OK
    );
    assert_eq!(s.idp.tokens(), 5);
}

/// Waits (a bounded number of short real sleeps) until the IdP saw `n` token
/// requests: a background refresh runs on its own task.
async fn wait_for_token_requests(s: &common::Servers, n: usize) {
    for _ in 0..500 {
        if s.idp.tokens() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.idp.tokens(), n);
}

/// Moves the tokio clock forward while the servers keep using real sockets.
async fn skip(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

/// Sends a GET through `client`: the answer's status, or the authorizer's error.
async fn send_or_error<S>(client: &mut S, s: &common::Servers) -> Result<StatusCode, Error>
where
    S: Service<
        Request<Full<Bytes>>,
        Response = Response<hyper::body::Incoming>,
        Error = AuthorizeError,
    >,
{
    let svc = client.ready().await.unwrap();
    match svc.call(get(&s.api_url())).await {
        Ok(res) => Ok(res.status()),
        Err(AuthorizeError::Credential(e)) => Err(e),
        Err(e) => panic!("not an authorizer error: {e:?}"),
    }
}

#[tokio::test]
async fn without_replay_the_401_is_returned_and_the_next_request_refreshes() {
    let s = common::start().await;
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(cache(&s)))
        .service(common::http_client::<Full<Bytes>>());
    assert_eq!(send(&mut client, &s).await, 200);
    s.idp.revoke_all_access();
    assert_eq!(send(&mut client, &s).await, 401);
    assert_eq!(send(&mut client, &s).await, 200);
    assert_eq!(s.idp.tokens(), 2);
    assert_eq!(s.idp.api(), 3);
}

#[tokio::test]
async fn a_static_token_that_is_refused_is_not_retried() {
    let s = common::start().await;
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(StaticToken::bearer("bogus").unwrap()).retry_unauthorized())
        .service(common::http_client::<Full<Bytes>>());
    let res = client.oneshot(get(&s.api_url())).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(s.idp.api(), 1, "retrying the same credential cannot help");
}

#[tokio::test(start_paused = true)]
async fn a_credential_failure_is_the_service_error_and_the_request_is_not_sent() {
    let s = common::start().await;
    s.idp.set_mode(common::Mode::Fail(500, "down", None));
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(cache(&s)))
        .service(common::http_client::<Full<Bytes>>());
    let err = client.oneshot(get(&s.api_url())).await.unwrap_err();
    // Typed: no downcast.
    let AuthorizeError::Credential(ours) = &err else {
        panic!("not an authorizer error: {err:?}")
    };
    assert!(matches!(ours, Error::TokenEndpoint(e) if e.status == 500));
    assert_eq!(err.credential_error().map(Error::oauth_code), Some(None));
    assert_eq!(
        err.to_string(),
        ours.to_string(),
        "its message is the cause's"
    );
    // Boxed, as a stack that wants a BoxError boxes it: still found.
    let boxed: tower::BoxError = err.into();
    assert!(matches!(
        Error::find(&*boxed),
        Some(Error::TokenEndpoint(e)) if e.status == 500
    ));
    assert_eq!(s.idp.api(), 0);
}

#[tokio::test]
async fn an_inner_service_failure_is_the_service_variant_with_its_own_error() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(StaticToken::bearer("t0ken").unwrap()))
        .service(common::http_client::<Full<Bytes>>());
    let err = client
        .oneshot(get(&format!("http://{closed}/api")))
        .await
        .unwrap_err();
    assert!(err.credential_error().is_none(), "{err:?}");
    assert!(
        err.service_error()
            .is_some_and(|e| e.is::<hyper_util::client::legacy::Error>()),
        "{err:?}"
    );
    assert!(Error::find(&err).is_none());
    // The inner error itself, to downcast as without the layer.
    assert!(err
        .into_inner()
        .downcast::<hyper_util::client::legacy::Error>()
        .is_ok());
}

type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

/// An inner service that records the headers it was given and answers with `answer`.
fn recorder(
    answer: fn(usize) -> Response<Full<Bytes>>,
) -> (
    Seen,
    impl Service<
            Request<Full<Bytes>>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
            Future = impl Send,
        > + Clone,
) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let svc = service_fn(move |req: Request<Full<Bytes>>| {
        let mut seen = s.lock().unwrap();
        seen.push(req.headers().clone());
        let n = seen.len();
        async move { Ok::<_, Infallible>(answer(n)) }
    });
    (seen, svc)
}

#[tokio::test]
async fn headers_are_sensitive_and_api_keys_use_their_header() {
    let (seen, svc) = recorder(|_| Response::new(Full::default()));
    let client = AuthorizeLayer::new(ApiKey::new("x-api-key", "k-1").unwrap()).layer(svc.clone());
    client.oneshot(get("https://api.test/")).await.unwrap();
    let token = Refreshing::builder(tower_bearer::client::source::from_fn(|_| async {
        Token::bearer("t-1")
    }))
    .build();
    AuthorizeLayer::new(token)
        .layer(svc)
        .oneshot(get("https://api.test/"))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0]["x-api-key"], "k-1");
    assert!(seen[0]["x-api-key"].is_sensitive());
    assert!(seen[0].get("authorization").is_none());
    assert_eq!(seen[1]["authorization"], "Bearer t-1");
    assert!(seen[1]["authorization"].is_sensitive());
}

/// Static tokens, Basic and API keys never change: the layer puts their header on each
/// request as is, and still judges each answer (a step-up challenge reaches the
/// caller, in the answer's extensions, whatever the authorizer).
#[tokio::test]
async fn fixed_credentials_go_on_every_request_and_their_answers_are_judged() {
    use tower_bearer::client::{Authorizer, Basic, StepUpChallenge};
    let (seen, svc) = recorder(|n| {
        let mut res = Response::new(Full::default());
        if n % 2 == 0 {
            *res.status_mut() = StatusCode::UNAUTHORIZED;
            res.headers_mut().insert(
                "www-authenticate",
                r#"Bearer error="insufficient_user_authentication", acr_values="mfa""#
                    .parse()
                    .unwrap(),
            );
        }
        res
    });
    async fn twice<A: Authorizer + Clone, S>(authorizer: A, svc: S) -> Option<StepUpChallenge>
    where
        S: Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>> + Clone,
        S::Error: Into<tower::BoxError>,
    {
        assert!(authorizer.fixed_credential().is_some());
        let client = AuthorizeLayer::new(authorizer).layer(svc);
        let ok = client
            .clone()
            .oneshot(get("https://api.test/"))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert!(ok.extensions().get::<StepUpChallenge>().is_none());
        let step_up = client.oneshot(get("https://api.test/")).await.unwrap();
        assert_eq!(step_up.status(), StatusCode::UNAUTHORIZED);
        step_up.extensions().get::<StepUpChallenge>().cloned()
    }
    let challenge = twice(StaticToken::bearer("t0ken").unwrap(), svc.clone()).await;
    assert_eq!(
        challenge.map(|c| c.acr_values),
        Some(vec!["mfa".to_owned()])
    );
    assert!(twice(Basic::new("id", "pw").unwrap(), svc.clone())
        .await
        .is_some());
    assert!(twice(ApiKey::new("x-api-key", "k-1").unwrap(), svc)
        .await
        .is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 6, "each request sent once");
    for (headers, (name, value)) in seen.iter().zip([
        ("authorization", "Bearer t0ken"),
        ("authorization", "Bearer t0ken"),
        ("authorization", "Basic aWQ6cHc="),
        ("authorization", "Basic aWQ6cHc="),
        ("x-api-key", "k-1"),
        ("x-api-key", "k-1"),
    ]) {
        assert_eq!(headers[name], value);
        assert!(headers[name].is_sensitive());
        assert!(headers.get("dpop").is_none());
    }
}

/// Authorizers whose credential depends on the request never report a fixed one,
/// whatever they wrap.
#[test]
fn per_request_authorizers_have_no_fixed_credential() {
    use tower_bearer::client::{Authorizer, PerResource};
    let fixed = StaticToken::bearer("t0ken").unwrap();
    assert!(fixed.fixed_credential().is_some());
    assert!(Arc::new(fixed.clone()).fixed_credential().is_some());
    let per_resource = PerResource::new()
        .at("https://api.test/", fixed.clone())
        .unwrap();
    assert!(per_resource.fixed_credential().is_none());
    #[cfg(feature = "dpop")]
    {
        let key = tower_bearer::client::DpopKey::generate().unwrap();
        let bound = tower_bearer::client::Dpop::new(key, fixed);
        assert!(bound.fixed_credential().is_none());
    }
}

#[tokio::test]
async fn grpc_unauthenticated_invalidates_the_token() {
    let (seen, svc) = recorder(|n| {
        let mut res = Response::new(Full::default());
        if n == 1 {
            res.headers_mut()
                .insert("grpc-status", "16".parse().unwrap());
        }
        res
    });
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = counter.clone();
    let token = Refreshing::new(tower_bearer::client::source::from_fn(move |_| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move { Token::bearer(format!("t-{n}")) }
    }));
    let client = AuthorizeLayer::new(token).retry_unauthorized().layer(svc);
    let res = client.oneshot(get("https://grpc.test/")).await.unwrap();
    assert!(
        res.headers().get("grpc-status").is_none(),
        "the retry succeeded"
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0]["authorization"], "Bearer t-0");
    assert_eq!(seen[1]["authorization"], "Bearer t-1");
}

#[tokio::test]
async fn a_401_with_another_scheme_is_not_a_token_problem() {
    let (seen, svc) = recorder(|_| {
        let mut res = Response::new(Full::default());
        *res.status_mut() = StatusCode::UNAUTHORIZED;
        res.headers_mut()
            .insert("www-authenticate", r#"Basic realm="x""#.parse().unwrap());
        res
    });
    let token = Refreshing::new(tower_bearer::client::source::from_fn(|_| async {
        Token::bearer("t")
    }));
    let client = AuthorizeLayer::new(token.clone())
        .retry_unauthorized()
        .layer(svc);
    let res = client.oneshot(get("https://api.test/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(token.stats().refreshes, 1, "the token was kept");
}

/// Which answers an authorizer hears of, and as what: a refusal is reported by
/// `on_unauthorized`; an answer that says nothing against the credential (a step-up
/// challenge and a `401` for another scheme included) by `on_accepted`; a `5xx` by
/// neither.
#[tokio::test]
async fn each_answer_is_reported_as_the_authorizer_docs_say() {
    use tower_bearer::client::{Authorizer, Credential, CredentialFuture};

    #[derive(Clone, Default)]
    struct Heard(Arc<Mutex<Vec<&'static str>>>);
    impl Authorizer for Heard {
        fn credential(&self) -> CredentialFuture {
            let value = http::HeaderValue::from_static("Bearer t");
            CredentialFuture::ready(Ok(Some(Credential::authorization(value))))
        }
        fn on_unauthorized(&self, sent: &http::HeaderValue) {
            assert_eq!(sent, "Bearer t");
            self.0.lock().unwrap().push("refused");
        }
        fn on_accepted(&self, sent: &http::HeaderValue) {
            assert_eq!(sent, "Bearer t");
            self.0.lock().unwrap().push("accepted");
        }
    }

    // (status, header, value, what the authorizer hears)
    const ANSWERS: [(u16, &str, &str, &str); 9] = [
        (200, "", "", "accepted"),
        (
            403,
            "www-authenticate",
            r#"Bearer error="insufficient_scope""#,
            "accepted",
        ),
        (
            401,
            "www-authenticate",
            r#"Bearer error="insufficient_user_authentication""#,
            "accepted",
        ),
        (401, "www-authenticate", r#"Basic realm="x""#, "accepted"),
        (500, "", "", "nothing"),
        (
            401,
            "www-authenticate",
            r#"Bearer error="invalid_token""#,
            "refused",
        ),
        (401, "", "", "refused"),
        (
            401,
            "www-authenticate",
            r#"DPoP error="invalid_token""#,
            "refused",
        ),
        (200, "grpc-status", "16", "refused"),
    ];
    let (_, svc) = recorder(|n| {
        let (status, name, value, _) = ANSWERS[n - 1];
        let mut res = Response::new(Full::default());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        if !name.is_empty() {
            res.headers_mut()
                .insert(name, http::HeaderValue::from_static(value));
        }
        res
    });
    let heard = Heard::default();
    assert!(heard.fixed_credential().is_none() && heard.observes_answers());
    let client = AuthorizeLayer::new(heard.clone()).layer(svc);
    for (status, _, _, expected) in ANSWERS {
        let before = heard.0.lock().unwrap().len();
        let res = client
            .clone()
            .oneshot(get("https://api.test/"))
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status);
        let heard = heard.0.lock().unwrap();
        let what = heard.get(before).copied().unwrap_or("nothing");
        assert_eq!(what, expected, "answer {status} with {:?}", heard.last());
        assert!(heard.len() <= before + 1, "one report per answer");
    }
}

/// Issue 29, defect 9: `PerResource` picks the API by the path the server will
/// read, not by its spelling. Through a real hyper-util client to a real server on
/// 127.0.0.1 (which records what `Authorization` each request carried): dot segments,
/// percent-encoded dots and slashes, backslashes and doubled slashes that lead out
/// of `/v1` never carry the `/v1` token; spellings that stay inside it still do.
#[tokio::test]
async fn per_resource_never_carries_a_token_outside_its_api_through_path_tricks() {
    use tower_bearer::client::PerResource;
    // (the path the server read, the Authorization it got)
    type Seen = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            record
                .lock()
                .unwrap()
                .push((req.uri().path().to_owned(), auth));
            "ok"
        }
    });
    let addr = common::server::serve(app).await;
    let base = format!("http://{addr}");
    let authorizer = PerResource::new()
        .at(
            &format!("{base}/v1"),
            StaticToken::bearer("v1-token").unwrap(),
        )
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer))
        .service(common::http_client::<Full<Bytes>>());
    let outside = [
        "/v1/../admin/keys",
        "/v1/./../admin/keys",
        "/v1/%2e%2e/admin/keys",
        "/v1/%2E%2E/admin/keys",
        "/v1/.%2e/admin/keys",
        "/v1/..%2fadmin/keys",
        "/v1%2f..%2fadmin/keys",
        "/v1/..%5cadmin/keys",
        "/v1//../../admin/keys",
        "/v1/a/../../admin",
    ];
    let inside = ["/v1/users", "/v1/a/../users", "/v1/./users", "/v1"];
    for path in outside.iter().chain(inside.iter()) {
        let svc = client.ready().await.unwrap();
        let res = svc.call(get(&format!("{base}{path}"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), outside.len() + inside.len());
    for ((path, auth), sent) in seen.iter().zip(outside.iter().chain(inside.iter())) {
        let expect_token = inside.contains(sent);
        assert_eq!(
            auth.is_some(),
            expect_token,
            "{sent} (server read {path}) carried {auth:?}"
        );
    }
}

/// Tomcat, Jetty and Spring read `;` parameters off each segment (`/v1/..;/admin`
/// is `/admin` to them), some after decoding `%3B`: such a path leaving `/v1` never
/// carries the `/v1` token; a parameter inside `/v1` is still `/v1`'s.
#[tokio::test]
async fn per_resource_reads_segment_parameters_as_servlet_servers_do() {
    use tower_bearer::client::PerResource;
    type Seen = Arc<Mutex<Vec<Option<String>>>>;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let record = record.clone();
        async move {
            let auth = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            record.lock().unwrap().push(auth);
            "ok"
        }
    });
    let addr = common::server::serve(app).await;
    let base = format!("http://{addr}");
    let authorizer = PerResource::new()
        .at(
            &format!("{base}/v1"),
            StaticToken::bearer("v1-token").unwrap(),
        )
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(AuthorizeLayer::new(authorizer))
        .service(common::http_client::<Full<Bytes>>());
    let outside = [
        "/v1/..;/admin/keys",
        "/v1/..;x=1/admin/keys",
        "/v1/%2e%2e;/admin/keys",
        "/v1/..%3b/admin/keys",
        "/v1/.;/..;/admin/keys",
    ];
    let inside = ["/v1/users;jsessionid=1", "/v1/a;b/../users"];
    for path in outside.iter().chain(inside.iter()) {
        let svc = client.ready().await.unwrap();
        let res = svc.call(get(&format!("{base}{path}"))).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), outside.len() + inside.len());
    for (auth, sent) in seen.iter().zip(outside.iter().chain(inside.iter())) {
        assert_eq!(
            auth.is_some(),
            inside.contains(sent),
            "{sent} carried {auth:?}"
        );
    }
}
