//! The crate's example binaries, for the tests that run them as separate processes.

use std::path::PathBuf;

/// `target/<profile>/examples/<name>`, next to this test's own binary; built if a
/// filtered run (`cargo test --test …`) did not build every example.
pub fn example_binary(name: &str) -> PathBuf {
    let mut dir = std::env::current_exe().unwrap();
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join("examples").join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--all-features", "--example", name])
            .status()
            .unwrap();
        assert!(status.success(), "cannot build the {name} example");
    }
    path
}
