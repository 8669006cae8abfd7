//! One node's BGP intent ([`vrouter_bgp::BgpIntent`], what its BIRD is told) from the cluster's
//! Nodes, IP pools, IPAM blocks, BGPConfigurations and BGPPeers, as Calico's confd computes the
//! peerings. Pure: the agent gathers the inputs (and reads the passwords' secrets), tests call
//! it directly.
//!
//! The sessions of node `me`:
//! - the node-to-node mesh (BGPConfiguration `default`, `nodeToNodeMeshEnabled`, default on):
//!   every other node with an address, each with its own AS;
//! - each BGPPeer that applies to `me` (`node` is `me`, `nodeSelector` matches its labels, or
//!   neither): `peerSelector` gives every other node it matches; `peerIP` gives the node with
//!   that address if there is one, else an external peer (a top-of-rack router) with
//!   `asNumber`;
//! - the reverse of each BGPPeer whose peers include `me` (`peerSelector` matches it, or
//!   `peerIP`/`asNumber` are its address and AS), unless `reversePeering: Manual`: `me` peers
//!   with the nodes the BGPPeer applies to, so that node peerings are symmetric without a second
//!   BGPPeer (confd's reverse peerings: one `peerSelector: route-reflector == 'true'` BGPPeer
//!   gives every node both reflectors and each reflector every node).
//!
//! A session to a node takes a route-reflector role from the two nodes' cluster IDs (Calico's
//! rule, within one AS): `me` reflects to a node without its cluster ID
//! ([`PeerRole::ReflectorClient`]); a client sees a node with a cluster ID as its reflector
//! ([`PeerRole::Reflector`]); two reflectors of one cluster ID, two clients, or nodes of
//! different ASes peer plainly ([`PeerRole::Mesh`]). Mesh sessions keep the mesh role.
//!
//! One session per peer address: the first found wins, in the order BGPPeers applying to every
//! node (by name), BGPPeers applying to some nodes (by name), reverse peerings, the mesh (an
//! explicit peering wins over the mesh, as in confd, where a global peering wins over a
//! node-specific one to the same address). `me` never peers with itself.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use vrouter_bgp::{BfdTiming, BgpIntent, BgpPeer as Session, PeerRole};

use crate::desired::{pod_prefixes, Inputs, NodeInfo};
use crate::resource::{
    BgpConfigurationSpec, BgpPeer, GoDuration, LogSeverity, PeerNodes, PeerTarget, ReversePeering, SecretKeyRef,
    DEFAULT_AS_NUMBER, DEFAULT_RESTART_SECS, GLOBAL_CONFIG_NAME, NODE_CONFIG_PREFIX,
};

/// What the node's own configuration decides rather than the cluster's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BgpParams {
    /// The kernel table BIRD puts learned routes in (vrouter imports it).
    pub kernel_table: u32,
    /// The device of the node's own address (vrouter's host TAP).
    pub device: String,
    pub bfd: BfdTiming,
}

/// The annotation on a `Node` that drains BFD from its sessions before a graceful restart of
/// its BIRD (any value; removed once BIRD is back). See `docs/bgp.md`.
pub use vrouter_api::BGP_GRACEFUL_RESTART_ANNOTATION as GRACEFUL_RESTART_ANNOTATION;

/// Why a node's intent could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BgpIntentError {
    #[error("node '{node}' has no Node resource in the datastore (the node agent registers it at start)")]
    UnknownNode { node: String },
    #[error(
        "Node '{node}' has no spec.bgp.ipv4Address: BGP needs the node's address (its router ID, the source of its sessions and the next hop it announces)"
    )]
    NoAddress { node: String },
    /// `owner` names the resource and field that refers to the secret.
    #[error("{owner}: cannot read the password from {secret}: {why}")]
    Secret { owner: String, secret: SecretKeyRef, why: String },
}

/// Longest session name: BIRD symbols are at most 64 characters, and the renderer may add to it.
pub const NAME_MAX: usize = 48;

/// A session before naming and passwords.
struct Candidate<'a> {
    /// The unsanitised name: the peer node's, or the BGPPeer's for a router that is not a node
    /// (the renderer prefixes the role: `mesh_node2`, `rr_node1`, `peer_tor`).
    key: String,
    ip: Ipv4Addr,
    asn: u32,
    role: PeerRole,
    /// The secret and who refers to it (for errors).
    password: Option<(&'a SecretKeyRef, String)>,
    restart_secs: u32,
    bfd: bool,
}

/// The sessions found so far, one per address.
struct Candidates<'a> {
    taken: BTreeSet<Ipv4Addr>,
    list: Vec<Candidate<'a>>,
}

impl<'a> Candidates<'a> {
    /// Adds `c` unless a session to its address exists (or it is this node's own).
    fn push(&mut self, c: Candidate<'a>) {
        if self.taken.insert(c.ip) {
            self.list.push(c);
        }
    }
}

fn peer_password(p: &BgpPeer) -> Option<(&SecretKeyRef, String)> {
    p.spec.password.as_ref().map(|pw| (&pw.secret_key_ref, format!("BGPPeer '{}' spec.password", p.metadata.name)))
}

/// A session with another node, from BGPPeer `p`.
fn node_session<'a>(n: &NodeInfo, ip: Ipv4Addr, asn: u32, role: PeerRole, p: &'a BgpPeer) -> Candidate<'a> {
    Candidate {
        key: n.name.clone(),
        ip,
        asn,
        role,
        password: peer_password(p),
        restart_secs: restart_secs(p.spec.max_restart_time),
        bfd: true,
    }
}

fn restart_secs(d: Option<GoDuration>) -> u32 {
    // Parsing bounds it to MAX_RESTART_SECS.
    d.map_or(DEFAULT_RESTART_SECS, |d| u32::try_from(d.rounded_secs()).unwrap_or(u32::MAX))
}

/// The BGPConfiguration named `name`.
fn config<'a>(inputs: &'a Inputs, name: &str) -> Option<&'a BgpConfigurationSpec> {
    inputs.bgp_configs.iter().find(|c| c.metadata.name == name).map(|c| &c.spec)
}

/// Node `me`'s BGP intent. `secret` reads a password (`secretKeyRef`); it is asked once per
/// distinct secret, for the sessions that need one only, and a secret it cannot read is an
/// error naming it (no session is set up without its password).
pub fn node_intent(
    inputs: &Inputs,
    me: &str,
    params: &BgpParams,
    secret: &dyn Fn(&SecretKeyRef) -> Result<String, String>,
) -> Result<BgpIntent, BgpIntentError> {
    let mut nodes: Vec<&NodeInfo> = inputs.nodes.iter().collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let my = *nodes.iter().find(|n| n.name == me).ok_or_else(|| BgpIntentError::UnknownNode { node: me.into() })?;
    let my_ip = my.ip.ok_or_else(|| BgpIntentError::NoAddress { node: me.into() })?;
    let global = config(inputs, GLOBAL_CONFIG_NAME);
    let global_as = global.map_or(DEFAULT_AS_NUMBER, BgpConfigurationSpec::default_as_number);
    let as_of = |n: &NodeInfo| n.asn.unwrap_or(global_as);
    let my_as = as_of(my);
    let role_of = |peer: &NodeInfo, peer_as: u32| -> PeerRole {
        if peer_as != my_as {
            return PeerRole::Mesh;
        }
        match (my.rr_cluster_id, peer.rr_cluster_id) {
            (Some(a), Some(b)) if a == b => PeerRole::Mesh,
            (Some(_), _) => PeerRole::ReflectorClient,
            (None, Some(_)) => PeerRole::Reflector,
            (None, None) => PeerRole::Mesh,
        }
    };
    // The other nodes that can be peers (those with an address).
    let others: Vec<(&NodeInfo, Ipv4Addr)> =
        nodes.iter().filter(|n| n.name != me).filter_map(|n| n.ip.map(|ip| (*n, ip))).collect();

    let mut cands = Candidates { taken: BTreeSet::from([my_ip]), list: Vec::new() };
    let session_with = |n: &NodeInfo, ip: Ipv4Addr, asn: u32, p| node_session(n, ip, asn, role_of(n, asn), p);

    let mut peers: Vec<&BgpPeer> = inputs.bgp_peers.iter().collect();
    peers.sort_by(|a, b| {
        let scoped = |p: &BgpPeer| !matches!(p.spec.nodes, PeerNodes::All);
        (scoped(a), &a.metadata.name).cmp(&(scoped(b), &b.metadata.name))
    });
    for p in peers.iter().filter(|p| p.spec.applies_to(me, &my.labels)) {
        match &p.spec.peer {
            PeerTarget::Selector(sel) => {
                for (n, ip) in others.iter().filter(|(n, _)| sel.matches(&n.labels)) {
                    cands.push(session_with(n, *ip, as_of(n), p));
                }
            }
            PeerTarget::Ip { ip, as_number } => match others.iter().find(|(_, nip)| nip == ip) {
                Some((n, _)) => cands.push(session_with(n, *ip, *as_number, p)),
                None => cands.push(Candidate {
                    key: p.metadata.name.clone(),
                    ip: *ip,
                    asn: *as_number,
                    role: PeerRole::External,
                    password: peer_password(p),
                    restart_secs: restart_secs(p.spec.max_restart_time),
                    bfd: false,
                }),
            },
        }
    }
    for p in peers.iter().filter(|p| p.spec.reverse_peering == ReversePeering::Auto) {
        let peers_with_me = match &p.spec.peer {
            PeerTarget::Selector(sel) => sel.matches(&my.labels),
            PeerTarget::Ip { ip, as_number } => *ip == my_ip && *as_number == my_as,
        };
        if !peers_with_me {
            continue;
        }
        for (n, ip) in others.iter().filter(|(n, _)| p.spec.applies_to(&n.name, &n.labels)) {
            cands.push(session_with(n, *ip, as_of(n), p));
        }
    }
    if global.is_none_or(BgpConfigurationSpec::mesh_enabled) {
        let password = global
            .and_then(|g| g.node_mesh_password.as_ref())
            .map(|pw| (&pw.secret_key_ref, format!("BGPConfiguration '{GLOBAL_CONFIG_NAME}' spec.nodeMeshPassword")));
        let restart = restart_secs(global.and_then(|g| g.node_mesh_max_restart_time));
        for (n, ip) in &others {
            cands.push(Candidate {
                key: n.name.clone(),
                ip: *ip,
                asn: as_of(n),
                role: PeerRole::Mesh,
                password: password.clone(),
                restart_secs: restart,
                bfd: true,
            });
        }
    }
    let cands = cands.list;

    let names = session_names(&cands);
    let mut read: BTreeMap<&SecretKeyRef, String> = BTreeMap::new();
    let mut sessions = Vec::with_capacity(cands.len());
    for (c, name) in cands.iter().zip(names) {
        let password = match &c.password {
            None => None,
            Some((r, owner)) => Some(match read.get(r) {
                Some(p) => p.clone(),
                None => {
                    let p = secret(r).map_err(|why| BgpIntentError::Secret {
                        owner: owner.clone(),
                        secret: (*r).clone(),
                        why,
                    })?;
                    read.insert(r, p.clone());
                    p
                }
            }),
        };
        sessions.push(Session { name, ip: c.ip, asn: c.asn, role: c.role, password, bfd: c.bfd });
    }
    // BIRD 2.0.12 takes a BFD session going down as a failure even when the peer restarts
    // gracefully (it sends no AdminDown, and a received one counts as down): a node about to
    // restart BIRD has BFD drained from its sessions first, on both ends, so that its peers
    // keep its routes through the restart. A crash of any other node is still caught by BFD.
    let restarting: BTreeSet<Ipv4Addr> = nodes.iter().filter(|n| n.bgp_restart).filter_map(|n| n.ip).collect();
    for s in &mut sessions {
        if my.bgp_restart || restarting.contains(&s.ip) {
            s.bfd = false;
        }
    }
    sessions.sort_by(|a, b| a.name.cmp(&b.name));

    // The intent has one graceful restart time per node (BIRD's is per session): the longest
    // any session asks for, so that no peer keeps this node's routes for less than it was told.
    let graceful_restart_secs = cands
        .iter()
        .map(|c| c.restart_secs)
        .max()
        .unwrap_or_else(|| restart_secs(global.and_then(|g| g.node_mesh_max_restart_time)));

    // Every pool, disabled ones too: a disabled pool gives no new addresses, but its existing
    // blocks are still some node's and their routes must still be accepted.
    let mut pools: Vec<_> = inputs.pools.iter().map(|p| p.cidr).collect();
    pools.sort();
    pools.dedup();
    Ok(BgpIntent {
        node: me.to_string(),
        node_ip: my_ip,
        asn: my_as,
        export_blocks: pod_prefixes(inputs).remove(me).unwrap_or_default(),
        pools,
        kernel_table: params.kernel_table,
        device: params.device.clone(),
        route_reflector_cluster_id: my.rr_cluster_id,
        peers: sessions,
        bfd: params.bfd,
        graceful_restart_secs,
    })
}

/// FNV-1a, 32 bits: a stable short digest for names.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// Letters, digits and `_`: what a BIRD symbol may hold (the prefixes start with a letter).
fn sanitize(raw: &str) -> String {
    raw.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// The sanitised name shortened to leave room for `_` and 8 hex digits of the raw name's digest.
fn hashed(raw: &str) -> String {
    let base = sanitize(raw);
    format!("{}_{:08x}", &base[..base.len().min(NAME_MAX - 9)], fnv1a(raw))
}

/// Session names, unique and stable: the sanitised key; a digest of the key replaces its tail
/// when it is too long or when two keys sanitise alike (`a-b`, `a.b`).
fn session_names(cands: &[Candidate]) -> Vec<String> {
    let plain = |raw: &str| {
        let s = sanitize(raw);
        if s.len() > NAME_MAX {
            hashed(raw)
        } else {
            s
        }
    };
    let mut names: Vec<String> = cands.iter().map(|c| plain(&c.key)).collect();
    let mut count: BTreeMap<String, usize> = BTreeMap::new();
    for n in &names {
        *count.entry(n.clone()).or_default() += 1;
    }
    for (name, c) in names.iter_mut().zip(cands) {
        if count[name.as_str()] > 1 {
            *name = hashed(&c.key);
        }
    }
    // Digests that collide too: numbered in the candidates' order.
    let mut seen = BTreeSet::new();
    for name in &mut names {
        let mut k = 2;
        while !seen.insert(name.clone()) {
            *name = format!("{}_{k}", &name[..name.len().min(NAME_MAX - 6)]);
            k += 1;
        }
    }
    names
}

/// BIRD's log level for node `me`: its `node.<me>` BGPConfiguration's `logSeverityScreen`,
/// else `default`'s, else Info (see [`LogSeverity::bird_debug`]).
pub fn log_severity(inputs: &Inputs, me: &str) -> LogSeverity {
    let node = config(inputs, &format!("{NODE_CONFIG_PREFIX}{me}")).and_then(|c| c.log_severity_screen);
    node.or_else(|| config(inputs, GLOBAL_CONFIG_NAME).and_then(|c| c.log_severity_screen)).unwrap_or(LogSeverity::Info)
}

/// Reads a password from Kubernetes Secrets as mounted on the node: `<dir>/<name>/<key>` (one
/// trailing newline dropped, as an editor leaves it). For [`node_intent`]'s `secret`.
pub fn read_secret(dir: &Path, r: &SecretKeyRef) -> Result<String, String> {
    // Checked when the resource was read; checked again, as they become a path here.
    let part_ok = |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0']);
    if !part_ok(&r.name) || !part_ok(&r.key) {
        return Err(format!("'{}/{}' is not a secret name and key", r.name, r.key));
    }
    let path = dir.join(&r.name).join(&r.key);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
    if text.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests;
