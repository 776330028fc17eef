//! [`JwtValidator`]: JWTs signed with a known key (HS, RS, PS, ES, EdDSA), with an
//! algorithm allow-list bound to the key's type.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::de::DeserializeOwned;

use super::validator::{Claims, ValidationFuture, Validator};
use super::Rejection;

/// The largest leeway accepted for `exp` and `nbf`.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid JWT key: {0}")]
pub struct KeyError(String);

/// Validates JWTs signed with one key.
///
/// Secure by default: the allowed algorithms are those of the key's type (so
/// `alg: none` and an HMAC token signed with a public key are always refused), `exp`
/// is required, `exp` and `nbf` are checked with a 60 s leeway (at most 5 minutes),
/// and the `jku`, `x5u` and `jwk` headers are never followed.
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
    validation: Validation,
    required_scopes: Vec<String>,
    _claims: PhantomData<fn() -> C>,
}

impl<C> Clone for JwtValidator<C> {
    fn clone(&self) -> Self {
        JwtValidator {
            key: self.key.clone(),
            family: self.family,
            validation: self.validation.clone(),
            required_scopes: self.required_scopes.clone(),
            _claims: PhantomData,
        }
    }
}

impl<C> fmt::Debug for JwtValidator<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field("algorithms", &self.validation.algorithms)
            .field("iss", &self.validation.iss)
            .field("aud", &self.validation.aud)
            .field("leeway_s", &self.validation.leeway)
            .field("required_scopes", &self.required_scopes)
            .finish_non_exhaustive()
    }
}

fn key_error(e: jsonwebtoken::errors::Error) -> KeyError {
    KeyError(e.to_string())
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> JwtValidator<C> {
    /// Validates with `key`, allowing every algorithm of its type.
    pub fn new(key: DecodingKey) -> Self {
        let family = key.family();
        let mut validation = Validation::new_for_family(family);
        validation.validate_aud = false;
        // A token that is not valid yet is not valid: nbf is checked whenever present.
        validation.validate_nbf = true;
        JwtValidator {
            key,
            family,
            validation,
            required_scopes: Vec::new(),
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
    /// # Errors
    /// [`KeyError`] for a JWK of an unsupported type or with bad parameters.
    pub fn from_jwk(jwk: &jsonwebtoken::jwk::Jwk) -> Result<Self, KeyError> {
        let key = DecodingKey::from_jwk(jwk).map_err(key_error)?;
        let validator = Self::new(key);
        match jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok())
        {
            Some(alg) => validator.algorithms(&[alg]),
            None => Ok(validator),
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
        self.validation.algorithms = algorithms.to_vec();
        Ok(self)
    }

    /// Requires `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: impl ToString) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// Requires `aud` to be (or contain) `audience`.
    pub fn audience(self, audience: impl ToString) -> Self {
        self.audiences([audience])
    }

    /// Requires `aud` to be (or contain) one of `audiences`.
    pub fn audiences<T: ToString>(mut self, audiences: impl IntoIterator<Item = T>) -> Self {
        let audiences: Vec<String> = audiences.into_iter().map(|a| a.to_string()).collect();
        self.validation.set_audience(&audiences);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// The clock skew allowed on `exp` and `nbf` (default 60 s, at most
    /// [`MAX_LEEWAY`]).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.validation.leeway = leeway.min(MAX_LEEWAY).as_secs();
        self
    }

    /// Requires these registered claims to be present (`sub`, `iss`, `aud`, `exp`,
    /// `nbf`).
    pub fn require_claims<T: ToString>(mut self, claims: impl IntoIterator<Item = T>) -> Self {
        for claim in claims {
            self.validation
                .required_spec_claims
                .insert(claim.to_string());
        }
        self
    }

    /// Accepts tokens without `exp` (not recommended: such a token never expires).
    pub fn allow_missing_exp(mut self) -> Self {
        self.validation.required_spec_claims.remove("exp");
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

    /// Validates `token` now.
    ///
    /// # Errors
    /// [`Rejection::InvalidToken`] with a safe description, or
    /// [`Rejection::InsufficientScope`].
    pub fn check(&self, token: &str) -> Result<C, Rejection> {
        let data = jsonwebtoken::decode::<C>(token, &self.key, &self.validation)
            .map_err(|e| Rejection::invalid_token(describe(e.kind())))?;
        if !self.required_scopes.is_empty() {
            // The signature is verified: reading the payload again is safe.
            let granted: Claims = jsonwebtoken::dangerous::insecure_decode_claims(token)
                .map_err(|_| Rejection::invalid_token("the token is malformed"))?;
            if !self
                .required_scopes
                .iter()
                .all(|s| super::ScopedClaims::has_scope(&granted, s))
            {
                return Err(Rejection::InsufficientScope(self.required_scopes.join(" ")));
            }
        }
        Ok(data.claims)
    }
}

fn describe(kind: &ErrorKind) -> std::borrow::Cow<'static, str> {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired".into(),
        ErrorKind::ImmatureSignature => "the token is not valid yet".into(),
        ErrorKind::InvalidIssuer => "the token has the wrong issuer".into(),
        ErrorKind::InvalidAudience => "the token is not for this audience".into(),
        ErrorKind::InvalidSubject => "the token has the wrong subject".into(),
        ErrorKind::InvalidSignature => "the token signature is invalid".into(),
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => "the token algorithm is not allowed".into(),
        // The claim names come from our own list of required claims, not the token.
        ErrorKind::MissingRequiredClaim(claim) => {
            format!("the token lacks the {} claim", safe_name(claim)).into()
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("the token's {} claim is malformed", safe_name(claim)).into()
        }
        _ => "the token is malformed".into(),
    }
}

fn safe_name(claim: &str) -> &str {
    match claim {
        "exp" | "nbf" | "iat" | "iss" | "aud" | "sub" => claim,
        _ => "a required",
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for JwtValidator<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        ValidationFuture::ready(self.check(token))
    }
}
