//! Arbitrary UTF-8 as a `.cedar` file in a deployment's policy directory. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = custody_fuzz::policy_file(text);
});
