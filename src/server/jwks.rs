//! [`JwksValidator`]: JWTs checked against the identity provider's published keys
//! (a JWKS URL, or OIDC discovery), picked by `kid`, with key rotation.

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::time::Instant;

use super::jwt::JwtValidator;
use super::validator::{Claims, ValidationFuture, Validator};
use super::{Rejection, Unavailable};
use crate::flight::{Joined, SingleFlight};
use crate::transport::{check_url, parse_url};
use crate::{Endpoint, Error, HttpClient};

/// The default cool-down: scheduled refreshes and retries after a failure are at
/// least this far apart (first-sight look-ups have their own, shorter interval).
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
/// The default least time between two look-ups for unknown `kid`s (first sight),
/// whatever their number or cause.
pub const DEFAULT_FIRST_SIGHT_INTERVAL: Duration = Duration::from_secs(2);
/// The default longest time a request with an unknown `kid` waits for its look-up
/// before it is answered `503` with `Retry-After`.
pub const DEFAULT_FIRST_SIGHT_WAIT: Duration = Duration::from_secs(5);
/// The default key lifetime when the JWKS answer has no `Cache-Control: max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(15 * 60);
/// The default bounds on an honoured `max-age`.
pub const DEFAULT_REFRESH_BOUNDS: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(24 * 60 * 60));
/// Tokens longer than this are refused before their header is decoded.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

type Rules<C> = Arc<dyn Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync>;

/// Validates JWTs against the keys an identity provider publishes.
///
/// - Keys come from a JWKS URL ([`JwksValidator::builder`]) or through OIDC discovery
///   ([`JwksValidator::discover`]: `{issuer}/.well-known/openid-configuration` →
///   `jwks_uri`; the document's `issuer` must match, and tokens must carry it).
/// - A token's key is picked by its `kid`; each key verifies only the algorithms
///   of its type (or the one its JWK names). The `jku`, `x5u` and `jwk` token
///   headers are never followed.
/// - The keys are fetched on first use and then **ahead of time**: a background task
///   fetches them again at a random point between 80 % and 90 % of the answer's
///   `Cache-Control: max-age` (bounded, default 1 min to 24 h; 15 min without one),
///   so new keys are in place before the old ones go stale and no request ever waits
///   for a scheduled fetch. A failed fetch keeps the last good keys and is retried
///   after the cool-down, doubled per failure in a row up to 5 minutes (plus jitter).
/// - **First sight**: a request whose `kid` is not in the keys (or that comes before
///   any keys) is decided only by a fetch that *started after it arrived*: the key
///   may have been published a moment ago. Such look-ups are throttled by time,
///   never by a budget that anything can spend: at most one per
///   [`first_sight_interval`](JwksValidatorBuilder::first_sight_interval) (default
///   2 s) counted from the last fetch of any cause, one fetch shared by every
///   request that waits for it. The cases:
///   - a request with a new kid that arrives while the look-up is allowed starts it
///     and waits for it (with every request that comes meanwhile), at most
///     `first_sight_wait` from its arrival: a slow or hanging endpoint costs a
///     request that long, not the HTTP client's timeout; the look-up goes on in
///     the background and its keys serve the next request;
///   - one that arrives during the interval (after a look-up caused by junk, by an
///     earlier rotation or by anything else) **waits** for the next allowed look-up,
///     at most [`first_sight_wait`](JwksValidatorBuilder::first_sight_wait)
///     (default 5 s): a key the provider published is taken within the interval
///     whatever came before it, and its requests succeed instead of failing;
///   - a running fetch is joined first: if it brings the key, the request is
///     accepted without waiting for one of its own;
///   - junk cannot make the provider be asked more than once per interval, nor make
///     a request under a new key wait longer than the interval (plus the fetch);
///   - waiting requests are bounded by time, not by a count (a count would be
///     spent by junk, and a new key's requests refused for it): each waits at most
///     until the next look-up, which answers them all; bound the requests a
///     server holds with its own concurrency limit.
/// - A kid that a fetch started after the kid was seen did not bring is answered
///   `401 invalid_token`; the kid is then remembered absent, and answered `401` at
///   once, for one interval, so a repeated junk kid costs no waiting. A kid that a
///   newer key set dropped (a retired key) is likewise answered `401` at once for
///   one interval from the fetch that dropped it, then looked up again like any
///   unknown kid: a provider that answered once with an older set (a lagging
///   replica or cache) cannot get a key in use refused for longer.
/// - A token that cannot be decided in time (the next allowed look-up is beyond the
///   request's wait, the look-up did not end within it, or it failed) is answered
///   `503` (gRPC `UNAVAILABLE`) with no challenge and a `Retry-After` of the
///   seconds until the next allowed look-up (at least 1): the token may be good, signed by a key
///   newer than our keys, and a client must not throw it away. After a failed fetch
///   the look-ups back off by time: the interval, doubled per failure in a row, up
///   to the cool-down (default 30 s).
/// - When the endpoint fails, the last good keys stay in use; with no keys at all
///   requests are answered `503` with `Retry-After` (the token may well be good).
/// - Keys of an unsupported type, HMAC secrets and encryption keys in the set are
///   skipped with a warning; a token naming one is refused without a fetch.
///
/// ```no_run
/// use tower_bearer::server::{Claims, JwksValidator, RequireBearerLayer};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let validator = JwksValidator::<Claims>::discover("https://idp.example.com/realms/main")?
///     .rules(|v| v.audience("my-api").require_scopes(["items:read"]))
///     .build()?;
/// let layer = RequireBearerLayer::new(validator);
/// # Ok(()) }
/// ```
pub struct JwksValidator<C = Claims> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for JwksValidator<C> {
    fn clone(&self) -> Self {
        JwksValidator {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for JwksValidator<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.shared.keys.load();
        f.debug_struct("JwksValidator")
            .field("source", &self.shared.source)
            .field(
                "kids",
                &keys
                    .as_ref()
                    .map(|k| k.by_kid.keys().cloned().collect::<Vec<_>>()),
            )
            .field("cooldown", &self.shared.cooldown)
            .field("first_sight_interval", &self.shared.first_sight_interval)
            .field("first_sight_wait", &self.shared.first_sight_wait)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum Source {
    Jwks(Uri),
    Discovery { issuer: String, document: Uri },
}

struct Shared<C> {
    source: Source,
    /// The `iss` every token must carry: the discovered issuer, or the one given to
    /// [`JwksValidatorBuilder::issuer`].
    issuer: Option<String>,
    http: HttpClient,
    allow_insecure_http: bool,
    rules: Rules<C>,
    cooldown: Duration,
    first_sight_interval: Duration,
    first_sight_wait: Duration,
    default_refresh: Duration,
    refresh_bounds: (Duration, Duration),
    keys: ArcSwapOption<KeySet<C>>,
    /// Held while a fetched set is compared with the current one and stored (newer
    /// only: an abandoned fetch that ends late never replaces a newer set).
    publish: Mutex<()>,
    /// The `jwks_uri` found by discovery.
    jwks_uri: Mutex<Option<Uri>>,
    schedule: Mutex<Schedule>,
    unknown: Mutex<UnknownKids>,
    /// A flight yields the number of its fetch (see [`Schedule::started`]).
    flight: SingleFlight<u64, Error>,
    /// Whether a task runs [`Shared::keep_fresh`].
    ticking: AtomicBool,
}

/// Why a fetch is wanted: each cause has its own throttle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cause {
    /// [`JwksValidator::load`]: not throttled.
    Forced,
    /// The keys are due: one per cool-down from the last fetch of any cause, and
    /// not before the retry time after a failure.
    Schedule,
    /// First sight (a `kid` not in the keys, or no keys yet): one per
    /// first-sight interval from the last fetch of any cause, and not before the
    /// first-sight retry time after a failure.
    Miss,
}

/// What the cool-downs count from.
#[derive(Default)]
struct Schedule {
    /// When the last fetch of any cause started.
    last_attempt: Option<Instant>,
    /// How many fetches have started: a request that saw `n` knows that fetch `n + 1`
    /// and later started after it arrived, and so after any key its token needs was
    /// published.
    started: u64,
    /// Fetches failed in a row (of any cause): the retry backoff grows with them.
    failures: u32,
    /// After a failure, no scheduled fetch before this (backoff by time).
    retry_at: Option<Instant>,
    /// After a failure, no first-sight look-up before this (a shorter backoff).
    sight_retry_at: Option<Instant>,
}

impl Schedule {
    /// When the next first-sight look-up is allowed.
    fn next_sight(&self, interval: Duration) -> Option<Instant> {
        let spaced = self.last_attempt.map(|t| t + interval);
        spaced.max(self.sight_retry_at)
    }
}

/// The wait before the next first-sight look-up after `failures` failures in a
/// row: the interval, doubled per further failure, up to the cool-down (and never
/// below the interval).
fn sight_backoff(interval: Duration, cooldown: Duration, failures: u32) -> Duration {
    let doubled = interval.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(cooldown.max(interval))
}

/// Scheduled retries after failures wait at most this long (plus jitter).
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// When keys that live `lifetime` are fetched again: at a random point between 80 %
/// and 90 % of it, so the new keys are in place before the old ones go stale and
/// replicas do not fetch in step.
fn ahead_of(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.8 + 0.1 * fastrand::f64())
}

/// The wait before retrying after `failures` failures in a row: the cool-down,
/// doubled per further failure up to [`MAX_RETRY_BACKOFF`] (never below the
/// cool-down), plus up to 10 % jitter.
fn retry_backoff(cooldown: Duration, failures: u32) -> Duration {
    let doubled = cooldown.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let base = doubled.min(MAX_RETRY_BACKOFF.max(cooldown));
    base + base.mul_f64(0.1 * fastrand::f64())
}

/// Kids known to be absent, answered `invalid_token` without a fetch.
#[derive(Default)]
struct UnknownKids {
    /// Kids (or `None`: no kid) that a fetch started after their request arrived did
    /// not bring, with when that fetch started: remembered for one first-sight
    /// interval (longer would refuse a key published just after that fetch).
    missing: HashMap<Option<String>, Instant>,
    /// Kids a newer key set dropped, oldest first, with when the fetch that dropped
    /// them started: absent for one first-sight interval from then (as long as a
    /// missing kid: the provider may have answered with an older set), or until a
    /// key set brings them back, or more keys retire.
    retired: VecDeque<(String, Instant)>,
}

/// At most this many missing kids are remembered (the kids of 8 KiB tokens: a few
/// MB at worst); beyond it they are answered as not looked up.
const MAX_MISSING: usize = 256;
/// At most this many retired kids are remembered.
const MAX_RETIRED: usize = 64;

pub(crate) struct KeySet<C> {
    by_kid: HashMap<String, JwtValidator<C>>,
    /// Keys without a `kid`: used for tokens without one, when there is exactly one.
    unnamed: Vec<JwtValidator<C>>,
    /// The kids of the keys skipped (unusable or not for signing): tokens naming
    /// them are refused without a fetch.
    skipped: HashSet<String>,
    /// When to fetch again: 80–90 % into the answer's lifetime (see [`ahead_of`]).
    refresh_at: Instant,
    /// The number of the fetch that brought it (see [`Schedule::started`]).
    number: u64,
    /// When that fetch started: what it says holds from then on.
    fetched_at: Instant,
}

impl<C> KeySet<C> {
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&JwtValidator<C>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.unnamed.len() == 1 => self.unnamed.first(),
            None if self.unnamed.is_empty() && self.by_kid.len() == 1 => {
                self.by_kid.values().next()
            }
            None => None,
        }
    }
}

/// Configures a [`JwksValidator`].
pub struct JwksValidatorBuilder<C> {
    source: Source,
    issuer: Option<String>,
    http: Option<HttpClient>,
    allow_insecure_http: bool,
    rules: Rules<C>,
    cooldown: Duration,
    first_sight_interval: Duration,
    first_sight_wait: Duration,
    default_refresh: Duration,
    refresh_bounds: (Duration, Duration),
}

impl<C> fmt::Debug for JwksValidatorBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksValidatorBuilder")
            .field("source", &self.source)
            .field("cooldown", &self.cooldown)
            .field("first_sight_interval", &self.first_sight_interval)
            .field("first_sight_wait", &self.first_sight_wait)
            .finish_non_exhaustive()
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> JwksValidator<C> {
    /// Keys from the JWKS at `jwks_url`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse.
    pub fn builder(jwks_url: &str) -> Result<JwksValidatorBuilder<C>, Error> {
        Ok(JwksValidatorBuilder::new(Source::Jwks(parse_url(
            jwks_url,
        )?)))
    }

    /// Keys found through OIDC discovery for `issuer`; tokens must name it in `iss`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for an issuer that is not a URL.
    pub fn discover(issuer: &str) -> Result<JwksValidatorBuilder<C>, Error> {
        let document = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        Ok(JwksValidatorBuilder::new(Source::Discovery {
            issuer: issuer.to_owned(),
            document: parse_url(&document)?,
        }))
    }

    /// Fetches the keys now, whatever the cool-down (for example at start-up, to
    /// fail early), and waits for the outcome (bounded by the HTTP client's
    /// timeout). Concurrent calls and requests share one fetch; a shared fetch that
    /// nobody drives (started on a runtime that now idles) is noticed by its missing
    /// heartbeat and replaced by one on the caller's runtime. The next first-sight
    /// look-up comes at most one interval after it.
    ///
    /// # Errors
    /// Why the keys could not be fetched; the last good keys stay in use.
    pub async fn load(&self) -> Result<(), Error> {
        loop {
            let Some(flight) = Shared::fetch_once(&self.shared, Cause::Forced) else {
                return Ok(());
            };
            if let Some(outcome) = flight.wait().await {
                return outcome.map(drop);
            }
            // The fetch joined was driven by nobody (started on a runtime that
            // idles, its timeout can never fire): it was abandoned, make our own.
        }
    }

    /// The issuer every token must name in `iss`: the one found by
    /// [`discover`](JwksValidator::discover) or given to
    /// [`JwksValidatorBuilder::issuer`]; `None` when `iss` is left to the rules.
    pub fn issuer(&self) -> Option<&str> {
        self.shared.issuer.as_deref()
    }

    /// The `kid`s of the keys in use.
    pub fn key_ids(&self) -> Vec<String> {
        self.shared
            .keys
            .load()
            .as_ref()
            .map(|k| k.by_kid.keys().cloned().collect())
            .unwrap_or_default()
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> JwksValidatorBuilder<C> {
    fn new(source: Source) -> Self {
        let issuer = match &source {
            Source::Discovery { issuer, .. } => Some(issuer.clone()),
            Source::Jwks(_) => None,
        };
        JwksValidatorBuilder {
            source,
            issuer,
            http: None,
            allow_insecure_http: false,
            rules: Arc::new(|v| v),
            cooldown: DEFAULT_COOLDOWN,
            first_sight_interval: DEFAULT_FIRST_SIGHT_INTERVAL,
            first_sight_wait: DEFAULT_FIRST_SIGHT_WAIT,
            default_refresh: DEFAULT_REFRESH,
            refresh_bounds: DEFAULT_REFRESH_BOUNDS,
        }
    }

    /// The claim rules every key applies: issuer, audience, algorithms, leeway,
    /// required claims and scopes, as on [`JwtValidator`]. An issuer set by
    /// discovery or [`issuer`](Self::issuer) is applied after them and wins.
    pub fn rules(
        mut self,
        rules: impl Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync + 'static,
    ) -> Self {
        self.rules = Arc::new(rules);
        self
    }

    /// Requires every token's `iss` to be `issuer`, whatever the
    /// [`rules`](Self::rules) say (discovery sets it to the discovered issuer, and
    /// [`build`](Self::build) refuses another one there).
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The HTTP client for discovery and JWKS requests (default: [`HttpClient::new`]).
    pub fn http_client(mut self, http: HttpClient) -> Self {
        self.http = Some(http);
        self
    }

    /// Allows plain `http://` to hosts other than loopback (keys fetched over plain
    /// HTTP can be replaced by anyone on the path; for tests behind a trusted
    /// network only).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// The least time between two scheduled fetches, and the first wait before a
    /// retry after a failure (default 30 s; doubled per failure in a row, up to
    /// 5 minutes). It also caps the first-sight backoff after failures.
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The least time between two first-sight look-ups (fetches for a `kid` not in
    /// the keys), counted from the last fetch of any cause (default 2 s): the
    /// provider is asked at most once per interval for unknown kids, whatever their
    /// number, and a key it publishes is taken within the interval.
    pub fn first_sight_interval(mut self, interval: Duration) -> Self {
        self.first_sight_interval = interval;
        self
    }

    /// The longest time a request with an unknown `kid` (or one that comes before
    /// any keys) waits for keys, counted from its arrival (default 5 s): for the
    /// next allowed look-up to start and for it to end, or for a running one,
    /// whoever started it. Past it the request is answered `503` with `Retry-After`
    /// (the seconds until the next allowed look-up, at least 1); the look-up goes
    /// on in the background (up to the HTTP client's timeout) and its keys serve
    /// the next requests. `Duration::ZERO`: never wait (a look-up allowed now is
    /// still started, and the request answered `503` at once).
    pub fn first_sight_wait(mut self, wait: Duration) -> Self {
        self.first_sight_wait = wait;
        self
    }

    /// How long keys are used when the JWKS answer has no `max-age` (default 15 min).
    pub fn default_refresh(mut self, every: Duration) -> Self {
        self.default_refresh = every;
        self
    }

    /// The bounds on an honoured `Cache-Control: max-age` (default 1 min to 24 h).
    pub fn refresh_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.refresh_bounds = (min, max.max(min));
        self
    }

    /// The same key source and fetch settings for another claims type, whose keys
    /// check signatures and dates only (no claim rule, `exp` not required): for
    /// documents whose claims are checked by their reader (an RFC 9701
    /// introspection answer). The issuer set by discovery or
    /// [`issuer`](Self::issuer) is kept, and still checked.
    #[cfg(feature = "introspection")]
    pub(crate) fn signature_only<D: DeserializeOwned + Clone + Send + Sync + 'static>(
        self,
    ) -> JwksValidatorBuilder<D> {
        JwksValidatorBuilder {
            source: self.source,
            issuer: self.issuer,
            http: self.http,
            allow_insecure_http: self.allow_insecure_http,
            rules: Arc::new(|v: JwtValidator<D>| v.signature_only()),
            cooldown: self.cooldown,
            first_sight_interval: self.first_sight_interval,
            first_sight_wait: self.first_sight_wait,
            default_refresh: self.default_refresh,
            refresh_bounds: self.refresh_bounds,
        }
    }

    /// The issuer tokens must name, when discovery or [`issuer`](Self::issuer) set one.
    #[cfg(feature = "introspection")]
    pub(crate) fn issuer_set(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// The validator. Keys are fetched on first use (or with [`JwksValidator::load`]).
    ///
    /// # Errors
    /// [`Error::Configuration`] when a URL is plain `http://` to a host other than
    /// loopback and [`allow_insecure_http`](Self::allow_insecure_http) was not set.
    pub fn build(self) -> Result<JwksValidator<C>, Error> {
        let url = match &self.source {
            Source::Jwks(url) | Source::Discovery { document: url, .. } => url,
        };
        check_url(url, self.allow_insecure_http)?;
        if let Source::Discovery { issuer, .. } = &self.source {
            if self.issuer.as_ref() != Some(issuer) {
                return Err(Error::Configuration(format!(
                    "the issuer {:?} is not the discovered issuer {issuer:?}",
                    self.issuer
                )));
            }
        }
        Ok(JwksValidator {
            shared: Arc::new(Shared {
                source: self.source,
                issuer: self.issuer,
                http: self.http.unwrap_or_default(),
                allow_insecure_http: self.allow_insecure_http,
                rules: self.rules,
                cooldown: self.cooldown,
                first_sight_interval: self.first_sight_interval,
                first_sight_wait: self.first_sight_wait,
                default_refresh: self.default_refresh,
                refresh_bounds: self.refresh_bounds,
                keys: ArcSwapOption::empty(),
                publish: Mutex::new(()),
                jwks_uri: Mutex::new(None),
                schedule: Mutex::new(Schedule::default()),
                unknown: Mutex::new(UnknownKids::default()),
                flight: SingleFlight::default(),
                ticking: AtomicBool::new(false),
            }),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each lock guards one assignment: a panic cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Shared<C> {
    /// Joins the running fetch, or starts one unless `cause`'s cool-down forbids it.
    /// `None`: no fetch to wait for. A flight yields the number of its fetch.
    fn fetch_once(this: &Arc<Self>, cause: Cause) -> Option<crate::flight::Flight<u64, Error>> {
        let number = Cell::new(0);
        let started_at = Cell::new(Instant::now());
        let recheck = || {
            let mut schedule = lock(&this.schedule);
            let now = Instant::now();
            let cooling = |t: Option<Instant>| {
                t.is_some_and(|t| now.saturating_duration_since(t) < this.cooldown)
            };
            match cause {
                Cause::Forced => {}
                Cause::Schedule
                    if cooling(schedule.last_attempt)
                        || schedule.retry_at.is_some_and(|at| now < at) =>
                {
                    return Some(Ok(0))
                }
                Cause::Schedule => {}
                Cause::Miss
                    if schedule
                        .next_sight(this.first_sight_interval)
                        .is_some_and(|at| now < at) =>
                {
                    return Some(Ok(0))
                }
                Cause::Miss => {}
            }
            schedule.last_attempt = Some(now);
            schedule.started += 1;
            number.set(schedule.started);
            started_at.set(now);
            None
        };
        let shared = Arc::clone(this);
        let job = || {
            let (number, started_at) = (number.get(), started_at.get());
            async move {
                Shared::fetch(&shared, number, started_at)
                    .await
                    .map(|()| number)
            }
        };
        match this.flight.join_or_start(recheck, job) {
            Joined::Ready(_) => None,
            Joined::Flight(flight) => Some(flight),
        }
    }

    /// Fetch number `number`, started at `started_at`: stores the keys it brings
    /// (unless a newer fetch's are in place) or records its failure.
    async fn fetch(this: &Arc<Self>, number: u64, started_at: Instant) -> Result<(), Error> {
        match this.fetch_keys().await {
            Ok(mut set) => {
                crate::metrics::jwks_fetch(true);
                tracing::debug!(keys = set.by_kid.len() + set.unnamed.len(), "JWKS fetched");
                set.number = number;
                set.fetched_at = started_at;
                {
                    let _publishing = lock(&this.publish);
                    let old = this.keys.load_full();
                    if old.as_ref().is_some_and(|old| old.number > number) {
                        tracing::debug!("a newer key set is in place; dropping an older fetch");
                    } else {
                        // Retired kids are noted before the new set is seen: a request
                        // finds its kid in the old set, or learns that it retired.
                        if let Some(old) = &old {
                            this.retire(old, &set);
                        }
                        this.keys.store(Some(Arc::new(set)));
                    }
                }
                {
                    let mut schedule = lock(&this.schedule);
                    schedule.failures = 0;
                    schedule.retry_at = None;
                    schedule.sight_retry_at = None;
                }
                Shared::keep_fresh(this);
                Ok(())
            }
            Err(e) => {
                crate::metrics::jwks_fetch(false);
                let mut schedule = lock(&this.schedule);
                schedule.failures = schedule.failures.saturating_add(1);
                let wait = retry_backoff(this.cooldown, schedule.failures);
                let now = Instant::now();
                schedule.retry_at = Some(now + wait);
                schedule.sight_retry_at = Some(
                    now + sight_backoff(
                        this.first_sight_interval,
                        this.cooldown,
                        schedule.failures,
                    ),
                );
                tracing::warn!(
                    error = %e,
                    retry_in_s = wait.as_secs(),
                    "JWKS fetch failed; keeping the last good keys"
                );
                Err(e)
            }
        }
    }

    /// Starts, unless one runs, the task that fetches the keys when they are due
    /// ([`KeySet::refresh_at`]) or a retry is (after a failure), whether requests
    /// come or not: requests never wait for a scheduled fetch, and keys are renewed
    /// before their lifetime ends. It holds the validator weakly: it ends at its next
    /// wake-up once the validator is dropped, or with its runtime.
    fn keep_fresh(this: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if this.ticking.swap(true, Ordering::AcqRel) {
            return;
        }
        /// Lets another task start when this one ends, however it ends.
        struct Ticking<C>(Weak<Shared<C>>);
        impl<C> Drop for Ticking<C> {
            fn drop(&mut self) {
                if let Some(shared) = self.0.upgrade() {
                    shared.ticking.store(false, Ordering::Release);
                }
            }
        }
        let ticking = Ticking(Arc::downgrade(this));
        runtime.spawn(async move {
            while let Some(due) = ticking.0.upgrade().and_then(|s| s.next_scheduled()) {
                tokio::time::sleep_until(due).await;
                let Some(shared) = ticking.0.upgrade() else {
                    break;
                };
                let flight = Shared::fetch_once(&shared, Cause::Schedule);
                drop(shared);
                if let Some(flight) = flight {
                    // The outcome is recorded by the fetch; the next due time follows
                    // (also when the fetch was driven by nobody and abandoned).
                    let _ = flight.wait().await;
                }
            }
            drop(ticking);
        });
    }

    /// When a scheduled fetch is next allowed and wanted; `None` with no keys.
    fn next_scheduled(&self) -> Option<Instant> {
        let refresh_at = self.keys.load().as_ref()?.refresh_at;
        let schedule = lock(&self.schedule);
        let cooled = schedule.last_attempt.map(|t| t + self.cooldown);
        Some(
            [Some(refresh_at), cooled, schedule.retry_at]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(refresh_at),
        )
    }

    /// Notes the kids of `old` that `new` drops, and forgets those it brings.
    fn retire(&self, old: &KeySet<C>, new: &KeySet<C>) {
        let mut unknown = lock(&self.unknown);
        unknown
            .retired
            .retain(|(kid, _)| !new.by_kid.contains_key(kid));
        unknown
            .missing
            .retain(|kid, _| kid.as_ref().is_none_or(|kid| !new.by_kid.contains_key(kid)));
        for kid in old.by_kid.keys() {
            if !new.by_kid.contains_key(kid) {
                unknown.retired.retain(|(retired, _)| retired != kid);
                if unknown.retired.len() == MAX_RETIRED {
                    unknown.retired.pop_front();
                }
                unknown.retired.push_back((kid.clone(), new.fetched_at));
            }
        }
    }

    /// Whether `kid`, not in the current keys, is known to be absent: a skipped key
    /// of the current set, or retired or found missing by a fetch that started less
    /// than one first-sight interval ago.
    fn known_absent(&self, kid: &Option<String>) -> bool {
        if let (Some(keys), Some(kid)) = (&*self.keys.load(), kid) {
            if keys.skipped.contains(kid) {
                return true;
            }
        }
        let unknown = lock(&self.unknown);
        let now = Instant::now();
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < self.first_sight_interval;
        if let Some(kid) = kid {
            if unknown
                .retired
                .iter()
                .any(|(retired, at)| retired == kid && fresh(at))
            {
                return true;
            }
        }
        unknown.missing.get(kid).is_some_and(fresh)
    }

    /// Remembers that the fetch started at `proved_at`, made after `kid` was asked
    /// for, did not bring it.
    fn remember_missing(&self, kid: Option<String>, proved_at: Instant) {
        let mut unknown = lock(&self.unknown);
        let now = Instant::now();
        let fresh = |at: &Instant| now.saturating_duration_since(*at) < self.first_sight_interval;
        if unknown.missing.len() >= MAX_MISSING {
            unknown.missing.retain(|_, at| fresh(at));
        }
        if unknown.missing.len() < MAX_MISSING || unknown.missing.contains_key(&kid) {
            let at = unknown.missing.entry(kid).or_insert(proved_at);
            *at = (*at).max(proved_at);
        }
    }

    /// The number of the last fetch started.
    fn started(&self) -> u64 {
        lock(&self.schedule).started
    }

    /// The check of `token` by the key `kid` names, if the current keys hold it.
    fn check_with_current(&self, kid: Option<&str>, token: &str) -> Option<Result<C, Rejection>> {
        let keys = self.keys.load();
        let validator = keys.as_ref()?.find(kid)?;
        Some(validator.check(token))
    }

    /// The verdict of the current keys on a token whose request saw fetch number
    /// `seen`: the key's check if they hold it, `invalid_token` if they came from a
    /// fetch started after the request arrived (numbered above `seen`), else none.
    fn decide(&self, kid: &Option<String>, token: &str, seen: u64) -> Option<Result<C, Rejection>> {
        let keys = self.keys.load();
        let keys = keys.as_ref()?;
        if let Some(validator) = keys.find(kid.as_deref()) {
            return Some(validator.check(token));
        }
        if keys.number > seen {
            self.remember_missing(kid.clone(), keys.fetched_at);
            return Some(Err(Rejection::invalid_token(UNKNOWN_KEY)));
        }
        None
    }

    /// When the next first-sight look-up is allowed (`now` if it is).
    fn next_sight(&self) -> Instant {
        let now = Instant::now();
        lock(&self.schedule)
            .next_sight(self.first_sight_interval)
            .map_or(now, |at| at.max(now))
    }

    /// The answer to a token that could not be looked up in time: the current keys'
    /// verdict if they have one now, `invalid_token` for a kid known absent, else
    /// `503` with the time until the next allowed look-up.
    fn undecided(&self, kid: &Option<String>, token: &str) -> Result<C, Rejection> {
        if let Some(checked) = self.check_with_current(kid.as_deref(), token) {
            return checked;
        }
        if self.known_absent(kid) {
            return Err(Rejection::invalid_token(UNKNOWN_KEY));
        }
        let after = self.next_sight().saturating_duration_since(Instant::now());
        Err(Rejection::Unavailable(
            Unavailable::new(NO_KEYS).retry_after(after),
        ))
    }

    /// The answer for a token whose key is not in the keys (first sight; see the
    /// type's documentation for the cases): decided by a fetch started after the
    /// request arrived (numbered above `seen`, read once it had arrived). The
    /// request joins a running fetch (it may bring the key), or starts the look-up
    /// when the interval allows, or waits for the next allowed one when it comes
    /// within [`first_sight_wait`](JwksValidatorBuilder::first_sight_wait); every
    /// wait ends at that deadline (the fetch itself goes on). Past it, or when the
    /// look-up fails, `503` with `Retry-After`.
    async fn resolve(
        this: Arc<Self>,
        kid: Option<String>,
        token: String,
        seen: u64,
    ) -> Result<C, Rejection> {
        let deadline = Instant::now() + this.first_sight_wait;
        loop {
            if let Some(decided) = this.decide(&kid, &token, seen) {
                return decided;
            }
            if this.known_absent(&kid) {
                return Err(Rejection::invalid_token(UNKNOWN_KEY));
            }
            let Some(flight) = Shared::fetch_once(&this, Cause::Miss) else {
                // Not yet allowed: wait for the next look-up if it comes in time.
                let next = this.next_sight();
                if next > deadline {
                    return this.undecided(&kid, &token);
                }
                tokio::time::sleep_until(next).await;
                continue;
            };
            // Whoever started it (this request, or one before it), the fetch is
            // awaited only until this request's deadline: it runs on its own task
            // and stores its keys for the next request whatever happens here. An
            // older fetch may bring the key, or free the way for a look-up.
            match tokio::time::timeout_at(deadline, flight.wait()).await {
                Ok(Some(Ok(_))) => continue,
                // Nobody drove that fetch (its runtime idles): the flight was
                // abandoned; look up again from this runtime if time allows.
                Ok(None) => continue,
                // A failed fetch or no time left: no verdict now.
                Ok(Some(Err(_))) | Err(_) => return this.undecided(&kid, &token),
            }
        }
    }

    async fn get(&self, endpoint: Endpoint, url: &Uri) -> Result<http::Response<Bytes>, Error> {
        let req = Request::get(url.clone())
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Configuration(e.to_string()))?;
        let res = self.http.send(endpoint, req).await?;
        if res.status() != StatusCode::OK {
            return Err(Error::InvalidResponse(
                endpoint,
                format!("{url} answered HTTP {}", res.status().as_u16()),
            ));
        }
        Ok(res)
    }

    async fn jwks_uri(&self) -> Result<Uri, Error> {
        let (issuer, document) = match &self.source {
            Source::Jwks(url) => return Ok(url.clone()),
            Source::Discovery { issuer, document } => (issuer, document),
        };
        if let Some(known) = lock(&self.jwks_uri).clone() {
            return Ok(known);
        }
        let res = self.get(Endpoint::Discovery, document).await?;
        let uri = discovery_jwks_uri(res.body(), issuer, self.allow_insecure_http)?;
        *lock(&self.jwks_uri) = Some(uri.clone());
        Ok(uri)
    }

    async fn fetch_keys(&self) -> Result<KeySet<C>, Error> {
        let url = self.jwks_uri().await?;
        let res = self.get(Endpoint::Jwks, &url).await?;
        let lifetime = max_age(res.headers())
            .map(|age| age.clamp(self.refresh_bounds.0, self.refresh_bounds.1))
            .unwrap_or(self.default_refresh);
        parse_key_set(
            res.body(),
            &*self.rules,
            self.issuer.as_deref(),
            Instant::now() + ahead_of(lifetime),
        )
    }
}

/// The `jwks_uri` of an OIDC discovery document, once the document is found to be
/// `issuer`'s own (OpenID Connect Discovery §4.3) and the URI fit for fetching keys.
pub(crate) fn discovery_jwks_uri(
    body: &[u8],
    issuer: &str,
    allow_insecure_http: bool,
) -> Result<Uri, Error> {
    let found: Discovery = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidResponse(Endpoint::Discovery, crate::error::json_error(&e)))?;
    if found.issuer != issuer {
        return Err(Error::InvalidResponse(
            Endpoint::Discovery,
            format!(
                "the document names issuer {:?}, expected {issuer:?}",
                found.issuer
            ),
        ));
    }
    let uri = parse_url(&found.jwks_uri)?;
    check_url(&uri, allow_insecure_http)?;
    Ok(uri)
}

/// The usable signing keys of a JWKS document, each a validator with `rules` applied
/// (and `issuer`, when one is required), to be refreshed at `refresh_at`.
///
/// # Errors
/// [`Error::InvalidResponse`] when the document does not parse or holds no usable key.
pub(crate) fn parse_key_set<C: DeserializeOwned + Clone + Send + Sync + 'static>(
    body: &[u8],
    rules: &(dyn Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync),
    issuer: Option<&str>,
    refresh_at: Instant,
) -> Result<KeySet<C>, Error> {
    let raw: RawKeySet = serde_json::from_slice(body)
        .map_err(|e| Error::InvalidResponse(Endpoint::Jwks, crate::error::json_error(&e)))?;
    let mut set = KeySet {
        by_kid: HashMap::new(),
        unnamed: Vec::new(),
        skipped: HashSet::new(),
        refresh_at,
        number: 0,
        fetched_at: Instant::now(),
    };
    for (index, value) in raw.keys.into_iter().enumerate() {
        let kid = value.get("kid").and_then(serde_json::Value::as_str);
        let kid = kid.map(str::to_owned);
        let Some(validator) = usable_key(index, value, rules, issuer) else {
            set.skipped.extend(kid);
            continue;
        };
        match validator {
            (Some(kid), v) => {
                set.by_kid.insert(kid, v);
            }
            (None, v) => set.unnamed.push(v),
        }
    }
    if set.by_kid.is_empty() && set.unnamed.is_empty() {
        return Err(Error::InvalidResponse(
            Endpoint::Jwks,
            "the key set holds no usable signing key".into(),
        ));
    }
    Ok(set)
}

/// A validator for one JWK of the set, or `None` (with a warning) when the key
/// cannot or must not verify tokens.
fn usable_key<C: DeserializeOwned + Clone + Send + Sync + 'static>(
    index: usize,
    value: serde_json::Value,
    rules: &(dyn Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync),
    issuer: Option<&str>,
) -> Option<(Option<String>, JwtValidator<C>)> {
    let jwk: Jwk = match Jwk::deserialize(&value) {
        Ok(jwk) => jwk,
        Err(e) => {
            let error = crate::error::json_error(&e);
            tracing::warn!(index, %error, "skipping a JWK that does not parse");
            return None;
        }
    };
    let kid = jwk.common.key_id.clone();
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        tracing::warn!(index, ?kid, "skipping an encryption key in the JWKS");
        return None;
    }
    // A published shared secret is no secret: never verify with it.
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        tracing::warn!(index, ?kid, "skipping a symmetric key in the JWKS");
        return None;
    }
    // jsonwebtoken takes an Ed25519 key's first 32 bytes when it verifies: a shorter
    // `x` would panic there (a JWKS must not be able to crash the server), a longer
    // one would be cut. Only Ed25519 is an OKP signing curve here.
    if let AlgorithmParameters::OctetKeyPair(okp) = &jwk.algorithm {
        let len = URL_SAFE_NO_PAD.decode(&okp.x).map_or(0, |x| x.len());
        if okp.curve != EllipticCurve::Ed25519 || len != ED25519_KEY_LEN {
            tracing::warn!(
                index,
                ?kid,
                "skipping an OKP key that is not a 32-byte Ed25519 key"
            );
            return None;
        }
    }
    // The JWK's own `alg`, read as this crate reads every `alg` (RFC 9864 names
    // included): jsonwebtoken's `Jwk` forgets a name it does not know.
    let alg = value.get("alg").and_then(serde_json::Value::as_str);
    let validator = match JwtValidator::<C>::from_jwk_named(&jwk, alg) {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(index, ?kid, error = %e, "skipping an unsupported JWK");
            return None;
        }
    };
    let mut validator = rules(validator);
    if let Some(issuer) = issuer {
        validator = validator.issuer(issuer);
    }
    Some((kid, validator))
}

/// `Cache-Control: max-age=N`, if given.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|directive| {
            let (name, value) = directive.trim().split_once('=')?;
            if name.trim().eq_ignore_ascii_case("max-age") {
                value
                    .trim()
                    .trim_matches('"')
                    .parse()
                    .ok()
                    .map(Duration::from_secs)
            } else {
                None
            }
        })
}

/// The length of an Ed25519 public key (RFC 8037 §2: `x`).
const ED25519_KEY_LEN: usize = 32;

const UNKNOWN_KEY: &str = "the token's signing key is unknown";
/// Also for an unknown kid that cannot be looked up in time: the key may exist.
const NO_KEYS: &str = "the signing keys are unavailable";

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> JwksValidator<C> {
    /// [`validate`](Validator::validate) without the [`MAX_TOKEN_LEN`] limit, for a
    /// JWS its reader already bounded: a signed introspection answer (RFC 9701),
    /// bounded by the HTTP client's body limit, grows with the token's claims and
    /// may be longer than any token.
    pub(crate) fn validate_any_length(&self, token: &str) -> ValidationFuture<C> {
        // Only `alg` and `kid` are read from the header: `jku`, `x5u` and `jwk` would
        // let the token choose its own key.
        let kid = match super::jwt::header_kid(token) {
            Ok(kid) => kid,
            Err(rejection) => return ValidationFuture::ready(Err(rejection)),
        };
        let shared = &self.shared;
        if let Some(keys) = &*shared.keys.load() {
            if keys.refresh_at <= Instant::now() {
                // Due (the refresh task is late, or its runtime idles): refresh in
                // the background; this request uses the current keys.
                drop(Shared::fetch_once(shared, Cause::Schedule));
            }
            if let Some(validator) = keys.find(kid.as_deref()) {
                return ValidationFuture::ready(validator.check(token));
            }
            if shared.known_absent(&kid) {
                return ValidationFuture::ready(Err(Rejection::invalid_token(UNKNOWN_KEY)));
            }
        }
        // An unknown kid or no keys yet: look it up (first sight).
        let seen = shared.started();
        ValidationFuture::pending(Shared::resolve(
            Arc::clone(shared),
            kid,
            token.to_owned(),
            seen,
        ))
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for JwksValidator<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        if token.len() > MAX_TOKEN_LEN {
            return ValidationFuture::ready(Err(Rejection::invalid_token("the token is too long")));
        }
        self.validate_any_length(token)
    }

    /// A verdict cached (by a [`VerifiedCache`](super::VerifiedCache)) stands while
    /// the key that verified it is still in the current key set: once a refresh
    /// (scheduled, or a first-sight look-up) brought a set without the token's
    /// `kid`, the token is refused as [`validate`](Validator::validate) would refuse
    /// it, instead of being served until its `exp`. The hit stays cheap: the header
    /// is decoded on the stack, the key set is one atomic load and its kids are
    /// compared in place (no hashing, no lock, no allocation).
    ///
    /// A token without a `kid` is held while the set has a key for such tokens; the
    /// claims rules were checked when the verdict was cached.
    fn recheck(&self, token: &str, claims: C) -> ValidationFuture<C> {
        let shared = &self.shared;
        let keys = shared.keys.load();
        let Some(keys) = &*keys else {
            // Never for a verdict this validator gave; decided afresh.
            return self.validate(token);
        };
        if keys.refresh_at <= Instant::now() {
            // Due: refresh in the background, as validate does.
            drop(Shared::fetch_once(shared, Cause::Schedule));
        }
        let held = super::jwt::with_header_kid(token, |kid| match kid {
            // One hash lookup: a scan would grow with the size of the key set.
            Some(kid) => keys.by_kid.contains_key(kid),
            None => keys.find(None).is_some(),
        });
        ValidationFuture::ready(match held {
            Ok(true) => Ok(claims),
            Ok(false) => Err(Rejection::invalid_token(UNKNOWN_KEY)),
            Err(rejection) => Err(rejection),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut h = http::HeaderMap::new();
        h.insert(
            CACHE_CONTROL,
            "public, max-age=600, must-revalidate".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(600)));
        h.insert(CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&h), None);
        h.insert(CACHE_CONTROL, "max-age=abc".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    fn unfetched() -> JwksValidator<Claims> {
        // Nothing listens there; these tests never fetch.
        JwksValidator::<Claims>::builder("http://127.0.0.1:9/jwks")
            .unwrap()
            .build()
            .unwrap()
    }

    fn set(kids: impl IntoIterator<Item = String>) -> KeySet<Claims> {
        KeySet {
            by_kid: kids
                .into_iter()
                .map(|kid| (kid, JwtValidator::hmac(b"0123456789abcdef0123456789abcdef")))
                .collect(),
            unnamed: Vec::new(),
            skipped: HashSet::new(),
            refresh_at: Instant::now(),
            number: 0,
            fetched_at: Instant::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn missing_kids_are_remembered_for_one_interval_and_boundedly() {
        let v = unfetched();
        let shared = &v.shared;
        for i in 0..1000 {
            shared.remember_missing(Some(format!("k{i}")), Instant::now());
        }
        assert_eq!(lock(&shared.unknown).missing.len(), MAX_MISSING);
        assert!(shared.known_absent(&Some("k0".into())));
        assert!(!shared.known_absent(&Some("k999".into())), "past the bound");
        shared.remember_missing(None, Instant::now());
        assert!(!shared.known_absent(&None), "past the bound");

        // Counted from the start of the fetch that proved the kid absent.
        let proved = Instant::now();
        tokio::time::advance(DEFAULT_FIRST_SIGHT_INTERVAL - Duration::from_millis(1)).await;
        assert!(shared.known_absent(&Some("k0".into())));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!shared.known_absent(&Some("k0".into())), "expired");
        // Expired kids make room; a proof older than the interval is no proof.
        shared.remember_missing(None, proved);
        assert!(!shared.known_absent(&None));
        shared.remember_missing(None, Instant::now());
        assert!(shared.known_absent(&None));
        assert_eq!(lock(&shared.unknown).missing.len(), 1);
    }

    /// Retries after failures wait the cool-down, then twice it, up to the cap;
    /// a scheduled fetch is refused before the retry time and allowed after it.
    #[tokio::test(start_paused = true)]
    async fn failed_fetches_back_off_by_time() {
        let v = unfetched();
        let shared = &v.shared;
        let after_failure = || {
            let schedule = lock(&shared.schedule);
            let at = schedule.retry_at.expect("a failure sets a retry time");
            (schedule.failures, at)
        };
        assert!(v.load().await.is_err());
        let (failures, retry_at) = after_failure();
        let wait = retry_at - Instant::now();
        assert_eq!(failures, 1);
        assert!(
            wait > Duration::from_secs(29) && wait <= Duration::from_secs(33),
            "{wait:?}"
        );

        // Before the retry time, even past the cool-down, no scheduled fetch starts.
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        assert!(Shared::fetch_once(shared, Cause::Schedule).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        let flight = Shared::fetch_once(shared, Cause::Schedule).expect("the retry is due");
        assert!(flight.await.is_err());
        let (failures, retry_at) = after_failure();
        let wait = retry_at - Instant::now();
        assert_eq!(failures, 2);
        assert!(
            wait > Duration::from_secs(59) && wait <= Duration::from_secs(66),
            "{wait:?}"
        );

        let first = retry_backoff(DEFAULT_COOLDOWN, 1);
        assert!(first >= DEFAULT_COOLDOWN && first <= DEFAULT_COOLDOWN.mul_f64(1.1));
        assert!(retry_backoff(DEFAULT_COOLDOWN, 40) <= MAX_RETRY_BACKOFF.mul_f64(1.1));
        assert!(retry_backoff(DEFAULT_COOLDOWN, 40) >= MAX_RETRY_BACKOFF);
        // A cool-down above the cap is never shortened.
        let long = Duration::from_secs(600);
        assert!(retry_backoff(long, 3) >= long);
    }

    /// First-sight look-ups after failures: the interval, doubled per failure, up
    /// to the cool-down; refused before that time, allowed at it.
    #[tokio::test(start_paused = true)]
    async fn first_sight_look_ups_back_off_by_time_up_to_the_cooldown() {
        let s = |secs| Duration::from_secs(secs);
        assert_eq!(sight_backoff(s(2), s(30), 1), s(2));
        assert_eq!(sight_backoff(s(2), s(30), 2), s(4));
        assert_eq!(sight_backoff(s(2), s(30), 4), s(16));
        assert_eq!(sight_backoff(s(2), s(30), 5), s(30));
        assert_eq!(sight_backoff(s(2), s(30), 40), s(30));
        assert_eq!(
            sight_backoff(s(60), s(30), 3),
            s(60),
            "never below the interval"
        );

        let v = unfetched();
        let shared = &v.shared;
        assert!(v.load().await.is_err());
        assert!(v.load().await.is_err());
        let next = shared.next_sight();
        assert_eq!(next - Instant::now(), s(4), "two failures in a row");
        tokio::time::advance(s(4) - Duration::from_millis(1)).await;
        assert!(Shared::fetch_once(shared, Cause::Miss).is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(Shared::fetch_once(shared, Cause::Miss).is_some());
    }

    #[test]
    fn keys_are_due_between_80_and_90_percent_of_their_lifetime() {
        for _ in 0..1000 {
            let at = ahead_of(Duration::from_secs(100));
            assert!(
                at >= Duration::from_secs(80) && at <= Duration::from_secs(90),
                "{at:?}"
            );
        }
    }

    /// Retired kids are absent for one interval from the fetch that dropped them
    /// (the provider may have answered with an older set), or until a key set
    /// brings them back.
    #[tokio::test(start_paused = true)]
    async fn retired_kids_are_absent_for_one_interval_or_until_a_key_set_brings_them_back() {
        let v = unfetched();
        let shared = &v.shared;
        let kids = |unknown: &UnknownKids| -> Vec<String> {
            unknown.retired.iter().map(|(kid, _)| kid.clone()).collect()
        };
        let old = set((0..100).map(|i| format!("k{i}")));
        shared.retire(&old, &set(["k0".to_owned()]));
        let retired = kids(&lock(&shared.unknown));
        assert_eq!(retired.len(), MAX_RETIRED);
        assert!(!retired.contains(&"k0".to_owned()), "k0 is still published");
        let back = retired[0].clone();
        assert!(shared.known_absent(&Some(back.clone())));

        shared.retire(&set(["k0".to_owned()]), &set([back.clone()]));
        {
            let unknown = lock(&shared.unknown);
            let retired = kids(&unknown);
            assert!(!retired.contains(&back), "published again");
            assert!(retired.contains(&"k0".to_owned()));
            assert_eq!(retired.len(), MAX_RETIRED);
        }
        assert!(shared.known_absent(&Some("k0".into())));
        tokio::time::advance(DEFAULT_FIRST_SIGHT_INTERVAL - Duration::from_millis(1)).await;
        assert!(shared.known_absent(&Some("k0".into())));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            !shared.known_absent(&Some("k0".into())),
            "looked up again after one interval"
        );
    }
}
