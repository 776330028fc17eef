//! What the client holds: [`Token`], an access token with its type, expiry, refresh
//! token and scope (secrets zeroized, never shown), and [`Lineage`], the clock that
//! decides which of two tokens is newer wherever they are kept.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    /// The OpenID Connect ID token the endpoint returned with it (kept, never sent).
    id_token: Option<SecretString>,
    header: HeaderValue,
    lineage: Lineage,
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
            id_token: None,
            header,
            lineage: Lineage::next(),
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

    /// Sets the OpenID Connect ID token that came with this token (OIDC Core §3.1.3.3).
    /// It is kept and stored with the token, never sent to an API: the access token
    /// stays the only credential requests carry.
    pub fn with_id_token(mut self, id_token: impl Into<String>) -> Self {
        self.id_token = Some(SecretString::from(id_token.into()));
        self
    }

    /// The OpenID Connect ID token the token endpoint returned, as a secret (it
    /// names the person). Validate it with `client::IdTokenValidator` (feature
    /// `jwks`) before trusting what it says; a browser or device login given a
    /// validator has already done so.
    pub fn id_token(&self) -> Option<&SecretString> {
        self.id_token.as_ref()
    }

    /// The ID token as text, when there is one. Never log it.
    pub fn expose_id_token(&self) -> Option<&str> {
        self.id_token.as_ref().map(|t| t.expose_secret())
    }

    /// This token with `previous`'s ID token (or none) in place of its own: a
    /// refreshed ID token that could not be checked is not kept.
    #[cfg(feature = "jwks")]
    pub(crate) fn with_id_token_of(mut self, previous: Option<&Token>) -> Self {
        self.id_token = previous
            .and_then(|p| p.id_token.as_ref())
            .map(|t| SecretString::from(t.expose_secret()));
        self
    }

    /// The ID token of `previous` when this token has none: a refresh answer may
    /// leave it out (OIDC Core §12.2), and the login's ID token still describes the
    /// session.
    pub(crate) fn keep_id_token_of(mut self, previous: Option<&Token>) -> Self {
        if self.id_token.is_none() {
            self.id_token = previous
                .and_then(|p| p.id_token.as_ref())
                .map(|t| SecretString::from(t.expose_secret()));
        }
        self
    }

    /// The access token, as a secret: read it with [`expose_access_token`]
    /// (or [`ExposeSecret::expose_secret`], re-exported as
    /// [`tower_bearer::ExposeSecret`](crate::ExposeSecret)).
    ///
    /// [`expose_access_token`]: Token::expose_access_token
    pub fn access_token(&self) -> &SecretString {
        &self.access
    }

    /// The access token as text, to hand to something that is not an HTTP request
    /// (a command-line tool prints it; requests get [`authorization`]). Never log it.
    ///
    /// ```
    /// # async fn run() -> Result<(), tower_bearer::Error> {
    /// let token = tower_bearer::Token::bearer("eyJ0.e30.sig")?.with_refresh_token("8xL");
    /// assert_eq!(token.expose_access_token(), "eyJ0.e30.sig");
    /// assert_eq!(token.expose_refresh_token(), Some("8xL"));
    /// // The same through the re-exported trait, without a `secrecy` dependency:
    /// use tower_bearer::ExposeSecret;
    /// assert_eq!(token.access_token().expose_secret(), "eyJ0.e30.sig");
    /// # Ok(()) }
    /// ```
    ///
    /// [`authorization`]: Token::authorization
    pub fn expose_access_token(&self) -> &str {
        self.access.expose_secret()
    }

    /// The refresh token, when the token endpoint issued one, as a secret: read it
    /// with [`expose_refresh_token`](Token::expose_refresh_token).
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh.as_ref()
    }

    /// The refresh token as text, when the token endpoint issued one. Never log it.
    pub fn expose_refresh_token(&self) -> Option<&str> {
        self.refresh.as_ref().map(|r| r.expose_secret())
    }

    /// The token type as the endpoint sent it: a spelling of `Bearer`, or of `DPoP`
    /// for a DPoP-bound token (RFC 9449) asked for by a
    /// [`TokenEndpoint::dpop`](crate::client::TokenEndpoint::dpop) client.
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

    /// Whether the token is DPoP-bound (`token_type` `DPoP`): it is sent as
    /// `Authorization: DPoP <token>` with a proof of the key it is bound to.
    pub fn is_dpop(&self) -> bool {
        self.token_type.eq_ignore_ascii_case("dpop")
    }

    /// The `Authorization` header value (`Bearer <token>`, or `DPoP <token>` for a
    /// DPoP-bound token), marked sensitive.
    pub fn authorization(&self) -> &HeaderValue {
        &self.header
    }

    /// Where this token stands among the tokens this crate has seen: see [`Lineage`].
    pub fn lineage(&self) -> Lineage {
        self.lineage
    }

    /// Sets the lineage, for a [`TokenStore`](crate::client::TokenStore) that kept it.
    /// The process's clock of lineages moves past it, so that every token made
    /// afterwards is newer.
    pub fn with_lineage(mut self, lineage: Lineage) -> Self {
        lineage.observe();
        self.lineage = lineage;
        self
    }

    /// Whether this token is strictly newer than `other`: the one rule by which a
    /// cache, a store or a fleet replaces a token.
    pub fn is_newer_than(&self, other: &Token) -> bool {
        self.lineage > other.lineage
    }

    /// Sets the token type as the endpoint (or a store) said it. A `DPoP` token's
    /// header becomes `DPoP <token>`; any other keeps `Bearer <token>`.
    pub(crate) fn set_token_type(&mut self, token_type: String) {
        let dpop = token_type.eq_ignore_ascii_case("dpop");
        if dpop != self.is_dpop() {
            let scheme = if dpop { "DPoP" } else { "Bearer" };
            // The access token was checked when the token was made: the header
            // differs only by its scheme.
            if let Ok(mut value) =
                HeaderValue::try_from(format!("{scheme} {}", self.access.expose_secret()))
            {
                value.set_sensitive(true);
                self.header = value;
            }
        }
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
            id_token: self
                .id_token
                .as_ref()
                .map(|t| SecretString::from(t.expose_secret())),
            header: self.header.clone(),
            lineage: self.lineage,
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
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("lineage", &self.lineage)
            .finish()
    }
}

/// The order in which tokens came to be: a token is replaced only by a newer one.
///
/// Every token gets one when it is made (a token endpoint's answer, a token the
/// application gives with [`Token::bearer`]), and keeps it wherever it is stored
/// (memory, a token file, Redis): a cache adopts a stored token only when it is
/// strictly newer than its own, and a store never replaces a newer token with an
/// older one. "Differs" never means "newer".
///
/// A lineage is a hybrid logical clock in microseconds since the Unix epoch: the
/// wall clock, but never less than one past the largest lineage this process has
/// made or read (so tokens made here are ordered even if the clock stands still or
/// steps back, and a token made after reading another's is newer than it, even if
/// that came from a machine whose clock runs ahead). Tokens stored by versions of
/// this crate that had no lineage read as [`Lineage::UNKNOWN`], older than any other.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lineage(u64);

/// The largest lineage made or read in this process.
static CLOCK: AtomicU64 = AtomicU64::new(0);

impl Lineage {
    /// The lineage of a token stored without one: older than every other.
    pub const UNKNOWN: Lineage = Lineage(0);

    /// A new lineage, newer than every one this process has made or read.
    pub fn next() -> Lineage {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX - 1));
        let mut last = CLOCK.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match CLOCK.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Lineage(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves this process's clock of lineages to at least `self`.
    pub fn observe(self) {
        CLOCK.fetch_max(self.0, Ordering::AcqRel);
    }

    /// The lineage as a number, for a store to keep.
    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// A lineage a store kept ([`Lineage::as_micros`]).
    pub fn from_micros(micros: u64) -> Lineage {
        Lineage(micros)
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
            .with_id_token("id-token-secret-789")
            .with_scope("read");
        let printed = format!("{t:?} {:?}", t.clone());
        assert!(!printed.contains("access-secret-123"), "{printed}");
        assert!(!printed.contains("refresh-secret-456"), "{printed}");
        assert!(!printed.contains("id-token-secret-789"), "{printed}");
        assert_eq!(t.clone().expose_id_token(), Some("id-token-secret-789"));
        assert_eq!(t.authorization(), "Bearer access-secret-123");
        assert!(printed.contains("read"));
    }

    #[test]
    fn header_is_precomputed_and_sensitive() {
        let t = Token::bearer("abc").unwrap();
        assert_eq!(t.authorization(), "Bearer abc");
        assert!(t.authorization().is_sensitive());
    }

    #[test]
    fn a_dpop_token_type_changes_the_scheme() {
        let mut t = Token::bearer("abc").unwrap();
        t.set_token_type("DPoP".into());
        assert!(t.is_dpop());
        assert_eq!(t.authorization(), "DPoP abc");
        assert!(t.authorization().is_sensitive());
        t.set_token_type("bearer".into());
        assert_eq!(t.authorization(), "Bearer abc");
    }

    #[test]
    fn bad_tokens_are_refused() {
        assert!(Token::bearer("").is_err());
        assert!(Token::bearer("a\nb").is_err());
        assert!(Token::bearer("caf\u{e9}").is_err());
    }

    #[test]
    fn lineages_only_grow_and_a_read_one_is_passed() {
        let a = Token::bearer("a").unwrap();
        let b = Token::bearer("b").unwrap();
        assert!(b.is_newer_than(&a) && !a.is_newer_than(&b));
        assert!(!a.clone().is_newer_than(&a), "a copy is not newer");
        // A token from a machine whose clock runs an hour ahead: the next token made
        // here is newer still.
        let ahead = Lineage::from_micros(Lineage::next().as_micros() + 3_600_000_000);
        let theirs = Token::bearer("c").unwrap().with_lineage(ahead);
        let ours = Token::bearer("d").unwrap();
        assert!(ours.is_newer_than(&theirs));
        assert!(Lineage::UNKNOWN < a.lineage());
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
