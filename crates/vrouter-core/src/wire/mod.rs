//! Zero-copy views and in-place builders over frame bytes. Knows nothing of routing: each
//! view checks lengths once, then reads and writes fields at fixed offsets.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod l4;

pub use ethernet::MacAddr;
