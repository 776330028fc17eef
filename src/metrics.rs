//! Metrics (feature `metrics`), recorded through the [`metrics`](https://docs.rs/metrics)
//! facade: install any exporter (`metrics-exporter-prometheus`, OpenTelemetry, …)
//! and the figures below appear in it. Without the feature, or without a recorder,
//! nothing is recorded and nothing is paid.
//!
//! Names follow the Prometheus conventions (`_total` for counters, `_seconds` for
//! durations). Every label takes a fixed, small set of values: never a token, a
//! user or a URL. [`describe`] registers a help text for each metric.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `tower_bearer_refreshes_total` | counter | `outcome`: `ok`, `invalid_grant`, `superseded`, `transient`, `error` | token refreshes of a `Refreshing` cache (a token from the store, or from the source) |
//! | `tower_bearer_refresh_seconds` | histogram | | how long each refresh took |
//! | `tower_bearer_refresh_waiters_total` | counter | | callers with no usable token that waited for a refresh |
//! | `tower_bearer_refresh_wait_seconds` | histogram | | how long each of them waited |
//! | `tower_bearer_unauthorized_total` | counter | | `401` (or gRPC `UNAUTHENTICATED`) answers to a request that carried a credential |
//! | `tower_bearer_unauthorized_throttled_total` | counter | | rejections of the current token that did not drop it at once (401-triggered refreshes are throttled) |
//! | `tower_bearer_store_failures_total` | counter | `op`: `load`, `save` | token store reads and writes that failed |
//! | `tower_bearer_idp_requests_total` | counter | `endpoint`: `token`, `device_authorization`, `jwks`, `discovery`, `introspection`, `revocation`, `resource_metadata`; `outcome`: `ok` (2xx), `http_error`, `timeout`, `error` | HTTP requests to the identity provider's endpoints |
//! | `tower_bearer_idp_request_seconds` | histogram | `endpoint` | how long each took |
//! | `tower_bearer_validations_total` | counter | `outcome`: `ok`, `anonymous`, `rejected`; `reason`: `none`, `missing`, `invalid_request`, `invalid_token`, `insufficient_scope`, `invalid_dpop_proof`, `use_dpop_nonce`, `unavailable` | requests checked by `RequireBearerLayer`, by its verdict and the RFC 6750 reason of a refusal (`unavailable`: `503`) |
//! | `tower_bearer_validation_seconds` | histogram | | how long each check took, from the header to the verdict |
//! | `tower_bearer_scope_checks_total` | counter | `outcome`: `ok`, `insufficient_scope`, `missing` | requests checked by `RequireScopeLayer` |
//! | `tower_bearer_cache_lookups_total` | counter | `cache`: `verified`, `introspection`; `result`: `hit`, `miss` | lookups in the `VerifiedCache` and the `Introspection` cache |
//! | `tower_bearer_cache_evictions_total` | counter | `cache`: `verified`, `introspection` | entries pushed out because the cache was full |
//! | `tower_bearer_jwks_fetches_total` | counter | `outcome`: `ok`, `error` | key set fetches of a `JwksValidator` (discovery included) |
//! | `tower_bearer_introspections_total` | counter | `outcome`: `active`, `inactive`, `error` | calls to the introspection endpoint |
//! | `tower_bearer_fleet_lock_attempts_total` | counter | `outcome`: `acquired`, `busy`, `error` | attempts to take a fleet's refresh lock in Redis |
//! | `tower_bearer_fleet_waits_total` | counter | `outcome`: `token`, `timeout`, `error` | waits of a replica that found another one refreshing, by how they ended: with a token (the other's, or its own once the lock came free), with none in time, or with an error |
//! | `tower_bearer_fleet_wait_seconds` | histogram | | how long each wait lasted |
//! | `tower_bearer_fleet_lost_races_total` | counter | `race`: `write`, `lock`, `claim` | races lost to another replica: its token was written first (ours is dropped), the lock lapsed during our refresh, or it was presenting the refresh token |
//! | `tower_bearer_denylist_lookups_total` | counter | `source`: `local`, `redis`, `error` | revocation checks answered by the local copy, by Redis, or failed |
//! | `tower_bearer_denylist_local_age_seconds` | histogram | | the age of each local answer used: how stale a revocation can be |
//!
//! A `503` answered because the keys or the introspection endpoint are unreachable
//! is `tower_bearer_validations_total{outcome="rejected",reason="unavailable"}`.

// Without the feature every function is an empty inline body.
#![cfg_attr(not(feature = "metrics"), allow(unused_variables))]

use std::time::Duration;

use crate::error::Endpoint;
use crate::server::Rejection;
use crate::Error;

/// `tower_bearer_refreshes_total`: refreshes by outcome.
pub const REFRESHES: &str = "tower_bearer_refreshes_total";
/// `tower_bearer_refresh_seconds`: how long each refresh took.
pub const REFRESH_SECONDS: &str = "tower_bearer_refresh_seconds";
/// `tower_bearer_refresh_waiters_total`: callers that waited for a refresh.
pub const REFRESH_WAITERS: &str = "tower_bearer_refresh_waiters_total";
/// `tower_bearer_refresh_wait_seconds`: how long each of them waited.
pub const REFRESH_WAIT_SECONDS: &str = "tower_bearer_refresh_wait_seconds";
/// `tower_bearer_unauthorized_total`: `401`s seen by the client.
pub const UNAUTHORIZED: &str = "tower_bearer_unauthorized_total";
/// `tower_bearer_unauthorized_throttled_total`: rejections whose refresh was throttled.
pub const UNAUTHORIZED_THROTTLED: &str = "tower_bearer_unauthorized_throttled_total";
/// `tower_bearer_store_failures_total`: failed token store loads and saves.
pub const STORE_FAILURES: &str = "tower_bearer_store_failures_total";
/// `tower_bearer_idp_requests_total`: requests to the identity provider.
pub const IDP_REQUESTS: &str = "tower_bearer_idp_requests_total";
/// `tower_bearer_idp_request_seconds`: how long each took.
pub const IDP_REQUEST_SECONDS: &str = "tower_bearer_idp_request_seconds";
/// `tower_bearer_validations_total`: `RequireBearerLayer` verdicts.
pub const VALIDATIONS: &str = "tower_bearer_validations_total";
/// `tower_bearer_validation_seconds`: how long each check took.
pub const VALIDATION_SECONDS: &str = "tower_bearer_validation_seconds";
/// `tower_bearer_scope_checks_total`: `RequireScopeLayer` verdicts.
pub const SCOPE_CHECKS: &str = "tower_bearer_scope_checks_total";
/// `tower_bearer_cache_lookups_total`: cache hits and misses.
pub const CACHE_LOOKUPS: &str = "tower_bearer_cache_lookups_total";
/// `tower_bearer_cache_evictions_total`: entries pushed out of a full cache.
pub const CACHE_EVICTIONS: &str = "tower_bearer_cache_evictions_total";
/// `tower_bearer_jwks_fetches_total`: key set fetches.
pub const JWKS_FETCHES: &str = "tower_bearer_jwks_fetches_total";
/// `tower_bearer_introspections_total`: introspection calls.
pub const INTROSPECTIONS: &str = "tower_bearer_introspections_total";
/// `tower_bearer_fleet_lock_attempts_total`: attempts to take the refresh lock.
pub const FLEET_LOCK_ATTEMPTS: &str = "tower_bearer_fleet_lock_attempts_total";
/// `tower_bearer_fleet_waits_total`: waits for another replica's token.
pub const FLEET_WAITS: &str = "tower_bearer_fleet_waits_total";
/// `tower_bearer_fleet_wait_seconds`: how long each lasted.
pub const FLEET_WAIT_SECONDS: &str = "tower_bearer_fleet_wait_seconds";
/// `tower_bearer_fleet_lost_races_total`: races lost to another replica.
pub const FLEET_LOST_RACES: &str = "tower_bearer_fleet_lost_races_total";
/// `tower_bearer_denylist_lookups_total`: revocation checks by source.
pub const DENYLIST_LOOKUPS: &str = "tower_bearer_denylist_lookups_total";
/// `tower_bearer_denylist_local_age_seconds`: the age of local answers used.
pub const DENYLIST_LOCAL_AGE_SECONDS: &str = "tower_bearer_denylist_local_age_seconds";

/// Registers a help text and unit for every metric with the installed recorder
/// (the `# HELP` lines of a Prometheus scrape). Optional; call it once, after
/// installing the recorder.
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub fn describe() {
    use ::metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        REFRESHES,
        "Token refreshes of a Refreshing cache, by outcome"
    );
    describe_histogram!(
        REFRESH_SECONDS,
        Unit::Seconds,
        "How long each token refresh took"
    );
    describe_counter!(
        REFRESH_WAITERS,
        "Callers with no usable token that waited for a refresh"
    );
    describe_histogram!(
        REFRESH_WAIT_SECONDS,
        Unit::Seconds,
        "How long callers waited for a refresh"
    );
    describe_counter!(
        UNAUTHORIZED,
        "401 answers to requests that carried a credential"
    );
    describe_counter!(
        UNAUTHORIZED_THROTTLED,
        "Rejections of the current token whose refresh was throttled"
    );
    describe_counter!(STORE_FAILURES, "Token store loads and saves that failed");
    describe_counter!(
        IDP_REQUESTS,
        "HTTP requests to the identity provider, by endpoint and outcome"
    );
    describe_histogram!(
        IDP_REQUEST_SECONDS,
        Unit::Seconds,
        "How long each request to the identity provider took"
    );
    describe_counter!(
        VALIDATIONS,
        "Requests checked by RequireBearerLayer, by outcome and RFC 6750 reason"
    );
    describe_histogram!(
        VALIDATION_SECONDS,
        Unit::Seconds,
        "How long each bearer token check took"
    );
    describe_counter!(
        SCOPE_CHECKS,
        "Requests checked by RequireScopeLayer, by outcome"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Lookups in the verified-token and introspection caches"
    );
    describe_counter!(CACHE_EVICTIONS, "Entries pushed out of a full cache");
    describe_counter!(
        JWKS_FETCHES,
        "Key set fetches (discovery included), by outcome"
    );
    describe_counter!(
        INTROSPECTIONS,
        "Calls to the introspection endpoint, by answer"
    );
    describe_counter!(
        FLEET_LOCK_ATTEMPTS,
        "Attempts to take the fleet's refresh lock"
    );
    describe_counter!(
        FLEET_WAITS,
        "Waits for another replica's token, by how they ended"
    );
    describe_histogram!(
        FLEET_WAIT_SECONDS,
        Unit::Seconds,
        "How long each wait for another replica's token lasted"
    );
    describe_counter!(FLEET_LOST_RACES, "Races lost to another replica");
    describe_counter!(DENYLIST_LOOKUPS, "Revocation checks, by who answered");
    describe_histogram!(
        DENYLIST_LOCAL_AGE_SECONDS,
        Unit::Seconds,
        "Age of the local denylist answers used"
    );
}

macro_rules! count {
    ($name:expr $(, $k:literal => $v:expr)*) => {{
        #[cfg(feature = "metrics")]
        ::metrics::counter!($name $(, $k => $v)*).increment(1);
    }};
}

macro_rules! record {
    ($name:expr, $value:expr $(, $k:literal => $v:expr)*) => {{
        #[cfg(feature = "metrics")]
        ::metrics::histogram!($name $(, $k => $v)*).record($value);
    }};
}

/// A key made at compile time, its hash included: for the figures of every request
/// (the server's verdicts, cache lookups), which then build, allocate and hash
/// nothing per use. `$name` is a constant, each label a literal pair.
#[cfg(feature = "metrics")]
macro_rules! static_key {
    ($name:expr $(, $k:literal => $v:literal)*) => {{
        static LABELS: &[::metrics::Label] = &[$(::metrics::Label::from_static_parts($k, $v)),*];
        static KEY: ::metrics::Key = ::metrics::Key::from_static_parts($name, LABELS);
        &KEY
    }};
}

/// Where the figures of a static key come from (`static_key!`), as the `metrics`
/// macros would say it.
#[cfg(feature = "metrics")]
static METADATA: ::metrics::Metadata<'static> =
    ::metrics::Metadata::new(module_path!(), ::metrics::Level::INFO, Some(module_path!()));

/// Adds one to the counter `key`.
#[cfg(feature = "metrics")]
#[inline]
fn increment(key: &'static ::metrics::Key) {
    ::metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
}

/// Records `value` in the histogram `key`.
#[cfg(feature = "metrics")]
#[inline]
fn observe(key: &'static ::metrics::Key, value: f64) {
    ::metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(value));
}

/// When something measured started; nothing without the feature.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl Started {
    #[inline]
    pub(crate) fn now() -> Self {
        Started {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }

    #[cfg(feature = "metrics")]
    #[inline]
    fn seconds(self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }
}

// ---- client

/// A refresh of a `Refreshing` cache ended.
#[inline]
pub(crate) fn refresh<T>(result: &Result<T, Error>, elapsed: Duration) {
    let outcome = match result {
        Ok(_) => "ok",
        Err(Error::InvalidGrant(_)) => "invalid_grant",
        Err(Error::Superseded(_)) => "superseded",
        Err(e) if e.is_retryable() || matches!(e, Error::Store(_) | Error::Aborted(_)) => {
            "transient"
        }
        Err(_) => "error",
    };
    count!(REFRESHES, "outcome" => outcome);
    record!(REFRESH_SECONDS, elapsed.as_secs_f64());
}

/// A caller with no usable token starts waiting for a refresh.
#[inline]
pub(crate) fn refresh_waiter() {
    count!(REFRESH_WAITERS);
}

/// A caller's wait for a refresh ended.
#[inline]
pub(crate) fn refresh_waited(started: Started) {
    record!(REFRESH_WAIT_SECONDS, started.seconds());
}

/// A `401` (or gRPC `UNAUTHENTICATED`) answered a request with a credential.
#[inline]
pub(crate) fn unauthorized() {
    count!(UNAUTHORIZED);
}

/// A rejected token kept being served: 401-triggered refreshes are throttled.
#[inline]
pub(crate) fn unauthorized_throttled() {
    count!(UNAUTHORIZED_THROTTLED);
}

/// A token store operation that failed.
#[derive(Clone, Copy, Debug)]
pub(crate) enum StoreOp {
    Load,
    Save,
}

#[inline]
pub(crate) fn store_failure(op: StoreOp) {
    let op = match op {
        StoreOp::Load => "load",
        StoreOp::Save => "save",
    };
    count!(STORE_FAILURES, "op" => op);
}

/// A request to an identity provider's endpoint ended.
#[inline]
pub(crate) fn idp_request<T>(
    endpoint: Endpoint,
    result: &Result<http::Response<T>, Error>,
    started: Started,
) {
    let endpoint = match endpoint {
        Endpoint::Token => "token",
        Endpoint::DeviceAuthorization => "device_authorization",
        Endpoint::Jwks => "jwks",
        Endpoint::Discovery => "discovery",
        Endpoint::Introspection => "introspection",
        Endpoint::Revocation => "revocation",
        Endpoint::ResourceMetadata => "resource_metadata",
        Endpoint::Authorization => "authorization",
        Endpoint::Registration => "registration",
        Endpoint::PushedAuthorization => "pushed_authorization",
        Endpoint::UserInfo => "userinfo",
    };
    let outcome = match result {
        Ok(res) if res.status().is_success() => "ok",
        Ok(_) => "http_error",
        Err(Error::Timeout(..)) => "timeout",
        Err(_) => "error",
    };
    count!(IDP_REQUESTS, "endpoint" => endpoint, "outcome" => outcome);
    record!(IDP_REQUEST_SECONDS, started.seconds(), "endpoint" => endpoint);
}

// ---- server

/// `RequireBearerLayer`'s verdict on a request: accepted (`Ok`), let through with
/// no credentials (`anonymous`), or refused.
#[inline]
pub(crate) fn validation(verdict: Result<(), &Rejection>, anonymous: bool, started: Started) {
    #[cfg(feature = "metrics")]
    {
        macro_rules! rejected {
            ($reason:literal) => {
                static_key!(VALIDATIONS, "outcome" => "rejected", "reason" => $reason)
            };
        }
        increment(match verdict {
            Ok(()) => static_key!(VALIDATIONS, "outcome" => "ok", "reason" => "none"),
            Err(_) if anonymous => {
                static_key!(VALIDATIONS, "outcome" => "anonymous", "reason" => "missing")
            }
            Err(Rejection::Missing) => rejected!("missing"),
            Err(Rejection::InvalidRequest(_)) => rejected!("invalid_request"),
            Err(Rejection::InvalidToken(_)) => rejected!("invalid_token"),
            Err(Rejection::InsufficientScope(_)) => rejected!("insufficient_scope"),
            // Answered by `RequireStepUpLayer`, not by the bearer layer counted here.
            Err(Rejection::InsufficientUserAuthentication { .. }) => {
                rejected!("insufficient_user_authentication")
            }
            Err(Rejection::Unavailable(_)) => rejected!("unavailable"),
            Err(Rejection::InvalidDpopProof(_)) => rejected!("invalid_dpop_proof"),
            Err(Rejection::UseDpopNonce(_)) => rejected!("use_dpop_nonce"),
        });
        observe(static_key!(VALIDATION_SECONDS), started.seconds());
    }
}

/// `RequireScopeLayer`'s verdict on a request.
#[inline]
pub(crate) fn scope_check(verdict: Option<&Rejection>) {
    #[cfg(feature = "metrics")]
    increment(match verdict {
        None => static_key!(SCOPE_CHECKS, "outcome" => "ok"),
        Some(Rejection::Missing) => static_key!(SCOPE_CHECKS, "outcome" => "missing"),
        Some(_) => static_key!(SCOPE_CHECKS, "outcome" => "insufficient_scope"),
    });
}

/// Which cache a lookup or eviction is about.
#[derive(Clone, Copy, Debug)]
pub(crate) enum CacheName {
    Verified,
    #[cfg_attr(not(feature = "introspection"), allow(dead_code))]
    Introspection,
}

impl CacheName {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    fn label(self) -> &'static str {
        match self {
            CacheName::Verified => "verified",
            CacheName::Introspection => "introspection",
        }
    }
}

/// A cache lookup: a hit or a miss.
#[inline]
pub(crate) fn cache_lookup(cache: CacheName, hit: bool) {
    #[cfg(feature = "metrics")]
    increment(match (cache, hit) {
        (CacheName::Verified, true) => {
            static_key!(CACHE_LOOKUPS, "cache" => "verified", "result" => "hit")
        }
        (CacheName::Verified, false) => {
            static_key!(CACHE_LOOKUPS, "cache" => "verified", "result" => "miss")
        }
        (CacheName::Introspection, true) => {
            static_key!(CACHE_LOOKUPS, "cache" => "introspection", "result" => "hit")
        }
        (CacheName::Introspection, false) => {
            static_key!(CACHE_LOOKUPS, "cache" => "introspection", "result" => "miss")
        }
    });
}

/// Counts the entries a full cache pushes out; the `quick_cache` lifecycle of the
/// crate's caches.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) struct Evictions(pub(crate) CacheName);

impl<K, V> quick_cache::Lifecycle<K, V> for Evictions {
    type RequestState = ();

    #[inline]
    fn on_evict(&self, _: &mut (), _: K, _: V) {
        count!(CACHE_EVICTIONS, "cache" => self.0.label());
    }
}

/// A `quick_cache` cache whose evictions are counted as `cache`'s.
pub(crate) type CountedCache<K, V> = quick_cache::sync::Cache<
    K,
    V,
    quick_cache::UnitWeighter,
    quick_cache::DefaultHashBuilder,
    Evictions,
>;

/// A cache of `capacity` entries whose evictions are counted as `cache`'s.
pub(crate) fn counted_cache<K, V>(capacity: usize, cache: CacheName) -> CountedCache<K, V>
where
    K: Eq + std::hash::Hash,
    V: Clone,
{
    quick_cache::sync::Cache::with(
        capacity,
        capacity as u64,
        quick_cache::UnitWeighter,
        quick_cache::DefaultHashBuilder::default(),
        Evictions(cache),
    )
}

/// A key set fetch of a `JwksValidator` ended.
#[cfg_attr(not(feature = "jwks"), allow(dead_code))]
#[inline]
pub(crate) fn jwks_fetch(ok: bool) {
    count!(JWKS_FETCHES, "outcome" => if ok { "ok" } else { "error" });
}

/// What an introspection call answered.
#[cfg_attr(not(feature = "introspection"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Introspected {
    Active,
    Inactive,
    Failed,
}

#[cfg_attr(not(feature = "introspection"), allow(dead_code))]
#[inline]
pub(crate) fn introspection(answer: Introspected) {
    let outcome = match answer {
        Introspected::Active => "active",
        Introspected::Inactive => "inactive",
        Introspected::Failed => "error",
    };
    count!(INTROSPECTIONS, "outcome" => outcome);
}

// ---- fleet

/// An attempt to take the fleet's refresh lock: `Some(true)` taken, `Some(false)`
/// held by another replica, `None` Redis failed.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn fleet_lock(taken: Option<bool>) {
    let outcome = match taken {
        Some(true) => "acquired",
        Some(false) => "busy",
        None => "error",
    };
    count!(FLEET_LOCK_ATTEMPTS, "outcome" => outcome);
}

/// How a replica's wait for another one's refresh ended.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug)]
pub(crate) enum WaitEnd {
    /// With a token: the other replica's, or its own once the lock came free.
    Token,
    /// With no token in time.
    Timeout,
    /// With an error.
    Error,
}

#[cfg(feature = "redis")]
#[inline]
pub(crate) fn fleet_wait(end: WaitEnd, started: Started) {
    let outcome = match end {
        WaitEnd::Token => "token",
        WaitEnd::Timeout => "timeout",
        WaitEnd::Error => "error",
    };
    count!(FLEET_WAITS, "outcome" => outcome);
    record!(FLEET_WAIT_SECONDS, started.seconds());
}

/// A race lost to another replica.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Race {
    /// Its token was written first; ours is dropped.
    Write,
    /// Our lock lapsed while we refreshed.
    Lock,
    /// It is presenting the refresh token; we wait for its answer.
    Claim,
}

#[cfg(feature = "redis")]
#[inline]
pub(crate) fn fleet_lost_race(race: Race) {
    let race = match race {
        Race::Write => "write",
        Race::Lock => "lock",
        Race::Claim => "claim",
    };
    count!(FLEET_LOST_RACES, "race" => race);
}

/// A revocation check answered by the local copy, `age` old.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn denylist_local(age: Duration) {
    count!(DENYLIST_LOOKUPS, "source" => "local");
    record!(DENYLIST_LOCAL_AGE_SECONDS, age.as_secs_f64());
}

/// A revocation check asked Redis: answered (`true`) or failed.
#[cfg(feature = "redis")]
#[inline]
pub(crate) fn denylist_remote(answered: bool) {
    count!(DENYLIST_LOOKUPS, "source" => if answered { "redis" } else { "error" });
}
