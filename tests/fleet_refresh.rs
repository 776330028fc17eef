//! A fleet of replicas sharing one rotating refresh token through a real Redis.
//!
//! Each test named `…::plain`, `…::tls` and `…::cluster` runs against one Redis
//! server, one over TLS and a cluster of three (`.ci/run` starts them; see
//! tests/common/redis.rs). Without one, its tests skip with a loud message, except
//! under `CI`, where they fail.
#![cfg(feature = "redis")]

mod common;

use common::endpoint;
use common::redis::{on_every_redis, redis_url, OwnRedis, Redis};

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_bearer::client::{source, Refreshing, TokenSource, TokenStore};
use tower_bearer::redis::{FleetSource, RedisStore};
use tower_bearer::{Error, Token};

/// A profile no other test (or earlier run) uses.
fn profile(name: &str) -> String {
    format!("{name}-{}-{:x}", std::process::id(), fastrand::u64(..))
}

async fn fleet_source(
    redis: &Redis,
    profile: &str,
    s: &common::Servers,
) -> FleetSource<impl TokenSource> {
    redis
        .store(profile)
        .await
        .fleet(endpoint(s).refresh_token("rt-0"))
        .poll_interval(Duration::from_millis(5), Duration::from_millis(50))
}

/// Whether the IdP issued `token` and it has not expired.
fn valid_at_api(idp: &common::Idp, token: &str) -> bool {
    idp.access
        .lock()
        .unwrap()
        .get(token)
        .is_some_and(|exp| Instant::now() < *exp)
}

/// Polls `cond` every 10 ms until it holds, for at most `limit`.
async fn until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn lock_held(redis: &Redis, key: &str) -> bool {
    redis.query::<i64>(redis::cmd("EXISTS").arg(key)).await == 1
}

/// Whether a replica claimed the presentation of the refresh token (under the lock).
async fn claimed(redis: &Redis, token_key: &str) -> bool {
    let cmd = redis::cmd("HEXISTS")
        .arg(token_key)
        .arg("presenting")
        .clone();
    redis.query::<i64>(&cmd).await == 1
}

async fn redis_del(redis: &Redis, key: &str) {
    redis.query::<()>(redis::cmd("DEL").arg(key)).await;
}
on_every_redis! {
    async fn fleet_of_eight_replicas_makes_one_token_request_per_expiry(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        s.idp.set_lifetime(Some(1));
        let profile = profile("eight");

        // The API accepts a request whose token the IdP issued and that has not expired.
        let idp = s.idp.clone();
        let api = tower::service_fn(move |req: http::Request<()>| {
            let token = common::bearer(req.headers());
            let ok = valid_at_api(&idp, &token);
            async move { Ok::<_, std::convert::Infallible>(http::Response::new(ok)) }
        });
        let mut replicas = Vec::new();
        for _ in 0..8 {
            let source = fleet_source(&redis, &profile, &s).await;
            let cache = Refreshing::builder(source)
                .refresh_before(Duration::from_millis(300))
                .jitter(Duration::ZERO)
                .backoff(Duration::from_millis(20), Duration::from_millis(200))
                .build();
            replicas.push(tower_bearer::AuthorizeLayer::new(cache).layer(api.clone()));
        }

        // Bursts of concurrent requests on every replica until 2,000 were sent and the
        // token expired (was refreshed) at least five times.
        let started = Instant::now();
        let failures = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        let mut sent = 0;
        while sent < 2_000 || s.idp.tokens() < 6 {
            assert!(started.elapsed() < Duration::from_secs(30), "too slow");
            for replica in &replicas {
                let replica = replica.clone();
                let failures = failures.clone();
                tasks.push(tokio::spawn(async move {
                    match replica.oneshot(http::Request::new(())).await {
                        Ok(res) if *res.body() => {}
                        Ok(_) => {
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => {
                            eprintln!("request failed: {e}");
                            failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }));
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in tasks {
            t.await.unwrap();
        }

        assert_eq!(
            failures.load(Ordering::SeqCst),
            0,
            "every request succeeded"
        );
        let seen = s.idp.refresh_seen.lock().unwrap().clone();
        let distinct: HashSet<_> = seen.iter().collect();
        assert!(
            seen.len() >= 6,
            "five expiries after the first token: {seen:?}"
        );
        assert_eq!(
            distinct.len(),
            seen.len(),
            "each refresh token was presented once: one token request per expiry, 0 invalid_grant"
        );
        assert_eq!(s.idp.tokens(), seen.len(), "only refresh-token requests");
        let store = redis.store(&profile).await;
        assert_eq!(
            store.version().await.unwrap(),
            seen.len() as u64,
            "every token was written to Redis once"
        );
        eprintln!(
            "fleet: {sent} requests, {} token requests in {:?}",
            seen.len(),
            started.elapsed()
        );
    }
}
on_every_redis! {
    async fn fleet_lock_holder_killed_mid_refresh_is_taken_over_after_the_lock_ttl(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("killed");
        let ttl = Duration::from_millis(1_000);

        // The holder's token endpoint never answers; it dies while waiting.
        let hanging = source::from_fn(|_previous: Option<Token>| std::future::pending());
        let holder = Arc::new(
            redis.store(&profile).await
                .fleet(hanging)
                .lock_ttl(ttl),
        );
        let token_key = holder.store().token_key().to_owned();
        let task = {
            let holder = holder.clone();
            tokio::spawn(async move { holder.fetch(None).await })
        };
        until(
            Duration::from_secs(5),
            "the holder took the lock and claimed rt-0",
            || claimed(&redis, &token_key),
        )
        .await;
        task.abort();
        let killed = Instant::now();

        let mut replicas = Vec::new();
        for _ in 0..4 {
            let source = fleet_source(&redis, &profile, &s).await.lock_ttl(ttl);
            replicas.push(Refreshing::new(source));
        }
        let mut tasks = Vec::new();
        for i in 0..200 {
            let replica = replicas[i % replicas.len()].clone();
            tasks.push(tokio::spawn(async move { replica.token().await }));
        }
        let mut tokens = HashSet::new();
        for t in tasks {
            let token = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("no request waits for ever")
                .unwrap()
                .expect("no request is lost");
            tokens.insert(token.access_token().expose_secret().to_owned());
        }
        let waited = killed.elapsed();
        assert!(
            waited >= ttl / 2,
            "the others waited for the dead holder's lock to expire ({waited:?})"
        );
        assert_eq!(tokens.len(), 1, "one token for everybody");
        assert_eq!(
            s.idp.tokens(),
            1,
            "one token request, by the replica that took over"
        );
        assert!(valid_at_api(&s.idp, tokens.iter().next().unwrap()));
    }
}
on_every_redis! {
    async fn fleet_write_of_a_stale_lock_holder_is_refused(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("fenced");

        // A's token endpoint answers only when the test lets it.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let slow = {
            let gate = gate.clone();
            source::from_fn(move |_previous: Option<Token>| {
                let gate = gate.clone();
                async move {
                    let _permit = gate.acquire().await.unwrap();
                    Ok(Token::bearer("from-stale-holder")
                        .unwrap()
                        .with_expires_in(Duration::from_secs(600))
                        .with_refresh_token("rt-stale"))
                }
            })
        };
        let a = Arc::new(
            redis.store(&profile).await
                .fleet(slow),
        );
        let lock_key = a.store().lock_key().to_owned();
        let a_task = {
            let a = a.clone();
            tokio::spawn(async move { a.fetch(None).await })
        };
        until(Duration::from_secs(5), "A took the lock", || {
            lock_held(&redis, &lock_key)
        })
        .await;
        // A's lock lapses (as if A stalled past its TTL); B takes over and, once its
        // patience with A's claim (twice its lock TTL) is over, refreshes.
        redis_del(&redis, &lock_key).await;
        let b = fleet_source(&redis, &profile, &s)
            .await
            .lock_ttl(Duration::from_millis(200));
        let b_token = b.fetch(None).await.unwrap();
        assert_eq!(s.idp.tokens(), 1);
        let store = redis.store(&profile).await;
        assert_eq!(store.version().await.unwrap(), 1);

        // A finishes late: its write is refused and it answers the fleet's token.
        gate.add_permits(1);
        let a_token = tokio::time::timeout(Duration::from_secs(10), a_task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let b_access = b_token.access_token().expose_secret();
        assert_eq!(a_token.access_token().expose_secret(), b_access);
        let stored = store.load().await.unwrap().unwrap();
        assert_eq!(stored.access_token().expose_secret(), b_access);
        assert_eq!(
            stored.refresh_token().unwrap().expose_secret(),
            b_token.refresh_token().unwrap().expose_secret(),
            "the rotated refresh token in Redis is B's"
        );
        assert_eq!(store.version().await.unwrap(), 1, "A wrote nothing");
    }
}

impl OwnRedis {
    async fn ready(&self) {
        let url = self.url();
        until(Duration::from_secs(10), "redis-server answers", || {
            let url = url.clone();
            async move {
                match redis::Client::open(url.as_str()) {
                    Ok(c) => c.get_multiplexed_async_connection().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_clients_recover_after_redis_restarts() {
    // Only to honour the skip rule: this test runs its own redis-server.
    if redis_url().await.is_none() {
        return;
    }
    let s = common::start().await;
    s.idp.add_refresh_token("rt-0");
    s.idp.rotate.store(true, Ordering::SeqCst);
    s.idp.set_lifetime(Some(1));
    let port = common::server::free_port();
    let mut redis = OwnRedis::start(port);
    redis.ready().await;
    let target = redis.redis();
    let profile = profile("restart");

    let mut replicas = Vec::new();
    for _ in 0..3 {
        let source = fleet_source(&target, &profile, &s).await;
        replicas.push(
            Refreshing::builder(source)
                .refresh_before(Duration::from_millis(300))
                .jitter(Duration::ZERO)
                .backoff(Duration::from_millis(20), Duration::from_millis(100))
                .build(),
        );
    }
    for r in &replicas {
        let t = r.token().await.unwrap();
        assert!(valid_at_api(&s.idp, t.access_token().expose_secret()));
    }

    // Redis goes away: once the token expires, refreshes fail with a clear error.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    let error = loop {
        assert!(
            Instant::now() < deadline,
            "a refresh never failed without Redis"
        );
        if let Err(e) = replicas[0].token().await {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let errors = [error];
    assert!(
        matches!(errors[0], Error::Store(_)),
        "a store error, not {:?}",
        errors[0]
    );
    assert!(errors[0].is_retryable());

    // Redis comes back empty (no persistence): the replicas still hold the newest
    // refresh token, and recover without a login.
    let redis = OwnRedis::start(port);
    redis.ready().await;
    for r in &replicas {
        let r = r.clone();
        let idp = s.idp.clone();
        until(
            Duration::from_secs(10),
            "the replica recovered",
            move || {
                let r = r.clone();
                let idp = idp.clone();
                async move {
                    match r.token().await {
                        Ok(t) => valid_at_api(&idp, t.access_token().expose_secret()),
                        Err(Error::InvalidGrant(e)) => panic!("the refresh token was lost: {e}"),
                        Err(_) => false,
                    }
                }
            },
        )
        .await;
    }
    let seen = s.idp.refresh_seen.lock().unwrap().clone();
    let distinct: HashSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "no refresh token used twice");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_of_separate_processes_makes_one_token_request_per_expiry() {
    let Some(url) = redis_url().await else { return };
    let binary = tokio::task::spawn_blocking(|| common::bins::example_binary("fleet_replica"))
        .await
        .unwrap();
    let s = common::start().await;
    s.idp.add_refresh_token("rt-0");
    s.idp.rotate.store(true, Ordering::SeqCst);
    s.idp.set_lifetime(Some(1));
    let profile = profile("processes");

    let mut children = Vec::new();
    for _ in 0..4 {
        let child = tokio::process::Command::new(&binary)
            .args(["--redis", &url, "--profile", &profile])
            .args(["--token-url", &s.token_url(), "--api-url", &s.api_url()])
            .args([
                "--refresh-token",
                "rt-0",
                "--duration",
                "3.5",
                "--tasks",
                "4",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        children.push(child);
    }
    for child in children {
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .expect("the replica finishes")
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let summary = stdout.lines().last().unwrap_or("");
        assert!(
            summary.contains(" failed=0 invalid_grant=0"),
            "{summary}\n{stderr}"
        );
        assert!(!summary.contains("requests=0 "), "{summary}");
    }
    let seen = s.idp.refresh_seen.lock().unwrap().clone();
    let distinct: HashSet<_> = seen.iter().collect();
    assert!(seen.len() >= 4, "several expiries: {seen:?}");
    assert_eq!(distinct.len(), seen.len(), "one token request per expiry");
    assert_eq!(s.idp.tokens(), seen.len());
    assert_eq!(s.idp.api_unauthorized.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_token_refreshed_while_redis_is_down_is_written_when_it_returns() {
    if redis_url().await.is_none() {
        return;
    }
    let s = common::start().await;
    s.idp.add_refresh_token("rt-0");
    s.idp.rotate.store(true, Ordering::SeqCst);
    let port = common::server::free_port();
    let mut redis = OwnRedis::start(port);
    redis.ready().await;
    let url = redis.url();
    let target = redis.redis();
    let profile = profile("lost-write");
    // Redis holds an expired token (version 1) whose refresh token is the live one.
    let seed = Token::bearer("at-seed")
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token("rt-0");
    let store = RedisStore::connect(&url, &profile).await.unwrap();
    store.save(&seed).await.unwrap();
    assert_eq!(store.version().await.unwrap(), 1);

    // The token endpoint is reached only when the test opens the gate.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // Its own refresh token is not valid: the one from Redis must be used.
    let grant = Arc::new(endpoint(&s).refresh_token("rt-not-valid"));
    let gated = {
        let gate = gate.clone();
        source::from_fn(move |previous: Option<Token>| {
            let (gate, grant) = (gate.clone(), grant.clone());
            async move {
                let _permit = gate.acquire().await.unwrap();
                grant.fetch(previous.as_ref()).await
            }
        })
    };
    let holder = Arc::new(
        RedisStore::connect(&url, &profile)
            .await
            .unwrap()
            .fleet(gated),
    );
    let token_key = holder.store().token_key().to_owned();
    let task = {
        let holder = holder.clone();
        tokio::spawn(async move { holder.fetch(None).await })
    };
    until(
        Duration::from_secs(5),
        "the holder took the lock and claimed rt-0",
        || claimed(&target, &token_key),
    )
    .await;
    // Redis dies while the token endpoint rotates the refresh token.
    redis.kill();
    gate.add_permits(1);
    let first = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(first, Err(Error::Store(_))),
        "not served before it is in Redis: {first:?}"
    );
    assert_eq!(s.idp.tokens(), 1, "rt-0 was used, and is dead now");

    // Redis returns empty (version 0, not the 1 the token was refreshed from): the
    // kept token is written first, not refreshed again.
    let _redis = OwnRedis::start(port);
    _redis.ready().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        match holder.fetch(None).await {
            Ok(t) => break t,
            Err(Error::Store(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the token was lost: {e}"),
        }
    };
    assert_eq!(s.idp.tokens(), 1, "no second token request");
    let other = fleet_source(&target, &profile, &s).await;
    let adopted = other.fetch(None).await.unwrap();
    assert_eq!(
        adopted.refresh_token().unwrap().expose_secret(),
        token.refresh_token().unwrap().expose_secret(),
        "the rotated refresh token is in Redis for the fleet"
    );
    assert_eq!(s.idp.tokens(), 1);
    assert!(valid_at_api(&s.idp, adopted.access_token().expose_secret()));
}
on_every_redis! {
    async fn fleet_store_saves_loads_and_never_replaces_a_newer_token(redis) {
        let store = redis.store(&profile("store")).await;
        assert!(store.load().await.unwrap().is_none());
        assert_eq!(store.version().await.unwrap(), 0);
        // Made first, so older, though it lives longer: lineage decides, not expiry.
        let older = Token::bearer("at-old")
            .unwrap()
            .with_expires_in(Duration::from_secs(6000))
            .with_refresh_token("rt-old");
        let newer = Token::bearer("at-new")
            .unwrap()
            .with_expires_in(Duration::from_secs(600))
            .with_refresh_token("rt-new");
        store.save(&newer).await.unwrap();
        store.save(&newer).await.unwrap();
        assert_eq!(
            store.version().await.unwrap(),
            1,
            "the same token is written once"
        );
        store.save(&older).await.unwrap();
        let loaded = store.load().await.unwrap().unwrap();
        assert_eq!(loaded.access_token().expose_secret(), "at-new");
        assert_eq!(loaded.refresh_token().unwrap().expose_secret(), "rt-new");
        assert_eq!(loaded.lineage(), newer.lineage(), "the lineage is kept");
        let left = loaded.expires_in().unwrap();
        assert!(left > Duration::from_secs(590) && left <= Duration::from_secs(600));
        let debug = format!(
            "{store:?} {:?}",
            store.fleet(source::from_fn(|_: Option<Token>| async {
                Token::bearer("x")
            }))
        );
        assert!(
            !debug.contains("at-new") && !debug.contains("rt-new"),
            "{debug}"
        );
        store.clear().await.unwrap();
        assert!(store.load().await.unwrap().is_none());
    }
}

/// Starts the lock race of issue 13, sequence 2: replica A presents the fleet's
/// refresh token, the provider rotates it at once but A's answer takes `answer`, and
/// A's lock lapses meanwhile (a paused process, a failed renewal). Returns A's task.
async fn a_lapses_while_presenting(
    redis: &Redis,
    profile: &str,
    s: &common::Servers,
    answer: Duration,
) -> tokio::task::JoinHandle<Result<Token, Error>> {
    s.idp.add_refresh_token("rt-0");
    s.idp.rotate.store(true, Ordering::SeqCst);
    let store = redis.store(profile).await;
    let fleet_token = Token::bearer("at-0")
        .unwrap()
        .with_expires_in(Duration::ZERO)
        .with_refresh_token("rt-0");
    store.save(&fleet_token).await.unwrap();
    let a = fleet_source(redis, profile, s)
        .await
        .lock_ttl(Duration::from_secs(3));
    s.idp.set_mode(common::Mode::DelayAnswer(answer));
    let a_task = tokio::spawn(async move { a.fetch(None).await });
    until(Duration::from_secs(10), "A presented rt-0", || async {
        s.idp.tokens() == 1
    })
    .await;
    redis_del(redis, store.lock_key()).await;
    s.idp.set_mode(common::Mode::Normal);
    a_task
}
on_every_redis! {
    /// Issue 13, sequence 2. Before, B took the lapsed lock, presented the same refresh
    /// token (`invalid_grant`), re-read Redis once, saw the version unchanged and turned
    /// terminal, and never looked again when A wrote the fleet's new token. Now B sees
    /// that A is presenting that refresh token and waits for A's answer: no reuse at all
    /// (with a provider that revokes the token family on reuse, a reuse logs the whole
    /// fleet out).
    async fn a_replica_that_loses_a_lock_race_takes_the_token_the_winner_publishes(redis) {
        let s = common::start().await;
        let profile = profile("lock-race");
        let a_task = a_lapses_while_presenting(&redis, &profile, &s, Duration::from_millis(1500)).await;
        let b = fleet_source(&redis, &profile, &s)
            .await
            .lock_ttl(Duration::from_secs(3));
        let from_b = b.fetch(None).await;
        let from_a = a_task.await.unwrap().unwrap();
        let from_b = from_b.expect("B is not logged out: it takes A's token");
        assert_eq!(
            from_b.access_token().expose_secret(),
            from_a.access_token().expose_secret()
        );
        assert_eq!(s.idp.tokens(), 1, "B did not present rt-0 again");
    }
}
on_every_redis! {
    /// The same race when A takes longer than B's patience (twice B's lock TTL): B
    /// presents the refresh token again (unavoidable: A may have died), is refused, and
    /// records it in Redis so that no other replica presents it; the cache over B keeps
    /// looking and takes A's token when it comes.
    async fn a_replica_refused_after_a_lapse_is_not_logged_out_and_no_replica_reuses_again(redis) {
        let s = common::start().await;
        let profile = profile("lock-race-late");
        let a_task = a_lapses_while_presenting(&redis, &profile, &s, Duration::from_millis(2500)).await;
        let short = |source: FleetSource<_>| source.lock_ttl(Duration::from_millis(200));
        let b = short(fleet_source(&redis, &profile, &s).await);
        let c = short(fleet_source(&redis, &profile, &s).await);
        let cache_b = Refreshing::builder(b)
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .build();
        let refused = cache_b.token().await;
        assert!(
            matches!(refused, Err(Error::InvalidGrant(_))),
            "{refused:?}"
        );
        assert_eq!(s.idp.tokens(), 2, "B presented rt-0 once more");
        // C never presents it: a replica was refused it.
        let from_c = c.fetch(None).await;
        assert!(matches!(from_c, Err(Error::InvalidGrant(_))), "{from_c:?}");
        assert_eq!(s.idp.tokens(), 2, "C did not present rt-0");

        let from_a = a_task.await.unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let adopted = loop {
            if let Ok(token) = cache_b.token().await {
                break token;
            }
            assert!(Instant::now() < deadline, "B never took A's token");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            adopted.access_token().expose_secret(),
            from_a.access_token().expose_secret()
        );
        assert_eq!(
            c.fetch(None).await.unwrap().access_token().expose_secret(),
            from_a.access_token().expose_secret()
        );
        assert_eq!(s.idp.tokens(), 2);
    }
}
on_every_redis! {
    /// Issue 13, sequence 2 after a Redis restart: Redis comes back empty while replica
    /// B holds an older token (its refresh token rotated away by A). Before, B's refresh
    /// got `invalid_grant` and B was logged out for good, while A held the live token.
    async fn a_replica_with_an_older_token_after_redis_lost_its_data_is_not_logged_out(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        s.idp.set_lifetime(Some(3600));
        let profile = profile("restart");
        let a = fleet_source(&redis, &profile, &s)
            .await
            .lock_ttl(Duration::from_millis(300));
        let b = Arc::new(
            fleet_source(&redis, &profile, &s)
                .await
                .lock_ttl(Duration::from_millis(300)),
        );
        let t1 = a.fetch(None).await.unwrap();
        let b_holds = b.fetch(None).await.unwrap();
        assert_eq!(
            b_holds.access_token().expose_secret(),
            t1.access_token().expose_secret()
        );
        let t2 = a.fetch(Some(&t1)).await.unwrap();
        assert_eq!(s.idp.tokens(), 2);

        // Redis restarts without its data.
        let store = redis.store(&profile).await;
        redis_del(&redis, store.token_key()).await;

        // B's own token is older and its refresh token dead: not the fleet's to declare
        // dead. B says so, and the error is worth retrying.
        let refused = b.fetch(Some(&b_holds)).await.unwrap_err();
        assert!(matches!(refused, Error::Superseded(_)), "{refused:?}");
        assert!(refused.is_retryable());
        // It does not present that refresh token again.
        let again = b.fetch(Some(&b_holds)).await.unwrap_err();
        assert!(matches!(again, Error::Superseded(_)), "{again:?}");
        assert_eq!(s.idp.tokens(), 3, "B presented its dead refresh token once");

        // A cache over B keeps looking: when A refreshes (seeding the empty Redis with
        // the live token), B takes the fleet's token.
        let cache_b = Refreshing::builder(b.clone())
            .backoff(Duration::from_millis(20), Duration::from_millis(100))
            .build();
        let waiting = cache_b.token().await;
        assert!(matches!(waiting, Err(Error::Superseded(_))), "{waiting:?}");
        let t3 = a.fetch(Some(&t2)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let adopted = loop {
            if let Ok(token) = cache_b.token().await {
                break token;
            }
            assert!(Instant::now() < deadline, "B never took the fleet's token");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(
            adopted.access_token().expose_secret(),
            t3.access_token().expose_secret()
        );
        assert!(valid_at_api(&s.idp, t3.access_token().expose_secret()));
    }
}

/// Issue 18, fleet waiters woken at once: a replica waiting for another's refresh is
/// woken by the write (published on the profile's channel), not by its next poll.
/// Its poll interval here is a minute; it takes the token long before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_replica_is_woken_by_the_write_not_by_its_next_poll() {
    if redis_url().await.is_none() {
        return;
    }
    // A Redis of this test's own: its command counts are this test's.
    let port = common::server::free_port();
    let redis = OwnRedis::start(port);
    redis.ready().await;
    woken_by_the_write(&redis.redis()).await;
}

on_every_redis! {
    /// The same over TLS and on a cluster, where a write is published on the node
    /// of the profile's slot and the waiter may listen on another. Those servers are
    /// shared with the other tests, whose lock attempts may let this one see the
    /// waiter's too early: then it proves less, but never fails wrongly.
    async fn a_waiting_replica_is_woken_by_the_write_on_every_deployment(redis) {
        woken_by_the_write(&redis).await;
    }
}

async fn woken_by_the_write(target: &Redis) {
    let s = common::start().await;
    s.idp.add_refresh_token("rt-0");
    let profile = profile("woken");

    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let grant = Arc::new(endpoint(&s).refresh_token("rt-0"));
    let gated = {
        let gate = gate.clone();
        source::from_fn(move |previous: Option<Token>| {
            let (gate, grant) = (gate.clone(), grant.clone());
            async move {
                let _permit = gate.acquire().await.unwrap();
                grant.fetch(previous.as_ref()).await
            }
        })
    };
    let a = Arc::new(target.store(&profile).await.fleet(gated));
    let token_key = a.store().token_key().to_owned();
    let a_task = {
        let a = a.clone();
        tokio::spawn(async move { a.fetch(None).await })
    };
    until(Duration::from_secs(5), "A claimed the refresh", || {
        claimed(target, &token_key)
    })
    .await;
    let sets = target.set_calls().await;

    let b = Arc::new(
        target
            .store(&profile)
            .await
            .fleet(endpoint(&s).refresh_token("rt-0"))
            .poll_interval(Duration::from_secs(60), Duration::from_secs(60)),
    );
    let b_task = {
        let b = b.clone();
        tokio::spawn(async move { b.fetch(None).await })
    };
    // B read Redis, found nothing to take, and tried the lock: it now waits.
    until(Duration::from_secs(5), "B tried the lock", || async {
        target.set_calls().await > sets
    })
    .await;
    gate.add_permits(1);
    let from_a = a_task.await.unwrap().unwrap();
    let from_b = tokio::time::timeout(Duration::from_secs(30), b_task)
        .await
        .expect("B was woken by A's write: its next poll is a minute away")
        .unwrap()
        .unwrap();
    assert_eq!(
        from_b.access_token().expose_secret(),
        from_a.access_token().expose_secret()
    );
    assert_eq!(s.idp.tokens(), 1);
}
on_every_redis! {
    /// Issue 29, defect 7. A seed refresh token refused once (`invalid_grant`) was
    /// recorded in Redis as "lineage 0", the lineage every seed has, for ever: after a
    /// redeploy with a valid seed, no replica presented it, and every one answered
    /// `invalid_grant` until someone deleted the key by hand. The record names the
    /// refused refresh token itself now: the refused seed is still never presented
    /// again, the new one is.
    async fn a_refused_seed_does_not_block_the_next_seed(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-good");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("reseed");
        let seeded = |seed: &'static str| {
            let redis = redis.clone();
            let profile = profile.clone();
            let endpoint = endpoint(&s);
            async move {
                redis
                    .store(&profile)
                    .await
                    .fleet(endpoint.refresh_token(seed))
                    .lock_ttl(Duration::from_millis(100))
                    .poll_interval(Duration::from_millis(5), Duration::from_millis(20))
            }
        };
        // The first deployment's seed is wrong: refused once, and a second replica
        // with the same seed does not present it again.
        let bad = seeded("rt-bad").await;
        // Redis holds no token the seed could be older than: not the fleet's to
        // declare dead, a retryable `Superseded`.
        let refused = bad.fetch(None).await;
        assert!(matches!(refused, Err(Error::Superseded(_))), "{refused:?}");
        let twin = seeded("rt-bad").await;
        let again = twin.fetch(None).await;
        assert!(matches!(again, Err(Error::Superseded(_))), "{again:?}");
        assert_eq!(
            s.idp.refresh_seen.lock().unwrap().clone(),
            vec!["rt-bad".to_owned()],
            "the refused seed was presented once"
        );
        // Redeployed with a valid seed: it is presented, and the fleet runs.
        let good = seeded("rt-good").await;
        let token = good.fetch(None).await;
        let seen = s.idp.refresh_seen.lock().unwrap().clone();
        let token = token.unwrap_or_else(|e| panic!("the new seed is presented: {e:?}, presented {seen:?}"));
        assert!(valid_at_api(&s.idp, token.access_token().expose_secret()));
        assert_eq!(
            s.idp.refresh_seen.lock().unwrap().clone(),
            vec!["rt-bad".to_owned(), "rt-good".to_owned()]
        );
        // The record of the refusal did not outlive its use: the fleet wrote a newer
        // token, and the record is gone.
        let store = redis.store(&profile).await;
        let memo = redis::cmd("HEXISTS")
            .arg(store.token_key())
            .arg("refused")
            .clone();
        assert_eq!(redis.query::<i64>(&memo).await, 0, "the refusal record is gone");
    }
}

/// A real store whose `save` of a token from the endpoint (`at-…`) waits for the
/// test: a refresh's save still in flight when the logout comes.
struct HeldSave<T> {
    inner: T,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl<T: TokenStore> TokenStore for HeldSave<T> {
    fn load(&self) -> futures_util::future::BoxFuture<'_, Result<Option<Token>, Error>> {
        self.inner.load()
    }
    fn save<'a>(
        &'a self,
        token: &'a Token,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        use futures_util::FutureExt;
        async move {
            if token.access_token().expose_secret().starts_with("at-") {
                self.entered.notify_one();
                self.gate.acquire().await.unwrap().forget();
            }
            self.inner.save(token).await
        }
        .boxed()
    }
    fn clear(&self) -> futures_util::future::BoxFuture<'_, Result<(), Error>> {
        self.inner.clear()
    }
}

on_every_redis! {
    /// Issue 29, defect 8 with the Redis store: a logout while the refresh's save is
    /// in flight leaves no token in Redis, and the cache serves none.
    async fn a_logout_while_the_refresh_saves_leaves_no_token_in_redis(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("logout");
        let entered = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let store = HeldSave {
            inner: redis.store(&profile).await,
            entered: entered.clone(),
            gate: gate.clone(),
        };
        let cache = Refreshing::builder(endpoint(&s).refresh_token("rt-0"))
            .store(store)
            .initial_token(
                Token::bearer("old-access")
                    .unwrap()
                    .with_expires_in(Duration::ZERO)
                    .with_refresh_token("rt-0"),
            )
            .build();
        let caller = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        };
        entered.notified().await;
        let mut logout = tokio::spawn(cache.logout());
        // The logout may finish while the save is held (as it did), or wait for it.
        let early = tokio::time::timeout(Duration::from_millis(500), &mut logout).await;
        gate.add_permits(1);
        if early.is_err() {
            let _ = logout.await;
        }
        assert!(caller.await.unwrap().is_err(), "the refresh's token was served");
        let left = redis.store(&profile).await.load().await.unwrap();
        assert!(
            left.is_none(),
            "Redis holds a token after the logout: {:?}",
            left.map(|t| t.access_token().expose_secret().to_owned())
        );
        assert!(cache.token().await.is_err(), "the cache serves a token");
    }
}
on_every_redis! {
    /// Issue 29, defect 14. Replica A holds the lock and its refresh is stuck at the
    /// provider; a caller on replica B waited for the fleet's refresh however long it
    /// took (up to three lock TTLs, 90 s by default). Now the caller gets a retryable
    /// error after its own wait limit, the refresh goes on in the background, and the
    /// next caller takes its result.
    async fn a_caller_waits_no_longer_than_its_limit_while_the_fleet_refresh_goes_on(redis) {
        let s = common::start().await;
        let profile = profile("wait-limit");
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let stuck = {
            let gate = gate.clone();
            source::from_fn(move |_previous: Option<Token>| {
                let gate = gate.clone();
                async move {
                    let _permit = gate.acquire().await.unwrap();
                    Ok(Token::bearer("from-a")
                        .unwrap()
                        .with_expires_in(Duration::from_secs(600))
                        .with_refresh_token("rt-a"))
                }
            })
        };
        let a = Arc::new(redis.store(&profile).await.fleet(stuck).lock_ttl(Duration::from_millis(300)));
        let lock_key = a.store().lock_key().to_owned();
        let a_task = {
            let a = a.clone();
            tokio::spawn(async move { a.fetch(None).await })
        };
        until(Duration::from_secs(5), "A took the lock", || lock_held(&redis, &lock_key)).await;

        let b = fleet_source(&redis, &profile, &s)
            .await
            .lock_ttl(Duration::from_millis(300));
        let cache_b = Refreshing::builder(b)
            .wait_limit(Duration::from_millis(200))
            .build();
        // The guard only turns a hang into a failure; A's refresh is held meanwhile.
        let first = tokio::time::timeout(Duration::from_secs(10), cache_b.token())
            .await
            .expect("the caller got an answer while the fleet's refresh was stuck");
        let error = first.expect_err("no token exists yet");
        assert!(matches!(error, Error::Timeout(..)), "{error:?}");
        assert!(error.is_retryable());

        // A's answer comes; B's refresh, still running, takes it.
        gate.add_permits(1);
        let from_a = a_task.await.unwrap().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let adopted = loop {
            if let Ok(token) = cache_b.token().await {
                break token;
            }
            assert!(Instant::now() < deadline, "B never took A's token");
            tokio::task::yield_now().await;
        };
        assert_eq!(
            adopted.access_token().expose_secret(),
            from_a.access_token().expose_secret()
        );
        assert_eq!(cache_b.stats().refreshes, 1, "the caller's refresh went on, once");
        assert_eq!(s.idp.tokens(), 0, "B presented nothing");
    }
}

/// A revocation endpoint on 127.0.0.1 that records every token it is asked to
/// revoke, and answers 200.
async fn revocation_endpoint() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::routing::post;
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = seen.clone();
    let app = axum::Router::new().route(
        "/revoke",
        post(
            move |axum::Form(form): axum::Form<std::collections::HashMap<String, String>>| {
                let recorded = recorded.clone();
                async move {
                    recorded
                        .lock()
                        .unwrap()
                        .push(form.get("token").cloned().unwrap_or_default());
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/revoke"), seen)
}

/// The real refresh-token grant, whose fetches wait for the test before they go to
/// the token endpoint: a token request in flight when the logout comes.
struct HeldFetch<S> {
    inner: S,
    entered: Arc<tokio::sync::Notify>,
    gate: Arc<tokio::sync::Semaphore>,
}

impl<S: TokenSource> TokenSource for HeldFetch<S> {
    fn fetch<'a>(
        &'a self,
        previous: Option<&'a Token>,
    ) -> futures_util::future::BoxFuture<'a, Result<Token, Error>> {
        use futures_util::FutureExt;
        async move {
            self.entered.notify_one();
            self.gate.acquire().await.unwrap().forget();
            self.inner.fetch(previous).await
        }
        .boxed()
    }
    fn presents(&self, previous: Option<&Token>) -> Option<source::Presented> {
        self.inner.presents(previous)
    }
}

on_every_redis! {
    /// The author's open item: a FleetSource writes Redis inside `fetch`, outside the
    /// cache's store gate. A logout while that fetch waited on the token endpoint
    /// cleared Redis, then the fleet's write landed on the empty key: the session
    /// logged out stayed in Redis for every replica (revoked at best, live without a
    /// revocation endpoint).
    async fn a_logout_during_a_fleet_fetch_leaves_no_token_in_redis(redis) {
        use tower_bearer::client::Revocation;
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("fleet-logout");
        let (revoke_url, revoked) = revocation_endpoint().await;
        let entered = Arc::new(tokio::sync::Notify::new());
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let fleet = redis
            .store(&profile)
            .await
            .fleet(HeldFetch {
                inner: endpoint(&s).refresh_token("rt-0"),
                entered: entered.clone(),
                gate: gate.clone(),
            })
            .poll_interval(Duration::from_millis(5), Duration::from_millis(50));
        let store = redis.store(&profile).await;
        store
            .save(
                &Token::bearer("old-access")
                    .unwrap()
                    .with_expires_in(Duration::ZERO)
                    .with_refresh_token("rt-0"),
            )
            .await
            .unwrap();
        let cache = Refreshing::builder(fleet)
            .store(store)
            .revocation(Revocation::new(&endpoint(&s), &revoke_url).unwrap())
            .build();
        let caller = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        };
        entered.notified().await;
        let _ = cache.logout().await;
        gate.add_permits(1);
        assert!(caller.await.unwrap().is_err(), "the refresh's token was served");
        assert_eq!(s.idp.tokens(), 1, "the fleet's fetch reached the endpoint");
        let left = redis.store(&profile).await.load().await.unwrap();
        assert!(
            left.is_none(),
            "Redis holds a token after the logout: {:?}",
            left.map(|t| t.access_token().expose_secret().to_owned())
        );
        assert!(cache.token().await.is_err(), "the cache serves a token");
        assert!(!revoked.lock().unwrap().is_empty());
    }
}

on_every_redis! {
    /// Principle 6, the author's second open item: a replica remembered a refused
    /// refresh token by the lineage of the token that carried it. Entries written
    /// without a lineage (an older version of the crate, a seeding script) all have
    /// lineage 0: after one such seed was refused and a valid one written, this
    /// replica never presented the valid one ("refused before"), though Redis's
    /// record (by digest) let every other replica do so.
    async fn a_replica_refused_one_legacy_seed_presents_the_next(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-good");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("legacy-seed");
        let store = redis.store(&profile).await;
        let legacy = |rt: &str| {
            Token::bearer("legacy-access")
                .unwrap()
                .with_expires_in(Duration::ZERO)
                .with_refresh_token(rt)
                .with_lineage(tower_bearer::Lineage::UNKNOWN)
        };
        store.save(&legacy("rt-dead")).await.unwrap();
        let fleet = store
            .fleet(endpoint(&s).refresh_token("rt-unused"))
            .lock_ttl(Duration::from_millis(100))
            .poll_interval(Duration::from_millis(5), Duration::from_millis(20));
        let refused = fleet.fetch(None).await;
        assert!(matches!(refused, Err(Error::InvalidGrant(_))), "{refused:?}");
        // The operator writes a valid seed the same way.
        store.clear().await.unwrap();
        store.save(&legacy("rt-good")).await.unwrap();
        let token = fleet.fetch(None).await;
        let seen = s.idp.refresh_seen.lock().unwrap().clone();
        let token = token.unwrap_or_else(|e| panic!("the new seed is presented: {e:?}, presented {seen:?}"));
        assert!(valid_at_api(&s.idp, token.access_token().expose_secret()));
        assert_eq!(seen, vec!["rt-dead".to_owned(), "rt-good".to_owned()]);
    }
}

on_every_redis! {
    /// A refusal that is not `invalid_grant` (a 503 from a provider in trouble) says
    /// nothing about the refresh token: no record is made, and the same seed is
    /// presented again once the provider is back.
    async fn a_transient_failure_is_not_recorded_as_a_refusal(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        s.idp.set_mode(common::Mode::Fail(503, "temporarily_unavailable", None));
        let profile = profile("transient");
        let fleet = fleet_source(&redis, &profile, &s).await;
        let failed = fleet.fetch(None).await;
        assert!(failed.as_ref().is_err_and(Error::is_retryable), "{failed:?}");
        let memo = redis::cmd("HEXISTS")
            .arg(fleet.store().token_key())
            .arg("refused")
            .clone();
        assert_eq!(redis.query::<i64>(&memo).await, 0, "a 503 was recorded as a refusal");
        s.idp.set_mode(common::Mode::Normal);
        let twin = fleet_source(&redis, &profile, &s).await;
        let token = twin.fetch(None).await.expect("the seed is presented again");
        assert!(valid_at_api(&s.idp, token.access_token().expose_secret()));
        assert_eq!(s.idp.tokens(), 2, "the seed was presented twice");
        assert_eq!(
            s.idp.last_form.lock().unwrap().get("refresh_token").map(String::as_str),
            Some("rt-0")
        );
    }
}

on_every_redis! {
    /// The wait limit under attack: a lock another replica holds (its refresh is
    /// slow). Hundreds of callers time out, retryably, and time out again; none of
    /// them starts a refresh of its own: the one refresh goes on, and when the lock
    /// frees, the next caller takes its token.
    async fn callers_past_the_wait_limit_start_no_refresh_of_their_own(redis) {
        let s = common::start().await;
        s.idp.add_refresh_token("rt-0");
        s.idp.rotate.store(true, Ordering::SeqCst);
        let profile = profile("wait-limit");
        let fleet = fleet_source(&redis, &profile, &s).await;
        let lock_key = fleet.store().lock_key().to_owned();
        redis
            .query::<()>(redis::cmd("SET").arg(&lock_key).arg("another-replica").arg("PX").arg(60_000))
            .await;
        let cache = Refreshing::builder(fleet)
            .wait_limit(Duration::from_millis(200))
            .build();
        for _round in 0..2 {
            let callers: Vec<_> = (0..200)
                .map(|_| {
                    let cache = cache.clone();
                    tokio::spawn(async move { cache.token().await })
                })
                .collect();
            for caller in callers {
                let error = caller.await.unwrap().unwrap_err();
                assert!(matches!(error, Error::Timeout(..)), "{error:?}");
                assert!(error.is_retryable());
            }
        }
        assert_eq!(cache.stats().refreshes, 1, "the callers started refreshes");
        assert_eq!(s.idp.tokens(), 0);
        redis_del(&redis, &lock_key).await;
        until(Duration::from_secs(10), "the refresh lands", || {
            let cache = cache.clone();
            async move { cache.token().await.is_ok() }
        })
        .await;
        assert_eq!(cache.stats().refreshes, 1);
        assert_eq!(s.idp.tokens(), 1);
    }
}
