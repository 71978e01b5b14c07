//! The network emulator (`linerate up`): a topology file becomes a running network.
//!
//! [`topo`] is the file as written and the generators; [`plan`] works it out (interfaces,
//! addresses, routes, placement, buffer memory) without touching the system.
#![deny(unsafe_code)]

pub mod control;
pub mod ctl;
pub mod emulator;
pub mod engine;
pub mod flows;
mod hostport;
pub mod limits;
pub mod link;
mod netlink;
pub mod netns;
mod nsflows;
pub mod plan;
pub mod probe;
pub mod router;
pub mod stack;
mod sys;
pub mod topo;
pub mod tunnel;
mod uring;
