//! The fuzz harness on stable: every seed and regression of each fuzz target, then a
//! fixed series of mutations of them, through the same entry points libFuzzer calls
//! (`fuzz/src/lib.rs`, included here), so `cargo test` replays every crash ever found.

#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::path::PathBuf;

/// Tokens that often break parsers, spliced in by the mutator.
const DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"-0",
    b"1e999",
    b"-1e999",
    b"1.5",
    b"18446744073709551616",
    b"253402300800",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    b"\"alg\":\"none\"",
    b"\"crit\":[\"x\"]",
    b"\"aud\":[1]",
    b"\"kid\":null",
    b"\"kty\":\"oct\"",
    b"\"use\":\"enc\"",
    b"=",
    b".",
    b" ",
    b"\t",
    b"\xff",
    b"\xc3\xa9",
    b"\xf0\x9f\x98\x80",
    b"Bearer ",
    b"\n",
    b"http://",
    b"https://",
    b"[::1]",
    b"localhost",
    b"%00",
    b"@",
    b"\"method\":\"tools/call\"",
    b"\"params\":{\"name\":\"echo\"}",
    b"\"name\":",
];

/// The seed and regression inputs of a target.
fn inputs(target: &str) -> Vec<Vec<u8>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut inputs = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            assert_ne!(dir, "seeds", "no seeds for {target}");
            continue;
        };
        let mut paths: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths.into_iter().filter(|p| p.is_file()) {
            inputs.push(std::fs::read(&path).unwrap());
        }
    }
    assert!(!inputs.is_empty(), "no seeds for {target}");
    inputs
}

fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = data.len();
        match rng.u8(..7) {
            0 if len > 0 => data[rng.usize(..len)] ^= 1 << rng.u8(..8),
            1 if len > 0 => data[rng.usize(..len)] = rng.u8(..),
            2 => data.insert(rng.usize(..=len), rng.u8(..)),
            3 if len > 0 => {
                let at = rng.usize(..len);
                let n = rng.usize(1..=(len - at).min(16));
                data.drain(at..at + n);
            }
            4 => {
                let word = DICTIONARY[rng.usize(..DICTIONARY.len())];
                let at = rng.usize(..=len);
                data.splice(at..at, word.iter().copied());
            }
            5 if len > 0 => {
                let at = rng.usize(..len);
                let chunk = data[at..at + rng.usize(1..=(len - at).min(32))].to_vec();
                let to = rng.usize(..=len);
                data.splice(to..to, chunk);
            }
            _ => {
                let other = &seeds[rng.usize(..seeds.len())];
                data.truncate(rng.usize(..=len));
                data.extend_from_slice(&other[rng.usize(..=other.len())..]);
            }
        }
    }
    data
}

/// Shows the input when the entry point panics on it.
struct Witness<'a>(&'static str, &'a [u8]);

impl Drop for Witness<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "fuzz target {} failed on {:?} (save it under fuzz/regressions/{}/)",
                self.0,
                String::from_utf8_lossy(self.1),
                self.0
            );
        }
    }
}

fn run(target: &'static str, entry: fn(&[u8]), seed: u64, mutations: usize) {
    let inputs = inputs(target);
    for input in &inputs {
        let _witness = Witness(target, input);
        entry(input);
    }
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..mutations {
        let input = mutate(&mut rng, &inputs);
        let _witness = Witness(target, &input);
        entry(&input);
    }
}

#[test]
fn header() {
    run("header", harness::header, 1, 40_000);
}

#[test]
fn token_response() {
    run("token_response", harness::token_response, 2, 25_000);
}

#[cfg(feature = "jwt")]
#[test]
fn jwt() {
    run("jwt", harness::jwt, 3, 15_000);
}

#[cfg(feature = "jwt")]
#[test]
fn jwt_structured() {
    run("jwt_structured", harness::jwt_structured, 4, 10_000);
}

#[cfg(feature = "jwks")]
#[test]
fn jwks() {
    run("jwks", harness::jwks, 5, 5_000);
}

#[cfg(feature = "jwks")]
#[test]
fn discovery() {
    run("discovery", harness::discovery, 6, 15_000);
}

#[cfg(feature = "mcp")]
#[test]
fn mcp_tool_calls() {
    run("mcp_tool_calls", harness::mcp_tool_calls, 7, 20_000);
}
