//! [`JwksValidator`]: JWTs checked against the identity provider's published keys
//! (a JWKS URL, or OIDC discovery), picked by `kid`, with key rotation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
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
use super::Rejection;
use crate::flight::{Joined, SingleFlight};
use crate::transport::{check_url, parse_url};
use crate::{Error, HttpClient};

/// The default least time between two fetches of the keys: an unknown `kid` (or a
/// failing endpoint) causes at most one fetch per cool-down.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(30);
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
/// - The keys are fetched on first use and again when they are older than the
///   answer's `Cache-Control: max-age` (bounded, default 1 min to 24 h; 15 min
///   without one), in the background: requests keep using the current keys.
/// - An unknown `kid` (a rotation) causes one fetch, shared by every request that
///   waits for it, and at most one per cool-down (default 30 s) whatever the number
///   of unknown kids: garbage kids cannot turn requests into fetches.
/// - When the endpoint fails, the last good keys stay in use; with no keys at all
///   requests are answered `503` (the token may well be good).
/// - Keys of an unsupported type, HMAC secrets and encryption keys in the set are
///   skipped with a warning.
///
/// ```no_run
/// use tower_bearer::server::{Claims, JwksValidator, RequireBearerLayer};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let validator = JwksValidator::<Claims>::discover("https://idp.example.com/realms/main")?
///     .rules(|v| v.audience("my-api").require_scopes(["items:read"]))
///     .build();
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
    http: HttpClient,
    allow_insecure_http: bool,
    rules: Rules<C>,
    cooldown: Duration,
    default_refresh: Duration,
    refresh_bounds: (Duration, Duration),
    keys: ArcSwapOption<KeySet<C>>,
    /// The `jwks_uri` found by discovery.
    jwks_uri: Mutex<Option<Uri>>,
    /// When the last fetch started: the cool-down counts from there.
    last_attempt: Mutex<Option<Instant>>,
    flight: SingleFlight<(), Error>,
}

pub(crate) struct KeySet<C> {
    by_kid: HashMap<String, JwtValidator<C>>,
    /// Keys without a `kid`: used for tokens without one, when there is exactly one.
    unnamed: Vec<JwtValidator<C>>,
    stale_at: Instant,
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
    http: Option<HttpClient>,
    allow_insecure_http: bool,
    rules: Rules<C>,
    cooldown: Duration,
    default_refresh: Duration,
    refresh_bounds: (Duration, Duration),
}

impl<C> fmt::Debug for JwksValidatorBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwksValidatorBuilder")
            .field("source", &self.source)
            .field("cooldown", &self.cooldown)
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
    /// fail early). Concurrent calls and requests share one fetch.
    ///
    /// # Errors
    /// Why the keys could not be fetched; the last good keys stay in use.
    pub async fn load(&self) -> Result<(), Error> {
        match Shared::fetch_once(&self.shared, true) {
            Some(flight) => flight.await,
            None => Ok(()),
        }
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
        JwksValidatorBuilder {
            source,
            http: None,
            allow_insecure_http: false,
            rules: Arc::new(|v| v),
            cooldown: DEFAULT_COOLDOWN,
            default_refresh: DEFAULT_REFRESH,
            refresh_bounds: DEFAULT_REFRESH_BOUNDS,
        }
    }

    /// The claim rules every key applies: issuer, audience, leeway, required
    /// claims and scopes, as on [`JwtValidator`].
    pub fn rules(
        mut self,
        rules: impl Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync + 'static,
    ) -> Self {
        self.rules = Arc::new(rules);
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

    /// The least time between two fetches caused by unknown `kid`s or failures
    /// (default 30 s).
    pub fn cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
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

    /// The validator. Keys are fetched on first use (or with [`JwksValidator::load`]).
    ///
    /// # Errors
    /// [`Error::Configuration`] when a URL is plain `http://` to a host other than
    /// loopback and [`allow_insecure_http`](Self::allow_insecure_http) was not set.
    pub fn try_build(self) -> Result<JwksValidator<C>, Error> {
        let url = match &self.source {
            Source::Jwks(url) | Source::Discovery { document: url, .. } => url,
        };
        check_url(url, self.allow_insecure_http)?;
        Ok(JwksValidator {
            shared: Arc::new(Shared {
                source: self.source,
                http: self.http.unwrap_or_default(),
                allow_insecure_http: self.allow_insecure_http,
                rules: self.rules,
                cooldown: self.cooldown,
                default_refresh: self.default_refresh,
                refresh_bounds: self.refresh_bounds,
                keys: ArcSwapOption::empty(),
                jwks_uri: Mutex::new(None),
                last_attempt: Mutex::new(None),
                flight: SingleFlight::default(),
            }),
        })
    }

    /// The validator.
    ///
    /// # Panics
    /// When [`try_build`](Self::try_build) fails: a plain `http://` URL to a host
    /// other than loopback without [`allow_insecure_http`](Self::allow_insecure_http).
    pub fn build(self) -> JwksValidator<C> {
        match self.try_build() {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
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
    /// Joins the running fetch, or starts one unless one started within the
    /// cool-down (`force` skips that check). `None`: no fetch to wait for.
    fn fetch_once(this: &Arc<Self>, force: bool) -> Option<crate::flight::Flight<(), Error>> {
        let recheck = || {
            let mut last = lock(&this.last_attempt);
            let now = Instant::now();
            if !force && last.is_some_and(|t| now.saturating_duration_since(t) < this.cooldown) {
                return Some(Ok(()));
            }
            *last = Some(now);
            None
        };
        let shared = Arc::clone(this);
        match this
            .flight
            .join_or_start(recheck, move || async move { shared.fetch().await })
        {
            Joined::Ready(_) => None,
            Joined::Flight(flight) => Some(flight),
        }
    }

    async fn fetch(&self) -> Result<(), Error> {
        match self.fetch_keys().await {
            Ok(set) => {
                tracing::debug!(keys = set.by_kid.len() + set.unnamed.len(), "JWKS fetched");
                self.keys.store(Some(Arc::new(set)));
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, "JWKS fetch failed; keeping the last good keys");
                Err(e)
            }
        }
    }

    async fn get(&self, url: &Uri) -> Result<http::Response<Bytes>, Error> {
        let req = Request::get(url.clone())
            .header(ACCEPT, "application/json")
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Configuration(e.to_string()))?;
        let res = self.http.send(req).await?;
        if res.status() != StatusCode::OK {
            return Err(Error::InvalidResponse(format!(
                "{url} answered HTTP {}",
                res.status().as_u16()
            )));
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
        let res = self.get(document).await?;
        let uri = discovery_jwks_uri(res.body(), issuer, self.allow_insecure_http)?;
        *lock(&self.jwks_uri) = Some(uri.clone());
        Ok(uri)
    }

    async fn fetch_keys(&self) -> Result<KeySet<C>, Error> {
        let url = self.jwks_uri().await?;
        let res = self.get(&url).await?;
        let lifetime = max_age(res.headers())
            .map(|age| age.clamp(self.refresh_bounds.0, self.refresh_bounds.1))
            .unwrap_or(self.default_refresh);
        let issuer = match &self.source {
            Source::Discovery { issuer, .. } => Some(issuer.as_str()),
            Source::Jwks(_) => None,
        };
        parse_key_set(res.body(), &*self.rules, issuer, Instant::now() + lifetime)
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
        .map_err(|e| Error::InvalidResponse(format!("discovery document: {e}")))?;
    if found.issuer != issuer {
        return Err(Error::InvalidResponse(format!(
            "discovery document names issuer {:?}, expected {issuer:?}",
            found.issuer
        )));
    }
    let uri = parse_url(&found.jwks_uri)?;
    check_url(&uri, allow_insecure_http)?;
    Ok(uri)
}

/// The usable signing keys of a JWKS document, each a validator with `rules` applied
/// (and `issuer`, when the keys were found through discovery), stale at `stale_at`.
///
/// # Errors
/// [`Error::InvalidResponse`] when the document does not parse or holds no usable key.
pub(crate) fn parse_key_set<C: DeserializeOwned + Clone + Send + Sync + 'static>(
    body: &[u8],
    rules: &(dyn Fn(JwtValidator<C>) -> JwtValidator<C> + Send + Sync),
    issuer: Option<&str>,
    stale_at: Instant,
) -> Result<KeySet<C>, Error> {
    let raw: RawKeySet =
        serde_json::from_slice(body).map_err(|e| Error::InvalidResponse(format!("JWKS: {e}")))?;
    let mut set = KeySet {
        by_kid: HashMap::new(),
        unnamed: Vec::new(),
        stale_at,
    };
    for (index, value) in raw.keys.into_iter().enumerate() {
        let Some(validator) = usable_key(index, value, rules, issuer) else {
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
            "the JWKS holds no usable signing key".into(),
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
    let jwk: Jwk = match serde_json::from_value(value) {
        Ok(jwk) => jwk,
        Err(e) => {
            tracing::warn!(index, error = %e, "skipping a JWK that does not parse");
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
    let validator = match JwtValidator::<C>::from_jwk(&jwk) {
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
const NO_KEYS: &str = "the signing keys are unavailable";

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for JwksValidator<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        if token.len() > MAX_TOKEN_LEN {
            return ValidationFuture::ready(Err(Rejection::invalid_token("the token is too long")));
        }
        // Only `alg` and `kid` are read from the header: `jku`, `x5u` and `jwk` would
        // let the token choose its own key.
        let kid = match super::jwt::header_kid(token) {
            Ok(kid) => kid,
            Err(rejection) => return ValidationFuture::ready(Err(rejection)),
        };
        let shared = &self.shared;
        if let Some(keys) = &*shared.keys.load() {
            if keys.stale_at <= Instant::now() {
                // Refresh in the background; this request uses the current keys.
                drop(Shared::fetch_once(shared, false));
            }
            if let Some(validator) = keys.find(kid.as_deref()) {
                return ValidationFuture::ready(validator.check(token));
            }
        }
        // An unknown kid or no keys yet: wait for one (shared, rate-limited) fetch.
        let flight = Shared::fetch_once(shared, false);
        let shared = Arc::clone(shared);
        let token = token.to_owned();
        ValidationFuture::pending(async move {
            let fetched = match flight {
                Some(flight) => flight.await,
                None => Ok(()),
            };
            match (&*shared.keys.load(), fetched) {
                (Some(keys), _) => match keys.find(kid.as_deref()) {
                    Some(validator) => validator.check(&token),
                    None => Err(Rejection::invalid_token(UNKNOWN_KEY)),
                },
                (None, _) => Err(Rejection::Unavailable(NO_KEYS.into())),
            }
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
}
