//! Attacks on signed introspection answers (RFC 9701), against a real authorization
//! server on 127.0.0.1 whose every answer is written by the test: re-encoded or
//! re-headed JWSs, keys named by the answer, `typ` and `Content-Type` variants,
//! `iss`/`aud`/`iat` edge cases, answers too large for the key set's token limit,
//! `kid`s that never existed, and caches shared by validators of other rules.
#![cfg(all(feature = "introspection", feature = "jwks"))]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use common::jwks::{public_jwk, rsa1, rsa2};
use common::server::{now_plus, serve};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tower_bearer::server::{
    Claims, Introspection, IntrospectionKeys, JwksValidator, Rejection, Validator,
};

const RS: &str = "my-api";
const TYP: &str = "token-introspection+jwt";
const JWT_TYPE: &str = "application/token-introspection+jwt";

/// (content type, body) of the answer for (token, issuer).
type Answerer = Arc<dyn Fn(&str, &str) -> (String, String) + Send + Sync>;

struct As {
    issuer: Mutex<String>,
    answer: Mutex<Answerer>,
    calls: AtomicUsize,
    jwks_fetches: AtomicUsize,
    /// Fetches of the keys an answer's `jku` / `x5u` names.
    foreign_fetches: AtomicUsize,
}

async fn introspect(
    State(s): State<Arc<As>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    s.calls.fetch_add(1, Ordering::SeqCst);
    let issuer = s.issuer.lock().unwrap().clone();
    let answer = Arc::clone(&*s.answer.lock().unwrap());
    let (content_type, body) = answer(form.get("token").map_or("", String::as_str), &issuer);
    (StatusCode::OK, [("content-type", content_type)], body).into_response()
}

async fn discovery(State(s): State<Arc<As>>) -> Json<Value> {
    let issuer = s.issuer.lock().unwrap().clone();
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "introspection_endpoint": format!("{issuer}/introspect"),
    }))
}

async fn jwks(State(s): State<Arc<As>>) -> Json<Value> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": [public_jwk(&rsa1(), "k1")] }))
}

async fn foreign(State(s): State<Arc<As>>) -> Json<Value> {
    s.foreign_fetches.fetch_add(1, Ordering::SeqCst);
    Json(json!({ "keys": [public_jwk(&rsa2(), "k1")] }))
}

struct Setup {
    server: Arc<As>,
    issuer: String,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A JWS of exactly this header and these claims, signed with `key` by `alg`.
fn sign(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), key, alg).unwrap();
    format!("{message}.{signature}")
}

fn header() -> Value {
    json!({"alg": "RS256", "kid": "k1", "typ": TYP})
}

/// RFC 7662's answer for `token`: `good` and `big` active (`big` with 12 KiB of
/// group names, as a user in many groups has), anything else inactive.
fn inner(token: &str, issuer: &str) -> Value {
    match token {
        "good" | "good-2" => json!({
            "active": true, "sub": "alice", "scope": "read", "exp": now_plus(600),
            "iss": issuer, "aud": RS,
        }),
        "big" => {
            let groups: Vec<String> = (0..600).map(|i| format!("group-number-{i:05}")).collect();
            json!({
                "active": true, "sub": "bob", "scope": "read", "exp": now_plus(600),
                "iss": issuer, "aud": RS, "groups": groups,
            })
        }
        "expired" => json!({
            "active": true, "sub": "carol", "scope": "read", "exp": now_plus(-5),
            "iss": issuer, "aud": RS,
        }),
        _ => json!({"active": false}),
    }
}

fn claims(token: &str, issuer: &str) -> Value {
    json!({
        "iss": issuer, "aud": RS, "iat": now_plus(0),
        "token_introspection": inner(token, issuer),
    })
}

/// A good signed answer, with `header` and the claims `edit` leaves.
fn answering(header: Value, edit: impl Fn(&mut Value) + Send + Sync + 'static) -> Answerer {
    Arc::new(move |token, issuer| {
        let mut claims = claims(token, issuer);
        edit(&mut claims);
        (
            JWT_TYPE.to_owned(),
            sign(&header, &claims, &rsa1(), Algorithm::RS256),
        )
    })
}

impl Setup {
    async fn start() -> Setup {
        let server = Arc::new(As {
            issuer: Mutex::default(),
            answer: Mutex::new(answering(header(), |_| {})),
            calls: AtomicUsize::new(0),
            jwks_fetches: AtomicUsize::new(0),
            foreign_fetches: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/foreign-jwks", get(foreign))
            .route("/introspect", post(introspect))
            .with_state(Arc::clone(&server));
        let issuer = format!("http://{}", serve(app).await);
        *server.issuer.lock().unwrap() = issuer.clone();
        Setup { server, issuer }
    }

    fn answer(&self, answerer: Answerer) {
        *self.server.answer.lock().unwrap() = answerer;
    }

    fn calls(&self) -> usize {
        self.server.calls.load(Ordering::SeqCst)
    }

    fn validator(&self) -> Introspection<Claims> {
        let keys =
            IntrospectionKeys::jwks(JwksValidator::<Claims>::discover(&self.issuer).unwrap())
                .unwrap();
        Introspection::<Claims>::new(&format!("{}/introspect", self.issuer))
            .unwrap()
            .client(RS, "secret")
            .jwt_response(keys)
            .audience(RS)
    }

    /// `answerer`'s answer for `good` is refused (`503`, never a verdict).
    async fn refuses(&self, what: &str, answerer: Answerer) {
        self.answer(answerer);
        let err = self.validator().validate("good").await.unwrap_err();
        assert!(matches!(err, Rejection::Unavailable(_)), "{what}: {err:?}");
    }

    /// `answerer`'s answer for `good` is accepted.
    async fn accepts(&self, what: &str, answerer: Answerer) {
        self.answer(answerer);
        let claims = self.validator().validate("good").await;
        assert_eq!(
            claims
                .map(|c| c.sub)
                .unwrap_or_else(|e| panic!("{what}: {e:?}")),
            Some("alice".to_owned()),
            "{what}"
        );
    }
}

/// An introspection answer grows with the token's claims: a user in many groups
/// gets an answer over the key set's 8 KiB token limit. That answer is the token's
/// and must be judged (or at worst refused for that token), not blamed on the
/// endpoint: blamed on the endpoint, one such token backed off introspection for
/// every other token (`503` without a call).
#[tokio::test]
async fn an_answer_over_8_kib_is_read_and_backs_off_no_other_token() {
    let s = Setup::start().await;
    let v = s.validator();
    let big = v.validate("big").await;
    assert_eq!(
        big.map(|c| c.sub)
            .expect("a large signed answer is an answer"),
        Some("bob".to_owned())
    );
    let claims = v.validate("good").await.expect("another token, asked for");
    assert_eq!(claims.sub.as_deref(), Some("alice"));
    assert_eq!(s.calls(), 2);
}

/// Answers under `kid`s that were never published (an answer per token, each
/// under a new random `kid`): each is refused (`503`), and the key set is fetched
/// at the first-sight rate, by time (one look-up per 2 s at most, shared by every
/// answer waiting for it), never once per answer: 30 answers at once cost one or
/// two fetches; answers one after another, one fetch per interval.
#[tokio::test]
async fn random_kids_in_answers_do_not_storm_the_jwks() {
    let s = Setup::start().await;
    s.answer(Arc::new(|token, issuer| {
        let kid = format!("k-{:x}", fastrand::u64(..));
        let header = json!({"alg": "RS256", "kid": kid, "typ": TYP});
        (
            JWT_TYPE.to_owned(),
            sign(&header, &claims(token, issuer), &rsa1(), Algorithm::RS256),
        )
    }));
    let v = s.validator().failure_backoff(Duration::ZERO);
    let started = std::time::Instant::now();
    let all = (0..30).map(|i| {
        let v = v.clone();
        async move { v.validate(&format!("good-{i}")).await }
    });
    for verdict in futures_util::future::join_all(all).await {
        let err = verdict.unwrap_err();
        assert!(matches!(err, Rejection::Unavailable(_)), "{err:?}");
    }
    assert_eq!(
        s.calls(),
        30,
        "each answer asked for (no backoff configured)"
    );
    for i in 30..33 {
        assert!(v.validate(&format!("good-{i}")).await.is_err());
    }
    let fetches = s.server.jwks_fetches.load(Ordering::SeqCst) as u64;
    // The first fetch, then at most one per first-sight interval (2 s).
    let allowed = 2 + started.elapsed().as_secs() / 2;
    assert!(
        fetches <= allowed,
        "{fetches} key set fetches for 33 unknown kids in {:?}",
        started.elapsed()
    );
}

/// An answer signed with a key it names itself (`jwk`, `jku`, `x5u`), under the
/// published `kid`, or whose `kid` is a path: refused, the named keys never
/// fetched.
#[tokio::test]
async fn keys_named_by_the_answer_are_never_used() {
    let s = Setup::start().await;
    let foreign = format!("{}/foreign-jwks", s.issuer);
    let named = json!({
        "alg": "RS256", "kid": "k1", "typ": TYP,
        "jwk": public_jwk(&rsa2(), "k1"), "jku": foreign, "x5u": foreign,
    });
    s.refuses(
        "jwk/jku/x5u",
        Arc::new(move |token, issuer| {
            (
                JWT_TYPE.to_owned(),
                sign(&named, &claims(token, issuer), &rsa2(), Algorithm::RS256),
            )
        }),
    )
    .await;
    for kid in ["../k1", "k1/../k1", "/jwks", "k1\u{0}"] {
        let header = json!({"alg": "RS256", "kid": kid, "typ": TYP});
        s.refuses(kid, answering(header, |_| {})).await;
    }
    assert_eq!(s.server.foreign_fetches.load(Ordering::SeqCst), 0);
}

/// A `crit` header, an algorithm not of the key's type or not the JWK's (`PS256`
/// on an `RS256` key, `ES256`, `HS256`), `alg: none`: refused.
#[tokio::test]
async fn crit_and_foreign_algorithms_are_refused() {
    let s = Setup::start().await;
    let crit = json!({"alg": "RS256", "kid": "k1", "typ": TYP, "crit": ["exp"], "exp": 1});
    s.refuses("crit", answering(crit, |_| {})).await;
    s.refuses(
        "PS256 on an RS256 JWK",
        Arc::new(|token, issuer| {
            let header = json!({"alg": "PS256", "kid": "k1", "typ": TYP});
            (
                JWT_TYPE.to_owned(),
                sign(&header, &claims(token, issuer), &rsa1(), Algorithm::PS256),
            )
        }),
    )
    .await;
    s.refuses(
        "HS256 keyed with the JWK's modulus",
        Arc::new(|token, issuer| {
            let header = json!({"alg": "HS256", "kid": "k1", "typ": TYP});
            let n = public_jwk(&rsa1(), "k1")["n"].as_str().unwrap().to_owned();
            let key = EncodingKey::from_secret(n.as_bytes());
            (
                JWT_TYPE.to_owned(),
                sign(&header, &claims(token, issuer), &key, Algorithm::HS256),
            )
        }),
    )
    .await;
    s.refuses(
        "ES256 header on the RSA kid",
        Arc::new(|token, issuer| {
            let header = json!({"alg": "ES256", "kid": "k1", "typ": TYP});
            let good = sign(
                &json!({"alg": "RS256", "kid": "k1", "typ": TYP}),
                &claims(token, issuer),
                &rsa1(),
                Algorithm::RS256,
            );
            let signature = good.rsplit('.').next().unwrap().to_owned();
            (
                JWT_TYPE.to_owned(),
                format!(
                    "{}.{}.{signature}",
                    b64(header.to_string().as_bytes()),
                    b64(claims(token, issuer).to_string().as_bytes())
                ),
            )
        }),
    )
    .await;
    s.refuses(
        "alg none",
        Arc::new(|token, issuer| {
            let header = json!({"alg": "none", "kid": "k1", "typ": TYP});
            (
                JWT_TYPE.to_owned(),
                format!(
                    "{}.{}.",
                    b64(header.to_string().as_bytes()),
                    b64(claims(token, issuer).to_string().as_bytes())
                ),
            )
        }),
    )
    .await;
}

/// A change to a JWS's text.
type Edit = fn(String) -> String;

/// A good answer re-encoded (base64 padding on a part, standard instead of URL-safe
/// alphabet, whitespace inside): never read as another answer; refused here.
#[tokio::test]
async fn re_encoded_answers_are_refused() {
    let s = Setup::start().await;
    let good = move |token: &str, issuer: &str| {
        sign(&header(), &claims(token, issuer), &rsa1(), Algorithm::RS256)
    };
    let edits: [(&str, Edit); 4] = [
        ("padded signature", |jws| format!("{jws}==")),
        ("padded header", |jws| jws.replacen('.', "=.", 1)),
        ("standard alphabet", |jws| {
            jws.replace('-', "+").replace('_', "/")
        }),
        ("a newline inside", |jws| jws.replacen('.', ".\n", 1)),
    ];
    for (what, edit) in edits {
        let body = move |token: &str, issuer: &str| edit(good(token, issuer));
        // Only edits that change the text are meaningful.
        if body("good", "x") == good("good", "x") {
            continue;
        }
        s.refuses(
            what,
            Arc::new(move |token, issuer| (JWT_TYPE.to_owned(), body(token, issuer))),
        )
        .await;
    }
}

/// `typ`: RFC 7515 §4.1.9 lets the `application/` prefix be left out, and media
/// types are case-insensitive: every spelling of the one type is accepted, any
/// other type refused.
#[tokio::test]
async fn typ_spellings() {
    let s = Setup::start().await;
    for typ in [
        "token-introspection+jwt",
        "TOKEN-INTROSPECTION+JWT",
        "application/token-introspection+jwt",
        "APPLICATION/Token-Introspection+Jwt",
    ] {
        let header = json!({"alg": "RS256", "kid": "k1", "typ": typ});
        s.accepts(typ, answering(header, |_| {})).await;
    }
    for typ in [
        json!("introspection+jwt"),
        json!("application/jwt"),
        json!("token-introspection+jwt "),
        json!("application/token-introspection+jwt; q=1"),
        json!(["token-introspection+jwt"]),
        json!(null),
    ] {
        let header = json!({"alg": "RS256", "kid": "k1", "typ": typ});
        s.refuses(&typ.to_string(), answering(header, |_| {})).await;
    }
}

/// The answer's `Content-Type`: the JWT type in any case, with parameters, is a
/// signed answer; a JSON body under it is refused; a signed body under
/// `application/json` (or `application/jwt`) is an unsigned answer, refused when
/// signed ones are required.
#[tokio::test]
async fn content_type_spellings_and_lies() {
    let s = Setup::start().await;
    s.accepts(
        "upper case, with parameters",
        Arc::new(|token, issuer| {
            (
                "Application/Token-Introspection+JWT; charset=UTF-8".to_owned(),
                sign(&header(), &claims(token, issuer), &rsa1(), Algorithm::RS256),
            )
        }),
    )
    .await;
    s.refuses(
        "JSON under the JWT type",
        Arc::new(|token, issuer| (JWT_TYPE.to_owned(), inner(token, issuer).to_string())),
    )
    .await;
    for content_type in ["application/json", "application/jwt", "text/plain"] {
        s.refuses(
            content_type,
            Arc::new(move |token, issuer| {
                (
                    content_type.to_owned(),
                    sign(&header(), &claims(token, issuer), &rsa1(), Algorithm::RS256),
                )
            }),
        )
        .await;
    }
}

/// `aud` empty (string or array), `iss` with a trailing slash or as an array,
/// `iat` in the future beyond the skew: refused; `iat` a little in the future
/// (within the skew) or decimal: accepted.
#[tokio::test]
async fn iss_aud_iat_edges() {
    let s = Setup::start().await;
    s.refuses("aud []", answering(header(), |c| c["aud"] = json!([])))
        .await;
    s.refuses("aud \"\"", answering(header(), |c| c["aud"] = json!("")))
        .await;
    s.refuses(
        "aud in another case",
        answering(header(), |c| c["aud"] = json!("MY-API")),
    )
    .await;
    s.refuses(
        "iss with a trailing slash",
        answering(header(), |c| {
            c["iss"] = json!(format!("{}/", c["iss"].as_str().unwrap()));
        }),
    )
    .await;
    s.refuses(
        "iss as an array",
        answering(header(), |c| c["iss"] = json!([c["iss"].clone()])),
    )
    .await;
    s.refuses(
        "iat 2 minutes ahead",
        answering(header(), |c| c["iat"] = json!(now_plus(120))),
    )
    .await;
    s.accepts(
        "iat 30 s ahead (skew)",
        answering(header(), |c| c["iat"] = json!(now_plus(30))),
    )
    .await;
    s.accepts(
        "decimal iat",
        answering(header(), |c| c["iat"] = json!(now_plus(0) as f64 + 0.5)),
    )
    .await;
    s.refuses(
        "an expired answer (exp in the past)",
        answering(header(), |c| c["exp"] = json!(now_plus(-120))),
    )
    .await;
}

/// Inside a good signed answer, RFC 7662's rules: `active: true` for a token whose
/// own `exp` passed is inactive (`401`); an inactive answer is cached (one call).
#[tokio::test]
async fn the_inner_answer_is_judged_and_cached() {
    let s = Setup::start().await;
    let v = s.validator();
    let err = v.validate("expired").await.unwrap_err();
    assert!(matches!(err, Rejection::InvalidToken(_)), "{err:?}");
    for _ in 0..3 {
        let err = v.validate("revoked").await.unwrap_err();
        assert!(matches!(err, Rejection::InvalidToken(_)), "{err:?}");
    }
    assert_eq!(s.calls(), 2, "the inactive answer is cached");
}

/// Two validators sharing one cache (a clone with another audience, and another
/// scope) share the provider's answer, never a verdict: each judges it by its own
/// rules, without a call of its own.
#[tokio::test]
async fn clones_with_other_rules_share_answers_not_verdicts() {
    let s = Setup::start().await;
    let ours = s.validator();
    let billing = ours.clone().audience("billing-api");
    let admin = ours.clone().require_scopes(["admin"]);
    ours.validate("good").await.unwrap();
    let err = billing.validate("good").await.unwrap_err();
    assert!(matches!(err, Rejection::InvalidToken(_)), "{err:?}");
    let err = admin.validate("good").await.unwrap_err();
    assert!(matches!(err, Rejection::InsufficientScope(_)), "{err:?}");
    assert_eq!(s.calls(), 1);
}

/// An answer larger than the HTTP client's body limit (1 MiB by default): refused,
/// `503`, without reading it all.
#[tokio::test]
async fn a_huge_answer_is_refused() {
    let s = Setup::start().await;
    s.refuses(
        "2 MiB",
        Arc::new(|_, _| (JWT_TYPE.to_owned(), "a".repeat(2 << 20))),
    )
    .await;
}
