//! The outgoing side: add a credential to every request, refresh tokens before they
//! expire, and retry once after a `401`.
//!
//! - [`Authorizer`]: the credential for the next request. [`StaticToken`], [`Basic`],
//!   [`ApiKey`], [`NoAuth`] and [`Refreshing`].
//! - [`Refreshing`]: a lock-free token cache with a single-flight refresh, in front of a
//!   [`source::TokenSource`].
//! - [`source`]: the token sources: closures and the OAuth 2.0 grants.
//! - [`TokenEndpoint`]: the token endpoint and the client's registration with it;
//!   [`TokenEndpoint::discover`] finds it from an issuer URL ([`ProviderMetadata`]).
//! - [`ProtectedResourceMetadata::fetch`]: after a `401` whose challenge names a
//!   [`resource_metadata_url`], the resource's authorization servers (RFC 9728);
//!   [`discover_from_challenge`] and [`TokenEndpoint::from_challenge`] go on to the
//!   token endpoint in one call.
//! - [`StepUpChallenge`]: a resource's demand for a stronger or more recent login
//!   (RFC 9470), which no refresh can meet.
//! - [`ClientAssertion`]: `private_key_jwt` and `client_secret_jwt` client
//!   authentication (RFC 7523), with an [`AssertionKey`].
//! - `IdTokenValidator` (feature `jwks`): the OpenID Connect relying party's
//!   checks of the ID token a login returns, and UserInfo checked against it.
//! - [`Signer`]: a key kept in a KMS or an HSM, for assertions and DPoP proofs,
//!   under a deadline ([`DEFAULT_SIGNER_DEADLINE`]).
//! - [`Revocation`]: RFC 7009 token revocation, for [`Refreshing::logout`].
//! - [`TokenStore`]: keeps tokens between runs and shares them between processes;
//!   [`AtRestKey`]: the key [`FileStore`] and `RedisStore` encrypt them with.
//! - `Dpop` and `DpopKey` (feature `dpop`): DPoP-bound tokens (RFC 9449), a proof
//!   on every token request and every request.
//! - [`AuthorizeLayer`]: the tower layer.

#[cfg(feature = "jwt")]
mod assertion;
pub(crate) mod at_rest;
mod authorizer;
mod cache;
pub(crate) mod discovery;
#[cfg(feature = "dpop")]
mod dpop;
mod endpoint;
mod file_flight;
#[cfg(feature = "jwks")]
mod id_token;
mod layer;
mod per_resource;
mod registration;
#[cfg(feature = "reqwest")]
mod reqwest;
mod resource;
mod revoke;
#[cfg(feature = "jwt")]
mod signer;
pub mod source;
mod step_up;
mod store;
mod store_file;

#[cfg(feature = "reqwest")]
pub use self::reqwest::AuthorizeMiddleware;
pub use crate::metadata::{resource_metadata_url, ProtectedResourceMetadata};
pub use crate::transport::HttpClient;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use assertion::{
    AssertionKey, ClientAssertion, CLIENT_ASSERTION_TYPE, DEFAULT_ASSERTION_LIFETIME,
};
pub use at_rest::AtRestKey;
pub use authorizer::{
    ApiKey, Authorizer, Basic, Credential, CredentialFuture, NoAuth, StaticToken, Target, DPOP,
};
pub use cache::{
    RefreshStats, Refreshing, RefreshingBuilder, DEFAULT_REFRESH_BEFORE, DEFAULT_WAIT_LIMIT,
    RETRY_AFTER_CAP,
};
pub use discovery::{MtlsEndpointAliases, ProviderMetadata, DISCOVERY_TTL};
#[cfg(feature = "dpop")]
#[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
pub use dpop::{Dpop, DpopKey};
pub use endpoint::{TokenEndpoint, TokenEndpointAuth};
pub use file_flight::SharedFileSource;
#[cfg(feature = "jwks")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
pub use id_token::{
    ExpectedIdToken, IdTokenClaims, IdTokenValidator, IdTokenValidatorBuilder,
    DEFAULT_ID_TOKEN_ALGORITHMS, DEFAULT_ID_TOKEN_LEEWAY, MAX_ID_TOKEN_LEN,
};
/// The signing algorithms of [`AssertionKey`] (jsonwebtoken's).
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use jsonwebtoken::Algorithm;
pub use layer::{
    Authorize, AuthorizeError, AuthorizeLayer, NoReplay, Replay, ReplayClone, ResponseFuture,
};
pub use per_resource::PerResource;
pub use registration::{
    register, ClientInformation, ClientMetadata, FileRegistrations, MemoryRegistrations,
    RegistrationStore,
};
pub use resource::discover_from_challenge;
pub use revoke::{Revocation, TokenTypeHint};
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use signer::{Signer, DEFAULT_SIGNER_DEADLINE, MAX_SIGNER_DEADLINE};
pub use source::TokenSource;
pub use step_up::StepUpChallenge;
pub use store::{MemoryStore, StoredToken, TokenStore};
pub use store_file::FileStore;
