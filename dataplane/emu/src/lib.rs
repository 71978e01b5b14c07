//! The network emulator (`linerate up`): a topology file becomes a running network.
//!
//! [`topo`] is the file as written and the generators; [`plan`] works it out (interfaces,
//! addresses, routes, placement, buffer memory) without touching the system.
#![deny(unsafe_code)]

pub mod control;
pub mod ctl;
pub mod emulator;
pub mod engine;
mod hostport;
pub mod limits;
pub mod link;
mod netlink;
pub mod netns;
pub mod plan;
pub mod probe;
pub mod router;
mod sys;
pub mod topo;
mod uring;
