//! Arbitrary text as the relay's credentials file (`user:password` per line): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = linerate_relay::parse_users(&String::from_utf8_lossy(data));
});
