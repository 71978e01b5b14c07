//! One-pass summary of a frame's headers: what the switching logic and the flow sharder need,
//! computed once per packet. (Stub signature; implemented with the rest of `wire`.)

use core::net::{Ipv4Addr, Ipv6Addr};

/// Where the headers are and the fields every consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headers {
    /// Offset of the L3 header, past Ethernet and any 802.1Q/802.1ad tags.
    pub l3_offset: u16,
    /// Offset of the L4 header, past IPv4 options or IPv6 extension headers. For frames with
    /// no L3/L4 we know, equal to `l3_offset`.
    pub l4_offset: u16,
    /// EtherType after the VLAN tags.
    pub ethertype: u16,
    /// VLAN ID of the outermost tag, if tagged.
    pub vlan: Option<u16>,
    pub l3: L3,
    /// IP protocol number of the L4 header (after IPv6 extension headers); 0 without IP.
    pub proto: u8,
    /// TCP/UDP/SCTP source port; 0 when absent (other protocols, non-first fragments).
    pub src_port: u16,
    /// TCP/UDP/SCTP destination port; 0 when absent.
    pub dst_port: u16,
}

/// The network-layer part of [`Headers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Ipv4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        ttl: u8,
    },
    Ipv6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        hop_limit: u8,
    },
    Arp,
    /// Any other EtherType: forwarded at L2, not understood at L3.
    Other,
}

/// Parses Ethernet, VLAN tags, IPv4/IPv6 (verifying the IPv4 header checksum) and the L4
/// ports. Never panics, never allocates.
pub fn parse_headers(frame: &[u8]) -> super::Result<Headers> {
    let _ = frame;
    Err(super::Error::Unsupported)
}
