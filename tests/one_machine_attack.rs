//! Attacks on the cross-process single flight over a token file (issue 30): each test
//! is a way the shared file could be made to present a refresh token twice, to lose
//! a logout, or to turn a final answer into a retry. Real files, a real token server
//! on 127.0.0.1 (rotating refresh tokens, revoking the family on reuse), and two
//! sources on one path where that is enough (the OS locks are per open file, so two
//! sources in one process exclude each other as two processes do).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use secrecy::ExposeSecret;
use tower_bearer::client::{FileStore, SharedFileSource, TokenEndpoint, TokenSource, TokenStore};
use tower_bearer::{Error, Lineage, Token};

const ISSUER: &str = "https://idp.test";

// ---------------------------------------------------------------- token server

#[derive(Default)]
struct Provider {
    valid: HashMap<String, u64>,
    spent: HashMap<String, u64>,
    next: u64,
    reuse: u64,
    /// Every grant presented: the refresh token, or `password`.
    presented: Vec<String>,
    lifetime_s: u64,
}

#[derive(Clone)]
struct Server {
    url: String,
    state: Arc<Mutex<Provider>>,
    /// While set, a refresh that rotated waits for it before answering.
    gate: Arc<Mutex<Option<Arc<tokio::sync::Notify>>>>,
}

async fn token(State(s): State<Server>, Form(form): Form<HashMap<String, String>>) -> Response {
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    let answer = {
        let mut p = s.state.lock().unwrap();
        if grant == "password" {
            p.presented.push("password".into());
            None
        } else {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            p.presented.push(rt.clone());
            if let Some(family) = p.valid.remove(&rt) {
                p.spent.insert(rt, family);
                p.next += 1;
                let fresh = format!("rt-{}", p.next);
                p.valid.insert(fresh.clone(), family);
                Some(serde_json::json!({
                    "access_token": format!("at-{}", p.next),
                    "token_type": "Bearer",
                    "expires_in": p.lifetime_s,
                    "refresh_token": fresh,
                }))
            } else {
                if let Some(&family) = p.spent.get(&rt) {
                    p.reuse += 1;
                    p.valid.retain(|_, f| *f != family);
                }
                None
            }
        }
    };
    match answer {
        Some(body) => {
            let gate = s.gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Json(body).into_response()
        }
        None => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "invalid_grant"})),
        )
            .into_response(),
    }
}

impl Server {
    async fn start(lifetime_s: u64) -> Server {
        let server = Server {
            url: String::new(),
            state: Arc::new(Mutex::new(Provider {
                lifetime_s,
                ..Provider::default()
            })),
            gate: Arc::new(Mutex::new(None)),
        };
        server.state.lock().unwrap().valid.insert("rt-0".into(), 0);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/token", post(token))
            .with_state(server.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server { url, ..server }
    }

    fn presented(&self) -> Vec<String> {
        self.state.lock().unwrap().presented.clone()
    }

    fn reuse(&self) -> u64 {
        self.state.lock().unwrap().reuse
    }

    /// Until the provider has seen `n` grants (bounded).
    async fn until_presented(&self, n: usize) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while self.presented().len() < n {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the provider never saw the grant");
    }
}

// ---------------------------------------------------------------- helpers

fn temp_dir(name: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-attack-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn store_at(path: &Path) -> FileStore {
    FileStore::at(path, "alice", ISSUER)
}

fn endpoint(server: &Server) -> TokenEndpoint {
    TokenEndpoint::new(&server.url).unwrap().client_id("cli")
}

fn shared(path: &Path, server: &Server) -> SharedFileSource<impl TokenSource> {
    store_at(path)
        .shared(endpoint(server).refresh_token("unused-seed"))
        .wait_timeout(Duration::from_secs(5))
        .claim_wait(Duration::from_secs(3))
}

fn held(rt: &str) -> Token {
    Token::bearer("at-held")
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token(rt)
        .with_lineage(Lineage::next())
}

/// The file's first token: `rt-0`, expired.
async fn seed(path: &Path) -> Token {
    let token = held("rt-0");
    store_at(path).save(&token).await.unwrap();
    token
}

fn access(t: &Token) -> String {
    t.access_token().expose_secret().to_owned()
}

// ---------------------------------------------------------------- known defects

/// A login (nothing presented: no token in the file, none held) refused with
/// `invalid_grant` is that refusal, final: not "superseded" (retryable), which would
/// have a cache send the wrong password again and again.
#[tokio::test]
async fn a_refused_login_stays_a_final_invalid_grant() {
    let server = Server::start(3600).await;
    let dir = temp_dir("login");
    let path = dir.join("alice.json");
    let source = store_at(&path).shared(endpoint(&server).password("alice", "wrong"));
    let err = source.fetch(None).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidGrant(_)) && !err.is_retryable(),
        "{err:?}"
    );
    // Asked again, the password is sent again (a person may have fixed it? no: the
    // source is the same; but nothing was recorded against a refresh token).
    assert_eq!(server.presented(), ["password"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Two processes hold two different dead refresh tokens and the file is gone: each
/// presents its own once; retried, each is refused from the record, not by the
/// provider again (principle 3: no storm).
#[tokio::test]
async fn two_dead_refresh_tokens_are_each_presented_once() {
    let server = Server::start(3600).await;
    let dir = temp_dir("two-dead");
    let path = dir.join("alice.json");
    let (a, b) = (shared(&path, &server), shared(&path, &server));
    let (dead_a, dead_b) = (held("dead-a"), held("dead-b"));
    for _ in 0..3 {
        assert!(a.fetch(Some(&dead_a)).await.is_err());
        assert!(b.fetch(Some(&dead_b)).await.is_err());
    }
    assert_eq!(server.presented(), ["dead-a", "dead-b"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A process still holding a token whose refresh token another process spent (it
/// wrote the rotated one), after the file was deleted: it must not present the
/// spent refresh token (the provider would revoke the whole family, the other
/// process's newest token with it).
#[tokio::test]
async fn a_spent_refresh_token_is_not_presented_after_the_file_is_deleted() {
    let server = Server::start(3600).await;
    let dir = temp_dir("spent");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let (a, b) = (shared(&path, &server), shared(&path, &server));
    let newer = a.fetch(Some(&first)).await.unwrap();
    assert_eq!(access(&newer), "at-1");
    std::fs::remove_file(&path).unwrap();
    // b still holds rt-0, spent by a.
    let got = b.fetch(Some(&first)).await;
    assert_eq!(server.reuse(), 0, "rt-0 presented again: {got:?}");
    assert!(got.is_err(), "{got:?}");
    // a, holding the newest, refreshes and writes it back; b then adopts it.
    let mut newest = newer.clone();
    newest = Token::bearer(access(&newest))
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token("rt-1")
        .with_lineage(newest.lineage());
    let back = a.fetch(Some(&newest)).await.unwrap();
    assert_eq!(access(&back), "at-2");
    assert_eq!(access(&b.fetch(Some(&first)).await.unwrap()), "at-2");
    assert_eq!(server.presented(), ["rt-0", "rt-1"]);
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- the lock files

/// `P.refresh` deleted while a holder has it (a person cleaning the directory): a new
/// process makes a new lock file and locks it, two holders at once, unless the loss
/// of the claim is noticed. The newcomer must not present the refresh token the
/// holder is presenting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_lock_file_deleted_while_held_does_not_make_two_holders() {
    let server = Server::start(3600).await;
    let dir = temp_dir("rm-refresh");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    *server.gate.lock().unwrap() = Some(gate.clone());
    let a = shared(&path, &server);
    let b = shared(&path, &server);
    let holder = {
        let first = first.clone();
        tokio::spawn(async move { a.fetch(Some(&first)).await })
    };
    server.until_presented(1).await;
    std::fs::remove_file(format!("{}.refresh", path.display())).unwrap();
    let taker = {
        let first = first.clone();
        tokio::spawn(async move { b.fetch(Some(&first)).await })
    };
    // The holder's answer comes after the taker has had every chance to present.
    tokio::time::sleep(Duration::from_millis(300)).await;
    *server.gate.lock().unwrap() = None;
    gate.notify_one();
    let (h, t) = (holder.await.unwrap(), taker.await.unwrap());
    assert_eq!(server.presented(), ["rt-0"], "{h:?} {t:?}");
    assert_eq!(access(&h.unwrap()), "at-1");
    assert_eq!(access(&t.unwrap()), "at-1");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A waiter that opened `P.refresh` before it was deleted locks the old file when
/// its holder lets go, while a newcomer holds the new one: after taking the lock, a
/// process checks that it locked the file at the path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_on_a_deleted_refresh_lock_file_does_not_hold_it_beside_a_newcomer() {
    let server = Server::start(3600).await;
    let dir = temp_dir("rm-refresh-waiter");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let lock_path = format!("{}.refresh", path.display());
    // A holder that has presented nothing yet (another process's lock).
    let old = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    old.lock().unwrap();
    let gate = Arc::new(tokio::sync::Notify::new());
    *server.gate.lock().unwrap() = Some(gate.clone());
    let quick = |p: &Path| {
        store_at(p)
            .shared(endpoint(&server).refresh_token("unused-seed"))
            .wait_timeout(Duration::from_secs(10))
            .claim_wait(Duration::from_secs(1))
    };
    let (b, c) = (quick(&path), quick(&path));
    // The waiter opens the lock file and finds it held.
    let mut waiter = Box::pin({
        let first = first.clone();
        async move { b.fetch(Some(&first)).await }
    });
    assert!(futures_util::poll!(&mut waiter).is_pending());
    let waiter = tokio::spawn(waiter);
    std::fs::remove_file(&lock_path).unwrap();
    // A newcomer makes a new lock file, takes it, and presents rt-0 (held at the
    // provider by the gate).
    let newcomer = {
        let first = first.clone();
        tokio::spawn(async move { c.fetch(Some(&first)).await })
    };
    server.until_presented(1).await;
    // The old holder lets go: the waiter must not take the deleted file's lock.
    drop(old);
    // Time for a second presentation, if one is coming (none should).
    for _ in 0..100 {
        if server.presented().len() > 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *server.gate.lock().unwrap() = None;
    gate.notify_one();
    let (w, n) = (waiter.await.unwrap(), newcomer.await.unwrap());
    assert_eq!(server.presented(), ["rt-0"], "{w:?} {n:?}");
    assert_eq!(access(&w.unwrap()), "at-1");
    assert_eq!(access(&n.unwrap()), "at-1");
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- logouts

/// A logout while the file is gone (deleted, as a person or a disk might): the
/// processes still holding the session's token must see the logout, not write their
/// token back (a logout racing the others leaves no live token behind).
#[tokio::test]
async fn a_logout_while_the_file_is_deleted_still_ends_the_session_elsewhere() {
    let server = Server::start(3600).await;
    let dir = temp_dir("logout-deleted");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let b = shared(&path, &server);
    let got = b.fetch(Some(&first)).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    // Logout in another process.
    store_at(&path).clear().await.unwrap();
    let expired = Token::bearer(access(&got))
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token("rt-1")
        .with_lineage(got.lineage());
    let after = b.fetch(Some(&expired)).await;
    assert!(matches!(after, Err(Error::NoToken(_))), "{after:?}");
    assert_eq!(server.presented(), ["rt-0"], "refreshed after the logout");
    assert!(store_at(&path).load().await.unwrap().is_none());
    std::fs::remove_dir_all(dir).unwrap();
}

/// A logout after a logout is a logout; a save of an older token after it is kept
/// out; a new login (newer lineage) replaces it; and a refresh that started before
/// the logout does not write over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tombstone_holds_against_older_saves_and_running_refreshes() {
    let server = Server::start(3600).await;
    let dir = temp_dir("tombstone");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let store = store_at(&path);
    let gate = Arc::new(tokio::sync::Notify::new());
    *server.gate.lock().unwrap() = Some(gate.clone());
    let a = shared(&path, &server);
    let running = {
        let first = first.clone();
        tokio::spawn(async move { a.fetch(Some(&first)).await })
    };
    server.until_presented(1).await;
    store.clear().await.unwrap();
    store.clear().await.unwrap();
    *server.gate.lock().unwrap() = None;
    gate.notify_one();
    let r = running.await.unwrap();
    assert!(matches!(r, Err(Error::NoToken(_))), "{r:?}");
    assert!(store.load().await.unwrap().is_none());
    store.save(&first).await.unwrap();
    assert!(
        store.load().await.unwrap().is_none(),
        "an older token passed"
    );
    let login = Token::bearer("at-login")
        .unwrap()
        .with_lineage(Lineage::next());
    store.save(&login).await.unwrap();
    assert_eq!(
        access(
            &store
                .load()
                .await
                .unwrap()
                .expect("a new login was kept out")
        ),
        "at-login"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- real processes

const CHILD: &str = "ONE_MACHINE_ATTACK_CHILD";

/// In a child: a line for the parent.
fn say(line: &str) {
    println!(">{line}");
}

/// A child process: this test binary running the test `name` with `mode`.
fn child(name: &str, mode: &str, env: &[(&str, String)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD, mode)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// The next line the child printed that starts with `>`, without the marker.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the child said nothing for 60 s")
            .unwrap()
            .expect("the child ended");
        if let Some(rest) = line.strip_prefix('>') {
            return rest.to_owned();
        }
    }
}

/// A process that refreshes through the shared file once, prints what it got, and
/// then waits (holding whatever it holds) until its input ends.
#[test]
fn child_refresh_once() {
    if std::env::var(CHILD).ok().as_deref() != Some("refresh_once") {
        return;
    }
    let path = PathBuf::from(std::env::var("ATTACK_PATH").unwrap());
    let url = std::env::var("ATTACK_URL").unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = store_at(&path);
        let source = store.shared(
            TokenEndpoint::new(&url)
                .unwrap()
                .client_id("cli")
                .refresh_token("unused-seed"),
        );
        let current = store.load().await.unwrap();
        let got = source.fetch(current.as_ref()).await;
        say(&match &got {
            Ok(t) => format!("ok {}", access(t)),
            Err(e) => format!("err {e}"),
        });
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        drop(source);
    });
}

/// A holder that got the provider's answer (the refresh token rotated) but could not
/// write it (the disk refused) holds the lock and serves the token; killed then, its
/// claim names a refresh token that is certainly spent. The next process must not
/// present it after the claim's wait (a certain reuse: the provider revokes the
/// family); the session's newest token died with the holder, so it is a final
/// refusal, not a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_after_the_answer_leaves_its_refresh_token_spent() {
    use tokio::io::AsyncBufReadExt;
    let server = Server::start(3600).await;
    let dir = temp_dir("killed-after-answer");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    // The write lock's file is a directory: every write of the file fails.
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();
    let mut holder = child(
        "child_refresh_once",
        "refresh_once",
        &[
            ("ATTACK_PATH", path.display().to_string()),
            ("ATTACK_URL", server.url.clone()),
        ],
    );
    let mut lines = tokio::io::BufReader::new(holder.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, "ok at-1");
    holder.kill().await.unwrap();
    std::fs::remove_dir(&lock).unwrap();
    let taker = store_at(&path)
        .shared(endpoint(&server).refresh_token("unused-seed"))
        .claim_wait(Duration::from_millis(500));
    let got = taker.fetch(Some(&first)).await;
    assert_eq!(server.presented(), ["rt-0"], "{got:?}");
    assert!(
        matches!(&got, Err(e) if !e.is_retryable()),
        "a session whose newest token is lost: {got:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A fetch dropped (cancelled: a caller's timeout) while it writes a token whose
/// first write failed: the token, the refresh lock and the claim stay with the
/// source (the refresh token it spent is not left to another process), and the next
/// fetch writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_fetch_does_not_lose_the_token_it_was_writing() {
    let server = Server::start(3600).await;
    let dir = temp_dir("cancel");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();
    let a = shared(&path, &server);
    let got = a.fetch(Some(&first)).await.unwrap();
    assert_eq!(access(&got), "at-1");
    // The next fetch writes it first (waiting for the write lock, which another
    // process holds now); dropped in the middle.
    std::fs::remove_dir(&lock).unwrap();
    let writer = std::fs::File::create(&lock).unwrap();
    writer.lock().unwrap();
    {
        let mut again = Box::pin(a.fetch(Some(&got)));
        assert!(futures_util::poll!(&mut again).is_pending());
    }
    let other = std::fs::File::open(format!("{}.refresh", path.display())).unwrap();
    assert!(
        matches!(other.try_lock(), Err(std::fs::TryLockError::WouldBlock)),
        "the refresh lock was let go with the token unwritten"
    );
    drop(writer);
    assert_eq!(access(&a.fetch(Some(&first)).await.unwrap()), "at-1");
    assert_eq!(
        access(&store_at(&path).load().await.unwrap().unwrap()),
        "at-1"
    );
    assert_eq!(server.presented(), ["rt-0"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `P.refresh` planted as a symbolic link to another file (in a shared directory
/// such as `/tmp`, another user can plant it before the first run): the claim is
/// written into whatever the link names, truncating it. A lock file that is a link
/// is refused, loudly, and the file it names is left as it is.
#[cfg(unix)]
#[tokio::test]
async fn a_lock_file_planted_as_a_symbolic_link_is_refused() {
    let server = Server::start(3600).await;
    let dir = temp_dir("symlink");
    let path = dir.join("alice.json");
    let victim = dir.join("precious.txt");
    std::fs::write(&victim, "precious").unwrap();
    std::os::unix::fs::symlink(&victim, format!("{}.refresh", path.display())).unwrap();
    let first = held("rt-0");
    let a = shared(&path, &server);
    let got = a.fetch(Some(&first)).await;
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious",
        "{got:?}"
    );
    assert!(matches!(got, Err(Error::TokenFile(_))), "{got:?}");
    assert!(server.presented().is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

// ---------------------------------------------------------------- the watcher, the clock

/// What is not a logout does not end a cache's session: the file deleted, the file
/// replaced by another user's logout. Our own logout then does (the watcher was
/// watching all along).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_takes_no_lost_file_and_no_other_users_logout_for_a_logout() {
    let server = Server::start(3600).await;
    let dir = temp_dir("watcher");
    let path = dir.join("alice.json");
    seed(&path).await;
    let store = store_at(&path);
    let cache = tower_bearer::Refreshing::builder(shared(&path, &server))
        .store(store.clone())
        .build();
    assert_eq!(access(&cache.token().await.unwrap()), "at-1");
    // Lost data, not a logout.
    std::fs::remove_file(&path).unwrap();
    // Another user's logout on this path.
    let bob = serde_json::json!({
        "version": 1, "username": "bob", "issuer": ISSUER, "generation": 9,
        "logged_out": {"at_ms": 1, "lineage": Lineage::next().as_micros()},
    });
    std::fs::write(&path, serde_json::to_vec(&bob).unwrap()).unwrap();
    // Several of the watcher's looks (it looks every 100 ms).
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            access(&cache.token().await.expect("a false logout")),
            "at-1"
        );
    }
    // Ours: the session ends here too (bounded).
    std::fs::remove_file(&path).unwrap();
    store.clear().await.unwrap();
    let mut ended = false;
    for _ in 0..200 {
        if cache.token().await.is_err() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(ended, "the logout was not seen");
    assert_eq!(server.presented(), ["rt-0"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// Nobody waits without a deadline, under a paused clock too: a waiter behind a
/// holder that never lets go gives up at `wait_timeout`.
#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_at_its_deadline_under_a_paused_clock() {
    let server = Server::start(3600).await;
    let dir = temp_dir("paused");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let stuck = std::fs::File::open(format!("{}.refresh", path.display())).unwrap();
    stuck.lock().unwrap();
    let source = store_at(&path)
        .shared(endpoint(&server).refresh_token("unused-seed"))
        .wait_timeout(Duration::from_secs(60));
    let started = tokio::time::Instant::now();
    let got = source.fetch(Some(&first)).await;
    assert!(matches!(got, Err(Error::Store(_))), "{got:?}");
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert!(server.presented().is_empty());
    drop(stuck);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A token whose write failed is written again in the background; a logout that
/// lands before that retry wins: the retry does not bring the session back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_retry_does_not_resurrect_a_session_logged_out_meanwhile() {
    let server = Server::start(3600).await;
    let dir = temp_dir("retry-logout");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();
    let a = shared(&path, &server);
    assert_eq!(access(&a.fetch(Some(&first)).await.unwrap()), "at-1");
    // The disk works again; a logout lands first.
    std::fs::remove_dir(&lock).unwrap();
    store_at(&path).clear().await.unwrap();
    // The background retry runs (every second) and lets the refresh lock go.
    let refresh = std::fs::File::open(format!("{}.refresh", path.display())).unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while refresh.try_lock().is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the background retry never let the lock go");
    assert!(
        store_at(&path).load().await.unwrap().is_none(),
        "resurrected"
    );
    let after = a.fetch(Some(&first)).await;
    assert!(matches!(after, Err(Error::NoToken(_))), "{after:?}");
    assert_eq!(server.presented(), ["rt-0"]);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A claim dated far in the future (a clock set wrong, or junk) holds a taker for
/// the claim's wait at most, never longer; a claim that is junk, or huge, reads as
/// no claim.
#[tokio::test(start_paused = true)]
async fn a_claim_from_the_future_or_of_junk_holds_nobody_past_the_claim_wait() {
    let server = Server::start(3600).await;
    let dir = temp_dir("future-claim");
    let path = dir.join("alice.json");
    let first = seed(&path).await;
    let claim = serde_json::json!({
        "pid": 1, "owner": "1-elsewhere",
        "presents": tower_bearer::client::source::Presented::of("rt-0").to_hex(),
        "at_ms": u64::MAX / 2,
    });
    let refresh = format!("{}.refresh", path.display());
    std::fs::write(&refresh, serde_json::to_vec(&claim).unwrap()).unwrap();
    let source = store_at(&path)
        .shared(endpoint(&server).refresh_token("unused-seed"))
        .claim_wait(Duration::from_secs(30))
        .wait_timeout(Duration::from_secs(5));
    let started = tokio::time::Instant::now();
    let got = source.fetch(Some(&first)).await.unwrap();
    assert_eq!(access(&got), "at-1");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(31),
        "{waited:?}"
    );
    // Junk, and a huge file (sparse: 1 GiB of zeros), read as no claim: no wait.
    for (rt, junk) in [
        ("rt-1", &b"{\"pid\": [1, 2"[..]),
        ("rt-2", &[0xff, 0xfe][..]),
    ] {
        std::fs::write(&refresh, junk).unwrap();
        let expired = held(rt);
        let started = tokio::time::Instant::now();
        let got = source.fetch(Some(&expired)).await;
        assert!(got.is_ok(), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let huge = std::fs::OpenOptions::new()
        .write(true)
        .open(&refresh)
        .unwrap();
    huge.set_len(1 << 30).unwrap();
    drop(huge);
    let got = source.fetch(Some(&held("rt-3"))).await;
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(server.presented(), ["rt-0", "rt-1", "rt-2", "rt-3"]);
    assert_eq!(server.reuse(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}
