//! The HTTP client used to talk to token endpoints, JWKS and introspection
//! endpoints: any tower HTTP service, with a timeout and a cap on the body size.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::{BoxError, Endpoint, Error};

type Inner =
    BoxCloneSyncService<Request<Full<Bytes>>, Response<UnsyncBoxBody<Bytes, BoxError>>, BoxError>;

/// An HTTP client for the identity provider's endpoints.
///
/// By default a hyper-util client (https through rustls with the `rustls` feature),
/// a 30 s timeout for the whole exchange (connect, headers and body) and a 1 MiB cap
/// on the response body: a token endpoint that hangs, trickles or floods cannot hold
/// or exhaust the caller. Any tower HTTP service can stand in with
/// [`HttpClient::from_service`].
#[derive(Clone)]
pub struct HttpClient {
    inner: Inner,
    timeout: Duration,
    max_body: usize,
    /// Whether it presents a TLS client certificate: known for the clients this
    /// crate builds, `None` for a service of the caller's ([`HttpClient::from_service`]).
    client_certificate: Option<bool>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self::new()
    }
}

/// The default timeout of one exchange with an identity provider endpoint.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default cap on a response body from an identity provider endpoint.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

impl HttpClient {
    /// A hyper-util client with the default timeout and body cap.
    pub fn new() -> Self {
        // The provider named, not the process default: when the application's rustls
        // has two providers (its reqwest on ring, say), there is no default to pick
        // and rustls would panic.
        // (Err only for a provider without TLS 1.2 and 1.3, which ours is not.)
        #[cfg(feature = "rustls")]
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(crate::crypto::tls_provider())
            .unwrap_or_else(|_| hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots())
            .https_or_http()
            .enable_http1()
            .build();
        #[cfg(not(feature = "rustls"))]
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        Self::with_connector(connector, false)
    }

    fn with_connector<C>(connector: C, client_certificate: bool) -> Self
    where
        C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
    {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        HttpClient {
            client_certificate: Some(client_certificate),
            ..Self::from_service(client)
        }
    }

    /// A client with TLS settings of its own: a client certificate for the token
    /// endpoint's `tls_client_auth` / `self_signed_tls_client_auth` (RFC 8705 §2), or
    /// the root of a private PKI.
    ///
    /// ```no_run
    /// use tower_bearer::client::{TokenEndpoint, TokenEndpointAuth};
    /// use tower_bearer::HttpClient;
    /// # fn run(chain_pem: &[u8], key_pem: &[u8], ca_pem: &[u8]) -> Result<(), tower_bearer::Error> {
    /// let http = HttpClient::builder()
    ///     .client_certificate_pem(chain_pem, key_pem)?
    ///     .root_certificates_pem(ca_pem)?
    ///     .build()?;
    /// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?
    ///     .client_id("my-app")
    ///     .auth_method(TokenEndpointAuth::TlsClientAuth)
    ///     .http_client(http);
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "mtls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "mtls")))]
    pub fn builder() -> HttpClientBuilder {
        HttpClientBuilder::default()
    }

    /// Sends requests through `service`, any tower HTTP service (for example one with
    /// a proxy, custom roots or tracing of its own).
    pub fn from_service<S, B>(service: S) -> Self
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let inner = service
            .map_response(|res: Response<B>| res.map(|b| b.map_err(Into::into).boxed_unsync()))
            .map_err(Into::into);
        HttpClient {
            inner: BoxCloneSyncService::new(inner),
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_BODY,
            client_certificate: None,
        }
    }

    /// Whether this client presents a TLS client certificate: `Some` for the
    /// clients this crate builds ([`HttpClient::new`]: no; the builder: when one was
    /// given), `None` (not known) for [`HttpClient::from_service`].
    pub(crate) fn presents_certificate(&self) -> Option<bool> {
        self.client_certificate
    }

    /// The time allowed for one whole exchange, body included. Default 30 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response body accepted, in bytes. Default 1 MiB.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Sends `req` to `endpoint` and reads the whole response body, within the timeout
    /// and cap. Errors name `endpoint`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the exchange takes longer than the timeout,
    /// [`Error::Transport`] when the service fails, [`Error::InvalidResponse`] when the
    /// body is over the cap or breaks off.
    pub async fn send(
        &self,
        endpoint: Endpoint,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, Error> {
        #[cfg(not(feature = "rustls"))]
        if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
            return Err(Error::Configuration(
                "https needs the `rustls` feature of tower-bearer (or HttpClient::from_service)"
                    .into(),
            ));
        }
        let max = self.max_body;
        let started = crate::metrics::Started::now();
        let exchange = async {
            let res = self
                .inner
                .clone()
                .oneshot(req)
                .await
                .map_err(|e| Error::transport(endpoint, e))?;
            let too_big = || {
                Error::InvalidResponse(
                    endpoint,
                    format!("response body is larger than {max} bytes"),
                )
            };
            if let Some(len) = res.body().size_hint().exact() {
                if len > max as u64 {
                    return Err(too_big());
                }
            }
            let (parts, mut body) = res.into_parts();
            let mut collected = bytes::BytesMut::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Error::transport(endpoint, e))?;
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > max {
                        return Err(too_big());
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Ok(Response::from_parts(parts, collected.freeze()))
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout(endpoint, self.timeout)),
        };
        crate::metrics::idp_request(endpoint, &result, started);
        result
    }
}

/// An [`HttpClient`] with TLS settings of its own, from [`HttpClient::builder`]: a
/// client certificate (mutual TLS), extra trusted roots. rustls on aws-lc-rs; TLS 1.2
/// and 1.3; the timeout and body cap of [`HttpClient::new`].
#[cfg(feature = "mtls")]
#[cfg_attr(docsrs, doc(cfg(feature = "mtls")))]
pub struct HttpClientBuilder {
    roots: rustls::RootCertStore,
    webpki_roots: bool,
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
}

#[cfg(feature = "mtls")]
impl Default for HttpClientBuilder {
    fn default() -> Self {
        HttpClientBuilder {
            roots: rustls::RootCertStore::empty(),
            webpki_roots: true,
            identity: None,
        }
    }
}

#[cfg(feature = "mtls")]
impl fmt::Debug for HttpClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClientBuilder")
            .field("added_roots", &self.roots.len())
            .field("webpki_roots", &self.webpki_roots)
            .field(
                "client_certificate",
                &self.identity.as_ref().map(|(chain, _)| chain.len()),
            )
            .finish_non_exhaustive()
    }
}

#[cfg(feature = "mtls")]
impl HttpClientBuilder {
    /// The certificate chain (end-entity first) and private key presented to servers
    /// that ask for a client certificate.
    pub fn client_certificate(
        mut self,
        chain: Vec<rustls::pki_types::CertificateDer<'static>>,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Some((chain, key));
        self
    }

    /// [`client_certificate`](Self::client_certificate) from PEM: the chain's
    /// `CERTIFICATE` blocks (end-entity first) and the key (PKCS#8, PKCS#1 or SEC1).
    ///
    /// # Errors
    /// [`Error::Configuration`] when no certificate or key is found or the PEM is
    /// malformed (the message never quotes the key).
    pub fn client_certificate_pem(self, chain: &[u8], key: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Configuration(format!("invalid client certificate PEM: {e}")))?;
        if chain.is_empty() {
            return Err(Error::Configuration(
                "no CERTIFICATE in the client certificate PEM".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| {
            Error::Configuration("no usable private key in the client key PEM".into())
        })?;
        Ok(self.client_certificate(chain, key))
    }

    /// Trusts `root` (DER) for server certificates, besides the webpki roots
    /// (unless [`without_webpki_roots`](Self::without_webpki_roots)).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a certificate rustls cannot use as a root.
    pub fn root_certificate(
        mut self,
        root: rustls::pki_types::CertificateDer<'static>,
    ) -> Result<Self, Error> {
        self.roots
            .add(root)
            .map_err(|e| Error::Configuration(format!("unusable root certificate: {e}")))?;
        Ok(self)
    }

    /// [`root_certificate`](Self::root_certificate) for each `CERTIFICATE` of a PEM.
    ///
    /// # Errors
    /// [`Error::Configuration`] for malformed PEM, none found or an unusable one.
    pub fn root_certificates_pem(mut self, pem: &[u8]) -> Result<Self, Error> {
        use rustls::pki_types::pem::PemObject as _;
        let mut found = false;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert = cert
                .map_err(|e| Error::Configuration(format!("invalid root certificate PEM: {e}")))?;
            self = self.root_certificate(cert)?;
            found = true;
        }
        if !found {
            return Err(Error::Configuration(
                "no CERTIFICATE in the root certificate PEM".into(),
            ));
        }
        Ok(self)
    }

    /// Trusts only the roots added here, not the webpki (Mozilla) roots: a private
    /// PKI's servers only.
    pub fn without_webpki_roots(mut self) -> Self {
        self.webpki_roots = false;
        self
    }

    /// The client.
    ///
    /// # Errors
    /// [`Error::Configuration`] when no root is trusted, or rustls refuses the client
    /// certificate and key (a key that does not fit, an unsupported algorithm).
    pub fn build(self) -> Result<HttpClient, Error> {
        use std::sync::Arc;

        let mut roots = self.roots;
        if self.webpki_roots {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        if roots.is_empty() {
            return Err(Error::Configuration(
                "no root certificate to trust: add one, or keep the webpki roots".into(),
            ));
        }
        // The provider named, not the process default: an application whose rustls
        // also has another provider enabled would have no default to pick.
        let provider = Arc::new(crate::crypto::tls_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Configuration(format!("TLS configuration: {e}")))?
            .with_root_certificates(roots);
        let client_certificate = self.identity.is_some();
        let config = match self.identity {
            Some((chain, key)) => config
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Configuration(format!("unusable client certificate: {e}")))?,
            None => config.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient::with_connector(connector, client_certificate))
    }
}

/// Refuses URLs that would send credentials in clear text to another host:
/// `http://` is accepted only for loopback hosts unless `allow_insecure_http`.
pub(crate) fn check_url(uri: &Uri, allow_insecure_http: bool) -> Result<(), Error> {
    let host = uri.host().ok_or_else(|| {
        Error::Configuration(format!(
            "URL {} has no host",
            crate::error::display_url(uri)
        ))
    })?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_insecure_http || is_loopback(host) => Ok(()),
        Some("http") => Err(Error::Configuration(format!(
            "refusing to send credentials in clear text to {host}: use https, or allow insecure http explicitly"
        ))),
        _ => Err(Error::Configuration(format!(
            "URL {} must start with https:// (or http:// for a loopback host)",
            crate::error::display_url(uri)
        ))),
    }
}

/// Whether `host` (a URI's host, an IPv6 literal in brackets or not) is loopback:
/// an address in `127.0.0.0/8` or `::1`, or the name `localhost` itself. Not names
/// under it (`app.localhost`) nor `localhost.` (absolute): the system resolver may
/// hand those to DNS (glibc with `hosts: files dns` does), whose answer anyone on
/// the path can forge; RFC 8252 §8.3 prefers the loopback literal for the same
/// reason. Allocates nothing: the client layer asks it on every clear-text request.
pub(crate) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    bare.eq_ignore_ascii_case("localhost")
}

/// The refusal of a credential on a request to `scheme://host` (RFC 6750 §5.3,
/// RFC 6749 §10.3): any request that names a host, other than `https` (or `wss`),
/// to a host that is not loopback. Not only `http`: a connector that is not TLS
/// (hyper-util's `HttpConnector` with `enforce_http(false)`, as TLS connectors wrap
/// it) sends any other scheme in clear text, and hyper-util's client sends an
/// authority-form URI (`CONNECT host:port`, no scheme) as `http`. `None` for
/// `https` first (one comparison of a few bytes, no allocation); a relative URI (no
/// scheme, no host) is the inner service's to route, and passes.
pub(crate) fn clear_text_refusal(scheme: Option<&str>, host: Option<&str>) -> Option<Error> {
    if scheme.is_some_and(|s| s.eq_ignore_ascii_case("https") || s.eq_ignore_ascii_case("wss")) {
        return None;
    }
    let host = match (scheme, host) {
        (None, None) => return None,
        (_, host) => host.unwrap_or_default(),
    };
    if is_loopback(host) {
        return None;
    }
    let scheme = scheme.unwrap_or("http");
    Some(Error::Configuration(format!(
        "refusing to send a credential in clear text to {scheme}://{host} (RFC 6750 §5.3): use \
         https, or allow_insecure_http() on the layer or middleware where the hop is protected \
         otherwise"
    )))
}

/// Parses a URL given by a user into a [`Uri`], with a clear error.
pub(crate) fn parse_url(url: &str) -> Result<Uri, Error> {
    url.parse::<Uri>().map_err(|e| {
        // Never the query, fragment or user information: they may hold a secret.
        let before_query = url.split(['?', '#']).next().unwrap_or_default();
        let shown = match before_query.split_once("://") {
            Some((scheme, rest)) if rest.contains('@') => {
                format!(
                    "{scheme}://…@{}",
                    rest.rsplit('@').next().unwrap_or_default()
                )
            }
            _ => before_query.to_owned(),
        };
        Error::Configuration(format!("invalid URL {shown:?}: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test graph's rustls has two providers (ours, and ring from the dev
    /// dependency jwt-authorizer's reqwest), as an application's may: with no process
    /// default, `ClientConfig::builder()` panics, so the client names its provider.
    #[cfg(feature = "rustls")]
    #[test]
    fn a_client_is_made_beside_a_second_rustls_provider() {
        // (Another test may have installed a process default; none of the lib's do.)
        let _client = HttpClient::new();
    }

    #[test]
    fn clear_text_only_to_loopback() {
        let ok = [
            "https://idp.example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.9.9.9/token",
            "http://[::1]:80/token",
            "http://localhost/token",
            "http://LOCALHOST/token",
        ];
        for url in ok {
            assert!(check_url(&parse_url(url).unwrap(), false).is_ok(), "{url}");
        }
        let refused = [
            "http://idp.example.com/token",
            "http://10.0.0.1/token",
            "ftp://127.0.0.1/x",
            // Names the system resolver may hand to DNS.
            "http://api.localhost/token",
            "http://localhost./token",
            "http://localhost.evil.example/token",
            "http://127.0.0.1.evil.example/token",
            // Numeric forms Rust does not read as addresses, and mapped addresses.
            "http://0x7f000001/token",
            "http://127.1/token",
            "http://2130706433/token",
            "http://[::ffff:8.8.8.8]/token",
            "http://127.0.0.1@evil.example/token",
        ];
        for url in refused {
            assert!(
                matches!(
                    check_url(&parse_url(url).unwrap(), false),
                    Err(Error::Configuration(_))
                ),
                "{url}"
            );
        }
        assert!(check_url(&parse_url("http://idp.example.com/t").unwrap(), true).is_ok());
        assert!(check_url(&parse_url("/relative").unwrap(), true).is_err());
    }
}
