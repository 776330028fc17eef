//! aws-lc-rs: the default backend.

#[cfg(feature = "jwt")]
use aws_lc_rs::hmac;
use aws_lc_rs::{aead, digest, rand};

use super::NoRandomness;

/// SHA-256 of `bytes` (cache keys, `ath`, thumbprints, PKCE): on the CPU's SHA or
/// AVX2 instructions where it has them.
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// SHA-384 or SHA-512 (`bits`) of `bytes`: an ID token's `at_hash` and `c_hash`
/// under a 384- or 512-bit algorithm (OIDC Core §3.1.3.6).
#[cfg(feature = "jwks")]
pub(crate) fn sha2_long(bits: u16, bytes: &[u8]) -> Vec<u8> {
    let algorithm = if bits == 384 {
        &digest::SHA384
    } else {
        &digest::SHA512
    };
    digest::digest(algorithm, bytes).as_ref().to_vec()
}

/// Fills `buf` from the operating system's randomness (through aws-lc's DRBG,
/// seeded by it).
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), NoRandomness> {
    rand::fill(buf).map_err(|_| NoRandomness)
}

/// An AES-256-GCM key (the tokens at rest: [`AtRestKey`](crate::client::AtRestKey)).
/// aws-lc clears the key schedule when it is dropped.
pub(crate) struct Aes256Gcm(aead::LessSafeKey);

impl Aes256Gcm {
    /// The key of these 32 bytes.
    pub(crate) fn new(key: &[u8; 32]) -> Option<Self> {
        let key = aead::UnboundKey::new(&aead::AES_256_GCM, key).ok()?;
        Some(Aes256Gcm(aead::LessSafeKey::new(key)))
    }

    /// Encrypts `in_out` in place and appends the 16-byte tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut Vec<u8>) -> bool {
        let nonce = aead::Nonce::assume_unique_for_key(*nonce);
        self.0
            .seal_in_place_append_tag(nonce, aead::Aad::from(aad), in_out)
            .is_ok()
    }

    /// Checks the tag at the end of `in_out` and decrypts it in place, leaving the
    /// plaintext; `false` (and `in_out` unusable) when it does not authenticate.
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut Vec<u8>) -> bool {
        let nonce = aead::Nonce::assume_unique_for_key(*nonce);
        match self.0.open_in_place(nonce, aead::Aad::from(aad), in_out) {
            Ok(plain) => {
                let len = plain.len();
                in_out.truncate(len);
                true
            }
            Err(_) => false,
        }
    }
}

/// An HMAC key with the secret's inner and outer blocks already hashed: keying
/// costs two hash blocks, paid once.
#[cfg(feature = "jwt")]
pub(crate) struct HmacKey(hmac::Key);

#[cfg(feature = "jwt")]
impl HmacKey {
    /// HMAC-SHA-256 keyed with `secret`.
    pub(crate) fn sha256(secret: &[u8]) -> Option<Self> {
        Some(HmacKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }
    /// HMAC-SHA-384 keyed with `secret`.
    pub(crate) fn sha384(secret: &[u8]) -> Option<Self> {
        Some(HmacKey(hmac::Key::new(hmac::HMAC_SHA384, secret)))
    }
    /// HMAC-SHA-512 keyed with `secret`.
    pub(crate) fn sha512(secret: &[u8]) -> Option<Self> {
        Some(HmacKey(hmac::Key::new(hmac::HMAC_SHA512, secret)))
    }

    /// Whether `tag` is `message`'s HMAC, compared in constant time.
    pub(crate) fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        hmac::verify(&self.0, message, tag).is_ok()
    }

    /// The HMAC of the concatenation of `parts`.
    #[cfg(feature = "dpop")]
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.0);
        for part in parts {
            context.update(part);
        }
        context.sign().as_ref().to_vec()
    }
}

/// rustls's provider: aws-lc-rs's, named rather than the process default (an
/// application whose rustls also has ring enabled would have no default to pick).
#[cfg(any(feature = "rustls", feature = "redis-tls"))]
pub(crate) fn tls_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::aws_lc_rs::default_provider()
}

// DPoP keys (feature `dpop`) read PKCS#8 and make keys; assertions only read JWKs.
#[cfg(feature = "jwt")]
#[cfg_attr(not(feature = "dpop"), allow(dead_code))]
pub(crate) mod keys {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::signature::{
        EcdsaKeyPair, EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair as _,
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    use aws_lc_rs::{agreement, rsa};
    use zeroize::Zeroizing;

    use super::super::{PrivateKey, PublicKey, RsaComponents};

    /// Whether (`x`, `y`), big-endian, is a point of P-256 (P-384 when `p384`): a
    /// remote signer's public JWK is checked with it when it is given.
    pub(crate) fn ec_point_on_curve(p384: bool, x: &[u8], y: &[u8]) -> bool {
        use aws_lc_rs::signature::{
            ParsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED,
        };
        let point = [&[0x04][..], x, y].concat();
        let alg = if p384 {
            &ECDSA_P384_SHA384_FIXED
        } else {
            &ECDSA_P256_SHA256_FIXED
        };
        ParsedPublicKey::new(alg, point).is_ok()
    }

    fn zeroizing(der: impl AsRef<[u8]>) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(der.as_ref().to_vec())
    }

    fn ec(alg: &'static EcdsaSigningAlgorithm, pair: &EcdsaKeyPair) -> Option<PrivateKey> {
        let pkcs8 = zeroizing(pair.to_pkcs8v1().ok()?);
        let point = pair.public_key().as_ref();
        let public = if std::ptr::eq(alg, &ECDSA_P256_SHA256_FIXED_SIGNING) {
            // Uncompressed: 0x04, x, y.
            if point.len() != 65 {
                return None;
            }
            PublicKey::P256 {
                x: point[1..33].to_vec(),
                y: point[33..].to_vec(),
            }
        } else {
            PublicKey::P384
        };
        Some(PrivateKey { pkcs8, public })
    }

    fn ec_from_scalar(
        curve: &'static agreement::Algorithm,
        alg: &'static EcdsaSigningAlgorithm,
        d: &[u8],
    ) -> Option<PrivateKey> {
        // aws-lc checks 0 < d < the order; PKCS#8 is the way into a signing key.
        let secret = agreement::PrivateKey::from_private_key(curve, d).ok()?;
        let der: Pkcs8V1Der<'static> = secret.as_der().ok()?;
        let pair = EcdsaKeyPair::from_pkcs8(alg, der.as_ref()).ok()?;
        ec(alg, &pair)
    }

    /// A fresh P-256 key from the operating system's randomness.
    pub(crate) fn p256_generate() -> Option<PrivateKey> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).ok()?;
        ec(&ECDSA_P256_SHA256_FIXED_SIGNING, &pair)
    }

    /// The P-256 key of the 32-byte big-endian scalar `d`.
    pub(crate) fn p256_from_scalar(d: &[u8]) -> Option<PrivateKey> {
        ec_from_scalar(&agreement::ECDH_P256, &ECDSA_P256_SHA256_FIXED_SIGNING, d)
    }

    /// The P-384 key of the 48-byte big-endian scalar `d`.
    pub(crate) fn p384_from_scalar(d: &[u8]) -> Option<PrivateKey> {
        ec_from_scalar(&agreement::ECDH_P384, &ECDSA_P384_SHA384_FIXED_SIGNING, d)
    }

    /// The P-256 key in `der` (PKCS#8), re-encoded.
    pub(crate) fn p256_from_pkcs8(der: &[u8]) -> Option<PrivateKey> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der).ok()?;
        ec(&ECDSA_P256_SHA256_FIXED_SIGNING, &pair)
    }

    fn ed25519(pair: &Ed25519KeyPair) -> Option<PrivateKey> {
        Some(PrivateKey {
            pkcs8: zeroizing(pair.to_pkcs8v1().ok()?),
            public: PublicKey::Ed25519 {
                x: pair.public_key().as_ref().to_vec(),
            },
        })
    }

    /// The Ed25519 key of the 32-byte seed `d`.
    pub(crate) fn ed25519_from_seed(d: &[u8]) -> Option<PrivateKey> {
        ed25519(&Ed25519KeyPair::from_seed_unchecked(d).ok()?)
    }

    /// The Ed25519 key in `der` (PKCS#8 v1 or v2), re-encoded.
    pub(crate) fn ed25519_from_pkcs8(der: &[u8]) -> Option<PrivateKey> {
        ed25519(&Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).ok()?)
    }

    fn rsa(pair: &rsa::KeyPair, pkcs8: Zeroizing<Vec<u8>>) -> PrivateKey {
        let public = pair.public_key();
        PrivateKey {
            pkcs8,
            public: PublicKey::Rsa {
                n: public.modulus().big_endian_without_leading_zero().to_vec(),
                e: public.exponent().big_endian_without_leading_zero().to_vec(),
            },
        }
    }

    /// The RSA key in `der` (PKCS#8), as it is.
    pub(crate) fn rsa_from_pkcs8(der: &[u8]) -> Option<PrivateKey> {
        let pair = rsa::KeyPair::from_pkcs8(der).ok()?;
        Some(rsa(&pair, zeroizing(der)))
    }

    /// The RSA key of a JWK's members, checked for consistency (`n = p·q`, the CRT
    /// values), as PKCS#8.
    pub(crate) fn rsa_from_components(c: &RsaComponents) -> Result<PrivateKey, String> {
        // No leading zeros on the public members (aws-lc-rs's rule; a JWK has none).
        let trim = |v: &[u8]| v[v.iter().position(|b| *b != 0).unwrap_or(v.len())..].to_vec();
        let components = rsa::KeyPairComponents {
            public_key: rsa::PublicKeyComponents {
                n: trim(&c.n),
                e: trim(&c.e),
            },
            d: c.d.as_slice(),
            p: c.p.as_slice(),
            q: c.q.as_slice(),
            dP: c.dp.as_slice(),
            dQ: c.dq.as_slice(),
            qInv: c.qi.as_slice(),
        };
        let pair = rsa::KeyPair::from_components(&components).map_err(|e| e.to_string())?;
        let der: Pkcs8V1Der<'static> = pair.as_der().map_err(|e| e.to_string())?;
        Ok(rsa(&pair, zeroizing(der.as_ref())))
    }
}
