//! [`SharedFileSource`]: the processes sharing one token file refresh once between
//! them (skeleton: the single flight is not written yet).

use std::fmt;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use super::source::{Presented, TokenSource};
use super::store::TokenStore;
use super::store_file::FileStore;
use crate::{Error, Token};

/// A [`TokenSource`] shared by every process using the same token file: made by
/// [`FileStore::shared`].
pub struct SharedFileSource<S> {
    store: FileStore,
    source: S,
    wait_timeout: Duration,
    poll: (Duration, Duration),
    claim_wait: Duration,
    allow_network_fs: bool,
}

impl<S: TokenSource> SharedFileSource<S> {
    pub(crate) fn new(store: FileStore, source: S) -> Self {
        SharedFileSource {
            store,
            source,
            wait_timeout: Duration::from_secs(60),
            poll: (Duration::from_millis(5), Duration::from_millis(50)),
            claim_wait: Duration::from_secs(10),
            allow_network_fs: false,
        }
    }

    /// How long a process waits for another one's refresh. Default 60 s.
    #[must_use]
    pub fn wait_timeout(mut self, d: Duration) -> Self {
        self.wait_timeout = d;
        self
    }

    /// The polling interval while another process refreshes: `min`, doubling up to
    /// `max`. Default 5 ms to 50 ms.
    #[must_use]
    pub fn poll_interval(mut self, min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        self.poll = (min, max.max(min));
        self
    }

    /// How long after a dead holder presented a refresh token another process waits
    /// before presenting it again. Default 10 s.
    #[must_use]
    pub fn claim_wait(mut self, d: Duration) -> Self {
        self.claim_wait = d;
        self
    }

    /// Accepts a token file on a network file system.
    #[must_use]
    pub fn allow_network_file_system(mut self) -> Self {
        self.allow_network_fs = true;
        self
    }

    /// The token file.
    pub fn store(&self) -> &FileStore {
        &self.store
    }

    async fn fetch_shared(&self, previous: Option<&Token>) -> Result<Token, Error> {
        let token = self.source.fetch(previous).await?;
        self.store.save(&token).await?;
        Ok(token)
    }
}

impl<S: TokenSource> TokenSource for SharedFileSource<S> {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.fetch_shared(previous).boxed()
    }

    fn shares_tokens(&self) -> bool {
        true
    }

    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        self.source.presents(previous)
    }
}

impl<S> fmt::Debug for SharedFileSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedFileSource")
            .field("store", &self.store)
            .field("wait_timeout", &self.wait_timeout)
            .field("claim_wait", &self.claim_wait)
            .finish_non_exhaustive()
    }
}
