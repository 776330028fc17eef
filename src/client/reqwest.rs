//! [`AuthorizeMiddleware`]: the authorizer as a reqwest-middleware middleware.

use std::fmt;

use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use super::authorizer::{Authorizer, Target};
use super::layer::{verdict, Verdict, DPOP_NONCE};
use crate::transport::clear_text_refusal;

/// Adds the credential from an [`Authorizer`] to every request of a
/// `reqwest_middleware::ClientWithMiddleware`; after a `401` it tells the authorizer
/// and, when the request can be cloned (`Request::try_clone`: any body but a stream),
/// sends it once more with a fresh credential. A step-up challenge (RFC 9470) is not
/// taken for a refused token: the answer is returned with a
/// [`StepUpChallenge`](super::StepUpChallenge) in its extensions
/// (`res.extensions().get::<StepUpChallenge>()`).
///
/// A failure to get a credential is a `reqwest_middleware::Error::Middleware` that
/// holds a [`crate::Error`]: [`Error::find_in_reqwest`](crate::Error::find_in_reqwest)
/// gives it back.
///
/// ```no_run
/// use tower_bearer::client::{AuthorizeMiddleware, Refreshing, TokenEndpoint};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?
///     .client_id("my-service")
///     .client_secret("s3cret");
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(AuthorizeMiddleware::new(Refreshing::new(endpoint.client_credentials())))
///     .build();
/// let res = client.get("https://api.example.com/items").send().await?;
/// # Ok(()) }
/// ```
pub struct AuthorizeMiddleware<A> {
    authorizer: A,
    allow_insecure_http: bool,
}

impl<A: Authorizer> AuthorizeMiddleware<A> {
    /// A middleware that authorizes requests with `authorizer`.
    pub fn new(authorizer: A) -> Self {
        AuthorizeMiddleware {
            authorizer,
            allow_insecure_http: false,
        }
    }

    /// Puts credentials on `http://` requests to any host. By default a request to
    /// an `http://` URL whose host is not loopback (`127.0.0.0/8`, `::1`,
    /// `localhost`) fails with [`Error::Configuration`](crate::Error::Configuration)
    /// without being sent: a bearer token must travel over TLS (RFC 6750 §5.3, RFC
    /// 6749 §10.3). Ask for this only where the clear-text hop is protected
    /// otherwise.
    pub fn allow_insecure_http(mut self) -> Self {
        self.allow_insecure_http = true;
        self
    }
}

impl<A: fmt::Debug> fmt::Debug for AuthorizeMiddleware<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizeMiddleware")
            .field("authorizer", &self.authorizer)
            .field("allow_insecure_http", &self.allow_insecure_http)
            .finish()
    }
}

#[async_trait::async_trait]
impl<A: Authorizer> Middleware for AuthorizeMiddleware<A> {
    async fn handle(
        &self,
        mut req: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        // RFC 6750 §5.3: no credential on clear text to a remote host, unless asked.
        if !self.allow_insecure_http {
            let url = req.url();
            if let Some(error) = clear_text_refusal(Some(url.scheme()), url.host_str()) {
                return Err(reqwest_middleware::Error::middleware(error));
            }
        }
        if let Some(fixed) = self.authorizer.fixed_credential() {
            // Nothing to ask for, keep or replay; the answer is still judged.
            fixed.put_on(req.headers_mut());
            let (res, judgement) = judged(next.run(req, extensions).await?);
            if matches!(judgement, Judgement::Refused) {
                crate::metrics::unauthorized();
            }
            return Ok(res);
        }
        let observes = self.authorizer.observes_answers();
        let replay = if observes { req.try_clone() } else { None };
        let credential = self
            .authorizer
            .credential_for(Target::url(req.method(), req.url()))
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let sent = credential.inspect(|c| c.clone().apply(req.headers_mut()));
        let (res, judgement) = judged(next.clone().run(req, extensions).await?);
        let Some(sent) = sent else { return Ok(res) };
        let refused = matches!(judgement, Judgement::Refused);
        if refused {
            crate::metrics::unauthorized();
        }
        if !observes {
            return Ok(res);
        }
        if let Some(nonce) = sent
            .dpop
            .as_ref()
            .and_then(|_| res.headers().get(DPOP_NONCE))
        {
            self.authorizer.on_dpop_nonce(&sent, nonce);
        }
        // A nonce can help only a request that carried a proof.
        let use_nonce = matches!(judgement, Judgement::UseNonce) && sent.dpop.is_some();
        if !refused && !use_nonce {
            if !res.status().is_server_error() {
                self.authorizer.on_accepted(&sent.value);
            }
            return Ok(res);
        }
        if refused {
            self.authorizer.on_unauthorized(&sent.value);
        }
        let Some(mut copy) = replay else {
            return Ok(res);
        };
        match self
            .authorizer
            .credential_for(Target::url(copy.method(), copy.url()))
            .await
        {
            // Only a different credential is worth a second try, or the same token
            // with a proof that carries the server's nonce.
            Ok(Some(fresh)) if use_nonce || fresh.value != sent.value => {
                tracing::debug!(
                    use_nonce,
                    "401 answered; retrying once with a fresh credential"
                );
                let proved = fresh.dpop.is_some();
                fresh.apply(copy.headers_mut());
                let res = next.run(copy, extensions).await?;
                if let Some(nonce) = res.headers().get(DPOP_NONCE).filter(|_| proved) {
                    self.authorizer.on_dpop_nonce(&sent, nonce);
                }
                Ok(judged(res).0)
            }
            _ => Ok(res),
        }
    }
}

/// What an answer says of the credential it was sent with.
enum Judgement {
    Kept,
    Refused,
    UseNonce,
}

/// `res`, with its [`StepUpChallenge`](super::StepUpChallenge) in its extensions if
/// it carries one, and what it says of the credential it was sent with.
fn judged(mut res: reqwest::Response) -> (reqwest::Response, Judgement) {
    match verdict(res.status(), res.headers()) {
        Verdict::Refused => (res, Judgement::Refused),
        Verdict::StepUp(step_up) => {
            res.extensions_mut().insert(step_up);
            (res, Judgement::Kept)
        }
        Verdict::UseNonce => (res, Judgement::UseNonce),
        Verdict::Kept => (res, Judgement::Kept),
    }
}
