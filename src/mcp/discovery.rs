//! From an MCP server's URL (and its `401`) to its authorization server, as the MCP
//! authorization spec (2025-11-25) orders it, with the 2025-03-26 back-compat.

use std::sync::Arc;

use http::Uri;

use crate::client::discovery::origin_of;
use crate::client::ProviderMetadata;
use crate::metadata::{bearer_param, ProtectedResourceMetadata};
use crate::transport::{check_url, is_loopback, parse_url};
use crate::{Endpoint, Error, HttpClient};

/// What discovery found about an MCP server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Discovered {
    /// The server's canonical URI ([`canonical_server_uri`]).
    pub server: String,
    /// The `resource` parameter (RFC 8707) of the authorization and token requests:
    /// the resource identifier the server's metadata declares (the canonical URI,
    /// or an identifier it falls under), else the canonical URI.
    pub resource: String,
    /// The server's protected resource metadata (RFC 9728); `None` for a
    /// 2025-03-26 server that publishes none.
    pub resource_metadata: Option<ProtectedResourceMetadata>,
    /// The authorization server's metadata. For a 2025-03-26 server without any,
    /// the default endpoints at its origin (`/authorize`, `/token`, `/register`).
    pub provider: Arc<ProviderMetadata>,
    /// How the authorization server was found.
    pub how: Found,
}

/// How [`Discovered::provider`] was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Found {
    /// Through the server's resource metadata (2025-06-18 and later).
    ResourceMetadata,
    /// 2025-03-26: RFC 8414 metadata at the MCP server's origin.
    LegacyMetadata,
    /// 2025-03-26: no metadata at all, the default endpoints at the server's origin.
    LegacyDefaults,
}

/// The canonical URI of an MCP server (RFC 8707 §2, MCP "canonical server URI"):
/// the URL with its scheme and host in lower case, no fragment, no trailing `/` on
/// its path (a bare origin keeps none either).
///
/// # Errors
/// [`Error::Configuration`] for a URL that does not parse, is not absolute, has
/// user information (`user:password@`), or is `http` to a host other than
/// loopback.
pub fn canonical_server_uri(url: &str) -> Result<String, Error> {
    let without_fragment = url.split('#').next().unwrap_or(url);
    let uri = parse_url(without_fragment)?;
    check_url(&uri, false)?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Error::Configuration(format!(
            "the MCP server URL {} is not absolute",
            crate::error::display_url_str(url)
        )));
    };
    if authority.as_str().contains('@') {
        // It would go to the authorization server as `resource`, and into logs.
        return Err(Error::Configuration(format!(
            "the MCP server URL {} has user information: give credentials otherwise",
            crate::error::display_url_str(url)
        )));
    }
    let path = uri.path().trim_end_matches('/');
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!(
        "{}://{}{path}{query}",
        scheme.to_ascii_lowercase(),
        authority.as_str().to_ascii_lowercase()
    ))
}

/// The places of the server's resource metadata, in the spec's order: the
/// challenge's `resource_metadata`, else the path-suffixed well-known URL, then the
/// root one (RFC 9728 §3.1, MCP 2025-11-25 "Protected Resource Metadata Discovery").
fn metadata_urls(server: &Uri, challenge: Option<&str>) -> Vec<(String, bool)> {
    if let Some(url) = challenge.and_then(|c| bearer_param(c, "resource_metadata")) {
        return vec![(url, true)];
    }
    let origin = origin_of(server);
    let path = server.path().trim_end_matches('/');
    let root = format!("{origin}/.well-known/oauth-protected-resource");
    if path.is_empty() {
        vec![(root, false)]
    } else {
        vec![(format!("{root}{path}"), false), (root, false)]
    }
}

/// Refuses `url` (named by the server, `what`) when it is on loopback and the MCP
/// server is not: a remote server may not send the client's requests into the
/// client's own machine (the one place plain `http` is allowed).
fn stays_off_loopback(server: &Uri, url: &str, what: &str) -> Result<(), Error> {
    let on_loopback = |uri: &Uri| uri.host().is_some_and(is_loopback);
    if on_loopback(server) {
        return Ok(());
    }
    match parse_url(url) {
        Ok(uri) if on_loopback(&uri) => Err(Error::InvalidResponse(
            Endpoint::ResourceMetadata,
            format!(
                "{what} {} is on loopback, the MCP server is not; refused",
                crate::error::display_url(&uri)
            ),
        )),
        _ => Ok(()),
    }
}

/// Discovers the authorization server of the MCP server at `server_url`, given the
/// `WWW-Authenticate` value of its `401` (if any):
///
/// 1. its resource metadata: the challenge's `resource_metadata`, else the
///    well-known URL with the server's path, then the root one (a `404` moves on);
///    the document's `resource` must be the canonical server URI or an identifier
///    it falls under ([`ProtectedResourceMetadata::covers`]): another resource is
///    refused, before anything is sent to an authorization server;
/// 2. its first authorization server's metadata, RFC 8414 first
///    ([`ProviderMetadata::discover_rfc8414_first`]);
/// 3. when the server publishes no resource metadata (2025-03-26): RFC 8414 metadata
///    at the server's origin (its issuer must be at that origin), else the default
///    endpoints `/authorize`, `/token` and `/register` there.
///
/// # Errors
/// [`Error::InvalidResponse`] naming [`Endpoint::ResourceMetadata`] when the
/// metadata names another resource or no authorization server, or cannot be had
/// (other than `404`), or, for a server not on loopback, sends the client to
/// loopback; naming [`Endpoint::Discovery`] when the authorization
/// server's metadata cannot be had or names another issuer; [`Error::Configuration`]
/// for URLs that are not `https` (`http` only on loopback); transport errors.
pub async fn discover(
    server_url: &str,
    challenge: Option<&str>,
    http: &HttpClient,
) -> Result<Discovered, Error> {
    let server = canonical_server_uri(server_url)?;
    let server_uri = parse_url(&server)?;
    for (url, named) in metadata_urls(&server_uri, challenge) {
        stays_off_loopback(&server_uri, &url, "the challenge's resource_metadata")?;
        let found = ProtectedResourceMetadata::get(&url, http).await?;
        let Some(metadata) = found else {
            if named {
                return Err(Error::InvalidResponse(
                    Endpoint::ResourceMetadata,
                    format!(
                        "{} (named by the challenge) answered HTTP 404",
                        crate::error::display_url_str(&url)
                    ),
                ));
            }
            continue;
        };
        if !metadata.covers(&server) {
            return Err(Error::InvalidResponse(
                Endpoint::ResourceMetadata,
                format!(
                    "{} describes resource {:?}, which is not the MCP server {server:?} \
                     (RFC 9728 §3.3); refused",
                    crate::error::display_url_str(&url),
                    crate::error::display_url_str(&metadata.resource)
                ),
            ));
        }
        let Some(issuer) = metadata.authorization_servers.first() else {
            return Err(Error::InvalidResponse(
                Endpoint::ResourceMetadata,
                format!(
                    "{} names no authorization server",
                    crate::error::display_url_str(&url)
                ),
            ));
        };
        stays_off_loopback(
            &server_uri,
            issuer,
            "the resource metadata's authorization server",
        )?;
        let provider = ProviderMetadata::discover_rfc8414_first(issuer, http).await?;
        return Ok(Discovered {
            resource: metadata.resource.clone(),
            server,
            resource_metadata: Some(metadata),
            provider: Arc::new(provider),
            how: Found::ResourceMetadata,
        });
    }
    legacy(server, &server_uri, http).await
}

/// The 2025-03-26 discovery: metadata at the server's origin, else defaults there.
async fn legacy(server: String, server_uri: &Uri, http: &HttpClient) -> Result<Discovered, Error> {
    let origin = origin_of(server_uri);
    let url = format!("{origin}/.well-known/oauth-authorization-server");
    if let Some(provider) = ProviderMetadata::fetch_unchecked(&url, http).await? {
        // The document cannot be checked against an issuer known beforehand; the
        // least it must do is stay at the MCP server's own origin.
        let same_origin = parse_url(&provider.issuer)
            .map(|issuer| origin_of(&issuer).eq_ignore_ascii_case(&origin))
            .unwrap_or(false);
        if !same_origin {
            return Err(Error::InvalidResponse(
                Endpoint::Discovery,
                format!(
                    "{url} names issuer {:?}, not at the MCP server's origin {origin}; refused",
                    crate::error::display_url_str(&provider.issuer)
                ),
            ));
        }
        return Ok(Discovered {
            resource: server.clone(),
            server,
            resource_metadata: None,
            provider: Arc::new(provider),
            how: Found::LegacyMetadata,
        });
    }
    let provider = ProviderMetadata {
        issuer: origin.clone(),
        token_endpoint: Some(format!("{origin}/token")),
        authorization_endpoint: Some(format!("{origin}/authorize")),
        device_authorization_endpoint: None,
        revocation_endpoint: None,
        introspection_endpoint: None,
        jwks_uri: None,
        userinfo_endpoint: None,
        token_endpoint_auth_methods_supported: None,
        revocation_endpoint_auth_methods_supported: None,
        grant_types_supported: None,
        authorization_response_iss_parameter_supported: false,
        registration_endpoint: Some(format!("{origin}/register")),
        code_challenge_methods_supported: None,
        scopes_supported: None,
        client_id_metadata_document_supported: false,
        pushed_authorization_request_endpoint: None,
        require_pushed_authorization_requests: false,
        require_signed_request_object: false,
        mtls_endpoint_aliases: None,
    };
    Ok(Discovered {
        resource: server.clone(),
        server,
        resource_metadata: None,
        provider: Arc::new(provider),
        how: Found::LegacyDefaults,
    })
}
