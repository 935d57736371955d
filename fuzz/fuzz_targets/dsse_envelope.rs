//! Arbitrary bytes as a DSSE envelope (reviews and build attestations). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = custody_fuzz::dsse_envelope(bytes);
});
