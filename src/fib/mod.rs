//! Forwarding information base: a lock-free longest-prefix-match table from IPv4 prefixes to
//! small next-hop indices ([`NhId`]).
//!
//! Readers (workers) pin once per batch ([`Fib::pin`]) and then look up with plain loads and an
//! acquire load per chunk; the single writer ([`FibWriter`]) rebuilds the affected part of the
//! structure off to the side, publishes it with a release store, and frees what it replaced
//! after an epoch grace period, so no reader ever sees a torn entry or freed memory.

pub mod prefix;
pub mod table;

pub use prefix::{Ipv4Prefix, PrefixError};

/// Index of a next hop in the adjacency table. [`NH_NONE`] means "no route".
pub type NhId = u16;

/// The lookup result for an address with no covering route.
pub const NH_NONE: NhId = 0;

// The trie itself (Fib, FibGuard, FibWriter) lives in submodules added by the FIB work.
