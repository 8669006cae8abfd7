//! Proves the steady-state hot path never allocates: a counting global allocator wraps the
//! system one, the simulated node is warmed up, then thousands of batches of every common kind
//! (forward, IPIP encap, decap, ICMP errors, fragmentation, drops) must not allocate at all.

use std::sync::atomic::Ordering::Relaxed;

use vrouter_core::dataplane::sim::{self, frames, Sim, SimOptions};
use vrouter_core::dataplane::PacketBuf;

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations_in, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn steady_state_pipeline_does_not_allocate() {
    let mut sim = Sim::new(SimOptions::default());
    let big: Vec<u8> = vec![0x5a; 1472];
    let mut frag = frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE3_POD, 64, 7, 7, &big);
    frames::set_df(&mut frag, false);
    let inner = frames::udp(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_POD, sim::POD_A_IP, 63, 1, 2, b"in");
    let templates: Vec<(Vec<u8>, u16)> = vec![
        (frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::POD_B_IP, 64, 1, 2, b"a"), sim::POD_A),
        (frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE2_POD, 64, 1, 2, b"b"), sim::POD_A),
        (frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE3_POD, 64, 1, 2, b"c"), sim::POD_A),
        (frames::ipip(sim::GW_MAC, sim::UPLINK_MAC, sim::NODE3_IP, sim::NODE_IP, &inner), sim::UPLINK),
        (frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::POD_B_IP, 1, 1, 2, b"ttl"), sim::POD_A),
        (
            frames::udp(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, 0x0808_0808, 64, 1, 2, b"noroute"),
            sim::POD_A,
        ),
        (frames::ping(sim::POD_A_MAC, sim::POD_A_PORT_MAC, sim::POD_A_IP, sim::NODE_IP, 64, 1, 1, b"ping"), sim::POD_A),
        (frag, sim::POD_A),
        (vec![0u8; 10], sim::POD_A),
    ];
    let mut bufs: Vec<PacketBuf> = (0..64).map(|i| PacketBuf::new(&templates[i % templates.len()].0, 0)).collect();
    let run = |sim: &mut Sim, bufs: &mut Vec<PacketBuf>, now: u64| {
        for (i, b) in bufs.iter_mut().enumerate() {
            let (f, p) = &templates[i % templates.len()];
            b.reset(f, *p);
        }
        let out = sim.pipeline.process(bufs, now);
        out.active_ports().count() + out.emitted.len()
    };
    // Warm-up: first-use allocations (thread-local epoch registration and the like).
    for t in 0..10 {
        run(&mut sim, &mut bufs, t);
    }
    let mut sent = 0;
    let allocs = allocations_in(|| {
        for t in 0..5_000u64 {
            sent += run(&mut sim, &mut bufs, 10 + t);
        }
    });
    assert!(sent > 0);
    assert_eq!(allocs, 0, "allocations in the steady state");
    let c = sim.pipeline.counters();
    assert!(c.ipip_encap.load(Relaxed) > 0 && c.ipip_decap.load(Relaxed) > 0 && c.fragmented.load(Relaxed) > 0);
    assert!(c.icmp_errors_sent.load(Relaxed) > 0);
}
