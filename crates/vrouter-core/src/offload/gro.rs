//! Receive offload (GRO) on the way to a TAP: consecutive in-order TCP segments of one flow
//! within a burst are merged into one segment handed to the pod with a virtio-net header
//! (`GSO_TCPV4`, partial checksum), as the kernel's `tcp_gro_receive` and VPP's gro node do.
//! The pod's stack then takes one 64 KiB segment where it would have taken 45.
//!
//! Merging copies nothing: the caller writes the first segment's frame (headers fixed by
//! [`Run::finish`]) followed by the payloads of the others ([`Seg::payload`]) with one
//! vectored write. Each segment's checksum is verified here, once ([`Seg::parse`]): a merged
//! segment reaches the pod with a partial checksum, which its stack does not verify again, and
//! one that fails verification is never merged (it goes on alone, and the pod judges it).
//!
//! Two segments merge as the kernel's rules allow: same flow (addresses, ports), the next
//! sequence number, the same acknowledgement, window, flags (but PSH and FIN), TCP options,
//! TOS, TTL and DF; every segment but the last exactly the first's size; no SYN, RST, URG or
//! CWR; a PSH or FIN, or a shorter segment, ends the run; at most 64 KiB in all.

use super::{fill_ip_csum, layout, vnet, write_partial_csum, Layout, VNET_HDR_LEN};
use super::{TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG};
use crate::wire::ipv4::PROTO_TCP;
/// The most segments one run merges (and so the most parts of its vectored write, beside the
/// first frame and the header).
pub const MAX_SEGS: usize = 64;
/// The largest IPv4 datagram.
const MAX_IP: usize = 65_535;

/// Why [`Seg::parse`] leaves a frame alone (it then goes on as it came).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Unmerged {
    /// Not a TCP segment GRO merges: not IPv4 TCP, IP or TCP options, IPIP, no payload, or a
    /// length that disagrees with the frame.
    Kind,
    /// A TCP segment whose checksum is wrong: the pod judges it (and drops it), as a receiver
    /// would; the worker counts it (`gro_bad_checksum`).
    BadChecksum,
}

/// A TCP segment as GRO sees it: plain IPv4 (no IPIP left: decapsulation came first), checksum
/// verified.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Seg {
    l: Layout,
    payload: usize,
    seq: u32,
    flags: u8,
}

impl Seg {
    /// The segment in `frame` (trimmed to its datagram, as the pipeline leaves it), if GRO may
    /// merge it: TCP over IPv4 without options, a payload, its checksum valid.
    pub fn parse(frame: &[u8]) -> Result<Seg, Unmerged> {
        let l = layout(frame).ok_or(Unmerged::Kind)?;
        if l.inner.is_some() || l.proto != PROTO_TCP || l.l4 != l.outer + 20 {
            return Err(Unmerged::Kind);
        }
        let total = usize::from(u16::from_be_bytes([frame[l.outer + 2], frame[l.outer + 3]]));
        if l.outer + total != frame.len() || frame.len() <= l.hdr_len {
            return Err(Unmerged::Kind);
        }
        if !super::verify_csum(frame) {
            return Err(Unmerged::BadChecksum);
        }
        let t = l.l4;
        Ok(Seg {
            l,
            payload: frame.len() - l.hdr_len,
            seq: u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]),
            flags: frame[t + 13],
        })
    }

    /// Where this segment's payload starts in its frame: what a merged write takes of it.
    pub fn payload(&self) -> std::ops::Range<usize> {
        self.l.hdr_len..self.l.hdr_len + self.payload
    }
}

/// Segments merged so far, in the first one's frame.
#[derive(Copy, Clone, Debug)]
pub struct Run {
    first: Seg,
    count: usize,
    /// Payload bytes so far.
    bytes: usize,
    next_seq: u32,
    /// Flags to set on the merged segment (PSH, FIN of the later segments).
    more_flags: u8,
    /// No segment may follow (PSH, FIN, a short segment, full).
    closed: bool,
}

impl Run {
    /// A run starting with `first`.
    pub fn start(first: Seg) -> Run {
        let closed = first.flags & (TCP_SYN | TCP_RST | TCP_URG | TCP_CWR | TCP_PSH | TCP_FIN) != 0;
        Run {
            first,
            count: 1,
            bytes: first.payload,
            next_seq: first.seq.wrapping_add(first.payload as u32),
            more_flags: 0,
            closed,
        }
    }

    /// Segments in the run.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Adds `seg` (in `frame`) if it continues the run whose first segment is in `first`.
    pub fn try_add(&mut self, first: &[u8], seg: &Seg, frame: &[u8]) -> bool {
        let (a, b) = (&self.first, seg);
        let mss = a.payload;
        if self.closed
            || self.count >= MAX_SEGS
            || b.seq != self.next_seq
            || b.payload > mss
            || a.l != b.l
            || a.l.hdr_len + self.bytes + b.payload - a.l.outer > MAX_IP
            || (a.flags ^ b.flags) & !(TCP_PSH | TCP_FIN) != 0
        {
            return false;
        }
        let (ip, t) = (a.l.outer, a.l.l4);
        // Flow: addresses and ports. Then TOS, DF, TTL; acknowledgement, header length and
        // window; options.
        if first[ip + 12..ip + 20] != frame[ip + 12..ip + 20]
            || first[t..t + 4] != frame[t..t + 4]
            || first[ip + 1] != frame[ip + 1]
            || first[ip + 6] & 0x40 != frame[ip + 6] & 0x40
            || first[ip + 8] != frame[ip + 8]
            || first[t + 8..t + 13] != frame[t + 8..t + 13]
            || first[t + 14..t + 16] != frame[t + 14..t + 16]
            || first[t + 20..a.l.hdr_len] != frame[t + 20..a.l.hdr_len]
        {
            return false;
        }
        self.count += 1;
        self.bytes += b.payload;
        self.next_seq = self.next_seq.wrapping_add(b.payload as u32);
        self.more_flags |= b.flags & (TCP_PSH | TCP_FIN);
        self.closed = b.payload < mss || self.more_flags != 0;
        true
    }

    /// Rewrites the first segment's headers in `first` for the merged segment (IPv4 length and
    /// checksum, PSH/FIN of the later segments, the partial TCP checksum) and returns the
    /// virtio-net header to write before it. For a run of one segment the frame is left as it
    /// is and the header says its checksum was verified.
    pub fn finish(&self, first: &mut [u8]) -> [u8; VNET_HDR_LEN] {
        let l = &self.first.l;
        if self.count == 1 {
            let mut h = [0u8; VNET_HDR_LEN];
            h[0] = 2; // DATA_VALID
            return h;
        }
        let total = l.hdr_len - l.outer + self.bytes;
        first[l.outer + 2..l.outer + 4].copy_from_slice(&(total as u16).to_be_bytes());
        fill_ip_csum(first, l.outer);
        first[l.l4 + 13] |= self.more_flags;
        write_partial_csum(first, l, l.hdr_len - l.l4 + self.bytes);
        vnet::tcp4(l, self.first.payload as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::super::gso::Segments;
    use super::super::testutil::*;
    use super::super::{complete_csum, Gso, Offload};
    use super::*;

    /// Merges `frames` as a TAP writer would: returns the merged frames (header fixed + the
    /// payloads appended, as the vectored write puts them on the TAP) with their vnet headers.
    fn merge(frames: &mut [Vec<u8>]) -> Vec<([u8; VNET_HDR_LEN], Vec<u8>)> {
        let segs: Vec<Option<Seg>> = frames.iter().map(|f| Seg::parse(f).ok()).collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < frames.len() {
            let Some(s) = segs[i] else {
                out.push(([0; VNET_HDR_LEN], frames[i].clone()));
                i += 1;
                continue;
            };
            let mut run = Run::start(s);
            let mut j = i + 1;
            while j < frames.len() {
                match segs[j] {
                    Some(n) if run.try_add(&frames[i], &n, &frames[j]) => j += 1,
                    _ => break,
                }
            }
            let h = run.finish(&mut frames[i]);
            let mut merged = frames[i].clone();
            for k in i + 1..j {
                merged.extend_from_slice(&frames[k][segs[k].unwrap().payload()]);
            }
            out.push((h, merged));
            i = j;
        }
        out
    }

    fn segments(payload: &[u8], mss: u16, seq: u32, flags: u8) -> Vec<Vec<u8>> {
        let big = tcp(payload, seq, flags, false);
        let off = Offload { csum_partial: true, csum_valid: false, gso: Gso::Tcp4, gso_size: mss };
        let s = Segments::plan(&big, &off).unwrap();
        (0..s.count())
            .map(|k| {
                let mut b = vec![0u8; 2048];
                let n = s.write(&big, k, &mut b).unwrap();
                b.truncate(n);
                b
            })
            .collect()
    }

    #[test]
    fn segments_cut_by_gso_merge_back_into_the_original() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 13) as u8).collect();
        let big = tcp(&payload, 4242, 0x18, false);
        let mut segs = segments(&payload, 1448, 4242, 0x18);
        assert_eq!(segs.len(), 14);
        let merged = merge(&mut segs);
        assert_eq!(merged.len(), 1);
        let (h, mut f) = merged.into_iter().next().unwrap();
        let o = Offload::from_vnet(&h).unwrap();
        assert_eq!((o.gso, o.gso_size, o.csum_partial), (Gso::Tcp4, 1448, true));
        assert_eq!((h[6], h[8]), (34, 16), "csum_start, csum_offset");
        // The partial checksum completed gives the original segment back, byte for byte (the
        // merged segment keeps the first one's IPv4 ID, which is the original's).
        assert!(complete_csum(&mut f));
        assert!(all_checksums_valid(&f));
        assert_eq!(f, big);
    }

    #[test]
    fn runs_end_at_psh_a_short_segment_a_gap_or_another_flow() {
        let payload = vec![5u8; 1000 * 6];
        let mut segs = segments(&payload, 1000, 1, 0x10);
        // Segment 2 carries PSH: the run 0..=2 ends there.
        segs[2][47] |= TCP_PSH;
        complete_csum(&mut segs[2]);
        // Segment 4 is lost: 5 does not follow 3.
        segs.remove(4);
        let merged = merge(&mut segs);
        let counts: Vec<usize> = merged.iter().map(|(_, f)| (f.len() - 66) / 1000).collect();
        assert_eq!(counts, [3, 1, 1]);
        assert_eq!(merged[0].1[47] & TCP_PSH, TCP_PSH, "PSH carried to the merged segment");
        assert_eq!(merged[1].0[0], 2, "a lone segment is marked verified");

        // Another flow in between: no merge across it.
        let mut a = segments(&vec![1u8; 3000], 1000, 1, 0x10);
        let mut other = tcp(&[2u8; 1000], 1001, 0x10, false);
        other[36..38].copy_from_slice(&40001u16.to_be_bytes()); // another source port
        complete_csum(&mut other);
        a.insert(1, other);
        assert_eq!(merge(&mut a).len(), 3, "0 | other | 1+2");
    }

    #[test]
    fn a_segment_with_a_bad_checksum_is_never_merged() {
        let mut segs = segments(&vec![9u8; 4000], 1000, 1, 0x10);
        segs[1][100] ^= 0xff; // payload corrupted in transit
        assert_eq!(Seg::parse(&segs[1]), Err(Unmerged::BadChecksum));
        assert!(Seg::parse(&segs[0]).is_ok());
        let merged = merge(&mut segs);
        assert_eq!(merged.len(), 3, "0 | 1 (bad, alone) | 2+3");
        assert_eq!(merged[1].0, [0; VNET_HDR_LEN], "the bad one goes on unverified, for the pod to judge");
        assert!(!all_checksums_valid(&merged[1].1));
    }

    #[test]
    fn segments_that_differ_in_ack_window_options_or_ttl_do_not_merge() {
        let base = segments(&vec![3u8; 2000], 1000, 1, 0x10);
        let edits: [fn(&mut Vec<u8>); 5] = [
            |f| f[42..46].copy_from_slice(&78u32.to_be_bytes()),  // ack
            |f| f[48..50].copy_from_slice(&501u16.to_be_bytes()), // window
            |f| f[65] = 6,                                        // timestamp option
            |f| f[22] = 62,                                       // TTL
            |f| f[47] |= TCP_SYN,                                 // flags
        ];
        for edit in edits {
            let mut segs = base.clone();
            edit(&mut segs[1]);
            crate::offload::fill_ip_csum(&mut segs[1], 14);
            complete_csum(&mut segs[1]);
            assert_eq!(merge(&mut segs).len(), 2);
        }
        // Unchanged, they merge.
        assert_eq!(merge(&mut base.clone()).len(), 1);
    }

    #[test]
    fn runs_stop_short_of_64_kib() {
        let mut segs = segments(&vec![1u8; 1448 * 50], 1448, 1, 0x10);
        let merged = merge(&mut segs);
        assert_eq!(merged.len(), 2);
        assert!(merged.iter().all(|(_, f)| f.len() - 14 <= MAX_IP));
        assert_eq!(merged[0].1.len() - 66, 1448 * 45);
    }
}
