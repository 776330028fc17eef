//! The seam between the client layers and any credential: the [`Authorizer`] trait,
//! and the authorizers that need no refresh ([`StaticToken`], [`Basic`], [`ApiKey`],
//! [`NoAuth`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::header::{HeaderName, AUTHORIZATION};
use http::{HeaderMap, HeaderValue, Method};

use crate::token::bearer_header;
use crate::Error;

/// The headers to put on an outgoing request: one credential header, usually
/// `Authorization` (an [`ApiKey`] may use any header name), and for a DPoP-bound
/// token a second one, the request's `DPoP` proof (RFC 9449).
///
/// The proof is kept as a header value only, not a name and a value: the credential
/// travels by value on every request, and stays small.
///
/// The credential header ([`name`](Self::name), [`value`](Self::value)) is what
/// [`Authorizer::on_unauthorized`] and [`Authorizer::on_accepted`] report.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    /// The header name.
    pub name: HeaderName,
    /// The header value, marked sensitive.
    pub value: HeaderValue,
    /// The `DPoP` proof (RFC 9449) sent along in a `DPoP` header, made for this one
    /// request.
    pub dpop: Option<HeaderValue>,
}

impl Credential {
    /// An `Authorization` credential.
    pub fn authorization(value: HeaderValue) -> Self {
        Credential {
            name: AUTHORIZATION,
            value,
            dpop: None,
        }
    }

    /// A credential in the header `name`.
    pub fn header(name: HeaderName, value: HeaderValue) -> Self {
        Credential {
            name,
            value,
            dpop: None,
        }
    }

    /// The same credential with a `DPoP` proof sent along (replacing any).
    pub fn with_dpop_proof(mut self, proof: HeaderValue) -> Self {
        self.dpop = Some(proof);
        self
    }

    /// Puts the header(s) in `headers`, replacing what they held.
    pub fn apply(self, headers: &mut HeaderMap) {
        headers.insert(self.name, self.value);
        if let Some(proof) = self.dpop {
            headers.insert(DPOP, proof);
        }
    }

    /// Puts a copy of it on a request's headers.
    pub(crate) fn put_on(&self, headers: &mut HeaderMap) {
        headers.insert(self.name.clone(), self.value.clone());
        if let Some(proof) = &self.dpop {
            headers.insert(DPOP, proof.clone());
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("value", &"[redacted]")
            .field("dpop", &self.dpop.as_ref().map(|_| "[proof]"))
            .finish()
    }
}

/// The `DPoP` request header (RFC 9449), which carries a [`Credential`]'s proof.
pub const DPOP: HeaderName = HeaderName::from_static("dpop");

/// Where a request goes and how: its method, scheme, host, port and path, read from
/// the request (or, in the reqwest middleware, its URL) without copying. See
/// [`Authorizer::credential_for`]. A DPoP proof names the method and the URL.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    method: &'a Method,
    at: At<'a>,
}

#[derive(Clone, Copy, Debug)]
enum At<'a> {
    Uri(&'a http::Uri),
    #[cfg(feature = "reqwest")]
    Url(&'a reqwest::Url),
}

impl<'a> Target<'a> {
    /// The target of a request with this method and URI. A relative URI (as tonic's
    /// client requests are, before the channel adds the origin) has no scheme nor
    /// host.
    pub fn new(method: &'a Method, uri: &'a http::Uri) -> Self {
        Target {
            method,
            at: At::Uri(uri),
        }
    }

    /// The target of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Target::new(req.method(), req.uri())
    }

    /// The target of a reqwest request with this method and URL.
    #[cfg(feature = "reqwest")]
    #[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
    pub fn url(method: &'a Method, url: &'a reqwest::Url) -> Self {
        Target {
            method,
            at: At::Url(url),
        }
    }

    /// The request method.
    pub fn method(&self) -> &'a Method {
        self.method
    }

    /// The scheme (`https`), when the target has one.
    pub fn scheme(&self) -> Option<&'a str> {
        match self.at {
            At::Uri(u) => u.scheme_str(),
            #[cfg(feature = "reqwest")]
            At::Url(u) => Some(u.scheme()),
        }
    }

    /// The host, when the target has one.
    pub fn host(&self) -> Option<&'a str> {
        match self.at {
            At::Uri(u) => u.host(),
            #[cfg(feature = "reqwest")]
            At::Url(u) => u.host_str(),
        }
    }

    /// The port: the one given, else the scheme's default (`http` 80, `https` 443).
    pub fn port(&self) -> Option<u16> {
        let given = match self.at {
            At::Uri(u) => u.port_u16(),
            #[cfg(feature = "reqwest")]
            At::Url(u) => u.port(),
        };
        given.or_else(|| default_port(self.scheme()?))
    }

    /// The path (`/` at least for an absolute URL).
    pub fn path(&self) -> &'a str {
        match self.at {
            At::Uri(u) => u.path(),
            #[cfg(feature = "reqwest")]
            At::Url(u) => u.path(),
        }
    }
}

/// The default port of `scheme`.
pub(crate) fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("wss") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("ws") {
        Some(80)
    } else {
        None
    }
}

/// Produces the credential for each outgoing request, and hears when the server
/// rejected one.
///
/// This is the seam between [`AuthorizeLayer`](super::AuthorizeLayer) (and the other
/// integrations) and where credentials come from. Implement it to plug in your own.
///
/// ```
/// use tower_bearer::client::{Authorizer, Credential, CredentialFuture};
/// use http::HeaderValue;
///
/// /// Signs every request with a header computed on the spot.
/// struct Stamp;
///
/// impl Authorizer for Stamp {
///     fn credential(&self) -> CredentialFuture {
///         let value = HeaderValue::from_static("Bearer stamped");
///         CredentialFuture::ready(Ok(Some(Credential::authorization(value))))
///     }
/// }
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// The credential for the next request: `Ok(None)` sends the request without one.
    ///
    /// Return [`CredentialFuture::ready`] when the answer is at hand (no allocation),
    /// and [`CredentialFuture::pending`] only when it must be waited for.
    fn credential(&self) -> CredentialFuture;

    /// The credential for a request to `target`. The client integrations call this
    /// one; the default ignores the target and answers [`credential`](Self::credential).
    /// [`PerResource`](super::PerResource) picks a cache by it.
    fn credential_for(&self, target: Target<'_>) -> CredentialFuture {
        let _ = target;
        self.credential()
    }

    /// Whether the client integrations report answers to this authorizer
    /// ([`on_unauthorized`](Self::on_unauthorized), [`on_accepted`](Self::on_accepted)).
    /// Default `true`. An authorizer whose credential never changes answers `false`:
    /// the layer then keeps nothing per request to report with (no copy of the
    /// authorizer nor of the credential sent), and never replays a refused request,
    /// which would carry the same credential. Such an authorizer can also give its
    /// credential by [`fixed_credential`](Self::fixed_credential), which is cheaper.
    fn observes_answers(&self) -> bool {
        true
    }

    /// The credential every request gets, when it never changes (a static token, Basic,
    /// an API key): [`AuthorizeLayer`](super::AuthorizeLayer) (tonic included) and
    /// `AuthorizeMiddleware` (reqwest) then put it on the request directly, with no
    /// [`CredentialFuture`] and nothing kept for the answer. Default `None`.
    ///
    /// `Some` takes precedence: [`credential_for`](Self::credential_for) is not called
    /// (the credential cannot depend on the request's target), no answer is reported
    /// and nothing is replayed, whatever
    /// [`observes_answers`](Self::observes_answers) says (answer `false` there too).
    /// The credential must carry no DPoP proof (a proof is made per request), and
    /// [`credential`](Self::credential) must give the same one. An authorizer that
    /// picks or binds its credential per request ([`PerResource`](super::PerResource),
    /// `Dpop`) answers `None`.
    fn fixed_credential(&self) -> Option<&Credential> {
        None
    }

    /// The server answered `401` (or gRPC `UNAUTHENTICATED`) to a request that carried
    /// `sent`. An authorizer that caches should drop that value, and only that value:
    /// another request may already carry a newer one.
    fn on_unauthorized(&self, sent: &HeaderValue) {
        let _ = sent;
    }

    /// The server answered a request that carried `sent` and said nothing against it:
    /// any answer but a `5xx`, a refusal (a `401` with a `Bearer` challenge, a `DPoP`
    /// one naming `invalid_token`, or none; gRPC `UNAUTHENTICATED`) and a `DPoP` demand
    /// for a nonce. A step-up challenge counts as accepted (the token is good, the
    /// login behind it is not enough), and so does a `401` asking for another scheme.
    /// [`Refreshing`](super::Refreshing) uses it to tell an API that refuses every
    /// token from one that revoked a single token.
    fn on_accepted(&self, sent: &HeaderValue) {
        let _ = sent;
    }

    /// The server answered a request that carried `sent`, with a DPoP proof, with a
    /// `DPoP-Nonce` header (RFC 9449 §8): the nonce the next DPoP proofs to that
    /// server must carry. Answers to requests without a proof are not inspected.
    /// [`Dpop`](super::Dpop) remembers it for the request's origin; a `401
    /// use_dpop_nonce` answer is then replayed once, when the request can be.
    fn on_dpop_nonce(&self, sent: &Credential, nonce: &HeaderValue) {
        let _ = (sent, nonce);
    }
}

impl<A: Authorizer + ?Sized> Authorizer for Arc<A> {
    fn on_dpop_nonce(&self, sent: &Credential, nonce: &HeaderValue) {
        (**self).on_dpop_nonce(sent, nonce)
    }
    fn credential(&self) -> CredentialFuture {
        (**self).credential()
    }
    fn observes_answers(&self) -> bool {
        (**self).observes_answers()
    }
    fn fixed_credential(&self) -> Option<&Credential> {
        (**self).fixed_credential()
    }
    fn credential_for(&self, target: Target<'_>) -> CredentialFuture {
        (**self).credential_for(target)
    }
    fn on_unauthorized(&self, sent: &HeaderValue) {
        (**self).on_unauthorized(sent)
    }
    fn on_accepted(&self, sent: &HeaderValue) {
        (**self).on_accepted(sent)
    }
}

impl<A: Authorizer + ?Sized> Authorizer for Box<A> {
    fn on_dpop_nonce(&self, sent: &Credential, nonce: &HeaderValue) {
        (**self).on_dpop_nonce(sent, nonce)
    }
    fn credential(&self) -> CredentialFuture {
        (**self).credential()
    }
    fn observes_answers(&self) -> bool {
        (**self).observes_answers()
    }
    fn fixed_credential(&self) -> Option<&Credential> {
        (**self).fixed_credential()
    }
    fn credential_for(&self, target: Target<'_>) -> CredentialFuture {
        (**self).credential_for(target)
    }
    fn on_unauthorized(&self, sent: &HeaderValue) {
        (**self).on_unauthorized(sent)
    }
    fn on_accepted(&self, sent: &HeaderValue) {
        (**self).on_accepted(sent)
    }
}

type CredentialResult = Result<Option<Credential>, Error>;

/// The credential for one request: ready at once (the common case, no allocation) or
/// a boxed future while a token is fetched.
#[must_use = "futures do nothing unless polled"]
pub struct CredentialFuture {
    state: CredentialState,
}

enum CredentialState {
    Ready(Option<CredentialResult>),
    Pending(BoxFuture<'static, CredentialResult>),
}

impl CredentialFuture {
    /// A credential that is known now.
    pub fn ready(result: CredentialResult) -> Self {
        CredentialFuture {
            state: CredentialState::Ready(Some(result)),
        }
    }

    /// A credential that must be waited for.
    pub fn pending(future: impl Future<Output = CredentialResult> + Send + 'static) -> Self {
        CredentialFuture {
            state: CredentialState::Pending(Box::pin(future)),
        }
    }

    /// The credential, if it is known without waiting; otherwise the future back.
    pub fn now_or_pending(self) -> Result<CredentialResult, Self> {
        match self.state {
            CredentialState::Ready(Some(r)) => Ok(r),
            state => Err(CredentialFuture { state }),
        }
    }

    /// Whether the credential must be waited for.
    pub fn is_pending(&self) -> bool {
        matches!(self.state, CredentialState::Pending(_))
    }
}

impl Future for CredentialFuture {
    type Output = CredentialResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            CredentialState::Ready(r) => Poll::Ready(
                r.take()
                    .expect("CredentialFuture polled after it completed"),
            ),
            CredentialState::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for CredentialFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialFuture")
            .field("pending", &self.is_pending())
            .finish()
    }
}

/// A fixed bearer token (the Globus SDK's `AccessTokenAuthorizer`).
#[derive(Clone)]
pub struct StaticToken {
    credential: Arc<Credential>,
}

impl StaticToken {
    /// `Authorization: Bearer <token>`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the token is empty or cannot go in a header.
    pub fn bearer(token: impl AsRef<str>) -> Result<Self, Error> {
        Ok(StaticToken {
            credential: Arc::new(Credential::authorization(bearer_header(token.as_ref())?)),
        })
    }
}

/// The `Authorizer` impl of an authorizer whose credential never changes.
macro_rules! fixed_credential {
    ($name:ident) => {
        impl Authorizer for $name {
            fn credential(&self) -> CredentialFuture {
                CredentialFuture::ready(Ok(Some(Credential::clone(&self.credential))))
            }
            fn observes_answers(&self) -> bool {
                false
            }
            fn fixed_credential(&self) -> Option<&Credential> {
                Some(&self.credential)
            }
        }
    };
}

fixed_credential!(StaticToken);
fixed_credential!(Basic);
fixed_credential!(ApiKey);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken([redacted])")
    }
}

/// HTTP Basic authentication (RFC 7617), e.g. a confidential client's id and secret.
#[derive(Clone)]
pub struct Basic {
    credential: Arc<Credential>,
}

impl Basic {
    /// `Authorization: Basic base64(user:password)`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the user name contains `:`, which RFC 7617 forbids.
    pub fn new(user: impl AsRef<str>, password: impl AsRef<str>) -> Result<Self, Error> {
        let user = user.as_ref();
        if user.contains(':') {
            return Err(Error::Configuration(
                "a Basic user name cannot contain ':'".into(),
            ));
        }
        Ok(Basic {
            credential: Arc::new(Credential::authorization(basic_header(
                user,
                password.as_ref(),
            ))),
        })
    }
}

/// `Basic base64(user:password)`, sensitive.
pub(crate) fn basic_header(user: &str, password: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut value = HeaderValue::try_from(format!("Basic {encoded}"))
        .expect("base64 is always a valid header value");
    value.set_sensitive(true);
    value
}

impl fmt::Debug for Basic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Basic([redacted])")
    }
}

/// An API key in a header of the API's choosing (`X-Api-Key: …`,
/// `Authorization: ApiKey …`).
#[derive(Clone)]
pub struct ApiKey {
    credential: Arc<Credential>,
}

impl ApiKey {
    /// Sends `value` in the header `name`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the name or the value is not valid in a header.
    pub fn new(name: impl AsRef<str>, value: impl AsRef<str>) -> Result<Self, Error> {
        let name = HeaderName::try_from(name.as_ref()).map_err(|_| {
            Error::Configuration(format!("invalid header name {:?}", name.as_ref()))
        })?;
        let mut value = HeaderValue::try_from(value.as_ref()).map_err(|_| {
            Error::Configuration("the API key has characters that cannot go in a header".into())
        })?;
        if value.is_empty() {
            return Err(Error::Configuration("the API key is empty".into()));
        }
        value.set_sensitive(true);
        Ok(ApiKey {
            credential: Arc::new(Credential::header(name, value)),
        })
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("header", &self.credential.name)
            .field("value", &"[redacted]")
            .finish()
    }
}

/// Sends requests as they are, with no credential.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAuth;

impl Authorizer for NoAuth {
    fn credential(&self) -> CredentialFuture {
        CredentialFuture::ready(Ok(None))
    }
    fn observes_answers(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(a: &dyn Authorizer) -> Option<Credential> {
        a.credential()
            .now_or_pending()
            .expect("simple authorizers answer at once")
            .unwrap()
    }

    #[test]
    fn simple_authorizers_build_the_right_headers() {
        let c = now(&StaticToken::bearer("t0k").unwrap()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.value.to_str().unwrap()),
            ("authorization", "Bearer t0k")
        );
        assert!(c.value.is_sensitive());

        let c = now(&Basic::new("Aladdin", "open sesame").unwrap()).unwrap();
        assert_eq!(c.value, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(c.value.is_sensitive());

        let c = now(&ApiKey::new("X-Api-Key", "k-123").unwrap()).unwrap();
        assert_eq!(
            (c.name.as_str(), c.value.to_str().unwrap()),
            ("x-api-key", "k-123")
        );
        assert!(c.value.is_sensitive());

        assert!(now(&NoAuth).is_none());
    }

    #[test]
    fn bad_input_is_a_configuration_error() {
        assert!(matches!(
            StaticToken::bearer(""),
            Err(Error::Configuration(_))
        ));
        assert!(matches!(
            Basic::new("a:b", "p"),
            Err(Error::Configuration(_))
        ));
        assert!(matches!(
            ApiKey::new("bad header", "v"),
            Err(Error::Configuration(_))
        ));
        assert!(matches!(
            ApiKey::new("x-key", "line\nbreak"),
            Err(Error::Configuration(_))
        ));
    }

    #[test]
    fn debug_prints_no_secret() {
        let printed = format!(
            "{:?} {:?} {:?} {:?}",
            StaticToken::bearer("sekrit-1").unwrap(),
            Basic::new("user", "sekrit-2").unwrap(),
            ApiKey::new("x-key", "sekrit-3").unwrap(),
            Credential::authorization(HeaderValue::from_static("Bearer sekrit-4")),
        );
        assert!(!printed.contains("sekrit"), "{printed}");
        // Basic's base64 must not leak either.
        assert!(!printed.contains("dXNlcjpzZWtyaXQtMg"), "{printed}");
    }
}
