//! The crate's one error type, for the client side and the server's fetchers (JWKS,
//! discovery, introspection): what failed, whether to retry, and when.
//!
//! [`Error`] is `Clone` because a single token refresh is shared by every caller
//! that waited for it: each of them receives the same failure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

/// A boxed error from a transport or a user-supplied component.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a token could not be obtained or used.
///
/// Match on the variant to decide what to do: [`Error::InvalidGrant`] means a person
/// (or an operator) must log in again; [`Error::Transport`], [`Error::Timeout`] and
/// most [`Error::TokenEndpoint`] answers are worth retrying later. Failures to reach
/// or read an endpoint name it ([`Error::endpoint`]): the client's token endpoint, or
/// the JWKS, discovery and introspection endpoints of the server side.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An endpoint of the identity provider (named by the [`Endpoint`]: the token
    /// endpoint, a JWKS, the discovery document, the introspection endpoint) could not
    /// be reached: connection refused or reset, TLS, DNS.
    #[error("{0} unreachable: {1}")]
    Transport(Endpoint, #[source] SharedError),
    /// An endpoint of the identity provider did not answer within the configured
    /// timeout.
    #[error("{0} did not answer within {1:?}")]
    Timeout(Endpoint, Duration),
    /// The token endpoint answered with an error (RFC 6749 §5.2), other than `invalid_grant`.
    #[error("token endpoint refused the request: {0}")]
    TokenEndpoint(Box<EndpointError>),
    /// The grant (refresh token, password, device code) is no longer valid:
    /// the refresh token was revoked, expired or already used. Log in again;
    /// retrying cannot help.
    #[error("the refresh token or credentials are no longer valid; log in again ({0})")]
    InvalidGrant(Box<EndpointError>),
    /// An endpoint of the identity provider answered something this crate cannot use:
    /// from the token endpoint not JSON, no `access_token`, a `token_type` other than
    /// bearer; a JWKS with no usable key, a discovery document for another issuer, an
    /// introspection answer that does not parse; an unexpected status; a body over
    /// the size cap.
    #[error("invalid {0} response: {1}")]
    InvalidResponse(Endpoint, String),
    /// The client is configured in a way that cannot work (bad URL, credentials
    /// over plain `http://` to a remote host, a header value that is not valid).
    #[error("configuration error: {0}")]
    Configuration(String),
    /// No token is available and no source can provide one.
    #[error("no token available: {0}")]
    NoToken(String),
    /// The refresh task stopped before it produced a token (it panicked or its
    /// runtime shut down).
    #[error("token refresh was aborted: {0}")]
    Aborted(String),
    /// The shared token store (Redis for a fleet) failed or did not answer in time:
    /// connection lost, timeout, or a replica holding the refresh lock never finished.
    /// Worth retrying: the store reconnects by itself.
    #[error("token store failed: {0}")]
    Store(String),
    /// A token file cannot be used: it belongs to another user or issuer, it is
    /// corrupt (it was kept, renamed `.corrupt`), or it cannot be read or written.
    /// The message names the file and what to do; retrying cannot help.
    #[error("token file: {0}")]
    TokenFile(String),
    /// The person declined the device authorization request (RFC 8628 `access_denied`).
    #[error("the login was declined ({0})")]
    AccessDenied(Box<EndpointError>),
    /// The refresh token this process held was spent elsewhere (another replica of a
    /// fleet, or another process sharing the store, refreshed with it), and the newer
    /// token it got has not reached this process yet. Not a logout: it is retried
    /// after a backoff, reading the shared store each time, and the dead refresh
    /// token is never presented again.
    #[error("the refresh token was spent elsewhere; waiting for the newer token ({0})")]
    Superseded(String),
    /// The device code expired before the person approved it (RFC 8628
    /// `expired_token`, or its `expires_in` ran out while polling). Start again.
    #[error("the device code expired before the login was approved; start again")]
    DeviceCodeExpired,
    /// The resource accepted the token but wants a stronger or more recent login
    /// (RFC 9470 `insufficient_user_authentication`): log the user in again with the
    /// challenge's `acr_values` and `max_age`; refreshing cannot help. Made from a
    /// [`StepUpChallenge`](crate::client::StepUpChallenge) read off an answer.
    #[error("the resource requires a stronger or more recent login: {0}")]
    StepUpRequired(Box<crate::client::StepUpChallenge>),
    /// An OpenID Connect ID token (or the UserInfo answer checked against it) was
    /// refused: the message names the rule it broke (signature, `iss`, `aud`, `azp`,
    /// `exp`, `iat`, `nonce`, `at_hash`, `c_hash`, `auth_time`, `sub`), never the
    /// token. A login whose ID token is refused gives this, not a token.
    #[error("the ID token is refused: {0}")]
    IdToken(String),
    /// A remote signer (`client::Signer`: a key in a KMS or an HSM) failed: it
    /// answered an error, or a signature of the wrong length or one its public key does
    /// not verify (never sent). The message quotes nothing of its answer.
    #[error("the signer failed: {0}")]
    Signer(String),
    /// A remote signer did not answer within its deadline (the signature was given up;
    /// other signatures are not held up by it). Worth retrying.
    #[error("the signer did not answer within {0:?}")]
    SignerTimeout(Duration),
}

impl From<crate::client::StepUpChallenge> for Error {
    fn from(challenge: crate::client::StepUpChallenge) -> Self {
        Error::StepUpRequired(Box::new(challenge))
    }
}

impl Error {
    /// Whether waiting and trying again may succeed (transport failures, timeouts,
    /// server-side `5xx` answers and `429`).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(..)
            | Error::Timeout(..)
            | Error::Aborted(_)
            | Error::Store(_)
            | Error::Superseded(_)
            | Error::SignerTimeout(_) => true,
            Error::TokenEndpoint(e) => {
                e.status.is_server_error() || e.status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }

    /// The RFC 6749 error code (`invalid_client`, `invalid_grant`, …) when the token
    /// endpoint sent one.
    pub fn oauth_code(&self) -> Option<&str> {
        match self {
            Error::TokenEndpoint(e) | Error::InvalidGrant(e) | Error::AccessDenied(e) => {
                e.code.as_deref()
            }
            Error::DeviceCodeExpired => Some("expired_token"),
            _ => None,
        }
    }

    /// How long the token endpoint asked us to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::TokenEndpoint(e) => e.retry_after,
            _ => None,
        }
    }

    /// The endpoint that could not be reached or answered something unusable
    /// ([`Error::Transport`], [`Error::Timeout`], [`Error::InvalidResponse`]).
    pub fn endpoint(&self) -> Option<Endpoint> {
        match self {
            Error::Transport(endpoint, _)
            | Error::Timeout(endpoint, _)
            | Error::InvalidResponse(endpoint, _) => Some(*endpoint),
            _ => None,
        }
    }

    /// The authorizer's error in `err`'s chain, if there is one: `err` itself, an
    /// [`AuthorizeError`](crate::client::AuthorizeError) that holds one, or a source of
    /// either. For a boxed [`AuthorizeError`](crate::client::AuthorizeError) and for a
    /// tonic `Status` from a client behind [`AuthorizeLayer`](crate::AuthorizeLayer)
    /// (the error is its source).
    ///
    /// ```
    /// use tower_bearer::client::AuthorizeError;
    /// use tower_bearer::{BoxError, Error};
    ///
    /// let boxed: BoxError = AuthorizeError::Credential(Error::NoToken("none".into())).into();
    /// assert!(matches!(Error::find(&*boxed), Some(Error::NoToken(_))));
    /// ```
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<Error>() {
                return Some(found);
            }
            if let Some(found) = e
                .downcast_ref::<crate::client::AuthorizeError>()
                .and_then(crate::client::AuthorizeError::credential_error)
            {
                return Some(found);
            }
            next = e.source();
        }
        None
    }

    /// The authorizer's error in an error of a reqwest-middleware client with
    /// [`AuthorizeMiddleware`](crate::client::AuthorizeMiddleware) (feature `reqwest`),
    /// if the request failed for want of a credential.
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn find_in_reqwest(err: &reqwest_middleware::Error) -> Option<&Error> {
        match err {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref::<Error>(),
            _ => None,
        }
    }

    pub(crate) fn transport(endpoint: Endpoint, e: BoxError) -> Self {
        Error::Transport(endpoint, SharedError(Arc::from(e)))
    }
}

/// Which endpoint of the identity provider an [`Error`] is about: its message names it
/// ("JWKS endpoint unreachable: …").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Endpoint {
    /// The token endpoint (RFC 6749 §3.2).
    Token,
    /// The device authorization endpoint (RFC 8628 §3.1).
    DeviceAuthorization,
    /// The JWKS URL the validator takes its keys from.
    Jwks,
    /// The OpenID Connect discovery document (`/.well-known/openid-configuration`).
    Discovery,
    /// The token introspection endpoint (RFC 7662).
    Introspection,
    /// The token revocation endpoint (RFC 7009).
    Revocation,
    /// A protected resource's metadata document (RFC 9728).
    ResourceMetadata,
    /// The authorization endpoint (RFC 6749 §3.1), as seen through the redirect back
    /// to the client.
    Authorization,
    /// The dynamic client registration endpoint (RFC 7591 §3).
    Registration,
    /// The pushed authorization request endpoint (RFC 9126 §2).
    PushedAuthorization,
    /// The OpenID Connect UserInfo endpoint (OIDC Core §5.3).
    UserInfo,
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Endpoint::Token => "token endpoint",
            Endpoint::DeviceAuthorization => "device authorization endpoint",
            Endpoint::Jwks => "JWKS endpoint",
            Endpoint::Discovery => "discovery document",
            Endpoint::Introspection => "introspection endpoint",
            Endpoint::Revocation => "revocation endpoint",
            Endpoint::ResourceMetadata => "protected resource metadata",
            Endpoint::Authorization => "authorization endpoint",
            Endpoint::Registration => "registration endpoint",
            Endpoint::PushedAuthorization => "pushed authorization request endpoint",
            Endpoint::UserInfo => "UserInfo endpoint",
        })
    }
}

/// An error answer from a token endpoint, as RFC 6749 §5.2 describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointError {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The `error` code, when the body was an RFC 6749 error object.
    pub code: Option<String>,
    /// The `error_description`, when given.
    pub description: Option<String>,
    /// The `error_uri`, when given.
    pub uri: Option<String>,
    /// The `Retry-After` delay (given in seconds or as an HTTP-date).
    pub retry_after: Option<Duration>,
    /// The URL of the endpoint that answered, without its query or user
    /// information (which may hold secrets), when known.
    pub url: Option<String>,
    /// When the body was not an OAuth error object: its media type (`text/html`
    /// for a web server's error page), or `none`. The body itself is never kept.
    pub not_oauth: Option<String>,
}

impl EndpointError {
    /// An error answer with only a status.
    pub fn status(status: StatusCode) -> Self {
        EndpointError {
            status,
            code: None,
            description: None,
            uri: None,
            retry_after: None,
            url: None,
            not_oauth: None,
        }
    }
}

impl fmt::Display for EndpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status.as_u16())?;
        if let Some(url) = &self.url {
            write!(f, " from {url}")?;
        }
        if let Some(media) = &self.not_oauth {
            write!(f, ", not an OAuth answer (content-type {media})")?;
        }
        if let Some(code) = &self.code {
            write!(f, ", error={code}")?;
        }
        if let Some(d) = &self.description {
            write!(f, ", description={d:?}")?;
        }
        if let Some(d) = self.retry_after {
            write!(f, ", retry after {}s", d.as_secs())?;
        }
        Ok(())
    }
}

/// A transport error shared between every waiter of one refresh.
#[derive(Clone)]
pub struct SharedError(pub Arc<dyn std::error::Error + Send + Sync + 'static>);

impl fmt::Debug for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for SharedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)?;
        // hyper and hyper-util hide the interesting part in the source chain.
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl std::error::Error for SharedError {}

impl From<crate::flight::Aborted> for Error {
    fn from(a: crate::flight::Aborted) -> Self {
        Error::Aborted(a.0)
    }
}

/// What went wrong in a JSON document from outside (a file, a provider's answer),
/// without a word of its content: serde's own message quotes the value it could not
/// use, which may be a token or a secret.
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    // These two name one of our own fields, never a value.
    let message = e.to_string();
    if message.starts_with("missing field `") || message.starts_with("duplicate field `") {
        if let Some(field) = message.split('`').nth(1) {
            let what = message.split(' ').next().unwrap_or_default();
            return format!(
                "{what} field `{field}` at line {} column {}",
                e.line(),
                e.column()
            );
        }
    }
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable JSON",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "JSON of the wrong shape",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{kind} at line {} column {}", e.line(), e.column())
}

/// `uri` for a message: scheme, host, port and path; never the query nor the user
/// information, which may carry a code, a token or a password.
pub(crate) fn display_url(uri: &http::Uri) -> String {
    let mut shown = String::new();
    if let Some(scheme) = uri.scheme_str() {
        shown.push_str(scheme);
        shown.push_str("://");
    }
    if let Some(host) = uri.host() {
        shown.push_str(host);
    }
    if let Some(port) = uri.port_u16() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(uri.path());
    shown
}

/// [`display_url`] of a URL given as text; a text that does not parse is not shown.
pub(crate) fn display_url_str(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => display_url(&uri),
        Err(_) => "(a URL that does not parse)".to_owned(),
    }
}

/// The media type of an answer, for a message (at most 64 characters, no
/// parameters), or `none`.
pub(crate) fn media_type(headers: &http::HeaderMap) -> String {
    let media = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .unwrap_or("none");
    media.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Shape {
        n: u32,
        kind: Kind,
    }

    #[derive(Debug, serde::Deserialize)]
    enum Kind {
        A,
    }

    #[test]
    fn json_errors_never_quote_the_document() {
        for hostile in [
            r#"{"n":"MARKER","kind":"A"}"#,
            r#"{"n":1,"kind":"MARKER"}"#,
            r#""MARKER""#,
            r#"{"n":1,"kind":"A","MARKER"#,
            "MARKER",
        ] {
            let e = serde_json::from_str::<Shape>(hostile).unwrap_err();
            if hostile.starts_with('{') && hostile.ends_with('}') {
                // serde itself quotes the value: the reason for json_error.
                assert!(e.to_string().contains("MARKER"), "{e}");
            }
            let shown = json_error(&e);
            assert!(!shown.contains("MARKER"), "{shown}");
        }
        let e = serde_json::from_str::<Shape>(r#"{"kind":"A"}"#).unwrap_err();
        assert_eq!(json_error(&e), "missing field `n` at line 1 column 12");
    }

    #[test]
    fn urls_are_shown_without_query_or_user_information() {
        let uri: http::Uri = "https://user:pw@idp.example.com:8443/o/token/?code=c0de"
            .parse()
            .unwrap();
        assert_eq!(display_url(&uri), "https://idp.example.com:8443/o/token/");
        assert_eq!(
            display_url_str("http://127.0.0.1/cb?code=c0de&state=s"),
            "http://127.0.0.1/cb"
        );
        let err = crate::transport::parse_url("https://u:secret@bad host/?code=c0de").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
        assert!(!err.to_string().contains("c0de"), "{err}");
    }
}
