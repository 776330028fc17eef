//! AuthorizeMiddleware in a reqwest-middleware client against a real API on 127.0.0.1.
#![cfg(feature = "reqwest")]

mod common;

use std::sync::atomic::Ordering;

use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower_bearer::client::{AuthorizeMiddleware, Refreshing, StaticToken, TokenEndpoint};

fn client(s: &common::Servers) -> ClientWithMiddleware {
    let endpoint = TokenEndpoint::new(&s.token_url())
        .unwrap()
        .client_id("id")
        .client_secret("secret");
    ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(Refreshing::new(
            endpoint.client_credentials(),
        )))
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_token_request() {
    let s = common::start().await;
    let client = client(&s);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), s.api_url());
            tokio::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(s.idp.tokens(), 1);
}

#[tokio::test]
async fn a_401_invalidates_and_a_clonable_request_is_retried_once() {
    let s = common::start().await;
    let client = client(&s);
    assert_eq!(
        client
            .post(s.api_url())
            .body("payload")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    s.idp.revoke_all_access();
    let res = client
        .post(s.api_url())
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(s.idp.tokens(), 2);
    assert_eq!(s.idp.api(), 3);
    // Refused whatever the token: the token just fetched is refused again, a second
    // rejection in a row, so the retry fetches no new token and the 401 is returned.
    s.idp.api_rejects_all.store(true, Ordering::SeqCst);
    assert_eq!(client.get(s.api_url()).send().await.unwrap().status(), 401);
    assert_eq!(s.idp.api(), 4);
    assert_eq!(s.idp.tokens(), 2);
}

#[tokio::test]
async fn a_streaming_body_is_not_replayed_but_the_next_request_refreshes() {
    let s = common::start().await;
    let client = client(&s);
    assert_eq!(client.get(s.api_url()).send().await.unwrap().status(), 200);
    s.idp.revoke_all_access();
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>("chunk")]);
    let res = client
        .post(s.api_url())
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "a stream cannot be sent twice");
    assert_eq!(client.get(s.api_url()).send().await.unwrap().status(), 200);
    assert_eq!(s.idp.tokens(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_credential_failure_is_a_middleware_error_holding_the_crate_error() {
    let s = common::start().await;
    s.idp.set_mode(common::Mode::Fail(
        400,
        r#"{"error":"invalid_client"}"#,
        None,
    ));
    let err = client(&s).get(s.api_url()).send().await.unwrap_err();
    assert!(matches!(err, reqwest_middleware::Error::Middleware(_)));
    let ours = tower_bearer::Error::find_in_reqwest(&err).expect("a tower_bearer::Error");
    assert_eq!(ours.oauth_code(), Some("invalid_client"));
    assert_eq!(s.idp.api(), 0, "nothing sent without a credential");
}

#[tokio::test]
async fn static_authorizers_work_too() {
    let s = common::start().await;
    let token = s.idp.issue_access(60);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(
            StaticToken::bearer(&token).unwrap(),
        ))
        .build();
    assert_eq!(client.get(s.api_url()).send().await.unwrap().status(), 200);
}

/// An authorizer with a fixed credential: the middleware puts it on each request as
/// is, asks for nothing, reports nothing and replays nothing, as `AuthorizeLayer`
/// does; a step-up challenge still reaches the caller.
#[tokio::test]
async fn a_fixed_credential_is_sent_as_is_and_its_answers_are_only_judged() {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use tower_bearer::client::{Authorizer, Credential, CredentialFuture, StepUpChallenge};

    struct Fixed {
        credential: Credential,
        asked: Arc<AtomicUsize>,
        reported: Arc<AtomicUsize>,
    }
    impl Authorizer for Fixed {
        fn credential(&self) -> CredentialFuture {
            self.asked.fetch_add(1, Ordering::SeqCst);
            CredentialFuture::ready(Ok(Some(self.credential.clone())))
        }
        fn fixed_credential(&self) -> Option<&Credential> {
            Some(&self.credential)
        }
        fn on_unauthorized(&self, _: &http::HeaderValue) {
            self.reported.fetch_add(1, Ordering::SeqCst);
        }
        fn on_accepted(&self, _: &http::HeaderValue) {
            self.reported.fetch_add(1, Ordering::SeqCst);
        }
    }

    let s = common::start().await;
    let token = s.idp.issue_access(60);
    let value = http::HeaderValue::try_from(format!("Bearer {token}")).unwrap();
    let (asked, reported) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(AuthorizeMiddleware::new(Fixed {
            credential: Credential::authorization(value),
            asked: asked.clone(),
            reported: reported.clone(),
        }))
        .build();
    // A body that can be cloned: the request could be replayed, and must not be.
    let send = |url: String| client.post(url).body("payload").send();
    assert_eq!(send(s.api_url()).await.unwrap().status(), 200);
    s.idp.revoke_all_access();
    let refused = send(s.api_url()).await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.extensions().get::<StepUpChallenge>().is_none());
    assert_eq!(s.idp.api(), 2, "the refused request was not replayed");

    // An API that wants a stronger login: its challenge reaches the caller.
    let mfa = common::serve(axum::Router::new().route(
        "/",
        axum::routing::post(|| async {
            let challenge = r#"Bearer error="insufficient_user_authentication", acr_values="mfa""#;
            (
                http::StatusCode::UNAUTHORIZED,
                [("www-authenticate", challenge)],
            )
        }),
    ))
    .await;
    let step_up = send(format!("http://{mfa}/")).await.unwrap();
    assert_eq!(step_up.status(), 401);
    let challenge = step_up.extensions().get::<StepUpChallenge>().cloned();
    assert_eq!(
        challenge.map(|c| c.acr_values),
        Some(vec!["mfa".to_owned()])
    );
    assert_eq!(asked.load(Ordering::SeqCst), 0, "nothing was asked for");
    assert_eq!(reported.load(Ordering::SeqCst), 0, "nothing was reported");
}
