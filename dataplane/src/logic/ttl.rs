//! TTL / hop-limit decrement, as a wrapper in front of the logic that picks the output.
//!
//! Owns nothing but the rewrite: IPv4 TTL (with an RFC 1624 incremental update of the header
//! checksum, so the header is never summed again) and IPv6 hop limit. Packets whose TTL would
//! reach zero are dropped as [`DropReason::TtlExpired`] without reaching the inner logic.
//! Non-IP frames pass through untouched. Never sends ICMP Time Exceeded: that needs a packet
//! built and a path back, which belong to the host stack, not the fast path.

use super::Logic;
use crate::verdict::{DropReason, PortId, Verdict};
use crate::wire::{Headers, L3, checksum};
use std::time::Duration;

/// Decrements the TTL (IPv4, fixing the header checksum) or hop limit (IPv6) of `pkt` in
/// place and returns `hdr` with the new value. The frame's byte is the one trusted; `hdr`
/// supplies the offsets. Frames without IP are returned unchanged.
///
/// Errors: [`DropReason::TtlExpired`] for TTL 0 or 1 (the frame is left unchanged), and
/// [`DropReason::Malformed`] if the frame is shorter than `hdr` says.
#[inline]
pub fn decrement(pkt: &mut [u8], hdr: &Headers) -> Result<Headers, DropReason> {
    let l3 = hdr.l3_offset as usize;
    match hdr.l3 {
        L3::Ipv4 { src, dst, .. } => {
            // One range check for the bytes written (`l3` is a `u16`: no overflow).
            let Some(ip) = pkt
                .get_mut(l3..l3 + 12)
                .and_then(|b| b.first_chunk_mut::<12>())
            else {
                return Err(DropReason::Malformed);
            };
            let ttl = ip[8];
            if ttl <= 1 {
                return Err(DropReason::TtlExpired);
            }
            // The TTL is the high byte of its 16-bit checksum word (the protocol the low one).
            let hc = u16::from_be_bytes([ip[10], ip[11]]);
            let [c0, c1] = checksum::update_high_byte_decrement(hc).to_be_bytes();
            ip[8] = ttl - 1;
            ip[10] = c0;
            ip[11] = c1;
            Ok(Headers {
                l3: L3::Ipv4 {
                    src,
                    dst,
                    ttl: ttl - 1,
                },
                ..*hdr
            })
        }
        L3::Ipv6 { src, dst, .. } => {
            let Some(ip) = pkt
                .get_mut(l3..l3 + 8)
                .and_then(|b| b.first_chunk_mut::<8>())
            else {
                return Err(DropReason::Malformed);
            };
            let hop_limit = ip[7];
            if hop_limit <= 1 {
                return Err(DropReason::TtlExpired);
            }
            ip[7] = hop_limit - 1;
            Ok(Headers {
                l3: L3::Ipv6 {
                    src,
                    dst,
                    hop_limit: hop_limit - 1,
                },
                ..*hdr
            })
        }
        L3::Arp | L3::Other => Ok(*hdr),
    }
}

/// Decrements TTL / hop limit, then lets `inner` decide (with the updated [`Headers`]).
///
/// The decrement comes first, so that expired packets cost no route lookup; a packet the
/// inner logic then drops leaves with a decremented TTL, which nobody sees.
#[derive(Debug, Clone, Default)]
pub struct TtlDecrement<L> {
    inner: L,
}

impl<L: Logic> TtlDecrement<L> {
    pub fn new(inner: L) -> Self {
        TtlDecrement { inner }
    }

    pub fn inner(&self) -> &L {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut L {
        &mut self.inner
    }

    pub fn into_inner(self) -> L {
        self.inner
    }
}

impl<L: Logic> Logic for TtlDecrement<L> {
    #[inline]
    fn prefetch(&self, hdr: &Headers) {
        self.inner.prefetch(hdr)
    }

    #[inline]
    fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, in_port: PortId) -> Verdict {
        match decrement(pkt, hdr) {
            Ok(hdr) => self.inner.decide(pkt, &hdr, in_port),
            Err(reason) => Verdict::Drop(reason),
        }
    }

    fn tick(&mut self, now: Duration) {
        self.inner.tick(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logic::test_frames;

    /// Inner logic that records what it was given.
    #[derive(Default)]
    struct Record {
        seen: Option<(Vec<u8>, Headers)>,
    }

    impl Logic for Record {
        fn decide(&mut self, pkt: &mut [u8], hdr: &Headers, _in_port: PortId) -> Verdict {
            self.seen = Some((pkt.to_vec(), *hdr));
            Verdict::Forward(1)
        }
    }

    /// The IPv4 header of a frame from `test_frames::ipv4`.
    fn ip_header(f: &[u8]) -> &[u8] {
        &f[14..34]
    }

    fn recomputed(header: &[u8]) -> u16 {
        let mut h = header.to_vec();
        h[10] = 0;
        h[11] = 0;
        checksum::checksum(&h)
    }

    #[test]
    fn ipv4_ttl_and_checksum() {
        let mut t = TtlDecrement::new(Record::default());
        let (mut f, h) = test_frames::ipv4("192.0.2.1", "198.51.100.7", 64, 17, 1000, 53);
        assert_eq!(t.decide(&mut f, &h, 0), Verdict::Forward(1));
        let ip = ip_header(&f);
        assert_eq!(ip[8], 63);
        assert_eq!(u16::from_be_bytes([ip[10], ip[11]]), recomputed(ip));
        assert_eq!(checksum::sum(ip), 0xffff, "the header verifies");
        let (seen, seen_hdr) = t.inner().seen.clone().unwrap();
        assert_eq!(seen, f, "the inner logic sees the rewritten frame");
        assert!(matches!(seen_hdr.l3, L3::Ipv4 { ttl: 63, .. }));
    }

    #[test]
    fn incremental_update_matches_recompute_for_every_ttl() {
        for ttl in 2..=255u8 {
            for id in (0..=0xffffu16).step_by(251) {
                let (mut f, h) = test_frames::ipv4("10.1.2.3", "10.9.8.7", ttl, 6, 1, 2);
                f[18..20].copy_from_slice(&id.to_be_bytes());
                let c = recomputed(ip_header(&f));
                f[24..26].copy_from_slice(&c.to_be_bytes());
                decrement(&mut f, &h).unwrap();
                let ip = ip_header(&f);
                assert_eq!(u16::from_be_bytes([ip[10], ip[11]]), recomputed(ip));
            }
        }
    }

    /// A frame whose header checksum is `want` before (`after == false`) or after the
    /// decrement, found by varying the IP identification field.
    fn frame_with_checksum(want: u16, after: bool) -> (Vec<u8>, Headers) {
        for id in 0..=0xffffu16 {
            let (mut f, h) = test_frames::ipv4("10.1.2.3", "10.9.8.7", 64, 17, 1, 2);
            f[18..20].copy_from_slice(&id.to_be_bytes());
            if after {
                f[22] -= 1;
            }
            if recomputed(ip_header(&f)) == want {
                if after {
                    f[22] += 1;
                }
                let c = recomputed(ip_header(&f));
                f[24..26].copy_from_slice(&c.to_be_bytes());
                return (f, h);
            }
        }
        panic!("no identification value gives checksum {want:#06x}");
    }

    #[test]
    fn rfc1624_edge_cases() {
        // A result of 0x0000 is where RFC 1071's and RFC 1624's eqn. 2 give 0xffff instead.
        let (mut f, h) = frame_with_checksum(0x0000, true);
        decrement(&mut f, &h).unwrap();
        assert_eq!(f[24..26], [0, 0]);
        assert_eq!(checksum::sum(ip_header(&f)), 0xffff);

        // Starting from a checksum of 0x0000.
        let (mut f, h) = frame_with_checksum(0x0000, false);
        assert_eq!(f[24..26], [0, 0]);
        decrement(&mut f, &h).unwrap();
        let ip = ip_header(&f);
        assert_eq!(u16::from_be_bytes([ip[10], ip[11]]), recomputed(ip));
        assert_eq!(checksum::sum(ip), 0xffff);

        // Starting from 0xffff, the other representation of zero: still verifies after.
        let (mut f, h) = frame_with_checksum(0x0000, false);
        f[24..26].copy_from_slice(&[0xff, 0xff]);
        decrement(&mut f, &h).unwrap();
        let ip = ip_header(&f);
        assert_eq!(u16::from_be_bytes([ip[10], ip[11]]), recomputed(ip));
    }

    #[test]
    fn ttl_one_and_zero_are_dropped_untouched() {
        for ttl in [0, 1] {
            let mut t = TtlDecrement::new(Record::default());
            let (mut f, h) = test_frames::ipv4("10.0.0.1", "10.0.0.2", ttl, 17, 1, 2);
            let orig = f.clone();
            assert_eq!(
                t.decide(&mut f, &h, 0),
                Verdict::Drop(DropReason::TtlExpired)
            );
            assert_eq!(f, orig);
            assert!(
                t.inner().seen.is_none(),
                "expired packets skip the inner logic"
            );

            let (mut f, h) = test_frames::ipv6("2001:db8::1", "2001:db8::2", ttl, 17, 1, 2);
            assert_eq!(
                t.decide(&mut f, &h, 0),
                Verdict::Drop(DropReason::TtlExpired)
            );
        }
    }

    #[test]
    fn ipv6_hop_limit() {
        let mut t = TtlDecrement::new(Record::default());
        let (mut f, h) = test_frames::ipv6("2001:db8::1", "2001:db8::2", 2, 6, 1, 2);
        let orig = f.clone();
        assert_eq!(t.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(f[18 + 7], 1, "the byte behind the VLAN tag");
        f[18 + 7] = 2;
        assert_eq!(f, orig, "nothing else changed");
        let (_, seen_hdr) = t.inner().seen.clone().unwrap();
        assert!(matches!(seen_hdr.l3, L3::Ipv6 { hop_limit: 1, .. }));
    }

    #[test]
    fn non_ip_passes_untouched() {
        let mut t = TtlDecrement::new(Record::default());
        let (mut f, h) = test_frames::arp();
        let orig = f.clone();
        assert_eq!(t.decide(&mut f, &h, 0), Verdict::Forward(1));
        assert_eq!(f, orig);
        assert_eq!(t.inner().seen.clone().unwrap().1, h);
    }

    #[test]
    fn truncated_ip_header_is_malformed() {
        let (f, h) = test_frames::ipv4("10.0.0.1", "10.0.0.2", 64, 17, 1, 2);
        let mut short = f[..14 + 11].to_vec();
        assert_eq!(decrement(&mut short, &h), Err(DropReason::Malformed));
        let (f, h) = test_frames::ipv6("2001:db8::1", "2001:db8::2", 64, 17, 1, 2);
        let mut short = f[..10].to_vec();
        assert_eq!(decrement(&mut short, &h), Err(DropReason::Malformed));
    }
}
