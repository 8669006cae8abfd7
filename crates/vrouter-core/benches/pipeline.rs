//! Criterion: one pipeline call over a batch of 64 64-byte frames, per scenario, over the full
//! table (or a synthetic one with the same length distribution when the file is absent).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vrouter_core::dataplane::bench::{load_prefixes, Kind, Scenario, BATCH};

fn pipeline(c: &mut Criterion) {
    let (prefixes, name) = load_prefixes(None).expect("table loads");
    eprintln!("table: {name} ({} prefixes)", prefixes.len());
    let mut g = c.benchmark_group("pipeline");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (label, kind) in [("forward", Kind::Forward), ("encap_acl1000", Kind::EncapAcl), ("decap", Kind::Decap)] {
        let mut s = Scenario::new(kind, &prefixes, 7);
        let mut t = 0u64;
        g.bench_function(label, |b| {
            b.iter(|| {
                t += 1;
                s.run_batch(1_000 + t / 4096)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
