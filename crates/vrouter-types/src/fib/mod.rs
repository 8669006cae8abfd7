//! IPv4 prefixes (the FIB itself is vrouter-core's `fib`, which re-exports these).

pub mod prefix;

pub use prefix::{Ipv4Prefix, PrefixError};
