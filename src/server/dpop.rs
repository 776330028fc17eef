//! DPoP proofs (RFC 9449), checked on the resource server: [`DpopVerifier`].
//!
//! A DPoP-bound access token is sent as `Authorization: DPoP <token>` with a `DPoP`
//! header holding a proof: a JWT signed by the client's key, whose public half is in
//! the proof's header. The proof names the request (`htm`, `htu`), when it was made
//! (`iat`), the token it goes with (`ath`) and a unique id (`jti`); the token names
//! the key it is bound to (`cnf.jkt`, the key's RFC 7638 thumbprint). A stolen token
//! is then useless without the key.
//!
//! [`DpopVerifier::verify`] makes every check of RFC 9449 §4.3 and §7.1, in an order
//! where the cheap ones come first and a proof is recorded as used (the `jti` replay
//! cache) once everything else holds. The record is judged by the time the proof
//! was checked and kept until no verifier sharing the cache could accept the proof
//! (its `iat`, the leeway and the tolerated [clock skew](DpopVerifier::clock_skew)),
//! so that checking and recording are one step, whatever happens in between:
//!
//! ```
//! # async fn run() {
//! use http::{HeaderMap, Method, Uri};
//! use tower_bearer::server::dpop::{DpopError, DpopVerifier};
//!
//! let verifier = DpopVerifier::new()
//!     // Behind a proxy: the origin clients use, not the one this server sees.
//!     .external_origin("https://api.example.com")
//!     .unwrap();
//! let headers = HeaderMap::new(); // no DPoP header
//! let uri: Uri = "/items?page=2".parse().unwrap();
//! let outcome = verifier
//!     .verify(&Method::GET, &uri, &headers, "the-access-token", Some("the-cnf-jkt"))
//!     .await;
//! assert_eq!(outcome.unwrap_err(), DpopError::MissingProof);
//! # }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};
use subtle::ConstantTimeEq;

use crate::Error;

/// The `DPoP` request header.
pub const DPOP: &str = "dpop";

/// The `DPoP-Nonce` response header (RFC 9449 §8).
pub const DPOP_NONCE: &str = "dpop-nonce";

/// The default cap on a `DPoP` header, in bytes (an RSA-4096 proof is under 2 KiB).
pub const DEFAULT_MAX_PROOF_LEN: usize = 8 * 1024;

/// How far a proof's `iat` may be from now, either way, by default.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

/// The largest `iat` leeway accepted: a longer one keeps proofs replayable (and
/// their `jti` in the cache) for longer than any clock skew needs.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// How far apart the clocks of the verifiers sharing a replay cache may be, by
/// default (with the time a record takes to reach the cache): see
/// [`DpopVerifier::clock_skew`].
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(10);

/// How long a server nonce's time window lasts by default: see
/// [`DpopVerifier::nonces`].
pub const DEFAULT_NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// How many proofs the in-memory replay cache remembers by default.
pub const DEFAULT_REPLAY_CAPACITY: usize = 100_000;

/// The longest `jti` accepted, in bytes.
const MAX_JTI_LEN: usize = 256;

/// Why a DPoP proof (or the token it goes with) is refused.
///
/// Each maps to an RFC 9449 §7.1 answer: [`error_code`](Self::error_code),
/// [`status`](Self::status) and [`challenge`](Self::challenge). Descriptions are
/// fixed texts: they never quote the proof or the token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DpopError {
    /// No `DPoP` header, though the token is DPoP-bound or sent as `DPoP`.
    #[error("the request has no DPoP proof")]
    MissingProof,
    /// More than one `DPoP` header (§4.3 check 1).
    #[error("the request has more than one DPoP header")]
    MultipleProofs,
    /// Not a JWS in compact form, a part that does not decode, claims missing or of
    /// the wrong type, a header over the size cap.
    #[error("the DPoP proof is malformed: {0}")]
    Malformed(&'static str),
    /// `typ` is not `dpop+jwt`.
    #[error("the DPoP proof's typ is not dpop+jwt")]
    WrongType,
    /// `alg` is not one of the allowed asymmetric algorithms (`none` and HMAC never
    /// are), or does not fit the key.
    #[error("the DPoP proof's algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// The `jwk` header holds private key members (`d`, `p`, `q`, `dp`, `dq`, `qi`,
    /// `oth`, `k`).
    #[error("the DPoP proof's jwk holds private key material")]
    PrivateKey,
    /// No `jwk` header, or one that is not a usable public key (a symmetric key, a
    /// curve or size this server does not take).
    #[error("the DPoP proof's jwk is not a usable public key")]
    InvalidKey,
    /// The signature does not verify with the proof's own key.
    #[error("the DPoP proof's signature is invalid")]
    InvalidSignature,
    /// `htm` is not the request's method.
    #[error("the DPoP proof is for another HTTP method")]
    MethodMismatch,
    /// `htu` is not the request's URI (without query and fragment).
    #[error("the DPoP proof is for another URI")]
    UriMismatch,
    /// `iat` is older than the leeway allows.
    #[error("the DPoP proof is too old")]
    Stale,
    /// `iat` is further in the future than the leeway allows.
    #[error("the DPoP proof was issued in the future")]
    IssuedInFuture,
    /// `ath` is missing or is not the hash of the access token sent.
    #[error("the DPoP proof is for another access token")]
    AccessTokenHash,
    /// The proof's `jti` was seen before, within its window.
    #[error("the DPoP proof was already used")]
    Replayed,
    /// The proof's key is not the one the token is bound to (`cnf.jkt`).
    #[error("the access token is not bound to the DPoP proof's key")]
    KeyMismatch,
    /// The token was sent as `DPoP` but is not bound to a key (no `cnf.jkt`).
    #[error("the access token is not DPoP-bound")]
    UnboundToken,
    /// A DPoP-bound token was sent as a plain bearer token.
    #[error("the access token is DPoP-bound and must be sent with a DPoP proof")]
    BoundTokenAsBearer,
    /// The replay cache cannot answer now (Redis unreachable): the proof may well be
    /// good, so the answer is `503`.
    #[error("the DPoP replay cache is unavailable: {0}")]
    ReplayCacheUnavailable(String),
    /// The server asks for nonces ([`DpopVerifier::nonces`]) and the proof has none,
    /// or one too old or not the server's (RFC 9449 §8): `401` `use_dpop_nonce`,
    /// with this fresh nonce in a `DPoP-Nonce` header, for the client to retry with.
    #[error("the DPoP proof must carry the server's current nonce")]
    UseNonce(String),
}

impl DpopError {
    /// The RFC 9449 §7.1 error code: `invalid_dpop_proof` for the proof,
    /// `invalid_token` for the token's binding, none for `503`.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            DpopError::KeyMismatch | DpopError::UnboundToken | DpopError::BoundTokenAsBearer => {
                Some("invalid_token")
            }
            DpopError::ReplayCacheUnavailable(_) => None,
            DpopError::UseNonce(_) => Some("use_dpop_nonce"),
            _ => Some("invalid_dpop_proof"),
        }
    }

    /// `401`, or `503` when the replay cache is unavailable.
    pub fn status(&self) -> StatusCode {
        match self {
            DpopError::ReplayCacheUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// The description sent as `error_description`.
    pub fn description(&self) -> Cow<'static, str> {
        match self {
            DpopError::ReplayCacheUnavailable(_) => "the DPoP replay cache is unavailable".into(),
            other => other.to_string().into(),
        }
    }

    /// The `WWW-Authenticate` value: `DPoP algs="…", error="…",
    /// error_description="…"` (RFC 9449 §7.1), with `algs` the allowed algorithms,
    /// space-separated.
    pub fn challenge(&self, algs: &str) -> HeaderValue {
        let mut value = format!("DPoP algs=\"{algs}\"");
        if let Some(code) = self.error_code() {
            value.push_str(&format!(
                ", error=\"{code}\", error_description=\"{}\"",
                self.description()
            ));
        }
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static("DPoP"))
    }

    /// The HTTP answer: the status, the challenge (not for `503`) and, for
    /// [`UseNonce`](Self::UseNonce), the `DPoP-Nonce` header; empty body.
    pub fn http_response<B: Default>(&self, algs: &str) -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        *res.status_mut() = self.status();
        if self.error_code().is_some() {
            res.headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, self.challenge(algs));
        }
        if let DpopError::UseNonce(nonce) = self {
            if let Ok(nonce) = HeaderValue::from_str(nonce) {
                res.headers_mut().insert(DPOP_NONCE, nonce);
            }
        }
        res
    }
}

impl From<DpopError> for super::Rejection {
    fn from(e: DpopError) -> Self {
        if let DpopError::UseNonce(nonce) = e {
            return super::Rejection::UseDpopNonce(nonce);
        }
        match e.error_code() {
            Some("invalid_token") => super::Rejection::InvalidToken(e.description()),
            Some(_) => super::Rejection::InvalidDpopProof(e.description()),
            None => super::Rejection::Unavailable(e.description().into()),
        }
    }
}

pub use super::confirmation::Confirmation;

/// Remembers which proofs were used: [`first_use`](Self::first_use) answers, in one
/// atomic step, whether a key is new and records it.
///
/// [`MemoryReplayCache`] for one server; `RedisReplayCache` (feature `redis`) for a
/// fleet, where a proof used on one replica is refused by all others.
pub trait ReplayCache: Send + Sync + 'static {
    /// Records `key` until `until` and answers `true` if it was not recorded before
    /// (or only with an earlier `until` that has passed by `now`), or `false` for a
    /// replay, in one atomic step.
    ///
    /// Both are seconds since the Unix epoch. `now` is the time the verifier checked
    /// the proof (not read again when recording); `until` is the last second in
    /// which any verifier sharing the cache could still accept the proof: its `iat`
    /// plus the leeway plus the tolerated clock skew. A cache that forgets by a
    /// time-to-live keeps the key for at least `until - now + 1` seconds.
    fn first_use(&self, key: &str, now: u64, until: u64) -> ReplayFuture;

    /// Forgets the record of `key` that a `first_use(key, _, until)` answering
    /// `true` made, because the request that made it was refused (its token, or
    /// the token's binding): a proof is tied to its token by `ath`, so at most one
    /// request with it can ever be accepted whether or not the record stays, and a
    /// refused request leaves no record an attacker with a key pair of their own
    /// could fill the cache with. Called only by the request that made the record.
    ///
    /// Forgets nothing unless the record of `key` is still that one (the same
    /// `until`): once it passed, another proof with the same key and `jti` may
    /// have been recorded, and accepted, while the refused request was validated.
    ///
    /// The default keeps the record (the proof stays spent): always safe, and
    /// right for a cache that cannot forget.
    fn forget(&self, key: &str, until: u64) {
        let _ = (key, until);
    }
}

impl<R: ReplayCache + ?Sized> ReplayCache for Arc<R> {
    fn first_use(&self, key: &str, now: u64, until: u64) -> ReplayFuture {
        (**self).first_use(key, now, until)
    }

    fn forget(&self, key: &str, until: u64) {
        (**self).forget(key, until)
    }
}

/// The answer of a [`ReplayCache`]: ready at once (in memory), or to wait for
/// (Redis). `Ok(true)`: first use; `Ok(false)`: replay; `Err`: the cache cannot
/// answer.
#[must_use = "futures do nothing unless polled"]
pub struct ReplayFuture(ReplayState);

enum ReplayState {
    Ready(Option<Result<bool, String>>),
    Pending(BoxFuture<'static, Result<bool, String>>),
}

impl ReplayFuture {
    /// An answer known now.
    pub fn ready(answer: Result<bool, String>) -> Self {
        ReplayFuture(ReplayState::Ready(Some(answer)))
    }

    /// An answer to wait for.
    pub fn pending(future: impl Future<Output = Result<bool, String>> + Send + 'static) -> Self {
        ReplayFuture(ReplayState::Pending(Box::pin(future)))
    }

    /// The answer, if it is known without waiting; otherwise the future back.
    pub fn now_or_pending(self) -> Result<Result<bool, String>, Self> {
        match self.0 {
            ReplayState::Ready(Some(answer)) => Ok(answer),
            state => Err(ReplayFuture(state)),
        }
    }
}

impl Future for ReplayFuture {
    type Output = Result<bool, String>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            ReplayState::Ready(answer) => Poll::Ready(
                answer
                    .take()
                    .unwrap_or_else(|| Err("polled after completion".into())),
            ),
            ReplayState::Pending(future) => future.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for ReplayFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayFuture")
            .field("pending", &matches!(self.0, ReplayState::Pending(_)))
            .finish()
    }
}

/// The replay cache of one server: bounded, each entry kept until its proof would
/// be refused as stale anyway, and never pushed out before.
///
/// Size it for the proofs one server checks within twice the leeway plus the
/// [clock skew](DpopVerifier::clock_skew) (default [`DEFAULT_REPLAY_CAPACITY`]); a
/// proof is recorded as soon as it is checked, before its token is validated, and
/// forgotten if its token is refused, so this counts the proofs accepted plus
/// those whose tokens are being validated (or whose requests were dropped before
/// the answer). When it is full
/// of proofs that could still be accepted, a new proof is answered `503`
/// ([`DpopError::ReplayCacheUnavailable`]) until the oldest are stale: forgetting a
/// live record would let its proof be replayed, and anyone with a key pair could
/// make the cache forget by filling it. Behind a load balancer use
/// `RedisReplayCache` (feature `redis`), which every replica shares and which has
/// no such bound.
pub struct MemoryReplayCache {
    seen: std::sync::Mutex<Records>,
    capacity: usize,
}

/// The records of a [`MemoryReplayCache`]: key digest → the time (Unix seconds)
/// until which it is remembered, and the same ordered by that time, to forget
/// the stale ones first.
#[derive(Default)]
struct Records {
    until: std::collections::HashMap<[u8; 32], u64>,
    by_time: std::collections::BinaryHeap<std::cmp::Reverse<(u64, [u8; 32])>>,
}

impl Records {
    /// Forgets every record whose time passed before `now`.
    fn forget_stale(&mut self, now: u64) {
        while let Some(std::cmp::Reverse((until, digest))) = self.by_time.peek().copied() {
            if until >= now {
                break;
            }
            self.by_time.pop();
            if self.until.get(&digest) == Some(&until) {
                self.until.remove(&digest);
            }
        }
    }
}

impl MemoryReplayCache {
    /// A cache remembering up to `capacity` proofs.
    pub fn new(capacity: usize) -> Self {
        MemoryReplayCache {
            seen: std::sync::Mutex::default(),
            capacity: capacity.max(1),
        }
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        // The records stay consistent whatever panicked while holding the lock.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryReplayCache {
    fn default() -> Self {
        Self::new(DEFAULT_REPLAY_CAPACITY)
    }
}

impl fmt::Debug for MemoryReplayCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryReplayCache")
            .field("len", &self.records().until.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl ReplayCache for MemoryReplayCache {
    fn first_use(&self, key: &str, now: u64, until: u64) -> ReplayFuture {
        // Keys are hashed to a fixed size: an entry costs the same whatever the jti.
        let digest = super::sha256(key.as_bytes());
        // One lock: two requests with the same proof cannot both find it new.
        let mut records = self.records();
        records.forget_stale(now);
        if records.until.contains_key(&digest) {
            return ReplayFuture::ready(Ok(false));
        }
        if records.until.len() >= self.capacity {
            return ReplayFuture::ready(Err(
                "the DPoP replay cache is full of proofs that are not stale yet".into(),
            ));
        }
        records.until.insert(digest, until);
        records.by_time.push(std::cmp::Reverse((until, digest)));
        ReplayFuture::ready(Ok(true))
    }

    fn forget(&self, key: &str, until: u64) {
        let digest = super::sha256(key.as_bytes());
        let mut records = self.records();
        if records.until.get(&digest) != Some(&until) {
            return;
        }
        records.until.remove(&digest);
        // The heap keeps a forgotten record's time until it passes: rebuilt from
        // the records when forgotten ones outnumber them, so it stays bounded.
        if records.by_time.len() > 2 * self.capacity {
            let rebuilt = records
                .until
                .iter()
                .map(|(digest, until)| std::cmp::Reverse((*until, *digest)))
                .collect();
            records.by_time = rebuilt;
        }
    }
}

/// The clock of a verifier: the time in seconds since the Unix epoch.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

fn system_clock() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A normalised origin: `scheme://host[:port]`, lowercase, default port dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin(String);

/// Checks DPoP proofs (RFC 9449 §4.3) for a resource server.
///
/// Secure by default: `ES256` only (add `ES384`, `EdDSA`, `RS256`, `PS256`… with
/// [`algorithms`](Self::algorithms); `none` and HMAC are never accepted), an `iat`
/// window of ±60 s, every `jti` remembered in a bounded in-memory
/// [`MemoryReplayCache`] until its proof is stale.
///
/// The URI a proof must name (`htu`) is the request's path on the origin clients
/// reach the server at, taken from, in this order:
/// 1. the [`external_origin`](Self::external_origin), when one is set;
/// 2. the `Forwarded` header (or `X-Forwarded-Proto` and `X-Forwarded-Host`), only
///    with [`trust_forwarded`](Self::trust_forwarded);
/// 3. the request itself: its absolute URI (HTTP/2), or its `Host` header with the
///    [`default_scheme`](Self::default_scheme) (`https` unless set).
///
/// **Behind a proxy**, the request this server sees names the proxy's view of it.
/// Set the `external_origin` when it is known; otherwise let a proxy you control
/// pass the origin in `Forwarded: proto=…;host=…` (or `X-Forwarded-Proto` /
/// `X-Forwarded-Host`) and call `trust_forwarded`. A proxy that passes the client's
/// `Host` through needs neither, only the `default_scheme` when clients use plain
/// `http`.
#[derive(Clone)]
pub struct DpopVerifier {
    algorithms: Arc<[Algorithm]>,
    algs: Arc<str>,
    leeway: u64,
    skew: u64,
    origin: Option<Origin>,
    /// The scheme of a request that names none (`https` or `http`).
    default_scheme: &'static str,
    /// Whether `Forwarded` / `X-Forwarded-*` name the origin.
    trust_forwarded: bool,
    replay: Arc<dyn ReplayCache>,
    clock: Clock,
    max_len: usize,
    nonces: Option<Arc<Nonces>>,
}

/// Server nonces without server state: a nonce names its time window and carries
/// an HMAC of it, so every replica sharing the secret accepts every other's.
struct Nonces {
    key: crate::crypto::HmacKey,
    lifetime: u64,
}

impl Nonces {
    fn window(&self, now: u64) -> u64 {
        now / self.lifetime
    }

    fn mac(&self, window: u64) -> Vec<u8> {
        self.key
            .sign(&[b"tower-bearer dpop nonce ", &window.to_be_bytes()])
    }

    /// The nonce of the window `now` is in: base64url of the window and 16 bytes of
    /// its HMAC.
    fn current(&self, now: u64) -> String {
        let window = self.window(now);
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&window.to_be_bytes());
        raw[8..].copy_from_slice(&self.mac(window)[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Whether `nonce` is ours and of this window, the previous one, or the next
    /// one (a replica whose clock is a little ahead); `Some(true)` when it is of an
    /// earlier window than now's, so that the answer should carry the current one.
    fn accepts(&self, nonce: &str, now: u64) -> Option<bool> {
        // Room for the decoder's estimate; anything but 24 bytes is not ours.
        let mut raw = [0u8; 36];
        if nonce.len() != 32 || URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw) != Ok(24) {
            return None;
        }
        let mut window = [0u8; 8];
        window.copy_from_slice(&raw[..8]);
        let window = u64::from_be_bytes(window);
        let current = self.window(now);
        let good = (current.saturating_sub(1)..=current.saturating_add(1)).contains(&window)
            && bool::from(raw[8..24].ct_eq(&self.mac(window)[..16]));
        good.then_some(window < current)
    }
}

impl fmt::Debug for DpopVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopVerifier")
            .field("algs", &self.algs)
            .field("leeway", &self.leeway)
            .field("clock_skew", &self.skew)
            .field("origin", &self.origin)
            .field("default_scheme", &self.default_scheme)
            .field("trust_forwarded", &self.trust_forwarded)
            .field("max_len", &self.max_len)
            .field("nonces", &self.nonces.as_ref().map(|n| n.lifetime))
            .finish_non_exhaustive()
    }
}

impl Default for DpopVerifier {
    fn default() -> Self {
        Self::new()
    }
}

/// A proof whose every check but the token binding and the replay cache passed:
/// what [`DpopVerifier::check`] answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedProof {
    jkt: String,
    replay_key: String,
    /// When the proof was checked: the replay record is judged by this time, never
    /// by a second reading of the clock.
    checked_at: u64,
    /// The last second any verifier sharing the replay cache could accept the
    /// proof: `iat` + leeway + tolerated skew.
    until: u64,
    next_nonce: Option<String>,
}

impl CheckedProof {
    /// The RFC 7638 SHA-256 thumbprint of the proof's key (base64url): what the
    /// token's `cnf.jkt` must be.
    pub fn jkt(&self) -> &str {
        &self.jkt
    }

    /// The nonce to send in a `DPoP-Nonce` header with the answer (RFC 9449 §8.2),
    /// when the proof carried an older one than the current: the client then
    /// moves to the new nonce while its old one is still good, and a rotation
    /// costs it no `use_dpop_nonce` round trip. [`RequireBearerLayer`] sends it
    /// on successful answers.
    ///
    /// [`RequireBearerLayer`]: super::RequireBearerLayer
    pub fn next_nonce(&self) -> Option<&str> {
        self.next_nonce.as_deref()
    }
}

impl DpopVerifier {
    /// `ES256` proofs, ±60 s, an in-memory replay cache of
    /// [`DEFAULT_REPLAY_CAPACITY`] proofs.
    pub fn new() -> Self {
        DpopVerifier {
            algorithms: Arc::from([Algorithm::ES256]),
            algs: Arc::from(algs_of(&[Algorithm::ES256])),
            leeway: DEFAULT_LEEWAY.as_secs(),
            skew: DEFAULT_CLOCK_SKEW.as_secs(),
            origin: None,
            default_scheme: "https",
            trust_forwarded: false,
            replay: Arc::new(MemoryReplayCache::default()),
            clock: Arc::new(system_clock),
            max_len: DEFAULT_MAX_PROOF_LEN,
            nonces: None,
        }
    }

    /// The algorithms accepted, named in challenges (`algs`) in this order;
    /// [`Algorithm::EdDSA`] under both its names, `EdDSA` and RFC 9864's fully
    /// specified `Ed25519`. A proof may give either, and `ESP256` / `ESP384` for
    /// [`Algorithm::ES256`] / [`Algorithm::ES384`] (RFC 9864's ECDSA names, read
    /// but not advertised: they are registered for COSE, not JOSE).
    ///
    /// # Errors
    /// [`Error::Configuration`] for an empty list or a symmetric algorithm (HMAC):
    /// a proof is signed with a key the client holds alone.
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Result<Self, Error> {
        if algorithms.is_empty() {
            return Err(Error::Configuration(
                "DPoP needs at least one algorithm".into(),
            ));
        }
        if let Some(hmac) = algorithms
            .iter()
            .find(|a| matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512))
        {
            return Err(Error::Configuration(format!(
                "DPoP proofs are signed with asymmetric keys; {hmac:?} is not one"
            )));
        }
        self.algs = Arc::from(algs_of(algorithms));
        self.algorithms = Arc::from(algorithms);
        Ok(self)
    }

    /// How far a proof's `iat` may be from now, either way (default 60 s, at most
    /// [`MAX_LEEWAY`]). Verifiers sharing a replay cache use the same leeway.
    #[must_use]
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(MAX_LEEWAY).as_secs();
        self
    }

    /// How far apart the clocks of the verifiers sharing a replay cache may be,
    /// plus the time a record takes to reach the cache (default
    /// [`DEFAULT_CLOCK_SKEW`], 10 s; at most [`MAX_LEEWAY`]).
    ///
    /// A proof's `jti` is recorded until `iat` + leeway + this skew (a Redis key
    /// lives that long from the moment the proof is checked): a replica whose clock
    /// is behind the recording one by up to this much still finds the record while
    /// it would accept the proof. It does not widen the window in which proofs are
    /// accepted; it only keeps records longer. Verifiers sharing a cache use the
    /// same skew.
    #[must_use]
    pub fn clock_skew(mut self, skew: Duration) -> Self {
        self.skew = skew.min(MAX_LEEWAY).as_secs();
        self
    }

    /// The origin clients reach this server at (`https://api.example.com`, with a
    /// port if not the default one), for servers behind a proxy or a load balancer:
    /// proofs must name it in `htu`, whatever the request's `Host` says.
    ///
    /// # Errors
    /// [`Error::Configuration`] for anything but an `http`/`https` origin without a
    /// path, query or user information.
    pub fn external_origin(mut self, origin: &str) -> Result<Self, Error> {
        let bad = || Error::Configuration(format!("{origin:?} is not an http(s) origin"));
        let trimmed = origin.strip_suffix('/').unwrap_or(origin);
        let (scheme, authority) = trimmed.split_once("://").ok_or_else(bad)?;
        if authority.contains(['/', '?', '#']) {
            return Err(bad());
        }
        self.origin = Some(normal_origin(scheme, authority).ok_or_else(bad)?);
        Ok(self)
    }

    /// The scheme of a request that does not name one (an HTTP/1.1 request names
    /// only its `Host`): `"https"` (the default) or `"http"`, for a server clients
    /// reach over plain HTTP (local development, tests, a trusted network). Known
    /// before the server's port is; the port comes from `Host`.
    ///
    /// # Errors
    /// [`Error::Configuration`] for anything but `http` or `https`.
    pub fn default_scheme(mut self, scheme: &str) -> Result<Self, Error> {
        self.default_scheme = if scheme.eq_ignore_ascii_case("https") {
            "https"
        } else if scheme.eq_ignore_ascii_case("http") {
            "http"
        } else {
            return Err(Error::Configuration(format!(
                "{scheme:?} is not http or https"
            )));
        };
        Ok(self)
    }

    /// Takes the origin clients reached from the proxy in front of this server:
    /// `proto` and `host` of the last element of `Forwarded` (RFC 7239, the one the
    /// nearest proxy added), or else the last value of `X-Forwarded-Proto` and
    /// `X-Forwarded-Host`; what they leave out comes from the request. When both
    /// families are present they must name the same `proto` and `host`, or the
    /// proof is refused: a proxy sets one family and may pass the other through
    /// from the client, who would then choose the origin. Only behind a
    /// proxy that sets these headers itself: a client reaching the server directly
    /// could name any origin, and so use a proof made for another server.
    /// [`external_origin`](Self::external_origin), when set, wins.
    #[must_use]
    pub fn trust_forwarded(mut self) -> Self {
        self.trust_forwarded = true;
        self
    }

    /// Where used proofs are remembered (default: a [`MemoryReplayCache`]).
    #[must_use]
    pub fn replay_cache(mut self, cache: impl ReplayCache) -> Self {
        self.replay = Arc::new(cache);
        self
    }

    /// The clock `iat` is compared with (default: the system clock), for tests.
    #[must_use]
    pub fn clock(mut self, now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(move || now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        self
    }

    /// Requires server nonces (RFC 9449 §8) made with `secret`, in time windows of
    /// `lifetime`; for one server, [`require_nonces`](Self::require_nonces) picks a
    /// random secret and [`DEFAULT_NONCE_LIFETIME`].
    ///
    /// A proof must carry in `nonce` one this server (or a replica with the same
    /// `secret`) gave out; otherwise it is refused with [`DpopError::UseNonce`] and
    /// the current nonce (`401 use_dpop_nonce` and a `DPoP-Nonce` header), which the
    /// client retries with. Nonces are stateless (a time window and its HMAC), so a
    /// fleet needs no shared store for them, only the shared secret. With nonces a
    /// proof's age no longer rests on the client's clock alone.
    ///
    /// **How long a nonce stays good, exactly:** time is cut into windows of
    /// `lifetime` (aligned on the Unix epoch); the nonce given out in a window is
    /// accepted until the end of the window after it. A nonce received at time `t`
    /// is thus good for more than one `lifetime` and at most two after `t` (by the
    /// server's clock); it is also accepted one window early, for a replica whose
    /// clock is ahead. When a proof carries the previous window's nonce, the
    /// successful answer carries the current one in `DPoP-Nonce`
    /// ([`CheckedProof::next_nonce`]): a client that sends a request at least once
    /// per `lifetime` and uses the latest nonce it was given is never refused for
    /// its nonce.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a secret shorter than 32 bytes or a lifetime
    /// under a second.
    pub fn nonces(mut self, secret: &[u8], lifetime: Duration) -> Result<Self, Error> {
        if secret.len() < 32 {
            return Err(Error::Configuration(
                "a DPoP nonce secret needs at least 32 bytes".into(),
            ));
        }
        if lifetime.as_secs() == 0 {
            return Err(Error::Configuration(
                "a DPoP nonce lives at least a second".into(),
            ));
        }
        let key = crate::crypto::HmacKey::sha256(secret)
            .ok_or_else(|| Error::Configuration("unusable DPoP nonce secret".into()))?;
        self.nonces = Some(Arc::new(Nonces {
            key,
            lifetime: lifetime.as_secs(),
        }));
        Ok(self)
    }

    /// Requires server nonces (see [`nonces`](Self::nonces)) with a random secret
    /// drawn now from the operating system and windows of
    /// [`DEFAULT_NONCE_LIFETIME`] (5 minutes). The secret lives in this verifier
    /// (and its clones) only: replicas behind one load balancer each refuse the
    /// others' nonces, so a fleet passes one shared secret to
    /// [`nonces`](Self::nonces) instead.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the operating system has no randomness to give.
    pub fn require_nonces(self) -> Result<Self, Error> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        crate::crypto::fill_random(&mut secret[..])
            .map_err(|e| Error::Configuration(format!("no randomness for DPoP nonces: {e}")))?;
        self.nonces(&secret[..], DEFAULT_NONCE_LIFETIME)
    }

    /// The nonce to give clients now (`DPoP-Nonce`), when nonces are required.
    pub fn current_nonce(&self) -> Option<String> {
        self.nonces.as_ref().map(|n| n.current((self.clock)()))
    }

    /// The largest `DPoP` header accepted, in bytes (default 8 KiB).
    #[must_use]
    pub fn max_proof_len(mut self, bytes: usize) -> Self {
        self.max_len = bytes;
        self
    }

    /// The accepted algorithms, space-separated, as challenges name them (`algs`).
    pub fn algs(&self) -> &str {
        &self.algs
    }

    /// Every check: [`check`](Self::check) the proof, [`confirm`](Self::confirm) that
    /// the token is bound to its key (`token_jkt`: the token's `cnf.jkt`), and
    /// [`record`](Self::record) its `jti` as used.
    ///
    /// # Errors
    /// The first check that fails, as a [`DpopError`].
    pub async fn verify(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        access_token: &str,
        token_jkt: Option<&str>,
    ) -> Result<CheckedProof, DpopError> {
        let proof = self.check(method, uri, headers, access_token)?;
        self.confirm(&proof, token_jkt)?;
        self.record(&proof).await?;
        Ok(proof)
    }

    /// The checks of the proof alone, the replay cache aside (RFC 9449 §4.3): one
    /// `DPoP` header, a compact JWS with `typ: dpop+jwt`, an allowed `alg`, a public
    /// `jwk` that verifies the signature, `htm` and `htu` matching the request, `iat`
    /// within the leeway, a `jti`, and `ath` the hash of `access_token`.
    ///
    /// # Errors
    /// The first check that fails, as a [`DpopError`].
    pub fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        access_token: &str,
    ) -> Result<CheckedProof, DpopError> {
        let proof = single_proof(headers, self.max_len)?;
        let (header, payload, signature) = split(proof)?;
        let header_bytes = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| DpopError::Malformed("the header is not base64url"))?;
        let header: ProofHeader = serde_json::from_slice(json_object(&header_bytes)?)
            .map_err(|_| DpopError::Malformed("the header is not a JOSE header"))?;
        if !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
        {
            return Err(DpopError::WrongType);
        }
        if header.crit {
            return Err(DpopError::Malformed(
                "the header has a critical member this server does not understand",
            ));
        }
        let alg = super::jwt::parse_alg(&header.alg)
            .filter(|a| self.algorithms.contains(a))
            .ok_or(DpopError::AlgorithmNotAllowed)?;
        let jwk = header.jwk.ok_or(DpopError::InvalidKey)?;
        let (jwk, key) = public_key(jwk, alg)?;
        let message = &proof[..proof.len() - signature.len() - 1];
        let authentic = jsonwebtoken::crypto::verify(signature, message.as_bytes(), &key, alg)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::Base64(_) => {
                    DpopError::Malformed("the signature is not base64url")
                }
                _ => DpopError::InvalidSignature,
            })?;
        if !authentic {
            return Err(DpopError::InvalidSignature);
        }
        // Authentic from here on.
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| DpopError::Malformed("the claims are not base64url"))?;
        let claims: ProofClaims = serde_json::from_slice(json_object(&payload)?)
            .map_err(|_| DpopError::Malformed("the claims are malformed"))?;
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
            .ok_or(DpopError::Malformed("the proof has no usable jti"))?;
        let htm = claims
            .htm
            .ok_or(DpopError::Malformed("the proof has no htm"))?;
        if htm != method.as_str() {
            return Err(DpopError::MethodMismatch);
        }
        let htu = claims
            .htu
            .ok_or(DpopError::Malformed("the proof has no htu"))?;
        let named = normal_htu(&htu).ok_or(DpopError::UriMismatch)?;
        let expected = self
            .request_uri(uri, headers)
            .ok_or(DpopError::UriMismatch)?;
        if named != expected {
            return Err(DpopError::UriMismatch);
        }
        let iat = claims
            .iat
            .as_ref()
            .and_then(numeric_date)
            .ok_or(DpopError::Malformed("the proof has no usable iat"))?;
        let now = (self.clock)();
        if iat.saturating_add(self.leeway) < now {
            return Err(DpopError::Stale);
        }
        if iat > now.saturating_add(self.leeway) {
            return Err(DpopError::IssuedInFuture);
        }
        let ath = claims.ath.ok_or(DpopError::AccessTokenHash)?;
        let expected_ath = URL_SAFE_NO_PAD.encode(super::sha256(access_token.as_bytes()));
        if !bool::from(ath.as_bytes().ct_eq(expected_ath.as_bytes())) {
            return Err(DpopError::AccessTokenHash);
        }
        let mut next_nonce = None;
        if let Some(nonces) = &self.nonces {
            match claims.nonce.as_deref().and_then(|n| nonces.accepts(n, now)) {
                None => return Err(DpopError::UseNonce(nonces.current(now))),
                Some(true) => next_nonce = Some(nonces.current(now)),
                Some(false) => {}
            }
        }
        let jkt = thumbprint(&jwk).ok_or(DpopError::InvalidKey)?;
        // The jti is the client's; scoped by its key, one client cannot burn
        // another's ids.
        let replay_key = format!("{jkt}.{jti}");
        Ok(CheckedProof {
            jkt,
            replay_key,
            checked_at: now,
            until: iat.saturating_add(self.leeway).saturating_add(self.skew),
            next_nonce,
        })
    }

    /// Whether the token, whose `cnf.jkt` is `token_jkt`, is bound to the proof's
    /// key (compared in constant time).
    ///
    /// # Errors
    /// [`DpopError::UnboundToken`] without a `cnf.jkt`, [`DpopError::KeyMismatch`]
    /// for another key's.
    pub fn confirm(&self, proof: &CheckedProof, token_jkt: Option<&str>) -> Result<(), DpopError> {
        let token_jkt = token_jkt.ok_or(DpopError::UnboundToken)?;
        if bool::from(token_jkt.as_bytes().ct_eq(proof.jkt.as_bytes())) {
            Ok(())
        } else {
            Err(DpopError::KeyMismatch)
        }
    }

    /// Records the proof's `jti` as used, until no verifier sharing the replay
    /// cache could accept it any more (its `iat` + leeway +
    /// [`clock_skew`](Self::clock_skew)), judged at the time the proof was
    /// checked: however long passes between [`check`](Self::check) and this call
    /// (a slow token validation), a second use of the proof is found.
    ///
    /// Call it as soon as the proof is checked, before anything that awaits:
    /// [`RequireBearerLayer`](super::RequireBearerLayer) records it before the
    /// token is validated, and [`forget`](Self::forget)s the record when the
    /// token or its binding is then refused (the proof, tied to its token by
    /// `ath`, can still pass at most once). A request dropped before its token's
    /// answer leaves its proof spent.
    ///
    /// # Errors
    /// [`DpopError::Replayed`] if it was used before,
    /// [`DpopError::ReplayCacheUnavailable`] when the cache cannot answer.
    pub fn record(&self, proof: &CheckedProof) -> RecordFuture {
        RecordFuture(
            self.replay
                .first_use(&proof.replay_key, proof.checked_at, proof.until),
        )
    }

    /// Forgets the record [`record`](Self::record) made of `proof`, for a request
    /// refused after the record (its token, or the token's binding): see
    /// [`ReplayCache::forget`]. Call it only for a proof whose `record` answered
    /// first use.
    pub fn forget(&self, proof: &CheckedProof) {
        self.replay.forget(&proof.replay_key, proof.until);
    }

    /// The URI a proof for this request must name, normalised.
    fn request_uri(&self, uri: &Uri, headers: &HeaderMap) -> Option<String> {
        let origin = match &self.origin {
            Some(origin) => origin.clone(),
            None => {
                let (proto, host) = if self.trust_forwarded {
                    forwarded(headers)?
                } else {
                    (None, None)
                };
                let authority = match (host, uri.authority()) {
                    (Some(host), _) => host,
                    (None, Some(a)) => a.as_str().to_owned(),
                    (None, None) => headers.get(http::header::HOST)?.to_str().ok()?.to_owned(),
                };
                let scheme = proto
                    .as_deref()
                    .or(uri.scheme_str())
                    .unwrap_or(self.default_scheme);
                normal_origin(scheme, &authority)?
            }
        };
        let mut out = origin.0;
        out.push_str(&normal_path(uri.path())?);
        Some(out)
    }
}

/// `proto` and `host` as the nearest proxy gave them: the last element of
/// `Forwarded`, or the last values of `X-Forwarded-Proto` / `X-Forwarded-Host`.
/// `None` for a header that is not text, an element this parser cannot read, or
/// both families present and saying different things (a proxy sets one and may
/// pass the client's other through).
#[allow(clippy::type_complexity)]
fn forwarded(headers: &HeaderMap) -> Option<(Option<String>, Option<String>)> {
    fn last_value(headers: &HeaderMap, name: &str) -> Option<Option<String>> {
        let Some(value) = headers.get_all(name).iter().next_back() else {
            return Some(None);
        };
        let value = value.to_str().ok()?;
        let last = value.rsplit(',').next().unwrap_or(value).trim();
        Some((!last.is_empty()).then(|| last.to_owned()))
    }
    let x_forwarded = (
        last_value(headers, "x-forwarded-proto")?,
        last_value(headers, "x-forwarded-host")?,
    );
    let Some(value) = headers.get_all(http::header::FORWARDED).iter().next_back() else {
        return Some(x_forwarded);
    };
    let element = value.to_str().ok()?.rsplit(',').next()?;
    let (mut proto, mut host) = (None, None);
    for pair in element.split(';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=')?;
        let value = value.trim();
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted.strip_suffix('"')?,
            None => value,
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "proto" => proto = Some(value.to_owned()),
            "host" => host = Some(value.to_owned()),
            _ => {}
        }
    }
    // A proxy sets one family and may pass the other through from the client:
    // with both present, they must say the same, or the client named the origin.
    let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (None, None) => true,
        _ => false,
    };
    let x_present = x_forwarded.0.is_some() || x_forwarded.1.is_some();
    if x_present && !(same(&proto, &x_forwarded.0) && same(&host, &x_forwarded.1)) {
        return None;
    }
    Some((proto, host))
}

/// [`DpopVerifier::record`]'s answer.
#[must_use = "futures do nothing unless polled"]
#[derive(Debug)]
pub struct RecordFuture(ReplayFuture);

impl RecordFuture {
    /// The answer, if it is known without waiting; otherwise the future back.
    pub fn now_or_pending(self) -> Result<Result<(), DpopError>, Self> {
        self.0
            .now_or_pending()
            .map(first_use_outcome)
            .map_err(RecordFuture)
    }
}

fn first_use_outcome(answer: Result<bool, String>) -> Result<(), DpopError> {
    match answer {
        Ok(true) => Ok(()),
        Ok(false) => Err(DpopError::Replayed),
        Err(why) => Err(DpopError::ReplayCacheUnavailable(why)),
    }
}

impl Future for RecordFuture {
    type Output = Result<(), DpopError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.get_mut().0)
            .poll(cx)
            .map(first_use_outcome)
    }
}

/// The names of `algorithms`, space-separated, as challenges give them (`algs`),
/// in the order given: [`Algorithm::EdDSA`] as `EdDSA` and RFC 9864's `Ed25519`.
fn algs_of(algorithms: &[Algorithm]) -> String {
    let mut names: Vec<String> = Vec::new();
    for name in algorithms.iter().flat_map(|a| super::jwt::alg_names(*a)) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(" ")
}

/// The one `DPoP` header's value.
fn single_proof(headers: &HeaderMap, max_len: usize) -> Result<&str, DpopError> {
    let mut values = headers.get_all(DPOP).iter();
    let value = values.next().ok_or(DpopError::MissingProof)?;
    if values.next().is_some() {
        return Err(DpopError::MultipleProofs);
    }
    if value.len() > max_len {
        return Err(DpopError::Malformed("the DPoP header is too long"));
    }
    value
        .to_str()
        .map_err(|_| DpopError::Malformed("the DPoP header is not ASCII"))
}

/// `header.payload.signature`, header and payload not empty. An empty signature
/// (`alg: none`) is left to the `alg` check, which names the refusal better.
fn split(proof: &str) -> Result<(&str, &str, &str), DpopError> {
    super::jwt::compact_parts(proof).ok_or(DpopError::Malformed("not a compact JWS"))
}

/// `bytes` when they hold a JSON object (serde would read a struct from an array).
fn json_object(bytes: &[u8]) -> Result<&[u8], DpopError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(bytes),
        _ => Err(DpopError::Malformed("a part is not a JSON object")),
    }
}

/// The members of a proof's header that matter; the rest are skipped.
#[derive(Deserialize)]
struct ProofHeader {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    jwk: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
}

fn present<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    IgnoredAny::deserialize(d).map(|_| true)
}

/// The claims of a proof (RFC 9449 §4.2); others are skipped.
#[derive(Deserialize)]
struct ProofClaims {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    htm: Option<String>,
    #[serde(default)]
    htu: Option<String>,
    #[serde(default)]
    iat: Option<serde_json::Number>,
    #[serde(default)]
    ath: Option<String>,
    #[serde(default)]
    nonce: Option<String>,
}

/// A NumericDate: a non-negative integer or decimal, truncated to seconds.
fn numeric_date(n: &serde_json::Number) -> Option<u64> {
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < 253_402_300_800.0)
            .map(|f| f as u64)
    })
}

/// Members that only a private (or symmetric) key has (RFC 7518 §6.2.2, §6.3.2,
/// §6.4; RFC 8037 §2).
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The proof's key, checked to be public and of the kind and size `alg` needs.
fn public_key(
    members: serde_json::Map<String, serde_json::Value>,
    alg: Algorithm,
) -> Result<(Jwk, DecodingKey), DpopError> {
    if PRIVATE_MEMBERS.iter().any(|m| members.contains_key(*m)) {
        return Err(DpopError::PrivateKey);
    }
    let jwk: Jwk = serde_json::from_value(serde_json::Value::Object(members))
        .map_err(|_| DpopError::InvalidKey)?;
    let decoded_len = |s: &str| URL_SAFE_NO_PAD.decode(s).map(|b| b.len()).ok();
    let fits = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES256) => {
            ec.curve == EllipticCurve::P256
                && decoded_len(&ec.x) == Some(32)
                && decoded_len(&ec.y) == Some(32)
        }
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
                && decoded_len(&ec.x) == Some(48)
                && decoded_len(&ec.y) == Some(48)
        }
        (AlgorithmParameters::OctetKeyPair(okp), Algorithm::EdDSA) => {
            okp.curve == EllipticCurve::Ed25519 && decoded_len(&okp.x) == Some(32)
        }
        (
            AlgorithmParameters::RSA(rsa),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => {
            // 2048 to 8192 bits; an exponent of at most 64 bits.
            decoded_len(&rsa.n).is_some_and(|n| (256..=1024).contains(&n))
                && decoded_len(&rsa.e).is_some_and(|e| (1..=8).contains(&e))
        }
        (AlgorithmParameters::OctetKey(_), _) => return Err(DpopError::PrivateKey),
        _ => false,
    };
    if !fits {
        return Err(DpopError::InvalidKey);
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| DpopError::InvalidKey)?;
    Ok((jwk, key))
}

/// The RFC 7638 thumbprint of a public key: SHA-256 of its required members, in
/// lexicographic order with no whitespace, base64url. `None` for a key kind DPoP
/// does not use (symmetric, unknown).
pub fn thumbprint(jwk: &Jwk) -> Option<String> {
    fn s(v: &str) -> String {
        // A JSON string, escaped as RFC 8259 says (base64url never needs it).
        serde_json::Value::from(v).to_string()
    }
    let canonical = match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) => {
            let crv = match ec.curve {
                EllipticCurve::P256 => "P-256",
                EllipticCurve::P384 => "P-384",
                EllipticCurve::P521 => "P-521",
                _ => return None,
            };
            format!(
                r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
                s(crv),
                s(&ec.x),
                s(&ec.y)
            )
        }
        AlgorithmParameters::RSA(rsa) => {
            format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, s(&rsa.e), s(&rsa.n))
        }
        AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":{}}}"#, s(&okp.x))
        }
        _ => return None,
    };
    Some(URL_SAFE_NO_PAD.encode(super::sha256(canonical.as_bytes())))
}

/// `scheme://host[:port]`: scheme and host lowercase, the scheme's default port
/// dropped. Only `http` and `https`; no user information.
fn normal_origin(scheme: &str, authority: &str) -> Option<Origin> {
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => "443",
        "http" => "80",
        _ => return None,
    };
    if authority.is_empty()
        || authority.contains('@')
        || !authority.bytes().all(|b| b.is_ascii_graphic())
    {
        return None;
    }
    // The port follows the last ':' unless it is inside an IPv6 literal.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() {
        return None;
    }
    let mut out = format!("{scheme}://{}", host.to_ascii_lowercase());
    match port {
        None | Some("") => {}
        Some(p) if !p.bytes().all(|b| b.is_ascii_digit()) => return None,
        Some(p) => {
            let p = p.trim_start_matches('0');
            let p = if p.is_empty() { "0" } else { p };
            if p != default_port {
                out.push(':');
                out.push_str(p);
            }
        }
    }
    Some(Origin(out))
}

/// A path with percent-encodings normalised (RFC 3986 §6.2.2: unreserved
/// characters decoded, hex digits uppercase) and `/` for an empty one.
fn normal_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return Some("/".into());
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if !b.is_ascii_graphic() {
            return None;
        }
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (hi, lo) = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&h), Some(&l)) => (hex(h)?, hex(l)?),
                _ => return None,
            };
            let decoded = (hi * 16 + lo) as u8;
            if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
                out.push(decoded as char);
            } else {
                out.push_str(&format!("%{decoded:02X}"));
            }
            i += 3;
        } else {
            out.push(b as char);
            i += 1;
        }
    }
    if !out.starts_with('/') {
        return None;
    }
    Some(remove_dot_segments(&out))
}

/// RFC 3986 §5.2.4 on an absolute path: `.` and `..` segments resolved, so that
/// `/a/./b/../c` and `/a/c` name one resource (RFC 9449 §4.3 compares `htu` after
/// the normalisation of RFC 3986 §6.2.2, dot segments included).
fn remove_dot_segments(path: &str) -> String {
    let mut kept: Vec<&str> = Vec::new();
    let mut ends_in_dir = false;
    for segment in path[1..].split('/') {
        ends_in_dir = matches!(segment, "." | "..");
        match segment {
            "." => {}
            ".." => {
                kept.pop();
            }
            other => kept.push(other),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if ends_in_dir || out.is_empty() {
        out.push('/');
    }
    out
}

/// A proof's `htu`, normalised, without query and fragment.
fn normal_htu(htu: &str) -> Option<String> {
    let end = htu.find(['?', '#']).unwrap_or(htu.len());
    let (scheme, rest) = htu[..end].split_once("://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let mut out = normal_origin(scheme, authority)?.0;
    out.push_str(&normal_path(path)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_lose_their_dot_segments() {
        let p = |s| normal_path(s).unwrap();
        assert_eq!(p("/a/./b/../c"), "/a/c");
        assert_eq!(p("/a/b/.."), "/a/");
        assert_eq!(p("/a/b/."), "/a/b/");
        assert_eq!(p("/../.."), "/");
        assert_eq!(p("/a/%2E%2e/b"), "/b");
        assert_eq!(p("/a//b/"), "/a//b/");
        assert_eq!(p("/a/..b/.c"), "/a/..b/.c");
        assert_eq!(p("/"), "/");
        assert_eq!(p(""), "/");
    }

    #[test]
    fn origins_are_normalised() {
        let o = |s, a| normal_origin(s, a).map(|o| o.0);
        assert_eq!(
            o("HTTPS", "API.Example.com:443").unwrap(),
            "https://api.example.com"
        );
        assert_eq!(o("http", "a.example:80").unwrap(), "http://a.example");
        assert_eq!(o("http", "a.example:443").unwrap(), "http://a.example:443");
        assert_eq!(o("https", "[::1]:8443").unwrap(), "https://[::1]:8443");
        assert_eq!(o("https", "[::1]").unwrap(), "https://[::1]");
        assert_eq!(o("https", "a.example:0443").unwrap(), "https://a.example");
        assert!(o("ftp", "a.example").is_none());
        assert!(o("https", "user@a.example").is_none());
        assert!(o("https", "a.example:x").is_none());
        assert!(o("https", "").is_none());
    }

    #[test]
    fn htu_drops_query_and_fragment_and_normalises_the_path() {
        assert_eq!(
            normal_htu("HTTPS://Api.Example.COM:443/a%7eb/%2f?q=1#f").unwrap(),
            "https://api.example.com/a~b/%2F"
        );
        assert_eq!(
            normal_htu("https://a.example").unwrap(),
            "https://a.example/"
        );
        assert_eq!(
            normal_htu("https://a.example#x").unwrap(),
            "https://a.example/"
        );
        assert!(normal_htu("/relative").is_none());
        assert!(normal_htu("https://a.example/%zz").is_none());
        assert!(normal_htu("https://a.example/%").is_none());
        assert!(normal_htu("https://a.example/a b").is_none());
    }

    #[test]
    fn the_memory_cache_refuses_a_second_use_until_the_entry_expires() {
        let cache = MemoryReplayCache::new(16);
        let first = |now, until| cache.first_use("k", now, until).now_or_pending().unwrap();
        assert_eq!(first(100, 160), Ok(true));
        assert_eq!(first(120, 180), Ok(false));
        assert_eq!(first(160, 220), Ok(false));
        assert_eq!(first(161, 221), Ok(true));
        assert_eq!(first(200, 260), Ok(false));
    }

    #[test]
    fn hmac_algorithms_are_refused() {
        assert!(DpopVerifier::new().algorithms(&[Algorithm::HS256]).is_err());
        assert!(DpopVerifier::new().algorithms(&[]).is_err());
        let v = DpopVerifier::new()
            .algorithms(&[Algorithm::ES256, Algorithm::EdDSA, Algorithm::PS256])
            .unwrap();
        assert_eq!(v.algs(), "ES256 EdDSA Ed25519 PS256");
    }

    #[test]
    fn challenges_follow_rfc_9449() {
        assert_eq!(
            DpopError::Replayed.challenge("ES256 EdDSA"),
            r#"DPoP algs="ES256 EdDSA", error="invalid_dpop_proof", error_description="the DPoP proof was already used""#
        );
        assert_eq!(
            DpopError::KeyMismatch.challenge("ES256"),
            r#"DPoP algs="ES256", error="invalid_token", error_description="the access token is not bound to the DPoP proof's key""#
        );
        let res: http::Response<()> =
            DpopError::ReplayCacheUnavailable("down".into()).http_response("ES256");
        assert_eq!(res.status(), 503);
        assert!(res.headers().get(http::header::WWW_AUTHENTICATE).is_none());
    }
}
