//! The per-worker pipeline: a batch of received frames in, verdicts and in-place edits out.
//!
//! Stages run over the whole batch, each skipping frames that already have a final verdict
//! (VPP-style), so every stage's code and data stay hot:
//!
//! 1. **input** (per frame): L2 checks and ARP; RFC 1812 5.2.2 IPv4 checks (Parameter Problem
//!    for malformed options); anti-spoofing (pods, the host port, our pod block from the
//!    uplink); local delivery (IPIP decapsulation from known peers with inner-source checks and
//!    RFC 6040 ECN, echo replies, RFC 2003 relay of underlay errors, delivery to the host); TTL
//!    check for transit. Sets `Drop`, `Tx` (ARP replies), `Punt`, `Consumed`, or leaves
//!    `Continue` with the lookup key. Echo replies and ICMP errors made here are "locally
//!    originated". The host port's IPv4 is routed like any input, without TTL check.
//! 2. **lookup** (batched): longest-prefix match for every `Continue` frame at once, and for
//!    decapsulated frames' inner sources (the reverse-path check egress applies).
//! 3. **egress** (per frame): IPIP reverse-path check, ECMP choice, policy with connection
//!    tracking (ICMP errors about tracked connections are related), TTL decrement,
//!    MTU (fragment, or ICMP fragmentation needed), IPIP encapsulation, neighbour resolution
//!    (or hold), L2 rewrite. Sets `Tx`, `Held`, `Drop`, or marks a frame for a second pass
//!    when it was turned into an ICMP error (no route, an unreachable or prohibit route,
//!    fragmentation needed).
//! 4. **reroute**: lookup + egress once more for those ICMP errors (never generated again for
//!    them, so at most two passes).
//! 5. **output**: group `Tx` frames per port, count.
//!
//! Timers ride on each call (`service`): held frames whose neighbour resolved are sent, those
//! that waited in vain are answered ICMP host unreachable (RFC 1812 4.3.3.1).
//!
//! Each stage sees a frame as one [`Pkt`] (the buffer borrowed in place, its start and length,
//! the port it came on) and its [`Meta`] (what earlier stages decided). Input validates the
//! IPv4 header once ([`ipv4::check_input`], then the frame is trimmed to the datagram); later
//! stages read it through [`Pkt::ip`], which does not check again.
//!
//! Nothing here allocates after [`Pipeline::new`]: metadata arrays, the generated-frame pool,
//! the hold queue and the conntrack table are all sized up front.

use std::sync::Arc;

mod egress;
mod icmp_error;
mod input;
mod local;
mod lookup;
mod neigh;
mod output;

use super::frag;
use super::observe::{self, describe_policy, TraceScratch};
use super::output::Output;
use super::packet::{Frame, Pkt, PortId, HEADROOM, MAX_BATCH};
use super::quiesce::ReaderSlot;
use super::state::{Endpoint, NextHop, PortKind, Shared, Snapshot};
use crate::acl::{Action, ConnTrack, CtDir, CtLookup, CtTimeouts, Direction, EndpointId, FlowKey, Fragment};
use crate::fib::{NhId, NH_NONE};
use crate::neigh::{HoldQueue, NeighLookup, ProxyArp};
use crate::offload;
use crate::ratelimit::{DestBuckets, TokenBucket};
use crate::stats::{Counters, DropReason};
use crate::wire::arp::{self, ArpPacket};
use crate::wire::ethernet::{self, MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_QINQ, ETHERTYPE_VLAN};
use crate::wire::icmp;
use crate::wire::ipv4::{self, Ipv4Error, Ipv4Packet, FLAG_DF, OFFSET_MASK, PROTO_ICMP, PROTO_IPIP, PROTO_TCP};
use crate::wire::l4;

const ETH: usize = ethernet::HEADER_LEN;
/// Bytes an ICMP error prepends to the quoted datagram (IPv4 header + ICMP header).
const ICMP_ERR_OVERHEAD: usize = ipv4::MIN_HEADER_LEN + icmp::HEADER_LEN;
/// RFC 1812 4.3.2.3: an ICMP error quotes as much of the original as fits in 576 bytes.
const ICMP_ERR_MAX: usize = 576;
const IPIP_OVERHEAD: usize = ipv4::MIN_HEADER_LEN;
/// ECN field of the TOS byte (RFC 3168) and its codepoints.
const ECN_MASK: u8 = 0x03;
const ECN_NOT_ECT: u8 = 0;
const ECN_ECT1: u8 = 1;
const ECN_ECT0: u8 = 2;
const ECN_CE: u8 = 3;
/// Per-destination ICMP error buckets (a fixed table; colliding destinations share one).
const ICMP_DEST_BUCKETS: usize = 256;
/// How many frames ahead input prefetches a frame's first line, and egress its conntrack slot
/// (l3fwd prefetches 3 to 8 ahead): far enough that the line arrives while the frames in
/// between are worked on. 2 and 8 measured no better.
const PREFETCH_FRAMES: usize = 4;

/// What happens to a frame. Final once it is anything but `Continue`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Still in the pipeline.
    Continue,
    /// Send on this port (the frame is ready: L2 header written).
    Tx(PortId),
    /// Hand to the host port unchanged (or drop `local/no-punt-port` when there is none).
    Punt,
    /// Absorbed by the router (an ARP reply we asked for).
    Consumed,
    /// Copied into the hold queue while its next hop resolves.
    Held,
    Drop(DropReason),
}

#[derive(Copy, Clone)]
pub(super) struct Meta {
    pub(super) verdict: Verdict,
    /// Made by the router (echo reply, ICMP error): no policy, no TTL decrement, no ICMP error
    /// about it.
    pub(super) local_origin: bool,
    /// Arrived inside IPIP from a peer node.
    pub(super) decapped: bool,
    /// Sent by the node's kernel (host port): routed like any input, but the kernel is this
    /// router's own host, so no TTL check or decrement, and only pods' policy applies.
    pub(super) from_host: bool,
    /// Turned into an ICMP error during egress: needs a second lookup.
    pub(super) reroute: bool,
    /// Went through the FIB lookup (`nh` is its answer); shown by packet trace.
    pub(super) looked_up: bool,
    /// A decapsulated frame's inner source still to check against `peer` (0: none): looked up
    /// with the destinations, checked at egress.
    pub(super) rpf_src: u32,
    /// The outer source of a decapsulated frame.
    pub(super) peer: u32,
    /// The FIB's answer for `rpf_src`.
    pub(super) rpf_nh: NhId,
    pub(super) dst: u32,
    pub(super) nh: NhId,
}

const META_INIT: Meta = Meta {
    verdict: Verdict::Continue,
    local_origin: false,
    decapped: false,
    from_host: false,
    reroute: false,
    looked_up: false,
    rpf_src: 0,
    peer: 0,
    rpf_nh: NH_NONE,
    dst: 0,
    nh: NH_NONE,
};

/// Sizes and rates of one worker's private state.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub conntrack_capacity: usize,
    /// The most of `conntrack_capacity` one endpoint may hold, in percent.
    pub conntrack_endpoint_share_pct: u8,
    pub conntrack_timeouts: CtTimeouts,
    /// Frames held in total while their next hop resolves, and per next hop.
    pub hold_slots: usize,
    pub hold_per_neighbour: usize,
    /// How long a frame may wait for resolution.
    pub hold_timeout_ms: u64,
    /// Buffers for frames the pipeline makes itself per batch (fragments, ARP, released).
    pub emit_slots: usize,
    /// ICMP error rate limit (RFC 1812 4.3.2.8): tokens per second and burst, for the worker
    /// in total and per destination.
    pub icmp_rate_per_sec: u32,
    pub icmp_burst: u32,
    pub icmp_rate_per_dest: u32,
    pub icmp_burst_per_dest: u32,
    /// ARP replies we did not ask for, passed on to the node's kernel (it may have asked).
    pub arp_punt_rate_per_sec: u32,
    pub arp_punt_burst: u32,
    /// ARP request rate limit, for each of two budgets: requests for the next hops of routes
    /// (the gateway, other nodes: from configuration) and requests for on-link destinations
    /// (a sender's choice), so no sender can delay the resolution of a route's next hop.
    pub arp_rate_per_sec: u32,
    pub arp_burst: u32,
    /// Judge traffic between a local pod and the node's own kernel by the pod's policy (config
    /// `host_pod_policy = "enforce"`). Off (the default), it is always allowed, as Kubernetes
    /// wants (kubelet probes reach a default-deny pod).
    pub enforce_host_pod_policy: bool,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            conntrack_capacity: 1 << 16,
            conntrack_endpoint_share_pct: 50,
            conntrack_timeouts: CtTimeouts::default(),
            hold_slots: 256,
            hold_per_neighbour: 16,
            hold_timeout_ms: 3_000,
            emit_slots: 256,
            icmp_rate_per_sec: 1_000,
            icmp_burst: 100,
            icmp_rate_per_dest: 100,
            icmp_burst_per_dest: 50,
            arp_punt_rate_per_sec: 100,
            arp_punt_burst: 50,
            arp_rate_per_sec: 100,
            arp_burst: 20,
            enforce_host_pod_policy: false,
        }
    }
}

/// One worker's pipeline and private state. Shares only read-only state ([`Shared`]) with
/// other workers; its counters are readable by others.
pub struct Pipeline {
    pub(super) shared: Arc<Shared>,
    counters: Arc<Counters>,
    cfg: PipelineConfig,
    ct: ConnTrack,
    hold: HoldQueue,
    /// Next hops with frames in the hold queue (bounded by the hold queue's size), and whether
    /// each is on-link (its requests come out of `arp_rl_onlink`).
    pending: Vec<(u32, bool)>,
    icmp_rl: TokenBucket,
    icmp_dest_rl: DestBuckets,
    /// ARP requests for routes' next hops, and for on-link destinations.
    arp_rl_hops: TokenBucket,
    arp_rl_onlink: TokenBucket,
    arp_punt_rl: TokenBucket,
    pub(super) meta: Box<[Meta]>,
    /// Next hops' MACs already resolved in this batch (see [`neigh::BatchNeigh`]).
    neigh_cache: neigh::BatchNeigh,
    keys: Box<[u32]>,
    nhs: Box<[NhId]>,
    idx: Box<[u16]>,
    pub(super) out: Output,
    ident: u16,
    last_service_ms: u64,
    /// This worker's slot in [`Shared::readers`] (its batch boundaries).
    reader: Option<ReaderSlot>,
    /// The last connection-table dump request answered.
    ct_answered: u64,
    /// Set while a traced batch runs: what policy decided, per frame of the chunk.
    pub(super) trace: Option<Box<TraceScratch>>,
    /// Wall-clock time for capture timestamps, from the caller ([`Pipeline::set_wall_clock`]).
    pub(super) wall_clock: fn() -> u64,
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>, cfg: PipelineConfig) -> Self {
        let ports = shared.snapshot.load().ports.len();
        Pipeline {
            counters: Arc::new(Counters::new(super::packet::MAX_PORTS)),
            ct: ConnTrack::with_capacity(cfg.conntrack_capacity, cfg.conntrack_timeouts)
                .with_endpoint_share(cfg.conntrack_endpoint_share_pct),
            hold: HoldQueue::new(cfg.hold_slots, cfg.hold_per_neighbour, super::packet::FRAME_BUF_SIZE),
            pending: Vec::with_capacity(cfg.hold_slots),
            icmp_rl: TokenBucket::new(cfg.icmp_rate_per_sec, cfg.icmp_burst),
            icmp_dest_rl: DestBuckets::new(ICMP_DEST_BUCKETS, cfg.icmp_rate_per_dest, cfg.icmp_burst_per_dest),
            arp_rl_hops: TokenBucket::new(cfg.arp_rate_per_sec, cfg.arp_burst),
            arp_rl_onlink: TokenBucket::new(cfg.arp_rate_per_sec, cfg.arp_burst),
            arp_punt_rl: TokenBucket::new(cfg.arp_punt_rate_per_sec, cfg.arp_punt_burst),
            meta: vec![META_INIT; MAX_BATCH].into_boxed_slice(),
            neigh_cache: neigh::BatchNeigh::default(),
            // Destinations, and as many inner sources of decapsulated frames.
            keys: vec![0; 2 * MAX_BATCH].into_boxed_slice(),
            nhs: vec![NH_NONE; 2 * MAX_BATCH].into_boxed_slice(),
            idx: vec![0; 2 * MAX_BATCH].into_boxed_slice(),
            out: Output::new(ports.max(64), MAX_BATCH, cfg.emit_slots),
            ident: 1,
            last_service_ms: u64::MAX,
            reader: Some(shared.readers.register().expect("at most MAX_READERS workers per node")),
            ct_answered: 0,
            trace: None,
            wall_clock: || 0,
            shared,
            cfg,
        }
    }

    /// This worker's number among the node's (its reader slot).
    pub fn id(&self) -> u32 {
        self.reader.as_ref().map_or(u32::MAX, |r| r.index() as u32)
    }

    /// Answers the control side's requests that are not about packets (a connection-table
    /// dump). Cheap when there are none: the poll loop calls it every pass.
    pub fn poll_requests(&mut self) {
        if self.shared.observe.active() & observe::CT_DUMP == 0 {
            return;
        }
        if let Some(n) = self.shared.observe.ct_dump_wanted(self.ct_answered) {
            self.ct_answered = n;
            self.shared.observe.ct_dump_answer(self.id(), n, self.ct.entries().collect());
        }
    }

    /// The wall clock capture timestamps are read from (nanoseconds since the Unix epoch). The
    /// core reads no clock of its own: the daemon's worker passes the system's in; until then
    /// (tests, benchmarks) captures are stamped 0. Called only while a capture runs.
    pub fn set_wall_clock(&mut self, clock: fn() -> u64) {
        self.wall_clock = clock;
    }

    /// Whether the policy in force keeps state (anything but allow-all), so that with more
    /// than one worker both directions of a flow must meet the same one (see
    /// [`crate::dataplane::affinity`]).
    pub fn needs_flow_affinity(&self) -> bool {
        !self.shared.snapshot.load().policy.is_allow_all()
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    pub fn conntrack(&self) -> &ConnTrack {
        &self.ct
    }

    /// The result of the last [`Pipeline::process`] call.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// Runs the pipeline over `frames` (any number; processed `MAX_BATCH` at a time), editing
    /// them in place. Afterwards [`Pipeline::output`] lists, per port, the indices of frames to
    /// send, and the frames the pipeline generated. `now_ms` is a monotonic clock.
    pub fn process<F: Frame>(&mut self, frames: &mut [F], now_ms: u64) -> &Output {
        if let Some(r) = &self.reader {
            self.shared.readers.enter(r);
        }
        let snap = self.shared.snapshot.load_full();
        self.out.reset(snap.ports.len(), MAX_BATCH);
        self.service(&snap, now_ms);
        if self.shared.observe.active() & (observe::TRACE | observe::CAPTURE) != 0 {
            self.process_observed(&snap, frames, now_ms);
        } else {
            let mut base = 0u32;
            for chunk in frames.chunks_mut(MAX_BATCH) {
                self.process_chunk(&snap, chunk, base, now_ms);
                base += chunk.len() as u32;
            }
        }
        drop(snap);
        if let Some(r) = &mut self.reader {
            self.shared.readers.leave(r);
        }
        &self.out
    }

    pub(super) fn process_chunk<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], base: u32, now: u64) {
        let n = frames.len();
        // Borrowed out of `self` for the batch so stages write each frame's metadata in place
        // (copying it in and out stalled on store forwarding). An empty box does not allocate.
        let mut meta = std::mem::take(&mut self.meta);
        let meta_n = &mut meta[..n];
        meta_n.fill(META_INIT);
        self.neigh_cache.clear();
        // 1. input, with each frame's first line prefetched a few frames ahead: the headers
        //    it reads were written by the NIC (in the bench, a batch earlier) and are rarely
        //    still in L1.
        self.count_rx(frames);
        for f in frames.iter_mut().take(PREFETCH_FRAMES) {
            prefetch_frame(f);
        }
        for (i, m) in meta_n.iter_mut().enumerate() {
            if let Some(f) = frames.get_mut(i + PREFETCH_FRAMES) {
                prefetch_frame(f);
            }
            with_pkt(&mut frames[i], |p| self.input(snap, p, m, now));
            // Policy for what is delivered to the host is decided at input.
            if let Some(t) = &mut self.trace {
                t.settle(i);
            }
        }
        // 2-3. lookup and egress
        self.lookup(meta_n);
        self.egress_all(snap, frames, meta_n, now);
        // 4. reroute the ICMP errors made during egress: they are the only frames still in
        //    `Continue`, and get one more lookup and egress.
        if meta_n.iter().any(|m| m.reroute) {
            for m in meta_n.iter_mut() {
                m.reroute = false;
            }
            self.lookup(meta_n);
            self.egress_all(snap, frames, meta_n, now);
            for m in meta_n.iter_mut().filter(|m| m.reroute) {
                // An error about our own error: never sent (RFC 1812 4.3.2.7).
                m.verdict = Verdict::Drop(DropReason::NoRoute);
            }
        }
        // 5. output
        self.output_stage(snap, frames, meta_n, base);
        self.meta = meta;
    }

    fn egress_all<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], meta: &mut [Meta], now: u64) {
        // With a policy, most frames look their connection up: its slot is prefetched a few
        // frames ahead, as input prefetches the frames.
        let ct_ahead = !snap.policy.is_allow_all();
        if ct_ahead {
            for j in 0..PREFETCH_FRAMES {
                self.prefetch_conn(frames, meta, j);
            }
        }
        for i in 0..frames.len() {
            if ct_ahead {
                self.prefetch_conn(frames, meta, i + PREFETCH_FRAMES);
            }
            let (f, m) = (&mut frames[i], &mut meta[i]);
            if m.verdict == Verdict::Continue {
                with_pkt(f, |p| self.egress(snap, p, m, now));
                if let Some(t) = &mut self.trace {
                    t.settle(i);
                }
            }
        }
    }

    /// Prefetches the conntrack slot of frame `i` (if there is one and it is still in the
    /// pipeline and not the router's own).
    #[inline(always)]
    fn prefetch_conn<F: Frame>(&self, frames: &mut [F], meta: &[Meta], i: usize) {
        let (Some(f), Some(m)) = (frames.get_mut(i), meta.get(i)) else { return };
        if m.verdict == Verdict::Continue && !m.local_origin {
            let (buf, head, len) = f.parts();
            // Past input: the IPv4 header was checked and the frame trimmed to it.
            let ip = Ipv4Packet::new_unchecked(&buf[*head + ETH..*head + *len]);
            if let Ok((key, _)) = egress::flow_key(&ip) {
                self.ct.prefetch(&key);
            }
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            self.shared.readers.unregister(r);
        }
    }
}

/// Addresses a frame for the node's kernel: to its MAC on the host port, from ours (a pod's
/// frame still carries the pod gateway's MAC, which the kernel would not accept).
#[inline]
fn host_l2(snap: &Snapshot, p: &mut Pkt<'_>) {
    if let Some(port) = snap.host_port.and_then(|h| snap.port(h)) {
        let head = p.head;
        if let Some(peer) = port.peer_mac {
            p.buf[head..head + 6].copy_from_slice(&peer.0);
        }
        p.buf[head + 6..head + 12].copy_from_slice(&port.mac.0);
    }
}

/// Prefetches the line holding the start of `f`: its Ethernet header and, when the frame starts
/// at most 26 bytes into the line (as at [`HEADROOM`] and in AF_XDP chunks), the IPv4 header
/// and the ports too.
#[inline(always)]
fn prefetch_frame<F: Frame>(f: &mut F) {
    let (buf, head, _) = f.parts();
    crate::prefetch::prefetch(buf.as_ptr().wrapping_add(*head));
}

/// Runs `stage` over frame `f` as a [`Pkt`], then writes its (possibly moved) start and length
/// back to the frame.
#[inline(always)]
fn with_pkt<F: Frame, R>(f: &mut F, stage: impl FnOnce(&mut Pkt<'_>) -> R) -> R {
    let (port, offload) = (f.port(), f.offload());
    let (buf, head, len) = f.parts();
    let mut p = Pkt { buf, head: *head, len: *len, port, offload };
    let r = stage(&mut p);
    *head = p.head;
    *len = p.len;
    let now = p.offload;
    if now != offload {
        f.set_offload(now);
    }
    r
}

#[cfg(test)]
mod tests;
