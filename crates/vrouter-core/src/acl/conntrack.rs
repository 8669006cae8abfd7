//! Per-worker connection tracking: a fixed-size open-addressing table of connections, so that
//! the replies of an admitted connection pass even where policy denies their direction.
//!
//! **Table.** Linear probing over a power-of-two slot array at most half full (slots =
//! 2 × capacity rounded up), every entry within [`PROBE_WINDOW`] slots of its home, deletion by
//! backward shift (no tombstones, so a probe stops at the first empty slot). Nothing is
//! allocated after [`ConnTrack::with_capacity`]; `len()` never exceeds the capacity asked for.
//!
//! **Full table: early drop.** When the table is at capacity, or the window holds no free
//! slot, the insert takes an expired entry in the window if there is one, and otherwise drops
//! early (as Linux's `early_drop`, which samples a few buckets near the new entry's) the
//! unassured entry in the window that would expire first. *Unassured*: no reply seen yet (a
//! UDP flow nobody answered, a SYN without SYN+ACK, a mid-stream pick-up), a TCP handshake not
//! finished, or a closing TCP connection. Answered, established connections are never dropped
//! for a new one: with none to drop the insert fails with [`CtError::Full`] (the pipeline
//! counts `policy/conntrack-full`). The window is the bounded sample: an insert looks at most
//! [`PROBE_WINDOW`] slots, whatever the table's state.
//!
//! **Per-endpoint share.** Each entry is charged to one local endpoint (the pipeline passes
//! the originator if it is a local pod, else the local destination). An endpoint may hold at
//! most its share of the capacity ([`ConnTrack::with_endpoint_share`]); beyond it the insert
//! fails with [`CtError::EndpointShare`] (`policy/conntrack-endpoint-share`), so one pod
//! opening flows as fast as it can takes at most its share and never the whole table (issue 9:
//! 70,000 UDP flows from one pod used to refuse every new connection on the node for 28 s).
//! Counts are per endpoint id; an id reused for a new pod inherits the old pod's entries
//! until they expire. A count includes expired entries until the sweep or a lookup removes
//! them, so an endpoint found at its share sweeps [`SHARE_SWEEP`] more slots before being
//! refused: a pod whose flows have all expired gets new ones within one pass over the table
//! by its own attempts, not after the background sweep comes round (seconds on a big table).
//!
//! **Keys.** TCP, UDP, SCTP and other protocols: the 5-tuple ordered so that the lower
//! `(address, port)` end comes first; both directions find the same entry, which records which
//! end originated. ICMP echo: `(request sender, request target, identifier)`; a request is
//! `Original`, a reply `Reply` (as in Linux, a ping in the other direction with the same id is
//! another connection). Other ICMP types and non-first fragments are not tracked: `lookup`
//! returns `Miss` and `insert` stores nothing, so policy decides every such packet.
//!
//! **TCP.** SYN -> `SynSent`; SYN+ACK from the reply side -> `SynRecv`; ACK from the
//! originator -> `Established`; a FIN in one direction -> `FinWait` (half closed); FINs in both
//! -> `TimeWait`, which expires `tcp_close_ms` after the second FIN; RST -> `Closed`, expiring
//! `tcp_rst_ms` after the RST (later packets do not extend either). A new SYN on a `TimeWait` or
//! `Closed` entry (port reuse) drops the entry and reports `Miss`, so policy is asked again.
//! *Choice for mid-stream packets:* conntrack never admits anything by itself (a miss is always
//! up to policy), but when policy allows a non-SYN TCP packet that has no entry, `insert` picks
//! the connection up as `Established` with the sender as originator (Linux's
//! `nf_conntrack_tcp_loose=1`), so connections survive a vrouter restart or a table flush. A
//! lone RST never creates an entry.
//!
//! **Policy changes.** Each entry remembers the policy generation it was admitted under; a hit
//! under another generation is reported `stale: true` and the pipeline re-evaluates, then calls
//! [`ConnTrack::refresh`] (still allowed) or [`ConnTrack::remove`] (now denied).
//!
//! Time is always passed in (`now_ms`), never read here.
//!
//! **Pipeline use**, per packet that crosses a local endpoint:
//! 1. `lookup` -> `Hit { stale: false }`: pass without policy (this is what lets replies
//!    through a direction that policy denies).
//! 2. `Hit { stale: true }`: evaluate policy for the connection's *original* packet (the key
//!    itself for `CtDir::Original`, [`FlowKey::reversed`] for `CtDir::Reply`, with the
//!    originator's endpoint and direction); allowed -> `refresh(key, generation)` and pass;
//!    denied -> `remove(key)` and drop.
//! 3. `Miss`: evaluate policy; allowed -> `insert` (an `Err(Full)` is counted as
//!    `policy/conntrack-full` and the packet dropped); denied -> drop.

use super::{EndpointId, FlowKey, Fragment, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::stats::DropReason;

/// Maximum distance of an entry from its home slot.
pub const PROBE_WINDOW: usize = 32;
/// Slots swept before refusing a new entry to an endpoint that holds its share (its count may
/// include expired entries the background sweep has not reached yet).
const SHARE_SWEEP: usize = 256;

pub use crate::wire::l4::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Idle timeouts in milliseconds. Defaults follow Linux where Linux is sane for a router, and
/// cut the 5-day TCP established timeout to an hour.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// SYN sent / SYN+ACK seen, handshake not finished.
    pub tcp_syn_ms: u64,
    pub tcp_established_ms: u64,
    /// One side has sent FIN.
    pub tcp_half_closed_ms: u64,
    /// Both sides have sent FIN (measured from the second FIN).
    pub tcp_close_ms: u64,
    /// After a RST (measured from the RST).
    pub tcp_rst_ms: u64,
    /// UDP, no reply seen yet.
    pub udp_ms: u64,
    /// UDP once a reply was seen.
    pub udp_replied_ms: u64,
    pub icmp_ms: u64,
    /// Any other protocol (SCTP included: its state is not tracked).
    pub other_ms: u64,
}

impl Default for CtTimeouts {
    fn default() -> Self {
        CtTimeouts {
            tcp_syn_ms: 30_000,
            tcp_established_ms: 3_600_000,
            tcp_half_closed_ms: 120_000,
            tcp_close_ms: 30_000,
            tcp_rst_ms: 10_000,
            udp_ms: 30_000,
            udp_replied_ms: 180_000,
            icmp_ms: 30_000,
            other_ms: 60_000,
        }
    }
}

/// Direction of a packet relative to the connection's originator.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CtDir {
    Original,
    Reply,
}

/// Result of [`ConnTrack::lookup`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum CtLookup {
    /// A live entry; `stale` when it was admitted under another policy generation.
    Hit {
        dir: CtDir,
        stale: bool,
    },
    Miss,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtError {
    #[error(
        "connection table full ({capacity} entries, no expired or unanswered entry near the new \
         one's slot): raise the conntrack capacity or lower the timeouts"
    )]
    Full { capacity: usize },
    #[error(
        "endpoint {endpoint} holds its share of the connection table ({limit} entries): raise \
         conntrack.endpoint_share_percent if one pod needs more"
    )]
    EndpointShare { endpoint: EndpointId, limit: usize },
}

impl CtError {
    /// What the pipeline counts when an insert fails.
    pub const fn drop_reason(&self) -> DropReason {
        match self {
            CtError::Full { .. } => DropReason::ConntrackFull,
            CtError::EndpointShare { .. } => DropReason::ConntrackEndpointShare,
        }
    }
}

/// Connection state, as shown by the CLI.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub enum CtState {
    #[default]
    TcpSynSent,
    TcpSynRecv,
    TcpEstablished,
    TcpFinWait,
    TcpTimeWait,
    TcpClosed,
    UdpUnreplied,
    UdpReplied,
    Icmp,
    Other,
}

impl CtState {
    pub const fn name(self) -> &'static str {
        match self {
            CtState::TcpSynSent => "tcp-syn-sent",
            CtState::TcpSynRecv => "tcp-syn-recv",
            CtState::TcpEstablished => "tcp-established",
            CtState::TcpFinWait => "tcp-fin-wait",
            CtState::TcpTimeWait => "tcp-time-wait",
            CtState::TcpClosed => "tcp-closed",
            CtState::UdpUnreplied => "udp-unreplied",
            CtState::UdpReplied => "udp-replied",
            CtState::Icmp => "icmp",
            CtState::Other => "other",
        }
    }
}

/// One entry as the CLI shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct CtEntryView {
    /// The originator's first packet's key (for ICMP, an echo request).
    pub original: FlowKey,
    pub state: CtState,
    pub expires_ms: u64,
    pub generation: u64,
}

/// Normalised connection key: end `a` is the lower `(addr, port)` (ICMP: the request sender).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
struct Tuple {
    a: u32,
    b: u32,
    pa: u16,
    pb: u16,
    proto: u8,
}

const FIN_ORIG: u8 = 1;
const FIN_REPLY: u8 = 2;

#[derive(Copy, Clone, Debug, Default)]
struct Slot {
    t: Tuple,
    used: bool,
    /// The originator is end `a`.
    orig_is_a: bool,
    /// A packet in the reply direction has been seen.
    replied: bool,
    /// `owner` is the endpoint this entry is charged to.
    owned: bool,
    owner: EndpointId,
    state: CtState,
    fins: u8,
    home: u32,
    generation: u64,
    expires_ms: u64,
}

/// The connection table of one worker.
pub struct ConnTrack {
    slots: Box<[Slot]>,
    mask: usize,
    capacity: usize,
    len: usize,
    seed: u64,
    timeouts: CtTimeouts,
    sweep: usize,
    /// Entries charged to each endpoint id, and the most one may hold.
    per_endpoint: Box<[u32]>,
    share_max: usize,
    early_drops: u64,
}

/// Whether a connection has earned its place: answered, established (or not TCP), not closing.
/// Anything else may be dropped early to admit a new connection into a full table.
#[inline]
fn assured(s: &Slot) -> bool {
    s.replied
        && !matches!(s.state, CtState::TcpSynSent | CtState::TcpSynRecv | CtState::TcpTimeWait | CtState::TcpClosed)
}

/// The tracked tuple of a packet and whether the packet comes from end `a`.
fn tuple_of(k: &FlowKey) -> Option<(Tuple, bool)> {
    if k.fragment == Fragment::NonFirst {
        return None;
    }
    if k.proto == PROTO_ICMP {
        let id = k.dport;
        return match k.icmp_type() {
            ICMP_ECHO_REQUEST => Some((Tuple { a: k.src, b: k.dst, pa: id, pb: id, proto: k.proto }, true)),
            ICMP_ECHO_REPLY => Some((Tuple { a: k.dst, b: k.src, pa: id, pb: id, proto: k.proto }, false)),
            _ => None,
        };
    }
    Some(if (k.src, k.sport) <= (k.dst, k.dport) {
        (Tuple { a: k.src, b: k.dst, pa: k.sport, pb: k.dport, proto: k.proto }, true)
    } else {
        (Tuple { a: k.dst, b: k.src, pa: k.dport, pb: k.sport, proto: k.proto }, false)
    })
}

impl ConnTrack {
    /// A table for at most `n` connections (at least 1). Allocates once, here.
    pub fn with_capacity(n: usize, timeouts: CtTimeouts) -> Self {
        let n = n.max(1);
        let nslots = (n * 2).next_power_of_two().max(PROBE_WINDOW);
        ConnTrack {
            slots: vec![Slot::default(); nslots].into_boxed_slice(),
            mask: nslots - 1,
            capacity: n,
            len: 0,
            seed: crate::random_seed(),
            timeouts,
            sweep: 0,
            per_endpoint: vec![0; EndpointId::MAX as usize + 1].into_boxed_slice(),
            share_max: n,
            early_drops: 0,
        }
    }

    /// Caps what one endpoint may hold at `percent` of the capacity (at least one entry;
    /// 100: no cap beyond the capacity).
    pub fn with_endpoint_share(mut self, percent: u8) -> Self {
        self.share_max = (self.capacity * percent.min(100) as usize / 100).max(1);
        self
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The most entries one endpoint may hold.
    pub fn endpoint_share(&self) -> usize {
        self.share_max
    }

    /// Entries charged to endpoint `ep`.
    pub fn endpoint_entries(&self, ep: EndpointId) -> usize {
        self.per_endpoint[ep as usize] as usize
    }

    /// Unassured entries dropped to admit new connections (see the module docs).
    pub fn early_drops(&self) -> u64 {
        self.early_drops
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn timeouts(&self) -> &CtTimeouts {
        &self.timeouts
    }

    /// Heap bytes of the slot array and the per-endpoint counts.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.slots) + std::mem::size_of_val(&*self.per_endpoint)
    }

    #[inline]
    fn hash(&self, t: &Tuple) -> u64 {
        let mut h = self.seed ^ ((t.a as u64) << 32 | t.b as u64);
        h = (h ^ (h >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= (t.pa as u64) << 24 | (t.pb as u64) << 8 | t.proto as u64;
        h = (h ^ (h >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }

    /// Slot index holding `t`, if any (expired or not).
    #[inline]
    fn find(&self, t: &Tuple) -> Option<usize> {
        let home = self.hash(t) as usize & self.mask;
        for d in 0..PROBE_WINDOW {
            let i = (home + d) & self.mask;
            let s = &self.slots[i];
            if !s.used {
                return None;
            }
            if s.t == *t {
                return Some(i);
            }
        }
        None
    }

    /// Prefetches the home slot of `key`'s connection, so a [`ConnTrack::lookup`] a few
    /// packets later finds it in cache: the slot array is megabytes, and on a busy table most
    /// lookups otherwise start with a cache miss. Reads nothing but the key.
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        if let Some((t, _)) = tuple_of(key) {
            let slot: *const Slot = &self.slots[self.hash(&t) as usize & self.mask];
            // A slot may straddle two lines; `find` reads its key and `used` flag.
            crate::prefetch::prefetch(slot);
            crate::prefetch::prefetch(slot.wrapping_add(1).cast::<u8>().wrapping_sub(1));
        }
    }

    /// Looks the packet's connection up and, on a hit, advances its state and idle timer.
    /// An expired entry is removed and reported as a miss.
    pub fn lookup(&mut self, key: &FlowKey, tcp_flags: u8, now_ms: u64, generation: u64) -> CtLookup {
        let Some((t, from_a)) = tuple_of(key) else { return CtLookup::Miss };
        let Some(i) = self.find(&t) else { return CtLookup::Miss };
        if self.slots[i].expires_ms <= now_ms {
            self.delete_at(i);
            return CtLookup::Miss;
        }
        let dir = if from_a == self.slots[i].orig_is_a { CtDir::Original } else { CtDir::Reply };
        if t.proto == PROTO_TCP
            && tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN
            && matches!(self.slots[i].state, CtState::TcpTimeWait | CtState::TcpClosed)
        {
            // Port reuse after close: a new connection, which policy must admit afresh.
            self.delete_at(i);
            return CtLookup::Miss;
        }
        let s = &mut self.slots[i];
        let stale = s.generation != generation;
        Self::advance(&self.timeouts, s, dir, tcp_flags, now_ms);
        CtLookup::Hit { dir, stale }
    }

    /// Whether the connection of `quoted` (the packet an ICMP error quotes, as it was sent) is
    /// tracked and live: the error is then RELATED to it (as Linux conntrack has it) and passes
    /// where policy would not admit it as a packet of its own. Read only: an error neither
    /// creates, advances nor refreshes an entry.
    pub fn related(&self, quoted: &FlowKey, now_ms: u64) -> bool {
        let Some((t, _)) = tuple_of(quoted) else { return false };
        self.find(&t).is_some_and(|i| self.slots[i].expires_ms > now_ms)
    }

    fn timeout(to: &CtTimeouts, state: CtState) -> u64 {
        match state {
            CtState::TcpSynSent | CtState::TcpSynRecv => to.tcp_syn_ms,
            CtState::TcpEstablished => to.tcp_established_ms,
            CtState::TcpFinWait => to.tcp_half_closed_ms,
            CtState::TcpTimeWait => to.tcp_close_ms,
            CtState::TcpClosed => to.tcp_rst_ms,
            CtState::UdpUnreplied => to.udp_ms,
            CtState::UdpReplied => to.udp_replied_ms,
            CtState::Icmp => to.icmp_ms,
            CtState::Other => to.other_ms,
        }
    }

    /// Applies one packet to an entry's state and timer.
    fn advance(to: &CtTimeouts, s: &mut Slot, dir: CtDir, flags: u8, now_ms: u64) {
        let before = s.state;
        s.replied |= dir == CtDir::Reply;
        match s.state {
            CtState::UdpUnreplied if dir == CtDir::Reply => s.state = CtState::UdpReplied,
            CtState::TcpClosed => {}
            _ if s.t.proto == PROTO_TCP => {
                if flags & TCP_RST != 0 {
                    s.state = CtState::TcpClosed;
                } else {
                    let syn_ack = flags & (TCP_SYN | TCP_ACK);
                    match (s.state, dir) {
                        (CtState::TcpSynSent, CtDir::Reply) if syn_ack == TCP_SYN | TCP_ACK => {
                            s.state = CtState::TcpSynRecv
                        }
                        (CtState::TcpSynRecv, CtDir::Original) if syn_ack == TCP_ACK => {
                            s.state = CtState::TcpEstablished
                        }
                        _ => {}
                    }
                    if flags & TCP_FIN != 0 {
                        s.fins |= if dir == CtDir::Original { FIN_ORIG } else { FIN_REPLY };
                        s.state =
                            if s.fins == FIN_ORIG | FIN_REPLY { CtState::TcpTimeWait } else { CtState::TcpFinWait };
                    }
                }
            }
            _ => {}
        }
        // The close timers run from the packet that closed, not from the last packet seen.
        let closing = matches!(s.state, CtState::TcpTimeWait | CtState::TcpClosed);
        if !closing || before != s.state {
            s.expires_ms = now_ms.saturating_add(Self::timeout(to, s.state));
        }
    }

    /// Records a connection that policy has just allowed (call after a `Miss`), charged to no
    /// endpoint. See [`ConnTrack::insert_for`].
    pub fn insert(&mut self, key: &FlowKey, tcp_flags: u8, now_ms: u64, generation: u64) -> Result<(), CtError> {
        self.insert_for(key, None, tcp_flags, now_ms, generation)
    }

    /// Records a connection that policy has just allowed (call after a `Miss`), charged to
    /// `owner`. On an existing live entry this applies the packet and adopts `generation`.
    /// Untracked packets (see the module docs) and lone RSTs store nothing and return `Ok`.
    /// A new entry is refused when `owner` holds its share, and takes an expired slot, a free
    /// one, or an early-dropped unassured entry's, in that order (see the module docs).
    pub fn insert_for(
        &mut self,
        key: &FlowKey,
        owner: Option<EndpointId>,
        tcp_flags: u8,
        now_ms: u64,
        generation: u64,
    ) -> Result<(), CtError> {
        let Some((t, from_a)) = tuple_of(key) else { return Ok(()) };
        let state = match t.proto {
            PROTO_TCP if tcp_flags & TCP_RST != 0 => return Ok(()),
            PROTO_TCP if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN => CtState::TcpSynSent,
            PROTO_TCP => CtState::TcpEstablished, // loose pick-up, see the module docs
            PROTO_UDP => CtState::UdpUnreplied,
            PROTO_ICMP => CtState::Icmp,
            _ => CtState::Other,
        };
        if let Some(o) = owner {
            // At its share: its count may still include entries that expired since the last
            // sweep passed them (a full pass takes seconds). Sweep a bounded stretch first, so
            // a pod whose flows have all expired is not refused until the sweep comes round.
            // Only on this path; the probe below starts after it (the sweep moves entries).
            if self.share_max < self.capacity && self.per_endpoint[o as usize] as usize >= self.share_max {
                self.expire(now_ms, SHARE_SWEEP);
            }
        }
        let home = self.hash(&t) as usize & self.mask;
        // The probe chain up to the first free slot: the key itself, or an expired entry to
        // replace in place (which keeps the chain intact).
        let mut free = None;
        let mut reuse = None;
        let mut chain_end = PROBE_WINDOW;
        for d in 0..PROBE_WINDOW {
            let i = (home + d) & self.mask;
            let s = &mut self.slots[i];
            if !s.used {
                free = Some(i);
                chain_end = d;
                break;
            }
            let expired = s.expires_ms <= now_ms;
            if s.t == t {
                if expired {
                    reuse = Some(i);
                    break;
                }
                let dir = if from_a == s.orig_is_a { CtDir::Original } else { CtDir::Reply };
                s.generation = generation;
                Self::advance(&self.timeouts, s, dir, tcp_flags, now_ms);
                return Ok(());
            }
            if expired && reuse.is_none() {
                reuse = Some(i);
            }
        }
        if let Some(o) = owner {
            // An expired entry of the same owner about to be replaced does not count.
            let own_reuse = reuse.is_some_and(|i| self.slots[i].owned && self.slots[i].owner == o);
            let capped = self.share_max < self.capacity;
            if capped && self.per_endpoint[o as usize] as usize >= self.share_max && !own_reuse {
                return Err(CtError::EndpointShare { endpoint: o, limit: self.share_max });
            }
        }
        let i = match (reuse, free) {
            (Some(i), _) => {
                self.release(i);
                i
            }
            (None, Some(i)) if self.len < self.capacity => {
                self.len += 1;
                i
            }
            _ => {
                // Full (or no free slot in the window): drop early. Before the chain's end a
                // victim is replaced in place; after it (another cluster) it is deleted, which
                // leaves `free` free, and the new entry takes `free`.
                let victim = (0..PROBE_WINDOW)
                    .map(|d| (d, (home + d) & self.mask))
                    .filter(|&(_, j)| {
                        let s = &self.slots[j];
                        s.used && (s.expires_ms <= now_ms || !assured(s))
                    })
                    .min_by_key(|&(_, j)| self.slots[j].expires_ms);
                let Some((d, j)) = victim else { return Err(CtError::Full { capacity: self.capacity }) };
                self.early_drops += 1;
                if d < chain_end {
                    self.release(j);
                    j
                } else {
                    let Some(f) = free else { return Err(CtError::Full { capacity: self.capacity }) };
                    self.delete_at(j);
                    self.len += 1;
                    f
                }
            }
        };
        let mut s = Slot {
            t,
            used: true,
            orig_is_a: from_a,
            replied: false,
            owned: owner.is_some(),
            owner: owner.unwrap_or(0),
            state,
            fins: 0,
            home: home as u32,
            generation,
            expires_ms: 0,
        };
        Self::advance(&self.timeouts, &mut s, CtDir::Original, tcp_flags, now_ms);
        s.expires_ms = now_ms.saturating_add(Self::timeout(&self.timeouts, s.state));
        if let Some(o) = owner {
            self.per_endpoint[o as usize] += 1;
        }
        self.slots[i] = s;
        Ok(())
    }

    /// Uncharges the entry at `i` from its endpoint (it is being replaced or deleted).
    #[inline]
    fn release(&mut self, i: usize) {
        let s = &mut self.slots[i];
        if s.owned {
            s.owned = false;
            let c = &mut self.per_endpoint[s.owner as usize];
            *c = c.saturating_sub(1);
        }
    }

    /// Marks the packet's connection as admitted under `generation` (after re-evaluation).
    pub fn refresh(&mut self, key: &FlowKey, generation: u64) {
        if let Some(i) = tuple_of(key).and_then(|(t, _)| self.find(&t)) {
            self.slots[i].generation = generation;
        }
    }

    /// Forgets the packet's connection. True if there was an entry.
    pub fn remove(&mut self, key: &FlowKey) -> bool {
        match tuple_of(key).and_then(|(t, _)| self.find(&t)) {
            Some(i) => {
                self.delete_at(i);
                true
            }
            None => false,
        }
    }

    /// Backward-shift deletion: pull later members of the cluster into the hole when that
    /// keeps them between their home and their current slot.
    fn delete_at(&mut self, hole: usize) {
        self.release(hole);
        let mut i = hole;
        let mut j = hole;
        loop {
            j = (j + 1) & self.mask;
            if !self.slots[j].used {
                break;
            }
            let k = self.slots[j].home as usize;
            // The entry at j may stay if its home lies cyclically in (i, j].
            let stays = if i <= j { i < k && k <= j } else { i < k || k <= j };
            if !stays {
                self.slots[i] = self.slots[j];
                i = j;
            }
        }
        self.slots[i] = Slot::default();
        self.len -= 1;
    }

    /// Removes expired entries, examining at most `budget` slots from where the last call
    /// stopped. Returns how many were removed. Call it from the worker's idle time.
    pub fn expire(&mut self, now_ms: u64, budget: usize) -> usize {
        let mut removed = 0;
        for _ in 0..budget.min(self.slots.len()) {
            let i = self.sweep;
            let s = &self.slots[i];
            if s.used && s.expires_ms <= now_ms {
                // The shift may pull an unexamined entry into `i`: look at `i` again next.
                self.delete_at(i);
                removed += 1;
            } else {
                self.sweep = (i + 1) & self.mask;
            }
        }
        removed
    }

    /// Every entry, expired or not (slow path, for the CLI).
    pub fn entries(&self) -> impl Iterator<Item = CtEntryView> + '_ {
        self.slots.iter().filter(|s| s.used).map(|s| {
            let t = &s.t;
            let original = if t.proto == PROTO_ICMP {
                FlowKey {
                    src: t.a,
                    dst: t.b,
                    proto: t.proto,
                    sport: if s.orig_is_a { (ICMP_ECHO_REQUEST as u16) << 8 } else { 0 },
                    dport: t.pa,
                    fragment: Fragment::None,
                }
            } else if s.orig_is_a {
                FlowKey { src: t.a, dst: t.b, proto: t.proto, sport: t.pa, dport: t.pb, fragment: Fragment::None }
            } else {
                FlowKey { src: t.b, dst: t.a, proto: t.proto, sport: t.pb, dport: t.pa, fragment: Fragment::None }
            };
            CtEntryView { original, state: s.state, expires_ms: s.expires_ms, generation: s.generation }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: u32 = 0x0a00_0001;
    const B: u32 = 0x0a00_0002;

    fn tcp(src: u32, sport: u16, dst: u32, dport: u16) -> FlowKey {
        FlowKey { src, dst, proto: PROTO_TCP, sport, dport, fragment: Fragment::None }
    }
    fn udp(src: u32, sport: u16, dst: u32, dport: u16) -> FlowKey {
        FlowKey { proto: PROTO_UDP, ..tcp(src, sport, dst, dport) }
    }
    fn rev(k: FlowKey) -> FlowKey {
        FlowKey { src: k.dst, dst: k.src, sport: k.dport, dport: k.sport, ..k }
    }
    fn echo(src: u32, dst: u32, ty: u8, id: u16) -> FlowKey {
        FlowKey { src, dst, proto: PROTO_ICMP, sport: (ty as u16) << 8, dport: id, fragment: Fragment::None }
    }
    fn ct() -> ConnTrack {
        ConnTrack::with_capacity(64, CtTimeouts::default())
    }
    const HIT_ORIG: CtLookup = CtLookup::Hit { dir: CtDir::Original, stale: false };
    const HIT_REPLY: CtLookup = CtLookup::Hit { dir: CtDir::Reply, stale: false };

    fn state_of(ct: &ConnTrack) -> CtState {
        ct.entries().next().unwrap().state
    }

    #[test]
    fn related_finds_a_live_connection_in_either_direction_without_touching_it() {
        let mut c = ct();
        let k = udp(A, 40000, B, 53);
        c.insert(&k, 0, 0, 1).unwrap();
        let before = c.entries().next().unwrap();
        assert!(c.related(&k, 10) && c.related(&rev(k), 10));
        assert!(!c.related(&udp(A, 40001, B, 53), 10), "another connection");
        let after = c.entries().next().unwrap();
        assert_eq!((after.state, after.expires_ms), (before.state, before.expires_ms), "untouched");
        assert!(!c.related(&k, CtTimeouts::default().udp_ms + 1), "expired");
        c.insert(&echo(A, B, ICMP_ECHO_REQUEST, 7), 0, 0, 1).unwrap();
        assert!(c.related(&echo(A, B, ICMP_ECHO_REQUEST, 7), 10), "an error about an echo request");
    }

    #[test]
    fn reply_finds_the_originators_entry() {
        let mut c = ct();
        // Originator is the higher (addr, port) end, so normalisation swaps it.
        let k = tcp(B, 40000, A, 80);
        assert_eq!(c.lookup(&k, TCP_SYN, 0, 1), CtLookup::Miss);
        c.insert(&k, TCP_SYN, 0, 1).unwrap();
        assert_eq!(c.lookup(&rev(k), TCP_SYN | TCP_ACK, 1, 1), HIT_REPLY);
        assert_eq!(c.lookup(&k, TCP_ACK, 2, 1), HIT_ORIG);
        assert_eq!(state_of(&c), CtState::TcpEstablished);
        assert_eq!(c.entries().next().unwrap().original, k);
        // A different port pair is another connection.
        assert_eq!(c.lookup(&tcp(A, 80, B, 40001), TCP_ACK, 3, 1), CtLookup::Miss);
    }

    #[test]
    fn tcp_fins_then_close_timer_expires() {
        let to = CtTimeouts::default();
        let mut c = ct();
        let k = tcp(A, 1234, B, 443);
        c.insert(&k, TCP_SYN, 0, 1).unwrap();
        c.lookup(&rev(k), TCP_SYN | TCP_ACK, 10, 1);
        c.lookup(&k, TCP_ACK, 20, 1);
        c.lookup(&k, TCP_FIN | TCP_ACK, 1000, 1);
        assert_eq!(state_of(&c), CtState::TcpFinWait);
        c.lookup(&rev(k), TCP_FIN | TCP_ACK, 2000, 1);
        assert_eq!(state_of(&c), CtState::TcpTimeWait);
        // The last ACK does not extend the close timer.
        assert_eq!(c.lookup(&k, TCP_ACK, 3000, 1), HIT_ORIG);
        assert_eq!(c.lookup(&k, TCP_ACK, 2000 + to.tcp_close_ms - 1, 1), HIT_ORIG);
        assert_eq!(c.lookup(&k, TCP_ACK, 2000 + to.tcp_close_ms, 1), CtLookup::Miss);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn tcp_rst_closes_quickly_and_new_syn_is_a_miss() {
        let to = CtTimeouts::default();
        let mut c = ct();
        let k = tcp(A, 1234, B, 443);
        c.insert(&k, TCP_SYN, 0, 1).unwrap();
        c.lookup(&rev(k), TCP_SYN | TCP_ACK, 10, 1);
        c.lookup(&k, TCP_ACK, 20, 1);
        c.lookup(&rev(k), TCP_RST, 100, 1);
        assert_eq!(state_of(&c), CtState::TcpClosed);
        assert_eq!(c.lookup(&k, TCP_ACK, 100 + to.tcp_rst_ms - 1, 1), HIT_ORIG);
        assert_eq!(c.lookup(&k, TCP_ACK, 100 + to.tcp_rst_ms, 1), CtLookup::Miss);
        // Port reuse right after a RST: the SYN goes back to policy.
        c.insert(&k, TCP_SYN, 200_000, 1).unwrap();
        c.lookup(&k, TCP_RST, 200_001, 1);
        assert_eq!(c.lookup(&k, TCP_SYN, 200_002, 1), CtLookup::Miss);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn timeouts_per_protocol_and_state() {
        let to = CtTimeouts::default();
        let cases: [(FlowKey, u8, u64); 4] = [
            (tcp(A, 1, B, 2), TCP_SYN, to.tcp_syn_ms),
            (udp(A, 1, B, 2), 0, to.udp_ms),
            (echo(A, B, ICMP_ECHO_REQUEST, 7), 0, to.icmp_ms),
            (FlowKey { proto: 47, sport: 0, dport: 0, ..tcp(A, 0, B, 0) }, 0, to.other_ms),
        ];
        for (k, flags, timeout) in cases {
            let mut c = ct();
            c.insert(&k, flags, 1000, 1).unwrap();
            assert_eq!(c.entries().next().unwrap().expires_ms, 1000 + timeout, "{k:?}");
            assert!(matches!(c.lookup(&k, flags, 1000 + timeout - 1, 1), CtLookup::Hit { .. }));
            // That hit restarted the timer.
            assert!(matches!(c.lookup(&k, 0, 1000 + 2 * timeout - 2, 1), CtLookup::Hit { .. }));
            assert_eq!(c.lookup(&k, flags, 1000 + 3 * timeout, 1), CtLookup::Miss, "{k:?}");
        }
        // UDP gets the long timeout once a reply was seen; TCP once established.
        let mut c = ct();
        let k = udp(A, 5353, B, 53);
        c.insert(&k, 0, 0, 1).unwrap();
        c.lookup(&rev(k), 0, 10, 1);
        assert_eq!(state_of(&c), CtState::UdpReplied);
        assert_eq!(c.entries().next().unwrap().expires_ms, 10 + to.udp_replied_ms);
        let mut c = ct();
        let k = tcp(A, 1, B, 2);
        c.insert(&k, TCP_ACK, 0, 1).unwrap(); // loose pick-up
        assert_eq!(state_of(&c), CtState::TcpEstablished);
        assert_eq!(c.entries().next().unwrap().expires_ms, to.tcp_established_ms);
        // A lone RST creates nothing.
        let mut c = ct();
        c.insert(&k, TCP_RST, 0, 1).unwrap();
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn icmp_echo_reply_pairs_with_request() {
        let mut c = ct();
        c.insert(&echo(A, B, ICMP_ECHO_REQUEST, 99), 0, 0, 1).unwrap();
        assert_eq!(c.lookup(&echo(B, A, ICMP_ECHO_REPLY, 99), 0, 1, 1), HIT_REPLY);
        assert_eq!(c.lookup(&echo(A, B, ICMP_ECHO_REQUEST, 99), 0, 2, 1), HIT_ORIG);
        // Other id, or a reply in the request's direction, or a ping the other way: no entry.
        assert_eq!(c.lookup(&echo(B, A, ICMP_ECHO_REPLY, 98), 0, 3, 1), CtLookup::Miss);
        assert_eq!(c.lookup(&echo(A, B, ICMP_ECHO_REPLY, 99), 0, 3, 1), CtLookup::Miss);
        assert_eq!(c.lookup(&echo(B, A, ICMP_ECHO_REQUEST, 99), 0, 3, 1), CtLookup::Miss);
        // Non-echo ICMP is not tracked.
        let unreach = FlowKey { sport: 3 << 8 | 1, dport: 0, ..echo(B, A, 0, 0) };
        c.insert(&unreach, 0, 4, 1).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(&unreach, 0, 5, 1), CtLookup::Miss);
    }

    #[test]
    fn stale_generation_is_reported_until_refreshed() {
        let mut c = ct();
        let k = udp(A, 1, B, 2);
        c.insert(&k, 0, 0, 4).unwrap();
        assert_eq!(c.lookup(&k, 0, 1, 4), HIT_ORIG);
        assert_eq!(c.lookup(&rev(k), 0, 2, 5), CtLookup::Hit { dir: CtDir::Reply, stale: true });
        c.refresh(&rev(k), 5);
        assert_eq!(c.lookup(&k, 0, 3, 5), HIT_ORIG);
        assert_eq!(c.entries().next().unwrap().generation, 5);
        assert!(c.remove(&rev(k)));
        assert!(!c.remove(&k));
        assert_eq!(c.lookup(&k, 0, 4, 5), CtLookup::Miss);
    }

    #[test]
    fn full_table_of_answered_flows_refuses_then_evicts_expired() {
        let to = CtTimeouts::default();
        let mut c = ConnTrack::with_capacity(100, to);
        for p in 0..100 {
            c.insert(&udp(A, p, B, 53), 0, 0, 1).unwrap();
            assert_eq!(c.lookup(&rev(udp(A, p, B, 53)), 0, 0, 1), HIT_REPLY);
        }
        assert_eq!(c.len(), 100);
        let extra = udp(A, 1000, B, 53);
        assert_eq!(c.insert(&extra, 0, 1, 1), Err(CtError::Full { capacity: 100 }));
        assert_eq!(c.insert(&extra, 0, 1, 1).unwrap_err().drop_reason(), DropReason::ConntrackFull);
        assert_eq!((c.len(), c.early_drops()), (100, 0), "answered flows are never dropped early");
        // Once everything has expired, the insert replaces an expired entry in its window.
        c.insert(&extra, 0, to.udp_replied_ms, 1).unwrap();
        assert_eq!(c.len(), 100);
        assert_eq!(c.lookup(&extra, 0, to.udp_replied_ms + 1, 1), HIT_ORIG);
    }

    /// Issue 9 item 8: a full table of flows nobody answered admits a new one by dropping the
    /// unassured entry that would expire first; answered ones stay.
    #[test]
    fn full_table_drops_an_unreplied_entry_early_for_a_new_one() {
        let mut c = ConnTrack::with_capacity(64, CtTimeouts::default());
        for p in 0..64 {
            c.insert(&udp(A, p, B, 53), 0, p as u64, 1).unwrap();
        }
        // Half answered: those may not go.
        for p in (0..64).step_by(2) {
            c.lookup(&rev(udp(A, p, B, 53)), 0, 100, 1);
        }
        for n in 0..32u16 {
            c.insert(&udp(B, 2000 + n, A, 80), 0, 200, 1).unwrap();
            assert_eq!(c.len(), 64);
        }
        assert_eq!(c.early_drops(), 32);
        for p in (0..64).step_by(2) {
            assert_eq!(c.lookup(&udp(A, p, B, 53), 0, 300, 1), HIT_ORIG, "answered flow {p} kept");
        }
        assert!(c.lookup(&udp(B, 2031, A, 80), 0, 300, 1) == HIT_ORIG, "the newest one is in");
        // A table of only answered flows refuses.
        let unanswered: Vec<FlowKey> =
            c.entries().filter(|e| e.state == CtState::UdpUnreplied).map(|e| rev(e.original)).collect();
        for k in unanswered {
            c.lookup(&k, 0, 400, 1);
        }
        assert_eq!(c.insert(&udp(B, 9, A, 9), 0, 500, 1), Err(CtError::Full { capacity: 64 }));
        // A TCP handshake that never completed is not assured either.
        let mut c = ConnTrack::with_capacity(2, CtTimeouts::default());
        c.insert(&tcp(A, 1, B, 80), TCP_SYN, 0, 1).unwrap();
        c.lookup(&rev(tcp(A, 1, B, 80)), TCP_SYN | TCP_ACK, 1, 1);
        c.insert(&tcp(A, 2, B, 80), TCP_SYN, 2, 1).unwrap();
        c.insert(&tcp(A, 3, B, 80), TCP_SYN, 3, 1).unwrap();
        assert_eq!(c.lookup(&tcp(A, 1, B, 80), TCP_ACK, 4, 1), CtLookup::Miss, "the older half-open one went");
    }

    #[test]
    fn one_endpoint_holds_at_most_its_share() {
        let to = CtTimeouts::default();
        let mut c = ConnTrack::with_capacity(100, to).with_endpoint_share(25);
        assert_eq!(c.endpoint_share(), 25);
        for p in 0..25 {
            c.insert_for(&udp(A, p, B, 53), Some(7), 0, 0, 1).unwrap();
        }
        let err = c.insert_for(&udp(A, 99, B, 53), Some(7), 0, 0, 1).unwrap_err();
        assert_eq!(err, CtError::EndpointShare { endpoint: 7, limit: 25 });
        assert_eq!(err.drop_reason(), DropReason::ConntrackEndpointShare);
        // A packet of an existing connection is not a new entry: never refused.
        c.insert_for(&udp(A, 3, B, 53), Some(7), 0, 1, 1).unwrap();
        // Others are not affected; uncharged inserts neither.
        c.insert_for(&udp(B, 1, A, 1), Some(8), 0, 0, 1).unwrap();
        c.insert(&udp(B, 2, A, 2), 0, 0, 1).unwrap();
        assert_eq!((c.endpoint_entries(7), c.endpoint_entries(8), c.len()), (25, 1, 27));
        // Removal, expiry on lookup, and the sweep all give the share back.
        assert!(c.remove(&udp(A, 0, B, 53)));
        assert_eq!(c.lookup(&udp(A, 1, B, 53), 0, to.udp_ms + 10, 1), CtLookup::Miss);
        assert_eq!(c.endpoint_entries(7), 23);
        c.expire(to.udp_ms + 10, usize::MAX);
        c.expire(to.udp_ms + 10, usize::MAX);
        assert_eq!((c.endpoint_entries(7), c.endpoint_entries(8), c.len()), (0, 0, 0));
        // An endpoint at its share may replace its own expired entry.
        for p in 0..25 {
            c.insert_for(&udp(A, p, B, 53), Some(7), 0, 0, 1).unwrap();
        }
        c.insert_for(&udp(A, 0, B, 53), Some(7), 0, to.udp_ms, 1).unwrap();
        // (At its share, the insert swept a stretch first: expired ones there went with it.)
        assert!(c.endpoint_entries(7) < 25, "{}", c.endpoint_entries(7));
    }

    #[test]
    fn an_endpoint_whose_flows_expired_is_not_refused_before_the_sweep_reaches_them() {
        let to = CtTimeouts::default();
        let mut c = ConnTrack::with_capacity(4096, to).with_endpoint_share(1);
        let share = c.endpoint_share();
        for p in 0..share as u16 {
            c.insert_for(&udp(A, p, B, 53), Some(7), 0, 0, 1).unwrap();
        }
        assert!(c.insert_for(&udp(A, 999, B, 53), Some(7), 0, 1, 1).is_err(), "at its share");
        // Every one of its flows has expired; no lookup or sweep has touched them. New flows
        // (elsewhere in the table than the old ones' slots) are its due: each refused attempt
        // sweeps SHARE_SWEEP slots, so within one pass over the table all are admitted.
        let later = to.udp_ms + 1_000;
        let attempts_bound = share + c.slots.len() / SHARE_SWEEP + 1;
        let (mut admitted, mut attempts) = (0u16, 0);
        while (admitted as usize) < share && attempts < attempts_bound {
            attempts += 1;
            if c.insert_for(&udp(A, 1_000 + admitted, B, 54), Some(7), 0, later, 1).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted as usize, share, "{attempts} attempts");
        assert_eq!(c.endpoint_entries(7), share);
    }

    #[test]
    fn endpoint_counts_follow_early_drops_and_reuse() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(9);
        let mut c = ConnTrack::with_capacity(300, CtTimeouts::default()).with_endpoint_share(60);
        for step in 0..30_000u64 {
            let ep = rng.random_range(0..4u16);
            let k = udp(A + ep as u32, rng.random_range(0..500u16), B, 53);
            match rng.random_range(0..10) {
                0 => {
                    c.remove(&k);
                }
                1 => {
                    c.lookup(&rev(k), 0, step, 1);
                }
                2 => {
                    c.expire(step, 64);
                }
                _ => {
                    let _ = c.insert_for(&k, Some(ep), 0, step * 10, 1);
                }
            }
            if step % 1000 == 0 {
                let mut want = [0usize; 4];
                for s in c.slots.iter().filter(|s| s.used && s.owned) {
                    want[s.owner as usize] += 1;
                }
                for ep in 0..4u16 {
                    assert_eq!(c.endpoint_entries(ep), want[ep as usize]);
                    assert!(c.endpoint_entries(ep) <= 180);
                }
                assert!(c.len() <= 300);
            }
        }
    }

    #[test]
    fn never_grows_past_capacity_and_stays_consistent() {
        use rand::{rngs::SmallRng, Rng, SeedableRng};
        let mut rng = SmallRng::seed_from_u64(7);
        let mut c = ConnTrack::with_capacity(500, CtTimeouts::default());
        let mut live: std::collections::HashSet<(u16, u16)> = Default::default();
        for step in 0..20_000u64 {
            let (sp, dp) = (rng.random_range(0..800u16), rng.random_range(0..4u16));
            let k = udp(A, sp, B, dp);
            match rng.random_range(0..3) {
                0 => {
                    if c.remove(&k) {
                        assert!(live.remove(&(sp, dp)));
                    }
                }
                _ => {
                    if c.insert(&k, 0, step, 1).is_ok() {
                        // Answered, so never dropped early: the table then is an exact map.
                        c.lookup(&rev(k), 0, step, 1);
                        live.insert((sp, dp));
                    }
                }
            }
            assert!(c.len() <= 500);
            assert_eq!(c.len(), live.len());
        }
        for &(sp, dp) in &live {
            assert!(matches!(c.lookup(&udp(A, sp, B, dp), 0, 20_000, 1), CtLookup::Hit { .. }));
        }
        assert_eq!(c.entries().count(), c.len());
    }

    #[test]
    fn expire_sweeps_with_bounded_work() {
        let to = CtTimeouts::default();
        let mut c = ConnTrack::with_capacity(1000, to);
        for p in 0..1000 {
            c.insert(&udp(A, p, B, 53), 0, 0, 1).unwrap();
        }
        for p in 0..10 {
            c.lookup(&udp(A, p, B, 53), 0, to.udp_ms - 1, 1); // keeps 10 alive
        }
        let slots = c.slots.len();
        assert_eq!(c.expire(to.udp_ms, 0), 0);
        let first = c.expire(to.udp_ms, slots / 2);
        assert!(first > 0 && first <= slots / 2);
        let mut total = first;
        for _ in 0..4 {
            total += c.expire(to.udp_ms, slots);
        }
        assert_eq!(total, 990);
        assert_eq!(c.len(), 10);
        assert_eq!(c.lookup(&udp(A, 3, B, 53), 0, to.udp_ms, 1), HIT_ORIG);
    }

    #[test]
    fn non_first_fragments_are_not_tracked() {
        let mut c = ct();
        let k = udp(A, 1, B, 2);
        c.insert(&k, 0, 0, 1).unwrap();
        let frag = FlowKey { sport: 0, dport: 0, fragment: Fragment::NonFirst, ..k };
        assert_eq!(c.lookup(&frag, 0, 1, 1), CtLookup::Miss);
        c.insert(&frag, 0, 1, 1).unwrap();
        assert_eq!(c.len(), 1);
    }
}
