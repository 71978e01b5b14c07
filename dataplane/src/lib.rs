//! linerate's packet core: wire views, frames and batches, ports, the switch fabric,
//! pluggable switching logic, flow sharding and the thread-per-core worker runtime.
//!
//! The per-packet path (`wire` parse, `logic::decide`, `fabric`, `shard`) never allocates,
//! locks, or makes a system call per packet. `unsafe` is denied here and allowed only in the
//! modules listed in `docs/ARCHITECTURE.md`.
#![deny(unsafe_code)]

pub mod batch;
pub mod counters;
pub mod fabric;
pub mod fastpath;
pub mod flowtable;
pub mod frame;
pub mod hostcheck;
pub mod logic;
pub mod measure;
pub mod port;
pub mod report;
pub mod ring;
pub mod sched;
pub mod shard;
pub mod synthetic;
pub mod sys;
pub mod template;
pub mod units;
pub mod verdict;
pub mod wire;
pub mod worker;
pub mod xsk;
