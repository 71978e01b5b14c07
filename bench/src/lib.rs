//! Shared helpers for linerate's benchmarks: seeded inputs that every bench builds the same way.
#![deny(unsafe_code)]

/// The seeded generator every bench draws inputs from (the dataplane's own, so benches and the
/// pipeline see the same sequences).
pub use linerate_dataplane::synthetic::splitmix64;
