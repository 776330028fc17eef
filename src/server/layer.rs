//! [`RequireBearerLayer`]: only requests with a valid bearer token reach the
//! service, with their verified claims; [`RequireScopeLayer`]: a route-level scope
//! requirement that composes after it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{ready, Context, Poll};

use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::challenge::Challenge;
#[cfg(feature = "dpop")]
use super::dpop::{CheckedProof, Confirmation, DpopError, DpopVerifier};
#[cfg(feature = "dpop")]
use super::header::dpop_or_bearer_token;
use super::header::{bearer_token, DEFAULT_MAX_LEN};
#[cfg(feature = "mtls")]
use super::mtls::CertificateBinding;
use super::validator::{ScopedClaims, ValidationFuture, Validator};
use super::Rejection;
use crate::metrics::{self, Started};

/// The verified claims of a request, in its extensions.
///
/// Read them in a handler with `req.extensions().get::<Verified<C>>()` (hyper,
/// tonic's `Request::extensions()`), or with the axum extractor of the same name
/// (feature `axum`).
#[derive(Clone, Debug, PartialEq)]
pub struct Verified<C>(pub C);

/// What the challenges of a [`RequireBearerLayer`] name: its realm and, when set, the
/// URL of the resource's metadata (RFC 9728).
#[derive(Clone, Debug)]
pub(crate) struct ChallengeParams {
    pub(crate) realm: Arc<str>,
    pub(crate) resource_metadata: Option<Arc<str>>,
    /// The `algs` of a layer that accepts DPoP (RFC 9449 §7.1), named in its
    /// challenges.
    pub(crate) dpop_algs: Option<Arc<str>>,
    /// The scope the `401` challenges name (RFC 6750 §3, MCP's authorization spec).
    pub(crate) scope: Option<Arc<str>>,
}

impl ChallengeParams {
    /// The parameters of a layer that set none (the realm `api`), shared by them all.
    pub(crate) fn defaults() -> &'static Arc<ChallengeParams> {
        static DEFAULTS: LazyLock<Arc<ChallengeParams>> = LazyLock::new(|| {
            Arc::new(ChallengeParams {
                realm: Arc::from(DEFAULT_REALM),
                resource_metadata: None,
                dpop_algs: None,
                scope: None,
            })
        });
        &DEFAULTS
    }

    pub(crate) fn respond<B: Default>(
        &self,
        rejection: &Rejection,
        headers: &http::HeaderMap,
    ) -> Response<B> {
        rejection.response_in(
            headers,
            &Challenge {
                realm: &self.realm,
                resource_metadata: self.resource_metadata.as_deref(),
                dpop: self
                    .dpop_algs
                    .as_deref()
                    .map(|algs| (algs, sent_as_dpop(headers))),
                scope: self.scope.as_deref(),
            },
        )
    }
}

/// Whether the request's credentials are `Authorization: DPoP …`.
fn sent_as_dpop(headers: &http::HeaderMap) -> bool {
    headers.get(http::header::AUTHORIZATION).is_some_and(|v| {
        v.as_bytes()
            .get(..5)
            .is_some_and(|s| s.eq_ignore_ascii_case(b"dpop "))
    })
}

/// The challenge parameters of the [`RequireBearerLayer`] a request went through, in
/// its extensions when they are not the defaults (absent, they are): the answers
/// given further in (a [`RequireScopeLayer`], the axum extractors) name the same
/// realm and metadata.
#[derive(Clone, Debug)]
pub(crate) struct LayerRealm(pub(crate) Arc<ChallengeParams>);

/// The realm named when no layer set one.
pub(crate) const DEFAULT_REALM: &str = "api";

/// The challenge parameters of the layer `extensions` went through, or the default.
pub(crate) fn realm_of(extensions: &http::Extensions) -> Arc<ChallengeParams> {
    Arc::clone(
        extensions
            .get::<LayerRealm>()
            .map_or(ChallengeParams::defaults(), |r| &r.0),
    )
}

#[derive(Clone, Debug)]
struct Config {
    challenge: Arc<ChallengeParams>,
    max_len: usize,
    anonymous: bool,
    /// DPoP accepted (and DPoP-bound tokens refused as bearer tokens); `None`: a
    /// bearer-only layer, whose path is the one it had before DPoP.
    #[cfg(feature = "dpop")]
    dpop: Option<Arc<DpopConfig>>,
    /// Certificate-bound tokens checked (RFC 8705); `None`: no cost.
    #[cfg(feature = "mtls")]
    mtls: Option<Arc<MtlsConfig>>,
}

impl Config {
    /// Tells what is further in (a [`RequireScopeLayer`], the extractors) which
    /// challenge parameters to answer with: this layer's, in the extensions, or the
    /// default ones by their absence (an outer layer's are taken out). Most layers
    /// keep the defaults, and their requests pay no map insert for them.
    fn mark<B>(&self, req: &mut Request<B>) {
        // Every setter makes new parameters: the shared defaults are the defaults.
        if Arc::ptr_eq(&self.challenge, ChallengeParams::defaults()) {
            req.extensions_mut().remove::<LayerRealm>();
        } else {
            req.extensions_mut()
                .insert(LayerRealm(Arc::clone(&self.challenge)));
        }
    }
}

/// What a layer that checks certificate-bound tokens checks with.
#[cfg(feature = "mtls")]
#[derive(Debug)]
struct MtlsConfig {
    binding: CertificateBinding,
    /// The claims' `cnf["x5t#S256"]`, through their `Confirmation`.
    x5t_of: fn(&dyn std::any::Any) -> Option<&str>,
}

#[cfg(feature = "mtls")]
fn x5t_of<C: super::Confirmation + 'static>(claims: &dyn std::any::Any) -> Option<&str> {
    claims
        .downcast_ref::<C>()
        .and_then(super::Confirmation::x5t_s256)
}

/// What a layer that accepts DPoP checks with.
#[cfg(feature = "dpop")]
struct DpopConfig {
    verifier: DpopVerifier,
    /// The claims' `cnf.jkt`, through their [`Confirmation`] (the claims type is
    /// erased here, so the configuration stays the same type for every validator).
    jkt_of: fn(&dyn std::any::Any) -> Option<&str>,
}

#[cfg(feature = "dpop")]
impl fmt::Debug for DpopConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopConfig")
            .field("verifier", &self.verifier)
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "dpop")]
fn jkt_of<C: Confirmation + 'static>(claims: &dyn std::any::Any) -> Option<&str> {
    claims.downcast_ref::<C>().and_then(Confirmation::jkt)
}

/// Requires `Authorization: Bearer` with a token the [`Validator`] accepts.
///
/// On success the claims go into the request extensions as [`Verified`] and the
/// inner service is called. On failure it answers without calling it, as RFC 6750
/// §3 says: `401` with a bare `WWW-Authenticate: Bearer realm="…"` challenge when
/// there are no bearer credentials, `400` `invalid_request` for a malformed header,
/// `401` `invalid_token` for a bad or expired token, `403` `insufficient_scope`, and
/// `503` when the validator cannot decide. gRPC requests (`content-type:
/// application/grpc…`) get `UNAUTHENTICATED`, `PERMISSION_DENIED` or `UNAVAILABLE`
/// instead.
///
/// ```
/// use axum::{routing::get, Router};
/// use tower_bearer::server::{RequireBearerLayer, StaticTokens};
///
/// let app: Router = Router::new()
///     .route("/items", get(|| async { "items" }))
///     .layer(RequireBearerLayer::new(StaticTokens::new([("s3cret", "ci")])).realm("items"));
/// ```
pub struct RequireBearerLayer<V> {
    validator: Arc<V>,
    config: Arc<Config>,
}

impl<V> Clone for RequireBearerLayer<V> {
    fn clone(&self) -> Self {
        RequireBearerLayer {
            validator: Arc::clone(&self.validator),
            config: Arc::clone(&self.config),
        }
    }
}

impl<V: fmt::Debug> fmt::Debug for RequireBearerLayer<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireBearerLayer")
            .field("validator", &self.validator)
            .field("config", &self.config)
            .finish()
    }
}

impl<V: Validator> RequireBearerLayer<V> {
    /// Validates tokens with `validator`; realm `"api"`, an 8 KiB header cap.
    pub fn new(validator: V) -> Self {
        RequireBearerLayer {
            validator: Arc::new(validator),
            config: Arc::new(Config {
                challenge: Arc::clone(ChallengeParams::defaults()),
                max_len: DEFAULT_MAX_LEN,
                anonymous: false,
                #[cfg(feature = "dpop")]
                dpop: None,
                #[cfg(feature = "mtls")]
                mtls: None,
            }),
        }
    }

    fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// The realm named in challenges (default `"api"`): in this layer's answers and in
    /// those given further in, by a [`RequireScopeLayer`] without a realm of its own
    /// and by the axum extractors.
    pub fn realm(self, realm: impl Into<String>) -> Self {
        let realm: Arc<str> = Arc::from(realm.into());
        self.config(|c| {
            c.challenge = Arc::new(ChallengeParams {
                realm,
                resource_metadata: c.challenge.resource_metadata.clone(),
                dpop_algs: c.challenge.dpop_algs.clone(),
                scope: c.challenge.scope.clone(),
            })
        })
    }

    /// The URL of this resource's metadata document (RFC 9728), named in the
    /// `resource_metadata` parameter of every challenge: this layer's (`401` with or
    /// without an error, `400`, `403`; gRPC answers' `www-authenticate` too) and
    /// those given further in by a [`RequireScopeLayer`] and the axum extractors. A
    /// client that gets one finds there the authorization servers to ask for a
    /// token. Serve the document itself with
    /// [`ProtectedResourceMetadata`](super::ProtectedResourceMetadata), and give
    /// here its [`url`](super::ProtectedResourceMetadata::url).
    pub fn resource_metadata(self, url: impl Into<String>) -> Self {
        let url: Arc<str> = Arc::from(url.into());
        self.config(|c| {
            c.challenge = Arc::new(ChallengeParams {
                realm: Arc::clone(&c.challenge.realm),
                resource_metadata: Some(url),
                dpop_algs: c.challenge.dpop_algs.clone(),
                scope: c.challenge.scope.clone(),
            })
        })
    }

    /// The scope named in this layer's `401` challenges (`scope="…"`, RFC 6750 §3):
    /// what a token for this resource needs, so a client asks for it the first time
    /// (the Model Context Protocol's authorization spec has MCP servers name it). A
    /// `403` `insufficient_scope` names the scope it lacks instead; `400` and `503`
    /// name none.
    ///
    /// ```
    /// use tower_bearer::server::{RequireBearerLayer, StaticTokens};
    ///
    /// let layer = RequireBearerLayer::new(StaticTokens::new([("s3cret", "ci")]))
    ///     .resource_metadata("https://mcp.example.com/.well-known/oauth-protected-resource/mcp")
    ///     .scope("read");
    /// # let _ = layer;
    /// ```
    pub fn scope(self, scope: impl Into<String>) -> Self {
        let scope: Arc<str> = Arc::from(scope.into());
        self.config(|c| {
            c.challenge = Arc::new(ChallengeParams {
                scope: Some(scope),
                ..(*c.challenge).clone()
            })
        })
    }

    /// The largest `Authorization` header accepted, in bytes (default 8 KiB).
    pub fn max_header_len(self, bytes: usize) -> Self {
        self.config(|c| c.max_len = bytes)
    }

    /// Lets requests without bearer credentials through, with no claims (a bad
    /// token is still refused). Handlers tell them apart by the absence of
    /// [`Verified`] (or with the optional axum extractor).
    pub fn allow_anonymous(self) -> Self {
        self.config(|c| c.anonymous = true)
    }

    /// Accepts DPoP-bound tokens (RFC 9449) besides bearer tokens: `Authorization:
    /// DPoP <token>` with a `DPoP` proof that `verifier` checks completely, for a
    /// token whose `cnf.jkt` (read through [`Confirmation`]) names the proof's key.
    ///
    /// A DPoP-bound token sent as `Bearer` is refused (`401 invalid_token`): whoever
    /// stole it has no key. Refusals of a DPoP request come in a `DPoP` challenge
    /// naming the accepted `algs` (`invalid_dpop_proof`, `invalid_token`); the others
    /// carry a `DPoP algs="…"` challenge after the `Bearer` one, so clients learn
    /// that DPoP is accepted. Without this call, the layer is bearer-only and pays
    /// nothing for DPoP.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use tower_bearer::server::{Claims, DpopVerifier, JwtValidator, RequireBearerLayer};
    ///
    /// let validator = JwtValidator::<Claims>::hmac(b"a-secret-of-at-least-32-bytes!!!");
    /// let dpop = DpopVerifier::new().external_origin("https://api.example.com").unwrap();
    /// let app: Router = Router::new()
    ///     .route("/items", get(|| async { "items" }))
    ///     .layer(RequireBearerLayer::new(validator).dpop(dpop));
    /// ```
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn dpop(self, verifier: DpopVerifier) -> Self
    where
        V::Claims: Confirmation,
    {
        let algs: Arc<str> = Arc::from(verifier.algs());
        self.config(|c| {
            c.challenge = Arc::new(ChallengeParams {
                realm: Arc::clone(&c.challenge.realm),
                resource_metadata: c.challenge.resource_metadata.clone(),
                dpop_algs: Some(algs),
                scope: c.challenge.scope.clone(),
            });
            c.dpop = Some(Arc::new(DpopConfig {
                verifier,
                jkt_of: jkt_of::<V::Claims>,
            }));
        })
    }
}

impl<V: Validator> RequireBearerLayer<V> {
    /// Checks certificate-bound tokens (RFC 8705 §3): a token whose
    /// `cnf["x5t#S256"]` (read through [`Confirmation`](super::Confirmation)) names
    /// a certificate passes only with that client certificate, taken from where
    /// `binding` says (this server's TLS connection, or a trusted proxy's header);
    /// otherwise `401 invalid_token`. A token that is not bound passes as before.
    /// Without this call, the layer pays nothing for it.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use tower_bearer::server::{CertificateBinding, Claims, JwtValidator, RequireBearerLayer};
    ///
    /// let validator = JwtValidator::<Claims>::hmac(b"a-secret-of-at-least-32-bytes!!!");
    /// let app: Router = Router::new()
    ///     .route("/items", get(|| async { "items" }))
    ///     .layer(RequireBearerLayer::new(validator).mtls(CertificateBinding::connection()));
    /// ```
    ///
    /// See [`mtls`](super::mtls) for serving over TLS with the client certificate in
    /// each request.
    #[cfg(feature = "mtls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mtls")))]
    pub fn mtls(self, binding: CertificateBinding) -> Self
    where
        V::Claims: super::Confirmation,
    {
        self.config(|c| {
            c.mtls = Some(Arc::new(MtlsConfig {
                binding,
                x5t_of: x5t_of::<V::Claims>,
            }))
        })
    }
}

impl<S, V> Layer<S> for RequireBearerLayer<V> {
    type Service = RequireBearer<S, V>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireBearer {
            inner,
            validator: Arc::clone(&self.validator),
            config: Arc::clone(&self.config),
        }
    }
}

/// The service made by [`RequireBearerLayer`].
pub struct RequireBearer<S, V> {
    inner: S,
    validator: Arc<V>,
    config: Arc<Config>,
}

impl<S: Clone, V> Clone for RequireBearer<S, V> {
    fn clone(&self) -> Self {
        RequireBearer {
            inner: self.inner.clone(),
            validator: Arc::clone(&self.validator),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, V: fmt::Debug> fmt::Debug for RequireBearer<S, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireBearer")
            .field("inner", &self.inner)
            .field("validator", &self.validator)
            .finish_non_exhaustive()
    }
}

impl<S, V: Validator> RequireBearer<S, V> {
    /// Wraps `inner`; the same as `RequireBearerLayer::new(validator).layer(inner)`.
    pub fn new(inner: S, validator: V) -> Self {
        RequireBearerLayer::new(validator).layer(inner)
    }
}

impl<S, V, B, ResBody> Service<Request<B>> for RequireBearer<S, V>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    V: Validator,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, V::Claims>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Layers inside this one that log requests print the credentials as
        // `Sensitive`, not the token.
        if let Some(value) = req.headers_mut().get_mut(http::header::AUTHORIZATION) {
            value.set_sensitive(true);
        }
        let config = &self.config;
        let started = Started::now();
        // The nonce a DPoP answer carries ahead of the rotation (RFC 9449 §8.2).
        #[allow(unused_mut)]
        let mut next_nonce: Option<HeaderValue> = None;
        #[cfg(feature = "dpop")]
        let checked = match &config.dpop {
            None => None,
            Some(dpop) => Some(
                dpop_validation(&*self.validator, dpop, &req, config.max_len).map(
                    |(validation, nonce)| {
                        next_nonce = nonce;
                        validation
                    },
                ),
            ),
        };
        #[cfg(not(feature = "dpop"))]
        let checked: Option<Result<ValidationFuture<V::Claims>, Rejection>> = None;
        let parsed = match checked {
            Some(checked) => checked,
            None => bearer_token(req.headers(), config.max_len).map(|t| self.validator.validate(t)),
        };
        #[cfg(feature = "mtls")]
        let parsed = match &config.mtls {
            None => parsed,
            Some(mtls) => {
                parsed.and_then(|validation| bind_certificate(mtls, &mut req, validation))
            }
        };
        let validation = match parsed {
            Ok(validation) => validation,
            Err(Rejection::Missing) if config.anonymous => {
                metrics::validation(Err(&Rejection::Missing), true, started);
                config.mark(&mut req);
                return ResponseFuture::calling(self.inner.call(req));
            }
            Err(rejection) => {
                return ResponseFuture::rejected(&rejection, &req, &config.challenge, started)
            }
        };
        match validation.now_or_pending() {
            Ok(Ok(claims)) => {
                metrics::validation(Ok(()), false, started);
                req.extensions_mut().insert(Verified(claims));
                config.mark(&mut req);
                ResponseFuture::calling(self.inner.call(req)).with_nonce(next_nonce)
            }
            Ok(Err(rejection)) => {
                ResponseFuture::rejected(&rejection, &req, &config.challenge, started)
            }
            Err(pending) => {
                // The service was made ready for this request: take that one along
                // and leave a clone in its place.
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Validating {
                        validation: pending,
                        waiting: Some(Box::new((service, req, Arc::clone(config), started))),
                    },
                    next_nonce,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`RequireBearer`].
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, C>,
        // A `DPoP-Nonce` for a successful answer.
        next_nonce: Option<HeaderValue>,
    }
}

type Waiting<S, B> = Option<Box<(S, Request<B>, Arc<Config>, Started)>>;

pin_project! {
    #[project = StateProj]
    enum State<S, B, C>
    where
        S: Service<Request<B>>,
    {
        Validating { validation: ValidationFuture<C>, waiting: Waiting<S, B> },
        Calling { #[pin] future: S::Future },
        Rejected { response: Option<S::Response> },
    }
}

impl<S, B, C, ResBody> ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
{
    fn calling(future: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { future },
            next_nonce: None,
        }
    }

    fn with_nonce(mut self, nonce: Option<HeaderValue>) -> Self {
        self.next_nonce = nonce;
        self
    }

    fn rejected(
        rejection: &Rejection,
        req: &Request<B>,
        challenge: &ChallengeParams,
        started: Started,
    ) -> Self {
        metrics::validation(Err(rejection), false, started);
        tracing::debug!(%rejection, "bearer authentication refused");
        ResponseFuture {
            state: State::Rejected {
                response: Some(challenge.respond(rejection, req.headers())),
            },
            next_nonce: None,
        }
    }
}

impl<S, B, C, ResBody> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    ResBody: Default,
    C: Clone + Send + Sync + 'static,
{
    type Output = Result<Response<ResBody>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Validating {
                    validation,
                    waiting,
                } => {
                    let outcome = ready!(Pin::new(validation).poll(cx));
                    let (mut service, mut req, config, started) =
                        *waiting.take().expect("polled after completion");
                    metrics::validation(outcome.as_ref().map(|_| ()), false, started);
                    let next = match outcome {
                        Ok(claims) => {
                            req.extensions_mut().insert(Verified(claims));
                            config.mark(&mut req);
                            State::Calling {
                                future: service.call(req),
                            }
                        }
                        Err(rejection) => {
                            tracing::debug!(%rejection, "bearer authentication refused");
                            State::Rejected {
                                response: Some(config.challenge.respond(&rejection, req.headers())),
                            }
                        }
                    };
                    this.state.set(next);
                }
                StateProj::Calling { future } => {
                    let mut answer = ready!(future.poll(cx));
                    if let (Ok(res), Some(nonce)) = (&mut answer, this.next_nonce.take()) {
                        res.headers_mut().insert(DPOP_NONCE_HEADER, nonce);
                    }
                    return Poll::Ready(answer);
                }
                StateProj::Rejected { response } => {
                    return Poll::Ready(Ok(response.take().expect("polled after completion")));
                }
            }
        }
    }
}

/// `DPoP-Nonce` (RFC 9449 §8), also without the `dpop` feature, where no answer
/// carries it.
const DPOP_NONCE_HEADER: http::HeaderName = http::HeaderName::from_static("dpop-nonce");

impl<S, B, C> fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Requires the verified claims (of type `C`) to grant every one of `scopes`;
/// compose it after [`RequireBearerLayer`], on the routes that need it.
///
/// Missing scopes: `403` `insufficient_scope` with `scope="…"` (gRPC
/// `PERMISSION_DENIED`). No verified claims at all (an anonymous request): `401`.
pub struct RequireScopeLayer<C> {
    scopes: Arc<[String]>,
    /// `None`: the realm of the `RequireBearerLayer` in front.
    realm: Option<Arc<str>>,
    _claims: std::marker::PhantomData<fn() -> C>,
}

impl<C> Clone for RequireScopeLayer<C> {
    fn clone(&self) -> Self {
        RequireScopeLayer {
            scopes: Arc::clone(&self.scopes),
            realm: self.realm.clone(),
            _claims: std::marker::PhantomData,
        }
    }
}

impl<C> fmt::Debug for RequireScopeLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScopeLayer")
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl<C: ScopedClaims + Send + Sync + 'static> RequireScopeLayer<C> {
    /// Requires every one of `scopes`.
    pub fn new<T: Into<String>>(scopes: impl IntoIterator<Item = T>) -> Self {
        RequireScopeLayer {
            scopes: scopes.into_iter().map(Into::into).collect(),
            realm: None,
            _claims: std::marker::PhantomData,
        }
    }

    /// The realm named in challenges. By default the realm of the
    /// [`RequireBearerLayer`] the request went through (`"api"` without one).
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(Arc::from(realm.into()));
        self
    }
}

impl<S, C> Layer<S> for RequireScopeLayer<C> {
    type Service = RequireScope<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireScope {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequireScopeLayer`].
pub struct RequireScope<S, C> {
    inner: S,
    layer: RequireScopeLayer<C>,
}

impl<S: Clone, C> Clone for RequireScope<S, C> {
    fn clone(&self) -> Self {
        RequireScope {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for RequireScope<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireScope")
            .field("inner", &self.inner)
            .field("scopes", &self.layer.scopes)
            .finish()
    }
}

impl<S, C, B, ResBody> Service<Request<B>> for RequireScope<S, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    C: ScopedClaims + Send + Sync + 'static,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ScopeFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let rejection = match req.extensions().get::<Verified<C>>() {
            None => Some(Rejection::Missing),
            Some(Verified(claims)) => {
                let missing: Vec<&str> = self
                    .layer
                    .scopes
                    .iter()
                    .map(String::as_str)
                    .filter(|s| !claims.has_scope(s))
                    .collect();
                (!missing.is_empty())
                    .then(|| Rejection::InsufficientScope(self.layer.scopes.join(" ")))
            }
        };
        metrics::scope_check(rejection.as_ref());
        match rejection {
            None => ScopeFuture::calling(self.inner.call(req)),
            Some(rejection) => {
                ScopeFuture::rejected(refuse(&req, self.layer.realm.as_deref(), &rejection))
            }
        }
    }
}

/// The answer of a route-level requirement (scope, step-up) that `req` does not meet:
/// naming `realm` if given, else the realm of the [`RequireBearerLayer`] in front, and
/// that layer's resource metadata.
pub(crate) fn refuse<B, ResBody: Default>(
    req: &Request<B>,
    realm: Option<&str>,
    rejection: &Rejection,
) -> Response<ResBody> {
    let params = realm_of(req.extensions());
    match realm {
        Some(realm) => {
            rejection.response_for_with(req.headers(), realm, params.resource_metadata.as_deref())
        }
        None => params.respond(rejection, req.headers()),
    }
}

pin_project! {
    /// The response future of [`RequireScope`] and
    /// [`RequireStepUp`](super::RequireStepUp).
    pub struct ScopeFuture<F, ResBody> {
        #[pin]
        state: ScopeState<F, ResBody>,
    }
}

impl<F, ResBody> ScopeFuture<F, ResBody> {
    pub(crate) fn calling(future: F) -> Self {
        ScopeFuture {
            state: ScopeState::Calling { future },
        }
    }

    pub(crate) fn rejected(response: Response<ResBody>) -> Self {
        ScopeFuture {
            state: ScopeState::Rejected {
                response: Some(response),
            },
        }
    }
}

pin_project! {
    #[project = ScopeProj]
    enum ScopeState<F, ResBody> {
        Calling { #[pin] future: F },
        Rejected { response: Option<Response<ResBody>> },
    }
}

impl<F, ResBody> fmt::Debug for ScopeFuture<F, ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeFuture").finish_non_exhaustive()
    }
}

impl<F, E, ResBody> Future for ScopeFuture<F, ResBody>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            ScopeProj::Calling { future } => future.poll(cx),
            ScopeProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

/// The validation of a request to a layer that accepts DPoP: the proof checked
/// and its `jti` recorded in one step, first (no validator call for a bad or
/// replayed proof), then the token, then its binding. With the validation, the
/// `DPoP-Nonce` a successful answer carries, if any.
///
/// The record comes before the token's validation, which may take seconds (an
/// introspection, a key fetch): a second request with the same proof during it
/// finds the record. A request refused after its record (the token, or its
/// binding) forgets it ([`ReplayCache::forget`](crate::server::dpop::ReplayCache::forget)):
/// the proof is tied to that token by `ath`, so it can still pass at most once,
/// and proofs sent with junk tokens cannot fill the replay cache.
#[cfg(feature = "dpop")]
fn dpop_validation<V: Validator, B>(
    validator: &V,
    dpop: &Arc<DpopConfig>,
    req: &Request<B>,
    max_len: usize,
) -> Result<(ValidationFuture<V::Claims>, Option<HeaderValue>), Rejection> {
    let (sent_as_dpop, token) = dpop_or_bearer_token(req.headers(), max_len)?;
    let Some(proof) = sent_as_dpop
        .then(|| {
            dpop.verifier
                .check(req.method(), req.uri(), req.headers(), token)
        })
        .transpose()
        .map_err(Rejection::from)?
    else {
        return Ok((bound_claims(dpop, validator.validate(token), None), None));
    };
    let next_nonce = proof
        .next_nonce()
        .and_then(|n| HeaderValue::from_str(n).ok());
    let validation = match dpop.verifier.record(&proof).now_or_pending() {
        Ok(Ok(())) => bound_claims(dpop, validator.validate(token), Some(proof)),
        Ok(Err(e)) => return Err(e.into()),
        Err(recording) => {
            let dpop = Arc::clone(dpop);
            // A validation that waits is polled only once the record is made: a
            // replay costs no introspection.
            let validation = validator.validate(token);
            ValidationFuture::pending(async move {
                recording.await.map_err(Rejection::from)?;
                bound_claims(&dpop, validation, Some(proof)).await
            })
        }
    };
    Ok((validation, next_nonce))
}

/// The claims of `validation`, once their binding to `proof` (recorded already)
/// holds.
#[cfg(feature = "dpop")]
fn bound_claims<C: Clone + Send + Sync + 'static>(
    dpop: &Arc<DpopConfig>,
    validation: ValidationFuture<C>,
    proof: Option<CheckedProof>,
) -> ValidationFuture<C> {
    let judged =
        |dpop: &DpopConfig, validated: Result<C, Rejection>, proof: Option<&CheckedProof>| {
            let bound = validated.and_then(|claims| bind(dpop, claims, proof));
            if let (Err(_), Some(proof)) = (&bound, proof) {
                dpop.verifier.forget(proof);
            }
            bound
        };
    match validation.now_or_pending() {
        Ok(validated) => ValidationFuture::ready(judged(dpop, validated, proof.as_ref())),
        Err(pending) => {
            let dpop = Arc::clone(dpop);
            ValidationFuture::pending(async move {
                let validated = pending.await;
                judged(&dpop, validated, proof.as_ref())
            })
        }
    }
}

/// Accepts `claims` if their token is bound to the proof's key, or, without a
/// proof, if the token is not DPoP-bound.
#[cfg(feature = "dpop")]
fn bind<C: 'static>(
    dpop: &DpopConfig,
    claims: C,
    proof: Option<&CheckedProof>,
) -> Result<C, Rejection> {
    let jkt = (dpop.jkt_of)(&claims);
    match proof {
        None => match jkt {
            Some(_) => Err(DpopError::BoundTokenAsBearer.into()),
            None => Ok(claims),
        },
        Some(proof) => match dpop.verifier.confirm(proof, jkt) {
            Ok(()) => Ok(claims),
            Err(e) => Err(e.into()),
        },
    }
}

/// The validation of a request to a layer that checks certificate-bound tokens: the
/// certificate read first (a malformed trusted header is refused before anything
/// else), then the token's binding once its claims are known. A certificate from a
/// trusted header goes into the extensions, where handlers find it as they would
/// the connection's.
#[cfg(feature = "mtls")]
fn bind_certificate<C: Clone + Send + Sync + 'static, B>(
    mtls: &Arc<MtlsConfig>,
    req: &mut Request<B>,
    validation: ValidationFuture<C>,
) -> Result<ValidationFuture<C>, Rejection> {
    let presented = mtls.binding.certificate_of(req)?;
    if mtls.binding.is_trusted_header() {
        match &presented {
            Some(cert) => req.extensions_mut().insert(cert.clone()),
            // Not the proxy's own certificate, should its connection have one.
            None => req
                .extensions_mut()
                .remove::<super::mtls::ClientCertificate>(),
        };
    }
    fn confirm<C: 'static>(
        mtls: &MtlsConfig,
        claims: C,
        presented: Option<&super::mtls::ClientCertificate>,
    ) -> Result<C, Rejection> {
        mtls.binding
            .confirm((mtls.x5t_of)(&claims), presented)
            .map(|()| claims)
    }
    Ok(match validation.now_or_pending() {
        Ok(Ok(claims)) => ValidationFuture::ready(confirm(mtls, claims, presented.as_ref())),
        Ok(Err(rejection)) => ValidationFuture::ready(Err(rejection)),
        Err(pending) => {
            let mtls = Arc::clone(mtls);
            ValidationFuture::pending(async move {
                let claims = pending.await?;
                confirm(&mtls, claims, presented.as_ref())
            })
        }
    })
}
