//! One-pass summary of a frame's headers: what the switching logic and the flow sharder need,
//! computed once per packet.
//!
//! This is the per-packet hot path: no allocation, no panics, one walk over the bytes. It
//! validates every header it summarises (lengths, the IPv4 header checksum, the IPv6
//! extension chain, the L4 header of a first fragment), so consumers can index the frame at
//! the offsets it returns. It does not verify L4 checksums or the UDP length field: fragments
//! legitimately carry a length covering the whole datagram, and a switch forwards segments
//! without reading their payload.
//!
//! It uses the IP and TCP views' own checks but walks the VLAN tags and reads the ports
//! itself, to keep to one pass; the tests hold it to the answers of a version built from the
//! views alone (`reference`), on real, mutated and random frames.

use super::ethernet::{HEADER_LEN, TAG_LEN, is_tpid};
use super::ipv4::{self, Ipv4Packet};
use super::ipv6::{self, Ipv6Packet};
use super::tcp::TcpPacket;
use super::{ArpPacket, Error, Result, checksum, ethertype, ip_proto, tcp, udp};
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

/// SCTP common header (RFC 9260): ports, verification tag, checksum.
const SCTP_HEADER_LEN: usize = 12;

/// Parses Ethernet, VLAN tags, IPv4/IPv6 (verifying the IPv4 header checksum) and the L4
/// ports. Never panics, never allocates.
///
/// Errors: `Truncated` when a header it reads (Ethernet, each tag, ARP, IPv4 up to total
/// length, IPv6 up to payload length, each extension header, the TCP header with options,
/// the UDP or SCTP header of a first fragment) is cut short; `Malformed` for a bad IP
/// version, IHL, total length, TCP data offset or misplaced hop-by-hop header; `Checksum`
/// for a bad IPv4 header checksum; `Unsupported` for a third VLAN tag or more than
/// [`ipv6::ext::MAX_HEADERS`] extension headers.
#[inline]
pub fn parse_headers(frame: &[u8]) -> Result<Headers> {
    match ipv4_fast(frame) {
        Some(h) => Ok(h),
        None => parse_general(frame),
    }
}

/// [`parse_headers`] writing its result into `out`: a caller filling a table of results gets
/// the common case stored in place, not built in a temporary and copied.
#[inline]
pub fn parse_headers_into(frame: &[u8], out: &mut Result<Headers>) {
    match ipv4_fast(frame) {
        Some(h) => *out = Ok(h),
        None => *out = parse_general(frame),
    }
}

/// The common case in straight-line code: untagged Ethernet, IPv4 without options, not a
/// later fragment, UDP or TCP. `None` when the frame is anything else *or fails any check*:
/// the general path then parses it again and names the error, so wherever this returns a
/// summary it is the one the general path would return (the tests hold it to that).
#[inline(always)]
fn ipv4_fast(frame: &[u8]) -> Option<Headers> {
    let (eth, l3) = frame.split_first_chunk::<HEADER_LEN>()?;
    let ip = l3.first_chunk::<{ ipv4::HEADER_LEN }>()?;
    // EtherType IPv4, version 4 with IHL 5.
    if [eth[12], eth[13], ip[0]] != [0x08, 0x00, 0x45] {
        return None;
    }
    let total_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Not a later fragment (offset 0; MF alone is fine, as in `ipv4`).
    if u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return None;
    }
    let l4 = l3.get(ipv4::HEADER_LEN..total_len)?;
    // The header checksum, summed as `Ipv4Packet::verify_checksum` does.
    let w = |b: &[u8; 4]| u32::from_ne_bytes(*b) as u64;
    let acc: u64 = ip.as_chunks::<4>().0.iter().map(w).sum();
    if !checksum::folds_to_ones(acc) {
        return None;
    }
    let proto = ip[9];
    let ports = match proto {
        ip_proto::UDP => l4.first_chunk::<{ udp::HEADER_LEN }>().map(|h| &h[..4]),
        ip_proto::TCP => {
            // `TcpPacket::check_len`: data offset >= 5 words and within the segment.
            let h = l4.first_chunk::<{ tcp::HEADER_LEN }>()?;
            let header_len = (h[12] >> 4) as usize * 4;
            if header_len < tcp::HEADER_LEN || header_len > l4.len() {
                return None;
            }
            Some(&h[..4])
        }
        _ => return None,
    };
    let &[s0, s1, d0, d1] = ports? else {
        return None;
    };
    Some(Headers {
        l3_offset: HEADER_LEN as u16,
        l4_offset: (HEADER_LEN + ipv4::HEADER_LEN) as u16,
        ethertype: ethertype::IPV4,
        vlan: None,
        l3: L3::Ipv4 {
            src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
            dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
            ttl: ip[8],
        },
        proto,
        src_port: u16::from_be_bytes([s0, s1]),
        dst_port: u16::from_be_bytes([d0, d1]),
    })
}

/// Every frame: tags, both IP versions, options, fragments, extension headers, ARP.
#[inline(never)]
fn parse_general(frame: &[u8]) -> Result<Headers> {
    let (l3_offset, ethertype, vlan) = ethernet(frame)?;
    // `ethernet` checked the frame holds the L3 offset.
    let l3 = frame.get(l3_offset..).ok_or(Error::Truncated)?;
    let (l3_summary, l4) = match ethertype {
        ethertype::IPV4 => ipv4(l3)?,
        ethertype::IPV6 => ipv6(l3)?,
        ethertype::ARP => {
            ArpPacket::new_checked(l3)?;
            (L3::Arp, L4::NONE)
        }
        _ => (L3::Other, L4::NONE),
    };
    // Offsets stay far below 2^16: at most 22 + 60 for IPv4, and the IPv6 walk is bounded
    // to MAX_HEADERS headers of at most 2 KiB each.
    Ok(Headers {
        l3_offset: l3_offset as u16,
        l4_offset: (l3_offset + l4.offset) as u16,
        ethertype,
        vlan,
        l3: l3_summary,
        proto: l4.proto,
        src_port: l4.src_port,
        dst_port: l4.dst_port,
    })
}

/// What the IP layer found: where L4 starts (from the L3 header) and its ports.
#[derive(Clone, Copy)]
struct L4 {
    offset: usize,
    proto: u8,
    src_port: u16,
    dst_port: u16,
}

impl L4 {
    const NONE: L4 = L4 {
        offset: 0,
        proto: 0,
        src_port: 0,
        dst_port: 0,
    };
}

/// The tag walk of [`EthernetFrame::check_len`](super::EthernetFrame::check_len) in one
/// pass that also yields what the view's `header_len`, `inner_ethertype` and `vlan_tag`
/// would: L3 offset, EtherType, outer VID.
#[inline(always)]
fn ethernet(frame: &[u8]) -> Result<(usize, u16, Option<u16>)> {
    let be16 = |at: usize| match frame.get(at..at + 2) {
        Some(&[a, b]) => Ok(u16::from_be_bytes([a, b])),
        _ => Err(Error::Truncated),
    };
    let et = be16(HEADER_LEN - 2)?;
    if !is_tpid(et) {
        return Ok((HEADER_LEN, et, None));
    }
    let vid = be16(HEADER_LEN)? & 0x0fff;
    let et = be16(HEADER_LEN + TAG_LEN - 2)?;
    if !is_tpid(et) {
        return Ok((HEADER_LEN + TAG_LEN, et, Some(vid)));
    }
    let et = be16(HEADER_LEN + 2 * TAG_LEN - 2)?;
    if is_tpid(et) {
        return Err(Error::Unsupported);
    }
    Ok((HEADER_LEN + 2 * TAG_LEN, et, Some(vid)))
}

#[inline(always)]
fn ipv4(l3: &[u8]) -> Result<(L3, L4)> {
    let ip = Ipv4Packet::new_checked(l3)?;
    if !ip.verify_checksum() {
        return Err(Error::Checksum);
    }
    let summary = L3::Ipv4 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        ttl: ip.ttl(),
    };
    let header_len = ip.header_len() as usize;
    let mut l4 = L4 {
        offset: header_len,
        proto: ip.protocol(),
        src_port: 0,
        dst_port: 0,
    };
    // A later fragment's payload is the middle of the datagram, with no L4 header.
    if ip.frag_offset() == 0 {
        // `ip.payload()` without its panic path (check_len ordered header_len <= total <= len).
        let payload = l3.get(header_len..ip.total_len() as usize);
        ports(payload.ok_or(Error::Truncated)?, &mut l4)?;
    }
    Ok((summary, l4))
}

#[inline(always)]
fn ipv6(l3: &[u8]) -> Result<(L3, L4)> {
    let ip = Ipv6Packet::new_checked(l3)?;
    let summary = L3::Ipv6 {
        src: ip.src_addr(),
        dst: ip.dst_addr(),
        hop_limit: ip.hop_limit(),
    };
    let payload = ip.payload();
    let next_header = ip.next_header();
    let up = if ipv6::ext::is_extension(next_header) {
        walk_extensions(next_header, payload)?
    } else {
        ipv6::ext::Upper {
            protocol: next_header,
            offset: 0,
            non_first_fragment: false,
        }
    };
    let mut l4 = L4 {
        offset: ipv6::HEADER_LEN + up.offset,
        proto: up.protocol,
        src_port: 0,
        dst_port: 0,
    };
    if !up.non_first_fragment {
        // `walk` returns an offset within `payload`.
        ports(payload.get(up.offset..).ok_or(Error::Truncated)?, &mut l4)?;
    }
    Ok((summary, l4))
}

/// Out of line: most IPv6 packets carry none, and inlining the walk's loop would cost every
/// packet registers.
#[inline(never)]
fn walk_extensions(next_header: u8, payload: &[u8]) -> Result<ipv6::ext::Upper> {
    ipv6::ext::walk(next_header, payload)
}

#[inline(always)]
fn ports(l4: &[u8], out: &mut L4) -> Result<()> {
    // TCP, UDP and SCTP all start with the two ports; each arm checks its whole header.
    let p = match out.proto {
        ip_proto::UDP => l4.first_chunk::<{ udp::HEADER_LEN }>().map(|h| &h[..4]),
        ip_proto::TCP => {
            TcpPacket::new_checked(l4)?;
            l4.first_chunk::<{ tcp::HEADER_LEN }>().map(|h| &h[..4])
        }
        ip_proto::SCTP => l4.first_chunk::<SCTP_HEADER_LEN>().map(|h| &h[..4]),
        _ => return Ok(()),
    };
    let Some(&[s0, s1, d0, d1]) = p else {
        return Err(Error::Truncated);
    };
    out.src_port = u16::from_be_bytes([s0, s1]);
    out.dst_port = u16::from_be_bytes([d0, d1]);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ethernet::{MacAddr, VlanRepr, VlanTags};
    use crate::wire::{EthernetFrame, Icmpv4Packet, Icmpv6Packet, UdpPacket};
    use crate::wire::{
        EthernetRepr, Icmpv4Repr, Icmpv6Repr, Ipv4Repr, Ipv6Repr, PseudoHeader, TcpFlags, TcpRepr,
        UdpRepr, frames,
    };
    use proptest::prelude::*;

    const A4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const B4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    const A6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const B6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    fn v4(ttl: u8) -> L3 {
        L3::Ipv4 {
            src: A4,
            dst: B4,
            ttl,
        }
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8) -> L3 {
        L3::Ipv6 {
            src,
            dst,
            hop_limit,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hdr(
        l3o: u16,
        l4o: u16,
        et: u16,
        vlan: Option<u16>,
        l3: L3,
        p: u8,
        s: u16,
        d: u16,
    ) -> Headers {
        Headers {
            l3_offset: l3o,
            l4_offset: l4o,
            ethertype: et,
            vlan,
            l3,
            proto: p,
            src_port: s,
            dst_port: d,
        }
    }

    #[test]
    fn real_frames() {
        let ip4 = ethertype::IPV4;
        let ip6 = ethertype::IPV6;
        let mcast: Ipv6Addr = "ff02::16".parse().unwrap();
        let ll: Ipv6Addr = "fe80::ff:fe00:1".parse().unwrap();
        let sol: Ipv6Addr = "ff02::1:ff00:3".parse().unwrap();
        let cases: [(&[u8], Headers); 11] = [
            (
                &frames::DNS_QUERY_V4,
                hdr(14, 34, ip4, None, v4(64), 17, 53000, 53),
            ),
            (
                &frames::TCP_SYN_V4_VLAN,
                hdr(18, 38, ip4, Some(100), v4(64), 6, 40000, 80),
            ),
            (
                &frames::ICMPV4_ECHO,
                hdr(14, 34, ip4, None, v4(64), 1, 0, 0),
            ),
            (
                &frames::ARP_REQUEST,
                hdr(14, 14, ethertype::ARP, None, L3::Arp, 0, 0, 0),
            ),
            (
                &frames::TCP_SYN_V6,
                hdr(14, 54, ip6, None, v6(A6, B6, 64), 6, 40001, 443),
            ),
            (
                &frames::ICMPV6_ECHO,
                hdr(14, 54, ip6, None, v6(A6, B6, 64), 58, 0, 0),
            ),
            (
                &frames::ICMPV6_NS,
                hdr(14, 54, ip6, None, v6(A6, sol, 255), 58, 0, 0),
            ),
            (
                &frames::MLD_REPORT_HBH,
                hdr(14, 62, ip6, None, v6(ll, mcast, 1), 58, 0, 0),
            ),
            (
                frames::IPV6_HBH_FRAG_FIRST,
                hdr(14, 70, ip6, None, v6(A6, B6, 64), 17, 40002, 4242),
            ),
            (
                &frames::IPV6_HBH_FRAG_LAST,
                hdr(14, 70, ip6, None, v6(A6, B6, 64), 17, 0, 0),
            ),
            (
                &frames::IPV4_FRAG_LAST,
                hdr(14, 34, ip4, None, v4_to(4), 17, 0, 0),
            ),
        ];
        for (i, (frame, want)) in cases.iter().enumerate() {
            assert_eq!(parse_headers(frame), Ok(*want), "case {i}");
        }
        let first = hdr(14, 34, ip4, None, v4_to(4), 17, 40003, 4242);
        assert_eq!(parse_headers(&frames::IPV4_FRAG_FIRST), Ok(first));
    }

    fn v4_to(last: u8) -> L3 {
        L3::Ipv4 {
            src: A4,
            dst: Ipv4Addr::new(192, 0, 2, last),
            ttl: 64,
        }
    }

    #[test]
    fn padding_after_l3_is_ignored() {
        for frame in [
            &frames::ARP_REQUEST[..],
            &frames::ICMPV4_ECHO[..],
            &frames::TCP_SYN_V6,
        ] {
            let mut padded = frame.to_vec();
            padded.resize(frame.len().max(60) + 8, 0xa5);
            assert_eq!(parse_headers(&padded), parse_headers(frame));
        }
    }

    #[test]
    fn other_ethertype() {
        let mut f = frames::ARP_REQUEST;
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
        assert_eq!(
            parse_headers(&f),
            Ok(hdr(14, 14, 0x88cc, None, L3::Other, 0, 0, 0))
        );
        assert_eq!(parse_headers(&f[..14]).map(|h| h.l3), Ok(L3::Other));
    }

    #[test]
    fn every_prefix_of_a_real_frame_is_truncated() {
        for frame in ALL_FRAMES {
            assert!(parse_headers(frame).is_ok());
            // IP length fields cover the whole frame, so every cut loses a header's bytes.
            for len in 0..frame.len() {
                assert_eq!(
                    parse_headers(&frame[..len]),
                    Err(Error::Truncated),
                    "len {len}"
                );
            }
        }
    }

    /// The DNS frame with one byte changed and the IPv4 checksum refilled.
    fn dns_with(at: usize, v: u8) -> [u8; 71] {
        let mut f = frames::DNS_QUERY_V4;
        f[at] = v;
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        f
    }

    #[test]
    fn ipv4_errors() {
        let mut f = frames::DNS_QUERY_V4;
        f[14 + 8] = 63; // TTL changed, checksum not
        assert_eq!(parse_headers(&f), Err(Error::Checksum));
        assert_eq!(
            parse_headers(&dns_with(14, 0x65)),
            Err(Error::Malformed),
            "version 6"
        );
        assert_eq!(
            parse_headers(&dns_with(14, 0x44)),
            Err(Error::Malformed),
            "IHL 4"
        );
        assert_eq!(
            parse_headers(&dns_with(17, 19)),
            Err(Error::Malformed),
            "total len < IHL"
        );
        assert_eq!(
            parse_headers(&dns_with(17, 58)),
            Err(Error::Truncated),
            "total len > buffer"
        );
        // UDP header cut by a too-small total length: 20 + 7.
        assert_eq!(parse_headers(&dns_with(17, 27)), Err(Error::Truncated));
        // An ESP packet has no ports and needs no L4 header check.
        let h = parse_headers(&dns_with(14 + 9, ip_proto::ESP)).unwrap();
        assert_eq!((h.proto, h.src_port, h.dst_port), (ip_proto::ESP, 0, 0));
    }

    #[test]
    fn ipv4_options_move_l4() {
        let mut f = [0u8; 14 + 24 + 8];
        f[..14].copy_from_slice(&frames::DNS_QUERY_V4[..14]);
        let mut r = Ipv4Repr::new(A4, B4, ip_proto::UDP, 12);
        r.ttl = 9;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        r.emit(&mut ip);
        ip.set_header_len(24);
        ip.set_total_len(24 + 8);
        ip.options_mut().copy_from_slice(&[1, 1, 1, 0]);
        ip.fill_checksum();
        f[38..42].copy_from_slice(&[0x12, 0x34, 0x56, 0x78]);
        f[42..44].copy_from_slice(&8u16.to_be_bytes());
        let h = parse_headers(&f).unwrap();
        assert_eq!((h.l4_offset, h.src_port, h.dst_port), (38, 0x1234, 0x5678));
    }

    #[test]
    fn tcp_header_errors() {
        let mut f = frames::TCP_SYN_V4_VLAN;
        f[38 + 12] = 0x40; // data offset 4
        assert_eq!(parse_headers(&f), Err(Error::Malformed));
        f[38 + 12] = 0xb0; // 44-byte header in a 40-byte segment
        assert_eq!(parse_headers(&f), Err(Error::Truncated));
    }

    #[test]
    fn non_first_fragment_needs_no_l4_header() {
        // The last fragment with its payload cut to nothing: still fine, still no ports.
        let mut f = frames::IPV4_FRAG_LAST;
        let mut ip = Ipv4Packet::new_unchecked(&mut f[14..]);
        ip.set_total_len(20);
        ip.fill_checksum();
        let h = parse_headers(&f[..34]).unwrap();
        assert_eq!(
            (h.proto, h.src_port, h.dst_port, h.l4_offset),
            (17, 0, 0, 34)
        );
    }

    #[test]
    fn too_many_vlan_tags() {
        let mut f = [0u8; 64];
        f[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
        f[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        f[20..22].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert_eq!(parse_headers(&f), Err(Error::Unsupported));
        f[20..22].copy_from_slice(&0x88b5u16.to_be_bytes()); // local experimental
        let h = parse_headers(&f).unwrap();
        assert_eq!((h.l3_offset, h.ethertype, h.vlan), (22, 0x88b5, Some(0)));
    }

    #[test]
    fn ipv6_errors() {
        let mut f = frames::TCP_SYN_V6;
        f[14] = 0x40;
        assert_eq!(
            parse_headers(&f),
            Err(Error::Malformed),
            "version 4 in an IPv6 frame"
        );
        let mut f = frames::TCP_SYN_V6;
        f[19] = 41; // payload length one past the buffer
        assert_eq!(parse_headers(&f), Err(Error::Truncated));

        // Destination options claiming 48 bytes inside a 16-byte payload.
        let mut f = [0u8; 14 + 40 + 16];
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        Ipv6Repr::new(A6, B6, ip_proto::IPV6_DST_OPTS, 16)
            .emit(&mut Ipv6Packet::new_unchecked(&mut f[14..]));
        f[54] = ip_proto::UDP;
        f[55] = 5;
        assert_eq!(parse_headers(&f), Err(Error::Truncated));
        f[55] = 0; // 8 bytes of options leave exactly a UDP header
        assert_eq!(parse_headers(&f).map(|h| h.l4_offset), Ok(62));
        f[55] = 1; // 16 bytes of options: the UDP header is missing entirely
        assert_eq!(parse_headers(&f), Err(Error::Truncated));
        f[54] = ip_proto::IPV6_NO_NEXT;
        assert_eq!(
            parse_headers(&f).map(|h| (h.proto, h.l4_offset)),
            Ok((59, 70))
        );
        f[54] = ip_proto::HOP_BY_HOP;
        assert_eq!(
            parse_headers(&f),
            Err(Error::Malformed),
            "hop-by-hop after dst opts"
        );
    }

    #[test]
    fn ipv6_chain_too_long() {
        let n = ipv6::ext::MAX_HEADERS + 1;
        let mut f = vec![0u8; 14 + 40 + 8 * n + 8];
        f[12..14].copy_from_slice(&ethertype::IPV6.to_be_bytes());
        Ipv6Repr::new(A6, B6, ip_proto::IPV6_DST_OPTS, 8 * n + 8)
            .emit(&mut Ipv6Packet::new_unchecked(&mut f[14..]));
        for i in 0..n {
            f[54 + 8 * i] = if i + 1 < n {
                ip_proto::IPV6_DST_OPTS
            } else {
                ip_proto::UDP
            };
        }
        assert_eq!(parse_headers(&f), Err(Error::Unsupported));
    }

    #[test]
    fn sctp_ports() {
        let mut f = dns_with(14 + 9, ip_proto::SCTP);
        let h = parse_headers(&f).unwrap();
        assert_eq!((h.proto, h.src_port, h.dst_port), (132, 53000, 53));
        f[17] = 20 + 11;
        Ipv4Packet::new_unchecked(&mut f[14..]).fill_checksum();
        assert_eq!(parse_headers(&f), Err(Error::Truncated));
    }

    /// What a generated frame carries at L4.
    #[derive(Debug, Clone, Copy)]
    enum L4 {
        Udp,
        Tcp { option_words: usize },
        Echo,
    }

    fn arb_l4() -> impl Strategy<Value = L4> {
        prop_oneof![
            Just(L4::Udp),
            (0usize..=10).prop_map(|w| L4::Tcp { option_words: w }),
            Just(L4::Echo),
        ]
    }

    fn arb_tags() -> impl Strategy<Value = VlanTags> {
        // Random TCIs: priority and DEI bits must not leak into the VID.
        (0usize..3, any::<[u16; 2]>(), any::<bool>()).prop_map(|(n, tcis, qinq)| {
            let tag = |tpid, tci: u16| VlanRepr {
                tpid,
                pcp: (tci >> 13) as u8,
                dei: tci & 0x1000 != 0,
                vid: tci & 0x0fff,
            };
            let outer = if qinq {
                ethertype::QINQ
            } else {
                ethertype::VLAN
            };
            match n {
                0 => VlanTags::Untagged,
                1 => VlanTags::Single(tag(outer, tcis[0])),
                _ => VlanTags::Double {
                    outer: tag(outer, tcis[0]),
                    inner: tag(ethertype::VLAN, tcis[1]),
                },
            }
        })
    }

    fn eth_for(tags: VlanTags, et: u16) -> EthernetRepr {
        EthernetRepr {
            dst_addr: MacAddr([2, 0, 0, 0, 0, 2]),
            src_addr: MacAddr([2, 0, 0, 0, 0, 1]),
            tags,
            ethertype: et,
        }
    }

    /// Builds a frame with the `Repr` emitters into `buf`; returns its length.
    #[allow(clippy::too_many_arguments)]
    fn build(
        buf: &mut [u8],
        tags: VlanTags,
        l3: L3,
        l4: L4,
        sport: u16,
        dport: u16,
        payload: &[u8],
        padding: usize,
    ) -> usize {
        let (proto, l4_len) = match (l4, l3) {
            (L4::Udp, _) => (ip_proto::UDP, 8 + payload.len()),
            (L4::Tcp { option_words }, _) => (ip_proto::TCP, 20 + 4 * option_words + payload.len()),
            (L4::Echo, L3::Ipv6 { .. }) => (ip_proto::ICMPV6, 8 + payload.len()),
            (L4::Echo, _) => (ip_proto::ICMP, 8 + payload.len()),
        };
        let et = match l3 {
            L3::Ipv4 { .. } => ethertype::IPV4,
            _ => ethertype::IPV6,
        };
        let eth = eth_for(tags, et);
        eth.emit(&mut EthernetFrame::new_unchecked(&mut *buf));
        let at = eth.buffer_len();
        let (ph, l4_at) = match l3 {
            L3::Ipv4 { src, dst, ttl } => {
                let mut r = Ipv4Repr::new(src, dst, proto, l4_len);
                r.ttl = ttl;
                r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[at..]));
                (r.pseudo_header(), at + r.buffer_len())
            }
            L3::Ipv6 {
                src,
                dst,
                hop_limit,
            } => {
                let mut r = Ipv6Repr::new(src, dst, proto, l4_len);
                r.hop_limit = hop_limit;
                r.emit(&mut Ipv6Packet::new_unchecked(&mut buf[at..]));
                (r.pseudo_header(), at + r.buffer_len())
            }
            L3::Arp | L3::Other => unreachable!("only IP frames are generated"),
        };
        let seg = &mut buf[l4_at..l4_at + l4_len];
        let opts = [1u8; 40];
        match (l4, ph) {
            (L4::Udp, _) => UdpRepr {
                src_port: sport,
                dst_port: dport,
                payload,
            }
            .emit(&mut UdpPacket::new_unchecked(seg), &ph),
            (L4::Tcp { option_words }, _) => TcpRepr {
                src_port: sport,
                dst_port: dport,
                seq_number: 1,
                ack_number: 0,
                flags: TcpFlags::SYN,
                window_len: 1024,
                urgent_at: 0,
                options: &opts[..4 * option_words],
                payload,
            }
            .emit(&mut TcpPacket::new_unchecked(seg), &ph),
            (L4::Echo, PseudoHeader::V4 { .. }) => Icmpv4Repr::EchoRequest {
                ident: sport,
                seq_no: dport,
                data: payload,
            }
            .emit(&mut Icmpv4Packet::new_unchecked(seg)),
            (L4::Echo, PseudoHeader::V6 { src, dst }) => Icmpv6Repr::EchoRequest {
                ident: sport,
                seq_no: dport,
                data: payload,
            }
            .emit(&mut Icmpv6Packet::new_unchecked(seg), src, dst),
        }
        l4_at + l4_len + padding
    }

    fn arb_l3() -> impl Strategy<Value = L3> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<[u8; 4]>(), any::<u8>()).prop_map(|(s, d, ttl)| L3::Ipv4 {
                src: s.into(),
                dst: d.into(),
                ttl
            }),
            (any::<[u8; 16]>(), any::<[u8; 16]>(), any::<u8>()).prop_map(|(s, d, hl)| L3::Ipv6 {
                src: s.into(),
                dst: d.into(),
                hop_limit: hl
            }),
        ]
    }

    /// `parse_headers` spelled out with the views only: the fast path must agree with it.
    fn reference(frame: &[u8]) -> Result<Headers> {
        let eth = EthernetFrame::new_checked(frame)?;
        let (l3_offset, et) = (eth.header_len() as u16, eth.inner_ethertype());
        let mut h = hdr(l3_offset, l3_offset, et, None, L3::Other, 0, 0, 0);
        h.vlan = eth.vlan_tag(0).map(|t| t.vid());
        // The L4 header's offset from L3, its bytes, and whether this fragment carries it.
        let (l4_offset, l4, first): (usize, &[u8], bool) = match et {
            ethertype::IPV4 => {
                let ip = Ipv4Packet::new_checked(eth.payload())?;
                if !ip.verify_checksum() {
                    return Err(Error::Checksum);
                }
                h.l3 = v4_of(&ip);
                h.proto = ip.protocol();
                (
                    ip.header_len() as usize,
                    ip.payload(),
                    ip.frag_offset() == 0,
                )
            }
            ethertype::IPV6 => {
                let ip = Ipv6Packet::new_checked(eth.payload())?;
                h.l3 = v6(ip.src_addr(), ip.dst_addr(), ip.hop_limit());
                let up = ipv6::ext::walk(ip.next_header(), ip.payload())?;
                h.proto = up.protocol;
                let l4 = &ip.payload()[up.offset..];
                (40 + up.offset, l4, !up.non_first_fragment)
            }
            ethertype::ARP => {
                ArpPacket::new_checked(eth.payload())?;
                h.l3 = L3::Arp;
                return Ok(h);
            }
            _ => return Ok(h),
        };
        h.l4_offset += l4_offset as u16;
        if !first {
            return Ok(h);
        }
        let need = match h.proto {
            ip_proto::TCP => TcpPacket::new_checked(l4)?.header_len() as usize,
            ip_proto::UDP => 8,
            ip_proto::SCTP => 12,
            _ => return Ok(h),
        };
        if l4.len() < need {
            return Err(Error::Truncated);
        }
        let p = UdpPacket::new_unchecked(l4);
        (h.src_port, h.dst_port) = (p.src_port(), p.dst_port());
        Ok(h)
    }

    fn v4_of(ip: &Ipv4Packet<&[u8]>) -> L3 {
        L3::Ipv4 {
            src: ip.src_addr(),
            dst: ip.dst_addr(),
            ttl: ip.ttl(),
        }
    }

    const ALL_FRAMES: [&[u8]; 12] = [
        &frames::DNS_QUERY_V4,
        &frames::TCP_SYN_V4_VLAN,
        &frames::TCP_SYN_V6,
        &frames::ICMPV4_ECHO,
        &frames::ICMPV6_ECHO,
        &frames::ARP_REQUEST,
        &frames::ICMPV6_NS,
        &frames::MLD_REPORT_HBH,
        &frames::IPV6_HBH_FRAG_LAST,
        &frames::IPV4_FRAG_FIRST,
        &frames::IPV4_FRAG_LAST,
        frames::IPV6_HBH_FRAG_FIRST,
    ];

    #[test]
    fn fast_path_takes_the_common_frames_only() {
        for f in [&frames::DNS_QUERY_V4[..], &frames::IPV4_FRAG_FIRST] {
            assert_eq!(ipv4_fast(f).map(Ok), Some(parse_general(f)));
        }
        // Tagged, another protocol, a later fragment, IPv6: the general path's business.
        for f in [
            &frames::TCP_SYN_V4_VLAN[..],
            &frames::ICMPV4_ECHO,
            &frames::IPV4_FRAG_LAST,
            &frames::TCP_SYN_V6,
        ] {
            assert_eq!(ipv4_fast(f), None);
        }
        let mut f = frames::DNS_QUERY_V4;
        f[14 + 8] = 63; // TTL changed, checksum not
        assert_eq!(ipv4_fast(&f), None);
        assert_eq!(parse_headers(&f), Err(Error::Checksum));
    }

    #[test]
    fn reference_agrees_on_real_frames() {
        for f in ALL_FRAMES {
            assert_eq!(parse_headers(f), reference(f));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::parse_headers(&data);
            prop_assert_eq!(parse_headers(&data), reference(&data));
        }

        #[test]
        fn mutated_real_frames_match_the_views(
            which in 0..ALL_FRAMES.len(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
            cut in any::<prop::sample::Index>(),
            refill_checksum in any::<bool>(),
        ) {
            let mut f = ALL_FRAMES[which].to_vec();
            for (at, v) in edits {
                let i = at.index(f.len());
                f[i] = v;
            }
            // Without a refill nearly every IPv4 edit is a checksum error; with one the edit
            // reaches the length and fragment checks behind it.
            if refill_checksum
                && let Ok(eth) = EthernetFrame::new_checked(&f[..])
                && eth.inner_ethertype() == ethertype::IPV4
            {
                let at = eth.header_len();
                if let Ok(mut ip) = Ipv4Packet::new_checked(&mut f[at..]) {
                    ip.fill_checksum();
                }
            }
            let f = &f[..cut.index(f.len() + 1)];
            crate::wire::fuzzing::parse_headers(f);
            prop_assert_eq!(parse_headers(f), reference(f));
            if let Some(h) = ipv4_fast(f) {
                prop_assert_eq!(Ok(h), parse_general(f));
            }
        }

        #[test]
        fn arbitrary_ethernet_ip_headers_never_panic(
            et in prop_oneof![Just(0x0800u16), Just(0x86dd), Just(0x0806), Just(0x8100)],
            data in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // Random bytes rarely form a plausible EtherType; force one to reach L3 parsing.
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&et.to_be_bytes());
            f.extend_from_slice(&data);
            crate::wire::fuzzing::parse_headers(&f);
        }

        #[test]
        fn generated_frames_parse_to_their_fields(
            tags in arb_tags(), l3 in arb_l3(), l4 in arb_l4(),
            sport in any::<u16>(), dport in any::<u16>(),
            payload in proptest::collection::vec(any::<u8>(), 0..300), padding in 0usize..50,
        ) {
            let mut buf = [0u8; 1024];
            let len = build(&mut buf, tags, l3, l4, sport, dport, &payload, padding);
            let h = parse_headers(&buf[..len]).unwrap();
            let l3_offset = 14 + 4 * tags.count() as u16;
            let l3_len = if matches!(l3, L3::Ipv4 { .. }) { 20 } else { 40 };
            let (proto, ports) = match (l4, l3) {
                (L4::Udp, _) => (17, (sport, dport)),
                (L4::Tcp { .. }, _) => (6, (sport, dport)),
                (L4::Echo, L3::Ipv4 { .. }) => (1, (0, 0)),
                (L4::Echo, _) => (58, (0, 0)),
            };
            let vlan = match tags {
                VlanTags::Untagged => None,
                VlanTags::Single(t) | VlanTags::Double { outer: t, .. } => Some(t.vid),
            };
            prop_assert_eq!(h, Headers {
                l3_offset,
                l4_offset: l3_offset + l3_len,
                ethertype: if l3_len == 20 { ethertype::IPV4 } else { ethertype::IPV6 },
                vlan,
                l3,
                proto,
                src_port: ports.0,
                dst_port: ports.1,
            });
        }
    }
}
