//! Every example runs, as a person would run it: the built binary, with short
//! settings, checked for its exit status and its output.

use std::path::PathBuf;

use std::process::Command;
use tower::Layer;

/// `target/<profile>/examples/<name>`, next to this test's own binary.
fn example(name: &str) -> Command {
    let mut dir: PathBuf = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    if !path.exists() {
        // `cargo test` builds every example; a filtered run (`--test examples`) does not.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--all-features", "--example", name])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build example {name}");
    }
    Command::new(path)
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

/// The token server example, driven with the Zebbra guide's requests as written,
/// then by this crate's own client (password grant, refresh with rotation).
#[tokio::test]
async fn token_server_answers_the_guides_requests() {
    use std::io::BufRead;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use tower::ServiceExt;

    let mut child = example("token_server")
        .args(["--addr", "127.0.0.1:0", "--token-ttl", "1s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let _child = Kill(child);
    let base = first.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{first}");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let send = |req: http::Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = client.request(req).await.unwrap();
            let status = res.status().as_u16();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };

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
