//! Tokens at rest: [`AtRestKey`], the application's AES-256-GCM key with which
//! [`FileStore`](super::FileStore) and `RedisStore` encrypt what they store.
//!
//! What is secret (the whole [`StoredToken`](super::StoredToken): access and refresh
//! tokens, expiry, scope, and whatever a later version adds to it) is sealed; what a
//! store compares without the key (the lineage, the generation or version, a logout's
//! tombstone, the user and issuer, the key's id) stays readable, so the newer-only
//! compare under the file lock or in the Redis script is unchanged. The associated
//! data bind each ciphertext to the place it was written for (file: format version,
//! user, issuer and file name; Redis: the token's key) and to its lineage: moved to another
//! profile, or given another lineage, it does not open.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::Aes256Gcm;
use crate::Error;

/// The one algorithm written (the field exists so that another can be added).
const ALG: &str = "A256GCM";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// An AES-256-GCM key that [`FileStore::encrypt_with`](super::FileStore::encrypt_with)
/// and `RedisStore::encrypt_with` seal tokens with, named by an id of the
/// application's choosing (written beside each ciphertext, so that after a rotation
/// the store knows which key opens it).
///
/// The 32 bytes come from the application (a secret manager, a KMS data key, the
/// OS keychain): `openssl rand -base64 32` makes one. They are zeroized once the key
/// is built (the cipher keeps its own schedule, cleared when the last clone is
/// dropped), and `Debug` shows the id only.
///
/// ```
/// use tower_bearer::client::{AtRestKey, FileStore};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let current = AtRestKey::from_base64("2026-12", "q83vASNFZ4mrze8BI0VniavN7wEjRWeJq83vASNFZ4k=")?;
/// let previous = AtRestKey::from_hex("2026-06", &"ab".repeat(32))?;
/// let store = FileStore::at("/tmp/alice.json", "alice", "https://idp.example.com")
///     .encrypt_with(current)   // seals every token written
///     .decrypt_with(previous); // still opens what the old key sealed
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct AtRestKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    id: String,
    cipher: Aes256Gcm,
}

impl AtRestKey {
    /// The key of these 32 bytes, named `id` (1 to 64 letters, digits, `.`, `_`,
    /// `-`, `:`).
    ///
    /// # Errors
    /// [`Error::Configuration`] for another length or a bad id (the message never
    /// quotes the key).
    pub fn new(id: &str, bytes: &[u8]) -> Result<Self, Error> {
        check_id(id)?;
        let mut key: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::Configuration(format!(
                "the at-rest key {id:?} has {} bytes; AES-256-GCM takes 32",
                bytes.len()
            ))
        })?;
        let cipher = Aes256Gcm::new(&key);
        key.zeroize();
        let cipher = cipher.ok_or_else(|| {
            Error::Configuration(format!("the at-rest key {id:?} was refused by the cipher"))
        })?;
        Ok(AtRestKey {
            inner: Arc::new(KeyInner {
                id: id.to_owned(),
                cipher,
            }),
        })
    }

    /// The key whose 32 bytes `text` holds in base64 (standard or URL-safe, padded or
    /// not; surrounding whitespace ignored), as a configuration file or an
    /// environment variable gives it.
    ///
    /// # Errors
    /// As [`AtRestKey::new`], and for text that is not base64.
    pub fn from_base64(id: &str, text: &str) -> Result<Self, Error> {
        check_id(id)?;
        let mut clean: Zeroizing<String> = Zeroizing::new(
            text.trim()
                .trim_end_matches('=')
                .chars()
                .map(|c| match c {
                    '+' => '-',
                    '/' => '_',
                    c => c,
                })
                .collect(),
        );
        let bytes = URL_SAFE_NO_PAD.decode(clean.as_bytes()).map(Zeroizing::new);
        clean.zeroize();
        let bytes = bytes.map_err(|_| {
            Error::Configuration(format!("the at-rest key {id:?} is not valid base64"))
        })?;
        Self::new(id, &bytes)
    }

    /// The key whose 32 bytes `text` holds in hex (64 digits, either case;
    /// surrounding whitespace ignored).
    ///
    /// # Errors
    /// As [`AtRestKey::new`], and for text that is not 64 hex digits.
    pub fn from_hex(id: &str, text: &str) -> Result<Self, Error> {
        check_id(id)?;
        let text = text.trim().as_bytes();
        let bad = || Error::Configuration(format!("the at-rest key {id:?} is not 64 hex digits"));
        if text.len() != 64 {
            return Err(bad());
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        for (out, pair) in bytes.iter_mut().zip(text.chunks_exact(2)) {
            let digit = |c: u8| char::from(c).to_digit(16).ok_or_else(bad);
            // Both digits are < 16: the byte fits.
            *out = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).map_err(|_| bad())?;
        }
        Self::new(id, &bytes[..])
    }

    /// The key's id, written beside everything it seals.
    pub fn id(&self) -> &str {
        &self.inner.id
    }
}

fn check_id(id: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Configuration(format!(
            "the at-rest key id {id:?} must be 1 to 64 letters, digits, '.', '_', '-' or ':'"
        )))
    }
}

impl fmt::Debug for AtRestKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AtRestKey")
            .field("id", &self.inner.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The keys of a store: the current one seals every write (none: written in the
/// clear), all of them open.
#[derive(Clone, Default)]
pub(crate) struct Keyring {
    current: Option<AtRestKey>,
    old: Vec<AtRestKey>,
    /// A plain token is refused, not adopted (after a migration: a token planted in
    /// the clear by someone who can write the store but has not the key).
    sealed_only: bool,
}

/// A sealed token as it is written: the key's id, the lineage (both readable, both
/// bound to the ciphertext), the nonce and the ciphertext with its tag (base64url).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct Sealed {
    pub(crate) alg: String,
    pub(crate) kid: String,
    pub(crate) lineage: u64,
    pub(crate) nonce: String,
    pub(crate) ciphertext: String,
}

/// Why a sealed token did not open.
#[derive(Debug)]
pub(crate) enum Unsealed {
    /// The store was given no key at all.
    NoKey { kid: String },
    /// The store has no key of that id.
    UnknownKey { kid: String, have: Vec<String> },
    /// The key of that id did not authenticate it: another key under that id, or
    /// content altered or moved from another profile or lineage.
    Failed { kid: String },
    /// Not a sealed token whatever the key (bad base64, a short nonce or ciphertext,
    /// an unknown algorithm): damaged.
    Malformed(&'static str),
}

impl Unsealed {
    /// Whether the content is damaged whatever the key (a file may be set aside);
    /// otherwise the key is missing or wrong and the content is kept.
    pub(crate) fn is_malformed(&self) -> bool {
        matches!(self, Unsealed::Malformed(_))
    }

    /// What happened, about `what` (the file or the Redis key), and what to do;
    /// never quotes the content.
    pub(crate) fn describe(&self, what: &str) -> String {
        match self {
            Unsealed::NoKey { kid } => format!(
                "{what} is encrypted (key {kid:?}) and this store was given no key; \
                 give it that key (encrypt_with or decrypt_with)"
            ),
            Unsealed::UnknownKey { kid, have } => format!(
                "{what} is encrypted under key {kid:?}, which this store was not given \
                 (it has {have:?}); give it that key with decrypt_with"
            ),
            Unsealed::Failed { kid } => format!(
                "{what} does not decrypt with this store's key {kid:?}: the key is wrong \
                 (another key under the same id), or the content was altered or moved \
                 from another profile or lineage; it is left as it is"
            ),
            Unsealed::Malformed(why) => {
                format!("{what} holds a damaged encrypted token ({why})")
            }
        }
    }
}

impl Keyring {
    /// `key` seals from now on; the key it replaces, if any, still opens.
    pub(crate) fn with_current(mut self, key: AtRestKey) -> Self {
        if let Some(previous) = self.current.replace(key) {
            self.old.push(previous);
        }
        self
    }

    /// `key` opens what it sealed, and seals nothing.
    pub(crate) fn with_old(mut self, key: AtRestKey) -> Self {
        self.old.push(key);
        self
    }

    /// Plain tokens refused from now on.
    pub(crate) fn sealed_only(mut self) -> Self {
        self.sealed_only = true;
        self
    }

    /// Why a plain token read from `what` is refused, when this ring takes sealed
    /// ones only (the message never quotes the token).
    pub(crate) fn refuse_plain(&self, what: &str) -> Option<String> {
        self.sealed_only.then(|| {
            format!(
                "{what} holds a token in the clear, and this store takes sealed tokens only \
                 (require_sealed); refusing it (written by someone without the key?). \
                 Delete it to log in again"
            )
        })
    }

    /// The id of the key that seals, if any.
    pub(crate) fn current_id(&self) -> Option<&str> {
        self.current.as_ref().map(AtRestKey::id)
    }

    fn keys(&self) -> impl Iterator<Item = &AtRestKey> {
        self.current.iter().chain(&self.old)
    }

    #[cfg(any(feature = "redis", test))]
    /// Every id this ring opens, as `|a|b|` (`|` alone for none): what the Redis
    /// script checks an entry's key id against before writing over it.
    pub(crate) fn ids_for_script(&self) -> String {
        let mut out = String::from("|");
        for key in self.keys() {
            out.push_str(key.id());
            out.push('|');
        }
        out
    }

    /// The associated data: the place (`context`), the algorithm, the key's id and
    /// the lineage, as a JSON array (unambiguous whatever the strings hold).
    fn aad(context: &str, kid: &str, lineage: u64) -> Vec<u8> {
        serde_json::to_vec(&("tower-bearer at rest", context, ALG, kid, lineage))
            .unwrap_or_default()
    }

    /// `plaintext` sealed under the current key for `context` and `lineage`; `None`
    /// when there is no current key (written in the clear). `plaintext` is zeroized.
    pub(crate) fn seal(
        &self,
        context: &str,
        lineage: u64,
        mut plaintext: Vec<u8>,
    ) -> Result<Option<Sealed>, String> {
        let Some(key) = &self.current else {
            plaintext.zeroize();
            return Ok(None);
        };
        // Room for the tag: the buffer is encrypted in place, never copied.
        let mut buf = Zeroizing::new(Vec::with_capacity(plaintext.len() + TAG_LEN));
        buf.extend_from_slice(&plaintext);
        plaintext.zeroize();
        let mut nonce = [0u8; NONCE_LEN];
        crate::crypto::fill_random(&mut nonce).map_err(|e| e.to_string())?;
        let aad = Self::aad(context, key.id(), lineage);
        if !key.inner.cipher.seal(&nonce, &aad, &mut buf) {
            return Err("the cipher refused to encrypt".into());
        }
        Ok(Some(Sealed {
            alg: ALG.to_owned(),
            kid: key.id().to_owned(),
            lineage,
            nonce: URL_SAFE_NO_PAD.encode(nonce),
            ciphertext: URL_SAFE_NO_PAD.encode(&buf[..]),
        }))
    }

    /// The plaintext of `sealed`, written for `context`.
    pub(crate) fn open(
        &self,
        sealed: &Sealed,
        context: &str,
    ) -> Result<Zeroizing<Vec<u8>>, Unsealed> {
        if sealed.alg != ALG {
            return Err(Unsealed::Malformed("an unknown algorithm"));
        }
        let nonce: [u8; NONCE_LEN] = URL_SAFE_NO_PAD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(Unsealed::Malformed(
                "the nonce is not 12 bytes of base64url",
            ))?;
        let ciphertext = URL_SAFE_NO_PAD
            .decode(&sealed.ciphertext)
            .map_err(|_| Unsealed::Malformed("the ciphertext is not base64url"))?;
        if ciphertext.len() < TAG_LEN {
            return Err(Unsealed::Malformed(
                "the ciphertext is shorter than its tag",
            ));
        }
        let kid = &sealed.kid;
        let mut candidates = self.keys().filter(|k| k.id() == kid).peekable();
        if candidates.peek().is_none() {
            return Err(match self.current.is_none() && self.old.is_empty() {
                true => Unsealed::NoKey { kid: kid.clone() },
                false => Unsealed::UnknownKey {
                    kid: kid.clone(),
                    have: self.keys().map(|k| k.id().to_owned()).collect(),
                },
            });
        }
        let aad = Self::aad(context, kid, sealed.lineage);
        for key in candidates {
            let mut buf = Zeroizing::new(ciphertext.clone());
            if key.inner.cipher.open(&nonce, &aad, &mut buf) {
                return Ok(buf);
            }
        }
        Err(Unsealed::Failed { kid: kid.clone() })
    }
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current_id())
            .field(
                "old",
                &self.old.iter().map(AtRestKey::id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> AtRestKey {
        AtRestKey::new(id, &[byte; 32]).unwrap()
    }

    #[test]
    fn seals_and_opens_bound_to_context_and_lineage() {
        let ring = Keyring::default().with_current(key("k1", 1));
        let sealed = ring
            .seal("ctx", 7, b"secret-token".to_vec())
            .unwrap()
            .unwrap();
        assert_eq!(sealed.kid, "k1");
        assert!(!sealed.ciphertext.contains("secret"));
        assert_eq!(&ring.open(&sealed, "ctx").unwrap()[..], b"secret-token");
        // Another place, another lineage: refused.
        assert!(matches!(
            ring.open(&sealed, "other"),
            Err(Unsealed::Failed { .. })
        ));
        let mut moved = sealed.clone();
        moved.lineage = 8;
        assert!(matches!(
            ring.open(&moved, "ctx"),
            Err(Unsealed::Failed { .. })
        ));
        // A fresh nonce each time.
        let again = ring
            .seal("ctx", 7, b"secret-token".to_vec())
            .unwrap()
            .unwrap();
        assert_ne!(again.nonce, sealed.nonce);
        assert_ne!(again.ciphertext, sealed.ciphertext);
    }

    #[test]
    fn rotation_opens_old_and_seals_new() {
        let old = Keyring::default().with_current(key("k1", 1));
        let sealed = old.seal("c", 1, b"x".to_vec()).unwrap().unwrap();
        let ring = Keyring::default()
            .with_current(key("k2", 2))
            .with_old(key("k1", 1));
        assert_eq!(&ring.open(&sealed, "c").unwrap()[..], b"x");
        assert_eq!(ring.seal("c", 1, b"x".to_vec()).unwrap().unwrap().kid, "k2");
        assert_eq!(ring.ids_for_script(), "|k2|k1|");
        // Without it: unknown; with another key under its id: fails; with none: no key.
        let without = Keyring::default().with_current(key("k2", 2));
        assert!(matches!(
            without.open(&sealed, "c"),
            Err(Unsealed::UnknownKey { .. })
        ));
        let wrong = Keyring::default().with_current(key("k1", 9));
        assert!(matches!(
            wrong.open(&sealed, "c"),
            Err(Unsealed::Failed { .. })
        ));
        assert!(matches!(
            Keyring::default().open(&sealed, "c"),
            Err(Unsealed::NoKey { .. })
        ));
    }

    #[test]
    fn hostile_envelopes_are_errors_not_panics() {
        let ring = Keyring::default().with_current(key("k1", 1));
        let sealed = ring.seal("c", 1, b"token".to_vec()).unwrap().unwrap();
        let other = ring.seal("c", 1, b"token".to_vec()).unwrap().unwrap();
        let cases: Vec<(Sealed, bool)> = vec![
            // Truncated ciphertext: short of its tag, and a byte short.
            (
                Sealed {
                    ciphertext: sealed.ciphertext[..8].to_owned(),
                    ..sealed.clone()
                },
                true,
            ),
            (
                Sealed {
                    ciphertext: URL_SAFE_NO_PAD
                        .encode(&URL_SAFE_NO_PAD.decode(&sealed.ciphertext).unwrap()[1..]),
                    ..sealed.clone()
                },
                false,
            ),
            (
                Sealed {
                    ciphertext: "!!not base64!!".into(),
                    ..sealed.clone()
                },
                true,
            ),
            (
                Sealed {
                    nonce: "AAAA".into(),
                    ..sealed.clone()
                },
                true,
            ),
            (
                Sealed {
                    nonce: "%%".into(),
                    ..sealed.clone()
                },
                true,
            ),
            // The nonce of another sealing of the same token.
            (
                Sealed {
                    nonce: other.nonce.clone(),
                    ..sealed.clone()
                },
                false,
            ),
            (
                Sealed {
                    alg: "none".into(),
                    ..sealed.clone()
                },
                true,
            ),
            (
                Sealed {
                    ciphertext: String::new(),
                    nonce: String::new(),
                    ..sealed.clone()
                },
                true,
            ),
        ];
        for (i, (case, malformed)) in cases.iter().enumerate() {
            let err = ring.open(case, "c").expect_err(&format!("case {i} opened"));
            assert_eq!(err.is_malformed(), *malformed, "case {i}: {err:?}");
            assert!(!err.describe("x").contains("token\""), "case {i}");
        }
    }

    #[test]
    fn keys_parse_from_text_and_debug_shows_no_key() {
        let bytes: Vec<u8> = (0u8..32).collect();
        let hex: String = bytes.iter().map(|b| format!("{b:02X}")).collect();
        let std = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let ring = |k: AtRestKey| Keyring::default().with_current(k);
        let sealed = ring(AtRestKey::new("a", &bytes).unwrap())
            .seal("c", 1, b"t".to_vec())
            .unwrap()
            .unwrap();
        for k in [
            AtRestKey::from_hex("a", &hex).unwrap(),
            AtRestKey::from_hex("a", &hex.to_lowercase()).unwrap(),
            AtRestKey::from_base64("a", &std).unwrap(),
            AtRestKey::from_base64("a", &format!(" {} \n", URL_SAFE_NO_PAD.encode(&bytes)))
                .unwrap(),
        ] {
            assert_eq!(&ring(k).open(&sealed, "c").unwrap()[..], b"t");
        }
        for bad in [
            AtRestKey::new("a", &[0; 16]),
            AtRestKey::from_hex("a", &hex[..62]),
            AtRestKey::from_hex("a", &format!("zz{}", &hex[2..])),
            AtRestKey::from_base64("a", "***"),
            AtRestKey::from_base64("a", &URL_SAFE_NO_PAD.encode([1u8; 31])),
            AtRestKey::new("", &bytes),
            AtRestKey::new("a b", &bytes),
        ] {
            let Err(Error::Configuration(message)) = bad else {
                panic!("accepted: {bad:?}")
            };
            assert!(!message.contains(&hex[..16]) && !message.contains(&std[..16]));
        }
        let k = AtRestKey::from_hex("a", &hex).unwrap();
        let shown = format!("{k:?} {:?}", ring(k.clone()));
        assert!(
            shown.contains("\"a\"") && shown.contains("redacted"),
            "{shown}"
        );
        assert!(
            !shown.contains("00010203") && !shown.contains(&std[..8]),
            "{shown}"
        );
    }
}
