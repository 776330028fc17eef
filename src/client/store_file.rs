//! [`FileStore`]: a token file per profile (user and issuer), written atomically with
//! mode 0600.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use serde::{Deserialize, Serialize};

use super::at_rest::{AtRestKey, Keyring, Sealed};
use super::store::{StoredToken, TokenStore};
use crate::{Error, Token};

/// The version of the file format of a plain token file (and of a tombstone).
const FORMAT: u32 = 1;
/// The version of a file whose token is encrypted ([`FileStore::encrypt_with`]): a
/// version that knew no encryption sets such a file aside rather than taking it for
/// an empty one.
const FORMAT_SEALED: u32 = 2;

/// Keeps one profile's token in a JSON file, for a command-line tool that logs a
/// person in once and reuses the token on every later run.
///
/// - One file per profile: by default `<config dir>/tower-bearer/<user>@<issuer>.json`,
///   where the config dir is `$XDG_CONFIG_HOME`, else `$HOME/.config` (on Windows
///   `%APPDATA%`). [`FileStore::at`] puts it anywhere.
/// - Written atomically: a temporary file in the same directory is written, flushed to
///   disk and renamed over the old one, and the directory is flushed. A crash leaves the
///   old file or the new one, never half of either; a stray temporary file is ignored.
/// - Created with mode 0600 on Unix (the directory 0700), never readable by others, not
///   even for an instant.
/// - Newer only: a save never replaces the file's token with an older one (by
///   [`Lineage`](crate::Lineage), kept in the file); files written before lineages
///   existed read as older than any new token.
/// - The file records its user name and issuer: a file of another user or issuer is
///   refused with [`Error::TokenFile`], never silently used or overwritten.
/// - A file that cannot be parsed gives [`Error::TokenFile`] once and is kept, renamed
///   `<name>.corrupt`; the next load finds no token and the person logs in again.
/// - Saved under a lock: every save and logout reads, compares and writes the file
///   holding an OS lock (`flock` / `LockFileEx`) on `<name>.lock`, a file made beside
///   it and never removed, so two processes saving at once never leave the older
///   token behind.
/// - A logout ([`clear`](TokenStore::clear)) leaves a tombstone in the file rather
///   than deleting it, so that the other processes sharing it see a logout, not a lost
///   file: loading gives no token, and a save of a token older than the logout is kept
///   out (a new login's token replaces it). A shared file that was deleted (its
///   `<name>.refresh` is still there) gets the tombstone too, so that a process still
///   holding its token does not write it back. It refuses, with [`Error::TokenFile`],
///   a file of another user or issuer, which it leaves as it is.
/// - The lock files (`<name>.lock`, `<name>.refresh`) are never written through a
///   symbolic link: one found there is refused with [`Error::TokenFile`].
/// - [`FileStore::shared`] makes the processes sharing the file refresh once between
///   them ([`SharedFileSource`](super::SharedFileSource)).
/// - Encrypted at rest with [`FileStore::encrypt_with`]: the token is sealed with
///   the application's [`AtRestKey`] (AES-256-GCM), and only what the newer-only
///   compare needs (user, issuer, lineage, generation, a tombstone, the key's id)
///   stays readable.
///
/// ```no_run
/// use tower_bearer::client::{FileStore, Refreshing, TokenEndpoint};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?;
/// let store = FileStore::new("alice", "https://idp.example.com")?;
/// # let source = endpoint.refresh_token("x");
/// let authorizer = Refreshing::builder(source).store(store).build();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

#[derive(Clone)]
pub(crate) struct Inner {
    path: PathBuf,
    username: String,
    issuer: String,
    keys: Keyring,
}

/// The file's content.
#[derive(Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    username: String,
    issuer: String,
    /// Absent in a logout's tombstone, and when the token is sealed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<StoredToken>,
    /// The token encrypted ([`FORMAT_SEALED`] files only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
    /// Bumped by every write: a refresh holder writes only over the generation it read.
    #[serde(default)]
    generation: u64,
    /// Left by a logout (with no token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logged_out: Option<Tombstone>,
}

/// What a logout leaves in the file: when, and the lineage no older token may pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Tombstone {
    pub(crate) at_ms: u64,
    pub(crate) lineage: u64,
}

/// The file as read: its token, generation and tombstone (all empty when there is
/// no file).
#[derive(Default)]
pub(crate) struct FileState {
    pub(crate) token: Option<Token>,
    pub(crate) generation: u64,
    pub(crate) tombstone: Option<Tombstone>,
    /// The id of the key the token was sealed with (`None`: plain, or no token).
    pub(crate) sealed_with: Option<String>,
}

/// What a fenced write found.
pub(crate) enum Fenced {
    Written,
    /// The file changed since the generation read: this is what is there now.
    Changed(Box<FileState>),
}

/// How long a save waits for another process's read-compare-write of the file.
const WRITE_LOCK_WAIT: Duration = Duration::from_secs(10);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `path` with `suffix` appended to its file name.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Opens (creating it 0600) a lock file; it is never renamed or deleted.
pub(crate) fn open_lock_file(path: &Path) -> Result<fs::File, Error> {
    create_private_dir(dir_of(path)).map_err(|e| {
        Error::TokenFile(format!(
            "cannot create the directory of {}: {e}",
            path.display()
        ))
    })?;
    // A link planted in the lock file's place (another user can, in a shared
    // directory) would have the claim written into the file it names.
    let planted = || {
        Error::TokenFile(format!(
            "the lock file {} is a symbolic link or not a plain file; refusing to write through it",
            path.display()
        ))
    };
    if fs::symlink_metadata(path).is_ok_and(|m| !m.file_type().is_file()) {
        return Err(planted());
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(|e| {
        Error::TokenFile(format!("cannot open the lock file {}: {e}", path.display()))
    })?;
    // Replaced by a link between the look and the open: the file opened is not the
    // one at the path.
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let same = match (file.metadata(), fs::symlink_metadata(path)) {
            (Ok(a), Ok(b)) => b.file_type().is_file() && a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        };
        if !same {
            return Err(planted());
        }
    }
    Ok(file)
}

/// Whether `file` is the file at `path` now (not one deleted or replaced since it
/// was opened): a lock taken on a file no longer at the path excludes nobody.
#[cfg(unix)]
pub(crate) fn is_at(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Whether `file` is the file at `path` now. On Windows a file open here cannot be
/// deleted or replaced (std opens without `FILE_SHARE_DELETE`... and even with it
/// the name stays until the last handle closes), so it is.
#[cfg(not(unix))]
pub(crate) fn is_at(_file: &fs::File, path: &Path) -> bool {
    path.exists()
}

/// The error of a lock the file system refuses: loud, never an unlocked path.
pub(crate) fn lock_error(path: &Path, e: &io::Error) -> Error {
    let unsupported = e.kind() == io::ErrorKind::Unsupported || {
        #[cfg(unix)]
        {
            e.raw_os_error() == Some(libc_enolck())
        }
        #[cfg(not(unix))]
        {
            false
        }
    };
    let why = if unsupported {
        "the file system does not support locks (a network file system?); \
         refusing to share the token file without them"
    } else {
        "refusing to share the token file without the lock"
    };
    Error::TokenFile(format!("cannot lock {}: {e}; {why}", path.display()))
}

/// ENOLCK.
#[cfg(unix)]
fn libc_enolck() -> i32 {
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    {
        77
    }
    #[cfg(not(any(target_os = "macos", target_os = "ios", target_os = "freebsd")))]
    {
        37
    }
}

impl FileStore {
    /// The token file of `username` at `issuer` in the default directory.
    ///
    /// # Errors
    /// [`Error::TokenFile`] when neither `$XDG_CONFIG_HOME` nor `$HOME` (`%APPDATA%` on
    /// Windows) is set.
    pub fn new(username: impl Into<String>, issuer: impl Into<String>) -> Result<Self, Error> {
        let username = username.into();
        let issuer = issuer.into();
        let path = Self::default_dir()?.join(Self::file_name(&username, &issuer));
        Ok(Self::at(path, username, issuer))
    }

    /// The token file of `username` at `issuer` at this path.
    pub fn at(
        path: impl Into<PathBuf>,
        username: impl Into<String>,
        issuer: impl Into<String>,
    ) -> Self {
        FileStore {
            inner: Arc::new(Inner {
                path: path.into(),
                username: username.into(),
                issuer: issuer.into(),
                keys: Keyring::default(),
            }),
        }
    }

    /// Encrypts the token written to the file with `key` (AES-256-GCM; the access
    /// and refresh tokens, expiry and scope, all sealed together), and opens a file
    /// sealed with it.
    ///
    /// - Readable without the key: the user, issuer, lineage, generation, a
    ///   logout's tombstone and the key's id, so the newer-only compare under the
    ///   lock is unchanged. The ciphertext is bound to the format version, the user,
    ///   the issuer, the file's name (not its directory: the file may move) and the
    ///   lineage: copied into another profile's file (another user, issuer or file
    ///   name), or given another lineage, it does not open; a file renamed does not
    ///   open either.
    /// - A new random nonce for every write.
    /// - Read without the key (a store without `encrypt_with`/`decrypt_with`), or
    ///   under a key this store was not given, or with the wrong key under that id:
    ///   [`Error::TokenFile`] saying so, on load, save and logout alike; the file is
    ///   left as it is (not set aside as corrupt: the data are fine, the key is
    ///   not), and never written over.
    /// - Rotation: call `encrypt_with` with the new key and
    ///   [`decrypt_with`](Self::decrypt_with) with the old one. A file sealed with
    ///   the old key is read, and the next save (a newer token, or the very token
    ///   the file holds) seals it with the new one; then the old key is no longer
    ///   needed.
    /// - Migration: a plain file (written without a key) is read as before, and the
    ///   next save seals it (a newer token, or the very token the file holds). A
    ///   logout's tombstone holds no token and is written plain.
    /// - What it does not stop: someone who can write the file but has not the key
    ///   can still put back an older file of this profile (a rollback to an older
    ///   token), a logout's tombstone, or a plain file holding a token of their
    ///   choosing (adopted as a migration is). The key keeps the token secret and
    ///   refuses a sealed token altered or moved; the private directory (0700) is
    ///   what keeps others from writing the file.
    ///
    /// Called twice, the later key seals and the earlier one still opens.
    #[must_use]
    pub fn encrypt_with(self, key: AtRestKey) -> Self {
        self.with_keys(|keys| keys.with_current(key))
    }

    /// Opens files sealed with `key` (an earlier key, after a rotation) without
    /// sealing with it; may be called for several keys. A store with `decrypt_with`
    /// and no [`encrypt_with`](Self::encrypt_with) writes its next token plain: the
    /// way back from encryption.
    #[must_use]
    pub fn decrypt_with(self, key: AtRestKey) -> Self {
        self.with_keys(|keys| keys.with_old(key))
    }

    /// Refuses a token stored in the clear instead of adopting it: for a profile
    /// past its migration to [`encrypt_with`](Self::encrypt_with), so that someone
    /// who can write the file but has not the key cannot plant a token of their
    /// choosing. Such a file is an [`Error::TokenFile`] on load, save and logout
    /// alike, and is left as it is (delete it to log in again). A logout's
    /// tombstone holds no token and is still read.
    #[must_use]
    pub fn require_sealed(self) -> Self {
        self.with_keys(Keyring::sealed_only)
    }

    fn with_keys(self, f: impl FnOnce(Keyring) -> Keyring) -> Self {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        inner.keys = f(std::mem::take(&mut inner.keys));
        FileStore {
            inner: Arc::new(inner),
        }
    }

    /// The token file of a named profile, `<default dir>/<name>.json`, for
    /// `username` at `issuer` (characters other than letters, digits, `-`, `_` and `.`
    /// in `name` become `_`).
    ///
    /// # Errors
    /// As [`FileStore::new`].
    pub fn profile(
        name: &str,
        username: impl Into<String>,
        issuer: impl Into<String>,
    ) -> Result<Self, Error> {
        let file = format!("{}.json", clean(name).trim_start_matches('.'));
        Ok(Self::at(Self::default_dir()?.join(file), username, issuer))
    }

    /// The directory of the token files: `$XDG_CONFIG_HOME/tower-bearer`, else
    /// `$HOME/.config/tower-bearer` (`%APPDATA%\tower-bearer` on Windows).
    ///
    /// # Errors
    /// [`Error::TokenFile`] when none of these variables is set.
    pub fn default_dir() -> Result<PathBuf, Error> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let base = if cfg!(windows) {
            var("APPDATA").map(PathBuf::from)
        } else {
            var("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".config")))
        };
        base.map(|b| b.join("tower-bearer")).ok_or_else(|| {
            Error::TokenFile(
                "no config directory: set XDG_CONFIG_HOME or HOME, or give the file's path".into(),
            )
        })
    }

    /// The file name of a profile: `<user>@<issuer host and path>.json`, with every
    /// character other than letters, digits, `-`, `_` and `.` replaced by `_`.
    pub fn file_name(username: &str, issuer: &str) -> String {
        let issuer = issuer
            .split_once("://")
            .map_or(issuer, |(_, rest)| rest)
            .trim_end_matches('/');
        // A leading dot would hide the file; "." and ".." are not names.
        let user = clean(username).trim_start_matches('.').to_owned();
        format!("{user}@{}.json", clean(issuer))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The file's inner state, for the shared single flight.
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// The user name the file belongs to.
    pub fn username(&self) -> &str {
        &self.inner.username
    }

    /// A [`TokenSource`](super::TokenSource) that every process sharing this file
    /// (the same path) refreshes once between them, as
    /// `RedisStore::fleet` does for a fleet through Redis.
    pub fn shared<S: super::TokenSource>(&self, source: S) -> super::SharedFileSource<S> {
        super::SharedFileSource::new(self.clone(), source)
    }
}

/// A file name part: letters, digits, `-`, `_` and `.`; anything else becomes `_`.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Inner {
    pub(crate) fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> Result<Option<Token>, Error> {
        Ok(self.read_state()?.token)
    }

    /// The file's token, generation and tombstone; a file of another user or issuer
    /// is refused, a corrupt one kept aside.
    pub(crate) fn read_state(&self) -> Result<FileState, Error> {
        self.parse()?
    }

    /// The file: `Ok(Err)` when it is corrupt (moved aside).
    fn parse(&self) -> Result<Result<FileState, Error>, Error> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(FileState::default())),
            Err(e) => {
                return Err(Error::TokenFile(format!(
                    "cannot read {}: {e}",
                    self.describe()
                )))
            }
        };
        let parsed: Result<TokenFile, String> =
            serde_json::from_slice(&bytes).map_err(|e| crate::error::json_error(&e));
        let file = match parsed {
            Ok(f) if f.version == FORMAT && f.sealed.is_none() => f,
            Ok(f) if f.version == FORMAT_SEALED && f.token.is_none() && f.sealed.is_some() => f,
            Ok(f) if f.version == FORMAT || f.version == FORMAT_SEALED => {
                return Ok(Err(self.corrupt(&format!(
                    "a version {} file with {} token",
                    f.version,
                    if f.version == FORMAT {
                        "an encrypted"
                    } else {
                        "a plain"
                    }
                ))))
            }
            Ok(f) => {
                return Ok(Err(
                    self.corrupt(&format!("unknown format version {}", f.version))
                ))
            }
            Err(e) => return Ok(Err(self.corrupt(&e))),
        };
        if file.username != self.username || file.issuer != self.issuer {
            return Err(self.not_ours(&file));
        }
        let opened;
        let stored = match (&file.token, &file.sealed) {
            (Some(_), _) if self.keys.refuse_plain(&self.describe()).is_some() => {
                let why = self.keys.refuse_plain(&self.describe()).unwrap_or_default();
                return Err(Error::TokenFile(why));
            }
            (Some(stored), _) => Some(stored),
            (None, Some(sealed)) => match self.open(sealed) {
                Ok(stored) => {
                    opened = stored;
                    Some(&opened)
                }
                Err(Ok(error)) => return Err(error),
                Err(Err(why)) => return Ok(Err(self.corrupt(&why))),
            },
            (None, None) => None,
        };
        let token = match stored {
            Some(stored) => match stored.to_token() {
                Ok(t) => Some(t),
                Err(_) => {
                    return Ok(Err(
                        self.corrupt("the stored access token is not a valid bearer token")
                    ))
                }
            },
            None => None,
        };
        Ok(Ok(FileState {
            sealed_with: file.sealed.filter(|_| token.is_some()).map(|s| s.kid),
            token,
            generation: file.generation,
            tombstone: file.logged_out,
        }))
    }

    /// What the associated data bind a sealed token to: this file format, user,
    /// issuer and file name (the lineage is bound beside it). The name tells apart
    /// two files of one user at one issuer (two named profiles, two clients); the
    /// directory is left out, so the file can move to another directory or machine.
    fn sealing_context(&self) -> String {
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        serde_json::to_string(&("file", FORMAT_SEALED, &self.username, &self.issuer, name))
            .unwrap_or_default()
    }

    /// The sealed token: `Err(Ok)` when the key is missing or wrong (the file is
    /// kept), `Err(Err(why))` when it is damaged whatever the key (set aside).
    fn open(&self, sealed: &Sealed) -> Result<StoredToken, Result<Error, String>> {
        let plain = self
            .keys
            .open(sealed, &self.sealing_context())
            .map_err(|unsealed| match unsealed.is_malformed() {
                true => Err(unsealed.describe("the file")),
                false => Ok(Error::TokenFile(unsealed.describe(&self.describe()))),
            })?;
        // Authentic, so written by a holder of the key: a token that does not parse
        // is damage all the same (never quoted).
        let mut stored: StoredToken = serde_json::from_slice(&plain)
            .map_err(|_| Err("the decrypted token is not a token".to_owned()))?;
        stored.lineage = sealed.lineage;
        Ok(stored)
    }

    fn not_ours(&self, file: &TokenFile) -> Error {
        Error::TokenFile(format!(
            "{} holds the token of user {:?} at {:?}, not of {:?} at {:?}; \
             refusing to use, overwrite or remove it (give another path or profile, or delete the file)",
            self.describe(),
            file.username,
            file.issuer,
            self.username,
            self.issuer
        ))
    }

    /// Moves a corrupt file aside (never deletes it) and says so.
    fn corrupt(&self, why: &str) -> Error {
        let mut aside = self.path.clone().into_os_string();
        aside.push(".corrupt");
        let mut aside = PathBuf::from(aside);
        if aside.exists() {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut name = aside.into_os_string();
            name.push(format!(".{secs}"));
            aside = PathBuf::from(name);
        }
        let kept = match fs::rename(&self.path, &aside) {
            Ok(()) => format!("kept as {}", aside.display()),
            Err(e) => format!("could not rename it: {e}"),
        };
        tracing::warn!(path = %self.describe(), %kept, "corrupt token file");
        Error::TokenFile(format!(
            "{} is not a valid token file ({why}); {kept}; log in again",
            self.describe()
        ))
    }

    /// Takes the write lock (`P.lock`): held across one read-compare-write of the
    /// file, so that two processes' compares and writes never interleave. Waits (this
    /// is a blocking thread) up to [`WRITE_LOCK_WAIT`].
    pub(crate) fn write_lock(&self) -> Result<fs::File, Error> {
        let path = sibling(&self.path, ".lock");
        let mut file = open_lock_file(&path)?;
        let deadline = std::time::Instant::now() + WRITE_LOCK_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            match file.try_lock() {
                // A lock file deleted or replaced since it was opened is nobody's
                // lock: the one at the path is.
                Ok(()) if !is_at(&file, &path) => {
                    // Then the deadline and the pause, as when it is held.
                    file = open_lock_file(&path)?;
                }
                Ok(()) => return Ok(file),
                Err(fs::TryLockError::WouldBlock) => {}
                Err(fs::TryLockError::Error(e)) => return Err(lock_error(&path, &e)),
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::TokenFile(format!(
                    "another process held the write lock {} for more than {WRITE_LOCK_WAIT:?}",
                    path.display()
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// The file under the write lock, as [`read_state`](Self::read_state) but
    /// without moving a corrupt file aside twice: `None` for a corrupt file (moved
    /// aside: it is replaced).
    fn read_locked(&self) -> Result<Option<FileState>, Error> {
        Ok(self.parse()?.ok())
    }

    fn save(&self, token: &Token) -> Result<(), Error> {
        let _lock = self.write_lock()?;
        // Never overwrite another user's file; a corrupt one was kept aside.
        let state = self.read_locked()?.unwrap_or_default();
        if let Some(tombstone) = state.tombstone {
            if token.lineage().as_micros() <= tombstone.lineage {
                tracing::debug!(path = %self.describe(), "kept a token older than the logout out of the file");
                return Ok(());
            }
        }
        // Newer only: another process may have saved a newer token. The same token
        // is written again only to seal it under the current key (a migration or a
        // rotation), or to write it plain when this store seals no more.
        if !super::store::replaces(token, state.token.as_ref()) {
            let same = state.token.as_ref().is_some_and(|t| {
                use secrecy::ExposeSecret as _;
                t.lineage() == token.lineage()
                    && t.access_token().expose_secret() == token.access_token().expose_secret()
            });
            if !same || state.sealed_with.as_deref() == self.keys.current_id() {
                tracing::debug!(path = %self.describe(), "kept the newer token already in the file");
                return Ok(());
            }
            tracing::debug!(path = %self.describe(), "sealing the token again under the current key");
        }
        self.write_file(Some(token), state.generation, None)
    }

    /// Writes `token` only if the file's generation is still `expected` (under the
    /// write lock); else says what is there now.
    pub(crate) fn write_fenced(&self, expected: u64, token: &Token) -> Result<Fenced, Error> {
        let _lock = self.write_lock()?;
        let state = self.read_locked()?.unwrap_or_default();
        if state.generation != expected {
            return Ok(Fenced::Changed(Box::new(state)));
        }
        self.write_file(Some(token), state.generation, None)?;
        Ok(Fenced::Written)
    }

    /// Writes the file: `token`, or a tombstone; the generation after `generation`.
    fn write_file(
        &self,
        token: Option<&Token>,
        generation: u64,
        tombstone: Option<Tombstone>,
    ) -> Result<(), Error> {
        let mut stored = token.map(StoredToken::from_token);
        let sealed = match &stored {
            Some(plain) if self.keys.current_id().is_some() => {
                let json = serde_json::to_vec(plain)
                    .map_err(|e| Error::TokenFile(format!("cannot encode the token: {e}")))?;
                let lineage = plain.lineage;
                self.keys
                    .seal(&self.sealing_context(), lineage, json)
                    .map_err(|e| Error::TokenFile(format!("cannot encrypt the token: {e}")))?
            }
            _ => None,
        };
        if sealed.is_some() {
            stored = None;
        }
        let file = TokenFile {
            version: if sealed.is_some() {
                FORMAT_SEALED
            } else {
                FORMAT
            },
            username: self.username.clone(),
            issuer: self.issuer.clone(),
            token: stored,
            sealed,
            generation: generation.wrapping_add(1),
            logged_out: tombstone,
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|e| Error::TokenFile(format!("cannot encode the token: {e}")))?;
        json.push(b'\n');
        let result = self.write_atomically(&json);
        zeroize::Zeroize::zeroize(&mut json);
        // The refresh lock file exists beside every token file written: one missing
        // was deleted (see `SharedFileSource`), perhaps while a refresh held it.
        if result.is_ok() {
            let _ = open_lock_file(&sibling(&self.path, ".refresh"));
        }
        result.map_err(|e| Error::TokenFile(format!("cannot write {}: {e}", self.describe())))
    }

    fn write_atomically(&self, bytes: &[u8]) -> io::Result<()> {
        write_atomically(&self.path, bytes)
    }

    /// Writes and flushes the temporary file, the first half of an atomic write.
    #[cfg(test)]
    fn write_temp(&self, bytes: &[u8]) -> io::Result<PathBuf> {
        write_temp(&self.path, bytes)
    }

    /// Logs out: the owner's file becomes a tombstone (other processes see a logout,
    /// not a lost file); another user's or issuer's file is refused and left.
    fn clear(&self) -> Result<(), Error> {
        let _lock = self.write_lock()?;
        // A shared file deleted (its refresh lock file left) still gets the
        // tombstone: the processes still holding its token must see the logout, not
        // a lost file they would write their token back to.
        if !self.path.exists() && !sibling(&self.path, ".refresh").exists() {
            return Ok(());
        }
        // A corrupt file was kept aside: the tombstone takes its place.
        let state = self.read_locked()?.unwrap_or_default();
        if state.token.is_none() && state.tombstone.is_some() {
            return Ok(());
        }
        let lineage = crate::Lineage::next()
            .as_micros()
            .max(state.token.as_ref().map_or(0, |t| t.lineage().as_micros()));
        let tombstone = Tombstone {
            at_ms: unix_ms(),
            lineage,
        };
        self.write_file(None, state.generation, Some(tombstone))
    }
}

/// Replaces `path` with `bytes`, atomically (a temporary file of the owner's only,
/// flushed, renamed over it, and the directory flushed).
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let temp = write_temp(path, bytes)?;
    if let Err(e) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(dir_of(path))
}

/// Creates `path` with `bytes` unless it exists, atomically: `Ok(false)` when
/// another writer got there first (its file is left as it is). The file appears
/// whole or not at all, and two processes racing cannot both win.
#[cfg(feature = "dpop")]
pub(crate) fn create_atomically(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    let temp = write_temp(path, bytes)?;
    let created = match fs::hard_link(&temp, path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links: a rename, which only a writer racing at
        // this very moment could undo.
        Err(_) if !path.exists() => fs::rename(&temp, path).map(|()| true),
        Err(e) => Err(e),
    };
    // Gone already after a rename.
    let _ = fs::remove_file(&temp);
    match created? {
        true => sync_dir(dir_of(path)).map(|()| true),
        false => Ok(false),
    }
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes and flushes a temporary file beside `path`, the first half of an atomic
/// write.
fn write_temp(path: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    let dir = dir_of(path);
    create_private_dir(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "token".into());
    let temp = dir.join(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        fastrand::u32(..)
    ));
    let mut file = private_options().open(&temp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    Ok(temp)
}

/// A new file, readable and writable by its owner only from the moment it exists.
fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Makes the rename durable.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Directories cannot be opened for a sync here; the rename is what the OS offers.
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Runs blocking file work off the async runtime when there is one.
pub(crate) async fn blocking<T: Send + 'static>(
    inner: &Arc<Inner>,
    f: impl FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let inner = Arc::clone(inner);
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle
            .spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| Error::Aborted(format!("token file task: {e}")))?,
        Err(_) => f(&inner),
    }
}

impl TokenStore for FileStore {
    fn load(&self) -> BoxFuture<'_, Result<Option<Token>, Error>> {
        blocking(&self.inner, Inner::load).boxed()
    }

    fn save<'a>(&'a self, token: &'a Token) -> BoxFuture<'a, Result<(), Error>> {
        let token = token.clone();
        blocking(&self.inner, move |inner| inner.save(&token)).boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), Error>> {
        blocking(&self.inner, Inner::clear).boxed()
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.inner.path)
            .field("username", &self.inner.username)
            .field("issuer", &self.inner.issuer)
            .field("encryption", &self.inner.keys)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tower-bearer-unit-{name}-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_crash_between_write_and_rename_keeps_the_old_file() {
        let dir = temp_dir("crash");
        let store = FileStore::at(dir.join("t.json"), "alice", "https://idp");
        store
            .inner
            .save(&Token::bearer("old-access").unwrap())
            .unwrap();
        // The first half of a save of a new token, then the "crash": no rename.
        let temp = store.inner.write_temp(b"{\"half\": ").unwrap();
        assert!(temp.exists());
        let loaded = store.inner.load().unwrap().unwrap();
        assert_eq!(loaded.access_token().expose_secret(), "old-access");
        // The next save works and leaves the stray temporary file alone.
        store
            .inner
            .save(&Token::bearer("new-access").unwrap())
            .unwrap();
        let loaded = store.inner.load().unwrap().unwrap();
        assert_eq!(loaded.access_token().expose_secret(), "new-access");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_of_an_earlier_version_reads_and_a_newer_file_is_never_overwritten() {
        let dir = temp_dir("lineage");
        let path = dir.join("t.json");
        // Written by a version with no lineage.
        fs::write(
            &path,
            r#"{"version":1,"username":"alice","issuer":"https://idp",
                "token":{"access_token":"legacy","token_type":"Bearer","refresh_token":"r"}}"#,
        )
        .unwrap();
        let store = FileStore::at(&path, "alice", "https://idp");
        let legacy = store.inner.load().unwrap().unwrap();
        assert_eq!(legacy.access_token().expose_secret(), "legacy");
        assert_eq!(legacy.lineage(), crate::Lineage::UNKNOWN);
        // Any token made now is newer, and replaces it; an older one does not.
        let older = Token::bearer("older").unwrap();
        let newer = Token::bearer("newer").unwrap();
        store.inner.save(&newer).unwrap();
        store.inner.save(&older).unwrap();
        let kept = store.inner.load().unwrap().unwrap();
        assert_eq!(kept.access_token().expose_secret(), "newer");
        assert_eq!(kept.lineage(), newer.lineage());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn file_names_are_plain() {
        assert_eq!(
            FileStore::file_name("alice", "https://idp.example.com/realms/x/"),
            "alice@idp.example.com_realms_x.json"
        );
        assert_eq!(FileStore::file_name("../evil", "http://h"), "_evil@h.json");
    }
}
