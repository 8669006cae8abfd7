//! The Internet checksum over the payloads GSO and GRO sum (a wire segment, a 64 KiB one):
//! `wire::checksum::sum` against RFC 1071's big-endian 16-bit loop, side by side.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use vrouter_core::wire::checksum::{fold, sum};

/// RFC 1071 as written: big-endian 16-bit words, the odd byte padded with a zero.
fn rfc1071(data: &[u8]) -> u16 {
    let mut acc = 0u64;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = words.remainder() {
        acc += u64::from(*b) << 8;
    }
    fold(acc)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("checksum");
    for len in [1448usize, 3428, 65_483] {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        assert_eq!(fold(sum(0, &data)), rfc1071(&data));
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("vrouter", len), &data, |b, d| b.iter(|| fold(sum(0, black_box(d)))));
        g.bench_with_input(BenchmarkId::new("rfc1071_loop", len), &data, |b, d| b.iter(|| rfc1071(black_box(d))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
