//! The network emulator (`linerate up`): a topology file becomes a running network.
//!
//! [`topo`] is the file as written and the generators; [`plan`] works it out (interfaces,
//! addresses, routes, placement, buffer memory) without touching the system.
#![deny(unsafe_code)]

pub mod link;
pub mod plan;
pub mod router;
pub mod topo;
