//! The Model Context Protocol's authorization rules (feature `mcp`).
//!
//! MCP's authorization spec is OAuth 2.1 with RFC 9728 resource metadata, RFC 8707
//! resource indicators and scopes; this module holds what MCP adds to the crate's
//! general parts, and never a transport of its own: MCP messages travel through the
//! application's MCP implementation (rmcp, or any other).
//!
//! - [`server`]: per-tool scopes on a Streamable HTTP endpoint, behind
//!   [`RequireBearerLayer`](crate::server::RequireBearerLayer).

pub mod server;
