//! Turns a validated [`Config`] into the data plane's state: ports, the snapshot (next hops,
//! endpoints, peers, policy) and the routes to load into the FIB. Pure: no I/O, so it is
//! tested without root.

use std::net::Ipv4Addr;
use std::sync::Arc;

use super::config::Config;
use crate::acl::{AclError, PolicySet};
use crate::dataplane::state::{Endpoint, NextHop, PortInfo, PortKind, Snapshot, SnapshotError};
use crate::dataplane::PortId;
use crate::fib::{Ipv4Prefix, NhId};
use crate::wire::MacAddr;

/// The MAC vrouter uses on every pod port, as Calico does on its host-side veths.
pub const POD_PORT_MAC: MacAddr = MacAddr([0xee; 6]);

/// Port numbering: the uplink is 0, pods follow in config order, the host port is last.
pub const UPLINK: PortId = 0;

pub fn pod_port(i: usize) -> PortId {
    1 + i as PortId
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("policies: {0}")]
    Policy(#[from] AclError),
    #[error("{0}")]
    Snapshot(#[from] SnapshotError),
}

/// Everything the daemon needs to start forwarding.
pub struct NodeState {
    pub snapshot: Snapshot,
    pub routes: Vec<(Ipv4Prefix, NhId)>,
    pub host_port: Option<PortId>,
}

fn ip(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// Builds the state for `cfg`; `uplink_mac` is the uplink device's MAC.
pub fn build(cfg: &Config, uplink_mac: MacAddr, generation: u64) -> Result<NodeState, BuildError> {
    let node = &cfg.node;
    let mut ports = vec![PortInfo {
        name: cfg.uplink.as_ref().map(|u| u.device.clone()).unwrap_or_else(|| "uplink".into()),
        kind: PortKind::Uplink,
        mac: uplink_mac,
        mtu: cfg.uplink.as_ref().map(|u| u.mtu).unwrap_or(1500),
        punt_unknown: cfg.host.is_some(),
    }];
    let mut endpoints = Vec::new();
    for (i, e) in cfg.endpoints.iter().enumerate() {
        ports.push(PortInfo {
            name: e.tap.clone(),
            kind: PortKind::Pod,
            mac: POD_PORT_MAC,
            mtu: e.mtu,
            punt_unknown: false,
        });
        endpoints.push(Endpoint {
            name: e.name.clone(),
            port: pod_port(i),
            mac: e.mac,
            addrs: e.addrs.iter().map(|a| ip(*a)).collect(),
        });
    }
    let host_port = cfg.host.as_ref().map(|h| {
        ports.push(PortInfo {
            name: h.tap.clone(),
            kind: PortKind::Host,
            mac: uplink_mac,
            mtu: ports[0].mtu,
            punt_unknown: false,
        });
        (ports.len() - 1) as PortId
    });

    let mut nexthops = vec![NextHop::Unreachable, NextHop::Blackhole];
    const BLACKHOLE: NhId = 1;
    let host_nh = host_port.map(|_| {
        nexthops.push(NextHop::Host);
        (nexthops.len() - 1) as NhId
    });
    let add_nh = |nh: NextHop, nexthops: &mut Vec<NextHop>| -> NhId {
        match nexthops.iter().position(|x| *x == nh) {
            Some(i) => i as NhId,
            None => {
                nexthops.push(nh);
                (nexthops.len() - 1) as NhId
            }
        }
    };
    let mut routes = Vec::new();
    for (i, e) in cfg.endpoints.iter().enumerate() {
        let nh = add_nh(NextHop::Local { endpoint: i as u16 }, &mut nexthops);
        for a in &e.addrs {
            routes.push((Ipv4Prefix::new_masked(ip(*a), 32), nh));
        }
    }
    // Calico blackholes the local block: addresses in it without a pod are unreachable.
    routes.push((node.pod_block, BLACKHOLE));
    // The uplink's subnet is on-link: hosts on it are resolved directly.
    if cfg.uplink.is_some() {
        let connected = add_nh(NextHop::Connected { port: UPLINK }, &mut nexthops);
        routes.push((node.subnet, connected));
        // Never forward to the subnet's network or broadcast address (no directed broadcast,
        // RFC 2644) nor make them ARP targets.
        if node.subnet.len() <= 30 {
            let net = node.subnet.addr();
            routes.push((Ipv4Prefix::new_masked(net, 32), BLACKHOLE));
            routes.push((Ipv4Prefix::new_masked(net | !node.subnet.mask(), 32), BLACKHOLE));
        }
    }
    let on_link = |a: Ipv4Addr| node.subnet.contains(ip(a));
    let gateway = node.gateway.map(ip);
    for p in &cfg.peers {
        let mode = p.ipip_mode.unwrap_or(node.ipip_mode);
        let peer = ip(p.ip);
        let nh = if mode.encapsulates(node.subnet, peer) {
            let via =
                if on_link(p.ip) { peer } else { gateway.expect("validated: off-subnet peers need node.gateway") };
            NextHop::Tunnel { port: UPLINK, remote: peer, via }
        } else {
            let via = if on_link(p.ip) { peer } else { gateway.expect("validated") };
            NextHop::Gateway { port: UPLINK, via }
        };
        let id = add_nh(nh, &mut nexthops);
        for b in &p.pod_blocks {
            routes.push((*b, id));
        }
    }
    for r in &cfg.routes {
        let id = if r.blackhole {
            BLACKHOLE
        } else if r.host {
            host_nh.expect("validated: host routes need [host]")
        } else {
            add_nh(NextHop::Gateway { port: UPLINK, via: ip(r.via.expect("validated")) }, &mut nexthops)
        };
        routes.push((r.prefix, id));
    }
    let policy = Arc::new(PolicySet::compile(&cfg.policy_config(), generation)?);
    let snapshot = Snapshot::build(
        ports,
        ip(node.ip),
        vec![],
        ip(node.pod_gateway),
        cfg.peers.iter().map(|p| ip(p.ip)).collect(),
        endpoints,
        nexthops,
        policy,
    )?;
    Ok(NodeState { snapshot, routes, host_port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn load(f: &str) -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(f)).unwrap()
    }

    fn nh_for<'a>(st: &'a NodeState, p: &str) -> &'a NextHop {
        let p: Ipv4Prefix = p.parse().unwrap();
        let id = st.routes.iter().find(|(q, _)| *q == p).unwrap_or_else(|| panic!("no route {p}")).1;
        &st.snapshot.nexthops[id as usize]
    }

    #[test]
    fn crosssubnet_encapsulates_only_off_subnet_peers() {
        let mut cfg = load("ipip-crosssubnet-node3.toml");
        let st = build(&cfg, MacAddr([2, 0, 0, 0, 0, 1]), 1).unwrap();
        assert_eq!(
            nh_for(&st, "10.244.1.0/26"),
            &NextHop::Tunnel { port: UPLINK, remote: 0xc0a8_010a, via: 0xc0a8_0201 },
            "node1 is off-subnet: IPIP via the underlay gateway"
        );
        // Put a peer on our subnet: CrossSubnet routes it directly (BGP mode).
        cfg.peers[1].ip = "192.168.2.21".parse().unwrap();
        let st = build(&cfg, MacAddr([2, 0, 0, 0, 0, 1]), 1).unwrap();
        assert_eq!(nh_for(&st, "10.244.2.0/26"), &NextHop::Gateway { port: UPLINK, via: 0xc0a8_0215 });
        // Always encapsulates even on-link, to the peer itself.
        cfg.node.ipip_mode = crate::dataplane::IpipMode::Always;
        let st = build(&cfg, MacAddr([2, 0, 0, 0, 0, 1]), 1).unwrap();
        assert_eq!(
            nh_for(&st, "10.244.2.0/26"),
            &NextHop::Tunnel { port: UPLINK, remote: 0xc0a8_0215, via: 0xc0a8_0215 }
        );
        assert!(st.snapshot.is_peer(0xc0a8_010a) && st.snapshot.is_peer(0xc0a8_0215));
    }

    #[test]
    fn pods_get_host_routes_and_the_block_is_blackholed() {
        let st = build(&load("single-node.toml"), MacAddr([2, 0, 0, 0, 0, 1]), 1).unwrap();
        assert_eq!(nh_for(&st, "10.244.1.2/32"), &NextHop::Local { endpoint: 0 });
        assert_eq!(nh_for(&st, "10.244.1.3/32"), &NextHop::Local { endpoint: 1 });
        assert_eq!(nh_for(&st, "10.244.1.0/26"), &NextHop::Blackhole);
        assert_eq!(nh_for(&st, "0.0.0.0/0"), &NextHop::Gateway { port: UPLINK, via: 0xc0a8_0101 });
        assert_eq!(nh_for(&st, "192.168.1.0/24"), &NextHop::Connected { port: UPLINK });
        assert_eq!(nh_for(&st, "192.168.1.255/32"), &NextHop::Blackhole);
        assert_eq!(nh_for(&st, "192.168.1.0/32"), &NextHop::Blackhole);
        let host = st.host_port.unwrap() as usize;
        assert_eq!(st.snapshot.ports[host].kind, PortKind::Host);
        assert_eq!(st.snapshot.ports[host].mac, MacAddr([2, 0, 0, 0, 0, 1]), "host TAP shares the uplink MAC");
        assert_eq!(st.snapshot.ports[1].mac, POD_PORT_MAC);
        assert!(!st.snapshot.policy.is_allow_all());
    }
}
