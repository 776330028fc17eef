//! The pinned `oidc-provider` (panva's certified OpenID provider, npm, the version
//! in `interop/package-lock.json`), started on 127.0.0.1 by `interop/provider.mjs`:
//! its start-up, its test routes (`/_test/counts`, `/_test/fail`, `/_test/approve`,
//! `/_test/browse`) and introspection, for the interop test files
//! (`tests/interop_oidc_provider.rs`, `interop_openid.rs`, `interop_fapi.rs`);
//! [`Provider::start_with`] passes extra options (`--fapi`).
//!
//! Needs `node` (20.18 or later); the provider is installed into
//! `interop/node_modules` with `npm ci` when it is not there. Without them
//! [`Provider::start`] gives `None` after a loud message, except under `CI`, where
//! it fails the test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Access tokens live this long at the provider (whole seconds, as it counts them).
pub const TTL: u64 = 4;

pub fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Whether the provider can run here; false (after a loud message) when it cannot,
/// outside CI; a failure under CI.
pub fn provider_available() -> bool {
    let ci = std::env::var_os("CI").is_some();
    // oidc-provider 9 needs Node.js 20.18 or later (`.ci/run` installs one).
    let node = std::process::Command::new("node")
        .args([
            "-e",
            "const [a, b] = process.versions.node.split('.').map(Number); \
             process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let installed = node && install_provider();
    let why = match (node, installed) {
        (true, true) => return true,
        (false, _) => "node 20.18 or later is not installed",
        (true, false) => "oidc-provider could not be installed (cd interop && npm ci)",
    };
    assert!(!ci, "CI: the interop tests must run, but {why}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED interop test: {why} !!!\n");
    false
}

/// Whether `interop/node_modules` holds the pinned provider, after `npm ci` (from
/// the lockfile) if it did not: `cargo test` sets up what it needs. Once per run.
pub fn install_provider() -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let present = || {
            interop_dir()
                .join("node_modules/oidc-provider/package.json")
                .exists()
        };
        if present() {
            return true;
        }
        let _ = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(interop_dir())
            .stdout(Stdio::null())
            .status();
        present()
    })
}

/// One running `oidc-provider`.
pub struct Provider {
    pub child: Child,
    pub port: u16,
    pub issuer: String,
    pub kid: String,
    pub http: reqwest::Client,
}

impl Provider {
    /// Starts a provider on a free port, or None when it cannot run here.
    pub async fn start() -> Option<Provider> {
        if !provider_available() {
            return None;
        }
        Some(Self::start_on(super::server::free_port()).await)
    }

    /// Starts a provider on `port`, with a fresh signing key; fails the test when it
    /// does not come up within 90 s (a hang guard: on a
    /// loaded 2-core CI machine, loading oidc-provider once took over 20 s).
    pub async fn start_on(port: u16) -> Provider {
        Self::start_on_with(port, &[]).await
    }

    /// Starts a provider on a free port with these extra options of
    /// `interop/provider.mjs` (`--fapi`), or None when it cannot run here.
    pub async fn start_with(options: &[&str]) -> Option<Provider> {
        if !provider_available() {
            return None;
        }
        Some(Self::start_on_with(super::server::free_port(), options).await)
    }

    /// As [`start_on`](Self::start_on), with these extra options.
    pub async fn start_on_with(port: u16, options: &[&str]) -> Provider {
        // A hang guard, not a time assertion: on a loaded 2-core machine a start
        // once took over 20 s (and once more than 90 s), so a start that stalls
        // is killed and tried again on the same port, three times in all.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::spawn(port, options).await {
                Ok((child, line)) => return Self::ready(child, port, &line),
                Err(why) if attempt < 3 => eprintln!("provider:{port}: {why}; starting it again"),
                Err(why) => panic!("oidc-provider on port {port}: {why}, three times"),
            }
        }
    }

    /// Runs `interop/provider.mjs` and waits (60 s at most) for its `ready` line;
    /// the child is killed when it does not come.
    async fn spawn(port: u16, options: &[&str]) -> Result<(Child, String), String> {
        let started = std::time::Instant::now();
        let mut child = Command::new("node")
            .arg(interop_dir().join("provider.mjs"))
            .args(["--port", &port.to_string(), "--ttl", &TTL.to_string()])
            .args(options)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run node");
        // Its output goes to the test's (shown when a test fails), to the end.
        let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stderr.next_line().await {
                eprintln!("provider:{port}: {line}");
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = match timeout(Duration::from_secs(60), lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = child.wait().await;
                return Err(format!("exited before it was ready ({status:?})"));
            }
            Err(_) => {
                let _ = child.kill().await;
                return Err("not ready within 60 s".to_owned());
            }
        };
        let took = started.elapsed();
        if took > Duration::from_secs(5) {
            eprintln!("provider:{port}: ready after {took:?}");
        }
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("provider:{port}: {line}");
            }
        });
        Ok((child, line))
    }

    fn ready(child: Child, port: u16, line: &str) -> Provider {
        let mut words = line.split_whitespace();
        assert_eq!(words.next(), Some("ready"), "{line}");
        let issuer = words.next().unwrap().to_owned();
        let kid = words.next().unwrap().to_owned();
        assert_eq!(issuer, format!("http://127.0.0.1:{port}"));
        Provider {
            child,
            port,
            issuer,
            kid,
            http: reqwest::Client::new(),
        }
    }

    pub async fn stop(mut self) -> u16 {
        self.child.kill().await.unwrap();
        self.port
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Requests served, per endpoint and grant type.
    pub async fn counts(&self) -> HashMap<String, u64> {
        self.http
            .get(self.url("/_test/counts"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap()
    }

    pub async fn count(&self, key: &str) -> u64 {
        self.counts().await.get(key).copied().unwrap_or(0)
    }

    /// The token endpoint answers `status` from now on (0: answers again).
    pub async fn fail_tokens(&self, status: u16) {
        let res = self
            .http
            .post(self.url(&format!("/_test/fail?status={status}")))
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
    }

    /// A person approves the device login `user_code` on the provider's pages.
    pub async fn approve(&self, user_code: &str) {
        let res = self
            .http
            .post(self.url("/_test/approve"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("user_code={user_code}"))
            .send()
            .await
            .unwrap();
        let status = res.status();
        assert!(
            status.is_success(),
            "approve: {}",
            res.text().await.unwrap()
        );
    }

    /// A person's browser opens `url`, logs in and consents (or cancels, with
    /// `decline`), and follows the redirect back to the client: the status and text
    /// of the client's page.
    pub async fn browse(&self, url: &str, decline: bool) -> (u16, String) {
        let res = self
            .http
            .post(self.url("/_test/browse"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(
                serde_urlencoded::to_string([
                    ("url", url),
                    ("decline", if decline { "1" } else { "0" }),
                ])
                .unwrap(),
            )
            .send()
            .await
            .unwrap();
        let status = res.status();
        let answer: serde_json::Value =
            serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert!(status.is_success(), "browse: {answer}");
        (
            answer["status"].as_u64().unwrap() as u16,
            answer["body"].as_str().unwrap().to_owned(),
        )
    }

    /// What the provider's introspection endpoint says of `token`, asked as the API.
    pub async fn introspect(&self, token: &str) -> serde_json::Value {
        self.http
            .post(self.url("/token/introspection"))
            .basic_auth("api", Some("api-secret-0123456789"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap()
    }
}
