//! vrouter: a userspace IPv4 forwarding engine for Kubernetes nodes.

pub mod acl;
pub mod control;
pub mod ctl;
pub mod dataplane;
pub mod fib;
pub mod lab;
pub mod neigh;
pub mod perf;
pub mod port;
pub mod ratelimit;
pub mod repeat;
pub mod stats;
pub mod wire;
pub mod worker;
