//! OAuth 2.0 bearer authentication for [tower] stacks, on both ends of the wire.
//!
//! - **Client side** ([`client`]): [`AuthorizeLayer`] adds `Authorization` to every
//!   outgoing request from an [`Authorizer`]: a static token, Basic, an API key, or
//!   [`Refreshing`], a lock-free token cache that refreshes a token once for all
//!   concurrent callers, before it expires.
//! - **Server side** ([`server`]): validates `Authorization: Bearer`, puts the verified
//!   claims in the request extensions and answers failures as RFC 6750 says.
//!
//! # Client quick start
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_bearer::client::{AuthorizeLayer, Refreshing, TokenEndpoint};
//!
//! # async fn run() -> Result<(), tower_bearer::Error> {
//! let endpoint = TokenEndpoint::new("https://idp.example.com/oauth/token")?
//!     .client_id("my-service")
//!     .client_secret("s3cret");
//! // Refreshed 60 s before expiry (in the last tenth of a short token's life).
//! let authorizer = Refreshing::new(endpoint.client_credentials().scope("read"));
//! let layer = AuthorizeLayer::new(authorizer);
//! // let client = ServiceBuilder::new().layer(layer).service(hyper_util_client);
//! # let _ = ServiceBuilder::new().layer(layer);
//! # Ok(()) }
//! ```
//!
//! # Server quick start
//!
//! ```
//! # #[cfg(all(feature = "jwt", feature = "axum"))]
//! # mod example {
//! use axum::{routing::get, Router};
//! use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer, Verified};
//!
//! async fn whoami(Verified(claims): Verified<Claims>) -> String {
//!     claims.sub.unwrap_or_default()
//! }
//!
//! pub fn app() -> Router {
//!     let validator = JwtValidator::<Claims>::hmac(b"a-secret-of-at-least-32-bytes!!!")
//!         .issuer("https://idp.example.com/")
//!         .audience("my-api");
//!     Router::new()
//!         .route("/whoami", get(whoami))
//!         .layer(RequireBearerLayer::new(validator).realm("my-api"))
//! }
//! # }
//! ```
//!
//! Keys from the identity provider: `JwksValidator::discover(issuer)` (feature
//! `jwks`); opaque tokens: `Introspection` (feature `introspection`); a repeated
//! token for the price of a hash: [`server::VerifiedCache`].
//!
//! # Feature flags
//!
//! - `rustls` (default): https to token endpoints (hyper-rustls on aws-lc-rs, the webpki roots).
//! - `jwt` (default): JWT validation with jsonwebtoken.
//! - `jwks` (default): JWKS and OIDC discovery with key rotation (implies `jwt`; no extra dependencies).
//! - `dpop`: DPoP (RFC 9449) on the resource server: proofs checked completely, used
//!   proofs remembered (in memory, or fleet-wide with `redis`); implies `jwt`.
//! - `introspection`: RFC 7662 token introspection.
//! - `axum`: extractors for the verified claims.
//! - `reqwest`: a reqwest-middleware middleware.
//! - `redis`: share tokens, refresh locks and revocations across replicas.
//! - `redis-tls`: the same over `rediss://` (rustls on aws-lc-rs; implies `redis`).
//! - `redis-cluster`: the same on a Redis Cluster (implies `redis`).
//! - `mcp`: the Model Context Protocol's authorization rules on both ends: an MCP
//!   client's discovery, registration, login and step-up ([`mcp::McpAuth`]), per-tool
//!   scopes on an MCP server ([`mcp::server::ToolScopeLayer`]); implies `jwt`.
//! - `rmcp`: [`mcp::McpAuth`] on rmcp's Streamable HTTP client (implies `mcp`).
//! - `metrics`: counters and histograms through the `metrics` facade; the table of
//!   every metric is in [`metrics`].
//!
//! One crypto implementation per build: aws-lc-rs checks and makes the signatures,
//! HMACs and digests, reads and makes the client's keys, draws the random numbers and
//! is rustls's provider (issue 20 measured RS256 about 9x, ES256 about 5x faster than
//! with the pure-Rust RustCrypto crates). Builds that must be pure Rust select the
//! RustCrypto crates instead with `RUSTFLAGS="--cfg tower_bearer_rust_crypto"` (rustls,
//! when a TLS feature is on, then runs on ring). A cfg rather than a feature, so a build
//! always has exactly one backend (features add up across a dependency graph and
//! `--all-features`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// Some docs link to items behind features (`Dpop`, `FleetSource`, `Introspection`,
// `AuthorizeMiddleware`, `metrics::describe`, `mcp::server::ToolScopeLayer`): with one
// of those features off, the links cannot resolve. CI documents with every feature on,
// broken links denied.
#![cfg_attr(
    not(all(
        feature = "dpop",
        feature = "redis",
        feature = "introspection",
        feature = "reqwest",
        feature = "metrics",
        feature = "mcp"
    )),
    allow(rustdoc::broken_intra_doc_links)
)]

// The network-facing parsers for the fuzz harness (fuzz/src/lib.rs): not public API.
#[doc(hidden)]
#[path = "parsers.rs"]
pub mod __parsers;
pub mod client;
mod crypto;
mod error;
pub(crate) mod flight;
#[cfg(feature = "mcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "mcp")))]
pub mod mcp;
mod metadata;
pub mod metrics;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod server;
mod sync;
mod token;
mod transport;

pub use client::{AuthorizeLayer, Authorizer, Refreshing};

// The README's examples are compiled as doc tests (they use every integration).
#[cfg(all(
    doctest,
    feature = "reqwest",
    feature = "axum",
    feature = "jwt",
    feature = "dpop",
    feature = "redis"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
pub use error::{BoxError, Endpoint, EndpointError, Error, SharedError};
pub use token::{Lineage, Token};

/// The [`secrecy`](https://docs.rs/secrecy) trait and type of [`Token::access_token`]
/// and [`Token::refresh_token`], re-exported so that reading a secret needs no
/// dependency of your own (or use [`Token::expose_access_token`]).
pub use secrecy::{ExposeSecret, SecretString};
pub use transport::HttpClient;
#[cfg(feature = "mtls")]
pub use transport::HttpClientBuilder;
