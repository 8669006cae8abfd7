//! FIB benchmarks: batch lookup over random keys, the prefix-trie crate on the same keys, and
//! writer churn. Uses the real full table when present (`../shared/data/`), else a synthetic
//! table with its length distribution. Inputs are generated before the timed regions.
//!
//! `cargo bench --bench fib` (add `-- fib/` or `-- prefix-trie` to filter).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use vrouter_core::fib::table::{default_table_path, load_table_file, synthetic_table, FULL_TABLE_PREFIXES};
use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId, NH_NONE};

const BATCH: usize = 64;
const KEYS: usize = 1 << 22;

fn routes() -> Vec<(Ipv4Prefix, NhId)> {
    let table = match default_table_path() {
        Some(p) => load_table_file(&p).expect("full table"),
        None => {
            eprintln!("full table not found; benchmarking a synthetic table");
            synthetic_table(FULL_TABLE_PREFIXES, 1)
        }
    };
    let mut rng = SmallRng::seed_from_u64(1);
    table.into_iter().map(|p| (p, rng.random_range(1..=4000))).collect()
}

fn benches(c: &mut Criterion) {
    let routes = routes();
    let mut rng = SmallRng::seed_from_u64(2);
    let keys: Vec<u32> = (0..KEYS).map(|_| rng.random()).collect();
    let (mut w, fib) = FibWriter::new();
    w.load(routes.iter().copied());

    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(BATCH as u64));
    let mut i = 0;
    g.bench_function("fib/lookup_batch64", |b| {
        let mut out = [0 as NhId; BATCH];
        b.iter(|| {
            let guard = fib.pin();
            guard.lookup_batch(&keys[i..i + BATCH], &mut out);
            i = (i + BATCH) % KEYS;
            black_box(&out);
        })
    });
    let mut i = 0;
    g.bench_function("fib/lookup64", |b| {
        let mut out = [0 as NhId; BATCH];
        b.iter(|| {
            let guard = fib.pin();
            for (o, &k) in out.iter_mut().zip(&keys[i..i + BATCH]) {
                *o = guard.lookup(k);
            }
            i = (i + BATCH) % KEYS;
            black_box(&out);
        })
    });
    let mut map = prefix_trie::PrefixMap::<(u32, u8), NhId>::new();
    for &(p, nh) in &routes {
        map.insert((p.addr(), p.len()), nh);
    }
    let mut i = 0;
    g.bench_function("prefix-trie/get_lpm64", |b| {
        let mut out = [0 as NhId; BATCH];
        b.iter(|| {
            for (o, &k) in out.iter_mut().zip(&keys[i..i + BATCH]) {
                *o = map.get_lpm(&(k, 32)).map_or(NH_NONE, |(_, &nh)| nh);
            }
            i = (i + BATCH) % KEYS;
            black_box(&out);
        })
    });
    g.finish();
    drop(map);

    // Churn: remove a random table route and put it back (two route changes per iteration).
    let mut g = c.benchmark_group("update");
    g.throughput(Throughput::Elements(2));
    g.bench_function("fib/remove+insert", |b| {
        b.iter_batched(
            || routes[rng.random_range(0..routes.len())],
            |(p, nh)| {
                w.remove(p);
                w.insert(p, nh);
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    g = c.benchmark_group("load");
    g.sample_size(10);
    g.bench_function("fib/load_full_table", |b| {
        b.iter(|| {
            let (mut w, _fib) = FibWriter::new();
            w.load(routes.iter().copied());
            black_box(w.len())
        })
    });
    g.finish();
}

criterion_group!(fib_benches, benches);
criterion_main!(fib_benches);
