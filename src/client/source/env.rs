//! [`EnvSource`]: tokens and credentials from environment variables, with deprecated
//! names still read.

use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use secrecy::ExposeSecret;

use super::TokenSource;
use crate::client::{ApiKey, TokenEndpoint};
use crate::{Error, Token};

/// One setting read from the environment: a canonical variable name and deprecated
/// aliases that are still read.
///
/// The canonical name wins when both are set. When only an alias is set, its value is
/// used and a `tracing` warning names the variable to set instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    canonical: String,
    aliases: Vec<String>,
}

impl EnvVar {
    /// A variable with no aliases.
    pub fn new(canonical: impl Into<String>) -> Self {
        EnvVar {
            canonical: canonical.into(),
            aliases: Vec::new(),
        }
    }

    /// Adds a deprecated name, still read after the canonical one and earlier aliases.
    pub fn alias(mut self, alias: impl Into<String>) -> Self {
        self.aliases.push(alias.into());
        self
    }

    /// The canonical name.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// The deprecated names.
    pub fn aliases(&self) -> &[String] {
        &self.aliases
    }

    /// The value, by `lookup`: the canonical variable's, else the first alias's (with a
    /// warning). Empty values count as unset.
    pub fn read(&self, lookup: &dyn Fn(&str) -> Option<String>) -> Option<String> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        if let Some(v) = get(&self.canonical) {
            return Some(v);
        }
        for alias in &self.aliases {
            if let Some(v) = get(alias) {
                tracing::warn!(
                    deprecated = %alias,
                    replacement = %self.canonical,
                    "environment variable {alias} is deprecated; set {} instead",
                    self.canonical
                );
                return Some(v);
            }
        }
        None
    }
}

type Lookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// Tokens and credentials from the environment (the chime-frb-api convention):
/// `<PREFIX>_ACCESS_TOKEN`, `<PREFIX>_REFRESH_TOKEN`, `<PREFIX>_USERNAME` and
/// `<PREFIX>_PASSWORD`, each with deprecated aliases.
///
/// What it serves, in order:
/// 1. an access token (with the refresh token, when set, for later refreshes);
/// 2. a refresh token alone: exchanged at the [`endpoint`](EnvSource::endpoint);
/// 3. a user name and password: the password grant at the endpoint.
///
/// With none of these set it answers [`Error::NoToken`], so a [`Chain`](super::Chain)
/// moves on. It never serves again the access token being replaced (the one the
/// server refused), so a stale exported token does not loop.
///
/// ```
/// use tower_bearer::client::source::EnvSource;
/// // CHIME_FRB_ACCESS_TOKEN, … with FRB_MASTER_ACCESS_TOKEN, … still read.
/// let env = EnvSource::new("CHIME_FRB").deprecated_prefix("FRB_MASTER");
/// assert_eq!(env.access_token_var().aliases(), ["FRB_MASTER_ACCESS_TOKEN"]);
/// ```
#[derive(Clone)]
pub struct EnvSource {
    access: EnvVar,
    refresh: EnvVar,
    username: EnvVar,
    password: EnvVar,
    endpoint: Option<TokenEndpoint>,
    lookup: Lookup,
}

impl EnvSource {
    /// `<PREFIX>_ACCESS_TOKEN`, `<PREFIX>_REFRESH_TOKEN`, `<PREFIX>_USERNAME`,
    /// `<PREFIX>_PASSWORD`, read from the process environment.
    pub fn new(prefix: &str) -> Self {
        let var = |suffix: &str| EnvVar::new(format!("{prefix}_{suffix}"));
        EnvSource {
            access: var("ACCESS_TOKEN"),
            refresh: var("REFRESH_TOKEN"),
            username: var("USERNAME"),
            password: var("PASSWORD"),
            endpoint: None,
            lookup: Arc::new(|name| std::env::var(name).ok()),
        }
    }

    /// Adds `<OLD>_ACCESS_TOKEN`, … as deprecated aliases of the four variables.
    pub fn deprecated_prefix(mut self, old: &str) -> Self {
        self.access = self.access.alias(format!("{old}_ACCESS_TOKEN"));
        self.refresh = self.refresh.alias(format!("{old}_REFRESH_TOKEN"));
        self.username = self.username.alias(format!("{old}_USERNAME"));
        self.password = self.password.alias(format!("{old}_PASSWORD"));
        self
    }

    /// The access token variable.
    pub fn access_token(mut self, var: EnvVar) -> Self {
        self.access = var;
        self
    }

    /// The refresh token variable.
    pub fn refresh_token(mut self, var: EnvVar) -> Self {
        self.refresh = var;
        self
    }

    /// The user name variable.
    pub fn username(mut self, var: EnvVar) -> Self {
        self.username = var;
        self
    }

    /// The password variable.
    pub fn password(mut self, var: EnvVar) -> Self {
        self.password = var;
        self
    }

    /// The token endpoint for a refresh token or a user name and password found in
    /// the environment. Without it only an access token can be served.
    pub fn endpoint(mut self, endpoint: TokenEndpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// Reads variables with `lookup` instead of the process environment (tests,
    /// a `.env` file, a configuration map).
    pub fn lookup(
        mut self,
        lookup: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.lookup = Arc::new(lookup);
        self
    }

    /// The access token variable.
    pub fn access_token_var(&self) -> &EnvVar {
        &self.access
    }

    /// The refresh token variable.
    pub fn refresh_token_var(&self) -> &EnvVar {
        &self.refresh
    }

    /// Reads one variable with this source's lookup (aliases and warnings included).
    pub fn read(&self, var: &EnvVar) -> Option<String> {
        var.read(&*self.lookup)
    }

    fn endpoint_for(&self, what: &str) -> Result<&TokenEndpoint, Error> {
        self.endpoint.as_ref().ok_or_else(|| {
            Error::Configuration(format!(
                "{what} is set in the environment but the environment source has no token endpoint"
            ))
        })
    }

    async fn fetch_now(&self, previous: Option<&Token>) -> Result<Token, Error> {
        let refresh = self.read(&self.refresh);
        if let Some(access) = self.read(&self.access) {
            let replaced = previous.is_some_and(|p| p.access_token().expose_secret() == access);
            if !replaced {
                let token = Token::bearer(access).map_err(|_| {
                    Error::Configuration(format!(
                        "{} is not a valid bearer token",
                        self.access.canonical
                    ))
                })?;
                return Ok(match refresh {
                    Some(rt) => token.with_refresh_token(rt),
                    None => token,
                });
            }
        }
        if let Some(rt) = refresh {
            let replaced = previous
                .and_then(Token::refresh_token)
                .is_some_and(|p| p.expose_secret() == rt);
            if !replaced {
                let endpoint = self.endpoint_for(&self.refresh.canonical)?;
                let grant = endpoint.refresh_token(rt);
                return grant.fetch(None).await;
            }
        }
        if let (Some(user), Some(password)) = (self.read(&self.username), self.read(&self.password))
        {
            let endpoint = self.endpoint_for(&self.password.canonical)?;
            return endpoint.password(user, password).login().await;
        }
        Err(Error::NoToken(format!(
            "none of {}, {} or {} and {} is set",
            self.access.canonical,
            self.refresh.canonical,
            self.username.canonical,
            self.password.canonical
        )))
    }
}

impl TokenSource for EnvSource {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.fetch_now(previous).boxed()
    }
}

impl fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnvSource")
            .field("access", &self.access)
            .field("refresh", &self.refresh)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// An API key found the way tokens are: passed in code first, then the environment.
impl ApiKey {
    /// The key from the environment variable `var` (its canonical name, then its
    /// deprecated aliases with a warning), sent in the header `header`.
    ///
    /// ```
    /// use tower_bearer::client::{source::EnvVar, ApiKey};
    /// let var = EnvVar::new("APP_API_KEY").alias("OLD_APP_API_KEY");
    /// // Passed in code, it wins over the environment.
    /// let key = ApiKey::from_arg_or_env("x-api-key", Some("k-123"), &var).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`Error::NoToken`] when the variable is not set; [`Error::Configuration`] when
    /// its value cannot go in a header (the message names the variable, not the value).
    pub fn from_env(header: &str, var: &EnvVar) -> Result<Self, Error> {
        Self::from_arg_or_env(header, None, var)
    }

    /// `key` when it is given, else the environment as in [`ApiKey::from_env`].
    ///
    /// # Errors
    /// As [`ApiKey::from_env`].
    pub fn from_arg_or_env(header: &str, key: Option<&str>, var: &EnvVar) -> Result<Self, Error> {
        Self::from_arg_or_lookup(header, key, var, &|name| std::env::var(name).ok())
    }

    /// Like [`ApiKey::from_arg_or_env`], reading variables with `lookup`.
    ///
    /// # Errors
    /// As [`ApiKey::from_env`].
    pub fn from_arg_or_lookup(
        header: &str,
        key: Option<&str>,
        var: &EnvVar,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, Error> {
        if let Some(key) = key.filter(|k| !k.is_empty()) {
            tracing::debug!(source = "arguments", "API key found");
            return ApiKey::new(header, key);
        }
        let Some(value) = var.read(lookup) else {
            return Err(Error::NoToken(format!(
                "no API key: pass one or set {}",
                var.canonical()
            )));
        };
        tracing::debug!(source = "environment", "API key found");
        ApiKey::new(header, &value).map_err(|_| {
            Error::Configuration(format!(
                "{} is not a valid header value (or {header:?} is not a header name)",
                var.canonical()
            ))
        })
    }
}
