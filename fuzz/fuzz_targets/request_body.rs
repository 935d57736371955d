//! Arbitrary bytes as the body of a create, update, batch-get or search, then checked against
//! the sample schema the way the guarded path checks it. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = custody_fuzz::request_body(data);
});
