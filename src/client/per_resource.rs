//! [`PerResource`]: one authorizer (one token cache) per API a client calls, picked
//! by the URL of each request.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

use super::authorizer::default_port;
use super::{Authorizer, Credential, CredentialFuture, Target};
use crate::transport::parse_url;
use crate::Error;

/// One authorizer per API, picked by the URL each request goes to: the way to call
/// several APIs through one client when each wants a token of its own (an audience
/// per API, RFC 8707 resource indicators).
///
/// Each API is a URL prefix: scheme, host, port (default ports implied) and a path
/// prefix that ends at a segment boundary (`https://api.example.com/v1` covers
/// `/v1` and `/v1/users`, not `/v10`). The longest prefix that matches wins. A request
/// that matches none gets the [`otherwise`](Self::otherwise) authorizer, or no
/// credential at all: a token for one API is never sent to a host it was not meant
/// for.
///
/// The path is matched as the server may read it, not as it is spelled: a request's
/// path is read as sent, with its dot segments removed (RFC 3986 §5.2.4), and with
/// percent-encoded unreserved characters, `%2F`, `%5C` and `%3B` decoded, backslashes
/// taken for slashes, doubled slashes merged and `;` parameters dropped from each
/// segment (what many servers do: `/v1/..;/admin` is `/admin` to Tomcat). When
/// these readings fall under different APIs (`/v1/../admin`, `/v1/%2e%2e/admin`),
/// the request gets no credential at all, not even the
/// [`otherwise`](Self::otherwise) one. A prefix must be given in that normal form
/// (no `;` parameters).
///
/// `401`s are told to every authorizer; each drops only the value it issued, so
/// the refused API's cache alone refreshes.
///
/// ```
/// use tower_bearer::client::{AuthorizeLayer, PerResource, Refreshing, TokenEndpoint};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth2/token")?
///     .client_id("billing")
///     .client_secret("s3cret");
/// // One cache per API, each asking for tokens for its own resource.
/// let apis = ["https://orders.example.com", "https://ledger.example.com/v2"];
/// let authorizer = PerResource::each(apis, |api| {
///     Refreshing::new(endpoint.client_credentials().resource(api))
/// })?;
/// let layer = AuthorizeLayer::new(authorizer);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct PerResource {
    /// Longest path prefix first.
    routes: Vec<Route>,
    otherwise: Option<Arc<dyn Authorizer>>,
}

#[derive(Clone)]
struct Route {
    prefix: Prefix,
    authorizer: Arc<dyn Authorizer>,
}

/// A URL prefix, parsed once.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Prefix {
    scheme: String,
    host: String,
    port: u16,
    /// Without a trailing `/`; empty for the whole origin.
    path: String,
}

impl Prefix {
    fn parse(url: &str) -> Result<Prefix, Error> {
        let uri = parse_url(url)?;
        let bad = |why: &str| Error::Configuration(format!("resource URL {url:?}: {why}"));
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| bad("no scheme"))?
            .to_ascii_lowercase();
        let host = uri
            .host()
            .ok_or_else(|| bad("no host"))?
            .to_ascii_lowercase();
        let port = uri
            .port_u16()
            .or_else(|| default_port(&scheme))
            .ok_or_else(|| bad("no port, and no default one for its scheme"))?;
        if uri.query().is_some() {
            return Err(bad("a query cannot be a prefix"));
        }
        let path = uri.path().trim_end_matches('/').to_owned();
        if normalized(&path).trim_end_matches('/') != path {
            return Err(bad(
                "its path is not in normal form (dot segments, percent-encoding, \\ or //)",
            ));
        }
        Ok(Prefix {
            scheme,
            host,
            port,
            path,
        })
    }

    /// Whether `target`'s origin is this prefix's.
    fn same_origin(&self, target: &Target<'_>) -> bool {
        let (Some(scheme), Some(host), Some(port)) =
            (target.scheme(), target.host(), target.port())
        else {
            return false;
        };
        scheme.eq_ignore_ascii_case(&self.scheme)
            && host.eq_ignore_ascii_case(&self.host)
            && port == self.port
    }

    /// Whether `path` (one reading of a request's path) is under this prefix.
    fn covers(&self, path: &str) -> bool {
        path.strip_prefix(self.path.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    #[cfg(test)]
    fn matches(&self, target: &Target<'_>) -> bool {
        self.same_origin(target) && readings(target.path()).iter().all(|p| self.covers(p))
    }
}

/// The ways a server may read a request's path: as sent; with its dot segments
/// removed; decoded and normalized.
fn readings(path: &str) -> [std::borrow::Cow<'_, str>; 3] {
    [
        std::borrow::Cow::Borrowed(path),
        std::borrow::Cow::Owned(remove_dot_segments(path)),
        std::borrow::Cow::Owned(normalized(path)),
    ]
}

/// `path` with percent-encoded unreserved characters, `/`, `\`, `%` and `;` decoded
/// (until nothing more decodes, for servers that decode twice), backslashes read as
/// slashes, doubled slashes merged, `;` parameters dropped from each segment and dot
/// segments removed.
fn normalized(path: &str) -> String {
    let mut decoded = path.to_owned();
    for _ in 0..4 {
        let next = decode_unreserved(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let mut slashes = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        let c = if c == '\\' { '/' } else { c };
        if !(c == '/' && slashes.ends_with('/')) {
            slashes.push(c);
        }
    }
    // Servlet containers (Tomcat, Jetty) drop `;` parameters off each segment:
    // `/v1/..;/admin` is `/admin` to them.
    let bare: Vec<&str> = slashes
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect();
    remove_dot_segments(&bare.join("/"))
}

/// Decodes `%XX` where it stands for an unreserved character (RFC 3986 §2.3), `/`,
/// `\`, `%` (a double encoding) or `;`; leaves every other escape as it is.
fn decode_unreserved(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let b = (h * 16 + l) as u8;
                if b.is_ascii_alphanumeric() || b"-._~/\\%;".contains(&b) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    // Only ASCII bytes were decoded in place of ASCII escapes: still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// RFC 3986 §5.2.4 on an absolute path (a path that does not start with `/` is
/// read as if it did).
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut trailing = false;
    for segment in path.trim_start_matches('/').split('/') {
        trailing = false;
        match segment {
            "." => trailing = true,
            ".." => {
                out.pop();
                trailing = true;
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(path.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing || result.is_empty() {
        result.push('/');
    }
    result
}

impl PerResource {
    /// No APIs yet: every request goes without a credential.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requests under `url` get their credential from `authorizer`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL without a scheme or host, or with a query;
    /// or one already given.
    pub fn at(mut self, url: &str, authorizer: impl Authorizer) -> Result<Self, Error> {
        let prefix = Prefix::parse(url)?;
        if self.routes.iter().any(|r| r.prefix == prefix) {
            return Err(Error::Configuration(format!(
                "resource URL {url:?} is given twice"
            )));
        }
        self.routes.push(Route {
            prefix,
            authorizer: Arc::new(authorizer),
        });
        self.routes
            .sort_by_key(|r| std::cmp::Reverse(r.prefix.path.len()));
        Ok(self)
    }

    /// One authorizer for each URL in `urls`, made by `make` from that URL (a grant
    /// with `.resource(url)` behind a [`Refreshing`](super::Refreshing) cache).
    ///
    /// # Errors
    /// As [`at`](Self::at).
    pub fn each<I, T, F, A>(urls: I, mut make: F) -> Result<Self, Error>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
        F: FnMut(&str) -> A,
        A: Authorizer,
    {
        urls.into_iter().try_fold(Self::new(), |per, url| {
            let url = url.as_ref();
            per.at(url, make(url))
        })
    }

    /// The authorizer of requests under no given URL (default: none, and no
    /// credential), and of callers that give no target
    /// ([`Authorizer::credential`]).
    pub fn otherwise(mut self, authorizer: impl Authorizer) -> Self {
        self.otherwise = Some(Arc::new(authorizer));
        self
    }

    fn everyone(&self) -> impl Iterator<Item = &Arc<dyn Authorizer>> {
        self.routes
            .iter()
            .map(|r| &r.authorizer)
            .chain(self.otherwise.iter())
    }
}

impl Authorizer for PerResource {
    fn credential(&self) -> CredentialFuture {
        match &self.otherwise {
            Some(a) => a.credential(),
            None => CredentialFuture::ready(Ok(None)),
        }
    }

    fn credential_for(&self, target: Target<'_>) -> CredentialFuture {
        // The route of each reading of the path; they must agree.
        let mut chosen = None;
        for (i, path) in readings(target.path()).iter().enumerate() {
            let route = self
                .routes
                .iter()
                .position(|r| r.prefix.same_origin(&target) && r.prefix.covers(path));
            match chosen {
                Some(first) if first != route => {
                    tracing::debug!("a path read two ways leads to two APIs: no credential");
                    return CredentialFuture::ready(Ok(None));
                }
                _ if i == 0 => chosen = Some(route),
                _ => {}
            }
        }
        let chosen = chosen
            .flatten()
            .map(|i| &self.routes[i].authorizer)
            .or(self.otherwise.as_ref());
        match chosen {
            Some(a) => a.credential_for(target),
            None => CredentialFuture::ready(Ok(None)),
        }
    }

    fn on_unauthorized(&self, sent: &HeaderValue) {
        self.everyone().for_each(|a| a.on_unauthorized(sent));
    }

    fn on_accepted(&self, sent: &HeaderValue) {
        self.everyone().for_each(|a| a.on_accepted(sent));
    }

    fn on_dpop_nonce(&self, sent: &Credential, nonce: &HeaderValue) {
        self.everyone().for_each(|a| a.on_dpop_nonce(sent, nonce));
    }
}

impl fmt::Debug for PerResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerResource")
            .field(
                "resources",
                &self
                    .routes
                    .iter()
                    .map(|r| {
                        format!(
                            "{}://{}:{}{}",
                            r.prefix.scheme, r.prefix.host, r.prefix.port, r.prefix.path
                        )
                    })
                    .collect::<Vec<_>>(),
            )
            .field("otherwise", &self.otherwise.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(prefix: &str, url: &str) -> bool {
        let uri: http::Uri = url.parse().unwrap();
        Prefix::parse(prefix)
            .unwrap()
            .matches(&Target::new(&http::Method::GET, &uri))
    }

    #[test]
    fn prefixes_match_on_origin_and_whole_segments() {
        assert!(matches(
            "https://api.example.com",
            "https://api.example.com/x?q=1"
        ));
        assert!(matches(
            "https://api.example.com/",
            "https://API.example.com:443/"
        ));
        assert!(matches(
            "https://api.example.com/v1",
            "https://api.example.com/v1"
        ));
        assert!(matches(
            "https://api.example.com/v1/",
            "https://api.example.com/v1/users"
        ));
        assert!(!matches(
            "https://api.example.com/v1",
            "https://api.example.com/v10"
        ));
        assert!(!matches(
            "https://api.example.com",
            "http://api.example.com/"
        ));
        assert!(!matches(
            "https://api.example.com",
            "https://api.example.com:8443/"
        ));
        assert!(!matches(
            "https://api.example.com",
            "https://api.example.com.evil.test/"
        ));
        assert!(!matches("http://127.0.0.1:8080", "/pkg.Service/Method"));
        assert!(matches("http://127.0.0.1:8080", "http://127.0.0.1:8080/a"));
    }

    #[test]
    fn paths_are_matched_as_the_server_may_read_them() {
        let v1 = "https://api.example.com/v1";
        for outside in [
            "https://api.example.com/v1/../admin/keys",
            "https://api.example.com/v1/%2e%2e/admin",
            "https://api.example.com/v1/%2E./admin",
            "https://api.example.com/v1/..%2Fadmin",
            "https://api.example.com/v1/..%5cadmin",
            "https://api.example.com/v1/%252e%252e/admin",
            "https://api.example.com/v1//../../admin",
            "https://api.example.com/%76%31/../admin",
        ] {
            assert!(!matches(v1, outside), "{outside}");
        }
        for inside in [
            "https://api.example.com/v1/a/../b",
            "https://api.example.com/v1/./b",
            "https://user@API.example.com:443/v1/b",
        ] {
            assert!(matches(v1, inside), "{inside}");
        }
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("/mid/content=5/../6"), "/mid/6");
        assert_eq!(remove_dot_segments("/../.."), "/");
        assert_eq!(normalized("/a\\..\\b//c/%7Ex"), "/b/c/~x");
        assert_eq!(normalized("/%zz%2"), "/%zz%2");
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for bad in [
            "/relative",
            "https://api.example.com/?q=1",
            "not a url",
            "https://api.example.com/v1/../admin",
            "https://api.example.com/%76%31",
            "https://api.example.com//v1",
        ] {
            assert!(
                matches!(Prefix::parse(bad), Err(Error::Configuration(_))),
                "{bad}"
            );
        }
        let twice = PerResource::new()
            .at("https://a.example.com", super::super::NoAuth)
            .unwrap()
            .at("https://A.example.com:443/", super::super::NoAuth);
        assert!(matches!(twice, Err(Error::Configuration(_))));
    }
}
