//! Lookups allocate nothing: a counting global allocator (this test binary only) sees zero
//! allocations across many pinned batches once the thread has registered with the epoch
//! collector.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn lookups_do_not_allocate() {
    let (mut w, fib) = FibWriter::new();
    for (i, s) in ["0.0.0.0/0", "10.0.0.0/8", "10.1.2.0/24", "10.1.2.128/25", "10.1.2.129/32"].iter().enumerate() {
        w.insert(s.parse::<Ipv4Prefix>().unwrap(), i as NhId + 1);
    }
    let addrs: Vec<u32> = (0..256u32).map(|i| 0x0a01_0200 + i).chain((0..256).map(|i| i << 24)).collect();
    let mut out = vec![0 as NhId; addrs.len()];
    drop(fib.pin()); // registers this thread with the collector (allocates once)
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut sum = 0u64;
    for _ in 0..2000 {
        let g = fib.pin();
        g.lookup_batch(&addrs, &mut out);
        sum += out.iter().map(|&x| x as u64).sum::<u64>();
        sum += addrs.iter().map(|&a| g.lookup(a) as u64).sum::<u64>();
    }
    assert_eq!(ALLOCS.load(Ordering::Relaxed) - before, 0, "lookups allocated");
    assert!(sum > 0);
}
