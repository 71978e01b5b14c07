//! IPv6 fixed headers (RFC 8200), the `Repr`, and [`ext`]: the bounded walk over extension
//! headers to the upper-layer protocol.

use super::checksum;
use super::{Error, Result, read_u16, read_u32, write_u16, write_u32};
use core::net::Ipv6Addr;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_TC_FLOW: Field = 0..4;
    pub const LENGTH: Field = 4..6;
    pub const NXT_HDR: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC_ADDR: Field = 8..24;
    pub const DST_ADDR: Field = 24..40;
}

/// Length of the fixed header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// A view of an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Ipv6Packet<T> {
        Ipv6Packet { buffer }
    }

    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Ipv6Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer is shorter than 40 bytes plus payload length; `Malformed` if
    /// the version is not 6.
    #[inline(always)]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 6 {
            return Err(Error::Malformed);
        }
        if data.len() < HEADER_LEN + self.payload_len() as usize {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    pub fn traffic_class(&self) -> u8 {
        (read_u16(self.buffer.as_ref(), 0) >> 4) as u8
    }

    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VER_TC_FLOW.start) & 0x000f_ffff
    }

    /// Bytes after the fixed header, extension headers included.
    #[inline(always)]
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    /// The first next-header: an extension header or the upper-layer protocol.
    #[inline(always)]
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NXT_HDR]
    }

    #[inline(always)]
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    #[inline(always)]
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The pseudo-header the upper layer's checksum covers. (With a routing header the
    /// checksum uses the final destination instead; we do not originate those.)
    pub fn pseudo_header(&self) -> checksum::PseudoHeader {
        checksum::PseudoHeader::V6 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }
}

#[inline(always)]
fn addr(b: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(b);
    Ipv6Addr::from(a)
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv6Packet<&'a T> {
    /// Extension headers and upper-layer data, bounded by payload length (not by any
    /// link-layer padding after it).
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[HEADER_LEN..HEADER_LEN + self.payload_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_version(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[0];
        *b = (*b & 0x0f) | (v << 4);
    }

    pub fn set_traffic_class(&mut self, tc: u8) {
        let raw = read_u16(self.buffer.as_ref(), 0);
        write_u16(self.buffer.as_mut(), 0, (raw & 0xf00f) | ((tc as u16) << 4));
    }

    pub fn set_flow_label(&mut self, label: u32) {
        let raw = read_u32(self.buffer.as_ref(), 0);
        write_u32(
            self.buffer.as_mut(),
            0,
            (raw & 0xfff0_0000) | (label & 0x000f_ffff),
        );
    }

    pub fn set_payload_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_next_header(&mut self, v: u8) {
        self.buffer.as_mut()[field::NXT_HDR] = v;
    }

    pub fn set_hop_limit(&mut self, v: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = v;
    }

    pub fn set_src_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = HEADER_LEN + self.payload_len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// An IPv6 fixed header's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Repr {
    pub src_addr: Ipv6Addr,
    pub dst_addr: Ipv6Addr,
    pub next_header: u8,
    /// Bytes after the fixed header.
    pub payload_len: usize,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub flow_label: u32,
}

impl Ipv6Repr {
    /// Hop limit 64, traffic class and flow label 0.
    pub const fn new(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload_len: usize) -> Self {
        Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header,
            payload_len,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        }
    }

    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv6Packet<&T>) -> Result<Ipv6Repr> {
        packet.check_len()?;
        Ok(Ipv6Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            next_header: packet.next_header(),
            payload_len: packet.payload_len() as usize,
            hop_limit: packet.hop_limit(),
            traffic_class: packet.traffic_class(),
            flow_label: packet.flow_label(),
        })
    }

    /// The fixed header `emit` writes: 40 bytes. The payload goes after it.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    pub const fn pseudo_header(&self) -> checksum::PseudoHeader {
        checksum::PseudoHeader::V6 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// # Panics
    /// If the buffer is shorter than 40 bytes or `payload_len` exceeds 65535 (jumbograms are
    /// not emitted).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv6Packet<T>) {
        let len = u16::try_from(self.payload_len).expect("IPv6 payload_len exceeds 65535");
        let word0 = (6 << 28) | ((self.traffic_class as u32) << 20) | (self.flow_label & 0xfffff);
        let data = packet.buffer.as_mut();
        write_u32(data, field::VER_TC_FLOW.start, word0);
        write_u16(data, field::LENGTH.start, len);
        data[field::NXT_HDR] = self.next_header;
        data[field::HOP_LIMIT] = self.hop_limit;
        data[field::SRC_ADDR].copy_from_slice(&self.src_addr.octets());
        data[field::DST_ADDR].copy_from_slice(&self.dst_addr.octets());
    }
}

/// The walk over extension headers from the fixed header to the upper-layer protocol.
///
/// Skips hop-by-hop options (0, first only), routing (43), fragment (44), destination
/// options (60) and AH (51), at most [`ext::MAX_HEADERS`] of them, so a hostile chain costs a
/// bounded amount of work. Anything else (TCP, UDP, ICMPv6, ESP, no-next-header, unknown) is
/// the upper layer.
pub mod ext {
    use crate::wire::{Error, Result, ip_proto};

    /// Extension headers we skip before giving up with [`Error::Unsupported`]. Real traffic
    /// carries two or three.
    pub const MAX_HEADERS: usize = 8;

    /// Whether `next_header` is one of the extension headers [`walk`] skips.
    #[inline(always)]
    pub const fn is_extension(next_header: u8) -> bool {
        matches!(
            next_header,
            ip_proto::HOP_BY_HOP
                | ip_proto::IPV6_ROUTING
                | ip_proto::IPV6_FRAGMENT
                | ip_proto::IPV6_DST_OPTS
                | ip_proto::AH
        )
    }

    /// Where the walk ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Upper {
        /// The upper-layer protocol number.
        pub protocol: u8,
        /// Offset of the upper-layer header from the start of the IPv6 payload.
        pub offset: usize,
        /// A fragment header with a non-zero offset was seen: what follows is the middle of
        /// the upper-layer data, not its header.
        pub non_first_fragment: bool,
    }

    /// Walks the chain starting with `next_header` (the fixed header's) over `payload` (the
    /// IPv6 payload). `Truncated` if a header runs past `payload`; `Malformed` for a
    /// hop-by-hop header anywhere but first; `Unsupported` past [`MAX_HEADERS`].
    #[inline]
    pub fn walk(next_header: u8, payload: &[u8]) -> Result<Upper> {
        let mut next = next_header;
        let mut at = 0;
        for i in 0..=MAX_HEADERS {
            let len = match next {
                ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTING | ip_proto::IPV6_DST_OPTS => {
                    if next == ip_proto::HOP_BY_HOP && i != 0 {
                        return Err(Error::Malformed);
                    }
                    // Hdr Ext Len counts 8-octet units beyond the first.
                    (*payload.get(at + 1).ok_or(Error::Truncated)? as usize + 1) * 8
                }
                ip_proto::IPV6_FRAGMENT => 8,
                // AH counts 4-octet units, minus 2 (RFC 4302).
                ip_proto::AH => (*payload.get(at + 1).ok_or(Error::Truncated)? as usize + 2) * 4,
                protocol => {
                    return Ok(Upper {
                        protocol,
                        offset: at,
                        non_first_fragment: false,
                    });
                }
            };
            if i == MAX_HEADERS {
                return Err(Error::Unsupported);
            }
            let hdr = payload.get(at..at + len).ok_or(Error::Truncated)?;
            if next == ip_proto::IPV6_FRAGMENT && u16::from_be_bytes([hdr[2], hdr[3]]) >> 3 != 0 {
                return Ok(Upper {
                    protocol: hdr[0],
                    offset: at + len,
                    non_first_fragment: true,
                });
            }
            next = hdr[0];
            at += len;
        }
        // The last iteration returns from one arm or the other.
        Err(Error::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::ext::{MAX_HEADERS, Upper, walk};
    use super::*;
    use crate::wire::{EthernetFrame, frames, ip_proto};
    use proptest::prelude::*;

    fn ip(frame: &[u8]) -> Ipv6Packet<&[u8]> {
        Ipv6Packet::new_checked(EthernetFrame::new_checked(frame).unwrap().payload()).unwrap()
    }

    #[test]
    fn real_syn() {
        let p = ip(&frames::TCP_SYN_V6);
        assert_eq!(
            (p.version(), p.traffic_class(), p.flow_label()),
            (6, 0, 0x3884e)
        );
        assert_eq!(
            (p.payload_len(), p.next_header(), p.hop_limit()),
            (40, 6, 64)
        );
        assert_eq!(p.src_addr(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.dst_addr(), "2001:db8::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.payload().len(), 40);
        let r = Ipv6Repr::parse(&p).unwrap();
        let mut buf = [0u8; 40];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
        assert_eq!(
            &buf[..],
            &frames::TCP_SYN_V6[14..54],
            "emit reproduces the kernel's header"
        );
        assert_eq!(walk(p.next_header(), p.payload()), Ok(upper(6, 0, false)));
    }

    fn upper(protocol: u8, offset: usize, non_first_fragment: bool) -> Upper {
        Upper {
            protocol,
            offset,
            non_first_fragment,
        }
    }

    #[test]
    fn real_hop_by_hop() {
        let p = ip(&frames::MLD_REPORT_HBH);
        assert_eq!(p.next_header(), ip_proto::HOP_BY_HOP);
        assert_eq!(
            walk(p.next_header(), p.payload()),
            Ok(upper(ip_proto::ICMPV6, 8, false))
        );
    }

    #[test]
    fn real_fragments_with_hop_by_hop() {
        let first = ip(frames::IPV6_HBH_FRAG_FIRST);
        assert_eq!(
            walk(first.next_header(), first.payload()),
            Ok(upper(17, 16, false))
        );
        let last = ip(&frames::IPV6_HBH_FRAG_LAST);
        assert_eq!(
            walk(last.next_header(), last.payload()),
            Ok(upper(17, 16, true))
        );
    }

    #[test]
    fn setters_and_round_trip() {
        let mut buf = [0u8; 44];
        let mut p = Ipv6Packet::new_unchecked(&mut buf[..]);
        p.set_version(6);
        p.set_traffic_class(0xb8);
        p.set_flow_label(0xfffff);
        p.set_payload_len(4);
        p.set_next_header(ip_proto::IPV6_NO_NEXT);
        p.set_hop_limit(255);
        p.set_src_addr(Ipv6Addr::LOCALHOST);
        p.set_dst_addr(Ipv6Addr::UNSPECIFIED);
        p.payload_mut().copy_from_slice(b"abcd");
        let p = Ipv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (p.traffic_class(), p.flow_label(), p.hop_limit()),
            (0xb8, 0xfffff, 255)
        );
        assert_eq!(p.payload(), b"abcd");
        let r = Ipv6Repr::parse(&p).unwrap();
        let mut again = [0u8; 40];
        r.emit(&mut Ipv6Packet::new_unchecked(&mut again[..]));
        assert_eq!(&again[..], &buf[..40]);
    }

    #[test]
    fn errors() {
        let hdr = &frames::TCP_SYN_V6[14..];
        for len in 0..hdr.len() {
            assert_eq!(
                Ipv6Packet::new_checked(&hdr[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let mut b = [0u8; 80];
        b.copy_from_slice(hdr);
        b[0] = 0x45;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).err(),
            Some(Error::Malformed)
        );
    }

    /// A chain of `kinds` (each 8 bytes, AH 12) ending in UDP.
    fn chain(kinds: &[u8]) -> ([u8; 128], usize) {
        let mut buf = [0u8; 128];
        let mut at = 0;
        for (i, _) in kinds.iter().enumerate() {
            let next = kinds.get(i + 1).copied().unwrap_or(ip_proto::UDP);
            buf[at] = next;
            if kinds[i] == ip_proto::AH {
                buf[at + 1] = 1; // (1 + 2) × 4 = 12 bytes
                at += 12;
            } else {
                at += 8;
            }
        }
        (buf, at)
    }

    #[test]
    fn walk_every_kind() {
        let kinds = [0, 60, 43, 44, 51, 60];
        let (buf, end) = chain(&kinds);
        assert_eq!(end, 52);
        assert_eq!(
            walk(kinds[0], &buf[..end]),
            Ok(upper(ip_proto::UDP, end, false))
        );
        // The upper-layer header itself is not the walker's to check.
        for cut in 0..end {
            assert_eq!(
                walk(kinds[0], &buf[..cut]),
                Err(Error::Truncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn walk_longer_headers() {
        let mut buf = [0u8; 40];
        buf[0] = ip_proto::TCP;
        buf[1] = 3; // 32 bytes of destination options
        assert_eq!(
            walk(ip_proto::IPV6_DST_OPTS, &buf[..32]),
            Ok(upper(6, 32, false))
        );
        assert_eq!(
            walk(ip_proto::IPV6_DST_OPTS, &buf[..31]),
            Err(Error::Truncated)
        );
    }

    #[test]
    fn walk_bounded() {
        let kinds = [60; MAX_HEADERS];
        let (buf, end) = chain(&kinds);
        assert_eq!(walk(60, &buf[..end]).map(|u| u.protocol), Ok(ip_proto::UDP));
        let kinds = [60; MAX_HEADERS + 1];
        let (buf, end) = chain(&kinds);
        assert_eq!(walk(60, &buf[..end]), Err(Error::Unsupported));
    }

    #[test]
    fn walk_rejects_late_hop_by_hop() {
        let (buf, end) = chain(&[60, 0]);
        assert_eq!(walk(60, &buf[..end]), Err(Error::Malformed));
    }

    #[test]
    fn walk_stops_at_non_first_fragment() {
        let (mut buf, end) = chain(&[44, 60]);
        assert_eq!(walk(44, &buf[..end]), Ok(upper(17, 16, false)));
        buf[2] = 0x01; // offset 32 × 8
        // What follows a non-first fragment header is data, never parsed as headers.
        assert_eq!(walk(44, &buf[..8]), Ok(upper(60, 8, true)));
        assert_eq!(walk(44, &buf[..7]), Err(Error::Truncated));
    }

    #[test]
    fn walk_upper_layers_are_not_walked() {
        for proto in [6, 17, 58, 50, 59, 132, 255] {
            assert_eq!(walk(proto, &[]), Ok(upper(proto, 0, false)));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::ipv6(&data);
        }

        #[test]
        fn arbitrary_chains_never_panic(first in any::<u8>(),
                                        data in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(u) = walk(first, &data) {
                prop_assert!(u.offset <= data.len());
            }
        }

        #[test]
        fn round_trip(s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), nh in any::<u8>(),
                      len in 0usize..64, hl in any::<u8>(), tc in any::<u8>(),
                      fl in 0u32..1 << 20) {
            let r = Ipv6Repr { src_addr: s.into(), dst_addr: d.into(), next_header: nh,
                               payload_len: len, hop_limit: hl, traffic_class: tc, flow_label: fl };
            let mut buf = [0u8; 104];
            r.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            let p = Ipv6Packet::new_checked(&buf[..40 + len]).unwrap();
            prop_assert_eq!(Ipv6Repr::parse(&p).unwrap(), r);
        }
    }
}
