//! Tokens at rest (issue 33): `FileStore` and `RedisStore` encrypting with an
//! `AtRestKey`, checked on real files, real processes and the real Redis (the Redis
//! tests read `REDIS_URL`, as the fleet tests do; see tests/common/redis.rs).
//!
//! Every check that a file or an entry "holds no token" looks at the raw bytes for
//! the access and refresh tokens as written, JSON-escaped, in hex and in base64 (at
//! each of the three alignments a token can take inside a larger encoded value), and
//! each has a control showing the same check finds the token in a plain store.
//!
//! The `child_*` tests return at once unless `AT_REST_CHILD` is set: this binary runs
//! itself as the processes that share a file.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower_bearer::client::{AtRestKey, FileStore, TokenEndpoint, TokenSource, TokenStore};
use tower_bearer::{Error, Lineage, Token};

const ISSUER: &str = "https://idp.at-rest.test";
const CHILD: &str = "AT_REST_CHILD";
/// The key the child processes use (hex, passed in their environment).
const CHILD_KEY_HEX: &str = "5c0ffee05c0ffee05c0ffee05c0ffee05c0ffee05c0ffee05c0ffee05c0ffee0";

// ------------------------------------------------------------------ helpers

fn key(id: &str, byte: u8) -> AtRestKey {
    AtRestKey::new(id, &[byte; 32]).unwrap()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-at-rest-{name}-{}-{:016x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Secrets long and random enough that no ciphertext or digest holds them by chance.
fn secret(kind: &str) -> String {
    format!(
        "{kind}-{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

/// A fresh token with its own access and refresh tokens, newer than any before.
fn token() -> (Token, String, String) {
    let (at, rt) = (secret("AT"), secret("RT"));
    let token = Token::bearer(at.as_str())
        .unwrap()
        .with_expires_in(Duration::from_secs(600))
        .with_refresh_token(rt.as_str())
        .with_scope("read write")
        .with_lineage(Lineage::next());
    (token, at, rt)
}

/// The forms `secret` could take in stored bytes: itself, JSON-escaped, hex, and
/// base64 (standard and URL-safe) at each alignment, without the edge characters an
/// alignment changes.
fn clear_forms(secret: &str) -> Vec<String> {
    let mut forms = vec![
        secret.to_owned(),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_owned(),
        secret.bytes().map(|b| format!("{b:02x}")).collect(),
    ];
    for engine in [
        base64::engine::general_purpose::STANDARD_NO_PAD,
        base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for shift in 0..3 {
            let mut bytes = vec![0u8; shift];
            bytes.extend_from_slice(secret.as_bytes());
            let encoded = engine.encode(&bytes);
            forms.push(encoded[4..encoded.len() - 4].to_owned());
        }
    }
    forms
}

fn holds_in_clear(bytes: &[u8], secret: &str) -> bool {
    let text = String::from_utf8_lossy(bytes);
    clear_forms(secret).iter().any(|form| text.contains(form))
}

fn assert_no_token_in(bytes: &[u8], secrets: &[&str], what: &str) {
    for s in secrets {
        assert!(!holds_in_clear(bytes, s), "{what} holds a token in clear");
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_error<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::TokenFile(message)) => message,
        other => panic!("expected Error::TokenFile, got {other:?}"),
    }
}

fn no_corrupt_file_beside(path: &Path) {
    let dir = path.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(".corrupt")),
        "a file was set aside: {names:?}"
    );
}

// ------------------------------------------------------------------ files

/// The file and its lock files hold no token in clear; only the lineage, the key's
/// id, the user and issuer are readable. The same check finds the token in a plain
/// store's file.
#[tokio::test]
async fn an_encrypted_file_and_its_lock_files_hold_no_token_in_clear() {
    let dir = temp_dir("clear");
    let path = dir.join("alice.json");
    let store = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    let (t, at, rt) = token();
    store.save(&t).await.unwrap();

    let raw = std::fs::read(&path).unwrap();
    assert_no_token_in(&raw, &[&at, &rt], "the encrypted file");
    assert!(!String::from_utf8_lossy(&raw).contains("read write"));
    let v = json(&path);
    assert_eq!(v["version"], 2);
    assert_eq!(v["username"], "alice");
    assert_eq!(v["issuer"], ISSUER);
    assert!(v.get("token").is_none(), "{v}");
    assert_eq!(v["sealed"]["kid"], "k1");
    assert_eq!(v["sealed"]["lineage"], t.lineage().as_micros());
    for lock in [".lock", ".refresh"] {
        let bytes = std::fs::read(sibling(&path, lock)).unwrap_or_default();
        assert_no_token_in(&bytes, &[&at, &rt], lock);
    }
    let back = store.load().await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), at);
    assert_eq!(back.refresh_token().unwrap().expose_secret(), rt);
    assert_eq!(back.scope(), Some("read write"));
    assert_eq!(back.lineage(), t.lineage());

    // Control: the check sees the token in a plain file.
    let plain = dir.join("plain.json");
    FileStore::at(&plain, "alice", ISSUER)
        .save(&t)
        .await
        .unwrap();
    assert!(holds_in_clear(&std::fs::read(&plain).unwrap(), &at));
    std::fs::remove_dir_all(dir).unwrap();
}

/// A store given no key cannot read an encrypted file: a clear error on load, save
/// and logout, naming the key's id, quoting nothing; the file is left byte for byte.
#[tokio::test]
async fn without_the_key_the_file_is_unreadable_and_left_as_it_is() {
    let dir = temp_dir("nokey");
    let path = dir.join("alice.json");
    let (t, at, _) = token();
    FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("k1", 1))
        .save(&t)
        .await
        .unwrap();
    let before = std::fs::read(&path).unwrap();

    let keyless = FileStore::at(&path, "alice", ISSUER);
    let message = file_error(keyless.load().await);
    assert!(
        message.contains("encrypted") && message.contains("no key") && message.contains("k1"),
        "{message}"
    );
    assert!(!message.contains(&at));
    let (newer, _, _) = token();
    file_error(keyless.save(&newer).await);
    file_error(keyless.clear().await);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
    no_corrupt_file_beside(&path);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A key of another id, or another key under the same id: a clear error, the file
/// kept (not set aside as corrupt); the right key still reads it.
#[tokio::test]
async fn a_wrong_key_is_a_clear_error_and_the_file_is_kept() {
    let dir = temp_dir("wrong");
    let path = dir.join("alice.json");
    let right = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    let (t, at, _) = token();
    right.save(&t).await.unwrap();
    let before = std::fs::read(&path).unwrap();

    let other_id = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k9", 1));
    let message = file_error(other_id.load().await);
    assert!(
        message.contains("\"k1\"") && message.contains("not given"),
        "{message}"
    );
    let same_id = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 2));
    let message = file_error(same_id.load().await);
    assert!(message.contains("does not decrypt"), "{message}");
    assert!(!message.contains(&at));
    let (newer, _, _) = token();
    file_error(same_id.save(&newer).await);
    file_error(other_id.save(&newer).await);

    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file was changed"
    );
    no_corrupt_file_beside(&path);
    let kept = right.load().await.unwrap().unwrap();
    assert_eq!(kept.access_token().expose_secret(), at);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Rotation: a store with the new key and the old one reads the old file; loading
/// writes nothing; the next save seals with the new key; then the old key is no
/// longer needed, and is no longer enough.
#[tokio::test]
async fn rotation_reads_the_old_key_and_the_next_save_seals_with_the_new_one() {
    let dir = temp_dir("rotate");
    let path = dir.join("alice.json");
    let (t, at, _) = token();
    FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("2026-06", 1))
        .save(&t)
        .await
        .unwrap();

    let rotated = FileStore::at(&path, "alice", ISSUER)
        .encrypt_with(key("2026-12", 2))
        .decrypt_with(key("2026-06", 1));
    let read = rotated.load().await.unwrap().unwrap();
    assert_eq!(read.access_token().expose_secret(), at);
    assert_eq!(json(&path)["sealed"]["kid"], "2026-06", "a load wrote");

    let (newer, at2, rt2) = token();
    rotated.save(&newer).await.unwrap();
    assert_eq!(json(&path)["sealed"]["kid"], "2026-12");
    assert_no_token_in(&std::fs::read(&path).unwrap(), &[&at2, &rt2], "the file");

    let new_only = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("2026-12", 2));
    let back = new_only.load().await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), at2);
    let old_only = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("2026-06", 1));
    file_error(old_only.load().await);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A plain file (written before encryption was turned on) is read by a store with a
/// key, and the next save seals it.
#[tokio::test]
async fn a_plain_file_is_adopted_and_sealed_by_the_next_save() {
    let dir = temp_dir("migrate");
    let path = dir.join("alice.json");
    let (t, at, _) = token();
    FileStore::at(&path, "alice", ISSUER)
        .save(&t)
        .await
        .unwrap();
    assert_eq!(json(&path)["version"], 1);

    let store = FileStore::at(&path, "alice", ISSUER).encrypt_with(key("k1", 1));
    let read = store.load().await.unwrap().unwrap();
    assert_eq!(read.access_token().expose_secret(), at);
    let (newer, at2, rt2) = token();
    store.save(&newer).await.unwrap();
    assert_eq!(json(&path)["version"], 2);
    assert_no_token_in(&std::fs::read(&path).unwrap(), &[&at2, &rt2], "the file");
    // A logout's tombstone holds no token, is plain, and every store reads it.
    store.clear().await.unwrap();
    assert!(store.load().await.unwrap().is_none());
    assert!(FileStore::at(&path, "alice", ISSUER)
        .load()
        .await
        .unwrap()
        .is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

/// The ciphertext is bound to its user, issuer and lineage: copied into Bob's file,
/// into Alice's file at another issuer, or given another lineage, it does not open
/// (and the file is kept).
#[tokio::test]
async fn a_ciphertext_moved_to_another_profile_or_lineage_does_not_open() {
    let dir = temp_dir("moved");
    let k = key("k1", 1);
    let alice_path = dir.join("alice.json");
    let (t, _, _) = token();
    FileStore::at(&alice_path, "alice", ISSUER)
        .encrypt_with(k.clone())
        .save(&t)
        .await
        .unwrap();
    let sealed = json(&alice_path)["sealed"].clone();

    for (user, issuer) in [("bob", ISSUER), ("alice", "https://other.at-rest.test")] {
        let path = dir.join(format!("{user}-{}.json", fastrand::u32(..)));
        let store = FileStore::at(&path, user, issuer).encrypt_with(k.clone());
        let (own, _, _) = token();
        store.save(&own).await.unwrap();
        let mut v = json(&path);
        v["sealed"] = sealed.clone();
        let planted = serde_json::to_vec(&v).unwrap();
        std::fs::write(&path, &planted).unwrap();
        let message = file_error(store.load().await);
        assert!(message.contains("does not decrypt"), "{message}");
        assert_eq!(std::fs::read(&path).unwrap(), planted);
    }

    // Another lineage (newer, so that it would win every compare): refused.
    let mut v = json(&alice_path);
    v["sealed"]["lineage"] = serde_json::json!(t.lineage().as_micros() + 1_000_000);
    std::fs::write(&alice_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let alice = FileStore::at(&alice_path, "alice", ISSUER).encrypt_with(k);
    let message = file_error(alice.load().await);
    assert!(message.contains("does not decrypt"), "{message}");
    no_corrupt_file_beside(&alice_path);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Hostile or damaged files: truncated ciphertext, bad base64, a nonce from another
/// write, wrong types, a version 2 file with a plain token. Errors, never a panic;
/// damage whatever the key is set aside (`.corrupt`), a failure to authenticate is
/// kept (it may be the key that is wrong).
#[tokio::test]
async fn hostile_files_are_errors_not_panics() {
    let dir = temp_dir("hostile");
    let k = key("k1", 1);
    let seed = dir.join("seed.json");
    let store = FileStore::at(&seed, "alice", ISSUER).encrypt_with(k.clone());
    store.save(&token().0).await.unwrap();
    let first = json(&seed);
    store.save(&token().0).await.unwrap();
    let second = json(&seed);
    let ct = first["sealed"]["ciphertext"].as_str().unwrap().to_owned();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bytes = url.decode(&ct).unwrap();
    let truncated = url.encode(&bytes[..bytes.len() / 2]);

    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = first.clone();
        f(&mut v);
        v
    };
    // (the file, whether it is damage set aside)
    let cases: Vec<(&str, serde_json::Value, bool)> = vec![
        // Half the bytes, still base64: fails to authenticate (as a wrong key would).
        (
            "truncated",
            edit(&|v| v["sealed"]["ciphertext"] = truncated.clone().into()),
            false,
        ),
        // Cut inside a base64 quantum: not base64.
        (
            "cut base64",
            edit(&|v| v["sealed"]["ciphertext"] = ct[..4 * (ct.len() / 8) + 1].into()),
            true,
        ),
        (
            "shorter than a tag",
            edit(&|v| v["sealed"]["ciphertext"] = ct[..10].into()),
            true,
        ),
        (
            "bad base64",
            edit(&|v| v["sealed"]["ciphertext"] = "@@@@ not base64 @@@@".into()),
            true,
        ),
        (
            "nonce of another write",
            edit(&|v| v["sealed"]["nonce"] = second["sealed"]["nonce"].clone()),
            false,
        ),
        (
            "short nonce",
            edit(&|v| v["sealed"]["nonce"] = "AAAA".into()),
            true,
        ),
        (
            "ciphertext of another write",
            edit(&|v| v["sealed"]["ciphertext"] = second["sealed"]["ciphertext"].clone()),
            false,
        ),
        (
            "sealed is a number",
            edit(&|v| v["sealed"] = 5.into()),
            true,
        ),
        (
            "unknown algorithm",
            edit(&|v| v["sealed"]["alg"] = "none".into()),
            true,
        ),
        (
            "version 2 with a plain token",
            edit(&|v| {
                v["token"] = serde_json::json!({"access_token": "x", "token_type": "Bearer"});
                v.as_object_mut().unwrap().remove("sealed");
            }),
            true,
        ),
    ];
    for (name, content, set_aside) in cases {
        let path = dir.join(format!("{}.json", name.replace(' ', "-")));
        std::fs::write(&path, serde_json::to_vec(&content).unwrap()).unwrap();
        let store = FileStore::at(&path, "alice", ISSUER).encrypt_with(k.clone());
        let result = store.load().await;
        assert!(
            matches!(result, Err(Error::TokenFile(_))),
            "{name}: {result:?}"
        );
        assert_eq!(
            sibling(&path, ".corrupt").exists(),
            set_aside,
            "{name}: set aside?"
        );
        assert_eq!(path.exists(), !set_aside, "{name}: kept?");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// `Debug` of a key, a keyed `FileStore` and its shared source shows key ids, never
/// key material (hex, base64, the byte array).
#[tokio::test]
async fn debug_shows_no_key_material() {
    let bytes: Vec<u8> = (100u8..132).collect();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let k = AtRestKey::from_hex("visible-id", &hex).unwrap();
    let k2 = AtRestKey::from_base64("old-id", &b64).unwrap();
    let store = FileStore::at("/nonexistent/a.json", "alice", ISSUER)
        .encrypt_with(k.clone())
        .decrypt_with(k2);
    let shared = store.shared(TokenEndpoint::new(ISSUER).unwrap().refresh_token("x"));
    let shown = format!("{k:?} {store:?} {shared:?}");
    assert!(
        shown.contains("visible-id") && shown.contains("old-id"),
        "{shown}"
    );
    let byte_list = format!("{:?}", &bytes[..4])
        .trim_end_matches(']')
        .to_owned();
    for material in [
        &hex[..12],
        &hex.to_uppercase()[..12],
        &b64[..12],
        &byte_list,
    ] {
        assert!(!shown.contains(material), "{shown}");
    }
}

// ------------------------------------------------------------------ processes

/// A token endpoint that rotates refresh tokens (each works once: a second
/// presentation is counted as a reuse) and issues long random tokens.
#[derive(Default)]
struct Provider {
    valid: HashMap<String, ()>,
    requests: u64,
    reuse: u64,
}

struct Server {
    url: String,
    state: Arc<Mutex<Provider>>,
}

impl Server {
    async fn start(first_refresh_token: &str) -> Server {
        let state = Arc::new(Mutex::new(Provider::default()));
        state
            .lock()
            .unwrap()
            .valid
            .insert(first_refresh_token.to_owned(), ());
        let app = axum::Router::new()
            .route("/token", axum::routing::post(issue))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { url, state }
    }

    fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }
}

async fn issue(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<Provider>>>,
    axum::Form(form): axum::Form<HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut p = state.lock().unwrap();
    p.requests += 1;
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    if p.valid.remove(&rt).is_none() {
        p.reuse += 1;
        return (
            axum::http::StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid_grant"})),
        )
            .into_response();
    }
    let next = secret("RT");
    p.valid.insert(next.clone(), ());
    axum::Json(serde_json::json!({
        "access_token": secret("AT"),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": next,
    }))
    .into_response()
}

/// A child process: this test binary running the test `name`.
fn child(name: &str, mode: &str, env: &[(&str, String)]) -> (Child, Io) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD, mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let io = Io {
        stdin: child.stdin.take().unwrap(),
        lines: BufReader::new(child.stdout.take().unwrap()).lines(),
    };
    (child, io)
}

struct Io {
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Io {
    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The child's next line starting with `>`, without it.
    async fn next(&mut self) -> String {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
                .await
                .expect("the child said nothing for 60 s")
                .unwrap()
                .expect("the child ended");
            if let Some(rest) = line.strip_prefix('>') {
                return rest.to_owned();
            }
        }
    }

    async fn end(self, mut child: Child) {
        drop(self.stdin);
        let mut lines = self.lines;
        while let Ok(Ok(Some(_))) =
            tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
        {}
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
}

fn child_mode() -> Option<String> {
    std::env::var(CHILD).ok()
}

fn hear() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    }
}

fn say(line: &str) {
    println!(">{line}");
}

/// The store every process sharing the file at `path` makes.
fn child_store(path: &Path) -> FileStore {
    FileStore::at(path, "alice", ISSUER)
        .encrypt_with(AtRestKey::from_hex("child", CHILD_KEY_HEX).unwrap())
}

fn child_path() -> PathBuf {
    PathBuf::from(std::env::var("AT_REST_PATH").unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A process saving, for each line `round lineage`, the token `<who>-<round>` of
/// that lineage through an encrypting store.
#[test]
fn child_saver() {
    if child_mode().as_deref() != Some("saver") {
        return;
    }
    let store = child_store(&child_path());
    let who = std::env::var("AT_REST_WHO").unwrap();
    runtime().block_on(async {
        while let Some(line) = hear() {
            let (round, lineage) = line.split_once(' ').unwrap();
            let token = Token::bearer(format!("{who}-{round}"))
                .unwrap()
                .with_lineage(Lineage::from_micros(lineage.parse().unwrap()));
            store.save(&token).await.unwrap();
            say(&format!("saved {round}"));
        }
    });
}

/// A process sharing the encrypted file: on each line, fetches a token newer than
/// the one it holds through `FileStore::shared` and prints its access token.
#[test]
fn child_sharer() {
    if child_mode().as_deref() != Some("sharer") {
        return;
    }
    let store = child_store(&child_path());
    let url = std::env::var("AT_REST_URL").unwrap();
    let shared = store.shared(
        TokenEndpoint::new(&url)
            .unwrap()
            .client_id("cli")
            .refresh_token("unused-seed"),
    );
    runtime().block_on(async {
        let mut current = store.load().await.unwrap();
        say("ready");
        while hear().is_some() {
            match shared.fetch(current.as_ref()).await {
                Ok(t) => {
                    say(&format!("ok {}", t.access_token().expose_secret()));
                    current = Some(t);
                }
                Err(e) => say(&format!("err {e}")),
            }
        }
    });
}

/// Two processes save tokens of different lineages through encrypting stores at the
/// same moment, 100 times: the newer one is in the file after every round (the
/// lineage stays readable for the compare under the lock), and it decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_encrypted_saves_in_two_processes_never_leave_the_older_token() {
    let dir = temp_dir("race");
    let path = dir.join("alice.json");
    let env = |who: &str| {
        [
            ("AT_REST_PATH", path.display().to_string()),
            ("AT_REST_WHO", who.to_owned()),
        ]
    };
    let (older, mut a) = child("child_saver", "saver", &env("older"));
    let (newer, mut b) = child("child_saver", "saver", &env("newer"));
    let base = Lineage::next().as_micros();
    let mut kept_older = 0;
    for round in 0..100u64 {
        let (old, new) = (base + round * 10 + 1, base + round * 10 + 2);
        let (to_a, to_b) = (format!("{round} {old}"), format!("{round} {new}"));
        tokio::join!(a.send(&to_a), b.send(&to_b));
        let (x, y) = tokio::join!(a.next(), b.next());
        let saved = format!("saved {round}");
        assert_eq!((x.as_str(), y.as_str()), (saved.as_str(), saved.as_str()));
        let v = json(&path);
        assert_eq!(v["sealed"]["kid"], "child");
        if v["sealed"]["lineage"].as_u64() != Some(new) {
            kept_older += 1;
        }
    }
    a.end(older).await;
    b.end(newer).await;
    assert_eq!(
        kept_older, 0,
        "the older token won {kept_older} of 100 rounds"
    );
    let last = child_store(&path).load().await.unwrap().unwrap();
    assert_eq!(last.access_token().expose_secret(), "newer-99");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Four processes share one encrypted file through `FileStore::shared`, four rounds:
/// one token request per round between them, all get the same token, no refresh
/// token is presented twice, and neither the file nor the claim file
/// (`<name>.refresh`) nor the write lock file holds a token in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_an_encrypted_file_refresh_once_and_store_no_token_in_clear() {
    let first_rt = secret("RT");
    let server = Server::start(&first_rt).await;
    let dir = temp_dir("shared");
    let path = dir.join("alice.json");
    let seed = Token::bearer(secret("AT"))
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token(first_rt.as_str())
        .with_lineage(Lineage::next());
    child_store(&path).save(&seed).await.unwrap();

    let env = [
        ("AT_REST_PATH", path.display().to_string()),
        ("AT_REST_URL", server.url.clone()),
    ];
    let mut procs = Vec::new();
    for _ in 0..4 {
        let (c, mut io) = child("child_sharer", "sharer", &env);
        assert_eq!(io.next().await, "ready");
        procs.push((c, io));
    }
    let mut seen: Vec<String> = vec![first_rt.clone()];
    for round in 1..=4u64 {
        for (_, io) in procs.iter_mut() {
            io.send("fetch").await;
        }
        let mut got = Vec::new();
        for (_, io) in procs.iter_mut() {
            got.push(io.next().await);
        }
        assert!(got[0].starts_with("ok AT-"), "round {round}: {got:?}");
        assert!(got.iter().all(|g| *g == got[0]), "round {round}: {got:?}");
        assert_eq!(server.requests(), round, "round {round}");
        let at = got[0].trim_start_matches("ok ").to_owned();
        let rt = child_store(&path)
            .load()
            .await
            .unwrap()
            .unwrap()
            .refresh_token()
            .unwrap()
            .expose_secret()
            .to_owned();
        seen.push(at);
        seen.push(rt);
        let secrets: Vec<&str> = seen.iter().map(String::as_str).collect();
        for suffix in ["", ".refresh", ".lock"] {
            let bytes = std::fs::read(sibling(&path, suffix)).unwrap_or_default();
            assert_no_token_in(&bytes, &secrets, &format!("alice.json{suffix}"));
        }
    }
    assert_eq!(server.state.lock().unwrap().reuse, 0);
    for (c, io) in procs {
        io.end(c).await;
    }
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------------ Redis

#[cfg(feature = "redis")]
mod redis_entries {
    use super::*;
    use crate::common::redis::{on_every_redis, Redis};
    use tower_bearer::redis::RedisStore;

    fn profile(name: &str) -> String {
        format!(
            "at-rest-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    async fn entry(redis: &Redis, store: &RedisStore) -> HashMap<String, String> {
        redis
            .query(redis::cmd("HGETALL").arg(store.token_key()))
            .await
    }

    fn all_bytes(entry: &HashMap<String, String>) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in entry {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(b'\n');
        }
        out
    }

    fn store_error<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::Store(message)) => message,
            other => panic!("expected Error::Store, got {other:?}"),
        }
    }

    on_every_redis! {
        /// An entry written by an encrypting store (a save, and a fleet refresh's
        /// fenced write) holds no token in clear in any field; the key's id and the
        /// lineage are readable; another replica with the key reads it. The same
        /// check finds the token in a plain store's entry.
        async fn a_redis_entry_holds_no_token_in_clear(redis) {
            let p = profile("clear");
            let store = redis.store(&p).await.encrypt_with(key("k1", 1));
            let (t, at, rt) = token();
            store.save(&t).await.unwrap();
            let e = entry(&redis, &store).await;
            assert_no_token_in(&all_bytes(&e), &[&at, &rt], "the Redis entry");
            assert_eq!(e["kid"], "k1");
            assert_eq!(e["lin"], t.lineage().as_micros().to_string());
            let other = redis.store(&p).await.encrypt_with(key("k1", 1));
            let back = other.load().await.unwrap().unwrap();
            assert_eq!(back.access_token().expose_secret(), at);
            assert_eq!(back.refresh_token().unwrap().expose_secret(), rt);

            // A fleet refresh through the encrypting store (the fenced write).
            let server = Server::start(&rt).await;
            let endpoint = TokenEndpoint::new(&server.url).unwrap().client_id("svc");
            let fleet = store.fleet(endpoint.refresh_token("unused"));
            let expired = back.with_expires_in(Duration::ZERO);
            let fresh = fleet.fetch(Some(&expired)).await.unwrap();
            assert_eq!(server.requests(), 1);
            let fresh_rt = other.load().await.unwrap().unwrap();
            let fresh_rt = fresh_rt.refresh_token().unwrap().expose_secret().to_owned();
            let e = entry(&redis, &store).await;
            assert_no_token_in(
                &all_bytes(&e),
                &[&at, &rt, fresh.access_token().expose_secret(), &fresh_rt],
                "the Redis entry after a fleet refresh",
            );
            assert_eq!(e["kid"], "k1");

            // Control: a plain store's entry shows the token to the same check.
            let plain = redis.store(&profile("plain")).await;
            plain.save(&t).await.unwrap();
            assert!(holds_in_clear(&all_bytes(&entry(&redis, &plain).await), &at));
        }
    }

    on_every_redis! {
        /// Without the key, or with a wrong one: a clear `Error::Store`; a save by a
        /// replica lacking the entry's key writes nothing over it.
        async fn without_the_key_or_with_a_wrong_one_an_entry_is_unreadable_and_kept(redis) {
            let p = profile("nokey");
            let right = redis.store(&p).await.encrypt_with(key("k1", 1));
            let (t, at, _) = token();
            right.save(&t).await.unwrap();
            let before = entry(&redis, &right).await;

            let keyless = redis.store(&p).await;
            let message = store_error(keyless.load().await);
            assert!(message.contains("encrypted") && message.contains("no key"), "{message}");
            assert!(!message.contains(&at));
            let other_id = redis.store(&p).await.encrypt_with(key("k9", 1));
            let message = store_error(other_id.load().await);
            assert!(message.contains("not given"), "{message}");
            let same_id = redis.store(&p).await.encrypt_with(key("k1", 2));
            let message = store_error(same_id.load().await);
            assert!(message.contains("does not decrypt"), "{message}");

            let (newer, _, _) = token();
            let message = store_error(keyless.save(&newer).await);
            assert!(message.contains("not writing over it"), "{message}");
            store_error(other_id.save(&newer).await);
            assert_eq!(entry(&redis, &right).await, before, "the entry was changed");
            let kept = right.load().await.unwrap().unwrap();
            assert_eq!(kept.access_token().expose_secret(), at);
        }
    }

    on_every_redis! {
        /// Rotation: the old key's entry is read by a replica given both keys; its
        /// next save seals with the new key (the `kid` field and the envelope say
        /// so); then the new key alone reads it. A plain entry is adopted and sealed
        /// by the next save.
        async fn rotation_and_migration_in_redis(redis) {
            let p = profile("rotate");
            let (t, at, _) = token();
            redis.store(&p).await.save(&t).await.unwrap();
            let old = redis.store(&p).await.encrypt_with(key("old", 1));
            assert_eq!(old.load().await.unwrap().unwrap().access_token().expose_secret(), at);
            let (t1, at1, _) = token();
            old.save(&t1).await.unwrap();
            assert_eq!(entry(&redis, &old).await["kid"], "old");

            let rotated = redis
                .store(&p)
                .await
                .encrypt_with(key("new", 2))
                .decrypt_with(key("old", 1));
            assert_eq!(rotated.load().await.unwrap().unwrap().access_token().expose_secret(), at1);
            let (t2, at2, rt2) = token();
            rotated.save(&t2).await.unwrap();
            let e = entry(&redis, &rotated).await;
            assert_eq!(e["kid"], "new");
            let envelope: serde_json::Value = serde_json::from_str(&e["token"]).unwrap();
            assert_eq!(envelope["sealed"]["kid"], "new");
            assert_no_token_in(&all_bytes(&e), &[&at2, &rt2], "the rotated entry");
            let new_only = redis.store(&p).await.encrypt_with(key("new", 2));
            assert_eq!(new_only.load().await.unwrap().unwrap().access_token().expose_secret(), at2);
            store_error(old.load().await);
        }
    }

    on_every_redis! {
        /// The sealed value copied into another profile's entry, or given another
        /// lineage, does not open.
        async fn a_redis_ciphertext_moved_to_another_profile_or_lineage_does_not_open(redis) {
            let k = key("k1", 1);
            let alice = redis.store(&profile("alice")).await.encrypt_with(k.clone());
            let bob = redis.store(&profile("bob")).await.encrypt_with(k.clone());
            let (t, _, _) = token();
            alice.save(&t).await.unwrap();
            bob.save(&token().0).await.unwrap();
            let sealed = entry(&redis, &alice).await["token"].clone();
            redis
                .query::<()>(redis::cmd("HSET").arg(bob.token_key()).arg("token").arg(&sealed))
                .await;
            let message = store_error(bob.load().await);
            assert!(message.contains("does not decrypt"), "{message}");

            let mut envelope: serde_json::Value = serde_json::from_str(&sealed).unwrap();
            envelope["sealed"]["lineage"] = serde_json::json!(t.lineage().as_micros() + 1);
            redis
                .query::<()>(
                    redis::cmd("HSET")
                        .arg(alice.token_key())
                        .arg("token")
                        .arg(envelope.to_string()),
                )
                .await;
            let message = store_error(alice.load().await);
            assert!(message.contains("does not decrypt"), "{message}");
        }
    }

    on_every_redis! {
        /// Two replicas with the key save an older and a newer token at once, 50
        /// times: the newer one is what Redis holds after every round (the lineage
        /// stays readable for the script's compare).
        async fn newer_only_holds_in_redis_with_encryption(redis) {
            let p = profile("race");
            let a = redis.store(&p).await.encrypt_with(key("k1", 1));
            let b = redis.store(&p).await.encrypt_with(key("k1", 1));
            let base = Lineage::next().as_micros();
            for round in 0..50u64 {
                let older = Token::bearer(format!("older-{round}"))
                    .unwrap()
                    .with_lineage(Lineage::from_micros(base + round * 10 + 1));
                let newer = Token::bearer(format!("newer-{round}"))
                    .unwrap()
                    .with_lineage(Lineage::from_micros(base + round * 10 + 2));
                let (x, y) = tokio::join!(a.save(&older), b.save(&newer));
                x.unwrap();
                y.unwrap();
                let held = a.load().await.unwrap().unwrap();
                assert_eq!(held.access_token().expose_secret(), format!("newer-{round}"));
            }
        }
    }

    /// `Debug` of an encrypting `RedisStore` shows key ids only.
    #[tokio::test]
    async fn redis_store_debug_shows_no_key_material() {
        let Some(redis) = Redis::plain().await else {
            return;
        };
        let hex = "0123456789abcdef".repeat(4);
        let store = redis
            .store(&profile("debug"))
            .await
            .encrypt_with(AtRestKey::from_hex("shown", &hex).unwrap());
        let shown = format!("{store:?}");
        assert!(shown.contains("shown"), "{shown}");
        assert!(!shown.contains(&hex[..12]), "{shown}");
    }
}
