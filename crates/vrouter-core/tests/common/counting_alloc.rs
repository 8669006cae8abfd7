//! A global allocator that counts the allocations of the thread under test, for the tests and
//! benches that prove a path allocates nothing (`tests/no_alloc.rs`, `tests/fib_noalloc.rs`,
//! `benches/acl.rs`). One copy, included by each with
//! `#[path = "common/counting_alloc.rs"] mod counting_alloc;` (a bench: `../tests/common/...`).
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc;
//! let n = counting_alloc::allocations_in(|| hot_path());
//! ```
//!
//! Only the calling thread's allocations and reallocations are counted: the test harness's
//! other threads (output capture, other tests) cannot make a run fail, and a path under test
//! that moved work to another thread would not be measured (none does: the pipeline, the FIB
//! lookups and the ACL all run on the caller's thread).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // `const` initialisers without `Drop`: reading them never allocates or registers a
    // destructor, so the allocator may use them.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting `alloc` and `realloc` calls of threads inside
/// [`allocations_in`].
pub struct CountingAlloc;

fn count() {
    // `try_with`: during thread teardown the slots may be gone; such calls are not counted.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: defers every operation to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` (or `realloc`) with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(p, l, n) }
    }
}

/// Runs `f` and returns how many times this thread allocated (or reallocated) meanwhile.
/// Panics if `CountingAlloc` is not the `#[global_allocator]` (every count would be 0).
pub fn allocations_in(f: impl FnOnce()) -> u64 {
    let probe = counted(|| drop(std::hint::black_box(Box::new(0u64))));
    assert_eq!(probe, 1, "CountingAlloc is not the #[global_allocator] of this binary");
    counted(f)
}

fn counted(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}
