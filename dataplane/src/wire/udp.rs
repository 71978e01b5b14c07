//! UDP datagrams (RFC 768): the view, checksums over the IPv4/IPv6 pseudo-header, the `Repr`.

use super::checksum::PseudoHeader;
use super::{Error, Result, ip_proto, read_u16, write_u16};

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const LENGTH: Field = 4..6;
    pub const CHECKSUM: Field = 6..8;
    pub const PAYLOAD: usize = 8;
}

pub const HEADER_LEN: usize = field::PAYLOAD;

/// A view of a UDP datagram. The length field bounds it; bytes after it are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> UdpPacket<T> {
        UdpPacket { buffer }
    }

    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<UdpPacket<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer is shorter than 8 bytes or the length field; `Malformed` if
    /// the length field is under 8 (jumbograms' zero length included: we do not take them).
    #[inline(always)]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let len = self.len() as usize;
        if len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if data.len() < len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT.start)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT.start)
    }

    /// Header plus payload, in bytes.
    #[inline]
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Whether the checksum verifies. Zero means "not computed", allowed over IPv4 only
    /// (RFC 8200 §8.1 makes it mandatory over IPv6).
    pub fn verify_checksum(&self, ph: &PseudoHeader) -> bool {
        if self.checksum() == 0 {
            return matches!(ph, PseudoHeader::V4 { .. });
        }
        ph.verify(ip_proto::UDP, &self.buffer.as_ref()[..self.len() as usize])
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> UdpPacket<&'a T> {
    /// The bytes after the header, up to the length field.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[HEADER_LEN..self.len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }

    pub fn set_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    /// Computes the checksum over the first `len()` bytes. A computed zero is sent as
    /// 0xffff, since zero on the wire means "no checksum".
    pub fn fill_checksum(&mut self, ph: &PseudoHeader) {
        self.set_checksum(0);
        let len = self.len() as usize;
        let c = ph.checksum(ip_proto::UDP, &self.buffer.as_ref()[..len]);
        self.set_checksum(if c == 0 { 0xffff } else { c });
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }
}

/// A UDP datagram's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub payload: &'a [u8],
}

impl<'a> UdpRepr<'a> {
    /// Parses a datagram, verifying its checksum under `ph` (`Error::Checksum`).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &UdpPacket<&'a T>,
        ph: &PseudoHeader,
    ) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum(ph) {
            return Err(Error::Checksum);
        }
        Ok(UdpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            payload: packet.payload(),
        })
    }

    /// Header plus payload: the bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Writes header, payload and checksum (under `ph`).
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len()` or that exceeds 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut UdpPacket<T>, ph: &PseudoHeader) {
        let len = u16::try_from(self.buffer_len()).expect("UDP datagram exceeds 65535 bytes");
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_len(len);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(ph);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::ext;
    use crate::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet, frames};
    use core::net::{Ipv4Addr, Ipv6Addr};
    use proptest::prelude::*;

    #[test]
    fn real_dns_query() {
        let eth = EthernetFrame::new_checked(&frames::DNS_QUERY_V4[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let ph = ip.pseudo_header();
        let p = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.len(), p.checksum()),
            (53000, 53, 37, 0xc2c9)
        );
        assert!(p.verify_checksum(&ph));
        let r = UdpRepr::parse(&p, &ph).unwrap();
        assert_eq!(&r.payload[12..24], b"\x07example\x03com");
        let mut buf = [0u8; 37];
        r.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &ph);
        assert_eq!(
            &buf[..],
            &frames::DNS_QUERY_V4[34..],
            "emit reproduces the kernel's bytes"
        );
    }

    #[test]
    fn real_first_fragment_header() {
        // The checksum covers the whole datagram, so only the header is checkable here.
        let eth = EthernetFrame::new_checked(frames::IPV6_HBH_FRAG_FIRST).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let up = ext::walk(ip.next_header(), ip.payload()).unwrap();
        let l4 = &ip.payload()[up.offset..];
        let p = UdpPacket::new_unchecked(l4);
        assert_eq!((p.src_port(), p.dst_port(), p.len()), (40002, 4242, 1240));
        assert_eq!(
            p.check_len(),
            Err(Error::Truncated),
            "the rest is in the next fragment"
        );
    }

    #[test]
    fn checksum_rules() {
        let ph4 = PseudoHeader::V4 {
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
        };
        let ph6 = PseudoHeader::V6 {
            src: Ipv6Addr::LOCALHOST,
            dst: Ipv6Addr::LOCALHOST,
        };
        let r = UdpRepr {
            src_port: 1,
            dst_port: 2,
            payload: b"hello",
        };
        for ph in [ph4, ph6] {
            let mut buf = [0u8; 13];
            r.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &ph);
            let mut p = UdpPacket::new_checked(&mut buf[..]).unwrap();
            assert!(p.verify_checksum(&ph));
            p.set_checksum(0);
            assert_eq!(
                p.verify_checksum(&ph),
                ph == ph4,
                "zero means none only over IPv4"
            );
            p.set_checksum(1);
            assert!(!p.verify_checksum(&ph));
        }
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Pick a payload word that makes the sum come out to 0xffff, i.e. checksum zero.
        let ph = PseudoHeader::V4 {
            src: Ipv4Addr::new(0, 0, 0, 0),
            dst: Ipv4Addr::new(0, 0, 0, 0),
        };
        let mut buf = [0u8; 10];
        let r = UdpRepr {
            src_port: 0,
            dst_port: 0,
            payload: &[0, 0],
        };
        r.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &ph);
        // Sum so far: proto 17 + length 10 (pseudo) + length 10 (header) = 37.
        let w = 0xffff - 37u16;
        buf[8..10].copy_from_slice(&w.to_be_bytes());
        let mut p = UdpPacket::new_unchecked(&mut buf[..]);
        p.fill_checksum(&ph);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum(&ph));
    }

    #[test]
    fn errors() {
        let d = &frames::DNS_QUERY_V4[34..];
        for len in 0..d.len() {
            assert_eq!(
                UdpPacket::new_checked(&d[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let mut b = [0u8; 37];
        b.copy_from_slice(d);
        b[5] = 7;
        assert_eq!(UdpPacket::new_checked(&b[..]).err(), Some(Error::Malformed));
        b[5] = 8;
        assert_eq!(
            UdpPacket::new_checked(&b[..]).unwrap().payload(),
            &[] as &[u8]
        );
        let ph = PseudoHeader::V4 {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(192, 0, 2, 2),
        };
        let mut b = [0u8; 37];
        b.copy_from_slice(d);
        b[20] ^= 1;
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(UdpRepr::parse(&p, &ph), Err(Error::Checksum));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::udp(&data);
        }

        #[test]
        fn round_trip(sp in any::<u16>(), dp in any::<u16>(), v6 in any::<bool>(),
                      s in any::<[u8; 16]>(), d in any::<[u8; 16]>(),
                      payload in proptest::collection::vec(any::<u8>(), 0..200),
                      slack in 0usize..4) {
            let ph = if v6 {
                PseudoHeader::V6 { src: s.into(), dst: d.into() }
            } else {
                let (s4, d4) = ([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]]);
                PseudoHeader::V4 { src: s4.into(), dst: d4.into() }
            };
            let r = UdpRepr { src_port: sp, dst_port: dp, payload: &payload };
            // Bytes past the length field are not part of the datagram.
            let mut buf = vec![0xeeu8; r.buffer_len() + slack];
            r.emit(&mut UdpPacket::new_unchecked(&mut buf[..]), &ph);
            let p = UdpPacket::new_checked(&buf[..]).unwrap();
            prop_assert_ne!(p.checksum(), 0);
            prop_assert_eq!(UdpRepr::parse(&p, &ph).unwrap(), r);
        }
    }
}
