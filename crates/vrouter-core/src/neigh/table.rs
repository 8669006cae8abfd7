//! The uplink neighbour cache: IPv4 next hop -> MAC, shared by all workers through an `Arc`.
//!
//! # Layout
//! A fixed array of cache-line-sized slots, open addressing with linear probing, allocated once in
//! [`NeighTable::new`]. A slot holds two words that matter for correctness:
//!
//! * `key: AtomicU64` = `incarnation << 32 | ip`. `ip == 0` is EMPTY (never used; ends a probe
//!   chain), `ip == 255.255.255.255` is a TOMBSTONE (deleted; chains continue through it, inserts
//!   reuse it). Neither address can be a neighbour. The 32-bit incarnation is bumped on every
//!   claim, so a key value never repeats.
//! * `word: AtomicU64` = `MAC (48 bits) | state (3) | probes (3) | incarnation mod 1024 (10)`.
//!   The MAC and the state that makes it valid live in one atomic, so a MAC can never be read
//!   half-updated, and every state change is one compare-and-swap on this word.
//!
//! Timestamps (`updated_ms`, `asked_ms`, `used_ms`) are separate atomics. They drive timers only;
//! a racy timestamp can delay or advance a timer by one interval but never pairs a MAC with the
//! wrong IP.
//!
//! # Memory ordering and the slot protocol
//! * Claim (insert): CAS `key` EMPTY/TOMBSTONE -> `(ip, inc+1)`, then store the first `word`
//!   (state != FREE, tagged with the new incarnation) with Release. Only the claimer may move a
//!   word out of FREE.
//! * Delete: CAS `word` from its current value to FREE (the linearisation point: afterwards no
//!   CAS expecting a live word can succeed), give back the slot's source charge (see Bounds),
//!   then store `key` = TOMBSTONE with Release. Nobody else can touch `key` meanwhile:
//!   claimers only CAS free keys.
//! * Read: load `key` (Acquire), load `word` (Acquire), reload `key`. The Acquire on `key`
//!   synchronises with the claimer's CAS, which came after the previous owner's FREE, so the word
//!   read is FREE or belongs to this or a later incarnation. If `key` is unchanged, the slot kept
//!   that incarnation throughout and the word's tag must match; a FREE word or any mismatch means
//!   "changed under us" and the reader retries. Hence a returned MAC was written for that IP.
//! * Two threads missing the same IP may both claim a slot. After claiming, an inserter rescans the
//!   chain (SeqCst, Dekker-style: of two racing inserters at least one sees the other) and yields
//!   if an earlier copy exists. Readers always use the first copy in probe order; [`expire`]
//!   deletes any later copy left over, so a duplicate costs at most one extra ARP request.
//! * [`expire`] also turns tombstones back into EMPTY where no probe chain runs through them
//!   (see `sweep_tombstones`), so lookups of unknown addresses stay short after churn.
//! * Eviction is a delete (the same CAS to FREE), so it keeps every invariant above; a reader
//!   holding the evicted incarnation's key retries and finds the IP absent.
//!
//! Every operation is lock-free: a thread never waits for another to finish; a CAS that loses
//! re-reads and re-decides (bounded retries, then the conservative answer).
//!
//! # Bounds (issue 9: one pod used to fill the table for good)
//! * **Ageing.** [`NeighTable::maintain`] runs [`expire`] at most every [`EXPIRE_EVERY_MS`],
//!   whichever worker calls it first (a CAS on the due time elects one); every worker calls it
//!   from its timers.
//! * **Eviction.** A miss in a full table evicts, from a bounded sample of [`EVICT_SAMPLE`]
//!   slots (a rotating hand, as Linux's forced GC and conntrack's early drop bound their
//!   work): a Failed entry first, then an Incomplete one that has waited at least `retrans_ms`
//!   (its first request went unanswered), oldest first, then the least recently used Stale one.
//!   Reachable, Probe (in use) and static entries are never evicted. With nothing to evict the
//!   miss is `TableFull`.
//! * **Per source.** Unresolved entries are charged to the source address of the packet that
//!   created them (for on-link destinations, the only ones a sender chooses; next hops of
//!   routes come from configuration and are not charged). A source may hold at most
//!   `unresolved_per_source` of them; beyond that a miss is `SourceLimit`
//!   (`neigh/source-limit`) and creates nothing. Sources are hashed into [`SOURCE_BUCKETS`]
//!   counters with a per-table random multiplier (two sources sharing a bucket share its
//!   budget; which ones do is not predictable). The charge is held in the slot's `owner`
//!   word (`incarnation << 32 | bucket + 1`), stored before the slot's first word is
//!   published, and given back exactly once (a CAS of `owner` to 0 that names the
//!   incarnation) when the entry resolves or is deleted; a CAS for a later incarnation cannot
//!   match.
//!
//! [`expire`]: NeighTable::expire

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::wire::arp::is_unicast_mac;

/// Timers and size of the table. Defaults follow Linux (`base_reachable_time` 30 s,
/// `gc_stale_time` 60 s, `retrans_time` 1 s, `mcast_solicit` 3) except the failed hold-down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighConfig {
    /// Maximum number of entries (the slot array is twice the next power of two, so probe
    /// chains stay short).
    pub capacity: usize,
    /// A confirmed entry is trusted this long, then becomes Stale.
    pub reachable_ms: u64,
    /// A Stale (or abandoned Incomplete) entry not looked up for this long is removed.
    pub stale_gc_ms: u64,
    /// Minimum interval between two requests for one neighbour.
    pub retrans_ms: u64,
    /// Requests sent before giving up (1..=7).
    pub max_probes: u8,
    /// How long a Failed entry answers `Failed` (callers drop and send ICMP unreachable) before
    /// resolution may start again.
    pub failed_hold_ms: u64,
    /// Unresolved entries (Incomplete or Failed) one source address may have created and not
    /// yet seen resolved or removed (see the module docs).
    pub unresolved_per_source: usize,
}

impl Default for NeighConfig {
    fn default() -> Self {
        NeighConfig {
            capacity: 1024,
            reachable_ms: 30_000,
            stale_gc_ms: 60_000,
            retrans_ms: 1_000,
            max_probes: 3,
            failed_hold_ms: 20_000,
            unresolved_per_source: 64,
        }
    }
}

/// What the data path should do with a packet for a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighLookup {
    /// Confirmed recently: rewrite and send.
    Reachable([u8; 6]),
    /// Not confirmed recently but usable: send with `mac`; if `probe`, also send one request
    /// now (unicast to `mac` per RFC 1122 2.3.2.1; this caller won the per-entry rate limit).
    Stale { mac: [u8; 6], probe: bool },
    /// Unresolved: hold the packet. If `send_request`, broadcast one request now (at most once
    /// per `retrans_ms`, at most `max_probes` times).
    Incomplete { send_request: bool },
    /// Resolution failed recently: drop (ICMP host unreachable).
    Failed,
    /// No room to start resolution: drop (`neigh/table-full`).
    TableFull,
    /// The packet's source has `unresolved_per_source` unresolved entries already: drop
    /// (`neigh/source-limit`), nothing created.
    SourceLimit,
}

/// Entry state as shown by the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeighState {
    Incomplete,
    Reachable,
    Stale,
    /// Stale and being re-confirmed (requests outstanding).
    Probe,
    Failed,
    Static,
}

impl NeighState {
    pub const fn name(self) -> &'static str {
        match self {
            NeighState::Incomplete => "incomplete",
            NeighState::Reachable => "reachable",
            NeighState::Stale => "stale",
            NeighState::Probe => "probe",
            NeighState::Failed => "failed",
            NeighState::Static => "static",
        }
    }
}

/// A snapshot of one entry, for the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeighEntry {
    pub ip: u32,
    /// `None` while Incomplete or Failed.
    pub mac: Option<[u8; 6]>,
    pub state: NeighState,
    /// Requests sent in the current resolution/probe round.
    pub probes: u8,
    /// When the entry entered its state (confirmation time for Reachable).
    pub updated_ms: u64,
    /// Last lookup (to a granularity of 250 ms).
    pub used_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NeighError {
    #[error("ARP reply for {} which we did not ask about (ignored: possible cache poisoning)", fmt_ip(*.0))]
    Unsolicited(u32),
    #[error("MAC {} is not a unicast address; a neighbour must have a unicast, non-zero MAC", fmt_mac(.0))]
    InvalidMac([u8; 6]),
    #[error("{} cannot be a neighbour (0.0.0.0 and 255.255.255.255 are reserved)", fmt_ip(*.0))]
    InvalidAddress(u32),
    #[error("neighbour table full ({0} entries); raise neigh capacity")]
    TableFull(usize),
    #[error("neighbour config: {0}")]
    BadConfig(String),
}

fn fmt_ip(ip: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(ip)
}

fn fmt_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

// --- key word ---
const KEY_EMPTY: u32 = 0;
const KEY_TOMB: u32 = u32::MAX;

#[inline]
const fn key_ip(k: u64) -> u32 {
    k as u32
}
#[inline]
const fn key_inc(k: u64) -> u32 {
    (k >> 32) as u32
}
#[inline]
const fn make_key(ip: u32, inc: u32) -> u64 {
    (inc as u64) << 32 | ip as u64
}

// --- state word ---
const MAC_MASK: u64 = (1 << 48) - 1;
const STATE_SHIFT: u32 = 48;
const PROBES_SHIFT: u32 = 51;
const TAG_SHIFT: u32 = 54;
const TAG_MASK: u64 = 0x3ff;

const FREE: u8 = 0;
const INCOMPLETE: u8 = 1;
const REACHABLE: u8 = 2;
const STALE: u8 = 3;
const PROBE: u8 = 4;
const FAILED: u8 = 5;
const STATIC: u8 = 6;

#[inline]
fn pack(mac: [u8; 6], state: u8, probes: u8, inc: u32) -> u64 {
    let m = u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]]);
    m | (state as u64 & 7) << STATE_SHIFT | (probes as u64 & 7) << PROBES_SHIFT | (inc as u64 & TAG_MASK) << TAG_SHIFT
}
#[inline]
fn w_mac(w: u64) -> [u8; 6] {
    let b = (w & MAC_MASK).to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}
#[inline]
const fn w_state(w: u64) -> u8 {
    (w >> STATE_SHIFT & 7) as u8
}
#[inline]
const fn w_probes(w: u64) -> u8 {
    (w >> PROBES_SHIFT & 7) as u8
}
#[inline]
const fn w_tag(w: u64) -> u64 {
    w >> TAG_SHIFT & TAG_MASK
}
#[inline]
const fn w_with(w: u64, state: u8, probes: u8) -> u64 {
    w & !(0x3f << STATE_SHIFT) | (state as u64) << STATE_SHIFT | (probes as u64) << PROBES_SHIFT
}

/// `used_ms` is only rewritten when it is this stale, so hot lookups from several cores do not
/// keep bouncing the slot's cache line.
const USED_GRAIN_MS: u64 = 250;
/// How often an operation re-reads a slot that changed under it before giving up.
const RETRIES: usize = 16;
/// [`NeighTable::maintain`] runs the ageing pass at most this often.
pub const EXPIRE_EVERY_MS: u64 = 200;
/// Slots one eviction attempt looks at (about half hold an entry when the table is full).
pub const EVICT_SAMPLE: usize = 64;
/// Eviction attempts (each on the next sample) before a miss gives up with `TableFull`.
const EVICT_ATTEMPTS: usize = 4;
/// Counters the per-source charge is hashed into.
pub const SOURCE_BUCKETS: usize = 4096;

#[repr(align(64))]
#[derive(Default)]
struct Slot {
    key: AtomicU64,
    word: AtomicU64,
    updated_ms: AtomicU64,
    asked_ms: AtomicU64,
    used_ms: AtomicU64,
    /// `incarnation << 32 | source bucket + 1` while the entry is charged to a source; 0 not.
    owner: AtomicU64,
}

/// Whether `w`, loaded after `k` was loaded from `s.key`, belongs to incarnation `k`: the key
/// has not changed since (so the slot stayed with that incarnation) and the word carries its tag.
#[inline]
fn consistent(k: u64, s: &Slot, w: u64) -> bool {
    s.key.load(Ordering::Acquire) == k && w_tag(w) == key_inc(k) as u64 & TAG_MASK
}

#[cfg_attr(test, derive(Debug))]
enum Found {
    /// A consistent (key, word) pair for the IP, word not FREE.
    Entry {
        idx: usize,
        key: u64,
        word: u64,
    },
    /// The IP's slot is being created or deleted right now.
    Busy,
    Absent,
}

enum Pace {
    Send,
    Wait,
    Exhausted,
    Changed,
}

/// Why [`NeighTable::insert`] created nothing.
enum InsertError {
    /// No room, nothing evictable.
    Full,
    /// The IP appeared meanwhile: re-find it.
    Exists,
    /// The source holds its unresolved entries already.
    SourceLimit,
}

/// The shared neighbour cache. See the module docs for the protocol.
pub struct NeighTable {
    slots: Box<[Slot]>,
    mask: usize,
    shift: u32,
    live: AtomicUsize,
    cfg: NeighConfig,
    /// Unresolved entries charged to each source bucket.
    by_source: Box<[AtomicU32]>,
    /// Odd multiplier hashing a source into `by_source` (random: collisions not chosen).
    source_mul: u32,
    /// Where the next eviction sample starts.
    hand: AtomicUsize,
    /// When `maintain` next runs `expire`.
    next_expire_ms: AtomicU64,
    evicted: AtomicU64,
}

impl NeighTable {
    /// Allocates every slot; nothing is allocated afterwards (except by [`NeighTable::entries`]).
    pub fn new(cfg: NeighConfig) -> Result<Self, NeighError> {
        if cfg.capacity == 0 || cfg.capacity > 1 << 24 {
            return Err(NeighError::BadConfig(format!("capacity {} must be 1..=16777216", cfg.capacity)));
        }
        if !(1..=7).contains(&cfg.max_probes) {
            return Err(NeighError::BadConfig(format!("max_probes {} must be 1..=7", cfg.max_probes)));
        }
        if cfg.retrans_ms == 0 {
            return Err(NeighError::BadConfig("retrans_ms must be at least 1".into()));
        }
        if cfg.unresolved_per_source == 0 {
            return Err(NeighError::BadConfig("unresolved_per_source must be at least 1".into()));
        }
        let n = (cfg.capacity.next_power_of_two() * 2).max(2);
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::default()).collect();
        Ok(NeighTable {
            mask: n - 1,
            shift: 32 - n.trailing_zeros(),
            slots,
            live: AtomicUsize::new(0),
            cfg,
            by_source: (0..SOURCE_BUCKETS).map(|_| AtomicU32::new(0)).collect(),
            source_mul: crate::random_seed() as u32 | 1,
            hand: AtomicUsize::new(0),
            next_expire_ms: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    /// Entries evicted so far to make room for new ones.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Unresolved entries charged to `src` (and any source sharing its bucket).
    pub fn unresolved_from(&self, src: u32) -> usize {
        self.by_source[self.source_bucket(src)].load(Ordering::Relaxed) as usize
    }

    #[inline]
    fn source_bucket(&self, src: u32) -> usize {
        (src.wrapping_mul(self.source_mul) >> (32 - SOURCE_BUCKETS.trailing_zeros())) as usize
    }

    /// Gives back the source charge of incarnation `inc` of slot `s`, if it still holds one.
    #[inline]
    fn release_owner(&self, s: &Slot, inc: u32) {
        let o = s.owner.load(Ordering::Acquire);
        if o != 0 && key_inc(o) == inc && s.owner.compare_exchange(o, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.by_source[(o as u32 - 1) as usize].fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Reserves room for one entry, evicting if the table is full.
    fn reserve(&self, now: u64) -> bool {
        let cap = self.cfg.capacity;
        for _ in 0..=EVICT_ATTEMPTS {
            if self.live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1)).is_ok() {
                return true;
            }
            if !self.evict_one(now) {
                return false;
            }
        }
        false
    }

    /// Evicts the best victim among the next [`EVICT_SAMPLE`] slots (see the module docs).
    /// False if the sample held nothing evictable.
    fn evict_one(&self, now: u64) -> bool {
        let start = self.hand.fetch_add(EVICT_SAMPLE, Ordering::Relaxed);
        // (class, age): lower class first, then older first.
        let mut best: Option<((u8, u64), usize, u64, u64)> = None;
        for j in 0..EVICT_SAMPLE.min(self.slots.len()) {
            let idx = (start + j) & self.mask;
            let s = &self.slots[idx];
            let k = s.key.load(Ordering::Acquire);
            if matches!(key_ip(k), KEY_EMPTY | KEY_TOMB) {
                continue;
            }
            let w = s.word.load(Ordering::Acquire);
            if w_state(w) == FREE || !consistent(k, s, w) {
                continue;
            }
            let since = |t: &AtomicU64| now.saturating_sub(t.load(Ordering::Relaxed));
            let rank = match w_state(w) {
                FAILED => (0, since(&s.updated_ms)),
                INCOMPLETE if since(&s.updated_ms) >= self.cfg.retrans_ms => (1, since(&s.updated_ms)),
                STALE => (2, since(&s.used_ms)),
                _ => continue,
            };
            if best.is_none_or(|(r, ..)| (rank.0, u64::MAX - rank.1) < (r.0, u64::MAX - r.1)) {
                best = Some((rank, idx, k, w));
            }
        }
        let Some((_, idx, k, w)) = best else { return false };
        if self.delete_slot(idx, k, w) {
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        // Lost the race: someone else changed or freed it; the caller re-checks the count.
        true
    }

    pub fn config(&self) -> &NeighConfig {
        &self.cfg
    }

    /// Number of entries (including at most a transient duplicate or an entry being created).
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn home(&self, ip: u32) -> usize {
        // Fibonacci hashing: consecutive addresses spread over the table.
        (ip.wrapping_mul(0x9e37_79b1) >> self.shift) as usize & self.mask
    }

    /// First slot in probe order whose key is `ip`, with a consistent word.
    fn find(&self, ip: u32) -> Found {
        'retry: for _ in 0..RETRIES {
            let mut i = self.home(ip);
            for _ in 0..self.slots.len() {
                let s = &self.slots[i];
                let k = s.key.load(Ordering::Acquire);
                match key_ip(k) {
                    KEY_EMPTY => return Found::Absent,
                    x if x == ip => {
                        let w = s.word.load(Ordering::Acquire);
                        if w_state(w) == FREE {
                            return Found::Busy;
                        }
                        if !consistent(k, s, w) {
                            core::hint::spin_loop();
                            continue 'retry;
                        }
                        return Found::Entry { idx: i, key: k, word: w };
                    }
                    _ => {}
                }
                i = (i + 1) & self.mask;
            }
            return Found::Absent;
        }
        Found::Busy
    }

    /// Position of the first key equal to `ip` in its probe chain (any word state).
    fn first_index(&self, ip: u32, order: Ordering) -> Option<usize> {
        let mut i = self.home(ip);
        for _ in 0..self.slots.len() {
            match key_ip(self.slots[i].key.load(order)) {
                KEY_EMPTY => return None,
                x if x == ip => return Some(i),
                _ => {}
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Creates an entry for `ip`, charged to `src`'s bucket if `src` is not 0 (see the module
    /// docs), evicting to make room if the table is full.
    fn insert(&self, ip: u32, src: u32, mac: [u8; 6], state: u8, probes: u8, now: u64) -> Result<usize, InsertError> {
        let bucket = (src != 0).then(|| self.source_bucket(src));
        if let Some(b) = bucket {
            let limit = self.cfg.unresolved_per_source.min(u32::MAX as usize) as u32;
            let charged =
                self.by_source[b].fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1));
            if charged.is_err() {
                return Err(InsertError::SourceLimit);
            }
        }
        let unreserve = |live: bool| {
            if live {
                self.live.fetch_sub(1, Ordering::AcqRel);
            }
            if let Some(b) = bucket {
                self.by_source[b].fetch_sub(1, Ordering::AcqRel);
            }
        };
        if !self.reserve(now) {
            unreserve(false);
            return Err(InsertError::Full);
        }
        'rescan: for _ in 0..RETRIES {
            let mut free: Option<(usize, u64)> = None;
            let mut i = self.home(ip);
            for _ in 0..self.slots.len() {
                let k = self.slots[i].key.load(Ordering::SeqCst);
                match key_ip(k) {
                    x if x == ip => {
                        unreserve(true);
                        return Err(InsertError::Exists);
                    }
                    KEY_EMPTY => {
                        free.get_or_insert((i, k));
                        break;
                    }
                    KEY_TOMB => {
                        free.get_or_insert((i, k));
                    }
                    _ => {}
                }
                i = (i + 1) & self.mask;
            }
            let Some((idx, old)) = free else { break };
            let inc = key_inc(old).wrapping_add(1);
            let s = &self.slots[idx];
            if s.key.compare_exchange(old, make_key(ip, inc), Ordering::SeqCst, Ordering::Relaxed).is_err() {
                continue 'rescan;
            }
            // We own the slot; its word is FREE and only we may change that. The Release store
            // publishes the timestamps and the owner to readers that Acquire the word.
            s.updated_ms.store(now, Ordering::Relaxed);
            s.asked_ms.store(now, Ordering::Relaxed);
            s.used_ms.store(now, Ordering::Relaxed);
            s.owner.store(bucket.map_or(0, |b| make_key(b as u32 + 1, inc)), Ordering::Relaxed);
            let w = pack(mac, state, probes, inc);
            s.word.store(w, Ordering::Release);
            // A racing inserter of the same IP may have claimed an earlier slot: yield to it.
            // (The delete gives the charge back.)
            if let Some(first) = self.first_index(ip, Ordering::SeqCst) {
                if first != idx && self.delete_slot(idx, make_key(ip, inc), w) {
                    return Err(InsertError::Exists);
                }
            }
            return Ok(idx);
        }
        unreserve(true);
        Err(InsertError::Full)
    }

    /// Deletes the slot if its word is still `word`. See the module docs.
    fn delete_slot(&self, idx: usize, key: u64, word: u64) -> bool {
        let s = &self.slots[idx];
        let free = word & !(MAC_MASK | 0x3f << STATE_SHIFT); // keeps the tag, state FREE
        if s.word.compare_exchange(word, free, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        // The key still names this incarnation (nobody can claim the slot before the tombstone),
        // so this cannot release a later incarnation's charge.
        self.release_owner(s, key_inc(key));
        s.key.store(make_key(KEY_TOMB, key_inc(key)), Ordering::Release);
        self.live.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Rate-limits requests for one entry: the thread that advances `asked_ms` owns this
    /// interval, then counts the probe (or fails the entry) with a CAS on the word. A caller
    /// that `may_ask` not (its own request budget is spent) leaves a due request to the next
    /// caller that may: the entry neither loses an interval nor counts a probe nobody sent.
    fn pace(&self, s: &Slot, word: u64, now: u64, may_ask: bool) -> Pace {
        if w_probes(word) == 0 {
            // Created or restarted by a caller that could not ask: due at once. The word CAS
            // picks the one caller that sends.
            if !may_ask {
                return Pace::Wait;
            }
            // The first request goes out now: its wait for an answer starts now too (eviction
            // reads it from `updated_ms`).
            s.asked_ms.store(now, Ordering::Relaxed);
            s.updated_ms.store(now, Ordering::Relaxed);
            return match s.word.compare_exchange(
                word,
                w_with(word, w_state(word), 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => Pace::Send,
                Err(_) => Pace::Changed,
            };
        }
        let asked = s.asked_ms.load(Ordering::Acquire);
        if now.saturating_sub(asked) < self.cfg.retrans_ms {
            return Pace::Wait;
        }
        if !may_ask && w_probes(word) < self.cfg.max_probes {
            return Pace::Wait;
        }
        if s.asked_ms.compare_exchange(asked, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return Pace::Wait;
        }
        let mut w = word;
        loop {
            if w_state(w) != w_state(word) || w_tag(w) != w_tag(word) {
                return Pace::Changed;
            }
            let (next, result) = if w_probes(w) >= self.cfg.max_probes {
                s.updated_ms.store(now, Ordering::Relaxed);
                (pack([0; 6], FAILED, 0, w_tag(w) as u32), Pace::Exhausted)
            } else {
                (w_with(w, w_state(w), w_probes(w) + 1), Pace::Send)
            };
            match s.word.compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return result,
                Err(cur) => w = cur,
            }
        }
    }

    /// Resolves `ip` for a packet about to be sent at `now_ms`. A miss creates an Incomplete
    /// entry (evicting if full) and asks the caller to send the first request. Allocation-free
    /// and lock-free. The entry is charged to no source: use this for next hops that come
    /// from routes, [`NeighTable::lookup_from`] for destinations a sender picks.
    pub fn lookup(&self, ip: u32, now_ms: u64) -> NeighLookup {
        self.lookup_from(ip, 0, now_ms)
    }

    /// [`NeighTable::lookup`] for a packet from `src` (0: charged to nobody): a miss is
    /// `SourceLimit` when `src` holds `unresolved_per_source` unresolved entries already.
    pub fn lookup_from(&self, ip: u32, src: u32, now_ms: u64) -> NeighLookup {
        self.lookup_paced(ip, src, now_ms, true)
    }

    /// [`NeighTable::lookup_from`] for a caller that may send a request only if `may_ask` (its
    /// budget of requests has room): if not, no answer asks for one, and a request that falls
    /// due stays due for the next caller that may send it, at once rather than a whole
    /// `retrans_ms` later. An entry created this way has sent nothing yet.
    pub fn lookup_paced(&self, ip: u32, src: u32, now_ms: u64, may_ask: bool) -> NeighLookup {
        if ip == KEY_EMPTY || ip == KEY_TOMB {
            return NeighLookup::Failed;
        }
        for _ in 0..RETRIES {
            let (idx, w) = match self.find(ip) {
                Found::Absent => match self.insert(ip, src, [0; 6], INCOMPLETE, may_ask as u8, now_ms) {
                    Ok(_) => return NeighLookup::Incomplete { send_request: may_ask },
                    Err(InsertError::Full) => return NeighLookup::TableFull,
                    Err(InsertError::SourceLimit) => return NeighLookup::SourceLimit,
                    Err(InsertError::Exists) => continue,
                },
                Found::Busy => {
                    core::hint::spin_loop();
                    continue;
                }
                Found::Entry { idx, word, .. } => (idx, word),
            };
            let s = &self.slots[idx];
            if now_ms.saturating_sub(s.used_ms.load(Ordering::Relaxed)) >= USED_GRAIN_MS {
                s.used_ms.store(now_ms, Ordering::Relaxed);
            }
            let mac = w_mac(w);
            let age = now_ms.saturating_sub(s.updated_ms.load(Ordering::Acquire));
            match w_state(w) {
                STATIC => return NeighLookup::Reachable(mac),
                REACHABLE if age < self.cfg.reachable_ms => return NeighLookup::Reachable(mac),
                REACHABLE | STALE if !may_ask => return NeighLookup::Stale { mac, probe: false },
                REACHABLE | STALE => {
                    // First use since going stale: start re-confirming. The word CAS picks the
                    // single thread that sends the first probe.
                    s.asked_ms.store(now_ms, Ordering::Relaxed);
                    s.updated_ms.store(now_ms, Ordering::Relaxed);
                    if s.word.compare_exchange(w, w_with(w, PROBE, 1), Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return NeighLookup::Stale { mac, probe: true };
                    }
                }
                PROBE => match self.pace(s, w, now_ms, may_ask) {
                    Pace::Send => return NeighLookup::Stale { mac, probe: true },
                    Pace::Wait => return NeighLookup::Stale { mac, probe: false },
                    Pace::Exhausted => return NeighLookup::Failed,
                    Pace::Changed => {}
                },
                INCOMPLETE => match self.pace(s, w, now_ms, may_ask) {
                    Pace::Send => return NeighLookup::Incomplete { send_request: true },
                    Pace::Wait => return NeighLookup::Incomplete { send_request: false },
                    Pace::Exhausted => return NeighLookup::Failed,
                    Pace::Changed => {}
                },
                FAILED if age < self.cfg.failed_hold_ms => return NeighLookup::Failed,
                FAILED => {
                    // Hold-down over: start a new resolution round.
                    s.asked_ms.store(now_ms, Ordering::Relaxed);
                    s.updated_ms.store(now_ms, Ordering::Relaxed);
                    let next = pack([0; 6], INCOMPLETE, may_ask as u8, w_tag(w) as u32);
                    if s.word.compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        return NeighLookup::Incomplete { send_request: may_ask };
                    }
                }
                _ => {}
            }
        }
        // Only reached under extreme contention on one entry: hold the packet, send nothing.
        NeighLookup::Incomplete { send_request: false }
    }

    /// An ARP reply from `ip` saying it is at `mac`. Accepted only if we asked (Incomplete,
    /// Probe, or Failed within its hold-down); a reply repeating the MAC we already have is
    /// accepted without effect. Everything else is `Unsolicited`: we never let an unasked reply
    /// create or change an entry (ARP cache poisoning).
    pub fn on_reply(&self, ip: u32, mac: [u8; 6], now_ms: u64) -> Result<(), NeighError> {
        if ip == KEY_EMPTY || ip == KEY_TOMB {
            return Err(NeighError::InvalidAddress(ip));
        }
        if !is_unicast_mac(&mac) {
            return Err(NeighError::InvalidMac(mac));
        }
        for _ in 0..RETRIES {
            let Found::Entry { idx, key, word: w } = self.find(ip) else {
                return Err(NeighError::Unsolicited(ip));
            };
            let s = &self.slots[idx];
            match w_state(w) {
                INCOMPLETE | PROBE | FAILED => {
                    s.updated_ms.store(now_ms, Ordering::Relaxed);
                    let next = pack(mac, REACHABLE, 0, w_tag(w) as u32);
                    if s.word.compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        self.release_owner(s, key_inc(key));
                        return Ok(());
                    }
                }
                REACHABLE | STALE | STATIC if w_mac(w) == mac => return Ok(()),
                _ => return Err(NeighError::Unsolicited(ip)),
            }
        }
        Err(NeighError::Unsolicited(ip))
    }

    /// RFC 826 merge for an ARP request (or gratuitous ARP) from `ip`/`mac`: if an entry for the
    /// sender exists, take its MAC. Never creates an entry. A request proves the sender can
    /// reach us, not that it hears us, so a changed or newly learnt MAC goes to Stale (usable,
    /// re-confirmed on next use), as Linux does. Static entries are never changed. Returns
    /// whether an entry changed.
    pub fn on_request_from(&self, ip: u32, mac: [u8; 6], now_ms: u64) -> bool {
        if ip == KEY_EMPTY || ip == KEY_TOMB || !is_unicast_mac(&mac) {
            return false;
        }
        for _ in 0..RETRIES {
            let Found::Entry { idx, key, word: w } = self.find(ip) else {
                return false;
            };
            let s = &self.slots[idx];
            let st = w_state(w);
            if st == STATIC || (matches!(st, REACHABLE | STALE | PROBE) && w_mac(w) == mac) {
                return false;
            }
            s.updated_ms.store(now_ms, Ordering::Relaxed);
            let next = pack(mac, STALE, 0, w_tag(w) as u32);
            if s.word.compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                self.release_owner(s, key_inc(key));
                return true;
            }
        }
        false
    }

    /// Adds or overwrites a permanent entry (never aged, never changed by ARP).
    pub fn add_static(&self, ip: u32, mac: [u8; 6]) -> Result<(), NeighError> {
        if ip == KEY_EMPTY || ip == KEY_TOMB {
            return Err(NeighError::InvalidAddress(ip));
        }
        if !is_unicast_mac(&mac) {
            return Err(NeighError::InvalidMac(mac));
        }
        loop {
            match self.find(ip) {
                Found::Absent => match self.insert(ip, 0, mac, STATIC, 0, 0) {
                    Ok(_) => return Ok(()),
                    Err(InsertError::Full | InsertError::SourceLimit) => {
                        return Err(NeighError::TableFull(self.cfg.capacity))
                    }
                    Err(InsertError::Exists) => {}
                },
                Found::Busy => std::thread::yield_now(),
                Found::Entry { idx, key, word: w } => {
                    let next = pack(mac, STATIC, 0, w_tag(w) as u32);
                    if self.slots[idx].word.compare_exchange(w, next, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                        self.release_owner(&self.slots[idx], key_inc(key));
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Removes the entry for `ip` (static or not). Returns whether one was removed.
    pub fn remove(&self, ip: u32) -> bool {
        if ip == KEY_EMPTY || ip == KEY_TOMB {
            return false;
        }
        loop {
            match self.find(ip) {
                Found::Absent => return false,
                Found::Busy => std::thread::yield_now(),
                Found::Entry { idx, key, word } => {
                    if self.delete_slot(idx, key, word) {
                        return true;
                    }
                }
            }
        }
    }

    /// Removes every learnt (not static) entry, or only `ip`'s; returns how many went. Frames
    /// held for a flushed neighbour wait for its new resolution (the worker looks it up
    /// again). Static entries come from the config and stay.
    pub fn flush(&self, ip: Option<u32>) -> usize {
        let mut n = 0;
        for _ in 0..RETRIES {
            let mut raced = false;
            for (idx, _, k, eip, w) in self.occupied() {
                if ip.is_some_and(|x| x != eip) || w_state(w) == STATIC {
                    continue;
                }
                if self.delete_slot(idx, k, w) {
                    n += 1;
                } else {
                    raced = true;
                }
            }
            if !raced {
                break;
            }
        }
        n
    }

    /// Runs [`NeighTable::expire`] if [`EXPIRE_EVERY_MS`] have passed since it last ran
    /// through here; at most one of the callers racing at that moment runs it. Call it from
    /// every worker's timer. Returns whether this call ran it.
    pub fn maintain(&self, now_ms: u64) -> bool {
        let due = self.next_expire_ms.load(Ordering::Relaxed);
        if now_ms < due {
            return false;
        }
        let next = now_ms.saturating_add(EXPIRE_EVERY_MS);
        if self.next_expire_ms.compare_exchange(due, next, Ordering::AcqRel, Ordering::Relaxed).is_err() {
            return false;
        }
        self.expire(now_ms);
        true
    }

    /// Slots holding an entry whose key and word agree right now, as (index, slot, key, ip,
    /// word). Slots being claimed or freed concurrently are skipped; the next pass sees them.
    fn occupied(&self) -> impl Iterator<Item = (usize, &Slot, u64, u32, u64)> + '_ {
        self.slots.iter().enumerate().filter_map(|(idx, s)| {
            let k = s.key.load(Ordering::Acquire);
            let ip = key_ip(k);
            if ip == KEY_EMPTY || ip == KEY_TOMB {
                return None;
            }
            let w = s.word.load(Ordering::Acquire);
            (w_state(w) != FREE && consistent(k, s, w)).then_some((idx, s, k, ip, w))
        })
    }

    /// Periodic ageing (call every few hundred ms from one thread; concurrent calls are safe):
    /// Reachable -> Stale after `reachable_ms`; Stale/Probe/Incomplete not looked up for
    /// `stale_gc_ms` removed; Incomplete/Probe whose last request went unanswered -> Failed,
    /// as is an Incomplete whose last request is `max_probes` x `retrans_ms` old;
    /// Failed removed after `failed_hold_ms`; duplicate or orphaned copies removed; tombstones
    /// at the end of a probe chain cleared so misses stay short. O(slots); never allocates.
    pub fn expire(&self, now_ms: u64) {
        let c = &self.cfg;
        for (idx, s, k, ip, w) in self.occupied() {
            if self.first_index(ip, Ordering::Acquire) != Some(idx) {
                self.delete_slot(idx, k, w);
                continue;
            }
            let since = |t: &AtomicU64| now_ms.saturating_sub(t.load(Ordering::Relaxed));
            match w_state(w) {
                REACHABLE if since(&s.updated_ms) >= c.reachable_ms => {
                    s.updated_ms.store(now_ms, Ordering::Relaxed);
                    let _ = s.word.compare_exchange(w, w_with(w, STALE, 0), Ordering::AcqRel, Ordering::Relaxed);
                }
                STALE | INCOMPLETE | PROBE if since(&s.used_ms) >= c.stale_gc_ms => {
                    self.delete_slot(idx, k, w);
                }
                // Requests exhausted, or an Incomplete nobody looked up for a whole resolution
                // round (its requests stopped with the lookups: Linux fails it by then).
                INCOMPLETE | PROBE
                    if (w_probes(w) >= c.max_probes && since(&s.asked_ms) >= c.retrans_ms)
                        || (w_state(w) == INCOMPLETE && since(&s.asked_ms) >= c.retrans_ms * c.max_probes as u64) =>
                {
                    s.updated_ms.store(now_ms, Ordering::Relaxed);
                    let next = pack([0; 6], FAILED, 0, w_tag(w) as u32);
                    let _ = s.word.compare_exchange(w, next, Ordering::AcqRel, Ordering::Relaxed);
                }
                FAILED if since(&s.updated_ms) >= c.failed_hold_ms => {
                    self.delete_slot(idx, k, w);
                }
                _ => {}
            }
        }
        self.sweep_tombstones();
    }

    /// Turns tombstones back into EMPTY where that cannot cut a probe chain: a tombstone followed
    /// by EMPTY ends its chain anyway. Walking backwards from an EMPTY slot clears whole runs.
    ///
    /// One race remains: an inserter that passed this slot while it was live may be about to
    /// claim the EMPTY slot after it. Its entry would then sit behind a new EMPTY, invisible to
    /// lookups (which recreate the IP, costing one extra request). Such an orphan is never
    /// returned for another IP and is deleted by the next `expire` (it is not the first copy in
    /// its chain), so the race costs at most one request and one slot for one round.
    fn sweep_tombstones(&self) {
        let n = self.slots.len();
        let empty = (0..n).find(|&i| key_ip(self.slots[i].key.load(Ordering::Acquire)) == KEY_EMPTY);
        // After heavy churn there may be no EMPTY slot at all; seed one from a tombstone no chain
        // passes through (always exists when the table holds no live entry).
        let Some(e) = empty.or_else(|| (0..n).find(|&p| self.clear_tombstone(p, true))) else {
            return;
        };
        for step in 1..n {
            let i = (e + n - step) & self.mask;
            let next = self.slots[(i + 1) & self.mask].key.load(Ordering::Acquire);
            if key_ip(next) == KEY_EMPTY {
                self.clear_tombstone(i, false);
            }
        }
    }

    /// Clears the tombstone at `p` if it still is one (and, with `check_chains`, if no live key
    /// after it probed through it). Keeps the incarnation counter, so key values never repeat.
    fn clear_tombstone(&self, p: usize, check_chains: bool) -> bool {
        let k = self.slots[p].key.load(Ordering::Acquire);
        if key_ip(k) != KEY_TOMB {
            return false;
        }
        if check_chains {
            let dist = |from: usize, to: usize| to.wrapping_sub(from) & self.mask;
            for step in 1..self.slots.len() {
                let q = (p + step) & self.mask;
                match key_ip(self.slots[q].key.load(Ordering::Acquire)) {
                    KEY_EMPTY => break,
                    KEY_TOMB => {}
                    // Its probe path home..q crosses p iff p lies in [home, q).
                    ip if dist(self.home(ip), q) >= dist(p, q) => return false,
                    _ => {}
                }
            }
        }
        let empty = make_key(KEY_EMPTY, key_inc(k));
        self.slots[p].key.compare_exchange(k, empty, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// A snapshot of every entry (slow path: allocates).
    pub fn entries(&self) -> Vec<NeighEntry> {
        let mut out = Vec::new();
        for (idx, s, _, ip, w) in self.occupied() {
            if self.first_index(ip, Ordering::Acquire) != Some(idx) {
                continue;
            }
            let state = match w_state(w) {
                INCOMPLETE => NeighState::Incomplete,
                REACHABLE => NeighState::Reachable,
                STALE => NeighState::Stale,
                PROBE => NeighState::Probe,
                FAILED => NeighState::Failed,
                _ => NeighState::Static,
            };
            let mac = (!matches!(state, NeighState::Incomplete | NeighState::Failed)).then(|| w_mac(w));
            out.push(NeighEntry {
                ip,
                mac,
                state,
                probes: w_probes(w),
                updated_ms: s.updated_ms.load(Ordering::Relaxed),
                used_ms: s.used_ms.load(Ordering::Relaxed),
            });
        }
        out.sort_by_key(|e| e.ip);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const GW: u32 = 0x0a00_0001; // 10.0.0.1
    const GW_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn table() -> NeighTable {
        NeighTable::new(NeighConfig::default()).unwrap()
    }

    impl NeighTable {
        fn idx(&self, ip: u32) -> usize {
            match self.find(ip) {
                Found::Entry { idx, .. } => idx,
                other => panic!("{ip}: {other:?}"),
            }
        }
    }

    fn state_of(t: &NeighTable, ip: u32) -> Option<NeighState> {
        t.entries().into_iter().find(|e| e.ip == ip).map(|e| e.state)
    }

    #[test]
    fn table_is_shareable_between_workers() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NeighTable>();
        assert_eq!(std::mem::size_of::<Slot>(), 64, "one slot per cache line");
    }

    #[test]
    fn word_packing_round_trips() {
        let w = pack(GW_MAC, PROBE, 5, 0x7ff);
        assert_eq!(w_mac(w), GW_MAC);
        assert_eq!(w_state(w), PROBE);
        assert_eq!(w_probes(w), 5);
        assert_eq!(w_tag(w), 0x3ff);
        let w2 = w_with(w, STALE, 2);
        assert_eq!((w_mac(w2), w_state(w2), w_probes(w2), w_tag(w2)), (GW_MAC, STALE, 2, 0x3ff));
    }

    #[test]
    fn request_resolve_lifecycle() {
        let t = table();
        assert_eq!(t.lookup(GW, 0), NeighLookup::Incomplete { send_request: true });
        assert_eq!(t.lookup(GW, 10), NeighLookup::Incomplete { send_request: false });
        assert_eq!(t.len(), 1);
        assert_eq!(state_of(&t, GW), Some(NeighState::Incomplete));
        t.on_reply(GW, GW_MAC, 20).unwrap();
        assert_eq!(t.lookup(GW, 30), NeighLookup::Reachable(GW_MAC));
        let e = &t.entries()[0];
        assert_eq!((e.ip, e.mac, e.state, e.updated_ms), (GW, Some(GW_MAC), NeighState::Reachable, 20));
    }

    #[test]
    fn unsolicited_reply_rejected() {
        let t = table();
        assert_eq!(t.on_reply(GW, GW_MAC, 0), Err(NeighError::Unsolicited(GW)));
        assert!(t.is_empty(), "an unsolicited reply must not create an entry");
        // Resolved entry: a reply with a different MAC is a poisoning attempt.
        t.lookup(GW, 0);
        t.on_reply(GW, GW_MAC, 1).unwrap();
        let evil = [0x02, 0, 0, 0, 0, 0x66];
        assert_eq!(t.on_reply(GW, evil, 2), Err(NeighError::Unsolicited(GW)));
        assert_eq!(t.lookup(GW, 3), NeighLookup::Reachable(GW_MAC));
        // Same MAC again (duplicate reply) is harmless.
        assert_eq!(t.on_reply(GW, GW_MAC, 4), Ok(()));
    }

    #[test]
    fn reply_with_group_or_zero_mac_rejected() {
        let t = table();
        t.lookup(GW, 0);
        for bad in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1], [0; 6]] {
            assert_eq!(t.on_reply(GW, bad, 1), Err(NeighError::InvalidMac(bad)));
        }
        assert_eq!(state_of(&t, GW), Some(NeighState::Incomplete));
        assert_eq!(t.lookup(0, 0), NeighLookup::Failed);
        assert_eq!(t.lookup(u32::MAX, 0), NeighLookup::Failed);
    }

    #[test]
    fn retransmit_pacing_and_max_probes_then_failed() {
        let t = table(); // retrans 1000, max_probes 3, failed_hold 20000
        let mut sent = vec![];
        for now in (0..3500).step_by(50) {
            match t.lookup(GW, now) {
                NeighLookup::Incomplete { send_request: true } => sent.push(now),
                NeighLookup::Incomplete { send_request: false } => {}
                NeighLookup::Failed => {
                    assert_eq!(now, 3000, "fails one retrans interval after the last request");
                    break;
                }
                other => panic!("unexpected {other:?} at {now}"),
            }
        }
        assert_eq!(sent, vec![0, 1000, 2000]);
        assert_eq!(t.lookup(GW, 10_000), NeighLookup::Failed);
        assert_eq!(state_of(&t, GW), Some(NeighState::Failed));
        // After the hold-down a new round starts.
        assert_eq!(t.lookup(GW, 23_000), NeighLookup::Incomplete { send_request: true });
        t.on_reply(GW, GW_MAC, 23_100).unwrap();
        assert_eq!(t.lookup(GW, 23_200), NeighLookup::Reachable(GW_MAC));
    }

    /// A caller whose request budget is spent (`may_ask` false) neither sends nor uses up the
    /// entry's interval or probes: the next caller that may send does so at once. Before, the
    /// entry counted a request nobody sent and the next went out a second later (a flood of
    /// on-link requests made a gateway's resolution, and a pod's first SYN, wait that second).
    #[test]
    fn a_request_the_caller_may_not_send_stays_due_for_the_next_that_may() {
        let t = table(); // retrans 1000, max_probes 3
        let probes = |t: &NeighTable| t.entries().into_iter().find(|e| e.ip == GW).unwrap().probes;
        assert_eq!(t.lookup_paced(GW, 0, 0, false), NeighLookup::Incomplete { send_request: false });
        assert_eq!((state_of(&t, GW), probes(&t)), (Some(NeighState::Incomplete), 0), "created, nothing sent");
        assert_eq!(t.lookup_paced(GW, 0, 5, false), NeighLookup::Incomplete { send_request: false });
        assert_eq!(t.lookup_paced(GW, 0, 10, true), NeighLookup::Incomplete { send_request: true }, "at once");
        let e = t.entries().into_iter().find(|e| e.ip == GW).unwrap();
        assert_eq!((e.probes, e.updated_ms), (1, 10), "its wait for an answer starts with the request");
        assert_eq!(t.lookup_paced(GW, 0, 20, true), NeighLookup::Incomplete { send_request: false }, "paced");
        // The retransmission falls due at 1010: a caller that may not send leaves it due.
        assert_eq!(t.lookup_paced(GW, 0, 1010, false), NeighLookup::Incomplete { send_request: false });
        assert_eq!(probes(&t), 1);
        assert_eq!(t.lookup_paced(GW, 0, 1015, true), NeighLookup::Incomplete { send_request: true });
        assert_eq!(t.lookup_paced(GW, 0, 2015, true), NeighLookup::Incomplete { send_request: true });
        assert_eq!(probes(&t), 3);
        // Giving up needs no budget: three requests went unanswered.
        assert_eq!(t.lookup_paced(GW, 0, 3015, false), NeighLookup::Failed);
        // After the hold-down, a round started by a caller that may not ask begins with nothing sent.
        assert_eq!(t.lookup_paced(GW, 0, 24_000, false), NeighLookup::Incomplete { send_request: false });
        assert_eq!(probes(&t), 0);
        assert_eq!(t.lookup_paced(GW, 0, 24_001, true), NeighLookup::Incomplete { send_request: true });
        t.on_reply(GW, GW_MAC, 24_002).unwrap();
        // Gone stale: a caller that may not probe still gets the MAC, and the probe is left to
        // the next that may.
        t.expire(60_000);
        assert_eq!(state_of(&t, GW), Some(NeighState::Stale));
        assert_eq!(t.lookup_paced(GW, 0, 60_001, false), NeighLookup::Stale { mac: GW_MAC, probe: false });
        assert_eq!(state_of(&t, GW), Some(NeighState::Stale));
        assert_eq!(t.lookup_paced(GW, 0, 60_002, true), NeighLookup::Stale { mac: GW_MAC, probe: true });
        assert_eq!(state_of(&t, GW), Some(NeighState::Probe));
    }

    /// An entry created while its caller could not ask, and never asked for since, fails once
    /// a resolution round has passed, like one whose requests went unanswered.
    #[test]
    fn an_entry_never_asked_for_fails_after_a_round() {
        let t = table();
        t.lookup_paced(GW, 0, 0, false);
        t.expire(2_999);
        assert_eq!(state_of(&t, GW), Some(NeighState::Incomplete));
        t.expire(3_000);
        assert_eq!(state_of(&t, GW), Some(NeighState::Failed));
    }

    #[test]
    fn expire_fails_then_removes_abandoned_incomplete() {
        let t = table();
        t.lookup(GW, 0);
        t.lookup(GW, 1000);
        t.lookup(GW, 2000); // 3 requests sent
        t.expire(2500);
        assert_eq!(state_of(&t, GW), Some(NeighState::Incomplete));
        t.expire(3000);
        assert_eq!(state_of(&t, GW), Some(NeighState::Failed));
        t.expire(22_999);
        assert_eq!(state_of(&t, GW), Some(NeighState::Failed));
        t.expire(23_000);
        assert!(t.is_empty());
        assert_eq!(t.lookup(GW, 23_001), NeighLookup::Incomplete { send_request: true });
    }

    #[test]
    fn ageing_reachable_stale_probe_gone() {
        let t = table();
        t.lookup(GW, 0);
        t.on_reply(GW, GW_MAC, 0).unwrap();
        t.expire(29_999);
        assert_eq!(t.lookup(GW, 29_999), NeighLookup::Reachable(GW_MAC));
        t.expire(30_000);
        assert_eq!(state_of(&t, GW), Some(NeighState::Stale));
        // Use of a stale entry: usable, one probe, then paced.
        assert_eq!(t.lookup(GW, 30_001), NeighLookup::Stale { mac: GW_MAC, probe: true });
        assert_eq!(t.lookup(GW, 30_500), NeighLookup::Stale { mac: GW_MAC, probe: false });
        assert_eq!(t.lookup(GW, 31_001), NeighLookup::Stale { mac: GW_MAC, probe: true });
        // The probe is answered: reachable again.
        t.on_reply(GW, GW_MAC, 31_100).unwrap();
        assert_eq!(t.lookup(GW, 31_300), NeighLookup::Reachable(GW_MAC)); // last use
                                                                          // Let it go stale and stay unused: removed stale_gc_ms after its last use.
        t.expire(61_300);
        assert_eq!(state_of(&t, GW), Some(NeighState::Stale));
        t.expire(91_299);
        assert_eq!(state_of(&t, GW), Some(NeighState::Stale));
        t.expire(91_300);
        assert!(t.is_empty());
    }

    #[test]
    fn lookup_treats_overdue_reachable_as_stale_without_expire() {
        let t = table();
        t.lookup(GW, 0);
        t.on_reply(GW, GW_MAC, 0).unwrap();
        assert_eq!(t.lookup(GW, 30_000), NeighLookup::Stale { mac: GW_MAC, probe: true });
    }

    #[test]
    fn unanswered_probes_fail_stale_entry() {
        let t = table();
        t.lookup(GW, 0);
        t.on_reply(GW, GW_MAC, 0).unwrap();
        let mut probes = 0;
        let mut failed_at = None;
        for now in (30_000..40_000).step_by(100) {
            match t.lookup(GW, now) {
                NeighLookup::Stale { probe, .. } => probes += probe as u32,
                NeighLookup::Failed => {
                    failed_at = Some(now);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(probes, 3);
        assert_eq!(failed_at, Some(33_000));
    }

    #[test]
    fn static_entries_never_age_and_ignore_arp() {
        let t = table();
        t.add_static(GW, GW_MAC).unwrap();
        for now in [0, 100_000, 10_000_000] {
            t.expire(now);
            assert_eq!(t.lookup(GW, now), NeighLookup::Reachable(GW_MAC));
        }
        let other = [0x02, 1, 2, 3, 4, 5];
        assert_eq!(t.on_reply(GW, other, 1), Err(NeighError::Unsolicited(GW)));
        assert!(!t.on_request_from(GW, other, 1));
        assert_eq!(t.lookup(GW, 2), NeighLookup::Reachable(GW_MAC));
        assert!(t.remove(GW));
        assert!(!t.remove(GW));
        assert!(t.is_empty());
        assert_eq!(t.add_static(GW, [0xff; 6]), Err(NeighError::InvalidMac([0xff; 6])));
    }

    #[test]
    fn add_static_overrides_dynamic_entry() {
        let t = table();
        t.lookup(GW, 0);
        t.add_static(GW, GW_MAC).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(state_of(&t, GW), Some(NeighState::Static));
    }

    #[test]
    fn capacity_bound_gives_table_full() {
        let t = NeighTable::new(NeighConfig { capacity: 4, ..Default::default() }).unwrap();
        for ip in 1..=4 {
            assert_eq!(t.lookup(ip, 0), NeighLookup::Incomplete { send_request: true });
        }
        assert_eq!(t.lookup(5, 0), NeighLookup::TableFull);
        assert_eq!(t.add_static(6, GW_MAC), Err(NeighError::TableFull(4)));
        assert_eq!(t.len(), 4);
        assert!(t.remove(2));
        assert_eq!(t.lookup(5, 0), NeighLookup::Incomplete { send_request: true });
        // Existing entries stay reachable while full.
        t.on_reply(1, GW_MAC, 1).unwrap();
        assert_eq!(t.lookup(1, 2), NeighLookup::Reachable(GW_MAC));
    }

    /// Issue 9 item 7: one sender asks for more unused addresses than the table holds. The
    /// table must still resolve a new neighbour (here a gateway, uncharged) right away.
    #[test]
    fn a_table_full_of_unanswered_entries_still_resolves_a_new_neighbour() {
        let t = table();
        let cap = t.config().capacity as u32;
        for i in 0..cap + 76 {
            t.lookup(0x0a01_0000 + i, i as u64 / 100);
        }
        let now = 1_500;
        assert_eq!(t.lookup(GW, now), NeighLookup::Incomplete { send_request: true });
        t.on_reply(GW, GW_MAC, now + 1).unwrap();
        assert_eq!(t.lookup(GW, now + 2), NeighLookup::Reachable(GW_MAC));
        assert!(t.len() <= cap as usize);
    }

    #[test]
    fn eviction_prefers_failed_then_old_incomplete_then_lru_stale_and_keeps_reachable() {
        let cfg = NeighConfig { capacity: 8, ..Default::default() };
        let t = NeighTable::new(cfg).unwrap();
        // 2 reachable in use, 1 static, 2 stale (used at 100 and 200), 2 incomplete, 1 failed.
        for ip in [1, 2, 4, 5] {
            t.lookup(ip, 0);
            t.on_reply(ip, mac_of(ip), 0).unwrap();
        }
        t.add_static(3, mac_of(3)).unwrap();
        t.expire(30_000); // 1, 2, 4, 5 -> Stale
        assert_eq!(t.lookup(1, 30_000), NeighLookup::Stale { mac: mac_of(1), probe: true });
        t.on_reply(1, mac_of(1), 30_001).unwrap();
        assert_eq!(t.lookup(2, 30_000), NeighLookup::Stale { mac: mac_of(2), probe: true });
        t.on_reply(2, mac_of(2), 30_001).unwrap();
        t.slots[t.idx(4)].used_ms.store(100, Ordering::Relaxed);
        t.slots[t.idx(5)].used_ms.store(200, Ordering::Relaxed);
        t.lookup(6, 30_000); // incomplete, old by the time we need room
        t.lookup(7, 31_900); // incomplete, young
        for now in (30_000..34_000).step_by(500) {
            t.lookup(8, now); // three requests, then Failed
        }
        assert_eq!(state_of(&t, 8), Some(NeighState::Failed));
        assert_eq!(t.len(), 8);
        let new = |ip: u32| t.lookup(ip, 32_000) == NeighLookup::Incomplete { send_request: true };
        let order = [(100, 8), (101, 6), (102, 4), (103, 5)];
        for (ip, victim) in order {
            // The rotating hand samples all 16 slots within a few attempts.
            assert!(new(ip), "room for {ip}");
            assert_eq!(state_of(&t, victim), None, "{victim} evicted for {ip}");
        }
        // Left: reachable 1 and 2, static 3, young incomplete 7, and the four new ones (young).
        assert_eq!(t.lookup(104, 32_000), NeighLookup::TableFull);
        for ip in [1, 2, 3] {
            assert_eq!(t.lookup(ip, 32_000), NeighLookup::Reachable(mac_of(ip)));
        }
        assert_eq!(t.evicted(), 4);
    }

    #[test]
    fn one_source_holds_at_most_its_unresolved_entries() {
        let cfg = NeighConfig { unresolved_per_source: 4, ..Default::default() };
        let t = NeighTable::new(cfg).unwrap();
        let (pod, other) = (0x0af4_0102, 0x0af4_0103);
        for ip in 1..=4 {
            assert_eq!(t.lookup_from(ip, pod, 0), NeighLookup::Incomplete { send_request: true });
        }
        assert_eq!(t.lookup_from(5, pod, 0), NeighLookup::SourceLimit);
        assert_eq!(t.len(), 4, "nothing created");
        // Existing entries are found whoever asks; others and uncharged lookups create.
        assert_eq!(t.lookup_from(2, pod, 10), NeighLookup::Incomplete { send_request: false });
        assert_eq!(t.lookup_from(5, other, 10), NeighLookup::Incomplete { send_request: true });
        assert_eq!(t.lookup(6, 10), NeighLookup::Incomplete { send_request: true });
        // A resolution, a request-learnt MAC, a removal, a static override and a flush each
        // give one charge back.
        t.on_reply(1, mac_of(1), 20).unwrap();
        assert_eq!(t.unresolved_from(pod), 3);
        assert!(t.on_request_from(2, mac_of(2), 20));
        assert!(t.remove(3));
        t.add_static(4, mac_of(4)).unwrap();
        assert_eq!(t.unresolved_from(pod), 0);
        for ip in 10..14 {
            t.lookup_from(ip, pod, 30);
        }
        assert_eq!(t.lookup_from(14, pod, 30), NeighLookup::SourceLimit);
        assert_eq!(t.flush(Some(10)), 1);
        assert_eq!(t.unresolved_from(pod), 3);
        // Failed entries still count until they are removed by ageing.
        t.expire(35_000);
        t.expire(60_000);
        assert_eq!(t.unresolved_from(pod), 0);
        assert_eq!(t.unresolved_from(other), 0);
    }

    #[test]
    fn flush_removes_learnt_entries_and_keeps_static_ones() {
        let t = table();
        t.add_static(GW, GW_MAC).unwrap();
        for ip in 1..=5 {
            t.lookup(ip, 0);
        }
        t.on_reply(1, mac_of(1), 0).unwrap();
        assert_eq!(t.flush(Some(GW)), 0, "static stays");
        assert_eq!(t.flush(Some(9)), 0);
        assert_eq!(t.flush(Some(1)), 1);
        assert_eq!(t.flush(None), 4);
        assert_eq!(t.entries().iter().map(|e| e.ip).collect::<Vec<_>>(), vec![GW]);
        assert_eq!(t.lookup(1, 1), NeighLookup::Incomplete { send_request: true });
    }

    #[test]
    fn maintain_runs_expire_once_per_interval() {
        let t = table();
        t.lookup(GW, 0);
        t.on_reply(GW, GW_MAC, 0).unwrap();
        assert!(t.maintain(30_000));
        assert_eq!(state_of(&t, GW), Some(NeighState::Stale));
        assert!(!t.maintain(30_000 + EXPIRE_EVERY_MS - 1));
        assert!(t.maintain(30_000 + EXPIRE_EVERY_MS));
        // Many threads at the same instant: one runs it.
        let t = Arc::new(table());
        t.maintain(0);
        let ran: usize = (0..4)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || t.maintain(10_000) as usize)
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(ran, 1);
    }

    #[test]
    fn tombstones_are_reused_and_chains_survive_deletes() {
        // 2 slots per entry; churn far more IPs than slots through remove.
        let t = NeighTable::new(NeighConfig { capacity: 8, ..Default::default() }).unwrap();
        for round in 0..50u32 {
            let ips: Vec<u32> = (1..=8).map(|i| round * 8 + i).collect();
            for &ip in &ips {
                assert_eq!(t.lookup(ip, 0), NeighLookup::Incomplete { send_request: true }, "ip {ip}");
            }
            for &ip in &ips {
                t.on_reply(ip, [2, 0, 0, 0, 0, ip as u8], 1).unwrap();
            }
            for &ip in &ips {
                assert_eq!(t.lookup(ip, 2), NeighLookup::Reachable([2, 0, 0, 0, 0, ip as u8]));
            }
            for &ip in ips.iter().step_by(2).chain(ips.iter().skip(1).step_by(2)) {
                assert!(t.remove(ip));
            }
            assert!(t.is_empty());
        }
        let tombs = t.slots.iter().filter(|s| key_ip(s.key.load(Ordering::Relaxed)) == KEY_TOMB).count();
        assert!(tombs > 0, "removal leaves tombstones");
        t.expire(0);
        let tombs = t.slots.iter().filter(|s| key_ip(s.key.load(Ordering::Relaxed)) == KEY_TOMB).count();
        assert_eq!(tombs, 0, "an empty table has no tombstones after expire");
    }

    #[test]
    fn sweep_without_empty_slots_keeps_live_chains() {
        let t = NeighTable::new(NeighConfig { capacity: 8, ..Default::default() }).unwrap();
        // Churn until every slot is a tombstone.
        for ip in 1..=400 {
            t.add_static(ip, mac_of(ip)).unwrap();
            assert!(t.remove(ip));
        }
        let key_at = |i: usize| key_ip(t.slots[i].key.load(Ordering::Relaxed));
        assert!((0..16).all(|i| key_at(i) == KEY_TOMB));
        // Five addresses homed at slots 14/15 fill 14, 15, 0, 1, 2 (wrapping).
        let crowded: Vec<u32> = (1000..100_000).filter(|&ip| matches!(t.home(ip), 14 | 15)).take(5).collect();
        for &ip in &crowded {
            t.add_static(ip, mac_of(ip)).unwrap();
        }
        let at0 = key_at(0);
        assert!(crowded.contains(&at0) && crowded.contains(&key_at(2)));
        // A tombstone inside the chain, with no EMPTY slot anywhere.
        assert!(t.remove(at0));
        assert!((0..16).all(|i| key_at(i) != KEY_EMPTY));
        t.expire(0);
        assert!((0..16).any(|i| key_at(i) == KEY_EMPTY), "the sweep found a safe seed");
        assert_eq!(key_at(0), KEY_TOMB, "slot 0 is crossed by the chains of slots 1 and 2");
        for &ip in crowded.iter().filter(|&&ip| ip != at0) {
            assert_eq!(t.lookup(ip, 0), NeighLookup::Reachable(mac_of(ip)), "ip {ip:#x}");
        }
    }

    #[test]
    fn sweep_keeps_chains_intact() {
        // Fill a run, delete from the middle and the end, sweep: survivors must stay findable.
        let t = NeighTable::new(NeighConfig { capacity: 32, ..Default::default() }).unwrap();
        let ips: Vec<u32> = (1..=32).collect();
        for &ip in &ips {
            t.add_static(ip, mac_of(ip)).unwrap();
        }
        for &ip in ips.iter().filter(|ip| *ip % 3 != 0) {
            assert!(t.remove(ip));
        }
        t.expire(0);
        for &ip in &ips {
            let want = if ip % 3 == 0 {
                NeighLookup::Reachable(mac_of(ip))
            } else {
                NeighLookup::Incomplete { send_request: true }
            };
            assert_eq!(t.lookup(ip, 0), want, "ip {ip}");
        }
        assert_eq!(t.len(), 32);
        assert_eq!(t.entries().len(), 32);
    }

    /// The orphan the sweep can create (an entry behind an EMPTY slot) is cleaned by expire.
    #[test]
    fn expire_removes_orphans_and_duplicates() {
        let t = NeighTable::new(NeighConfig { capacity: 4, ..Default::default() }).unwrap();
        t.add_static(7, mac_of(7)).unwrap();
        let Found::Entry { idx, key, word } = t.find(7) else { panic!() };
        // Move the entry one slot further along, behind an EMPTY slot, as the race would.
        let j = (idx + 1) & t.mask;
        assert_eq!(key_ip(t.slots[j].key.load(Ordering::Relaxed)), KEY_EMPTY);
        t.slots[j].word.store(word, Ordering::Relaxed);
        t.slots[j].key.store(key, Ordering::Relaxed);
        t.slots[idx].word.store(0, Ordering::Relaxed);
        t.slots[idx].key.store(0, Ordering::Relaxed);
        assert!(t.entries().is_empty(), "an orphan is not an entry");
        assert_eq!(t.lookup(7, 0), NeighLookup::Incomplete { send_request: true }, "recreated in front");
        assert_eq!(t.len(), 2);
        t.expire(0);
        assert_eq!(t.len(), 1, "the orphan copy is gone");
        assert_eq!(key_ip(t.slots[j].key.load(Ordering::Relaxed)), KEY_EMPTY);
        assert_eq!(state_of(&t, 7), Some(NeighState::Incomplete));
    }

    #[test]
    fn request_merge_updates_only_existing_entries() {
        let t = table();
        assert!(!t.on_request_from(GW, GW_MAC, 0));
        assert!(t.is_empty(), "a request must never create an entry");
        // Incomplete: the request teaches us the MAC; usable but to be confirmed.
        t.lookup(GW, 0);
        assert!(t.on_request_from(GW, GW_MAC, 1));
        assert_eq!(t.lookup(GW, 2), NeighLookup::Stale { mac: GW_MAC, probe: true });
        t.on_reply(GW, GW_MAC, 3).unwrap();
        // Same MAC from a request: no change.
        assert!(!t.on_request_from(GW, GW_MAC, 4));
        assert_eq!(t.lookup(GW, 5), NeighLookup::Reachable(GW_MAC));
        // New MAC (NIC replaced): taken, but Stale until confirmed.
        let new = [0x52, 0x54, 0, 0, 0, 0x99];
        assert!(t.on_request_from(GW, new, 6));
        assert_eq!(t.lookup(GW, 7), NeighLookup::Stale { mac: new, probe: true });
        assert!(!t.on_request_from(GW, [0xff; 6], 8));
    }

    #[test]
    fn bad_config_rejected() {
        for cfg in [
            NeighConfig { capacity: 0, ..Default::default() },
            NeighConfig { max_probes: 0, ..Default::default() },
            NeighConfig { max_probes: 8, ..Default::default() },
            NeighConfig { retrans_ms: 0, ..Default::default() },
        ] {
            assert!(matches!(NeighTable::new(cfg), Err(NeighError::BadConfig(_))));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Lookup(u32),
        Static(u32, u8),
        Remove(u32),
        Expire,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        // Few distinct addresses in a small table: long chains, many tombstones, frequent full.
        let ip = 1..40u32;
        prop_oneof![
            3 => ip.clone().prop_map(Op::Lookup),
            2 => (ip.clone(), 1..255u8).prop_map(|(i, m)| Op::Static(i, m)),
            3 => ip.prop_map(Op::Remove),
            1 => Just(Op::Expire),
        ]
    }

    proptest::proptest! {
        /// The table as a map (membership, capacity, static MACs) against a HashMap, with the
        /// clock frozen so no timer fires.
        #[test]
        fn behaves_like_a_bounded_map(ops in proptest::collection::vec(op(), 1..300)) {
            use std::collections::HashMap;
            let cap = 8;
            let t = NeighTable::new(NeighConfig { capacity: cap, ..Default::default() }).unwrap();
            let mut model: HashMap<u32, Option<[u8; 6]>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Lookup(ip) => {
                        let want = match model.get(&ip) {
                            Some(Some(m)) => NeighLookup::Reachable(*m),
                            Some(None) => NeighLookup::Incomplete { send_request: false },
                            None if model.len() == cap => NeighLookup::TableFull,
                            None => {
                                model.insert(ip, None);
                                NeighLookup::Incomplete { send_request: true }
                            }
                        };
                        proptest::prop_assert_eq!(t.lookup(ip, 0), want);
                    }
                    Op::Static(ip, m) => {
                        let mac = [2, 0, 0, 0, 0, m];
                        let want = if model.contains_key(&ip) || model.len() < cap {
                            model.insert(ip, Some(mac));
                            Ok(())
                        } else {
                            Err(NeighError::TableFull(cap))
                        };
                        proptest::prop_assert_eq!(t.add_static(ip, mac), want);
                    }
                    Op::Remove(ip) => proptest::prop_assert_eq!(t.remove(ip), model.remove(&ip).is_some()),
                    Op::Expire => t.expire(0),
                }
                proptest::prop_assert_eq!(t.len(), model.len());
            }
            let mut want: Vec<(u32, Option<[u8; 6]>)> = model.into_iter().collect();
            want.sort();
            let got: Vec<(u32, Option<[u8; 6]>)> = t.entries().into_iter().map(|e| (e.ip, e.mac)).collect();
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[derive(Debug, Clone)]
    enum TimedOp {
        /// Lookup of an address from one of three sources (0: uncharged).
        Lookup(u32, u32),
        Reply(u32),
        Static(u32),
        Remove(u32),
        Flush(Option<u32>),
        /// Advance the clock by this many ms, then expire.
        Tick(u64),
    }

    fn timed_op() -> impl proptest::strategy::Strategy<Value = TimedOp> {
        use proptest::prelude::*;
        let ip = 1..60u32;
        prop_oneof![
            6 => (ip.clone(), 0..3u32).prop_map(|(i, s)| TimedOp::Lookup(i, s)),
            2 => ip.clone().prop_map(TimedOp::Reply),
            1 => ip.clone().prop_map(TimedOp::Static),
            1 => ip.clone().prop_map(TimedOp::Remove),
            1 => proptest::option::of(ip).prop_map(TimedOp::Flush),
            2 => (0..25_000u64).prop_map(TimedOp::Tick),
        ]
    }

    proptest::proptest! {
        /// Issue 9 item 7, against a naive model of the bounds with the clock moving: the table
        /// never holds more than its capacity; each source's charge equals the number of live
        /// unresolved entries charged to it and never exceeds the limit; Reachable and static entries are
        /// never evicted (a lookup of one just confirmed is always a hit); a miss is `TableFull`
        /// only when nothing in the table is evictable, and `SourceLimit` only when the source
        /// holds its limit.
        #[test]
        fn bounds_hold_while_entries_age_and_get_evicted(ops in proptest::collection::vec(timed_op(), 1..400)) {
            use proptest::{prop_assert, prop_assert_eq};
            let cfg = NeighConfig { capacity: 8, unresolved_per_source: 3, ..Default::default() };
            let t = NeighTable::new(cfg).unwrap();
            let src = |s: u32| if s == 0 { 0 } else { 0x0af4_0100 + s };
            let mut now = 0u64;
            for op in ops {
                match op {
                    TimedOp::Lookup(ip, s) => {
                        let before = state_of(&t, ip);
                        let r = t.lookup_from(ip, src(s), now);
                        if before.is_none() {
                            if r == NeighLookup::SourceLimit {
                                prop_assert!(s != 0 && t.unresolved_from(src(s)) >= 3);
                            }
                            if r == NeighLookup::TableFull {
                                // Nothing evictable: every entry reachable, probing, static or
                                // a young Incomplete.
                                for e in t.entries() {
                                    let young = e.state == NeighState::Incomplete
                                        && now.saturating_sub(e.updated_ms) < 1_000;
                                    prop_assert!(
                                        matches!(e.state, NeighState::Reachable | NeighState::Probe | NeighState::Static) || young,
                                        "evictable {:?} left while {} was refused", e, ip
                                    );
                                }
                            }
                        }
                    }
                    TimedOp::Reply(ip) => {
                        if t.on_reply(ip, mac_of(ip), now).is_ok() && state_of(&t, ip).is_some() {
                            let hit = matches!(t.lookup(ip, now), NeighLookup::Reachable(_) | NeighLookup::Stale { .. });
                            prop_assert!(hit, "{} answered but not usable", ip);
                        }
                    }
                    TimedOp::Static(ip) => {
                        let _ = t.add_static(ip, mac_of(ip));
                    }
                    TimedOp::Remove(ip) => {
                        t.remove(ip);
                    }
                    TimedOp::Flush(ip) => {
                        t.flush(ip);
                    }
                    TimedOp::Tick(ms) => {
                        now += ms;
                        t.expire(now);
                    }
                }
                prop_assert!(t.len() <= 8);
                // The charge per bucket equals the live entries whose owner names it.
                let mut want = std::collections::HashMap::<usize, u32>::new();
                for (_, sl, k, _, w) in t.occupied() {
                    let o = sl.owner.load(Ordering::Relaxed);
                    if o != 0 {
                        prop_assert_eq!(key_inc(o), key_inc(k));
                        prop_assert!(matches!(w_state(w), INCOMPLETE | FAILED), "a resolved entry still charged");
                        *want.entry((o as u32 - 1) as usize).or_default() += 1;
                    }
                }
                for b in (1..3).map(|s| t.source_bucket(src(s))).chain(want.keys().copied()) {
                    let c = t.by_source[b].load(Ordering::Relaxed);
                    prop_assert_eq!(c, want.get(&b).copied().unwrap_or(0), "bucket {}", b);
                    prop_assert!(c <= 3);
                }
            }
            let total: u32 = t.by_source.iter().map(|c| c.load(Ordering::Relaxed)).sum();
            prop_assert_eq!(total as usize, t.occupied().filter(|(_, sl, ..)| sl.owner.load(Ordering::Relaxed) != 0).count());
        }
    }

    /// Found by `behaves_like_a_bounded_map`: with no EMPTY slot, the sweep seeded at a
    /// tombstone that was the home slot of a live entry further on, cutting its chain.
    #[test]
    fn sweep_does_not_seed_at_a_live_entrys_home() {
        let t = NeighTable::new(NeighConfig { capacity: 8, ..Default::default() }).unwrap();
        for ip in 1..=400 {
            t.add_static(ip, mac_of(ip)).unwrap();
            assert!(t.remove(ip));
        }
        // An address homed at slot 0 (the first seed candidate), stored two slots on, with
        // tombstones at 0 and 1.
        let ip = (1000..).find(|&ip| t.home(ip) == 0).unwrap();
        let blockers: Vec<u32> = (2000..).filter(|&b| t.home(b) == 0 || t.home(b) == 1).take(2).collect();
        for &b in &blockers {
            t.add_static(b, mac_of(b)).unwrap();
        }
        t.add_static(ip, mac_of(ip)).unwrap();
        for &b in &blockers {
            assert!(t.remove(b));
        }
        assert!(t.slots.iter().all(|s| key_ip(s.key.load(Ordering::Relaxed)) != KEY_EMPTY));
        t.expire(0);
        assert_eq!(t.lookup(ip, 0), NeighLookup::Reachable(mac_of(ip)));
    }

    fn mac_of(ip: u32) -> [u8; 6] {
        let b = ip.to_be_bytes();
        [0x02, b[0] ^ 0x5a, b[0], b[1], b[2], b[3]]
    }

    /// Several threads resolve, confirm, age and delete overlapping IPs in a table too small
    /// for all of them. Every MAC ever returned must be the one derived from its IP.
    fn hammer(capacity: usize, n_ips: u32, iters: u64) {
        let cfg = NeighConfig {
            capacity,
            reachable_ms: 5,
            stale_gc_ms: 20,
            retrans_ms: 1,
            max_probes: 2,
            failed_hold_ms: 3,
            unresolved_per_source: 3,
        };
        let t = Arc::new(NeighTable::new(cfg).unwrap());
        let threads: Vec<_> = (0..4u32)
            .map(|tid| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    let mut seen = 0u64;
                    let mut x = 0x1234_5678u32 ^ tid.wrapping_mul(0x9e37_79b9);
                    for i in 0..iters {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        let ip = 0x0a00_0000 | (x % n_ips + 1);
                        let now = i / 8;
                        // Half the lookups charged to this thread's source, the rest to nobody.
                        let src = if i % 2 == 0 { 0x0af4_0000 | tid } else { 0 };
                        match t.lookup_from(ip, src, now) {
                            NeighLookup::Reachable(m) | NeighLookup::Stale { mac: m, .. } => {
                                assert_eq!(m, mac_of(ip), "torn or foreign MAC for {ip:#x}");
                                seen += 1;
                            }
                            _ => {}
                        }
                        match (x >> 8) % 16 {
                            0..=5 => {
                                let _ = t.on_reply(ip, mac_of(ip), now);
                            }
                            6 => t.expire(now),
                            7 => {
                                t.remove(ip);
                            }
                            8 => {
                                t.on_request_from(ip, mac_of(ip), now);
                            }
                            _ => {}
                        }
                    }
                    seen
                })
            })
            .collect();
        let seen: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        assert!(seen > iters / 20, "the test must actually observe resolved entries ({seen})");
        let entries = t.entries();
        assert!(entries.len() <= capacity);
        let mut ips: Vec<u32> = entries.iter().map(|e| e.ip).collect();
        ips.dedup();
        assert_eq!(ips.len(), entries.len(), "no duplicate entries visible");
        for e in entries {
            if let Some(m) = e.mac {
                assert_eq!(m, mac_of(e.ip));
            }
        }
        // Quiesced: expire cleans everything up and the live count returns to zero.
        t.expire(u64::MAX / 2);
        t.expire(u64::MAX / 2 + 100_000);
        for e in t.entries() {
            assert!(t.remove(e.ip));
        }
        assert_eq!(t.len(), 0, "live count must not leak");
        assert!(t.by_source.iter().all(|c| c.load(Ordering::Relaxed) == 0), "source charges must not leak");
    }

    #[test]
    fn concurrent_hammer_never_returns_a_foreign_mac() {
        hammer(16, 40, 60_000);
    }

    /// Two slots, three IPs: every slot is deleted and re-claimed by another IP all the time.
    #[test]
    fn concurrent_hammer_slot_reuse_never_returns_a_foreign_mac() {
        hammer(1, 3, 100_000);
    }

    /// The reader's consistency check, driven through the exact interleaving the hammer can
    /// only hit by luck: key read for X, slot recycled for Y and resolved, then word read.
    #[test]
    fn reader_rejects_word_from_a_later_incarnation() {
        let t = NeighTable::new(NeighConfig { capacity: 1, ..Default::default() }).unwrap();
        let (x, y) = (0x0a00_0001, 0x0a00_0002);
        t.lookup(x, 0);
        let Found::Entry { idx, key: kx, .. } = t.find(x) else { panic!() };
        assert!(t.remove(x));
        // Force Y into X's old slot.
        let other = idx ^ 1;
        t.slots[other].key.store(make_key(0x0a00_0099, 0), Ordering::Relaxed);
        assert_eq!(t.lookup(y, 0), NeighLookup::Incomplete { send_request: true });
        t.on_reply(y, mac_of(y), 0).unwrap();
        let Found::Entry { idx: iy, key: ky, word: wy } = t.find(y) else { panic!() };
        assert_eq!(iy, idx);
        assert_ne!(ky, kx);
        assert!(!consistent(kx, &t.slots[idx], wy), "Y's word must not pass as X's");
        assert!(consistent(ky, &t.slots[idx], wy));
    }
}
