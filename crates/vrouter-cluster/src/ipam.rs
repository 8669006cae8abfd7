//! IP address management as Calico does it: pools are carved into blocks (/26 by default),
//! a block is affine to one node (claimed by compare-and-swap), pods get addresses from
//! their node's blocks by handle (the container ID), and a node whose blocks are full and
//! that finds no unclaimed block borrows a free address from another node's block.
//!
//! State (all in etcd, Calico's `ipam/v2` layout; see docs/datastore.md):
//! - a block: its CIDR, affinity (`host:<node>` or none), per address an index into its
//!   attributes or null, the free ordinals in reuse order, and the attributes (handle, and
//!   node/namespace/pod);
//! - a handle: per block, how many addresses of that block the handle holds;
//! - an affinity key per (node, block), created with the block in one transaction.
//!
//! Every change is one etcd transaction that compares the revisions of every key it writes
//! (block and handle together), so two allocators can never both hand out one address: one
//! transaction wins, the other re-reads and tries again. Within one process, allocations for
//! one node are serialised (as Calico's CNI plugin holds a host-wide IPAM lock): otherwise
//! N concurrent allocations on one block cost O(N²) lost transactions. Across processes and
//! nodes, the compare-and-swap alone keeps addresses unique; conflicts are retried (bounded,
//! with jittered backoff).
//!
//! Releasing never frees a block's affinity, even when the block empties (a borrowed-from
//! block stays its owner's): blocks move only when a node is removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vrouter_types::Ipv4Prefix;

use crate::store::{keys, Kv, Op, Store, StoreError};

/// Attempts of one assign or release before it reports contention.
const MAX_ATTEMPTS: u32 = 64;

/// An enabled pool that applies to the node, as IPAM needs it (in order of preference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolRef {
    pub cidr: Ipv4Prefix,
    /// Prefix length of the pool's blocks (Calico's `blockSize`, 26 by default).
    pub block_size: u8,
}

/// Who an address is for, stored with it (Calico's secondary attributes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub node: String,
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl Attrs {
    fn to_secondary(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("node".to_string(), self.node.clone());
        if let Some(ns) = &self.namespace {
            m.insert("namespace".to_string(), ns.clone());
        }
        if let Some(p) = &self.pod {
            m.insert("pod".to_string(), p.clone());
        }
        m
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("IP pools {pools} are exhausted: every block is claimed and none has a free address")]
    Exhausted { pools: String },
    #[error("no enabled IP pool applies to node {node}: create an IPPool (or check its nodeSelector)")]
    NoPools { node: String },
    #[error("IP pool {cidr}: blockSize {block_size} is invalid (valid: {}..=32, at least the pool's prefix length)", cidr.len())]
    BadPool { cidr: Ipv4Prefix, block_size: u8 },
    #[error("handle {handle}: gave up after {attempts} attempts, each lost to a concurrent change")]
    Contention { handle: String, attempts: u32 },
    #[error("{key}: corrupt IPAM record: {msg}")]
    Corrupt { key: String, msg: String },
}

/// One allocation's attributes, as Calico stores them in a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationAttribute {
    pub handle_id: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secondary: BTreeMap<String, String>,
}

/// An allocation block (Calico's `AllocationBlock`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub cidr: Ipv4Prefix,
    /// `host:<node>`, or none for a block no node owns.
    pub affinity: Option<String>,
    /// Per address (ordinal from the block's first address): index into `attributes`, or null.
    pub allocations: Vec<Option<usize>>,
    /// Free ordinals, next to hand out first; released ordinals go to the back, so an address
    /// is reused as late as possible.
    pub unallocated: Vec<usize>,
    pub attributes: Vec<AllocationAttribute>,
    #[serde(default, rename = "strictAffinity")]
    pub strict_affinity: bool,
    /// The block key's revision when read (not stored).
    #[serde(skip)]
    pub mod_revision: i64,
}

impl Block {
    pub fn new(cidr: Ipv4Prefix, node: Option<&str>) -> Block {
        let n = block_len(cidr);
        Block {
            cidr,
            affinity: node.map(|n| format!("host:{n}")),
            allocations: vec![None; n],
            unallocated: (0..n).collect(),
            attributes: Vec::new(),
            strict_affinity: false,
            mod_revision: 0,
        }
    }

    /// The node this block is affine to.
    pub fn affine_node(&self) -> Option<&str> {
        self.affinity.as_deref().and_then(|a| a.strip_prefix("host:"))
    }

    pub fn ip(&self, ordinal: usize) -> Ipv4Addr {
        Ipv4Addr::from(self.cidr.addr() + ordinal as u32)
    }

    pub fn ordinal(&self, ip: Ipv4Addr) -> Option<usize> {
        self.cidr.contains(u32::from(ip)).then(|| (u32::from(ip) - self.cidr.addr()) as usize)
    }

    pub fn used(&self) -> usize {
        self.allocations.iter().filter(|a| a.is_some()).count()
    }

    pub fn free(&self) -> usize {
        self.unallocated.len()
    }

    /// The handle holding `ordinal`, if allocated.
    pub fn handle_of(&self, ordinal: usize) -> Option<&AllocationAttribute> {
        self.allocations.get(ordinal).copied().flatten().and_then(|i| self.attributes.get(i))
    }

    /// The addresses `handle` holds in this block.
    pub fn ips_of(&self, handle: &str) -> Vec<Ipv4Addr> {
        (0..self.allocations.len())
            .filter(|&o| self.handle_of(o).and_then(|a| a.handle_id.as_deref()) == Some(handle))
            .map(|o| self.ip(o))
            .collect()
    }

    /// Allocates the next free address to `handle`.
    fn assign(&mut self, handle: &str, attrs: &Attrs) -> Option<Ipv4Addr> {
        if self.unallocated.is_empty() {
            return None;
        }
        let ordinal = self.unallocated.remove(0);
        let attr = AllocationAttribute { handle_id: Some(handle.to_string()), secondary: attrs.to_secondary() };
        let idx = match self.attributes.iter().position(|a| *a == attr) {
            Some(i) => i,
            None => {
                self.attributes.push(attr);
                self.attributes.len() - 1
            }
        };
        self.allocations[ordinal] = Some(idx);
        Some(self.ip(ordinal))
    }

    /// Frees every address `handle` holds here; returns them.
    fn release_handle(&mut self, handle: &str) -> Vec<Ipv4Addr> {
        let ordinals: Vec<usize> = (0..self.allocations.len())
            .filter(|&o| self.handle_of(o).and_then(|a| a.handle_id.as_deref()) == Some(handle))
            .collect();
        for &o in &ordinals {
            self.allocations[o] = None;
            self.unallocated.push(o);
        }
        self.compact_attributes();
        ordinals.into_iter().map(|o| self.ip(o)).collect()
    }

    /// Frees one address; returns the handle that held it (`None`: it was free).
    fn release_ordinal(&mut self, ordinal: usize) -> Option<Option<String>> {
        let handle = self.handle_of(ordinal).map(|a| a.handle_id.clone());
        if self.allocations.get(ordinal).copied().flatten().is_some() {
            self.allocations[ordinal] = None;
            self.unallocated.push(ordinal);
            self.compact_attributes();
            Some(handle.flatten())
        } else {
            None
        }
    }

    /// Drops attributes no allocation refers to, renumbering the references (as Calico does).
    fn compact_attributes(&mut self) {
        let used: BTreeSet<usize> = self.allocations.iter().flatten().copied().collect();
        let mut remap = HashMap::new();
        let mut kept = Vec::new();
        for (i, a) in self.attributes.drain(..).enumerate() {
            if used.contains(&i) {
                remap.insert(i, kept.len());
                kept.push(a);
            }
        }
        self.attributes = kept;
        for a in self.allocations.iter_mut().flatten() {
            *a = remap[a];
        }
    }

    fn from_kv(kv: &Kv) -> Result<Block, IpamError> {
        let mut b: Block = serde_json::from_slice(&kv.value)
            .map_err(|e| IpamError::Corrupt { key: kv.key.clone(), msg: e.to_string() })?;
        if b.allocations.len() != block_len(b.cidr) {
            return Err(IpamError::Corrupt {
                key: kv.key.clone(),
                msg: format!("{} allocations for a block of {}", b.allocations.len(), block_len(b.cidr)),
            });
        }
        b.mod_revision = kv.mod_revision;
        Ok(b)
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a block serialises")
    }
}

/// A handle: how many addresses it holds in which block (Calico's `IPAMHandle`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handle {
    #[serde(rename = "handleID")]
    pub handle_id: String,
    /// Block CIDR (`a.b.c.d/len`) to the number of addresses held there.
    pub block: BTreeMap<String, u32>,
    #[serde(skip)]
    pub mod_revision: i64,
}

impl Handle {
    fn from_kv(kv: &Kv) -> Result<Handle, IpamError> {
        let mut h: Handle = serde_json::from_slice(&kv.value)
            .map_err(|e| IpamError::Corrupt { key: kv.key.clone(), msg: e.to_string() })?;
        h.mod_revision = kv.mod_revision;
        Ok(h)
    }

    fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a handle serialises")
    }

    /// The write that stores this handle after a change: create, update, or delete if empty.
    fn op(&self, existed: bool) -> Op {
        let key = keys::handle(&self.handle_id);
        match (existed, self.block.is_empty()) {
            (false, _) => Op::Create { key, value: self.to_json() },
            (true, false) => Op::Update { key, value: self.to_json(), expected: self.mod_revision },
            (true, true) => Op::Delete { key, expected: Some(self.mod_revision) },
        }
    }
}

/// Addresses in a block of this CIDR.
fn block_len(cidr: Ipv4Prefix) -> usize {
    1usize << (32 - cidr.len() as u32)
}

fn validate(node: &str, pools: &[PoolRef]) -> Result<(), IpamError> {
    if pools.is_empty() {
        return Err(IpamError::NoPools { node: node.to_string() });
    }
    for p in pools {
        if p.block_size > 32 || p.block_size < p.cidr.len() {
            return Err(IpamError::BadPool { cidr: p.cidr, block_size: p.block_size });
        }
    }
    Ok(())
}

fn pool_names(pools: &[PoolRef]) -> String {
    pools.iter().map(|p| p.cidr.to_string()).collect::<Vec<_>>().join(", ")
}

fn in_pools(cidr: Ipv4Prefix, pools: &[PoolRef]) -> bool {
    pools.iter().any(|p| p.cidr.covers(&cidr))
}

/// The per-node lock serialising this process's allocations for one node (module doc).
fn node_lock(node: &str) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: Mutex<Option<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> = Mutex::new(None);
    let mut g = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
    g.get_or_insert_with(HashMap::new).entry(node.to_string()).or_default().clone()
}

/// Sleeps a random 0..2^attempt ms (capped at 64 ms) so racing allocators fall out of step.
async fn backoff(attempt: u32) {
    let cap = 1u64 << attempt.min(6);
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    tokio::time::sleep(Duration::from_micros(r % (cap * 1000))).await;
}

/// A stable hash of the node name, so each node starts its search for a free block at its
/// own place in the pool (fewer nodes racing for the same block).
fn node_hash(node: &str) -> u64 {
    node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Why one attempt stopped.
enum Step {
    /// Lost a compare-and-swap: read again and retry.
    Retry,
    Fail(IpamError),
}

impl From<StoreError> for Step {
    fn from(e: StoreError) -> Step {
        Step::Fail(e.into())
    }
}
impl From<IpamError> for Step {
    fn from(e: IpamError) -> Step {
        Step::Fail(e)
    }
}

/// Commits `ops`; a lost compare becomes `Retry`.
async fn commit(store: &Store, ops: &[Op]) -> Result<i64, Step> {
    match store.txn(ops).await {
        Ok(r) => Ok(r),
        Err(StoreError::Conflict { .. } | StoreError::Exists { .. } | StoreError::NotFound { .. }) => Err(Step::Retry),
        Err(e) => Err(e.into()),
    }
}

async fn get_block(store: &Store, cidr: Ipv4Prefix) -> Result<Option<Block>, IpamError> {
    store.get(&keys::block(cidr)).await?.map(|kv| Block::from_kv(&kv)).transpose()
}

async fn get_handle(store: &Store, handle: &str) -> Result<Option<Handle>, IpamError> {
    store.get(&keys::handle(handle)).await?.map(|kv| Handle::from_kv(&kv)).transpose()
}

/// Assigns an address to `handle` from `pools` on behalf of `node`, or returns the address
/// the handle already holds (so a retried CNI ADD gets the same address). Order: a free
/// address in a block affine to `node`; a newly claimed block; a free address in any block of
/// the pools (borrowed); else [`IpamError::Exhausted`] naming the pools.
pub async fn assign(
    store: &Store,
    node: &str,
    handle: &str,
    pools: &[PoolRef],
    attrs: &Attrs,
) -> Result<Ipv4Addr, IpamError> {
    validate(node, pools)?;
    let lock = node_lock(node);
    let _serialised = lock.lock().await;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        match try_assign(store, node, handle, pools, attrs).await {
            Ok(ip) => return Ok(ip),
            Err(Step::Retry) => continue,
            Err(Step::Fail(e)) => return Err(e),
        }
    }
    Err(IpamError::Contention { handle: handle.to_string(), attempts: MAX_ATTEMPTS })
}

async fn try_assign(
    store: &Store,
    node: &str,
    handle: &str,
    pools: &[PoolRef],
    attrs: &Attrs,
) -> Result<Ipv4Addr, Step> {
    // The handle and every block affine to the node, in one read.
    let (affs, _) = store.list(&keys::affinities(node)).await?;
    let affine: Vec<Ipv4Prefix> =
        affs.iter().filter_map(|kv| keys::parse_cidr_name(&kv.key)).filter(|c| in_pools(*c, pools)).collect();
    let mut wanted = vec![keys::handle(handle)];
    wanted.extend(affine.iter().map(|c| keys::block(*c)));
    let mut got = store.get_many(&wanted).await?.into_iter();
    let existing = got.next().flatten().map(|kv| Handle::from_kv(&kv)).transpose()?;
    // A block that does not parse is passed over (`ipam check` reports it), not fatal to
    // every allocation of the node.
    let affine_blocks: Vec<Block> = got.flatten().filter_map(|kv| Block::from_kv(&kv).ok()).collect();
    if let Some(h) = &existing {
        for cidr in h.block.keys() {
            let Ok(cidr) = cidr.parse::<Ipv4Prefix>() else { continue };
            let b = match affine_blocks.iter().find(|b| b.cidr == cidr) {
                Some(b) => Some(b.clone()),
                None => get_block(store, cidr).await?,
            };
            if let Some(ip) = b.and_then(|b| b.ips_of(handle).first().copied()) {
                return Ok(ip);
            }
        }
    }
    // A free address in a block affine to the node, in CIDR order.
    if let Some(b) = affine_blocks.into_iter().find(|b| b.affine_node() == Some(node) && b.free() > 0) {
        return assign_in(store, b, handle, attrs, existing.as_ref()).await;
    }
    // A block of our own.
    match claim(store, node, pools).await {
        Ok(b) => return assign_in(store, b, handle, attrs, existing.as_ref()).await,
        Err(Step::Fail(IpamError::Exhausted { .. })) => {}
        Err(e) => return Err(e),
    }
    // Borrow: the first free address in any block of the pools (the emptiest block first,
    // so borrowing spreads rather than filling one node's block to its last address).
    let (kvs, _) = store.list(keys::BLOCKS).await?;
    let mut candidates: Vec<Block> = Vec::new();
    for kv in &kvs {
        let Ok(b) = Block::from_kv(kv) else { continue };
        if in_pools(b.cidr, pools) && b.free() > 0 && !b.strict_affinity {
            candidates.push(b);
        }
    }
    candidates.sort_by_key(|b| std::cmp::Reverse(b.free()));
    if let Some(b) = candidates.into_iter().next() {
        return assign_in(store, b, handle, attrs, existing.as_ref()).await;
    }
    Err(Step::Fail(IpamError::Exhausted { pools: pool_names(pools) }))
}

/// One transaction: the block with the new allocation, and the handle counting it.
async fn assign_in(
    store: &Store,
    mut b: Block,
    handle: &str,
    attrs: &Attrs,
    existing: Option<&Handle>,
) -> Result<Ipv4Addr, Step> {
    let ip = b.assign(handle, attrs).ok_or(Step::Retry)?;
    let mut h = existing.cloned().unwrap_or_else(|| Handle {
        handle_id: handle.to_string(),
        block: BTreeMap::new(),
        mod_revision: 0,
    });
    // A stale handle (its addresses gone) is rewritten to what the blocks now say.
    h.block.retain(|_, _| false);
    h.block.insert(b.cidr.to_string(), 1);
    let ops = [
        Op::Update { key: keys::block(b.cidr), value: b.to_json(), expected: b.mod_revision },
        h.op(existing.is_some()),
    ];
    commit(store, &ops).await?;
    Ok(ip)
}

/// Claims a free block of `pools` for `node` (block and affinity created in one
/// transaction); returns it. Used by assign and by the agent to pre-claim a node's block.
pub async fn claim_block(store: &Store, node: &str, pools: &[PoolRef]) -> Result<Ipv4Prefix, IpamError> {
    validate(node, pools)?;
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        match claim(store, node, pools).await {
            Ok(b) => return Ok(b.cidr),
            Err(Step::Retry) => continue,
            Err(Step::Fail(e)) => return Err(e),
        }
    }
    Err(IpamError::Contention { handle: format!("(block claim for {node})"), attempts: MAX_ATTEMPTS })
}

async fn claim(store: &Store, node: &str, pools: &[PoolRef]) -> Result<Block, Step> {
    let (kvs, _) = store.list(keys::BLOCKS).await?;
    let existing: BTreeSet<Ipv4Prefix> = kvs.iter().filter_map(|kv| keys::parse_cidr_name(&kv.key)).collect();
    let start = node_hash(node);
    let mut lost = false;
    for p in pools {
        let count = 1u64 << (p.block_size - p.cidr.len());
        let step = 1u64 << (32 - p.block_size as u32);
        for i in 0..count {
            let idx = (start + i) % count;
            let cidr = Ipv4Prefix::new_masked(p.cidr.addr() + (idx * step) as u32, p.block_size);
            // A block overlapping an existing one (another pool's block size) is not free.
            if existing.iter().any(|e| e.covers(&cidr) || cidr.covers(e)) {
                continue;
            }
            let mut b = Block::new(cidr, Some(node));
            let ops = [
                Op::Create { key: keys::block(cidr), value: b.to_json() },
                Op::Create { key: keys::affinity(node, cidr), value: br#"{"state":"confirmed"}"#.to_vec() },
            ];
            match commit(store, &ops).await {
                Ok(rev) => {
                    b.mod_revision = rev;
                    return Ok(b);
                }
                // Another node took it: try the next.
                Err(Step::Retry) => lost = true,
                Err(e) => return Err(e),
            }
        }
    }
    if lost {
        // Every block we tried went to someone else meanwhile: our view was stale.
        return Err(Step::Retry);
    }
    Err(Step::Fail(IpamError::Exhausted { pools: pool_names(pools) }))
}

/// Frees every address `handle` holds; returns them. Unknown handle: `Ok(vec![])` (a
/// repeated CNI DEL).
pub async fn release(store: &Store, handle: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        match try_release(store, handle).await {
            Ok(ips) => return Ok(ips),
            Err(Step::Retry) => continue,
            Err(Step::Fail(e)) => return Err(e),
        }
    }
    Err(IpamError::Contention { handle: handle.to_string(), attempts: MAX_ATTEMPTS })
}

async fn try_release(store: &Store, handle: &str) -> Result<Vec<Ipv4Addr>, Step> {
    let Some(h) = get_handle(store, handle).await? else { return Ok(Vec::new()) };
    let mut ops = Vec::new();
    let mut ips = Vec::new();
    for cidr in h.block.keys() {
        let Ok(cidr) = cidr.parse::<Ipv4Prefix>() else { continue };
        let Some(mut b) = get_block(store, cidr).await? else { continue };
        let freed = b.release_handle(handle);
        if !freed.is_empty() {
            ops.push(Op::Update { key: keys::block(cidr), value: b.to_json(), expected: b.mod_revision });
            ips.extend(freed);
        }
    }
    ops.push(Op::Delete { key: keys::handle(handle), expected: Some(h.mod_revision) });
    commit(store, &ops).await?;
    Ok(ips)
}

/// Frees one address, whoever holds it (`vrouterctl ipam release --ip`). An address that is
/// free or in no block: `Ok(())`.
pub async fn release_ip(store: &Store, ip: Ipv4Addr) -> Result<(), IpamError> {
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            backoff(attempt).await;
        }
        match try_release_ip(store, ip).await {
            Ok(()) => return Ok(()),
            Err(Step::Retry) => continue,
            Err(Step::Fail(e)) => return Err(e),
        }
    }
    Err(IpamError::Contention { handle: ip.to_string(), attempts: MAX_ATTEMPTS })
}

async fn try_release_ip(store: &Store, ip: Ipv4Addr) -> Result<(), Step> {
    let Some(mut b) = blocks(store).await?.into_iter().find(|b| b.cidr.contains(u32::from(ip))) else {
        return Ok(());
    };
    let ordinal = b.ordinal(ip).expect("the block contains the address");
    let Some(handle) = b.release_ordinal(ordinal) else { return Ok(()) };
    let mut ops = vec![Op::Update { key: keys::block(b.cidr), value: b.to_json(), expected: b.mod_revision }];
    if let Some(handle) = handle {
        if let Some(mut h) = get_handle(store, &handle).await? {
            let key = b.cidr.to_string();
            match h.block.get_mut(&key) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    h.block.remove(&key);
                }
            }
            ops.push(h.op(true));
        }
    }
    commit(store, &ops).await?;
    Ok(())
}

/// Gives up `node`'s blocks (its Node is being removed): an empty block is deleted with its
/// affinity, so another node can claim it; a block that still holds addresses keeps them but
/// loses its affinity (others may borrow from it; its pods' addresses stay theirs). Returns
/// the blocks released.
pub async fn release_node_blocks(store: &Store, node: &str) -> Result<Vec<Ipv4Prefix>, IpamError> {
    let mut released = Vec::new();
    let (affs, _) = store.list(&keys::affinities(node)).await?;
    for aff in affs {
        let Some(cidr) = keys::parse_cidr_name(&aff.key) else { continue };
        let mut attempt = 0;
        loop {
            if attempt > 0 {
                backoff(attempt).await;
            }
            attempt += 1;
            let Some(aff) = store.get(&aff.key).await? else { break };
            let mut ops = Vec::new();
            if let Some(mut b) = get_block(store, cidr).await? {
                if b.used() == 0 {
                    ops.push(Op::Delete { key: keys::block(cidr), expected: Some(b.mod_revision) });
                } else if b.affine_node() == Some(node) {
                    b.affinity = None;
                    ops.push(Op::Update { key: keys::block(cidr), value: b.to_json(), expected: b.mod_revision });
                }
            }
            ops.push(Op::Delete { key: aff.key.clone(), expected: Some(aff.mod_revision) });
            match commit(store, &ops).await {
                Ok(_) => {
                    released.push(cidr);
                    break;
                }
                Err(Step::Retry) if attempt < MAX_ATTEMPTS => continue,
                Err(Step::Retry) => {
                    return Err(IpamError::Contention { handle: format!("(blocks of {node})"), attempts: attempt })
                }
                Err(Step::Fail(e)) => return Err(e),
            }
        }
    }
    Ok(released)
}

/// Every block, in CIDR order.
pub async fn blocks(store: &Store) -> Result<Vec<Block>, IpamError> {
    let (kvs, _) = store.list(keys::BLOCKS).await?;
    kvs.iter().map(Block::from_kv).collect()
}

/// Every handle, in ID order.
pub async fn handles(store: &Store) -> Result<Vec<Handle>, IpamError> {
    let (kvs, _) = store.list(keys::HANDLES).await?;
    kvs.iter().map(Handle::from_kv).collect()
}

/// The blocks affine to `node` (from its affinity keys), in CIDR order.
pub async fn affine_blocks(store: &Store, node: &str) -> Result<Vec<Ipv4Prefix>, IpamError> {
    let (kvs, _) = store.list(&keys::affinities(node)).await?;
    Ok(kvs.iter().filter_map(|kv| keys::parse_cidr_name(&kv.key)).collect())
}

/// `vrouterctl ipam show`: one line per block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockSummary {
    pub cidr: Ipv4Prefix,
    pub affinity: Option<String>,
    pub used: usize,
    pub free: usize,
}

/// `vrouterctl ipam show --ip A`: where the address stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum IpInfo {
    /// In no block (not in a pool, or its block was never claimed).
    Unknown {
        ip: Ipv4Addr,
    },
    Free {
        ip: Ipv4Addr,
        block: Ipv4Prefix,
        affinity: Option<String>,
    },
    Allocated {
        ip: Ipv4Addr,
        block: Ipv4Prefix,
        affinity: Option<String>,
        handle: Option<String>,
        /// node, namespace, pod.
        attributes: BTreeMap<String, String>,
    },
}

pub async fn show(store: &Store) -> Result<Vec<BlockSummary>, IpamError> {
    Ok(blocks(store)
        .await?
        .into_iter()
        .map(|b| BlockSummary { cidr: b.cidr, used: b.used(), free: b.free(), affinity: b.affinity })
        .collect())
}

pub async fn show_ip(store: &Store, ip: Ipv4Addr) -> Result<IpInfo, IpamError> {
    let Some(b) = blocks(store).await?.into_iter().find(|b| b.cidr.contains(u32::from(ip))) else {
        return Ok(IpInfo::Unknown { ip });
    };
    let ordinal = b.ordinal(ip).expect("the block contains the address");
    Ok(match b.handle_of(ordinal) {
        None => IpInfo::Free { ip, block: b.cidr, affinity: b.affinity.clone() },
        Some(a) => IpInfo::Allocated {
            ip,
            block: b.cidr,
            affinity: b.affinity.clone(),
            handle: a.handle_id.clone(),
            attributes: a.secondary.clone(),
        },
    })
}

impl fmt::Display for BlockSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<20} {:<24} {:>5} used {:>5} free",
            self.cidr.to_string(),
            self.affinity.as_deref().unwrap_or("(none)"),
            self.used,
            self.free
        )
    }
}

impl fmt::Display for IpInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IpInfo::Unknown { ip } => write!(f, "{ip}: in no IPAM block"),
            IpInfo::Free { ip, block, affinity } => {
                write!(f, "{ip}: free, block {block} ({})", affinity.as_deref().unwrap_or("no affinity"))
            }
            IpInfo::Allocated { ip, block, affinity, handle, attributes } => {
                write!(
                    f,
                    "{ip}: allocated, block {block} ({}), handle {}",
                    affinity.as_deref().unwrap_or("no affinity"),
                    handle.as_deref().unwrap_or("(none)")
                )?;
                for (k, v) in attributes {
                    write!(f, ", {k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

/// What `ipam check` found. Empty everywhere: consistent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Allocated addresses no endpoint uses: (address, handle).
    pub leaks: Vec<(Ipv4Addr, Option<String>)>,
    /// An address used by two endpoints, or allocated in two (overlapping) blocks: the address
    /// and every holder (endpoint handles, or `block <cidr>: <handle>`).
    pub duplicates: Vec<(Ipv4Addr, Vec<String>)>,
    /// Endpoints whose address IPAM has not allocated, or allocated to another handle:
    /// (address, endpoint's handle, IPAM's handle).
    pub unallocated_in_use: Vec<(Ipv4Addr, String, Option<String>)>,
    /// Handles that hold no address in any block.
    pub orphan_handles: Vec<String>,
    /// Handle counts that disagree with the blocks: (handle, block, handle says, block holds).
    pub bad_counts: Vec<(String, Ipv4Prefix, u32, u32)>,
    /// Blocks whose own bookkeeping is inconsistent (ordinal in both lists, attribute index
    /// out of range), or whose affinity key is missing; affinity keys without a block; block
    /// and handle records that do not parse.
    pub bad_blocks: Vec<(String, String)>,
    /// Addresses counted, for the summary.
    pub allocated: usize,
    pub endpoints: usize,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.leaks.is_empty()
            && self.duplicates.is_empty()
            && self.unallocated_in_use.is_empty()
            && self.orphan_handles.is_empty()
            && self.bad_counts.is_empty()
            && self.bad_blocks.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} addresses allocated, {} endpoints", self.allocated, self.endpoints)?;
        let h = |h: &Option<String>| h.clone().unwrap_or_else(|| "(no handle)".into());
        for (ip, handle) in &self.leaks {
            writeln!(f, "leak: {ip} allocated to {} but used by no endpoint", h(handle))?;
        }
        for (ip, holders) in &self.duplicates {
            writeln!(f, "duplicate: {ip} held by {}", holders.join(", "))?;
        }
        for (ip, ep, ipam) in &self.unallocated_in_use {
            match ipam {
                None => writeln!(f, "unallocated: endpoint {ep} uses {ip}, which IPAM has not allocated")?,
                Some(o) => writeln!(f, "mismatch: endpoint {ep} uses {ip}, which IPAM allocated to {o}")?,
            }
        }
        for handle in &self.orphan_handles {
            writeln!(f, "orphan handle: {handle} holds no address")?;
        }
        for (handle, block, says, holds) in &self.bad_counts {
            writeln!(f, "bad count: handle {handle} counts {says} in {block}, the block holds {holds}")?;
        }
        for (what, msg) in &self.bad_blocks {
            writeln!(f, "inconsistent: {what}: {msg}")?;
        }
        if self.is_clean() {
            writeln!(f, "no problems found")?;
        }
        Ok(())
    }
}

/// Checks IPAM against itself and against the endpoints in use (`(address, handle)` of every
/// workload endpoint in the cluster): leaks, duplicates, addresses in use but not allocated,
/// orphan handles, handle counts, and each block's bookkeeping. Reads everything at once;
/// run it when allocations are quiet, or a pod being created shows up as a passing leak.
pub async fn check(store: &Store, endpoints: &[(Ipv4Addr, String)]) -> Result<CheckReport, IpamError> {
    // Records that do not parse are findings here, not errors: check is the tool for broken state.
    let mut unreadable = Vec::new();
    let (kvs, _) = store.list(keys::BLOCKS).await?;
    let blocks: Vec<Block> = kvs
        .iter()
        .filter_map(|kv| Block::from_kv(kv).map_err(|e| unreadable.push((kv.key.clone(), e.to_string()))).ok())
        .collect();
    let (kvs, _) = store.list(keys::HANDLES).await?;
    let handles: Vec<Handle> = kvs
        .iter()
        .filter_map(|kv| Handle::from_kv(kv).map_err(|e| unreadable.push((kv.key.clone(), e.to_string()))).ok())
        .collect();
    let (affs, _) = store.list(keys::HOSTS).await?;
    let mut r = check_state(&blocks, &handles, &affs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(), endpoints);
    r.bad_blocks.extend(unreadable);
    Ok(r)
}

fn check_state(
    blocks: &[Block],
    handles: &[Handle],
    affinity_keys: &[String],
    endpoints: &[(Ipv4Addr, String)],
) -> CheckReport {
    let mut r = CheckReport { endpoints: endpoints.len(), ..CheckReport::default() };
    // Address -> every (block, handle) allocation of it.
    let mut allocs: BTreeMap<Ipv4Addr, Vec<(Ipv4Prefix, Option<String>)>> = BTreeMap::new();
    // (handle, block) -> addresses the block holds for it.
    let mut held: BTreeMap<(String, Ipv4Prefix), u32> = BTreeMap::new();
    for b in blocks {
        let n = block_len(b.cidr);
        let mut seen = vec![false; n];
        for &o in &b.unallocated {
            if o >= n || seen[o] {
                r.bad_blocks.push((b.cidr.to_string(), format!("free ordinal {o} out of range or listed twice")));
            } else {
                seen[o] = true;
            }
        }
        for (o, a) in b.allocations.iter().enumerate() {
            let Some(i) = *a else {
                if !seen.get(o).copied().unwrap_or(false) {
                    r.bad_blocks.push((b.cidr.to_string(), format!("ordinal {o} neither allocated nor free")));
                }
                continue;
            };
            if seen[o] {
                r.bad_blocks.push((b.cidr.to_string(), format!("ordinal {o} both allocated and free")));
            }
            let Some(attr) = b.attributes.get(i) else {
                r.bad_blocks.push((b.cidr.to_string(), format!("ordinal {o} refers to missing attribute {i}")));
                continue;
            };
            r.allocated += 1;
            allocs.entry(b.ip(o)).or_default().push((b.cidr, attr.handle_id.clone()));
            if let Some(h) = &attr.handle_id {
                *held.entry((h.clone(), b.cidr)).or_default() += 1;
            }
        }
        if let Some(node) = b.affine_node() {
            let key = keys::affinity(node, b.cidr);
            if !affinity_keys.contains(&key) {
                r.bad_blocks.push((b.cidr.to_string(), format!("affine to {node} but {key} is missing")));
            }
        }
    }
    let block_set: BTreeSet<Ipv4Prefix> = blocks.iter().map(|b| b.cidr).collect();
    for key in affinity_keys {
        if let Some(c) = keys::parse_cidr_name(key) {
            if !block_set.contains(&c) {
                r.bad_blocks.push((key.clone(), "affinity for a block that does not exist".into()));
            }
        }
    }
    // Handles against the blocks.
    let mut handle_ids = BTreeSet::new();
    for h in handles {
        handle_ids.insert(h.handle_id.clone());
        let mut total = 0;
        for (cidr, &says) in &h.block {
            let holds = cidr.parse::<Ipv4Prefix>().ok().and_then(|c| held.get(&(h.handle_id.clone(), c)).copied());
            total += holds.unwrap_or(0);
            if holds.unwrap_or(0) != says {
                let c = cidr.parse().unwrap_or(Ipv4Prefix::new_masked(0, 32));
                r.bad_counts.push((h.handle_id.clone(), c, says, holds.unwrap_or(0)));
            }
        }
        if total == 0 {
            r.orphan_handles.push(h.handle_id.clone());
        }
    }
    for ((h, c), n) in &held {
        let counted = handles.iter().find(|x| &x.handle_id == h).and_then(|x| x.block.get(&c.to_string()));
        if counted.is_none() {
            r.bad_counts.push((h.clone(), *c, 0, *n));
        }
    }
    // Endpoints against the allocations.
    let mut users: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
    for (ip, handle) in endpoints {
        users.entry(*ip).or_default().push(handle.clone());
    }
    for (ip, hs) in &users {
        if hs.len() > 1 {
            r.duplicates.push((*ip, hs.clone()));
        }
        match allocs.get(ip) {
            None => {
                for h in hs {
                    r.unallocated_in_use.push((*ip, h.clone(), None));
                }
            }
            Some(a) => {
                for h in hs {
                    if !a.iter().any(|(_, ah)| ah.as_deref() == Some(h.as_str())) {
                        r.unallocated_in_use.push((*ip, h.clone(), a[0].1.clone()));
                    }
                }
            }
        }
    }
    for (ip, a) in &allocs {
        if a.len() > 1 {
            r.duplicates.push((
                *ip,
                a.iter().map(|(c, h)| format!("block {c}: {}", h.as_deref().unwrap_or("(no handle)"))).collect(),
            ));
        }
        if !users.contains_key(ip) {
            for (_, h) in a {
                r.leaks.push((*ip, h.clone()));
            }
        }
    }
    r.bad_counts.sort();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }
    fn attrs(node: &str) -> Attrs {
        Attrs { node: node.into(), namespace: Some("default".into()), pod: Some("p".into()) }
    }

    #[test]
    fn a_block_hands_out_each_address_once_and_reuses_released_ones_last() {
        let mut b = Block::new(p("10.0.0.0/30"), Some("n1"));
        let ips: Vec<_> = ["a", "b", "c", "d"].iter().map(|h| b.assign(h, &attrs("n1")).unwrap()).collect();
        assert_eq!(ips, ["10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"].map(|s| s.parse::<Ipv4Addr>().unwrap()));
        assert_eq!(b.assign("e", &attrs("n1")), None, "full");
        assert_eq!(b.release_handle("b"), vec!["10.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert!(b.release_handle("b").is_empty(), "idempotent");
        assert_eq!(b.assign("e", &attrs("n1")), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(b.ips_of("e"), vec!["10.0.0.1".parse::<Ipv4Addr>().unwrap()]);
        assert_eq!((b.used(), b.free()), (4, 0));
    }

    #[test]
    fn attributes_are_shared_and_compacted_on_release() {
        let mut b = Block::new(p("10.0.0.0/29"), Some("n1"));
        b.assign("a", &attrs("n1"));
        b.assign("a", &attrs("n1"));
        b.assign("b", &attrs("n1"));
        assert_eq!(b.attributes.len(), 2, "one attribute per distinct holder");
        b.release_handle("a");
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(b.handle_of(2).and_then(|a| a.handle_id.as_deref()), Some("b"));
        assert_eq!(b.release_ordinal(2), Some(Some("b".into())));
        assert_eq!(b.release_ordinal(2), None);
        assert!(b.attributes.is_empty());
    }

    #[test]
    fn block_json_is_calicos_shape() {
        let mut b = Block::new(p("10.0.0.0/31"), Some("n1"));
        b.assign("h1", &Attrs { node: "n1".into(), namespace: None, pod: None });
        let v: serde_json::Value = serde_json::from_slice(&b.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cidr": "10.0.0.0/31", "affinity": "host:n1", "allocations": [0, null],
                "unallocated": [1], "attributes": [{"handle_id": "h1", "secondary": {"node": "n1"}}],
                "strictAffinity": false})
        );
        let h = Handle { handle_id: "h1".into(), block: [("10.0.0.0/31".to_string(), 1)].into(), mod_revision: 0 };
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&h.to_json()).unwrap(),
            serde_json::json!({"handleID": "h1", "block": {"10.0.0.0/31": 1}})
        );
    }

    fn state() -> (Vec<Block>, Vec<Handle>, Vec<String>) {
        let mut b = Block::new(p("10.0.0.0/30"), Some("n1"));
        b.assign("h1", &attrs("n1"));
        b.assign("h2", &attrs("n1"));
        let hs = ["h1", "h2"]
            .map(|h| Handle { handle_id: h.into(), block: [("10.0.0.0/30".to_string(), 1)].into(), mod_revision: 0 })
            .to_vec();
        (vec![b], hs, vec![keys::affinity("n1", p("10.0.0.0/30"))])
    }

    #[test]
    fn check_is_clean_on_consistent_state() {
        let (b, h, a) = state();
        let eps = vec![("10.0.0.0".parse().unwrap(), "h1".into()), ("10.0.0.1".parse().unwrap(), "h2".into())];
        let r = check_state(&b, &h, &a, &eps);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.allocated, 2);
    }

    #[test]
    fn check_finds_leaks_duplicates_orphans_and_bad_counts() {
        let (b, mut h, a) = state();
        h.push(Handle { handle_id: "gone".into(), block: [("10.0.0.0/30".to_string(), 1)].into(), mod_revision: 0 });
        h[1].block.insert("10.0.0.0/30".into(), 2);
        // h2's address unused by an endpoint; two endpoints on 10.0.0.0; one on an unallocated address.
        let eps = vec![
            ("10.0.0.0".parse().unwrap(), "h1".into()),
            ("10.0.0.0".parse().unwrap(), "h9".into()),
            ("10.0.0.3".parse().unwrap(), "h8".into()),
        ];
        let r = check_state(&b, &h, &a, &eps);
        assert_eq!(r.leaks, vec![("10.0.0.1".parse().unwrap(), Some("h2".into()))]);
        assert_eq!(r.duplicates, vec![("10.0.0.0".parse().unwrap(), vec!["h1".into(), "h9".into()])]);
        assert_eq!(
            r.unallocated_in_use,
            vec![
                ("10.0.0.0".parse().unwrap(), "h9".into(), Some("h1".into())),
                ("10.0.0.3".parse().unwrap(), "h8".into(), None)
            ]
        );
        assert_eq!(r.orphan_handles, vec!["gone".to_string()]);
        assert_eq!(r.bad_counts, vec![("gone".into(), p("10.0.0.0/30"), 1, 0), ("h2".into(), p("10.0.0.0/30"), 2, 1)]);
        assert!(r.bad_blocks.is_empty());
    }

    #[test]
    fn check_finds_broken_block_bookkeeping_and_affinities() {
        let (mut b, h, _) = state();
        b[0].unallocated.push(0); // ordinal 0 both allocated and free
        let r = check_state(&b, &h, &[keys::affinity("n2", p("10.9.0.0/26"))], &[]);
        let msgs: Vec<String> = r.bad_blocks.iter().map(|(w, m)| format!("{w}: {m}")).collect();
        assert!(msgs.iter().any(|m| m.contains("ordinal 0 both allocated and free")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("affine to n1 but")), "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("affinity for a block that does not exist")), "{msgs:?}");
    }
}
