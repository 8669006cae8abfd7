//! The rule model as the operator writes it, its serde form, and the reference matcher.
//!
//! Serde form (JSON shown; the config file uses the same field names):
//!
//! ```json
//! { "action": "allow", "src": ["10.244.0.0/16"], "protocol": "tcp",
//!   "dst_ports": ["80", "8000-8080", 443] }
//! ```
//!
//! Every match field is optional and an absent (or empty) field matches anything. Unknown
//! fields are refused so that a typo (`dst_port`) never silently widens a rule.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Action, FlowKey, Fragment, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use crate::fib::Ipv4Prefix;

/// An inclusive port range `lo..=hi`. Written `"80"`, `"8000-8080"` or as a bare number.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const fn single(port: u16) -> Self {
        PortRange { lo: port, hi: port }
    }
    /// `None` when `lo > hi`.
    pub const fn new(lo: u16, hi: u16) -> Option<Self> {
        if lo <= hi {
            Some(PortRange { lo, hi })
        } else {
            None
        }
    }
    pub const fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}': expected a port 0-65535 or a range like 8000-8080");
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        PortRange::new(lo, hi).ok_or_else(|| format!("'{s}': range start is above its end"))
    }
}

impl Serialize for PortRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number or a string like \"80\" or \"8000-8080\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                u16::try_from(v).map(PortRange::single).map_err(|_| E::custom(format!("port {v} is above 65535")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                u64::try_from(v).map_err(|_| E::custom(format!("port {v} is negative"))).and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The protocol names accepted in rules.
const PROTO_NAMES: &[(&str, u8)] =
    &[("icmp", PROTO_ICMP), ("tcp", PROTO_TCP), ("udp", PROTO_UDP), ("sctp", PROTO_SCTP)];

/// The name of a protocol number, if it has one.
pub fn protocol_name(p: u8) -> Option<&'static str> {
    PROTO_NAMES.iter().find(|(_, n)| *n == p).map(|(s, _)| *s)
}

/// Serde for `Option<u8>` protocols: a number 0-255 or a name (tcp, udp, icmp, sctp).
mod proto_serde {
    use super::*;

    pub fn serialize<S: Serializer>(p: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => match protocol_name(*p) {
                Some(name) => s.serialize_str(name),
                None => s.serialize_u8(*p),
            },
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Option<u8>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a protocol number 0-255 or one of tcp, udp, icmp, sctp")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<u8>, E> {
                u8::try_from(v).map(Some).map_err(|_| E::custom(format!("protocol {v} is above 255")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<u8>, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("protocol {v} is negative")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<u8>, E> {
                let lower = v.trim().to_ascii_lowercase();
                if let Some((_, n)) = PROTO_NAMES.iter().find(|(s, _)| *s == lower) {
                    return Ok(Some(*n));
                }
                lower.parse::<u8>().map(Some).map_err(|_| {
                    E::custom(format!("unknown protocol '{v}': use tcp, udp, icmp, sctp or a number 0-255"))
                })
            }
            fn visit_none<E: de::Error>(self) -> Result<Option<u8>, E> {
                Ok(None)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Option<u8>, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V)
    }
}

/// Serde for prefix lists: strings `"a.b.c.d/len"` (a bare address means /32).
mod prefixes_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Ipv4Prefix], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|p| p.to_string()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Ipv4Prefix>, D::Error> {
        let raw: Vec<String> = Vec::deserialize(d)?;
        raw.iter().map(|s| s.parse().map_err(de::Error::custom)).collect()
    }
}

/// One rule: an action and match conditions, all of which must hold. Absent fields match any.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    /// Source address in any of these prefixes.
    #[serde(default, with = "prefixes_serde", skip_serializing_if = "Vec::is_empty")]
    pub src: Vec<Ipv4Prefix>,
    /// Destination address in any of these prefixes.
    #[serde(default, with = "prefixes_serde", skip_serializing_if = "Vec::is_empty")]
    pub dst: Vec<Ipv4Prefix>,
    /// IP protocol number (serde also takes tcp, udp, icmp, sctp).
    #[serde(default, with = "proto_serde", skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    /// Source port in any of these ranges; needs protocol tcp, udp or sctp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub src_ports: Vec<PortRange>,
    /// Destination port in any of these ranges; needs protocol tcp, udp or sctp.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dst_ports: Vec<PortRange>,
    /// ICMP type; needs protocol icmp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    /// ICMP code; needs protocol icmp and `icmp_type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp_code: Option<u8>,
}

/// Why a rule cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error(
        "ports need protocol tcp, udp or sctp, but the rule has protocol {}",
        fmt_proto(*.0)
    )]
    PortsNeedL4Protocol(Option<u8>),
    #[error("icmp_type/icmp_code need protocol icmp, but the rule has protocol {}", fmt_proto(*.0))]
    IcmpNeedsIcmpProtocol(Option<u8>),
    #[error("icmp_code {0} given without icmp_type: add the type (e.g. 3 for unreachable)")]
    IcmpCodeWithoutType(u8),
    #[error("port range {lo}-{hi}: the start is above the end")]
    BadPortRange { lo: u16, hi: u16 },
}

fn fmt_proto(p: Option<u8>) -> String {
    match p {
        None => "any (none given)".to_string(),
        Some(p) => match protocol_name(p) {
            Some(n) => n.to_string(),
            None => p.to_string(),
        },
    }
}

impl Rule {
    /// A rule with no conditions.
    pub fn any(action: Action) -> Rule {
        Rule {
            action,
            src: Vec::new(),
            dst: Vec::new(),
            protocol: None,
            src_ports: Vec::new(),
            dst_ports: Vec::new(),
            icmp_type: None,
            icmp_code: None,
        }
    }

    /// True if the rule needs the L4 header (ports or ICMP type/code), so it never matches a
    /// non-first fragment.
    pub fn needs_l4(&self) -> bool {
        !self.src_ports.is_empty() || !self.dst_ports.is_empty() || self.icmp_type.is_some()
    }

    /// Checks the field combinations the classifier relies on.
    pub fn validate(&self) -> Result<(), RuleError> {
        for r in self.src_ports.iter().chain(&self.dst_ports) {
            if r.lo > r.hi {
                return Err(RuleError::BadPortRange { lo: r.lo, hi: r.hi });
            }
        }
        let has_ports = !self.src_ports.is_empty() || !self.dst_ports.is_empty();
        if has_ports && !matches!(self.protocol, Some(PROTO_TCP | PROTO_UDP | PROTO_SCTP)) {
            return Err(RuleError::PortsNeedL4Protocol(self.protocol));
        }
        if (self.icmp_type.is_some() || self.icmp_code.is_some()) && self.protocol != Some(PROTO_ICMP) {
            return Err(RuleError::IcmpNeedsIcmpProtocol(self.protocol));
        }
        if let (None, Some(c)) = (self.icmp_type, self.icmp_code) {
            return Err(RuleError::IcmpCodeWithoutType(c));
        }
        Ok(())
    }

    /// The reference matcher: a direct reading of the semantics, used by tests and the CLI.
    /// The compiled classifier must agree with it on every key.
    pub fn matches(&self, k: &FlowKey) -> bool {
        if !self.src.is_empty() && !self.src.iter().any(|p| p.contains(k.src)) {
            return false;
        }
        if !self.dst.is_empty() && !self.dst.iter().any(|p| p.contains(k.dst)) {
            return false;
        }
        if self.protocol.is_some_and(|p| p != k.proto) {
            return false;
        }
        if self.needs_l4() && k.fragment == Fragment::NonFirst {
            return false;
        }
        if !self.src_ports.is_empty() && !self.src_ports.iter().any(|r| r.contains(k.sport)) {
            return false;
        }
        if !self.dst_ports.is_empty() && !self.dst_ports.iter().any(|r| r.contains(k.dport)) {
            return false;
        }
        if self.icmp_type.is_some_and(|t| t != k.icmp_type()) {
            return false;
        }
        if self.icmp_code.is_some_and(|c| c != k.icmp_code()) {
            return false;
        }
        true
    }
}

/// The policies of one endpoint, by name, per direction. Order matters: the named policies'
/// rules are concatenated in this order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPolicy {
    #[serde(default)]
    pub ingress: Vec<String>,
    #[serde(default)]
    pub egress: Vec<String>,
}

/// Everything the policy layer is configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Applied first, to every packet in every checked direction (and to transit traffic).
    #[serde(default)]
    pub global: Vec<Rule>,
    /// Named rule lists that endpoints refer to.
    #[serde(default)]
    pub policies: BTreeMap<String, Vec<Rule>>,
    /// Indexed by [`super::EndpointId`] (position in this list).
    #[serde(default)]
    pub endpoints: Vec<EndpointPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(proto: u8, sport: u16, dport: u16) -> FlowKey {
        FlowKey { src: 0x0a00_0001, dst: 0x0a00_0002, proto, sport, dport, fragment: Fragment::None }
    }

    #[test]
    fn serde_parses_rule_with_names_ranges_and_numbers() {
        let r: Rule = serde_json::from_str(
            r#"{"action":"allow","src":["10.244.0.0/16","192.0.2.1"],"protocol":"TCP",
                "dst_ports":["80","8000-8080",443]}"#,
        )
        .unwrap();
        assert_eq!(r.action, Action::Allow);
        assert_eq!(r.src[1].to_string(), "192.0.2.1/32");
        assert_eq!(r.protocol, Some(PROTO_TCP));
        assert_eq!(r.dst_ports, vec![PortRange::single(80), PortRange { lo: 8000, hi: 8080 }, PortRange::single(443)]);
        // Round trip through the serialised form.
        let back: Rule = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        let n: Rule = serde_json::from_str(r#"{"action":"deny","protocol":47}"#).unwrap();
        assert_eq!(n.protocol, Some(47));
    }

    #[test]
    fn serde_rejects_unknown_fields_bad_ports_and_protocols() {
        let e = serde_json::from_str::<Rule>(r#"{"action":"allow","dst_port":["80"]}"#);
        assert!(e.unwrap_err().to_string().contains("dst_port"));
        let e = serde_json::from_str::<Rule>(r#"{"action":"allow","dst_ports":["90-80"]}"#);
        assert!(e.unwrap_err().to_string().contains("above its end"));
        let e = serde_json::from_str::<Rule>(r#"{"action":"allow","dst_ports":[70000]}"#);
        assert!(e.unwrap_err().to_string().contains("above 65535"));
        let e = serde_json::from_str::<Rule>(r#"{"action":"allow","protocol":"gre"}"#);
        assert!(e.unwrap_err().to_string().contains("unknown protocol 'gre'"));
        let e = serde_json::from_str::<Rule>(r#"{"action":"allow","src":["10.0.0.1/8"]}"#);
        assert!(e.unwrap_err().to_string().contains("host bits"));
    }

    #[test]
    fn serde_parses_whole_config() {
        let c: PolicyConfig = serde_json::from_str(
            r#"{"global":[{"action":"deny","dst":["169.254.169.254/32"]}],
                "policies":{"web":[{"action":"allow","protocol":"tcp","dst_ports":[80]}]},
                "endpoints":[{"ingress":["web"]},{}]}"#,
        )
        .unwrap();
        assert_eq!(c.global.len(), 1);
        assert_eq!(c.endpoints[0].ingress, vec!["web".to_string()]);
        assert!(c.endpoints[1].egress.is_empty());
    }

    #[test]
    fn validate_rejects_ports_without_l4_protocol_and_icmp_misuse() {
        let mut r = Rule::any(Action::Allow);
        r.dst_ports.push(PortRange::single(53));
        assert_eq!(r.validate(), Err(RuleError::PortsNeedL4Protocol(None)));
        r.protocol = Some(PROTO_ICMP);
        assert_eq!(r.validate(), Err(RuleError::PortsNeedL4Protocol(Some(PROTO_ICMP))));
        r.protocol = Some(PROTO_UDP);
        assert_eq!(r.validate(), Ok(()));
        r.icmp_type = Some(8);
        assert_eq!(r.validate(), Err(RuleError::IcmpNeedsIcmpProtocol(Some(PROTO_UDP))));
        let mut i = Rule::any(Action::Allow);
        i.protocol = Some(PROTO_ICMP);
        i.icmp_code = Some(1);
        assert_eq!(i.validate(), Err(RuleError::IcmpCodeWithoutType(1)));
        let mut p = Rule::any(Action::Allow);
        p.protocol = Some(PROTO_TCP);
        p.src_ports.push(PortRange { lo: 9, hi: 1 });
        assert_eq!(p.validate(), Err(RuleError::BadPortRange { lo: 9, hi: 1 }));
    }

    #[test]
    fn matches_icmp_type_and_code_from_sport() {
        let mut r = Rule::any(Action::Allow);
        r.protocol = Some(PROTO_ICMP);
        r.icmp_type = Some(3);
        assert!(r.matches(&key(PROTO_ICMP, 3 << 8 | 4, 0)));
        assert!(!r.matches(&key(PROTO_ICMP, 8 << 8, 0)));
        r.icmp_code = Some(4);
        assert!(r.matches(&key(PROTO_ICMP, 3 << 8 | 4, 0)));
        assert!(!r.matches(&key(PROTO_ICMP, 3 << 8 | 1, 0)));
    }
}
