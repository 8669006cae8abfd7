//! Link-layer values shared with the control protocol: the [`MacAddr`] (vrouter-core's
//! `wire::ethernet` re-exports it next to the frame view).

use std::fmt;

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

// As text (`"02:00:00:00:00:01"`), in config files and the control protocol.
serde_as_text!(MacAddr);

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn mac_serde_is_text() {
        let m = MacAddr([2, 0, 0, 0, 0, 1]);
        assert_eq!(serde_json::to_string(&m).unwrap(), r#""02:00:00:00:00:01""#);
        assert_eq!(serde_json::from_str::<MacAddr>(r#""02:00:00:00:00:01""#).unwrap(), m);
    }
}
