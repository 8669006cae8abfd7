//! The per-worker pipeline: a batch of received frames in, verdicts and in-place edits out.
//!
//! Stages run over the whole batch, each skipping frames that already have a final verdict
//! (VPP-style), so every stage's code and data stay hot:
//!
//! 1. **input** (per frame): L2 checks and ARP; RFC 1812 5.2.2 IPv4 checks; pod anti-spoofing;
//!    local delivery (IPIP decapsulation from known peers, echo replies, punt); TTL check for
//!    transit. Sets `Drop`, `Tx` (ARP replies), `Punt`, `Consumed`, or leaves `Continue` with
//!    the lookup key. Echo replies and ICMP errors made here are "locally originated".
//! 2. **lookup** (batched): longest-prefix match for every `Continue` frame at once.
//! 3. **egress** (per frame): ECMP choice, policy with connection tracking, TTL decrement,
//!    MTU (fragment, or ICMP fragmentation needed), IPIP encapsulation, neighbour resolution
//!    (or hold), L2 rewrite. Sets `Tx`, `Held`, `Drop`, or marks a frame for a second pass
//!    when it was turned into an ICMP error (no route, fragmentation needed).
//! 4. **reroute**: lookup + egress once more for those ICMP errors (never generated again for
//!    them, so at most two passes).
//! 5. **output**: group `Tx` frames per port, count.
//!
//! Nothing here allocates after [`Worker::new`]: metadata arrays, the generated-frame pool,
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
use crate::ratelimit::TokenBucket;
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
    /// Turned into an ICMP error during egress: needs a second lookup.
    reroute: bool,
    /// Went through the FIB lookup (`nh` is its answer); shown by packet trace.
    looked_up: bool,
    dst: u32,
    nh: NhId,
}

const META_INIT: Meta = Meta {
    verdict: Verdict::Continue,
    local_origin: false,
    decapped: false,
    reroute: false,
    looked_up: false,
    dst: 0,
    nh: NH_NONE,
};

/// Sizes and rates of one worker's private state.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
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
    /// ICMP error rate limit (RFC 1812 4.3.2.8): tokens per second and burst.
    pub icmp_rate_per_sec: u32,
    pub icmp_burst: u32,
    /// ARP request rate limit.
    pub arp_rate_per_sec: u32,
    pub arp_burst: u32,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            conntrack_capacity: 1 << 16,
            conntrack_endpoint_share_pct: 50,
            conntrack_timeouts: CtTimeouts::default(),
            hold_slots: 256,
            hold_per_neighbour: 16,
            hold_timeout_ms: 3_000,
            emit_slots: 256,
            icmp_rate_per_sec: 1_000,
            icmp_burst: 100,
            arp_rate_per_sec: 100,
            arp_burst: 20,
        }
    }
}

/// One worker's pipeline and private state. Shares only read-only state ([`Shared`]) with
/// other workers; its counters are readable by others.
pub struct Worker {
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    cfg: WorkerConfig,
    ct: ConnTrack,
    hold: HoldQueue,
    /// Next hops with frames in the hold queue (bounded by the hold queue's size).
    pending: Vec<u32>,
    icmp_rl: TokenBucket,
    arp_rl: TokenBucket,
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
}

impl Worker {
    pub fn new(shared: Arc<Shared>, cfg: WorkerConfig) -> Self {
        let ports = shared.snapshot.load().ports.len();
        Worker {
            counters: Arc::new(Counters::new(super::packet::MAX_PORTS)),
            ct: ConnTrack::with_capacity(cfg.conntrack_capacity, cfg.conntrack_timeouts)
                .with_endpoint_share(cfg.conntrack_endpoint_share_pct),
            hold: HoldQueue::new(cfg.hold_slots, cfg.hold_per_neighbour, super::packet::BUF_SIZE),
            pending: Vec::with_capacity(cfg.hold_slots),
            icmp_rl: TokenBucket::new(cfg.icmp_rate_per_sec, cfg.icmp_burst),
            arp_rl: TokenBucket::new(cfg.arp_rate_per_sec, cfg.arp_burst),
            meta: vec![META_INIT; MAX_BATCH].into_boxed_slice(),
            keys: vec![0; MAX_BATCH].into_boxed_slice(),
            nhs: vec![NH_NONE; MAX_BATCH].into_boxed_slice(),
            idx: vec![0; MAX_BATCH].into_boxed_slice(),
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

    /// The result of the last [`Worker::process`] call.
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// Runs the pipeline over `frames` (any number; processed `MAX_BATCH` at a time), editing
    /// them in place. Afterwards [`Worker::output`] lists, per port, the indices of frames to
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

    /// [`Worker::process`] while a trace or capture is on: the same stages, plus copies and
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
            let in_port = f.port();
            let port_name = |p: PortId| snap.port(p).map_or_else(|| format!("#{p}"), |x| x.name.clone());
            let mut steps = vec![format!("input: port {} ({})", in_port, port_name(in_port))];
            if m.decapped {
                steps.push("ipip: decapsulated (outer source is a known peer, outer destination our node IP)".into());
            }
            if m.local_origin {
                steps.push("local: answered or turned into an ICMP error by the router".into());
            }
            let lookup = m.looked_up.then_some((m.dst, m.nh));
            if let Some((dst, nh)) = lookup {
                let what = snap.nexthop(nh).map_or_else(|| "not in this snapshot".to_string(), |n| format!("{n:?}"));
                steps.push(format!("lookup: {} -> next hop #{nh} {what}", std::net::Ipv4Addr::from(dst)));
            }
            if let Some(p) = &scratch.policy[i] {
                steps.push(format!("policy: {p}"));
            }
            let (buf, head, len) = f.parts();
            let frame = &buf[*head..*head + *len];
            let (verdict, drop_reason, out_port, sent) = match m.verdict {
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

    fn process_chunk<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], base: u32, now: u64) {
        let n = frames.len();
        // Borrowed out of `self` for the batch so stages write each frame's metadata in place
        // (copying it in and out stalled on store forwarding). An empty box does not allocate.
        let mut meta = std::mem::take(&mut self.meta);
        let meta_n = &mut meta[..n];
        meta_n.fill(META_INIT);
        // 1. input
        self.count_rx(frames);
        for (f, m) in frames.iter_mut().zip(meta_n.iter_mut()) {
            let port = f.port();
            let (buf, head, len) = f.parts();
            self.input(snap, buf, head, len, port, m, now);
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
                    if let Some(note) = t.current.take() {
                        t.policy[i] = Some(note);
                    }
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
            // The kernel shares the uplink: what it sends leaves unchanged.
            m.verdict = match snap.uplink_port {
                Some(u) => Verdict::Tx(u),
                None => Verdict::Drop(DropReason::UnknownPort),
            };
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
        }
        if snap.is_local(dst) {
            self.local(snap, buf, head, len, m, now);
        } else {
            self.transit_ttl(snap, buf, head, len, m, now);
        }
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
                // The kernel behind the host port may have asked.
                Err(_) if snap.host_port.is_some() => Verdict::Punt,
                Err(_) => Verdict::Drop(DropReason::ArpUnsolicited),
            },
            _ => Verdict::Drop(DropReason::ArpBadOpcode),
        }
    }

    /// For our own addresses: IPIP decapsulation, echo, punt.
    fn local(&mut self, snap: &Snapshot, buf: &mut [u8], head: &mut usize, len: &mut usize, m: &mut Meta, now: u64) {
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
                Err(_) => {
                    m.verdict = Verdict::Drop(DropReason::IpipBadInner);
                    return;
                }
            };
            if buf[inner + 9] == PROTO_IPIP {
                m.verdict = Verdict::Drop(DropReason::IpipNested);
                return;
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
                self.local(snap, buf, head, len, m, now);
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
            m.verdict =
                if snap.host_port.is_some() { Verdict::Punt } else { Verdict::Drop(DropReason::LocalIcmpOther) };
            return;
        }
        m.verdict = if snap.host_port.is_some() { Verdict::Punt } else { Verdict::Drop(DropReason::LocalNoPunt) };
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
        if buf[*head + ETH + 8] > 1 {
            return;
        }
        self.counters.count_drop(DropReason::Ipv4TtlExpired);
        if self.icmp_error(snap, buf, head, len, icmp::TIME_EXCEEDED, icmp::CODE_TTL_EXCEEDED, 0, now) {
            m.local_origin = true;
            m.dst = self.last_icmp_dst(buf, *head);
        } else {
            m.verdict = Verdict::Consumed; // already counted as ttl-expired
        }
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
        now: u64,
    ) -> bool {
        let l3 = *head + ETH;
        let ip = Ipv4Packet::new_checked(&buf[l3..*head + *len]).expect("checked");
        let (src, hl, proto, ff) = (ip.src(), ip.header_len(), ip.protocol(), ip.flags_frag());
        if ff & OFFSET_MASK != 0 || ipv4::is_martian_source(src) || src == snap.node_ip {
            return false;
        }
        if proto == PROTO_ICMP && (ip.total_len() <= hl || icmp::is_error(buf[l3 + hl])) {
            return false;
        }
        if l3 < ICMP_ERR_OVERHEAD + ETH {
            return false;
        }
        if !self.icmp_rl.allow(now) {
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
        if k == 0 {
            return;
        }
        let guard = self.shared.fib.pin();
        guard.lookup_batch(&self.keys[..k], &mut self.nhs[..k]);
        for j in 0..k {
            let m = &mut meta[self.idx[j] as usize];
            m.nh = self.nhs[j];
            m.looked_up = true;
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
            NextHop::Unreachable => {
                self.counters.count_drop(DropReason::NoRoute);
                m.verdict = Verdict::Consumed;
                if !m.local_origin
                    && self.icmp_error(snap, buf, head, len, icmp::DEST_UNREACHABLE, icmp::CODE_NET_UNREACHABLE, 0, now)
                {
                    m.reroute = true;
                    m.local_origin = true;
                    m.dst = self.last_icmp_dst(buf, *head);
                    m.verdict = Verdict::Continue;
                }
                return;
            }
            NextHop::Blackhole => {
                m.verdict = Verdict::Drop(DropReason::Blackhole);
                return;
            }
            NextHop::Host => {
                m.verdict = Verdict::Punt;
                return;
            }
            NextHop::Local { endpoint } => Some(*endpoint),
            NextHop::Gateway { .. } | NextHop::Connected { .. } | NextHop::Tunnel { .. } | NextHop::Ecmp(_) => None,
        };
        if !m.local_origin {
            let src_ep = if m.decapped { None } else { snap.port_endpoint.get(in_port as usize).copied().flatten() };
            if let Err(r) = self.policy(snap, &buf[*head + ETH..*head + *len], src_ep, dst_ep, now) {
                m.verdict = Verdict::Drop(r);
                return;
            }
            let mut ip = Ipv4Packet::new_checked(&mut buf[*head + ETH..*head + *len]).expect("checked");
            ip.decrement_ttl();
        }
        m.verdict = self.send(snap, buf, head, len, nh, m, now);
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
            if !m.local_origin
                && self.icmp_error(
                    snap,
                    buf,
                    head,
                    len,
                    icmp::DEST_UNREACHABLE,
                    icmp::CODE_FRAG_NEEDED,
                    mtu as u32,
                    now,
                )
            {
                // The TTL was already decremented; the quoted header shows it, as Linux does.
                m.reroute = true;
                m.local_origin = true;
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

impl Drop for Worker {
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
