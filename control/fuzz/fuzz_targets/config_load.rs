//! The config loader on any text: an error (naming a field) or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = shardray_control::config::load_str(text);
    }
});
