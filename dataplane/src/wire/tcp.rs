//! TCP segment headers (RFC 9293): the view, checksums over the IPv4/IPv6 pseudo-header, and
//! a `Repr` of the fixed header. Options are carried as raw bytes, never interpreted: a
//! switch forwards them, and generators pass through whatever they want on the wire.

use super::checksum::PseudoHeader;
use super::{Error, Result, ip_proto, read_u16, read_u32, write_u16, write_u32};
use core::ops::BitOr;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const SRC_PORT: Field = 0..2;
    pub const DST_PORT: Field = 2..4;
    pub const SEQ_NUM: Field = 4..8;
    pub const ACK_NUM: Field = 8..12;
    /// Data offset in the high nibble; the low nibble is reserved.
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WIN_SIZE: Field = 14..16;
    pub const CHECKSUM: Field = 16..18;
    pub const URGENT: Field = 18..20;
    pub const OPTIONS: usize = 20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::OPTIONS;
/// Longest header: data offset 15.
pub const MAX_HEADER_LEN: usize = 60;

/// The eight control bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: TcpFlags = TcpFlags(0x01);
    pub const SYN: TcpFlags = TcpFlags(0x02);
    pub const RST: TcpFlags = TcpFlags(0x04);
    pub const PSH: TcpFlags = TcpFlags(0x08);
    pub const ACK: TcpFlags = TcpFlags(0x10);
    pub const URG: TcpFlags = TcpFlags(0x20);
    pub const ECE: TcpFlags = TcpFlags(0x40);
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

/// A view of a TCP segment. The buffer must be exactly the segment (TCP has no length field:
/// it ends where the IP payload does).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> TcpPacket<T> {
        TcpPacket { buffer }
    }

    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<TcpPacket<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer is shorter than 20 bytes or the data offset; `Malformed` if
    /// the data offset is under 5 words.
    #[inline(always)]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let header_len = self.header_len() as usize;
        if header_len < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if data.len() < header_len {
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

    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ_NUM.start)
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK_NUM.start)
    }

    /// Header length in bytes (data offset × 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    pub fn flags(&self) -> TcpFlags {
        TcpFlags(self.buffer.as_ref()[field::FLAGS])
    }

    pub fn fin(&self) -> bool {
        self.flags().contains(TcpFlags::FIN)
    }

    pub fn syn(&self) -> bool {
        self.flags().contains(TcpFlags::SYN)
    }

    pub fn rst(&self) -> bool {
        self.flags().contains(TcpFlags::RST)
    }

    pub fn psh(&self) -> bool {
        self.flags().contains(TcpFlags::PSH)
    }

    pub fn ack(&self) -> bool {
        self.flags().contains(TcpFlags::ACK)
    }

    pub fn urg(&self) -> bool {
        self.flags().contains(TcpFlags::URG)
    }

    pub fn ece(&self) -> bool {
        self.flags().contains(TcpFlags::ECE)
    }

    pub fn cwr(&self) -> bool {
        self.flags().contains(TcpFlags::CWR)
    }

    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WIN_SIZE.start)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT.start)
    }

    /// The option bytes (with their padding) between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len() as usize]
    }

    /// Whether the checksum over the whole segment verifies under `ph`.
    pub fn verify_checksum(&self, ph: &PseudoHeader) -> bool {
        ph.verify(ip_proto::TCP, self.buffer.as_ref())
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> TcpPacket<&'a T> {
    /// The bytes after the header and options.
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[self.header_len() as usize..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT.start, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT.start, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ_NUM.start, v);
    }

    pub fn set_ack_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::ACK_NUM.start, v);
    }

    /// Sets the data offset from a length in bytes (a multiple of 4, 20..=60), keeping the
    /// reserved bits.
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::DATA_OFF];
        *b = (*b & 0x0f) | ((len / 4) << 4);
    }

    pub fn set_flags(&mut self, flags: TcpFlags) {
        self.buffer.as_mut()[field::FLAGS] = flags.0;
    }

    pub fn set_window_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::WIN_SIZE.start, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_urgent_at(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT.start, v);
    }

    /// Recomputes the checksum over the whole segment under `ph`.
    pub fn fill_checksum(&mut self, ph: &PseudoHeader) {
        self.set_checksum(0);
        let c = ph.checksum(ip_proto::TCP, self.buffer.as_ref());
        self.set_checksum(c);
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let start = self.header_len() as usize;
        &mut self.buffer.as_mut()[start..]
    }
}

/// A TCP segment's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpRepr<'a> {
    pub src_port: u16,
    pub dst_port: u16,
    pub seq_number: u32,
    pub ack_number: u32,
    pub flags: TcpFlags,
    pub window_len: u16,
    pub urgent_at: u16,
    /// Raw option bytes, passed through. `emit` pads them with zeros (end-of-options) to a
    /// multiple of 4; `parse` returns them padding included.
    pub options: &'a [u8],
    pub payload: &'a [u8],
}

impl<'a> TcpRepr<'a> {
    /// Parses a segment, verifying its checksum under `ph` (`Error::Checksum`).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &TcpPacket<&'a T>,
        ph: &PseudoHeader,
    ) -> Result<Self> {
        packet.check_len()?;
        if !packet.verify_checksum(ph) {
            return Err(Error::Checksum);
        }
        let data: &'a [u8] = packet.buffer.as_ref();
        let header_len = packet.header_len() as usize;
        Ok(TcpRepr {
            src_port: packet.src_port(),
            dst_port: packet.dst_port(),
            seq_number: packet.seq_number(),
            ack_number: packet.ack_number(),
            flags: packet.flags(),
            window_len: packet.window_len(),
            urgent_at: packet.urgent_at(),
            options: &data[HEADER_LEN..header_len],
            payload: &data[header_len..],
        })
    }

    /// Header with padded options.
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options.len().next_multiple_of(4)
    }

    /// Header plus payload: the bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload.len()
    }

    /// Writes header, options, payload and checksum (under `ph`).
    ///
    /// # Panics
    /// If the buffer is not exactly `buffer_len()` bytes (the checksum covers all of it), or
    /// the options exceed 40 bytes.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut TcpPacket<T>, ph: &PseudoHeader) {
        let header_len = self.header_len();
        assert!(header_len <= MAX_HEADER_LEN, "TCP options exceed 40 bytes");
        assert_eq!(
            packet.buffer.as_ref().len(),
            self.buffer_len(),
            "TCP buffer length"
        );
        packet.set_src_port(self.src_port);
        packet.set_dst_port(self.dst_port);
        packet.set_seq_number(self.seq_number);
        packet.set_ack_number(self.ack_number);
        packet.buffer.as_mut()[field::DATA_OFF] = ((header_len / 4) as u8) << 4;
        packet.set_flags(self.flags);
        packet.set_window_len(self.window_len);
        packet.set_urgent_at(self.urgent_at);
        let opts = packet.options_mut();
        opts[..self.options.len()].copy_from_slice(self.options);
        opts[self.options.len()..].fill(0);
        packet.payload_mut().copy_from_slice(self.payload);
        packet.fill_checksum(ph);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet, frames};
    use core::net::Ipv6Addr;
    use proptest::prelude::*;

    #[test]
    fn real_syn_v4_with_options() {
        let eth = EthernetFrame::new_checked(&frames::TCP_SYN_V4_VLAN[..]).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        let ph = ip.pseudo_header();
        let p = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.header_len()),
            (40000, 80, 40)
        );
        assert_eq!((p.seq_number(), p.ack_number()), (0x4caa_b6ea, 0));
        assert_eq!(p.flags(), TcpFlags::SYN);
        assert!(p.syn() && !p.ack() && !p.fin() && !p.rst() && !p.psh());
        assert!(!p.urg() && !p.ece() && !p.cwr());
        assert_eq!(
            (p.window_len(), p.checksum(), p.urgent_at()),
            (64480, 0xbf4a, 0)
        );
        // MSS 1240, SACK permitted, timestamps, NOP, window scale 10.
        assert_eq!(&p.options()[..4], &[2, 4, 0x04, 0xd8]);
        assert_eq!(&p.options()[16..], &[1, 3, 3, 10]);
        assert!(p.payload().is_empty());
        assert!(p.verify_checksum(&ph));

        let r = TcpRepr::parse(&p, &ph).unwrap();
        let mut buf = [0u8; 40];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &ph);
        assert_eq!(&buf[..], ip.payload(), "emit reproduces the kernel's bytes");
    }

    #[test]
    fn real_syn_v6() {
        let eth = EthernetFrame::new_checked(&frames::TCP_SYN_V6[..]).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let ph = ip.pseudo_header();
        let p = TcpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.checksum()),
            (40001, 443, 0x9d1a)
        );
        assert!(p.syn());
        assert!(p.verify_checksum(&ph));
        let wrong = PseudoHeader::V6 {
            src: ip.src_addr(),
            dst: Ipv6Addr::LOCALHOST,
        };
        assert!(!p.verify_checksum(&wrong));
        assert_eq!(TcpRepr::parse(&p, &wrong), Err(Error::Checksum));
    }

    #[test]
    fn setters() {
        let mut buf = [0u8; 28];
        let mut p = TcpPacket::new_unchecked(&mut buf[..]);
        p.set_header_len(24);
        p.set_src_port(1);
        p.set_dst_port(2);
        p.set_seq_number(3);
        p.set_ack_number(4);
        p.set_flags(TcpFlags::ACK | TcpFlags::PSH | TcpFlags::FIN);
        p.set_window_len(5);
        p.set_urgent_at(6);
        p.options_mut().copy_from_slice(&[1, 1, 1, 0]);
        p.payload_mut().copy_from_slice(b"data");
        let ph = PseudoHeader::V4 {
            src: [1, 1, 1, 1].into(),
            dst: [2, 2, 2, 2].into(),
        };
        p.fill_checksum(&ph);
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(
            (p.src_port(), p.dst_port(), p.seq_number(), p.ack_number()),
            (1, 2, 3, 4)
        );
        assert!(p.ack() && p.psh() && p.fin() && !p.syn());
        assert_eq!((p.window_len(), p.urgent_at(), p.header_len()), (5, 6, 24));
        assert_eq!(
            (p.options(), p.payload()),
            (&[1, 1, 1, 0][..], &b"data"[..])
        );
        assert!(p.verify_checksum(&ph));
    }

    #[test]
    fn errors() {
        let seg = &frames::TCP_SYN_V4_VLAN[38..];
        for len in 0..seg.len() {
            assert_eq!(
                TcpPacket::new_checked(&seg[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let mut b = [0u8; 40];
        b.copy_from_slice(seg);
        b[12] = 0x40;
        assert_eq!(TcpPacket::new_checked(&b[..]).err(), Some(Error::Malformed));
        b[12] = 0xf0;
        assert_eq!(TcpPacket::new_checked(&b[..]).err(), Some(Error::Truncated));
    }

    #[test]
    fn odd_options_are_padded() {
        let ph = PseudoHeader::V6 {
            src: Ipv6Addr::LOCALHOST,
            dst: Ipv6Addr::LOCALHOST,
        };
        let r = TcpRepr {
            src_port: 9,
            dst_port: 10,
            seq_number: 1,
            ack_number: 2,
            flags: TcpFlags::ACK,
            window_len: 3,
            urgent_at: 0,
            options: &[2, 4, 5, 0xb4, 1, 3, 3],
            payload: b"x",
        };
        assert_eq!((r.header_len(), r.buffer_len()), (28, 29));
        let mut buf = [0xffu8; 29];
        r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &ph);
        let p = TcpPacket::new_checked(&buf[..]).unwrap();
        let back = TcpRepr::parse(&p, &ph).unwrap();
        assert_eq!(back.options, &[2, 4, 5, 0xb4, 1, 3, 3, 0]);
        assert_eq!(back.payload, b"x");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::tcp(&data);
        }

        #[test]
        fn round_trip(ports in any::<[u16; 2]>(), nums in any::<[u32; 2]>(), flags in any::<u8>(),
                      win in any::<u16>(), urg in any::<u16>(), v6 in any::<bool>(),
                      s in any::<[u8; 16]>(), d in any::<[u8; 16]>(), words in 0usize..=10,
                      bytes in proptest::collection::vec(any::<u8>(), 40..240)) {
            let ph = if v6 {
                PseudoHeader::V6 { src: s.into(), dst: d.into() }
            } else {
                let (s4, d4) = ([s[0], s[1], s[2], s[3]], [d[0], d[1], d[2], d[3]]);
                PseudoHeader::V4 { src: s4.into(), dst: d4.into() }
            };
            let (options, payload) = bytes.split_at(words * 4);
            let r = TcpRepr {
                src_port: ports[0], dst_port: ports[1], seq_number: nums[0], ack_number: nums[1],
                flags: TcpFlags(flags), window_len: win, urgent_at: urg, options, payload,
            };
            let mut buf = vec![0u8; r.buffer_len()];
            r.emit(&mut TcpPacket::new_unchecked(&mut buf[..]), &ph);
            let p = TcpPacket::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum(&ph));
            prop_assert_eq!(TcpRepr::parse(&p, &ph).unwrap(), r);
        }
    }
}
