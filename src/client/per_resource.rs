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
        Ok(Prefix {
            scheme,
            host,
            port,
            path,
        })
    }

    fn matches(&self, target: &Target<'_>) -> bool {
        let (Some(scheme), Some(host), Some(port)) =
            (target.scheme(), target.host(), target.port())
        else {
            return false;
        };
        let path = target.path();
        scheme.eq_ignore_ascii_case(&self.scheme)
            && host.eq_ignore_ascii_case(&self.host)
            && port == self.port
            && path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
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
        let chosen = self
            .routes
            .iter()
            .find(|r| r.prefix.matches(&target))
            .map(|r| &r.authorizer)
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
    fn bad_prefixes_are_refused() {
        for bad in ["/relative", "https://api.example.com/?q=1", "not a url"] {
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
