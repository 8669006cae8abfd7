//! A simulated node in memory for tests, fuzzing and benchmarks: the Calico layout of the
//! namespace lab (`vrouter::lab`, the real daemon in network namespaces), without the
//! namespaces. Node 1 (192.168.1.10) has an uplink, two pods and a host port; node 2
//! (192.168.1.11) is on the same subnet (BGP mode, routed directly); node 3 (192.168.2.20) is
//! behind the underlay router 192.168.1.1 (IPIP, CrossSubnet).

use std::sync::Arc;

use super::packet::PortId;
use super::pipeline::{Pipeline, PipelineConfig};
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
/// Our side of the host port.
pub const HOST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x03]);
/// The node kernel's side of the host port (in the daemon: the uplink's MAC).
pub const HOST_KERNEL_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x04]);
pub const POD_A_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 0, 0x02]);
pub const POD_B_MAC: MacAddr = MacAddr([0x0a, 0, 0, 0, 0, 0x03]);
pub const NODE2_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x0b]);
pub const GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);

/// Next-hop indices of the sim.
pub const NH_POD_A: NhId = 1;
pub const NH_POD_B: NhId = 2;
pub const NH_NODE2: NhId = 3;
pub const NH_NODE3_IPIP: NhId = 4;
pub const NH_BLACKHOLE: NhId = 5;
pub const NH_HOST: NhId = 6;
pub const NH_UNDERLAY: NhId = 7;
pub const NH_CONNECTED: NhId = 8;

/// Choices for a simulated node.
#[derive(Clone)]
pub struct SimOptions {
    pub host_port: bool,
    /// Preload node 2's and the underlay router's MACs (otherwise ARP resolves them).
    pub static_neighbours: bool,
    /// Install a default route via the underlay router.
    pub default_route: bool,
    pub policy: Arc<PolicySet>,
    pub pipeline: PipelineConfig,
    /// Strict reverse-path check of IPIP inner sources (the default).
    pub ipip_strict_rpf: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            host_port: true,
            static_neighbours: true,
            default_route: false,
            policy: Arc::new(PolicySet::allow_all()),
            pipeline: PipelineConfig::default(),
            ipip_strict_rpf: true,
        }
    }
}

/// A simulated node: shared state, its FIB writer, one pipeline.
pub struct Sim {
    pub shared: Arc<Shared>,
    pub fib: FibWriter,
    pub pipeline: Pipeline,
}

pub fn ports(host: bool) -> Vec<PortInfo> {
    let p = |name: &str, kind, mac| PortInfo {
        name: name.into(),
        kind,
        mac,
        peer_mac: None,
        mtu: 1500,
        punt_unknown: false,
    };
    let mut v = vec![
        PortInfo { punt_unknown: host, ..p("uplink", PortKind::Uplink, UPLINK_MAC) },
        p("pod-a", PortKind::Pod, POD_A_PORT_MAC),
        p("pod-b", PortKind::Pod, POD_B_PORT_MAC),
    ];
    if host {
        v.push(PortInfo { peer_mac: Some(HOST_KERNEL_MAC), ..p("host", PortKind::Host, HOST_MAC) });
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
        NextHop::Connected { port: UPLINK },
    ]
}

pub fn snapshot(opts: &SimOptions) -> Snapshot {
    let mut s = Snapshot::build(
        ports(opts.host_port),
        NODE_IP,
        vec![],
        CALICO_POD_GATEWAY,
        vec![NODE2_IP, NODE3_IP],
        endpoints(),
        nexthops(opts.host_port),
        opts.policy.clone(),
    )
    .expect("sim snapshot is valid");
    s.pod_blocks = vec![pfx("10.244.1.0/26")];
    s.ipip_strict_rpf = opts.ipip_strict_rpf;
    s
}

pub fn pfx(s: &str) -> Ipv4Prefix {
    s.parse().expect("valid prefix")
}

impl Sim {
    pub fn new(opts: SimOptions) -> Sim {
        let (shared, mut fib) =
            Shared::new(snapshot(&opts), NeighTable::new(NeighConfig::default()).expect("default config is valid"));
        fib.insert(pfx("10.244.1.2/32"), NH_POD_A);
        fib.insert(pfx("10.244.1.3/32"), NH_POD_B);
        fib.insert(pfx("10.244.1.0/26"), NH_BLACKHOLE);
        fib.insert(pfx("10.244.2.0/26"), NH_NODE2);
        fib.insert(pfx("10.244.3.0/26"), NH_NODE3_IPIP);
        fib.insert(pfx("192.168.1.0/24"), NH_CONNECTED);
        if opts.default_route {
            fib.insert(pfx("0.0.0.0/0"), NH_UNDERLAY);
        }
        if opts.static_neighbours {
            shared.neigh.add_static(NODE2_IP, NODE2_MAC.0).expect("room");
            shared.neigh.add_static(UNDERLAY_GW, GW_MAC.0).expect("room");
        }
        let pipeline = Pipeline::new(shared.clone(), opts.pipeline.clone());
        Sim { shared, fib, pipeline }
    }
}

/// Frame builders on top of etherparse (an independent implementation of the formats).
#[allow(clippy::too_many_arguments)] // one argument per header field reads best in tests
pub mod frames {
    use crate::wire::MacAddr;
    use etherparse::PacketBuilder;

    fn ip(a: u32) -> [u8; 4] {
        a.to_be_bytes()
    }

    pub fn udp(
        smac: MacAddr,
        dmac: MacAddr,
        src: u32,
        dst: u32,
        ttl: u8,
        sport: u16,
        dport: u16,
        payload: &[u8],
    ) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(smac.0, dmac.0).ipv4(ip(src), ip(dst), ttl).udp(sport, dport);
        let mut v = Vec::with_capacity(b.size(payload.len()));
        b.write(&mut v, payload).expect("write to Vec");
        v
    }

    pub fn tcp(
        smac: MacAddr,
        dmac: MacAddr,
        src: u32,
        dst: u32,
        sport: u16,
        dport: u16,
        syn: bool,
        ack: bool,
    ) -> Vec<u8> {
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

    pub fn ping(
        smac: MacAddr,
        dmac: MacAddr,
        src: u32,
        dst: u32,
        ttl: u8,
        id: u16,
        seq: u16,
        payload: &[u8],
    ) -> Vec<u8> {
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

/// Valid frames of every kind the simulated node handles, for fuzzing by mutation and for benchmarks.
pub fn sample_frames() -> Vec<(Vec<u8>, PortId)> {
    let inner = frames::udp(GW_MAC, UPLINK_MAC, NODE3_POD, POD_A_IP, 63, 1, 2, b"inner");
    let mut big = frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE3_POD, 64, 7, 7, &[0x5a; 1472]);
    frames::set_df(&mut big, false);
    let mut arp_req = vec![0u8; 60];
    let n = crate::wire::arp::build_request(&mut arp_req, POD_A_MAC.0, POD_A_IP, CALICO_POD_GATEWAY);
    arp_req.truncate(n);
    vec![
        (frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, POD_B_IP, 64, 1, 2, b"a"), POD_A),
        (frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE2_POD, 64, 1, 2, b"b"), POD_A),
        (frames::tcp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE3_POD, 4000, 80, true, false), POD_A),
        (frames::ipip(GW_MAC, UPLINK_MAC, NODE3_IP, NODE_IP, &inner), UPLINK),
        (frames::ping(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE_IP, 64, 1, 1, b"ping"), POD_A),
        (frames::udp(POD_B_MAC, POD_B_PORT_MAC, POD_B_IP, POD_A_IP, 1, 1, 2, b"ttl"), POD_B),
        (big, POD_A),
        (arp_req, POD_A),
    ]
}

thread_local! {
    static FUZZ_SIMS: std::cell::RefCell<Option<[Sim; 2]>> = const { std::cell::RefCell::new(None) };
}

/// One fuzz case: `data` is cut into frames (2-byte length, 1-byte port, then the bytes) and run
/// through a simulated node in one batch, then once more a second later. The first byte picks one of
/// two long-lived nodes (neighbours static or resolved by ARP), so state carries across cases
/// as it does in a running router. Must never panic.
pub fn fuzz_pipeline(data: &[u8]) {
    FUZZ_SIMS.with(|sims| {
        let mut sims = sims.borrow_mut();
        let sims = sims.get_or_insert_with(|| {
            [true, false].map(|s| Sim::new(SimOptions { static_neighbours: s, ..Default::default() }))
        });
        let sim = &mut sims[data.first().map_or(0, |b| (b & 1) as usize)];
        fuzz_one(sim, data);
    });
}

fn fuzz_one(sim: &mut Sim, data: &[u8]) {
    let mut bufs = Vec::new();
    let mut rest = data.get(1..).unwrap_or(&[]);
    while rest.len() >= 3 && bufs.len() < 300 {
        let len = u16::from_be_bytes([rest[0], rest[1]]) as usize % 1600;
        let port = (rest[2] % 5) as PortId; // includes a port the snapshot does not know
        rest = &rest[3..];
        let take = len.min(rest.len());
        bufs.push(super::packet::PacketBuf::new(&rest[..take], port));
        rest = &rest[take..];
    }
    let snapshot: Vec<_> = bufs.clone();
    // Bit 1 of the first byte: trace and capture everything (the formatters read every frame).
    let observe = data.first().is_some_and(|b| b & 2 != 0);
    if observe {
        let obs = &sim.shared.observe;
        let _ = obs.start_trace(u32::MAX >> 16, None);
        let _ = obs.start_capture(super::observe::CaptureSpec {
            count: 4096,
            port: None,
            rx: true,
            tx: true,
            snaplen: 2048,
        });
    }
    sim.pipeline.process(&mut bufs, 1_000);
    check_output(sim, &bufs);
    let mut again = snapshot;
    sim.pipeline.process(&mut again, 2_000);
    check_output(sim, &again);
    if observe {
        let (obs, sent) = (&sim.shared.observe, bufs.len() + again.len());
        let records = obs.stop_trace();
        assert!(records.len() <= sent, "one record per frame at most");
        assert!(records.iter().all(|r| !r.received.is_empty() && !r.verdict.is_empty()));
        obs.stop_capture();
    }
}

/// What every output must satisfy whatever the input: frames within their buffers, and every
/// IPv4 frame the pipeline routed carrying a valid header checksum. (Frames between the host
/// port and the uplink pass untouched, as the kernel sent them or will judge them.)
fn check_output(sim: &Sim, bufs: &[super::packet::PacketBuf]) {
    let out = sim.pipeline.output();
    for p in out.active_ports() {
        for i in out.tx(p) {
            let b = &bufs[*i as usize];
            assert!(b.head + b.len <= b.buf.len());
            if b.port == HOST || p == HOST {
                continue;
            }
            let f = b.data();
            if f.len() >= 34 && f[12..14] == [0x08, 0x00] && f[14] >> 4 == 4 {
                let hl = (f[14] & 0xf) as usize * 4;
                if f.len() >= 14 + hl {
                    assert!(crate::wire::checksum::verify(&f[14..14 + hl]), "sent IPv4 with bad checksum");
                }
            }
        }
    }
}

/// Runs the simulated node over one frame of each kind and describes what it did, for `vrouter demo`.
pub fn demo() -> String {
    use std::fmt::Write;
    let mut sim = Sim::new(SimOptions::default());
    let port_name = |p: PortId| ports(true).get(p as usize).map(|p| p.name.clone()).unwrap_or_default();
    let inner = frames::udp(GW_MAC, UPLINK_MAC, NODE3_POD, POD_A_IP, 63, 1, 2, b"inner");
    let mut big = frames::ping(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE3_POD, 64, 1, 1, &[0; 1472]);
    frames::set_df(&mut big, true);
    let mut bad_csum = frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, POD_B_IP, 64, 1, 2, b"x");
    bad_csum[24] ^= 0xff;
    let cases: Vec<(&str, Vec<u8>, PortId)> = vec![
        (
            "pod-a -> pod-b (same node)",
            frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, POD_B_IP, 64, 1, 2, b"x"),
            POD_A,
        ),
        (
            "pod-a -> node2 pod (BGP mode)",
            frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE2_POD, 64, 1, 2, b"x"),
            POD_A,
        ),
        (
            "pod-a -> node3 pod (IPIP)",
            frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, NODE3_POD, 64, 1, 2, b"x"),
            POD_A,
        ),
        ("node3 pod -> pod-a (IPIP in)", frames::ipip(GW_MAC, UPLINK_MAC, NODE3_IP, NODE_IP, &inner), UPLINK),
        ("IPIP from unknown host", frames::ipip(GW_MAC, UPLINK_MAC, 0x0808_0808, NODE_IP, &inner), UPLINK),
        (
            "ping 169.254.1.1",
            frames::ping(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, CALICO_POD_GATEWAY, 64, 1, 1, b"p"),
            POD_A,
        ),
        ("1500 B DF ping over IPIP", big, POD_A),
        ("TTL 1 to pod-b", frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, POD_B_IP, 1, 1, 2, b"x"), POD_A),
        ("spoofed source", frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_B_IP, NODE2_POD, 64, 1, 2, b"x"), POD_A),
        ("bad IPv4 checksum", bad_csum, POD_A),
        ("no route (8.8.8.8)", frames::udp(POD_A_MAC, POD_A_PORT_MAC, POD_A_IP, 0x0808_0808, 64, 1, 2, b"x"), POD_A),
    ];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "vrouter engine demo: in-memory node 192.168.1.10 (pods 10.244.1.2-3; node2 192.168.1.11 same subnet; \
         node3 192.168.2.20 via IPIP)\n"
    );
    let _ = writeln!(s, "{:<32} {:<8} result", "frame", "in");
    for (name, f, port) in cases {
        let before: Vec<u64> =
            crate::stats::DropReason::ALL.iter().map(|r| sim.pipeline.counters().drops(*r)).collect();
        let mut bufs = vec![super::packet::PacketBuf::new(&f, port)];
        let out = sim.pipeline.process(&mut bufs, 1_000);
        let mut results = vec![];
        for p in out.active_ports().collect::<Vec<_>>() {
            for i in out.tx(p) {
                results.push(describe(&port_name(p), bufs[*i as usize].data()));
            }
        }
        for (p, fr) in out.emitted.frames() {
            results.push(describe(&port_name(p), fr));
        }
        for (i, r) in crate::stats::DropReason::ALL.iter().enumerate() {
            if sim.pipeline.counters().drops(*r) > before[i] {
                results.push(format!("dropped: {}", r.name()));
            }
        }
        let _ = writeln!(s, "{:<32} {:<8} {}", name, port_name(port), results.join("; "));
    }
    s
}

fn describe(port: &str, f: &[u8]) -> String {
    let Some(ip) = crate::wire::ipv4::Ipv4Packet::new_checked(f.get(14..).unwrap_or(&[])) else {
        return format!("sent on {port} ({} bytes)", f.len());
    };
    let a = |x: u32| std::net::Ipv4Addr::from(x);
    let mut d = format!("sent on {port}: {} -> {}", a(ip.src()), a(ip.dst()));
    match ip.protocol() {
        crate::wire::ipv4::PROTO_IPIP => {
            if let Some(inner) = crate::wire::ipv4::Ipv4Packet::new_checked(ip.payload()) {
                d += &format!(" IPIP[{} -> {} ttl {}]", a(inner.src()), a(inner.dst()), inner.ttl());
            }
        }
        crate::wire::ipv4::PROTO_ICMP => {
            let p = ip.payload();
            d += &format!(" ICMP type {} code {}", p.first().unwrap_or(&0), p.get(1).unwrap_or(&0));
            if p.first() == Some(&3) && p.get(1) == Some(&4) && p.len() >= 8 {
                d += &format!(" mtu {}", u16::from_be_bytes([p[6], p[7]]));
            }
        }
        _ => d += &format!(" ttl {}", ip.ttl()),
    }
    d
}
