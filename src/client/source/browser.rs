//! [`AuthorizationCode`]: a person logs in in their browser (the authorization code
//! grant with PKCE, RFC 7636, on a loopback redirect, RFC 8252).
//!
//! One login, step by step:
//! 1. listen on `127.0.0.1:<port>` (an ephemeral port unless one is set);
//! 2. make a fresh `state` and PKCE verifier (256 random bits each, from the
//!    operating system), and the authorization URL with the `S256` challenge (the
//!    parameters in the URL, signed into a request object, or pushed to the
//!    provider first: see `par.rs`, [`AuthorizationCode::pushed_authorization_requests`]
//!    and [`AuthorizationCode::fapi2`]);
//! 3. show the URL (or open the browser) and serve the redirect:
//!    - another path: `404`, keep waiting;
//!    - a `state` that is not this login's (a stale tab, a forged link): `400`, keep
//!      waiting;
//!    - an `iss` (RFC 9207) that is not the discovered provider's: refused; no `iss`
//!      when the provider's metadata promises one
//!      (`authorization_response_iss_parameter_supported`): refused too, since an
//!      attacker who strips it would defeat the mix-up defence (§2.4);
//!    - `error=…` (`access_denied` when the person declined): the login fails;
//!    - `code=…`: exchanged with the verifier; the page tells the person the outcome
//!      and that they can close it;
//! 4. stop listening: a second redirect finds no one.
//!
//! With `openid` in the scope (or an ID token validator given), the authorization
//! request carries a fresh `nonce` (256 random bits); given an
//! [`IdTokenValidator`](crate::client::IdTokenValidator)
//! ([`AuthorizationCode::id_token_validator`], feature `jwks`), the ID token the
//! code exchange returns is validated (signature, `iss`, `aud`, `azp`, dates, that
//! `nonce`, `c_hash` and `at_hash` when present, `auth_time` against a
//! [`max_age`](AuthorizationCode::max_age)) before the token is returned: a login
//! whose ID token is refused is an error, not a token.
//!
//! The whole login has a deadline ([`AuthorizationCode::timeout`], 5 minutes by
//! default), on the tokio clock; dropping the future stops it.

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either, FutureExt};
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{refresh_first, show_async_with, show_with, Show, TokenSource};
use crate::client::TokenEndpoint;
use crate::transport::{check_url, parse_url};
use crate::{Endpoint, EndpointError, Error, Token};

/// How long a login may take by default: time to type a password and approve.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a connection to the redirect listener may take to send its request.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The authorization code grant with PKCE on a loopback redirect (RFC 7636, RFC
/// 8252): the login of a command-line tool on a machine with a browser.
///
/// Each login shows the person the authorization URL (printed to stderr by default;
/// [`open_browser`](Self::open_browser) also opens it), waits for the provider to
/// redirect the browser to `http://127.0.0.1:<port>/callback`, checks the `state`,
/// and exchanges the code with the PKCE verifier. The module documentation lists
/// every case of the redirect.
///
/// As a [`TokenSource`], like [`DeviceCode`](super::DeviceCode), it logs in only when
/// it must: a token being replaced that has a refresh token is refreshed first, and
/// only a refused refresh token (`invalid_grant`) or none starts a new login.
///
/// The client must be registered with the redirect URI `http://127.0.0.1/callback`
/// (as a native application, whose loopback redirects may use any port: RFC 8252
/// §7.3), or with the exact port given to [`port`](Self::port).
///
/// ```no_run
/// use tower_bearer::client::{source::AuthorizationCode, Refreshing, TokenEndpoint};
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::discover("https://idp.example.com").await?.client_id("my-cli");
/// let login = endpoint.authorization_code()?
///     .scope("openid offline_access")
///     .open_browser();
/// // One login in the browser; later refreshes use its refresh token.
/// let authorizer = Refreshing::new(login);
/// # let _ = authorizer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct AuthorizationCode {
    pub(super) token: TokenEndpoint,
    pub(super) authorize: String,
    issuer: Option<String>,
    /// The provider promised `iss` on every redirect (RFC 9207 §3), or the FAPI 2.0
    /// profile demands it.
    pub(super) iss_required: bool,
    scope: Option<String>,
    resources: Vec<String>,
    pub(super) params: Vec<(String, String)>,
    /// How the request is sent: pushed, signed (`par.rs`).
    pub(super) request: super::par::RequestOptions,
    port: u16,
    path: String,
    timeout: Duration,
    show: Show<String>,
    /// OpenID Connect `max_age` (OIDC Core §3.1.2.1).
    max_age: Option<Duration>,
    /// Validates the ID token of each login and refresh.
    #[cfg(feature = "jwks")]
    id_tokens: Option<crate::client::IdTokenValidator>,
}

/// The validated claims of a login's ID token, when a validator checked one.
#[cfg(feature = "jwks")]
pub(crate) type Verified = Option<crate::client::IdTokenClaims>;
#[cfg(not(feature = "jwks"))]
pub(crate) type Verified = ();

impl AuthorizationCode {
    /// The grant with the client registration of `token_endpoint` and the provider's
    /// authorization endpoint at `authorization_url`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse, or is not `https` (or
    /// `http` on loopback).
    pub fn new(token_endpoint: TokenEndpoint, authorization_url: &str) -> Result<Self, Error> {
        let uri = parse_url(authorization_url)?;
        check_url(&uri, false)?;
        if uri
            .path_and_query()
            .is_some_and(|p| p.as_str().contains('#'))
        {
            return Err(Error::Configuration(format!(
                "the authorization URL {} has a fragment",
                crate::error::display_url(&uri)
            )));
        }
        let issuer = token_endpoint.metadata().map(|m| m.issuer.clone());
        let iss_required = token_endpoint
            .metadata()
            .is_some_and(|m| m.authorization_response_iss_parameter_supported);
        Ok(AuthorizationCode {
            token: token_endpoint,
            authorize: authorization_url.to_owned(),
            issuer,
            iss_required,
            scope: None,
            resources: Vec::new(),
            params: Vec::new(),
            request: super::par::RequestOptions::default(),
            port: 0,
            path: "/callback".to_owned(),
            timeout: DEFAULT_TIMEOUT,
            show: show_with(|url: &String| {
                eprintln!("To log in, open this address in your browser:\n  {url}");
            }),
            max_age: None,
            #[cfg(feature = "jwks")]
            id_tokens: None,
        })
    }

    /// Asks for this scope (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// A resource indicator (RFC 8707), sent with the authorization request, the
    /// code exchange and the refreshes. Call again for more than one.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// An extra parameter of the authorization request (`prompt`, `login_hint`,
    /// `acr_values`, …). The parameters this grant sets itself cannot be replaced;
    /// `max_age` in whole seconds is taken as [`max_age`](Self::max_age).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let (name, value) = (name.into(), value.into());
        // `max_age` given this way is the login's own, so that the ID token's
        // `auth_time` is checked against it as with `max_age()`.
        if name == "max_age" {
            if let Ok(seconds) = value.trim().parse::<u64>() {
                return self.max_age(Duration::from_secs(seconds));
            }
        }
        self.params.push((name, value));
        self
    }

    /// Asks the provider to log the person in again when their last authentication
    /// is older than `max_age` (OpenID Connect `max_age`, whole seconds). With an
    /// [`id_token_validator`](Self::id_token_validator), the ID token's
    /// `auth_time` must be no older.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Validates the ID token of every login (with the `nonce` it sent, `c_hash`
    /// and `at_hash` when present, `auth_time` against [`max_age`](Self::max_age))
    /// and of every refresh that brings one: a login whose ID token is refused, or
    /// that brings none, fails with [`Error::IdToken`], as does a refresh whose new
    /// ID token is refused (a refresh whose new ID token cannot be checked for want
    /// of the provider's keys keeps the previous one instead). Every login sends a
    /// `nonce`. Ask for `openid` in the [`scope`](Self::scope).
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn id_token_validator(mut self, validator: crate::client::IdTokenValidator) -> Self {
        self.id_tokens = Some(validator);
        self
    }

    /// Runs one login, like [`login`](Self::login), and returns the validated
    /// claims of its ID token with the token: who logged in.
    ///
    /// # Errors
    /// As [`login`](Self::login); [`Error::Configuration`] without an
    /// [`id_token_validator`](Self::id_token_validator).
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub async fn login_with_id_token(
        &self,
    ) -> Result<(Token, crate::client::IdTokenClaims), Error> {
        if self.id_tokens.is_none() {
            return Err(Error::Configuration(
                "login_with_id_token needs an ID token validator (AuthorizationCode::id_token_validator)"
                    .into(),
            ));
        }
        let (token, claims) = self.login_verified().await?;
        let claims = claims.ok_or_else(|| Error::IdToken("the login returned none".into()))?;
        Ok((token, claims))
    }

    /// Whether the scope the authorization request sends asks for OpenID Connect
    /// (`openid`): [`scope`](Self::scope)'s, or else a `scope` given as a
    /// [`param`](Self::param).
    fn is_openid(&self) -> bool {
        self.scope
            .as_deref()
            .or_else(|| {
                self.params
                    .iter()
                    .find(|(k, _)| k == "scope")
                    .map(|(_, v)| v.as_str())
            })
            .is_some_and(|s| s.split(' ').any(|w| w == "openid"))
    }

    /// Whether the authorization request carries a `nonce`: for OpenID Connect, and
    /// always when an ID token validator will check it (whatever the scope says).
    fn sends_nonce(&self) -> bool {
        #[cfg(feature = "jwks")]
        if self.id_tokens.is_some() {
            return true;
        }
        self.is_openid()
    }

    /// Listens on this port of 127.0.0.1 (default 0: one the system picks). For
    /// providers that want the exact redirect URI registered.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// The path of the redirect URI (default `/callback`).
    pub fn redirect_path(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        self
    }

    /// How long a login may take, from the start of listening to the code exchange
    /// (default 5 minutes). Past it, the login fails with [`Error::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Shows the person the authorization URL (default: printed to stderr). Called
    /// once per login, once the listener is ready.
    pub fn show(mut self, show: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.show = show_with(move |url: &String| show(url));
        self
    }

    /// Shows the authorization URL with an async function (a message to a UI task).
    /// Its future is awaited before the login waits for the redirect.
    pub fn show_async<F, Fut>(mut self, show: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.show = show_async_with(show);
        self
    }

    /// Prints the authorization URL to stderr and opens it in the system's browser
    /// (`xdg-open`, `open` or `start`). When no browser can be started, the printed
    /// URL is what the person has.
    pub fn open_browser(self) -> Self {
        self.show(|url| {
            eprintln!("Opening your browser to log in. If it does not open, visit:\n  {url}");
            if let Err(e) = open_in_browser(url) {
                tracing::debug!(error = %e, "could not start a browser");
            }
        })
    }

    /// Runs one login: listens, shows the URL, waits for the redirect, exchanges the
    /// code.
    ///
    /// # Errors
    /// - [`Error::Configuration`] when the port cannot be listened on (taken), a
    ///   [`resource`](Self::resource) is not an absolute URI without a fragment, a
    ///   request object has no key to sign it, the request must be pushed and the
    ///   provider names no endpoint for it, or the [FAPI 2.0 profile](Self::fapi2)
    ///   refuses the configuration;
    /// - the pushed authorization request endpoint's errors (RFC 9126 §2.3) as
    ///   [`Error::TokenEndpoint`] with its URL, and its malformed answers as
    ///   [`Error::InvalidResponse`] naming [`Endpoint::PushedAuthorization`];
    /// - [`Error::AccessDenied`] when the provider redirects with `access_denied`,
    ///   [`Error::TokenEndpoint`] with its other errors (the code says which);
    /// - [`Error::InvalidResponse`] when the redirect names another issuer, or names
    ///   none while the provider's metadata promises it will (RFC 9207 §2.4), or
    ///   carries a parameter of the answer twice;
    /// - [`Error::Timeout`] when no redirect comes in time;
    /// - what [`TokenEndpoint::request`] returns for the code exchange;
    /// - [`Error::IdToken`] when an [`id_token_validator`](Self::id_token_validator)
    ///   refuses the ID token, or none came.
    pub async fn login(&self) -> Result<Token, Error> {
        self.login_verified().await.map(|(token, _)| token)
    }

    async fn login_verified(&self) -> Result<(Token, Verified), Error> {
        crate::client::endpoint::check_resources(self.resources.iter().map(String::as_str))?;
        let deadline = Instant::now() + self.timeout;
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)))
            .await
            .map_err(|e| {
                Error::Configuration(format!(
                    "cannot listen for the login redirect on 127.0.0.1:{}: {e}",
                    self.port
                ))
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| Error::Configuration(format!("the redirect listener: {e}")))?
            .port();
        let redirect_uri = format!("http://127.0.0.1:{port}{}", self.path);
        let state = random_string()?;
        let verifier = random_string()?;
        let challenge = URL_SAFE_NO_PAD.encode(crate::crypto::sha256(verifier.as_bytes()));
        // OIDC Core §3.1.2.1: a nonce binds the ID token to this login.
        let nonce = if self.sends_nonce() {
            Some(random_string()?)
        } else {
            None
        };
        let params = self.authorization_params(&redirect_uri, &state, &challenge, nonce.as_deref());
        let url = self.front_channel_url(params).await?;

        let (tx, mut rx) = mpsc::channel::<Arrival>(1);
        let listen = Arc::new(Listen {
            path: self.path.clone(),
            state,
            arrivals: tx,
        });
        let serve = std::pin::pin!(accept_loop(listener, listen));
        (self.show)(url).await;

        // The accept loop never ends; the first redirect with this login's `state` does.
        let wait = async {
            let arrival = std::pin::pin!(rx.recv());
            match futures_util::future::select(arrival, serve).await {
                Either::Left((arrival, _)) => arrival,
                Either::Right(((), _)) => None,
            }
        };
        let Ok(Some(arrival)) = tokio::time::timeout_at(deadline, wait).await else {
            return Err(Error::Timeout(Endpoint::Authorization, self.timeout));
        };
        // The listener stops with this future: a second redirect finds no one.
        let result = self
            .finish(&arrival.query, &redirect_uri, &verifier, nonce.as_deref())
            .await;
        let page = match &result {
            Ok(_) => Page::LoggedIn,
            Err(Error::AccessDenied(_)) => Page::Declined,
            Err(_) => Page::Failed,
        };
        let _ = arrival.reply.send(page);
        result
    }

    /// The redirect's parameters to a token: the error it carries, or the code
    /// exchanged.
    async fn finish(
        &self,
        query: &[(String, String)],
        redirect_uri: &str,
        verifier: &str,
        nonce: Option<&str>,
    ) -> Result<(Token, Verified), Error> {
        let get = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        // RFC 6749 §3.1: a parameter is sent at most once. Two of them are a forgery
        // (or a confused provider): which one counts depends on the reader.
        if let Some(name) = ONCE
            .iter()
            .find(|n| query.iter().filter(|(k, _)| k == *n).count() > 1)
        {
            return Err(Error::InvalidResponse(
                Endpoint::Authorization,
                format!("the redirect has {name} more than once; refused"),
            ));
        }
        // RFC 9207 §2.4: checked before anything else of the redirect is used.
        match (&self.issuer, get("iss")) {
            (Some(expected), Some(iss)) if iss != expected => {
                return Err(Error::InvalidResponse(
                    Endpoint::Authorization,
                    format!(
                        "the redirect names issuer {:?}, expected {expected:?} (RFC 9207)",
                        truncated(iss)
                    ),
                ));
            }
            (Some(expected), None) if self.iss_required => {
                return Err(Error::InvalidResponse(
                    Endpoint::Authorization,
                    format!(
                        "the redirect has no iss, but the provider {expected:?} promises one \
                         (authorization_response_iss_parameter_supported) or the FAPI 2.0 \
                         profile requires it; refused (RFC 9207)"
                    ),
                ));
            }
            _ => {}
        }
        if let Some(code) = get("error") {
            let error = EndpointError {
                code: Some(code.to_owned()),
                description: get("error_description").map(str::to_owned),
                uri: get("error_uri").map(str::to_owned),
                ..EndpointError::status(StatusCode::FOUND)
            };
            return Err(if code == "access_denied" {
                Error::AccessDenied(Box::new(error))
            } else {
                Error::TokenEndpoint(Box::new(error))
            });
        }
        let code = get("code").filter(|c| !c.is_empty()).ok_or_else(|| {
            Error::InvalidResponse(
                Endpoint::Authorization,
                "the redirect has neither a code nor an error".into(),
            )
        })?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        let token = self.token.request(&form).await?;
        #[cfg(feature = "jwks")]
        if let Some(validator) = &self.id_tokens {
            let mut expected = crate::client::ExpectedIdToken::new()
                .code(code)
                .access_token(token.expose_access_token());
            if let Some(nonce) = nonce {
                expected = expected.nonce(nonce);
            }
            if let Some(max_age) = self.max_age {
                expected = expected.max_age(max_age);
            }
            let claims = validate_id_token(validator, &token, &expected).await?;
            return Ok((token, Some(claims)));
        }
        let _ = nonce;
        Ok((token, Verified::default()))
    }

    /// The parameters of the authorization request: the login's own, then the extra
    /// ones that do not replace them. How they travel (in the URL, signed, pushed)
    /// is `par.rs`'s [`front_channel_url`](Self::front_channel_url).
    fn authorization_params(
        &self,
        redirect_uri: &str,
        state: &str,
        challenge: &str,
        nonce: Option<&str>,
    ) -> Vec<(String, String)> {
        let max_age = self.max_age.map(|d| d.as_secs().to_string());
        let mut query: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("redirect_uri", redirect_uri),
            ("state", state),
            ("code_challenge", challenge),
            ("code_challenge_method", "S256"),
        ];
        if let Some(id) = self.token.client_id_str() {
            query.push(("client_id", id));
        }
        if let Some(scope) = &self.scope {
            query.push(("scope", scope));
        }
        query.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        query.extend(nonce.map(|n| ("nonce", n)));
        query.extend(max_age.as_deref().map(|m| ("max_age", m)));
        let own: Vec<&str> = query.iter().map(|(k, _)| *k).collect();
        query.extend(
            self.params
                .iter()
                .filter(|(k, _)| !own.contains(&k.as_str()))
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        query
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Validates the ID token `token` came with (OIDC Core §3.1.3.7): none is an error.
#[cfg(feature = "jwks")]
pub(crate) async fn validate_id_token(
    validator: &crate::client::IdTokenValidator,
    token: &Token,
    expected: &crate::client::ExpectedIdToken<'_>,
) -> Result<crate::client::IdTokenClaims, Error> {
    let id_token = token.expose_id_token().ok_or_else(|| {
        Error::IdToken("the token endpoint returned no id_token (is openid in the scope?)".into())
    })?;
    validator.validate(id_token, expected).await
}

/// Validates the ID token a refresh brought (OIDC Core §12.2), when it is a new
/// one: the rules of every ID token, and the same `sub` as the login's. Returns
/// the refreshed token.
///
/// When the provider's keys cannot be had to check it, the token is returned with
/// the previous ID token in place of the unchecked one: the refresh token was
/// spent for it (rotation), and failing would lose the session for a JWKS blip.
#[cfg(feature = "jwks")]
pub(crate) async fn validate_refreshed(
    validator: &crate::client::IdTokenValidator,
    token: Token,
    previous: Option<&Token>,
) -> Result<Token, Error> {
    let (Some(new), old) = (
        token.expose_id_token(),
        previous.and_then(Token::expose_id_token),
    ) else {
        return Ok(token);
    };
    if old == Some(new) {
        return Ok(token);
    }
    let expected = crate::client::ExpectedIdToken::new().access_token(token.expose_access_token());
    let claims = match validator.validate(new, &expected).await {
        Ok(claims) => claims,
        Err(Error::InvalidResponse(Endpoint::Jwks, why)) => {
            tracing::warn!(
                %why,
                "the refreshed ID token cannot be checked now; the previous one is kept"
            );
            return Ok(token.with_id_token_of(previous));
        }
        Err(e) => return Err(e),
    };
    if let Some(old) = old.and_then(unverified_sub) {
        if old != claims.sub {
            return Err(Error::IdToken(
                "the refreshed ID token names another sub than the login's (OIDC Core §12.2)"
                    .into(),
            ));
        }
    }
    Ok(token)
}

/// The `sub` of an ID token this source validated earlier (read without checking
/// again: it may have expired since).
#[cfg(feature = "jwks")]
fn unverified_sub(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// The parameters of an authorization response that must come at most once.
const ONCE: &[&str] = &[
    "iss",
    "code",
    "state",
    "error",
    "error_description",
    "error_uri",
];

/// At most 100 characters of a value from the redirect, for a message.
fn truncated(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// 256 random bits from the operating system, base64url: a `state` or a PKCE
/// verifier (43 characters, within RFC 7636 §4.1's 43–128).
fn random_string() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    crate::crypto::fill_random(&mut bytes)
        .map_err(|e| Error::Configuration(format!("no randomness from the system: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Starts the system's browser on `url`.
fn open_in_browser(url: &str) -> std::io::Result<()> {
    use std::process::{Command, Stdio};
    let mut command = if cfg!(target_os = "macos") {
        Command::new("open")
    } else if cfg!(windows) {
        let mut c = Command::new("cmd");
        // `start`'s first quoted argument is a window title.
        c.args(["/C", "start", ""]);
        c
    } else {
        Command::new("xdg-open")
    };
    command
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
}

/// What the redirect listener knows: where the redirect comes, the `state` it must
/// carry, and where to hand it.
struct Listen {
    path: String,
    state: String,
    arrivals: mpsc::Sender<Arrival>,
}

/// A redirect with this login's `state`, and the way to answer its page.
struct Arrival {
    query: Vec<(String, String)>,
    reply: oneshot::Sender<Page>,
}

/// The pages the browser is shown.
#[derive(Clone, Copy)]
enum Page {
    LoggedIn,
    Declined,
    Failed,
    WrongState,
    Over,
    NotFound,
}

impl Page {
    fn response(self) -> Response<Full<Bytes>> {
        let (status, title, text) = match self {
            Page::LoggedIn => (
                StatusCode::OK,
                "Logged in",
                "You are logged in. You can close this window and go back to the program.",
            ),
            Page::Declined => (
                StatusCode::OK,
                "Login declined",
                "The login was declined. You can close this window.",
            ),
            Page::Failed => (
                StatusCode::BAD_GATEWAY,
                "Login failed",
                "The login could not be completed; the program says why. You can close this window.",
            ),
            Page::WrongState => (
                StatusCode::BAD_REQUEST,
                "Not this login",
                "This answer does not belong to the login the program is waiting for. Close this window and use the link the program shows.",
            ),
            Page::Over => (
                StatusCode::BAD_REQUEST,
                "Login over",
                "This login has already ended. You can close this window.",
            ),
            Page::NotFound => (StatusCode::NOT_FOUND, "Not found", "Nothing here."),
        };
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
             <body><h1>{title}</h1><p>{text}</p></body></html>\n"
        );
        let mut res = Response::new(Full::new(Bytes::from(body)));
        *res.status_mut() = status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(
            header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            http::HeaderValue::from_static("no-referrer"),
        );
        res
    }
}

/// Accepts connections until dropped; each serves one request.
async fn accept_loop(listener: TcpListener, listen: Arc<Listen>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, most likely: wait rather than spin.
                tracing::debug!(error = %e, "login redirect: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let listen = Arc::clone(&listen);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let listen = Arc::clone(&listen);
                async move { Ok::<_, std::convert::Infallible>(listen.answer(req).await) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "login redirect: connection failed");
            }
        });
    }
}

impl Listen {
    async fn answer(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET || req.uri().path() != self.path {
            return Page::NotFound.response();
        }
        let query: Vec<(String, String)> =
            serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
        let state = query
            .iter()
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.as_bytes());
        if !state.is_some_and(|s| bool::from(s.ct_eq(self.state.as_bytes()))) {
            tracing::warn!("login redirect with a state of another login: refused");
            return Page::WrongState.response();
        }
        let (reply, page) = oneshot::channel();
        if self.arrivals.try_send(Arrival { query, reply }).is_err() {
            return Page::Over.response();
        }
        page.await.unwrap_or(Page::Over).response()
    }
}

impl TokenSource for AuthorizationCode {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            if let Some(refreshed) = refresh_first(&self.token, &self.resources, previous).await {
                #[cfg(feature = "jwks")]
                if let Some(validator) = &self.id_tokens {
                    return validate_refreshed(validator, refreshed?, previous).await;
                }
                return refreshed;
            }
            self.login().await
        }
        .boxed()
    }
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("token_endpoint", &self.token)
            .field("authorization_endpoint", &self.authorize)
            .field("scope", &self.scope)
            .field("resources", &self.resources)
            .field("port", &self.port)
            .field("request", &self.request)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}
