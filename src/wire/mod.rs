//! Zero-copy views and in-place builders over frame bytes.

pub mod arp;
