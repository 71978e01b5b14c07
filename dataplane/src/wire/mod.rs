//! Zero-copy views over packet bytes, and emitters for building packets.
//!
//! # The rule for untrusted input
//!
//! Every byte that arrives from a network is untrusted. Each view type `Foo<T: AsRef<[u8]>>`
//! has `new_unchecked` (no checks; only for buffers we built ourselves), `check_len` and
//! `new_checked`, which returns [`Error`] for input too short for the fields its getters read
//! or whose length fields disagree with the buffer. After `new_checked` succeeds no getter can
//! panic. Nothing in this module allocates, and no parser panics on any input: property tests
//! over arbitrary bytes (`tests` below each module) and the fuzz targets in `dataplane/fuzz/`
//! hold us to that.
//!
//! # Layout
//!
//! One module per protocol: a view (`EthernetFrame`, `ArpPacket`, `Ipv4Packet`, ...) and,
//! where we build packets, a `Repr` whose `emit` writes exactly `buffer_len()` bytes and whose
//! `parse` reads back what `emit` wrote. Emitters panic if handed a buffer shorter than
//! `buffer_len()`: they only ever write into buffers we sized ourselves. [`parse_headers`] is
//! the per-packet fast path built on the views.

pub mod arp;
pub mod checksum;
pub mod ethernet;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod headers;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod tcp;
pub mod udp;

#[cfg(test)]
mod frames;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use checksum::PseudoHeader;
pub use ethernet::{EthernetFrame, EthernetRepr, MacAddr, VlanRepr, VlanTag, VlanTags};
pub use headers::{Headers, L3, parse_headers, parse_headers_into};
pub use icmpv4::{Icmpv4Packet, Icmpv4Repr};
pub use icmpv6::{Icmpv6Packet, Icmpv6Repr};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use ipv6::{Ipv6Packet, Ipv6Repr};
pub use tcp::{TcpFlags, TcpPacket, TcpRepr};
pub use udp::{UdpPacket, UdpRepr};

/// Why a buffer could not be viewed as a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the header (or than a length field says it is).
    #[error("packet truncated")]
    Truncated,
    /// A field holds a value the format does not allow (version, header length...).
    #[error("malformed header")]
    Malformed,
    /// A checksum does not verify.
    #[error("bad checksum")]
    Checksum,
    /// Well-formed, but a feature we do not parse (e.g. more than two VLAN tags).
    #[error("unsupported header")]
    Unsupported,
}

pub type Result<T> = core::result::Result<T, Error>;

/// EtherType values `wire` understands (IEEE 802.3, IANA).
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// 802.1ad service VLAN tag (the outer tag of Q-in-Q).
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol / IPv6 next-header numbers `wire` understands (IANA).
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6_ROUTING: u8 = 43;
    pub const IPV6_FRAGMENT: u8 = 44;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const IPV6_NO_NEXT: u8 = 59;
    pub const IPV6_DST_OPTS: u8 = 60;
    pub const SCTP: u8 = 132;
}

/// Big-endian reads at fixed offsets; callers have checked the length.
#[inline(always)]
fn read_u16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([data[at], data[at + 1]])
}

#[inline(always)]
fn read_u32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
}

#[inline(always)]
fn write_u16(data: &mut [u8], at: usize, v: u16) {
    data[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
fn write_u32(data: &mut [u8], at: usize, v: u32) {
    data[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
