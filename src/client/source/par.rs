//! The authorization request of the browser login ([`AuthorizationCode`]) made
//! harder to tamper with: pushed authorization requests (RFC 9126), signed request
//! objects (RFC 9101, JAR), `dpop_jkt` (RFC 9449 §10), and the FAPI 2.0 Security
//! Profile preset ([`AuthorizationCode::fapi2`]) that turns them on and refuses what
//! the profile forbids.
//!
//! The parameters the login builds (`response_type`, `redirect_uri`, `state`, the
//! PKCE challenge, `scope`, …) go to the provider one of three ways:
//! - in the authorization URL (the plain login);
//! - signed into one request object, sent as `request` next to `client_id`
//!   (JAR without PAR);
//! - pushed, plain or as a request object, to the provider's pushed authorization
//!   request endpoint with the client authentication of the token endpoint (and a
//!   DPoP proof when the tokens are DPoP-bound); the browser is then sent with only
//!   `client_id` and the `request_uri` the provider answered.

use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use super::browser::AuthorizationCode;
use crate::client::endpoint::{endpoint_error, ErrorAnswer};
use crate::client::{TokenEndpoint, TokenEndpointAuth};
use crate::{Endpoint, Error};

/// The longest lifetime of a request object under FAPI 2.0 (the Message Signing
/// profile's limit on `exp` after `nbf`, which the Security Profile's signed
/// requests follow): 60 minutes.
pub const FAPI2_MAX_REQUEST_OBJECT_LIFETIME: Duration = Duration::from_secs(3600);

/// How long a request object is valid by default: the login's first step only
/// (the provider reads it when the request is pushed, or when the browser arrives).
pub const DEFAULT_REQUEST_OBJECT_LIFETIME: Duration = Duration::from_secs(300);

/// The `typ` of a request object (RFC 9101 §10.8).
#[cfg(feature = "jwt")]
const REQUEST_OBJECT_TYP: &str = "oauth-authz-req+jwt";

/// The longest `request_uri` accepted from a provider (RFC 9126 leaves it open; a
/// URN with a random part is tens of characters).
const MAX_REQUEST_URI: usize = 2048;

/// What signs the request objects.
#[cfg(feature = "jwt")]
#[derive(Clone, Debug)]
pub(super) enum RequestSigner {
    /// The key of the token endpoint's `private_key_jwt` client authentication.
    ClientAssertionKey,
    /// A key of its own.
    Key(crate::client::AssertionKey),
}

/// How the login's authorization request is sent: the part of [`AuthorizationCode`]
/// this module keeps.
#[derive(Clone, Debug)]
pub(super) struct RequestOptions {
    /// Push the request (RFC 9126) even when the metadata does not demand it.
    push: bool,
    /// Sign the request into a request object (RFC 9101).
    #[cfg(feature = "jwt")]
    signer: Option<RequestSigner>,
    /// The lifetime of each request object.
    lifetime: Duration,
    /// The FAPI 2.0 Security Profile is on ([`AuthorizationCode::fapi2`]).
    fapi2: bool,
}

impl Default for RequestOptions {
    fn default() -> Self {
        RequestOptions {
            push: false,
            #[cfg(feature = "jwt")]
            signer: None,
            lifetime: DEFAULT_REQUEST_OBJECT_LIFETIME,
            fapi2: false,
        }
    }
}

impl AuthorizationCode {
    /// Pushes every authorization request to the provider's pushed authorization
    /// request endpoint (RFC 9126) first, with the client authentication of the
    /// token endpoint, and sends the browser with only `client_id` and the
    /// `request_uri` the provider answered: the parameters never travel through the
    /// browser. Done without asking when the provider's metadata says
    /// `require_pushed_authorization_requests`, and under [`fapi2`](Self::fapi2).
    ///
    /// The login then fails with [`Error::Configuration`] when the provider names
    /// no `pushed_authorization_request_endpoint` (the endpoint must be
    /// [discovered](TokenEndpoint::discover)), or when a `request` or `request_uri`
    /// parameter was added with [`param`](Self::param) (RFC 9126 §2.1; the same for
    /// a signed request object, RFC 9101 §4).
    pub fn pushed_authorization_requests(mut self) -> Self {
        self.request.push = true;
        self
    }

    /// Signs every authorization request into a request object (RFC 9101, JAR),
    /// with the key of the token endpoint's `private_key_jwt` client authentication
    /// ([`ClientAssertion::private_key`](crate::client::ClientAssertion::private_key)):
    /// `typ` `oauth-authz-req+jwt`, `iss` the client id, `aud` the issuer, `exp`
    /// after [`request_object_lifetime`](Self::request_object_lifetime), `nbf`,
    /// `iat` and a fresh `jti`, and every parameter of the request. Pushed with
    /// [`pushed_authorization_requests`](Self::pushed_authorization_requests), or
    /// sent in the authorization URL as `request`. Done without asking when the
    /// provider's metadata says `require_signed_request_object`.
    ///
    /// A login without such a key (another client authentication) fails with
    /// [`Error::Configuration`]; give one with
    /// [`request_object_key`](Self::request_object_key).
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn signed_request_object(mut self) -> Self {
        if self.request.signer.is_none() {
            self.request.signer = Some(RequestSigner::ClientAssertionKey);
        }
        self
    }

    /// Signs every authorization request into a request object (as
    /// [`signed_request_object`](Self::signed_request_object)) with this key: a
    /// client authenticating with its certificate (mTLS) and a key registered for
    /// its request objects.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn request_object_key(mut self, key: crate::client::AssertionKey) -> Self {
        self.request.signer = Some(RequestSigner::Key(key));
        self
    }

    /// How long each request object is valid (default
    /// [`DEFAULT_REQUEST_OBJECT_LIFETIME`], 5 minutes). Under
    /// [`fapi2`](Self::fapi2), longer than
    /// [`FAPI2_MAX_REQUEST_OBJECT_LIFETIME`] (60 minutes) is refused.
    pub fn request_object_lifetime(mut self, lifetime: Duration) -> Self {
        self.request.lifetime = lifetime;
        self
    }

    /// The FAPI 2.0 Security Profile (OpenID FAPI 2.0 Security Profile, Final,
    /// February 2025), client side, in one call:
    /// - the authorization request is pushed (RFC 9126; profile §5.3, "shall use
    ///   pushed authorization requests");
    /// - PKCE with `S256` (§5.3, always the case here);
    /// - the redirect must carry `iss`, the discovered issuer (RFC 9207; §5.3), even
    ///   when the metadata does not promise it;
    /// - `response_type` `code` only (§5.3, always the case here);
    /// - `dpop_jkt` on the request when the tokens are DPoP-bound (RFC 9449 §10).
    ///
    /// Refused with [`Error::Configuration`] naming the rule, now and again when the
    /// login starts (so that a setting changed after this call is caught too):
    /// - a token endpoint that was not [discovered](TokenEndpoint::discover) (the
    ///   issuer is what `iss` and the request object's `aud` are checked against),
    ///   or an authorization endpoint other than the one its metadata names (given
    ///   to [`AuthorizationCode::new`] by hand);
    /// - client authentication other than `private_key_jwt` or mTLS
    ///   (`tls_client_auth`, `self_signed_tls_client_auth`) (§5.3);
    /// - `private_key_jwt` assertions whose `aud` is not the issuer alone
    ///   ([`ClientAssertion::audience_issuer`](crate::client::ClientAssertion::audience_issuer)),
    ///   the defence against audience injection (§5.3);
    /// - a signing algorithm other than `PS256`, `ES256` or `EdDSA` for the client
    ///   assertions, the request objects or the DPoP proofs (§5.4);
    /// - tokens that are not sender-constrained: neither a DPoP key
    ///   ([`TokenEndpoint::dpop`]) nor mTLS (a certificate authenticating the
    ///   client, or [`TokenEndpoint::certificate_bound_tokens`]) (§5.3);
    /// - mTLS asked for with an [`HttpClient`](crate::HttpClient) that presents no
    ///   client certificate ([`HttpClient::new`](crate::HttpClient::new), or the
    ///   builder without one; a client made with
    ///   [`HttpClient::from_service`](crate::HttpClient::from_service) is taken on
    ///   trust);
    /// - a provider that names no pushed authorization request endpoint, or whose
    ///   metadata lists PKCE methods without `S256`;
    /// - a `response_type` other than `code`, or a `code_challenge_method` other
    ///   than `S256`, given with [`param`](Self::param);
    /// - a request object lifetime over 60 minutes
    ///   ([`FAPI2_MAX_REQUEST_OBJECT_LIFETIME`]).
    ///
    /// Request objects are not required by the Security Profile (the Message
    /// Signing profile asks for them): add
    /// [`signed_request_object`](Self::signed_request_object) to sign them.
    ///
    /// ```no_run
    /// # #[cfg(all(feature = "jwt", feature = "dpop"))]
    /// # async fn run(pem: &[u8]) -> Result<(), tower_bearer::Error> {
    /// use tower_bearer::client::{Algorithm, AssertionKey, ClientAssertion, DpopKey, Refreshing, TokenEndpoint};
    /// let key = AssertionKey::from_pem(Algorithm::PS256, pem)?.key_id("cli-2026");
    /// let dpop = DpopKey::generate()?;
    /// let login = TokenEndpoint::discover("https://bank.example")
    ///     .await?
    ///     .client_id("my-cli")
    ///     .auth_method(ClientAssertion::private_key(key).audience_issuer())
    ///     .dpop(dpop.clone())
    ///     .authorization_code()?
    ///     .scope("openid accounts")
    ///     .signed_request_object() // JAR, with the same key
    ///     .fapi2()?; // pushed, iss required, S256; refuses what the profile forbids
    /// let tokens = Refreshing::new(login); // send them with Dpop::new(dpop, tokens)
    /// # let _ = tokens; Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Configuration`], naming the rule broken.
    pub fn fapi2(mut self) -> Result<Self, Error> {
        self.request.fapi2 = true;
        self.request.push = true;
        self.iss_required = true;
        self.check_fapi2()?;
        Ok(self)
    }

    /// The refusals of [`fapi2`](Self::fapi2).
    fn check_fapi2(&self) -> Result<(), Error> {
        let refuse = |rule: &str| Err(Error::Configuration(format!("FAPI 2.0: {rule}")));
        let Some(metadata) = self.token.metadata() else {
            return refuse(
                "the token endpoint must be discovered (TokenEndpoint::discover): the issuer \
                 checks the redirect's iss (RFC 9207) and is the request object's audience",
            );
        };
        if metadata.authorization_endpoint.as_deref() != Some(self.authorize.as_str()) {
            return refuse(
                "the authorization endpoint must be the one the provider's metadata names \
                 (authorization_endpoint; Security Profile §5.3.3.1: metadata only from the \
                 provider's document): use TokenEndpoint::authorization_code",
            );
        }
        match self.token.auth() {
            TokenEndpointAuth::TlsClientAuth | TokenEndpointAuth::SelfSignedTlsClientAuth => {}
            #[cfg(feature = "jwt")]
            TokenEndpointAuth::Assertion(a) if a.key().is_some() => {
                check_alg("the client assertions", a.algorithm())?;
                if !a.audience_is(&metadata.issuer) {
                    return refuse(
                        "the client assertion's aud must be the issuer alone (Security Profile \
                         §5.3, against audience injection): use \
                         ClientAssertion::audience_issuer",
                    );
                }
            }
            other => {
                return refuse(&format!(
                    "client authentication must be private_key_jwt or mTLS \
                     (Security Profile §5.3); this client uses {}",
                    auth_name(other)
                ));
            }
        }
        #[cfg(feature = "jwt")]
        if let Some(RequestSigner::Key(key)) = &self.request.signer {
            check_alg("the request objects", key.algorithm())?;
        }
        #[cfg(feature = "dpop")]
        if let Some(key) = self.token.dpop_key() {
            check_alg("the DPoP proofs", key.algorithm())?;
        }
        #[cfg(feature = "dpop")]
        let dpop = self.token.dpop_key().is_some();
        #[cfg(not(feature = "dpop"))]
        let dpop = false;
        if !dpop && !self.token.uses_mtls() {
            return refuse(
                "access tokens must be sender-constrained (Security Profile §5.3): give the \
                 token endpoint a DPoP key (TokenEndpoint::dpop) or use mTLS \
                 (a certificate client authentication, or TokenEndpoint::certificate_bound_tokens)",
            );
        }
        if self.token.uses_mtls() && self.token.presents_certificate() == Some(false) {
            return refuse(
                "mTLS (tls_client_auth, self_signed_tls_client_auth or \
                 TokenEndpoint::certificate_bound_tokens) needs an HTTP client that presents \
                 a client certificate (HttpClient::builder().client_certificate_pem); this \
                 one presents none, so nothing would be bound to it (Security Profile §5.3)",
            );
        }
        if par_url(&self.token).is_none() {
            return refuse(&format!(
                "pushed authorization requests are required (Security Profile §5.3, RFC 9126), \
                 but the provider {:?} names no pushed_authorization_request_endpoint",
                metadata.issuer
            ));
        }
        if let Some(methods) = &metadata.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return refuse(
                    "PKCE with S256 is required (Security Profile §5.3), but the provider's \
                     code_challenge_methods_supported does not list S256",
                );
            }
        }
        for (name, value) in &self.params {
            if name == "response_type" && value != "code" {
                return refuse(
                    "response_type must be code (Security Profile §5.3): a response_type \
                     parameter asks for another",
                );
            }
            if name == "code_challenge_method" && value != "S256" {
                return refuse(
                    "PKCE must use S256 (Security Profile §5.3): a code_challenge_method \
                     parameter asks for another",
                );
            }
        }
        if self.request.lifetime > FAPI2_MAX_REQUEST_OBJECT_LIFETIME {
            return refuse(&format!(
                "a request object may live at most 60 minutes (exp after nbf); {} s asked",
                self.request.lifetime.as_secs()
            ));
        }
        Ok(())
    }

    /// The URL the browser opens, for the authorization request `params` (the
    /// login's own first, then the extra ones): the parameters in the URL, or
    /// signed, or pushed, as this login is set up.
    pub(super) async fn front_channel_url(
        &self,
        params: Vec<(String, String)>,
    ) -> Result<String, Error> {
        if self.request.fapi2 {
            self.check_fapi2()?;
        }
        let metadata = self.token.metadata();
        let push = self.request.push
            || self.request.fapi2
            || metadata.is_some_and(|m| m.require_pushed_authorization_requests);
        #[cfg_attr(not(any(feature = "jwt", feature = "dpop")), allow(unused_mut))]
        let mut params = params;
        if push {
            // RFC 9126 §2.1: a pushed request never carries `request_uri`; the
            // provider answers one.
            refuse_reference_params(&params, "pushed (RFC 9126 §2.1)")?;
        }
        #[cfg(feature = "dpop")]
        if let Some(key) = self.token.dpop_key() {
            // RFC 9449 §10: the code is bound to the key the tokens will be bound to.
            params.retain(|(k, _)| k != "dpop_jkt");
            params.push(("dpop_jkt".into(), key.thumbprint().to_owned()));
        }
        let client_id = self.token.client_id_str().map(str::to_owned);
        #[cfg(feature = "jwt")]
        {
            let sign = self.request.signer.clone().or_else(|| {
                metadata
                    .is_some_and(|m| m.require_signed_request_object)
                    .then_some(RequestSigner::ClientAssertionKey)
            });
            if let Some(signer) = sign {
                // RFC 9101 §4: a request object has neither `request` nor `request_uri`.
                refuse_reference_params(&params, "signed into a request object (RFC 9101 §4)")?;
                let key = match &signer {
                    RequestSigner::Key(key) => key,
                    RequestSigner::ClientAssertionKey => match self.token.auth() {
                        TokenEndpointAuth::Assertion(a) => a.key(),
                        _ => None,
                    }
                    .ok_or_else(|| {
                        Error::Configuration(
                            "a signed request object needs a key: the token endpoint's \
                             private_key_jwt key, or AuthorizationCode::request_object_key"
                                .into(),
                        )
                    })?,
                };
                let client_id = client_id.clone().ok_or_else(|| {
                    Error::Configuration("a signed request object needs a client id".into())
                })?;
                let audience = metadata.map(|m| m.issuer.clone()).ok_or_else(|| {
                    Error::Configuration(
                        "a signed request object is for the discovered issuer \
                         (TokenEndpoint::discover)"
                            .into(),
                    )
                })?;
                let request =
                    sign_request_object(key, &client_id, &audience, self.request.lifetime, &params)
                        .await?;
                params = vec![("client_id".into(), client_id), ("request".into(), request)];
            }
        }
        let front: Vec<(String, String)> = if push {
            let pushed = self.push(params).await?;
            let mut front = Vec::with_capacity(2);
            if let Some(id) = client_id {
                front.push(("client_id".to_owned(), id));
            }
            front.push(("request_uri".to_owned(), pushed.request_uri));
            front
        } else {
            params
        };
        let encoded = serde_urlencoded::to_string(&front).map_err(|e| {
            Error::Configuration(format!("cannot encode the authorization request: {e}"))
        })?;
        let sep = if self.authorize.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{sep}{encoded}", self.authorize))
    }

    /// Pushes the request (RFC 9126 §2.1) and reads the answer (§2.2, §2.3).
    async fn push(&self, params: Vec<(String, String)>) -> Result<Pushed, Error> {
        let url = par_url(&self.token).ok_or_else(|| {
            Error::Configuration(match self.token.metadata() {
                Some(m) => format!(
                    "pushed authorization requests are on, but the provider {:?} names no \
                     pushed_authorization_request_endpoint",
                    m.issuer
                ),
                None => "pushed authorization requests need a discovered provider \
                         (TokenEndpoint::discover)"
                    .into(),
            })
        })?;
        let endpoint = self
            .token
            .with_url(&url, Endpoint::PushedAuthorization)?
            .without_params();
        // The client authentication adds `client_id` to the form (but for
        // client_secret_basic): it is sent once.
        let carried = endpoint.form_carries_client_id();
        let form: Vec<(&str, &str)> = params
            .iter()
            .filter(|(k, _)| !(carried && k == "client_id"))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let res = endpoint.post(&form).await?;
        let pushed = parse_pushed(res.status(), res.headers(), res.body())
            .map_err(|e| endpoint.locate(e, &form))?;
        tracing::debug!(
            expires_in = pushed.expires_in.as_secs(),
            "authorization request pushed"
        );
        Ok(pushed)
    }
}

/// Refuses an extra `request` or `request_uri` parameter (given with
/// [`AuthorizationCode::param`]) in a request that is `how` itself: the provider
/// would get two requests, or refuse the push.
fn refuse_reference_params(params: &[(String, String)], how: &str) -> Result<(), Error> {
    match params
        .iter()
        .find(|(k, _)| k == "request" || k == "request_uri")
    {
        Some((name, _)) => Err(Error::Configuration(format!(
            "the authorization request is {how}: it cannot carry a {name} parameter"
        ))),
        None => Ok(()),
    }
}

/// The pushed authorization request endpoint to use: the mTLS alias for a client
/// presenting a certificate (RFC 8705 §5), else the plain one.
fn par_url(token: &TokenEndpoint) -> Option<String> {
    token
        .mtls_alias(|a| &a.pushed_authorization_request_endpoint)
        .or_else(|| {
            token
                .metadata()
                .and_then(|m| m.pushed_authorization_request_endpoint.clone())
        })
}

/// The name of a client authentication method, for a refusal.
fn auth_name(auth: &TokenEndpointAuth) -> &'static str {
    match auth {
        TokenEndpointAuth::Basic => "client_secret_basic (or no secret: a public client)",
        TokenEndpointAuth::Post => "client_secret_post",
        TokenEndpointAuth::None => "none (a public client)",
        #[cfg(feature = "jwt")]
        TokenEndpointAuth::Assertion(a) => a.method(),
        TokenEndpointAuth::TlsClientAuth => "tls_client_auth",
        TokenEndpointAuth::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
    }
}

/// FAPI 2.0 Security Profile §5.4: JWTs are signed with `PS256`, `ES256` or
/// `EdDSA` (Ed25519) only.
#[cfg(feature = "jwt")]
fn check_alg(what: &str, alg: jsonwebtoken::Algorithm) -> Result<(), Error> {
    use jsonwebtoken::Algorithm::{EdDSA, ES256, PS256};
    if matches!(alg, PS256 | ES256 | EdDSA) {
        return Ok(());
    }
    Err(Error::Configuration(format!(
        "FAPI 2.0: {what} must be signed with PS256, ES256 or EdDSA (Security Profile §5.4); \
         {alg:?} is not allowed"
    )))
}

/// A pushed request: its reference and how long it lives.
#[derive(Debug)]
struct Pushed {
    request_uri: String,
    expires_in: Duration,
}

/// The answer of a pushed authorization request endpoint.
#[derive(Deserialize)]
struct PushedAnswer {
    request_uri: Option<serde_json::Value>,
    expires_in: Option<serde_json::Value>,
    #[serde(flatten)]
    error: ErrorAnswer,
}

/// RFC 9126 §2.2 (`201` with `request_uri` and `expires_in`) and §2.3 (an error
/// object). Nothing of a malformed answer is quoted.
fn parse_pushed(
    status: http::StatusCode,
    headers: &http::HeaderMap,
    body: &Bytes,
) -> Result<Pushed, Error> {
    let answer: Option<PushedAnswer> = serde_json::from_slice(body).ok();
    if !status.is_success() {
        return Err(endpoint_error(status, headers, answer.map(|a| a.error)));
    }
    let invalid = |why: String| Error::InvalidResponse(Endpoint::PushedAuthorization, why);
    let Some(answer) = answer else {
        return Err(invalid(format!(
            "HTTP {} with a body that is not a JSON object (content-type {})",
            status.as_u16(),
            crate::error::media_type(headers)
        )));
    };
    if answer.error.error.is_some() {
        return Err(endpoint_error(status, headers, Some(answer.error)));
    }
    let request_uri = match answer.request_uri {
        Some(serde_json::Value::String(uri)) => uri,
        Some(_) => return Err(invalid("request_uri is not a string".into())),
        None => return Err(invalid("no request_uri in the answer".into())),
    };
    let usable = !request_uri.is_empty()
        && request_uri.len() <= MAX_REQUEST_URI
        && request_uri.bytes().all(|b| b.is_ascii_graphic());
    if !usable {
        return Err(invalid(
            "request_uri is empty, too long, or not printable ASCII".into(),
        ));
    }
    let expires_in = match answer.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_f64().filter(|s| s.is_finite() && *s >= 1.0),
        Some(_) => None,
        None => return Err(invalid("no expires_in in the answer".into())),
    }
    .ok_or_else(|| invalid("expires_in must be a positive number of seconds".into()))?;
    Ok(Pushed {
        request_uri,
        expires_in: Duration::try_from_secs_f64(expires_in).unwrap_or(Duration::MAX),
    })
}

/// Signs the authorization request `params` into a request object (RFC 9101 §4):
/// header `typ` `oauth-authz-req+jwt` with the key's `alg` and `kid`; claims `iss`
/// the client id, `aud` the issuer, `iat` and `nbf` now, `exp` after `lifetime`, a
/// fresh `jti`, and every parameter (one that comes more than once, `resource`, as an
/// array).
///
/// The one place request objects are signed.
#[cfg(feature = "jwt")]
pub(crate) async fn sign_request_object(
    key: &crate::client::AssertionKey,
    client_id: &str,
    audience: &str,
    lifetime: Duration,
    params: &[(String, String)],
) -> Result<String, Error> {
    use serde_json::{Map, Value};
    let mut claims = Map::new();
    for (name, value) in params {
        match claims.get_mut(name) {
            None => {
                claims.insert(name.clone(), Value::String(value.clone()));
            }
            Some(Value::Array(values)) => values.push(Value::String(value.clone())),
            Some(first) => {
                let first = first.take();
                claims.insert(
                    name.clone(),
                    Value::Array(vec![first, Value::String(value.clone())]),
                );
            }
        }
    }
    let (iat, exp) = crate::client::assertion::iat_exp(lifetime);
    // The request's own claims win over any parameter of the same name.
    claims.insert("iss".into(), client_id.into());
    claims.insert("aud".into(), audience.into());
    claims.insert("client_id".into(), client_id.into());
    claims.insert("iat".into(), iat.into());
    claims.insert("nbf".into(), iat.into());
    claims.insert("exp".into(), exp.into());
    claims.insert("jti".into(), crate::client::assertion::jti().into());
    let header = jsonwebtoken::Header {
        typ: Some(REQUEST_OBJECT_TYP.to_owned()),
        ..Default::default()
    };
    key.sign_jwt(header, &claims).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(status: u16, body: &str) -> Result<Pushed, Error> {
        parse_pushed(
            http::StatusCode::from_u16(status).unwrap(),
            &http::HeaderMap::new(),
            &Bytes::from(body.to_owned()),
        )
    }

    #[test]
    fn a_pushed_answer_is_read_and_a_bad_one_refused_without_quoting_it() {
        let ok = parse(201, r#"{"request_uri":"urn:x:1","expires_in":60}"#).unwrap();
        assert_eq!(ok.request_uri, "urn:x:1");
        assert_eq!(ok.expires_in, Duration::from_secs(60));
        for body in [
            r#"{"expires_in":60}"#,
            r#"{"request_uri":"","expires_in":60}"#,
            r#"{"request_uri":"urn:x:1 secret-junk","expires_in":60}"#,
            r#"{"request_uri":7,"expires_in":60}"#,
            r#"{"request_uri":"urn:x:1"}"#,
            r#"{"request_uri":"urn:x:1","expires_in":0}"#,
            r#"{"request_uri":"urn:x:1","expires_in":"soon"}"#,
            "secret-junk not json",
        ] {
            let err = parse(201, body).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::InvalidResponse(Endpoint::PushedAuthorization, _)
                ),
                "{body}: {err:?}"
            );
            assert!(!err.to_string().contains("secret-junk"), "{err}");
        }
        let err = parse(400, r#"{"error":"invalid_request_object"}"#).unwrap_err();
        assert_eq!(err.oauth_code(), Some("invalid_request_object"));
        let err = parse(500, "<html>secret-junk</html>").unwrap_err();
        assert!(matches!(&err, Error::TokenEndpoint(e) if e.status == 500));
        assert!(!err.to_string().contains("secret-junk"), "{err}");
    }
}
