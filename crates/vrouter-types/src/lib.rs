//! vrouter's value types: what the forwarding core and the control protocol both speak.
//!
//! IPv4 prefixes, MAC addresses, the policy rule model (with the [`acl::FlowKey`] it matches),
//! IPIP modes, trace records and captured frames. vrouter-core re-exports each at its old path (`fib::Ipv4Prefix`,
//! `wire::MacAddr`, `acl::Rule`, `dataplane::IpipMode`); vrouter-api builds the control
//! protocol on them, so that the client (vrouterctl) needs neither the core nor the daemon.
//! Only serde and thiserror: nothing here does I/O or needs a C toolchain.

/// Serde as the type's text form (`Display` out, `FromStr` in, with its checks and messages):
/// how prefixes and MAC addresses appear in config files and the control protocol.
macro_rules! serde_as_text {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

pub mod acl;
pub mod fib;
pub mod ipip;
pub mod observe;
pub mod wire;

pub use acl::{Action, Rule};
pub use fib::Ipv4Prefix;
pub use ipip::IpipMode;
pub use wire::MacAddr;
