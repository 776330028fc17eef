//! OAuth 2.0 Protected Resource Metadata (RFC 9728): the document a resource server
//! publishes at `/.well-known/oauth-protected-resource` to tell clients which
//! authorization servers issue its tokens, and how to present them.
//!
//! Both wings use it: the server serves it ([`ProtectedResourceMetadata::service`])
//! and names its URL in every challenge
//! ([`RequireBearerLayer::resource_metadata`](crate::server::RequireBearerLayer::resource_metadata));
//! the client reads it ([`ProtectedResourceMetadata::fetch`]) after a `401` whose
//! challenge names it ([`resource_metadata_url`]).

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::Full;
use serde::{Deserialize, Serialize};
use tower_service::Service;

use crate::transport::{check_url, parse_url};
use crate::{Endpoint, Error, HttpClient};

/// The well-known suffix of RFC 9728 §3.
const WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// How long clients may cache the document when no other lifetime is set.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);

/// A protected resource's metadata (RFC 9728 §2).
///
/// Build it with [`new`](Self::new) and the setters (`resource` is the only required
/// member); fields this type does not name go in [`extra`](Self::extra) and are
/// served and read as they are.
///
/// ```
/// use axum::Router;
/// use tower_bearer::server::{ProtectedResourceMetadata, RequireBearerLayer, StaticTokens};
///
/// let metadata = ProtectedResourceMetadata::new("https://api.example.com/v1")
///     .authorization_servers(["https://idp.example.com"])
///     .scopes_supported(["items:read", "items:write"])
///     .bearer_methods_supported(["header"]);
/// // https://api.example.com/.well-known/oauth-protected-resource/v1
/// let url = metadata.url().unwrap();
/// let api: Router = Router::new()
///     .route("/v1/items", axum::routing::get(|| async { "items" }))
///     .layer(RequireBearerLayer::new(StaticTokens::new([("s3cret", "ci")])).resource_metadata(url));
/// // The document itself is public: outside the layer.
/// let app: Router = Router::new()
///     .route_service(&metadata.path().unwrap(), metadata.service().unwrap())
///     .merge(api);
/// # let _ = app;
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProtectedResourceMetadata {
    /// The resource identifier: an `https` URL with no fragment.
    pub resource: String,
    /// The issuers of the authorization servers that issue tokens for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization_servers: Vec<String>,
    /// The URL of the resource's own JWK Set (for signed responses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The scopes used in requests for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// How a bearer token may be sent: `header`, `body`, `query` (RFC 6750 §2).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bearer_methods_supported: Vec<String>,
    /// The JWS algorithms the resource signs its responses with.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_signing_alg_values_supported: Vec<String>,
    /// A name for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// The URL of the documentation for developers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_documentation: Option<String>,
    /// Every other member (RFC 9728 §2 and extensions), served and read as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// How long clients may cache the document (`Cache-Control: max-age`).
    #[serde(skip, default = "default_max_age")]
    max_age: Duration,
}

fn default_max_age() -> Duration {
    DEFAULT_MAX_AGE
}

impl ProtectedResourceMetadata {
    /// The metadata of the resource `resource` (its identifier, an `https` URL).
    pub fn new(resource: impl Into<String>) -> Self {
        ProtectedResourceMetadata {
            resource: resource.into(),
            authorization_servers: Vec::new(),
            jwks_uri: None,
            scopes_supported: Vec::new(),
            bearer_methods_supported: Vec::new(),
            resource_signing_alg_values_supported: Vec::new(),
            resource_name: None,
            resource_documentation: None,
            extra: serde_json::Map::new(),
            max_age: DEFAULT_MAX_AGE,
        }
    }

    /// The issuers of the authorization servers that issue tokens for this resource.
    pub fn authorization_servers<T: Into<String>>(
        mut self,
        issuers: impl IntoIterator<Item = T>,
    ) -> Self {
        self.authorization_servers = issuers.into_iter().map(Into::into).collect();
        self
    }

    /// The scopes used in requests for this resource.
    pub fn scopes_supported<T: Into<String>>(
        mut self,
        scopes: impl IntoIterator<Item = T>,
    ) -> Self {
        self.scopes_supported = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// How a bearer token may be sent (`header` for [`RequireBearerLayer`](crate::server::RequireBearerLayer)).
    pub fn bearer_methods_supported<T: Into<String>>(
        mut self,
        methods: impl IntoIterator<Item = T>,
    ) -> Self {
        self.bearer_methods_supported = methods.into_iter().map(Into::into).collect();
        self
    }

    /// The JWS algorithms the resource signs its responses with.
    pub fn resource_signing_alg_values_supported<T: Into<String>>(
        mut self,
        algorithms: impl IntoIterator<Item = T>,
    ) -> Self {
        self.resource_signing_alg_values_supported =
            algorithms.into_iter().map(Into::into).collect();
        self
    }

    /// The URL of the resource's JWK Set.
    pub fn jwks_uri(mut self, url: impl Into<String>) -> Self {
        self.jwks_uri = Some(url.into());
        self
    }

    /// A name for people.
    pub fn resource_name(mut self, name: impl Into<String>) -> Self {
        self.resource_name = Some(name.into());
        self
    }

    /// The URL of the documentation for developers.
    pub fn resource_documentation(mut self, url: impl Into<String>) -> Self {
        self.resource_documentation = Some(url.into());
        self
    }

    /// Any other member (`resource_policy_uri`, `dpop_bound_access_tokens_required`,
    /// an extension's), replacing one of the same name.
    pub fn field(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// How long clients may cache the document, sent as `Cache-Control: public,
    /// max-age` (default one hour).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Where the document of `resource` is (RFC 9728 §3.1): the well-known suffix goes
    /// between the host and the path (a trailing `/` of the path dropped), so
    /// `https://api.example.com/v1` has its document at
    /// `https://api.example.com/.well-known/oauth-protected-resource/v1`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when `resource` is not an absolute URL, or has a
    /// fragment.
    pub fn url_for(resource: &str) -> Result<String, Error> {
        let (origin, path) = split_resource(resource)?;
        Ok(format!("{origin}{path}"))
    }

    /// The URL of this document: [`url_for`](Self::url_for) its `resource`. Give it to
    /// [`RequireBearerLayer::resource_metadata`](crate::server::RequireBearerLayer::resource_metadata).
    ///
    /// # Errors
    /// As [`url_for`](Self::url_for); and as [`service`](Self::service) for a
    /// `jwks_uri` that is not `https` or `none` among the signing algorithms.
    pub fn url(&self) -> Result<String, Error> {
        self.check()?;
        Self::url_for(&self.resource)
    }

    /// RFC 9728 §2's rules for the members the document publishes: `jwks_uri` "MUST
    /// use the https scheme" (loopback included), and `none` "MUST NOT be used" in
    /// `resource_signing_alg_values_supported`.
    fn check(&self) -> Result<(), Error> {
        if let Some(jwks_uri) = &self.jwks_uri {
            let https = jwks_uri
                .parse::<Uri>()
                .is_ok_and(|u| u.scheme_str() == Some("https") && u.authority().is_some());
            if !https {
                return Err(Error::Configuration(format!(
                    "jwks_uri {jwks_uri:?} must be an https URL (RFC 9728 §2)"
                )));
            }
        }
        if self
            .resource_signing_alg_values_supported
            .iter()
            .any(|alg| alg.eq_ignore_ascii_case("none"))
        {
            return Err(Error::Configuration(
                "resource_signing_alg_values_supported must not list none (RFC 9728 §2)".into(),
            ));
        }
        Ok(())
    }

    /// The path (and query) this document is served at on the resource's host, for a
    /// router: `/.well-known/oauth-protected-resource/v1` for
    /// `https://api.example.com/v1`; with axum,
    /// `router.route_service(&metadata.path()?, metadata.service()?)`.
    ///
    /// # Errors
    /// As [`url`](Self::url).
    pub fn path(&self) -> Result<String, Error> {
        self.check()?;
        split_resource(&self.resource).map(|(_, path)| path)
    }

    /// The JSON document.
    pub fn to_json(&self) -> Bytes {
        // A map of strings, arrays and JSON values: serializing cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// A tower service answering every `GET` (and `HEAD`) with this document as JSON
    /// (`Cache-Control: public, max-age=…`), and any other method with `405`. It does
    /// not look at the path: route it at [`path`](Self::path).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a document RFC 9728 §2 forbids: a `jwks_uri` that
    /// is not `https`, or `none` among `resource_signing_alg_values_supported`.
    pub fn service(&self) -> Result<MetadataService, Error> {
        self.check()?;
        let cache_control = format!("public, max-age={}", self.max_age.as_secs());
        Ok(MetadataService {
            body: self.to_json(),
            cache_control: HeaderValue::try_from(cache_control)
                .unwrap_or_else(|_| HeaderValue::from_static("public, max-age=3600")),
        })
    }

    /// Fetches the metadata of `resource` from its well-known URL
    /// ([`url_for`](Self::url_for)) and checks it is `resource`'s own (RFC 9728 §3.3).
    ///
    /// # Errors
    /// As [`fetch`](Self::fetch).
    pub async fn fetch_for(resource: &str, http: &HttpClient) -> Result<Self, Error> {
        let url = Self::url_for(resource)?;
        Self::fetch(&url, resource, http).await
    }

    /// Fetches the document at `url` (the `resource_metadata` of a challenge, see
    /// [`resource_metadata_url`]) for `resource`, and checks that the document's
    /// `resource` is exactly that string: a document naming another resource is
    /// refused, so a server cannot send a client to an authorization server of its
    /// choosing for someone else's resource. RFC 9728 §3.3 has `resource` be the URL
    /// the client sent its request to (pass that for the strict rule);
    /// draft-mcguinness-oauth-rfc9728bis also allows the resource identifier that URL
    /// falls under (`https://api.example.com/v1` for `…/v1/items`), which is what a
    /// resource serving one document for many paths publishes. The
    /// authorization servers are then
    /// [`authorization_servers`](Self::authorization_servers); give one to
    /// [`TokenEndpoint::discover`](crate::client::TokenEndpoint::discover).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that is not `https` (`http` only on
    /// loopback); [`Error::InvalidResponse`] (naming
    /// [`Endpoint::ResourceMetadata`]) when the server answers other than `200`, the
    /// document is not JSON of this shape, or names another resource; transport
    /// errors and timeouts as [`HttpClient::send`] gives them.
    pub async fn fetch(url: &str, resource: &str, http: &HttpClient) -> Result<Self, Error> {
        let invalid = |why: String| Error::InvalidResponse(Endpoint::ResourceMetadata, why);
        let Some(found) = Self::get(url, http).await? else {
            return Err(invalid(format!("{url} answered HTTP 404")));
        };
        if found.resource != resource {
            return Err(invalid(format!(
                "{url} describes resource {:?}, not {resource:?}",
                found.resource
            )));
        }
        Ok(found)
    }

    /// The document at `url`, `None` when the server answers `404`; its `resource`
    /// is not checked (the caller does: [`fetch`](Self::fetch), or
    /// [`covers`](Self::covers)).
    ///
    /// # Errors
    /// As [`fetch`](Self::fetch), but for the check of `resource`.
    pub async fn get(url: &str, http: &HttpClient) -> Result<Option<Self>, Error> {
        let uri = parse_url(url)?;
        check_url(&uri, false)?;
        let shown = crate::error::display_url(&uri);
        let req = Request::get(uri)
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Configuration(format!("resource metadata request {shown}: {e}")))?;
        let res = http.send(Endpoint::ResourceMetadata, req).await?;
        let invalid = |why: String| Error::InvalidResponse(Endpoint::ResourceMetadata, why);
        if res.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if res.status() != StatusCode::OK {
            return Err(invalid(format!(
                "{shown} answered HTTP {}",
                res.status().as_u16()
            )));
        }
        let found: ProtectedResourceMetadata = serde_json::from_slice(res.body()).map_err(|e| {
            invalid(format!(
                "{shown}: not a resource metadata document ({})",
                crate::error::json_error(&e)
            ))
        })?;
        Ok(Some(found))
    }

    /// Whether this document's `resource` is `url`, or the resource identifier `url`
    /// falls under: the same scheme and authority (compared without case), and a
    /// path that is `url`'s path or a prefix of it ending at a `/`
    /// (draft-mcguinness-oauth-rfc9728bis; `https://api.example.com` covers
    /// `https://api.example.com/mcp`, never `https://api.example.com.evil`). A
    /// `resource` with a query or a fragment covers only itself.
    pub fn covers(&self, url: &str) -> bool {
        if self.resource == url {
            return true;
        }
        let (Ok(ours), Ok(theirs)) = (self.resource.parse::<Uri>(), url.parse::<Uri>()) else {
            return false;
        };
        if ours.query().is_some() || self.resource.contains('#') {
            return false;
        }
        let same_origin = ours
            .scheme_str()
            .zip(theirs.scheme_str())
            .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b))
            && ours
                .authority()
                .zip(theirs.authority())
                .is_some_and(|(a, b)| a.as_str().eq_ignore_ascii_case(b.as_str()));
        if !same_origin {
            return false;
        }
        let prefix = ours.path().trim_end_matches('/');
        let path = theirs.path();
        path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// `(origin, well-known path)` of a resource identifier.
fn split_resource(resource: &str) -> Result<(String, String), Error> {
    if resource.contains('#') {
        return Err(Error::Configuration(format!(
            "resource {resource:?} has a fragment: a resource identifier cannot"
        )));
    }
    let uri: Uri = parse_url(resource)?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Error::Configuration(format!(
            "resource {resource:?} is not an absolute URL"
        )));
    };
    let path = uri.path().trim_end_matches('/');
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    Ok((
        format!("{scheme}://{authority}"),
        format!("{WELL_KNOWN}{path}{query}"),
    ))
}

/// The `resource_metadata` URL of a `Bearer` challenge in `headers`
/// (`WWW-Authenticate`, RFC 9728 §5.1), if one names it.
pub fn resource_metadata_url(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| bearer_param(v, "resource_metadata"))
}

/// The value of parameter `name` of the `Bearer` challenge in `value` (quoted-string
/// or token), scanning `name=` pairs after the scheme.
pub(crate) fn bearer_param(value: &str, name: &str) -> Option<String> {
    let rest = value.trim_start();
    let (scheme, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let (key, after) = rest.split_once('=')?;
        let key = key.trim();
        let after = after.trim_start();
        let (val, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (out, &quoted[end?..])
        } else {
            let end = after.find([',', ' ']).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(val);
        }
        rest = next;
    }
}

/// The service of [`ProtectedResourceMetadata::service`]: the document, serialized once.
#[derive(Clone)]
pub struct MetadataService {
    body: Bytes,
    cache_control: HeaderValue,
}

impl fmt::Debug for MetadataService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MetadataService")
            .field("len", &self.body.len())
            .field("cache_control", &self.cache_control)
            .finish()
    }
}

impl<B> Service<Request<B>> for MetadataService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut res = Response::new(Full::new(Bytes::new()));
        let method = req.method();
        if method != Method::GET && method != Method::HEAD {
            *res.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            res.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return ready(Ok(res));
        }
        if method == Method::GET {
            *res.body_mut() = Full::new(self.body.clone());
        }
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(CACHE_CONTROL, self.cache_control.clone());
        ready(Ok(res))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_well_known_suffix_goes_between_host_and_path() {
        let url = |r| ProtectedResourceMetadata::url_for(r).unwrap();
        assert_eq!(
            url("https://api.example.com"),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            url("https://api.example.com/"),
            "https://api.example.com/.well-known/oauth-protected-resource"
        );
        assert_eq!(
            url("https://api.example.com:8443/v1/"),
            "https://api.example.com:8443/.well-known/oauth-protected-resource/v1"
        );
        assert!(ProtectedResourceMetadata::url_for("/v1").is_err());
        assert!(ProtectedResourceMetadata::url_for("https://a.example/#x").is_err());
    }

    #[test]
    fn challenges_are_read() {
        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"x\""),
        );
        assert_eq!(resource_metadata_url(&headers), None);
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(
                r#"Bearer realm="a, \"b\"", error="invalid_token", resource_metadata="https://api.example.com/.well-known/oauth-protected-resource""#,
            ),
        );
        assert_eq!(
            resource_metadata_url(&headers).as_deref(),
            Some("https://api.example.com/.well-known/oauth-protected-resource")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("bearer resource_metadata=https://x.example/m, realm=api"),
        );
        assert_eq!(
            resource_metadata_url(&headers).as_deref(),
            Some("https://x.example/m")
        );
    }

    #[test]
    fn hostile_challenges_give_nothing_and_never_panic() {
        for value in [
            "Bearer",
            "Bearer ",
            "Bearer resource_metadata",
            "Bearer resource_metadata=\"unterminated",
            "Bearer resource_metadata=\"a\\",
            "Bearer ,,,=,=\"\",",
            "Bearer realm=\"x\"resource_metadata",
            "Bearerresource_metadata=\"x\"",
        ] {
            assert_eq!(bearer_param(value, "resource_metadata"), None, "{value}");
        }
        assert_eq!(
            bearer_param(
                "Bearer  ,resource_metadata = \"a\\\"b\"",
                "resource_metadata"
            )
            .as_deref(),
            Some("a\"b")
        );
    }

    #[test]
    fn extra_fields_round_trip() {
        let m = ProtectedResourceMetadata::new("https://api.example.com")
            .authorization_servers(["https://idp.example.com"])
            .field("dpop_bound_access_tokens_required", true);
        let back: ProtectedResourceMetadata = serde_json::from_slice(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.extra["dpop_bound_access_tokens_required"], true);
    }
}
