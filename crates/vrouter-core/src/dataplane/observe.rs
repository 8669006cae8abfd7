//! Looking at packets on a running node: packet trace ("why was my packet dropped?"),
//! capture before and after processing, and connection-table dumps.
//!
//! The control side starts a session here; workers check one relaxed atomic word per batch
//! ([`Observe::active`]) and take the ordinary path when it is zero, so all of this costs
//! nothing when off. When on, a worker runs the batch through [`super::Pipeline`]'s observed
//! path, which allocates (records, copies) and takes a lock per batch: that is the price of
//! looking, paid only while someone looks.
//!
//! Every formatter that reads packet bytes goes through etherparse's bounds-checked slices or
//! the checked views of [`crate::wire`]: a heap overflow in VPP's packet-trace formatting was a
//! real advisory, and a formatter here never reads past the bytes it was given.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use super::packet::{Frame, PortId, MAX_BATCH};
use super::pipeline::{Pipeline, Verdict};
use super::state::Snapshot;
use crate::acl::{CtEntryView, Direction, EndpointId, FlowKey};
use crate::fib::NhId;
use crate::stats::DropReason;

pub const TRACE: u32 = 1;
pub const CAPTURE: u32 = 2;
pub const CT_DUMP: u32 = 4;

/// Records a trace session may hold before the control side collects them (and the most
/// packets one trace may ask for).
pub const MAX_HELD: usize = 65_536;
/// The most frames one capture may ask for (up to 2 KiB each, sent back in one reply).
pub const MAX_CAPTURE: usize = 10_000;

pub use vrouter_types::observe::{CapturePoint, Captured, TraceRecord};

#[derive(Default)]
struct TraceSession {
    remaining: u32,
    port: Option<PortId>,
    records: Vec<TraceRecord>,
}

#[derive(Default)]
struct CaptureSession {
    remaining: u32,
    port: Option<PortId>,
    rx: bool,
    tx: bool,
    snaplen: u32,
    frames: Vec<Captured>,
}

/// Options of a capture.
#[derive(Copy, Clone, Debug)]
pub struct CaptureSpec {
    pub count: u32,
    pub port: Option<PortId>,
    pub rx: bool,
    pub tx: bool,
    pub snaplen: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObserveError {
    #[error("a {0} is already running on this node; wait for it or stop it")]
    Busy(&'static str),
    #[error("count must be between 1 and {max}", max = MAX_HELD)]
    BadCount,
    #[error("a capture's count must be between 1 and {max}", max = MAX_CAPTURE)]
    BadCaptureCount,
    #[error("a capture needs at least one of rx and tx")]
    NoPoint,
}

/// Requests from the control side to the workers, and what they recorded.
#[derive(Default)]
pub struct Observe {
    active: AtomicU32,
    seq: AtomicU64,
    trace: Mutex<TraceSession>,
    capture: Mutex<CaptureSession>,
    ct_request: AtomicU64,
    ct_dumps: Mutex<Vec<(u32, u64, Vec<CtEntryView>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked while holding it left plain data behind; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Observe {
    /// Non-zero while some session wants workers to look (one relaxed load per batch).
    #[inline(always)]
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn start_trace(&self, count: u32, port: Option<PortId>) -> Result<(), ObserveError> {
        if count == 0 || count as usize > MAX_HELD {
            return Err(ObserveError::BadCount);
        }
        let mut t = lock(&self.trace);
        if t.remaining > 0 {
            return Err(ObserveError::Busy("trace"));
        }
        *t = TraceSession { remaining: count, port, records: Vec::new() };
        self.active.fetch_or(TRACE, Ordering::Relaxed);
        Ok(())
    }

    /// Takes what was recorded so far; `true` once the session has all it asked for.
    pub fn take_trace(&self) -> (Vec<TraceRecord>, bool) {
        let mut t = lock(&self.trace);
        (std::mem::take(&mut t.records), t.remaining == 0)
    }

    /// Ends the trace session (whatever it still wanted) and returns what it has.
    pub fn stop_trace(&self) -> Vec<TraceRecord> {
        let mut t = lock(&self.trace);
        t.remaining = 0;
        self.active.fetch_and(!TRACE, Ordering::Relaxed);
        std::mem::take(&mut t.records)
    }

    pub fn start_capture(&self, spec: CaptureSpec) -> Result<(), ObserveError> {
        if spec.count == 0 || spec.count as usize > MAX_CAPTURE {
            return Err(ObserveError::BadCaptureCount);
        }
        if !spec.rx && !spec.tx {
            return Err(ObserveError::NoPoint);
        }
        let mut c = lock(&self.capture);
        if c.remaining > 0 {
            return Err(ObserveError::Busy("capture"));
        }
        *c = CaptureSession {
            remaining: spec.count,
            port: spec.port,
            rx: spec.rx,
            tx: spec.tx,
            snaplen: spec.snaplen.clamp(64, 65_535),
            frames: Vec::new(),
        };
        self.active.fetch_or(CAPTURE, Ordering::Relaxed);
        Ok(())
    }

    pub fn take_capture(&self) -> (Vec<Captured>, bool) {
        let mut c = lock(&self.capture);
        (std::mem::take(&mut c.frames), c.remaining == 0)
    }

    pub fn stop_capture(&self) -> Vec<Captured> {
        let mut c = lock(&self.capture);
        c.remaining = 0;
        self.active.fetch_and(!CAPTURE, Ordering::Relaxed);
        std::mem::take(&mut c.frames)
    }

    /// Asks every worker for a copy of its connection table; returns the request number to
    /// pass to [`Observe::ct_dumps_for`].
    pub fn request_ct_dump(&self) -> u64 {
        let n = self.ct_request.fetch_add(1, Ordering::Relaxed) + 1;
        self.active.fetch_or(CT_DUMP, Ordering::Release);
        n
    }

    /// The dumps answering request `n` so far: (worker, entries).
    pub fn ct_dumps_for(&self, n: u64) -> Vec<(u32, Vec<CtEntryView>)> {
        let d = lock(&self.ct_dumps);
        d.iter().filter(|(_, r, _)| *r == n).map(|(w, _, e)| (*w, e.clone())).collect()
    }

    /// Ends a dump request (workers stop answering it) and forgets older answers.
    pub fn finish_ct_dump(&self, n: u64) {
        lock(&self.ct_dumps).retain(|(_, r, _)| *r > n);
        if self.ct_request.load(Ordering::Relaxed) == n {
            self.active.fetch_and(!CT_DUMP, Ordering::Relaxed);
        }
    }

    // ---- worker side

    /// The request number a worker should answer, if it has not yet (`answered` is its last).
    pub(crate) fn ct_dump_wanted(&self, answered: u64) -> Option<u64> {
        let n = self.ct_request.load(Ordering::Acquire);
        (n > answered).then_some(n)
    }

    pub(crate) fn ct_dump_answer(&self, worker: u32, n: u64, entries: Vec<CtEntryView>) {
        lock(&self.ct_dumps).push((worker, n, entries));
    }

    /// Claims up to `wanted` frames of `ports` (one entry per frame) for the trace: sets
    /// `chosen[i]` for each claimed frame.
    pub(crate) fn claim_trace(&self, ports: impl Iterator<Item = PortId>, chosen: &mut Vec<bool>) {
        chosen.clear();
        let mut t = lock(&self.trace);
        for p in ports {
            let take = t.remaining > 0 && t.port.is_none_or(|want| want == p);
            if take {
                t.remaining -= 1;
            }
            chosen.push(take);
        }
        if t.remaining == 0 {
            self.active.fetch_and(!TRACE, Ordering::Relaxed);
        }
    }

    pub(crate) fn push_trace(&self, mut records: Vec<TraceRecord>) {
        if records.is_empty() {
            return;
        }
        let mut t = lock(&self.trace);
        for r in &mut records {
            r.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        }
        let room = MAX_HELD.saturating_sub(t.records.len());
        records.truncate(room);
        t.records.extend(records);
    }

    /// Copies frames into the capture while it wants more: `frames` yields (port, point, bytes),
    /// stamped `ts_ns` (wall-clock nanoseconds since the Unix epoch, given by the caller: the
    /// core reads no clock).
    pub(crate) fn capture<'a>(&self, ts_ns: u64, frames: impl Iterator<Item = (PortId, CapturePoint, &'a [u8])>) {
        let mut c = lock(&self.capture);
        for (port, point, data) in frames {
            if c.remaining == 0 {
                break;
            }
            let wanted = match point {
                CapturePoint::Rx => c.rx,
                CapturePoint::Tx => c.tx,
            };
            if !wanted || c.port.is_some_and(|p| p != port) || c.frames.len() >= MAX_CAPTURE {
                continue;
            }
            c.remaining -= 1;
            let keep = data.len().min(c.snaplen as usize);
            c.frames.push(Captured { ts_ns, port, point, orig_len: data.len() as u32, data: data[..keep].to_vec() });
        }
        if c.remaining == 0 {
            self.active.fetch_and(!CAPTURE, Ordering::Relaxed);
        }
    }

    pub(crate) fn capture_wants(&self, point: CapturePoint) -> bool {
        let c = lock(&self.capture);
        c.remaining > 0
            && match point {
                CapturePoint::Rx => c.rx,
                CapturePoint::Tx => c.tx,
            }
    }
}

/// A one-line account of an Ethernet frame's headers, e.g.
/// `02:00:00:00:00:01 > ee:ee:ee:ee:ee:ee IPv4 10.244.1.2 > 10.244.2.3 ttl 64 len 84 ICMP echo-request id 7 seq 1`.
/// Bounds-checked throughout: any truncation or garbage is reported, never read past.
pub fn describe_frame(frame: &[u8]) -> String {
    use etherparse::{LinkSlice, NetSlice, SlicedPacket, TransportSlice};
    use std::fmt::Write;

    let mut s = String::new();
    let sliced = match SlicedPacket::from_ethernet(frame) {
        Ok(p) => p,
        Err(e) => {
            let _ = write!(s, "{} bytes, not decodable: {e}", frame.len());
            return s;
        }
    };
    if let Some(LinkSlice::Ethernet2(eth)) = &sliced.link {
        let mac = |m: [u8; 6]| crate::wire::MacAddr(m).to_string();
        let _ = write!(s, "{} > {} ", mac(eth.source()), mac(eth.destination()));
    }
    let describe_ip = |s: &mut String, ip: &etherparse::Ipv4Slice<'_>| {
        let h = ip.header();
        let _ = write!(s, "IPv4 {} > {} ttl {} len {}", h.source_addr(), h.destination_addr(), h.ttl(), h.total_len());
        if h.is_fragmenting_payload() {
            let _ = write!(s, " frag off {} mf {}", u16::from(h.fragments_offset()) * 8, h.more_fragments());
        }
    };
    match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            describe_ip(&mut s, ip);
            // IPIP: describe the inner packet too.
            if ip.header().protocol() == etherparse::IpNumber::IPV4 {
                match etherparse::Ipv4Slice::from_slice(ip.payload().payload) {
                    Ok(inner) => {
                        s.push_str(" | inner ");
                        describe_ip(&mut s, &inner);
                    }
                    Err(e) => {
                        let _ = write!(s, " | inner not decodable: {e}");
                    }
                }
                return s;
            }
        }
        Some(NetSlice::Ipv6(_)) => s.push_str("IPv6"),
        Some(NetSlice::Arp(_)) => {
            // Our own checked view reads it (it knows the Ethernet/IPv4 ARP layout).
            return s + &describe_arp(frame.get(14..).unwrap_or_default());
        }
        None => {
            if let Some(LinkSlice::Ethernet2(eth)) = &sliced.link {
                let _ = write!(s, "ethertype {:#06x}", u16::from(eth.ether_type()));
            }
            return s;
        }
    }
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            let _ = write!(s, " TCP {} > {} [", t.source_port(), t.destination_port());
            for (on, f) in [(t.syn(), 'S'), (t.fin(), 'F'), (t.rst(), 'R'), (t.psh(), 'P'), (t.ack(), '.')] {
                if on {
                    s.push(f);
                }
            }
            s.push(']');
        }
        Some(TransportSlice::Udp(u)) => {
            let _ = write!(s, " UDP {} > {}", u.source_port(), u.destination_port());
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let _ = write!(s, " ICMP type {} code {}", i.type_u8(), i.code_u8());
            if let etherparse::Icmpv4Type::EchoRequest(e) | etherparse::Icmpv4Type::EchoReply(e) = i.icmp_type() {
                let _ = write!(s, " (echo) id {} seq {}", e.id, e.seq);
            }
        }
        _ => {
            if let Some(NetSlice::Ipv4(ip)) = &sliced.net {
                let _ = write!(s, " proto {}", ip.header().protocol().0);
            }
        }
    }
    s
}

fn describe_arp(p: &[u8]) -> String {
    match crate::wire::arp::ArpPacket::new_checked(p) {
        Ok(a) => {
            let ip = |x: u32| std::net::Ipv4Addr::from(x);
            let op = match a.operation() {
                1 => "request",
                2 => "reply",
                _ => "op?",
            };
            let smac = crate::wire::MacAddr(a.sender_mac());
            format!("ARP {op} sender {} ({smac}) target {}", ip(a.sender_ip()), ip(a.target_ip()))
        }
        Err(_) => format!("ARP, {} bytes, malformed", p.len()),
    }
}

// ---------------------------------------------------------------- the pipeline's hooks

/// The pipeline's side of trace and capture: the observed path, the per-frame notes the stages
/// leave, and the trace records made from them.
impl Pipeline {
    /// [`Pipeline::process`] while a trace or capture is on: the same stages, plus copies and
    /// notes. Allocates; never taken when nobody looks.
    #[cold]
    #[inline(never)]
    pub(super) fn process_observed<F: Frame>(&mut self, snap: &Snapshot, frames: &mut [F], now: u64) {
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
                obs.capture((self.wall_clock)(), copies.iter().map(|(p, d)| (*p, CapturePoint::Rx, &d[..])));
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
                            describe_frame(&buf[*head..*head + *len])
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
            obs.capture((self.wall_clock)(), copies.iter().map(|(p, d)| (*p, CapturePoint::Tx, &d[..])));
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
                    ("drop", r, Some(p), Some(describe_frame(frame)))
                }
                Verdict::Punt if answered.is_some() => {
                    let r = answered.map(|r| r.name().to_string());
                    steps.push("icmp: answered with an ICMP error to the node's kernel".into());
                    ("drop", r, snap.host_port, Some(describe_frame(frame)))
                }
                Verdict::Consumed if answered.is_some() => ("drop", answered.map(|r| r.name().to_string()), None, None),
                Verdict::Tx(p) => {
                    steps.push(format!("output: port {p} ({})", port_name(p)));
                    ("tx", None, Some(p), Some(describe_frame(frame)))
                }
                Verdict::Punt => ("punt", None, snap.host_port, Some(describe_frame(frame))),
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

    /// Leaves a note for the packet trace (only while a traced chunk runs; a new note
    /// replaces none: the first one, the evaluation, is extended by later ones).
    #[inline]
    pub(super) fn note(&mut self, f: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let n = f();
            t.current = Some(match t.current.take() {
                Some(prev) => format!("{prev}; {n}"),
                None => n,
            });
        }
    }

    /// For packet trace only (nothing is written unless a trace runs): the frame being worked
    /// on is dropped as `r` and answered with an ICMP error if its verdict says it is sent.
    #[inline]
    pub(super) fn note_answered(&mut self, r: DropReason) {
        if let Some(t) = &mut self.trace {
            t.current_answered = Some(r);
        }
    }

    /// For packet trace only: the frame being turned into an ICMP error was first looked up
    /// to `nh` for `dst`.
    #[inline]
    pub(super) fn note_first_lookup(&mut self, dst: u32, nh: NhId) {
        if let Some(t) = &mut self.trace {
            t.current_first_lookup = Some((dst, nh));
        }
    }
}

/// What policy says about `key` and why, for the packet trace: each direction evaluated, with
/// the endpoint's name and the rule that decided.
pub(super) fn describe_policy(
    snap: &Snapshot,
    src_ep: Option<EndpointId>,
    dst_ep: Option<EndpointId>,
    key: &FlowKey,
) -> String {
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

/// A traced chunk's notes, filled by the stages (only while tracing).
#[derive(Default)]
pub(super) struct TraceScratch {
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
    pub(super) fn settle(&mut self, i: usize) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::sim::frames;
    use crate::wire::MacAddr;

    #[test]
    fn describe_is_total_over_every_truncation() {
        let f = frames::udp(MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([0xee; 6]), 0x0af4_0102, 0x0af4_0203, 64, 5, 53, b"q");
        let full = describe_frame(&f);
        assert!(full.contains("IPv4 10.244.1.2 > 10.244.2.3 ttl 64") && full.contains("UDP 5 > 53"), "{full}");
        for n in 0..f.len() {
            let d = describe_frame(&f[..n]);
            assert!(!d.is_empty());
        }
    }

    #[test]
    fn sessions_count_down_and_clear_their_bit() {
        let o = Observe::default();
        assert_eq!(o.active(), 0);
        o.start_trace(2, Some(3)).unwrap();
        assert_eq!(o.start_trace(1, None), Err(ObserveError::Busy("trace")));
        assert_eq!(o.active(), TRACE);
        let mut chosen = Vec::new();
        o.claim_trace([1, 3, 3, 3].into_iter(), &mut chosen);
        assert_eq!(chosen, [false, true, true, false]);
        assert_eq!(o.active(), 0, "the session has what it wanted");
        assert_eq!(
            o.start_capture(CaptureSpec { count: 0, port: None, rx: true, tx: false, snaplen: 100 }),
            Err(ObserveError::BadCaptureCount)
        );
        assert_eq!(
            o.start_capture(CaptureSpec { count: 10_001, port: None, rx: true, tx: false, snaplen: 100 }),
            Err(ObserveError::BadCaptureCount)
        );
        o.start_capture(CaptureSpec { count: 2, port: None, rx: false, tx: true, snaplen: 70 }).unwrap();
        let big = [7u8; 100];
        o.capture(
            42,
            [(0, CapturePoint::Rx, &big[..]), (1, CapturePoint::Tx, &big[..]), (2, CapturePoint::Tx, &big[..10])]
                .into_iter(),
        );
        let (got, done) = o.take_capture();
        assert!(done);
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].port, got[0].orig_len, got[0].data.len()), (1, 100, 70));
        assert!(got.iter().all(|f| f.ts_ns == 42), "stamped with the time given");
        assert_eq!(got[1].data.len(), 10);
        // The JSON form carries the bytes as hex, and reads back.
        let j = serde_json::to_string(&got[1]).unwrap();
        assert!(j.contains(r#""data":"07070707070707070707""#), "{j}");
        assert_eq!(serde_json::from_str::<Captured>(&j).unwrap(), got[1]);
        assert!(serde_json::from_str::<Captured>(&j.replace("0707\"", "07z\"")).is_err());
        assert_eq!(o.active(), 0);
    }
}
