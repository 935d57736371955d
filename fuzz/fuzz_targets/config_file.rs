//! Arbitrary UTF-8 as `custody.toml`, through the very resolver `custody` runs (the module is
//! included from the binary crate, which has no library to link). Must never panic: every
//! problem comes back as a message naming its key.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/custody/src/config.rs"]
#[allow(dead_code, unreachable_pub)]
mod config;

fuzz_target!(|text: &str| {
    let args = config::SettingArgs::default();
    match config::Settings::resolve_text(&args, Path::new("custody.toml"), Some(text), Vec::new()) {
        Ok(settings) => {
            let _ = format!("{settings:?}");
        }
        Err(problems) => assert!(!problems.0.is_empty() && !problems.to_string().is_empty()),
    }
});
