//! Arbitrary text as `linerate fwd --config` file: parsing it and turning what parses into
//! checked settings (ranges, per-port traffic management) must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linerate_fwd::config::{Settings, parse_file};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(options) = parse_file(&text) {
        let _ = Settings::from_options(options);
    }
});
