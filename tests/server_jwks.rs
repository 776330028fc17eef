//! JwksValidator against a real identity provider on 127.0.0.1 that counts its
//! fetches: discovery, rotation, unknown and garbage kids, an endpoint that goes
//! down, keys that must be skipped, and token headers that must not be followed.
#![cfg(feature = "jwks")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::{Extension, Router};
use common::jwks::{mint, public_jwk, rs256, rsa1, rsa2, skip, skip_ms, unsigned, until, Idp};
use common::server::{get as send, serve, Answer};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tower_bearer::server::{Claims, JwksValidator, RequireBearerLayer, Verified};

const REALM: &str = "jwks-test";

struct Api {
    addr: std::net::SocketAddr,
    /// Requests that reached the bearer layer.
    arrivals: Arc<AtomicUsize>,
}

async fn start_api(validator: JwksValidator<Claims>) -> Api {
    async fn me(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let arrivals = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&arrivals);
    let app = Router::new()
        .route("/me", get(me))
        .layer(RequireBearerLayer::new(validator).realm(REALM))
        .layer(tower::util::MapRequestLayer::new(
            move |req: http::Request<axum::body::Body>| {
                counter.fetch_add(1, Ordering::SeqCst);
                req
            },
        ));
    Api {
        addr: serve(app).await,
        arrivals,
    }
}

fn invalid_token(description: &str) -> String {
    format!(r#"Bearer realm="{REALM}", error="invalid_token", error_description="{description}""#)
}

fn assert_ok(answer: &Answer, sub: &str) {
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, sub),
        "{answer:?}"
    );
}

#[tokio::test]
async fn discovery_then_a_rotated_key_costs_one_fetch() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::discover(&idp.issuer)
        .unwrap()
        .rules(|v| v.audience("api"))
        .build()
        .unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");

    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(
        (idp.state.discoveries.load(Ordering::SeqCst), idp.fetches()),
        (1, 1)
    );

    // The IdP rotates to k2 only.
    idp.set_keys(vec![public_jwk(&rsa2(), "k2")]);
    skip(31).await;
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 2, "one fetch for the rotation");
    assert_eq!(
        idp.state.discoveries.load(Ordering::SeqCst),
        1,
        "jwks_uri is remembered"
    );

    // k1 is gone; within the cool-down no new fetch is made for it.
    let answer = send(api.addr, "/me", Some(&t1)).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.challenge(),
        invalid_token("the token's signing key is unknown")
    );
    assert_eq!(idp.fetches(), 2);

    // A token of the right key but another issuer: discovery made iss mandatory.
    let foreign = mint(&rsa2(), rs256("k2"), "https://other.example", "mallory");
    let answer = send(api.addr, "/me", Some(&foreign)).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.challenge(),
        invalid_token("the token has the wrong issuer")
    );
}

#[tokio::test]
async fn a_thousand_concurrent_requests_with_a_new_kid_make_one_fetch() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(idp.fetches(), 1);

    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    skip(31).await;
    // Hold the JWKS answer until every request is inside the layer.
    idp.gate.send_replace(false);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let t2 = t2.clone();
            tokio::spawn(async move { send(api.addr, "/me", Some(&t2)).await })
        })
        .collect();
    until(|| api.arrivals.load(Ordering::SeqCst) == 1001).await;
    until(|| idp.fetches() == 2).await;
    idp.gate.send_replace(true);
    for request in requests {
        assert_ok(&request.await.unwrap(), "bob");
    }
    assert_eq!(idp.fetches(), 2, "1,000 waiters, one fetch");
}

/// A thousand garbage kids at once: every one is refused (`401`), none left
/// undecided, for at most one look-up per interval (2 s) while they arrive, and
/// one more for those that arrived after the last had started.
#[tokio::test]
async fn a_thousand_garbage_kids_at_once_are_all_refused_for_one_fetch_per_interval() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    skip(31).await;

    let start = tokio::time::Instant::now();
    let requests: Vec<_> = (0..1000)
        .map(|i| {
            // The key is looked up before any signature check: a fake one will do
            // (and signing 1,000 tokens with RSA would dominate the test).
            let token = unsigned(&rs256(&format!("garbage-{i}")));
            tokio::spawn(async move { send(api.addr, "/me", Some(&token)).await })
        })
        .collect();
    until(|| api.arrivals.load(Ordering::SeqCst) == 1001).await;
    // The late ones wait for the next look-up, 2 s after the first.
    skip_ms(2_000).await;
    for request in requests {
        assert_unknown_key(&request.await.unwrap());
    }
    let fetches = idp.fetches();
    let intervals = start.elapsed().as_secs_f64() / 2.0;
    assert!(
        fetches >= 2 && fetches as f64 <= 2.0 + intervals.ceil(),
        "the first load, then one look-up per interval for 1,000 garbage kids: \
         {fetches} fetches in {intervals} intervals"
    );
    // The known key still works, with no further fetch.
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(idp.fetches(), fetches);
}

#[tokio::test]
async fn when_the_jwks_endpoint_is_down_the_last_keys_keep_working() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    *idp.state.cache_control.lock().unwrap() = Some("public, max-age=120".into());
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    idp.state.down.store(true, Ordering::SeqCst);
    // Past max-age: the next request starts a background refresh, which fails.
    skip(121).await;
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    until(|| idp.fetches() == 2).await;
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    // An unknown kid waits for the next look-up (2 s after the failure), and the
    // failed look-up is no verdict on the token: 503, and when to come back.
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    let answer = send_and_skip(&api, &t2, 4, 2_000).await;
    assert_unavailable(&answer);
    assert_retry_after(&answer, 4); // look-ups back off: 2 s, then 4 s
    assert_eq!(idp.fetches(), 3);
    let answer = send_and_skip(&api, &t2, 5, 4_000).await;
    assert_unavailable(&answer);
    assert_retry_after(&answer, 8);
    assert_eq!(idp.fetches(), 4);
    // The next look-up is further away than a request waits: 503 at once.
    let answer = send(api.addr, "/me", Some(&t2)).await;
    assert_unavailable(&answer);
    assert_retry_after(&answer, 8);
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(
        idp.fetches(),
        4,
        "failures are retried by time, backing off"
    );

    // With no keys ever fetched, the answer is 503 without a challenge.
    let fresh = start_api(
        JwksValidator::<Claims>::builder(&idp.jwks_url())
            .unwrap()
            .build()
            .unwrap(),
    )
    .await;
    let answer = send(fresh.addr, "/me", Some(&t1)).await;
    assert_eq!((answer.status, answer.challenge()), (503, ""));
    assert_retry_after(&answer, 2);
}

#[tokio::test]
async fn a_discovery_document_for_another_issuer_is_refused() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    *idp.state.claimed_issuer.lock().unwrap() = Some("https://evil.example".into());
    let validator = JwksValidator::<Claims>::discover(&idp.issuer)
        .unwrap()
        .build()
        .unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_eq!(send(api.addr, "/me", Some(&t1)).await.status, 503);
    assert_eq!(
        idp.fetches(),
        0,
        "no keys fetched from an unverified document"
    );
}

#[tokio::test]
async fn unusable_keys_are_skipped_and_token_headers_never_choose_the_key() {
    use base64::Engine;
    let secret = b"a published secret is no secret";
    let oct = json!({
        "kty": "oct", "kid": "sym", "alg": "HS256",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    });
    let mut enc = public_jwk(&rsa2(), "enc");
    enc["use"] = json!("enc");
    let idp = Idp::start(vec![
        oct,
        json!({ "kty": "weird", "kid": "w" }),
        enc,
        public_jwk(&rsa1(), "k1"),
    ])
    .await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("sym".into());
    let with_oct = mint(
        &EncodingKey::from_secret(secret),
        hs,
        &idp.issuer,
        "mallory",
    );
    let with_enc = mint(&rsa2(), rs256("enc"), &idp.issuer, "mallory");
    let mut jku = rs256("k9");
    jku.jku = Some(format!("{}/attacker-jwks", idp.issuer));
    let with_jku = mint(&rsa2(), jku, &idp.issuer, "mallory");
    let mut embedded = rs256("k1");
    embedded.jwk = Some(serde_json::from_value(public_jwk(&rsa2(), "k1")).unwrap());
    let with_jwk = mint(&rsa2(), embedded, &idp.issuer, "mallory");
    for (case, token) in [
        ("symmetric key", with_oct),
        ("encryption key", with_enc),
        ("jku header", with_jku),
        ("embedded jwk", with_jwk),
    ] {
        let answer = send(api.addr, "/me", Some(&token)).await;
        assert_eq!(answer.status, 401, "{case}");
        assert!(
            answer.challenge().contains(r#"error="invalid_token""#),
            "{case}"
        );
    }
    assert_eq!(idp.state.attacker_fetches.load(Ordering::SeqCst), 0);
    assert_eq!(
        idp.fetches(),
        2,
        "skipped keys are known to the set: only k9 was looked up"
    );
}

const UNKNOWN_KEY: &str = "the token's signing key is unknown";

/// A `503` without a challenge: no verdict on the token, try again later.
fn assert_unavailable(answer: &Answer) {
    assert_eq!((answer.status, answer.challenge()), (503, ""), "{answer:?}");
}

fn assert_unknown_key(answer: &Answer) {
    assert_eq!(
        (answer.status, answer.challenge().to_owned()),
        (401, invalid_token(UNKNOWN_KEY)),
        "{answer:?}"
    );
}

/// Issue 13 item 8, "a key rotation is an outage": the API fetches the keys at
/// start-up; 12 s later the provider restarts with a new key and signs with it at
/// once. The clients' first requests with the new kid are accepted, for one fetch.
#[tokio::test]
async fn issue_13_item_8_a_key_published_12_s_after_start_up_is_accepted_at_first_use() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    assert_eq!(idp.fetches(), 1);
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    skip(12).await;
    // The provider restarts with only a new key.
    idp.set_keys(vec![public_jwk(&rsa2(), "k2")]);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    // A hundred clients use it at once; the answer is held until all have arrived.
    idp.gate.send_replace(false);
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let t2 = t2.clone();
            tokio::spawn(async move { send(api.addr, "/me", Some(&t2)).await })
        })
        .collect();
    until(|| api.arrivals.load(Ordering::SeqCst) == 101).await;
    idp.gate.send_replace(true);
    for request in requests {
        assert_ok(&request.await.unwrap(), "bob");
    }
    assert_eq!(idp.fetches(), 2, "one fetch for the new key");

    // The retired key is refused at once, and nothing fetches again.
    assert_unknown_key(&send(api.addr, "/me", Some(&t1)).await);
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 2);
}

/// Many distinct unknown kids while a look-up is held: the kid it was made for is
/// refused; the others, which arrived after it started and so could be good tokens
/// signed by a key newer than it, are not called invalid on its word: they wait
/// for the next look-up (one interval later), one fetch for all of them, and are
/// refused then.
#[tokio::test]
async fn a_flood_of_unknown_kids_costs_one_fetch_per_interval_and_calls_no_unchecked_token_invalid()
{
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    // A long interval and wait, so that the test's own time does not count.
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .first_sight_interval(std::time::Duration::from_secs(20))
        .first_sight_wait(std::time::Duration::from_secs(60))
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let kid = |i: usize| unsigned(&rs256(&format!("flood-{i}")));
    skip(20).await;

    // The first unknown kid is looked up; its answer is held while the flood arrives.
    idp.gate.send_replace(false);
    let first = {
        let token = kid(0);
        tokio::spawn(async move { send(api.addr, "/me", Some(&token)).await })
    };
    until(|| idp.fetches() == 2).await;
    let flood: Vec<_> = (1..=200)
        .map(|i| {
            let token = kid(i);
            tokio::spawn(async move { send(api.addr, "/me", Some(&token)).await })
        })
        .collect();
    until(|| api.arrivals.load(Ordering::SeqCst) == 201).await;
    idp.gate.send_replace(true);
    assert_unknown_key(&first.await.unwrap());
    assert_eq!(idp.fetches(), 2);
    skip(20).await;
    for request in flood {
        assert_unknown_key(&request.await.unwrap());
    }
    assert_eq!(idp.fetches(), 3, "201 unknown kids, two look-ups");

    // Within the interval of their look-up the kids are refused at once, the known
    // key works, nothing is fetched.
    assert_unknown_key(&send(api.addr, "/me", Some(&kid(7))).await);
    assert_unknown_key(&send(api.addr, "/me", Some(&kid(200))).await);
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(idp.fetches(), 3);
    // A key published now is not called invalid: it waits for the next look-up.
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send_and_skip(&api, &t2, 205, 20_000).await, "bob");
    assert_eq!(idp.fetches(), 4);
}

/// A bogus kid sent again and again: looked up once, then refused at once without
/// a fetch for the look-up interval (here set to 20 s, so that the test's own time
/// does not count); then looked up once more.
#[tokio::test]
async fn a_bogus_kid_repeated_is_refused_without_a_refetch_within_the_interval() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .first_sight_interval(std::time::Duration::from_secs(20))
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let bogus = unsigned(&rs256("bogus"));
    skip(20).await;

    for _ in 0..20 {
        assert_unknown_key(&send(api.addr, "/me", Some(&bogus)).await);
    }
    assert_eq!(idp.fetches(), 2, "the start-up fetch and one look-up");
    skip(15).await;
    assert_unknown_key(&send(api.addr, "/me", Some(&bogus)).await);
    assert_eq!(idp.fetches(), 2, "no refetch within the interval");
    skip(5).await;
    assert_unknown_key(&send(api.addr, "/me", Some(&bogus)).await);
    assert_eq!(idp.fetches(), 3, "one look-up per interval");
}

/// The provider rotates while its JWKS endpoint fails: the old key keeps working, the
/// new one cannot be checked (`503` with `Retry-After`, never `invalid_token`), its
/// look-ups backing off by time; when the endpoint is back, the new key is accepted
/// at the time the last `503` named.
#[tokio::test]
async fn a_rotation_while_the_jwks_endpoint_is_down_keeps_the_old_keys() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");

    idp.state.down.store(true, Ordering::SeqCst);
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    skip(5).await;
    let answer = send(api.addr, "/me", Some(&t2)).await;
    assert_unavailable(&answer);
    assert_retry_after(&answer, 2);
    assert_eq!(idp.fetches(), 2, "the new kid was looked up");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    let answer = send_and_skip(&api, &t2, 3, 2_000).await;
    assert_unavailable(&answer);
    assert_retry_after(&answer, 4);
    assert_eq!(
        idp.fetches(),
        3,
        "a failed look-up is retried after a backoff"
    );
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    idp.state.down.store(false, Ordering::SeqCst);
    skip(4).await;
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(idp.fetches(), 4);
}

/// Every failure names what failed: the JWKS endpoint or the discovery document,
/// never "token endpoint".
#[tokio::test]
async fn failures_name_the_endpoint_that_failed() {
    use tower_bearer::Endpoint;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let jwks = JwksValidator::<Claims>::builder(&format!("http://{closed}/jwks"))
        .unwrap()
        .build()
        .unwrap();
    let err = jwks.load().await.unwrap_err();
    assert_eq!(err.endpoint(), Some(Endpoint::Jwks), "{err:?}");
    assert!(
        err.to_string().starts_with("JWKS endpoint unreachable: "),
        "{err}"
    );
    let discovery = JwksValidator::<Claims>::discover(&format!("http://{closed}"))
        .unwrap()
        .build()
        .unwrap();
    let err = discovery.load().await.unwrap_err();
    assert_eq!(err.endpoint(), Some(Endpoint::Discovery), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("discovery document unreachable: "),
        "{err}"
    );

    // Answers that cannot be used.
    let idp = Idp::start(vec![]).await;
    let jwks = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let err = jwks.load().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid JWKS endpoint response: the key set holds no usable signing key"
    );
    idp.state.down.store(true, Ordering::SeqCst);
    let err = jwks.load().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("invalid JWKS endpoint response: ")
            && err.to_string().contains("answered HTTP 5"),
        "{err}"
    );
    *idp.state.claimed_issuer.lock().unwrap() = Some("https://evil.example".into());
    let discovery = JwksValidator::<Claims>::discover(&idp.issuer)
        .unwrap()
        .build()
        .unwrap();
    let err = discovery.load().await.unwrap_err();
    assert_eq!(err.endpoint(), Some(Endpoint::Discovery), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("invalid discovery document response: the document names issuer"),
        "{err}"
    );
}

/// `build()` reports a bad configuration as an error; it never panics.
#[test]
fn build_refuses_clear_text_to_a_remote_host_without_panicking() {
    let refused = JwksValidator::<Claims>::builder("http://idp.example.com/jwks")
        .unwrap()
        .build();
    assert!(
        matches!(refused, Err(tower_bearer::Error::Configuration(_))),
        "{refused:?}"
    );
    let allowed = JwksValidator::<Claims>::builder("http://idp.example.com/jwks")
        .unwrap()
        .allow_insecure_http(true)
        .build();
    assert!(allowed.is_ok());
}

/// Keys are refreshed ahead of time: with no request at all, the key set is fetched
/// again before its `max-age` ends, so the first request after the lifetime is
/// checked against the new keys (a key the provider withdrew is refused) and no
/// fetch lies in its path.
#[tokio::test]
async fn keys_are_refetched_before_their_lifetime_ends_without_any_request() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    *idp.state.cache_control.lock().unwrap() = Some("public, max-age=120".into());
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator.clone()).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    // The provider withdraws k1 (compromised, say) and publishes k2.
    idp.set_keys(vec![public_jwk(&rsa2(), "k2")]);
    // 90 % of the lifetime passes, nobody calls: the refresh is made all the same.
    skip(108).await;
    until(|| validator.key_ids() == ["k2"]).await;
    assert_eq!(idp.fetches(), 2);

    // Past the lifetime: the new key's answer comes from keys already in place.
    skip(13).await;
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 2, "no fetch in any request's path");
    // The withdrawn key is refused. Retired more than one look-up interval ago, it
    // is looked up again like any unknown kid (the provider might have answered
    // with an older set): one look-up, which does not bring it.
    assert_unknown_key(&send(api.addr, "/me", Some(&t1)).await);
    assert_eq!(idp.fetches(), 3);
}

/// A scheduled refresh the provider is slow to answer holds up no request: the
/// answer comes from the current keys while the fetch hangs, and the new keys are
/// in use once it lands.
#[tokio::test]
async fn a_request_never_waits_for_a_scheduled_refresh() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    *idp.state.cache_control.lock().unwrap() = Some("public, max-age=120".into());
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator.clone()).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");

    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    idp.gate.send_replace(false);
    // Past the whole lifetime; the refresh started and its answer is held.
    skip(121).await;
    until(|| idp.fetches() == 2).await;
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");
    assert_eq!(validator.key_ids(), ["k1"], "the refresh is still held");

    idp.gate.send_replace(true);
    until(|| validator.key_ids().len() == 2).await;
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 2);
}

/// A failing endpoint is retried by time, without requests, keeping the last good
/// keys meanwhile; the retry after the endpoint's return brings the new keys.
#[tokio::test]
async fn a_failed_refresh_is_retried_by_time_keeping_the_last_keys() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    *idp.state.cache_control.lock().unwrap() = Some("public, max-age=120".into());
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator.clone()).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");

    idp.state.down.store(true, Ordering::SeqCst);
    idp.gate.send_replace(false);
    skip(108).await;
    until(|| idp.fetches() == 2).await;
    // `load` joins the held refresh: once it returns, the failure is recorded.
    let joined = tokio::spawn({
        let validator = validator.clone();
        async move { validator.load().await }
    });
    tokio::task::yield_now().await;
    idp.gate.send_replace(true);
    assert!(joined.await.unwrap().is_err());
    assert_eq!(idp.fetches(), 2);
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    // The retry comes 30–33 s after the failure, with no request to start it.
    idp.state.down.store(false, Ordering::SeqCst);
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    skip(34).await;
    until(|| validator.key_ids().len() == 2).await;
    assert_eq!(idp.fetches(), 3);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
}

/// Issue 29 item 12. The `Retry-After` of a `503`, in whole seconds.
fn retry_after(answer: &Answer) -> u64 {
    answer
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("a 503 without Retry-After: {answer:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// A `503` whose `Retry-After` is `secs` less the (real) time the test took since
/// the clock was set: `secs`, or one less on a slow machine.
fn assert_retry_after(answer: &Answer, secs: u64) {
    let after = retry_after(answer);
    assert!(
        (secs - 1..=secs).contains(&after) && after >= 1,
        "Retry-After {after}, expected {secs}: {answer:?}"
    );
}

/// Sends `token` to `/me` and, once the request is inside the layer (`arrivals`
/// reached `arrived`), moves the clock on by `ms`: the answer.
async fn send_and_skip(api: &Api, token: &str, arrived: usize, ms: u64) -> Answer {
    let addr = api.addr;
    let token = token.to_owned();
    let request = tokio::spawn(async move { send(addr, "/me", Some(&token)).await });
    until(|| api.arrivals.load(Ordering::SeqCst) >= arrived).await;
    skip_ms(ms).await;
    request.await.unwrap()
}

/// Issue 29 item 12: one token with a junk kid, then a token under a key the
/// provider published a moment later. The junk spent the look-up budget; the new
/// key's request waits for the next allowed look-up (2 s after the junk's) and is
/// accepted, instead of a `503` until a 30 s cool-down ends.
#[tokio::test]
async fn issue_29_junk_kid_then_a_key_published_a_moment_later_is_accepted_within_5_s() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    skip(31).await;

    assert_unknown_key(&send(api.addr, "/me", Some(&unsigned(&rs256("junk")))).await);
    assert_eq!(idp.fetches(), 2, "the junk kid was looked up");
    skip_ms(100).await;
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    // The clock moves on 2 s (the look-up interval) while the request waits: well
    // within 5 s of the key's publication.
    assert_ok(&send_and_skip(&api, &t2, 2, 2_000).await, "bob");
    assert_eq!(idp.fetches(), 3, "one more look-up, for the new key");
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 3);
}

/// Issue 29 item 12: two rotations 12 s apart (the provider replaces its only key
/// each time); each new key is taken at its first request, one fetch each, and the
/// retired key is refused at once.
#[tokio::test]
async fn issue_29_two_rotations_12_s_apart_are_each_taken_at_first_use() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&t1)).await, "alice");

    skip(5).await;
    idp.set_keys(vec![public_jwk(&rsa2(), "k2")]);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 2);
    assert_unknown_key(&send(api.addr, "/me", Some(&t1)).await);

    skip(12).await;
    idp.set_keys(vec![public_jwk(&rsa1(), "k3")]);
    let t3 = mint(&rsa1(), rs256("k3"), &idp.issuer, "carol");
    assert_ok(&send(api.addr, "/me", Some(&t3)).await, "carol");
    assert_eq!(idp.fetches(), 3);
    assert_unknown_key(&send(api.addr, "/me", Some(&t2)).await);
    assert_eq!(idp.fetches(), 3);
}

/// Issue 29 item 12: a steady stream of distinct junk kids (10 a second for 20 s)
/// asks the provider at most once per look-up interval (2 s), and every junk token
/// gets its verdict (`401`), none a `503`.
#[tokio::test]
async fn issue_29_a_stream_of_junk_kids_asks_the_provider_at_most_once_per_interval() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let start = tokio::time::Instant::now();
    let mut requests = Vec::new();
    for i in 0..200 {
        let token = unsigned(&rs256(&format!("junk-{i}")));
        requests.push(tokio::spawn(async move {
            send(api.addr, "/me", Some(&token)).await
        }));
        until(|| api.arrivals.load(Ordering::SeqCst) > i).await;
        skip_ms(100).await;
    }
    // The last ones wait for one more look-up.
    skip_ms(2_000).await;
    for request in requests {
        assert_unknown_key(&request.await.unwrap());
    }
    // 20 s of junk (and the test's own time): one look-up per 2 s, plus the
    // start-up fetch and the last look-up.
    let intervals = (start.elapsed().as_secs_f64() / 2.0).ceil() as usize;
    assert!(intervals >= 11);
    let fetches = idp.fetches();
    assert!(
        (2..=2 + intervals).contains(&fetches),
        "{fetches} fetches in {intervals} intervals"
    );
}

/// Issue 29 item 12: a `503` for a key set that cannot be looked up yet says when to
/// come back (`Retry-After`): when the look-up fails, and when a request cannot
/// wait for the next allowed look-up.
#[tokio::test]
async fn issue_29_a_503_carries_retry_after() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .first_sight_wait(std::time::Duration::from_secs(1))
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    skip(5).await;
    assert_unknown_key(&send(api.addr, "/me", Some(&unsigned(&rs256("junk")))).await);
    // The next look-up is 2 s away, and this validator waits at most 1 s.
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    let answer = send(api.addr, "/me", Some(&t2)).await;
    assert_unavailable(&answer);
    assert_retry_after(&answer, 2);
    skip(2).await;
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");

    // The endpoint fails: the look-up's failure is a 503 with Retry-After too.
    idp.state.down.store(true, Ordering::SeqCst);
    skip(5).await;
    let t3 = mint(&rsa1(), rs256("k3"), &idp.issuer, "carol");
    let answer = send(api.addr, "/me", Some(&t3)).await;
    assert_unavailable(&answer);
    assert!((1..=30).contains(&retry_after(&answer)), "{answer:?}");
}

/// The last key the provider published.
fn last_key(idp: &Idp) -> serde_json::Value {
    let keys = idp.state.keys.lock().unwrap();
    keys["keys"].as_array().unwrap().last().unwrap().clone()
}

/// Issue 29 item 12: 20 clients call in a loop while the provider rotates twice,
/// 12 s apart, with a junk token just before each rotation; fewer than 1 % of their
/// requests fail (here: none), and each rotation costs at most two fetches.
#[tokio::test]
async fn issue_29_rotations_under_load_fail_fewer_than_1_percent_of_requests() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let current = Arc::new(std::sync::Mutex::new(mint(
        &rsa1(),
        rs256("k1"),
        &idp.issuer,
        "alice",
    )));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let (current, stop) = (Arc::clone(&current), Arc::clone(&stop));
            let (sent, failed) = (Arc::clone(&sent), Arc::clone(&failed));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let token = current.lock().unwrap().clone();
                    if send(api.addr, "/me", Some(&token)).await.status != 200 {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    sent.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let served = |n: usize| {
        let sent = Arc::clone(&sent);
        async move {
            let from = sent.load(Ordering::SeqCst);
            until(|| sent.load(Ordering::SeqCst) >= from + n).await;
        }
    };
    served(500).await;
    for (i, key) in [(2, rsa2()), (3, rsa1())] {
        skip(12).await;
        // Junk spends the look-up, then the provider publishes a new key beside the
        // one in use (dropping the one before) and signs the clients' tokens with it.
        assert_unknown_key(&send(api.addr, "/me", Some(&unsigned(&rs256("junk")))).await);
        let kid = format!("k{i}");
        let previous = last_key(&idp);
        idp.set_keys(vec![previous, public_jwk(&key, &kid)]);
        *current.lock().unwrap() = mint(&key, rs256(&kid), &idp.issuer, "bob");
        // The clients' requests under the new key wait for the next look-up.
        skip_ms(2_000).await;
        served(500).await;
    }
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    let (sent, failed) = (sent.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(sent >= 1_500);
    assert!(failed * 100 < sent, "{failed} of {sent} requests failed");
    assert!(idp.fetches() <= 1 + 2 * 2, "{} fetches", idp.fetches());
}

/// Attack on issue 29 item 12: a flood of distinct junk kids, all waiting for the
/// next look-up, must not spend a budget that a token under a key published a
/// moment ago needs: it waits for the same look-up and is accepted (and the junk is
/// refused by it, one fetch for all).
#[tokio::test]
async fn attack_junk_waiters_do_not_turn_a_new_key_into_a_503() {
    use futures_util::poll;
    use tower_bearer::server::Validator;
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    // Within the interval after that fetch: 5 000 junk tokens wait for the next
    // look-up (each polled once, so each is inside the validator).
    let mut junk = Vec::new();
    for i in 0..5_000 {
        let mut waiting = validator.validate(&unsigned(&rs256(&format!("junk-{i}"))));
        let _ = poll!(&mut waiting);
        junk.push(waiting);
    }
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    let mut fresh = validator.validate(&t2);
    if let std::task::Poll::Ready(answer) = poll!(&mut fresh) {
        panic!("the new key's token was answered before the next look-up: {answer:?}");
    }
    skip_ms(2_000).await;
    let claims = fresh.await.expect("the new key is taken");
    assert_eq!(claims.sub.as_deref(), Some("bob"));
    for answer in futures_util::future::join_all(junk).await {
        assert!(
            matches!(
                answer,
                Err(tower_bearer::server::Rejection::InvalidToken(_))
            ),
            "{answer:?}"
        );
    }
    assert_eq!(idp.fetches(), 2, "one look-up for all");
}

/// Attack: a provider that answers one look-up with an older key set (a lagging
/// replica or CDN edge during a rotation) makes a key in use look retired. Once the
/// provider serves it again, its tokens are accepted after one look-up interval,
/// not refused with `401` (and thrown away by their clients) until the next
/// scheduled refresh, 15 minutes later.
#[tokio::test]
async fn attack_a_key_dropped_by_a_stale_answer_is_taken_again_once_served() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    let api = start_api(validator).await;
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");

    // A lagging edge answers the next look-up (made for a junk kid) without k2.
    idp.set_keys(vec![public_jwk(&rsa1(), "k1")]);
    skip(3).await;
    assert_unknown_key(&send(api.addr, "/me", Some(&unsigned(&rs256("junk")))).await);
    assert_eq!(idp.fetches(), 2);

    // The edge catches up; one interval later k2's tokens are looked up again.
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    skip(3).await;
    assert_ok(&send(api.addr, "/me", Some(&t2)).await, "bob");
    assert_eq!(idp.fetches(), 3);
}

/// A provider that publishes a thousand keys: the set is taken whole (the last key
/// verifies), for one fetch, and a kid outside it is still one look-up.
#[tokio::test]
async fn a_thousand_keys_in_the_set_are_all_usable_for_one_fetch() {
    let keys = (0..1_000)
        .map(|i| public_jwk(&rsa1(), &format!("k{i}")))
        .collect();
    let idp = Idp::start(keys).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let api = start_api(validator.clone()).await;
    let last = mint(&rsa1(), rs256("k999"), &idp.issuer, "alice");
    assert_ok(&send(api.addr, "/me", Some(&last)).await, "alice");
    assert_eq!(validator.key_ids().len(), 1_000);
    assert_eq!(idp.fetches(), 1);
}

/// A request dropped while its look-up runs (the client went away) cancels nothing:
/// the shared fetch goes on, its keys are stored, and the next request with that
/// kid is answered from them with no fetch of its own.
#[tokio::test]
async fn a_request_dropped_while_waiting_does_not_cancel_the_shared_look_up() {
    use futures_util::poll;
    use tower_bearer::server::Validator;
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    validator.load().await.unwrap();
    skip(3).await;
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    idp.gate.send_replace(false);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");
    let mut dropped = validator.validate(&t2);
    assert!(poll!(&mut dropped).is_pending());
    until(|| idp.fetches() == 2).await;
    drop(dropped);
    idp.gate.send_replace(true);
    until(|| validator.key_ids().len() == 2).await;
    let claims = validator
        .validate(&t2)
        .await
        .expect("taken from the stored keys");
    assert_eq!(claims.sub.as_deref(), Some("bob"));
    assert_eq!(idp.fetches(), 2);
}

/// A token cached by a `VerifiedCache` over a `JwksValidator` is refused once the
/// provider dropped its signing key and a refresh (here a first-sight look-up) took
/// the new key set: the cache's hit is checked again (`Validator::recheck`), and
/// does not serve the token until its `exp`.
#[tokio::test]
async fn a_cached_token_is_refused_once_its_key_left_the_key_set() {
    use tower_bearer::server::{Rejection, Validator, VerifiedCache};
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]).await;
    let jwks = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let cache = VerifiedCache::new(jwks.clone());
    let alice = mint(&rsa1(), rs256("k1"), "https://idp.example", "alice");
    let bob = mint(&rsa2(), rs256("k2"), "https://idp.example", "bob");
    assert!(cache.validate(&alice).await.is_ok());
    assert!(cache.validate(&bob).await.is_ok());
    assert!(cache.validate(&alice).await.is_ok(), "a cache hit");
    assert_eq!(idp.fetches(), 1);

    // The provider drops k1 (compromised, say); a new kid makes us look again.
    idp.set_keys(vec![public_jwk(&rsa2(), "k2")]);
    skip(3).await;
    let newcomer = mint(&rsa2(), rs256("k3"), "https://idp.example", "carol");
    assert!(cache.validate(&newcomer).await.is_err());
    assert_eq!(idp.fetches(), 2);
    assert_eq!(jwks.key_ids(), vec!["k2".to_owned()]);

    assert_eq!(
        cache.validate(&alice).await.unwrap_err(),
        Rejection::invalid_token("the token's signing key is unknown")
    );
    // Tokens of the keys still there are served from the cache as before.
    assert_eq!(
        cache.validate(&bob).await.unwrap().sub.as_deref(),
        Some("bob")
    );
    assert_eq!(idp.fetches(), 2);
}

/// The `Retry-After` delay of a `503` from the validator (no verdict on the token).
fn unavailable_retry_after(answer: Result<Claims, tower_bearer::server::Rejection>) -> u64 {
    match answer {
        Err(tower_bearer::server::Rejection::Unavailable(u)) => {
            let after = u
                .retry_after_delay()
                .unwrap_or_else(|| panic!("a 503 without Retry-After: {u:?}"));
            after.as_secs()
        }
        other => panic!("expected a 503: {other:?}"),
    }
}

/// Review of the first-sight rework: a JWKS endpoint that accepts the look-up and
/// never answers. The request that started the look-up is answered `503` with
/// `Retry-After` at its own `first_sight_wait` (1 s here), not at the HTTP client's
/// timeout (30 s, the default); the look-up goes on, and once the endpoint answers
/// its keys are taken: the next request is accepted with no look-up of its own.
#[tokio::test]
async fn review_a_hanging_jwks_endpoint_answers_503_at_first_sight_wait_then_its_keys_are_taken() {
    use futures_util::poll;
    use std::time::Duration;
    use tower_bearer::server::Validator;
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .first_sight_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    validator.load().await.unwrap();
    skip(3).await;
    idp.set_keys(vec![public_jwk(&rsa1(), "k1"), public_jwk(&rsa2(), "k2")]);
    // The endpoint accepts the look-up and holds its answer.
    idp.gate.send_replace(false);
    let t2 = mint(&rsa2(), rs256("k2"), &idp.issuer, "bob");

    tokio::time::pause();
    let arrived = tokio::time::Instant::now();
    let mut request = validator.validate(&t2);
    assert!(poll!(&mut request).is_pending());
    until(|| idp.fetches() == 2).await;
    let answer = request.await;
    let waited = arrived.elapsed();
    // Tokio's timers tick by the millisecond.
    assert!(
        waited >= Duration::from_secs(1) && waited <= Duration::from_millis(1_001),
        "answered after {waited:?}, not at first_sight_wait (1 s)"
    );
    assert!(unavailable_retry_after(answer) <= 2);

    // The endpoint answers at last: the look-up (still running) stores its keys.
    tokio::time::resume();
    idp.gate.send_replace(true);
    until(|| validator.key_ids().len() == 2).await;
    let claims = validator.validate(&t2).await.expect("the keys were taken");
    assert_eq!(claims.sub.as_deref(), Some("bob"));
    assert_eq!(idp.fetches(), 2, "no look-up of its own");
}

/// The same at first use, with no keys yet: the first request starts the fetch and
/// is answered `503` with `Retry-After` at `first_sight_wait` (default 5 s), not at
/// the HTTP timeout; the fetch's keys serve the next request.
#[tokio::test]
async fn review_first_use_with_a_hanging_jwks_endpoint_answers_503_at_first_sight_wait() {
    use futures_util::poll;
    use std::time::Duration;
    use tower_bearer::server::Validator;
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    idp.gate.send_replace(false);
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");

    tokio::time::pause();
    let arrived = tokio::time::Instant::now();
    let mut request = validator.validate(&t1);
    assert!(poll!(&mut request).is_pending());
    until(|| idp.fetches() == 1).await;
    let answer = request.await;
    let waited = arrived.elapsed();
    // Tokio's timers tick by the millisecond.
    assert!(
        waited >= Duration::from_secs(5) && waited <= Duration::from_millis(5_001),
        "answered after {waited:?}, not at first_sight_wait (5 s)"
    );
    unavailable_retry_after(answer);

    tokio::time::resume();
    idp.gate.send_replace(true);
    until(|| validator.key_ids().len() == 1).await;
    let claims = validator.validate(&t1).await.expect("the keys were taken");
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    assert_eq!(idp.fetches(), 1, "no fetch of its own");
}

/// Review: a fetch started on a current-thread runtime that then idles (a blocking
/// wrapper between calls) is driven by nobody; its HTTP timeout never fires.
/// `load` joins it and must notice the stall (no heartbeat), not wait without end:
/// it makes a fetch of its own.
#[tokio::test]
async fn review_load_does_not_wait_without_end_on_a_fetch_nobody_drives() {
    use futures_util::poll;
    use std::time::Duration;
    use tower_bearer::server::Validator;
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let validator = JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .build()
        .unwrap();
    let t1 = mint(&rsa1(), rs256("k1"), &idp.issuer, "alice");
    // Another runtime starts the first-use fetch, then idles (it is never entered
    // again): the fetch's task is never driven.
    let elsewhere = validator.clone();
    let (idle, request) = std::thread::spawn(move || {
        let idle = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut request = elsewhere.validate(&t1);
        assert!(idle.block_on(async { poll!(&mut request).is_pending() }));
        (idle, request)
    })
    .join()
    .unwrap();

    tokio::time::pause();
    let loaded = tokio::time::timeout(Duration::from_secs(60), validator.load()).await;
    assert!(loaded.is_ok(), "load waited 60 s on a fetch nobody drives");
    loaded.unwrap().unwrap();
    assert_eq!(validator.key_ids(), vec!["k1".to_owned()]);
    drop(request);
    // A runtime cannot be dropped inside another.
    std::thread::spawn(move || drop(idle)).join().unwrap();
}
