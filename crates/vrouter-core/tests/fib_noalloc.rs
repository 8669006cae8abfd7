//! Lookups allocate nothing: a counting global allocator (this test binary only) sees zero
//! allocations on this thread across many pinned batches once the thread has registered with the epoch
//! collector.

use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId};

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::{allocations_in, CountingAlloc};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[test]
fn lookups_do_not_allocate() {
    let (mut w, fib) = FibWriter::new();
    for (i, s) in ["0.0.0.0/0", "10.0.0.0/8", "10.1.2.0/24", "10.1.2.128/25", "10.1.2.129/32"].iter().enumerate() {
        w.insert(s.parse::<Ipv4Prefix>().unwrap(), i as NhId + 1);
    }
    let addrs: Vec<u32> = (0..256u32).map(|i| 0x0a01_0200 + i).chain((0..256).map(|i| i << 24)).collect();
    let mut out = vec![0 as NhId; addrs.len()];
    drop(fib.pin()); // registers this thread with the collector (allocates once)
    let mut sum = 0u64;
    let allocs = allocations_in(|| {
        for _ in 0..2000 {
            let g = fib.pin();
            g.lookup_batch(&addrs, &mut out);
            sum += out.iter().map(|&x| x as u64).sum::<u64>();
            sum += addrs.iter().map(|&a| g.lookup(a) as u64).sum::<u64>();
        }
    });
    assert_eq!(allocs, 0, "lookups allocated");
    assert!(sum > 0);
}
