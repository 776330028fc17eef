//! The crate's example binaries, for the tests that run them as separate processes.

use std::path::PathBuf;

/// `target/<profile>/examples/<name>`, next to this test's own binary; built if a
/// filtered run (`cargo test --test …`) did not build every example.
///
/// A binary already there is run as it is, whatever features it was built with: a
/// filtered run after a run with other features (`cargo test` with the defaults,
/// then `cargo test --all-features --test examples`) runs the first run's examples.
/// Build them again first (`cargo build --all-features --examples`). Building them
/// here on every call would not do: cargo unifies the dependencies' features over
/// the targets it builds, so one example built alone differs from the same example
/// built by `cargo test`, and each would rebuild the other's dependencies.
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
