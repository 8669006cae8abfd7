//! Which of a worker's TAP queues have frames, in one system call however many pods there are,
//! and the sleep on all of its descriptors when it has nothing to do.
//!
//! A worker used to read every TAP queue on every pass, and a read of an empty queue is a
//! system call that finds nothing: with 54 idle pods on a node, each pass made 54 of them
//! before it came back to the uplink's ring, and a ping between two other pods took up to
//! twice as long (BENCHMARKS.md). Now the TAP queues sit in an epoll set (level-triggered),
//! asked once per pass with a zero timeout; only the queues it names are read. A queue left
//! with frames after a burst is named again on the next pass.
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
    /// The TAP queues, each registered with its index in the worker's TAP list. Made once per
    /// worker and updated when the port set changes, so a change needs no new descriptor.
    taps: OwnedFd,
    /// `taps`, then the uplink and the wake-up descriptor: what a sleep waits on.
    sleep: Vec<libc::pollfd>,
    /// The TAP queues as last set (by index; `None`, a TAP gone, left out).
    registered: Vec<Option<RawFd>>,
    /// How many of them are `Some`: none, and a pass has nothing to ask.
    watched: usize,
    /// Registering failed: every TAP is named ready (read them all, as before epoll) until
    /// the next [`Readiness::set_taps`] succeeds.
    all: bool,
    events: Vec<libc::epoll_event>,
    ready: Vec<usize>,
    /// `ready` holds what the last sleep found, still to be handed out.
    fresh: bool,
    /// An unexpected epoll_wait error was logged (once).
    logged: bool,
}

fn ctl(ep: &OwnedFd, op: libc::c_int, fd: RawFd, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: data };
    // SAFETY: `ev` is a valid epoll_event for the call's duration; the kernel copies it.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), op, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Readiness {
    /// A set with no TAP queues yet; a sleep also waits on `others` (the uplink, the wake-up
    /// descriptor).
    pub fn new(others: &[RawFd]) -> io::Result<Readiness> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created, owned by nobody else.
        let taps = unsafe { OwnedFd::from_raw_fd(fd) };
        let sleep = std::iter::once(taps.as_raw_fd())
            .chain(others.iter().copied())
            .map(|fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 })
            .collect();
        Ok(Readiness {
            taps,
            sleep,
            registered: Vec::new(),
            watched: 0,
            all: false,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 1],
            ready: Vec::new(),
            fresh: false,
            logged: false,
        })
    }

    /// Watches the TAP queues `taps` (the worker's new TAP list, in order; `None`, a TAP gone,
    /// is left out) in place of the previous ones. On error every TAP is named ready until a
    /// later call succeeds, and the error is returned to be logged.
    pub fn set_taps(&mut self, taps: &[Option<RawFd>]) -> io::Result<()> {
        for fd in self.registered.drain(..).flatten() {
            // A queue already closed left the set by itself (ENOENT, or EBADF), and a
            // descriptor number since reused names another file, not found either.
            let _ = ctl(&self.taps, libc::EPOLL_CTL_DEL, fd, 0);
        }
        self.registered = taps.to_vec();
        self.ready.clear();
        self.fresh = false;
        let mut result = Ok(());
        for (i, fd) in taps.iter().enumerate() {
            if let Some(fd) = fd {
                if let Err(e) = ctl(&self.taps, libc::EPOLL_CTL_ADD, *fd, i as u64) {
                    result = Err(e);
                    break;
                }
            }
        }
        self.all = result.is_err();
        if self.all {
            self.ready.extend(taps.iter().enumerate().filter(|(_, fd)| fd.is_some()).map(|(i, _)| i));
        }
        self.watched = taps.iter().flatten().count();
        self.events.resize(self.watched.max(1), libc::epoll_event { events: 0, u64: 0 });
        result
    }

    /// The TAP queues (indices into the worker's TAP list) with frames to read, or whose
    /// device has an error (a read tells which). No system call when there are none to ask
    /// about, or when the last sleep already asked.
    pub fn ready_taps(&mut self) -> &[usize] {
        if self.all || std::mem::take(&mut self.fresh) {
            return &self.ready;
        }
        self.ready.clear();
        if self.watched > 0 {
            self.wait_taps();
        }
        &self.ready
    }

    fn wait_taps(&mut self) {
        // SAFETY: `events` is a valid, writable array of `events.len()` entries.
        let n =
            unsafe { libc::epoll_wait(self.taps.as_raw_fd(), self.events.as_mut_ptr(), self.events.len() as i32, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted && !std::mem::replace(&mut self.logged, true) {
                tracing::warn!("asking which TAP queues have frames failed ({e}); they are not read meanwhile");
            }
            return;
        }
        for ev in &self.events[..n as usize] {
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
        if n > 0 && self.sleep[0].revents != 0 && !self.all {
            self.ready.clear();
            self.wait_taps();
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

    fn watching(taps: &[Option<RawFd>], others: &[RawFd]) -> Readiness {
        let mut r = Readiness::new(others).unwrap();
        r.set_taps(taps).unwrap();
        r
    }

    #[test]
    fn only_the_queues_with_frames_are_named_until_they_are_read() {
        let queues: Vec<_> = (0..5).map(|_| pipe()).collect();
        // Queue 3 is a TAP gone: left out.
        let fds: Vec<Option<RawFd>> =
            queues.iter().enumerate().map(|(i, q)| (i != 3).then(|| q.0.as_raw_fd())).collect();
        let mut r = watching(&fds, &[]);
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

    /// A new TAP list replaces the old one: indices follow the new list, a queue no longer in
    /// it is not named, and one closed meanwhile is no obstacle.
    #[test]
    fn a_new_tap_list_replaces_the_old_one() {
        let (a, b, c) = (pipe(), pipe(), pipe());
        let mut r = watching(&[Some(a.0.as_raw_fd()), Some(b.0.as_raw_fd()), Some(c.0.as_raw_fd())], &[]);
        put(&a.1);
        put(&c.1);
        assert_eq!(sorted(r.ready_taps()), [0, 2]);
        // `a` leaves (closed), `c` moves to index 0, `b` to 1.
        drop(a);
        r.set_taps(&[Some(c.0.as_raw_fd()), Some(b.0.as_raw_fd())]).unwrap();
        assert_eq!(r.ready_taps(), [0]);
        put(&b.1);
        assert_eq!(sorted(r.ready_taps()), [0, 1]);
        r.set_taps(&[Some(b.0.as_raw_fd())]).unwrap();
        assert_eq!(r.ready_taps(), [0], "c is readable but no longer watched");
    }

    /// A queue that cannot be registered (here not a descriptor at all) makes every TAP named
    /// ready, so the worker reads them all, until a later list registers.
    #[test]
    fn a_list_that_cannot_be_watched_names_every_tap_until_one_can() {
        let (a, b) = (pipe(), pipe());
        let mut r = Readiness::new(&[]).unwrap();
        assert!(r.set_taps(&[Some(a.0.as_raw_fd()), None, Some(-1)]).is_err());
        assert_eq!(r.ready_taps(), [0, 2]);
        r.sleep(1);
        assert_eq!(r.ready_taps(), [0, 2], "a sleep does not replace the list");
        r.set_taps(&[Some(a.0.as_raw_fd()), Some(b.0.as_raw_fd())]).unwrap();
        assert!(r.ready_taps().is_empty());
        put(&b.1);
        assert_eq!(r.ready_taps(), [1]);
    }

    #[test]
    fn a_sleep_ends_on_a_tap_the_uplink_or_the_wake_up_and_hands_the_taps_to_the_next_pass() {
        let (tap, uplink, wake) = (pipe(), pipe(), pipe());
        let mut r = watching(&[Some(tap.0.as_raw_fd())], &[uplink.0.as_raw_fd(), wake.0.as_raw_fd()]);
        // Nothing: the whole timeout.
        let t = Instant::now();
        r.sleep(30);
        assert!(t.elapsed() >= Duration::from_millis(25), "{:?}", t.elapsed());
        assert!(r.ready_taps().is_empty());
        for (r_end, w_end) in [(&uplink.0, &uplink.1), (&wake.0, &wake.1)] {
            put(w_end);
            let t = Instant::now();
            r.sleep(10_000);
            assert!(t.elapsed() < Duration::from_secs(5), "not woken");
            assert!(r.ready_taps().is_empty(), "no TAP named for another descriptor");
            take(r_end);
        }
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
        let mut r = watching(&[], &[uplink.0.as_raw_fd()]);
        assert!(r.ready_taps().is_empty());
        put(&uplink.1);
        let t = Instant::now();
        r.sleep(10_000);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
