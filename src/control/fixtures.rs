//! Config snippets for tests and benchmarks (in-memory nodes): one node on 192.168.1.10/24
//! with pod block 10.244.1.0/26, pods and peers by number.
//!
//! Each snippet is a typed section of [`Config`](super::config::Config) serialized with `toml`,
//! so a renamed field fails to compile here rather than at a test's parse; callers concatenate
//! snippets (`node_toml("n1") + &endpoint_toml("a", 2)`), which stays valid TOML because every
//! snippet is a whole `[table]` or `[[array]]` entry.

use std::net::Ipv4Addr;

use serde::Serialize;

use vrouter_core::dataplane::state::IpipMode;
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::wire::MacAddr;

use super::config::{EndpointConfig, NeighbourConfig, NodeConfig, PeerConfig, RpfMode, UplinkConfig};

/// `value` as the TOML table `[key]`.
pub fn table<T: Serialize>(key: &str, value: &T) -> String {
    snippet(key, value, false)
}

/// `value` as one `[[key]]` entry.
pub fn entry<T: Serialize>(key: &str, value: &T) -> String {
    snippet(key, value, true)
}

fn snippet<T: Serialize>(key: &str, value: &T, array: bool) -> String {
    let text = if array {
        toml::to_string(&std::collections::BTreeMap::from([(key, [value])]))
    } else {
        toml::to_string(&std::collections::BTreeMap::from([(key, value)]))
    };
    text.unwrap_or_else(|e| panic!("fixture [{key}] does not serialize: {e}"))
}

fn block(third: u8) -> Ipv4Prefix {
    Ipv4Prefix::new_masked(u32::from(Ipv4Addr::new(10, 244, third, 0)), 26)
}

/// The test node `name`: 192.168.1.10 on 192.168.1.0/24, pod block 10.244.1.0/26, gateway
/// 192.168.1.1, uplink `eth9`; everything else at its default.
pub fn node(name: &str) -> (NodeConfig, UplinkConfig) {
    let node = NodeConfig {
        name: name.into(),
        ip: Ipv4Addr::new(192, 168, 1, 10),
        subnet: Ipv4Prefix::new_masked(u32::from(Ipv4Addr::new(192, 168, 1, 0)), 24),
        pod_block: Some(block(1)),
        pod_gateway: Ipv4Addr::new(169, 254, 1, 1),
        ipip_mode: IpipMode::CrossSubnet,
        gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
        ipip_rpf: RpfMode::default(),
    };
    let uplink = UplinkConfig {
        device: "eth9".into(),
        queues: 1,
        xdp_mode: Default::default(),
        bind: Default::default(),
        mtu: 1500,
        tx_queue: crate::port::afxdp::DEFAULT_TX_QUEUE,
    };
    (node, uplink)
}

/// `[node]` and `[uplink]` of the test node `name` (see [`node`]).
pub fn node_toml(name: &str) -> String {
    let (n, u) = node(name);
    snippet("node", &n, false) + &snippet("uplink", &u, false)
}

/// A pod called `name` at 10.244.1.`host`, MAC 0a:00:00:00:00:`host`, TAP `tap<name>`.
pub fn endpoint(name: &str, host: u8) -> EndpointConfig {
    EndpointConfig {
        name: name.into(),
        tap: format!("tap{name}"),
        netns: None,
        ifname: "eth0".into(),
        mac: MacAddr([0x0a, 0, 0, 0, 0, host]),
        addrs: vec![Ipv4Addr::new(10, 244, 1, host)],
        mtu: 1480,
        ingress: vec![],
        egress: vec![],
    }
}

/// [`endpoint`] as a `[[endpoints]]` entry.
pub fn endpoint_toml(name: &str, host: u8) -> String {
    snippet("endpoints", &endpoint(name, host), true)
}

/// A peer node at 192.168.1.`host` owning the pod block 10.244.`block`.0/26, as a `[[peers]]`
/// entry.
pub fn peer_toml(name: &str, host: u8, pod_block: u8) -> String {
    let peer = PeerConfig {
        name: name.into(),
        ip: Ipv4Addr::new(192, 168, 1, host),
        pod_blocks: vec![block(pod_block)],
        ipip_mode: None,
    };
    snippet("peers", &peer, true)
}

/// A static neighbour 192.168.1.`host` with MAC 02:00:00:00:`set`:`host`, as a
/// `[[neighbours]]` entry.
pub fn neighbour_toml(host: u8, set: u8) -> String {
    let n = NeighbourConfig { ip: Ipv4Addr::new(192, 168, 1, host), mac: MacAddr([2, 0, 0, 0, set, host]) };
    snippet("neighbours", &n, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use std::path::Path;

    #[test]
    fn concatenated_snippets_parse_back_to_the_typed_sections() {
        let text = node_toml("n1") + &endpoint_toml("a", 2) + &peer_toml("n2", 20, 2) + &neighbour_toml(20, 1);
        let c = Config::parse(&text, Path::new("fixture.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let (n, u) = node("n1");
        assert_eq!((c.node, c.uplink), (n, Some(u)));
        assert_eq!(c.endpoints, vec![endpoint("a", 2)]);
        assert_eq!(c.peers[0].pod_blocks, vec!["10.244.2.0/26".parse().unwrap()]);
        assert_eq!(c.neighbours[0].mac, "02:00:00:00:01:14".parse().unwrap());
    }
}
