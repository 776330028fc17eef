//! Every example runs, as a person would run it: the built binary, with short
//! settings, checked for its exit status and its output. The examples need the
//! default `jwks` (Cargo.toml).
#![cfg(feature = "jwks")]

mod common;

use std::process::Command;
use tower::Layer;

/// The example `name`'s built binary, as a command.
fn example(name: &str) -> Command {
    Command::new(common::bins::example_binary(name))
}

fn run(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

#[test]
fn demo_shows_single_flight_across_expiries() {
    let mut cmd = example("demo");
    cmd.args(["--tasks", "16", "--duration", "3.5", "--lifetime", "1"]);
    let out = run(cmd);
    let summary = out.lines().last().expect("a summary line");
    let fields: std::collections::HashMap<&str, u64> = summary
        .strip_prefix("summary: ")
        .expect("the last line is the summary")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    assert_eq!(fields["failed"], 0, "{summary}");
    assert_eq!(fields["requests"], fields["ok"], "{summary}");
    assert!(fields["requests"] > 100, "{summary}");
    assert!(fields["expiries"] >= 3, "{summary}");
    assert!(
        fields["token_requests"] <= fields["expiries"] + 1,
        "{summary}"
    );
    assert!(
        fields["token_requests"] >= 2,
        "tokens were refreshed: {summary}"
    );
}

#[test]
fn hyper_client_runs() {
    let out = run(example("hyper_client"));
    assert!(out.contains("request 3: 200 OK"), "{out}");
    assert!(out.contains("1 token request(s)"), "{out}");
}

#[cfg(feature = "reqwest")]
#[test]
fn reqwest_client_runs() {
    let out = run(example("reqwest_client"));
    assert!(out.contains("request 3: 200 OK"), "{out}");
    assert!(out.contains("1 token request(s)"), "{out}");
}

#[cfg(feature = "dpop")]
#[test]
fn dpop_runs_offline() {
    let out = run({
        let mut cmd = example("dpop");
        cmd.args(["--seconds", "1", "--tasks", "4"]);
        cmd
    });
    assert!(out.contains("every request accepted"), "{out}");
    assert!(out.contains("1 token(s) fetched"), "{out}");
    assert!(out.contains("as Bearer: 401"), "{out}");
}

/// The client's keys in a loopback KMS: assertions and DPoP proofs signed remotely
/// are accepted; a KMS that never answers fails at the deadline.
#[cfg(feature = "dpop")]
#[test]
fn remote_signer_runs_offline() {
    let out = run(example("remote_signer"));
    assert!(
        out.contains("3 of 3 requests accepted, 1 token(s) fetched"),
        "{out}"
    );
    assert!(
        out.contains("a hanging KMS: the signer did not answer within 200ms"),
        "{out}"
    );
    assert!(out.contains("every request accepted"), "{out}");
}

/// A child process killed when the test ends, however it ends.
struct Spawned(std::process::Child);

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server example and waits for its `… listening on http://ADDR` line;
/// answers the running child and its base URL.
fn listening(cmd: &mut Command) -> (Spawned, String) {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let child = Spawned(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some((_, addr)) = line.split_once("listening on ") {
            assert!(addr.starts_with("http://127.0.0.1:"), "{line}");
            // Keep reading: a server whose stdout is closed dies at its next line.
            std::thread::spawn(move || lines.for_each(drop));
            return (child, addr.trim().to_owned());
        }
    }
    panic!("the example ended before it listened");
}

type Plain = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<bytes::Bytes>,
>;

fn plain_client() -> Plain {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// Sends `req`; answers the status, the headers and the body as JSON (`Null` when
/// it is not JSON).
async fn send(
    client: &Plain,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> (u16, serde_json::Value) {
    let (status, _, body) = send_full(client, req).await;
    (status, body)
}

async fn send_full(
    client: &Plain,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> (u16, http::HeaderMap, serde_json::Value) {
    use http_body_util::BodyExt;
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or_default(),
    )
}

fn get(url: &str, token: Option<&str>) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = http::Request::get(url);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    req.body(Default::default()).unwrap()
}

/// Registers `username` (password `secret`) and logs in with the form the guide
/// uses; answers the token response.
async fn register_and_login(client: &Plain, base: &str, username: &str) -> serde_json::Value {
    let registration = serde_json::json!({
        "username": username,
        "first_name": "A",
        "last_name": "User",
        "new_workspace_name": "W",
        "password": "secret"
    });
    let req = http::Request::post(format!("{base}/register"))
        .body(registration.to_string().into())
        .unwrap();
    assert_eq!(send(client, req).await.0, 200, "register {username}");
    let req = http::Request::post(format!("{base}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username={username}&password=secret").into())
        .unwrap();
    let (status, token) = send(client, req).await;
    assert_eq!(status, 200, "log in {username}: {token}");
    token
}

/// The token server example, driven with the Zebbra guide's requests as written,
/// then by this crate's own client (password grant, refresh with rotation).
#[tokio::test]
async fn token_server_answers_the_guides_requests() {
    use std::time::Duration;

    use http_body_util::Full;
    use tower::ServiceExt;

    let (_server, base) =
        listening(example("token_server").args(["--addr", "127.0.0.1:0", "--token-ttl", "1s"]));
    let client = plain_client();
    let send = |req| send(&client, req);

    // requests.post(url, data=json.dumps(form_data)): a JSON body with no content type.
    let form_data = serde_json::json!({
        "username": "charlie_brown@example.com",
        "first_name": "Charlie",
        "last_name": "Brown",
        "new_workspace_name": "My Workspace",
        "password": "secret"
    });
    let register = || {
        http::Request::post(format!("{base}/register"))
            .body(Full::from(form_data.to_string()))
            .unwrap()
    };
    let (status, user) = send(register()).await;
    assert_eq!(status, 200);
    assert_eq!(user["username"], "charlie_brown@example.com");
    assert_eq!(user["workspaces"][0]["name"], "My Workspace");
    assert_eq!(user["models"], serde_json::json!([]));
    assert!(user["_id"].is_string() && user.get("password").is_none());
    assert_eq!(
        send(register()).await.0,
        409,
        "a duplicate username is refused"
    );

    // requests.post(url, data={'username': …, 'password': …}): a form.
    let (status, token) = send(
        http::Request::post(format!("{base}/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::from(
                "username=charlie_brown%40example.com&password=secret",
            ))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(token["token_type"], "bearer");
    let access = token["access_token"].as_str().unwrap().to_owned();
    let bearer = |t: &str, path: &str| {
        http::Request::get(format!("{base}{path}"))
            .header("authorization", format!("Bearer {t}"))
            .body(Full::default())
            .unwrap()
    };
    let (status, me) = send(bearer(&access, "/user")).await;
    assert_eq!(
        (status, me["username"].as_str()),
        (200, Some("charlie_brown@example.com"))
    );
    assert_eq!(
        send(bearer(&access, "/token/expired")).await.1,
        serde_json::json!({"expired": false})
    );
    let forged = format!("{}x", &access[..access.len() - 1]);
    assert_eq!(send(bearer(&forged, "/token/expired")).await.0, 401);
    assert_eq!(send(bearer(&forged, "/user")).await.0, 401);

    // This crate's client: the password grant, then refreshes as tokens expire.
    let endpoint = tower_bearer::client::TokenEndpoint::new(&format!("{base}/token")).unwrap();
    let cache = tower_bearer::client::Refreshing::builder(
        endpoint.password("charlie_brown@example.com", "secret"),
    )
    .refresh_before(Duration::from_millis(300))
    .build();
    let api = tower_bearer::client::AuthorizeLayer::new(cache.clone())
        .retry_unauthorized()
        .layer(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Until a genuine token has expired: poll the server's own answer.
    while send(bearer(&access, "/token/expired")).await.1["expired"] != true {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 1 s token never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        send(bearer(&access, "/user")).await.0,
        401,
        "an expired token is refused"
    );
    for _ in 0..3 {
        let res = api
            .clone()
            .oneshot(
                http::Request::get(format!("{base}/user"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert!(
        cache.stats().refreshes >= 2,
        "refreshed with the rotated refresh token"
    );
}

/// Bad input to the token server gets a clear 4xx, and it publishes its keys the
/// way OIDC providers do.
#[tokio::test]
async fn token_server_refuses_bad_input_and_publishes_its_keys() {
    let (_server, base) = listening(example("token_server").args(["--addr", "127.0.0.1:0"]));
    let client = plain_client();
    let post = |path: &str, content_type: Option<&str>, body: Vec<u8>| {
        let mut req = http::Request::post(format!("{base}{path}"));
        if let Some(content_type) = content_type {
            req = req.header("content-type", content_type);
        }
        req.body(body.into()).unwrap()
    };
    let form = Some("application/x-www-form-urlencoded");
    for (case, req, want) in [
        ("malformed JSON", post("/register", None, b"{\"username\":".to_vec()), 422),
        ("missing fields", post("/register", None, br#"{"username":"x"}"#.to_vec()), 422),
        ("JSON of the wrong shape", post("/register", None, b"[1,2]".to_vec()), 422),
        (
            "empty password",
            post(
                "/register",
                None,
                br#"{"username":"x","first_name":"","last_name":"","new_workspace_name":"","password":""}"#.to_vec(),
            ),
            422,
        ),
        ("a body over 64 KiB", post("/register", None, vec![b' '; 80 * 1024]), 413),
        ("no form fields", post("/token", form, Vec::new()), 400),
        ("unknown user", post("/token", form, b"username=nobody&password=x".to_vec()), 400),
        ("unknown grant", post("/token", form, b"grant_type=mac".to_vec()), 400),
        ("stale refresh token", post("/token", form, b"grant_type=refresh_token&refresh_token=abc".to_vec()), 400),
        ("client credentials without a secret", post("/token", form, b"grant_type=client_credentials".to_vec()), 401),
        ("a form over 64 KiB", post("/token", form, vec![b'a'; 80 * 1024]), 413),
    ] {
        let (status, body) = send(&client, req).await;
        assert_eq!(status, want, "{case}: {body}");
    }
    // 8 MiB: the server answers 413 as soon as it sees the length and closes the
    // connection, which may cut the upload short before the answer is read.
    let huge = post("/register", None, vec![b' '; 8 << 20]);
    if let Ok(res) = client.request(huge).await {
        assert_eq!(res.status(), 413);
    }
    let (status, body) = send(
        &client,
        post("/token", form, b"username=nobody&password=x".to_vec()),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    let (status, discovery) = send(
        &client,
        get(&format!("{base}/.well-known/openid-configuration"), None),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(discovery["issuer"], base.as_str());
    let (status, jwks) = send(&client, get(discovery["jwks_uri"].as_str().unwrap(), None)).await;
    assert_eq!(status, 200);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert!(jwks["keys"][0].get("d").is_none(), "never the private key");

    // The server still works after all that.
    let token = register_and_login(&client, &base, "after-garbage").await;
    let (status, me) = send(
        &client,
        get(&format!("{base}/user"), token["access_token"].as_str()),
    )
    .await;
    assert_eq!(
        (status, me["username"].as_str()),
        (200, Some("after-garbage"))
    );
}

/// The axum API example with the token server: keys through OIDC discovery (or a
/// JWKS URL), `/public` open, `/me` answering the claims, `/admin` only for the
/// admin scope, failures answered as RFC 6750 says.
#[tokio::test]
async fn axum_api_checks_the_token_servers_tokens() {
    let (_idp, idp) =
        listening(example("token_server").args(["--addr", "127.0.0.1:0", "--admin", "alice"]));
    let (_api, api) = listening(example("axum_api").args([
        "--addr",
        "127.0.0.1:0",
        "--oidc",
        &idp,
        "--audience",
        "api",
    ]));
    let client = plain_client();
    let alice = register_and_login(&client, &idp, "alice").await;
    let alice = alice["access_token"].as_str().unwrap();
    let bob = register_and_login(&client, &idp, "bob").await;
    let bob = bob["access_token"].as_str().unwrap();

    let (status, body) = send(&client, get(&format!("{api}/public"), None)).await;
    assert_eq!(status, 200, "{body}");

    let (status, headers, _) = send_full(&client, get(&format!("{api}/me"), None)).await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"api\"");

    let (status, claims) = send(&client, get(&format!("{api}/me"), Some(alice))).await;
    assert_eq!(status, 200);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], idp.as_str());
    assert_eq!(claims["aud"], "api");
    assert_eq!(claims["scope"], "read admin");

    let (status, body) = send(&client, get(&format!("{api}/admin"), Some(alice))).await;
    assert_eq!(status, 200, "{body}");
    let (status, headers, _) = send_full(&client, get(&format!("{api}/admin"), Some(bob))).await;
    assert_eq!(status, 403);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"admin\""),
        "{challenge}"
    );

    let forged = format!("{}x", &alice[..alice.len() - 1]);
    let (status, headers, _) = send_full(&client, get(&format!("{api}/me"), Some(&forged))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));

    // Its `/metrics` (feature `metrics`) counted each of those verdicts.
    #[cfg(feature = "metrics")]
    {
        use common::metrics::scraped;
        let res = client
            .request(get(&format!("{api}/metrics"), None))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        use http_body_util::BodyExt;
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8(body.to_vec()).unwrap();
        let validations = |outcome, reason| {
            scraped(
                &text,
                "tower_bearer_validations_total",
                &[("outcome", outcome), ("reason", reason)],
            )
        };
        assert_eq!(validations("ok", "none"), 3.0, "{text}");
        assert_eq!(validations("rejected", "missing"), 1.0, "{text}");
        assert_eq!(validations("rejected", "invalid_token"), 1.0, "{text}");
        let scopes = |outcome| {
            scraped(
                &text,
                "tower_bearer_scope_checks_total",
                &[("outcome", outcome)],
            )
        };
        assert_eq!(scopes("ok"), 1.0, "{text}");
        assert_eq!(scopes("insufficient_scope"), 1.0, "{text}");
        for endpoint in ["discovery", "jwks"] {
            let labels = [("endpoint", endpoint), ("outcome", "ok")];
            assert_eq!(
                scraped(&text, "tower_bearer_idp_requests_total", &labels),
                1.0,
                "{text}"
            );
        }
        assert!(
            text.contains("# HELP tower_bearer_validations_total"),
            "{text}"
        );
    }

    // The same API given the JWKS directly: it checks the issuer and audience it is
    // told, so a token for another audience is refused.
    let (_other, other) = listening(example("axum_api").args([
        "--addr",
        "127.0.0.1:0",
        "--jwks-url",
        &format!("{idp}/.well-known/jwks.json"),
        "--issuer",
        &idp,
        "--audience",
        "another-api",
    ]));
    let (status, headers, _) = send_full(&client, get(&format!("{other}/me"), Some(alice))).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("error=\"invalid_token\""));
}

#[test]
fn axum_api_needs_a_key_source() {
    let out = example("axum_api").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--jwks-url") && stderr.contains("--oidc"),
        "{stderr}"
    );
}

#[test]
fn grpc_example_runs() {
    let out = run(example("grpc"));
    assert!(out.contains("without a token: Unauthenticated"), "{out}");
    assert!(
        out.contains("call 3: Hello grpc! (token subject: demo-client)"),
        "{out}"
    );
    assert!(out.contains("3 calls, 1 token request(s)"), "{out}");
}

/// The MCP-style example: the server publishes its RFC 9728 metadata and names it
/// in its 401; the client, given only the endpoint's URL, finds the token server
/// from that 401, gets a token, lists the tools, calls the one its scope allows
/// and is refused the other with 403 `insufficient_scope`.
#[tokio::test]
async fn mcp_client_finds_the_token_server_from_the_401_and_calls_a_tool() {
    let (_idp, idp) = listening(example("token_server").args(["--addr", "127.0.0.1:0"]));
    let (_mcp, mcp) =
        listening(example("mcp_server").args(["--addr", "127.0.0.1:0", "--oidc", &idp]));
    let client = plain_client();

    // The document, public, at the path-suffixed well-known URL.
    let (status, doc) = send(
        &client,
        get(
            &format!("{mcp}/.well-known/oauth-protected-resource/mcp"),
            None,
        ),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(doc["resource"], format!("{mcp}/mcp"));
    assert_eq!(doc["authorization_servers"], serde_json::json!([idp]));
    assert_eq!(
        doc["scopes_supported"],
        serde_json::json!(["read", "admin"])
    );

    let mut cmd = example("mcp_client");
    cmd.args(["--url", &format!("{mcp}/mcp")]);
    let out = run(cmd);
    let metadata = format!("{mcp}/.well-known/oauth-protected-resource/mcp");
    for line in [
        format!("unauthenticated: 401, resource metadata at {metadata}"),
        format!("authorization server: {idp}"),
        "initialize: tower-bearer-mcp-example".to_owned(),
        "tools: echo, server_stats".to_owned(),
        "echo: hello from mcp_client".to_owned(),
        format!(
            r#"server_stats: 403 Bearer realm="mcp", error="insufficient_scope", error_description="the token lacks a required scope", scope="read admin", resource_metadata="{metadata}""#
        ),
        "1 token request(s)".to_owned(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }

    // The 401 names the scope to ask for, besides the metadata.
    let rpc = |token: Option<&str>| {
        let mut req = http::Request::post(format!("{mcp}/mcp"))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}"#;
        req.body(body.into()).unwrap()
    };
    let (status, headers, _) = send_full(&client, rpc(None)).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        format!(r#"Bearer realm="mcp", scope="read", resource_metadata="{metadata}""#).as_str()
    );
    // A token of the same server for its default audience, not this resource: refused.
    let login = register_and_login(&client, &idp, "mallory@example.com").await;
    let token = login["access_token"].as_str().unwrap();
    let (status, headers, _) = send_full(&client, rpc(Some(token))).await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with(r#"Bearer realm="mcp", error="invalid_token""#),
        "{challenge}"
    );
}

/// The demo's `/metrics` (feature `metrics`): after the run, the figures agree
/// with what the demo counted itself (token requests, callers that waited,
/// accepted requests), and they move as a client then does: N good requests add N
/// to the accepted, a forged token adds one `invalid_token`, and nothing else
/// refreshes.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn demo_metrics_agree_with_the_run_and_move_with_requests() {
    use common::metrics::scraped;
    use std::io::BufRead;

    let mut cmd = example("demo");
    cmd.args([
        "--tasks",
        "8",
        "--duration",
        "2.5",
        "--lifetime",
        "1",
        "--linger",
    ]);
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _child = Spawned(child);
    let mut lines = std::io::BufReader::new(stdout).lines();
    let (mut metrics_url, mut idp, mut waited) = (None, None, None);
    let summary = loop {
        let line = lines
            .next()
            .expect("the demo ended before its summary")
            .unwrap();
        if let Some(url) = line.strip_prefix("metrics on ") {
            metrics_url = Some(url.trim().to_owned());
        }
        if let Some(rest) = line.strip_prefix("token server on ") {
            idp = rest.split(',').next().map(str::to_owned);
        }
        if let Some((_, rest)) = line.split_once("tasks; ") {
            waited = rest.split(' ').next().map(|n| n.parse::<f64>().unwrap());
        }
        if let Some(summary) = line.strip_prefix("summary: ") {
            break summary.to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let field = |name: &str| -> f64 {
        summary
            .split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .unwrap()
            .parse()
            .unwrap()
    };
    let (metrics_url, idp) = (metrics_url.expect("the metrics URL"), idp.unwrap());
    let client = plain_client();
    let scrape = || async {
        let req = get(&metrics_url, None);
        use http_body_util::BodyExt;
        let res = client.request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };

    let first = scrape().await;
    let ok = [("outcome", "ok"), ("reason", "none")];
    let token_requests = field("token_requests");
    assert_eq!(
        scraped(&first, "tower_bearer_refreshes_total", &[("outcome", "ok")]),
        token_requests,
        "{summary}\n{first}"
    );
    assert_eq!(
        scraped(&first, "tower_bearer_refreshes_total", &[]),
        token_requests,
        "no refresh failed: {first}"
    );
    assert_eq!(
        scraped(
            &first,
            "tower_bearer_idp_requests_total",
            &[("endpoint", "token"), ("outcome", "ok")]
        ),
        token_requests,
        "{first}"
    );
    assert_eq!(
        scraped(&first, "tower_bearer_refresh_waiters_total", &[]),
        waited.unwrap(),
        "{first}"
    );
    assert_eq!(
        scraped(&first, "tower_bearer_validations_total", &ok),
        field("ok"),
        "every accepted request was validated once: {summary}\n{first}"
    );
    // The demo's one request with no token (it shows the challenge).
    let missing = [("outcome", "rejected"), ("reason", "missing")];
    assert_eq!(
        scraped(&first, "tower_bearer_validations_total", &missing),
        1.0
    );
    assert_eq!(
        scraped(
            &first,
            "tower_bearer_jwks_fetches_total",
            &[("outcome", "ok")]
        ),
        1.0,
        "{first}"
    );
    assert!(
        first.contains("tower_bearer_validation_seconds_bucket"),
        "{first}"
    );

    // A client of our own: N requests with a good token, one with a forged one.
    let req = http::Request::post(format!("{idp}/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("username=demo%40example.com&password=correct+horse+battery+staple".into())
        .unwrap();
    let (status, login) = send(&client, req).await;
    assert_eq!(status, 200, "{login}");
    let token = login["access_token"].as_str().unwrap();
    let me = metrics_url.replace("/metrics", "/me");
    const N: usize = 5;
    for _ in 0..N {
        assert_eq!(send(&client, get(&me, Some(token))).await.0, 200);
    }
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_eq!(send(&client, get(&me, Some(&forged))).await.0, 401);

    let second = scrape().await;
    let grew = |name: &str, labels: &[(&str, &str)]| {
        scraped(&second, name, labels) - scraped(&first, name, labels)
    };
    assert_eq!(
        grew("tower_bearer_validations_total", &ok),
        N as f64,
        "{second}"
    );
    let invalid = [("outcome", "rejected"), ("reason", "invalid_token")];
    assert_eq!(
        grew("tower_bearer_validations_total", &invalid),
        1.0,
        "{second}"
    );
    assert_eq!(grew("tower_bearer_validations_total", &missing), 0.0);
    assert_eq!(
        grew("tower_bearer_refreshes_total", &[]),
        0.0,
        "the demo's client is idle"
    );
    assert_eq!(
        grew("tower_bearer_validation_seconds_count", &[]),
        N as f64 + 1.0,
        "{second}"
    );
}
