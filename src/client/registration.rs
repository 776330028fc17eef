//! Dynamic client registration (RFC 7591): the client's metadata posted to the
//! provider's registration endpoint, the answer kept per issuer in a
//! [`RegistrationStore`] so that a restart does not register again.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{Method, Request};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::transport::{check_url, parse_url};
use crate::{Endpoint, Error, HttpClient};

/// The metadata a client registers with (RFC 7591 §2), serialized as the
/// registration request. Fields left empty are not sent.
///
/// ```
/// use tower_bearer::client::ClientMetadata;
/// let metadata = ClientMetadata::native("my agent", ["http://127.0.0.1/callback"]);
/// assert_eq!(metadata.application_type.as_deref(), Some("native"));
/// ```
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientMetadata {
    /// Where the authorization server may send the person back (`redirect_uris`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redirect_uris: Vec<String>,
    /// The name shown to the person who approves the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    /// The grants the client will use (`authorization_code`, `refresh_token`, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grant_types: Vec<String>,
    /// The response types of the authorization requests (`code`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_types: Vec<String>,
    /// How the client authenticates at the token endpoint (`none`,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    /// `native` (a program on the person's machine, loopback redirects) or `web`
    /// (OpenID Connect Dynamic Client Registration §2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_type: Option<String>,
    /// The scopes the client may ask for (space-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The client's home page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    /// The client's public keys, for `private_key_jwt` (a JWK set URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// In a client ID metadata document: the document's own URL, which is the
    /// client id (draft-ietf-oauth-client-id-metadata-document §3). Not sent in a
    /// registration request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl ClientMetadata {
    /// A native application (RFC 8252) with the authorization code grant and
    /// refresh tokens, registered as a public client (`none`).
    pub fn native<T: Into<String>>(
        name: impl Into<String>,
        redirect_uris: impl IntoIterator<Item = T>,
    ) -> Self {
        ClientMetadata {
            redirect_uris: redirect_uris.into_iter().map(Into::into).collect(),
            client_name: Some(name.into()),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            response_types: vec!["code".into()],
            token_endpoint_auth_method: Some("none".into()),
            application_type: Some("native".into()),
            ..ClientMetadata::default()
        }
    }

    /// This metadata as the client ID metadata document at `url` (its `client_id`
    /// set to `url`), as JSON: what the client publishes there.
    pub fn document(&self, url: &str) -> String {
        let mut doc = self.clone();
        doc.client_id = Some(url.to_owned());
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// What the provider answered a registration with (RFC 7591 §3.2.1): the client id,
/// and a secret for a confidential client. `Debug` does not show the secret.
#[derive(Clone, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ClientInformation {
    /// The client id the provider issued.
    pub client_id: String,
    /// The client secret, for a confidential client.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose",
        deserialize_with = "secret"
    )]
    pub client_secret: Option<SecretString>,
    /// The client authentication method the provider registered (it may differ from
    /// the one asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_endpoint_auth_method: Option<String>,
    /// When the secret expires (seconds since the epoch; `0`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<u64>,
}

impl ClientInformation {
    /// A client the provider knows already (pre-registered).
    pub fn new(client_id: impl Into<String>) -> Self {
        ClientInformation {
            client_id: client_id.into(),
            client_secret: None,
            token_endpoint_auth_method: None,
            client_secret_expires_at: None,
        }
    }

    /// With this client secret.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(SecretString::from(secret.into()));
        self
    }

    /// With this registered client authentication method.
    pub fn auth_method(mut self, method: impl Into<String>) -> Self {
        self.token_endpoint_auth_method = Some(method.into());
        self
    }

    /// Whether the secret has expired now (RFC 7591 §3.2.1): the client must
    /// register again.
    #[cfg(feature = "mcp")]
    pub(crate) fn expired_now(&self) -> bool {
        self.expired(now_secs())
    }

    /// Whether the secret has expired at `now` (seconds since the epoch).
    fn expired(&self, now: u64) -> bool {
        self.client_secret_expires_at
            .is_some_and(|at| at != 0 && at <= now)
    }
}

fn expose<S: serde::Serializer>(secret: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_some(secret.expose_secret()),
        None => s.serialize_none(),
    }
}

fn secret<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(Option::<String>::deserialize(d)?
        .filter(|s| !s.is_empty())
        .map(SecretString::from))
}

impl fmt::Debug for ClientInformation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientInformation")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "token_endpoint_auth_method",
                &self.token_endpoint_auth_method,
            )
            .finish()
    }
}

/// Registers `metadata` at the registration endpoint `url` (RFC 7591 §3.1) and
/// returns what the provider issued.
///
/// # Errors
/// [`Error::Configuration`] for a URL that is not `https` (`http` only on loopback);
/// [`Error::TokenEndpoint`] (naming the registration endpoint's URL) when the
/// provider refuses (`invalid_redirect_uri`, `invalid_client_metadata`, …);
/// [`Error::InvalidResponse`] naming [`Endpoint::Registration`] when the answer has
/// no `client_id`; transport errors and timeouts.
pub async fn register(
    url: &str,
    metadata: &ClientMetadata,
    http: &HttpClient,
) -> Result<ClientInformation, Error> {
    let uri = parse_url(url)?;
    check_url(&uri, false)?;
    let shown = crate::error::display_url(&uri);
    let mut request = metadata.clone();
    request.client_id = None;
    let body = serde_json::to_vec(&request)
        .map_err(|e| Error::Configuration(format!("cannot encode the registration: {e}")))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(CONTENT_TYPE, "application/json")
        .header(ACCEPT, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| Error::Configuration(format!("registration request {shown}: {e}")))?;
    let res = http.send(Endpoint::Registration, req).await?;
    if !res.status().is_success() {
        // RFC 7591 §3.2.2: an error object like the token endpoint's.
        return Err(
            match crate::client::endpoint::parse_token_answer(
                res.status(),
                res.headers(),
                res.body(),
                false,
            ) {
                Err(Error::TokenEndpoint(mut e)) | Err(Error::InvalidGrant(mut e)) => {
                    e.url = Some(shown);
                    Error::TokenEndpoint(e)
                }
                _ => Error::InvalidResponse(
                    Endpoint::Registration,
                    format!("{shown} answered HTTP {}", res.status().as_u16()),
                ),
            },
        );
    }
    let info: ClientInformation = serde_json::from_slice(res.body()).map_err(|e| {
        Error::InvalidResponse(
            Endpoint::Registration,
            format!(
                "{shown}: not a registration answer ({})",
                crate::error::json_error(&e)
            ),
        )
    })?;
    if info.client_id.is_empty() {
        return Err(Error::InvalidResponse(
            Endpoint::Registration,
            format!("{shown}: the answer's client_id is empty"),
        ));
    }
    Ok(info)
}

/// Where registrations are kept, per issuer: a client registers once with each
/// authorization server, and finds its registration again after a restart.
pub trait RegistrationStore: Send + Sync + 'static {
    /// The registration kept for `issuer`, if any.
    fn load<'a>(
        &'a self,
        issuer: &'a str,
    ) -> BoxFuture<'a, Result<Option<ClientInformation>, Error>>;
    /// Keeps `info` as the registration for `issuer`.
    fn save<'a>(
        &'a self,
        issuer: &'a str,
        info: &'a ClientInformation,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl<T: RegistrationStore + ?Sized> RegistrationStore for Arc<T> {
    fn load<'a>(
        &'a self,
        issuer: &'a str,
    ) -> BoxFuture<'a, Result<Option<ClientInformation>, Error>> {
        (**self).load(issuer)
    }
    fn save<'a>(
        &'a self,
        issuer: &'a str,
        info: &'a ClientInformation,
    ) -> BoxFuture<'a, Result<(), Error>> {
        (**self).save(issuer, info)
    }
}

/// Registrations kept in memory: for one process's life.
#[derive(Clone, Debug, Default)]
pub struct MemoryRegistrations {
    map: Arc<Mutex<BTreeMap<String, ClientInformation>>>,
}

impl MemoryRegistrations {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl RegistrationStore for MemoryRegistrations {
    fn load<'a>(
        &'a self,
        issuer: &'a str,
    ) -> BoxFuture<'a, Result<Option<ClientInformation>, Error>> {
        let found = self
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(issuer)
            .cloned();
        futures_util::future::ready(Ok(found)).boxed()
    }
    fn save<'a>(
        &'a self,
        issuer: &'a str,
        info: &'a ClientInformation,
    ) -> BoxFuture<'a, Result<(), Error>> {
        self.map
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(issuer.to_owned(), info.clone());
        futures_util::future::ready(Ok(())).boxed()
    }
}

/// Registrations kept in a JSON file (an object from issuer to registration), so a
/// restarted client does not register again. The file holds client secrets: it is
/// created readable by its owner only (mode `0600` on Unix), and written whole to a
/// temporary file renamed over it, so a crash never leaves half a file. A
/// registration whose secret has expired (`client_secret_expires_at`) is not
/// loaded: the client registers again.
#[derive(Clone, Debug)]
pub struct FileRegistrations {
    path: PathBuf,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl FileRegistrations {
    /// Registrations in the file at `path` (created on the first save).
    pub fn new(path: impl AsRef<Path>) -> Self {
        FileRegistrations {
            path: path.as_ref().to_owned(),
            lock: Arc::default(),
        }
    }

    fn read(&self) -> Result<BTreeMap<String, ClientInformation>, Error> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::Configuration(format!(
                    "the registrations file {} is not a registrations file ({})",
                    self.path.display(),
                    crate::error::json_error(&e)
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(Error::Configuration(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    fn write(&self, all: &BTreeMap<String, ClientInformation>) -> Result<(), Error> {
        use std::io::Write as _;
        let fail = |e: std::io::Error| {
            Error::Configuration(format!("cannot write {}: {e}", self.path.display()))
        };
        let body = serde_json::to_vec_pretty(all)
            .map_err(|e| Error::Configuration(format!("cannot encode the registrations: {e}")))?;
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(fail)?;
        file.write_all(&body).map_err(fail)?;
        file.sync_all().map_err(fail)?;
        drop(file);
        std::fs::rename(&tmp, &self.path).map_err(fail)
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl RegistrationStore for FileRegistrations {
    fn load<'a>(
        &'a self,
        issuer: &'a str,
    ) -> BoxFuture<'a, Result<Option<ClientInformation>, Error>> {
        async move {
            let _held = self.lock.lock().await;
            Ok(self
                .read()?
                .remove(issuer)
                .filter(|info| !info.expired(now_secs())))
        }
        .boxed()
    }
    fn save<'a>(
        &'a self,
        issuer: &'a str,
        info: &'a ClientInformation,
    ) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let _held = self.lock.lock().await;
            let mut all = self.read()?;
            all.insert(issuer.to_owned(), info.clone());
            self.write(&all)
        }
        .boxed()
    }
}
