//! The OpenID Connect relying party's checks: [`IdTokenValidator`] validates the ID
//! token a login returns (OIDC Core §3.1.3.7, §3.1.3.8 and §3.2.2.9) and checks a
//! UserInfo answer against it (§5.3.4).
//!
//! The signature is checked with the provider's published keys, through the
//! server side's [`JwksValidator`] (keys picked by `kid`, fetched again once on an
//! unknown `kid`, those look-ups throttled by time); the claims the relying party
//! must check on top of an access token's (`azp`, `nonce`, `at_hash`, `c_hash`,
//! `auth_time`) are checked here. Every refusal is an [`Error::IdToken`] naming the
//! rule, never quoting the token.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{Method, Request};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use super::discovery::ProviderMetadata;
use crate::server::{JwksValidator, JwtValidator, Rejection};
use crate::transport::{check_url, parse_url};
use crate::{Endpoint, Error, HttpClient, Token};

/// The algorithms an [`IdTokenValidator`] accepts unless told otherwise.
pub const DEFAULT_ID_TOKEN_ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

/// The default clock skew allowed on `exp`, `iat` and `auth_time`.
pub const DEFAULT_ID_TOKEN_LEEWAY: Duration = Duration::from_secs(60);

/// ID tokens longer than this are refused before anything of them is decoded.
pub const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// UserInfo answers longer than this are refused.
const MAX_USERINFO: usize = 64 * 1024;

/// Validates the ID tokens of one provider for one client (OIDC Core §3.1.3.7).
///
/// Built from the provider's discovery document ([`ProviderMetadata`]: its `issuer`
/// and `jwks_uri`) and the client's `client_id`, most simply with
/// [`TokenEndpoint::id_token_validator`](super::TokenEndpoint::id_token_validator).
/// A token is accepted only when:
/// - it is a JWS signed by one of the provider's keys (picked by `kid`; the keys
///   are fetched again, once, for a `kid` not among them, and such look-ups are
///   throttled by time), with an algorithm of the allow-list
///   ([`DEFAULT_ID_TOKEN_ALGORITHMS`] unless [`algorithms`](IdTokenValidatorBuilder::algorithms)
///   says otherwise): `none` never, HMAC (`HS256`…) only with the client secret
///   ([`client_secret`](IdTokenValidatorBuilder::client_secret)) and when allowed;
/// - it is not typed as another kind of token (`typ` `at+jwt` or `logout+jwt`) and
///   has no `events` claim (a logout or other security event token);
/// - `iss` is exactly the issuer; `aud` is (or contains) the client ID; `azp`, when
///   present, is the client ID, and is required when `aud` has several values;
/// - `exp` is in the future and `iat` is not, each within the leeway (default
///   [`DEFAULT_ID_TOKEN_LEEWAY`]); `sub` is present;
/// - what the login expects ([`ExpectedIdToken`]) holds: the `nonce` it sent, the
///   `at_hash` and `c_hash` of its access token and code when the token carries
///   them (or always, when required), `auth_time` no older than a `max_age` it asked.
///
/// Clones share the keys.
///
/// ```no_run
/// use tower_bearer::client::TokenEndpoint;
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::discover("https://idp.example.com").await?.client_id("my-cli");
/// let validator = endpoint.id_token_validator()?.build()?;
/// let login = endpoint.authorization_code()?
///     .scope("openid offline_access")
///     .id_token_validator(validator.clone());
/// let (token, who) = login.login_with_id_token().await?;
/// println!("logged in as {} at {}", who.sub, who.iss);
/// // UserInfo, checked to be about the same person (OIDC Core §5.3.4).
/// let info = validator.userinfo(&token, &who).await?;
/// # let _ = info; Ok(()) }
/// ```
#[derive(Clone)]
pub struct IdTokenValidator {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    client_id: String,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    keys: JwksValidator<Value>,
    /// With the client secret: the validator of HMAC-signed tokens.
    hmac: Option<JwtValidator<Value>>,
    userinfo: Option<String>,
    http: HttpClient,
}

impl fmt::Debug for IdTokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokenValidator")
            .field("issuer", &self.inner.issuer)
            .field("client_id", &self.inner.client_id)
            .field("algorithms", &self.inner.algorithms)
            .field("leeway", &self.inner.leeway)
            .field(
                "client_secret",
                &self.inner.hmac.as_ref().map(|_| "[redacted]"),
            )
            .field("userinfo_endpoint", &self.inner.userinfo)
            .finish_non_exhaustive()
    }
}

/// Builds an [`IdTokenValidator`]: see [`IdTokenValidator::builder`].
pub struct IdTokenValidatorBuilder {
    issuer: String,
    jwks_uri: String,
    client_id: String,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    userinfo: Option<String>,
    http: HttpClient,
    allow_insecure_http: bool,
    first_sight_interval: Option<Duration>,
}

impl fmt::Debug for IdTokenValidatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokenValidatorBuilder")
            .field("issuer", &self.issuer)
            .field("jwks_uri", &self.jwks_uri)
            .field("client_id", &self.client_id)
            .field("algorithms", &self.algorithms)
            .field("client_secret", &self.secret.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

impl IdTokenValidator {
    /// A builder for the ID tokens `metadata`'s provider issues to `client_id`.
    ///
    /// # Errors
    /// [`Error::Configuration`] when the metadata has no `jwks_uri`.
    pub fn builder(
        metadata: &ProviderMetadata,
        client_id: impl Into<String>,
    ) -> Result<IdTokenValidatorBuilder, Error> {
        let jwks_uri = metadata.jwks_uri.clone().ok_or_else(|| {
            Error::Configuration(format!(
                "the provider {:?} publishes no jwks_uri: its ID tokens cannot be validated",
                metadata.issuer
            ))
        })?;
        Ok(IdTokenValidatorBuilder {
            issuer: metadata.issuer.clone(),
            jwks_uri,
            client_id: client_id.into(),
            algorithms: DEFAULT_ID_TOKEN_ALGORITHMS.to_vec(),
            leeway: DEFAULT_ID_TOKEN_LEEWAY,
            secret: None,
            userinfo: metadata.userinfo_endpoint.clone(),
            http: HttpClient::new(),
            allow_insecure_http: false,
            first_sight_interval: None,
        })
    }

    /// The issuer the tokens must name.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The client ID the tokens must be for.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// Validates `id_token` against what the login expects.
    ///
    /// # Errors
    /// [`Error::IdToken`] naming the rule the token breaks;
    /// [`Error::InvalidResponse`] (the JWKS endpoint) when the provider's keys
    /// cannot be had to decide.
    pub async fn validate(
        &self,
        id_token: &str,
        expected: &ExpectedIdToken<'_>,
    ) -> Result<IdTokenClaims, Error> {
        let inner = &*self.inner;
        if id_token.len() > MAX_ID_TOKEN_LEN {
            return Err(refused("it is longer than 16 KiB"));
        }
        let alg = header_alg(id_token)?;
        if !inner.algorithms.contains(&alg) {
            return Err(refused(format!(
                "its algorithm {alg:?} is not in the allow-list {:?}",
                inner.algorithms
            )));
        }
        let checked = if is_hmac(alg) {
            let Some(hmac) = &inner.hmac else {
                return Err(refused(
                    "it is HMAC-signed and no client secret is configured to check it",
                ));
            };
            hmac.check(id_token)
        } else {
            inner.keys.validate_any_length(id_token).await
        };
        let claims = checked.map_err(from_rejection)?;
        let Value::Object(claims) = claims else {
            return Err(refused("its claims are not a JSON object"));
        };
        self.check_claims(claims, alg, expected, unix_now())
    }

    fn check_claims(
        &self,
        mut all: Map<String, Value>,
        alg: Algorithm,
        expected: &ExpectedIdToken<'_>,
        now: u64,
    ) -> Result<IdTokenClaims, Error> {
        let inner = &*self.inner;
        let leeway = inner.leeway.as_secs();
        let text =
            |all: &Map<String, Value>, name: &'static str| -> Result<Option<String>, Error> {
                match all.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(refused(format!("its {name} claim is not a string"))),
                }
            };
        let number = |all: &Map<String, Value>, name: &'static str| -> Result<Option<u64>, Error> {
            match all.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => n
                    .as_u64()
                    .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or_else(|| refused(format!("its {name} claim is not a date"))),
                Some(_) => Err(refused(format!("its {name} claim is not a date"))),
            }
        };
        // Checked by the signature's validator already (iss, aud, exp, iat, sub
        // present); read again into the typed claims.
        // A security event token (a logout token among them) is told from an ID
        // token by its events claim (RFC 8417 §4.3; Back-Channel Logout §4.1).
        if all.contains_key("events") {
            return Err(refused(
                "it has an events claim: a security or logout event token, not an ID token",
            ));
        }
        let sub = text(&all, "sub")?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| refused("it has no sub claim (OIDC Core §2)"))?;
        let iss = text(&all, "iss")?.unwrap_or_default();
        if iss != inner.issuer {
            return Err(refused(
                "its iss is not the provider's issuer (OIDC Core §3.1.3.7 rule 2)",
            ));
        }
        let aud: Vec<String> = match all.get("aud") {
            Some(Value::String(a)) => vec![a.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .map(|a| a.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| refused("its aud claim is not a string or strings"))?,
            _ => return Err(refused("it has no aud claim")),
        };
        if !aud.contains(&inner.client_id) {
            return Err(refused(
                "its aud does not contain this client's ID (OIDC Core §3.1.3.7 rule 3)",
            ));
        }
        let azp = text(&all, "azp")?;
        match &azp {
            Some(azp) if *azp != inner.client_id => {
                return Err(refused(
                    "its azp is not this client's ID (OIDC Core §3.1.3.7 rule 5)",
                ));
            }
            None if aud.len() > 1 => {
                return Err(refused(
                    "its aud has several values and it has no azp (OIDC Core §3.1.3.7 rule 4)",
                ));
            }
            _ => {}
        }
        let exp = number(&all, "exp")?.ok_or_else(|| refused("it has no exp claim"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(refused("it has expired (exp, OIDC Core §3.1.3.7 rule 9)"));
        }
        let iat = number(&all, "iat")?.ok_or_else(|| refused("it has no iat claim"))?;
        if iat > now.saturating_add(leeway) {
            return Err(refused(
                "it was issued in the future (iat, OIDC Core §3.1.3.7 rule 10)",
            ));
        }
        let nonce = text(&all, "nonce")?;
        if let Some(sent) = expected.nonce {
            let matches = nonce
                .as_deref()
                .is_some_and(|n| bool::from(n.as_bytes().ct_eq(sent.as_bytes())));
            if !matches {
                return Err(refused(
                    "its nonce is not the one this login sent (OIDC Core §3.1.3.7 rule 11)",
                ));
            }
        }
        let auth_time = number(&all, "auth_time")?;
        if let Some(max_age) = expected.max_age {
            let Some(at) = auth_time else {
                return Err(refused(
                    "it has no auth_time although max_age was asked (OIDC Core §3.1.2.1)",
                ));
            };
            if at.saturating_add(max_age.as_secs()).saturating_add(leeway) < now {
                return Err(refused(
                    "its auth_time is older than the max_age asked (OIDC Core §3.1.3.7 rule 13)",
                ));
            }
        }
        check_hash(
            &all,
            "at_hash",
            alg,
            expected.access_token,
            expected.at_hash_required,
        )?;
        check_hash(&all, "c_hash", alg, expected.code, expected.c_hash_required)?;
        for name in [
            "sub",
            "iss",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "azp",
        ] {
            all.remove(name);
        }
        Ok(IdTokenClaims {
            sub,
            iss,
            aud,
            exp,
            iat,
            auth_time,
            nonce,
            azp,
            other: all,
        })
    }

    /// Asks the provider's UserInfo endpoint (OIDC Core §5.3) about the person
    /// `token` was issued for, with the access token as a bearer token, and checks
    /// that the answer is about the person of the validated `id_token`: its `sub`
    /// must be the ID token's (§5.3.4), or it is refused.
    ///
    /// Plain JSON answers only: a signed or encrypted answer (`application/jwt`) is
    /// refused. A DPoP-bound token is refused here: its proof needs the key
    /// (`userinfo_dpop`, feature `dpop`).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the provider has no `userinfo_endpoint` or the
    /// token is DPoP-bound; [`Error::InvalidResponse`] (the UserInfo endpoint) for an
    /// error status or an answer that is not a JSON object; [`Error::IdToken`] when
    /// its `sub` is not the ID token's, or (before anything is sent) when `id_token`
    /// was issued by another provider or for another client than this validator's;
    /// the transport's errors.
    pub async fn userinfo(
        &self,
        token: &Token,
        id_token: &IdTokenClaims,
    ) -> Result<Map<String, Value>, Error> {
        if token.is_dpop() {
            return Err(Error::Configuration(
                "UserInfo with a DPoP-bound token needs its key (IdTokenValidator::userinfo_dpop)"
                    .into(),
            ));
        }
        self.userinfo_with(token, id_token, None).await
    }

    /// [`userinfo`](Self::userinfo) with a DPoP-bound token (RFC 9449 §7): the
    /// request carries `Authorization: DPoP` and a proof by `key` with the token's
    /// hash; a `401` that gives a `DPoP-Nonce` is retried once with it.
    ///
    /// # Errors
    /// As [`userinfo`](Self::userinfo); [`Error::Configuration`] when the token is not
    /// DPoP-bound.
    #[cfg(feature = "dpop")]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub async fn userinfo_dpop(
        &self,
        token: &Token,
        id_token: &IdTokenClaims,
        key: &super::DpopKey,
    ) -> Result<Map<String, Value>, Error> {
        if !token.is_dpop() {
            return Err(Error::Configuration(
                "userinfo_dpop: the token is not DPoP-bound (use userinfo)".into(),
            ));
        }
        self.userinfo_with(token, id_token, Some(key)).await
    }

    async fn userinfo_with(
        &self,
        token: &Token,
        id_token: &IdTokenClaims,
        #[cfg(feature = "dpop")] dpop: Option<&super::DpopKey>,
        #[cfg(not(feature = "dpop"))] dpop: Option<std::convert::Infallible>,
    ) -> Result<Map<String, Value>, Error> {
        let inner = &*self.inner;
        // A sub is unique only within its issuer (OIDC Core §2): the claims of
        // another provider's (or client's) ID token name no one here, whatever the
        // sub's text. Refused before the access token is sent.
        if id_token.iss != inner.issuer || !id_token.aud.contains(&inner.client_id) {
            return Err(Error::IdToken(
                "the ID token's claims are of another provider or client than this validator's (OIDC Core §5.3.4)"
                    .into(),
            ));
        }
        let url = inner.userinfo.as_deref().ok_or_else(|| {
            Error::Configuration(format!(
                "the provider {:?} publishes no userinfo_endpoint",
                inner.issuer
            ))
        })?;
        let uri = parse_url(url)?;
        #[allow(unused_mut)]
        let mut res = self.send_userinfo(&uri, token, dpop).await?;
        #[cfg(feature = "dpop")]
        if let Some(key) = dpop {
            // RFC 9449 §9: the resource's nonce, asked for with a 401, then once more.
            let asks_nonce = res.status() == http::StatusCode::UNAUTHORIZED
                && res.headers().contains_key(super::layer::DPOP_NONCE);
            key.remember_from(&uri, res.headers());
            if asks_nonce {
                res = self.send_userinfo(&uri, token, dpop).await?;
                key.remember_from(&uri, res.headers());
            }
        }
        if !res.status().is_success() {
            return Err(Error::InvalidResponse(
                Endpoint::UserInfo,
                format!("HTTP {}", res.status().as_u16()),
            ));
        }
        if res.body().len() > MAX_USERINFO {
            return Err(Error::InvalidResponse(
                Endpoint::UserInfo,
                "the answer is longer than 64 KiB".into(),
            ));
        }
        let media = crate::error::media_type(res.headers());
        if media.eq_ignore_ascii_case("application/jwt") {
            return Err(Error::InvalidResponse(
                Endpoint::UserInfo,
                "a signed or encrypted UserInfo answer (application/jwt) is not supported".into(),
            ));
        }
        let info: Map<String, Value> = serde_json::from_slice(res.body()).map_err(|_| {
            Error::InvalidResponse(
                Endpoint::UserInfo,
                format!("the answer is not a JSON object (content-type {media})"),
            )
        })?;
        let same = matches!(info.get("sub"), Some(Value::String(sub))
            if bool::from(sub.as_bytes().ct_eq(id_token.sub.as_bytes())));
        if !same {
            return Err(Error::IdToken(
                "the UserInfo answer's sub is not the ID token's sub (OIDC Core §5.3.4)".into(),
            ));
        }
        Ok(info)
    }
}

impl IdTokenValidator {
    /// One UserInfo request with `token` (and a DPoP proof by `dpop`).
    async fn send_userinfo(
        &self,
        uri: &http::Uri,
        token: &Token,
        #[cfg(feature = "dpop")] dpop: Option<&super::DpopKey>,
        #[cfg(not(feature = "dpop"))] _dpop: Option<std::convert::Infallible>,
    ) -> Result<http::Response<Bytes>, Error> {
        #[allow(unused_mut)]
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(uri.clone())
            .header(ACCEPT, "application/json")
            .header(AUTHORIZATION, token.authorization().clone())
            .body(Full::new(Bytes::new()))
            .map_err(|e| Error::Configuration(format!("cannot build the UserInfo request: {e}")))?;
        #[cfg(feature = "dpop")]
        if let Some(key) = dpop {
            let proof = key.proof(&Method::GET, uri, Some(token.expose_access_token()))?;
            req.headers_mut().insert(super::DPOP, proof);
        }
        self.inner.http.send(Endpoint::UserInfo, req).await
    }
}

impl IdTokenValidatorBuilder {
    /// The algorithms accepted (default [`DEFAULT_ID_TOKEN_ALGORITHMS`]). An HMAC
    /// algorithm is of use only with [`client_secret`](Self::client_secret).
    pub fn algorithms(mut self, algorithms: &[Algorithm]) -> Self {
        self.algorithms = algorithms.to_vec();
        self
    }

    /// The client secret, which checks HMAC-signed ID tokens (`HS256`, `HS384`,
    /// `HS512`, OIDC Core §10.1) when [`algorithms`](Self::algorithms) allows them.
    pub fn client_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.secret = Some(zeroize::Zeroizing::new(secret.as_ref().to_vec()));
        self
    }

    /// The clock skew allowed on `exp`, `iat` and `auth_time` (default
    /// [`DEFAULT_ID_TOKEN_LEEWAY`], at most 5 minutes).
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway.min(crate::server::jwt::MAX_LEEWAY);
        self
    }

    /// The HTTP client for the keys and UserInfo.
    pub fn http_client(mut self, http: HttpClient) -> Self {
        self.http = http;
        self
    }

    /// Accepts a plain `http://` JWKS or UserInfo URL to a host other than loopback.
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// The least time between two look-ups of the keys for an unknown `kid`
    /// (default 2 s, as [`JwksValidator`]'s first sight).
    pub fn first_sight_interval(mut self, interval: Duration) -> Self {
        self.first_sight_interval = Some(interval);
        self
    }

    /// The validator.
    ///
    /// # Errors
    /// [`Error::Configuration`] for no algorithm, `none`-like or unknown
    /// algorithms, an HMAC algorithm without a client secret (or a secret under 32
    /// bytes), or URLs that do not parse or are plain `http://` to a remote host.
    pub fn build(self) -> Result<IdTokenValidator, Error> {
        if self.algorithms.is_empty() {
            return Err(Error::Configuration("no ID token algorithm allowed".into()));
        }
        let hmac_algs: Vec<Algorithm> = self
            .algorithms
            .iter()
            .copied()
            .filter(|a| is_hmac(*a))
            .collect();
        let hmac = match (&self.secret, hmac_algs.is_empty()) {
            (_, true) => None,
            (None, false) => {
                return Err(Error::Configuration(
                    "HMAC ID token algorithms need the client secret (IdTokenValidatorBuilder::client_secret)"
                        .into(),
                ))
            }
            (Some(secret), false) => {
                if secret.len() < 32 {
                    return Err(Error::Configuration(
                        "the client secret is too short to check HMAC ID tokens (under 32 bytes)"
                            .into(),
                    ));
                }
                // Dates and claims are checked here; the JWT validator checks the
                // signature and issuer.
                Some(
                    JwtValidator::<Value>::hmac(secret)
                        .algorithms(&hmac_algs)
                        .map_err(|e| Error::Configuration(e.to_string()))?
                        .issuer(&self.issuer)
                        .audience(&self.client_id)
                        .leeway(self.leeway)
                        .require_claims(["sub", "iat"]),
                )
            }
        };
        if let Some(url) = &self.userinfo {
            check_url(&parse_url(url)?, self.allow_insecure_http)?;
        }
        let client_id = self.client_id.clone();
        let leeway = self.leeway;
        let mut keys = JwksValidator::<Value>::builder(&self.jwks_uri)?
            .issuer(self.issuer.clone())
            .http_client(self.http.clone())
            .allow_insecure_http(self.allow_insecure_http)
            .rules(move |v| {
                v.audience(&client_id)
                    .leeway(leeway)
                    .require_claims(["sub", "iat"])
            });
        if let Some(interval) = self.first_sight_interval {
            keys = keys.first_sight_interval(interval);
        }
        Ok(IdTokenValidator {
            inner: Arc::new(Inner {
                issuer: self.issuer,
                client_id: self.client_id,
                algorithms: self.algorithms,
                leeway: self.leeway,
                keys: keys.build()?,
                hmac,
                userinfo: self.userinfo,
                http: self.http,
            }),
        })
    }
}

/// What a login expects of its ID token, beyond what every ID token must satisfy.
///
/// ```
/// use tower_bearer::client::ExpectedIdToken;
/// let expected = ExpectedIdToken::new().nonce("n-0S6_WzA2Mj").code("SplxlOBeZQQYbYS6WxSbIA");
/// # let _ = expected;
/// ```
#[derive(Clone, Copy, Default)]
pub struct ExpectedIdToken<'a> {
    nonce: Option<&'a str>,
    access_token: Option<&'a str>,
    at_hash_required: bool,
    code: Option<&'a str>,
    c_hash_required: bool,
    max_age: Option<Duration>,
}

impl fmt::Debug for ExpectedIdToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExpectedIdToken")
            .field("nonce", &self.nonce.map(|_| "[redacted]"))
            .field("access_token", &self.access_token.map(|_| "[redacted]"))
            .field("code", &self.code.map(|_| "[redacted]"))
            .field("max_age", &self.max_age)
            .finish()
    }
}

impl<'a> ExpectedIdToken<'a> {
    /// Nothing beyond the rules of every ID token (a device login's, a refresh's).
    pub fn new() -> Self {
        Self::default()
    }

    /// The `nonce` the authorization request sent: the token must carry it.
    pub fn nonce(mut self, nonce: &'a str) -> Self {
        self.nonce = Some(nonce);
        self
    }

    /// The access token issued with the ID token: its `at_hash`, when present,
    /// must match (OIDC Core §3.1.3.8).
    pub fn access_token(mut self, access_token: &'a str) -> Self {
        self.access_token = Some(access_token);
        self
    }

    /// Requires `at_hash` (an ID token from the authorization endpoint with an
    /// access token, §3.2.2.9).
    pub fn require_at_hash(mut self) -> Self {
        self.at_hash_required = true;
        self
    }

    /// The authorization code exchanged: its `c_hash`, when present, must match
    /// (OIDC Core §3.3.2.11).
    pub fn code(mut self, code: &'a str) -> Self {
        self.code = Some(code);
        self
    }

    /// Requires `c_hash` (an ID token from the authorization endpoint with a code,
    /// §3.3.2.11).
    pub fn require_c_hash(mut self) -> Self {
        self.c_hash_required = true;
        self
    }

    /// The `max_age` the authorization request asked: `auth_time` is required and
    /// must be no older.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }
}

/// The claims of a validated ID token.
#[derive(Clone, PartialEq)]
#[non_exhaustive]
pub struct IdTokenClaims {
    /// The person (subject) at the issuer.
    pub sub: String,
    /// The issuer.
    pub iss: String,
    /// The audiences (this client's ID among them).
    pub aud: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issue time, seconds since the Unix epoch.
    pub iat: u64,
    /// When the person authenticated, seconds since the Unix epoch.
    pub auth_time: Option<u64>,
    /// The nonce it carries.
    pub nonce: Option<String>,
    /// The authorized party.
    pub azp: Option<String>,
    /// Every other claim (`name`, `email`, `acr`, `amr`, `at_hash`, …).
    pub other: Map<String, Value>,
}

impl fmt::Debug for IdTokenClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokenClaims")
            .field("sub", &self.sub)
            .field("iss", &self.iss)
            .field("aud", &self.aud)
            .field("exp", &self.exp)
            .field("iat", &self.iat)
            .field("auth_time", &self.auth_time)
            .field("azp", &self.azp)
            .field("other", &self.other.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn refused(why: impl Into<String>) -> Error {
    Error::IdToken(why.into())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The `alg` of a compact JWS's header; refuses anything else.
fn header_alg(token: &str) -> Result<Algorithm, Error> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
        #[serde(default)]
        typ: Option<Value>,
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(refused(
            "it is not a signed JWT (three dot-separated parts)",
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| refused("its header is not base64url"))?;
    let header: Header =
        serde_json::from_slice(&bytes).map_err(|_| refused("its header is not a JOSE header"))?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(refused("it is unsigned (alg none)"));
    }
    // Explicitly typed tokens of other kinds the provider signs with the same keys
    // (RFC 8725 §3.11): an access token (RFC 9068), a logout token (OIDC
    // Back-Channel Logout §2.4). `typ` is a media type: any case, with or without
    // its `application/` prefix (RFC 7515 §4.1.9).
    if let Some(Value::String(typ)) = &header.typ {
        let typ = typ.to_ascii_lowercase();
        let typ = typ.strip_prefix("application/").unwrap_or(&typ);
        if typ == "at+jwt" || typ == "logout+jwt" {
            return Err(refused(
                "it is typed as another kind of token (typ at+jwt or logout+jwt), not an ID token",
            ));
        }
    }
    crate::server::jwt::parse_alg(&header.alg).ok_or_else(|| refused("its algorithm is unknown"))
}

/// A refusal of the signature's validator, as an ID token error.
fn from_rejection(rejection: Rejection) -> Error {
    match rejection {
        Rejection::Unavailable(why) => Error::InvalidResponse(
            Endpoint::Jwks,
            format!(
                "the provider's keys cannot be had to check an ID token: {}",
                why.description()
            ),
        ),
        Rejection::InvalidToken(why) => match why.strip_prefix("the token ") {
            Some(rest)
                if ["has ", "is ", "was ", "lacks "]
                    .iter()
                    .any(|v| rest.starts_with(v)) =>
            {
                refused(format!("it {rest}"))
            }
            Some(rest) => refused(format!("its {rest}")),
            None => refused(why.into_owned()),
        },
        other => refused(format!("{other:?}")),
    }
}

/// Checks a left-half hash claim (`at_hash`, `c_hash`: OIDC Core §3.1.3.6) of
/// `value` under the hash of `alg`.
fn check_hash(
    all: &Map<String, Value>,
    name: &'static str,
    alg: Algorithm,
    value: Option<&str>,
    required: bool,
) -> Result<(), Error> {
    let claim = match all.get(name) {
        None | Some(Value::Null) if required => {
            return Err(refused(format!("it has no {name}, which is required here")));
        }
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => s,
        Some(_) => return Err(refused(format!("its {name} claim is not a string"))),
    };
    let Some(value) = value else {
        return Ok(());
    };
    let expected = left_half_hash(alg, value.as_bytes());
    if bool::from(claim.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(refused(format!(
            "its {name} does not match (OIDC Core §3.1.3.6)"
        )))
    }
}

/// base64url of the left half of the hash of `alg` over `bytes`: SHA-256 for the
/// `*256` algorithms, SHA-384 and SHA-512 for the others, SHA-512 for EdDSA
/// (Ed25519).
pub(crate) fn left_half_hash(alg: Algorithm, bytes: &[u8]) -> String {
    use Algorithm::*;
    let digest = match alg {
        HS384 | RS384 | PS384 | ES384 => crate::crypto::sha2_long(384, bytes),
        HS512 | RS512 | PS512 | EdDSA => crate::crypto::sha2_long(512, bytes),
        _ => crate::crypto::sha256(bytes).to_vec(),
    };
    URL_SAFE_NO_PAD.encode(&digest[..digest.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_hash_is_the_left_half_of_the_digest() {
        // OIDC Core Appendix A.3: the access token and at_hash of an RS256 token.
        assert_eq!(
            left_half_hash(
                Algorithm::RS256,
                b"jHkWEdUXMU1BwAsC4vtUsZwnNvTIxEl0z9K3vx5KF0Y"
            ),
            "77QmUPtjPfzWtF2AnpK9RQ"
        );
        assert_eq!(left_half_hash(Algorithm::ES384, b"x").len(), 32);
        assert_eq!(left_half_hash(Algorithm::EdDSA, b"x").len(), 43);
    }

    #[test]
    fn junk_headers_are_refused_without_a_panic() {
        for junk in [
            "",
            ".",
            "..",
            "a.b",
            "a.b.c.d",
            "!!!.e30.x",
            "e30.e30.x",
            "eyJhbGciOiJub25lIn0.e30.",
            "eyJhbGciOiJYWVoifQ.e30.x",
        ] {
            assert!(matches!(header_alg(junk), Err(Error::IdToken(_))), "{junk}");
        }
    }
}
