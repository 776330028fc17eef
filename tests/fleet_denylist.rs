//! Revocations through a real Redis, seen by every server replica.
//!
//! Each test named `…::plain`, `…::tls` and `…::cluster` runs against one Redis
//! server, one over TLS and a cluster of three (`.ci/run` starts them; see
//! tests/common/redis.rs). Without one, its tests skip with a loud message, except
//! under `CI`, where they fail.
#![cfg(feature = "redis")]

mod common;

use common::redis::{on_every_redis, redis_url, OwnRedis};

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::routing::get;
use axum::Router;
use tokio::time::Instant;
use tower_bearer::redis::RedisDenylist;
use tower_bearer::server::{RequireBearerLayer, StaticTokens};

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
on_every_redis! {
    async fn fleet_revoked_jti_is_refused_by_four_replicas_within_a_second(redis) {
        let prefix = prefix();
        let mut replicas = Vec::new();
        for _ in 0..4 {
            // Default staleness: 1 s.
            replicas.push(replica(redis.denylist(&prefix).await).await);
        }
        for &addr in &replicas {
            assert_eq!(
                status(addr, "tok-1").await.0,
                200,
                "accepted before revocation"
            );
        }

        let admin = redis.denylist(&prefix).await;
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
        let fresh = replica(redis.denylist(&prefix).await).await;
        assert_eq!(status(fresh, "tok-2").await.0, 401);
        // An entry for an already expired token is not written (it is refused anyway).
        admin
            .revoke_jti("jti-old", SystemTime::now() - Duration::from_secs(1))
            .await
            .unwrap();
        assert!(!admin.is_revoked("x", Some("jti-old")).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_denylist_fails_closed_without_redis_and_open_when_configured() {
    if redis_url().await.is_none() {
        return;
    }
    let redis = OwnRedis::start(common::server::free_port());
    let url = redis.url();
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
on_every_redis! {
    /// Issue 13 item 6: whatever order the denylist and the caches are stacked in, a
    /// token revoked in Redis is refused on its next request, also when a cache had
    /// accepted it before the revocation.
    async fn fleet_a_revoked_token_is_refused_by_every_composition_even_once_cached(redis) {
        use std::sync::Arc;
        use tower_bearer::server::{Claims, VerifiedCache};

        let prefix = prefix();
        let claims = |jti: &str| Claims {
            jti: Some(jti.to_owned()),
            exp: Some(common_exp()),
            ..Claims::default()
        };
        let tokens = || {
            StaticTokens::new([
                ("tok-by-jti", claims("jti-a")),
                ("tok-by-hash", claims("jti-b")),
                ("tok-kept", claims("jti-c")),
            ])
        };
        let jti = |c: &Claims| c.jti.clone();
        async fn serve_with(v: impl tower_bearer::server::Validator<Claims = Claims>) -> SocketAddr {
            let app = Router::new()
                .route("/", get(|| async { "ok" }))
                .layer(RequireBearerLayer::new(v));
            common::serve(app).await
        }
        // Staleness zero: every check that reaches the denylist asks Redis, so the
        // revocation must be seen on the very next request.
        let mut compositions = Vec::new();
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push(("guard(v)", serve_with(d.guard(tokens()).jti(jti)).await));
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push((
            "guard(cache(v))",
            serve_with(d.guard(VerifiedCache::new(tokens())).jti(jti)).await,
        ));
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push((
            "cache(guard(v))",
            serve_with(VerifiedCache::new(d.guard(tokens()).jti(jti))).await,
        ));
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push((
            "cache(Arc(guard(v)))",
            serve_with(VerifiedCache::new(Arc::new(d.guard(tokens()).jti(jti)))).await,
        ));
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push((
            "cache(cache(guard(v)))",
            serve_with(VerifiedCache::new(VerifiedCache::new(
                d.guard(tokens()).jti(jti),
            )))
            .await,
        ));

        // Accepted (and so cached) everywhere before the revocation.
        for (name, addr) in &compositions {
            for token in ["tok-by-jti", "tok-by-hash", "tok-kept"] {
                for _ in 0..2 {
                    assert_eq!(status(*addr, token).await.0, 200, "{name}: {token}");
                }
            }
        }
        let admin = redis.denylist(&prefix).await;
        let until = SystemTime::now() + Duration::from_secs(600);
        admin.revoke_jti("jti-a", until).await.unwrap();
        admin.revoke_token("tok-by-hash", until).await.unwrap();
        for (name, addr) in &compositions {
            for token in ["tok-by-jti", "tok-by-hash"] {
                // Twice: the refusal also holds on the request after it.
                for _ in 0..2 {
                    let (code, challenge) = status(*addr, token).await;
                    assert_eq!(code, 401, "{name} served the revoked {token}");
                    assert!(challenge.contains("invalid_token"), "{name}: {challenge}");
                }
            }
            assert_eq!(status(*addr, "tok-kept").await.0, 200, "{name}: tok-kept");
        }
    }
}

/// Ten minutes from now, in seconds since the Unix epoch.
fn common_exp() -> u64 {
    (SystemTime::now() + Duration::from_secs(600))
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The order of P-256 (FIPS 186-4 D.1.2.3), big-endian.
#[cfg(feature = "jwt")]
const P256_ORDER: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `n − s` on 32-byte big-endian numbers (0 < s < n), borrowing by hand.
#[cfg(feature = "jwt")]
fn order_minus(n: &[u8; 32], s: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(n[i]) - i16::from(s[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    assert_eq!(borrow, 0, "s is below the order");
    out
}

/// The other valid ECDSA form of an ES256 token: its signature (r, s) made
/// (r, n − s), which verifies as well, made without the key.
#[cfg(feature = "jwt")]
fn es256_twin(token: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let (message, signature) = token.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert_eq!(signature.len(), 64);
    let mut twin = signature.clone();
    twin[32..].copy_from_slice(&order_minus(&P256_ORDER, &signature[32..]));
    assert_ne!(twin, signature);
    format!("{message}.{}", URL_SAFE_NO_PAD.encode(twin))
}

on_every_redis! {
    /// Issue 29 item 3: a token revoked by its text cannot come back as its ECDSA
    /// twin (r, n − s): the revocation is keyed on what was signed (the JWS signing
    /// input), not on the signature's encoding. Through every composition with the
    /// verified cache, the twin sent before and after the revocation.
    #[cfg(feature = "jwt")]
    async fn fleet_a_revoked_es256_token_is_refused_in_its_other_signature_form(redis) {
        use std::sync::Arc;
        use jsonwebtoken::{Algorithm, EncodingKey, Header};
        use tower_bearer::server::{Claims, JwtValidator, VerifiedCache};

        let key = EncodingKey::from_ec_pem(include_bytes!("keys/ec256.key")).unwrap();
        let claims = serde_json::json!({ "sub": "alice", "exp": common_exp() });
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap();
        let kept = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({ "sub": "bob", "exp": common_exp() }),
            &key,
        )
        .unwrap();
        let twin = es256_twin(&token);
        let validator = || {
            JwtValidator::<Claims>::ec_pem(include_bytes!("keys/ec256.pub.pem")).unwrap()
        };
        // Both forms verify: the twin is a valid token in its own right.
        assert!(validator().check(&token).is_ok());
        assert!(validator().check(&twin).is_ok(), "the twin verifies");

        async fn serve_with(v: impl tower_bearer::server::Validator<Claims = Claims>) -> SocketAddr {
            let app = Router::new()
                .route("/", get(|| async { "ok" }))
                .layer(RequireBearerLayer::new(v));
            common::serve(app).await
        }
        let prefix = prefix();
        let mut compositions = Vec::new();
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push(("guard(v)", serve_with(d.guard(validator())).await));
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push((
            "guard(cache(v))",
            serve_with(d.guard(VerifiedCache::new(validator()))).await,
        ));
        let d = redis.denylist(&prefix).await.staleness(Duration::ZERO);
        compositions.push((
            "cache(guard(v))",
            serve_with(VerifiedCache::new(Arc::new(d.guard(validator())))).await,
        ));
        // Accepted and cached, in both forms, before the revocation.
        for (name, addr) in &compositions {
            for t in [&token, &twin, &kept] {
                assert_eq!(status(*addr, t).await.0, 200, "{name}");
            }
        }
        let admin = redis.denylist(&prefix).await;
        admin
            .revoke_token(&token, SystemTime::now() + Duration::from_secs(600))
            .await
            .unwrap();
        for (name, addr) in &compositions {
            for (which, t) in [("token", &token), ("twin", &twin)] {
                for _ in 0..2 {
                    let (code, challenge) = status(*addr, t).await;
                    assert_eq!(code, 401, "{name} served the revoked {which}");
                    assert!(challenge.contains("invalid_token"), "{name}: {challenge}");
                }
            }
            assert_eq!(status(*addr, &kept).await.0, 200, "{name}: another token");
        }
        // Revoked by its twin's text, the token the issuer made is refused too.
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &serde_json::json!({ "sub": "carol", "exp": common_exp() }),
            &key,
        )
        .unwrap();
        admin
            .revoke_token(&es256_twin(&other), SystemTime::now() + Duration::from_secs(600))
            .await
            .unwrap();
        assert!(admin.is_revoked(&other, None).await.unwrap());
        // An opaque token is revoked by its whole text.
        admin
            .revoke_token("opaque-token", SystemTime::now() + Duration::from_secs(600))
            .await
            .unwrap();
        assert!(admin.is_revoked("opaque-token", None).await.unwrap());
        assert!(!admin.is_revoked("opaque-token2", None).await.unwrap());
    }
}

on_every_redis! {
    /// An opaque token that merely has two dots (PASETO's `v4.local.…`, an
    /// authorization server's `at.<id>.<secret>`) is not a JWS: revoked by its
    /// whole text, not by its first two parts, which every token of that server
    /// shares. Revoking one such token must leave the others accepted.
    async fn fleet_revoking_an_opaque_token_with_two_dots_revokes_only_that_token(redis) {
        let prefix = prefix();
        let admin = redis.denylist(&prefix).await;
        let until = SystemTime::now() + Duration::from_secs(600);
        for (revoked, other) in [
            ("v4.local.c2VjcmV0LW9mLWFsaWNl", "v4.local.c2VjcmV0LW9mLWJvYg"),
            ("at.tenant1.alice-secret", "at.tenant1.bob-secret"),
            // Two base64url parts that decode, but to no JOSE header.
            ("YWJj.ZGVm.alice", "YWJj.ZGVm.bob"),
        ] {
            admin.revoke_token(revoked, until).await.unwrap();
            assert!(admin.is_revoked(revoked, None).await.unwrap(), "{revoked}");
            // Asked by a replica with no local answer, and by the admin's own cache.
            let fresh = redis.denylist(&prefix).await;
            assert!(!fresh.is_revoked(other, None).await.unwrap(), "{other} (fresh)");
            assert!(!admin.is_revoked(other, None).await.unwrap(), "{other}");
        }
    }
}
