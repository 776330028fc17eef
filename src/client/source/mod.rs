//! Where tokens come from: the [`TokenSource`] trait, closures, and the OAuth 2.0
//! grants over a [`TokenEndpoint`](super::TokenEndpoint); the environment
//! ([`EnvSource`]), interactive logins ([`PasswordPrompt`], [`DeviceCode`], [`AuthorizationCode`]), and a [`Chain`] that
//! tries them in order. Token exchange ([`TokenExchange`], RFC 8693). Workload identity
//! ([`WorkloadToken`]): a token another process writes to a file and rotates, as an
//! assertion or a subject token. With the `jwt` feature, the JWT-bearer grant (`JwtBearer`,
//! Google service accounts).

use std::fmt;
use std::future::Future;

use futures_util::future::{BoxFuture, FutureExt};
use secrecy::ExposeSecret;

use crate::{Error, Token};

mod browser;
mod chain;
mod device;
mod env;
mod exchange;
mod grants;
#[cfg(feature = "jwt")]
mod jwt_bearer;
mod par;
mod prompt;
mod workload;

pub use browser::AuthorizationCode;
pub use chain::Chain;
pub use device::{DeviceAuthorization, DeviceCode, DEVICE_CODE_GRANT};
pub use env::{EnvSource, EnvVar};
pub use exchange::{token_type, ExchangeToken, TokenExchange, TOKEN_EXCHANGE_GRANT};
pub use grants::{ClientCredentials, PasswordGrant, RefreshTokenGrant};
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use jwt_bearer::{JwtBearer, JWT_BEARER_GRANT};
pub use par::{DEFAULT_REQUEST_OBJECT_LIFETIME, FAPI2_MAX_REQUEST_OBJECT_LIFETIME};
pub use prompt::PasswordPrompt;
pub use workload::{WorkloadToken, DEFAULT_MAX_WORKLOAD_TOKEN_LEN, WORKLOAD_RECHECK};

/// Fetches a new token, given the one it replaces.
///
/// [`Refreshing`](super::Refreshing) calls it once per refresh, whatever the number
/// of callers waiting. `previous` is the token being replaced (expired, near expiry,
/// or rejected by the server), so a grant can use its refresh token.
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a token.
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>>;

    /// Whether this source shares tokens with other processes, so that after
    /// [`Error::InvalidGrant`] a later fetch may still find a newer token that another
    /// process obtained (as [`FleetSource`](crate::redis::FleetSource) does through
    /// Redis). [`Refreshing`](super::Refreshing) then retries such a source after a
    /// backoff instead of declaring itself logged out. Default `false`.
    fn shares_tokens(&self) -> bool {
        false
    }

    /// Names the single-use credential (a refresh token) that `fetch(previous)` would
    /// present, by a digest that does not reveal it; `None` when it presents none, or
    /// cannot tell.
    ///
    /// A fleet ([`FleetSource`](crate::redis::FleetSource)) records a refused refresh
    /// token under this name, so that no replica presents it again while a different
    /// one (a new seed after a redeploy) is presented. Default: the digest of
    /// `previous`'s refresh token; a source that presents a refresh token of its own
    /// (a seed) names that one when `previous` has none.
    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        previous
            .and_then(Token::refresh_token)
            .map(|rt| Presented::of(rt.expose_secret()))
    }

    /// A future that resolves when the session this source serves is ended by
    /// another process (a logout there) after this call; `None` (the default) when the
    /// source cannot tell.
    ///
    /// [`Refreshing`](super::Refreshing) watches it (on one task per cache, which ends
    /// with the cache) and, when it resolves, stops serving its current token: the next
    /// caller asks this source, which answers from the shared state (a logout error,
    /// or a new login's token). Nothing is revoked and no store is cleared by the
    /// cache then: the process that logged out did that.
    /// [`SharedFileSource`](super::SharedFileSource) resolves it when the shared token
    /// file becomes a logout's tombstone.
    fn ended_elsewhere(&self) -> Option<BoxFuture<'static, ()>> {
        None
    }
}

/// The name of a single-use credential a [`TokenSource`] presents (see
/// [`TokenSource::presents`]): a SHA-256 digest, never the credential. `Debug` and
/// `Display` show a short prefix of the digest's hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Presented([u8; 32]);

impl Presented {
    /// The name of `credential`.
    pub fn of(credential: &str) -> Self {
        Presented(crate::crypto::sha256(credential.as_bytes()))
    }

    /// The digest's lowercase hex.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Presented({self})")
    }
}

impl fmt::Display for Presented {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl<S: TokenSource + ?Sized> TokenSource for std::sync::Arc<S> {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        (**self).fetch(previous)
    }
    fn shares_tokens(&self) -> bool {
        (**self).shares_tokens()
    }
    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        (**self).presents(previous)
    }
    fn ended_elsewhere(&self) -> Option<BoxFuture<'static, ()>> {
        (**self).ended_elsewhere()
    }
}

impl<S: TokenSource + ?Sized> TokenSource for Box<S> {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        (**self).fetch(previous)
    }
    fn shares_tokens(&self) -> bool {
        (**self).shares_tokens()
    }
    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        (**self).presents(previous)
    }
    fn ended_elsewhere(&self) -> Option<BoxFuture<'static, ()>> {
        (**self).ended_elsewhere()
    }
}

/// How an interactive login shows the person what to do (a URL, a code): called once
/// per login, its future awaited before the login waits for them.
pub(crate) type Show<T> = std::sync::Arc<dyn Fn(T) -> BoxFuture<'static, ()> + Send + Sync>;

/// A [`Show`] from a plain function of a reference.
pub(crate) fn show_with<T: 'static>(show: impl Fn(&T) + Send + Sync + 'static) -> Show<T> {
    std::sync::Arc::new(move |shown: T| {
        show(&shown);
        futures_util::future::ready(()).boxed()
    })
}

/// A [`Show`] from an async function.
pub(crate) fn show_async_with<T, F, Fut>(show: F) -> Show<T>
where
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    std::sync::Arc::new(move |shown: T| show(shown).boxed())
}

/// The first step of an interactive login's fetch: refreshes the token being
/// replaced with its refresh token at `endpoint` (with the `resources`). `None` when
/// a new login is needed: no refresh token, or one the endpoint refused
/// (`invalid_grant`). Any other failure (the endpoint is down) is the answer, so the
/// caller retries later without asking the person again.
pub(crate) async fn refresh_first(
    endpoint: &crate::client::TokenEndpoint,
    resources: &[String],
    previous: Option<&Token>,
) -> Option<Result<Token, Error>> {
    let refresh_token = previous.and_then(Token::expose_refresh_token)?;
    let grant = resources
        .iter()
        .fold(endpoint.refresh_token(refresh_token), |g, r| {
            g.resource(r.as_str())
        });
    match grant.fetch(None).await {
        Err(Error::InvalidGrant(e)) => {
            tracing::debug!(error = %e, "the refresh token was refused; logging in again");
            None
        }
        // OIDC Core §12.2: the login's ID token stays when the answer has none.
        answer => Some(answer.map(|t| t.keep_id_token_of(previous))),
    }
}

/// A token source from a closure; see [`from_fn`].
#[derive(Clone)]
pub struct FnSource<F> {
    f: F,
}

/// A token source from a closure that receives (a copy of) the previous token.
///
/// ```
/// use std::time::Duration;
/// use tower_bearer::{client::source, Token};
///
/// let source = source::from_fn(|_previous: Option<Token>| async {
///     Token::bearer("from-my-vault").map(|t| t.with_expires_in(Duration::from_secs(300)))
/// });
/// # let _ = tower_bearer::Refreshing::new(source);
/// ```
pub fn from_fn<F, Fut>(f: F) -> FnSource<F>
where
    F: Fn(Option<Token>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, Error>> + Send + 'static,
{
    FnSource { f }
}

impl<F, Fut> TokenSource for FnSource<F>
where
    F: Fn(Option<Token>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, Error>> + Send + 'static,
{
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        (self.f)(previous.cloned()).boxed()
    }
}

impl<F> fmt::Debug for FnSource<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnSource")
    }
}
