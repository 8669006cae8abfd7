//! Software segmentation (GSO) on the way to a wire: a TCP segment of up to 64 KiB from a pod
//! (or a UDP one sent with `UDP_SEGMENT`), possibly already inside IPIP, becomes wire-sized
//! segments, each written once into its transmit buffer: headers copied from the big frame and
//! fixed (lengths, IPv4 IDs and checksums of outer and inner headers, TCP sequence numbers and
//! flags, the transport checksum computed whole) by [`Segments::header`], then its slice of
//! the payload, copied by the port straight from the big frame into one chunk or a chain. As the
//! kernel's `tcp_gso_segment`/`__udp_gso_segment` do: CWR only on the first segment, FIN and PSH
//! only on the last; every IPv4 header's ID counts up from the big frame's.

use super::{fill_ip_csum, fill_l4_csum, layout, Gso, Layout, Offload, TCP_CWR, TCP_FIN, TCP_PSH};
use std::ops::Range;

use crate::wire::ipv4::PROTO_UDP;

/// How a GSO frame is cut: see [`Segments::plan`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Segments {
    l: Layout,
    /// Payload bytes per segment (the last may have fewer).
    mss: usize,
    /// Payload bytes in all.
    payload: usize,
    count: usize,
}

/// Why a frame marked for GSO cannot be cut.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GsoError {
    #[error("not TCP or UDP over IPv4 (or IPIP), or its headers are cut short")]
    NotSegmentable,
    #[error("the GSO type does not match the transport protocol")]
    WrongProtocol,
}

impl Segments {
    /// Plans the cut of `frame` as `off` asks. A frame whose payload fits one segment comes
    /// out as that one segment (with its checksum completed), as the kernel treats "GSO"
    /// frames too small to cut.
    pub fn plan(frame: &[u8], off: &Offload) -> Result<Segments, GsoError> {
        let l = layout(frame).ok_or(GsoError::NotSegmentable)?;
        let want_udp = off.gso == Gso::Udp4;
        if (l.proto == PROTO_UDP) != want_udp {
            return Err(GsoError::WrongProtocol);
        }
        let payload = frame.len() - l.hdr_len;
        let mss = usize::from(off.gso_size.max(1));
        debug_assert!(l.hdr_len <= MAX_HDR, "a header longer than the GSO header buffer");
        Ok(Segments { l, mss, payload, count: payload.div_ceil(mss).max(1) })
    }

    /// How many segments.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The headers' layout (the same in every segment).
    pub fn layout(&self) -> &Layout {
        &self.l
    }

    /// Length of segment `k`'s frame.
    pub fn len(&self, k: usize) -> usize {
        self.l.hdr_len + self.payload_len(k)
    }

    /// Whether there is nothing to send (never: at least one segment).
    pub fn is_empty(&self) -> bool {
        false
    }

    fn payload_len(&self, k: usize) -> usize {
        self.mss.min(self.payload.saturating_sub(k * self.mss))
    }

    /// Segment `k` of `frame` (the frame planned): its headers, written into `hdr` (which
    /// needs `layout().hdr_len` bytes) with every length, ID, sequence number, flag and
    /// checksum set, and the range of `frame` that is its payload. The segment is
    /// `hdr[..hdr_len]` followed by `frame[range]`. `None` if `hdr` is too short or `k` is past
    /// the last.
    pub fn header(&self, frame: &[u8], k: usize, hdr: &mut [u8]) -> Option<Range<usize>> {
        if k >= self.count {
            return None;
        }
        let (h, n) = (self.l.hdr_len, self.payload_len(k));
        let out = hdr.get_mut(..h)?;
        let from = h + k * self.mss;
        out.copy_from_slice(&frame[..h]);
        let l = &self.l;
        // IPv4 headers, outer first: length, ID counting up, checksum.
        for ip in [Some(l.outer), l.inner].into_iter().flatten() {
            let len = (h + n - ip) as u16;
            out[ip + 2..ip + 4].copy_from_slice(&len.to_be_bytes());
            let id = u16::from_be_bytes([frame[ip + 4], frame[ip + 5]]).wrapping_add(k as u16);
            out[ip + 4..ip + 6].copy_from_slice(&id.to_be_bytes());
            fill_ip_csum(out, ip);
        }
        let t = l.l4;
        if l.proto == PROTO_UDP {
            out[t + 4..t + 6].copy_from_slice(&((h + n - t) as u16).to_be_bytes());
        } else {
            let seq = u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]);
            out[t + 4..t + 8].copy_from_slice(&seq.wrapping_add((k * self.mss) as u32).to_be_bytes());
            if k > 0 {
                out[t + 13] &= !TCP_CWR;
            }
            if k + 1 < self.count {
                out[t + 13] &= !(TCP_FIN | TCP_PSH);
            }
        }
        fill_l4_csum(out, l, h, &frame[from..from + n]);
        Some(from..from + n)
    }
}

#[cfg(test)]
impl Segments {
    /// Segment `k` written whole into `out`, headers then payload, as the port copies it; its
    /// length, or `None` if `out` is too short or `k` is past the last.
    pub(crate) fn write(&self, frame: &[u8], k: usize, out: &mut [u8]) -> Option<usize> {
        let h = self.l.hdr_len;
        let r = self.header(frame, k, out.get_mut(..h)?)?;
        let n = r.len();
        out.get_mut(h..h + n)?.copy_from_slice(&frame[r]);
        Some(h + n)
    }
}

/// The most header bytes a segment carries: Ethernet, two IPv4 headers with options (IPIP)
/// and a TCP header with options.
pub const MAX_HDR: usize = 14 + 60 + 60 + 60;

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Gso;
    use super::*;
    use proptest::prelude::*;

    fn tso(mss: u16) -> Offload {
        Offload { csum_partial: true, csum_valid: false, gso: Gso::Tcp4, gso_size: mss }
    }

    /// Cuts `big` and checks every segment: checksums valid, and the payloads in order are the
    /// big frame's. Returns the segments.
    fn cut(big: &[u8], off: Offload) -> Vec<Vec<u8>> {
        let s = Segments::plan(big, &off).unwrap();
        let mut out = Vec::new();
        for k in 0..s.count() {
            let mut buf = vec![0u8; 2048];
            let n = s.write(big, k, &mut buf).unwrap();
            assert_eq!(n, s.len(k));
            buf.truncate(n);
            assert!(all_checksums_valid(&buf), "segment {k} of {}", s.count());
            out.push(buf);
        }
        assert_eq!(s.write(big, s.count(), &mut [0u8; 2048]), None);
        out
    }

    #[test]
    fn a_tso_segment_becomes_mss_sized_segments_with_sequence_ids_and_flags_fixed() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        // CWR, PSH and FIN on the big segment (as a last write with ECN would have).
        let big = tcp(&payload, 1000, 0x10 | TCP_CWR | TCP_PSH | TCP_FIN, false);
        let segs = cut(&big, tso(1448));
        assert_eq!(segs.len(), 7); // 6 x 1448 + 1312
        let mut joined = Vec::new();
        for (k, s) in segs.iter().enumerate() {
            let l = layout(s).unwrap();
            assert_eq!(l.hdr_len, 66);
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14, "IPv4 total length");
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x2000 + k as u16, "IPv4 ID counts up");
            let seq = u32::from_be_bytes([s[38], s[39], s[40], s[41]]);
            assert_eq!(seq, 1000 + 1448 * k as u32);
            let flags = s[47];
            assert_eq!(flags & TCP_CWR != 0, k == 0, "CWR only on the first");
            assert_eq!(flags & (TCP_PSH | TCP_FIN) == TCP_PSH | TCP_FIN, k == 6, "PSH and FIN only on the last");
            assert_eq!(&s[54..66], &big[54..66], "options copied");
            joined.extend_from_slice(&s[66..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn inside_ipip_both_headers_are_fixed() {
        let payload = vec![0xabu8; 4000];
        let big = tcp(&payload, 7, 0x18, true);
        let segs = cut(&big, tso(1428)); // a 1480-byte pod MTU, less IPv4, TCP and timestamps
        assert_eq!(segs.len(), 3);
        for (k, s) in segs.iter().enumerate() {
            assert_eq!(u16::from_be_bytes([s[16], s[17]]) as usize, s.len() - 14, "outer length");
            assert_eq!(u16::from_be_bytes([s[36], s[37]]) as usize, s.len() - 34, "inner length");
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x100 + k as u16, "outer ID");
            assert_eq!(u16::from_be_bytes([s[38], s[39]]), 0x2000 + k as u16, "inner ID");
            assert!(s.len() <= 1514, "fits a 1500-byte MTU");
        }
    }

    #[test]
    fn udp_segmentation_gives_each_datagram_its_own_header() {
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        for ipip in [false, true] {
            let big = udp(&payload, ipip);
            let off = Offload { csum_partial: true, csum_valid: false, gso: Gso::Udp4, gso_size: 1200 };
            let segs = cut(&big, off);
            assert_eq!(
                segs.iter().map(|s| s.len() - layout(s).unwrap().hdr_len).collect::<Vec<_>>(),
                [1200, 1200, 600]
            );
            let mut joined = Vec::new();
            for s in &segs {
                let l = layout(s).unwrap();
                assert_eq!(u16::from_be_bytes([s[l.l4 + 4], s[l.l4 + 5]]) as usize, s.len() - l.l4, "UDP length");
                joined.extend_from_slice(&s[l.hdr_len..]);
            }
            assert_eq!(joined, payload);
        }
    }

    #[test]
    fn frames_that_cannot_be_cut_are_refused_not_mangled() {
        let big = tcp(&[0u8; 3000], 1, 0x10, false);
        let udp_gso = Offload { gso: Gso::Udp4, ..tso(1000) };
        assert_eq!(Segments::plan(&big, &udp_gso), Err(GsoError::WrongProtocol));
        assert_eq!(Segments::plan(&big[..50], &tso(1000)), Err(GsoError::NotSegmentable));
        let mut icmp = big.clone();
        icmp[23] = 1;
        assert_eq!(Segments::plan(&icmp, &tso(1000)), Err(GsoError::NotSegmentable));
        // A buffer too short for the segment.
        let s = Segments::plan(&big, &tso(1000)).unwrap();
        assert_eq!(s.write(&big, 0, &mut [0u8; 100]), None);
        // Small enough for one segment: one, checksum completed.
        let small = tcp(&[1u8; 500], 1, 0x18, false);
        assert_eq!(cut(&small, tso(1448)).len(), 1);
    }

    proptest! {
        /// Any payload and segment size, plain or IPIP, TCP or UDP: the segments' payloads
        /// join to the original, every checksum verifies, and none exceeds mss.
        #[test]
        fn segments_reassemble_to_the_original(len in 1usize..20_000, mss in 536u16..1900, ipip: bool, is_udp: bool, seed: u8) {
            let payload: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            let (big, off) = if is_udp {
                (udp(&payload, ipip), Offload { gso: Gso::Udp4, ..tso(mss) })
            } else {
                (tcp(&payload, u32::MAX - 5000, 0x18, ipip), tso(mss))
            };
            let s = Segments::plan(&big, &off).unwrap();
            prop_assert_eq!(s.count(), len.div_ceil(usize::from(mss)));
            let mut joined = Vec::new();
            let mut buf = vec![0u8; 2100];
            for k in 0..s.count() {
                let n = s.write(&big, k, &mut buf).unwrap();
                prop_assert!(all_checksums_valid(&buf[..n]));
                let l = layout(&buf[..n]).unwrap();
                prop_assert!(n - l.hdr_len <= usize::from(mss));
                joined.extend_from_slice(&buf[l.hdr_len..n]);
            }
            prop_assert_eq!(joined, payload);
        }
    }
}
