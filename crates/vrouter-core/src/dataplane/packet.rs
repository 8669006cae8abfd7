//! Frames as the pipeline sees them: borrowed in place, with headroom in front for IPIP
//! encapsulation and ICMP errors, and a little metadata per frame.

use crate::offload::Offload;
use crate::wire::ethernet;
use crate::wire::ipv4::Ipv4Packet;

/// Index of a port (uplink, pod, host) in the snapshot's port table.
pub type PortId = u16;

/// Bytes reserved in front of every received frame: IPIP needs 20, an ICMP error built in
/// place needs 28, and both may happen to one frame. (VPP's pre-data, xsk-rs frame headroom.)
pub const HEADROOM: usize = 128;

/// Largest batch a worker processes in one call; larger slices are processed in chunks.
pub const MAX_BATCH: usize = 256;
/// Port ids a node can use (uplink, host, pods): counters are sized for this many.
pub const MAX_PORTS: usize = 256;

/// Size of a whole frame buffer (headroom + a 1500-byte-MTU frame + slack), as in UMEM chunks.
pub const BUF_SIZE: usize = 2048;
/// Buffers the pipeline fills itself (fragments, held frames, ICMP errors): room for a frame
/// of the largest MTU any port may have (`vrouter_api::config::MAX_MTU`) behind the headroom.
pub const FRAME_BUF_SIZE: usize = 12288;
/// Size of a buffer that takes the largest segment a TAP with offloads hands over (64 KiB of
/// IPv4 datagram and its Ethernet header), behind the headroom.
pub const BIG_BUF_SIZE: usize = HEADROOM + 14 + 65_535 + 1;

/// What the pipeline needs of a frame buffer, whatever owns it (a UMEM chunk, a TAP read
/// buffer, a test's [`PacketBuf`]). The frame is `buf[head..head + len]`; `buf[..head]` is
/// headroom. Generic, not `dyn`: the pipeline is monomorphised per port type.
pub trait Frame {
    /// The whole buffer and the frame's `head` and `len` within it.
    fn parts(&mut self) -> (&mut [u8], &mut usize, &mut usize);
    /// The port the frame arrived on.
    fn port(&self) -> PortId;
    /// Its offload state (a TAP's virtio-net header); none for frames from the wire.
    #[inline]
    fn offload(&self) -> Offload {
        Offload::NONE
    }
    /// Records a changed offload state (a partial checksum the pipeline completed). Frames
    /// that carry none ignore it.
    #[inline]
    fn set_offload(&mut self, _o: Offload) {}
}

/// A frame borrowed in place, as every pipeline stage sees it: the frame is
/// `buf[head..head + len]`; `buf[..head]` is headroom the pipeline may grow into (IPIP
/// encapsulation, ICMP errors) and decapsulation moves `head` forward. The stages take one
/// `&mut Pkt` instead of a `(buf, head, len)` triple; the batch loop writes `head` and `len`
/// back to the [`Frame`] afterwards.
pub struct Pkt<'a> {
    pub buf: &'a mut [u8],
    pub head: usize,
    pub len: usize,
    /// The port it arrived on.
    pub port: PortId,
    /// Segmentation still owed and whether its transport checksum is partial (a TAP's
    /// virtio-net header): the pipeline judges a GSO frame by its segments' size, and
    /// completes a partial checksum before the frame is copied anywhere that loses this.
    pub offload: Offload,
}

impl<'a> Pkt<'a> {
    pub fn new(buf: &'a mut [u8], head: usize, len: usize, port: PortId) -> Self {
        let head = head.min(buf.len());
        let len = len.min(buf.len() - head);
        Pkt { buf, head, len, port, offload: Offload::NONE }
    }
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }
    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.head + self.len]
    }
    /// Offset of the IPv4 header in `buf`.
    #[inline]
    pub fn l3(&self) -> usize {
        self.head + ethernet::HEADER_LEN
    }
    /// The IPv4 packet: from its header to the end of the frame.
    #[inline]
    pub fn ip_bytes(&self) -> &[u8] {
        &self.buf[self.head + ethernet::HEADER_LEN..self.head + self.len]
    }
    #[inline]
    pub fn ip_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head + ethernet::HEADER_LEN..self.head + self.len]
    }
    /// The IPv4 header of a frame that passed input validation ([`crate::wire::ipv4::check_input`]
    /// and the trim to its total length) or that the pipeline wrote itself: not checked again.
    /// Only for such frames (a stage past input); see [`Ipv4Packet::new_unchecked`].
    #[inline]
    pub fn ip(&self) -> Ipv4Packet<&[u8]> {
        Ipv4Packet::new_unchecked(self.ip_bytes())
    }
    /// [`Pkt::ip`], writable.
    #[inline]
    pub fn ip_mut(&mut self) -> Ipv4Packet<&mut [u8]> {
        Ipv4Packet::new_unchecked(self.ip_bytes_mut())
    }
}

/// [`Frame`] for a type that keeps the frame in fields `buf`, `head`, `len`, `port` and
/// `offload` ([`Pkt`], [`PacketBuf`]).
macro_rules! frame_by_fields {
    ($t:ty) => {
        impl Frame for $t {
            #[inline]
            fn parts(&mut self) -> (&mut [u8], &mut usize, &mut usize) {
                (&mut *self.buf, &mut self.head, &mut self.len)
            }
            #[inline]
            fn port(&self) -> PortId {
                self.port
            }
            #[inline]
            fn offload(&self) -> Offload {
                self.offload
            }
            #[inline]
            fn set_offload(&mut self, o: Offload) {
                self.offload = o;
            }
        }
    };
}
frame_by_fields!(Pkt<'_>);
frame_by_fields!(PacketBuf);

/// An owned frame buffer with headroom: for tests, benchmarks and the in-memory port.
#[derive(Clone)]
pub struct PacketBuf {
    pub buf: Box<[u8]>,
    pub head: usize,
    pub len: usize,
    pub port: PortId,
    pub offload: Offload,
}

impl PacketBuf {
    /// Copies `frame` in behind [`HEADROOM`] bytes (truncating to the buffer).
    pub fn new(frame: &[u8], port: PortId) -> Self {
        PacketBuf::with_size(BUF_SIZE, frame, port)
    }
    /// [`PacketBuf::new`] with a buffer of `size` bytes ([`BIG_BUF_SIZE`] for a TAP with
    /// offloads).
    pub fn with_size(size: usize, frame: &[u8], port: PortId) -> Self {
        let mut buf = vec![0u8; size.max(HEADROOM)].into_boxed_slice();
        let len = frame.len().min(buf.len() - HEADROOM);
        buf[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
        PacketBuf { buf, head: HEADROOM, len, port, offload: Offload::NONE }
    }
    /// Refills this buffer with `frame`, reusing the allocation.
    pub fn reset(&mut self, frame: &[u8], port: PortId) {
        let len = frame.len().min(self.buf.len() - HEADROOM);
        self.buf[HEADROOM..HEADROOM + len].copy_from_slice(&frame[..len]);
        self.head = HEADROOM;
        self.len = len;
        self.port = port;
        self.offload = Offload::NONE;
    }
    pub fn as_pkt(&mut self) -> Pkt<'_> {
        Pkt { buf: &mut self.buf, head: self.head, len: self.len, port: self.port, offload: self.offload }
    }
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..self.head + self.len]
    }
}
