//! The few transport-layer fields a router reads: ports (TCP, UDP, SCTP), TCP flags, ICMP
//! type/code/id.

use super::icmp;
use super::ipv4::{PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

/// TCP header flags (RFC 9293 3.1; CWR: RFC 3168).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const TCP_CWR: u8 = 0x80;

/// Minimum transport header needed to read what policy matches on. RFC 1858 (tiny fragment
/// attacks): a first fragment too short to carry these cannot be classified and is dropped.
pub const fn min_header(proto: u8) -> usize {
    match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        // The common header (RFC 9260 section 3.1): ports, verification tag, checksum.
        PROTO_SCTP => 12,
        PROTO_ICMP => 8,
        _ => 0,
    }
}

/// Transport fields for flow classification. For ICMP, `sport` carries `type << 8 | code` and
/// `dport` the echo identifier (0 for other types), so echo and echo reply pair up.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct L4Fields {
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
}

/// Reads the fields from `l4` (the IP payload). `None` if it is shorter than [`min_header`].
#[inline]
pub fn parse(proto: u8, l4: &[u8]) -> Option<L4Fields> {
    if l4.len() < min_header(proto) {
        return None;
    }
    Some(match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => L4Fields {
            sport: u16::from_be_bytes([l4[0], l4[1]]),
            dport: u16::from_be_bytes([l4[2], l4[3]]),
            tcp_flags: if proto == PROTO_TCP { l4[13] } else { 0 },
        },
        PROTO_ICMP => {
            let (ty, code) = (l4[0], l4[1]);
            let id = if matches!(ty, icmp::ECHO_REQUEST | icmp::ECHO_REPLY) {
                u16::from_be_bytes([l4[4], l4[5]])
            } else {
                0
            };
            L4Fields { sport: (ty as u16) << 8 | code as u16, dport: id, tcp_flags: 0 }
        }
        _ => L4Fields::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_ports_and_flags() {
        // sport 0xc350 dport 80 seq.. ack.. off/flags: 0x50 0x12 (SYN|ACK)
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&50000u16.to_be_bytes());
        t[2..4].copy_from_slice(&80u16.to_be_bytes());
        t[12] = 0x50;
        t[13] = 0x12;
        assert_eq!(parse(PROTO_TCP, &t), Some(L4Fields { sport: 50000, dport: 80, tcp_flags: 0x12 }));
        assert_eq!(parse(PROTO_TCP, &t[..19]), None);
    }

    #[test]
    fn sctp_ports() {
        // sport 3868 dport 2905, verification tag, checksum (RFC 9260 section 3.1)
        let mut h = [0u8; 12];
        h[0..2].copy_from_slice(&3868u16.to_be_bytes());
        h[2..4].copy_from_slice(&2905u16.to_be_bytes());
        assert_eq!(parse(PROTO_SCTP, &h), Some(L4Fields { sport: 3868, dport: 2905, tcp_flags: 0 }));
        assert_eq!(parse(PROTO_SCTP, &h[..11]), None, "a common header cut short");
    }

    #[test]
    fn icmp_echo_id_and_type_code() {
        let m = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(parse(PROTO_ICMP, &m), Some(L4Fields { sport: 0x0800, dport: 0x1234, tcp_flags: 0 }));
        let e = [11, 0, 0, 0, 0x12, 0x34, 0, 1];
        assert_eq!(parse(PROTO_ICMP, &e).unwrap().dport, 0);
    }

    #[test]
    fn other_protocols_have_no_fields() {
        assert_eq!(parse(47, &[]), Some(L4Fields::default()));
        assert_eq!(parse(PROTO_UDP, &[0; 7]), None);
    }
}
