//! IPv4 headers (RFC 791): the view, header checksum verify/fill, the in-place TTL decrement
//! a router does per packet (RFC 1624 incremental checksum), and the `Repr`.
//!
//! Options are skipped via IHL, never interpreted. The payload ends at `total_len`, not at
//! the end of the buffer: short frames carry Ethernet padding past it.

use super::checksum;
use super::{Error, Result, read_u16, write_u16};
use core::net::Ipv4Addr;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const LENGTH: Field = 2..4;
    pub const IDENT: Field = 4..6;
    pub const FLG_OFF: Field = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Field = 10..12;
    pub const SRC_ADDR: Field = 12..16;
    pub const DST_ADDR: Field = 16..20;
}

/// Length of a header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

const DONT_FRAG: u16 = 0x4000;
const MORE_FRAGS: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1fff;

/// A view of an IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub const fn new_unchecked(buffer: T) -> Ipv4Packet<T> {
        Ipv4Packet { buffer }
    }

    #[inline(always)]
    pub fn new_checked(buffer: T) -> Result<Ipv4Packet<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// `Truncated` if the buffer is shorter than 20 bytes, IHL or total length; `Malformed`
    /// if the version is not 4, IHL < 5, or total length < IHL. Does not verify the checksum.
    #[inline(always)]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let ver_ihl = data[field::VER_IHL];
        let total_len = self.total_len() as usize;
        // Version 4 and IHL >= 5 in one compare: 0x45..=0x4f.
        if ver_ihl >> 4 != 4 || ver_ihl < 0x45 || total_len < self.header_len() as usize {
            return Err(Error::Malformed);
        }
        if data.len() < total_len {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    #[inline(always)]
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL × 4), options included.
    #[inline(always)]
    pub fn header_len(&self) -> u8 {
        (self.buffer.as_ref()[field::VER_IHL] & 0x0f) * 4
    }

    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// Header plus payload, in bytes.
    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH.start)
    }

    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT.start)
    }

    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start) & DONT_FRAG != 0
    }

    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLG_OFF.start) & MORE_FRAGS != 0
    }

    /// Fragment offset in bytes (the field counts 8-byte units). Non-zero means this fragment
    /// does not carry the L4 header.
    #[inline(always)]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLG_OFF.start) & OFFSET_MASK) << 3
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM.start)
    }

    #[inline(always)]
    pub fn src_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[12], d[13], d[14], d[15])
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> Ipv4Addr {
        let d = self.buffer.as_ref();
        Ipv4Addr::new(d[16], d[17], d[18], d[19])
    }

    /// The option bytes between the fixed header and the payload.
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.header_len() as usize]
    }

    /// Whether the header checksum (over IHL × 4 bytes) verifies.
    #[inline(always)]
    pub fn verify_checksum(&self) -> bool {
        let data = self.buffer.as_ref();
        let Some(fixed) = data.first_chunk::<HEADER_LEN>() else {
            return false;
        };
        // This runs once per packet, so: 32-bit words, the fixed header unrolled, and no byte
        // swaps. The one's-complement sum commutes with byte order (RFC 1071 §2(B)) and all
        // ones reads the same either way round, so words are summed as the CPU loads them.
        let w = |b: &[u8; 4]| u32::from_ne_bytes(*b) as u64;
        let mut acc: u64 = fixed.as_chunks::<4>().0.iter().map(w).sum();
        let header_len = self.header_len() as usize;
        if header_len > HEADER_LEN {
            let options = data.get(HEADER_LEN..header_len).unwrap_or_default();
            acc += options.as_chunks::<4>().0.iter().map(w).sum::<u64>();
        }
        checksum::folds_to_ones(acc)
    }

    /// The pseudo-header the payload's TCP/UDP checksum covers.
    pub fn pseudo_header(&self) -> checksum::PseudoHeader {
        checksum::PseudoHeader::V4 {
            src: self.src_addr(),
            dst: self.dst_addr(),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> Ipv4Packet<&'a T> {
    /// The payload: from IHL × 4 to total length, leaving out any link-layer padding.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[self.header_len() as usize..self.total_len() as usize]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_version(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0x0f) | (v << 4);
    }

    /// Sets IHL from a length in bytes (a multiple of 4, 20..=60).
    pub fn set_header_len(&mut self, len: u8) {
        let b = &mut self.buffer.as_mut()[field::VER_IHL];
        *b = (*b & 0xf0) | ((len / 4) & 0x0f);
    }

    pub fn set_dscp(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (v << 2);
    }

    pub fn set_ecn(&mut self, v: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & !0x03) | (v & 0x03);
    }

    pub fn set_total_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH.start, v);
    }

    pub fn set_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT.start, v);
    }

    fn set_flag(&mut self, flag: u16, on: bool) {
        let raw = read_u16(self.buffer.as_ref(), field::FLG_OFF.start);
        let raw = if on { raw | flag } else { raw & !flag };
        write_u16(self.buffer.as_mut(), field::FLG_OFF.start, raw);
    }

    pub fn set_dont_frag(&mut self, on: bool) {
        self.set_flag(DONT_FRAG, on);
    }

    pub fn set_more_frags(&mut self, on: bool) {
        self.set_flag(MORE_FRAGS, on);
    }

    /// Sets the fragment offset from bytes (a multiple of 8).
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let raw = read_u16(self.buffer.as_ref(), field::FLG_OFF.start);
        let raw = (raw & !OFFSET_MASK) | (bytes >> 3);
        write_u16(self.buffer.as_mut(), field::FLG_OFF.start, raw);
    }

    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM.start, v);
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }

    /// Recomputes the header checksum over IHL × 4 bytes.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(&self.buffer.as_ref()[..self.header_len() as usize]);
        self.set_checksum(c);
    }

    /// Decrements the TTL and patches the checksum incrementally (RFC 1624) instead of
    /// re-summing the header. Returns the new TTL, or `None` (packet untouched) if the TTL was
    /// already 0. A router drops instead of forwarding when this returns `Some(0)`.
    #[inline]
    pub fn dec_ttl_update_checksum(&mut self) -> Option<u8> {
        let ttl = self.ttl().checked_sub(1)?;
        // TTL is the high byte of its 16-bit checksum word.
        let hc = checksum::update_high_byte_decrement(self.checksum());
        self.set_ttl(ttl);
        self.set_checksum(hc);
        Some(ttl)
    }

    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len() as usize;
        &mut self.buffer.as_mut()[HEADER_LEN..end]
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let (start, end) = (self.header_len() as usize, self.total_len() as usize);
        &mut self.buffer.as_mut()[start..end]
    }
}

/// An IPv4 header's values (options are not represented: `emit` writes none, `parse` skips
/// them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src_addr: Ipv4Addr,
    pub dst_addr: Ipv4Addr,
    pub protocol: u8,
    /// Bytes after the header, up to total length.
    pub payload_len: usize,
    pub ttl: u8,
    pub dscp: u8,
    pub ecn: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub more_frags: bool,
    /// In bytes, a multiple of 8.
    pub frag_offset: u16,
}

impl Ipv4Repr {
    /// An unfragmented datagram with TTL 64 and DF set, as hosts send.
    pub const fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize) -> Self {
        Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            protocol,
            payload_len,
            ttl: 64,
            dscp: 0,
            ecn: 0,
            ident: 0,
            dont_frag: true,
            more_frags: false,
            frag_offset: 0,
        }
    }

    /// Parses the header, verifying its checksum (`Error::Checksum`).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &Ipv4Packet<&T>) -> Result<Ipv4Repr> {
        packet.check_len()?;
        if !packet.verify_checksum() {
            return Err(Error::Checksum);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: packet.payload().len(),
            ttl: packet.ttl(),
            dscp: packet.dscp(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
            more_frags: packet.more_frags(),
            frag_offset: packet.frag_offset(),
        })
    }

    /// The header `emit` writes: 20 bytes, no options. The payload goes after it.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// The pseudo-header the payload's TCP/UDP checksum covers.
    pub const fn pseudo_header(&self) -> checksum::PseudoHeader {
        checksum::PseudoHeader::V4 {
            src: self.src_addr,
            dst: self.dst_addr,
        }
    }

    /// Writes the header and its checksum.
    ///
    /// # Panics
    /// If the buffer is shorter than 20 bytes or `payload_len` does not fit total length.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Ipv4Packet<T>) {
        let total = u16::try_from(HEADER_LEN + self.payload_len)
            .expect("IPv4 payload_len exceeds the 16-bit total length");
        let data = packet.buffer.as_mut();
        data[field::VER_IHL] = 0x45;
        data[field::DSCP_ECN] = (self.dscp << 2) | (self.ecn & 0x03);
        write_u16(data, field::LENGTH.start, total);
        write_u16(data, field::IDENT.start, self.ident);
        let flags = if self.dont_frag { DONT_FRAG } else { 0 }
            | if self.more_frags { MORE_FRAGS } else { 0 }
            | (self.frag_offset >> 3);
        write_u16(data, field::FLG_OFF.start, flags);
        data[field::TTL] = self.ttl;
        data[field::PROTOCOL] = self.protocol;
        data[field::SRC_ADDR].copy_from_slice(&self.src_addr.octets());
        data[field::DST_ADDR].copy_from_slice(&self.dst_addr.octets());
        packet.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetFrame, frames, ip_proto};
    use proptest::prelude::*;

    fn ip(frame: &[u8]) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_checked(EthernetFrame::new_checked(frame).unwrap().payload()).unwrap()
    }

    #[test]
    fn real_dns_query() {
        let p = ip(&frames::DNS_QUERY_V4);
        assert_eq!((p.version(), p.header_len(), p.total_len()), (4, 20, 57));
        assert_eq!((p.dscp(), p.ecn(), p.ident()), (0, 0, 0xaa2f));
        assert!(p.dont_frag() && !p.more_frags());
        assert_eq!(
            (p.frag_offset(), p.ttl(), p.protocol()),
            (0, 64, ip_proto::UDP)
        );
        assert_eq!(p.checksum(), 0x0c81);
        assert!(p.verify_checksum());
        assert_eq!(p.src_addr(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 0, 2, 2));
        assert!(p.options().is_empty());
        assert_eq!(p.payload().len(), 37);

        let r = Ipv4Repr::parse(&p).unwrap();
        let mut buf = [0u8; 20];
        r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        assert_eq!(
            &buf[..],
            &frames::DNS_QUERY_V4[14..34],
            "emit reproduces the kernel's header"
        );
    }

    #[test]
    fn real_fragments() {
        let first = ip(&frames::IPV4_FRAG_FIRST);
        assert!(first.verify_checksum() && first.more_frags());
        assert_eq!((first.frag_offset(), first.payload().len()), (0, 72));
        let last = ip(&frames::IPV4_FRAG_LAST);
        assert!(last.verify_checksum() && !last.more_frags() && !last.dont_frag());
        assert_eq!((last.frag_offset(), last.payload().len()), (72, 36));
        assert_eq!(first.ident(), last.ident());
    }

    #[test]
    fn checksum_mismatch_detected() {
        let mut f = frames::ICMPV4_ECHO;
        assert!(ip(&f).verify_checksum());
        f[14 + 8] ^= 1;
        assert!(!ip(&f).verify_checksum());
        let p = ip(&f);
        assert_eq!(Ipv4Repr::parse(&p), Err(Error::Checksum));
    }

    #[test]
    fn padding_is_not_payload() {
        let mut f = frames::ICMPV4_ECHO.to_vec();
        f.resize(64, 0);
        let p = ip(&f);
        assert_eq!(p.payload(), &frames::ICMPV4_ECHO[34..]);
    }

    #[test]
    fn options_skipped_via_ihl() {
        // 24-byte header: one Router Alert option (RFC 2113), as IGMP sends.
        let mut buf = [0u8; 24 + 4];
        let mut r = Ipv4Repr::new([10, 0, 0, 1].into(), [224, 0, 0, 22].into(), 2, 4);
        r.ttl = 1;
        r.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]));
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_header_len(24);
        p.set_total_len(28);
        p.options_mut().copy_from_slice(&[0x94, 0x04, 0x00, 0x00]);
        p.payload_mut().copy_from_slice(&[0x22, 0, 0, 0]);
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!(p.options(), &[0x94, 0x04, 0, 0]);
        assert_eq!(p.payload(), &[0x22, 0, 0, 0]);
        let back = Ipv4Repr::parse(&p).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn dec_ttl_matches_full_recompute() {
        for ttl in [255u8, 64, 2, 1] {
            let mut f = frames::DNS_QUERY_V4;
            let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
            p.set_ttl(ttl);
            p.fill_checksum();
            assert_eq!(p.dec_ttl_update_checksum(), Some(ttl - 1));
            let incremental = p.checksum();
            p.fill_checksum();
            assert_eq!(incremental, p.checksum(), "ttl {ttl}");
            assert!(p.verify_checksum());
        }
        let mut f = frames::DNS_QUERY_V4;
        let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
        p.set_ttl(0);
        p.fill_checksum();
        let before = f;
        let mut p = Ipv4Packet::new_unchecked(&mut f[14..]);
        assert_eq!(p.dec_ttl_update_checksum(), None);
        assert_eq!(f, before);
    }

    #[test]
    fn setters() {
        let mut buf = [0u8; 40];
        let mut p = Ipv4Packet::new_unchecked(&mut buf[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_dscp(46);
        p.set_ecn(3);
        p.set_total_len(40);
        p.set_ident(0x1234);
        p.set_dont_frag(true);
        p.set_more_frags(true);
        p.set_frag_offset(8 * 100);
        p.set_dont_frag(false);
        p.set_ttl(3);
        p.set_protocol(ip_proto::TCP);
        p.set_src_addr([1, 2, 3, 4].into());
        p.set_dst_addr([5, 6, 7, 8].into());
        p.fill_checksum();
        let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
        assert_eq!((p.dscp(), p.ecn(), p.ident(), p.ttl()), (46, 3, 0x1234, 3));
        assert_eq!(
            (p.dont_frag(), p.more_frags(), p.frag_offset()),
            (false, true, 800)
        );
        assert_eq!(
            (p.src_addr(), p.dst_addr()),
            ([1, 2, 3, 4].into(), [5, 6, 7, 8].into())
        );
        assert!(p.verify_checksum());
    }

    #[test]
    fn errors() {
        let hdr = &frames::DNS_QUERY_V4[14..];
        for len in 0..hdr.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&hdr[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let with = |i: usize, v: u8| {
            let mut b = [0u8; 57];
            b.copy_from_slice(hdr);
            b[i] = v;
            Ipv4Packet::new_checked(&b[..]).err()
        };
        assert_eq!(with(0, 0x65), Some(Error::Malformed), "version 6");
        assert_eq!(with(0, 0x44), Some(Error::Malformed), "IHL 4");
        assert_eq!(with(0, 0x40), Some(Error::Malformed), "IHL 0");
        assert_eq!(
            with(3, 19),
            Some(Error::Malformed),
            "total length < IHL × 4"
        );
        assert_eq!(
            with(3, 58),
            Some(Error::Truncated),
            "total length past the buffer"
        );
        assert_eq!(
            with(0, 0x4f),
            Some(Error::Malformed),
            "60-byte header in 57 bytes"
        );
        assert_eq!(with(3, 20), None, "empty payload is fine");
    }

    fn arb_repr() -> impl Strategy<Value = Ipv4Repr> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            0usize..100,
            any::<[u8; 4]>(),
            any::<u16>(),
        )
            .prop_map(|(s, d, proto, len, b, frag)| Ipv4Repr {
                src_addr: s.into(),
                dst_addr: d.into(),
                protocol: proto,
                payload_len: len,
                ttl: b[0],
                dscp: b[1] & 0x3f,
                ecn: b[2] & 3,
                ident: u16::from_be_bytes([b[3], b[0]]),
                dont_frag: frag & 1 != 0,
                more_frags: frag & 2 != 0,
                frag_offset: frag & !7,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::ipv4(&data);
        }

        #[test]
        fn round_trip(r in arb_repr()) {
            let mut buf = [0u8; 120];
            let buf = &mut buf[..r.buffer_len() + r.payload_len];
            r.emit(&mut Ipv4Packet::new_unchecked(&mut *buf));
            let p = Ipv4Packet::new_checked(&*buf).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(Ipv4Repr::parse(&p).unwrap(), r);
        }
    }
}
