//! ARP packets (RFC 826). The view handles any hardware/protocol address lengths; the `Repr`
//! only Ethernet + IPv4, the one combination a switch answers or learns from.

use super::ethernet::MacAddr;
use super::{Error, Result, ethertype, read_u16, write_u16};
use core::net::Ipv4Addr;

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const HTYPE: Field = 0..2;
    pub const PTYPE: Field = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Field = 6..8;
    /// Addresses follow, their lengths given by HLEN and PLEN.
    pub const ADDRS: usize = 8;
}

/// Fixed part of the header, before the addresses.
pub const FIXED_LEN: usize = field::ADDRS;
/// Length of an Ethernet/IPv4 ARP packet.
pub const ETHERNET_IPV4_LEN: usize = FIXED_LEN + 2 * (6 + 4);
/// Hardware type for Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;

/// A view of an ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub const fn new_unchecked(buffer: T) -> ArpPacket<T> {
        ArpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<ArpPacket<T>> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the fixed header and all four addresses (sized by HLEN/PLEN) are present.
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        if data.len() < FIXED_LEN {
            return Err(Error::Truncated);
        }
        if data.len() < self.addrs_end() {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn addrs_end(&self) -> usize {
        FIXED_LEN + 2 * (self.hardware_len() as usize + self.protocol_len() as usize)
    }

    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE.start)
    }

    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE.start)
    }

    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HLEN]
    }

    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PLEN]
    }

    /// 1 request, 2 reply (others exist: RARP, InARP).
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPER.start)
    }

    /// Byte range of address `i`: sender hardware, sender protocol, target hardware, target
    /// protocol.
    fn addr_range(&self, i: usize) -> core::ops::Range<usize> {
        let (h, p) = (self.hardware_len() as usize, self.protocol_len() as usize);
        let start = FIXED_LEN + (i / 2) * (h + p) + (i % 2) * h;
        start..start + if i.is_multiple_of(2) { h } else { p }
    }

    fn addr(&self, i: usize) -> &[u8] {
        &self.buffer.as_ref()[self.addr_range(i)]
    }

    pub fn source_hardware_addr(&self) -> &[u8] {
        self.addr(0)
    }

    pub fn source_protocol_addr(&self) -> &[u8] {
        self.addr(1)
    }

    pub fn target_hardware_addr(&self) -> &[u8] {
        self.addr(2)
    }

    pub fn target_protocol_addr(&self) -> &[u8] {
        self.addr(3)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_hardware_type(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::HTYPE.start, v);
    }

    pub fn set_protocol_type(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::PTYPE.start, v);
    }

    pub fn set_hardware_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::HLEN] = v;
    }

    pub fn set_protocol_len(&mut self, v: u8) {
        self.buffer.as_mut()[field::PLEN] = v;
    }

    pub fn set_operation(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::OPER.start, v);
    }

    fn set_addr(&mut self, i: usize, v: &[u8]) {
        let range = self.addr_range(i);
        self.buffer.as_mut()[range].copy_from_slice(v);
    }

    /// # Panics
    /// If `v` is not `hardware_len()` bytes long; set the lengths first.
    pub fn set_source_hardware_addr(&mut self, v: &[u8]) {
        self.set_addr(0, v);
    }

    /// # Panics
    /// If `v` is not `protocol_len()` bytes long.
    pub fn set_source_protocol_addr(&mut self, v: &[u8]) {
        self.set_addr(1, v);
    }

    /// # Panics
    /// If `v` is not `hardware_len()` bytes long.
    pub fn set_target_hardware_addr(&mut self, v: &[u8]) {
        self.set_addr(2, v);
    }

    /// # Panics
    /// If `v` is not `protocol_len()` bytes long.
    pub fn set_target_protocol_addr(&mut self, v: &[u8]) {
        self.set_addr(3, v);
    }
}

/// ARP operations the `Repr` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpOperation {
    Request,
    Reply,
}

impl ArpOperation {
    const fn code(self) -> u16 {
        match self {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
        }
    }
}

/// An Ethernet/IPv4 ARP packet's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    pub operation: ArpOperation,
    pub source_hardware_addr: MacAddr,
    pub source_protocol_addr: Ipv4Addr,
    pub target_hardware_addr: MacAddr,
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Parses an Ethernet/IPv4 request or reply; other address types and operations are
    /// `Unsupported`.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ArpPacket<&T>) -> Result<ArpRepr> {
        packet.check_len()?;
        if packet.hardware_type() != HTYPE_ETHERNET
            || packet.protocol_type() != ethertype::IPV4
            || packet.hardware_len() != 6
            || packet.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        let operation = match packet.operation() {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            _ => return Err(Error::Unsupported),
        };
        let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
        Ok(ArpRepr {
            operation,
            source_hardware_addr: MacAddr::from_bytes(packet.source_hardware_addr()),
            source_protocol_addr: ip(packet.source_protocol_addr()),
            target_hardware_addr: MacAddr::from_bytes(packet.target_hardware_addr()),
            target_protocol_addr: ip(packet.target_protocol_addr()),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        ETHERNET_IPV4_LEN
    }

    /// # Panics
    /// If the buffer is shorter than `buffer_len()`.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut ArpPacket<T>) {
        packet.set_hardware_type(HTYPE_ETHERNET);
        packet.set_protocol_type(ethertype::IPV4);
        packet.set_hardware_len(6);
        packet.set_protocol_len(4);
        packet.set_operation(self.operation.code());
        packet.set_source_hardware_addr(&self.source_hardware_addr.0);
        packet.set_source_protocol_addr(&self.source_protocol_addr.octets());
        packet.set_target_hardware_addr(&self.target_hardware_addr.0);
        packet.set_target_protocol_addr(&self.target_protocol_addr.octets());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetFrame, frames};
    use proptest::prelude::*;

    fn real() -> ArpPacket<&'static [u8]> {
        let eth = EthernetFrame::new_checked(&frames::ARP_REQUEST[..]).unwrap();
        ArpPacket::new_checked(eth.payload()).unwrap()
    }

    #[test]
    fn real_request() {
        let p = real();
        assert_eq!((p.hardware_type(), p.protocol_type()), (1, 0x0800));
        assert_eq!(
            (p.hardware_len(), p.protocol_len(), p.operation()),
            (6, 4, 1)
        );
        assert_eq!(p.source_hardware_addr(), &[2, 0, 0, 0, 0, 1]);
        assert_eq!(p.source_protocol_addr(), &[192, 0, 2, 1]);
        assert_eq!(p.target_hardware_addr(), &[0; 6]);
        assert_eq!(p.target_protocol_addr(), &[192, 0, 2, 3]);
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(
            r,
            ArpRepr {
                operation: ArpOperation::Request,
                source_hardware_addr: MacAddr([2, 0, 0, 0, 0, 1]),
                source_protocol_addr: Ipv4Addr::new(192, 0, 2, 1),
                target_hardware_addr: MacAddr([0; 6]),
                target_protocol_addr: Ipv4Addr::new(192, 0, 2, 3),
            }
        );
        let mut buf = [0u8; ETHERNET_IPV4_LEN];
        r.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        assert_eq!(&buf[..], &frames::ARP_REQUEST[14..]);
    }

    #[test]
    fn reply_round_trip() {
        let r = ArpRepr {
            operation: ArpOperation::Reply,
            source_hardware_addr: MacAddr([2, 0, 0, 0, 0, 3]),
            source_protocol_addr: Ipv4Addr::new(192, 0, 2, 3),
            target_hardware_addr: MacAddr([2, 0, 0, 0, 0, 1]),
            target_protocol_addr: Ipv4Addr::new(192, 0, 2, 1),
        };
        let mut buf = [0u8; ETHERNET_IPV4_LEN];
        r.emit(&mut ArpPacket::new_unchecked(&mut buf[..]));
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p).unwrap(), r);
    }

    #[test]
    fn errors() {
        let full = &frames::ARP_REQUEST[14..];
        for len in 0..full.len() {
            assert_eq!(
                ArpPacket::new_checked(&full[..len]).err(),
                Some(Error::Truncated)
            );
        }
        let mut buf = [0u8; ETHERNET_IPV4_LEN];
        buf.copy_from_slice(full);
        buf[7] = 3; // RARP request
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p).err(), Some(Error::Unsupported));
        buf[7] = 1;
        buf[5] = 16; // IPv6-sized protocol addresses no longer fit
        assert_eq!(
            ArpPacket::new_checked(&buf[..]).err(),
            Some(Error::Truncated)
        );
        buf[5] = 2;
        let p = ArpPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(ArpRepr::parse(&p).err(), Some(Error::Unsupported));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::arp(&data);
        }
    }
}
