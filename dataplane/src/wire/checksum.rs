//! The Internet checksum (RFC 1071), its incremental update (RFC 1624), and the IPv4/IPv6
//! pseudo-headers that transport checksums cover (RFC 768, RFC 9293, RFC 8200 §8.1).

use core::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` as big-endian 16-bit words (an odd last byte is padded
/// with zero), folded to 16 bits. Not complemented.
#[inline]
pub fn sum(data: &[u8]) -> u16 {
    fold(sum_words(data, 0))
}

/// Adds `data`'s 16-bit words to a 64-bit accumulator (no carries lost before 2^48 bytes).
#[inline]
pub fn sum_words(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Adding the four 16-bit words of `w` as two 32-bit halves keeps the carries.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [b] = rest.remainder() {
        acc += (*b as u64) << 8;
    }
    acc
}

/// Folds a wide accumulator to a 16-bit one's-complement sum.
#[inline]
pub fn fold(acc: u64) -> u16 {
    // Fixed steps instead of a data-dependent loop: 64 -> 33 -> 18 -> 17 -> 16 bits.
    let acc = (acc & 0xffff_ffff) + (acc >> 32);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    let acc = (acc & 0xffff) + (acc >> 16);
    acc as u16
}

/// Whether an unfolded sum folds to 0xffff (what a buffer with a valid checksum sums to),
/// without folding: the fold preserves the value mod 0xffff and yields 0 only for 0.
#[inline(always)]
pub fn folds_to_ones(acc: u64) -> bool {
    acc != 0 && acc.is_multiple_of(0xffff)
}

/// The checksum field value for `data` (whose own checksum field must be zero).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// Incremental update (RFC 1624, eqn. 3): the checksum after a 16-bit word changed from
/// `old` to `new`, given the checksum field `hc` before the change.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = (!hc as u64) + (!old as u64) + new as u64;
    !fold(acc)
}

/// [`update16`] for the one change a router makes per packet: the high byte of a word (the
/// IPv4 TTL) decremented by one, which lowers the word by exactly 0x0100 (no borrow, since
/// the byte was at least 1). Then `~old + new` is the constant 0xfeff whatever the low byte,
/// so the update is one add and one fold (the sum is at most 0x1fefe), with the same result
/// as eqn. 3 for every input.
#[inline]
pub fn update_high_byte_decrement(hc: u16) -> u16 {
    let acc = (!hc) as u32 + 0xfeff;
    !((acc & 0xffff) + (acc >> 16)) as u16
}

/// Sum of the IPv4 pseudo-header (source, destination, zero, protocol, L4 length), unfolded,
/// to be continued with [`sum_words`] over the L4 bytes.
#[inline]
pub fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u32) -> u64 {
    let s = u32::from_be_bytes(src.octets()) as u64;
    let d = u32::from_be_bytes(dst.octets()) as u64;
    // Each address is two 16-bit words; the 32-bit length is too, and for any real IPv4
    // length (< 2^16) its high word is zero, so v4 and v6 add lengths the same way.
    (s >> 16)
        + (s & 0xffff)
        + (d >> 16)
        + (d & 0xffff)
        + proto as u64
        + (len >> 16) as u64
        + (len & 0xffff) as u64
}

/// Sum of the IPv6 pseudo-header (source, destination, 32-bit upper-layer length, next
/// header), unfolded, to be continued with [`sum_words`] over the upper-layer bytes.
#[inline]
pub fn pseudo_header_v6(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u64 {
    let acc = sum_words(&src.octets(), 0);
    let acc = sum_words(&dst.octets(), acc);
    acc + (len >> 16) as u64 + (len & 0xffff) as u64 + next_header as u64
}

/// The addresses a TCP, UDP or ICMPv6 checksum covers besides the segment itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PseudoHeader {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl PseudoHeader {
    /// The pseudo-header's unfolded sum for an L4 segment of `len` bytes of protocol `proto`.
    #[inline]
    pub fn sum(&self, proto: u8, len: u32) -> u64 {
        match self {
            PseudoHeader::V4 { src, dst } => pseudo_header_v4(*src, *dst, proto, len),
            PseudoHeader::V6 { src, dst } => pseudo_header_v6(src, dst, proto, len),
        }
    }

    /// Whether `segment` (checksum field included) verifies under this pseudo-header.
    #[inline]
    pub fn verify(&self, proto: u8, segment: &[u8]) -> bool {
        fold(sum_words(segment, self.sum(proto, segment.len() as u32))) == 0xffff
    }

    /// The checksum field value for `segment`, whose checksum field must be zero.
    #[inline]
    pub fn checksum(&self, proto: u8, segment: &[u8]) -> u16 {
        !fold(sum_words(segment, self.sum(proto, segment.len() as u32)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // IPv4 header from RFC 1071's usual example (checksum field zeroed): 0xb861 is correct.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn known_header_checksum() {
        assert_eq!(checksum(&HDR), 0xb861);
        let mut h = HDR;
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(sum(&h), 0xffff, "a valid header sums to all ones");
    }

    #[test]
    fn fold_extremes() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xffff), 0xffff);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(u64::MAX), 0xffff);
        assert_eq!(fold(0xffff_ffff_0000_0001), 1);
    }

    #[test]
    fn folds_to_ones_agrees_with_fold() {
        for acc in [
            0,
            1,
            0xfffe,
            0xffff,
            0x1_0000,
            0x1_fffe,
            0x2_fffd,
            u64::MAX,
            0xffff * 77,
        ] {
            assert_eq!(folds_to_ones(acc), fold(acc) == 0xffff, "{acc:#x}");
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let acc = x >> (x % 40);
            assert_eq!(folds_to_ones(acc), fold(acc) == 0xffff, "{acc:#x}");
        }
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum(&[0x12]), 0x1200);
        assert_eq!(sum(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_matches_full_recompute_for_ttl_decrement() {
        let mut h = HDR;
        let hc = checksum(&h);
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        assert_eq!(update16(hc, old, new), checksum(&h));
    }

    #[test]
    fn high_byte_decrement_matches_update16() {
        for hc in 0..=0xffffu16 {
            for (hi, lo) in [(1u8, 0u8), (2, 17), (64, 6), (255, 255), (128, 0)] {
                let old = u16::from_be_bytes([hi, lo]);
                let new = u16::from_be_bytes([hi - 1, lo]);
                assert_eq!(
                    update_high_byte_decrement(hc),
                    update16(hc, old, new),
                    "{hc:#x}"
                );
            }
        }
    }

    #[test]
    fn pseudo_header_v4_matches_spelled_out_bytes() {
        let (src, dst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(198, 51, 100, 7));
        let bytes = [192, 0, 2, 1, 198, 51, 100, 7, 0, 17, 0x01, 0x2c];
        assert_eq!(fold(pseudo_header_v4(src, dst, 17, 300)), sum(&bytes));
    }

    #[test]
    fn pseudo_header_v6_matches_spelled_out_bytes() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "fe80::1234:5678".parse().unwrap();
        let mut bytes = [0u8; 40];
        bytes[..16].copy_from_slice(&src.octets());
        bytes[16..32].copy_from_slice(&dst.octets());
        bytes[32..36].copy_from_slice(&70_000u32.to_be_bytes());
        bytes[39] = 6;
        assert_eq!(fold(pseudo_header_v6(&src, &dst, 6, 70_000)), sum(&bytes));
    }
}
