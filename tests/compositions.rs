//! Principle 4, "security cannot be undone by composition": every composition of
//! validators and caches that the docs suggest keeps revocation, audience, scope and
//! sender binding, against real parts (a JWKS provider and an RFC 7662 endpoint on
//! 127.0.0.1, the real Redis for the denylist, real DPoP proofs and certificates).
//!
//! | composition | revocation | audience | scope | binding |
//! |---|---|---|---|---|
//! | `VerifiedCache` → `Denylisted` → `JwksValidator` | denylist | here | `RequireScopeLayer` | - |
//! | `Denylisted` → `VerifiedCache` → `JwksValidator` | denylist | here | `RequireScopeLayer` | - |
//! | `VerifiedCache` → `Denylisted` → `MultiIssuer` | denylist | here | `RequireScopeLayer` | - |
//! | `Denylisted` → `VerifiedCache` → `MultiIssuer` | denylist | here | `RequireScopeLayer` | - |
//! | `VerifiedCache` → `Introspection` (and clones) | provider, within the TTL | here | `require_scopes`, `RequireScopeLayer` | - |
//! | `RequireBearerLayer::dpop` over `VerifiedCache` | - | - | - | `cnf.jkt` |
//! | `RequireBearerLayer::mtls` over `VerifiedCache` | - | - | - | `cnf["x5t#S256"]` |
#![cfg(all(
    feature = "jwks",
    feature = "introspection",
    feature = "redis",
    feature = "dpop",
    feature = "mtls"
))]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Json, Router};
use base64::Engine as _;
use common::jwks::{public_jwk, rs256, rsa1, skip, Idp};
use common::redis::Redis;
use common::server::{get as send, now_plus, send_raw};
use serde_json::{json, Value};
use tower_bearer::client::DpopKey;
use tower_bearer::redis::RedisDenylist;
use tower_bearer::server::mtls::{CertificateBinding, ClientCertificate};
use tower_bearer::server::{
    Claims, DpopVerifier, Introspection, JwksValidator, MultiIssuer, RequireBearerLayer,
    RequireScopeLayer, Validator, Verified, VerifiedCache,
};

const ORDERS: &str = "https://orders.example";
const BILLING: &str = "https://billing.example";

async fn me(Extension(Verified(claims)): Extension<Verified<Claims>>) -> String {
    claims.sub.unwrap_or_default()
}

/// `/read` for any good token, `/write` behind `RequireScopeLayer(write)`.
fn app<V: Validator<Claims = Claims>>(layer: RequireBearerLayer<V>) -> Router {
    Router::new()
        .route(
            "/write",
            get(me).layer(RequireScopeLayer::<Claims>::new(["write"])),
        )
        .route("/read", get(me))
        .layer(layer)
}

/// Serves what `make` builds, once it knows its own address (a DPoP proof names it).
async fn serve_at(make: impl FnOnce(SocketAddr) -> Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = make(addr);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

fn unique(what: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{what}-{}-{nanos}", std::process::id())
}

/// A token of `idp`, signed with its key `k1`, with these claims besides `iss`, `exp`.
fn mint(idp: &Idp, mut claims: Value) -> String {
    claims["iss"] = json!(idp.issuer);
    claims["exp"] = json!(now_plus(600));
    jsonwebtoken::encode(&rs256("k1"), &claims, &rsa1()).unwrap()
}

fn jwks(idp: &Idp) -> JwksValidator<Claims> {
    JwksValidator::<Claims>::builder(&idp.jwks_url())
        .unwrap()
        .issuer(idp.issuer.clone())
        .rules(|v| v.audience(ORDERS))
        .build()
        .unwrap()
}

fn multi(idp: &Idp) -> MultiIssuer<Claims> {
    MultiIssuer::builder().issuer(jwks(idp)).build().unwrap()
}

fn jti(c: &Claims) -> Option<String> {
    c.jti.clone()
}

/// Audience, scope and revocation through one composition: a token for the orders
/// API reads (twice: the second a cache hit) but cannot write; a token for the
/// billing API is refused every time; a revoked token is refused on its next request.
async fn holds<V: Validator<Claims = Claims>>(
    name: &str,
    validator: V,
    idp: &Idp,
    denylist: &RedisDenylist,
) {
    let api = serve_at(|_| app(RequireBearerLayer::new(validator))).await;
    let id = unique("jti");
    let reader = mint(
        idp,
        json!({"sub": "bob", "aud": ORDERS, "scope": "read", "jti": id}),
    );
    let billing = mint(
        idp,
        json!({"sub": "carol", "aud": BILLING, "scope": "read write", "jti": unique("jti")}),
    );
    for _ in 0..2 {
        let answer = send(api, "/read", Some(&reader)).await;
        assert_eq!(
            (answer.status, answer.body.as_str()),
            (200, "bob"),
            "{name}"
        );
        assert_eq!(
            send(api, "/write", Some(&reader)).await.status,
            403,
            "{name}: scope"
        );
        assert_eq!(
            send(api, "/read", Some(&billing)).await.status,
            401,
            "{name}: audience"
        );
    }
    denylist
        .revoke_jti(&id, SystemTime::now() + Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        send(api, "/read", Some(&reader)).await.status,
        401,
        "{name}: a revoked token, cached before"
    );
}

#[tokio::test]
async fn jwks_and_multi_issuer_compositions_keep_audience_scope_and_revocation() {
    let Some(redis) = Redis::plain().await else {
        return;
    };
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    // Staleness zero: every check reads Redis, so the revocation counts at once.
    let denylist = redis
        .denylist(&unique("compositions"))
        .await
        .staleness(Duration::ZERO);
    let d = &denylist;
    holds(
        "VerifiedCache → Denylisted → JwksValidator",
        VerifiedCache::new(d.guard(jwks(&idp)).jti(jti)),
        &idp,
        d,
    )
    .await;
    holds(
        "Denylisted → VerifiedCache → JwksValidator",
        d.guard(VerifiedCache::new(jwks(&idp))).jti(jti),
        &idp,
        d,
    )
    .await;
    holds(
        "VerifiedCache → Denylisted → MultiIssuer",
        VerifiedCache::new(d.guard(multi(&idp)).jti(jti)),
        &idp,
        d,
    )
    .await;
    holds(
        "Denylisted → VerifiedCache → MultiIssuer",
        d.guard(VerifiedCache::new(multi(&idp))).jti(jti),
        &idp,
        d,
    )
    .await;
}

/// An RFC 7662 endpoint serving two resource servers; revoked tokens answer inactive.
#[derive(Default)]
struct Provider {
    calls: AtomicUsize,
    revoked: Mutex<HashSet<String>>,
}

async fn introspect(
    State(p): State<Arc<Provider>>,
    Form(form): Form<std::collections::HashMap<String, String>>,
) -> Response {
    p.calls.fetch_add(1, Ordering::SeqCst);
    let token = form.get("token").cloned().unwrap_or_default();
    let exp = now_plus(600);
    let answer = if p.revoked.lock().unwrap().contains(&token) {
        json!({"active": false})
    } else {
        match token.as_str() {
            "orders-reader" => {
                json!({"active": true, "sub": "bob", "aud": ORDERS, "scope": "read", "exp": exp})
            }
            "orders-writer" => json!({
                "active": true, "sub": "alice", "aud": ORDERS, "scope": "read write", "exp": exp,
            }),
            "billing-writer" => json!({
                "active": true, "sub": "carol", "aud": BILLING, "scope": "read write", "exp": exp,
            }),
            _ => json!({"active": false}),
        }
    };
    Json(answer).into_response()
}

/// `VerifiedCache` over `Introspection`, and two APIs whose validators are clones of
/// one `Introspection` (one answer cache) configured for each API: audience, scope
/// and revocation hold in each.
#[tokio::test]
async fn introspection_under_a_verified_cache_keeps_audience_scope_and_revocation() {
    let provider = Arc::new(Provider::default());
    let idp = serve_at(|_| {
        Router::new()
            .route("/introspect", post(introspect))
            .with_state(Arc::clone(&provider))
    })
    .await;
    let base = Introspection::<Claims>::new(&format!("http://{idp}/introspect"))
        .unwrap()
        .client("rs", "s3cret")
        .ttl(Duration::from_secs(1));
    let orders = serve_at(|_| {
        app(RequireBearerLayer::new(VerifiedCache::new(
            base.clone().audience(ORDERS),
        )))
    })
    .await;
    let billing = serve_at(|_| {
        app(RequireBearerLayer::new(VerifiedCache::new(
            base.clone().audience(BILLING).require_scopes(["write"]),
        )))
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            send(orders, "/read", Some("orders-reader")).await.status,
            200
        );
        assert_eq!(
            send(orders, "/write", Some("orders-reader")).await.status,
            403
        );
        assert_eq!(
            send(orders, "/write", Some("orders-writer")).await.status,
            200
        );
        assert_eq!(
            send(billing, "/read", Some("orders-writer")).await.status,
            401,
            "the billing API accepted a token for the orders API"
        );
        assert_eq!(
            send(orders, "/read", Some("billing-writer")).await.status,
            401
        );
        assert_eq!(
            send(billing, "/read", Some("billing-writer")).await.status,
            200
        );
    }
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        3,
        "one call per token"
    );
    // Revoked at the provider: refused once the introspection TTL (1 s) is over,
    // however many caches sit on top.
    provider
        .revoked
        .lock()
        .unwrap()
        .extend(["orders-writer".to_owned(), "billing-writer".to_owned()]);
    skip(2).await;
    assert_eq!(
        send(orders, "/write", Some("orders-writer")).await.status,
        401
    );
    assert_eq!(
        send(billing, "/read", Some("billing-writer")).await.status,
        401
    );
    assert_eq!(
        send(orders, "/read", Some("orders-reader")).await.status,
        200
    );
}

/// A DPoP-bound token accepted (and cached) with its proof is still refused as a
/// bare `Bearer`, or with a proof of another key: the binding is checked on every
/// request, after the cache.
#[tokio::test]
async fn dpop_binding_survives_a_verified_cache() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let key = DpopKey::generate().unwrap();
    let thief = DpopKey::generate().unwrap();
    let validator = VerifiedCache::new(jwks(&idp));
    let api = serve_at(|addr| {
        let verifier = DpopVerifier::new()
            .external_origin(&format!("http://{addr}"))
            .unwrap();
        app(RequireBearerLayer::new(validator).dpop(verifier))
    })
    .await;
    let token = mint(
        &idp,
        json!({"sub": "bob", "aud": ORDERS, "scope": "read", "cnf": {"jkt": key.thumbprint()}}),
    );
    let url: http::Uri = format!("http://{api}/read").parse().unwrap();
    let with = |k: &DpopKey| {
        let proof = k.proof(&http::Method::GET, &url, Some(&token)).unwrap();
        let auth = format!("DPoP {token}");
        (auth, proof)
    };
    for _ in 0..2 {
        let (auth, proof) = with(&key);
        let answer = send_raw(
            api,
            "/read",
            &[
                ("authorization", auth.as_bytes()),
                ("dpop", proof.as_bytes()),
            ],
        )
        .await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "bob"));
        assert_eq!(
            send(api, "/read", Some(&token)).await.status,
            401,
            "a DPoP-bound token as a bare Bearer"
        );
        let (auth, proof) = with(&thief);
        let answer = send_raw(
            api,
            "/read",
            &[
                ("authorization", auth.as_bytes()),
                ("dpop", proof.as_bytes()),
            ],
        )
        .await;
        assert_eq!(answer.status, 401, "a proof of another key");
    }
}

/// A certificate-bound token accepted (and cached) with its certificate is still
/// refused without it, or with another certificate.
#[tokio::test]
async fn certificate_binding_survives_a_verified_cache() {
    let idp = Idp::start(vec![public_jwk(&rsa1(), "k1")]).await;
    let cert = |name: &str| {
        let der = rcgen::generate_simple_self_signed(vec![name.to_owned()])
            .unwrap()
            .cert
            .der()
            .to_vec();
        let header = format!(
            ":{}:",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        (ClientCertificate::from_der(der), header)
    };
    let (ours, ours_header) = cert("client.example");
    let (_, other_header) = cert("thief.example");
    let api = serve_at(|_| {
        app(RequireBearerLayer::new(VerifiedCache::new(jwks(&idp)))
            .mtls(CertificateBinding::trusted_header()))
    })
    .await;
    let token = mint(
        &idp,
        json!({"sub": "bob", "aud": ORDERS, "cnf": {"x5t#S256": ours.x5t_s256()}}),
    );
    let auth = format!("Bearer {token}");
    for _ in 0..2 {
        let answer = send_raw(
            api,
            "/read",
            &[
                ("authorization", auth.as_bytes()),
                ("client-cert", ours_header.as_bytes()),
            ],
        )
        .await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "bob"));
        assert_eq!(
            send(api, "/read", Some(&token)).await.status,
            401,
            "without its certificate"
        );
        let answer = send_raw(
            api,
            "/read",
            &[
                ("authorization", auth.as_bytes()),
                ("client-cert", other_header.as_bytes()),
            ],
        )
        .await;
        assert_eq!(answer.status, 401, "with another certificate");
    }
}
