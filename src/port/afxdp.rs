//! The uplink through AF_XDP (xsk-rs): one socket and one UMEM per queue, frames processed in
//! place in the UMEM and sent back out of the same chunk when they leave on the uplink.
//!
//! UMEM chunk layout: `[256 B XDP headroom | frame ...]` (2 or 4 KiB chunks, no user headroom).
//! The pipeline sees the whole chunk as its buffer, so IPIP encapsulation and ICMP errors grow
//! into the 256 bytes in front. xsk-rs 0.11 cannot move a descriptor's start address, so a
//! frame whose start moved is slid back to the descriptor's address before TX (a memmove of
//! the frame; only encapsulated, decapsulated and ICMP-error frames pay it).
//!
//! Frame accounting: every chunk is at all times in exactly one place: the free list, the fill
//! ring, the RX ring, a receive batch ([`RxBatch`], between [`Port::rx_burst`] and the batch's
//! end), the list waiting to go back to the fill ring, the list queued for TX, the TX ring, or
//! the completion ring. RX frames not sent go back to the fill ring; completed TX chunks go to
//! the free list, which tops up the fill ring and supplies copies sent from other ports.
//!
//! The types keep it so: frames ([`XskFrame`]) exist only inside a batch, which holds its port
//! (and so the UMEM mapping) mutably borrowed; safe code gets `&mut` to frames, never a frame
//! of its own, so no frame outlives the mapping and none is dropped on the floor. Whatever a
//! batch holds when it ends goes back to the fill ring, or out on TX if the worker asked
//! ([`RxBatch::send`], [`RxBatch::finish`]). The rings sit behind [`Rings`], so the accounting
//! is tested against fake rings without root (the tests at the bottom).
//!
//! Multi-buffer (an uplink MTU above [`MAX_CHUNK_MTU`], up to [`MAX_MTU`]): the socket is
//! bound with `XDP_USE_SG` behind our own frags-aware XDP program ([`XskProgram`]), and a
//! frame spans a chain of chunks (`XDP_PKT_CONTD` on all but the last). The pipeline works on
//! contiguous frames, so a received chain is gathered into one of the port's big buffers (its
//! chunks go straight back to the fill ring; one copy, as the kernel's copy mode makes per
//! chunk anyway). A frame for the wire is copied from its parts ([`TxCopy::tx_parts`]: a GSO
//! segment's headers and its slice of the big frame) straight into a chain of free chunks,
//! as into one chunk on a single-buffer port; a frame gathered here and sent back out is
//! scattered again. A chain is never split by the TX ring's room nor dropped half-queued.

use std::io;
use std::marker::PhantomData;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};
use xsk_rs::config::{BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use vrouter_api::config::MAX_MTU;

use super::xdp::{AttachMode, XskProgram};
use vrouter_core::dataplane::{Frame, PortId};
use vrouter_core::wire::ethernet::HEADER_LEN as ETH_HLEN;

/// The kernel's headroom in front of a received frame in its chunk (`XDP_PACKET_HEADROOM`).
const XDP_HEADROOM: usize = 256;
/// The largest uplink MTU whose frames fit one (4 KiB) chunk; above, frames span a chain of
/// chunks (multi-buffer, see the module docs).
pub const MAX_CHUNK_MTU: u16 = (4096 - XDP_HEADROOM - ETH_HLEN) as u16;
/// A big buffer: where a received multi-buffer frame is gathered, behind the XDP headroom.
const BIG_FRAME: usize = 16384;
const _: () = assert!(XDP_HEADROOM + ETH_HLEN + MAX_MTU as usize <= BIG_FRAME, "MAX_MTU must fit a big buffer");

/// A UMEM chunk's size for an uplink MTU: 2 KiB while a frame of that MTU fits one, 4 KiB
/// above. 2 KiB stays the default: half the memory, and frames at one offset of a 4 KiB
/// stride share L1 sets. Above [`MAX_CHUNK_MTU`] a frame spans several 4 KiB chunks
/// ([`multi_buffer`]).
pub fn chunk_size(mtu: u16) -> usize {
    if XDP_HEADROOM + ETH_HLEN + mtu as usize <= 2048 {
        2048
    } else {
        4096
    }
}
/// Whether frames of an uplink MTU span several chunks (`XDP_USE_SG`, our XDP program).
pub fn multi_buffer(mtu: u16) -> bool {
    mtu > MAX_CHUNK_MTU
}
/// `XDP_PKT_CONTD` (linux/if_xdp.h): more of the frame follows in the next descriptor.
const XDP_PKT_CONTD: u32 = 1;
const FRAMES: u32 = 4096;
const RING: u32 = 2048;
/// Chunks allowed to wait on the TX ring by default: a frame each, or a chain of them for a
/// multi-buffer frame (see [`Port::finish_batch`] and `[uplink] tx_queue`).
pub const DEFAULT_TX_QUEUE: usize = 512;
/// The TX ring's size: the most `tx_queue` can be.
pub const TX_RING: usize = RING as usize;
/// Free chunks kept back from the fill ring for frames copied in from other ports.
const FREE_RESERVE: usize = 512;
/// The most frames one receive burst takes.
pub const MAX_BURST: usize = 256;

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

/// Whether the socket shares the UMEM with the driver (`[uplink] bind`): zero-copy is where
/// AF_XDP earns its keep on a real NIC; drivers without AF_XDP support (veth, generic XDP)
/// copy every frame.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Zero-copy where the driver can (native XDP), copy mode otherwise (logged).
    #[default]
    Auto,
    /// Zero-copy or refuse to start.
    ZeroCopy,
    /// Copy mode (`XDP_COPY`).
    Copy,
}

/// The four rings of one AF_XDP socket (fill, RX, TX, completion) and the UMEM their
/// descriptors point into, as [`Port`] uses them. [`XskRings`] is the real socket; the tests
/// implement it over plain memory to check the chunk accounting without root.
///
/// # Safety
/// The port builds slices into the UMEM from what this trait says, so implementors promise:
/// [`Rings::umem`] is the start of `chunks * chunk_size` bytes (`chunk_size` a power of two),
/// valid for reads and writes for as long as the rings live, and touched by nothing else while
/// the port owns a chunk (in copy or zero-copy mode the kernel writes only chunks on the fill
/// ring and reads only chunks on the TX ring); [`Rings::rx_consume`] returns only descriptors
/// produced to the fill ring, and [`Rings::comp_consume`] only descriptors produced to the TX
/// ring, each once, with addresses inside that region.
pub unsafe trait Rings {
    /// A descriptor: a chunk's address (offset in the UMEM) and the length of its data.
    type Desc: Copy + Default;
    fn addr(d: &Self::Desc) -> usize;
    fn data_len(d: &Self::Desc) -> usize;
    /// Whether the frame goes on in the next descriptor (`XDP_PKT_CONTD`).
    fn more(d: &Self::Desc) -> bool;
    /// Marks (or unmarks) a descriptor to be continued by the next one on TX.
    fn set_more(d: &mut Self::Desc, more: bool);
    /// Sets the length of the data starting at the descriptor's address (what TX sends).
    ///
    /// # Safety
    /// The caller owns `d`'s chunk (it is in no ring).
    unsafe fn set_data_len(&mut self, d: &mut Self::Desc, len: usize);
    /// The UMEM: its start, how many chunks it has and their size.
    fn umem(&mut self) -> (NonNull<u8>, usize, usize);
    /// Takes up to `out.len()` received descriptors; the caller owns them from then on.
    fn rx_consume(&mut self, out: &mut [Self::Desc]) -> usize;
    /// Free slots on the fill ring (at least `want` if there are that many).
    fn fill_room(&mut self, want: usize) -> usize;
    /// Puts a prefix of `descs` on the fill ring and says how long it was (the real ring takes
    /// all or nothing; a ring may take less than it reported room for).
    ///
    /// # Safety
    /// The caller owns the chunks and gives up those taken.
    unsafe fn fill_produce(&mut self, descs: &[Self::Desc]) -> usize;
    /// Free slots on the TX ring (at least `want` if there are that many).
    fn tx_room(&mut self, want: usize) -> usize;
    /// As [`Rings::fill_produce`], for the TX ring. A multi-buffer port relies on the real
    /// ring taking all or nothing: a prefix ending inside a chain would leave its first part
    /// on the ring, to be joined to whatever comes next (the port offers whole chains only).
    ///
    /// # Safety
    /// The caller owns the chunks, with their data lengths set, and gives up those taken.
    unsafe fn tx_produce(&mut self, descs: &[Self::Desc]) -> usize;
    /// Wakes the kernel to transmit what is on the TX ring, if it asked to be woken.
    fn tx_kick(&mut self);
    /// Takes up to `out.len()` completed TX descriptors; the caller owns them from then on.
    fn comp_consume(&mut self, out: &mut [Self::Desc]) -> usize;
}

/// A frame of a receive batch. Frames are not owned by safe code: [`RxBatch::frames`] lends
/// them, tied to the batch and so to the port whose UMEM holds them (`'umem`).
#[repr(transparent)]
pub struct XskFrame<'umem, D = FrameDesc> {
    slot: Slot<D>,
    _umem: PhantomData<&'umem mut [u8]>,
}

/// A received chunk held by the port during a batch (what [`XskFrame`] wraps).
struct Slot<D> {
    desc: D,
    /// The start of the descriptor's chunk (`size` bytes, inside the UMEM), or of the big
    /// buffer a chain was gathered into (then `desc` is unused).
    chunk: NonNull<u8>,
    size: usize,
    head: usize,
    len: usize,
    port: PortId,
    /// Leaves on this port from its own chunk when the batch finishes.
    send: bool,
}

impl<D> XskFrame<'_, D> {
    /// The frame's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.slot.len
    }
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.slot.len == 0
    }
}

impl<D> Frame for XskFrame<'_, D> {
    #[inline]
    fn parts(&mut self) -> (&mut [u8], &mut usize, &mut usize) {
        // SAFETY: `chunk` is the start of a `size`-byte chunk inside the UMEM of the port
        // the frame came from (the `Rings` contract), or of one of that port's big buffers
        // (a gathered chain; allocated while the port lives), and that port is borrowed by its
        // batch for `'umem`, so the memory outlives this borrow (`&mut [XskFrame<'umem>]` is
        // invariant: a frame swapped into another port's batch makes both borrows last as
        // long). The chunk came off the RX ring and no ring or other frame holds it until its
        // batch ends (every chunk is in exactly one place; a big buffer holds one frame of one
        // batch), and `&mut self` makes this borrow unique.
        let buf = unsafe { std::slice::from_raw_parts_mut(self.slot.chunk.as_ptr(), self.slot.size) };
        (buf, &mut self.slot.head, &mut self.slot.len)
    }
    #[inline]
    fn port(&self) -> PortId {
        self.slot.port
    }
}

/// Counters of the port itself (not of the pipeline).
#[derive(Default, Debug, Clone, Copy, serde::Serialize)]
pub struct XskStats {
    pub rx: u64,
    pub tx: u64,
    pub tx_full: u64,
    pub no_free_chunk: u64,
    /// Multi-buffer frames too big for a big buffer, or received with none free: dropped.
    pub rx_too_big: u64,
    /// Frames of another port found in a batch when it ended (a caller swapped frames between
    /// two ports' batches): left alone, since they are not this port's to recycle.
    pub foreign: u64,
}

/// Frames a batch was asked to send on its port but could not (see [`RxBatch::finish`]).
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsent {
    pub frames: u64,
    pub bytes: u64,
}

/// Something that can queue a copy of a frame for TX on the uplink: the port, or a batch of it
/// while the batch holds the port.
pub trait TxCopy {
    /// Copies `frame` into a free chunk and queues it; false if there is no chunk for it.
    fn tx_copy(&mut self, frame: &[u8]) -> bool {
        self.tx_parts(&[frame])
    }
    /// Copies the frame made of `parts`, in order, into a free chunk (a chain of them on a
    /// multi-buffer port) and queues it; false, with nothing queued, if there are not enough
    /// free chunks or the frame does not fit one chunk of a single-buffer port. Software GSO
    /// sends each segment this way, its headers and its slice of the big frame's payload
    /// copied once.
    fn tx_parts(&mut self, parts: &[&[u8]]) -> bool;
}

/// Chunks queued for TX past which a copy flushes them to the ring mid-batch (a GSO frame
/// queues tens of segments at once).
const TX_FLUSH_AT: usize = 64;

/// One AF_XDP socket on one queue of the uplink.
pub type XskPort = Port<XskRings>;

/// A socket's rings and the chunk accounting around them (see the module docs).
pub struct Port<R: Rings> {
    rings: R,
    /// The UMEM's start, its size in chunks and theirs (from `rings`).
    base: NonNull<u8>,
    chunks: usize,
    chunk: usize,
    free: Vec<R::Desc>,
    rx_descs: Vec<R::Desc>,
    /// The frames of the batch under way (empty between batches).
    batch: Vec<Slot<R::Desc>>,
    tx_descs: Vec<R::Desc>,
    fill_back: Vec<R::Desc>,
    port: PortId,
    /// Descriptors on the TX ring not yet completed.
    in_flight: usize,
    /// Free chunks kept back from the fill ring.
    reserve: usize,
    pub stats: XskStats,
    pub mode: &'static str,
    /// Chunks allowed to wait on the TX ring (a frame each, or a chain of them).
    tx_queue: usize,
    /// Multi-buffer frames' buffers (an MTU above [`MAX_CHUNK_MTU`]).
    big: Option<BigFrames>,
}

/// The big buffers of a multi-buffer port: one per frame of a burst, plus one for a chain
/// still arriving.
///
/// A big buffer is in use only from the burst that gathers a frame into it to the end of that
/// batch (or, for the chain still arriving, to the burst that completes it).
struct BigFrames {
    /// Owns the buffers, and is not touched again once `base` is taken: a `&mut` to the whole
    /// Vec would invalidate the frames' pointers into it. Never reallocated or dropped while
    /// the port lives (the port sets `big` once, at open).
    _mem: Vec<u8>,
    base: NonNull<u8>,
    free: Vec<u16>,
    /// A chain whose end has not arrived yet: (its buffer, bytes so far, too big to keep).
    partial: Option<(Option<u16>, usize, bool)>,
}

/// Big buffers per multi-buffer port: a frame of every slot of a burst, and a chain arriving.
const BIG_FRAMES: usize = MAX_BURST + 1;

impl BigFrames {
    fn new() -> BigFrames {
        let mut mem = vec![0; BIG_FRAMES * BIG_FRAME];
        let base = NonNull::new(mem.as_mut_ptr()).expect("a Vec's buffer is not null");
        BigFrames { _mem: mem, base, free: (0..BIG_FRAMES as u16).rev().collect(), partial: None }
    }

    /// The start of buffer `i` (< [`BIG_FRAMES`]): `BIG_FRAME` bytes inside `_mem`.
    fn at(&self, i: u16) -> NonNull<u8> {
        assert!(usize::from(i) < BIG_FRAMES);
        // SAFETY: `i * BIG_FRAME` is inside the allocation of `BIG_FRAMES * BIG_FRAME` bytes.
        unsafe { self.base.add(usize::from(i) * BIG_FRAME) }
    }

    /// Which buffer `p` is the start of, if it is one of these.
    fn index(&self, p: NonNull<u8>) -> Option<u16> {
        let off = (p.as_ptr() as usize).wrapping_sub(self.base.as_ptr() as usize);
        (off < BIG_FRAMES * BIG_FRAME && off.is_multiple_of(BIG_FRAME)).then_some((off / BIG_FRAME) as u16)
    }

    /// At a batch's end every buffer is free but the arriving chain's: one that left with a
    /// frame swapped into another port's batch is taken back here (that batch has ended
    /// before this port can receive again: the swap ties both borrows together).
    fn reclaim(&mut self) {
        let held = self.partial.and_then(|p| p.0);
        if self.free.len() + usize::from(held.is_some()) != BIG_FRAMES {
            self.free.clear();
            self.free.extend((0..BIG_FRAMES as u16).rev().filter(|&i| Some(i) != held));
        }
    }
}

// SAFETY: `base` and the slots' chunk pointers point into the UMEM that `rings` owns and that
// moves with it, or (gathered frames, `big.base`) into the heap buffer of the port's own big
// buffers, which moves with it too; the port is used by one thread at a time (`&mut self`
// everywhere).
unsafe impl<R: Rings + Send> Send for Port<R> where R::Desc: Send {}

/// The frames of one receive burst, lent to the caller with the port borrowed: they cannot
/// outlive the UMEM, and when the batch ends, by [`RxBatch::finish`] or by being dropped,
/// every frame goes back to the fill ring or, if [`RxBatch::send`] marked it and the batch
/// finished, out on TX from its own chunk.
///
/// ```no_run
/// # use vrouter::port::afxdp::XskPort;
/// # use vrouter_core::dataplane::Frame;
/// fn echo(port: &mut XskPort) {
///     let mut batch = port.rx_burst(64);
///     for i in 0..batch.len() {
///         let (buf, head, _len) = batch.frames()[i].parts();
///         buf[*head] ^= 1;
///         batch.send(i);
///     }
///     batch.finish();
///     port.finish_batch();
/// }
/// ```
/// A frame cannot outlive its port's borrow:
/// ```compile_fail,E0505
/// # use vrouter::port::afxdp::XskPort;
/// fn escape(mut port: XskPort) {
///     let mut batch = port.rx_burst(64);
///     let frame = &mut batch.frames()[0];
///     drop(port); // error: `port` is borrowed by the batch
///     let _ = frame.len();
/// }
/// ```
/// nor be taken out of the batch (and so dropped, losing its chunk):
/// ```compile_fail,E0508
/// # use vrouter::port::afxdp::XskPort;
/// fn take_by_move(port: &mut XskPort) {
///     let mut batch = port.rx_burst(64);
///     let frame = batch.frames()[0]; // error: cannot move out of a slice
///     drop(frame);
/// }
/// ```
pub struct RxBatch<'port, R: Rings = XskRings> {
    port: &'port mut Port<R>,
}

impl<'port, R: Rings> RxBatch<'port, R> {
    pub fn len(&self) -> usize {
        self.port.batch.len()
    }
    pub fn is_empty(&self) -> bool {
        self.port.batch.is_empty()
    }

    /// The frames, in the order received.
    #[inline]
    pub fn frames(&mut self) -> &mut [XskFrame<'port, R::Desc>] {
        let slots = &mut self.port.batch[..];
        // SAFETY: `XskFrame` is `repr(transparent)` over `Slot` (its other field is a
        // zero-sized marker), so the two slices have the same layout; the returned borrow is
        // of `self`, and `'port` is the borrow of the port whose UMEM the chunks are in.
        unsafe { std::slice::from_raw_parts_mut(slots.as_mut_ptr().cast(), slots.len()) }
    }

    /// Marks frame `i` to leave on this port from its own chunk when the batch finishes.
    #[inline]
    pub fn send(&mut self, i: usize) {
        if let Some(s) = self.port.batch.get_mut(i) {
            s.send = true;
        }
    }

    /// Ends the batch: frames marked with [`RxBatch::send`] are queued for TX (in the order
    /// received, after any copies queued meanwhile), the rest go back to the fill ring. Returns
    /// the marked frames that could not be queued (grown past their chunk), whose chunks went
    /// back to the fill ring.
    pub fn finish(self) -> Unsent {
        self.port.end_batch(true)
    }
}

impl<R: Rings> TxCopy for RxBatch<'_, R> {
    #[inline]
    fn tx_parts(&mut self, parts: &[&[u8]]) -> bool {
        self.port.tx_parts(parts)
    }
}

impl<R: Rings> Drop for RxBatch<'_, R> {
    /// A batch not finished sends nothing: all its frames go back to the fill ring.
    fn drop(&mut self) {
        self.port.end_batch(false);
    }
}

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

fn build_umem(chunk: usize) -> io::Result<(Umem, Vec<FrameDesc>)> {
    let cfg = UmemConfig::builder()
        .frame_size(FrameSize::new(chunk as u32).expect("power of two >= 2048"))
        .fill_queue_size(QueueSize::new(RING).expect("power of two"))
        .comp_queue_size(QueueSize::new(RING).expect("power of two"))
        .frame_headroom(0)
        .build()
        .map_err(|e| io::Error::other(format!("UMEM config: {e}")))?;
    Umem::new(cfg, NonZeroU32::new(FRAMES).expect("non-zero"), false)
        .map_err(|e| io::Error::other(format!("UMEM: {e}")))
}

/// The rings of a bound AF_XDP socket and its UMEM.
pub struct XskRings {
    // Fields drop in order: the socket's queues before the UMEM they use.
    rx: RxQueue,
    tx: TxQueue,
    fq: FillQueue,
    cq: CompQueue,
    umem: Umem,
    base: NonNull<u8>,
    chunk: usize,
    /// Our XDP program, for a multi-buffer socket (libxdp's otherwise).
    _prog: Option<Arc<XskProgram>>,
}

// SAFETY: `base` points into the mapping owned by `umem`, which moves with it.
unsafe impl Send for XskRings {}

// SAFETY: the queues were created with `umem` for one socket (`XskPort::open`), so the kernel
// hands back on RX only chunks of this UMEM that were on its fill ring, and on completion only
// chunks that were on its TX ring; `base` is the start of the mapping of FRAMES chunks of
// `chunk` bytes (the UMEM's frame size), which lives as long as `umem`.
unsafe impl Rings for XskRings {
    type Desc = FrameDesc;
    #[inline]
    fn addr(d: &FrameDesc) -> usize {
        d.addr()
    }
    #[inline]
    fn data_len(d: &FrameDesc) -> usize {
        d.lengths().data()
    }
    #[inline]
    fn more(d: &FrameDesc) -> bool {
        d.options() & XDP_PKT_CONTD != 0
    }
    #[inline]
    fn set_more(d: &mut FrameDesc, more: bool) {
        d.set_options(if more { XDP_PKT_CONTD } else { 0 });
    }
    #[inline]
    unsafe fn set_data_len(&mut self, d: &mut FrameDesc, len: usize) {
        // SAFETY: the caller owns the chunk, so nothing else refers to its data segment.
        unsafe { self.umem.data_mut(d) }.cursor().set_pos(len);
    }
    fn umem(&mut self) -> (NonNull<u8>, usize, usize) {
        (self.base, FRAMES as usize, self.chunk)
    }
    #[inline]
    fn rx_consume(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: the RX ring is this UMEM's (see the impl's comment).
        unsafe { self.rx.consume(out) }
    }
    #[inline]
    fn fill_room(&mut self, want: usize) -> usize {
        self.fq.nb_free(want as u32) as usize
    }
    #[inline]
    unsafe fn fill_produce(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: the caller owns these chunks and gives them up.
        unsafe { self.fq.produce(descs) }
    }
    #[inline]
    fn tx_room(&mut self, want: usize) -> usize {
        self.tx.nb_free(want as u32) as usize
    }
    #[inline]
    unsafe fn tx_produce(&mut self, descs: &[FrameDesc]) -> usize {
        // SAFETY: the caller owns these chunks, filled in, and gives them up.
        unsafe { self.tx.produce(descs) }
    }
    #[inline]
    fn tx_kick(&mut self) {
        // A wakeup error must not make us think the descriptors were not queued (they are on
        // the ring and will complete).
        if self.tx.needs_wakeup() {
            let _ = self.tx.wakeup();
        }
    }
    #[inline]
    fn comp_consume(&mut self, out: &mut [FrameDesc]) -> usize {
        // SAFETY: the completion ring is this UMEM's (see the impl's comment).
        unsafe { self.cq.consume(out) }
    }
}

impl Port<XskRings> {
    /// Binds queue `queue` of `dev`. `XdpMode::Auto` tries native XDP and falls back to
    /// generic mode; `BindMode::Auto` tries zero-copy (native mode only: generic XDP copies
    /// every frame) and falls back to copy mode; both fallbacks are logged with the kernel's
    /// reason. A failed bind leaves the UMEM busy for a moment, so each try uses a new one.
    /// The UMEM's chunks hold a frame of `mtu` ([`chunk_size`]).
    pub fn open(dev: &str, queue: u32, mode: XdpMode, bind: BindMode, mtu: u16, port: PortId) -> io::Result<XskPort> {
        let chunk = chunk_size(mtu);
        let multi = multi_buffer(mtu);
        let (native, generic) = match mode {
            XdpMode::Auto => (true, true),
            XdpMode::Native => (true, false),
            XdpMode::Generic => (false, true),
        };
        let (zc, copy) = (bind != BindMode::Copy, bind != BindMode::ZeroCopy);
        // (XDP attach mode, zero-copy) in the order tried.
        let tries = [("native", true), ("native", false), ("generic", false)]
            .into_iter()
            .filter(|&(m, z)| (if m == "native" { native } else { generic }) && (if z { zc } else { copy }))
            .collect::<Vec<_>>();
        if tries.is_empty() {
            return Err(io::Error::other(format!(
                "{dev} queue {queue}: zero-copy needs native XDP (generic XDP copies every frame); set [uplink] xdp_mode = \"native\" or \"auto\", or bind = \"copy\""
            )));
        }
        let iface: Interface = dev.parse().map_err(|_| io::Error::other(format!("bad interface name {dev}")))?;
        let mut last = String::new();
        let mut zc_refused = None;
        for (name, zero_copy) in tries {
            let flags = if name == "native" { XdpFlags::XDP_FLAGS_DRV_MODE } else { XdpFlags::XDP_FLAGS_SKB_MODE };
            let mut bind_flags = if zero_copy { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
            // Multi-buffer: our frags-aware program, attached before the socket binds.
            let prog = if multi {
                bind_flags |= BindFlags::XDP_USE_SG;
                let mode = if name == "native" { AttachMode::Native } else { AttachMode::Generic };
                match XskProgram::shared(dev, mode) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                }
            } else {
                None
            };
            let libxdp_flags =
                if multi { LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD } else { LibxdpFlags::empty() };
            for attempt in 0..5 {
                let (umem, descs) = build_umem(chunk)?;
                let cfg = SocketConfig::builder()
                    .rx_queue_size(QueueSize::new(RING).expect("power of two"))
                    .tx_queue_size(QueueSize::new(RING).expect("power of two"))
                    .xdp_flags(flags)
                    .bind_flags(bind_flags | BindFlags::XDP_USE_NEED_WAKEUP)
                    .libxdp_flags(libxdp_flags)
                    .build();
                // SAFETY: the UMEM outlives the sockets: both are owned by the returned port's
                // rings, and the queues are dropped before the UMEM (field order).
                match unsafe { xsk_rs::Socket::new(cfg, &umem, &iface, queue) } {
                    Ok((tx, rx, Some((fq, cq)))) => {
                        if name == "generic" && mode == XdpMode::Auto {
                            warn!(dev, queue, "native XDP unavailable; using generic (SKB) mode");
                        }
                        if let Some(why) = zc_refused.as_ref().filter(|_| !zero_copy) {
                            info!(dev, queue, "zero-copy AF_XDP unavailable ({why}); using copy mode");
                        }
                        if let Some(p) = &prog {
                            p.bind(queue, rx.fd().as_raw_fd())?;
                        }
                        let base = umem_base(&umem, &descs);
                        let rings = XskRings { rx, tx, fq, cq, umem, base, chunk, _prog: prog };
                        let mut port = Port::start(rings, descs, RING as usize, FREE_RESERVE, port, name);
                        if multi {
                            port.enable_multi_buffer();
                        }
                        info!(
                            dev,
                            queue,
                            mode = name,
                            zero_copy = port.zero_copy(),
                            chunk,
                            multi_buffer = multi,
                            "AF_XDP socket bound"
                        );
                        return Ok(port);
                    }
                    Ok(_) => {
                        return Err(io::Error::other(format!("{dev} queue {queue}: already bound by this process")))
                    }
                    Err(e) => {
                        let os = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<io::Error>());
                        let busy = os.and_then(|e| e.raw_os_error()) == Some(libc::EBUSY);
                        last = format!(
                            "{e} ({})",
                            std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
                        );
                        if busy && attempt < 4 {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        if zero_copy && zc_refused.is_none() {
                            zc_refused = Some(os.map(|e| e.to_string()).unwrap_or_else(|| last.clone()));
                        }
                        break;
                    }
                }
            }
        }
        if bind == BindMode::ZeroCopy {
            return Err(io::Error::other(format!(
                "{dev} queue {queue}: the driver refused a zero-copy AF_XDP socket ({}); set [uplink] bind = \"auto\" (falls back to copy mode) or \"copy\"",
                zc_refused.unwrap_or(last)
            )));
        }
        let hint = if multi {
            format!(" (an uplink MTU above {MAX_CHUNK_MTU} needs multi-buffer AF_XDP: kernel 6.6 or later, and a driver that takes XDP_USE_SG)")
        } else {
            String::new()
        };
        Err(io::Error::other(format!("{dev} queue {queue}: cannot bind AF_XDP socket: {last}{hint}")))
    }

    /// The kernel's drop counts for this socket since it was opened: (RX ring full, other RX
    /// drops such as an empty fill ring). `None` when the kernel does not say.
    pub fn kernel_drops(&self) -> Option<(u64, u64)> {
        let s = self.rings.rx.fd().xdp_statistics().ok()?;
        Some((s.rx_ring_full(), s.rx_dropped()))
    }

    /// The kernel's view of the socket (drops, empty fill ring, invalid descriptors), as text.
    pub fn kernel_stats(&self) -> String {
        match self.rings.rx.fd().xdp_statistics() {
            Ok(s) => format!("{s:?}"),
            Err(e) => format!("unavailable: {e}"),
        }
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
        self.rings.rx.fd().as_raw_fd()
    }
}

/// The start of the UMEM mapping, from its first descriptor (whose address is its offset).
fn umem_base(umem: &Umem, descs: &[FrameDesc]) -> NonNull<u8> {
    let mut d0 = descs[0];
    // SAFETY: d0 is a fresh descriptor of this UMEM, in no ring; we only take the pointer.
    let data0 = unsafe { umem.data_mut(&mut d0) }.contents_mut().as_mut_ptr();
    // SAFETY: the descriptor's address is its offset in the mapping, so this is its start.
    let base = unsafe { data0.sub(descs[0].addr()) };
    NonNull::new(base).expect("the UMEM mapping is not at address 0")
}

impl<R: Rings> Port<R> {
    /// Takes over `rings` and the UMEM's descriptors `descs` (all in no ring): `fill` of them
    /// go to the fill ring, the rest to the free list, of which `reserve` are kept back for
    /// copies from other ports.
    fn start(
        mut rings: R,
        mut descs: Vec<R::Desc>,
        fill: usize,
        reserve: usize,
        port: PortId,
        mode: &'static str,
    ) -> Self {
        let (base, chunks, chunk) = rings.umem();
        assert!(chunk.is_power_of_two(), "UMEM chunks are a power of two");
        let fill = fill.min(descs.len()).min(rings.fill_room(fill));
        // SAFETY: these descriptors are ours and in no ring; those taken leave the list below.
        let n = unsafe { rings.fill_produce(&descs[..fill]) };
        descs.drain(..n);
        let mut free = Vec::with_capacity(chunks);
        free.extend_from_slice(&descs);
        Port {
            rings,
            base,
            chunks,
            chunk,
            free,
            rx_descs: vec![R::Desc::default(); MAX_BURST],
            batch: Vec::with_capacity(MAX_BURST),
            tx_descs: Vec::with_capacity(chunks),
            fill_back: Vec::with_capacity(chunks),
            port,
            in_flight: 0,
            reserve,
            stats: XskStats::default(),
            mode,
            tx_queue: DEFAULT_TX_QUEUE,
            big: None,
        }
    }

    /// Takes frames that span chains of chunks (the socket was bound with `XDP_USE_SG`).
    fn enable_multi_buffer(&mut self) {
        self.big = Some(BigFrames::new());
    }

    /// Whether this port gathers and scatters multi-buffer frames.
    pub fn is_multi_buffer(&self) -> bool {
        self.big.is_some()
    }

    /// Where the chunks are: free list, waiting to return to the fill ring, on the TX ring.
    pub fn chunk_census(&self) -> (usize, usize, usize) {
        (self.free.len(), self.fill_back.len(), self.in_flight)
    }

    /// How many chunks may wait on the TX ring (clamped to 32..=the ring's size; a frame
    /// takes one, a multi-buffer frame one per 4 KiB): fewer means less delay when the device
    /// drains slowly, more absorbs longer stalls.
    pub fn set_tx_queue(&mut self, chunks: usize) {
        self.tx_queue = chunks.clamp(32, TX_RING);
    }

    /// Receives up to `max` frames (at most [`MAX_BURST`]). Non-blocking; the batch may be
    /// empty.
    pub fn rx_burst(&mut self, max: usize) -> RxBatch<'_, R> {
        debug_assert!(self.batch.is_empty(), "a batch ends before the next begins");
        let max = max.min(self.rx_descs.len());
        let n = self.rings.rx_consume(&mut self.rx_descs[..max]);
        let before = self.batch.len();
        for i in 0..n {
            let d = &self.rx_descs[i];
            if let Some(big) = self.big.as_mut().filter(|b| R::more(d) || b.partial.is_some()) {
                let d = *d;
                if let Some(s) = gather::<R>(big, &mut self.stats, self.base, d, self.port) {
                    self.batch.push(s);
                }
                self.fill_back.push(d);
                continue;
            }
            let addr = R::addr(d);
            let off = addr & (self.chunk - 1);
            // SAFETY: by the `Rings` contract a received descriptor's address is inside the
            // UMEM, so the chunk boundary at or below it is too.
            let chunk = unsafe { self.base.add(addr - off) };
            let (size, len, port) = (self.chunk, R::data_len(d), self.port);
            self.batch.push(Slot { desc: *d, chunk, size, head: off, len, port, send: false });
        }
        self.stats.rx += (self.batch.len() - before) as u64;
        RxBatch { port: self }
    }

    /// Whether `s` is one of this port's chunks (not one swapped in from another port's batch).
    #[inline]
    fn owns(&self, s: &Slot<R::Desc>) -> bool {
        let at = R::addr(&s.desc) & !(self.chunk - 1);
        at < self.chunks * self.chunk && self.base.as_ptr().wrapping_add(at) == s.chunk.as_ptr()
    }

    /// Ends the batch under way: with `send`, marked frames are queued for TX; everything else
    /// goes back to the fill ring. Returns the marked frames that could not be queued.
    fn end_batch(&mut self, send: bool) -> Unsent {
        let mut unsent = Unsent::default();
        let mut batch = std::mem::take(&mut self.batch);
        for s in batch.drain(..) {
            if let Some(i) = self.big_slot(&s) {
                if send && s.send && !self.tx_big(i, s.head, s.len) {
                    unsent.frames += 1;
                    unsent.bytes += s.len as u64;
                }
                self.big.as_mut().expect("a big slot has big buffers").free.push(i);
                continue;
            }
            if !self.owns(&s) {
                self.stats.foreign += 1;
                continue;
            }
            if send && s.send {
                let len = s.len;
                if !self.tx_own(s) {
                    unsent.frames += 1;
                    unsent.bytes += len as u64;
                }
            } else {
                self.fill_back.push(s.desc);
            }
        }
        self.batch = batch;
        if let Some(big) = &mut self.big {
            big.reclaim();
        }
        unsent
    }

    /// The big buffer `s` was gathered into, if it is one of this port's.
    fn big_slot(&self, s: &Slot<R::Desc>) -> Option<u16> {
        self.big.as_ref()?.index(s.chunk)
    }

    /// Scatters the frame at `head..head + len` of big buffer `i` into a chain of chunks.
    fn tx_big(&mut self, i: u16, head: usize, len: usize) -> bool {
        let Some(big) = &self.big else { return false };
        if head + len > BIG_FRAME {
            return false;
        }
        // SAFETY: `head..head + len` is inside buffer `i` (checked), which the ended batch's
        // frame held and nothing else refers to now; it stays allocated while the port lives.
        let frame = unsafe { std::slice::from_raw_parts(big.at(i).as_ptr().add(head), len) };
        self.tx_chain(&[frame], true)
    }

    /// Queues the frame made of `parts` for TX: in one free chunk, or with `chain` (a
    /// multi-buffer port) in as many as it takes. Queues nothing (false) if the free chunks
    /// run out, or if the frame does not fit one chunk and may not be chained.
    fn tx_chain(&mut self, parts: &[&[u8]], chain: bool) -> bool {
        let start = self.tx_descs.len();
        let (mut part, mut at) = (0, 0);
        loop {
            if self.free.is_empty() {
                self.reap();
            }
            let Some(mut d) = self.free.pop() else {
                self.free.extend(self.tx_descs.drain(start..));
                self.stats.no_free_chunk += 1;
                return false;
            };
            let addr = R::addr(&d);
            let room = self.chunk - (addr & (self.chunk - 1));
            if !chain && parts.iter().map(|p| p.len()).sum::<usize>() > room {
                self.free.push(d);
                return false;
            }
            // SAFETY: `d` came off the free list, so its chunk is ours and in no ring, and
            // `addr..addr + room` runs to the end of that chunk, inside the UMEM.
            let out = unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(addr), room) };
            let mut len = 0;
            while len < room && part < parts.len() {
                let from = &parts[part][at..];
                let n = from.len().min(room - len);
                out[len..len + n].copy_from_slice(&from[..n]);
                (len, at) = (len + n, at + n);
                if at == parts[part].len() {
                    (part, at) = (part + 1, 0);
                }
            }
            // Empty parts left at the end add nothing: they must not continue the chain.
            while part < parts.len() && at == parts[part].len() {
                (part, at) = (part + 1, 0);
            }
            // SAFETY: as above, the chunk is ours until it goes on the TX ring.
            unsafe { self.rings.set_data_len(&mut d, len) };
            let more = part < parts.len();
            R::set_more(&mut d, more);
            self.tx_descs.push(d);
            if !more {
                return true;
            }
        }
    }

    /// Queues a received frame for TX from its own chunk: no copy unless its start moved. False
    /// if it cannot be sent (it grew past its chunk): the chunk goes back to the fill ring.
    #[inline]
    fn tx_own(&mut self, mut s: Slot<R::Desc>) -> bool {
        let off = R::addr(&s.desc) & (self.chunk - 1);
        if s.head != off {
            if off + s.len > self.chunk {
                // Grown past its chunk (IPIP on a frame that filled one): a multi-buffer port
                // chains it (a copy; the chunk then goes back to the fill ring); otherwise it
                // cannot leave.
                let sent = self.big.is_some() && s.head + s.len <= self.chunk && {
                    // SAFETY: the slot's chunk is this port's (checked by `owns`), off every
                    // ring, and `head..head + len` is inside it; nothing else borrows it now,
                    // and it goes back to the fill side only below, after the copy.
                    let frame = unsafe { std::slice::from_raw_parts(s.chunk.as_ptr().add(s.head), s.len) };
                    self.tx_chain(&[frame], true)
                };
                self.fill_back.push(s.desc);
                if !sent && self.big.is_none() {
                    self.stats.tx_full += 1; // (a failed chain counted itself: no_free_chunk)
                }
                return sent;
            }
            // SAFETY: the slot's chunk is `self.chunk` bytes of this port's UMEM (checked by
            // `owns`), owned by the slot (off the RX ring, in no ring), and nothing else
            // borrows it now that its batch has ended.
            let buf = unsafe { std::slice::from_raw_parts_mut(s.chunk.as_ptr(), self.chunk) };
            buf.copy_within(s.head..s.head + s.len, off);
        }
        // SAFETY: the chunk is ours (see above) until it goes on the TX ring.
        unsafe { self.rings.set_data_len(&mut s.desc, s.len) };
        self.tx_descs.push(s.desc);
        true
    }

    /// Flushes queued TX (with the wakeup copy mode needs), returns unsent RX chunks to the
    /// fill ring, reaps completions and tops the fill ring up. Returns the frames dropped
    /// because the TX ring had no room, and their bytes (counted by the caller as `tx/full`,
    /// and taken back from what the port sent).
    ///
    /// At most `tx_queue` chunks ([`Port::set_tx_queue`]) wait on the TX ring: when the
    /// device drains slower than we forward, a deeper queue only adds delay (2,048 frames are
    /// milliseconds), so the excess is dropped here, where it is counted, instead of queued.
    pub fn finish_batch(&mut self) -> (usize, usize) {
        let (mut dropped, mut dropped_bytes) = (0, 0);
        if !self.tx_descs.is_empty() {
            self.produce_tx();
            // What the ring had no room for goes back to the fill ring.
            dropped = self.tx_descs.iter().filter(|d| !R::more(d)).count();
            dropped_bytes = self.tx_descs.iter().map(R::data_len).sum();
            self.stats.tx_full += dropped as u64;
            self.fill_back.extend_from_slice(&self.tx_descs);
            self.tx_descs.clear();
        }
        self.reap();
        self.drain_tx();
        self.refill();
        (dropped, dropped_bytes)
    }

    /// In copy mode the kernel transmits at most 32 descriptors per wakeup (sendto), so kick
    /// until the ring drains or stops moving; otherwise chunks pile up on the TX ring and the
    /// free list runs dry.
    fn drain_tx(&mut self) {
        for _ in 0..64 {
            if self.in_flight == 0 {
                break;
            }
            self.rings.tx_kick();
            let before = self.in_flight;
            self.reap();
            if self.in_flight == before {
                break;
            }
        }
    }

    /// Puts as much of the queued TX on the ring as it has room for (and at most `tx_queue`
    /// in flight), then wakes the kernel; what the ring took leaves the queue. Returns how
    /// many it took.
    fn produce_tx(&mut self) -> usize {
        self.reap();
        let n = self.tx_descs.len();
        let mut room = self.rings.tx_room(n).min(n).min(self.tx_queue.saturating_sub(self.in_flight));
        // Never half a chain: the kernel would join its rest to whatever comes next.
        while room > 0 && R::more(&self.tx_descs[room - 1]) {
            room -= 1;
        }
        // SAFETY: every queued descriptor is ours and filled in; those the ring takes (a
        // prefix) are counted in flight and leave the queue.
        let sent = if room > 0 { unsafe { self.rings.tx_produce(&self.tx_descs[..room]) } } else { 0 };
        debug_assert!(sent == 0 || !R::more(&self.tx_descs[sent - 1]), "the TX ring took part of a chain");
        // Produce, then wake.
        if sent > 0 {
            self.rings.tx_kick();
        }
        self.stats.tx += self.tx_descs[..sent].iter().filter(|d| !R::more(d)).count() as u64;
        self.in_flight += sent;
        self.tx_descs.drain(..sent);
        sent
    }

    /// Puts queued copies on the TX ring now, mid-batch, as far as it has room (nothing is
    /// dropped: what does not fit stays queued for [`Port::finish_batch`]), and drains it.
    fn flush_tx(&mut self) {
        if self.produce_tx() > 0 {
            self.drain_tx();
        }
    }

    /// Returns RX chunks to the fill ring (as many as fit now: offer exactly what fits, or
    /// chunks would pile up here and RX would starve), then tops the ring up from the free
    /// list, keeping a reserve there for copies from other ports.
    fn refill(&mut self) {
        give_to_fill(&mut self.rings, &mut self.fill_back, 0);
        give_to_fill(&mut self.rings, &mut self.free, self.reserve);
    }

    /// Moves completed TX chunks to the free list.
    fn reap(&mut self) {
        let mut done = [R::Desc::default(); 64];
        loop {
            let n = self.rings.comp_consume(&mut done);
            self.free.extend_from_slice(&done[..n]);
            self.in_flight = self.in_flight.saturating_sub(n);
            if n < done.len() {
                break;
            }
        }
    }
}

/// Adds chunk `d` of a received chain to its big buffer; returns the frame's slot when `d`
/// ends it. The chunk itself is the caller's to give back. A chain with no free buffer, or
/// longer than one, is counted (`rx_too_big`) and dropped.
fn gather<R: Rings>(
    big: &mut BigFrames,
    stats: &mut XskStats,
    base: NonNull<u8>,
    d: R::Desc,
    port: PortId,
) -> Option<Slot<R::Desc>> {
    let (slot, at, mut over) = big.partial.take().unwrap_or_else(|| {
        let slot = big.free.pop();
        (slot, 0, slot.is_none())
    });
    let len = R::data_len(&d);
    match slot {
        Some(i) if !over && XDP_HEADROOM + at + len <= BIG_FRAME => {
            // SAFETY: a received descriptor's data is inside the UMEM (the `Rings` contract) and
            // the caller owns its chunk until it gives it back; the destination range is inside
            // buffer `i` (checked above), which no frame refers to yet.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    base.as_ptr().add(R::addr(&d)),
                    big.at(i).as_ptr().add(XDP_HEADROOM + at),
                    len,
                )
            };
        }
        _ => over = true,
    }
    if R::more(&d) {
        big.partial = Some((slot, at + len, over));
        return None;
    }
    match slot {
        Some(i) if !over => {
            let chunk = big.at(i);
            Some(Slot {
                desc: R::Desc::default(),
                chunk,
                size: BIG_FRAME,
                head: XDP_HEADROOM,
                len: at + len,
                port,
                send: false,
            })
        }
        _ => {
            big.free.extend(slot);
            stats.rx_too_big += 1;
            None
        }
    }
}

/// Moves chunks from the end of `list` to the fill ring, as many as fit, leaving `keep`.
fn give_to_fill<R: Rings>(rings: &mut R, list: &mut Vec<R::Desc>, keep: usize) {
    let spare = list.len().saturating_sub(keep);
    if spare == 0 {
        return;
    }
    let room = rings.fill_room(spare).min(spare);
    if room > 0 {
        let at = list.len() - room;
        // SAFETY: the chunks on our lists are ours and in no ring; those taken (a prefix of
        // what is offered) leave the list here.
        let n = unsafe { rings.fill_produce(&list[at..]) };
        list.drain(at..at + n);
    }
}

impl<R: Rings> TxCopy for Port<R> {
    fn tx_parts(&mut self, parts: &[&[u8]]) -> bool {
        if self.tx_descs.len() >= TX_FLUSH_AT {
            self.flush_tx();
        }
        self.tx_chain(parts, self.big.is_some())
    }
}

#[cfg(test)]
mod tests {
    //! The chunk accounting against fake rings: after every operation each chunk is in exactly
    //! one place and the counts balance.
    use std::collections::VecDeque;

    use super::*;

    const CHUNKS: usize = 16;
    /// The fake UMEM's chunk size (the default one).
    const FRAME_SIZE: usize = 2048;

    #[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
    struct Desc {
        addr: usize,
        len: usize,
        more: bool,
    }

    /// Rings over plain memory; the test plays the kernel (`receive`, `transmit`).
    struct FakeRings {
        mem: Vec<u8>,
        fill: VecDeque<Desc>,
        rx: VecDeque<Desc>,
        tx: VecDeque<Desc>,
        comp: VecDeque<Desc>,
        /// Ring sizes (fill, TX).
        fill_cap: usize,
        tx_cap: usize,
        /// Takes at most this many descriptors per produce, whatever room it reported.
        accept: usize,
        kicks: usize,
    }

    impl FakeRings {
        fn new(fill_cap: usize, tx_cap: usize) -> (FakeRings, Vec<Desc>) {
            let rings = FakeRings {
                mem: vec![0; CHUNKS * FRAME_SIZE],
                fill: VecDeque::new(),
                rx: VecDeque::new(),
                tx: VecDeque::new(),
                comp: VecDeque::new(),
                fill_cap,
                tx_cap,
                accept: usize::MAX,
                kicks: 0,
            };
            let descs =
                (0..CHUNKS).map(|i| Desc { addr: i * FRAME_SIZE + XDP_HEADROOM, len: 0, more: false }).collect();
            (rings, descs)
        }

        /// The kernel receives `frames` into chunks from the fill ring (as many as it has).
        fn receive(&mut self, frames: &[&[u8]]) -> usize {
            let mut n = 0;
            for f in frames {
                let Some(d) = self.fill.pop_front() else { break };
                let addr = (d.addr & !(FRAME_SIZE - 1)) + XDP_HEADROOM;
                self.mem[addr..addr + f.len()].copy_from_slice(f);
                self.rx.push_back(Desc { addr, len: f.len(), more: false });
                n += 1;
            }
            n
        }

        /// The kernel receives `frame` as a chain over chunks from the fill ring (multi-buffer);
        /// false (nothing received) if the fill ring has too few.
        fn receive_chain(&mut self, frame: &[u8]) -> bool {
            let pieces: Vec<&[u8]> = frame.chunks(FRAME_SIZE - XDP_HEADROOM).collect();
            if self.fill.len() < pieces.len() {
                return false;
            }
            for (i, piece) in pieces.iter().enumerate() {
                let d = self.fill.pop_front().unwrap();
                let addr = (d.addr & !(FRAME_SIZE - 1)) + XDP_HEADROOM;
                self.mem[addr..addr + piece.len()].copy_from_slice(piece);
                self.rx.push_back(Desc { addr, len: piece.len(), more: i + 1 < pieces.len() });
            }
            true
        }

        /// As [`FakeRings::transmit`], joining chains: returns whole frames and their pieces.
        fn transmit_frames(&mut self) -> Vec<(Vec<u8>, usize)> {
            let mut sent = vec![];
            let mut cur: Option<(Vec<u8>, usize)> = None;
            while let Some(d) = self.tx.pop_front() {
                let f = cur.get_or_insert_with(|| (vec![], 0));
                f.0.extend_from_slice(&self.mem[d.addr..d.addr + d.len]);
                f.1 += 1;
                self.comp.push_back(Desc { more: false, ..d });
                if !d.more {
                    sent.extend(cur.take());
                }
            }
            assert!(cur.is_none(), "a chain left half on the TX ring");
            sent
        }

        /// The kernel sends `n` frames off the TX ring and completes them; returns what it sent.
        fn transmit(&mut self, n: usize) -> Vec<Vec<u8>> {
            let mut sent = vec![];
            for _ in 0..n {
                let Some(d) = self.tx.pop_front() else { break };
                sent.push(self.mem[d.addr..d.addr + d.len].to_vec());
                self.comp.push_back(d);
            }
            sent
        }
    }

    fn produce(ring: &mut VecDeque<Desc>, cap: usize, accept: usize, descs: &[Desc]) -> usize {
        let n = descs.len().min(cap - ring.len()).min(accept);
        ring.extend(&descs[..n]);
        n
    }

    fn consume(ring: &mut VecDeque<Desc>, out: &mut [Desc]) -> usize {
        let n = out.len().min(ring.len());
        for o in &mut out[..n] {
            *o = ring.pop_front().unwrap();
        }
        n
    }

    // SAFETY: `mem` is CHUNKS * FRAME_SIZE bytes that move with the rings (a Vec's heap buffer
    // does not move with it), and the fake kernel hands back only what was produced to it.
    unsafe impl Rings for FakeRings {
        type Desc = Desc;
        fn addr(d: &Desc) -> usize {
            d.addr
        }
        fn data_len(d: &Desc) -> usize {
            d.len
        }
        fn more(d: &Desc) -> bool {
            d.more
        }
        fn set_more(d: &mut Desc, more: bool) {
            d.more = more;
        }
        unsafe fn set_data_len(&mut self, d: &mut Desc, len: usize) {
            d.len = len;
        }
        fn umem(&mut self) -> (NonNull<u8>, usize, usize) {
            (NonNull::new(self.mem.as_mut_ptr()).unwrap(), CHUNKS, FRAME_SIZE)
        }
        fn rx_consume(&mut self, out: &mut [Desc]) -> usize {
            consume(&mut self.rx, out)
        }
        fn fill_room(&mut self, _want: usize) -> usize {
            self.fill_cap - self.fill.len()
        }
        unsafe fn fill_produce(&mut self, descs: &[Desc]) -> usize {
            produce(&mut self.fill, self.fill_cap, self.accept, descs)
        }
        fn tx_room(&mut self, _want: usize) -> usize {
            self.tx_cap - self.tx.len()
        }
        unsafe fn tx_produce(&mut self, descs: &[Desc]) -> usize {
            produce(&mut self.tx, self.tx_cap, self.accept, descs)
        }
        fn tx_kick(&mut self) {
            self.kicks += 1;
        }
        fn comp_consume(&mut self, out: &mut [Desc]) -> usize {
            consume(&mut self.comp, out)
        }
    }

    fn port(fill_cap: usize, tx_cap: usize, reserve: usize) -> Port<FakeRings> {
        let (rings, descs) = FakeRings::new(fill_cap, tx_cap);
        Port::start(rings, descs, fill_cap, reserve, 0, "fake")
    }

    /// Where each chunk is; panics unless every chunk is in exactly one place and the port's
    /// in-flight count is what the TX and completion rings hold. Returns the count per place:
    /// free, fill_back, queued for TX, fill ring, RX ring, TX ring, completion ring.
    fn census(p: &Port<FakeRings>) -> [usize; 7] {
        let r = &p.rings;
        let places: [(&str, Vec<Desc>); 7] = [
            ("free", p.free.clone()),
            ("fill_back", p.fill_back.clone()),
            ("tx queue", p.tx_descs.clone()),
            ("fill ring", r.fill.iter().copied().collect()),
            ("rx ring", r.rx.iter().copied().collect()),
            ("tx ring", r.tx.iter().copied().collect()),
            ("completion ring", r.comp.iter().copied().collect()),
        ];
        let mut seen = [None; CHUNKS];
        for (name, descs) in &places {
            for d in descs {
                let c = d.addr / FRAME_SIZE;
                assert!(seen[c].is_none(), "chunk {c} is in {name} and in {}", seen[c].unwrap());
                seen[c] = Some(*name);
            }
        }
        let missing: Vec<usize> = (0..CHUNKS).filter(|&c| seen[c].is_none()).collect();
        assert!(missing.is_empty(), "chunks {missing:?} are nowhere");
        assert_eq!(p.in_flight, r.tx.len() + r.comp.len(), "in flight = on the TX ring + completed, not reaped");
        places.map(|(_, d)| d.len())
    }

    /// As [`census`] with a batch under way: its frames count as one more place.
    fn census_with_batch(b: &RxBatch<'_, FakeRings>) {
        let p = &*b.port;
        let mut seen = vec![0; CHUNKS];
        for s in &p.batch {
            seen[s.desc.addr / FRAME_SIZE] += 1;
        }
        let r = &p.rings;
        for d in
            p.free.iter().chain(&p.fill_back).chain(&p.tx_descs).chain(&r.fill).chain(&r.rx).chain(&r.tx).chain(&r.comp)
        {
            seen[d.addr / FRAME_SIZE] += 1;
        }
        assert!(seen.iter().all(|&n| n == 1), "chunks with the count of places they are in: {seen:?}");
    }

    fn frame(tag: u8, len: usize) -> Vec<u8> {
        vec![tag; len]
    }

    #[test]
    fn chunks_balance_through_receive_forward_tx_and_completion() {
        let mut p = port(8, 8, 2);
        assert_eq!(census(&p), [8, 0, 0, 8, 0, 0, 0]);
        let frames: Vec<Vec<u8>> = (0..5).map(|i| frame(i, 60)).collect();
        assert_eq!(p.rings.receive(&frames.iter().map(|f| &f[..]).collect::<Vec<_>>()), 5);
        assert_eq!(census(&p), [8, 0, 0, 3, 5, 0, 0]);

        let mut b = p.rx_burst(MAX_BURST);
        assert_eq!(b.len(), 5);
        census_with_batch(&b);
        // The pipeline: frame 0 forwarded as is, frame 2 encapsulated (its start moves 20
        // bytes into the headroom), frame 4 sent and then its mark repeated; 1 and 3 dropped.
        {
            let fs = b.frames();
            let (buf, head, len) = fs[2].parts();
            *head -= 20;
            *len += 20;
            buf[*head..*head + 20].fill(0xee);
        }
        b.send(0);
        b.send(2);
        b.send(4);
        b.send(4);
        b.send(99); // no such frame: ignored
        assert!(b.tx_copy(&frame(9, 42)), "a copy from another port, queued first");
        census_with_batch(&b);
        assert_eq!(b.finish(), Unsent::default());
        assert_eq!(census(&p), [7, 2, 4, 3, 0, 0, 0]);

        assert_eq!(p.finish_batch(), (0, 0));
        // 4 on the TX ring; the 2 recycled chunks and the free list above the reserve of 2
        // refill the fill ring up to its 8 slots.
        let c = census(&p);
        assert_eq!((c[2], c[5], c[3]), (0, 4, 8), "{c:?}");
        assert_eq!((p.stats.rx, p.stats.tx), (5, 4));
        assert!(p.rings.kicks > 0);

        let sent = p.rings.transmit(4);
        assert_eq!(sent[0], frame(9, 42));
        assert_eq!(sent[1], frame(0, 60));
        let mut encapsulated = vec![0xee; 20];
        encapsulated.extend(frame(2, 60));
        assert_eq!(sent[2], encapsulated, "slid back to the descriptor's address, whole");
        assert_eq!(sent[3], frame(4, 60), "sent once");
        census(&p);
        p.finish_batch();
        let c = census(&p);
        assert_eq!((c[5], c[6], p.in_flight), (0, 0, 0), "completions reaped: {c:?}");
    }

    #[test]
    fn partial_produce_keeps_every_chunk_in_one_place() {
        let mut p = port(8, 8, 2);
        p.rings.accept = 1;
        let f = frame(1, 100);
        for round in 0..6 {
            let got = p.rings.receive(&[&f, &f, &f]);
            census(&p);
            let mut b = p.rx_burst(MAX_BURST);
            assert_eq!(b.len(), got);
            for i in 0..got {
                b.send(i);
            }
            census_with_batch(&b);
            b.finish();
            census(&p);
            // The TX ring takes one of what is offered: the rest are dropped (counted) and
            // their chunks go back towards the fill ring, which also takes one at a time.
            let (dropped, bytes) = p.finish_batch();
            assert_eq!((dropped, bytes), (got.saturating_sub(1), got.saturating_sub(1) * 100), "round {round}");
            census(&p);
            p.rings.transmit(usize::MAX);
            census(&p);
        }
        p.rings.accept = usize::MAX;
        p.finish_batch();
        let c = census(&p);
        assert_eq!((c[1], c[5], c[6]), (0, 0, 0), "all back once produces are whole again: {c:?}");
    }

    #[test]
    fn a_dropped_batch_recycles_every_frame_even_those_marked_to_send() {
        let mut p = port(8, 8, 2);
        let f = frame(7, 64);
        p.rings.receive(&[&f, &f, &f]);
        {
            let mut b = p.rx_burst(2);
            assert_eq!(b.len(), 2, "at most what was asked");
            b.send(0);
            // Dropped without finish (an early return, a panic): nothing sent, nothing lost.
        }
        assert_eq!(census(&p), [8, 2, 0, 5, 1, 0, 0]);
        assert_eq!(p.stats.tx, 0);
        p.finish_batch();
        assert_eq!(census(&p)[1], 0, "recycled chunks went back to the fill ring");
        // An empty batch is fine too.
        let b = p.rx_burst(MAX_BURST);
        assert_eq!(b.len(), 1);
        drop(b);
        census(&p);
    }

    #[test]
    fn a_frame_grown_past_its_chunk_is_recycled_and_reported_unsent() {
        let mut p = port(8, 8, 2);
        p.rings.receive(&[&frame(1, 1700)]);
        let mut b = p.rx_burst(MAX_BURST);
        {
            // Encapsulation and more moved its start to the chunk's start: 1900 bytes fit the
            // chunk but not from the descriptor's address (256 bytes in).
            let (_, head, len) = b.frames()[0].parts();
            *head = 0;
            *len = 1900;
        }
        b.send(0);
        assert_eq!(b.finish(), Unsent { frames: 1, bytes: 1900 });
        assert_eq!(census(&p)[1], 1, "back towards the fill ring");
        assert_eq!(p.stats.tx_full, 1);
    }

    #[test]
    fn copies_use_free_chunks_down_to_none_then_completions() {
        let mut p = port(8, 16, 2);
        let f = frame(3, 80);
        for _ in 0..8 {
            assert!(p.tx_copy(&f));
            census(&p);
        }
        assert!(!p.tx_copy(&f), "free list empty, nothing completed");
        assert_eq!(p.stats.no_free_chunk, 1);
        assert!(!p.tx_copy(&[0; FRAME_SIZE]), "too long for a chunk");
        p.finish_batch();
        census(&p);
        p.rings.transmit(3);
        assert!(p.tx_copy(&f), "a completed chunk is reaped and reused");
        census(&p);
    }

    #[test]
    fn a_frame_swapped_into_another_ports_batch_is_left_alone_not_recycled_twice() {
        let mut p1 = port(8, 8, 2);
        let mut p2 = port(8, 8, 2);
        let f = frame(5, 64);
        p1.rings.receive(&[&f]);
        p2.rings.receive(&[&f]);
        let mut b1 = p1.rx_burst(MAX_BURST);
        let mut b2 = p2.rx_burst(MAX_BURST);
        std::mem::swap(&mut b1.frames()[0], &mut b2.frames()[0]);
        b1.send(0);
        assert_eq!(b1.finish(), Unsent::default());
        drop(b2);
        for p in [&p1, &p2] {
            assert_eq!(p.stats.foreign, 1);
            assert_eq!(
                p.tx_descs.len() + p.fill_back.len(),
                0,
                "the other port's chunk did not enter this one's rings"
            );
        }
    }

    /// A port taking multi-buffer frames.
    fn multi_port(fill_cap: usize, tx_cap: usize, reserve: usize) -> Port<FakeRings> {
        let mut p = port(fill_cap, tx_cap, reserve);
        p.enable_multi_buffer();
        p
    }

    #[test]
    fn a_received_chain_is_one_frame_and_its_chunks_go_straight_back() {
        let mut p = multi_port(8, 8, 2);
        let big = frame(3, 4000); // three chunks of 1,792
        let small = frame(4, 60);
        assert!(p.rings.receive_chain(&big));
        p.rings.receive(&[&small]);
        let mut b = p.rx_burst(MAX_BURST);
        assert_eq!(b.len(), 2, "the chain is one frame");
        {
            let fs = b.frames();
            let (buf, head, len) = fs[0].parts();
            assert_eq!(&buf[*head..*head + *len], &big[..], "gathered whole, in order");
            assert!(*head >= 20, "with headroom in front to encapsulate in place");
            let (buf, head, len) = fs[1].parts();
            assert_eq!(&buf[*head..*head + *len], &small[..]);
        }
        drop(b);
        census(&p);
        assert_eq!(p.fill_back.len() + p.rings.fill.len(), 8, "all four chunks back to the fill side");
        assert_eq!(p.stats.rx, 2);
        assert_eq!(p.big.as_ref().unwrap().free.len(), MAX_BURST + 1, "the big buffer came back");
    }

    #[test]
    fn a_chain_cut_between_two_bursts_is_gathered_across_them() {
        let mut p = multi_port(8, 8, 2);
        let big = frame(5, 3000); // two chunks
        assert!(p.rings.receive_chain(&big));
        let b = p.rx_burst(1);
        assert_eq!(b.len(), 0, "half a frame is not a frame");
        drop(b);
        let mut b = p.rx_burst(MAX_BURST);
        assert_eq!(b.len(), 1);
        let (buf, head, len) = b.frames()[0].parts();
        assert_eq!(&buf[*head..*head + *len], &big[..]);
        drop(b);
        census(&p);
    }

    #[test]
    fn a_chain_longer_than_a_big_buffer_is_counted_and_its_chunks_recycled() {
        let (rings, descs) = FakeRings::new(CHUNKS, 8);
        let mut p = Port::start(rings, descs, CHUNKS, 0, 0, "fake");
        p.enable_multi_buffer();
        let huge = frame(6, BIG_FRAME); // cannot fit behind the headroom
        assert!(p.rings.receive_chain(&huge));
        let b = p.rx_burst(MAX_BURST);
        assert_eq!(b.len(), 0);
        drop(b);
        assert_eq!(p.stats.rx_too_big, 1);
        census(&p);
        assert_eq!(p.big.as_ref().unwrap().free.len(), MAX_BURST + 1);
    }

    #[test]
    fn a_frame_bigger_than_a_chunk_leaves_as_one_chain() {
        let mut p = multi_port(4, 8, 4);
        let big = frame(7, 5000);
        assert!(p.tx_copy(&big));
        assert!(p.tx_copy(&frame(8, 60)));
        assert_eq!(p.finish_batch(), (0, 0));
        assert_eq!(p.stats.tx, 2, "frames, not chunks");
        let sent = p.rings.transmit_frames();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0].0, big);
        assert!(sent[0].1 >= 3, "{} chunks", sent[0].1);
        assert_eq!(sent[1], (frame(8, 60), 1));
        p.finish_batch();
        census(&p);
    }

    /// Receives one frame already on the RX ring, puts 20 bytes of 0xee in front of it in
    /// place (IPIP), sends it back out and returns what left: (frame, chunks).
    fn encapsulate_and_send_back(p: &mut Port<FakeRings>) -> Vec<(Vec<u8>, usize)> {
        let mut b = p.rx_burst(MAX_BURST);
        {
            let (buf, head, len) = b.frames()[0].parts();
            *head -= 20;
            *len += 20;
            buf[*head..*head + 20].fill(0xee);
        }
        b.send(0);
        assert_eq!(b.finish(), Unsent::default());
        p.finish_batch();
        let sent = p.rings.transmit_frames();
        p.finish_batch();
        census(p);
        sent
    }

    #[test]
    fn a_gathered_frame_sent_back_out_is_scattered_again() {
        let mut p = multi_port(8, 8, 4);
        let big = frame(9, 3500);
        assert!(p.rings.receive_chain(&big));
        let mut want = vec![0xee; 20];
        want.extend(&big);
        assert_eq!(encapsulate_and_send_back(&mut p), vec![(want, 2)]);
    }

    #[test]
    fn a_chain_is_never_split_by_the_rings_room_and_a_dropped_one_counts_once() {
        // TX ring of 2 slots, a frame of 3 chunks: it cannot go, and must not go in part.
        let mut p = multi_port(4, 2, 8);
        let big = frame(10, 5000);
        assert!(p.tx_copy(&big));
        let chunks = p.tx_descs.len();
        assert!(chunks >= 3);
        let (dropped, bytes) = p.finish_batch();
        assert_eq!((dropped, bytes), (1, big.len()), "one frame dropped, all its bytes");
        assert!(p.rings.tx.is_empty(), "no half chain on the ring");
        assert_eq!(p.stats.tx, 0);
        census(&p);
    }

    #[test]
    fn a_chain_that_runs_out_of_free_chunks_queues_nothing() {
        let mut p = multi_port(CHUNKS - 2, 8, 0);
        let free = p.free.len();
        assert_eq!(free, 2);
        assert!(!p.tx_copy(&frame(11, 5000)), "needs three chunks, two free");
        assert_eq!(p.free.len(), free, "the two taken went back");
        assert!(p.tx_descs.is_empty());
        assert_eq!(p.stats.no_free_chunk, 1);
        census(&p);
    }

    #[test]
    fn parts_are_copied_in_order_into_one_chunk_or_a_chain_and_too_big_is_refused() {
        let (hdr, payload) = (frame(1, 66), frame(2, 3000));
        let mut whole = hdr.clone();
        whole.extend(&payload);
        // Single-buffer: the joined frame fits a chunk, or nothing is queued.
        let mut p = port(4, 8, 4);
        assert!(p.tx_parts(&[&hdr, &payload[..1000], &[], &payload[1000..1200]]));
        let free = p.free.len();
        assert!(!p.tx_parts(&[&hdr, &payload]), "3,066 bytes do not fit a 2 KiB chunk");
        assert_eq!(p.free.len(), free, "the chunk taken went back");
        p.finish_batch();
        let sent = p.rings.transmit_frames();
        assert_eq!(sent, vec![(whole[..1266].to_vec(), 1)]);
        p.finish_batch();
        census(&p);
        // Data that ends exactly at a chunk's end, then an empty part: one chunk, not a chain
        // continued by nothing.
        let mut p = multi_port(4, 8, 4);
        let fill = frame(3, FRAME_SIZE - XDP_HEADROOM);
        assert!(p.tx_parts(&[&fill, &[]]));
        p.finish_batch();
        assert_eq!(p.rings.transmit_frames(), vec![(fill, 1)]);
        p.finish_batch();
        census(&p);
        // Multi-buffer: the same parts leave as one chain, joined in order.
        let mut p = multi_port(4, 8, 4);
        assert!(p.tx_parts(&[&hdr, &payload]));
        p.finish_batch();
        let sent = p.rings.transmit_frames();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, whole);
        assert_eq!(sent[0].1, 2, "3,066 bytes in two chunks");
        p.finish_batch();
        census(&p);
    }

    #[test]
    fn two_chains_in_one_burst_keep_their_own_bytes() {
        let mut p = multi_port(CHUNKS, 8, 0);
        let (a, b) = (frame(20, 3000), frame(21, 4000));
        assert!(p.rings.receive_chain(&a) && p.rings.receive_chain(&b));
        let mut batch = p.rx_burst(MAX_BURST);
        assert_eq!(batch.len(), 2);
        let fs = batch.frames();
        {
            let (buf, head, len) = fs[0].parts();
            buf[*head..*head + *len].fill(0x55); // the pipeline writes all over frame 0
        }
        let (buf, head, len) = fs[1].parts();
        assert_eq!(&buf[*head..*head + *len], &b[..], "frame 1 untouched by frame 0's writes");
        drop(batch);
        census(&p);
    }

    #[test]
    fn gather_takes_exactly_a_big_buffer_behind_the_headroom_and_counts_one_byte_more() {
        let (rings, descs) = FakeRings::new(CHUNKS, 8);
        let mut p = Port::start(rings, descs, CHUNKS, 0, 0, "fake");
        p.enable_multi_buffer();
        let fits = frame(22, BIG_FRAME - XDP_HEADROOM);
        assert!(p.rings.receive_chain(&fits));
        let mut b = p.rx_burst(MAX_BURST);
        assert_eq!(b.len(), 1);
        assert_eq!(b.frames()[0].len(), fits.len());
        drop(b);
        p.finish_batch();
        assert!(p.rings.receive_chain(&frame(23, BIG_FRAME - XDP_HEADROOM + 1)));
        assert_eq!(p.rx_burst(MAX_BURST).len(), 0);
        assert_eq!(p.stats.rx_too_big, 1);
        census(&p);
    }

    #[test]
    fn a_chain_with_no_big_buffer_free_is_counted_and_the_buffers_come_back() {
        let mut p = multi_port(8, 8, 2);
        p.big.as_mut().unwrap().free.clear(); // as if all were taken
        assert!(p.rings.receive_chain(&frame(24, 3000)));
        assert_eq!(p.rx_burst(MAX_BURST).len(), 0);
        assert_eq!(p.stats.rx_too_big, 1);
        assert_eq!(p.big.as_ref().unwrap().free.len(), BIG_FRAMES, "every buffer free at the batch's end");
        census(&p);
    }

    #[test]
    fn a_gathered_frame_that_finds_no_free_chunk_is_unsent_and_its_buffer_returns() {
        let mut p = multi_port(8, 8, 0);
        assert!(p.rings.receive_chain(&frame(25, 3000)));
        let free = std::mem::take(&mut p.free); // no free chunk to scatter into
        let mut b = p.rx_burst(MAX_BURST);
        b.send(0);
        assert_eq!(b.finish(), Unsent { frames: 1, bytes: 3000 });
        assert_eq!(p.big.as_ref().unwrap().free.len(), BIG_FRAMES);
        p.free = free;
        census(&p);
    }

    #[test]
    fn a_big_frame_swapped_into_another_ports_batch_does_not_leak_its_buffer() {
        let mut p1 = multi_port(8, 8, 2);
        let mut p2 = multi_port(8, 8, 2);
        assert!(p1.rings.receive_chain(&frame(26, 3000)) && p2.rings.receive_chain(&frame(27, 3000)));
        let mut b1 = p1.rx_burst(MAX_BURST);
        let mut b2 = p2.rx_burst(MAX_BURST);
        std::mem::swap(&mut b1.frames()[0], &mut b2.frames()[0]);
        drop(b1);
        drop(b2);
        for p in [&p1, &p2] {
            assert_eq!(p.stats.foreign, 1);
            assert_eq!(p.big.as_ref().unwrap().free.len(), BIG_FRAMES, "taken back at the batch's end");
        }
    }

    #[test]
    fn a_single_chunk_frame_grown_past_its_chunk_leaves_as_a_chain_on_a_multi_buffer_port() {
        let mut p = multi_port(8, 8, 4);
        let full = frame(28, FRAME_SIZE - XDP_HEADROOM); // fills its chunk
        p.rings.receive(&[&full]);
        let mut want = vec![0xee; 20];
        want.extend(&full);
        assert_eq!(encapsulate_and_send_back(&mut p), vec![(want, 2)]);
    }

    #[test]
    fn the_tx_queue_limit_never_cuts_a_chain() {
        let mut p = multi_port(2, 8, 0);
        p.tx_queue = 4; // below what set_tx_queue allows, to fit the fake UMEM
        let (a, b) = (frame(29, 5000), frame(30, 5000)); // three chunks each
        assert!(p.tx_copy(&a) && p.tx_copy(&b));
        assert_eq!(p.finish_batch(), (1, 5000), "the second chain would pass the limit: dropped whole");
        let sent = p.rings.transmit_frames();
        assert_eq!(sent, vec![(a, 3)]);
        p.finish_batch();
        census(&p);
    }
}
