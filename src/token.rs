//! [`Token`]: an access token with its type, expiry, refresh token and scope.

use std::fmt;
use std::time::Duration;

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use crate::Error;

/// An OAuth 2.0 access token, as a token endpoint issued it.
///
/// The access and refresh tokens are secrets: they are zeroized when dropped and
/// `Debug` prints `[redacted]`. The `Authorization` header value is computed once,
/// when the token is made, and marked sensitive so that HTTP/2 never indexes it and
/// tracing middlewares do not print it.
///
/// Expiry is measured on [`tokio::time::Instant`], so tests can pause the clock.
pub struct Token {
    access: SecretString,
    token_type: String,
    expires_at: Option<Instant>,
    refresh: Option<SecretString>,
    scope: Option<String>,
    header: HeaderValue,
}

impl Token {
    /// A bearer token with no expiry, no refresh token and no scope.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the token is empty or has characters that
    /// cannot go in an HTTP header (control characters, non-ASCII).
    pub fn bearer(access_token: impl Into<String>) -> Result<Self, Error> {
        let access = access_token.into();
        let header = bearer_header(&access)?;
        Ok(Token {
            access: SecretString::from(access),
            token_type: "Bearer".to_owned(),
            expires_at: None,
            refresh: None,
            scope: None,
            header,
        })
    }

    /// Sets the expiry to `lifetime` from now.
    ///
    /// A lifetime too large to represent means the token does not expire.
    pub fn with_expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_at = Instant::now().checked_add(lifetime);
        self
    }

    /// Sets the instant the token expires.
    pub fn with_expires_at(mut self, at: Instant) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the refresh token.
    pub fn with_refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh = Some(SecretString::from(refresh_token.into()));
        self
    }

    /// Removes the refresh token.
    pub fn without_refresh_token(mut self) -> Self {
        self.refresh = None;
        self
    }

    /// Sets the granted scope (space-separated).
    pub fn with_scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The access token. Read it with [`ExposeSecret::expose_secret`].
    pub fn access_token(&self) -> &SecretString {
        &self.access
    }

    /// The refresh token, when the token endpoint issued one.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh.as_ref()
    }

    /// The token type as the endpoint sent it (always a spelling of `Bearer`).
    pub fn token_type(&self) -> &str {
        &self.token_type
    }

    /// When the token expires, if it does.
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// How long the token stays valid from now (zero once expired), if it expires.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether the token has expired.
    pub fn is_expired(&self) -> bool {
        self.expires_at.is_some_and(|at| Instant::now() >= at)
    }

    /// The granted scope, when the endpoint said it.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The `Authorization` header value (`Bearer <token>`), marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.header
    }

    pub(crate) fn set_token_type(&mut self, token_type: String) {
        self.token_type = token_type;
    }
}

impl Clone for Token {
    fn clone(&self) -> Self {
        Token {
            access: SecretString::from(self.access.expose_secret()),
            token_type: self.token_type.clone(),
            expires_at: self.expires_at,
            refresh: self
                .refresh
                .as_ref()
                .map(|r| SecretString::from(r.expose_secret())),
            scope: self.scope.clone(),
            header: self.header.clone(),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in())
            .field(
                "refresh_token",
                &self.refresh.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

/// `Bearer <token>` as a sensitive header value.
pub(crate) fn bearer_header(token: &str) -> Result<HeaderValue, Error> {
    if token.is_empty() {
        return Err(Error::Configuration("the access token is empty".into()));
    }
    // RFC 6750 tokens are visible ASCII with no spaces; anything else would be
    // mangled or refused by servers, or split the header.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Configuration(
            "the access token has characters that cannot go in a bearer header".into(),
        ));
    }
    let mut value = HeaderValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Error::Configuration("the access token is not a valid header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_both_tokens() {
        let t = Token::bearer("access-secret-123")
            .unwrap()
            .with_refresh_token("refresh-secret-456")
            .with_scope("read");
        let printed = format!("{t:?} {:?}", t.clone());
        assert!(!printed.contains("access-secret-123"), "{printed}");
        assert!(!printed.contains("refresh-secret-456"), "{printed}");
        assert!(printed.contains("read"));
    }

    #[test]
    fn header_is_precomputed_and_sensitive() {
        let t = Token::bearer("abc").unwrap();
        assert_eq!(t.authorization(), "Bearer abc");
        assert!(t.authorization().is_sensitive());
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert!(Token::bearer("").is_err());
        assert!(Token::bearer("a\nb").is_err());
        assert!(Token::bearer("caf\u{e9}").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_follows_the_tokio_clock() {
        let t = Token::bearer("abc")
            .unwrap()
            .with_expires_in(Duration::from_secs(10));
        assert!(!t.is_expired());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(t.is_expired());
        let forever = Token::bearer("abc").unwrap().with_expires_in(Duration::MAX);
        assert_eq!(forever.expires_at(), None);
    }
}
