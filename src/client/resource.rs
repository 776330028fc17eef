//! From a resource's `401` to its authorization server's token endpoint: RFC 9728
//! metadata, then RFC 8414 / OpenID Connect discovery.

use std::sync::Arc;

use http::HeaderMap;

use super::{ProviderMetadata, TokenEndpoint};
use crate::metadata::{resource_metadata_url, ProtectedResourceMetadata};
use crate::{Endpoint, Error, HttpClient};

/// Follows a resource's `401` to its authorization server: fetches the metadata
/// document the challenge in `headers` names (`resource_metadata`, RFC 9728 §5.1; the
/// well-known URL of `resource` when it names none), checks that it describes
/// `resource` (§3.3), and discovers its first authorization server (whose metadata
/// must name that very issuer). `resource` is the resource identifier the client
/// asked for: the URL it sent the request to, or the identifier that URL falls
/// under (see [`ProtectedResourceMetadata::fetch`]).
///
/// [`ProviderMetadata::token_endpoint`] (or [`TokenEndpoint::from_challenge`] in one
/// call) then gives the endpoint to get a token from.
///
/// ```no_run
/// use tower_bearer::client::{discover_from_challenge, HttpClient};
///
/// # async fn run(res: http::Response<()>) -> Result<(), tower_bearer::Error> {
/// // `res`: the 401 of GET https://api.example.com/mcp
/// let (resource, provider) =
///     discover_from_challenge(res.headers(), "https://api.example.com/mcp", &HttpClient::new())
///         .await?;
/// let scopes = resource.scopes_supported.join(" ");
/// let endpoint = provider.token_endpoint()?.client_id("my-agent").client_secret("s3cret");
/// # let _ = (scopes, endpoint); Ok(()) }
/// ```
///
/// # Errors
/// [`Error::InvalidResponse`] naming [`Endpoint::ResourceMetadata`] when the document
/// cannot be had, is not one, names another resource or no authorization server;
/// naming [`Endpoint::Discovery`] when the authorization server's metadata cannot be
/// had or names another issuer; [`Error::Configuration`] for URLs that are not
/// `https` (`http` only on loopback); transport errors and timeouts.
pub async fn discover_from_challenge(
    headers: &HeaderMap,
    resource: &str,
    http: &HttpClient,
) -> Result<(ProtectedResourceMetadata, Arc<ProviderMetadata>), Error> {
    let url = match resource_metadata_url(headers) {
        Some(url) => url,
        None => ProtectedResourceMetadata::url_for(resource)?,
    };
    let metadata = ProtectedResourceMetadata::fetch(&url, resource, http).await?;
    let Some(issuer) = metadata.authorization_servers.first() else {
        return Err(Error::InvalidResponse(
            Endpoint::ResourceMetadata,
            format!("{url} names no authorization server"),
        ));
    };
    let provider = ProviderMetadata::discover_with(issuer, http).await?;
    Ok((metadata, provider))
}

impl TokenEndpoint {
    /// The token endpoint of the authorization server a resource's `401` leads to:
    /// [`discover_from_challenge`], then [`ProviderMetadata::token_endpoint`]. Set the
    /// client registration on it and ask for a grant.
    ///
    /// # Errors
    /// As [`discover_from_challenge`] and [`ProviderMetadata::token_endpoint`].
    pub async fn from_challenge(
        headers: &HeaderMap,
        resource: &str,
        http: &HttpClient,
    ) -> Result<Self, Error> {
        discover_from_challenge(headers, resource, http)
            .await?
            .1
            .token_endpoint()
    }
}
