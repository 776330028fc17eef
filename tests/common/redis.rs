//! The Redis deployments the fleet tests run against (`.ci/run` starts them): one
//! server (`REDIS_URL`), one over TLS that wants a client certificate
//! (`REDIS_TLS_URL`, `REDIS_TLS_CA`, `REDIS_TLS_CERT`, `REDIS_TLS_KEY`) and a cluster
//! of three masters (`REDIS_CLUSTER_URLS`, comma-separated). Without one, its tests
//! skip with a loud message, except under `CI`, where they fail.

use std::process::{Child, Command, Stdio};

use tower_bearer::redis::{RedisConfig, RedisConnection, RedisDenylist, RedisStore};

/// One Redis deployment to test against.
#[derive(Clone, Debug)]
pub struct Redis {
    pub config: RedisConfig,
    /// The server, or each node of the cluster, for commands a node answers for
    /// itself (`INFO`).
    pub nodes: Vec<redis::Client>,
}

impl Redis {
    /// The single server at `REDIS_URL`.
    pub async fn plain() -> Option<Self> {
        Some(Self::at(&redis_url().await?))
    }

    /// The plain server at `url`.
    pub fn at(url: &str) -> Self {
        Redis {
            config: RedisConfig::new(url),
            nodes: vec![redis::Client::open(url).unwrap()],
        }
    }

    /// The TLS server at `REDIS_TLS_URL`, trusted through `REDIS_TLS_CA`, with the
    /// client certificate `REDIS_TLS_CERT` / `REDIS_TLS_KEY`.
    #[cfg(feature = "redis-tls")]
    pub async fn tls() -> Option<Self> {
        let url = env("REDIS_TLS_URL")?;
        let read = |var: &str| {
            let path =
                std::env::var(var).unwrap_or_else(|_| panic!("{var} is set with REDIS_TLS_URL"));
            std::fs::read(&path).unwrap_or_else(|e| panic!("{var} {path}: {e}"))
        };
        let certs = redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("REDIS_TLS_CERT"),
                client_key: read("REDIS_TLS_KEY"),
            }),
            root_cert: Some(read("REDIS_TLS_CA")),
        };
        let config = RedisConfig::new(&url)
            .ca_pem(read("REDIS_TLS_CA"))
            .client_cert(read("REDIS_TLS_CERT"), read("REDIS_TLS_KEY"));
        let node = redis::Client::build_with_tls(url.as_str(), certs).unwrap();
        Self::reachable(config, vec![node]).await
    }

    /// Without the `redis-tls` feature there is no TLS deployment to test.
    #[cfg(not(feature = "redis-tls"))]
    pub async fn tls() -> Option<Self> {
        loud("the redis-tls feature is off");
        None
    }

    /// The cluster whose nodes are `REDIS_CLUSTER_URLS`.
    #[cfg(feature = "redis-cluster")]
    pub async fn cluster() -> Option<Self> {
        let urls = env("REDIS_CLUSTER_URLS")?;
        let nodes = urls
            .split(',')
            .map(|u| redis::Client::open(u).unwrap())
            .collect();
        Self::reachable(RedisConfig::cluster(urls.split(',')), nodes).await
    }

    /// Without the `redis-cluster` feature there is no cluster to test.
    #[cfg(not(feature = "redis-cluster"))]
    pub async fn cluster() -> Option<Self> {
        loud("the redis-cluster feature is off");
        None
    }

    #[allow(dead_code)] // not without the TLS or cluster features
    async fn reachable(config: RedisConfig, nodes: Vec<redis::Client>) -> Option<Self> {
        match config.connect().await {
            Ok(_) => Some(Redis { config, nodes }),
            Err(e) if ci() => panic!("CI: Redis {config:?} is unreachable: {e}"),
            Err(e) => {
                loud(&format!("Redis {config:?} is unreachable ({e})"));
                None
            }
        }
    }

    /// A connection of the test's own, to look at or change keys.
    pub async fn conn(&self) -> RedisConnection {
        self.config.connect().await.unwrap()
    }

    /// A store for `profile`, as a replica makes it.
    pub async fn store(&self, profile: &str) -> RedisStore {
        RedisStore::connect_with(&self.config, profile)
            .await
            .unwrap()
    }

    /// A denylist with the key prefix `prefix`.
    pub async fn denylist(&self, prefix: &str) -> RedisDenylist {
        RedisDenylist::with_connection(self.conn().await, prefix)
    }

    /// How many `SET` commands (lock attempts) the server or the cluster's nodes
    /// have run.
    pub async fn set_calls(&self) -> u64 {
        let mut calls = 0;
        for node in &self.nodes {
            let mut conn = node.get_multiplexed_async_connection().await.unwrap();
            let info: String = redis::cmd("INFO")
                .arg("commandstats")
                .query_async(&mut conn)
                .await
                .unwrap();
            calls += info
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
                .and_then(|rest| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        calls
    }

    /// Runs `cmd` on this deployment.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query_async(&mut self.conn().await).await.unwrap()
    }
}

fn ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// The variable, or None (after a loud message) when it is not set outside CI.
#[allow(dead_code)]
fn env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) => Some(value),
        Err(_) => {
            assert!(
                !ci(),
                "CI is set but {var} is not: the fleet tests must run in CI"
            );
            loud(&format!("{var} is not set"));
            None
        }
    }
}

/// Each body runs as three tests, `name::plain`, `name::tls` and `name::cluster`,
/// against each deployment, `redis` bound to a [`Redis`].
#[allow(unused_macros)] // not every test binary uses it
macro_rules! on_every_redis {
    ($(#[$doc:meta])* async fn $name:ident($redis:ident) $body:block) => {
        $(#[$doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            use crate::common::redis::Redis;

            async fn run($redis: Redis) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn plain() {
                if let Some(redis) = Redis::plain().await {
                    run(redis).await
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tls() {
                if let Some(redis) = Redis::tls().await {
                    run(redis).await
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                if let Some(redis) = Redis::cluster().await {
                    run(redis).await
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_every_redis;

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

    /// This server as a deployment to test against.
    pub fn redis(&self) -> Redis {
        Redis::at(&self.url())
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
