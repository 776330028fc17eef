//! A token endpoint (RFC 6749 §3.2): the form request, client authentication, and
//! the parsing of its answers, successful (§5.1) or not (§5.2).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

#[cfg(feature = "jwt")]
use super::assertion::{ClientAssertion, CLIENT_ASSERTION_TYPE};
use super::authorizer::basic_header;
use super::discovery::ProviderMetadata;
use super::source::{
    ClientCredentials, ExchangeToken, PasswordGrant, RefreshTokenGrant, TokenExchange,
};
use crate::transport::{check_url, parse_url, HttpClient};
use crate::{Endpoint, EndpointError, Error, Token};

/// How this client authenticates to the token endpoint (RFC 6749 §2.3: the
/// `token_endpoint_auth_method` of its registration).
///
/// The server side's counterpart, how a resource server authenticates to the
/// introspection endpoint, is `server::IntrospectionAuth`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TokenEndpointAuth {
    /// `client_secret_basic`: id and secret in an `Authorization: Basic` header.
    /// The default when a secret is set.
    #[default]
    Basic,
    /// `client_secret_post`: id and secret as form fields.
    Post,
    /// A public client: `client_id` as a form field, no secret.
    None,
    /// `private_key_jwt` or `client_secret_jwt` (RFC 7523 §2.2): a signed JWT made
    /// for each request, sent as `client_assertion`.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    Assertion(ClientAssertion),
    /// `tls_client_auth` (RFC 8705 §2.1): the client proves itself with a PKI
    /// certificate in the TLS handshake; `client_id` as a form field, no secret. Give
    /// the endpoint an [`HttpClient`] with that certificate (`HttpClient::builder`,
    /// feature `mtls`).
    TlsClientAuth,
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): as
    /// [`TlsClientAuth`](Self::TlsClientAuth), with a self-signed certificate
    /// registered with the provider.
    SelfSignedTlsClientAuth,
}

impl TokenEndpointAuth {
    /// Whether the client authenticates with its TLS certificate (RFC 8705 §2).
    fn is_tls(&self) -> bool {
        matches!(
            self,
            TokenEndpointAuth::TlsClientAuth | TokenEndpointAuth::SelfSignedTlsClientAuth
        )
    }
}

#[cfg(feature = "jwt")]
impl From<ClientAssertion> for TokenEndpointAuth {
    fn from(assertion: ClientAssertion) -> Self {
        TokenEndpointAuth::Assertion(assertion)
    }
}

/// A token endpoint and the client's registration with it.
///
/// ```no_run
/// use tower_bearer::client::{TokenEndpoint, TokenEndpointAuth};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth2/token")?
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .auth_method(TokenEndpointAuth::Post)
///     .param("audience", "https://api.example.com");
/// let grant = endpoint.client_credentials().scope("read write");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenEndpoint {
    url: Uri,
    /// The token endpoint's URL, also at another endpoint made with `with_url`: the
    /// default audience of client assertions.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    token_url: Uri,
    client_id: Option<String>,
    client_secret: Option<Arc<SecretString>>,
    auth: TokenEndpointAuth,
    params: Vec<(String, String)>,
    http: HttpClient,
    /// What this endpoint is, for errors: the token endpoint, or another endpoint of
    /// the same provider made with `with_url`.
    kind: Endpoint,
    /// The provider metadata this endpoint was discovered from.
    metadata: Option<Arc<ProviderMetadata>>,
    /// The key of DPoP-bound tokens: every request carries a proof, and only
    /// `token_type` `DPoP` is accepted.
    #[cfg(feature = "dpop")]
    dpop: Option<super::dpop::DpopKey>,
    /// The client presents a TLS certificate for certificate-bound tokens (RFC 8705
    /// §3) whatever its authentication method.
    certificate_bound: bool,
}

impl TokenEndpoint {
    /// A token endpoint at `url`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse, or an `http://` URL to a
    /// host other than loopback: credentials would travel in clear text. Use
    /// [`TokenEndpoint::insecure_http`] if that is really meant.
    pub fn new(url: &str) -> Result<Self, Error> {
        Self::build(url, false)
    }

    /// Like [`TokenEndpoint::new`], but accepts `http://` to any host.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse.
    pub fn insecure_http(url: &str) -> Result<Self, Error> {
        Self::build(url, true)
    }

    fn build(url: &str, allow_insecure_http: bool) -> Result<Self, Error> {
        let url = parse_url(url)?;
        check_url(&url, allow_insecure_http)?;
        Ok(TokenEndpoint {
            token_url: url.clone(),
            url,
            client_id: None,
            client_secret: None,
            auth: TokenEndpointAuth::Basic,
            params: Vec::new(),
            http: HttpClient::new(),
            kind: Endpoint::Token,
            metadata: None,
            #[cfg(feature = "dpop")]
            dpop: None,
            certificate_bound: false,
        })
    }

    /// The client identifier.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The client identifier, when one is set.
    pub fn client_id_str(&self) -> Option<&str> {
        self.client_id.as_deref()
    }

    /// The client secret of a confidential client.
    pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(Arc::new(SecretString::from(secret.into())));
        self
    }

    /// How the client authenticates. Default [`TokenEndpointAuth::Basic`] when a
    /// secret is set, a public client otherwise. A
    /// [`ClientAssertion`](super::ClientAssertion) converts into one.
    ///
    /// A discovered endpoint whose client authenticates with its certificate
    /// ([`TokenEndpointAuth::TlsClientAuth`],
    /// [`TokenEndpointAuth::SelfSignedTlsClientAuth`]) moves to the provider's mTLS
    /// alias of the token endpoint (RFC 8705 §5), when the metadata names one.
    pub fn auth_method(mut self, auth: impl Into<TokenEndpointAuth>) -> Self {
        self.auth = auth.into();
        self.follow_mtls_alias()
    }

    /// The client presents a TLS certificate (its [`HttpClient`] has one, feature
    /// `mtls`) to get certificate-bound tokens (RFC 8705 §3), whatever its
    /// authentication method (`private_key_jwt` with certificate-bound tokens, as
    /// FAPI 2.0 allows). A discovered endpoint then uses the provider's mTLS endpoint
    /// aliases (RFC 8705 §5) for the token endpoint and the endpoints made from it
    /// (revocation, pushed authorization requests, device authorization), as it
    /// does for a client authenticating with its certificate.
    pub fn certificate_bound_tokens(mut self) -> Self {
        self.certificate_bound = true;
        self.follow_mtls_alias()
    }

    /// Whether the client presents a TLS certificate to this provider: it
    /// authenticates with it, or asks for certificate-bound tokens.
    pub(crate) fn uses_mtls(&self) -> bool {
        self.certificate_bound || self.auth.is_tls()
    }

    /// Whether the HTTP client presents a TLS client certificate (`None`: not known,
    /// a service of the caller's).
    pub(crate) fn presents_certificate(&self) -> Option<bool> {
        self.http.presents_certificate()
    }

    /// The mTLS alias (RFC 8705 §5) the discovered metadata names for one endpoint,
    /// when this client presents a certificate.
    pub(crate) fn mtls_alias(
        &self,
        field: impl Fn(&super::discovery::MtlsEndpointAliases) -> &Option<String>,
    ) -> Option<String> {
        if !self.uses_mtls() {
            return None;
        }
        self.metadata
            .as_deref()
            .and_then(|m| m.mtls_endpoint_aliases.as_ref())
            .and_then(|a| field(a).clone())
    }

    /// The token endpoint moved to its mTLS alias, when there is one to use (a URL
    /// the metadata checks already passed).
    fn follow_mtls_alias(mut self) -> Self {
        if self.kind != Endpoint::Token {
            return self;
        }
        if let Some(url) = self
            .mtls_alias(|a| &a.token_endpoint)
            .and_then(|u| parse_url(&u).ok())
        {
            self.url = url;
        }
        self
    }

    /// How the client authenticates.
    pub(crate) fn auth(&self) -> &TokenEndpointAuth {
        &self.auth
    }

    /// The key of DPoP-bound tokens, when they are asked for.
    #[cfg(feature = "dpop")]
    pub(crate) fn dpop_key(&self) -> Option<&super::dpop::DpopKey> {
        self.dpop.as_ref()
    }

    /// Whether a request's form carries `client_id` for the client authentication
    /// (every method but `client_secret_basic`, which sends it in a header).
    pub(crate) fn form_carries_client_id(&self) -> bool {
        let basic = matches!(self.auth, TokenEndpointAuth::Basic) && self.client_secret.is_some();
        self.client_id.is_some() && !basic
    }

    /// An extra form parameter sent with every request (`audience`, `resource`, …).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// The HTTP client to use (timeout, body cap, a custom tower service).
    pub fn http_client(mut self, http: HttpClient) -> Self {
        self.http = http;
        self
    }

    /// Asks for DPoP-bound tokens (RFC 9449): every request carries a `DPoP` proof
    /// signed by `key` (a `use_dpop_nonce` answer is retried once with the
    /// server's nonce, which is remembered), and only an answer with `token_type`
    /// `DPoP` is accepted. Send the tokens with [`Dpop`](super::Dpop) and the same
    /// key.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn dpop(mut self, key: super::dpop::DpopKey) -> Self {
        self.dpop = Some(key);
        self
    }

    /// Whether requests authenticate the client (RFC 6749 §2.3): a secret sent with
    /// `client_secret_basic` or `client_secret_post`, an assertion, or a TLS client
    /// certificate. A public client (no secret, or [`TokenEndpointAuth::None`]) does
    /// not.
    pub(crate) fn authenticates_client(&self) -> bool {
        match &self.auth {
            TokenEndpointAuth::Basic | TokenEndpointAuth::Post => self.client_secret.is_some(),
            TokenEndpointAuth::None => false,
            #[cfg(feature = "jwt")]
            TokenEndpointAuth::Assertion(_) => true,
            TokenEndpointAuth::TlsClientAuth | TokenEndpointAuth::SelfSignedTlsClientAuth => true,
        }
    }

    /// Whether DPoP-bound tokens are asked for.
    fn wants_dpop(&self) -> bool {
        #[cfg(feature = "dpop")]
        return self.dpop.is_some();
        #[cfg(not(feature = "dpop"))]
        false
    }

    /// The same client registration at another endpoint of the same provider (the
    /// device authorization endpoint). `http://` to a remote host is accepted only
    /// when this endpoint was made with [`TokenEndpoint::insecure_http`] for one.
    pub(crate) fn with_url(&self, url: &str, kind: Endpoint) -> Result<Self, Error> {
        let url = parse_url(url)?;
        // This endpoint fails the strict check only if it was built with insecure_http.
        let opted_in = check_url(&self.url, false).is_err();
        check_url(&url, opted_in)?;
        Ok(TokenEndpoint {
            url,
            kind,
            ..self.clone()
        })
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// The provider metadata this endpoint was [discovered](Self::discover) from.
    pub fn metadata(&self) -> Option<&ProviderMetadata> {
        self.metadata.as_deref()
    }

    pub(crate) fn with_metadata(mut self, metadata: Arc<ProviderMetadata>) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// A builder of the [`IdTokenValidator`](super::IdTokenValidator) of this
    /// client's ID tokens: the discovered provider's issuer and keys, this client
    /// ID, this endpoint's HTTP client, and the client secret (which checks HMAC
    /// ID tokens, when the validator is told to allow them).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the endpoint was not
    /// [discovered](Self::discover), has no client ID, or the provider publishes no
    /// `jwks_uri`.
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn id_token_validator(&self) -> Result<super::IdTokenValidatorBuilder, Error> {
        let metadata = self.metadata().ok_or_else(|| {
            Error::Configuration(
                "ID tokens are validated with the provider's metadata: discover the endpoint \
                 (TokenEndpoint::discover) or use IdTokenValidator::builder"
                    .into(),
            )
        })?;
        let client_id = self.client_id.as_deref().ok_or_else(|| {
            Error::Configuration("ID tokens are validated for a client ID: none is set".into())
        })?;
        let mut builder =
            super::IdTokenValidator::builder(metadata, client_id)?.http_client(self.http.clone());
        if let Some(secret) = &self.client_secret {
            builder = builder.client_secret(secret.expose_secret().as_bytes());
        }
        Ok(builder)
    }

    /// The same endpoint without the extra form parameters (for revocation).
    pub(crate) fn without_params(mut self) -> Self {
        self.params.clear();
        self
    }

    /// The refresh-token grant (RFC 6749 §6), starting from `refresh_token`.
    pub fn refresh_token(&self, refresh_token: impl Into<String>) -> RefreshTokenGrant {
        RefreshTokenGrant::new(self.clone(), refresh_token.into())
    }

    /// The client-credentials grant (RFC 6749 §4.4).
    pub fn client_credentials(&self) -> ClientCredentials {
        ClientCredentials::new(self.clone())
    }

    /// The resource-owner password grant (RFC 6749 §4.3): the form fields
    /// `username` and `password`. Later refreshes use the refresh token when the
    /// endpoint issues one.
    pub fn password(
        &self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> PasswordGrant {
        PasswordGrant::new(self.clone(), username.into(), password.into())
    }

    /// Token exchange (RFC 8693) of `subject`.
    pub fn token_exchange(&self, subject: ExchangeToken) -> TokenExchange {
        TokenExchange::new(self.clone(), subject)
    }

    /// Posts a grant's form fields to the endpoint (with the client authentication
    /// and the extra parameters) and parses the answer into a [`Token`].
    ///
    /// This is the building block of every grant; use it for one this crate lacks.
    ///
    /// # Errors
    /// [`Error::InvalidGrant`] for `invalid_grant`; [`Error::TokenEndpoint`] for other
    /// error answers; [`Error::InvalidResponse`] for an answer that is not a bearer
    /// token; [`Error::Transport`] and [`Error::Timeout`] from the HTTP client.
    pub async fn request(&self, form: &[(&str, &str)]) -> Result<Token, Error> {
        let res = self.post(form).await?;
        self.parse(&res, form)
    }

    /// Parses an answer of this endpoint: a bearer token, or a DPoP-bound one when
    /// [`dpop`](Self::dpop) asked for it.
    /// `form` is what was sent: a secret of it that the answer echoes is redacted.
    pub(crate) fn parse(
        &self,
        res: &http::Response<Bytes>,
        form: &[(&str, &str)],
    ) -> Result<Token, Error> {
        parse_token_answer(res.status(), res.headers(), res.body(), self.wants_dpop())
            .map_err(|e| self.locate(e, form))
    }

    /// Like [`request`](Self::request), for a grant whose answer may be a token that
    /// is not an access token (RFC 8693 §2.2.1: an ID-JAG, a SAML assertion): its
    /// `token_type` may be `N_A` as well as the endpoint's own type.
    pub(crate) async fn request_issued(&self, form: &[(&str, &str)]) -> Result<Token, Error> {
        let res = self.post(form).await?;
        parse_token_answer_as(
            res.status(),
            res.headers(),
            res.body(),
            self.wants_dpop(),
            true,
        )
        .map_err(|e| self.locate(e, form))
    }

    /// `err` with this endpoint's URL (no query, no user information) in it, and
    /// without any secret of `form` (what was sent) or of the client that the
    /// provider echoed in its `error_description` or `error_uri`.
    pub(crate) fn locate(&self, err: Error, form: &[(&str, &str)]) -> Error {
        let url = crate::error::display_url(&self.url);
        let mut secrets: Vec<String> = form
            .iter()
            .filter(|(k, _)| SECRET_FIELDS.contains(k))
            .map(|(_, v)| (*v).to_owned())
            .collect();
        if let Some(secret) = &self.client_secret {
            secrets.push(secret.expose_secret().to_owned());
        }
        // As sent, and form-encoded (an echo of the request body).
        let encoded: Vec<String> = secrets.iter().map(|s| form_encode(s)).collect();
        secrets.extend(encoded);
        // The `Authorization: Basic` value, which a provider may quote as it got it.
        if let (Some(id), Some(secret)) = (&self.client_id, &self.client_secret) {
            let credentials = format!(
                "{}:{}",
                form_encode(id),
                form_encode(secret.expose_secret())
            );
            secrets.push(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                credentials,
            ));
        }
        let secrets = zeroize::Zeroizing::new(secrets);
        let clean = |e: &mut EndpointError| {
            e.url.get_or_insert(url.clone());
            let texts = [&mut e.code, &mut e.description, &mut e.uri];
            for text in texts.into_iter().flatten() {
                *text = redact(text, secrets.as_slice());
            }
        };
        match err {
            Error::TokenEndpoint(mut e) => {
                clean(&mut e);
                Error::TokenEndpoint(e)
            }
            Error::InvalidGrant(mut e) => {
                clean(&mut e);
                Error::InvalidGrant(e)
            }
            Error::AccessDenied(mut e) => {
                clean(&mut e);
                Error::AccessDenied(e)
            }
            Error::InvalidResponse(_, why) => {
                Error::InvalidResponse(self.kind, format!("{why} (from {url})"))
            }
            other => other,
        }
    }

    /// Posts form fields with client authentication; returns the raw answer. With a
    /// DPoP key, the request carries a proof, and a `use_dpop_nonce` answer is
    /// retried once with the nonce it gives.
    pub(crate) async fn post(&self, form: &[(&str, &str)]) -> Result<http::Response<Bytes>, Error> {
        #[cfg(feature = "dpop")]
        if let Some(key) = &self.dpop {
            let res = self.post_once(form).await?;
            key.remember_from(&self.url, res.headers());
            if !use_dpop_nonce(&res) {
                return Ok(res);
            }
            tracing::debug!(endpoint = %self.kind, "use_dpop_nonce: retrying once with the server's nonce");
            let res = self.post_once(form).await?;
            key.remember_from(&self.url, res.headers());
            return Ok(res);
        }
        self.post_once(form).await
    }

    async fn post_once(&self, form: &[(&str, &str)]) -> Result<http::Response<Bytes>, Error> {
        let mut fields: Vec<(&str, &str)> = form.to_vec();
        fields.extend(self.params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        // RFC 8707 §2, for every grant, refresh and device request alike.
        check_resources(fields.iter().filter(|(k, _)| *k == "resource").map(|f| f.1))?;
        let secret = self.client_secret.as_ref().map(|s| s.expose_secret());
        let mut basic = None;
        #[cfg(feature = "jwt")]
        let assertion;
        match (&self.auth, &self.client_id, secret) {
            (TokenEndpointAuth::Basic, Some(id), Some(secret)) => {
                // RFC 6749 §2.3.1: form-encode both before Basic encoding.
                basic = Some(basic_header(&form_encode(id), &form_encode(secret)));
            }
            (TokenEndpointAuth::Post, Some(id), secret) => {
                fields.push(("client_id", id));
                if let Some(secret) = secret {
                    fields.push(("client_secret", secret));
                }
            }
            #[cfg(feature = "jwt")]
            (TokenEndpointAuth::Assertion(a), Some(id), secret) => {
                let issuer = self.metadata.as_deref().map(|m| m.issuer.as_str());
                assertion = a
                    .make(id, &self.token_url.to_string(), issuer, secret)
                    .await?;
                fields.push(("client_id", id));
                fields.push(("client_assertion_type", CLIENT_ASSERTION_TYPE));
                fields.push(("client_assertion", &assertion));
            }
            // RFC 8705 §2: the certificate authenticates; a secret is never sent.
            (auth, Some(id), _) if auth.is_tls() => fields.push(("client_id", id)),
            (auth, None, _) if auth.is_tls() => {
                return Err(Error::Configuration(
                    "tls_client_auth needs a client id".into(),
                ))
            }
            #[cfg(feature = "jwt")]
            (TokenEndpointAuth::Assertion(a), None, _) => {
                return Err(Error::Configuration(format!(
                    "{} needs a client id",
                    a.method()
                )))
            }
            (_, Some(id), _) => fields.push(("client_id", id)),
            (_, None, Some(_)) => {
                return Err(Error::Configuration(
                    "a client secret is set but no client id".into(),
                ))
            }
            (_, None, None) => {}
        }
        let body = serde_urlencoded::to_string(&fields)
            .map_err(|e| Error::Configuration(format!("cannot encode the token request: {e}")))?;
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.url.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Configuration(format!("cannot build the token request: {e}")))?;
        if let Some(basic) = basic {
            req.headers_mut().insert(AUTHORIZATION, basic);
        }
        #[cfg(feature = "dpop")]
        if let Some(key) = &self.dpop {
            let proof = key.proof_async(&Method::POST, &self.url, None).await?;
            req.headers_mut().insert(super::authorizer::DPOP, proof);
        }
        let res = self.http.send(self.kind, req).await?;
        tracing::debug!(status = res.status().as_u16(), url = %crate::error::display_url(&self.url), endpoint = %self.kind, "answered");
        Ok(res)
    }
}

// The token-answer parser for the fuzz harness (`crate::__parsers`): an associated
// function, because this module is private to `client`.
impl TokenEndpoint {
    pub(crate) fn parse_response(
        status: StatusCode,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Result<Token, Error> {
        parse_token_response(status, headers, body)
    }
}

/// Whether an answer asks for a DPoP proof with the server's nonce (RFC 9449 §8):
/// `use_dpop_nonce` and a `DPoP-Nonce` header.
#[cfg(feature = "dpop")]
fn use_dpop_nonce(res: &http::Response<Bytes>) -> bool {
    res.status().is_client_error()
        && res.headers().contains_key(super::layer::DPOP_NONCE)
        && serde_json::from_slice::<ErrorAnswer>(res.body())
            .is_ok_and(|a| a.error.as_deref() == Some("use_dpop_nonce"))
}

impl fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("auth", &self.auth)
            .field("dpop", &self.wants_dpop())
            .field(
                "params",
                &self.params.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The form fields that carry a secret: never shown if an answer echoes them.
const SECRET_FIELDS: &[&str] = &[
    "refresh_token",
    "code",
    "code_verifier",
    "password",
    "client_secret",
    "client_assertion",
    "assertion",
    "device_code",
    "token",
    "subject_token",
    "actor_token",
];

/// `text` with every occurrence of a secret replaced (empty secrets are skipped). A
/// text cut short (ending in `…`) may end in the first part of a secret: that part
/// is replaced too.
fn redact(text: &str, secrets: &[String]) -> String {
    let mut text = redact_jwts(text);
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        if text.contains(secret) {
            text = text.replace(secret, "[redacted]");
        }
        if let Some(body) = text.strip_suffix('…') {
            let cut = (1..secret.len())
                .rev()
                .filter(|&k| secret.is_char_boundary(k))
                .find(|&k| body.ends_with(&secret[..k]));
            if let Some(k) = cut {
                text = format!("{}[redacted]…", &body[..body.len() - k]);
            }
        }
    }
    text
}

/// `text` with every JWT-shaped word (three base64url parts, the first two of 10
/// characters or more) replaced: a provider echoing a client assertion, a subject
/// token or a request object it got (made inside the request, so not among the
/// secrets the caller knows) never has it repeated.
fn redact_jwts(text: &str) -> String {
    let b64 = |part: &str| {
        part.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let is_jwt = |word: &str| {
        let mut parts = word.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(h), Some(p), Some(s), None) => {
                h.len() >= 10 && p.len() >= 10 && b64(h) && b64(p) && b64(s)
            }
            _ => false,
        }
    };
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if is_jwt(word) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// Checks resource indicators (RFC 8707 §2): each "MUST be an absolute URI, as
/// specified by Section 4.3 of RFC 3986, which MAY include a query component, but
/// MUST NOT include a fragment component": a scheme (a letter, then letters, digits,
/// `+`, `-`, `.`), a `:`, something after it, no `#`, and no space or control
/// character. URNs pass.
pub(crate) fn check_resources<'a>(
    resources: impl IntoIterator<Item = &'a str>,
) -> Result<(), Error> {
    for resource in resources {
        let absolute = resource.split_once(':').is_some_and(|(scheme, rest)| {
            let mut bytes = scheme.bytes();
            bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
                && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                && !rest.is_empty()
        });
        let clean = !resource
            .bytes()
            .any(|b| b == b'#' || b <= b' ' || b == 0x7f);
        if !(absolute && clean) {
            return Err(Error::Configuration(format!(
                "resource indicator {resource:?} is not an absolute URI without a fragment (RFC 8707 §2)"
            )));
        }
    }
    Ok(())
}

/// application/x-www-form-urlencoded of one value.
fn form_encode(s: &str) -> String {
    let encoded = serde_urlencoded::to_string([("", s)]).unwrap_or_default();
    encoded.trim_start_matches('=').to_owned()
}

/// The fields of a token endpoint answer, successful or not.
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
    /// OpenID Connect (OIDC Core §3.1.3.3).
    id_token: Option<String>,
    #[serde(flatten)]
    error: ErrorAnswer,
}

/// An RFC 6749 §5.2 error object.
#[derive(Deserialize)]
pub(crate) struct ErrorAnswer {
    pub(crate) error: Option<String>,
    pub(crate) error_description: Option<String>,
    pub(crate) error_uri: Option<String>,
}

const MAX_DESCRIPTION: usize = 256;

/// `Retry-After` (RFC 9110 §10.2.3): seconds, or an HTTP-date (a date in the past
/// is zero). Anything else is ignored.
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Turns an error answer into a typed error (`invalid_grant` gets its own variant).
pub(crate) fn endpoint_error(
    status: StatusCode,
    headers: &HeaderMap,
    answer: Option<ErrorAnswer>,
) -> Error {
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut err = EndpointError::status(status);
    err.retry_after = retry_after;
    if answer.is_none() {
        err.not_oauth = Some(crate::error::media_type(headers));
    }
    if let Some(answer) = answer {
        err.code = answer.error.map(|c| truncate(c, 64));
        err.description = answer
            .error_description
            .map(|d| truncate(d, MAX_DESCRIPTION));
        err.uri = answer.error_uri.map(|u| truncate(u, MAX_DESCRIPTION));
    }
    if err.code.as_deref() == Some("invalid_grant") {
        Error::InvalidGrant(Box::new(err))
    } else {
        Error::TokenEndpoint(Box::new(err))
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Parses a token endpoint answer into a bearer [`Token`] or a typed error.
pub(crate) fn parse_token_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Token, Error> {
    parse_token_answer(status, headers, body, false)
}

/// Parses a token endpoint answer into a [`Token`] or a typed error: a bearer
/// token, or with `dpop` a DPoP-bound one. Either refuses the other kind: a bearer
/// client cannot use a DPoP-bound token, and a DPoP client that gets a bearer token
/// would send it unprotected.
pub(crate) fn parse_token_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    dpop: bool,
) -> Result<Token, Error> {
    parse_token_answer_as(status, headers, body, dpop, false)
}

/// As [`parse_token_answer`]; with `not_applicable`, `token_type` `N_A` (RFC 8693
/// §2.2.1, a token that is not an access token) is accepted too.
fn parse_token_answer_as(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
    dpop: bool,
    not_applicable: bool,
) -> Result<Token, Error> {
    let answer: Option<TokenAnswer> = serde_json::from_slice(body).ok();
    let answer = match answer {
        Some(a) if a.error.error.is_some() && a.access_token.is_none() => {
            return Err(endpoint_error(status, headers, Some(a.error)))
        }
        Some(a) if status.is_success() => a,
        _ if !status.is_success() => return Err(endpoint_error(status, headers, None)),
        Some(_) => unreachable!("a success was matched above"),
        None => {
            return Err(Error::InvalidResponse(
                Endpoint::Token,
                format!(
                    "HTTP {} with a body that is not a JSON object (content-type {})",
                    status.as_u16(),
                    crate::error::media_type(headers)
                ),
            ))
        }
    };
    let access = answer.access_token.ok_or_else(|| {
        Error::InvalidResponse(Endpoint::Token, "no access_token in the answer".into())
    })?;
    let token_type = answer.token_type.ok_or_else(|| {
        Error::InvalidResponse(Endpoint::Token, "no token_type in the answer".into())
    })?;
    let expected = if dpop { "DPoP" } else { "bearer" };
    let accepted =
        token_type.eq_ignore_ascii_case(expected) || (not_applicable && token_type == "N_A");
    if !accepted {
        return Err(Error::InvalidResponse(
            Endpoint::Token,
            format!(
                "token_type {:?} is not {expected}",
                truncate(token_type, 32)
            ),
        ));
    }
    let mut token = Token::bearer(access).map_err(|_| {
        Error::InvalidResponse(
            Endpoint::Token,
            "access_token is empty or not a valid header value".into(),
        )
    })?;
    token.set_token_type(token_type);
    if let Some(lifetime) = answer.expires_in {
        token = token.with_expires_in(parse_expires_in(&lifetime)?);
    }
    if let Some(refresh) = answer.refresh_token.filter(|r| !r.is_empty()) {
        token = token.with_refresh_token(refresh);
    }
    if let Some(scope) = answer.scope {
        token = token.with_scope(scope);
    }
    if let Some(id_token) = answer.id_token.filter(|t| !t.is_empty()) {
        token = token.with_id_token(id_token);
    }
    Ok(token)
}

/// `expires_in` is a number of seconds (RFC 6749 §5.1); some providers send it as a
/// string of digits, which is accepted. Zero, negative or non-numeric values are not.
fn parse_expires_in(value: &serde_json::Value) -> Result<Duration, Error> {
    let secs = match value {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() && s >= 1.0 => {
            Ok(Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX))
        }
        Some(s) if s.is_infinite() && s > 0.0 => Ok(Duration::MAX),
        _ => Err(Error::InvalidResponse(
            Endpoint::Token,
            "expires_in must be a positive number of seconds".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn parse(status: u16, body: &str) -> Result<Token, Error> {
        parse_token_response(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            &Bytes::from(body.to_owned()),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn parses_a_bearer_token() {
        let t = parse(
            200,
            r#"{"access_token":"a1","token_type":"BEARER","expires_in":3600,"refresh_token":"r1","scope":"x y"}"#,
        )
        .unwrap();
        assert_eq!(t.access_token().expose_secret(), "a1");
        assert_eq!(t.refresh_token().unwrap().expose_secret(), "r1");
        assert_eq!(t.expires_in(), Some(Duration::from_secs(3600)));
        assert_eq!(t.scope(), Some("x y"));
        assert_eq!(t.expose_id_token(), None);
        let t = parse(
            200,
            r#"{"access_token":"a1","token_type":"bearer","id_token":"h.p.s"}"#,
        )
        .unwrap();
        assert_eq!(t.expose_id_token(), Some("h.p.s"));
        assert_eq!(t.authorization(), "Bearer a1", "the ID token is never sent");
        let t = parse(
            200,
            r#"{"access_token":"a1","token_type":"bearer","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in(), Some(Duration::from_secs(60)));
        let t = parse(200, r#"{"access_token":"a1","token_type":"bearer"}"#).unwrap();
        assert_eq!(t.expires_at(), None);
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        let cases = [
            (200, "not json"),
            (200, r#"{"token_type":"bearer"}"#),
            (200, r#"{"access_token":"a","token_type":"mac"}"#),
            (200, r#"{"access_token":"a"}"#),
            (200, r#"{"access_token":"","token_type":"bearer"}"#),
            (200, r#"{"access_token":"a\nb","token_type":"bearer"}"#),
            (
                200,
                r#"{"access_token":"a","token_type":"bearer","expires_in":0}"#,
            ),
            (
                200,
                r#"{"access_token":"a","token_type":"bearer","expires_in":-5}"#,
            ),
            (
                200,
                r#"{"access_token":"a","token_type":"bearer","expires_in":"soon"}"#,
            ),
            (200, r#"[1,2,3]"#),
        ];
        for (status, body) in cases {
            assert!(
                matches!(
                    parse(status, body),
                    Err(Error::InvalidResponse(Endpoint::Token, _))
                ),
                "{body}"
            );
        }
    }

    #[test]
    fn error_answers_are_typed() {
        let e = parse(
            400,
            r#"{"error":"invalid_grant","error_description":"refresh token used"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, Error::InvalidGrant(d) if d.description.as_deref() == Some("refresh token used"))
        );
        let e = parse(401, r#"{"error":"invalid_client"}"#).unwrap_err();
        assert_eq!(e.oauth_code(), Some("invalid_client"));
        let e = parse(502, "<html>bad gateway</html>").unwrap_err();
        assert!(
            matches!(&e, Error::TokenEndpoint(d) if d.status == StatusCode::BAD_GATEWAY && d.code.is_none())
        );
        assert!(e.is_retryable());
        // Some providers answer 200 with an error object (device flow polling).
        let e = parse(200, r#"{"error":"authorization_pending"}"#).unwrap_err();
        assert_eq!(e.oauth_code(), Some("authorization_pending"));
    }

    #[test]
    fn huge_expiry_means_no_expiry_not_a_panic() {
        let t = parse(
            200,
            r#"{"access_token":"a","token_type":"bearer","expires_in":1e300}"#,
        )
        .unwrap();
        assert!(t.expires_at().is_none() || !t.is_expired());
    }

    #[test]
    fn a_jwt_echoed_in_a_description_is_redacted() {
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJjbGkiLCJqdGkiOiIxIn0.c2lnbmF0dXJl";
        let text = format!("client_assertion \"{jwt}\" was already used; see a.b.c or v1.2.3");
        let clean = redact(&text, &[]);
        assert!(!clean.contains("c2lnbmF0dXJl"), "{clean}");
        assert!(!clean.contains("eyJpc3Mi"), "{clean}");
        assert_eq!(
            clean,
            "client_assertion \"[redacted]\" was already used; see a.b.c or v1.2.3"
        );
        // Cut short after the payload: header.payload stays (no signature, no credential).
        assert_eq!(
            redact("x eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJjbGki", &[]),
            "x eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJjbGki"
        );
    }

    #[test]
    fn secret_is_redacted_and_form_encoded() {
        let e = TokenEndpoint::new("https://idp.example.com/token")
            .unwrap()
            .client_id("id")
            .client_secret("p@ss word");
        assert!(!format!("{e:?}").contains("p@ss"));
        assert_eq!(form_encode("p@ss word&x"), "p%40ss+word%26x");
    }
}
