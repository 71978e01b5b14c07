//! linerate's control plane: the protocol ([`proto`]), the controller and its stores
//! ([`controller`], [`store`]) and the node agent ([`agent`]).
//!
//! `control` never depends on `dataplane`: the agent hands configuration to whatever
//! implements [`agent::Dataplane`], and the dataplane adapts it to its own types.
#![deny(unsafe_code)]

pub mod agent;
pub mod controller;
pub mod proto;
pub mod store;
#[doc(hidden)]
pub mod testing;
