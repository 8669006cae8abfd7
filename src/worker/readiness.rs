//! Which of a worker's TAP queues have frames, in one system call however many pods there are,
//! and the sleep on all of its descriptors when it has nothing to do.
//!
//! A worker used to read every TAP queue on every pass, and a read of an empty queue is a
//! system call that finds nothing: with 54 idle pods on a node, each pass made 54 of them
//! before it came back to the uplink's ring, and a ping between two other pods took up to
//! twice as long (BENCHMARKS.md). Now the TAP queues sit in an epoll set (level-triggered), asked once
//! per pass with a zero timeout; only the queues it names are read. A queue left with frames
//! after a burst is named again on the next pass.
//!
//! Asleep, the worker waits in poll(2) on the epoll set (readable while any TAP queue is), the
//! uplink's socket and the handoff's wake-up descriptor; a wake-up by a TAP leaves its answer
//! for the next pass, which then needs no call of its own. The uplink's socket is in no epoll
//! set: its receive ring is read directly each pass, and a descriptor registered with epoll
//! is woken for every frame that arrives (the kernel finds a waiter on its queue), where poll
//! registers only while the worker sleeps. A second, permanent epoll set for the sleep cost
//! cross-node TCP 7 % (BENCHMARKS.md).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub struct Readiness {
    /// The TAP queues, each registered with its index in the worker's TAP list.
    taps: OwnedFd,
    /// `taps`, then the uplink and the wake-up descriptor: what a sleep waits on.
    sleep: Vec<libc::pollfd>,
    /// How many TAP queues are registered.
    registered: usize,
    events: Vec<libc::epoll_event>,
    ready: Vec<usize>,
    /// `ready` holds what the last sleep found, still to be handed out.
    fresh: bool,
}

fn epoll() -> io::Result<OwnedFd> {
    // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor that
    // nothing else owns.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just created, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn add(ep: &OwnedFd, fd: RawFd, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call's duration; the kernel copies it.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Readiness {
    /// A set of the TAP queues `taps` (the worker's TAP list order; a queue that is `None`, a
    /// TAP gone, is left out); a sleep also waits on `others` (the uplink, the wake-up fd).
    pub fn new(taps: &[Option<RawFd>], others: &[RawFd]) -> io::Result<Readiness> {
        let tap_set = epoll()?;
        let mut registered = 0;
        for (i, fd) in taps.iter().enumerate() {
            if let Some(fd) = fd {
                add(&tap_set, *fd, i as u64)?;
                registered += 1;
            }
        }
        let sleep = std::iter::once(tap_set.as_raw_fd())
            .chain(others.iter().copied())
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        Ok(Readiness {
            taps: tap_set,
            sleep,
            registered,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; registered.max(1)],
            ready: Vec::with_capacity(registered),
            fresh: false,
        })
    }

    /// The TAP queues (indices into the worker's TAP list) with frames to read, or whose
    /// device has an error (a read tells which). No system call when there are none to ask
    /// about, or when the last sleep already asked.
    pub fn ready_taps(&mut self) -> &[usize] {
        if std::mem::take(&mut self.fresh) {
            return &self.ready;
        }
        self.ready.clear();
        if self.registered > 0 {
            self.wait_taps(0);
        }
        &self.ready
    }

    fn wait_taps(&mut self, timeout_ms: i32) {
        // SAFETY: `events` is a valid, writable array of `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(self.taps.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, timeout_ms)
        };
        for ev in &self.events[..n.max(0) as usize] {
            self.ready.push(ev.u64 as usize);
        }
    }

    /// Sleeps until a TAP queue, the uplink or the wake-up descriptor is readable, or for
    /// `timeout_ms`. What it finds of the TAPs, the next [`Readiness::ready_taps`] returns.
    pub fn sleep(&mut self, timeout_ms: i32) {
        for p in self.sleep.iter_mut() {
            p.revents = 0;
        }
        // SAFETY: `sleep` is a valid, writable array of pollfd for the call's duration.
        let n = unsafe { libc::poll(self.sleep.as_mut_ptr(), self.sleep.len() as libc::nfds_t, timeout_ms) };
        if n > 0 && self.sleep[0].revents != 0 {
            self.ready.clear();
            self.wait_taps(0);
            self.fresh = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
        // SAFETY: both were just created and are owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn put(w: &OwnedFd) {
        // SAFETY: writes one byte from a live buffer.
        assert_eq!(unsafe { libc::write(w.as_raw_fd(), b"x".as_ptr().cast(), 1) }, 1);
    }

    fn take(r: &OwnedFd) {
        let mut b = [0u8; 16];
        // SAFETY: reads into a live buffer of its size.
        assert!(unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) } > 0);
    }

    fn sorted(v: &[usize]) -> Vec<usize> {
        let mut v = v.to_vec();
        v.sort();
        v
    }

    #[test]
    fn only_the_queues_with_frames_are_named_until_they_are_read() {
        let queues: Vec<_> = (0..5).map(|_| pipe()).collect();
        // Queue 3 is a TAP gone: left out.
        let fds: Vec<Option<RawFd>> =
            queues.iter().enumerate().map(|(i, q)| (i != 3).then(|| q.0.as_raw_fd())).collect();
        let mut r = Readiness::new(&fds, &[]).unwrap();
        assert!(r.ready_taps().is_empty());
        put(&queues[1].1);
        put(&queues[4].1);
        put(&queues[3].1);
        assert_eq!(sorted(r.ready_taps()), [1, 4]);
        // Level-triggered: still there until read.
        assert_eq!(sorted(r.ready_taps()), [1, 4]);
        take(&queues[1].0);
        assert_eq!(r.ready_taps(), [4]);
        take(&queues[4].0);
        assert!(r.ready_taps().is_empty());
    }

    #[test]
    fn a_sleep_ends_on_a_tap_the_uplink_or_the_wake_up_and_hands_the_taps_to_the_next_pass() {
        let (tap, uplink, wake) = (pipe(), pipe(), pipe());
        let mut r = Readiness::new(&[Some(tap.0.as_raw_fd())], &[uplink.0.as_raw_fd(), wake.0.as_raw_fd()]).unwrap();
        // Nothing: the whole timeout.
        let t = Instant::now();
        r.sleep(30);
        assert!(t.elapsed() >= Duration::from_millis(25), "{:?}", t.elapsed());
        assert!(r.ready_taps().is_empty());
        for w in [&uplink.1, &wake.1] {
            put(w);
            let t = Instant::now();
            r.sleep(10_000);
            assert!(t.elapsed() < Duration::from_secs(5), "not woken");
            assert!(r.ready_taps().is_empty(), "no TAP named for another descriptor");
        }
        take(&uplink.0);
        take(&wake.0);
        put(&tap.1);
        let t = Instant::now();
        r.sleep(10_000);
        assert!(t.elapsed() < Duration::from_secs(5), "not woken by the TAP");
        assert!(r.fresh, "the sleep asked about the TAPs");
        assert_eq!(r.ready_taps(), [0]);
        assert!(!r.fresh, "handed out once");
        take(&tap.0);
        assert!(r.ready_taps().is_empty(), "asked again, now empty");
    }

    #[test]
    fn no_taps_asks_nothing_and_still_sleeps_on_the_others() {
        let uplink = pipe();
        let mut r = Readiness::new(&[], &[uplink.0.as_raw_fd()]).unwrap();
        assert!(r.ready_taps().is_empty());
        put(&uplink.1);
        let t = Instant::now();
        r.sleep(10_000);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
