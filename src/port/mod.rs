//! Ports: where frames come from and where they go. The uplink is AF_XDP ([`afxdp`]); pods and
//! the node's kernel are TAP devices ([`tap`]). The in-memory [`vrouter_core::dataplane::PacketBuf`]
//! serves tests and benchmarks. All `unsafe` of the project lives here.

pub mod afxdp;
pub mod tap;
pub mod xdp;
