//! Revocations through a real Redis, seen by every server replica.
//!
//! Needs `REDIS_URL` (`.ci/run` starts a redis-server and sets it). Without it the
//! tests skip with a loud message, except under `CI`, where they fail.
#![cfg(feature = "redis")]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use tokio::time::Instant;
use tower_bearer::redis::RedisDenylist;
use tower_bearer::server::{RequireBearerLayer, StaticTokens};

fn loud(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED fleet test: {why} !!!\n");
}

async fn redis_url() -> Option<String> {
    let ci = std::env::var_os("CI").is_some();
    let Ok(url) = std::env::var("REDIS_URL") else {
        assert!(
            !ci,
            "CI is set but REDIS_URL is not: the fleet tests must run in CI"
        );
        loud("REDIS_URL is not set; the fleet tests need a Redis");
        return None;
    };
    match RedisDenylist::connect(&url).await {
        Ok(_) => Some(url),
        Err(e) if ci => panic!("CI: Redis at {url} is unreachable: {e}"),
        Err(e) => {
            loud(&format!("Redis at {url} is unreachable ({e})"));
            None
        }
    }
}

/// A server replica: `GET /` behind a bearer check with two tokens, whose claims
/// are their `jti`s, and the denylist.
async fn replica(denylist: RedisDenylist) -> SocketAddr {
    let validator =
        StaticTokens::new([("tok-1", "jti-1".to_owned()), ("tok-2", "jti-2".to_owned())]);
    let guarded = denylist
        .guard(validator)
        .jti(|jti: &String| Some(jti.clone()));
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(RequireBearerLayer::new(guarded));
    common::serve(app).await
}

async fn status(addr: SocketAddr, token: &str) -> (u16, String) {
    let header = format!("Bearer {token}");
    let answer = common::send_raw(addr, "/", &[("authorization", header.as_bytes())]).await;
    let challenge = answer.challenge().to_owned();
    (answer.status, challenge)
}

fn prefix() -> String {
    format!(
        "test-denied-{}-{:x}:",
        std::process::id(),
        fastrand::u64(..)
    )
}

async fn denylist(url: &str, prefix: &str) -> RedisDenylist {
    let client = redis::Client::open(url).unwrap();
    let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
    RedisDenylist::with_connection(conn, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_revoked_jti_is_refused_by_four_replicas_within_a_second() {
    let Some(url) = redis_url().await else { return };
    let prefix = prefix();
    let mut replicas = Vec::new();
    for _ in 0..4 {
        // Default staleness: 1 s.
        replicas.push(replica(denylist(&url, &prefix).await).await);
    }
    for &addr in &replicas {
        assert_eq!(
            status(addr, "tok-1").await.0,
            200,
            "accepted before revocation"
        );
    }

    let admin = denylist(&url, &prefix).await;
    admin
        .revoke_jti("jti-1", SystemTime::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let revoked = Instant::now();
    // Until every replica refused it: a request that starts 1 s (the staleness) after
    // the revocation is refused, however slow the machine is.
    let mut refused = [false; 4];
    let mut last_accepted = Duration::ZERO;
    while !refused.iter().all(|r| *r) {
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "not refused everywhere: {refused:?}"
        );
        for (i, &addr) in replicas.iter().enumerate() {
            let started = revoked.elapsed();
            let (code, challenge) = status(addr, "tok-1").await;
            if code == 401 {
                assert!(challenge.contains("invalid_token"), "{challenge}");
                refused[i] = true;
            } else {
                assert_eq!(code, 200);
                assert!(!refused[i], "replica {i} accepted a token it had refused");
                last_accepted = last_accepted.max(started);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        last_accepted < Duration::from_secs(1),
        "a replica accepted the revoked token {last_accepted:?} after the revocation"
    );
    eprintln!(
        "denylist: last accepted {last_accepted:?}, all refused after {:?}",
        revoked.elapsed()
    );
    for &addr in &replicas {
        assert_eq!(
            status(addr, "tok-2").await.0,
            200,
            "other tokens unaffected"
        );
    }

    // By token hash: refused at once by a replica that has not cached it yet.
    admin
        .revoke_token("tok-2", SystemTime::now() + Duration::from_secs(60))
        .await
        .unwrap();
    let fresh = replica(denylist(&url, &prefix).await).await;
    assert_eq!(status(fresh, "tok-2").await.0, 401);
    // An entry for an already expired token is not written (it is refused anyway).
    admin
        .revoke_jti("jti-old", SystemTime::now() - Duration::from_secs(1))
        .await
        .unwrap();
    assert!(!admin.is_revoked("x", Some("jti-old")).await.unwrap());
}

struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_denylist_fails_closed_without_redis_and_open_when_configured() {
    if redis_url().await.is_none() {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server is installed");
    let redis = OwnRedis(child);
    let url = format!("redis://127.0.0.1:{port}/");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (closed, open) = loop {
        if let Ok(closed) = RedisDenylist::connect(&url).await {
            let open = RedisDenylist::connect(&url).await.unwrap();
            break (closed, open);
        }
        assert!(Instant::now() < deadline, "redis-server never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let closed = replica(closed.staleness(Duration::ZERO)).await;
    let open = replica(open.staleness(Duration::ZERO).fail_open(true)).await;
    assert_eq!(status(closed, "tok-1").await.0, 200);
    assert_eq!(status(open, "tok-1").await.0, 200);

    drop(redis);
    assert_eq!(
        status(closed, "tok-1").await.0,
        503,
        "fail closed by default"
    );
    assert_eq!(
        status(open, "tok-1").await.0,
        200,
        "fail open when configured"
    );
    assert_eq!(
        status(closed, "unknown").await.0,
        401,
        "bad tokens stay bad"
    );
}
