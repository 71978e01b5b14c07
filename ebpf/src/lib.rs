//! linerate's XDP steering program and its loader.
//!
//! Nothing lives here yet: the XDP program (`bpf/steer.bpf.c`) and the aya loader arrive with
//! the AF_XDP work (issue 3). The crate exists so the workspace has its final shape.
#![deny(unsafe_code)]
