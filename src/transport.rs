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
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        #[cfg(feature = "rustls")]
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        #[cfg(not(feature = "rustls"))]
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();

        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self::from_service(client)
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
        }
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

/// Refuses URLs that would send credentials in clear text to another host:
/// `http://` is accepted only for loopback hosts unless `allow_insecure_http`.
pub(crate) fn check_url(uri: &Uri, allow_insecure_http: bool) -> Result<(), Error> {
    let host = uri
        .host()
        .ok_or_else(|| Error::Configuration(format!("URL {uri} has no host")))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if allow_insecure_http || is_loopback(host) => Ok(()),
        Some("http") => Err(Error::Configuration(format!(
            "refusing to send credentials in clear text to {host}: use https, or allow insecure http explicitly"
        ))),
        _ => Err(Error::Configuration(format!(
            "URL {uri} must start with https:// (or http:// for a loopback host)"
        ))),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return ip.is_loopback();
    }
    let host = bare.trim_end_matches('.').to_ascii_lowercase();
    host == "localhost" || host.ends_with(".localhost")
}

/// Parses a URL given by a user into a [`Uri`], with a clear error.
pub(crate) fn parse_url(url: &str) -> Result<Uri, Error> {
    url.parse::<Uri>()
        .map_err(|e| Error::Configuration(format!("invalid URL {url:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_text_only_to_loopback() {
        let ok = [
            "https://idp.example.com/token",
            "http://127.0.0.1:8080/token",
            "http://127.9.9.9/token",
            "http://[::1]:80/token",
            "http://localhost/token",
            "http://api.localhost/token",
        ];
        for url in ok {
            assert!(check_url(&parse_url(url).unwrap(), false).is_ok(), "{url}");
        }
        let refused = [
            "http://idp.example.com/token",
            "http://10.0.0.1/token",
            "ftp://127.0.0.1/x",
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
