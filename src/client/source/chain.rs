//! [`Chain`]: token sources tried in order, the first that yields wins.

use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use secrecy::ExposeSecret;

use super::{EnvSource, TokenSource};
use crate::client::{TokenEndpoint, TokenStore};
use crate::{Error, Token};

/// Token sources tried in order; the first that yields a token wins.
///
/// The order a command-line tool wants, and the one to keep: tokens passed in code
/// ([`Chain::token`]), then the environment ([`Chain::env`]), then the token file
/// ([`Chain::store`]), then an interactive login ([`Chain::login`]: a
/// [`PasswordPrompt`](super::PasswordPrompt) or a [`DeviceCode`](super::DeviceCode)).
///
/// On each fetch:
/// 1. When the token being replaced has a refresh token and the chain has a
///    [`refresh_with`](Chain::refresh_with) endpoint, the refresh-token grant is tried
///    first: a token that came from the environment or the file keeps refreshing
///    without asking anyone. A refused refresh token (`invalid_grant`) falls through to
///    the sources; any other failure (endpoint down) is returned, and the caller
///    retries later.
/// 2. Then each source in order. A source with nothing to offer answers
///    [`Error::NoToken`] and the chain moves on; any other error stops the chain (a
///    wrong password must not fall through to a device-code prompt). An expired token
///    from a source is refreshed with its refresh token, or skipped.
/// 3. A `debug` event names the source that served (never the token).
///
/// Sources are given the token being replaced, and the built-in ones never serve that
/// same token again, so a token the server refused is not served twice. A refresh
/// token refused during a fetch is never presented again in that fetch, whichever
/// source yields it (the token file serving the very token whose refresh failed).
///
/// To save what the chain gets, give the same store to
/// [`RefreshingBuilder::store`](crate::client::RefreshingBuilder::store).
///
/// ```no_run
/// use tower_bearer::client::source::{Chain, EnvSource, PasswordPrompt};
/// use tower_bearer::client::{FileStore, Refreshing, TokenEndpoint};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?.client_id("cli");
/// let store = FileStore::new("alice", "https://idp.example.com")?;
/// let chain = Chain::new()
///     .refresh_with(endpoint.clone())
///     .env(EnvSource::new("APP").endpoint(endpoint.clone()))
///     .store(store.clone())
///     .login("password prompt", PasswordPrompt::new(endpoint, "alice"));
/// let authorizer = Refreshing::builder(chain).store(store).build();
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Chain {
    steps: Vec<Step>,
    endpoint: Option<TokenEndpoint>,
}

#[derive(Clone)]
struct Step {
    name: String,
    source: Arc<dyn TokenSource>,
}

impl Chain {
    /// An empty chain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refreshes the token being replaced with its refresh token at `endpoint` before
    /// asking the sources, and refreshes an expired token a source yields.
    pub fn refresh_with(mut self, endpoint: TokenEndpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Adds a source under a name (used in the debug event and errors).
    pub fn source(mut self, name: impl Into<String>, source: impl TokenSource) -> Self {
        self.steps.push(Step {
            name: name.into(),
            source: Arc::new(source),
        });
        self
    }

    /// Adds a token passed in code (the source named `arguments`).
    pub fn token(self, token: Token) -> Self {
        self.source("arguments", Fixed(token))
    }

    /// Adds a token given as optional strings (the source named `arguments`): nothing
    /// is added when `access_token` and `refresh_token` are both `None`; a refresh
    /// token alone gives an expired token that [`refresh_with`](Chain::refresh_with)
    /// exchanges.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the access token cannot go in a header.
    pub fn tokens(
        self,
        access_token: Option<&str>,
        refresh_token: Option<&str>,
    ) -> Result<Self, Error> {
        let token = match (access_token, refresh_token) {
            (None, None) => return Ok(self),
            (Some(at), _) => Token::bearer(at)?,
            (None, Some(_)) => Token::bearer("unset")?.with_expires_at(tokio::time::Instant::now()),
        };
        let token = match refresh_token {
            Some(rt) => token.with_refresh_token(rt),
            None => token,
        };
        Ok(self.token(token))
    }

    /// Adds the environment (the source named `environment`).
    pub fn env(self, env: EnvSource) -> Self {
        self.source("environment", env)
    }

    /// Adds a token store, usually a [`FileStore`](crate::client::FileStore) (the
    /// source named `token file`).
    pub fn store(self, store: impl TokenStore) -> Self {
        self.source("token file", StoreSource(Arc::new(store)))
    }

    /// Adds an interactive login, the last resort.
    pub fn login(self, name: impl Into<String>, source: impl TokenSource) -> Self {
        self.source(name, source)
    }

    /// The names of the sources, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.steps.iter().map(|s| s.name.as_str())
    }

    /// `Ok(Some(token))` refreshed; `Ok(None)` the refresh token was refused.
    async fn refresh(&self, rt: &str) -> Result<Option<Token>, Error> {
        let Some(endpoint) = &self.endpoint else {
            return Ok(None);
        };
        let grant = endpoint.refresh_token(rt);
        match grant.fetch(None).await {
            Ok(t) => Ok(Some(t)),
            Err(Error::InvalidGrant(e)) => {
                tracing::debug!(error = %e, "refresh token refused; trying the sources");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_now(&self, previous: Option<&Token>) -> Result<Token, Error> {
        let mut without_refused = None;
        // The refresh tokens refused during this fetch: none is presented twice (a
        // token store serves the very token whose refresh token was just refused).
        let mut refused: Vec<secrecy::SecretString> = Vec::new();
        if let Some(rt) = previous.and_then(Token::refresh_token) {
            if let Some(token) = self.refresh(rt.expose_secret()).await? {
                tracing::debug!(source = "refresh token", "token source served");
                return Ok(token.keep_id_token_of(previous));
            }
            if self.endpoint.is_some() {
                refused.push(rt.clone());
                // The sources get the token without its refused refresh token: a
                // `DeviceCode` does not present it again before it logs in.
                without_refused = previous.map(|p| p.clone().without_refresh_token());
            }
        }
        let previous = without_refused.as_ref().or(previous);
        for step in &self.steps {
            match step.source.fetch(previous).await {
                Ok(token) if token.is_expired() => {
                    let refreshed = match token.refresh_token() {
                        Some(rt) if refused.iter().any(|r| same_secret(r, rt)) => {
                            tracing::debug!(source = %step.name, "its refresh token was refused already");
                            None
                        }
                        Some(rt) => {
                            let refreshed = self.refresh(rt.expose_secret()).await?;
                            if refreshed.is_none() && self.endpoint.is_some() {
                                refused.push(rt.clone());
                            }
                            refreshed
                        }
                        None => None,
                    };
                    if let Some(token) = refreshed {
                        tracing::debug!(source = %step.name, refreshed = true, "token source served");
                        return Ok(token);
                    }
                    tracing::debug!(source = %step.name, "skipped an expired token it could not refresh");
                }
                Ok(token) => {
                    tracing::debug!(source = %step.name, "token source served");
                    return Ok(token);
                }
                Err(Error::NoToken(why)) => {
                    tracing::debug!(source = %step.name, %why, "token source had nothing");
                }
                Err(e) => return Err(e),
            }
        }
        let names: Vec<&str> = self.names().collect();
        Err(Error::NoToken(format!(
            "no source had a token (tried: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )))
    }
}

impl TokenSource for Chain {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.fetch_now(previous).boxed()
    }
}

impl fmt::Debug for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chain")
            .field("sources", &self.names().collect::<Vec<_>>())
            .field("refresh_with", &self.endpoint)
            .finish()
    }
}

/// Whether two secrets are equal (constant time).
fn same_secret(a: &secrecy::SecretString, b: &secrecy::SecretString) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(
        a.expose_secret()
            .as_bytes()
            .ct_eq(b.expose_secret().as_bytes()),
    )
}

/// Whether `token` is the one being replaced.
fn is_previous(token: &Token, previous: Option<&Token>) -> bool {
    previous
        .is_some_and(|p| p.access_token().expose_secret() == token.access_token().expose_secret())
}

/// A token given in code; served until it is the one being replaced.
struct Fixed(Token);

impl TokenSource for Fixed {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        let result = if is_previous(&self.0, previous) && !self.0.is_expired() {
            Err(Error::NoToken(
                "the token given in code was already used".into(),
            ))
        } else {
            Ok(self.0.clone())
        };
        futures_util::future::ready(result).boxed()
    }
}

/// A token store as a source (see [`Chain::store`]).
struct StoreSource(Arc<dyn TokenStore>);

impl TokenSource for StoreSource {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            match self.0.load().await? {
                Some(t) if is_previous(&t, previous) && !t.is_expired() => Err(Error::NoToken(
                    "the stored token is the one being replaced".into(),
                )),
                Some(t) => Ok(t),
                None => Err(Error::NoToken("no token is stored".into())),
            }
        }
        .boxed()
    }
}
