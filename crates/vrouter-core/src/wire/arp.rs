//! ARP for Ethernet/IPv4 (RFC 826): a zero-copy view over the 28-byte payload and in-place
//! builders for whole Ethernet frames.
//!
//! Only the Ethernet (htype 1) / IPv4 (ptype 0x0800, hlen 6, plen 4) combination exists on our
//! ports, so [`ArpPacket::new_checked`] rejects every other combination; after that single check
//! every accessor reads at a fixed offset inside 28 bytes and cannot panic.
//!
//! Builders write a complete frame (14-byte Ethernet II header, 28-byte ARP, zero padding up to
//! the 60-byte minimum frame without FCS) into a caller-provided buffer. The padding is always
//! zeroed: leaking stale buffer bytes in padding is the "Etherleak" bug (CVE-2003-0001).
//! Requests carry an all-zero target hardware address, which RFC 826 leaves unspecified and RFC
//! 5227 section 2.1.1 asks for.

/// ARP opcode "request" (RFC 826).
pub const ARP_REQUEST: u16 = 1;
/// ARP opcode "reply" (RFC 826).
pub const ARP_REPLY: u16 = 2;
/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// Length of the Ethernet/IPv4 ARP payload.
pub const ARP_LEN: usize = 28;
/// Ethernet II header length.
pub const ETH_HEADER_LEN: usize = 14;
/// Ethernet header plus ARP payload, before padding.
pub const ETH_ARP_LEN: usize = ETH_HEADER_LEN + ARP_LEN;
/// Minimum Ethernet frame without FCS; what the builders return.
pub const MIN_FRAME_LEN: usize = 60;
/// The Ethernet broadcast address.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

/// Byte offsets inside the ARP payload (RFC 826 "Packet format").
mod field {
    use core::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

/// Byte offsets inside the Ethernet II header.
mod eth {
    use core::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Why bytes are not an Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArpError {
    #[error("ARP packet truncated: {len} bytes, need 28 (Ethernet/IPv4 ARP, RFC 826)")]
    Truncated { len: usize },
    #[error("ARP hardware type {0} is not Ethernet (1)")]
    BadHardwareType(u16),
    #[error("ARP protocol type {0:#06x} is not IPv4 (0x0800)")]
    BadProtocolType(u16),
    #[error("ARP hardware address length {0} is not 6")]
    BadHardwareLen(u8),
    #[error("ARP protocol address length {0} is not 4")]
    BadProtocolLen(u8),
    #[error("frame truncated: {len} bytes, need 42 for Ethernet + ARP")]
    FrameTruncated { len: usize },
    #[error("EtherType {0:#06x} is not ARP (0x0806)")]
    NotArp(u16),
    #[error("ARP sender hardware address {0:02x?} is not unicast")]
    SenderNotUnicast([u8; 6]),
}

#[inline]
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

#[inline]
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[inline]
fn mac(b: &[u8]) -> [u8; 6] {
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// True for a MAC a neighbour may legitimately own: not zero, not group (multicast/broadcast).
#[inline]
pub const fn is_unicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && !(mac[0] == 0 && mac[1] == 0 && mac[2] == 0 && mac[3] == 0 && mac[4] == 0 && mac[5] == 0)
}

/// A view over an Ethernet/IPv4 ARP payload (the 28 bytes after the Ethernet header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Validates length and the fixed header fields. Bytes past 28 (Ethernet padding) are
    /// ignored.
    pub fn new_checked(buf: T) -> Result<Self, ArpError> {
        let b = buf.as_ref();
        if b.len() < ARP_LEN {
            return Err(ArpError::Truncated { len: b.len() });
        }
        let htype = be16(&b[field::HTYPE]);
        if htype != HTYPE_ETHERNET {
            return Err(ArpError::BadHardwareType(htype));
        }
        let ptype = be16(&b[field::PTYPE]);
        if ptype != PTYPE_IPV4 {
            return Err(ArpError::BadProtocolType(ptype));
        }
        if b[field::HLEN] != 6 {
            return Err(ArpError::BadHardwareLen(b[field::HLEN]));
        }
        if b[field::PLEN] != 4 {
            return Err(ArpError::BadProtocolLen(b[field::PLEN]));
        }
        Ok(ArpPacket { buf })
    }

    pub fn into_inner(self) -> T {
        self.buf
    }

    pub fn operation(&self) -> u16 {
        be16(&self.buf.as_ref()[field::OPER])
    }
    pub fn sender_mac(&self) -> [u8; 6] {
        mac(&self.buf.as_ref()[field::SHA])
    }
    /// Sender protocol address, host order.
    pub fn sender_ip(&self) -> u32 {
        be32(&self.buf.as_ref()[field::SPA])
    }
    pub fn target_mac(&self) -> [u8; 6] {
        mac(&self.buf.as_ref()[field::THA])
    }
    /// Target protocol address, host order.
    pub fn target_ip(&self) -> u32 {
        be32(&self.buf.as_ref()[field::TPA])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    pub fn set_operation(&mut self, op: u16) {
        self.buf.as_mut()[field::OPER].copy_from_slice(&op.to_be_bytes());
    }
    pub fn set_sender_mac(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[field::SHA].copy_from_slice(&mac);
    }
    pub fn set_sender_ip(&mut self, ip: u32) {
        self.buf.as_mut()[field::SPA].copy_from_slice(&ip.to_be_bytes());
    }
    pub fn set_target_mac(&mut self, mac: [u8; 6]) {
        self.buf.as_mut()[field::THA].copy_from_slice(&mac);
    }
    pub fn set_target_ip(&mut self, ip: u32) {
        self.buf.as_mut()[field::TPA].copy_from_slice(&ip.to_be_bytes());
    }
}

/// Checks the Ethernet header of `frame` (EtherType ARP, untagged) and returns a view over its
/// ARP payload.
pub fn frame_arp(frame: &[u8]) -> Result<ArpPacket<&[u8]>, ArpError> {
    if frame.len() < ETH_ARP_LEN {
        return Err(ArpError::FrameTruncated { len: frame.len() });
    }
    let et = be16(&frame[eth::ETHERTYPE]);
    if et != ETHERTYPE_ARP {
        return Err(ArpError::NotArp(et));
    }
    ArpPacket::new_checked(&frame[ETH_HEADER_LEN..ETH_ARP_LEN])
}

/// Mutable variant of [`frame_arp`].
pub fn frame_arp_mut(frame: &mut [u8]) -> Result<ArpPacket<&mut [u8]>, ArpError> {
    frame_arp(frame)?;
    Ok(ArpPacket { buf: &mut frame[ETH_HEADER_LEN..ETH_ARP_LEN] })
}

#[allow(clippy::too_many_arguments)]
/// Writes a full frame: Ethernet header, ARP with fixed Ethernet/IPv4 fields, zero padding.
fn write_frame(
    buf: &mut [u8],
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: u32,
    tha: [u8; 6],
    tpa: u32,
) -> usize {
    assert!(buf.len() >= MIN_FRAME_LEN, "ARP frame buffer needs {MIN_FRAME_LEN} bytes, got {}", buf.len());
    let f = &mut buf[..MIN_FRAME_LEN];
    f[eth::DST].copy_from_slice(&eth_dst);
    f[eth::SRC].copy_from_slice(&eth_src);
    f[eth::ETHERTYPE].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    let a = &mut f[ETH_HEADER_LEN..ETH_ARP_LEN];
    a[field::HTYPE].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    a[field::PTYPE].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
    a[field::HLEN] = 6;
    a[field::PLEN] = 4;
    let mut p = ArpPacket { buf: a };
    p.set_operation(op);
    p.set_sender_mac(sha);
    p.set_sender_ip(spa);
    p.set_target_mac(tha);
    p.set_target_ip(tpa);
    f[ETH_ARP_LEN..].fill(0);
    MIN_FRAME_LEN
}

/// Builds a broadcast "who has `target_ip`? tell `src_ip`" request. Returns 60.
///
/// # Panics
/// If `buf` is shorter than [`MIN_FRAME_LEN`] (a caller bug: frame buffers are >= 2 KiB).
pub fn build_request(buf: &mut [u8], src_mac: [u8; 6], src_ip: u32, target_ip: u32) -> usize {
    write_frame(buf, BROADCAST_MAC, src_mac, ARP_REQUEST, src_mac, src_ip, [0; 6], target_ip)
}

/// Builds a unicast request to a known MAC (used to re-confirm a stale neighbour, RFC 1122
/// 2.3.2.1 suggests unicast polling). Returns 60.
///
/// # Panics
/// If `buf` is shorter than [`MIN_FRAME_LEN`].
pub fn build_unicast_request(
    buf: &mut [u8],
    src_mac: [u8; 6],
    src_ip: u32,
    target_mac: [u8; 6],
    target_ip: u32,
) -> usize {
    write_frame(buf, target_mac, src_mac, ARP_REQUEST, src_mac, src_ip, [0; 6], target_ip)
}

/// Builds "`our_ip` is at `our_mac`", unicast to `to_mac`/`to_ip`. Returns 60.
///
/// # Panics
/// If `buf` is shorter than [`MIN_FRAME_LEN`].
pub fn build_reply(buf: &mut [u8], our_mac: [u8; 6], our_ip: u32, to_mac: [u8; 6], to_ip: u32) -> usize {
    write_frame(buf, to_mac, our_mac, ARP_REPLY, our_mac, our_ip, to_mac, to_ip)
}

/// Builds a gratuitous ARP announcement (RFC 5227 section 3: a broadcast request with sender
/// and target protocol address both `ip`, target hardware address zero). Returns 60.
///
/// # Panics
/// If `buf` is shorter than [`MIN_FRAME_LEN`].
pub fn build_gratuitous(buf: &mut [u8], mac: [u8; 6], ip: u32) -> usize {
    write_frame(buf, BROADCAST_MAC, mac, ARP_REQUEST, mac, ip, [0; 6], ip)
}

/// Turns a received request frame (Ethernet header included) into the reply for its target IP,
/// in place: `our_mac` answers for the target address, to the requester's hardware address.
/// Returns the frame length (60 when `frame` has room for the padding, which is zeroed; 42
/// otherwise: TAP and veth take short frames), or `None` if the frame is not a well-formed
/// request or the requester's MAC is not unicast (the reply would go to a group address).
///
/// The caller decides whether to answer for that target (see `neigh::proxy`).
pub fn reply_in_place(frame: &mut [u8], our_mac: [u8; 6]) -> Option<usize> {
    let mut p = frame_arp_mut(frame).ok()?;
    if p.operation() != ARP_REQUEST {
        return None;
    }
    let (req_mac, req_ip, asked_ip) = (p.sender_mac(), p.sender_ip(), p.target_ip());
    if !is_unicast_mac(&req_mac) {
        return None;
    }
    p.set_operation(ARP_REPLY);
    p.set_sender_mac(our_mac);
    p.set_sender_ip(asked_ip);
    p.set_target_mac(req_mac);
    p.set_target_ip(req_ip);
    frame[eth::DST].copy_from_slice(&req_mac);
    frame[eth::SRC].copy_from_slice(&our_mac);
    if frame.len() >= MIN_FRAME_LEN {
        frame[ETH_ARP_LEN..MIN_FRAME_LEN].fill(0);
        Some(MIN_FRAME_LEN)
    } else {
        Some(ETH_ARP_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{ArpOperation, LinkSlice, NetSlice, SlicedPacket};

    /// A pod (2a:1b:3c:4d:5e:6f, 10.244.1.5) asking for its Calico gateway 169.254.1.1, as a
    /// 60-byte frame off the veth (the padding is deliberately non-zero).
    #[rustfmt::skip]
    const REQUEST_FRAME: [u8; 60] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst: broadcast
        0x2a, 0x1b, 0x3c, 0x4d, 0x5e, 0x6f, // eth src: pod
        0x08, 0x06,                         // EtherType ARP
        0x00, 0x01,                         // htype 1 (Ethernet)
        0x08, 0x00,                         // ptype 0x0800 (IPv4)
        0x06,                               // hlen 6
        0x04,                               // plen 4
        0x00, 0x01,                         // op 1 (request)
        0x2a, 0x1b, 0x3c, 0x4d, 0x5e, 0x6f, // sha: pod
        0x0a, 0xf4, 0x01, 0x05,             // spa: 10.244.1.5
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tha: unknown
        0xa9, 0xfe, 0x01, 0x01,             // tpa: 169.254.1.1
        0xde, 0xad, 0xbe, 0xef, 0xde, 0xad, // padding (18 bytes), stale junk
        0xbe, 0xef, 0xde, 0xad, 0xbe, 0xef,
        0xde, 0xad, 0xbe, 0xef, 0xde, 0xad,
    ];

    /// The reply a Calico host veth (ee:ee:ee:ee:ee:ee) gives to REQUEST_FRAME.
    #[rustfmt::skip]
    const REPLY_FRAME: [u8; 60] = [
        0x2a, 0x1b, 0x3c, 0x4d, 0x5e, 0x6f, // eth dst: pod
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // eth src: host veth
        0x08, 0x06,                         // EtherType ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet / IPv4 / 6 / 4
        0x00, 0x02,                         // op 2 (reply)
        0xee, 0xee, 0xee, 0xee, 0xee, 0xee, // sha: host veth
        0xa9, 0xfe, 0x01, 0x01,             // spa: 169.254.1.1
        0x2a, 0x1b, 0x3c, 0x4d, 0x5e, 0x6f, // tha: pod
        0x0a, 0xf4, 0x01, 0x05,             // tpa: 10.244.1.5
        0, 0, 0, 0, 0, 0, 0, 0, 0,          // padding, zeroed
        0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    const POD_MAC: [u8; 6] = [0x2a, 0x1b, 0x3c, 0x4d, 0x5e, 0x6f];
    const VETH_MAC: [u8; 6] = [0xee; 6];
    const POD_IP: u32 = 0x0af4_0105;
    const GW_IP: u32 = 0xa9fe_0101;

    /// (eth dst, eth src, op, sha, spa, tha, tpa)
    type Decoded = ([u8; 6], [u8; 6], u16, Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>);

    /// Independent decode with etherparse.
    fn etherparse_decode(frame: &[u8]) -> Decoded {
        let sp = SlicedPacket::from_ethernet(frame).expect("etherparse accepts the frame");
        let Some(LinkSlice::Ethernet2(e)) = sp.link else { panic!("not ethernet II") };
        let Some(NetSlice::Arp(a)) = sp.net else { panic!("not ARP") };
        assert_eq!(a.hw_addr_type(), etherparse::ArpHardwareId::ETHERNET);
        assert_eq!(a.proto_addr_type(), etherparse::EtherType::IPV4);
        let op: ArpOperation = a.operation();
        (
            e.destination(),
            e.source(),
            op.0,
            a.sender_hw_addr().to_vec(),
            a.sender_protocol_addr().to_vec(),
            a.target_hw_addr().to_vec(),
            a.target_protocol_addr().to_vec(),
        )
    }

    #[test]
    fn view_reads_request_fixture() {
        let p = frame_arp(&REQUEST_FRAME).unwrap();
        assert_eq!(p.operation(), ARP_REQUEST);
        assert_eq!(p.sender_mac(), POD_MAC);
        assert_eq!(p.sender_ip(), POD_IP);
        assert_eq!(p.target_mac(), [0; 6]);
        assert_eq!(p.target_ip(), GW_IP);
    }

    #[test]
    fn view_reads_reply_fixture() {
        let p = ArpPacket::new_checked(&REPLY_FRAME[14..]).unwrap();
        assert_eq!(p.operation(), ARP_REPLY);
        assert_eq!(p.sender_mac(), VETH_MAC);
        assert_eq!(p.sender_ip(), GW_IP);
        assert_eq!(p.target_mac(), POD_MAC);
        assert_eq!(p.target_ip(), POD_IP);
    }

    #[test]
    fn new_checked_rejects_each_bad_field() {
        let ok = &REQUEST_FRAME[14..42];
        assert_eq!(ArpPacket::new_checked(&ok[..27]).unwrap_err(), ArpError::Truncated { len: 27 });
        assert_eq!(ArpPacket::new_checked(&[][..]).unwrap_err(), ArpError::Truncated { len: 0 });
        let mut b = ok.to_vec();
        b[1] = 6; // htype 6 (IEEE 802)
        assert_eq!(ArpPacket::new_checked(&b).unwrap_err(), ArpError::BadHardwareType(6));
        let mut b = ok.to_vec();
        b[2..4].copy_from_slice(&[0x86, 0xdd]); // ptype IPv6
        assert_eq!(ArpPacket::new_checked(&b).unwrap_err(), ArpError::BadProtocolType(0x86dd));
        let mut b = ok.to_vec();
        b[4] = 8;
        assert_eq!(ArpPacket::new_checked(&b).unwrap_err(), ArpError::BadHardwareLen(8));
        let mut b = ok.to_vec();
        b[5] = 16;
        assert_eq!(ArpPacket::new_checked(&b).unwrap_err(), ArpError::BadProtocolLen(16));
        assert!(ArpPacket::new_checked(ok).is_ok());
    }

    #[test]
    fn frame_arp_rejects_short_frame_and_other_ethertype() {
        assert_eq!(frame_arp(&REQUEST_FRAME[..41]).unwrap_err(), ArpError::FrameTruncated { len: 41 });
        let mut f = REQUEST_FRAME;
        f[12..14].copy_from_slice(&[0x81, 0x00]); // VLAN tag
        assert_eq!(frame_arp(&f).unwrap_err(), ArpError::NotArp(0x8100));
        assert!(frame_arp(&REQUEST_FRAME[..42]).is_ok());
    }

    #[test]
    fn setters_round_trip() {
        let mut b = REQUEST_FRAME[14..42].to_vec();
        let mut p = ArpPacket::new_checked(&mut b[..]).unwrap();
        p.set_operation(ARP_REPLY);
        p.set_sender_mac([1, 2, 3, 4, 5, 6]);
        p.set_sender_ip(0x0102_0304);
        p.set_target_mac([6, 5, 4, 3, 2, 1]);
        p.set_target_ip(0x0a0b_0c0d);
        assert_eq!(p.operation(), ARP_REPLY);
        assert_eq!(p.sender_mac(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(p.sender_ip(), 0x0102_0304);
        assert_eq!(p.target_mac(), [6, 5, 4, 3, 2, 1]);
        assert_eq!(p.target_ip(), 0x0a0b_0c0d);
        assert_eq!(&b[6..8], &[0, 2]);
        assert_eq!(&b[14..18], &[1, 2, 3, 4]);
    }

    #[test]
    fn reply_in_place_matches_fixture() {
        let mut f = REQUEST_FRAME;
        assert_eq!(reply_in_place(&mut f, VETH_MAC), Some(60));
        assert_eq!(f, REPLY_FRAME);
    }

    #[test]
    fn reply_in_place_short_frame_returns_42() {
        let mut f = REQUEST_FRAME[..42].to_vec();
        assert_eq!(reply_in_place(&mut f, VETH_MAC), Some(42));
        assert_eq!(&f[..], &REPLY_FRAME[..42]);
    }

    #[test]
    fn reply_in_place_refuses_replies_and_group_senders() {
        let mut f = REPLY_FRAME;
        assert_eq!(reply_in_place(&mut f, VETH_MAC), None);
        assert_eq!(f, REPLY_FRAME, "untouched");
        let mut f = REQUEST_FRAME;
        f[22] = 0x01; // sha multicast
        assert_eq!(reply_in_place(&mut f, VETH_MAC), None);
        let mut f = REQUEST_FRAME;
        f[22..28].fill(0); // sha zero
        assert_eq!(reply_in_place(&mut f, VETH_MAC), None);
        let mut f = REQUEST_FRAME;
        f[12] = 0x08;
        f[13] = 0x00; // IPv4 EtherType
        assert_eq!(reply_in_place(&mut f, VETH_MAC), None);
    }

    #[test]
    fn build_request_decodes_with_etherparse() {
        let mut buf = [0xaau8; 128];
        let n = build_request(&mut buf, POD_MAC, POD_IP, GW_IP);
        assert_eq!(n, 60);
        assert_eq!(&buf[..60], &{
            let mut f = REQUEST_FRAME;
            f[42..].fill(0);
            f
        });
        assert_eq!(buf[60], 0xaa, "nothing written past the frame");
        let (dst, src, op, sha, spa, tha, tpa) = etherparse_decode(&buf[..n]);
        assert_eq!(dst, BROADCAST_MAC);
        assert_eq!(src, POD_MAC);
        assert_eq!(op, 1);
        assert_eq!(sha, POD_MAC);
        assert_eq!(spa, POD_IP.to_be_bytes());
        assert_eq!(tha, [0; 6]);
        assert_eq!(tpa, GW_IP.to_be_bytes());
    }

    #[test]
    fn build_reply_decodes_with_etherparse_and_matches_fixture() {
        let mut buf = [0x55u8; 60];
        let n = build_reply(&mut buf, VETH_MAC, GW_IP, POD_MAC, POD_IP);
        assert_eq!(n, 60);
        assert_eq!(buf, REPLY_FRAME);
        let (dst, src, op, sha, spa, tha, tpa) = etherparse_decode(&buf);
        assert_eq!((dst, src, op), (POD_MAC, VETH_MAC, 2));
        assert_eq!(sha, VETH_MAC);
        assert_eq!(spa, GW_IP.to_be_bytes());
        assert_eq!(tha, POD_MAC);
        assert_eq!(tpa, POD_IP.to_be_bytes());
    }

    #[test]
    fn build_unicast_request_and_gratuitous_decode_with_etherparse() {
        let mut buf = [0u8; 60];
        build_unicast_request(&mut buf, VETH_MAC, GW_IP, POD_MAC, POD_IP);
        let (dst, src, op, sha, spa, tha, tpa) = etherparse_decode(&buf);
        assert_eq!((dst, src, op), (POD_MAC, VETH_MAC, 1));
        assert_eq!((sha, spa), (VETH_MAC.to_vec(), GW_IP.to_be_bytes().to_vec()));
        assert_eq!((tha, tpa), (vec![0; 6], POD_IP.to_be_bytes().to_vec()));

        build_gratuitous(&mut buf, VETH_MAC, GW_IP);
        let (dst, _, op, sha, spa, tha, tpa) = etherparse_decode(&buf);
        assert_eq!((dst, op), (BROADCAST_MAC, 1));
        assert_eq!(sha, VETH_MAC);
        assert_eq!(spa, tpa);
        assert_eq!(spa, GW_IP.to_be_bytes());
        assert_eq!(tha, [0; 6]);
    }

    #[test]
    #[should_panic(expected = "needs 60 bytes")]
    fn builder_panics_on_short_buffer() {
        build_request(&mut [0u8; 59], POD_MAC, POD_IP, GW_IP);
    }

    #[test]
    fn unicast_mac_classification() {
        assert!(is_unicast_mac(&POD_MAC));
        assert!(!is_unicast_mac(&[0; 6]));
        assert!(!is_unicast_mac(&BROADCAST_MAC));
        assert!(!is_unicast_mac(&[0x01, 0x00, 0x5e, 0, 0, 1]));
    }

    proptest::proptest! {
        /// Whatever the bytes, parsing never panics and an accepted packet reads back its bytes.
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            if let Ok(p) = frame_arp(&bytes) {
                proptest::prop_assert_eq!(p.sender_ip().to_be_bytes(), [bytes[28], bytes[29], bytes[30], bytes[31]]);
            }
            let _ = ArpPacket::new_checked(&bytes[..]).map(|p| (p.operation(), p.target_ip(), p.target_mac()));
        }
    }
}
