//! [`RedisDenylist`]: revoked tokens, refused by every server replica at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::{millis, redis_error, RedisConfig, RedisConnection};
use crate::server::{Rejection, ValidationFuture, Validator};
use crate::Error;

/// Local answers kept at most this many; past it the cache starts over.
const CACHE_CAP: usize = 100_000;

/// Revoked tokens in Redis, by `jti` or by token hash (of what a JWT's issuer
/// signed, or of an opaque token's text), each until the token's own expiry (after
/// which the token is refused anyway and the entry is dropped).
///
/// Servers consult it through [`RedisDenylist::guard`], which wraps a [`Validator`]:
/// a token the inner validator accepts is then refused (`401 invalid_token`) if it is
/// revoked. The guard and a [`VerifiedCache`](crate::server::VerifiedCache) may be
/// stacked in either order: a cached token is checked against the denylist on every
/// hit (see [`Denylisted`]). Answers are cached locally for at most [`staleness`](Self::staleness)
/// (1 s by default), so a revocation reaches every replica within that time. When
/// Redis cannot be reached the guard fails closed (`503`) unless
/// [`fail_open`](Self::fail_open) was set; either way it logs.
///
/// ```no_run
/// use std::time::{Duration, SystemTime};
/// use tower_bearer::redis::RedisDenylist;
/// use tower_bearer::server::{RequireBearerLayer, StaticTokens};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let denylist = RedisDenylist::connect("redis://127.0.0.1:6379/").await?;
/// // Any validator; here each token's claims are just its jti.
/// let validator = StaticTokens::new([("token-1", "a1b2c3".to_owned())]);
/// let layer = RequireBearerLayer::new(
///     denylist.guard(validator).jti(|jti: &String| Some(jti.clone())),
/// );
/// // Elsewhere, when a token is revoked:
/// denylist
///     .revoke_jti("a1b2c3", SystemTime::now() + Duration::from_secs(3600))
///     .await?;
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDenylist {
    conn: RedisConnection,
    prefix: Arc<str>,
    staleness: Duration,
    fail_open: bool,
    cache: Arc<Mutex<HashMap<String, (bool, Instant)>>>,
}

impl RedisDenylist {
    /// Connects to Redis at `url` (`redis://`, or `rediss://` with the `redis-tls`
    /// feature), with the key prefix `tower-bearer:denied:`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad URL, [`Error::Store`] when Redis cannot be
    /// reached now.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(&RedisConfig::new(url)).await
    }

    /// Connects to the Redis server or cluster of `config`, with the key prefix
    /// `tower-bearer:denied:`. On a cluster the entries spread over every node (each
    /// lookup reads the token's and the `jti`'s entry, split by slot).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad configuration, [`Error::Store`] when Redis
    /// cannot be reached now.
    pub async fn connect_with(config: &RedisConfig) -> Result<Self, Error> {
        let conn = config.connect().await?;
        Ok(Self::with_connection(conn, "tower-bearer:denied:"))
    }

    /// A denylist over a connection you configured (a [`RedisConnection`], or a
    /// [`ConnectionManager`](redis::aio::ConnectionManager)), with your key prefix.
    pub fn with_connection(conn: impl Into<RedisConnection>, prefix: &str) -> Self {
        RedisDenylist {
            conn: conn.into(),
            prefix: prefix.into(),
            staleness: Duration::from_secs(1),
            fail_open: false,
            cache: Arc::default(),
        }
    }

    /// How long a local answer is trusted: a revocation reaches this replica within
    /// this time. Default 1 s; zero asks Redis for every token.
    #[must_use]
    pub fn staleness(mut self, staleness: Duration) -> Self {
        self.staleness = staleness;
        self
    }

    /// Accepts tokens (with a warning in the log) when Redis cannot be reached,
    /// instead of answering `503`. Off by default: a revoked token could get through.
    #[must_use]
    pub fn fail_open(mut self, open: bool) -> Self {
        self.fail_open = open;
        self
    }

    fn jti_key(&self, jti: &str) -> String {
        format!("{}jti:{jti}", self.prefix)
    }

    fn hashed_key(&self, kind: &str, text: &str) -> String {
        let digest = crate::crypto::sha256(text.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{kind}:{hex}", self.prefix)
    }

    /// The entries a revocation by token is kept under, the one that decides first.
    ///
    /// A compact JWS (`header.payload.signature`, its header a JOSE header) is keyed
    /// on the SHA-256 of its signing input (`header.payload`): what its issuer
    /// signed, whatever form its signature takes. An ECDSA signature has two valid forms, (r, s) and
    /// (r, n − s), and anyone holding a token can make the other one without the
    /// key; keyed on the whole text, a revoked token would come back as its twin.
    /// Its whole text's entry (`sha256:`) follows: the key of earlier versions, read
    /// and written so that a fleet being upgraded keeps every revocation. Any other
    /// token (opaque) is keyed on its whole text alone.
    fn token_keys(&self, token: &str) -> Vec<String> {
        let whole = self.hashed_key("sha256", token);
        match signing_input(token) {
            Some(signed) => vec![self.hashed_key("jws", signed), whole],
            None => vec![whole],
        }
    }

    /// Revokes the token whose `jti` claim is `jti`, until `expires` (its `exp`).
    ///
    /// # Errors
    /// [`Error::Store`] when Redis fails.
    pub async fn revoke_jti(&self, jti: &str, expires: SystemTime) -> Result<(), Error> {
        self.deny(self.jti_key(jti), expires).await
    }

    /// Revokes `token` itself (by a SHA-256, the token is not stored), until
    /// `expires` (its expiry). A JWT is revoked by what its issuer signed (its
    /// header and payload), so every encoding of its signature is refused with it,
    /// the other form of an ECDSA signature included; an opaque token by its text.
    ///
    /// # Errors
    /// [`Error::Store`] when Redis fails.
    pub async fn revoke_token(&self, token: &str, expires: SystemTime) -> Result<(), Error> {
        for key in self.token_keys(token) {
            self.deny(key, expires).await?;
        }
        Ok(())
    }

    async fn deny(&self, key: String, expires: SystemTime) -> Result<(), Error> {
        let Ok(ttl) = expires.duration_since(SystemTime::now()) else {
            return Ok(()); // Already expired: refused without us.
        };
        redis::cmd("SET")
            .arg(&key)
            .arg(1)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("revoke", e))?;
        self.remember(key, true, Instant::now());
        Ok(())
    }

    /// Whether `token`, or its `jti`, is revoked.
    ///
    /// # Errors
    /// [`Error::Store`] when Redis fails.
    pub async fn is_revoked(&self, token: &str, jti: Option<&str>) -> Result<bool, Error> {
        let keys = self.keys(token, jti);
        if let Some(answer) = self.cached(&keys, Instant::now()) {
            return Ok(answer);
        }
        self.ask(keys).await
    }

    fn keys(&self, token: &str, jti: Option<&str>) -> Vec<String> {
        self.keys_hashed(self.token_keys(token), jti)
    }

    fn keys_hashed(&self, mut keys: Vec<String>, jti: Option<&str>) -> Vec<String> {
        keys.extend(jti.map(|j| self.jti_key(j)));
        keys
    }

    /// The local answer, when every key has one younger than the staleness.
    fn cached(&self, keys: &[String], now: Instant) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let mut revoked = false;
        let mut oldest = Duration::ZERO;
        for key in keys {
            let (denied, at) = cache.get(key)?;
            let age = now.saturating_duration_since(*at);
            if age >= self.staleness {
                return None;
            }
            oldest = oldest.max(age);
            revoked |= denied;
        }
        drop(cache);
        crate::metrics::denylist_local(oldest);
        Some(revoked)
    }

    fn remember(&self, key: String, denied: bool, at: Instant) {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAP {
            cache.clear();
        }
        cache.insert(key, (denied, at));
    }

    async fn ask(&self, keys: Vec<String>) -> Result<bool, Error> {
        let asked = Instant::now();
        let mut cmd = redis::cmd("MGET");
        for key in &keys {
            cmd.arg(key);
        }
        let values: Vec<Option<String>> = cmd
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("denylist lookup", e))
            .inspect_err(|_| crate::metrics::denylist_remote(false))?;
        crate::metrics::denylist_remote(true);
        let mut revoked = false;
        for (key, value) in keys.into_iter().zip(values) {
            revoked |= value.is_some();
            self.remember(key, value.is_some(), asked);
        }
        Ok(revoked)
    }

    /// `inner` with revoked tokens refused.
    pub fn guard<V: Validator>(&self, inner: V) -> Denylisted<V> {
        Denylisted {
            inner: Arc::new(inner),
            denylist: self.clone(),
            jti: None,
        }
    }
}

impl fmt::Debug for RedisDenylist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDenylist")
            .field("prefix", &self.prefix)
            .field("staleness", &self.staleness)
            .field("fail_open", &self.fail_open)
            .finish_non_exhaustive()
    }
}

type JtiFn<C> = Arc<dyn Fn(&C) -> Option<String> + Send + Sync>;

/// A [`Validator`] that refuses tokens revoked in a [`RedisDenylist`]; made by
/// [`RedisDenylist::guard`].
///
/// **Any order of composition is safe.** Stacked with a
/// [`VerifiedCache`](crate::server::VerifiedCache) either way round
/// (`VerifiedCache::new(denylist.guard(v))` or `denylist.guard(VerifiedCache::new(v))`),
/// a revoked token is refused on its next request, even one the cache had accepted:
/// the cache asks this guard's [`Validator::recheck`] on every hit, which consults the
/// denylist. If you wrap this guard in a validator of your own and put a cache in
/// front, forward `recheck` to it.
pub struct Denylisted<V: Validator> {
    inner: Arc<V>,
    denylist: RedisDenylist,
    jti: Option<JtiFn<V::Claims>>,
}

impl<V: Validator> Clone for Denylisted<V> {
    fn clone(&self) -> Self {
        Denylisted {
            inner: Arc::clone(&self.inner),
            denylist: self.denylist.clone(),
            jti: self.jti.clone(),
        }
    }
}

impl<V: Validator> Denylisted<V> {
    /// Also refuses tokens whose `jti` (read from the verified claims by `f`) is
    /// revoked. Without it, only revocations by token hash apply.
    #[must_use]
    pub fn jti(mut self, f: impl Fn(&V::Claims) -> Option<String> + Send + Sync + 'static) -> Self {
        self.jti = Some(Arc::new(f));
        self
    }
}

/// The signing input (`header.payload`) of a compact JWS: three parts, the first
/// two not empty, the first a JOSE header (canonical base64url of a JSON object with
/// an `alg`, as a JWT validator reads it); `None` for any other token. An opaque
/// token may have two dots too (PASETO's `v4.local.…`, a server's
/// `at.<id>.<secret>`), and its first two parts may be shared by every token of its
/// server: keyed on them, revoking one would revoke them all.
fn signing_input(token: &str) -> Option<&str> {
    /// A JOSE header's `alg`, whatever its value: its presence is what is read.
    #[derive(serde::Deserialize)]
    struct Jose {
        #[allow(dead_code)]
        alg: serde::de::IgnoredAny,
    }
    use base64::Engine as _;
    let (signed, _signature) = token.rsplit_once('.')?;
    let (header, payload) = signed.split_once('.')?;
    if header.is_empty() || payload.is_empty() || payload.contains('.') {
        return None;
    }
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .ok()?;
    // An object, not an array serde would read as the struct too.
    if header.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Jose>(&header).ok()?;
    Some(signed)
}

fn decide<C>(
    denylist: &RedisDenylist,
    claims: C,
    revoked: Result<bool, Error>,
) -> Result<C, Rejection> {
    match revoked {
        Ok(false) => Ok(claims),
        Ok(true) => Err(Rejection::invalid_token("the token was revoked")),
        Err(error) if denylist.fail_open => {
            tracing::warn!(%error, "denylist unreachable; accepting the token (fail open)");
            Ok(claims)
        }
        Err(error) => {
            tracing::error!(%error, "denylist unreachable; refusing the token (fail closed)");
            Err(Rejection::Unavailable(
                "the revocation list is unreachable".into(),
            ))
        }
    }
}

impl<V: Validator> Denylisted<V> {
    /// `inner`'s answer for `token`, refused if the token is revoked.
    fn guarded(
        &self,
        token: &str,
        inner: ValidationFuture<V::Claims>,
    ) -> ValidationFuture<V::Claims> {
        // Fast path: the inner answer is at hand and the local answer is fresh.
        let inner = match inner.now_or_pending() {
            Ok(Err(rejection)) => return ValidationFuture::ready(Err(rejection)),
            Ok(Ok(claims)) => {
                let jti = self.jti.as_ref().and_then(|f| f(&claims));
                let keys = self.denylist.keys(token, jti.as_deref());
                if let Some(revoked) = self.denylist.cached(&keys, Instant::now()) {
                    return ValidationFuture::ready(decide(&self.denylist, claims, Ok(revoked)));
                }
                let denylist = self.denylist.clone();
                return ValidationFuture::pending(async move {
                    let revoked = denylist.ask(keys).await;
                    decide(&denylist, claims, revoked)
                });
            }
            Err(pending) => pending,
        };
        let denylist = self.denylist.clone();
        let jti = self.jti.clone();
        // Only the hash outlives this call: the token is not copied.
        let token_keys = denylist.token_keys(token);
        ValidationFuture::pending(async move {
            let claims = inner.await?;
            let jti = jti.as_ref().and_then(|f| f(&claims));
            let keys = denylist.keys_hashed(token_keys, jti.as_deref());
            let revoked = match denylist.cached(&keys, Instant::now()) {
                Some(revoked) => Ok(revoked),
                None => denylist.ask(keys).await,
            };
            decide(&denylist, claims, revoked)
        })
    }
}

impl<V: Validator> Validator for Denylisted<V> {
    type Claims = V::Claims;

    fn validate(&self, token: &str) -> ValidationFuture<Self::Claims> {
        self.guarded(token, self.inner.validate(token))
    }

    /// A cache in front of this guard asks here on every hit: the denylist is
    /// consulted (its local answer while younger than the staleness, else Redis),
    /// so a cached token is refused once revoked.
    fn recheck(&self, token: &str, claims: Self::Claims) -> ValidationFuture<Self::Claims> {
        self.guarded(token, self.inner.recheck(token, claims))
    }
}

impl<V: Validator> fmt::Debug for Denylisted<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Denylisted")
            .field("denylist", &self.denylist)
            .field("jti", &self.jti.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::signing_input;

    #[test]
    fn a_jws_is_keyed_on_its_signing_input_any_other_token_on_its_text() {
        // {"alg":"ES256"}
        let h = "eyJhbGciOiJFUzI1NiJ9";
        assert_eq!(
            signing_input(&format!("{h}.p.s")).map(str::len),
            Some(h.len() + 2)
        );
        assert_eq!(
            signing_input(&format!("{h}.p.")).map(str::len),
            Some(h.len() + 2)
        );
        // No JOSE header: [1] (an array), {"typ":"JWT"} (no alg), `{}` padded,
        // PASETO's version, an opaque token's prefix.
        for header in ["WzFd", "eyJ0eXAiOiJKV1QifQ", "e30=", "v4", "at"] {
            assert_eq!(signing_input(&format!("{header}.p.s")), None, "{header}");
        }
        for opaque in ["", "opaque", "h.p", ".p.s", "h..s", "h.p.s.t", "a.b.c.d.e"] {
            assert_eq!(signing_input(opaque), None, "{opaque:?}");
        }
    }
}
