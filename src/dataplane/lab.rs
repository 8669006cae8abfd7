//! An in-memory node for tests, fuzzing and benchmarks: the Calico layout of the namespace lab,
//! without the namespaces. Node 1 (192.168.1.10) has an uplink, two pods and a host port;
//! node 2 (192.168.1.11) is on the same subnet (BGP mode, routed directly); node 3
//! (192.168.2.20) is behind the underlay router 192.168.1.1 (IPIP, CrossSubnet).

use std::sync::Arc;

use super::packet::PortId;
use super::pipeline::{Worker, WorkerConfig};
use super::state::{Endpoint, NextHop, PortInfo, PortKind, Shared, Snapshot, CALICO_POD_GATEWAY};
use crate::acl::PolicySet;
use crate::fib::{FibWriter, Ipv4Prefix, NhId};
use crate::neigh::{NeighConfig, NeighTable};
use crate::wire::MacAddr;

pub const UPLINK: PortId = 0;
pub const POD_A: PortId = 1;
pub const POD_B: PortId = 2;
pub const HOST: PortId = 3;

pub const NODE_IP: u32 = 0xc0a8_010a; // 192.168.1.10
pub const NODE2_IP: u32 = 0xc0a8_010b; // 192.168.1.11
pub const NODE3_IP: u32 = 0xc0a8_0214; // 192.168.2.20
pub const UNDERLAY_GW: u32 = 0xc0a8_0101; // 192.168.1.1
pub const POD_A_IP: u32 = 0x0af4_0102; // 10.244.1.2
pub const POD_B_IP: u32 = 0x0af4_0103; // 10.244.1.3
pub const NODE2_POD: u32 = 0x0af4_0202; // 10.244.2.2
pub const NODE3_POD: u32 = 0x0af4_0302; // 10.244.3.2

pub const UPLINK_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x01]);
pub const POD_A_PORT_MAC: MacAddr = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0x01]);
pub const POD_B_PORT_MAC: MacAddr = MacAddr([0xee, 0xee, 0xee, 0xee, 0xee, 0x02]);
pub const HOST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x03]);
pub const POD_A_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 0, 0x02]);
pub const POD_B_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 0, 0x03]);
pub const NODE2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
pub const GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);

/// Next-hop indices of the lab.
pub const NH_POD_A: NhId = 1;
pub const NH_POD_B: NhId = 2;
pub const NH_NODE2: NhId = 3;
pub const NH_NODE3_IPIP: NhId = 4;
pub const NH_BLACKHOLE: NhId = 5;
pub const NH_HOST: NhId = 6;
pub const NH_UNDERLAY: NhId = 7;

/// Choices for a lab node.
#[derive(Clone)]
pub struct LabOptions {
    pub host_port: bool,
    /// Preload node 2's and the underlay router's MACs (otherwise ARP resolves them).
    pub static_neighbours: bool,
    /// Install a default route via the underlay router.
    pub default_route: bool,
    pub policy: Arc<PolicySet>,
    pub worker: WorkerConfig,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            host_port: true,
            static_neighbours: true,
            default_route: false,
            policy: Arc::new(PolicySet::allow_all()),
            worker: WorkerConfig::default(),
        }
    }
}

/// A lab node: shared state, its FIB writer, one worker.
pub struct Lab {
    pub shared: Arc<Shared>,
    pub fib: FibWriter,
    pub worker: Worker,
}

pub fn ports(host: bool) -> Vec<PortInfo> {
    let p = |name: &str, kind, mac| PortInfo { name: name.into(), kind, mac, mtu: 1500, punt_unknown: false };
    let mut v = vec![
        PortInfo { punt_unknown: host, ..p("uplink", PortKind::Uplink, UPLINK_MAC) },
        p("pod-a", PortKind::Pod, POD_A_PORT_MAC),
        p("pod-b", PortKind::Pod, POD_B_PORT_MAC),
    ];
    if host {
        v.push(p("host", PortKind::Host, HOST_MAC));
    }
    v
}

pub fn endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint { name: "pod-a".into(), port: POD_A, mac: POD_A_MAC, addrs: vec![POD_A_IP] },
        Endpoint { name: "pod-b".into(), port: POD_B, mac: POD_B_MAC, addrs: vec![POD_B_IP] },
    ]
}

pub fn nexthops(host: bool) -> Vec<NextHop> {
    vec![
        NextHop::Unreachable,
        NextHop::Local { endpoint: 0 },
        NextHop::Local { endpoint: 1 },
        NextHop::Gateway { port: UPLINK, via: NODE2_IP },
        NextHop::Tunnel { port: UPLINK, remote: NODE3_IP, via: UNDERLAY_GW },
        NextHop::Blackhole,
        if host { NextHop::Host } else { NextHop::Blackhole },
        NextHop::Gateway { port: UPLINK, via: UNDERLAY_GW },
    ]
}

pub fn snapshot(opts: &LabOptions) -> Snapshot {
    Snapshot::build(
        ports(opts.host_port),
        NODE_IP,
        vec![],
        CALICO_POD_GATEWAY,
        vec![NODE2_IP, NODE3_IP],
        endpoints(),
        nexthops(opts.host_port),
        opts.policy.clone(),
    )
    .expect("lab snapshot is valid")
}

pub fn pfx(s: &str) -> Ipv4Prefix {
    s.parse().expect("valid prefix")
}

impl Lab {
    pub fn new(opts: LabOptions) -> Lab {
        let (shared, mut fib) = Shared::new(snapshot(&opts), NeighTable::new(NeighConfig::default()));
        fib.insert(pfx("10.244.1.2/32"), NH_POD_A);
        fib.insert(pfx("10.244.1.3/32"), NH_POD_B);
        fib.insert(pfx("10.244.1.0/26"), NH_BLACKHOLE);
        fib.insert(pfx("10.244.2.0/26"), NH_NODE2);
        fib.insert(pfx("10.244.3.0/26"), NH_NODE3_IPIP);
        if opts.default_route {
            fib.insert(pfx("0.0.0.0/0"), NH_UNDERLAY);
        }
        if opts.static_neighbours {
            shared.neigh.add_static(NODE2_IP, NODE2_MAC.0).expect("room");
            shared.neigh.add_static(UNDERLAY_GW, GW_MAC.0).expect("room");
        }
        let worker = Worker::new(shared.clone(), opts.worker.clone());
        Lab { shared, fib, worker }
    }
}

/// Frame builders on top of etherparse (an independent implementation of the formats).
pub mod frames {
    use crate::wire::MacAddr;
    use etherparse::PacketBuilder;

    fn ip(a: u32) -> [u8; 4] {
        a.to_be_bytes()
    }

    pub fn udp(smac: MacAddr, dmac: MacAddr, src: u32, dst: u32, ttl: u8, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(smac.0, dmac.0).ipv4(ip(src), ip(dst), ttl).udp(sport, dport);
        let mut v = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut v, payload).expect("write to Vec");
        v
    }

    pub fn tcp(smac: MacAddr, dmac: MacAddr, src: u32, dst: u32, sport: u16, dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(smac.0, dmac.0).ipv4(ip(src), ip(dst), 64).tcp(sport, dport, 1000, 65535);
        if syn {
            b = b.syn();
        }
        if ack {
            b = b.ack(1);
        }
        let mut v = Vec::with_capacity(b.size(0));
        b.write(&mut v, &[]).expect("write to Vec");
        v
    }

    pub fn ping(smac: MacAddr, dmac: MacAddr, src: u32, dst: u32, ttl: u8, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(smac.0, dmac.0).ipv4(ip(src), ip(dst), ttl).icmpv4_echo_request(id, seq);
        let mut v = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut v, payload).expect("write to Vec");
        v
    }

    /// Sets the DF bit of the IPv4 header of an Ethernet frame and fixes the checksum.
    pub fn set_df(frame: &mut [u8], df: bool) {
        let mut ip = crate::wire::ipv4::Ipv4Packet::new_checked(&mut frame[14..]).expect("ipv4");
        let ff = ip.flags_frag();
        ip.set_flags_frag(if df { ff | 0x4000 } else { ff & !0x4000 });
        ip.fill_checksum();
    }

    /// Wraps an IPv4 packet (from an Ethernet frame) in IPIP from `outer_src` to `outer_dst`.
    pub fn ipip(smac: MacAddr, dmac: MacAddr, outer_src: u32, outer_dst: u32, inner_frame: &[u8]) -> Vec<u8> {
        let inner = &inner_frame[14..];
        let mut v = Vec::with_capacity(34 + inner.len());
        v.extend_from_slice(&dmac.0);
        v.extend_from_slice(&smac.0);
        v.extend_from_slice(&[0x08, 0x00]);
        let mut h = [0u8; 20];
        crate::wire::ipv4::write_header(&mut h, 0, (20 + inner.len()) as u16, 7, 0, 64, 4, outer_src, outer_dst);
        v.extend_from_slice(&h);
        v.extend_from_slice(inner);
        v
    }
}
