//! [`JwtValidator`]: JWTs signed with a known key (HS, RS, PS, ES, EdDSA), with an
//! algorithm allow-list bound to the key's type.
//!
//! The token is taken apart here rather than by `jsonwebtoken::decode`, so every
//! rule is ours and each part is decoded once: the header is read for `alg` and
//! `crit` only (never `jku`, `x5u`, `jwk` or `x5c`), the signature is checked by
//! `jsonwebtoken::crypto::verify` (HMAC with a key prepared once, through
//! `crate::crypto`: aws-lc-rs's, or RustCrypto's with the pure-Rust backend), and the
//! payload is decoded once. A [`Claims`] payload is read once and its registered
//! claims checked from it; another claims type is read for the registered claims,
//! then for itself.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::de::{self, DeserializeOwned, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};

use super::validator::{Audience, Claims, ValidationFuture, Validator};
use super::Rejection;

/// The largest leeway accepted for `exp`, `nbf` and `iat`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z. A later date is not a
/// date any issuer means; it is refused as malformed.
const LATEST_DATE: u64 = 253_402_300_799;

/// The JWS algorithm a name in a token's, a proof's or a key's `alg` means, or
/// `None` for a name this crate does not verify.
///
/// Both the names of RFC 7518 / RFC 8037 and the fully specified names of
/// RFC 9864 are read: `Ed25519` (registered for JOSE, and what current clients
/// such as oauth4webapi send) is `EdDSA` on an Ed25519 key, the only Edwards curve
/// verified here. `ESP256` / `ESP384` (RFC 9864's ECDSA names, registered for
/// COSE: JOSE's `ES256` / `ES384` were fully specified already) are read as
/// `ES256` / `ES384`, the same verification, for an issuer that uses them. An
/// allow-list naming [`Algorithm::EdDSA`] therefore accepts `Ed25519` too, and one
/// naming [`Algorithm::ES256`] accepts `ESP256`. `Ed448`, `ES512` and `ESP512` are
/// not supported by the signature backend and are refused, as every unknown name
/// is (`none` included).
pub(crate) fn parse_alg(name: &str) -> Option<Algorithm> {
    match name {
        "Ed25519" => Some(Algorithm::EdDSA),
        "ESP256" => Some(Algorithm::ES256),
        "ESP384" => Some(Algorithm::ES384),
        other => Algorithm::from_str(other).ok(),
    }
}

/// The JOSE names of `alg` a server advertises (`algs`,
/// `dpop_signing_alg_values_supported`): `EdDSA` and RFC 9864's `Ed25519` for
/// [`Algorithm::EdDSA`], the one name of any other. `ESP256` and `ESP384` are
/// read ([`parse_alg`]) but not advertised: they are COSE's names, not JOSE's.
#[cfg(feature = "dpop")]
pub(crate) fn alg_names(alg: Algorithm) -> Vec<String> {
    match alg {
        Algorithm::EdDSA => vec!["EdDSA".to_owned(), "Ed25519".to_owned()],
        other => vec![format!("{other:?}")],
    }
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct KeyError(String);

/// Validates JWTs signed with one key.
///
/// Secure by default:
/// - the allowed algorithms are those of the key's type, so `alg: none` and an HMAC
///   token signed with a public key are always refused;
/// - a `crit` header is refused (no extension is understood, RFC 7515 §4.1.11), and
///   the `jku`, `x5u`, `jwk` and `x5c` headers are never read, let alone followed;
/// - `exp` is required; `exp`, `nbf` and `iat` are checked with a 60 s leeway (at
///   most 5 minutes): a token issued in the future is refused; dates may be
///   integers or decimals (RFC 7519 NumericDate), anything else is malformed;
/// - `iss` and `aud` are checked when configured, and then required;
/// - `alg` is read under the names of RFC 7518 / RFC 8037 and the fully specified
///   ones of RFC 9864: `Ed25519` is verified as `EdDSA`, `ESP256` / `ESP384` as
///   `ES256` / `ES384` (`Ed448`, `ES512` and `ESP512` are not supported and are
///   refused);
/// - only canonical base64url is read, in every part (no padding, no set trailing
///   bits), so a signed token has one text;
/// - both forms of an ECDSA signature, (r, s) and (r, n − s), are accepted: the
///   signers of most issuers and clients (OpenSSL, aws-lc, WebCrypto) do not
///   normalise `s`, so refusing the "high" form would refuse about half of their
///   ES256 tokens. Anyone holding a token can make its other form without the key,
///   so nothing may be keyed on a token's text alone: the crate keys what it keeps
///   per token on what was signed (a revocation by token on the signing input,
///   `header.payload`; a DPoP replay record on the proof's key and `jti`).
///
/// ```
/// use tower_bearer::server::{Claims, JwtValidator};
///
/// let validator: JwtValidator<Claims> = JwtValidator::hmac(b"a-secret-of-at-least-32-bytes!!!")
///     .issuer("https://idp.example.com/")
///     .audience("my-api")
///     .require_scopes(["read"]);
/// ```
pub struct JwtValidator<C = Claims> {
    key: DecodingKey,
    family: AlgorithmFamily,
    algorithms: Vec<Algorithm>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    leeway: u64,
    required: Required,
    required_scopes: Vec<String>,
    /// RFC 9068: `typ` must be `at+jwt` (or `application/at+jwt`).
    access_token_typ: bool,
    /// For a shared secret: the HMAC states keyed once, cloned per token.
    hmac: Option<Arc<HmacKeys>>,
    /// The last header read, shared by the clones.
    last_header: Arc<LastHeader>,
    _claims: PhantomData<fn() -> C>,
}

/// What is read from a JOSE header: its `alg` (`None` when unknown, `none`
/// included), whether it has a `crit` member, and whether its `typ` is an access
/// token's (RFC 9068).
type HeaderRead = (Option<Algorithm>, bool, bool);

/// The header of the last authentic token, with what was read from it. Tokens of
/// one issuer share a handful of headers (one per signing key), so most checks
/// compare the header's text to the last one instead of decoding and parsing it.
/// What it holds is the answer of a pure function of that text: it cannot go stale,
/// whatever the key or the clock, and a header that differs is read in full, as
/// without it. Only a header whose signature checked out is remembered, so a client
/// without the key cannot make the others miss; only a short one (a long header, an
/// `x5c` chain, is rare and would be kept whole).
#[derive(Default)]
struct LastHeader(ArcSwapOption<(Box<str>, HeaderRead)>);

/// The longest header remembered: a JOSE header with an `alg`, `typ` and `kid` is
/// well under this.
const LAST_HEADER_MAX: usize = 256;

impl LastHeader {
    /// What was read from `part`, when it is the header remembered.
    fn get(&self, part: &str) -> Option<HeaderRead> {
        let last = self.0.load();
        last.as_ref()
            .filter(|last| *last.0 == *part)
            .map(|last| last.1)
    }

    /// Remembers `part` (the header of an authentic token) and what was read from it.
    fn remember(&self, part: &str, read: HeaderRead) {
        if part.len() <= LAST_HEADER_MAX {
            self.0.store(Some(Arc::new((part.into(), read))));
        }
    }
}

/// HMAC keys with the secret's inner and outer blocks already hashed: keying costs
/// two hash blocks, a fifth of an HS256 check, paid here once. The build's one crypto
/// implementation (`crate::crypto`): aws-lc-rs (its SHA-256 runs on SHA or AVX2
/// instructions where the CPU has them), or RustCrypto with
/// `--cfg tower_bearer_rust_crypto`.
struct HmacKeys {
    hs256: crate::crypto::HmacKey,
    hs384: crate::crypto::HmacKey,
    hs512: crate::crypto::HmacKey,
}

impl HmacKeys {
    fn new(secret: &[u8]) -> Option<Self> {
        Some(HmacKeys {
            hs256: crate::crypto::HmacKey::sha256(secret)?,
            hs384: crate::crypto::HmacKey::sha384(secret)?,
            hs512: crate::crypto::HmacKey::sha512(secret)?,
        })
    }

    /// `Some(authentic)` for an HMAC algorithm, `None` for any other.
    fn verify(
        &self,
        alg: Algorithm,
        message: &[u8],
        signature: &str,
    ) -> Option<Result<bool, Rejection>> {
        let key = match alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::HS384 => &self.hs384,
            Algorithm::HS512 => &self.hs512,
            _ => return None,
        };
        // The longest HMAC (SHA-512) is 64 bytes; room for the decoder's estimate.
        let mut buf = [0u8; 96];
        Some(match URL_SAFE_NO_PAD.decode_slice(signature, &mut buf) {
            Ok(len) => Ok(key.verify(message, &buf[..len])),
            Err(base64::DecodeSliceError::DecodeError(_)) => Err(malformed()),
            Err(base64::DecodeSliceError::OutputSliceTooSmall) => Ok(false),
        })
    }
}

/// Which claims must be present.
#[derive(Clone, Debug, Default)]
struct Required {
    exp: bool,
    nbf: bool,
    iat: bool,
    sub: bool,
    /// Any other claim names: checked by reading the payload as a map.
    others: Vec<String>,
}

impl<C> Clone for JwtValidator<C> {
    fn clone(&self) -> Self {
        JwtValidator {
            key: self.key.clone(),
            family: self.family,
            algorithms: self.algorithms.clone(),
            issuers: self.issuers.clone(),
            audiences: self.audiences.clone(),
            leeway: self.leeway,
            required: self.required.clone(),
            required_scopes: self.required_scopes.clone(),
            access_token_typ: self.access_token_typ,
            hmac: self.hmac.clone(),
            last_header: self.last_header.clone(),
            _claims: PhantomData,
        }
    }
}

impl<C> fmt::Debug for JwtValidator<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field("algorithms", &self.algorithms)
            .field("iss", &self.issuers)
            .field("aud", &self.audiences)
            .field("leeway_s", &self.leeway)
            .field("required", &self.required)
            .field("required_scopes", &self.required_scopes)
            .field("access_token_typ", &self.access_token_typ)
            .finish_non_exhaustive()
    }
}

/// `Ok` unless the JWK is for encryption (`use: enc`): such a key verifies no
/// signature.
fn signing_use(jwk: &jsonwebtoken::jwk::Jwk) -> Result<(), KeyError> {
    match jwk.common.public_key_use {
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption) => Err(KeyError(
            "the JWK is for encryption (use enc), not for signatures".into(),
        )),
        _ => Ok(()),
    }
}

fn key_error(e: jsonwebtoken::errors::Error) -> KeyError {
    KeyError(e.to_string())
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> JwtValidator<C> {
    /// Validates with `key`, allowing every algorithm of its type.
    pub fn new(key: DecodingKey) -> Self {
        let family = key.family();
        let hmac = match family {
            AlgorithmFamily::Hmac => key
                .try_get_as_bytes()
                .ok()
                .and_then(HmacKeys::new)
                .map(Arc::new),
            _ => None,
        };
        JwtValidator {
            hmac,
            key,
            family,
            algorithms: family.algorithms().to_vec(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: 60,
            required: Required {
                exp: true,
                ..Required::default()
            },
            required_scopes: Vec::new(),
            access_token_typ: false,
            last_header: Arc::default(),
            _claims: PhantomData,
        }
    }

    /// A shared secret: HS256, HS384, HS512.
    pub fn hmac(secret: &[u8]) -> Self {
        Self::new(DecodingKey::from_secret(secret))
    }

    /// An RSA public key in PEM: RS256/384/512 and PS256/384/512.
    ///
    /// # Errors
    /// [`KeyError`] when the PEM is not an RSA public key.
    pub fn rsa_pem(pem: &[u8]) -> Result<Self, KeyError> {
        DecodingKey::from_rsa_pem(pem)
            .map(Self::new)
            .map_err(key_error)
    }

    /// An EC public key (P-256 or P-384) in PEM: ES256, ES384.
    ///
    /// # Errors
    /// [`KeyError`] when the PEM is not an EC public key.
    pub fn ec_pem(pem: &[u8]) -> Result<Self, KeyError> {
        DecodingKey::from_ec_pem(pem)
            .map(Self::new)
            .map_err(key_error)
    }

    /// An Ed25519 public key in PEM: EdDSA.
    ///
    /// # Errors
    /// [`KeyError`] when the PEM is not an Ed25519 public key.
    pub fn ed_pem(pem: &[u8]) -> Result<Self, KeyError> {
        DecodingKey::from_ed_pem(pem)
            .map(Self::new)
            .map_err(key_error)
    }

    /// An RSA public key in DER (PKCS#1).
    pub fn rsa_der(der: &[u8]) -> Self {
        Self::new(DecodingKey::from_rsa_der(der))
    }

    /// An EC public key in DER (the uncompressed point).
    pub fn ec_der(der: &[u8]) -> Self {
        Self::new(DecodingKey::from_ec_der(der))
    }

    /// An Ed25519 public key in DER (the raw 32 bytes).
    pub fn ed_der(der: &[u8]) -> Self {
        Self::new(DecodingKey::from_ed_der(der))
    }

    /// A key from a JWK; when the JWK names its algorithm, only that one is allowed.
    ///
    /// A key for encryption (`use: enc`, or an `alg` such as `RSA-OAEP`, `RSA1_5` or
    /// `ECDH-ES`) verifies no signature and is refused. jsonwebtoken's
    /// [`Jwk`](jsonwebtoken::jwk::Jwk) forgets an `alg` it does not know, so an EC or
    /// RSA key whose `alg` it forgot (`ECDH-ES` as well as RFC 9864's `ESP256`) is
    /// refused too, rather than allowed every algorithm of its type; an Ed25519 key's
    /// (RFC 9864's `Ed25519`) allows `EdDSA`, its only algorithm.
    ///
    /// # Errors
    /// [`KeyError`] for a JWK of an unsupported type or with bad parameters, or one
    /// for encryption.
    pub fn from_jwk(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Self, KeyError> {
        use jsonwebtoken::jwk::KeyAlgorithm;
        signing_use(jwk)?;
        let key = DecodingKey::from_jwk(jwk).map_err(key_error)?;
        let validator = Self::new(key);
        let alg = match jwk.common.key_algorithm {
            None => return Ok(validator),
            // A name jsonwebtoken does not know: one algorithm only on an Ed25519 key.
            Some(KeyAlgorithm::UNKNOWN_ALGORITHM) if validator.family == AlgorithmFamily::Ed => {
                return Ok(validator);
            }
            Some(known) => known,
        };
        match parse_alg(&alg.to_string()) {
            Some(alg) => validator.algorithms(&[alg]),
            None => Err(KeyError(
                "the JWK's alg is not a signature algorithm this crate verifies".into(),
            )),
        }
    }

    /// A key from a parsed JWK and the `alg` its JSON names (jsonwebtoken's
    /// [`Jwk`](jsonwebtoken::jwk::Jwk) forgets a name it does not know, RFC 9864's
    /// `Ed25519` for one): only that algorithm is allowed, under any of its names;
    /// a name this crate does not verify is an error, not a key that allows every
    /// algorithm of its type.
    #[cfg(feature = "jwks")]
    pub(crate) fn from_jwk_named(
        jwk: &jsonwebtoken::jwk::Jwk,
        alg: Option<&str>,
    ) -> Result<Self, KeyError> {
        let alg = match alg {
            None => None,
            Some(name) => Some(
                parse_alg(name)
                    .ok_or_else(|| KeyError(format!("the JWK's alg {name:?} is not supported")))?,
            ),
        };
        signing_use(jwk)?;
        let validator = Self::new(DecodingKey::from_jwk(jwk).map_err(key_error)?);
        match alg {
            Some(alg) => validator.algorithms(&[alg]),
            None => Ok(validator),
        }
    }

    /// The same key and algorithms (and leeway) for another claims type, with none
    /// of the claim rules: no `iss`, `aud`, scopes, `typ` or required claim, `exp`
    /// included (checked when present). For documents whose claims are checked by
    /// their reader, an RFC 9701 introspection answer for one (which should carry
    /// no `exp`).
    #[cfg(feature = "introspection")]
    pub(crate) fn signature_only<D>(&self) -> JwtValidator<D> {
        JwtValidator {
            key: self.key.clone(),
            family: self.family,
            algorithms: self.algorithms.clone(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway: self.leeway,
            required: Required::default(),
            required_scopes: Vec::new(),
            access_token_typ: false,
            hmac: self.hmac.clone(),
            last_header: Arc::default(),
            _claims: PhantomData,
        }
    }

    /// Narrows the allowed algorithms (for example to `RS256` only).
    ///
    /// # Errors
    /// [`KeyError`] when an algorithm is not of the key's type, or none is given.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, KeyError> {
        if algorithms.is_empty() {
            return Err(KeyError("no algorithm allowed".into()));
        }
        if let Some(bad) = algorithms.iter().find(|a| a.family() != self.family) {
            return Err(KeyError(format!(
                "{bad:?} cannot be verified with a {:?} key",
                self.family
            )));
        }
        self.algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Requires `iss` to be `issuer`.
    pub fn issuer(self, issuer: impl ToString) -> Self {
        self.issuers([issuer])
    }

    /// Requires `iss` to be one of `issuers`.
    pub fn issuers<T: ToString>(mut self, issuers: impl IntoIterator<Item = T>) -> Self {
        self.issuers = issuers.into_iter().map(|i| i.to_string()).collect();
        self
    }

    /// Requires `aud` to be (or contain) `audience`.
    pub fn audience(self, audience: impl ToString) -> Self {
        self.audiences([audience])
    }

    /// Requires `aud` to be (or contain) one of `audiences`.
    pub fn audiences<T: ToString>(mut self, audiences: impl IntoIterator<Item = T>) -> Self {
        self.audiences = audiences.into_iter().map(|a| a.to_string()).collect();
        self
    }

    /// The clock skew allowed on `exp`, `nbf` and `iat` (default 60 s, at most
    /// [`MAX_LEEWAY`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(MAX_LEEWAY).as_secs();
        self
    }

    /// Requires these claims to be present (for example `sub`, `nbf`, `iat` or
    /// `jti`; `iss` and `aud` are required by [`issuer`](Self::issuer) and
    /// [`audience`](Self::audience)). Any claim name may be given.
    pub fn require_claims<T: ToString>(mut self, claims: impl IntoIterator<Item = T>) -> Self {
        for claim in claims {
            let claim = claim.to_string();
            match claim.as_str() {
                "exp" => self.required.exp = true,
                "nbf" => self.required.nbf = true,
                "iat" => self.required.iat = true,
                "sub" => self.required.sub = true,
                _ if !self.required.others.contains(&claim) => self.required.others.push(claim),
                _ => {}
            }
        }
        self
    }

    /// Accepts tokens without `exp` (not recommended: such a token never expires).
    pub fn allow_missing_exp(mut self) -> Self {
        self.required.exp = false;
        self
    }

    /// Requires every one of `scopes`, from the `scope` claim (space-separated) or
    /// the `scp` claim (an array); a token without them gets `403`
    /// `insufficient_scope`.
    pub fn require_scopes<T: Into<String>>(mut self, scopes: impl IntoIterator<Item = T>) -> Self {
        self.required_scopes
            .extend(scopes.into_iter().map(Into::into));
        self
    }

    /// Requires the header `typ` of an RFC 9068 access token: `at+jwt`, or
    /// `application/at+jwt` (compared case-insensitively, RFC 9068 §4). A token with
    /// another `typ` or none, an ID token (`typ: JWT`) for one, gets `401`
    /// `invalid_token`: an ID token cannot be used as an access token. On a
    /// `JwksValidator`, set it in the rules (`.rules(|v| v.require_access_token_typ())`).
    pub fn require_access_token_typ(mut self) -> Self {
        self.access_token_typ = true;
        self
    }

    /// Validates `token` now.
    ///
    /// # Errors
    /// [`Rejection::InvalidToken`] with a safe description (it never quotes the
    /// token), or [`Rejection::InsufficientScope`].
    pub fn check(&self, token: &str) -> Result<C, Rejection> {
        let (header, payload, signature) = split(token)?;
        let remembered = self.last_header.get(header);
        let read = match remembered {
            Some(read) => read,
            None => read_header(header)?,
        };
        let (alg, critical, access_typ) = read;
        let alg = alg
            .filter(|a| self.algorithms.contains(a))
            .ok_or_else(not_allowed)?;
        if critical {
            return Err(Rejection::invalid_token(
                "the token has a critical header this server does not understand",
            ));
        }
        // jsonwebtoken slices an Ed25519 key to 32 bytes and panics on a shorter one
        // (found by fuzzing through a JWKS): a key of the wrong size verifies nothing.
        if alg == Algorithm::EdDSA && !self.key.try_get_as_bytes().is_ok_and(|k| k.len() == 32) {
            return Err(Rejection::invalid_token("the token signature is invalid"));
        }
        let message = &token[..header.len() + 1 + payload.len()];
        let authentic = match self
            .hmac
            .as_ref()
            .and_then(|keys| keys.verify(alg, message.as_bytes(), signature))
        {
            Some(outcome) => outcome?,
            None => {
                match jsonwebtoken::crypto::verify(signature, message.as_bytes(), &self.key, alg) {
                    Ok(authentic) => authentic,
                    Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::Base64(_)) => {
                        return Err(malformed());
                    }
                    // The key cannot check this signature (an ES384 token on a P-256 key).
                    Err(_) => false,
                }
            }
        };
        if !authentic {
            return Err(Rejection::invalid_token("the token signature is invalid"));
        }
        if remembered.is_none() {
            self.last_header.remember(header, read);
        }
        if self.access_token_typ && !access_typ {
            return Err(Rejection::invalid_token(
                "the token is not an access token (typ at+jwt)",
            ));
        }
        // Authentic from here on: the payload is decoded once. JSON is UTF-8 (RFC 8259
        // §8.1): checked once here, not string by string in each read.
        let (mut stack, mut heap) = ([0u8; PAYLOAD_ON_STACK], Vec::new());
        let payload = decode_part(payload, &mut stack, &mut heap)?;
        let payload = std::str::from_utf8(json_object(payload)?).map_err(|_| malformed())?;
        if let Some(claims) = self.read_once(payload)? {
            return Ok(claims);
        }
        // Read twice: the registered claims (each on its own, so a claim of the wrong
        // type is named in the answer), then the caller's type.
        let registered: Registered<'_> = serde_json::from_str(payload).map_err(|_| malformed())?;
        self.check_registered(&registered, unix_now())?;
        if !self.required.others.is_empty() {
            let all: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(payload).map_err(|_| malformed())?;
            if self.required.others.iter().any(|c| !all.contains_key(c)) {
                return Err(Rejection::invalid_token("the token lacks a required claim"));
            }
        }
        if !self.required_scopes.is_empty() {
            let granted: Claims = serde_json::from_str(payload).map_err(|_| malformed())?;
            self.check_scopes(&granted)?;
        }
        serde_json::from_str(payload).map_err(|_| malformed())
    }

    /// The claims read in one pass, when `C` is [`Claims`]: it holds every registered
    /// claim, so they are checked from it. `None` sends the payload the two-read way,
    /// which answers exactly as before: when `Claims` cannot read it (a claim of the
    /// wrong type, which that way names), a date past year 9999, or a required claim
    /// of another name (told apart from one that is `null` only by a map of all).
    fn read_once(&self, payload: &str) -> Result<Option<C>, Rejection> {
        if TypeId::of::<C>() != TypeId::of::<Claims>() || !self.required.others.is_empty() {
            return Ok(None);
        }
        let Ok(claims) = serde_json::from_str::<Claims>(payload) else {
            return Ok(None);
        };
        let Some(registered) = Registered::of(&claims) else {
            return Ok(None);
        };
        self.check_registered(&registered, unix_now())?;
        if !self.required_scopes.is_empty() {
            self.check_scopes(&claims)?;
        }
        let mut claims = Some(claims);
        Ok((&mut claims as &mut dyn Any)
            .downcast_mut::<Option<C>>()
            .and_then(Option::take))
    }

    fn check_scopes(&self, granted: &Claims) -> Result<(), Rejection> {
        if self
            .required_scopes
            .iter()
            .all(|s| super::ScopedClaims::has_scope(granted, s))
        {
            Ok(())
        } else {
            Err(Rejection::InsufficientScope(self.required_scopes.join(" ")))
        }
    }

    fn check_registered(&self, claims: &Registered<'_>, now: u64) -> Result<(), Rejection> {
        let leeway = self.leeway;
        match date(&claims.exp, "exp", self.required.exp)? {
            Some(exp) if now >= exp.saturating_add(leeway) => {
                return Err(Rejection::invalid_token("the token has expired"));
            }
            _ => {}
        }
        if let Some(nbf) = date(&claims.nbf, "nbf", self.required.nbf)? {
            if nbf > now.saturating_add(leeway) {
                return Err(Rejection::invalid_token("the token is not valid yet"));
            }
        }
        if let Some(iat) = date(&claims.iat, "iat", self.required.iat)? {
            if iat > now.saturating_add(leeway) {
                return Err(Rejection::invalid_token(
                    "the token was issued in the future",
                ));
            }
        }
        if self.required.sub {
            match &claims.sub {
                None => return Err(Rejection::invalid_token("the token lacks the sub claim")),
                Some(Text::Invalid) => return Err(malformed_claim("sub")),
                Some(Text::Valid(_)) => {}
            }
        }
        if !self.issuers.is_empty() {
            match &claims.iss {
                None => return Err(Rejection::invalid_token("the token lacks the iss claim")),
                Some(Text::Invalid) => return Err(malformed_claim("iss")),
                Some(Text::Valid(iss)) if !self.issuers.iter().any(|i| i == iss) => {
                    return Err(Rejection::invalid_token("the token has the wrong issuer"));
                }
                Some(Text::Valid(_)) => {}
            }
        }
        if !self.audiences.is_empty() {
            let ours = |a: &str| self.audiences.iter().any(|o| o == a);
            let accepted = match &claims.aud {
                None => return Err(Rejection::invalid_token("the token lacks the aud claim")),
                Some(Aud::Invalid) => return Err(malformed_claim("aud")),
                Some(Aud::One(a)) => ours(a),
                Some(Aud::Many(list)) => list.iter().any(|a| ours(a)),
            };
            if !accepted {
                return Err(Rejection::invalid_token(
                    "the token is not for this audience",
                ));
            }
        }
        Ok(())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn malformed() -> Rejection {
    Rejection::invalid_token("the token is malformed")
}

fn not_allowed() -> Rejection {
    Rejection::invalid_token("the token algorithm is not allowed")
}

fn malformed_claim(name: &'static str) -> Rejection {
    Rejection::invalid_token(format!("the token's {name} claim is malformed"))
}

/// A date claim: absent (and not required), or its value.
fn date(
    claim: &Option<Date>,
    name: &'static str,
    required: bool,
) -> Result<Option<u64>, Rejection> {
    match claim {
        None if required => Err(Rejection::invalid_token(format!(
            "the token lacks the {name} claim"
        ))),
        None => Ok(None),
        Some(Date::Invalid) => Err(malformed_claim(name)),
        Some(Date::Valid(at)) => Ok(Some(*at)),
    }
}

/// `header.payload.signature`: exactly three parts, the first two not empty.
fn split(token: &str) -> Result<(&str, &str, &str), Rejection> {
    compact_parts(token).ok_or_else(malformed)
}

/// The three parts of a compact JWS (`header.payload.signature`), the first two not
/// empty; `None` for any other shape. One SIMD scan of the whole text for its dots.
pub(crate) fn compact_parts(text: &str) -> Option<(&str, &str, &str)> {
    let mut dots = memchr::memchr_iter(b'.', text.as_bytes());
    match (dots.next(), dots.next(), dots.next()) {
        // The dots are ASCII: slicing at them stays on character boundaries.
        (Some(first), Some(second), None) if first > 0 && second > first + 1 => Some((
            &text[..first],
            &text[first + 1..second],
            &text[second + 1..],
        )),
        _ => None,
    }
}

/// What is read from a header ([`HeaderRead`]); nothing else in it is.
fn read_header(part: &str) -> Result<HeaderRead, Rejection> {
    let (mut stack, mut heap) = ([0u8; HEADER_ON_STACK], Vec::new());
    let bytes = decode_part(part, &mut stack, &mut heap)?;
    // JSON is UTF-8 (RFC 8259 §8.1), in the members skipped below too.
    let text = std::str::from_utf8(json_object(bytes)?).map_err(|_| malformed())?;
    let header: JoseHeader<'_> = serde_json::from_str(text).map_err(|_| malformed())?;
    let access_typ = matches!(&header.typ, Some(Text::Valid(typ)) if is_access_token_typ(typ));
    Ok((parse_alg(&header.alg), header.crit, access_typ))
}

/// Decoded headers up to this size are decoded on the stack (a JOSE header is
/// rarely longer than 200 bytes, one with an `x5c` chain is).
const HEADER_ON_STACK: usize = 512;
/// Decoded payloads up to this size are decoded on the stack: most access tokens'
/// claims (an allocation less per request), not all of them.
const PAYLOAD_ON_STACK: usize = 2048;

/// The base64url `part` decoded: into `stack` when it fits, else into `heap`.
fn decode_part<'b>(
    part: &str,
    stack: &'b mut [u8],
    heap: &'b mut Vec<u8>,
) -> Result<&'b [u8], Rejection> {
    if base64::decoded_len_estimate(part.len()) <= stack.len() {
        let len = URL_SAFE_NO_PAD
            .decode_slice(part, stack)
            .map_err(|_| malformed())?;
        Ok(&stack[..len])
    } else {
        URL_SAFE_NO_PAD
            .decode_vec(part, heap)
            .map_err(|_| malformed())?;
        Ok(heap)
    }
}

/// RFC 9068 §4: `at+jwt`, or the full media type `application/at+jwt`, in any case.
fn is_access_token_typ(typ: &str) -> bool {
    typ.eq_ignore_ascii_case("at+jwt") || typ.eq_ignore_ascii_case("application/at+jwt")
}

/// `bytes` when they hold a JSON object: serde would also read a struct from an
/// array (`[1, 2]` as `exp` and `nbf`), which neither a header nor claims may be.
pub(crate) fn json_object(bytes: &[u8]) -> Result<&[u8], Rejection> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(bytes),
        _ => Err(malformed()),
    }
}

/// The `kid` of a token's header (for picking a key from a JWKS): nothing else is
/// read from it.
#[cfg(feature = "jwks")]
pub(crate) fn header_kid(token: &str) -> Result<Option<String>, Rejection> {
    with_header_kid(token, |kid| kid.map(str::to_owned))
}

/// `then` applied to the header's `kid`, read without allocating for a header of
/// up to [`HEADER_ON_STACK`] bytes whose `kid` has no JSON escapes (a cached
/// verdict's recheck reads it on every hit).
#[cfg(feature = "jwks")]
pub(crate) fn with_header_kid<T>(
    token: &str,
    then: impl FnOnce(Option<&str>) -> T,
) -> Result<T, Rejection> {
    #[derive(Deserialize)]
    struct KidHeader<'a> {
        #[serde(default, borrow)]
        kid: Option<Cow<'a, str>>,
    }
    let (header, _, _) = split(token)?;
    let (mut stack, mut heap) = ([0u8; HEADER_ON_STACK], Vec::new());
    let bytes = decode_part(header, &mut stack, &mut heap)?;
    let header: KidHeader<'_> =
        serde_json::from_slice(json_object(bytes)?).map_err(|_| malformed())?;
    Ok(then(header.kid.as_deref()))
}

/// The members of a JOSE header that matter here; the rest are skipped.
#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    /// Present at all, whatever its value (`"crit": null` included).
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    /// Read leniently: a `typ` that is not a string is no access token's `typ`,
    /// and fails nothing when no `typ` is required.
    #[serde(default, borrow)]
    typ: Option<Text<'a>>,
}

/// `true` for a member that is there: its value is skipped.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// The registered claims, each read leniently so a claim of the wrong type gets
/// its own answer instead of failing the whole payload.
#[derive(Deserialize)]
struct Registered<'a> {
    #[serde(default)]
    exp: Option<Date>,
    #[serde(default)]
    nbf: Option<Date>,
    #[serde(default)]
    iat: Option<Date>,
    #[serde(default, borrow)]
    iss: Option<Text<'a>>,
    #[serde(default, borrow)]
    sub: Option<Text<'a>>,
    #[serde(default, borrow)]
    aud: Option<Aud<'a>>,
}

impl<'a> Registered<'a> {
    /// The registered claims of `claims`, as the lenient read would have found them;
    /// `None` when a date is past year 9999 (which that read calls malformed).
    fn of(claims: &'a Claims) -> Option<Self> {
        let date = |d: Option<u64>| match d {
            Some(at) if at > LATEST_DATE => None,
            d => Some(d.map(Date::Valid)),
        };
        let text = |t: &'a Option<String>| t.as_deref().map(|t| Text::Valid(Cow::Borrowed(t)));
        Some(Registered {
            exp: date(claims.exp)?,
            nbf: date(claims.nbf)?,
            iat: date(claims.iat)?,
            iss: text(&claims.iss),
            sub: text(&claims.sub),
            aud: claims.aud.as_ref().map(|aud| match aud {
                Audience::One(a) => Aud::One(Cow::Borrowed(a)),
                Audience::Many(list) => {
                    Aud::Many(list.iter().map(|a| Cow::Borrowed(a.as_str())).collect())
                }
            }),
        })
    }
}

/// A NumericDate (RFC 7519 §2): seconds since the epoch, an integer or a decimal,
/// not negative and not after year 9999.
enum Date {
    Valid(u64),
    Invalid,
}

/// A string claim, or something else.
enum Text<'a> {
    Valid(Cow<'a, str>),
    Invalid,
}

/// `aud`: a string, an array of strings, or something else.
enum Aud<'a> {
    One(Cow<'a, str>),
    Many(Vec<Cow<'a, str>>),
    Invalid,
}

/// Skips whatever a map or array holds, so a wrongly typed claim does not fail the
/// payload.
fn skip_map<'de, A: de::MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

fn skip_seq<'de, A: de::SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// Numbers are `Invalid` where a string is wanted.
macro_rules! invalid_numbers {
    ($invalid:expr) => {
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($invalid)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($invalid)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($invalid)
        }
    };
}

/// Every JSON value other than the ones a visitor wants is `Invalid`: a macro for
/// the visitor methods they share.
macro_rules! invalid_otherwise {
    ($invalid:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($invalid)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($invalid)
        }
        fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            skip_map(map)?;
            Ok($invalid)
        }
    };
}

impl<'de> Deserialize<'de> for Date {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DateVisitor;
        impl<'de> Visitor<'de> for DateVisitor {
            type Value = Date;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Date, E> {
                Ok(if v <= LATEST_DATE {
                    Date::Valid(v)
                } else {
                    Date::Invalid
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Date, E> {
                Ok(u64::try_from(v).map_or(Date::Invalid, |v| {
                    if v <= LATEST_DATE {
                        Date::Valid(v)
                    } else {
                        Date::Invalid
                    }
                }))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Date, E> {
                // Finite, not negative, not past year 9999: then it fits a u64.
                Ok(if v.is_finite() && v >= 0.0 && v <= LATEST_DATE as f64 {
                    Date::Valid(v as u64)
                } else {
                    Date::Invalid
                })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Date, E> {
                Ok(Date::Invalid)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Date, A::Error> {
                skip_seq(seq)?;
                Ok(Date::Invalid)
            }
            invalid_otherwise!(Date::Invalid);
        }
        deserializer.deserialize_any(DateVisitor)
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Text<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
        Ok(Text::Valid(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
        Ok(Text::Valid(Cow::Owned(v.to_owned())))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Text<'de>, A::Error> {
        skip_seq(seq)?;
        Ok(Text::Invalid)
    }
    invalid_numbers!(Text::Invalid);
    invalid_otherwise!(Text::Invalid);
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TextVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Aud<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct AudVisitor;
        impl<'de> Visitor<'de> for AudVisitor {
            type Value = Aud<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Aud<'de>, E> {
                Ok(Aud::One(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Aud<'de>, E> {
                Ok(Aud::One(Cow::Owned(v.to_owned())))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Aud<'de>, A::Error> {
                let mut list = Vec::new();
                let mut valid = true;
                while let Some(item) = seq.next_element::<Text<'de>>()? {
                    match item {
                        Text::Valid(a) if valid => list.push(a),
                        _ => valid = false,
                    }
                }
                Ok(if valid { Aud::Many(list) } else { Aud::Invalid })
            }
            invalid_numbers!(Aud::Invalid);
            invalid_otherwise!(Aud::Invalid);
        }
        deserializer.deserialize_any(AudVisitor)
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for JwtValidator<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        ValidationFuture::ready(self.check(token))
    }
}

#[cfg(test)]
mod tests {
    use super::compact_parts;

    #[test]
    fn compact_parts_are_three_the_first_two_not_empty() {
        assert_eq!(compact_parts("h.p.s"), Some(("h", "p", "s")));
        // An empty signature is a part (refused later, by its check).
        assert_eq!(compact_parts("h.p."), Some(("h", "p", "")));
        assert_eq!(compact_parts("hé.p.s"), Some(("hé", "p", "s")));
        for bad in [
            "", "h", "h.p", ".p.s", "h..s", "..", "h.p.s.", "h.p.s.t", "....",
        ] {
            assert_eq!(compact_parts(bad), None, "{bad:?}");
        }
    }
}
