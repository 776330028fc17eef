//! Attacks on the workload token file and careful-user checks of its promises, with
//! real files (FIFOs, devices, symlinks, sparse files, `/proc`) and a real token
//! endpoint on 127.0.0.1.
#![cfg(all(feature = "jwt", unix))]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::json;
use tower_bearer::client::source::{JwtBearer, WorkloadToken};
use tower_bearer::client::{TokenEndpoint, TokenSource};
use tower_bearer::{Error, Refreshing};

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-workload-attack-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `token.current()` on another thread, with a deadline: a read that blocks (a FIFO
/// with no writer) fails the test instead of hanging it.
fn current_within(token: &WorkloadToken, deadline: Duration) -> Result<String, Error> {
    let token = token.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let read = token.current().map(|t| {
            use secrecy::ExposeSecret as _;
            t.expose_secret().to_owned()
        });
        let _ = tx.send(read);
    });
    rx.recv_timeout(deadline)
        .expect("the read of the token file blocked")
}

fn refused_unquoted(token: &WorkloadToken, why: &str) {
    let err = current_within(token, Duration::from_secs(10)).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::NoToken(_)), "{err:?}");
    assert!(text.contains(why), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
}

/// A FIFO (no writer: an `open` would block forever), a character device, and a
/// symlink to either: refused at once as not a regular file.
#[test]
fn fifos_and_devices_are_refused_at_once() {
    let dir = scratch();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let link = dir.join("link-to-fifo");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    for path in [
        fifo.as_path(),
        link.as_path(),
        Path::new("/dev/zero"),
        Path::new("/dev/null"),
    ] {
        refused_unquoted(&WorkloadToken::file(path), "is not a regular file");
    }
    let dev_link = dir.join("link-to-zero");
    std::os::unix::fs::symlink("/dev/zero", &dev_link).unwrap();
    refused_unquoted(&WorkloadToken::file(&dev_link), "is not a regular file");
}

/// The path swapped for a symlink to another file (a `/etc/shadow`-like file of
/// several lines): refused without quoting a byte of it; a file whose metadata says
/// 0 bytes but that reads on (`/proc/self/status`): the read stops at the cap; a
/// sparse file of 1 GiB: refused from its metadata, unread.
#[test]
fn other_files_are_read_bounded_and_never_quoted() {
    let dir = scratch();
    let shadow = dir.join("shadow");
    std::fs::write(
        &shadow,
        "root:$6$SECRET-hash:19000:0:99999:7:::\nalice:$6$SECRET-other:19000:0:99999:7:::\n",
    )
    .unwrap();
    let path = dir.join("token");
    std::os::unix::fs::symlink(&shadow, &path).unwrap();
    refused_unquoted(
        &WorkloadToken::file(&path),
        "whitespace or control characters inside",
    );

    assert_eq!(std::fs::metadata("/proc/self/status").unwrap().len(), 0);
    refused_unquoted(
        &WorkloadToken::file("/proc/self/status").max_len(64),
        "larger than 64 bytes",
    );

    let sparse = dir.join("sparse");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    refused_unquoted(&WorkloadToken::file(&sparse), "larger than 16384 bytes");
}

/// Writes `text` into `path` in place (same inode) and sets its modification time.
fn rewrite_in_place(path: &Path, text: &str, mtime: SystemTime) {
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// A rotation that writes the file in place and gives it back its modification
/// time (`cp -p`, `touch -r`, `rsync --inplace -t`, a tar extraction): the
/// length, inode and mtime are those of the last read, and the read was long after
/// the mtime (not "racy"). The file changed, and the next use must read it.
#[test]
fn an_in_place_rewrite_that_restores_the_mtime_is_seen() {
    let path = scratch().join("token");
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    rewrite_in_place(&path, "token-aaaa", hour_ago);
    let token = WorkloadToken::file(&path);
    assert_eq!(
        current_within(&token, Duration::from_secs(10)).unwrap(),
        "token-aaaa"
    );
    rewrite_in_place(&path, "token-bbbb", hour_ago);
    assert_eq!(
        current_within(&token, Duration::from_secs(10)).unwrap(),
        "token-bbbb",
        "the rewritten file's token"
    );
}

/// The modification time going backwards (a clock step, a restored backup): a
/// change like any other.
#[test]
fn an_mtime_going_backwards_is_a_change() {
    let path = scratch().join("token");
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    rewrite_in_place(&path, "token-aaaa", hour_ago);
    let token = WorkloadToken::file(&path);
    assert_eq!(
        current_within(&token, Duration::from_secs(10)).unwrap(),
        "token-aaaa"
    );
    rewrite_in_place(&path, "token-cccc", hour_ago - Duration::from_secs(86_400));
    assert_eq!(
        current_within(&token, Duration::from_secs(10)).unwrap(),
        "token-cccc"
    );
}

#[derive(Default)]
struct Refusing {
    requests: AtomicUsize,
}

async fn refuse(State(s): State<Arc<Refusing>>) -> Response {
    s.requests.fetch_add(1, Ordering::SeqCst);
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "invalid_grant"})),
    )
        .into_response()
}

/// A workload token the server refuses forever, the file never rotated: a cache
/// over the grant asked 50 times makes one request per backoff period (by time),
/// not one per use; and it is never logged out.
#[tokio::test]
async fn a_token_refused_forever_makes_no_storm() {
    let server = Arc::new(Refusing::default());
    let app = Router::new()
        .route("/token", post(refuse))
        .with_state(Arc::clone(&server));
    let addr = common::serve(app).await;
    let endpoint = TokenEndpoint::new(&format!("http://{addr}/token"))
        .unwrap()
        .client_id("workload")
        .client_secret("secret");
    let path = scratch().join("token");
    std::fs::write(&path, "refused-token").unwrap();
    let cache = Refreshing::new(JwtBearer::workload(endpoint, WorkloadToken::file(&path)));
    for _ in 0..50 {
        let err = cache.token().await.unwrap_err();
        assert!(!matches!(err, Error::InvalidGrant(_)), "{err:?}");
    }
    let requests = server.requests.load(Ordering::SeqCst);
    assert!(requests <= 2, "{requests} token requests for 50 uses");
}

/// A cache over the file itself (`Refreshing::new(WorkloadToken::file(..))`): the
/// file "read again whenever it changes". An opaque token (no `exp` to go by)
/// rotated in the file is served by the cache within a bounded time, not kept
/// forever.
#[tokio::test]
async fn an_opaque_token_rotated_under_a_cache_is_seen() {
    let path = scratch().join("token");
    std::fs::write(&path, "opaque-one").unwrap();
    let cache = Refreshing::new(WorkloadToken::file(&path));
    assert_eq!(
        cache.token().await.unwrap().expose_access_token(),
        "opaque-one"
    );
    let temp = path.with_extension("tmp");
    std::fs::write(&temp, "opaque-two").unwrap();
    std::fs::rename(&temp, &path).unwrap();
    common::jwks::skip(5 * 60).await;
    assert_eq!(
        cache.token().await.unwrap().expose_access_token(),
        "opaque-two",
        "the rotated token, five minutes later"
    );
}

/// A file JWT whose `exp` is absurd (1e300, past year 9999): no panic, and the
/// cache does not hold it forever either.
#[tokio::test]
async fn an_absurd_exp_is_not_taken_as_forever() {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let jwt = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256"})),
        b64(json!({"sub": "x", "exp": 1e300}))
    );
    let path = scratch().join("token");
    std::fs::write(&path, &jwt).unwrap();
    let token = WorkloadToken::file(&path).fetch(None).await.unwrap();
    assert_eq!(token.expose_access_token(), jwt);
    let left = token.expires_in().expect("an expiry, not forever");
    assert!(left <= Duration::from_secs(24 * 3600), "{left:?}");
}
