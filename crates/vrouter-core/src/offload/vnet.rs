//! The virtio-net header (virtio 1.x, `struct virtio_net_hdr`, 10 bytes, little-endian) a TAP
//! opened with `IFF_VNET_HDR` reads and writes in front of every frame, and [`Offload`], what it
//! says about one frame.

use super::{layout, Layout};
use crate::wire::ipv4::{PROTO_TCP, PROTO_UDP};

/// Bytes of the header (without `num_buffers`: the TAP's default `TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the transport checksum is partial, from `csum_start`, stored at `csum_offset`.
const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified (the receiver need not).
const F_DATA_VALID: u8 = 2;
/// `gso_type` values.
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_UDP_L4: u8 = 5;
/// `gso_type` bit: the segment had CWR set and only the first one may keep it.
const GSO_ECN: u8 = 0x80;

/// What segmentation a frame still needs.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Gso {
    #[default]
    None,
    /// A TCP segment to cut into `gso_size`-byte ones (TSO).
    Tcp4,
    /// UDP to cut into `gso_size`-byte datagrams, each with its own UDP header (USO,
    /// `UDP_SEGMENT`; not IP fragmentation).
    Udp4,
}

/// The offload state of a frame, as its virtio-net header describes it. A frame from the wire
/// has none ([`Offload::NONE`]).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Offload {
    /// The transport checksum holds only the pseudo-header's sum: to complete before a wire.
    pub csum_partial: bool,
    /// The transport checksum was verified (a TAP reader may skip it).
    pub csum_valid: bool,
    pub gso: Gso,
    /// Transport payload bytes per segment (0 without GSO).
    pub gso_size: u16,
}

/// Why a virtio-net header is refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    #[error("GSO type {0:#x} is not one an IPv4 router offloads (TCPv6, UFO)")]
    UnsupportedGso(u8),
    #[error("GSO without a segment size")]
    ZeroGsoSize,
}

impl Offload {
    pub const NONE: Offload = Offload { csum_partial: false, csum_valid: false, gso: Gso::None, gso_size: 0 };

    /// Reads the header in front of a frame from a TAP. Only the flags and the GSO type and
    /// size are taken: the offsets are found again from the frame's own headers when needed
    /// ([`super::layout`]), since the pipeline may move them (IPIP).
    pub fn from_vnet(h: &[u8; VNET_HDR_LEN]) -> Result<Offload, VnetError> {
        let gso_size = u16::from_le_bytes([h[4], h[5]]);
        let gso = match h[1] & !GSO_ECN {
            GSO_NONE => Gso::None,
            GSO_TCPV4 => Gso::Tcp4,
            GSO_UDP_L4 => Gso::Udp4,
            t => return Err(VnetError::UnsupportedGso(t)),
        };
        if gso != Gso::None && gso_size == 0 {
            return Err(VnetError::ZeroGsoSize);
        }
        Ok(Offload {
            csum_partial: h[0] & F_NEEDS_CSUM != 0,
            csum_valid: h[0] & F_DATA_VALID != 0,
            gso,
            gso_size: if gso == Gso::None { 0 } else { gso_size },
        })
    }

    /// Whether the frame is still to be segmented.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso != Gso::None
    }

    /// The header to write in front of `frame` on a TAP. A partial checksum or a GSO frame
    /// that is not TCP or UDP over IPv4 (which nothing here makes) gets a plain header.
    pub fn to_vnet(&self, frame: &[u8]) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        if !self.csum_partial && !self.is_gso() {
            h[0] = if self.csum_valid { F_DATA_VALID } else { 0 };
            return h;
        }
        let Some(l) = layout(frame) else { return h };
        let gso = match (self.gso, l.proto) {
            (Gso::Tcp4, PROTO_TCP) => GSO_TCPV4,
            (Gso::Udp4, PROTO_UDP) => GSO_UDP_L4,
            _ => GSO_NONE,
        };
        write(&mut h, &l, self.csum_partial || gso != GSO_NONE, gso, if gso == GSO_NONE { 0 } else { self.gso_size });
        h
    }
}

/// Fills `h` for a frame laid out as `l`.
pub(super) fn write(h: &mut [u8; VNET_HDR_LEN], l: &Layout, needs_csum: bool, gso_type: u8, gso_size: u16) {
    h[0] = if needs_csum { F_NEEDS_CSUM } else { 0 };
    h[1] = gso_type;
    h[2..4].copy_from_slice(&(l.hdr_len as u16).to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&(l.l4 as u16).to_le_bytes());
    h[8..10].copy_from_slice(&(l.csum_offset() as u16).to_le_bytes());
}

/// The header of a TCP segment merged by GRO (see [`super::gro`]).
pub(super) fn tcp4(l: &Layout, mss: u16) -> [u8; VNET_HDR_LEN] {
    let mut h = [0u8; VNET_HDR_LEN];
    write(&mut h, l, true, GSO_TCPV4, mss);
    h
}

#[cfg(test)]
mod tests {
    use super::super::testutil::tcp;
    use super::*;

    #[test]
    fn a_tso_header_from_the_kernel_reads_as_gso_with_a_partial_checksum() {
        // What tun_put_user writes for a 64 KiB TCP segment: NEEDS_CSUM, TCPV4 (ECN bit may be
        // set), hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
        let h = [1, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];
        let o = Offload::from_vnet(&h).unwrap();
        assert_eq!(o, Offload { csum_partial: true, csum_valid: false, gso: Gso::Tcp4, gso_size: 1448 });
        let plain = Offload::from_vnet(&[0; 10]).unwrap();
        assert_eq!(plain, Offload::NONE);
        assert_eq!(Offload::from_vnet(&[0, 5, 0, 0, 0xc8, 0x05, 0, 0, 0, 0]).unwrap().gso, Gso::Udp4);
    }

    #[test]
    fn headers_for_v6_ufo_or_without_a_size_are_refused() {
        assert_eq!(Offload::from_vnet(&[1, 4, 0, 0, 1, 0, 0, 0, 0, 0]), Err(VnetError::UnsupportedGso(4)));
        assert_eq!(Offload::from_vnet(&[1, 3, 0, 0, 1, 0, 0, 0, 0, 0]), Err(VnetError::UnsupportedGso(3)));
        assert_eq!(Offload::from_vnet(&[1, 0x42, 0, 0, 1, 0, 0, 0, 0, 0]), Err(VnetError::UnsupportedGso(0x42)));
        assert_eq!(Offload::from_vnet(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), Err(VnetError::ZeroGsoSize));
    }

    #[test]
    fn the_header_written_points_at_the_frames_own_transport_header() {
        let o = Offload { csum_partial: true, csum_valid: false, gso: Gso::Tcp4, gso_size: 1448 };
        assert_eq!(o.to_vnet(&tcp(&[0; 3000], 1, 0x10, false)), [1, 1, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        // Behind IPIP the transport header is 20 bytes further.
        assert_eq!(o.to_vnet(&tcp(&[0; 3000], 1, 0x10, true)), [1, 1, 86, 0, 0xa8, 0x05, 54, 0, 16, 0]);
        let valid = Offload { csum_valid: true, ..Offload::NONE };
        assert_eq!(valid.to_vnet(&[]), [2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Round trip.
        let h = o.to_vnet(&tcp(&[0; 3000], 1, 0x10, false));
        assert_eq!(Offload::from_vnet(&h).unwrap(), o);
    }
}
