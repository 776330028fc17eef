//! JWKS documents: the usable keys then check genuine tokens.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_bearer_fuzz::jwks(data));
