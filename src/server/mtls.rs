//! Certificate-bound access tokens (RFC 8705 §3), checked on the resource server.
//!
//! A token bound to a client certificate names it in its claims: `cnf["x5t#S256"]`,
//! the base64url SHA-256 thumbprint of the certificate's DER. A stolen token is then
//! useless without the certificate's private key, since the thumbprint is compared
//! with the certificate the client proved it holds in the TLS handshake.
//!
//! [`RequireBearerLayer::mtls`](super::RequireBearerLayer::mtls) makes that
//! comparison, with a [`CertificateBinding`] telling where the client certificate
//! comes from:
//!
//! - [`CertificateBinding::connection`]: the TLS connection of this server, as a
//!   [`ClientCertificate`] in the request extensions. [`serve`] (an accept loop on
//!   tokio-rustls) puts it there for every request of a connection; servers with an
//!   accept loop of their own wrap each connection's service in
//!   [`AddClientCertificate`].
//! - [`CertificateBinding::trusted_header`]: behind a TLS-terminating proxy, the
//!   `Client-Cert` header the proxy sets (RFC 9440: `Client-Cert: :<base64 DER>:`).
//!   Only for a proxy that removes that header from what clients send: whoever can
//!   set it can claim any certificate. Never enabled by default.
//!
//! A bound token without the matching certificate is refused (`401 invalid_token`,
//! RFC 8705 §6); a token that is not bound passes as before.
//!
//! # An axum API over TLS, requiring client certificates
//!
//! ```no_run
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use tokio_rustls::rustls::{self, pki_types::CertificateDer, server::WebPkiClientVerifier};
//! use tokio_rustls::TlsAcceptor;
//! use tower_bearer::server::mtls::{self, CertificateBinding};
//! use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer};
//!
//! # async fn run(
//! #     client_ca: CertificateDer<'static>,
//! #     chain: Vec<CertificateDer<'static>>,
//! #     key: rustls::pki_types::PrivateKeyDer<'static>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
//! let mut roots = rustls::RootCertStore::empty();
//! roots.add(client_ca)?;
//! let verifier =
//!     WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
//! let tls = rustls::ServerConfig::builder_with_provider(provider)
//!     .with_safe_default_protocol_versions()?
//!     .with_client_cert_verifier(verifier)
//!     .with_single_cert(chain, key)?;
//!
//! let validator = JwtValidator::<Claims>::hmac(b"a-secret-of-at-least-32-bytes!!!");
//! let app: Router = Router::new()
//!     .route("/items", get(|| async { "items" }))
//!     .layer(RequireBearerLayer::new(validator).mtls(CertificateBinding::connection()));
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! mtls::serve(listener, TlsAcceptor::from(Arc::new(tls)), app).await;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use subtle::ConstantTimeEq;
use tower_service::Service;

use super::Rejection;
use crate::BoxError;

/// The header a TLS-terminating proxy sets with the client certificate (RFC 9440).
pub const CLIENT_CERT: &str = "client-cert";

/// The longest `Client-Cert` header accepted, in bytes (a certificate with a 4096-bit
/// RSA key and many extensions is well under 4 KiB of DER).
pub const MAX_HEADER_LEN: usize = 16 * 1024;

/// The time a client has to finish the TLS handshake in [`serve`].
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The end-entity certificate a client presented, in the request extensions.
///
/// Holds the DER and its RFC 8705 thumbprint, computed once per connection. Put into
/// every request of a TLS connection by [`serve`] or [`AddClientCertificate`]; read
/// in a handler with `req.extensions().get::<ClientCertificate>()`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertificate(Arc<Inner>);

#[derive(PartialEq, Eq)]
struct Inner {
    der: Vec<u8>,
    x5t_s256: String,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.0.x5t_s256)
            .field("der_len", &self.0.der.len())
            .finish()
    }
}

impl ClientCertificate {
    /// The certificate of this DER (not checked: the TLS stack checked it).
    pub fn from_der(der: impl Into<Vec<u8>>) -> Self {
        let der = der.into();
        let x5t_s256 = thumbprint(&der);
        ClientCertificate(Arc::new(Inner { der, x5t_s256 }))
    }

    /// The end-entity certificate the peer of a rustls server connection presented,
    /// if it presented one.
    pub fn of_connection(conn: &rustls::ServerConnection) -> Option<Self> {
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .map(|der| Self::from_der(der.as_ref()))
    }

    /// Parses an RFC 9440 `Client-Cert` value: `:<base64 DER>:` (a structured-field
    /// byte sequence), with a DER that has the shape of an X.509 certificate.
    ///
    /// # Errors
    /// A fixed description of what is wrong (it never quotes the value).
    pub fn from_header_value(value: &[u8]) -> Result<Self, &'static str> {
        if value.len() > MAX_HEADER_LEN {
            return Err("the Client-Cert header is too long");
        }
        let value = value.trim_ascii();
        let inner = value
            .strip_prefix(b":")
            .and_then(|v| v.strip_suffix(b":"))
            .ok_or("the Client-Cert header is not a byte sequence (:base64:)")?;
        let der = SF_BASE64
            .decode(inner)
            .map_err(|_| "the Client-Cert header is not valid base64")?;
        if !looks_like_certificate(&der) {
            return Err("the Client-Cert header does not hold a certificate");
        }
        Ok(Self::from_der(der))
    }

    /// The certificate's DER.
    pub fn der(&self) -> &[u8] {
        &self.0.der
    }

    /// Its RFC 8705 §3.1 thumbprint: base64url (no padding) of the SHA-256 of the DER,
    /// as a bound token's `cnf["x5t#S256"]` names it.
    pub fn x5t_s256(&self) -> &str {
        &self.0.x5t_s256
    }
}

/// base64url(SHA-256(der)), RFC 8705 §3.1.
fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(super::sha256(der))
}

/// Standard base64 (RFC 8941 §3.3.5), with padding optional as parsers should take it.
const SF_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One DER element: its tag, its content and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, rest) = rest.split_at(n);
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    if rest.len() < len {
        return None;
    }
    let (content, rest) = rest.split_at(len);
    Some((tag, content, rest))
}

/// Whether `der` has the outer shape of an X.509 certificate (RFC 5280 §4.1): a
/// SEQUENCE of tbsCertificate (SEQUENCE), signatureAlgorithm (SEQUENCE) and
/// signatureValue (BIT STRING), and nothing after it.
fn looks_like_certificate(der: &[u8]) -> bool {
    const SEQUENCE: u8 = 0x30;
    const BIT_STRING: u8 = 0x03;
    let Some((SEQUENCE, cert, [])) = der_element(der) else {
        return false;
    };
    let Some((SEQUENCE, _tbs, rest)) = der_element(cert) else {
        return false;
    };
    let Some((SEQUENCE, _alg, rest)) = der_element(rest) else {
        return false;
    };
    matches!(der_element(rest), Some((BIT_STRING, _, [])))
}

/// Where the client certificate of a request comes from, for
/// [`RequireBearerLayer::mtls`](super::RequireBearerLayer::mtls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateBinding {
    source: Source,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Connection,
    Header(HeaderName),
}

impl CertificateBinding {
    /// The [`ClientCertificate`] in the request extensions, put there by [`serve`] or
    /// [`AddClientCertificate`] from this server's own TLS connection. Headers are
    /// ignored.
    pub fn connection() -> Self {
        CertificateBinding {
            source: Source::Connection,
        }
    }

    /// The `Client-Cert` header (RFC 9440) set by a TLS-terminating proxy in front.
    ///
    /// Only behind a proxy that sets it from the TLS connection and removes any
    /// `Client-Cert` a client sent: the header is believed as it is. The extensions
    /// are ignored (the connection's peer is the proxy), and the header's certificate
    /// takes their place, for handlers to read as a [`ClientCertificate`]. More than one such header,
    /// or one that is not `:<base64 DER>:` of a certificate, is refused with `400
    /// invalid_request`.
    pub fn trusted_header() -> Self {
        CertificateBinding {
            source: Source::Header(HeaderName::from_static(CLIENT_CERT)),
        }
    }

    /// As [`trusted_header`](Self::trusted_header), with a header of another name
    /// (holding the same `:<base64 DER>:` form).
    ///
    /// # Errors
    /// [`Error::Configuration`](crate::Error::Configuration) for a name that is not a
    /// valid header name.
    pub fn trusted_header_named(name: &str) -> Result<Self, crate::Error> {
        let name = HeaderName::try_from(name).map_err(|_| {
            crate::Error::Configuration(format!("{name:?} is not a valid header name"))
        })?;
        Ok(CertificateBinding {
            source: Source::Header(name),
        })
    }

    /// Whether the certificate comes from a trusted header.
    pub(crate) fn is_trusted_header(&self) -> bool {
        matches!(self.source, Source::Header(_))
    }

    /// The client certificate of `req`, if it has one.
    ///
    /// # Errors
    /// A `400 invalid_request` rejection for a trusted header that is there twice or
    /// malformed.
    pub fn certificate_of<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Option<ClientCertificate>, Rejection> {
        match &self.source {
            Source::Connection => Ok(req.extensions().get::<ClientCertificate>().cloned()),
            Source::Header(name) => {
                let mut values = req.headers().get_all(name).iter();
                let Some(value) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(Rejection::InvalidRequest(
                        "the request has more than one client certificate header",
                    ));
                }
                ClientCertificate::from_header_value(value.as_bytes())
                    .map(Some)
                    .map_err(Rejection::InvalidRequest)
            }
        }
    }

    /// Accepts a token bound to `bound` (its `cnf["x5t#S256"]`, `None` if it is not
    /// bound) when sent with `presented`.
    ///
    /// # Errors
    /// `401 invalid_token` for a bound token without a certificate or with another
    /// one.
    pub fn confirm(
        &self,
        bound: Option<&str>,
        presented: Option<&ClientCertificate>,
    ) -> Result<(), Rejection> {
        let Some(bound) = bound else {
            return Ok(());
        };
        match presented {
            None => Err(Rejection::invalid_token(
                "the access token is bound to a client certificate and none was presented",
            )),
            Some(cert) if bool::from(cert.x5t_s256().as_bytes().ct_eq(bound.as_bytes())) => Ok(()),
            Some(_) => Err(Rejection::invalid_token(
                "the access token is bound to another client certificate",
            )),
        }
    }
}

/// Puts a connection's [`ClientCertificate`] into the extensions of each of its
/// requests: wrap the service of one connection in it, in an accept loop of your own.
#[derive(Clone, Debug)]
pub struct AddClientCertificate<S> {
    inner: S,
    certificate: Option<ClientCertificate>,
}

impl<S> AddClientCertificate<S> {
    /// `inner`, called with `certificate` (the connection's, if the peer sent one)
    /// in every request.
    pub fn new(inner: S, certificate: Option<ClientCertificate>) -> Self {
        AddClientCertificate { inner, certificate }
    }
}

impl<S, B> Service<Request<B>> for AddClientCertificate<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        match &self.certificate {
            Some(cert) => {
                req.extensions_mut().insert(cert.clone());
            }
            // A certificate can only come from the connection.
            None => {
                req.extensions_mut().remove::<ClientCertificate>();
            }
        }
        self.inner.call(req)
    }
}

/// Serves `service` (an axum `Router`, any tower HTTP service) over HTTP/1.1 on TLS
/// connections accepted from `listener` with `acceptor`, each request carrying the
/// connection's [`ClientCertificate`] (when the client presented one).
///
/// Whether client certificates are required, optional or verified against which CAs
/// is the acceptor's `ServerConfig`'s choice. A handshake that fails or takes longer
/// than [`HANDSHAKE_TIMEOUT`] closes that connection only; a failed `accept` (too many
/// open files) is retried after a pause. Runs until its task is dropped.
pub async fn serve<S, ResBody>(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    service: S,
) where
    S: Service<Request<hyper::body::Incoming>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certificate = ClientCertificate::of_connection(tls.get_ref().1);
            let service = AddClientCertificate::new(service, certificate);
            let hyper_service = hyper::service::service_fn(move |req| {
                let call = tower::ServiceExt::oneshot(service.clone(), req);
                async move {
                    Ok::<_, std::convert::Infallible>(match call.await {
                        Ok(res) => res.map(|body| body.map_err(Into::into).boxed_unsync()),
                        Err(e) => {
                            let e: BoxError = e.into();
                            tracing::warn!(error = %e, "the service failed");
                            let mut res = Response::new(
                                http_body_util::Empty::new()
                                    .map_err(|never| match never {})
                                    .boxed_unsync(),
                            );
                            *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            res
                        }
                    })
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tls), hyper_service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_shape() {
        // SEQUENCE { SEQUENCE {}, SEQUENCE {}, BIT STRING {00} }
        let ok = [0x30, 0x07, 0x30, 0x00, 0x30, 0x00, 0x03, 0x01, 0x00];
        assert!(looks_like_certificate(&ok));
        assert!(!looks_like_certificate(&ok[..8]));
        let mut trailing = ok.to_vec();
        trailing.push(0);
        assert!(!looks_like_certificate(&trailing));
        assert!(!looks_like_certificate(&[]));
        assert!(!looks_like_certificate(&[
            0x30, 0x84, 0xff, 0xff, 0xff, 0xff
        ]));
        assert!(!looks_like_certificate(&[0x30, 0x85, 1, 1, 1, 1, 1]));
    }

    #[test]
    fn header_values() {
        let der = [0x30, 0x07, 0x30, 0x00, 0x30, 0x00, 0x03, 0x01, 0x00];
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let cert = ClientCertificate::from_header_value(format!(" :{b64}: ").as_bytes()).unwrap();
        assert_eq!(cert.der(), der);
        assert_eq!(cert.x5t_s256(), thumbprint(&der));
        for bad in [
            &b""[..],
            b"::",
            b":",
            b"abc",
            b":!!:",
            b":AAAA:",
            b"MAcwADAAAwEA",
        ] {
            assert!(
                ClientCertificate::from_header_value(bad).is_err(),
                "{bad:?}"
            );
        }
    }
}
