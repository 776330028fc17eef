//! The signer seam: a private key kept somewhere else (a KMS, an HSM, another
//! process) signs client assertions, JWT-bearer assertions, DPoP proofs and request
//! objects through [`Signer`]; the crate wraps it with a deadline and checks every
//! signature it returns against the signer's public key before it is sent.
//!
//! The in-memory keys ([`AssertionKey`](super::AssertionKey) and `DpopKey`) keep
//! their own synchronous path (no boxed future, no check): a key is either local or
//! remote, an enum, never a `dyn Signer` on the local path.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{json, Value};

use crate::Error;

/// How long a [`Signer`] has to answer, by default, before the signature fails
/// with [`Error::SignerTimeout`].
pub const DEFAULT_SIGNER_DEADLINE: Duration = Duration::from_secs(5);

/// The longest deadline a [`Signer`] may be given: a JWT's `iat` is set before it
/// is signed, and a client assertion lives 60 s while verifiers take a DPoP proof's
/// `iat` within about a minute, so a signature later than this would be stale on
/// arrival.
pub const MAX_SIGNER_DEADLINE: Duration = Duration::from_secs(30);

/// A private key that signs somewhere else: a cloud KMS, an HSM, a signing service.
/// Give it to [`AssertionKey::from_signer`](super::AssertionKey::from_signer)
/// (`private_key_jwt`, the JWT-bearer grant, request objects) or `DpopKey::from_signer`
/// (DPoP proofs, feature `dpop`).
///
/// [`sign`](Self::sign) gets the JWS signing input (`base64url(header) "."
/// base64url(payload)`) and answers the JWS signature bytes (RFC 7518 §3): for
/// `ES256`/`ES384` the fixed-size `r || s` (64 or 96 bytes, not DER), for `EdDSA` 64
/// bytes, for RSA as many bytes as the modulus. Every signature is checked against
/// [`public_jwk`](Self::public_jwk) before it is used: a wrong-length or foreign
/// signature is an [`Error::Signer`], never sent.
///
/// The call is bounded by a deadline ([`DEFAULT_SIGNER_DEADLINE`], or the one given
/// to `from_signer_with_deadline`; inside a Tokio runtime, whose timer it needs,
/// and unbounded under another executor): past it the signature fails with
/// [`Error::SignerTimeout`] and the signer's future is dropped. No lock of the crate
/// is held while it runs; any number of signatures may be in flight at once. A panic
/// in `sign` or its future is caught: that signature fails with [`Error::Signer`].
/// The future must not block its thread: a synchronous HSM or PKCS#11 call goes
/// through `tokio::task::spawn_blocking` (a blocked thread is beyond any deadline).
///
/// The public JWK is read once, when the key is made (DPoP-bound tokens carry its
/// thumbprint): after the KMS rotates the key, signatures by the new one fail with
/// [`Error::Signer`]; make the key again (and get new tokens) to use the new one.
///
/// ```
/// use futures_util::future::BoxFuture;
/// use tower_bearer::client::{Algorithm, Signer};
/// use tower_bearer::Error;
///
/// /// Asks the signing service (a stand-in here).
/// struct Kms {
///     jwk: serde_json::Value,
/// }
///
/// impl Signer for Kms {
///     fn algorithm(&self) -> Algorithm {
///         Algorithm::ES256
///     }
///     fn public_jwk(&self) -> &serde_json::Value {
///         &self.jwk
///     }
///     fn key_id(&self) -> Option<&str> {
///         Some("kms-key-1")
///     }
///     fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
///         Box::pin(async move {
///             let _ = message; // POST it to the service, return its signature bytes
///             Err(Error::Signer("the service is a stand-in".into()))
///         })
///     }
/// }
/// ```
pub trait Signer: Send + Sync + 'static {
    /// The JWS algorithm the key signs with (not an HMAC one).
    fn algorithm(&self) -> Algorithm;

    /// The public key as a JWK (RFC 7517): `kty` `EC` (P-256, P-384), `OKP`
    /// (Ed25519) or `RSA`. Only its public members are used (a private member is
    /// refused): it goes in DPoP proofs and checks every signature.
    fn public_jwk(&self) -> &Value;

    /// The `kid` to send in the JWS header, if any.
    fn key_id(&self) -> Option<&str> {
        None
    }

    /// The signature of `message`, in JWS form (see the trait's documentation).
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>>;
}

impl<S: Signer + ?Sized> Signer for Arc<S> {
    fn algorithm(&self) -> Algorithm {
        (**self).algorithm()
    }
    fn public_jwk(&self) -> &Value {
        (**self).public_jwk()
    }
    fn key_id(&self) -> Option<&str> {
        (**self).key_id()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        (**self).sign(message)
    }
}

impl<S: Signer + ?Sized> Signer for Box<S> {
    fn algorithm(&self) -> Algorithm {
        (**self).algorithm()
    }
    fn public_jwk(&self) -> &Value {
        (**self).public_jwk()
    }
    fn key_id(&self) -> Option<&str> {
        (**self).key_id()
    }
    fn sign<'a>(&'a self, message: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, Error>> {
        (**self).sign(message)
    }
}

/// A [`Signer`] checked once when it is given (its algorithm and public key agree)
/// and on every signature (length, then the signature itself), under a deadline.
pub(crate) struct RemoteKey {
    signer: Arc<dyn Signer>,
    alg: Algorithm,
    /// The public members only, in RFC 7638 order (DPoP proofs carry it).
    #[cfg_attr(not(feature = "dpop"), allow(dead_code))]
    jwk: Value,
    verifying: DecodingKey,
    signature_len: usize,
    deadline: Duration,
}

impl RemoteKey {
    /// # Errors
    /// [`Error::Configuration`] for an HMAC algorithm, a JWK that is not the public
    /// key of that algorithm, a JWK with private members, or a deadline of zero or
    /// over [`MAX_SIGNER_DEADLINE`].
    pub(crate) fn new(signer: Arc<dyn Signer>, deadline: Duration) -> Result<Self, Error> {
        let alg = signer.algorithm();
        if deadline.is_zero() {
            return Err(Error::Configuration(
                "the signer's deadline must be above zero".into(),
            ));
        }
        if deadline > MAX_SIGNER_DEADLINE {
            return Err(Error::Configuration(format!(
                "the signer's deadline must be at most {MAX_SIGNER_DEADLINE:?}: a JWT \
                 signed later would be stale on arrival (its iat is set before signing)"
            )));
        }
        let (jwk, signature_len) = public_members(alg, signer.public_jwk())?;
        let parsed: Jwk = serde_json::from_value(jwk.clone())
            .map_err(|_| Error::Configuration("the signer's public JWK is not usable".into()))?;
        let verifying = DecodingKey::from_jwk(&parsed)
            .map_err(|_| Error::Configuration("the signer's public JWK is not usable".into()))?;
        Ok(RemoteKey {
            signer,
            alg,
            jwk,
            verifying,
            signature_len,
            deadline,
        })
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.alg
    }

    pub(crate) fn key_id(&self) -> Option<&str> {
        self.signer.key_id()
    }

    /// The public JWK: only its public members.
    #[cfg_attr(not(feature = "dpop"), allow(dead_code))]
    pub(crate) fn public_jwk(&self) -> &Value {
        &self.jwk
    }

    /// The signature of `message`, base64url, checked against the public key.
    ///
    /// # Errors
    /// [`Error::SignerTimeout`] past the deadline; the signer's own error; an
    /// [`Error::Signer`] for a signature of the wrong length or one the public key
    /// does not verify. No byte of the signer's answer is quoted.
    pub(crate) async fn sign_b64(&self, message: &[u8]) -> Result<String, Error> {
        // A panic in the signer (in `sign` or in its future) is the signer's bug: an
        // error of this signature, not an unwinding through the caller's request.
        let signing = AssertUnwindSafe(async { self.signer.sign(message).await }).catch_unwind();
        // The deadline needs Tokio's timer; another executor (no runtime here) awaits
        // the signer unbounded rather than panic, as the crate's other waits do.
        let signed = if tokio::runtime::Handle::try_current().is_ok() {
            tokio::time::timeout(self.deadline, signing)
                .await
                .map_err(|_| Error::SignerTimeout(self.deadline))?
        } else {
            signing.await
        };
        let signature = signed.map_err(|_| Error::Signer("the signer panicked".into()))??;
        if signature.len() != self.signature_len {
            return Err(Error::Signer(format!(
                "the signer answered {} bytes, not the {} of a {:?} signature",
                signature.len(),
                self.signature_len,
                self.alg
            )));
        }
        let encoded = URL_SAFE_NO_PAD.encode(&signature);
        match jsonwebtoken::crypto::verify(&encoded, message, &self.verifying, self.alg) {
            Ok(true) => Ok(encoded),
            _ => Err(Error::Signer(
                "the signature does not verify with the signer's public key".into(),
            )),
        }
    }

    /// The raw signature bytes, checked.
    #[cfg_attr(not(feature = "dpop"), allow(dead_code))]
    pub(crate) async fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        let encoded = self.sign_b64(message).await?;
        URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| Error::Signer("unreachable: our own base64url".into()))
    }
}

impl fmt::Debug for RemoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteKey")
            .field("alg", &self.alg)
            .field("kid", &self.signer.key_id())
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// The public members of `jwk` for `alg` (RFC 7638's required members, in its
/// order), and the length of a signature by it.
fn public_members(alg: Algorithm, jwk: &Value) -> Result<(Value, usize), Error> {
    let text = |name: &str| -> Result<&str, Error> {
        jwk.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Configuration(format!("the signer's public JWK has no {name}")))
    };
    let bytes = |name: &str| -> Result<Vec<u8>, Error> {
        URL_SAFE_NO_PAD
            .decode(text(name)?.trim_end_matches('='))
            .map_err(|_| {
                Error::Configuration(format!("the signer's public JWK's {name} is not base64url"))
            })
    };
    if ["d", "p", "q", "dp", "dq", "qi", "oth", "k"]
        .iter()
        .any(|m| jwk.get(m).is_some())
    {
        return Err(Error::Configuration(
            "the signer's public JWK holds private members: give the public key only".into(),
        ));
    }
    let kty = text("kty")?;
    let wrong = || {
        Error::Configuration(format!(
            "the signer's public JWK (kty {kty:?}) is not a key for {alg:?}"
        ))
    };
    let ec = |crv: &str, size: usize| -> Result<(Value, usize), Error> {
        if kty != "EC" || text("crv")? != crv {
            return Err(wrong());
        }
        let (x, y) = (bytes("x")?, bytes("y")?);
        if x.len() != size
            || y.len() != size
            || !crate::crypto::keys::ec_point_on_curve(size == 48, &x, &y)
        {
            return Err(Error::Configuration(format!(
                "the signer's public JWK is not a {crv} point"
            )));
        }
        Ok((
            json!({ "crv": crv, "kty": "EC", "x": text("x")?, "y": text("y")? }),
            2 * size,
        ))
    };
    match alg {
        Algorithm::ES256 => ec("P-256", 32),
        Algorithm::ES384 => ec("P-384", 48),
        Algorithm::EdDSA => {
            if kty != "OKP" || text("crv")? != "Ed25519" {
                return Err(wrong());
            }
            if bytes("x")?.len() != 32 {
                return Err(Error::Configuration(
                    "the signer's public JWK is not an Ed25519 key".into(),
                ));
            }
            Ok((
                json!({ "crv": "Ed25519", "kty": "OKP", "x": text("x")? }),
                64,
            ))
        }
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => {
            if kty != "RSA" {
                return Err(wrong());
            }
            // Base64urlUInt (RFC 7518 §2): the shortest form, no leading zero byte;
            // a verifier refuses the key otherwise, and the thumbprint would be one
            // no other party computes.
            let n = bytes("n")?;
            if n.first() == Some(&0) {
                return Err(Error::Configuration(
                    "the signer's RSA modulus n has a leading zero byte (RFC 7518 §2)".into(),
                ));
            }
            if n.len() < 256 {
                return Err(Error::Configuration(
                    "the signer's RSA key is under 2048 bits".into(),
                ));
            }
            let e = bytes("e")?;
            // RFC 8017 §3.1: an odd exponent of 3 or more.
            let usable = match e.as_slice() {
                [] | [0, ..] => false,
                [only] => *only >= 3 && only % 2 == 1,
                [.., last] => last % 2 == 1,
            };
            if !usable {
                return Err(Error::Configuration(
                    "the signer's RSA exponent e is not an odd number of 3 or more in its shortest form"
                        .into(),
                ));
            }
            Ok((
                json!({ "e": text("e")?, "kty": "RSA", "n": text("n")? }),
                n.len(),
            ))
        }
        _ => Err(Error::Configuration(format!(
            "a signer signs with an asymmetric algorithm, not {alg:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_jwk_must_fit_its_algorithm_and_hold_no_private_member() {
        let ec: Value = serde_json::from_str(
            &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec256.jwk"))
                .unwrap(),
        )
        .unwrap();
        assert!(public_members(Algorithm::ES256, &ec).is_err(), "it has d");
        let mut public = ec.clone();
        public.as_object_mut().unwrap().remove("d");
        let (members, len) = public_members(Algorithm::ES256, &public).unwrap();
        assert_eq!(len, 64);
        assert!(members.get("d").is_none());
        assert!(public_members(Algorithm::ES384, &public).is_err());
        assert!(public_members(Algorithm::RS256, &public).is_err());
        assert!(public_members(Algorithm::HS256, &public).is_err());
        public["x"] = "AAAA".into();
        assert!(public_members(Algorithm::ES256, &public).is_err());
    }
}
