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
//! Nothing here allocates after [`Pipeline::new`]: metadata arrays, the generated-frame pool,
//! the hold queue and the conntrack table are all sized up front.

use std::sync::Arc;

use super::frag;
use super::observe::{self, CapturePoint, TraceRecord};
use super::output::Output;
use super::packet::{Frame, PortId, HEADROOM, MAX_BATCH};
use super::quiesce::ReaderSlot;
use super::state::{Endpoint, NextHop, PortKind, Shared, Snapshot};
use crate::acl::{Action, ConnTrack, CtDir, CtLookup, CtTimeouts, Direction, EndpointId, FlowKey, Fragment};
use crate::fib::{NhId, NH_NONE};
use crate::neigh::{HoldQueue, NeighLookup, ProxyArp};
use crate::ratelimit::{DestBuckets, TokenBucket};
use crate::stats::{Counters, DropReason};
use crate::wire::arp::{self, ArpPacket};
use crate::wire::ethernet::{self, MacAddr, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_QINQ, ETHERTYPE_VLAN};
use crate::wire::icmp;
use crate::wire::ipv4::{self, Ipv4Packet, FLAG_DF, OFFSET_MASK, PROTO_ICMP, PROTO_IPIP, PROTO_TCP};
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
struct Meta {
    verdict: Verdict,
    /// Made by the router (echo reply, ICMP error): no policy, no TTL decrement, no ICMP error
    /// about it.
    local_origin: bool,
    /// Arrived inside IPIP from a peer node.
    decapped: bool,
    /// Sent by the node's kernel (host port): routed like any input, but the kernel is this
    /// router's own host, so no TTL check or decrement, and only pods' policy applies.
    from_host: bool,
    /// Turned into an ICMP error during egress: needs a second lookup.
    reroute: bool,
    /// Went through the FIB lookup (`nh` is its answer); shown by packet trace.
    looked_up: bool,
    /// A decapsulated frame's inner source still to check against `peer` (0: none): looked up
    /// with the destinations, checked at egress.
    rpf_src: u32,
    /// The outer source of a decapsulated frame.
    peer: u32,
    /// The FIB's answer for `rpf_src`.
    rpf_nh: NhId,
    dst: u32,
    nh: NhId,
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
    /// ARP request rate limit.
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
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    cfg: PipelineConfig,
    ct: ConnTrack,
    hold: HoldQueue,
    /// Next hops with frames in the hold queue (bounded by the hold queue's size).
    pending: Vec<u32>,
    icmp_rl: TokenBucket,
    icmp_dest_rl: DestBuckets,
    arp_rl: TokenBucket,
    arp_punt_rl: TokenBucket,
    meta: Box<[Meta]>,
    keys: Box<[u32]>,
    nhs: Box<[NhId]>,
    idx: Box<[u16]>,
    out: Output,
    ident: u16,
    last_service_ms: u64,
    /// This worker's slot in [`Shared::readers`] (its batch boundaries).
    reader: Option<ReaderSlot>,
    /// The last connection-table dump request answered.
    ct_answered: u64,
    /// Set while a traced batch runs: what policy decided, per frame of the chunk.
    trace: Option<Box<TraceScratch>>,
}

/// A traced chunk's notes, filled by the stages (only while tracing).
#[derive(Default)]
struct TraceScratch {
    chosen: Vec<bool>,
    received: Vec<String>,
    policy: Vec<Option<String>>,
    /// The note `policy()` left for the frame egress is working on.
    current: Option<String>,
    /// Per frame: dropped for this reason and (if the verdict says it is sent) answered with an
    /// ICMP error.
    answered: Vec<Option<DropReason>>,
    /// Per frame: the first lookup (destination, next hop) of a frame turned into an ICMP error
    /// during egress (its second lookup is the error's).
    first_lookup: Vec<Option<(u32, NhId)>>,
    /// What the stage working on a frame noted for the two above (moved there after it).
    current_answered: Option<DropReason>,
    current_first_lookup: Option<(u32, NhId)>,
}

impl TraceScratch {
    /// Moves what a stage noted for frame `i` into its slots.
    fn settle(&mut self, i: usize) {
        if let Some(note) = self.current.take() {
            self.policy[i] = Some(note);
        }
        if let Some(r) = self.current_answered.take() {
            self.answered[i] = Some(r);
        }
        if let Some(l) = self.current_first_lookup.take() {
            self.first_lookup[i] = Some(l);
        }
    }
}

impl Pipeline {
    pub fn new(shared: Arc<Shared>, cfg: PipelineConfig) -> Self {
        let ports = shared.snapshot.load().ports.len();
        Pipeline {
            counters: Arc::new(Counters::new(super::packet::MAX_PORTS)),
            ct: ConnTrack::with_capacity(cfg.conntrack_capacity, cfg.conntrack_timeouts)
                .with_endpoint_share(cfg.conntrack_endpoint_share_pct),
            hold: HoldQueue::new(cfg.hold_slots, cfg.hold_per_neighbour, super::packet::BUF_SIZE),
            pending: Vec::with_capacity(cfg.hold_slots),
            icmp_rl: TokenBucket::new(cfg.icmp_rate_per_sec, cfg.icmp_burst),
            icmp_dest_rl: DestBuckets::new(ICMP_DEST_BUCKETS, cfg.icmp_rate_per_dest, cfg.icmp_burst_per_dest),
            arp_rl: TokenBucket::new(cfg.arp_rate_per_sec, cfg.arp_burst),
            arp_punt_rl: TokenBucket::new(cfg.arp_punt_rate_per_sec, cfg.arp_punt_burst),
            meta: vec![META_INIT; MAX_BATCH].into_boxed_slice(),
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

    /// [`Pipeline::process`] while a trace or capture is on: the same stages, plus copies and
    /// notes. Allocates; never taken when nobody looks.
    #[cold]
    #[inline(never)]
    fn process_observed<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], now: u64) {
        let obs = &self.shared.clone().observe;
        let mut base = 0u32;
        for chunk in frames.chunks_mut(MAX_BATCH) {
            if obs.capture_wants(CapturePoint::Rx) {
                let copies: Vec<(PortId, Vec<u8>)> = chunk
                    .iter_mut()
                    .map(|f| {
                        let port = f.port();
                        let (buf, head, len) = f.parts();
                        (port, buf[*head..*head + *len].to_vec())
                    })
                    .collect();
                obs.capture(copies.iter().map(|(p, d)| (*p, CapturePoint::Rx, &d[..])));
            }
            let mut scratch = self.trace.take().unwrap_or_default();
            obs.claim_trace(chunk.iter().map(|f| f.port()), &mut scratch.chosen);
            let tracing = scratch.chosen.iter().any(|c| *c);
            if tracing {
                scratch.received = chunk
                    .iter_mut()
                    .zip(&scratch.chosen)
                    .map(|(f, c)| {
                        let (buf, head, len) = f.parts();
                        if *c {
                            observe::describe_frame(&buf[*head..*head + *len])
                        } else {
                            String::new()
                        }
                    })
                    .collect();
                scratch.policy = vec![None; chunk.len()];
                scratch.answered = vec![None; chunk.len()];
                scratch.first_lookup = vec![None; chunk.len()];
                self.trace = Some(scratch);
            }
            self.process_chunk(snap, chunk, base, now);
            if let Some(scratch) = self.trace.take() {
                let records = self.trace_records(snap, chunk, &scratch);
                obs.push_trace(records);
            }
            base += chunk.len() as u32;
        }
        if obs.capture_wants(CapturePoint::Tx) {
            let out = &self.out;
            let sent = out.active_ports().flat_map(|p| out.tx(p).iter().map(move |&i| (p, i as usize)));
            let mut copies: Vec<(PortId, Vec<u8>)> = sent
                .filter_map(|(p, i)| {
                    let f = frames.get_mut(i)?;
                    let (buf, head, len) = f.parts();
                    Some((p, buf[*head..*head + *len].to_vec()))
                })
                .collect();
            copies.extend(out.emitted.frames().map(|(p, d)| (p, d.to_vec())));
            obs.capture(copies.iter().map(|(p, d)| (*p, CapturePoint::Tx, &d[..])));
        }
    }

    /// The trace records of a processed chunk's chosen frames.
    fn trace_records<F: Frame>(&self, snap: &Snapshot, chunk: &mut [F], scratch: &TraceScratch) -> Vec<TraceRecord> {
        let mut records = Vec::new();
        for (i, f) in chunk.iter_mut().enumerate() {
            if !scratch.chosen[i] {
                continue;
            }
            let m = &self.meta[i];
            let answered = scratch.answered[i];
            let in_port = f.port();
            let port_name = |p: PortId| snap.port(p).map_or_else(|| format!("#{p}"), |x| x.name.clone());
            let mut steps = vec![format!("input: port {} ({})", in_port, port_name(in_port))];
            if m.decapped {
                steps.push("ipip: decapsulated (outer source is a known peer, outer destination our node IP)".into());
            }
            if m.local_origin {
                steps.push("local: answered or turned into an ICMP error by the router".into());
            }
            let describe = |dst: u32, nh: NhId| {
                let what = snap.nexthop(nh).map_or_else(|| "not in this snapshot".to_string(), |n| format!("{n:?}"));
                format!("lookup: {} -> next hop #{nh} {what}", std::net::Ipv4Addr::from(dst))
            };
            if let Some((dst, nh)) = scratch.first_lookup[i] {
                steps.push(describe(dst, nh));
            }
            if let Some(r) = answered {
                steps.push(format!("drop: {}", r.name()));
            }
            let lookup = m.looked_up.then_some((m.dst, m.nh));
            if let Some((dst, nh)) = lookup {
                let what = if answered.is_some() { "the ICMP error's " } else { "" };
                steps.push(format!("{what}{}", describe(dst, nh)));
            }
            if let Some(p) = &scratch.policy[i] {
                steps.push(format!("policy: {p}"));
            }
            let (buf, head, len) = f.parts();
            let frame = &buf[*head..*head + *len];
            let (verdict, drop_reason, out_port, sent) = match m.verdict {
                Verdict::Tx(p) if answered.is_some() => {
                    let r = answered.map(|r| r.name().to_string());
                    steps.push(format!("icmp: answered with an ICMP error, sent on port {p} ({})", port_name(p)));
                    ("drop", r, Some(p), Some(observe::describe_frame(frame)))
                }
                Verdict::Punt if answered.is_some() => {
                    let r = answered.map(|r| r.name().to_string());
                    steps.push("icmp: answered with an ICMP error to the node's kernel".into());
                    ("drop", r, snap.host_port, Some(observe::describe_frame(frame)))
                }
                Verdict::Consumed if answered.is_some() => ("drop", answered.map(|r| r.name().to_string()), None, None),
                Verdict::Tx(p) => {
                    steps.push(format!("output: port {p} ({})", port_name(p)));
                    ("tx", None, Some(p), Some(observe::describe_frame(frame)))
                }
                Verdict::Punt => ("punt", None, snap.host_port, Some(observe::describe_frame(frame))),
                Verdict::Held => ("held", None, None, None),
                Verdict::Consumed => ("consumed", None, None, None),
                Verdict::Drop(r) => ("drop", Some(r.name().to_string()), None, None),
                Verdict::Continue => ("drop", Some(DropReason::BadNextHop.name().to_string()), None, None),
            };
            records.push(TraceRecord {
                seq: 0,
                worker: self.id(),
                in_port,
                received: scratch.received[i].clone(),
                steps,
                verdict: verdict.into(),
                drop_reason,
                out_port,
                sent,
                lookup,
            });
        }
        records
    }

    /// Timers that ride on the poll loop: held frames whose neighbour resolved (possibly on
    /// another worker), retransmitted ARP requests, expired holds, conntrack sweep.
    fn service(&mut self, snap: &Snapshot, now: u64) {
        // At most once per millisecond: the timers are coarse, batches are not.
        if now == self.last_service_ms {
            return;
        }
        self.last_service_ms = now;
        // RFC 1812 4.3.3.1: what waited too long for its next hop is answered host unreachable
        // (within the ICMP error limits; the rest of a flood is only counted).
        while !self.hold.is_empty() && self.host_unreachable(snap, None, now) {}
        let expired = self.hold.expire(now, self.cfg.hold_timeout_ms);
        self.counters.drop_n(DropReason::NeighUnresolved, expired as u64);
        let mut i = 0;
        while i < self.pending.len() {
            let ip = self.pending[i];
            let done = match self.shared.neigh.lookup(ip, now) {
                NeighLookup::Reachable(mac) | NeighLookup::Stale { mac, .. } => {
                    self.release_held(ip, mac);
                    true
                }
                NeighLookup::Incomplete { send_request } => {
                    if send_request {
                        if let Some(up) = snap.uplink_port {
                            self.send_arp_request(snap, up, ip, now);
                        }
                    }
                    false
                }
                NeighLookup::Failed | NeighLookup::TableFull | NeighLookup::SourceLimit => {
                    while self.host_unreachable(snap, Some(ip), now) {}
                    let n = self.hold.drop_neighbour(ip);
                    self.counters.drop_n(DropReason::NeighUnresolved, n as u64);
                    true
                }
            };
            if done {
                self.pending.swap_remove(i);
            } else {
                i += 1;
            }
        }
        // Neighbour ageing: shared, so one worker per interval runs it (issue 9 item 7).
        self.shared.neigh.maintain(now);
        self.counters.drop_n(DropReason::NeighHoldFull, self.hold.take_pushed_out() as u64);
        self.ct.expire(now, 64);
        self.counters.conntrack_entries.store(self.ct.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Takes one held frame (for `next_hop`, or else one that waited past the hold timeout),
    /// counts it as `neigh/unresolved` and answers it with ICMP host unreachable (RFC 1812
    /// 4.3.3.1) into the generated-frame pool, when the error may be sent and routed. False
    /// when there was no such frame or no free buffer (the caller drops what is left).
    fn host_unreachable(&mut self, snap: &Snapshot, next_hop: Option<u32>, now: u64) -> bool {
        let mut pool = std::mem::replace(&mut self.out.emitted, super::output::EmitPool::new(0));
        let took = match pool.next_free() {
            Some((slot, b)) => match self.hold.take_one(next_hop, now, self.cfg.hold_timeout_ms, &mut b[HEADROOM..]) {
                Some(n) => {
                    self.counters.count_drop(DropReason::NeighUnresolved);
                    let (mut head, mut len) = (HEADROOM, n);
                    if let Some(p) = self.route_local_error(snap, b, &mut head, &mut len, now) {
                        pool.commit(slot, p, head, len);
                        self.counters.tx(p as usize, len);
                    }
                    true
                }
                None => false,
            },
            None => false,
        };
        self.out.emitted = pool;
        took
    }

    /// Turns the (held, already forwarded once) frame at `head` into an ICMP host unreachable
    /// to its source and sends it by the FIB: the output port, or `None` when it may not be
    /// sent or has nowhere to go.
    fn route_local_error(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        now: u64,
    ) -> Option<PortId> {
        if *len < ETH + ipv4::MIN_HEADER_LEN
            || !self.icmp_error(
                snap,
                buf,
                head,
                len,
                icmp::DEST_UNREACHABLE,
                icmp::CODE_HOST_UNREACHABLE,
                0,
                false,
                now,
            )
        {
            return None;
        }
        let dst = ip_dst(buf, *head);
        let id = self.shared.fib.pin().lookup(dst);
        let mut nh = snap.nexthop(id)?;
        if let NextHop::Ecmp(members) = nh {
            let h = flow_hash(&buf[*head + ETH..*head + *len]);
            nh = snap.nexthop(members[(h as usize) % members.len()])?;
        }
        match nh {
            NextHop::Host => {
                host_l2(snap, buf, *head);
                snap.host_port
            }
            NextHop::Local { .. } | NextHop::Gateway { .. } | NextHop::Connected { .. } | NextHop::Tunnel { .. } => {
                match self.finish(snap, buf, head, len, nh, now) {
                    Verdict::Tx(p) => Some(p),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn process_chunk<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], base: u32, now: u64) {
        let n = frames.len();
        // Borrowed out of `self` for the batch so stages write each frame's metadata in place
        // (copying it in and out stalled on store forwarding). An empty box does not allocate.
        let mut meta = std::mem::take(&mut self.meta);
        let meta_n = &mut meta[..n];
        meta_n.fill(META_INIT);
        // 1. input
        self.count_rx(frames);
        for (i, (f, m)) in frames.iter_mut().zip(meta_n.iter_mut()).enumerate() {
            let port = f.port();
            let (buf, head, len) = f.parts();
            self.input(snap, buf, head, len, port, m, now);
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
        for (i, (f, m)) in frames.iter_mut().zip(meta_n.iter()).enumerate() {
            let len = *f.parts().2;
            match m.verdict {
                Verdict::Tx(p) => {
                    self.out.push(p, base + i as u32);
                    self.counters.tx(p as usize, len);
                }
                Verdict::Punt => match snap.host_port {
                    Some(h) => {
                        self.out.push(h, base + i as u32);
                        self.counters.tx(h as usize, len);
                        self.counters.inc(&self.counters.punted);
                    }
                    None => self.counters.count_drop(DropReason::LocalNoPunt),
                },
                Verdict::Drop(r) => self.counters.count_drop(r),
                Verdict::Consumed | Verdict::Held => {}
                Verdict::Continue => self.counters.count_drop(DropReason::BadNextHop),
            }
        }
        self.meta = meta;
    }

    fn egress_all<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], meta: &mut [Meta], now: u64) {
        for (i, (f, m)) in frames.iter_mut().zip(meta.iter_mut()).enumerate() {
            if m.verdict == Verdict::Continue {
                let port = f.port();
                let (buf, head, len) = f.parts();
                self.egress(snap, buf, head, len, port, m, now);
                if let Some(t) = &mut self.trace {
                    t.settle(i);
                }
            }
        }
    }

    // ---------------------------------------------------------------- stage 1: input

    /// Counts received frames per port, one counter update per run of frames from the same
    /// port (a burst usually comes from one port).
    fn count_rx<F: Frame>(&mut self, frames: &mut [F]) {
        let mut run: Option<(PortId, u64, u64)> = None;
        for f in frames.iter_mut() {
            let port = f.port();
            let len = *f.parts().2 as u64;
            run = match run {
                Some((p, n, b)) if p == port => Some((p, n + 1, b + len)),
                Some((p, n, b)) => {
                    self.counters.rx_n(p as usize, n, b);
                    Some((port, 1, len))
                }
                None => Some((port, 1, len)),
            };
        }
        if let Some((p, n, b)) = run {
            self.counters.rx_n(p as usize, n, b);
        }
    }

    /// L2 checks, ARP, IPv4 input, anti-spoofing, local delivery, TTL.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn input(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        port: PortId,
        m: &mut Meta,
        now: u64,
    ) {
        let Some(pinfo) = snap.port(port) else {
            m.verdict = Verdict::Drop(DropReason::UnknownPort);
            return;
        };
        if *len < ETH {
            m.verdict = Verdict::Drop(DropReason::EthTruncated);
            return;
        }
        if pinfo.kind == PortKind::Host {
            self.host_input(snap, buf, head, len, port, pinfo.mac, m, now);
            return;
        }
        let eth = &buf[*head..*head + ETH];
        let dst = MacAddr(eth[0..6].try_into().unwrap());
        if eth[6] & 1 != 0 {
            m.verdict = Verdict::Drop(DropReason::EthBadSource);
            return;
        }
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_IPV4 => {
                if dst != pinfo.mac {
                    // Never forwarded (RFC 1812 5.3.4); on the uplink the node's kernel may want
                    // link broadcast and multicast (DHCP, VRRP), so they go to the host port.
                    m.verdict = if dst.is_multicast() && pinfo.kind == PortKind::Uplink && snap.host_port.is_some() {
                        Verdict::Punt
                    } else if dst.is_broadcast() {
                        Verdict::Drop(DropReason::EthBroadcastIp)
                    } else {
                        Verdict::Drop(DropReason::EthNotForUs)
                    };
                    return;
                }
            }
            ETHERTYPE_ARP => {
                m.verdict = if dst == pinfo.mac || dst.is_broadcast() {
                    self.arp_input(snap, &mut buf[*head..*head + *len], len, port, pinfo.kind, pinfo.mac, now)
                } else {
                    Verdict::Drop(DropReason::EthNotForUs)
                };
                return;
            }
            ETHERTYPE_VLAN | ETHERTYPE_QINQ => {
                m.verdict = Verdict::Drop(DropReason::EthVlan);
                return;
            }
            _ => {
                m.verdict = if pinfo.punt_unknown && snap.host_port.is_some() {
                    Verdict::Punt
                } else {
                    Verdict::Drop(DropReason::EthUnsupportedType)
                };
                return;
            }
        }
        // IPv4 (RFC 1812 5.2.2)
        let l3 = *head + ETH;
        let info = match ipv4::check_input(&buf[l3..*head + *len]) {
            Ok(i) => i,
            Err(DropReason::Ipv4BadOptions) => {
                self.parameter_problem(snap, buf, head, len, m, now);
                return;
            }
            Err(r) => {
                m.verdict = Verdict::Drop(r);
                return;
            }
        };
        *len = ETH + info.total_len as usize; // trim Ethernet padding
        let ip = Ipv4Packet::new_checked(&buf[l3..*head + *len]).expect("checked");
        let (src, dst, proto) = (ip.src(), ip.dst(), ip.protocol());
        m.dst = dst;
        if pinfo.kind == PortKind::Pod {
            let Some(ep) = snap.port_endpoint.get(port as usize).copied().flatten() else {
                m.verdict = Verdict::Drop(DropReason::UnknownEndpoint);
                return;
            };
            if !snap.endpoints[ep as usize].addrs.contains(&src) {
                m.verdict = Verdict::Drop(DropReason::SpoofedSource);
                return;
            }
            if proto == PROTO_IPIP {
                m.verdict = Verdict::Drop(DropReason::IpipFromPod);
                return;
            }
        } else if snap.is_local(src) {
            // Our own addresses never arrive from outside.
            m.verdict = Verdict::Drop(DropReason::SpoofedSource);
            return;
        } else if snap.in_pod_block(src) {
            // Nor do our pods' (they are behind their own ports).
            m.verdict = Verdict::Drop(DropReason::UplinkPodSource);
            return;
        }
        if snap.is_local(dst) {
            self.local(snap, buf, head, len, port, m, now);
        } else {
            self.transit_ttl(snap, buf, head, len, m, now);
        }
    }

    /// What the node's kernel sends (host port). Its IPv4 unicast is routed through the FIB
    /// like any input: to local pods (their policy applies to what the kernel forwards for
    /// others), to other nodes (plain or IPIP), to the underlay, with our L2 rewrite, whatever
    /// MAC the kernel addressed it to (its gateway's, or ours). Its source may be anything but
    /// one of our pods' addresses (`host/spoofed-source`): the node's, or a client's the kernel
    /// forwards (NodePort). ARP for the pod gateway is answered here: the kernel's
    /// routes to the pod blocks point at the pod gateway on the host TAP (see `port::tap`).
    /// Everything else (ARP for its underlay neighbours, link broadcast and multicast, other
    /// EtherTypes) leaves by the uplink unchanged: the kernel shares the node IP and MAC there.
    #[allow(clippy::too_many_arguments)]
    fn host_input(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        port: PortId,
        our_mac: MacAddr,
        m: &mut Meta,
        now: u64,
    ) {
        let eth = &buf[*head..*head + ETH];
        let dmac = MacAddr(eth[0..6].try_into().unwrap());
        let pass = match snap.uplink_port {
            Some(u) => Verdict::Tx(u),
            None => Verdict::Drop(DropReason::UnknownPort),
        };
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_ARP => {
                m.verdict =
                    match crate::neigh::proxy_arp_answer(&mut buf[*head..*head + *len], our_mac.0, snap.pod_gateway) {
                        ProxyArp::Reply(n) => {
                            *len = n;
                            self.counters.inc(&self.counters.arp_replies_sent);
                            Verdict::Tx(port)
                        }
                        _ => pass,
                    };
                return;
            }
            ETHERTYPE_IPV4 if !dmac.is_multicast() => {}
            _ => {
                m.verdict = pass;
                return;
            }
        }
        let l3 = *head + ETH;
        let info = match ipv4::check_input(&buf[l3..*head + *len]) {
            Ok(i) => i,
            Err(r) => {
                m.verdict = Verdict::Drop(r);
                return;
            }
        };
        *len = ETH + info.total_len as usize;
        let ip = Ipv4Packet::new_checked(&buf[l3..*head + *len]).expect("checked");
        let (src, dst) = (ip.src(), ip.dst());
        // The node's own addresses, or whatever the kernel forwards for others (a NodePort
        // client's, source preserved); never one of our pods' (martians failed check_input).
        if !snap.is_local(src) && self.is_our_pods_address(snap, src) {
            m.verdict = Verdict::Drop(DropReason::HostSpoofedSource);
            return;
        }
        m.dst = dst;
        m.from_host = true;
        if snap.is_local(dst) {
            // Only ping is answered here (the pod gateway, say); anything else would only be
            // handed back to the kernel, which may forward it to us again.
            let l4 = l3 + info.header_len as usize;
            m.verdict = if buf[l3 + 9] == PROTO_ICMP && *len > l4 - *head && buf[l4] == icmp::ECHO_REQUEST {
                self.local(snap, buf, head, len, port, m, now);
                m.verdict
            } else {
                Verdict::Drop(DropReason::HostToRouterAddress)
            };
        }
    }

    /// In this node's pod blocks, or routed to a local pod (an address outside the blocks).
    fn is_our_pods_address(&self, snap: &Snapshot, a: u32) -> bool {
        snap.in_pod_block(a) || matches!(snap.nexthop(self.shared.fib.pin().lookup(a)), Some(NextHop::Local { .. }))
    }

    /// ARP on a pod port: proxy-answer for the pod gateway only. On the uplink: answer for our
    /// addresses, learn replies we asked for (RFC 826 merge for requests from known senders).
    #[allow(clippy::too_many_arguments)]
    fn arp_input(
        &mut self,
        snap: &Snapshot,
        frame: &mut [u8],
        len: &mut usize,
        port: PortId,
        kind: PortKind,
        our_mac: MacAddr,
        now: u64,
    ) -> Verdict {
        if kind == PortKind::Pod {
            return match crate::neigh::proxy_arp_answer(frame, our_mac.0, snap.pod_gateway) {
                ProxyArp::Reply(n) => {
                    *len = n;
                    self.counters.inc(&self.counters.arp_replies_sent);
                    Verdict::Tx(port)
                }
                ProxyArp::NotForUs => Verdict::Drop(DropReason::ArpNotForUs),
                ProxyArp::Ignore => Verdict::Drop(DropReason::ArpBadOpcode),
                ProxyArp::Malformed(_) => Verdict::Drop(DropReason::ArpMalformed),
            };
        }
        let (op, sip, smac, tip) = match ArpPacket::new_checked(&frame[ETH..]) {
            Ok(a) => (a.operation(), a.sender_ip(), a.sender_mac(), a.target_ip()),
            Err(_) => return Verdict::Drop(DropReason::ArpMalformed),
        };
        match op {
            arp::ARP_REQUEST => {
                self.shared.neigh.on_request_from(sip, smac, now);
                if tip != snap.pod_gateway && snap.is_local(tip) {
                    match arp::reply_in_place(frame, our_mac.0) {
                        Some(n) => {
                            *len = n;
                            self.counters.inc(&self.counters.arp_replies_sent);
                            Verdict::Tx(port)
                        }
                        None => Verdict::Drop(DropReason::ArpMalformed),
                    }
                } else {
                    Verdict::Drop(DropReason::ArpNotForUs)
                }
            }
            arp::ARP_REPLY => match self.shared.neigh.on_reply(sip, smac, now) {
                Ok(()) => {
                    self.release_held(sip, smac);
                    // The kernel behind the host port shares our address and may have asked
                    // too: it gets the reply as well.
                    if snap.host_port.is_some() {
                        Verdict::Punt
                    } else {
                        Verdict::Consumed
                    }
                }
                // The kernel behind the host port may have asked; a flood of them is not passed
                // on one for one.
                Err(_) if snap.host_port.is_some() && self.arp_punt_rl.allow(now) => Verdict::Punt,
                Err(_) if snap.host_port.is_some() => Verdict::Drop(DropReason::ArpPuntLimited),
                Err(_) => Verdict::Drop(DropReason::ArpUnsolicited),
            },
            _ => Verdict::Drop(DropReason::ArpBadOpcode),
        }
    }

    /// For our own addresses: IPIP decapsulation, echo, punt.
    #[allow(clippy::too_many_arguments)]
    fn local(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        in_port: PortId,
        m: &mut Meta,
        now: u64,
    ) {
        let l3 = *head + ETH;
        let ip = Ipv4Packet::new_checked(&buf[l3..*head + *len]).expect("checked");
        let (src, dst, proto, hl, frag) = (ip.src(), ip.dst(), ip.protocol(), ip.header_len(), ip.is_fragment());
        if proto == PROTO_IPIP && !m.decapped {
            // RFC 2003, with CVE-2020-10136 in mind: only from known peers, to our endpoint.
            let r = if dst != snap.node_ip {
                Some(DropReason::IpipNotOurEndpoint)
            } else if !snap.is_peer(src) {
                Some(DropReason::IpipUnknownPeer)
            } else if frag {
                Some(DropReason::IpipOuterFragment)
            } else {
                None
            };
            if let Some(r) = r {
                m.verdict = Verdict::Drop(r);
                return;
            }
            let inner = l3 + hl;
            let info = match ipv4::check_input(&buf[inner..*head + *len]) {
                Ok(i) => i,
                Err(r) => {
                    m.verdict = Verdict::Drop(if r == DropReason::Ipv4MartianSource {
                        DropReason::IpipInnerSourceMartian
                    } else {
                        DropReason::IpipBadInner
                    });
                    return;
                }
            };
            if buf[inner + 9] == PROTO_IPIP {
                m.verdict = Verdict::Drop(DropReason::IpipNested);
                return;
            }
            // The inner datagram would pass as if it came from the peer's side: a source that
            // is ours or a local pod's is forged (the same datagram unencapsulated is dropped
            // as spoofed); the rest is checked against the route back (egress).
            let inner_src = u32::from_be_bytes(buf[inner + 12..inner + 16].try_into().unwrap());
            if snap.is_local(inner_src) {
                m.verdict = Verdict::Drop(DropReason::IpipInnerSourceOurs);
                return;
            }
            if snap.in_pod_block(inner_src) {
                m.verdict = Verdict::Drop(DropReason::IpipInnerSourceLocalPod);
                return;
            }
            m.rpf_src = inner_src;
            m.peer = src;
            // RFC 6040 4.2 (normal mode): congestion marked on the outer header is carried to
            // an ECN-capable inner one; a not-ECT inner packet marked CE outside is dropped.
            let (outer_ecn, inner_ecn) = (buf[l3 + 1] & ECN_MASK, buf[inner + 1] & ECN_MASK);
            let new_ecn = match (outer_ecn, inner_ecn) {
                (ECN_CE, ECN_NOT_ECT) => {
                    m.verdict = Verdict::Drop(DropReason::IpipEcnCeNotEct);
                    return;
                }
                (ECN_CE, _) => ECN_CE,
                (ECN_ECT1, ECN_ECT0) => ECN_ECT1,
                (_, i) => i,
            };
            if new_ecn != inner_ecn {
                buf[inner + 1] = (buf[inner + 1] & !ECN_MASK) | new_ecn;
                let mut h = Ipv4Packet::new_checked(&mut buf[inner..inner + info.total_len as usize]).expect("checked");
                h.fill_checksum();
            }
            // Strip the outer header: slide the Ethernet header forward over it.
            buf.copy_within(*head..*head + ETH, *head + hl);
            *head += hl;
            *len = ETH + info.total_len as usize;
            m.decapped = true;
            self.counters.inc(&self.counters.ipip_decap);
            let inner_dst = u32::from_be_bytes(buf[inner + 16..inner + 20].try_into().unwrap());
            m.dst = inner_dst;
            if snap.is_local(inner_dst) {
                self.local(snap, buf, head, len, in_port, m, now);
            } else {
                self.transit_ttl(snap, buf, head, len, m, now);
            }
            return;
        }
        if frag {
            m.verdict =
                Verdict::Drop(if proto == PROTO_IPIP { DropReason::IpipNested } else { DropReason::Ipv4FragmentToUs });
            return;
        }
        if proto == PROTO_ICMP {
            let tl = ip.total_len();
            let msg = &mut buf[l3 + hl..l3 + tl];
            if msg.len() < icmp::HEADER_LEN || !crate::wire::checksum::verify(msg) {
                m.verdict = Verdict::Drop(DropReason::IcmpMalformed);
                return;
            }
            if !m.decapped && self.relay_tunnel_error(snap, buf, head, len, l3 + hl, l3 + tl, now) {
                m.local_origin = true;
                m.dst = ip_dst(buf, *head);
                return;
            }
            let msg = &mut buf[l3 + hl..l3 + tl];
            if msg[0] == icmp::ECHO_REQUEST {
                icmp::echo_request_to_reply(msg);
                let mut ip = Ipv4Packet::new_checked(&mut buf[l3..l3 + tl]).expect("checked");
                ip.set_src(dst);
                ip.set_dst(src);
                ip.set_ttl(64);
                ip.fill_checksum();
                m.local_origin = true;
                m.dst = src;
                return;
            }
            m.verdict = if snap.host_port.is_some() {
                self.deliver_to_host(snap, buf, *head, *len, in_port, m, now)
            } else {
                Verdict::Drop(DropReason::LocalIcmpOther)
            };
            return;
        }
        m.verdict = if snap.host_port.is_some() {
            self.deliver_to_host(snap, buf, *head, *len, in_port, m, now)
        } else {
            Verdict::Drop(DropReason::LocalNoPunt)
        };
    }

    /// An IPv4 packet for the node's kernel, addressed to the kernel's MAC on the host port, from
    /// ours. A pod talking to its node is allowed (Kubernetes); with `enforce_host_pod_policy`
    /// its egress policy applies (and the kernel's answers find the connection in conntrack
    /// when the pod has ingress policy).
    #[allow(clippy::too_many_arguments)]
    fn deliver_to_host(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: usize,
        len: usize,
        in_port: PortId,
        m: &mut Meta,
        now: u64,
    ) -> Verdict {
        if !self.inner_source_ok(snap, m) {
            return m.verdict;
        }
        if !m.decapped && !m.local_origin && self.cfg.enforce_host_pod_policy {
            if let Some(ep) = snap.port_endpoint.get(in_port as usize).copied().flatten() {
                if let Err(r) = self.policy(snap, &buf[head + ETH..head + len], Some(ep), None, now) {
                    return Verdict::Drop(r);
                }
            }
        }
        host_l2(snap, buf, head);
        Verdict::Punt
    }

    /// RFC 1812 5.3.1: a transit packet whose TTL would reach zero is dropped with an ICMP time
    /// exceeded (which, made in place, continues as a locally originated packet).
    #[inline]
    fn transit_ttl(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        m: &mut Meta,
        now: u64,
    ) {
        if buf[*head + ETH + 8] > 1 || !self.inner_source_ok(snap, m) {
            return;
        }
        self.counters.count_drop(DropReason::Ipv4TtlExpired);
        self.note_answered(DropReason::Ipv4TtlExpired);
        if self.icmp_error(snap, buf, head, len, icmp::TIME_EXCEEDED, icmp::CODE_TTL_EXCEEDED, 0, m.from_host, now) {
            m.local_origin = true;
            m.dst = self.last_icmp_dst(buf, *head);
        } else {
            m.verdict = Verdict::Consumed; // already counted as ttl-expired
        }
    }

    /// The reverse-path check of a decapsulated frame's inner source, for the (rare) paths that
    /// leave before egress, where the batched check runs: delivery to the node's kernel and ICMP
    /// errors about the frame (forged traffic must neither reach the kernel nor spend the error
    /// budget). Looks the source up on its own; false (and `ipip/inner-source-rpf` set as the
    /// verdict) when the check fails. Done at most once per frame.
    fn inner_source_ok(&self, snap: &Snapshot, m: &mut Meta) -> bool {
        if m.rpf_src == 0 {
            return true;
        }
        let nh = self.shared.fib.pin().lookup(m.rpf_src);
        let ok = ipip_rpf(snap, m.rpf_src, nh, m.peer);
        m.rpf_src = 0;
        if !ok {
            m.verdict = Verdict::Drop(DropReason::IpipInnerSourceRpf);
        }
        ok
    }

    fn last_icmp_dst(&self, buf: &[u8], head: usize) -> u32 {
        ip_dst(buf, head)
    }

    /// Rewrites the frame in place into an ICMP error about it (RFC 1812 4.3.2), if one may be
    /// sent: never about an ICMP error, a non-first fragment, or an invalid source (4.3.2.7),
    /// and within the rate limit (4.3.2.8). The quoted datagram stays where it is; the new
    /// headers go into the headroom in front of it.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        ty: u8,
        code: u8,
        rest: u32,
        from_host: bool,
        now: u64,
    ) -> bool {
        let l3 = *head + ETH;
        let ip = Ipv4Packet::new_checked(&buf[l3..*head + *len]).expect("checked");
        let (src, hl, proto, ff) = (ip.src(), ip.header_len(), ip.protocol(), ip.flags_frag());
        if ff & OFFSET_MASK != 0 || ipv4::is_martian_source(src) || (src == snap.node_ip && !from_host) {
            return false;
        }
        if proto == PROTO_ICMP && (ip.total_len() <= hl || icmp::is_error(buf[l3 + hl])) {
            return false;
        }
        if l3 < ICMP_ERR_OVERHEAD + ETH {
            return false;
        }
        if !self.icmp_dest_rl.allow(src, now) || !self.icmp_rl.allow(now) {
            self.counters.inc(&self.counters.icmp_errors_ratelimited);
            return false;
        }
        let quote = (*len - ETH).min(ICMP_ERR_MAX - ICMP_ERR_OVERHEAD);
        let new_l3 = l3 - ICMP_ERR_OVERHEAD;
        let total = ICMP_ERR_OVERHEAD + quote;
        self.ident = self.ident.wrapping_add(1);
        ipv4::write_header(&mut buf[new_l3..], 0xc0, total as u16, self.ident, 0, 64, PROTO_ICMP, snap.node_ip, src);
        icmp::write_message(&mut buf[new_l3 + ipv4::MIN_HEADER_LEN..new_l3 + total], ty, code, rest);
        *head = new_l3 - ETH;
        *len = ETH + total;
        self.counters.inc(&self.counters.icmp_errors_sent);
        true
    }

    // ---------------------------------------------------------------- stage 2: lookup

    fn lookup(&mut self, meta: &mut [Meta]) {
        let mut k = 0;
        for (i, m) in meta.iter().enumerate() {
            if m.verdict == Verdict::Continue {
                self.keys[k] = m.dst;
                self.idx[k] = i as u16;
                k += 1;
            }
        }
        let dsts = k;
        // Decapsulated frames' inner sources, for the reverse-path check.
        for (i, m) in meta.iter().enumerate() {
            if m.verdict == Verdict::Continue && m.rpf_src != 0 {
                self.keys[k] = m.rpf_src;
                self.idx[k] = i as u16;
                k += 1;
            }
        }
        if k == 0 {
            return;
        }
        let guard = self.shared.fib.pin();
        guard.lookup_batch(&self.keys[..k], &mut self.nhs[..k]);
        for j in 0..dsts {
            let m = &mut meta[self.idx[j] as usize];
            m.nh = self.nhs[j];
            m.looked_up = true;
        }
        for j in dsts..k {
            meta[self.idx[j] as usize].rpf_nh = self.nhs[j];
        }
    }

    // ---------------------------------------------------------------- stage 3: egress

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn egress(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        in_port: PortId,
        m: &mut Meta,
        now: u64,
    ) {
        if m.rpf_src != 0 {
            let ok = ipip_rpf(snap, m.rpf_src, m.rpf_nh, m.peer);
            m.rpf_src = 0;
            if !ok {
                m.verdict = Verdict::Drop(DropReason::IpipInnerSourceRpf);
                return;
            }
        }
        if m.local_origin && m.from_host && snap.is_local(m.dst) {
            // An ICMP error about what the node's kernel sent, or our echo reply to it.
            host_l2(snap, buf, *head);
            m.verdict = Verdict::Punt;
            return;
        }
        let mut nh = match snap.nexthop(m.nh) {
            Some(nh) => nh,
            None => {
                m.verdict = Verdict::Drop(DropReason::BadNextHop);
                return;
            }
        };
        if let NextHop::Ecmp(members) = nh {
            let h = flow_hash(&buf[*head + ETH..*head + *len]);
            let pick = members[(h as usize) % members.len()];
            nh = match snap.nexthop(pick) {
                Some(nh) => nh,
                None => {
                    m.verdict = Verdict::Drop(DropReason::BadNextHop);
                    return;
                }
            };
        }
        let dst_ep = match nh {
            NextHop::Unreachable
                if m.from_host
                    && !m.local_origin
                    && snap.port(in_port).is_some_and(|p| buf[*head..*head + 6] != p.mac.0) =>
            {
                // No route here, but the node's kernel chose a neighbour on the underlay (its
                // own default route, say) and addressed it: its choice stands.
                m.verdict = snap.uplink_port.map_or(Verdict::Drop(DropReason::NoRoute), Verdict::Tx);
                return;
            }
            NextHop::Unreachable => {
                self.reject(snap, buf, head, len, m, icmp::CODE_NET_UNREACHABLE, DropReason::NoRoute, now);
                return;
            }
            NextHop::NetUnreachable => {
                self.reject(snap, buf, head, len, m, icmp::CODE_NET_UNREACHABLE, DropReason::RouteUnreachable, now);
                return;
            }
            NextHop::Prohibit => {
                self.reject(snap, buf, head, len, m, icmp::CODE_ADMIN_PROHIBITED, DropReason::RouteProhibited, now);
                return;
            }
            NextHop::Blackhole => {
                m.verdict = Verdict::Drop(DropReason::Blackhole);
                return;
            }
            NextHop::Host => {
                host_l2(snap, buf, *head);
                m.verdict = Verdict::Punt;
                return;
            }
            NextHop::Local { endpoint } => Some(*endpoint),
            NextHop::Gateway { .. } | NextHop::Connected { .. } | NextHop::Tunnel { .. } | NextHop::Ecmp(_) => None,
        };
        if !m.local_origin {
            let src_ep = if m.decapped { None } else { snap.port_endpoint.get(in_port as usize).copied().flatten() };
            // The node's own traffic is judged by the pods' policy only, not as transit, and
            // (unless `enforce_host_pod_policy`) not at all when the node itself talks to a
            // local pod. What the kernel forwards for others (a NodePort client's source) is.
            let node_to_pod = m.from_host
                && (dst_ep.is_none() || (!self.cfg.enforce_host_pod_policy && snap.is_local(ip_src(buf, *head))));
            if !node_to_pod {
                if let Err(r) = self.policy(snap, &buf[*head + ETH..*head + *len], src_ep, dst_ep, now) {
                    m.verdict = Verdict::Drop(r);
                    return;
                }
            }
            if !m.from_host {
                let mut ip = Ipv4Packet::new_checked(&mut buf[*head + ETH..*head + *len]).expect("checked");
                ip.decrement_ttl();
            }
        }
        m.verdict = self.send(snap, buf, head, len, nh, m, now);
    }

    /// RFC 2003 section 4: an ICMP error from the underlay (`buf[at..end]`: its message) about
    /// an IPIP packet we sent is relayed to the inner packet's source when enough of it is
    /// quoted (the inner header and 8 bytes): fragmentation needed with the MTU less the 20
    /// bytes of the outer header, any other unreachable or time exceeded as host unreachable.
    /// Built in place over the quote (which stays where it is); true when the frame now is that
    /// error, addressed to the inner source. False leaves the frame as it was (punted).
    #[allow(clippy::too_many_arguments)]
    fn relay_tunnel_error(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        at: usize,
        end: usize,
        now: u64,
    ) -> bool {
        let (ty, code) = (buf[at], buf[at + 1]);
        if !matches!(ty, icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED) {
            return false;
        }
        // The quoted outer header: ours, IPIP, not a fragment.
        let q = at + icmp::HEADER_LEN;
        if end < q + ipv4::MIN_HEADER_LEN || buf[q] >> 4 != 4 {
            return false;
        }
        let qhl = ((buf[q] & 0x0f) as usize) * 4;
        let qsrc = u32::from_be_bytes([buf[q + 12], buf[q + 13], buf[q + 14], buf[q + 15]]);
        if qhl < ipv4::MIN_HEADER_LEN || buf[q + 9] != PROTO_IPIP || qsrc != snap.node_ip {
            return false;
        }
        if u16::from_be_bytes([buf[q + 6], buf[q + 7]]) & OFFSET_MASK != 0 {
            return false;
        }
        // The quoted inner header and 8 bytes of what it carries.
        let inner = q + qhl;
        if end < inner + ipv4::MIN_HEADER_LEN || buf[inner] >> 4 != 4 {
            return false;
        }
        let ihl = ((buf[inner] & 0x0f) as usize) * 4;
        if ihl < ipv4::MIN_HEADER_LEN || end < inner + ihl + 8 {
            return false;
        }
        let isrc = u32::from_be_bytes([buf[inner + 12], buf[inner + 13], buf[inner + 14], buf[inner + 15]]);
        let (iproto, iff) = (buf[inner + 9], u16::from_be_bytes([buf[inner + 6], buf[inner + 7]]));
        // RFC 1812 4.3.2.7, about the inner packet: never about an ICMP error, a non-first
        // fragment, or an invalid (or our own) source.
        if iff & OFFSET_MASK != 0 || ipv4::is_martian_source(isrc) || snap.is_local(isrc) {
            return false;
        }
        if iproto == PROTO_ICMP && icmp::is_error(buf[inner + ihl]) {
            return false;
        }
        let (code, rest) = match (ty, code) {
            (icmp::DEST_UNREACHABLE, icmp::CODE_FRAG_NEEDED) => {
                let mtu = u16::from_be_bytes([buf[at + 6], buf[at + 7]]) as u32;
                if mtu < 68 + IPIP_OVERHEAD as u32 {
                    return false; // no usable MTU given (RFC 1191 routers give one)
                }
                (icmp::CODE_FRAG_NEEDED, mtu - IPIP_OVERHEAD as u32)
            }
            _ => (icmp::CODE_HOST_UNREACHABLE, 0),
        };
        if inner < ETH + ICMP_ERR_OVERHEAD {
            return false;
        }
        if !self.icmp_dest_rl.allow(isrc, now) || !self.icmp_rl.allow(now) {
            self.counters.inc(&self.counters.icmp_errors_ratelimited);
            return false;
        }
        let quote = (end - inner).min(ICMP_ERR_MAX - ICMP_ERR_OVERHEAD);
        let new_l3 = inner - ICMP_ERR_OVERHEAD;
        let total = ICMP_ERR_OVERHEAD + quote;
        self.ident = self.ident.wrapping_add(1);
        ipv4::write_header(&mut buf[new_l3..], 0xc0, total as u16, self.ident, 0, 64, PROTO_ICMP, snap.node_ip, isrc);
        icmp::write_message(
            &mut buf[new_l3 + ipv4::MIN_HEADER_LEN..new_l3 + total],
            icmp::DEST_UNREACHABLE,
            code,
            rest,
        );
        *head = new_l3 - ETH;
        *len = ETH + total;
        self.counters.inc(&self.counters.icmp_errors_sent);
        true
    }

    /// Malformed IP options (RFC 1812 4.3.2.7 / 5.2.5, as the kernel does): drop as
    /// `ipv4/bad-options` and answer ICMP Parameter Problem (12/0) pointing at the offending
    /// octet, when one may be sent. Only called after the header's lengths, checksum and
    /// addresses passed.
    fn parameter_problem(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        m: &mut Meta,
        now: u64,
    ) {
        let l3 = *head + ETH;
        let (hl, tl) = (((buf[l3] & 0x0f) as usize) * 4, u16::from_be_bytes([buf[l3 + 2], buf[l3 + 3]]) as usize);
        self.counters.count_drop(DropReason::Ipv4BadOptions);
        m.verdict = Verdict::Consumed;
        self.note_answered(DropReason::Ipv4BadOptions);
        *len = ETH + tl;
        let Some(ptr) = ipv4::bad_option_pointer(&buf[l3..l3 + hl]) else { return };
        let rest = (ptr as u32) << 24;
        if self.icmp_error(snap, buf, head, len, icmp::PARAMETER_PROBLEM, 0, rest, false, now) {
            m.local_origin = true;
            m.dst = self.last_icmp_dst(buf, *head);
            m.verdict = Verdict::Continue;
        }
    }

    /// For packet trace only (nothing is written unless a trace runs): the frame being worked
    /// on is dropped as `r` and answered with an ICMP error if its verdict says it is sent.
    #[inline]
    fn note_answered(&mut self, r: DropReason) {
        if let Some(t) = &mut self.trace {
            t.current_answered = Some(r);
        }
    }

    /// For packet trace only: the frame being turned into an ICMP error was first looked up
    /// to `nh` for `dst`.
    #[inline]
    fn note_first_lookup(&mut self, dst: u32, nh: NhId) {
        if let Some(t) = &mut self.trace {
            t.current_first_lookup = Some((dst, nh));
        }
    }

    /// Drops the frame as `reason` and turns it into an ICMP destination unreachable with
    /// `code` when one may be sent (it then takes a second lookup back to the sender).
    #[allow(clippy::too_many_arguments)]
    fn reject(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        m: &mut Meta,
        code: u8,
        reason: DropReason,
        now: u64,
    ) {
        self.counters.count_drop(reason);
        m.verdict = Verdict::Consumed;
        self.note_answered(reason);
        if !m.local_origin && self.icmp_error(snap, buf, head, len, icmp::DEST_UNREACHABLE, code, 0, m.from_host, now) {
            m.reroute = true;
            m.local_origin = true;
            self.note_first_lookup(m.dst, m.nh);
            m.dst = self.last_icmp_dst(buf, *head);
            m.verdict = Verdict::Continue;
        }
    }

    /// Stateful policy: established flows (either direction) pass on their conntrack entry; new
    /// ones are checked against the sender's egress and the receiver's ingress policy.
    fn policy(
        &mut self,
        snap: &Snapshot,
        ip: &[u8],
        src_ep: Option<EndpointId>,
        dst_ep: Option<EndpointId>,
        now: u64,
    ) -> Result<(), DropReason> {
        let pol = &snap.policy;
        if pol.is_allow_all() {
            self.note(|| "no policy selects anything on this node: allowed".into());
            return Ok(());
        }
        let v = Ipv4Packet::new_checked(ip).expect("checked");
        let (proto, ff, hl, tl) = (v.protocol(), v.flags_frag(), v.header_len(), v.total_len());
        let fragment = if ff & OFFSET_MASK != 0 {
            Fragment::NonFirst
        } else if v.more_frags() {
            Fragment::First
        } else {
            Fragment::None
        };
        // RFC 1858: a fragment at offset 8 bytes could overwrite the TCP flags of the first.
        if proto == PROTO_TCP && ff & OFFSET_MASK == 1 {
            return Err(DropReason::L4Truncated);
        }
        let fields = if fragment == Fragment::NonFirst {
            l4::L4Fields::default()
        } else {
            l4::parse(proto, &ip[hl..tl]).ok_or(DropReason::L4Truncated)?
        };
        let key = FlowKey { src: v.src(), dst: v.dst(), proto, sport: fields.sport, dport: fields.dport, fragment };
        let gen = pol.generation();
        self.note(|| describe_policy(snap, src_ep, dst_ep, &key));
        match self.ct.lookup(&key, fields.tcp_flags, now, gen) {
            CtLookup::Hit { stale: false, dir } => {
                self.note(|| format!("established connection ({dir:?} direction): allowed by conntrack"));
                Ok(())
            }
            CtLookup::Hit { stale: true, dir } => {
                self.note(|| format!("established connection, policy changed since: judged again as {dir:?}"));
                // Policy changed since the flow was admitted: judge it again as its originator.
                let allowed = match dir {
                    CtDir::Original => evaluate(pol, src_ep, dst_ep, &key),
                    CtDir::Reply => evaluate(pol, dst_ep, src_ep, &key.reversed()),
                };
                if allowed {
                    self.ct.refresh(&key, gen);
                    Ok(())
                } else {
                    self.ct.remove(&key);
                    Err(DropReason::PolicyDeny)
                }
            }
            CtLookup::Miss => {
                // RFC 792/1812 errors about a tracked connection travel to its sender: related.
                if proto == PROTO_ICMP && fragment == Fragment::None {
                    if let Some(q) = quoted_flow(&ip[hl..tl]).filter(|q| q.src == key.dst) {
                        if self.ct.related(&q, now) {
                            self.note(|| "ICMP error about a tracked connection: related, allowed".into());
                            return Ok(());
                        }
                    }
                }
                if !evaluate(pol, src_ep, dst_ep, &key) {
                    return Err(DropReason::PolicyDeny);
                }
                // Charged to the local originator, else the local destination (issue 9 item 8).
                self.ct.insert_for(&key, src_ep.or(dst_ep), fields.tcp_flags, now, gen).map_err(|e| e.drop_reason())
            }
        }
    }

    /// Leaves a note for the packet trace (only while a traced chunk runs; a new note
    /// replaces none: the first one, the evaluation, is extended by later ones).
    #[inline]
    fn note(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let n = f();
            t.current = Some(match t.current.take() {
                Some(prev) => format!("{prev}; {n}"),
                None => n,
            });
        }
    }

    /// MTU, encapsulation, neighbour, L2 rewrite for a frame going to `nh`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn send(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        nh: &NextHop,
        m: &mut Meta,
        now: u64,
    ) -> Verdict {
        let (port, overhead) = match nh {
            NextHop::Local { endpoint } => (snap.endpoints[*endpoint as usize].port, 0),
            NextHop::Gateway { port, .. } | NextHop::Connected { port } => (*port, 0),
            NextHop::Tunnel { port, .. } => (*port, IPIP_OVERHEAD),
            _ => return Verdict::Drop(DropReason::BadNextHop),
        };
        let Some(pinfo) = snap.port(port) else { return Verdict::Drop(DropReason::BadNextHop) };
        let mtu = pinfo.mtu as usize - overhead.min(pinfo.mtu as usize);
        if *len - ETH > mtu {
            return self.too_big(snap, buf, head, len, nh, mtu, m, now);
        }
        self.finish(snap, buf, head, len, nh, now)
    }

    /// Encapsulates if needed, resolves the L2 destination and writes the Ethernet header.
    #[inline]
    fn finish(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        nh: &NextHop,
        now: u64,
    ) -> Verdict {
        let (port, via, dmac) = match nh {
            NextHop::Local { endpoint } => {
                let ep: &Endpoint = &snap.endpoints[*endpoint as usize];
                (ep.port, 0, Some(ep.mac))
            }
            NextHop::Gateway { port, via } => (*port, *via, None),
            NextHop::Connected { port } => (*port, ip_dst(buf, *head), None),
            NextHop::Tunnel { port, remote, via } => {
                if *head < IPIP_OVERHEAD {
                    return Verdict::Drop(DropReason::IpipNoHeadroom);
                }
                let l3 = *head + ETH;
                let (tos, ff) = (buf[l3 + 1], u16::from_be_bytes([buf[l3 + 6], buf[l3 + 7]]));
                let inner_len = *len - ETH;
                *head -= IPIP_OVERHEAD;
                *len += IPIP_OVERHEAD;
                self.ident = self.ident.wrapping_add(1);
                // RFC 2003 3.1: TOS copied, DF copied from the inner header, protocol 4.
                ipv4::write_header(
                    &mut buf[*head + ETH..],
                    tos,
                    (inner_len + IPIP_OVERHEAD) as u16,
                    self.ident,
                    ff & FLAG_DF,
                    64,
                    PROTO_IPIP,
                    snap.node_ip,
                    *remote,
                );
                self.counters.inc(&self.counters.ipip_encap);
                (*port, *via, None)
            }
            _ => return Verdict::Drop(DropReason::BadNextHop),
        };
        let Some(smac) = snap.port(port).map(|p| p.mac) else { return Verdict::Drop(DropReason::BadNextHop) };
        let dmac = match dmac {
            Some(d) => d,
            None => match self.shared.neigh.lookup_from(via, neigh_charge(nh, buf, *head), now) {
                NeighLookup::Reachable(mac) => MacAddr(mac),
                NeighLookup::Stale { mac, probe } => {
                    if probe {
                        self.send_arp_request(snap, port, via, now);
                    }
                    MacAddr(mac)
                }
                NeighLookup::Incomplete { send_request } => {
                    if send_request {
                        self.send_arp_request(snap, port, via, now);
                    }
                    ethernet::write_header(&mut buf[*head..], MacAddr::ZERO, smac, ETHERTYPE_IPV4);
                    return match self.hold.hold(via, port, &buf[*head..*head + *len], now) {
                        Ok(()) => {
                            if !self.pending.contains(&via) && self.pending.len() < self.pending.capacity() {
                                self.pending.push(via);
                            }
                            Verdict::Held
                        }
                        Err(_) => Verdict::Drop(DropReason::NeighHoldFull),
                    };
                }
                NeighLookup::Failed => return Verdict::Drop(DropReason::NeighUnresolved),
                NeighLookup::TableFull => return Verdict::Drop(DropReason::NeighTableFull),
                NeighLookup::SourceLimit => return Verdict::Drop(DropReason::NeighSourceLimit),
            },
        };
        ethernet::write_header(&mut buf[*head..], dmac, smac, ETHERTYPE_IPV4);
        Verdict::Tx(port)
    }

    /// Too big for the egress MTU (`mtu` already net of IPIP overhead): with DF, drop and send
    /// fragmentation needed advertising `mtu` (RFC 1191); without, fragment.
    #[allow(clippy::too_many_arguments)]
    fn too_big(
        &mut self,
        snap: &Snapshot,
        buf: &mut [u8],
        head: &mut usize,
        len: &mut usize,
        nh: &NextHop,
        mtu: usize,
        m: &mut Meta,
        now: u64,
    ) -> Verdict {
        let l3 = *head + ETH;
        let ff = u16::from_be_bytes([buf[l3 + 6], buf[l3 + 7]]);
        if ff & FLAG_DF != 0 {
            self.counters.count_drop(DropReason::FragNeeded);
            self.note_answered(DropReason::FragNeeded);
            if !m.local_origin
                && self.icmp_error(
                    snap,
                    buf,
                    head,
                    len,
                    icmp::DEST_UNREACHABLE,
                    icmp::CODE_FRAG_NEEDED,
                    mtu as u32,
                    m.from_host,
                    now,
                )
            {
                // The TTL was already decremented; the quoted header shows it, as Linux does.
                m.reroute = true;
                m.local_origin = true;
                self.note_first_lookup(m.dst, m.nh);
                m.dst = self.last_icmp_dst(buf, *head);
                return Verdict::Continue;
            }
            return Verdict::Consumed;
        }
        let hl = ((buf[l3] & 0x0f) as usize) * 4;
        let mut rest_hdr = [0u8; 60];
        let rl = frag::nonfirst_header(&buf[l3..l3 + hl], &mut rest_hdr);
        let Some((first, rest, count)) = frag::plan(mtu, hl, rl, *len - ETH - hl) else {
            return Verdict::Drop(DropReason::FragNeeded);
        };
        let free = self.out.emitted.capacity() - self.out.emitted.len();
        if count - 1 > free {
            return Verdict::Drop(DropReason::FragNoBuffer);
        }
        // Resolve (or start resolving) the next hop while the generated-frame pool is in place,
        // so an ARP request it needs is not lost while the pool is lent to the fragments.
        self.prime_neighbour(snap, buf, *head, nh, now);
        // Later fragments into generated-frame buffers, each finished like the first.
        let mut pool = std::mem::replace(&mut self.out.emitted, super::output::EmitPool::new(0));
        let mut at = first;
        for _ in 1..count {
            let (slot, fbuf) = pool.next_free().expect("counted above");
            let n =
                frag::write_fragment(&buf[l3..*head + *len], &rest_hdr[..rl], at, rest, &mut fbuf[HEADROOM + ETH..]);
            at += rest;
            let (mut fh, mut fl) = (HEADROOM, ETH + n);
            match self.finish(snap, fbuf, &mut fh, &mut fl, nh, now) {
                Verdict::Tx(p) => {
                    pool.commit(slot, p, fh, fl);
                    self.counters.tx(p as usize, fl);
                    self.counters.inc(&self.counters.fragments_out);
                }
                Verdict::Drop(r) => self.counters.count_drop(r),
                _ => {}
            }
        }
        self.out.emitted = pool;
        *len = ETH + frag::truncate_first(&mut buf[l3..*head + *len], first);
        self.counters.inc(&self.counters.fragmented);
        self.counters.inc(&self.counters.fragments_out);
        self.finish(snap, buf, head, len, nh, now)
    }

    // ---------------------------------------------------------------- neighbours

    /// Looks the L2 next hop of `nh` up, sending the ARP request or probe it asks for.
    fn prime_neighbour(&mut self, snap: &Snapshot, buf: &[u8], head: usize, nh: &NextHop, now: u64) {
        let (port, via) = match nh {
            NextHop::Gateway { port, via } | NextHop::Tunnel { port, via, .. } => (*port, *via),
            NextHop::Connected { port } => (*port, ip_dst(buf, head)),
            _ => return,
        };
        match self.shared.neigh.lookup_from(via, neigh_charge(nh, buf, head), now) {
            NeighLookup::Incomplete { send_request: true } | NeighLookup::Stale { probe: true, .. } => {
                self.send_arp_request(snap, port, via, now)
            }
            _ => {}
        }
    }

    fn send_arp_request(&mut self, snap: &Snapshot, port: PortId, target: u32, now: u64) {
        if !self.arp_rl.allow(now) {
            return;
        }
        let Some(mac) = snap.port(port).map(|p| p.mac) else { return };
        let Some((slot, b)) = self.out.emitted.next_free() else { return };
        let n = arp::build_request(&mut b[HEADROOM..], mac.0, snap.node_ip, target);
        self.out.emitted.commit(slot, port, HEADROOM, n);
        self.counters.tx(port as usize, n);
        self.counters.inc(&self.counters.arp_requests_sent);
    }

    /// Sends everything held for `ip`, now that it resolved to `mac`.
    fn release_held(&mut self, ip: u32, mac: [u8; 6]) {
        let out = &mut self.out.emitted;
        let counters = &self.counters;
        self.hold.release(ip, |port, frame| {
            frame[0..6].copy_from_slice(&mac);
            if out.push_copy(port, frame) {
                counters.tx(port as usize, frame.len());
            } else {
                counters.count_drop(DropReason::TxFull);
            }
        });
    }
}

/// Policy for one packet: the sender's egress (if a local pod), then the receiver's ingress
/// (if a local pod); transit traffic between two non-pods gets the global rules only.
fn evaluate(
    pol: &crate::acl::PolicySet,
    src_ep: Option<EndpointId>,
    dst_ep: Option<EndpointId>,
    key: &FlowKey,
) -> bool {
    if src_ep.is_none() && dst_ep.is_none() {
        return pol.evaluate(None, Direction::Ingress, key).action == Action::Allow;
    }
    if let Some(e) = src_ep {
        if pol.evaluate(Some(e), Direction::Egress, key).action != Action::Allow {
            return false;
        }
    }
    if let Some(e) = dst_ep {
        if pol.evaluate(Some(e), Direction::Ingress, key).action != Action::Allow {
            return false;
        }
    }
    true
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            self.shared.readers.unregister(r);
        }
    }
}

/// What policy says about `key` and why, for the packet trace: each direction evaluated, with
/// the endpoint's name and the rule that decided.
fn describe_policy(snap: &Snapshot, src_ep: Option<EndpointId>, dst_ep: Option<EndpointId>, key: &FlowKey) -> String {
    let pol = &snap.policy;
    let name = |e: EndpointId| snap.endpoints.get(e as usize).map_or("?", |x| x.name.as_str());
    let mut parts = Vec::new();
    if src_ep.is_none() && dst_ep.is_none() {
        parts.push(format!("transit: {}", pol.describe(pol.evaluate(None, Direction::Ingress, key))));
    }
    if let Some(e) = src_ep {
        parts.push(format!("egress of '{}': {}", name(e), pol.describe(pol.evaluate(Some(e), Direction::Egress, key))));
    }
    if let Some(e) = dst_ep {
        parts.push(format!(
            "ingress of '{}': {}",
            name(e),
            pol.describe(pol.evaluate(Some(e), Direction::Ingress, key))
        ));
    }
    parts.join("; ")
}

/// The flow an ICMP error (`icmp`: its message) quotes: the original IP header and the first
/// 8 bytes of its payload (RFC 792), keyed as [`crate::acl::ConnTrack`] keys the packet as it
/// was sent. `None` for other ICMP types, a quote too short, or a quoted non-first fragment.
fn quoted_flow(icmp: &[u8]) -> Option<FlowKey> {
    if icmp.len() < icmp::HEADER_LEN
        || !matches!(icmp[0], icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED | icmp::PARAMETER_PROBLEM)
    {
        return None;
    }
    let q = &icmp[icmp::HEADER_LEN..];
    if q.len() < ipv4::MIN_HEADER_LEN || q[0] >> 4 != 4 {
        return None;
    }
    let hl = ((q[0] & 0x0f) as usize) * 4;
    if hl < ipv4::MIN_HEADER_LEN || q.len() < hl + 8 {
        return None;
    }
    if u16::from_be_bytes([q[6], q[7]]) & OFFSET_MASK != 0 {
        return None;
    }
    let proto = q[9];
    let l4 = &q[hl..hl + 8];
    let (sport, dport) = match proto {
        PROTO_TCP | ipv4::PROTO_UDP => (u16::from_be_bytes([l4[0], l4[1]]), u16::from_be_bytes([l4[2], l4[3]])),
        PROTO_ICMP if matches!(l4[0], icmp::ECHO_REQUEST | icmp::ECHO_REPLY) => {
            ((l4[0] as u16) << 8 | l4[1] as u16, u16::from_be_bytes([l4[4], l4[5]]))
        }
        _ => (0, 0),
    };
    Some(FlowKey {
        src: u32::from_be_bytes([q[12], q[13], q[14], q[15]]),
        dst: u32::from_be_bytes([q[16], q[17], q[18], q[19]]),
        proto,
        sport,
        dport,
        fragment: Fragment::None,
    })
}

/// Reverse-path check of a decapsulated frame's inner source `src` (routed to `nh`), sent by
/// the peer `peer`. Strict (the default, as Calico's per-peer routes make natural): the peer
/// itself, or a source routed back through that peer (IPIP to it, or to it directly; with
/// ECMP, through any of the paths). Loose: any route but none, unreachable, prohibit or
/// blackhole.
#[inline]
fn ipip_rpf(snap: &Snapshot, src: u32, nh: NhId, peer: u32) -> bool {
    if src == peer {
        return true;
    }
    let Some(nh) = snap.nexthop(nh) else { return false };
    if !snap.ipip_strict_rpf {
        return !matches!(nh, NextHop::Unreachable | NextHop::NetUnreachable | NextHop::Prohibit | NextHop::Blackhole);
    }
    let via_peer = |nh: &NextHop| match nh {
        NextHop::Tunnel { remote, .. } => *remote == peer,
        NextHop::Gateway { via, .. } => *via == peer,
        _ => false,
    };
    match nh {
        NextHop::Ecmp(members) => members.iter().any(|m| snap.nexthop(*m).is_some_and(via_peer)),
        nh => via_peer(nh),
    }
}

/// Addresses a frame for the node's kernel: to its MAC on the host port, from ours (a pod's
/// frame still carries the pod gateway's MAC, which the kernel would not accept).
#[inline]
fn host_l2(snap: &Snapshot, buf: &mut [u8], head: usize) {
    if let Some(p) = snap.host_port.and_then(|h| snap.port(h)) {
        if let Some(peer) = p.peer_mac {
            buf[head..head + 6].copy_from_slice(&peer.0);
        }
        buf[head + 6..head + 12].copy_from_slice(&p.mac.0);
    }
}

/// The IPv4 source of the (validated) frame at `head`.
#[inline]
fn ip_src(buf: &[u8], head: usize) -> u32 {
    let a = head + ETH + 12;
    u32::from_be_bytes([buf[a], buf[a + 1], buf[a + 2], buf[a + 3]])
}

/// The IPv4 destination of the (validated) frame at `head`.
#[inline]
fn ip_dst(buf: &[u8], head: usize) -> u32 {
    let at = head + ETH + 16;
    u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// Whom a neighbour entry created for this frame is charged to: the sender, for an on-link
/// destination (which the sender picks); nobody for a route's next hop (configuration picks).
fn neigh_charge(nh: &NextHop, buf: &[u8], head: usize) -> u32 {
    match nh {
        NextHop::Connected { .. } => {
            let at = head + ETH + 12;
            u32::from_be_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
        }
        _ => 0,
    }
}

/// ECMP flow hash over addresses, protocol and (for unfragmented packets) ports, so a flow
/// stays on one path and fragments of it do too.
#[inline]
fn flow_hash(ip: &[u8]) -> u32 {
    let v = Ipv4Packet::new_checked(ip).expect("checked");
    let mut x = ((v.src() as u64) << 32 | v.dst() as u64) ^ (v.protocol() as u64) << 56;
    if !v.is_fragment() {
        if let Some(f) = l4::parse(v.protocol(), v.payload()) {
            x ^= (f.sport as u64) << 16 | f.dport as u64;
        }
    }
    x = x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (x >> 32) as u32
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
