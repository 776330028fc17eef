//! The chaos harness the two chaos tests share: `tests/fleet_chaos.rs` (replicas
//! sharing rotating refresh tokens through Redis) and `tests/files_chaos.rs`
//! (processes sharing them through one token file). What they share is here: the
//! token server, which rotates refresh tokens, refuses a reused one and (for bob)
//! revokes the family on reuse, and fires the faults armed at a token request
//! (`slow`, `pause`, `kill`, `save-fail`); the API, which counts requests that carry
//! another identity's token; the `fleet_replica` processes, their status lines and
//! their supervisor; the fault phase, the settle phase, the timeline and the
//! verdict. What differs, the shared store and the faults on it, is a [`Store`].
//!
//! Only the chaos tests include it (`#[path = "common/chaos.rs"] mod chaos;`), so
//! that the other test binaries do not compile it.

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
use futures_util::future::BoxFuture;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::Instant;

/// `expires_in` of every access token.
pub const LIFETIME: Duration = Duration::from_secs(2);
/// The replicas' `--refresh-before`: a token is refreshed 1.5 s after it is issued.
pub const REFRESH_BEFORE: Duration = Duration::from_millis(500);
/// How long the settle phase waits at most for every replica to get through.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(25);
/// The identities, their replica count, and whether a reuse revokes the family.
pub const IDENTITIES: [(&str, usize, bool); 2] = [("alice", 4, false), ("bob", 2, true)];

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Straight to stderr, past the test harness's output capture.
pub fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn all_replicas() -> usize {
    IDENTITIES.iter().map(|(_, n, _)| n).sum()
}

/// Sends `SIG{name}` to `pid` (the `kill` utility: no libc binding needed).
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The store the replicas share, and the faults on it.
pub trait Store: Send + Sync + 'static {
    /// A program and its arguments that run the replica's command line (a launcher
    /// that drops privileges, say); none by default.
    fn launcher(&self) -> Vec<String> {
        Vec::new()
    }

    /// The arguments that point a replica of `identity` at the store, with the
    /// store's knobs.
    fn args(&self, identity: &str) -> Vec<String>;

    /// How long the others wait for a holder that stopped answering (killed or
    /// stopped) before they take over or give up.
    fn takeover(&self) -> Duration;

    /// What a fault of `kind` on `identity` (`None`: every identity) may cost:
    /// token requests beyond one per expiry, and for how long after the fault ended
    /// a reuse of a refresh token is its doing (`None`: no reuse is). `kill-after`
    /// (a holder killed after the rotation) is asked for its budget only: its window
    /// lasts until the next login.
    fn allowance(&self, kind: &str, identity: Option<&'static str>) -> (u64, Option<Duration>);

    /// Makes the store refuse every write (`true`), or accept them again.
    fn refuse_writes(&self, refuse: bool) -> BoxFuture<'static, Result<(), String>>;

    /// Injects a fault of `kind` (one the plan's draw does not arm) on `identity`'s
    /// token, lasting about `down`: the identity it hit (`None`: all) and a note for
    /// the timeline, or `None` when it could not.
    fn inject(
        &self,
        kind: &'static str,
        identity: &'static str,
        down: Duration,
    ) -> BoxFuture<'_, Option<(Option<&'static str>, String)>>;

    /// Ends every fault on the store (the settle phase).
    fn heal(&self) -> BoxFuture<'_, ()>;

    /// Removes `identity`'s shared token, before a new login.
    fn forget(&self, identity: &'static str) -> BoxFuture<'_, ()>;

    /// Whether a replica that exited soon after its start with these last lines
    /// only could not reach the store (it is restarted, not blamed).
    fn could_not_start(&self, _stderr: &[String]) -> bool {
        false
    }

    /// What the store saw go wrong that the token server cannot see (a file of
    /// another user overwritten, say): each a failure of the test.
    fn broken(&self) -> Vec<String> {
        Vec::new()
    }
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
pub enum Armed {
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

pub struct Chaos {
    state: Mutex<ServerState>,
    store: Arc<dyn Store>,
    epoch: Instant,
}

impl Chaos {
    pub fn new(store: Arc<dyn Store>) -> Self {
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
            store,
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
        self.fire_at(st, Instant::now(), kind, identity, budget, note);
    }

    /// [`Chaos::fire`] for a fault that began at `at`.
    fn fire_at(
        &self,
        st: &mut ServerState,
        at: Instant,
        kind: &'static str,
        identity: Option<&'static str>,
        budget: u64,
        note: String,
    ) {
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

    /// Fires a fault of `kind` with what the store allows it (token requests, and a
    /// window for reuses from `from` until the fault's `end` plus the store's say).
    fn fire_allowed(
        &self,
        st: &mut ServerState,
        kind: &'static str,
        identity: Option<&'static str>,
        note: String,
        (from, end): (Instant, Instant),
    ) {
        let (budget, explains) = self.store.allowance(kind, identity);
        self.fire_at(st, from, kind, identity, budget, note);
        if let Some(extra) = explains {
            st.windows.push(Window {
                identity,
                from,
                until: Some(end + extra),
            });
        }
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
                        // Which one (by its serial number) and who: a retry loop
                        // shows in the timeline.
                        if st.counts.revoked_presented <= 40 {
                            let serial = presented.rsplit('-').next().unwrap_or("?");
                            let what = format!(
                                "{replica} presented a revoked {identity} refresh token (#{serial})"
                            );
                            st.timeline.push((Instant::now(), what));
                        }
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
            let now = Instant::now();
            chaos.fire_allowed(
                &mut chaos.st(),
                "pause",
                Some(identity),
                format!("{replica} stopped for {d:?} holding the lock"),
                (now, now + d),
            );
            tokio::time::sleep(d).await;
        }
        (Some(Armed::Kill { .. }), _) => {
            {
                let mut st = chaos.st();
                // Its window stays open until the next login (below).
                let (budget, _) = chaos.store.allowance("kill-after", Some(identity));
                chaos.fire(
                    &mut st,
                    "kill",
                    Some(identity),
                    budget,
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
            let denied = chaos.store.refuse_writes(true).await;
            if denied.is_ok() {
                let now = Instant::now();
                chaos.fire_allowed(
                    &mut chaos.st(),
                    "save-fail",
                    None,
                    format!("at {replica}'s refresh, the store refuses writes for {d:?}"),
                    (now, now + d),
                );
                let store = chaos.store.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(d).await;
                    // A restart or a login meanwhile has ended the refusal already.
                    let _ = store.refuse_writes(false).await;
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

pub async fn serve(chaos: Arc<Chaos>) -> SocketAddr {
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
    store: Arc<dyn Store>,
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
        let mut launcher = self.store.launcher();
        launcher.push(self.binary.display().to_string());
        let mut child = Command::new(&launcher[0])
            .args(&launcher[1..])
            .args(["--profile", identity])
            .args(self.store.args(identity))
            .args(["--token-url", &self.token_url, "--api-url", &self.api_url])
            .args(["--refresh-token", &seed, "--replica", name])
            .args(["--duration", "300", "--tasks", "2", "--pause-ms", "40"])
            .args([
                "--refresh-before",
                &REFRESH_BEFORE.as_secs_f64().to_string(),
            ])
            .args(["--status-every", "0.25"])
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
        let stderr_lines: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let last_words = stderr_lines.clone();
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
                let grant = "err:invalid_grant";
                // When a replica starts answering an error (invalid_grant: logged
                // out; any other: a fault it is riding out), and when it gets
                // through again.
                let what = match (
                    entry.last.strip_prefix("err:"),
                    parsed.last.strip_prefix("err:"),
                ) {
                    (old, Some(kind)) if old != Some(kind) => {
                        let why = lock(&last_words).back().cloned().unwrap_or_default();
                        let why: String = why.chars().take(160).collect();
                        Some(format!("answers its callers {kind} ({why})"))
                    }
                    (Some(_), None) => Some("gets through again".to_owned()),
                    _ => None,
                };
                if let Some(what) = what {
                    chaos.note(format!("{} (incarnation {}) {what}", key.0, key.1));
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

    /// Restarts replicas that exited: killed by the chaos, or unable to reach the
    /// store at start (Redis was restarting); any other exit is a failure of the test.
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
            let could_not_connect =
                r.started.elapsed() < Duration::from_secs(5) && self.store.could_not_start(&stderr);
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
    /// its shared token removed, the replicas started again from the new login.
    async fn relogin(&mut self, identity: &'static str) {
        for r in self.replicas.iter_mut().filter(|r| r.identity == identity) {
            let _ = r.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), r.child.wait()).await;
        }
        // The refusal of writes (if any) ends now: the login must be written.
        let _ = self.store.refuse_writes(false).await;
        self.store.forget(identity).await;
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
        let patience = self.store.takeover() + LIFETIME + Duration::from_secs(1);
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
// The run: start, faults, settle, verdict
// ---------------------------------------------------------------------------

fn chaos_seed() -> u64 {
    match std::env::var("CHAOS_SEED") {
        Ok(s) => s.trim().parse().expect("CHAOS_SEED is a number"),
        Err(_) => fastrand::u64(..),
    }
}

fn fault_phase(default_secs: f64) -> Duration {
    let secs = std::env::var("CHAOS_SECS")
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(default_secs)
        .clamp(5.0, 80.0);
    Duration::from_secs_f64(secs)
}

/// The fault kinds to inject: `CHAOS_FAULTS` (comma-separated), all by default.
fn allowed_faults(all: &[&'static str]) -> Vec<&'static str> {
    match std::env::var("CHAOS_FAULTS") {
        Ok(list) => {
            let asked: Vec<&str> = list.split(',').map(str::trim).collect();
            for kind in &asked {
                assert!(all.contains(kind), "CHAOS_FAULTS: unknown fault {kind:?}");
            }
            all.iter().copied().filter(|k| asked.contains(k)).collect()
        }
        Err(_) => all.to_vec(),
    }
}

fn millis(rng: &mut fastrand::Rng, range: std::ops::RangeInclusive<u64>) -> Duration {
    Duration::from_millis(rng.u64(range))
}

/// One chaos test: its line's name, the store the replicas share, the faults it
/// draws, and its fault phase's length by default.
pub struct Plan {
    /// The first word of the test's lines (`chaos`, `files`).
    pub name: &'static str,
    /// The fault kinds and their weights out of 100 (`CHAOS_FAULTS` picks among
    /// them). `slow`, `pause`, `kill` and `save-fail` are armed for a token request;
    /// any other kind the store injects at once ([`Store::inject`]).
    pub weights: &'static [(&'static str, u32)],
    /// How long the others wait for a holder: a `pause` stops it 0.2–0.5 s longer.
    pub pause_past: Duration,
    /// Seconds of the fault phase unless `CHAOS_SECS` says otherwise.
    pub default_secs: f64,
}

impl Plan {
    /// The next fault: its kind, and what to arm at a token request (`None`: the
    /// store injects it now).
    fn draw(&self, rng: &mut fastrand::Rng) -> (&'static str, Option<Armed>) {
        let mut roll = rng.u32(0..100);
        let mut kind = self.weights.last().map_or("none", |(k, _)| *k);
        for (k, weight) in self.weights {
            if roll < *weight {
                kind = k;
                break;
            }
            roll -= weight;
        }
        let armed = match kind {
            "slow" => Some(Armed::Slow(millis(rng, 600..=3000))),
            "pause" => Some(Armed::Pause(self.pause_past + millis(rng, 200..=500))),
            "kill" => Some(Armed::Kill { commit: rng.bool() }),
            "save-fail" => Some(Armed::SaveFail(millis(rng, 500..=2000))),
            _ => None,
        };
        (kind, armed)
    }
}

/// Runs the fleet against `store` under `plan`'s faults and asserts the verdict.
pub async fn run(plan: Plan, store: Arc<dyn Store>) {
    let name = plan.name;
    let seed = chaos_seed();
    say(&format!(
        "{name}: seed={seed} (replay the fault schedule with CHAOS_SEED={seed})"
    ));
    let mut rng = fastrand::Rng::with_seed(seed);
    let kinds: Vec<&'static str> = plan.weights.iter().map(|(k, _)| *k).collect();
    let allowed = allowed_faults(&kinds);
    let binary =
        tokio::task::spawn_blocking(|| crate::common::bins::example_binary("fleet_replica"))
            .await
            .unwrap();
    let chaos = Arc::new(Chaos::new(store.clone()));
    let addr = serve(chaos.clone()).await;
    for (identity, _, _) in IDENTITIES {
        chaos.login(identity);
    }
    let mut fleet = Fleet {
        binary,
        token_url: format!("http://{addr}/token"),
        api_url: format!("http://{addr}/api"),
        store: store.clone(),
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
    let phase_end = Instant::now() + fault_phase(plan.default_secs);
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
            let (kind, armed) = plan.draw(&mut rng);
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
                    if let Some((affected, note)) = store.inject(kind, identity, down).await {
                        let end = Instant::now();
                        chaos.fire_allowed(&mut chaos.st(), kind, affected, note, (from, end));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The settle phase: no more faults; every replica must get through.
    chaos.st().armed = None;
    store.heal().await;
    chaos.note("settle".into());
    let settle = Instant::now();
    let quiet = settle + store.takeover() + LIFETIME + Duration::from_secs(1);
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
        "{name}: seed={seed} replicas={} requests={} ok={} token_requests={} expiries={expiries} \
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
    // In time order: a fault is noted when it ends, dated from its start.
    let mut timeline = st.timeline.iter().collect::<Vec<_>>();
    timeline.sort_by_key(|(at, _)| *at);
    let timeline = timeline
        .into_iter()
        .map(|(at, what)| format!("  {:6.2}s {what}", chaos.secs(*at)))
        .collect::<Vec<_>>()
        .join("\n");
    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        say(&format!("{name}: timeline:\n{timeline}"));
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
    let broken = store.broken();
    if !broken.is_empty() {
        failed.push(format!("the store saw:\n{}", broken.join("\n")));
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
        "{name} chaos, seed {seed} (CHAOS_SEED={seed} replays the faults):\n- {}\n\
         replica restarts that could not reach the store: {}\ntimeline:\n{timeline}",
        failed.join("\n- "),
        fleet.start_failures
    );
}
