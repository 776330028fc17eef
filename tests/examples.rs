//! Every example runs, as a person would run it: the built binary, with short
//! settings, checked for its exit status and its output.

use std::path::PathBuf;
use std::process::Command;

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
