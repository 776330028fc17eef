//! Log in once: get tokens with a password or a device code, save them to the token
//! file, and print `export` lines for a shell profile.
//!
//! ```text
//! generate_tokens -u alice --token-url https://idp.example.com/token
//! Password for alice: ········
//! export APP_ACCESS_TOKEN='…'
//! export APP_REFRESH_TOKEN='…'
//! ```
//!
//! `--password-stdin` reads the password from the first line of stdin (scripts, CI);
//! `--browser` logs in in the browser instead (authorization code with PKCE on a
//! loopback redirect; `--no-open` only prints the address); `--device` runs the
//! device authorization grant, for a machine without a browser. `--issuer` finds the token,
//! device and revocation endpoints through discovery. `--logout` revokes the saved
//! tokens (RFC 7009) and clears the token file (never another user's). On a wrong
//! password, an unreachable server or a bad URL it prints one line to stderr and exits
//! non-zero.
//!
//! `--whoami` (with `--issuer` and `openid` in `--scope`) prints who is logged in, from
//! the ID token validated with the provider's keys.
//!
//! The token file is shared with every other process using it (`FileStore::shared`):
//! a valid token in it is printed without logging in (`--relogin` logs in anyway), an
//! expired one is refreshed, and of several processes started together with no token
//! only one logs in (shows the device code, opens the browser, asks the password);
//! the others wait for it (`--wait-timeout`, 30 minutes by default) and print the
//! same token.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use futures_util::future::{BoxFuture, FutureExt};
use tower_bearer::client::source::{self, AuthorizationCode, DeviceCode, Presented};
use tower_bearer::client::{
    FileStore, Refreshing, Revocation, TokenEndpoint, TokenSource, TokenStore,
};
use tower_bearer::{Endpoint, Error, ExposeSecret, SecretString, Token};

/// Log in once and print the tokens for a shell profile.
#[derive(Parser)]
#[command(name = "generate_tokens", version)]
struct Args {
    /// The user name.
    #[arg(short, long)]
    user: String,
    /// The token endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8000/token")]
    token_url: String,
    /// The provider's issuer URL: its token, device and revocation endpoints are
    /// found through discovery (instead of --token-url and --device-url).
    #[arg(long, conflicts_with_all = ["token_url", "device_url"])]
    issuer: Option<String>,
    /// Log out: revoke the saved tokens at the revocation endpoint and clear the
    /// token file (a file of another user is left as it is).
    #[arg(long, conflicts_with_all = ["device", "browser", "password_stdin", "no_save"])]
    logout: bool,
    /// The revocation endpoint for --logout (default: from --issuer, else the token
    /// URL with its last path segment replaced by `revoke`).
    #[arg(long)]
    revocation_url: Option<String>,
    /// Log in in the browser (authorization code with PKCE, the redirect to a
    /// one-time listener on 127.0.0.1) instead of with a password.
    #[arg(long, conflicts_with_all = ["device", "password_stdin"])]
    browser: bool,
    /// The authorization endpoint for --browser (default: from --issuer, else the
    /// token URL with its last path segment replaced by `authorize`).
    #[arg(long, conflicts_with = "issuer")]
    authorize_url: Option<String>,
    /// With --browser: print the address to open instead of starting a browser.
    #[arg(long, requires = "browser")]
    no_open: bool,
    /// With --browser: the port of the redirect listener on 127.0.0.1 (default: one
    /// the system picks).
    #[arg(long, requires = "browser", default_value_t = 0)]
    port: u16,
    /// Log in with the device authorization grant instead of a password.
    #[arg(long, conflicts_with = "password_stdin")]
    device: bool,
    /// The device authorization endpoint (default: the token URL with its last path
    /// segment replaced by `device`).
    #[arg(long)]
    device_url: Option<String>,
    /// The client id registered with the identity provider.
    #[arg(long, default_value = "cli")]
    client_id: String,
    /// Scope to ask for.
    #[arg(long)]
    scope: Option<String>,
    /// The profile name: the token file is `<config dir>/tower-bearer/<NAME>.json`
    /// (default: `<user>@<issuer>`).
    #[arg(long)]
    profile: Option<String>,
    /// The token file, anywhere (overrides --profile).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Read the password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Do not save the tokens to the token file.
    #[arg(long)]
    no_save: bool,
    /// The prefix of the printed variables: `<PREFIX>_ACCESS_TOKEN`, `<PREFIX>_REFRESH_TOKEN`.
    #[arg(long, default_value = "APP")]
    env_prefix: String,
    /// Log in again even when the token file holds a valid token (by default that
    /// token is printed, refreshed first if it has expired).
    #[arg(long, conflicts_with = "no_save")]
    relogin: bool,
    /// How long to wait, in seconds, for another process that is logging in or
    /// refreshing with the same token file (its person may be typing a device code:
    /// the default, 30 minutes, outlasts the device codes of common providers).
    #[arg(long, value_name = "SECONDS", default_value_t = 1800)]
    wait_timeout: u64,
    /// Print who is logged in (to stderr), from the OpenID Connect ID token validated
    /// with the provider's keys: needs --issuer and `openid` in --scope (and the
    /// crate's `jwks` feature). A --browser or --device login then also checks its
    /// ID token (with the login's nonce) before saving anything.
    #[arg(long, requires = "issuer")]
    whoami: bool,
}

/// How long a process waits for the login before it says that another process has
/// the token file.
const NOTICE_AFTER: Duration = Duration::from_millis(250);

/// One line for stderr, and the exit code.
struct Failure(String, u8);

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(line, code)) => {
            // One line, whatever the error carries.
            eprintln!("error: {}", line.replace(['\n', '\r'], " "));
            ExitCode::from(code)
        }
    }
}

async fn run(args: &Args) -> Result<(), Failure> {
    if !is_shell_name(&args.env_prefix) {
        return Err(Failure(
            format!(
                "--env-prefix {:?} is not a valid shell variable name",
                args.env_prefix
            ),
            2,
        ));
    }
    let endpoint = match &args.issuer {
        Some(issuer) => TokenEndpoint::discover(issuer)
            .await
            .map_err(|e| Failure(format!("discovery of --issuer {issuer:?}: {e}"), 1))?,
        None => TokenEndpoint::new(&args.token_url)
            .map_err(|e| Failure(format!("bad --token-url {:?}: {e}", args.token_url), 2))?,
    }
    .client_id(args.client_id.as_str());
    // The token file belongs to the token endpoint actually used.
    let token_url = match &args.issuer {
        Some(_) => endpoint.url().to_string(),
        None => args.token_url.clone(),
    };
    if args.logout {
        return logout(args, &endpoint, token_file(args, &token_url)?).await;
    }
    let store = if args.no_save {
        None
    } else {
        Some(token_file(args, &token_url)?)
    };
    let discovered = endpoint.clone();
    let login = Login {
        how: how(args, &endpoint, &token_url)?,
        endpoint,
        relogin: args.relogin,
        ask: Ask {
            user: args.user.clone(),
            password_stdin: args.password_stdin,
        },
        scope: args.scope.clone(),
        entered: Arc::new(AtomicBool::new(false)),
        failure: Arc::new(Mutex::new(None)),
    };
    let (entered, failure) = (Arc::clone(&login.entered), Arc::clone(&login.failure));
    let explain_login = |e: Error| match failure.lock().unwrap().take() {
        Some(f) => f,
        None => explain(&e, args),
    };

    let Some(store) = store else {
        // Nothing to share without a file: this process logs in alone.
        let token = login.fetch(None).await.map_err(explain_login)?;
        // Who first: a refused ID token prints nothing for the shell to use.
        if args.whoami {
            whoami(&discovered, &token).await?;
        }
        print_exports(&token, &args.env_prefix);
        return Ok(());
    };
    let wait = Duration::from_secs(args.wait_timeout);
    // With --relogin, the file's token is the one being replaced: not served again.
    let replacing = match args.relogin {
        true => store.load().await.map_err(|e| Failure(e.to_string(), 1))?,
        false => None,
    };
    let shared = store.shared(login.clone()).wait_timeout(wait);
    // Another process may be logging in or refreshing with this file: say why
    // nothing happens rather than sit silent.
    let notice = {
        let entered = Arc::clone(&entered);
        let path = store.path().display().to_string();
        tokio::spawn(async move {
            tokio::time::sleep(NOTICE_AFTER).await;
            if !entered.load(Ordering::SeqCst) {
                eprintln!(
                    "Waiting for another process using {path} to log in or refresh \
                     (up to {} s; --wait-timeout to change)",
                    wait.as_secs()
                );
            }
        })
    };
    let fetched = shared.fetch(replacing.as_ref()).await;
    notice.abort();
    // A file whose last word is a logout is no obstacle: with no token of ours to
    // replace, the login's token takes its place.
    let token = fetched.map_err(explain_login)?;
    if entered.load(Ordering::SeqCst) {
        eprintln!("Saved the tokens to {}", store.path().display());
    } else {
        eprintln!(
            "Using the tokens in {} (another process or an earlier run logged in; \
             --relogin to log in again)",
            store.path().display()
        );
    }
    if args.whoami {
        whoami(&discovered, &token).await?;
    }
    print_exports(&token, &args.env_prefix);
    Ok(())
}

/// Prints who `token`'s ID token names, once it is validated with the provider's
/// keys (signature, issuer, audience, dates). A saved ID token that has expired is
/// refused: --relogin gets a fresh one.
#[cfg(feature = "jwks")]
async fn whoami(endpoint: &TokenEndpoint, token: &Token) -> Result<(), Failure> {
    let Some(id_token) = token.expose_id_token() else {
        return Err(Failure(
            "--whoami: the provider returned no ID token (ask for openid in --scope)".into(),
            1,
        ));
    };
    let validator = endpoint
        .id_token_validator()
        .and_then(|b| b.build())
        .map_err(|e| Failure(format!("--whoami: {e}"), 1))?;
    let who = validator
        .validate(id_token, &tower_bearer::client::ExpectedIdToken::new())
        .await
        .map_err(|e| Failure(format!("--whoami: {e} (--relogin gets a fresh one)"), 1))?;
    // The provider's text goes to a terminal: control characters escaped.
    eprintln!(
        "Logged in as {} at {}",
        who.sub.escape_debug(),
        who.iss.escape_debug()
    );
    Ok(())
}

#[cfg(not(feature = "jwks"))]
async fn whoami(_endpoint: &TokenEndpoint, _token: &Token) -> Result<(), Failure> {
    Err(Failure(
        "--whoami needs tower-bearer's `jwks` feature".into(),
        2,
    ))
}

/// With --whoami, the validator a login checks its ID token with.
#[cfg(feature = "jwks")]
fn id_tokens(
    args: &Args,
    endpoint: &TokenEndpoint,
) -> Result<Option<tower_bearer::client::IdTokenValidator>, Failure> {
    if !args.whoami {
        return Ok(None);
    }
    endpoint
        .id_token_validator()
        .and_then(|b| b.build())
        .map(Some)
        .map_err(|e| Failure(format!("--whoami: {e}"), 1))
}

/// How a login is made.
#[derive(Clone)]
enum How {
    Password,
    Device(Box<DeviceCode>),
    Browser(Box<AuthorizationCode>),
}

/// What asking for the password needs.
#[derive(Clone)]
struct Ask {
    user: String,
    password_stdin: bool,
}

/// The token source of this CLI: refreshes the token being replaced when it has a
/// refresh token (unless --relogin), else logs in as asked. Run through
/// `FileStore::shared`, only the process holding the token file's refresh lock
/// gets here: the others wait for its token.
#[derive(Clone)]
struct Login {
    how: How,
    endpoint: TokenEndpoint,
    relogin: bool,
    ask: Ask,
    scope: Option<String>,
    /// Set when this process logs in or refreshes itself.
    entered: Arc<AtomicBool>,
    /// A failure of ours (no password to read), told in the user's words.
    failure: Arc<Mutex<Option<Failure>>>,
}

impl Login {
    async fn fetch_token(&self, previous: Option<&Token>) -> Result<Token, Error> {
        self.entered.store(true, Ordering::SeqCst);
        let previous = previous.filter(|_| !self.relogin);
        match &self.how {
            How::Device(device) => device.fetch(previous).await,
            How::Browser(browser) => browser.fetch(previous).await,
            How::Password => {
                if let Some(rt) = previous.and_then(Token::expose_refresh_token) {
                    match self.endpoint.refresh_token(rt).fetch(None).await {
                        Err(Error::InvalidGrant(_)) => {}
                        refreshed => return refreshed,
                    }
                }
                let ask = self.ask.clone();
                let read = tokio::task::spawn_blocking(move || read_password(&ask))
                    .await
                    .map_err(|e| Error::Aborted(format!("reading the password: {e}")))?;
                let password = match read {
                    Ok(p) => p,
                    Err(failure) => {
                        *self.failure.lock().unwrap() = Some(failure);
                        return Err(Error::Configuration("no password".into()));
                    }
                };
                let mut grant = self
                    .endpoint
                    .password(self.ask.user.as_str(), password.expose_secret());
                drop(password);
                if let Some(scope) = &self.scope {
                    grant = grant.scope(scope.as_str());
                }
                grant.login().await
            }
        }
    }
}

impl TokenSource for Login {
    fn fetch<'a>(&'a self, previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.fetch_token(previous).boxed()
    }

    fn presents(&self, previous: Option<&Token>) -> Option<Presented> {
        match self.relogin {
            true => None,
            false => previous
                .and_then(Token::expose_refresh_token)
                .map(Presented::of),
        }
    }
}

/// The login --browser, --device or the password asks for.
fn how(args: &Args, endpoint: &TokenEndpoint, token_url: &str) -> Result<How, Failure> {
    if args.browser {
        let login = match (&args.authorize_url, &args.issuer) {
            (None, Some(_)) => endpoint
                .authorization_code()
                .map_err(|e| Failure(e.to_string(), 1))?,
            _ => {
                let url = match &args.authorize_url {
                    Some(u) => u.clone(),
                    None => sibling_url(token_url, "authorize"),
                };
                AuthorizationCode::new(endpoint.clone(), &url)
                    .map_err(|e| Failure(format!("bad --authorize-url {url:?}: {e}"), 2))?
            }
        };
        let mut login = login.port(args.port);
        if let Some(scope) = &args.scope {
            login = login.scope(scope.as_str());
        }
        if !args.no_open {
            login = login.open_browser();
        }
        #[cfg(feature = "jwks")]
        if let Some(validator) = id_tokens(args, endpoint)? {
            login = login.id_token_validator(validator);
        }
        Ok(How::Browser(Box::new(login)))
    } else if args.device {
        let mut device = match (&args.device_url, &args.issuer) {
            (None, Some(_)) => endpoint
                .device_code()
                .map_err(|e| Failure(e.to_string(), 1))?,
            _ => {
                let url = match &args.device_url {
                    Some(u) => u.clone(),
                    None => sibling_url(token_url, "device"),
                };
                DeviceCode::new(endpoint.clone(), &url)
                    .map_err(|e| Failure(format!("bad --device-url {url:?}: {e}"), 2))?
            }
        };
        if let Some(scope) = &args.scope {
            device = device.scope(scope.as_str());
        }
        #[cfg(feature = "jwks")]
        if let Some(validator) = id_tokens(args, endpoint)? {
            device = device.id_token_validator(validator);
        }
        Ok(How::Device(Box::new(device)))
    } else {
        Ok(How::Password)
    }
}

/// Revokes the tokens of the token file and removes it, through `Refreshing::logout`.
async fn logout(args: &Args, endpoint: &TokenEndpoint, store: FileStore) -> Result<(), Failure> {
    let revocation = match (&args.revocation_url, &args.issuer) {
        (Some(url), _) => Revocation::new(endpoint, url)
            .map_err(|e| Failure(format!("bad --revocation-url {url:?}: {e}"), 2))?,
        (None, Some(_)) => endpoint
            .revocation()
            .map_err(|e| Failure(e.to_string(), 1))?,
        (None, None) => {
            let url = sibling_url(&endpoint.url().to_string(), "revoke");
            Revocation::new(endpoint, &url)
                .map_err(|e| Failure(format!("bad revocation URL {url:?}: {e}"), 2))?
        }
    };
    let saved = store.load().await.map_err(|e| Failure(e.to_string(), 1))?;
    if saved.is_none() {
        eprintln!("Not logged in: no token in {}", store.path().display());
        return Ok(());
    }
    // Nothing is fetched: the cache only revokes what the file holds, then clears it.
    let nothing = source::from_fn(|_| async { Err(Error::NoToken("logging out".into())) });
    let cache = Refreshing::builder(nothing)
        .store(store.clone())
        .revocation(revocation.clone())
        .build();
    if let Err(e) = cache.logout().await {
        // Say what became of the file, as it is now: a file the logout refused to
        // clear (another user's, written meanwhile) is left as it is.
        let cleared = matches!(store.load().await, Ok(None));
        let file = match cleared {
            true => format!("the tokens were cleared from {}", store.path().display()),
            false => format!("{} was left as it is", store.path().display()),
        };
        let line = match e {
            Error::TokenFile(_) => format!("logout: {e}; {file}"),
            _ => format!("logout at {}: {e}; {file}", revocation.url()),
        };
        return Err(Failure(line, 1));
    }
    eprintln!(
        "Logged out: revoked the tokens at {} and cleared {}",
        revocation.url(),
        store.path().display()
    );
    Ok(())
}

fn token_file(args: &Args, issuer: &str) -> Result<FileStore, Failure> {
    let user = args.user.as_str();
    if let Some(path) = &args.token_file {
        return Ok(FileStore::at(path, user, issuer));
    }
    match &args.profile {
        Some(name) => FileStore::profile(name, user, issuer),
        None => FileStore::new(user, issuer),
    }
    .map_err(|e| Failure(e.to_string(), 2))
}

fn read_password(args: &Ask) -> Result<SecretString, Failure> {
    if args.password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure(format!("cannot read the password from stdin: {e}"), 2))?;
        let password = SecretString::from(line.trim_end_matches(['\n', '\r']).to_owned());
        zeroize::Zeroize::zeroize(&mut line);
        if password.expose_secret().is_empty() {
            return Err(Failure("no password on stdin".into(), 2));
        }
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure(
            "no terminal to ask for the password: use --password-stdin, --browser or --device"
                .into(),
            2,
        ));
    }
    rpassword::prompt_password(format!("Password for {}: ", args.user))
        .map(SecretString::from)
        .map_err(|e| Failure(format!("cannot read the password: {e}"), 2))
}

/// What went wrong, in the user's words.
fn explain(e: &Error, args: &Args) -> Failure {
    let url = args.issuer.as_ref().unwrap_or(&args.token_url);
    let line = match e {
        Error::InvalidGrant(_) if !args.device && !args.browser => format!(
            "wrong user name or password for {} at {url} (invalid_grant)",
            args.user
        ),
        Error::Transport(Endpoint::Token, why) => {
            format!("cannot reach the token endpoint {url}: {why}")
        }
        Error::Timeout(Endpoint::Token, _) => format!("{url}: {e}"),
        Error::AccessDenied(_) => "the login was declined".into(),
        _ => e.to_string(),
    };
    Failure(line, 1)
}

/// `https://idp/oauth/token` → `https://idp/oauth/<name>`.
fn sibling_url(url: &str, name: &str) -> String {
    match url.rsplit_once('/') {
        Some((base, _)) if base.contains("://") => format!("{base}/{name}"),
        _ => format!("{}/{name}", url.trim_end_matches('/')),
    }
}

fn is_shell_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Single-quoted for a POSIX shell.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn print_exports(token: &Token, prefix: &str) {
    println!(
        "export {prefix}_ACCESS_TOKEN={}",
        quote(token.expose_access_token())
    );
    if let Some(rt) = token.expose_refresh_token() {
        println!("export {prefix}_REFRESH_TOKEN={}", quote(rt));
    }
}
