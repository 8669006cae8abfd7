//! The control side of the FIB: the RIB (exact routes) and the single writer that keeps the
//! published poptrie in step with it.
//!
//! The RIB is split where the trie is: routes of length <= 18 live in a hash map plus a
//! per-/18 array of "best covering short route" (`short_best`), which is exactly the default a
//! block's trie starts from; longer routes live in a sorted vector per /18 block. An update
//! therefore touches only the blocks it covers: a long route rebuilds one block (one root node
//! plus a few children and leaves, built off to the side in scratch vectors), a short route
//! repaints `short_best` over its range and rebuilds or retags the blocks whose default
//! changed.
//!
//! Arena space replaced by updates is handed to `guard.defer` in batches of 64 ranges; when the
//! grace period has passed, crossbeam runs the closure (in whichever thread collects), which
//! sends the ranges back over a channel, and the writer drains that channel into exact-size free
//! lists before its next allocation. Ranges are tagged with the table generation so that ranges
//! of a replaced arena are never freed into its successor. A bulk `load` (or
//! an arena that runs out of capacity) builds a complete fresh [`Tables`] and swaps it in.
//!
//! The replaced tables come back over the same channel and are freed by the writer, never by
//! a reader: the collecting thread is usually a worker pinning for its next batch, and
//! unmapping a full table's arenas there stalled that batch for up to 1.5 ms
//! (`examples/fib_stall.rs`). After a swap the writer waits up to [`RECLAIM_WAIT`] for the
//! grace period (readers pin per batch, so it is normally well under a millisecond); tables
//! still held past that are freed by a later [`FibWriter::collect`] or update.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_epoch::{self as epoch, Guard, Owned};

use super::prefix::{mask, Ipv4Prefix};
use super::trie::{slot_of, Fib, Node, Tables, LEAF_TAG, STRIDE, TOP_BITS, TOP_SIZE};
use super::{NhId, NH_NONE};

const INITIAL_NODES: usize = 1 << 14;
const INITIAL_LEAVES: usize = 1 << 16;
/// Short routes covering more /18 blocks than this (/3 and shorter) rebuild everything.
const FULL_REBUILD_BLOCKS: usize = 1 << 15;
/// Replaced arena ranges handed to the epoch collector per deferred closure.
const DEFER_BATCH: usize = 64;
/// How long the writer waits, after swapping in new tables, to free the old ones itself.
pub const RECLAIM_WAIT: Duration = Duration::from_millis(100);

/// A route longer than /18, kept sorted by `(addr, len)` within its block. In that order a route
/// always precedes the routes it covers, which the builder relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LongRoute {
    addr: u32,
    len: u8,
    nh: NhId,
}

/// Writer-side state of one /18 block.
#[derive(Default)]
struct Block {
    long: Vec<LongRoute>,
    /// Arena ranges of the published trie for this block (`n_nodes == 0`: top entry is a leaf).
    nodes: u32,
    n_nodes: u32,
    leaves: u32,
    n_leaves: u32,
}

/// A bump allocator with exact-size free lists over one arena (indices, not bytes).
#[derive(Default)]
struct Arena {
    cap: u32,
    used: u32,
    free: HashMap<u32, Vec<u32>>,
    free_slots: u64,
}

impl Arena {
    fn new(cap: usize, used: usize) -> Self {
        Arena { cap: cap as u32, used: used as u32, free: HashMap::new(), free_slots: 0 }
    }

    fn alloc(&mut self, n: u32) -> Option<u32> {
        // Exact size first, then a slightly larger block split in two.
        for size in n..=n + n / 4 + 1 {
            if let Some(start) = self.free.get_mut(&size).and_then(|v| v.pop()) {
                self.free_slots -= size as u64;
                if size > n {
                    self.release(start + n, size - n);
                }
                return Some(start);
            }
        }
        if self.used as u64 + n as u64 > self.cap as u64 {
            return None;
        }
        let start = self.used;
        self.used += n;
        Some(start)
    }

    fn release(&mut self, start: u32, n: u32) {
        if n > 0 {
            self.free.entry(n).or_default().push(start);
            self.free_slots += n as u64;
        }
    }
}

/// Arena ranges freed by an update, tagged with the table generation they belong to.
struct Freed {
    generation: u64,
    ranges: Vec<(u32, u32, u32, u32)>,
}

/// What comes back from the epoch collector once no reader can see it.
enum Garbage {
    Ranges(Freed),
    /// Replaced tables, freed when this is dropped (by the writer, as it drains the channel).
    Tables(OldTables),
}

/// Tables swapped out of the FIB, owned by whoever holds this once the grace period passed.
struct OldTables {
    tables: *mut Tables,
    /// The threads that freed this writer's replaced tables (tests only).
    #[cfg(test)]
    log: FreedLog,
}

#[cfg(test)]
type FreedLog = Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>;

// SAFETY: the pointer came from `Owned::into_shared` (a Box) and is unreachable from the FIB;
// once the grace period passed, whoever holds this is its only owner. `Tables` is Send.
unsafe impl Send for OldTables {}

impl Drop for OldTables {
    fn drop(&mut self) {
        #[cfg(test)]
        self.log.lock().unwrap().push(std::thread::current().id());
        // SAFETY: sent only by the deferred closure, after every reader that could have loaded
        // the pointer unpinned; dropped exactly once (this value's own drop).
        drop(unsafe { Box::from_raw(self.tables) });
    }
}

/// Scratch space for building one block.
#[derive(Default)]
struct Scratch {
    nodes: Vec<Node>,
    leaves: Vec<NhId>,
}

/// The single control-side writer. Owns the RIB; every method that changes a route publishes
/// the change to readers before it returns.
pub struct FibWriter {
    fib: Arc<Fib>,
    short: HashMap<(u32, u8), NhId>,
    short_best: Vec<Option<(u8, NhId)>>,
    blocks: Vec<Block>,
    n_long: usize,
    node_arena: Arena,
    leaf_arena: Arena,
    generation: u64,
    freed_tx: Sender<Garbage>,
    freed_rx: Receiver<Garbage>,
    scratch: Scratch,
    /// Replaced ranges not yet handed to the collector (current generation only).
    freed: Vec<(u32, u32, u32, u32)>,
    /// Tables were swapped since the last [`FibWriter::settle`].
    swapped: bool,
    #[cfg(test)]
    freed_log: FreedLog,
}

impl FibWriter {
    /// An empty FIB and its writer.
    pub fn new() -> (FibWriter, Arc<Fib>) {
        let top = vec![LEAF_TAG | NH_NONE as u32; TOP_SIZE];
        let fib = Arc::new(Fib::new(Tables::new(top, INITIAL_NODES, INITIAL_LEAVES)));
        let (freed_tx, freed_rx) = channel();
        let w = FibWriter {
            fib: fib.clone(),
            short: HashMap::new(),
            short_best: vec![None; TOP_SIZE],
            blocks: (0..TOP_SIZE).map(|_| Block::default()).collect(),
            n_long: 0,
            node_arena: Arena::new(INITIAL_NODES, 0),
            leaf_arena: Arena::new(INITIAL_LEAVES, 0),
            generation: 0,
            freed_tx,
            freed_rx,
            scratch: Scratch::default(),
            freed: Vec::new(),
            swapped: false,
            #[cfg(test)]
            freed_log: FreedLog::default(),
        };
        (w, fib)
    }

    /// The shared FIB this writer publishes to.
    pub fn fib(&self) -> &Arc<Fib> {
        &self.fib
    }

    fn tables(&self) -> &Tables {
        // SAFETY: only this writer replaces or destroys the current tables, and it does so
        // through `&mut self`, so the table stays alive for the duration of this borrow.
        unsafe { self.fib.tables.load(Ordering::Acquire, epoch::unprotected()).deref() }
    }

    /// Adds or replaces a route; returns the previous next hop. The change is visible to
    /// lookups when this returns. `insert(p, NH_NONE)` is the same as `remove(p)`.
    pub fn insert(&mut self, p: Ipv4Prefix, nh: NhId) -> Option<NhId> {
        if nh == NH_NONE {
            return self.remove(p);
        }
        self.reclaim();
        let guard = epoch::pin();
        let prev = if p.len() as u32 <= TOP_BITS {
            let prev = self.short.insert((p.addr(), p.len()), nh);
            if prev != Some(nh) {
                self.paint_short(p, Some((p.len(), nh)), |cur| cur.is_none_or(|(l, _)| l <= p.len()));
            }
            prev
        } else {
            let b = (p.addr() >> (32 - TOP_BITS)) as usize;
            let r = LongRoute { addr: p.addr(), len: p.len(), nh };
            let long = &mut self.blocks[b].long;
            let prev = match long.binary_search_by_key(&(r.addr, r.len), |e| (e.addr, e.len)) {
                Ok(i) => Some(std::mem::replace(&mut long[i].nh, nh)),
                Err(i) => {
                    long.insert(i, r);
                    self.n_long += 1;
                    None
                }
            };
            if prev != Some(nh) {
                self.rebuild_block(b);
            }
            prev
        };
        self.finish(&guard);
        drop(guard);
        self.settle();
        prev
    }

    /// Removes a route; returns its next hop if it was present. Addresses it covered fall back
    /// to the next covering route when this returns.
    pub fn remove(&mut self, p: Ipv4Prefix) -> Option<NhId> {
        self.reclaim();
        let guard = epoch::pin();
        let prev = if p.len() as u32 <= TOP_BITS {
            let prev = self.short.remove(&(p.addr(), p.len()))?;
            let parent = self.covering_short(p.addr(), p.len());
            self.paint_short(p, parent, |cur| cur.is_some_and(|(l, _)| l == p.len()));
            prev
        } else {
            let b = (p.addr() >> (32 - TOP_BITS)) as usize;
            let long = &mut self.blocks[b].long;
            let i = long.binary_search_by_key(&(p.addr(), p.len()), |e| (e.addr, e.len)).ok()?;
            let prev = long.remove(i).nh;
            self.n_long -= 1;
            self.rebuild_block(b);
            prev
        };
        self.finish(&guard);
        drop(guard);
        self.settle();
        Some(prev)
    }

    /// Exact-match lookup in the RIB.
    pub fn get(&self, p: Ipv4Prefix) -> Option<NhId> {
        if p.len() as u32 <= TOP_BITS {
            self.short.get(&(p.addr(), p.len())).copied()
        } else {
            let long = &self.blocks[(p.addr() >> (32 - TOP_BITS)) as usize].long;
            let i = long.binary_search_by_key(&(p.addr(), p.len()), |e| (e.addr, e.len)).ok()?;
            Some(long[i].nh)
        }
    }

    /// Adds many routes (later duplicates win) and rebuilds the whole lookup structure once:
    /// much faster than repeated [`insert`](Self::insert). Routes with `NH_NONE` are removed.
    pub fn load<I: IntoIterator<Item = (Ipv4Prefix, NhId)>>(&mut self, routes: I) {
        let mut touched = Vec::new();
        for (p, nh) in routes {
            if p.len() as u32 <= TOP_BITS {
                if nh == NH_NONE {
                    self.short.remove(&(p.addr(), p.len()));
                } else {
                    self.short.insert((p.addr(), p.len()), nh);
                }
            } else {
                // Appended unsorted (NH_NONE entries included, as removal markers); sorted and
                // deduplicated per touched block below.
                let b = (p.addr() >> (32 - TOP_BITS)) as usize;
                touched.push(b as u32);
                self.blocks[b].long.push(LongRoute { addr: p.addr(), len: p.len(), nh });
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for b in touched {
            let long = &mut self.blocks[b as usize].long;
            // Stable sort keeps insertion order among duplicates, so the last one wins below.
            long.sort_by_key(|e| (e.addr, e.len));
            let mut out: Vec<LongRoute> = Vec::with_capacity(long.len());
            for e in long.drain(..) {
                match out.last_mut() {
                    Some(l) if (l.addr, l.len) == (e.addr, e.len) => *l = e,
                    _ => out.push(e),
                }
            }
            out.retain(|e| e.nh != NH_NONE);
            *long = out;
        }
        self.n_long = self.blocks.iter().map(|b| b.long.len()).sum();
        self.rebuild_all(0, 0);
        self.settle();
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.short.len() + self.n_long
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the structure readers use: the top table plus the arenas up to their high-water
    /// marks, which includes free-list space waiting for reuse. Untouched arena capacity beyond
    /// the high-water mark is reserved address space the kernel has not committed; not counted.
    pub fn memory_bytes(&self) -> usize {
        TOP_SIZE * 4
            + self.node_arena.used as usize * std::mem::size_of::<Node>()
            + self.leaf_arena.used as usize * std::mem::size_of::<NhId>()
    }

    /// Approximate bytes of the writer-side RIB (per-block vectors, the short-route hash map,
    /// `short_best`): not touched by lookups, reported apart from `memory_bytes`.
    pub fn rib_memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.blocks.capacity() * size_of::<Block>()
            + self.blocks.iter().map(|b| b.long.capacity() * size_of::<LongRoute>()).sum::<usize>()
            + self.short.capacity() * (size_of::<((u32, u8), NhId)>() + 1)
            + self.short_best.capacity() * size_of::<Option<(u8, NhId)>>()
    }

    /// Bytes of arena space on free lists (included in `memory_bytes`).
    pub fn free_bytes(&self) -> usize {
        self.node_arena.free_slots as usize * std::mem::size_of::<Node>()
            + self.leaf_arena.free_slots as usize * std::mem::size_of::<NhId>()
    }

    /// All routes, sorted by (address, length). Slow path.
    pub fn routes(&self) -> Vec<(Ipv4Prefix, NhId)> {
        let mut v: Vec<(Ipv4Prefix, NhId)> = self
            .short
            .iter()
            .map(|(&(a, l), &nh)| (Ipv4Prefix::new_masked(a, l), nh))
            .chain(
                self.blocks.iter().flat_map(|b| b.long.iter().map(|e| (Ipv4Prefix::new_masked(e.addr, e.len), e.nh))),
            )
            .collect();
        v.sort_unstable();
        v
    }

    /// Rebuilds the lookup structure compactly (drops free-list waste). Readers are not
    /// blocked; they switch to the new structure at their next `pin`.
    pub fn compact(&mut self) {
        self.rebuild_all(0, 0);
        self.settle();
    }

    /// Gives back the writer-side capacity removed routes left behind (the short-route map
    /// and the per-block lists keep their capacity otherwise), then [`FibWriter::compact`]s.
    pub fn shrink_to_fit(&mut self) {
        self.short.shrink_to_fit();
        for b in &mut self.blocks {
            b.long.shrink_to_fit();
        }
        self.compact();
    }

    // --- internals -------------------------------------------------------------------------

    /// The best route of length < `len` covering `addr`, among short routes.
    fn covering_short(&self, addr: u32, len: u8) -> Option<(u8, NhId)> {
        (0..len).rev().find_map(|l| self.short.get(&(addr & mask(l), l)).map(|&nh| (l, nh)))
    }

    /// Sets `short_best` to `new` on every block of `p` where `applies(current)`, and
    /// republishes those blocks.
    fn paint_short(&mut self, p: Ipv4Prefix, new: Option<(u8, NhId)>, applies: impl Fn(Option<(u8, NhId)>) -> bool) {
        let first = (p.addr() >> (32 - TOP_BITS)) as usize;
        let count = 1usize << (TOP_BITS - p.len() as u32);
        if count > FULL_REBUILD_BLOCKS {
            // The RIB already holds the change; a compacting rebuild is cheaper than this many
            // block rebuilds (full table: /0 took 27 ms block by block, 17 ms rebuilt whole).
            self.rebuild_all(0, 0);
            return;
        }
        for b in first..first + count {
            if applies(self.short_best[b]) && self.short_best[b] != new {
                self.short_best[b] = new;
                self.rebuild_block(b);
            }
        }
    }

    /// Publishes block `b` from the RIB; old arena ranges go to `freed`.
    fn rebuild_block(&mut self, b: usize) {
        let default = self.short_best[b].map_or(NH_NONE, |(_, nh)| nh);
        let entry = if self.blocks[b].long.is_empty() {
            (LEAF_TAG | default as u32, (0, 0, 0, 0))
        } else {
            let s = &mut self.scratch;
            s.nodes.clear();
            s.leaves.clear();
            build_block(&self.blocks[b].long, default, &mut s.nodes, &mut s.leaves);
            let (nn, nl) = (s.nodes.len() as u32, s.leaves.len() as u32);
            let (Some(ns), Some(ls)) = (self.node_arena.alloc(nn), self.leaf_arena.alloc(nl)) else {
                // Out of arena capacity: the RIB already holds the change, so a full rebuild
                // with bigger arenas publishes it. (A half-done alloc is dropped with the arena.)
                self.rebuild_all(nn as usize, nl as usize);
                return;
            };
            for n in s.nodes.iter_mut() {
                n.base0 += ls;
                n.base1 += ns;
            }
            let t = self.tables();
            // SAFETY: both ranges were just allocated: fresh space past the high-water mark or
            // space recycled after a grace period, so no published entry reaches them.
            unsafe {
                t.nodes.write(ns as usize, &self.scratch.nodes);
                t.leaves.write(ls as usize, &self.scratch.leaves);
            }
            (ns, (ns, nn, ls, nl))
        };
        // Release: the node and leaf writes above happen-before any reader acquiring this entry.
        self.tables().top[b].store(entry.0, Ordering::Release);
        let blk = &mut self.blocks[b];
        if blk.n_nodes > 0 {
            self.freed.push((blk.nodes, blk.n_nodes, blk.leaves, blk.n_leaves));
        }
        (blk.nodes, blk.n_nodes, blk.leaves, blk.n_leaves) = entry.1;
    }

    /// Updates the shared route count and hands replaced ranges to the epoch collector, in
    /// batches of `DEFER_BATCH` ranges: the deferred closures run inside whichever thread
    /// collects next, often a reader's `pin`, so one closure per update would tax readers.
    fn finish(&mut self, guard: &Guard) {
        self.fib.prefixes.store(self.len(), Ordering::Relaxed);
        if self.freed.len() >= DEFER_BATCH {
            let ranges = std::mem::replace(&mut self.freed, Vec::with_capacity(DEFER_BATCH * 2));
            let tx = self.freed_tx.clone();
            let msg = Garbage::Ranges(Freed { generation: self.generation, ranges });
            guard.defer(move || {
                // The writer may be gone; then nobody needs the ranges.
                let _ = tx.send(msg);
            });
        }
    }

    /// Moves ranges whose grace period has passed onto the free lists and frees replaced
    /// tables. Returns how many tables it freed.
    fn reclaim(&mut self) -> usize {
        let mut tables = 0;
        while let Ok(g) = self.freed_rx.try_recv() {
            match g {
                Garbage::Ranges(f) if f.generation == self.generation => {
                    for (ns, nn, ls, nl) in f.ranges {
                        self.node_arena.release(ns, nn);
                        self.leaf_arena.release(ls, nl);
                    }
                }
                Garbage::Ranges(_) => {}
                Garbage::Tables(old) => {
                    drop(old);
                    tables += 1;
                }
            }
        }
        tables
    }

    /// Frees what readers have let go of since the last update: replaced tables the writer
    /// did not wait out (see the module docs). Cheap; the daemon calls it on its timer.
    /// Returns how many tables it freed.
    pub fn collect(&mut self) -> usize {
        // The flush tries to advance the epoch and runs the deferred closures that are due.
        epoch::pin().flush();
        self.reclaim()
    }

    /// Recomputes `short_best`, builds every block into fresh arenas (with room for at least
    /// `extra_*` more slots plus 50%), and swaps the new tables in.
    fn rebuild_all(&mut self, extra_nodes: usize, extra_leaves: usize) {
        let mut short: Vec<(u32, u8, NhId)> = self.short.iter().map(|(&(a, l), &nh)| (a, l, nh)).collect();
        short.sort_unstable_by_key(|&(a, l, _)| (l, a));
        self.short_best.iter_mut().for_each(|e| *e = None);
        for (a, l, nh) in short {
            let first = (a >> (32 - TOP_BITS)) as usize;
            let count = 1usize << (TOP_BITS - l as u32);
            self.short_best[first..first + count].fill(Some((l, nh)));
        }

        let mut top = vec![0u32; TOP_SIZE];
        let mut nodes: Vec<Node> = Vec::new();
        let mut leaves: Vec<NhId> = Vec::new();
        for (b, blk) in self.blocks.iter_mut().enumerate() {
            let default = self.short_best[b].map_or(NH_NONE, |(_, nh)| nh);
            if blk.long.is_empty() {
                top[b] = LEAF_TAG | default as u32;
                (blk.nodes, blk.n_nodes, blk.leaves, blk.n_leaves) = (0, 0, 0, 0);
            } else {
                let (ns, ls) = (nodes.len() as u32, leaves.len() as u32);
                build_block(&blk.long, default, &mut nodes, &mut leaves);
                top[b] = ns;
                blk.nodes = ns;
                blk.n_nodes = nodes.len() as u32 - ns;
                blk.leaves = ls;
                blk.n_leaves = leaves.len() as u32 - ls;
            }
        }
        let node_cap = ((nodes.len() + extra_nodes) * 3 / 2).max(INITIAL_NODES);
        let leaf_cap = ((leaves.len() + extra_leaves) * 3 / 2).max(INITIAL_LEAVES);
        assert!(node_cap < LEAF_TAG as usize, "FIB node arena exceeds 2^31 nodes");
        let tables = Tables::new(top, node_cap, leaf_cap);
        // SAFETY: the new tables are not yet published, so nobody reads these ranges.
        unsafe {
            tables.nodes.write(0, &nodes);
            tables.leaves.write(0, &leaves);
        }
        self.node_arena = Arena::new(node_cap, nodes.len());
        self.leaf_arena = Arena::new(leaf_cap, leaves.len());
        self.generation += 1;
        // Ranges of the old arenas die with them.
        self.freed.clear();
        let guard = epoch::pin();
        let old = OldTables {
            tables: self.fib.tables.swap(Owned::new(tables), Ordering::AcqRel, &guard).as_raw().cast_mut(),
            #[cfg(test)]
            log: self.freed_log.clone(),
        };
        let tx = self.freed_tx.clone();
        // Readers that loaded `old` before the swap are pinned; the closure runs after they
        // unpinned and hands the tables back to be freed here (or, with the writer gone, frees
        // them where it runs).
        guard.defer(move || {
            let _ = tx.send(Garbage::Tables(old));
        });
        drop(guard);
        self.fib.prefixes.store(self.len(), Ordering::Relaxed);
        self.swapped = true;
    }

    /// After tables were swapped, waits (up to [`RECLAIM_WAIT`]) for the old ones to come back
    /// and frees them. Called by each public change once it holds no guard of its own (this
    /// thread pinned would hold the epoch back).
    fn settle(&mut self) {
        if !std::mem::take(&mut self.swapped) {
            return;
        }
        let start = Instant::now();
        while self.collect() == 0 && start.elapsed() < RECLAIM_WAIT {
            std::thread::yield_now();
        }
    }
}

/// Builds the trie of one /18 block into `nodes`/`leaves` (indices relative to the start of
/// those vectors). `long` is sorted by `(addr, len)` and non-empty.
fn build_block(long: &[LongRoute], default: NhId, nodes: &mut Vec<Node>, leaves: &mut Vec<NhId>) {
    let root = nodes.len();
    nodes.push(Node::default());
    build_node(long, TOP_BITS, default, nodes, leaves, root);
}

fn build_node(routes: &[LongRoute], o: u32, default: NhId, nodes: &mut Vec<Node>, leaves: &mut Vec<NhId>, me: usize) {
    let end = o + STRIDE;
    let mut slots = [default; 64];
    let mut vector = 0u64;
    // In (addr, len) order a route is painted before every route it covers, so more specific
    // routes overwrite less specific ones.
    for r in routes {
        let s = slot_of(r.addr, o) as usize;
        if r.len as u32 <= end {
            let n = 1usize << (end - r.len as u32);
            slots[s..s + n].fill(r.nh);
        } else {
            vector |= 1 << s;
        }
    }
    let base0 = leaves.len() as u32;
    let mut leafvec = 0u64;
    let mut last: Option<NhId> = None;
    for (s, &nh) in slots.iter().enumerate() {
        if vector >> s & 1 == 0 && last != Some(nh) {
            leafvec |= 1 << s;
            leaves.push(nh);
            last = Some(nh);
        }
    }
    let base1 = nodes.len() as u32;
    nodes.resize(nodes.len() + vector.count_ones() as usize, Node::default());
    nodes[me] = Node { vector, leafvec, base0, base1 };
    // Routes deeper than this node are contiguous per slot (see `LongRoute`).
    let (mut i, mut k) = (0, 0);
    while i < routes.len() {
        if routes[i].len as u32 <= end {
            i += 1;
            continue;
        }
        let s = slot_of(routes[i].addr, o);
        let mut j = i + 1;
        while j < routes.len() && slot_of(routes[j].addr, o) == s {
            debug_assert!(routes[j].len as u32 > end);
            j += 1;
        }
        build_node(&routes[i..j], end, slots[s as usize], nodes, leaves, base1 as usize + k);
        k += 1;
        i = j;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::AtomicBool;

    /// The threads that freed `w`'s replaced tables so far.
    fn freed_by(w: &FibWriter) -> Vec<std::thread::ThreadId> {
        w.freed_log.lock().unwrap().clone()
    }

    /// Collects until `n` of `w`'s replaced tables were freed, for up to two seconds (other
    /// tests pin too, which delays grace periods).
    fn collect_until(w: &mut FibWriter, n: usize) -> Vec<std::thread::ThreadId> {
        let start = Instant::now();
        while freed_by(w).len() < n && start.elapsed() < Duration::from_secs(2) {
            w.collect();
            std::thread::sleep(Duration::from_millis(1));
        }
        freed_by(w)
    }

    /// A reader pinning batch after batch (a worker) never frees replaced tables: they come
    /// back to the writer, which frees each exactly once. (Freed by whoever collected, a full table's unmap stalled a
    /// worker's batch for up to 1.5 ms.)
    #[test]
    fn replaced_tables_are_freed_by_the_writer_not_by_a_reader() {
        let (mut w, fib) = FibWriter::new();
        w.load((0..20_000u32).map(|i| (Ipv4Prefix::new_masked(0x0a00_0000 | i << 8, 24), (i % 7 + 1) as NhId)));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (fib, stop) = (fib.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let g = fib.pin();
                    assert_eq!(g.lookup(0x0a00_0001 | (i % 20_000) << 8), (i % 20_000 % 7 + 1) as NhId);
                    i += 1;
                }
            })
        };
        for _ in 0..8 {
            w.compact();
        }
        // The load replaced the empty tables, then eight compactions.
        let freed = collect_until(&mut w, 9);
        stop.store(true, Ordering::Relaxed);
        reader.join().unwrap();
        let me = std::thread::current().id();
        assert_eq!(freed.len(), 9, "all nine replaced tables freed");
        assert!(freed.iter().all(|t| *t == me), "all by the writer's thread: {freed:?}, writer {me:?}");
    }

    /// A reader still pinned on the old tables keeps them past the writer's wait; they are
    /// freed by a later collect once it let go, never while it can still read them.
    #[test]
    fn tables_a_reader_still_holds_are_freed_after_it_lets_go() {
        let (mut w, fib) = FibWriter::new();
        w.insert(p("10.1.0.0/16"), 3);
        let (pinned_tx, pinned_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let reader = {
            let fib = fib.clone();
            std::thread::spawn(move || {
                let g = fib.pin();
                pinned_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                // The tables this guard loaded are the replaced ones: still readable.
                g.lookup(ip("10.1.2.3"))
            })
        };
        pinned_rx.recv().unwrap();
        let start = Instant::now();
        w.compact();
        let waited = start.elapsed();
        w.collect();
        let early = freed_by(&w);
        go_tx.send(()).unwrap();
        assert_eq!(reader.join().unwrap(), 3);
        assert!(waited >= RECLAIM_WAIT, "the writer waited for the reader: {waited:?}");
        assert!(early.is_empty(), "not freed while a reader holds them: {early:?}");
        assert_eq!(fib.pin().lookup(ip("10.1.2.3")), 3);
        assert_eq!(collect_until(&mut w, 1).len(), 1, "freed once the reader let go");
    }

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> u32 {
        u32::from(s.parse::<std::net::Ipv4Addr>().unwrap())
    }

    /// Naive reference: scan every route, keep the longest match.
    #[derive(Default)]
    struct Naive(HashMap<Ipv4Prefix, NhId>);
    impl Naive {
        fn lookup(&self, a: u32) -> NhId {
            self.0.iter().filter(|(p, _)| p.contains(a)).max_by_key(|(p, _)| p.len()).map_or(NH_NONE, |(_, &nh)| nh)
        }
    }

    fn check(fib: &Fib, addrs: &[u32], expect: impl Fn(u32) -> NhId) {
        let g = fib.pin();
        let mut out = vec![0; addrs.len()];
        g.lookup_batch(addrs, &mut out);
        for (&a, &b) in addrs.iter().zip(&out) {
            let e = expect(a);
            assert_eq!(g.lookup(a), e, "lookup {}", std::net::Ipv4Addr::from(a));
            assert_eq!(b, e, "lookup_batch {}", std::net::Ipv4Addr::from(a));
        }
    }

    #[test]
    fn empty_fib_has_no_route() {
        let (_w, fib) = FibWriter::new();
        check(&fib, &[0, 1, 0x0a00_0001, u32::MAX], |_| NH_NONE);
    }

    #[test]
    fn default_route_matches_everything_and_yields_to_specifics() {
        let (mut w, fib) = FibWriter::new();
        assert_eq!(w.insert(p("0.0.0.0/0"), 7), None);
        check(&fib, &[0, 0x7fff_ffff, u32::MAX], |_| 7);
        w.insert(p("10.1.2.0/24"), 9);
        check(&fib, &[ip("10.1.2.3"), ip("10.1.3.3"), ip("10.1.1.255")], |a| {
            if a >> 8 == ip("10.1.2.0") >> 8 {
                9
            } else {
                7
            }
        });
        assert_eq!(w.remove(p("0.0.0.0/0")), Some(7));
        check(&fib, &[ip("10.1.2.3"), ip("10.1.3.3")], |a| if a >> 8 == ip("10.1.2.0") >> 8 { 9 } else { NH_NONE });
    }

    #[test]
    fn host_routes_match_only_their_address() {
        let (mut w, fib) = FibWriter::new();
        w.insert(p("192.0.2.7/32"), 3);
        w.insert(p("192.0.2.6/32"), 4);
        w.insert(p("255.255.255.255/32"), 5);
        w.insert(p("0.0.0.0/32"), 6);
        let mut n = Naive::default();
        for (q, nh) in w.routes() {
            n.0.insert(q, nh);
        }
        check(
            &fib,
            &[ip("192.0.2.7"), ip("192.0.2.6"), ip("192.0.2.5"), ip("192.0.2.8"), u32::MAX, u32::MAX - 1, 0, 1],
            |a| n.lookup(a),
        );
        assert_eq!(fib.pin().lookup(ip("192.0.2.7")), 3);
    }

    #[test]
    fn nested_prefixes_pick_the_longest() {
        let (mut w, fib) = FibWriter::new();
        let routes = [
            ("10.0.0.0/8", 1),
            ("10.1.0.0/16", 2),
            ("10.1.128.0/17", 3),
            ("10.1.192.0/19", 4),
            ("10.1.200.0/24", 5),
            ("10.1.200.128/25", 6),
            ("10.1.200.200/30", 7),
            ("10.1.200.201/32", 8),
        ];
        let mut n = Naive::default();
        for (s, nh) in routes {
            w.insert(p(s), nh);
            n.0.insert(p(s), nh);
        }
        let addrs: Vec<u32> = routes
            .iter()
            .flat_map(|(s, _)| {
                let q = p(s);
                [q.addr(), q.addr() | !q.mask(), q.addr().wrapping_sub(1), (q.addr() | !q.mask()).wrapping_add(1)]
            })
            .collect();
        check(&fib, &addrs, |a| n.lookup(a));
        assert_eq!(fib.pin().lookup(ip("10.1.200.201")), 8);
        assert_eq!(fib.pin().lookup(ip("10.1.200.202")), 7);
        assert_eq!(fib.pin().lookup(ip("10.1.200.204")), 6);
    }

    #[test]
    fn short_prefix_spans_many_blocks_under_existing_specifics() {
        let (mut w, fib) = FibWriter::new();
        w.insert(p("20.0.5.0/24"), 2); // inside the /8, in a block with a trie
        w.insert(p("20.200.0.0/16"), 3);
        w.insert(p("20.0.0.0/8"), 1); // 1024 blocks
        let mut n = Naive::default();
        for (q, nh) in w.routes() {
            n.0.insert(q, nh);
        }
        let addrs: Vec<u32> = (0..4096u32)
            .map(|i| ip("20.0.0.0") + i * 4099)
            .chain([ip("20.0.5.1"), ip("20.0.4.255"), ip("21.0.0.0"), ip("19.255.255.255")])
            .collect();
        check(&fib, &addrs, |a| n.lookup(a));
        w.remove(p("20.0.0.0/8"));
        n.0.remove(&p("20.0.0.0/8"));
        check(&fib, &addrs, |a| n.lookup(a));
    }

    #[test]
    fn remove_restores_covering_route() {
        let (mut w, fib) = FibWriter::new();
        w.insert(p("10.0.0.0/8"), 1);
        w.insert(p("10.2.0.0/16"), 2);
        w.insert(p("10.2.3.0/24"), 3);
        assert_eq!(fib.pin().lookup(ip("10.2.3.4")), 3);
        assert_eq!(w.remove(p("10.2.3.0/24")), Some(3));
        assert_eq!(fib.pin().lookup(ip("10.2.3.4")), 2);
        assert_eq!(w.remove(p("10.2.0.0/16")), Some(2));
        assert_eq!(fib.pin().lookup(ip("10.2.3.4")), 1);
        assert_eq!(w.remove(p("10.2.0.0/16")), None);
        assert_eq!(w.len(), 1);
        assert_eq!(fib.prefixes(), 1);
    }

    #[test]
    fn replace_changes_next_hop_and_returns_previous() {
        let (mut w, fib) = FibWriter::new();
        for (s, a) in [("10.2.3.0/24", "10.2.3.4"), ("10.0.0.0/8", "10.9.9.9")] {
            assert_eq!(w.insert(p(s), 3), None);
            assert_eq!(w.insert(p(s), 4), Some(3));
            assert_eq!(w.get(p(s)), Some(4));
            assert_eq!(fib.pin().lookup(ip(a)), 4);
        }
        assert_eq!(w.len(), 2);
        assert_eq!(w.insert(p("10.0.0.0/8"), NH_NONE), Some(4), "NH_NONE insert removes");
        assert_eq!(w.get(p("10.0.0.0/8")), None);
    }

    #[test]
    fn every_length_at_block_boundaries() {
        // For each length, routes at the first and last address of a /18 block and straddling
        // the boundary between two blocks; compare with the naive model on edge addresses.
        let (mut w, fib) = FibWriter::new();
        let mut n = Naive::default();
        let boundary = ip("100.64.64.0"); // a /18 boundary
        let mut nh = 1;
        for len in 0..=32u8 {
            for a in [boundary, boundary - 1, boundary + (1 << 14) - 1, boundary.wrapping_add(0x1234_0000)] {
                let q = Ipv4Prefix::new_masked(a, len);
                w.insert(q, nh);
                n.0.insert(q, nh);
                nh += 1;
            }
        }
        let mut addrs = Vec::new();
        for (q, _) in w.routes() {
            let last = q.addr() | !q.mask();
            addrs.extend([q.addr(), last, q.addr().wrapping_sub(1), last.wrapping_add(1), q.addr() ^ 0x80]);
        }
        check(&fib, &addrs, |a| n.lookup(a));
        // Remove them longest first, checking at each length.
        for len in (0..=32u8).rev() {
            for (q, _) in w.routes().into_iter().filter(|(q, _)| q.len() == len) {
                assert_eq!(w.remove(q), n.0.remove(&q));
            }
            check(&fib, &addrs, |a| n.lookup(a));
        }
        assert!(w.is_empty());
        assert_eq!(w.memory_bytes(), TOP_SIZE * 4 + w.node_arena.used as usize * 24 + w.leaf_arena.used as usize * 2);
    }

    #[test]
    fn load_matches_inserts_and_merges_with_existing_routes() {
        let (mut w, fib) = FibWriter::new();
        w.insert(p("10.0.0.0/8"), 1);
        w.insert(p("10.1.1.0/24"), 2);
        w.load([
            (p("10.1.1.0/24"), 3),
            (p("10.1.1.0/25"), 4),
            (p("11.0.0.0/8"), 5),
            (p("10.1.1.0/25"), 6),
            (p("10.0.0.0/8"), NH_NONE),
        ]);
        assert_eq!(w.routes(), vec![(p("10.1.1.0/24"), 3), (p("10.1.1.0/25"), 6), (p("11.0.0.0/8"), 5)]);
        assert_eq!(fib.prefixes(), 3);
        let g = fib.pin();
        assert_eq!(
            (g.lookup(ip("10.1.1.1")), g.lookup(ip("10.1.1.129")), g.lookup(ip("10.2.0.0")), g.lookup(ip("11.3.3.3"))),
            (6, 3, NH_NONE, 5)
        );
    }

    #[test]
    fn arena_growth_by_rebuild_keeps_answers() {
        // Enough /32s to overflow the initial arenas several times.
        let (mut w, fib) = FibWriter::new();
        for i in 0..8000u32 {
            w.insert(Ipv4Prefix::new_masked(0x0a00_0000 + i * 4099, 32), (i + 1) as NhId);
        }
        let g = fib.pin();
        for i in 0..8000u32 {
            assert_eq!(g.lookup(0x0a00_0000 + i * 4099), (i + 1) as NhId);
            assert_eq!(g.lookup(0x0a00_0000 + i * 4099 + 1), NH_NONE);
        }
        assert!(
            w.generation >= 1,
            "the test should have grown the arenas: {} nodes {} leaves",
            w.node_arena.used,
            w.leaf_arena.used
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u8, NhId),
        Remove(usize),
        Lookup(usize, u32),
        /// Bulk-load a few routes into the live writer (swaps in new tables), or compact.
        Load(Vec<(u32, u8, NhId)>),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Addresses concentrated in two /16s so that routes nest and collide.
        let addr = prop_oneof![
            any::<u32>(),
            (0u32..1 << 17).prop_map(|x| 0x0a0a_0000 + x),
            (0u32..1 << 10).prop_map(|x| 0xc0a8_0000 + x)
        ];
        let len = prop_oneof![0u8..=32, 16u8..=26, 24u8..=32];
        prop_oneof![
            12 => (addr, len, 1u16..6).prop_map(|(a, l, nh)| Op::Insert(a, l, nh)),
            4 => any::<usize>().prop_map(Op::Remove),
            8 => (any::<usize>(), any::<u32>()).prop_map(|(i, d)| Op::Lookup(i, d)),
            // Rare: each one rebuilds all 2^18 blocks, slow in debug builds.
            1 => proptest::collection::vec((0u32..1 << 17, 8u8..=32, 0u16..4), 0..4)
                .prop_map(|v| Op::Load(v.into_iter().map(|(a, l, nh)| (0x0a0a_0000 + a, l, nh)).collect())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn fib_matches_naive_lpm(ops in proptest::collection::vec(op(), 1..120)) {
            let (mut w, fib) = FibWriter::new();
            let mut n = Naive::default();
            let mut probes: Vec<u32> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(a, l, nh) => {
                        let q = Ipv4Prefix::new_masked(a, l);
                        prop_assert_eq!(w.insert(q, nh), n.0.insert(q, nh));
                        let last = q.addr() | !q.mask();
                        probes.extend([q.addr(), last, q.addr().wrapping_sub(1), last.wrapping_add(1)]);
                    }
                    Op::Remove(i) => {
                        let mut routes: Vec<Ipv4Prefix> = n.0.keys().copied().collect();
                        routes.sort_unstable();
                        if !routes.is_empty() {
                            let q = routes[i % routes.len()];
                            prop_assert_eq!(w.remove(q), n.0.remove(&q));
                        }
                        // A removal of something absent.
                        prop_assert_eq!(w.remove(Ipv4Prefix::new_masked(0x7f00_0000, 9)), n.0.remove(&Ipv4Prefix::new_masked(0x7f00_0000, 9)));
                    }
                    Op::Load(v) => {
                        let routes: Vec<(Ipv4Prefix, NhId)> = v.iter().map(|&(a, l, nh)| (Ipv4Prefix::new_masked(a, l), nh)).collect();
                        for &(q, nh) in &routes {
                            if nh == NH_NONE { n.0.remove(&q); } else { n.0.insert(q, nh); }
                            probes.push(q.addr());
                        }
                        if routes.is_empty() { w.compact() } else { w.load(routes) }
                    }
                    Op::Lookup(i, d) => {
                        let base = if probes.is_empty() { d } else { probes[i % probes.len()] };
                        // Near an inserted prefix: a few low bits flipped.
                        let a = base ^ (d & 0xff >> (d >> 29));
                        let g = fib.pin();
                        prop_assert_eq!(g.lookup(a), n.lookup(a), "addr {}", std::net::Ipv4Addr::from(a));
                    }
                }
                prop_assert_eq!(w.len(), n.0.len());
            }
            let mut all: Vec<u32> = probes.clone();
            all.extend(probes.iter().map(|a| a ^ 1));
            let g = fib.pin();
            let mut out = vec![0; all.len()];
            g.lookup_batch(&all, &mut out);
            for (&a, &b) in all.iter().zip(&out) {
                prop_assert_eq!(b, n.lookup(a));
                prop_assert_eq!(g.lookup(a), b);
            }
            let mut rib: Vec<_> = n.0.iter().map(|(&q, &nh)| (q, nh)).collect();
            rib.sort_unstable();
            prop_assert_eq!(w.routes(), rib);
            for (q, nh) in w.routes() {
                prop_assert_eq!(w.get(q), Some(nh));
            }
            // A bulk load of the same routes into a fresh writer gives the same answers.
            let (mut w2, fib2) = FibWriter::new();
            w2.load(w.routes());
            let g2 = fib2.pin();
            for &a in &all {
                prop_assert_eq!(g2.lookup(a), g.lookup(a));
            }
        }
    }
}
