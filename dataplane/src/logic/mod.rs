//! Pluggable switching logic: given a parsed packet, decide where it goes.
//!
//! Logic runs on the worker's hot path: `decide` never allocates, locks or makes a system
//! call. It may rewrite the packet in place (TTL, checksum, MAC addresses). Control-plane
//! operations (adding routes, rules) may allocate; they run between batches.

use crate::verdict::{PortId, Verdict};
use crate::wire::Headers;
use std::time::Duration;

/// Switching logic: one decision per packet.
pub trait Logic {
    /// Decides for one packet that arrived on `in_port`. `pkt` is the whole frame (writable),
    /// `hdr` its headers as parsed by [`crate::wire::parse_headers`].
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict;

    /// Called once per batch with the time since the worker started, before any `decide`
    /// of that batch. Logic with timers (bridge aging) uses it; the rest ignore it.
    fn tick(&mut self, now: Duration) {
        let _ = now;
    }
}
