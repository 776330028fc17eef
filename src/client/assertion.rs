//! Signed JWT assertions: client authentication with `private_key_jwt` and
//! `client_secret_jwt` (RFC 7523 §2.2, OpenID Connect Core §9), and the keys that sign
//! them, shared with the JWT-bearer grant ([`JwtBearer`](super::source::JwtBearer)).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde::Serialize;

use zeroize::Zeroizing;

use super::signer::{RemoteKey, Signer as RemoteSigner, DEFAULT_SIGNER_DEADLINE};
use crate::Error;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid by default: long enough for one request.
pub const DEFAULT_ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// A private key that signs assertions: RS256/384/512, PS256/384/512, ES256, ES384
/// or EdDSA (Ed25519), with the header fields a provider uses to find its public half
/// (`kid`, `x5t#S256`).
///
/// The key is in memory ([`from_pem`](Self::from_pem), [`from_der`](Self::from_der),
/// [`from_jwk`](Self::from_jwk)), or kept by a remote [`Signer`](super::Signer)
/// (a KMS, an HSM: [`from_signer`](Self::from_signer)), which signs under a deadline.
///
/// A key in memory is checked against the algorithm when it is loaded, by signing
/// once: a key of the wrong type is an error here, not at the first token request.
///
/// ```
/// use tower_bearer::client::{Algorithm, AssertionKey};
/// # let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec256.key")).unwrap();
/// let key = AssertionKey::from_pem(Algorithm::ES256, &pem)?.key_id("2024-07");
/// assert!(AssertionKey::from_pem(Algorithm::RS256, &pem).is_err(), "an EC key is not RSA");
/// # Ok::<(), tower_bearer::Error>(())
/// ```
#[derive(Clone)]
pub struct AssertionKey {
    key: KeyImpl,
    alg: Algorithm,
    kid: Option<String>,
    x5t_s256: Option<String>,
}

/// Where the private key is: in memory, or behind a remote signer.
#[derive(Clone)]
enum KeyImpl {
    Local(Arc<EncodingKey>),
    Remote(Arc<RemoteKey>),
}

impl AssertionKey {
    /// A key kept by `signer` (a KMS, an HSM, a signing service): its algorithm and
    /// `kid` are the signer's, each signature bounded by [`DEFAULT_SIGNER_DEADLINE`]
    /// and checked against the signer's public key before it is sent.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the signer's algorithm is HMAC, or its public
    /// JWK is not a public key of that algorithm.
    pub fn from_signer(signer: impl RemoteSigner) -> Result<Self, Error> {
        Self::from_signer_with_deadline(signer, DEFAULT_SIGNER_DEADLINE)
    }

    /// [`from_signer`](Self::from_signer) with its own deadline: a signature not
    /// made within `deadline` fails with [`Error::SignerTimeout`].
    ///
    /// # Errors
    /// As [`from_signer`](Self::from_signer); a deadline of zero or over
    /// [`MAX_SIGNER_DEADLINE`](crate::client::MAX_SIGNER_DEADLINE) too.
    pub fn from_signer_with_deadline(
        signer: impl RemoteSigner,
        deadline: Duration,
    ) -> Result<Self, Error> {
        let remote = RemoteKey::new(Arc::new(signer), deadline)?;
        Ok(AssertionKey {
            alg: remote.algorithm(),
            kid: remote.key_id().map(str::to_owned),
            key: KeyImpl::Remote(Arc::new(remote)),
            x5t_s256: None,
        })
    }

    /// Whether the key is kept by a remote [`Signer`](super::Signer).
    pub fn is_remote(&self) -> bool {
        matches!(self.key, KeyImpl::Remote(_))
    }

    /// A private key in PEM: PKCS#8 (`BEGIN PRIVATE KEY`) for every algorithm, or
    /// PKCS#1 (`BEGIN RSA PRIVATE KEY`) and SEC1 (`BEGIN EC PRIVATE KEY`) where they
    /// apply.
    ///
    /// # Errors
    /// [`Error::Configuration`] for an HMAC algorithm (see
    /// [`ClientAssertion::client_secret`]), a PEM that does not parse, or a key that
    /// cannot sign with `alg` (an EC key for RS256, a P-384 key for ES256).
    pub fn from_pem(alg: Algorithm, pem: &[u8]) -> Result<Self, Error> {
        let key = match family(alg)? {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => EncodingKey::from_ec_pem(pem),
            _ => EncodingKey::from_ed_pem(pem),
        }
        .map_err(|e| key_error(alg, &e.to_string()))?;
        Self::checked(alg, key)
    }

    /// A private key in DER: PKCS#8 for every algorithm, or PKCS#1 for RSA.
    ///
    /// # Errors
    /// As [`AssertionKey::from_pem`].
    pub fn from_der(alg: Algorithm, der: &[u8]) -> Result<Self, Error> {
        let fam = family(alg)?;
        // jsonwebtoken reads PKCS#8 only through PEM; its raw-DER constructors take
        // what its signers take (PKCS#1 for RSA, PKCS#8 for EC and Ed25519).
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = match fam {
            AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(pem.as_bytes())
                .unwrap_or_else(|_| EncodingKey::from_rsa_der(der)),
            AlgorithmFamily::Ec => EncodingKey::from_ec_der(der),
            _ => EncodingKey::from_ed_der(der),
        };
        Self::checked(alg, key)
    }

    /// A private key as a JWK (RFC 7517: `kty` RSA with `d`, `p`, `q`, `dp`, `dq` and
    /// `qi` (RFC 7518 §6.3.2: all of them or none); EC P-256 or
    /// P-384 with `d`; OKP Ed25519 with `d`). Its `kid`, when present, is sent; the
    /// algorithm is `alg` when given, else the JWK's own `alg` (RFC 9864's fully
    /// specified `Ed25519` is read as `EdDSA`, `ESP256` as `ES256`; assertions are
    /// signed under the classic name, which every provider knows).
    ///
    /// # Errors
    /// [`Error::Configuration`] for JSON that is not a private JWK of a supported
    /// type, no algorithm, or a key that cannot sign with it.
    pub fn from_jwk(jwk: &str, alg: Option<Algorithm>) -> Result<Self, Error> {
        let jwk: PrivateJwk = serde_json::from_str(jwk)
            .map_err(|e| Error::Configuration(format!("not a private JWK: {e}")))?;
        let alg = match (alg, jwk.alg.as_deref()) {
            (Some(alg), _) => alg,
            // Every name the crate reads, RFC 9864's `Ed25519` included.
            (None, Some(name)) => crate::server::jwt::parse_alg(name).ok_or_else(|| {
                Error::Configuration(format!("the JWK's alg {name:?} is not supported"))
            })?,
            (None, None) => {
                return Err(Error::Configuration(
                    "the JWK has no alg: name the algorithm".into(),
                ))
            }
        };
        let der = jwk.to_pkcs8_der()?;
        let key = Self::from_der(alg, &der)?;
        Ok(match jwk.kid {
            Some(kid) => key.key_id(kid),
            None => key,
        })
    }

    fn checked(alg: Algorithm, key: EncodingKey) -> Result<Self, Error> {
        jsonwebtoken::crypto::sign(b"tower-bearer key check", &key, alg)
            .map_err(|e| key_error(alg, &e.to_string()))?;
        Ok(AssertionKey {
            key: KeyImpl::Local(Arc::new(key)),
            alg,
            kid: None,
            x5t_s256: None,
        })
    }

    /// The `kid` header: the key's id in the provider's registration (the
    /// `private_key_id` of a Google service account, a key id in the client's JWKS).
    pub fn key_id(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The `x5t#S256` header from the key's certificate (DER): how Entra ID finds
    /// the certificate credential of an app registration.
    pub fn certificate_der(mut self, certificate: &[u8]) -> Self {
        self.x5t_s256 = Some(b64url(&crate::crypto::sha256(certificate)));
        self
    }

    /// The `x5t#S256` header as given (base64url of the certificate's SHA-256).
    pub fn x5t_s256(mut self, thumbprint: impl Into<String>) -> Self {
        self.x5t_s256 = Some(thumbprint.into());
        self
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// An assertion (`typ` `JWT`) with these claims.
    pub(crate) async fn sign<C: Serialize>(&self, claims: &C) -> Result<String, Error> {
        self.sign_jwt(Header::default(), claims).await
    }

    /// A JWT with `header` (its `alg`, `kid` and `x5t#S256` set to the key's; `typ`
    /// and any other member kept) and `claims`, signed in memory or by the remote
    /// signer: client assertions, the JWT-bearer grant, request objects (RFC 9101,
    /// `typ` `oauth-authz-req+jwt`).
    pub(crate) async fn sign_jwt<C: Serialize>(
        &self,
        mut header: Header,
        claims: &C,
    ) -> Result<String, Error> {
        header.alg = self.alg;
        header.kid = self.kid.clone();
        header.x5t_s256 = self.x5t_s256.clone();
        match &self.key {
            KeyImpl::Local(key) => jsonwebtoken::encode(&header, claims, key)
                .map_err(|e| Error::Configuration(format!("cannot sign the assertion: {e}"))),
            KeyImpl::Remote(remote) => {
                let json = |r: serde_json::Result<Vec<u8>>| {
                    r.map(|json| b64url(&json))
                        .map_err(|e| Error::Configuration(format!("cannot encode the JWT: {e}")))
                };
                let mut jwt = json(serde_json::to_vec(&header))?;
                jwt.push('.');
                jwt.push_str(&json(serde_json::to_vec(claims))?);
                let signature = remote.sign_b64(jwt.as_bytes()).await?;
                jwt.push('.');
                jwt.push_str(&signature);
                Ok(jwt)
            }
        }
    }

    fn same(&self, other: &Self) -> bool {
        let key = match (&self.key, &other.key) {
            (KeyImpl::Local(a), KeyImpl::Local(b)) => Arc::ptr_eq(a, b),
            (KeyImpl::Remote(a), KeyImpl::Remote(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        key && self.alg == other.alg && self.kid == other.kid && self.x5t_s256 == other.x5t_s256
    }
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .field("x5t#S256", &self.x5t_s256)
            .field(
                "key",
                match &self.key {
                    KeyImpl::Local(_) => &"[redacted]",
                    KeyImpl::Remote(_) => &"remote signer",
                },
            )
            .finish()
    }
}

fn family(alg: Algorithm) -> Result<AlgorithmFamily, Error> {
    match alg.family() {
        AlgorithmFamily::Hmac => Err(Error::Configuration(format!(
            "{alg:?} is an HMAC algorithm: use ClientAssertion::client_secret"
        ))),
        fam => Ok(fam),
    }
}

fn key_error(alg: Algorithm, why: &str) -> Error {
    Error::Configuration(format!("the key cannot sign {alg:?} assertions: {why}"))
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn b64url_decode(field: &str, value: &str) -> Result<Vec<u8>, Error> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|_| Error::Configuration(format!("the JWK's {field} is not base64url")))
}

/// The members of a private JWK this crate can sign with.
#[derive(serde::Deserialize)]
struct PrivateJwk {
    kty: String,
    crv: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    n: Option<String>,
    e: Option<String>,
    d: Option<String>,
    p: Option<String>,
    q: Option<String>,
    dp: Option<String>,
    dq: Option<String>,
    qi: Option<String>,
}

impl PrivateJwk {
    fn field(&self, name: &str, value: &Option<String>) -> Result<Vec<u8>, Error> {
        let value = value.as_deref().ok_or_else(|| {
            Error::Configuration(format!("the JWK has no {name}: not a private key"))
        })?;
        b64url_decode(name, value)
    }

    fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        use crate::crypto::keys;
        let secret = |name, v| self.field(name, v).map(Zeroizing::new);
        let unusable = || Error::Configuration("not a usable JWK: a bad private key".into());
        let key = match (self.kty.as_str(), self.crv.as_deref()) {
            ("RSA", _) => keys::rsa_from_components(&crate::crypto::RsaComponents {
                n: self.field("n", &self.n)?,
                e: self.field("e", &self.e)?,
                d: secret("d", &self.d)?,
                p: secret("p", &self.p)?,
                q: secret("q", &self.q)?,
                dp: secret("dp", &self.dp)?,
                dq: secret("dq", &self.dq)?,
                qi: secret("qi", &self.qi)?,
            })
            .map_err(|e| Error::Configuration(format!("not a usable JWK: {e}")))?,
            ("EC", Some("P-256")) => {
                keys::p256_from_scalar(&secret("d", &self.d)?).ok_or_else(unusable)?
            }
            ("EC", Some("P-384")) => {
                keys::p384_from_scalar(&secret("d", &self.d)?).ok_or_else(unusable)?
            }
            ("OKP", Some("Ed25519")) => {
                let d = secret("d", &self.d)?;
                if d.len() != 32 {
                    return Err(Error::Configuration("an Ed25519 d is 32 bytes".into()));
                }
                keys::ed25519_from_seed(&d).ok_or_else(unusable)?
            }
            (kty, crv) => {
                return Err(Error::Configuration(format!(
                    "JWK kty {kty:?} crv {crv:?} is not supported"
                )))
            }
        };
        Ok(key.pkcs8)
    }
}

/// Where the assertion's `aud` points.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Audience {
    TokenEndpoint,
    Issuer,
    Fixed(String),
}

/// What signs: a private key, or the client secret (HMAC).
#[derive(Clone)]
enum SignWith {
    Key(AssertionKey),
    Secret(Algorithm),
}

/// Client authentication with a signed JWT (RFC 7523 §2.2): `private_key_jwt` or
/// `client_secret_jwt` (OpenID Connect Core §9). Use it as the
/// [`TokenEndpointAuth`](super::TokenEndpointAuth) of a [`TokenEndpoint`](super::TokenEndpoint).
///
/// A new assertion is made for every request: a fresh random `jti`, `iat` now, `exp`
/// after [`lifetime`](Self::lifetime), `iss` and `sub` the client id, and `aud` the
/// token endpoint URL (or the issuer, or a fixed value). It is sent as
/// `client_assertion_type` [`CLIENT_ASSERTION_TYPE`] and `client_assertion`, with every
/// grant and with revocation.
///
/// ```
/// use tower_bearer::client::{Algorithm, AssertionKey, ClientAssertion, TokenEndpoint};
/// # let pem = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/rsa.key")).unwrap();
/// let key = AssertionKey::from_pem(Algorithm::PS256, &pem)?.key_id("svc-key-1");
/// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth2/token")?
///     .client_id("svc")
///     .auth_method(ClientAssertion::private_key(key));
/// let grant = endpoint.client_credentials().scope("read");
///
/// // client_secret_jwt: HS256 keyed with the client secret.
/// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth2/token")?
///     .client_id("svc")
///     .client_secret("a-long-shared-secret-0123456789")
///     .auth_method(ClientAssertion::client_secret());
/// # Ok::<(), tower_bearer::Error>(())
/// ```
#[derive(Clone)]
pub struct ClientAssertion {
    signer: SignWith,
    audience: Audience,
    lifetime: Duration,
}

impl ClientAssertion {
    /// `private_key_jwt`: assertions signed with `key`.
    pub fn private_key(key: AssertionKey) -> Self {
        ClientAssertion {
            signer: SignWith::Key(key),
            audience: Audience::TokenEndpoint,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
        }
    }

    /// `client_secret_jwt`: assertions signed with HS256, keyed with the endpoint's
    /// [client secret](super::TokenEndpoint::client_secret) (a request without one
    /// fails with [`Error::Configuration`]).
    pub fn client_secret() -> Self {
        ClientAssertion {
            signer: SignWith::Secret(Algorithm::HS256),
            audience: Audience::TokenEndpoint,
            lifetime: DEFAULT_ASSERTION_LIFETIME,
        }
    }

    /// `aud` is this value (by default the token endpoint URL).
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Audience::Fixed(audience.into());
        self
    }

    /// `aud` is the issuer of the provider the endpoint was
    /// [discovered](super::TokenEndpoint::discover) from (a request through an endpoint
    /// that was not discovered fails with [`Error::Configuration`]).
    pub fn audience_issuer(mut self) -> Self {
        self.audience = Audience::Issuer;
        self
    }

    /// How long each assertion is valid; default [`DEFAULT_ASSERTION_LIFETIME`].
    pub fn lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// The `token_endpoint_auth_method` this is: `private_key_jwt` or
    /// `client_secret_jwt`.
    pub fn method(&self) -> &'static str {
        match self.signer {
            SignWith::Key(_) => "private_key_jwt",
            SignWith::Secret(_) => "client_secret_jwt",
        }
    }

    /// The private key of `private_key_jwt` (none for `client_secret_jwt`): it signs
    /// request objects too (RFC 9101).
    pub(crate) fn key(&self) -> Option<&AssertionKey> {
        match &self.signer {
            SignWith::Key(key) => Some(key),
            SignWith::Secret(_) => None,
        }
    }

    /// Whether the assertions' `aud` is `issuer` alone.
    pub(crate) fn audience_is(&self, issuer: &str) -> bool {
        match &self.audience {
            Audience::Issuer => true,
            Audience::Fixed(aud) => aud == issuer,
            Audience::TokenEndpoint => false,
        }
    }

    /// The signing algorithm of the assertions.
    pub(crate) fn algorithm(&self) -> Algorithm {
        match &self.signer {
            SignWith::Key(key) => key.alg,
            SignWith::Secret(alg) => *alg,
        }
    }

    /// A new assertion for `client_id` at `token_url`.
    pub(crate) async fn make(
        &self,
        client_id: &str,
        token_url: &str,
        issuer: Option<&str>,
        secret: Option<&str>,
    ) -> Result<String, Error> {
        let aud = match &self.audience {
            Audience::TokenEndpoint => token_url,
            Audience::Fixed(aud) => aud.as_str(),
            Audience::Issuer => issuer.ok_or_else(|| {
                Error::Configuration(
                    "the assertion audience is the issuer, but the endpoint was not discovered"
                        .into(),
                )
            })?,
        };
        let (iat, exp) = iat_exp(self.lifetime);
        let claims = AssertionClaims {
            iss: client_id,
            sub: Some(client_id),
            aud,
            jti: Some(jti()),
            iat,
            exp,
            scope: None,
        };
        match &self.signer {
            SignWith::Key(key) => key.sign(&claims).await,
            SignWith::Secret(alg) => {
                let secret = secret.ok_or_else(|| {
                    Error::Configuration("client_secret_jwt needs a client secret".into())
                })?;
                jsonwebtoken::encode(
                    &Header::new(*alg),
                    &claims,
                    &EncodingKey::from_secret(secret.as_bytes()),
                )
                .map_err(|e| Error::Configuration(format!("cannot sign the assertion: {e}")))
            }
        }
    }
}

impl PartialEq for ClientAssertion {
    /// The same key (the same loaded key, not an equal one) and the same options.
    fn eq(&self, other: &Self) -> bool {
        let signer = match (&self.signer, &other.signer) {
            (SignWith::Key(a), SignWith::Key(b)) => a.same(b),
            (SignWith::Secret(a), SignWith::Secret(b)) => a == b,
            _ => false,
        };
        signer && self.audience == other.audience && self.lifetime == other.lifetime
    }
}

impl Eq for ClientAssertion {}

impl fmt::Debug for ClientAssertion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientAssertion");
        d.field("method", &self.method());
        if let SignWith::Key(key) = &self.signer {
            d.field("key", key);
        }
        d.field("audience", &self.audience)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// The claims of an assertion (RFC 7523 §3), for client authentication and for the
/// JWT-bearer grant.
#[derive(Serialize)]
pub(crate) struct AssertionClaims<'a> {
    pub(crate) iss: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) sub: Option<&'a str>,
    pub(crate) aud: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) jti: Option<String>,
    pub(crate) iat: u64,
    pub(crate) exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<&'a str>,
}

/// `iat` now and `exp` after `lifetime`, in seconds since the epoch (wall clock: the
/// provider compares them with its own).
pub(crate) fn iat_exp(lifetime: Duration) -> (u64, u64) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (now, now.saturating_add(lifetime.as_secs().max(1)))
}

/// A fresh `jti`: 128 random bits (unique; the signature, not secrecy, protects the
/// assertion).
pub(crate) fn jti() -> String {
    let bytes: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
    b64url(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn a_key_of_the_wrong_type_is_refused_when_loaded() {
        let rsa = key("rsa.key");
        let ec256 = key("ec256.key");
        let ec384 = key("ec384.key");
        let ed = key("ed25519.key");
        for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::RS512] {
            assert!(AssertionKey::from_pem(alg, &rsa).is_ok(), "{alg:?}");
            assert!(AssertionKey::from_pem(alg, &ec256).is_err(), "{alg:?}");
            assert!(AssertionKey::from_pem(alg, &ed).is_err(), "{alg:?}");
        }
        assert!(AssertionKey::from_pem(Algorithm::ES256, &ec256).is_ok());
        assert!(AssertionKey::from_pem(Algorithm::ES256, &ec384).is_err());
        assert!(AssertionKey::from_pem(Algorithm::ES384, &ec256).is_err());
        assert!(AssertionKey::from_pem(Algorithm::ES256, &rsa).is_err());
        assert!(AssertionKey::from_pem(Algorithm::EdDSA, &ed).is_ok());
        assert!(AssertionKey::from_pem(Algorithm::EdDSA, &ec256).is_err());
        assert!(AssertionKey::from_pem(Algorithm::HS256, b"secret").is_err());
        assert!(AssertionKey::from_pem(Algorithm::RS256, b"not a pem").is_err());
        assert!(AssertionKey::from_der(Algorithm::RS256, b"\x30\x03\x02\x01\x00").is_err());
        assert!(AssertionKey::from_der(Algorithm::ES256, &[]).is_err());
        assert!(AssertionKey::from_der(Algorithm::EdDSA, &[0x30]).is_err());
    }

    #[test]
    fn der_and_jwk_load_the_same_keys() {
        let pem = String::from_utf8(key("ec256.key")).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        assert!(AssertionKey::from_der(Algorithm::ES256, &der).is_ok());
        assert!(AssertionKey::from_der(Algorithm::RS256, &der).is_err());
        let jwk = r#"{"kty":"OKP","crv":"Ed25519","d":"nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"}"#;
        let k = AssertionKey::from_jwk(jwk, Some(Algorithm::EdDSA)).unwrap();
        assert_eq!(k.kid.as_deref(), Some("ed"));
        assert!(AssertionKey::from_jwk(jwk, None).is_err(), "no alg");
        assert!(AssertionKey::from_jwk(jwk, Some(Algorithm::ES256)).is_err());
        // The JWK's own alg, under RFC 9864's fully specified name too.
        for (name, ok) in [("EdDSA", true), ("Ed25519", true), ("Ed448", false)] {
            let named = jwk.replace(r#""kid""#, &format!(r#""alg":"{name}","kid""#));
            let got = AssertionKey::from_jwk(&named, None);
            assert_eq!(got.is_ok(), ok, "{name}");
            if let Ok(k) = got {
                assert_eq!(k.algorithm(), Algorithm::EdDSA);
            }
        }
        let public =
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        assert!(AssertionKey::from_jwk(public, Some(Algorithm::EdDSA)).is_err());
        assert!(AssertionKey::from_jwk("[]", Some(Algorithm::EdDSA)).is_err());
    }

    /// RSA, P-256 and P-384 JWKs (made from tests/keys/*.key by Node's crypto) sign
    /// assertions that their public PEM verifies; an RSA JWK without its CRT members,
    /// or with ones that do not fit, is refused.
    #[test]
    fn rsa_and_ec_jwks_sign_what_their_public_keys_verify() {
        let text = |name: &str| String::from_utf8(key(name)).unwrap();
        let cases = [
            ("rsa", Algorithm::RS256),
            ("rsa", Algorithm::PS384),
            ("ec256", Algorithm::ES256),
            ("ec384", Algorithm::ES384),
        ];
        for (name, alg) in cases {
            let jwk = text(&format!("{name}.jwk"));
            let signer = AssertionKey::from_jwk(&jwk, Some(alg)).unwrap();
            let claims = AssertionClaims {
                iss: "svc",
                sub: None,
                aud: "https://idp.example.com/token",
                jti: None,
                iat: 1,
                exp: 2,
                scope: None,
            };
            let token = futures_util::FutureExt::now_or_never(signer.sign(&claims))
                .unwrap()
                .unwrap();
            let (message, signature) = token.rsplit_once('.').unwrap();
            let public = key(&format!("{name}.pub.pem"));
            let verifying = match alg.family() {
                AlgorithmFamily::Rsa => jsonwebtoken::DecodingKey::from_rsa_pem(&public),
                _ => jsonwebtoken::DecodingKey::from_ec_pem(&public),
            }
            .unwrap();
            assert!(
                jsonwebtoken::crypto::verify(signature, message.as_bytes(), &verifying, alg)
                    .unwrap(),
                "{name} {alg:?}"
            );
        }
        assert!(AssertionKey::from_jwk(&text("ec256.jwk"), Some(Algorithm::ES384)).is_err());
        assert!(AssertionKey::from_jwk(&text("ec384.jwk"), Some(Algorithm::ES256)).is_err());

        let rsa: serde_json::Value = serde_json::from_str(&text("rsa.jwk")).unwrap();
        for missing in ["d", "p", "q", "dp", "dq", "qi"] {
            let mut partial = rsa.clone();
            partial.as_object_mut().unwrap().remove(missing);
            let err = AssertionKey::from_jwk(&partial.to_string(), Some(Algorithm::RS256));
            assert!(err.is_err(), "without {missing}");
        }
        let mut inconsistent = rsa.clone();
        inconsistent["qi"] = rsa["dq"].clone();
        assert!(AssertionKey::from_jwk(&inconsistent.to_string(), Some(Algorithm::RS256)).is_err());
        let mut zero = serde_json::from_str::<serde_json::Value>(&text("ec256.jwk")).unwrap();
        zero["d"] = b64url(&[0u8; 32]).into();
        assert!(AssertionKey::from_jwk(&zero.to_string(), Some(Algorithm::ES256)).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let pem = key("rsa.key");
        let a = ClientAssertion::private_key(
            AssertionKey::from_pem(Algorithm::RS256, &pem)
                .unwrap()
                .key_id("k1"),
        );
        let debug = format!("{a:?}");
        assert!(
            debug.contains("private_key_jwt") && debug.contains("k1"),
            "{debug}"
        );
        let body: String = String::from_utf8(pem)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .chars()
            .take(16)
            .collect();
        assert!(!debug.contains(&body));
        assert_eq!(a, a.clone());
        assert_ne!(a, ClientAssertion::client_secret());
    }
}
