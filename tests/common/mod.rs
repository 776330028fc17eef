//! A test identity provider and a protected API, both real axum servers on
//! 127.0.0.1, with knobs to make the token endpoint fail, hang, lie or rotate.
#![allow(dead_code)]

pub mod bins;
pub mod jwks;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod provider;
#[cfg(feature = "redis")]
pub mod redis;
pub mod server;

#[allow(unused_imports)] // not every test binary uses every helper
pub use server::{http_client, send_raw, serve, Answer};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use tokio::time::Instant;

/// How the token endpoint answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Issues tokens.
    Normal,
    /// Answers this status with this body (and an optional Retry-After).
    Fail(u16, &'static str, Option<u64>),
    /// Sleeps this long, then answers normally.
    Delay(Duration),
    /// Answers normally (a refresh token rotates at once), but sends the answer
    /// only after this long: a provider whose answer is slow to arrive.
    DelayAnswer(Duration),
    /// Answers a token with `token_type: mac`.
    WrongType,
    /// Answers 200 with a body that is not JSON.
    BadJson,
}

pub struct Idp {
    pub token_requests: AtomicUsize,
    pub api_requests: AtomicUsize,
    pub api_unauthorized: AtomicUsize,
    /// When set, the API refuses every token.
    pub api_rejects_all: AtomicBool,
    pub mode: Mutex<Mode>,
    /// `expires_in` of issued tokens, seconds; None: no `expires_in`.
    pub lifetime: Mutex<Option<u64>>,
    /// Whether refresh tokens are single use (each refresh issues a new one).
    pub rotate: AtomicBool,
    /// Access token -> expiry.
    pub access: Mutex<HashMap<String, Instant>>,
    /// Refresh tokens that are valid now.
    pub refresh: Mutex<HashMap<String, ()>>,
    /// The refresh tokens presented, in order.
    pub refresh_seen: Mutex<Vec<String>>,
    /// The grant types requested, in order.
    pub grants: Mutex<Vec<String>>,
    /// When each token request arrived (tokio clock).
    pub token_times: Mutex<Vec<Instant>>,
    /// The Authorization header of the last token request.
    pub last_client_auth: Mutex<Option<String>>,
    /// The form of the last token request.
    pub last_form: Mutex<HashMap<String, String>>,
    next: AtomicU64,
    /// Device flow: what the next device-code polls answer, in order ("ok", "503"
    /// for a plain 503, or an RFC 8628 error code); once empty, polls succeed.
    pub device_script: Mutex<std::collections::VecDeque<&'static str>>,
    /// Device flow: when each device-code poll arrived (tokio clock).
    pub device_polls: Mutex<Vec<Instant>>,
    /// Device flow: `expires_in` and `interval` of the device authorization answer
    /// (`None`: the field is left out).
    pub device_expires_in: Mutex<u64>,
    pub device_interval: Mutex<Option<u64>>,
    /// Device flow: the forms of the device authorization requests.
    pub device_requests: Mutex<Vec<HashMap<String, String>>>,
}

impl Idp {
    fn new() -> Self {
        Idp {
            token_requests: AtomicUsize::new(0),
            api_requests: AtomicUsize::new(0),
            api_unauthorized: AtomicUsize::new(0),
            api_rejects_all: AtomicBool::new(false),
            mode: Mutex::new(Mode::Normal),
            lifetime: Mutex::new(Some(3600)),
            rotate: AtomicBool::new(false),
            access: Mutex::new(HashMap::new()),
            refresh: Mutex::new(HashMap::new()),
            refresh_seen: Mutex::new(Vec::new()),
            grants: Mutex::new(Vec::new()),
            token_times: Mutex::new(Vec::new()),
            last_client_auth: Mutex::new(None),
            last_form: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            device_script: Mutex::new(std::collections::VecDeque::new()),
            device_polls: Mutex::new(Vec::new()),
            device_expires_in: Mutex::new(600),
            device_interval: Mutex::new(None),
            device_requests: Mutex::new(Vec::new()),
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn set_lifetime(&self, secs: Option<u64>) {
        *self.lifetime.lock().unwrap() = secs;
    }

    /// Registers a refresh token as valid.
    pub fn add_refresh_token(&self, rt: &str) {
        self.refresh.lock().unwrap().insert(rt.to_owned(), ());
    }

    /// Issues an access token directly, valid for `secs`.
    pub fn issue_access(&self, secs: u64) -> String {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let at = format!("at-{n}");
        self.access
            .lock()
            .unwrap()
            .insert(at.clone(), Instant::now() + Duration::from_secs(secs));
        at
    }

    /// Revokes every access token (the API answers 401 to them).
    pub fn revoke_all_access(&self) {
        self.access.lock().unwrap().clear();
    }

    pub fn tokens(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }

    pub fn api(&self) -> usize {
        self.api_requests.load(Ordering::SeqCst)
    }
}

pub struct Servers {
    pub addr: SocketAddr,
    pub idp: Arc<Idp>,
}

impl Servers {
    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }
    pub fn api_url(&self) -> String {
        format!("http://{}/api", self.addr)
    }
    pub fn device_url(&self) -> String {
        format!("http://{}/device", self.addr)
    }
}

/// Starts the identity provider and the API on one ephemeral port.
pub async fn start() -> Servers {
    let idp = Arc::new(Idp::new());
    let app = Router::new()
        .route("/token", post(token))
        .route("/api", get(api).post(api))
        .route("/device", post(device_authorization))
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Servers { addr, idp }
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"error": code, "error_description": format!("test says {code}")})),
    )
        .into_response()
}

async fn token(
    State(idp): State<Arc<Idp>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    idp.token_requests.fetch_add(1, Ordering::SeqCst);
    idp.token_times.lock().unwrap().push(Instant::now());
    *idp.last_client_auth.lock().unwrap() = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    *idp.last_form.lock().unwrap() = form.clone();
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    idp.grants.lock().unwrap().push(grant.clone());
    let mode = idp.mode.lock().unwrap().clone();
    match mode {
        Mode::Normal => {}
        Mode::Fail(status, body, retry_after) => {
            let mut res = (
                StatusCode::from_u16(status).unwrap(),
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            if let Some(s) = retry_after {
                res.headers_mut().insert(header::RETRY_AFTER, s.into());
            }
            return res;
        }
        Mode::Delay(d) => tokio::time::sleep(d).await,
        Mode::DelayAnswer(_) => {}
        Mode::WrongType => {
            return Json(serde_json::json!({"access_token": "x", "token_type": "mac"}))
                .into_response()
        }
        Mode::BadJson => return (StatusCode::OK, "{not json").into_response(),
    }
    let mut new_refresh = None;
    match grant.as_str() {
        "refresh_token" => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            idp.refresh_seen.lock().unwrap().push(rt.clone());
            let mut valid = idp.refresh.lock().unwrap();
            if !valid.contains_key(&rt) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if idp.rotate.load(Ordering::SeqCst) {
                valid.remove(&rt);
                let n = idp.next.fetch_add(1, Ordering::SeqCst);
                let fresh = format!("rt-{n}");
                valid.insert(fresh.clone(), ());
                new_refresh = Some(fresh);
            }
        }
        "client_credentials" => {
            // Basic "id:secret" or the form fields.
            let basic_ok = headers
                .get(header::AUTHORIZATION)
                .is_some_and(|v| v == "Basic aWQ6c2VjcmV0");
            let post_ok = form.get("client_id").map(String::as_str) == Some("id")
                && form.get("client_secret").map(String::as_str) == Some("secret");
            if !basic_ok && !post_ok {
                return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
            }
        }
        "password" => {
            if form.get("username").map(String::as_str) != Some("alice")
                || form.get("password").map(String::as_str) != Some("wonderland")
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let n = idp.next.fetch_add(1, Ordering::SeqCst);
            let fresh = format!("rt-{n}");
            idp.refresh.lock().unwrap().insert(fresh.clone(), ());
            new_refresh = Some(fresh);
        }
        "urn:ietf:params:oauth:grant-type:device_code" => {
            idp.device_polls.lock().unwrap().push(Instant::now());
            if !form
                .get("device_code")
                .is_some_and(|c| c.starts_with("dc-"))
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let next = idp.device_script.lock().unwrap().pop_front();
            match next {
                None | Some("ok") => {
                    let n = idp.next.fetch_add(1, Ordering::SeqCst);
                    let fresh = format!("rt-{n}");
                    idp.refresh.lock().unwrap().insert(fresh.clone(), ());
                    new_refresh = Some(fresh);
                }
                Some("503") => {
                    return (StatusCode::SERVICE_UNAVAILABLE, "busy, try later").into_response()
                }
                Some(code) => return oauth_error(StatusCode::BAD_REQUEST, code),
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    let lifetime = *idp.lifetime.lock().unwrap();
    let at = idp.issue_access(lifetime.unwrap_or(86_400 * 365));
    let mut body = serde_json::json!({"access_token": at, "token_type": "Bearer"});
    if let Some(l) = lifetime {
        body["expires_in"] = l.into();
    }
    if let Some(rt) = new_refresh {
        body["refresh_token"] = rt.into();
    }
    if let Mode::DelayAnswer(d) = mode {
        tokio::time::sleep(d).await;
    }
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn api(State(idp): State<Arc<Idp>>, headers: HeaderMap) -> Response {
    idp.api_requests.fetch_add(1, Ordering::SeqCst);
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = !idp.api_rejects_all.load(Ordering::SeqCst)
        && presented.as_ref().is_some_and(|t| {
            idp.access
                .lock()
                .unwrap()
                .get(t)
                .is_some_and(|exp| Instant::now() < *exp)
        });
    if valid {
        (StatusCode::OK, "hello").into_response()
    } else {
        idp.api_unauthorized.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="api", error="invalid_token""#,
            )],
        )
            .into_response()
    }
}

/// The token endpoint of `s`, for the client registered as "id" / "secret".
pub fn endpoint(s: &Servers) -> tower_bearer::client::TokenEndpoint {
    endpoint_at(&s.token_url())
}

/// The token endpoint at `url`, for the client registered as "id" / "secret".
pub fn endpoint_at(url: &str) -> tower_bearer::client::TokenEndpoint {
    tower_bearer::client::TokenEndpoint::new(url)
        .unwrap()
        .client_id("id")
        .client_secret("secret")
}

/// Servers whose token endpoint knows the refresh token `rt-0`, rotates every
/// refresh token it accepts, and issues tokens that live 100 s: where the refresh
/// and lineage tests begin.
pub async fn start_rotating() -> Servers {
    let s = start().await;
    s.idp.rotate.store(true, Ordering::SeqCst);
    s.idp.add_refresh_token("rt-0");
    s.idp.set_lifetime(Some(100));
    s
}

/// A cache that refreshes with `rt` at `s`'s token endpoint and keeps its tokens
/// in `store`.
pub fn stored_cache(
    s: &Servers,
    rt: &str,
    store: impl tower_bearer::client::TokenStore,
) -> tower_bearer::Refreshing<tower_bearer::client::source::RefreshTokenGrant> {
    tower_bearer::Refreshing::builder(endpoint(s).refresh_token(rt))
        .store(store)
        .build()
}

/// The credential `a` gives a caller now (waiting for a refresh if it must), as
/// the header's text.
pub async fn credential(
    a: &impl tower_bearer::client::Authorizer,
) -> Result<String, tower_bearer::Error> {
    a.credential()
        .await
        .map(|c| c.unwrap().value.to_str().unwrap().to_owned())
}

/// Waits, yielding and never sleeping a guessed time, until `cond` holds; panics
/// when it has not after `limit` on the tokio clock.
pub async fn until(limit: Duration, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(limit, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the condition never held");
}

/// The token a request's `Authorization: Bearer` header carries (panics without one).
pub fn bearer(headers: &http::HeaderMap) -> String {
    headers["authorization"]
        .to_str()
        .unwrap()
        .trim_start_matches("Bearer ")
        .to_owned()
}

/// RFC 8628 §3.1: the device authorization endpoint.
async fn device_authorization(
    State(idp): State<Arc<Idp>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if form.get("client_id").map(String::as_str) != Some("cli") {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    idp.device_requests.lock().unwrap().push(form);
    let n = idp.next.fetch_add(1, Ordering::SeqCst);
    let mut body = serde_json::json!({
        "device_code": format!("dc-{n}"),
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://idp.example/device",
        "verification_uri_complete": "https://idp.example/device?user_code=WDJB-MJHT",
        "expires_in": *idp.device_expires_in.lock().unwrap(),
    });
    if let Some(i) = *idp.device_interval.lock().unwrap() {
        body["interval"] = i.into();
    }
    Json(body).into_response()
}

/// What tracing prints on one thread, captured.
///
/// Each test binary has one global subscriber that writes each event into the
/// capture of the thread that logs it, if that thread has one and the event is at
/// its level. A subscriber per test (`with_default`) is not reliable when tests run
/// in parallel: with a single subscriber registered, tracing caches whether a
/// callsite is enabled from the first thread that reaches it, so a test without
/// one could turn an event off for the test that captures it.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<(LogCapture, tracing::Level)>> =
        const { std::cell::RefCell::new(None) };
}

/// Stops this thread's capture when dropped.
pub struct Capturing {
    previous: Option<(LogCapture, tracing::Level)>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = self.previous.take());
    }
}

/// Writes an event into the capture of the thread that logs it.
struct ThisThread;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThisThread {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> LogCapture {
        // The filter lets through only events of capturing threads; a throwaway
        // buffer covers anything else.
        CAPTURE.with(|c| {
            c.borrow()
                .as_ref()
                .map(|(out, _)| out.clone())
                .unwrap_or_default()
        })
    }
}

impl LogCapture {
    /// Captures what this thread logs at `level` or more severe until the guard drops.
    pub fn start(level: tracing::Level) -> (LogCapture, Capturing) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::Layer;
        static INSTALLED: std::sync::Once = std::sync::Once::new();
        INSTALLED.call_once(|| {
            let this_thread = tracing_subscriber::filter::dynamic_filter_fn(|meta, _| {
                CAPTURE.with(|c| c.borrow().as_ref().is_some_and(|(_, l)| meta.level() <= l))
            });
            let layer = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(ThisThread)
                .with_filter(this_thread);
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("only LogCapture sets the subscriber of a test binary");
        });
        // A callsite first reached while the subscriber was being installed may have
        // cached "disabled"; asking again puts that right.
        tracing::callsite::rebuild_interest_cache();
        let captured = LogCapture::default();
        let previous = CAPTURE.with(|c| c.borrow_mut().replace((captured.clone(), level)));
        let guard = Capturing {
            previous,
            _not_send: std::marker::PhantomData,
        };
        (captured, guard)
    }

    /// Captures everything this thread logs until the guard drops.
    pub fn trace() -> (LogCapture, Capturing) {
        LogCapture::start(tracing::Level::TRACE)
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}
