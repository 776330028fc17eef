//! DPoP on the client (RFC 9449): a [`DpopKey`] that signs proofs, given to the
//! [`TokenEndpoint`](super::TokenEndpoint) to get DPoP-bound tokens, and [`Dpop`],
//! the authorizer that sends them with a fresh proof on every request.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method, Uri};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey};
use secrecy::SecretString;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::crypto::{keys, PrivateKey, PublicKey};

use super::authorizer::{default_port, Authorizer, Credential, CredentialFuture, Target};
use super::signer::{RemoteKey, Signer, DEFAULT_SIGNER_DEADLINE};
use crate::server::dpop::thumbprint;
use crate::Error;

/// The most origins whose nonces a key remembers; past it, the oldest are forgotten
/// (a forgotten nonce costs one `use_dpop_nonce` round trip).
const MAX_ORIGINS: usize = 256;
/// The longest nonce remembered; a longer one is ignored.
const MAX_NONCE_LEN: usize = 512;
/// The smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
const MIN_RSA_BITS: usize = 2048;

/// A DPoP key pair: the private key signs the proofs, the public one travels in
/// them (`jwk`), and its RFC 7638 [`thumbprint`](Self::thumbprint) is what the
/// tokens issued for it are bound to (`cnf.jkt`).
///
/// Cloning is cheap: clones share the key and the nonces it learned (the latest
/// `DPoP-Nonce` of each origin, the authorization server's and the resource
/// servers'). `Debug` shows the algorithm and the thumbprint, never the private key.
///
/// ```
/// # fn run() -> Result<(), tower_bearer::Error> {
/// use tower_bearer::client::DpopKey;
/// let key = DpopKey::generate()?;
/// assert_eq!(key.thumbprint().len(), 43);
/// assert!(!format!("{key:?}").contains("BEGIN"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    key: ProofKey,
    alg: Algorithm,
    /// The public key, for [`Signer::public_jwk`].
    jwk: serde_json::Value,
    /// base64url of the proof's JOSE header (`typ`, `alg`, `jwk`): the same for
    /// every proof.
    header: String,
    jkt: String,
    /// The latest `DPoP-Nonce` of each origin, with the order it was learned in.
    nonces: Mutex<Nonces>,
}

/// What signs the proofs: a key in memory (signed on the spot, no future), or a
/// remote signer (awaited, under its deadline).
enum ProofKey {
    Local {
        key: EncodingKey,
        /// The private key, PKCS#8 DER, for [`DpopKey::to_pkcs8_pem`].
        pkcs8: Zeroizing<Vec<u8>>,
    },
    Remote(RemoteKey),
}

#[derive(Default)]
struct Nonces {
    by_origin: HashMap<String, (u64, String)>,
    clock: u64,
}

#[derive(Serialize)]
struct ProofHeader<'a> {
    typ: &'static str,
    alg: Algorithm,
    jwk: &'a serde_json::Value,
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: &'a str,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl DpopKey {
    /// A fresh `ES256` (P-256) key from the operating system's randomness.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the operating system gives no randomness.
    pub fn generate() -> Result<Self, Error> {
        let key = keys::p256_generate()
            .ok_or_else(|| Error::Configuration("cannot make a P-256 DPoP key".into()))?;
        Self::from_private(key, Algorithm::ES256)
    }

    /// An `ES256` key from its 32-byte secret scalar (big-endian), to use a key kept
    /// between runs (so that a stored DPoP-bound token stays usable).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the bytes are not a P-256 secret key.
    pub fn from_es256_secret(secret: &[u8]) -> Result<Self, Error> {
        let key = keys::p256_from_scalar(secret)
            .ok_or_else(|| Error::Configuration("not a P-256 secret key".into()))?;
        Self::from_private(key, Algorithm::ES256)
    }

    /// A private key in PEM, PKCS#8 (`BEGIN PRIVATE KEY`): P-256 for
    /// [`Algorithm::ES256`], Ed25519 for [`Algorithm::EdDSA`], RSA (2048 bits or
    /// more) for [`Algorithm::RS256`] and [`Algorithm::PS256`] (and their 384 and 512
    /// variants). Keep the key between runs, and a stored DPoP-bound token (and its
    /// refresh token) stays usable; [`load_or_generate`](Self::load_or_generate) does
    /// that with a file.
    ///
    /// # Errors
    /// [`Error::Configuration`] for an algorithm that is not asymmetric, a PEM that
    /// does not parse, a key of another kind, or an RSA key under 2048 bits.
    pub fn from_pem(alg: Algorithm, pem: &[u8]) -> Result<Self, Error> {
        Self::from_pkcs8_der(alg, pkcs8_der(pem)?)
    }

    /// The key in `path` (PKCS#8 PEM, as [`to_pkcs8_pem`](Self::to_pkcs8_pem)
    /// writes it), or a new `ES256` key written there first when there is no file:
    /// the way to keep one DPoP key across restarts, beside a
    /// [`FileStore`](super::FileStore) holding the tokens bound to it.
    ///
    /// The file is created readable by its owner only, whole or not at all, and
    /// never replaced: when two processes start at once, both end up with the key
    /// of the one that wrote first. The algorithm follows the key in the file: a
    /// P-256 key signs `ES256`, an Ed25519 key `EdDSA`, an RSA key `RS256` (for
    /// `PS256`, read the file with [`from_pem`](Self::from_pem)).
    ///
    /// This reads and writes a file: from async code, call it at start-up or
    /// through `spawn_blocking`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the file cannot be read or written, or does not
    /// hold a usable key (it is then left as it is).
    pub fn load_or_generate(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let read = |path: &Path| -> Result<Option<Self>, Error> {
            match std::fs::read(path) {
                Ok(pem) => {
                    let pem = Zeroizing::new(pem);
                    Self::from_pkcs8_der(None, pkcs8_der(&pem)?)
                        .map(Some)
                        .map_err(|e| Error::Configuration(format!("{}: {e}", path.display())))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::Configuration(format!(
                    "cannot read the DPoP key {}: {e}",
                    path.display()
                ))),
            }
        };
        if let Some(key) = read(path)? {
            return Ok(key);
        }
        let key = Self::generate()?;
        let pem = key.pkcs8_pem().unwrap_or_default();
        let created = super::store_file::create_atomically(path, pem.as_bytes()).map_err(|e| {
            Error::Configuration(format!("cannot write the DPoP key {}: {e}", path.display()))
        })?;
        if created {
            return Ok(key);
        }
        // Another process wrote its key first: that one is the key.
        read(path)?.ok_or_else(|| {
            Error::Configuration(format!("the DPoP key {} vanished", path.display()))
        })
    }

    /// The private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`), to keep it between runs
    /// ([`from_pem`](Self::from_pem) reads it back). Handle it as the secret it is.
    /// `None` for a key kept by a remote [`Signer`].
    pub fn to_pkcs8_pem(&self) -> Option<SecretString> {
        self.pkcs8_pem()
            .map(|pem| SecretString::from(pem.to_string()))
    }

    fn pkcs8_pem(&self) -> Option<Zeroizing<String>> {
        match &self.inner.key {
            ProofKey::Local { pkcs8, .. } => Some(pkcs8_pem(pkcs8)),
            ProofKey::Remote(_) => None,
        }
    }

    /// A key kept by `signer` (a KMS, an HSM): proofs carry its public JWK, each
    /// signature is bounded by [`DEFAULT_SIGNER_DEADLINE`] and checked against that
    /// key before it is sent. Its algorithm is the signer's: `ES256`, `EdDSA`, `RS*`
    /// or `PS*` (RSA of 2048 bits or more).
    ///
    /// A remote key's proofs are made asynchronously: [`Dpop`] and the
    /// [`TokenEndpoint`](super::TokenEndpoint) await them (the per-request credential
    /// is then a pending [`CredentialFuture`]); [`proof`](Self::proof) refuses, use
    /// [`proof_async`](Self::proof_async).
    ///
    /// # Errors
    /// [`Error::Configuration`] for an algorithm DPoP keys do not use, or a public
    /// JWK that is not a public key of that algorithm.
    pub fn from_signer(signer: impl Signer) -> Result<Self, Error> {
        Self::from_signer_with_deadline(signer, DEFAULT_SIGNER_DEADLINE)
    }

    /// [`from_signer`](Self::from_signer) with its own deadline: a proof not signed
    /// within `deadline` fails with [`Error::SignerTimeout`].
    ///
    /// # Errors
    /// As [`from_signer`](Self::from_signer); a deadline of zero or over
    /// [`MAX_SIGNER_DEADLINE`](crate::client::MAX_SIGNER_DEADLINE) too.
    pub fn from_signer_with_deadline(
        signer: impl Signer,
        deadline: Duration,
    ) -> Result<Self, Error> {
        let alg = signer.algorithm();
        if !matches!(
            alg,
            Algorithm::ES256
                | Algorithm::EdDSA
                | Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) {
            return Err(Error::Configuration(format!(
                "DPoP keys are ES256, EdDSA, RS* or PS*, not {alg:?}"
            )));
        }
        let remote = RemoteKey::new(Arc::new(signer), deadline)?;
        let jwk = remote.public_jwk().clone();
        Self::assemble(ProofKey::Remote(remote), alg, jwk)
    }

    /// Whether the key is kept by a remote [`Signer`].
    pub fn is_remote(&self) -> bool {
        matches!(self.inner.key, ProofKey::Remote(_))
    }

    /// The key in `der` (PKCS#8), for `alg`, or for the algorithm its kind implies.
    fn from_pkcs8_der(
        alg: impl Into<Option<Algorithm>>,
        der: Zeroizing<Vec<u8>>,
    ) -> Result<Self, Error> {
        let alg = alg.into();
        if matches!(alg, None | Some(Algorithm::ES256)) {
            if let Some(key) = keys::p256_from_pkcs8(&der) {
                return Self::from_private(key, Algorithm::ES256);
            }
        }
        if matches!(alg, None | Some(Algorithm::EdDSA)) {
            if let Some(key) = keys::ed25519_from_pkcs8(&der) {
                return Self::from_private(key, Algorithm::EdDSA);
            }
        }
        let rsa_alg = match alg {
            None => Some(Algorithm::RS256),
            Some(
                a @ (Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512),
            ) => Some(a),
            Some(_) => None,
        };
        if let Some(rsa_alg) = rsa_alg {
            if let Some(bits) = crate::crypto::rsa_pkcs8_bits(&der) {
                if bits < MIN_RSA_BITS {
                    return Err(Error::Configuration(format!(
                        "an RSA DPoP key of {bits} bits: at least {MIN_RSA_BITS} are needed"
                    )));
                }
            }
            if let Some(key) = keys::rsa_from_pkcs8(&der) {
                return Self::from_private(key, rsa_alg);
            }
        }
        Err(Error::Configuration(match alg {
            Some(alg @ (Algorithm::ES256 | Algorithm::EdDSA)) => {
                format!("not a PKCS#8 key for {alg:?}")
            }
            Some(alg) if rsa_alg.is_some() => format!("not a PKCS#8 RSA key for {alg:?}"),
            Some(alg) => format!("DPoP keys are ES256, EdDSA, RS* or PS*, not {alg:?}"),
            None => "not a PKCS#8 P-256, Ed25519 or RSA key".into(),
        }))
    }

    /// The key for `alg`: its public JWK, and jsonwebtoken's signing key.
    fn from_private(key: PrivateKey, alg: Algorithm) -> Result<Self, Error> {
        let jwk = match &key.public {
            PublicKey::P256 { x, y } => serde_json::json!({
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }),
            PublicKey::Ed25519 { x } => serde_json::json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(x),
            }),
            PublicKey::Rsa { n, e } => serde_json::json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(n),
                "e": URL_SAFE_NO_PAD.encode(e),
            }),
            PublicKey::P384 => {
                return Err(Error::Configuration(
                    "DPoP keys are ES256, EdDSA, RS* or PS*, not ES384".into(),
                ))
            }
        };
        let pkcs8 = key.pkcs8;
        let signing = match &key.public {
            PublicKey::P256 { .. } => EncodingKey::from_ec_der(&pkcs8),
            PublicKey::Ed25519 { .. } => EncodingKey::from_ed_der(&pkcs8),
            // jsonwebtoken reads RSA PKCS#8 only through PEM.
            _ => EncodingKey::from_rsa_pem(pkcs8_pem(&pkcs8).as_bytes())
                .map_err(|e| Error::Configuration(format!("the RSA DPoP key: {e}")))?,
        };
        // The key must sign with its algorithm: checked once, here.
        jsonwebtoken::crypto::sign(b"tower-bearer dpop key check", &signing, alg)
            .map_err(|e| Error::Configuration(format!("the DPoP key cannot sign: {e}")))?;
        Self::assemble(
            ProofKey::Local {
                key: signing,
                pkcs8,
            },
            alg,
            jwk,
        )
    }

    fn assemble(key: ProofKey, alg: Algorithm, jwk: serde_json::Value) -> Result<Self, Error> {
        let parsed: Jwk = serde_json::from_value(jwk.clone())
            .map_err(|e| Error::Configuration(format!("the DPoP public key: {e}")))?;
        let jkt = thumbprint(&parsed)
            .ok_or_else(|| Error::Configuration("the DPoP public key has no thumbprint".into()))?;
        let header = serde_json::to_vec(&ProofHeader {
            typ: "dpop+jwt",
            alg,
            jwk: &jwk,
        })
        .map_err(|e| Error::Configuration(format!("the DPoP proof header: {e}")))?;
        Ok(DpopKey {
            inner: Arc::new(KeyInner {
                key,
                alg,
                jwk,
                header: URL_SAFE_NO_PAD.encode(header),
                jkt,
                nonces: Mutex::new(Nonces::default()),
            }),
        })
    }

    /// The RFC 7638 SHA-256 thumbprint of the public key (base64url): the `cnf.jkt`
    /// of the tokens bound to this key.
    pub fn thumbprint(&self) -> &str {
        &self.inner.jkt
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.alg
    }

    /// A proof for one request: `method` to `url` (its query and fragment are
    /// left out), with the hash of `access_token` (`ath`) when one goes along, and
    /// the nonce last learned from the URL's origin, if any.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that is not absolute `http(s)`, when
    /// no randomness is to be had for the proof's `jti`, or for a key kept by a
    /// remote [`Signer`] (use [`proof_async`](Self::proof_async)).
    pub fn proof(
        &self,
        method: &Method,
        url: &Uri,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let (origin, path) = htu_of_uri(url)?;
        self.proof_for(method, &origin, &path, access_token)
    }

    /// As [`proof`](Self::proof), for any key: a remote [`Signer`]'s proof is
    /// awaited (under its deadline), a key in memory signs at once.
    ///
    /// # Errors
    /// As [`proof`](Self::proof) (a remote key included); [`Error::SignerTimeout`]
    /// and [`Error::Signer`] when the remote signer is late or fails.
    pub async fn proof_async(
        &self,
        method: &Method,
        url: &Uri,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let (origin, path) = htu_of_uri(url)?;
        self.proof_for_async(method, &origin, &path, access_token)
            .await
    }

    /// A proof signed in memory; an error for a remote key.
    pub(crate) fn proof_for(
        &self,
        method: &Method,
        origin: &str,
        path: &str,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let ProofKey::Local { key, .. } = &self.inner.key else {
            return Err(Error::Configuration(
                "a DPoP key kept by a remote signer signs asynchronously: use proof_async".into(),
            ));
        };
        let mut proof = self.signing_input(method, origin, path, access_token)?;
        let signature = jsonwebtoken::crypto::sign(proof.as_bytes(), key, self.inner.alg)
            .map_err(|e| Error::Configuration(format!("cannot sign the DPoP proof: {e}")))?;
        proof.push('.');
        proof.push_str(&signature);
        proof_value(proof)
    }

    /// A proof, signed in memory or by the remote signer.
    pub(crate) async fn proof_for_async(
        &self,
        method: &Method,
        origin: &str,
        path: &str,
        access_token: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let ProofKey::Remote(remote) = &self.inner.key else {
            return self.proof_for(method, origin, path, access_token);
        };
        let mut proof = self.signing_input(method, origin, path, access_token)?;
        let signature = remote.sign_b64(proof.as_bytes()).await?;
        proof.push('.');
        proof.push_str(&signature);
        proof_value(proof)
    }

    /// The proof's `header.claims`, to be signed.
    fn signing_input(
        &self,
        method: &Method,
        origin: &str,
        path: &str,
        access_token: Option<&str>,
    ) -> Result<String, Error> {
        let mut jti = [0u8; 16];
        crate::crypto::fill_random(&mut jti)
            .map_err(|e| Error::Configuration(format!("no randomness for a DPoP proof: {e}")))?;
        let jti = URL_SAFE_NO_PAD.encode(jti);
        let htu = format!("{origin}{}", if path.is_empty() { "/" } else { path });
        let nonce = self.nonce(origin);
        let claims = ProofClaims {
            jti: &jti,
            htm: method.as_str(),
            htu: &htu,
            iat: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            ath: access_token.map(|t| URL_SAFE_NO_PAD.encode(crate::crypto::sha256(t.as_bytes()))),
            nonce: nonce.as_deref(),
        };
        let claims = serde_json::to_vec(&claims)
            .map_err(|e| Error::Configuration(format!("the DPoP proof claims: {e}")))?;
        Ok(format!(
            "{}.{}",
            self.inner.header,
            URL_SAFE_NO_PAD.encode(claims)
        ))
    }

    /// The nonce last learned from `origin` (`scheme://host[:port]`).
    pub(crate) fn nonce(&self, origin: &str) -> Option<String> {
        let nonces = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nonces.by_origin.get(origin).map(|(_, n)| n.clone())
    }

    /// Remembers `nonce` as the one `origin` wants next; an unusable one is ignored.
    pub(crate) fn remember_nonce(&self, origin: &str, nonce: &HeaderValue) {
        let Ok(nonce) = nonce.to_str() else { return };
        // RFC 9449 §8.1: NQCHAR, no quotes nor backslashes.
        if nonce.is_empty()
            || nonce.len() > MAX_NONCE_LEN
            || !nonce
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        {
            return;
        }
        let mut nonces = self
            .inner
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        nonces.clock += 1;
        let at = nonces.clock;
        if nonces.by_origin.len() >= MAX_ORIGINS && !nonces.by_origin.contains_key(origin) {
            if let Some(oldest) = nonces
                .by_origin
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(o, _)| o.clone())
            {
                nonces.by_origin.remove(&oldest);
            }
        }
        nonces
            .by_origin
            .insert(origin.to_owned(), (at, nonce.to_owned()));
    }

    /// Remembers the `DPoP-Nonce` of an answer from `url`'s origin, if it has one.
    pub(crate) fn remember_from(&self, url: &Uri, headers: &HeaderMap) {
        if let (Some(nonce), Ok((origin, _))) =
            (headers.get(super::layer::DPOP_NONCE), htu_of_uri(url))
        {
            self.remember_nonce(&origin, nonce);
        }
    }

    /// `credential` with a proof for the request, when it is a DPoP token
    /// (`Authorization: DPoP …`); any other credential goes as it is.
    fn bind(
        &self,
        credential: Option<Credential>,
        method: &Method,
        at: Result<&(String, String), &Error>,
    ) -> Result<Option<Credential>, Error> {
        let Some(credential) = credential else {
            return Ok(None);
        };
        let token = match dpop_token(&credential) {
            Some(token) => token,
            None => return Ok(Some(credential)),
        };
        let (origin, path) = at.map_err(|e| Error::Configuration(e.to_string()))?;
        let proof = self.proof_for(method, origin, path, Some(token))?;
        Ok(Some(credential.with_dpop_proof(proof)))
    }

    /// [`bind`](Self::bind) with a proof from the remote signer.
    async fn bind_async(
        &self,
        credential: Option<Credential>,
        method: &Method,
        at: Result<&(String, String), &Error>,
    ) -> Result<Option<Credential>, Error> {
        let Some(credential) = credential else {
            return Ok(None);
        };
        let token = match dpop_token(&credential) {
            Some(token) => token,
            None => return Ok(Some(credential)),
        };
        let (origin, path) = at.map_err(|e| Error::Configuration(e.to_string()))?;
        let proof = self
            .proof_for_async(method, origin, path, Some(token))
            .await?;
        Ok(Some(credential.with_dpop_proof(proof)))
    }
}

/// A signed proof as a sensitive header value.
fn proof_value(proof: String) -> Result<HeaderValue, Error> {
    let mut value = HeaderValue::try_from(proof)
        .map_err(|_| Error::Configuration("the DPoP proof is not a header value".into()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// A DPoP key is a [`Signer`] too: a key in memory signs at once (through a boxed
/// future, as the trait has it; the crate's own proofs do not go through here), a
/// remote one asks its signer, under its deadline, and checks the answer.
impl Signer for DpopKey {
    fn algorithm(&self) -> Algorithm {
        self.inner.alg
    }

    fn public_jwk(&self) -> &serde_json::Value {
        &self.inner.jwk
    }

    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        Box::pin(async move {
            match &self.inner.key {
                ProofKey::Local { key, .. } => {
                    let signature = jsonwebtoken::crypto::sign(message, key, self.inner.alg)
                        .map_err(|e| Error::Signer(format!("cannot sign: {e}")))?;
                    URL_SAFE_NO_PAD
                        .decode(signature)
                        .map_err(|_| Error::Signer("not base64url".into()))
                }
                ProofKey::Remote(remote) => remote.sign_raw(message).await,
            }
        })
    }
}

/// PKCS#8 DER as PEM (`BEGIN PRIVATE KEY`), zeroized when dropped.
fn pkcs8_pem(der: &[u8]) -> Zeroizing<String> {
    let body = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    let mut pem = Zeroizing::new(String::with_capacity(body.len() + body.len() / 64 + 64));
    pem.push_str("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        // base64 is ASCII.
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

/// The DER inside a `BEGIN PRIVATE KEY` PEM, zeroized when dropped.
fn pkcs8_der(pem: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bad = || Error::Configuration("not a PEM PKCS#8 private key".into());
    let text = std::str::from_utf8(pem).map_err(|_| bad())?;
    let begin = "-----BEGIN PRIVATE KEY-----";
    let end = "-----END PRIVATE KEY-----";
    let start = text.find(begin).ok_or_else(bad)? + begin.len();
    let stop = start + text[start..].find(end).ok_or_else(bad)?;
    let body: Zeroizing<String> = Zeroizing::new(
        text[start..stop]
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect(),
    );
    base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map(Zeroizing::new)
        .map_err(|_| bad())
}

/// The token of an `Authorization: DPoP <token>` credential.
fn dpop_token(credential: &Credential) -> Option<&str> {
    if credential.name != AUTHORIZATION {
        return None;
    }
    let value = credential.value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("dpop").then_some(token)
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.inner.alg)
            .field("jkt", &self.inner.jkt)
            .field(
                "key",
                match &self.inner.key {
                    ProofKey::Local { .. } => &"[redacted]",
                    ProofKey::Remote(_) => &"remote signer",
                },
            )
            .finish()
    }
}

/// `scheme://host[:port]` (lowercase, the default port left out) and the path.
fn origin_and_path(
    scheme: Option<&str>,
    host: Option<&str>,
    port: Option<u16>,
    path: &str,
) -> Result<(String, String), Error> {
    let (Some(scheme), Some(host)) = (scheme, host) else {
        return Err(Error::Configuration(
            "a DPoP proof needs the request's absolute URL".into(),
        ));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "https" && scheme != "http" {
        return Err(Error::Configuration(format!(
            "a DPoP proof is for http(s) requests, not {scheme}"
        )));
    }
    let mut origin = format!("{scheme}://{}", host.to_ascii_lowercase());
    if let Some(port) = port.filter(|p| Some(*p) != default_port(&scheme)) {
        origin.push_str(&format!(":{port}"));
    }
    Ok((origin, path.to_owned()))
}

fn htu_of_uri(url: &Uri) -> Result<(String, String), Error> {
    origin_and_path(url.scheme_str(), url.host(), url.port_u16(), url.path())
}

fn htu_of_target(target: &Target<'_>) -> Result<(String, String), Error> {
    origin_and_path(target.scheme(), target.host(), target.port(), target.path())
}

/// The origin a proof was made for: its `htu`'s, read back from the proof itself
/// (this client's own, so it is trusted to parse).
fn origin_of_proof(proof: &HeaderValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Htu {
        htu: String,
    }
    let payload = proof.to_str().ok()?.split('.').nth(1)?;
    let claims: Htu = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let uri: Uri = claims.htu.parse().ok()?;
    htu_of_uri(&uri).ok().map(|(origin, _)| origin)
}

/// An authorizer for DPoP-bound tokens (RFC 9449): the inner authorizer's token,
/// sent as `Authorization: DPoP <token>` with a `DPoP` proof made for each request
/// (`htm`, `htu`, `iat`, a unique `jti`, `ath`, and the server's nonce once it has
/// asked for one).
///
/// The inner authorizer is usually a [`Refreshing`](super::Refreshing) over a
/// grant of a [`TokenEndpoint`](super::TokenEndpoint) given the same key with
/// [`dpop`](super::TokenEndpoint::dpop): its token requests then carry proofs too,
/// and it accepts only DPoP-bound tokens. The refresh, the single flight and the
/// handling of `401` are the inner authorizer's, as for bearer tokens. A credential
/// that is not `DPoP` (a bearer token) is sent as it is, without a proof.
///
/// A resource server's `DPoP-Nonce` is remembered for its origin, and a `401
/// use_dpop_nonce` answer is replayed once with a proof carrying it, when the layer
/// can replay ([`retry_unauthorized`](super::AuthorizeLayer::retry_unauthorized)),
/// the token kept.
///
/// ```no_run
/// use tower_bearer::client::{AuthorizeLayer, Dpop, DpopKey, Refreshing, TokenEndpoint};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let key = DpopKey::generate()?;
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?
///     .client_id("svc")
///     .client_secret("s3cret")
///     .dpop(key.clone());
/// let authorizer = Dpop::new(key, Refreshing::new(endpoint.client_credentials()));
/// let layer = AuthorizeLayer::new(authorizer).retry_unauthorized();
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Dpop<A> {
    key: DpopKey,
    inner: A,
}

impl<A: Authorizer> Dpop<A> {
    /// Sends `inner`'s DPoP tokens with proofs signed by `key`.
    pub fn new(key: DpopKey, inner: A) -> Self {
        Dpop { key, inner }
    }

    /// The key.
    pub fn key(&self) -> &DpopKey {
        &self.key
    }

    /// The inner authorizer.
    pub fn get_ref(&self) -> &A {
        &self.inner
    }
}

impl<A: fmt::Debug> fmt::Debug for Dpop<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dpop")
            .field("key", &self.key)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<A: Authorizer> Authorizer for Dpop<A> {
    /// Without a target no proof can be made: a DPoP token is an error here, any
    /// other credential is the inner one.
    fn credential(&self) -> CredentialFuture {
        let fail = Error::Configuration("a DPoP proof needs the request's method and URL".into());
        let key = self.key.clone();
        let method = Method::GET;
        if key.is_remote() {
            let inner = self.inner.credential();
            return CredentialFuture::pending(async move {
                let c = inner.await?;
                key.bind_async(c, &method, Err(&fail)).await
            });
        }
        map(self.inner.credential(), move |c| {
            key.bind(c, &method, Err(&fail))
        })
    }

    fn credential_for(&self, target: Target<'_>) -> CredentialFuture {
        let key = self.key.clone();
        let method = target.method().clone();
        let at = htu_of_target(&target);
        if key.is_remote() {
            // A remote signer is awaited: the credential is a pending future (one
            // allocation per request, on the remote path only).
            let inner = self.inner.credential_for(target);
            return CredentialFuture::pending(async move {
                let c = inner.await?;
                key.bind_async(c, &method, at.as_ref()).await
            });
        }
        map(self.inner.credential_for(target), move |c| {
            key.bind(c, &method, at.as_ref())
        })
    }

    fn observes_answers(&self) -> bool {
        true
    }

    fn on_unauthorized(&self, sent: &HeaderValue) {
        self.inner.on_unauthorized(sent);
    }

    fn on_accepted(&self, sent: &HeaderValue) {
        self.inner.on_accepted(sent);
    }

    fn on_dpop_nonce(&self, sent: &Credential, nonce: &HeaderValue) {
        if let Some(origin) = sent.dpop.as_ref().and_then(origin_of_proof) {
            self.key.remember_nonce(&origin, nonce);
        }
        self.inner.on_dpop_nonce(sent, nonce);
    }
}

type CredentialResult = Result<Option<Credential>, Error>;

/// `future`'s credential passed through `f`, at once when it is ready.
fn map(
    future: CredentialFuture,
    f: impl FnOnce(Option<Credential>) -> CredentialResult + Send + 'static,
) -> CredentialFuture {
    match future.now_or_pending() {
        Ok(result) => CredentialFuture::ready(result.and_then(f)),
        Err(pending) => CredentialFuture::pending(async move { pending.await.and_then(f) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_leaves_out_default_ports_query_and_fragment() {
        let uri: Uri = "HTTPS://API.example.com:443/items?x=1".parse().unwrap();
        let (o, p) = htu_of_uri(&uri).unwrap();
        assert_eq!(
            (o.as_str(), p.as_str()),
            ("https://api.example.com", "/items")
        );
        let uri: Uri = "http://127.0.0.1:8080".parse().unwrap();
        let (o, p) = htu_of_uri(&uri).unwrap();
        assert_eq!((o.as_str(), p.as_str()), ("http://127.0.0.1:8080", "/"));
        assert!(htu_of_uri(&"/relative".parse().unwrap()).is_err());
    }

    #[test]
    fn nonces_are_per_origin_and_bounded() {
        let key = DpopKey::generate().unwrap();
        key.remember_nonce("https://a", &HeaderValue::from_static("n1"));
        key.remember_nonce("https://b", &HeaderValue::from_static("n2"));
        key.remember_nonce("https://a", &HeaderValue::from_static("n3"));
        key.remember_nonce("https://a", &HeaderValue::from_static("bad\"nonce"));
        assert_eq!(key.nonce("https://a").as_deref(), Some("n3"));
        assert_eq!(key.nonce("https://b").as_deref(), Some("n2"));
        for i in 0..(MAX_ORIGINS + 10) {
            key.remember_nonce(&format!("https://h{i}"), &HeaderValue::from_static("n"));
        }
        let held = key.inner.nonces.lock().unwrap().by_origin.len();
        assert!(held <= MAX_ORIGINS, "{held}");
    }

    #[test]
    fn the_proof_names_its_origin() {
        let key = DpopKey::generate().unwrap();
        let uri: Uri = "https://api.example.com/x?y".parse().unwrap();
        let proof = key.proof(&Method::POST, &uri, Some("t")).unwrap();
        assert!(proof.is_sensitive());
        assert_eq!(
            origin_of_proof(&proof).as_deref(),
            Some("https://api.example.com")
        );
    }
}
