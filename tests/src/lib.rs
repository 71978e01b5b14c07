//! Test support: RAII guards for network namespaces and veth pairs.
#![deny(unsafe_code)]
