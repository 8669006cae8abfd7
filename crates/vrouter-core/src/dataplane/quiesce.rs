//! Grace periods for the control side (quiescent-state based, as DPDK's RCU QSBR and VPP's
//! worker barrier-free updates): the control side changes shared state, then waits until every
//! worker that might have been using the old state has finished its batch.
//!
//! Each registered worker owns one slot holding `batches << 1 | in_batch`. A worker sets the
//! low bit (sequentially consistent) *before* it loads the snapshot and the FIB for a batch, and
//! clears it, bumping the count, when the batch is done. [`Readers::synchronize`] reads every
//! slot after the change was published: an idle slot (low bit clear) can only start a batch
//! that sees the change; a busy one is waited for until its value changes.
//!
//! Memory safety never depends on this (snapshots are reference counted, FIB memory is
//! epoch-reclaimed); the grace period is about *meaning*: a next-hop id a route points at is
//! in the snapshot the batch reads, and a departed pod's port is no longer used when its TAP
//! is closed.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Workers per node that can take part (one per uplink queue, plus tests).
pub const MAX_READERS: usize = 64;

pub struct Readers {
    slots: Box<[CachePadded<AtomicU64>]>,
    taken: Box<[AtomicBool]>,
}

impl Default for Readers {
    fn default() -> Self {
        Readers {
            slots: (0..MAX_READERS).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
            taken: (0..MAX_READERS).map(|_| AtomicBool::new(false)).collect(),
        }
    }
}

/// A worker's registration; frees its slot when dropped.
pub struct ReaderSlot {
    index: usize,
    batches: u64,
}

/// The caller's wait gave up on a worker still in a batch that began before the change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a worker did not finish its batch in the time the control side allows")]
pub struct GraceTimeout;

impl ReaderSlot {
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Readers {
    /// Registers a worker, or `None` when all [`MAX_READERS`] slots are taken.
    pub fn register(&self) -> Option<ReaderSlot> {
        let index = self.taken.iter().position(|t| !t.swap(true, Ordering::AcqRel))?;
        let batches = self.slots[index].load(Ordering::Relaxed) >> 1;
        Some(ReaderSlot { index, batches })
    }

    pub fn unregister(&self, slot: ReaderSlot) {
        self.slots[slot.index].store((slot.batches + 1) << 1, Ordering::Release);
        self.taken[slot.index].store(false, Ordering::Release);
    }

    /// Marks the start of a batch: from here until [`Readers::leave`] the worker may use what
    /// it loads next.
    #[inline]
    pub fn enter(&self, slot: &ReaderSlot) {
        self.slots[slot.index].store(slot.batches << 1 | 1, Ordering::Relaxed);
        // Pairs with the fence in `synchronize`: either the control side sees this store, or
        // this worker's loads that follow see what was published before `synchronize`.
        fence(Ordering::SeqCst);
    }

    #[inline]
    pub fn leave(&self, slot: &mut ReaderSlot) {
        slot.batches += 1;
        self.slots[slot.index].store(slot.batches << 1, Ordering::Release);
    }

    /// Waits until every batch that was running when this was called has finished. Called by
    /// the control side after publishing a change. While a worker is still in such a batch,
    /// `wait` is called after a short spin: it pauses as the caller likes and returns false to
    /// give up ([`GraceTimeout`]). The caller's clock bounds the wait; the core keeps none.
    pub fn synchronize(&self, mut wait: impl FnMut() -> bool) -> Result<(), GraceTimeout> {
        fence(Ordering::SeqCst);
        for (slot, taken) in self.slots.iter().zip(self.taken.iter()) {
            if !taken.load(Ordering::Acquire) {
                continue;
            }
            let seen = slot.load(Ordering::SeqCst);
            if seen & 1 == 0 {
                continue;
            }
            let mut spins = 0u32;
            while slot.load(Ordering::Acquire) == seen {
                spins += 1;
                if spins < 64 {
                    std::hint::spin_loop();
                } else if !wait() {
                    return Err(GraceTimeout);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// The daemon's kind of wait: sleep a little, give up after `limit`.
    fn up_to(limit: Duration) -> impl FnMut() -> bool {
        let start = Instant::now();
        move || {
            std::thread::sleep(Duration::from_micros(20));
            start.elapsed() < limit
        }
    }

    #[test]
    fn idle_readers_do_not_delay_and_busy_ones_are_waited_for() {
        let r = Arc::new(Readers::default());
        let mut a = r.register().unwrap();
        let _b = r.register().unwrap();
        r.synchronize(up_to(Duration::from_millis(10))).unwrap();
        r.enter(&a);
        assert_eq!(r.synchronize(up_to(Duration::from_millis(20))), Err(GraceTimeout));
        r.leave(&mut a);
        r.synchronize(up_to(Duration::from_millis(10))).unwrap();
        // A new batch after the change is not waited for either.
        r.enter(&a);
        r.leave(&mut a);
        r.synchronize(up_to(Duration::from_millis(10))).unwrap();
    }

    #[test]
    fn slots_are_reused_after_unregister_and_bounded() {
        let r = Readers::default();
        let all: Vec<_> = (0..MAX_READERS).map(|_| r.register().unwrap()).collect();
        assert!(r.register().is_none());
        let mut it = all.into_iter();
        let mut first = it.next().unwrap();
        r.enter(&first);
        r.leave(&mut first);
        r.unregister(first);
        let again = r.register().unwrap();
        r.enter(&again);
        // Its count continued: a control thread that saw the old busy value sees a change.
        assert_eq!(r.slots[again.index].load(Ordering::Relaxed), 2 << 1 | 1);
    }

    /// The property the control side relies on: after `publish; synchronize`, no reader still
    /// uses a value loaded before the publish.
    #[test]
    fn no_reader_uses_an_old_value_after_synchronize() {
        let r = Arc::new(Readers::default());
        let value = Arc::new(AtomicU32::new(0));
        let retired = Arc::new(AtomicU32::new(0)); // highest value no reader may still hold
        let stop = Arc::new(AtomicBool::new(false));
        let violations = Arc::new(AtomicU32::new(0));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (r, value, retired, stop, violations) =
                    (r.clone(), value.clone(), retired.clone(), stop.clone(), violations.clone());
                std::thread::spawn(move || {
                    let mut slot = r.register().unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        r.enter(&slot);
                        let v = value.load(Ordering::SeqCst);
                        for _ in 0..50 {
                            std::hint::spin_loop();
                        }
                        // Still inside the batch: the value we hold must not be retired.
                        if v < retired.load(Ordering::SeqCst) {
                            violations.fetch_add(1, Ordering::Relaxed);
                        }
                        r.leave(&mut slot);
                    }
                    r.unregister(slot);
                })
            })
            .collect();
        for v in 1..2_000u32 {
            value.store(v, Ordering::SeqCst);
            r.synchronize(up_to(Duration::from_secs(5))).unwrap();
            retired.store(v, Ordering::SeqCst);
        }
        stop.store(true, Ordering::Relaxed);
        for t in readers {
            t.join().unwrap();
        }
        assert_eq!(violations.load(Ordering::Relaxed), 0);
    }
}
