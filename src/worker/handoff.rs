//! Handoff between workers, as VPP's handoff node does it: with more than one worker and a
//! policy that keeps state, a frame that arrives on a queue of the worker that does not own its
//! flow ([`vrouter_core::dataplane::affinity`]) is passed to the owner over a lock-free ring, so
//! both directions of every connection meet one connection-tracking table.
//!
//! Each ordered pair of workers has two rings: frames one way, and their buffers back once the
//! owner is done, so a pair's buffers circulate and nothing is allocated after the first
//! [`RING`] hand-offs of a pair. A frame from a TAP changes places with a spare buffer (no copy);
//! one from the uplink, whose buffer is a chunk of that worker's UMEM, is copied. A sleeping
//! owner is woken through its eventfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_queue::ArrayQueue;

use vrouter_core::dataplane::{PacketBuf, BIG_BUF_SIZE, HEADROOM};
use vrouter_core::offload::Offload;

/// Buffers per ordered pair of workers: the most frames in flight from one to the other.
pub const RING: usize = 256;

/// The rings between `n` workers.
pub struct Handoff {
    n: usize,
    /// `[from * n + to]`: frames for `to`.
    frames: Vec<ArrayQueue<PacketBuf>>,
    /// `[from * n + to]`: buffers `to` is done with, for `from` to use again.
    spare: Vec<ArrayQueue<PacketBuf>>,
    /// `[from * n + to]`: buffers made for the pair so far (at most [`RING`]).
    made: Vec<AtomicUsize>,
    /// Per worker: asleep in poll(2), and the eventfd that wakes it.
    asleep: Vec<AtomicBool>,
    wake: Vec<OwnedFd>,
}

impl Handoff {
    pub fn new(n: usize) -> std::io::Result<Handoff> {
        let wake = (0..n)
            .map(|_| {
                // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
                let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `fd` was just created and is owned by nothing else.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Handoff {
            n,
            frames: (0..n * n).map(|_| ArrayQueue::new(RING)).collect(),
            spare: (0..n * n).map(|_| ArrayQueue::new(RING)).collect(),
            made: (0..n * n).map(|_| AtomicUsize::new(0)).collect(),
            asleep: (0..n).map(|_| AtomicBool::new(false)).collect(),
            wake,
        })
    }

    pub fn workers(&self) -> usize {
        self.n
    }

    /// A spare buffer for frames from `from` to `to` (made, up to [`RING`] per pair, while the
    /// pair warms up; only `from` calls this for the pair).
    fn spare_for(&self, from: usize, to: usize) -> Option<PacketBuf> {
        let i = from * self.n + to;
        self.spare[i].pop().or_else(|| {
            let made = &self.made[i];
            (made.load(Ordering::Relaxed) < RING).then(|| {
                made.fetch_add(1, Ordering::Relaxed);
                PacketBuf::with_size(BIG_BUF_SIZE, &[], 0)
            })
        })
    }

    /// Queues `b` for `to` and wakes it if it sleeps; gives `b` back if the ring is full.
    fn push(&self, from: usize, to: usize, b: PacketBuf) -> Result<(), PacketBuf> {
        self.frames[from * self.n + to].push(b)?;
        if self.asleep[to].load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(self.wake[to].as_raw_fd(), one.as_ptr().cast(), 8) };
        }
        Ok(())
    }

    /// Passes a frame from a TAP (in `buf`) to `to`: `buf` changes places with a spare. False
    /// (and `buf` untouched) when the pair has no spare or the ring is full.
    pub fn give(&self, from: usize, to: usize, buf: &mut PacketBuf) -> bool {
        let Some(mut spare) = self.spare_for(from, to) else { return false };
        std::mem::swap(&mut spare, buf);
        match self.push(from, to, spare) {
            Ok(()) => true,
            Err(frame) => {
                // The ring is full: the frame back into `buf`, the spare back to the pool.
                let spare = std::mem::replace(buf, frame);
                let _ = self.spare[from * self.n + to].push(spare);
                false
            }
        }
    }

    /// Passes a copy of `frame` (from the uplink) to `to`.
    pub fn give_copy(&self, from: usize, to: usize, frame: &[u8], port: u16) -> bool {
        let Some(mut b) = self.spare_for(from, to) else { return false };
        if HEADROOM + frame.len() > b.buf.len() {
            let _ = self.spare[from * self.n + to].push(b);
            return false;
        }
        b.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        (b.head, b.len, b.port, b.offload) = (HEADROOM, frame.len(), port, Offload::NONE);
        match self.push(from, to, b) {
            Ok(()) => true,
            Err(b) => {
                let _ = self.spare[from * self.n + to].push(b);
                false
            }
        }
    }

    /// Takes up to `max` frames for `to` from `from` into `out`.
    pub fn take(&self, from: usize, to: usize, out: &mut Vec<PacketBuf>, max: usize) {
        let q = &self.frames[from * self.n + to];
        while out.len() < max {
            match q.pop() {
                Some(b) => out.push(b),
                None => break,
            }
        }
    }

    /// Returns the buffers of frames `to` took from `from` and is done with.
    pub fn give_back(&self, from: usize, to: usize, bufs: &mut Vec<PacketBuf>) {
        let q = &self.spare[from * self.n + to];
        for b in bufs.drain(..) {
            let _ = q.push(b);
        }
    }

    /// Whether frames wait for `to`.
    pub fn pending(&self, to: usize) -> bool {
        (0..self.n).any(|from| from != to && !self.frames[from * self.n + to].is_empty())
    }

    /// The descriptor that becomes readable when frames are given to `to` while it sleeps.
    pub fn wake_fd(&self, to: usize) -> RawFd {
        self.wake[to].as_raw_fd()
    }

    /// Marks `to` asleep (true) or awake; awake, it drains its wake-up descriptor.
    pub fn set_asleep(&self, to: usize, asleep: bool) {
        self.asleep[to].store(asleep, Ordering::SeqCst);
        if !asleep {
            let mut v = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live buffer from our non-blocking eventfd.
            unsafe { libc::read(self.wake[to].as_raw_fd(), v.as_mut_ptr().cast(), 8) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_and_their_buffers_come_back_without_new_allocations() {
        let h = Handoff::new(2).unwrap();
        let mut tap = PacketBuf::with_size(BIG_BUF_SIZE, b"from a tap", 3);
        assert!(h.give(0, 1, &mut tap));
        assert!(tap.data().is_empty(), "the TAP's buffer was swapped for a spare");
        assert!(h.give_copy(0, 1, b"from the uplink", 0));
        assert!(h.pending(1) && !h.pending(0));
        let mut got = Vec::new();
        h.take(0, 1, &mut got, 8);
        assert_eq!(
            got.iter().map(|b| (b.data().to_vec(), b.port)).collect::<Vec<_>>(),
            [(b"from a tap".to_vec(), 3), (b"from the uplink".to_vec(), 0)]
        );
        h.give_back(0, 1, &mut got);
        // The pair now reuses those buffers: RING hand-offs in flight at most.
        for _ in 0..RING - 1 {
            assert!(h.give_copy(0, 1, b"x", 0));
        }
        assert!(h.give_copy(0, 1, b"x", 0), "a spare comes back from the pool");
        assert!(!h.give_copy(0, 1, b"x", 0), "ring full and no buffer left: refused");
        let mut tap = PacketBuf::with_size(BIG_BUF_SIZE, b"kept", 3);
        assert!(!h.give(0, 1, &mut tap));
        assert_eq!(tap.data(), b"kept", "a refused frame stays where it was");
        assert_eq!(h.made[1].load(Ordering::Relaxed), RING, "never more than RING buffers for a pair");
    }

    #[test]
    fn a_sleeping_owner_is_woken() {
        let h = Handoff::new(2).unwrap();
        h.set_asleep(1, true);
        assert!(h.give_copy(0, 1, b"x", 0));
        let mut p = libc::pollfd { fd: h.wake_fd(1), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the call.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 1000) }, 1);
        h.set_asleep(1, false);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0, "drained on waking");
    }
}
