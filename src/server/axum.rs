//! axum extractors for the verified claims (feature `axum`).
//!
//! `Verified<C>` extracts the claims [`RequireBearerLayer`](super::RequireBearerLayer)
//! verified; with no verified claims (the layer is missing, or the request came in
//! anonymously) it answers `401` with a Bearer challenge, as the layer would.
//! `Option<Verified<C>>` gives `None` instead, for routes open to anonymous callers.
//!
//! ```
//! use axum::{routing::get, Router};
//! use tower_bearer::server::{RequireBearerLayer, StaticTokens, Verified};
//!
//! async fn whoami(Verified(who): Verified<&'static str>) -> String {
//!     format!("you are {who}")
//! }
//!
//! async fn hello(who: Option<Verified<&'static str>>) -> String {
//!     match who {
//!         Some(Verified(who)) => format!("hello {who}"),
//!         None => "hello stranger".to_owned(),
//!     }
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .route("/hello", get(hello))
//!     .layer(RequireBearerLayer::new(StaticTokens::new([("t0k", "ci")])).allow_anonymous());
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use axum_core::extract::{FromRequestParts, OptionalFromRequestParts};
use axum_core::response::{IntoResponse, Response};
use http::request::Parts;

use super::layer::{realm_of, ChallengeParams};
use super::{Rejection, Verified};

/// The answer when a handler needs verified claims and the request has none: `401`
/// with a challenge naming the realm of the
/// [`RequireBearerLayer`](super::RequireBearerLayer) the request went through (`"api"`
/// without one).
#[derive(Debug)]
pub struct MissingClaims {
    grpc: bool,
    challenge: Arc<ChallengeParams>,
}

impl MissingClaims {
    /// The realm the challenge names.
    pub fn realm(&self) -> &str {
        &self.challenge.realm
    }
}

impl IntoResponse for MissingClaims {
    fn into_response(self) -> Response {
        let metadata = self.challenge.resource_metadata.as_deref();
        if self.grpc {
            Rejection::Missing.grpc_response_with(&self.challenge.realm, metadata)
        } else {
            Rejection::Missing.http_response_with(&self.challenge.realm, metadata)
        }
    }
}

impl<S, C> FromRequestParts<S> for Verified<C>
where
    S: Send + Sync,
    C: Clone + Send + Sync + 'static,
{
    type Rejection = MissingClaims;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Verified<C>>()
            .cloned()
            .ok_or_else(|| MissingClaims {
                grpc: super::is_grpc(&parts.headers),
                challenge: realm_of(&parts.extensions),
            })
    }
}

impl<S, C> OptionalFromRequestParts<S> for Verified<C>
where
    S: Send + Sync,
    C: Clone + Send + Sync + 'static,
{
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Verified<C>>().cloned())
    }
}
