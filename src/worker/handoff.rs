//! Handoff between workers, as VPP's handoff node does it: with more than one worker and a
//! policy that keeps state, a frame that arrives on a queue of the worker that does not own its
//! flow ([`vrouter_core::dataplane::affinity`]) is passed to the owner over a lock-free ring, so
//! both directions of every connection meet one connection-tracking table.
//!
//! Each ordered pair of workers has two single-producer single-consumer rings (`rtrb`): frames
//! one way, and their buffers back once the owner is done, so a pair's buffers circulate and
//! nothing is allocated after the first [`RING`] hand-offs of a pair. A frame from a TAP changes
//! places with a spare buffer (no copy); one from the uplink, whose buffer is a chunk of that
//! worker's UMEM, is copied. Each worker owns its ends of the rings ([`Lanes`]).
//!
//! Frames given during a burst wait in the giver's [`Lanes`] and cross in one commit per owner
//! ([`Lanes::flush`]); buffers come back in one commit per burst ([`Lanes::give_back`]). A ring
//! index is then written once per burst, not once per frame: the cache line holding it moves
//! between the two cores once per burst (crossbeam's `ArrayQueue`, used before, moved its
//! indices and a per-slot stamp for every frame, and cost the two-worker pipeline bench half
//! its throughput). A sleeping owner is woken through its eventfd.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use rtrb::{Consumer, Producer, RingBuffer};

use vrouter_core::dataplane::{PacketBuf, BIG_BUF_SIZE, HEADROOM};
use vrouter_core::offload::Offload;

/// Buffers per ordered pair of workers: the most frames in flight from one to the other.
pub const RING: usize = 256;

/// What the workers share: who sleeps, how to wake them, and each one's [`Lanes`] until it
/// takes them.
pub struct Handoff {
    n: usize,
    /// Per worker: asleep in poll(2), and the eventfd that wakes it.
    asleep: Vec<AtomicBool>,
    wake: Vec<OwnedFd>,
    lanes: Mutex<Vec<Option<Lanes>>>,
}

/// A worker's ends of the rings: frames to each other worker and the spares coming back from
/// it, frames from each other worker and the spares going back to it. `None` at its own index.
pub struct Lanes {
    out: Vec<Option<Out>>,
    into: Vec<Option<In>>,
}

/// Towards one other worker.
struct Out {
    frames: Producer<PacketBuf>,
    spare: Consumer<PacketBuf>,
    /// Buffers made for the pair so far (at most [`RING`]).
    made: usize,
    /// Frames given since the last [`Lanes::flush`], in order.
    staged: Vec<PacketBuf>,
}

/// From one other worker.
struct In {
    frames: Consumer<PacketBuf>,
    spare: Producer<PacketBuf>,
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
        let mut lanes: Vec<Lanes> = (0..n)
            .map(|_| Lanes { out: (0..n).map(|_| None).collect(), into: (0..n).map(|_| None).collect() })
            .collect();
        for from in 0..n {
            for to in (0..n).filter(|&t| t != from) {
                let (frames_tx, frames_rx) = RingBuffer::new(RING);
                let (spare_tx, spare_rx) = RingBuffer::new(RING);
                lanes[from].out[to] =
                    Some(Out { frames: frames_tx, spare: spare_rx, made: 0, staged: Vec::with_capacity(RING) });
                lanes[to].into[from] = Some(In { frames: frames_rx, spare: spare_tx });
            }
        }
        Ok(Handoff {
            n,
            asleep: (0..n).map(|_| AtomicBool::new(false)).collect(),
            wake,
            lanes: Mutex::new(lanes.into_iter().map(Some).collect()),
        })
    }

    pub fn workers(&self) -> usize {
        self.n
    }

    /// Worker `me`'s ends of the rings; `None` if it took them already.
    pub fn lanes(&self, me: usize) -> Option<Lanes> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner()).get_mut(me)?.take()
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

    fn wake_if_asleep(&self, to: usize) {
        if self.asleep[to].load(Ordering::SeqCst) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(self.wake[to].as_raw_fd(), one.as_ptr().cast(), 8) };
        }
    }
}

impl Out {
    /// A spare buffer for a frame, if the ring has room for one more: one back from the owner,
    /// or a new one while the pair warms up.
    fn spare(&mut self) -> Option<PacketBuf> {
        if self.staged.len() >= self.frames.slots() {
            return None;
        }
        self.spare.pop().ok().or_else(|| {
            (self.made < RING).then(|| {
                self.made += 1;
                PacketBuf::with_size(BIG_BUF_SIZE, &[], 0)
            })
        })
    }
}

impl Lanes {
    /// Passes a frame from a TAP (in `buf`) to `to`: `buf` changes places with a spare. False
    /// (and `buf` untouched) when the ring to `to` is full.
    pub fn give(&mut self, to: usize, buf: &mut PacketBuf) -> bool {
        let Some(o) = self.out.get_mut(to).and_then(Option::as_mut) else { return false };
        let Some(mut spare) = o.spare() else { return false };
        std::mem::swap(&mut spare, buf);
        o.staged.push(spare);
        true
    }

    /// Passes a copy of `frame` (from the uplink) to `to`.
    pub fn give_copy(&mut self, to: usize, frame: &[u8], port: u16) -> bool {
        let Some(o) = self.out.get_mut(to).and_then(Option::as_mut) else { return false };
        if HEADROOM + frame.len() > BIG_BUF_SIZE {
            return false;
        }
        let Some(mut b) = o.spare() else { return false };
        b.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        (b.head, b.len, b.port, b.offload) = (HEADROOM, frame.len(), port, Offload::NONE);
        o.staged.push(b);
        true
    }

    /// Puts the frames given since the last flush on their rings, one commit per owner, and
    /// wakes owners that sleep.
    pub fn flush(&mut self, h: &Handoff) {
        for (to, o) in self.out.iter_mut().enumerate() {
            let Some(o) = o.as_mut().filter(|o| !o.staged.is_empty()) else { continue };
            // `spare` kept the staged frames within the ring's free slots, which only grow.
            if let Ok(chunk) = o.frames.write_chunk_uninit(o.staged.len()) {
                chunk.fill_from_iter(o.staged.drain(..));
            }
            h.wake_if_asleep(to);
        }
    }

    /// Takes up to `max` frames from `from` into `out` (one commit).
    pub fn take(&mut self, from: usize, out: &mut Vec<PacketBuf>, max: usize) {
        let Some(i) = self.into.get_mut(from).and_then(Option::as_mut) else { return };
        let n = i.frames.slots().min(max.saturating_sub(out.len()));
        if let Ok(chunk) = i.frames.read_chunk(n) {
            out.extend(chunk);
        }
    }

    /// Returns the buffers of frames taken from `from` and done with (one commit).
    pub fn give_back(&mut self, from: usize, bufs: &mut Vec<PacketBuf>) {
        let Some(i) = self.into.get_mut(from).and_then(Option::as_mut) else { return };
        // The spare ring holds every buffer of the pair: it always has room for these.
        let n = bufs.len().min(i.spare.slots());
        if let Ok(chunk) = i.spare.write_chunk_uninit(n) {
            chunk.fill_from_iter(bufs.drain(..n));
        }
        bufs.clear();
    }

    /// Whether frames wait for this worker.
    pub fn pending(&self) -> bool {
        self.into.iter().flatten().any(|i| !i.frames.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_and_their_buffers_come_back_without_new_allocations() {
        let h = Handoff::new(2).unwrap();
        let (mut a, mut b) = (h.lanes(0).unwrap(), h.lanes(1).unwrap());
        assert!(h.lanes(0).is_none(), "each worker's lanes are taken once");
        let mut tap = PacketBuf::with_size(BIG_BUF_SIZE, b"from a tap", 3);
        assert!(a.give(1, &mut tap));
        assert!(tap.data().is_empty(), "the TAP's buffer was swapped for a spare");
        assert!(a.give_copy(1, b"from the uplink", 0));
        assert!(!b.pending(), "given frames cross when flushed");
        a.flush(&h);
        assert!(b.pending() && !a.pending());
        let mut got = Vec::new();
        b.take(0, &mut got, 8);
        assert_eq!(
            got.iter().map(|b| (b.data().to_vec(), b.port)).collect::<Vec<_>>(),
            [(b"from a tap".to_vec(), 3), (b"from the uplink".to_vec(), 0)]
        );
        b.give_back(0, &mut got);
        assert!(got.is_empty());
        // The pair now reuses those buffers: RING hand-offs in flight at most.
        for _ in 0..RING {
            assert!(a.give_copy(1, b"x", 0));
        }
        assert!(!a.give_copy(1, b"x", 0), "ring full: refused");
        let mut tap = PacketBuf::with_size(BIG_BUF_SIZE, b"kept", 3);
        assert!(!a.give(1, &mut tap));
        assert_eq!(tap.data(), b"kept", "a refused frame stays where it was");
        let made = a.out[1].as_ref().unwrap().made;
        assert_eq!(made, RING, "the two that came back were used again: never more than RING");
        a.flush(&h);
        let mut got = Vec::new();
        b.take(0, &mut got, 2 * RING);
        assert_eq!(got.len(), RING, "every frame given crossed, in one take");
    }

    #[test]
    fn a_sleeping_owner_is_woken() {
        let h = Handoff::new(2).unwrap();
        let mut a = h.lanes(0).unwrap();
        h.set_asleep(1, true);
        assert!(a.give_copy(1, b"x", 0));
        a.flush(&h);
        let mut p = libc::pollfd { fd: h.wake_fd(1), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the call.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 1000) }, 1);
        h.set_asleep(1, false);
        // SAFETY: as above.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 0) }, 0, "drained on waking");
    }
}
