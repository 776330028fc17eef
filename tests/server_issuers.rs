//! MultiIssuer against two real identity providers on 127.0.0.1 that count their
//! fetches: routing by `iss`, tokens that name one issuer and are signed by the
//! other's key, tokens with no or an unknown `iss`, rotation at one issuer, and a
//! resolver that adds issuers at run time, flooded with junk.
#![cfg(feature = "jwks")]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::{Extension, Router};
use common::jwks::{mint, public_jwk, rs256, rsa1, rsa2, skip, Idp};
use common::server::{get as send, serve, Answer};
use futures_util::future::join_all;
use jsonwebtoken::EncodingKey;
use serde_json::json;
use tower_bearer::server::{
    Claims, JwksValidator, MultiIssuer, Rejection, RequireBearerLayer, RequireScopeLayer,
    Validator, Verified, VerifiedCache,
};

const REALM: &str = "issuers-test";

fn tenant(issuer: &str) -> JwksValidator<Claims> {
    JwksValidator::<Claims>::discover(issuer)
        .unwrap()
        .rules(|v| v.audience("api"))
        .build()
        .unwrap()
}

/// Two providers: A signs with `rsa1` as kid `a1`, B with `rsa2` as kid `b1`.
async fn two_idps() -> (Idp, Idp) {
    let a = Idp::start(vec![public_jwk(&rsa1(), "a1")]).await;
    let b = Idp::start(vec![public_jwk(&rsa2(), "b1")]).await;
    (a, b)
}

fn both(a: &Idp, b: &Idp) -> MultiIssuer<Claims> {
    MultiIssuer::builder()
        .issuer(tenant(&a.issuer))
        .issuer(tenant(&b.issuer))
        .build()
        .unwrap()
}

/// An API behind `VerifiedCache` → `MultiIssuer`, with `/me` open to any good
/// token and `/admin` asking for the `admin` scope.
async fn start_api<V: Validator<Claims = Claims>>(validator: V) -> std::net::SocketAddr {
    async fn me(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
        claims.sub.unwrap_or_default()
    }
    let app = Router::new()
        .route(
            "/admin",
            get(me).layer(RequireScopeLayer::<Claims>::new(["admin"]).realm(REALM)),
        )
        .route("/me", get(me))
        .layer(RequireBearerLayer::new(VerifiedCache::new(validator)).realm(REALM));
    serve(app).await
}

fn assert_ok(answer: &Answer, sub: &str) {
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, sub),
        "{answer:?}"
    );
}

fn assert_refused(answer: &Answer, description: &str) {
    assert_eq!(answer.status, 401, "{answer:?}");
    assert_eq!(
        answer.challenge(),
        format!(
            r#"Bearer realm="{REALM}", error="invalid_token", error_description="{description}""#
        )
    );
}

/// A token naming `iss`, with a fake signature: the look-up comes before any
/// signature check (and minting thousands of RSA signatures is slow).
fn unsigned_from(iss: &str) -> String {
    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    format!(
        "{}.{}.c2ln",
        b64(json!({ "alg": "RS256", "kid": "k" })),
        b64(json!({ "iss": iss, "sub": "x", "exp": common::server::now_plus(600) }))
    )
}

fn mint_with(key: &EncodingKey, kid: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(&rs256(kid), &claims, key).unwrap()
}

#[tokio::test]
async fn each_issuers_tokens_are_checked_with_its_own_keys_and_rules() {
    let (a, b) = two_idps().await;
    let api = start_api(both(&a, &b)).await;
    let alice = mint(&rsa1(), rs256("a1"), &a.issuer, "alice");
    let bob = mint(&rsa2(), rs256("b1"), &b.issuer, "bob");

    assert_ok(&send(api, "/me", Some(&alice)).await, "alice");
    assert_ok(&send(api, "/me", Some(&bob)).await, "bob");
    assert_ok(&send(api, "/me", Some(&alice)).await, "alice");
    assert_eq!((a.fetches(), b.fetches()), (1, 1));

    // The issuer's rules apply: its audience, and the route's scope.
    let elsewhere = mint_with(
        &rsa2(),
        "b1",
        json!({ "sub": "bob", "iss": b.issuer, "aud": "other", "exp": common::server::now_plus(600) }),
    );
    assert_refused(
        &send(api, "/me", Some(&elsewhere)).await,
        "the token is not for this audience",
    );
    assert_eq!(send(api, "/admin", Some(&bob)).await.status, 403);
}

/// The hostile case: a token that names issuer A but is signed by issuer B's key,
/// under B's kid and under a kid both publish. The `iss` only picks A's keys; the
/// signature check with them refuses it.
#[tokio::test]
async fn a_token_naming_one_issuer_signed_by_the_others_key_is_refused() {
    let a = Idp::start(vec![
        public_jwk(&rsa1(), "a1"),
        public_jwk(&rsa1(), "shared"),
    ])
    .await;
    let b = Idp::start(vec![
        public_jwk(&rsa2(), "b1"),
        public_jwk(&rsa2(), "shared"),
    ])
    .await;
    let api = start_api(both(&a, &b)).await;

    // B's key under B's kid: A does not know the kid.
    let forged = mint(&rsa2(), rs256("b1"), &a.issuer, "mallory");
    assert_refused(
        &send(api, "/me", Some(&forged)).await,
        "the token's signing key is unknown",
    );
    // B's key under a kid A publishes too: A's key for that kid says no.
    let forged = mint(&rsa2(), rs256("shared"), &a.issuer, "mallory");
    assert_refused(
        &send(api, "/me", Some(&forged)).await,
        "the token signature is invalid",
    );
    assert_eq!(b.fetches(), 0, "B's keys were never consulted");

    // The same key and kid with B's own iss: good.
    let bob = mint(&rsa2(), rs256("shared"), &b.issuer, "bob");
    assert_ok(&send(api, "/me", Some(&bob)).await, "bob");
    // And A's own key under the shared kid, with A's iss: good too.
    let alice = mint(&rsa1(), rs256("shared"), &a.issuer, "alice");
    assert_ok(&send(api, "/me", Some(&alice)).await, "alice");
}

#[tokio::test]
async fn no_iss_or_an_iss_not_configured_is_refused_without_any_fetch() {
    let (a, b) = two_idps().await;
    let api = start_api(both(&a, &b)).await;
    let exp = common::server::now_plus(600);

    let no_iss = mint_with(
        &rsa1(),
        "a1",
        json!({ "sub": "x", "aud": "api", "exp": exp }),
    );
    assert_refused(
        &send(api, "/me", Some(&no_iss)).await,
        "the token lacks the iss claim",
    );
    let elsewhere = mint(&rsa1(), rs256("a1"), "https://evil.example", "mallory");
    assert_refused(
        &send(api, "/me", Some(&elsewhere)).await,
        "the token's issuer is not accepted",
    );
    let not_text = mint_with(&rsa1(), "a1", json!({ "iss": 7, "aud": "api", "exp": exp }));
    assert_refused(
        &send(api, "/me", Some(&not_text)).await,
        "the token's iss claim is malformed",
    );
    // An issuer that differs by a trailing slash is another issuer.
    let slash = mint(&rsa1(), rs256("a1"), &format!("{}/", a.issuer), "mallory");
    assert_refused(
        &send(api, "/me", Some(&slash)).await,
        "the token's issuer is not accepted",
    );
    assert_eq!((a.fetches(), b.fetches()), (0, 0));
}

#[tokio::test]
async fn a_kid_rotated_at_one_issuer_does_not_disturb_the_other() {
    let (a, b) = two_idps().await;
    let validator = both(&a, &b);
    validator.load().await.unwrap();
    let api = start_api(validator.clone()).await;
    let bob = mint(&rsa2(), rs256("b1"), &b.issuer, "bob");
    assert_ok(&send(api, "/me", Some(&bob)).await, "bob");

    // A rotates to a2; B keeps b1.
    a.set_keys(vec![public_jwk(&rsa2(), "a2")]);
    skip(31).await;
    let alice = mint(&rsa2(), rs256("a2"), &a.issuer, "alice");
    assert_ok(&send(api, "/me", Some(&alice)).await, "alice");
    assert_eq!(
        validator.validator(&a.issuer).unwrap().key_ids(),
        ["a2"],
        "A's old key is gone"
    );
    assert_ok(&send(api, "/me", Some(&bob)).await, "bob");
    assert_eq!((a.fetches(), b.fetches()), (2, 1));
    let old = mint(&rsa1(), rs256("a1"), &a.issuer, "alice");
    assert_refused(
        &send(api, "/me", Some(&old)).await,
        "the token's signing key is unknown",
    );
}

#[test]
fn every_validator_must_require_its_issuer_once() {
    let jwks_only = JwksValidator::<Claims>::builder("http://127.0.0.1:9/jwks")
        .unwrap()
        .build()
        .unwrap();
    let err = MultiIssuer::builder()
        .issuer(jwks_only)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("must require its issuer"), "{err}");

    let named = || {
        JwksValidator::<Claims>::builder("http://127.0.0.1:9/jwks")
            .unwrap()
            .issuer("https://a.example")
            .build()
            .unwrap()
    };
    assert_eq!(named().issuer(), Some("https://a.example"));
    let err = MultiIssuer::builder()
        .issuer(named())
        .issuer(named())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("configured twice"), "{err}");

    // Discovery fixes the issuer; another one is refused.
    let err = JwksValidator::<Claims>::discover("http://127.0.0.1:9")
        .unwrap()
        .issuer("http://127.0.0.1:9/other")
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("not the discovered issuer"),
        "{err}"
    );
}

/// A resolver that accepts the issuers in `tenants` (and answers `wrong` for
/// "https://liar.example": a validator for another issuer), counting its calls.
fn resolver(
    tenants: Vec<String>,
    calls: Arc<AtomicUsize>,
) -> impl Fn(String) -> futures_util::future::Ready<Option<JwksValidator<Claims>>> + Send + Sync {
    move |issuer: String| {
        calls.fetch_add(1, Ordering::SeqCst);
        let found = if issuer == "https://liar.example" {
            tenants.first().map(|t| tenant(t))
        } else if tenants.contains(&issuer) {
            Some(tenant(&issuer))
        } else {
            None
        };
        futures_util::future::ready(found)
    }
}

#[tokio::test]
async fn a_resolver_adds_a_tenant_at_first_use_with_one_call_for_a_burst() {
    let (a, b) = two_idps().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let validator = MultiIssuer::builder()
        .issuer(tenant(&a.issuer))
        .resolver(resolver(vec![b.issuer.clone()], Arc::clone(&calls)))
        .build()
        .unwrap();
    let bob = mint(&rsa2(), rs256("b1"), &b.issuer, "bob");

    let answers = join_all((0..100).map(|_| validator.validate(&bob))).await;
    for answer in answers {
        assert_eq!(answer.unwrap().sub.as_deref(), Some("bob"));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.fetches(), 1);
    assert_eq!(validator.issuers().len(), 2);

    // A known tenant costs no call; a forged token for it is still checked.
    let forged = mint(&rsa1(), rs256("b1"), &b.issuer, "mallory");
    assert_eq!(
        validator.validate(&forged).await.unwrap_err(),
        Rejection::invalid_token("the token signature is invalid")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // A resolver answer for another issuer than the one asked is a refusal.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio::time::resume();
    let liar = mint(&rsa2(), rs256("b1"), "https://liar.example", "mallory");
    assert_eq!(
        validator.validate(&liar).await.unwrap_err(),
        Rejection::invalid_token("the token's issuer is not accepted")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(validator.issuers().len(), 2);
}

/// Junk `iss` values cannot turn requests into look-ups: one resolver call per
/// look-up interval whatever their number, none for an issuer refused recently,
/// and no more tenants than the bound.
#[tokio::test(start_paused = true)]
async fn a_flood_of_junk_issuers_costs_one_lookup_per_interval() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Requests that cannot be looked up at once are answered 503 at once here
    // (waiting is tested below).
    let validator = MultiIssuer::<Claims>::builder()
        .resolver(resolver(Vec::new(), Arc::clone(&calls)))
        .lookup_wait(Duration::ZERO)
        .build()
        .unwrap();
    let junk = |i: usize| unsigned_from(&format!("https://junk-{i}.example"));
    let tokens: Vec<String> = (0..1000).map(junk).collect();

    let answers = join_all(tokens.iter().map(|t| validator.validate(t))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let refused = answers
        .iter()
        .filter(|a| {
            **a == Err(Rejection::invalid_token(
                "the token's issuer is not accepted",
            ))
        })
        .count();
    let later = answers
        .iter()
        .filter(|a| matches!(a, Err(Rejection::Unavailable(u)) if u.retry_after_delay() == Some(Duration::from_secs(1))))
        .count();
    assert_eq!((refused, later), (1, 999));

    // The next interval: one more call; the issuer refused before costs none.
    tokio::time::advance(Duration::from_secs(1)).await;
    let answers = join_all(tokens.iter().map(|t| validator.validate(t))).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        answers[0],
        Err(Rejection::invalid_token(
            "the token's issuer is not accepted"
        ))
    );
    assert_eq!(
        answers[1],
        Err(Rejection::invalid_token(
            "the token's issuer is not accepted"
        ))
    );
    assert!(answers[2..]
        .iter()
        .all(|a| matches!(a, Err(Rejection::Unavailable(_)))));

    // Past the refusal time the first junk issuer may be asked about again.
    tokio::time::advance(Duration::from_secs(5 * 60)).await;
    let _ = validator.validate(&tokens[0]).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_resolver_adds_at_most_max_issuers() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let validator = MultiIssuer::<Claims>::builder()
        .resolver(move |issuer: String| {
            counted.fetch_add(1, Ordering::SeqCst);
            // Accepts every issuer (keys on a port nobody listens on: never fetched
            // here, as the tokens' signatures are never checked in this test).
            let v = JwksValidator::<Claims>::builder("http://127.0.0.1:9/jwks")
                .unwrap()
                .issuer(issuer)
                .build()
                .ok();
            async move { v }
        })
        .max_issuers(3)
        .lookup_interval(Duration::ZERO)
        .build()
        .unwrap();
    // Tokens with a kid unknown to the (keyless) validators: validation would
    // fetch; only the look-ups are counted here, so they are not awaited.
    for i in 0..50 {
        let token = unsigned_from(&format!("https://t{i}.example"));
        drop(validator.validate(&token));
        tokio::task::yield_now().await;
    }
    assert_eq!(validator.issuers().len(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

/// One junk `iss` spends the look-up interval; a real new tenant arriving a moment
/// later waits (bounded) for the next allowed look-up and is accepted, instead of
/// being answered `503` at once.
#[tokio::test]
async fn a_new_tenant_right_after_a_junk_issuer_waits_for_the_next_lookup() {
    let (a, b) = two_idps().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let validator = MultiIssuer::builder()
        .issuer(tenant(&a.issuer))
        .resolver(resolver(vec![b.issuer.clone()], Arc::clone(&calls)))
        .build()
        .unwrap();
    let junk = unsigned_from("https://junk.example");
    assert_eq!(
        validator.validate(&junk).await.unwrap_err(),
        Rejection::invalid_token("the token's issuer is not accepted")
    );
    let bob = mint(&rsa2(), rs256("b1"), &b.issuer, "bob");
    let answer = validator.validate(&bob).await;
    assert_eq!(answer.map(|c| c.sub), Ok(Some("bob".into())));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
/// A request that cannot wait for the next look-up is answered `503` with the time
/// until that look-up (`Retry-After`).
#[tokio::test(start_paused = true)]
async fn an_issuer_that_cannot_be_looked_up_now_is_503_with_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let validator = MultiIssuer::<Claims>::builder()
        .resolver(resolver(Vec::new(), Arc::clone(&calls)))
        .lookup_interval(Duration::from_secs(3))
        .lookup_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let _ = validator
        .validate(&unsigned_from("https://junk-1.example"))
        .await;
    match validator
        .validate(&unsigned_from("https://junk-2.example"))
        .await
    {
        Err(Rejection::Unavailable(u)) => {
            assert_eq!(u.retry_after_delay(), Some(Duration::from_secs(3)))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
