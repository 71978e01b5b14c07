//! Arbitrary frames through `wire::parse_headers`: it must not panic, and whatever it accepts
//! must agree with the views (offsets inside the frame, headers that re-check).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    linerate_dataplane::wire::fuzzing::parse_headers(data);
});
