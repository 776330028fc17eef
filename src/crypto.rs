//! The crate's one crypto implementation, chosen by a cfg (Cargo.toml): aws-lc-rs by
//! default, RustCrypto with `--cfg tower_bearer_rust_crypto`. Digests, HMAC,
//! AES-256-GCM (the tokens at rest), the operating system's randomness, the client's
//! private keys (their kind, their public half, JWK components into PKCS#8) and
//! rustls's provider go through here, so the rest of the crate does not care which.
//! JWT signatures themselves go through jsonwebtoken, whose backend the same cfg
//! selects.

#[cfg(not(tower_bearer_rust_crypto))]
#[path = "crypto/aws_lc.rs"]
mod backend;
#[cfg(tower_bearer_rust_crypto)]
#[path = "crypto/rust_crypto.rs"]
mod backend;

#[cfg(feature = "jwks")]
pub(crate) use backend::sha2_long;
#[cfg(any(feature = "rustls", feature = "redis-tls"))]
pub(crate) use backend::tls_provider;
#[cfg(feature = "jwt")]
pub(crate) use backend::HmacKey;
pub(crate) use backend::{fill_random, sha256, Aes256Gcm};

/// The operating system gave no randomness.
#[derive(Debug)]
pub(crate) struct NoRandomness;

impl std::fmt::Display for NoRandomness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the operating system gave no random bytes")
    }
}

/// A private key: PKCS#8 DER (zeroized when dropped) and its public half.
#[cfg(feature = "jwt")]
#[cfg_attr(not(feature = "dpop"), allow(dead_code))]
pub(crate) struct PrivateKey {
    pub(crate) pkcs8: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) public: PublicKey,
}

/// The public half of a [`PrivateKey`], as a JWK carries it (big-endian, no sign
/// byte).
#[cfg(feature = "jwt")]
#[cfg_attr(not(feature = "dpop"), allow(dead_code))]
pub(crate) enum PublicKey {
    /// An uncompressed point's coordinates, 32 bytes each.
    P256 { x: Vec<u8>, y: Vec<u8> },
    /// A P-384 key (only assertions sign with one: no public half needed).
    P384,
    /// The 32-byte public key.
    Ed25519 { x: Vec<u8> },
    /// Modulus and public exponent, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// The modulus length in bits of the RSA key in `der` (PKCS#8), read from the DER
/// alone: aws-lc refuses keys under 2048 bits without saying their size.
#[cfg(feature = "dpop")]
pub(crate) fn rsa_pkcs8_bits(der: &[u8]) -> Option<usize> {
    /// The contents of the DER element at the start of `input` if its tag is `tag`,
    /// and what follows it.
    fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&t, rest) = input.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        if t != tag {
            return None;
        }
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let (bytes, after) = rest.split_at(count);
            rest = after;
            bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b))
        };
        (rest.len() >= len).then(|| rest.split_at(len))
    }
    const SEQUENCE: u8 = 0x30;
    const INTEGER: u8 = 0x02;
    const OCTET_STRING: u8 = 0x04;
    // rsaEncryption, 1.2.840.113549.1.1.1.
    const RSA: &[u8] = &[
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    let (info, _) = element(der, SEQUENCE)?;
    let (_, info) = element(info, INTEGER)?;
    let (algorithm, info) = element(info, SEQUENCE)?;
    if !algorithm.starts_with(RSA) {
        return None;
    }
    let (private, _) = element(info, OCTET_STRING)?;
    let (key, _) = element(private, SEQUENCE)?;
    let (_, key) = element(key, INTEGER)?;
    let (n, _) = element(key, INTEGER)?;
    let first = n.iter().position(|b| *b != 0)?;
    Some((n.len() - first) * 8 - n[first].leading_zeros() as usize)
}

/// The members of a private RSA JWK (RFC 7518 §6.3.2), big-endian.
#[cfg(feature = "jwt")]
pub(crate) struct RsaComponents {
    pub(crate) n: Vec<u8>,
    pub(crate) e: Vec<u8>,
    pub(crate) d: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) p: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) q: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) dp: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) dq: zeroize::Zeroizing<Vec<u8>>,
    pub(crate) qi: zeroize::Zeroizing<Vec<u8>>,
}

/// The private-key operations: each reads or makes one kind of key, answering
/// `None` (or an error) for anything else.
#[cfg(feature = "jwt")]
pub(crate) mod keys {
    pub(crate) use super::backend::keys::{
        ec_point_on_curve, ed25519_from_seed, p256_from_scalar, p384_from_scalar,
        rsa_from_components,
    };
    #[cfg(feature = "dpop")]
    pub(crate) use super::backend::keys::{
        ed25519_from_pkcs8, p256_from_pkcs8, p256_generate, rsa_from_pkcs8,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_and_randomness() {
        // FIPS 180-2's "abc".
        let abc: String = sha256(b"abc").iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            abc,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        fill_random(&mut a).unwrap();
        fill_random(&mut b).unwrap();
        assert_ne!(a, b);
    }

    /// Test case 16 of the GCM specification (McGrew and Viega): both backends
    /// seal and open the same bytes, so a file sealed under one opens under the
    /// other.
    #[test]
    fn aes_256_gcm_of_the_gcm_specification_case_16() {
        fn bytes(hex: &str) -> Vec<u8> {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        }
        let key: [u8; 32] =
            bytes("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308")
                .try_into()
                .unwrap();
        let nonce: [u8; 12] = bytes("cafebabefacedbaddecaf888").try_into().unwrap();
        let aad = bytes("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let plain = bytes(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let sealed = bytes(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
             76fc6ece0f4e1768cddf8853bb2d551b",
        );
        let cipher = Aes256Gcm::new(&key).unwrap();
        let mut buf = plain.clone();
        assert!(cipher.seal(&nonce, &aad, &mut buf));
        assert_eq!(buf, sealed);
        assert!(cipher.open(&nonce, &aad, &mut buf));
        assert_eq!(buf, plain);
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert!(!cipher.open(&nonce, &aad, &mut tampered));
        let mut short = sealed[..10].to_vec();
        assert!(!cipher.open(&nonce, &aad, &mut short));
    }

    #[cfg(feature = "dpop")]
    #[test]
    fn hmac_sha256_of_rfc_4231_case_2() {
        let key = HmacKey::sha256(b"Jefe").unwrap();
        let tag = key.sign(&[b"what do ya want ", b"for nothing?"]);
        let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(key.verify(b"what do ya want for nothing?", &tag));
        assert!(!key.verify(b"what do ya want for nothing!", &tag));
    }

    #[cfg(feature = "dpop")]
    #[test]
    fn keys_round_trip_through_pkcs8() {
        let key = keys::p256_generate().unwrap();
        let again = keys::p256_from_pkcs8(&key.pkcs8).unwrap();
        let (PublicKey::P256 { x, y }, PublicKey::P256 { x: x2, y: y2 }) =
            (&key.public, &again.public)
        else {
            panic!("not P-256")
        };
        assert_eq!((x.len(), y.len()), (32, 32));
        assert_eq!((x, y), (x2, y2));
        assert!(keys::ed25519_from_pkcs8(&key.pkcs8).is_none());
        assert!(keys::rsa_from_pkcs8(&key.pkcs8).is_none());
        assert!(keys::p256_from_scalar(&[0u8; 32]).is_none(), "zero");
        assert!(
            keys::p256_from_scalar(&[0xffu8; 32]).is_none(),
            "over the order"
        );
        assert!(keys::p256_from_scalar(&[1u8; 31]).is_none(), "short");

        let ed = keys::ed25519_from_seed(&[7u8; 32]).unwrap();
        assert!(matches!(&ed.public, PublicKey::Ed25519 { x } if x.len() == 32));
        assert!(keys::ed25519_from_pkcs8(&ed.pkcs8).is_some());
        assert!(keys::p256_from_pkcs8(&ed.pkcs8).is_none());
    }
}
