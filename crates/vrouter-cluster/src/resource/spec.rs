//! Node, IPPool, WorkloadEndpoint and Profile: types (serialised with Calico's field names)
//! and their readers.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::Value;
use vrouter_types::{IpipMode, Ipv4Prefix, MacAddr};

use super::fields::{check_labels, check_subdomain, err, one_of, parse_cidr, parse_ip, FResult, Obj};
use super::policy::{parse_rules, Protocol, Rule, RuleAction};
use super::Metadata;
use crate::selector::Selector;

const NO_VXLAN: &str = "vrouter encapsulates with IPIP only";
const IPV4_ONLY: &str = "vrouter is IPv4 only";

fn spec_obj<'a>(v: Option<&'a Value>, allowed: &[&str], refused: &[(&str, &str)]) -> FResult<Option<Obj<'a>>> {
    v.map(|v| Obj::new(v, "spec", allowed, refused)).transpose()
}

// ---------------------------------------------------------------------------------------------
// Node

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub metadata: Metadata,
    pub spec: NodeSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bgp: Option<NodeBgp>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeBgp {
    /// The node's IP and its subnet (`10.0.0.1/24`): the IPIP underlay address peers
    /// encapsulate to, and the subnet CrossSubnet compares against.
    #[serde(rename = "ipv4Address", skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<NodeAddress>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    #[serde(rename = "routeReflectorClusterID", skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
}

/// A host address with the length of its subnet, `a.b.c.d/len` (host bits are the point).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct NodeAddress {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
}

impl NodeAddress {
    pub fn subnet(&self) -> Ipv4Prefix {
        Ipv4Prefix::new_masked(u32::from(self.ip), self.prefix_len)
    }
}

impl fmt::Display for NodeAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

impl Serialize for NodeAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn parse_node_address(s: &str, path: &str) -> FResult<NodeAddress> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip = parse_ip(ip, path)?;
    match len.trim().parse::<u8>() {
        Ok(prefix_len) if prefix_len <= 32 => Ok(NodeAddress { ip, prefix_len }),
        _ => err(path, format!("'{s}': expected the node address and subnet length, a.b.c.d/len (len 0..=32)")),
    }
}

/// A 4-byte AS number, as a number or in asplain/asdot text (`64512`, `"1.10"`).
pub(super) fn parse_asn(v: &Value, path: &str) -> FResult<u32> {
    let bad = || err(path, "expected an AS number 1..=4294967295, plain (64512) or asdot (\"1.10\")");
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(n @ 1..=0xffff_ffff) => Ok(n as u32),
            _ => bad(),
        },
        Value::String(s) => {
            let n = match s.split_once('.') {
                Some((hi, lo)) => match (hi.parse::<u16>(), lo.parse::<u16>()) {
                    (Ok(hi), Ok(lo)) => (u32::from(hi) << 16) | u32::from(lo),
                    _ => return bad(),
                },
                None => match s.parse::<u32>() {
                    Ok(n) => n,
                    Err(_) => return bad(),
                },
            };
            if n == 0 {
                return bad();
            }
            Ok(n)
        }
        _ => bad(),
    }
}

pub(super) fn parse_node(v: Option<&Value>) -> FResult<NodeSpec> {
    let Some(o) = spec_obj(
        v,
        &["bgp"],
        &[
            ("ipv4VXLANTunnelAddr", NO_VXLAN),
            ("vxlanTunnelMACAddr", NO_VXLAN),
            ("ipv6VXLANTunnelAddr", NO_VXLAN),
            ("vxlanTunnelMACAddrV6", NO_VXLAN),
            ("orchRefs", "vrouter identifies nodes by metadata.name only"),
            ("wireguard", "vrouter encapsulates with IPIP only (no WireGuard)"),
            ("addresses", "vrouter takes the node address from spec.bgp.ipv4Address"),
        ],
    )?
    else {
        return Ok(NodeSpec::default());
    };
    let Some(b) = o.obj(
        "bgp",
        &["ipv4Address", "asNumber", "routeReflectorClusterID"],
        &[
            ("ipv6Address", IPV4_ONLY),
            ("ipv4IPIPTunnelAddr", "vrouter's IPIP tunnel needs no tunnel address (the node address is used)"),
        ],
    )?
    else {
        return Ok(NodeSpec::default());
    };
    let ipv4_address = b.str("ipv4Address")?.map(|s| parse_node_address(s, &b.field("ipv4Address"))).transpose()?;
    let as_number = b.get("asNumber").map(|v| parse_asn(v, &b.field("asNumber"))).transpose()?;
    let route_reflector_cluster_id =
        b.str("routeReflectorClusterID")?.map(|s| parse_ip(s, &b.field("routeReflectorClusterID"))).transpose()?;
    Ok(NodeSpec { bgp: Some(NodeBgp { ipv4_address, as_number, route_reflector_cluster_id }) })
}

// ---------------------------------------------------------------------------------------------
// IPPool

#[derive(Clone, Debug, PartialEq)]
pub struct IpPool {
    pub metadata: Metadata,
    pub spec: IpPoolSpec,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpPoolSpec {
    pub cidr: Ipv4Prefix,
    pub block_size: u8,
    pub ipip_mode: IpipMode,
    pub nat_outgoing: bool,
    pub disabled: bool,
    pub node_selector: Selector,
}

/// Calico's default block size for IPv4 pools.
pub const DEFAULT_BLOCK_SIZE: u8 = 26;

impl IpPoolSpec {
    /// Whether the pool hands blocks to a node with these labels: enabled, and its
    /// `nodeSelector` matches.
    pub fn allocates_for(&self, node_labels: &BTreeMap<String, String>) -> bool {
        !self.disabled && self.node_selector.matches(node_labels)
    }

    /// A pool with Calico's defaults (block size 26, no IPIP, no NAT, enabled, all nodes).
    pub fn new(cidr: Ipv4Prefix) -> IpPoolSpec {
        IpPoolSpec {
            cidr,
            block_size: DEFAULT_BLOCK_SIZE,
            ipip_mode: IpipMode::Never,
            nat_outgoing: false,
            disabled: false,
            node_selector: Selector::All,
        }
    }
}

pub(super) fn parse_ippool(v: Option<&Value>) -> FResult<IpPoolSpec> {
    let Some(o) = spec_obj(
        v,
        &["cidr", "blockSize", "ipipMode", "vxlanMode", "natOutgoing", "disabled", "nodeSelector", "allowedUses"],
        &[
            ("ipip", "the v1 form is not supported: use spec.ipipMode (Always, CrossSubnet or Never)"),
            ("nat-outgoing", "the v1 form is not supported: use spec.natOutgoing"),
            ("disableBGPExport", "vrouter announces the blocks of every pool over BGP (no per-pool export control)"),
            ("assignmentMode", "vrouter assigns from every enabled pool automatically"),
            ("namespaceSelector", "vrouter selects pools per node only (spec.nodeSelector)"),
        ],
    )?
    else {
        return err("spec", "is required (with at least spec.cidr)");
    };
    let cidr = parse_cidr(o.req_str("cidr")?, &o.field("cidr"))?;
    let block_size = match o.int("blockSize", 20, 32)? {
        Some(b) => b as u8,
        None => DEFAULT_BLOCK_SIZE,
    };
    if block_size < cidr.len() {
        return err(
            o.field("blockSize"),
            format!(
                "{block_size} is shorter than the pool's prefix /{}: blocks are carved from the pool, so blockSize \
                 must be {}..=32",
                cidr.len(),
                cidr.len().max(20)
            ),
        );
    }
    let ipip_mode = match o.str("ipipMode")? {
        None => IpipMode::Never,
        Some(s) => match one_of(s, &["Always", "CrossSubnet", "Never"], &o.field("ipipMode"))? {
            "Always" => IpipMode::Always,
            "CrossSubnet" => IpipMode::CrossSubnet,
            _ => IpipMode::Never,
        },
    };
    if let Some(m) = o.str("vxlanMode")? {
        if m != "Never" {
            let valid = ["Always", "CrossSubnet", "Never"];
            one_of(m, &valid, &o.field("vxlanMode"))?;
            return err(o.field("vxlanMode"), format!("{m} is not supported: {NO_VXLAN}; use vxlanMode: Never"));
        }
    }
    // Calico prints `allowedUses: [Workload, Tunnel]` (its default). Tunnel permission is moot
    // (vrouter's IPIP needs no tunnel address), so it is accepted; a pool must allow Workload.
    let uses = o.str_list("allowedUses")?;
    for (p, u) in &uses {
        if one_of(u, &["Workload", "Tunnel", "LoadBalancer"], p)? == "LoadBalancer" {
            return err(p.clone(), "LoadBalancer is not supported: vrouter allocates pod addresses only");
        }
    }
    if !uses.is_empty() && !uses.iter().any(|(_, u)| *u == "Workload") {
        return err(
            o.field("allowedUses"),
            "must include Workload: vrouter allocates only pod addresses, so a pool without it would never be used",
        );
    }
    let node_selector = o.selector("nodeSelector")?.unwrap_or(Selector::All);
    let nat_outgoing = o.bool("natOutgoing")?.unwrap_or(false);
    if nat_outgoing {
        // Accepting it would be ignoring it: pods' traffic would leave unmasqueraded.
        return err(
            o.field("natOutgoing"),
            "true is not supported: vrouter's data plane has no source NAT yet, so pods' traffic to outside the pools would leave with pod addresses; use natOutgoing: false (and routable pod addresses, or NAT on the underlay router)",
        );
    }
    Ok(IpPoolSpec {
        cidr,
        block_size,
        ipip_mode,
        nat_outgoing,
        disabled: o.bool("disabled")?.unwrap_or(false),
        node_selector,
    })
}

// ---------------------------------------------------------------------------------------------
// WorkloadEndpoint

#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadEndpoint {
    pub metadata: Metadata,
    pub spec: WorkloadEndpointSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEndpointSpec {
    pub node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub orchestrator: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(rename = "containerID", skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The endpoint's addresses, each a /32.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_networks: Vec<Ipv4Prefix>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<EndpointPort>,
}

/// A named port of an endpoint (what a rule's named port resolves to).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

fn check_ifname(s: &str, path: &str) -> FResult<()> {
    if s.is_empty() || s.len() > 15 || s.contains(['/', ':']) || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return err(path, format!("'{s}' is not a Linux interface name: 1-15 characters, no '/', ':' or blanks"));
    }
    Ok(())
}

pub(super) fn parse_wep(v: Option<&Value>) -> FResult<WorkloadEndpointSpec> {
    let Some(o) = spec_obj(
        v,
        &[
            "node",
            "orchestrator",
            "workload",
            "pod",
            "endpoint",
            "containerID",
            "interfaceName",
            "mac",
            "ipNetworks",
            "profiles",
            "ports",
        ],
        &[
            ("ipNATs", "vrouter does no 1:1 NAT for endpoints"),
            ("ipv4Gateway", "vrouter's pods always route via 169.254.1.1"),
            ("ipv6Gateway", IPV4_ONLY),
            ("serviceAccountName", "vrouter's policy has no service account selectors"),
            ("allowSpoofedSourcePrefixes", "vrouter always drops pod traffic from addresses not its own"),
            ("qosControls", "vrouter has no per-endpoint QoS"),
            ("awsElasticIPs", "vrouter has no AWS integration"),
            ("applicationProtocol", "vrouter does not look at application protocols"),
        ],
    )?
    else {
        return err("spec", "is required (with at least spec.node)");
    };
    let node = o.req_str("node")?.to_string();
    check_subdomain(&node, &o.field("node"))?;
    let s = |k: &str| -> FResult<Option<String>> { Ok(o.str(k)?.map(str::to_string)) };
    let interface_name = s("interfaceName")?;
    if let Some(i) = &interface_name {
        check_ifname(i, &o.field("interfaceName"))?;
    }
    let mac = match o.str("mac")? {
        None => None,
        Some(m) => Some(
            m.parse::<MacAddr>()
                .map_err(|e| super::FieldError { path: o.field("mac"), message: format!("'{m}': {e}") })?,
        ),
    };
    let mut ip_networks = Vec::new();
    for (p, s) in o.str_list("ipNetworks")? {
        let n = parse_cidr(s, &p)?;
        if n.len() != 32 {
            return err(p, format!("'{s}': an endpoint address is a single address, a.b.c.d/32"));
        }
        ip_networks.push(n);
    }
    let mut profiles = Vec::new();
    for (p, s) in o.str_list("profiles")? {
        check_subdomain(s, &p)?;
        profiles.push(s.to_string());
    }
    let mut ports: Vec<EndpointPort> = Vec::new();
    for (p, v) in o.list("ports")? {
        let po = Obj::new(
            v,
            &p,
            &["name", "protocol", "port"],
            &[("hostPort", "vrouter does no host port forwarding"), ("hostIP", "vrouter does no host port forwarding")],
        )?;
        let name = po.req_str("name")?.to_string();
        super::policy::check_port_name(&name, &po.field("name"))?;
        let protocol = match po.get("protocol") {
            Some(v) => super::policy::parse_protocol(v, &po.field("protocol"))?,
            None => return err(po.field("protocol"), "is required: TCP, UDP or SCTP"),
        };
        if !protocol.has_ports() {
            return err(po.field("protocol"), format!("{protocol} has no ports; valid values: TCP, UDP, SCTP"));
        }
        let port = match po.int("port", 1, 65535)? {
            Some(n) => n as u16,
            None => return err(po.field("port"), "is required: 1..=65535"),
        };
        if ports.iter().any(|q| q.name == name && q.protocol == protocol) {
            return err(po.field("name"), format!("port name '{name}' ({protocol}) is given twice"));
        }
        ports.push(EndpointPort { name, protocol, port });
    }
    Ok(WorkloadEndpointSpec {
        node,
        orchestrator: s("orchestrator")?,
        workload: s("workload")?,
        pod: s("pod")?,
        endpoint: s("endpoint")?,
        container_id: s("containerID")?,
        interface_name,
        mac,
        ip_networks,
        profiles,
        ports,
    })
}

// ---------------------------------------------------------------------------------------------
// Profile

#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    pub metadata: Metadata,
    pub spec: ProfileSpec,
}

/// A profile contributes labels to the endpoints that list it (and, as `kns.<namespace>`, its
/// namespace's labels for namespaceSelector). Its rules may only be a single unconditional
/// Allow (what Kubernetes namespace profiles have) or absent: vrouter's end of policy is allow.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSpec {
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels_to_apply: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

pub(super) fn parse_profile(v: Option<&Value>) -> FResult<ProfileSpec> {
    let Some(o) = spec_obj(v, &["labelsToApply", "ingress", "egress"], &[])? else {
        return Ok(ProfileSpec::default());
    };
    let labels_to_apply = o.str_map("labelsToApply")?;
    check_labels(&labels_to_apply, &o.field("labelsToApply"))?;
    let mut dirs = Vec::new();
    for dir in ["ingress", "egress"] {
        let rules = parse_rules(&o, dir, false)?;
        let only_allow = rules.len() == 1 && rules[0].action == RuleAction::Allow && rules[0].is_unconditional();
        if !rules.is_empty() && !only_allow {
            return err(
                o.field(dir),
                "profile rules are not supported beyond a single `- action: Allow` (what Kubernetes namespace \
                 profiles have): use a NetworkPolicy or GlobalNetworkPolicy for anything else",
            );
        }
        dirs.push(rules);
    }
    let egress = dirs.pop().unwrap_or_default();
    let ingress = dirs.pop().unwrap_or_default();
    Ok(ProfileSpec { labels_to_apply, ingress, egress })
}
