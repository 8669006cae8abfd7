//! vrouter: a userspace IPv4 forwarding engine for Kubernetes nodes.

pub mod control;
pub mod lab;
pub mod perf;
pub mod port;
pub mod repeat;
pub mod worker;
