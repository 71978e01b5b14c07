//! linerate's control plane.
//!
//! Nothing lives here yet: the protocol, agent, controller and stores arrive with the control
//! plane work (issue 6). `control` will never depend on `dataplane`.
#![deny(unsafe_code)]
