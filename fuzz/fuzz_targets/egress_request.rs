//! Arbitrary bytes as an export request body (planned against the sample profiles) and as
//! an export profile file. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = custody_fuzz::egress_request(bytes);
});
