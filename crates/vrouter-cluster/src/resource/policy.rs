//! NetworkPolicy and GlobalNetworkPolicy: types (serialised with Calico's field names), rules,
//! and their readers with the checks vrouter's classifier needs. What the rules mean, as
//! compiled, is `crate::policy` (docs/policy.md).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;
use vrouter_types::acl::{PortRange, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use vrouter_types::Ipv4Prefix;

use super::fields::{err, int_value, join, one_of, parse_cidr, show, FResult, FieldError, Obj};
use super::Metadata;
use crate::selector::Selector;

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkPolicy {
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GlobalNetworkPolicy {
    pub metadata: Metadata,
    pub spec: PolicySpec,
}

/// The spec of both policy kinds (`namespace_selector` only in a GlobalNetworkPolicy).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// Lower applies first; absent applies after every ordered policy (as Calico).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    pub selector: Selector,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<Selector>,
    /// Defaulted when absent as Calico's client does: Ingress, Egress if there are egress rules
    /// and no ingress rules, both if there are both.
    pub types: Vec<PolicyType>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum PolicyType {
    Ingress,
    Egress,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RuleAction {
    Allow,
    Deny,
    /// Skips the remaining policies to the profiles, which in vrouter always allow.
    Pass,
}

/// An IP protocol number, printed with Calico's names (TCP, UDP, ICMP, SCTP, UDPLite).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

const PROTO_UDPLITE: u8 = 136;
const PROTO_NAMES: &[(&str, u8)] =
    &[("TCP", PROTO_TCP), ("UDP", PROTO_UDP), ("ICMP", PROTO_ICMP), ("SCTP", PROTO_SCTP), ("UDPLite", PROTO_UDPLITE)];

impl Protocol {
    pub const TCP: Protocol = Protocol(PROTO_TCP);
    pub const UDP: Protocol = Protocol(PROTO_UDP);
    pub const ICMP: Protocol = Protocol(PROTO_ICMP);
    pub const SCTP: Protocol = Protocol(PROTO_SCTP);

    /// Ports are matched for TCP, UDP and SCTP (vrouter's classifier).
    pub fn has_ports(self) -> bool {
        matches!(self.0, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match PROTO_NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((s, _)) => f.write_str(s),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match PROTO_NAMES.iter().find(|(_, n)| *n == self.0) {
            Some((name, _)) => s.serialize_str(name),
            None => s.serialize_u8(self.0),
        }
    }
}

/// `icmp` / `notICMP`: a type, and optionally a code.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Icmp {
    #[serde(rename = "type")]
    pub type_: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

/// A port match: a number or range, or a named port of the selected endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Range(PortRange),
    Named(String),
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Port::Range(r) if r.lo == r.hi => s.serialize_u16(r.lo),
            Port::Range(r) => s.collect_str(&format_args!("{}:{}", r.lo, r.hi)),
            Port::Named(n) => s.serialize_str(n),
        }
    }
}

/// `source` / `destination`. Every given condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EntityRule {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<Ipv4Prefix>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<Ipv4Prefix>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<Selector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<Selector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<Port>,
}

impl EntityRule {
    pub fn is_empty(&self) -> bool {
        *self == EntityRule::default()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RuleMetadata {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    pub action: RuleAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<Protocol>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Icmp>,
    #[serde(rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<Icmp>,
    /// 4 when given (IPv6 is refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
    #[serde(skip_serializing_if = "EntityRule::is_empty")]
    pub source: EntityRule,
    #[serde(skip_serializing_if = "EntityRule::is_empty")]
    pub destination: EntityRule,
    /// Rule annotations: kept and printed, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<RuleMetadata>,
}

impl Rule {
    /// A rule with no conditions.
    pub fn any(action: RuleAction) -> Rule {
        Rule {
            action,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            ip_version: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
            metadata: None,
        }
    }

    /// True if the rule has no match condition (annotations aside).
    pub fn is_unconditional(&self) -> bool {
        Rule { metadata: None, ..self.clone() } == Rule::any(self.action)
    }
}

const NO_TIERS: &str = "vrouter has one tier, `default`";

pub(super) fn parse_policy(v: Option<&Value>, global: bool) -> FResult<PolicySpec> {
    let empty = Value::Object(Default::default());
    let v = v.unwrap_or(&empty);
    let mut allowed = vec!["order", "selector", "types", "ingress", "egress", "tier"];
    let mut refused = vec![
        ("serviceAccountSelector", "vrouter's policy has no service account selectors"),
        ("performanceHints", "vrouter takes no performance hints"),
        ("stagedAction", "vrouter has no staged policies"),
    ];
    let false_only = ["doNotTrack", "preDNAT", "applyOnForward"];
    if global {
        allowed.push("namespaceSelector");
        allowed.extend(false_only);
    } else {
        refused.extend([
            ("doNotTrack", "only a GlobalNetworkPolicy has it (and vrouter supports only false)"),
            ("preDNAT", "only a GlobalNetworkPolicy has it (and vrouter supports only false)"),
            ("applyOnForward", "only a GlobalNetworkPolicy has it (and vrouter supports only false)"),
        ]);
    }
    let o = Obj::new(v, "spec", &allowed, &refused)?;
    if let Some(t) = o.str("tier")? {
        if t != "default" {
            return err(o.field("tier"), format!("'{t}' is not supported: {NO_TIERS}"));
        }
    }
    for f in false_only {
        if global && o.bool(f)? == Some(true) {
            let why = match f {
                "doNotTrack" => "vrouter's policy always applies with connection tracking",
                "preDNAT" => "vrouter does no DNAT",
                _ => "vrouter's policy applies to workload endpoints only (no host endpoints)",
            };
            return err(o.field(f), format!("true is not supported: {why}; remove it or set false"));
        }
    }
    let order = o.float("order")?;
    let selector = o.selector("selector")?.unwrap_or(Selector::All);
    let namespace_selector = if global { o.selector("namespaceSelector")? } else { None };
    let ingress = parse_rules(&o, "ingress", true)?;
    let egress = parse_rules(&o, "egress", true)?;
    let mut types = Vec::new();
    for (p, t) in o.str_list("types")? {
        let t = match one_of(t, &["Ingress", "Egress"], &p)? {
            "Ingress" => PolicyType::Ingress,
            _ => PolicyType::Egress,
        };
        if types.contains(&t) {
            return err(p, format!("{t:?} is listed twice"));
        }
        types.push(t);
    }
    if !o.has("types") {
        // libcalico-go's defaultPolicyTypesField.
        types = match (ingress.is_empty(), egress.is_empty()) {
            (_, true) => vec![PolicyType::Ingress],
            (true, false) => vec![PolicyType::Egress],
            (false, false) => vec![PolicyType::Ingress, PolicyType::Egress],
        };
    }
    for (dir, rules, t) in [("ingress", &ingress, PolicyType::Ingress), ("egress", &egress, PolicyType::Egress)] {
        if !rules.is_empty() && !types.contains(&t) {
            return err(
                o.field(dir),
                format!("{dir} rules are given but spec.types does not include {t:?}: they would never apply"),
            );
        }
    }
    Ok(PolicySpec { order, selector, namespace_selector, types, ingress, egress })
}

/// Reads the rule list `key` of `o`. `selectors`: whether selector fields are allowed (not in
/// profiles).
pub(super) fn parse_rules(o: &Obj, key: &str, selectors: bool) -> FResult<Vec<Rule>> {
    o.list(key)?.into_iter().map(|(p, v)| parse_rule(v, &p, selectors)).collect()
}

pub(super) fn parse_protocol(v: &Value, path: &str) -> FResult<Protocol> {
    const VALID: &str = "TCP, UDP, ICMP, SCTP, UDPLite or a number 1..=255";
    match v {
        Value::String(s) => {
            if s.eq_ignore_ascii_case("icmpv6") {
                return err(path, "ICMPv6 is not supported: vrouter is IPv4 only");
            }
            if let Some((_, n)) = PROTO_NAMES.iter().find(|(name, _)| name.eq_ignore_ascii_case(s)) {
                return Ok(Protocol(*n));
            }
            match s.parse::<u8>() {
                Ok(n) if n >= 1 => Ok(Protocol(n)),
                _ => err(path, format!("'{s}' is not a protocol; valid values: {VALID}")),
            }
        }
        Value::Number(_) => int_value(v, path, 1, 255).map(|n| Protocol(n as u8)),
        v => err(path, format!("{} is not a protocol; valid values: {VALID}", show(v))),
    }
}

/// Kubernetes port names (IANA service names): 1-15 of lowercase letters, digits and '-', at
/// least one letter, no leading, trailing or double '-'.
pub(super) fn check_port_name(s: &str, path: &str) -> FResult<()> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 15
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(|c| c.is_ascii_lowercase())
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
        && !s.contains("--");
    if ok {
        Ok(())
    } else {
        err(
            path,
            format!(
                "'{s}' is not a port number, range (\"lo:hi\") or port name (1-15 lowercase letters, digits and '-', \
                 with a letter)"
            ),
        )
    }
}

fn parse_port(v: &Value, path: &str) -> FResult<Port> {
    match v {
        Value::Number(_) => int_value(v, path, 0, 65535).map(|n| Port::Range(PortRange::single(n as u16))),
        Value::String(s) => {
            let s = s.trim();
            if let Some((a, b)) = s.split_once(':') {
                let range = match (a.trim().parse::<u16>(), b.trim().parse::<u16>()) {
                    (Ok(lo), Ok(hi)) => PortRange::new(lo, hi),
                    _ => None,
                };
                return range.map(Port::Range).ok_or_else(|| FieldError {
                    path: path.into(),
                    message: format!("'{s}' is not a port range: expected \"lo:hi\" with 0 <= lo <= hi <= 65535"),
                });
            }
            if let Ok(n) = s.parse::<u16>() {
                return Ok(Port::Range(PortRange::single(n)));
            }
            check_port_name(s, path)?;
            Ok(Port::Named(s.to_string()))
        }
        v => err(path, format!("{} is not a port: expected a number, \"lo:hi\" or a port name", show(v))),
    }
}

fn parse_icmp(o: &Obj, key: &str) -> FResult<Option<Icmp>> {
    let Some(i) = o.obj(key, &["type", "code"], &[])? else {
        return Ok(None);
    };
    let type_ = i.int("type", 0, 254)?;
    let code = i.int("code", 0, 255)?;
    match type_ {
        Some(t) => Ok(Some(Icmp { type_: t as u8, code: code.map(|c| c as u8) })),
        None => err(i.field("type"), "is required (0..=254) when an ICMP type or code is matched"),
    }
}

fn parse_entity(o: &Obj, key: &str, selectors: bool) -> FResult<EntityRule> {
    let sel_fields = ["selector", "notSelector", "namespaceSelector"];
    let mut allowed = vec!["nets", "notNets", "ports", "notPorts"];
    if selectors {
        allowed.extend(sel_fields);
    }
    let refused = [
        ("serviceAccounts", "vrouter's policy has no service account selectors"),
        ("services", "vrouter's policy does not match Kubernetes services"),
    ];
    let Some(e) = o.obj(key, &allowed, &refused)? else {
        return Ok(EntityRule::default());
    };
    let nets =
        |k: &str| -> FResult<Vec<Ipv4Prefix>> { e.str_list(k)?.into_iter().map(|(p, s)| parse_cidr(s, &p)).collect() };
    let ports = |k: &str| -> FResult<Vec<Port>> { e.list(k)?.into_iter().map(|(p, v)| parse_port(v, &p)).collect() };
    let r = EntityRule {
        nets: nets("nets")?,
        not_nets: nets("notNets")?,
        selector: e.selector("selector")?,
        not_selector: e.selector("notSelector")?,
        namespace_selector: e.selector("namespaceSelector")?,
        ports: ports("ports")?,
        not_ports: ports("notPorts")?,
    };
    if let Some(i) = r.not_ports.iter().position(|p| matches!(p, Port::Named(_))) {
        return err(
            format!("{}[{i}]", e.field("notPorts")),
            "named ports are not supported in notPorts: vrouter resolves named ports to (address, port) pairs and \
             cannot negate them; list the port numbers",
        );
    }
    Ok(r)
}

fn parse_rule(v: &Value, path: &str, selectors: bool) -> FResult<Rule> {
    let o = Obj::new(
        v,
        path,
        &["action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "source", "destination", "metadata"],
        &[("http", "vrouter does not look at HTTP (no application layer policy)")],
    )?;
    let action = match o.str("action")? {
        None => return err(o.field("action"), "is required; valid values: Allow, Deny, Pass"),
        Some(a) if a.eq_ignore_ascii_case("log") => {
            return err(
                o.field("action"),
                "Log is not supported: vrouter's data plane cannot log packets; valid values: Allow, Deny, Pass",
            )
        }
        Some(a) => match a.to_ascii_lowercase().as_str() {
            "allow" => RuleAction::Allow,
            "deny" => RuleAction::Deny,
            "pass" => RuleAction::Pass,
            _ => return err(o.field("action"), format!("'{a}' is not valid; valid values: Allow, Deny, Pass")),
        },
    };
    let proto = |k: &str| o.get(k).map(|v| parse_protocol(v, &o.field(k))).transpose();
    let protocol = proto("protocol")?;
    let not_protocol = proto("notProtocol")?;
    let icmp = parse_icmp(&o, "icmp")?;
    let not_icmp = parse_icmp(&o, "notICMP")?;
    let ip_version = match o.get("ipVersion") {
        None => None,
        Some(v) => match int_value(v, &o.field("ipVersion"), 4, 6)? {
            4 => Some(4),
            6 => return err(o.field("ipVersion"), "6 is not supported: vrouter is IPv4 only; valid value: 4"),
            _ => return err(o.field("ipVersion"), format!("{} is not valid; valid value: 4", show(v))),
        },
    };
    let source = parse_entity(&o, "source", selectors)?;
    let destination = parse_entity(&o, "destination", selectors)?;
    let metadata = match o.obj("metadata", &["annotations"], &[])? {
        None => None,
        Some(m) => Some(RuleMetadata { annotations: m.str_map("annotations")? }),
    };
    // The combinations vrouter's classifier needs (and Calico's validator also checks).
    for (k, e) in [("source", &source), ("destination", &destination)] {
        for (pk, ports) in [("ports", &e.ports), ("notPorts", &e.not_ports)] {
            if !ports.is_empty() && !protocol.is_some_and(Protocol::has_ports) {
                let got = protocol.map_or("none".to_string(), |p| p.to_string());
                return err(
                    join(&o.field(k), pk),
                    format!("ports need protocol TCP, UDP or SCTP, but the rule's protocol is {got}"),
                );
            }
        }
    }
    for (k, i) in [("icmp", icmp), ("notICMP", not_icmp)] {
        if i.is_some() && protocol != Some(Protocol::ICMP) {
            let got = protocol.map_or("none".to_string(), |p| p.to_string());
            return err(o.field(k), format!("{k} needs protocol ICMP, but the rule's protocol is {got}"));
        }
    }
    Ok(Rule { action, protocol, not_protocol, icmp, not_icmp, ip_version, source, destination, metadata })
}
