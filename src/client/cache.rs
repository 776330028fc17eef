//! [`Refreshing`]: a token cache that reads without locks and refreshes once for
//! every concurrent caller.

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use http::HeaderValue;
use tokio::time::Instant;
use tracing::Instrument;

use super::authorizer::{Authorizer, Credential, CredentialFuture};
use super::source::TokenSource;
use super::store::TokenStore;
use crate::flight::{Joined, SingleFlight};
use crate::sync::{AtomicU32, AtomicU64, Mutex, Ordering, SwapOption};
use crate::{Error, Token};

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
    fn new(token: Token, config: &Config) -> Self {
        let now = Instant::now();
        let usable_until = token
            .expires_at()
            .or_else(|| config.default_lifetime.and_then(|d| now.checked_add(d)));
        let refresh_at = usable_until.map(|until| {
            let lifetime = until.saturating_duration_since(now);
            let jitter = random_up_to(config.jitter);
            let margin = (config.refresh_before + jitter).min(lifetime / 2);
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

    fn usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|until| now < until)
    }

    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }
}

#[derive(Clone, Debug)]
struct Config {
    refresh_before: Duration,
    jitter: Duration,
    default_lifetime: Option<Duration>,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            refresh_before: Duration::from_secs(60),
            jitter: Duration::from_secs(10),
            default_lifetime: None,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// `hold_until` while a refresh runs: stale callers need not try to start one.
const RUNNING: u64 = u64::MAX;
/// `hold_until` after `invalid_grant`: nothing is tried until a new token is set.
const TERMINAL: u64 = u64::MAX - 1;

#[derive(Default)]
struct Failure {
    /// Refreshes that failed in a row, and the last error.
    consecutive: u32,
    last: Option<Error>,
    /// When the server last rejected a token. Kept across refreshes.
    last_rejection: Option<Instant>,
}

struct Shared<S> {
    current: SwapOption<Cached>,
    source: S,
    store: Option<Arc<dyn TokenStore>>,
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
    /// Tokens the server rejected in a row: with no answer accepted in between, and
    /// each within twice `backoff_max` of the one before.
    rejections: AtomicU32,
    waits: AtomicU64,
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
/// `refresh_at` is the expiry minus `refresh_before` (plus jitter, so replicas do not
/// refresh in step), but never earlier than half the token's lifetime: a short-lived
/// token is not refreshed all the time.
///
/// # Failures
///
/// A failed refresh is reported to every caller that waited for it. The next attempt
/// waits an exponential backoff with jitter (or the endpoint's `Retry-After`, when
/// longer); meanwhile callers with no valid token get the last error at once and a
/// still-valid token keeps being served. `invalid_grant` is terminal: the refresh token
/// is dead and retrying cannot help, so every caller without a valid token gets
/// [`Error::InvalidGrant`] until [`Refreshing::set_token`] gives a new one.
///
/// A server that rejects the token (`401`) gets it dropped, and the next caller
/// fetches a new one at once: it may have been revoked. When the new token is rejected
/// too, the next fetch waits the same backoff, and callers get [`Error::Rejected`]
/// meanwhile: an API that refuses every token (a wrong audience, say) costs the token
/// endpoint one request per backoff, not one per API request.
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
    config: Config,
    initial: Option<Token>,
}

impl<S: TokenSource> RefreshingBuilder<S> {
    /// How long before expiry a refresh starts in the background. Default 60 s.
    /// Capped at half of each token's lifetime.
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.config.refresh_before = margin;
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

    /// A token to start with (for example one read from the environment), used
    /// until it is due for refresh.
    pub fn initial_token(mut self, token: Token) -> Self {
        self.initial = Some(token);
        self
    }

    /// Keeps tokens in `store`: read before each refresh (a newer token saved by
    /// another process is adopted, and its refresh token used), and every new token
    /// saved before it is served, so a rotated refresh token is never lost.
    pub fn store(mut self, store: impl TokenStore) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Builds the cache.
    pub fn build(self) -> Refreshing<S> {
        let current = self.initial.map(|t| Arc::new(Cached::new(t, &self.config)));
        Refreshing {
            shared: Arc::new(Shared {
                current: SwapOption::new(current),
                source: self.source,
                store: self.store,
                config: self.config,
                flight: SingleFlight::default(),
                failure: Mutex::new(Failure::default()),
                hold_until: AtomicU64::new(0),
                epoch: Instant::now(),
                refreshes: AtomicU64::new(0),
                generation: AtomicU64::new(0),
                rejections: AtomicU32::new(0),
                waits: AtomicU64::new(0),
            }),
        }
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
    /// clears any backoff or `invalid_grant` state.
    ///
    /// A refresh that is running meanwhile does not replace this token, and its
    /// failure (even `invalid_grant`) holds nothing back.
    pub fn set_token(&self, token: Token) {
        let cached = Arc::new(Cached::new(token, &self.shared.config));
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
        self.shared.current.store(Some(cached));
        self.shared.reset_failures();
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
        }
    }
}

impl<S: TokenSource> Shared<S> {
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

    fn reset_failures(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.consecutive = 0;
        failure.last = None;
        if self.hold_until.load(Ordering::Acquire) != RUNNING {
            self.hold_until.store(0, Ordering::Release);
        }
    }

    fn start(
        self: &Arc<Self>,
    ) -> impl std::future::Future<Output = Result<Arc<Cached>, Error>> + Send + 'static {
        self.hold_until.store(RUNNING, Ordering::Release);
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        let guard = RunningGuard(Arc::clone(self));
        let shared = Arc::clone(self);
        let attempt = {
            let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
            failure.consecutive + 1
        };
        let generation = self.generation.load(Ordering::Acquire);
        async move {
            let _guard = guard;
            let started = Instant::now();
            let mut previous = shared.current.load_full().map(|c| c.token.clone());
            if let Some(store) = &shared.store {
                match adopt_stored(store.as_ref(), previous.as_ref()).await {
                    Stored::Fresh(token) => {
                        let cached = shared.publish(token);
                        tracing::debug!(attempt, "adopted a newer token from the store");
                        return Ok(cached);
                    }
                    Stored::Previous(token) => previous = Some(token),
                    Stored::Nothing => {}
                }
            }
            let result = shared.source.fetch(previous.as_ref()).await;
            let result = match (result, &shared.store) {
                (Ok(token), Some(store)) => {
                    // Saved before it is served: with rotation, the old refresh token
                    // is dead now and this one must not be lost.
                    if let Err(error) = store.save(&token).await {
                        tracing::error!(%error, "could not save the new token; serving it anyway");
                    }
                    Ok(token)
                }
                (result, _) => result,
            };
            let elapsed_ms = started.elapsed().as_millis() as u64;
            if shared.generation.load(Ordering::Acquire) != generation {
                // The application set a token meanwhile (a new login): it wins over
                // this refresh's outcome, whatever that was.
                let now = Instant::now();
                if let Some(set) = shared.current.load_full().filter(|c| c.usable(now)) {
                    tracing::debug!(
                        attempt,
                        elapsed_ms,
                        "a token was set during the refresh; keeping it"
                    );
                    return Ok(set);
                }
            }
            match result {
                Ok(token) => {
                    let cached = shared.publish(token);
                    tracing::debug!(
                        attempt,
                        elapsed_ms,
                        expires_in_s = cached.token.expires_in().map(|d| d.as_secs()),
                        "token refreshed"
                    );
                    Ok(cached)
                }
                Err(error) => {
                    shared.record_failure(&error);
                    tracing::warn!(attempt, elapsed_ms, %error, "token refresh failed");
                    Err(error)
                }
            }
        }
        .instrument(tracing::debug_span!("token_refresh", attempt))
    }

    /// Makes `token` the current one and ends any backoff.
    fn publish(&self, token: Token) -> Arc<Cached> {
        let cached = Arc::new(Cached::new(token, &self.config));
        self.current.store(Some(Arc::clone(&cached)));
        self.reset_failures();
        cached
    }

    fn record_failure(&self, error: &Error) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.consecutive = failure.consecutive.saturating_add(1);
        failure.last = Some(error.clone());
        let hold = if matches!(error, Error::InvalidGrant(_)) {
            TERMINAL
        } else {
            let delay = self.backoff(failure.consecutive);
            let delay = match error.retry_after() {
                Some(asked) => delay.max(asked.min(self.config.backoff_max)),
                None => delay,
            };
            self.nanos(Instant::now() + delay)
        };
        self.hold_until.store(hold, Ordering::Release);
    }

    /// The wait before attempt `n + 1` after `n` failures: exponential, capped, with
    /// jitter in `[base/2, base]` so that replicas spread out.
    fn backoff(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(20);
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1 << exp)
            .min(self.config.backoff_max);
        base / 2 + random_up_to(base / 2)
    }

    /// The server rejected the current token. The first rejection (a revocation) is
    /// refreshed at once; each further one in a row (no answer accepted in between)
    /// holds the next refresh back by the backoff, and callers without a token get
    /// [`Error::Rejected`] meanwhile.
    fn record_rejection(&self, now: Instant) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let window = self.config.backoff_max.saturating_mul(2);
        let in_a_row = failure
            .last_rejection
            .is_some_and(|at| now.saturating_duration_since(at) < window);
        failure.last_rejection = Some(now);
        let rejections = if in_a_row {
            self.rejections.load(Ordering::Relaxed).saturating_add(1)
        } else {
            1
        };
        self.rejections.store(rejections, Ordering::Relaxed);
        if rejections < 2 {
            return;
        }
        failure.last = Some(Error::Rejected(rejections));
        let hold = self.nanos(now + self.backoff(rejections - 1));
        // A refresh that runs now publishes its token and ends the hold itself.
        let _ = self
            .hold_until
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                (h != RUNNING && h != TERMINAL && h < hold).then_some(hold)
            });
        tracing::warn!(
            in_a_row = rejections,
            "the server rejected a new token again; backing off before the next refresh"
        );
    }

    /// The server accepted a request: tokens are not refused wholesale, so the
    /// rejection streak and any hold it caused end.
    fn record_acceptance(&self) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        self.rejections.store(0, Ordering::Relaxed);
        if matches!(failure.last, Some(Error::Rejected(_))) {
            failure.last = None;
            let _ = self
                .hold_until
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |h| {
                    (h != RUNNING && h != TERMINAL).then_some(0)
                });
        }
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

    /// Joins (or starts) the refresh for a caller that has no valid token.
    fn wait_for_refresh(
        self: &Arc<Self>,
        now: Instant,
    ) -> futures_util::future::BoxFuture<'static, Result<Arc<Cached>, Error>> {
        if let Some(error) = self.held_error(now) {
            return futures_util::future::ready(Err(error)).boxed();
        }
        let joined = self.flight.join_or_start(
            || {
                let now = Instant::now();
                if let Some(c) = self.current.load_full().filter(|c| c.usable(now)) {
                    return Some(Ok(c));
                }
                self.held_error(now).map(Err)
            },
            || self.start(),
        );
        match joined {
            Joined::Ready(result) => futures_util::future::ready(result).boxed(),
            Joined::Flight(flight) => {
                self.waits.fetch_add(1, Ordering::Relaxed);
                flight.boxed()
            }
        }
    }
}

enum Stored {
    /// A newer, valid token: use it, fetch nothing.
    Fresh(Token),
    /// A newer but expired token: refresh from it (its refresh token is the newest).
    Previous(Token),
    Nothing,
}

/// What the store holds that is newer than `ours`.
async fn adopt_stored(store: &dyn TokenStore, ours: Option<&Token>) -> Stored {
    use secrecy::ExposeSecret;
    let stored = match store.load().await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Stored::Nothing,
        Err(error) => {
            tracing::warn!(%error, "could not read the token store; asking the token endpoint");
            return Stored::Nothing;
        }
    };
    let same = ours.is_some_and(|ours| {
        ours.access_token().expose_secret() == stored.access_token().expose_secret()
    });
    if same {
        Stored::Nothing
    } else if stored.is_expired() {
        Stored::Previous(stored)
    } else {
        Stored::Fresh(stored)
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
        let rejected = Arc::new(cached.rejected(now));
        let previous = self
            .shared
            .current
            .compare_and_swap(&*current, Some(rejected));
        if previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, cached)) {
            tracing::debug!("the server rejected the token; the next request refreshes it");
            self.shared.record_rejection(now);
        }
    }

    fn on_accepted(&self, _sent: &HeaderValue) {
        // One relaxed load on every answer; the lock only after a rejection.
        if self.shared.rejections.load(Ordering::Relaxed) != 0 {
            self.shared.record_acceptance();
        }
    }
}

impl<S> fmt::Debug for Refreshing<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.shared.current.load();
        f.debug_struct("Refreshing")
            .field("token", &current.as_ref().map(|c| &c.token))
            .field("refresh_before", &self.shared.config.refresh_before)
            .finish_non_exhaustive()
    }
}

/// A uniformly random duration in `[0, max]`.
fn random_up_to(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}
