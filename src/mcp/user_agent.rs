//! The headless user agent: follows an authorization URL through its redirects to
//! the loopback redirect URI, where the login waits for it.

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use http::header::LOCATION;
use http::{Request, Uri};
use http_body_util::Full;

use crate::client::discovery::origin_of;
use crate::transport::{check_url, parse_url};
use crate::{Endpoint, Error, HttpClient};

/// The most redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;

/// A `show` for [`AuthorizationCode`](crate::client::source::AuthorizationCode): the
/// URL is followed on a task of its own (the login serves the redirect meanwhile).
pub(crate) fn headless(http: HttpClient) -> impl Fn(String) -> BoxFuture<'static, ()> {
    move |url: String| {
        let http = http.clone();
        async move {
            tokio::spawn(follow(url, http));
        }
        .boxed()
    }
}

/// The value of query parameter `name` of `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1;
    serde_urlencoded::from_str::<Vec<(String, String)>>(query)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// `location` resolved against `base`.
fn resolve(base: &Uri, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else if location.starts_with('/') {
        format!("{}{location}", origin_of(base))
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        format!("{}{dir}{location}", origin_of(base))
    }
}

async fn get(http: &HttpClient, url: &str) -> Result<http::Response<Bytes>, Error> {
    let uri = parse_url(url)?;
    check_url(&uri, false)?;
    let req = Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::Configuration(format!("the authorization request: {e}")))?;
    http.send(Endpoint::Authorization, req).await
}

/// Follows `url` until a redirect reaches its `redirect_uri`, and delivers that
/// redirect there. When it cannot, delivers an error to the redirect URI, so the
/// login fails at once instead of at its deadline.
async fn follow(url: String, http: HttpClient) {
    let (Some(redirect_uri), state) = (
        query_param(&url, "redirect_uri"),
        query_param(&url, "state"),
    ) else {
        tracing::warn!("the authorization URL has no redirect_uri: nothing to follow");
        return;
    };
    let failed = |code: &str, why: String| {
        let query = serde_urlencoded::to_string([
            ("error", code),
            ("error_description", &why),
            ("state", state.as_deref().unwrap_or_default()),
        ])
        .unwrap_or_default();
        format!("{redirect_uri}?{query}")
    };
    let mut next = url.clone();
    let mut delivery = None;
    for _ in 0..MAX_REDIRECTS {
        if next.split('?').next() == Some(redirect_uri.as_str()) {
            // The login refuses a redirect with another `state` and waits on for
            // the right one (a person's stale tab): here no right one will come.
            delivery = Some(if query_param(&next, "state") == state {
                next
            } else {
                failed(
                    "invalid_request",
                    "the authorization server redirected with a state that is not this \
                     login's; refused"
                        .to_owned(),
                )
            });
            break;
        }
        let res = match get(&http, &next).await {
            Ok(res) => res,
            Err(e) => {
                delivery = Some(failed(
                    "temporarily_unavailable",
                    format!("the headless user agent: {e}"),
                ));
                break;
            }
        };
        let location = res
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .filter(|_| res.status().is_redirection());
        let (Some(location), Ok(base)) = (location, next.parse::<Uri>()) else {
            delivery = Some(failed(
                "interaction_required",
                format!(
                    "the headless user agent got HTTP {} from {}, not a redirect: the \
                     authorization server wants a person",
                    res.status().as_u16(),
                    crate::error::display_url_str(&next)
                ),
            ));
            break;
        };
        next = resolve(&base, location);
    }
    let delivery = delivery.unwrap_or_else(|| {
        failed(
            "interaction_required",
            format!("the headless user agent gave up after {MAX_REDIRECTS} redirects"),
        )
    });
    if let Err(e) = get(&http, &delivery).await {
        tracing::warn!(error = %e, "the headless user agent could not reach the redirect URI");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_against_the_page_they_come_from() {
        let base: Uri = "http://127.0.0.1:9/a/b?x=1".parse().unwrap();
        assert_eq!(resolve(&base, "/c"), "http://127.0.0.1:9/c");
        assert_eq!(resolve(&base, "c?y=2"), "http://127.0.0.1:9/a/c?y=2");
        assert_eq!(
            resolve(&base, "https://idp.example.com/x"),
            "https://idp.example.com/x"
        );
        assert_eq!(
            query_param(
                "http://h/a?redirect_uri=http%3A%2F%2F127.0.0.1%3A5%2Fcb&s=1",
                "redirect_uri"
            )
            .as_deref(),
            Some("http://127.0.0.1:5/cb")
        );
    }
}
