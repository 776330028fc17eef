//! Workload identity: a token another process writes to a real file and rotates
//! (Kubernetes' projected volume, swapped through its `..data` link, and a plain
//! rewrite), used as the JWT-bearer grant's assertion and token exchange's subject
//! token against a real token endpoint on 127.0.0.1 that records what it was sent.
#![cfg(feature = "jwt")]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;
use tower_bearer::client::source::{
    token_type, ExchangeToken, JwtBearer, WorkloadToken, JWT_BEARER_GRANT, TOKEN_EXCHANGE_GRANT,
};
use tower_bearer::client::{TokenEndpoint, TokenSource};
use tower_bearer::{Error, Refreshing};

/// The token endpoint: records the assertion or subject token of each request,
/// refuses the ones in `refused` with `invalid_grant`, and, when `rotate_on_refusal`
/// names a file and a token, writes that token there before it refuses (a rotation
/// that lands while the refused request is on its way).
#[derive(Default)]
struct TokenServer {
    /// (grant type, assertion or subject token) of each request.
    seen: Mutex<Vec<(String, String)>>,
    refused: Mutex<Vec<String>>,
    rotate_on_refusal: Mutex<Option<(PathBuf, String)>>,
    issued: AtomicUsize,
}

async fn token(
    State(s): State<Arc<TokenServer>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let presented = match grant.as_str() {
        JWT_BEARER_GRANT => form.get("assertion"),
        TOKEN_EXCHANGE_GRANT => form.get("subject_token"),
        _ => None,
    }
    .cloned()
    .unwrap_or_default();
    s.seen.lock().unwrap().push((grant, presented.clone()));
    if s.refused.lock().unwrap().contains(&presented) {
        if let Some((path, newer)) = s.rotate_on_refusal.lock().unwrap().take() {
            replace_atomically(&path, &newer);
        }
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant", "error_description": "expired"})),
        )
            .into_response();
    }
    let n = s.issued.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "access_token": format!("at-{n}"), "token_type": "Bearer", "expires_in": 300,
    }))
    .into_response()
}

async fn start() -> (Arc<TokenServer>, TokenEndpoint) {
    let server = Arc::new(TokenServer::default());
    let app = Router::new()
        .route("/token", post(token))
        .with_state(Arc::clone(&server));
    let addr = common::serve(app).await;
    let endpoint = TokenEndpoint::new(&format!("http://{addr}/token"))
        .unwrap()
        .client_id("workload")
        .client_secret("workload-secret");
    (server, endpoint)
}

impl TokenServer {
    fn presented(&self) -> Vec<String> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// A new directory of this test run.
fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-workload-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A new file written whole, then renamed over `path`.
fn replace_atomically(path: &Path, text: &str) {
    let temp = path.with_extension(format!("tmp-{:x}", fastrand::u64(..)));
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// A Kubernetes projected volume as the kubelet lays it out and rotates it:
/// `token -> ..data/token`, `..data -> ..<timestamp>`, the token in the timestamped
/// directory; a rotation writes a new directory, points a temporary link at it,
/// renames that link over `..data` (atomic) and removes the old directory.
#[cfg(unix)]
struct ProjectedVolume {
    dir: PathBuf,
    current: PathBuf,
    rotations: u32,
}

#[cfg(unix)]
impl ProjectedVolume {
    fn new(token: &str) -> Self {
        let dir = scratch_dir();
        let current = Self::write_version(&dir, 0, token);
        std::os::unix::fs::symlink(current.file_name().unwrap(), dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/token", dir.join("token")).unwrap();
        ProjectedVolume {
            dir,
            current,
            rotations: 0,
        }
    }

    fn write_version(dir: &Path, n: u32, token: &str) -> PathBuf {
        let version = dir.join(format!("..2026_12_07_10_00_0{n}.12345678{n}"));
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("token"), token).unwrap();
        version
    }

    fn rotate(&mut self, token: &str) {
        self.rotations += 1;
        let next = Self::write_version(&self.dir, self.rotations, token);
        let link = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(next.file_name().unwrap(), &link).unwrap();
        std::fs::rename(&link, self.dir.join("..data")).unwrap();
        std::fs::remove_dir_all(&self.current).unwrap();
        self.current = next;
    }

    fn token_path(&self) -> PathBuf {
        self.dir.join("token")
    }
}

/// The JWT-bearer grant with a projected service-account token as its assertion:
/// the token is read through the volume's links, sent, and after the kubelet's
/// swap the new token is sent; between rotations it is the same one.
#[cfg(unix)]
#[tokio::test]
async fn a_projected_token_swapped_by_the_kubelet_is_the_next_assertion() {
    let (server, endpoint) = start().await;
    let mut volume = ProjectedVolume::new("sa-token-1\n");
    let grant = JwtBearer::workload(endpoint, WorkloadToken::file(volume.token_path()));

    grant.fetch(None).await.unwrap();
    grant.fetch(None).await.unwrap();
    volume.rotate("sa-token-2\n");
    grant.fetch(None).await.unwrap();
    volume.rotate("sa-token-3");
    // Through a cache, as an application uses it.
    let cache = Refreshing::new(grant);
    cache.token().await.unwrap();
    assert_eq!(
        server.presented(),
        ["sa-token-1", "sa-token-1", "sa-token-2", "sa-token-3"]
    );
    assert!(server
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|(grant, _)| grant == JWT_BEARER_GRANT));
}

/// Rewrites `path` in place (same inode) with `text`, and gives it back the
/// modification time `mtime`: a rewrite within one file-time tick, which only the
/// content tells apart.
fn rewrite_within_the_tick(path: &Path, text: &str, mtime: std::time::SystemTime) {
    std::fs::write(path, text).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

/// Token exchange with a subject token rewritten in place, twice in a row with
/// tokens of the same length and the same modification time (within one file-time
/// tick: only the content tells them apart; the file was read too close to its
/// last write to trust its metadata), and once atomically: each exchange sends the
/// file's token.
#[tokio::test]
async fn a_subject_token_rewritten_in_place_is_the_next_subject_token() {
    let (server, endpoint) = start().await;
    let path = scratch_dir().join("ci-oidc-token");
    std::fs::write(&path, "ci-token-a").unwrap();
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    let exchange = endpoint
        .token_exchange(ExchangeToken::workload(
            WorkloadToken::file(&path),
            token_type::JWT,
        ))
        .audience("https://storage.example.com");

    exchange.fetch(None).await.unwrap();
    rewrite_within_the_tick(&path, "ci-token-b", mtime);
    exchange.fetch(None).await.unwrap();
    rewrite_within_the_tick(&path, "ci-token-c", mtime);
    exchange.fetch(None).await.unwrap();
    replace_atomically(&path, "ci-token-longer-d");
    exchange.fetch(None).await.unwrap();
    assert_eq!(
        server.presented(),
        [
            "ci-token-a",
            "ci-token-b",
            "ci-token-c",
            "ci-token-longer-d"
        ]
    );
}

/// The file deleted (mid-rotation): the fetch fails with a clear error naming the
/// file, without a request and without quoting the old token; the next fetch
/// after it reappears sends the new token.
#[tokio::test]
async fn a_deleted_token_file_is_a_clear_error_until_it_reappears() {
    let (server, endpoint) = start().await;
    let path = scratch_dir().join("token");
    std::fs::write(&path, "tok-SECRET-1").unwrap();
    let grant = JwtBearer::workload(endpoint, WorkloadToken::file(&path));
    grant.fetch(None).await.unwrap();

    std::fs::remove_file(&path).unwrap();
    let err = grant.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::NoToken(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("missing"), "{text}");
    assert!(!text.contains("SECRET"), "{text}");
    assert_eq!(server.presented().len(), 1, "no request without a token");

    replace_atomically(&path, "tok-SECRET-2");
    grant.fetch(None).await.unwrap();
    assert_eq!(server.presented(), ["tok-SECRET-1", "tok-SECRET-2"]);
}

/// What the file must hold: one token, whitespace around it trimmed; an empty
/// file, one over the size cap, one that is not UTF-8 or holds two tokens is
/// refused with an error that names the file and never quotes it.
#[tokio::test]
async fn bad_token_files_are_refused_without_quoting_them() {
    let (server, endpoint) = start().await;
    let dir = scratch_dir();
    let refused = |name: &str, content: &[u8], max_len: Option<u64>, why: &'static str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let mut token = WorkloadToken::file(&path);
        if let Some(max) = max_len {
            token = token.max_len(max);
        }
        let err = token.current().unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::NoToken(_)), "{name}: {err:?}");
        assert!(text.contains(why), "{name}: {text}");
        assert!(text.contains(&path.display().to_string()), "{name}: {text}");
        assert!(!text.contains("SECRET"), "{name}: {text}");
    };
    refused("empty", b"", None, "is empty");
    refused("blank", b" \n\t\n", None, "is empty");
    refused("large", &[b'S'; 100], Some(64), "larger than 64 bytes");
    refused(
        "default-cap",
        &vec![b'a'; 16 * 1024 + 1],
        None,
        "larger than 16384 bytes",
    );
    refused("binary", b"tok-SECRET-\xff\xfe", None, "not UTF-8");
    refused(
        "two",
        b"tok-SECRET-a\ntok-SECRET-b\n",
        None,
        "whitespace or control characters inside",
    );
    let dir_path = dir.join("a-directory");
    std::fs::create_dir(&dir_path).unwrap();
    let err = WorkloadToken::file(&dir_path).current().unwrap_err();
    assert!(err.to_string().contains("not a regular file"), "{err}");

    // Trimmed: what is sent is the token alone.
    let path = dir.join("padded");
    std::fs::write(&path, "\n  padded-token \r\n").unwrap();
    JwtBearer::workload(endpoint, WorkloadToken::file(&path))
        .fetch(None)
        .await
        .unwrap();
    assert_eq!(server.presented(), ["padded-token"]);
}

/// A refused workload token (`invalid_grant`: expired, its rotation late) never
/// ends the source: the file is read again at once and, when the rotation landed
/// meanwhile, the newer token is sent in the same fetch; when it has not, the
/// refusal is a retryable `TokenEndpoint` error (no second request with the same
/// token), and a cache over the grant gets a token once the file is rotated.
#[tokio::test]
async fn a_refused_workload_token_is_retried_only_when_the_file_has_a_newer_one() {
    let (server, endpoint) = start().await;
    let path = scratch_dir().join("token");
    server
        .refused
        .lock()
        .unwrap()
        .extend(["expired-1".to_owned(), "expired-2".to_owned()]);

    // The rotation lands while the refused request is on its way.
    std::fs::write(&path, "expired-1").unwrap();
    *server.rotate_on_refusal.lock().unwrap() = Some((path.clone(), "fresh-1".to_owned()));
    let grant = JwtBearer::workload(endpoint.clone(), WorkloadToken::file(&path));
    grant.fetch(None).await.expect("the newer token, at once");
    assert_eq!(server.presented(), ["expired-1", "fresh-1"]);

    // No rotation: one request, and an error a cache retries.
    replace_atomically(&path, "expired-2");
    let err = grant.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::TokenEndpoint(_)), "{err:?}");
    assert_eq!(server.presented().len(), 3);

    let cache = Refreshing::builder(grant)
        .backoff(Duration::from_secs(1), Duration::from_secs(1))
        .build();
    assert!(cache.token().await.is_err());
    replace_atomically(&path, "fresh-2");
    // Past the cache's backoff, on the tokio clock.
    common::jwks::skip(2).await;
    cache
        .token()
        .await
        .expect("not logged out: the rotated token");
    assert_eq!(server.presented().last().unwrap(), "fresh-2");

    // Token exchange: a refused workload subject token is read again and tried
    // once more; a second refusal is retryable too.
    let subject_path = scratch_dir().join("subject");
    std::fs::write(&subject_path, "expired-1").unwrap();
    let exchange = endpoint.token_exchange(ExchangeToken::workload(
        WorkloadToken::file(&subject_path),
        token_type::JWT,
    ));
    let err = exchange.fetch(None).await.unwrap_err();
    assert!(matches!(err, Error::TokenEndpoint(_)), "{err:?}");
    replace_atomically(&subject_path, "fresh-3");
    exchange.fetch(None).await.unwrap();
    assert_eq!(server.presented().last().unwrap(), "fresh-3");
}

/// The workload token is a token source of its own: a JWT's `exp` is the token's
/// expiry, and a cache over it serves the file's token.
#[tokio::test]
async fn the_workload_token_is_a_token_source() {
    use base64::Engine as _;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = common::server::now_plus(3600);
    let jwt = format!(
        "{}.{}.c2ln",
        b64(json!({"alg": "RS256"})),
        b64(json!({"sub": "system:serviceaccount:ns:sa", "exp": exp}))
    );
    let path = scratch_dir().join("token");
    std::fs::write(&path, format!("{jwt}\n")).unwrap();
    let token = WorkloadToken::file(&path).fetch(None).await.unwrap();
    assert_eq!(token.expose_access_token(), jwt);
    let left = token.expires_in().expect("the JWT's exp");
    assert!(left > Duration::from_secs(3500) && left <= Duration::from_secs(3600));
    let cache = Refreshing::new(WorkloadToken::file(&path));
    assert_eq!(cache.token().await.unwrap().expose_access_token(), jwt);
}
