//! A second review of the one-machine single flight (issue 30): interactive logins
//! through `generate_tokens` run as real processes on one token file, and the
//! shared source's records and guards against real files and a real token server on
//! 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tower_bearer::client::{FileStore, TokenSource, TokenStore};
use tower_bearer::{Error, ExposeSecret, Lineage, Token};

fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-review2-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `generate_tokens -u alice --token-url <url> --token-file <path> --password-stdin`,
/// its stdin left open (the test writes the password when it wants).
fn cli(url: &str, path: &Path, extra: &[&str]) -> Child {
    let path = path.display().to_string();
    let mut args = vec![
        "-u",
        "alice",
        "--token-url",
        url,
        "--token-file",
        path.as_str(),
    ];
    args.extend_from_slice(extra);
    Command::new(common::bins::example_binary("generate_tokens"))
        .args(&args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn type_in(child: &mut Child, text: &str) {
    let mut input = child.stdin.take().unwrap();
    input.write_all(text.as_bytes()).await.unwrap();
    drop(input);
}

/// Waits (with a deadline) until another open file holds the lock on `lock`.
async fn until_locked(lock: &Path) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(file) = std::fs::OpenOptions::new().read(true).open(lock) {
                if matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock)) {
                    return;
                }
                // Locked by us for an instant: let go at once.
                drop(file);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("nobody took the lock");
}

/// Waits for the line saying the process waits for another one's login.
async fn until_waiting(child: &mut Child) -> BufReader<tokio::process::ChildStderr> {
    let mut err = BufReader::new(child.stderr.take().unwrap());
    tokio::time::timeout(Duration::from_secs(20), async {
        let mut line = String::new();
        loop {
            line.clear();
            assert_ne!(err.read_line(&mut line).await.unwrap(), 0, "no notice");
            if line.contains("Waiting for another process") {
                return;
            }
        }
    })
    .await
    .expect("the second process never said it waits");
    err
}

struct Ended {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn ended(
    mut child: Child,
    stderr: Option<BufReader<tokio::process::ChildStderr>>,
    limit: Duration,
) -> Ended {
    let mut out = child.stdout.take().unwrap();
    let mut err_pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match stderr {
        Some(r) => Box::new(r),
        None => Box::new(child.stderr.take().unwrap()),
    };
    tokio::time::timeout(limit, async move {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        use tokio::io::AsyncReadExt;
        let (a, b) = tokio::join!(
            out.read_to_string(&mut stdout),
            err_pipe.read_to_string(&mut stderr)
        );
        a.unwrap();
        b.unwrap();
        let status = child.wait().await.unwrap();
        Ended {
            ok: status.success(),
            stdout,
            stderr,
        }
    })
    .await
    .expect("the process did not end")
}

fn expired(rt: &str) -> Token {
    Token::bearer("at-old")
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token(rt)
        .with_lineage(Lineage::next())
}

// ------------------------------------------------------------ interactive logins

/// The process logging in (its password prompt open) is killed: the one waiting
/// takes over and logs in itself, well before its 30-minute wait ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_killed_midway_is_taken_over_by_the_waiter() {
    let s = common::start().await;
    let dir = temp_dir("killed");
    let path = dir.join("alice.json");
    let url = s.token_url();
    let mut a = cli(&url, &path, &["--password-stdin"]);
    until_locked(&dir.join("alice.json.refresh")).await;
    let mut b = cli(&url, &path, &["--password-stdin"]);
    type_in(&mut b, "wonderland\n").await;
    let b_err = until_waiting(&mut b).await;
    a.start_kill().unwrap();
    let _ = a.wait().await;
    let b = ended(b, Some(b_err), Duration::from_secs(20)).await;
    assert!(b.ok, "{}", b.stderr);
    assert!(
        b.stdout.starts_with("export APP_ACCESS_TOKEN='at-"),
        "{}",
        b.stdout
    );
    assert_eq!(*s.idp.grants.lock().unwrap(), ["password"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The process logging in types a wrong password: it fails in one line; the one
/// waiting then asks (reads) its own password and logs in, never reporting the
/// other's wrong password as its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_in_the_holder_lets_the_waiter_log_in_itself() {
    let s = common::start().await;
    let dir = temp_dir("refused");
    let path = dir.join("alice.json");
    let url = s.token_url();
    let mut a = cli(&url, &path, &["--password-stdin"]);
    until_locked(&dir.join("alice.json.refresh")).await;
    let mut b = cli(&url, &path, &["--password-stdin"]);
    type_in(&mut b, "wonderland\n").await;
    let b_err = until_waiting(&mut b).await;
    type_in(&mut a, "wrong\n").await;
    let a = ended(a, None, Duration::from_secs(20)).await;
    assert!(!a.ok);
    assert_eq!(a.stderr.lines().count(), 1, "{}", a.stderr);
    assert!(
        a.stderr.contains("wrong user name or password"),
        "{}",
        a.stderr
    );
    let b = ended(b, Some(b_err), Duration::from_secs(20)).await;
    assert!(b.ok, "{}", b.stderr);
    assert_eq!(*s.idp.grants.lock().unwrap(), ["password", "password"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The file's refresh token was refused in another process (an agent sharing the
/// file got `invalid_grant`, recorded in `P.refresh`): the session is over, and
/// `generate_tokens` is how the user logs in again. It must ask for the password,
/// not fail with "wrong user name or password" before asking (every run alike).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_refused_elsewhere_can_be_logged_into_again() {
    let s = common::start().await;
    let dir = temp_dir("relogin");
    let path = dir.join("alice.json");
    let url = s.token_url();
    let store = FileStore::at(&path, "alice", url.as_str());
    let old = expired("rt-revoked");
    store.save(&old).await.unwrap();
    // An agent sharing the file: its refresh is refused, and recorded.
    let agent = store.shared(common::endpoint_at(&url).refresh_token("unused"));
    let refused = agent.fetch(Some(&old)).await.unwrap_err();
    assert!(matches!(refused, Error::InvalidGrant(_)), "{refused:?}");

    let mut c = cli(&url, &path, &["--password-stdin"]);
    type_in(&mut c, "wonderland\n").await;
    let c = ended(c, None, Duration::from_secs(20)).await;
    assert!(c.ok, "{}", c.stderr);
    assert!(
        c.stdout.starts_with("export APP_ACCESS_TOKEN='at-"),
        "{}",
        c.stdout
    );
    let saved = store.load().await.unwrap().unwrap();
    assert!(!saved.is_expired());
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------ the drop guard

/// A fetch dropped while its refreshed token waits for the write lock (a caller's
/// timeout): the token, the refresh lock and the claim go back to the source. If
/// that process fetches nothing more (idle), the lock must still be let go once the
/// token is written, or every other process sharing the file waits out its
/// deadline on each refresh, for as long as the idle process lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_cancelled_mid_write_lets_the_refresh_lock_go_without_another_fetch() {
    let s = common::start_rotating().await;
    let dir = temp_dir("cancel");
    let path = dir.join("alice.json");
    let url = s.token_url();
    let store = FileStore::at(&path, "alice", url.as_str());
    let old = expired("rt-0");
    store.save(&old).await.unwrap();
    // Another process holds the write lock for a moment.
    let writer = std::fs::File::open(dir.join("alice.json.lock")).unwrap();
    writer.lock().unwrap();
    let a = store
        .shared(common::endpoint_at(&url).refresh_token("unused"))
        .wait_timeout(Duration::from_secs(5));
    {
        let mut fetch = Box::pin(a.fetch(Some(&old)));
        // Driven until the provider answered, then a little more: it waits for the
        // write lock.
        tokio::time::timeout(Duration::from_secs(10), async {
            while s.idp.refresh_seen.lock().unwrap().is_empty() {
                let polled = tokio::time::timeout(Duration::from_millis(10), &mut fetch).await;
                assert!(polled.is_err(), "finished under the write lock: {polled:?}");
            }
        })
        .await
        .unwrap();
        let polled = tokio::time::timeout(Duration::from_millis(200), &mut fetch).await;
        assert!(polled.is_err(), "finished under the write lock: {polled:?}");
    }
    drop(writer);
    // Nobody fetches through `a` again; the refresh lock must be let go.
    let refresh = std::fs::File::open(dir.join("alice.json.refresh")).unwrap();
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match refresh.try_lock() {
                Ok(()) => return,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(e) => panic!("{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the refresh lock is still held by an idle source after its token's write"
    );
    refresh.unlock().unwrap();
    let saved = store.load().await.unwrap().unwrap();
    assert!(!saved.is_expired());
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["rt-0"]);
    drop(a);
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------ the records

/// README: "Every refresh token … rotated is recorded and presented by no process
/// again, even after the token file is deleted." After more rotations than the
/// record keeps (a long-running session: 32), a process still holding the first
/// token, the file deleted, must not present its spent refresh token (a provider
/// revoking the family on reuse would log everyone out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_spent_long_ago_is_not_presented_after_the_file_is_deleted() {
    let s = common::start_rotating().await;
    let dir = temp_dir("long");
    let path = dir.join("alice.json");
    let url = s.token_url();
    let store = FileStore::at(&path, "alice", url.as_str());
    let first = expired("rt-0");
    store.save(&first).await.unwrap();
    let a = store.shared(common::endpoint_at(&url).refresh_token("unused"));
    let mut held = first.clone();
    for _ in 0..40 {
        held = a.fetch(Some(&held)).await.unwrap();
        // Expired at once: the next fetch refreshes.
        held = Token::bearer(held.access_token().expose_secret())
            .unwrap()
            .with_expires_in(Duration::ZERO)
            .with_refresh_token(held.refresh_token().unwrap().expose_secret())
            .with_lineage(held.lineage());
    }
    assert_eq!(s.idp.refresh_seen.lock().unwrap().len(), 40);
    std::fs::remove_file(&path).unwrap();
    let b = store.shared(common::endpoint_at(&url).refresh_token("unused"));
    let got = b.fetch(Some(&first)).await;
    let seen = s.idp.refresh_seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().filter(|rt| *rt == "rt-0").count(),
        1,
        "rt-0 presented again after the file was deleted: {got:?}"
    );
    assert!(got.is_err(), "{got:?}");
    // The newest token, still held, is written back by its refresh.
    let back = a.fetch(Some(&held)).await;
    assert!(back.is_ok(), "{back:?}");
    std::fs::remove_dir_all(dir).unwrap();
}

// ------------------------------------------------------------ the README's promises

/// README: "A file that cannot be read … stops refreshing (an error, never a refresh
/// alone) until it is fixed." The token file replaced by something unreadable as a
/// file (a directory: the tests run as root, where modes do not stop a read): a
/// process holding a token with a live refresh token gets an error and the token
/// endpoint is not called; once the file is back, it refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_file_stops_the_refresh_until_it_is_fixed() {
    let s = common::start_rotating().await;
    let dir = temp_dir("unreadable");
    let path = dir.join("alice.json");
    let url = s.token_url();
    let store = FileStore::at(&path, "alice", url.as_str());
    let first = expired("rt-0");
    store.save(&first).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let a = store.shared(common::endpoint_at(&url).refresh_token("unused"));
    for _ in 0..3 {
        let got = a.fetch(Some(&first)).await;
        assert!(matches!(got, Err(Error::TokenFile(_))), "{got:?}");
    }
    assert!(s.idp.refresh_seen.lock().unwrap().is_empty());
    std::fs::remove_dir(&path).unwrap();
    store.save(&first).await.unwrap();
    let got = a.fetch(Some(&first)).await;
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(*s.idp.refresh_seen.lock().unwrap(), ["rt-0"]);
    std::fs::remove_dir_all(dir).unwrap();
}
