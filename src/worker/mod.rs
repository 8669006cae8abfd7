//! Poll-mode worker threads: each owns one uplink queue (an AF_XDP socket) and possibly some
//! TAP ports to receive from, runs the pipeline over every burst, and transmits in bursts.
//!
//! Each pass reads the uplink's receive ring, then only the TAP queues an epoll set names as
//! readable (one system call for all of a node's pods: [`readiness`]).
//!
//! Idle behaviour ([`IdleMode`]): `poll` polls forever; `interrupt` sleeps in poll(2) on the TAPs'
//! epoll set, the uplink and the handoff's eventfd whenever a pass finds nothing; `adaptive` (the
//! default) polls for `spin_us` after the last traffic, then sleeps the same way. Sleeps are capped
//! at 10 ms so the pipeline's timers (ARP retransmits, held-frame expiry) keep running. Between
//! empty passes a polling worker yields (`sched_yield`): alone on its core that returns at once,
//! and where the device's receive work (a NAPI thread) shares the core it runs instead of waiting
//! out our time slice (measured in BENCHMARKS.md: 0.51x -> 0.92x kernel forwarding on veth).

use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

pub mod handoff;
mod readiness;

use crate::port::afxdp::{TxCopy, XskPort};
use crate::port::tap::TapPort;
use crate::port::LinkState;
use readiness::Readiness;
use vrouter_core::dataplane::{affinity, Frame, Output, PacketBuf, Pipeline, PortId, BIG_BUF_SIZE};
use vrouter_core::offload::gro::{self, Run, Seg};
use vrouter_core::offload::gso::{self, Segments};
use vrouter_core::offload::{self, Offload};
use vrouter_core::stats::{Counters, DropReason};

/// Frames per receive burst.
pub const BURST: usize = 256;
/// Frames per burst read from the TAPs: each read is a system call of its own anyway, and each
/// buffer takes a 64 KiB segment.
pub const TAP_BURST: usize = 64;
const MAX_SLEEP_MS: i32 = 10;

/// What a worker does when a pass finds nothing to do (`[workers] idle`).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdleMode {
    /// Poll forever (lowest latency, a full core per worker; yields to other runnable threads
    /// on the core between empty passes).
    Poll,
    /// Spin for a while after traffic, then sleep in poll(2) on the ports' fds.
    #[default]
    Adaptive,
    /// Always sleep in poll(2) between batches.
    Interrupt,
}

/// Where a port's frames go when the pipeline sends on it.
#[derive(Clone)]
pub enum TxTarget {
    /// The uplink: through the sending worker's own AF_XDP socket.
    Uplink,
    Tap(Arc<TapPort>),
    /// A port with nothing behind it (counted as `tx/full`).
    None,
}

/// The ports behind the pipeline's port ids, as the control side publishes them: pods come
/// and go while workers run. Indexed by port id.
#[derive(Clone, Default)]
pub struct PortSet {
    /// Bumped by each publication (workers rebuild their poll list when it changes).
    pub version: u64,
    pub targets: Vec<TxTarget>,
    /// TAPs to receive from (each worker from its own queue of each).
    pub taps: Vec<Arc<TapPort>>,
}

pub struct WorkerRt {
    pub id: usize,
    pub pipeline: Pipeline,
    pub uplink: Option<XskPort>,
    /// The rings to and from the other workers (with more than one).
    pub handoff: Option<Arc<handoff::Handoff>>,
    pub ports: Arc<ArcSwap<PortSet>>,
    pub idle: IdleMode,
    pub spin: Duration,
    pub core: Option<core_affinity::CoreId>,
    pub stop: Arc<AtomicBool>,
    /// The uplink's link state ([`LinkState`] as u8, kept by the daemon's timer): frames for
    /// an uplink without carrier are counted as `tx/link-down`, not offered to the device.
    pub uplink_link: Arc<AtomicU8>,
}

/// Counts a frame the pipeline counted as sent on `port` (see [`Counters::tx`]) and the worker
/// then lost: under `reason`, and no longer as sent.
/// The system's wall clock in nanoseconds since the Unix epoch, for capture timestamps (the
/// core reads no clock of its own).
fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn count_unsent(counters: &Counters, port: PortId, len: usize, reason: DropReason) {
    counters.count_drop(reason);
    counters.tx_unsent(port as usize, 1, len as u64);
}

/// Where one worker's frames go during a pass: the published ports, its uplink socket (or the
/// receive batch that holds it), whether the uplink has carrier, its counters, and its queue
/// of every TAP.
struct Sink<'a, U> {
    targets: &'a [TxTarget],
    uplink: Option<&'a mut U>,
    uplink_down: bool,
    counters: &'a Counters,
    /// This worker's queue of each TAP.
    q: usize,
}

/// Scratch space of the output stage, sized once.
struct OutScratch {
    segs: Vec<Option<Seg>>,
    offs: Vec<Offload>,
}

impl<U: TxCopy> Sink<'_, U> {
    /// Sends `data` to `port`, counting a failure. Nothing is offered to an uplink without
    /// carrier: the frame is lost, and counted as such (not as sent).
    fn send(&mut self, port: PortId, data: &[u8]) {
        let failed = match self.targets.get(port as usize) {
            Some(TxTarget::Uplink) if self.uplink_down => Some(DropReason::TxLinkDown),
            Some(TxTarget::Uplink) => {
                (!self.uplink.as_deref_mut().is_some_and(|u| u.tx_copy(data))).then_some(DropReason::TxFull)
            }
            Some(TxTarget::Tap(t)) => (!t.send(self.q, data, Offload::NONE)).then(|| t.send_failure()),
            _ => Some(DropReason::TxFull),
        };
        if let Some(reason) = failed {
            count_unsent(self.counters, port, data.len(), reason);
        }
    }

    /// Sends a frame from a [`PacketBuf`] (a TAP's read buffer, or a frame handed over by
    /// another worker) to the uplink: a GSO frame is cut into wire-sized segments written
    /// straight into transmit chunks (AF_XDP has no TSO), and a partial checksum is completed.
    /// Port counters count the frame as the pipeline saw it (a GSO frame once); a segment that
    /// finds no chunk is a `tx/full` drop.
    fn send_buf(&mut self, port: PortId, b: &mut PacketBuf) {
        let to_uplink = matches!(self.targets.get(port as usize), Some(TxTarget::Uplink)) && !self.uplink_down;
        let c = self.counters;
        if to_uplink && b.offload.is_gso() {
            let Some(u) = self.uplink.as_deref_mut() else { return count_unsent(c, port, b.len, DropReason::TxFull) };
            let data = b.data();
            let Ok(s) = Segments::plan(data, &b.offload) else {
                return count_unsent(c, port, b.len, DropReason::GsoBadFrame);
            };
            c.inc(&c.gso_frames);
            let mut hdr = [0u8; gso::MAX_HDR];
            let h = s.layout().hdr_len;
            let sent = (0..s.count())
                .take_while(|&k| s.header(data, k, &mut hdr).is_some_and(|r| u.tx_parts(&[&hdr[..h], &data[r]])))
                .count();
            c.add(&c.gso_segments, sent as u64);
            c.drop_n(DropReason::TxFull, (s.count() - sent) as u64);
            return;
        }
        if to_uplink && b.offload.csum_partial {
            offload::complete_csum(&mut b.buf[b.head..b.head + b.len]);
            c.inc(&c.csum_completed);
        }
        self.send(port, b.data());
    }

    /// Sends what the pipeline decided for a batch of [`PacketBuf`]s (from the TAPs, or handed
    /// over by another worker): to TAPs through GRO, to the uplink through
    /// [`Sink::send_buf`], and the frames the pipeline made.
    fn emit_bufs(&mut self, out: &Output, bufs: &mut [PacketBuf], scratch: &mut OutScratch) {
        for p in out.active_ports() {
            let idx = out.tx(p);
            match self.targets.get(p as usize) {
                Some(TxTarget::Tap(t)) => self.gro_to_tap(t, bufs, idx, p, scratch),
                _ => {
                    for &i in idx {
                        self.send_buf(p, &mut bufs[i as usize]);
                    }
                }
            }
        }
        for (p, data) in out.emitted.frames() {
            self.send(p, data);
        }
    }

    /// Writes the frames queued for TAP `t` (indices `idx` into `frames`, ascending) with GRO:
    /// runs of in-order segments of one TCP flow go as one merged segment, the first frame's
    /// headers fixed and the others' payloads behind it in one vectored write (nothing
    /// copied); a frame with offload state of its own (from another pod's TAP) goes whole with
    /// it; everything else goes alone.
    fn gro_to_tap<F: Frame>(&self, t: &TapPort, frames: &mut [F], idx: &[u32], port: PortId, scratch: &mut OutScratch) {
        let (q, counters) = (self.q, self.counters);
        let OutScratch { segs, offs } = scratch;
        // The port's frames borrowed together (the indices ascend: arrival order).
        let mut views: [&mut [u8]; BURST] = std::array::from_fn(|_| &mut [][..]);
        let mut n = 0;
        offs.clear();
        let mut want = idx.iter().copied().peekable();
        for (i, f) in frames.iter_mut().enumerate() {
            if n == BURST {
                break;
            }
            if want.next_if_eq(&(i as u32)).is_some() {
                offs.push(f.offload());
                let (buf, head, len) = f.parts();
                views[n] = &mut buf[*head..*head + *len];
                n += 1;
            }
        }
        segs.clear();
        segs.extend(views[..n].iter().zip(offs.iter()).map(|(v, o)| {
            match (*o == Offload::NONE).then(|| Seg::parse(v))? {
                Ok(s) => Some(s),
                Err(gro::Unmerged::BadChecksum) => {
                    counters.inc(&counters.gro_bad_checksum);
                    None
                }
                Err(gro::Unmerged::Kind) => None,
            }
        }));
        let mut k = 0;
        while k < n {
            let Some(first) = segs[k] else {
                if !t.send(q, views[k], offs[k]) {
                    count_unsent(counters, port, views[k].len(), t.send_failure());
                }
                k += 1;
                continue;
            };
            let mut run = Run::start(first);
            let mut j = k + 1;
            while j < n && segs[j].is_some_and(|s| run.try_add(views[k], &s, views[j])) {
                j += 1;
            }
            let (head, rest) = views[k..j].split_first_mut().expect("a run has its first frame");
            let hdr = run.finish(head);
            let mut parts = [IoSlice::new(&[]); gro::MAX_SEGS];
            parts[0] = IoSlice::new(head);
            for (p, (v, s)) in parts[1..].iter_mut().zip(rest.iter().zip(&segs[k + 1..j])) {
                *p = IoSlice::new(&v[s.expect("merged segments parsed").payload()]);
            }
            if run.count() > 1 {
                counters.inc(&counters.gro_merged);
                counters.add(&counters.gro_segments, run.count() as u64);
            }
            if !t.send_parts(q, &hdr, &parts[..run.count()]) {
                let bytes: usize = views[k..j].iter().map(|v| v.len()).sum();
                counters.drop_n(t.send_failure(), run.count() as u64);
                counters.tx_unsent(port as usize, run.count() as u64, bytes as u64);
            }
            k = j;
        }
    }
}

/// Counts a frame passed to the worker that owns its flow, or lost because that worker's ring
/// was full.
fn count_handoff(counters: &Counters, given: bool) {
    if given {
        counters.inc(&counters.handed_off);
    } else {
        counters.count_drop(DropReason::HandoffFull);
    }
}

/// Moves the frames of `frames` that `keep` keeps to the front, in order; returns how many.
fn compact<F>(frames: &mut [F], mut keep: impl FnMut(usize) -> bool) -> usize {
    let mut w = 0;
    for r in 0..frames.len() {
        if keep(r) {
            frames.swap(w, r);
            w += 1;
        }
    }
    w
}

/// The uplink's port id (where frames queued on this worker's socket were counted as sent).
fn uplink_port(targets: &[TxTarget]) -> PortId {
    targets.iter().position(|t| matches!(t, TxTarget::Uplink)).unwrap_or(0) as PortId
}

impl WorkerRt {
    pub fn run(mut self) {
        if let Some(c) = self.core {
            if !core_affinity::set_for_current(c) {
                tracing::warn!(worker = self.id, core = c.id, "could not pin to core");
            }
        }
        let me = self.id;
        let epoch = Instant::now();
        self.pipeline.set_wall_clock(wall_clock_ns);
        let counters = self.pipeline.counters().clone();
        let mut tap_bufs: Vec<PacketBuf> = (0..TAP_BURST).map(|_| PacketBuf::with_size(BIG_BUF_SIZE, &[], 0)).collect();
        let mut inbox: Vec<PacketBuf> = Vec::with_capacity(BURST);
        let mut scratch = OutScratch { segs: Vec::with_capacity(BURST), offs: Vec::with_capacity(BURST) };
        let mut owners: Vec<Option<usize>> = Vec::with_capacity(BURST);
        let workers = self.handoff.as_ref().map_or(1, |h| h.workers());
        // This worker's ends of the handoff rings.
        let mut lanes = self.handoff.as_ref().and_then(|h| h.lanes(me));
        let others: Vec<_> = (self.uplink.as_ref().map(|u| u.fd()).into_iter())
            .chain(self.handoff.as_ref().map(|h| h.wake_fd(me)))
            .collect();
        let mut ready = match Readiness::new(&others) {
            Ok(r) => r,
            Err(e) => {
                // Out of descriptors or memory at start: this worker cannot see its ports.
                tracing::error!(worker = me, "cannot watch the ports ({e}); not starting");
                return;
            }
        };
        let port_cell = self.ports.clone();
        let mut ready_for = u64::MAX;
        let mut ready_gone = 0;
        let mut last_work = Instant::now();
        let mut last_timer_ms = u64::MAX;
        let mut next_kernel_stats_ms = 0;
        let mut socket_drops = SocketDrops::default();
        tracing::info!(worker = me, idle = ?self.idle, workers, "worker started");
        while !self.stop.load(Ordering::Relaxed) {
            let now_ms = epoch.elapsed().as_millis() as u64;
            let ports = port_cell.load();
            let uplink_down = self.uplink_link.load(Ordering::Relaxed) == LinkState::Down as u8;
            let targets = &ports.targets[..];
            let taps: &[Arc<TapPort>] = &ports.taps;
            // With stateful policy and several workers, frames go to the worker owning their flow.
            let handoff = self.handoff.as_deref().filter(|_| self.pipeline.needs_flow_affinity());
            // A TAP removed under us reports an error for ever: watch only those still there.
            let gone = taps.iter().filter(|t| t.is_gone()).count();
            if ready_for != ports.version || ready_gone != gone {
                // The port set changed: watch the new one's descriptors.
                (ready_for, ready_gone) = (ports.version, gone);
                let queues: Vec<_> = taps.iter().map(|t| (!t.is_gone()).then(|| t.fd(me))).collect();
                if let Err(e) = ready.set_taps(&queues) {
                    tracing::warn!(worker = me, "cannot watch the pods' TAPs ({e}); reading every one each pass");
                }
            }
            self.pipeline.poll_requests();
            let mut work = 0;
            if let Some(up) = self.uplink.as_mut() {
                // The batch holds the port: its frames go back to the fill ring or out on TX
                // when it finishes (or is dropped), none outlives the UMEM.
                let mut batch = up.rx_burst(BURST);
                let mut n = batch.len();
                if n > 0 {
                    work += n;
                    if let (Some(h), Some(l)) = (handoff, lanes.as_mut()) {
                        // Frames of flows another worker owns are copied to it; the rest move
                        // to the front, in order, and stay.
                        owners.clear();
                        for f in batch.frames().iter_mut() {
                            let port = f.port();
                            let (buf, head, len) = f.parts();
                            let frame = &buf[*head..*head + *len];
                            let o = affinity::owner(frame, workers).filter(|&o| o != me);
                            if let Some(o) = o {
                                count_handoff(&counters, l.give_copy(o, frame, port));
                            }
                            owners.push(o);
                        }
                        l.flush(h);
                        n = compact(batch.frames(), |i| owners[i].is_none());
                    }
                    self.pipeline.process(&mut batch.frames()[..n], now_ms);
                    let out = self.pipeline.output();
                    // Frames to TAPs and the uplink's own chunks first, then the frames the
                    // pipeline made, copied onto the uplink through the batch.
                    let sink = Sink::<XskPort> { targets, uplink: None, uplink_down, counters: &counters, q: me };
                    for p in out.active_ports() {
                        let idx = out.tx(p);
                        match targets.get(p as usize) {
                            Some(TxTarget::Tap(t)) => {
                                sink.gro_to_tap(t, &mut batch.frames()[..n], idx, p, &mut scratch)
                            }
                            Some(TxTarget::Uplink) if !uplink_down => idx.iter().for_each(|&i| batch.send(i as usize)),
                            target => {
                                let reason = match target {
                                    Some(TxTarget::Uplink) => DropReason::TxLinkDown,
                                    _ => DropReason::TxFull,
                                };
                                for &i in idx {
                                    count_unsent(&counters, p, batch.frames()[i as usize].len(), reason);
                                }
                            }
                        }
                    }
                    let mut sink = Sink { targets, uplink: Some(&mut batch), uplink_down, counters: &counters, q: me };
                    for (p, data) in out.emitted.frames() {
                        sink.send(p, data);
                    }
                    let unsent = batch.finish();
                    if unsent.frames > 0 {
                        counters.drop_n(DropReason::TxFull, unsent.frames);
                        counters.tx_unsent(uplink_port(targets) as usize, unsent.frames, unsent.bytes);
                    }
                }
            }
            for &i in ready.ready_taps() {
                let Some(t) = taps.get(i) else { continue };
                let mut n = t.rx_burst(me, &mut tap_bufs, &counters);
                if n == 0 {
                    continue;
                }
                work += n;
                if let (Some(h), Some(l)) = (handoff, lanes.as_mut()) {
                    // As for the uplink, but a TAP's buffer changes places with a spare of the
                    // pair: no copy.
                    owners.clear();
                    for b in tap_bufs[..n].iter_mut() {
                        let o = affinity::owner(b.data(), workers).filter(|&o| o != me);
                        if let Some(o) = o {
                            count_handoff(&counters, l.give(o, b));
                        }
                        owners.push(o);
                    }
                    l.flush(h);
                    n = compact(&mut tap_bufs[..n], |i| owners[i].is_none());
                    if n == 0 {
                        continue;
                    }
                }
                self.pipeline.process(&mut tap_bufs[..n], now_ms);
                let out = self.pipeline.output();
                Sink { targets, uplink: self.uplink.as_mut(), uplink_down, counters: &counters, q: me }.emit_bufs(
                    out,
                    &mut tap_bufs[..n],
                    &mut scratch,
                );
            }
            if let Some(l) = lanes.as_mut() {
                // Frames other workers handed to this one.
                for from in (0..workers).filter(|&w| w != me) {
                    l.take(from, &mut inbox, BURST);
                    if inbox.is_empty() {
                        continue;
                    }
                    work += inbox.len();
                    self.pipeline.process(&mut inbox[..], now_ms);
                    let out = self.pipeline.output();
                    Sink { targets, uplink: self.uplink.as_mut(), uplink_down, counters: &counters, q: me }.emit_bufs(
                        out,
                        &mut inbox[..],
                        &mut scratch,
                    );
                    l.give_back(from, &mut inbox);
                }
            }
            if now_ms >= next_kernel_stats_ms {
                // Drops the kernel counted at the socket, before any frame reached us.
                next_kernel_stats_ms = now_ms + 500;
                socket_drops.count(self.uplink.as_ref(), &counters);
            }
            if work == 0 && now_ms != last_timer_ms {
                // Timers: ARP retransmits, held frames, conntrack sweep.
                last_timer_ms = now_ms;
                self.pipeline.process(&mut tap_bufs[..0], now_ms);
                let out = self.pipeline.output();
                let mut sink = Sink { targets, uplink: self.uplink.as_mut(), uplink_down, counters: &counters, q: me };
                for (p, data) in out.emitted.frames() {
                    sink.send(p, data);
                }
            }
            if let Some(up) = self.uplink.as_mut() {
                let (dropped, bytes) = up.finish_batch();
                if dropped > 0 {
                    counters.drop_n(DropReason::TxFull, dropped as u64);
                    counters.tx_unsent(uplink_port(targets) as usize, dropped as u64, bytes as u64);
                }
            }
            if work > 0 {
                last_work = Instant::now();
                // Even with work, let anything else runnable on this core go first: on veth the
                // device's receive work (the NAPI thread that runs XDP and copies frames into
                // our UMEM) is what feeds us, and when it shares the core a worker that never
                // yields starves it until the scheduler preempts us, milliseconds later: frames
                // wait in the device's ring (the latency tail) and overflow it (loss). With
                // the core to ourselves this returns at once.
                std::thread::yield_now();
                continue;
            }
            let sleep = match self.idle {
                IdleMode::Poll => false,
                IdleMode::Interrupt => true,
                IdleMode::Adaptive => last_work.elapsed() >= self.spin,
            };
            if sleep {
                // Asleep, then a last look at the rings: a frame handed over after this look
                // finds the flag set and wakes us through the eventfd.
                if let Some(h) = &self.handoff {
                    h.set_asleep(me, true);
                }
                if !lanes.as_ref().is_some_and(|l| l.pending()) {
                    ready.sleep(MAX_SLEEP_MS);
                }
                if let Some(h) = &self.handoff {
                    h.set_asleep(me, false);
                }
            } else {
                // Spinning, but let anything else runnable on this core go first: when the
                // device's NAPI thread shares the core (veth, or IRQs steered here), spinning
                // through its time slice only delays the frames we are waiting for. With the
                // core to ourselves this returns at once.
                std::thread::yield_now();
            }
        }
        // What the socket dropped since the last count, before the counters are read a last time.
        socket_drops.count(self.uplink.as_ref(), &counters);
        if let Some(up) = &self.uplink {
            tracing::info!(worker = me, stats = ?up.stats, chunks = ?up.chunk_census(), kernel = %up.kernel_stats(), "uplink socket");
        }
        tracing::info!(worker = me, "worker stopped");
    }
}

/// Drops at the uplink's socket, before any frame reached the pipeline: the kernel's (RX ring
/// full, other) and multi-buffer frames too big to gather. Counted as they grow.
#[derive(Default)]
struct SocketDrops {
    ring_full: u64,
    other: u64,
    too_big: u64,
}

impl SocketDrops {
    fn count(&mut self, up: Option<&XskPort>, counters: &Counters) {
        let Some(up) = up else { return };
        if let Some((full, other)) = up.kernel_drops() {
            counters.drop_n(DropReason::XskRxRingFull, full.saturating_sub(self.ring_full));
            counters.drop_n(DropReason::XskRxDropped, other.saturating_sub(self.other));
            (self.ring_full, self.other) = (full, other);
        }
        counters.drop_n(DropReason::XskRxTooBig, up.stats.rx_too_big - self.too_big);
        self.too_big = up.stats.rx_too_big;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pipeline counts a frame as sent on its port when it queues it; a frame the worker
    /// then loses (uplink without carrier, nothing behind the port) counts as that drop alone.
    #[test]
    fn a_frame_lost_on_the_way_out_is_not_counted_as_sent() {
        let counters = Counters::new(3);
        let targets = [TxTarget::Uplink, TxTarget::None];
        let frame = [0u8; 60];
        // As the pipeline does for each frame it queues.
        counters.tx(0, frame.len());
        counters.tx(1, frame.len());
        let mut sink =
            Sink::<XskPort> { targets: &targets, uplink: None, uplink_down: true, counters: &counters, q: 0 };
        sink.send(0, &frame);
        sink.send(1, &frame);
        assert_eq!(counters.drops(DropReason::TxLinkDown), 1);
        assert_eq!(counters.drops(DropReason::TxFull), 1);
        assert_eq!(counters.port(0), vrouter_core::stats::counters::PortStats::default(), "uplink: lost, not sent");
        assert_eq!(counters.port(1), vrouter_core::stats::counters::PortStats::default(), "no port: lost, not sent");
    }
}
