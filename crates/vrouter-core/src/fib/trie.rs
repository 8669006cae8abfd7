//! The reader side of the FIB: the published lookup structure ([`Tables`]) and the lock-free
//! lookups over it ([`Fib`], [`FibGuard`]).
//!
//! Layout (a poptrie, Asai & Ohara, SIGCOMM 2015, with direct pointing on 18 bits):
//!
//! * `top`: 2^18 `AtomicU32`, one per /18 block. With [`LEAF_TAG`] set, the low 16 bits are the
//!   answer for the whole block (no route longer than /18 inside it: 3/4 of the blocks of a
//!   full Internet table). Otherwise the value is the index of the block's root node.
//! * `nodes`: 6-bit-stride nodes `{vector, leafvec, base0, base1}`. Bit `v` of `vector` says
//!   slot `v` continues in a child node, found at `base1 + popcount(vector & bits 0..=v) - 1`
//!   (children are contiguous). Leaf slots are compressed: `leafvec` marks the slots where a run
//!   of equal leaf-pushed next hops starts, and the answer is
//!   `leaves[base0 + popcount(leafvec & bits 0..=v) - 1]`. Depths: root = bits 18..24 (so a /24,
//!   half the Internet table, ends exactly at the root), then 24..30, then 30..32.
//! * `leaves`: `u16` next hops.
//!
//! Nodes and leaves live in two arenas addressed by `u32` indices rather than one heap
//! allocation per block: 65k blocks times (malloc header + 8-byte pointer) would cost more than
//! the whole leaf array. The arenas are allocated zeroed with their full capacity up front (the
//! kernel commits pages only when written) and never move while published; the writer grows
//! them by building a fresh [`Tables`] and swapping the root pointer.
//!
//! Concurrency: the writer never modifies memory a reader can reach. It builds a block's new
//! nodes and leaves in free arena space, publishes them with one release store into the block's
//! top entry, and recycles the old ranges only after a crossbeam-epoch grace period (see
//! `writer.rs`). Readers pin an epoch once per batch; each lookup is one acquire load (a plain
//! load on x86) followed by plain reads of memory that is immutable while reachable.

use std::alloc::{self, Layout};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use crossbeam_epoch::{self as epoch, Atomic, Guard};

use super::NhId;
use crate::prefetch::prefetch;

/// Bits resolved by the direct-pointing top table.
pub(crate) const TOP_BITS: u32 = 18;
pub(crate) const TOP_SIZE: usize = 1 << TOP_BITS;
/// Bits resolved per node.
pub(crate) const STRIDE: u32 = 6;
/// Top entry flag: the low 16 bits are the next hop for the whole /18.
pub(crate) const LEAF_TAG: u32 = 1 << 31;
/// How far ahead `lookup_batch` prefetches top entries. Measured on the full table with random
/// keys (Zen, lookups/s, median of 7): 4 -> no gain, 8: 154M, 12: 158M, 16: 168M, 24: 157M,
/// none: 150M.
const PREFETCH_AHEAD: usize = 16;

/// A 6-bit-stride poptrie node (24 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Node {
    pub vector: u64,
    pub leafvec: u64,
    pub base0: u32,
    pub base1: u32,
}

/// `popcount(x & bits 0..=v)`.
#[inline(always)]
fn rank(x: u64, v: u32) -> u32 {
    (x & (u64::MAX >> (63 - v))).count_ones()
}

/// The 6-bit slot of `addr` in a node starting at bit offset `o` (18, 24, 30). Bits past /32
/// read as zero, so the last level is an ordinary node where only 4 of 64 slots are reachable.
#[inline(always)]
pub(crate) fn slot_of(addr: u32, o: u32) -> u32 {
    ((((addr as u64) << 32) >> (64 - o - STRIDE)) & 63) as u32
}

/// Types that may be created by zeroing memory.
///
/// # Safety
/// The all-zero bit pattern must be a valid value.
pub(crate) unsafe trait Zeroable: Copy {}
// SAFETY: integers and structs of integers are valid when zeroed.
unsafe impl Zeroable for u16 {}
// SAFETY: `Node` is four integers.
unsafe impl Zeroable for Node {}

/// A fixed-capacity zeroed array shared between the writer (who fills unreachable slots) and
/// readers (who read reachable ones). No `&[T]` over it is ever formed, because the writer may be
/// writing elsewhere in it at the same time; every access is through raw pointers.
pub(crate) struct RawArray<T: Zeroable> {
    ptr: NonNull<T>,
    cap: usize,
}

// SAFETY: the array is plain memory of `Copy` data; cross-thread access is ordered by the top
// table's release/acquire and the epoch grace period as described in the module docs.
unsafe impl<T: Zeroable + Send> Send for RawArray<T> {}
// SAFETY: as above.
unsafe impl<T: Zeroable + Sync> Sync for RawArray<T> {}

impl<T: Zeroable> RawArray<T> {
    pub(crate) fn new(cap: usize) -> Self {
        let cap = cap.max(1);
        let layout = Layout::array::<T>(cap).expect("FIB arena capacity overflows");
        // SAFETY: `layout` has non-zero size (cap >= 1 and T is not zero-sized).
        let raw = unsafe { alloc::alloc_zeroed(layout) } as *mut T;
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        RawArray { ptr, cap }
    }

    /// # Safety
    /// `i < cap`, and no thread writes slot `i` concurrently (the writer only writes slots that
    /// no published index reaches).
    #[inline(always)]
    pub(crate) unsafe fn get(&self, i: usize) -> T {
        debug_assert!(i < self.cap);
        // SAFETY: in bounds and race-free per the caller's contract.
        unsafe { self.ptr.as_ptr().add(i).read() }
    }

    /// Copies `src` to `start..start + src.len()`.
    ///
    /// # Safety
    /// The range is in bounds and unreachable from any published top entry (fresh or recycled
    /// after a grace period), and only the single writer calls this.
    pub(crate) unsafe fn write(&self, start: usize, src: &[T]) {
        assert!(start + src.len() <= self.cap, "FIB arena write out of bounds");
        // SAFETY: bounds checked above; no reader can reach the range (caller's contract), and
        // `src` is a distinct Rust allocation so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr.as_ptr().add(start), src.len()) }
    }
}

impl<T: Zeroable> Drop for RawArray<T> {
    fn drop(&mut self) {
        let layout = Layout::array::<T>(self.cap).expect("layout was valid at allocation");
        // SAFETY: allocated in `new` with this layout; dropped once.
        unsafe { alloc::dealloc(self.ptr.as_ptr() as *mut u8, layout) }
    }
}

/// One published version of the lookup structure. Replaced wholesale only when the arenas must
/// grow or on a bulk load; otherwise updated in place block by block.
pub(crate) struct Tables {
    pub(crate) top: Box<[AtomicU32]>,
    pub(crate) nodes: RawArray<Node>,
    pub(crate) leaves: RawArray<NhId>,
}

impl Tables {
    pub(crate) fn new(top: Vec<u32>, node_cap: usize, leaf_cap: usize) -> Self {
        assert_eq!(top.len(), TOP_SIZE);
        Tables {
            top: top.into_iter().map(AtomicU32::new).collect(),
            nodes: RawArray::new(node_cap),
            leaves: RawArray::new(leaf_cap),
        }
    }

    /// Continues a lookup at node `n` whose stride starts at bit `o`.
    #[inline(always)]
    fn walk(&self, mut n: u32, addr: u32, mut o: u32) -> NhId {
        loop {
            // SAFETY: `n` came from a published top entry or a published node, so it indexes a
            // node the writer finished before the release store we acquired; it stays
            // unmodified until a grace period after it becomes unreachable, and our caller
            // holds an epoch pin.
            let node = unsafe { self.nodes.get(n as usize) };
            let v = slot_of(addr, o);
            if node.vector >> v & 1 != 0 {
                n = node.base1 + rank(node.vector, v) - 1;
                o += STRIDE;
            } else {
                let l = node.base0 + rank(node.leafvec, v) - 1;
                // SAFETY: as for nodes: a published leaf range.
                return unsafe { self.leaves.get(l as usize) };
            }
        }
    }

    #[inline(always)]
    pub(crate) fn lookup(&self, addr: u32) -> NhId {
        let e = self.top[(addr >> (32 - TOP_BITS)) as usize].load(Ordering::Acquire);
        if e & LEAF_TAG != 0 {
            return e as NhId;
        }
        self.walk(e, addr, TOP_BITS)
    }

    /// Lookups in order, prefetching the top entry `PREFETCH_AHEAD` keys ahead.
    #[inline(always)]
    fn lookup_many(&self, addrs: &[u32], out: &mut [NhId]) {
        let top = self.top.as_ptr();
        for (i, (o, &a)) in out.iter_mut().zip(addrs).enumerate() {
            if let Some(&next) = addrs.get(i + PREFETCH_AHEAD) {
                prefetch(top.wrapping_add((next >> (32 - TOP_BITS)) as usize));
            }
            *o = self.lookup(a);
        }
    }
}

/// The shared, read-only face of the FIB. Workers hold an `Arc<Fib>` and pin once per batch.
pub struct Fib {
    pub(crate) tables: Atomic<Tables>,
    pub(crate) prefixes: AtomicUsize,
}

impl Fib {
    pub(crate) fn new(tables: Tables) -> Self {
        Fib { tables: Atomic::new(tables), prefixes: AtomicUsize::new(0) }
    }

    /// Enters an epoch for a batch of lookups. Keep the guard for one batch only: while any
    /// guard lives, memory replaced by the writer cannot be recycled.
    pub fn pin(&self) -> FibGuard<'_> {
        let guard = epoch::pin();
        let t = self.tables.load(Ordering::Acquire, &guard);
        FibGuard { tables: t.as_raw(), _guard: guard, _fib: PhantomData }
    }

    /// Number of routes in the FIB as of the last completed update.
    pub fn prefixes(&self) -> usize {
        self.prefixes.load(Ordering::Relaxed)
    }
}

impl Drop for Fib {
    fn drop(&mut self) {
        // SAFETY: `&mut self` means no reader holds a guard on this Fib and the writer (which
        // holds an Arc) is gone, so nobody else can reach the current tables.
        unsafe {
            let t = self.tables.load(Ordering::Relaxed, epoch::unprotected());
            if !t.is_null() {
                drop(t.into_owned());
            }
        }
    }
}

/// A pinned view of the FIB for one batch of lookups.
pub struct FibGuard<'a> {
    tables: *const Tables,
    _guard: Guard,
    _fib: PhantomData<&'a Fib>,
}

impl FibGuard<'_> {
    #[inline(always)]
    fn tables(&self) -> &Tables {
        // SAFETY: loaded under `_guard`, which we hold; the writer destroys a replaced `Tables`
        // only through `defer_destroy`, i.e. after every guard pinned before the swap is gone.
        // The pointer is never null: `Fib` always holds a table.
        unsafe { &*self.tables }
    }

    /// Longest-prefix match for `addr` (host order); [`NH_NONE`](super::NH_NONE) if no route.
    #[inline]
    pub fn lookup(&self, addr: u32) -> NhId {
        self.tables().lookup(addr)
    }

    /// Same answers as [`lookup`](Self::lookup) for each key. Panics if `out` is shorter than
    /// `addrs`.
    ///
    /// Memory-level parallelism comes from the out-of-order core: consecutive lookups are
    /// independent, so their misses overlap on their own; this adds a prefetch of the top entry
    /// 16 keys ahead. A staged version (all top loads of 32 keys, then all root nodes, then
    /// all leaves, with prefetches between stages) measured 40% *slower* here (102M vs 168M
    /// lookups/s): the stages add loads, stores and a second mispredicted leaf-or-node branch
    /// per key, while the reorder window already holds several scalar lookups.
    #[inline]
    pub fn lookup_batch(&self, addrs: &[u32], out: &mut [NhId]) {
        assert!(out.len() >= addrs.len(), "lookup_batch: out is shorter than addrs");
        self.tables().lookup_many(addrs, &mut out[..addrs.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fib_is_shareable_and_writer_is_movable() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<Fib>();
        send_sync::<std::sync::Arc<Fib>>();
        send::<super::super::FibWriter>();
        assert_eq!(std::mem::size_of::<Node>(), 24);
    }

    #[test]
    fn rank_counts_bits_up_to_and_including_v() {
        assert_eq!(rank(0b1011, 0), 1);
        assert_eq!(rank(0b1011, 2), 2);
        assert_eq!(rank(u64::MAX, 63), 64);
        assert_eq!(rank(1 << 63, 62), 0);
    }

    #[test]
    fn slot_of_takes_six_bits_and_pads_past_32() {
        let a = 0xC0A8_0AFF; // 192.168.10.255
        assert_eq!(slot_of(a, 18), (a >> 8) & 63);
        assert_eq!(slot_of(a, 24), (a >> 2) & 63);
        assert_eq!(slot_of(a, 30), (a & 3) << 4);
    }
}
