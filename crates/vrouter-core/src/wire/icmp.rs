//! ICMPv4 (RFC 792) messages the router sends and answers.

use super::checksum;

pub const HEADER_LEN: usize = 8;

pub use vrouter_types::acl::{ICMP_ECHO_REPLY as ECHO_REPLY, ICMP_ECHO_REQUEST as ECHO_REQUEST};
pub const DEST_UNREACHABLE: u8 = 3;
pub const SOURCE_QUENCH: u8 = 4;
pub const REDIRECT: u8 = 5;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;

/// Destination unreachable codes.
pub const CODE_NET_UNREACHABLE: u8 = 0;
pub const CODE_HOST_UNREACHABLE: u8 = 1;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const CODE_ADMIN_PROHIBITED: u8 = 13;
/// Time exceeded code: TTL exceeded in transit.
pub const CODE_TTL_EXCEEDED: u8 = 0;

/// True for ICMP error messages, to which no ICMP error may be sent (RFC 1812 4.3.2.7).
/// Unknown types count as errors too: the safe side.
pub const fn is_error(ty: u8) -> bool {
    !matches!(ty, ECHO_REPLY | ECHO_REQUEST | 9 | 10 | 13 | 14 | 15 | 16 | 17 | 18)
}

/// Writes an ICMP header (`ty`, `code`, the 4-byte rest-of-header `rest`) at the start of
/// `msg` and fills the checksum over the whole of `msg` (header and data).
pub fn write_message(msg: &mut [u8], ty: u8, code: u8, rest: u32) {
    msg[0] = ty;
    msg[1] = code;
    msg[2] = 0;
    msg[3] = 0;
    msg[4..8].copy_from_slice(&rest.to_be_bytes());
    let c = checksum::checksum(msg);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
}

/// Turns an echo request message (ICMP header onward) into the echo reply in place, with an
/// incremental checksum update (only the type changes).
pub fn echo_request_to_reply(msg: &mut [u8]) {
    let old = u16::from_be_bytes([msg[0], msg[1]]);
    msg[0] = ECHO_REPLY;
    let new = u16::from_be_bytes([msg[0], msg[1]]);
    let c = checksum::update16(u16::from_be_bytes([msg[2], msg[3]]), old, new);
    msg[2..4].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        for t in [DEST_UNREACHABLE, SOURCE_QUENCH, REDIRECT, TIME_EXCEEDED, PARAMETER_PROBLEM, 42] {
            assert!(is_error(t), "{t}");
        }
        for t in [ECHO_REPLY, ECHO_REQUEST, 13, 14] {
            assert!(!is_error(t), "{t}");
        }
    }

    #[test]
    fn frag_needed_message_carries_mtu_and_verifies() {
        let mut m = [0u8; 36];
        m[8..].fill(0xab);
        write_message(&mut m, DEST_UNREACHABLE, CODE_FRAG_NEEDED, 1480);
        assert!(checksum::verify(&m));
        let h = etherparse::Icmpv4Slice::from_slice(&m).unwrap();
        match h.icmp_type() {
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
            ) => assert_eq!(next_hop_mtu, 1480),
            t => panic!("decoded as {t:?}"),
        }
    }

    #[test]
    fn echo_reply_in_place_verifies() {
        // type 8 code 0 csum id 0x1234 seq 1, payload "abcd"
        let mut m = [8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c', b'd'];
        let c = checksum::checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        echo_request_to_reply(&mut m);
        assert_eq!(m[0], ECHO_REPLY);
        assert!(checksum::verify(&m));
    }
}
