//! [`TokenExchange`]: OAuth 2.0 token exchange (RFC 8693), a token for another
//! audience or resource, on behalf of (or delegated by) a token the client holds.

use std::fmt;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use super::{TokenSource, WorkloadToken};
use crate::client::{Authorizer, TokenEndpoint};
use crate::{Error, Token};

/// The grant type of token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token type identifiers (RFC 8693 §3).
pub mod token_type {
    /// An OAuth 2.0 access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// An OAuth 2.0 refresh token.
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// An OpenID Connect ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// A JWT (RFC 7519).
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// An Identity Assertion JWT Authorization Grant (ID-JAG,
    /// draft-ietf-oauth-identity-assertion-authz-grant): what an enterprise identity
    /// provider issues for cross-app access, presented with the JWT-bearer grant.
    pub const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
}

/// A subject or actor token (RFC 8693 §2.1): a fixed value, the current bearer
/// token of an [`Authorizer`] such as a [`Refreshing`](crate::Refreshing) cache, the
/// token a [`TokenSource`] fetches, or a workload's token read from the file another
/// process rotates ([`WorkloadToken`]); all but the fixed one read afresh for every
/// exchange.
#[derive(Clone)]
pub struct ExchangeToken {
    from: From,
    token_type: String,
}

#[derive(Clone)]
enum From {
    Fixed(Arc<SecretString>),
    Authorizer(Arc<dyn Authorizer>),
    Source(Arc<dyn TokenSource>),
    Workload(WorkloadToken),
}

impl ExchangeToken {
    /// A fixed token of `token_type` (one of [`token_type`], or another URI).
    pub fn fixed(token: impl Into<String>, token_type: impl Into<String>) -> Self {
        ExchangeToken {
            from: From::Fixed(Arc::new(SecretString::from(token.into()))),
            token_type: token_type.into(),
        }
    }

    /// The bearer token `authorizer` would send now (`Authorization: Bearer …`),
    /// of `token_type`. When the exchange is refused with `invalid_grant`, the
    /// authorizer hears that its token was rejected (so a cache drops it) and the
    /// exchange is tried once more with its next token.
    pub fn from_authorizer(authorizer: impl Authorizer, token_type: impl Into<String>) -> Self {
        ExchangeToken {
            from: From::Authorizer(Arc::new(authorizer)),
            token_type: token_type.into(),
        }
    }

    /// The access token `source` fetches, one fetch per exchange (give it a
    /// [`Refreshing`](crate::Refreshing) cache to reuse its tokens), of
    /// `token_type`. When the exchange is refused with `invalid_grant`, it is tried
    /// once more with the source's next token.
    pub fn from_source(source: impl TokenSource, token_type: impl Into<String>) -> Self {
        ExchangeToken {
            from: From::Source(Arc::new(source)),
            token_type: token_type.into(),
        }
    }

    /// Workload identity: the token another process writes to a file and rotates
    /// (a Kubernetes projected service-account token, a CI job's OIDC token), of
    /// `token_type` (usually [`token_type::JWT`]), read again whenever the file
    /// changes. When the exchange is refused with `invalid_grant`, the file is read
    /// again and the exchange tried once more; a second refusal is returned as
    /// [`Error::TokenEndpoint`], so a cache tries again later (after the file's
    /// rotation) instead of declaring itself logged out.
    pub fn workload(token: WorkloadToken, token_type: impl Into<String>) -> Self {
        ExchangeToken {
            from: From::Workload(token),
            token_type: token_type.into(),
        }
    }

    /// The token now, and the header it was read from (for an authorizer).
    async fn current(&self) -> Result<(Arc<SecretString>, Option<HeaderValue>), Error> {
        match &self.from {
            From::Fixed(token) => Ok((Arc::clone(token), None)),
            From::Workload(token) => Ok((token.current()?, None)),
            From::Source(source) => {
                let token = source.fetch(None).await?;
                Ok((
                    Arc::new(SecretString::from(token.expose_access_token().to_owned())),
                    None,
                ))
            }
            From::Authorizer(authorizer) => {
                let credential = authorizer.credential().await?.ok_or_else(|| {
                    Error::NoToken("the token exchange's authorizer has no credential".into())
                })?;
                let token = credential
                    .value
                    .to_str()
                    .ok()
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, token)| token.trim())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        Error::Configuration(
                            "the token exchange's authorizer does not give a bearer token".into(),
                        )
                    })?;
                Ok((
                    Arc::new(SecretString::from(token.to_owned())),
                    Some(credential.value),
                ))
            }
        }
    }

    fn rejected(&self, sent: Option<&HeaderValue>) {
        match (&self.from, sent) {
            (From::Authorizer(authorizer), Some(sent)) => authorizer.on_unauthorized(sent),
            // Rotated within one timestamp tick, perhaps: the next use reads the file.
            (From::Workload(token), _) => token.forget(),
            _ => {}
        }
    }

    fn is_fixed(&self) -> bool {
        matches!(self.from, From::Fixed(_))
    }
}

impl fmt::Debug for ExchangeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let from = match self.from {
            From::Fixed(_) => "fixed [redacted]",
            From::Authorizer(_) => "authorizer",
            From::Source(_) => "token source",
            From::Workload(_) => "workload token file",
        };
        f.debug_struct("ExchangeToken")
            .field("from", &from)
            .field("token_type", &self.token_type)
            .finish()
    }
}

/// Token exchange (RFC 8693): posts the subject token (and an optional actor token)
/// with the wanted `audience`, `resource`, `scope` and `requested_token_type`, and
/// answers the issued token. Cache it like any other source:
/// `Refreshing::new(endpoint.token_exchange(subject).audience("…"))`.
///
/// The issued token must be usable as a bearer token (`token_type` `Bearer`); an
/// answer of another type (`N_A`, for a token that is not an access token) is an
/// [`Error::InvalidResponse`].
///
/// `invalid_grant` is how a server refuses the subject token. A fixed subject token
/// cannot get better: the error is returned as it is, and a
/// [`Refreshing`](crate::Refreshing) cache stops. A subject token from an authorizer
/// is reported rejected to it and tried once more with its next token; a second
/// refusal is returned as [`Error::TokenEndpoint`], so a cache retries after a
/// backoff instead of declaring a session over that it does not own.
///
/// ```
/// use tower_bearer::client::source::{token_type, ExchangeToken};
/// use tower_bearer::client::TokenEndpoint;
/// use tower_bearer::Refreshing;
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://sts.example.com/token")?
///     .client_id("gateway")
///     .client_secret("s3cret");
/// let user = Refreshing::new(endpoint.client_credentials());
/// let exchange = endpoint
///     .token_exchange(ExchangeToken::from_authorizer(user, token_type::ACCESS_TOKEN))
///     .audience("https://backend.example.com")
///     .scope("orders:read");
/// let backend = Refreshing::new(exchange);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenExchange {
    endpoint: TokenEndpoint,
    subject: ExchangeToken,
    actor: Option<ExchangeToken>,
    audiences: Vec<String>,
    resources: Vec<String>,
    scope: Option<String>,
    requested_token_type: Option<String>,
}

impl TokenExchange {
    /// Exchanges `subject` at `endpoint` (with its client authentication).
    pub fn new(endpoint: TokenEndpoint, subject: ExchangeToken) -> Self {
        TokenExchange {
            endpoint,
            subject,
            actor: None,
            audiences: Vec::new(),
            resources: Vec::new(),
            scope: None,
            requested_token_type: None,
        }
    }

    /// The actor token (delegation, RFC 8693 §1.1): who acts for the subject.
    pub fn actor(mut self, actor: ExchangeToken) -> Self {
        self.actor = Some(actor);
        self
    }

    /// A target service by name (`audience`); call again for more than one.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audiences.push(audience.into());
        self
    }

    /// A target service by URI (`resource`, RFC 8707); call again for more than one.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// The scope wanted (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The type of token wanted (`requested_token_type`); by default the server's
    /// choice, usually an access token.
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.requested_token_type = Some(token_type.into());
        self
    }

    async fn exchange(&self) -> Result<Token, Error> {
        let (subject, sent) = self.subject.current().await?;
        let actor = match &self.actor {
            Some(actor) => Some((actor.current().await?, actor)),
            None => None,
        };
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE_GRANT),
            ("subject_token", subject.expose_secret()),
            ("subject_token_type", self.subject.token_type.as_str()),
        ];
        if let Some(((token, _), actor)) = &actor {
            form.push(("actor_token", token.expose_secret()));
            form.push(("actor_token_type", actor.token_type.as_str()));
        }
        form.extend(self.audiences.iter().map(|a| ("audience", a.as_str())));
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        if let Some(t) = &self.requested_token_type {
            form.push(("requested_token_type", t));
        }
        // RFC 8693 §2.2.1: a token that is not an access token comes as `N_A`.
        let result = match self.requested_token_type.as_deref() {
            Some(t) if t != token_type::ACCESS_TOKEN => self.endpoint.request_issued(&form).await,
            _ => self.endpoint.request(&form).await,
        };
        if matches!(result, Err(Error::InvalidGrant(_))) {
            self.subject.rejected(sent.as_ref());
            if let Some(((_, actor_sent), actor)) = &actor {
                actor.rejected(actor_sent.as_ref());
            }
        }
        result
    }
}

impl TokenSource for TokenExchange {
    fn fetch<'a>(&'a self, _previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            let fixed = self.subject.is_fixed() && self.actor.as_ref().is_none_or(|a| a.is_fixed());
            match self.exchange().await {
                Err(Error::InvalidGrant(e)) if !fixed => {
                    tracing::debug!(error = %e, "token exchange: a token was refused; trying once more with fresh ones");
                    match self.exchange().await {
                        Err(Error::InvalidGrant(e)) => Err(Error::TokenEndpoint(e)),
                        other => other,
                    }
                }
                other => other,
            }
        }
        .boxed()
    }
}

impl fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenExchange")
            .field("endpoint", &self.endpoint)
            .field("subject", &self.subject)
            .field("actor", &self.actor)
            .field("audiences", &self.audiences)
            .field("resources", &self.resources)
            .field("scope", &self.scope)
            .field("requested_token_type", &self.requested_token_type)
            .finish()
    }
}
