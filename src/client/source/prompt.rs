//! [`PasswordPrompt`]: asks a person for their password, then the password grant.

use std::fmt;
use std::io::IsTerminal;
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use secrecy::{ExposeSecret, SecretString};

use super::TokenSource;
use crate::client::TokenEndpoint;
use crate::{Error, Token};

type Ask = Arc<dyn Fn(&str) -> Result<Option<SecretString>, Error> + Send + Sync>;

/// An interactive login: asks for the password (by default on the terminal, without
/// echo), then logs in with the password grant. The last step of a
/// [`Chain`](super::Chain).
///
/// With no terminal to ask on (a service, CI, a pipe) it answers [`Error::NoToken`],
/// so the chain ends with a clear "no token" rather than hanging. A wrong password is
/// [`Error::InvalidGrant`].
///
/// ```
/// use secrecy::SecretString;
/// use tower_bearer::client::{source::PasswordPrompt, TokenEndpoint};
/// # fn run() -> Result<(), tower_bearer::Error> {
/// let endpoint = TokenEndpoint::new("https://idp.example.com/token")?;
/// // A GUI, a keyring or a test provides the password instead of the terminal.
/// let prompt = PasswordPrompt::new(endpoint, "alice")
///     .ask(|_prompt| Ok(Some(SecretString::from("from-my-keyring"))));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PasswordPrompt {
    endpoint: TokenEndpoint,
    username: String,
    scope: Option<String>,
    resources: Vec<String>,
    ask: Ask,
}

impl PasswordPrompt {
    /// Asks for `username`'s password on the terminal.
    pub fn new(endpoint: TokenEndpoint, username: impl Into<String>) -> Self {
        PasswordPrompt {
            endpoint,
            username: username.into(),
            scope: None,
            resources: Vec::new(),
            ask: Arc::new(terminal_prompt),
        }
    }

    /// Asks with this function instead: it gets the prompt text and returns the
    /// password, or `None` when it cannot ask. It may block; it runs off the runtime.
    pub fn ask(
        mut self,
        ask: impl Fn(&str) -> Result<Option<SecretString>, Error> + Send + Sync + 'static,
    ) -> Self {
        self.ask = Arc::new(ask);
        self
    }

    /// Asks for this scope (space-separated).
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = Some(scope.into());
        self
    }

    /// A resource indicator (RFC 8707); call again for more than one.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    async fn login(&self) -> Result<Token, Error> {
        let ask = Arc::clone(&self.ask);
        let prompt = format!("Password for {}: ", self.username);
        let password = match tokio::runtime::Handle::try_current() {
            Ok(h) => h
                .spawn_blocking(move || ask(&prompt))
                .await
                .map_err(|e| Error::Aborted(format!("password prompt: {e}")))??,
            Err(_) => ask(&prompt)?,
        };
        let Some(password) = password else {
            return Err(Error::NoToken("no terminal to ask for the password".into()));
        };
        let mut grant = self
            .endpoint
            .password(self.username.as_str(), password.expose_secret());
        if let Some(scope) = &self.scope {
            grant = grant.scope(scope.as_str());
        }
        for resource in &self.resources {
            grant = grant.resource(resource.as_str());
        }
        grant.login().await
    }
}

/// The default: no echo, on the terminal, when there is one.
fn terminal_prompt(prompt: &str) -> Result<Option<SecretString>, Error> {
    if !std::io::stdin().is_terminal() {
        return Ok(None);
    }
    match rpassword::prompt_password(prompt) {
        Ok(p) => Ok(Some(SecretString::from(p))),
        Err(e) => {
            tracing::debug!(error = %e, "cannot prompt for the password");
            Ok(None)
        }
    }
}

impl TokenSource for PasswordPrompt {
    fn fetch<'a>(&'a self, _previous: Option<&'a Token>) -> BoxFuture<'a, Result<Token, Error>> {
        self.login().boxed()
    }
}

impl fmt::Debug for PasswordPrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordPrompt")
            .field("endpoint", &self.endpoint)
            .field("username", &self.username)
            .field("scope", &self.scope)
            .field("resources", &self.resources)
            .finish()
    }
}
