//! Frames waiting for a next hop's MAC, per worker (not shared, no atomics).
//!
//! RFC 1122 section 2.3.2.2 asks a host to keep at least one packet per unresolved address
//! ("SHOULD save at least one (the latest) packet"); we keep up to `per_neighbour`, oldest first,
//! so a TCP handshake's first segments are not lost while ARP resolves. All frame buffers are
//! allocated in [`HoldQueue::new`]; holding copies the frame into a free slot, which lets the
//! caller recycle its RX buffer at once.
//!
//! Each waiting neighbour has a FIFO of slots linked through `next`; free slots form a stack
//! linked the same way. Queues are kept densely in `queues[..active]` and found by a linear scan:
//! a worker rarely waits on more than a handful of neighbours at a time.
//!
//! When the pool is full, a frame pushes out the oldest frame of the longest queue (ties: the
//! queue whose oldest frame waited longest) if that queue is longer than the frame's own queue
//! will be, or if the frame is the first for its next hop (longest-queue drop). One sender
//! flooding unresolved addresses thus fills the pool but cannot keep a new neighbour's first
//! packet (a TCP SYN) out, and no queue grows at the cost of a shorter one. Pushed-out frames
//! are counted by the caller ([`HoldQueue::take_pushed_out`]).
//!
//! The worker that receives an ARP reply releases that neighbour's frames at once. Every
//! worker also keeps the list of next hops it holds frames for and re-looks them up in the
//! shared table from its timers (at most once a millisecond, `dataplane::pipeline`'s
//! `service`): resolved by another worker -> [`HoldQueue::release`]; still unresolved -> the
//! table may ask for a retransmitted request; failed -> ICMP host unreachable for what is held
//! and [`HoldQueue::drop_neighbour`].

const NIL: u32 = u32::MAX;

/// Why a frame could not be held. Each is counted as `neigh/hold-queue-full` except `TooBig`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HoldError {
    #[error("hold queue for this next hop is full")]
    PerNeighbourFull,
    #[error("hold pool exhausted (all slots in use)")]
    PoolFull,
    #[error("frame of {len} bytes exceeds the hold slot size {slot_size}")]
    TooBig { len: usize, slot_size: usize },
}

#[derive(Clone, Copy)]
struct SlotMeta {
    next: u32,
    len: u32,
    port: u16,
    held_ms: u64,
}

#[derive(Clone, Copy)]
struct Queue {
    next_hop: u32,
    head: u32,
    tail: u32,
    len: u32,
}

/// Preallocated storage for frames awaiting ARP resolution.
pub struct HoldQueue {
    buf: Box<[u8]>,
    slot_size: usize,
    meta: Box<[SlotMeta]>,
    free: u32,
    queues: Box<[Queue]>,
    active: usize,
    per_neighbour: u32,
    held: usize,
    pushed_out: usize,
}

impl HoldQueue {
    /// `slots` frames of at most `slot_size` bytes in total, at most `per_neighbour` per next hop.
    pub fn new(slots: usize, per_neighbour: usize, slot_size: usize) -> Self {
        let slots = slots.min(NIL as usize - 1);
        let meta: Box<[SlotMeta]> = (0..slots)
            .map(|i| SlotMeta { next: if i + 1 < slots { i as u32 + 1 } else { NIL }, len: 0, port: 0, held_ms: 0 })
            .collect();
        HoldQueue {
            buf: vec![0u8; slots * slot_size].into_boxed_slice(),
            slot_size,
            meta,
            free: if slots > 0 { 0 } else { NIL },
            queues: vec![Queue { next_hop: 0, head: NIL, tail: NIL, len: 0 }; slots].into_boxed_slice(),
            active: 0,
            per_neighbour: per_neighbour.min(u32::MAX as usize) as u32,
            held: 0,
            pushed_out: 0,
        }
    }

    /// Frames pushed out of a full pool to make room since the last call (they are lost:
    /// count them as `neigh/hold-queue-full`).
    pub fn take_pushed_out(&mut self) -> usize {
        std::mem::take(&mut self.pushed_out)
    }

    /// Frames currently held.
    pub fn len(&self) -> usize {
        self.held
    }

    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Total slots.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Frames held for `next_hop`.
    pub fn held_for(&self, next_hop: u32) -> usize {
        self.find(next_hop).map_or(0, |q| self.queues[q].len as usize)
    }

    /// Next hops with frames waiting, in no particular order (the tests' view; the pipeline
    /// keeps its own list of them).
    #[cfg(test)]
    fn neighbours(&self) -> impl Iterator<Item = u32> + '_ {
        self.queues[..self.active].iter().map(|q| q.next_hop)
    }

    fn find(&self, next_hop: u32) -> Option<usize> {
        self.queues[..self.active].iter().position(|q| q.next_hop == next_hop)
    }

    /// Copies `frame` to the tail of `next_hop`'s queue.
    pub fn hold(&mut self, next_hop: u32, out_port: u16, frame: &[u8], now_ms: u64) -> Result<(), HoldError> {
        if frame.len() > self.slot_size {
            return Err(HoldError::TooBig { len: frame.len(), slot_size: self.slot_size });
        }
        let mut q = self.find(next_hop);
        if q.map_or(self.per_neighbour == 0, |q| self.queues[q].len >= self.per_neighbour) {
            return Err(HoldError::PerNeighbourFull);
        }
        if self.free == NIL {
            // Longest-queue drop: room is taken from a queue longer than this one will be, or for
            // a next hop's first frame (RFC 1122 2.3.2.2: keep at least one per address).
            let mine = q.map_or(0, |q| self.queues[q].len);
            // Ties: the queue whose oldest frame waited longest.
            let longest = (0..self.active).max_by_key(|&i| {
                (self.queues[i].len, std::cmp::Reverse(self.meta[self.queues[i].head as usize].held_ms))
            });
            match longest {
                Some(l) if self.queues[l].len > mine + 1 || mine == 0 => {
                    self.pop(l);
                    self.pushed_out += 1;
                    if self.queues[l].len == 0 {
                        self.remove_queue(l);
                        q = self.find(next_hop);
                    }
                }
                _ => return Err(HoldError::PoolFull),
            }
        }
        let slot = self.free;
        let s = slot as usize;
        self.free = self.meta[s].next;
        self.meta[s] = SlotMeta { next: NIL, len: frame.len() as u32, port: out_port, held_ms: now_ms };
        self.buf[s * self.slot_size..][..frame.len()].copy_from_slice(frame);
        let q = match q {
            Some(q) => q,
            None => {
                // There are as many queue records as slots, and each active queue owns a slot.
                let q = self.active;
                self.active += 1;
                self.queues[q] = Queue { next_hop, head: NIL, tail: NIL, len: 0 };
                q
            }
        };
        let qu = &mut self.queues[q];
        if qu.tail == NIL {
            qu.head = slot;
        } else {
            self.meta[qu.tail as usize].next = slot;
        }
        qu.tail = slot;
        qu.len += 1;
        self.held += 1;
        Ok(())
    }

    /// Pops the head of queue `q` into the free list; returns the slot. The queue must be
    /// non-empty.
    fn pop(&mut self, q: usize) -> usize {
        let qu = &mut self.queues[q];
        let s = qu.head as usize;
        qu.head = self.meta[s].next;
        if qu.head == NIL {
            qu.tail = NIL;
        }
        qu.len -= 1;
        self.meta[s].next = self.free;
        self.free = s as u32;
        self.held -= 1;
        s
    }

    fn remove_queue(&mut self, q: usize) {
        self.active -= 1;
        self.queues.swap(q, self.active);
    }

    /// Hands every frame held for `next_hop` to `f` in arrival order, with its output port and a
    /// mutable view to write the destination MAC into, then frees the slots. The view is only
    /// valid during the call: copy or send it before returning.
    pub fn release(&mut self, next_hop: u32, mut f: impl FnMut(u16, &mut [u8])) -> usize {
        let Some(q) = self.find(next_hop) else { return 0 };
        let n = self.queues[q].len as usize;
        for _ in 0..n {
            let s = self.pop(q);
            let m = self.meta[s];
            f(m.port, &mut self.buf[s * self.slot_size..][..m.len as usize]);
        }
        self.remove_queue(q);
        n
    }

    /// Drops everything held for `next_hop` (resolution failed); returns how many frames.
    pub fn drop_neighbour(&mut self, next_hop: u32) -> usize {
        self.release(next_hop, |_, _| {})
    }

    /// Takes one frame out: the oldest held for `next_hop` (`Some`), or else any one held for
    /// `max_age_ms` or longer (`None`), copied into `out` (which must hold a slot); returns its
    /// length, or `None` when there is no such frame. For answering what could not be
    /// delivered (ICMP host unreachable) without allocating.
    pub fn take_one(&mut self, next_hop: Option<u32>, now_ms: u64, max_age_ms: u64, out: &mut [u8]) -> Option<usize> {
        let q = match next_hop {
            Some(nh) => self.find(nh)?,
            None => (0..self.active).find(|&q| {
                let h = self.queues[q].head;
                h != NIL && now_ms.saturating_sub(self.meta[h as usize].held_ms) >= max_age_ms
            })?,
        };
        if self.queues[q].len == 0 {
            self.remove_queue(q);
            return None;
        }
        let s = self.pop(q);
        let n = (self.meta[s].len as usize).min(out.len());
        out[..n].copy_from_slice(&self.buf[s * self.slot_size..][..n]);
        if self.queues[q].len == 0 {
            self.remove_queue(q);
        }
        Some(n)
    }

    /// Drops frames held for `max_age_ms` or longer (counted as `neigh/unresolved`); returns how
    /// many.
    pub fn expire(&mut self, now_ms: u64, max_age_ms: u64) -> usize {
        let mut dropped = 0;
        let mut q = 0;
        while q < self.active {
            // Each queue is in arrival order, so its oldest frame is at the head.
            while self.queues[q].len > 0
                && now_ms.saturating_sub(self.meta[self.queues[q].head as usize].held_ms) >= max_age_ms
            {
                self.pop(q);
                dropped += 1;
            }
            if self.queues[q].len == 0 {
                self.remove_queue(q); // the last queue moved into q: look at q again
            } else {
                q += 1;
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 0x0a00_0001;
    const B: u32 = 0x0a00_0002;

    fn drain(h: &mut HoldQueue, nh: u32) -> Vec<(u16, Vec<u8>)> {
        let mut out = vec![];
        h.release(nh, |port, f| out.push((port, f.to_vec())));
        out
    }

    #[test]
    fn take_one_hands_out_expired_or_a_neighbours_frames_one_by_one() {
        let mut h = HoldQueue::new(8, 4, 64);
        h.hold(A, 1, &[1, 1], 0).unwrap();
        h.hold(B, 2, &[2], 50).unwrap();
        h.hold(A, 3, &[3, 3, 3], 60).unwrap();
        let mut out = [0u8; 64];
        assert_eq!(h.take_one(None, 40, 100, &mut out), None, "nothing 100 ms old yet");
        assert_eq!(h.take_one(None, 100, 100, &mut out), Some(2), "A's first frame expired");
        assert_eq!(&out[..2], &[1, 1]);
        assert_eq!(h.take_one(None, 100, 100, &mut out), None);
        assert_eq!(h.take_one(Some(A), 100, 100, &mut out), Some(3), "A failed: its frames, whatever their age");
        assert_eq!(&out[..3], &[3, 3, 3]);
        assert_eq!(h.take_one(Some(A), 100, 100, &mut out), None);
        assert_eq!((h.len(), h.held_for(A), h.held_for(B)), (1, 0, 1));
        assert_eq!(h.neighbours().collect::<Vec<_>>(), vec![B]);
    }

    #[test]
    fn release_is_fifo_per_neighbour_and_frees_slots() {
        let mut h = HoldQueue::new(8, 4, 64);
        h.hold(A, 1, &[1, 1], 0).unwrap();
        h.hold(B, 2, &[2], 0).unwrap();
        h.hold(A, 3, &[3, 3, 3], 1).unwrap();
        h.hold(A, 4, &[4], 2).unwrap();
        assert_eq!((h.len(), h.held_for(A), h.held_for(B)), (4, 3, 1));
        assert_eq!(drain(&mut h, A), vec![(1, vec![1, 1]), (3, vec![3, 3, 3]), (4, vec![4])]);
        assert_eq!((h.len(), h.held_for(A)), (1, 0));
        assert_eq!(drain(&mut h, A), vec![]);
        assert_eq!(drain(&mut h, B), vec![(2, vec![2])]);
        assert!(h.is_empty());
        assert_eq!(h.neighbours().count(), 0);
    }

    #[test]
    fn release_gives_a_mutable_frame() {
        let mut h = HoldQueue::new(2, 2, 64);
        h.hold(A, 0, &[0u8; 14], 0).unwrap();
        h.release(A, |_, f| f[..6].copy_from_slice(&[0x52, 0x54, 0, 0, 0, 1]));
        // The slot is free again; a new frame must not see stale length or bytes.
        h.hold(A, 0, &[9], 0).unwrap();
        assert_eq!(drain(&mut h, A), vec![(0, vec![9])]);
    }

    #[test]
    fn per_neighbour_limit() {
        let mut h = HoldQueue::new(8, 2, 64);
        h.hold(A, 0, &[1], 0).unwrap();
        h.hold(A, 0, &[2], 0).unwrap();
        assert_eq!(h.hold(A, 0, &[3], 0), Err(HoldError::PerNeighbourFull));
        h.hold(B, 0, &[4], 0).unwrap();
        assert_eq!(drain(&mut h, A), vec![(0, vec![1]), (0, vec![2])], "the rejected frame is not held");
        assert_eq!(HoldQueue::new(4, 0, 64).hold(A, 0, &[1], 0), Err(HoldError::PerNeighbourFull));
    }

    #[test]
    fn pool_limit() {
        let mut h = HoldQueue::new(3, 3, 64);
        h.hold(A, 0, &[1], 0).unwrap();
        h.hold(B, 0, &[2], 1).unwrap();
        h.hold(3, 0, &[3], 2).unwrap();
        // A new next hop's first frame is held, in the place of the oldest frame.
        h.hold(4, 0, &[4], 3).unwrap();
        assert_eq!((h.held_for(A), h.take_pushed_out()), (0, 1));
        // A second frame never takes another next hop's only one.
        assert_eq!(h.hold(4, 0, &[5], 4), Err(HoldError::PoolFull));
        assert_eq!(h.drop_neighbour(B), 1);
        h.hold(4, 0, &[5], 5).unwrap();
        assert_eq!(h.neighbours().collect::<std::collections::BTreeSet<_>>(), [3, 4].into());
        assert_eq!(h.take_pushed_out(), 0);
        assert_eq!(HoldQueue::new(0, 3, 64).hold(A, 0, &[1], 0), Err(HoldError::PoolFull));
    }

    #[test]
    fn too_big() {
        let mut h = HoldQueue::new(2, 2, 16);
        assert_eq!(h.hold(A, 0, &[0; 17], 0), Err(HoldError::TooBig { len: 17, slot_size: 16 }));
        h.hold(A, 0, &[7; 16], 0).unwrap();
        assert_eq!(drain(&mut h, A), vec![(0, vec![7; 16])]);
    }

    #[test]
    fn expire_drops_only_old_frames() {
        let mut h = HoldQueue::new(8, 8, 64);
        h.hold(A, 0, &[1], 0).unwrap();
        h.hold(B, 0, &[2], 100).unwrap();
        h.hold(A, 0, &[3], 500).unwrap();
        h.hold(3, 0, &[4], 50).unwrap();
        assert_eq!(h.expire(999, 1000), 0);
        assert_eq!(h.expire(1000, 1000), 1); // A's first
        assert_eq!(h.expire(1100, 1000), 2); // B's and 3's: both queues vanish
        assert_eq!(h.neighbours().collect::<Vec<_>>(), vec![A]);
        assert_eq!(drain(&mut h, A), vec![(0, vec![3])]);
        assert!(h.is_empty());
    }

    #[test]
    fn drop_neighbour_counts() {
        let mut h = HoldQueue::new(8, 8, 64);
        for i in 0..5 {
            h.hold(A, 0, &[i], 0).unwrap();
        }
        h.hold(B, 0, &[9], 0).unwrap();
        assert_eq!(h.drop_neighbour(A), 5);
        assert_eq!(h.drop_neighbour(A), 0);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn slots_are_reused_without_growing() {
        let mut h = HoldQueue::new(4, 4, 128);
        let (buf_ptr, meta_ptr, queues_ptr) = (h.buf.as_ptr(), h.meta.as_ptr(), h.queues.as_ptr());
        for round in 0..1000u32 {
            let nh = round % 7 + 1;
            for i in 0..4u8 {
                h.hold(nh, i as u16, &[i; 100], round as u64).unwrap();
            }
            assert_eq!(h.hold(nh, 0, &[0], 0), Err(HoldError::PerNeighbourFull));
            let got = drain(&mut h, nh);
            assert_eq!(got.len(), 4);
            assert!(got.iter().enumerate().all(|(i, (p, f))| *p == i as u16 && f == &vec![i as u8; 100]));
        }
        assert!(h.is_empty());
        assert_eq!(h.capacity(), 4);
        assert_eq!((h.buf.as_ptr(), h.meta.as_ptr(), h.queues.as_ptr()), (buf_ptr, meta_ptr, queues_ptr));
        assert_eq!(h.buf.len(), 4 * 128);
    }

    /// Against a naive model: a Vec of (next_hop, port, frame, time) in arrival order.
    #[test]
    fn matches_naive_model_under_random_ops() {
        let mut h = HoldQueue::new(16, 5, 8);
        let mut model: Vec<(u32, u16, Vec<u8>, u64)> = vec![];
        let mut pushed = 0;
        let mut x = 0x2545_f491u32;
        for now in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let nh = x % 6;
            match (x >> 8) % 10 {
                0..=5 => {
                    let frame = vec![(x >> 16) as u8; (x >> 24) as usize % 10];
                    let expect = if frame.len() > 8 {
                        Err(HoldError::TooBig { len: frame.len(), slot_size: 8 })
                    } else if model.iter().filter(|e| e.0 == nh).count() >= 5 {
                        Err(HoldError::PerNeighbourFull)
                    } else if model.len() >= 16 {
                        // Longest-queue drop: the longest queue (ties: oldest head) loses its
                        // oldest frame if it is longer than this one would become.
                        let count = |n: u32| model.iter().filter(|e| e.0 == n).count();
                        let mine = count(nh);
                        let longest = model
                            .iter()
                            .map(|e| e.0)
                            .max_by_key(|&n| (count(n), std::cmp::Reverse(model.iter().find(|e| e.0 == n).unwrap().3)));
                        match longest {
                            Some(l) if count(l) > mine + 1 || mine == 0 => {
                                let at = model.iter().position(|e| e.0 == l).unwrap();
                                model.remove(at);
                                model.push((nh, now as u16, frame.clone(), now));
                                pushed += 1;
                                Ok(())
                            }
                            _ => Err(HoldError::PoolFull),
                        }
                    } else {
                        model.push((nh, now as u16, frame.clone(), now));
                        Ok(())
                    };
                    assert_eq!(h.hold(nh, now as u16, &frame, now), expect);
                }
                6 | 7 => {
                    let want: Vec<(u16, Vec<u8>)> =
                        model.iter().filter(|e| e.0 == nh).map(|e| (e.1, e.2.clone())).collect();
                    model.retain(|e| e.0 != nh);
                    assert_eq!(drain(&mut h, nh), want);
                }
                8 => {
                    let before = model.len();
                    model.retain(|e| now - e.3 < 40);
                    assert_eq!(h.expire(now, 40), before - model.len());
                }
                _ => {
                    let before = model.len();
                    model.retain(|e| e.0 != nh);
                    assert_eq!(h.drop_neighbour(nh), before - model.len());
                }
            }
            assert_eq!(h.len(), model.len());
        }
        assert!(pushed > 0, "the model run must exercise the push-out");
        assert_eq!(h.take_pushed_out(), pushed);
    }

    /// Issue 9 item 7: a flood of unresolved next hops fills the pool; a new neighbour's
    /// first frame still gets in, at the cost of the longest queue's oldest frame.
    #[test]
    fn full_pool_takes_room_from_the_longest_queue() {
        let mut h = HoldQueue::new(8, 4, 64);
        for i in 0..4u8 {
            h.hold(A, 0, &[i], i as u64).unwrap();
        }
        for i in 0..4u8 {
            h.hold(B, 0, &[10 + i], 10 + i as u64).unwrap();
        }
        // Two queues of 4: the older one (A) gives up its oldest frame.
        h.hold(3, 0, &[30], 20).unwrap();
        assert_eq!((h.held_for(A), h.held_for(B), h.held_for(3), h.take_pushed_out()), (3, 4, 1, 1));
        h.hold(3, 0, &[31], 21).unwrap();
        assert_eq!((h.held_for(A), h.held_for(B), h.held_for(3)), (3, 3, 2));
        h.hold(4, 0, &[40], 22).unwrap();
        assert_eq!((h.held_for(A), h.held_for(B), h.held_for(4)), (2, 3, 1));
        h.hold(4, 0, &[41], 23).unwrap();
        assert_eq!(h.hold(3, 0, &[32], 24), Err(HoldError::PoolFull), "3 would not be shorter than any other");
        assert_eq!(h.take_pushed_out(), 3);
        assert_eq!(drain(&mut h, A), vec![(0, vec![2]), (0, vec![3])], "the oldest frames went");
    }
}
