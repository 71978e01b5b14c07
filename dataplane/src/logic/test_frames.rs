//! Frames and their [`Headers`] built by hand for the logic tests, independent of the parser.

use crate::wire::checksum;
use crate::wire::{Headers, L3};
use core::net::{Ipv4Addr, Ipv6Addr};

pub const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0b];
pub const BROADCAST: [u8; 6] = [0xff; 6];

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An Ethernet frame with a non-IP payload (`ethertype` 0x88b5, local experimental).
pub fn l2(dst: [u8; 6], src: [u8; 6]) -> (Vec<u8>, Headers) {
    let mut f = ethernet(dst, src, 0x88b5);
    f.resize(60, 0);
    let hdr = Headers {
        l3_offset: 14,
        l4_offset: 14,
        ethertype: 0x88b5,
        vlan: None,
        l3: L3::Other,
        proto: 0,
        src_port: 0,
        dst_port: 0,
    };
    (f, hdr)
}

/// An ARP request frame.
pub fn arp() -> (Vec<u8>, Headers) {
    let mut f = ethernet(BROADCAST, MAC_A, 0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.resize(60, 0);
    let hdr = Headers {
        l3_offset: 14,
        l4_offset: 14,
        ethertype: 0x0806,
        vlan: None,
        l3: L3::Arp,
        proto: 0,
        src_port: 0,
        dst_port: 0,
    };
    (f, hdr)
}

/// An IPv4 packet (valid header checksum) carrying `proto` with the given ports (as UDP/TCP
/// do; the first four L4 bytes).
pub fn ipv4(
    src: &str,
    dst: &str,
    ttl: u8,
    proto: u8,
    sport: u16,
    dport: u16,
) -> (Vec<u8>, Headers) {
    let (src, dst): (Ipv4Addr, Ipv4Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut f = ethernet(MAC_B, MAC_A, 0x0800);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&48u16.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = ttl;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.resize(14 + 48, 0);
    let hdr = Headers {
        l3_offset: 14,
        l4_offset: 34,
        ethertype: 0x0800,
        vlan: None,
        l3: L3::Ipv4 { src, dst, ttl },
        proto,
        src_port: sport,
        dst_port: dport,
    };
    (f, hdr)
}

/// An IPv6 packet carrying `proto` with the given ports, behind one 802.1Q tag (VLAN 7) so
/// that offsets are not the untagged ones.
pub fn ipv6(
    src: &str,
    dst: &str,
    hop_limit: u8,
    proto: u8,
    sport: u16,
    dport: u16,
) -> (Vec<u8>, Headers) {
    let (src, dst): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
    let mut f = ethernet(MAC_B, MAC_A, 0x8100);
    f.extend_from_slice(&[0x00, 0x07, 0x86, 0xdd]);
    let mut ip = [0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&8u16.to_be_bytes());
    ip[6] = proto;
    ip[7] = hop_limit;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.resize(18 + 48, 0);
    let hdr = Headers {
        l3_offset: 18,
        l4_offset: 58,
        ethertype: 0x86dd,
        vlan: Some(7),
        l3: L3::Ipv6 {
            src,
            dst,
            hop_limit,
        },
        proto,
        src_port: sport,
        dst_port: dport,
    };
    (f, hdr)
}
