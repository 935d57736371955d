//! Arbitrary UTF-8 as a deployment's `schema.toml`. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = custody_fuzz::schema_file(text);
});
