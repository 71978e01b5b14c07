//! Arbitrary text as the controller's seed file (`linerate controller --config`): parsing and
//! checking it must never panic, and what it accepts must pass the protocol's own checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use linerate_proto::Validate;

fuzz_target!(|data: &[u8]| {
    if let Ok(nodes) = linerate_controller::seed::parse(&String::from_utf8_lossy(data)) {
        for config in nodes.values() {
            for r in config.routes.values() {
                assert!(r.validate().is_ok(), "accepted an invalid route: {r:?}");
            }
            for p in config.ports.values() {
                assert!(p.validate().is_ok(), "accepted invalid port settings: {p:?}");
            }
        }
    }
});
