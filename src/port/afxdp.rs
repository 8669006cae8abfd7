//! The uplink through AF_XDP (xsk-rs): one socket and one UMEM per queue, frames processed in
//! place in the UMEM and sent back out of the same chunk when they leave on the uplink.
//!
//! UMEM chunk layout: `[256 B XDP headroom | frame ...]` (frame size 2048, no user headroom).
//! The pipeline sees the whole chunk as its buffer, so IPIP encapsulation and ICMP errors grow
//! into the 256 bytes in front. xsk-rs 0.11 cannot move a descriptor's start address, so a
//! frame whose start moved is slid back to the descriptor's address before TX (a memmove of
//! the frame; only encapsulated, decapsulated and ICMP-error frames pay it).
//!
//! Frame accounting: every chunk is at all times in exactly one place: the fill ring, the RX
//! ring, the pipeline (between `rx_burst` and `finish_batch`), the TX ring, the completion
//! ring, or the free list. RX frames not sent go back to the fill ring; completed TX chunks go
//! to the free list, which tops up the fill ring and supplies copies sent from other ports.

use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use tracing::{info, warn};
use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use vrouter_core::dataplane::{Frame, PortId};

pub const FRAME_SIZE: usize = 2048;
const FRAMES: u32 = 4096;
const RING: u32 = 2048;
/// Frames allowed to wait on the TX ring by default (see [`XskPort::finish_batch`] and
/// `[uplink] tx_queue`).
pub const DEFAULT_TX_QUEUE: usize = 512;
/// The TX ring's size: the most `tx_queue` can be.
pub const TX_RING: usize = RING as usize;
/// Free chunks kept back from the fill ring for frames copied in from other ports.
const FREE_RESERVE: usize = 512;

/// How the socket's XDP program is attached (`[uplink] xdp_mode`).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (SKB) mode with a warning.
    #[default]
    Auto,
    Native,
    Generic,
}

/// A received frame: a UMEM chunk lent to the pipeline.
pub struct XskFrame {
    desc: FrameDesc,
    chunk: *mut u8,
    head: usize,
    len: usize,
    port: PortId,
}

impl Frame for XskFrame {
    #[inline]
    fn parts(&mut self) -> (&mut [u8], &mut usize, &mut usize) {
        // SAFETY: `chunk` points at a FRAME_SIZE-byte chunk of the UMEM mapping, which lives as
        // long as the port. The chunk's descriptor came off the RX ring and is owned by this
        // frame until `finish_batch` hands it back, so neither the kernel nor any other frame
        // touches these bytes meanwhile, and `&mut self` makes this borrow unique.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.chunk, FRAME_SIZE) };
        (buf, &mut self.head, &mut self.len)
    }
    #[inline]
    fn port(&self) -> PortId {
        self.port
    }
}

/// Counters of the port itself (not of the pipeline).
#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct XskStats {
    pub rx: u64,
    pub tx: u64,
    pub tx_full: u64,
    pub no_free_chunk: u64,
}

/// One AF_XDP socket on one queue of the uplink.
pub struct XskPort {
    // Fields drop in order: the socket's queues before the UMEM they use.
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    base: *mut u8,
    free: Vec<FrameDesc>,
    rx_descs: Vec<FrameDesc>,
    tx_descs: Vec<FrameDesc>,
    fill_back: Vec<FrameDesc>,
    port: PortId,
    /// Descriptors on the TX ring not yet completed.
    in_flight: usize,
    pub stats: XskStats,
    pub mode: &'static str,
    /// Frames allowed to wait on the TX ring.
    tx_queue: usize,
}

// SAFETY: the raw pointers are into the UMEM mapping owned by `umem`, which moves with the
// port; the port is used by one worker thread at a time.
unsafe impl Send for XskPort {}

/// How many RX queues `dev` has (from sysfs), to check the configured count before binding.
pub fn queue_count(dev: &str) -> io::Result<u32> {
    let n = std::fs::read_dir(format!("/sys/class/net/{dev}/queues"))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    Ok(n as u32)
}

/// Removes any XDP program left on `dev` (a killed process leaves libxdp's attached).
pub fn detach_xdp(dev: &str) {
    for mode in ["xdp", "xdpgeneric"] {
        let _ = std::process::Command::new("ip")
            .args(["link", "set", "dev", dev, mode, "off"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn build_umem() -> io::Result<(Umem, Vec<FrameDesc>)> {
    let cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(FRAME_SIZE as u32).expect("power of two >= 2048"))
        .fill_queue_size(QueueSize::new(RING).expect("power of two"))
        .comp_queue_size(QueueSize::new(RING).expect("power of two"))
        .frame_headroom(0)
        .build()
        .map_err(|e| io::Error::other(format!("UMEM config: {e}")))?;
    Umem::new(cfg, NonZeroU32::new(FRAMES).expect("non-zero"), false)
        .map_err(|e| io::Error::other(format!("UMEM: {e}")))
}

impl XskPort {
    /// Binds queue `queue` of `dev`. `Auto` tries native XDP and falls back to generic mode
    /// (logged); a failed bind leaves the UMEM busy for a moment, so the retry uses a new one.
    pub fn open(dev: &str, queue: u32, mode: XdpMode, port: PortId) -> io::Result<XskPort> {
        let tries: &[(XdpFlags, &str)] = match mode {
            XdpMode::Native => &[(XdpFlags::XDP_FLAGS_DRV_MODE, "native")],
            XdpMode::Generic => &[(XdpFlags::XDP_FLAGS_SKB_MODE, "generic")],
            XdpMode::Auto => &[(XdpFlags::XDP_FLAGS_DRV_MODE, "native"), (XdpFlags::XDP_FLAGS_SKB_MODE, "generic")],
        };
        let iface: Interface = dev.parse().map_err(|_| io::Error::other(format!("bad interface name {dev}")))?;
        let mut last = None;
        for (flags, name) in tries {
            for attempt in 0..5 {
                let (umem, descs) = build_umem()?;
                let cfg = SocketConfig::builder()
                    .rx_queue_size(QueueSize::new(RING).expect("power of two"))
                    .tx_queue_size(QueueSize::new(RING).expect("power of two"))
                    .xdp_flags(*flags)
                    .bind_flags(BindFlags::XDP_COPY | BindFlags::XDP_USE_NEED_WAKEUP)
                    .libxdp_flags(LibxdpFlags::empty())
                    .build();
                // SAFETY: the UMEM outlives the sockets: both are owned by the returned port,
                // and the queues are dropped before the UMEM (field order).
                match unsafe { xsk_rs::Socket::new(cfg, &umem, &iface, queue) } {
                    Ok((tx, rx, Some((fq, cq)))) => {
                        if *name == "generic" && mode == XdpMode::Auto {
                            warn!(dev, queue, "native XDP unavailable; using generic (SKB) mode");
                        }
                        info!(dev, queue, mode = name, "AF_XDP socket bound");
                        return XskPort::start(umem, descs, fq, cq, rx, tx, port, name);
                    }
                    Ok(_) => {
                        return Err(io::Error::other(format!("{dev} queue {queue}: already bound by this process")))
                    }
                    Err(e) => {
                        let busy = std::error::Error::source(&e)
                            .and_then(|s| s.downcast_ref::<io::Error>())
                            .and_then(|e| e.raw_os_error())
                            == Some(libc::EBUSY);
                        last = Some(format!(
                            "{e} ({})",
                            std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                        ));
                        if busy && attempt < 4 {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        break;
                    }
                }
            }
        }
        Err(io::Error::other(format!("{dev} queue {queue}: cannot bind AF_XDP socket: {}", last.unwrap_or_default())))
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        umem: Umem,
        mut descs: Vec<FrameDesc>,
        mut fq: FillQueue,
        cq: CompQueue,
        rx: RxQueue,
        tx: TxQueue,
        port: PortId,
        mode: &'static str,
    ) -> io::Result<XskPort> {
        let first = descs[0];
        let mut d0 = first;
        // SAFETY: d0 is a fresh descriptor of this UMEM, owned by us; we only take the pointer.
        let data0 = unsafe { umem.data_mut(&mut d0) }.contents_mut().as_mut_ptr();
        // SAFETY: the descriptor's address is its offset in the mapping, so this is the base.
        let base = unsafe { data0.sub(first.addr()) };
        let fill: Vec<FrameDesc> = descs.drain(..RING as usize).collect();
        // SAFETY: these descriptors are ours and not in any ring.
        let n = unsafe { fq.produce(&fill) };
        if n != fill.len() {
            return Err(io::Error::other("fill ring refused the initial frames"));
        }
        Ok(XskPort {
            umem,
            base,
            fq,
            cq,
            rx,
            tx,
            free: descs,
            rx_descs: vec![FrameDesc::default(); 256],
            tx_descs: Vec::with_capacity(RING as usize),
            fill_back: Vec::with_capacity(RING as usize),
            port,
            in_flight: 0,
            stats: XskStats::default(),
            mode,
            tx_queue: DEFAULT_TX_QUEUE,
        })
    }

    /// The kernel's drop counts for this socket since it was opened: (RX ring full, other RX
    /// drops such as an empty fill ring). `None` when the kernel does not say.
    pub fn kernel_drops(&self) -> Option<(u64, u64)> {
        let s = self.rx.fd().xdp_statistics().ok()?;
        Some((s.rx_ring_full(), s.rx_dropped()))
    }

    /// The kernel's view of the socket (drops, empty fill ring, invalid descriptors), as text.
    pub fn kernel_stats(&self) -> String {
        match self.rx.fd().xdp_statistics() {
            Ok(s) => format!("{s:?}"),
            Err(e) => format!("unavailable: {e}"),
        }
    }

    /// Where the chunks are: free list, waiting to return to the fill ring, on the TX ring.
    pub fn chunk_census(&self) -> (usize, usize, usize) {
        (self.free.len(), self.fill_back.len(), self.in_flight)
    }

    /// How many frames may wait on the TX ring (clamped to 32..=the ring's size): fewer
    /// means less delay when the device drains slowly, more absorbs longer stalls.
    pub fn set_tx_queue(&mut self, frames: usize) {
        self.tx_queue = frames.clamp(32, TX_RING);
    }

    /// Whether the kernel runs this socket in zero-copy mode (`XDP_OPTIONS`); false when it
    /// does not say.
    pub fn zero_copy(&self) -> bool {
        const SOL_XDP: libc::c_int = 283;
        const XDP_OPTIONS: libc::c_int = 8;
        const XDP_OPTIONS_ZEROCOPY: u32 = 1;
        let mut flags = 0u32;
        let mut len = std::mem::size_of::<u32>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `flags`, a u32 we own
        // (`struct xdp_options` is one u32).
        let r = unsafe { libc::getsockopt(self.fd(), SOL_XDP, XDP_OPTIONS, (&mut flags as *mut u32).cast(), &mut len) };
        r == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
    }

    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }

    /// Receives up to `max` frames into `out` (cleared first). Non-blocking.
    pub fn rx_burst(&mut self, out: &mut Vec<XskFrame>, max: usize) -> usize {
        out.clear();
        let max = max.min(self.rx_descs.len());
        // SAFETY: the slice is ours; consumed descriptors are owned by us from here on.
        let n = unsafe { self.rx.consume(&mut self.rx_descs[..max]) };
        for d in &self.rx_descs[..n] {
            let off = d.addr() & (FRAME_SIZE - 1);
            let chunk_off = d.addr() - off;
            // SAFETY: chunk_off is a chunk boundary inside the mapping (descriptor from RX).
            let chunk = unsafe { self.base.add(chunk_off) };
            out.push(XskFrame { desc: *d, chunk, head: off, len: d.lengths().data(), port: self.port });
        }
        self.stats.rx += n as u64;
        n
    }

    /// Queues `f` (received on this port) for TX from its own chunk: no copy unless its start
    /// moved. Takes ownership of the chunk. False if it cannot be sent (it grew past its
    /// chunk): the chunk goes back to the fill ring and the caller counts the loss.
    #[inline]
    pub fn tx_own(&mut self, mut f: XskFrame) -> bool {
        let off = f.desc.addr() & (FRAME_SIZE - 1);
        if f.head != off {
            let (buf, head, len) = f.parts();
            let (h, l) = (*head, *len);
            if off + l > FRAME_SIZE {
                self.fill_back.push(f.desc);
                self.stats.tx_full += 1;
                return false;
            }
            buf.copy_within(h..h + l, off);
        }
        // SAFETY: the descriptor is ours (from RX) and its data region is at `addr`.
        unsafe { self.umem.data_mut(&mut f.desc) }.cursor().set_pos(f.len);
        self.tx_descs.push(f.desc);
        true
    }

    /// Returns a received frame's chunk to the fill ring (it was not sent here).
    #[inline]
    pub fn recycle(&mut self, f: XskFrame) {
        self.fill_back.push(f.desc);
    }

    /// Copies `frame` into a free chunk and queues it for TX.
    pub fn tx_copy(&mut self, frame: &[u8]) -> bool {
        if self.free.is_empty() {
            self.reap();
        }
        let Some(mut d) = self.free.pop() else {
            self.stats.no_free_chunk += 1;
            return false;
        };
        // SAFETY: `d` is a free descriptor of this UMEM, owned by us.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let mut cur = data.cursor();
        cur.set_pos(0);
        if io::Write::write_all(&mut cur, frame).is_err() {
            self.free.push(d);
            return false;
        }
        self.tx_descs.push(d);
        true
    }

    /// Flushes queued TX (with the wakeup copy mode needs), returns unsent RX chunks to the
    /// fill ring, reaps completions and tops the fill ring up. Returns the frames dropped
    /// because the TX ring had no room, and their bytes (counted by the caller as `tx/full`,
    /// and taken back from what the port sent).
    ///
    /// At most `tx_queue` frames ([`XskPort::set_tx_queue`]) wait on the TX ring: when the
    /// device drains slower than we forward, a deeper queue only adds delay (2,048 frames are
    /// milliseconds), so the excess is dropped here, where it is counted, instead of queued.
    pub fn finish_batch(&mut self) -> (usize, usize) {
        let (mut dropped, mut dropped_bytes) = (0, 0);
        if !self.tx_descs.is_empty() {
            self.reap();
            let n = self.tx_descs.len();
            let room = (self.tx.nb_free(n as u32) as usize).min(n).min(self.tx_queue.saturating_sub(self.in_flight));
            // SAFETY: every queued descriptor is ours and filled in. `produce` takes all of
            // the slice or nothing, so offer exactly what fits.
            let sent = if room > 0 { unsafe { self.tx.produce(&self.tx_descs[..room]) } } else { 0 };
            // Produce, then wake: a wakeup error must not make us think the descriptors were
            // not queued (they are on the ring and will complete).
            if sent > 0 && self.tx.needs_wakeup() {
                let _ = self.tx.wakeup();
            }
            dropped = n - sent;
            dropped_bytes = self.tx_descs[sent..].iter().map(|d| d.lengths().data()).sum();
            self.stats.tx += sent as u64;
            self.stats.tx_full += dropped as u64;
            self.in_flight += sent;
            self.fill_back.extend_from_slice(&self.tx_descs[sent..]);
            self.tx_descs.clear();
        }
        self.reap();
        // In copy mode the kernel transmits at most 32 descriptors per wakeup (sendto), so
        // kick until the ring drains or stops moving; otherwise chunks pile up on the TX ring
        // and the free list runs dry.
        for _ in 0..64 {
            if self.in_flight == 0 {
                break;
            }
            if self.tx.needs_wakeup() {
                let _ = self.tx.wakeup();
            }
            let before = self.in_flight;
            self.reap();
            if self.in_flight == before {
                break;
            }
        }
        self.refill();
        (dropped, dropped_bytes)
    }

    /// Returns RX chunks to the fill ring (as many as fit now: `produce` is all or nothing, so
    /// hand it exactly what fits, or chunks would pile up here and RX would starve), then tops
    /// the ring up from the free list, keeping a reserve there for copies from other ports.
    fn refill(&mut self) {
        if !self.fill_back.is_empty() {
            let room = (self.fq.nb_free(self.fill_back.len() as u32) as usize).min(self.fill_back.len());
            if room > 0 {
                let at = self.fill_back.len() - room;
                // SAFETY: these chunks are ours and in no ring.
                let n = unsafe { self.fq.produce(&self.fill_back[at..]) };
                if n == room {
                    self.fill_back.truncate(at);
                }
            }
        }
        let spare = self.free.len().saturating_sub(FREE_RESERVE);
        if spare > 0 {
            let room = (self.fq.nb_free(spare as u32) as usize).min(spare);
            if room > 0 {
                let at = self.free.len() - room;
                // SAFETY: free chunks are ours.
                let n = unsafe { self.fq.produce(&self.free[at..]) };
                if n == room {
                    self.free.truncate(at);
                }
            }
        }
    }

    /// Moves completed TX chunks to the free list.
    fn reap(&mut self) {
        let mut done = [FrameDesc::default(); 64];
        loop {
            // SAFETY: completed descriptors are handed back to us.
            let n = unsafe { self.cq.consume(&mut done) };
            self.free.extend_from_slice(&done[..n]);
            self.in_flight = self.in_flight.saturating_sub(n);
            if n < done.len() {
                break;
            }
        }
    }
}
