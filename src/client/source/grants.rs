//! The OAuth 2.0 grants over a token endpoint: refresh token, client credentials
//! and password.

use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use secrecy::{ExposeSecret, SecretString};

use super::TokenSource;
use crate::client::TokenEndpoint;
use crate::{Error, Token};

/// The form fields every grant shares: the scope, and the resource indicators
/// (RFC 8707).
#[derive(Clone, Debug, Default)]
struct Scope {
    scope: Option<String>,
    resources: Vec<String>,
}

impl Scope {
    fn push<'a>(&'a self, form: &mut Vec<(&'a str, &'a str)>) {
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
    }
}

/// The `resource` builder method of every grant (RFC 8707).
macro_rules! resource_method {
    () => {
        /// A resource indicator (RFC 8707): the URI of the API the token is for, sent
        /// as a `resource` form field. Call again for more than one; for tokens for
        /// several APIs, make one grant (and one cache) per API. It must be an
        /// absolute URI without a fragment (RFC 8707 §2): otherwise every fetch fails
        /// with [`Error::Configuration`] and nothing is sent.
        pub fn resource(mut self, resource: impl Into<String>) -> Self {
            self.scope.resources.push(resource.into());
            self
        }
    };
}

/// Exchanges a refresh token for a new access token (RFC 6749 §6), then keeps
/// using the newest refresh token: a rotated one in an answer replaces the old.
///
/// Made by [`TokenEndpoint::refresh_token`].
#[derive(Clone)]
pub struct RefreshTokenGrant {
    endpoint: TokenEndpoint,
    initial: Arc<SecretString>,
    scope: Scope,
}

impl RefreshTokenGrant {
    pub(crate) fn new(endpoint: TokenEndpoint, refresh_token: String) -> Self {
        RefreshTokenGrant {
            endpoint,
            initial: Arc::new(SecretString::from(refresh_token)),
            scope: Scope::default(),
        }
    }

    /// Asks for this scope (space-separated); by default the originally granted one.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope.scope = Some(scope.into());
        self
    }

    resource_method!();
}

/// One refresh-token exchange. An answer without a refresh token keeps the one
/// that was used (RFC 6749 §6: the server may or may not rotate it).
async fn refresh(
    endpoint: &TokenEndpoint,
    refresh_token: &str,
    scope: &Scope,
) -> Result<Token, Error> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    scope.push(&mut form);
    let token = endpoint.request(&form).await?;
    Ok(if token.refresh_token().is_none() {
        token.with_refresh_token(refresh_token)
    } else {
        token
    })
}

impl TokenSource for RefreshTokenGrant {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        let refresh_token = previous
            .and_then(Token::refresh_token)
            .unwrap_or(&self.initial);
        // OIDC Core §12.2: a refresh answer may leave out the ID token; the login's
        // stays with the session.
        refresh(&self.endpoint, refresh_token.expose_secret(), &self.scope)
            .map(move |answer| answer.map(|t| t.keep_id_token_of(previous)))
            .boxed()
    }

    /// The refresh token `fetch` presents: `previous`'s, or the one this grant was
    /// made with.
    fn presents(&self, previous: Option<&Token>) -> Option<super::Presented> {
        let refresh_token = previous
            .and_then(Token::refresh_token)
            .unwrap_or(&self.initial);
        Some(super::Presented::of(refresh_token.expose_secret()))
    }
}

impl fmt::Debug for RefreshTokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenGrant")
            .field("endpoint", &self.endpoint)
            .field("refresh_token", &"[redacted]")
            .field("scope", &self.scope.scope)
            .field("resources", &self.scope.resources)
            .finish()
    }
}

/// The client-credentials grant (RFC 6749 §4.4): a service acting for itself.
///
/// Only a confidential client may use it: the endpoint must authenticate the client
/// (a [`client_secret`](TokenEndpoint::client_secret) with `client_secret_basic` or
/// `client_secret_post`, a client assertion, or TLS client authentication). Without
/// one, every fetch fails with [`Error::Configuration`] and nothing is sent.
///
/// Made by [`TokenEndpoint::client_credentials`].
#[derive(Clone, Debug)]
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    scope: Scope,
}

impl ClientCredentials {
    pub(crate) fn new(endpoint: TokenEndpoint) -> Self {
        ClientCredentials {
            endpoint,
            scope: Scope::default(),
        }
    }

    /// Asks for this scope (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope.scope = Some(scope.into());
        self
    }

    resource_method!();
}

impl TokenSource for ClientCredentials {
    fn fetch<'a>(&'a self, _previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            // RFC 6749 §4.4: "MUST only be used by confidential clients".
            if !self.endpoint.authenticates_client() {
                return Err(Error::Configuration(
                    "the client credentials grant needs client authentication (RFC 6749 §4.4): \
                     set a client secret, a client assertion or TLS client authentication"
                        .into(),
                ));
            }
            let mut form = vec![("grant_type", "client_credentials")];
            self.scope.push(&mut form);
            self.endpoint.request(&form).await
        }
        .boxed()
    }
}

/// The resource-owner password grant (RFC 6749 §4.3): form fields `username` and
/// `password`, as a `/token` endpoint of a FastAPI-style service takes them.
///
/// When the endpoint issues a refresh token, later refreshes use it; when that
/// refresh token is refused (`invalid_grant`), the grant logs in with the password
/// again rather than failing.
///
/// Made by [`TokenEndpoint::password`].
#[derive(Clone)]
pub struct PasswordGrant {
    endpoint: TokenEndpoint,
    username: String,
    password: Arc<SecretString>,
    scope: Scope,
}

impl PasswordGrant {
    pub(crate) fn new(endpoint: TokenEndpoint, username: String, password: String) -> Self {
        PasswordGrant {
            endpoint,
            username,
            password: Arc::new(SecretString::from(password)),
            scope: Scope::default(),
        }
    }

    /// Asks for this scope (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope.scope = Some(scope.into());
        self
    }

    resource_method!();

    /// Logs in with the user name and password.
    ///
    /// # Errors
    /// [`Error::InvalidGrant`] for a wrong user name or password; see
    /// [`TokenEndpoint::request`] for the rest.
    pub async fn login(&self) -> Result<Token, Error> {
        let mut form = vec![
            ("grant_type", "password"),
            ("username", self.username.as_str()),
            ("password", self.password.expose_secret()),
        ];
        self.scope.push(&mut form);
        self.endpoint.request(&form).await
    }
}

impl TokenSource for PasswordGrant {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            if let Some(rt) = previous.and_then(Token::refresh_token) {
                match refresh(&self.endpoint, rt.expose_secret(), &self.scope).await {
                    Err(Error::InvalidGrant(e)) => {
                        tracing::debug!(error = %e, "refresh token refused; logging in with the password again");
                    }
                    other => return other.map(|t| t.keep_id_token_of(previous)),
                }
            }
            self.login().await
        }
        .boxed()
    }
}

impl fmt::Debug for PasswordGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordGrant")
            .field("endpoint", &self.endpoint)
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("scope", &self.scope.scope)
            .field("resources", &self.scope.resources)
            .finish()
    }
}
