//! The neighbour table's hit path, against the single-writer alternative issue 10 asks about:
//! workers reading an immutable map that one control thread republishes (`ArcSwap` of a
//! `HashMap`, as VPP keeps neighbours on its main thread and workers read adjacencies).
//! Both answer 64 lookups per iteration (one batch) over 512 resolved neighbours; the
//! snapshot loads its `Arc` once per batch, as a worker would. Keys are drawn before timing.
//!
//! Run: `cargo bench -p vrouter-core --bench neigh -- --measurement-time 2 --warm-up-time 1`

use std::collections::HashMap;
use std::hint::black_box;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vrouter_core::neigh::{NeighConfig, NeighLookup, NeighTable};

const NEIGHBOURS: u32 = 512;
const BATCH: usize = 64;

fn ip(i: u32) -> u32 {
    0xc0a8_0000 | (i + 2)
}

fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0, b[0], b[1], b[2], b[3]]
}

fn batches(n: usize) -> Vec<[u32; BATCH]> {
    let mut rng = SmallRng::seed_from_u64(3);
    (0..n).map(|_| std::array::from_fn(|_| ip(rng.random_range(0..NEIGHBOURS)))).collect()
}

fn hits(c: &mut Criterion) {
    let keys = batches(1024);
    let mut g = c.benchmark_group("neigh/hit-batch-64");

    let table = NeighTable::new(NeighConfig { capacity: 1024, ..Default::default() }).unwrap();
    for i in 0..NEIGHBOURS {
        assert!(matches!(table.lookup(ip(i), 0), NeighLookup::Incomplete { send_request: true }));
        table.on_reply(ip(i), mac(i), 0).unwrap();
    }
    let mut k = 0;
    g.bench_function("lock-free table (today)", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            let mut x = 0u8;
            for &a in &keys[k] {
                if let NeighLookup::Reachable(m) = table.lookup(black_box(a), 1_000) {
                    x ^= m[5];
                }
            }
            x
        })
    });

    let map: HashMap<u32, [u8; 6]> = (0..NEIGHBOURS).map(|i| (ip(i), mac(i))).collect();
    let published = ArcSwap::from_pointee(map);
    let mut k = 0;
    g.bench_function("single-writer snapshot (ArcSwap<HashMap>)", |b| {
        b.iter(|| {
            k = (k + 1) % keys.len();
            let snap = published.load();
            let mut x = 0u8;
            for &a in &keys[k] {
                if let Some(m) = snap.get(&black_box(a)) {
                    x ^= m[5];
                }
            }
            x
        })
    });
    g.finish();
}

criterion_group!(benches, hits);
criterion_main!(benches);
