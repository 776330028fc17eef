//! [`StepUpChallenge`]: a resource's demand for a stronger or more recent login
//! (RFC 9470), read from its `401`.

use std::fmt;

use http::header::WWW_AUTHENTICATE;
use http::HeaderMap;

use crate::metadata::bearer_param;

/// The error code of a step-up challenge (RFC 9470 §3).
const INSUFFICIENT_USER_AUTHENTICATION: &str = "insufficient_user_authentication";

/// A `401` (or gRPC `UNAUTHENTICATED`) whose `Bearer` challenge says
/// `error="insufficient_user_authentication"` (RFC 9470 §3): the token is valid, but
/// the resource wants the user to log in again, with one of
/// [`acr_values`](Self::acr_values) and/or no longer ago than
/// [`max_age`](Self::max_age).
///
/// A fresh token from the same grant (a refresh) cannot meet it, so
/// [`AuthorizeLayer`](super::AuthorizeLayer) and
/// [`AuthorizeMiddleware`](super::AuthorizeMiddleware) neither drop the token nor
/// retry: they return the answer with the challenge in its extensions. Log the user
/// in again, passing `acr_values` and `max_age` to the authorization request.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use tower_bearer::client::StepUpChallenge;
///
/// let mut headers = HeaderMap::new();
/// headers.insert(
///     "www-authenticate",
///     HeaderValue::from_static(
///         r#"Bearer error="insufficient_user_authentication", acr_values="mfa hwk", max_age="300""#,
///     ),
/// );
/// let step_up = StepUpChallenge::from_headers(&headers).unwrap();
/// assert_eq!(step_up.acr_values, ["mfa", "hwk"]);
/// assert_eq!(step_up.max_age, Some(300));
/// // Or as the crate's error, to return with `?`:
/// let error = tower_bearer::Error::from(step_up);
/// assert!(matches!(error, tower_bearer::Error::StepUpRequired(_)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepUpChallenge {
    /// The `acr` values the resource accepts, most preferred first (empty: any).
    pub acr_values: Vec<String>,
    /// How long ago, at most, the user may have authenticated, in seconds.
    pub max_age: Option<u64>,
    /// The resource's `error_description`, if it sent one.
    pub description: Option<String>,
}

impl StepUpChallenge {
    /// The step-up challenge among the `WWW-Authenticate` values of `headers`, if one
    /// is there. Never panics on a malformed header: it is no challenge, or one
    /// without the parameter that cannot be read.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| is_step_up(v))
            .map(|v| StepUpChallenge {
                acr_values: bearer_param(v, "acr_values")
                    .map(|a| a.split_ascii_whitespace().map(str::to_owned).collect())
                    .unwrap_or_default(),
                max_age: bearer_param(v, "max_age").and_then(|a| a.trim().parse().ok()),
                description: bearer_param(v, "error_description"),
            })
    }

    /// [`acr_values`](Self::acr_values) as the space-separated parameter of an
    /// authorization request, if any.
    pub fn acr_values_param(&self) -> Option<String> {
        (!self.acr_values.is_empty()).then(|| self.acr_values.join(" "))
    }
}

/// Whether a `WWW-Authenticate` value is a `Bearer` step-up challenge.
fn is_step_up(value: &str) -> bool {
    bearer_param(value, "error").is_some_and(|e| e == INSUFFICIENT_USER_AUTHENTICATION)
}

impl fmt::Display for StepUpChallenge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("log in again")?;
        let mut sep = " with";
        if let Some(acr) = self.acr_values_param() {
            write!(f, "{sep} acr_values {acr:?}")?;
            sep = " and";
        }
        if let Some(max_age) = self.max_age {
            write!(f, "{sep} max_age {max_age} s")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(WWW_AUTHENTICATE, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_a_bearer_step_up_challenge_is_one() {
        assert_eq!(StepUpChallenge::from_headers(&headers(&[])), None);
        for not in [
            r#"Bearer realm="api", error="invalid_token""#,
            r#"Bearer realm="api", error_description="insufficient_user_authentication""#,
            r#"DPoP error="insufficient_user_authentication""#,
            r#"Bearer error="insufficient_user_authentication_x""#,
            "Bearer error=\"insufficient_user_authentication",
        ] {
            assert_eq!(
                StepUpChallenge::from_headers(&headers(&[not])),
                None,
                "{not}"
            );
        }
        let found = StepUpChallenge::from_headers(&headers(&[
            r#"Basic realm="x""#,
            r#"Bearer realm="api", error=insufficient_user_authentication, max_age=60, error_description="more recent""#,
        ]))
        .unwrap();
        assert_eq!(
            found,
            StepUpChallenge {
                acr_values: vec![],
                max_age: Some(60),
                description: Some("more recent".into()),
            }
        );
        assert_eq!(found.to_string(), "log in again with max_age 60 s");
        let odd = StepUpChallenge::from_headers(&headers(&[
            r#"Bearer error="insufficient_user_authentication", max_age="-1", acr_values="  a   b ""#,
        ]))
        .unwrap();
        assert_eq!(
            (odd.acr_values_param().as_deref(), odd.max_age),
            (Some("a b"), None)
        );
    }
}
