//! What decides whether a bearer token is good: the [`Validator`] trait (with
//! [`ValidationFuture`]), [`StaticTokens`], closures as validators, and the provided
//! [`Claims`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::Rejection;

/// Decides whether a bearer token is good, and what it says.
///
/// `Claims` go into the request's extensions (as [`Verified`](super::Verified)) when
/// the token is good. Return [`ValidationFuture::ready`] when the answer is at hand
/// (a signature check, a table lookup: no allocation), and
/// [`ValidationFuture::pending`] when it must be waited for (a key fetch, an
/// introspection call).
pub trait Validator: Send + Sync + 'static {
    /// What a good token says about its bearer.
    type Claims: Clone + Send + Sync + 'static;

    /// Validates `token` (already checked to be `token68` and under the size cap).
    fn validate(&self, token: &str) -> ValidationFuture<Self::Claims>;

    /// Checks again an answer that a cache remembers: `claims` are what this
    /// validator answered for `token` earlier.
    ///
    /// [`VerifiedCache`](super::VerifiedCache) calls it on every hit, so that what can
    /// change after a token was accepted (a revocation, see `RedisDenylist`) is seen
    /// whatever order the validators and caches are stacked in. The default answers
    /// `Ok(claims)` at once: nothing a signature check or a lookup decided changes
    /// before the token's `exp`, which the cache honours itself.
    ///
    /// A validator that wraps another must forward it (`inner.recheck(token, claims)`,
    /// then its own check), as every wrapper of this crate does; otherwise a check of
    /// the inner validator is skipped on cache hits.
    fn recheck(&self, token: &str, claims: Self::Claims) -> ValidationFuture<Self::Claims> {
        let _ = token;
        ValidationFuture::ready(Ok(claims))
    }
}

impl<V: Validator + ?Sized> Validator for std::sync::Arc<V> {
    type Claims = V::Claims;
    fn validate(&self, token: &str) -> ValidationFuture<Self::Claims> {
        (**self).validate(token)
    }
    fn recheck(&self, token: &str, claims: Self::Claims) -> ValidationFuture<Self::Claims> {
        (**self).recheck(token, claims)
    }
}

/// The outcome of a validation: ready at once, or a boxed future.
#[must_use = "futures do nothing unless polled"]
pub struct ValidationFuture<C> {
    state: State<C>,
}

enum State<C> {
    Ready(Option<Result<C, Rejection>>),
    Pending(BoxFuture<'static, Result<C, Rejection>>),
}

impl<C> ValidationFuture<C> {
    /// An outcome known now.
    pub fn ready(result: Result<C, Rejection>) -> Self {
        ValidationFuture {
            state: State::Ready(Some(result)),
        }
    }

    /// An outcome to wait for.
    pub fn pending(future: impl Future<Output = Result<C, Rejection>> + Send + 'static) -> Self {
        ValidationFuture {
            state: State::Pending(Box::pin(future)),
        }
    }

    /// The outcome, if it is known without waiting; otherwise the future back.
    pub fn now_or_pending(self) -> Result<Result<C, Rejection>, Self> {
        match self.state {
            State::Ready(Some(r)) => Ok(r),
            state => Err(ValidationFuture { state }),
        }
    }
}

impl<C> Future for ValidationFuture<C> {
    type Output = Result<C, Rejection>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin (an Option, a Pin<Box<…>>).
        match &mut self.get_mut().state {
            State::Ready(r) => Poll::Ready(
                r.take()
                    .expect("ValidationFuture polled after it completed"),
            ),
            State::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

impl<C> Unpin for ValidationFuture<C> {}

impl<C> fmt::Debug for ValidationFuture<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidationFuture")
            .field("pending", &matches!(self.state, State::Pending(_)))
            .finish()
    }
}

/// A fixed set of tokens (API keys, service tokens), each mapped to what it stands
/// for (a principal, a role).
///
/// Tokens are kept as SHA-256 digests and a presented token is compared digest to
/// digest in constant time, so neither a memory dump nor response timing reveals
/// them.
///
/// ```
/// use tower_bearer::server::StaticTokens;
///
/// let tokens = StaticTokens::new([("s3cret-ci-token", "ci"), ("s3cret-ops-token", "ops")]);
/// ```
#[derive(Clone)]
pub struct StaticTokens<P> {
    by_digest: HashMap<[u8; 32], P>,
}

impl<P: Clone + Send + Sync + 'static> StaticTokens<P> {
    /// Tokens and what each stands for.
    pub fn new<T: AsRef<[u8]>>(tokens: impl IntoIterator<Item = (T, P)>) -> Self {
        StaticTokens {
            by_digest: tokens
                .into_iter()
                .map(|(token, principal)| (digest(token.as_ref()), principal))
                .collect(),
        }
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    super::sha256(token)
}

impl<P: Clone + Send + Sync + 'static> Validator for StaticTokens<P> {
    type Claims = P;

    fn validate(&self, token: &str) -> ValidationFuture<P> {
        let presented = digest(token.as_bytes());
        // The map lookup is by digest, which an attacker cannot steer toward a stored
        // one; the final equality is constant time all the same.
        let found = self
            .by_digest
            .get_key_value(&presented)
            .filter(|(stored, _)| bool::from(stored.ct_eq(&presented)))
            .map(|(_, principal)| principal.clone());
        ValidationFuture::ready(found.ok_or_else(|| Rejection::invalid_token("unknown token")))
    }
}

impl<P> fmt::Debug for StaticTokens<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("tokens", &self.by_digest.len())
            .finish()
    }
}

/// A validator from a synchronous closure; see [`from_fn`].
#[derive(Clone)]
pub struct FnValidator<F> {
    f: F,
}

/// A validator from a closure that decides at once.
///
/// ```
/// use tower_bearer::server::{validator, Rejection};
///
/// let v = validator::from_fn(|token: &str| {
///     if token == "let-me-in" { Ok("guest") } else { Err(Rejection::invalid_token("unknown token")) }
/// });
/// ```
pub fn from_fn<F, C>(f: F) -> FnValidator<F>
where
    F: Fn(&str) -> Result<C, Rejection> + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
{
    FnValidator { f }
}

impl<F, C> Validator for FnValidator<F>
where
    F: Fn(&str) -> Result<C, Rejection> + Send + Sync + 'static,
    C: Clone + Send + Sync + 'static,
{
    type Claims = C;
    fn validate(&self, token: &str) -> ValidationFuture<C> {
        ValidationFuture::ready((self.f)(token))
    }
}

impl<F> fmt::Debug for FnValidator<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnValidator")
    }
}

/// A validator from an async closure; see [`from_async_fn`].
#[derive(Clone)]
pub struct AsyncFnValidator<F> {
    f: F,
}

/// A validator from an async closure, given its own copy of the token (for a
/// database or a remote call).
pub fn from_async_fn<F, Fut, C>(f: F) -> AsyncFnValidator<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C, Rejection>> + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    AsyncFnValidator { f }
}

impl<F, Fut, C> Validator for AsyncFnValidator<F>
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<C, Rejection>> + Send + 'static,
    C: Clone + Send + Sync + 'static,
{
    type Claims = C;
    fn validate(&self, token: &str) -> ValidationFuture<C> {
        ValidationFuture::pending((self.f)(token.to_owned()))
    }
}

impl<F> fmt::Debug for AsyncFnValidator<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AsyncFnValidator")
    }
}

/// Claims with scopes: what [`RequireScopeLayer`](super::RequireScopeLayer) checks.
pub trait ScopedClaims {
    /// Whether the claims grant `scope`.
    fn has_scope(&self, scope: &str) -> bool;
}

/// The registered claims of a JWT or an introspection answer, and the rest in a map.
///
/// Read in one pass (no buffering of the other claims): `exp`, `nbf` and `iat` may be
/// decimal NumericDates, `jti` may be a number, a claim named twice is refused.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Claims {
    /// Subject: who the token is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Issuer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: one or several.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    /// Expiry, seconds since the Unix epoch (a decimal NumericDate is truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before, seconds since the Unix epoch (a decimal NumericDate is truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at, seconds since the Unix epoch (a decimal NumericDate is truncated).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Token id (a number, as some issuers send it, is kept as its decimal text).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Space-separated scopes (OAuth 2.0, RFC 8693 `scope`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Scopes as an array (`scp`, as Entra ID and Okta send them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scp: Option<Scopes>,
    /// Every other claim.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// A NumericDate: an integer or a decimal number of seconds, not negative.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => match (n.as_u64(), n.as_f64()) {
            (Some(secs), _) => Ok(Some(secs)),
            (None, Some(f)) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                Ok(Some(f as u64))
            }
            _ => Err(D::Error::custom(
                "a NumericDate must be a non-negative number",
            )),
        },
    }
}

/// A string, or a number kept as its text.
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Text(String),
        Number(serde_json::Number),
    }
    Ok(Option::<Id>::deserialize(d)?.map(|id| match id {
        Id::Text(s) => s,
        Id::Number(n) => n.to_string(),
    }))
}

/// `aud`: a string or an array of strings.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Audience {
    /// One audience.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `scp`: an array of scopes, or (as some providers send it) one space-separated
/// string.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Scopes {
    /// An array.
    List(Vec<String>),
    /// A space-separated string.
    Spaced(String),
}

/// A string (`Err(one)`) or an array of strings (`Ok(many)`), read without
/// buffering (serde's untagged enums buffer the value first).
struct OneOrMany(Result<Vec<String>, String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Err(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<OneOrMany, E> {
                Ok(OneOrMany(Err(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany, A::Error> {
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(one) = seq.next_element()? {
                    all.push(one);
                }
                Ok(OneOrMany(Ok(all)))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match OneOrMany::deserialize(d)?.0 {
            Err(one) => Audience::One(one),
            Ok(many) => Audience::Many(many),
        })
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match OneOrMany::deserialize(d)?.0 {
            Err(spaced) => Scopes::Spaced(spaced),
            Ok(list) => Scopes::List(list),
        })
    }
}

/// The claims `Claims` names, and any other.
enum Field {
    Sub,
    Iss,
    Aud,
    Exp,
    Nbf,
    Iat,
    Jti,
    Scope,
    Scp,
    Other(String),
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "sub" => Field::Sub,
                    "iss" => Field::Iss,
                    "aud" => Field::Aud,
                    "exp" => Field::Exp,
                    "nbf" => Field::Nbf,
                    "iat" => Field::Iat,
                    "jti" => Field::Jti,
                    "scope" => Field::Scope,
                    "scp" => Field::Scp,
                    other => Field::Other(other.to_owned()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Claims;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Claims, A::Error> {
                #[derive(Deserialize)]
                struct Date(#[serde(deserialize_with = "numeric_date")] Option<u64>);
                #[derive(Deserialize)]
                struct Id(#[serde(deserialize_with = "string_or_number")] Option<String>);

                let mut c = Claims::default();
                let mut seen = 0u16;
                while let Some(field) = map.next_key::<Field>()? {
                    let (bit, name) = match &field {
                        Field::Sub => (1, "sub"),
                        Field::Iss => (2, "iss"),
                        Field::Aud => (4, "aud"),
                        Field::Exp => (8, "exp"),
                        Field::Nbf => (16, "nbf"),
                        Field::Iat => (32, "iat"),
                        Field::Jti => (64, "jti"),
                        Field::Scope => (128, "scope"),
                        Field::Scp => (256, "scp"),
                        Field::Other(_) => (0, ""),
                    };
                    if seen & bit != 0 {
                        return Err(serde::de::Error::duplicate_field(name));
                    }
                    seen |= bit;
                    match field {
                        Field::Sub => c.sub = map.next_value()?,
                        Field::Iss => c.iss = map.next_value()?,
                        Field::Aud => c.aud = map.next_value()?,
                        Field::Exp => c.exp = map.next_value::<Date>()?.0,
                        Field::Nbf => c.nbf = map.next_value::<Date>()?.0,
                        Field::Iat => c.iat = map.next_value::<Date>()?.0,
                        Field::Jti => c.jti = map.next_value::<Id>()?.0,
                        Field::Scope => c.scope = map.next_value()?,
                        Field::Scp => c.scp = map.next_value()?,
                        Field::Other(name) => {
                            let value = map.next_value()?;
                            if c.extra.insert(name, value).is_some() {
                                return Err(serde::de::Error::custom("a claim is named twice"));
                            }
                        }
                    }
                }
                Ok(c)
            }
        }
        d.deserialize_map(V)
    }
}

impl Claims {
    /// Every scope granted, from `scope` and `scp`.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        let from_scope = self.scope.iter().flat_map(|s| s.split_ascii_whitespace());
        let from_scp: Box<dyn Iterator<Item = &str>> = match &self.scp {
            Some(Scopes::List(list)) => Box::new(list.iter().map(String::as_str)),
            Some(Scopes::Spaced(s)) => Box::new(s.split_ascii_whitespace()),
            None => Box::new(std::iter::empty()),
        };
        from_scope.chain(from_scp)
    }
}

impl ScopedClaims for Claims {
    fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_tokens_match_exactly() {
        let v = StaticTokens::new([("token-a", "a"), ("token-b", "b")]);
        let check = |t: &str| v.validate(t).now_or_pending().ok().unwrap();
        assert_eq!(check("token-a"), Ok("a"));
        assert_eq!(check("token-b"), Ok("b"));
        assert!(check("token-c").is_err());
        assert!(check("token-a ").is_err());
        assert!(!format!("{v:?}").contains("token-a"));
    }

    #[test]
    fn scopes_come_from_scope_and_scp() {
        let c: Claims =
            serde_json::from_str(r#"{"scope":"read write","scp":["admin"],"x":1}"#).unwrap();
        assert!(c.has_scope("read") && c.has_scope("write") && c.has_scope("admin"));
        assert!(!c.has_scope("rea"));
        assert_eq!(c.extra["x"], 1);
        let c: Claims = serde_json::from_str(r#"{"scp":"a b"}"#).unwrap();
        assert!(c.has_scope("b"));
    }

    #[test]
    fn claims_are_read_in_one_pass_and_a_repeated_claim_is_refused() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"u","aud":["a","b"],"scp":"x y","tenant":{"id":7},"sub2":null}"#,
        )
        .unwrap();
        assert_eq!(c.sub.as_deref(), Some("u"));
        assert_eq!(c.aud, Some(Audience::Many(vec!["a".into(), "b".into()])));
        assert_eq!(c.scp, Some(Scopes::Spaced("x y".into())));
        assert_eq!(c.extra["tenant"]["id"], 7);
        assert!(c.extra["sub2"].is_null());
        let c: Claims = serde_json::from_str(r#"{"aud":"one","scp":["s"]}"#).unwrap();
        assert_eq!(c.aud, Some(Audience::One("one".into())));
        assert_eq!(c.scp, Some(Scopes::List(vec!["s".into()])));
        // Written back as read.
        let round: Claims = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(round, c);
        for bad in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"exp":1,"exp":2}"#,
            r#"{"x":1,"x":2}"#,
            r#"{"aud":1}"#,
            r#"{"aud":["a",1]}"#,
            r#"{"scp":{"a":1}}"#,
            r#"[1,2]"#,
        ] {
            assert!(serde_json::from_str::<Claims>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_may_be_decimal_and_jti_numeric() {
        let c: Claims =
            serde_json::from_str(r#"{"exp":1700000000.75,"iat":1600000000,"jti":42}"#).unwrap();
        assert_eq!(
            (c.exp, c.iat, c.jti.as_deref()),
            (Some(1700000000), Some(1600000000), Some("42"))
        );
        let c: Claims = serde_json::from_str(r#"{"exp":null}"#).unwrap();
        assert_eq!(c.exp, None);
        for bad in [
            r#"{"exp":-1}"#,
            r#"{"exp":"1700000000"}"#,
            r#"{"nbf":1e400}"#,
        ] {
            assert!(serde_json::from_str::<Claims>(bad).is_err(), "{bad}");
        }
    }
}
