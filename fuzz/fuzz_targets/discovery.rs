//! OIDC discovery documents: the jwks_uri and the issuer check.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_bearer_fuzz::discovery(data));
