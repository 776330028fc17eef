//! The device authorization grant (RFC 8628) against a real token server on
//! 127.0.0.1, on tokio's paused clock.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::ExposeSecret;
use tower_bearer::client::source::{Chain, DeviceAuthorization, DeviceCode, EnvSource};
use tower_bearer::client::{TokenEndpoint, TokenSource};
use tower_bearer::Error;

fn device(s: &common::Servers) -> (DeviceCode, Arc<Mutex<Vec<DeviceAuthorization>>>) {
    let shown = Arc::new(Mutex::new(Vec::new()));
    let seen = shown.clone();
    let endpoint = TokenEndpoint::new(&s.token_url()).unwrap().client_id("cli");
    let d = DeviceCode::new(endpoint, &s.device_url())
        .unwrap()
        .scope("openid offline_access")
        .show(move |auth| seen.lock().unwrap().push(auth.clone()));
    (d, shown)
}

fn script(s: &common::Servers, answers: &[&'static str]) {
    s.idp.device_script.lock().unwrap().extend(answers);
}

/// Seconds between the device-code polls the server saw, the first counted from `start`.
fn gaps(s: &common::Servers, start: tokio::time::Instant) -> Vec<u64> {
    let polls = s.idp.device_polls.lock().unwrap();
    let mut last = start;
    polls
        .iter()
        .map(|t| {
            let gap = t.duration_since(last).as_secs_f64().round() as u64;
            last = *t;
            gap
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn pending_then_slow_down_then_success() {
    let s = common::start().await;
    let (d, shown) = device(&s);
    script(
        &s,
        &[
            "authorization_pending",
            "slow_down",
            "authorization_pending",
            "ok",
        ],
    );
    let start = tokio::time::Instant::now();
    let token = d.fetch(None).await.unwrap();
    assert!(token.access_token().expose_secret().starts_with("at-"));
    assert!(token.refresh_token().is_some());

    // The person was shown where to go, once.
    let shown = shown.lock().unwrap();
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].user_code, "WDJB-MJHT");
    assert_eq!(shown[0].verification_uri, "https://idp.example/device");
    assert_eq!(
        shown[0].verification_uri_complete.as_deref(),
        Some("https://idp.example/device?user_code=WDJB-MJHT")
    );
    assert_eq!(shown[0].interval, Duration::from_secs(5));
    let text = shown[0].to_string();
    assert!(text.contains("WDJB-MJHT") && text.contains("https://idp.example/device"));
    assert!(
        !text.contains("dc-"),
        "the device code is not shown: {text}"
    );

    // 5 s default interval; slow_down adds 5 s for the rest of the flow.
    assert_eq!(gaps(&s, start), [5, 5, 10, 10]);
    let req = &s.idp.device_requests.lock().unwrap()[0];
    assert_eq!(
        req.get("scope").map(String::as_str),
        Some("openid offline_access")
    );
    let form = s.idp.last_form.lock().unwrap();
    assert_eq!(
        form.get("grant_type").map(String::as_str),
        Some("urn:ietf:params:oauth:grant-type:device_code")
    );
    assert_eq!(form.get("client_id").map(String::as_str), Some("cli"));
}

#[tokio::test(start_paused = true)]
async fn the_servers_interval_is_honoured() {
    let s = common::start().await;
    *s.idp.device_interval.lock().unwrap() = Some(2);
    let (d, _) = device(&s);
    script(
        &s,
        &["authorization_pending", "authorization_pending", "ok"],
    );
    let start = tokio::time::Instant::now();
    d.login().await.unwrap();
    assert_eq!(gaps(&s, start), [2, 2, 2]);
}

#[tokio::test(start_paused = true)]
async fn a_passing_outage_slows_polling_down_but_keeps_the_login() {
    let s = common::start().await;
    let (d, _) = device(&s);
    script(&s, &["authorization_pending", "503", "ok"]);
    let start = tokio::time::Instant::now();
    d.login().await.unwrap();
    assert_eq!(gaps(&s, start), [5, 5, 10]);
}

#[tokio::test(start_paused = true)]
async fn expired_token_is_a_typed_error() {
    let s = common::start().await;
    let (d, _) = device(&s);
    script(&s, &["authorization_pending", "expired_token"]);
    let err = d.login().await.unwrap_err();
    assert!(matches!(err, Error::DeviceCodeExpired), "{err:?}");
    assert_eq!(err.oauth_code(), Some("expired_token"));
    assert_eq!(s.idp.device_polls.lock().unwrap().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_codes_own_expiry_stops_polling() {
    let s = common::start().await;
    *s.idp.device_expires_in.lock().unwrap() = 12;
    let (d, _) = device(&s);
    script(&s, &["authorization_pending"; 10]);
    let start = tokio::time::Instant::now();
    let err = d.login().await.unwrap_err();
    assert!(matches!(err, Error::DeviceCodeExpired), "{err:?}");
    // Polls at 5 s and 10 s; the code dies at 12 s, before a poll at 15 s.
    assert_eq!(s.idp.device_polls.lock().unwrap().len(), 2);
    assert_eq!(start.elapsed().as_secs(), 12);
}

#[tokio::test(start_paused = true)]
async fn access_denied_is_a_typed_error_and_stops_the_chain() {
    let s = common::start().await;
    let (d, _) = device(&s);
    script(&s, &["authorization_pending", "access_denied"]);
    let chain = Chain::new()
        .env(EnvSource::new("APP").lookup(|_| None))
        .login("device code", d);
    let err = chain.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::AccessDenied(_)), "{err:?}");
    assert_eq!(err.oauth_code(), Some("access_denied"));
    assert!(!err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_login_stops_polling() {
    let s = common::start().await;
    let (d, shown) = device(&s);
    script(&s, &["authorization_pending"; 100]);
    let gave_up = tokio::time::timeout(Duration::from_secs(21), d.login()).await;
    assert!(gave_up.is_err(), "still pending");
    let polls = s.idp.device_polls.lock().unwrap().len();
    assert_eq!(polls, 4);
    assert_eq!(shown.lock().unwrap().len(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        s.idp.device_polls.lock().unwrap().len(),
        polls,
        "no poll after the drop"
    );
}

#[tokio::test]
async fn a_refused_client_is_an_endpoint_error() {
    let s = common::start().await;
    let endpoint = TokenEndpoint::new(&s.token_url())
        .unwrap()
        .client_id("stranger");
    let d = DeviceCode::new(endpoint, &s.device_url())
        .unwrap()
        .show(|_| {});
    let err = d.login().await.unwrap_err();
    assert_eq!(err.oauth_code(), Some("invalid_client"), "{err:?}");
    // Credentials never go in clear text to a remote host.
    let remote = TokenEndpoint::new("https://idp.example.com/token").unwrap();
    assert!(matches!(
        DeviceCode::new(remote, "http://idp.example.com/device"),
        Err(Error::Configuration(_))
    ));
    // Not even when the token endpoint is plain http on loopback.
    let local = TokenEndpoint::new(&s.token_url()).unwrap();
    assert!(matches!(
        DeviceCode::new(local, "http://idp.example.com/device"),
        Err(Error::Configuration(_))
    ));
}

/// `DeviceCode` alone behind `Refreshing`: the person is asked once; every later
/// refresh uses the refresh token, and only a refused one asks again.
#[tokio::test(start_paused = true)]
async fn device_code_alone_logs_in_once_then_refreshes() {
    use tower_bearer::client::Refreshing;
    let s = common::start().await;
    s.idp.set_lifetime(Some(60));
    s.idp
        .rotate
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let (d, shown) = device(&s);
    let cache = Refreshing::new(d);
    let first = cache.token().await.unwrap();
    assert_eq!(shown.lock().unwrap().len(), 1, "one login");
    let mut last = first.expose_access_token().to_owned();
    for _ in 0..3 {
        tokio::time::advance(Duration::from_secs(61)).await;
        let t = cache.token().await.unwrap();
        assert_ne!(t.expose_access_token(), last, "a new token");
        last = t.expose_access_token().to_owned();
    }
    assert_eq!(shown.lock().unwrap().len(), 1, "nobody was asked again");
    assert_eq!(s.idp.device_requests.lock().unwrap().len(), 1);
    let grants = s.idp.grants.lock().unwrap().clone();
    assert_eq!(
        grants,
        [
            "urn:ietf:params:oauth:grant-type:device_code",
            "refresh_token",
            "refresh_token",
            "refresh_token"
        ]
    );

    // The refresh token is revoked: the next refresh is refused, and logs in again.
    s.idp.refresh.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(61)).await;
    let t = cache.token().await.unwrap();
    assert_ne!(t.expose_access_token(), last);
    assert_eq!(
        shown.lock().unwrap().len(),
        2,
        "asked again after invalid_grant"
    );
    assert_eq!(s.idp.device_requests.lock().unwrap().len(), 2);
}

/// A refresh that fails for another reason (the endpoint is down) is an error to
/// retry later, not a new login.
#[tokio::test(start_paused = true)]
async fn device_code_does_not_log_in_again_when_the_endpoint_is_down() {
    let s = common::start().await;
    let (d, shown) = device(&s);
    let token = d.fetch(None).await.unwrap();
    assert_eq!(shown.lock().unwrap().len(), 1);
    s.idp.set_mode(common::Mode::Fail(503, "busy", None));
    let err = d.fetch(Some(&token)).await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(shown.lock().unwrap().len(), 1, "nobody was asked");
    assert_eq!(s.idp.device_requests.lock().unwrap().len(), 1);
}

/// In a chain that refreshes first, a refused refresh token is not presented a
/// second time by the device login behind it.
#[tokio::test(start_paused = true)]
async fn in_a_chain_a_refused_refresh_token_is_presented_once() {
    let s = common::start().await;
    let (d, shown) = device(&s);
    let endpoint = TokenEndpoint::new(&s.token_url()).unwrap().client_id("cli");
    let chain = Chain::new().refresh_with(endpoint).login("device code", d);
    let dead = tower_bearer::Token::bearer("old")
        .unwrap()
        .with_refresh_token("rt-dead");
    let token = chain.fetch(Some(&dead)).await.unwrap();
    assert!(token.expose_access_token().starts_with("at-"));
    assert_eq!(shown.lock().unwrap().len(), 1);
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["rt-dead"]);
}

/// `show_async`: the authorization goes to async code (a UI task here), and polling
/// starts once it has been handed over.
#[tokio::test(start_paused = true)]
async fn show_async_hands_the_code_to_async_code() {
    let s = common::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<DeviceAuthorization>(1);
    let endpoint = TokenEndpoint::new(&s.token_url()).unwrap().client_id("cli");
    let d = DeviceCode::new(endpoint, &s.device_url())
        .unwrap()
        .show_async(move |auth| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(auth).await.unwrap();
            }
        });
    let ui = tokio::spawn(async move { rx.recv().await.unwrap() });
    script(&s, &["authorization_pending", "ok"]);
    let start = tokio::time::Instant::now();
    d.login().await.unwrap();
    let auth = ui.await.unwrap();
    assert_eq!(auth.user_code, "WDJB-MJHT");
    // Shown after 1 s, then polled every 5 s.
    assert_eq!(gaps(&s, start), [6, 5]);
}

/// A resource indicator (RFC 8707) goes with the device authorization request, the
/// poll and the refresh.
#[tokio::test(start_paused = true)]
async fn resource_is_sent_with_every_device_flow_request() {
    let s = common::start().await;
    let (d, _) = device(&s);
    let d = d.resource("https://api.example.com");
    let token = d.fetch(None).await.unwrap();
    let api = Some(&"https://api.example.com".to_owned());
    assert_eq!(
        s.idp.device_requests.lock().unwrap()[0].get("resource"),
        api
    );
    assert_eq!(s.idp.last_form.lock().unwrap().get("resource"), api);
    d.fetch(Some(&token)).await.unwrap();
    let form = s.idp.last_form.lock().unwrap().clone();
    assert_eq!(form["grant_type"], "refresh_token");
    assert_eq!(form.get("resource"), api);
}

/// RFC 8628 §3.5: on `slow_down` "the interval MUST be increased by 5 seconds for
/// this and all subsequent requests", also past a minute (the code's expiry bounds
/// the wait); a passing outage afterwards never lowers the interval again.
#[tokio::test(start_paused = true)]
async fn every_slow_down_adds_five_seconds_also_past_a_minute() {
    let s = common::start().await;
    *s.idp.device_expires_in.lock().unwrap() = 1800;
    let (d, _) = device(&s);
    let mut answers = vec!["slow_down"; 13];
    answers.extend(["503", "authorization_pending", "ok"]);
    script(&s, &answers);
    let start = tokio::time::Instant::now();
    d.login().await.unwrap();
    // 5 s, then each slow_down adds 5 s for the next request: 10, 15, … 70 s.
    let mut expected: Vec<u64> = (1..=14).map(|i| 5 * i).collect();
    // The 503 after the thirteenth slow_down (at 70 s) keeps 70 s: the outage
    // backoff is capped at a minute but never undoes a slow_down.
    expected.extend([70, 70]);
    assert_eq!(gaps(&s, start), expected);
}
