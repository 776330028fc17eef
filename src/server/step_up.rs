//! [`RequireStepUpLayer`]: a route-level requirement on how, and how recently, the
//! user behind a token authenticated (RFC 9470, OAuth 2.0 Step-Up Authentication
//! Challenge Protocol).
//!
//! A token that passed [`RequireBearerLayer`](super::RequireBearerLayer) can still be
//! too weak for a sensitive route: issued after a password-only login when the
//! route wants a second factor (`acr`), or after a login hours ago when the route
//! wants a fresh one (`auth_time`). The answer is `401` with
//! `error="insufficient_user_authentication"` and the `acr_values` and/or `max_age`
//! the client passes on to the authorization server to get a token that meets them.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::layer::{refuse, ScopeFuture, Verified};
use super::{Claims, Rejection};

/// Claims that say how and when the user authenticated: what
/// [`RequireStepUpLayer`] checks.
///
/// [`Claims`] reads them from the `acr` and `auth_time` claims of a JWT access token
/// (RFC 9068 §2.2.1) and from the members of the same names of an introspection
/// answer (RFC 9470 §6.2), so the requirement holds whichever validator verified the
/// token. Implement it for claims of your own type.
pub trait AuthenticationClaims {
    /// The authentication context class reference the authentication satisfied.
    fn acr(&self) -> Option<&str>;
    /// When the user authenticated, in seconds since the Unix epoch.
    fn auth_time(&self) -> Option<u64>;
}

impl AuthenticationClaims for Claims {
    fn acr(&self) -> Option<&str> {
        self.extra.get("acr").and_then(serde_json::Value::as_str)
    }

    fn auth_time(&self) -> Option<u64> {
        let n = self.extra.get("auth_time")?.as_number()?;
        // A NumericDate may be decimal; a negative or non-finite one is no time.
        n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
                .map(|f| f as u64)
        })
    }
}

/// Requires the user's authentication behind the verified claims (of type `C`) to
/// be one of a set of `acr` values and/or no older than `max_age`; compose it after
/// [`RequireBearerLayer`](super::RequireBearerLayer), on the routes that need it
/// (with axum: `route_layer`).
///
/// Not met: `401` with `WWW-Authenticate: Bearer realm="…",
/// error="insufficient_user_authentication", error_description="…",
/// acr_values="…", max_age="…"` (only those configured), and the
/// `resource_metadata` of the layer in front (gRPC: `UNAUTHENTICATED` with the same
/// challenge). A token with no `acr` fails an `acr` requirement; one with no
/// `auth_time` fails a `max_age` requirement. No verified claims at all (an
/// anonymous request): `401` with a bare challenge. With no requirement set, every
/// verified request passes.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::post, Router};
/// use tower_bearer::server::{Claims, RequireBearerLayer, RequireStepUpLayer, from_fn};
///
/// let validator = from_fn(|_token: &str| Ok(Claims::default()));
/// let app: Router = Router::new()
///     .route("/transfer", post(|| async { "sent" }))
///     // a second factor, within the last five minutes
///     .route_layer(
///         RequireStepUpLayer::<Claims>::new()
///             .acr_values(["urn:example:mfa"])
///             .max_age(Duration::from_secs(300)),
///     )
///     .layer(RequireBearerLayer::new(validator));
/// # let _ = app;
/// ```
pub struct RequireStepUpLayer<C> {
    acr_values: Arc<[String]>,
    max_age: Option<Duration>,
    /// `None`: the realm of the `RequireBearerLayer` in front.
    realm: Option<Arc<str>>,
    _claims: std::marker::PhantomData<fn() -> C>,
}

impl<C> Clone for RequireStepUpLayer<C> {
    fn clone(&self) -> Self {
        RequireStepUpLayer {
            acr_values: Arc::clone(&self.acr_values),
            max_age: self.max_age,
            realm: self.realm.clone(),
            _claims: std::marker::PhantomData,
        }
    }
}

impl<C> fmt::Debug for RequireStepUpLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireStepUpLayer")
            .field("acr_values", &self.acr_values)
            .field("max_age", &self.max_age)
            .field("realm", &self.realm)
            .finish()
    }
}

impl<C: AuthenticationClaims + Send + Sync + 'static> Default for RequireStepUpLayer<C> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: AuthenticationClaims + Send + Sync + 'static> RequireStepUpLayer<C> {
    /// No requirement yet: add [`acr_values`](Self::acr_values) and/or
    /// [`max_age`](Self::max_age).
    pub fn new() -> Self {
        RequireStepUpLayer {
            acr_values: Arc::from([]),
            max_age: None,
            realm: None,
            _claims: std::marker::PhantomData,
        }
    }

    /// The `acr` must be one of `values` (in the challenge's `acr_values`, in this
    /// order: the authorization server reads them as a preference).
    pub fn acr_values<T: Into<String>>(mut self, values: impl IntoIterator<Item = T>) -> Self {
        self.acr_values = values.into_iter().map(Into::into).collect();
        self
    }

    /// The user must have authenticated (`auth_time`) at most `max_age` ago (whole
    /// seconds count: `max_age="…"` in the challenge).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// The realm named in challenges. By default the realm of the
    /// [`RequireBearerLayer`](super::RequireBearerLayer) the request went through.
    pub fn realm(mut self, realm: impl Into<String>) -> Self {
        self.realm = Some(Arc::from(realm.into()));
        self
    }

    /// Whether `claims` meet the requirement at `now` (seconds since the Unix
    /// epoch); the rejection to answer when they do not.
    fn check(&self, claims: &C, now: u64) -> Result<(), Rejection> {
        let acr_ok = self.acr_values.is_empty()
            || claims
                .acr()
                .is_some_and(|acr| self.acr_values.iter().any(|v| v == acr));
        // An authentication in the future (clock skew) has age zero.
        let age_ok = self.max_age.is_none_or(|max_age| {
            claims
                .auth_time()
                .is_some_and(|at| now.saturating_sub(at) <= max_age.as_secs())
        });
        if acr_ok && age_ok {
            return Ok(());
        }
        Err(Rejection::InsufficientUserAuthentication {
            acr_values: (!self.acr_values.is_empty()).then(|| self.acr_values.join(" ")),
            max_age: self.max_age.map(|d| d.as_secs()),
        })
    }
}

impl<S, C> Layer<S> for RequireStepUpLayer<C> {
    type Service = RequireStepUp<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireStepUp {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`RequireStepUpLayer`].
pub struct RequireStepUp<S, C> {
    inner: S,
    layer: RequireStepUpLayer<C>,
}

impl<S: Clone, C> Clone for RequireStepUp<S, C> {
    fn clone(&self) -> Self {
        RequireStepUp {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for RequireStepUp<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequireStepUp")
            .field("inner", &self.inner)
            .field("layer", &self.layer)
            .finish()
    }
}

impl<S, C: AuthenticationClaims + Send + Sync + 'static> RequireStepUp<S, C> {
    /// Wraps `inner`; the same as `layer.layer(inner)`.
    pub fn new(inner: S, layer: RequireStepUpLayer<C>) -> Self {
        layer.layer(inner)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl<S, C, B, ResBody> Service<Request<B>> for RequireStepUp<S, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    C: AuthenticationClaims + Send + Sync + 'static,
    ResBody: Default,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ScopeFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let verdict = match req.extensions().get::<Verified<C>>() {
            None => Err(Rejection::Missing),
            Some(Verified(claims)) => self.layer.check(claims, unix_now()),
        };
        match verdict {
            Ok(()) => ScopeFuture::calling(self.inner.call(req)),
            Err(rejection) => {
                tracing::debug!(%rejection, "step-up authentication required");
                ScopeFuture::rejected(refuse(&req, self.layer.realm.as_deref(), &rejection))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn acr_and_auth_time_are_read_from_claims() {
        let c = claims(r#"{"acr":"mfa","auth_time":1700000000.9}"#);
        assert_eq!(c.acr(), Some("mfa"));
        assert_eq!(c.auth_time(), Some(1_700_000_000));
        for bad in [
            r#"{"acr":1,"auth_time":-5}"#,
            r#"{"acr":null,"auth_time":"1700000000"}"#,
            r#"{"acr":["mfa"],"auth_time":1e300}"#,
        ] {
            let c = claims(bad);
            assert_eq!((c.acr(), c.auth_time()), (None, None), "{bad}");
        }
    }

    #[test]
    fn each_requirement_is_checked_and_named_in_the_rejection() {
        let layer = RequireStepUpLayer::<Claims>::new()
            .acr_values(["mfa", "hwk"])
            .max_age(Duration::from_secs(60));
        let now = 1_000_000;
        let fresh = format!(r#"{{"acr":"hwk","auth_time":{}}}"#, now - 60);
        assert_eq!(layer.check(&claims(&fresh), now), Ok(()));
        let future = format!(r#"{{"acr":"mfa","auth_time":{}}}"#, now + 5);
        assert_eq!(layer.check(&claims(&future), now), Ok(()));
        let refused = Err(Rejection::InsufficientUserAuthentication {
            acr_values: Some("mfa hwk".into()),
            max_age: Some(60),
        });
        for bad in [
            format!(r#"{{"acr":"pwd","auth_time":{now}}}"#),
            format!(r#"{{"acr":"mfa","auth_time":{}}}"#, now - 61),
            r#"{"acr":"mfa"}"#.to_owned(),
            format!(r#"{{"auth_time":{now}}}"#),
            format!(r#"{{"acr":"MFA","auth_time":{now}}}"#),
        ] {
            assert_eq!(layer.check(&claims(&bad), now), refused, "{bad}");
        }
        let age_only = RequireStepUpLayer::<Claims>::new().max_age(Duration::ZERO);
        assert_eq!(
            age_only.check(&claims(r#"{"acr":"x","auth_time":999999}"#), now),
            Err(Rejection::InsufficientUserAuthentication {
                acr_values: None,
                max_age: Some(0),
            })
        );
        let none = RequireStepUpLayer::<Claims>::new();
        assert_eq!(none.check(&claims("{}"), now), Ok(()));
    }
}
