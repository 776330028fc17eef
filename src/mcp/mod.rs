//! The Model Context Protocol's authorization rules (feature `mcp`; spec
//! 2025-11-25, with the 2025-03-26 back-compat), on both ends, built from the
//! crate's own parts (RFC 9728 metadata, discovery, the token endpoint and its
//! client authentication, the browser login, `Refreshing`, `RequireBearerLayer`).
//! MCP messages travel through the application's MCP implementation (rmcp, or any
//! other); this module never carries them itself.
//!
//! The client side: an MCP client finds a server's authorization server from its
//! `401`, registers, gets a token and steps up on `403 insufficient_scope`.
//! - [`McpAuth`]: one server's authorization, for any HTTP client.
//! - [`discover`]: the discovery alone.
//! - `AuthorizedHttpClient` (feature `rmcp`): rmcp's Streamable HTTP client with
//!   [`McpAuth`] on every request.
//!
//! Never sends a token to a server other than the one it was issued for (the
//! `resource` of the server's metadata is checked before anything is authorized),
//! never quotes a token or a secret in an error or in `Debug`.
//!
//! The server side:
//! - [`server`]: per-tool scopes on a Streamable HTTP endpoint, behind
//!   [`RequireBearerLayer`](crate::server::RequireBearerLayer).

mod auth;
mod discovery;
#[cfg(feature = "rmcp")]
mod rmcp;
pub mod server;
mod user_agent;

pub use auth::{
    CrossApp, Grant, McpAuth, McpAuthBuilder, Sent, UserAgent, DEFAULT_MAX_STEP_UPS,
    LOOPBACK_REDIRECT_URI,
};
pub use discovery::{canonical_server_uri, discover, Discovered, Found};
#[cfg(feature = "rmcp")]
#[cfg_attr(docsrs, doc(cfg(feature = "rmcp")))]
pub use rmcp::AuthorizedHttpClient;
