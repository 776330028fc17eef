//! Client-side discovery: a provider's endpoints from its issuer URL (OpenID
//! Connect Discovery 1.0, else RFC 8414 authorization server metadata).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use serde::Deserialize;
use tokio::time::Instant;

use super::endpoint::{TokenEndpoint, TokenEndpointAuth};
use super::revoke::Revocation;
use super::source::{AuthorizationCode, DeviceCode};
use crate::transport::{check_url, parse_url, HttpClient};
use crate::Endpoint;
use crate::Error;

/// How long a discovered document is reused when its answer names no `max-age`.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The bounds of a `max-age` honoured for a discovered document.
const TTL_BOUNDS: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(86_400));

/// A provider's metadata, found from its issuer URL.
///
/// [`ProviderMetadata::discover`] fetches `{issuer}/.well-known/openid-configuration`
/// (OpenID Connect Discovery 1.0), and when that is not found the RFC 8414 document
/// (`/.well-known/oauth-authorization-server` inserted before the issuer's path).
/// When the OpenID document lacks an endpoint (token, revocation, introspection,
/// device authorization), the RFC 8414 document is read too and fills in what the
/// first lacks (never replaces what it names); it must name the same issuer, else
/// nothing of it is used. The
/// document must name exactly the issuer it was fetched for (OpenID Connect
/// Discovery §4.3, RFC 8414 §3.3): a document naming another issuer is refused, so a
/// compromised or misconfigured host cannot send the client's credentials elsewhere
/// under a trusted name. Every endpoint URL in it must be `https://` (plain `http://`
/// only on loopback), like the URLs given to [`TokenEndpoint::new`].
///
/// Documents are cached per issuer for the `max-age` of the answer (between one
/// minute and one day), else [`DISCOVERY_TTL`]: building many endpoints from one
/// issuer fetches the document once.
///
/// Most users go through [`TokenEndpoint::discover`]:
///
/// ```no_run
/// use tower_bearer::client::{Refreshing, TokenEndpoint};
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::discover("https://idp.example.com").await?.client_id("svc").client_secret("s3cret");
/// let authorizer = Refreshing::builder(endpoint.client_credentials()).revocation(endpoint.revocation()?).build();
/// # let _ = authorizer;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Deserialize)]
#[non_exhaustive]
pub struct ProviderMetadata {
    /// The issuer identifier: the URL the document was discovered from.
    pub issuer: String,
    /// The token endpoint (RFC 6749 §3.2).
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The authorization endpoint (RFC 6749 §3.1), where a person logs in.
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    /// The device authorization endpoint (RFC 8628).
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    /// The revocation endpoint (RFC 7009).
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// The introspection endpoint (RFC 7662), for a resource server's
    /// [`Introspection`](crate::server::Introspection).
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// The OpenID Connect UserInfo endpoint (OIDC Core §5.3), for
    /// `IdTokenValidator::userinfo` (feature `jwks`).
    #[serde(default)]
    pub userinfo_endpoint: Option<String>,
    /// The provider's signing keys (see [`JwksValidator::discover`](crate::server::JwksValidator::discover)).
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The client authentication methods of the token endpoint; absent means
    /// `client_secret_basic` only (RFC 8414 §2).
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// The client authentication methods of the revocation endpoint; absent means
    /// `client_secret_basic` only.
    #[serde(default)]
    pub revocation_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// The grant types the provider supports; absent means `authorization_code`
    /// and `implicit` (RFC 8414 §2).
    #[serde(default)]
    pub grant_types_supported: Option<Vec<String>>,
    /// Whether the provider puts `iss` on every authorization response (RFC 9207
    /// §3). When it says so, a redirect without `iss` is refused (§2.4).
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
    /// The dynamic client registration endpoint (RFC 7591 §3).
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    /// The PKCE methods the provider supports (RFC 8414 §2); absent means the
    /// provider does not say it supports PKCE.
    #[serde(default)]
    pub code_challenge_methods_supported: Option<Vec<String>>,
    /// The scopes the provider supports (RFC 8414 §2).
    #[serde(default)]
    pub scopes_supported: Option<Vec<String>>,
    /// Whether the provider takes an `https` URL of a client ID metadata document as
    /// `client_id` (draft-ietf-oauth-client-id-metadata-document).
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
    /// The pushed authorization request endpoint (RFC 9126 §5).
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<String>,
    /// Whether the provider takes authorization requests only through its pushed
    /// authorization request endpoint (RFC 9126 §5). When it says so, the browser
    /// login ([`AuthorizationCode`]) pushes its requests.
    #[serde(default)]
    pub require_pushed_authorization_requests: bool,
    /// Whether the provider takes authorization requests only as signed request
    /// objects (RFC 9101 §10.5). When it says so, the browser login signs them.
    #[serde(default)]
    pub require_signed_request_object: bool,
    /// The endpoints a client that presents a TLS certificate uses instead of the
    /// plain ones (RFC 8705 §5).
    #[serde(default)]
    pub mtls_endpoint_aliases: Option<MtlsEndpointAliases>,
}

/// The endpoints of a provider for clients that present a TLS certificate
/// (`mtls_endpoint_aliases`, RFC 8705 §5): a client authenticating with its
/// certificate (`tls_client_auth`, `self_signed_tls_client_auth`), or asking for
/// certificate-bound tokens ([`TokenEndpoint::certificate_bound_tokens`]), uses these
/// when they are named, the plain endpoints otherwise.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct MtlsEndpointAliases {
    /// The token endpoint for mTLS clients.
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// The pushed authorization request endpoint for mTLS clients.
    #[serde(default)]
    pub pushed_authorization_request_endpoint: Option<String>,
    /// The revocation endpoint for mTLS clients.
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    /// The introspection endpoint for mTLS clients.
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    /// The device authorization endpoint for mTLS clients.
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
}

type Cache = Mutex<HashMap<String, (Instant, Arc<ProviderMetadata>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

impl ProviderMetadata {
    /// The metadata of the provider at `issuer`, from the cache or fetched with
    /// the default [`HttpClient`].
    ///
    /// # Errors
    /// [`Error::Configuration`] for an issuer that is not an `https://` URL (or
    /// `http://` on loopback); [`Error::InvalidResponse`] when no document is found,
    /// it does not parse, or it names another issuer; the transport's errors.
    pub async fn discover(issuer: &str) -> Result<Arc<Self>, Error> {
        Self::discover_with(issuer, &HttpClient::new()).await
    }

    /// Like [`discover`](Self::discover), fetching through `http` on a cache miss.
    ///
    /// # Errors
    /// As [`discover`](Self::discover).
    pub async fn discover_with(issuer: &str, http: &HttpClient) -> Result<Arc<Self>, Error> {
        let now = Instant::now();
        if let Some((until, found)) = lock(cache()).get(issuer) {
            if now < *until {
                return Ok(Arc::clone(found));
            }
        }
        let (found, ttl) = fetch(issuer, http).await?;
        let found = Arc::new(found);
        lock(cache()).insert(issuer.to_owned(), (now + ttl, Arc::clone(&found)));
        Ok(found)
    }

    /// The metadata of the authorization server `issuer`, looked for in the order
    /// the MCP authorization spec (2025-11-25) gives, RFC 8414 first: for an issuer
    /// with a path, `/.well-known/oauth-authorization-server{path}`, then
    /// `/.well-known/openid-configuration{path}`, then
    /// `{path}/.well-known/openid-configuration`; for one without, the RFC 8414
    /// document, then the OpenID one. The first document found is used (a `404`
    /// moves on to the next place, any other failure stops); it must name `issuer`.
    /// Not cached: an MCP client discovers once per server and keeps the result.
    ///
    /// # Errors
    /// As [`discover`](Self::discover).
    pub async fn discover_rfc8414_first(issuer: &str, http: &HttpClient) -> Result<Self, Error> {
        let issuer_uri = parse_url(issuer)?;
        check_url(&issuer_uri, false)?;
        let origin = origin_of(&issuer_uri);
        let path = issuer_uri.path().trim_end_matches('/');
        let urls = if path.is_empty() {
            vec![
                format!("{origin}/.well-known/oauth-authorization-server"),
                format!("{origin}/.well-known/openid-configuration"),
            ]
        } else {
            vec![
                format!("{origin}/.well-known/oauth-authorization-server{path}"),
                format!("{origin}/.well-known/openid-configuration{path}"),
                format!("{origin}{path}/.well-known/openid-configuration"),
            ]
        };
        for url in &urls {
            if let Some((found, _)) = fetch_one(url, Some(issuer), http).await? {
                return Ok(found);
            }
        }
        Err(Error::InvalidResponse(
            Endpoint::Discovery,
            format!(
                "no authorization server metadata for issuer {}: {} answered 404",
                crate::error::display_url_str(issuer),
                urls.iter()
                    .map(|u| crate::error::display_url_str(u))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }

    /// The RFC 8414 document at `url` (a `404` is `None`), whatever issuer it names:
    /// for the 2025-03-26 MCP back-compat, where the document is looked for at the
    /// MCP server's origin and its issuer cannot be known beforehand. The caller
    /// judges the issuer it names.
    ///
    /// # Errors
    /// As [`discover`](Self::discover), but for the issuer check.
    #[cfg(feature = "mcp")]
    pub(crate) async fn fetch_unchecked(
        url: &str,
        http: &HttpClient,
    ) -> Result<Option<Self>, Error> {
        Ok(fetch_one(url, None, http).await?.map(|(found, _)| found))
    }

    /// The client authentication method to use at the token endpoint:
    /// `client_secret_basic` when the provider supports it, else
    /// `client_secret_post` when it does, else `client_secret_basic` (the method
    /// every provider must support, RFC 6749 §2.3.1).
    pub fn client_auth(&self) -> TokenEndpointAuth {
        choose_auth(self.token_endpoint_auth_methods_supported.as_deref())
    }

    /// Whether the provider says it supports `grant_type` (when it says nothing, it
    /// may still).
    pub fn supports_grant(&self, grant_type: &str) -> Option<bool> {
        self.grant_types_supported
            .as_ref()
            .map(|g| g.iter().any(|t| t == grant_type))
    }

    /// The token endpoint, with the client authentication method the provider
    /// supports ([`client_auth`](Self::client_auth)); set the client id and secret
    /// on it. The endpoint remembers this metadata, for
    /// [`TokenEndpoint::revocation`] and [`TokenEndpoint::device_code`].
    ///
    /// # Errors
    /// [`Error::Configuration`] when the document names no token endpoint, or one
    /// that is not `https://` (or loopback `http://`).
    pub fn token_endpoint(self: &Arc<Self>) -> Result<TokenEndpoint, Error> {
        let url = self.token_endpoint.as_deref().ok_or_else(|| {
            Error::Configuration(format!(
                "the provider metadata of {} names no token_endpoint",
                self.issuer
            ))
        })?;
        Ok(TokenEndpoint::new(url)?
            .auth_method(self.client_auth())
            .with_metadata(Arc::clone(self)))
    }
}

fn choose_auth(supported: Option<&[String]>) -> TokenEndpointAuth {
    let Some(supported) = supported else {
        return TokenEndpointAuth::Basic;
    };
    let has = |m: &str| supported.iter().any(|s| s == m);
    if !has("client_secret_basic") && has("client_secret_post") {
        TokenEndpointAuth::Post
    } else {
        TokenEndpointAuth::Basic
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `scheme://authority` of a URL.
pub(crate) fn origin_of(uri: &Uri) -> String {
    format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    )
}

/// The two places a document may be (OpenID Connect first).
fn document_urls(issuer: &Uri) -> [String; 2] {
    let origin = origin_of(issuer);
    let path = issuer.path().trim_end_matches('/');
    [
        format!("{origin}{path}/.well-known/openid-configuration"),
        // RFC 8414 §3.1: the well-known segment goes before the issuer's path.
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
    ]
}

async fn fetch(issuer: &str, http: &HttpClient) -> Result<(ProviderMetadata, Duration), Error> {
    let issuer_uri = parse_url(issuer)?;
    check_url(&issuer_uri, false)?;
    if issuer_uri.query().is_some() {
        return Err(Error::Configuration(format!(
            "issuer {issuer:?} has a query: an issuer identifier cannot"
        )));
    }
    let [openid, oauth] = document_urls(&issuer_uri);
    let (found, ttl) = match fetch_one(&openid, Some(issuer), http).await? {
        Some(found) => found,
        None => match fetch_one(&oauth, Some(issuer), http).await? {
            Some(found) => return Ok(found),
            None => {
                return Err(Error::InvalidResponse(
                    Endpoint::Discovery,
                    format!(
                        "no provider metadata for issuer {}: {} and {} answered 404",
                        crate::error::display_url_str(issuer),
                        crate::error::display_url_str(&openid),
                        crate::error::display_url_str(&oauth)
                    ),
                ))
            }
        },
    };
    if !found.lacks_an_endpoint() {
        return Ok((found, ttl));
    }
    // Some providers (django-oauth-toolkit) name their revocation and introspection
    // endpoints only in the RFC 8414 document: read it too. It must be the same
    // issuer's (RFC 8414 §3.3), else nothing of it is used.
    match fetch_one(&oauth, Some(issuer), http).await {
        Ok(Some((other, other_ttl))) => Ok((found.completed_by(other), ttl.min(other_ttl))),
        Ok(None) => Ok((found, ttl)),
        Err(error) => {
            tracing::warn!(%error, "the RFC 8414 document of the issuer is not used");
            Ok((found, ttl))
        }
    }
}

/// One document: `None` when it is not there (404). With `issuer`, the document
/// must name it.
async fn fetch_one(
    url: &str,
    issuer: Option<&str>,
    http: &HttpClient,
) -> Result<Option<(ProviderMetadata, Duration)>, Error> {
    let shown = crate::error::display_url_str(url);
    let req = Request::get(url)
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Configuration(format!("discovery request {shown}: {e}")))?;
    let res = http.send(Endpoint::Discovery, req).await?;
    if res.status() == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    if res.status() != StatusCode::OK {
        return Err(Error::InvalidResponse(
            Endpoint::Discovery,
            format!("{shown} answered HTTP {}", res.status().as_u16()),
        ));
    }
    let found = parse_metadata(res.body(), issuer)
        .map_err(|e| Error::InvalidResponse(Endpoint::Discovery, format!("{shown}: {e}")))?;
    let ttl = res
        .headers()
        .get(CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(max_age)
        .map(|age| age.clamp(TTL_BOUNDS.0, TTL_BOUNDS.1))
        .unwrap_or(DISCOVERY_TTL);
    Ok(Some((found, ttl)))
}

impl ProviderMetadata {
    /// Whether an endpoint a client may want is missing.
    fn lacks_an_endpoint(&self) -> bool {
        self.token_endpoint.is_none()
            || self.revocation_endpoint.is_none()
            || self.introspection_endpoint.is_none()
            || self.device_authorization_endpoint.is_none()
    }

    /// This document, with what it lacks taken from `other` (the same issuer's).
    fn completed_by(mut self, other: ProviderMetadata) -> ProviderMetadata {
        fn fill<T>(mine: &mut Option<T>, theirs: Option<T>) {
            if mine.is_none() {
                *mine = theirs;
            }
        }
        fill(&mut self.token_endpoint, other.token_endpoint);
        fill(
            &mut self.authorization_endpoint,
            other.authorization_endpoint,
        );
        fill(
            &mut self.device_authorization_endpoint,
            other.device_authorization_endpoint,
        );
        fill(&mut self.revocation_endpoint, other.revocation_endpoint);
        fill(
            &mut self.introspection_endpoint,
            other.introspection_endpoint,
        );
        fill(&mut self.jwks_uri, other.jwks_uri);
        fill(&mut self.userinfo_endpoint, other.userinfo_endpoint);
        fill(
            &mut self.token_endpoint_auth_methods_supported,
            other.token_endpoint_auth_methods_supported,
        );
        fill(
            &mut self.revocation_endpoint_auth_methods_supported,
            other.revocation_endpoint_auth_methods_supported,
        );
        fill(&mut self.grant_types_supported, other.grant_types_supported);
        fill(&mut self.registration_endpoint, other.registration_endpoint);
        fill(
            &mut self.code_challenge_methods_supported,
            other.code_challenge_methods_supported,
        );
        fill(&mut self.scopes_supported, other.scopes_supported);
        fill(
            &mut self.pushed_authorization_request_endpoint,
            other.pushed_authorization_request_endpoint,
        );
        fill(&mut self.mtls_endpoint_aliases, other.mtls_endpoint_aliases);
        // A demand in either document of the issuer holds.
        self.require_pushed_authorization_requests |= other.require_pushed_authorization_requests;
        self.require_signed_request_object |= other.require_signed_request_object;
        self.client_id_metadata_document_supported |= other.client_id_metadata_document_supported;
        // A promise of `iss` in either document of the issuer holds.
        self.authorization_response_iss_parameter_supported |=
            other.authorization_response_iss_parameter_supported;
        self
    }
}

/// Parses a document and checks it is `issuer`'s own (when given), with usable
/// endpoint URLs.
pub(crate) fn parse_metadata(
    body: &[u8],
    issuer: Option<&str>,
) -> Result<ProviderMetadata, String> {
    let found: ProviderMetadata =
        serde_json::from_slice(body).map_err(|e| crate::error::json_error(&e))?;
    if let Some(issuer) = issuer.filter(|i| found.issuer != *i) {
        return Err(format!(
            "it names issuer {:?}, expected {issuer:?}",
            found.issuer
        ));
    }
    for (name, url) in [
        ("token_endpoint", &found.token_endpoint),
        ("authorization_endpoint", &found.authorization_endpoint),
        (
            "device_authorization_endpoint",
            &found.device_authorization_endpoint,
        ),
        ("revocation_endpoint", &found.revocation_endpoint),
        ("introspection_endpoint", &found.introspection_endpoint),
        ("jwks_uri", &found.jwks_uri),
        ("userinfo_endpoint", &found.userinfo_endpoint),
        ("registration_endpoint", &found.registration_endpoint),
        (
            "pushed_authorization_request_endpoint",
            &found.pushed_authorization_request_endpoint,
        ),
    ]
    .into_iter()
    .chain(found.mtls_endpoint_aliases.iter().flat_map(|a| {
        [
            ("mtls_endpoint_aliases.token_endpoint", &a.token_endpoint),
            (
                "mtls_endpoint_aliases.pushed_authorization_request_endpoint",
                &a.pushed_authorization_request_endpoint,
            ),
            (
                "mtls_endpoint_aliases.revocation_endpoint",
                &a.revocation_endpoint,
            ),
            (
                "mtls_endpoint_aliases.introspection_endpoint",
                &a.introspection_endpoint,
            ),
            (
                "mtls_endpoint_aliases.device_authorization_endpoint",
                &a.device_authorization_endpoint,
            ),
        ]
    })) {
        if let Some(url) = url {
            let uri = parse_url(url).map_err(|e| format!("{name}: {e}"))?;
            check_url(&uri, false).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(found)
}

fn max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|d| {
        let (k, v) = d.trim().split_once('=')?;
        (k.eq_ignore_ascii_case("max-age"))
            .then(|| v.trim().parse().ok().map(Duration::from_secs))
            .flatten()
    })
}

impl TokenEndpoint {
    /// The token endpoint of the provider at `issuer`, found through discovery
    /// ([`ProviderMetadata::discover`]: checked issuer, cached document), with a client
    /// authentication method the provider supports. Set the client id and secret
    /// on it, then use its grants; [`revocation`](Self::revocation) and
    /// [`device_code`](Self::device_code) come from the same document.
    ///
    /// From an issuer URL to a refreshing client:
    ///
    /// ```
    /// # use tower_bearer::client::{AuthorizeLayer, Refreshing, TokenEndpoint};
    /// # async fn run(issuer: &str) -> Result<(), tower_bearer::Error> {
    /// let endpoint = TokenEndpoint::discover(issuer).await?.client_id("svc").client_secret("s3cret");
    /// let authorizer = Refreshing::builder(endpoint.client_credentials()).revocation(endpoint.revocation()?).build();
    /// let layer = AuthorizeLayer::new(authorizer.clone()); // any tower HTTP client
    /// # let _ = layer;
    /// # authorizer.token().await?; // the provider's token endpoint answers
    /// # Ok(()) }
    /// # let issuer = serve();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run(&issuer)).unwrap();
    /// # fn serve() -> String {
    /// #     // A provider on loopback: its discovery document and a token endpoint.
    /// #     let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    /// #     let issuer = format!("http://{}", listener.local_addr().unwrap());
    /// #     let doc = format!(r#"{{"issuer":"{issuer}","token_endpoint":"{issuer}/token","revocation_endpoint":"{issuer}/revoke"}}"#);
    /// #     std::thread::spawn(move || {
    /// #         use std::io::{Read, Write};
    /// #         for stream in listener.incoming() {
    /// #             let mut stream = stream.unwrap();
    /// #             let mut buf = [0u8; 4096];
    /// #             let n = stream.read(&mut buf).unwrap_or(0);
    /// #             let body = if buf[..n].starts_with(b"POST /token") {
    /// #                 r#"{"access_token":"a1","token_type":"Bearer","expires_in":3600}"#.to_owned()
    /// #             } else {
    /// #                 doc.clone()
    /// #             };
    /// #             let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    /// #         }
    /// #     });
    /// #     issuer
    /// # }
    /// ```
    ///
    /// # Errors
    /// What [`ProviderMetadata::discover`] and
    /// [`ProviderMetadata::token_endpoint`] return.
    pub async fn discover(issuer: &str) -> Result<Self, Error> {
        ProviderMetadata::discover(issuer).await?.token_endpoint()
    }

    /// The revocation endpoint (RFC 7009) of the discovered provider, with this
    /// client registration.
    ///
    /// # Errors
    /// [`Error::Configuration`] when this endpoint was not
    /// [discovered](Self::discover), or the provider names no revocation endpoint
    /// (use [`Revocation::new`] with its URL).
    pub fn revocation(&self) -> Result<Revocation, Error> {
        let url = self.discovered("revocation_endpoint", |m| &m.revocation_endpoint)?;
        let url = self.mtls_alias(|a| &a.revocation_endpoint).unwrap_or(url);
        Revocation::new(self, &url)
    }

    /// The device authorization grant (RFC 8628) at the discovered provider's
    /// device authorization endpoint, with this client registration.
    ///
    /// # Errors
    /// [`Error::Configuration`] when this endpoint was not
    /// [discovered](Self::discover), or the provider names no device authorization
    /// endpoint (use [`DeviceCode::new`] with its URL).
    pub fn device_code(&self) -> Result<DeviceCode, Error> {
        let url = self.discovered("device_authorization_endpoint", |m| {
            &m.device_authorization_endpoint
        })?;
        let url = self
            .mtls_alias(|a| &a.device_authorization_endpoint)
            .unwrap_or(url);
        DeviceCode::new(self.clone(), &url)
    }

    /// The authorization code grant with PKCE on a loopback redirect (RFC 8252) at
    /// the discovered provider's authorization endpoint, with this client
    /// registration. The redirect's `iss` (RFC 9207) is checked against the issuer.
    ///
    /// # Errors
    /// [`Error::Configuration`] when this endpoint was not
    /// [discovered](Self::discover), or the provider names no authorization endpoint
    /// (use [`AuthorizationCode::new`] with its URL).
    pub fn authorization_code(&self) -> Result<AuthorizationCode, Error> {
        let url = self.discovered("authorization_endpoint", |m| &m.authorization_endpoint)?;
        AuthorizationCode::new(self.clone(), &url)
    }

    pub(crate) fn discovered(
        &self,
        name: &str,
        field: impl Fn(&ProviderMetadata) -> &Option<String>,
    ) -> Result<String, Error> {
        let metadata = self.metadata().ok_or_else(|| {
            Error::Configuration(format!(
                "the {name} is known only for a discovered provider (TokenEndpoint::discover)"
            ))
        })?;
        field(metadata).clone().ok_or_else(|| {
            Error::Configuration(format!(
                "the provider metadata of {} names no {name}",
                metadata.issuer
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_places() {
        let at = |s: &str| document_urls(&parse_url(s).unwrap());
        assert_eq!(
            at("https://idp.example.com"),
            [
                "https://idp.example.com/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server"
            ]
        );
        assert_eq!(
            at("https://idp.example.com/realms/main/"),
            [
                "https://idp.example.com/realms/main/.well-known/openid-configuration",
                "https://idp.example.com/.well-known/oauth-authorization-server/realms/main"
            ]
        );
    }

    #[test]
    fn auth_method_is_one_the_provider_supports() {
        let v = |s: &[&str]| s.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(choose_auth(None), TokenEndpointAuth::Basic);
        assert_eq!(
            choose_auth(Some(&v(&["client_secret_post", "client_secret_basic"]))),
            TokenEndpointAuth::Basic
        );
        assert_eq!(
            choose_auth(Some(&v(&["private_key_jwt", "client_secret_post"]))),
            TokenEndpointAuth::Post
        );
    }

    #[test]
    fn documents_of_another_issuer_or_with_clear_text_urls_are_refused() {
        let issuer = "https://idp.example.com";
        let ok = br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/token"}"#;
        assert!(parse_metadata(ok, Some(issuer)).is_ok());
        let other = br#"{"issuer":"https://evil.example.com","token_endpoint":"https://evil.example.com/token"}"#;
        assert!(parse_metadata(other, Some(issuer))
            .unwrap_err()
            .contains("evil.example.com"));
        let clear = br#"{"issuer":"https://idp.example.com","token_endpoint":"http://idp.example.com/token"}"#;
        assert!(parse_metadata(clear, Some(issuer))
            .unwrap_err()
            .contains("token_endpoint"));
        assert!(parse_metadata(b"[]", Some(issuer)).is_err());
    }

    #[test]
    fn max_age_is_read() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), None);
    }
}
