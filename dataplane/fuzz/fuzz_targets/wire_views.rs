//! Arbitrary bytes through every wire view's `new_checked`, every getter and every
//! `Repr::parse`: none may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    linerate_dataplane::wire::fuzzing::views(data);
});
