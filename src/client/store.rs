//! Where tokens are kept between runs and shared between processes: the
//! [`TokenStore`] trait, [`MemoryStore`], and [`StoredToken`], the form a token takes
//! outside the process.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::{self, BoxFuture, FutureExt};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::{Error, Token};

/// Keeps a token between runs, or shares it between processes.
///
/// [`Refreshing`](super::Refreshing) with a store reads it before each refresh (a
/// token another process saved is adopted instead of fetching one when it is
/// [newer](Token::is_newer_than), and its refresh token is the one used) and saves
/// every new token *before* serving it, so a rotated refresh token is never lost.
///
/// A store keeps each token's [`Lineage`](crate::Lineage) (loading gives it back
/// with [`Token::with_lineage`]), and `save` replaces the stored token only with a
/// [strictly newer](Token::is_newer_than) one.
pub trait TokenStore: Send + Sync + 'static {
    /// The stored token, if there is one, with its lineage.
    fn load(&self) -> BoxFuture<'_, Result<Option<Token>, Error>>;
    /// Stores `token`, unless the stored token is as new or newer.
    fn save<'a>(&'a self, token: &'a Token) -> BoxFuture<'a, Result<(), Error>>;
    /// Forgets the stored token.
    fn clear(&self) -> BoxFuture<'_, Result<(), Error>>;
}

impl<T: TokenStore + ?Sized> TokenStore for Arc<T> {
    fn load(&self) -> BoxFuture<'_, Result<Option<Token>, Error>> {
        (**self).load()
    }
    fn save<'a>(&'a self, token: &'a Token) -> BoxFuture<'a, Result<(), Error>> {
        (**self).save(token)
    }
    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        (**self).clear()
    }
}

/// Whether `new` may replace `stored`: when nothing is stored, or `new` is strictly
/// newer. The one rule of every store (the same token saved again changes nothing).
pub(crate) fn replaces(new: &Token, stored: Option<&Token>) -> bool {
    stored.is_none_or(|stored| new.is_newer_than(stored))
}

/// A store in memory, shared by its clones.
#[derive(Clone, Default)]
pub struct MemoryStore {
    token: Arc<Mutex<Option<Token>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Token>> {
        self.token.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TokenStore for MemoryStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Token>, Error>> {
        future::ready(Ok(self.slot().clone())).boxed()
    }
    fn save<'a>(&'a self, token: &'a Token) -> BoxFuture<'a, Result<(), Error>> {
        let mut slot = self.slot();
        if replaces(token, slot.as_ref()) {
            *slot = Some(token.clone());
        }
        future::ready(Ok(())).boxed()
    }
    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        *self.slot() = None;
        future::ready(Ok(())).boxed()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("token", &*self.slot())
            .finish()
    }
}

/// A token as it is written outside the process (JSON): the expiry as Unix time,
/// since a monotonic instant means nothing to another process.
///
/// Its strings are zeroized when it is dropped, and `Debug` redacts the tokens.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredToken {
    /// The access token.
    pub access_token: String,
    /// The token type (`Bearer`).
    pub token_type: String,
    /// When the access token expires, in seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// The granted scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The OpenID Connect ID token that came with the access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    /// The token's [`Lineage`](crate::Lineage) ([`Lineage::as_micros`](crate::Lineage::as_micros));
    /// 0 (unknown, older than any other) in what earlier versions wrote.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lineage: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl StoredToken {
    /// The stored form of `token`.
    pub fn from_token(token: &Token) -> Self {
        let expires_at = token.expires_in().map(|left| {
            (SystemTime::now() + left)
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
        StoredToken {
            access_token: token.access_token().expose_secret().to_owned(),
            token_type: token.token_type().to_owned(),
            expires_at,
            refresh_token: token.refresh_token().map(|r| r.expose_secret().to_owned()),
            scope: token.scope().map(str::to_owned),
            id_token: token.expose_id_token().map(str::to_owned),
            lineage: token.lineage().as_micros(),
        }
    }

    /// The token again; an expiry in the past gives an expired token (whose refresh
    /// token can still be used).
    ///
    /// # Errors
    /// [`Error::Configuration`] when the stored access token is not a valid bearer token.
    pub fn to_token(&self) -> Result<Token, Error> {
        let mut token = Token::bearer(self.access_token.as_str())?;
        // A DPoP-bound token stays one (its key must be kept by the application).
        if self.token_type.eq_ignore_ascii_case("dpop") {
            token.set_token_type(self.token_type.clone());
        }
        if let Some(at) = self.expires_at {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = Duration::from_secs(at.saturating_sub(now));
            token = token.with_expires_in(left);
        }
        if let Some(rt) = &self.refresh_token {
            token = token.with_refresh_token(rt.as_str());
        }
        if let Some(scope) = &self.scope {
            token = token.with_scope(scope.as_str());
        }
        if let Some(id_token) = &self.id_token {
            token = token.with_id_token(id_token.as_str());
        }
        Ok(token.with_lineage(crate::Lineage::from_micros(self.lineage)))
    }
}

impl Drop for StoredToken {
    fn drop(&mut self) {
        self.access_token.zeroize();
        self.refresh_token.zeroize();
        self.id_token.zeroize();
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &"[redacted]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("scope", &self.scope)
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("lineage", &self.lineage)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stored_tokens_round_trip() {
        let token = Token::bearer("a-1")
            .unwrap()
            .with_expires_in(Duration::from_secs(600))
            .with_refresh_token("r-1")
            .with_id_token("i-1")
            .with_scope("read");
        let stored = StoredToken::from_token(&token);
        let json = serde_json::to_string(&stored).unwrap();
        let back: StoredToken = serde_json::from_str(&json).unwrap();
        let again = back.to_token().unwrap();
        assert_eq!(again.access_token().expose_secret(), "a-1");
        assert_eq!(again.refresh_token().unwrap().expose_secret(), "r-1");
        assert_eq!(again.scope(), Some("read"));
        assert_eq!(again.expose_id_token(), Some("i-1"));
        assert!(!format!("{back:?}").contains("i-1"));
        let left = again.expires_in().unwrap().as_secs();
        assert!((598..=600).contains(&left), "{left}");
        assert!(!format!("{back:?}").contains("a-1"));
        assert!(!format!("{back:?}").contains("r-1"));
    }

    #[tokio::test]
    async fn a_past_expiry_gives_an_expired_token() {
        let stored = StoredToken {
            access_token: "a".into(),
            token_type: "Bearer".into(),
            expires_at: Some(1),
            refresh_token: Some("r".into()),
            scope: None,
            id_token: None,
            lineage: 0,
        };
        let token = stored.to_token().unwrap();
        assert!(token.is_expired());
        assert!(token.refresh_token().is_some());
    }

    #[tokio::test]
    async fn memory_store_keeps_the_last_token() {
        let store = MemoryStore::new();
        assert!(store.load().await.unwrap().is_none());
        store.save(&Token::bearer("x").unwrap()).await.unwrap();
        let clone = store.clone();
        assert_eq!(
            clone
                .load()
                .await
                .unwrap()
                .unwrap()
                .access_token()
                .expose_secret(),
            "x"
        );
        store.clear().await.unwrap();
        assert!(clone.load().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn stores_keep_the_lineage_and_never_go_back() {
        let old = Token::bearer("old").unwrap();
        let new = Token::bearer("new").unwrap();
        let store = MemoryStore::new();
        store.save(&new).await.unwrap();
        store.save(&old).await.unwrap();
        let kept = store.load().await.unwrap().unwrap();
        assert_eq!(kept.access_token().expose_secret(), "new");
        assert_eq!(kept.lineage(), new.lineage());
        // Through the portable form, and from a file of a version with no lineage.
        let back = StoredToken::from_token(&new).to_token().unwrap();
        assert_eq!(back.lineage(), new.lineage());
        let legacy: StoredToken =
            serde_json::from_str(r#"{"access_token":"a","token_type":"Bearer"}"#).unwrap();
        assert_eq!(
            legacy.to_token().unwrap().lineage(),
            crate::Lineage::UNKNOWN
        );
    }
}
