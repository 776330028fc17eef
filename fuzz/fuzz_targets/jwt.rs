//! JWT validation of an arbitrary token (HS, EdDSA and RS256 validators).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_bearer_fuzz::jwt(data));
