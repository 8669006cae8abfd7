//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).

/// Adds `data` to a running one's-complement sum (not yet folded or inverted).
///
/// The sum does not care about byte order (RFC 1071 2(B)): `data` is added as little-endian
/// 32-bit words into a 64-bit sum, which needs no carry handling (2^32 words before it could
/// overflow) and is a reduction the compiler vectorizes, then folded and swapped back to
/// network order. On the payloads GSO and GRO checksum: 32-43 GiB/s, 2.1-2.8x the big-endian
/// 32-bit loop it replaces and 4-6x RFC 1071's 16-bit one (`cargo bench -p vrouter-core
/// --bench checksum`, BENCHMARKS.md).
#[inline]
pub fn sum(acc: u64, data: &[u8]) -> u64 {
    let mut le = 0u64;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        le += u64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let rest = chunks.remainder();
    let mut i = 0;
    while i + 1 < rest.len() {
        le += u64::from(u16::from_le_bytes([rest[i], rest[i + 1]]));
        i += 2;
    }
    if i < rest.len() {
        le += u64::from(rest[i]);
    }
    acc + u64::from(fold(le).swap_bytes())
}

/// Folds a running sum to 16 bits (without inverting).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store for `data` (whose checksum field must be zero).
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(0, data))
}

/// True if `data` (checksum field included) sums to 0xffff, i.e. verifies.
#[inline]
pub fn verify(data: &[u8]) -> bool {
    if let Ok(h) = <&[u8; 20]>::try_from(data) {
        return verify20(h);
    }
    fold(sum(0, data)) == 0xffff
}

/// [`verify`] for the common option-less IPv4 header: five 32-bit adds, no loop.
#[inline(always)]
pub fn verify20(h: &[u8; 20]) -> bool {
    let w = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]) as u64;
    fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit field changes from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')`.
#[inline]
pub fn update16(hc: u16, old: u16, new: u16) -> u16 {
    let s = (!hc as u32) + (!old as u32 & 0xffff) + new as u32;
    let s = (s & 0xffff) + (s >> 16);
    !((s & 0xffff) + (s >> 16)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    // The IPv4 header from RFC 1071 discussions / Wikipedia's worked example:
    // 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8,
        0x00, 0xc7,
    ];

    #[test]
    fn checksum_matches_known_header() {
        let mut h = HDR;
        assert!(verify(&h));
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(0, &[0x01])), 0x0100);
        assert_eq!(fold(sum(0, &[0x01, 0x02, 0x03])), 0x0102 + 0x0300);
    }

    #[test]
    fn incremental_update_equals_recompute_for_ttl_decrement() {
        let mut h = HDR;
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let inc = update16(0xb861, old, new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(inc, checksum(&h));
    }

    /// RFC 1071 as written: big-endian 16-bit words, the odd byte padded with a zero.
    fn reference_sum(acc: u64, data: &[u8]) -> u64 {
        let words = data.chunks(2).map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])));
        acc + words.sum::<u64>()
    }

    proptest::proptest! {
        #[test]
        fn the_sum_is_rfc_1071s_for_any_data_and_running_sum(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
            acc in 0u64..1 << 40)
        {
            proptest::prop_assert_eq!(fold(sum(acc, &data)), fold(reference_sum(acc, &data)));
        }

        #[test]
        fn incremental_update_matches_full_recompute(
            words in proptest::collection::vec(proptest::prelude::any::<u16>(), 10),
            idx in 0usize..10, new in proptest::prelude::any::<u16>())
        {
            let idx = if idx == 5 { 4 } else { idx }; // word 5 is the checksum field
            let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            bytes[10] = 0; bytes[11] = 0;
            let hc = checksum(&bytes);
            let old = u16::from_be_bytes([bytes[2 * idx], bytes[2 * idx + 1]]);
            bytes[2 * idx..2 * idx + 2].copy_from_slice(&new.to_be_bytes());
            let full = checksum(&bytes);
            let inc = update16(hc, old, new);
            // 0x0000 and 0xffff are the same value in one's complement.
            proptest::prop_assert!(inc == full || (inc ^ full) == 0xffff && (inc == 0 || full == 0));
        }
    }
}
