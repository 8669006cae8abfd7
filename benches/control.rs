//! The control side's cost per change: a CLI route added and deleted (each with a next hop
//! that needs a new id, so a snapshot is published and a grace period waited for), the same
//! with a next hop already known (FIB only), and a whole config applied unchanged and with a
//! pod added and removed. A worker thread forwards the whole time so grace periods wait for
//! real batches.
//!
//! Run: `cargo bench --bench control -- --measurement-time 3 --warm-up-time 1`

use std::hint::black_box;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use vrouter::control::build::NhKey;
use vrouter::control::config::Config;
use vrouter::control::fixtures;
use vrouter::control::node::{NoIo, Node};
use vrouter_core::dataplane::sim::frames;
use vrouter_core::dataplane::{PacketBuf, Pipeline, PipelineConfig, Shared};
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::neigh::{NeighConfig, NeighTable};
use vrouter_core::wire::MacAddr;

fn control(c: &mut Criterion) {
    let mac = MacAddr([2, 0, 0, 0, 0, 1]);
    let base = fixtures::node_toml("bench") + &fixtures::endpoint_toml("a", 2);
    let cfg = |extra: &str| Config::parse(&format!("{base}{extra}"), Path::new("bench.toml")).unwrap();
    let (shared, fib) =
        Shared::new(Node::empty_snapshot(&cfg(""), mac), NeighTable::new(NeighConfig::default()).unwrap());
    let mut node = Node::new(cfg(""), mac, shared.clone(), fib, Box::new(NoIo)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut w = Pipeline::new(shared, PipelineConfig::default());
            let f = frames::udp(
                MacAddr([0x0a, 0, 0, 0, 0, 2]),
                MacAddr([0xee; 6]),
                0x0af4_0102,
                0xc612_0001,
                64,
                1,
                2,
                b"x",
            );
            let mut bufs: Vec<PacketBuf> = (0..64).map(|_| PacketBuf::new(&f, 2)).collect();
            let mut now = 0;
            while !stop.load(Ordering::Relaxed) {
                for b in bufs.iter_mut() {
                    b.reset(&f, 2);
                }
                now += 1;
                w.process(&mut bufs, now / 1000);
            }
        })
    };
    let p: Ipv4Prefix = "198.18.0.0/24".parse().unwrap();
    let mut i = 0u32;
    let mut g = c.benchmark_group("control");
    g.bench_function("route add+del, new next hop (publish + grace)", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let k = NhKey::Gateway(format!("192.168.1.{}", 100 + i % 100).parse().unwrap());
            node.cli_route(p, Some(k)).unwrap();
            black_box(node.cli_route(p, None).unwrap());
        })
    });
    node.cli_route("198.19.0.0/24".parse().unwrap(), Some(NhKey::Gateway("192.168.1.99".parse().unwrap()))).unwrap();
    g.bench_function("route add+del, known next hop (FIB only)", |b| {
        b.iter(|| {
            node.cli_route(p, Some(NhKey::Gateway("192.168.1.99".parse().unwrap()))).unwrap();
            black_box(node.cli_route(p, None).unwrap());
        })
    });
    let (same, with_b) = (cfg(""), cfg(&fixtures::endpoint_toml("b", 3)));
    g.bench_function("apply unchanged config", |b| b.iter(|| black_box(node.apply(same.clone()).unwrap())));
    g.bench_function("apply: pod added then removed", |b| {
        b.iter(|| {
            node.apply(with_b.clone()).unwrap();
            black_box(node.apply(same.clone()).unwrap())
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    worker.join().unwrap();
}

criterion_group!(benches, control);
criterion_main!(benches);
