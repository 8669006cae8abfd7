//! IPv4 prefixes as the FIB and the ACL see them: a host-order `u32` and a length.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 prefix `addr/len` with all host bits zero (enforced by the constructors).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    addr: u32,
    len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("'{0}': expected a.b.c.d/len")]
    Syntax(String),
    #[error("'{0}': prefix length must be 0..=32")]
    Length(String),
    #[error("'{0}': host bits are set (did you mean {1}?)")]
    HostBits(String, Ipv4Prefix),
}

impl Ipv4Prefix {
    /// Builds a prefix, masking off host bits. `len` above 32 is clamped to 32.
    pub const fn new_masked(addr: u32, len: u8) -> Self {
        let len = if len > 32 { 32 } else { len };
        Ipv4Prefix { addr: addr & mask(len), len }
    }

    /// Builds a prefix, refusing host bits and lengths above 32.
    pub fn new(addr: u32, len: u8) -> Option<Self> {
        (len <= 32 && addr & !mask(len) == 0).then_some(Ipv4Prefix { addr, len })
    }

    pub const fn addr(&self) -> u32 {
        self.addr
    }
    #[allow(clippy::len_without_is_empty)] // the prefix length, not a container's
    pub const fn len(&self) -> u8 {
        self.len
    }
    pub const fn mask(&self) -> u32 {
        mask(self.len)
    }
    pub const fn contains(&self, ip: u32) -> bool {
        ip & mask(self.len) == self.addr
    }
    /// True if `other` lies inside `self` (or equals it).
    pub const fn covers(&self, other: &Ipv4Prefix) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }
}

/// The network mask of a prefix length (`len` must be <= 32).
pub const fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - len as u32)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.addr), self.len)
    }
}

impl FromStr for Ipv4Prefix {
    type Err = PrefixError;
    /// Parses `a.b.c.d/len`; a bare address means `/32`. Host bits are an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, l) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv4Addr = a.trim().parse().map_err(|_| PrefixError::Syntax(s.to_string()))?;
        let len = match l {
            Some(l) => l.trim().parse::<u8>().map_err(|_| PrefixError::Length(s.to_string()))?,
            None => 32,
        };
        if len > 32 {
            return Err(PrefixError::Length(s.to_string()));
        }
        let addr = u32::from(addr);
        Ipv4Prefix::new(addr, len)
            .ok_or_else(|| PrefixError::HostBits(s.to_string(), Ipv4Prefix::new_masked(addr, len)))
    }
}

// As text, `a.b.c.d/len`, with the same checks as `FromStr`.
serde_as_text!(Ipv4Prefix);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_canonical_and_bare_address() {
        let p: Ipv4Prefix = "10.244.1.0/24".parse().unwrap();
        assert_eq!((p.addr(), p.len()), (0x0af4_0100, 24));
        let h: Ipv4Prefix = "192.0.2.7".parse().unwrap();
        assert_eq!(h.len(), 32);
        let d: Ipv4Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(d.contains(0xffff_ffff));
    }

    #[test]
    fn parse_rejects_host_bits_and_bad_lengths() {
        assert!(matches!("10.0.0.1/8".parse::<Ipv4Prefix>(), Err(PrefixError::HostBits(..))));
        assert!(matches!("10.0.0.0/33".parse::<Ipv4Prefix>(), Err(PrefixError::Length(_))));
        assert!(matches!("10.0.0/8".parse::<Ipv4Prefix>(), Err(PrefixError::Syntax(_))));
    }

    #[test]
    fn covers_is_containment() {
        let a: Ipv4Prefix = "10.0.0.0/8".parse().unwrap();
        let b: Ipv4Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(a.covers(&b) && !b.covers(&a) && a.covers(&a));
    }
}
