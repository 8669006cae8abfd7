//! IPv4 headers (RFC 791) and the router's input checks (RFC 1812 section 5.2.2).

use super::checksum;

pub const MIN_HEADER_LEN: usize = 20;
pub use vrouter_types::acl::{PROTO_ICMP, PROTO_IPIP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// Flag bits in the 16-bit flags/fragment-offset word.
pub const FLAG_DF: u16 = 0x4000;
pub const FLAG_MF: u16 = 0x2000;
pub const OFFSET_MASK: u16 = 0x1fff;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// A view over an IPv4 header and what follows it. [`Ipv4Packet::new_checked`] guarantees 20
/// bytes, so the fixed-field accessors cannot panic; `options` and `payload` clamp to the buffer.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buf: T,
}

#[inline(always)]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
#[inline(always)]
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    pub fn new_checked(buf: T) -> Option<Self> {
        (buf.as_ref().len() >= MIN_HEADER_LEN).then_some(Ipv4Packet { buf })
    }
    /// A view over a header already validated ([`check_input`] passed on these bytes, or we wrote
    /// the header): no length check. Safe whatever `buf` is (the accessors index the buffer, so a
    /// buffer shorter than 20 bytes panics instead of misreading), but meant only for validated
    /// headers, where the check would be repeated for nothing on the hot path.
    #[inline]
    pub fn new_unchecked(buf: T) -> Self {
        debug_assert!(buf.as_ref().len() >= MIN_HEADER_LEN);
        Ipv4Packet { buf }
    }
    pub fn into_inner(self) -> T {
        self.buf
    }
    pub fn version(&self) -> u8 {
        self.buf.as_ref()[field::VER_IHL] >> 4
    }
    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        ((self.buf.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }
    pub fn tos(&self) -> u8 {
        self.buf.as_ref()[field::TOS]
    }
    pub fn total_len(&self) -> usize {
        be16(self.buf.as_ref(), field::LEN) as usize
    }
    pub fn ident(&self) -> u16 {
        be16(self.buf.as_ref(), field::IDENT)
    }
    /// The flags and fragment offset word.
    pub fn flags_frag(&self) -> u16 {
        be16(self.buf.as_ref(), field::FLAGS_FRAG)
    }
    pub fn dont_frag(&self) -> bool {
        self.flags_frag() & FLAG_DF != 0
    }
    pub fn more_frags(&self) -> bool {
        self.flags_frag() & FLAG_MF != 0
    }
    /// Fragment offset in 8-byte units.
    pub fn frag_offset(&self) -> u16 {
        self.flags_frag() & OFFSET_MASK
    }
    /// True for any fragment (MF set or non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & (FLAG_MF | OFFSET_MASK) != 0
    }
    pub fn ttl(&self) -> u8 {
        self.buf.as_ref()[field::TTL]
    }
    pub fn protocol(&self) -> u8 {
        self.buf.as_ref()[field::PROTO]
    }
    pub fn checksum(&self) -> u16 {
        be16(self.buf.as_ref(), field::CHECKSUM)
    }
    pub fn src(&self) -> u32 {
        be32(self.buf.as_ref(), field::SRC)
    }
    pub fn dst(&self) -> u32 {
        be32(self.buf.as_ref(), field::DST)
    }
    /// The option bytes, clamped to the buffer.
    pub fn options(&self) -> &[u8] {
        let b = self.buf.as_ref();
        let end = self.header_len().min(b.len()).max(MIN_HEADER_LEN);
        &b[MIN_HEADER_LEN..end]
    }
    /// The payload up to `total_len`, clamped to the buffer.
    pub fn payload(&self) -> &[u8] {
        let b = self.buf.as_ref();
        let start = self.header_len().clamp(MIN_HEADER_LEN, b.len());
        let end = self.total_len().clamp(start, b.len());
        &b[start..end]
    }
    /// True if the header checksum verifies (header length clamped to the buffer).
    pub fn verify_checksum(&self) -> bool {
        let b = self.buf.as_ref();
        checksum::verify(&b[..self.header_len().clamp(MIN_HEADER_LEN, b.len())])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buf.as_mut()[field::TTL] = ttl;
    }
    pub fn set_src(&mut self, a: u32) {
        self.buf.as_mut()[field::SRC..field::SRC + 4].copy_from_slice(&a.to_be_bytes());
    }
    pub fn set_dst(&mut self, a: u32) {
        self.buf.as_mut()[field::DST..field::DST + 4].copy_from_slice(&a.to_be_bytes());
    }
    pub fn set_total_len(&mut self, l: u16) {
        self.buf.as_mut()[field::LEN..field::LEN + 2].copy_from_slice(&l.to_be_bytes());
    }
    pub fn set_flags_frag(&mut self, v: u16) {
        self.buf.as_mut()[field::FLAGS_FRAG..field::FLAGS_FRAG + 2].copy_from_slice(&v.to_be_bytes());
    }
    /// Recomputes the header checksum over `header_len()` bytes.
    pub fn fill_checksum(&mut self) {
        let hl = self.header_len().clamp(MIN_HEADER_LEN, self.buf.as_ref().len());
        let b = self.buf.as_mut();
        b[field::CHECKSUM] = 0;
        b[field::CHECKSUM + 1] = 0;
        let c = checksum::checksum(&b[..hl]);
        b[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
    /// Decrements the TTL and patches the checksum incrementally (RFC 1624). The caller must
    /// have checked TTL > 1 (RFC 1812 5.3.1).
    ///
    /// The new TTL/protocol word is computed, not read back: a 16-bit load over the byte just
    /// stored cannot be forwarded from the store and waits for it to reach the cache.
    #[inline]
    pub fn decrement_ttl(&mut self) {
        let b = self.buf.as_mut();
        let old = be16(b, field::TTL);
        let new = old.wrapping_sub(0x0100); // TTL is the high byte; the protocol is unchanged
        b[field::TTL] = (new >> 8) as u8;
        let c = checksum::update16(be16(b, field::CHECKSUM), old, new);
        b[field::CHECKSUM..field::CHECKSUM + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// Writes a 20-byte option-less header at the start of `buf` (checksum filled).
///
/// The checksum is summed from the field values and the header written once, in 32-bit
/// words: summing it back from `buf` would load what was just stored in narrower pieces, which
/// store forwarding cannot serve, so each load would wait for the header's line (often not
/// yet in cache: the headroom IPIP grows into) to arrive and take the stores.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn write_header(
    buf: &mut [u8],
    tos: u8,
    total_len: u16,
    ident: u16,
    flags_frag: u16,
    ttl: u8,
    proto: u8,
    src: u32,
    dst: u32,
) {
    let w0 = 0x45u32 << 24 | (tos as u32) << 16 | total_len as u32;
    let w1 = (ident as u32) << 16 | flags_frag as u32;
    let w2 = (ttl as u32) << 24 | (proto as u32) << 16; // checksum field zero
    let c = !checksum::fold(w0 as u64 + w1 as u64 + w2 as u64 + src as u64 + dst as u64);
    let h = &mut buf[..MIN_HEADER_LEN];
    for (i, w) in [w0, w1, w2 | c as u32, src, dst].into_iter().enumerate() {
        h[4 * i..4 * i + 4].copy_from_slice(&w.to_be_bytes());
    }
}

/// Class of a destination address for forwarding decisions.
#[inline]
pub const fn is_multicast(a: u32) -> bool {
    a >> 28 == 0xe
}

/// RFC 1812 5.3.7 / RFC 6890: sources a router must not forward from: 0/8 ("this network"),
/// 127/8 (loopback), multicast (224/4), class E (240/4) and limited broadcast.
#[inline]
pub const fn is_martian_source(a: u32) -> bool {
    let top = a >> 24;
    top == 0 || top == 127 || a >> 28 >= 0xe
}

/// Destinations that are never valid (RFC 1812 5.3.7): 0/8, 127/8 and class E except the limited
/// broadcast address. Multicast and broadcast are checked separately.
#[inline]
pub const fn is_martian_dest(a: u32) -> bool {
    let top = a >> 24;
    top == 0 || top == 127 || (a >> 28 == 0xf && a != u32::MAX)
}

/// Why a packet fails the RFC 1812 5.2.2 input checks ([`check_input`]). Wire knows nothing of
/// drop counters: the pipeline maps each to its drop reason (`ipv4/...`, see
/// `stats::DropReason`'s `From<Ipv4Error>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    #[error("fewer than 20 bytes")]
    Truncated,
    #[error("version is not 4")]
    BadVersion,
    #[error("header length below 20 bytes or beyond the packet")]
    BadIhl,
    #[error("total length below the header length or beyond the packet")]
    BadLength,
    #[error("header checksum mismatch")]
    BadChecksum,
    #[error("martian source (0/8, 127/8, multicast, class E, broadcast)")]
    MartianSource,
    #[error("martian destination (0/8, 127/8, class E)")]
    MartianDest,
    #[error("multicast or limited broadcast destination")]
    Multicast,
    #[error("malformed options")]
    BadOptions,
    #[error("source-route option")]
    SourceRoute,
}

/// What input checking learned about a valid header: the checked fields later stages use
/// without parsing the header again.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ipv4Info {
    pub header_len: u8,
    pub total_len: u16,
    pub protocol: u8,
    pub src: u32,
    pub dst: u32,
}

/// RFC 1812 5.2.2 input checks over `pkt` (from the IPv4 header to the end of the frame):
/// length, version, IHL, total length, checksum, martian addresses and option syntax.
/// On success the caller trims the frame to `total_len` (Ethernet padding).
#[inline]
pub fn check_input(pkt: &[u8]) -> Result<Ipv4Info, Ipv4Error> {
    if pkt.len() < MIN_HEADER_LEN {
        return Err(Ipv4Error::Truncated);
    }
    let vihl = pkt[0];
    if vihl >> 4 != 4 {
        return Err(Ipv4Error::BadVersion);
    }
    let hl = ((vihl & 0x0f) as usize) * 4;
    if hl < MIN_HEADER_LEN || hl > pkt.len() {
        return Err(Ipv4Error::BadIhl);
    }
    let tl = be16(pkt, 2) as usize;
    if tl < hl || tl > pkt.len() {
        return Err(Ipv4Error::BadLength);
    }
    if !checksum::verify(&pkt[..hl]) {
        return Err(Ipv4Error::BadChecksum);
    }
    // A fragment may not end beyond the largest datagram (RFC 791: 65,535 bytes).
    if (be16(pkt, 6) & OFFSET_MASK) as usize * 8 + (tl - hl) > 65_535 {
        return Err(Ipv4Error::BadLength);
    }
    let src = be32(pkt, 12);
    let dst = be32(pkt, 16);
    if is_martian_source(src) {
        return Err(Ipv4Error::MartianSource);
    }
    if is_martian_dest(dst) {
        return Err(Ipv4Error::MartianDest);
    }
    if is_multicast(dst) || dst == u32::MAX {
        return Err(Ipv4Error::Multicast);
    }
    if hl > MIN_HEADER_LEN {
        check_options(&pkt[MIN_HEADER_LEN..hl])?;
    }
    Ok(Ipv4Info { header_len: hl as u8, total_len: tl as u16, protocol: pkt[field::PROTO], src, dst })
}

/// Option types (RFC 791).
const OPT_EOL: u8 = 0;
const OPT_NOP: u8 = 1;
const OPT_LSRR: u8 = 0x83;
const OPT_SSRR: u8 = 0x89;

/// Walks the options without reading past them. Source routes are refused (RFC 1812 5.2.4.1
/// permits a router to decline them, and they are a classic way around filtering); other
/// well-formed options are forwarded untouched.
pub fn check_options(opts: &[u8]) -> Result<(), Ipv4Error> {
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            OPT_EOL => return Ok(()),
            OPT_NOP => i += 1,
            t => {
                let Some(&len) = opts.get(i + 1) else { return Err(Ipv4Error::BadOptions) };
                let len = len as usize;
                if len < 2 || i + len > opts.len() {
                    return Err(Ipv4Error::BadOptions);
                }
                if t == OPT_LSRR || t == OPT_SSRR {
                    return Err(Ipv4Error::SourceRoute);
                }
                i += len;
            }
        }
    }
    Ok(())
}

/// Where the options of the header `hdr` (all of it, options included) first go wrong, as the
/// octet offset in the header that an ICMP Parameter Problem points at (RFC 792, RFC 1812
/// 4.3.2.7 / 5.2.5): an option's length byte when the length is invalid, its type byte when
/// the length is missing. `None` when the options are well formed.
pub fn bad_option_pointer(hdr: &[u8]) -> Option<u8> {
    let opts = hdr.get(MIN_HEADER_LEN..)?;
    let mut i = 0;
    while i < opts.len() {
        match opts[i] {
            OPT_EOL => return None,
            OPT_NOP => i += 1,
            _ => {
                let Some(&len) = opts.get(i + 1) else { return Some((MIN_HEADER_LEN + i) as u8) };
                let len = len as usize;
                if len < 2 || i + len > opts.len() {
                    return Some((MIN_HEADER_LEN + i + 1) as u8);
                }
                i += len;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP packet 10.0.0.1 -> 10.0.1.2, TTL 64, with a 4-byte payload:
    /// 45 00 0020 | 1234 4000 | 40 11 csum | 0a000001 | 0a000102 | udp 8 bytes | 4 bytes
    fn udp_packet() -> Vec<u8> {
        let mut p = vec![0u8; 32];
        write_header(&mut p, 0, 32, 0x1234, FLAG_DF, 64, PROTO_UDP, 0x0a00_0001, 0x0a00_0102);
        p
    }

    #[test]
    fn accepts_valid_header_and_reports_lengths() {
        let p = udp_packet();
        let info = Ipv4Info { header_len: 20, total_len: 32, protocol: PROTO_UDP, src: 0x0a00_0001, dst: 0x0a00_0102 };
        assert_eq!(check_input(&p), Ok(info));
        let v = Ipv4Packet::new_checked(&p[..]).unwrap();
        assert_eq!((v.version(), v.header_len(), v.ttl(), v.protocol()), (4, 20, 64, PROTO_UDP));
        assert_eq!((v.src(), v.dst()), (0x0a00_0001, 0x0a00_0102));
        assert!(v.dont_frag() && !v.is_fragment());
        assert_eq!(v.payload().len(), 12);
        // The same bytes decoded by etherparse, an independent implementation.
        let e = etherparse::Ipv4HeaderSlice::from_slice(&p).unwrap();
        assert_eq!(e.ttl(), 64);
        assert_eq!(e.header_checksum(), v.checksum());
    }

    #[test]
    fn trailing_padding_is_allowed() {
        let mut p = udp_packet();
        p.extend_from_slice(&[0; 14]); // Ethernet minimum-size padding
        assert_eq!(check_input(&p).unwrap().total_len, 32);
    }

    #[test]
    fn rejects_truncated() {
        assert_eq!(check_input(&udp_packet()[..19]), Err(Ipv4Error::Truncated));
    }

    #[test]
    fn rejects_bad_version() {
        let mut p = udp_packet();
        p[0] = 0x65;
        assert_eq!(check_input(&p), Err(Ipv4Error::BadVersion));
    }

    #[test]
    fn rejects_ihl_below_5_and_beyond_frame() {
        let mut p = udp_packet();
        p[0] = 0x44;
        assert_eq!(check_input(&p), Err(Ipv4Error::BadIhl));
        p[0] = 0x4f; // 60-byte header in a 32-byte packet
        assert_eq!(check_input(&p), Err(Ipv4Error::BadIhl));
    }

    #[test]
    fn rejects_total_length_out_of_range() {
        let mut p = udp_packet();
        p[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(check_input(&p), Err(Ipv4Error::BadLength));
        p[2..4].copy_from_slice(&33u16.to_be_bytes());
        assert_eq!(check_input(&p), Err(Ipv4Error::BadLength));
    }

    #[test]
    fn rejects_fragment_ending_beyond_64k() {
        let mut p = udp_packet();
        let mut v = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        v.set_flags_frag(0x1fff); // offset 65,528 + 12 bytes of payload
        v.fill_checksum();
        assert_eq!(check_input(&p), Err(Ipv4Error::BadLength));
        let mut v = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        v.set_flags_frag(0x1ffe); // offset 65,520 + 12: fits
        v.fill_checksum();
        assert!(check_input(&p).is_ok());
    }

    #[test]
    fn rejects_bad_checksum() {
        let mut p = udp_packet();
        p[11] ^= 0x01;
        assert_eq!(check_input(&p), Err(Ipv4Error::BadChecksum));
    }

    fn with_addrs(src: u32, dst: u32) -> Vec<u8> {
        let mut p = vec![0u8; 20];
        write_header(&mut p, 0, 20, 0, 0, 64, PROTO_UDP, src, dst);
        p
    }

    #[test]
    fn rejects_martian_sources() {
        for s in [0x0000_0001, 0x7f00_0001, 0xe000_0001, 0xf000_0001, 0xffff_ffff] {
            assert_eq!(check_input(&with_addrs(s, 0x0a00_0001)), Err(Ipv4Error::MartianSource), "{s:#x}");
        }
    }

    #[test]
    fn rejects_martian_and_multicast_destinations() {
        for d in [0x0000_0001, 0x7f00_0001, 0xf000_0001] {
            assert_eq!(check_input(&with_addrs(0x0a00_0001, d)), Err(Ipv4Error::MartianDest), "{d:#x}");
        }
        for d in [0xe000_00fb, 0xffff_ffff] {
            assert_eq!(check_input(&with_addrs(0x0a00_0001, d)), Err(Ipv4Error::Multicast), "{d:#x}");
        }
    }

    fn with_options(opts: &[u8]) -> Vec<u8> {
        let hl = 20 + opts.len();
        let mut p = vec![0u8; hl];
        write_header(&mut p, 0, hl as u16, 0, 0, 64, PROTO_UDP, 0x0a00_0001, 0x0a00_0002);
        p[0] = 0x40 | (hl / 4) as u8;
        p[20..].copy_from_slice(opts);
        let mut v = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        v.fill_checksum();
        p
    }

    #[test]
    fn options_nop_eol_and_router_alert_pass() {
        // NOP, NOP, router alert (94 04 0000)
        assert!(check_input(&with_options(&[1, 1, 0x94, 4, 0, 0, 0, 0])).is_ok());
    }

    #[test]
    fn options_with_bad_length_are_rejected_without_overrun() {
        // record route claiming 39 bytes inside a 4-byte option area
        assert_eq!(check_input(&with_options(&[7, 39, 4, 0])), Err(Ipv4Error::BadOptions));
        // length below 2
        assert_eq!(check_input(&with_options(&[7, 1, 0, 0])), Err(Ipv4Error::BadOptions));
        // type with no length byte at the very end
        assert_eq!(check_input(&with_options(&[1, 1, 1, 7])), Err(Ipv4Error::BadOptions));
    }

    #[test]
    fn bad_option_pointer_points_at_the_offending_octet() {
        let hdr = |o: &[u8]| with_options(o)[..20 + o.len()].to_vec();
        assert_eq!(bad_option_pointer(&hdr(&[7, 39, 4, 0])), Some(21), "record route length byte");
        assert_eq!(bad_option_pointer(&hdr(&[1, 1, 1, 7])), Some(23), "type with no length byte");
        assert_eq!(bad_option_pointer(&hdr(&[1, 7, 1, 0])), Some(22), "length 1");
        assert_eq!(bad_option_pointer(&hdr(&[7, 3, 4, 0])), None, "well formed, then EOL");
        assert_eq!(bad_option_pointer(&hdr(&[])), None);
    }

    #[test]
    fn source_route_options_are_refused() {
        // LSRR: 83 07 04 c0000201
        assert_eq!(check_input(&with_options(&[0x83, 7, 4, 192, 0, 2, 1, 0])), Err(Ipv4Error::SourceRoute));
    }

    #[test]
    fn ttl_decrement_keeps_checksum_valid() {
        let mut p = udp_packet();
        let mut v = Ipv4Packet::new_checked(&mut p[..]).unwrap();
        for ttl in (2..=64).rev() {
            assert_eq!(v.ttl(), ttl);
            v.decrement_ttl();
            assert!(v.verify_checksum());
        }
    }

    proptest::proptest! {
        /// The header written from field values is what etherparse (an independent encoder)
        /// makes of the same fields, checksum included; a TTL decrement on it keeps the
        /// checksum equal to a full recompute and leaves the protocol alone.
        #[test]
        fn write_header_matches_etherparse_and_decrement_keeps_it(
            tos in proptest::prelude::any::<u8>(), total in 20u16.., ident in proptest::prelude::any::<u16>(),
            ff in proptest::prelude::any::<u16>(), ttl in 1u8.., proto in proptest::prelude::any::<u8>(),
            src in proptest::prelude::any::<u32>(), dst in proptest::prelude::any::<u32>(),
        ) {
            proptest::prop_assume!(ff & 0x8000 == 0); // the reserved flag has no etherparse field
            let mut ours = [0xa5u8; 20];
            write_header(&mut ours, tos, total, ident, ff, ttl, proto, src, dst);
            let mut e = etherparse::Ipv4Header::new(total - 20, ttl, etherparse::IpNumber(proto), src.to_be_bytes(), dst.to_be_bytes()).unwrap();
            e.dscp = etherparse::IpDscp::try_new(tos >> 2).unwrap();
            e.ecn = etherparse::IpEcn::try_new(tos & 3).unwrap();
            e.identification = ident;
            e.dont_fragment = ff & FLAG_DF != 0;
            e.more_fragments = ff & FLAG_MF != 0;
            e.fragment_offset = etherparse::IpFragOffset::try_new(ff & OFFSET_MASK).unwrap();
            e.header_checksum = e.calc_header_checksum();
            proptest::prop_assert_eq!(&ours[..], &e.to_bytes()[..]);
            let mut v = Ipv4Packet::new_unchecked(&mut ours[..]);
            v.decrement_ttl();
            proptest::prop_assert!(v.verify_checksum());
            proptest::prop_assert_eq!((v.ttl(), v.protocol()), (ttl - 1, proto));
        }
    }
}
