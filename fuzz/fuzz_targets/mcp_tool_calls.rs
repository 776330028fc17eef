//! The tool calls of an MCP request body, as `ToolScopeLayer` reads them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_bearer_fuzz::mcp_tool_calls(data));
