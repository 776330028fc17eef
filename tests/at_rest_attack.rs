//! The attacker's review of tokens at rest (issue 33): `AtRestKey`,
//! `FileStore::encrypt_with` / `decrypt_with`, `RedisStore::encrypt_with`. Real files,
//! the real Redis (`REDIS_URL`, see tests/common/redis.rs), no mocks.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::future::{BoxFuture, FutureExt};
use secrecy::ExposeSecret;
use tower_bearer::client::{AtRestKey, FileStore, TokenSource, TokenStore};
use tower_bearer::{Error, Lineage, Token};

const ISSUER: &str = "https://idp.at-rest-attack.test";

fn key(id: &str, byte: u8) -> AtRestKey {
    AtRestKey::new(id, &[byte; 32]).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-at-rest-attack-{name}-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn secret(kind: &str) -> String {
    format!(
        "{kind}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// A fresh token, newer than any before: (token, access token, refresh token).
fn token() -> (Token, String, String) {
    let (at, rt) = (secret("AT"), secret("RT"));
    let token = Token::bearer(at.as_str())
        .unwrap()
        .with_expires_in(Duration::from_secs(600))
        .with_refresh_token(rt.as_str())
        .with_lineage(Lineage::next());
    (token, at, rt)
}

/// Whether `bytes` hold `secret` as it is, or in hex, or in base64 at any alignment.
fn holds_in_clear(bytes: &[u8], secret: &str) -> bool {
    let text = String::from_utf8_lossy(bytes);
    if text.contains(secret) {
        return true;
    }
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    if text.contains(&hex) {
        return true;
    }
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3 {
            let mut b = vec![0u8; shift];
            b.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&b);
            if text.contains(&encoded[4..encoded.len() - 4]) {
                return true;
            }
        }
    }
    false
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn file_error<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::TokenFile(message)) => message,
        other => panic!("expected Error::TokenFile, got {other:?}"),
    }
}

fn access(token: &Token) -> String {
    token.access_token().expose_secret().to_owned()
}

// ------------------------------------------------------------------ files

/// Two token files of one user at one issuer (two named profiles, two clients):
/// the sealed token of one, copied into the other, must not open there. The
/// rustdoc promises "copied into another profile's file ... it does not open".
#[tokio::test]
async fn a_sealed_token_swapped_between_two_files_of_one_user_and_issuer_does_not_open() {
    let dir = temp_dir("swap");
    let k = key("k1", 1);
    let work = FileStore::at(dir.join("work.json"), "alice", ISSUER).encrypt_with(k.clone());
    let personal =
        FileStore::at(dir.join("personal.json"), "alice", ISSUER).encrypt_with(k.clone());
    let (older, _, _) = token();
    let (newer, _, _) = token();
    personal.save(&older).await.unwrap();
    work.save(&newer).await.unwrap();
    // The attacker (who can write files, not read the key) gives `work` the
    // personal profile's token.
    let mut v = json(work.path());
    v["sealed"] = json(personal.path())["sealed"].clone();
    let planted = serde_json::to_vec(&v).unwrap();
    std::fs::write(work.path(), &planted).unwrap();
    let message = file_error(work.load().await);
    assert!(message.contains("does not decrypt"), "{message}");
    assert_eq!(std::fs::read(work.path()).unwrap(), planted, "kept");
    std::fs::remove_dir_all(dir).unwrap();
}

/// The review's "left" downgrade: someone who can write the file but has not the
/// key plants a plain token of their choosing. Adopted as a migration by default;
/// refused, file kept, with `require_sealed` (load, save and logout alike). A logout's
/// tombstone holds no token and is still read.
#[tokio::test]
async fn a_plain_token_planted_is_refused_where_sealed_tokens_are_required() {
    let dir = temp_dir("planted");
    let path = dir.join("alice.json");
    let (planted, at, _) = token();
    FileStore::at(&path, "alice", ISSUER)
        .save(&planted)
        .await
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // By default: adopted (the migration path).
    let migrating = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    assert_eq!(access(&migrating.load().await.unwrap().unwrap()), at);
    // Past the migration: refused, and the file left as it is.
    let strict = FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("k1", 1))
        .require_sealed();
    let message = file_error(strict.load().await);
    assert!(message.contains("in the clear"), "{message}");
    assert!(!message.contains(&at), "quoted the token: {message}");
    let (newer, _, _) = token();
    file_error(strict.save(&newer).await);
    file_error(strict.clear().await);
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "the file was changed");
    // Once the planted file is gone: sealed tokens, and a tombstone, as usual.
    std::fs::remove_file(&path).unwrap();
    strict.save(&newer).await.unwrap();
    assert!(strict.load().await.unwrap().is_some());
    strict.clear().await.unwrap();
    assert!(strict.load().await.unwrap().is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The lineage readable beside the ciphertext is bound to it: raised over an old
/// sealed token (to win every newer-only compare) it does not open, and a save
/// does not take it for a newer token (nor write over it).
#[tokio::test]
async fn a_raised_lineage_over_an_old_sealed_token_does_not_open() {
    let dir = temp_dir("lineage");
    let store = FileStore::at(dir.join("t.json"), "alice", ISSUER).encrypt_with(key("k1", 1));
    let (old, _, _) = token();
    store.save(&old).await.unwrap();
    let old_file = json(store.path());
    let (newer, _, _) = token();
    store.save(&newer).await.unwrap();
    // Replay the old envelope with a lineage above the newer token's.
    let mut v = old_file.clone();
    v["sealed"]["lineage"] = serde_json::json!(newer.lineage().as_micros() + 1);
    v["generation"] = json(store.path())["generation"].clone();
    let planted = serde_json::to_vec(&v).unwrap();
    std::fs::write(store.path(), &planted).unwrap();
    let message = file_error(store.load().await);
    assert!(message.contains("does not decrypt"), "{message}");
    let (newest, _, _) = token();
    file_error(store.save(&newest).await);
    assert_eq!(std::fs::read(store.path()).unwrap(), planted);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A fresh random 96-bit nonce for every write: over many saves none repeats, each
/// is 12 bytes, and no two ciphertexts of one token are equal.
#[tokio::test]
async fn nonces_never_repeat_over_many_saves() {
    let dir = temp_dir("nonces");
    let path = dir.join("t.json");
    let store = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    let mut nonces = HashSet::new();
    let mut ciphertexts = HashSet::new();
    let (t, _, _) = token();
    for i in 0..300 {
        // The same access token each time under a new lineage: same plaintext
        // but for the lineage field, so equal nonces would show.
        let t = t.clone().with_lineage(Lineage::next());
        store.save(&t).await.unwrap();
        let v = json(&path);
        let nonce = v["sealed"]["nonce"].as_str().unwrap().to_owned();
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&nonce)
            .unwrap();
        assert_eq!(raw.len(), 12, "save {i}");
        assert!(nonces.insert(nonce), "a nonce repeated at save {i}");
        assert!(ciphertexts.insert(v["sealed"]["ciphertext"].as_str().unwrap().to_owned()));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Keys of 31 or 33 bytes, in every form, and text that is not a key: refused with
/// `Error::Configuration`, never quoting the text; surrounding whitespace is
/// ignored, whitespace inside is not.
#[test]
fn keys_of_the_wrong_length_or_text_are_refused_without_quoting_them() {
    let b64 = |n: usize| base64::engine::general_purpose::STANDARD.encode(vec![0xA7u8; n]);
    let hex = |n: usize| "a7".repeat(n);
    let good_b64 = b64(32);
    let good_hex = hex(32);
    for (what, result, quoted) in [
        ("31 bytes", AtRestKey::new("k", &[7; 31]), String::new()),
        ("33 bytes", AtRestKey::new("k", &[7; 33]), String::new()),
        ("b64 31", AtRestKey::from_base64("k", &b64(31)), b64(31)),
        ("b64 33", AtRestKey::from_base64("k", &b64(33)), b64(33)),
        ("hex 31", AtRestKey::from_hex("k", &hex(31)), hex(31)),
        ("hex 33", AtRestKey::from_hex("k", &hex(33)), hex(33)),
        (
            "b64 with a space inside",
            AtRestKey::from_base64("k", &format!("{} {}", &good_b64[..20], &good_b64[20..])),
            good_b64.clone(),
        ),
        (
            "hex with a space inside",
            AtRestKey::from_hex("k", &format!("{} {}", &good_hex[..32], &good_hex[32..])),
            good_hex.clone(),
        ),
        (
            "hex with 0x",
            AtRestKey::from_hex("k", &format!("0x{}", &good_hex[2..])),
            good_hex.clone(),
        ),
        (
            "hex, non-ASCII",
            AtRestKey::from_hex("k", &format!("é{}", &good_hex[2..])),
            good_hex.clone(),
        ),
        (
            "hex given to base64 (64 digits are 48 bytes)",
            AtRestKey::from_base64("k", &good_hex),
            good_hex.clone(),
        ),
        ("empty", AtRestKey::from_base64("k", "  "), String::new()),
    ] {
        let Err(Error::Configuration(message)) = &result else {
            panic!("{what}: accepted: {result:?}")
        };
        if quoted.len() > 8 {
            assert!(!message.contains(&quoted[4..12]), "{what}: {message}");
        }
    }
    // Surrounding whitespace, padding or not, either alphabet: the same key.
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xA7u8; 32]);
    for text in [format!("\t{good_b64}\r\n"), url.clone(), format!(" {url}")] {
        AtRestKey::from_base64("k", &text).unwrap();
    }
    AtRestKey::from_hex("k", &format!("  {}\n", good_hex.to_uppercase())).unwrap();
}

/// Turning encryption on, or rotating, and then saving the token the file already
/// holds (a process starting with the key and writing back what it loaded) seals
/// it: the issue asks that "a key rotation re-encrypts on the next save". Before,
/// the plain token stayed on disk until the next refresh (never, for a token that
/// does not expire).
#[tokio::test]
async fn saving_the_token_a_file_holds_seals_it_under_the_current_key() {
    let dir = temp_dir("reseal");
    let path = dir.join("t.json");
    let (t, at, rt) = token();
    FileStore::at(&path, "alice", ISSUER)
        .save(&t)
        .await
        .unwrap();
    assert!(holds_in_clear(&std::fs::read(&path).unwrap(), &at));

    // Migration: plain → k1, by a save of the same token.
    let k1 = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    let loaded = k1.load().await.unwrap().unwrap();
    k1.save(&loaded).await.unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !holds_in_clear(&bytes, &at) && !holds_in_clear(&bytes, &rt),
        "the plain token stayed on disk after a save under a key"
    );
    assert_eq!(json(&path)["sealed"]["kid"], "k1");
    let generation = json(&path)["generation"].clone();
    // Once sealed under the current key, saving it again writes nothing.
    k1.save(&loaded).await.unwrap();
    assert_eq!(json(&path)["generation"], generation);

    // Rotation: k1 → k2, by a save of the same token.
    let k2 = FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("k2", 2))
        .decrypt_with(key("k1", 1));
    let loaded = k2.load().await.unwrap().unwrap();
    k2.save(&loaded).await.unwrap();
    assert_eq!(json(&path)["sealed"]["kid"], "k2");
    let only_k2 = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k2", 2));
    let back = only_k2.load().await.unwrap().unwrap();
    assert_eq!(access(&back), at);
    assert_eq!(back.lineage(), t.lineage());
    // An older token saved now is still kept out.
    let older = Token::bearer("older")
        .unwrap()
        .with_lineage(Lineage::UNKNOWN);
    only_k2.save(&older).await.unwrap();
    assert_eq!(access(&only_k2.load().await.unwrap().unwrap()), at);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Mid-rotation, a process with the old key only and one with the new key (and the
/// old one to read) share a file: the old-key process is told which key it lacks and
/// never writes over the newer token; the new-key process reads what the old one
/// wrote. Nothing is lost, and nobody is locked out once the old process gets the key.
#[tokio::test]
async fn an_old_key_process_and_a_new_key_process_sharing_a_file_lose_nothing() {
    let dir = temp_dir("mixed");
    let path = dir.join("t.json");
    let old_only = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    let rotated = FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("k2", 2))
        .decrypt_with(key("k1", 1));
    let (t1, _, _) = token();
    old_only.save(&t1).await.unwrap();
    assert_eq!(access(&rotated.load().await.unwrap().unwrap()), access(&t1));
    let (t2, at2, _) = token();
    rotated.save(&t2).await.unwrap();
    let message = file_error(old_only.load().await);
    assert!(
        message.contains("\"k2\"") && message.contains("decrypt_with"),
        "{message}"
    );
    let (t3, _, _) = token();
    file_error(old_only.save(&t3).await);
    file_error(old_only.clear().await);
    assert_eq!(access(&rotated.load().await.unwrap().unwrap()), at2);
    // The old process restarted with the key: reads the newer token.
    let updated = FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("k1", 1))
        .decrypt_with(key("k2", 2));
    assert_eq!(access(&updated.load().await.unwrap().unwrap()), at2);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A source that counts its calls and answers with a fresh token.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl TokenSource for Counting {
    fn fetch<'a>(&'a self, _previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        async move { Ok(token().0) }.boxed()
    }
}

/// `FileStore::shared` over a file it cannot decrypt (no key, the wrong key):
/// a clear error on every call, no token request (no refresh storm, no new
/// session minted over the old one), the file byte for byte as it was.
#[tokio::test]
async fn a_shared_file_that_does_not_decrypt_asks_for_no_token_and_is_kept() {
    let dir = temp_dir("shared");
    let path = dir.join("t.json");
    let (t, at, _) = token();
    FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("k1", 1))
        .save(&t)
        .await
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    for store in [
        FileStore::at(&path, "alice", ISSUER),
        FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 9)),
        FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k2", 2)),
    ] {
        let source = Counting::default();
        let shared = store.shared(source.clone());
        for _ in 0..20 {
            let message = file_error(shared.fetch(None).await);
            assert!(
                message.contains("encrypted") || message.contains("decrypt"),
                "{message}"
            );
            assert!(!holds_in_clear(message.as_bytes(), &at));
        }
        let expired = t.clone().with_expires_in(Duration::ZERO);
        file_error(shared.fetch(Some(&expired)).await);
        assert_eq!(source.0.load(Ordering::SeqCst), 0, "a token was requested");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// A writer of the log lines, for a subscriber at TRACE.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// At TRACE, through saves, loads, a rotation, every failure (no key, wrong key,
/// unknown key, damaged envelope set aside) and a logout: no token in a log line,
/// an error message, a `Debug`, or any file left in the directory (temporary files,
/// `.corrupt` copies, `.lock`, `.refresh`).
#[test]
fn no_token_in_clear_in_logs_errors_debug_or_any_file_left() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let dir = temp_dir("leaks");
    let path = dir.join("t.json");
    let mut secrets = Vec::new();
    let mut texts = String::new();
    // No runtime: the store works on this thread, so the subscriber sees it all.
    let run = |f: BoxFuture<'_, Result<(), Error>>| f.now_or_never().expect("ran inline");
    tracing::subscriber::with_default(subscriber, || {
        let k1 = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
        for _ in 0..3 {
            let (t, at, rt) = token();
            secrets.extend([at, rt]);
            run(k1.save(&t)).unwrap();
        }
        let loaded = k1.load().now_or_never().unwrap().unwrap().unwrap();
        texts.push_str(&format!("{k1:?} {loaded:?}"));
        for store in [
            FileStore::at(&path, "alice", ISSUER),
            FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 7)),
            FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k9", 9)),
        ] {
            let (t, at, rt) = token();
            secrets.extend([at, rt]);
            for result in [
                store.load().now_or_never().unwrap().map(|_| ()),
                run(store.save(&t)),
                run(store.clear()),
            ] {
                texts.push_str(&file_error(result));
            }
        }
        let rotated = FileStore::at(&path, "alice", ISSUER)
            .encrypt_with(key("k2", 2))
            .decrypt_with(key("k1", 1));
        let (t, at, rt) = token();
        secrets.extend([at, rt]);
        run(rotated.save(&t)).unwrap();
        // A damaged envelope: set aside as `.corrupt`.
        let mut v = json(&path);
        v["sealed"]["nonce"] = serde_json::json!("AAAA");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        texts.push_str(&file_error(rotated.load().now_or_never().unwrap()));
        let (t, at, rt) = token();
        secrets.extend([at, rt]);
        run(rotated.save(&t)).unwrap();
        run(rotated.clear()).unwrap();
    });
    let logs = captured.0.lock().unwrap().clone();
    assert!(!logs.is_empty(), "the subscriber saw nothing");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        files.push(entry.file_name().to_string_lossy().into_owned());
        let bytes = std::fs::read(entry.path()).unwrap();
        for s in &secrets {
            assert!(
                !holds_in_clear(&bytes, s),
                "{:?} holds a token",
                entry.path()
            );
        }
    }
    assert!(files.iter().any(|f| f.contains(".corrupt")), "{files:?}");
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
    for s in &secrets {
        assert!(!holds_in_clear(&logs, s), "a log line holds a token");
        assert!(
            !holds_in_clear(texts.as_bytes(), s),
            "an error or Debug holds a token"
        );
    }
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------ Redis

#[cfg(feature = "redis")]
mod redis_entries {
    use super::*;
    use crate::common::redis::on_every_redis;
    use std::collections::HashMap;

    fn profile(name: &str) -> String {
        format!(
            "at-rest-attack-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    on_every_redis! {
        /// As for files: saving the token an entry already holds under a store with
        /// a key seals it (migration), and under a new key re-seals it (rotation);
        /// saving it again writes nothing; an older token is still kept out.
        async fn saving_the_token_an_entry_holds_seals_it_under_the_current_key(redis) {
            let p = profile("reseal");
            let (t, at, rt) = token();
            let plain = redis.store(&p).await;
            plain.save(&t).await.unwrap();
            let k1 = redis.store(&p).await.encrypt_with(key("k1", 1));
            let loaded = k1.load().await.unwrap().unwrap();
            k1.save(&loaded).await.unwrap();
            let entry: HashMap<String, String> =
                redis.query(redis::cmd("HGETALL").arg(k1.token_key())).await;
            assert_eq!(entry["kid"], "k1", "the plain entry stayed plain");
            for v in entry.values() {
                assert!(!holds_in_clear(v.as_bytes(), &at) && !holds_in_clear(v.as_bytes(), &rt));
            }
            let version = k1.version().await.unwrap();
            k1.save(&loaded).await.unwrap();
            assert_eq!(k1.version().await.unwrap(), version, "rewritten for nothing");

            let k2 = redis
                .store(&p)
                .await
                .encrypt_with(key("k2", 2))
                .decrypt_with(key("k1", 1));
            k2.save(&k2.load().await.unwrap().unwrap()).await.unwrap();
            let only_k2 = redis.store(&p).await.encrypt_with(key("k2", 2));
            let back = only_k2.load().await.unwrap().unwrap();
            assert_eq!(access(&back), at);
            assert_eq!(back.lineage(), t.lineage());
            let lin: String = redis
                .query(redis::cmd("HGET").arg(only_k2.token_key()).arg("lin"))
                .await;
            assert_eq!(lin, t.lineage().as_micros().to_string());
            // A replica with the old key only may not re-seal it back.
            let old_only = redis.store(&p).await.encrypt_with(key("k1", 1));
            assert!(matches!(old_only.save(&back).await, Err(Error::Store(_))));
            // An older token is still kept out.
            only_k2
                .save(&Token::bearer("older").unwrap().with_lineage(Lineage::UNKNOWN))
                .await
                .unwrap();
            assert_eq!(access(&only_k2.load().await.unwrap().unwrap()), at);
        }
    }

    on_every_redis! {
        /// The downgrade in Redis: an entry planted in the clear is adopted by
        /// default, refused with `require_sealed` (never quoted); a newer sealed
        /// token still replaces it.
        async fn a_plain_entry_planted_is_refused_where_sealed_tokens_are_required(redis) {
            let p = profile("planted");
            let (planted, at, _) = token();
            redis.store(&p).await.save(&planted).await.unwrap();
            let migrating = redis.store(&p).await.encrypt_with(key("k1", 1));
            assert_eq!(access(&migrating.load().await.unwrap().unwrap()), at);
            let strict = redis
                .store(&p)
                .await
                .encrypt_with(key("k1", 1))
                .require_sealed();
            let Err(Error::Store(message)) = strict.load().await else {
                panic!("a plain entry was adopted under require_sealed");
            };
            assert!(message.contains("in the clear"), "{message}");
            assert!(!message.contains(&at), "quoted the token: {message}");
            let (newer, _, _) = token();
            strict.save(&newer).await.unwrap();
            assert_eq!(
                strict.load().await.unwrap().unwrap().lineage(),
                newer.lineage()
            );
        }
    }

    on_every_redis! {
        /// A replica given the wrong bytes under the right id (the case the author
        /// left: the script checks ids, not keys) still obeys newer-only: its older
        /// token never replaces the fleet's newer one, which stays readable.
        async fn a_wrong_key_under_the_right_id_never_replaces_a_newer_token(redis) {
            let p = profile("wrongkey");
            let right = redis.store(&p).await.encrypt_with(key("k1", 1));
            let wrong = redis.store(&p).await.encrypt_with(key("k1", 66));
            let (older, _, _) = token();
            let (newer, at, _) = token();
            right.save(&newer).await.unwrap();
            wrong.save(&older).await.unwrap();
            assert!(matches!(wrong.load().await, Err(Error::Store(m)) if m.contains("does not decrypt")));
            assert_eq!(access(&right.load().await.unwrap().unwrap()), at);
        }
    }
}
