//! Running as a fleet: replicas that share one client registration share its
//! tokens through Redis, and refresh them once for the whole fleet.
//!
//! When the identity provider rotates refresh tokens (each works once), replicas
//! that refresh on their own invalidate each other. [`FleetSource`] wraps any
//! [`TokenSource`] so that, across every replica using the same Redis key:
//!
//! - a token another replica already obtained is taken from Redis, and the token
//!   endpoint is not called;
//! - otherwise one replica takes a lock (`SET lock owner NX PX ttl`, renewed while the
//!   refresh runs, released by compare-and-delete), refreshes with the newest refresh
//!   token (the one in Redis), and writes the new token to Redis *before* serving it;
//!   the others wait, woken by the write (every write is published on the profile's
//!   channel; each replica subscribes) or, failing that, by polling Redis with a short
//!   bounded backoff, and take the new token;
//! - the write is fenced by a version: a replica whose lock lapsed and was taken over
//!   cannot overwrite a newer token;
//! - a lock holder that dies lets the lock expire, and another replica takes over;
//! - newer only: a token in Redis is adopted only when its [`Lineage`](crate::Lineage)
//!   is newer than the replica's, and [`RedisStore::save`] never replaces a newer one;
//! - a refresh token is presented once: the holder claims it in Redis before
//!   presenting it, and a replica that takes over a lapsed lock waits for the holder's
//!   answer (up to twice the lock TTL) instead of presenting it again; a refresh token
//!   refused (`invalid_grant`) is recorded, and no replica presents it again;
//! - dead is declared by the owner: `invalid_grant` for the fleet's token is the
//!   fleet's logout, after waiting one lock TTL for a replica that spent it first to
//!   publish; for a replica's own older token (Redis lost its data) it is
//!   [`Error::Superseded`], retried.
//!
//! On the server side, [`RedisDenylist`] revokes tokens (by `jti` or token hash) for
//! every replica at once.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_bearer::client::{Refreshing, TokenEndpoint};
//! use tower_bearer::redis::RedisStore;
//!
//! # async fn run() -> Result<(), tower_bearer::Error> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379/", "billing-api").await?;
//! let endpoint = TokenEndpoint::new("https://idp.example.com/token")?.client_id("svc");
//! let authorizer = Refreshing::builder(store.fleet(endpoint.refresh_token("seed-rt")))
//!     .refresh_before(Duration::from_secs(60))
//!     .build();
//! # let _ = authorizer;
//! # Ok(()) }
//! ```
//!
//! Give the [`FleetSource`] to [`Refreshing`](crate::Refreshing) as its source; do not
//! also pass the store to [`RefreshingBuilder::store`](crate::client::RefreshingBuilder::store)
//! (it is harmless, since [`RedisStore::save`](TokenStore::save) never replaces a token
//! that lives longer, but it costs a round trip per refresh).
//!
//! When Redis is unreachable a replica keeps serving the token it holds; a refresh then
//! fails with [`Error::Store`] (retried with the cache's backoff) rather than refreshing
//! alone, which with rotating refresh tokens would log the rest of the fleet out.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{self, BoxFuture, Either, FutureExt};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::client::at_rest::{Keyring, Sealed};
use crate::client::{AtRestKey, StoredToken, TokenSource, TokenStore};
use crate::metrics::{self, WaitEnd};
use crate::{Error, Token};

mod connection;
mod denylist;
#[cfg(feature = "dpop")]
mod replay;

pub use connection::{RedisConfig, RedisConnection};
pub use denylist::{Denylisted, RedisDenylist};
#[cfg(feature = "dpop")]
#[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
pub use replay::RedisReplayCache;

/// Writes the token only if the version is still the one read under the lock. A new
/// token ends the claim and the record of a refused refresh token: nobody presents
/// an older one now.
const WRITE_FENCED: &str = r"
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if v ~= tonumber(ARGV[1]) then return -1 end
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'exp', ARGV[3], 'fp', ARGV[4], 'lin', ARGV[5], 'kid', ARGV[7], 'version', v + 1)
redis.call('HDEL', KEYS[1], 'presenting', 'refused')
redis.call('PUBLISH', ARGV[6], v + 1)
return v + 1
";

/// Claims the presentation of the refresh token named ARGV[2] (its digest, see
/// [`grant_name`]) for owner ARGV[1], under the lock, in one step: -1 when a replica
/// was refused that very refresh token (`invalid_grant`) before; the milliseconds to
/// wait when another replica started presenting it less than ARGV[3] ms ago (its lock
/// lapsed mid-refresh: its answer may still come); else 0, claimed. Redis's clock, so
/// replicas' clocks need not agree.
const CLAIM: &str = r"
if redis.call('HGET', KEYS[1], 'refused') == ARGV[2] then return -1 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local p = redis.call('HGET', KEYS[1], 'presenting')
if p then
  local owner, lin, at = string.match(p, '^(.*)|([^|]*)|(%d+)$')
  if owner and owner ~= ARGV[1] and lin == ARGV[2] then
    local left = tonumber(ARGV[3]) - (now - tonumber(at))
    if left > 0 then return left end
  end
end
redis.call('HSET', KEYS[1], 'presenting', ARGV[1] .. '|' .. ARGV[2] .. '|' .. now)
return 0
";

/// Ends owner ARGV[1]'s claim; with ARGV[2] set, records the refresh token of that
/// name as refused for every replica (one record: the last refusal; removed by the
/// next token written).
const UNCLAIM: &str = r"
local p = redis.call('HGET', KEYS[1], 'presenting')
if p and string.sub(p, 1, string.len(ARGV[1]) + 1) == ARGV[1] .. '|' then
  redis.call('HDEL', KEYS[1], 'presenting')
end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'refused', ARGV[2]) end
return 1
";

/// Saves the token unless it is already there or the stored one is as new or newer
/// (its lineage; entries written before lineages existed have none: 0, the oldest):
/// the compare and the write in one step. -2, and nothing written, when the stored
/// token is encrypted under a key (its id, `kid`) that is not in ARGV[7] (`|a|b|`,
/// the writer's keys): a replica never writes over a token it could not read. The
/// token already there (same digest and lineage) is written again only when it was
/// sealed under another key than the writer's (ARGV[6], "" for plain): a migration
/// or a rotation seals it on the next save.
const SAVE: &str = r"
local cur = redis.call('HMGET', KEYS[1], 'fp', 'lin', 'version', 'token', 'kid')
local v = tonumber(cur[3] or '0')
if cur[4] and cur[5] and cur[5] ~= '' and not string.find(ARGV[7], '|' .. cur[5] .. '|', 1, true) then return -2 end
local same = cur[4] and cur[1] == ARGV[3]
if same and ((cur[5] or '') == ARGV[6] or tonumber(cur[2] or '0') ~= tonumber(ARGV[4])) then return v end
if cur[4] and not same and tonumber(cur[2] or '0') >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'exp', ARGV[2], 'fp', ARGV[3], 'lin', ARGV[4], 'kid', ARGV[6], 'version', v + 1)
redis.call('HDEL', KEYS[1], 'refused')
redis.call('PUBLISH', ARGV[5], v + 1)
return v + 1
";

/// Deletes the lock only if this owner holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Extends the lock only if this owner holds it.
const EXTEND: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";

/// The JSON kept in Redis: the portable [`StoredToken`] plus the expiry in
/// milliseconds (seconds are too coarse for short-lived tokens). Encrypted
/// ([`RedisStore::encrypt_with`]), this JSON is sealed into a [`SealedEntry`].
#[derive(Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    token: StoredToken,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

/// An encrypted entry: `{"sealed": …}` where a plain one has the token's fields.
#[derive(Serialize, Deserialize)]
struct SealedEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A short digest of the access token: tells tokens apart without storing a second
/// copy of the secret in the clear.
fn fingerprint(token: &Token) -> String {
    let digest = crate::crypto::sha256(token.access_token().expose_secret().as_bytes());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// A token ready to be written: its JSON (sealed when the store encrypts), expiry
/// (ms, 0 for none), fingerprint, lineage and the id of the key that sealed it
/// (empty when plain).
struct Encoded {
    json: zeroize::Zeroizing<String>,
    exp: u64,
    fp: String,
    lineage: u64,
    kid: String,
}

/// What the associated data bind a sealed entry to: its Redis key (the prefix and
/// profile; the lineage is bound beside it).
fn sealing_context(token_key: &str) -> String {
    serde_json::to_string(&("redis", token_key)).unwrap_or_default()
}

fn encode(token: &Token, keys: &Keyring, token_key: &str) -> Result<Encoded, Error> {
    let expires_at_ms = token
        .expires_in()
        .map(|left| unix_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)));
    let entry = Entry {
        token: StoredToken::from_token(token),
        expires_at_ms,
    };
    let lineage = token.lineage().as_micros();
    let json = serde_json::to_string(&entry)
        .map_err(|e| Error::Store(format!("could not encode the token: {e}")))?;
    let sealed = keys
        .seal(
            &sealing_context(token_key),
            lineage,
            json.clone().into_bytes(),
        )
        .map_err(|e| Error::Store(format!("could not encrypt the token: {e}")))?;
    let (json, kid) = match sealed {
        Some(sealed) => {
            let kid = sealed.kid.clone();
            let mut plain = json;
            zeroize::Zeroize::zeroize(&mut plain);
            let json = serde_json::to_string(&SealedEntry {
                sealed: Some(sealed),
            })
            .map_err(|e| Error::Store(format!("could not encode the token: {e}")))?;
            (json, kid)
        }
        None => (json, String::new()),
    };
    Ok(Encoded {
        json: zeroize::Zeroizing::new(json),
        exp: expires_at_ms.unwrap_or(0),
        fp: fingerprint(token),
        lineage,
        kid,
    })
}

fn decode(json: &str, keys: &Keyring, token_key: &str) -> Result<Token, Error> {
    // The position only: serde's message can quote a piece of the (secret) value.
    let not_a_token = |e: serde_json::Error| {
        Error::Store(format!(
            "the token in Redis is not a token (JSON {:?} error at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    };
    let envelope: SealedEntry = serde_json::from_str(json).map_err(not_a_token)?;
    let opened;
    let json = match &envelope.sealed {
        Some(sealed) => {
            let what = format!("the token at Redis key {token_key}");
            opened = keys
                .open(sealed, &sealing_context(token_key))
                .map_err(|unsealed| Error::Store(unsealed.describe(&what)))?;
            std::str::from_utf8(&opened)
                .map_err(|_| Error::Store(format!("{what} decrypts to no token")))?
        }
        None => {
            if let Some(why) = keys.refuse_plain(&format!("the entry at Redis key {token_key}")) {
                return Err(Error::Store(why));
            }
            json
        }
    };
    let mut entry: Entry = serde_json::from_str(json).map_err(not_a_token)?;
    if let Some(sealed) = &envelope.sealed {
        entry.token.lineage = sealed.lineage;
    }
    let mut token = entry.token.to_token()?;
    if let Some(at) = entry.expires_at_ms {
        token = token.with_expires_in(Duration::from_millis(at.saturating_sub(unix_ms())));
    }
    Ok(token)
}

fn redis_error(what: &str, e: redis::RedisError) -> Error {
    Error::Store(format!("redis {what}: {e}"))
}

/// What Redis holds for a profile.
struct Snapshot {
    token: Option<Token>,
    version: u64,
}

impl Snapshot {
    /// The stored token, if it is valid and strictly newer than the caller's.
    fn adoptable(&self, previous: Option<&Token>) -> Option<Token> {
        let token = self.token.as_ref().filter(|t| !t.is_expired())?;
        previous
            .is_none_or(|p| token.is_newer_than(p))
            .then(|| token.clone())
    }
}

/// What [`RedisStore::claim`] found.
enum Claim {
    /// This replica presents the refresh token.
    Present,
    /// Another replica started presenting it and its lock lapsed: wait this long
    /// for its answer before presenting it again.
    Wait(Duration),
    /// A replica was refused it before.
    Refused,
}

/// Tokens of one profile kept in Redis, shared by every replica that uses the same
/// key; a [`TokenStore`]. Cloning is cheap (one multiplexed, reconnecting connection).
///
/// Keys: `{prefix}{{profile}}:token` (a hash: the token as JSON, its expiry, a
/// fingerprint, its lineage and a version; while a refresh runs, who presents which
/// refresh token, and the last refresh token refused) and `{prefix}{{profile}}:lock`;
/// every write is published on the channel `{prefix}{{profile}}:events`. The default
/// prefix is `tower-bearer:`. The braces make the profile a hash tag: on a Redis
/// Cluster a profile's keys live in one slot, and every script touches one key.
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    token_key: Arc<str>,
    lock_key: Arc<str>,
    /// The channel every write is published on.
    events: Arc<str>,
    /// For the subscription that wakes waiting replicas (the server, or each seed
    /// node of a cluster, tried in turn); empty when made from a connection
    /// ([`RedisStore::with_connection`]): waiters then only poll.
    subscribers: Arc<[redis::Client]>,
    /// The keys tokens are sealed and opened with ([`RedisStore::encrypt_with`]).
    keys: Keyring,
}

impl RedisStore {
    /// Connects to Redis at `url` (`redis://host:port/db`, or `rediss://` with the
    /// `redis-tls` feature) for `profile`: [`RedisStore::connect_with`] with
    /// [`RedisConfig::new`]`(url)`.
    ///
    /// The connection reconnects by itself after a failure; commands time out after
    /// 2 s (a command that fails returns [`Error::Store`], the next one reconnects).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad URL, [`Error::Store`] when Redis cannot be
    /// reached now.
    pub async fn connect(url: &str, profile: &str) -> Result<Self, Error> {
        Self::connect_with(&RedisConfig::new(url), profile).await
    }

    /// Connects to the Redis server or cluster of `config` (TLS, a CA of your own, a
    /// client certificate) for `profile`, with the key prefix `tower-bearer:`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a bad configuration, [`Error::Store`] when Redis
    /// cannot be reached now.
    pub async fn connect_with(config: &RedisConfig, profile: &str) -> Result<Self, Error> {
        let subscribers = config.clients()?;
        let conn = config.connect().await?;
        let mut store = Self::with_connection(conn, "tower-bearer:", profile);
        store.subscribers = subscribers.into();
        Ok(store)
    }

    /// A store over a connection you configured (a [`RedisConnection`], or a
    /// [`ConnectionManager`](redis::aio::ConnectionManager)), with your key prefix. Replicas waiting for another
    /// one's refresh poll Redis (they are not woken by its write: that needs a
    /// connection of its own, which [`RedisStore::connect_with`] makes).
    pub fn with_connection(conn: impl Into<RedisConnection>, prefix: &str, profile: &str) -> Self {
        RedisStore {
            conn: conn.into(),
            token_key: format!("{prefix}{{{profile}}}:token").into(),
            lock_key: format!("{prefix}{{{profile}}}:lock").into(),
            events: format!("{prefix}{{{profile}}}:events").into(),
            subscribers: Arc::new([]),
            keys: Keyring::default(),
        }
    }

    /// Encrypts the tokens written to Redis with `key` (AES-256-GCM: the whole
    /// token, access and refresh tokens, expiry and scope), and opens entries
    /// sealed with it. Set it on every replica, before [`RedisStore::fleet`].
    ///
    /// - Readable without the key: the lineage, version, expiry, a digest of the
    ///   access token and the key's id (hash field `kid`), which the scripts
    ///   compare, so newer-only holds unchanged. The ciphertext is bound to the
    ///   token's Redis key (prefix and profile) and its lineage: copied to another
    ///   profile, or given another lineage, it does not open.
    /// - A new random nonce for every write.
    /// - Read without the key, under a key this store was not given, or with the
    ///   wrong key under that id: [`Error::Store`] saying so. A save never writes
    ///   over an entry sealed under a key the replica does not have (the script
    ///   checks the `kid` field), so one misconfigured replica cannot lock the
    ///   others out.
    /// - Rotation: give the new key to `encrypt_with` and the old one to
    ///   [`decrypt_with`](Self::decrypt_with), on every replica; the next save (the
    ///   fleet's next refresh, or a save of the very token the entry holds) seals
    ///   it with the new key, and then the old key is no longer needed.
    /// - Migration: a plain entry is read as before and the next save (a newer
    ///   token, or the very token the entry holds) seals it.
    /// - What it does not stop: a client that can write to Redis but has not the
    ///   key can still put back an older entry (a rollback to an older token),
    ///   delete it, raise its `lin` field so that saves of newer tokens are taken
    ///   for older, or write a plain entry holding a token of their choosing
    ///   (adopted as a migration is). The key keeps the token secret and refuses a
    ///   sealed token altered or moved; Redis's ACLs are what keep others from
    ///   writing the entry.
    #[must_use]
    pub fn encrypt_with(mut self, key: AtRestKey) -> Self {
        self.keys = std::mem::take(&mut self.keys).with_current(key);
        self
    }

    /// Opens entries sealed with `key` (an earlier key, after a rotation) without
    /// sealing with it; may be called for several keys.
    #[must_use]
    pub fn decrypt_with(mut self, key: AtRestKey) -> Self {
        self.keys = std::mem::take(&mut self.keys).with_old(key);
        self
    }

    /// Refuses an entry holding its token in the clear instead of adopting it: for a
    /// fleet past its migration to [`encrypt_with`](Self::encrypt_with), so that a
    /// writer without the key cannot plant a token of their choosing. Such an entry
    /// is an [`Error::Store`] on load; a newer sealed token still replaces it.
    #[must_use]
    pub fn require_sealed(mut self) -> Self {
        self.keys = std::mem::take(&mut self.keys).sealed_only();
        self
    }

    /// The Redis key of the token hash.
    pub fn token_key(&self) -> &str {
        &self.token_key
    }

    /// The Redis key of the refresh lock.
    pub fn lock_key(&self) -> &str {
        &self.lock_key
    }

    /// `source` behind a fleet-wide single flight through this store.
    pub fn fleet<S: TokenSource>(&self, source: S) -> FleetSource<S> {
        FleetSource::new(self.clone(), source)
    }

    /// The version of the stored token: it grows by one with every write, and is 0
    /// when nothing was ever written.
    ///
    /// # Errors
    /// [`Error::Store`] when Redis fails.
    pub async fn version(&self) -> Result<u64, Error> {
        Ok(self.read().await?.version)
    }

    async fn read(&self) -> Result<Snapshot, Error> {
        let (json, version): (Option<String>, Option<u64>) = redis::cmd("HMGET")
            .arg(&*self.token_key)
            .arg("token")
            .arg("version")
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("read", e))?;
        let json = json.map(zeroize::Zeroizing::new);
        let token = match &json {
            Some(json) => Some(decode(json, &self.keys, &self.token_key)?),
            None => None,
        };
        Ok(Snapshot {
            token,
            version: version.unwrap_or(0),
        })
    }

    /// Writes `token` if the version is still `expected`; the new version, or None
    /// when another writer came first.
    async fn write_fenced(&self, expected: u64, token: &Token) -> Result<Option<u64>, Error> {
        let enc = encode(token, &self.keys, &self.token_key)?;
        let written: i64 = redis::Script::new(WRITE_FENCED)
            .key(&*self.token_key)
            .arg(expected)
            .arg(enc.json.as_str())
            .arg(enc.exp)
            .arg(&enc.fp)
            .arg(enc.lineage)
            .arg(&*self.events)
            .arg(&enc.kid)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("write", e))?;
        Ok(u64::try_from(written).ok())
    }

    /// Claims the presentation of the refresh token named `grant` (see [`CLAIM`]).
    async fn claim(&self, owner: &str, grant: &str, patience: Duration) -> Result<Claim, Error> {
        let answer: i64 = redis::Script::new(CLAIM)
            .key(&*self.token_key)
            .arg(owner)
            .arg(grant)
            .arg(millis(patience))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("claim", e))?;
        Ok(match answer {
            0 => Claim::Present,
            n if n < 0 => Claim::Refused,
            n => Claim::Wait(Duration::from_millis(n.unsigned_abs())),
        })
    }

    /// Ends `owner`'s claim; `refused`: the name of the refresh token refused.
    async fn unclaim(&self, owner: &str, refused: Option<&str>) {
        let result: Result<i64, _> = redis::Script::new(UNCLAIM)
            .key(&*self.token_key)
            .arg(owner)
            .arg(refused.unwrap_or(""))
            .invoke_async(&mut self.conn.clone())
            .await;
        if let Err(error) = result {
            tracing::warn!(%error, key = %self.token_key, "could not end the refresh claim");
        }
    }

    async fn try_lock(&self, owner: &str, ttl: Duration) -> Result<bool, Error> {
        let set: Option<String> = redis::cmd("SET")
            .arg(&*self.lock_key)
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("lock", e))?;
        Ok(set.is_some())
    }

    async fn extend_lock(&self, owner: &str, ttl: Duration) -> Result<bool, Error> {
        let extended: i64 = redis::Script::new(EXTEND)
            .key(&*self.lock_key)
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|e| redis_error("extend lock", e))?;
        Ok(extended == 1)
    }

    async fn release(&self, owner: &str) {
        let released: Result<i64, _> = redis::Script::new(RELEASE)
            .key(&*self.lock_key)
            .arg(owner)
            .invoke_async(&mut self.conn.clone())
            .await;
        match released {
            Ok(1) => {}
            Ok(_) => {
                tracing::warn!(lock = %self.lock_key, "the refresh lock had expired before release")
            }
            Err(error) => {
                tracing::warn!(%error, lock = %self.lock_key, "could not release the refresh lock; it expires by itself")
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl TokenStore for RedisStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Token>, Error>> {
        async move { Ok(self.read().await?.token) }.boxed()
    }

    /// Saves `token`, unless it is already stored or the stored token is as new or
    /// newer (by [`Lineage`](crate::Lineage)): a newer token from another replica is
    /// never replaced by an older one.
    fn save<'a>(&'a self, token: &'a Token) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let enc = encode(token, &self.keys, &self.token_key)?;
            let version: i64 = redis::Script::new(SAVE)
                .key(&*self.token_key)
                .arg(enc.json.as_str())
                .arg(enc.exp)
                .arg(&enc.fp)
                .arg(enc.lineage)
                .arg(&*self.events)
                .arg(&enc.kid)
                .arg(self.keys.ids_for_script())
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(|e| redis_error("save", e))?;
            if version == -2 {
                return Err(Error::Store(format!(
                    "the token at Redis key {} is encrypted under a key this store was not \
                     given (it has {:?}); not writing over it: give this replica that key",
                    self.token_key, self.keys
                )));
            }
            if version < 0 {
                tracing::debug!(key = %self.token_key, "kept the newer token already in Redis");
            }
            Ok(())
        }
        .boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        async move {
            redis::cmd("DEL")
                .arg(&*self.token_key)
                .query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(|e| redis_error("clear", e))
        }
        .boxed()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("token_key", &self.token_key)
            .field("lock_key", &self.lock_key)
            .field("encryption", &self.keys)
            .finish_non_exhaustive()
    }
}

/// A [`TokenSource`] that refreshes once for a whole fleet: made by
/// [`RedisStore::fleet`]; see the [module docs](self).
pub struct FleetSource<S> {
    store: RedisStore,
    source: S,
    owner: String,
    lock_ttl: Duration,
    wait_timeout: Duration,
    poll: (Duration, Duration),
    /// A token obtained from the token endpoint whose write to Redis failed: written
    /// (fenced by the version it was refreshed from) before anything else is tried.
    unsaved: Mutex<Option<(u64, Token)>>,
    /// The name ([`grant_name`]) of the refresh token the endpoint refused, and the
    /// refusal: that refresh token is never presented again. Named by what is
    /// presented, not by the lineage of the token that carried it: every entry
    /// written without a lineage has the same one.
    dead: Mutex<Option<(String, Error)>>,
    /// Bumped by a subscription to the store's channel whenever a replica writes a
    /// token: waiters wake at once instead of at their next poll.
    wakeups: std::sync::OnceLock<Option<watch::Receiver<u64>>>,
}

/// What a refresh under the lock gave.
enum Locked {
    Done(Result<Token, Error>),
    /// `invalid_grant` for the refresh token of `base`; `owned` when `base` was the
    /// fleet's token (the one in Redis), not this replica's own.
    Refused {
        base: Option<Token>,
        owned: bool,
        error: Error,
    },
    /// Another replica is presenting the refresh token of `base` (its lock lapsed):
    /// wait up to `wait` for its token instead of reusing the refresh token.
    Lapsed {
        base: Option<Token>,
        wait: Duration,
    },
}

impl<S: TokenSource> FleetSource<S> {
    /// `source` behind a fleet-wide single flight through `store`.
    pub fn new(store: RedisStore, source: S) -> Self {
        FleetSource {
            store,
            source,
            owner: format!("{}-{:016x}", std::process::id(), fastrand::u64(..)),
            lock_ttl: Duration::from_secs(30),
            wait_timeout: Duration::from_secs(60),
            poll: (Duration::from_millis(10), Duration::from_millis(200)),
            unsaved: Mutex::new(None),
            dead: Mutex::new(None),
            wakeups: std::sync::OnceLock::new(),
        }
    }

    /// How long the refresh lock lives without renewal. The holder renews it every
    /// third of this while its refresh runs; a holder that dies frees it after at most
    /// this long. A replica whose lock lapsed while it presented the refresh token (a
    /// paused process, a slow answer) is given until twice this long after it
    /// presented to publish its token, before another replica presents the same
    /// refresh token again; a replica refused the refresh token (`invalid_grant`)
    /// waits this long for such a token. Default 30 s.
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How long a replica waits for another one's refresh before it gives up with
    /// [`Error::Store`]. Default 60 s.
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// The polling interval while another replica refreshes: `min`, doubling up to
    /// `max`. Default 10 ms to 200 ms.
    #[must_use]
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.poll = (min, max.max(min));
        self
    }

    /// The store this source shares tokens through.
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    fn take_unsaved(&self) -> Option<(u64, Token)> {
        self.unsaved
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn keep_unsaved(&self, version: u64, token: Token) {
        *self.unsaved.lock().unwrap_or_else(PoisonError::into_inner) = Some((version, token));
    }

    async fn fetch_shared(&self, previous: Option<&Token>) -> Result<Token, Error> {
        if let Some((version, token)) = self.take_unsaved() {
            match self.share(version, &token).await {
                Ok(None) => {
                    tracing::info!(key = %self.store.token_key, "saved the token whose write had failed");
                    return Ok(token);
                }
                Ok(Some(theirs)) => return Ok(theirs),
                Err(error) => {
                    self.keep_unsaved(version, token);
                    return Err(error);
                }
            }
        }
        let deadline = Instant::now() + self.wait_timeout;
        let mut delay = self.poll.0;
        let mut wake = self.wakeups();
        // Set when another replica held the lock: this replica waits for its token.
        let mut waiting = None;
        loop {
            mark_seen(&mut wake);
            let snapshot = self.store.read().await?;
            if let Some(token) = snapshot.adoptable(previous) {
                tracing::debug!(
                    version = snapshot.version,
                    "took the token another replica refreshed"
                );
                if let Some(since) = waiting {
                    metrics::fleet_wait(WaitEnd::Token, since);
                }
                return Ok(token);
            }
            let locked = self.store.try_lock(&self.owner, self.lock_ttl).await;
            metrics::fleet_lock(locked.as_ref().ok().copied());
            if locked? {
                let locked = self.refresh_locked(previous).await;
                self.store.release(&self.owner).await;
                match locked {
                    Locked::Done(result) => {
                        if let Some(since) = waiting {
                            let end = if result.is_ok() {
                                WaitEnd::Token
                            } else {
                                WaitEnd::Error
                            };
                            metrics::fleet_wait(end, since);
                        }
                        return result;
                    }
                    Locked::Refused { base, owned, error } => {
                        return self.await_publication(base.as_ref(), owned, error).await
                    }
                    Locked::Lapsed { base, wait } => {
                        metrics::fleet_lost_race(metrics::Race::Claim);
                        tracing::info!(
                            wait_ms = wait.as_millis() as u64,
                            "another replica is presenting the refresh token; waiting for its answer"
                        );
                        if let Some(token) = self.watch(base.as_ref(), wait).await {
                            return Ok(token);
                        }
                        // No answer: that replica died; the next turn presents it.
                        continue;
                    }
                }
            }
            let since = *waiting.get_or_insert_with(metrics::Started::now);
            let now = Instant::now();
            if now >= deadline {
                metrics::fleet_wait(WaitEnd::Timeout, since);
                return Err(Error::Store(format!(
                    "waited {:?} for another replica to refresh the token (lock {})",
                    self.wait_timeout, self.store.lock_key
                )));
            }
            sleep_or_wake(delay.min(deadline - now), &mut wake).await;
            delay = (delay * 2).min(self.poll.1);
        }
    }

    /// A receiver woken by every token written to the store, if a subscription can
    /// be made (a store made by [`RedisStore::connect`], inside a runtime). The
    /// subscription runs on its own task while this source lives, and reconnects.
    fn wakeups(&self) -> Option<watch::Receiver<u64>> {
        self.wakeups
            .get_or_init(|| {
                if self.store.subscribers.is_empty() {
                    return None;
                }
                let handle = tokio::runtime::Handle::try_current().ok()?;
                let (tx, rx) = watch::channel(0);
                let clients = Arc::clone(&self.store.subscribers);
                handle.spawn(listen(clients, Arc::clone(&self.store.events), tx));
                Some(rx)
            })
            .clone()
    }

    /// Refreshes while holding the lock.
    async fn refresh_locked(&self, previous: Option<&Token>) -> Locked {
        // Read again: the token may have been written between our read and the lock.
        let snapshot = match self.store.read().await {
            Ok(snapshot) => snapshot,
            Err(error) => return Locked::Done(Err(error)),
        };
        if let Some(token) = snapshot.adoptable(previous) {
            return Locked::Done(Ok(token));
        }
        // The newest refresh token: Redis's, unless ours is newer (Redis lost data).
        let owned = match (&snapshot.token, previous) {
            (Some(stored), Some(ours)) => !ours.is_newer_than(stored),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let base = if owned {
            snapshot.token.clone()
        } else {
            previous.cloned()
        };
        let dead = self
            .dead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let grant = grant_name(&self.source, base.as_ref());
        if let Some((name, error)) = dead {
            if name == grant.name {
                // Refused before: presenting it again would only be a reuse.
                return Locked::Done(Err(self.refusal(owned, error)));
            }
        }
        match self
            .store
            .claim(&self.owner, &grant.name, self.lock_ttl.saturating_mul(2))
            .await
        {
            Err(error) => return Locked::Done(Err(error)),
            Ok(Claim::Wait(wait)) => return Locked::Lapsed { base, wait },
            Ok(Claim::Refused) => {
                let error = refused_elsewhere();
                self.remember_dead(&grant, &error);
                return Locked::Refused { base, owned, error };
            }
            Ok(Claim::Present) => {}
        }
        match self.fetch_renewing(base.as_ref()).await {
            Ok(token) => Locked::Done(self.save_fetched(snapshot.version, token).await),
            Err(error @ Error::InvalidGrant(_)) => {
                self.remember_dead(&grant, &error);
                // Recorded only under a name that is this refresh token's alone: a
                // record "the seed" would refuse every later seed.
                let refused = grant.unique.then_some(grant.name.as_str());
                self.store.unclaim(&self.owner, refused).await;
                Locked::Refused { base, owned, error }
            }
            Err(error) => {
                // An answer leaves the refresh token as it was; a lost connection
                // may not have, so the claim stays for the next holder to heed.
                if !matches!(
                    error,
                    Error::Transport(..) | Error::Timeout(..) | Error::Aborted(_)
                ) {
                    self.store.unclaim(&self.owner, None).await;
                }
                // A replica whose lock lapsed may have refreshed meanwhile: its token
                // is as good.
                if let Ok(now) = self.store.read().await {
                    if now.version != snapshot.version {
                        if let Some(token) = now.adoptable(previous) {
                            tracing::debug!(%error, "refresh failed but another replica's token is there");
                            return Locked::Done(Ok(token));
                        }
                    }
                }
                Locked::Done(Err(error))
            }
        }
    }

    /// After `invalid_grant`: another replica (one whose lock lapsed while its answer
    /// was slow) may have spent the same refresh token first, and publishes its token
    /// soon. Waits up to one lock TTL for a token newer than `base`.
    async fn await_publication(
        &self,
        base: Option<&Token>,
        owned: bool,
        error: Error,
    ) -> Result<Token, Error> {
        match self.watch(base, self.lock_ttl).await {
            Some(token) => {
                tracing::info!(
                    "our refresh token had been spent by another replica; took the token it published"
                );
                Ok(token)
            }
            None => Err(self.refusal(owned, error)),
        }
    }

    /// Polls Redis for up to `limit` for a valid token newer than `base`.
    async fn watch(&self, base: Option<&Token>, limit: Duration) -> Option<Token> {
        let started = metrics::Started::now();
        let deadline = Instant::now() + limit;
        let mut delay = self.poll.0;
        let mut wake = self.wakeups();
        loop {
            mark_seen(&mut wake);
            if let Ok(snapshot) = self.store.read().await {
                if let Some(token) = snapshot.adoptable(base) {
                    metrics::fleet_wait(WaitEnd::Token, started);
                    return Some(token);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                metrics::fleet_wait(WaitEnd::Timeout, started);
                return None;
            }
            sleep_or_wake(delay.min(deadline - now), &mut wake).await;
            delay = (delay * 2).min(self.poll.1);
        }
    }

    /// Never presents the refresh token named `grant` again (when the name is its
    /// alone).
    fn remember_dead(&self, grant: &GrantName, error: &Error) {
        if grant.unique {
            *self.dead.lock().unwrap_or_else(PoisonError::into_inner) =
                Some((grant.name.clone(), error.clone()));
        }
    }

    /// What a replica says when its refresh token was refused and no newer token was
    /// published: the fleet's token is dead (`invalid_grant`, only when it was the one
    /// in Redis), or only this replica's own, older one was (retried, reading Redis).
    fn refusal(&self, owned: bool, error: Error) -> Error {
        if owned {
            error
        } else {
            Error::Superseded(format!(
                "this replica's refresh token was refused and Redis ({}) holds no newer token yet",
                self.store.token_key
            ))
        }
    }

    /// The inner fetch, renewing the lock every third of its TTL while it runs.
    async fn fetch_renewing(&self, base: Option<&Token>) -> Result<Token, Error> {
        let fetch = self.source.fetch(base);
        let renew = async {
            loop {
                tokio::time::sleep(self.lock_ttl / 3).await;
                match self.store.extend_lock(&self.owner, self.lock_ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        metrics::fleet_lost_race(metrics::Race::Lock);
                        tracing::warn!(
                            "lost the refresh lock while refreshing; the write is fenced"
                        );
                        future::pending::<()>().await;
                    }
                    Err(error) => tracing::warn!(%error, "could not renew the refresh lock"),
                }
            }
        };
        match future::select(fetch, Box::pin(renew)).await {
            Either::Left((result, _)) => result,
            Either::Right(((), _)) => unreachable_renewal(),
        }
    }

    /// Writes `token`, refreshed from `version`; `Some` is the token to use instead.
    ///
    /// When another write came first, the valid token in Redis is the fleet's. When
    /// Redis holds none (it lost its data: a restart without persistence) or only an
    /// expired one, ours is the newest and is written over it.
    async fn share(&self, version: u64, token: &Token) -> Result<Option<Token>, Error> {
        let mut expected = version;
        for _ in 0..3 {
            if let Some(written) = self.store.write_fenced(expected, token).await? {
                tracing::debug!(version = written, "shared the refreshed token");
                return Ok(None);
            }
            let now = self.store.read().await?;
            match now.token {
                Some(theirs) if !theirs.is_expired() => {
                    metrics::fleet_lost_race(metrics::Race::Write);
                    tracing::warn!("another replica wrote a token during our refresh; using it");
                    return Ok(Some(theirs));
                }
                _ => expected = now.version,
            }
        }
        Err(Error::Store(
            "the token in Redis kept changing while we wrote ours".into(),
        ))
    }

    /// Writes a token just obtained, fenced by the version it was refreshed from.
    async fn save_fetched(&self, version: u64, token: Token) -> Result<Token, Error> {
        // A rotated refresh token exists only here until it is in Redis: retry a few
        // times (the connection reconnects), then keep it for the next attempt.
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(50) * (1 << attempt)).await;
            }
            match self.share(version, &token).await {
                Ok(None) => return Ok(token),
                Ok(Some(theirs)) => return Ok(theirs),
                Err(error) => last = Some(error),
            }
        }
        self.keep_unsaved(version, token);
        let error = last.unwrap_or_else(|| Error::Store("write failed".into()));
        tracing::error!(%error, "could not share the refreshed token; it is kept and written on the next attempt");
        Err(error)
    }
}

/// Marks every write so far as seen: a write after this (and after the read that
/// follows) wakes the next [`sleep_or_wake`].
fn mark_seen(wake: &mut Option<watch::Receiver<u64>>) {
    if let Some(rx) = wake {
        rx.borrow_and_update();
    }
}

/// Sleeps `delay`, or less when a replica writes a token meanwhile.
async fn sleep_or_wake(delay: Duration, wake: &mut Option<watch::Receiver<u64>>) {
    let mut sleep = std::pin::pin!(tokio::time::sleep(delay));
    let ended = match wake {
        Some(rx) => {
            let changed = std::pin::pin!(rx.changed());
            matches!(
                future::select(sleep.as_mut(), changed).await,
                Either::Right((Err(_), _))
            )
        }
        None => {
            sleep.await;
            return;
        }
    };
    if ended {
        // The subscription ended: poll.
        *wake = None;
        sleep.await;
    }
}

/// Subscribes to `channel` and bumps `tx` on every message, reconnecting with a
/// backoff, until every receiver is gone. `clients`: the server, or a cluster's seed
/// nodes (a cluster forwards `PUBLISH` to every node), tried in turn.
async fn listen(clients: Arc<[redis::Client]>, channel: Arc<str>, tx: watch::Sender<u64>) {
    use futures_util::StreamExt;
    let mut delay = Duration::from_millis(100);
    for client in clients.iter().cycle() {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => match pubsub.subscribe(&*channel).await {
                Ok(()) => {
                    delay = Duration::from_millis(100);
                    // Writes while we were away: wake whoever waits to read again.
                    tx.send_modify(|n| *n = n.wrapping_add(1));
                    let mut messages = pubsub.on_message();
                    loop {
                        let closed = std::pin::pin!(tx.closed());
                        match future::select(messages.next(), closed).await {
                            Either::Left((Some(_), _)) => {
                                tx.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            Either::Left((None, _)) => break,
                            Either::Right(_) => return,
                        }
                    }
                }
                Err(error) => tracing::debug!(%error, "could not subscribe to token writes"),
            },
            Err(error) => tracing::debug!(%error, "could not connect for token writes"),
        }
        let closed = std::pin::pin!(tx.closed());
        let pause = std::pin::pin!(tokio::time::sleep(delay));
        if let Either::Left(_) = future::select(closed, pause).await {
            return;
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// The name a claim and a refusal record give the refresh token a fetch from `base`
/// presents.
struct GrantName {
    name: String,
    /// Whether the name is this refresh token's alone, so that a refusal may be
    /// recorded under it.
    unique: bool,
}

/// The digest of the refresh token `source` presents from `base`
/// ([`TokenSource::presents`]); for a source that cannot tell, `base`'s lineage, which
/// is not unique for a token with none (every seed is "no token"): only a claim, no
/// refusal, is recorded under such a name.
fn grant_name<S: TokenSource>(source: &S, base: Option<&Token>) -> GrantName {
    match source.presents(base) {
        Some(presented) => GrantName {
            name: presented.to_hex(),
            unique: true,
        },
        None => {
            let lineage = base.map_or(0, |b| b.lineage().as_micros());
            GrantName {
                name: format!("lineage:{lineage}"),
                unique: lineage != 0,
            }
        }
    }
}

/// `invalid_grant` that another replica received for the same refresh token.
fn refused_elsewhere() -> Error {
    let mut answer = crate::EndpointError::status(http::StatusCode::BAD_REQUEST);
    answer.code = Some("invalid_grant".into());
    answer.description =
        Some("another replica was refused this refresh token; it is not presented again".into());
    Error::InvalidGrant(Box::new(answer))
}

/// The renewal loop never ends; its future only exists to run beside the fetch.
fn unreachable_renewal() -> Result<Token, Error> {
    Err(Error::Aborted("the lock renewal ended".into()))
}

impl<S: TokenSource> TokenSource for FleetSource<S> {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.fetch_shared(previous).boxed()
    }

    /// Every replica shares the token in Redis: after `invalid_grant` a later fetch
    /// may still find the fleet's newer token.
    fn shares_tokens(&self) -> bool {
        true
    }

    fn presents(&self, previous: Option<&Token>) -> Option<crate::client::source::Presented> {
        self.source.presents(previous)
    }
}

impl<S> fmt::Debug for FleetSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetSource")
            .field("store", &self.store)
            .field("lock_ttl", &self.lock_ttl)
            .field("wait_timeout", &self.wait_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_round_trip_with_millisecond_expiry() {
        let token = Token::bearer("a-1")
            .unwrap()
            .with_expires_in(Duration::from_millis(1500))
            .with_refresh_token("r-1");
        let plain = Keyring::default();
        let enc = encode(&token, &plain, "k").unwrap();
        let back = decode(&enc.json, &plain, "k").unwrap();
        assert_eq!(back.access_token().expose_secret(), "a-1");
        assert_eq!(back.refresh_token().unwrap().expose_secret(), "r-1");
        let left = back.expires_in().unwrap().as_millis();
        assert!((1400..=1500).contains(&left), "{left}");
        assert_eq!(enc.fp, fingerprint(&back));
        assert!(!enc.fp.contains("a-1"));
    }

    #[tokio::test]
    async fn only_a_newer_valid_token_is_adopted() {
        let older = Token::bearer("a-0").unwrap();
        let token = Token::bearer("a-1")
            .unwrap()
            .with_expires_in(Duration::from_secs(60));
        let snap = Snapshot {
            token: Some(token.clone()),
            version: 3,
        };
        assert!(snap.adoptable(Some(&token)).is_none());
        assert!(snap.adoptable(None).is_some());
        assert!(snap.adoptable(Some(&older)).is_some());
        let newer = Token::bearer("a-2").unwrap();
        assert!(
            snap.adoptable(Some(&newer)).is_none(),
            "an older token is never adopted, even a different one"
        );
        let expired = Snapshot {
            token: Some(token.with_expires_in(Duration::ZERO)),
            version: 3,
        };
        assert!(expired.adoptable(None).is_none());
    }

    #[test]
    fn bad_json_is_a_store_error_that_quotes_nothing() {
        let plain = Keyring::default();
        assert!(matches!(decode("{nope", &plain, "k"), Err(Error::Store(_))));
        for wrong in [
            r#"{"access_token": 1, "token_type": "s3cret-value"}"#,
            r#"{"access_token": "x", "token_type": "Bearer", "expires_at_ms": "s3cret"}"#,
        ] {
            let Err(error) = decode(wrong, &plain, "k") else {
                panic!("decoded {wrong}")
            };
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn sealed_entries_hide_the_token_and_are_bound_to_their_key() {
        let keys = Keyring::default().with_current(AtRestKey::new("k1", &[3; 32]).unwrap());
        let token = Token::bearer("a-secret")
            .unwrap()
            .with_expires_in(Duration::from_secs(60))
            .with_refresh_token("r-secret");
        let enc = encode(&token, &keys, "p:{a}:token").unwrap();
        assert_eq!(enc.kid, "k1");
        assert!(!enc.json.contains("secret"), "{}", enc.json.as_str());
        let back = decode(&enc.json, &keys, "p:{a}:token").unwrap();
        assert_eq!(back.refresh_token().unwrap().expose_secret(), "r-secret");
        assert_eq!(back.lineage(), token.lineage());
        for (keys, key) in [(&keys, "p:{b}:token"), (&Keyring::default(), "p:{a}:token")] {
            let Err(Error::Store(message)) = decode(&enc.json, keys, key) else {
                panic!("opened under {key}")
            };
            assert!(
                message.contains("encrypted") || message.contains("decrypt"),
                "{message}"
            );
        }
    }
}
