//! The crate's metrics (feature `metrics`), each test with a recorder of its own
//! (`common::metrics::recorded`), against real parts: the test identity provider
//! and API on loopback, a real axum server behind `RequireBearerLayer`, the real
//! Redis for the fleet figures.
#![cfg(feature = "metrics")]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::metrics::recorded;
use http::{Request, StatusCode};
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_bearer::client::{AuthorizeLayer, Refreshing};

/// Ten callers on an empty cache make one refresh and all wait; then an API that
/// refuses every token: three `401`s, the first drops the token (the next request
/// waits for one more refresh), the next two are throttled.
#[test]
fn client_figures_count_refreshes_waiters_401s_and_throttled_rejections() {
    let (waits, m) = recorded(|| async {
        let s = common::start().await;
        // A long backoff: no throttle runs out while the test runs.
        let authorizer = Refreshing::builder(common::endpoint(&s).client_credentials())
            .backoff(Duration::from_secs(30), Duration::from_secs(120))
            .build();
        let callers =
            futures_util::future::join_all((0..10).map(|_| common::credential(&authorizer)));
        assert!(callers.await.iter().all(Result::is_ok));
        assert_eq!(s.idp.tokens(), 1);

        let mut client = ServiceBuilder::new()
            .layer(AuthorizeLayer::new(authorizer.clone()))
            .service(common::http_client::<Full<Bytes>>());
        s.idp.api_rejects_all.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let req = Request::get(s.api_url()).body(Full::default()).unwrap();
            let res = client.ready().await.unwrap().call(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        }
        assert_eq!(s.idp.tokens(), 2, "one 401-triggered refresh");
        authorizer.stats().waits
    });
    assert_eq!(
        waits, 11,
        "ten callers, then the request after the first 401"
    );
    assert_eq!(
        m.counter("tower_bearer_refreshes_total", &[("outcome", "ok")]),
        2
    );
    assert_eq!(m.counter("tower_bearer_refreshes_total", &[]), 2);
    assert_eq!(m.observations("tower_bearer_refresh_seconds", &[]), 2);
    assert_eq!(
        m.counter(
            "tower_bearer_idp_requests_total",
            &[("endpoint", "token"), ("outcome", "ok")]
        ),
        2
    );
    assert_eq!(m.counter("tower_bearer_refresh_waiters_total", &[]), waits);
    assert_eq!(m.observations("tower_bearer_refresh_wait_seconds", &[]), 11);
    assert_eq!(m.counter("tower_bearer_unauthorized_total", &[]), 3);
    assert_eq!(
        m.counter("tower_bearer_unauthorized_throttled_total", &[]),
        2
    );
}

/// A `401` to a static token is counted as one to a refreshing token is: the layer
/// puts a fixed credential on directly, and still judges the answer.
#[test]
fn a_401_to_a_static_token_is_counted() {
    let ((), m) = recorded(|| async {
        let s = common::start().await;
        let client = ServiceBuilder::new()
            .layer(AuthorizeLayer::new(
                tower_bearer::client::StaticToken::bearer("not-issued").unwrap(),
            ))
            .service(common::http_client::<Full<Bytes>>());
        let req = Request::get(s.api_url()).body(Full::default()).unwrap();
        let res = client.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    });
    assert_eq!(m.counter("tower_bearer_unauthorized_total", &[]), 1);
}

/// A refresh that fails is counted by what the endpoint said: `invalid_grant`, a
/// `503` worth retrying, a refusal that is not; the token endpoint's answers are
/// counted as HTTP errors.
#[test]
fn failed_refreshes_are_counted_by_outcome() {
    let ((), m) = recorded(|| async {
        let s = common::start().await;
        let answers = [
            (400, r#"{"error":"invalid_grant"}"#),
            (503, r#"{"error":"temporarily_unavailable"}"#),
            (401, r#"{"error":"invalid_client"}"#),
        ];
        for (status, body) in answers {
            s.idp.set_mode(common::Mode::Fail(status, body, None));
            let authorizer = Refreshing::new(common::endpoint(&s).client_credentials());
            assert!(common::credential(&authorizer).await.is_err());
        }
    });
    for outcome in ["invalid_grant", "transient", "error"] {
        let n = m.counter("tower_bearer_refreshes_total", &[("outcome", outcome)]);
        assert_eq!(n, 1, "{outcome}");
    }
    assert_eq!(
        m.counter("tower_bearer_refreshes_total", &[("outcome", "ok")]),
        0
    );
    assert_eq!(
        m.counter(
            "tower_bearer_idp_requests_total",
            &[("endpoint", "token"), ("outcome", "http_error")]
        ),
        3
    );
}

/// A token store that cannot be read or written (its directory is a file): the
/// token is still served, and each failed load and save is counted.
#[test]
fn store_failures_are_counted_by_operation() {
    let dir = std::env::temp_dir().join(format!(
        "tb-metrics-{}-{:x}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::write(&dir, b"a file where a directory should be").unwrap();
    let path = dir.join("token.json");
    let ((), m) = recorded(|| async {
        let s = common::start().await;
        let store = tower_bearer::client::FileStore::at(&path, "svc", s.token_url());
        let authorizer = Refreshing::builder(common::endpoint(&s).client_credentials())
            .store(store)
            .build();
        assert!(common::credential(&authorizer).await.is_ok());
        assert_eq!(authorizer.stats().save_failures, 1);
    });
    std::fs::remove_file(&dir).unwrap();
    assert_eq!(
        m.counter("tower_bearer_store_failures_total", &[("op", "save")]),
        1
    );
    assert_eq!(
        m.counter("tower_bearer_store_failures_total", &[("op", "load")]),
        1
    );
    assert_eq!(
        m.counter("tower_bearer_refreshes_total", &[("outcome", "ok")]),
        1
    );
}

#[cfg(feature = "jwt")]
mod server {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use common::server::{get as send, now_plus, send_raw, serve};
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use tower_bearer::server::{
        Claims, JwtValidator, RequireBearerLayer, RequireScopeLayer, VerifiedCache,
    };

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes";

    /// `RequireBearerLayer`'s verdicts of one outcome and reason.
    fn verdicts(m: &common::metrics::Figures, outcome: &str, reason: &str) -> u64 {
        m.counter(
            "tower_bearer_validations_total",
            &[("outcome", outcome), ("reason", reason)],
        )
    }

    fn mint(sub: &str) -> String {
        let claims = json!({ "sub": sub, "exp": now_plus(300) });
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    /// `RequireBearerLayer` over a `VerifiedCache` of two entries: every verdict is
    /// counted under its RFC 6750 reason, and the cache's hits, misses and
    /// evictions add up to the tokens it saw.
    #[test]
    fn validations_by_reason_and_cache_hits_misses_and_evictions() {
        let (cached, m) = recorded(|| async {
            let cache = VerifiedCache::new(JwtValidator::<Claims>::hmac(SECRET)).max_entries(2);
            let app = Router::new()
                .route("/", get(|| async { "ok" }))
                .layer(RequireBearerLayer::new(cache.clone()));
            let addr = serve(app).await;
            let alice = mint("alice");
            for token in [&alice, &alice] {
                assert_eq!(send(addr, "/", Some(token)).await.status, 200);
            }
            for user in ["b", "c", "d", "e", "f"] {
                assert_eq!(send(addr, "/", Some(&mint(user))).await.status, 200);
            }
            let forged = format!("{}x", &alice[..alice.len() - 1]);
            assert_eq!(send(addr, "/", Some(&forged)).await.status, 401);
            assert_eq!(send(addr, "/", None).await.status, 401);
            let twice: &[(&str, &[u8])] = &[
                ("authorization", b"Bearer a"),
                ("authorization", b"Bearer b"),
            ];
            assert_eq!(send_raw(addr, "/", twice).await.status, 400);
            cache.len() as u64
        });
        assert_eq!(verdicts(&m, "ok", "none"), 7);
        assert_eq!(verdicts(&m, "rejected", "invalid_token"), 1);
        assert_eq!(verdicts(&m, "rejected", "missing"), 1);
        assert_eq!(verdicts(&m, "rejected", "invalid_request"), 1);
        assert_eq!(m.counter("tower_bearer_validations_total", &[]), 10);
        assert_eq!(m.observations("tower_bearer_validation_seconds", &[]), 10);
        // Only bounded values, never a token.
        assert_eq!(
            m.label_values("tower_bearer_validations_total", "reason"),
            ["invalid_request", "invalid_token", "missing", "none"]
        );

        let lookups = |result| {
            m.counter(
                "tower_bearer_cache_lookups_total",
                &[("cache", "verified"), ("result", result)],
            )
        };
        assert_eq!(lookups("hit"), 1, "alice's second request");
        assert_eq!(lookups("miss"), 7, "six tokens and the forged one");
        let evicted = m.counter(
            "tower_bearer_cache_evictions_total",
            &[("cache", "verified")],
        );
        assert!(evicted >= 1, "six tokens in a cache of two");
        assert_eq!(
            evicted + cached,
            6,
            "every token accepted is cached or was evicted"
        );
    }

    /// Scope checks by outcome, and requests let through without credentials.
    #[test]
    fn scope_checks_and_anonymous_requests() {
        let ((), m) = recorded(|| async {
            let scoped = Router::new()
                .route("/read", get(|| async { "ok" }))
                .layer(RequireScopeLayer::<Claims>::new(["read"]));
            let app = Router::new().merge(scoped).layer(
                RequireBearerLayer::new(JwtValidator::<Claims>::hmac(SECRET)).allow_anonymous(),
            );
            let addr = serve(app).await;
            let with_scope = |scope: &str| {
                let claims = json!({ "sub": "s", "exp": now_plus(300), "scope": scope });
                jsonwebtoken::encode(
                    &Header::default(),
                    &claims,
                    &EncodingKey::from_secret(SECRET),
                )
                .unwrap()
            };
            assert_eq!(
                send(addr, "/read", Some(&with_scope("read"))).await.status,
                200
            );
            assert_eq!(
                send(addr, "/read", Some(&with_scope("write"))).await.status,
                403
            );
            assert_eq!(send(addr, "/read", None).await.status, 401);
        });
        let scope_checks =
            |outcome| m.counter("tower_bearer_scope_checks_total", &[("outcome", outcome)]);
        assert_eq!(scope_checks("ok"), 1);
        assert_eq!(scope_checks("insufficient_scope"), 1);
        assert_eq!(scope_checks("missing"), 1, "the anonymous request");
        assert_eq!(verdicts(&m, "ok", "none"), 2);
        assert_eq!(verdicts(&m, "anonymous", "missing"), 1);
        assert_eq!(m.observations("tower_bearer_validation_seconds", &[]), 3);
    }
}

#[cfg(feature = "redis")]
mod fleet {
    use super::*;
    use common::redis::redis_url;
    use tower_bearer::client::{TokenSource, TokenStore};
    use tower_bearer::redis::{RedisDenylist, RedisStore};
    use tower_bearer::Token;

    fn profile(name: &str) -> String {
        format!(
            "metrics-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        )
    }

    /// Replica A holds the lock while its token request is slow; replica B finds
    /// the lock busy, waits, and takes A's token (at its next poll, or under the
    /// lock once A released it): one wait, ended with a token; no race lost.
    #[test]
    fn a_replica_waiting_for_the_lock_holder_is_counted() {
        let (adopted, m) = recorded(|| async {
            let url = redis_url().await?;
            let s = common::start().await;
            let profile = profile("wait");
            s.idp.add_refresh_token("rt-0");
            let store = RedisStore::connect(&url, &profile).await.unwrap();
            let expired = Token::bearer("at-0")
                .unwrap()
                .with_expires_in(Duration::ZERO)
                .with_refresh_token("rt-0");
            store.save(&expired).await.unwrap();
            let replica = || async {
                RedisStore::connect(&url, &profile)
                    .await
                    .unwrap()
                    .fleet(common::endpoint(&s).refresh_token("rt-0"))
                    .poll_interval(Duration::from_millis(5), Duration::from_millis(50))
            };
            let (a, b) = (replica().await, replica().await);
            s.idp
                .set_mode(common::Mode::DelayAnswer(Duration::from_millis(300)));
            let a_task = tokio::spawn(async move { a.fetch(None).await });
            // A has presented the refresh token: it holds the lock.
            while s.idp.tokens() == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let from_b = b.fetch(None).await.unwrap();
            let from_a = a_task.await.unwrap().unwrap();
            assert_eq!(s.idp.tokens(), 1);
            Some(from_a.lineage() == from_b.lineage())
        });
        let Some(adopted) = adopted else { return };
        assert!(adopted, "B took A's token");
        let locks = |outcome| {
            m.counter(
                "tower_bearer_fleet_lock_attempts_total",
                &[("outcome", outcome)],
            )
        };
        assert!(
            (1..=2).contains(&locks("acquired")),
            "A, and maybe B after A"
        );
        assert!(locks("busy") >= 1, "B found it held");
        assert_eq!(locks("error"), 0);
        assert_eq!(
            m.counter("tower_bearer_fleet_waits_total", &[("outcome", "token")]),
            1
        );
        assert_eq!(
            m.counter("tower_bearer_fleet_waits_total", &[("outcome", "timeout")]),
            0
        );
        assert_eq!(m.observations("tower_bearer_fleet_wait_seconds", &[]), 1);
        assert_eq!(m.counter("tower_bearer_fleet_lost_races_total", &[]), 0);
    }

    /// A denylist answers from Redis, then from its local copy while it is younger
    /// than the staleness; the age of each local answer is recorded.
    #[test]
    fn denylist_lookups_are_counted_by_who_answered() {
        let (ran, m) = recorded(|| async {
            let Some(url) = redis_url().await else {
                return false;
            };
            let client = redis::Client::open(url.as_str()).unwrap();
            let conn = redis::aio::ConnectionManager::new(client).await.unwrap();
            let prefix = format!("{}:", profile("denied"));
            let denylist =
                RedisDenylist::with_connection(conn, &prefix).staleness(Duration::from_secs(3600));
            assert!(!denylist.is_revoked("a-token", Some("jti-1")).await.unwrap());
            assert!(!denylist.is_revoked("a-token", Some("jti-1")).await.unwrap());
            assert!(!denylist.is_revoked("a-token", Some("jti-1")).await.unwrap());
            true
        });
        if !ran {
            return;
        }
        let lookups =
            |source| m.counter("tower_bearer_denylist_lookups_total", &[("source", source)]);
        assert_eq!(lookups("redis"), 1);
        assert_eq!(lookups("local"), 2);
        assert_eq!(lookups("error"), 0);
        assert_eq!(
            m.observations("tower_bearer_denylist_local_age_seconds", &[]),
            2
        );
    }
}
