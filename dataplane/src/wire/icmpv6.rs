//! ICMPv6 (RFC 4443): the view over any message's header (plus the target address of
//! neighbor solicitations/advertisements, RFC 4861), checksums over the IPv6 pseudo-header,
//! and a `Repr` for echo request/reply.

use super::checksum::PseudoHeader;
use super::{Error, Result, ip_proto, read_u16, write_u16};
use core::net::Ipv6Addr;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Field = 2..4;
    pub const ECHO_IDENT: Field = 4..6;
    pub const ECHO_SEQNO: Field = 6..8;
    pub const PAYLOAD: usize = 8;
    /// Neighbor solicitation/advertisement: after 4 reserved/flag bytes.
    pub const TARGET_ADDR: Field = 8..24;
}

/// Every ICMPv6 message starts with this many bytes (type, code, checksum, 4 more).
pub const HEADER_LEN: usize = field::PAYLOAD;

/// Message types (IANA).
pub mod msg_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const ROUTER_SOLICIT: u8 = 133;
    pub const ROUTER_ADVERT: u8 = 134;
    pub const NEIGHBOR_SOLICIT: u8 = 135;
    pub const NEIGHBOR_ADVERT: u8 = 136;
    pub const MLDV2_REPORT: u8 = 143;
}

const fn has_target(ty: u8) -> bool {
    ty == msg_type::NEIGHBOR_SOLICIT || ty == msg_type::NEIGHBOR_ADVERT
}

/// A view of an ICMPv6 message. The buffer must be exactly the message (the upper-layer
/// data after any extension headers): the checksum covers all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Icmpv6Packet<T> {
        Icmpv6Packet { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Icmpv6Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// 8 bytes for any message; 24 for neighbor solicitations/advertisements, whose target
    /// address [`target_addr`](Self::target_addr) reads.
    pub fn check_len(&self) -> Result<()> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || (has_target(self.msg_type()) && len < field::TARGET_ADDR.end) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    /// Identifier (meaningful for echo messages).
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT.start)
    }

    /// Sequence number (meaningful for echo messages).
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQNO.start)
    }

    /// The target address of a neighbor solicitation or advertisement; `None` for other
    /// messages.
    pub fn target_addr(&self) -> Option<Ipv6Addr> {
        if !has_target(self.msg_type()) {
            return None;
        }
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[field::TARGET_ADDR]);
        Some(Ipv6Addr::from(a))
    }

    /// Whether the checksum verifies with the pseudo-header of `src` and `dst`.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        PseudoHeader::V6 { src, dst }.verify(ip_proto::ICMPV6, self.buffer.as_ref())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Icmpv6Packet<&'a T> {
    /// The bytes after the 8-byte header.
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_msg_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT.start, v);
    }

    pub fn set_echo_seq_no(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQNO.start, v);
    }

    /// Recomputes the checksum with the pseudo-header of `src` and `dst`.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        let c = PseudoHeader::V6 { src, dst }.checksum(ip_proto::ICMPV6, self.buffer.as_ref());
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// An echo request or reply's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Icmpv6Repr<'a> {
    EchoRequest {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
    EchoReply {
        ident: u16,
        seq_no: u16,
        data: &'a [u8],
    },
}

impl<'a> Icmpv6Repr<'a> {
    /// Parses an echo request or reply, verifying the checksum against `src`/`dst`; other
    /// messages are `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Icmpv6Packet<&'a T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum(src, dst) {
            return Err(Error::Checksum);
        }
        let (ident, seq_no, data) = (packet.echo_ident(), packet.echo_seq_no(), packet.payload());
        match (packet.msg_type(), packet.msg_code()) {
            (msg_type::ECHO_REQUEST, 0) => Ok(Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            }),
            (msg_type::ECHO_REPLY, 0) => Ok(Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            }),
            _ => Err(Error::Unsupported),
        }
    }

    /// Header plus echo data: the bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        match self {
            Icmpv6Repr::EchoRequest { data, .. } | Icmpv6Repr::EchoReply { data, .. } => {
                HEADER_LEN + data.len()
            }
        }
    }

    /// Writes header, data and checksum.
    ///
    /// # Panics
    /// If the buffer is not exactly `buffer_len()` bytes (the checksum covers all of it).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        packet: &mut Icmpv6Packet<T>,
        src: Ipv6Addr,
        dst: Ipv6Addr,
    ) {
        let (ty, ident, seq_no, data) = match *self {
            Icmpv6Repr::EchoRequest {
                ident,
                seq_no,
                data,
            } => (msg_type::ECHO_REQUEST, ident, seq_no, data),
            Icmpv6Repr::EchoReply {
                ident,
                seq_no,
                data,
            } => (msg_type::ECHO_REPLY, ident, seq_no, data),
        };
        assert_eq!(
            packet.buffer.as_ref().len(),
            self.buffer_len(),
            "ICMPv6 buffer length"
        );
        packet.set_msg_type(ty);
        packet.set_msg_code(0);
        packet.set_echo_ident(ident);
        packet.set_echo_seq_no(seq_no);
        packet.payload_mut().copy_from_slice(data);
        packet.fill_checksum(src, dst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv6::ext;
    use crate::wire::{EthernetFrame, Ipv6Packet, frames};
    use proptest::prelude::*;

    /// The ICMPv6 message of `frame` and its IPv6 addresses.
    fn icmp(frame: &[u8]) -> (Icmpv6Packet<&[u8]>, Ipv6Addr, Ipv6Addr) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let up = ext::walk(ip.next_header(), ip.payload()).unwrap();
        assert_eq!(up.protocol, ip_proto::ICMPV6);
        let p = Icmpv6Packet::new_checked(&ip.payload()[up.offset..]).unwrap();
        (p, ip.src_addr(), ip.dst_addr())
    }

    #[test]
    fn real_echo_request() {
        let (p, src, dst) = icmp(&frames::ICMPV6_ECHO);
        assert_eq!((p.msg_type(), p.msg_code(), p.checksum()), (128, 0, 0xca7d));
        assert!(p.verify_checksum(src, dst));
        assert!(!p.verify_checksum(dst, Ipv6Addr::LOCALHOST));
        assert_eq!(p.target_addr(), None);
        let r = Icmpv6Repr::parse(&p, src, dst).unwrap();
        assert_eq!(
            r,
            Icmpv6Repr::EchoRequest {
                ident: 0x23e1,
                seq_no: 1,
                data: b"linerate-ping-v6"
            }
        );
        let mut buf = [0u8; 24];
        r.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), src, dst);
        assert_eq!(
            &buf[..],
            &frames::ICMPV6_ECHO[54..],
            "emit reproduces the kernel's bytes"
        );
    }

    #[test]
    fn real_neighbor_solicitation() {
        let (p, src, dst) = icmp(&frames::ICMPV6_NS);
        assert_eq!((p.msg_type(), p.msg_code(), p.checksum()), (135, 0, 0x1c25));
        assert!(p.verify_checksum(src, dst));
        assert_eq!(p.target_addr(), Some("2001:db8::3".parse().unwrap()));
        assert_eq!(dst, "ff02::1:ff00:3".parse::<Ipv6Addr>().unwrap());
        // Source link-layer address option.
        assert_eq!(&p.payload()[16..], &[1, 1, 2, 0, 0, 0, 0, 1]);
        assert_eq!(Icmpv6Repr::parse(&p, src, dst), Err(Error::Unsupported));
        // An NS too short to hold its target is truncated, not a target-less message.
        assert_eq!(
            Icmpv6Packet::new_checked(&p.into_inner()[..23]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn real_mld_report_after_hop_by_hop() {
        let (p, src, dst) = icmp(&frames::MLD_REPORT_HBH);
        assert_eq!(p.msg_type(), msg_type::MLDV2_REPORT);
        assert!(p.verify_checksum(src, dst));
    }

    #[test]
    fn reply_round_trip_and_errors() {
        let (src, dst) = (Ipv6Addr::LOCALHOST, "fe80::1".parse().unwrap());
        let r = Icmpv6Repr::EchoReply {
            ident: 1,
            seq_no: 2,
            data: b"xyz",
        };
        let mut buf = [0u8; 11];
        r.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), src, dst);
        let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(Icmpv6Repr::parse(&p, src, dst), Ok(r));
        assert_eq!(
            Icmpv6Repr::parse(&p, dst, src),
            Ok(r),
            "the sum is symmetric in src/dst"
        );
        assert_eq!(Icmpv6Repr::parse(&p, src, src), Err(Error::Checksum));
        for len in 0..HEADER_LEN {
            assert_eq!(
                Icmpv6Packet::new_checked(&buf[..len]).err(),
                Some(Error::Truncated)
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::icmpv6(&data);
        }

        #[test]
        fn round_trip(req in any::<bool>(), ident in any::<u16>(), seq_no in any::<u16>(),
                      s in any::<[u8; 16]>(), d in any::<[u8; 16]>(),
                      data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let (src, dst) = (Ipv6Addr::from(s), Ipv6Addr::from(d));
            let r = if req {
                Icmpv6Repr::EchoRequest { ident, seq_no, data: &data }
            } else {
                Icmpv6Repr::EchoReply { ident, seq_no, data: &data }
            };
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut Icmpv6Packet::new_unchecked(&mut buf[..]), src, dst);
            let p = Icmpv6Packet::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(Icmpv6Repr::parse(&p, src, dst).unwrap(), r);
        }
    }
}
