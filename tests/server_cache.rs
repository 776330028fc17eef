//! VerifiedCache in front of a JWT validator, behind RequireBearerLayer in a real
//! axum server on 127.0.0.1: a repeated token is verified once, and never served
//! from the cache past its `exp`.
#![cfg(feature = "jwt")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use common::server::{get as send, now_plus, serve};
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;
use tower_bearer::server::{
    from_fn, Claims, JwtValidator, RequireBearerLayer, Verified, VerifiedCache,
};

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes";

fn mint(sub: &str, exp_in: i64) -> String {
    let claims = json!({ "sub": sub, "exp": now_plus(exp_in) });
    jsonwebtoken::encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

async fn start() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    // Count the verifications that reach the JWT validator.
    let verifications = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&verifications);
    let jwt = JwtValidator::<Claims>::hmac(SECRET);
    let counted = from_fn(move |token: &str| {
        counter.fetch_add(1, Ordering::SeqCst);
        jwt.check(token)
    });
    async fn me(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let app = Router::new()
        .route("/me", get(me))
        .layer(RequireBearerLayer::new(VerifiedCache::new(counted)).realm("cache-test"));
    (serve(app).await, verifications)
}

#[tokio::test]
async fn a_repeated_token_is_verified_once() {
    let (addr, verifications) = start().await;
    let token = mint("alice", 600);
    for _ in 0..10 {
        let answer = send(addr, "/me", Some(&token)).await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "alice"));
    }
    assert_eq!(verifications.load(Ordering::SeqCst), 1);
    // A forged token is never answered from the cache: each one is checked.
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 10; // inside the signature
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    for _ in 0..3 {
        assert_eq!(send(addr, "/me", Some(&forged)).await.status, 401);
    }
    assert_eq!(verifications.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_cached_token_is_not_served_past_its_exp() {
    let (addr, verifications) = start().await;
    let token = mint("alice", 30);
    assert_eq!(send(addr, "/me", Some(&token)).await.status, 200);
    assert_eq!(send(addr, "/me", Some(&token)).await.status, 200);
    assert_eq!(verifications.load(Ordering::SeqCst), 1);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(31)).await;
    tokio::time::resume();
    assert_eq!(send(addr, "/me", Some(&token)).await.status, 200);
    assert_eq!(
        verifications.load(Ordering::SeqCst),
        2,
        "the entry expired with the token and the validator was asked again"
    );
}
