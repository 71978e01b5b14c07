//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

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
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
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
}
