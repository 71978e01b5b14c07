//! Ethernet II frames and their 802.1Q / 802.1ad VLAN tags (at most two: Q-in-Q).
//!
//! The view owns the tag walk: `check_len` makes sure every tag it will report is in the
//! buffer, so `header_len`, `inner_ethertype` and `payload` never look past it. A third tag
//! is [`Error::Unsupported`]; nothing here walks an unbounded tag stack.

use super::{Error, Result, ethertype, read_u16, write_u16};
use core::fmt;

/// An Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Reads an address from the first six bytes of `bytes`.
    ///
    /// # Panics
    /// If `bytes` is shorter than six bytes.
    pub fn from_bytes(bytes: &[u8]) -> MacAddr {
        let mut a = [0; 6];
        a.copy_from_slice(&bytes[..6]);
        MacAddr(a)
    }

    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Group bit set: multicast or broadcast, flooded rather than learned.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

mod field {
    pub type Field = core::ops::Range<usize>;
    pub const DESTINATION: Field = 0..6;
    pub const SOURCE: Field = 6..12;
    pub const ETHERTYPE: Field = 12..14;
    pub const PAYLOAD: usize = 14;
}

/// Length of an untagged Ethernet header.
pub const HEADER_LEN: usize = field::PAYLOAD;
/// Bytes each VLAN tag adds (TPID + TCI).
pub const TAG_LEN: usize = 4;
/// Tags we walk; one more is [`Error::Unsupported`].
pub const MAX_TAGS: usize = 2;

/// Whether `t` is a TPID: the EtherType slot holds a VLAN tag rather than the payload's type.
#[inline(always)]
pub const fn is_tpid(t: u16) -> bool {
    t == ethertype::VLAN || t == ethertype::QINQ
}

/// A view of an Ethernet II frame (without FCS), tags included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checks; getters may panic if it is too short.
    pub const fn new_unchecked(buffer: T) -> EthernetFrame<T> {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after [`check_len`](Self::check_len).
    #[inline]
    pub fn new_checked(buffer: T) -> Result<EthernetFrame<T>> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    /// Checks the buffer holds the header and every tag: `Truncated` if not, `Unsupported`
    /// for a third tag.
    #[inline]
    pub fn check_len(&self) -> Result<()> {
        let data = self.buffer.as_ref();
        let mut at = field::ETHERTYPE.start;
        for _ in 0..=MAX_TAGS {
            if data.len() < at + 2 {
                return Err(Error::Truncated);
            }
            if !is_tpid(read_u16(data, at)) {
                return Ok(());
            }
            at += TAG_LEN;
        }
        Err(Error::Unsupported)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::DESTINATION])
    }

    pub fn src_addr(&self) -> MacAddr {
        MacAddr::from_bytes(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType field right after the source address: the outer TPID if tagged.
    #[inline]
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE.start)
    }

    /// Number of VLAN tags, 0 to [`MAX_TAGS`].
    #[inline]
    pub fn tag_count(&self) -> usize {
        let data = self.buffer.as_ref();
        let mut n = 0;
        while n < MAX_TAGS && is_tpid(read_u16(data, field::ETHERTYPE.start + n * TAG_LEN)) {
            n += 1;
        }
        n
    }

    /// Ethernet header length, tags included: where the L3 header starts.
    #[inline]
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.tag_count() * TAG_LEN
    }

    /// The EtherType after all tags: what the payload is.
    #[inline]
    pub fn inner_ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), self.header_len() - 2)
    }

    /// TPID of tag `i` (0 is outermost), if the frame has that many tags.
    pub fn tag_tpid(&self, i: usize) -> Option<u16> {
        (i < self.tag_count())
            .then(|| read_u16(self.buffer.as_ref(), field::ETHERTYPE.start + i * TAG_LEN))
    }

    /// Tag `i` (0 is outermost) as a view of its TCI and the EtherType that follows it.
    pub fn vlan_tag(&self, i: usize) -> Option<VlanTag<&[u8]>> {
        let at = HEADER_LEN + i * TAG_LEN;
        (i < self.tag_count()).then(|| VlanTag::new_unchecked(&self.buffer.as_ref()[at..]))
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> EthernetFrame<&'a T> {
    /// The bytes after the header and tags.
    #[inline]
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&a.0);
    }

    pub fn set_src_addr(&mut self, a: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&a.0);
    }

    /// Sets the EtherType field right after the source address (the outer TPID if tagged).
    pub fn set_ethertype(&mut self, t: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE.start, t);
    }

    /// Tag `i` (0 is outermost), writable.
    pub fn vlan_tag_mut(&mut self, i: usize) -> Option<VlanTag<&mut [u8]>> {
        let at = HEADER_LEN + i * TAG_LEN;
        if i < self.tag_count() {
            Some(VlanTag::new_unchecked(&mut self.buffer.as_mut()[at..]))
        } else {
            None
        }
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        &mut self.buffer.as_mut()[at..]
    }
}

mod tag_field {
    pub const TCI: core::ops::Range<usize> = 0..2;
    pub const ETHERTYPE: core::ops::Range<usize> = 2..4;
    pub const PAYLOAD: usize = 4;
}

/// A view of one VLAN tag as it follows its TPID: the TCI, then the next EtherType (the
/// payload's, or the inner tag's TPID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanTag<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VlanTag<T> {
    pub const fn new_unchecked(buffer: T) -> VlanTag<T> {
        VlanTag { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<VlanTag<T>> {
        let t = Self::new_unchecked(buffer);
        t.check_len()?;
        Ok(t)
    }

    pub fn check_len(&self) -> Result<()> {
        if self.buffer.as_ref().len() < tag_field::PAYLOAD {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Tag control information: PCP (3 bits), DEI (1), VID (12).
    pub fn tci(&self) -> u16 {
        read_u16(self.buffer.as_ref(), tag_field::TCI.start)
    }

    /// Priority code point (802.1p class).
    pub fn pcp(&self) -> u8 {
        (self.tci() >> 13) as u8
    }

    /// Drop eligible indicator.
    pub fn dei(&self) -> bool {
        self.tci() & 0x1000 != 0
    }

    /// VLAN identifier.
    #[inline]
    pub fn vid(&self) -> u16 {
        self.tci() & 0x0fff
    }

    /// The EtherType after this tag.
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), tag_field::ETHERTYPE.start)
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> VlanTag<&'a T> {
    pub fn payload(&self) -> &'a [u8] {
        let data: &'a [u8] = self.buffer.as_ref();
        &data[tag_field::PAYLOAD..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VlanTag<T> {
    pub fn set_tci(&mut self, tci: u16) {
        write_u16(self.buffer.as_mut(), tag_field::TCI.start, tci);
    }

    pub fn set_pcp(&mut self, pcp: u8) {
        let tci = (self.tci() & 0x1fff) | ((pcp as u16 & 0x7) << 13);
        self.set_tci(tci);
    }

    pub fn set_dei(&mut self, dei: bool) {
        let tci = (self.tci() & !0x1000) | if dei { 0x1000 } else { 0 };
        self.set_tci(tci);
    }

    pub fn set_vid(&mut self, vid: u16) {
        let tci = (self.tci() & 0xf000) | (vid & 0x0fff);
        self.set_tci(tci);
    }

    pub fn set_ethertype(&mut self, t: u16) {
        write_u16(self.buffer.as_mut(), tag_field::ETHERTYPE.start, t);
    }
}

/// One VLAN tag's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VlanRepr {
    /// [`ethertype::VLAN`] (802.1Q) or [`ethertype::QINQ`] (802.1ad).
    pub tpid: u16,
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
}

impl VlanRepr {
    /// An 802.1Q tag with priority 0.
    pub const fn dot1q(vid: u16) -> VlanRepr {
        VlanRepr {
            tpid: ethertype::VLAN,
            pcp: 0,
            dei: false,
            vid,
        }
    }

    fn tci(&self) -> u16 {
        ((self.pcp as u16 & 0x7) << 13) | if self.dei { 0x1000 } else { 0 } | (self.vid & 0x0fff)
    }
}

/// The VLAN tags of a frame, outermost first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VlanTags {
    Untagged,
    Single(VlanRepr),
    Double { outer: VlanRepr, inner: VlanRepr },
}

impl VlanTags {
    pub const fn count(&self) -> usize {
        match self {
            VlanTags::Untagged => 0,
            VlanTags::Single(_) => 1,
            VlanTags::Double { .. } => 2,
        }
    }
}

/// An Ethernet header's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    pub dst_addr: MacAddr,
    pub src_addr: MacAddr,
    pub tags: VlanTags,
    /// The payload's EtherType, after the tags.
    pub ethertype: u16,
}

impl EthernetRepr {
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<EthernetRepr> {
        frame.check_len()?;
        let tag = |i| {
            let t = frame.vlan_tag(i)?;
            Some(VlanRepr {
                tpid: frame.tag_tpid(i)?,
                pcp: t.pcp(),
                dei: t.dei(),
                vid: t.vid(),
            })
        };
        let tags = match (tag(0), tag(1)) {
            (None, _) => VlanTags::Untagged,
            (Some(t), None) => VlanTags::Single(t),
            (Some(outer), Some(inner)) => VlanTags::Double { outer, inner },
        };
        Ok(EthernetRepr {
            dst_addr: frame.dst_addr(),
            src_addr: frame.src_addr(),
            tags,
            ethertype: frame.inner_ethertype(),
        })
    }

    /// Header length with tags: the bytes `emit` writes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.tags.count() * TAG_LEN
    }

    /// Writes the header and tags; the payload starts at `buffer_len()`.
    ///
    /// # Panics
    /// If the buffer is shorter than `buffer_len()`, or a tag's TPID is not a TPID (the frame
    /// would not read back as tagged).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, frame: &mut EthernetFrame<T>) {
        let mut tags = [None; MAX_TAGS];
        match self.tags {
            VlanTags::Untagged => {}
            VlanTags::Single(t) => tags[0] = Some(t),
            VlanTags::Double { outer, inner } => tags = [Some(outer), Some(inner)],
        }
        let data = frame.buffer.as_mut();
        data[field::DESTINATION].copy_from_slice(&self.dst_addr.0);
        data[field::SOURCE].copy_from_slice(&self.src_addr.0);
        let mut at = field::ETHERTYPE.start;
        for t in tags.iter().flatten() {
            assert!(is_tpid(t.tpid), "VLAN TPID {:#06x} is not a TPID", t.tpid);
            write_u16(data, at, t.tpid);
            write_u16(data, at + 2, t.tci());
            at += TAG_LEN;
        }
        write_u16(data, at, self.ethertype);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frames;
    use proptest::prelude::*;

    #[test]
    fn real_untagged_frame() {
        let f = EthernetFrame::new_checked(&frames::DNS_QUERY_V4[..]).unwrap();
        assert_eq!(f.dst_addr(), MacAddr([2, 0, 0, 0, 0, 2]));
        assert_eq!(f.src_addr(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.tag_count(), 0);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.inner_ethertype(), ethertype::IPV4);
        assert!(f.vlan_tag(0).is_none());
        assert_eq!(f.payload()[0], 0x45);
    }

    #[test]
    fn real_dot1q_frame() {
        let f = EthernetFrame::new_checked(&frames::TCP_SYN_V4_VLAN[..]).unwrap();
        assert_eq!(f.ethertype(), ethertype::VLAN);
        assert_eq!(f.tag_count(), 1);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.inner_ethertype(), ethertype::IPV4);
        let t = f.vlan_tag(0).unwrap();
        assert_eq!(
            (t.vid(), t.pcp(), t.dei(), t.ethertype()),
            (100, 0, false, 0x0800)
        );
        assert_eq!(f.payload().len(), 60);
        let r = EthernetRepr::parse(&f).unwrap();
        assert_eq!(r.tags, VlanTags::Single(VlanRepr::dot1q(100)));
    }

    #[test]
    fn real_arp_broadcast() {
        let f = EthernetFrame::new_checked(&frames::ARP_REQUEST[..]).unwrap();
        assert!(f.dst_addr().is_broadcast() && f.dst_addr().is_multicast());
        assert!(f.src_addr().is_unicast());
        assert_eq!(f.inner_ethertype(), ethertype::ARP);
        assert_eq!(f.dst_addr().to_string(), "ff:ff:ff:ff:ff:ff");
        assert_eq!(f.src_addr().to_string(), "02:00:00:00:00:01");
    }

    fn qinq() -> EthernetRepr {
        EthernetRepr {
            dst_addr: MacAddr([0x33, 0x33, 0, 0, 0, 1]),
            src_addr: MacAddr([2, 1, 2, 3, 4, 5]),
            tags: VlanTags::Double {
                outer: VlanRepr {
                    tpid: ethertype::QINQ,
                    pcp: 5,
                    dei: true,
                    vid: 4000,
                },
                inner: VlanRepr::dot1q(7),
            },
            ethertype: ethertype::IPV6,
        }
    }

    #[test]
    fn qinq_round_trip() {
        let r = qinq();
        let mut buf = [0u8; 22 + 3];
        assert_eq!(r.buffer_len(), 22);
        r.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
        assert_eq!(f.tag_tpid(0), Some(ethertype::QINQ));
        assert_eq!(f.tag_tpid(1), Some(ethertype::VLAN));
        assert_eq!(f.tag_tpid(2), None);
        assert_eq!(f.vlan_tag(0).unwrap().ethertype(), ethertype::VLAN);
        assert_eq!(f.payload().len(), 3);
    }

    #[test]
    fn setters() {
        let mut buf = frames::TCP_SYN_V4_VLAN;
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        f.set_dst_addr(MacAddr::BROADCAST);
        f.set_src_addr(MacAddr([2, 9, 9, 9, 9, 9]));
        let mut t = f.vlan_tag_mut(0).unwrap();
        t.set_vid(4095);
        t.set_pcp(7);
        t.set_dei(true);
        t.set_ethertype(ethertype::IPV6);
        assert!(f.vlan_tag_mut(1).is_none());
        f.payload_mut()[0] = 0x60;
        let f = EthernetFrame::new_checked(&buf[..]).unwrap();
        let t = f.vlan_tag(0).unwrap();
        assert_eq!(
            (t.vid(), t.pcp(), t.dei(), t.tci()),
            (4095, 7, true, 0xffff)
        );
        assert_eq!(f.inner_ethertype(), ethertype::IPV6);
        assert_eq!(f.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(f.src_addr(), MacAddr([2, 9, 9, 9, 9, 9]));
        assert_eq!(f.payload()[0], 0x60);
        let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
        f.set_ethertype(ethertype::ARP);
        assert_eq!(f.tag_count(), 0);
    }

    #[test]
    fn truncated_at_each_boundary() {
        let mut buf = [0u8; 22];
        qinq().emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
        for len in 0..buf.len() {
            // Every tag and the final EtherType must be present; payload may be empty.
            let want = if len < 22 {
                Err(Error::Truncated)
            } else {
                Ok(())
            };
            assert_eq!(
                EthernetFrame::new_checked(&buf[..len]).map(|_| ()),
                want,
                "len {len}"
            );
        }
        assert!(EthernetFrame::new_checked(&buf[..]).is_ok());
        assert_eq!(
            VlanTag::new_checked(&buf[..3]).err(),
            Some(Error::Truncated)
        );
    }

    #[test]
    fn three_tags_unsupported() {
        let mut buf = [0u8; 40];
        buf[12..14].copy_from_slice(&ethertype::QINQ.to_be_bytes());
        buf[16..18].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        buf[20..22].copy_from_slice(&ethertype::VLAN.to_be_bytes());
        assert_eq!(
            EthernetFrame::new_checked(&buf[..]).err(),
            Some(Error::Unsupported)
        );
        // A third tag is diagnosed only once its TPID is in the buffer.
        assert_eq!(
            EthernetFrame::new_checked(&buf[..21]).err(),
            Some(Error::Truncated)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::wire::fuzzing::ethernet(&data);
        }

        #[test]
        fn round_trip(dst in any::<[u8; 6]>(), src in any::<[u8; 6]>(), n in 0usize..3,
                      vids in any::<[u16; 2]>(), pcps in any::<[u8; 2]>(), et in 0u16..0x8100) {
            let t = |i: usize| VlanRepr {
                tpid: if i == 0 && n == 2 { ethertype::QINQ } else { ethertype::VLAN },
                pcp: pcps[i] & 7,
                dei: vids[i] & 0x8000 != 0,
                vid: vids[i] & 0xfff,
            };
            let tags = match n {
                0 => VlanTags::Untagged,
                1 => VlanTags::Single(t(0)),
                _ => VlanTags::Double { outer: t(0), inner: t(1) },
            };
            let (dst_addr, src_addr) = (MacAddr(dst), MacAddr(src));
            let r = EthernetRepr { dst_addr, src_addr, tags, ethertype: et };
            let mut buf = [0u8; 22];
            r.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
            let f = EthernetFrame::new_checked(&buf[..r.buffer_len()]).unwrap();
            prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), r);
        }
    }
}
