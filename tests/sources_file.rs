//! FileStore: round trip, permissions, atomic writes, another user's file, corrupt files.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret;
use tower_bearer::client::{FileStore, TokenStore};
use tower_bearer::{Error, Token};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-bearer-{name}-{}-{}",
            std::process::id(),
            fastrand_id()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fastrand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn token(access: &str, refresh: &str) -> Token {
    Token::bearer(access)
        .unwrap()
        .with_expires_in(Duration::from_secs(3600))
        .with_refresh_token(refresh)
        .with_scope("read")
}

#[tokio::test]
async fn round_trip_in_a_new_directory() {
    let dir = TempDir::new("round-trip");
    let path = dir.0.join("nested/profile.json");
    let store = FileStore::at(&path, "alice", "https://idp.example.com");
    assert!(store.load().await.unwrap().is_none());
    store.save(&token("a-1", "r-1")).await.unwrap();

    // Another process (another store on the same file) reads it back.
    let other = FileStore::at(&path, "alice", "https://idp.example.com");
    let back = other.load().await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), "a-1");
    assert_eq!(back.refresh_token().unwrap().expose_secret(), "r-1");
    assert_eq!(back.scope(), Some("read"));
    let left = back.expires_in().unwrap().as_secs();
    assert!((3590..=3600).contains(&left), "{left}");

    // The file says whose it is.
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(json["username"], "alice");
    assert_eq!(json["issuer"], "https://idp.example.com");

    store.save(&token("a-2", "r-2")).await.unwrap();
    let back = other.load().await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), "a-2");
    // A logout leaves a tombstone (other processes see a logout, not a lost file),
    // with no token in it.
    store.clear().await.unwrap();
    assert!(other.load().await.unwrap().is_none());
    let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert!(json.get("token").is_none(), "{json}");
    assert!(json["logged_out"]["at_ms"].as_u64().is_some(), "{json}");
    // An older token stays out of it; a new login's goes in.
    store.save(&token("a-3", "r-3")).await.unwrap();
    assert_eq!(
        other
            .load()
            .await
            .unwrap()
            .unwrap()
            .access_token()
            .expose_secret(),
        "a-3"
    );
    let stale = token("stale", "r-stale").with_lineage(tower_bearer::Lineage::from_micros(1));
    store.clear().await.unwrap();
    store.save(&stale).await.unwrap();
    assert!(other.load().await.unwrap().is_none());
    // Debug never shows a token.
    assert!(!format!("{store:?}").contains("a-2"));
}

#[cfg(unix)]
#[tokio::test]
async fn the_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("mode");
    let path = dir.0.join("private/profile.json");
    let store = FileStore::at(&path, "alice", "https://idp");
    store.save(&token("a", "r")).await.unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
    let dir_mode = fs::metadata(path.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "{dir_mode:o}");
    // Still private after a rewrite.
    store.save(&token("b", "r")).await.unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{mode:o}");
}

#[tokio::test]
async fn a_crashed_write_leaves_the_old_file_and_is_ignored() {
    let dir = TempDir::new("crash");
    let path = dir.0.join("profile.json");
    let store = FileStore::at(&path, "alice", "https://idp");
    store.save(&token("old", "r-old")).await.unwrap();
    // What a save killed between its write and its rename leaves behind: a half
    // written temporary file next to the token file.
    let stray = dir.0.join(".profile.json.4242.0badcafe.tmp");
    fs::write(&stray, b"{\"version\":1,\"username\":\"alice\",\"tok").unwrap();

    let back = store.load().await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), "old");
    store.save(&token("new", "r-new")).await.unwrap();
    let back = store.load().await.unwrap().unwrap();
    assert_eq!(back.access_token().expose_secret(), "new");
    // Only the token file, its two lock files and the stray are there: the save left
    // no temporary file.
    let mut names: Vec<String> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".profile.json.4242.0badcafe.tmp",
            "profile.json",
            "profile.json.lock",
            "profile.json.refresh"
        ]
    );
}

#[tokio::test]
async fn another_users_file_is_refused_and_left_alone() {
    let dir = TempDir::new("other-user");
    let path = dir.0.join("profile.json");
    FileStore::at(&path, "bob", "https://idp")
        .save(&token("bobs", "bobs-r"))
        .await
        .unwrap();
    let before = fs::read(&path).unwrap();

    let alice = FileStore::at(&path, "alice", "https://idp");
    let err = alice.load().await.unwrap_err();
    assert!(matches!(err, Error::TokenFile(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("\"bob\"") && msg.contains("\"alice\""),
        "{msg}"
    );
    assert!(!msg.contains("bobs"), "the message shows no token: {msg}");
    let err = alice.save(&token("alices", "r")).await.unwrap_err();
    assert!(matches!(err, Error::TokenFile(_)), "{err:?}");
    assert_eq!(fs::read(&path).unwrap(), before, "bob's file is untouched");

    // Same user, another issuer: refused too.
    let err = FileStore::at(&path, "bob", "https://other-idp")
        .load()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TokenFile(_)), "{err:?}");
}

#[tokio::test]
async fn a_corrupt_file_is_reported_and_kept() {
    let dir = TempDir::new("corrupt");
    let path = dir.0.join("profile.json");
    fs::write(&path, b"{\"version\":1, this is not json").unwrap();
    let store = FileStore::at(&path, "alice", "https://idp");

    let err = store.load().await.unwrap_err();
    assert!(matches!(err, Error::TokenFile(_)), "{err:?}");
    let kept = dir.0.join("profile.json.corrupt");
    assert!(err.to_string().contains("profile.json.corrupt"), "{err}");
    assert_eq!(
        fs::read(&kept).unwrap(),
        b"{\"version\":1, this is not json"
    );
    // Then the profile is empty: log in again, and saving works.
    assert!(store.load().await.unwrap().is_none());
    store.save(&token("a", "r")).await.unwrap();
    assert!(store.load().await.unwrap().is_some());

    // A second corrupt file does not overwrite the first one kept.
    fs::write(&path, b"garbage").unwrap();
    assert!(store.load().await.is_err());
    assert_eq!(
        fs::read(&kept).unwrap(),
        b"{\"version\":1, this is not json"
    );
    let kept_files = fs::read_dir(&dir.0)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt")
        })
        .count();
    assert_eq!(kept_files, 2);

    // Saving over a corrupt file keeps it aside too.
    let dir = TempDir::new("corrupt-save");
    let path = dir.0.join("profile.json");
    fs::write(&path, b"not json at all").unwrap();
    let store = FileStore::at(&path, "alice", "https://idp");
    store.save(&token("a", "r")).await.unwrap();
    assert_eq!(
        fs::read(dir.0.join("profile.json.corrupt")).unwrap(),
        b"not json at all"
    );
    assert!(store.load().await.unwrap().is_some());
}

#[test]
fn the_default_file_is_per_user_and_issuer() {
    let a = FileStore::file_name("alice", "https://idp.example.com");
    let b = FileStore::file_name("bob", "https://idp.example.com");
    let c = FileStore::file_name("alice", "https://other.example.com");
    assert_eq!(a, "alice@idp.example.com.json");
    assert_ne!(a, b);
    assert_ne!(a, c);
    if let Ok(dir) = FileStore::default_dir() {
        assert!(dir.ends_with("tower-bearer"), "{}", dir.display());
    }
}
