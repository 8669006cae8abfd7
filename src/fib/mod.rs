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

// ---- TEMPORARY SHIM (replaced by the real trie on merge) ----
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
pub struct Fib {
    routes: RwLock<BTreeMap<(u8, u32), NhId>>,
}
pub struct FibGuard<'a> {
    fib: &'a Fib,
}
pub struct FibWriter {
    fib: Arc<Fib>,
}
impl Fib {
    pub fn pin(&self) -> FibGuard<'_> {
        FibGuard { fib: self }
    }
}
impl FibGuard<'_> {
    pub fn lookup(&self, addr: u32) -> NhId {
        let r = self.fib.routes.read().unwrap();
        for len in (0..=32u8).rev() {
            if let Some(nh) = r.get(&(len, addr & prefix::mask(len))) {
                return *nh;
            }
        }
        NH_NONE
    }
    pub fn lookup_batch(&self, addrs: &[u32], out: &mut [NhId]) {
        for (a, o) in addrs.iter().zip(out.iter_mut()) {
            *o = self.lookup(*a);
        }
    }
}
impl FibWriter {
    pub fn new() -> (FibWriter, Arc<Fib>) {
        let fib = Arc::new(Fib { routes: RwLock::new(BTreeMap::new()) });
        (FibWriter { fib: fib.clone() }, fib)
    }
    pub fn insert(&mut self, p: Ipv4Prefix, nh: NhId) -> Option<NhId> {
        self.fib.routes.write().unwrap().insert((p.len(), p.addr()), nh)
    }
    pub fn remove(&mut self, p: Ipv4Prefix) -> Option<NhId> {
        self.fib.routes.write().unwrap().remove(&(p.len(), p.addr()))
    }
    pub fn load<I: IntoIterator<Item = (Ipv4Prefix, NhId)>>(&mut self, routes: I) {
        for (p, nh) in routes {
            self.insert(p, nh);
        }
    }
    pub fn len(&self) -> usize {
        self.fib.routes.read().unwrap().len()
    }
}
