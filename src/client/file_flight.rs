//! [`SharedFileSource`]: the processes of one machine sharing one token file refresh
//! once between them, as the replicas of a fleet do through Redis
//! ([`FleetSource`](crate::redis::FleetSource) when the `redis` feature is on).
//!
//! For a token file `P` two sibling files are made (0600, never renamed or deleted):
//! `P.lock`, the write lock held across every read-compare-write of `P`, and
//! `P.refresh`, the refresh lock held by the one process refreshing, whose content is
//! its claim (which refresh token it presents, and when). The locks are the operating
//! system's (`flock` on Unix, `LockFileEx` on Windows): a holder that dies frees them.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::source::{Presented, TokenSource};
use super::store_file::{self, Fenced, FileState, FileStore};
use crate::{Error, Token};

/// How often [`TokenSource::ended_elsewhere`] looks at the file.
const LOGOUT_POLL: Duration = Duration::from_millis(100);
/// How often a token whose write failed is tried again in the background.
const UNSAVED_RETRY: Duration = Duration::from_secs(1);
/// How many refused and spent refresh tokens the claim remembers (each list).
const REMEMBERED: usize = 32;
/// The most of `P.refresh` read: a claim is a few hundred bytes.
const CLAIM_MAX: u64 = 64 * 1024;

/// A [`TokenSource`] shared by every process using the same token file (the same
/// path): made by [`FileStore::shared`].
///
/// - A valid token in the file newer than the caller's is adopted; the token
///   endpoint is not called.
/// - Otherwise one process takes the refresh lock (`P.refresh`), reads the file again,
///   records its claim (the digest of the refresh token it presents, and when) in the
///   lock file, refreshes with the newest refresh token (the file's), and writes the
///   answer under the write lock (`P.lock`), fenced by the file's generation, before
///   serving it. The others poll the file (5 ms doubling to 50 ms) and adopt it.
/// - A holder killed after presenting leaves its claim: the next holder waits until
///   [`claim_wait`](Self::claim_wait) after the claim's time (adopting any newer token
///   written meanwhile) before presenting that refresh token again. A holder killed
///   after the answer came (before it was written) leaves its refresh token recorded
///   as spent: it is never presented again (the session's newest token died with
///   the holder: [`Error::InvalidGrant`], log in again).
/// - Every refresh token refused (`invalid_grant`) or spent (rotated) is recorded in
///   `P.refresh` (the last 32 of each) and never presented again by any process, even
///   one still holding an older token after `P` was deleted; each source also
///   remembers the refusals it got. A login refused (nothing was presented: a wrong
///   password, a refused code) is returned as it is, final.
/// - After `invalid_grant` the file is read again: a newer token another process wrote
///   is adopted, never taken for a logout.
/// - A logout ([`FileStore`]'s `clear`, e.g. through
///   [`Refreshing::logout`](crate::Refreshing::logout) with the file as its store)
///   leaves a tombstone: a process whose token is older gets [`Error::NoToken`], its
///   cache stops serving the token ([`TokenSource::ended_elsewhere`]), and a refresh
///   that was running elsewhere does not write its answer over it.
/// - A write that fails keeps the token served and the refresh lock and claim held
///   (nobody presents the spent refresh token); it is written again every second in
///   the background and before anything else on the next fetch.
/// - The file on a network file system (NFS, SMB, 9p, FUSE, Ceph, GPFS, Lustre),
///   where locks may not hold across machines, is refused with [`Error::TokenFile`]
///   unless [`allow_network_file_system`](Self::allow_network_file_system) (recognised
///   on Linux, by the mount table; not detected on other systems); a lock the file
///   system refuses is [`Error::TokenFile`] too, never an unlocked refresh.
/// - The lock files: a lock taken on a file that was deleted or replaced since it
///   was opened is let go and the file at the path locked instead; `P.refresh` found
///   missing beside a token file is taken for a claim lost with it (a holder may be
///   presenting), and waited out as one made now (once, [`claim_wait`](Self::claim_wait)).
///   A lock file that is a symbolic link (or not a plain file) is refused with
///   [`Error::TokenFile`], never written through. Not covered: a lock file deleted
///   while a save holds `P.lock` (a few milliseconds), or `P` and `P.refresh` both
///   deleted while a refresh runs (nothing is left to say a refresh is running).
/// - A fetch dropped (cancelled) while it writes a refreshed token leaves the token,
///   the refresh lock and the claim with the source: it is written in the background
///   (every second) or by the next fetch, whichever comes first, and the lock let go.
///
/// Give it to [`Refreshing`](crate::Refreshing), with the same [`FileStore`] as its
/// [store](crate::client::RefreshingBuilder::store) so that a logout writes the
/// tombstone.
pub struct SharedFileSource<S> {
    store: FileStore,
    source: S,
    wait_timeout: Duration,
    poll: (Duration, Duration),
    claim_wait: Duration,
    allow_network_fs: bool,
    /// A refreshed token whose write failed, with the refresh lock (and its claim)
    /// still held: written before anything else.
    held: Arc<Mutex<Option<Held>>>,
    /// The refresh tokens the endpoint refused to this source (their digests): never
    /// presented again, whatever the claim file says (it may be lost or rewritten).
    dead: Mutex<Vec<String>>,
    fs_checked: OnceLock<Result<(), Error>>,
}

struct Held {
    lock: fs::File,
    generation: u64,
    token: Token,
    /// The digest of the refresh token the refresh spent (rotated), if it did, and
    /// the lineage of the token that carried it.
    spent: Option<(String, u64)>,
}

/// The content of `P.refresh`.
#[derive(Serialize, Deserialize, Default)]
struct Claim {
    pid: u32,
    /// This process (its pid and a random number drawn once: pids repeat across
    /// containers sharing a directory).
    #[serde(default)]
    owner: String,
    /// The digest ([`Presented`]) of the refresh token being presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presents: Option<String>,
    at_ms: u64,
    /// The digests of the refresh tokens the endpoint refused (the last
    /// [`REMEMBERED`]): none is presented again, by any process.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refused: Vec<String>,
    /// The digests of the refresh tokens a refresh rotated (the last
    /// [`REMEMBERED`]): spent, so never presented again, even by a process still
    /// holding one after the token file was deleted (the provider would revoke the
    /// whole family, the newest token with it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spent: Vec<String>,
    /// The lineage (µs) of the newest token whose refresh token a refresh rotated:
    /// the refresh token of a token no newer is spent too (it was rotated before),
    /// even once its digest has left the bounded `spent` record.
    #[serde(default, skip_serializing_if = "is_zero")]
    spent_upto: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's `skip_serializing_if` signature
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Claim {
    /// Whether the refresh token `name`, carried by `base`, was spent (rotated) by
    /// an earlier refresh.
    fn spent(&self, name: &str, base: Option<&Token>) -> bool {
        self.spent.iter().any(|n| n == name)
            || base.is_some_and(|b| b.lineage().as_micros() <= self.spent_upto)
    }

    /// Records `name` (carried by a token of lineage `lineage`) as spent.
    fn record_spent(&mut self, name: &str, lineage: u64) {
        remember(&mut self.spent, name);
        self.spent_upto = self.spent_upto.max(lineage);
    }
}

impl Claim {
    /// No refresh in flight; the records kept.
    fn ended(mut self) -> Claim {
        self.presents = None;
        self.pid = std::process::id();
        self.owner = process_owner().to_owned();
        self.at_ms = unix_ms();
        self
    }
}

/// Adds `name` to a bounded record.
fn remember(list: &mut Vec<String>, name: &str) {
    if !list.iter().any(|n| n == name) {
        list.push(name.to_owned());
        if list.len() > REMEMBERED {
            list.remove(0);
        }
    }
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
            held: Arc::new(Mutex::new(None)),
            dead: Mutex::new(Vec::new()),
            fs_checked: OnceLock::new(),
        }
    }

    /// How long a process waits for another one's refresh before it gives up with
    /// [`Error::Store`] (retryable). Default 60 s.
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

    /// How long after a dead holder's claim (the time it presented the refresh token)
    /// the next holder waits, watching the file for the answer, before presenting the
    /// same refresh token again. Default 10 s.
    #[must_use]
    pub fn claim_wait(mut self, d: Duration) -> Self {
        self.claim_wait = d;
        self
    }

    /// Accepts a token file on a network file system, where the locks may not hold
    /// across machines (they do between the processes of one machine).
    #[must_use]
    pub fn allow_network_file_system(mut self) -> Self {
        self.allow_network_fs = true;
        self
    }

    /// The token file.
    pub fn store(&self) -> &FileStore {
        &self.store
    }

    fn path(&self) -> &Path {
        self.store.path()
    }

    fn check_file_system(&self) -> Result<(), Error> {
        if self.allow_network_fs {
            return Ok(());
        }
        self.fs_checked
            .get_or_init(|| match network_file_system(self.path()) {
                Some(kind) => Err(Error::TokenFile(format!(
                    "{} is on a network file system ({kind}); locks may not hold across \
                     machines, so processes could present the same refresh token; put the \
                     file on a local disk, or allow it (SharedFileSource::allow_network_file_system) \
                     if only one machine uses it",
                    self.path().display()
                ))),
                None => Ok(()),
            })
            .clone()
    }

    async fn read(&self) -> Result<FileState, Error> {
        store_file::blocking(self.store.inner(), |inner| inner.read_state()).await
    }

    /// The answer the file gives a caller holding `previous`, if any: a logout newer
    /// than its token, or a valid token newer than it.
    fn answer_from(
        &self,
        state: &FileState,
        previous: Option<&Token>,
    ) -> Option<Result<Token, Error>> {
        if let (Some(tombstone), Some(previous)) = (state.tombstone, previous) {
            if state.token.is_none() && tombstone.lineage > previous.lineage().as_micros() {
                return Some(Err(logged_out_elsewhere(self.path())));
            }
        }
        let token = state.token.as_ref().filter(|t| !t.is_expired())?;
        previous
            .is_none_or(|p| token.is_newer_than(p))
            .then(|| Ok(token.clone()))
    }

    async fn fetch_shared(&self, previous: Option<&Token>) -> Result<Token, Error> {
        self.check_file_system()?;
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(held) = held {
            let token = held.token.clone();
            return match write_out(&self.store, &self.held, held).await {
                Ok(result) => result,
                // Still not written: the token is served while it is valid.
                Err(error) => {
                    self.retry_in_background();
                    if !token.is_expired() && previous.is_none_or(|p| token.is_newer_than(p)) {
                        Ok(token)
                    } else {
                        Err(error)
                    }
                }
            };
        }
        let lock_path = store_file::sibling(self.path(), ".refresh");
        // A lock file missing beside a token file was deleted, perhaps while a holder
        // had it: its claim is lost, so it is waited out as one made now.
        let mut lost = !lock_path.exists();
        let mut lock = store_file::open_lock_file(&lock_path)?;
        let deadline = Instant::now() + self.wait_timeout;
        let mut delay = self.poll.0;
        loop {
            let state = self.read().await?;
            if let Some(answer) = self.answer_from(&state, previous) {
                return answer;
            }
            match lock.try_lock() {
                // The file locked must be the one at the path: a lock file deleted
                // (or replaced) after it was opened is nobody's lock.
                Ok(()) if !store_file::is_at(&lock, &lock_path) => {
                    tracing::warn!(path = %lock_path.display(), "the refresh lock file was deleted or replaced; locking the new one");
                    lost = lost || !lock_path.exists();
                    // (Then the deadline and the pause: a file replaced again and
                    // again never spins this loop.)
                    lock = store_file::open_lock_file(&lock_path)?;
                }
                Ok(()) => return self.refresh_locked(lock, previous, lost).await,
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => {
                    return Err(store_file::lock_error(&lock_path, &e))
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Store(format!(
                    "waited {:?} for another process to refresh the token ({} is locked)",
                    self.wait_timeout,
                    lock_path.display()
                )));
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(self.poll.1);
        }
    }

    /// Refreshes holding the refresh lock `lock` (released when it is dropped, unless
    /// the answer could not be written).
    async fn refresh_locked(
        &self,
        lock: fs::File,
        previous: Option<&Token>,
        lost_claim: bool,
    ) -> Result<Token, Error> {
        // Read again: the token may have been written between our read and the lock.
        let state = self.read().await?;
        if let Some(answer) = self.answer_from(&state, previous) {
            return answer;
        }
        // The newest refresh token: the file's, unless ours is newer (the file was
        // deleted or lost: ours is the newest).
        let owned = match (&state.token, previous) {
            (Some(stored), Some(ours)) => !ours.is_newer_than(stored),
            (Some(_), None) => true,
            (None, _) => false,
        };
        let mut base = if owned {
            state.token.clone()
        } else {
            previous.cloned()
        };
        let mut grant = self.source.presents(base.as_ref()).map(|p| p.to_hex());
        let record = read_claim(&lock).unwrap_or_default();
        // The file's refresh token is dead (refused or spent, by the records): the
        // session is over. A source that logs in when it has no refresh token (an
        // interactive login, a chain ending in one) logs in anew, without it.
        if owned
            && grant.as_ref().is_some_and(|name| {
                record.refused.contains(name)
                    || record.spent(name, base.as_ref())
                    || self
                        .dead
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .contains(name)
            })
        {
            let stripped = base.clone().map(Token::without_refresh_token);
            if self.source.presents(stripped.as_ref()).is_none() {
                tracing::info!("the file's refresh token is dead; logging in anew");
                base = stripped;
                grant = None;
            }
        }
        if let Some(name) = &grant {
            let dead_here = self
                .dead
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(name);
            if dead_here || record.refused.contains(name) {
                // Refused before (in this process or another): never presented again.
                return Err(self.refusal(owned, refused_before()));
            }
            if record.spent(name, base.as_ref()) {
                // Rotated by an earlier refresh whose answer is not in the file:
                // presenting it again would have the provider revoke the whole
                // family. The file's own token: its holder let the lock go without
                // writing the answer (it died), so the session's newest token is
                // lost; an older token of this process's (the file deleted): the
                // newest may still be written back by the process that holds it.
                return Err(if owned {
                    spent_and_lost()
                } else {
                    Error::Superseded(format!(
                        "this refresh token was spent by an earlier refresh and {} holds no newer token yet",
                        self.path().display()
                    ))
                });
            }
        }
        // (A file of this version, generation 1 or more, was written with its
        // refresh lock file beside it; an older version's file never had one.)
        if grant.is_some() && lost_claim && state.token.is_some() && state.generation > 0 {
            // The lock file was deleted beside a live token file: a holder may be
            // presenting this refresh token right now. Wait as for a dead holder's
            // claim made now.
            tracing::warn!(
                wait_ms = self.claim_wait.as_millis() as u64,
                "the refresh lock file was missing; waiting out the claim it may have held"
            );
            if let Some(answer) = self.watch(base.as_ref(), self.claim_wait).await {
                return answer;
            }
        }
        if let Some(name) = &grant {
            let claim = &record;
            // A claim of this process's own (a lost connection) has no answer coming.
            if claim.presents.as_deref() == Some(name) && claim.owner != process_owner() {
                // Its holder presented it and died (or lost the connection): its answer
                // may still be written. Wait out the claim, watching the file.
                let until = claim
                    .at_ms
                    .saturating_add(u64::try_from(self.claim_wait.as_millis()).unwrap_or(u64::MAX));
                // Never longer than the claim's wait, whatever the clock did.
                let left =
                    Duration::from_millis(until.saturating_sub(unix_ms())).min(self.claim_wait);
                tracing::info!(
                    wait_ms = left.as_millis() as u64,
                    "a process presented this refresh token and did not write the answer; waiting out its claim"
                );
                if let Some(answer) = self.watch(base.as_ref(), left).await {
                    end_claim(&lock, None);
                    return answer;
                }
            }
        }
        let claim = Claim {
            presents: grant.clone(),
            ..record.ended()
        };
        write_claim(&lock, &claim).map_err(|e| {
            Error::TokenFile(format!(
                "cannot write the refresh claim in {}: {e}",
                store_file::sibling(self.path(), ".refresh").display()
            ))
        })?;
        match self.source.fetch(base.as_ref()).await {
            Ok(token) => {
                // Rotated: the refresh token presented is spent.
                let after = self.source.presents(Some(&token)).map(|p| p.to_hex());
                let lineage = base.as_ref().map_or(0, |b| b.lineage().as_micros());
                let spent = grant
                    .clone()
                    .filter(|g| after.as_ref() != Some(g))
                    .map(|g| (g, lineage));
                if let Some((name, lineage)) = &spent {
                    // Recorded before anything else: if this process dies before the
                    // answer is written, the next holder knows the refresh token is
                    // spent, not merely presented, and does not present it again.
                    let mut record = claim;
                    record.record_spent(name, *lineage);
                    if let Err(error) = write_claim(&lock, &record) {
                        tracing::warn!(%error, "could not record the spent refresh token in the claim");
                    }
                }
                let held = Held {
                    lock,
                    generation: state.generation,
                    token: token.clone(),
                    spent,
                };
                match write_out(&self.store, &self.held, held).await {
                    Ok(result) => result,
                    Err(_) => {
                        self.retry_in_background();
                        Ok(token)
                    }
                }
            }
            Err(error @ Error::InvalidGrant(_)) => {
                let Some(name) = grant else {
                    // Nothing was presented (a login: a wrong password, a refused
                    // code): its refusal is final, and concerns no refresh token.
                    end_claim(&lock, None);
                    return Err(error);
                };
                remember(
                    &mut self.dead.lock().unwrap_or_else(PoisonError::into_inner),
                    &name,
                );
                let mut refused = read_claim(&lock).unwrap_or(claim).ended();
                remember(&mut refused.refused, &name);
                let _ = write_claim(&lock, &refused);
                // Dead is declared by the owner: another process may have spent the
                // same refresh token first and written its token.
                if let Ok(now) = self.read().await {
                    if let Some(answer) = self.answer_from(&now, base.as_ref()) {
                        if answer.is_ok() {
                            tracing::info!("the refresh token was spent by another process; adopted its newer token");
                        }
                        return answer;
                    }
                }
                Err(self.refusal(owned, error))
            }
            Err(error) => {
                // An answer leaves the refresh token as it was; a lost connection may
                // not have, so the claim stays for the next holder to heed.
                if !matches!(
                    error,
                    Error::Transport(..) | Error::Timeout(..) | Error::Aborted(_)
                ) {
                    end_claim(&lock, None);
                }
                Err(error)
            }
        }
    }

    /// Polls the file for up to `limit` for a token newer than `base` (or a logout).
    async fn watch(&self, base: Option<&Token>, limit: Duration) -> Option<Result<Token, Error>> {
        let deadline = Instant::now() + limit;
        let mut delay = self.poll.0;
        loop {
            if let Ok(state) = self.read().await {
                if let Some(answer) = self.answer_from(&state, base) {
                    return Some(answer);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(self.poll.1);
        }
    }

    /// `invalid_grant` for the file's refresh token is the session's end; for this
    /// process's own token, older than nothing in the file, it is retried.
    fn refusal(&self, owned: bool, error: Error) -> Error {
        if owned {
            error
        } else {
            Error::Superseded(format!(
                "this process's refresh token was refused and {} holds no newer token yet",
                self.path().display()
            ))
        }
    }

    /// Writes the held token every second until it is written (or this source is
    /// gone), so that the other processes are not kept waiting until the next fetch.
    fn retry_in_background(&self) {
        retry_in_background(self.store.clone(), Arc::downgrade(&self.held));
    }
}

/// Writes the token held in `held` every second until it is written (or the source
/// is gone): the refresh lock it holds is let go then, with no fetch needed.
fn retry_in_background(store: FileStore, held: Weak<Mutex<Option<Held>>>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        loop {
            tokio::time::sleep(UNSAVED_RETRY).await;
            let Some(slot) = held.upgrade() else { return };
            let taken = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
            let Some(taken) = taken else { return };
            if write_out(&store, &slot, taken).await.is_ok() {
                tracing::info!(path = %store.path().display(), "wrote the token whose write had failed");
                return;
            }
        }
    });
}

/// Writes a refreshed token fenced by the generation it was refreshed from, then ends
/// the claim and releases the refresh lock. `Err`: the write failed, and the token
/// (with the lock and the claim) is kept in `slot`. `Ok` holds the answer: ours, a
/// newer token written meanwhile, or the logout that came meanwhile.
async fn write_out(
    store: &FileStore,
    slot: &Arc<Mutex<Option<Held>>>,
    held: Held,
) -> Result<Result<Token, Error>, Error> {
    let token = held.token.clone();
    let mut expected = held.generation;
    // Dropped (this future cancelled), the token goes back to `slot` with the refresh
    // lock and the claim, and is written in the background: never lost while the
    // lock is let go, nor the lock kept by a source that fetches nothing more.
    let mut keep = Keep {
        store,
        slot,
        held: Some(held),
    };
    let mut answer = Ok(token.clone());
    for _ in 0..3 {
        let ours = token.clone();
        let written = store_file::blocking(store.inner(), move |inner| {
            inner.write_fenced(expected, &ours)
        })
        .await;
        match written {
            Ok(Fenced::Written) => break,
            Ok(Fenced::Changed(now)) => {
                if now.token.is_none() && now.tombstone.is_some() {
                    // The logout won: the answer is nobody's.
                    tracing::info!("logged out in another process during the refresh; its answer is not written");
                    answer = Err(logged_out_elsewhere(store.path()));
                    break;
                }
                if let Some(theirs) = now.token.filter(|t| t.is_newer_than(&token)) {
                    answer = Ok(theirs);
                    break;
                }
                expected = now.generation;
                tracing::warn!("the token file changed while we wrote ours");
            }
            Err(error) => {
                tracing::error!(%error, "could not write the refreshed token; serving it, holding the refresh lock until it is written");
                // Back in the slot; the caller retries it in the background (`keep`
                // does so only when this future is dropped).
                if let Some(held) = keep.held.take() {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
                }
                return Err(error);
            }
        }
    }
    if let Some(held) = keep.held.take() {
        end_claim(
            &held.lock,
            held.spent
                .as_ref()
                .map(|(name, lineage)| (name.as_str(), *lineage)),
        );
    }
    Ok(answer)
}

/// The claim in the lock file (at most [`CLAIM_MAX`] bytes read: junk of any size
/// reads as no claim).
/// A refreshed token on its way to the file: put back in its slot if dropped still
/// holding it.
struct Keep<'a> {
    store: &'a FileStore,
    slot: &'a Arc<Mutex<Option<Held>>>,
    held: Option<Held>,
}

impl Drop for Keep<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
            // Written in the background too: a source that fetches nothing more
            // (its fetch cancelled, the process idle) must not keep the refresh lock.
            retry_in_background(self.store.clone(), Arc::downgrade(self.slot));
        }
    }
}

fn read_claim(mut lock: &fs::File) -> Option<Claim> {
    let mut bytes = Vec::new();
    lock.seek(SeekFrom::Start(0)).ok()?;
    lock.take(CLAIM_MAX).read_to_end(&mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_claim(mut lock: &fs::File, claim: &Claim) -> std::io::Result<()> {
    let json = serde_json::to_vec(claim).map_err(std::io::Error::other)?;
    lock.set_len(0)?;
    lock.seek(SeekFrom::Start(0))?;
    lock.write_all(&json)?;
    lock.sync_all()
}

/// Ends the claim (no refresh in flight), keeping the records of refused and spent
/// refresh tokens, with `spent` added.
fn end_claim(lock: &fs::File, spent: Option<(&str, u64)>) {
    let mut claim = read_claim(lock).unwrap_or_default().ended();
    if let Some((name, lineage)) = spent {
        claim.record_spent(name, lineage);
    }
    if let Err(error) = write_claim(lock, &claim) {
        tracing::warn!(%error, "could not end the refresh claim");
    }
}

/// What changes when the file is replaced: its modification time, length and (on
/// Unix) inode.
fn stamp(meta: &fs::Metadata) -> (Option<std::time::SystemTime>, u64, u64) {
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(meta);
    #[cfg(not(unix))]
    let ino = 0;
    (meta.modified().ok(), meta.len(), ino)
}

/// The name of this process in claims.
fn process_owner() -> &'static str {
    static OWNER: OnceLock<String> = OnceLock::new();
    OWNER.get_or_init(|| format!("{}-{:016x}", std::process::id(), fastrand::u64(..)))
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a process whose token is older than a logout elsewhere gets.
fn logged_out_elsewhere(path: &Path) -> Error {
    Error::NoToken(format!(
        "logged out (in another process sharing {}); log in again",
        path.display()
    ))
}

/// `invalid_grant` recorded in the claim for this refresh token.
fn refused_before() -> Error {
    let mut answer = crate::EndpointError::status(http::StatusCode::BAD_REQUEST);
    answer.code = Some("invalid_grant".into());
    answer.description =
        Some("this refresh token was refused before; it is not presented again".into());
    Error::InvalidGrant(Box::new(answer))
}

/// The file's refresh token was spent by a refresh whose holder died before writing
/// the answer: the session's newest token is lost with it.
fn spent_and_lost() -> Error {
    let mut answer = crate::EndpointError::status(http::StatusCode::BAD_REQUEST);
    answer.code = Some("invalid_grant".into());
    answer.description = Some(
        "this refresh token was spent by a process that died before writing the answer; log in again"
            .into(),
    );
    Error::InvalidGrant(Box::new(answer))
}

/// The network file system `path` lies on, if it is one (Linux: by the mount table).
fn network_file_system(path: &Path) -> Option<String> {
    #[cfg(target_os = "linux")]
    {
        // The nearest directory that exists (the file's may be made later).
        let dir = path
            .ancestors()
            .skip(1)
            .map(|a| {
                if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                }
            })
            .find_map(|a| a.canonicalize().ok())?;
        let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
        mount_type_of(&mounts, &dir)
            .filter(|kind| is_network_file_system(kind))
            .map(str::to_owned)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

/// The type of the file system mounted at the longest mount point above `dir`, in a
/// `/proc/self/mounts` text.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn mount_type_of<'a>(mounts: &'a str, dir: &Path) -> Option<&'a str> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let point = fields.next()?.replace("\\040", " ");
            let kind = fields.next()?;
            dir.starts_with(PathBuf::from(&point))
                .then_some((point.len(), kind))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

/// Whether a file system type (as the mount table names it) is a network or
/// user-space one, where locks may not hold.
fn is_network_file_system(kind: &str) -> bool {
    matches!(
        kind,
        "nfs"
            | "nfs4"
            | "cifs"
            | "smb3"
            | "smbfs"
            | "9p"
            | "ceph"
            | "gpfs"
            | "lustre"
            | "afs"
            | "ncpfs"
            | "coda"
    ) || kind == "fuse"
        || kind.starts_with("fuse.")
}

impl<S: TokenSource> TokenSource for SharedFileSource<S> {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.fetch_shared(previous).boxed()
    }

    /// Every process sharing the file shares its token: after `invalid_grant` a later
    /// fetch may still find a newer token another process wrote.
    fn shares_tokens(&self) -> bool {
        true
    }

    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        self.source.presents(previous)
    }

    /// Resolves when the file becomes a logout's tombstone other than the one it
    /// holds now (polled every 100 ms).
    fn ended_elsewhere(&self) -> Option<BoxFuture<'static, ()>> {
        let inner = Arc::clone(self.store.inner());
        let path = self.path().to_owned();
        let seen = inner.read_state().ok().and_then(|s| s.tombstone);
        Some(
            async move {
                // The file is read again only when its metadata changed.
                let mut last = None;
                loop {
                    tokio::time::sleep(LOGOUT_POLL).await;
                    let now = fs::metadata(&path).ok().map(|m| stamp(&m));
                    if now.is_none() || now == last {
                        continue;
                    }
                    last = now;
                    if let Ok(state) = inner.read_state() {
                        if state.token.is_none()
                            && state.tombstone.is_some()
                            && state.tombstone != seen
                        {
                            return;
                        }
                    }
                }
            }
            .boxed(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_file_systems_are_named_by_the_mount_table() {
        let mounts = "/dev/sda1 / ext4 rw 0 0\n\
                      server:/home /home nfs4 rw 0 0\n\
                      //nas/share /mnt/my\\040share cifs rw 0 0\n\
                      sshfs#h: /mnt/ssh fuse.sshfs rw 0 0\n\
                      tmpfs /home/alice/tmp tmpfs rw 0 0\n";
        let kind = |p: &str| mount_type_of(mounts, Path::new(p));
        assert_eq!(kind("/home/alice/.config"), Some("nfs4"));
        assert_eq!(kind("/home/alice/tmp/x"), Some("tmpfs"));
        assert_eq!(kind("/mnt/my share/x"), Some("cifs"));
        assert_eq!(kind("/etc"), Some("ext4"));
        for network in ["nfs4", "cifs", "fuse.sshfs", "9p", "ceph", "nfs", "smb3"] {
            assert!(is_network_file_system(network), "{network}");
        }
        for local in ["ext4", "tmpfs", "xfs", "btrfs", "apfs", "overlay"] {
            assert!(!is_network_file_system(local), "{local}");
        }
    }

    #[test]
    fn a_lock_the_file_system_refuses_is_a_loud_token_file_error() {
        let path = Path::new("/x/t.json.refresh");
        for e in [
            std::io::Error::from(std::io::ErrorKind::Unsupported),
            #[cfg(target_os = "linux")]
            std::io::Error::from_raw_os_error(37),
        ] {
            let error = store_file::lock_error(path, &e);
            assert!(
                matches!(&error, Error::TokenFile(m) if m.contains("does not support locks")),
                "{error}"
            );
        }
    }

    #[test]
    fn a_local_directory_is_not_a_network_file_system() {
        let dir = std::env::temp_dir();
        assert_eq!(network_file_system(&dir.join("t.json")), None);
    }
}
