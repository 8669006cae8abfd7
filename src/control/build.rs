//! What a [`Config`] asks of the data plane, in terms that do not depend on numbering: routes
//! by prefix to next-hop *keys* ([`NhKey`]). [`super::node::Node`] gives keys stable next-hop ids
//! and endpoints stable port slots, so a change renumbers nothing the workers may be using.
//! Pure: no I/O, tested without root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::config::{Config, PeerConfig};
use vrouter_core::dataplane::PortId;
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::wire::MacAddr;

/// The MAC vrouter uses on every pod port, as Calico does on its host-side veths.
pub const POD_PORT_MAC: MacAddr = MacAddr([0xee; 6]);

/// Port numbering: the uplink is 0, the host port 1 (when configured), pods from 2 on.
pub const UPLINK: PortId = 0;
pub const HOST_PORT: PortId = 1;
pub const FIRST_POD_PORT: PortId = 2;

pub use vrouter_api::{NhKey, RouteSource};

fn ip(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// The routes a config implies, by source (`Node` or `Config`), with pods' next hops given by
/// `pod_slot(endpoint name)`.
pub fn config_routes(
    cfg: &Config,
    pod_slot: impl Fn(&str) -> Option<PortId>,
) -> BTreeMap<Ipv4Prefix, (RouteSource, NhKey)> {
    let node = &cfg.node;
    let mut routes = BTreeMap::new();
    // Later inserts of the same prefix from a lower-priority source must not replace.
    let mut put = |p: Ipv4Prefix, src: RouteSource, k: NhKey| {
        routes.entry(p).or_insert((src, k));
    };
    for e in &cfg.endpoints {
        if let Some(slot) = pod_slot(&e.name) {
            for a in &e.addrs {
                put(Ipv4Prefix::new_masked(ip(*a), 32), RouteSource::Node, NhKey::Local(slot));
            }
        }
    }
    if cfg.uplink.is_some() && node.subnet.len() <= 30 {
        // Never forward to the subnet's network or broadcast address (no directed broadcast,
        // RFC 2644) nor make them ARP targets.
        let net = node.subnet.addr();
        put(Ipv4Prefix::new_masked(net, 32), RouteSource::Node, NhKey::Blackhole);
        put(Ipv4Prefix::new_masked(net | !node.subnet.mask(), 32), RouteSource::Node, NhKey::Blackhole);
    }
    // Calico blackholes the local blocks: addresses in them without a pod are unreachable (a
    // /32 borrowed from another node's block too, while its pod is not there).
    for b in cfg.pod_blocks() {
        put(b, RouteSource::Node, NhKey::Blackhole);
    }
    // The uplink's subnet is on-link: hosts on it are resolved directly.
    if cfg.uplink.is_some() {
        put(node.subnet, RouteSource::Node, NhKey::Connected);
    }
    for p in &cfg.peers {
        let nh = peer_nexthop(cfg, p);
        for b in &p.pod_blocks {
            put(*b, RouteSource::Config, nh.clone());
        }
    }
    for r in &cfg.routes {
        let k = if r.blackhole {
            NhKey::Blackhole
        } else if r.unreachable {
            NhKey::Unreachable
        } else if r.prohibit {
            NhKey::Prohibit
        } else if r.host {
            NhKey::Host
        } else {
            NhKey::Gateway(r.via.expect("validated: one of via, blackhole, unreachable, prohibit, host"))
        };
        put(r.prefix, RouteSource::Config, k);
    }
    routes
}

/// How traffic to a remote node's pods leaves: straight to it (BGP mode, same subnet), through
/// the underlay gateway, or in IPIP to it, as the peer's IPIP mode (else the node's) says.
pub fn peer_nexthop(cfg: &Config, p: &PeerConfig) -> NhKey {
    let peer = p.ip;
    let on_link = cfg.node.subnet.contains(ip(peer));
    // Validated: an off-subnet peer needs node.gateway.
    let via = if on_link { peer } else { cfg.node.gateway.unwrap_or(peer) };
    if p.ipip_mode.unwrap_or(cfg.node.ipip_mode).encapsulates(cfg.node.subnet, ip(peer)) {
        NhKey::Tunnel { remote: peer, via }
    } else {
        NhKey::Gateway(via)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(f: &str) -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(f)).unwrap()
    }

    fn nh(routes: &BTreeMap<Ipv4Prefix, (RouteSource, NhKey)>, p: &str) -> NhKey {
        routes.get(&p.parse().unwrap()).unwrap_or_else(|| panic!("no route {p}")).1.clone()
    }

    fn slots(name: &str) -> Option<PortId> {
        Some(if name.ends_with('a') { 2 } else { 3 })
    }

    #[test]
    fn crosssubnet_encapsulates_only_off_subnet_peers() {
        let mut cfg = load("ipip-crosssubnet-node3.toml");
        let r = config_routes(&cfg, slots);
        let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            nh(&r, "10.244.1.0/26"),
            NhKey::Tunnel { remote: a("192.168.1.10"), via: a("192.168.2.1") },
            "node1 is off-subnet: IPIP via the underlay gateway"
        );
        // Put a peer on our subnet: CrossSubnet routes it directly (BGP mode).
        cfg.peers[1].ip = a("192.168.2.21");
        let r = config_routes(&cfg, slots);
        assert_eq!(nh(&r, "10.244.2.0/26"), NhKey::Gateway(a("192.168.2.21")));
        // Always encapsulates even on-link, to the peer itself.
        cfg.node.ipip_mode = vrouter_core::dataplane::IpipMode::Always;
        let r = config_routes(&cfg, slots);
        assert_eq!(nh(&r, "10.244.2.0/26"), NhKey::Tunnel { remote: a("192.168.2.21"), via: a("192.168.2.21") });
    }

    #[test]
    fn pods_get_host_routes_and_the_block_is_blackholed() {
        let cfg = load("single-node.toml");
        let r = config_routes(&cfg, |n| cfg.endpoints.iter().position(|e| e.name == n).map(|i| 2 + i as PortId));
        assert_eq!(nh(&r, "10.244.1.2/32"), NhKey::Local(2));
        assert_eq!(nh(&r, "10.244.1.3/32"), NhKey::Local(3));
        assert_eq!(nh(&r, "10.244.1.0/26"), NhKey::Blackhole);
        assert_eq!(nh(&r, "0.0.0.0/0"), NhKey::Gateway("192.168.1.1".parse().unwrap()));
        assert_eq!(nh(&r, "192.168.1.0/24"), NhKey::Connected);
        assert_eq!(nh(&r, "192.168.1.255/32"), NhKey::Blackhole);
        assert_eq!(nh(&r, "192.168.1.0/32"), NhKey::Blackhole);
        assert_eq!(r.get(&"10.244.1.2/32".parse().unwrap()).unwrap().0, RouteSource::Node);
        assert_eq!(r.get(&"0.0.0.0/0".parse().unwrap()).unwrap().0, RouteSource::Config);
    }
}
