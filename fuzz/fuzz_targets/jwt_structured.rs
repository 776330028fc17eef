//! JWT validation of genuinely signed tokens with a fuzzed header and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_bearer_fuzz::jwt_structured(data));
