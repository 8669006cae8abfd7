//! The live node: the config it runs, the routes from every source, and how a change reaches
//! the workers without a packet being lost or misrouted on the way.
//!
//! ## Stable numbering
//! Routes point at next-hop *ids*, frames carry port *ids*; the workers may be using either
//! while the control side changes things. So ids never move: a next hop keeps its id for as
//! long as any route (or ECMP group) names it ([`NhTable`], reference counted), and a pod keeps
//! its port slot for as long as it exists. A freed next-hop id may be given to a new next hop
//! at once: workers read their snapshot before their FIB lookups, and a new id is published
//! and waited for before a route names it, so no batch can read an id with the wrong meaning.
//!
//! ## Make before break
//! Every change is published in an order in which each intermediate state is one the workers
//! can forward with correctly ([`vrouter_core::dataplane::quiesce`] gives the grace periods):
//! 0. check that every new port can be created (the pod's namespace exists ...);
//! 1. create new pods' TAPs (fallible: on error everything created is removed, nothing is
//!    published). A pod that replaces a running one under the same names (TAP, interface in
//!    its namespace) is created under a temporary name (staged) and finished by a second
//!    pass after the old one is gone, so a failure leaves the running pod untouched (a
//!    failure of that second pass cannot: the pod is down until the next apply, and the
//!    error, [`NodeError::PodsDown`], says so);
//! 2. publish a snapshot holding the old *and* the new: new pods, new next hops, peers of both
//!    configs, policy compiled over both pods' sets; wait for the workers;
//! 3. change the FIB route by route (each prefix flips atomically from its old next hop to its
//!    new one; both are in the snapshot); wait;
//! 4. publish the new snapshot alone (departed pods, peers, next hops gone); wait; close the
//!    departed pods' TAPs and free their ids.
//!
//! A flow whose path is unchanged is forwarded throughout; a flow whose path changed is
//! forwarded by the old path or the new one, never dropped for want of a next hop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use super::build::{config_routes, peer_nexthop, NhKey, RouteSource, FIRST_POD_PORT, POD_PORT_MAC, UPLINK};
use super::config::{Config, EndpointConfig, RpfMode};
use super::netlink::KernelNextHop;
use vrouter_core::acl::{EndpointPolicy, PolicyConfig, PolicySet};
use vrouter_core::dataplane::state::{Endpoint, NextHop, PortInfo, PortKind, Snapshot};
use vrouter_core::dataplane::{PortId, Shared, MAX_PORTS};
use vrouter_core::fib::{FibWriter, Ipv4Prefix, NhId};
use vrouter_core::wire::MacAddr;

/// Creates and removes pods' ports on behalf of the node (TAPs in the daemon, nothing in tests).
pub trait PortIo: Send {
    /// Whether the port for `e` can be created (its namespace exists, its names are usable),
    /// without creating anything. Called for every port an `apply` creates before it changes
    /// anything.
    fn check_pod(&self, _e: &EndpointConfig) -> Result<(), String> {
        Ok(())
    }
    /// Creates the port for a pod that *replaces* a running one whose names (TAP, interface in
    /// the namespace) it needs, without taking those names: the running pod is untouched.
    /// [`PortIo::add_pod`] for the same slot later finishes it once the old one is gone; a
    /// [`PortIo::remove_pod`] discards it.
    fn stage_pod(&mut self, _slot: PortId, _e: &EndpointConfig) -> Result<(), String> {
        Ok(())
    }
    /// Creates the port for `e` in `slot` (or finishes one staged there) and makes it
    /// available to the workers for sending and receiving. Called before any snapshot names
    /// the slot.
    fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, pod_gateway: Ipv4Addr) -> Result<(), String>;
    /// Removes it; called once no published snapshot names the slot.
    fn remove_pod(&mut self, slot: PortId);
    /// Removes several, as [`PortIo::remove_pod`] does each (at once where that is cheaper).
    fn remove_pods(&mut self, slots: &[PortId]) {
        for s in slots {
            self.remove_pod(*s);
        }
    }
    /// Whether the port in `slot` was removed by someone else (a pod's TAP deleted inside the
    /// pod, or its namespace destroyed): the next apply replaces it as if its config changed.
    fn port_gone(&self, _slot: PortId) -> bool {
        false
    }
    /// Points the node kernel's routes to the pod blocks (this node's and its peers') at the
    /// host port, through `via` on-link (the pod gateway, answered by proxy ARP there), so
    /// whatever the kernel sends to a pod goes through vrouter, as Calico keeps the host's
    /// routes to every pod. Called with the whole set after every change.
    fn host_routes(&mut self, _blocks: &[Ipv4Prefix], _via: Ipv4Addr) {}
}

/// A [`PortIo`] that creates nothing (in-memory nodes, tests).
#[derive(Default)]
pub struct NoIo;

impl PortIo for NoIo {
    fn add_pod(&mut self, _: PortId, _: &EndpointConfig, _: Ipv4Addr) -> Result<(), String> {
        Ok(())
    }
    fn remove_pod(&mut self, _: PortId) {}
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{field}: {msg}")]
    Invalid { field: String, msg: String },
    #[error("{0} changed: it cannot change on a running node; restart vrouter to apply it")]
    RestartNeeded(String),
    #[error("endpoint {name}: {msg}")]
    Endpoint { name: String, msg: String },
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
    /// The new config is the running one, but pods replaced under the same names could not be
    /// finished once their old ports were gone: they have no port until the next apply.
    #[error("{}", pods_down(pods, msg))]
    PodsDown { pods: Vec<String>, msg: String },
    /// The new config is the running one, but a step after the switch failed (publishing a
    /// snapshot, programming routes): what it missed is done by the next apply.
    #[error("applied, but not completed: {0}; the next apply (or reload) retries what is missing")]
    Unfinished(String),
}

fn pods_down(pods: &[String], msg: &str) -> String {
    let (what, verb) = if pods.len() == 1 { ("pod", "is") } else { ("pods", "are") };
    format!(
        "applied, but {what} {} could not be finished and {verb} down until the next apply (vrouterctl apply or reload recreates it): {msg}",
        pods.join(", ")
    )
}

/// Paths in one ECMP group, repeats for weights included.
pub const MAX_ECMP: usize = 64;

/// Next-hop ids by key, reference counted: an id lives while routes or ECMP groups name it.
#[derive(Default)]
struct NhTable {
    ids: HashMap<NhKey, NhId>,
    keys: Vec<Option<NhKey>>,
    refs: Vec<u32>,
    /// Ids no route names. Reusable at once: a batch reads its snapshot *before* its FIB
    /// lookups, and a new key's id is published (and waited for) before any route names it,
    /// so no batch can pair a lookup of the old meaning with a snapshot of the new, or the
    /// reverse.
    free: Vec<NhId>,
    /// A key got an id since the last snapshot was published.
    dirty: bool,
}

impl NhTable {
    fn new() -> NhTable {
        // Id 0 is the FIB's "no route", forever, and no key's: a route of type unreachable
        // gets an id of its own, or a covering route would win over it.
        NhTable { keys: vec![None], refs: vec![u32::MAX / 2], ..Default::default() }
    }

    /// The id of `k`, taking a reference (and references on ECMP members).
    fn acquire(&mut self, k: &NhKey) -> Result<NhId, NodeError> {
        if let Some(&id) = self.ids.get(k) {
            self.refs[id as usize] += 1;
            return Ok(id);
        }
        if let NhKey::Ecmp(members) = k {
            if members.is_empty() || members.iter().any(|m| matches!(m, NhKey::Ecmp(_))) {
                return Err(NodeError::Refused(format!("{k}: ECMP members must be plain next hops")));
            }
            for m in members {
                self.acquire(m)?;
            }
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                if self.keys.len() >= NhId::MAX as usize {
                    return Err(NodeError::Refused(format!(
                        "no next-hop id left for {k} ({} in use)",
                        self.keys.len()
                    )));
                }
                self.keys.push(None);
                self.refs.push(0);
                (self.keys.len() - 1) as NhId
            }
        };
        self.keys[id as usize] = Some(k.clone());
        self.refs[id as usize] = 1;
        self.ids.insert(k.clone(), id);
        self.dirty = true;
        Ok(id)
    }

    fn release(&mut self, id: NhId) {
        let r = &mut self.refs[id as usize];
        *r -= 1;
        if *r > 0 {
            return;
        }
        let k = self.keys[id as usize].take().expect("a referenced id has a key");
        self.ids.remove(&k);
        self.free.push(id);
        if let NhKey::Ecmp(members) = &k {
            for m in members {
                let mid = self.ids[m];
                self.release(mid);
            }
        }
    }

    fn key(&self, id: NhId) -> Option<&NhKey> {
        self.keys.get(id as usize).and_then(Option::as_ref)
    }
}

/// A route to a prefix from each source that has one (ids hold references): 8 bytes, so that
/// with its prefix a route is a 16-byte map entry (a full table of kernel routes is 1M).
#[derive(Clone, Copy)]
struct RibEntry([NhId; 4]);

/// No route from that source. Never an id: [`NhTable::acquire`] stops below `NhId::MAX`.
const NO_ROUTE: NhId = NhId::MAX;

impl Default for RibEntry {
    fn default() -> Self {
        RibEntry([NO_ROUTE; 4])
    }
}

impl RibEntry {
    fn get(&self, s: RouteSource) -> Option<NhId> {
        Some(self.0[s as usize]).filter(|id| *id != NO_ROUTE)
    }

    fn set(&mut self, s: RouteSource, id: Option<NhId>) -> Option<NhId> {
        let old = self.get(s);
        self.0[s as usize] = id.unwrap_or(NO_ROUTE);
        old
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|id| *id == NO_ROUTE)
    }

    /// Every source's route, in priority order.
    fn all(&self) -> impl Iterator<Item = (RouteSource, NhId)> + '_ {
        RouteSource::ALL.iter().filter_map(|s| self.get(*s).map(|id| (*s, id)))
    }

    fn best(&self) -> Option<(RouteSource, NhId)> {
        self.all().next()
    }
}

/// A pod's port slot.
#[derive(Clone)]
struct Pod {
    cfg: EndpointConfig,
    /// Leaving: withdrawn from routing, still in the snapshot until the next grace period.
    leaving: bool,
}

pub use vrouter_api::{ChangeReport, Plan, RouteView};

pub struct Node {
    cfg: Config,
    shared: Arc<Shared>,
    fib: FibWriter,
    uplink_mac: MacAddr,
    io: Box<dyn PortIo>,
    nh: NhTable,
    rib: BTreeMap<Ipv4Prefix, RibEntry>,
    /// Pods by port slot.
    pods: BTreeMap<PortId, Pod>,
    /// Peers accepted for decapsulation besides the config's (the previous config's, while a
    /// change is on its way).
    extra_peers: Vec<u32>,
    /// Policies of the previous config still needed by leaving pods.
    extra_policies: BTreeMap<String, Vec<vrouter_core::acl::Rule>>,
    policy: Arc<PolicySet>,
    policy_cfg: PolicyConfig,
    policy_generation: u64,
    /// Kernel routes that could not be installed, and why.
    kernel_rejected: BTreeMap<Ipv4Prefix, String>,
    /// Kernel routes whose meaning depends on the peers (through a peer's address, or `onlink`
    /// as BIRD writes what it learns): resolved again when the peers change.
    kernel_peer_routes: BTreeMap<Ipv4Prefix, KernelNextHop>,
    /// Ports created (staged) for pods that replace running ones, by endpoint name: finished
    /// by the second pass of the same `apply`, once the replaced pods are gone.
    staged: BTreeMap<String, PortId>,
    /// Prefixes gone from the RIB since memory was last given back.
    removed_routes: usize,
    published: usize,
    /// Grace periods that timed out (a worker stuck in one batch for a second).
    pub grace_timeouts: u64,
    /// Bumped whenever the running config changes (see [`Node::generation`]).
    generation: u64,
}

fn ip(a: Ipv4Addr) -> u32 {
    u32::from(a)
}

/// The names a pod's port takes: its TAP, and its interface in its namespace.
fn port_names(e: &EndpointConfig) -> Vec<String> {
    let mut v = vec![format!("tap {}", e.tap)];
    if let Some(ns) = &e.netns {
        v.push(format!("netns {ns} dev {}", e.ifname));
    }
    v
}

impl Node {
    /// Builds the node for `cfg`: creates its pods' ports through `io`, publishes the first
    /// snapshot and loads the routes.
    pub fn new(
        cfg: Config,
        uplink_mac: MacAddr,
        shared: Arc<Shared>,
        fib: FibWriter,
        io: Box<dyn PortIo>,
    ) -> Result<Node, NodeError> {
        let mut node = Node {
            cfg: cfg.clone(),
            shared,
            fib,
            uplink_mac,
            io,
            nh: NhTable::new(),
            rib: BTreeMap::new(),
            pods: BTreeMap::new(),
            extra_peers: vec![],
            extra_policies: BTreeMap::new(),
            policy: Arc::new(PolicySet::allow_all()),
            policy_cfg: PolicyConfig::default(),
            policy_generation: 0,
            kernel_rejected: BTreeMap::new(),
            kernel_peer_routes: BTreeMap::new(),
            staged: BTreeMap::new(),
            removed_routes: 0,
            published: 0,
            grace_timeouts: 0,
            generation: 0,
        };
        node.cfg.endpoints.clear();
        node.cfg.peers.clear();
        node.cfg.routes.clear();
        node.cfg.neighbours.clear();
        node.apply(cfg)?;
        Ok(node)
    }

    /// A snapshot for `cfg` on its own (no routes, no pods' ports): what `vrouter run` starts
    /// the workers with before [`Node::new`] fills it in.
    pub fn empty_snapshot(cfg: &Config, uplink_mac: MacAddr) -> Snapshot {
        let ports = Self::base_ports(cfg, uplink_mac);
        Snapshot::build(
            ports,
            ip(cfg.node.ip),
            vec![],
            ip(cfg.node.pod_gateway),
            vec![],
            vec![],
            vec![NextHop::Unreachable],
            Arc::new(PolicySet::allow_all()),
        )
        .map(|mut s| {
            Self::node_checks(&mut s, cfg);
            s
        })
        .expect("uplink and host ports are valid")
    }

    /// The anti-spoofing settings of a snapshot that come from `[node]`.
    fn node_checks(snap: &mut Snapshot, cfg: &Config) {
        snap.pod_blocks = cfg.pod_blocks();
        snap.ipip_strict_rpf = cfg.node.ipip_rpf == RpfMode::Strict;
    }

    fn base_ports(cfg: &Config, uplink_mac: MacAddr) -> Vec<Option<PortInfo>> {
        let uplink = PortInfo {
            name: cfg.uplink.as_ref().map(|u| u.device.clone()).unwrap_or_else(|| "uplink".into()),
            kind: PortKind::Uplink,
            mac: uplink_mac,
            peer_mac: None,
            mtu: cfg.uplink.as_ref().map(|u| u.mtu).unwrap_or(1500),
            punt_unknown: cfg.host.is_some(),
        };
        let host = cfg.host.as_ref().map(|h| PortInfo {
            name: h.tap.clone(),
            kind: PortKind::Host,
            // The kernel's side of the TAP has the uplink's MAC (it shares the node IP with
            // us on the underlay); ours is the pod-port MAC, as Calico's host-side interfaces.
            mac: POD_PORT_MAC,
            peer_mac: Some(uplink_mac),
            mtu: uplink.mtu,
            punt_unknown: false,
        });
        vec![Some(uplink), host]
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The running config's generation: bumped by every apply (or edit) that changed it, so
    /// that a client's read-modify-write can check nothing came in between (`apply`'s
    /// `if_generation`).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The pods' port slots, by endpoint name.
    pub fn pod_ports(&self) -> Vec<(String, PortId)> {
        self.pods.iter().filter(|(_, p)| !p.leaving).map(|(s, p)| (p.cfg.name.clone(), *s)).collect()
    }

    pub fn fib_len(&self) -> usize {
        self.fib.len()
    }

    pub fn fib_memory_bytes(&self) -> usize {
        self.fib.memory_bytes()
    }

    pub fn snapshots_published(&self) -> usize {
        self.published
    }

    fn grace(&mut self) {
        // A batch takes microseconds; a worker still in one after a second is stuck.
        let start = std::time::Instant::now();
        let wait = || {
            std::thread::sleep(std::time::Duration::from_micros(20));
            start.elapsed() < std::time::Duration::from_secs(1)
        };
        if let Err(e) = self.shared.synchronize(wait) {
            self.grace_timeouts += 1;
            tracing::warn!("{e} (1 s); going on (a frame in that batch may be dropped as fib/bad-next-hop)");
        }
    }

    // ------------------------------------------------------------ snapshots

    fn compile_policy(&mut self) -> Result<Arc<PolicySet>, NodeError> {
        let mut policies = self.cfg.policies.clone();
        for (k, v) in &self.extra_policies {
            policies.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let pc = PolicyConfig {
            global: self.cfg.global_rules.clone(),
            policies,
            endpoints: self
                .pods
                .values()
                .map(|p| EndpointPolicy { ingress: p.cfg.ingress.clone(), egress: p.cfg.egress.clone() })
                .collect(),
        };
        if pc == self.policy_cfg && self.policy_generation > 0 {
            return Ok(self.policy.clone());
        }
        self.policy_generation += 1;
        let set = PolicySet::compile(&pc, self.policy_generation)
            .map_err(|e| NodeError::Invalid { field: "policies".into(), msg: e.to_string() })?;
        self.policy = Arc::new(set);
        self.policy_cfg = pc;
        Ok(self.policy.clone())
    }

    /// Publishes what the node holds now: every pod in `pods` (leaving ones too), every next
    /// hop with an id, the config's peers plus `extra_peers`.
    fn publish(&mut self) -> Result<(), NodeError> {
        let policy = self.compile_policy()?;
        let mut ports = Self::base_ports(&self.cfg, self.uplink_mac);
        let mut endpoints = Vec::new();
        let mut ep_of_slot = HashMap::new();
        for (slot, pod) in &self.pods {
            let s = *slot as usize;
            if ports.len() <= s {
                ports.resize(s + 1, None);
            }
            ports[s] = Some(PortInfo {
                name: pod.cfg.tap.clone(),
                kind: PortKind::Pod,
                mac: POD_PORT_MAC,
                peer_mac: None,
                mtu: pod.cfg.mtu,
                punt_unknown: false,
            });
            ep_of_slot.insert(*slot, endpoints.len() as u16);
            endpoints.push(Endpoint {
                name: pod.cfg.name.clone(),
                port: *slot,
                mac: pod.cfg.mac,
                addrs: pod.cfg.addrs.iter().map(|a| ip(*a)).collect(),
            });
        }
        let resolve = |k: &NhKey| -> NextHop {
            match k {
                NhKey::Unreachable => NextHop::NetUnreachable,
                NhKey::Prohibit => NextHop::Prohibit,
                NhKey::Blackhole => NextHop::Blackhole,
                NhKey::Host if self.cfg.host.is_some() => NextHop::Host,
                NhKey::Local(slot) => match ep_of_slot.get(slot) {
                    Some(e) => NextHop::Local { endpoint: *e },
                    None => NextHop::Blackhole,
                },
                NhKey::Gateway(v) => NextHop::Gateway { port: UPLINK, via: ip(*v) },
                NhKey::Connected => NextHop::Connected { port: UPLINK },
                NhKey::Tunnel { remote, via } => NextHop::Tunnel { port: UPLINK, remote: ip(*remote), via: ip(*via) },
                NhKey::Ecmp(m) => {
                    let members: Box<[NhId]> = m.iter().filter_map(|k| self.nh.ids.get(k).copied()).collect();
                    if members.len() == m.len() {
                        NextHop::Ecmp(members)
                    } else {
                        NextHop::Blackhole // not reachable: a live group holds its members
                    }
                }
                NhKey::Host => NextHop::Blackhole,
            }
        };
        let nexthops: Vec<NextHop> = self
            .nh
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                Some(k) => resolve(k),
                None if i == 0 => NextHop::Unreachable,
                None => NextHop::Blackhole, // a free id: nothing points here
            })
            .collect();
        let mut peers: Vec<u32> = self.cfg.peers.iter().map(|p| ip(p.ip)).collect();
        peers.extend(&self.extra_peers);
        let snap = Snapshot::build(
            ports,
            ip(self.cfg.node.ip),
            vec![],
            ip(self.cfg.node.pod_gateway),
            peers,
            endpoints,
            nexthops,
            policy,
        )
        .map_err(|e| NodeError::Internal(format!("snapshot refused: {e}")))?;
        let mut snap = snap;
        Self::node_checks(&mut snap, &self.cfg);
        self.shared.publish(snap);
        self.nh.dirty = false;
        self.published += 1;
        Ok(())
    }

    // ------------------------------------------------------------ routes

    /// Sets (or with `None` removes) `source`'s route to `prefix` and programs the FIB when
    /// the winning route changed. The caller publishes a snapshot (and waits) between
    /// acquiring new next hops and calling this; see [`Node::set_routes`].
    fn set_route_id(&mut self, prefix: Ipv4Prefix, source: RouteSource, id: Option<NhId>) -> bool {
        let entry = self.rib.entry(prefix).or_default();
        let before = entry.best();
        let old = entry.set(source, id);
        let after = entry.best();
        if entry.is_empty() {
            self.rib.remove(&prefix);
        }
        if let Some(old) = old {
            self.nh.release(old);
        }
        if before.map(|b| b.1) == after.map(|a| a.1) {
            return false;
        }
        match after {
            Some((_, id)) => {
                self.fib.insert(prefix, id);
            }
            None => {
                self.fib.remove(prefix);
            }
        }
        true
    }

    /// Applies a batch of route changes for one source, make before break: new next hops are
    /// published (and the workers waited for) before any route points at them; ids no route
    /// uses any more are freed.
    pub fn set_routes(
        &mut self,
        source: RouteSource,
        changes: impl IntoIterator<Item = (Ipv4Prefix, Option<NhKey>)>,
    ) -> Result<usize, NodeError> {
        let mut ids = Vec::new();
        for (p, k) in changes {
            let id = match k {
                Some(k) => match self.nh.acquire(&k) {
                    Ok(id) => Some(id),
                    Err(e) => {
                        for (_, id) in ids {
                            if let Some(id) = id {
                                self.nh.release(id);
                            }
                        }
                        return Err(e);
                    }
                },
                None => None,
            };
            ids.push((p, id));
        }
        if self.nh.dirty {
            self.publish()?;
            self.grace();
        }
        let mut changed = 0;
        let before = self.rib.len();
        for (p, id) in ids {
            changed += self.set_route_id(p, source, id) as usize;
        }
        self.removed_routes += before.saturating_sub(self.rib.len());
        if self.removed_routes >= 10_000 {
            self.removed_routes = 0;
            self.release_memory();
        }
        Ok(changed)
    }

    /// The routes `source` has now (its own view, shadowed or not).
    fn source_routes(&self, source: RouteSource) -> BTreeMap<Ipv4Prefix, NhKey> {
        self.rib
            .iter()
            .filter_map(|(p, e)| e.get(source).map(|id| (*p, self.nh.key(id).expect("live id").clone())))
            .collect()
    }

    /// Replaces all of `source`'s routes with `want`, changing only what differs.
    fn replace_source(&mut self, source: RouteSource, want: &BTreeMap<Ipv4Prefix, NhKey>) -> Result<usize, NodeError> {
        let have = self.source_routes(source);
        let mut changes: Vec<(Ipv4Prefix, Option<NhKey>)> =
            have.keys().filter(|p| !want.contains_key(p)).map(|p| (*p, None)).collect();
        for (p, k) in want {
            if have.get(p) != Some(k) {
                changes.push((*p, Some(k.clone())));
            }
        }
        self.set_routes(source, changes)
    }

    /// Every route, the winning one per prefix with what it shadows.
    pub fn routes(&self, source: Option<RouteSource>, within: Option<Ipv4Prefix>) -> Vec<RouteView> {
        let mut out = Vec::new();
        for (p, e) in &self.rib {
            if within.is_some_and(|w| !(w.len() <= p.len() && w.contains(p.addr()))) {
                continue;
            }
            let Some((src, id)) = e.best() else { continue };
            if source.is_some_and(|s| e.get(s).is_none()) {
                continue;
            }
            let key = |id: NhId| self.nh.key(id).map_or_else(|| "?".into(), |k| k.to_string());
            out.push(RouteView {
                prefix: *p,
                source: src,
                nexthop: key(id),
                nh_id: id,
                shadowed: e.all().filter(|(s, _)| *s != src).map(|(s, x)| (s, key(x))).collect(),
            });
        }
        out
    }

    /// The route the FIB would use for `dst` (longest match over the RIB), for traces.
    pub fn route_for(&self, dst: u32) -> Option<(Ipv4Prefix, RouteSource, String)> {
        (0..=32u8).rev().find_map(|len| {
            let p = Ipv4Prefix::new_masked(dst, len);
            let (src, id) = self.rib.get(&p)?.best()?;
            Some((p, src, self.nh.key(id).map_or_else(|| "?".into(), |k| k.to_string())))
        })
    }

    pub fn kernel_rejected(&self) -> &BTreeMap<Ipv4Prefix, String> {
        &self.kernel_rejected
    }

    /// A route from the CLI: `None` deletes. Errors name what was wrong.
    pub fn cli_route(&mut self, prefix: Ipv4Prefix, nh: Option<NhKey>) -> Result<usize, NodeError> {
        if let Some(k) = &nh {
            self.check_key(k, false)?;
        } else if self.rib.get(&prefix).is_none_or(|e| e.get(RouteSource::Cli).is_none()) {
            return Err(NodeError::Refused(format!(
                "no CLI route to {prefix} (routes from the config file change with `apply`, kernel routes follow the kernel)"
            )));
        }
        self.set_routes(RouteSource::Cli, [(prefix, nh)])
    }

    /// Whether this node can forward to `k`; `onlink` accepts gateways off the node subnet
    /// (the kernel's `onlink` flag: resolved on the uplink all the same).
    fn check_key(&self, k: &NhKey, onlink: bool) -> Result<(), NodeError> {
        let subnet = self.cfg.node.subnet;
        let refuse = |m: String| Err(NodeError::Refused(m));
        match k {
            NhKey::Gateway(v) | NhKey::Tunnel { via: v, .. } if !onlink && !subnet.contains(ip(*v)) => {
                refuse(format!("{v} is not on the node subnet {subnet}: a next hop must be on-link"))
            }
            NhKey::Gateway(_) | NhKey::Tunnel { .. } | NhKey::Connected if self.cfg.uplink.is_none() => {
                refuse("this node has no uplink".into())
            }
            NhKey::Host if self.cfg.host.is_none() => refuse("this node has no [host] port".into()),
            NhKey::Local(_) => refuse("routes to pods come from their endpoints".into()),
            NhKey::Ecmp(m) if m.len() > MAX_ECMP => {
                refuse(format!("{} paths in an ECMP group (weights count as repeats); at most {MAX_ECMP}", m.len()))
            }
            NhKey::Ecmp(m) => m.iter().try_for_each(|k| self.check_key(k, onlink)),
            _ => Ok(()),
        }
    }

    /// A kernel route appeared, changed (`Some`) or went away (`None`). A route vrouter cannot
    /// forward with (a next hop off the node's subnet, an unknown device) is not installed and
    /// is listed with the reason.
    pub fn kernel_route(&mut self, prefix: Ipv4Prefix, nh: Result<(NhKey, bool), String>) -> Result<usize, NodeError> {
        match nh {
            Ok((k, onlink)) => match self.check_key(&k, onlink) {
                Ok(()) => {
                    self.kernel_rejected.remove(&prefix);
                    self.set_routes(RouteSource::Kernel, [(prefix, Some(k))])
                }
                Err(e) => self.reject_kernel(prefix, e.to_string()),
            },
            Err(why) => self.reject_kernel(prefix, why),
        }
    }

    /// A kernel route appeared or changed: resolved with [`Node::kernel_nexthop`] and installed
    /// (or listed as not installed). Kept to be resolved again if it depends on the peers.
    pub fn kernel_set(&mut self, prefix: Ipv4Prefix, nh: &KernelNextHop) -> Result<usize, NodeError> {
        let resolved = self.kernel_nexthop(nh);
        if self.depends_on_peers(nh) {
            self.kernel_peer_routes.insert(prefix, nh.clone());
        } else {
            self.kernel_peer_routes.remove(&prefix);
        }
        self.kernel_route(prefix, resolved)
    }

    /// Whether a kernel route's next hop may change meaning with the peer set.
    fn depends_on_peers(&self, nh: &KernelNextHop) -> bool {
        let peer = |v: &Ipv4Addr| self.cfg.peers.iter().any(|p| p.ip == *v);
        match nh {
            KernelNextHop::Gateway { via, onlink, .. } => *onlink || peer(via),
            KernelNextHop::Multipath(paths) => paths.iter().any(|p| p.onlink || p.via.as_ref().is_some_and(peer)),
            _ => false,
        }
    }

    /// Resolves the peer-dependent kernel routes again (after the peers changed: a node
    /// appeared, left, or its pool's IPIP mode changed).
    fn reresolve_kernel_routes(&mut self) -> Result<usize, NodeError> {
        let routes: Vec<(Ipv4Prefix, KernelNextHop)> =
            self.kernel_peer_routes.iter().map(|(p, nh)| (*p, nh.clone())).collect();
        let mut changed = 0;
        for (p, nh) in routes {
            changed += self.kernel_set(p, &nh)?;
        }
        Ok(changed)
    }

    fn reject_kernel(&mut self, prefix: Ipv4Prefix, why: String) -> Result<usize, NodeError> {
        super::netlink::log_not_imported(prefix, &why); // a burst is one line and a count
        self.kernel_rejected.insert(prefix, why);
        self.set_routes(RouteSource::Kernel, [(prefix, None)])
    }

    /// What a kernel route means here: `(key, onlink)`, or why vrouter cannot use it. Routes
    /// through `kernel_routes.tunnel_device` are IPIP to their gateway (Calico programs
    /// `via NODE dev tunl0 onlink`); through the uplink (or an alias), plain next hops.
    pub fn kernel_nexthop(&self, nh: &KernelNextHop) -> Result<(NhKey, bool), String> {
        let Some(kr) = &self.cfg.kernel_routes else { return Err("kernel route import is off".into()) };
        let uplink = self.cfg.uplink.as_ref().map(|u| u.device.as_str());
        let host = self.cfg.host.as_ref().map(|h| h.tap.as_str());
        // The host TAP carries the node IP and subnet, so the kernel (and BIRD) see the node's
        // neighbours through it: its routes leave by the uplink.
        let is_uplink = |d: Option<&str>| match d {
            None => true,
            Some(d) => Some(d) == uplink || Some(d) == host || kr.uplink_aliases.iter().any(|a| a == d),
        };
        let unknown = |d: &str| {
            format!(
                "device {d} is not one vrouter forwards to (uplink {}, tunnel {}, host {})",
                uplink.unwrap_or("none"),
                kr.tunnel_device,
                host.unwrap_or("none")
            )
        };
        let path = |via: Option<Ipv4Addr>, dev: Option<&str>| -> Result<NhKey, String> {
            match (via, dev) {
                (Some(v), Some(d)) if d == kr.tunnel_device => {
                    let l2 = if self.cfg.node.subnet.contains(ip(v)) {
                        v
                    } else {
                        self.cfg.node.gateway.ok_or("IPIP to an off-subnet node needs node.gateway")?
                    };
                    Ok(NhKey::Tunnel { remote: v, via: l2 })
                }
                // Through another node (BIRD's `via NODE-IP ... onlink`): straight to it or in
                // IPIP, as its pool's mode says, exactly as a configured peer's blocks.
                (Some(v), d) if is_uplink(d) => match self.cfg.peers.iter().find(|p| p.ip == v) {
                    Some(p) => Ok(peer_nexthop(&self.cfg, p)),
                    None => Ok(NhKey::Gateway(v)),
                },
                (None, Some(d)) if is_uplink(Some(d)) => Ok(NhKey::Connected),
                (_, Some(d)) => Err(unknown(d)),
                (_, None) => Err("a route with neither gateway nor device".into()),
            }
        };
        match nh {
            KernelNextHop::Blackhole => Ok((NhKey::Blackhole, false)),
            KernelNextHop::Unreachable => Ok((NhKey::Unreachable, false)),
            KernelNextHop::Prohibit => Ok((NhKey::Prohibit, false)),
            KernelNextHop::Gateway { via, dev, onlink } => {
                let tunnel = dev.as_deref() == Some(kr.tunnel_device.as_str());
                Ok((path(Some(*via), dev.as_deref())?, *onlink || tunnel))
            }
            KernelNextHop::Dev { dev } => Ok((path(None, Some(dev))?, false)),
            KernelNextHop::Multipath(paths) => {
                let mut members = Vec::new();
                let mut onlink_all = false;
                for p in paths {
                    let k = path(p.via, p.dev.as_deref())?;
                    onlink_all |= p.onlink || p.dev.as_deref() == Some(kr.tunnel_device.as_str());
                    // Weights as repeated members, bounded so a group stays small.
                    for _ in 0..p.weight.clamp(1, 8) {
                        members.push(k.clone());
                    }
                }
                match members.len() {
                    0 => Err("a multipath route with no usable path".into()),
                    1 => Ok((members.pop().expect("one"), onlink_all)),
                    _ => Ok((NhKey::Ecmp(members), onlink_all)),
                }
            }
        }
    }

    pub fn kernel_route_gone(&mut self, prefix: Ipv4Prefix) -> Result<usize, NodeError> {
        self.kernel_rejected.remove(&prefix);
        self.kernel_peer_routes.remove(&prefix);
        self.set_routes(RouteSource::Kernel, [(prefix, None)])
    }

    /// Withdraws every imported kernel route.
    pub fn flush_kernel_routes(&mut self) -> Result<usize, NodeError> {
        self.kernel_rejected.clear();
        self.kernel_peer_routes.clear();
        let n = self.replace_source(RouteSource::Kernel, &BTreeMap::new());
        self.release_memory();
        n
    }

    /// Frees FIB tables the workers have let go of since they were replaced (see
    /// [`FibWriter::collect`]).
    pub fn collect(&mut self) {
        self.fib.collect();
    }

    /// Gives back to the system what removed routes took (see
    /// [`crate::control::release_freed_memory`]).
    pub fn release_memory(&mut self) {
        self.fib.shrink_to_fit();
        self.nh.free.shrink_to_fit();
        self.nh.ids.shrink_to_fit();
        super::release_freed_memory();
    }

    // ------------------------------------------------------------ whole-config changes

    /// Makes the node run `new`: pods, peers, policies, routes and static neighbours change to
    /// match it, make before break (see the module docs). Node-level settings (node, uplink,
    /// host, workers, control, metrics, kernel_routes) cannot change while running.
    ///
    /// Errors: before the switch to `new` (anything refused, a port that cannot be created)
    /// nothing changed; after it, [`NodeError::PodsDown`] (replaced pods that could not be
    /// finished once their old ports were gone: the others are up) or
    /// [`NodeError::Unfinished`]. Either way `new` is the running config, and applying it
    /// again completes it.
    pub fn apply(&mut self, new: Config) -> Result<ChangeReport, NodeError> {
        let peers_before = self.cfg.peers.clone();
        let mut report = self.apply_passes(new)?;
        if self.cfg.peers != peers_before && !self.kernel_peer_routes.is_empty() {
            report.routes_changed += self.reresolve_kernel_routes()?;
        }
        Ok(report)
    }

    fn apply_passes(&mut self, new: Config) -> Result<ChangeReport, NodeError> {
        let (mut report, finish) = self.apply_pass(new, None)?;
        if finish {
            // Pods that replace running ones under the same names, now that those are gone.
            let cfg = self.cfg.clone();
            let mut down = Vec::new();
            let more = self.apply_pass(cfg, Some(&mut down));
            for (name, msg) in &down {
                tracing::error!(
                    endpoint = %name,
                    "replaced pod could not be finished after its old port was removed; it is down until the next apply: {msg}"
                );
            }
            let pods_down = |then: Option<&NodeError>| NodeError::PodsDown {
                pods: down.iter().map(|(n, _)| n.clone()).collect(),
                msg: down
                    .iter()
                    .map(|(n, m)| format!("endpoint {n}: {m}"))
                    .chain(then.map(|e| format!("then: {e}")))
                    .collect::<Vec<_>>()
                    .join("; "),
            };
            match more {
                Err(e) if down.is_empty() => return Err(e),
                Err(e) => return Err(pods_down(Some(&e))),
                Ok(_) if !down.is_empty() => return Err(pods_down(None)),
                Ok((more, _)) => {
                    report.endpoints_added.extend(more.endpoints_added);
                    report.routes_changed += more.routes_changed;
                    report.snapshots_published += more.snapshots_published;
                }
            }
        }
        Ok(report)
    }

    /// One pass of [`Node::apply`]; true if pods were staged, to be finished by a second pass.
    /// `down`: this is that second pass: a pod that cannot be finished is recorded there (its
    /// staged port removed) and the others go on, since the ports they replace are gone.
    fn apply_pass(
        &mut self,
        new: Config,
        mut down: Option<&mut Vec<(String, String)>>,
    ) -> Result<(ChangeReport, bool), NodeError> {
        new.validate().map_err(|(field, msg)| NodeError::Invalid { field, msg })?;
        self.check_static(&new)?;
        let mut report = ChangeReport::default();
        let published_before = self.published;

        let (kept, leaving) = self.pods_kept_and_leaving(&new);
        let leaving_names: BTreeSet<String> = leaving.iter().flat_map(|s| port_names(&self.pods[s].cfg)).collect();
        let mut arriving = Vec::new();
        let mut deferred = Vec::new();
        for e in &new.endpoints {
            if kept.contains_key(&e.name) {
                continue;
            }
            let taken = port_names(e).iter().any(|n| leaving_names.contains(n));
            if taken && !self.staged.contains_key(&e.name) {
                // A name it needs is still the running pod's: staged now, finished once the
                // old one is gone (the second pass below).
                deferred.push(e.clone());
                continue;
            }
            arriving.push(e.clone());
        }

        // 0. Everything that must exist for the new ports, checked before anything changes.
        for e in arriving.iter().chain(&deferred) {
            if !self.staged.contains_key(&e.name) {
                self.io.check_pod(e).map_err(|msg| NodeError::Endpoint { name: e.name.clone(), msg })?;
            }
        }

        // 1. New ports (fallible): all or nothing. Replacements are created (staged) too, so
        //    that a failure leaves the running pods as they were.
        let mut created: Vec<(PortId, EndpointConfig)> = Vec::new();
        let undo = |node: &mut Node, created: &[(PortId, EndpointConfig)]| {
            for (s, _) in created {
                node.io.remove_pod(*s);
            }
            for s in std::mem::take(&mut node.staged).into_values() {
                node.io.remove_pod(s);
            }
        };
        let no_port = || format!("no port left: a node has at most {} pods", MAX_PORTS - FIRST_POD_PORT as usize);
        for e in &arriving {
            let added = match self.staged.get(&e.name).copied().or_else(|| self.free_slot(&created)) {
                Some(slot) => self.io.add_pod(slot, e, new.node.pod_gateway).map(|()| slot),
                None => Err(no_port()),
            };
            match added {
                Ok(slot) => {
                    self.staged.remove(&e.name);
                    created.push((slot, e.clone()));
                }
                Err(msg) => {
                    if let Some(down) = down.as_deref_mut() {
                        // Its old port is gone: nothing to go back to. The others go on.
                        if let Some(slot) = self.staged.remove(&e.name) {
                            self.io.remove_pod(slot);
                        }
                        down.push((e.name.clone(), msg));
                        continue;
                    }
                    undo(self, &created);
                    return Err(NodeError::Endpoint { name: e.name.clone(), msg });
                }
            }
        }
        for e in &deferred {
            let staged = match self.free_slot(&created) {
                Some(slot) => self.io.stage_pod(slot, e).map(|()| slot),
                None => Err(no_port()),
            };
            match staged {
                Ok(slot) => {
                    self.staged.insert(e.name.clone(), slot);
                }
                Err(msg) => {
                    undo(self, &created);
                    return Err(NodeError::Endpoint { name: e.name.clone(), msg });
                }
            }
        }

        // From here `new` is the running config: an error no longer leaves the previous one
        // running. Nothing stays staged that the error would leave unfinished.
        let switched = self.switch_to(new, &created, &kept, &leaving, &mut report);
        if let Err(e) = switched {
            for s in std::mem::take(&mut self.staged).into_values() {
                self.io.remove_pod(s);
            }
            return Err(match e {
                e @ NodeError::Unfinished(_) => e,
                e => NodeError::Unfinished(e.to_string()),
            });
        }
        report.snapshots_published = self.published - published_before;
        Ok((report, !deferred.is_empty()))
    }

    /// Steps 2 to 4 of [`Node::apply`] (see the module docs): the switch to `new`, whose new
    /// ports (`created`) exist.
    fn switch_to(
        &mut self,
        new: Config,
        created: &[(PortId, EndpointConfig)],
        kept: &BTreeMap<String, PortId>,
        leaving: &[PortId],
        report: &mut ChangeReport,
    ) -> Result<(), NodeError> {
        // 2. Old and new together.
        let old = std::mem::replace(&mut self.cfg, new);
        if old != self.cfg {
            self.generation += 1;
        }
        self.extra_peers = old.peers.iter().map(|p| ip(p.ip)).collect();
        self.extra_policies = old.policies.clone();
        for (slot, e) in created {
            self.pods.insert(*slot, Pod { cfg: e.clone(), leaving: false });
            report.endpoints_added.push(e.name.clone());
        }
        for (name, slot) in kept {
            let e = self.cfg.endpoints.iter().find(|e| &e.name == name).expect("kept").clone();
            self.pods.get_mut(slot).expect("kept").cfg = e;
        }
        for slot in leaving {
            let p = self.pods.get_mut(slot).expect("leaving");
            p.leaving = true;
            report.endpoints_removed.push(p.cfg.name.clone());
        }
        // Static neighbours before routes that may need them.
        for n in &self.cfg.neighbours {
            if let Err(e) = self.shared.neigh.add_static(ip(n.ip), n.mac.0) {
                tracing::warn!(ip = %n.ip, "static neighbour not added: {e}");
            }
        }
        self.publish()?;
        self.grace();

        // 3. Routes, prefix by prefix.
        let pods = &self.pods;
        let slot_of = |name: &str| pods.iter().find(|(_, p)| !p.leaving && p.cfg.name == name).map(|(s, _)| *s);
        let all = config_routes(&self.cfg, slot_of);
        for src in [RouteSource::Node, RouteSource::Config] {
            let want: BTreeMap<Ipv4Prefix, NhKey> =
                all.iter().filter(|(_, (s, _))| *s == src).map(|(p, (_, k))| (*p, k.clone())).collect();
            report.routes_changed += self.replace_source(src, &want)?;
        }

        if self.cfg.host.is_some() {
            let mut blocks = self.cfg.pod_blocks();
            blocks.extend(self.cfg.peers.iter().flat_map(|p| p.pod_blocks.iter().copied()));
            self.io.host_routes(&blocks, self.cfg.node.pod_gateway);
        }

        // 4. The new state alone.
        self.grace();
        for slot in leaving {
            self.pods.remove(slot);
        }
        self.extra_peers.clear();
        self.extra_policies.clear();
        for n in old.neighbours.iter().filter(|n| !self.cfg.neighbours.iter().any(|m| m.ip == n.ip)) {
            self.shared.neigh.remove(ip(n.ip));
        }
        self.publish()?;
        if !leaving.is_empty() {
            self.grace();
            self.io.remove_pods(leaving);
        }
        Ok(())
    }

    /// Which pods of `new` keep their port (by name, with the slot), and which slots go. A pod
    /// whose port-level settings changed (anything but its policies), or whose port is gone
    /// ([`PortIo::port_gone`]), is replaced.
    fn pods_kept_and_leaving(&self, new: &Config) -> (BTreeMap<String, PortId>, Vec<PortId>) {
        let same_port = |a: &EndpointConfig, b: &EndpointConfig| {
            EndpointConfig { ingress: vec![], egress: vec![], ..a.clone() }
                == EndpointConfig { ingress: vec![], egress: vec![], ..b.clone() }
        };
        let mut leaving = Vec::new();
        let mut kept = BTreeMap::new();
        // A pod still marked leaving (an apply failed after the switch) goes now.
        for (slot, pod) in &self.pods {
            match new.endpoints.iter().find(|e| e.name == pod.cfg.name) {
                Some(e) if !pod.leaving && same_port(e, &pod.cfg) && !self.io.port_gone(*slot) => {
                    kept.insert(e.name.clone(), *slot);
                }
                _ => leaving.push(*slot),
            }
        }
        (kept, leaving)
    }

    /// What [`Node::apply`] of `new` would change, without changing anything (`apply
    /// --dry-run`). Refuses what `apply` would refuse.
    pub fn plan(&self, new: &Config) -> Result<Plan, NodeError> {
        new.validate().map_err(|(field, msg)| NodeError::Invalid { field, msg })?;
        self.check_static(new)?;
        let old = &self.cfg;
        let (kept, leaving) = self.pods_kept_and_leaving(new);
        let mut plan = Plan::default();
        for e in &new.endpoints {
            match (kept.contains_key(&e.name), old.endpoints.iter().find(|o| o.name == e.name)) {
                (true, Some(o)) if o.ingress != e.ingress || o.egress != e.egress => {
                    plan.endpoints_policy_changed.push(e.name.clone())
                }
                (true, _) => {}
                (false, Some(_)) => plan.endpoints_replaced.push(e.name.clone()),
                (false, None) => plan.endpoints_added.push(e.name.clone()),
            }
        }
        for slot in &leaving {
            let name = &self.pods[slot].cfg.name;
            if !new.endpoints.iter().any(|e| &e.name == name) {
                plan.endpoints_removed.push(name.clone());
            }
        }
        // What `apply` checks before it creates anything.
        for e in new.endpoints.iter().filter(|e| !kept.contains_key(&e.name)) {
            self.io.check_pod(e).map_err(|msg| NodeError::Endpoint { name: e.name.clone(), msg })?;
        }
        /// Names added, removed and changed between two lists of (name, value).
        fn named_diff(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> [Vec<String>; 3] {
            let added = b.keys().filter(|n| !a.contains_key(*n)).cloned().collect();
            let removed = a.keys().filter(|n| !b.contains_key(*n)).cloned().collect();
            let changed =
                b.iter().filter(|(n, v)| a.get(*n).is_some_and(|w| w != *v)).map(|(n, _)| n.clone()).collect();
            [added, removed, changed]
        }
        let peers = |c: &Config| c.peers.iter().map(|p| (p.name.clone(), format!("{p:?}"))).collect();
        [plan.peers_added, plan.peers_removed, plan.peers_changed] = named_diff(&peers(old), &peers(new));
        let pols = |c: &Config| c.policies.iter().map(|(n, r)| (n.clone(), format!("{r:?}"))).collect();
        [plan.policies_added, plan.policies_removed, plan.policies_changed] = named_diff(&pols(old), &pols(new));
        plan.global_rules_changed = old.global_rules != new.global_rules;
        // Routes: new pods get the slots apply would give them.
        let mut next_free = (FIRST_POD_PORT..MAX_PORTS as PortId).filter(|s| !self.pods.contains_key(s));
        let mut new_slots: BTreeMap<&str, PortId> = kept.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        for e in &new.endpoints {
            if !new_slots.contains_key(e.name.as_str()) {
                new_slots.insert(&e.name, next_free.next().unwrap_or(PortId::MAX));
            }
        }
        let want = config_routes(new, |n| new_slots.get(n).copied());
        let pod_of = |k: &NhKey, slots: &dyn Fn(PortId) -> Option<String>| match k {
            NhKey::Local(s) => format!("pod {}", slots(*s).unwrap_or_else(|| "?".into())),
            k => k.to_string(),
        };
        let old_pod = |s: PortId| self.pods.get(&s).map(|p| p.cfg.name.clone());
        let new_pod = |s: PortId| new_slots.iter().find(|(_, x)| **x == s).map(|(n, _)| n.to_string());
        for src in [RouteSource::Node, RouteSource::Config] {
            let have = self.source_routes(src);
            for (p, (_, k)) in want.iter().filter(|(_, (s2, _))| *s2 == src) {
                match have.get(p) {
                    None => plan.routes_added.push(format!("{p} {}", pod_of(k, &new_pod))),
                    Some(h) if pod_of(h, &old_pod) != pod_of(k, &new_pod) => {
                        plan.routes_changed.push(format!("{p} {} -> {}", pod_of(h, &old_pod), pod_of(k, &new_pod)))
                    }
                    _ => {}
                }
            }
            for (p, h) in &have {
                if want.get(p).is_none_or(|(s2, _)| *s2 != src) {
                    plan.routes_removed.push(format!("{p} {}", pod_of(h, &old_pod)));
                }
            }
        }
        let ips = |c: &Config| c.neighbours.iter().map(|n| format!("{} {}", n.ip, n.mac)).collect::<BTreeSet<_>>();
        let (a, b) = (ips(old), ips(new));
        plan.neighbours_added = b.difference(&a).cloned().collect();
        plan.neighbours_removed = a.difference(&b).cloned().collect();
        Ok(plan)
    }

    fn free_slot(&self, also_taken: &[(PortId, EndpointConfig)]) -> Option<PortId> {
        (FIRST_POD_PORT..MAX_PORTS as PortId).find(|s| {
            !self.pods.contains_key(s)
                && !also_taken.iter().any(|(t, _)| t == s)
                && !self.staged.values().any(|t| t == s)
        })
    }

    fn check_static(&self, new: &Config) -> Result<(), NodeError> {
        let c = &self.cfg;
        let differs = [
            ("node", c.node != new.node),
            ("uplink", c.uplink != new.uplink),
            ("host", c.host != new.host),
            ("workers", c.workers != new.workers),
            ("control", c.control != new.control),
            ("metrics", c.metrics != new.metrics),
            ("kernel_routes", c.kernel_routes != new.kernel_routes),
            ("conntrack", c.conntrack != new.conntrack),
            ("neigh", c.neigh != new.neigh),
        ];
        let changed: Vec<&str> = differs.iter().filter(|(_, d)| *d).map(|(n, _)| *n).collect();
        if changed.is_empty() {
            Ok(())
        } else {
            Err(NodeError::RestartNeeded(changed.join(", ")))
        }
    }

    /// Applies `f` to a copy of the config and the result to the node (the CLI's edits).
    pub fn edit(&mut self, f: impl FnOnce(&mut Config) -> Result<(), NodeError>) -> Result<ChangeReport, NodeError> {
        let mut cfg = self.cfg.clone();
        f(&mut cfg)?;
        self.apply(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::config::Config;
    use crate::control::fixtures;
    use std::path::Path;
    use vrouter_core::neigh::{NeighConfig, NeighTable};

    fn cfg(extra: &str) -> Config {
        let text = format!("{}{}{extra}", fixtures::node_toml("n1"), fixtures::peer_toml("n2", 20, 2));
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    fn pod_a() -> String {
        fixtures::endpoint_toml("a", 2)
    }
    fn pod_b() -> String {
        fixtures::endpoint_toml("b", 3)
    }

    #[derive(Clone, Default)]
    struct Recorder(Arc<std::sync::Mutex<Vec<String>>>);
    impl PortIo for Recorder {
        fn check_pod(&self, e: &EndpointConfig) -> Result<(), String> {
            match e.netns.as_deref() {
                Some("missing") => Err("network namespace 'missing' does not exist".into()),
                _ => Ok(()),
            }
        }
        fn stage_pod(&mut self, slot: PortId, e: &EndpointConfig) -> Result<(), String> {
            self.check_pod(e)?;
            self.0.lock().unwrap().push(format!("stage {} {slot}", e.name));
            Ok(())
        }
        fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, _: Ipv4Addr) -> Result<(), String> {
            if e.name == "fails" {
                return Err("no such netns".into());
            }
            self.check_pod(e)?;
            self.0.lock().unwrap().push(format!("add {} {slot}", e.name));
            Ok(())
        }
        fn remove_pod(&mut self, slot: PortId) {
            self.0.lock().unwrap().push(format!("remove {slot}"));
        }
        fn host_routes(&mut self, blocks: &[Ipv4Prefix], via: Ipv4Addr) {
            let b: Vec<String> = blocks.iter().map(|p| p.to_string()).collect();
            self.0.lock().unwrap().push(format!("host routes {} via {via}", b.join(" ")));
        }
    }

    fn node(c: Config) -> (Node, Recorder) {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let (shared, fib) =
            Shared::new(Node::empty_snapshot(&c, mac), NeighTable::new(NeighConfig::default()).unwrap());
        let rec = Recorder::default();
        (Node::new(c, mac, shared, fib, Box::new(rec.clone())).unwrap(), rec)
    }

    fn lookup(n: &Node, a: &str) -> NextHop {
        let dst = u32::from(a.parse::<Ipv4Addr>().unwrap());
        let id = n.shared.fib.pin().lookup(dst);
        n.shared.snapshot.load().nexthop(id).unwrap().clone()
    }

    #[test]
    fn the_kernel_routes_pod_blocks_through_the_host_port_and_follows_peers() {
        let (_, rec) = node(cfg(""));
        assert!(!rec.0.lock().unwrap().iter().any(|l| l.starts_with("host routes")), "no [host]: nothing");
        let host = "[host]\ntap = \"vrhost\"\n";
        let (mut n, rec) = node(cfg(host));
        let last = |r: &Recorder| r.0.lock().unwrap().iter().rev().find(|l| l.starts_with("host routes")).cloned();
        assert_eq!(last(&rec).as_deref(), Some("host routes 10.244.1.0/26 10.244.2.0/26 via 169.254.1.1"));
        n.apply(cfg(&format!("{}{host}", fixtures::peer_toml("n3", 30, 3)))).unwrap();
        assert_eq!(
            last(&rec).as_deref(),
            Some("host routes 10.244.1.0/26 10.244.2.0/26 10.244.3.0/26 via 169.254.1.1"),
            "a new peer's block"
        );
    }

    #[test]
    fn pod_blocks_change_live_with_their_blackholes_host_routes_and_snapshot() {
        let host = "[host]\ntap = \"vrhost\"\n";
        let (mut n, rec) = node(cfg(host));
        let last = |r: &Recorder| r.0.lock().unwrap().iter().rev().find(|l| l.starts_with("host routes")).cloned();
        assert!(matches!(lookup(&n, "10.244.9.5"), NextHop::Unreachable), "not ours yet: no route");
        let g = n.generation();
        // The agent claims a block and borrows an address: both applied live.
        let mut c = cfg(host);
        c.pod_blocks = vec!["10.244.9.0/26".parse().unwrap(), "10.244.2.7/32".parse().unwrap()];
        let mut pod = fixtures::endpoint("default/x", 7);
        pod.addrs = vec!["10.244.2.7".parse().unwrap()];
        c.endpoints.push(pod);
        n.apply(c.clone()).unwrap();
        assert_eq!(n.generation(), g + 1);
        assert!(matches!(lookup(&n, "10.244.9.5"), NextHop::Blackhole), "the new block is blackholed");
        assert!(matches!(lookup(&n, "10.244.2.7"), NextHop::Local { .. }), "the borrowed address is the pod's");
        let n2 = lookup(&n, "10.244.2.8");
        assert!(matches!(n2, NextHop::Tunnel { .. } | NextHop::Gateway { .. }), "n2's block: {n2:?}");
        let snap = n.shared.snapshot.load();
        assert!(snap.in_pod_block(u32::from(Ipv4Addr::new(10, 244, 9, 5))));
        assert!(snap.in_pod_block(u32::from(Ipv4Addr::new(10, 244, 2, 7))));
        assert!(!snap.in_pod_block(u32::from(Ipv4Addr::new(10, 244, 2, 8))));
        assert_eq!(
            last(&rec).as_deref(),
            Some("host routes 10.244.1.0/26 10.244.9.0/26 10.244.2.7/32 10.244.2.0/26 via 169.254.1.1")
        );
        // The same config again is no new generation; a block released goes everywhere.
        n.apply(c.clone()).unwrap();
        assert_eq!(n.generation(), g + 1);
        c.pod_blocks.remove(0);
        n.apply(c).unwrap();
        assert!(matches!(lookup(&n, "10.244.9.5"), NextHop::Unreachable));
        assert!(!n.shared.snapshot.load().in_pod_block(u32::from(Ipv4Addr::new(10, 244, 9, 5))));
        assert_eq!(n.generation(), g + 2);
    }

    #[test]
    fn pods_come_and_go_with_stable_slots_and_routes() {
        let (mut n, rec) = node(cfg(&format!("{}{}", pod_a(), pod_b())));
        assert_eq!(n.pod_ports(), [("a".to_string(), 2), ("b".to_string(), 3)]);
        assert!(matches!(lookup(&n, "10.244.1.3"), NextHop::Local { .. }));
        // Remove a: b keeps its slot and its route resolves to b's endpoint in the new snapshot.
        let r = n.apply(cfg(&pod_b())).unwrap();
        assert_eq!(r.endpoints_removed, ["a"]);
        assert_eq!(n.pod_ports(), [("b".to_string(), 3)]);
        let snap = n.shared.snapshot.load();
        match lookup(&n, "10.244.1.3") {
            NextHop::Local { endpoint } => assert_eq!(snap.endpoints[endpoint as usize].port, 3),
            other => panic!("{other:?}"),
        }
        assert_eq!(lookup(&n, "10.244.1.2"), NextHop::Blackhole, "a's address falls back to the block");
        assert!(snap.port(2).is_none());
        // Add a again: it reuses the free slot.
        n.apply(cfg(&format!("{}{}", pod_a(), pod_b()))).unwrap();
        assert_eq!(n.pod_ports(), [("a".to_string(), 2), ("b".to_string(), 3)]);
        assert_eq!(*rec.0.lock().unwrap(), ["add a 2", "add b 3", "remove 2", "add a 2"]);
    }

    #[test]
    fn a_port_gone_under_us_is_recreated_by_the_next_apply() {
        /// Records like `Recorder`, and reports the slots in its set as gone.
        #[derive(Clone, Default)]
        struct GoneIo(Arc<std::sync::Mutex<(Vec<String>, BTreeSet<PortId>)>>);
        impl PortIo for GoneIo {
            fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, _: Ipv4Addr) -> Result<(), String> {
                self.0.lock().unwrap().0.push(format!("add {} {slot}", e.name));
                Ok(())
            }
            fn remove_pod(&mut self, slot: PortId) {
                let mut g = self.0.lock().unwrap();
                g.0.push(format!("remove {slot}"));
                g.1.remove(&slot);
            }
            fn port_gone(&self, slot: PortId) -> bool {
                self.0.lock().unwrap().1.contains(&slot)
            }
        }
        let c = cfg(&pod_a());
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let (shared, fib) =
            Shared::new(Node::empty_snapshot(&c, mac), NeighTable::new(NeighConfig::default()).unwrap());
        let io = GoneIo::default();
        let mut n = Node::new(c.clone(), mac, shared, fib, Box::new(io.clone())).unwrap();
        n.apply(c.clone()).unwrap();
        assert_eq!(io.0.lock().unwrap().0, ["add a 2"], "the same config changes nothing");
        io.0.lock().unwrap().1.insert(2);
        assert_eq!(n.plan(&c).unwrap().endpoints_replaced, ["a"]);
        let r = n.apply(c).unwrap();
        assert_eq!(r.endpoints_added, ["a"]);
        // Replaced like any pod whose names it still holds: staged in a free slot, finished
        // once the gone one is removed.
        assert_eq!(io.0.lock().unwrap().0, ["add a 2", "remove 2", "add a 3"]);
        assert_eq!(n.pod_ports(), [("a".to_string(), 3)]);
    }

    #[test]
    fn a_plan_says_what_apply_would_do_and_changes_nothing() {
        let (n, rec) = node(cfg(&pod_a()));
        let gen = n.shared.snapshot.load().generation;
        let mut new = cfg(&format!("{}{}", pod_a(), pod_b()));
        new.peers.clear();
        new.endpoints[0].ingress = vec!["web".into()];
        new.policies.insert("web".into(), vec![]);
        let plan = n.plan(&new).unwrap();
        assert_eq!(plan.endpoints_added, ["b"]);
        assert_eq!(plan.endpoints_policy_changed, ["a"]);
        assert_eq!(
            (plan.peers_removed.as_slice(), plan.policies_added.as_slice()),
            (&["n2".to_string()][..], &["web".to_string()][..])
        );
        assert_eq!(plan.routes_added, ["10.244.1.3/32 pod b"]);
        assert_eq!(plan.routes_removed, ["10.244.2.0/26 via 192.168.1.20"]);
        assert!(plan.endpoints_removed.is_empty() && plan.routes_changed.is_empty());
        assert_eq!(n.shared.snapshot.load().generation, gen, "nothing published");
        assert_eq!(*rec.0.lock().unwrap(), ["add a 2"], "no port created");
        let mut bad = new.clone();
        bad.node.ip = "192.168.1.99".parse().unwrap();
        assert!(n.plan(&bad).unwrap_err().to_string().contains("restart"));
    }

    #[test]
    fn a_failed_pod_creation_changes_nothing() {
        let (mut n, rec) = node(cfg(&pod_a()));
        let gen = n.shared.snapshot.load().generation;
        let bad = fixtures::endpoint_toml("fails", 3);
        let e = n.apply(cfg(&format!("{}{bad}", pod_a()))).unwrap_err().to_string();
        assert!(e.contains("endpoint fails: no such netns"), "{e}");
        assert_eq!(n.shared.snapshot.load().generation, gen, "nothing published");
        assert_eq!(n.config().endpoints.len(), 1);
        assert_eq!(*rec.0.lock().unwrap(), ["add a 2"]);
    }

    #[test]
    fn a_replaced_pod_whose_namespace_is_missing_is_refused_and_the_old_one_stays() {
        let (mut n, rec) = node(cfg(&pod_a()));
        let gen = n.shared.snapshot.load().generation;
        let mut new = cfg(&pod_a());
        new.endpoints[0].netns = Some("missing".into());
        let e = n.apply(new).unwrap_err().to_string();
        assert!(e.contains("endpoint a: network namespace 'missing' does not exist"), "{e}");
        assert_eq!(*rec.0.lock().unwrap(), ["add a 2"], "the running pod's port was not removed");
        assert_eq!(n.shared.snapshot.load().generation, gen, "nothing published");
        assert_eq!(n.pod_ports(), [("a".to_string(), 2)]);
        assert!(matches!(lookup(&n, "10.244.1.2"), NextHop::Local { .. }));
        assert_eq!(n.config().endpoints[0].netns, None, "still running the previous config");
        let mut new = cfg(&pod_a());
        new.endpoints[0].netns = Some("missing".into());
        let e = n.plan(&new).unwrap_err().to_string();
        assert!(e.contains("network namespace 'missing' does not exist"), "--dry-run refuses it too: {e}");
    }

    #[test]
    fn a_replaced_pod_is_created_before_the_old_one_is_removed() {
        let (mut n, rec) = node(cfg(&pod_a()));
        let mut new = cfg(&pod_a());
        new.endpoints[0].mtu = 1400; // a port-level change: replaced, same TAP name
        let r = n.apply(new).unwrap();
        assert_eq!(
            (r.endpoints_removed.as_slice(), r.endpoints_added.as_slice()),
            (&["a".to_string()][..], &["a".to_string()][..])
        );
        assert_eq!(*rec.0.lock().unwrap(), ["add a 2", "stage a 3", "remove 2", "add a 3"]);
        assert_eq!(n.pod_ports(), [("a".to_string(), 3)]);
        assert!(n.staged.is_empty());
        assert!(matches!(lookup(&n, "10.244.1.2"), NextHop::Local { .. }));
    }

    #[test]
    fn a_replaced_pod_that_cannot_be_finished_is_reported_down_and_recreated_by_the_next_apply() {
        /// What happened, the slots staged now, and whether finishing a staged port fails.
        type Log = (Vec<String>, BTreeSet<PortId>, bool);
        /// Records like `Recorder`; finishing a staged port fails while the flag is set.
        #[derive(Clone, Default)]
        struct FinishIo(Arc<std::sync::Mutex<Log>>);
        impl PortIo for FinishIo {
            fn stage_pod(&mut self, slot: PortId, e: &EndpointConfig) -> Result<(), String> {
                let mut g = self.0.lock().unwrap();
                g.0.push(format!("stage {} {slot}", e.name));
                g.1.insert(slot);
                Ok(())
            }
            fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, _: Ipv4Addr) -> Result<(), String> {
                let mut g = self.0.lock().unwrap();
                if g.2 && g.1.contains(&slot) {
                    return Err("renaming vrstage3 to tapa: File exists".into());
                }
                g.1.remove(&slot);
                g.0.push(format!("add {} {slot}", e.name));
                Ok(())
            }
            fn remove_pod(&mut self, slot: PortId) {
                let mut g = self.0.lock().unwrap();
                g.1.remove(&slot);
                g.0.push(format!("remove {slot}"));
            }
        }
        let c = cfg(&format!("{}{}", pod_a(), pod_b()));
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let (shared, fib) =
            Shared::new(Node::empty_snapshot(&c, mac), NeighTable::new(NeighConfig::default()).unwrap());
        let io = FinishIo::default();
        let mut n = Node::new(c.clone(), mac, shared, fib, Box::new(io.clone())).unwrap();
        let mut new = c.clone();
        new.endpoints[0].mtu = 1400; // a replaced, same names: staged, finished after the old goes
        new.endpoints[1].mtu = 1400; // b too: its finishing is not undone by a's failure
        io.0.lock().unwrap().2 = true;
        let e = n.apply(new.clone()).unwrap_err();
        assert!(matches!(&e, NodeError::PodsDown { pods, .. } if pods == &["a", "b"]), "{e:?}");
        let msg = e.to_string();
        assert!(msg.starts_with("applied, but pods a, b") && msg.contains("down until the next apply"), "{msg}");
        assert!(msg.contains("File exists"), "says why: {msg}");
        assert_eq!(n.config(), &new, "the new config is the running one, as the error says");
        assert!(n.staged.is_empty(), "nothing left staged");
        assert!(io.0.lock().unwrap().1.is_empty(), "the staged ports were removed: {:?}", io.0.lock().unwrap().0);
        assert!(n.pod_ports().is_empty());
        assert_eq!(lookup(&n, "10.244.1.2"), NextHop::Blackhole);
        // The next apply (of the same config) creates them.
        io.0.lock().unwrap().2 = false;
        let r = n.apply(new).unwrap();
        assert_eq!(r.endpoints_added, ["a", "b"]);
        assert_eq!(n.pod_ports().len(), 2);
        assert!(matches!(lookup(&n, "10.244.1.2"), NextHop::Local { .. }));
    }

    #[test]
    fn a_replaced_pod_finished_while_another_fails_stays_up() {
        #[derive(Clone, Default)]
        struct FailA(Arc<std::sync::Mutex<Vec<String>>>);
        impl PortIo for FailA {
            fn stage_pod(&mut self, slot: PortId, e: &EndpointConfig) -> Result<(), String> {
                self.0.lock().unwrap().push(format!("stage {} {slot}", e.name));
                Ok(())
            }
            fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, _: Ipv4Addr) -> Result<(), String> {
                if e.name == "a" && e.mtu == 1400 {
                    return Err("no".into());
                }
                self.0.lock().unwrap().push(format!("add {} {slot}", e.name));
                Ok(())
            }
            fn remove_pod(&mut self, slot: PortId) {
                self.0.lock().unwrap().push(format!("remove {slot}"));
            }
        }
        let c = cfg(&format!("{}{}", pod_a(), pod_b()));
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let (shared, fib) =
            Shared::new(Node::empty_snapshot(&c, mac), NeighTable::new(NeighConfig::default()).unwrap());
        let io = FailA::default();
        let mut n = Node::new(c.clone(), mac, shared, fib, Box::new(io.clone())).unwrap();
        let mut new = c.clone();
        new.endpoints[0].mtu = 1400;
        new.endpoints[1].mtu = 1400;
        let e = n.apply(new).unwrap_err();
        assert!(matches!(&e, NodeError::PodsDown { pods, .. } if pods == &["a"]), "{e:?}");
        assert_eq!(
            *io.0.lock().unwrap(),
            ["add a 2", "add b 3", "stage a 4", "stage b 5", "remove 2", "remove 3", "remove 4", "add b 5"]
        );
        assert_eq!(n.pod_ports(), [("b".to_string(), 5)]);
        assert!(matches!(lookup(&n, "10.244.1.3"), NextHop::Local { .. }), "b is up");
    }

    #[test]
    fn static_settings_need_a_restart_and_bad_configs_are_refused_whole() {
        let (mut n, _) = node(cfg(&pod_a()));
        let mut c = cfg(&pod_a());
        c.node.ip = "192.168.1.11".parse().unwrap();
        let e = n.apply(c).unwrap_err().to_string();
        assert!(e.contains("node changed") && e.contains("restart"), "{e}");
        let mut c = cfg(&pod_a());
        c.endpoints[0].ingress = vec!["nope".into()];
        let e = n.apply(c).unwrap_err().to_string();
        assert!(e.contains("unknown policy 'nope'"), "{e}");
        assert!(matches!(lookup(&n, "10.244.1.2"), NextHop::Local { .. }), "still running the old config");
    }

    #[test]
    fn sources_shadow_by_priority_and_ids_are_reused_only_when_free() {
        let (mut n, _) = node(cfg(""));
        let p: Ipv4Prefix = "203.0.113.0/24".parse().unwrap();
        let gw = |s: &str| NhKey::Gateway(s.parse().unwrap());
        n.kernel_route(p, Ok((gw("192.168.1.30"), false))).unwrap();
        assert_eq!(lookup(&n, "203.0.113.9"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_011e });
        n.cli_route(p, Some(gw("192.168.1.31"))).unwrap();
        assert_eq!(lookup(&n, "203.0.113.9"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_011f }, "CLI wins");
        let v = n.routes(None, Some(p));
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].source, v[0].shadowed.len()), (RouteSource::Cli, 1));
        n.cli_route(p, None).unwrap();
        assert_eq!(lookup(&n, "203.0.113.9"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_011e }, "kernel again");
        // The CLI next hop's id was freed and is handed out again.
        let freed = n.nh.free.clone();
        assert_eq!(freed.len(), 1);
        n.kernel_route("198.51.100.0/24".parse().unwrap(), Ok((gw("192.168.1.40"), false))).unwrap();
        assert_eq!(n.routes(None, Some("198.51.100.0/24".parse().unwrap()))[0].nh_id, freed[0]);
        // Off-subnet next hops are refused and listed.
        n.kernel_route("192.0.2.0/24".parse().unwrap(), Ok((gw("10.0.0.1"), false))).unwrap();
        assert!(n.kernel_rejected()[&"192.0.2.0/24".parse().unwrap()].contains("not on the node subnet"));
        assert_eq!(lookup(&n, "192.0.2.1"), NextHop::Unreachable);
        assert!(n.cli_route("192.0.2.0/24".parse().unwrap(), None).is_err(), "nothing to delete");
    }

    #[test]
    fn bird_routes_through_a_node_follow_its_pool_mode_and_the_peer_set() {
        // BIRD writes what it learns as `via NODE-IP dev HOST-TAP onlink`, whatever subnet.
        let extra = "[host]\ntap = \"vrhost\"\n[kernel_routes]\ntable = 100\n";
        let (mut n, _) = node(cfg(extra));
        let bird =
            |via: &str| KernelNextHop::Gateway { via: via.parse().unwrap(), dev: Some("vrhost".into()), onlink: true };
        let (b2, b5) = ("10.244.12.0/26".parse().unwrap(), "10.244.5.0/26".parse().unwrap());
        // n2 is a peer on our subnet (CrossSubnet): straight to it.
        n.kernel_set(b2, &bird("192.168.1.20")).unwrap();
        assert_eq!(lookup(&n, "10.244.12.9"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_0114 });
        // A node on another subnet that this node does not know yet: announced before the
        // agent told us about it, sent to it as a plain on-link gateway for now.
        n.kernel_set(b5, &bird("192.168.5.50")).unwrap();
        assert_eq!(lookup(&n, "10.244.5.9"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_0532 });
        // It becomes a peer: IPIP to it through the underlay gateway, without a new kernel event.
        let n5 = "[[peers]]\nname = \"n5\"\nip = \"192.168.5.50\"\n";
        n.apply(cfg(&format!("{extra}{n5}"))).unwrap();
        assert_eq!(lookup(&n, "10.244.5.9"), NextHop::Tunnel { port: UPLINK, remote: 0xc0a8_0532, via: 0xc0a8_0101 });
        // n2's pool goes to IPIP Always: its routes are encapsulated, to n2 itself.
        let mut c = cfg(&format!("{extra}{n5}"));
        c.peers.iter_mut().find(|p| p.name == "n2").unwrap().ipip_mode =
            Some(vrouter_core::dataplane::state::IpipMode::Always);
        n.apply(c).unwrap();
        assert_eq!(lookup(&n, "10.244.12.9"), NextHop::Tunnel { port: UPLINK, remote: 0xc0a8_0114, via: 0xc0a8_0114 });
        // Withdrawn: gone, and no longer resolved again on the next change.
        n.kernel_route_gone(b5).unwrap();
        assert_eq!(lookup(&n, "10.244.5.9"), NextHop::Unreachable);
        n.apply(cfg(extra)).unwrap();
        assert_eq!(lookup(&n, "10.244.5.9"), NextHop::Unreachable);
        assert_eq!(lookup(&n, "10.244.12.9"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_0114 }, "CrossSubnet again");
    }

    #[test]
    fn a_rib_entry_is_eight_bytes() {
        // With its 8-byte prefix, 16 bytes of map entry per route (it was 24 with Options).
        assert_eq!(std::mem::size_of::<RibEntry>(), 8);
        assert_eq!(std::mem::size_of::<(Ipv4Prefix, RibEntry)>(), 16);
        let mut e = RibEntry::default();
        assert!(e.is_empty() && e.best().is_none());
        assert_eq!(e.set(RouteSource::Kernel, Some(7)), None);
        assert_eq!(e.set(RouteSource::Cli, Some(3)), None);
        assert_eq!(e.best(), Some((RouteSource::Cli, 3)));
        assert_eq!(e.set(RouteSource::Cli, None), Some(3));
        assert_eq!(e.best(), Some((RouteSource::Kernel, 7)));
    }

    #[test]
    fn unreachable_and_prohibit_routes_win_over_a_covering_route_from_every_source() {
        let c = format!(
            "{}[[routes]]\nprefix = \"0.0.0.0/0\"\nvia = \"192.168.1.1\"\n\
             [[routes]]\nprefix = \"10.9.0.0/24\"\nunreachable = true\n\
             [[routes]]\nprefix = \"10.9.1.0/24\"\nprohibit = true\n[kernel_routes]\n",
            ""
        );
        let (mut n, _) = node(cfg(&c));
        assert_eq!(lookup(&n, "10.9.0.7"), NextHop::NetUnreachable, "config unreachable under the default");
        assert_eq!(lookup(&n, "10.9.1.7"), NextHop::Prohibit);
        assert_eq!(lookup(&n, "10.9.2.7"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_0101 });
        n.cli_route("10.8.0.0/16".parse().unwrap(), Some(NhKey::Unreachable)).unwrap();
        assert_eq!(lookup(&n, "10.8.3.3"), NextHop::NetUnreachable, "CLI");
        assert_eq!(n.kernel_nexthop(&KernelNextHop::Unreachable), Ok((NhKey::Unreachable, false)));
        let k = n.kernel_nexthop(&KernelNextHop::Prohibit);
        assert_eq!(k, Ok((NhKey::Prohibit, false)));
        n.kernel_route("10.7.0.0/16".parse().unwrap(), k).unwrap();
        assert_eq!(lookup(&n, "10.7.0.1"), NextHop::Prohibit, "kernel");
        assert_eq!(n.routes(None, Some("10.9.0.0/24".parse().unwrap()))[0].nexthop, "unreachable");
        assert_ne!(n.routes(None, Some("10.9.0.0/24".parse().unwrap()))[0].nh_id, 0, "not 'no route'");
    }

    #[test]
    fn ecmp_members_are_referenced_and_released() {
        let (mut n, _) = node(cfg(""));
        let gw = |s: &str| NhKey::Gateway(s.parse().unwrap());
        let e = NhKey::Ecmp(vec![gw("192.168.1.30"), gw("192.168.1.31")]);
        let p: Ipv4Prefix = "203.0.113.0/24".parse().unwrap();
        n.kernel_route(p, Ok((e, false))).unwrap();
        match lookup(&n, "203.0.113.1") {
            NextHop::Ecmp(m) => assert_eq!(m.len(), 2),
            other => panic!("{other:?}"),
        }
        let live = n.nh.ids.len();
        n.kernel_route_gone(p).unwrap();
        assert_eq!(n.nh.ids.len(), live - 3, "the group and both members are released");
    }

    #[test]
    fn peers_of_both_configs_are_accepted_while_a_change_is_on_its_way() {
        let (mut n, _) = node(cfg(""));
        let mut c = cfg("");
        c.peers[0].ip = "192.168.1.21".parse().unwrap();
        n.apply(c).unwrap();
        let snap = n.shared.snapshot.load();
        assert!(snap.is_peer(0xc0a8_0115) && !snap.is_peer(0xc0a8_0114));
        assert_eq!(lookup(&n, "10.244.2.1"), NextHop::Gateway { port: UPLINK, via: 0xc0a8_0115 });
    }
}
