//! Interop with the official MCP TypeScript SDK's client (`@modelcontextprotocol/sdk`,
//! the version pinned in `interop/package-lock.json`): `interop/mcp_sdk_client.mjs`
//! drives it against `examples/mcp_server.rs` (rmcp's Streamable HTTP service behind
//! `RequireBearerLayer` and `ToolScopeLayer`), with `oidc-provider`
//! (`interop/provider.mjs --mcp-resource …`) as the authorization server.
//!
//! The SDK does everything a person's MCP client does, with nothing configured but
//! the server's URL: from the `401` it finds the resource metadata and the
//! authorization server, registers dynamically, logs the person in with PKCE on the
//! provider's own pages with the server as the resource, and calls a tool; on a
//! tool's `403` it logs in again for the scope the challenge names. A token the
//! provider issued for another resource is refused by the server.
//!
//! Needs `node` (20.18 or later) and `interop/node_modules` (`npm ci`, done here when
//! missing). Without them the test skips with a loud message, except under `CI`,
//! where it fails.
#![cfg(all(feature = "jwks", feature = "mcp"))]

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

fn interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Whether node and the pinned packages are here; false (after a loud message)
/// when they are not, outside CI; a failure under CI.
fn node_available() -> bool {
    let ci = std::env::var_os("CI").is_some();
    let node = std::process::Command::new("node")
        .args([
            "-e",
            "const [a, b] = process.versions.node.split('.').map(Number); \
             process.exit(a > 20 || (a === 20 && b >= 18) ? 0 : 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    let present = || {
        ["oidc-provider", "@modelcontextprotocol/sdk"]
            .iter()
            .all(|p| {
                interop_dir()
                    .join("node_modules")
                    .join(p)
                    .join("package.json")
                    .exists()
            })
    };
    let installed = node
        && (present() || {
            let _ = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(interop_dir())
                .stdout(Stdio::null())
                .status();
            present()
        });
    let why = match (node, installed) {
        (true, true) => return true,
        (false, _) => "node 20.18 or later is not installed",
        (true, false) => "the interop packages could not be installed (cd interop && npm ci)",
    };
    assert!(!ci, "CI: the MCP SDK interop test must run, but {why}");
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n!!! SKIPPED interop test: {why} !!!\n");
    false
}

/// Spawns `cmd` (killed with the test) and waits up to 60 s for a stdout line that
/// `ready` accepts, answering what it made of it; the rest of the output goes to the
/// test's stderr.
async fn spawn_until<T>(
    name: &'static str,
    mut cmd: Command,
    ready: impl Fn(&str) -> Option<T>,
) -> (Child, T) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("{name}: {line}");
        }
    });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("{name}: {line}");
            if let Some(found) = ready(&line) {
                return found;
            }
        }
        panic!("{name} exited before it was ready");
    })
    .await
    .unwrap_or_else(|_| panic!("{name} was not ready within 60 s"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{name}: {line}");
        }
    });
    (child, found)
}

#[tokio::test]
async fn the_typescript_sdk_discovers_registers_logs_in_and_calls_tools() {
    if !node_available() {
        return;
    }
    // The server's address comes first: the provider must know the resource.
    let port = common::server::free_port();
    let provider_port = loop {
        let other = common::server::free_port();
        if other != port {
            break other;
        }
    };
    let resource = format!("http://127.0.0.1:{port}/mcp");
    let mut provider = Command::new("node");
    provider
        .arg(interop_dir().join("provider.mjs"))
        .args(["--port", &provider_port.to_string()])
        .args(["--ttl", "300", "--mcp-resource", &resource]);
    let (_provider, issuer) = spawn_until("provider", provider, |line| {
        line.strip_prefix("ready ")
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_owned)
    })
    .await;

    let mut server = Command::new(common::bins::example_binary("mcp_server"));
    server.args(["--addr", &format!("127.0.0.1:{port}"), "--oidc", &issuer]);
    let (_server, ()) = spawn_until("mcp_server", server, |line| {
        line.contains("listening on ").then_some(())
    })
    .await;

    let out = timeout(
        Duration::from_secs(120),
        Command::new("node")
            .arg(interop_dir().join("mcp_sdk_client.mjs"))
            .args(["--mcp", &resource, "--issuer", &issuer])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK client did not finish within 120 s")
    .expect("cannot run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK client failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let steps: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert_eq!(
        steps.last(),
        Some(&serde_json::json!({ "done": true })),
        "{stdout}"
    );
    let all = |name: &str| -> Vec<&Value> { steps.iter().filter(|s| s["step"] == name).collect() };
    let one = |name: &str| -> &Value {
        let found = all(name);
        assert_eq!(found.len(), 1, "one {name} step in:\n{stdout}");
        found[0]
    };

    // Registered once, as a public client (PKCE is its proof).
    let registered = one("registered");
    assert!(registered["client_id"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));
    assert_eq!(registered["token_endpoint_auth_method"], "none");

    // Two logins: the scope of the 401 first, then the 403's for server_stats. Each
    // at the provider's authorization endpoint, for this server, with PKCE (S256).
    let logins = all("authorize");
    assert_eq!(logins.len(), 2, "{stdout}");
    for login in &logins {
        assert_eq!(login["endpoint"], format!("{issuer}/auth"), "{login}");
        assert_eq!(login["resource"], resource.as_str(), "{login}");
        assert_eq!(login["code_challenge_method"], "S256", "{login}");
        assert_eq!(login["has_code_challenge"], true, "{login}");
    }
    assert_eq!(logins[0]["scope"], "read");
    assert_eq!(logins[1]["scope"], "read admin");
    // The provider names itself in each redirect (RFC 9207).
    for callback in all("callback") {
        assert_eq!(callback["iss"], issuer.as_str());
    }
    let tokens = all("tokens");
    assert_eq!(tokens.len(), 2, "{stdout}");
    assert_eq!(tokens[0]["scope"], "read");
    assert_eq!(tokens[1]["scope"], "read admin");

    assert_eq!(one("connected")["server"], "tower-bearer-mcp-example");
    assert_eq!(
        one("tools")["names"],
        serde_json::json!(["echo", "server_stats"])
    );
    let echo = one("echo");
    assert_eq!(echo["text"], "hello from the TypeScript SDK");
    assert_eq!(echo["isError"], false);
    let stats = one("server_stats");
    assert_eq!(stats["text"], "2 tool call(s) answered");
    assert_eq!(stats["isError"], false);

    // What the server answered the SDK along the way: a 401 naming the metadata and
    // the scope, then a 403 naming the scope server_stats needs.
    let exchanges = one("exchanges")["exchanges"].as_array().unwrap().clone();
    let metadata = format!("http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp");
    let to_server: Vec<&Value> = exchanges
        .iter()
        .filter(|e| e["url"] == resource.as_str() && e["status"].as_u64() >= Some(400))
        .collect();
    let challenges: Vec<(u64, &str)> = to_server
        .iter()
        .map(|e| {
            (
                e["status"].as_u64().unwrap(),
                e["challenge"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(
        challenges.contains(&(
            401,
            &*format!(r#"Bearer realm="mcp", scope="read", resource_metadata="{metadata}""#)
        )),
        "{challenges:?}"
    );
    assert!(
        challenges.contains(&(
            403,
            &*format!(
                r#"Bearer realm="mcp", error="insufficient_scope", error_description="the token lacks a required scope", scope="read admin", resource_metadata="{metadata}""#
            )
        )),
        "{challenges:?}"
    );
    assert!(
        exchanges
            .iter()
            .any(|e| e["url"] == metadata.as_str() && e["status"] == 200),
        "the SDK read the metadata: {exchanges:?}"
    );

    // A token of the same provider for another resource: refused.
    let other = one("other_resource");
    assert_eq!(other["status"], 401);
    assert!(
        other["challenge"]
            .as_str()
            .is_some_and(|c| c.contains(r#"error="invalid_token""#)),
        "{other}"
    );
}
