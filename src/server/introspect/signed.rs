//! [`IntrospectionKeys`]: introspection answers signed by the authorization server
//! (RFC 9701, JWT Response for OAuth Token Introspection), checked before
//! [`Introspection`](crate::server::Introspection) reads them.
//!
//! The answer is a JWS of `typ` `token-introspection+jwt` whose `token_introspection`
//! claim holds the RFC 7662 answer. What is checked here, before that answer is read:
//! the signature (with the authorization server's keys, never with a key the answer
//! names), the `typ`, `iss` (the authorization server), `aud` (this resource server),
//! and `iat` (present and recent). The RFC 7662 rules (`active`, `exp`, audience,
//! issuer, scopes) then apply to `token_introspection` as to a plain answer.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

#[cfg(feature = "jwks")]
use crate::server::jwks::{JwksValidator, JwksValidatorBuilder};
use crate::server::jwt::{compact_parts, JwtValidator};
use crate::server::Rejection;
use crate::{Endpoint, Error};

/// The media type of a signed introspection answer (RFC 9701 §4), asked for in
/// `Accept` and expected as the answer's `Content-Type`.
pub const TOKEN_INTROSPECTION_JWT: &str = "application/token-introspection+jwt";

/// The default longest age of a signed answer, from its `iat` (clock skew between
/// the servers, and the time the answer took to arrive). An older answer is refused:
/// it may be a captured one, replayed.
pub const DEFAULT_ANSWER_MAX_AGE: Duration = Duration::from_secs(60);

/// The authorization server's keys for its signed introspection answers (RFC 9701),
/// given to [`Introspection::jwt_response`](crate::server::Introspection::jwt_response).
///
/// - [`key`](Self::key): one known key (a PEM, a JWK...), as a [`JwtValidator`];
/// - [`jwks`](Self::jwks) (feature `jwks`): the keys the authorization server
///   publishes, from its JWKS URL or through OIDC discovery, with the key rotation,
///   first-sight look-ups and backoff of [`JwksValidator`].
///
/// Only the key and its algorithms are taken from what is given: an answer's claims
/// are checked by the rules of RFC 9701, not by a validator's claim rules. An answer
/// is accepted when:
/// - it is a compact JWS (an encrypted answer is refused) whose signature checks
///   with the keys, by an algorithm allowed for the key (`alg: none` never is);
/// - its header `typ` is `token-introspection+jwt` (or
///   `application/token-introspection+jwt`, in any case), so that no other JWT the
///   authorization server signs (an ID token, an access token) passes for an answer;
/// - `iss` is the authorization server's issuer; `aud` is (or contains) the
///   resource server's client id, [`Introspection::client`](crate::server::Introspection::client)
///   (or the [`audience`](Self::audience) given here);
/// - `iat` is present, not in the future (beyond a minute of skew) and at most
///   [`max_age`](Self::max_age) old (default 60 s); an `exp` or `nbf`, if present,
///   holds;
/// - `token_introspection` is a JSON object.
#[derive(Clone)]
pub struct IntrospectionKeys {
    issuer: String,
    audience: Option<String>,
    max_age: Duration,
    keys: Keys,
}

#[derive(Clone, Debug)]
enum Keys {
    One(Box<JwtValidator<Envelope>>),
    #[cfg(feature = "jwks")]
    Published(JwksValidator<Envelope>),
}

impl fmt::Debug for IntrospectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionKeys")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_age", &self.max_age)
            .field("keys", &self.keys)
            .finish()
    }
}

/// The claims of a signed answer that are checked here, each read as sent.
#[derive(Clone, Deserialize)]
struct Envelope {
    #[serde(default)]
    iss: Option<serde_json::Value>,
    #[serde(default)]
    aud: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
    #[serde(default)]
    token_introspection: Option<serde_json::Value>,
}

/// The header members read after the signature checked: `typ` only.
#[derive(Deserialize)]
struct TypHeader {
    #[serde(default)]
    typ: Option<serde_json::Value>,
}

impl IntrospectionKeys {
    /// Answers from `issuer`, signed with the key of `key` (its algorithm allow-list
    /// is kept; its claim rules are not used).
    ///
    /// ```
    /// use tower_bearer::server::{Claims, IntrospectionKeys, JwtValidator};
    ///
    /// # fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// # let pem = std::fs::read("tests/keys/rsa.pub.pem")?;
    /// let keys = IntrospectionKeys::key(
    ///     "https://idp.example.com",
    ///     JwtValidator::<Claims>::rsa_pem(&pem)?,
    /// );
    /// # Ok(()) }
    /// ```
    pub fn key<K: serde::de::DeserializeOwned + Clone + Send + Sync + 'static>(
        issuer: impl Into<String>,
        key: JwtValidator<K>,
    ) -> Self {
        IntrospectionKeys {
            issuer: issuer.into(),
            audience: None,
            max_age: DEFAULT_ANSWER_MAX_AGE,
            keys: Keys::One(Box::new(key.signature_only())),
        }
    }

    /// Answers signed with the keys the authorization server publishes: `keys` from
    /// [`JwksValidator::discover`] (the discovered issuer is the answers' `iss`) or
    /// [`JwksValidator::builder`] with [`issuer`](JwksValidatorBuilder::issuer). Its
    /// fetch settings (HTTP client, cool-down, first-sight interval and wait) are
    /// kept; its [`rules`](JwksValidatorBuilder::rules) are not used.
    ///
    /// A signed answer under a `kid` not yet fetched is a first sight, as for a
    /// token: the keys are fetched again (throttled by time), and until they come
    /// the answer is not accepted (the request is answered `503`). An answer longer
    /// than the validator's [`MAX_TOKEN_LEN`](crate::server::jwks::MAX_TOKEN_LEN)
    /// (8 KiB) is refused.
    ///
    /// # Errors
    /// [`Error::Configuration`] when no issuer is known (a JWKS URL without
    /// [`issuer`](JwksValidatorBuilder::issuer)), and as
    /// [`JwksValidatorBuilder::build`].
    #[cfg(feature = "jwks")]
    #[cfg_attr(docsrs, doc(cfg(feature = "jwks")))]
    pub fn jwks<K: serde::de::DeserializeOwned + Clone + Send + Sync + 'static>(
        keys: JwksValidatorBuilder<K>,
    ) -> Result<Self, Error> {
        let issuer = keys.issuer_set().map(str::to_owned).ok_or_else(|| {
            Error::Configuration(
                "the issuer of the signed introspection answers is needed: \
                 JwksValidator::discover, or JwksValidatorBuilder::issuer"
                    .into(),
            )
        })?;
        Ok(IntrospectionKeys {
            issuer,
            audience: None,
            max_age: DEFAULT_ANSWER_MAX_AGE,
            keys: Keys::Published(keys.signature_only::<Envelope>().build()?),
        })
    }

    /// The `aud` an answer must name, when the authorization server knows this
    /// resource server by something other than its client id.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// The longest age of an answer, from its `iat` (default
    /// [`DEFAULT_ANSWER_MAX_AGE`]).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// The answers' issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The RFC 7662 answer inside the signed answer `body`, once its signature and
    /// claims are checked; `client_id` is the resource server's, the default `aud`.
    ///
    /// Every error is the answer's (never the introspected token's): a refused
    /// answer says nothing about the token, so the caller answers `503`.
    pub(crate) async fn open(
        &self,
        body: &[u8],
        client_id: &str,
    ) -> Result<serde_json::Value, Error> {
        let refused = |why: &str| {
            Error::InvalidResponse(
                Endpoint::Introspection,
                format!("signed answer (RFC 9701) refused: {why}"),
            )
        };
        let text = std::str::from_utf8(body).map_err(|_| refused("not a compact JWS"))?;
        let text = text.trim_ascii();
        let Some((header, _, _)) = compact_parts(text) else {
            return Err(refused(
                "not a compact JWS (an encrypted answer is not supported)",
            ));
        };
        let verified = match &self.keys {
            Keys::One(key) => key.check(text),
            #[cfg(feature = "jwks")]
            // Bounded by the HTTP client's body limit, not by the 8 KiB of a token: an
            // answer grows with the token's claims (a user in many groups).
            Keys::Published(keys) => keys.validate_any_length(text).await,
        };
        let envelope = verified.map_err(|rejection| match rejection {
            Rejection::Unavailable(_) => Error::InvalidResponse(
                Endpoint::Introspection,
                "signed answer (RFC 9701) not checked: the authorization server's keys \
                 are unavailable"
                    .into(),
            ),
            // The validator's own descriptions, which never quote what they refuse.
            Rejection::InvalidToken(why) => refused(&why.replace("the token", "the answer")),
            _ => refused("not accepted"),
        })?;
        // Authentic from here on: the header was part of what was signed.
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .ok()
            .and_then(|h| serde_json::from_slice::<TypHeader>(&h).ok())
            .ok_or_else(|| refused("its header is malformed"))?;
        let typ_ok = header
            .typ
            .as_ref()
            .and_then(|t| t.as_str())
            .is_some_and(|t| {
                t.eq_ignore_ascii_case("token-introspection+jwt")
                    || t.eq_ignore_ascii_case(TOKEN_INTROSPECTION_JWT)
            });
        if !typ_ok {
            return Err(refused("its typ is not token-introspection+jwt"));
        }
        match envelope.iss.as_ref().and_then(|i| i.as_str()) {
            Some(iss) if iss == self.issuer => {}
            Some(_) => return Err(refused("the answer has the wrong issuer")),
            None => return Err(refused("it lacks the iss claim")),
        }
        let audience = self.audience.as_deref().unwrap_or(client_id);
        if audience.is_empty() {
            return Err(refused(
                "no client id to check its aud against (Introspection::client)",
            ));
        }
        let for_us = match &envelope.aud {
            Some(serde_json::Value::String(aud)) => aud == audience,
            Some(serde_json::Value::Array(list)) => list.iter().any(|a| a == audience),
            Some(_) => false,
            None => return Err(refused("it lacks the aud claim")),
        };
        if !for_us {
            return Err(refused("its aud is not this resource server"));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // A decimal iat is a NumericDate too (the validator checked it is a date).
        let iat = match envelope.iat.as_ref() {
            Some(iat) => iat
                .as_u64()
                .or_else(|| iat.as_f64().map(|f| f as u64))
                .ok_or_else(|| refused("its iat is malformed"))?,
            None => return Err(refused("it lacks the iat claim")),
        };
        if now.saturating_sub(iat) > self.max_age.as_secs() {
            return Err(refused("it is too old (iat)"));
        }
        match envelope.token_introspection {
            Some(answer @ serde_json::Value::Object(_)) => Ok(answer),
            Some(_) => Err(refused("its token_introspection is not an object")),
            None => Err(refused("it lacks the token_introspection claim")),
        }
    }
}

/// Whether the answer's `Content-Type` is the signed answer's media type.
pub(crate) fn is_signed_answer(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(TOKEN_INTROSPECTION_JWT))
}
