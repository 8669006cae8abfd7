//! Ethernet II frames (IEEE 802.3): destination, source, EtherType.

pub const HEADER_LEN: usize = 14;
pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_QINQ: u16 = 0x88a8;

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const TYPE: Range<usize> = 12..14;
}

/// The MAC address type lives in vrouter-types (the control protocol needs it without the
/// data plane); re-exported here at its old path.
pub use vrouter_types::wire::MacAddr;

/// A view over an Ethernet frame. After [`EthernetFrame::new_checked`] no accessor panics.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buf` if it holds at least a header.
    pub fn new_checked(buf: T) -> Option<Self> {
        (buf.as_ref().len() >= HEADER_LEN).then_some(EthernetFrame { buf })
    }
    pub fn dst(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[field::DST].try_into().unwrap())
    }
    pub fn src(&self) -> MacAddr {
        MacAddr(self.buf.as_ref()[field::SRC].try_into().unwrap())
    }
    pub fn ethertype(&self) -> u16 {
        let b = &self.buf.as_ref()[field::TYPE];
        u16::from_be_bytes([b[0], b[1]])
    }
    pub fn payload(&self) -> &[u8] {
        &self.buf.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::DST].copy_from_slice(&m.0);
    }
    pub fn set_src(&mut self, m: MacAddr) {
        self.buf.as_mut()[field::SRC].copy_from_slice(&m.0);
    }
    pub fn set_ethertype(&mut self, t: u16) {
        self.buf.as_mut()[field::TYPE].copy_from_slice(&t.to_be_bytes());
    }
}

/// Writes a whole Ethernet header at the start of `buf` (which must hold 14 bytes).
#[inline]
pub fn write_header(buf: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) {
    buf[field::DST].copy_from_slice(&dst.0);
    buf[field::SRC].copy_from_slice(&src.0);
    buf[field::TYPE].copy_from_slice(&ethertype.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_reads_fields() {
        // dst ff:ff:ff:ff:ff:ff | src 02:00:00:00:00:01 | type 0806 (ARP)
        let f = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 0x08, 0x06, 0xaa];
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert!(e.dst().is_broadcast());
        assert_eq!(e.src(), MacAddr([2, 0, 0, 0, 0, 1]));
        assert_eq!(e.ethertype(), ETHERTYPE_ARP);
        assert_eq!(e.payload(), &[0xaa]);
    }

    #[test]
    fn new_checked_rejects_short_frame() {
        assert!(EthernetFrame::new_checked(&[0u8; 13][..]).is_none());
    }
}
