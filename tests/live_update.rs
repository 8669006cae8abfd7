//! Live updates against a worker that never stops (no root needed): a worker thread forwards
//! batches from a pod the whole time while the control side applies thousands of changes
//! through [`Node`]: CLI routes (plain and ECMP) whose next hops are new each time, a route that flips between a gateway and a
//! blackhole, a third pod coming and going, policies set and deleted, peers added and removed,
//! whole configs applied. Every frame of a path that stays valid must be forwarded to the
//! right port; the flipping route's frames must be forwarded or dropped as `fib/blackhole`;
//! nothing may ever be dropped for want of a next hop.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vrouter::control::build::NhKey;
use vrouter::control::config::Config;
use vrouter::control::fixtures;
use vrouter::control::node::{NoIo, Node};
use vrouter_core::dataplane::sim::frames;
use vrouter_core::dataplane::{PacketBuf, Pipeline, PipelineConfig, Shared};
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::neigh::{NeighConfig, NeighTable};
use vrouter_core::stats::DropReason;
use vrouter_core::wire::MacAddr;

/// Node `live` with peer n2 (192.168.1.20), pods a (10.244.1.2) and b (10.244.1.3), static
/// neighbours for n2 and two gateways (.30, .31), and for the churned routes 192.168.1.100..=139
/// (MAC 02:00:00:00:01:xx, first prefix) and 192.168.1.200..=239 (02:00:00:00:02:xx, second).
fn base() -> String {
    let mut s = fixtures::node_toml("live");
    s += &fixtures::peer_toml("n2", 20, 2);
    s += &fixtures::endpoint_toml("a", 2);
    s += &fixtures::endpoint_toml("b", 3);
    for host in [20, 30, 31] {
        s += &fixtures::neighbour_toml(host, 0);
    }
    for i in 0..40 {
        s += &fixtures::neighbour_toml(100 + i, 1);
        s += &fixtures::neighbour_toml(200 + i, 2);
    }
    s
}

fn cfg(extra: &str) -> Config {
    Config::parse(&format!("{}{extra}", base()), Path::new("live.toml")).unwrap()
}

const POD_A_IP: u32 = 0x0af4_0102;
const POD_B_IP: u32 = 0x0af4_0103;
const REMOTE_POD: u32 = 0x0af4_0205; // 10.244.2.5 behind n2
const FLIP_DST: u32 = 0xcb00_7101; // 203.0.113.1
const CHURN1_DST: u32 = 0xc612_0001; // 198.18.0.1
const CHURN2_DST: u32 = 0xc613_0001; // 198.19.0.1

#[derive(Default, Debug)]
struct Tally {
    to_b: u64,
    to_remote: u64,
    flip_forwarded: u64,
    flip_blackholed: u64,
    churn_forwarded: u64,
    churn_unrouted: u64,
    wrong: Vec<String>,
}

#[test]
fn a_running_worker_loses_nothing_while_the_node_churns() {
    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    let c0 = cfg("");
    let (shared, fib) = Shared::new(Node::empty_snapshot(&c0, mac), NeighTable::new(NeighConfig::default()).unwrap());
    let mut node = Node::new(c0, mac, shared.clone(), fib, Box::new(NoIo)).unwrap();
    let ports: std::collections::HashMap<String, u16> = node.pod_ports().into_iter().collect();
    let (port_a, port_b) = (ports["a"], ports["b"]);
    let flip: Ipv4Prefix = "203.0.113.0/24".parse().unwrap();
    node.cli_route(flip, Some(NhKey::Gateway("192.168.1.30".parse().unwrap()))).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let worker = {
        let (shared, stop, tally) = (shared.clone(), stop.clone(), tally.clone());
        std::thread::spawn(move || {
            let mut w = Pipeline::new(shared, PipelineConfig::default());
            let pod_a = MacAddr([0x0a, 0, 0, 0, 0, 2]);
            let gw = MacAddr([0xee; 6]);
            let templates: Vec<(u32, Vec<u8>)> = [POD_B_IP, REMOTE_POD, FLIP_DST, CHURN1_DST, CHURN2_DST]
                .iter()
                .map(|&d| (d, frames::udp(pod_a, gw, POD_A_IP, d, 64, 4000, 53, b"live")))
                .collect();
            let k = templates.len();
            let mut bufs: Vec<PacketBuf> = (0..50).map(|i| PacketBuf::new(&templates[i % k].1, port_a)).collect();
            let mut t = Tally::default();
            let mut now = 0;
            while !stop.load(Ordering::Relaxed) {
                for (i, b) in bufs.iter_mut().enumerate() {
                    b.reset(&templates[i % k].1, port_a);
                }
                now += 1;
                w.process(&mut bufs, now);
                let out = w.output();
                let mut sent_to = vec![None; bufs.len()];
                for p in out.active_ports() {
                    for &i in out.tx(p) {
                        sent_to[i as usize] = Some(p);
                    }
                }
                for (i, s) in sent_to.iter().enumerate() {
                    // The gateway a forwarded frame was sent to, by its destination MAC.
                    let dmac = &bufs[i].data()[..6];
                    let via = |set: u8| dmac[..4] == [2, 0, 0, 0] && dmac[4] == set;
                    match (templates[i % k].0, s) {
                        (POD_B_IP, Some(p)) if *p == port_b && dmac == [0x0a, 0, 0, 0, 0, 3] => t.to_b += 1,
                        (REMOTE_POD, Some(0)) if dmac == [2, 0, 0, 0, 0, 20] => t.to_remote += 1,
                        (FLIP_DST, Some(0)) if dmac == [2, 0, 0, 0, 0, 30] => t.flip_forwarded += 1,
                        (FLIP_DST, None) => t.flip_blackholed += 1,
                        (CHURN1_DST, Some(0)) if via(1) => t.churn_forwarded += 1,
                        (CHURN2_DST, Some(0)) if via(2) => t.churn_forwarded += 1,
                        // No route at the time: ICMP net unreachable back to the pod (or rate-limited).
                        (CHURN1_DST | CHURN2_DST, None) => t.churn_unrouted += 1,
                        (CHURN1_DST | CHURN2_DST, Some(p)) if *p == port_a && bufs[i].data()[23] == 1 => {
                            t.churn_unrouted += 1
                        }
                        (d, s) => {
                            if t.wrong.len() < 10 {
                                t.wrong.push(format!("frame to {d:#x} went to {s:?}"));
                            }
                        }
                    }
                }
            }
            let c = w.counters();
            let bad = c.drops(DropReason::BadNextHop) + c.drops(DropReason::UnknownPort);
            let (blackholed, unrouted) = (c.drops(DropReason::Blackhole), c.drops(DropReason::NoRoute));
            let total = c.total_drops();
            *tally.lock().unwrap() = t;
            (bad, blackholed, unrouted, total)
        })
    };

    // Thousands of changes while the worker runs. The two churned prefixes get a next hop
    // that is new each time (ids are freed and reused all the time): a frame forwarded by a
    // stale id would leave through the other prefix's gateways and be caught by its MAC.
    let mut changes = 0;
    let gw = |set: u32, i: u32| NhKey::Gateway(format!("192.168.1.{}", set * 100 + i % 40).parse().unwrap());
    let (p1, p2): (Ipv4Prefix, Ipv4Prefix) = ("198.18.0.0/24".parse().unwrap(), "198.19.0.0/24".parse().unwrap());
    for i in 0..1500u32 {
        for (set, p) in [(1, p1), (2, p2)] {
            let k = if i % 3 == 0 { NhKey::Ecmp(vec![gw(set, i), gw(set, i + 7)]) } else { gw(set, i + set) };
            node.cli_route(p, Some(k)).unwrap();
            changes += 1;
        }
        if i % 2 == 0 {
            node.cli_route(if i % 4 == 0 { p1 } else { p2 }, None).unwrap();
            changes += 1;
        }
        if i % 5 == 0 {
            let k = if i % 10 == 0 { NhKey::Blackhole } else { NhKey::Gateway("192.168.1.30".parse().unwrap()) };
            node.cli_route(flip, Some(k)).unwrap();
            changes += 1;
        }
        if i % 50 == 0 {
            let (pod_c, peer_n3) = (fixtures::endpoint_toml("c", 4), fixtures::peer_toml("n3", 21, 3));
            let extra = match (i / 50) % 4 {
                0 => pod_c,
                1 => format!("{pod_c}{peer_n3}"),
                2 => format!("{peer_n3}\n[policies]\nunused = [{{ action = \"deny\", protocol = \"tcp\" }}]\n"),
                _ => String::new(),
            };
            node.apply(cfg(&extra)).unwrap();
            changes += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (bad, blackholed, unrouted, total_drops) = worker.join().unwrap();
    let t = tally.lock().unwrap();
    eprintln!(
        "{changes} changes, {} snapshots published; worker: {t:?}, drops {total_drops}",
        node.snapshots_published()
    );
    assert!(t.wrong.is_empty(), "misrouted: {:?}", t.wrong);
    assert_eq!(bad, 0, "frames dropped for want of a next hop or port");
    assert!(t.to_b > 1000 && t.to_remote > 1000, "the worker ran throughout: {t:?}");
    assert!(t.flip_forwarded > 0 && t.flip_blackholed > 0, "both states of the flipping route were seen: {t:?}");
    assert_eq!(blackholed, t.flip_blackholed, "every frame of the flipping route not forwarded was blackholed");
    assert!(t.churn_forwarded > 0, "{t:?}");
    assert_eq!(unrouted, t.churn_unrouted, "a churned prefix's frame not forwarded had no route at the time");
    assert_eq!(total_drops, blackholed + unrouted, "no other drop");
}
