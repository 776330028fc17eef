//! The protected API of the examples, an axum router:
//!
//! - `GET /public`: no token needed.
//! - `GET /me`: the verified claims as JSON (`sub` included).
//! - `GET /admin`: needs the scope `admin` (`403 insufficient_scope` without it).
//! - `GET /metrics`: this crate's metrics in the Prometheus format (feature
//!   `metrics`; no token needed, as scrapers expect).
//!
//! Tokens are checked by this crate's `RequireBearerLayer` with the validator it is
//! given (the examples use `JwksValidator`, keys found through OIDC discovery).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::json;
use tower_bearer::server::{Claims, RequireBearerLayer, RequireScopeLayer, Validator, Verified};

/// Requests the API answered with a handler (refused ones never get that far).
#[derive(Default)]
pub struct Counters {
    served: AtomicU64,
}

impl Counters {
    /// Requests that reached a handler.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

/// The API's routes, tokens checked by `validator`.
pub fn app<V>(validator: V, counters: Arc<Counters>) -> Router
where
    V: Validator<Claims = Claims>,
{
    let admin = Router::new()
        .route("/admin", get(admin))
        .layer(RequireScopeLayer::<Claims>::new(["admin"]).realm("api"));
    let protected = Router::new()
        .route("/me", get(me))
        .merge(admin)
        .layer(RequireBearerLayer::new(validator).realm("api"));
    Router::new()
        .route("/public", get(public))
        .merge(protected)
        .merge(super::metrics::routes())
        .with_state(counters)
}

async fn public(State(counters): State<Arc<Counters>>) -> Json<serde_json::Value> {
    counters.served.fetch_add(1, Ordering::Relaxed);
    Json(json!({ "message": "anyone may read this" }))
}

async fn me(
    State(counters): State<Arc<Counters>>,
    Extension(Verified(claims)): Extension<Verified<Claims>>,
) -> Json<Claims> {
    counters.served.fetch_add(1, Ordering::Relaxed);
    Json(claims)
}

async fn admin(
    State(counters): State<Arc<Counters>>,
    Extension(Verified(claims)): Extension<Verified<Claims>>,
) -> Json<serde_json::Value> {
    counters.served.fetch_add(1, Ordering::Relaxed);
    Json(json!({
        "message": format!("welcome to the admin area, {}", claims.sub.unwrap_or_default()),
    }))
}
