//! The incoming side: validate `Authorization: Bearer` and answer as RFC 6750 says.
//!
//! [`RequireBearerLayer`] takes any [`Validator`]: [`StaticTokens`], a closure
//! ([`validator::from_fn`], [`from_async_fn`]), `JwtValidator` (feature `jwt`),
//! `JwksValidator` (feature `jwks`: keys from a JWKS URL or OIDC discovery, with
//! rotation), `MultiIssuer` (feature `jwks`: several issuers, picked by `iss`) or `Introspection` (feature `introspection`, RFC 7662; with `jwt`, answers
//! signed by the authorization server, RFC 9701: `IntrospectionKeys`). Wrap any of
//! them in [`VerifiedCache`] so that a repeated token costs a hash lookup. Good
//! tokens reach the service with their claims in the request extensions as
//! [`Verified`] (readable from `tonic::Request::extensions()` too); every other
//! request is answered without reaching it.
//!
//! # Quick start (axum)
//!
//! ```
//! use axum::{routing::get, Extension, Router};
//! use tower_bearer::server::{RequireBearerLayer, StaticTokens, Verified};
//!
//! async fn whoami(Extension(Verified(who)): Extension<Verified<&'static str>>) -> String {
//!     format!("hello, {who}")
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .layer(RequireBearerLayer::new(StaticTokens::new([("s3cret", "ci")])).realm("example"));
//! # let _ = app;
//! ```
//!
//! # Answers
//!
//! | case | HTTP | gRPC |
//! |---|---|---|
//! | no bearer credentials | `401`, `WWW-Authenticate: Bearer realm="…"` | `UNAUTHENTICATED` |
//! | malformed header | `400`, `error="invalid_request"` | `UNAUTHENTICATED` |
//! | bad or expired token | `401`, `error="invalid_token"` | `UNAUTHENTICATED` |
//! | missing scope | `403`, `error="insufficient_scope"`, `scope="…"` | `PERMISSION_DENIED` |
//! | step-up needed ([`RequireStepUpLayer`]) | `401`, `error="insufficient_user_authentication"`, `acr_values`, `max_age` | `UNAUTHENTICATED` |
//! | validator unavailable | `503` | `UNAVAILABLE` |
//! | DPoP proof refused (`RequireBearerLayer::dpop`, feature `dpop`) | `401`, `WWW-Authenticate: DPoP algs="…", error="invalid_dpop_proof"` | `UNAUTHENTICATED` |
//! | DPoP nonce required | `401`, `error="use_dpop_nonce"`, `DPoP-Nonce: …` | `UNAUTHENTICATED` |
//! | DPoP-bound token sent as `Bearer`, or token not bound to the proof's key | `401`, `error="invalid_token"` | `UNAUTHENTICATED` |
//! | certificate-bound token without its client certificate (`RequireBearerLayer::mtls`, feature `mtls`) | `401`, `error="invalid_token"` | `UNAUTHENTICATED` |
//! | trusted `Client-Cert` header twice or malformed (`CertificateBinding::trusted_header`) | `400`, `error="invalid_request"` | `UNAUTHENTICATED` |

#[cfg(feature = "axum")]
mod axum;
mod cache;
mod challenge;
#[cfg(any(feature = "dpop", feature = "mtls"))]
mod confirmation;
#[cfg(feature = "dpop")]
#[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
pub mod dpop;
pub mod header;
#[cfg(feature = "introspection")]
pub mod introspect;
#[cfg(feature = "jwks")]
pub mod issuers;
#[cfg(feature = "jwks")]
pub mod jwks;
#[cfg(feature = "jwt")]
pub mod jwt;
mod layer;
#[cfg(feature = "mtls")]
#[cfg_attr(docsrs, doc(cfg(feature = "mtls")))]
pub mod mtls;
mod step_up;
pub mod validator;

#[cfg(feature = "axum")]
pub use self::axum::MissingClaims;
pub use crate::metadata::{MetadataService, ProtectedResourceMetadata};
pub use cache::{Expiring, VerifiedCache};
pub use challenge::{is_grpc, Rejection, Unavailable};
#[cfg(any(feature = "dpop", feature = "mtls"))]
pub use confirmation::Confirmation;
#[cfg(feature = "dpop")]
pub use dpop::{DpopError, DpopVerifier};
#[cfg(all(feature = "introspection", feature = "jwt"))]
pub use introspect::IntrospectionKeys;
#[cfg(feature = "introspection")]
pub use introspect::{Introspection, IntrospectionAuth, IntrospectionStats};
#[cfg(feature = "jwks")]
pub use issuers::{MultiIssuer, MultiIssuerBuilder};
/// The signature algorithms of [`JwtValidator::algorithms`] and
/// [`DpopVerifier::algorithms`] (jsonwebtoken's; the same type as
/// `tower_bearer::client::Algorithm`). A token, proof or key whose `alg` gives an
/// algorithm's fully specified name (RFC 9864: `Ed25519` for [`Algorithm::EdDSA`],
/// `ESP256` / `ESP384` for [`Algorithm::ES256`] / [`Algorithm::ES384`]) is verified
/// as that algorithm.
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use jsonwebtoken::Algorithm;
#[cfg(feature = "jwks")]
pub use jwks::{JwksValidator, JwksValidatorBuilder};
#[cfg(feature = "jwt")]
pub use jwt::{JwtValidator, KeyError};
pub use layer::{
    RequireBearer, RequireBearerLayer, RequireScope, RequireScopeLayer, ResponseFuture,
    ScopeFuture, Verified,
};
#[cfg(feature = "mtls")]
pub use mtls::{CertificateBinding, ClientCertificate};
pub use step_up::{AuthenticationClaims, RequireStepUp, RequireStepUpLayer};
pub use validator::{
    from_async_fn, from_fn, Audience, Claims, ScopedClaims, Scopes, StaticTokens, ValidationFuture,
    Validator,
};

pub(crate) use crate::crypto::sha256;
#[cfg(feature = "mcp")]
pub(crate) use layer::{realm_of, refuse};
