//! The read-only state workers forward with, and how the control side replaces it.
//!
//! Two pieces, both replaced without locks:
//! - the FIB ([`crate::fib`]): updated route by route, lock-free, epoch-reclaimed;
//! - a [`Snapshot`] of everything else (ports, node addresses, peers, endpoints, next hops,
//!   compiled policy), published whole through an `ArcSwap`. A worker loads it once per batch,
//!   so a batch sees one snapshot from start to end: the old state or the new, never a mix.
//!
//! Ordering rule between the two: a route may only name a next hop that is in the published
//! snapshot, so the control side publishes a snapshot with a new next hop *before* pointing
//! routes at it, and withdraws routes *before* publishing a snapshot without it. Workers load the
//! snapshot at the start of a batch, *before* their FIB lookups, so publishing alone is not
//! enough: the control side (`control::node` in the daemon) publishes, then waits for a grace
//! period ([`Shared::synchronize`]: every batch that began before has ended), and only then
//! changes the FIB. A lookup that returns the new index therefore runs in a batch that loaded
//! the new snapshot; a withdrawal likewise changes the FIB, waits, then publishes. Next-hop
//! indices are never reused for something else while routes may still point at them.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::observe::Observe;
use super::packet::PortId;
use super::quiesce::{GraceTimeout, Readers};
use crate::acl::{EndpointId, PolicySet};
use crate::fib::{Fib, FibWriter, Ipv4Prefix, NhId};
use crate::neigh::NeighTable;
use crate::wire::MacAddr;

/// Calico's link-local gateway that every pod routes through (answered by proxy ARP).
pub const CALICO_POD_GATEWAY: u32 = 0xa9fe_0101; // 169.254.1.1

/// What a port is attached to.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PortKind {
    /// The node's NIC towards the underlay (AF_XDP).
    Uplink,
    /// A pod's interface (TAP or veth), point to point.
    Pod,
    /// The node's kernel (a TAP carrying the node IP): host-bound frames are delivered to it
    /// (addressed to its MAC, [`PortInfo::peer_mac`]); the IPv4 it sends is routed through the
    /// FIB like any other input (to pods, to other nodes, to the underlay), its ARP and
    /// link-level broadcast leave by the uplink unchanged.
    Host,
}

#[derive(Clone, Debug)]
pub struct PortInfo {
    pub name: String,
    pub kind: PortKind,
    /// Our MAC on this port: the source of what we send on it, the destination we accept.
    pub mac: MacAddr,
    /// The MAC of the one station at the other end, when it is fixed and not learned: the
    /// node kernel's on the host port (frames delivered to the host are addressed to it).
    pub peer_mac: Option<MacAddr>,
    /// IP MTU of the link (bytes of IPv4 packet, not counting the Ethernet header).
    pub mtu: u16,
    /// Punt frames of unsupported EtherTypes to the host port instead of dropping them.
    pub punt_unknown: bool,
}

/// Where a route sends packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NextHop {
    /// No route (index [`crate::fib::NH_NONE`]): drop and send ICMP net unreachable.
    Unreachable,
    /// Silently drop (Calico blackholes the aggregate of the local pod block).
    Blackhole,
    /// A route of type unreachable: drop and send ICMP net unreachable, whatever covers it.
    NetUnreachable,
    /// A route of type prohibit: drop and send ICMP communication administratively prohibited
    /// (code 13).
    Prohibit,
    /// Deliver to the node's kernel through the host port.
    Host,
    /// A local pod: its endpoint (port, MAC, addresses, policy).
    Local { endpoint: EndpointId },
    /// A neighbour on a port's L2 segment: BGP mode's "remote node IP on the same subnet", or
    /// the underlay gateway.
    Gateway { port: PortId, via: u32 },
    /// A host on a port's own subnet (the connected route): the L2 next hop is the packet's
    /// destination itself.
    Connected { port: PortId },
    /// IPIP to a remote node: outer destination `remote`, sent to the L2 neighbour `via`
    /// (`remote` itself when on-link, else the underlay gateway).
    Tunnel { port: PortId, remote: u32, via: u32 },
    /// Equal-cost multipath over other next hops, chosen by flow hash.
    Ecmp(Box<[NhId]>),
}

/// A local pod.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    pub port: PortId,
    /// The pod's MAC (frames to the pod are addressed to it).
    pub mac: MacAddr,
    /// The pod's addresses: its only permitted sources (anti-spoofing).
    pub addrs: Vec<u32>,
}

/// Calico's IPIP modes live in vrouter-types (the control protocol needs them); here at
/// their old path.
pub use vrouter_types::IpipMode;

/// Everything but the FIB, immutable once published.
pub struct Snapshot {
    /// Set by [`Shared::publish`]: 1 for the first snapshot, +1 for each one after.
    pub generation: u64,
    /// Ports by [`PortId`]; `None` is a free slot (a removed pod's id, kept until reused).
    pub ports: Vec<Option<PortInfo>>,
    /// The node IP: our tunnel endpoint and the source of ICMP errors we send.
    pub node_ip: u32,
    /// Every address that is ours (node IP, extra addresses, the pod gateway).
    pub local_addrs: Vec<u32>,
    /// The gateway address pods use; answered by proxy ARP on pod ports.
    pub pod_gateway: u32,
    /// Known peer nodes (sorted): the only outer sources accepted for decapsulation.
    pub peers: Vec<u32>,
    pub endpoints: Vec<Endpoint>,
    /// Port index -> the endpoint behind it (pod ports only).
    pub port_endpoint: Vec<Option<EndpointId>>,
    /// Next hops by [`NhId`]; index 0 is always [`NextHop::Unreachable`].
    pub nexthops: Vec<NextHop>,
    pub policy: Arc<PolicySet>,
    pub host_port: Option<PortId>,
    pub uplink_port: Option<PortId>,
    /// This node's pod blocks: never a source from the uplink, nor inside IPIP (empty after
    /// [`Snapshot::build`]; the control side sets it).
    pub pod_blocks: Vec<Ipv4Prefix>,
    /// Strict reverse-path check of IPIP inner sources (the default): the inner source must be
    /// routed back through the peer that sent it. Loose: it must only have a route.
    pub ipip_strict_rpf: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("port {0}: MTU {1} is outside 68..=9000")]
    BadMtu(String, u16),
    #[error("port {0}: MAC {1} must be unicast")]
    BadMac(String, MacAddr),
    #[error("endpoint {0}: port index {1} does not exist or is not a pod port")]
    EndpointPort(String, PortId),
    #[error("endpoint {0}: port {1} already belongs to endpoint {2}")]
    EndpointPortTaken(String, String, String),
    #[error("endpoint {0}: needs at least one address")]
    EndpointNoAddress(String),
    #[error("next hop {0}: {1}")]
    BadNextHop(usize, String),
    #[error("more than one {0:?} port")]
    DuplicatePort(PortKind),
    #[error("next-hop table must start with Unreachable at index 0")]
    NoUnreachable,
    #[error("too many next hops ({0}); at most {max}", max = NhId::MAX)]
    TooManyNextHops(usize),
}

impl Snapshot {
    /// Checks cross-references and derives the lookup tables. Nothing is published on error.
    #[allow(clippy::too_many_arguments)]
    pub fn build<P: Into<Option<PortInfo>>>(
        ports: impl IntoIterator<Item = P>,
        node_ip: u32,
        extra_addrs: Vec<u32>,
        pod_gateway: u32,
        mut peers: Vec<u32>,
        endpoints: Vec<Endpoint>,
        nexthops: Vec<NextHop>,
        policy: Arc<PolicySet>,
    ) -> Result<Snapshot, SnapshotError> {
        let ports: Vec<Option<PortInfo>> = ports.into_iter().map(Into::into).collect();
        let mut host_port = None;
        let mut uplink_port = None;
        for (i, p) in ports.iter().enumerate() {
            let Some(p) = p else { continue };
            if !(68..=9000).contains(&p.mtu) {
                return Err(SnapshotError::BadMtu(p.name.clone(), p.mtu));
            }
            if !p.mac.is_unicast() {
                return Err(SnapshotError::BadMac(p.name.clone(), p.mac));
            }
            let slot = match p.kind {
                PortKind::Host => &mut host_port,
                PortKind::Uplink => &mut uplink_port,
                PortKind::Pod => continue,
            };
            if slot.replace(i as PortId).is_some() {
                return Err(SnapshotError::DuplicatePort(p.kind));
            }
        }
        let mut port_endpoint = vec![None; ports.len()];
        for (i, e) in endpoints.iter().enumerate() {
            let p = e.port as usize;
            let Some(pinfo) = ports.get(p).and_then(Option::as_ref).filter(|x| x.kind == PortKind::Pod) else {
                return Err(SnapshotError::EndpointPort(e.name.clone(), e.port));
            };
            if let Some(other) = port_endpoint[p] {
                let other: &Endpoint = &endpoints[other as usize];
                return Err(SnapshotError::EndpointPortTaken(e.name.clone(), pinfo.name.clone(), other.name.clone()));
            }
            if e.addrs.is_empty() {
                return Err(SnapshotError::EndpointNoAddress(e.name.clone()));
            }
            port_endpoint[p] = Some(i as EndpointId);
        }
        if nexthops.first() != Some(&NextHop::Unreachable) {
            return Err(SnapshotError::NoUnreachable);
        }
        if nexthops.len() > NhId::MAX as usize {
            return Err(SnapshotError::TooManyNextHops(nexthops.len()));
        }
        for (i, nh) in nexthops.iter().enumerate() {
            let bad = |why: String| Err(SnapshotError::BadNextHop(i, why));
            let port_is =
                |p: PortId, k: PortKind| ports.get(p as usize).and_then(Option::as_ref).map(|x| x.kind) == Some(k);
            match nh {
                NextHop::Local { endpoint } if *endpoint as usize >= endpoints.len() => {
                    return bad(format!("endpoint {endpoint} does not exist"))
                }
                NextHop::Gateway { port, .. } | NextHop::Tunnel { port, .. } | NextHop::Connected { port }
                    if !port_is(*port, PortKind::Uplink) =>
                {
                    return bad(format!("port {port} is not the uplink"))
                }
                NextHop::Host if host_port.is_none() => return bad("no host port configured".into()),
                NextHop::Ecmp(members) => {
                    if members.is_empty() {
                        return bad("empty ECMP group".into());
                    }
                    for m in members.iter() {
                        match nexthops.get(*m as usize) {
                            None | Some(NextHop::Ecmp(_)) | Some(NextHop::Unreachable) => {
                                return bad(format!("ECMP member {m} must be an existing, non-ECMP next hop"))
                            }
                            _ => {}
                        }
                    }
                }
                NextHop::Unreachable if i != 0 => return bad("Unreachable only at index 0".into()),
                _ => {}
            }
        }
        peers.sort_unstable();
        peers.dedup();
        let mut local_addrs = vec![node_ip, pod_gateway];
        local_addrs.extend(extra_addrs);
        local_addrs.sort_unstable();
        local_addrs.dedup();
        Ok(Snapshot {
            generation: 0,
            ports,
            node_ip,
            local_addrs,
            pod_gateway,
            peers,
            endpoints,
            port_endpoint,
            nexthops,
            policy,
            host_port,
            uplink_port,
            pod_blocks: vec![],
            ipip_strict_rpf: true,
        })
    }

    /// Whether `a` lies in one of this node's pod blocks.
    #[inline]
    pub fn in_pod_block(&self, a: u32) -> bool {
        self.pod_blocks.iter().any(|b| b.contains(a))
    }

    /// The port in slot `p`, if there is one.
    #[inline]
    pub fn port(&self, p: PortId) -> Option<&PortInfo> {
        self.ports.get(p as usize).and_then(Option::as_ref)
    }

    /// Port names by port id ("" for a free slot), as counters are indexed.
    pub fn port_names(&self) -> Vec<String> {
        self.ports.iter().map(|p| p.as_ref().map(|p| p.name.clone()).unwrap_or_default()).collect()
    }

    #[inline]
    pub fn is_local(&self, a: u32) -> bool {
        self.local_addrs.contains(&a)
    }

    #[inline]
    pub fn is_peer(&self, a: u32) -> bool {
        self.peers.binary_search(&a).is_ok()
    }

    #[inline]
    pub fn nexthop(&self, id: NhId) -> Option<&NextHop> {
        self.nexthops.get(id as usize)
    }
}

/// What all workers of a node share, read-only from their side.
pub struct Shared {
    pub fib: Arc<Fib>,
    pub snapshot: ArcSwap<Snapshot>,
    pub neigh: Arc<NeighTable>,
    /// Workers' batch boundaries, for the control side's grace periods.
    pub readers: Readers,
    /// Trace, capture and dump requests.
    pub observe: Observe,
}

impl Shared {
    /// Creates the shared state and the FIB's single writer (for the control side).
    pub fn new(mut snapshot: Snapshot, neigh: NeighTable) -> (Arc<Shared>, FibWriter) {
        let (writer, fib) = FibWriter::new();
        snapshot.generation = 1;
        let shared = Shared {
            fib,
            snapshot: ArcSwap::from_pointee(snapshot),
            neigh: Arc::new(neigh),
            readers: Readers::default(),
            observe: Observe::default(),
        };
        (Arc::new(shared), writer)
    }

    /// Publishes a new snapshot; workers pick it up at their next batch. Its generation is
    /// the previous one's plus one. Only one thread (the control side) publishes.
    pub fn publish(&self, mut s: Snapshot) -> u64 {
        s.generation = self.snapshot.load().generation + 1;
        let g = s.generation;
        self.snapshot.store(Arc::new(s));
        g
    }

    /// Waits until no worker is still in a batch that began before this call: after it, every
    /// batch sees what was published before it (see [`super::quiesce`]). `wait` pauses while a
    /// worker is still busy and returns false to give up.
    pub fn synchronize(&self, wait: impl FnMut() -> bool) -> Result<(), GraceTimeout> {
        self.readers.synchronize(wait)
    }
}
