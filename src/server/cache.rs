//! [`VerifiedCache`]: a repeated token costs a hash and a lookup instead of a
//! signature check or a network call.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{self, CacheName, CountedCache};
use tokio::time::Instant;

use super::validator::{Claims, ValidationFuture, Validator};
use super::Rejection;

/// The default number of cached tokens.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// The default longest time a verified token is reused (never past its `exp`).
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(5 * 60);

/// Claims that say when their token expires.
pub trait Expiring {
    /// The token's `exp`, in seconds since the Unix epoch, if it has one.
    fn expires_at(&self) -> Option<u64>;
}

impl Expiring for Claims {
    fn expires_at(&self) -> Option<u64> {
        self.exp
    }
}

/// Remembers the tokens a validator accepted, keyed by their SHA-256, until the
/// token's `exp` (or at most [`max_ttl`](Self::max_ttl), default 5 min): a token is
/// never served past its expiry. Refusals are not cached (each is validated again),
/// so a flood of bad tokens cannot evict the good ones. When full, the cache evicts
/// scan-resistantly (S3-FIFO, the `quick_cache` crate): a token seen once goes before
/// the tokens that keep coming back, and no eviction scans the cache.
///
/// Works with any validator whose claims implement [`Expiring`] (the provided
/// [`Claims`] does).
///
/// **Revocation holds in either order.** Every hit is checked again by the inner
/// validator's [`Validator::recheck`] before it is served, and a token it now refuses
/// is dropped. So `VerifiedCache::new(denylist.guard(v))` refuses a revoked token on
/// its next request exactly as `denylist.guard(VerifiedCache::new(v))` does (a
/// `RedisDenylist` answers from its local copy, at most `staleness` old, else from
/// Redis). A validator of your own that wraps another must forward `recheck` for this
/// to reach the validator it wraps.
///
/// ```
/// use tower_bearer::server::{Claims, RequireBearerLayer, VerifiedCache};
/// # use tower_bearer::server::{from_fn, Rejection};
/// # let jwt = from_fn(|_: &str| Err::<Claims, _>(Rejection::invalid_token("no")));
///
/// let layer = RequireBearerLayer::new(VerifiedCache::new(jwt).max_entries(50_000));
/// ```
pub struct VerifiedCache<V: Validator> {
    inner: Arc<V>,
    state: Arc<State<V::Claims>>,
}

struct State<C> {
    /// Token digest → the claims (shared, so a hit clones them outside the cache's
    /// lock) and the instant they stop being served.
    entries: CountedCache<[u8; 32], (Arc<C>, Instant)>,
    max_entries: usize,
    max_ttl: Duration,
}

impl<C> State<C> {
    fn new(max_entries: usize, max_ttl: Duration) -> Self {
        let max_entries = max_entries.max(1);
        State {
            entries: metrics::counted_cache(max_entries, CacheName::Verified),
            max_entries,
            max_ttl,
        }
    }
}

impl<V: Validator> Clone for VerifiedCache<V> {
    fn clone(&self) -> Self {
        VerifiedCache {
            inner: Arc::clone(&self.inner),
            state: Arc::clone(&self.state),
        }
    }
}

impl<V: Validator + fmt::Debug> fmt::Debug for VerifiedCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("inner", &self.inner)
            .field("entries", &self.len())
            .field("max_entries", &self.state.max_entries)
            .field("max_ttl", &self.state.max_ttl)
            .finish()
    }
}

impl<V: Validator> VerifiedCache<V>
where
    V::Claims: Expiring,
{
    /// Caches what `inner` accepts (10,000 tokens, at most 5 min each).
    pub fn new(inner: V) -> Self {
        VerifiedCache {
            inner: Arc::new(inner),
            state: Arc::new(State::new(DEFAULT_MAX_ENTRIES, DEFAULT_MAX_TTL)),
        }
    }

    /// The most tokens kept (default 10,000). Call before use: it starts an empty cache.
    pub fn max_entries(self, n: usize) -> Self {
        VerifiedCache {
            inner: self.inner,
            state: Arc::new(State::new(n, self.state.max_ttl)),
        }
    }

    /// The longest a token is reused, even when its `exp` is later or absent
    /// (default 5 min). Call before use: it starts an empty cache.
    pub fn max_ttl(self, ttl: Duration) -> Self {
        VerifiedCache {
            inner: self.inner,
            state: Arc::new(State::new(self.state.max_entries, ttl)),
        }
    }
}

impl<V: Validator> VerifiedCache<V> {
    /// How many tokens are cached (live or not yet purged).
    pub fn len(&self) -> usize {
        self.state.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<C: Expiring> State<C> {
    fn get(&self, digest: &[u8; 32]) -> Option<Arc<C>> {
        let (claims, until) = self.entries.get(digest)?;
        if Instant::now() < until {
            return Some(claims);
        }
        // Expired: dropped, unless a newer entry took its place meanwhile.
        self.entries.remove_if(digest, |(_, u)| *u == until);
        None
    }

    /// Drops the entry of a token that is now refused (revoked); an unavailable
    /// check (`503`) says nothing about the token and keeps it.
    fn forget_if_refused(&self, digest: &[u8; 32], outcome: &Result<C, Rejection>) {
        if matches!(outcome, Err(r) if !matches!(r, Rejection::Unavailable(_))) {
            self.entries.remove(digest);
        }
    }

    fn insert(&self, digest: [u8; 32], claims: C) {
        let now = Instant::now();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lifetime = match claims.expires_at() {
            // Already expired by our clock (within the validator's leeway): do not
            // cache, so the validator decides again next time.
            Some(exp) if exp <= unix_now => return,
            Some(exp) => Duration::from_secs(exp - unix_now).min(self.max_ttl),
            None => self.max_ttl,
        };
        self.entries
            .insert(digest, (Arc::new(claims), now + lifetime));
    }
}

impl<V: Validator> VerifiedCache<V>
where
    V::Claims: Expiring,
{
    /// A hit, checked again by the inner validator (a denylist inside it is
    /// consulted); a token it now refuses is dropped from the cache.
    fn recheck_hit(
        &self,
        token: &str,
        digest: [u8; 32],
        claims: V::Claims,
    ) -> ValidationFuture<V::Claims> {
        match self.inner.recheck(token, claims).now_or_pending() {
            Ok(outcome) => {
                self.state.forget_if_refused(&digest, &outcome);
                ValidationFuture::ready(outcome)
            }
            Err(pending) => {
                let state = Arc::clone(&self.state);
                ValidationFuture::pending(async move {
                    let outcome = pending.await;
                    state.forget_if_refused(&digest, &outcome);
                    outcome
                })
            }
        }
    }
}

impl<V: Validator> Validator for VerifiedCache<V>
where
    V::Claims: Expiring,
{
    type Claims = V::Claims;

    /// The inner validator's recheck: a cache in front of this one also sees a
    /// revocation.
    fn recheck(&self, token: &str, claims: V::Claims) -> ValidationFuture<V::Claims> {
        self.inner.recheck(token, claims)
    }

    fn validate(&self, token: &str) -> ValidationFuture<V::Claims> {
        let digest = super::sha256(token.as_bytes());
        if let Some(claims) = self.state.get(&digest) {
            metrics::cache_lookup(CacheName::Verified, true);
            return self.recheck_hit(token, digest, V::Claims::clone(&claims));
        }
        metrics::cache_lookup(CacheName::Verified, false);
        match self.inner.validate(token).now_or_pending() {
            Ok(outcome) => {
                if let Ok(claims) = &outcome {
                    self.state.insert(digest, claims.clone());
                }
                ValidationFuture::ready(outcome)
            }
            Err(pending) => {
                let state = Arc::clone(&self.state);
                ValidationFuture::pending(async move {
                    let outcome = pending.await;
                    if let Ok(claims) = &outcome {
                        state.insert(digest, claims.clone());
                    }
                    outcome
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::{from_fn, Rejection};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(exp_in: i64) -> (Arc<AtomicUsize>, impl Validator<Claims = Claims>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let v = from_fn(move |token: &str| {
            c.fetch_add(1, Ordering::SeqCst);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            if token == "good" {
                Ok(Claims {
                    exp: Some((now + exp_in) as u64),
                    ..Claims::default()
                })
            } else {
                Err(Rejection::invalid_token("bad"))
            }
        });
        (calls, v)
    }

    fn check(v: &impl Validator<Claims = Claims>, token: &str) -> bool {
        v.validate(token).now_or_pending().ok().unwrap().is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn hits_until_exp_and_never_after() {
        let (calls, inner) = counting(30);
        let cache = VerifiedCache::new(inner);
        assert!(check(&cache, "good"));
        assert!(check(&cache, "good"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(check(&cache, "good"));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "expired entry not served");
        // Refusals are not cached.
        assert!(!check(&cache, "bad"));
        assert!(!check(&cache, "bad"));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_is_rechecked_and_a_refused_token_dropped() {
        use std::sync::atomic::AtomicBool;

        /// Accepts every token; `revoked` makes its recheck refuse.
        struct Revocable(Arc<AtomicBool>);
        impl Validator for Revocable {
            type Claims = Claims;
            fn validate(&self, _: &str) -> ValidationFuture<Claims> {
                ValidationFuture::ready(Ok(Claims::default()))
            }
            fn recheck(&self, _: &str, claims: Claims) -> ValidationFuture<Claims> {
                ValidationFuture::ready(if self.0.load(Ordering::SeqCst) {
                    Err(Rejection::invalid_token("the token was revoked"))
                } else {
                    Ok(claims)
                })
            }
        }
        let revoked = Arc::new(AtomicBool::new(false));
        let cache = VerifiedCache::new(Revocable(Arc::clone(&revoked)));
        assert!(check(&cache, "t"));
        assert!(check(&cache, "t"));
        assert_eq!(cache.len(), 1);
        revoked.store(true, Ordering::SeqCst);
        assert!(
            !check(&cache, "t"),
            "a cached token is refused once revoked"
        );
        assert_eq!(cache.len(), 0, "and dropped from the cache");
        // A cache over a cache forwards the recheck to the validator inside.
        revoked.store(false, Ordering::SeqCst);
        let outer = VerifiedCache::new(cache.clone());
        assert!(check(&outer, "t"));
        revoked.store(true, Ordering::SeqCst);
        assert!(!check(&outer, "t"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_size_is_bounded() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let cache = VerifiedCache::new(from_fn(move |_: &str| {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(Claims::default())
        }))
        .max_entries(10);
        for i in 0..100 {
            assert!(check(&cache, &format!("t{i}")));
        }
        assert_eq!(cache.len(), 10);
        assert_eq!(calls.load(Ordering::SeqCst), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_scan_of_one_time_tokens_does_not_push_out_the_tokens_in_use() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let cache = VerifiedCache::new(from_fn(move |token: &str| {
            if token.starts_with("user-") {
                c.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Claims::default())
        }))
        .max_entries(2_000);
        // 1,000 users, each seen twice, then 20,000 tokens seen once each, with a
        // user's request after every 10 of them.
        for _ in 0..2 {
            for u in 0..1_000 {
                assert!(check(&cache, &format!("user-{u}")));
            }
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1_000);
        for i in 0..20_000 {
            assert!(check(&cache, &format!("once-{i}")));
            if i % 10 == 0 {
                assert!(check(&cache, &format!("user-{}", (i / 10) % 1_000)));
            }
        }
        assert!(cache.len() <= 2_000, "{}", cache.len());
        // A cache that evicted regardless of use would validate about half of the
        // users' 2,000 requests again (BENCHMARKS.md).
        let misses = calls.load(Ordering::SeqCst) - 1_000;
        assert!(misses < 100, "{misses} of 2,000 users' requests missed");
        // Expired entries are never served.
        tokio::time::advance(DEFAULT_MAX_TTL + Duration::from_secs(1)).await;
        assert!(check(&cache, "user-1"));
        assert_eq!(calls.load(Ordering::SeqCst), 1_000 + misses + 1);
    }
}
