//! The parsers that face the network, reachable from outside the crate for the fuzz
//! harness (`fuzz/src/lib.rs`, replayed on stable by `tests/fuzz_replay.rs`): thin
//! forwards to the crate's own parsers, hidden from the docs and not part of the API.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::client::TokenEndpoint;
use crate::{Error, Token};

/// A token endpoint's answer (RFC 6749 §5.1, §5.2) read as the client reads it.
///
/// # Errors
/// The typed error the client would return for this answer.
pub fn token_response(
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Token, Error> {
    TokenEndpoint::parse_response(status, headers, body)
}

#[cfg(feature = "jwks")]
pub use self::jwks::{discovery_jwks_uri, key_set, KeySet};

/// The tools an MCP request body calls, as `ToolScopeLayer` reads them (one name per
/// `tools/call`, batches call by call).
///
/// # Errors
/// The HTTP status and JSON-RPC error code the layer answers such a body with.
#[cfg(feature = "mcp")]
pub fn mcp_tool_calls(body: &[u8]) -> Result<Vec<String>, (StatusCode, i32)> {
    crate::mcp::server::tool_calls(body)
        .map(|tools| tools.into_iter().map(Into::into).collect())
        .map_err(|refusal| (refusal.status, refusal.code))
}

#[cfg(feature = "jwks")]
mod jwks {
    use http::Uri;
    use serde::de::DeserializeOwned;
    use tokio::time::Instant;

    use crate::server::JwtValidator;
    use crate::Error;

    /// The `jwks_uri` of an OIDC discovery document, once the document is found to be
    /// `issuer`'s and the URI fit for fetching keys.
    ///
    /// # Errors
    /// The error `JwksValidator::discover` would meet with this document.
    pub fn discovery_jwks_uri(
        body: &[u8],
        issuer: &str,
        allow_insecure_http: bool,
    ) -> Result<Uri, Error> {
        crate::server::jwks::discovery_jwks_uri(body, issuer, allow_insecure_http)
    }

    /// The usable signing keys of a JWKS document, as a `JwksValidator` holds them.
    pub struct KeySet<C>(crate::server::jwks::KeySet<C>);

    impl<C> KeySet<C> {
        /// The validator for a token naming `kid` (or none), as `JwksValidator` picks it.
        pub fn find(&self, kid: Option<&str>) -> Option<&JwtValidator<C>> {
            self.0.find(kid)
        }
    }

    /// Parses a JWKS document, each key a validator with `rules` applied (and
    /// `issuer`, as for keys found through discovery).
    ///
    /// # Errors
    /// The error a `JwksValidator` would meet with this document.
    pub fn key_set<C: DeserializeOwned + Clone + Send + Sync + 'static>(
        body: &[u8],
        rules: &(dyn Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync),
        issuer: Option<&str>,
    ) -> Result<KeySet<C>, Error> {
        crate::server::jwks::parse_key_set(body, rules, issuer, Instant::now()).map(KeySet)
    }
}
