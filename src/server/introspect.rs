//! [`Introspection`]: opaque tokens checked with the authorization server's RFC 7662
//! introspection endpoint, with a cache and one call per token at a time; with
//! feature `jwt`, answers signed by the authorization server (RFC 9701,
//! [`IntrospectionKeys`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::{self, CacheName, CountedCache, Introspected};
use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::time::Instant;

use super::validator::{Claims, ValidationFuture, Validator};
use super::{Rejection, Unavailable};
use crate::flight::{Joined, SingleFlight};
use crate::transport::{check_url, parse_url};
use crate::{Endpoint, Error, HttpClient};

#[cfg(feature = "jwt")]
mod signed;
#[cfg(feature = "jwt")]
#[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
pub use signed::{IntrospectionKeys, DEFAULT_ANSWER_MAX_AGE, TOKEN_INTROSPECTION_JWT};

/// The default longest time an active answer is reused (never past the token's `exp`):
/// also how long a token revoked at the provider may still be accepted.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The default time an `active: false` answer is reused.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The default number of cached accepted answers.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;
/// The default number of cached refusals (kept apart from the accepted answers).
pub const DEFAULT_MAX_REFUSALS: usize = 1_000;
/// The default wait after a failed introspection call before the endpoint is asked
/// again (doubled per failure in a row, up to [`MAX_FAILURE_BACKOFF`]).
pub const DEFAULT_FAILURE_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait after failures in a row.
pub const MAX_FAILURE_BACKOFF: Duration = Duration::from_secs(30);

/// How the resource server authenticates to the introspection endpoint (RFC 7662 §2.1:
/// the `introspection_endpoint_auth_method`).
///
/// Not to be confused with the client side's
/// [`TokenEndpointAuth`](crate::client::TokenEndpointAuth), how a client authenticates
/// to the token endpoint; both can be imported side by side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IntrospectionAuth {
    /// HTTP Basic with the client id and secret (`client_secret_basic`, the default).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// Validates opaque tokens by asking the authorization server (RFC 7662).
///
/// **Revocation takes up to [`ttl`](Self::ttl), 30 s by default.** An accepted
/// answer is cached: a token revoked at the provider is still accepted until its
/// cached answer ends. Shorten the TTL (`ttl(Duration::ZERO)` asks on every
/// request), or refuse revoked tokens at once with a denylist
/// (`RedisDenylist::guard`, feature `redis`); lengthen it to spare the provider.
///
/// - The token is POSTed with the resource server's client credentials;
///   `active: false` is an invalid token, a failing endpoint `503`.
/// - An active token must also be for this resource server when
///   [`audience`](Self::audience) or [`issuer`](Self::issuer) is set (RFC 7662 §4,
///   RFC 8707): its `aud` must name one of the audiences and its `iss` be one of the
///   issuers, else `401 invalid_token`. An authorization server serves many resource
///   servers, and without them a token it issued for another one is accepted here.
/// - The provider's answers are cached by the SHA-256 of the token, as the provider
///   gave them: never a verdict. Every request, cache hit or not, is judged with
///   this validator's own issuer, audience, scopes and TTLs, so clones configured
///   for other APIs (`base.clone().audience(…)`) share the provider's answers, one
///   call per token, but never each other's verdicts. Clones given other
///   [`client`](Self::client) credentials do not share answers (the provider may
///   answer each client differently).
/// - An active answer is served until the token's `exp` or the TTL (default 30 s),
///   whichever comes first, an inactive one for the negative TTL (default 10 s).
///   Answers this validator accepted are kept at most
///   [`max_entries`](Self::max_entries); the others in a separate, smaller cache
///   ([`max_refusals`](Self::max_refusals)), so a flood of one bad token is one call
///   and a flood of many bad tokens cannot evict the accepted answers. Both caches
///   evict scan-resistantly (S3-FIFO, the `quick_cache` crate): tokens seen once go
///   before tokens in use.
/// - Under a [`VerifiedCache`](super::VerifiedCache), every hit is checked again
///   here ([`Validator::recheck`]): a revocation still counts within the TTL.
/// - Concurrent requests for one uncached token make one call, shared through the
///   crate's single flight. The TTLs count from when the provider was asked, not
///   from when its answer arrived.
/// - **No storm on a failing endpoint.** After a call fails (unreachable, timed
///   out, or any status but `200` and `400`), requests whose answer is not cached
///   are answered `503` with `Retry-After`, without a call, for
///   [`failure_backoff`](Self::failure_backoff) (default 1 s), doubled per failure
///   in a row up to [`MAX_FAILURE_BACKOFF`]; then one call is tried again. Cached
///   answers are still served. A failure that may be the token's own (a `400`, or
///   an answer that does not parse) holds back only that token, for the same time.
///
/// - **Signed answers** (RFC 9701, feature `jwt`): with `jwt_response`, the
///   answers are asked for as JWTs signed by the authorization server and only
///   those are read, checked with its keys (`IntrospectionKeys`); an unsigned or
///   refused answer is `503`, never a verdict.
///
/// `C` is built from the introspection answer (the provided [`Claims`], or your
/// own serde type).
///
/// ```no_run
/// use tower_bearer::server::{Claims, Introspection, IntrospectionAuth, RequireBearerLayer};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let validator = Introspection::<Claims>::new("https://idp.example.com/oauth/introspect")?
///     .client("my-api", "s3cret")
///     .client_auth(IntrospectionAuth::Basic)
///     .issuer("https://idp.example.com")
///     .audience("https://api.example.com/items")
///     .require_scopes(["items:read"]);
/// let layer = RequireBearerLayer::new(validator);
/// # Ok(()) }
/// ```
pub struct Introspection<C = Claims> {
    config: Arc<Config>,
    state: Arc<State<C>>,
}

struct Config {
    endpoint: Uri,
    client_id: String,
    client_secret: Option<SecretString>,
    auth: IntrospectionAuth,
    http: HttpClient,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    max_refusals: usize,
    failure_backoff: Duration,
    required_scopes: Vec<String>,
    issuers: Vec<String>,
    audiences: Vec<String>,
    /// RFC 9701: ask for signed answers, checked with these keys.
    #[cfg(feature = "jwt")]
    signed: Option<IntrospectionKeys>,
    /// RFC 9701: also accept a plain JSON answer when signed ones are asked for.
    #[cfg(feature = "jwt")]
    allow_unsigned: bool,
}

type Digest32 = [u8; 32];
type Flight<C> = SingleFlight<Arc<Received<C>>, Error>;

/// What the provider answered for a token, as it answered it, and when: the cache
/// holds this, never a verdict. Each clone judges it with its own rules (issuer,
/// audience, scopes, TTLs) on every hit, so clones configured for other APIs can
/// share the provider's answers without sharing their verdicts.
struct Received<C> {
    answer: Answer<C>,
    /// When the answer arrived: a clone serves it for its own TTL from here.
    at: Instant,
}

struct State<C> {
    /// Answers of active tokens that the clone which asked accepted.
    accepted: CountedCache<Digest32, Arc<Received<C>>>,
    /// The other answers (inactive tokens, and active ones the clone which asked
    /// refused), apart: bad tokens churn this cache and never the one above.
    refused: CountedCache<Digest32, Arc<Received<C>>>,
    /// One flight per token being introspected. The job stores its answer, then
    /// removes its own entry (also when it fails, panics or is dropped).
    flights: Mutex<HashMap<Digest32, Arc<Flight<C>>>>,
    /// After a failed call, no call before this (see [`Backoff`]).
    backoff: Mutex<Backoff>,
}

/// The endpoint's failures in a row, and when it may be asked again.
#[derive(Default)]
struct Backoff {
    failures: u32,
    until: Option<Instant>,
}

impl<C> State<C> {
    fn new(config: &Config) -> Self {
        State {
            accepted: metrics::counted_cache(config.max_entries, CacheName::Introspection),
            refused: metrics::counted_cache(config.max_refusals, CacheName::Introspection),
            flights: Mutex::new(HashMap::new()),
            backoff: Mutex::new(Backoff::default()),
        }
    }

    /// How long the endpoint is still not to be asked after a failure, if at all.
    fn backing_off(&self, now: Instant) -> Option<Duration> {
        let until = lock(&self.backoff).until?;
        (until > now).then(|| until - now)
    }
}

/// Whether a failed call says something about the endpoint (everyone waits) or
/// possibly only about the token sent (only that token waits).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Blame {
    Endpoint,
    Token,
}

/// What [`Introspection::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntrospectionStats {
    /// Accepted answers cached (live or not yet evicted).
    pub accepted: usize,
    /// Refusals cached (inactive tokens, a missing scope, audience or issuer).
    pub refused: usize,
    /// Tokens whose introspection call is running now.
    pub in_flight: usize,
}

/// Removes a job's flight from the map when the job ends, however it ends; only
/// that flight (a newer one for the same token stays).
struct ForgetFlight<C> {
    state: Arc<State<C>>,
    digest: Digest32,
    flight: Weak<Flight<C>>,
}

impl<C> Drop for ForgetFlight<C> {
    fn drop(&mut self) {
        let mut flights = lock(&self.state.flights);
        if flights
            .get(&self.digest)
            .is_some_and(|f| std::ptr::eq(Arc::as_ptr(f), self.flight.as_ptr()))
        {
            flights.remove(&self.digest);
        }
    }
}

impl<C> Clone for Introspection<C> {
    fn clone(&self) -> Self {
        Introspection {
            config: Arc::clone(&self.config),
            state: Arc::clone(&self.state),
        }
    }
}

impl<C> fmt::Debug for Introspection<C> {
    // The client secret is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut f = f.debug_struct("Introspection");
        f.field("endpoint", &self.config.endpoint)
            .field("client_id", &self.config.client_id)
            .field("auth", &self.config.auth)
            .field("ttl", &self.config.ttl)
            .field("negative_ttl", &self.config.negative_ttl)
            .field("max_entries", &self.config.max_entries)
            .field("max_refusals", &self.config.max_refusals)
            .field("failure_backoff", &self.config.failure_backoff)
            .field("iss", &self.config.issuers)
            .field("aud", &self.config.audiences)
            .field("required_scopes", &self.config.required_scopes);
        #[cfg(feature = "jwt")]
        f.field("jwt_response", &self.config.signed)
            .field("allow_unsigned_response", &self.config.allow_unsigned);
        f.finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each lock guards a map operation: a panic cannot leave it torn.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Introspection<C> {
    /// Introspects at `endpoint`, with no client credentials until
    /// [`client`](Self::client).
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse, or plain `http://` to
    /// a host other than loopback.
    pub fn new(endpoint: &str) -> Result<Self, Error> {
        let endpoint = parse_url(endpoint)?;
        check_url(&endpoint, false)?;
        let config = Config {
            endpoint,
            client_id: String::new(),
            client_secret: None,
            auth: IntrospectionAuth::Basic,
            http: HttpClient::new(),
            ttl: DEFAULT_TTL,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_refusals: DEFAULT_MAX_REFUSALS,
            failure_backoff: DEFAULT_FAILURE_BACKOFF,
            required_scopes: Vec::new(),
            issuers: Vec::new(),
            audiences: Vec::new(),
            #[cfg(feature = "jwt")]
            signed: None,
            #[cfg(feature = "jwt")]
            allow_unsigned: false,
        };
        Ok(Introspection {
            state: Arc::new(State::new(&config)),
            config: Arc::new(config),
        })
    }

    fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        // Configuration happens before use; a clone made earlier keeps its own.
        let old = &self.config;
        let mut config = Config {
            endpoint: old.endpoint.clone(),
            client_id: old.client_id.clone(),
            client_secret: old.client_secret.clone(),
            auth: old.auth,
            http: old.http.clone(),
            ttl: old.ttl,
            negative_ttl: old.negative_ttl,
            max_entries: old.max_entries,
            max_refusals: old.max_refusals,
            failure_backoff: old.failure_backoff,
            required_scopes: old.required_scopes.clone(),
            issuers: old.issuers.clone(),
            audiences: old.audiences.clone(),
            #[cfg(feature = "jwt")]
            signed: old.signed.clone(),
            #[cfg(feature = "jwt")]
            allow_unsigned: old.allow_unsigned,
        };
        f(&mut config);
        self.config = Arc::new(config);
        self
    }

    /// The resource server's client credentials. The provider may answer each
    /// client differently, so this starts empty caches: call it before use (a clone
    /// given other credentials does not share the answers of the original).
    pub fn client(self, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        let (id, secret) = (client_id.into(), SecretString::from(client_secret.into()));
        self.config(|c| {
            c.client_id = id;
            c.client_secret = Some(secret);
        })
        .fresh_caches()
    }

    /// How the credentials are sent (default [`IntrospectionAuth::Basic`]).
    pub fn client_auth(self, auth: IntrospectionAuth) -> Self {
        self.config(|c| c.auth = auth)
    }

    /// The HTTP client (default: [`HttpClient::new`]).
    pub fn http_client(self, http: HttpClient) -> Self {
        self.config(|c| c.http = http)
    }

    /// The longest time an active answer is reused (default 30 s; never past `exp`),
    /// and so the longest a token revoked at the provider is still accepted. Zero asks
    /// the endpoint on every request.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.config(|c| c.ttl = ttl)
    }

    /// How long an `active: false` answer is reused (default 10 s).
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.config(|c| c.negative_ttl = ttl)
    }

    /// The most accepted answers kept (default 10,000). Call before use: it starts
    /// empty caches.
    pub fn max_entries(self, n: usize) -> Self {
        self.config(|c| c.max_entries = n.max(1)).fresh_caches()
    }

    /// The most refusals kept (default 1,000), apart from the accepted answers so
    /// that a flood of bad tokens cannot evict those. Call before use: it starts empty
    /// caches.
    pub fn max_refusals(self, n: usize) -> Self {
        self.config(|c| c.max_refusals = n.max(1)).fresh_caches()
    }

    /// How long the endpoint is not asked after a failed call (default 1 s),
    /// doubled per failure in a row up to [`MAX_FAILURE_BACKOFF`]: meanwhile
    /// requests whose answer is not cached get `503` with `Retry-After`.
    /// `Duration::ZERO` asks on every request whatever happened before.
    pub fn failure_backoff(self, backoff: Duration) -> Self {
        self.config(|c| c.failure_backoff = backoff)
    }

    fn fresh_caches(mut self) -> Self {
        self.state = Arc::new(State::new(&self.config));
        self
    }

    /// Requires every one of `scopes` in the answer's `scope`; otherwise `403`.
    pub fn require_scopes<T: Into<String>>(self, scopes: impl IntoIterator<Item = T>) -> Self {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.config(|c| c.required_scopes.extend(scopes))
    }

    /// Requires the answer's `iss` to be `issuer`.
    pub fn issuer(self, issuer: impl ToString) -> Self {
        self.issuers([issuer])
    }

    /// Requires the answer's `iss` to be one of `issuers`.
    pub fn issuers<T: ToString>(self, issuers: impl IntoIterator<Item = T>) -> Self {
        let issuers: Vec<String> = issuers.into_iter().map(|i| i.to_string()).collect();
        self.config(|c| c.issuers = issuers)
    }

    /// Requires the answer's `aud` to be (or contain) `audience`: this resource
    /// server's identifier (RFC 8707 resource indicator, or the name the
    /// authorization server knows it by).
    pub fn audience(self, audience: impl ToString) -> Self {
        self.audiences([audience])
    }

    /// Requires the answer's `aud` to be (or contain) one of `audiences`.
    pub fn audiences<T: ToString>(self, audiences: impl IntoIterator<Item = T>) -> Self {
        let audiences: Vec<String> = audiences.into_iter().map(|a| a.to_string()).collect();
        self.config(|c| c.audiences = audiences)
    }

    /// Asks for answers signed by the authorization server (RFC 9701), checked with
    /// `keys`, and accepts only those: `Accept: application/token-introspection+jwt`,
    /// and an answer of that type is a JWS whose signature, `typ`, `iss`, `aud` and
    /// `iat` are checked ([`IntrospectionKeys`]) before the RFC 7662 answer it holds
    /// (`token_introspection`) is judged by this validator's rules as a plain
    /// answer would be.
    ///
    /// An answer that is not signed (plain JSON: the authorization server ignored
    /// the `Accept`, or something on the way replaced the answer) or whose checks
    /// fail is never read: the request is answered `503` (the token may be good,
    /// only the answer is not trusted), a warning says why, and the endpoint is
    /// backed off as after any failed call, so a misconfigured server is not asked
    /// again on every request. [`allow_unsigned_response`](Self::allow_unsigned_response)
    /// accepts plain answers too (while a provider is being migrated).
    ///
    /// The answer's JWT binds no token (RFC 9701 has no claim for it): what ties an
    /// answer to the token is that it answers our own request for that token, over
    /// TLS, and is cached under that token's digest only, in caches of this
    /// configuration (this call starts empty ones: answers obtained without these
    /// keys are never served under them). A captured answer replayed later is refused
    /// by its age ([`IntrospectionKeys::max_age`]).
    ///
    /// ```no_run
    /// use tower_bearer::server::{Claims, Introspection, IntrospectionKeys, JwksValidator};
    ///
    /// # fn run() -> Result<(), tower_bearer::Error> {
    /// let keys = IntrospectionKeys::jwks(JwksValidator::<Claims>::discover("https://idp.example.com")?)?;
    /// let validator = Introspection::<Claims>::new("https://idp.example.com/oauth/introspect")?
    ///     .client("my-api", "s3cret")
    ///     .jwt_response(keys)
    ///     .audience("https://api.example.com/items");
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn jwt_response(self, keys: IntrospectionKeys) -> Self {
        self.config(|c| c.signed = Some(keys)).fresh_caches()
    }

    /// With [`jwt_response`](Self::jwt_response): also accepts a plain JSON answer
    /// (unsigned, as RFC 7662 has it) when the authorization server sends one, for
    /// example while it is being configured for RFC 9701. Signed answers are still
    /// asked for and checked. Not recommended: whoever can change an answer on the
    /// way can send a plain one. Starts empty caches.
    #[cfg(feature = "jwt")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwt")))]
    pub fn allow_unsigned_response(self) -> Self {
        self.config(|c| c.allow_unsigned = true).fresh_caches()
    }

    /// How many answers are cached, and how many introspection calls are running.
    pub fn stats(&self) -> IntrospectionStats {
        IntrospectionStats {
            accepted: self.state.accepted.len(),
            refused: self.state.refused.len(),
            in_flight: lock(&self.state.flights).len(),
        }
    }

    /// Whether this clone may still serve `received`: within its own TTL (the
    /// negative one for an inactive token), and never past the token's `exp`.
    fn fresh(&self, received: &Received<C>, now: Instant) -> bool {
        let age = now.saturating_duration_since(received.at);
        match &received.answer {
            Answer::Active(active) => age < self.config.ttl && age < active.lifetime,
            Answer::Inactive => age < self.config.negative_ttl,
            Answer::Failed => age < self.config.failure_backoff,
        }
    }

    /// The provider's cached answer for a token, if this clone may still serve it.
    fn cached(&self, digest: &Digest32) -> Option<Arc<Received<C>>> {
        let now = Instant::now();
        for cache in [&self.state.accepted, &self.state.refused] {
            if let Some(received) = cache.get(digest) {
                if self.fresh(&received, now) {
                    return Some(received);
                }
                // Past the token's exp it is stale for every clone: dropped (unless a
                // newer answer took its place). A clone with a shorter TTL leaves it
                // to the others and stores the newer answer it asks for.
                if let Answer::Active(active) = &received.answer {
                    if now.saturating_duration_since(received.at) >= active.lifetime {
                        cache.remove_if(digest, |r| Arc::ptr_eq(r, &received));
                    }
                }
            }
        }
        None
    }

    /// Caches a new answer in place of any older one for the token: with the
    /// accepted ones when this clone accepts it, else apart.
    fn store(&self, digest: Digest32, received: &Arc<Received<C>>) {
        if let Answer::Failed = received.answer {
            // No answer: an accepted one still fresh for other clones stays.
            self.state.refused.insert(digest, Arc::clone(received));
            return;
        }
        let (into, out) = if self.judge(received).is_ok() {
            (&self.state.accepted, &self.state.refused)
        } else {
            (&self.state.refused, &self.state.accepted)
        };
        out.remove(&digest);
        into.insert(digest, Arc::clone(received));
    }

    /// Asks the endpoint and caches the answer (not failures to get one).
    /// A failure is recorded, not returned: an endpoint-wide one starts the
    /// backoff, one that may be the token's own is cached for that token.
    async fn introspect(&self, digest: Digest32, token: String) -> Result<Arc<Received<C>>, Error> {
        // The answer holds from the question on: the TTLs count from here.
        let asked = Instant::now();
        let result = self.call_endpoint(&token).await;
        drop(token);
        let answer = match result {
            Ok(answer) => {
                metrics::introspection(match answer {
                    Answer::Active(_) => Introspected::Active,
                    _ => Introspected::Inactive,
                });
                *lock(&self.state.backoff) = Backoff::default();
                answer
            }
            Err((e, blame)) => {
                metrics::introspection(Introspected::Failed);
                let wait = if blame == Blame::Endpoint {
                    let mut backoff = lock(&self.state.backoff);
                    backoff.failures = backoff.failures.saturating_add(1);
                    let wait = self
                        .config
                        .failure_backoff
                        .saturating_mul(1 << (backoff.failures - 1).min(16))
                        .min(MAX_FAILURE_BACKOFF.max(self.config.failure_backoff));
                    backoff.until = Some(Instant::now() + wait);
                    wait
                } else {
                    self.config.failure_backoff
                };
                tracing::warn!(
                    error = %e,
                    retry_in_ms = wait.as_millis() as u64,
                    "token introspection failed"
                );
                if blame == Blame::Endpoint {
                    return Err(e);
                }
                Answer::Failed
            }
        };
        let received = Arc::new(Received { answer, at: asked });
        self.store(digest, &received);
        Ok(received)
    }

    /// This clone's verdict on an answer: active, and the issuer, the audience and
    /// the scopes it requires.
    fn judge(&self, received: &Received<C>) -> Result<C, Rejection> {
        let active = match &received.answer {
            Answer::Active(active) => active,
            Answer::Inactive => return Err(Rejection::invalid_token("the token is not active")),
            Answer::Failed => {
                let until = received.at + self.config.failure_backoff;
                return Err(unavailable(until.saturating_duration_since(Instant::now())));
            }
        };
        let config = &*self.config;
        if !config.issuers.is_empty() {
            match &active.iss {
                None => return Err(Rejection::invalid_token("the token lacks the iss claim")),
                Some(serde_json::Value::String(iss)) if config.issuers.contains(iss) => {}
                Some(_) => return Err(Rejection::invalid_token("the token has the wrong issuer")),
            }
        }
        if !config.audiences.is_empty() {
            let ours = |a: &serde_json::Value| {
                a.as_str()
                    .is_some_and(|a| config.audiences.iter().any(|o| o == a))
            };
            let accepted = match &active.aud {
                None => return Err(Rejection::invalid_token("the token lacks the aud claim")),
                Some(serde_json::Value::Array(list)) => list.iter().any(ours),
                Some(one) => ours(one),
            };
            if !accepted {
                return Err(Rejection::invalid_token(
                    "the token is not for this audience",
                ));
            }
        }
        let granted = active.scope.as_deref().unwrap_or_default();
        if config
            .required_scopes
            .iter()
            .all(|s| granted.split_ascii_whitespace().any(|g| g == s))
        {
            Ok(active.claims.clone())
        } else {
            Err(Rejection::InsufficientScope(
                config.required_scopes.join(" "),
            ))
        }
    }

    async fn call_endpoint(&self, token: &str) -> Result<Answer<C>, (Error, Blame)> {
        let endpoint = |e| (e, Blame::Endpoint);
        let config = &*self.config;
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let secret = config.client_secret.as_ref().map(|s| s.expose_secret());
        let mut req = Request::post(config.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, self.accept());
        match (config.auth, secret) {
            (IntrospectionAuth::Basic, Some(secret)) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
                let pair = format!("{}:{}", form_encode(&config.client_id), form_encode(secret));
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let mut value = http::HeaderValue::try_from(value).map_err(|_| {
                    endpoint(Error::Configuration("invalid client credentials".into()))
                })?;
                value.set_sensitive(true);
                req = req.header(AUTHORIZATION, value);
            }
            (_, secret) => {
                if !config.client_id.is_empty() {
                    form.push(("client_id", &config.client_id));
                }
                if let Some(secret) = secret {
                    form.push(("client_secret", secret));
                }
            }
        }
        let body = serde_urlencoded::to_string(&form)
            .map_err(|e| endpoint(Error::Configuration(e.to_string())))?;
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| endpoint(Error::Configuration(e.to_string())))?;
        let res = config
            .http
            .send(Endpoint::Introspection, req)
            .await
            .map_err(endpoint)?;
        if res.status() != StatusCode::OK {
            // A 400 may be about the token sent; anything else is the endpoint's.
            let blame = if res.status() == StatusCode::BAD_REQUEST {
                Blame::Token
            } else {
                Blame::Endpoint
            };
            return Err((
                Error::InvalidResponse(
                    Endpoint::Introspection,
                    format!("HTTP {}", res.status().as_u16()),
                ),
                blame,
            ));
        }
        #[cfg(feature = "jwt")]
        if let Some(keys) = &config.signed {
            if signed::is_signed_answer(res.headers()) {
                // A refused signed answer is the endpoint's (or the path's): it says
                // nothing of the token, and every token's answer would be refused.
                let answer = keys
                    .open(res.body(), &config.client_id)
                    .await
                    .map_err(endpoint)?;
                return parse_value(answer).map_err(|e| (e, Blame::Token));
            }
            if !config.allow_unsigned {
                let json = res
                    .headers()
                    .get(CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split(';').next())
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
                return Err(endpoint(Error::InvalidResponse(
                    Endpoint::Introspection,
                    format!(
                        "the answer is not signed ({}), and signed answers (RFC 9701, {}) \
                         are required: configure the authorization server to sign \
                         introspection answers for this client",
                        if json {
                            "plain JSON"
                        } else {
                            "another content type"
                        },
                        signed::TOKEN_INTROSPECTION_JWT,
                    ),
                )));
            }
        }
        parse_answer(res.body()).map_err(|e| (e, Blame::Token))
    }

    /// The `Accept` of the calls: the signed answer's media type when signed
    /// answers are asked for (with JSON second when plain ones are accepted too).
    fn accept(&self) -> &'static str {
        #[cfg(feature = "jwt")]
        if self.config.signed.is_some() {
            return if self.config.allow_unsigned {
                "application/token-introspection+jwt, application/json;q=0.5"
            } else {
                signed::TOKEN_INTROSPECTION_JWT
            };
        }
        "application/json"
    }
}

fn form_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|pair| pair[1..].to_owned())
        .unwrap_or_default()
}

enum Answer<C> {
    Active(Active<C>),
    Inactive,
    /// No answer: the call failed in a way that may be the token's own (a `400`,
    /// an answer that does not parse); cached for the failure backoff.
    Failed,
}

/// An active token: its claims, what is checked here, and how long it stays valid.
struct Active<C> {
    claims: C,
    scope: Option<String>,
    /// As sent (a string is expected); checked only when issuers are required.
    iss: Option<serde_json::Value>,
    /// As sent (a string or an array of strings); checked only when audiences are
    /// required.
    aud: Option<serde_json::Value>,
    lifetime: Duration,
}

#[derive(Deserialize)]
struct Head {
    active: bool,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    iss: Option<serde_json::Value>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
}

fn parse_answer<C: DeserializeOwned>(body: &[u8]) -> Result<Answer<C>, Error> {
    let bad = |e: serde_json::Error| {
        Error::InvalidResponse(Endpoint::Introspection, crate::error::json_error(&e))
    };
    let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    parse_value(value)
}

/// The RFC 7662 answer `value` (a plain answer's body, or a signed answer's
/// `token_introspection`).
fn parse_value<C: DeserializeOwned>(value: serde_json::Value) -> Result<Answer<C>, Error> {
    let bad = |e: serde_json::Error| {
        Error::InvalidResponse(Endpoint::Introspection, crate::error::json_error(&e))
    };
    let head: Head = serde_json::from_value(value.clone()).map_err(bad)?;
    if !head.active {
        return Ok(Answer::Inactive);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let lifetime = match head.exp {
        // An "active" token past its exp is not active.
        Some(exp) if exp <= now => return Ok(Answer::Inactive),
        Some(exp) => Duration::from_secs(exp - now),
        None => Duration::MAX,
    };
    let claims = serde_json::from_value(value).map_err(bad)?;
    Ok(Answer::Active(Active {
        claims,
        scope: head.scope,
        iss: head.iss,
        aud: head.aud,
        lifetime,
    }))
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for Introspection<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        let digest: Digest32 = super::sha256(token.as_bytes());
        if let Some(hit) = self.cached(&digest) {
            metrics::cache_lookup(CacheName::Introspection, true);
            return ValidationFuture::ready(self.judge(&hit));
        }
        metrics::cache_lookup(CacheName::Introspection, false);
        // A running call for the token is still joined (below); no new one while
        // the endpoint is backed off.
        let running = lock(&self.state.flights).contains_key(&digest);
        if !running {
            if let Some(wait) = self.state.backing_off(Instant::now()) {
                return ValidationFuture::ready(Err(unavailable(wait)));
            }
        }
        let flight = {
            let mut flights = lock(&self.state.flights);
            // A job stores its answer before it removes its flight, under this lock:
            // here either the answer is cached or the flight is still in the map, and
            // no entry is added that no job would remove.
            if let Some(hit) = self.cached(&digest) {
                return ValidationFuture::ready(self.judge(&hit));
            }
            Arc::clone(flights.entry(digest).or_default())
        };
        let joined = flight.join_or_start(
            || self.cached(&digest).map(Ok),
            || {
                let this = self.clone();
                let token = token.to_owned();
                let forget = ForgetFlight {
                    state: Arc::clone(&self.state),
                    digest,
                    flight: Arc::downgrade(&flight),
                };
                async move {
                    let _forget = forget;
                    this.introspect(digest, token).await
                }
            },
        );
        match joined {
            Joined::Ready(Ok(received)) => ValidationFuture::ready(self.judge(&received)),
            Joined::Ready(Err(_)) => ValidationFuture::ready(Err(self.failed())),
            // The flight hands the provider's answer to every waiter, which judges it
            // with its own rules (the flight may be another clone's): none depends on
            // it still being in the cache (a flood may have evicted a refusal).
            Joined::Flight(flight) => {
                let this = self.clone();
                ValidationFuture::pending(async move {
                    match flight.await {
                        Ok(received) => this.judge(&received),
                        Err(_) => Err(this.failed()),
                    }
                })
            }
        }
    }

    /// Asks again as [`validate`](Validator::validate) does: the cached answer while
    /// it is within this validator's [`ttl`](Self::ttl), else the provider. So a
    /// [`VerifiedCache`](super::VerifiedCache) over it sees a revocation within the
    /// TTL too, as the bare validator does.
    fn recheck(&self, token: &str, _claims: C) -> ValidationFuture<C> {
        self.validate(token)
    }
}

impl<C> Introspection<C> {
    /// The answer to a request whose call failed: `503`, with the backoff left.
    fn failed(&self) -> Rejection {
        let wait = self.state.backing_off(Instant::now());
        unavailable(wait.unwrap_or(self.config.failure_backoff))
    }
}

/// `503`: the provider cannot answer now; ask again after `wait`.
fn unavailable(wait: Duration) -> Rejection {
    Rejection::Unavailable(
        Unavailable::new("the introspection endpoint is unavailable").retry_after(wait),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a: Answer<Claims> =
            parse_answer(br#"{"active":true,"sub":"u","scope":"a b","exp":99999999999}"#).unwrap();
        assert!(
            matches!(a, Answer::Active(Active { ref claims, scope: Some(ref s), .. }) if claims.sub.as_deref() == Some("u") && s == "a b")
        );
        assert!(matches!(
            parse_answer::<Claims>(br#"{"active":false}"#).unwrap(),
            Answer::Inactive
        ));
        assert!(matches!(
            parse_answer::<Claims>(br#"{"active":true,"exp":1}"#).unwrap(),
            Answer::Inactive
        ));
        assert!(parse_answer::<Claims>(b"nope").is_err());
        // A provider's answer that quotes the token in a malformed member: the
        // error (logged) never repeats it.
        let err = parse_answer::<Claims>(br#"{"active":"tok-SECRET-123"}"#)
            .err()
            .unwrap();
        assert!(!err.to_string().contains("SECRET"), "{err}");
        let err = parse_answer::<Claims>(br#"{"active":true,"scope":"tok-SECRET-123","sub":5}"#)
            .err()
            .unwrap();
        assert!(!err.to_string().contains("SECRET"), "{err}");
        assert_eq!(form_encode("a b:c&"), "a+b%3Ac%26");
    }
}
