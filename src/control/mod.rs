//! The control side: configuration, turning it into the data plane's state, live updates
//! (make before break, see [`node`]), the control socket and its protocol, route sources.
//! Reaches the workers only by publishing snapshots and FIB updates and waiting for grace
//! periods, and by the observation requests of [`crate::dataplane::observe`].

pub mod api;
pub mod build;
pub mod config;
pub mod daemon;
pub mod fixtures;
pub mod metrics;
pub mod netlink;
pub mod node;
pub mod server;
pub mod status;
