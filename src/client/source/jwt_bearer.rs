//! [`JwtBearer`]: the JWT-bearer grant (RFC 7523 §2.1), as Google service accounts
//! use it: a signed assertion exchanged for an access token.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use secrecy::ExposeSecret;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{TokenSource, WorkloadToken};
use crate::client::assertion::{iat_exp, jti, AssertionClaims};
use crate::client::{Algorithm, AssertionKey, TokenEndpoint};
use crate::{Error, Token};

/// The grant type of the JWT-bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Google's token endpoint, for a service-account key that names none.
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// How long each grant assertion is valid by default (Google accepts at most an
/// hour; a short life limits what a leaked assertion is worth).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// The JWT-bearer grant (RFC 7523 §2.1): for each token, a new assertion signed with
/// the key (`iss` the issuer, `sub` the subject or else the issuer, `scope`, `aud` the token endpoint,
/// `iat`, `exp`, a fresh `jti`), posted as `grant_type` [`JWT_BEARER_GRANT`] and
/// `assertion`. The scope travels in the assertion, as Google expects.
///
/// Load a Google service-account key with
/// [`from_service_account_json`](Self::from_service_account_json) or
/// [`from_service_account_file`](Self::from_service_account_file):
///
/// ```no_run
/// use tower_bearer::client::source::JwtBearer;
/// use tower_bearer::Refreshing;
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let grant = JwtBearer::from_service_account_file("service-account.json")?
///     .scope("https://www.googleapis.com/auth/cloud-platform");
/// let authorizer = Refreshing::new(grant);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct JwtBearer {
    endpoint: TokenEndpoint,
    assertion: Assertion,
    issuer: String,
    subject: Option<String>,
    audience: Option<String>,
    scope: Option<String>,
    resources: Vec<String>,
    lifetime: Duration,
}

/// Where the grant's assertion comes from.
#[derive(Clone)]
enum Assertion {
    /// Signed here, for each request.
    Signed(AssertionKey),
    /// Another party's (an identity provider's ID-JAG), fetched for each request.
    Fetched(Arc<dyn TokenSource>),
    /// Another process's, read from a file it rotates.
    Workload(WorkloadToken),
}

impl JwtBearer {
    /// Assertions issued by `issuer` and signed with `key`, exchanged at `endpoint`
    /// (whose client authentication, if any, is sent too).
    pub fn new(endpoint: TokenEndpoint, issuer: impl Into<String>, key: AssertionKey) -> Self {
        JwtBearer {
            endpoint,
            assertion: Assertion::Signed(key),
            issuer: issuer.into(),
            subject: None,
            audience: None,
            scope: None,
            resources: Vec::new(),
            lifetime: DEFAULT_LIFETIME,
        }
    }

    /// Assertions another party signs: each request presents a fresh one from
    /// `assertions` (its access token is the assertion), exchanged at `endpoint` with
    /// the endpoint's client authentication. Cross-app access
    /// (draft-ietf-oauth-identity-assertion-authz-grant) is a
    /// [`TokenExchange`](super::TokenExchange) at the enterprise identity provider
    /// asking for an [ID-JAG](super::token_type::ID_JAG), presented here. The claim
    /// setters ([`subject`](Self::subject), [`scope`](Self::scope) as a claim,
    /// [`audience`](Self::audience), [`lifetime`](Self::lifetime)) do not apply: the
    /// assertion is already signed; [`resource`](Self::resource) is still sent.
    pub fn presenting(endpoint: TokenEndpoint, assertions: impl TokenSource) -> Self {
        JwtBearer {
            endpoint,
            assertion: Assertion::Fetched(Arc::new(assertions)),
            issuer: String::new(),
            subject: None,
            audience: None,
            scope: None,
            resources: Vec::new(),
            lifetime: DEFAULT_LIFETIME,
        }
    }

    /// Workload identity: the assertion is the token another process writes to a
    /// file and rotates (a Kubernetes projected service-account token, a CI job's
    /// OIDC token), read again whenever the file changes ([`WorkloadToken`]),
    /// exchanged at `endpoint` with the endpoint's client authentication. As with
    /// [`presenting`](Self::presenting), the claim setters do not apply;
    /// [`resource`](Self::resource) is still sent.
    ///
    /// A refused assertion (`invalid_grant`: it expired, its rotation is late) does
    /// not end the source: the file is read again at once and, when it holds a
    /// newer token, the grant is tried once more with it; otherwise the refusal is
    /// returned as [`Error::TokenEndpoint`], so a [`Refreshing`](crate::Refreshing)
    /// cache tries again after a backoff (and reads the file again) instead of
    /// declaring itself logged out.
    ///
    /// ```no_run
    /// use tower_bearer::client::source::{JwtBearer, WorkloadToken};
    /// use tower_bearer::client::TokenEndpoint;
    /// use tower_bearer::Refreshing;
    /// # fn run() -> Result<(), tower_bearer::Error> {
    /// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?;
    /// let grant = JwtBearer::workload(
    ///     endpoint,
    ///     WorkloadToken::file("/var/run/secrets/tokens/idp-token"),
    /// );
    /// let authorizer = Refreshing::new(grant);
    /// # Ok(()) }
    /// ```
    pub fn workload(endpoint: TokenEndpoint, token: WorkloadToken) -> Self {
        JwtBearer {
            endpoint,
            assertion: Assertion::Workload(token),
            issuer: String::new(),
            subject: None,
            audience: None,
            scope: None,
            resources: Vec::new(),
            lifetime: DEFAULT_LIFETIME,
        }
    }

    /// A Google service-account key (the JSON file of `gcloud iam service-accounts
    /// keys create`): `private_key` (RS256), `client_email` as issuer, `token_uri` as
    /// endpoint and audience, `private_key_id` as `kid`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for text that is not a service-account key, a key
    /// that does not load, or a `token_uri` that is not `https://` (loopback `http://`
    /// aside). The messages never quote the file.
    pub fn from_service_account_json(json: &str) -> Result<Self, Error> {
        let account: ServiceAccount = serde_json::from_str(json).map_err(|e| {
            Error::Configuration(format!(
                "not a service-account key: {:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        if account.kind.as_deref() != Some("service_account") {
            return Err(Error::Configuration(
                "not a service-account key: its type is not \"service_account\"".into(),
            ));
        }
        let (Some(pem), Some(email)) = (account.private_key, account.client_email) else {
            return Err(Error::Configuration(
                "the service-account key lacks private_key or client_email".into(),
            ));
        };
        let mut key = AssertionKey::from_pem(Algorithm::RS256, pem.as_bytes())?;
        if let Some(kid) = account.private_key_id {
            key = key.key_id(kid);
        }
        let endpoint =
            TokenEndpoint::new(account.token_uri.as_deref().unwrap_or(GOOGLE_TOKEN_URI))?;
        Ok(JwtBearer::new(endpoint, email, key))
    }

    /// [`from_service_account_json`](Self::from_service_account_json) from a file.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the file cannot be read, and as
    /// [`from_service_account_json`](Self::from_service_account_json).
    pub fn from_service_account_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path)
            .map_err(|e| Error::Configuration(format!("cannot read {}: {e}", path.display())))?;
        Self::from_service_account_json(&json)
    }

    /// The `sub` claim: the user a service account acts for (Google domain-wide
    /// delegation). By default the issuer itself: RFC 7523 §3 requires a `sub`, and
    /// a service account acting for itself names its own id (Google accepts it).
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The `scope` claim (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// The `aud` claim; by default the token endpoint URL.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// A resource indicator (RFC 8707), sent as a `resource` form field; call again
    /// for more than one.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// How long each assertion is valid; default 5 minutes.
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Presents `assertion` at the token endpoint.
    async fn grant(&self, assertion: &str) -> Result<Token, Error> {
        let mut form = vec![("grant_type", JWT_BEARER_GRANT), ("assertion", assertion)];
        form.extend(self.resources.iter().map(|r| ("resource", r.as_str())));
        self.endpoint.request(&form).await
    }

    /// The token endpoint.
    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    async fn assertion(&self) -> Result<Zeroizing<String>, Error> {
        let key = match &self.assertion {
            Assertion::Signed(key) => key,
            Assertion::Fetched(source) => {
                let token = source.fetch(None).await?;
                return Ok(Zeroizing::new(token.expose_access_token().to_owned()));
            }
            Assertion::Workload(token) => {
                return Ok(Zeroizing::new(token.current()?.expose_secret().to_owned()));
            }
        };
        let token_url = self.endpoint.url().to_string();
        let (iat, exp) = iat_exp(self.lifetime);
        key.sign(&AssertionClaims {
            iss: &self.issuer,
            // RFC 7523 §3 (2): `sub` is required; without a subject the issuer acts
            // for itself.
            sub: Some(self.subject.as_deref().unwrap_or(&self.issuer)),
            aud: self.audience.as_deref().unwrap_or(&token_url),
            jti: Some(jti()),
            iat,
            exp,
            scope: self.scope.as_deref(),
        })
        .await
        .map(Zeroizing::new)
    }
}

impl TokenSource for JwtBearer {
    fn fetch<'a>(&'a self, _previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            let assertion = self.assertion().await?;
            let refused = match self.grant(&assertion).await {
                Err(Error::InvalidGrant(e)) => e,
                other => return other,
            };
            let Assertion::Workload(token) = &self.assertion else {
                return Err(Error::InvalidGrant(refused));
            };
            // The file may hold a newer token already (rotated within one timestamp
            // tick, or just now): read it again, and try once more if it changed.
            token.forget();
            let newer = self.assertion().await?;
            if *newer == *assertion {
                tracing::debug!(
                    path = %token.path().display(),
                    "the workload assertion was refused; it is read again on the next try"
                );
                return Err(Error::TokenEndpoint(refused));
            }
            match self.grant(&newer).await {
                Err(Error::InvalidGrant(e)) => Err(Error::TokenEndpoint(e)),
                other => other,
            }
        }
        .boxed()
    }
}

impl fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtBearer")
            .field("endpoint", &self.endpoint)
            .field(
                "key",
                match &self.assertion {
                    Assertion::Signed(key) => key,
                    Assertion::Fetched(_) => &"(assertions fetched)",
                    Assertion::Workload(token) => token,
                },
            )
            .field("issuer", &self.issuer)
            .field("subject", &self.subject)
            .field("scope", &self.scope)
            .field("resources", &self.resources)
            .finish()
    }
}

/// The fields of a Google service-account key this grant uses.
#[derive(Deserialize)]
struct ServiceAccount {
    #[serde(rename = "type")]
    kind: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    client_email: Option<String>,
    token_uri: Option<String>,
}
