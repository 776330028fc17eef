//! Why a request is refused, and the answer RFC 6750 §3 (or gRPC) gives for it.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// Why a request was refused. Descriptions are fixed, safe texts: never the token.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No bearer credentials (no `Authorization`, or another scheme): `401` with a
    /// bare challenge (RFC 6750 §3.1: no error code).
    Missing,
    /// A malformed request (two `Authorization` headers, a token that is not
    /// `token68`, a header over the size cap): `400` `invalid_request`.
    InvalidRequest(&'static str),
    /// The token is expired, revoked, malformed or not for us: `401` `invalid_token`.
    InvalidToken(Cow<'static, str>),
    /// The token lacks a scope this resource needs: `403` `insufficient_scope`, with
    /// the scope needed.
    InsufficientScope(String),
    /// The token is good, but the user's authentication behind it is not strong or
    /// recent enough for this resource (RFC 9470 step-up): `401`
    /// `insufficient_user_authentication`, with what a new token must show.
    InsufficientUserAuthentication {
        /// The `acr` values accepted, space-separated (`acr_values`), if any.
        acr_values: Option<String>,
        /// The largest age of the authentication accepted, in seconds (`max_age`).
        max_age: Option<u64>,
    },
    /// The validator cannot decide now (keys or introspection endpoint
    /// unreachable): `503` with no challenge, since the token may well be good; with
    /// a `Retry-After` header when the validator knows when to ask again.
    /// Build it from a description (`"…".into()`) or with [`Unavailable::new`].
    Unavailable(Unavailable),
    /// The DPoP proof that came with the token is refused (RFC 9449 §7.1): `401`
    /// `invalid_dpop_proof`, in a `DPoP` challenge.
    InvalidDpopProof(Cow<'static, str>),
    /// The DPoP proof lacks the server's current nonce (RFC 9449 §8): `401`
    /// `use_dpop_nonce` in a `DPoP` challenge, with this nonce in a `DPoP-Nonce`
    /// header.
    UseDpopNonce(String),
}

/// Why a validator cannot decide now, and when it may ([`Rejection::Unavailable`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unavailable {
    description: Cow<'static, str>,
    retry_after: Option<Duration>,
}

impl Unavailable {
    /// Unavailable for a reason safe to show the client; no time to come back.
    pub fn new(description: impl Into<Cow<'static, str>>) -> Self {
        Unavailable {
            description: description.into(),
            retry_after: None,
        }
    }

    /// Sent as `Retry-After` (whole seconds, rounded up, at least 1): when the
    /// request may be decided.
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// The description (`grpc-message` of a gRPC answer; never a challenge).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// When to ask again, if known.
    pub fn retry_after_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The `Retry-After` value: whole seconds, rounded up, at least 1.
    fn retry_after_seconds(&self) -> Option<u64> {
        let after = self.retry_after?;
        let whole = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        Some(whole.max(1))
    }
}

impl From<&'static str> for Unavailable {
    fn from(description: &'static str) -> Self {
        Unavailable::new(description)
    }
}

impl From<String> for Unavailable {
    fn from(description: String) -> Self {
        Unavailable::new(description)
    }
}

impl From<Cow<'static, str>> for Unavailable {
    fn from(description: Cow<'static, str>) -> Self {
        Unavailable::new(description)
    }
}

impl Rejection {
    /// An invalid token, with a description safe to show the client.
    pub fn invalid_token(description: impl Into<Cow<'static, str>>) -> Self {
        Rejection::InvalidToken(description.into())
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::Missing
            | Rejection::InvalidToken(_)
            | Rejection::InvalidDpopProof(_)
            | Rejection::UseDpopNonce(_)
            | Rejection::InsufficientUserAuthentication { .. } => StatusCode::UNAUTHORIZED,
            Rejection::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::InsufficientScope(_) => StatusCode::FORBIDDEN,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 6750 error code, if the answer carries one.
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Rejection::Missing | Rejection::Unavailable(_) => None,
            Rejection::InvalidRequest(_) => Some("invalid_request"),
            Rejection::InvalidToken(_) => Some("invalid_token"),
            Rejection::InvalidDpopProof(_) => Some("invalid_dpop_proof"),
            Rejection::UseDpopNonce(_) => Some("use_dpop_nonce"),
            Rejection::InsufficientScope(_) => Some("insufficient_scope"),
            Rejection::InsufficientUserAuthentication { .. } => {
                Some("insufficient_user_authentication")
            }
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            Rejection::Missing => None,
            Rejection::InvalidRequest(d) => Some(d),
            Rejection::InvalidToken(d) | Rejection::InvalidDpopProof(d) => Some(d),
            Rejection::Unavailable(u) => Some(u.description()),
            Rejection::UseDpopNonce(_) => {
                Some("the DPoP proof must carry the server's current nonce")
            }
            Rejection::InsufficientScope(_) => Some("the token lacks a required scope"),
            Rejection::InsufficientUserAuthentication { .. } => {
                Some("a stronger or more recent user authentication is required")
            }
        }
    }

    /// The `WWW-Authenticate` value: `Bearer realm="…"`, plus `error`,
    /// `error_description`, `scope`, `acr_values` and `max_age` as the case needs.
    pub fn challenge(&self, realm: &str) -> HeaderValue {
        self.challenge_with(realm, None)
    }

    /// The `WWW-Authenticate` value of [`challenge`](Self::challenge), with the
    /// `resource_metadata` parameter of RFC 9728 §5.1 when `resource_metadata` (the
    /// URL of the resource's metadata document) is given.
    pub fn challenge_with(&self, realm: &str, resource_metadata: Option<&str>) -> HeaderValue {
        self.challenge_in("Bearer", realm, None, resource_metadata, None)
    }

    /// The challenge of `scheme` (`Bearer`, or `DPoP` with its `algs`), with the
    /// parameters this rejection needs; `scope`, the layer's, named in a `401`
    /// (a `403` names the scope it lacks).
    fn challenge_in(
        &self,
        scheme: &'static str,
        realm: &str,
        algs: Option<&str>,
        resource_metadata: Option<&str>,
        scope: Option<&str>,
    ) -> HeaderValue {
        let mut value = format!("{scheme} realm=\"{}\"", quote(realm));
        if let Some(algs) = algs {
            value.push_str(&format!(", algs=\"{}\"", quote(algs)));
        }
        if let Some(code) = self.error_code() {
            value.push_str(&format!(", error=\"{code}\""));
            if let Some(description) = self.description() {
                value.push_str(&format!(
                    ", error_description=\"{}\"",
                    attribute_value(description)
                ));
            }
        }
        let scope = match self {
            Rejection::InsufficientScope(scope) => Some(scope.as_str()),
            _ if self.status() == StatusCode::UNAUTHORIZED => scope,
            _ => None,
        };
        if let Some(scope) = scope {
            value.push_str(&format!(", scope=\"{}\"", attribute_value(scope)));
        }
        if let Rejection::InsufficientUserAuthentication {
            acr_values,
            max_age,
        } = self
        {
            if let Some(acr_values) = acr_values {
                value.push_str(&format!(", acr_values=\"{}\"", quote(acr_values)));
            }
            if let Some(max_age) = max_age {
                value.push_str(&format!(", max_age=\"{max_age}\""));
            }
        }
        if let Some(url) = resource_metadata {
            value.push_str(&format!(", resource_metadata=\"{}\"", quote(url)));
        }
        HeaderValue::try_from(value).unwrap_or_else(|_| HeaderValue::from_static(scheme))
    }

    /// The `WWW-Authenticate` values of a layer that accepts DPoP with `algs`
    /// (RFC 9449 §7.1): for a request that came with `Authorization: DPoP` (or a
    /// refused proof), one `DPoP` challenge carrying the error; otherwise the
    /// `Bearer` challenge, then a bare `DPoP` one naming the algorithms.
    fn dpop_challenges(
        &self,
        challenge: &Challenge<'_>,
        algs: &str,
        dpop_scheme: bool,
    ) -> [Option<HeaderValue>; 2] {
        let (realm, resource_metadata, scope) = (
            challenge.realm,
            challenge.resource_metadata,
            challenge.scope,
        );
        if dpop_scheme
            || matches!(
                self,
                Rejection::InvalidDpopProof(_) | Rejection::UseDpopNonce(_)
            )
        {
            [
                Some(self.challenge_in("DPoP", realm, Some(algs), resource_metadata, scope)),
                None,
            ]
        } else {
            [
                Some(self.challenge_in("Bearer", realm, None, resource_metadata, scope)),
                Some(Rejection::Missing.challenge_in("DPoP", realm, Some(algs), None, None)),
            ]
        }
    }

    /// Puts the challenges for this rejection in `headers` (none for `503`, which
    /// gets its `Retry-After` when known).
    fn put_challenges(&self, headers: &mut HeaderMap, challenge: &Challenge<'_>) {
        if let Rejection::Unavailable(unavailable) = self {
            if let Some(seconds) = unavailable.retry_after_seconds() {
                headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
            }
            return;
        }
        if let Rejection::UseDpopNonce(nonce) = self {
            if let Ok(nonce) = HeaderValue::from_str(nonce) {
                headers.insert("dpop-nonce", nonce);
            }
        }
        match challenge.dpop {
            None => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    self.challenge_in(
                        "Bearer",
                        challenge.realm,
                        None,
                        challenge.resource_metadata,
                        challenge.scope,
                    ),
                );
            }
            Some((algs, dpop_scheme)) => {
                let values = self.dpop_challenges(challenge, algs, dpop_scheme);
                for value in values.into_iter().flatten() {
                    headers.append(WWW_AUTHENTICATE, value);
                }
            }
        }
    }

    /// The answer to an HTTP request: status, `WWW-Authenticate` (not for `503`, which
    /// carries `Retry-After` when known), and an empty body.
    pub fn http_response<B: Default>(&self, realm: &str) -> Response<B> {
        self.http_response_with(realm, None)
    }

    pub(crate) fn http_response_with<B: Default>(
        &self,
        realm: &str,
        resource_metadata: Option<&str>,
    ) -> Response<B> {
        self.http_response_in(&Challenge {
            realm,
            resource_metadata,
            dpop: None,
            scope: None,
        })
    }

    fn http_response_in<B: Default>(&self, challenge: &Challenge<'_>) -> Response<B> {
        let mut res = Response::new(B::default());
        *res.status_mut() = self.status();
        self.put_challenges(res.headers_mut(), challenge);
        res
    }

    /// The gRPC status code: `UNAUTHENTICATED` (16, also for a step-up: the
    /// `WWW-Authenticate` alongside says what to do), `PERMISSION_DENIED` (7) or
    /// `UNAVAILABLE` (14).
    pub fn grpc_status(&self) -> u16 {
        match self {
            Rejection::Missing
            | Rejection::InvalidRequest(_)
            | Rejection::InvalidToken(_)
            | Rejection::InvalidDpopProof(_)
            | Rejection::UseDpopNonce(_)
            | Rejection::InsufficientUserAuthentication { .. } => 16,
            Rejection::InsufficientScope(_) => 7,
            Rejection::Unavailable(_) => 14,
        }
    }

    /// The answer to a gRPC request: a trailers-only response (HTTP 200,
    /// `grpc-status` and `grpc-message` in the headers) that every gRPC client
    /// understands, with the `WWW-Authenticate` challenge alongside.
    pub fn grpc_response<B: Default>(&self, realm: &str) -> Response<B> {
        self.grpc_response_with(realm, None)
    }

    pub(crate) fn grpc_response_with<B: Default>(
        &self,
        realm: &str,
        resource_metadata: Option<&str>,
    ) -> Response<B> {
        self.grpc_response_in(&Challenge {
            realm,
            resource_metadata,
            dpop: None,
            scope: None,
        })
    }

    fn grpc_response_in<B: Default>(&self, challenge: &Challenge<'_>) -> Response<B> {
        let mut res = Response::new(B::default());
        let headers = res.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert("grpc-status", HeaderValue::from(self.grpc_status()));
        let message = self.description().unwrap_or("missing bearer token");
        if let Ok(message) = HeaderValue::try_from(percent_encode(message)) {
            headers.insert("grpc-message", message);
        }
        self.put_challenges(headers, challenge);
        res
    }

    /// The answer for a request with these headers: gRPC if its content type says
    /// so, HTTP otherwise.
    pub fn response_for<B: Default>(
        &self,
        request_headers: &HeaderMap,
        realm: &str,
    ) -> Response<B> {
        self.response_for_with(request_headers, realm, None)
    }

    /// The answer of [`response_for`](Self::response_for), whose challenge (HTTP or
    /// gRPC) carries `resource_metadata` (RFC 9728 §5.1) when given.
    pub fn response_for_with<B: Default>(
        &self,
        request_headers: &HeaderMap,
        realm: &str,
        resource_metadata: Option<&str>,
    ) -> Response<B> {
        self.response_in(
            request_headers,
            &Challenge {
                realm,
                resource_metadata,
                dpop: None,
                scope: None,
            },
        )
    }

    /// The answer for a request with these headers, gRPC or HTTP, with `challenge`.
    pub(crate) fn response_in<B: Default>(
        &self,
        request_headers: &HeaderMap,
        challenge: &Challenge<'_>,
    ) -> Response<B> {
        if is_grpc(request_headers) {
            self.grpc_response_in(challenge)
        } else {
            self.http_response_in(challenge)
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::Missing => f.write_str("no bearer token"),
            Rejection::InsufficientScope(scope) => write!(f, "insufficient scope: {scope} needed"),
            other => write!(
                f,
                "{}: {}",
                other.error_code().unwrap_or("unavailable"),
                other.description().unwrap_or_default()
            ),
        }
    }
}

impl std::error::Error for Rejection {}

/// What a layer's challenges name.
pub(crate) struct Challenge<'a> {
    pub(crate) realm: &'a str,
    pub(crate) resource_metadata: Option<&'a str>,
    /// For a layer that accepts DPoP: its `algs`, and whether the request came with
    /// `Authorization: DPoP`.
    pub(crate) dpop: Option<(&'a str, bool)>,
    /// The scope a `401` names (RFC 6750 §3: what a token for this resource needs).
    pub(crate) scope: Option<&'a str>,
}

/// Whether a request is gRPC (`content-type: application/grpc…`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A quoted-string body (RFC 7230): backslash-escape `"` and `\`, drop control
/// characters.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_control() || !c.is_ascii() => {}
            c => out.push(c),
        }
    }
    out
}

/// The value of `error_description` or `scope` (RFC 6750 §3: only %x20-21 /
/// %x23-5B / %x5D-7E): `"`, `\`, control and non-ASCII characters are left out,
/// not escaped.
fn attribute_value(s: &str) -> String {
    s.chars()
        .filter(|&c| (' '..='~').contains(&c) && c != '"' && c != '\\')
        .collect()
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2, "Responses").
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_follow_rfc_6750() {
        assert_eq!(Rejection::Missing.challenge("api"), r#"Bearer realm="api""#);
        assert_eq!(
            Rejection::invalid_token("the token has expired").challenge("api"),
            r#"Bearer realm="api", error="invalid_token", error_description="the token has expired""#
        );
        assert_eq!(
            Rejection::InsufficientScope("admin write".into()).challenge("a\"b"),
            r#"Bearer realm="a\"b", error="insufficient_scope", error_description="the token lacks a required scope", scope="admin write""#
        );
        let res: Response<()> =
            Rejection::Unavailable("keys unavailable".into()).http_response("api");
        assert_eq!(res.status(), 503);
        assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
        assert!(res.headers().get(RETRY_AFTER).is_none());
    }

    #[test]
    fn a_503_says_when_to_come_back_in_whole_seconds() {
        for (after, header) in [
            (Duration::from_millis(1), "1"),
            (Duration::from_millis(1_999), "2"),
            (Duration::from_secs(2), "2"),
            (Duration::ZERO, "1"),
        ] {
            let rejection = Rejection::Unavailable(Unavailable::new("keys").retry_after(after));
            let res: Response<()> = rejection.http_response("api");
            assert_eq!(res.status(), 503);
            assert_eq!(res.headers()[RETRY_AFTER], header, "{after:?}");
            assert!(res.headers().get(WWW_AUTHENTICATE).is_none());
            let res: Response<()> = rejection.grpc_response("api");
            assert_eq!(res.headers()["grpc-status"], "14");
            assert_eq!(res.headers()[RETRY_AFTER], header);
        }
    }

    #[test]
    fn resource_metadata_comes_last_and_quoted() {
        let url = Some("https://api.example.com/.well-known/oauth-protected-resource");
        assert_eq!(
            Rejection::Missing.challenge_with("api", url),
            r#"Bearer realm="api", resource_metadata="https://api.example.com/.well-known/oauth-protected-resource""#
        );
        let res: Response<()> =
            Rejection::InsufficientScope("admin".into()).grpc_response_with("api", url);
        assert!(res.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .ends_with(r#", scope="admin", resource_metadata="https://api.example.com/.well-known/oauth-protected-resource""#));
    }

    #[test]
    fn step_up_challenges_follow_rfc_9470() {
        let both = Rejection::InsufficientUserAuthentication {
            acr_values: Some("phr phrh".into()),
            max_age: Some(300),
        };
        assert_eq!(both.status(), 401);
        assert_eq!(
            both.challenge_with("api", Some("https://api.example.com/m")),
            r#"Bearer realm="api", error="insufficient_user_authentication", error_description="a stronger or more recent user authentication is required", acr_values="phr phrh", max_age="300", resource_metadata="https://api.example.com/m""#
        );
        let res: Response<()> = Rejection::InsufficientUserAuthentication {
            acr_values: None,
            max_age: Some(0),
        }
        .grpc_response("api");
        assert_eq!(res.headers()["grpc-status"], "16");
        assert!(res.headers()[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .ends_with(r#"error="insufficient_user_authentication", error_description="a stronger or more recent user authentication is required", max_age="0""#));
    }

    #[test]
    fn grpc_answers_are_trailers_only() {
        let res: Response<()> = Rejection::InsufficientScope("admin".into()).grpc_response("api");
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "7");
        assert_eq!(res.headers()["content-type"], "application/grpc");
        let res: Response<()> = Rejection::invalid_token("100% bad").grpc_response("api");
        assert_eq!(res.headers()["grpc-status"], "16");
        assert_eq!(res.headers()["grpc-message"], "100%25 bad");
    }
}
