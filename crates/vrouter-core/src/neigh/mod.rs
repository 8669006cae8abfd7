//! Neighbours: ARP resolution on the uplink, proxy ARP for pods, packets held while resolving.
//!
//! * [`table`]: the uplink cache, shared by all workers (lock-free, bounded, no allocation per
//!   packet). It decides when requests go out; the worker builds and sends them
//!   ([`crate::wire::arp::build_request`]), rate-limited further by a
//!   [`crate::ratelimit::TokenBucket`] if desired.
//! * [`hold`]: per-worker storage for frames waiting on resolution.
//! * [`proxy`]: answers pods asking for their gateway (Calico's 169.254.1.1).
//!
//! A worker's uplink flow: `lookup` -> `Reachable`/`Stale` rewrite and send (plus a probe if
//! asked); `Incomplete` hold (plus a request if asked); `Failed` drop with ICMP host unreachable;
//! `TableFull` or `SourceLimit` drop. Every worker calls `NeighTable::maintain` from its
//! timers (one of them ages the table per interval). On an ARP reply from the uplink:
//! `on_reply`, then `HoldQueue::release`. On an ARP request from the uplink: `on_request_from`
//! (merge), answer if it targets us.

pub mod hold;
pub mod proxy;
pub mod table;

pub use hold::{HoldError, HoldQueue};
pub use proxy::{proxy_arp_answer, ProxyArp, CALICO_GATEWAY};
pub use table::{NeighConfig, NeighEntry, NeighError, NeighLookup, NeighState, NeighTable};
