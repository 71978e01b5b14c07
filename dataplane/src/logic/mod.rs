//! Pluggable switching logic: given a parsed packet, decide where it goes.
//!
//! Logic runs on the worker's hot path: `decide` never allocates, locks or makes a system
//! call. It may rewrite the packet in place (TTL, checksum, MAC addresses). Control-plane
//! operations (adding routes, rules) may allocate; they run between batches.
//!
//! The pieces: base logics that pick the output ([`StaticMap`], [`LearningBridge`],
//! [`Router`] over [`Lpm4`]/[`Lpm6`]), wrappers that act before them ([`Filter`],
//! [`TtlDecrement`]), and [`AnyLogic`], the runtime-chosen combination the CLI builds.

pub mod any;
pub mod bridge;
pub mod filter;
pub mod lpm4;
pub mod lpm6;
mod multibit;
pub mod reload;
pub mod router;
pub mod static_map;
pub mod ttl;

/// Frames for tests, here and in the crates built on this one (not an API).
#[doc(hidden)]
pub mod test_frames;

pub use any::{AnyLogic, Base};
pub use bridge::{BridgeConfig, BridgeStats, LearningBridge};
pub use filter::{Acl, Action, Filter, Ipv4Prefix, Ipv6Prefix, Prefix, Rule, RuleParseError};
pub use lpm4::Lpm4;
pub use lpm6::Lpm6;
pub use reload::{ReloadHandle, Reloadable};
pub use router::{NextHop, Router, RouterError};
pub use static_map::{MacRewrite, StaticMap};
pub use ttl::TtlDecrement;

use crate::verdict::{PortId, Verdict};
use crate::wire::Headers;
use std::time::Duration;

/// Switching logic: one decision per packet.
pub trait Logic {
    /// Decides for one packet that arrived on `in_port`. `pkt` is the whole frame (writable),
    /// `hdr` its headers as parsed by [`crate::wire::parse_headers`].
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict;

    /// Called for every packet of a batch before the first `decide` of that batch: logic that
    /// reads large tables prefetches the entry the packet will need, so the batch's cache
    /// misses overlap instead of stalling one after another. Must not change any state.
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        let _ = hdr;
    }

    /// Called once per batch with the time since the worker started, before any `decide`
    /// of that batch. Logic with timers (bridge aging) uses it; the rest ignore it.
    fn tick(&mut self, now: Duration) {
        let _ = now;
    }
}

impl<L: Logic + ?Sized> Logic for &mut L {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        (**self).prefetch(hdr)
    }
    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        (**self).decide(pkt, hdr, in_port)
    }

    #[inline]
    fn tick(&mut self, now: Duration) {
        (**self).tick(now)
    }
}

impl<L: Logic + ?Sized> Logic for Box<L> {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        (**self).prefetch(hdr)
    }
    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        (**self).decide(pkt, hdr, in_port)
    }

    #[inline]
    fn tick(&mut self, now: Duration) {
        (**self).tick(now)
    }
}

/// Identifies a next hop in a [`Router`]'s next-hop table; the value an LPM table stores.
pub type NextHopId = u16;

/// Why a prefix is not valid, or could not be added to an LPM table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LpmError {
    #[error("prefix length {len} is longer than the {max}-bit address")]
    PrefixTooLong { len: u8, max: u8 },
    #[error("prefix {prefix}/{len} has bits set past its length (did you mean {masked}/{len}?)")]
    HostBitsSet {
        prefix: core::net::IpAddr,
        len: u8,
        masked: core::net::IpAddr,
    },
    #[error("all {max_groups} tbl8 groups are in use; raise the table's tbl8 group limit")]
    Tbl8Exhausted { max_groups: u32 },
    #[error("a table can have at most {max} tbl8 groups, {requested} were asked for")]
    Tbl8Limit { requested: u32, max: u32 },
}

/// The destination and source MAC addresses of an Ethernet frame, if it is long enough.
#[inline]
pub(crate) fn macs(pkt: &[u8]) -> Option<([u8; 6], [u8; 6])> {
    match *pkt {
        [d0, d1, d2, d3, d4, d5, s0, s1, s2, s3, s4, s5, ..] => {
            Some(([d0, d1, d2, d3, d4, d5], [s0, s1, s2, s3, s4, s5]))
        }
        _ => None,
    }
}

/// Writes destination and source MAC addresses into an Ethernet frame. Returns `false` (and
/// leaves the frame alone) if it is too short to hold them.
#[inline]
pub(crate) fn set_macs(pkt: &mut [u8], dst: [u8; 6], src: [u8; 6]) -> bool {
    match pkt.get_mut(..12) {
        Some(eth) => {
            eth[..6].copy_from_slice(&dst);
            eth[6..].copy_from_slice(&src);
            true
        }
        None => false,
    }
}
