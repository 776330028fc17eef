//! [`RedisReplayCache`]: used DPoP proofs, remembered by the whole fleet.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{millis, RedisConfig, RedisConnection};
use crate::server::dpop::{ReplayCache, ReplayFuture};
use crate::Error;

/// The `jti` replay cache of a fleet of resource servers: a proof used on one
/// replica is refused by every other (RFC 9449 §11.1), as long as they share the
/// Redis and the key prefix.
///
/// One command per checked proof, `SET <prefix><sha256> <until> NX PX <ms>`: Redis
/// answers whether the key was new and records it in the same step. The key lives
/// from the moment the proof is checked until every replica would refuse the
/// proof as stale anyway: its `iat` plus the leeway plus the tolerated
/// [clock skew](crate::server::DpopVerifier::clock_skew) (plus a second), so a
/// replica whose clock is behind the recording one's still finds it. Replicas
/// sharing the cache use the same leeway and skew. When Redis cannot be reached
/// the proof is answered `503` (fail closed): accepting it could accept a replay.
///
/// ```no_run
/// use tower_bearer::redis::RedisReplayCache;
/// use tower_bearer::server::DpopVerifier;
///
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let replay = RedisReplayCache::connect("redis://127.0.0.1:6379/").await?;
/// let verifier = DpopVerifier::new().replay_cache(replay);
/// # let _ = verifier;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisReplayCache {
    conn: RedisConnection,
    prefix: Arc<str>,
}

impl RedisReplayCache {
    /// Connects to Redis at `url`, with the key prefix `tower-bearer:dpop:`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad URL, [`Error::Store`] when Redis cannot be
    /// reached now.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        Self::connect_with(&RedisConfig::new(url)).await
    }

    /// Connects to the Redis server or cluster of `config`, with the key prefix
    /// `tower-bearer:dpop:`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad configuration, [`Error::Store`] when Redis
    /// cannot be reached now.
    pub async fn connect_with(config: &RedisConfig) -> Result<Self, Error> {
        Ok(Self::with_connection(
            config.connect().await?,
            "tower-bearer:dpop:",
        ))
    }

    /// A replay cache over a connection you configured, with your key prefix
    /// (replicas that must refuse each other's proofs share it).
    pub fn with_connection(conn: impl Into<RedisConnection>, prefix: &str) -> Self {
        RedisReplayCache {
            conn: conn.into(),
            prefix: prefix.into(),
        }
    }

    fn key(&self, key: &str) -> String {
        // Hashed: a key costs the same whatever the jti, and says nothing of it.
        let digest = crate::crypto::sha256(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", self.prefix)
    }
}

/// Deletes `KEYS[1]` if it still holds `ARGV[1]`, the `until` its record was made
/// with.
const FORGET: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
";

impl ReplayCache for RedisReplayCache {
    fn first_use(&self, key: &str, now: u64, until: u64) -> ReplayFuture {
        let key = self.key(key);
        // `now` is when the proof was checked and `until` already holds the leeway
        // and the skew the fleet tolerates; kept one second past `until`, a whole
        // second the proof may still be accepted in. Redis counts the time from
        // when it runs the command, which is no earlier than the check.
        let ttl = Duration::from_secs(until.saturating_sub(now).saturating_add(1));
        let mut conn = self.conn.clone();
        ReplayFuture::pending(async move {
            let answer: redis::Value = redis::cmd("SET")
                .arg(&key)
                .arg(until)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl))
                .query_async(&mut conn)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "the DPoP replay cache (Redis) failed");
                    format!("redis: {e}")
                })?;
            // `OK` when set, nil when the key was there.
            Ok(!matches!(answer, redis::Value::Nil))
        })
    }

    fn forget(&self, key: &str, until: u64) {
        // Not awaited by the refused request: a delete that fails or never runs
        // leaves the proof spent, which is always safe. Only the record this
        // `until` made: a later proof's with the same key and jti stays.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let key = self.key(key);
        let mut conn = self.conn.clone();
        runtime.spawn(async move {
            let deleted: Result<i64, _> = redis::Script::new(FORGET)
                .key(&key)
                .arg(until)
                .invoke_async(&mut conn)
                .await;
            if let Err(e) = deleted {
                tracing::debug!(error = %e, "a refused DPoP proof's record stays in Redis");
            }
        });
    }
}

impl fmt::Debug for RedisReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReplayCache")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}
