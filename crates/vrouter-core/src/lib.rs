//! vrouter's forwarding core, free of I/O: no sockets, no threads of its own, no libc. Frames
//! come in through the [`dataplane::Frame`] trait and time as an argument, so everything here
//! runs (and is tested and benchmarked) in memory; the daemon (`vrouter`) supplies the ports,
//! the worker threads and the control plane.
//!
//! Layers, lowest first: [`wire`] (views over frame bytes), [`fib`] (longest-prefix match),
//! [`acl`] (policy and conntrack), [`neigh`] (ARP), [`stats`] and [`ratelimit`], and
//! [`dataplane`], the pipeline that uses them all.

pub mod acl;
pub mod dataplane;
pub mod fib;
pub mod neigh;
pub mod offload;
mod prefetch;
pub mod ratelimit;
pub mod stats;
pub mod wire;

/// A random 64-bit seed for the hash tables' keyed hashes (conntrack, neighbour sources, rate
/// limit buckets) and for unique names in the labs, so collisions cannot be chosen from outside. Drawn from std's per-process
/// random keys, the same source `HashMap` uses; no RNG crate needed for this.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}
