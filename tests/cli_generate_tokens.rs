//! `generate_tokens` end to end, as a person runs it: the built example binary,
//! the password on stdin, against a real token server on 127.0.0.1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

struct Run {
    out: Output,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }
    /// A success: exit status 0 (else the panic shows stderr).
    fn assert_success(&self) {
        assert!(self.out.status.success(), "{}", self.stderr());
    }
    /// A failure: non-zero, exactly one line on stderr, nothing on stdout.
    fn one_line_failure(&self) -> String {
        let err = self.stderr();
        assert!(!self.out.status.success(), "succeeded: {err}");
        assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
        assert!(err.starts_with("error: "), "{err:?}");
        assert!(!err.contains("panicked"), "{err:?}");
        assert_eq!(self.stdout(), "");
        err
    }
}

/// Runs the CLI with `args`, `stdin` written to it, and its config dir in `home`.
async fn run(args: &[&str], stdin: Option<&str>, home: &Path) -> Run {
    let mut child = Command::new(common::bins::example_binary("generate_tokens"))
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // A CLI that refuses its arguments exits before reading stdin: the pipe may
        // be closed already, which is not the test's concern.
        match input.write_all(text.as_bytes()).await {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            other => other.unwrap(),
        }
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Run { out }
}

/// Runs `generate_tokens -u alice --token-url <url> <args…>`.
async fn alice(url: &str, args: &[&str], stdin: Option<&str>, home: &Path) -> Run {
    let mut all = vec!["-u", "alice", "--token-url", url];
    all.extend_from_slice(args);
    run(&all, stdin, home).await
}

fn home(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "tower-bearer-cli-{name}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The files under `dir`, but for the lock files a shared token file keeps beside
/// it (`<file>.lock`, `<file>.refresh`: made once, never removed).
fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = walk(dir)
        .into_iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .filter(|name| !name.ends_with(".json.lock") && !name.ends_with(".json.refresh"))
        .collect();
    names.sort();
    names
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn password_on_stdin_saves_the_tokens_and_prints_exports() {
    let s = common::start().await;
    let home = home("ok");
    let url = s.token_url();
    let r = alice(&url, &["--password-stdin"], Some("wonderland\n"), &home).await;
    r.assert_success();
    let stdout = r.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].starts_with("export APP_ACCESS_TOKEN='at-"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("export APP_REFRESH_TOKEN='rt-"),
        "{stdout}"
    );
    assert!(!r.stderr().contains("wonderland"));
    assert_eq!(*s.idp.grants.lock().unwrap(), ["password"]);
    assert_eq!(
        s.idp
            .last_form
            .lock()
            .unwrap()
            .get("client_id")
            .map(String::as_str),
        Some("cli")
    );

    // The token file is in the config dir, per user and issuer, and holds what was printed.
    let expected = format!(
        "tower-bearer/{}",
        tower_bearer::client::FileStore::file_name("alice", &url)
    );
    assert_eq!(files_in(&home), std::slice::from_ref(&expected));
    let file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(&expected)).unwrap()).unwrap();
    assert_eq!(file["username"], "alice");
    let at = file["token"]["access_token"].as_str().unwrap();
    assert!(lines[0].contains(at));
    let _ = std::fs::remove_dir_all(home);
}

#[tokio::test]
async fn names_profile_and_no_save_are_honoured() {
    let s = common::start().await;
    let home = home("names");
    let url = s.token_url();
    let r = alice(
        &url,
        &[
            "--password-stdin",
            "--env-prefix",
            "CHIME_FRB",
            "--profile",
            "work",
        ],
        Some("wonderland\r\n"),
        &home,
    )
    .await;
    r.assert_success();
    assert!(r.stdout().contains("export CHIME_FRB_ACCESS_TOKEN='at-"));
    assert!(r.stdout().contains("export CHIME_FRB_REFRESH_TOKEN='rt-"));
    assert_eq!(files_in(&home), ["tower-bearer/work.json"]);

    let home2 = self::home("no-save");
    let r = alice(
        &url,
        &["--password-stdin", "--no-save"],
        Some("wonderland"),
        &home2,
    )
    .await;
    r.assert_success();
    assert!(r.stdout().contains("export APP_ACCESS_TOKEN="));
    assert!(files_in(&home2).is_empty());
    let _ = std::fs::remove_dir_all(home);
    let _ = std::fs::remove_dir_all(home2);
}

#[tokio::test]
async fn a_wrong_password_is_one_clear_line_without_the_password() {
    let s = common::start().await;
    let home = home("wrong");
    let r = alice(
        &s.token_url(),
        &["--password-stdin"],
        Some("hunter2-not-it\n"),
        &home,
    )
    .await;
    let err = r.one_line_failure();
    assert!(
        err.contains("wrong user name or password for alice"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
    assert_eq!(r.out.status.code(), Some(1));
    assert!(files_in(&home).is_empty(), "nothing saved");
    let _ = std::fs::remove_dir_all(home);
}

#[tokio::test]
async fn an_unreachable_server_or_a_bad_url_is_one_clear_line() {
    let home = home("unreachable");
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}/token", listener.local_addr().unwrap());
    drop(listener);
    let r = alice(&dead, &["--password-stdin"], Some("s3cret-pw\n"), &home).await;
    let err = r.one_line_failure();
    assert!(err.contains("cannot reach the token endpoint"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");

    for bad in [
        "not a url",
        "ftp://idp.example.com/token",
        "http://idp.example.com/token",
    ] {
        let r = alice(bad, &["--password-stdin"], Some("s3cret-pw\n"), &home).await;
        let err = r.one_line_failure();
        assert!(err.contains("bad --token-url"), "{err}");
        assert!(!err.contains("s3cret-pw"), "{err}");
        assert_eq!(r.out.status.code(), Some(2));
    }

    // No terminal and no --password-stdin: it says what to do instead of hanging.
    let r = alice(&dead, &[], None, &home).await;
    let err = r.one_line_failure();
    assert!(err.contains("--password-stdin"), "{err}");
    assert!(files_in(&home).is_empty());
    let _ = std::fs::remove_dir_all(home);
}

#[tokio::test]
async fn the_device_flow_from_the_command_line() {
    let s = common::start().await;
    *s.idp.device_interval.lock().unwrap() = Some(1);
    s.idp
        .device_script
        .lock()
        .unwrap()
        .push_back("authorization_pending");
    let home = home("device");
    let r = alice(&s.token_url(), &["--device", "--no-save"], None, &home).await;
    r.assert_success();
    assert!(r.stderr().contains("WDJB-MJHT"), "{}", r.stderr());
    assert!(r.stderr().contains("https://idp.example/device"));
    assert!(r.stdout().contains("export APP_ACCESS_TOKEN='at-"));
    assert_eq!(s.idp.device_polls.lock().unwrap().len(), 2);
    let _ = std::fs::remove_dir_all(home);
}

#[tokio::test]
async fn logout_without_a_revocation_endpoint_fails_in_one_line_and_still_clears_the_file() {
    let s = common::start().await;
    let home = home("logout");
    let url = s.token_url();
    let login = alice(&url, &["--password-stdin"], Some("wonderland\n"), &home).await;
    login.assert_success();
    assert_eq!(files_in(&home).len(), 1, "{:?}", files_in(&home));

    // The example token server has no revocation endpoint: `<token url>/../revoke` is a 404.
    let logout = alice(&url, &["--logout"], None, &home).await;
    let err = logout.one_line_failure();
    assert!(err.contains("/revoke"), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("the tokens were cleared from"), "{err}");
    // Cleared: no token is left in it (the file may stay, as a logout mark).
    let store = tower_bearer::client::FileStore::at(
        home.join("tower-bearer")
            .join(tower_bearer::client::FileStore::file_name("alice", &url)),
        "alice",
        &url,
    );
    assert!(
        tower_bearer::client::TokenStore::load(&store)
            .await
            .unwrap()
            .is_none(),
        "{:?}",
        files_in(&home)
    );

    // Logged out already: nothing to do.
    let again = alice(&url, &["--logout"], None, &home).await;
    again.assert_success();
    assert!(
        again.stderr().contains("Not logged in"),
        "{}",
        again.stderr()
    );
}

/// Issue 30: Bob's logout on a profile whose file is Alice's must not remove it (nor
/// revoke her tokens): it says whose file it is, exits non-zero, and leaves it.
#[tokio::test]
async fn a_logout_of_another_users_profile_leaves_the_file_and_says_whose_it_is() {
    let s = common::start().await;
    let home = home("wrong-owner");
    let url = s.token_url();
    let login = alice(
        &url,
        &["--profile", "work", "--password-stdin"],
        Some("wonderland\n"),
        &home,
    )
    .await;
    login.assert_success();
    let file = home.join("tower-bearer/work.json");
    let before = std::fs::read(&file).unwrap();

    let bob = run(
        &[
            "-u",
            "bob",
            "--token-url",
            &url,
            "--profile",
            "work",
            "--logout",
        ],
        None,
        &home,
    )
    .await;
    assert!(
        file.exists(),
        "Bob's logout removed Alice's token file; stderr: {}",
        bob.stderr()
    );
    let err = bob.one_line_failure();
    assert!(err.contains("\"alice\""), "{err}");
    assert!(err.contains("work.json"), "{err}");
    assert!(!err.contains("cleared"), "{err}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "the file changed");
    let _ = std::fs::remove_dir_all(home);
}

/// Issue 30, the race behind "Bob's logout deletes Alice's token file": the file is
/// Bob's when the CLI reads it, and Alice's (she logged in on the same profile
/// meanwhile) when the logout clears it. Bob's CLI is held between the two steps
/// by a named pipe at the token file's path: its first read blocks on the pipe
/// until Alice's file has replaced the pipe, then gets Bob's file from it. The
/// logout must leave Alice's file, say so in one line and exit non-zero.
#[cfg(unix)]
#[tokio::test]
async fn a_logout_racing_another_users_login_leaves_her_file() {
    let s = common::start().await;
    let home = home("wrong-owner-race");
    let url = s.token_url();
    let login = alice(
        &url,
        &["--profile", "work", "--password-stdin"],
        Some("wonderland\n"),
        &home,
    )
    .await;
    login.assert_success();
    let dir = home.join("tower-bearer");
    let file = dir.join("work.json");
    let alices = std::fs::read(&file).unwrap();
    let aside = dir.join("alice-aside.json");
    std::fs::rename(&file, &aside).unwrap();

    // What Bob's file holds, written by the library itself elsewhere.
    let scratch = self::home("wrong-owner-race-bob");
    let bob_store = tower_bearer::client::FileStore::at(scratch.join("bob.json"), "bob", &url);
    let bob_token = tower_bearer::Token::bearer("at-bob")
        .unwrap()
        .with_refresh_token("rt-bob");
    tower_bearer::client::TokenStore::save(&bob_store, &bob_token)
        .await
        .unwrap();
    let bobs = std::fs::read(bob_store.path()).unwrap();

    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    // Once Bob's CLI opens the pipe to read: Alice's file takes the path, then Bob's
    // file goes down the pipe.
    let feeder = {
        let (file, aside) = (file.clone(), aside.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
            std::fs::rename(&aside, &file).unwrap();
            pipe.write_all(&bobs).unwrap();
        })
    };
    let bob = run(
        &[
            "-u",
            "bob",
            "--token-url",
            &url,
            "--profile",
            "work",
            "--logout",
        ],
        None,
        &home,
    )
    .await;
    if !feeder.is_finished() {
        // Bob never read the pipe: open it here so that the feeder ends.
        drop(std::fs::File::open(&file));
    }
    feeder.join().unwrap();

    assert!(
        file.exists(),
        "Bob's logout removed Alice's token file; stderr: {}",
        bob.stderr()
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        alices,
        "Alice's file changed"
    );
    let err = bob.one_line_failure();
    assert!(err.contains("\"alice\""), "{err}");
    assert!(!err.contains("cleared"), "{err}");
    assert!(err.contains("work.json was left as it is"), "{err}");
    let _ = std::fs::remove_dir_all(home);
    let _ = std::fs::remove_dir_all(scratch);
}

/// A `generate_tokens` process still running, its stderr collected as it comes.
struct Running {
    child: tokio::process::Child,
    stderr: tokio::sync::watch::Receiver<String>,
}

impl Running {
    /// Starts `generate_tokens <args…>` with its config dir in `home`, stdin closed.
    fn start(args: &[&str], home: &Path) -> Running {
        let mut child = Command::new(common::bins::example_binary("generate_tokens"))
            .args(args)
            .env("XDG_CONFIG_HOME", home)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let (tx, stderr) = tokio::sync::watch::channel(String::new());
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap());
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut line = String::new();
            while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
                tx.send_modify(|all| all.push_str(&line));
                line.clear();
            }
        });
        Running { child, stderr }
    }

    /// Waits until its stderr so far satisfies `cond` (or it ends: then `false`).
    async fn stderr_until(&mut self, cond: impl Fn(&str) -> bool) -> bool {
        self.stderr.wait_for(|s| cond(s)).await.is_ok()
    }

    fn stderr_now(&self) -> String {
        self.stderr.borrow().clone()
    }

    /// Its exit status, stdout and whole stderr.
    async fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        let mut stdout = String::new();
        tokio::io::AsyncReadExt::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout)
            .await
            .unwrap();
        let status = self.child.wait().await.unwrap();
        // The reader ends at EOF: the whole stderr is in.
        let _ = self.stderr.wait_for(|_| false).await;
        let stderr = self.stderr.borrow().clone();
        (status, stdout, stderr)
    }
}

/// The `export <PREFIX>_ACCESS_TOKEN=…` line of a run's stdout.
fn access_line(stdout: &str) -> String {
    stdout
        .lines()
        .find(|l| l.starts_with("export APP_ACCESS_TOKEN="))
        .unwrap_or_else(|| panic!("no access token printed: {stdout:?}"))
        .to_owned()
}

const WAITING: &str = "Waiting for another process using";

/// Issue 30: two CLI processes started together with no token make ONE login: one
/// shows the device code, the other waits for it, and both print the same token.
#[tokio::test]
async fn two_device_logins_started_together_make_one_login() {
    let s = common::start().await;
    *s.idp.device_interval.lock().unwrap() = Some(1);
    // The person takes their time: the polls answer "pending" until the test says.
    s.idp
        .device_script
        .lock()
        .unwrap()
        .extend(std::iter::repeat_n("authorization_pending", 10_000));
    let home = home("device-together");
    let url = s.token_url();
    let args = ["-u", "alice", "--token-url", &url, "--device"];
    let mut a = Running::start(&args, &home);
    let mut b = Running::start(&args, &home);

    // Each one either shows the code or waits for the other.
    let shown_or_waiting = |s: &str| s.contains("WDJB-MJHT") || s.contains(WAITING);
    let limit = std::time::Duration::from_secs(60);
    let both = async {
        assert!(a.stderr_until(shown_or_waiting).await, "{}", a.stderr_now());
        assert!(b.stderr_until(shown_or_waiting).await, "{}", b.stderr_now());
    };
    tokio::time::timeout(limit, both)
        .await
        .expect("neither shows a code nor waits");
    let shown = [&a, &b]
        .iter()
        .filter(|r| r.stderr_now().contains("WDJB-MJHT"))
        .count();
    assert_eq!(
        shown,
        1,
        "one process shows the code, the other waits:\nA: {}\nB: {}",
        a.stderr_now(),
        b.stderr_now()
    );
    // The person approves.
    s.idp.device_script.lock().unwrap().clear();

    let (sa, out_a, err_a) = tokio::time::timeout(limit, a.finish()).await.unwrap();
    let (sb, out_b, err_b) = tokio::time::timeout(limit, b.finish()).await.unwrap();
    assert!(sa.success() && sb.success(), "A: {err_a}\nB: {err_b}");
    assert_eq!(
        access_line(&out_a),
        access_line(&out_b),
        "A: {err_a}\nB: {err_b}"
    );
    assert_eq!(
        s.idp.device_requests.lock().unwrap().len(),
        1,
        "one device authorization request"
    );
    let file = home
        .join("tower-bearer")
        .join(tower_bearer::client::FileStore::file_name("alice", &url));
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    let at = saved["token"]["access_token"].as_str().unwrap();
    assert!(access_line(&out_a).contains(at));
    let _ = std::fs::remove_dir_all(home);
}

/// A token endpoint whose refreshes wait at a gate the test opens: what a second
/// process does while the first one refreshes is then certain.
struct GatedIdp {
    /// Every token request's grant type, in order.
    grants: Mutex<Vec<String>>,
    /// The refresh token valid now (each refresh rotates it).
    valid: Mutex<String>,
    /// Told when a refresh arrives at the gate.
    arrived: tokio::sync::mpsc::UnboundedSender<()>,
    gate: tokio::sync::Semaphore,
    next: std::sync::atomic::AtomicU64,
}

use std::sync::{Arc, Mutex};

async fn gated_token(
    axum::extract::State(idp): axum::extract::State<Arc<GatedIdp>>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    idp.grants.lock().unwrap().push(grant.clone());
    let presented = form.get("refresh_token").cloned().unwrap_or_default();
    if grant != "refresh_token" || presented != *idp.valid.lock().unwrap() {
        let body = serde_json::json!({"error": "invalid_grant"});
        return (axum::http::StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
    }
    let _ = idp.arrived.send(());
    idp.gate.acquire().await.unwrap().forget();
    let n = idp.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let rt = format!("rt-{n}");
    *idp.valid.lock().unwrap() = rt.clone();
    axum::Json(serde_json::json!({
        "access_token": format!("at-{n}"),
        "token_type": "Bearer",
        "expires_in": 3600,
        "refresh_token": rt,
    }))
    .into_response()
}

/// Issue 30: a process started while another refreshes the token file's expired
/// token adopts the new token instead of refreshing (the refresh token rotates: a
/// second refresh would present a spent one).
#[tokio::test]
async fn a_process_started_during_a_refresh_adopts_its_token() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let idp = Arc::new(GatedIdp {
        grants: Mutex::new(Vec::new()),
        valid: Mutex::new("rt-0".into()),
        arrived: arrived_tx,
        gate: tokio::sync::Semaphore::new(0),
        next: std::sync::atomic::AtomicU64::new(1),
    });
    let app = axum::Router::new()
        .route("/token", axum::routing::post(gated_token))
        .with_state(Arc::clone(&idp));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // The file holds an expired token and its refresh token.
    let home = home("refresh-adopt");
    let path = home
        .join("tower-bearer")
        .join(tower_bearer::client::FileStore::file_name("alice", &url));
    let store = tower_bearer::client::FileStore::at(&path, "alice", &url);
    let expired = tower_bearer::Token::bearer("at-0")
        .unwrap()
        .with_expires_in(std::time::Duration::ZERO)
        .with_refresh_token("rt-0");
    tower_bearer::client::TokenStore::save(&store, &expired)
        .await
        .unwrap();

    // No password can be read (stdin is not a terminal): a login would fail.
    let args = ["-u", "alice", "--token-url", &url];
    let limit = std::time::Duration::from_secs(60);
    let mut a = Running::start(&args, &home);
    let refreshing = async {
        tokio::select! {
            r = arrived.recv() => r.unwrap(),
            _ = a.stderr_until(|_| false) => panic!(
                "the first process ended without refreshing: {}",
                a.stderr_now()
            ),
        }
    };
    tokio::time::timeout(limit, refreshing)
        .await
        .expect("the first process never refreshed");
    let mut b = Running::start(&args, &home);
    let waits = tokio::time::timeout(limit, b.stderr_until(|s| s.contains(WAITING))).await;
    assert!(
        matches!(waits, Ok(true)),
        "the second process does not wait: {}",
        b.stderr_now()
    );
    idp.gate.add_permits(10);

    let (sa, out_a, err_a) = tokio::time::timeout(limit, a.finish()).await.unwrap();
    let (sb, out_b, err_b) = tokio::time::timeout(limit, b.finish()).await.unwrap();
    assert!(sa.success() && sb.success(), "A: {err_a}\nB: {err_b}");
    assert_eq!(access_line(&out_a), "export APP_ACCESS_TOKEN='at-1'");
    assert_eq!(
        access_line(&out_b),
        "export APP_ACCESS_TOKEN='at-1'",
        "{err_b}"
    );
    assert_eq!(
        *idp.grants.lock().unwrap(),
        ["refresh_token"],
        "one token request between them"
    );
    assert!(err_b.contains("Using the tokens in"), "{err_b}");
    let _ = std::fs::remove_dir_all(home);
}

/// Issue 30, through the library the CLI uses: a login refused with `invalid_grant`
/// (a wrong password: no refresh token was presented) is that refusal, final, as
/// without the shared file; not "the refresh token was spent elsewhere", which is
/// retryable and would have a cache send the wrong password again and again.
#[tokio::test]
async fn a_refused_login_through_a_shared_file_stays_a_final_invalid_grant() {
    use tower_bearer::client::TokenSource;
    let s = common::start().await;
    let home = home("shared-wrong-password");
    let url = s.token_url();
    let store = tower_bearer::client::FileStore::at(home.join("t.json"), "alice", &url);
    let endpoint = tower_bearer::client::TokenEndpoint::new(&url)
        .unwrap()
        .client_id("cli");
    let shared = store.shared(endpoint.password("alice", "not-the-password"));
    let err = shared.fetch(None).await.unwrap_err();
    assert!(
        matches!(err, tower_bearer::Error::InvalidGrant(_)) && !err.is_retryable(),
        "{err:?}"
    );
    assert_eq!(s.idp.tokens(), 1);
    let _ = std::fs::remove_dir_all(home);
}

/// With a valid token in the file, a second run prints it without logging in (any
/// process sharing the file would adopt it); `--relogin` logs in anyway, and the
/// new login replaces it in the file.
#[tokio::test]
async fn a_saved_token_is_printed_again_and_relogin_logs_in_anew() {
    let s = common::start().await;
    let home = home("relogin");
    let url = s.token_url();
    let first = alice(&url, &["--password-stdin"], Some("wonderland\n"), &home).await;
    first.assert_success();
    let again = alice(&url, &["--password-stdin"], Some("wonderland\n"), &home).await;
    again.assert_success();
    assert_eq!(access_line(&again.stdout()), access_line(&first.stdout()));
    assert!(again.stderr().contains("--relogin"), "{}", again.stderr());
    assert_eq!(*s.idp.grants.lock().unwrap(), ["password"]);

    let relogin = alice(
        &url,
        &["--password-stdin", "--relogin"],
        Some("wonderland\n"),
        &home,
    )
    .await;
    relogin.assert_success();
    assert_ne!(access_line(&relogin.stdout()), access_line(&first.stdout()));
    assert_eq!(*s.idp.grants.lock().unwrap(), ["password", "password"]);
    let after = alice(&url, &[], None, &home).await;
    after.assert_success();
    assert_eq!(access_line(&after.stdout()), access_line(&relogin.stdout()));
    let _ = std::fs::remove_dir_all(home);
}

/// Bob's login on a profile whose file is Alice's: refused in one line before any
/// login (the shared file's state is unknown to him), her file left as it is.
#[tokio::test]
async fn a_login_on_another_users_profile_is_refused_before_logging_in() {
    let s = common::start().await;
    let home = home("wrong-owner-login");
    let url = s.token_url();
    let login = alice(
        &url,
        &["--profile", "work", "--password-stdin"],
        Some("wonderland\n"),
        &home,
    )
    .await;
    login.assert_success();
    let file = home.join("tower-bearer/work.json");
    let before = std::fs::read(&file).unwrap();
    for extra in [None, Some("--relogin")] {
        let mut args = vec![
            "-u",
            "bob",
            "--token-url",
            &url,
            "--profile",
            "work",
            "--password-stdin",
        ];
        args.extend(extra);
        let bob = run(&args, Some("bobs-password\n"), &home).await;
        let err = bob.one_line_failure();
        assert!(err.contains("\"alice\""), "{err}");
        assert!(!err.contains("bobs-password"), "{err}");
    }
    assert_eq!(std::fs::read(&file).unwrap(), before, "the file changed");
    assert_eq!(s.idp.tokens(), 1, "only Alice's login reached the server");
    let _ = std::fs::remove_dir_all(home);
}
