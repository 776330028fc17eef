//! Authorization header parsing: one or two values, a length cap.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tower_bearer_fuzz::header(data));
