//! [`McpAuth`]: the authorization of one MCP server, from its `401` to a token in a
//! [`Refreshing`] cache, and again on `403 insufficient_scope`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use super::discovery::{discover, Discovered, Found};
use super::user_agent::headless;
use crate::client::source::{token_type, AuthorizationCode, ExchangeToken, JwtBearer, TokenSource};
use crate::client::{
    register, AssertionKey, Authorizer, ClientAssertion, ClientInformation, ClientMetadata,
    MemoryRegistrations, RegistrationStore, TokenEndpoint, TokenEndpointAuth, TokenStore,
};
use crate::metadata::bearer_param;
use crate::{Error, HttpClient, Refreshing, Token};

/// The step-ups (`403 insufficient_scope`, authorize again) one request may cause
/// by default: a server that keeps refusing gets three authorizations in all.
pub const DEFAULT_MAX_STEP_UPS: usize = 2;

/// The redirect URI registered for the authorization code grant: a loopback one,
/// whose port the authorization server must let vary (RFC 8252 §7.3).
pub const LOOPBACK_REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// How this client gets its tokens.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Grant {
    /// The authorization code grant with PKCE (S256): a person (or, with
    /// [`UserAgent::Headless`], an automated authorization server) approves.
    #[default]
    AuthorizationCode,
    /// The client credentials grant (SEP-1046): a machine with its own registration
    /// (a [secret](McpAuthBuilder::client) or a [key](McpAuthBuilder::private_key)).
    ClientCredentials,
    /// Cross-app access (SEP-990, enterprise-managed authorization): an ID-JAG from
    /// the enterprise identity provider by token exchange, presented to the MCP
    /// server's authorization server with the JWT-bearer grant.
    CrossApp(Box<CrossApp>),
}

impl Grant {
    /// [`Grant::CrossApp`] with `cross`.
    pub fn cross_app(cross: CrossApp) -> Self {
        Grant::CrossApp(Box::new(cross))
    }
}

/// Where cross-app access gets its ID-JAG: the enterprise identity provider's token
/// endpoint (with this client's registration there), and the person's identity
/// token (or another token the provider exchanges).
#[derive(Clone, Debug)]
pub struct CrossApp {
    identity_provider: TokenEndpoint,
    subject: ExchangeToken,
}

impl CrossApp {
    /// Exchanges `subject` (an [`ExchangeToken`], such as a fixed ID token of type
    /// [`token_type::ID_TOKEN`]) at `identity_provider` for an ID-JAG whose audience
    /// is the MCP server's authorization server and whose resource is the MCP
    /// server. [`Grant::cross_app`] makes the grant of it.
    pub fn new(identity_provider: TokenEndpoint, subject: ExchangeToken) -> Self {
        CrossApp {
            identity_provider,
            subject,
        }
    }
}

/// Who approves an authorization request ([`Grant::AuthorizationCode`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserAgent {
    /// The person, in the system's browser (the URL printed to stderr as well).
    #[default]
    Browser,
    /// No person: the authorization URL is followed with plain `GET`s through its
    /// redirects until one reaches the loopback redirect URI. For tests and
    /// automation against an authorization server that approves without a page
    /// to fill in; anything else (a login form) fails the login with
    /// `interaction_required`.
    Headless,
}

/// What a request was sent with: its token, if any, and the authorization it came
/// from. Give it back to [`McpAuth::on_unauthorized`] and
/// [`McpAuth::on_insufficient_scope`] so that two requests refused at once lead to
/// one authorization. `Debug` does not show the token.
#[derive(Clone)]
pub struct Sent {
    token: Option<SecretString>,
    generation: u64,
}

impl Sent {
    /// The bearer token to send, if the client has one yet.
    pub fn token(&self) -> Option<&str> {
        self.token.as_ref().map(|t| t.expose_secret())
    }
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sent")
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("generation", &self.generation)
            .finish()
    }
}

type Cache = Refreshing<Box<dyn TokenSource>>;

/// How many refused tokens [`Unrefused`] remembers.
const REFUSED_KEPT: usize = 16;

/// The user's token store as every authorization's cache sees it: a token the MCP
/// server refused (`401`, or `403 insufficient_scope` before a step-up) is never
/// adopted from it again, else the authorization that follows the refusal would
/// serve the store's copy of the very token refused. Only a digest of the refused
/// tokens is kept.
struct Unrefused {
    inner: Arc<dyn TokenStore>,
    refused: Arc<std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>>,
}

fn digest(token: &str) -> [u8; 32] {
    crate::crypto::sha256(token.as_bytes())
}

impl Unrefused {
    fn refuse(&self, token: &str) {
        let mut refused = self
            .refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if refused.len() == REFUSED_KEPT {
            refused.pop_front();
        }
        refused.push_back(digest(token));
    }
}

impl TokenStore for Unrefused {
    fn load(&self) -> futures_util::future::BoxFuture<'_, Result<Option<Token>, Error>> {
        use futures_util::FutureExt as _;
        async move {
            let token = self.inner.load().await?;
            let refused = self
                .refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Ok(token.filter(|t| !refused.contains(&digest(t.access_token().expose_secret()))))
        }
        .boxed()
    }
    fn save<'a>(
        &'a self,
        token: &'a Token,
    ) -> futures_util::future::BoxFuture<'a, Result<(), Error>> {
        self.inner.save(token)
    }
    fn clear(&self) -> futures_util::future::BoxFuture<'_, Result<(), Error>> {
        self.inner.clear()
    }
}

/// One authorization's tokens.
struct Session {
    cache: Cache,
    generation: u64,
}

/// What authorizations share, changed under the gate.
#[derive(Default)]
struct State {
    discovered: Option<Discovered>,
    /// The challenge's `resource_metadata` the discovery followed.
    followed: Option<String>,
    client: Option<(String, ClientInformation)>,
    /// The issuer the pre-registered client was first used with: its
    /// credentials go to no other.
    pre_registered_with: Option<String>,
    scopes: Vec<String>,
    generation: u64,
    /// When the last authorization was made.
    authorized_at: Option<tokio::time::Instant>,
    /// Authorizations in a row made because the server refused a token with
    /// nothing new to ask for (see [`REFUSAL_BACKOFF`]).
    refusals: u32,
}

/// After the server refuses a token with nothing new to ask for (`401`, or `403
/// insufficient_scope` for scopes asked for already), the first authorization is
/// made at once; each one after it waits twice as long after the last
/// authorization, from this, up to [`REFUSAL_BACKOFF_MAX`] (principle 3: a server
/// that refuses every token gets no storm of logins). Refusals are forgotten
/// once the last authorization is that old.
const REFUSAL_BACKOFF: Duration = Duration::from_secs(2);

/// The longest wait of [`REFUSAL_BACKOFF`].
const REFUSAL_BACKOFF_MAX: Duration = Duration::from_secs(64);

struct Config {
    server_url: String,
    http: HttpClient,
    grant: Grant,
    user_agent: UserAgent,
    client: Option<ClientInformation>,
    key: Option<AssertionKey>,
    metadata_document: Option<String>,
    client_metadata: ClientMetadata,
    registrations: Arc<dyn RegistrationStore>,
    token_store: Option<Arc<dyn TokenStore>>,
    /// The tokens the server refused (shared by every authorization's store view).
    refused: Arc<std::sync::Mutex<std::collections::VecDeque<[u8; 32]>>>,
    offline_access: bool,
    max_step_ups: usize,
    login_timeout: Option<Duration>,
}

/// The authorization of one MCP server, by the MCP authorization spec (2025-11-25,
/// with the 2025-03-26 back-compat): cheap to clone, shared by every request to the
/// server.
///
/// - **Discovery**, on the first `401`: [`discover`](super::discover) (resource
///   metadata, its `resource` checked, the authorization server's metadata).
/// - **Registration**: the [pre-registered](McpAuthBuilder::client) client; else a
///   [client ID metadata document](McpAuthBuilder::client_id_metadata_document)
///   when the authorization server takes them
///   (`client_id_metadata_document_supported`); else dynamic registration (RFC
///   7591, `application_type` `native`), kept per issuer and client metadata in
///   a [`RegistrationStore`] (key `issuer#digest`) so a restart does not
///   register again, and another configuration sharing the store (another grant,
///   other redirect URIs) does not use a registration made for this one.
/// - **Scopes**: the challenge's `scope`, else the resource's `scopes_supported`,
///   else none; `offline_access` added when the authorization server lists it (for
///   a refresh token). On `403 insufficient_scope`, the union of what was asked for
///   and what the challenge names.
/// - **The grant** ([`Grant`]): the authorization code with PKCE S256 (an
///   authorization server whose metadata does not list `S256` is refused), `resource`
///   (RFC 8707) on the authorization and token requests, `iss` required when the
///   server promises it (RFC 9207); client credentials; cross-app access. The
///   token endpoint's client authentication is the registration's, else chosen from
///   the metadata (`private_key_jwt` with a key, `client_secret_basic`,
///   `client_secret_post`, `none`).
/// - **Tokens** live in a [`Refreshing`] cache per authorization: refreshed ahead of
///   expiry, one refresh at a time, kept in a [`TokenStore`] when one is given.
///
/// ```no_run
/// use tower_bearer::mcp::{McpAuth, UserAgent};
/// # async fn run() -> Result<(), tower_bearer::Error> {
/// let auth = McpAuth::builder("https://mcp.example.com/mcp")
///     .client_name("my agent")
///     .user_agent(UserAgent::Browser)
///     .build()?;
/// // Send a request with `auth.credential().await?.token()`; on its 401:
/// # let sent = auth.credential().await?; let www_authenticate = "";
/// auth.on_unauthorized(&sent, www_authenticate).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct McpAuth {
    config: Arc<Config>,
    current: Arc<ArcSwapOption<Session>>,
    gate: Arc<tokio::sync::Mutex<State>>,
}

/// Builds an [`McpAuth`]; see [`McpAuth::builder`].
pub struct McpAuthBuilder {
    config: Config,
}

impl McpAuth {
    /// The authorization of the MCP server at `server_url`.
    pub fn builder(server_url: impl Into<String>) -> McpAuthBuilder {
        McpAuthBuilder {
            config: Config {
                server_url: server_url.into(),
                http: HttpClient::new(),
                grant: Grant::default(),
                user_agent: UserAgent::default(),
                client: None,
                key: None,
                metadata_document: None,
                client_metadata: ClientMetadata::native(
                    "tower-bearer MCP client",
                    [LOOPBACK_REDIRECT_URI],
                ),
                registrations: Arc::new(MemoryRegistrations::new()),
                token_store: None,
                refused: Arc::default(),
                offline_access: true,
                max_step_ups: DEFAULT_MAX_STEP_UPS,
                login_timeout: None,
            },
        }
    }

    /// The token to send now (none before the first authorization), refreshed by
    /// its cache when it is near its end.
    ///
    /// # Errors
    /// What the cache's refresh returns when it has no usable token.
    pub async fn credential(&self) -> Result<Sent, Error> {
        let Some(session) = self.current.load_full() else {
            return Ok(Sent {
                token: None,
                generation: 0,
            });
        };
        let token = session.cache.token().await?;
        Ok(Sent {
            token: Some(token.access_token().clone()),
            generation: session.generation,
        })
    }

    /// How many times one request may step up (see
    /// [`McpAuthBuilder::max_step_ups`]).
    pub fn max_step_ups(&self) -> usize {
        self.config.max_step_ups
    }

    /// What discovery found, once a `401` made it run.
    pub async fn discovered(&self) -> Option<Discovered> {
        self.gate.lock().await.discovered.clone()
    }

    /// The server answered `401` to a request sent with `sent`, with the
    /// `WWW-Authenticate` value `www_authenticate`: discovers (the first time),
    /// registers (when needed) and authorizes with the challenge's scopes. Nothing
    /// is done when another request's authorization has replaced `sent` meanwhile.
    ///
    /// # Errors
    /// What discovery, registration and the grant return; [`Error::Configuration`]
    /// when the authorization server offers no way to register or no PKCE `S256`.
    pub async fn on_unauthorized(&self, sent: &Sent, www_authenticate: &str) -> Result<(), Error> {
        self.authorize(sent, www_authenticate, false).await
    }

    /// The server answered `403 insufficient_scope` to a request sent with `sent`:
    /// authorizes again for the union of the scopes asked for before and the
    /// challenge's `scope`. The caller limits how often one request does this
    /// ([`max_step_ups`](Self::max_step_ups)).
    ///
    /// # Errors
    /// As [`on_unauthorized`](Self::on_unauthorized).
    pub async fn on_insufficient_scope(
        &self,
        sent: &Sent,
        www_authenticate: &str,
    ) -> Result<(), Error> {
        self.authorize(sent, www_authenticate, true).await
    }

    async fn authorize(&self, sent: &Sent, challenge: &str, step_up: bool) -> Result<(), Error> {
        let mut state = self.gate.lock().await;
        if state.generation != sent.generation {
            // Another request's authorization came first: retry with its token.
            return Ok(());
        }
        let named = bearer_param(challenge, "resource_metadata");
        // The first refusal of a token since the last authorization goes through the
        // token's cache (its refresh token, or the grant again), unless the server now
        // names other resource metadata (discovered anew below), or the registration
        // expired (replaced below). A refusal after that one is no expiry: it
        // authorizes again, within the backoff, so a server refusing every token gets
        // no storm of refreshes either (principle 3).
        let first_refusal = state.refusals == 0
            || state
                .authorized_at
                .is_none_or(|at| at.elapsed() >= REFUSAL_BACKOFF_MAX);
        let moved = named.is_some() && named != state.followed;
        let expired = state.client.as_ref().is_some_and(|(_, c)| c.expired_now());
        if !step_up
            && first_refusal
            && !moved
            && !expired
            && self.refreshed(&state, sent, challenge).await
        {
            state.authorized_at = Some(tokio::time::Instant::now());
            state.refusals = 1;
            return Ok(());
        }
        if state.discovered.is_none() || (named.is_some() && named != state.followed) {
            let found =
                discover(&self.config.server_url, Some(challenge), &self.config.http).await?;
            if state.discovered.as_ref().map(|d| &d.provider.issuer) != Some(&found.provider.issuer)
            {
                state.client = None;
            }
            state.discovered = Some(found);
            state.followed = named;
        }
        let discovered = state.discovered.clone().expect("discovered above");
        let scopes = self.scopes(&state, &discovered, challenge, step_up);
        let refused_again = sent.token.is_some() && scopes.iter().all(|s| state.scopes.contains(s));
        let refusals = match state.authorized_at {
            Some(at) if refused_again && at.elapsed() < REFUSAL_BACKOFF_MAX => {
                if state.refusals > 0 {
                    let wait = REFUSAL_BACKOFF
                        .saturating_mul(1 << (state.refusals - 1).min(16))
                        .min(REFUSAL_BACKOFF_MAX);
                    if at.elapsed() < wait {
                        return Err(Error::NoToken(format!(
                            "the MCP server refused ({}) the token authorized {} ms ago, \
                             with nothing new to ask for; not authorizing again for {} s",
                            if step_up { "insufficient_scope" } else { "401" },
                            at.elapsed().as_millis(),
                            (wait - at.elapsed()).as_secs() + 1
                        )));
                    }
                }
                state.refusals + 1
            }
            _ if refused_again => 1,
            _ => 0,
        };
        let client = self.client(&mut state, &discovered).await?;
        let source = self.source(&discovered, &client, &scopes)?;
        let mut builder = Refreshing::builder(source);
        if let Some(store) = &self.config.token_store {
            let store = Unrefused {
                inner: Arc::clone(store),
                refused: Arc::clone(&self.config.refused),
            };
            if let Some(token) = &sent.token {
                store.refuse(token.expose_secret());
            }
            builder = builder.store(store);
        }
        let cache = builder.build();
        // The login (or grant) happens here, so its failure is this call's.
        cache.token().await?;
        state.generation += 1;
        state.scopes = scopes;
        state.authorized_at = Some(tokio::time::Instant::now());
        state.refusals = refusals;
        self.current.store(Some(Arc::new(Session {
            cache,
            generation: state.generation,
        })));
        Ok(())
    }

    /// A `401` to a token of the current authorization, whose challenge asks for
    /// no scope beyond it: the cache drops that token and gets another as it would
    /// for any refused token (its refresh token first, then the grant again).
    /// Whether that gave a new token.
    async fn refreshed(&self, state: &State, sent: &Sent, challenge: &str) -> bool {
        let (Some(token), Some(session)) = (sent.token(), self.current.load_full()) else {
            return false;
        };
        let covered = bearer_param(challenge, "scope").is_none_or(|asked| {
            asked
                .split_whitespace()
                .all(|s| state.scopes.iter().any(|have| have == s))
        });
        if !covered || session.generation != sent.generation {
            return false;
        }
        let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
            return false;
        };
        session.cache.on_unauthorized(&value);
        match session.cache.token().await {
            Ok(fresh) => fresh.expose_access_token() != token,
            Err(error) => {
                tracing::debug!(%error, "the refused token could not be replaced: authorizing again");
                false
            }
        }
    }

    /// The scopes to ask for.
    fn scopes(
        &self,
        state: &State,
        discovered: &Discovered,
        challenge: &str,
        step_up: bool,
    ) -> Vec<String> {
        let named: Option<Vec<String>> = bearer_param(challenge, "scope")
            .map(|s| s.split_whitespace().map(str::to_owned).collect());
        let mut scopes = match named {
            Some(named) if step_up => {
                let mut all = state.scopes.clone();
                for scope in named {
                    if !all.contains(&scope) {
                        all.push(scope);
                    }
                }
                all
            }
            Some(named) => named,
            None if !state.scopes.is_empty() => state.scopes.clone(),
            None => discovered
                .resource_metadata
                .as_ref()
                .map(|m| m.scopes_supported.clone())
                .unwrap_or_default(),
        };
        let offline = "offline_access";
        let supported = discovered
            .provider
            .scopes_supported
            .as_ref()
            .is_some_and(|s| s.iter().any(|s| s == offline));
        let wants_refresh = matches!(self.config.grant, Grant::AuthorizationCode);
        if self.config.offline_access && wants_refresh && supported {
            if !scopes.iter().any(|s| s == offline) {
                scopes.push(offline.to_owned());
            }
        } else {
            // SEP-2207: never asked for where the server does not list it.
            scopes.retain(|s| s != offline || supported);
        }
        scopes
    }

    /// The client's registration with the discovered authorization server.
    async fn client(
        &self,
        state: &mut State,
        discovered: &Discovered,
    ) -> Result<ClientInformation, Error> {
        let provider = &discovered.provider;
        if let Some(client) = &self.config.client {
            // Pre-registered credentials are for one authorization server: a
            // server that later names another (new resource metadata in a
            // challenge) does not get them sent there.
            match &state.pre_registered_with {
                Some(first) if *first != provider.issuer => {
                    return Err(Error::Configuration(format!(
                        "the pre-registered client was used with the authorization server \
                         {}, and the MCP server now names {}: refused (its credentials are \
                         not for that server)",
                        crate::error::display_url_str(first),
                        crate::error::display_url_str(&provider.issuer)
                    )))
                }
                Some(_) => {}
                None => state.pre_registered_with = Some(provider.issuer.clone()),
            }
            return Ok(client.clone());
        }
        if let Some(url) = &self.config.metadata_document {
            if provider.client_id_metadata_document_supported {
                let method = if self.config.key.is_some() {
                    "private_key_jwt"
                } else {
                    "none"
                };
                return Ok(ClientInformation::new(url.clone()).auth_method(method));
            }
        }
        let issuer = &provider.issuer;
        if let Some((of, client)) = &state.client {
            if of == issuer && !client.expired_now() {
                return Ok(client.clone());
            }
        }
        let mut metadata = self.config.client_metadata.clone();
        metadata.token_endpoint_auth_method = Some(
            self.registration_method(provider.token_endpoint_auth_methods_supported.as_deref())
                .to_owned(),
        );
        if let Grant::ClientCredentials = self.config.grant {
            metadata.grant_types = vec!["client_credentials".into()];
            metadata.redirect_uris.clear();
            metadata.response_types.clear();
        }
        // Kept per issuer and per the metadata registered (principle 6): another
        // configuration sharing the store (another grant, corrected redirect URIs)
        // registers for itself.
        let key = registration_key(issuer, &metadata)?;
        // A registration whose secret expired is replaced (RFC 7591 §3.2.1).
        let kept = self.config.registrations.load(&key).await?;
        if let Some(kept) = kept.filter(|k| !k.expired_now()) {
            state.client = Some((issuer.clone(), kept.clone()));
            return Ok(kept);
        }
        let Some(endpoint) = &provider.registration_endpoint else {
            return Err(Error::Configuration(format!(
                "the authorization server {} has no registration endpoint and takes no \
                 client ID metadata document: give the client's pre-registered credentials",
                crate::error::display_url_str(issuer)
            )));
        };
        let registered = register(endpoint, &metadata, &self.config.http).await?;
        self.config.registrations.save(&key, &registered).await?;
        state.client = Some((issuer.clone(), registered.clone()));
        Ok(registered)
    }

    /// The authentication method to register with, from those the server lists
    /// (none listed: `client_secret_basic`, RFC 8414 §2). A machine (client
    /// credentials) never registers as a public client: its grant needs client
    /// authentication (RFC 6749 §4.4).
    fn registration_method(&self, supported: Option<&[String]>) -> &'static str {
        let has = |m: &str| supported.is_none_or(|s| s.iter().any(|x| x == m));
        let listed = |m: &str| supported.is_some_and(|s| s.iter().any(|x| x == m));
        let public = !matches!(self.config.grant, Grant::ClientCredentials);
        if self.config.key.is_some() && listed("private_key_jwt") {
            "private_key_jwt"
        } else if public && listed("none") {
            "none"
        } else if has("client_secret_basic") {
            "client_secret_basic"
        } else if listed("client_secret_post") {
            "client_secret_post"
        } else {
            "none"
        }
    }

    /// The token endpoint with the client's registration on it.
    fn endpoint(
        &self,
        discovered: &Discovered,
        client: &ClientInformation,
    ) -> Result<TokenEndpoint, Error> {
        let provider = &discovered.provider;
        let mut endpoint = provider
            .token_endpoint()?
            .http_client(self.config.http.clone())
            .client_id(client.client_id.clone());
        if let Some(secret) = &client.client_secret {
            endpoint = endpoint.client_secret(secret.expose_secret());
        }
        let method = client.token_endpoint_auth_method.as_deref();
        let auth = match method {
            Some("none") => TokenEndpointAuth::None,
            Some("client_secret_basic") => TokenEndpointAuth::Basic,
            Some("client_secret_post") => TokenEndpointAuth::Post,
            Some("private_key_jwt") => self.assertion()?,
            Some(other) => {
                return Err(Error::Configuration(format!(
                    "the client is registered with token_endpoint_auth_method {:?}, which \
                     this client does not do",
                    crate::error::display_url_str(other)
                )))
            }
            None if self.config.key.is_some() => self.assertion()?,
            None if client.client_secret.is_some() => provider.client_auth(),
            None => TokenEndpointAuth::None,
        };
        Ok(endpoint.auth_method(auth))
    }

    fn assertion(&self) -> Result<TokenEndpointAuth, Error> {
        let key = self.config.key.clone().ok_or_else(|| {
            Error::Configuration("private_key_jwt needs the client's private key".into())
        })?;
        // The authorization server's issuer as audience (RFC 7523bis).
        Ok(ClientAssertion::private_key(key).audience_issuer().into())
    }

    /// The token source of the grant.
    fn source(
        &self,
        discovered: &Discovered,
        client: &ClientInformation,
        scopes: &[String],
    ) -> Result<Box<dyn TokenSource>, Error> {
        let endpoint = self.endpoint(discovered, client)?;
        let scope = (!scopes.is_empty()).then(|| scopes.join(" "));
        let resource = discovered.resource.clone();
        Ok(match &self.config.grant {
            Grant::AuthorizationCode => {
                let provider = &discovered.provider;
                let s256 = provider
                    .code_challenge_methods_supported
                    .as_ref()
                    .is_some_and(|m| m.iter().any(|m| m == "S256"));
                if !s256 && discovered.how != Found::LegacyDefaults {
                    return Err(Error::Configuration(format!(
                        "the authorization server {} does not list PKCE S256 in \
                         code_challenge_methods_supported: refused (MCP authorization, \
                         authorization code protection)",
                        crate::error::display_url_str(&provider.issuer)
                    )));
                }
                let url = provider.authorization_endpoint.clone().ok_or_else(|| {
                    Error::Configuration(format!(
                        "the authorization server {} names no authorization_endpoint",
                        crate::error::display_url_str(&provider.issuer)
                    ))
                })?;
                let mut login = AuthorizationCode::new(endpoint, &url)?.resource(resource);
                if let Some(scope) = scope {
                    login = login.scope(scope);
                }
                if let Some(timeout) = self.config.login_timeout {
                    login = login.timeout(timeout);
                }
                login = match self.config.user_agent {
                    UserAgent::Browser => login.open_browser(),
                    UserAgent::Headless => login.show_async(headless(self.config.http.clone())),
                };
                Box::new(login)
            }
            Grant::ClientCredentials => {
                let mut grant = endpoint.param("resource", resource).client_credentials();
                if let Some(scope) = scope {
                    grant = grant.scope(scope);
                }
                Box::new(grant)
            }
            Grant::CrossApp(cross) => {
                let mut exchange = cross
                    .identity_provider
                    .clone()
                    .http_client(self.config.http.clone())
                    .token_exchange(cross.subject.clone())
                    .audience(discovered.provider.issuer.clone())
                    .resource(resource.clone())
                    .requested_token_type(token_type::ID_JAG);
                if let Some(scope) = &scope {
                    exchange = exchange.scope(scope.clone());
                }
                let endpoint = match scope {
                    Some(scope) => endpoint.param("scope", scope),
                    None => endpoint,
                };
                Box::new(JwtBearer::presenting(endpoint, exchange).resource(resource))
            }
        })
    }
}

/// The key of a registration in a [`RegistrationStore`]: the issuer, then `#` and
/// a digest of the metadata registered (an issuer has no fragment, RFC 8414 §2).
fn registration_key(issuer: &str, metadata: &ClientMetadata) -> Result<String, Error> {
    let json = serde_json::to_vec(metadata)
        .map_err(|e| Error::Configuration(format!("cannot encode the client metadata: {e}")))?;
    let digest = crate::crypto::sha256(&json);
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{issuer}#{hex}"))
}

impl fmt::Debug for McpAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpAuth")
            .field(
                "server",
                &crate::error::display_url_str(&self.config.server_url),
            )
            .field("grant", &self.config.grant)
            .field("user_agent", &self.config.user_agent)
            .field("client", &self.config.client)
            .finish_non_exhaustive()
    }
}

impl McpAuthBuilder {
    /// The HTTP client for discovery, registration and the token endpoint (default:
    /// [`HttpClient::new`]).
    pub fn http_client(mut self, http: HttpClient) -> Self {
        self.config.http = http;
        self
    }

    /// How tokens are had (default: [`Grant::AuthorizationCode`]).
    pub fn grant(mut self, grant: Grant) -> Self {
        self.config.grant = grant;
        self
    }

    /// Who approves the authorization code grant (default: [`UserAgent::Browser`]).
    pub fn user_agent(mut self, agent: UserAgent) -> Self {
        self.config.user_agent = agent;
        self
    }

    /// The client's pre-registered credentials: used as they are (no metadata
    /// document, no dynamic registration), with the authorization server the MCP
    /// server names first and no other.
    pub fn client(mut self, client: ClientInformation) -> Self {
        self.config.client = Some(client);
        self
    }

    /// The client's private key: `private_key_jwt` (RFC 7523 §2.2, `aud` the
    /// authorization server's issuer) at the token endpoint, with a pre-registered
    /// client, a metadata document or a dynamic registration where the server
    /// lists the method.
    pub fn private_key(mut self, key: AssertionKey) -> Self {
        self.config.key = Some(key);
        self
    }

    /// The `https` URL of the client's ID metadata document (the client id, where
    /// the authorization server takes one; publish
    /// [`ClientMetadata::document`] there).
    pub fn client_id_metadata_document(mut self, url: impl Into<String>) -> Self {
        self.config.metadata_document = Some(url.into());
        self
    }

    /// The `client_name` of a dynamic registration (default "tower-bearer MCP
    /// client").
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.config.client_metadata.client_name = Some(name.into());
        self
    }

    /// The whole metadata of a dynamic registration (default:
    /// [`ClientMetadata::native`] with [`LOOPBACK_REDIRECT_URI`]); its
    /// `token_endpoint_auth_method` is chosen from the server's metadata.
    pub fn client_metadata(mut self, metadata: ClientMetadata) -> Self {
        self.config.client_metadata = metadata;
        self
    }

    /// Where dynamic registrations are kept, per issuer and client metadata
    /// (default: in memory). A
    /// [`FileRegistrations`](crate::client::FileRegistrations) keeps them across
    /// restarts.
    pub fn registrations(mut self, store: impl RegistrationStore) -> Self {
        self.config.registrations = Arc::new(store);
        self
    }

    /// Where every authorization's tokens are kept and shared (a
    /// [`FileStore`](crate::client::FileStore), a Redis store), as for any
    /// [`Refreshing`] cache.
    pub fn token_store(mut self, store: impl TokenStore) -> Self {
        self.config.token_store = Some(Arc::new(store));
        self
    }

    /// Whether to ask for `offline_access` (a refresh token) where the
    /// authorization server lists it (default `true`; never where it does not).
    pub fn offline_access(mut self, wanted: bool) -> Self {
        self.config.offline_access = wanted;
        self
    }

    /// How many step-ups one request may cause (default [`DEFAULT_MAX_STEP_UPS`]).
    pub fn max_step_ups(mut self, limit: usize) -> Self {
        self.config.max_step_ups = limit;
        self
    }

    /// How long an authorization code login may take (default 5 minutes).
    pub fn login_timeout(mut self, timeout: Duration) -> Self {
        self.config.login_timeout = Some(timeout);
        self
    }

    /// Builds the authorization.
    ///
    /// # Errors
    /// [`Error::Configuration`] for a server URL that is not an absolute `https`
    /// URL (`http` only on loopback), or a metadata document URL that is not
    /// `https`.
    pub fn build(self) -> Result<McpAuth, Error> {
        super::discovery::canonical_server_uri(&self.config.server_url)?;
        if let Some(url) = &self.config.metadata_document {
            if !url.starts_with("https://") {
                return Err(Error::Configuration(format!(
                    "a client ID metadata document URL must be https: {}",
                    crate::error::display_url_str(url)
                )));
            }
        }
        Ok(McpAuth {
            config: Arc::new(self.config),
            current: Arc::new(ArcSwapOption::empty()),
            gate: Arc::new(tokio::sync::Mutex::new(State::default())),
        })
    }
}
