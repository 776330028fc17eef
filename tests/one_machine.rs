//! Several processes on one machine sharing one token file (issue 30): real files,
//! real processes (this test binary run again as a child, told what to do by
//! `ONE_MACHINE_CHILD`), and a real token server on 127.0.0.1 that rotates refresh
//! tokens and revokes the whole family when one is presented twice.
//!
//! Every `child_*` test returns at once when `ONE_MACHINE_CHILD` is not set, so it
//! passes as a normal test too.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use secrecy::ExposeSecret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tower_bearer::client::{FileStore, TokenEndpoint, TokenSource, TokenStore};
use tower_bearer::{Error, Lineage, Refreshing, Token};

const ISSUER: &str = "https://idp.test";
const CHILD: &str = "ONE_MACHINE_CHILD";

// ---------------------------------------------------------------- token server

#[derive(Default)]
struct Provider {
    /// Refresh token -> family.
    valid: HashMap<String, u64>,
    /// Refresh tokens spent (rotated), with their family.
    spent: HashMap<String, u64>,
    revoked_families: HashSet<u64>,
    next: u64,
    requests: u64,
    reuse: u64,
    /// Each refresh token presented, in order, with when (wall clock).
    presented: Vec<(String, SystemTime)>,
    /// The next refresh is rotated at the provider but never answered.
    hang_next: bool,
    /// Whether a reuse revokes the family.
    revoke_on_reuse: bool,
    lifetime_s: u64,
}

type Shared = Arc<Mutex<Provider>>;
/// What the provider runs once before it refuses a spent refresh token.
type Hook = Arc<Mutex<Option<Box<dyn FnOnce() + Send>>>>;

struct Server {
    url: String,
    state: Shared,
    /// Runs before the provider answers `invalid_grant` for a spent refresh token.
    on_reuse: Hook,
    /// A refresh answered after this is notified (when set).
    gate: Arc<Mutex<Option<Arc<tokio::sync::Notify>>>>,
}

#[derive(Clone)]
struct AppState {
    state: Shared,
    on_reuse: Hook,
    gate: Arc<Mutex<Option<Arc<tokio::sync::Notify>>>>,
}

async fn token(State(app): State<AppState>, Form(form): Form<HashMap<String, String>>) -> Response {
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    let (answer, hang) = {
        let mut p = app.state.lock().unwrap();
        p.requests += 1;
        p.presented.push((rt.clone(), SystemTime::now()));
        if let Some(family) = p.valid.remove(&rt) {
            p.spent.insert(rt.clone(), family);
            p.next += 1;
            let fresh = format!("rt-{}", p.next);
            p.valid.insert(fresh.clone(), family);
            let body = serde_json::json!({
                "access_token": format!("at-{}", p.next),
                "token_type": "Bearer",
                "expires_in": p.lifetime_s,
                "refresh_token": fresh,
            });
            let hang = std::mem::take(&mut p.hang_next);
            (Ok(body), hang)
        } else {
            if let Some(&family) = p.spent.get(&rt) {
                p.reuse += 1;
                if p.revoke_on_reuse {
                    p.revoked_families.insert(family);
                    p.valid.retain(|_, f| *f != family);
                }
            }
            (Err(()), false)
        }
    };
    match answer {
        Ok(body) => {
            if hang {
                std::future::pending::<()>().await;
            }
            let gate = app.gate.lock().unwrap().clone();
            if let Some(gate) = gate {
                gate.notified().await;
            }
            Json(body).into_response()
        }
        Err(()) => {
            let hook = app.on_reuse.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
            (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "invalid_grant"})),
            )
                .into_response()
        }
    }
}

impl Server {
    async fn start(lifetime_s: u64) -> Server {
        let state: Shared = Arc::new(Mutex::new(Provider {
            revoke_on_reuse: true,
            lifetime_s,
            ..Provider::default()
        }));
        state.lock().unwrap().valid.insert("rt-0".into(), 0);
        let app_state = AppState {
            state: state.clone(),
            on_reuse: Arc::new(Mutex::new(None)),
            gate: Arc::new(Mutex::new(None)),
        };
        let app = Router::new()
            .route("/token", post(token))
            .with_state(app_state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Server {
            url: format!("http://{addr}/token"),
            state,
            on_reuse: app_state.on_reuse,
            gate: app_state.gate,
        }
    }

    fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    fn reuse(&self) -> u64 {
        self.state.lock().unwrap().reuse
    }

    fn presentations_of(&self, rt: &str) -> Vec<SystemTime> {
        let p = self.state.lock().unwrap();
        p.presented
            .iter()
            .filter(|(r, _)| r == rt)
            .map(|(_, at)| *at)
            .collect()
    }
}

fn endpoint(url: &str) -> TokenEndpoint {
    TokenEndpoint::new(url).unwrap().client_id("cli")
}

// ---------------------------------------------------------------- helpers

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-one-machine-{name}-{}-{}",
        std::process::id(),
        fastrand_u64()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_u64() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn store_at(path: &Path) -> FileStore {
    FileStore::at(path, "alice", ISSUER)
}

/// Writes the file's first token: `rt-0`, expired, so that the first fetch refreshes.
async fn seed(path: &Path) -> Token {
    let token = Token::bearer("at-0")
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token("rt-0")
        .with_lineage(Lineage::next());
    store_at(path).save(&token).await.unwrap();
    token
}

/// A child process: this test binary running the test `name` with `mode`.
fn child(name: &str, mode: &str, env: &[(&str, String)]) -> Child {
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
    cmd.spawn().unwrap()
}

struct Io {
    stdin: ChildStdin,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Io {
    fn of(child: &mut Child) -> Io {
        Io {
            stdin: child.stdin.take().unwrap(),
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
        }
    }

    async fn send(&mut self, line: &str) {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The next line the child printed that starts with `>` (the test harness prints
    /// its own lines too), without the marker.
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
}

/// Ends a child: its input closed, its output read to the end, its exit awaited.
async fn end(mut child: Child, io: Io) {
    let Io { stdin, mut lines } = io;
    drop(stdin);
    while let Ok(Ok(Some(_))) =
        tokio::time::timeout(Duration::from_secs(10), lines.next_line()).await
    {}
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

async fn end_all(procs: Vec<(Child, Io)>) {
    for (child, io) in procs {
        end(child, io).await;
    }
}

/// In a child: a line for the parent.
fn say(line: &str) {
    println!(">{line}");
}

/// In a child: the next line from the parent (None at the end).
fn hear() -> Option<String> {
    let mut line = String::new();
    match std::io::stdin().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_owned()),
    }
}

fn child_mode() -> Option<String> {
    std::env::var(CHILD).ok()
}

fn var(name: &str) -> String {
    std::env::var(name).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn describe(result: &Result<Token, Error>) -> String {
    match result {
        Ok(t) => format!("ok {}", t.access_token().expose_secret()),
        Err(e) => format!("err {}", kind(e)),
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::InvalidGrant(_) => "invalid_grant",
        Error::NoToken(_) => "no_token",
        Error::TokenFile(_) => "token_file",
        Error::Store(_) => "store",
        Error::Superseded(_) => "superseded",
        _ => "other",
    }
}

// ---------------------------------------------------------------- the children

/// Saves the token the parent names on each line: `<round> <lineage>`.
#[test]
fn child_saver() {
    if child_mode().as_deref() != Some("saver") {
        return;
    }
    let store = store_at(Path::new(&var("ONE_MACHINE_PATH")));
    let who = var("ONE_MACHINE_WHO");
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

/// A process sharing the token file: on each line from the parent, fetches a token
/// newer than the one it holds through `SharedFileSource` and prints it.
#[test]
fn child_sharer() {
    if child_mode().as_deref() != Some("sharer") {
        return;
    }
    let store = store_at(Path::new(&var("ONE_MACHINE_PATH")));
    let claim_wait: u64 = var("ONE_MACHINE_CLAIM_WAIT_MS").parse().unwrap();
    let shared = store
        .shared(endpoint(&var("ONE_MACHINE_URL")).refresh_token("unused-seed"))
        .claim_wait(Duration::from_millis(claim_wait));
    runtime().block_on(async {
        let mut current = store.load().await.unwrap();
        say("ready");
        while let Some(_line) = hear() {
            let result = shared.fetch(current.as_ref()).await;
            say(&describe(&result));
            if let Ok(t) = result {
                current = Some(t);
            }
        }
    });
}

/// A process holding the refresh lock of the file (as a holder that has not
/// presented anything yet) until it is killed.
#[test]
fn child_lock_holder() {
    if child_mode().as_deref() != Some("lock_holder") {
        return;
    }
    let mut path = var("ONE_MACHINE_PATH");
    path.push_str(".refresh");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    file.lock().unwrap();
    say("locked");
    let _ = hear();
    drop(file);
}

/// A process with a `Refreshing` cache over `SharedFileSource` (and the file as its
/// store): prints its token, then on each line prints what `token()` gives, and on
/// "watch" waits (bounded) until the token is no longer served.
#[test]
fn child_cache() {
    if child_mode().as_deref() != Some("cache") {
        return;
    }
    let store = store_at(Path::new(&var("ONE_MACHINE_PATH")));
    let shared = store.shared(endpoint(&var("ONE_MACHINE_URL")).refresh_token("unused-seed"));
    runtime().block_on(async {
        let cache = Refreshing::builder(shared).store(store.clone()).build();
        say(&describe(&cache.token().await));
        while let Some(line) = hear() {
            if line == "watch" {
                // Until the logout seen elsewhere ends the token here (bounded).
                let mut last = cache.token().await;
                for _ in 0..400 {
                    if last.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    last = cache.token().await;
                }
                say(&describe(&last));
            } else {
                say(&describe(&cache.token().await));
            }
        }
    });
}

/// Logs out through the file: `FileStore::clear`.
#[test]
fn child_logout() {
    if child_mode().as_deref() != Some("logout") {
        return;
    }
    let store = store_at(Path::new(&var("ONE_MACHINE_PATH")));
    let result = runtime().block_on(store.clear());
    say(&format!("{:?}", result.map_err(|e| kind(&e))));
}

// ---------------------------------------------------------------- the tests

fn lineage_in_file(path: &Path) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["token"]["lineage"].as_u64().unwrap_or(0)
}

/// Two processes save tokens of different lineages at the same moment, 300 times:
/// the newer one is in the file after every round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saves_in_two_processes_never_leave_the_older_token() {
    let dir = temp_dir("race");
    let path = dir.join("alice.json");
    let env = [("ONE_MACHINE_PATH", path.display().to_string())];
    let mut older = child(
        "child_saver",
        "saver",
        &[env[0].clone(), ("ONE_MACHINE_WHO", "older".into())],
    );
    let mut newer = child(
        "child_saver",
        "saver",
        &[env[0].clone(), ("ONE_MACHINE_WHO", "newer".into())],
    );
    let (mut a, mut b) = (Io::of(&mut older), Io::of(&mut newer));
    let base = Lineage::next().as_micros();
    let mut kept_older = 0;
    for round in 0..300u64 {
        let (old, new) = (base + round * 10 + 1, base + round * 10 + 2);
        let (to_a, to_b) = (format!("{round} {old}"), format!("{round} {new}"));
        tokio::join!(a.send(&to_a), b.send(&to_b));
        let (x, y) = tokio::join!(a.next(), b.next());
        assert_eq!(
            (x.as_str(), y.as_str()),
            (&*format!("saved {round}"), &*format!("saved {round}"))
        );
        if lineage_in_file(&path) != new {
            kept_older += 1;
        }
    }
    end(older, a).await;
    end(newer, b).await;
    assert_eq!(
        kept_older, 0,
        "the older token was left in the file in {kept_older} of 300 rounds"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Bob's logout on a path that holds Alice's file refuses, and leaves it.
#[tokio::test]
async fn a_logout_never_deletes_another_users_file() {
    let dir = temp_dir("owner");
    let path = dir.join("work.json");
    let alice = store_at(&path);
    alice
        .save(&Token::bearer("alice-at").unwrap())
        .await
        .unwrap();
    let bob = FileStore::at(&path, "bob", ISSUER);
    let cleared = bob.clear().await;
    assert!(
        matches!(cleared, Err(Error::TokenFile(_))),
        "bob's logout on alice's file: {cleared:?}"
    );
    let kept = alice
        .load()
        .await
        .unwrap()
        .expect("alice's file was deleted");
    assert_eq!(kept.access_token().expose_secret(), "alice-at");
    // Another issuer is another owner too.
    let other = FileStore::at(&path, "alice", "https://other.test");
    assert!(matches!(other.clear().await, Err(Error::TokenFile(_))));
    assert!(alice.load().await.unwrap().is_some());
    std::fs::remove_dir_all(dir).unwrap();
}

async fn sharers(n: usize, path: &Path, server: &Server, claim_wait_ms: u64) -> Vec<(Child, Io)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = child(
            "child_sharer",
            "sharer",
            &[
                ("ONE_MACHINE_PATH", path.display().to_string()),
                ("ONE_MACHINE_URL", server.url.clone()),
                ("ONE_MACHINE_CLAIM_WAIT_MS", claim_wait_ms.to_string()),
            ],
        );
        let mut io = Io::of(&mut c);
        assert_eq!(io.next().await, "ready");
        out.push((c, io));
    }
    out
}

/// Five processes that all need a newer token at once, five times: one token request
/// per round between them, every process gets the same token, no refresh token is
/// presented twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_sharing_a_file_refresh_once_between_them() {
    let server = Server::start(3600).await;
    let dir = temp_dir("flight");
    let path = dir.join("alice.json");
    seed(&path).await;
    let mut procs = sharers(5, &path, &server, 10_000).await;
    for round in 1..=5u64 {
        for (_, io) in procs.iter_mut() {
            io.send("fetch").await;
        }
        let mut got = Vec::new();
        for (_, io) in procs.iter_mut() {
            got.push(io.next().await);
        }
        let first = got[0].clone();
        assert!(first.starts_with("ok at-"), "round {round}: {got:?}");
        assert!(got.iter().all(|g| *g == first), "round {round}: {got:?}");
        assert_eq!(server.requests(), round, "round {round}: {got:?}");
    }
    assert_eq!(server.reuse(), 0);
    end_all(procs).await;
    std::fs::remove_dir_all(dir).unwrap();
}

fn kill(child: &Child) {
    let pid = child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A holder killed after it presented the refresh token (the provider rotated it, the
/// answer never reached the file): the next process waits out the claim, and adopts a
/// token that arrives meanwhile instead of presenting the refresh token again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_left_by_a_killed_holder_is_waited_out() {
    let server = Server::start(3600).await;
    let dir = temp_dir("claim");
    let path = dir.join("alice.json");
    seed(&path).await;
    server.state.lock().unwrap().hang_next = true;
    let mut procs = sharers(2, &path, &server, 30_000).await;
    let (holder, taker) = procs.split_at_mut(1);
    let (holder, holder_io) = &mut holder[0];
    let (_, taker_io) = &mut taker[0];
    holder_io.send("fetch").await;
    // Until the provider has the request (and rotated rt-0).
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.presentations_of("rt-0").is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    kill(holder);
    let _ = holder.wait().await;
    taker_io.send("fetch").await;
    // The taker holds the refresh lock and waits out the claim: it has not presented.
    let refresh = PathBuf::from(format!("{}.refresh", path.display()));
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let f = std::fs::File::open(&refresh).unwrap();
            match f.try_lock() {
                Err(std::fs::TryLockError::WouldBlock) => break,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the taker never took the refresh lock");
    assert_eq!(server.presentations_of("rt-0").len(), 1);
    // The answer of the holder's refresh arrives after all (another process wrote
    // it): the taker adopts it.
    let late = Token::bearer("at-late")
        .unwrap()
        .with_expires_in(Duration::from_secs(3600))
        .with_refresh_token("rt-1")
        .with_lineage(Lineage::next());
    store_at(&path).save(&late).await.unwrap();
    assert_eq!(taker_io.next().await, "ok at-late");
    assert_eq!(
        server.presentations_of("rt-0").len(),
        1,
        "rt-0 presented again"
    );
    assert_eq!(server.reuse(), 0);
    end_all(procs).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// With no token coming, the taker presents the refresh token again only after the
/// claim's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_holders_claim_delays_the_next_presentation_by_the_claim_wait() {
    let server = Server::start(3600).await;
    server.state.lock().unwrap().revoke_on_reuse = false;
    let dir = temp_dir("claim-wait");
    let path = dir.join("alice.json");
    seed(&path).await;
    server.state.lock().unwrap().hang_next = true;
    let mut procs = sharers(2, &path, &server, 1500).await;
    let (holder, taker) = procs.split_at_mut(1);
    let (holder, holder_io) = &mut holder[0];
    let (_, taker_io) = &mut taker[0];
    holder_io.send("fetch").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.presentations_of("rt-0").is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    kill(holder);
    let _ = holder.wait().await;
    // The claim the dead holder left: when it presented rt-0.
    let claim = std::fs::read(format!("{}.refresh", path.display())).unwrap();
    let claimed_ms = serde_json::from_slice::<serde_json::Value>(&claim).unwrap()["at_ms"]
        .as_u64()
        .expect("no claim left");
    taker_io.send("fetch").await;
    let answer = taker_io.next().await;
    let times = server.presentations_of("rt-0");
    assert_eq!(times.len(), 2, "{answer}");
    let again_ms = times[1].duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    assert!(
        again_ms >= claimed_ms + 1500,
        "presented again {} ms after the dead holder's claim, before the claim's wait",
        again_ms.saturating_sub(claimed_ms)
    );
    end_all(procs).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A holder killed before it presented anything leaves no claim: the next process
/// refreshes without waiting the claim's 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_killed_before_presenting_costs_no_wait() {
    let server = Server::start(3600).await;
    let dir = temp_dir("no-claim");
    let path = dir.join("alice.json");
    seed(&path).await;
    let mut holder = child(
        "child_lock_holder",
        "lock_holder",
        &[("ONE_MACHINE_PATH", path.display().to_string())],
    );
    let mut holder_io = Io::of(&mut holder);
    assert_eq!(holder_io.next().await, "locked");
    let mut procs = sharers(1, &path, &server, 30_000).await;
    let (_, taker_io) = &mut procs[0];
    taker_io.send("fetch").await;
    kill(&holder);
    let _ = holder.wait().await;
    let answer = tokio::time::timeout(Duration::from_secs(20), taker_io.next())
        .await
        .expect("waited on a claim nobody made");
    assert!(answer.starts_with("ok at-"), "{answer}");
    assert_eq!(server.requests(), 1);
    end_all(procs).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// `invalid_grant` for a refresh token another process spent: the file's newer token
/// (written meanwhile) is adopted, never a logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_grant_after_another_process_rotated_adopts_its_token() {
    let server = Server::start(3600).await;
    server.state.lock().unwrap().revoke_on_reuse = false;
    let dir = temp_dir("adopt");
    let path = dir.join("alice.json");
    let ours = seed(&path).await;
    // Another process spent rt-0 (got rt-1), and writes its token while ours is
    // refused.
    let theirs = endpoint(&server.url)
        .refresh_token("rt-0")
        .fetch(None)
        .await
        .unwrap();
    let theirs_at = theirs.access_token().expose_secret().to_owned();
    let writer = store_at(&path);
    *server.on_reuse.lock().unwrap() = Some(Box::new(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || rt.block_on(writer.save(&theirs)).unwrap())
            .join()
            .unwrap();
    }));
    let shared = store_at(&path).shared(endpoint(&server.url).refresh_token("unused"));
    let got = shared.fetch(Some(&ours)).await;
    assert_eq!(describe(&got), format!("ok {theirs_at}"));
    std::fs::remove_dir_all(dir).unwrap();
}

fn file_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A logout in one process: the file becomes a tombstone, and the cache of another
/// process stops serving its token and then gives the logout error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_in_one_process_ends_the_session_in_the_others() {
    let server = Server::start(3600).await;
    let dir = temp_dir("logout");
    let path = dir.join("alice.json");
    seed(&path).await;
    let env = [
        ("ONE_MACHINE_PATH", path.display().to_string()),
        ("ONE_MACHINE_URL", server.url.clone()),
    ];
    let mut cache = child("child_cache", "cache", &env);
    let mut cache_io = Io::of(&mut cache);
    let first = cache_io.next().await;
    assert!(first.starts_with("ok at-"), "{first}");
    let mut logout = child("child_logout", "logout", &env);
    let mut logout_io = Io::of(&mut logout);
    assert_eq!(logout_io.next().await, "Ok(())");
    logout.wait().await.unwrap();
    let json = file_json(&path);
    assert!(json.get("token").is_none(), "{json}");
    assert!(json.get("logged_out").is_some(), "{json}");
    assert!(store_at(&path).load().await.unwrap().is_none());
    cache_io.send("watch").await;
    assert_eq!(cache_io.next().await, "err no_token");
    assert_eq!(server.requests(), 1);
    end(cache, cache_io).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A logout while another process's refresh is at the provider: the refresh's
/// answer is not written over the tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_racing_a_refresh_leaves_no_live_token() {
    let server = Server::start(3600).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    *server.gate.lock().unwrap() = Some(gate.clone());
    let dir = temp_dir("logout-race");
    let path = dir.join("alice.json");
    seed(&path).await;
    let mut procs = sharers(1, &path, &server, 10_000).await;
    let (_, io) = &mut procs[0];
    io.send("fetch").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while server.presentations_of("rt-0").is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let mut logout = child(
        "child_logout",
        "logout",
        &[("ONE_MACHINE_PATH", path.display().to_string())],
    );
    let mut logout_io = Io::of(&mut logout);
    assert_eq!(logout_io.next().await, "Ok(())");
    logout.wait().await.unwrap();
    gate.notify_one();
    let answer = io.next().await;
    assert_eq!(answer, "err no_token");
    let json = file_json(&path);
    assert!(
        json.get("token").is_none(),
        "a live token after the logout: {json}"
    );
    assert!(store_at(&path).load().await.unwrap().is_none());
    end_all(procs).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A write that fails: the token is served, the refresh lock and the claim stay held
/// (nobody else presents the spent refresh token), and it is written once the disk
/// works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_keeps_the_lock_and_the_claim_until_it_is_written() {
    let server = Server::start(3600).await;
    let dir = temp_dir("write-fails");
    let path = dir.join("alice.json");
    let seeded = seed(&path).await;
    // The write lock's file is a directory: reads work, writes fail.
    let lock = PathBuf::from(format!("{}.lock", path.display()));
    let _ = std::fs::remove_file(&lock);
    std::fs::create_dir(&lock).unwrap();
    let shared = store_at(&path).shared(endpoint(&server.url).refresh_token("unused"));
    let got = shared.fetch(Some(&seeded)).await;
    assert_eq!(describe(&got), "ok at-1");
    // Not in the file, and the refresh lock is held, its claim in place.
    assert_eq!(file_json(&path)["token"]["access_token"], "at-0");
    let refresh = PathBuf::from(format!("{}.refresh", path.display()));
    let other = std::fs::File::open(&refresh).unwrap();
    assert!(matches!(
        other.try_lock(),
        Err(std::fs::TryLockError::WouldBlock)
    ));
    let presents = |refresh: &Path| {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(refresh).unwrap())
            .ok()
            .and_then(|claim| claim.get("presents").cloned())
    };
    assert!(presents(&refresh).is_some(), "no claim");
    // The disk works again: the next fetch writes it first.
    std::fs::remove_dir(&lock).unwrap();
    let again = shared.fetch(got.as_ref().ok()).await;
    assert_eq!(describe(&again), "ok at-1");
    assert_eq!(file_json(&path)["token"]["access_token"], "at-1");
    assert!(other.try_lock().is_ok(), "the refresh lock is still held");
    // Ended: nothing presented any more (the record of the spent one kept).
    assert!(presents(&refresh).is_none(), "the claim stayed");
    assert_eq!(server.requests(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// The watcher task `Refreshing` runs for `ended_elsewhere` ends with the cache.
#[tokio::test]
async fn the_logout_watcher_ends_when_the_cache_is_dropped() {
    struct Watched(
        Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
        Arc<std::sync::atomic::AtomicBool>,
    );
    impl TokenSource for Watched {
        fn fetch<'a>(
            &'a self,
            _previous: Option<&'a Token>,
        ) -> futures_util::future::BoxFuture<'a, Result<Token, Error>> {
            Box::pin(async {
                Token::bearer("x").map(|t| t.with_expires_in(Duration::from_secs(600)))
            })
        }
        fn ended_elsewhere(&self) -> Option<futures_util::future::BoxFuture<'static, ()>> {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
            let guard = self.0.lock().unwrap().take();
            Some(Box::pin(async move {
                let _guard = guard;
                std::future::pending::<()>().await
            }))
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cache = Refreshing::new(Watched(Mutex::new(Some(tx)), called.clone()));
    cache.token().await.unwrap();
    // The watcher runs: its future (holding the sender) is alive.
    let mut rx = rx;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        called.load(std::sync::atomic::Ordering::SeqCst),
        "no watcher ran"
    );
    assert!(
        matches!(
            rx.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        ),
        "no watcher ran"
    );
    drop(cache);
    tokio::time::timeout(Duration::from_secs(5), rx)
        .await
        .expect("the watcher outlived the cache")
        .unwrap_err();
}

/// A waiter behind a holder that never finishes gives up at its deadline with a
/// retryable error; it never refreshes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_behind_a_stuck_holder_gives_up_at_its_deadline() {
    let server = Server::start(3600).await;
    let dir = temp_dir("stuck");
    let path = dir.join("alice.json");
    let seeded = seed(&path).await;
    let mut holder = child(
        "child_lock_holder",
        "lock_holder",
        &[("ONE_MACHINE_PATH", path.display().to_string())],
    );
    let mut holder_io = Io::of(&mut holder);
    assert_eq!(holder_io.next().await, "locked");
    let shared = store_at(&path)
        .shared(endpoint(&server.url).refresh_token("unused"))
        .wait_timeout(Duration::from_millis(300));
    let got = shared.fetch(Some(&seeded)).await;
    assert!(matches!(got, Err(Error::Store(_))), "{}", describe(&got));
    assert!(got.unwrap_err().is_retryable());
    assert_eq!(server.requests(), 0);
    end(holder, holder_io).await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The shared source never refreshes over a file of another user, nor presents a
/// refresh token that was refused before (recorded beside the file, for every
/// process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_file_and_a_refused_refresh_token_stop_the_refresh() {
    let server = Server::start(3600).await;
    let dir = temp_dir("refused");
    let path = dir.join("alice.json");
    let seeded = seed(&path).await;
    let bob = FileStore::at(&path, "bob", ISSUER).shared(endpoint(&server.url).refresh_token("x"));
    assert!(matches!(bob.fetch(None).await, Err(Error::TokenFile(_))));
    assert_eq!(server.requests(), 0);
    // rt-0 is dead at the provider.
    server.state.lock().unwrap().valid.clear();
    let one = store_at(&path).shared(endpoint(&server.url).refresh_token("x"));
    let two = store_at(&path).shared(endpoint(&server.url).refresh_token("x"));
    assert_eq!(
        describe(&one.fetch(Some(&seeded)).await),
        "err invalid_grant"
    );
    assert_eq!(
        describe(&two.fetch(Some(&seeded)).await),
        "err invalid_grant"
    );
    assert_eq!(
        server.requests(),
        1,
        "a refused refresh token was presented again"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A deleted file is lost data, not a logout: the next refresh uses the process's
/// own (newest) refresh token and writes its token back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_is_written_back_by_the_next_refresh() {
    let server = Server::start(3600).await;
    let dir = temp_dir("deleted");
    let path = dir.join("alice.json");
    let seeded = seed(&path).await;
    let shared = store_at(&path).shared(endpoint(&server.url).refresh_token("unused"));
    let first = shared.fetch(Some(&seeded)).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let second = shared.fetch(Some(&first)).await;
    assert_eq!(describe(&second), "ok at-2");
    assert_eq!(file_json(&path)["token"]["access_token"], "at-2");
    assert_eq!(server.presentations_of("rt-1").len(), 1);
    assert_eq!(server.reuse(), 0);
    std::fs::remove_dir_all(dir).unwrap();
}
