//! Forwarding information base: a lock-free longest-prefix-match table from IPv4 prefixes to
//! small next-hop indices ([`NhId`]).
//!
//! Readers (workers) pin once per batch ([`Fib::pin`]) and then look up with plain loads and an
//! acquire load per chunk; the single writer ([`FibWriter`]) rebuilds the affected part of the
//! structure off to the side, publishes it with a release store, and frees what it replaced
//! after an epoch grace period, so no reader ever sees a torn entry or freed memory.
//!
//! Why a poptrie with an 18-bit direct-pointing top (see `trie.rs` for the layout): with
//! uniformly random keys the lookup cost is the number of dependent cache misses, and this
//! layout needs one for 3/4 of the address space (top entry holds the answer) and three
//! (top, root node, leaf) for almost all the rest, since a /24 ends exactly at the first node.
//! Popcount-indexed nodes with leaf compression keep the whole structure near 5 bytes per
//! prefix, small enough to live in L2/L3. The /18 block is also the unit of update: a route
//! change rebuilds one block (or, for routes of /18 and shorter, retags the blocks it covers),
//! which bounds both update cost and the memory a grace period holds back. Random-key
//! throughput depends on overlapping the misses of independent lookups; `lookup_batch` gets that
//! from the out-of-order core plus a top-entry prefetch 16 keys ahead (a staged, interleaved
//! variant was measured slower; see `trie.rs`).

#[cfg(feature = "testing")]
pub mod bench;
pub use vrouter_types::fib::prefix;
#[cfg(feature = "testing")]
pub mod table;
mod trie;
mod writer;

pub use prefix::{Ipv4Prefix, PrefixError};
pub use trie::{Fib, FibGuard};
pub use writer::FibWriter;

/// Index of a next hop in the adjacency table. [`NH_NONE`] means "no route".
pub type NhId = u16;

/// The lookup result for an address with no covering route.
pub const NH_NONE: NhId = 0;
