//! The policy rule model ([`rule`]) and what it matches: protocol numbers, the [`Action`] of a
//! rule and the [`FlowKey`] of a packet. The compiled classifier and connection tracking stay
//! in vrouter-core's `acl`, which re-exports these at their old paths.

pub mod rule;

pub use rule::{EndpointPolicy, PolicyConfig, PortRange, Rule, RuleError};

/// IP protocol numbers, defined once for the whole workspace (vrouter-core's `wire::ipv4`
/// re-exports them).
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// ICMP echo request and reply types (RFC 792; vrouter-core's `wire::icmp` re-exports them).
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The verdict of a rule (or of a default).
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Fragmentation state of the packet, from the IPv4 header.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fragment {
    /// Not a fragment (MF clear and offset 0).
    None,
    /// First fragment (offset 0, MF set): carries the L4 header.
    First,
    /// Any later fragment: no L4 header, so `sport`/`dport` are meaningless (set them to 0).
    /// Rules with a port or ICMP type/code condition never match these.
    NonFirst,
}

/// What the classifier and the connection tracker look at, all in host byte order.
///
/// For TCP, UDP and SCTP `sport`/`dport` are the ports. For ICMP, `sport = (type << 8) | code`
/// and `dport` is the echo identifier for echo request/reply (0 for every other ICMP type).
/// For other protocols, and for non-first fragments, both are 0.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: u32,
    pub dst: u32,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub fragment: Fragment,
}

impl FlowKey {
    /// ICMP type of an ICMP key (`sport >> 8`).
    pub const fn icmp_type(&self) -> u8 {
        (self.sport >> 8) as u8
    }
    /// ICMP code of an ICMP key (`sport & 0xff`).
    pub const fn icmp_code(&self) -> u8 {
        self.sport as u8
    }

    /// The key of the same connection's packets in the other direction: addresses and ports
    /// swapped; for ICMP, an echo request becomes a reply and vice versa (the identifier stays).
    /// Used to re-evaluate a stale conntrack hit as its originator's packet.
    pub const fn reversed(&self) -> FlowKey {
        if self.proto == PROTO_ICMP {
            let sport = match self.icmp_type() {
                ICMP_ECHO_REQUEST => (ICMP_ECHO_REPLY as u16) << 8 | self.icmp_code() as u16,
                ICMP_ECHO_REPLY => (ICMP_ECHO_REQUEST as u16) << 8 | self.icmp_code() as u16,
                _ => self.sport,
            };
            return FlowKey { src: self.dst, dst: self.src, sport, ..*self };
        }
        FlowKey { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..*self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_swaps_ends_and_echo_type() {
        let k = FlowKey { src: 1, dst: 2, proto: PROTO_TCP, sport: 3, dport: 4, fragment: Fragment::None };
        assert_eq!(k.reversed(), FlowKey { src: 2, dst: 1, sport: 4, dport: 3, ..k });
        assert_eq!(k.reversed().reversed(), k);
        let ping = FlowKey { proto: PROTO_ICMP, sport: 8 << 8, dport: 77, ..k };
        assert_eq!(ping.reversed(), FlowKey { src: 2, dst: 1, sport: 0, dport: 77, ..ping });
        assert_eq!(ping.reversed().reversed(), ping);
    }
}
