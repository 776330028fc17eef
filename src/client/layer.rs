//! [`AuthorizeLayer`] and [`Authorize`]: put the authorizer's credential on every
//! request; on `401` tell the authorizer and, where the request can be replayed,
//! retry it once with a fresh credential.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::WWW_AUTHENTICATE;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::authorizer::{Authorizer, Credential, CredentialFuture, Target};
use super::step_up::StepUpChallenge;
use crate::transport::clear_text_refusal;
use crate::{BoxError, Error};

/// The error of an [`Authorize`] service: no credential could be had, or the inner
/// service failed.
///
/// Match on it, or ask [`credential_error`](Self::credential_error):
///
/// ```no_run
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_bearer::client::{AuthorizeError, AuthorizeLayer, Refreshing, TokenEndpoint};
///
/// # async fn run(hyper: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Full<bytes::Bytes>>) -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?.client_id("svc");
/// let client = ServiceBuilder::new()
///     .layer(AuthorizeLayer::new(Refreshing::new(endpoint.client_credentials())))
///     .service(hyper);
/// let req = http::Request::get("https://api.example.com/items").body(Default::default()).unwrap();
/// match client.oneshot(req).await {
///     Ok(res) => println!("{}", res.status()),
///     // The request was not sent: log in again, or retry later.
///     Err(AuthorizeError::Credential(tower_bearer::Error::InvalidGrant(_))) => println!("log in again"),
///     Err(AuthorizeError::Credential(e)) => println!("no token: {e}"),
///     Err(e) => println!("the request failed: {e}"),
/// }
/// # Ok(()) }
/// ```
///
/// It is an `std::error::Error + Send + Sync`, so it converts into a [`BoxError`]
/// where a stack wants one (tonic's `Channel`, `?` in a function returning a boxed
/// error). Its `Display` and `source` are those of the error it holds. Once boxed,
/// [`Error::find`] digs the authorizer's error back out (from a tonic `Status` too).
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthorizeError {
    /// The authorizer could not give a credential (the token endpoint is down, the
    /// refresh token was refused, …): the request was not sent.
    Credential(Error),
    /// The inner service failed (connection refused, timeout, …).
    Service(BoxError),
}

impl AuthorizeError {
    /// The authorizer's error, when no credential could be had.
    pub fn credential_error(&self) -> Option<&Error> {
        match self {
            AuthorizeError::Credential(e) => Some(e),
            AuthorizeError::Service(_) => None,
        }
    }

    /// The inner service's error, when it failed.
    pub fn service_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            AuthorizeError::Service(e) => Some(&**e),
            AuthorizeError::Credential(_) => None,
        }
    }

    /// The error it holds, boxed: the authorizer's [`Error`] or the inner service's
    /// own error (to downcast to its type, as before the layer was added).
    pub fn into_inner(self) -> BoxError {
        match self {
            AuthorizeError::Credential(e) => Box::new(e),
            AuthorizeError::Service(e) => e,
        }
    }
}

impl From<Error> for AuthorizeError {
    fn from(e: Error) -> Self {
        AuthorizeError::Credential(e)
    }
}

impl fmt::Display for AuthorizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthorizeError::Credential(e) => fmt::Display::fmt(e, f),
            AuthorizeError::Service(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl std::error::Error for AuthorizeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AuthorizeError::Credential(e) => e.source(),
            AuthorizeError::Service(e) => e.source(),
        }
    }
}

/// Decides whether a request can be sent a second time after a `401`, and makes
/// the copy to send.
pub trait Replay<B> {
    /// A copy of `req` to send again if the first answer is `401`, or `None`.
    /// Called before the request is sent.
    fn replay(&self, req: &Request<B>) -> Option<Request<B>>;
}

/// Never replays: a `401` still invalidates the credential, and is returned; the
/// next request carries a fresh one. Works with every body type and costs nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoReplay;

impl<B> Replay<B> for NoReplay {
    fn replay(&self, _req: &Request<B>) -> Option<Request<B>> {
        None
    }
}

/// Replays requests whose body is `Clone` (`Full<Bytes>`, `Empty`, `String`, …).
#[derive(Clone, Copy, Debug, Default)]
pub struct ReplayClone;

impl<B: Clone> Replay<B> for ReplayClone {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        let mut copy = Request::new(req.body().clone());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

impl<B, F: Fn(&Request<B>) -> Option<Request<B>>> Replay<B> for F {
    fn replay(&self, req: &Request<B>) -> Option<Request<B>> {
        self(req)
    }
}

/// Adds a credential from an [`Authorizer`] to every request.
///
/// ```
/// use tower::ServiceBuilder;
/// use tower_bearer::client::{AuthorizeLayer, StaticToken};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let layer = AuthorizeLayer::new(StaticToken::bearer("t0ken")?)
///     // retry once after a 401, for requests with a cloneable body
///     .retry_unauthorized();
/// # let _ = ServiceBuilder::new().layer(layer);
/// # Ok(()) }
/// ```
///
/// A `401` with a `Bearer` challenge (or none), or an answer with `grpc-status: 16`,
/// calls [`Authorizer::on_unauthorized`] with the credential that was sent. A step-up
/// challenge (RFC 9470 `insufficient_user_authentication`) does not: the token is
/// good, and the answer is returned with a [`StepUpChallenge`] in its extensions
/// (`res.extensions().get::<StepUpChallenge>()`). By default
/// the `401` is then returned and the next request carries a fresh credential; with
/// [`retry_unauthorized`](Self::retry_unauthorized) (bodies that are `Clone`) or
/// [`replay_with`](Self::replay_with) the request is sent once more with a fresh one.
///
/// Errors: the service's error type is [`AuthorizeError`]: the authorizer's typed
/// [`Error`] when no credential could be had (the request is not sent), or the inner
/// service's error.
///
/// Clear text: a request whose URI names a host that is not loopback (an address in
/// `127.0.0.0/8` or `::1`, or the name `localhost` itself; not `app.localhost`, which
/// the resolver may ask DNS for) and whose scheme is not `https` (`http://`, any
/// other scheme a plain connector would send as is, or an authority-form `CONNECT`)
/// fails with [`Error::Configuration`] and is not sent (RFC 6750 §5.3), unless
/// [`allow_insecure_http`](Self::allow_insecure_http) was asked for. A relative URI
/// (tonic's `Grpc::new` sends the path only; the `Channel` adds its endpoint's origin)
/// passes: its transport is the inner service's, so give a tonic `Endpoint` an
/// `https://` URL, or accept h2c only where the hop is protected otherwise.
#[derive(Clone, Debug)]
pub struct AuthorizeLayer<A, R = NoReplay> {
    authorizer: A,
    replay: R,
    allow_insecure_http: bool,
}

impl<A: Authorizer + Clone> AuthorizeLayer<A> {
    /// A layer that authorizes requests with `authorizer`.
    pub fn new(authorizer: A) -> Self {
        AuthorizeLayer {
            authorizer,
            replay: NoReplay,
            allow_insecure_http: false,
        }
    }
}

impl<A, R> AuthorizeLayer<A, R> {
    /// After a `401`, sends the request again once with a fresh credential; the
    /// request body must be `Clone`.
    pub fn retry_unauthorized(self) -> AuthorizeLayer<A, ReplayClone> {
        self.replay_with(ReplayClone)
    }

    /// After a `401`, sends again the copy that `replay` made, if it made one.
    pub fn replay_with<R2>(self, replay: R2) -> AuthorizeLayer<A, R2> {
        AuthorizeLayer {
            authorizer: self.authorizer,
            replay,
            allow_insecure_http: self.allow_insecure_http,
        }
    }

    /// Puts credentials on `http://` requests to any host. By default a request
    /// whose URI names a host that is not loopback (`127.0.0.0/8`, `::1`,
    /// `localhost`) with a scheme other than `https` fails with [`Error::Configuration`]
    /// without being sent: a bearer token must travel over TLS (RFC 6750 §5.3,
    /// RFC 6749 §10.3). Ask for this only where the clear-text hop is protected
    /// otherwise (a service mesh's mTLS sidecar, h2c inside one host).
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }
}

impl<S, A: Clone, R: Clone> Layer<S> for AuthorizeLayer<A, R> {
    type Service = Authorize<S, A, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize {
            inner,
            authorizer: self.authorizer.clone(),
            replay: self.replay.clone(),
            allow_insecure_http: self.allow_insecure_http,
        }
    }
}

/// The service made by [`AuthorizeLayer`].
#[derive(Clone, Debug)]
pub struct Authorize<S, A, R = NoReplay> {
    inner: S,
    authorizer: A,
    replay: R,
    allow_insecure_http: bool,
}

impl<S, A: Authorizer + Clone> Authorize<S, A> {
    /// Wraps `inner`; the same as `AuthorizeLayer::new(authorizer).layer(inner)`.
    pub fn new(inner: S, authorizer: A) -> Self {
        Authorize {
            inner,
            authorizer,
            replay: NoReplay,
            allow_insecure_http: false,
        }
    }
}

impl<S, A, R> Authorize<S, A, R> {
    /// The authorizer.
    pub fn authorizer(&self) -> &A {
        &self.authorizer
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Puts credentials on `http://` requests to any host; see
    /// [`AuthorizeLayer::allow_insecure_http`].
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }
}

impl<S, A, R, B, ResBody> Service<Request<B>> for Authorize<S, A, R>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    A: Authorizer + Clone,
    R: Replay<B>,
{
    type Response = Response<ResBody>;
    type Error = AuthorizeError;
    type Future = ResponseFuture<S, A, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| AuthorizeError::Service(e.into()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // RFC 6750 §5.3: no credential on clear text to a remote host, unless asked.
        // `https` is one enum compare; only other schemes look further.
        let uri = req.uri();
        if !self.allow_insecure_http && uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            if let Some(error) = clear_text_refusal(uri.scheme_str(), uri.host()) {
                return ResponseFuture::failed(error);
            }
        }
        // A credential that never changes goes on as is: no future, nothing kept.
        if let Some(credential) = self.authorizer.fixed_credential() {
            credential.put_on(req.headers_mut());
            return ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(req),
                },
                authorizer: None,
                sent: Sent::Unkept,
                waiting: None,
                replay: None,
            };
        }
        // An authorizer that hears no answers (a static credential) costs the future
        // nothing: no copy of it, of the credential sent, or of the request.
        let observes = self.authorizer.observes_answers();
        let replay = if observes {
            self.replay
                .replay(&req)
                .map(|copy| Box::new((self.inner.clone(), copy)))
        } else {
            None
        };
        match self
            .authorizer
            .credential_for(Target::of(&req))
            .now_or_pending()
        {
            Ok(Ok(credential)) => {
                let sent = set(&mut req, credential, observes);
                ResponseFuture {
                    state: State::Calling {
                        future: self.inner.call(req),
                    },
                    authorizer: observes.then(|| self.authorizer.clone()),
                    sent,
                    waiting: None,
                    replay,
                }
            }
            Ok(Err(error)) => ResponseFuture::failed(error),
            Err(pending) => {
                // The service was made ready for this request: take that instance
                // along, and leave a clone in its place.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Authorizing {
                        credential: Box::new(pending),
                        service_ready: true,
                    },
                    authorizer: observes.then(|| self.authorizer.clone()),
                    sent: Sent::Nothing,
                    waiting: Some(Box::new((ready, req))),
                    replay,
                }
            }
        }
    }
}

/// What the response future remembers of the credential it sent.
enum Sent {
    /// None was sent.
    Nothing,
    /// One was, and the authorizer hears no answers.
    Unkept,
    /// A credential without a proof: its value, to report the answer with.
    Value(HeaderValue),
    /// One with a DPoP proof, whole (the nonce of the answer is reported with it):
    /// boxed, as a proof is made per request anyway, so that the common future stays
    /// small.
    WithProof(Box<Credential>),
}

impl Sent {
    /// The credential's value and, when it carried a proof, the whole credential.
    fn parts(&self) -> Option<(&HeaderValue, Option<&Credential>)> {
        match self {
            Sent::Nothing | Sent::Unkept => None,
            Sent::Value(value) => Some((value, None)),
            Sent::WithProof(credential) => Some((&credential.value, Some(credential))),
        }
    }
}

/// Puts the credential on the request; returns what to remember of it.
fn set<B>(req: &mut Request<B>, credential: Option<Credential>, keep: bool) -> Sent {
    match credential {
        None => Sent::Nothing,
        Some(credential) if keep && credential.dpop.is_none() => {
            let value = credential.value.clone();
            credential.apply(req.headers_mut());
            Sent::Value(value)
        }
        Some(credential) if keep => {
            credential.clone().apply(req.headers_mut());
            Sent::WithProof(Box::new(credential))
        }
        Some(credential) => {
            credential.apply(req.headers_mut());
            Sent::Unkept
        }
    }
}

/// The `DPoP-Nonce` response header (RFC 9449 §8).
pub(crate) const DPOP_NONCE: HeaderName = HeaderName::from_static("dpop-nonce");

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// What an answer says of the credential it was sent with.
pub(crate) enum Verdict {
    /// Not a refusal: a success, another error, or a `401` asking for another scheme
    /// (a fresh credential of this kind cannot help).
    Kept,
    /// `401` with a `Bearer` challenge or none at all, or gRPC `UNAUTHENTICATED` in
    /// the headers (a trailers-only answer): the credential was refused.
    Refused,
    /// A step-up challenge (RFC 9470): the token is good, the login behind it is not
    /// enough, and dropping it for a refreshed one would only get the same answer.
    StepUp(StepUpChallenge),
    /// `401` with a `DPoP` challenge `use_dpop_nonce` and a `DPoP-Nonce` header
    /// (RFC 9449 §8): the token is good, the proof lacked the server's nonce; the
    /// request is worth one more try with a proof that carries it.
    UseNonce,
}

/// Judges an answer. The common case, a success, costs one header lookup
/// (`grpc-status`, for gRPC's trailers-only answers).
pub(crate) fn verdict(status: StatusCode, headers: &HeaderMap) -> Verdict {
    let http_401 = status == StatusCode::UNAUTHORIZED;
    let grpc_16 = || {
        headers
            .get(&GRPC_STATUS)
            .is_some_and(|s| s.as_bytes() == b"16")
    };
    if !(http_401 || grpc_16()) {
        return Verdict::Kept;
    }
    if let Some(step_up) = StepUpChallenge::from_headers(headers) {
        return Verdict::StepUp(step_up);
    }
    if !http_401 {
        return Verdict::Refused;
    }
    let mut challenges = headers.get_all(WWW_AUTHENTICATE).iter().peekable();
    if challenges.peek().is_none() {
        return Verdict::Refused;
    }
    let mut refused = false;
    for c in challenges {
        let words = || c.as_bytes().split(|b| *b == b',' || *b == b' ');
        if words().any(|word| word.eq_ignore_ascii_case(b"bearer")) {
            refused = true;
        } else if words().any(|word| word.eq_ignore_ascii_case(b"dpop")) {
            // RFC 9449 §7.1: `invalid_token` refuses a DPoP token as it does a bearer
            // one; `use_dpop_nonce` asks for a proof with the server's nonce.
            let has = |needle: &[u8]| c.as_bytes().windows(needle.len()).any(|w| w == needle);
            if has(b"use_dpop_nonce") && headers.contains_key(DPOP_NONCE) {
                return Verdict::UseNonce;
            }
            refused |= has(b"invalid_token");
        }
    }
    if refused {
        Verdict::Refused
    } else {
        Verdict::Kept
    }
}

pin_project! {
    /// The response future of [`Authorize`].
    pub struct ResponseFuture<S, A, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S::Future>,
        // The authorizer, when it hears answers.
        authorizer: Option<A>,
        // The credential on the request in flight.
        sent: Sent,
        // A request waiting for its credential, with the service to send it.
        waiting: Option<Box<(S, Request<B>)>>,
        // A copy to send once more after a 401, with a service to send it.
        replay: Option<Box<(S, Request<B>)>>,
    }
}

impl<S, A, B> ResponseFuture<S, A, B>
where
    S: Service<Request<B>>,
{
    /// A request that is not sent: no credential could be put on it.
    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed {
                error: Some(AuthorizeError::Credential(error)),
            },
            authorizer: None,
            sent: Sent::Nothing,
            waiting: None,
            replay: None,
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // Boxed: only the slow path and the retry come here, and a small state keeps
        // the common future small.
        Authorizing { credential: Box<CredentialFuture>, service_ready: bool },
        Calling { #[pin] future: F },
        Failed { error: Option<AuthorizeError> },
    }
}

impl<S, A, B, ResBody> Future for ResponseFuture<S, A, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    A: Authorizer,
{
    type Output = Result<Response<ResBody>, AuthorizeError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Authorizing {
                    credential,
                    service_ready,
                } => {
                    let credential = match ready!(Pin::new(credential).poll(cx)) {
                        Ok(c) => c,
                        Err(e) => return Poll::Ready(Err(AuthorizeError::Credential(e))),
                    };
                    let (service, _) = &mut **this.waiting.as_mut().expect("a waiting request");
                    if !*service_ready {
                        ready!(service.poll_ready(cx))
                            .map_err(|e| AuthorizeError::Service(e.into()))?;
                    }
                    let (mut service, mut req) = *this.waiting.take().expect("a waiting request");
                    *this.sent = set(&mut req, credential, this.authorizer.is_some());
                    this.state.set(State::Calling {
                        future: service.call(req),
                    });
                }
                StateProj::Calling { future } => {
                    let mut res =
                        ready!(future.poll(cx)).map_err(|e| AuthorizeError::Service(e.into()))?;
                    let verdict = verdict(res.status(), res.headers());
                    // The common answer to an authorizer that hears none: nothing
                    // more to do.
                    if this.authorizer.is_none() && matches!(verdict, Verdict::Kept) {
                        return Poll::Ready(Ok(res));
                    }
                    let (refused, use_nonce) = match verdict {
                        Verdict::Refused => (true, false),
                        Verdict::StepUp(step_up) => {
                            res.extensions_mut().insert(step_up);
                            (false, false)
                        }
                        Verdict::UseNonce => (false, true),
                        Verdict::Kept => (false, false),
                    };
                    let kept = std::mem::replace(this.sent, Sent::Nothing);
                    if refused && !matches!(kept, Sent::Nothing) {
                        crate::metrics::unauthorized();
                    }
                    let (Some((sent, with_proof)), Some(authorizer)) =
                        (kept.parts(), this.authorizer.as_ref())
                    else {
                        return Poll::Ready(Ok(res));
                    };
                    // Only a request with a proof has a use for a nonce (and a bearer
                    // answer pays no lookup for it).
                    if let Some((credential, nonce)) =
                        with_proof.and_then(|c| Some((c, res.headers().get(DPOP_NONCE)?)))
                    {
                        authorizer.on_dpop_nonce(credential, nonce);
                    }
                    // A nonce can help only a request that carried a proof.
                    let use_nonce = use_nonce && with_proof.is_some();
                    if !refused && !use_nonce {
                        if !res.status().is_server_error() {
                            authorizer.on_accepted(sent);
                        }
                        return Poll::Ready(Ok(res));
                    }
                    if refused {
                        authorizer.on_unauthorized(sent);
                    }
                    let Some(copy) = this.replay.take() else {
                        return Poll::Ready(Ok(res));
                    };
                    let credential = match authorizer
                        .credential_for(Target::of(&copy.1))
                        .now_or_pending()
                    {
                        // Replaying with the credential just refused, with none, or
                        // after failing to get one cannot help: the 401 stands. After
                        // `use_dpop_nonce` the token is the same, the proof is new.
                        Ok(Ok(Some(fresh))) if use_nonce || fresh.value != *sent => {
                            CredentialFuture::ready(Ok(Some(fresh)))
                        }
                        Ok(_) => return Poll::Ready(Ok(res)),
                        Err(pending) => pending,
                    };
                    tracing::debug!(
                        use_nonce,
                        "401 answered; retrying once with a fresh credential"
                    );
                    *this.waiting = Some(copy);
                    this.state.set(State::Authorizing {
                        credential: Box::new(credential),
                        service_ready: false,
                    });
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().expect("polled after completion")));
                }
            }
        }
    }
}

impl<S, A, B> fmt::Debug for ResponseFuture<S, A, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(challenges: &[&str], nonce: bool) -> &'static str {
        let mut headers = HeaderMap::new();
        for c in challenges {
            headers.append(WWW_AUTHENTICATE, c.parse().unwrap());
        }
        if nonce {
            headers.insert(DPOP_NONCE, "n-1".parse().unwrap());
        }
        match verdict(StatusCode::UNAUTHORIZED, &headers) {
            Verdict::Kept => "kept",
            Verdict::Refused => "refused",
            Verdict::StepUp(_) => "step-up",
            Verdict::UseNonce => "use-nonce",
        }
    }

    #[test]
    fn dpop_challenges_are_told_apart() {
        let nonce = r#"DPoP algs="ES256", error="use_dpop_nonce", error_description="x""#;
        assert_eq!(judge(&[nonce], true), "use-nonce");
        // Without the nonce itself, there is nothing to retry with.
        assert_eq!(judge(&[nonce], false), "kept");
        let invalid = r#"DPoP algs="ES256", error="invalid_token""#;
        assert_eq!(judge(&[invalid], false), "refused");
        let proof = r#"DPoP algs="ES256", error="invalid_dpop_proof""#;
        assert_eq!(
            judge(&[proof], false),
            "kept",
            "a new proof, not a new token"
        );
        assert_eq!(judge(&[r#"DPoP algs="ES256""#], false), "kept");
        assert_eq!(
            judge(&[r#"Bearer realm="api""#, r#"DPoP algs="ES256""#], false),
            "refused"
        );
        assert_eq!(judge(&[], false), "refused");
        assert_eq!(judge(&[r#"Basic realm="x""#], false), "kept");
    }
}
