//! vrouter's value types: what the forwarding core and the control protocol both speak.
//!
//! IPv4 prefixes, MAC addresses, the policy rule model (with the [`acl::FlowKey`] it matches)
//! and IPIP modes. vrouter-core re-exports each at its old path (`fib::Ipv4Prefix`,
//! `wire::MacAddr`, `acl::Rule`, `dataplane::IpipMode`); vrouter-api builds the control
//! protocol on them, so that the client (vrouterctl) needs neither the core nor the daemon.
//! Only serde and thiserror: nothing here does I/O or needs a C toolchain.

pub mod acl;
pub mod fib;
pub mod ipip;
pub mod wire;

pub use acl::{Action, Rule};
pub use fib::Ipv4Prefix;
pub use ipip::IpipMode;
pub use wire::MacAddr;
