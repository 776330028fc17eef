//! [`Refreshing`]: a token cache that reads without locks and refreshes once for
//! every concurrent caller.

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use http::HeaderValue;
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tracing::Instrument;

use super::authorizer::{Authorizer, Credential, CredentialFuture};
use super::revoke::Revocation;
use super::source::TokenSource;
use super::store::TokenStore;
use crate::flight::{Joined, SingleFlight, STALL};
use crate::metrics;
use crate::sync::{AtomicU64, Mutex, Ordering, SwapOption};
use crate::{Error, Lineage, Token};

/// A token as the cache holds it: the token, its header, and when to refresh it.
struct Cached {
    token: Token,
    credential: Credential,
    /// After this instant the token is stale: served, but a refresh starts.
    refresh_at: Option<Instant>,
    /// After this instant the token is not served.
    usable_until: Option<Instant>,
}

impl Cached {
    /// `latency`: how long a refresh takes, as observed. A token is not sent in its
    /// last `latency` (the request carrying it could arrive after it expired), and
    /// its refresh starts at least twice that before it expires, so that the new
    /// token is there before the old one stops being served.
    fn new(token: Token, config: &Config, latency: Duration) -> Self {
        let now = Instant::now();
        let expires = token
            .expires_at()
            .or_else(|| config.default_lifetime.and_then(|d| now.checked_add(d)));
        let lifetime = |until: Instant| until.saturating_duration_since(now);
        // Never more than half the lifetime left unused.
        let usable_until = expires.map(|until| until - latency.min(lifetime(until) / 2));
        let refresh_at = expires.map(|until| {
            let jitter = random_up_to(config.jitter);
            let margin = config
                .margin(lifetime(until), jitter)
                .max(latency.saturating_mul(2).min(lifetime(until) / 2));
            until - margin
        });
        Cached {
            credential: Credential::authorization(token.authorization().clone()),
            token,
            refresh_at,
            usable_until,
        }
    }

    /// A copy that is no longer served, but keeps the refresh token for the refresh.
    fn rejected(&self, now: Instant) -> Self {
        Cached {
            token: self.token.clone(),
            credential: self.credential.clone(),
            refresh_at: Some(now),
            usable_until: Some(now),
        }
    }

    /// A copy still served, refreshed at `at` at the latest: a `401` while
    /// 401-triggered refreshes are throttled.
    fn retry_at(&self, at: Instant) -> Self {
        Cached {
            token: self.token.clone(),
            credential: self.credential.clone(),
            refresh_at: Some(self.refresh_at.map_or(at, |r| r.min(at))),
            usable_until: self.usable_until,
        }
    }

    fn usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }

    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }
}

#[derive(Clone, Debug)]
struct Config {
    /// `None`: the default margin, [`DEFAULT_REFRESH_BEFORE`] capped at a tenth of the
    /// lifetime; `Some`: the margin set, capped at half the lifetime.
    refresh_before: Option<Duration>,
    jitter: Duration,
    default_lifetime: Option<Duration>,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// The longest a caller waits for a refresh before it gets a retryable error;
    /// `None`: [`DEFAULT_WAIT_LIMIT`] for a source that shares tokens (a fleet), no
    /// limit of the cache's own for another (its endpoint's timeout, or a login's
    /// expiry, bounds it).
    wait_limit: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_before: None,
            jitter: Duration::from_secs(10),
            default_lifetime: None,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            wait_limit: None,
        }
    }
}

impl Config {
    /// How long before the end of a token's `lifetime` its refresh starts.
    ///
    /// With the default settings a token is refreshed 60 s (plus jitter) before it
    /// expires, but never before the last tenth of its life: a 3 s token is used for
    /// 2.7 s, one token request per lifetime. Half the lifetime, the cap of an explicit
    /// [`refresh_before`](RefreshingBuilder::refresh_before), would cost two.
    fn margin(&self, lifetime: Duration, jitter: Duration) -> Duration {
        match self.refresh_before {
            None => (DEFAULT_REFRESH_BEFORE + jitter).min(lifetime / 10),
            Some(margin) => (margin + jitter).min(lifetime / 2),
        }
    }
}

/// The default refresh margin of [`Refreshing`]: a token is refreshed this long
/// (plus jitter) before it expires, or in the last tenth of its lifetime when that is
/// shorter.
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// The default of [`RefreshingBuilder::wait_limit`] for a source that
/// [shares tokens](TokenSource::shares_tokens) (a fleet): one default fleet lock TTL.
pub const DEFAULT_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// The longest `Retry-After` honoured: a token endpoint asking for more is asked
/// again after an hour.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);

/// `hold_until` while a refresh runs: stale callers need not try to start one.
const RUNNING: u64 = u64::MAX;
/// `hold_until` after `invalid_grant` with nothing shared: nothing is tried until a
/// new token is set.
const TERMINAL: u64 = u64::MAX - 1;

#[derive(Default)]
struct Failure {
    /// Refreshes that failed in a row, and the last error.
    consecutive: u32,
    last: Option<Error>,
    /// The token whose refresh token the endpoint refused (`invalid_grant`), and the
    /// refusal: that refresh token is never presented again.
    dead: Option<(Lineage, Error)>,
    /// When the server last rejected a token (`401`).
    last_rejection: Option<Instant>,
    /// 401-triggered refreshes while rejections go on, and the earliest instant the
    /// next one may start.
    rejection_refreshes: u32,
    next_rejection_refresh: Option<Instant>,
    /// Set by `logout`, cleared by `set_token`: nothing is fetched meanwhile.
    logged_out: bool,
}

struct Shared<S> {
    current: SwapOption<Cached>,
    source: S,
    store: Option<Arc<dyn TokenStore>>,
    revocation: Option<Box<Revocation>>,
    config: Config,
    flight: SingleFlight<Arc<Cached>, Error>,
    failure: Mutex<Failure>,
    /// Nanoseconds since `epoch` before which no refresh starts ([`RUNNING`],
    /// [`TERMINAL`], a backoff deadline, or 0). Read without a lock on the stale path.
    hold_until: AtomicU64,
    epoch: Instant,
    refreshes: AtomicU64,
    /// Bumped by `set_token`: a refresh that started before sees that its outcome,
    /// a failure included, no longer matters.
    generation: AtomicU64,
    /// Refresh flights started. A flight whose number is no longer the latest was
    /// abandoned (nobody drove it): its late outcome is published only if newer.
    runs: AtomicU64,
    waits: AtomicU64,
    save_failures: AtomicU64,
    /// A token served but not yet in the store (its save failed, or it was set or
    /// given at start-up): written before the next refresh reads the store.
    unsaved: Mutex<Option<Token>>,
    /// Held across every write to the store together with the check that allows it
    /// (the generation), and across a logout's read, revocation and clear: a save
    /// that a logout did not see lands before the logout's clear, never after it.
    store_gate: crate::sync::StoreGate,
    /// The refresh latency observed (nanoseconds): the longest recent one, decaying
    /// by a quarter at each refresh.
    latency: AtomicU64,
    /// Set when the watcher of [`TokenSource::ended_elsewhere`] was started (once,
    /// on the first refresh inside a runtime); dropped with the cache, which ends it.
    watcher: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
}

/// A token cache in front of a [`TokenSource`]; an [`Authorizer`].
///
/// Cloning is cheap and every clone shares the one cache.
///
/// # States of the cached token
///
/// | state | when | a caller |
/// |---|---|---|
/// | fresh | before `refresh_at` | gets it: one atomic load and a clock compare |
/// | stale | between `refresh_at` and expiry | gets it, and starts one background refresh if none runs and no backoff holds |
/// | expired / none | after expiry, after a `401`, or before the first fetch | waits for the one refresh in flight (or starts it); during backoff gets the last error at once |
///
/// `refresh_at` is the expiry minus 60 s (plus jitter, so replicas do not refresh in
/// step), but never earlier than the last tenth of the token's lifetime: a short-lived
/// token costs one token request per lifetime too (a 3 s token is refreshed after
/// 2.7 s). An explicit [`refresh_before`](RefreshingBuilder::refresh_before) margin is
/// honoured up to half the token's lifetime.
///
/// # Lineage: newer only
///
/// Every token carries a [`Lineage`]: the cache replaces its token only with a
/// strictly newer one. A store is read before each refresh and its token adopted
/// only when it is newer than the one in memory (another process refreshed); a
/// token given with [`initial_token`](RefreshingBuilder::initial_token) or
/// [`set_token`](Refreshing::set_token) is the newest there is, and is written to the
/// store. A failed save is counted ([`RefreshStats::save_failures`]), logged, and
/// retried before the next refresh; the cache keeps serving the newer token, and
/// never goes back to the store's older one.
///
/// # Failures
///
/// A failed refresh is reported to every caller that waited for it. The next attempt
/// waits an exponential backoff with jitter, or the endpoint's `Retry-After`
/// (seconds or an HTTP-date) when longer, up to [`RETRY_AFTER_CAP`]; meanwhile
/// callers with no valid token get the last error at once and a still-valid token
/// keeps being served.
///
/// `invalid_grant` means the refresh token that was presented is dead, and only its
/// owner may declare the session over: before giving up, the cache reads its store
/// again and adopts a newer token that another process saved (it may have spent the
/// same refresh token first). Without a store, and with a source that shares
/// nothing, `invalid_grant` is terminal: every caller without a valid token gets
/// [`Error::InvalidGrant`] until [`Refreshing::set_token`] gives a new one. With a
/// store, or a source that [shares tokens](TokenSource::shares_tokens) (a fleet),
/// callers get [`Error::InvalidGrant`] too, but the cache keeps looking for a newer
/// token after each backoff, and never presents the dead refresh token again.
///
/// A server that rejects the token (`401`) gets it dropped, and the next caller
/// fetches a new one at once: it may have been revoked. 401-triggered refreshes are
/// throttled by time: at least the initial backoff apart, the gap doubling (up to
/// the maximum backoff) while rejections go on, whatever other servers accept. A
/// token rejected while the throttle holds keeps being served (another API may
/// accept it; one that refuses every token answers `401` itself) and is refreshed
/// when the throttle ends. An API that refuses every token costs the token endpoint
/// one request per backoff, not one per API request.
///
/// A source that can tell when another process ended the session
/// ([`TokenSource::ended_elsewhere`]: a [`SharedFileSource`](super::SharedFileSource)
/// whose file became a logout's tombstone) is watched by one task per cache, started
/// with the first refresh inside a runtime and ended when the cache is dropped: the
/// token stops being served at once, and the next caller gets the source's answer
/// (the logout error, or a new login's token).
///
/// Nobody waits on a refresh that nobody drives: a refresh runs on the runtime of
/// the caller that started it, and if that runtime stops driving it (a
/// current-thread runtime behind a blocking wrapper, idle between calls) for five
/// seconds, a waiter abandons it and starts another on its own runtime.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_bearer::client::{Refreshing, TokenEndpoint};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?.client_id("cli");
/// let authorizer = Refreshing::builder(endpoint.refresh_token("my-refresh-token"))
///     .refresh_before(Duration::from_secs(120))
///     .build();
/// # Ok(()) }
/// ```
pub struct Refreshing<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Refreshing<S> {
    fn clone(&self) -> Self {
        Refreshing {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Configures a [`Refreshing`] cache; made by [`Refreshing::builder`].
#[must_use]
pub struct RefreshingBuilder<S> {
    source: S,
    store: Option<Arc<dyn TokenStore>>,
    revocation: Option<Revocation>,
    config: Config,
    initial: Option<Token>,
}

impl<S: TokenSource> RefreshingBuilder<S> {
    /// How long before expiry a refresh starts in the background, capped at half of
    /// each token's lifetime.
    ///
    /// By default 60 s ([`DEFAULT_REFRESH_BEFORE`]) capped at a tenth of each token's
    /// lifetime, so that a short-lived token is refreshed once per lifetime: set a
    /// margin only when the token endpoint needs longer to answer.
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.config.refresh_before = Some(margin);
        self
    }

    /// Up to this much is added at random to `refresh_before`, so that many
    /// processes with the same token do not refresh at the same instant. Default 10 s.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.config.jitter = jitter;
        self
    }

    /// The lifetime assumed for a token issued without `expires_in`. By default
    /// such a token is used until the server rejects it.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.default_lifetime = Some(lifetime);
        self
    }

    /// The backoff after a failed refresh: `initial`, doubling up to `max`, each
    /// with jitter. Default 1 s to 60 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.config.backoff_initial = initial;
        self.config.backoff_max = max.max(initial);
        self
    }

    /// The longest a caller with no valid token waits for a refresh. After it the
    /// caller gets [`Error::Timeout`] (retryable) while the refresh goes on in the
    /// background, and the next caller takes its token. Applies inside a tokio
    /// runtime.
    ///
    /// By default 30 s ([`DEFAULT_WAIT_LIMIT`], one default
    /// [`lock_ttl`](crate::redis::FleetSource::lock_ttl)) with a source that
    /// [shares tokens](TokenSource::shares_tokens), a fleet, where a replica may wait
    /// up to three lock TTLs for another's refresh; no limit of the cache's own with
    /// other sources, whose wait the token endpoint's timeout bounds (or, for an
    /// interactive login, the person).
    pub fn wait_limit(mut self, limit: Duration) -> Self {
        self.config.wait_limit = Some(limit);
        self
    }

    /// A token to start with (for example one read from the environment), used
    /// until it is due for refresh. It is the newest token there is: with a
    /// [store](Self::store) it is written there (at once when the cache is built
    /// inside a runtime, else before the first refresh), and never replaced by an
    /// older stored one.
    pub fn initial_token(mut self, token: Token) -> Self {
        self.initial = Some(token);
        self
    }

    /// Keeps tokens in `store`: read before each refresh (a strictly newer token
    /// saved by another process is adopted, and its refresh token used), and every
    /// new token saved before it is served, so a rotated refresh token is never lost.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// The revocation endpoint (RFC 7009) that [`Refreshing::logout`] revokes the
    /// tokens at: [`TokenEndpoint::revocation`](super::TokenEndpoint::revocation) of a
    /// discovered provider, or [`Revocation::new`].
    pub fn revocation(mut self, revocation: Revocation) -> Self {
        self.revocation = Some(revocation);
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Refreshing<S> {
        // Given now: newer than anything stored before.
        let initial = self.initial.map(|t| t.with_lineage(Lineage::next()));
        let current = initial
            .as_ref()
            .map(|t| Arc::new(Cached::new(t.clone(), &self.config, Duration::ZERO)));
        let unsaved = initial.filter(|_| self.store.is_some());
        let flush = unsaved.is_some();
        let cache = Refreshing {
            shared: Arc::new(Shared {
                current: SwapOption::new(current),
                source: self.source,
                store: self.store,
                revocation: self.revocation.map(Box::new),
                config: self.config,
                flight: SingleFlight::default(),
                failure: Mutex::new(Failure::default()),
                hold_until: AtomicU64::new(0),
                epoch: Instant::now(),
                refreshes: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                runs: AtomicU64::new(0),
                waits: AtomicU64::new(0),
                save_failures: AtomicU64::new(0),
                unsaved: Mutex::new(unsaved),
                store_gate: crate::sync::StoreGate::new(()),
                latency: AtomicU64::new(0),
                watcher: std::sync::OnceLock::new(),
            }),
        };
        if let (true, Ok(handle)) = (flush, tokio::runtime::Handle::try_current()) {
            let shared = Arc::clone(&cache.shared);
            handle.spawn(async move {
                let _ = shared.flush_unsaved().await;
            });
        }
        cache
    }
}

/// Counters of a [`Refreshing`] cache, for tests, demos and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefreshStats {
    /// Refreshes started (calls to the token source).
    pub refreshes: u64,
    /// Callers that had to wait for a refresh (no valid token at hand).
    pub waits: u64,
    /// Tokens the store failed to save (each is saved again before the next refresh).
    pub save_failures: u64,
}

impl<S: TokenSource> Refreshing<S> {
    /// A cache with the default settings; the first caller fetches the first token.
    pub fn new(source: S) -> Self {
        Self::builder(source).build()
    }

    /// A builder to configure the cache.
    pub fn builder(source: S) -> RefreshingBuilder<S> {
        RefreshingBuilder {
            source,
            store: None,
            revocation: None,
            config: Config::default(),
            initial: None,
        }
    }

    /// A valid token, fetched if need be (waiting like any caller).
    ///
    /// # Errors
    /// The refresh error, shared with every caller that waited for it.
    pub async fn token(&self) -> Result<Token, Error> {
        let now = Instant::now();
        if let Some(c) = self.shared.current.load_full().filter(|c| c.usable(now)) {
            if !c.fresh(now) {
                self.shared.refresh_in_background(now);
            }
            return Ok(c.token.clone());
        }
        self.shared
            .wait_for_refresh(now)
            .await
            .map(|c| c.token.clone())
    }

    /// Replaces the cached token, for example after the user logged in again, and
    /// clears any backoff or `invalid_grant` state. The token is served at once,
    /// even before this future is awaited to its end.
    ///
    /// The token is the newest there is (its [`Lineage`] is set now): a refresh that
    /// is running meanwhile does not replace it, its failure (even `invalid_grant`)
    /// holds nothing back, and an older token in the store is never adopted over it.
    ///
    /// # Errors
    /// With a [store](RefreshingBuilder::store), the store's error when it could not
    /// save the token: the token is in use anyway, and saved again before the next
    /// refresh.
    pub fn set_token(
        &self,
        token: Token,
    ) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let token = {
            // One step for a refresh starting meanwhile (it reads the generation under
            // this lock): either it sees the old generation, and any token it makes
            // after this is older than the set one or finds the generation moved; or
            // it sees the new one, and the set token as the one to refresh from.
            let mut failure = shared
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.generation.fetch_add(1, Ordering::AcqRel);
            let token = token.with_lineage(Lineage::next());
            shared.current.store(Some(Arc::new(Cached::new(
                token.clone(),
                &shared.config,
                shared.latency(),
            ))));
            failure.logged_out = false;
            shared.clear_failures(&mut failure);
            token
        };
        if shared.store.is_some() {
            shared.keep_unsaved(token);
        }
        async move { shared.flush_unsaved().await }
    }

    /// Logs out: revokes the session's tokens at the
    /// [revocation endpoint](RefreshingBuilder::revocation) (RFC 7009: the refresh
    /// token first, which on most providers ends the grant, then the access token),
    /// and forgets them here and in the [store](RefreshingBuilder::store).
    ///
    /// The tokens revoked are the one in memory and the one in the store (another
    /// process, or an earlier run, may have saved a newer one). They stop being
    /// served at once, even before this future is awaited; from then on callers get
    /// [`Error::NoToken`] (nothing is fetched, not even by a refresh that was running)
    /// until [`set_token`](Refreshing::set_token) gives a token from a new login.
    ///
    /// The store is read and cleared before the revocation requests are sent: a
    /// logout cut short while the provider is slow (dropped, or bounded with a
    /// timeout) has forgotten the tokens here and in the store already, and a new
    /// login meanwhile is saved without waiting for the provider.
    ///
    /// # Errors
    /// The first failure, once everything else was done: a revocation the server
    /// refused or did not answer (the tokens are forgotten here all the same, and may
    /// stay valid at the provider until they expire), a store that could not be
    /// read or cleared, or [`Error::Configuration`] when no revocation endpoint is
    /// configured (the tokens were forgotten but not revoked).
    pub fn logout(&self) -> impl std::future::Future<Output = Result<(), Error>> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        let (current, generation) = {
            let mut failure = shared
                .failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A refresh running meanwhile sees the generation move and drops its result.
            let generation = shared
                .generation
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1);
            failure.logged_out = true;
            failure.consecutive = 0;
            failure.dead = None;
            failure.last = Some(logged_out());
            shared.hold_until.store(TERMINAL, Ordering::Release);
            shared
                .unsaved
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            let current = shared.current.load_full().map(|c| c.token.clone());
            shared.current.store(None);
            (current, generation)
        };
        tracing::info!("logging out");
        async move {
            let mut first_error = None;
            let mut tokens: Vec<Token> = current.into_iter().collect();
            {
                // One step with every save: a refresh's save that began before the
                // logout has landed (and its token is read, cleared and revoked
                // here); one that comes later sees the logout and writes nothing.
                // The gate covers the store only: a revocation at a provider that
                // hangs holds no save (a new login's) back, and a logout cut short
                // while revoking has forgotten the tokens already.
                let _gate = shared.store_gate.lock().await;
                // A new login (`set_token`) since: its token is in the store, not ours.
                let store = shared
                    .store
                    .as_ref()
                    .filter(|_| shared.generation.load(Ordering::Acquire) == generation);
                if let Some(store) = store {
                    match store.load().await {
                        Ok(Some(stored)) => tokens.push(stored),
                        Ok(None) => {}
                        Err(error) => {
                            first_error.get_or_insert(error);
                        }
                    }
                    if let Err(error) = store.clear().await {
                        first_error.get_or_insert(error);
                    }
                }
            }
            match &shared.revocation {
                Some(revocation) => {
                    let mut revoked: Vec<(String, Option<String>)> = Vec::new();
                    for token in tokens {
                        let key = (
                            token.access_token().expose_secret().to_owned(),
                            token.refresh_token().map(|r| r.expose_secret().to_owned()),
                        );
                        if revoked.contains(&key) {
                            continue;
                        }
                        if let Err(error) = revocation.revoke_token(&token).await {
                            tracing::warn!(%error, "could not revoke a token at logout");
                            first_error.get_or_insert(error);
                        }
                        revoked.push(key);
                    }
                }
                None if tokens.is_empty() => {}
                None => {
                    first_error.get_or_insert(Error::Configuration(
                        "logged out without revoking the tokens: no revocation endpoint is configured (RefreshingBuilder::revocation)".into(),
                    ));
                }
            }
            first_error.map_or(Ok(()), Err)
        }
    }

    /// Forgets that the current token is valid: the next caller waits for a refresh
    /// (which still uses the token's refresh token).
    pub fn invalidate(&self) {
        let now = Instant::now();
        self.shared
            .current
            .rcu(|cur| cur.as_ref().map(|c| Arc::new(c.rejected(now))));
    }

    /// The counters of this cache.
    pub fn stats(&self) -> RefreshStats {
        RefreshStats {
            refreshes: self.shared.refreshes.load(Ordering::Relaxed),
            waits: self.shared.waits.load(Ordering::Relaxed),
            save_failures: self.shared.save_failures.load(Ordering::Relaxed),
        }
    }
}

impl<S: TokenSource> Shared<S> {
    /// The refresh latency observed.
    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency.load(Ordering::Acquire))
    }

    /// Records a refresh that took `took`.
    fn observe_latency(&self, took: Duration) {
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .latency
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some(took.max(old - old / 4))
            });
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(TERMINAL - 1)
    }

    /// The error to give at once to a caller with no valid token, during backoff or
    /// after `invalid_grant`.
    fn held_error(&self, now: Instant) -> Option<Error> {
        let hold = self.hold_until.load(Ordering::Acquire);
        if hold == RUNNING || self.nanos(now) >= hold {
            return None;
        }
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.last.clone()
    }

    /// A usable token is in place: no backoff, no failure, no dead refresh token.
    fn clear_failures(&self, failure: &mut Failure) {
        failure.consecutive = 0;
        failure.last = None;
        failure.dead = None;
        let _ = self
            .hold_until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h != RUNNING).then_some(0)
            });
    }

    /// Starts the watcher of [`TokenSource::ended_elsewhere`], once, inside a runtime:
    /// one task holding only a `Weak` to the cache, ended when the cache is dropped.
    fn watch_ended_elsewhere(self: &Arc<Self>) {
        if self.watcher.get().is_some() {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
        if self.watcher.set(dropped_tx).is_err() {
            return;
        }
        if let Some(ended) = self.source.ended_elsewhere() {
            handle.spawn(watch_logout(Arc::downgrade(self), ended, dropped));
        }
    }

    /// The session was ended in another process: the token is no longer served (it
    /// is kept as the one to replace, so the source can tell it is older than the
    /// logout). Nothing is revoked or cleared: the other process did that.
    fn ended_elsewhere_now(&self) {
        let now = Instant::now();
        self.current
            .rcu(|cur| cur.as_ref().map(|c| Arc::new(c.rejected(now))));
        tracing::info!("the session was ended in another process; its token is no longer served");
    }

    fn start(
        self: &Arc<Self>,
    ) -> impl std::future::Future<Output = Result<Arc<Cached>, Error>> + Send + 'static {
        self.watch_ended_elsewhere();
        self.hold_until.store(RUNNING, Ordering::Release);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let run = self.runs.fetch_add(1, Ordering::AcqRel).wrapping_add(1);
        let guard = RunningGuard(Arc::clone(self));
        let shared = Arc::clone(self);
        let (attempt, generation) = {
            let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            // Under the lock: see `set_token`.
            (
                failure.consecutive + 1,
                self.generation.load(Ordering::Acquire),
            )
        };
        async move {
            let _guard = guard;
            let started = Instant::now();
            let result = shared.obtain(generation).await;
            metrics::refresh(&result, started.elapsed());
            let elapsed_ms = started.elapsed().as_millis() as u64;
            if result.is_ok() {
                shared.observe_latency(started.elapsed());
            }
            // Abandoned (its runtime stopped driving it) and replaced by another.
            let abandoned = shared.runs.load(Ordering::Acquire) != run;
            match result {
                Ok(token) => match shared.publish(token.clone(), generation) {
                    Ok(cached) => {
                        tracing::debug!(
                            attempt,
                            elapsed_ms,
                            abandoned,
                            expires_in_s = cached.token.expires_in().map(|d| d.as_secs()),
                            "token refreshed"
                        );
                        Ok(cached)
                    }
                    Err(error) => {
                        // Logged out meanwhile: this token is nobody's, and is
                        // forgotten and revoked like the others.
                        shared.forget_after_logout(&token).await;
                        if let Some(revocation) = &shared.revocation {
                            let _ = revocation.revoke_token(&token).await;
                        }
                        tracing::debug!(attempt, elapsed_ms, "logged out during the refresh");
                        Err(error)
                    }
                },
                Err(error) => {
                    tracing::warn!(attempt, elapsed_ms, %error, "token refresh failed");
                    shared.fail(error, generation, abandoned)
                }
            }
        }
        .instrument(tracing::debug_span!("token_refresh", attempt))
    }

    /// The next token: a newer one from the store, or one from the source (saved
    /// before it is served).
    async fn obtain(&self, generation: u64) -> Result<Token, Error> {
        let _ = self.flush_unsaved().await;
        let mut previous = self.current.load_full().map(|c| c.token.clone());
        if let Some(stored) = self.newer_stored(previous.as_ref()).await {
            if !stored.is_expired() {
                tracing::debug!("adopted a newer token from the store");
                return Ok(stored);
            }
            // Expired, but its refresh token is the newest.
            previous = Some(stored);
        }
        let dead = {
            let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            failure.dead.clone()
        };
        if let (Some((lineage, error)), Some(p)) = (dead, previous.as_ref()) {
            if p.lineage() == lineage && !self.source.shares_tokens() {
                return Err(error);
            }
        }
        match self.source.fetch(previous.as_ref()).await {
            Ok(token) => {
                // Saved before it is served: with rotation, the old refresh token is
                // dead now and this one must not be lost. Not if a token was set
                // meanwhile (that one is the newest) or the cache was logged out: the
                // check and the save are one step against `logout` (the gate).
                if self.store.is_some() {
                    let _gate = self.store_gate.lock().await;
                    if self.generation.load(Ordering::Acquire) == generation {
                        self.save(&token).await;
                    }
                }
                Ok(token)
            }
            Err(error @ Error::InvalidGrant(_)) => {
                if let Some(p) = &previous {
                    let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
                    failure.dead = Some((p.lineage(), error.clone()));
                }
                // Dead is declared by the owner: another process sharing the store
                // may have refreshed with the same refresh token first.
                match self.newer_stored(previous.as_ref()).await {
                    Some(stored) if !stored.is_expired() => {
                        tracing::info!(
                            "the refresh token was spent by another process; adopted its newer token"
                        );
                        Ok(stored)
                    }
                    _ => Err(error),
                }
            }
            Err(error) => Err(error),
        }
    }

    /// A refresh's `token` came after a logout. A source that writes a store itself
    /// (a [`FleetSource`](crate::redis::FleetSource) writes Redis inside `fetch`,
    /// outside the store gate) may have put it in the store the logout cleared: it
    /// is cleared again if it is the stored one, unless a new login came since.
    async fn forget_after_logout(&self, token: &Token) {
        let Some(store) = &self.store else { return };
        let _gate = self.store_gate.lock().await;
        if !self
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .logged_out
        {
            return;
        }
        let ours = token.access_token().expose_secret();
        match store.load().await {
            Ok(Some(stored)) if stored.access_token().expose_secret() == ours => {
                if let Err(error) = store.clear().await {
                    tracing::warn!(%error, "could not clear the token a refresh stored after the logout");
                }
            }
            Ok(_) => {}
            Err(error) => {
                metrics::store_failure(metrics::StoreOp::Load);
                tracing::warn!(%error, "could not read the token store after a logout");
            }
        }
    }

    /// The store's token, if it is strictly newer than `ours`.
    async fn newer_stored(&self, ours: Option<&Token>) -> Option<Token> {
        let store = self.store.as_ref()?;
        match store.load().await {
            Ok(Some(stored)) if ours.is_none_or(|ours| stored.is_newer_than(ours)) => Some(stored),
            Ok(_) => None,
            Err(error) => {
                metrics::store_failure(metrics::StoreOp::Load);
                tracing::warn!(%error, "could not read the token store");
                None
            }
        }
    }

    /// Saves a new token; when that fails, keeps it to save before the next refresh.
    async fn save(&self, token: &Token) {
        let Some(store) = &self.store else { return };
        if let Err(error) = store.save(token).await {
            self.save_failures.fetch_add(1, Ordering::Relaxed);
            metrics::store_failure(metrics::StoreOp::Save);
            tracing::warn!(%error, "could not save the new token; serving it, and saving it again before the next refresh");
            self.keep_unsaved(token.clone());
        }
    }

    /// Remembers `token` as not yet saved, unless a newer one waits already.
    fn keep_unsaved(&self, token: Token) {
        let mut unsaved = self.unsaved.lock().unwrap_or_else(PoisonError::into_inner);
        if unsaved.as_ref().is_none_or(|u| !u.is_newer_than(&token)) {
            *unsaved = Some(token);
        }
    }

    /// Writes the token that is not yet in the store, if any.
    async fn flush_unsaved(&self) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        // Taken and written under the gate: a logout either took it first, or clears
        // the store after this save.
        let _gate = self.store_gate.lock().await;
        let pending = self
            .unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(token) = pending else { return Ok(()) };
        match store.save(&token).await {
            Ok(()) => Ok(()),
            Err(error) => {
                self.save_failures.fetch_add(1, Ordering::Relaxed);
                metrics::store_failure(metrics::StoreOp::Save);
                tracing::warn!(%error, "could not save the token to the store; it is in use, and saved again before the next refresh");
                self.keep_unsaved(token);
                Err(error)
            }
        }
    }

    /// Makes `token` the current one and ends any backoff, unless the current one is
    /// newer and still usable (a late, abandoned refresh), or a token was set (a new
    /// login) since the refresh started, or the cache was logged out: all decided
    /// under the lock `set_token` and `logout` take, so neither can slip in between.
    fn publish(&self, token: Token, generation: u64) -> Result<Arc<Cached>, Error> {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.logged_out {
            return Err(logged_out());
        }
        let now = Instant::now();
        if self.generation.load(Ordering::Acquire) != generation {
            if let Some(set) = self.current.load_full().filter(|c| c.usable(now)) {
                tracing::debug!("a token was set during the refresh; keeping it");
                return Ok(set);
            }
        }
        let cached = Arc::new(Cached::new(token, &self.config, self.latency()));
        self.current.rcu(|current| match current {
            Some(c) if c.usable(now) && c.token.is_newer_than(&cached.token) => Some(Arc::clone(c)),
            _ => Some(Arc::clone(&cached)),
        });
        self.clear_failures(&mut failure);
        Ok(self.current.load_full().unwrap_or(cached))
    }

    /// A refresh failed: the backoff starts, unless its outcome no longer matters (a
    /// token was set since it started, which is served; a logout; or it was
    /// abandoned and another runs).
    fn fail(&self, error: Error, generation: u64, abandoned: bool) -> Result<Arc<Cached>, Error> {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        if failure.logged_out {
            return Err(logged_out());
        }
        if self.generation.load(Ordering::Acquire) != generation {
            let now = Instant::now();
            if let Some(set) = self.current.load_full().filter(|c| c.usable(now)) {
                return Ok(set);
            }
            return Err(error);
        }
        if !abandoned {
            self.record_failure(&mut failure, &error);
        }
        Err(error)
    }

    fn record_failure(&self, failure: &mut Failure, error: &Error) {
        failure.consecutive = failure.consecutive.saturating_add(1);
        failure.last = Some(error.clone());
        // Terminal only when nothing else can hold a newer token.
        let terminal = matches!(error, Error::InvalidGrant(_))
            && self.store.is_none()
            && !self.source.shares_tokens();
        let hold = if terminal {
            TERMINAL
        } else {
            let delay = self.backoff(failure.consecutive);
            let delay = match error.retry_after() {
                Some(asked) => delay.max(asked.min(RETRY_AFTER_CAP)),
                None => delay,
            };
            self.nanos(Instant::now() + delay)
        };
        self.hold_until.store(hold, Ordering::Release);
    }

    /// The wait before attempt `n + 1` after `n` failures: exponential, capped, with
    /// jitter in `[base/2, base]` so that replicas spread out.
    fn backoff(&self, n: u32) -> Duration {
        let base = self.backoff_base(n);
        base / 2 + random_up_to(base / 2)
    }

    /// `backoff_initial` doubled `n - 1` times, capped at `backoff_max`.
    fn backoff_base(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(20);
        self.config
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max)
    }

    /// Starts a refresh that no caller waits for, unless one runs or a backoff holds.
    fn refresh_in_background(self: &Arc<Self>, now: Instant) {
        if self.nanos(now) < self.hold_until.load(Ordering::Acquire)
            || tokio::runtime::Handle::try_current().is_err()
        {
            return;
        }
        let _ = self.flight.join_or_start(
            || {
                let now = Instant::now();
                if self.current.load().as_ref().is_some_and(|c| c.fresh(now)) {
                    return Some(Err(Error::NoToken("already refreshed".into())));
                }
                self.held_error(now).map(Err)
            },
            || self.start(),
        );
    }

    /// Joins the refresh in flight, or starts one, for a caller with no valid token.
    fn join(self: &Arc<Self>) -> Joined<Arc<Cached>, Error> {
        self.flight.join_or_start(
            || {
                let now = Instant::now();
                if let Some(c) = self.current.load_full().filter(|c| c.usable(now)) {
                    return Some(Ok(c));
                }
                self.held_error(now).map(Err)
            },
            || self.start(),
        )
    }

    /// Waits for the refresh (joined or started) for a caller that has no valid
    /// token. A flight nobody drives is abandoned and another started.
    fn wait_for_refresh(
        self: &Arc<Self>,
        now: Instant,
    ) -> futures_util::future::BoxFuture<'static, Result<Arc<Cached>, Error>> {
        if let Some(error) = self.held_error(now) {
            return futures_util::future::ready(Err(error)).boxed();
        }
        let mut flight = match self.join() {
            Joined::Ready(result) => return futures_util::future::ready(result).boxed(),
            Joined::Flight(flight) => flight,
        };
        self.waits.fetch_add(1, Ordering::Relaxed);
        metrics::refresh_waiter();
        let waiting = metrics::Started::now();
        let shared = Arc::clone(self);
        let limit = self
            .config
            .wait_limit
            .or_else(|| self.source.shares_tokens().then_some(DEFAULT_WAIT_LIMIT));
        let deadline = limit.and_then(|limit| now.checked_add(limit));
        let limit = limit.unwrap_or_default();
        async move {
            loop {
                let waited = match deadline {
                    // The caller's own bound: the refresh goes on without it.
                    Some(deadline) if tokio::runtime::Handle::try_current().is_ok() => {
                        tokio::time::timeout_at(deadline, flight.wait()).await
                    }
                    _ => Ok(flight.wait().await),
                };
                let Ok(waited) = waited else {
                    metrics::refresh_waited(waiting);
                    tracing::debug!(
                        limit_ms = limit.as_millis() as u64,
                        "no token within the wait limit; the refresh goes on in the background"
                    );
                    return Err(Error::Timeout(crate::error::Endpoint::Token, limit));
                };
                if let Some(result) = waited {
                    metrics::refresh_waited(waiting);
                    return result;
                }
                tracing::warn!(
                    stalled_s = STALL.as_secs(),
                    "the token refresh is not driven (its runtime is idle or gone); starting another"
                );
                flight = match shared.join() {
                    Joined::Ready(result) => {
                        metrics::refresh_waited(waiting);
                        return result;
                    }
                    Joined::Flight(flight) => flight,
                };
            }
        }
        .boxed()
    }

    /// The server rejected `cached`, the current token: drop it now, or, while
    /// 401-triggered refreshes are throttled, keep serving it and refresh it when the
    /// throttle ends.
    fn reject(&self, current: &Option<Arc<Cached>>, cached: &Arc<Cached>, now: Instant) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let quiet = self.config.backoff_max.saturating_mul(2);
        if failure
            .last_rejection
            .is_none_or(|at| now.saturating_duration_since(at) >= quiet)
        {
            // Rejections stopped long enough ago: a new one is a first rejection.
            failure.rejection_refreshes = 0;
            failure.next_rejection_refresh = None;
        }
        failure.last_rejection = Some(now);
        let throttled_until = failure.next_rejection_refresh.filter(|at| now < *at);
        let replacement = match throttled_until {
            None => cached.rejected(now),
            Some(at) => {
                metrics::unauthorized_throttled();
                // Its refresh is due by then already.
                if cached.refresh_at.is_some_and(|r| r <= at) {
                    return;
                }
                cached.retry_at(at)
            }
        };
        let previous = self
            .current
            .compare_and_swap(current, Some(Arc::new(replacement)));
        if !previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, cached)) {
            return;
        }
        failure.rejection_refreshes = failure.rejection_refreshes.saturating_add(1);
        let refresh_at = throttled_until.unwrap_or(now);
        let gap = self.backoff_base(failure.rejection_refreshes);
        failure.next_rejection_refresh = Some(refresh_at + gap + random_up_to(gap / 10));
        match throttled_until {
            None => tracing::debug!("the server rejected the token; the next request refreshes it"),
            Some(at) => tracing::warn!(
                in_s = at.saturating_duration_since(now).as_secs_f64(),
                "the server rejected the token again soon after a refresh; still serving it, refreshed when the throttle ends"
            ),
        }
    }
}

/// Clears [`RUNNING`] if a refresh ends without recording an outcome (cancelled
/// before it finished, or panicked), so that stale callers can start another.
struct RunningGuard<S>(Arc<Shared<S>>);

impl<S> Drop for RunningGuard<S> {
    fn drop(&mut self) {
        let _ = self
            .0
            .hold_until
            .compare_exchange(RUNNING, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

impl<S: TokenSource> Authorizer for Refreshing<S> {
    fn credential(&self) -> CredentialFuture {
        let shared = &self.shared;
        {
            let current = shared.current.load();
            if let Some(cached) = current.as_ref() {
                // Fast path: a token with no expiry needs no clock.
                let Some(refresh_at) = cached.refresh_at else {
                    return CredentialFuture::ready(Ok(Some(cached.credential.clone())));
                };
                let now = Instant::now();
                if now < refresh_at {
                    return CredentialFuture::ready(Ok(Some(cached.credential.clone())));
                }
                if cached.usable(now) {
                    shared.refresh_in_background(now);
                    return CredentialFuture::ready(Ok(Some(cached.credential.clone())));
                }
            }
        }
        let waiting = shared.wait_for_refresh(Instant::now());
        // The refresh may already be decided (backoff, or a token published meanwhile).
        let mut waiting = waiting;
        match (&mut waiting).now_or_never() {
            Some(result) => CredentialFuture::ready(result.map(|c| Some(c.credential.clone()))),
            None => CredentialFuture::pending(async move {
                waiting.await.map(|c| Some(c.credential.clone()))
            }),
        }
    }

    fn on_unauthorized(&self, sent: &HeaderValue) {
        let current = self.shared.current.load();
        let Some(cached) = current.as_ref() else {
            return;
        };
        let now = Instant::now();
        // Only the token that was sent is dropped: a newer one may be in place already.
        if cached.credential.value != *sent || !cached.usable(now) {
            return;
        }
        self.shared.reject(&current, cached, now);
    }
}

impl<S> fmt::Debug for Refreshing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("Refreshing")
            .field("token", &current.as_ref().map(|c| &c.token))
            .field(
                "refresh_before",
                &self
                    .shared
                    .config
                    .refresh_before
                    .unwrap_or(DEFAULT_REFRESH_BEFORE),
            )
            .finish_non_exhaustive()
    }
}

/// Waits for each session end the source reports, and stops serving the cache's
/// token; ends when the cache is dropped (its `dropped` sender with it).
async fn watch_logout<S: TokenSource>(
    shared: std::sync::Weak<Shared<S>>,
    mut ended: futures_util::future::BoxFuture<'static, ()>,
    mut dropped: tokio::sync::oneshot::Receiver<()>,
) {
    use futures_util::future::{select, Either};
    loop {
        match select(ended, &mut dropped).await {
            Either::Left(((), _)) => {}
            Either::Right(_) => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.ended_elsewhere_now();
        let Some(next) = shared.source.ended_elsewhere() else {
            return;
        };
        drop(shared);
        ended = next;
    }
}

/// What callers get after [`Refreshing::logout`].
fn logged_out() -> Error {
    Error::NoToken("logged out; log in again".into())
}

/// A uniformly random duration in `[0, max]`.
fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}
