//! Pipeline tests over the in-memory simulated node; frames built and decoded with etherparse.

use super::*;
use crate::dataplane::packet::PacketBuf;
use crate::dataplane::sim::{self, frames, Sim, SimOptions};
use crate::wire::checksum;
use etherparse::{Ipv4HeaderSlice, SlicedPacket};

/// Runs frames through the pipeline; returns what was sent: (port, frame) in port order, then
/// generated frames.
fn run(sim: &mut Sim, input: &[(Vec<u8>, PortId)], now: u64) -> Vec<(PortId, Vec<u8>)> {
    let mut bufs: Vec<PacketBuf> = input.iter().map(|(f, p)| PacketBuf::new(f, *p)).collect();
    let out = sim.pipeline.process(&mut bufs, now);
    let mut sent = vec![];
    for p in out.active_ports().collect::<Vec<_>>() {
        for i in out.tx(p) {
            sent.push((p, bufs[*i as usize].data().to_vec()));
        }
    }
    for (p, f) in out.emitted.frames() {
        sent.push((p, f.to_vec()));
    }
    sent
}

fn run1(sim: &mut Sim, frame: Vec<u8>, port: PortId) -> Vec<(PortId, Vec<u8>)> {
    run(sim, &[(frame, port)], 1_000)
}

fn drops(sim: &Sim, r: DropReason) -> u64 {
    sim.pipeline.counters().drops(r)
}

fn total_drops(sim: &Sim) -> u64 {
    sim.pipeline.counters().total_drops()
}

fn from_pod_a_udp(dst: u32, ttl: u8, payload: &[u8]) -> Vec<u8> {
    frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, dst, ttl, 40000, 53, payload)
}

fn ip_of(frame: &[u8]) -> Ipv4HeaderSlice<'_> {
    Ipv4HeaderSlice::from_slice(&frame[14..]).expect("IPv4 header")
}

#[test]
fn forwards_pod_to_pod_with_l2_rewrite_and_ttl_decrement() {
    let mut sim = Sim::new(SimOptions::default());
    let sent = run1(&mut sim, from_pod_a_udp(sim::POD_B_IP, 64, b"hello"), sim::POD_A);
    assert_eq!(sent.len(), 1);
    let (port, f) = &sent[0];
    assert_eq!(*port, sim::POD_B);
    assert_eq!(&f[0..6], &sim::POD_B_MAC.0);
    assert_eq!(&f[6..12], &sim::POD_B_PORT_MAC.0);
    let ip = ip_of(f);
    assert_eq!(ip.ttl(), 63);
    assert!(checksum::verify(ip.slice()));
    let p = SlicedPacket::from_ethernet(f).unwrap();
    match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => assert_eq!(u.payload(), b"hello"),
        t => panic!("not UDP: {t:?}"),
    }
    assert_eq!(total_drops(&sim), 0);
    let c = sim.pipeline.counters();
    assert_eq!((c.port(sim::POD_A as usize).rx_packets, c.port(sim::POD_B as usize).tx_packets), (1, 1));
}

#[test]
fn bgp_mode_routes_directly_to_the_peer_node_without_encapsulation() {
    let mut sim = Sim::new(SimOptions::default());
    let sent = run1(&mut sim, from_pod_a_udp(sim::NODE2_POD, 64, b"x"), sim::POD_A);
    assert_eq!(sent.len(), 1);
    let (port, f) = &sent[0];
    assert_eq!(*port, sim::UPLINK);
    assert_eq!(&f[0..6], &sim::NODE2_MAC.0);
    assert_eq!(&f[6..12], &sim::UPLINK_MAC.0);
    let ip = ip_of(f);
    assert_eq!(ip.protocol(), etherparse::IpNumber::UDP);
    assert_eq!(ip.destination(), sim::NODE2_POD.to_be_bytes());
}

#[test]
fn connected_subnet_hosts_are_resolved_directly() {
    let mut sim = Sim::new(SimOptions::default());
    // 192.168.1.11 is node 2, on our subnet: sent to its own MAC, not via a gateway.
    let sent = run1(&mut sim, from_pod_a_udp(sim::NODE2_IP, 64, b"x"), sim::POD_A);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, sim::UPLINK);
    assert_eq!(&sent[0].1[0..6], &sim::NODE2_MAC.0);
}

/// The per-batch neighbour cache (four entries) against many next hops interleaved in one
/// batch: every frame still gets its own next hop's MAC, and a MAC changed between batches is
/// used from the next batch on.
#[test]
fn frames_to_many_next_hops_in_one_batch_get_each_their_own_mac_and_a_new_mac_next_batch() {
    let mut sim = Sim::new(SimOptions::default());
    // Six hosts on the connected subnet (192.168.1.21-26) and node 2 via its /26, each with
    // its own MAC: more next hops than the cache holds, in runs (hits), returning after being
    // replaced, and node 2 last in the batch and first in the next.
    let mac = |h: u32| [0x02, 0xaa, 0, 0, 0, h as u8];
    let host = |h: u32| 0xc0a8_0100 | h;
    for h in 21..27 {
        sim.shared.neigh.add_static(host(h), mac(h)).unwrap();
    }
    let n2 = sim::NODE2_POD;
    let dsts: Vec<u32> = [n2, 21, 21, 22, 22, 22, 23, 24, 23, 25, 25, 21, 26, 24, 26, n2, n2]
        .into_iter()
        .map(|d| if d == n2 { d } else { host(d) })
        .collect();
    let batch: Vec<(Vec<u8>, PortId)> = dsts.iter().map(|&d| (from_pod_a_udp(d, 64, b"n"), sim::POD_A)).collect();
    let want = |d: u32, node2: [u8; 6]| if d == sim::NODE2_POD { node2 } else { mac(d & 0xff) };
    let check = |sent: &[(PortId, Vec<u8>)], node2: [u8; 6]| {
        assert_eq!(sent.len(), batch.len());
        for (port, f) in sent {
            assert_eq!(*port, sim::UPLINK);
            let d = u32::from_be_bytes(ip_of(f).destination());
            assert_eq!(&f[0..6], &want(d, node2), "frame to {d:#x}");
        }
    };
    check(&run(&mut sim, &batch, 1_000), sim::NODE2_MAC.0);
    let moved = [0x02, 0xbb, 0, 0, 0, 0x0b];
    sim.shared.neigh.add_static(sim::NODE2_IP, moved).unwrap();
    check(&run(&mut sim, &batch, 1_000), moved);
    assert_eq!(total_drops(&sim), 0);
}

#[test]
fn ipip_mode_encapsulates_node_ip_to_node_ip_copying_df_and_tos() {
    let mut sim = Sim::new(SimOptions::default());
    let mut inner = from_pod_a_udp(sim::NODE3_POD, 64, &[7u8; 100]);
    frames::set_df(&mut inner, true);
    let sent = run1(&mut sim, inner.clone(), sim::POD_A);
    assert_eq!(sent.len(), 1);
    let (port, f) = &sent[0];
    assert_eq!(*port, sim::UPLINK);
    assert_eq!(&f[0..6], &sim::GW_MAC.0, "sent to the underlay router");
    let outer = ip_of(f);
    assert_eq!(outer.protocol(), etherparse::IpNumber::IPV4);
    assert_eq!(outer.source(), sim::NODE_IP.to_be_bytes());
    assert_eq!(outer.destination(), sim::NODE3_IP.to_be_bytes());
    assert!(outer.dont_fragment());
    assert!(checksum::verify(outer.slice()));
    assert_eq!(outer.total_len() as usize, f.len() - 14);
    let inner_out = Ipv4HeaderSlice::from_slice(&f[34..]).unwrap();
    assert_eq!(inner_out.ttl(), 63);
    assert_eq!(&f[34 + 20..], &inner[14 + 20..], "payload untouched");
    assert_eq!(sim.pipeline.counters().ipip_encap.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn decapsulates_from_known_peer_and_delivers_inner_to_pod() {
    let mut sim = Sim::new(SimOptions::default());
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, 63, 1, 2, b"in");
    let f = frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &inner);
    let sent = run1(&mut sim, f, sim::UPLINK);
    assert_eq!(sent.len(), 1, "drops: {:?}", sim.pipeline.counters().drop_table());
    let (port, out) = &sent[0];
    assert_eq!(*port, sim::POD_A);
    assert_eq!(&out[0..6], &sim::POD_A_MAC.0);
    assert_eq!(ip_of(out).ttl(), 62);
    assert_eq!(&out[14 + 20..], &inner[14 + 20..]);
}

/// An ICMP error from the underlay router to node 1 about `outer` (an IPIP frame node 1 sent),
/// quoting as much as fits in 576 bytes, as a Linux router does.
fn underlay_error(ty: u8, code: u8, mtu: u16, outer: &[u8]) -> Vec<u8> {
    icmp_error_frame(sim::UNDERLAY_GW, sim::NODE_IP, ty, code, mtu as u32, &outer[14..(14 + 548).min(outer.len())])
}

/// An ICMP error from `from` to `to` quoting `quote` (IP header onwards), as an Ethernet frame
/// from the underlay router to our uplink.
fn icmp_error_frame(from: u32, to: u32, ty: u8, code: u8, rest: u32, quote: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 28 + quote.len()];
    let total = ip.len() as u16;
    ipv4::write_header(&mut ip, 0xc0, total, 3, 0, 64, PROTO_ICMP, from, to);
    ip[28..].copy_from_slice(quote);
    icmp::write_message(&mut ip[20..], ty, code, rest);
    let mut f = Vec::new();
    f.extend_from_slice(&sim::UPLINK_MAC.0);
    f.extend_from_slice(&sim::GW_MAC.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&ip);
    f
}

#[test]
fn underlay_errors_about_our_tunnel_packets_are_relayed_to_the_inner_source_rfc2003() {
    let mut sim = Sim::new(SimOptions::default());
    let mut big = from_pod_a_udp(sim::NODE3_POD, 64, &[9u8; 1400]);
    frames::set_df(&mut big, true);
    let wire = run1(&mut sim, big.clone(), sim::POD_A);
    assert_eq!(wire.len(), 1);
    let outer = &wire[0].1;
    for (ty, code, mtu, want_code, want_mtu) in [
        (icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED, 1400u16, icmp::CODE_FRAG_NEEDED, 1380u16),
        (icmp::TIME_EXCEEDED, 0, 0, icmp::CODE_HOST_UNREACHABLE, 0),
        (icmp::DEST_UNREACHABLE, icmp::CODE_NET_UNREACHABLE, 0, icmp::CODE_HOST_UNREACHABLE, 0),
    ] {
        let sent = run1(&mut sim, underlay_error(ty, code, mtu, outer), sim::UPLINK);
        assert_eq!(sent.len(), 1, "{ty}/{code}: {sent:?}");
        let (port, e) = &sent[0];
        assert_eq!(*port, sim::POD_A, "to the inner source, not the node's kernel");
        let ip = ip_of(e);
        assert_eq!((ip.source(), ip.destination()), (sim::NODE_IP.to_be_bytes(), sim::POD_A_IP.to_be_bytes()));
        let msg = &e[34..];
        assert!(checksum::verify(msg));
        assert_eq!(
            (msg[0], msg[1], u16::from_be_bytes([msg[6], msg[7]])),
            (icmp::DEST_UNREACHABLE, want_code, want_mtu)
        );
        let quoted = Ipv4HeaderSlice::from_slice(&msg[8..]).unwrap();
        assert_eq!(
            (quoted.source(), quoted.destination()),
            (sim::POD_A_IP.to_be_bytes(), sim::NODE3_POD.to_be_bytes())
        );
    }
    // An error about something else we sent (not IPIP) still goes to the node's kernel.
    let plain = from_pod_a_udp(sim::NODE2_POD, 64, b"x");
    let mut not_ipip = run1(&mut sim, plain, sim::POD_A)[0].1.clone();
    not_ipip[14 + 12..14 + 16].copy_from_slice(&sim::NODE_IP.to_be_bytes()); // "from us"
    let sent = run1(&mut sim, underlay_error(icmp::TIME_EXCEEDED, 0, 0, &not_ipip), sim::UPLINK);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::HOST]);
}

#[test]
fn encap_then_decap_returns_the_original_packet() {
    // Node 1 encapsulates towards node 3; a node configured as node 3 decapsulates.
    let mut n1 = Sim::new(SimOptions::default());
    let mut n3 = node3();
    for len in [0usize, 1, 17, 500, 1400] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let orig = from_pod_a_udp(NODE3_LOCAL_POD, 64, &payload);
        let wire = run1(&mut n1, orig.clone(), sim::POD_A);
        assert_eq!(wire.len(), 1);
        let mut on_wire = wire[0].1.clone();
        on_wire[0..6].copy_from_slice(&sim::UPLINK_MAC.0); // the underlay router's L2 hop
        let got = run1(&mut n3, on_wire, sim::UPLINK);
        assert_eq!(got.len(), 1, "len {len}: {:?}", n3.pipeline.counters().drop_table());
        let (o, g) = (&orig[14..], &got[0].1[14..]);
        assert_eq!(g.len(), o.len());
        assert_eq!(g[8], o[8] - 2, "one hop on each node");
        assert_eq!((&g[..8], &g[9..10], &g[12..]), (&o[..8], &o[9..10], &o[12..]));
        assert!(checksum::verify(&g[..20]));
    }
}

const NODE3_LOCAL_POD: u32 = sim::NODE3_POD;

/// A simulated node that plays node 3: node IP 192.168.2.20, peer node 1, pod 10.244.3.2.
fn node3() -> Sim {
    use crate::dataplane::state::*;
    let opts = SimOptions::default();
    let snap = Snapshot::build(
        sim::ports(true),
        sim::NODE3_IP,
        vec![],
        CALICO_POD_GATEWAY,
        vec![sim::NODE_IP],
        vec![Endpoint { name: "p".into(), port: sim::POD_A, mac: sim::POD_A_MAC, addrs: vec![sim::NODE3_POD] }],
        vec![
            NextHop::Unreachable,
            NextHop::Local { endpoint: 0 },
            NextHop::Tunnel { port: sim::UPLINK, remote: sim::NODE_IP, via: sim::UNDERLAY_GW },
        ],
        opts.policy.clone(),
    )
    .unwrap();
    let (shared, mut fib) = Shared::new(snap, crate::neigh::NeighTable::new(Default::default()).unwrap());
    fib.insert(sim::pfx("10.244.3.2/32"), 1);
    // Node 1's pods, back through the tunnel (what the reverse-path check wants).
    fib.insert(sim::pfx("10.244.1.0/26"), 2);
    let pipeline = Pipeline::new(shared.clone(), PipelineConfig::default());
    Sim { shared, fib, pipeline }
}

#[test]
fn ipip_is_refused_unless_from_a_known_peer_to_our_endpoint() {
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, 63, 1, 2, b"in");
    let cases = [
        // CVE-2020-10136: anyone could otherwise inject past every ACL.
        (frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, 0x0808_0808, sim::NODE_IP, &inner), DropReason::IpipUnknownPeer),
        (
            frames::ipip(
                sim::GW_MAC,
                sim::UPLINK_MAC,
                sim::NODE3_IP,
                crate::dataplane::state::CALICO_POD_GATEWAY,
                &inner,
            ),
            DropReason::IpipNotOurEndpoint,
        ),
    ];
    for (f, reason) in cases {
        let mut sim = Sim::new(SimOptions::default());
        assert!(run1(&mut sim, f, sim::UPLINK).is_empty());
        assert_eq!(drops(&sim, reason), 1, "{reason:?}");
        assert_eq!(total_drops(&sim), 1);
    }
}

/// IPIP from `peer` to us carrying UDP from `inner_src` to pod A.
fn ipip_to_pod_a(peer: u32, inner_src: u32) -> Vec<u8> {
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, inner_src, sim::POD_A_IP, 63, 1, 2, b"in");
    frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, peer, sim::NODE_IP, &inner)
}

#[test]
fn ipip_inner_sources_that_are_ours_martian_or_local_pods_are_dropped() {
    let cases = [
        (sim::NODE_IP, DropReason::IpipInnerSourceOurs),
        (crate::dataplane::state::CALICO_POD_GATEWAY, DropReason::IpipInnerSourceOurs),
        (sim::POD_B_IP, DropReason::IpipInnerSourceLocalPod),
        (0x0af4_0130, DropReason::IpipInnerSourceLocalPod), // in our block, no pod
        (0x7f00_0001, DropReason::IpipInnerSourceMartian),
    ];
    for (src, reason) in cases {
        let mut sim = Sim::new(SimOptions::default());
        assert!(run1(&mut sim, ipip_to_pod_a(sim::NODE3_IP, src), sim::UPLINK).is_empty(), "{reason:?}");
        assert_eq!((drops(&sim, reason), total_drops(&sim)), (1, 1), "{reason:?}");
    }
}

#[test]
fn ipip_inner_source_must_route_back_through_the_sending_peer_unless_loose() {
    let mut sim = Sim::new(SimOptions { default_route: true, ..Default::default() });
    // Node 3's pods and node 3 itself: fine.
    assert_eq!(run1(&mut sim, ipip_to_pod_a(sim::NODE3_IP, sim::NODE3_POD), sim::UPLINK).len(), 1);
    assert_eq!(run1(&mut sim, ipip_to_pod_a(sim::NODE3_IP, sim::NODE3_IP), sim::UPLINK).len(), 1);
    // Node 2's pods (routed to node 2), or the internet (routed to the gateway), from node 3.
    assert!(run1(&mut sim, ipip_to_pod_a(sim::NODE3_IP, sim::NODE2_POD), sim::UPLINK).is_empty());
    assert!(run1(&mut sim, ipip_to_pod_a(sim::NODE3_IP, 0x0101_0101), sim::UPLINK).is_empty());
    assert_eq!(drops(&sim, DropReason::IpipInnerSourceRpf), 2);
    // Loose: any route will do, none will not.
    let mut loose = Sim::new(SimOptions { default_route: true, ipip_strict_rpf: false, ..Default::default() });
    assert_eq!(run1(&mut loose, ipip_to_pod_a(sim::NODE3_IP, sim::NODE2_POD), sim::UPLINK).len(), 1);
    assert_eq!(run1(&mut loose, ipip_to_pod_a(sim::NODE3_IP, 0x0101_0101), sim::UPLINK).len(), 1);
    let mut loose = Sim::new(SimOptions { default_route: false, ipip_strict_rpf: false, ..Default::default() });
    assert!(run1(&mut loose, ipip_to_pod_a(sim::NODE3_IP, 0x0101_0101), sim::UPLINK).is_empty());
    assert_eq!(drops(&loose, DropReason::IpipInnerSourceRpf), 1);
}

#[test]
fn ipip_rpf_accepts_a_source_behind_any_path_of_an_ecmp_group() {
    let opts = SimOptions::default();
    let mut sim = Sim::new(opts.clone());
    let mut nhs = sim::nexthops(true);
    let ecmp = nhs.len() as NhId;
    nhs.push(NextHop::Ecmp(vec![sim::NH_NODE2, sim::NH_NODE3_IPIP].into_boxed_slice()));
    let mut snap = sim::snapshot(&opts);
    snap.nexthops = nhs;
    sim.shared.publish(snap);
    sim.fib.insert(sim::pfx("10.50.0.0/16"), ecmp);
    assert_eq!(run1(&mut sim, ipip_to_pod_a(sim::NODE3_IP, 0x0a32_0001), sim::UPLINK).len(), 1);
    assert_eq!(run1(&mut sim, ipip_to_pod_a(sim::NODE2_IP, 0x0a32_0001), sim::UPLINK).len(), 1);
    assert_eq!(total_drops(&sim), 0);
}

/// IPIP from `peer` to us carrying `inner` (an IPv4 frame).
fn ipip_from(peer: u32, inner: &[u8]) -> Vec<u8> {
    frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, peer, sim::NODE_IP, inner)
}

#[test]
fn ipip_to_the_node_itself_is_checked_against_the_route_back_before_the_kernel_gets_it() {
    // Review finding 1: what is decapsulated for the node's kernel never reached egress, where
    // the reverse-path check ran; node 2's pods are not behind node 3.
    let tcp = frames::tcp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE2_POD, sim::NODE_IP, 40000, 10250, true, false);
    let mut sim = Sim::new(SimOptions::default());
    assert!(run1(&mut sim, ipip_from(sim::NODE3_IP, &tcp), sim::UPLINK).is_empty());
    assert_eq!((drops(&sim, DropReason::IpipInnerSourceRpf), total_drops(&sim)), (1, 1));
    // Node 3's pods are: delivered to the kernel.
    let ok = frames::tcp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::NODE_IP, 40000, 10250, true, false);
    let sent = run1(&mut sim, ipip_from(sim::NODE3_IP, &ok), sim::UPLINK);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::HOST]);
    // Loose mode: any route back will do.
    let mut loose = Sim::new(SimOptions { ipip_strict_rpf: false, ..Default::default() });
    assert_eq!(run1(&mut loose, ipip_from(sim::NODE3_IP, &tcp), sim::UPLINK).len(), 1);
}

#[test]
fn ipip_with_a_forged_inner_source_gets_no_icmp_error_and_spends_no_token() {
    // Review finding 9: inner TTL 1 to a pod, inner source not behind the sending peer.
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE2_POD, sim::POD_A_IP, 1, 1, 2, b"in");
    let mut sim = Sim::new(SimOptions::default());
    assert!(run1(&mut sim, ipip_from(sim::NODE3_IP, &inner), sim::UPLINK).is_empty());
    assert_eq!((drops(&sim, DropReason::IpipInnerSourceRpf), total_drops(&sim)), (1, 1));
    let c = sim.pipeline.counters();
    assert_eq!(c.icmp_errors_sent.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert_eq!(c.icmp_errors_ratelimited.load(std::sync::atomic::Ordering::Relaxed), 0);
    // From the right peer, the same datagram is answered time exceeded (sent back by IPIP).
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, 1, 1, 2, b"in");
    assert_eq!(run1(&mut sim, ipip_from(sim::NODE3_IP, &inner), sim::UPLINK).len(), 1);
    assert_eq!(drops(&sim, DropReason::Ipv4TtlExpired), 1);
    assert_eq!(sim.pipeline.counters().icmp_errors_sent.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn plain_frames_from_the_uplink_with_a_source_in_our_pod_block_are_dropped() {
    let mut sim = Sim::new(SimOptions::default());
    let f = frames::udp(sim::NODE2_MAC, sim::UPLINK_MAC, sim::POD_B_IP, sim::POD_A_IP, 64, 1, 2, b"spoof");
    assert!(run1(&mut sim, f, sim::UPLINK).is_empty());
    assert_eq!(drops(&sim, DropReason::UplinkPodSource), 1);
}

#[test]
fn ipip_outer_fragments_nested_tunnels_and_bad_inner_are_dropped() {
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, 63, 1, 2, b"in");
    let mut frag = frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &inner);
    {
        let mut ip = Ipv4Packet::new_checked(&mut frag[14..]).unwrap();
        ip.set_flags_frag(ipv4::FLAG_MF);
        ip.fill_checksum();
    }
    let nested = frames::ipip(
        sim::GW_MAC,
        sim::UPLINK_MAC,
        sim::NODE3_IP,
        sim::NODE_IP,
        &frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, &inner),
    );
    let mut bad_inner = frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &inner);
    bad_inner[34 + 10] ^= 0xff; // inner header checksum
    for (f, reason) in
        [(frag, DropReason::IpipOuterFragment), (nested, DropReason::IpipNested), (bad_inner, DropReason::IpipBadInner)]
    {
        let mut sim = Sim::new(SimOptions::default());
        assert!(run1(&mut sim, f, sim::UPLINK).is_empty());
        assert_eq!(drops(&sim, reason), 1, "{reason:?}: {:?}", sim.pipeline.counters().drop_table());
    }
}

#[test]
fn pods_may_not_send_ipip_or_spoof_their_source() {
    let mut sim = Sim::new(SimOptions::default());
    let inner = from_pod_a_udp(sim::POD_B_IP, 64, b"x");
    let tunnel = frames::ipip(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, &inner);
    assert!(run1(&mut sim, tunnel, sim::POD_A).is_empty());
    assert_eq!(drops(&sim, DropReason::IpipFromPod), 1);
    let spoof = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_B_IP, sim::NODE2_POD, 64, 1, 2, b"x");
    assert!(run1(&mut sim, spoof, sim::POD_A).is_empty());
    assert_eq!(drops(&sim, DropReason::SpoofedSource), 1);
    assert_eq!(total_drops(&sim), 2);
}

/// Checks `f` is an ICMP error of `ty`/`code` from the node to pod A, quoting `orig`'s header.
fn assert_icmp_error_to_pod_a(f: &[u8], ty: u8, code: u8, orig: &[u8]) -> u32 {
    assert_eq!(&f[0..6], &sim::POD_A_MAC.0);
    let ip = ip_of(f);
    assert_eq!(ip.protocol(), etherparse::IpNumber::ICMP);
    assert_eq!(ip.source(), sim::NODE_IP.to_be_bytes());
    assert_eq!(ip.destination(), sim::POD_A_IP.to_be_bytes());
    assert!(checksum::verify(ip.slice()));
    let msg = &f[34..];
    assert!(checksum::verify(msg), "ICMP checksum");
    assert_eq!((msg[0], msg[1]), (ty, code));
    // The quote starts with the original header (TTL may differ by the decrement) and ports.
    assert_eq!(&msg[8 + 12..8 + 20], &orig[14 + 12..14 + 20], "quoted addresses");
    assert_eq!(&msg[8 + 20..8 + 28], &orig[34..42], "quoted first 8 bytes of payload");
    assert!(f.len() - 14 <= 576);
    u32::from_be_bytes(msg[4..8].try_into().unwrap())
}

#[test]
fn ttl_1_in_transit_is_dropped_with_time_exceeded() {
    let mut sim = Sim::new(SimOptions::default());
    let orig = from_pod_a_udp(sim::POD_B_IP, 1, b"trace");
    let sent = run1(&mut sim, orig.clone(), sim::POD_A);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, sim::POD_A);
    assert_icmp_error_to_pod_a(&sent[0].1, icmp::TIME_EXCEEDED, 0, &orig);
    assert_eq!(drops(&sim, DropReason::Ipv4TtlExpired), 1);
    assert_eq!(total_drops(&sim), 1);
}

#[test]
fn ttl_1_to_the_router_itself_is_delivered() {
    let mut sim = Sim::new(SimOptions::default());
    let ping = frames::ping(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, 1, 9, 1, b"p");
    let sent = run1(&mut sim, ping, sim::POD_A);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1[34], icmp::ECHO_REPLY);
}

#[test]
fn no_route_sends_net_unreachable() {
    let mut sim = Sim::new(SimOptions::default());
    let orig = from_pod_a_udp(0x0808_0808, 64, b"dns");
    let sent = run1(&mut sim, orig.clone(), sim::POD_A);
    assert_eq!(sent.len(), 1);
    assert_icmp_error_to_pod_a(&sent[0].1, icmp::DEST_UNREACHABLE, icmp::CODE_NET_UNREACHABLE, &orig);
    assert_eq!(drops(&sim, DropReason::NoRoute), 1);
}

#[test]
fn blackhole_drops_silently() {
    let mut sim = Sim::new(SimOptions::default());
    // 10.244.1.9 is in the local block aggregate but no pod has it.
    assert!(run1(&mut sim, from_pod_a_udp(0x0af4_0109, 64, b"x"), sim::POD_A).is_empty());
    assert_eq!(drops(&sim, DropReason::Blackhole), 1);
    assert_eq!(sim.pipeline.counters().icmp_errors_sent.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn df_packet_too_big_for_the_tunnel_gets_frag_needed_with_mtu_minus_20() {
    let mut sim = Sim::new(SimOptions::default());
    // A 1500-byte IP packet (1472-byte ping payload + 28) with DF, to a pod behind IPIP.
    let mut orig =
        frames::ping(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE3_POD, 64, 1, 1, &[0; 1472]);
    frames::set_df(&mut orig, true);
    let sent = run1(&mut sim, orig.clone(), sim::POD_A);
    assert_eq!(sent.len(), 1);
    let mtu = assert_icmp_error_to_pod_a(&sent[0].1, icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED, &orig);
    assert_eq!(mtu, 1480);
    assert_eq!(drops(&sim, DropReason::FragNeeded), 1);
    // etherparse decodes the same MTU.
    let p = SlicedPacket::from_ethernet(&sent[0].1).unwrap();
    match p.transport {
        Some(etherparse::TransportSlice::Icmpv4(i)) => assert_eq!(
            i.icmp_type(),
            etherparse::Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1480 }
            )
        ),
        t => panic!("not ICMP: {t:?}"),
    }
}

#[test]
fn packet_without_df_is_fragmented_before_encapsulation() {
    let mut sim = Sim::new(SimOptions::default());
    let payload: Vec<u8> = (0..1472u32).map(|i| i as u8).collect();
    let mut orig = from_pod_a_udp(sim::NODE3_POD, 64, &payload);
    frames::set_df(&mut orig, false);
    let sent = run1(&mut sim, orig.clone(), sim::POD_A);
    assert_eq!(sent.len(), 2, "{:?}", sim.pipeline.counters().drop_table());
    let mut data = vec![0u8; 1480];
    for (port, f) in &sent {
        assert_eq!(*port, sim::UPLINK);
        assert!(f.len() - 14 <= 1500, "fits the uplink MTU");
        let outer = ip_of(f);
        assert_eq!(outer.protocol(), etherparse::IpNumber::IPV4);
        assert!(!outer.is_fragmenting_payload(), "the outer packet is never fragmented");
        let inner = Ipv4HeaderSlice::from_slice(&f[34..]).unwrap();
        assert!(checksum::verify(inner.slice()));
        let off = inner.fragments_offset().byte_offset() as usize;
        let pl = &f[34 + 20..34 + inner.total_len() as usize];
        data[off..off + pl.len()].copy_from_slice(pl);
    }
    assert_eq!(&data[..], &orig[34..], "inner fragments reassemble to the original payload");
    assert_eq!(total_drops(&sim), 0);
}

#[test]
fn echo_to_node_ip_and_pod_gateway_is_answered() {
    for dst in [sim::NODE_IP, crate::dataplane::state::CALICO_POD_GATEWAY] {
        let mut sim = Sim::new(SimOptions::default());
        let ping = frames::ping(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, dst, 64, 0x77, 3, b"abcdefgh");
        let sent = run1(&mut sim, ping, sim::POD_A);
        assert_eq!(sent.len(), 1, "{:?}", sim.pipeline.counters().drop_table());
        let (port, f) = &sent[0];
        assert_eq!(*port, sim::POD_A);
        let p = SlicedPacket::from_ethernet(f).unwrap();
        match p.transport {
            Some(etherparse::TransportSlice::Icmpv4(i)) => {
                assert_eq!(
                    i.icmp_type(),
                    etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 0x77, seq: 3 })
                );
                assert_eq!(i.payload(), b"abcdefgh");
            }
            t => panic!("not ICMP: {t:?}"),
        }
        let ip = ip_of(f);
        assert_eq!((ip.source(), ip.destination()), (dst.to_be_bytes(), sim::POD_A_IP.to_be_bytes()));
    }
}

#[test]
fn host_bound_traffic_is_addressed_to_the_kernels_mac_or_counted() {
    let tcp = frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, 40000, 22, true, false);
    let mut with = Sim::new(SimOptions::default());
    let sent = run1(&mut with, tcp.clone(), sim::POD_A);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::HOST]);
    let f = &sent[0].1;
    // The pod addressed the pod gateway's MAC; the kernel only takes frames to its own.
    assert_eq!(&f[0..6], &sim::HOST_KERNEL_MAC.0, "to the kernel's MAC");
    assert_eq!(&f[6..12], &sim::HOST_MAC.0, "from ours");
    assert_eq!(&f[12..], &tcp[12..], "IP packet unchanged (no TTL decrement: delivered, not forwarded)");
    let mut without = Sim::new(SimOptions { host_port: false, ..Default::default() });
    assert!(run1(&mut without, tcp, sim::POD_A).is_empty());
    assert_eq!(drops(&without, DropReason::LocalNoPunt), 1);
}

/// What the node's kernel sends: from its MAC to the MAC it resolved (its gateway's, say).
fn from_host_udp(dmac: crate::wire::MacAddr, src: u32, dst: u32, payload: &[u8]) -> Vec<u8> {
    frames::udp(sim::HOST_KERNEL_MAC, dmac, src, dst, 64, 33000, 7, payload)
}

#[test]
fn host_to_local_pod_is_routed_not_sent_to_the_uplink() {
    let mut sim = Sim::new(SimOptions::default());
    // The kernel's routes to the pod blocks point at the pod gateway: it addresses our MAC.
    let f = from_host_udp(sim::HOST_MAC, sim::NODE_IP, sim::POD_A_IP, b"probe");
    let sent = run1(&mut sim, f.clone(), sim::HOST);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (port, out) = &sent[0];
    assert_eq!(*port, sim::POD_A);
    assert_eq!((&out[0..6], &out[6..12]), (&sim::POD_A_MAC.0[..], &sim::POD_A_PORT_MAC.0[..]));
    assert_eq!(ip_of(out).ttl(), 64, "the node's own packet: no TTL decrement");
    assert_eq!(&out[14..], &f[14..]);
    assert_eq!(total_drops(&sim), 0);
}

#[test]
fn host_to_other_nodes_goes_plain_or_ipip_and_to_the_underlay_via_the_gateway() {
    let mut sim = Sim::new(SimOptions { default_route: true, ..Default::default() });
    // To a pod of node 3 (IPIP): encapsulated node IP to node IP, inner source the node IP.
    let sent = run1(&mut sim, from_host_udp(sim::GW_MAC, sim::NODE_IP, sim::NODE3_POD, b"x"), sim::HOST);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let outer = ip_of(&sent[0].1);
    assert_eq!((sent[0].0, outer.protocol()), (sim::UPLINK, etherparse::IpNumber::IPV4));
    assert_eq!(outer.destination(), sim::NODE3_IP.to_be_bytes());
    let inner = Ipv4HeaderSlice::from_slice(&sent[0].1[34..]).unwrap();
    assert_eq!((inner.source(), inner.ttl()), (sim::NODE_IP.to_be_bytes(), 64));
    // To a pod of node 2 (BGP mode): straight to node 2's MAC.
    let sent = run1(&mut sim, from_host_udp(sim::GW_MAC, sim::NODE_IP, sim::NODE2_POD, b"x"), sim::HOST);
    assert_eq!((sent[0].0, &sent[0].1[0..6]), (sim::UPLINK, &sim::NODE2_MAC.0[..]));
    // To the internet: via the underlay gateway, rewritten from our uplink MAC, whatever the
    // kernel addressed (here our host-port MAC).
    let sent = run1(&mut sim, from_host_udp(sim::HOST_MAC, sim::NODE_IP, 0x0101_0101, b"x"), sim::HOST);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (port, f) = &sent[0];
    assert_eq!(*port, sim::UPLINK);
    assert_eq!((&f[0..6], &f[6..12]), (&sim::GW_MAC.0[..], &sim::UPLINK_MAC.0[..]));
    assert_eq!(ip_of(f).ttl(), 64);
    assert_eq!(total_drops(&sim), 0);
}

#[test]
fn host_arp_for_the_pod_gateway_is_answered_and_other_arp_leaves_unchanged() {
    let mut sim = Sim::new(SimOptions::default());
    let mut req = vec![0u8; 60];
    let n = crate::wire::arp::build_request(&mut req, sim::HOST_KERNEL_MAC.0, sim::NODE_IP, CALICO_POD_GATEWAY_IP);
    req.truncate(n);
    let sent = run1(&mut sim, req, sim::HOST);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, sim::HOST);
    let a = crate::wire::arp::ArpPacket::new_checked(&sent[0].1[14..]).unwrap();
    assert_eq!((a.operation(), a.sender_ip(), a.sender_mac()), (2, CALICO_POD_GATEWAY_IP, sim::HOST_MAC.0));
    // The kernel resolving its underlay neighbours: out on the uplink as it is.
    let mut req = vec![0u8; 60];
    let n = crate::wire::arp::build_request(&mut req, sim::HOST_KERNEL_MAC.0, sim::NODE_IP, sim::UNDERLAY_GW);
    req.truncate(n);
    assert_eq!(run1(&mut sim, req.clone(), sim::HOST), vec![(sim::UPLINK, req)]);
}

#[test]
fn host_traffic_without_a_route_keeps_the_kernels_choice_of_neighbour() {
    let mut sim = Sim::new(SimOptions { default_route: false, ..Default::default() });
    // Addressed to the kernel's own gateway: leaves as it is.
    let f = from_host_udp(sim::GW_MAC, sim::NODE_IP, 0x0101_0101, b"x");
    assert_eq!(run1(&mut sim, f.clone(), sim::HOST), vec![(sim::UPLINK, f)]);
    // Addressed to us (routes via the pod gateway): no route, ICMP net unreachable to the kernel.
    let sent = run1(&mut sim, from_host_udp(sim::HOST_MAC, sim::NODE_IP, 0x0101_0101, b"x"), sim::HOST);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].0, &sent[0].1[0..6]), (sim::HOST, &sim::HOST_KERNEL_MAC.0[..]));
    assert_eq!((sent[0].1[34], sent[0].1[35]), (3, 0));
    assert_eq!(drops(&sim, DropReason::NoRoute), 1);
}

/// A sim with a default route, and 10.9.0.0/24 unreachable, 10.9.1.0/24 prohibit under it.
fn lab_with_reject_routes() -> Sim {
    let opts = SimOptions { default_route: true, ..Default::default() };
    let mut sim = Sim::new(opts.clone());
    let mut nhs = sim::nexthops(true);
    let (unreach, prohibit) = (nhs.len() as NhId, nhs.len() as NhId + 1);
    nhs.extend([NextHop::NetUnreachable, NextHop::Prohibit]);
    let snap = Snapshot::build(
        sim::ports(true),
        sim::NODE_IP,
        vec![],
        CALICO_POD_GATEWAY_IP,
        vec![sim::NODE2_IP, sim::NODE3_IP],
        sim::endpoints(),
        nhs,
        opts.policy.clone(),
    )
    .unwrap();
    sim.shared.publish(snap);
    sim.fib.insert(sim::pfx("10.9.0.0/24"), unreach);
    sim.fib.insert(sim::pfx("10.9.1.0/24"), prohibit);
    sim
}

#[test]
fn unreachable_and_prohibit_routes_answer_icmp_under_a_default_route() {
    let mut sim = lab_with_reject_routes();
    for (dst, code, reason) in [
        (0x0a09_0005, icmp::CODE_NET_UNREACHABLE, DropReason::RouteUnreachable),
        (0x0a09_0105, icmp::CODE_ADMIN_PROHIBITED, DropReason::RouteProhibited),
    ] {
        let sent = run1(&mut sim, from_pod_a_udp(dst, 64, b"x"), sim::POD_A);
        assert_eq!(sent.len(), 1, "{sent:?}");
        let (port, e) = &sent[0];
        assert_eq!(*port, sim::POD_A, "answered, not forwarded by the default route");
        let ip = ip_of(e);
        assert_eq!((ip.protocol(), ip.destination()), (etherparse::IpNumber::ICMP, sim::POD_A_IP.to_be_bytes()));
        assert_eq!((e[34], e[35]), (icmp::DEST_UNREACHABLE, code));
        assert_eq!(drops(&sim, reason), 1, "{reason:?}");
    }
    assert_eq!(drops(&sim, DropReason::NoRoute), 0);
    // Beside them, the default route still forwards.
    let sent = run1(&mut sim, from_pod_a_udp(0x0a09_0205, 64, b"x"), sim::POD_A);
    assert_eq!((sent[0].0, &sent[0].1[0..6]), (sim::UPLINK, &sim::GW_MAC.0[..]));
}

#[test]
fn trace_shows_an_unreachable_route_as_a_drop_answered_with_icmp() {
    let mut sim = lab_with_reject_routes();
    sim.shared.observe.start_trace(1, Some(sim::POD_A)).unwrap();
    assert_eq!(run1(&mut sim, from_pod_a_udp(0x0a09_0005, 64, b"x"), sim::POD_A).len(), 1);
    let (recs, _) = sim.shared.observe.take_trace();
    let r = &recs[0];
    assert_eq!((r.verdict.as_str(), r.drop_reason.as_deref()), ("drop", Some("fib/unreachable")), "{r:?}");
    assert!(r.steps.iter().any(|s| s.contains("NetUnreachable")), "{:?}", r.steps);
    assert!(r.steps.iter().any(|s| s.starts_with("icmp: answered")), "{:?}", r.steps);
}

#[test]
fn host_ping_to_the_pod_gateway_is_answered_and_other_traffic_to_it_dropped() {
    let mut sim = Sim::new(SimOptions::default());
    let p = frames::ping(sim::HOST_KERNEL_MAC, sim::HOST_MAC, sim::NODE_IP, CALICO_POD_GATEWAY_IP, 64, 5, 1, b"hi");
    let sent = run1(&mut sim, p, sim::HOST);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].0, &sent[0].1[0..6]), (sim::HOST, &sim::HOST_KERNEL_MAC.0[..]));
    assert_eq!(sent[0].1[34], icmp::ECHO_REPLY);
    let u = from_host_udp(sim::HOST_MAC, sim::NODE_IP, CALICO_POD_GATEWAY_IP, b"x");
    assert!(run1(&mut sim, u, sim::HOST).is_empty(), "not handed back to the kernel (a loop)");
    assert_eq!(drops(&sim, DropReason::HostToRouterAddress), 1);
}

const CALICO_POD_GATEWAY_IP: u32 = crate::dataplane::state::CALICO_POD_GATEWAY;

#[test]
fn kernel_forwarded_traffic_with_a_clients_source_reaches_local_pods_and_other_nodes() {
    // kube-proxy NodePort with externalTrafficPolicy: Local: the kernel forwards the client's
    // packet, source preserved, to a pod (review finding 7).
    let client = 0x0c22_3845; // 12.34.56.69
    let mut sim = Sim::new(SimOptions { default_route: true, ..Default::default() });
    let sent = run1(&mut sim, from_host_udp(sim::HOST_MAC, client, sim::POD_A_IP, b"nodeport"), sim::HOST);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::POD_A]);
    assert_eq!(ip_of(&sent[0].1).source(), client.to_be_bytes());
    let sent = run1(&mut sim, from_host_udp(sim::HOST_MAC, client, sim::NODE2_POD, b"nodeport"), sim::HOST);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::UPLINK]);
    assert_eq!(total_drops(&sim), 0);
}

#[test]
fn host_frames_from_our_pods_addresses_are_dropped_and_counted() {
    let mut sim = Sim::new(SimOptions { default_route: true, ..Default::default() });
    // A local pod's address, another address of our pod block: only the pods may send from them.
    for src in [sim::POD_B_IP, 0x0af4_0130] {
        let f = from_host_udp(sim::GW_MAC, src, sim::POD_A_IP, b"spoof");
        assert!(run1(&mut sim, f, sim::HOST).is_empty(), "{src:#x}");
    }
    // A martian source.
    assert!(run1(&mut sim, from_host_udp(sim::GW_MAC, 0x7f00_0001, sim::POD_A_IP, b"x"), sim::HOST).is_empty());
    assert_eq!(drops(&sim, DropReason::HostSpoofedSource), 2);
    assert_eq!(total_drops(&sim), 3);
    // Link broadcast (DHCP, say) still leaves unchanged, whatever its source.
    let mut b = from_host_udp(sim::GW_MAC, 0, 0xffff_ffff, b"dhcp");
    b[0..6].copy_from_slice(&[0xff; 6]);
    assert_eq!(run1(&mut sim, b.clone(), sim::HOST), vec![(sim::UPLINK, b)]);
}

#[test]
fn host_packet_too_big_for_the_tunnel_gets_frag_needed_back() {
    let mut sim = Sim::new(SimOptions::default());
    let mut f = from_host_udp(sim::GW_MAC, sim::NODE_IP, sim::NODE3_POD, &[0u8; 1472]);
    frames::set_df(&mut f, true);
    let sent = run1(&mut sim, f, sim::HOST);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (port, e) = &sent[0];
    assert_eq!(*port, sim::HOST);
    assert_eq!(&e[0..6], &sim::HOST_KERNEL_MAC.0);
    let ip = ip_of(e);
    assert_eq!((ip.source(), ip.destination()), (sim::NODE_IP.to_be_bytes(), sim::NODE_IP.to_be_bytes()));
    let icmp = &e[34..];
    assert_eq!((icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]])), (3, 4, 1480));
}

#[test]
fn l2_input_drops_are_counted_by_reason() {
    let good = from_pod_a_udp(sim::POD_B_IP, 64, b"x");
    let mut wrong_mac = good.clone();
    wrong_mac[0..6].copy_from_slice(&[0x02, 9, 9, 9, 9, 9]);
    let mut bcast = good.clone();
    bcast[0..6].copy_from_slice(&[0xff; 6]);
    let mut mcast_src = good.clone();
    mcast_src[6] = 0x01;
    let mut vlan = good.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    let mut v6 = good.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let cases = [
        (good[..13].to_vec(), DropReason::EthTruncated),
        (wrong_mac, DropReason::EthNotForUs),
        (bcast, DropReason::EthBroadcastIp),
        (mcast_src, DropReason::EthBadSource),
        (vlan, DropReason::EthVlan),
        (v6, DropReason::EthUnsupportedType),
    ];
    for (f, reason) in cases {
        let mut sim = Sim::new(SimOptions::default());
        assert!(run1(&mut sim, f, sim::POD_A).is_empty(), "{reason:?}");
        assert_eq!(drops(&sim, reason), 1, "{reason:?}");
        assert_eq!(total_drops(&sim), 1, "{reason:?}");
    }
}

#[test]
fn link_broadcast_on_the_uplink_goes_to_the_host_port_only() {
    let mut f = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, 0xc0a8_0163, 0xffff_ffff, 64, 68, 67, b"dhcp");
    f[0..6].copy_from_slice(&[0xff; 6]);
    let mut with_host = Sim::new(SimOptions::default());
    let sent = run1(&mut with_host, f.clone(), sim::UPLINK);
    assert_eq!(sent, vec![(sim::HOST, f.clone())]);
    let mut no_host = Sim::new(SimOptions { host_port: false, ..Default::default() });
    assert!(run1(&mut no_host, f, sim::UPLINK).is_empty());
    assert_eq!(drops(&no_host, DropReason::EthBroadcastIp), 1);
}

#[test]
fn unknown_ethertypes_are_punted_where_the_port_says_so() {
    let mut sim = Sim::new(SimOptions::default());
    let mut v6 = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE2_IP, sim::NODE_IP, 64, 1, 2, b"x");
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let sent = run1(&mut sim, v6, sim::UPLINK);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::HOST]);
}

#[test]
fn ipv4_input_drops_are_counted_by_reason() {
    let good = from_pod_a_udp(sim::POD_B_IP, 64, b"payload!");
    let refix = |mut f: Vec<u8>| {
        Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
        f
    };
    let mut bad_csum = good.clone();
    bad_csum[14 + 10] ^= 1;
    let mut bad_ver = good.clone();
    bad_ver[14] = 0x65;
    let mut ihl4 = good.clone();
    ihl4[14] = 0x44;
    let mut long = good.clone();
    long[16..18].copy_from_slice(&200u16.to_be_bytes());
    let mut mart_dst = good.clone();
    mart_dst[30..34].copy_from_slice(&[127, 0, 0, 1]);
    let mut mcast_dst = good.clone();
    mcast_dst[30..34].copy_from_slice(&[224, 0, 0, 5]);
    let mut lsrr = good.clone();
    // grow the header to 28 bytes with an LSRR option (83 07 04 c0000201 00)
    lsrr.splice(34..34, [0x83, 7, 4, 192, 0, 2, 1, 0]);
    lsrr[14] = 0x47;
    let tl = (lsrr.len() - 14) as u16;
    lsrr[16..18].copy_from_slice(&tl.to_be_bytes());
    let cases = [
        (good[..14 + 19].to_vec(), DropReason::Ipv4Truncated),
        (bad_csum, DropReason::Ipv4BadChecksum),
        (refix(bad_ver), DropReason::Ipv4BadVersion),
        (refix(ihl4), DropReason::Ipv4BadIhl),
        (refix(long), DropReason::Ipv4BadLength),
        (refix(mart_dst), DropReason::Ipv4MartianDest),
        (refix(mcast_dst), DropReason::Ipv4NoMulticast),
        (refix(lsrr), DropReason::Ipv4SourceRoute),
    ];
    for (f, reason) in cases {
        let mut sim = Sim::new(SimOptions::default());
        assert!(run1(&mut sim, f, sim::POD_A).is_empty(), "{reason:?}");
        assert_eq!(drops(&sim, reason), 1, "{reason:?}: {:?}", sim.pipeline.counters().drop_table());
        assert_eq!(total_drops(&sim), 1, "{reason:?}");
    }
}

#[test]
fn martian_source_from_the_uplink_is_dropped() {
    let mut sim = Sim::new(SimOptions::default());
    let f = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, 0x7f00_0001, sim::POD_A_IP, 64, 1, 2, b"x");
    assert!(run1(&mut sim, f, sim::UPLINK).is_empty());
    assert_eq!(drops(&sim, DropReason::Ipv4MartianSource), 1);
}

#[test]
fn ethernet_padding_is_trimmed() {
    let mut sim = Sim::new(SimOptions::default());
    let mut f = from_pod_a_udp(sim::POD_B_IP, 64, b"");
    let ip_len = f.len() - 14;
    f.resize(60, 0xee);
    let sent = run1(&mut sim, f, sim::POD_A);
    assert_eq!(sent[0].1.len(), 14 + ip_len);
}

#[test]
fn fragments_to_the_router_are_not_reassembled() {
    let mut sim = Sim::new(SimOptions::default());
    let mut f = frames::ping(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, 64, 1, 1, b"x");
    let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
    ip.set_flags_frag(ipv4::FLAG_MF);
    ip.fill_checksum();
    assert!(run1(&mut sim, f, sim::POD_A).is_empty());
    assert_eq!(drops(&sim, DropReason::Ipv4FragmentToUs), 1);
}

#[test]
fn no_icmp_error_about_icmp_errors_or_non_first_fragments() {
    let mut sim = Sim::new(SimOptions::default());
    // An ICMP time-exceeded from pod A with TTL 1 in transit: dropped, no error about it.
    let b = etherparse::PacketBuilder::ethernet2(sim::POD_A_MAC.0, sim::POD_A_PORT_MAC.0)
        .ipv4(sim::POD_A_IP.to_be_bytes(), sim::POD_B_IP.to_be_bytes(), 1)
        .icmpv4(etherparse::Icmpv4Type::TimeExceeded(etherparse::icmpv4::TimeExceededCode::TtlExceededInTransit));
    let mut err = vec![];
    b.write(&mut err, &[0u8; 28]).unwrap();
    // A non-first fragment with TTL 1.
    let mut frag = from_pod_a_udp(sim::POD_B_IP, 1, &[0; 16]);
    let mut ip = Ipv4Packet::new_checked(&mut frag[14..]).unwrap();
    ip.set_flags_frag(2);
    ip.fill_checksum();
    let sent = run(&mut sim, &[(err, sim::POD_A), (frag, sim::POD_A)], 1);
    assert!(sent.is_empty());
    assert_eq!(drops(&sim, DropReason::Ipv4TtlExpired), 2);
    assert_eq!(sim.pipeline.counters().icmp_errors_sent.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn malformed_options_get_parameter_problem_pointing_at_the_bad_octet() {
    let mut sim = Sim::new(SimOptions::default());
    let mut f = from_pod_a_udp(sim::POD_B_IP, 64, b"opts");
    // Record route claiming 39 bytes in a 4-byte option area.
    f.splice(34..34, [7u8, 39, 4, 0]);
    f[14] = 0x46;
    let tl = u16::from_be_bytes([f[16], f[17]]) + 4;
    f[16..18].copy_from_slice(&tl.to_be_bytes());
    Ipv4Packet::new_checked(&mut f[14..]).unwrap().fill_checksum();
    let sent = run1(&mut sim, f.clone(), sim::POD_A);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (port, e) = &sent[0];
    assert_eq!(*port, sim::POD_A, "back to the sender");
    let ip = ip_of(e);
    assert_eq!(ip.destination(), sim::POD_A_IP.to_be_bytes());
    let icmp = &e[34..];
    assert_eq!((icmp[0], icmp[1], icmp[4]), (icmp::PARAMETER_PROBLEM, 0, 21), "12/0, pointer at the length byte");
    assert!(checksum::verify(icmp));
    assert_eq!(&icmp[8..8 + 24], &f[14..14 + 24], "quotes the header with its options");
    assert_eq!(drops(&sim, DropReason::Ipv4BadOptions), 1);
}

#[test]
fn icmp_errors_are_rate_limited() {
    let cfg = PipelineConfig { icmp_rate_per_sec: 1, icmp_burst: 3, ..Default::default() };
    let mut sim = Sim::new(SimOptions { pipeline: cfg, ..Default::default() });
    let batch: Vec<_> = (0..10).map(|_| (from_pod_a_udp(sim::POD_B_IP, 1, b"x"), sim::POD_A)).collect();
    let sent = run(&mut sim, &batch, 5_000);
    assert_eq!(sent.len(), 3);
    let c = sim.pipeline.counters();
    assert_eq!(c.icmp_errors_ratelimited.load(std::sync::atomic::Ordering::Relaxed), 7);
    assert_eq!(drops(&sim, DropReason::Ipv4TtlExpired), 10);
}

#[test]
fn ecmp_spreads_flows_and_keeps_each_flow_on_one_path() {
    use crate::dataplane::state::*;
    let mut nhs = sim::nexthops(true);
    nhs.push(NextHop::Ecmp(vec![sim::NH_NODE2, sim::NH_UNDERLAY].into_boxed_slice()));
    let ecmp = (nhs.len() - 1) as NhId;
    let opts = SimOptions::default();
    let snap = Snapshot::build(
        sim::ports(true),
        sim::NODE_IP,
        vec![],
        CALICO_POD_GATEWAY,
        vec![],
        sim::endpoints(),
        nhs,
        opts.policy.clone(),
    )
    .unwrap();
    let mut sim = Sim::new(opts);
    sim.shared.publish(snap);
    sim.fib.insert(sim::pfx("203.0.113.0/24"), ecmp);
    let mut seen = std::collections::HashMap::new();
    for sport in 0..64u16 {
        for _ in 0..2 {
            let f =
                frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, 0xcb00_7107, 64, 1000 + sport, 80, b"");
            let sent = run1(&mut sim, f, sim::POD_A);
            let mac = sent[0].1[0..6].to_vec();
            assert_eq!(*seen.entry(sport).or_insert(mac.clone()), mac, "flow {sport} changed path");
        }
    }
    let paths: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(paths.len(), 2, "both members used");
}

#[test]
fn frames_whose_next_hop_never_resolves_are_answered_host_unreachable() {
    let mut sim = Sim::new(SimOptions { static_neighbours: false, ..Default::default() });
    let f = from_pod_a_udp(sim::NODE2_POD, 64, b"held");
    run(&mut sim, &[(f.clone(), sim::POD_A), (f, sim::POD_A)], 1_000);
    assert_eq!(sim.pipeline.hold.len(), 2);
    // Past the hold timeout, the next pass answers both (RFC 1812 4.3.3.1).
    let sent = run(&mut sim, &[], 1_000 + PipelineConfig::default().hold_timeout_ms);
    let errors: Vec<_> = sent.iter().filter(|(p, _)| *p == sim::POD_A).collect();
    assert_eq!(errors.len(), 2, "{sent:?}");
    for (_, e) in errors {
        assert_eq!(&e[0..6], &sim::POD_A_MAC.0);
        let ip = ip_of(e);
        assert_eq!((ip.source(), ip.destination()), (sim::NODE_IP.to_be_bytes(), sim::POD_A_IP.to_be_bytes()));
        assert_eq!((e[34], e[35]), (icmp::DEST_UNREACHABLE, icmp::CODE_HOST_UNREACHABLE));
        assert!(checksum::verify(&e[34..]));
        assert_eq!(Ipv4HeaderSlice::from_slice(&e[42..]).unwrap().destination(), sim::NODE2_POD.to_be_bytes());
    }
    assert_eq!(drops(&sim, DropReason::NeighUnresolved), 2);
    assert_eq!(sim.pipeline.hold.len(), 0);
}

#[test]
fn unresolved_next_hop_holds_packets_sends_arp_and_releases_on_reply() {
    let mut sim = Sim::new(SimOptions { static_neighbours: false, ..Default::default() });
    let f = from_pod_a_udp(sim::NODE2_POD, 64, b"held");
    let sent = run(&mut sim, &[(f.clone(), sim::POD_A), (f.clone(), sim::POD_A)], 1_000);
    // One ARP request, no data yet.
    assert_eq!(sent.len(), 1, "{sent:?}");
    let (port, req) = &sent[0];
    assert_eq!(*port, sim::UPLINK);
    let a = etherparse::SlicedPacket::from_ethernet(req).unwrap();
    match a.net {
        Some(etherparse::NetSlice::Arp(arp)) => {
            assert_eq!(arp.operation(), etherparse::ArpOperation::REQUEST);
            assert_eq!(arp.target_protocol_addr(), &sim::NODE2_IP.to_be_bytes());
            assert_eq!(arp.sender_protocol_addr(), &sim::NODE_IP.to_be_bytes());
        }
        n => panic!("not ARP: {n:?}"),
    }
    // The reply releases both held frames with the learned MAC.
    let mut reply = vec![0u8; 60];
    let n = crate::wire::arp::build_reply(&mut reply, sim::NODE2_MAC.0, sim::NODE2_IP, sim::UPLINK_MAC.0, sim::NODE_IP);
    reply.truncate(n);
    let sent = run1(&mut sim, reply.clone(), sim::UPLINK);
    // The two held frames leave on the uplink; the reply also reaches the node's kernel
    // (the host port shares our address and may have asked too).
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(sent.iter().filter(|(p, f)| *p == sim::HOST && *f == reply).count(), 1);
    for (p, f) in sent.iter().filter(|(p, _)| *p == sim::UPLINK) {
        assert_eq!(*p, sim::UPLINK);
        assert_eq!(&f[0..6], &sim::NODE2_MAC.0);
        assert_eq!(ip_of(f).ttl(), 63);
    }
    // Now resolved: forwarded directly.
    assert_eq!(run1(&mut sim, f, sim::POD_A).len(), 1);
    assert_eq!(total_drops(&sim), 0);
}

/// Issue 9 item 7 (in memory): pod A sends twice to each of 100 unused on-link addresses. It
/// creates its 64 unresolved entries and no more (`neigh/source-limit`), and its held frames
/// fill the hold pool; pod B's packet to a next hop not yet resolved is still asked for at
/// once, held (in the place of the oldest frame of a longer queue) and released by the reply.
#[test]
fn a_neighbour_flood_from_one_pod_is_bounded_and_another_pods_next_hop_still_resolves() {
    let cfg = PipelineConfig { hold_slots: 64, ..Default::default() };
    let mut sim = Sim::new(SimOptions { static_neighbours: false, pipeline: cfg, ..Default::default() });
    let flood: Vec<(Vec<u8>, PortId)> =
        (0..100u32).flat_map(|i| [0, 1].map(|_| (from_pod_a_udp(0xc0a8_0164 + i, 64, b"x"), sim::POD_A))).collect();
    run(&mut sim, &flood, 1_000);
    assert_eq!(drops(&sim, DropReason::NeighSourceLimit), 2 * 36);
    assert_eq!(sim.shared.neigh.len(), 64);
    let f = frames::udp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::NODE2_POD, 64, 1, 2, b"b");
    let sent = run(&mut sim, &[(f, sim::POD_B)], 1_100);
    let asked = sent.iter().any(|(p, req)| {
        *p == sim::UPLINK
            && matches!(etherparse::SlicedPacket::from_ethernet(req).map(|a| a.net),
                Ok(Some(etherparse::NetSlice::Arp(arp))) if arp.target_protocol_addr() == sim::NODE2_IP.to_be_bytes())
    });
    assert!(asked, "an ARP request for node 2: {sent:?}");
    let mut reply = vec![0u8; 60];
    let n = crate::wire::arp::build_reply(&mut reply, sim::NODE2_MAC.0, sim::NODE2_IP, sim::UPLINK_MAC.0, sim::NODE_IP);
    reply.truncate(n);
    let sent = run(&mut sim, &[(reply, sim::UPLINK)], 1_200);
    let out: Vec<&Vec<u8>> =
        sent.iter().filter(|(p, f)| *p == sim::UPLINK && f[0..6] == sim::NODE2_MAC.0).map(|(_, f)| f).collect();
    assert_eq!(out.len(), 1, "pod B's held frame released: {sent:?}");
    assert_eq!(ip_of(out[0]).source(), sim::POD_B_IP.to_be_bytes());
}

/// The address an ARP request in `f` asks for.
fn arp_target(f: &[u8]) -> Option<u32> {
    (f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 1])
        .then(|| u32::from_be_bytes(f[38..42].try_into().unwrap()))
}

/// A pod asking for 64 new addresses of the node's subnet in one millisecond spends the
/// budget of on-link requests (20 at once, then 100 a second). A route's next hop has a
/// budget of its own: pod B's packet to another node, in the same millisecond, is asked for
/// at once. (With one budget its request waited a whole retransmission interval, a second:
/// a pod's first SYN through the gateway missed the kernel's one-second retransmit in
/// `tests/table_floods.rs`.) The flood's requests beyond the burst are not lost either: each
/// goes out as the budget refills, exactly once, none a second late.
#[test]
fn a_burst_of_on_link_requests_delays_neither_a_routes_next_hop_nor_itself_by_a_second() {
    let mut sim = Sim::new(SimOptions { static_neighbours: false, ..Default::default() });
    let flood: Vec<(Vec<u8>, PortId)> =
        (0..64u32).map(|i| (from_pod_a_udp(0xc0a8_0164 + i, 64, b"x"), sim::POD_A)).collect();
    let mut asked: Vec<(u64, u32)> = vec![];
    let note = |asked: &mut Vec<(u64, u32)>, sent: Vec<(PortId, Vec<u8>)>, now: u64| {
        asked.extend(
            sent.iter().filter(|(p, _)| *p == sim::UPLINK).filter_map(|(_, f)| arp_target(f)).map(|ip| (now, ip)),
        )
    };
    note(&mut asked, run(&mut sim, &flood, 1_000), 1_000);
    let b = frames::udp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::NODE2_POD, 64, 1, 2, b"b");
    note(&mut asked, run(&mut sim, &[(b, sim::POD_B)], 1_000), 1_000);
    assert!(asked.contains(&(1_000, sim::NODE2_IP)), "node 2 asked for at once: {asked:?}");
    assert_eq!(asked.iter().filter(|(t, _)| *t == 1_000).count(), 21, "the on-link burst, and node 2");
    for now in 1_001..=1_600 {
        note(&mut asked, run(&mut sim, &[], now), now);
    }
    let flood_asks: Vec<&(u64, u32)> = asked.iter().filter(|(_, ip)| *ip != sim::NODE2_IP).collect();
    let mut targets: Vec<u32> = flood_asks.iter().map(|(_, ip)| *ip).collect();
    targets.sort();
    targets.dedup();
    assert_eq!((flood_asks.len(), targets.len()), (64, 64), "each flooded address asked once: {flood_asks:?}");
    let last = flood_asks.iter().map(|(t, _)| *t).max().unwrap();
    assert!(last <= 1_000 + 44 * 10 + 10, "the rest at the refill rate, the last at {last} ms");
    assert_eq!(drops(&sim, DropReason::NeighUnresolved), 0);
}

/// A next hop that is both on-link for one pod (which addresses the gateway directly) and a
/// route's next hop for another is retransmitted for out of the routes' budget: a flood of
/// on-link requests falling due at the same time does not hold it back.
#[test]
fn a_gateway_also_addressed_directly_is_retransmitted_for_out_of_the_routes_budget() {
    let mut sim = Sim::new(SimOptions { static_neighbours: false, ..Default::default() });
    // 40 new addresses (pod A keeps room under its 64 unresolved for the gateway).
    let flood: Vec<(Vec<u8>, PortId)> =
        (0..40u32).map(|i| (from_pod_a_udp(0xc0a8_0164 + i, 64, b"x"), sim::POD_A)).collect();
    run(&mut sim, &flood, 1_000);
    // Pod A to the gateway itself (on-link; the on-link budget is spent), then pod B through it.
    run(&mut sim, &[(from_pod_a_udp(sim::UNDERLAY_GW, 64, b"gw"), sim::POD_A)], 1_000);
    let b = frames::udp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::NODE3_POD, 64, 1, 2, b"b");
    let sent = run(&mut sim, &[(b, sim::POD_B)], 1_000);
    assert!(sent.iter().any(|(_, f)| arp_target(f) == Some(sim::UNDERLAY_GW)), "asked at once: {sent:?}");
    let mut again = None;
    for now in 1_001..=2_500 {
        let sent = run(&mut sim, &[], now);
        if sent.iter().any(|(_, f)| arp_target(f) == Some(sim::UNDERLAY_GW)) {
            again = Some(now);
            break;
        }
    }
    // The 20 flooded addresses asked at 1,000 fall due at 2,000 too, ahead of it in the list,
    // and take the whole on-link burst.
    assert_eq!(again, Some(2_000), "the gateway's retransmission is not held back");
}

#[test]
fn fragmenting_towards_an_unresolved_next_hop_still_sends_the_arp_request() {
    let mut sim = Sim::new(SimOptions { static_neighbours: false, ..Default::default() });
    let mut big = from_pod_a_udp(sim::NODE3_POD, 64, &[0x11; 1472]);
    frames::set_df(&mut big, false);
    let sent = run1(&mut sim, big, sim::POD_A);
    let arp: Vec<_> = sent.iter().filter(|(_, f)| f[12..14] == [0x08, 0x06]).collect();
    assert_eq!(arp.len(), 1, "one ARP request for the underlay gateway: {sent:?}");
    assert_eq!(&arp[0].1[38..42], &sim::UNDERLAY_GW.to_be_bytes());
    assert_eq!(sim.pipeline.counters().arp_requests_sent.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn our_own_addresses_as_source_from_the_uplink_are_spoofed() {
    let mut sim = Sim::new(SimOptions::default());
    let f = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE_IP, sim::POD_A_IP, 64, 1, 2, b"x");
    assert!(run1(&mut sim, f, sim::UPLINK).is_empty());
    assert_eq!(drops(&sim, DropReason::SpoofedSource), 1);
}

#[test]
fn unsolicited_arp_replies_reach_the_host_port_at_a_bounded_rate() {
    let cfg = PipelineConfig { arp_punt_rate_per_sec: 10, arp_punt_burst: 5, ..Default::default() };
    let mut sim = Sim::new(SimOptions { static_neighbours: false, pipeline: cfg, ..Default::default() });
    let batch: Vec<_> = (0..40u32)
        .map(|i| {
            let mut reply = vec![0u8; 60];
            let n = crate::wire::arp::build_reply(
                &mut reply,
                [2, 6, 6, 6, 6, 6],
                0xc0a8_0163 + i,
                sim::UPLINK_MAC.0,
                sim::NODE_IP,
            );
            reply.truncate(n);
            (reply, sim::UPLINK)
        })
        .collect();
    let sent = run(&mut sim, &batch, 1_000);
    assert_eq!(sent.iter().filter(|s| s.0 == sim::HOST).count(), 5, "the burst, not one for one");
    assert_eq!(drops(&sim, DropReason::ArpPuntLimited), 35);
    let sent = run(&mut sim, &batch[..3], 1_100);
    assert_eq!(sent.len(), 1, "10/s: one more after 100 ms");
}

#[test]
fn icmp_errors_are_rate_limited_per_destination_too() {
    let cfg = PipelineConfig { icmp_rate_per_dest: 1, icmp_burst_per_dest: 2, ..Default::default() };
    let mut sim = Sim::new(SimOptions { pipeline: cfg, ..Default::default() });
    // Pod A floods TTL-1 packets: it gets its 2; pod B, right after, still gets its own.
    let batch: Vec<_> = (0..10).map(|_| (from_pod_a_udp(sim::POD_B_IP, 1, b"x"), sim::POD_A)).collect();
    assert_eq!(run(&mut sim, &batch, 5_000).len(), 2);
    let from_b = frames::udp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::POD_A_IP, 1, 1, 2, b"x");
    let sent = run(&mut sim, &[(from_b, sim::POD_B)], 5_000);
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::POD_B], "B is not starved by A");
    let c = sim.pipeline.counters();
    assert_eq!(c.icmp_errors_ratelimited.load(std::sync::atomic::Ordering::Relaxed), 8);
}

/// IPIP from node 3 with outer and inner ECN fields as given (RFC 3168 codepoints).
fn ipip_with_ecn(outer: u8, inner: u8) -> Vec<u8> {
    let mut i = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, 63, 1, 2, b"ecn");
    i[15] = inner;
    Ipv4Packet::new_checked(&mut i[14..]).unwrap().fill_checksum();
    let mut f = frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &i);
    f[15] = outer;
    Ipv4Packet::new_checked(&mut f[14..34]).unwrap().fill_checksum();
    f
}

#[test]
fn decapsulation_carries_congestion_marks_to_the_inner_header_rfc6040() {
    // (outer, inner) -> inner after decapsulation, or None: dropped.
    let (not, ect1, ect0, ce) = (0u8, 1u8, 2u8, 3u8);
    let cases = [
        ((not, ect0), Some(ect0)),
        ((ect0, ect0), Some(ect0)),
        ((ect1, ect0), Some(ect1)),
        ((ce, ect0), Some(ce)),
        ((ce, ect1), Some(ce)),
        ((ce, ce), Some(ce)),
        ((ect0, not), Some(not)),
        ((ce, not), None),
    ];
    for ((outer, inner), want) in cases {
        let mut sim = Sim::new(SimOptions::default());
        let sent = run1(&mut sim, ipip_with_ecn(outer, inner), sim::UPLINK);
        match want {
            Some(w) => {
                assert_eq!(sent.len(), 1, "{outer}/{inner}");
                let ip = ip_of(&sent[0].1);
                assert_eq!(ip.ecn().value(), w, "{outer}/{inner}");
                assert!(checksum::verify(ip.slice()), "{outer}/{inner}");
            }
            None => {
                assert!(sent.is_empty());
                assert_eq!(drops(&sim, DropReason::IpipEcnCeNotEct), 1);
            }
        }
    }
}

#[test]
fn unsolicited_arp_reply_is_dropped() {
    let mut sim = Sim::new(SimOptions { host_port: false, static_neighbours: false, ..Default::default() });
    let mut reply = vec![0u8; 60];
    let n = crate::wire::arp::build_reply(&mut reply, [2, 6, 6, 6, 6, 6], 0xc0a8_0163, sim::UPLINK_MAC.0, sim::NODE_IP);
    reply.truncate(n);
    assert!(run1(&mut sim, reply, sim::UPLINK).is_empty());
    assert_eq!(drops(&sim, DropReason::ArpUnsolicited), 1);
}

#[test]
fn uplink_arp_for_node_ip_is_answered_and_others_are_not() {
    let mut sim = Sim::new(SimOptions::default());
    let mut req = vec![0u8; 60];
    let n = crate::wire::arp::build_request(&mut req, sim::GW_MAC.0, sim::UNDERLAY_GW, sim::NODE_IP);
    req.truncate(n);
    let sent = run1(&mut sim, req, sim::UPLINK);
    assert_eq!(sent.len(), 1);
    let a = etherparse::SlicedPacket::from_ethernet(&sent[0].1).unwrap();
    match a.net {
        Some(etherparse::NetSlice::Arp(arp)) => {
            assert_eq!(arp.operation(), etherparse::ArpOperation::REPLY);
            assert_eq!(arp.sender_hw_addr(), &sim::UPLINK_MAC.0);
            assert_eq!(arp.sender_protocol_addr(), &sim::NODE_IP.to_be_bytes());
        }
        n => panic!("not ARP: {n:?}"),
    }
    let mut other = vec![0u8; 60];
    let n = crate::wire::arp::build_request(&mut other, sim::GW_MAC.0, sim::UNDERLAY_GW, 0xc0a8_0163);
    other.truncate(n);
    assert!(run1(&mut sim, other, sim::UPLINK).is_empty());
    assert_eq!(drops(&sim, DropReason::ArpNotForUs), 1);
}

#[test]
fn proxy_arp_answers_pods_for_the_gateway_only() {
    let mut sim = Sim::new(SimOptions::default());
    let mut req = vec![0u8; 60];
    let n = crate::wire::arp::build_request(
        &mut req,
        sim::POD_A_MAC.0,
        sim::POD_A_IP,
        crate::dataplane::state::CALICO_POD_GATEWAY,
    );
    req.truncate(n);
    let sent = run1(&mut sim, req, sim::POD_A);
    assert_eq!(sent.len(), 1);
    assert_eq!(&sent[0].1[0..6], &sim::POD_A_MAC.0);
    let a = etherparse::SlicedPacket::from_ethernet(&sent[0].1).unwrap();
    match a.net {
        Some(etherparse::NetSlice::Arp(arp)) => {
            assert_eq!(arp.operation(), etherparse::ArpOperation::REPLY);
            assert_eq!(arp.sender_hw_addr(), &sim::POD_A_PORT_MAC.0);
        }
        n => panic!("not ARP: {n:?}"),
    }
    // Asking for another pod's address gets nothing: pods never learn each other's MACs.
    let mut other = vec![0u8; 60];
    let n = crate::wire::arp::build_request(&mut other, sim::POD_A_MAC.0, sim::POD_A_IP, sim::POD_B_IP);
    other.truncate(n);
    assert!(run1(&mut sim, other, sim::POD_A).is_empty());
    assert_eq!(drops(&sim, DropReason::ArpNotForUs), 1);
}

#[test]
fn a_batch_larger_than_max_batch_is_processed_whole() {
    let mut sim = Sim::new(SimOptions::default());
    let batch: Vec<_> = (0..MAX_BATCH + 10).map(|_| (from_pod_a_udp(sim::POD_B_IP, 64, b"x"), sim::POD_A)).collect();
    let sent = run(&mut sim, &batch, 1);
    assert_eq!(sent.len(), MAX_BATCH + 10);
}

mod fuzz {
    use proptest::prelude::*;

    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let samples = crate::dataplane::sim::sample_frames();
        (0..samples.len(), proptest::collection::vec((any::<u16>(), any::<u8>()), 0..8), any::<u16>(), any::<u8>())
            .prop_map(move |(k, flips, cut, sel)| {
                let (f, port) = &samples[k];
                let mut f = f.clone();
                for (at, x) in flips {
                    if !f.is_empty() {
                        let i = at as usize % f.len();
                        f[i] ^= x;
                    }
                }
                if sel & 3 == 0 {
                    f.truncate(cut as usize % (f.len() + 1));
                }
                let mut data = vec![sel];
                data.extend_from_slice(&(f.len() as u16).to_be_bytes());
                data.push(*port as u8);
                data.extend_from_slice(&f);
                data
            })
    }

    /// Found by cargo fuzz: a frame with a bad IPv4 checksum from the host port is bridged to
    /// the uplink untouched, which the output check must allow.
    #[test]
    fn fuzz_regression_host_port_frames_pass_unchecked() {
        let data = [
            0xfd, 0x00, 0x00, 0x08, 0x08, 0x08, 0x08, 0x08, 0x08, 0x08, 0x70, 0x70, 0x70, 0x70, 0x70, 0x70, 0x70, 0x70,
            0x70, 0x08, 0x00, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x3a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2c,
        ];
        crate::dataplane::sim::fuzz_pipeline(&data);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]
        #[test]
        fn pipeline_never_panics_on_mutated_frames(data in mutated()) {
            crate::dataplane::sim::fuzz_pipeline(&data);
        }

        #[test]
        fn pipeline_never_panics_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..2000)) {
            crate::dataplane::sim::fuzz_pipeline(&data);
        }
    }
}

mod policy {
    use super::*;
    use crate::acl::{EndpointPolicy, PolicyConfig, PolicySet, PortRange, Rule};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    /// Pod B accepts TCP 80 from pod A only; pod A accepts nothing new (default deny).
    fn policy(generation: u64, allow_web: bool) -> Arc<PolicySet> {
        let mut web = Rule::any(if allow_web { crate::acl::Action::Allow } else { crate::acl::Action::Deny });
        web.src = vec![crate::fib::Ipv4Prefix::new(sim::POD_A_IP, 32).unwrap()];
        web.protocol = Some(6);
        web.dst_ports = vec![PortRange::single(80)];
        let cfg = PolicyConfig {
            global: vec![],
            policies: BTreeMap::from([("web".to_string(), vec![web]), ("closed".to_string(), vec![])]),
            endpoints: vec![
                EndpointPolicy { ingress: vec!["closed".into()], egress: vec![] },
                EndpointPolicy { ingress: vec!["web".into()], egress: vec![] },
            ],
        };
        Arc::new(PolicySet::compile(&cfg, generation).unwrap())
    }

    fn a_to_b(dport: u16, syn: bool, ack: bool) -> Vec<u8> {
        frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::POD_B_IP, 40000, dport, syn, ack)
    }
    fn b_to_a(sport: u16, syn: bool, ack: bool) -> Vec<u8> {
        frames::tcp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::POD_A_IP, sport, 40000, syn, ack)
    }

    /// Pod B accepts SCTP to port 3868 (Diameter) from anyone, nothing else (default deny).
    fn sctp_policy() -> Arc<PolicySet> {
        let mut diameter = Rule::any(crate::acl::Action::Allow);
        diameter.protocol = Some(crate::acl::PROTO_SCTP);
        diameter.dst_ports = vec![PortRange::single(3868)];
        let cfg = PolicyConfig {
            global: vec![],
            policies: BTreeMap::from([("diameter".to_string(), vec![diameter])]),
            endpoints: vec![
                EndpointPolicy::default(),
                EndpointPolicy { ingress: vec!["diameter".into()], egress: vec![] },
            ],
        };
        Arc::new(PolicySet::compile(&cfg, 1).unwrap())
    }

    fn a_to_b_sctp(dport: u16) -> Vec<u8> {
        let mut sctp = [0u8; 28]; // common header + an empty DATA-sized chunk area
        sctp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        sctp[2..4].copy_from_slice(&dport.to_be_bytes());
        let b = etherparse::PacketBuilder::ethernet2(sim::POD_A_MAC.0, sim::POD_A_PORT_MAC.0).ipv4(
            sim::POD_A_IP.to_be_bytes(),
            sim::POD_B_IP.to_be_bytes(),
            64,
        );
        let mut v = Vec::new();
        b.write(&mut v, etherparse::IpNumber(crate::acl::PROTO_SCTP), &sctp).unwrap();
        v
    }

    #[test]
    fn sctp_to_an_allowed_port_passes_and_to_another_is_denied() {
        let mut sim = Sim::new(SimOptions { policy: sctp_policy(), ..Default::default() });
        assert_eq!(run1(&mut sim, a_to_b_sctp(3868), sim::POD_A).len(), 1, "SCTP to the allowed port");
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 0);
        assert!(run1(&mut sim, a_to_b_sctp(3869), sim::POD_A).is_empty(), "SCTP to another port");
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 1);
    }

    #[test]
    fn allowed_connection_and_its_replies_pass_while_others_are_denied() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), ..Default::default() });
        assert_eq!(run1(&mut sim, a_to_b(80, true, false), sim::POD_A).len(), 1, "SYN to port 80 allowed");
        // Pod A's ingress denies everything new, but this is the reply of A's own connection.
        assert_eq!(run1(&mut sim, b_to_a(80, true, true), sim::POD_B).len(), 1, "SYN-ACK passes on conntrack");
        assert_eq!(run1(&mut sim, a_to_b(80, false, true), sim::POD_A).len(), 1, "ACK");
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 0);
        // Not allowed: another port, and B opening a connection to A.
        assert!(run1(&mut sim, a_to_b(22, true, false), sim::POD_A).is_empty());
        assert!(run1(&mut sim, b_to_a(443, true, false), sim::POD_B).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 2);
        assert_eq!(sim.pipeline.conntrack().len(), 1);
        // The gauge the CLI and metrics read follows at the next timer tick.
        sim.pipeline.process(&mut Vec::<crate::dataplane::PacketBuf>::new(), 5_000);
        assert_eq!(sim.pipeline.counters().conntrack_entries.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    fn enforcing() -> crate::dataplane::PipelineConfig {
        crate::dataplane::PipelineConfig { enforce_host_pod_policy: true, ..Default::default() }
    }

    /// Pod A: ingress and egress both default deny.
    fn sealed_pod_a() -> Arc<PolicySet> {
        let cfg = PolicyConfig {
            global: vec![],
            policies: BTreeMap::from([("closed".to_string(), vec![])]),
            endpoints: vec![
                EndpointPolicy { ingress: vec!["closed".into()], egress: vec!["closed".into()] },
                EndpointPolicy { ingress: vec![], egress: vec![] },
            ],
        };
        Arc::new(PolicySet::compile(&cfg, 1).unwrap())
    }

    #[test]
    fn traffic_between_a_pod_and_its_node_is_allowed_by_default_whatever_the_pods_policy() {
        // Kubernetes: traffic to and from the node a pod runs on is always allowed (kubelet
        // probes); review finding 2.
        let probe =
            frames::tcp(sim::HOST_KERNEL_MAC, sim::HOST_MAC, sim::NODE_IP, sim::POD_A_IP, 50000, 8080, true, false);
        let to_node =
            frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, 40000, 6443, true, false);
        let mut sim = Sim::new(SimOptions { policy: sealed_pod_a(), ..Default::default() });
        let sent = run1(&mut sim, probe.clone(), sim::HOST);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::POD_A], "kubelet probe into pod A");
        let sent = run1(&mut sim, to_node.clone(), sim::POD_A);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::HOST], "pod A to its node");
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 0);
        // Pod A's egress still applies to everything else (pod B, other nodes).
        let to_b =
            frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::POD_B_IP, 40000, 80, true, false);
        assert!(run1(&mut sim, to_b, sim::POD_A).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 1);
        // host_pod_policy = "enforce": the pod's policy judges its node like any peer.
        let mut sim = Sim::new(SimOptions { policy: sealed_pod_a(), pipeline: enforcing(), ..Default::default() });
        assert!(run1(&mut sim, probe, sim::HOST).is_empty());
        assert!(run1(&mut sim, to_node, sim::POD_A).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 2);
    }

    #[test]
    fn what_the_kernel_forwards_for_a_client_meets_the_pods_policy() {
        // Only the node's own addresses are "the node" for host_pod_policy = "allow".
        let mut sim = Sim::new(SimOptions { policy: sealed_pod_a(), ..Default::default() });
        let f = frames::tcp(sim::HOST_KERNEL_MAC, sim::HOST_MAC, 0x0c22_3845, sim::POD_A_IP, 50000, 80, true, false);
        assert!(run1(&mut sim, f, sim::HOST).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 1);
    }

    #[test]
    fn host_to_pod_meets_ingress_policy_and_pod_to_host_replies_pass_on_conntrack() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), pipeline: enforcing(), ..Default::default() });
        let host_to = |dst: u32, dport: u16, syn: bool, ack: bool| {
            frames::tcp(sim::HOST_KERNEL_MAC, sim::HOST_MAC, sim::NODE_IP, dst, 50000, dport, syn, ack)
        };
        // Pod B admits TCP 80 from pod A only: the node is a source like any other.
        assert!(run1(&mut sim, host_to(sim::POD_B_IP, 80, true, false), sim::HOST).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 1);
        // Pod A (ingress closed) connects to the node: the kernel's SYN-ACK is its reply.
        let syn = frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, 40000, 22, true, false);
        assert_eq!(run1(&mut sim, syn, sim::POD_A).len(), 1);
        let synack =
            frames::tcp(sim::HOST_KERNEL_MAC, sim::HOST_MAC, sim::NODE_IP, sim::POD_A_IP, 22, 40000, true, true);
        let sent = run1(&mut sim, synack, sim::HOST);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::POD_A], "reply of A's connection");
        // But the node opening a connection to pod A is denied.
        assert!(run1(&mut sim, host_to(sim::POD_A_IP, 22, true, false), sim::HOST).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 2);
    }

    /// An ICMP error from `from` to `to` about `orig` (an Ethernet frame), quoting its IP
    /// header and 8 bytes, as an Ethernet frame from the underlay router.
    fn error_about(from: u32, to: u32, ty: u8, code: u8, rest: u32, orig: &[u8]) -> Vec<u8> {
        icmp_error_frame(from, to, ty, code, rest, &orig[14..14 + 28])
    }

    #[test]
    fn icmp_errors_about_a_tracked_connection_are_related_and_pass_default_deny() {
        // Pod A: ingress default deny. Its own UDP and TCP out are tracked.
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), default_route: true, ..Default::default() });
        let udp = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, 0x0808_0808, 64, 40000, 53, b"q");
        let tcp = frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, 0x0808_0808, 40001, 443, true, false);
        assert_eq!(run1(&mut sim, udp.clone(), sim::POD_A).len(), 1);
        assert_eq!(run1(&mut sim, tcp.clone(), sim::POD_A).len(), 1);
        let router = 0x0a63_0001; // somewhere on the path
        let related = [
            error_about(router, sim::POD_A_IP, icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED, 1400, &tcp),
            error_about(router, sim::POD_A_IP, icmp::TIME_EXCEEDED, 0, 0, &udp),
            error_about(0x0808_0808, sim::POD_A_IP, icmp::DEST_UNREACHABLE, 3, 0, &udp),
        ];
        for f in related {
            let sent = run1(&mut sim, f, sim::UPLINK);
            assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::POD_A], "related error delivered");
        }
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 0);
        assert_eq!(sim.pipeline.conntrack().len(), 2, "errors create no entry");
        // Not related: an untracked flow's quote, and a quote whose sender is not the pod.
        let other = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, 0x0808_0808, 64, 40002, 53, b"q");
        let not_ours =
            frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, 0x0808_0808, sim::POD_A_IP, 64, 53, 40000, b"q");
        for f in [
            error_about(router, sim::POD_A_IP, icmp::DEST_UNREACHABLE, 3, 0, &other),
            error_about(router, sim::POD_A_IP, icmp::DEST_UNREACHABLE, 3, 0, &not_ours),
        ] {
            assert!(run1(&mut sim, f, sim::UPLINK).is_empty());
        }
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 2);
    }

    #[test]
    fn icmp_errors_decapsulated_from_a_peer_are_related_too() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), ..Default::default() });
        let udp = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE3_POD, 64, 40000, 9, b"q");
        assert_eq!(run1(&mut sim, udp.clone(), sim::POD_A).len(), 1);
        // Node 3's pod answers port unreachable, inside IPIP from node 3.
        let err = error_about(sim::NODE3_POD, sim::POD_A_IP, icmp::DEST_UNREACHABLE, 3, 0, &udp);
        let f = frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &err);
        let sent = run1(&mut sim, f, sim::UPLINK);
        assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![sim::POD_A]);
    }

    #[test]
    fn a_policy_change_re_judges_established_flows() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), ..Default::default() });
        assert_eq!(run1(&mut sim, a_to_b(80, true, false), sim::POD_A).len(), 1);
        let snap = sim::snapshot(&SimOptions { policy: policy(2, false), ..Default::default() });
        sim.shared.publish(snap);
        assert!(run1(&mut sim, a_to_b(80, false, true), sim::POD_A).is_empty(), "now denied");
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 1);
        assert_eq!(sim.pipeline.conntrack().len(), 0, "entry removed");
    }

    #[test]
    fn non_first_fragments_never_match_port_rules() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), ..Default::default() });
        let mut f = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::POD_B_IP, 64, 1, 80, &[0; 32]);
        f[14 + 9] = 6; // claim TCP: the "ports" are payload bytes of a later fragment
        let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
        ip.set_flags_frag(4); // offset 32 bytes
        ip.fill_checksum();
        assert!(run1(&mut sim, f, sim::POD_A).is_empty());
        assert_eq!(drops(&sim, DropReason::PolicyDeny), 1);
    }

    /// A SYN from A to B whose TCP header is cut to 8 bytes (ports, no flags), with the IPv4
    /// flags and offset `flags_frag`.
    fn short_syn(flags_frag: u16) -> Vec<u8> {
        let mut f = a_to_b(80, true, false);
        f.truncate(14 + 20 + 8);
        let mut ip = Ipv4Packet::new_checked(&mut f[14..]).unwrap();
        ip.set_total_len(28);
        ip.set_flags_frag(flags_frag);
        ip.fill_checksum();
        f
    }

    /// Egress reads each frame's flow key a few frames ahead for its conntrack prefetch: in a
    /// batch of frames of different verdicts, allowed, denied and unreadable ones interleaved,
    /// each is judged by its own key.
    #[test]
    fn every_frame_of_a_batch_is_judged_by_its_own_flow() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), ..Default::default() });
        let short = short_syn(0);
        let ports: Vec<u16> = (0..40).map(|i| if i % 3 == 0 || i % 7 == 0 { 81 } else { 80 }).collect();
        let input: Vec<(Vec<u8>, PortId)> = ports
            .iter()
            .enumerate()
            .map(|(i, &dport)| (if i % 11 == 5 { short.clone() } else { a_to_b(dport, true, false) }, sim::POD_A))
            .collect();
        let sent = run(&mut sim, &input, 1_000);
        let want: Vec<u16> =
            ports.iter().enumerate().filter(|&(i, &d)| d == 80 && i % 11 != 5).map(|(_, &d)| d).collect();
        let got: Vec<u16> = sent.iter().map(|(_, f)| u16::from_be_bytes([f[14 + 20 + 2], f[14 + 20 + 3]])).collect();
        assert_eq!(got, want);
        let short_n = (0..40).filter(|i| i % 11 == 5).count() as u64;
        assert_eq!(drops(&sim, DropReason::L4Truncated), short_n);
        let denied = ports.iter().enumerate().filter(|&(i, &d)| d == 81 && i % 11 != 5).count() as u64;
        assert_eq!(drops(&sim, DropReason::PolicyDeny), denied);
    }

    #[test]
    fn tiny_tcp_fragments_are_dropped_rfc1858() {
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), ..Default::default() });
        // A first fragment.
        let f = short_syn(ipv4::FLAG_MF);
        assert!(run1(&mut sim, f, sim::POD_A).is_empty());
        assert_eq!(drops(&sim, DropReason::L4Truncated), 1);
    }

    #[test]
    fn conntrack_full_of_answered_connections_refuses_new_flows_with_a_counted_drop() {
        let cfg = PipelineConfig { conntrack_capacity: 4, conntrack_endpoint_share_pct: 100, ..Default::default() };
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), pipeline: cfg, ..Default::default() });
        let tcp = |sport: u16, syn: bool, ack: bool| {
            frames::tcp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::POD_B_IP, 1000 + sport, 80, syn, ack)
        };
        let reply = |sport: u16| {
            frames::tcp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::POD_A_IP, 80, 1000 + sport, true, true)
        };
        // Four established connections: nothing to drop early.
        for sport in 0..4u16 {
            assert_eq!(run1(&mut sim, tcp(sport, true, false), sim::POD_A).len(), 1);
            assert_eq!(run1(&mut sim, reply(sport), sim::POD_B).len(), 1);
            assert_eq!(run1(&mut sim, tcp(sport, false, true), sim::POD_A).len(), 1);
        }
        let mut passed = 0;
        for sport in 4..64u16 {
            passed += run1(&mut sim, tcp(sport, true, false), sim::POD_A).len();
        }
        assert_eq!(passed, 0);
        assert_eq!(drops(&sim, DropReason::ConntrackFull), 60);
    }

    /// Issue 9 item 8: pod A opens twice the table's capacity in UDP flows (none answered);
    /// pod B's next new connection must still be admitted, and A's surplus is refused with
    /// its own counted reason (the per-endpoint share) or evicted (early drop), never B.
    #[test]
    fn a_conntrack_flood_from_one_pod_leaves_room_for_another_pods_new_flows() {
        let cfg = PipelineConfig { conntrack_capacity: 1000, ..Default::default() };
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), pipeline: cfg, ..Default::default() });
        let flood: Vec<(Vec<u8>, PortId)> = (0..2000u16)
            .map(|p| {
                let f =
                    frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE2_POD, 64, p, 53, b"x");
                (f, sim::POD_A)
            })
            .collect();
        for chunk in flood.chunks(256) {
            run(&mut sim, chunk, 1_000);
        }
        assert!(sim.pipeline.conntrack().len() <= 1000);
        for sport in [5000u16, 5001, 5002] {
            let f =
                frames::udp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::NODE2_POD, 64, sport, 53, b"y");
            let sent = run(&mut sim, &[(f, sim::POD_B)], 1_100);
            assert_eq!(sent.len(), 1, "pod B's new flow {sport}: {:?}", sim.pipeline.counters().drop_table());
        }
        assert_eq!(drops(&sim, DropReason::ConntrackFull), 0);
        assert_eq!(drops(&sim, DropReason::ConntrackEndpointShare), 2000 - 500, "A holds its share, no more");
    }

    /// With the share lifted, a full table still admits a new flow by dropping an unreplied
    /// entry early (as Linux's early_drop); answered connections are never dropped for it.
    #[test]
    fn a_full_conntrack_table_evicts_unreplied_flows_for_new_ones() {
        let cfg = PipelineConfig { conntrack_capacity: 200, conntrack_endpoint_share_pct: 100, ..Default::default() };
        let mut sim = Sim::new(SimOptions { policy: policy(1, true), pipeline: cfg, ..Default::default() });
        for p in 0..400u16 {
            let f = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE2_POD, 64, p, 53, b"x");
            assert_eq!(run(&mut sim, &[(f, sim::POD_A)], 1_000).len(), 1, "flow {p}");
        }
        assert_eq!(sim.pipeline.conntrack().len(), 200);
        assert_eq!(drops(&sim, DropReason::ConntrackFull), 0);
        let f = frames::udp(sim::POD_B_MAC, sim::POD_B_PORT_MAC, sim::POD_B_IP, sim::NODE2_POD, 64, 5000, 53, b"y");
        assert_eq!(run(&mut sim, &[(f, sim::POD_B)], 1_100).len(), 1);
    }

    #[test]
    fn trace_names_the_rule_that_denied_and_stops_after_count() {
        use crate::dataplane::observe::{CapturePoint, CaptureSpec};
        let mut sim = Sim::new(SimOptions { policy: policy(1, false), ..Default::default() });
        sim.shared.observe.start_trace(2, Some(sim::POD_A)).unwrap();
        sim.shared
            .observe
            .start_capture(CaptureSpec { count: 10, port: None, rx: true, tx: true, snaplen: 64 })
            .unwrap();
        assert!(
            run1(&mut sim, from_pod_a_udp(sim::POD_B_IP, 64, b"x"), sim::POD_B).len() <= 1,
            "other port: not traced"
        );
        assert!(run1(&mut sim, a_to_b(80, true, false), sim::POD_A).is_empty());
        assert_eq!(run1(&mut sim, from_pod_a_udp(sim::NODE2_POD, 64, b"y"), sim::POD_A).len(), 1);
        assert_eq!(run1(&mut sim, a_to_b(80, true, false), sim::POD_A).len(), 0, "not traced any more: count was 2");
        let (recs, done) = sim.shared.observe.take_trace();
        assert!(done);
        assert_eq!(recs.len(), 2);
        let deny = &recs[0];
        assert_eq!((deny.verdict.as_str(), deny.drop_reason.as_deref()), ("drop", Some("policy/deny")));
        assert!(deny.received.contains("TCP 40000 > 80 [S]"), "{}", deny.received);
        let policy_step = deny.steps.iter().find(|s| s.starts_with("policy:")).expect("a policy step");
        assert!(policy_step.contains("ingress of 'pod-b': deny by policy 'web' rule 0"), "{policy_step}");
        assert_eq!(deny.lookup, Some((sim::POD_B_IP, sim::NH_POD_B)));
        let fwd = &recs[1];
        assert_eq!((fwd.verdict.as_str(), fwd.out_port), ("tx", Some(sim::UPLINK)));
        assert!(fwd.sent.as_ref().unwrap().contains("ttl 63"), "{:?}", fwd.sent);
        assert!(recs[0].seq < recs[1].seq);
        // Capture saw every frame as received, and the forwarded ones as sent, cut at 64 bytes.
        let (frames, _) = sim.shared.observe.take_capture();
        let rx = frames.iter().filter(|f| f.point == CapturePoint::Rx).count();
        let tx: Vec<_> = frames.iter().filter(|f| f.point == CapturePoint::Tx).collect();
        assert_eq!(rx, 4);
        assert!(tx.iter().any(|f| f.port == sim::UPLINK && f.data.len() <= 64));
        assert!(frames.iter().all(|f| f.ts_ns == 0), "no wall clock given: the core reads none");
        assert_eq!(sim.shared.observe.stop_capture().len(), 0);
        assert_eq!(sim.shared.observe.active(), 0, "all sessions over");
    }
}

#[test]
fn capture_timestamps_come_from_the_wall_clock_the_caller_gives() {
    use crate::dataplane::observe::CaptureSpec;
    let mut sim = Sim::new(SimOptions::default());
    sim.pipeline.set_wall_clock(|| 1_700_000_000_123_456_789);
    sim.shared.observe.start_capture(CaptureSpec { count: 4, port: None, rx: true, tx: true, snaplen: 64 }).unwrap();
    assert_eq!(run1(&mut sim, from_pod_a_udp(sim::POD_B_IP, 64, b"x"), sim::POD_A).len(), 1);
    let (frames, _) = sim.shared.observe.take_capture();
    assert_eq!(frames.len(), 2, "received and sent");
    assert!(frames.iter().all(|f| f.ts_ns == 1_700_000_000_123_456_789), "{frames:?}");
}

#[test]
fn per_frame_metadata_carries_no_trace_only_fields() {
    // Review finding 8: Meta is filled for every frame of every batch; what only packet trace
    // reads (the answered drop reason, the first lookup of an ICMP error) lives in the trace
    // scratch, written only while a trace runs. 28 bytes: verdict, flags, addresses, next hops.
    assert!(std::mem::size_of::<super::Meta>() <= 28, "Meta is {} bytes", std::mem::size_of::<super::Meta>());
}

/// Big segments from a pod's TAP (a virtio-net header with TSO): they cross the pipeline whole,
/// judged by their segments' size.
mod offload {
    use super::*;
    use crate::dataplane::packet::BIG_BUF_SIZE;
    use crate::offload::{gso::Segments, Gso, Offload};

    const TSO: Offload = Offload { csum_partial: true, csum_valid: false, gso: Gso::Tcp4, gso_size: 1400 };

    /// A 20,000-byte TCP segment from pod A to `dst`, DF set, as a TAP with TSO hands it over.
    fn big_from_pod_a(dst: u32, off: Offload) -> PacketBuf {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 3) as u8).collect();
        let b = etherparse::PacketBuilder::ethernet2(sim::POD_A_MAC.0, sim::POD_A_PORT_MAC.0)
            .ipv4(sim::POD_A_IP.to_be_bytes(), dst.to_be_bytes(), 64)
            .tcp(40000, 5201, 1000, 65535)
            .ack(1);
        let mut f = Vec::new();
        b.write(&mut f, &payload).unwrap();
        frames::set_df(&mut f, true);
        let mut buf = PacketBuf::with_size(BIG_BUF_SIZE, &f, sim::POD_A);
        buf.offload = off;
        buf
    }

    fn process(sim: &mut Sim, bufs: &mut [PacketBuf]) -> Vec<(PortId, usize)> {
        let out = sim.pipeline.process(bufs, 1_000);
        out.active_ports().flat_map(|p| out.tx(p).iter().map(move |&i| (p, i as usize))).collect()
    }

    #[test]
    fn a_big_segment_crosses_to_a_local_pod_whole_with_its_offload_state() {
        let mut sim = Sim::new(SimOptions::default());
        let mut bufs = [big_from_pod_a(sim::POD_B_IP, TSO)];
        let before = bufs[0].data().to_vec();
        assert_eq!(
            process(&mut sim, &mut bufs),
            [(sim::POD_B, 0)],
            "drops: {:?}",
            sim.pipeline.counters().drop_table()
        );
        let f = bufs[0].data();
        assert_eq!(f.len(), before.len(), "not cut, not fragmented");
        assert_eq!(ip_of(f).ttl(), 63);
        assert_eq!(&f[34..], &before[34..], "transport header and payload untouched (checksum left partial)");
        assert_eq!(bufs[0].offload, TSO);
    }

    #[test]
    fn a_big_segment_to_an_ipip_peer_is_wrapped_whole_and_cuts_into_frames_that_fit() {
        let mut sim = Sim::new(SimOptions::default());
        let mut bufs = [big_from_pod_a(sim::NODE3_POD, TSO)];
        assert_eq!(
            process(&mut sim, &mut bufs),
            [(sim::UPLINK, 0)],
            "drops: {:?}",
            sim.pipeline.counters().drop_table()
        );
        let f = bufs[0].data().to_vec();
        assert_eq!(ip_of(&f).protocol(), etherparse::IpNumber::IPV4);
        let s = Segments::plan(&f, &bufs[0].offload).unwrap();
        assert_eq!(s.count(), 15);
        let mut seg = vec![0u8; 2048];
        for k in 0..s.count() {
            let n = s.write(&f, k, &mut seg).unwrap();
            assert!(n - 14 <= 1500, "segment {k} fits the uplink's MTU: {n}");
            let outer = ip_of(&seg[..n]);
            assert_eq!(outer.total_len() as usize, n - 14);
            assert!(checksum::verify(outer.slice()));
        }
    }

    #[test]
    fn segments_too_big_for_the_path_get_fragmentation_needed_or_a_counted_drop() {
        // 1448-byte segments + 40 bytes of headers + 20 of IPIP exceed 1500.
        let big = Offload { gso_size: 1448, ..TSO };
        let mut sim = Sim::new(SimOptions::default());
        let mut bufs = [big_from_pod_a(sim::NODE3_POD, big)];
        assert_eq!(process(&mut sim, &mut bufs), [(sim::POD_A, 0)], "an ICMP error back to the pod");
        let f = bufs[0].data();
        let p = SlicedPacket::from_ethernet(f).unwrap();
        match p.transport {
            Some(etherparse::TransportSlice::Icmpv4(i)) => {
                assert_eq!((i.type_u8(), i.code_u8()), (3, 4));
                assert_eq!(u16::from_be_bytes([f[14 + 20 + 6], f[14 + 20 + 7]]), 1480, "next-hop MTU");
            }
            t => panic!("not ICMP: {t:?}"),
        }
        assert!(f.len() <= 14 + 576);
        assert_eq!(bufs[0].offload, Offload::NONE, "the error is a plain frame");
        assert_eq!(drops(&sim, DropReason::FragNeeded), 1);

        // Without DF: nothing sends this; counted, not fragmented.
        let mut bufs = [big_from_pod_a(sim::NODE3_POD, big)];
        let len = bufs[0].len;
        frames::set_df(&mut bufs[0].buf[HEADROOM..HEADROOM + len], false);
        assert!(process(&mut sim, &mut bufs).is_empty());
        assert_eq!(drops(&sim, DropReason::GsoTooBig), 1);
    }
}
