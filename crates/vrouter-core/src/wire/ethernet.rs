//! Ethernet II frames (IEEE 802.3): destination, source, EtherType.

use std::fmt;

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

/// A MAC address.
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    pub const fn is_broadcast(&self) -> bool {
        u64::from_be_bytes([0, 0, self.0[0], self.0[1], self.0[2], self.0[3], self.0[4], self.0[5]]) == 0xffff_ffff_ffff
    }
    /// Group bit set: multicast or broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast() && !matches!(self.0, [0, 0, 0, 0, 0, 0])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut m = [0u8; 6];
        let mut parts = s.split(':');
        for b in m.iter_mut() {
            let p = parts.next().ok_or_else(|| format!("'{s}': expected six hex octets like 02:00:00:00:00:01"))?;
            *b = u8::from_str_radix(p, 16).map_err(|_| format!("'{s}': '{p}' is not a hex octet"))?;
        }
        if parts.next().is_some() {
            return Err(format!("'{s}': more than six octets"));
        }
        Ok(MacAddr(m))
    }
}

/// A view over an Ethernet frame. After [`EthernetFrame::new_checked`] no accessor panics.
/// As text (`"02:00:00:00:00:01"`), in config files and the control protocol.
impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

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

    #[test]
    fn mac_parse_and_classes() {
        let m: MacAddr = "02:00:0a:0b:0c:0d".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:0b:0c:0d");
        assert!(m.is_unicast());
        assert!(MacAddr([1, 0, 0x5e, 0, 0, 1]).is_multicast());
        assert!(!MacAddr::ZERO.is_unicast());
        assert!("02:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:zz".parse::<MacAddr>().is_err());
    }
}
