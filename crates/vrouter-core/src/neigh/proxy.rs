//! Proxy ARP on pod ports, the way Calico does it: every pod's default route points at the
//! link-local gateway 169.254.1.1, and the host side of the pod's veth/TAP answers ARP for that
//! address (and only that one) with the port's own MAC. Answering for nothing else means pods
//! cannot learn each other's MACs: all pod traffic goes through us, where policy applies.
//!
//! Linux gets the same effect with `proxy_arp=1` plus a route; we decide per frame here.

use crate::wire::arp::{self, ArpError, ARP_REQUEST};

/// Calico's pod gateway, 169.254.1.1.
pub const CALICO_GATEWAY: u32 = 0xa9fe_0101;

/// What to do with an ARP frame received on a pod port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyArp {
    /// The frame was rewritten in place into our reply; send its first `usize` bytes back out
    /// of the port it came from.
    Reply(usize),
    /// A request for another address: drop (`arp/not-for-us`).
    NotForUs,
    /// A reply, an unknown opcode, or a gratuitous announcement of the gateway address itself:
    /// nothing to answer. The pipeline decides what to count (we never ask pods anything, so a
    /// reply from a pod is unsolicited).
    Ignore,
    /// Not a well-formed Ethernet/IPv4 ARP request (`arp/malformed`).
    Malformed(ArpError),
}

/// Decides on an ARP frame (Ethernet header included) received on a pod port whose host-side
/// MAC is `port_mac`, answering only requests whose target is exactly `answer_for`.
/// The frame is modified only when the answer is [`ProxyArp::Reply`].
pub fn proxy_arp_answer(frame: &mut [u8], port_mac: [u8; 6], answer_for: u32) -> ProxyArp {
    let p = match arp::frame_arp(frame) {
        Ok(p) => p,
        Err(e) => return ProxyArp::Malformed(e),
    };
    if p.operation() != ARP_REQUEST {
        return ProxyArp::Ignore;
    }
    if p.target_ip() != answer_for {
        return ProxyArp::NotForUs;
    }
    if p.sender_ip() == answer_for {
        // Gratuitous ARP for the gateway address (RFC 5227 announcement): a pod claiming it.
        // Answering would only confirm the conflict to the pod; never let it take the address.
        return ProxyArp::Ignore;
    }
    let sha = p.sender_mac();
    if !arp::is_unicast_mac(&sha) {
        return ProxyArp::Malformed(ArpError::SenderNotUnicast(sha));
    }
    match arp::reply_in_place(frame, port_mac) {
        Some(n) => ProxyArp::Reply(n),
        // Unreachable after the checks above; kept total rather than panicking.
        None => ProxyArp::Malformed(ArpError::SenderNotUnicast(sha)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::arp::{build_gratuitous, build_reply, build_request, frame_arp, ARP_REPLY};

    const PORT_MAC: [u8; 6] = [0xee; 6]; // Calico's host-side veth MAC
    const POD_MAC: [u8; 6] = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07];
    const POD_IP: u32 = 0x0af4_0107; // 10.244.1.7

    /// Pod 10.244.1.7 asks who has 169.254.1.1, as captured off the veth (42 bytes: veth frames
    /// are not padded).
    #[rustfmt::skip]
    const GW_REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // eth dst: broadcast
        0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07, // eth src: pod
        0x08, 0x06,                         // ARP
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, // Ethernet, IPv4, hlen 6, plen 4
        0x00, 0x01,                         // request
        0x0a, 0x58, 0x0a, 0xf4, 0x01, 0x07, // sha: pod
        0x0a, 0xf4, 0x01, 0x07,             // spa: 10.244.1.7
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // tha
        0xa9, 0xfe, 0x01, 0x01,             // tpa: 169.254.1.1
    ];

    #[test]
    fn answers_gateway_request_in_place() {
        let mut f = GW_REQUEST;
        assert_eq!(proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY), ProxyArp::Reply(42));
        assert_eq!(&f[0..6], &POD_MAC, "eth dst = requester");
        assert_eq!(&f[6..12], &PORT_MAC, "eth src = port");
        let p = frame_arp(&f).unwrap();
        assert_eq!(p.operation(), ARP_REPLY);
        assert_eq!((p.sender_mac(), p.sender_ip()), (PORT_MAC, CALICO_GATEWAY));
        assert_eq!((p.target_mac(), p.target_ip()), (POD_MAC, POD_IP));
    }

    #[test]
    fn padded_request_gets_padded_reply() {
        let mut f = [0x77u8; 64];
        build_request(&mut f, POD_MAC, POD_IP, CALICO_GATEWAY);
        assert_eq!(proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY), ProxyArp::Reply(60));
        let mut want = [0u8; 60];
        build_reply(&mut want, PORT_MAC, CALICO_GATEWAY, POD_MAC, POD_IP);
        assert_eq!(&f[..60], &want);
    }

    #[test]
    fn request_for_another_pod_is_not_for_us() {
        let mut f = [0u8; 60];
        build_request(&mut f, POD_MAC, POD_IP, 0x0af4_0108);
        let before = f;
        assert_eq!(proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY), ProxyArp::NotForUs);
        assert_eq!(f, before, "untouched");
    }

    #[test]
    fn replies_other_ops_and_gateway_announcements_are_ignored() {
        let mut f = [0u8; 60];
        build_reply(&mut f, POD_MAC, POD_IP, PORT_MAC, CALICO_GATEWAY);
        assert_eq!(proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY), ProxyArp::Ignore);
        let mut f = GW_REQUEST;
        f[21] = 3; // RARP request opcode
        assert_eq!(proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY), ProxyArp::Ignore);
        let mut f = [0u8; 60];
        build_gratuitous(&mut f, POD_MAC, CALICO_GATEWAY);
        let before = f;
        assert_eq!(proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY), ProxyArp::Ignore);
        assert_eq!(f, before);
    }

    #[test]
    fn malformed_frames() {
        let mut f = GW_REQUEST;
        assert_eq!(
            proxy_arp_answer(&mut f[..41], PORT_MAC, CALICO_GATEWAY),
            ProxyArp::Malformed(ArpError::FrameTruncated { len: 41 })
        );
        let mut f = GW_REQUEST;
        f[19] = 16; // plen 16
        assert_eq!(
            proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY),
            ProxyArp::Malformed(ArpError::BadProtocolLen(16))
        );
        let mut f = GW_REQUEST;
        f[22..28].copy_from_slice(&[0xff; 6]); // sha broadcast
        let before = f;
        assert_eq!(
            proxy_arp_answer(&mut f, PORT_MAC, CALICO_GATEWAY),
            ProxyArp::Malformed(ArpError::SenderNotUnicast([0xff; 6]))
        );
        assert_eq!(f, before);
    }
}
