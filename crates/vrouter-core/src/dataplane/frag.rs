//! IPv4 fragmentation (RFC 791 section 3.2, RFC 1812 5.2.6). The first fragment is made in
//! place by truncating the original; the others are written into buffers the caller provides.
//! Used when a packet without DF exceeds the egress MTU, including the inner packet before
//! IPIP encapsulation (so the far end never has to reassemble a tunnel: RFC 2003 section 5.1
//! lets the encapsulator fragment the inner datagram, and our decapsulator refuses outer
//! fragments).

use crate::wire::ipv4::{Ipv4Packet, FLAG_MF, MIN_HEADER_LEN, OFFSET_MASK};

/// Payload bytes per fragment for a header of `hl` bytes under `mtu` (a multiple of 8).
#[inline]
pub fn piece(mtu: usize, hl: usize) -> usize {
    mtu.saturating_sub(hl) & !7
}

/// The header of a non-first fragment: the fixed part plus only the options whose copy bit is
/// set (RFC 791), padded with end-of-options to a multiple of 4. `hdr` must be a validated
/// header (options already walked by the input checks). Returns the length written to `out`.
pub fn nonfirst_header(hdr: &[u8], out: &mut [u8; 60]) -> usize {
    out[..MIN_HEADER_LEN].copy_from_slice(&hdr[..MIN_HEADER_LEN]);
    let mut n = MIN_HEADER_LEN;
    let opts = &hdr[MIN_HEADER_LEN..];
    let mut i = 0;
    while i < opts.len() {
        let t = opts[i];
        if t == 0 {
            break;
        }
        if t == 1 {
            i += 1;
            continue;
        }
        let l = opts.get(i + 1).map(|l| *l as usize).unwrap_or(0);
        if l < 2 || i + l > opts.len() {
            break; // not reached for validated headers
        }
        if t & 0x80 != 0 {
            out[n..n + l].copy_from_slice(&opts[i..i + l]);
            n += l;
        }
        i += l;
    }
    while !n.is_multiple_of(4) {
        out[n] = 0;
        n += 1;
    }
    out[0] = 0x40 | (n / 4) as u8;
    n
}

/// How a packet of header length `hl` and `payload` bytes splits under `mtu`: the first
/// fragment's payload size, the later fragments' header length and payload size, and the
/// number of fragments. `None` if the MTU cannot carry even 8 bytes of payload.
pub fn plan(mtu: usize, hl: usize, hl_rest: usize, payload: usize) -> Option<(usize, usize, usize)> {
    let first = piece(mtu, hl);
    let rest = piece(mtu, hl_rest);
    if first == 0 || rest == 0 {
        return None;
    }
    let count = if payload <= first { 1 } else { 1 + (payload - first).div_ceil(rest) };
    Some((first, rest, count))
}

/// Writes the fragment carrying `payload[at..at + size]` of the datagram `v` (a validated
/// IPv4 packet, trimmed to its total length) into `out`, using the non-first header
/// `rest_hdr`. Returns the bytes written.
pub fn write_fragment(v: Ipv4Packet<&[u8]>, rest_hdr: &[u8], at: usize, size: usize, out: &mut [u8]) -> usize {
    let payload = v.payload();
    let size = size.min(payload.len() - at);
    let last = at + size == payload.len();
    let orig_ff = v.flags_frag();
    let off = (orig_ff & OFFSET_MASK) + (at / 8) as u16;
    let mf = if last { orig_ff & FLAG_MF } else { FLAG_MF };
    let h = rest_hdr.len();
    out[..h].copy_from_slice(rest_hdr);
    out[h..h + size].copy_from_slice(&payload[at..at + size]);
    // Written just above: `rest_hdr` is a whole header (20 bytes at least).
    let mut f = Ipv4Packet::new_unchecked(&mut out[..h + size]);
    f.set_total_len((h + size) as u16);
    f.set_flags_frag(mf | off);
    f.fill_checksum();
    h + size
}

/// Turns `v` (a validated IPv4 packet) into its first fragment in place, keeping `size` payload
/// bytes. Returns the new total length.
pub fn truncate_first(mut v: Ipv4Packet<&mut [u8]>, size: usize) -> usize {
    let hl = v.header_len();
    let ff = v.flags_frag();
    v.set_total_len((hl + size) as u16);
    v.set_flags_frag(ff | FLAG_MF);
    v.fill_checksum();
    hl + size
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::{self, PROTO_UDP};

    fn datagram(payload: usize, opts: &[u8]) -> Vec<u8> {
        let hl = 20 + opts.len();
        let mut p = vec![0u8; hl + payload];
        ipv4::write_header(&mut p, 0, (hl + payload) as u16, 0x4242, 0, 64, PROTO_UDP, 0x0a00_0001, 0x0a00_0002);
        p[0] = 0x40 | (hl / 4) as u8;
        p[20..hl].copy_from_slice(opts);
        for (i, b) in p[hl..].iter_mut().enumerate() {
            *b = i as u8;
        }
        Ipv4Packet::new_checked(&mut p[..]).unwrap().fill_checksum();
        p
    }

    /// Fragments `p` under `mtu`, returning every fragment as its own Vec.
    fn split(p: &[u8], mtu: usize) -> Vec<Vec<u8>> {
        let hl = (p[0] & 0xf) as usize * 4;
        let mut rest = [0u8; 60];
        let rl = nonfirst_header(&p[..hl], &mut rest);
        let (first, restsz, count) = plan(mtu, hl, rl, p.len() - hl).unwrap();
        let mut out = Vec::new();
        let mut at = first;
        for _ in 1..count {
            let mut b = vec![0u8; 1600];
            let n = write_fragment(Ipv4Packet::new_checked(p).unwrap(), &rest[..rl], at, restsz, &mut b);
            b.truncate(n);
            out.push(b);
            at += restsz;
        }
        let mut f = p.to_vec();
        let n = truncate_first(Ipv4Packet::new_checked(&mut f[..]).unwrap(), first);
        f.truncate(n);
        out.insert(0, f);
        out
    }

    /// Reassembles by offset (a reference implementation for the test).
    fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
        let mut data = vec![];
        for f in frags {
            let v = Ipv4Packet::new_checked(&f[..]).unwrap();
            assert!(v.verify_checksum());
            let off = v.frag_offset() as usize * 8;
            let pl = v.payload();
            if data.len() < off + pl.len() {
                data.resize(off + pl.len(), 0);
            }
            data[off..off + pl.len()].copy_from_slice(pl);
        }
        data
    }

    #[test]
    fn splits_and_reassembles_with_mf_and_offsets() {
        let p = datagram(3000, &[]);
        let frags = split(&p, 1480);
        assert_eq!(frags.len(), 3);
        for (i, f) in frags.iter().enumerate() {
            assert!(f.len() <= 1480);
            let e = etherparse::Ipv4HeaderSlice::from_slice(f).unwrap();
            assert_eq!(e.more_fragments(), i < 2, "fragment {i}");
            assert_eq!(e.identification(), 0x4242);
            assert_eq!(e.fragments_offset().byte_offset() as usize % 8, 0);
        }
        assert_eq!(reassemble(&frags), p[20..]);
    }

    #[test]
    fn only_copied_options_repeat_in_later_fragments() {
        // record route (07, not copied) and a copied option 0x94 (router alert), 4 bytes each
        let p = datagram(100, &[0x94, 4, 0, 0, 7, 4, 4, 0]);
        let frags = split(&p, 68);
        assert!(frags.len() > 1);
        assert_eq!(frags[0][0] & 0xf, 7); // first keeps all options
        for f in &frags[1..] {
            assert_eq!(f[0] & 0xf, 6, "20 + router alert");
            assert_eq!(&f[20..24], &[0x94, 4, 0, 0]);
        }
        assert_eq!(reassemble(&frags), p[28..]);
    }

    #[test]
    fn refragmenting_a_fragment_keeps_its_offset_and_mf() {
        let p = datagram(2000, &[]);
        let first = split(&p, 1500).remove(0); // MF set, offset 0
        let again = split(&first, 600);
        let last = Ipv4Packet::new_checked(&again.last().unwrap()[..]).unwrap();
        assert!(last.more_frags(), "the original had more fragments after it");
        assert_eq!(reassemble(&again), first[20..]);
    }

    #[test]
    fn plan_refuses_tiny_mtu() {
        assert_eq!(plan(27, 20, 20, 100), None);
        assert_eq!(plan(28, 20, 20, 100).map(|p| p.2), Some(13));
    }

    proptest::proptest! {
        #[test]
        fn fragments_reassemble_to_original(payload in 1usize..4000, mtu in 68usize..1600) {
            let p = datagram(payload, &[]);
            let frags = split(&p, mtu);
            for f in &frags { proptest::prop_assert!(f.len() <= mtu); }
            proptest::prop_assert_eq!(reassemble(&frags), p[20..].to_vec());
        }
    }
}
