//! Certificate-bound access tokens (RFC 8705) with real certificates made here: an
//! axum API over TLS on 127.0.0.1 that requires client certificates (served by
//! `server::mtls::serve`), the same API behind a "proxy" that passes the certificate
//! in a trusted `Client-Cert` header (RFC 9440), hostile headers, and a token endpoint
//! over TLS that records the client certificate `HttpClient` presents
//! (`tls_client_auth`).
#![cfg(all(feature = "mtls", feature = "jwks"))]

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::{encode, EncodingKey, Header};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tower_bearer::client::{TokenEndpoint, TokenEndpointAuth};
use tower_bearer::server::mtls::{
    self, AddClientCertificate, CertificateBinding, ClientCertificate,
};
use tower_bearer::server::{Claims, JwtValidator, RequireBearerLayer};
use tower_bearer::{Endpoint, Error, HttpClient};

const SECRET: &[u8] = b"the-mtls-test-secret-of-32-bytes!";

/// A certificate and its key, in the forms the tests hand around.
struct Identity {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
    key_der: Vec<u8>,
}

impl Identity {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// RFC 8705 §3.1, computed here rather than by the crate.
    fn x5t(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.der.as_ref()))
    }

    /// The RFC 9440 `Client-Cert` value of this certificate.
    fn client_cert_header(&self) -> String {
        format!(":{}:", STANDARD.encode(self.der.as_ref()))
    }
}

/// A test PKI: one CA, a server certificate for 127.0.0.1, client certificates A and B.
struct Pki {
    ca: Identity,
    server: Identity,
    a: Identity,
    b: Identity,
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    name: &str,
    sans: Vec<String>,
    eku: ExtendedKeyUsagePurpose,
) -> Identity {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![eku];
    let cert = params.signed_by(&key, issuer).unwrap();
    Identity {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
    }
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "tower-bearer test CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&ca_key).unwrap();
    let ca = Identity {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: String::new(),
        key_der: ca_key.serialize_der(),
    };
    let issuer = Issuer::new(params, ca_key);
    Pki {
        server: leaf(
            &issuer,
            "api",
            vec!["127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        a: leaf(
            &issuer,
            "client A",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        b: leaf(
            &issuer,
            "client B",
            vec![],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        ca,
    }
}

/// The server's TLS: the server certificate, client certificates from the CA
/// required (or only asked for, when `optional`).
fn server_tls(pki: &Pki, optional: bool) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.der.clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = if optional {
        verifier.allow_unauthenticated()
    } else {
        verifier
    }
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server.der.clone()], pki.server.key())
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// An HS256 access token, bound to `x5t` when given.
fn token(x5t: Option<&str>) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let mut claims = json!({ "sub": "client", "exp": exp });
    if let Some(x5t) = x5t {
        claims["cnf"] = json!({ "x5t#S256": x5t });
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// The API: `/whoami` answers with the thumbprint of the certificate it saw.
fn api(binding: CertificateBinding) -> Router {
    async fn whoami(cert: Option<Extension<ClientCertificate>>) -> String {
        cert.map_or_else(
            || "no certificate".into(),
            |Extension(c)| c.x5t_s256().to_owned(),
        )
    }
    Router::new()
        .route("/whoami", get(whoami))
        .layer(RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET)).mtls(binding))
}

/// The API over TLS with `serve`, on 127.0.0.1.
async fn tls_api(acceptor: TlsAcceptor, binding: CertificateBinding) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(mtls::serve(listener, acceptor, api(binding)));
    addr
}

/// A client of the test PKI, presenting `identity` if given.
fn client(pki: &Pki, identity: Option<&Identity>) -> HttpClient {
    let mut builder = HttpClient::builder()
        .root_certificates_pem(pki.ca.cert_pem.as_bytes())
        .unwrap()
        .without_webpki_roots();
    if let Some(id) = identity {
        builder = builder
            .client_certificate_pem(id.cert_pem.as_bytes(), id.key_pem.as_bytes())
            .unwrap();
    }
    builder.build().unwrap()
}

/// `GET https://addr/whoami` with the token and extra headers: status, challenge, body.
async fn call(
    http: &HttpClient,
    addr: SocketAddr,
    token: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, String, String), Error> {
    let mut req = Request::get(format!("https://{addr}/whoami"))
        .header("authorization", format!("Bearer {token}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = http
        .send(
            Endpoint::ResourceMetadata,
            req.body(Full::new(Bytes::new())).unwrap(),
        )
        .await?;
    let challenge = res
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    Ok((
        res.status(),
        challenge,
        String::from_utf8_lossy(res.body()).into_owned(),
    ))
}

#[tokio::test]
async fn bound_token_passes_with_its_certificate_only() {
    let pki = pki();
    let addr = tls_api(server_tls(&pki, false), CertificateBinding::connection()).await;
    let (with_a, with_b) = (client(&pki, Some(&pki.a)), client(&pki, Some(&pki.b)));
    let bound_to_a = token(Some(&pki.a.x5t()));

    let (status, _, body) = call(&with_a, addr, &bound_to_a, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    // The handler sees the connection's certificate, with the same thumbprint.
    assert_eq!(body, pki.a.x5t());

    let (status, challenge, _) = call(&with_b, addr, &bound_to_a, &[]).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    // B's own token passes with B on the same server.
    let (status, _, body) = call(&with_b, addr, &token(Some(&pki.b.x5t())), &[])
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, pki.b.x5t()));
}

#[tokio::test]
async fn unbound_token_passes_as_before() {
    let pki = pki();
    let addr = tls_api(server_tls(&pki, false), CertificateBinding::connection()).await;
    let (status, _, _) = call(&client(&pki, Some(&pki.a)), addr, &token(None), &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn server_requiring_certificates_refuses_a_client_without_one() {
    let pki = pki();
    let addr = tls_api(server_tls(&pki, false), CertificateBinding::connection()).await;
    let err = call(&client(&pki, None), addr, &token(None), &[])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(..)), "{err:?}");
}

#[tokio::test]
async fn optional_certificates_bound_token_without_certificate_refused() {
    let pki = pki();
    let addr = tls_api(server_tls(&pki, true), CertificateBinding::connection()).await;
    let anonymous = client(&pki, None);

    let (status, challenge, _) = call(&anonymous, addr, &token(Some(&pki.a.x5t())), &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");

    let (status, _, body) = call(&anonymous, addr, &token(None), &[]).await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "no certificate"));
}

#[tokio::test]
async fn client_cert_header_ignored_unless_enabled() {
    let pki = pki();
    let addr = tls_api(server_tls(&pki, false), CertificateBinding::connection()).await;
    // B on the connection claims to be A in a header: the connection wins.
    let header = pki.a.client_cert_header();
    let (status, _, _) = call(
        &client(&pki, Some(&pki.b)),
        addr,
        &token(Some(&pki.a.x5t())),
        &[("client-cert", &header)],
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // On a plain server without the binding's header mode, the header is nothing.
    let plain = common::serve(api(CertificateBinding::connection())).await;
    let bound = format!("Bearer {}", token(Some(&pki.a.x5t())));
    let answer = common::send_raw(
        plain,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("client-cert", header.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 401, "{answer:?}");
}

/// The API behind a TLS-terminating proxy: plain HTTP, the certificate in a header.
async fn behind_proxy(binding: CertificateBinding) -> SocketAddr {
    common::serve(api(binding)).await
}

#[tokio::test]
async fn trusted_header_binds_when_enabled() {
    let pki = pki();
    let addr = behind_proxy(CertificateBinding::trusted_header()).await;
    let bound = format!("Bearer {}", token(Some(&pki.a.x5t())));
    let unbound = format!("Bearer {}", token(None));
    let (a, b) = (pki.a.client_cert_header(), pki.b.client_cert_header());

    let answer = common::send_raw(
        addr,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("client-cert", a.as_bytes()),
        ],
    )
    .await;
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, pki.a.x5t().as_str())
    );

    let answer = common::send_raw(
        addr,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("client-cert", b.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 401);
    assert!(answer.challenge().contains("invalid_token"), "{answer:?}");

    let answer = common::send_raw(addr, "/whoami", &[("authorization", bound.as_bytes())]).await;
    assert_eq!(answer.status, 401);
    assert!(answer.challenge().contains("invalid_token"), "{answer:?}");

    let answer = common::send_raw(addr, "/whoami", &[("authorization", unbound.as_bytes())]).await;
    assert_eq!(answer.status, 200);
    let answer = common::send_raw(
        addr,
        "/whoami",
        &[
            ("authorization", unbound.as_bytes()),
            ("client-cert", b.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);

    // Without padding (RFC 8941 parsers should take it), and a header of another name.
    let unpadded = format!(
        ":{}:",
        STANDARD.encode(pki.a.der.as_ref()).trim_end_matches('=')
    );
    let answer = common::send_raw(
        addr,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("client-cert", unpadded.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let named =
        behind_proxy(CertificateBinding::trusted_header_named("x-client-cert").unwrap()).await;
    let answer = common::send_raw(
        named,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("x-client-cert", a.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let answer = common::send_raw(
        named,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("client-cert", a.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn hostile_client_cert_headers_refused_without_panic() {
    let pki = pki();
    let addr = behind_proxy(CertificateBinding::trusted_header()).await;
    let a = pki.a.client_cert_header();
    let not_a_cert = format!(":{}:", STANDARD.encode(b"hello, I am a certificate"));
    let truncated = format!(
        ":{}:",
        STANDARD.encode(&pki.a.der.as_ref()[..pki.a.der.len() - 1])
    );
    let huge = format!(":{}:", STANDARD.encode(vec![0x30u8; 20_000]));
    let rows: Vec<(&str, Vec<&[u8]>)> = vec![
        ("bad base64", vec![b":not base64!:"]),
        ("not a byte sequence", vec![a.trim_matches(':').as_bytes()]),
        ("empty byte sequence", vec![b"::"]),
        ("one colon", vec![b":"]),
        ("empty", vec![b""]),
        ("not a certificate", vec![not_a_cert.as_bytes()]),
        ("truncated certificate", vec![truncated.as_bytes()]),
        ("over the cap", vec![huge.as_bytes()]),
        ("obs-text", vec![b":\xff\xfe:"]),
        ("two headers", vec![a.as_bytes(), a.as_bytes()]),
    ];
    for token in [token(Some(&pki.a.x5t())), token(None)] {
        let bearer = format!("Bearer {token}");
        for (name, values) in &rows {
            let mut headers: Vec<(&str, &[u8])> = vec![("authorization", bearer.as_bytes())];
            headers.extend(values.iter().map(|v| ("client-cert", *v)));
            let answer = common::send_raw(addr, "/whoami", &headers).await;
            assert_eq!(answer.status, 400, "{name}: {answer:?}");
            assert!(
                answer.challenge().contains("invalid_request"),
                "{name}: {answer:?}"
            );
        }
    }
    // And the server is still there.
    let bound = format!("Bearer {}", token(Some(&pki.a.x5t())));
    let answer = common::send_raw(
        addr,
        "/whoami",
        &[
            ("authorization", bound.as_bytes()),
            ("client-cert", a.as_bytes()),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
}

/// What the token server saw of one request.
#[derive(Clone, Debug, Default)]
struct Seen {
    certificate: Option<Vec<u8>>,
    form: Vec<(String, String)>,
    authorization: Option<String>,
}

/// A token endpoint over TLS that requires client certificates and records what it
/// got: its own accept loop on tokio-rustls, with `AddClientCertificate`.
async fn token_server(acceptor: TlsAcceptor) -> (SocketAddr, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let app = Router::new().route(
        "/token",
        post(
            move |cert: Option<Extension<ClientCertificate>>,
                  headers: http::HeaderMap,
                  Form(form): Form<Vec<(String, String)>>| {
                let record = Arc::clone(&record);
                async move {
                    record.lock().unwrap().push(Seen {
                        certificate: cert.map(|Extension(c)| c.der().to_vec()),
                        form,
                        authorization: headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_owned()),
                    });
                    Json::<Value>(json!({
                        "access_token": "issued-for-a-certificate",
                        "token_type": "Bearer",
                        "expires_in": 3600
                    }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cert = ClientCertificate::of_connection(tls.get_ref().1);
                let service = AddClientCertificate::new(app, cert);
                let service = hyper_util::service::TowerToHyperService::new(service);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn token_endpoint_gets_the_client_certificate() {
    let pki = pki();
    let (addr, seen) = token_server(server_tls(&pki, false)).await;
    for auth in [
        TokenEndpointAuth::TlsClientAuth,
        TokenEndpointAuth::SelfSignedTlsClientAuth,
    ] {
        let endpoint = TokenEndpoint::new(&format!("https://{addr}/token"))
            .unwrap()
            .client_id("my-app")
            // Set by mistake: never sent with a certificate method.
            .client_secret("never-sent")
            .auth_method(auth.clone())
            .http_client(client(&pki, Some(&pki.a)));
        let token = endpoint
            .request(&[("grant_type", "client_credentials")])
            .await
            .unwrap();
        assert_eq!(
            secrecy::ExposeSecret::expose_secret(token.access_token()),
            "issued-for-a-certificate"
        );
        let got = seen.lock().unwrap().pop().unwrap();
        assert_eq!(
            got.certificate.as_deref(),
            Some(pki.a.der.as_ref()),
            "{auth:?}"
        );
        assert_eq!(got.authorization, None, "{auth:?}");
        assert!(
            got.form.contains(&("client_id".into(), "my-app".into())),
            "{got:?}"
        );
        assert!(
            got.form.iter().all(|(k, _)| k != "client_secret"),
            "{got:?}"
        );
    }

    // Without a certificate the handshake fails: a transport error, nothing recorded.
    let endpoint = TokenEndpoint::new(&format!("https://{addr}/token"))
        .unwrap()
        .client_id("my-app")
        .auth_method(TokenEndpointAuth::TlsClientAuth)
        .http_client(client(&pki, None));
    let err = endpoint
        .request(&[("grant_type", "client_credentials")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport(..)), "{err:?}");
    assert!(seen.lock().unwrap().is_empty());

    // No client id: refused before any request.
    let endpoint = TokenEndpoint::new(&format!("https://{addr}/token"))
        .unwrap()
        .auth_method(TokenEndpointAuth::TlsClientAuth)
        .http_client(client(&pki, Some(&pki.a)));
    let err = endpoint
        .request(&[("grant_type", "client_credentials")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
}

#[test]
fn http_client_builder_errors_and_debug() {
    let pki = pki();
    let bad = HttpClient::builder().client_certificate_pem(b"not pem", pki.a.key_pem.as_bytes());
    assert!(matches!(bad, Err(Error::Configuration(_))));
    let bad =
        HttpClient::builder().client_certificate_pem(pki.a.cert_pem.as_bytes(), b"no key here");
    let Err(Error::Configuration(msg)) = bad else {
        panic!("accepted a missing key")
    };
    assert!(!msg.contains("no key here"));
    assert!(HttpClient::builder().root_certificates_pem(b"").is_err());
    assert!(matches!(
        HttpClient::builder().without_webpki_roots().build(),
        Err(Error::Configuration(_))
    ));
    // A key that is not the certificate's is refused when building.
    let mismatched = HttpClient::builder()
        .client_certificate(vec![pki.a.der.clone()], pki.b.key())
        .build();
    assert!(
        matches!(mismatched, Err(Error::Configuration(_))),
        "{mismatched:?}"
    );

    let builder = HttpClient::builder()
        .client_certificate_pem(pki.a.cert_pem.as_bytes(), pki.a.key_pem.as_bytes())
        .unwrap();
    let debug = format!("{builder:?}");
    let key_body: String = pki
        .a
        .key_pem
        .lines()
        .nth(1)
        .unwrap()
        .chars()
        .take(16)
        .collect();
    assert!(!debug.contains(&key_body), "{debug}");
    assert!(builder.build().is_ok());
}

#[test]
fn client_certificate_thumbprint_and_debug() {
    let pki = pki();
    let cert = ClientCertificate::from_der(pki.a.der.as_ref());
    assert_eq!(cert.x5t_s256(), pki.a.x5t());
    let parsed =
        ClientCertificate::from_header_value(pki.a.client_cert_header().as_bytes()).unwrap();
    assert_eq!(parsed, cert);
    let debug = format!("{cert:?}");
    assert!(debug.contains(&pki.a.x5t()), "{debug}");
}

/// The oidc-provider of the interop suite (`interop/provider.mjs --mtls-dir`), over
/// https with client certificates, when node and `interop/node_modules` are there.
struct MtlsProvider {
    _child: tokio::process::Child,
    issuer: String,
    _dir: TempDir,
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn mtls_provider(pki: &Pki) -> Option<MtlsProvider> {
    mtls_provider_with(pki, &[]).await
}

/// As [`mtls_provider`], with more options of `provider.mjs` (`--fapi`); its own
/// `/_test/browse` trusts the test CA (`NODE_EXTRA_CA_CERTS`).
async fn mtls_provider_with(pki: &Pki, options: &[&str]) -> Option<MtlsProvider> {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let interop = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    if !interop
        .join("node_modules/oidc-provider/package.json")
        .exists()
    {
        eprintln!("skipped: no interop/node_modules (npm ci in interop/)");
        return None;
    }
    // One directory per provider: tests of this binary run side by side.
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-mtls-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &pki.ca.cert_pem).unwrap();
    std::fs::write(dir.join("server.pem"), &pki.server.cert_pem).unwrap();
    std::fs::write(dir.join("server.key"), &pki.server.key_pem).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = match tokio::process::Command::new("node")
        .arg(interop.join("provider.mjs"))
        .args(["--port", &port.to_string(), "--ttl", "300", "--mtls-dir"])
        .arg(&dir)
        .args(options)
        .env("NODE_EXTRA_CA_CERTS", dir.join("ca.pem"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("skipped: cannot run node: {e}");
            return None;
        }
    };
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(std::time::Duration::from_secs(90), lines.next_line())
        .await
        .expect("oidc-provider did not start within 90 s")
        .unwrap()
        .expect("oidc-provider exited before it was ready");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let issuer = line.split_whitespace().nth(1).unwrap().to_owned();
    assert_eq!(issuer, format!("https://127.0.0.1:{port}"));
    Some(MtlsProvider {
        _child: child,
        issuer,
        _dir: TempDir(dir),
    })
}

/// End to end with a certified provider: `tls_client_auth` at oidc-provider's token
/// endpoint gets a token bound to certificate A (its `cnf["x5t#S256"]`), which an
/// API validating it with the provider's keys accepts from A and refuses from B.
#[tokio::test]
async fn oidc_provider_issues_certificate_bound_tokens() {
    let pki = pki();
    let Some(provider) = mtls_provider(&pki).await else {
        return;
    };
    let endpoint = TokenEndpoint::new(&format!("{}/token", provider.issuer))
        .unwrap()
        .client_id("mtls-client")
        .auth_method(TokenEndpointAuth::TlsClientAuth)
        .param("resource", "https://api.jwt.test")
        .http_client(client(&pki, Some(&pki.a)));
    let token = endpoint
        .request(&[("grant_type", "client_credentials"), ("scope", "read")])
        .await
        .unwrap();
    let access = secrecy::ExposeSecret::expose_secret(token.access_token()).to_owned();
    let payload: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(access.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(payload["cnf"]["x5t#S256"], json!(pki.a.x5t()), "{payload}");

    // B's certificate is not the registered subject: the provider refuses it.
    let as_b = TokenEndpoint::new(&format!("{}/token", provider.issuer))
        .unwrap()
        .client_id("mtls-client")
        .auth_method(TokenEndpointAuth::TlsClientAuth)
        .http_client(client(&pki, Some(&pki.b)));
    let err = as_b
        .request(&[("grant_type", "client_credentials")])
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("invalid_client"), "{err}");

    let validator = tower_bearer::server::JwksValidator::<Claims>::discover(&provider.issuer)
        .unwrap()
        .http_client(client(&pki, None))
        .rules(|v| v.audience("https://api.jwt.test"))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/whoami", get(|| async { "ok" }))
        .layer(RequireBearerLayer::new(validator).mtls(CertificateBinding::connection()));
    tokio::spawn(mtls::serve(listener, server_tls(&pki, false), app));

    let (status, _, _) = call(&client(&pki, Some(&pki.a)), addr, &access, &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, challenge, _) = call(&client(&pki, Some(&pki.b)), addr, &access, &[])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge.contains("invalid_token"), "{challenge}");
}

/// FAPI 2.0 with mTLS against oidc-provider (`--fapi --mtls-dir`): the client
/// `fapi-mtls-client` authenticates with certificate A (`tls_client_auth`), and
/// `fapi2()` takes that as its sender constraint (no DPoP key). A person logs in
/// through the provider's pages (its `/_test/browse`); the request is pushed (the
/// metadata demands it) over mTLS; the token is bound to A (`cnf["x5t#S256"]`),
/// refreshed over mTLS, and revoked, after which its refresh token is refused.
#[cfg(feature = "dpop")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fapi2_browser_login_with_tls_client_auth() {
    use tower_bearer::client::{ProviderMetadata, TokenSource, TokenTypeHint};
    let pki = pki();
    let Some(provider) = mtls_provider_with(&pki, &["--fapi"]).await else {
        return;
    };
    let as_a = client(&pki, Some(&pki.a));
    let metadata = ProviderMetadata::discover_with(&provider.issuer, &as_a)
        .await
        .unwrap();
    assert!(metadata.require_pushed_authorization_requests);
    let endpoint = metadata
        .token_endpoint()
        .unwrap()
        .client_id("fapi-mtls-client")
        .auth_method(TokenEndpointAuth::TlsClientAuth)
        .http_client(as_a.clone());
    let (urls, mut shown) = tokio::sync::mpsc::unbounded_channel();
    let login = endpoint
        .authorization_code()
        .unwrap()
        .scope("openid offline_access read")
        .resource("https://api.jwt.test")
        .fapi2()
        .unwrap()
        .show(move |u| {
            let _ = urls.send(u.to_owned());
        });
    let running = {
        let login = login.clone();
        tokio::spawn(async move { login.login().await })
    };
    let url = shown.recv().await.expect("the login showed no URL");
    assert!(url.contains("request_uri="), "{url}");
    // The person's browser, at the provider.
    let browse = Request::post(format!("{}/_test/browse", provider.issuer))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(
            serde_urlencoded::to_string([("url", url.as_str())]).unwrap(),
        )))
        .unwrap();
    let page = as_a.send(Endpoint::Authorization, browse).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "{:?}", page.body());
    let token = tokio::time::timeout(std::time::Duration::from_secs(60), running)
        .await
        .expect("the login did not end")
        .unwrap()
        .unwrap();
    let claims = |token: &tower_bearer::Token| -> Value {
        let access = secrecy::ExposeSecret::expose_secret(token.access_token()).to_owned();
        serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(access.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap()
    };
    let first = claims(&token);
    assert_eq!(first["cnf"]["x5t#S256"], json!(pki.a.x5t()), "{first}");
    assert_eq!(first["sub"], "alice", "{first}");
    assert_eq!(first["client_id"], "fapi-mtls-client", "{first}");

    let refreshed = login.fetch(Some(&token)).await.unwrap();
    assert_eq!(claims(&refreshed)["cnf"]["x5t#S256"], json!(pki.a.x5t()));
    let refresh =
        secrecy::ExposeSecret::expose_secret(refreshed.refresh_token().unwrap()).to_owned();
    endpoint
        .revocation()
        .unwrap()
        .revoke(&refresh, Some(TokenTypeHint::RefreshToken))
        .await
        .unwrap();
    let err = endpoint
        .refresh_token(refresh.as_str())
        .fetch(None)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidGrant(_)), "{err}");
}
