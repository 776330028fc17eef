//! [`MultiIssuer`]: JWTs from several issuers (one per tenant, say), each checked by
//! its own [`JwksValidator`], picked by the token's `iss`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::{BoxFuture, FutureExt, Shared as SharedFuture};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::time::Instant;

use super::jwks::{JwksValidator, MAX_TOKEN_LEN};
use super::jwt::{compact_parts, json_object, malformed};
use super::validator::{Claims, ValidationFuture, Validator};
use super::{Rejection, Unavailable};
use crate::Error;

/// The default bound on issuers added at run time by a resolver.
pub const DEFAULT_MAX_ISSUERS: usize = 100;
/// The default least time between two resolver calls for issuers not known yet.
pub const DEFAULT_LOOKUP_INTERVAL: Duration = Duration::from_secs(1);
/// The default time an issuer the resolver refused is refused without asking again.
pub const DEFAULT_REFUSAL_TTL: Duration = Duration::from_secs(5 * 60);
/// The default time a resolver call may take.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The default longest time a request for an issuer not known yet waits for the
/// next allowed look-up before it is answered `503` with `Retry-After`.
pub const DEFAULT_LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// An `iss` longer than this is refused without a look-up.
const MAX_ISSUER_LEN: usize = 1024;
/// At most this many refused issuers are remembered (1 MiB of `iss` at worst);
/// beyond it, the look-up interval alone bounds the resolver calls.
const MAX_REFUSED: usize = 1024;

const UNKNOWN_ISSUER: &str = "the token's issuer is not accepted";
const NO_ISSUER: &str = "the token lacks the iss claim";
const LOOKUP_BUSY: &str = "the token's issuer cannot be looked up now";

type Resolve<C> = Arc<dyn Fn(String) -> BoxFuture<'static, Option<JwksValidator<C>>> + Send + Sync>;
type Lookup = SharedFuture<BoxFuture<'static, ()>>;

/// Accepts JWTs from a set of issuers, each with its own keys (a JWKS URL or OIDC
/// discovery), audience, algorithms and other rules: one [`JwksValidator`] per
/// issuer, picked by the token's `iss`.
///
/// - The unverified `iss` is read only to pick the issuer's validator (the payload
///   is decoded on the stack, nothing else is read); nothing in the token is
///   trusted before that validator checked its signature with that issuer's keys,
///   and its `iss` again (every validator here requires its own issuer: one found
///   by discovery, or set with [`JwksValidatorBuilder::issuer`]). A token naming
///   issuer A signed with issuer B's key is refused, whatever its `kid`.
/// - A token with no `iss`, or an `iss` not configured, is answered
///   `401 invalid_token` without any fetch.
/// - Optionally, a [`resolver`](MultiIssuerBuilder::resolver) adds issuers at run
///   time (a tenant lookup). It is bounded so that junk `iss` values cannot turn
///   requests into look-ups or key fetches: at most one call per
///   [`lookup_interval`](MultiIssuerBuilder::lookup_interval) (default 1 s) for
///   issuers not known yet, throttled by time as the keys' first sight is. A
///   request for an unknown `iss` that arrives during the interval (after a junk
///   `iss`, say) **waits** for the next allowed call, at most
///   [`lookup_wait`](MultiIssuerBuilder::lookup_wait) (default 5 s): waiting is
///   bounded by time only (a count of waiters would be a budget junk could spend;
///   the requests a server holds are bounded by its own concurrency limit); one
///   that cannot wait is answered `503` with a `Retry-After` of the time until
///   that call.
///   Concurrent requests for one issuer share one call; an issuer the resolver
///   refused is refused without a call for
///   [`refusal_ttl`](MultiIssuerBuilder::refusal_ttl) (default 5 min); each call has
///   a deadline; and at most [`max_issuers`](MultiIssuerBuilder::max_issuers)
///   (default 100) are added. Each call is for one issuer: a steady flood of new
///   junk `iss` values still competes with a real new tenant for the calls (known
///   tenants are never affected).
///
/// It is a [`Validator`]: stack it under `VerifiedCache`, `Denylisted`,
/// `RequireBearerLayer` and `RequireScopeLayer` like any other.
///
/// With many issuers, give them one [`HttpClient`](crate::client::HttpClient): each
/// `JwksValidator` otherwise builds its own (its TLS configuration and root store,
/// about 25 KB), 28 KB per issuer against 3 KB with one shared (BENCHMARKS.md,
/// "Growth").
///
/// ```no_run
/// use tower_bearer::client::HttpClient;
/// use tower_bearer::server::{Claims, JwksValidator, MultiIssuer, RequireBearerLayer};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let http = HttpClient::new(); // one for every issuer
/// let tenant = |issuer: &str| {
///     JwksValidator::<Claims>::discover(issuer)?
///         .http_client(http.clone())
///         .rules(|v| v.audience("my-api"))
///         .build()
/// };
/// let validator = MultiIssuer::builder()
///     .issuer(tenant("https://idp.example.com/realms/acme")?)
///     .issuer(tenant("https://idp.example.com/realms/globex")?)
///     .build()?;
/// let layer = RequireBearerLayer::new(validator);
/// # Ok(()) }
/// ```
///
/// [`JwksValidatorBuilder::issuer`]: super::JwksValidatorBuilder::issuer
pub struct MultiIssuer<C = Claims> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for MultiIssuer<C> {
    fn clone(&self) -> Self {
        MultiIssuer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> fmt::Debug for MultiIssuer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiIssuer")
            .field("issuers", &self.shared.fixed.keys().collect::<Vec<_>>())
            .field(
                "resolved",
                &self.shared.resolved.load().keys().collect::<Vec<_>>(),
            )
            .field("resolver", &self.shared.resolver.is_some())
            .finish_non_exhaustive()
    }
}

struct Shared<C> {
    fixed: HashMap<String, JwksValidator<C>>,
    /// Issuers the resolver added; replaced whole (under `lookups`) when one is added.
    resolved: ArcSwap<HashMap<String, JwksValidator<C>>>,
    resolver: Option<Resolve<C>>,
    max_issuers: usize,
    lookup_interval: Duration,
    refusal_ttl: Duration,
    lookup_timeout: Duration,
    lookup_wait: Duration,
    lookups: Mutex<Lookups>,
}

#[derive(Default)]
struct Lookups {
    /// When the last resolver call started: the look-up budget.
    last_start: Option<Instant>,
    /// Issuers the resolver refused, and when.
    refused: HashMap<String, Instant>,
    /// Resolver calls under way, shared by the requests that wait for them.
    running: HashMap<String, Lookup>,
}

/// Configures a [`MultiIssuer`].
pub struct MultiIssuerBuilder<C> {
    issuers: Vec<JwksValidator<C>>,
    resolver: Option<Resolve<C>>,
    max_issuers: usize,
    lookup_interval: Duration,
    refusal_ttl: Duration,
    lookup_timeout: Duration,
    lookup_wait: Duration,
}

impl<C> fmt::Debug for MultiIssuerBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiIssuerBuilder")
            .field("issuers", &self.issuers.len())
            .field("resolver", &self.resolver.is_some())
            .field("max_issuers", &self.max_issuers)
            .finish_non_exhaustive()
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> MultiIssuer<C> {
    /// A multi-issuer validator, configured by the builder.
    pub fn builder() -> MultiIssuerBuilder<C> {
        MultiIssuerBuilder {
            issuers: Vec::new(),
            resolver: None,
            max_issuers: DEFAULT_MAX_ISSUERS,
            lookup_interval: DEFAULT_LOOKUP_INTERVAL,
            refusal_ttl: DEFAULT_REFUSAL_TTL,
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            lookup_wait: DEFAULT_LOOKUP_WAIT,
        }
    }

    /// Fetches the keys of every configured issuer now (for example at start-up,
    /// to fail early); see [`JwksValidator::load`].
    ///
    /// # Errors
    /// The first issuer's failure; the others are still loaded.
    pub async fn load(&self) -> Result<(), Error> {
        let loads = self.shared.fixed.values().map(JwksValidator::load);
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .collect()
    }

    /// The issuers accepted now: the configured ones and those a resolver added.
    pub fn issuers(&self) -> Vec<String> {
        let mut all: Vec<String> = self.shared.fixed.keys().cloned().collect();
        all.extend(self.shared.resolved.load().keys().cloned());
        all
    }

    /// The validator of `issuer`, if it is accepted now.
    pub fn validator(&self, issuer: &str) -> Option<JwksValidator<C>> {
        self.shared.route(issuer)
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> MultiIssuerBuilder<C> {
    /// Accepts the tokens `validator` accepts; its issuer
    /// ([`JwksValidator::issuer`]) is the `iss` that picks it.
    pub fn issuer(mut self, validator: JwksValidator<C>) -> Self {
        self.issuers.push(validator);
        self
    }

    /// Looks up issuers not configured (a tenant lookup): called with the unverified
    /// `iss` of a token, it answers the issuer's validator, or `None` for an issuer
    /// that is not accepted. The validator must require that issuer (see
    /// [`JwksValidator::issuer`]); any other answer is taken as a refusal. Calls
    /// are bounded as the [type](MultiIssuer) says.
    pub fn resolver<F, Fut>(mut self, resolve: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<JwksValidator<C>>> + Send + 'static,
    {
        self.resolver = Some(Arc::new(move |issuer| resolve(issuer).boxed()));
        self
    }

    /// The most issuers a resolver may add (default 100); past it, unknown issuers
    /// are refused without a call.
    pub fn max_issuers(mut self, max: usize) -> Self {
        self.max_issuers = max;
        self
    }

    /// The least time between two resolver calls (default 1 s).
    pub fn lookup_interval(mut self, interval: Duration) -> Self {
        self.lookup_interval = interval;
        self
    }

    /// How long an issuer the resolver refused is refused without a call (default
    /// 5 min).
    pub fn refusal_ttl(mut self, ttl: Duration) -> Self {
        self.refusal_ttl = ttl;
        self
    }

    /// How long a resolver call may take (default 10 s); past it the requests
    /// waiting for it are answered `503`.
    pub fn lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// How long a request for an issuer not known yet may wait for the next allowed
    /// resolver call before it is answered `503` with `Retry-After` (default 5 s).
    /// `Duration::ZERO`: never wait (a call allowed now is still made and awaited).
    pub fn lookup_wait(mut self, wait: Duration) -> Self {
        self.lookup_wait = wait;
        self
    }

    /// The validator.
    ///
    /// # Errors
    /// [`Error::Configuration`] when a validator requires no issuer, or two
    /// require the same one.
    pub fn build(self) -> Result<MultiIssuer<C>, Error> {
        let mut fixed = HashMap::with_capacity(self.issuers.len());
        for validator in self.issuers {
            let Some(issuer) = validator.issuer().map(str::to_owned) else {
                return Err(Error::Configuration(
                    "a validator of a MultiIssuer must require its issuer \
                     (JwksValidator::discover, or JwksValidatorBuilder::issuer)"
                        .into(),
                ));
            };
            if fixed.insert(issuer.clone(), validator).is_some() {
                return Err(Error::Configuration(format!(
                    "the issuer {issuer:?} is configured twice"
                )));
            }
        }
        Ok(MultiIssuer {
            shared: Arc::new(Shared {
                fixed,
                resolved: ArcSwap::default(),
                resolver: self.resolver,
                max_issuers: self.max_issuers,
                lookup_interval: self.lookup_interval,
                refusal_ttl: self.refusal_ttl,
                lookup_timeout: self.lookup_timeout,
                lookup_wait: self.lookup_wait,
                lookups: Mutex::new(Lookups::default()),
            }),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every update under this lock is a few map operations that cannot panic midway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What to do for an issuer that is not accepted yet.
enum Begin<C> {
    Found(JwksValidator<C>),
    Refused,
    /// No call allowed before this time.
    Busy(Instant),
    Wait(Lookup),
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Shared<C> {
    fn route(&self, issuer: &str) -> Option<JwksValidator<C>> {
        if let Some(v) = self.fixed.get(issuer) {
            return Some(v.clone());
        }
        self.resolved.load().get(issuer).cloned()
    }

    fn refused(lookups: &Lookups, issuer: &str, ttl: Duration) -> bool {
        lookups
            .refused
            .get(issuer)
            .is_some_and(|at| Instant::now().saturating_duration_since(*at) < ttl)
    }

    /// Joins the look-up of `issuer`, or starts one if the bounds allow it.
    fn begin(this: &Arc<Self>, resolve: &Resolve<C>, issuer: &str) -> Begin<C> {
        let mut lookups = lock(&this.lookups);
        if let Some(v) = this.resolved.load().get(issuer) {
            return Begin::Found(v.clone());
        }
        if Shared::<C>::refused(&lookups, issuer, this.refusal_ttl) {
            return Begin::Refused;
        }
        if let Some(running) = lookups.running.get(issuer) {
            return Begin::Wait(running.clone());
        }
        let added = this.resolved.load().len();
        if added >= this.max_issuers {
            tracing::debug!("unknown issuer refused: the resolver's bound is reached");
            return Begin::Refused;
        }
        let now = Instant::now();
        let next = Shared::<C>::next_call(&lookups, this.lookup_interval, now);
        // Look-ups under way count towards the bound: they may all succeed (or not:
        // ask again an interval later).
        if added + lookups.running.len() >= this.max_issuers {
            return Begin::Busy(next.max(now + this.lookup_interval));
        }
        if next > now {
            return Begin::Busy(next);
        }
        lookups.last_start = Some(now);
        let call = tokio::time::timeout(this.lookup_timeout, resolve(issuer.to_owned()));
        let shared = Arc::clone(this);
        let owned = issuer.to_owned();
        let job = async move {
            let found = call.await;
            shared.settle(owned, found.ok());
        };
        // On a spawned task, so that a dropped request does not cancel it.
        let lookup = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let task = runtime.spawn(job);
                async move { drop(task.await) }.boxed()
            }
            Err(_) => job.boxed(),
        }
        .shared();
        lookups.running.insert(issuer.to_owned(), lookup.clone());
        Begin::Wait(lookup)
    }

    /// When the next resolver call is allowed (now or earlier if it is).
    fn next_call(lookups: &Lookups, interval: Duration, now: Instant) -> Instant {
        lookups.last_start.map_or(now, |t| (t + interval).max(now))
    }

    /// `503` with the time until the next allowed call.
    fn busy(next: Instant) -> Rejection {
        let after = next.saturating_duration_since(Instant::now());
        Rejection::Unavailable(Unavailable::new(LOOKUP_BUSY).retry_after(after))
    }

    /// The answer to a request for `issuer` that arrived while no call was allowed
    /// (before `next`): it waits for the next allowed call when that comes within
    /// its wait, and tries again (the issuer may have been added meanwhile);
    /// otherwise `503` with `Retry-After`.
    async fn wait_turn(
        this: Arc<Self>,
        resolve: Resolve<C>,
        issuer: String,
        token: String,
        mut next: Instant,
    ) -> Result<C, Rejection> {
        let deadline = Instant::now() + this.lookup_wait;
        loop {
            if next > deadline {
                return Err(Shared::<C>::busy(next));
            }
            tokio::time::sleep_until(next).await;
            match Shared::begin(&this, &resolve, &issuer) {
                Begin::Found(v) => return v.validate(&token).await,
                Begin::Refused => return Err(Rejection::invalid_token(UNKNOWN_ISSUER)),
                Begin::Busy(later) => next = later,
                Begin::Wait(lookup) => {
                    return Shared::after_lookup(this, lookup, issuer, token).await;
                }
            }
        }
    }

    /// Records what the resolver answered for `issuer` (`None`: it timed out).
    fn settle(&self, issuer: String, found: Option<Option<JwksValidator<C>>>) {
        let mut lookups = lock(&self.lookups);
        lookups.running.remove(&issuer);
        match found {
            Some(Some(v)) if v.issuer() == Some(issuer.as_str()) => {
                let resolved = self.resolved.load();
                if resolved.len() < self.max_issuers {
                    let mut more = HashMap::clone(&resolved);
                    more.insert(issuer, v);
                    self.resolved.store(Arc::new(more));
                }
            }
            Some(found) => {
                if found.is_some() {
                    tracing::warn!(
                        "the issuer resolver answered a validator that does not require the \
                         issuer it was asked for; taken as a refusal"
                    );
                }
                let now = Instant::now();
                if lookups.refused.len() >= MAX_REFUSED {
                    let ttl = self.refusal_ttl;
                    lookups
                        .refused
                        .retain(|_, at| now.saturating_duration_since(*at) < ttl);
                }
                if lookups.refused.len() < MAX_REFUSED {
                    lookups.refused.insert(issuer, now);
                }
            }
            None => tracing::warn!("the issuer resolver timed out"),
        }
    }

    async fn after_lookup(
        this: Arc<Self>,
        lookup: Lookup,
        issuer: String,
        token: String,
    ) -> Result<C, Rejection> {
        lookup.await;
        if let Some(v) = this.route(&issuer) {
            return v.validate(&token).await;
        }
        let lookups = lock(&this.lookups);
        if Shared::<C>::refused(&lookups, &issuer, this.refusal_ttl) {
            Err(Rejection::invalid_token(UNKNOWN_ISSUER))
        } else {
            // The call timed out: the next one for this issuer comes after the interval.
            let next = Shared::<C>::next_call(&lookups, this.lookup_interval, Instant::now());
            Err(Shared::<C>::busy(next))
        }
    }
}

/// The payload's `iss`, unverified: only `iss` is read, from a copy on the stack.
fn with_unverified_issuer<T>(token: &str, then: impl FnOnce(&str) -> T) -> Result<T, Rejection> {
    #[derive(Deserialize)]
    struct Iss<'a> {
        #[serde(default, borrow)]
        iss: Option<Cow<'a, str>>,
    }
    let (_, payload, _) = compact_parts(token).ok_or_else(malformed)?;
    // A token is at most MAX_TOKEN_LEN long: its payload decodes into this buffer.
    let mut buf = [0u8; MAX_TOKEN_LEN / 4 * 3 + 3];
    let len = URL_SAFE_NO_PAD
        .decode_slice(payload, &mut buf)
        .map_err(|_| malformed())?;
    let claims: Iss<'_> = serde_json::from_slice(json_object(&buf[..len])?)
        .map_err(|_| Rejection::invalid_token("the token's iss claim is malformed"))?;
    match claims.iss {
        Some(iss) => Ok(then(&iss)),
        None => Err(Rejection::invalid_token(NO_ISSUER)),
    }
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for MultiIssuer<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        if token.len() > MAX_TOKEN_LEN {
            return ValidationFuture::ready(Err(Rejection::invalid_token("the token is too long")));
        }
        let shared = &self.shared;
        let routed = with_unverified_issuer(token, |iss| {
            // The common case: no clone, no allocation.
            if let Some(v) = shared.fixed.get(iss) {
                return Err(v.validate(token));
            }
            if let Some(v) = shared.resolved.load().get(iss) {
                return Err(v.validate(token));
            }
            let Some(resolve) = &shared.resolver else {
                return Err(ValidationFuture::ready(Err(Rejection::invalid_token(
                    UNKNOWN_ISSUER,
                ))));
            };
            if iss.len() > MAX_ISSUER_LEN {
                return Err(ValidationFuture::ready(Err(Rejection::invalid_token(
                    UNKNOWN_ISSUER,
                ))));
            }
            match Shared::begin(shared, resolve, iss) {
                Begin::Found(v) => Ok(v),
                Begin::Refused => Err(ValidationFuture::ready(Err(Rejection::invalid_token(
                    UNKNOWN_ISSUER,
                )))),
                Begin::Busy(next) if next > Instant::now() + shared.lookup_wait => {
                    Err(ValidationFuture::ready(Err(Shared::<C>::busy(next))))
                }
                Begin::Busy(next) => Err(ValidationFuture::pending(Shared::wait_turn(
                    Arc::clone(shared),
                    Arc::clone(resolve),
                    iss.to_owned(),
                    token.to_owned(),
                    next,
                ))),
                Begin::Wait(lookup) => Err(ValidationFuture::pending(Shared::after_lookup(
                    Arc::clone(shared),
                    lookup,
                    iss.to_owned(),
                    token.to_owned(),
                ))),
            }
        });
        match routed {
            Ok(Ok(validator)) => validator.validate(token),
            Ok(Err(answer)) => answer,
            Err(rejection) => ValidationFuture::ready(Err(rejection)),
        }
    }

    fn recheck(&self, token: &str, claims: C) -> ValidationFuture<C> {
        // Issuers are never removed: the one that accepted the token is still here.
        match with_unverified_issuer(token, |iss| self.shared.route(iss)) {
            Ok(Some(validator)) => validator.recheck(token, claims),
            Ok(None) => ValidationFuture::ready(Err(Rejection::invalid_token(UNKNOWN_ISSUER))),
            Err(rejection) => ValidationFuture::ready(Err(rejection)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(payload: &str) -> String {
        format!("e30.{}.c2ln", URL_SAFE_NO_PAD.encode(payload))
    }

    fn iss(token: &str) -> Result<String, Rejection> {
        with_unverified_issuer(token, str::to_owned)
    }

    #[test]
    fn only_a_string_iss_of_a_json_object_is_read() {
        assert_eq!(
            iss(&token(r#"{"iss":"https://a.example"}"#)).unwrap(),
            "https://a.example"
        );
        assert_eq!(
            iss(&token(r#"{"iss":"https:\/\/a.example"}"#)).unwrap(),
            "https://a.example"
        );
        let refused = |payload: &str| iss(&token(payload)).unwrap_err();
        assert_eq!(
            refused(r#"{"sub":"x"}"#),
            Rejection::invalid_token(NO_ISSUER)
        );
        assert!(matches!(
            refused(r#"{"iss":1}"#),
            Rejection::InvalidToken(_)
        ));
        // A JSON array would fill a struct in serde: not a claims set.
        assert!(matches!(
            refused(r#"["https://a.example"]"#),
            Rejection::InvalidToken(_)
        ));
        // The claim twice: which would the signature check read? Neither.
        assert!(matches!(
            refused(r#"{"iss":"https://a.example","iss":"https://b.example"}"#),
            Rejection::InvalidToken(_)
        ));
        assert!(matches!(iss("a.b"), Err(Rejection::InvalidToken(_))));
        assert!(matches!(
            iss("e30.!!!.c2ln"),
            Err(Rejection::InvalidToken(_))
        ));
        let longest = "x".repeat(MAX_TOKEN_LEN - 10);
        assert!(matches!(
            iss(&format!("e30.{longest}.c2ln")),
            Err(Rejection::InvalidToken(_))
        ));
    }
}
