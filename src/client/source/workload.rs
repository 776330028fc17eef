//! [`WorkloadToken`]: workload identity, a token that another process writes to a
//! file and rotates (a Kubernetes projected service-account token, a CI job's OIDC
//! token), read again whenever the file changes.

use std::fmt;
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::future::{BoxFuture, FutureExt};
use secrecy::{ExposeSecret, SecretString};

use super::TokenSource;
use crate::{Error, Token};

/// The default largest token file read (a Kubernetes service-account token or a
/// CI OIDC token is one to two kilobytes).
pub const DEFAULT_MAX_WORKLOAD_TOKEN_LEN: u64 = 16 * 1024;

/// A token read again before use when it expires within this margin, whatever the
/// file's metadata says.
const EXPIRY_MARGIN: u64 = 30;

/// A file modified this close to when it was read may be written again within
/// the same timestamp tick (file times are coarse: a few milliseconds, up to
/// seconds on some file systems) without its metadata changing: such a read is
/// not trusted, and the file is read again at each use until it is older than this.
const RACY_WINDOW: Duration = Duration::from_secs(2);

/// A token that another process writes to a file and rotates: a Kubernetes
/// projected service-account token (`/var/run/secrets/tokens/…`, swapped atomically
/// through the volume's `..data` link), a CI job's OIDC token, a sidecar's
/// credential. It is the assertion of the JWT-bearer grant
/// ([`JwtBearer::workload`](super::JwtBearer::workload), feature `jwt`) or the
/// subject or actor token of token exchange ([`ExchangeToken::workload`](super::ExchangeToken::workload)),
/// and a [`TokenSource`] of its own (the file's token, as a bearer token; a cache
/// over it reads the file again at the token's `exp`, or after
/// [`WORKLOAD_RECHECK`] for a token without one).
///
/// - **Re-read when it changes.** Each use looks at the file's metadata (one
///   `stat`, following links: device, inode, length, modification and change
///   times) and reads the file again when any of them changed, when the last read
///   was too close to the file's last write to trust its timestamps (the file is
///   then read at each use for two seconds), or when the token (a JWT) expires
///   within 30 seconds.
/// - **What it reads**: the file's text, whitespace trimmed at both ends (a final
///   newline). An empty file, one over [`max_len`](Self::max_len) (16 KiB by
///   default), one that is not UTF-8, or one with whitespace or control characters
///   inside the token is refused with an error that names the file and never
///   quotes it.
/// - **A missing file is not the end**: the use that finds none fails with
///   [`Error::NoToken`] naming the file, and the next use reads it again (the file
///   may be in the middle of a rotation).
///
/// Write the file atomically (a new file renamed over it, or a link swapped, as the
/// kubelet and CI runners do): a file rewritten in place can be read half-written.
///
/// ```no_run
/// use tower_bearer::client::source::{token_type, ExchangeToken, WorkloadToken};
/// use tower_bearer::client::TokenEndpoint;
/// use tower_bearer::Refreshing;
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let sa = WorkloadToken::file("/var/run/secrets/tokens/sts-token");
/// let sts = TokenEndpoint::new("https://sts.example.com/token")?;
/// let exchange = sts
///     .token_exchange(ExchangeToken::workload(sa, token_type::JWT))
///     .audience("https://storage.example.com");
/// let authorizer = Refreshing::new(exchange);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct WorkloadToken {
    path: PathBuf,
    max_len: u64,
    /// The last read, shared by the clones.
    last: Arc<Mutex<Option<LastRead>>>,
}

/// What the file held when it was last read, and how it looked then.
struct LastRead {
    stamp: Stamp,
    token: Arc<SecretString>,
    /// The token's `exp` (a JWT's, read unverified: it only decides when to read
    /// again), in seconds since the epoch.
    exp: Option<u64>,
    /// The file was written too close to this read for its timestamps to tell a
    /// later write apart.
    racy: bool,
}

/// The metadata that changes when the file is replaced or rewritten.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
    /// The inode's change time (Unix `ctime`): set by the kernel on every write,
    /// and unlike the modification time never given back by a tool (`cp -p`,
    /// `touch -r`, `rsync -t` restore the mtime of a rewritten file).
    changed: Option<SystemTime>,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Self {
        #[cfg(unix)]
        let (dev, ino, changed) = {
            use std::os::unix::fs::MetadataExt;
            let changed = u64::try_from(metadata.ctime()).ok().and_then(|secs| {
                let nanos = u32::try_from(metadata.ctime_nsec()).unwrap_or(0);
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            });
            (metadata.dev(), metadata.ino(), changed)
        };
        #[cfg(not(unix))]
        let (dev, ino, changed) = (0, 0, None);
        Stamp {
            dev,
            ino,
            len: metadata.len(),
            modified: metadata.modified().ok(),
            changed,
        }
    }

    /// The file's last write as its times tell it: the later of its modification
    /// and change times.
    fn last_write(&self) -> Option<SystemTime> {
        match (self.modified, self.changed) {
            (Some(m), Some(c)) => Some(m.max(c)),
            (m, c) => m.or(c),
        }
    }
}

impl fmt::Debug for WorkloadToken {
    // The token is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadToken")
            .field("path", &self.path)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl WorkloadToken {
    /// The token in the file at `path` (read on first use, not now).
    pub fn file(path: impl Into<PathBuf>) -> Self {
        WorkloadToken {
            path: path.into(),
            max_len: DEFAULT_MAX_WORKLOAD_TOKEN_LEN,
            last: Arc::default(),
        }
    }

    /// The largest file read, in bytes (default
    /// [`DEFAULT_MAX_WORKLOAD_TOKEN_LEN`]); a larger one is refused.
    pub fn max_len(mut self, max_len: u64) -> Self {
        self.max_len = max_len;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn no_token(&self, why: impl fmt::Display) -> Error {
        Error::NoToken(format!(
            "the workload token file {} {why}",
            self.path.display()
        ))
    }

    /// The token the file holds now: the last one read while the file is unchanged,
    /// else the file read again.
    ///
    /// # Errors
    /// [`Error::NoToken`] when the file is missing, cannot be read, or holds no
    /// usable token (empty, too large, not UTF-8, whitespace inside); the message
    /// names the file and never quotes it.
    pub fn current(&self) -> Result<Arc<SecretString>, Error> {
        let metadata = fs::metadata(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                self.no_token("is missing; it is looked for again on the next use")
            }
            _ => self.no_token(format_args!("cannot be read: {e}")),
        })?;
        if !metadata.is_file() {
            return Err(self.no_token("is not a regular file"));
        }
        let stamp = Stamp::of(&metadata);
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(read) = &*last {
            let expiring = read
                .exp
                .is_some_and(|exp| exp <= unix_now().saturating_add(EXPIRY_MARGIN));
            if read.stamp == stamp && !read.racy && !expiring {
                return Ok(Arc::clone(&read.token));
            }
        }
        let read_at = SystemTime::now();
        // The stamp of the file opened, not of the path looked at: they differ when
        // the path was swapped in between.
        let (token, stamp) = self.read()?;
        let changed = last
            .as_ref()
            .is_none_or(|l| l.token.expose_secret() != token.expose_secret());
        if changed {
            tracing::debug!(path = %self.path.display(), "workload token read");
        }
        let racy = stamp
            .last_write()
            .and_then(|m| m.checked_add(RACY_WINDOW))
            .is_none_or(|settled| settled > read_at);
        let token = Arc::new(token);
        *last = Some(LastRead {
            stamp,
            exp: jwt_exp(token.expose_secret()),
            token: Arc::clone(&token),
            racy,
        });
        Ok(token)
    }

    /// Forgets the last read: the next use reads the file (after the token was
    /// refused, it may have been rotated within one timestamp tick).
    pub(crate) fn forget(&self) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Reads the file: the token, and the stamp of the file that was opened.
    fn read(&self) -> Result<(SecretString, Stamp), Error> {
        let too_large = || self.no_token(format_args!("is larger than {} bytes", self.max_len));
        let mut options = fs::OpenOptions::new();
        options.read(true);
        // Without blocking: the path checked as a regular file may have been swapped
        // for a FIFO since (opening one for reading waits for a writer, forever). What
        // was opened is checked again below, from the open file itself.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                self.no_token("is missing; it is looked for again on the next use")
            }
            _ => self.no_token(format_args!("cannot be read: {e}")),
        })?;
        let metadata = file
            .metadata()
            .map_err(|e| self.no_token(format_args!("cannot be read: {e}")))?;
        if !metadata.is_file() {
            return Err(self.no_token("is not a regular file"));
        }
        if metadata.len() > self.max_len {
            return Err(too_large());
        }
        // The file may have grown since its metadata was read: never more than the cap.
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        file.take(self.max_len.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| self.no_token(format_args!("cannot be read: {e}")))?;
        if bytes.len() as u64 > self.max_len {
            return Err(too_large());
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| self.no_token("is not UTF-8 text"))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(self.no_token("is empty"));
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.no_token(
                "holds whitespace or control characters inside its token (one token expected)",
            ));
        }
        Ok((SecretString::from(token.to_owned()), Stamp::of(&metadata)))
    }
}

/// The `exp` of a JWT's payload, read without checking anything: `None` for a token
/// that is not a JWT, or has no `exp`.
fn jwt_exp(token: &str) -> Option<u64> {
    let mut parts = token.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return None,
    };
    #[derive(serde::Deserialize)]
    struct Exp {
        exp: Option<serde_json::Value>,
    }
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let exp: Exp = serde_json::from_slice(&bytes).ok()?;
    let exp = exp.exp?;
    exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64))
}

/// How long a cache over a [`WorkloadToken`] keeps a token whose file tells no
/// usable `exp` (an opaque token, or a date past any real one) before it reads the
/// file again: the file is the only truth, and a rotation must reach the cache.
pub const WORKLOAD_RECHECK: Duration = Duration::from_secs(5 * 60);

/// The longest an unverified `exp` read from the file is believed.
const MAX_BELIEVED_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

impl TokenSource for WorkloadToken {
    /// The file's token as a bearer token, expiring at its `exp` when it is a JWT
    /// (believed for at most a day: it is read unverified), else after
    /// [`WORKLOAD_RECHECK`] (five minutes), so that a cache over it
    /// ([`Refreshing`](crate::Refreshing)) reads the file again and serves a
    /// rotated token.
    fn fetch<'a>(&'a self, _previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        async move {
            let token = self.current()?;
            let lifetime = match jwt_exp(token.expose_secret()) {
                Some(exp) => {
                    Duration::from_secs(exp.saturating_sub(unix_now())).min(MAX_BELIEVED_LIFETIME)
                }
                None => WORKLOAD_RECHECK,
            };
            Ok(Token::bearer(token.expose_secret())?.with_expires_in(lifetime))
        }
        .boxed()
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// The path checked as a regular file, then swapped for a FIFO before it is
    /// opened (the race between `current`'s look and its read): the read must not
    /// wait for a writer, and must refuse what it opened.
    #[test]
    fn a_fifo_swapped_in_after_the_check_is_refused_at_once() {
        let dir = std::env::temp_dir().join(format!(
            "tower-bearer-workload-fifo-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        let source = WorkloadToken::file(&path);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(source.read().map(|_| ()).map_err(|e| e.to_string()));
        });
        let read = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening the FIFO waited for a writer");
        let err = read.unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
