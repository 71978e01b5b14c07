//! Frames for `linerate gen`: an Ethernet + IPv4/IPv6 + UDP template with room for the
//! generator's 16-byte stamp right after the UDP header, and the constant part of its UDP
//! checksum, from which the kernel-side engine (`ebpf/bpf/gen.bpf.c`) finishes the checksum
//! of each frame in constant time.

use crate::wire::checksum;
use core::net::IpAddr;
use thiserror::Error;

/// Bytes the generator writes after the UDP header of every frame.
pub const STAMP_LEN: usize = 16;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error(
        "frame length {len} is outside {min}..=9000 for {family} (headers and the 16-byte stamp need {min})"
    )]
    Length {
        len: usize,
        min: usize,
        family: &'static str,
    },
    #[error("source {src} and destination {dst} are not of the same IP family")]
    Family { src: IpAddr, dst: IpAddr },
    #[error("{flows} flows from source port {base} run past port 65535")]
    Ports { flows: u32, base: u16 },
}

/// A generator template and what the kernel-side engine needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub frame: Vec<u8>,
    pub l4_off: u32,
    pub stamp_off: u32,
    /// One's-complement sum, folded to 16 bits, of the pseudo-header and the UDP datagram
    /// with source port, checksum and stamp zeroed, summed as native-endian 16-bit words of
    /// memory (the byte order the engine sums in; the one's-complement sum is order-blind).
    pub base_sum: u32,
    pub base_sport: u16,
    pub flows: u32,
}

/// Parameters of [`Template::udp`].
#[derive(Debug, Clone, Copy)]
pub struct UdpSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Flow `f` uses source port `base_sport + f`.
    pub base_sport: u16,
    pub dport: u16,
    pub flows: u32,
    /// Frame length without FCS (60 is a 64-byte frame on the wire).
    pub len: usize,
}

impl Template {
    pub fn udp(spec: &UdpSpec) -> Result<Template, TemplateError> {
        let (family, l3_len) = match (spec.src, spec.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => ("IPv4", 20),
            (IpAddr::V6(_), IpAddr::V6(_)) => ("IPv6", 40),
            (src, dst) => return Err(TemplateError::Family { src, dst }),
        };
        let l4_off = 14 + l3_len;
        let min = (l4_off + 8 + STAMP_LEN).max(60);
        if !(min..=9000).contains(&spec.len) {
            return Err(TemplateError::Length {
                len: spec.len,
                min,
                family,
            });
        }
        if spec.flows == 0 || spec.base_sport as u32 + spec.flows - 1 > u16::MAX as u32 {
            return Err(TemplateError::Ports {
                flows: spec.flows,
                base: spec.base_sport,
            });
        }
        let mut f = vec![0u8; spec.len];
        f[0..6].copy_from_slice(&spec.dst_mac);
        f[6..12].copy_from_slice(&spec.src_mac);
        let udp_len = (spec.len - l4_off) as u16;
        let mut pseudo = Vec::with_capacity(40);
        match (spec.src, spec.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
                let ip = &mut f[14..34];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(udp_len + 20).to_be_bytes());
                ip[6] = 0x40;
                ip[8] = 64;
                ip[9] = 17;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let c = checksum::checksum(ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&[0, 17]);
                pseudo.extend_from_slice(&udp_len.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
                let ip = &mut f[14..54];
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
                ip[6] = 17;
                ip[7] = 64;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
                pseudo.extend_from_slice(&s.octets());
                pseudo.extend_from_slice(&d.octets());
                pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
                pseudo.extend_from_slice(&[0, 0, 0, 17]);
            }
            (src, dst) => return Err(TemplateError::Family { src, dst }),
        }
        let udp = &mut f[l4_off..];
        udp[2..4].copy_from_slice(&spec.dport.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        // Source port, checksum and stamp stay zero here: the engine writes them per frame.
        let native = |b: &[u8], acc: u64| {
            b.chunks(2).fold(acc, |a, w| {
                a + u16::from_ne_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u64
            })
        };
        let base_sum = checksum::fold(native(&f[l4_off..], native(&pseudo, 0))) as u32;
        Ok(Template {
            frame: f,
            l4_off: l4_off as u32,
            stamp_off: (l4_off + 8) as u32,
            base_sum,
            base_sport: spec.base_sport,
            flows: spec.flows,
        })
    }
}

impl Template {
    /// What the kernel-side engine does to each frame, for the user-space (AF_XDP) engine:
    /// `frame` is a copy of [`Template::frame`] (only the port, stamp and checksum change);
    /// writes flow `flow`'s source port and the 16-byte `stamp` and finishes the UDP
    /// checksum from [`Template::base_sum`] in constant time.
    #[inline]
    pub fn stamp(&self, frame: &mut [u8], flow: u16, stamp: &[u8; STAMP_LEN]) {
        let l4 = self.l4_off as usize;
        let sport = self.base_sport.wrapping_add(flow).to_be_bytes();
        frame[l4..l4 + 2].copy_from_slice(&sport);
        frame[l4 + 8..l4 + 8 + STAMP_LEN].copy_from_slice(stamp);
        let mut acc = self.base_sum as u64 + u16::from_ne_bytes(sport) as u64;
        for w in stamp.chunks_exact(2) {
            acc += u16::from_ne_bytes([w[0], w[1]]) as u64;
        }
        // 0 means "no checksum" over IPv4 and is invalid over IPv6: all ones instead.
        let c = match !checksum::fold(acc) {
            0 => 0xffff,
            c => c,
        };
        frame[l4 + 6..l4 + 8].copy_from_slice(&c.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse_headers;

    fn spec(src: &str, dst: &str, len: usize) -> UdpSpec {
        UdpSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            base_sport: 1000,
            dport: 9,
            flows: 4,
            len,
        }
    }

    fn finish(t: &Template, flow: u16, stamp: [u8; 16]) -> Vec<u8> {
        let mut f = t.frame.clone();
        t.stamp(&mut f, flow, &stamp);
        f
    }

    #[test]
    fn finished_frames_carry_valid_checksums_v4_and_v6() {
        for (src, dst, len) in [
            ("192.0.2.1", "198.51.100.2", 60),
            ("2001:db8::1", "2001:db8::2", 78),
            ("192.0.2.1", "198.51.100.2", 1514),
            ("2001:db8::1", "2001:db8::2", 1001),
        ] {
            let t = Template::udp(&spec(src, dst, len)).unwrap();
            let f = finish(&t, 3, *b"0123456789abcdef");
            let h = parse_headers(&f).unwrap();
            assert_eq!((h.src_port, h.dst_port, h.proto), (1003, 9, 17));
            let l4 = t.l4_off as usize;
            let ph = match (t.frame[12], h.l3) {
                (0x08, crate::wire::L3::Ipv4 { src, dst, .. }) => {
                    checksum::PseudoHeader::V4 { src, dst }
                }
                (_, crate::wire::L3::Ipv6 { src, dst, .. }) => {
                    checksum::PseudoHeader::V6 { src, dst }
                }
                other => panic!("{other:?}"),
            };
            assert!(
                ph.verify(17, &f[l4..]),
                "{src} len {len}: UDP checksum must verify"
            );
        }
    }

    #[test]
    fn bad_specs_are_refused_with_reasons() {
        assert_eq!(
            Template::udp(&spec("2001:db8::1", "2001:db8::2", 60)).unwrap_err(),
            TemplateError::Length {
                len: 60,
                min: 78,
                family: "IPv6"
            }
        );
        assert!(matches!(
            Template::udp(&spec("192.0.2.1", "2001:db8::2", 60)),
            Err(TemplateError::Family { .. })
        ));
        let mut s = spec("192.0.2.1", "192.0.2.2", 60);
        s.base_sport = 65535;
        assert!(matches!(
            Template::udp(&s),
            Err(TemplateError::Ports { .. })
        ));
    }
}
