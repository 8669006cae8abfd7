//! Which worker owns a flow, when more than one forwards and policy keeps state: both
//! directions of a connection must meet the same connection-tracking table, so a frame that
//! arrives on another worker's queue is handed to the owner (VPP's handoff node). The owner
//! comes from a symmetric hash of the flow (addresses and ports taken in sorted order, so a
//! reply hashes as its request), read from the packet the policy judges: the inner packet of
//! IPIP, the quoted packet of an ICMP error (it belongs to the connection it is about).
//! Fragments hash on addresses alone (later fragments carry no ports), as do protocols without
//! ports.

use crate::wire::ethernet::{self, ETHERTYPE_IPV4};
use crate::wire::icmp;
use crate::wire::ipv4::{PROTO_ICMP, PROTO_IPIP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// The worker (of `workers`) that owns the flow of `frame`, or `None` for a frame that is no
/// flow's (not IPv4: ARP, which any worker handles) or too short to say.
pub fn owner(frame: &[u8], workers: usize) -> Option<usize> {
    if workers <= 1 {
        return Some(0);
    }
    let l3 = ethernet::HEADER_LEN;
    if frame.len() < l3 || u16::from_be_bytes([frame[12], frame[13]]) != ETHERTYPE_IPV4 {
        return None;
    }
    let h = flow_hash(frame, l3, 2)?;
    // Lemire's multiply-shift: uniform over `workers` without a division.
    Some(((u64::from(h) * workers as u64) >> 32) as usize)
}

/// The symmetric hash of the IPv4 packet at `at`; `depth` bounds the nesting followed (IPIP,
/// a quoted packet).
fn flow_hash(frame: &[u8], at: usize, depth: u8) -> Option<u32> {
    let ip = frame.get(at..at + 20)?;
    let hl = usize::from(ip[0] & 0x0f) * 4;
    let proto = ip[9];
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let l4 = at + hl.max(20);
    let mut ports = (0u16, 0u16);
    if !fragment && depth > 0 {
        // The inner packet of IPIP; the packet an ICMP error quotes (its header at l4 + 8).
        let inner = match proto {
            PROTO_IPIP => Some(l4),
            PROTO_ICMP if frame.get(l4).is_some_and(|&t| icmp::is_error(t)) => Some(l4 + 8),
            _ => None,
        };
        if let Some(h) = inner.and_then(|at| flow_hash(frame, at, depth - 1)) {
            return Some(h);
        }
    }
    if !fragment && matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP) {
        if let Some(p) = frame.get(l4..l4 + 4) {
            ports = (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]));
        }
    }
    let (a, b) = (src.min(dst), src.max(dst));
    let (p, q) = (ports.0.min(ports.1), ports.0.max(ports.1));
    let x = (u64::from(a) << 32 | u64::from(b))
        ^ (u64::from(p) << 24 | u64::from(q) << 8 | u64::from(proto)).rotate_left(29);
    let m = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    Some((m ^ (m >> 29)) as u32 ^ (m >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::sim::{self, frames};
    use proptest::prelude::*;

    fn tcp(src: u32, dst: u32, sport: u16, dport: u16) -> Vec<u8> {
        frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, src, dst, sport, dport, false, true)
    }

    proptest! {
        #[test]
        fn a_reply_has_the_owner_of_its_request(src: u32, dst: u32, sport: u16, dport: u16, n in 2usize..9) {
            let there = owner(&tcp(src, dst, sport, dport), n);
            prop_assert!(there.is_some_and(|w| w < n));
            prop_assert_eq!(there, owner(&tcp(dst, src, dport, sport), n));
            let udp = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, src, dst, 64, sport, dport, b"x");
            let back = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, dst, src, 64, dport, sport, b"x");
            prop_assert_eq!(owner(&udp, n), owner(&back, n));
        }
    }

    #[test]
    fn flows_spread_over_the_workers() {
        let mut per = [0usize; 4];
        for sport in 0..4000u16 {
            per[owner(&tcp(sim::POD_A_IP, sim::NODE2_POD, 30000 + sport, 5201), 4).unwrap()] += 1;
        }
        assert!(per.iter().all(|&c| (700..1300).contains(&c)), "{per:?}");
    }

    #[test]
    fn ipip_and_icmp_errors_go_to_the_owner_of_the_flow_inside() {
        let inner = tcp(sim::NODE3_POD, sim::POD_A_IP, 40000, 5201);
        let wrapped = frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &inner);
        let reply = tcp(sim::POD_A_IP, sim::NODE3_POD, 5201, 40000);
        for n in 2..8 {
            assert_eq!(owner(&wrapped, n), owner(&reply, n), "{n} workers");
        }
        // Fragmentation needed from a router about the reply: quotes its header and ports.
        let mut err = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::UNDERLAY_GW, sim::POD_A_IP, 64, 0, 0, &[0; 36]);
        err[23] = PROTO_ICMP;
        err[34] = icmp::DEST_UNREACHABLE;
        err[42..42 + 28].copy_from_slice(&reply[14..14 + 28]);
        let hits = (2..8).filter(|&n| owner(&err, n) == owner(&reply, n)).count();
        assert_eq!(hits, 6);
    }

    #[test]
    fn what_is_no_flow_stays_where_it_is() {
        let mut arp = tcp(1, 2, 3, 4);
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(owner(&arp, 2), None);
        assert_eq!(owner(&[0u8; 10], 2), None);
        assert_eq!(owner(&tcp(1, 2, 3, 4)[..20], 2), None);
        assert_eq!(owner(&arp, 1), Some(0), "one worker owns everything");
    }
}
