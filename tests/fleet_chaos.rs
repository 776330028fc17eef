//! Fleet chaos (issue 13, "Token lineage"): replicas in separate processes share
//! rotating refresh tokens through a real Redis while faults are injected at random.
//!
//! The test owns everything it breaks: a `redis-server` of its own on a free loopback
//! port (so that restarting it empty disturbs no other test), a token server and an
//! API (axum on 127.0.0.1) in this process, and six `fleet_replica` processes: four
//! for "alice" and two for "bob", two identities on the same Redis. The token server
//! rotates refresh tokens and refuses a reused one; for bob it also revokes the whole
//! token family on reuse, as strict providers do.
//!
//! Faults, chosen by a PRNG whose seed is printed first (`CHAOS_SEED=N` replays the
//! schedule; the processes' timing is real and varies):
//! - `slow`: a token answer delayed past the lock TTL (the holder renews its lock);
//! - `pause`: the lock holder SIGSTOPped at its token request, past its lock TTL (by
//!   0.2–0.5 s: less than the one lock TTL a replica that lost the race waits for the
//!   holder to publish), then SIGCONTed (its answer waits for it);
//! - `kill`: the lock holder SIGKILLed at its token request (then restarted), either
//!   before the provider rotated (the fleet must take over after the lock TTL) or after
//!   (the new refresh token died with it: the lineage is lost, a "login" follows);
//! - `redis-restart`: `SHUTDOWN NOSAVE`, then the same port again, empty;
//! - `save-fail`: at a token request, Redis refuses every write for a while
//!   (`min-replicas-to-write 1`, a real `NOREPLICAS` error) so the holder cannot share
//!   the token it just got.
//!
//! It asserts: no replica is logged out while its identity has a live token (none
//! answers `invalid_grant` for longer than a recovery takes, one lock TTL, one token
//! lifetime and a second, while its login is alive; every replica gets through at the
//! end of a quiet settle phase); no request carries another identity's token; every
//! refresh-token reuse falls in a window a fault explains; token requests stay within
//! the expiries plus a budget per fault. One `chaos:` line sums
//! it up, printed past the harness's capture like the seed; on failure the message
//! lists every failed assertion and a timeline (faults, reuses, logins, and when
//! each replica started and stopped answering `invalid_grant`).
//!
//! `CHAOS_VERBOSE=1` prints the timeline even when the test passes.
//! `CHAOS_SECS` changes the fault phase (default 40 s; the whole test takes about
//! 45 s when it passes, at most about 90 s); `CHAOS_FAULTS=slow,kill` injects only
//! those kinds (the schedule of a seed stays the same, minus the others).
//!
//! Needs `redis-server` (`.ci/run` installs it): without it the test skips loudly,
//! except under `CI`, where it fails.
#![cfg(all(feature = "redis", unix))]

mod common;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;

/// `expires_in` of every access token.
const LIFETIME: Duration = Duration::from_secs(2);
/// The replicas' `--refresh-before`: a token is refreshed 1.5 s after it is issued.
const REFRESH_BEFORE: Duration = Duration::from_millis(500);
/// The replicas' `--lock-ttl`.
const LOCK_TTL: Duration = Duration::from_millis(1200);
/// How long the settle phase waits at most for every replica to get through.
const SETTLE_LIMIT: Duration = Duration::from_secs(25);
/// The identities, their replica count, and whether a reuse revokes the family.
const IDENTITIES: [(&str, usize, bool); 2] = [("alice", 4, false), ("bob", 2, true)];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Straight to stderr, past the test harness's output capture.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn replicas_of(identity: &str) -> usize {
    IDENTITIES
        .iter()
        .find(|(name, _, _)| *name == identity)
        .map_or(0, |(_, n, _)| *n)
}

fn all_replicas() -> usize {
    IDENTITIES.iter().map(|(_, n, _)| n).sum()
}

/// Token requests a reuse by `identity` may cost beyond one per expiry: each replica
/// presents the spent token once, and once more (a refresh after the `401` of its
/// revoked access token) where the provider revokes the family.
fn reuse_budget(identity: &str) -> u64 {
    let revokes = IDENTITIES.iter().any(|(n, _, r)| *n == identity && *r);
    replicas_of(identity) as u64 * if revokes { 2 } else { 1 }
}

/// Sends `SIG{name}` to `pid` (the `kill` utility: no libc binding needed).
fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------
// The token server and the API
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RtState {
    Live,
    Spent,
    Revoked,
}

/// One login: a lineage of refresh tokens.
struct Family {
    identity: &'static str,
    /// The refresh token the login gave (what replicas start from).
    seed: String,
    started: Instant,
    /// When and why no live token of this family is within the fleet's reach.
    lost: Option<(Instant, &'static str)>,
}

/// A fault armed for the next valid token request of `identity`.
#[derive(Clone, Copy, Debug)]
enum Armed {
    Slow(Duration),
    Pause(Duration),
    Kill { commit: bool },
    SaveFail(Duration),
}

/// Where a refresh-token reuse is expected: a fault made it unavoidable.
struct Window {
    identity: Option<&'static str>,
    from: Instant,
    until: Option<Instant>,
}

/// A fault that took effect.
struct Fired {
    at: Instant,
    kind: &'static str,
    identity: Option<&'static str>,
    /// Token requests it may cost beyond one per expiry.
    budget: u64,
    note: String,
}

struct Reuse {
    at: Instant,
    identity: &'static str,
    replica: String,
}

#[derive(Default)]
struct Counts {
    token_requests: u64,
    rotations: u64,
    invalid_grant: u64,
    revoked_presented: u64,
    unknown_presented: u64,
    api_requests: u64,
    api_ok: u64,
    api_unauthorized: u64,
    wrong_identity: u64,
}

struct ServerState {
    families: Vec<Family>,
    /// The family each identity is logged in with now.
    current: HashMap<&'static str, usize>,
    refresh: HashMap<String, (usize, RtState)>,
    access: HashMap<String, (usize, Instant)>,
    next: u64,
    armed: Option<(&'static str, Armed)>,
    /// Replica name -> (identity, pid of its current process).
    replicas: HashMap<String, (&'static str, u32)>,
    /// Replicas the chaos killed, for the supervisor to restart.
    killed: Vec<String>,
    counts: Counts,
    reuses: Vec<Reuse>,
    windows: Vec<Window>,
    fired: Vec<Fired>,
    wrong: Vec<String>,
    timeline: Vec<(Instant, String)>,
}

struct Chaos {
    state: Mutex<ServerState>,
    redis_url: String,
    epoch: Instant,
}

impl Chaos {
    fn new(redis_url: String) -> Self {
        Chaos {
            state: Mutex::new(ServerState {
                families: Vec::new(),
                current: HashMap::new(),
                refresh: HashMap::new(),
                access: HashMap::new(),
                next: 1,
                armed: None,
                replicas: HashMap::new(),
                killed: Vec::new(),
                counts: Counts::default(),
                reuses: Vec::new(),
                windows: Vec::new(),
                fired: Vec::new(),
                wrong: Vec::new(),
                timeline: Vec::new(),
            }),
            redis_url,
            epoch: Instant::now(),
        }
    }

    fn st(&self) -> MutexGuard<'_, ServerState> {
        lock(&self.state)
    }

    /// A new login for `identity`: a new family whose seed refresh token is live.
    fn login(&self, identity: &'static str) -> String {
        let mut st = self.st();
        let n = st.next;
        st.next += 1;
        let family = st.families.len();
        let seed = format!("rt-{identity}-f{family}-{n}");
        st.families.push(Family {
            identity,
            seed: seed.clone(),
            started: Instant::now(),
            lost: None,
        });
        st.current.insert(identity, family);
        st.refresh.insert(seed.clone(), (family, RtState::Live));
        // A login ends the window of the lineage it replaces.
        let now = Instant::now();
        for w in st.windows.iter_mut() {
            if w.identity == Some(identity) && w.until.is_none() {
                w.until = Some(now + Duration::from_secs(1));
            }
        }
        st.timeline
            .push((now, format!("login {identity} family {family}")));
        seed
    }

    fn seed_of(&self, identity: &str) -> String {
        let st = self.st();
        let family = st.current[identity];
        st.families[family].seed.clone()
    }

    /// Identities whose current lineage has been lost for a token lifetime: time
    /// for the fleet to run into it, and for an operator to log in again.
    fn relogin_due(&self) -> Vec<&'static str> {
        let st = self.st();
        IDENTITIES
            .iter()
            .map(|(n, _, _)| *n)
            .filter(|n| {
                st.families[st.current[n]]
                    .lost
                    .is_some_and(|(at, _)| at.elapsed() >= LIFETIME)
            })
            .collect()
    }

    fn note(&self, what: String) {
        self.st().timeline.push((Instant::now(), what));
    }

    fn fire(
        &self,
        st: &mut ServerState,
        kind: &'static str,
        identity: Option<&'static str>,
        budget: u64,
        note: String,
    ) {
        let at = Instant::now();
        st.timeline.push((
            at,
            format!(
                "fault {kind} {} {note}",
                identity.unwrap_or("(all identities)")
            ),
        ));
        st.fired.push(Fired {
            at,
            kind,
            identity,
            budget,
            note,
        });
    }

    fn secs(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.epoch).as_secs_f64()
    }
}

fn oauth_error(code: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({"error": code, "error_description": format!("chaos says {code}")})),
    )
        .into_response()
}

/// Sends SIGCONT when dropped: a paused replica is resumed even if the answer that
/// was to resume it is cancelled.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

/// What the token handler does once the state is unlocked.
enum Then {
    Refuse(&'static str),
    Answer {
        family: usize,
        refresh: String,
        fault: Option<Armed>,
        pid: Option<u32>,
    },
    KillBeforeRotation(Option<u32>),
}

async fn token(
    AxumState(chaos): AxumState<Arc<Chaos>>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let replica = form.get("fleet_replica").cloned().unwrap_or_default();
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return oauth_error("unsupported_grant_type");
    }
    let then = {
        let mut guard = chaos.st();
        let st = &mut *guard;
        st.counts.token_requests += 1;
        let (asker, pid) = st
            .replicas
            .get(&replica)
            .map_or((None, None), |(i, p)| (Some(*i), Some(*p)));
        match st.refresh.get(&presented).copied() {
            None => {
                st.counts.unknown_presented += 1;
                Then::Refuse("invalid_grant")
            }
            Some((family, state)) => {
                let identity = st.families[family].identity;
                if asker.is_some_and(|a| a != identity) {
                    st.counts.wrong_identity += 1;
                    st.wrong.push(format!(
                        "{replica} ({}) presented a refresh token of {identity}",
                        asker.unwrap_or("?")
                    ));
                }
                match state {
                    RtState::Revoked => {
                        st.counts.revoked_presented += 1;
                        Then::Refuse("invalid_grant")
                    }
                    RtState::Spent => {
                        let now = Instant::now();
                        st.reuses.push(Reuse {
                            at: now,
                            identity,
                            replica: replica.clone(),
                        });
                        let revoke = IDENTITIES.iter().any(|(n, _, r)| *n == identity && *r);
                        let mut what = format!("reuse by {replica} of a {identity} refresh token");
                        if revoke {
                            for (f, s) in st.refresh.values_mut() {
                                if *f == family {
                                    *s = RtState::Revoked;
                                }
                            }
                            st.access.retain(|_, (f, _)| *f != family);
                            if st.families[family].lost.is_none() {
                                st.families[family].lost = Some((now, "family revoked"));
                            }
                            what.push_str(": the family is revoked");
                        }
                        st.timeline.push((now, what));
                        Then::Refuse("invalid_grant")
                    }
                    RtState::Live => {
                        let armed = st.armed.filter(|(i, _)| *i == identity).map(|(_, a)| a);
                        if armed.is_some() {
                            st.armed = None;
                        }
                        if let Some(Armed::Kill { commit: false }) = armed {
                            chaos.fire(
                                st,
                                "kill",
                                Some(identity),
                                1,
                                format!("{replica} before the rotation"),
                            );
                            st.killed.push(replica.clone());
                            Then::KillBeforeRotation(pid)
                        } else {
                            st.refresh
                                .insert(presented.clone(), (family, RtState::Spent));
                            let n = st.next;
                            st.next += 1;
                            let fresh = format!("rt-{identity}-f{family}-{n}");
                            st.refresh.insert(fresh.clone(), (family, RtState::Live));
                            st.counts.rotations += 1;
                            Then::Answer {
                                family,
                                refresh: fresh,
                                fault: armed,
                                pid,
                            }
                        }
                    }
                }
            }
        }
    };
    let (family, refresh, fault, pid) = match then {
        Then::Refuse(code) => {
            chaos.st().counts.invalid_grant += 1;
            return oauth_error(code);
        }
        Then::KillBeforeRotation(pid) => {
            if let Some(pid) = pid {
                signal(pid, "KILL");
            }
            return (StatusCode::SERVICE_UNAVAILABLE, "gone").into_response();
        }
        Then::Answer {
            family,
            refresh,
            fault,
            pid,
        } => (family, refresh, fault, pid),
    };
    let identity = chaos.st().families[family].identity;
    let mut _resume = None;
    match (fault, pid) {
        (None, _) => {}
        (Some(Armed::Slow(d)), _) => {
            chaos.fire(
                &mut chaos.st(),
                "slow",
                Some(identity),
                1,
                format!("{replica} answered after {d:?}"),
            );
            tokio::time::sleep(d).await;
        }
        // Every replica registers its pid before it starts; an unknown asker (none
        // is expected) is answered without the pause rather than losing the token.
        (Some(Armed::Pause(_)), None) => {}
        (Some(Armed::Pause(d)), Some(pid)) => {
            signal(pid, "STOP");
            _resume = Some(Resume(pid));
            {
                let mut st = chaos.st();
                chaos.fire(
                    &mut st,
                    "pause",
                    Some(identity),
                    reuse_budget(identity),
                    format!("{replica} stopped for {d:?} holding the lock"),
                );
                let now = Instant::now();
                st.windows.push(Window {
                    identity: Some(identity),
                    from: now,
                    until: Some(now + d + LOCK_TTL + Duration::from_secs(1)),
                });
            }
            tokio::time::sleep(d).await;
        }
        (Some(Armed::Kill { .. }), _) => {
            {
                let mut st = chaos.st();
                chaos.fire(
                    &mut st,
                    "kill",
                    Some(identity),
                    1 + 2 * reuse_budget(identity),
                    format!("{replica} after the rotation: the lineage is lost"),
                );
                let now = Instant::now();
                st.windows.push(Window {
                    identity: Some(identity),
                    from: now,
                    until: None,
                });
                if st.families[family].lost.is_none() {
                    st.families[family].lost = Some((now, "holder killed after rotation"));
                }
                st.killed.push(replica.clone());
            }
            if let Some(pid) = pid {
                signal(pid, "KILL");
            }
            return (StatusCode::SERVICE_UNAVAILABLE, "gone").into_response();
        }
        (Some(Armed::SaveFail(d)), _) => {
            // Writes are refused before the holder gets its token: its write fails.
            let denied = deny_writes(&chaos.redis_url, true).await;
            if denied.is_ok() {
                let now = Instant::now();
                {
                    let mut st = chaos.st();
                    chaos.fire(
                        &mut st,
                        "save-fail",
                        None,
                        IDENTITIES.iter().map(|(n, _, _)| reuse_budget(n)).sum(),
                        format!("at {replica}'s refresh, Redis refuses writes for {d:?}"),
                    );
                    st.windows.push(Window {
                        identity: None,
                        from: now,
                        until: Some(now + d + LOCK_TTL + Duration::from_secs(2)),
                    });
                }
                let url = chaos.redis_url.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    // A restart meanwhile has ended the refusal already.
                    let _ = deny_writes(&url, false).await;
                });
            }
        }
    }
    let access = {
        let mut st = chaos.st();
        let n = st.next;
        st.next += 1;
        let at = format!("at-{identity}-f{family}-{n}");
        st.access
            .insert(at.clone(), (family, Instant::now() + LIFETIME));
        at
    };
    let body = serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": LIFETIME.as_secs(),
        "refresh_token": refresh,
    });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn api(AxumState(chaos): AxumState<Arc<Chaos>>, headers: HeaderMap) -> Response {
    let claimed = headers
        .get("x-fleet-profile")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let replica = headers
        .get("x-fleet-replica")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let mut guard = chaos.st();
    let st = &mut *guard;
    st.counts.api_requests += 1;
    let valid = st
        .access
        .get(presented)
        .filter(|(_, exp)| Instant::now() < *exp)
        .map(|(family, _)| st.families[*family].identity);
    match valid {
        None => {
            st.counts.api_unauthorized += 1;
            (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    r#"Bearer realm="api", error="invalid_token""#,
                )],
            )
                .into_response()
        }
        Some(identity) => {
            // A valid token: the API serves it, but as `identity`.
            if identity != claimed {
                st.counts.wrong_identity += 1;
                if st.wrong.len() < 20 {
                    st.wrong.push(format!(
                        "{replica} (configured as {claimed}) sent a token of {identity}"
                    ));
                }
            } else {
                st.counts.api_ok += 1;
            }
            (StatusCode::OK, "hello").into_response()
        }
    }
}

async fn serve(chaos: Arc<Chaos>) -> SocketAddr {
    let app = Router::new()
        .route("/token", post(token))
        .route("/api", get(api))
        .with_state(chaos);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

// ---------------------------------------------------------------------------
// Redis: our own server, restarted at will
// ---------------------------------------------------------------------------

/// One command to the Redis at `url`, on a fresh connection, within 3 s.
async fn redis_command(url: &str, cmd: &redis::Cmd) -> Result<redis::Value, String> {
    let run = async {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        cmd.query_async::<redis::Value>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Makes Redis refuse (or accept again) every write, with a real `NOREPLICAS` error.
async fn deny_writes(url: &str, deny: bool) -> Result<(), String> {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("SET")
        .arg("min-replicas-to-write")
        .arg(if deny { "1" } else { "0" });
    redis_command(url, &cmd).await.map(|_| ())
}

/// A redis-server of our own, killed on drop.
struct OwnRedis {
    child: Option<std::process::Child>,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let mut redis = OwnRedis { child: None, port };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while redis_command(&self.url(), &redis::cmd("PING"))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `SHUTDOWN NOSAVE`, `down` without Redis, then the same port again, empty.
    async fn restart_empty(&mut self, down: Duration) {
        let mut shutdown = redis::cmd("SHUTDOWN");
        shutdown.arg("NOSAVE");
        let _ = redis_command(&self.url(), &shutdown).await;
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !matches!(child.try_wait(), Ok(Some(_))) {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        tokio::time::sleep(down).await;
        self.spawn();
        self.ready().await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether this machine can run the test: `redis-server` is installed. Outside CI
/// its absence skips loudly; under `CI` it fails.
fn redis_server_installed() -> bool {
    let found = std::process::Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but redis-server is not installed: the chaos test must run in CI"
        );
        say("\n!!! SKIPPED fleet chaos test: redis-server is not installed !!!\n");
    }
    found
}

// ---------------------------------------------------------------------------
// The replicas
// ---------------------------------------------------------------------------

/// The last `status:` line of one replica process.
#[derive(Clone, Default, Debug)]
struct Status {
    ok: u64,
    failed: u64,
    invalid_grant: u64,
    last: String,
    /// When `ok` last grew.
    ok_grew: Option<Instant>,
    /// Since when the last request of every status line got `invalid_grant`.
    refused_since: Option<Instant>,
}

type Statuses = Arc<Mutex<HashMap<(String, u32), Status>>>;

struct Replica {
    name: String,
    identity: &'static str,
    incarnation: u32,
    child: Child,
    /// Held open: the replica stops when it closes.
    _stdin: Option<ChildStdin>,
    started: Instant,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Ends when the process's stderr closes.
    stderr_done: Option<tokio::task::JoinHandle<()>>,
}

struct Fleet {
    binary: std::path::PathBuf,
    token_url: String,
    api_url: String,
    redis_url: String,
    chaos: Arc<Chaos>,
    replicas: Vec<Replica>,
    statuses: Statuses,
    unexpected_exits: Vec<String>,
    start_failures: u64,
    /// Replica processes that answered `invalid_grant` for longer than a recovery
    /// takes while their identity's login was alive the whole time.
    logged_out: Vec<String>,
}

impl Fleet {
    fn spawn(&self, name: &str, identity: &'static str, incarnation: u32) -> Replica {
        let seed = self.chaos.seed_of(identity);
        let mut child = Command::new(&self.binary)
            .args(["--redis", &self.redis_url, "--profile", identity])
            .args(["--token-url", &self.token_url, "--api-url", &self.api_url])
            .args(["--refresh-token", &seed, "--replica", name])
            .args(["--duration", "300", "--tasks", "2", "--pause-ms", "40"])
            .args([
                "--refresh-before",
                &REFRESH_BEFORE.as_secs_f64().to_string(),
            ])
            .args(["--lock-ttl", &LOCK_TTL.as_secs_f64().to_string()])
            .args(["--wait-timeout", "10", "--status-every", "0.25"])
            .arg("--until-stdin-closes")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the fleet_replica example starts");
        let pid = child.id().expect("a running child has a pid");
        self.chaos
            .st()
            .replicas
            .insert(name.to_owned(), (identity, pid));
        let stdout = child.stdout.take().unwrap();
        let statuses = self.statuses.clone();
        let key = (name.to_owned(), incarnation);
        let chaos = self.chaos.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(status) = line.strip_prefix("status: ") else {
                    continue;
                };
                let mut parsed = Status::default();
                for field in status.split_whitespace() {
                    match field.split_once('=') {
                        Some(("ok", v)) => parsed.ok = v.parse().unwrap_or(0),
                        Some(("failed", v)) => parsed.failed = v.parse().unwrap_or(0),
                        Some(("invalid_grant", v)) => parsed.invalid_grant = v.parse().unwrap_or(0),
                        Some(("last", v)) => parsed.last = v.to_owned(),
                        _ => {}
                    }
                }
                let mut all = lock(&statuses);
                let entry = all.entry(key.clone()).or_default();
                // When a replica starts and stops answering invalid_grant: the
                // timeline says who was logged out, and when.
                let grant = "err:invalid_grant";
                if (parsed.last == grant) != (entry.last == grant) {
                    chaos.note(format!(
                        "{} (incarnation {}) {}",
                        key.0,
                        key.1,
                        if parsed.last == grant {
                            "answers its callers invalid_grant"
                        } else {
                            "gets through again"
                        }
                    ));
                }
                parsed.ok_grew = if parsed.ok > entry.ok || entry.ok_grew.is_none() && parsed.ok > 0
                {
                    Some(Instant::now())
                } else {
                    entry.ok_grew
                };
                parsed.refused_since = match (parsed.last == grant, entry.refused_since) {
                    (false, _) => None,
                    (true, Some(since)) => Some(since),
                    (true, None) => Some(Instant::now()),
                };
                *entry = parsed;
            }
        });
        let stderr_lines = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = child.stderr.take().unwrap();
        let keep = stderr_lines.clone();
        let stderr_done = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut keep = lock(&keep);
                if keep.back() == Some(&line) {
                    continue;
                }
                if keep.len() == 3 {
                    keep.pop_front();
                }
                keep.push_back(line);
            }
        });
        Replica {
            name: name.to_owned(),
            identity,
            incarnation,
            _stdin: child.stdin.take(),
            child,
            started: Instant::now(),
            stderr: stderr_lines,
            stderr_done: Some(stderr_done),
        }
    }

    fn start_all(&mut self) {
        for (identity, count, _) in IDENTITIES {
            for i in 1..=count {
                let replica = self.spawn(&format!("{identity}-{i}"), identity, 0);
                self.replicas.push(replica);
            }
        }
    }

    /// Restarts replicas that exited: killed by the chaos, or unable to reach Redis
    /// at start (it was restarting); any other exit is a failure of the test.
    async fn supervise(&mut self) {
        for i in 0..self.replicas.len() {
            let exited = match self.replicas[i].child.try_wait() {
                Ok(Some(status)) => status,
                _ => continue,
            };
            // Its last words, before deciding why it exited.
            if let Some(done) = self.replicas[i].stderr_done.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), done).await;
            }
            let r = &self.replicas[i];
            let killed = {
                let mut st = self.chaos.st();
                let at = st.killed.iter().position(|k| *k == r.name);
                at.map(|at| st.killed.remove(at)).is_some()
            };
            let stderr = lock(&r.stderr).iter().cloned().collect::<Vec<_>>();
            let could_not_connect = r.started.elapsed() < Duration::from_secs(5)
                && stderr.iter().any(|l| l.contains("redis connect"));
            if could_not_connect {
                self.start_failures += 1;
            } else if !killed {
                self.unexpected_exits.push(format!(
                    "{} (incarnation {}) exited by itself ({exited}): {}",
                    r.name,
                    r.incarnation,
                    stderr.join(" | ")
                ));
            }
            let (name, identity, incarnation) = (r.name.clone(), r.identity, r.incarnation + 1);
            self.replicas[i] = self.spawn(&name, identity, incarnation);
        }
    }

    /// A new login for `identity`, as an operator would do it: its replicas stopped,
    /// its keys in Redis removed, the replicas started again from the new login.
    async fn relogin(&mut self, identity: &'static str) {
        for r in self.replicas.iter_mut().filter(|r| r.identity == identity) {
            let _ = r.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.child.wait()).await;
        }
        // The refusal of writes (if any) ends now: the login must be written.
        let _ = deny_writes(&self.redis_url, false).await;
        let mut del = redis::cmd("DEL");
        del.arg(format!("tower-bearer:{{{identity}}}:token"))
            .arg(format!("tower-bearer:{{{identity}}}:lock"));
        let _ = redis_command(&self.redis_url, &del).await;
        {
            // Kills by the chaos that the supervisor did not see are over too.
            let mut st = self.chaos.st();
            st.killed
                .retain(|k| !k.starts_with(&format!("{identity}-")));
        }
        self.chaos.login(identity);
        for i in 0..self.replicas.len() {
            if self.replicas[i].identity == identity {
                let r = &self.replicas[i];
                let (name, incarnation) = (r.name.clone(), r.incarnation + 1);
                self.replicas[i] = self.spawn(&name, identity, incarnation);
            }
        }
    }

    /// Notes the replicas logged out while their identity has a live token: they
    /// answered `invalid_grant` for longer than the fleet needs to recover (a lock
    /// TTL to wait for the holder, a token lifetime, a second of slack), and their
    /// identity's login started before and was never lost.
    fn check_logged_out(&mut self) {
        let patience = LOCK_TTL + LIFETIME + Duration::from_secs(1);
        let statuses = lock(&self.statuses);
        let st = self.chaos.st();
        for r in &self.replicas {
            let Some(since) = statuses
                .get(&(r.name.clone(), r.incarnation))
                .and_then(|s| s.refused_since)
            else {
                continue;
            };
            let family = &st.families[st.current[r.identity]];
            let live = family.started <= since && family.lost.is_none();
            let id = format!("{} (incarnation {})", r.name, r.incarnation);
            if live
                && since.elapsed() >= patience
                && !self.logged_out.iter().any(|l| l.starts_with(&id))
            {
                self.logged_out.push(format!(
                    "{id} answered invalid_grant from {:.1}s on while {}'s login was alive",
                    self.chaos.secs(since),
                    r.identity
                ));
            }
        }
    }

    /// The replicas whose current process has not got through lately: its last
    /// request failed, or it has had no success for 1.5 s.
    fn not_through(&self, since: Instant) -> Vec<String> {
        let statuses = lock(&self.statuses);
        let recent = Instant::now() - Duration::from_millis(1500);
        self.replicas
            .iter()
            .filter_map(|r| {
                let status = statuses.get(&(r.name.clone(), r.incarnation));
                let through = status.is_some_and(|s| {
                    s.last == "ok" && s.ok_grew.is_some_and(|t| t > recent.max(since))
                });
                (!through).then(|| {
                    format!(
                        "{} (incarnation {}): {:?}; stderr: {}",
                        r.name,
                        r.incarnation,
                        status,
                        lock(&r.stderr)
                            .iter()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(" | ")
                    )
                })
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in &mut self.replicas {
            if let Some(pid) = r.child.id() {
                signal(pid, "CONT");
            }
            let _ = r.child.start_kill();
        }
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

fn chaos_seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s.trim().parse().expect("CHAOS_SEED is a number"),
        Err(_) => fastrand::u64(..),
    }
}

fn fault_phase() -> Duration {
    let secs = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(40.0)
        .clamp(5.0, 80.0);
    Duration::from_secs_f64(secs)
}

/// The fault kinds to inject: `CHAOS_FAULTS` (comma-separated), all by default.
fn allowed_faults() -> Vec<&'static str> {
    let all = ["slow", "pause", "kill", "redis-restart", "save-fail"];
    match std::env::var("CHAOS_FAULTS") {
        Ok(list) => {
            let asked: Vec<&str> = list.split(',').map(str::trim).collect();
            for kind in &asked {
                assert!(all.contains(kind), "CHAOS_FAULTS: unknown fault {kind:?}");
            }
            all.into_iter().filter(|k| asked.contains(k)).collect()
        }
        Err(_) => all.to_vec(),
    }
}

fn millis(rng: &mut fastrand::Rng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_survives_chaos() {
    if !redis_server_installed() {
        return;
    }
    let seed = chaos_seed();
    say(&format!(
        "chaos: seed={seed} (replay the fault schedule with CHAOS_SEED={seed})"
    ));
    let mut rng = fastrand::Rng::with_seed(seed);
    let allowed = allowed_faults();
    let binary = tokio::task::spawn_blocking(|| common::bins::example_binary("fleet_replica"))
        .await
        .unwrap();

    let mut redis = OwnRedis::start(common::server::free_port());
    redis.ready().await;
    let chaos = Arc::new(Chaos::new(redis.url()));
    let addr = serve(chaos.clone()).await;
    for (identity, _, _) in IDENTITIES {
        chaos.login(identity);
    }
    let mut fleet = Fleet {
        binary,
        token_url: format!("http://{addr}/token"),
        api_url: format!("http://{addr}/api"),
        redis_url: redis.url(),
        chaos: chaos.clone(),
        replicas: Vec::new(),
        statuses: Arc::default(),
        unexpected_exits: Vec::new(),
        logged_out: Vec::new(),
        start_failures: 0,
    };
    let began = Instant::now();
    fleet.start_all();

    // Every replica gets through once before any fault.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        fleet.supervise().await;
        let waiting = fleet.not_through(began);
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet never started:\n{}",
            waiting.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The fault phase.
    let phase_end = Instant::now() + fault_phase();
    let mut next_fault = Instant::now() + millis(&mut rng, 1000..=2000);
    while Instant::now() < phase_end {
        fleet.supervise().await;
        fleet.check_logged_out();
        for identity in chaos.relogin_due() {
            fleet.relogin(identity).await;
        }
        if Instant::now() >= next_fault {
            next_fault = Instant::now() + millis(&mut rng, 1500..=3500);
            let identity = IDENTITIES[rng.usize(..IDENTITIES.len())].0;
            let (kind, armed) = match rng.u32(0..100) {
                0..=19 => ("slow", Some(Armed::Slow(millis(&mut rng, 600..=3000)))),
                20..=41 => (
                    "pause",
                    Some(Armed::Pause(LOCK_TTL + millis(&mut rng, 200..=500))),
                ),
                42..=61 => ("kill", Some(Armed::Kill { commit: rng.bool() })),
                62..=81 => (
                    "save-fail",
                    Some(Armed::SaveFail(millis(&mut rng, 500..=2000))),
                ),
                _ => ("redis-restart", None),
            };
            // Drawn whatever the kind, so that CHAOS_FAULTS leaves the schedule as is.
            let down = millis(&mut rng, 100..=1200);
            match armed {
                _ if !allowed.contains(&kind) => {}
                Some(fault) => {
                    let mut st = chaos.st();
                    // One armed fault at a time: one not yet fired stays.
                    if st.armed.is_none() {
                        st.armed = Some((identity, fault));
                        let note = format!("armed {fault:?} for {identity}'s next token request");
                        st.timeline.push((Instant::now(), note));
                    }
                }
                None => {
                    let from = Instant::now();
                    redis.restart_empty(down).await;
                    let up = Instant::now();
                    let mut st = chaos.st();
                    chaos.fire(
                        &mut st,
                        "redis-restart",
                        None,
                        IDENTITIES.iter().map(|(n, _, _)| reuse_budget(n)).sum(),
                        format!("down {:?}, back empty", up - from),
                    );
                    st.windows.push(Window {
                        identity: None,
                        from,
                        until: Some(up + LIFETIME + LOCK_TTL + Duration::from_secs(1)),
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The settle phase: no more faults; every replica must get through.
    chaos.st().armed = None;
    let _ = deny_writes(&redis.url(), false).await;
    chaos.note("settle".into());
    let settle = Instant::now();
    let quiet = settle + LOCK_TTL + LIFETIME + Duration::from_secs(1);
    let mut stuck;
    loop {
        fleet.supervise().await;
        fleet.check_logged_out();
        for identity in chaos.relogin_due() {
            fleet.relogin(identity).await;
        }
        let now = Instant::now();
        stuck = fleet.not_through(quiet);
        if now >= quiet && stuck.is_empty() || now >= settle + SETTLE_LIMIT {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ended = Instant::now();

    // The verdict.
    let st = chaos.st();
    let lost_at_end: Vec<&str> = IDENTITIES
        .iter()
        .map(|(n, _, _)| *n)
        .filter(|n| st.families[st.current[n]].lost.is_some())
        .collect();
    // A replica of an identity with no live token may be logged out.
    // Logged out during the run (and perhaps healed by a later login), or at the
    // end; a replica of an identity with no live token at the end may be logged out.
    let mut logged_out: Vec<String> = fleet.logged_out.clone();
    logged_out.extend(
        stuck
            .iter()
            .filter(|s| !lost_at_end.iter().any(|i| s.starts_with(&format!("{i}-"))))
            .filter(|s| {
                let who = s.split(':').next().unwrap_or(s);
                !fleet.logged_out.iter().any(|l| l.starts_with(who))
            })
            .map(|s| format!("{s} (at the end)")),
    );
    let explains = |r: &Reuse| {
        st.windows.iter().find(|w| {
            w.identity.is_none_or(|i| i == r.identity)
                && r.at >= w.from
                && w.until.is_none_or(|u| r.at <= u)
        })
    };
    let explained = st.reuses.iter().filter(|r| explains(r).is_some()).count();
    let unexplained: Vec<String> = st
        .reuses
        .iter()
        .filter(|r| explains(r).is_none())
        .map(|r| {
            let before =
                st.fired
                    .iter()
                    .rev()
                    .find(|f| f.at <= r.at)
                    .map_or("none".to_owned(), |f| {
                        format!(
                            "{} {} at {:.1}s ({})",
                            f.kind,
                            f.identity.unwrap_or("all"),
                            chaos.secs(f.at),
                            f.note
                        )
                    });
            format!(
                "at {:.1}s {} reused a {} refresh token; the last fault before: {before}",
                chaos.secs(r.at),
                r.replica,
                r.identity
            )
        })
        .collect();
    // The refreshes each login needed: its first token, then one per refresh period
    // (a token is refreshed `REFRESH_BEFORE` before it expires, never earlier) while
    // its lineage was alive. A fleet that refreshes once per expiry stays below.
    let step = LIFETIME - REFRESH_BEFORE;
    let expiries: u64 = st
        .families
        .iter()
        .map(|f| {
            let end = f.lost.map_or(ended, |(at, _)| at);
            let active = end.saturating_duration_since(f.started);
            1 + (active.as_secs_f64() / step.as_secs_f64()).floor() as u64
        })
        .sum();
    let fault_budget: u64 = st.fired.iter().map(|f| f.budget).sum();
    // A refresh per identity may be under way when its lineage's time is counted.
    let slack = IDENTITIES.len() as u64;
    let c = &st.counts;
    let logins = st.families.len();
    let summary = format!(
        "chaos: seed={seed} replicas={} requests={} ok={} token_requests={} expiries={expiries} \
         faults={} fault_budget={fault_budget} reuse={} explained_reuse={explained} logged_out={} wrong_identity={} \
         logins={logins} rotations={} invalid_grant={} revoked_presented={} \
         api_unauthorized={} restarts={} secs={:.0}",
        all_replicas(),
        c.api_requests,
        c.api_ok,
        c.token_requests,
        st.fired.len(),
        st.reuses.len(),
        logged_out.len(),
        c.wrong_identity,
        c.rotations,
        c.invalid_grant,
        c.revoked_presented,
        c.api_unauthorized,
        fleet.replicas.iter().map(|r| r.incarnation as u64).sum::<u64>(),
        ended.duration_since(began).as_secs_f64(),
    );
    say(&summary);
    let timeline = st
        .timeline
        .iter()
        .map(|(at, what)| format!("  {:6.2}s {what}", chaos.secs(*at)))
        .collect::<Vec<_>>()
        .join("\n");
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        say(&format!("chaos: timeline:\n{timeline}"));
    }
    let mut failed = Vec::new();
    if c.api_ok == 0 || c.rotations == 0 {
        failed.push("the fleet never worked".to_owned());
    }
    if st.fired.is_empty() {
        failed.push("no fault took effect".to_owned());
    }
    if !fleet.unexpected_exits.is_empty() {
        failed.push(format!(
            "replicas exited by themselves:\n{}",
            fleet.unexpected_exits.join("\n")
        ));
    }
    if c.wrong_identity != 0 {
        failed.push(format!(
            "{} requests carried another identity's token:\n{}",
            c.wrong_identity,
            st.wrong.join("\n")
        ));
    }
    if !unexplained.is_empty() {
        failed.push(format!(
            "refresh tokens reused where no fault explains it:\n{}",
            unexplained.join("\n")
        ));
    }
    if !logged_out.is_empty() {
        failed.push(format!(
            "replicas logged out while their identity had a live token:\n{}",
            logged_out.join("\n")
        ));
    }
    if c.token_requests > expiries + fault_budget + slack {
        failed.push(format!(
            "token requests {} exceed expiries {expiries} + fault budget {fault_budget} + \
             slack {slack}",
            c.token_requests
        ));
    }
    assert!(
        failed.is_empty(),
        "fleet chaos, seed {seed} (CHAOS_SEED={seed} replays the faults):\n- {}\n\
         replica restarts that could not reach Redis: {}\ntimeline:\n{timeline}",
        failed.join("\n- "),
        fleet.start_failures
    );
}
