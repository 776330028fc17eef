//! The Redis the fleet tests run against (`REDIS_URL`; `.ci/run` starts one).
//! Without it they skip with a loud message, except under `CI`, where they fail.

use std::process::{Child, Command, Stdio};

use tower_bearer::redis::RedisStore;

/// The Redis to test against, or None (after a loud message) when there is none
/// outside CI.
pub async fn redis_url() -> Option<String> {
    let ci = std::env::var_os("CI").is_some();
    let Ok(url) = std::env::var("REDIS_URL") else {
        assert!(
            !ci,
            "CI is set but REDIS_URL is not: the fleet tests must run in CI"
        );
        loud("REDIS_URL is not set; the fleet tests need a Redis");
        return None;
    };
    match RedisStore::connect(&url, "probe").await {
        Ok(_) => Some(url),
        Err(e) if ci => panic!("CI: Redis at {url} is unreachable: {e}"),
        Err(e) => {
            loud(&format!("Redis at {url} is unreachable ({e})"));
            None
        }
    }
}

/// Straight to stderr, past the test harness's output capture.
pub fn loud(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED fleet test: {why} !!!\n");
}

/// A redis-server of our own on `port`, killed on drop.
pub struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    pub fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        OwnRedis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
