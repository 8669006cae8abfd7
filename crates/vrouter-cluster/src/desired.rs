//! What one node's data plane should hold, computed from the cluster's intent: its pod blocks,
//! its peer nodes (each with the blocks and borrowed addresses behind it, and the IPIP mode of
//! the pool they come from), its pods, and their compiled policy. Pure: the agent gathers the
//! inputs from etcd and sends the result to the daemon; tests call it directly.
//!
//! Peers are every other node with an address, blocks or not: the peer set is also the set
//! of node addresses whose IPIP packets this node decapsulates, so it follows the `Node`
//! resources, never what happens to be routed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::resource::{BgpConfiguration, BgpPeer};
use vrouter_api::{EndpointConfig, PeerConfig};
use vrouter_types::acl::{EndpointPolicy, Rule};
use vrouter_types::{IpipMode, Ipv4Prefix, MacAddr};

/// The policy every new pod starts with (installed by the agent, named by the CNI plugin): no
/// rules, so the pod's traffic is denied until the agent has compiled its real policy.
pub use vrouter_api::PENDING_POLICY;

/// Default MTU of a pod's interface (20 bytes under a 1,500-byte underlay, for IPIP).
pub use vrouter_api::config::DEFAULT_POD_MTU;
use vrouter_api::config::{MAX_MTU, MIN_MTU};

/// A node as the computation needs it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    /// From `spec.bgp.ipv4Address`; a node without one is not a peer yet.
    pub ip: Option<Ipv4Addr>,
    /// `metadata.labels` (what BGPPeer node and peer selectors match).
    pub labels: BTreeMap<String, String>,
    /// `spec.bgp.asNumber`; absent: the cluster's default (BGPConfiguration `default`).
    pub asn: Option<u32>,
    /// `spec.bgp.routeReflectorClusterID`: set on a route reflector.
    pub rr_cluster_id: Option<Ipv4Addr>,
    /// The node is about to restart BIRD gracefully (annotation
    /// [`crate::bgp::GRACEFUL_RESTART_ANNOTATION`]): BFD is off on every session with it.
    pub bgp_restart: bool,
}

impl NodeInfo {
    /// What the computations need of a `Node` resource.
    pub fn of(n: &crate::resource::Node) -> NodeInfo {
        let bgp = n.spec.bgp.as_ref();
        NodeInfo {
            name: n.metadata.name.clone(),
            ip: bgp.and_then(|b| b.ipv4_address.as_ref()).map(|a| a.ip),
            labels: n.metadata.labels.clone(),
            asn: bgp.and_then(|b| b.as_number),
            rr_cluster_id: bgp.and_then(|b| b.route_reflector_cluster_id),
            bgp_restart: n.metadata.annotations.contains_key(crate::bgp::GRACEFUL_RESTART_ANNOTATION),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PoolInfo {
    pub cidr: Ipv4Prefix,
    pub ipip: IpipMode,
}

/// An IPAM block and the node it is affine to.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockInfo {
    pub cidr: Ipv4Prefix,
    pub node: Option<String>,
}

/// A pod (workload endpoint) as the computation needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointInfo {
    /// `<namespace>/<name>`: the daemon's endpoint name.
    pub key: String,
    pub node: String,
    pub addrs: Vec<Ipv4Addr>,
    pub mac: Option<MacAddr>,
    /// Host-side TAP name (`spec.interfaceName`).
    pub tap: String,
    /// Interface name inside the pod (`spec.endpoint`).
    pub ifname: String,
    /// The pod's network namespace (a name under /run/netns or a path).
    pub netns: Option<String>,
    /// The pod interface's MTU, if the endpoint says ([`DEFAULT_POD_MTU`] otherwise).
    pub mtu: Option<u16>,
}

#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub nodes: Vec<NodeInfo>,
    /// Every pool, disabled ones too.
    pub pools: Vec<PoolInfo>,
    pub blocks: Vec<BlockInfo>,
    pub endpoints: Vec<EndpointInfo>,
    /// Every BGPConfiguration (`default` and `node.<name>` ones); read by [`crate::bgp`].
    pub bgp_configs: Vec<BgpConfiguration>,
    /// Every BGPPeer; read by [`crate::bgp`].
    pub bgp_peers: Vec<BgpPeer>,
}

/// The parts of a node's config the agent owns; the rest (uplink, workers, ...) stays the
/// operator's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeState {
    pub pod_blocks: Vec<Ipv4Prefix>,
    pub peers: Vec<PeerConfig>,
    pub endpoints: Vec<EndpointConfig>,
    pub policies: BTreeMap<String, Vec<Rule>>,
}

/// A local pod left out of the node's state, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    pub endpoint: String,
    pub why: String,
}

/// Each node's pod prefixes, sorted: its affine blocks, and as /32s the addresses its pods hold
/// outside them (borrowed from another node's block, Calico's behaviour when a pool runs out:
/// routed to the borrowing node, the longer prefix winning over the block).
pub fn pod_prefixes(inputs: &Inputs) -> BTreeMap<&str, Vec<Ipv4Prefix>> {
    let mut blocks_of: BTreeMap<&str, Vec<Ipv4Prefix>> = BTreeMap::new();
    for b in &inputs.blocks {
        if let Some(n) = &b.node {
            blocks_of.entry(n.as_str()).or_default().push(b.cidr);
        }
    }
    let mut out = blocks_of.clone();
    for e in &inputs.endpoints {
        let own = blocks_of.get(e.node.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        for a in &e.addrs {
            if !own.iter().any(|b| b.contains(u32::from(*a))) {
                out.entry(e.node.as_str()).or_default().push(Ipv4Prefix::new_masked(u32::from(*a), 32));
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
        v.dedup();
    }
    out
}

/// The state of node `me`. `policies` and `endpoint_policy` come from [`crate::policy`] (the
/// lists of the local endpoints by key); a local endpoint without an entry gets none (allowed),
/// as an endpoint no policy selects.
pub fn node_state(
    inputs: &Inputs,
    me: &str,
    policies: &BTreeMap<String, Vec<Rule>>,
    endpoint_policy: &BTreeMap<String, EndpointPolicy>,
) -> (NodeState, Vec<Skipped>) {
    let prefixes = pod_prefixes(inputs);
    let blocks_and_borrowed = |node: &str| -> Vec<Ipv4Prefix> { prefixes.get(node).cloned().unwrap_or_default() };
    let mode_of = |blocks: &[Ipv4Prefix]| -> Option<IpipMode> {
        // The mode of the pool holding the node's first block (a node whose blocks come from
        // pools of different modes gets the first one's: one mode per peer).
        blocks.iter().find_map(|b| inputs.pools.iter().find(|p| p.cidr.contains(b.addr())).map(|p| p.ipip))
    };

    let mut state = NodeState { pod_blocks: blocks_and_borrowed(me), ..NodeState::default() };
    for n in &inputs.nodes {
        let (Some(ip), false) = (n.ip, n.name == me) else { continue };
        let pod_blocks = blocks_and_borrowed(&n.name);
        let ipip_mode = Some(mode_of(&pod_blocks).unwrap_or(IpipMode::Never));
        state.peers.push(PeerConfig { name: n.name.clone(), ip, pod_blocks, ipip_mode });
    }
    state.peers.sort_by(|a, b| a.name.cmp(&b.name));

    let mut skipped = Vec::new();
    let mut used = std::collections::BTreeSet::new();
    for e in inputs.endpoints.iter().filter(|e| e.node == me) {
        let skip = |why: &str| Skipped { endpoint: e.key.clone(), why: why.to_string() };
        let (Some(mac), Some(netns)) = (e.mac, e.netns.clone()) else {
            skipped.push(skip("no MAC or no network namespace recorded (not created by vrouter-cni?)"));
            continue;
        };
        if e.addrs.is_empty() {
            skipped.push(skip("no address"));
            continue;
        }
        if !used.insert(e.tap.clone()) {
            skipped.push(skip("its TAP name is another endpoint's"));
            continue;
        }
        let lists = endpoint_policy.get(&e.key).cloned().unwrap_or_default();
        state.endpoints.push(EndpointConfig {
            name: e.key.clone(),
            tap: e.tap.clone(),
            netns: Some(netns),
            ifname: e.ifname.clone(),
            mac,
            addrs: e.addrs.clone(),
            // Outside what the daemon takes, the default: one bad annotation must not get the
            // whole node's config refused.
            mtu: e.mtu.filter(|m| (MIN_MTU..=MAX_MTU).contains(m)).unwrap_or(DEFAULT_POD_MTU),
            ingress: lists.ingress,
            egress: lists.egress,
        });
    }
    state.endpoints.sort_by(|a, b| a.name.cmp(&b.name));
    state.policies = policies.clone();
    state.policies.insert(PENDING_POLICY.to_string(), Vec::new());
    (state, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }
    fn a(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn node(name: &str, ip: &str) -> NodeInfo {
        NodeInfo { name: name.into(), ip: Some(a(ip)), ..Default::default() }
    }
    fn block(c: &str, n: &str) -> BlockInfo {
        BlockInfo { cidr: p(c), node: Some(n.into()) }
    }
    fn ep(key: &str, node: &str, addr: &str) -> EndpointInfo {
        EndpointInfo {
            key: key.into(),
            node: node.into(),
            addrs: vec![a(addr)],
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            tap: format!("vr{}", key.replace('/', "")),
            ifname: "eth0".into(),
            netns: Some("/run/netns/x".into()),
            mtu: None,
        }
    }
    fn inputs() -> Inputs {
        Inputs {
            nodes: vec![node("n1", "192.168.1.1"), node("n2", "192.168.1.2"), node("n3", "192.168.2.3")],
            pools: vec![
                PoolInfo { cidr: p("10.244.0.0/16"), ipip: IpipMode::CrossSubnet },
                PoolInfo { cidr: p("10.99.0.0/16"), ipip: IpipMode::Always },
            ],
            blocks: vec![block("10.244.0.0/26", "n1"), block("10.244.0.64/26", "n2"), block("10.99.0.0/26", "n3")],
            endpoints: vec![ep("default/a", "n1", "10.244.0.5"), ep("default/b", "n2", "10.244.0.70")],
            ..Default::default()
        }
    }

    #[test]
    fn peers_are_the_other_nodes_with_their_blocks_and_pool_modes() {
        let (s, skipped) = node_state(&inputs(), "n1", &BTreeMap::new(), &BTreeMap::new());
        assert!(skipped.is_empty());
        assert_eq!(s.pod_blocks, vec![p("10.244.0.0/26")]);
        let names: Vec<_> = s.peers.iter().map(|x| x.name.as_str()).collect();
        assert_eq!(names, ["n2", "n3"]);
        assert_eq!(s.peers[0].pod_blocks, vec![p("10.244.0.64/26")]);
        assert_eq!(s.peers[0].ipip_mode, Some(IpipMode::CrossSubnet));
        assert_eq!(s.peers[1].ipip_mode, Some(IpipMode::Always));
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(s.endpoints[0].name, "default/a");
        assert!(s.policies.get(PENDING_POLICY).is_some_and(Vec::is_empty));
    }

    #[test]
    fn a_node_without_blocks_is_still_a_peer_for_decapsulation() {
        let mut i = inputs();
        i.nodes.push(node("n4", "192.168.3.4"));
        let (s, _) = node_state(&i, "n1", &BTreeMap::new(), &BTreeMap::new());
        let n4 = s.peers.iter().find(|x| x.name == "n4").expect("n4 is a peer");
        assert!(n4.pod_blocks.is_empty());
        // A node with no address yet is not.
        i.nodes.push(NodeInfo { name: "n5".into(), ip: None, ..Default::default() });
        let (s, _) = node_state(&i, "n1", &BTreeMap::new(), &BTreeMap::new());
        assert!(!s.peers.iter().any(|x| x.name == "n5"));
    }

    #[test]
    fn a_borrowed_address_is_a_32_of_the_borrowing_node_everywhere() {
        let mut i = inputs();
        // n2's pod holds an address of n1's block.
        i.endpoints.push(ep("default/c", "n2", "10.244.0.9"));
        let (s1, _) = node_state(&i, "n1", &BTreeMap::new(), &BTreeMap::new());
        let n2 = s1.peers.iter().find(|x| x.name == "n2").unwrap();
        assert_eq!(n2.pod_blocks, vec![p("10.244.0.9/32"), p("10.244.0.64/26")]);
        let (s2, _) = node_state(&i, "n2", &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(s2.pod_blocks, vec![p("10.244.0.9/32"), p("10.244.0.64/26")]);
        assert_eq!(s2.endpoints.len(), 2);
    }

    #[test]
    fn a_pods_mtu_comes_from_its_endpoint_and_a_bad_one_falls_back_to_the_default() {
        let mut i = inputs();
        i.endpoints[0].mtu = Some(1400);
        let (s, _) = node_state(&i, "n1", &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(s.endpoints[0].mtu, 1400);
        i.endpoints[0].mtu = Some(60000);
        let (s, _) = node_state(&i, "n1", &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(s.endpoints[0].mtu, DEFAULT_POD_MTU);
    }

    #[test]
    fn endpoints_take_their_policy_lists_and_incomplete_ones_are_reported() {
        let mut i = inputs();
        let mut broken = ep("default/z", "n1", "10.244.0.6");
        broken.netns = None;
        i.endpoints.push(broken);
        let lists = BTreeMap::from([(
            "default/a".to_string(),
            EndpointPolicy { ingress: vec!["np.default.web.ingress".into()], egress: vec![] },
        )]);
        let pols = BTreeMap::from([("np.default.web.ingress".to_string(), vec![])]);
        let (s, skipped) = node_state(&i, "n1", &pols, &lists);
        assert_eq!(s.endpoints[0].ingress, vec!["np.default.web.ingress".to_string()]);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].endpoint, "default/z");
        assert!(s.policies.contains_key("np.default.web.ingress"));
    }
}
