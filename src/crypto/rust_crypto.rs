//! RustCrypto: the pure-Rust backend (`--cfg tower_bearer_rust_crypto`).

use super::NoRandomness;

/// SHA-256 of `bytes` (cache keys, `ath`, thumbprints, PKCE).
pub(crate) fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// SHA-384 or SHA-512 (`bits`) of `bytes`: an ID token's `at_hash` and `c_hash`
/// under a 384- or 512-bit algorithm (OIDC Core §3.1.3.6).
#[cfg(feature = "jwks")]
pub(crate) fn sha2_long(bits: u16, bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    if bits == 384 {
        sha2::Sha384::digest(bytes).to_vec()
    } else {
        sha2::Sha512::digest(bytes).to_vec()
    }
}

/// Fills `buf` from the operating system's randomness.
pub(crate) fn fill_random(buf: &mut [u8]) -> Result<(), NoRandomness> {
    getrandom::getrandom(buf).map_err(|_| NoRandomness)
}

/// An AES-256-GCM key (the tokens at rest: [`AtRestKey`](crate::client::AtRestKey));
/// its key schedule is zeroized when it is dropped (aes-gcm's `zeroize`).
pub(crate) struct Aes256Gcm(aes_gcm::Aes256Gcm);

impl Aes256Gcm {
    /// The key of these 32 bytes.
    pub(crate) fn new(key: &[u8; 32]) -> Option<Self> {
        use aes_gcm::aead::KeyInit as _;
        aes_gcm::Aes256Gcm::new_from_slice(key).ok().map(Aes256Gcm)
    }

    /// Encrypts `in_out` in place and appends the 16-byte tag.
    pub(crate) fn seal(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut Vec<u8>) -> bool {
        use aes_gcm::aead::AeadInOut as _;
        let nonce = aes_gcm::Nonce::from(*nonce);
        self.0.encrypt_in_place(&nonce, aad, in_out).is_ok()
    }

    /// Checks the tag at the end of `in_out` and decrypts it in place, leaving the
    /// plaintext; `false` (and `in_out` unusable) when it does not authenticate.
    pub(crate) fn open(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut Vec<u8>) -> bool {
        use aes_gcm::aead::AeadInOut as _;
        let nonce = aes_gcm::Nonce::from(*nonce);
        self.0.decrypt_in_place(&nonce, aad, in_out).is_ok()
    }
}

/// An HMAC key with the secret's inner and outer blocks already hashed: keying
/// costs two hash blocks, paid once.
#[cfg(feature = "jwt")]
pub(crate) enum HmacKey {
    Sha256(hmac::Hmac<sha2::Sha256>),
    Sha384(hmac::Hmac<sha2::Sha384>),
    Sha512(hmac::Hmac<sha2::Sha512>),
}

#[cfg(feature = "jwt")]
impl HmacKey {
    /// HMAC-SHA-256 keyed with `secret`.
    pub(crate) fn sha256(secret: &[u8]) -> Option<Self> {
        hmac::Mac::new_from_slice(secret).ok().map(HmacKey::Sha256)
    }
    /// HMAC-SHA-384 keyed with `secret`.
    pub(crate) fn sha384(secret: &[u8]) -> Option<Self> {
        hmac::Mac::new_from_slice(secret).ok().map(HmacKey::Sha384)
    }
    /// HMAC-SHA-512 keyed with `secret`.
    pub(crate) fn sha512(secret: &[u8]) -> Option<Self> {
        hmac::Mac::new_from_slice(secret).ok().map(HmacKey::Sha512)
    }

    /// Whether `tag` is `message`'s HMAC, compared in constant time.
    pub(crate) fn verify(&self, message: &[u8], tag: &[u8]) -> bool {
        fn check<M: hmac::Mac + Clone>(keyed: &M, message: &[u8], tag: &[u8]) -> bool {
            let mut mac = keyed.clone();
            mac.update(message);
            mac.verify_slice(tag).is_ok()
        }
        match self {
            HmacKey::Sha256(k) => check(k, message, tag),
            HmacKey::Sha384(k) => check(k, message, tag),
            HmacKey::Sha512(k) => check(k, message, tag),
        }
    }

    /// The HMAC of the concatenation of `parts`.
    #[cfg(feature = "dpop")]
    pub(crate) fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        fn tag<M: hmac::Mac + Clone>(keyed: &M, parts: &[&[u8]]) -> Vec<u8> {
            let mut mac = keyed.clone();
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            HmacKey::Sha256(k) => tag(k, parts),
            HmacKey::Sha384(k) => tag(k, parts),
            HmacKey::Sha512(k) => tag(k, parts),
        }
    }
}

/// rustls's provider: ring (rustls has no production pure-Rust provider; ring
/// needs no cmake and builds where aws-lc does not).
#[cfg(any(feature = "rustls", feature = "redis-tls"))]
pub(crate) fn tls_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

// DPoP keys (feature `dpop`) read PKCS#8 and make keys; assertions only read JWKs.
#[cfg(feature = "jwt")]
#[cfg_attr(not(feature = "dpop"), allow(dead_code))]
pub(crate) mod keys {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    use pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
    use zeroize::Zeroizing;

    use super::super::{PrivateKey, PublicKey, RsaComponents};

    /// Whether (`x`, `y`), big-endian, is a point of P-256 (P-384 when `p384`): a
    /// remote signer's public JWK is checked with it when it is given.
    pub(crate) fn ec_point_on_curve(p384: bool, x: &[u8], y: &[u8]) -> bool {
        let point = [&[0x04][..], x, y].concat();
        if p384 {
            p384::PublicKey::from_sec1_bytes(&point).is_ok()
        } else {
            p256::PublicKey::from_sec1_bytes(&point).is_ok()
        }
    }

    fn p256(secret: &p256::SecretKey) -> Option<PrivateKey> {
        let pkcs8 = Zeroizing::new(secret.to_pkcs8_der().ok()?.as_bytes().to_vec());
        let point = secret.public_key().to_encoded_point(false);
        Some(PrivateKey {
            pkcs8,
            public: PublicKey::P256 {
                x: point.x()?.to_vec(),
                y: point.y()?.to_vec(),
            },
        })
    }

    /// A fresh P-256 key from the operating system's randomness.
    pub(crate) fn p256_generate() -> Option<PrivateKey> {
        let mut secret = Zeroizing::new([0u8; 32]);
        // A random 256-bit string is a valid P-256 scalar but with probability
        // about 2^-32; try again in that case.
        for _ in 0..8 {
            getrandom::getrandom(&mut secret[..]).ok()?;
            if let Some(key) = p256_from_scalar(&secret[..]) {
                return Some(key);
            }
        }
        None
    }

    /// The P-256 key of the 32-byte big-endian scalar `d`.
    pub(crate) fn p256_from_scalar(d: &[u8]) -> Option<PrivateKey> {
        if d.len() != 32 {
            return None;
        }
        p256(&p256::SecretKey::from_slice(d).ok()?)
    }

    /// The P-384 key of the 48-byte big-endian scalar `d`.
    pub(crate) fn p384_from_scalar(d: &[u8]) -> Option<PrivateKey> {
        if d.len() != 48 {
            return None;
        }
        let secret = p384::SecretKey::from_slice(d).ok()?;
        Some(PrivateKey {
            pkcs8: Zeroizing::new(secret.to_pkcs8_der().ok()?.as_bytes().to_vec()),
            public: PublicKey::P384,
        })
    }

    /// The P-256 key in `der` (PKCS#8), re-encoded.
    pub(crate) fn p256_from_pkcs8(der: &[u8]) -> Option<PrivateKey> {
        p256(&p256::SecretKey::from_pkcs8_der(der).ok()?)
    }

    fn ed25519(signing: &ed25519_dalek::SigningKey) -> Option<PrivateKey> {
        Some(PrivateKey {
            pkcs8: Zeroizing::new(signing.to_pkcs8_der().ok()?.as_bytes().to_vec()),
            public: PublicKey::Ed25519 {
                x: signing.verifying_key().as_bytes().to_vec(),
            },
        })
    }

    /// The Ed25519 key of the 32-byte seed `d`.
    pub(crate) fn ed25519_from_seed(d: &[u8]) -> Option<PrivateKey> {
        let d: &[u8; 32] = d.try_into().ok()?;
        ed25519(&ed25519_dalek::SigningKey::from_bytes(d))
    }

    /// The Ed25519 key in `der` (PKCS#8 v1 or v2), re-encoded.
    pub(crate) fn ed25519_from_pkcs8(der: &[u8]) -> Option<PrivateKey> {
        ed25519(&ed25519_dalek::SigningKey::from_pkcs8_der(der).ok()?)
    }

    fn rsa(key: &rsa::RsaPrivateKey, pkcs8: Zeroizing<Vec<u8>>) -> PrivateKey {
        use rsa::traits::PublicKeyParts as _;
        PrivateKey {
            pkcs8,
            public: PublicKey::Rsa {
                n: key.n().to_bytes_be(),
                e: key.e().to_bytes_be(),
            },
        }
    }

    /// The RSA key in `der` (PKCS#8), as it is.
    pub(crate) fn rsa_from_pkcs8(der: &[u8]) -> Option<PrivateKey> {
        let key = rsa::RsaPrivateKey::from_pkcs8_der(der).ok()?;
        Some(rsa(&key, Zeroizing::new(der.to_vec())))
    }

    /// The RSA key of a JWK's members, checked for consistency (`n = p·q`, the CRT
    /// values), as PKCS#8.
    pub(crate) fn rsa_from_components(c: &RsaComponents) -> Result<PrivateKey, String> {
        use rsa::traits::PrivateKeyParts as _;
        let int = |v: &[u8]| rsa::BigUint::from_bytes_be(v);
        let key = rsa::RsaPrivateKey::from_components(
            int(&c.n),
            int(&c.e),
            int(&c.d),
            vec![int(&c.p), int(&c.q)],
        )
        .map_err(|e| e.to_string())?;
        key.validate().map_err(|e| e.to_string())?;
        // The CRT values the JWK gives must be the key's (aws-lc-rs checks them too).
        let consistent = key.dp() == Some(&int(&c.dp))
            && key.dq() == Some(&int(&c.dq))
            && key.crt_coefficient() == Some(int(&c.qi));
        if !consistent {
            return Err("the JWK's dp, dq or qi do not fit the key".into());
        }
        let der = key.to_pkcs8_der().map_err(|e| e.to_string())?;
        Ok(rsa(&key, Zeroizing::new(der.as_bytes().to_vec())))
    }
}
