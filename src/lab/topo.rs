//! The lab's fixed addressing plan and the node configurations generated from it.
//!
//! ```text
//!   p1a p1b         p2a p2b                    p3a p3b(guarded)
//!     \ /             \ /                        \ /
//!   node1 .10       node2 .11                  node3 .20
//!      \ up0          / up0                       | up0
//!       \            /                            |
//!   [ br0 192.168.1.1/24 ]--<p>-rt--[ n3 192.168.2.1/24 ]
//!        subnet A: BGP mode            subnet B: IPIP (CrossSubnet)
//! ```

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use vrouter_core::acl::{Action, PortRange, Rule, PROTO_TCP};
use vrouter_core::dataplane::state::IpipMode;
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::wire::MacAddr;

use crate::control::config::{
    Config, ControlConfig, EndpointConfig, HostConfig, KernelRoutesConfig, MetricsConfig, NodeConfig, PeerConfig,
    RouteConfig, RpfMode, UplinkConfig, WorkersConfig,
};

/// Interface names inside the namespaces (namespaces keep them apart, so they need no prefix).
pub const UPLINK_DEV: &str = "up0";
pub const HOST_TAP: &str = "vrhost";
pub const BRIDGE: &str = "br0";
pub const POD_IF: &str = "eth0";
/// The underlay's MTU unless told otherwise (`vrouter lab up --mtu`).
pub const DEFAULT_MTU: u16 = 1500;
/// The most a single-buffer underlay takes: veth runs libxdp's (not frags-aware) program
/// natively on a frame in one 4 KiB page (4096 - 256 headroom - 320 of `skb_shared_info` - 14
/// of Ethernet), and the lab compares vrouter on native XDP. Above [`MAX_CHUNK_MTU`] vrouter
/// runs multi-buffer behind its own frags-aware program, which veth takes up to [`MAX_MTU`];
/// in between, neither works natively.
pub const MAX_SINGLE_BUFFER_MTU: u16 = 3506;
pub use crate::port::afxdp::MAX_CHUNK_MTU;
pub use vrouter_api::config::MAX_MTU;
/// Whether the lab can build an underlay of `mtu` (see [`MAX_SINGLE_BUFFER_MTU`]).
pub fn mtu_ok(mtu: u16) -> bool {
    (vrouter_api::config::MIN_MTU + IPIP_OVERHEAD..=MAX_SINGLE_BUFFER_MTU).contains(&mtu)
        || (MAX_CHUNK_MTU + 1..=MAX_MTU).contains(&mtu)
}
/// What IPIP adds to a packet: the outer IPv4 header.
pub const IPIP_OVERHEAD: u16 = vrouter_core::wire::ipv4::MIN_HEADER_LEN as u16;
/// A pod's MTU on an underlay of `mtu`: room for IPIP (as Calico sets it).
pub fn pod_mtu(mtu: u16) -> u16 {
    mtu - IPIP_OVERHEAD
}
pub const POD_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The policy name on pod `3b`, and the TCP port it denies.
pub const GUARDED_POLICY: &str = "guarded";
pub const DENIED_PORT: u16 = 5202;
/// Where a BGP cluster lab's daemons serve metrics, each in its node's namespace.
pub const METRICS_LISTEN: &str = "127.0.0.1:9420";

/// One node of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNode {
    /// 1, 2 or 3.
    pub index: u8,
    /// `node1` ...: the name in configs and stats.
    pub name: String,
    /// Its network namespace, `<prefix>-n1` ...
    pub ns: String,
    pub ip: Ipv4Addr,
    /// `192.168.1.0/24` or `192.168.2.0/24`.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    /// `10.244.N.0/26`.
    pub pod_block: String,
    /// The router's interface that reaches this node: a bridge port (`n1`, `n2`) or the routed
    /// link (`n3`), in `<prefix>-rt`.
    pub router_dev: String,
}

/// One pod of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabPod {
    /// `1a`, `1b`, `2a` ...
    pub name: String,
    /// Its network namespace, `<prefix>-p1a` ...
    pub ns: String,
    /// Index of its node (1..=3).
    pub node: u8,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Ingress policies (only `3b` has one: [`GUARDED_POLICY`]).
    pub ingress: Vec<String>,
}

/// How two pods reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMode {
    /// Same node.
    Local,
    /// Different nodes on one subnet: routed directly, not encapsulated.
    Bgp,
    /// Nodes on different subnets: IPIP between the node IPs.
    Ipip,
}

impl std::fmt::Display for PathMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathMode::Local => "local",
            PathMode::Bgp => "BGP",
            PathMode::Ipip => "IPIP",
        })
    }
}

/// The lab's default size: the three nodes the demo and most tests use.
pub const DEFAULT_NODES: usize = 3;
/// The most nodes a lab can have (node IPs are `192.168.S.(20 + N)`).
pub const MAX_NODES: usize = 200;

/// The underlay subnet (third octet) node `n` sits on: nodes 1 and 2 share subnet 1 (BGP
/// mode between them), node 3 is alone on subnet 2 (IPIP to it); nodes 4 and up go round
/// subnets 1 to 4, so a bigger lab has direct and IPIP paths everywhere.
pub fn subnet_of(n: u8) -> u8 {
    match n {
        1 | 2 => 1,
        3 => 2,
        _ => (n - 4) % 4 + 1,
    }
}

/// The router's bridge for underlay subnet `s` (in `<prefix>-rt`, holding `192.168.S.1/24`).
pub fn bridge(s: u8) -> String {
    match s {
        1 => BRIDGE.to_string(),
        _ => format!("br{s}"),
    }
}

/// Nodes and pods for a prefix: `nodes_wanted` nodes (at most [`MAX_NODES`]), two pods on each
/// of the first three, one on each further node.
pub fn plan(prefix: &str, nodes_wanted: usize) -> (Vec<LabNode>, Vec<LabPod>) {
    let mut nodes = vec![];
    let mut pods = vec![];
    for n in 1..=nodes_wanted.min(MAX_NODES) as u8 {
        let s = subnet_of(n);
        let host = match n {
            1 | 2 => 9 + n,
            3 => 20,
            _ => 20 + n,
        };
        nodes.push(LabNode {
            index: n,
            name: format!("node{n}"),
            ns: format!("{prefix}-n{n}"),
            ip: Ipv4Addr::new(192, 168, s, host),
            subnet: format!("192.168.{s}.0/24"),
            gateway: Ipv4Addr::new(192, 168, s, 1),
            pod_block: format!("10.244.{n}.0/26"),
            router_dev: format!("n{n}"),
        });
        let letters: &[&str] = if n <= 3 { &["a", "b"] } else { &["a"] };
        for (k, letter) in letters.iter().enumerate() {
            let host = 2 + k as u8;
            let name = format!("{n}{letter}");
            let guarded = n == 3 && *letter == "b";
            pods.push(LabPod {
                ns: format!("{prefix}-p{name}"),
                name,
                node: n,
                ip: Ipv4Addr::new(10, 244, n, host),
                mac: format!("0a:58:0a:f4:{n:02x}:{host:02x}"),
                ingress: if guarded { vec![GUARDED_POLICY.to_string()] } else { vec![] },
            });
        }
    }
    (nodes, pods)
}

/// How pods on nodes `a` and `b` reach each other (CrossSubnet: IPIP between subnets).
pub fn path_mode(a: u8, b: u8) -> PathMode {
    if a == b {
        PathMode::Local
    } else if subnet_of(a) != subnet_of(b) {
        PathMode::Ipip
    } else {
        PathMode::Bgp
    }
}

/// A config enum (`IdleMode`, `XdpMode` ...) from its name in the file (`"adaptive"`), by
/// the same serde rules the config file is read with.
pub(crate) fn config_enum<T: serde::de::DeserializeOwned>(name: &str) -> Result<T, String> {
    use serde::de::IntoDeserializer;
    T::deserialize(name.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
}

fn prefix(s: &str) -> Result<Ipv4Prefix, String> {
    s.parse().map_err(|e| format!("{s}: {e}"))
}

/// The vrouter configuration of `node` (TOML, `control::config::Config` serialized).
/// `idle` is the workers' idle mode (`poll`, `adaptive`, `interrupt`).
/// `mtu` is the underlay's ([`pod_mtu`] for the pods).
pub fn node_config(node: &LabNode, nodes: &[LabNode], pods: &[LabPod], idle: &str, mtu: u16) -> Result<String, String> {
    let mac = |s: &str| s.parse::<MacAddr>().map_err(|e| format!("{s}: {e}"));
    let mut endpoints = vec![];
    for pod in pods.iter().filter(|p| p.node == node.index) {
        endpoints.push(EndpointConfig {
            name: format!("pod-{}", pod.name),
            tap: format!("tap{}", pod.name),
            netns: Some(pod.ns.clone()),
            ifname: POD_IF.into(),
            mac: mac(&pod.mac)?,
            addrs: vec![pod.ip],
            mtu: pod_mtu(mtu),
            ingress: pod.ingress.clone(),
            egress: vec![],
        });
    }
    let mut policies = BTreeMap::new();
    if pods.iter().any(|p| p.node == node.index && p.ingress.iter().any(|i| i == GUARDED_POLICY)) {
        let mut deny = Rule::any(Action::Deny);
        deny.protocol = Some(PROTO_TCP);
        deny.dst_ports = vec![PortRange::single(DENIED_PORT)];
        policies.insert(GUARDED_POLICY.to_string(), vec![deny, Rule::any(Action::Allow)]);
    }
    let peers = nodes
        .iter()
        .filter(|p| p.index != node.index)
        .map(|p| {
            Ok(PeerConfig { name: p.name.clone(), ip: p.ip, pod_blocks: vec![prefix(&p.pod_block)?], ipip_mode: None })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let config = Config {
        node: NodeConfig {
            name: node.name.clone(),
            ip: node.ip,
            subnet: prefix(&node.subnet)?,
            pod_block: Some(prefix(&node.pod_block)?),
            pod_gateway: POD_GATEWAY,
            ipip_mode: IpipMode::CrossSubnet,
            gateway: Some(node.gateway),
            ipip_rpf: RpfMode::default(),
        },
        uplink: Some(UplinkConfig {
            device: UPLINK_DEV.into(),
            queues: 1,
            xdp_mode: Default::default(), // auto
            bind: Default::default(),     // auto: zero-copy where the driver can
            mtu,
            tx_queue: crate::port::afxdp::DEFAULT_TX_QUEUE,
        }),
        host: Some(HostConfig { tap: HOST_TAP.into() }),
        // Three daemons share the machine's cores with the traffic: never busy-poll for long.
        workers: WorkersConfig { idle: config_enum(idle)?, spin_us: 50, ..Default::default() },
        pod_blocks: vec![],
        peers,
        endpoints,
        // The underlay beyond the subnet (other nodes' IPs, for pods and the node's kernel alike).
        routes: vec![RouteConfig {
            prefix: Ipv4Prefix::new_masked(0, 0),
            via: Some(node.gateway),
            blackhole: false,
            unreachable: false,
            prohibit: false,
            host: false,
        }],
        neighbours: vec![],
        global_rules: vec![],
        policies,
        // One control socket per node (`vrouterctl -s /run/vrouter/<namespace>.sock ...`).
        control: ControlConfig { socket: socket_path(node), group: None },
        metrics: None,
        kernel_routes: None,
        conntrack: Default::default(),
        neigh: Default::default(),
    };
    let text = toml::to_string(&config).map_err(|e| e.to_string())?;
    Ok(format!("# Generated by `vrouter lab` for {} (namespace {}).\n\n{text}", node.name, node.ns))
}

/// A node's control socket (`vrouterctl -s /run/vrouter/<namespace>.sock ...`).
pub fn socket_path(node: &LabNode) -> String {
    format!("/run/vrouter/{}.sock", node.ns)
}

/// The vrouter configuration of `node` in a cluster lab: only what is the node's own (its
/// address, uplink, host port, the route to the underlay); its pod blocks, peers, pods and
/// policies come from the cluster through its agent.
/// With `bird_socket` (BGP), routes to the other nodes' blocks are imported from the kernel
/// table BIRD writes ([`super::bgp::KERNEL_TABLE`]), and the metrics endpoint
/// ([`METRICS_LISTEN`] in the node's namespace) carries BIRD's sessions.
pub fn cluster_node_config(node: &LabNode, idle: &str, mtu: u16, bird_socket: Option<&Path>) -> Result<String, String> {
    let text = node_config(node, &[], &[], idle, mtu)?;
    let mut c: Config = toml::from_str(&text).map_err(|e| e.to_string())?;
    c.node.pod_block = None;
    if let Some(sock) = bird_socket {
        c.kernel_routes = Some(KernelRoutesConfig {
            table: super::bgp::KERNEL_TABLE,
            tunnel_device: "tunl0".into(),
            uplink_aliases: vec![],
        });
        c.metrics = Some(MetricsConfig {
            listen: METRICS_LISTEN.parse().expect("a socket address"),
            bird_socket: Some(sock.to_path_buf()),
        });
    }
    c.peers.clear();
    c.endpoints.clear();
    c.policies.clear();
    let text = toml::to_string(&c).map_err(|e| e.to_string())?;
    Ok(format!("# Generated by `vrouter lab --cluster` for {} (namespace {}); the agent adds pod blocks, peers, pods and policies.\n\n{text}", node.name, node.ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn generated_configs_pass_validation() {
        let (nodes, pods) = plan("vrl0000", DEFAULT_NODES);
        for n in &nodes {
            let text = node_config(n, &nodes, &pods, "adaptive", DEFAULT_MTU).unwrap();
            let cfg = Config::parse(&text, Path::new("gen.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(cfg.peers.len(), 2);
            assert_eq!(cfg.endpoints.len(), 2);
            assert_eq!(cfg.policies.len(), usize::from(n.index == 3));
        }
    }

    #[test]
    fn cluster_configs_pass_validation_and_hold_only_the_nodes_own_parts() {
        let (nodes, _) = plan("vrl0000", DEFAULT_NODES);
        for n in &nodes {
            let sock = Path::new("/tmp/b.ctl");
            let text = cluster_node_config(n, "adaptive", DEFAULT_MTU, (n.index == 2).then_some(sock)).unwrap();
            let cfg = Config::parse(&text, Path::new("gen.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(cfg.node.pod_block.is_none() && cfg.peers.is_empty() && cfg.endpoints.is_empty());
            assert_eq!(cfg.control.socket, socket_path(n));
            assert!(cfg.uplink.is_some() && cfg.host.is_some());
            assert_eq!(cfg.kernel_routes.map(|k| k.table), (n.index == 2).then_some(super::super::bgp::KERNEL_TABLE));
            assert_eq!(cfg.metrics.and_then(|m| m.bird_socket).as_deref(), (n.index == 2).then_some(sock));
        }
    }

    #[test]
    fn names_fit_linux_limits() {
        let (nodes, pods) = plan("vrlffff", DEFAULT_NODES);
        assert_eq!(pods.len(), 6);
        assert!(pods.iter().all(|p| format!("tap{}", p.name).len() <= 15));
        assert_eq!(pods[5].mac, "0a:58:0a:f4:03:03");
        assert_eq!(nodes[2].ns, "vrlffff-n3");
        assert_eq!(path_mode(1, 2), PathMode::Bgp);
        assert_eq!(path_mode(3, 1), PathMode::Ipip);
        assert_eq!(path_mode(2, 2), PathMode::Local);
    }
}
