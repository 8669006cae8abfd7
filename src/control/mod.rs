//! The control side: configuration, turning it into the data plane's state, and (later) live
//! updates. Reaches the workers only by publishing snapshots and FIB updates.

pub mod build;
pub mod config;
pub mod daemon;
pub mod netlink;
