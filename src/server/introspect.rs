//! [`Introspection`]: opaque tokens checked with the authorization server's RFC 7662
//! introspection endpoint, with a cache and one call per token at a time.

use std::collections::HashMap;
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{Request, StatusCode, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::validator::{Claims, ValidationFuture, Validator};
use super::Rejection;
use crate::flight::{Joined, SingleFlight};
use crate::transport::{check_url, parse_url};
use crate::{Error, HttpClient};

/// The default longest time an active answer is reused (never past the token's `exp`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(5 * 60);
/// The default time an `active: false` answer is reused.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// The default number of cached answers.
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// How the resource server authenticates to the introspection endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientAuth {
    /// HTTP Basic with the client id and secret (`client_secret_basic`, the default).
    Basic,
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    Post,
}

/// Validates opaque tokens by asking the authorization server (RFC 7662).
///
/// - The token is POSTed with the resource server's client credentials;
///   `active: false` is an invalid token, a failing endpoint `503`.
/// - Answers are cached by the SHA-256 of the token: active ones until the
///   token's `exp` or the TTL (default 5 min), whichever comes first; inactive ones
///   briefly (default 10 s), so a flood of one bad token is one call.
/// - Concurrent requests for one uncached token make one call, shared through the
///   crate's single flight.
///
/// `C` is built from the introspection answer (the provided [`Claims`], or your
/// own serde type).
///
/// ```no_run
/// use tower_bearer::server::{Claims, Introspection, RequireBearerLayer};
///
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let validator = Introspection::<Claims>::new("https://idp.example.com/oauth/introspect")?
///     .client("my-api", "s3cret")
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
    auth: ClientAuth,
    http: HttpClient,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: usize,
    required_scopes: Vec<String>,
}

type Digest32 = [u8; 32];

struct State<C> {
    cache: Mutex<HashMap<Digest32, Entry<C>>>,
    /// One flight per token being introspected; removed by the job once its answer
    /// is in the cache.
    flights: Mutex<HashMap<Digest32, Arc<SingleFlight<(), Error>>>>,
    _claims: PhantomData<fn() -> C>,
}

#[derive(Clone)]
struct Entry<C> {
    outcome: Result<C, Rejection>,
    until: Instant,
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
        f.debug_struct("Introspection")
            .field("endpoint", &self.config.endpoint)
            .field("client_id", &self.config.client_id)
            .field("auth", &self.config.auth)
            .field("ttl", &self.config.ttl)
            .field("negative_ttl", &self.config.negative_ttl)
            .field("required_scopes", &self.config.required_scopes)
            .finish_non_exhaustive()
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
        Ok(Introspection {
            config: Arc::new(Config {
                endpoint,
                client_id: String::new(),
                client_secret: None,
                auth: ClientAuth::Basic,
                http: HttpClient::new(),
                ttl: DEFAULT_TTL,
                negative_ttl: DEFAULT_NEGATIVE_TTL,
                max_entries: DEFAULT_MAX_ENTRIES,
                required_scopes: Vec::new(),
            }),
            state: Arc::new(State {
                cache: Mutex::new(HashMap::new()),
                flights: Mutex::new(HashMap::new()),
                _claims: PhantomData,
            }),
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
            required_scopes: old.required_scopes.clone(),
        };
        f(&mut config);
        self.config = Arc::new(config);
        self
    }

    /// The resource server's client credentials.
    pub fn client(self, client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        let (id, secret) = (client_id.into(), SecretString::from(client_secret.into()));
        self.config(|c| {
            c.client_id = id;
            c.client_secret = Some(secret);
        })
    }

    /// How the credentials are sent (default [`ClientAuth::Basic`]).
    pub fn client_auth(self, auth: ClientAuth) -> Self {
        self.config(|c| c.auth = auth)
    }

    /// The HTTP client (default: [`HttpClient::new`]).
    pub fn http_client(self, http: HttpClient) -> Self {
        self.config(|c| c.http = http)
    }

    /// The longest time an active answer is reused (default 5 min; never past `exp`).
    pub fn ttl(self, ttl: Duration) -> Self {
        self.config(|c| c.ttl = ttl)
    }

    /// How long an `active: false` answer is reused (default 10 s).
    pub fn negative_ttl(self, ttl: Duration) -> Self {
        self.config(|c| c.negative_ttl = ttl)
    }

    /// The most answers kept (default 10,000).
    pub fn max_entries(self, n: usize) -> Self {
        self.config(|c| c.max_entries = n.max(1))
    }

    /// Requires every one of `scopes` in the answer's `scope`; otherwise `403`.
    pub fn require_scopes<T: Into<String>>(self, scopes: impl IntoIterator<Item = T>) -> Self {
        let scopes: Vec<String> = scopes.into_iter().map(Into::into).collect();
        self.config(|c| c.required_scopes.extend(scopes))
    }

    fn cached(&self, digest: &Digest32) -> Option<Result<C, Rejection>> {
        let cache = lock(&self.state.cache);
        let entry = cache.get(digest)?;
        (Instant::now() < entry.until).then(|| entry.outcome.clone())
    }

    fn store(&self, digest: Digest32, outcome: Result<C, Rejection>, until: Instant) {
        let mut cache = lock(&self.state.cache);
        if cache.len() >= self.config.max_entries && !cache.contains_key(&digest) {
            let now = Instant::now();
            cache.retain(|_, e| e.until > now);
            if cache.len() >= self.config.max_entries {
                // Still full of live answers: make room; the dropped one is asked again.
                if let Some(victim) = cache.keys().next().copied() {
                    cache.remove(&victim);
                }
            }
        }
        cache.insert(digest, Entry { outcome, until });
    }

    /// Asks the endpoint, caches the answer (not failures to get one), and returns
    /// nothing: callers read the cache.
    async fn introspect(&self, digest: Digest32, token: String) -> Result<(), Error> {
        let result = self.call_endpoint(&token).await;
        drop(token);
        let now = Instant::now();
        match result {
            Ok(Answer::Active(claims, lifetime)) => {
                let outcome = self.check_scopes(claims);
                self.store(digest, outcome, now + lifetime.min(self.config.ttl));
            }
            Ok(Answer::Inactive) => self.store(
                digest,
                Err(Rejection::invalid_token("the token is not active")),
                now + self.config.negative_ttl,
            ),
            Err(e) => {
                tracing::warn!(error = %e, "token introspection failed");
                lock(&self.state.flights).remove(&digest);
                return Err(e);
            }
        }
        lock(&self.state.flights).remove(&digest);
        Ok(())
    }

    fn check_scopes(&self, (claims, scope): (C, Option<String>)) -> Result<C, Rejection> {
        let required = &self.config.required_scopes;
        let granted = scope.unwrap_or_default();
        if required
            .iter()
            .all(|s| granted.split_ascii_whitespace().any(|g| g == s))
        {
            Ok(claims)
        } else {
            Err(Rejection::InsufficientScope(required.join(" ")))
        }
    }

    async fn call_endpoint(&self, token: &str) -> Result<Answer<C>, Error> {
        let config = &*self.config;
        let mut form = vec![("token", token), ("token_type_hint", "access_token")];
        let secret = config.client_secret.as_ref().map(|s| s.expose_secret());
        let mut req = Request::post(config.endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json");
        match (config.auth, secret) {
            (ClientAuth::Basic, Some(secret)) => {
                // RFC 6749 §2.3.1: both parts form-urlencoded before base64.
                let pair = format!("{}:{}", form_encode(&config.client_id), form_encode(secret));
                let value = format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                );
                let mut value = http::HeaderValue::try_from(value)
                    .map_err(|_| Error::Configuration("invalid client credentials".into()))?;
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
        let body =
            serde_urlencoded::to_string(&form).map_err(|e| Error::Configuration(e.to_string()))?;
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| Error::Configuration(e.to_string()))?;
        let res = config.http.send(req).await?;
        if res.status() != StatusCode::OK {
            return Err(Error::InvalidResponse(format!(
                "the introspection endpoint answered HTTP {}",
                res.status().as_u16()
            )));
        }
        parse_answer(res.body())
    }
}

fn form_encode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|pair| pair[1..].to_owned())
        .unwrap_or_default()
}

enum Answer<C> {
    /// The claims, the `scope`, and how long the token stays valid.
    Active((C, Option<String>), Duration),
    Inactive,
}

#[derive(Deserialize)]
struct Head {
    active: bool,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    scope: Option<String>,
}

fn parse_answer<C: DeserializeOwned>(body: &[u8]) -> Result<Answer<C>, Error> {
    let bad = |e: serde_json::Error| Error::InvalidResponse(format!("introspection answer: {e}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
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
    Ok(Answer::Active((claims, head.scope), lifetime))
}

impl<C: DeserializeOwned + Clone + Send + Sync + 'static> Validator for Introspection<C> {
    type Claims = C;

    fn validate(&self, token: &str) -> ValidationFuture<C> {
        let digest: Digest32 = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.cached(&digest) {
            return ValidationFuture::ready(hit);
        }
        let flight = Arc::clone(
            lock(&self.state.flights)
                .entry(digest)
                .or_insert_with(|| Arc::new(SingleFlight::default())),
        );
        let this = self.clone();
        let token = token.to_owned();
        let joined = flight.join_or_start(
            || this.cached(&digest).map(|_| Ok(())),
            || {
                let this = this.clone();
                async move { this.introspect(digest, token).await }
            },
        );
        let this = self.clone();
        match joined {
            Joined::Ready(_) => match this.cached(&digest) {
                Some(hit) => ValidationFuture::ready(hit),
                None => ValidationFuture::ready(Err(unavailable())),
            },
            Joined::Flight(flight) => ValidationFuture::pending(async move {
                match flight.await {
                    Ok(()) => this.cached(&digest).unwrap_or_else(|| Err(unavailable())),
                    Err(_) => Err(unavailable()),
                }
            }),
        }
    }
}

fn unavailable() -> Rejection {
    Rejection::Unavailable("the introspection endpoint is unavailable".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let a: Answer<Claims> =
            parse_answer(br#"{"active":true,"sub":"u","scope":"a b","exp":99999999999}"#).unwrap();
        assert!(
            matches!(a, Answer::Active((ref c, Some(ref s)), _) if c.sub.as_deref() == Some("u") && s == "a b")
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
        assert_eq!(form_encode("a b:c&"), "a+b%3Ac%26");
    }
}
