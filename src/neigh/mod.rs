//! Neighbours: ARP resolution on the uplink, proxy ARP for pods, packets held while resolving.

pub mod table;

pub use table::{NeighConfig, NeighEntry, NeighError, NeighLookup, NeighState, NeighTable};
