//! Arbitrary bytes as a checkpoint, signed note, tile path, entry bundle or receipt: the
//! formats a monitor fetches from a log it does not trust. Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    custody_fuzz::tlog_formats(data);
});
