//! BGPConfiguration and BGPPeer: what each node's BIRD is told (`crate::bgp` builds a node's
//! `vrouter_bgp::BgpIntent` from them and the Nodes). Types serialised with Calico's field
//! names, and their readers.
//!
//! Fields Calico defines for features vrouter's BIRD does not render (service address
//! advertisement, communities, filters, TTL security, ...) are refused by name with the reason.
//! A few fields are accepted only at the value that means Calico's default behaviour
//! (`bindMode: None`, `sourceAddress: UseNodeIP`, `keepOriginalNextHop: false`,
//! `nextHopMode: Auto`) and, like `vxlanMode: Never` on a pool, are not printed back.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::fields::{check_subdomain, err, one_of, parse_ip, FResult, Obj};
use super::spec::parse_asn;
use super::Metadata;
use crate::selector::Selector;

/// Calico's default AS number of a node (BGPConfiguration `default` may change it).
pub const DEFAULT_AS_NUMBER: u32 = 64512;
/// BIRD's (and Calico's) graceful restart time when none is given, in seconds.
pub const DEFAULT_RESTART_SECS: u32 = 120;
/// The largest graceful restart time: the Restart Time field of the capability is 12 bits
/// (RFC 4724 section 3).
pub const MAX_RESTART_SECS: u32 = 4095;
/// The cluster's BGPConfiguration; `node.<node name>` ones are per node.
pub const GLOBAL_CONFIG_NAME: &str = "default";
/// The prefix of a per-node BGPConfiguration's name.
pub const NODE_CONFIG_PREFIX: &str = "node.";

const NO_SERVICES: &str =
    "vrouter does not advertise Kubernetes Service addresses over BGP (only the pod blocks of the IP pools)";
const NO_COMMUNITIES: &str = "vrouter's BIRD tags no BGP communities";
const NO_WORKLOAD_PEERING: &str = "vrouter's BIRD does not peer with pods";

// ---------------------------------------------------------------------------------------------
// Shared pieces

/// A password kept in a Kubernetes Secret (`secretKeyRef`): the node agent reads it from the
/// Secret as mounted on the node (`<secrets dir>/<name>/<key>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

impl fmt::Display for SecretKeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "secret '{}' key '{}'", self.name, self.key)
    }
}

/// `password` / `nodeMeshPassword`: TCP MD5 signatures (RFC 2385) on the sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BgpPassword {
    #[serde(rename = "secretKeyRef")]
    pub secret_key_ref: SecretKeyRef,
}

/// A Kubernetes Secret's data key: `[-._a-zA-Z0-9]+`, at most 253 characters, and (since the
/// agent reads it as a file name) not `.` or `..`.
fn check_secret_key(s: &str, path: &str) -> FResult<()> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && s != "."
        && s != "..";
    if ok {
        return Ok(());
    }
    err(path, format!("'{s}' is not a Secret key: 1-253 of letters, digits, '-', '_' and '.' (not '.' or '..')"))
}

fn parse_password(o: &Obj, field: &str) -> FResult<Option<BgpPassword>> {
    let Some(p) = o.obj(field, &["secretKeyRef"], &[])? else {
        return Ok(None);
    };
    let Some(r) = p.obj("secretKeyRef", &["name", "key", "optional"], &[])? else {
        return err(p.field("secretKeyRef"), "is required: the Secret holding the password, {name: ..., key: ...}");
    };
    let name = r.req_str("name")?;
    check_subdomain(name, &r.field("name"))?;
    let key = r.req_str("key")?;
    check_secret_key(key, &r.field("key"))?;
    if r.bool("optional")? == Some(true) {
        return err(
            r.field("optional"),
            "true is not supported: a password that cannot be read stops the node's BGP configuration (no session \
             is set up without its password); remove it",
        );
    }
    Ok(Some(BgpPassword { secret_key_ref: SecretKeyRef { name: name.to_string(), key: key.to_string() } }))
}

/// A duration as Kubernetes writes one (Go's `time.Duration` text: `120s`, `2m0s`, `1m30s`,
/// `1.5s`, `500ms`), printed back in Go's form.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    /// Whole seconds, rounded to the nearest (as Calico gives BIRD).
    pub fn rounded_secs(self) -> u64 {
        (self.0.as_nanos() as u64).saturating_add(500_000_000) / 1_000_000_000
    }
}

/// `value` in units of `div` (a power of ten), with the fraction's trailing zeros dropped.
fn decimal(value: u128, div: u128) -> String {
    let (int, rem) = (value / div, value % div);
    if rem == 0 {
        return int.to_string();
    }
    let width = div.ilog10() as usize;
    let frac = format!("{rem:0width$}");
    format!("{int}.{}", frac.trim_end_matches('0'))
}

impl fmt::Display for GoDuration {
    /// Go's `Duration.String()`: `0s`, `500ms`, `1.5s`, `2m0s`, `1h0m0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        if ns < 1_000_000_000 {
            let (unit, div) = if ns < 1_000 {
                ("ns", 1)
            } else if ns < 1_000_000 {
                ("\u{b5}s", 1_000)
            } else {
                ("ms", 1_000_000)
            };
            return write!(f, "{}{unit}", decimal(ns, div));
        }
        let secs = self.0.as_secs();
        let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        let s_ns = u128::from(s) * 1_000_000_000 + u128::from(self.0.subsec_nanos());
        write!(f, "{}s", decimal(s_ns, 1_000_000_000))
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Go's duration syntax: `[+-]` then one or more `<decimal><unit>` (units `ns`, `us`, `µs`,
/// `ms`, `s`, `m`, `h`), or `0`.
fn parse_go_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("'{text}' is not a duration: a number and a unit (h, m, s, ms, us, ns), as Kubernetes writes them: 120s, 2m0s, 1m30s")
    };
    let s = text.strip_prefix('+').unwrap_or(text);
    if s.starts_with('-') {
        return Err(format!("'{text}': a duration cannot be negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int, after) = rest.split_at(int_len);
        let (frac, after) = match after.strip_prefix('.') {
            Some(a) => {
                let l = a.find(|c: char| !c.is_ascii_digit()).unwrap_or(a.len());
                a.split_at(l)
            }
            None => ("", after),
        };
        if int.is_empty() && frac.is_empty() {
            return Err(bad());
        }
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        // Go's own bound: a duration is an int64 of nanoseconds (about 292 years).
        let too_long = || format!("'{text}' is too long a duration");
        if int.len() > 20 || frac.len() > 20 {
            return Err(too_long());
        }
        let int_v: u128 = if int.is_empty() { 0 } else { int.parse().map_err(|_| bad())? };
        let mut v = int_v.checked_mul(scale).ok_or_else(too_long)?;
        if !frac.is_empty() {
            let f: u128 = frac.parse().map_err(|_| bad())?;
            v += f * scale / 10u128.pow(frac.len() as u32);
        }
        total = total.checked_add(v).filter(|t| *t <= i64::MAX as u128).ok_or_else(too_long)?;
        rest = after;
    }
    Ok(Duration::from_nanos(total as u64))
}

/// A graceful restart time (`maxRestartTime`, `nodeMeshMaxRestartTime`): a duration of at
/// most [`MAX_RESTART_SECS`] once rounded to seconds.
fn parse_restart_time(o: &Obj, field: &str) -> FResult<Option<GoDuration>> {
    let Some(v) = o.get(field) else {
        return Ok(None);
    };
    let path = o.field(field);
    let Value::String(s) = v else {
        return err(path, "expected a duration string such as \"120s\" (Kubernetes durations are strings)");
    };
    let d = GoDuration(parse_go_duration(s.trim()).map_err(|m| super::FieldError { path: path.clone(), message: m })?);
    if d.rounded_secs() > u64::from(MAX_RESTART_SECS) {
        return err(
            path,
            format!(
                "'{s}' is longer than a graceful restart time can be: at most {MAX_RESTART_SECS}s (RFC 4724: a 12-bit \
                 field of seconds)"
            ),
        );
    }
    Ok(Some(d))
}

// ---------------------------------------------------------------------------------------------
// BGPConfiguration

#[derive(Clone, Debug, PartialEq)]
pub struct BgpConfiguration {
    pub metadata: Metadata,
    pub spec: BgpConfigurationSpec,
}

/// `logSeverityScreen`, Calico's values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum LogSeverity {
    Debug,
    Info,
    Warning,
    Error,
    Fatal,
}

/// What BIRD logs for a [`LogSeverity`], as Calico's template maps it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BirdDebug {
    /// `debug all` (Debug).
    All,
    /// `debug { states }` (Info, the default).
    States,
    /// Nothing (Warning, Error, Fatal).
    Off,
}

impl LogSeverity {
    pub fn bird_debug(self) -> BirdDebug {
        match self {
            LogSeverity::Debug => BirdDebug::All,
            LogSeverity::Info => BirdDebug::States,
            LogSeverity::Warning | LogSeverity::Error | LogSeverity::Fatal => BirdDebug::Off,
        }
    }
}

/// The cluster's BGP settings (`default`), or one node's log level (`node.<node name>`).
/// Absent fields take Calico's defaults (see the accessors); they are stored as given.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfigurationSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_severity_screen: Option<LogSeverity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_to_node_mesh_enabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_mesh_password: Option<BgpPassword>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_mesh_max_restart_time: Option<GoDuration>,
}

impl BgpConfigurationSpec {
    /// `nodeToNodeMeshEnabled`, default true.
    pub fn mesh_enabled(&self) -> bool {
        self.node_to_node_mesh_enabled.unwrap_or(true)
    }

    /// `asNumber`, default [`DEFAULT_AS_NUMBER`].
    pub fn default_as_number(&self) -> u32 {
        self.as_number.unwrap_or(DEFAULT_AS_NUMBER)
    }
}

const BGPCONFIG_FIELDS: [&str; 5] =
    ["logSeverityScreen", "nodeToNodeMeshEnabled", "asNumber", "nodeMeshPassword", "nodeMeshMaxRestartTime"];

const BGPCONFIG_REFUSED: &[(&str, &str)] = &[
    ("serviceClusterIPs", NO_SERVICES),
    ("serviceExternalIPs", NO_SERVICES),
    ("serviceLoadBalancerIPs", NO_SERVICES),
    ("serviceLoadBalancerAggregation", NO_SERVICES),
    ("communities", NO_COMMUNITIES),
    ("prefixAdvertisements", NO_COMMUNITIES),
    ("listenPort", "vrouter's BIRD listens on the BGP port, 179 (RFC 4271)"),
    ("ignoredInterfaces", "vrouter's BIRD reads no device routes: it announces the node's pod blocks only"),
    ("localWorkloadPeeringIPV4", NO_WORKLOAD_PEERING),
    ("localWorkloadPeeringIPV6", NO_WORKLOAD_PEERING),
];

/// Reads a BGPConfiguration's spec; `name` decides which fields it may have: the cluster's
/// (`default`) any honoured field, a node's (`node.<node name>`) its log level only.
pub(super) fn parse_bgp_configuration(v: Option<&Value>, name: &str) -> FResult<BgpConfigurationSpec> {
    let per_node = name.strip_prefix(NODE_CONFIG_PREFIX);
    if name != GLOBAL_CONFIG_NAME && per_node.is_none() {
        return err(
            "metadata.name",
            format!(
                "'{name}' is not a BGPConfiguration name: '{GLOBAL_CONFIG_NAME}' (the cluster's) or \
                 '{NODE_CONFIG_PREFIX}<node name>' (one node's log level)"
            ),
        );
    }
    let global_only = format!(
        "a node's BGPConfiguration ('{NODE_CONFIG_PREFIX}<node name>') sets logSeverityScreen only: set this in \
         BGPConfiguration '{GLOBAL_CONFIG_NAME}'"
    );
    let mut refused: Vec<(&str, &str)> = BGPCONFIG_REFUSED.to_vec();
    let allowed: &[&str] = if per_node.is_some() {
        refused.extend(BGPCONFIG_FIELDS[1..].iter().map(|f| (*f, global_only.as_str())));
        &BGPCONFIG_FIELDS[..1]
    } else {
        &BGPCONFIG_FIELDS
    };
    let mut with_bind = allowed.to_vec();
    with_bind.push("bindMode");
    let Some(o) = v.map(|v| Obj::new(v, "spec", &with_bind, &refused)).transpose()? else {
        return Ok(BgpConfigurationSpec::default());
    };
    if let Some(m) = o.str("bindMode")? {
        if one_of(m, &["None", "NodeIP"], &o.field("bindMode"))? != "None" {
            return err(
                o.field("bindMode"),
                "NodeIP is not supported: vrouter's BIRD listens on every address (no strict bind); use bindMode: None",
            );
        }
    }
    let log_severity_screen = match o.str("logSeverityScreen")? {
        None => None,
        Some(s) => {
            Some(match one_of(s, &["Debug", "Info", "Warning", "Error", "Fatal"], &o.field("logSeverityScreen"))? {
                "Debug" => LogSeverity::Debug,
                "Info" => LogSeverity::Info,
                "Warning" => LogSeverity::Warning,
                "Error" => LogSeverity::Error,
                _ => LogSeverity::Fatal,
            })
        }
    };
    let as_number = o.get("asNumber").map(|v| parse_asn(v, &o.field("asNumber"))).transpose()?;
    Ok(BgpConfigurationSpec {
        log_severity_screen,
        node_to_node_mesh_enabled: o.bool("nodeToNodeMeshEnabled")?,
        as_number,
        node_mesh_password: parse_password(&o, "nodeMeshPassword")?,
        node_mesh_max_restart_time: parse_restart_time(&o, "nodeMeshMaxRestartTime")?,
    })
}

// ---------------------------------------------------------------------------------------------
// BGPPeer

#[derive(Clone, Debug, PartialEq)]
pub struct BgpPeer {
    pub metadata: Metadata,
    pub spec: BgpPeerSpec,
}

/// Which nodes a BGPPeer gives the peering to (`node`, `nodeSelector`, or neither: all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerNodes {
    All,
    Node(String),
    Selector(Selector),
}

/// Whom they peer with: an address with its AS (`peerIP`, `asNumber`), or the nodes a
/// selector matches (`peerSelector`; each with its own AS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerTarget {
    Ip { ip: Ipv4Addr, as_number: u32 },
    Selector(Selector),
}

/// `reversePeering`: whether the nodes peered with (a peerSelector's, or the node whose address
/// and AS are peerIP and asNumber) peer back automatically (Auto, the default) or need a
/// BGPPeer of their own (Manual).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum ReversePeering {
    #[default]
    Auto,
    Manual,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpPeerSpec {
    pub nodes: PeerNodes,
    pub peer: PeerTarget,
    pub password: Option<BgpPassword>,
    pub max_restart_time: Option<GoDuration>,
    pub reverse_peering: ReversePeering,
}

impl BgpPeerSpec {
    /// Whether the peering applies to a node with these name and labels.
    pub fn applies_to(&self, node: &str, labels: &std::collections::BTreeMap<String, String>) -> bool {
        match &self.nodes {
            PeerNodes::All => true,
            PeerNodes::Node(n) => n == node,
            PeerNodes::Selector(s) => s.matches(labels),
        }
    }
}

impl Serialize for BgpPeerSpec {
    /// Calico's fields: `node` or `nodeSelector`, `peerIP` and `asNumber` or `peerSelector`, ...
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match &self.nodes {
            PeerNodes::All => {}
            PeerNodes::Node(n) => m.serialize_entry("node", n)?,
            PeerNodes::Selector(sel) => m.serialize_entry("nodeSelector", sel)?,
        }
        match &self.peer {
            PeerTarget::Ip { ip, as_number } => {
                m.serialize_entry("peerIP", &ip.to_string())?;
                m.serialize_entry("asNumber", as_number)?;
            }
            PeerTarget::Selector(sel) => m.serialize_entry("peerSelector", sel)?,
        }
        if let Some(p) = &self.password {
            m.serialize_entry("password", p)?;
        }
        if let Some(t) = &self.max_restart_time {
            m.serialize_entry("maxRestartTime", t)?;
        }
        if self.reverse_peering == ReversePeering::Manual {
            m.serialize_entry("reversePeering", "Manual")?;
        }
        m.end()
    }
}

const BGPPEER_REFUSED: &[(&str, &str)] = &[
    ("localASNumber", "a node speaks with one AS number (its Node's spec.bgp.asNumber or the cluster's default)"),
    ("numAllowedLocalASNumbers", "vrouter's BIRD keeps BGP's AS path loop prevention (no `allow local as`)"),
    ("ttlSecurity", "vrouter's BIRD does not render TTL security (GTSM, RFC 5082)"),
    ("reachableBy", "vrouter adds no static route towards a peer: the underlay must reach it"),
    ("filters", "BGPFilter is not supported: the import filter accepts the IP pools' prefixes only"),
    ("localWorkloadSelector", NO_WORKLOAD_PEERING),
];

pub(super) fn parse_bgp_peer(v: Option<&Value>) -> FResult<BgpPeerSpec> {
    let Some(v) = v else {
        return err("spec", "is required (with spec.peerIP and spec.asNumber, or spec.peerSelector)");
    };
    let o = Obj::new(
        v,
        "spec",
        &[
            "node",
            "nodeSelector",
            "peerIP",
            "asNumber",
            "peerSelector",
            "password",
            "maxRestartTime",
            "reversePeering",
            "sourceAddress",
            "keepOriginalNextHop",
            "nextHopMode",
        ],
        BGPPEER_REFUSED,
    )?;
    let nodes = match (o.str("node")?, o.selector("nodeSelector")?) {
        (Some(_), Some(_)) => {
            return err(o.field("node"), "must be empty when spec.nodeSelector is given: give one or the other");
        }
        (Some(n), None) => {
            check_subdomain(n, &o.field("node"))?;
            PeerNodes::Node(n.to_string())
        }
        (None, Some(s)) => PeerNodes::Selector(s),
        (None, None) => PeerNodes::All,
    };
    let as_number = o.get("asNumber").map(|v| parse_asn(v, &o.field("asNumber"))).transpose()?;
    let peer = match (o.str("peerIP")?, o.selector("peerSelector")?) {
        (Some(_), Some(_)) => {
            return err(o.field("peerIP"), "must be empty when spec.peerSelector is given: give one or the other");
        }
        (None, None) => {
            return err(
                "spec",
                "needs a peer: spec.peerIP (with spec.asNumber), or spec.peerSelector (nodes of this cluster)",
            );
        }
        (None, Some(sel)) => {
            if as_number.is_some() {
                return err(
                    o.field("asNumber"),
                    "must be empty when spec.peerSelector is given: each selected node peers with its own AS number",
                );
            }
            PeerTarget::Selector(sel)
        }
        (Some(text), None) => {
            let path = o.field("peerIP");
            if text.contains('[') || text.matches(':').count() == 1 {
                return err(
                    path,
                    format!(
                        "'{text}': a port is not supported: vrouter's BIRD peers on the BGP port, 179; give the address \
                         alone"
                    ),
                );
            }
            let ip = parse_ip(text, &path)?;
            let Some(as_number) = as_number else {
                return err(o.field("asNumber"), "is required with spec.peerIP: the peer's AS number");
            };
            PeerTarget::Ip { ip, as_number }
        }
    };
    if let Some(s) = o.str("sourceAddress")? {
        if one_of(s, &["UseNodeIP", "None"], &o.field("sourceAddress"))? != "UseNodeIP" {
            return err(
                o.field("sourceAddress"),
                "None is not supported: vrouter's sessions always use the node's address as their source; use \
                 sourceAddress: UseNodeIP",
            );
        }
    }
    if o.bool("keepOriginalNextHop")? == Some(true) {
        return err(
            o.field("keepOriginalNextHop"),
            "true is not supported: next hops are BIRD's default (nextHopMode: Auto); use keepOriginalNextHop: false",
        );
    }
    if let Some(m) = o.str("nextHopMode")? {
        if one_of(m, &["Auto", "Self", "Keep"], &o.field("nextHopMode"))? != "Auto" {
            return err(
                o.field("nextHopMode"),
                format!(
                    "{m} is not supported: next hops are BIRD's default (over iBGP the announcing node's address, over \
                     eBGP this node's); use nextHopMode: Auto"
                ),
            );
        }
    }
    let reverse_peering = match o.str("reversePeering")? {
        None => ReversePeering::Auto,
        Some(s) => match one_of(s, &["Auto", "Manual"], &o.field("reversePeering"))? {
            "Manual" => ReversePeering::Manual,
            _ => ReversePeering::Auto,
        },
    };
    Ok(BgpPeerSpec {
        nodes,
        peer,
        password: parse_password(&o, "password")?,
        max_restart_time: parse_restart_time(&o, "maxRestartTime")?,
        reverse_peering,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<Duration, String> {
        parse_go_duration(s)
    }

    #[test]
    fn go_durations_parse_as_go_does() {
        assert_eq!(d("120s"), Ok(Duration::from_secs(120)));
        assert_eq!(d("2m0s"), Ok(Duration::from_secs(120)));
        assert_eq!(d("1h2m3s"), Ok(Duration::from_secs(3723)));
        assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(d("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(d("10us"), Ok(Duration::from_micros(10)));
        assert_eq!(d("10\u{b5}s"), Ok(Duration::from_micros(10)));
        assert_eq!(d("7ns"), Ok(Duration::from_nanos(7)));
        assert_eq!(d("0"), Ok(Duration::ZERO));
        assert_eq!(d("+5s"), Ok(Duration::from_secs(5)));
        for bad in ["", "5", "s", "5x", "1.s.", ".s", "5 s", "1e3s", "99999999999999999999999h"] {
            assert!(d(bad).is_err(), "{bad} accepted");
        }
        assert!(d("-5s").unwrap_err().contains("negative"));
    }

    #[test]
    fn go_durations_print_as_go_does_and_parse_back() {
        for (ns, text) in [
            (0u64, "0s"),
            (7, "7ns"),
            (1_500, "1.5\u{b5}s"),
            (300_000_000, "300ms"),
            (1_500_000_000, "1.5s"),
            (120_000_000_000, "2m0s"),
            (3_723_000_000_000, "1h2m3s"),
            (3_600_000_000_000, "1h0m0s"),
        ] {
            let g = GoDuration(Duration::from_nanos(ns));
            assert_eq!(g.to_string(), text);
            assert_eq!(d(text), Ok(g.0));
        }
        assert_eq!(GoDuration(Duration::from_millis(1499)).rounded_secs(), 1);
        assert_eq!(GoDuration(Duration::from_millis(1500)).rounded_secs(), 2);
    }
}
