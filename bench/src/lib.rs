//! Shared helpers for linerate's benchmarks: seeded inputs that every bench builds the same way.
#![deny(unsafe_code)]
