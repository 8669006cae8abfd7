//! Segmentation and checksum offloads, as the kernel and VPP do them: keep TCP segments big for
//! as long as possible, cut them only where a wire needs it, merge them again on the way in.
//!
//! - [`vnet`]: the virtio-net header a TAP with `IFF_VNET_HDR` puts in front of each frame: a
//!   pod may hand over a segment of up to 64 KiB with its transport checksum left partial, and
//!   may be handed one.
//! - [`gso`]: such a segment cut into wire-sized ones on the way to the uplink (TCP and UDP,
//!   plain and inside IPIP), each written once, straight into its transmit buffer.
//! - [`gro`]: consecutive in-order TCP segments of one flow from the uplink merged back into one
//!   before a TAP write, their checksums verified once.
//!
//! [`Layout`] finds the headers all three work on. Nothing here allocates.

pub mod gro;
pub mod gso;
pub mod vnet;

pub use vnet::{Gso, Offload, VNET_HDR_LEN};

use crate::wire::checksum;
use crate::wire::ethernet::{self, ETHERTYPE_IPV4};
use crate::wire::ipv4::{PROTO_IPIP, PROTO_TCP, PROTO_UDP};
// The TCP flags GSO and GRO look at.
use crate::wire::l4::{TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG};

const ETH: usize = ethernet::HEADER_LEN;
/// Where TCP and UDP keep their checksum, from the start of their header.
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;

/// Where a frame's headers are: Ethernet, IPv4, for IPIP an inner IPv4, then TCP or UDP.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Offset of the (outer) IPv4 header: right after Ethernet.
    pub outer: usize,
    /// Offset of IPIP's inner IPv4 header, if the frame is IPIP.
    pub inner: Option<usize>,
    /// Offset of the TCP or UDP header.
    pub l4: usize,
    /// `PROTO_TCP` or `PROTO_UDP`.
    pub proto: u8,
    /// Length of every header up to the transport payload.
    pub hdr_len: usize,
}

impl Layout {
    /// The IPv4 header the transport header belongs to (the inner one of IPIP).
    #[inline]
    pub fn ip(&self) -> usize {
        self.inner.unwrap_or(self.outer)
    }

    /// Offset of the transport checksum within the transport header.
    #[inline]
    pub fn csum_offset(&self) -> usize {
        if self.proto == PROTO_TCP {
            TCP_CSUM
        } else {
            UDP_CSUM
        }
    }
}

/// An unfragmented IPv4 header at `at`: its length, protocol and total length, if whole.
fn ip_at(frame: &[u8], at: usize) -> Option<(usize, u8, usize)> {
    let h = frame.get(at..at + 20)?;
    let hl = usize::from(h[0] & 0x0f) * 4;
    let frag = u16::from_be_bytes([h[6], h[7]]) & 0x3fff; // MF and the offset
    if h[0] >> 4 != 4 || hl < 20 || frame.len() < at + hl || frag != 0 {
        return None;
    }
    Some((hl, h[9], usize::from(u16::from_be_bytes([h[2], h[3]]))))
}

/// The headers of an Ethernet + IPv4 (+ IPIP) + TCP/UDP frame; `None` for anything else
/// (another protocol, a fragment, headers cut short).
pub fn layout(frame: &[u8]) -> Option<Layout> {
    if frame.len() < ETH || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let outer = ETH;
    let (hl, mut proto, _) = ip_at(frame, outer)?;
    let mut inner = None;
    let mut l4 = outer + hl;
    if proto == PROTO_IPIP {
        let (ihl, p, _) = ip_at(frame, l4)?;
        inner = Some(l4);
        proto = p;
        l4 += ihl;
    }
    let l4_len = match proto {
        PROTO_TCP => usize::from(*frame.get(l4 + 12)? >> 4) * 4,
        PROTO_UDP => 8,
        _ => return None,
    };
    if l4_len < 8 || frame.len() < l4 + l4_len {
        return None;
    }
    Some(Layout { outer, inner, l4, proto, hdr_len: l4 + l4_len })
}

/// The one's-complement sum of the IPv4 pseudo-header (RFC 793, RFC 768) of the header at
/// `ip`, for a transport segment of `l4_len` bytes.
#[inline]
pub fn pseudo_sum(frame: &[u8], ip: usize, proto: u8, l4_len: usize) -> u64 {
    checksum::sum(0, &frame[ip + 12..ip + 20]) + u64::from(proto) + l4_len as u64
}

/// The transport segment of `l` in `frame`: from its header to the end of its IPv4 datagram
/// (or of the frame, if that comes first).
#[inline]
fn l4_end(frame: &[u8], l: &Layout) -> usize {
    let ip = l.ip();
    let total = usize::from(u16::from_be_bytes([frame[ip + 2], frame[ip + 3]]));
    (ip + total).min(frame.len()).max(l.l4)
}

/// Computes the transport checksum of `frame` from scratch and writes it: what a pod's partial
/// checksum (`NEEDS_CSUM`) needs before the frame leaves on a wire. False (and nothing written)
/// for a frame without a TCP or UDP header to complete.
pub fn complete_csum(frame: &mut [u8]) -> bool {
    let Some(l) = layout(frame) else { return false };
    let end = l4_end(frame, &l);
    fill_l4_csum(frame, &l, end, &[]);
    true
}

/// Computes the transport checksum of the segment `frame[l.l4..end]` followed by `more` (a
/// payload that will follow the headers on the wire; the part in `frame` then has an even
/// length, as transport headers do) laid out as `l` from scratch and writes it.
fn fill_l4_csum(frame: &mut [u8], l: &Layout, end: usize, more: &[u8]) {
    debug_assert!(more.is_empty() || (end - l.l4).is_multiple_of(2), "an odd split would misalign the sum");
    let at = l.l4 + l.csum_offset();
    frame[at..at + 2].fill(0);
    let pseudo = pseudo_sum(frame, l.ip(), l.proto, end - l.l4 + more.len());
    let sum = checksum::sum(checksum::sum(pseudo, &frame[l.l4..end]), more);
    let mut c = !checksum::fold(sum);
    if c == 0 && l.proto == PROTO_UDP {
        c = 0xffff; // RFC 768: a computed zero is sent as all ones (zero means "none")
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether the transport checksum of `frame` verifies (a UDP checksum of zero, "none", does).
pub fn verify_csum(frame: &[u8]) -> bool {
    let Some(l) = layout(frame) else { return false };
    let end = l4_end(frame, &l);
    if l.proto == PROTO_UDP && frame[l.l4 + UDP_CSUM..l.l4 + UDP_CSUM + 2] == [0, 0] {
        return true;
    }
    checksum::fold(checksum::sum(pseudo_sum(frame, l.ip(), l.proto, end - l.l4), &frame[l.l4..end])) == 0xffff
}

/// Writes the partial checksum a `NEEDS_CSUM` frame carries: the pseudo-header's sum, not
/// inverted, which the receiver (or whoever completes it) adds the segment to.
fn write_partial_csum(frame: &mut [u8], l: &Layout, l4_len: usize) {
    let c = checksum::fold(pseudo_sum(frame, l.ip(), l.proto, l4_len));
    let at = l.l4 + l.csum_offset();
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Recomputes the IPv4 header checksum of the header at `ip`.
#[inline]
fn fill_ip_csum(frame: &mut [u8], ip: usize) {
    let hl = usize::from(frame[ip] & 0x0f) * 4;
    frame[ip + 10..ip + 12].fill(0);
    let c = checksum::checksum(&frame[ip..ip + hl]);
    frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Frames for the offload tests: Ethernet + IPv4 (+ IPIP) + TCP/UDP with a payload, and
    //! an independent checksum verifier.
    use super::*;
    use crate::wire::ipv4;

    pub const SRC: u32 = 0x0af4_0102;
    pub const DST: u32 = 0x0af4_0203;
    pub const NODE_A: u32 = 0xc0a8_0a01;
    pub const NODE_B: u32 = 0xc0a8_1401;

    /// A TCP frame from SRC:40000 to DST:5201 with `payload`, sequence `seq`, `flags`, the
    /// 12 bytes of a timestamp option, checksum complete. With `ipip`, inside IPIP NODE_A ->
    /// NODE_B.
    pub fn tcp(payload: &[u8], seq: u32, flags: u8, ipip: bool) -> Vec<u8> {
        let mut l4 = vec![0u8; 32];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&5201u16.to_be_bytes());
        l4[4..8].copy_from_slice(&seq.to_be_bytes());
        l4[8..12].copy_from_slice(&77u32.to_be_bytes());
        l4[12] = 8 << 4;
        l4[13] = flags;
        l4[14..16].copy_from_slice(&500u16.to_be_bytes());
        l4[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5]);
        l4.extend_from_slice(payload);
        frame(PROTO_TCP, l4, ipip)
    }

    /// A UDP datagram SRC:5000 -> DST:6000 with `payload`, checksum complete.
    pub fn udp(payload: &[u8], ipip: bool) -> Vec<u8> {
        let mut l4 = vec![0u8; 8];
        l4[0..2].copy_from_slice(&5000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&6000u16.to_be_bytes());
        l4[4..6].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        l4.extend_from_slice(payload);
        frame(PROTO_UDP, l4, ipip)
    }

    fn frame(proto: u8, l4: Vec<u8>, ipip: bool) -> Vec<u8> {
        let inner_len = 20 + l4.len();
        let outer = if ipip { 20 } else { 0 };
        let mut f = vec![0u8; ETH + outer + inner_len];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let total = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        if ipip {
            ipv4::write_header(
                &mut f[ETH..],
                0,
                total(20 + inner_len),
                0x100,
                ipv4::FLAG_DF,
                64,
                PROTO_IPIP,
                NODE_A,
                NODE_B,
            );
        }
        ipv4::write_header(&mut f[ETH + outer..], 0, total(inner_len), 0x2000, ipv4::FLAG_DF, 63, proto, SRC, DST);
        f[ETH + outer + 20..].copy_from_slice(&l4);
        assert!(complete_csum(&mut f));
        f
    }

    /// Every IPv4 header and the transport checksum verify, computed without this module's
    /// helpers (the sum over the pseudo-header and segment, byte by byte).
    pub fn all_checksums_valid(f: &[u8]) -> bool {
        let l = layout(f).expect("a TCP/UDP frame");
        let ip_ok = |at: usize| checksum::verify(&f[at..at + usize::from(f[at] & 0xf) * 4]);
        if !ip_ok(l.outer) || l.inner.is_some_and(|i| !ip_ok(i)) {
            return false;
        }
        let ip = l.ip();
        let total = usize::from(u16::from_be_bytes([f[ip + 2], f[ip + 3]]));
        let seg = &f[l.l4..ip + total];
        let mut s: u64 = 0;
        let mut add16 = |hi: u8, lo: u8| s += u64::from(u16::from_be_bytes([hi, lo]));
        for w in f[ip + 12..ip + 20].chunks(2) {
            add16(w[0], w[1]);
        }
        add16(0, l.proto);
        let n = seg.len() as u16;
        add16((n >> 8) as u8, n as u8);
        for w in seg.chunks(2) {
            add16(w[0], *w.get(1).unwrap_or(&0));
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s == 0xffff
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn layout_finds_plain_and_ipip_headers_and_refuses_the_rest() {
        let t = tcp(b"hello", 1, 0x10, false);
        assert_eq!(layout(&t), Some(Layout { outer: 14, inner: None, l4: 34, proto: PROTO_TCP, hdr_len: 66 }));
        let t = tcp(b"hello", 1, 0x10, true);
        assert_eq!(layout(&t), Some(Layout { outer: 14, inner: Some(34), l4: 54, proto: PROTO_TCP, hdr_len: 86 }));
        let u = udp(b"x", false);
        assert_eq!(layout(&u).unwrap().hdr_len, 42);
        // Cut short, a fragment, another protocol, not IPv4.
        assert_eq!(layout(&t[..60]), None);
        let mut frag = tcp(b"hello", 1, 0x10, false);
        frag[14 + 6] |= 0x20; // MF
        assert_eq!(layout(&frag), None);
        let mut icmp = udp(b"x", false);
        icmp[14 + 9] = 1;
        assert_eq!(layout(&icmp), None);
        let mut arp = udp(b"x", false);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(layout(&arp), None);
        assert_eq!(layout(&[]), None);
    }

    #[test]
    fn a_partial_checksum_is_completed_to_what_the_sender_would_have_sent() {
        for ipip in [false, true] {
            for mut f in [tcp(&[7u8; 1001], 5, 0x18, ipip), udp(&[9u8; 333], ipip)] {
                let good = f.clone();
                let l = layout(&f).unwrap();
                let n = l4_end(&f, &l) - l.l4;
                write_partial_csum(&mut f, &l, n);
                assert!(!all_checksums_valid(&f) && !verify_csum(&f));
                assert!(complete_csum(&mut f));
                assert_eq!(f, good);
                assert!(all_checksums_valid(&f) && verify_csum(&f));
            }
        }
        let mut not_l4 = udp(b"x", false);
        not_l4[14 + 9] = 47;
        assert!(!complete_csum(&mut not_l4));
    }

    #[test]
    fn a_udp_checksum_of_zero_is_sent_as_all_ones() {
        // Find a payload whose checksum computes to zero: adjust two bytes until it does.
        let mut f = udp(&[0u8; 2], false);
        let c = u16::from_be_bytes([f[40], f[41]]);
        // Adding `c` to the payload's sum moves the checksum's complement by `c`: zero.
        f[42..44].copy_from_slice(&c.to_be_bytes());
        assert!(complete_csum(&mut f));
        assert_eq!(&f[40..42], &[0xff, 0xff]);
        assert!(verify_csum(&f));
    }
}
