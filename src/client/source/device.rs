//! [`DeviceCode`]: the device authorization grant (RFC 8628) for tools without a
//! browser: the person approves the login on another device.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde::Deserialize;
use tokio::time::Instant;

use super::{refresh_first, show_async_with, show_with, Show, TokenSource};
use crate::client::endpoint::{endpoint_error, ErrorAnswer};
use crate::client::TokenEndpoint;
use crate::{Endpoint, Error, Token};

/// The grant type of the device code polls (RFC 8628 §3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// The polling interval when the server does not give one (RFC 8628 §3.2).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a device code lives when the server does not say (it must, but).
const DEFAULT_EXPIRY: Duration = Duration::from_secs(600);
/// Added to the interval on each `slow_down` (RFC 8628 §3.5).
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// The longest polling interval the server's `interval` and the crate's own outage
/// backoff set; `slow_down` answers add to it without a cap (RFC 8628 §3.5).
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// What the person must see to approve the login: where to go and what to type.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeviceAuthorization {
    /// The code the person types (`user_code`).
    pub user_code: String,
    /// Where to type it (`verification_uri`).
    pub verification_uri: String,
    /// A URI with the code already in it (`verification_uri_complete`), for a link or
    /// a QR code.
    pub verification_uri_complete: Option<String>,
    /// How long the code is valid.
    pub expires_in: Duration,
    /// The polling interval the server asked for.
    pub interval: Duration,
}

impl fmt::Display for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "To log in, open {} and enter the code {}",
            self.verification_uri, self.user_code
        )?;
        if let Some(complete) = &self.verification_uri_complete {
            write!(f, "\n(or open {complete})")?;
        }
        write!(
            f,
            "\nThe code expires in {} minutes.",
            self.expires_in.as_secs().div_ceil(60)
        )
    }
}

/// The device authorization grant (RFC 8628), for a command-line tool or a device
/// without a browser.
///
/// Each fetch asks the device authorization endpoint for a code, shows the person
/// where to enter it (through [`show`](DeviceCode::show); by default on stderr), and
/// polls the token endpoint until they approve:
/// - every `interval` seconds (5 by default), 5 seconds more after each `slow_down`,
///   for every later request too, without a cap (RFC 8628 §3.5; the code's expiry
///   ends the wait);
/// - `authorization_pending` keeps polling;
/// - `access_denied` is [`Error::AccessDenied`]; `expired_token`, or the code's own
///   `expires_in` running out, is [`Error::DeviceCodeExpired`];
/// - a passing failure (connection refused, timeout, `5xx`, `429`) polls again, 5
///   seconds slower (up to a minute, never faster than `slow_down` asked), until the
///   code expires: the person may be half-way through;
/// - any other error (`invalid_client`, `invalid_grant`) is returned as is.
///
/// Polling runs in the returned future on the tokio clock: dropping the future (a
/// timeout, Ctrl-C through `tokio::select!`) stops it.
///
/// As a [`TokenSource`], it logs in only when it must: when the token being replaced
/// has a refresh token, a fetch first exchanges it at the token endpoint (RFC 6749
/// §6), and only a refused one (`invalid_grant`) or none starts a new login. Any other
/// failure of the refresh (the endpoint is down) is returned, and retried later
/// without asking the person again. So `Refreshing::new(device_code)` alone asks the
/// person once, and refreshes from then on.
///
/// ```no_run
/// use tower_bearer::client::{source::DeviceCode, Refreshing, TokenEndpoint};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth/token")?.client_id("my-cli");
/// let login = DeviceCode::new(endpoint, "https://idp.example.com/oauth/device/code")?
///     .scope("openid offline_access")
///     .show(|auth| eprintln!("{auth}"));
/// // One login; later refreshes use its refresh token.
/// let authorizer = Refreshing::new(login);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DeviceCode {
    token: TokenEndpoint,
    device: TokenEndpoint,
    scope: Option<String>,
    resources: Vec<String>,
    show: Show<DeviceAuthorization>,
    /// Validates the ID token of each login and refresh.
    #[cfg(feature = "jwks")]
    id_tokens: Option<crate::client::IdTokenValidator>,
}

#[derive(Deserialize)]
struct DeviceAnswer {
    device_code: Option<String>,
    user_code: Option<String>,
    verification_uri: Option<String>,
    /// Google's spelling.
    verification_url: Option<String>,
    verification_uri_complete: Option<String>,
    expires_in: Option<serde_json::Value>,
    interval: Option<serde_json::Value>,
    #[serde(flatten)]
    error: ErrorAnswer,
}

impl DeviceCode {
    /// The grant with the client registration of `token_endpoint` and its device
    /// authorization endpoint at `device_authorization_url`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse or would send the client
    /// credentials in clear text (see [`TokenEndpoint::new`]).
    pub fn new(
        token_endpoint: TokenEndpoint,
        device_authorization_url: &str,
    ) -> Result<Self, Error> {
        let device =
            token_endpoint.with_url(device_authorization_url, Endpoint::DeviceAuthorization)?;
        Ok(DeviceCode {
            token: token_endpoint,
            device,
            scope: None,
            resources: Vec::new(),
            show: show_with(|auth: &DeviceAuthorization| eprintln!("{auth}")),
            #[cfg(feature = "jwks")]
            id_tokens: None,
        })
    }

    /// Asks for this scope (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// A resource indicator (RFC 8707), sent with the device authorization request,
    /// the polls and the refreshes. Call again for more than one.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Shows the person where to log in (default: printed to stderr). Called once per
    /// login, before polling starts. From async code, use
    /// [`show_async`](Self::show_async).
    pub fn show(mut self, show: impl Fn(&DeviceAuthorization) + Send + Sync + 'static) -> Self {
        self.show = show_with(show);
        self
    }

    /// Shows the person where to log in with an async function: a message to a UI
    /// task, a chat bot, a notification. Its future is awaited once per login, before
    /// polling starts (it runs inside the login, so it should not wait for the person:
    /// the code expires meanwhile).
    ///
    /// ```no_run
    /// use tower_bearer::client::{source::DeviceCode, TokenEndpoint};
    /// # fn run() -> Result<(), tower_bearer::Error> {
    /// let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    /// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth/token")?.client_id("my-cli");
    /// let login = DeviceCode::new(endpoint, "https://idp.example.com/oauth/device/code")?
    ///     .show_async(move |auth| {
    ///         let tx = tx.clone();
    ///         async move {
    ///             let _ = tx.send(auth).await;
    ///         }
    ///     });
    /// // Elsewhere, the UI: `while let Some(auth) = rx.recv().await { … }`
    /// # let _ = (login, rx.try_recv());
    /// # Ok(()) }
    /// ```
    pub fn show_async<F, Fut>(mut self, show: F) -> Self
    where
        F: Fn(DeviceAuthorization) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.show = show_async_with(show);
        self
    }

    /// Validates the ID token of every login (no `nonce`: the device flow has
    /// none; `at_hash` when present) and of every refresh that brings one: a login
    /// whose ID token is refused, or that brings none, fails with
    /// [`Error::IdToken`], as does a refresh whose new ID token is refused (one
    /// that cannot be checked for want of the provider's keys keeps the previous
    /// ID token instead). Ask for `openid` in the [`scope`](Self::scope).
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
        let Some(validator) = &self.id_tokens else {
            return Err(Error::Configuration(
                "login_with_id_token needs an ID token validator (DeviceCode::id_token_validator)"
                    .into(),
            ));
        };
        let token = self.login_unchecked().await?;
        let expected =
            crate::client::ExpectedIdToken::new().access_token(token.expose_access_token());
        let claims = super::browser::validate_id_token(validator, &token, &expected).await?;
        Ok((token, claims))
    }

    /// Runs one login: asks for a code, shows it, polls until approved.
    ///
    /// # Errors
    /// [`Error::AccessDenied`], [`Error::DeviceCodeExpired`], and what
    /// [`TokenEndpoint::request`] returns; [`Error::IdToken`] when an
    /// [`id_token_validator`](Self::id_token_validator) refuses the ID token, or
    /// none came.
    pub async fn login(&self) -> Result<Token, Error> {
        #[cfg(feature = "jwks")]
        if self.id_tokens.is_some() {
            return self.login_with_id_token().await.map(|(token, _)| token);
        }
        self.login_unchecked().await
    }

    async fn login_unchecked(&self) -> Result<Token, Error> {
        let (device_code, auth) = self.authorize().await?;
        (self.show)(auth.clone()).await;
        let deadline = Instant::now() + auth.expires_in;
        let mut interval = auth.interval;
        loop {
            let wake = Instant::now() + interval;
            if wake > deadline {
                tokio::time::sleep_until(deadline).await;
                return Err(Error::DeviceCodeExpired);
            }
            tokio::time::sleep_until(wake).await;
            let mut form = vec![
                ("grant_type", DEVICE_CODE_GRANT),
                ("device_code", device_code.as_str()),
            ];
            form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
            let answer = match self.token.post(&form).await {
                Ok(res) => self.token.parse(&res, &form),
                Err(e) => Err(e),
            };
            let err = match answer {
                Ok(token) => return Ok(token),
                Err(e) => e,
            };
            match err.oauth_code() {
                // The person may be half-way through approving: a passing outage
                // (connection refused, timeout, 5xx) must not lose the login. Poll
                // less often, as RFC 8628 §3.5 asks, until the code expires.
                _ if err.is_retryable() => {
                    // Capped at a minute for the crate's own backoff, but never below
                    // what slow_down answers already asked for.
                    interval = interval.max((interval + SLOW_DOWN).min(MAX_INTERVAL));
                    tracing::debug!(error = %err, interval_secs = interval.as_secs(), "device flow: poll failed; retrying");
                }
                Some("authorization_pending") => {}
                Some("slow_down") => {
                    // RFC 8628 §3.5: 5 s more "for this and all subsequent requests",
                    // with no cap: the code's expiry ends the loop.
                    interval += SLOW_DOWN;
                    tracing::debug!(interval_secs = interval.as_secs(), "device flow: slow_down");
                }
                Some("expired_token") => return Err(Error::DeviceCodeExpired),
                Some("access_denied") => {
                    return Err(match err {
                        Error::TokenEndpoint(e) | Error::InvalidGrant(e) => Error::AccessDenied(e),
                        other => other,
                    })
                }
                _ => return Err(err),
            }
        }
    }

    /// The device authorization request (RFC 8628 §3.1–3.2).
    async fn authorize(&self) -> Result<(String, DeviceAuthorization), Error> {
        let mut form = Vec::new();
        if let Some(scope) = &self.scope {
            form.push(("scope", scope.as_str()));
        }
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        let res = self.device.post(&form).await?;
        let answer: Option<DeviceAnswer> = serde_json::from_slice(res.body()).ok();
        if !res.status().is_success() {
            return Err(self.device.locate(
                endpoint_error(res.status(), res.headers(), answer.map(|a| a.error)),
                &form,
            ));
        }
        let a = answer.ok_or_else(|| {
            Error::InvalidResponse(
                Endpoint::DeviceAuthorization,
                "the answer is not a JSON object".into(),
            )
        })?;
        if a.error.error.is_some() {
            return Err(self.device.locate(
                endpoint_error(res.status(), res.headers(), Some(a.error)),
                &form,
            ));
        }
        let missing = |field: &str| {
            Error::InvalidResponse(
                Endpoint::DeviceAuthorization,
                format!("no {field} in the answer"),
            )
        };
        let device_code = a
            .device_code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| missing("device_code"))?;
        let user_code = a.user_code.ok_or_else(|| missing("user_code"))?;
        let verification_uri = a
            .verification_uri
            .or(a.verification_url)
            .ok_or_else(|| missing("verification_uri"))?;
        let expires_in = seconds(a.expires_in.as_ref()).unwrap_or(DEFAULT_EXPIRY);
        let interval = seconds(a.interval.as_ref())
            .unwrap_or(DEFAULT_INTERVAL)
            .min(MAX_INTERVAL);
        let auth = DeviceAuthorization {
            user_code,
            verification_uri,
            verification_uri_complete: a.verification_uri_complete,
            expires_in,
            interval,
        };
        Ok((device_code, auth))
    }
}

/// A positive whole number of seconds, as a number or a string of digits.
fn seconds(v: Option<&serde_json::Value>) -> Option<Duration> {
    let secs = match v? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }?;
    (secs > 0).then(|| Duration::from_secs(secs.min(86_400)))
}

impl TokenSource for DeviceCode {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            if let Some(refreshed) = refresh_first(&self.token, &self.resources, previous).await {
                #[cfg(feature = "jwks")]
                if let Some(validator) = &self.id_tokens {
                    return super::browser::validate_refreshed(validator, refreshed?, previous)
                        .await;
                }
                return refreshed;
            }
            self.login().await
        }
        .boxed()
    }
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("token_endpoint", &self.token)
            .field("device_endpoint", &self.device.url())
            .field("scope", &self.scope)
            .field("resources", &self.resources)
            .finish()
    }
}
