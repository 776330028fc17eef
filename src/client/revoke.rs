//! [`Revocation`]: token revocation (RFC 7009), for logging out.

use std::fmt;

use http::Uri;
use secrecy::ExposeSecret;

use super::endpoint::{endpoint_error, ErrorAnswer, TokenEndpoint};
use crate::{Error, Token};

/// Which kind of token is revoked (RFC 7009 §2.1 `token_type_hint`): the server
/// looks there first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenTypeHint {
    /// `access_token`.
    AccessToken,
    /// `refresh_token`.
    RefreshToken,
}

impl TokenTypeHint {
    /// The value of `token_type_hint`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenTypeHint::AccessToken => "access_token",
            TokenTypeHint::RefreshToken => "refresh_token",
        }
    }
}

/// A provider's revocation endpoint (RFC 7009) and the client's registration with it.
///
/// Found through discovery ([`TokenEndpoint::revocation`]) or given
/// ([`Revocation::new`]); [`Refreshing::logout`](super::Refreshing::logout) uses it to
/// end a session.
///
/// ```no_run
/// use tower_bearer::client::{Revocation, TokenEndpoint, TokenTypeHint};
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/oauth2/token")?.client_id("cli");
/// let revocation = Revocation::new(&endpoint, "https://idp.example.com/oauth2/revoke")?;
/// revocation.revoke("a-refresh-token", Some(TokenTypeHint::RefreshToken)).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Revocation {
    endpoint: TokenEndpoint,
}

impl Revocation {
    /// The revocation endpoint at `url`, with the client registration (id, secret,
    /// authentication method, HTTP client) of `token_endpoint`. Its extra form
    /// parameters ([`TokenEndpoint::param`]) are not sent.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a URL that does not parse or would send the client
    /// credentials in clear text (see [`TokenEndpoint::new`]).
    pub fn new(token_endpoint: &TokenEndpoint, url: &str) -> Result<Self, Error> {
        Ok(Revocation {
            endpoint: token_endpoint
                .with_url(url, crate::Endpoint::Revocation)?
                .without_params(),
        })
    }

    /// The endpoint's URL.
    pub fn url(&self) -> &Uri {
        self.endpoint.url()
    }

    /// Revokes one token. A token the server does not know (already revoked or
    /// expired) is revoked as far as the client can tell: the server answers `200`
    /// (RFC 7009 §2.2).
    ///
    /// # Errors
    /// [`Error::TokenEndpoint`] for an error answer (`unsupported_token_type` when
    /// the server cannot revoke that kind of token, `invalid_client`, `503` with its
    /// `Retry-After`); [`Error::Transport`] and [`Error::Timeout`] from the HTTP
    /// client.
    pub async fn revoke(&self, token: &str, hint: Option<TokenTypeHint>) -> Result<(), Error> {
        let mut form = vec![("token", token)];
        if let Some(hint) = hint {
            form.push(("token_type_hint", hint.as_str()));
        }
        let res = self.endpoint.post(&form).await?;
        if res.status().is_success() {
            return Ok(());
        }
        let answer: Option<ErrorAnswer> = serde_json::from_slice(res.body()).ok();
        Err(self.endpoint.locate(
            match endpoint_error(res.status(), res.headers(), answer) {
                // Not a grant here: the revocation request itself was refused.
                Error::InvalidGrant(e) => Error::TokenEndpoint(e),
                other => other,
            },
            &form,
        ))
    }

    /// Revokes a token's refresh token (which on most providers ends the grant and
    /// every access token of it), then its access token. Both are tried whatever
    /// the first answer; an access token the server cannot revoke
    /// (`unsupported_token_type`) is not an error.
    ///
    /// # Errors
    /// The first error of the two revocations.
    pub async fn revoke_token(&self, token: &Token) -> Result<(), Error> {
        let refresh = match token.refresh_token() {
            Some(r) => {
                self.revoke(r.expose_secret(), Some(TokenTypeHint::RefreshToken))
                    .await
            }
            None => Ok(()),
        };
        let access = match self
            .revoke(
                token.access_token().expose_secret(),
                Some(TokenTypeHint::AccessToken),
            )
            .await
        {
            Err(e) if e.oauth_code() == Some("unsupported_token_type") => Ok(()),
            other => other,
        };
        refresh.and(access)
    }
}

impl fmt::Debug for Revocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocation")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{source, MemoryStore, Refreshing, TokenStore};

    #[tokio::test]
    async fn logout_without_a_revocation_endpoint_forgets_and_says_so() {
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = std::sync::Arc::clone(&fetches);
        let source = source::from_fn(move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(Token::bearer("fetched").unwrap()) }
        });
        let store = MemoryStore::new();
        let cache = Refreshing::builder(source).store(store.clone()).build();
        cache.token().await.unwrap();
        assert!(store.load().await.unwrap().is_some());

        let err = cache.logout().await.unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{err}");
        assert!(store.load().await.unwrap().is_none());
        assert!(matches!(cache.token().await, Err(Error::NoToken(_))));
        assert_eq!(fetches.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A new login ends the logged-out state.
        cache
            .set_token(Token::bearer("again").unwrap())
            .await
            .unwrap();
        let token = cache.token().await.unwrap();
        assert_eq!(token.access_token().expose_secret(), "again");
        // Logging out with nothing to revoke is not an error.
        let empty = Refreshing::new(source::from_fn(|_| async {
            Err::<Token, _>(Error::NoToken("none".into()))
        }));
        empty.logout().await.unwrap();
    }
}
