//! `linerate fwd` as a library: its settings ([`config`]: one table of flags and file keys),
//! building and running it ([`run`]: steering, AF_XDP ports, schedulers, workers, the control
//! loop), max mode's flow-cache policy ([`flowcache`]), the routing state the controller
//! changes row by row ([`fib`]) and the node side of the controller
//! ([`node`]: configuration to router logic, counters to metrics).
//!
//! The binary's `fwd` command only parses arguments, installs signal handlers and prints.
#![deny(unsafe_code)]

pub mod config;
pub mod fib;
pub mod flowcache;
pub mod inspect;
pub mod node;
pub mod run;
