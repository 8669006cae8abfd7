//! A route source that follows one kernel routing table over rtnetlink.
//!
//! In Calico's BGP mode BIRD learns the other nodes' pod blocks from its peers and programs them
//! into a kernel table; vrouter imports that table instead of speaking BGP itself. The watcher
//! dumps the table once, then follows `RTM_NEWROUTE`/`RTM_DELROUTE` and reports, per prefix, the
//! route the kernel itself would use: the lowest metric (then the lowest TOS).
//!
//! How it stays exact:
//! - Two sockets. The notification socket joins `RTNLGRP_IPV4_ROUTE` *before* the dump is asked
//!   for on the dump socket, so every change after the dump's snapshot is queued on the former.
//!   Replaying a change the dump already contained is a no-op against the mirror, so the overlap
//!   costs nothing, and dump replies never interleave with notifications.
//! - The mirror holds every route of the table keyed by (prefix, metric, TOS); an event goes out
//!   only when a prefix's best route changes, so a worse duplicate is silent and deleting the best
//!   promotes the next one.
//! - When the notification socket overruns the kernel drops messages and reports `ENOBUFS` once;
//!   it then drops every further notification silently until the queue has been read empty. So
//!   the watcher reads the queue empty (the dump supersedes it), dumps again, and emits only what
//!   differs from the mirror.
//! - The kernel removes IPv4 routes *without* any `RTM_DELROUTE` when their device goes down, is
//!   deleted, or loses its last IPv4 address (IPv6 does notify). So the watcher also joins
//!   `RTNLGRP_LINK` and `RTNLGRP_IPV4_IFADDR`, and such an event on a device the mirror uses
//!   triggers the same re-dump.
//! - Device names are looked up when an event is emitted (a vanished index reads `if<N>`); the
//!   mirror compares routes by interface index.
//!
//! Only unicast, blackhole, unreachable and prohibit routes are imported; a route of another type
//! (or one whose next hop vrouter cannot represent, like an IPv6 gateway) that the kernel puts
//! under a key replaces what the mirror had there, as it does in the kernel. Two routes under one
//! key (`ip route append`) collapse to the last one reported; BIRD replaces, so it never makes them.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use tracing::{debug, error, warn};

use crate::repeat::{Hit, Repeated};
use vrouter_core::fib::Ipv4Prefix;

/// One kernel route's next hop(s), as the kernel reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelNextHop {
    /// `via GW dev DEV [onlink]`
    Gateway {
        via: Ipv4Addr,
        dev: Option<String>,
        onlink: bool,
    },
    /// `dev DEV` with no gateway (a directly connected route)
    Dev {
        dev: String,
    },
    Blackhole,
    Unreachable,
    Prohibit,
    /// `nexthop via .. dev .. weight N nexthop ...` (ECMP); each path is Gateway or Dev. Paths the
    /// kernel marks dead (device down) are left out.
    Multipath(Vec<KernelPath>),
}

/// One path of a multipath route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelPath {
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub onlink: bool,
    /// `rtnh_hops + 1`, as `ip route` shows it; the kernel's largest weight, 256, reads 255.
    pub weight: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub prefix: Ipv4Prefix,
    pub table: u32,
    /// `rtm_protocol`: 3 for `ip route` (boot), 4 static, 12 BIRD, 186 BGP...
    pub protocol: u8,
    /// `RTA_PRIORITY`, 0 when absent.
    pub metric: u32,
    pub nh: KernelNextHop,
}

/// Per prefix, the best (lowest-metric) IPv4 unicast-table route in the watched table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteEvent {
    Set(KernelRoute),
    Unset(Ipv4Prefix),
}

#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// The kernel table to import (254 is `main`).
    pub table: u32,
    /// A name under /run/netns (for tests); `None` watches the current namespace.
    pub netns: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("network namespace name {0:?}: expected a plain name under /run/netns (not empty, no '/')")]
    NetnsName(String),
    #[error("cannot enter network namespace {name} (/run/netns/{name}): {source}")]
    Netns { name: String, source: io::Error },
    #[error("netlink socket: {what}: {source}")]
    Socket { what: &'static str, source: io::Error },
    #[error("the kernel refused the IPv4 route dump: {0}")]
    Dump(io::Error),
    #[error("stopped before the first route dump completed")]
    Stopped,
    #[error("cannot start the netlink watcher thread: {0}")]
    Thread(io::Error),
    #[error("the netlink watcher thread died during setup")]
    ThreadDied,
}

/// How long a blocked receive waits before looking at `stop` again.
const POLL: Duration = Duration::from_millis(100);
/// Wait before retrying after a socket error or a failed re-dump.
const RETRY: Duration = Duration::from_secs(1);
/// Receive buffer: the kernel never sends a dump datagram above 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// Requested socket buffer for notifications (the kernel doubles it, capped by rmem_max). An
/// overrun is recovered by a re-dump, so this only needs to absorb ordinary bursts.
const NOTIFY_RCVBUF: usize = 1 << 20;
/// A dump that the kernel flags as interrupted (`NLM_F_DUMP_INTR`) is retried this many times.
const DUMP_ATTEMPTS: u32 = 4;

/// Dumps the table (emitting Set for every prefix), then follows RTM_NEWROUTE/RTM_DELROUTE until
/// `stop` is set (noticed within ~100 ms). Runs on its own thread; `on_event` is called on that
/// thread. Returns once the sockets are subscribed and the first dump has been read, so a bad
/// namespace or a refused dump is an error here rather than a log line.
pub fn spawn_watcher(
    cfg: WatchConfig,
    stop: Arc<AtomicBool>,
    on_event: impl FnMut(RouteEvent) + Send + 'static,
) -> Result<JoinHandle<()>, NetlinkError> {
    let (ready_tx, ready_rx) = mpsc::sync_channel(1);
    let handle = std::thread::Builder::new()
        .name(format!("netlink-t{}", cfg.table))
        .spawn(move || {
            let setup = Watcher::open(&cfg, stop, on_event).and_then(|mut w| w.dump_table().map(|m| (w, m)));
            let (mut w, first) = match setup {
                Ok(v) => v,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            // Ready before the first events: `on_event` may block, the caller must not.
            let _ = ready_tx.send(Ok(()));
            w.install(first);
            w.run();
        })
        .map_err(NetlinkError::Thread)?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(handle),
        Ok(Err(e)) => {
            let _ = handle.join();
            Err(e)
        }
        Err(mpsc::RecvError) => {
            let _ = handle.join();
            Err(NetlinkError::ThreadDied)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routes as the mirror keeps them: interface indices, not names.

#[derive(Clone, Debug, PartialEq, Eq)]
struct RawRoute {
    prefix: Ipv4Prefix,
    tos: u8,
    table: u32,
    protocol: u8,
    metric: u32,
    nh: RawNextHop,
}

/// An interface index of 0 means "no device".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum RawNextHop {
    Gateway { via: Ipv4Addr, oif: u32, onlink: bool },
    Dev { oif: u32 },
    Blackhole,
    Unreachable,
    Prohibit,
    Multipath(Vec<RawPath>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RawPath {
    via: Option<Ipv4Addr>,
    oif: u32,
    onlink: bool,
    weight: u8,
}

impl RawRoute {
    fn resolve(&self, name: &dyn Fn(u32) -> String) -> KernelRoute {
        let dev = |oif: u32| (oif != 0).then(|| name(oif));
        let nh = match &self.nh {
            RawNextHop::Gateway { via, oif, onlink } => {
                KernelNextHop::Gateway { via: *via, dev: dev(*oif), onlink: *onlink }
            }
            RawNextHop::Dev { oif } => KernelNextHop::Dev { dev: name(*oif) },
            RawNextHop::Blackhole => KernelNextHop::Blackhole,
            RawNextHop::Unreachable => KernelNextHop::Unreachable,
            RawNextHop::Prohibit => KernelNextHop::Prohibit,
            RawNextHop::Multipath(paths) => KernelNextHop::Multipath(
                paths
                    .iter()
                    .map(|p| KernelPath { via: p.via, dev: dev(p.oif), onlink: p.onlink, weight: p.weight })
                    .collect(),
            ),
        };
        KernelRoute { prefix: self.prefix, table: self.table, protocol: self.protocol, metric: self.metric, nh }
    }
}

impl RawNextHop {
    fn uses(&self, ifindex: u32) -> bool {
        match self {
            RawNextHop::Gateway { oif, .. } | RawNextHop::Dev { oif } => *oif == ifindex,
            RawNextHop::Multipath(paths) => paths.iter().any(|p| p.oif == ifindex),
            RawNextHop::Blackhole | RawNextHop::Unreachable | RawNextHop::Prohibit => false,
        }
    }
}

/// The device name of `index` in this thread's namespace, or `if<N>` if it is gone.
fn ifname(index: u32) -> String {
    // nix 0.30 checks the result against -1, not NULL: an unknown index comes back as Ok("").
    match nix::net::if_::if_indextoname(index) {
        Ok(name) if !name.is_empty() => name.to_string_lossy().into_owned(),
        _ => format!("if{index}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing: datagram -> messages -> routes of the watched table. Nothing here panics on input.

/// What a route message means for the watched table.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    /// Not this watcher's business: another table or family, or a cached clone.
    Foreign,
    Route(RawRoute),
    /// A route of the table that vrouter cannot import; it still occupies its key.
    Unusable {
        prefix: Ipv4Prefix,
        metric: u32,
        tos: u8,
        why: Unusable,
    },
    Malformed(String),
}

#[derive(Debug, PartialEq, Eq)]
enum Unusable {
    /// local, broadcast, multicast, anycast, throw...: not forwarding routes, skipped quietly.
    Type(RouteType),
    /// A forwarding route whose next hop vrouter cannot represent: worth a warning.
    NextHop(String),
}

fn classify(m: &RouteMessage, table: u32) -> Parsed {
    let h = &m.header;
    if h.address_family != AddressFamily::Inet || h.flags.contains(RouteFlags::Cloned) {
        return Parsed::Foreign;
    }
    let mut tbl = u32::from(h.table);
    let (mut dst, mut gw, mut unusable_gw, mut paths) = (None, None, None, None);
    let (mut oif, mut metric) = (0, 0);
    for a in &m.attributes {
        match a {
            RouteAttribute::Table(t) => tbl = *t,
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = Some(*d),
            RouteAttribute::Destination(other) => return Parsed::Malformed(format!("IPv4 route to {other:?}")),
            RouteAttribute::Gateway(RouteAddress::Inet(g)) | RouteAttribute::Via(RouteVia::Inet(g)) => gw = Some(*g),
            RouteAttribute::Gateway(other) => unusable_gw = Some(format!("{other:?}")),
            RouteAttribute::Via(other) => unusable_gw = Some(format!("{other:?}")),
            RouteAttribute::Oif(i) => oif = *i,
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(nhs) => paths = Some(nhs),
            _ => {}
        }
    }
    if tbl != table {
        return Parsed::Foreign;
    }
    let len = h.destination_prefix_length;
    let addr = u32::from(dst.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let Some(prefix) = Ipv4Prefix::new(addr, len) else {
        return Parsed::Malformed(format!("destination {}/{len} is not a prefix", Ipv4Addr::from(addr)));
    };
    let tos = h.tos;
    let unusable = |why: String| Parsed::Unusable { prefix, metric, tos, why: Unusable::NextHop(why) };
    let nh = match h.kind {
        RouteType::BlackHole => RawNextHop::Blackhole,
        RouteType::Unreachable => RawNextHop::Unreachable,
        RouteType::Prohibit => RawNextHop::Prohibit,
        RouteType::Unicast => {
            if let Some(g) = unusable_gw {
                return unusable(format!("next hop {g} is not an IPv4 address"));
            }
            match (paths, gw) {
                (Some(nhs), _) => {
                    let mut out = Vec::with_capacity(nhs.len());
                    for nh in nhs.iter().filter(|nh| !nh.flags.contains(RouteNextHopFlags::Dead)) {
                        let mut via = None;
                        for a in &nh.attributes {
                            match a {
                                RouteAttribute::Gateway(RouteAddress::Inet(g))
                                | RouteAttribute::Via(RouteVia::Inet(g)) => via = Some(*g),
                                RouteAttribute::Gateway(other) => {
                                    return unusable(format!("multipath next hop {other:?} is not IPv4"))
                                }
                                RouteAttribute::Via(other) => {
                                    return unusable(format!("multipath next hop {other:?} is not IPv4"))
                                }
                                _ => {}
                            }
                        }
                        out.push(RawPath {
                            via,
                            oif: nh.interface_index,
                            onlink: nh.flags.contains(RouteNextHopFlags::Onlink),
                            weight: nh.hops.saturating_add(1),
                        });
                    }
                    if out.is_empty() {
                        return unusable("every path of the multipath route is dead".into());
                    }
                    RawNextHop::Multipath(out)
                }
                (None, Some(via)) => RawNextHop::Gateway { via, oif, onlink: h.flags.contains(RouteFlags::Onlink) },
                (None, None) if oif != 0 => RawNextHop::Dev { oif },
                (None, None) => {
                    return unusable("unicast route with neither gateway nor device (a nexthop object, `nhid`?)".into())
                }
            }
        }
        other => return Parsed::Unusable { prefix, metric, tos, why: Unusable::Type(other) },
    };
    Parsed::Route(RawRoute { prefix, tos, table: tbl, protocol: h.protocol.into(), metric, nh })
}

/// One netlink message, reduced to what the watcher acts on.
#[derive(Debug)]
enum Msg {
    NewRoute(RouteMessage),
    DelRoute(RouteMessage),
    /// A device went down, was deleted, or lost an IPv4 address: the kernel may have dropped
    /// routes through it without a word.
    DevChanged(u32),
    /// End of a dump; a non-zero code is the dump's negative errno.
    Done(i32),
    /// `NLMSG_ERROR`: negative errno (0 is an acknowledgement).
    Error(i32),
    Overrun,
    Other,
}

#[derive(Debug)]
struct Received {
    seq: u32,
    port: u32,
    flags: u16,
    msg: Msg,
}

/// Splits a datagram into messages. A message that does not decode is logged and skipped; a
/// length field that runs past the datagram ends it.
fn parse_datagram(buf: &[u8]) -> Vec<Received> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let rest = &buf[off..];
        let len = match NetlinkBuffer::new_checked(rest) {
            Ok(b) => b.length() as usize,
            Err(e) => {
                warn!(offset = off, datagram = buf.len(), error = %e, "netlink: bad message length, rest of datagram skipped");
                break;
            }
        };
        match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
            Ok(m) => {
                let h = m.header;
                out.push(Received { seq: h.sequence_number, port: h.port_number, flags: h.flags, msg: reduce(m) });
            }
            Err(e) => {
                warn!(msg_type = u16::from_ne_bytes([rest[4], rest[5]]), error = %e, "netlink: undecodable message skipped")
            }
        }
        off += len.next_multiple_of(4);
    }
    out
}

fn reduce(m: NetlinkMessage<RouteNetlinkMessage>) -> Msg {
    match m.payload {
        NetlinkPayload::InnerMessage(inner) => match inner {
            RouteNetlinkMessage::NewRoute(r) => Msg::NewRoute(r),
            RouteNetlinkMessage::DelRoute(r) => Msg::DelRoute(r),
            RouteNetlinkMessage::DelLink(l) => Msg::DevChanged(l.header.index),
            RouteNetlinkMessage::NewLink(l) if !l.header.flags.contains(LinkFlags::Up) => {
                Msg::DevChanged(l.header.index)
            }
            RouteNetlinkMessage::DelAddress(a) if a.header.family == AddressFamily::Inet => {
                Msg::DevChanged(a.header.index)
            }
            _ => Msg::Other,
        },
        NetlinkPayload::Done(d) => Msg::Done(d.code),
        NetlinkPayload::Error(e) => Msg::Error(e.raw_code()),
        NetlinkPayload::Overrun(_) => Msg::Overrun,
        _ => Msg::Other,
    }
}

/// `RTM_GETROUTE` dump request for all IPv4 tables; the table is filtered on our side (a kernel
/// side filter needs strict checking and fails with ENOENT while the table does not exist yet).
fn dump_request(seq: u32) -> Vec<u8> {
    let mut rm = RouteMessage::default();
    rm.header.address_family = AddressFamily::Inet;
    let mut m = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(RouteNetlinkMessage::GetRoute(rm)));
    m.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    m.header.sequence_number = seq;
    m.finalize();
    let mut buf = vec![0; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

// ---------------------------------------------------------------------------------------------
// The mirror and its best-route changes.

/// A change of a prefix's best route.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    Set(RawRoute),
    Unset(Ipv4Prefix),
}

/// One route as the mirror keeps it (its prefix is the map's key): 16 bytes, the next hop
/// interned. A full Internet table is 1M of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StoredRoute {
    metric: u32,
    table: u32,
    /// Index into [`Mirror::nhs`].
    nh: u32,
    tos: u8,
    protocol: u8,
}

impl StoredRoute {
    fn key(&self) -> (u32, u8) {
        (self.metric, self.tos)
    }
}

/// A prefix's routes, best (lowest (metric, TOS)) first: almost always one, kept inline.
#[derive(Clone, Debug)]
enum Stored {
    One(StoredRoute),
    // Boxed: a `Vec` inline would make every entry 8 bytes larger for the rare prefix with
    // several routes.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<StoredRoute>>),
}

impl Stored {
    fn as_slice(&self) -> &[StoredRoute] {
        match self {
            Stored::One(r) => std::slice::from_ref(r),
            Stored::Many(v) => v,
        }
    }
}

/// Every route of the table. Per prefix its routes sorted by (metric, TOS), so the first is
/// the best; next hops are interned (most routes share a handful), so a route costs a map
/// entry of a few dozen bytes, not its own allocations.
#[derive(Debug, Default)]
struct Mirror {
    routes: BTreeMap<Ipv4Prefix, Stored>,
    /// Interned next hops with their reference counts; `None`: a free slot.
    nhs: Vec<Option<(RawNextHop, u32)>>,
    nh_ids: std::collections::HashMap<RawNextHop, u32>,
    free_nhs: Vec<u32>,
    /// Routes removed since memory was last given back to the system.
    removed: usize,
}

impl Mirror {
    fn intern(&mut self, nh: RawNextHop) -> u32 {
        if let Some(&id) = self.nh_ids.get(&nh) {
            self.nhs[id as usize].as_mut().expect("live id").1 += 1;
            return id;
        }
        let id = match self.free_nhs.pop() {
            Some(id) => id,
            None => {
                self.nhs.push(None);
                (self.nhs.len() - 1) as u32
            }
        };
        self.nh_ids.insert(nh.clone(), id);
        self.nhs[id as usize] = Some((nh, 1));
        id
    }

    fn unref(&mut self, id: u32) {
        let slot = &mut self.nhs[id as usize];
        let (_, refs) = slot.as_mut().expect("live id");
        *refs -= 1;
        if *refs == 0 {
            let (nh, _) = slot.take().expect("live id");
            self.nh_ids.remove(&nh);
            self.free_nhs.push(id);
        }
    }

    fn raw(&self, prefix: Ipv4Prefix, r: &StoredRoute) -> RawRoute {
        let nh = self.nhs[r.nh as usize].as_ref().expect("live id").0.clone();
        RawRoute { prefix, tos: r.tos, table: r.table, protocol: r.protocol, metric: r.metric, nh }
    }

    fn best(&self, prefix: &Ipv4Prefix) -> Option<RawRoute> {
        self.routes.get(prefix).map(|s| self.raw(*prefix, &s.as_slice()[0]))
    }

    fn upsert(&mut self, r: RawRoute) -> Option<Change> {
        let prefix = r.prefix;
        let before = self.best(&prefix);
        let nh = self.intern(r.nh);
        let new = StoredRoute { metric: r.metric, table: r.table, nh, tos: r.tos, protocol: r.protocol };
        let mut replaced = None;
        match self.routes.get_mut(&prefix) {
            None => {
                self.routes.insert(prefix, Stored::One(new));
            }
            Some(Stored::One(old)) if old.key() == new.key() => replaced = Some(std::mem::replace(old, new)),
            Some(s) => {
                let mut v = match s {
                    Stored::One(old) => Box::new(vec![*old]),
                    Stored::Many(v) => std::mem::take(v),
                };
                match v.binary_search_by_key(&new.key(), StoredRoute::key) {
                    Ok(i) => replaced = Some(std::mem::replace(&mut v[i], new)),
                    Err(i) => v.insert(i, new),
                }
                *s = Stored::Many(v);
            }
        }
        if let Some(old) = replaced {
            self.unref(old.nh);
        }
        self.change(prefix, before)
    }

    fn remove(&mut self, prefix: Ipv4Prefix, metric: u32, tos: u8) -> Option<Change> {
        let before = self.best(&prefix);
        let mut gone = None;
        let mut empty = false;
        match self.routes.get_mut(&prefix) {
            Some(Stored::One(r)) if r.key() == (metric, tos) => {
                gone = Some(*r);
                empty = true;
            }
            Some(s @ Stored::Many(_)) => {
                let Stored::Many(v) = s else { unreachable!("matched Many") };
                if let Ok(i) = v.binary_search_by_key(&(metric, tos), StoredRoute::key) {
                    gone = Some(v.remove(i));
                }
                if v.len() == 1 {
                    *s = Stored::One(v[0]);
                }
            }
            _ => {}
        }
        if empty {
            self.routes.remove(&prefix);
        }
        if let Some(r) = gone {
            self.unref(r.nh);
            self.removed += 1;
        }
        self.change(prefix, before)
    }

    fn change(&self, prefix: Ipv4Prefix, before: Option<RawRoute>) -> Option<Change> {
        match (before, self.best(&prefix)) {
            (Some(_), None) => Some(Change::Unset(prefix)),
            (b, Some(now)) if b.as_ref() != Some(&now) => Some(Change::Set(now)),
            _ => None,
        }
    }

    /// Becomes `fresh` (a new dump), returning what changed for each prefix, in prefix order.
    fn replace(&mut self, fresh: Mirror) -> Vec<Change> {
        let old = std::mem::replace(self, fresh);
        let mut out = Vec::new();
        for (p, _) in old.routes.iter() {
            if !self.routes.contains_key(p) {
                out.push(Change::Unset(*p));
            }
        }
        for p in self.routes.keys() {
            let now = self.best(p).expect("mirror keeps no empty prefix");
            if old.best(p).as_ref() != Some(&now) {
                out.push(Change::Set(now));
            }
        }
        out.sort_by_key(|c| match c {
            Change::Set(r) => r.prefix,
            Change::Unset(p) => *p,
        });
        self.removed = old.routes.len();
        drop(old);
        out
    }

    fn uses(&self, ifindex: u32) -> bool {
        self.nhs.iter().flatten().any(|(nh, _)| nh.uses(ifindex))
    }

    /// Gives memory freed by removed routes back to the system, once many were removed.
    fn release(&mut self) {
        if self.removed >= RELEASE_AFTER {
            self.removed = 0;
            self.nhs.shrink_to_fit();
            self.free_nhs.shrink_to_fit();
            self.nh_ids.shrink_to_fit();
            crate::control::release_freed_memory();
        }
    }
}

/// Removed routes after which the mirror gives memory back (a withdrawn full table, not
/// every flap).
const RELEASE_AFTER: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// The thread.

struct Watcher<F> {
    table: u32,
    notify: Socket,
    dump: Socket,
    dump_port: u32,
    seq: u32,
    buf: Vec<u8>,
    mirror: Mirror,
    stop: Arc<AtomicBool>,
    on_event: F,
}

fn sock_err(what: &'static str) -> impl FnOnce(io::Error) -> NetlinkError {
    move |source| NetlinkError::Socket { what, source }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

impl<F: FnMut(RouteEvent)> Watcher<F> {
    fn open(cfg: &WatchConfig, stop: Arc<AtomicBool>, on_event: F) -> Result<Self, NetlinkError> {
        if let Some(ns) = &cfg.netns {
            enter_netns(ns)?;
        }
        let mut notify = Socket::new(NETLINK_ROUTE).map_err(sock_err("creating the notification socket"))?;
        notify.bind_auto().map_err(sock_err("binding the notification socket"))?;
        for group in [libc::RTNLGRP_IPV4_ROUTE, libc::RTNLGRP_LINK, libc::RTNLGRP_IPV4_IFADDR] {
            notify.add_membership(group).map_err(sock_err("joining a notification group"))?;
        }
        if let Err(e) = notify.set_rx_buf_sz(NOTIFY_RCVBUF) {
            warn!(error = %e, "netlink: cannot enlarge the notification buffer; overruns will re-dump more often");
        }
        set_recv_timeout(&notify, POLL).map_err(sock_err("setting the notification socket timeout"))?;
        let mut dump = Socket::new(NETLINK_ROUTE).map_err(sock_err("creating the dump socket"))?;
        let dump_port = dump.bind_auto().map_err(sock_err("binding the dump socket"))?.port_number();
        set_recv_timeout(&dump, POLL).map_err(sock_err("setting the dump socket timeout"))?;
        Ok(Watcher {
            table: cfg.table,
            notify,
            dump,
            dump_port,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
            mirror: Mirror::default(),
            stop,
            on_event,
        })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Reads one datagram into `buf`; `Ok(false)` if the whole datagram did not fit.
    fn recv(sock: &Socket, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        let n = sock.recv(buf, libc::MSG_TRUNC)?;
        Ok(n <= buf.len())
    }

    /// A consistent copy of the table, retrying dumps the kernel flags as interrupted.
    fn dump_table(&mut self) -> Result<Mirror, NetlinkError> {
        let mut attempt = 1;
        loop {
            let (m, interrupted) = self.dump_once()?;
            if !interrupted {
                return Ok(m);
            }
            if attempt == DUMP_ATTEMPTS {
                warn!(attempts = attempt, "netlink: route dumps keep being interrupted; using the last one");
                return Ok(m);
            }
            debug!(attempt, "netlink: route dump interrupted by a change, dumping again");
            attempt += 1;
        }
    }

    /// One dump; the flag says whether it may be inconsistent.
    fn dump_once(&mut self) -> Result<(Mirror, bool), NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        self.dump
            .send_to(&dump_request(self.seq), &SocketAddr::new(0, 0), 0)
            .map_err(sock_err("sending the dump request"))?;
        let (mut m, mut interrupted) = (Mirror::default(), false);
        loop {
            match Self::recv(&self.dump, &mut self.buf) {
                Ok(complete) => {
                    if !complete {
                        warn!("netlink: dump datagram truncated, dumping again");
                        interrupted = true;
                    }
                }
                Err(e) if is_timeout(&e) => {
                    if self.stopped() {
                        return Err(NetlinkError::Stopped);
                    }
                    continue;
                }
                Err(e) => return Err(sock_err("reading the route dump")(e)),
            }
            for r in parse_datagram(&self.buf) {
                if r.seq != self.seq || r.port != self.dump_port {
                    debug!(seq = r.seq, port = r.port, "netlink: stale reply on the dump socket skipped");
                    continue;
                }
                interrupted |= r.flags & NLM_F_DUMP_INTR != 0;
                match r.msg {
                    Msg::NewRoute(rm) => match classify(&rm, self.table) {
                        Parsed::Route(route) => {
                            m.upsert(route);
                        }
                        Parsed::Unusable { prefix, why, .. } => log_unusable(prefix, &why),
                        Parsed::Malformed(why) => warn!(%why, "netlink: malformed route in dump skipped"),
                        Parsed::Foreign => {}
                    },
                    Msg::Done(0) => return Ok((m, interrupted)),
                    Msg::Done(code) | Msg::Error(code) if code != 0 => {
                        return Err(NetlinkError::Dump(io::Error::from_raw_os_error(code.saturating_neg())))
                    }
                    other => warn!(msg = ?other, "netlink: unexpected message in route dump skipped"),
                }
            }
        }
    }

    fn emit(&mut self, c: Change) {
        let ev = match c {
            Change::Set(r) => RouteEvent::Set(r.resolve(&ifname)),
            Change::Unset(p) => RouteEvent::Unset(p),
        };
        (self.on_event)(ev);
    }

    fn install(&mut self, fresh: Mirror) {
        for c in self.mirror.replace(fresh) {
            self.emit(c);
        }
        self.mirror.release();
    }

    fn run(&mut self) {
        let mut resync_at: Option<Instant> = None;
        while !self.stopped() {
            flush_unusable();
            if resync_at.is_some_and(|t| Instant::now() >= t) {
                resync_at = match self.dump_table() {
                    Ok(m) => {
                        self.install(m);
                        None
                    }
                    Err(NetlinkError::Stopped) => return,
                    Err(e) => {
                        error!(error = %e, "netlink: re-dump failed; retrying");
                        Some(Instant::now() + RETRY)
                    }
                };
                continue;
            }
            let now = Instant::now();
            match Self::recv(&self.notify, &mut self.buf) {
                Ok(complete) => {
                    if !complete {
                        warn!("netlink: notification truncated, re-dumping the table");
                        resync_at = Some(now);
                    }
                    if self.apply_notifications() {
                        resync_at = Some(now);
                    }
                    self.mirror.release();
                }
                Err(e) if is_timeout(&e) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    warn!("netlink: notification socket overrun (changes were lost), re-dumping the table");
                    self.drain_notifications();
                    resync_at = Some(now);
                }
                Err(e) => {
                    error!(error = %e, "netlink: reading notifications failed; retrying");
                    self.sleep(RETRY);
                    resync_at = Some(Instant::now());
                }
            }
        }
    }

    /// Reads and discards what is queued on the notification socket. After an overrun the kernel
    /// drops every further notification, *without* reporting ENOBUFS again, until the queue has
    /// been read empty; so the queue is emptied before the re-dump, which supersedes it anyway.
    fn drain_notifications(&mut self) {
        let mut n = 0u64;
        while !self.stopped() {
            self.buf.clear();
            match self.notify.recv(&mut self.buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                Ok(_) => n += 1,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        debug!(datagrams = n, "netlink: notification queue drained before re-dump");
    }

    /// Applies one datagram of notifications; true if the table must be dumped again.
    fn apply_notifications(&mut self) -> bool {
        let mut resync = false;
        for r in parse_datagram(&self.buf) {
            match r.msg {
                Msg::NewRoute(rm) => match classify(&rm, self.table) {
                    Parsed::Route(route) => {
                        if let Some(c) = self.mirror.upsert(route) {
                            self.emit(c);
                        }
                    }
                    Parsed::Unusable { prefix, metric, tos, why } => {
                        log_unusable(prefix, &why);
                        if let Some(c) = self.mirror.remove(prefix, metric, tos) {
                            self.emit(c);
                        }
                    }
                    Parsed::Malformed(why) => warn!(%why, "netlink: malformed route notification skipped"),
                    Parsed::Foreign => {}
                },
                Msg::DelRoute(rm) => {
                    let key = match classify(&rm, self.table) {
                        Parsed::Route(route) => Some((route.prefix, route.metric, route.tos)),
                        Parsed::Unusable { prefix, metric, tos, .. } => Some((prefix, metric, tos)),
                        Parsed::Malformed(why) => {
                            warn!(%why, "netlink: malformed route deletion skipped");
                            None
                        }
                        Parsed::Foreign => None,
                    };
                    if let Some(c) = key.and_then(|(p, m, t)| self.mirror.remove(p, m, t)) {
                        self.emit(c);
                    }
                }
                Msg::DevChanged(ifindex) => {
                    if !resync && self.mirror.uses(ifindex) {
                        debug!(ifindex, "netlink: a device in use went down or lost an address, re-dumping");
                        resync = true;
                    }
                }
                Msg::Overrun => {
                    warn!("netlink: NLMSG_OVERRUN on the notification socket, re-dumping the table");
                    resync = true;
                }
                Msg::Other => {}
                other => warn!(msg = ?other, "netlink: unexpected message on the notification socket skipped"),
            }
        }
        resync
    }

    /// Sleeps up to `d`, waking early when `stop` is set.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stopped() && Instant::now() < end {
            std::thread::sleep(POLL.min(end.saturating_duration_since(Instant::now())));
        }
    }
}

/// Unusable routes come by the thousand (a full table through an unknown device): one line per
/// 10 s, the first route with its reason and a count of the others.
static UNUSABLE: std::sync::Mutex<Repeated> = std::sync::Mutex::new(Repeated::new(Duration::from_secs(10)));

fn log_unusable(prefix: Ipv4Prefix, why: &Unusable) {
    match why {
        Unusable::Type(t) => debug!(%prefix, kind = ?t, "netlink: route type not imported"),
        Unusable::NextHop(why) => log_not_imported(prefix, why),
    }
}

/// Logs a kernel route that is not imported (here, or refused by the node), one line per
/// window for a burst of them: the first with its reason, then a count (each at debug level).
pub fn log_not_imported(prefix: Ipv4Prefix, why: &str) {
    let mut r = UNUSABLE.lock().unwrap_or_else(|e| e.into_inner());
    match r.hit(Instant::now()) {
        Hit::Log { suppressed: 0 } => warn!(%prefix, why, "kernel route not imported"),
        Hit::Log { suppressed } => {
            warn!(%prefix, why, "kernel route not imported ({suppressed} more not imported since the last line)")
        }
        Hit::Quiet => debug!(%prefix, why, "kernel route not imported"),
    }
}

/// Tells the count of unusable routes not logged, once their window is over (on the watcher's
/// loop, so a burst that stops is still summed up).
fn flush_unusable() {
    let n = UNUSABLE.lock().unwrap_or_else(|e| e.into_inner()).flush(Instant::now());
    if let Some(n) = n {
        warn!(routes = n, "{n} more kernel routes not imported (each with its reason at debug level)");
    }
}

/// Moves the calling thread into the network namespace `/run/netns/<name>`.
fn enter_netns(name: &str) -> Result<(), NetlinkError> {
    let path = crate::port::netns_path(name).ok_or_else(|| NetlinkError::NetnsName(name.into()))?;
    let netns_err = |source| NetlinkError::Netns { name: name.into(), source };
    let f = File::open(path).map_err(netns_err)?;
    // setns changes only the calling thread's network namespace; this thread is the watcher's
    // own and opens its sockets after.
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| netns_err(e.into()))
}

/// `SO_RCVTIMEO`, so that a blocked receive returns to look at the stop flag.
fn set_recv_timeout(sock: &Socket, d: Duration) -> io::Result<()> {
    let tv = nix::sys::time::TimeVal::new(d.as_secs() as _, d.subsec_micros() as _);
    nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::DoneMessage;
    use netlink_packet_route::address::AddressMessage;
    use netlink_packet_route::link::LinkMessage;
    use netlink_packet_route::route::{RouteNextHop, RouteProtocol};
    use std::net::Ipv6Addr;

    const T: u32 = 100;

    /// Resident set size of this process, in bytes.
    fn rss() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 4096
    }

    /// The import path without the socket: `n` routes (/24s via four gateways, as BIRD
    /// installs them) into the mirror and the node, then withdrawn. Prints RSS per 100k routes
    /// loaded and what stays after the withdrawal (BENCHMARKS.md). Run alone, as RSS is the
    /// whole process's:
    /// `cargo test --lib kernel_route_memory -- --ignored --nocapture --test-threads 1`
    #[test]
    #[ignore = "measures the process's RSS: run alone (see the doc comment)"]
    fn kernel_route_memory_per_100k_routes() {
        use crate::control::node::{NoIo, Node};
        use vrouter_core::neigh::{NeighConfig, NeighTable};
        let n: u32 = std::env::var("VR_ROUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
        let text = format!("{}[kernel_routes]\ntable = 254\n", crate::control::fixtures::node_toml("m"));
        let cfg = crate::control::config::Config::parse(&text, std::path::Path::new("m.toml")).unwrap();
        let mac = vrouter_core::wire::MacAddr([2, 0, 0, 0, 0, 1]);
        let (shared, fib) = vrouter_core::dataplane::Shared::new(
            Node::empty_snapshot(&cfg, mac),
            NeighTable::new(NeighConfig::default()).unwrap(),
        );
        let mut node = Node::new(cfg, mac, shared, fib, Box::new(NoIo)).unwrap();
        let route = |i: u32| RawRoute {
            prefix: Ipv4Prefix::new_masked(0x0b00_0000 + (i << 8), 24),
            tos: 0,
            table: 254,
            protocol: 12,
            metric: 32,
            nh: RawNextHop::Gateway { via: Ipv4Addr::new(192, 168, 1, 1 + (i % 4) as u8), oif: 2, onlink: false },
        };
        let mut mirror = Mirror::default();
        let apply = |node: &mut Node, c: Option<Change>| match c {
            Some(Change::Set(r)) => {
                let k = r.resolve(&|_| "eth9".to_string());
                let nh = node.kernel_nexthop(&k.nh);
                node.kernel_route(k.prefix, nh).unwrap();
            }
            Some(Change::Unset(p)) => {
                node.kernel_route_gone(p).unwrap();
            }
            None => {}
        };
        let before = rss();
        for i in 0..n {
            let c = mirror.upsert(route(i));
            apply(&mut node, c);
        }
        assert_eq!(node.routes(None, None).len() as u32, n + 4);
        let loaded = rss();
        for i in 0..n {
            let r = route(i);
            let c = mirror.remove(r.prefix, r.metric, r.tos);
            apply(&mut node, c);
        }
        mirror.release();
        node.release_memory();
        let after = rss();
        let per_100k = |b: usize| b as f64 / 1e6 * 100_000.0 / n as f64;
        println!(
            "{n} kernel routes: RSS +{:.1} MB loaded ({:.1} MB per 100k routes, {} bytes per route), +{:.1} MB after removal ({:.1} MB per 100k)",
            (loaded - before) as f64 / 1e6,
            per_100k(loaded - before),
            (loaded - before) / n as usize,
            after.saturating_sub(before) as f64 / 1e6,
            per_100k(after.saturating_sub(before)),
        );
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn pfx(s: &str) -> Ipv4Prefix {
        s.parse().unwrap()
    }

    /// An IPv4 route of table `T` as BIRD would send it: rtm_table and RTA_TABLE both set.
    fn route_msg(kind: RouteType, dst: &str, attrs: Vec<RouteAttribute>) -> RouteMessage {
        let p = pfx(dst);
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = p.len();
        m.header.table = T as u8;
        m.header.protocol = RouteProtocol::Bird;
        m.header.kind = kind;
        m.attributes = vec![RouteAttribute::Table(T)];
        if p.len() > 0 {
            m.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::from(p.addr()))));
        }
        m.attributes.extend(attrs);
        m
    }

    fn gw(a: &str) -> RouteAttribute {
        RouteAttribute::Gateway(RouteAddress::Inet(ip(a)))
    }

    fn path(via: Option<&str>, oif: u32, hops: u8, flags: RouteNextHopFlags) -> RouteNextHop {
        let mut nh = RouteNextHop::default();
        nh.interface_index = oif;
        nh.hops = hops;
        nh.flags = flags;
        nh.attributes = via.map(gw).into_iter().collect();
        nh
    }

    /// Serializes one netlink message the way the kernel frames it.
    fn wire(seq: u32, port: u32, flags: u16, payload: NetlinkPayload<RouteNetlinkMessage>) -> Vec<u8> {
        let mut h = NetlinkHeader::default();
        h.sequence_number = seq;
        h.port_number = port;
        h.flags = flags;
        let mut m = NetlinkMessage::new(h, payload);
        m.finalize();
        let mut buf = vec![0; m.buffer_len().next_multiple_of(4)];
        m.serialize(&mut buf);
        buf
    }

    fn new_route(m: RouteMessage) -> Vec<u8> {
        wire(0, 0, 0, NetlinkPayload::from(RouteNetlinkMessage::NewRoute(m)))
    }

    /// Round trip through bytes: serialize, split the datagram, classify.
    fn parse_one(m: RouteMessage) -> Parsed {
        let got = parse_datagram(&new_route(m));
        assert_eq!(got.len(), 1, "{got:?}");
        match &got[0].msg {
            Msg::NewRoute(rm) => classify(rm, T),
            other => panic!("expected a route, got {other:?}"),
        }
    }

    fn raw(prefix: &str, metric: u32, nh: RawNextHop) -> RawRoute {
        RawRoute { prefix: pfx(prefix), tos: 0, table: T, protocol: 12, metric, nh }
    }

    fn via(a: &str, oif: u32) -> RawNextHop {
        RawNextHop::Gateway { via: ip(a), oif, onlink: false }
    }

    fn names(i: u32) -> String {
        format!("eth{i}")
    }

    // --- parsing ---

    #[test]
    fn parse_gateway_route_takes_onlink_from_rtm_flags() {
        let mut m = route_msg(RouteType::Unicast, "10.21.0.0/16", vec![gw("10.99.0.2"), RouteAttribute::Oif(7)]);
        m.attributes.push(RouteAttribute::Priority(20));
        m.header.flags = RouteFlags::Onlink;
        let Parsed::Route(r) = parse_one(m) else { panic!("not imported") };
        assert_eq!(
            r.resolve(&names),
            KernelRoute {
                prefix: pfx("10.21.0.0/16"),
                table: T,
                protocol: 12,
                metric: 20,
                nh: KernelNextHop::Gateway { via: ip("10.99.0.2"), dev: Some("eth7".into()), onlink: true },
            }
        );
    }

    #[test]
    fn parse_gateway_route_without_onlink_or_device() {
        let Parsed::Route(r) = parse_one(route_msg(RouteType::Unicast, "10.20.0.0/16", vec![gw("10.9.0.2")])) else {
            panic!("not imported")
        };
        assert_eq!(r.nh, RawNextHop::Gateway { via: ip("10.9.0.2"), oif: 0, onlink: false });
        assert_eq!(r.resolve(&names).nh, KernelNextHop::Gateway { via: ip("10.9.0.2"), dev: None, onlink: false });
        assert_eq!(r.metric, 0, "no RTA_PRIORITY reads as metric 0");
    }

    #[test]
    fn parse_multipath_weights_per_path_onlink_and_dead_paths_left_out() {
        let paths = vec![
            path(Some("10.9.0.2"), 3, 0, RouteNextHopFlags::empty()),
            path(Some("10.99.0.3"), 4, 2, RouteNextHopFlags::Onlink),
            path(Some("10.9.0.9"), 5, 0, RouteNextHopFlags::Dead | RouteNextHopFlags::Linkdown),
            path(None, 6, 255, RouteNextHopFlags::empty()),
        ];
        let m = route_msg(RouteType::Unicast, "10.25.0.0/16", vec![RouteAttribute::MultiPath(paths)]);
        let Parsed::Route(r) = parse_one(m) else { panic!("not imported") };
        let want = vec![
            KernelPath { via: Some(ip("10.9.0.2")), dev: Some("eth3".into()), onlink: false, weight: 1 },
            KernelPath { via: Some(ip("10.99.0.3")), dev: Some("eth4".into()), onlink: true, weight: 3 },
            // weight 256 (rtnh_hops 255) does not fit the u8 and saturates
            KernelPath { via: None, dev: Some("eth6".into()), onlink: false, weight: 255 },
        ];
        assert_eq!(r.resolve(&names).nh, KernelNextHop::Multipath(want));
    }

    #[test]
    fn parse_multipath_with_every_path_dead_is_not_imported() {
        let paths = vec![path(Some("10.9.0.2"), 3, 0, RouteNextHopFlags::Dead)];
        let m = route_msg(RouteType::Unicast, "10.25.0.0/16", vec![RouteAttribute::MultiPath(paths)]);
        assert!(matches!(parse_one(m), Parsed::Unusable { .. }));
    }

    #[test]
    fn parse_dev_route_and_the_reject_types() {
        let cases = [
            (RouteType::Unicast, vec![RouteAttribute::Oif(9)], KernelNextHop::Dev { dev: "eth9".into() }),
            (RouteType::BlackHole, vec![], KernelNextHop::Blackhole),
            (RouteType::Unreachable, vec![], KernelNextHop::Unreachable),
            (RouteType::Prohibit, vec![], KernelNextHop::Prohibit),
        ];
        for (kind, attrs, want) in cases {
            let Parsed::Route(r) = parse_one(route_msg(kind, "10.22.0.0/16", attrs)) else { panic!("{kind:?}") };
            assert_eq!(r.resolve(&names).nh, want);
        }
    }

    #[test]
    fn parse_default_route_has_no_rta_dst() {
        let Parsed::Route(r) = parse_one(route_msg(RouteType::Unicast, "0.0.0.0/0", vec![gw("10.9.0.1")])) else {
            panic!("not imported")
        };
        assert_eq!(r.prefix, pfx("0.0.0.0/0"));
    }

    #[test]
    fn rta_table_wins_over_rtm_table() {
        // Tables above 255 arrive with rtm_table = RT_TABLE_COMPAT (252) and the id in RTA_TABLE.
        let mut m = route_msg(RouteType::Unicast, "10.1.0.0/16", vec![gw("10.9.0.2")]);
        m.header.table = 252;
        assert!(matches!(classify(&m, T), Parsed::Route(_)));
        assert_eq!(classify(&m, 252), Parsed::Foreign);

        m.attributes.retain(|a| !matches!(a, RouteAttribute::Table(_)));
        m.header.table = T as u8;
        assert!(matches!(classify(&m, T), Parsed::Route(_)), "rtm_table alone");
        m.attributes.push(RouteAttribute::Table(1000));
        assert_eq!(classify(&m, T), Parsed::Foreign);
        assert!(matches!(classify(&m, 1000), Parsed::Route(_)));
    }

    #[test]
    fn clones_and_other_families_are_foreign() {
        let mut m = route_msg(RouteType::Unicast, "10.1.0.0/16", vec![gw("10.9.0.2")]);
        m.header.flags = RouteFlags::Cloned;
        assert_eq!(classify(&m, T), Parsed::Foreign);

        let mut v6 = RouteMessage::default();
        v6.header.address_family = AddressFamily::Inet6;
        v6.header.kind = RouteType::Unicast;
        v6.header.destination_prefix_length = 64;
        v6.attributes =
            vec![RouteAttribute::Table(T), RouteAttribute::Destination(RouteAddress::Inet6(Ipv6Addr::LOCALHOST))];
        let got = parse_datagram(&new_route(v6));
        let Msg::NewRoute(rm) = &got[0].msg else { panic!("{got:?}") };
        assert_eq!(classify(rm, T), Parsed::Foreign);
    }

    #[test]
    fn local_broadcast_and_ipv6_gateways_are_unusable_but_keyed() {
        for kind in [RouteType::Local, RouteType::Broadcast, RouteType::Multicast, RouteType::Anycast, RouteType::Throw]
        {
            let mut m = route_msg(kind, "10.1.2.3/32", vec![RouteAttribute::Oif(2)]);
            m.attributes.push(RouteAttribute::Priority(5));
            let want = Parsed::Unusable { prefix: pfx("10.1.2.3/32"), metric: 5, tos: 0, why: Unusable::Type(kind) };
            assert_eq!(parse_one(m), want);
        }
        // RFC 5549 style: an IPv4 route via an IPv6 next hop (RTA_VIA).
        let m = route_msg(
            RouteType::Unicast,
            "10.1.0.0/16",
            vec![RouteAttribute::Via(RouteVia::Inet6(Ipv6Addr::LOCALHOST)), RouteAttribute::Oif(2)],
        );
        assert!(matches!(parse_one(m), Parsed::Unusable { why: Unusable::NextHop(_), .. }));
    }

    #[test]
    fn ipv4_rta_via_is_a_gateway() {
        let m = route_msg(RouteType::Unicast, "10.1.0.0/16", vec![RouteAttribute::Via(RouteVia::Inet(ip("10.9.0.7")))]);
        let Parsed::Route(r) = parse_one(m) else { panic!("not imported") };
        assert_eq!(r.nh, RawNextHop::Gateway { via: ip("10.9.0.7"), oif: 0, onlink: false });
    }

    #[test]
    fn bad_prefix_is_malformed() {
        let mut m = route_msg(RouteType::Unicast, "10.1.0.0/16", vec![gw("10.9.0.2")]);
        m.header.destination_prefix_length = 33;
        assert!(matches!(classify(&m, T), Parsed::Malformed(_)));
        m.header.destination_prefix_length = 8; // 10.1.0.0/8 has host bits
        assert!(matches!(classify(&m, T), Parsed::Malformed(_)));
    }

    #[test]
    fn unicast_without_gateway_or_device_is_unusable() {
        let m = route_msg(RouteType::Unicast, "10.1.0.0/16", vec![RouteAttribute::NhId(4)]);
        assert!(matches!(parse_one(m), Parsed::Unusable { .. }));
    }

    /// NLMSG_DONE as a dump ends (kernel >= 4.x carries the dump's result code).
    #[rustfmt::skip]
    const DONE: [u8; 20] = [
        0x14, 0x00, 0x00, 0x00, // nlmsg_len = 20
        0x03, 0x00,             // nlmsg_type = NLMSG_DONE
        0x02, 0x00,             // nlmsg_flags = NLM_F_MULTI
        0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
        0x39, 0x30, 0x00, 0x00, // nlmsg_pid = 12345
        0x00, 0x00, 0x00, 0x00, // error code = 0
    ];

    #[test]
    fn multipart_dump_datagram_splits_into_messages() {
        let a = route_msg(RouteType::Unicast, "10.1.0.0/16", vec![gw("10.9.0.2")]);
        let b = route_msg(RouteType::BlackHole, "10.2.0.0/16", vec![]);
        let mut dg = wire(7, 12345, 2, NetlinkPayload::from(RouteNetlinkMessage::NewRoute(a)));
        dg.extend(wire(7, 12345, 2 | NLM_F_DUMP_INTR, NetlinkPayload::from(RouteNetlinkMessage::NewRoute(b))));
        dg.extend(DONE);
        let got = parse_datagram(&dg);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|r| r.seq == 7 && r.port == 12345));
        assert_eq!(got[1].flags & NLM_F_DUMP_INTR, NLM_F_DUMP_INTR);
        assert!(matches!(got[2].msg, Msg::Done(0)));
        let Msg::NewRoute(rm) = &got[1].msg else { panic!("{got:?}") };
        assert!(matches!(classify(rm, T), Parsed::Route(RawRoute { nh: RawNextHop::Blackhole, .. })));
    }

    #[test]
    fn done_with_an_error_code_and_nlmsg_error_carry_the_errno() {
        let mut done = DONE;
        done[16..20].copy_from_slice(&(-libc::EINTR).to_ne_bytes());
        assert!(matches!(parse_datagram(&done)[0].msg, Msg::Done(c) if c == -libc::EINTR));
        // Zero-length NLMSG_DONE payload, which the kernel also sends.
        let mut short = DONE[..16].to_vec();
        short[0] = 16;
        assert!(matches!(parse_datagram(&short)[0].msg, Msg::Done(0)));

        #[rustfmt::skip]
        let err: [u8; 36] = [
            0x24, 0x00, 0x00, 0x00, // nlmsg_len = 36
            0x02, 0x00,             // nlmsg_type = NLMSG_ERROR
            0x00, 0x00,             // nlmsg_flags
            0x07, 0x00, 0x00, 0x00, // nlmsg_seq = 7
            0x39, 0x30, 0x00, 0x00, // nlmsg_pid = 12345
            0xff, 0xff, 0xff, 0xff, // error = -EPERM
            // the request's header, echoed
            0x14, 0x00, 0x00, 0x00, 0x1a, 0x00, 0x01, 0x03, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert!(matches!(parse_datagram(&err)[0].msg, Msg::Error(c) if c == -libc::EPERM));
    }

    #[test]
    fn undecodable_message_is_skipped_and_the_next_one_read() {
        let mut bad = new_route(route_msg(RouteType::Unicast, "10.1.0.0/16", vec![gw("10.9.0.2")]));
        // First attribute (after the 16-byte nlmsghdr and 12-byte rtmsg): nla_len = 3, below the
        // 4-byte attribute header.
        bad[28] = 3;
        bad[29] = 0;
        let mut dg = bad;
        dg.extend(new_route(route_msg(RouteType::Prohibit, "10.3.0.0/16", vec![])));
        let got = parse_datagram(&dg);
        assert_eq!(got.len(), 1, "{got:?}");
        let Msg::NewRoute(rm) = &got[0].msg else { panic!("{got:?}") };
        assert!(matches!(classify(rm, T), Parsed::Route(RawRoute { nh: RawNextHop::Prohibit, .. })));
    }

    #[test]
    fn truncated_and_corrupted_datagrams_never_panic() {
        let paths = vec![
            path(Some("10.9.0.2"), 3, 0, RouteNextHopFlags::empty()),
            path(Some("10.99.0.3"), 4, 2, RouteNextHopFlags::Onlink),
        ];
        let mut dg = new_route(route_msg(RouteType::Unicast, "10.25.0.0/16", vec![RouteAttribute::MultiPath(paths)]));
        dg.extend(new_route(route_msg(
            RouteType::Unicast,
            "10.1.0.0/16",
            vec![gw("10.9.0.2"), RouteAttribute::Oif(3)],
        )));
        dg.extend(DONE);
        let check = |b: &[u8]| {
            for r in parse_datagram(b) {
                if let Msg::NewRoute(rm) | Msg::DelRoute(rm) = &r.msg {
                    let _ = classify(rm, T);
                }
            }
        };
        for n in 0..=dg.len() {
            check(&dg[..n]);
        }
        for i in 0..dg.len() {
            for v in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut m = dg.clone();
                m[i] = v;
                check(&m);
            }
        }
    }

    #[test]
    fn link_down_link_delete_and_address_delete_flag_the_device() {
        let mut down = LinkMessage::default();
        down.header.index = 5;
        let mut up = down.clone();
        up.header.flags = LinkFlags::Up | LinkFlags::Running;
        let mut addr = AddressMessage::default();
        addr.header.family = AddressFamily::Inet;
        addr.header.index = 6;
        let mut addr6 = addr.clone();
        addr6.header.family = AddressFamily::Inet6;
        let msgs = [
            (RouteNetlinkMessage::NewLink(down.clone()), Some(5)),
            (RouteNetlinkMessage::DelLink(up.clone()), Some(5)),
            (RouteNetlinkMessage::NewLink(up), None),
            (RouteNetlinkMessage::DelAddress(addr.clone()), Some(6)),
            (RouteNetlinkMessage::NewAddress(addr), None),
            (RouteNetlinkMessage::DelAddress(addr6), None),
        ];
        for (m, want) in msgs {
            let got = parse_datagram(&wire(0, 0, 0, NetlinkPayload::from(m.clone())));
            let dev = match got[0].msg {
                Msg::DevChanged(i) => Some(i),
                _ => None,
            };
            assert_eq!(dev, want, "{m:?}");
        }
    }

    #[test]
    fn dump_request_asks_for_an_ipv4_dump() {
        let req = dump_request(42);
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&req).unwrap();
        assert_eq!(m.header.flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(m.header.sequence_number, 42);
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::GetRoute(rm)) = m.payload else { panic!("{m:?}") };
        assert_eq!(rm.header.address_family, AddressFamily::Inet);
    }

    #[test]
    fn done_message_type_is_what_the_parser_expects() {
        // The fixture above and the crate's own encoding agree.
        let mut d = DoneMessage::default();
        d.code = 0;
        let mut bytes = wire(7, 12345, 2, NetlinkPayload::Done(d));
        bytes.truncate(DONE.len());
        assert_eq!(bytes, DONE);
    }

    // --- the mirror ---

    #[test]
    fn worse_duplicate_is_silent_and_promoted_when_the_best_goes() {
        let mut m = Mirror::default();
        let best = raw("10.26.0.0/16", 10, via("10.9.0.2", 3));
        let worse = raw("10.26.0.0/16", 20, via("10.9.0.3", 3));
        assert_eq!(m.upsert(best.clone()), Some(Change::Set(best.clone())));
        assert_eq!(m.upsert(worse.clone()), None);
        assert_eq!(m.remove(pfx("10.26.0.0/16"), 20, 0), None, "removing the worse one changes nothing");
        assert_eq!(m.upsert(worse.clone()), None);
        assert_eq!(m.remove(pfx("10.26.0.0/16"), 10, 0), Some(Change::Set(worse)));
        assert_eq!(m.remove(pfx("10.26.0.0/16"), 20, 0), Some(Change::Unset(pfx("10.26.0.0/16"))));
        assert!(m.routes.is_empty());
        assert_eq!(m.remove(pfx("10.26.0.0/16"), 20, 0), None, "unknown key");
    }

    #[test]
    fn better_metric_takes_over_and_replace_is_a_set() {
        let mut m = Mirror::default();
        let a = raw("10.1.0.0/16", 20, via("10.9.0.2", 3));
        let b = raw("10.1.0.0/16", 5, via("10.9.0.3", 3));
        m.upsert(a.clone());
        assert_eq!(m.upsert(b.clone()), Some(Change::Set(b.clone())));
        assert_eq!(m.upsert(b.clone()), None, "an identical re-add is silent");
        let b2 = raw("10.1.0.0/16", 5, RawNextHop::Blackhole);
        assert_eq!(m.upsert(b2.clone()), Some(Change::Set(b2)));
        // Same metric, TOS 0 sorts first.
        let tos = RawRoute { tos: 4, ..raw("10.1.0.0/16", 5, via("10.9.0.4", 3)) };
        assert_eq!(m.upsert(tos), None);
    }

    #[test]
    fn resync_emits_only_the_differences() {
        let mut m = Mirror::default();
        for r in [
            raw("10.1.0.0/16", 0, via("10.9.0.2", 3)), // vanishes
            raw("10.2.0.0/16", 0, via("10.9.0.2", 3)), // best changes
            raw("10.3.0.0/16", 0, via("10.9.0.2", 3)), // unchanged
            raw("10.4.0.0/16", 0, via("10.9.0.2", 3)), // only a worse duplicate vanishes
            raw("10.4.0.0/16", 9, via("10.9.0.3", 3)),
        ] {
            m.upsert(r);
        }
        let mut fresh = Mirror::default();
        for r in [
            raw("10.0.0.0/16", 0, RawNextHop::Unreachable), // new
            raw("10.2.0.0/16", 0, via("10.9.0.5", 3)),
            raw("10.3.0.0/16", 0, via("10.9.0.2", 3)),
            raw("10.4.0.0/16", 0, via("10.9.0.2", 3)),
        ] {
            fresh.upsert(r);
        }
        assert_eq!(
            m.replace(fresh),
            vec![
                Change::Set(raw("10.0.0.0/16", 0, RawNextHop::Unreachable)),
                Change::Unset(pfx("10.1.0.0/16")),
                Change::Set(raw("10.2.0.0/16", 0, via("10.9.0.5", 3))),
            ]
        );
        assert_eq!(m.replace(Mirror::default()).len(), 4, "everything vanishes");
    }

    #[test]
    fn the_mirror_keeps_a_route_in_a_few_dozen_bytes_and_interns_next_hops() {
        assert_eq!(std::mem::size_of::<StoredRoute>(), 16);
        assert!(std::mem::size_of::<(Ipv4Prefix, Stored)>() <= 32);
        let mut m = Mirror::default();
        for i in 0..1000u32 {
            let gw = format!("10.9.0.{}", 1 + i % 4);
            m.upsert(RawRoute {
                prefix: Ipv4Prefix::new_masked(0x0b00_0000 + (i << 8), 24),
                ..raw("0.0.0.0/0", 0, via(&gw, 3))
            });
        }
        assert_eq!((m.routes.len(), m.nh_ids.len()), (1000, 4), "four next hops, each stored once");
        assert!(m.routes.values().all(|s| matches!(s, Stored::One(_))), "one route per prefix: no allocation");
        for i in 0..1000u32 {
            m.remove(Ipv4Prefix::new_masked(0x0b00_0000 + (i << 8), 24), 0, 0);
        }
        assert!(m.routes.is_empty() && m.nh_ids.is_empty() && m.nhs.iter().all(Option::is_none));
    }

    #[test]
    fn mirror_knows_which_devices_it_uses() {
        let mut m = Mirror::default();
        m.upsert(raw("10.1.0.0/16", 0, via("10.9.0.2", 3)));
        m.upsert(raw("10.2.0.0/16", 0, RawNextHop::Dev { oif: 4 }));
        let mp = RawPath { via: None, oif: 5, onlink: false, weight: 1 };
        m.upsert(raw("10.3.0.0/16", 0, RawNextHop::Multipath(vec![mp])));
        m.upsert(raw("10.4.0.0/16", 0, RawNextHop::Blackhole));
        assert!(m.uses(3) && m.uses(4) && m.uses(5));
        assert!(!m.uses(0) && !m.uses(6));
    }

    #[test]
    fn vanished_ifindex_reads_if_n() {
        assert_eq!(ifname(0x7fff_fff0), "if2147483632");
        assert_eq!(ifname(1), "lo", "index 1 is the loopback in any namespace");
    }

    #[test]
    fn netns_names_are_checked() {
        let stop = Arc::new(AtomicBool::new(false));
        for bad in ["", "a/b", "..", "."] {
            let cfg = WatchConfig { table: T, netns: Some(bad.into()) };
            let e = spawn_watcher(cfg, stop.clone(), |_| {}).unwrap_err();
            assert!(matches!(e, NetlinkError::NetnsName(_)), "{bad:?}: {e}");
        }
        let cfg = WatchConfig { table: T, netns: Some("vr-nl-no-such-namespace".into()) };
        let e = spawn_watcher(cfg, stop, |_| {}).unwrap_err();
        assert!(matches!(e, NetlinkError::Netns { .. }), "{e}");
        assert!(e.to_string().contains("/run/netns/vr-nl-no-such-namespace"), "{e}");
    }
}
