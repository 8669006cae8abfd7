//! `bird.conf` from a [`BgpIntent`]: checked first ([`RenderError`] names the field and what is
//! valid), then written out in one fixed order (sorted peers, pools and blocks) so that the same
//! intent always gives the same bytes and [`crate::install`] can tell a change from a rewrite.
//!
//! What the rendered file does, and why (each choice verified against BIRD 2.0.12 in this
//! crate's tests):
//! - Learned routes reach the kernel as `PREFIX via NODE-IP dev DEVICE onlink`. Every session
//!   resolves BGP next hops recursively (`gateway recursive`) in a table of its own holding one
//!   device route, `0.0.0.0/0 via "DEVICE"`: any next hop, on the node's subnet or not, resolves
//!   to itself on DEVICE (never to an underlay gateway), and the kernel protocol's export filter
//!   marks it `onlink` so that the kernel takes an off-subnet one. vrouter decides direct or IPIP
//!   from that address.
//! - The node's blocks are static blackholes announced over BGP and never exported to the kernel
//!   (vrouter blackholes them itself).
//! - Peers: iBGP is `multihop` (a node on another subnet is reached through the underlay; BFD
//!   then runs multihop), eBGP is `direct` (a top-of-rack router on the node's subnet; BFD runs
//!   single-hop). Route reflectors keep next hops (BIRD's default for `rr client` sessions), so
//!   a reflected route still points at the node that announced it.
//! - Graceful restart: BGP `graceful restart` with the intent's time, the kernel protocol's
//!   `graceful restart` so that BIRD restarted with `-R` leaves the kernel table alone until its
//!   sessions have converged (`graceful restart wait`), and nothing else: no `persist`, so a
//!   BIRD stopped for good (`down`, SIGTERM) takes its routes with it, while `graceful restart`
//!   (the command) and a crash leave them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;

use vrouter_types::Ipv4Prefix;

use crate::{BgpIntent, BgpPeer, PeerRole};

/// The longest BIRD symbol (`SYM_MAX_LEN` of BIRD 2.0.12): protocol names included.
pub const MAX_PROTOCOL_NAME: usize = 64;
/// The longest TCP MD5 key Linux takes (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;
/// The longest Linux interface name (`IFNAMSIZ` - 1).
pub const MAX_DEVICE_LEN: usize = 15;
/// The BGP graceful restart capability carries the restart time in 12 bits (RFC 4724).
pub const MAX_GRACEFUL_RESTART_SECS: u32 = 4095;

/// The longest a BIRD restarted with `-R` holds back kernel updates for peers to come back:
/// live peers are back within seconds (`connect delay time 2`), a dead one holds it to the end.
pub const MAX_RECOVERY_WAIT_SECS: u32 = 30;

/// Ends the description of a session with a TCP MD5 password (`vrouterctl node status` reads
/// it: a password mismatch shows only in the kernel's counters).
pub const MD5_MARK: &str = ", TCP MD5";

/// The BIRD protocol holding the node's blocks (its name appears in the export filters).
pub const BLOCKS_PROTOCOL: &str = "node_blocks";
/// The BIRD protocol holding the pools as unreachable routes (to the kernel table only).
pub const POOLS_PROTOCOL: &str = "pools_unreachable";
/// The BIRD protocol writing learned routes to the kernel table.
pub const KERNEL_PROTOCOL: &str = "kernel_routes";

/// Why an intent cannot be rendered. Each message names the field and says what is valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("{field}: AS {asn} is reserved ({why}); use 1..=4294967294 except 23456 and 65535 (private: 64512..=65534, 4200000000..=4294967294)")]
    Asn { field: String, asn: u32, why: &'static str },
    #[error("node: {0:?} is not a usable node name: give a non-empty name without control characters or '\"'")]
    NodeName(String),
    #[error("node_ip: {0} cannot be a BGP router ID and session address (give the node's unicast address)")]
    NodeIp(Ipv4Addr),
    #[error("device: {device:?} {why} (the device holding the node IP, vrouter's host TAP)")]
    Device { device: String, why: &'static str },
    #[error("kernel_table: {0} is not a routing table BIRD can write (1..=254 or 256..)")]
    KernelTable(u32),
    #[error("pools: empty: give the cluster's IP pools (only prefixes inside one are accepted from peers)")]
    NoPools,
    #[error("export_blocks: {0} is inside none of the pools: every peer would refuse it")]
    BlockOutsidePools(Ipv4Prefix),
    #[error("route_reflector_cluster_id: 0.0.0.0 is not a cluster ID (give an IPv4 address, usually the reflector's node IP)")]
    ClusterId,
    #[error("peers[{name:?}]: {why}")]
    PeerName { name: String, why: String },
    #[error("peers[{first:?}] and peers[{second:?}]: both become BIRD protocol {protocol} (names differ only in characters BIRD does not take); rename one")]
    DuplicateName { first: String, second: String, protocol: String },
    #[error("peers[{first:?}] and peers[{second:?}]: both have IP {ip}: one session per neighbor")]
    DuplicateIp { first: String, second: String, ip: Ipv4Addr },
    #[error("peers[{peer:?}].ip: {ip} {why}")]
    PeerIp { peer: String, ip: Ipv4Addr, why: &'static str },
    #[error("peers[{peer:?}].asn: a {role} session is iBGP: the peer's AS must be the node's ({asn}), not {peer_asn}")]
    NotInternal { peer: String, role: &'static str, asn: u32, peer_asn: u32 },
    #[error("peers[{peer:?}].role: a route reflector client needs this node to be a reflector (set route_reflector_cluster_id)")]
    NotAReflector { peer: String },
    #[error("peers[{peer:?}].password: {why}")]
    Password { peer: String, why: String },
    #[error("bfd: {0}")]
    Bfd(String),
    #[error("graceful_restart_secs: {0} is above {MAX_GRACEFUL_RESTART_SECS} (the capability's 12 bits); 0 turns graceful restart off")]
    GracefulRestart(u32),
}

impl PeerRole {
    /// The start of the BIRD protocol names of this role's sessions (`vrouterctl node status`
    /// reads the role back from it, as `calicoctl node status` does with `Mesh_`).
    pub const fn protocol_prefix(self) -> &'static str {
        match self {
            PeerRole::Mesh => "mesh_",
            PeerRole::ReflectorClient => "rrclient_",
            PeerRole::Reflector => "rr_",
            PeerRole::External => "peer_",
        }
    }

    /// What the session is, as `vrouterctl node status` shows it.
    pub const fn describe(self) -> &'static str {
        match self {
            PeerRole::Mesh => "node-to-node mesh",
            PeerRole::ReflectorClient => "route reflector client",
            PeerRole::Reflector => "route reflector",
            PeerRole::External => "external",
        }
    }

    /// The role whose [`PeerRole::protocol_prefix`] starts a BIRD protocol name.
    pub fn from_protocol_name(name: &str) -> Option<PeerRole> {
        // Longest prefixes first: "rrclient_" before "rr_".
        [PeerRole::ReflectorClient, PeerRole::Reflector, PeerRole::Mesh, PeerRole::External]
            .into_iter()
            .find(|r| name.starts_with(r.protocol_prefix()))
    }
}

/// The BIRD protocol name of a session: the role's prefix, then the peer's name with every
/// character BIRD does not take in a symbol made `_`; a name that would pass BIRD's 64
/// characters is cut and ends with a hash of the whole name, so that it stays unique.
pub fn protocol_name(role: PeerRole, name: &str) -> String {
    let mut s: String = role.protocol_prefix().to_string();
    s.extend(name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
    if s.len() > MAX_PROTOCOL_NAME {
        let hash = format!("_{:08x}", fnv1a32(name.as_bytes()));
        s.truncate(MAX_PROTOCOL_NAME - hash.len()); // ASCII only: any index is a boundary
        s.push_str(&hash);
    }
    s
}

fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

/// The reason an AS number cannot be used, if it cannot.
fn reserved_asn(asn: u32) -> Option<&'static str> {
    match asn {
        0 => Some("RFC 7607"),
        23456 => Some("AS_TRANS, RFC 6793"),
        65535 | 4_294_967_295 => Some("RFC 7300"),
        _ => None,
    }
}

/// Something BIRD's string syntax carries: no '"' (BIRD 2.0.12 strings have no escapes) and no
/// control characters (no newline, which ends a string with an error; no NUL, which C cuts at).
fn bird_string_problem(s: &str) -> Option<&'static str> {
    if s.contains('"') {
        Some("contains '\"', which a BIRD string cannot hold (BIRD 2.0.12 has no escapes)")
    } else if s.chars().any(char::is_control) {
        Some("contains a control character (newline, tab, NUL...), which a BIRD string cannot hold")
    } else {
        None
    }
}

fn check_ip(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("is unspecified")
    } else if ip.is_multicast() {
        Some("is multicast")
    } else if ip.is_broadcast() {
        Some("is the broadcast address")
    } else if ip.is_loopback() {
        Some("is a loopback address")
    } else {
        None
    }
}

/// Checks an intent without rendering it.
pub fn validate(intent: &BgpIntent) -> Result<(), RenderError> {
    let asn = |field: String, asn: u32| match reserved_asn(asn) {
        Some(why) => Err(RenderError::Asn { field, asn, why }),
        None => Ok(()),
    };
    if intent.node.is_empty() || bird_string_problem(&intent.node).is_some() {
        return Err(RenderError::NodeName(intent.node.clone()));
    }
    if check_ip(intent.node_ip).is_some() {
        return Err(RenderError::NodeIp(intent.node_ip));
    }
    asn("asn".into(), intent.asn)?;
    let d = &intent.device;
    let bad_device = |why| Err(RenderError::Device { device: d.clone(), why });
    if d.is_empty() {
        return bad_device("is empty");
    }
    if d.len() > MAX_DEVICE_LEN {
        return bad_device("is longer than 15 bytes, which no Linux interface name is");
    }
    if d == "."
        || d == ".."
        || d.chars().any(|c| c == '/' || c == ':' || c == '"' || c.is_whitespace() || c.is_control())
    {
        return bad_device("is not a Linux interface name (no '/', ':', '\"', spaces or control characters)");
    }
    if intent.kernel_table == 0 || intent.kernel_table == 255 {
        return Err(RenderError::KernelTable(intent.kernel_table));
    }
    if intent.pools.is_empty() {
        return Err(RenderError::NoPools);
    }
    if let Some(b) = intent.export_blocks.iter().find(|b| !intent.pools.iter().any(|p| p.covers(b))) {
        return Err(RenderError::BlockOutsidePools(*b));
    }
    if intent.route_reflector_cluster_id == Some(Ipv4Addr::UNSPECIFIED) {
        return Err(RenderError::ClusterId);
    }
    let t = intent.bfd;
    if intent.peers.iter().any(|p| p.bfd) {
        if !(10..=60_000).contains(&t.interval_ms) {
            return Err(RenderError::Bfd(format!(
                "interval_ms {} is outside 10..=60000 (shorter intervals flap on a busy node)",
                t.interval_ms
            )));
        }
        if !(1..=255).contains(&t.multiplier) {
            return Err(RenderError::Bfd(format!(
                "multiplier {} is outside 1..=255 (a BFD packet carries it in one byte)",
                t.multiplier
            )));
        }
    }
    if intent.graceful_restart_secs > MAX_GRACEFUL_RESTART_SECS {
        return Err(RenderError::GracefulRestart(intent.graceful_restart_secs));
    }
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    let mut ips: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for p in &intent.peers {
        let name = &p.name;
        if name.is_empty() {
            return Err(RenderError::PeerName { name: name.clone(), why: "the name is empty".into() });
        }
        if let Some(why) = bird_string_problem(name) {
            return Err(RenderError::PeerName { name: name.clone(), why: format!("the name {why}") });
        }
        let protocol = protocol_name(p.role, name);
        if let Some(first) = names.insert(protocol.clone(), name) {
            return Err(RenderError::DuplicateName { first: first.into(), second: name.clone(), protocol });
        }
        if p.ip == intent.node_ip {
            return Err(RenderError::PeerIp { peer: name.clone(), ip: p.ip, why: "is this node's own IP" });
        }
        if let Some(why) = check_ip(p.ip) {
            return Err(RenderError::PeerIp { peer: name.clone(), ip: p.ip, why });
        }
        if let Some(first) = ips.insert(p.ip, name) {
            return Err(RenderError::DuplicateIp { first: first.into(), second: name.clone(), ip: p.ip });
        }
        asn(format!("peers[{name:?}].asn"), p.asn)?;
        if p.role != PeerRole::External && p.asn != intent.asn {
            return Err(RenderError::NotInternal {
                peer: name.clone(),
                role: p.role.describe(),
                asn: intent.asn,
                peer_asn: p.asn,
            });
        }
        if p.role == PeerRole::ReflectorClient && intent.route_reflector_cluster_id.is_none() {
            return Err(RenderError::NotAReflector { peer: name.clone() });
        }
        if let Some(pw) = &p.password {
            let why = if pw.is_empty() {
                Some("empty: leave it out for no authentication".to_string())
            } else if pw.len() > MAX_PASSWORD_LEN {
                Some(format!(
                    "{} bytes: TCP MD5 keys are at most {MAX_PASSWORD_LEN} bytes (Linux TCP_MD5SIG_MAXKEYLEN)",
                    pw.len()
                ))
            } else {
                bird_string_problem(pw).map(str::to_string)
            };
            if let Some(why) = why {
                return Err(RenderError::Password { peer: name.clone(), why });
            }
        }
    }
    Ok(())
}

/// The `bird.conf` of an intent, or why there is none.
pub fn render(intent: &BgpIntent) -> Result<String, RenderError> {
    validate(intent)?;
    let mut pools = intent.pools.clone();
    pools.sort();
    pools.dedup();
    let mut blocks = intent.export_blocks.clone();
    blocks.sort();
    blocks.dedup();
    let mut peers: Vec<(String, &BgpPeer)> = intent.peers.iter().map(|p| (protocol_name(p.role, &p.name), p)).collect();
    peers.sort_by(|a, b| a.0.cmp(&b.0));
    let gr = intent.graceful_restart_secs;
    let reflector = intent.route_reflector_cluster_id;

    let mut c = String::new();
    // Writing to a String cannot fail: the results of writeln! below are ignored.
    let o = &mut c;
    let _ = writeln!(o, "# bird.conf of node \"{}\", rendered by vrouter-bgp from the node's BGP intent.", intent.node);
    let _ = writeln!(o, "# Do not edit: the node agent rewrites this file and reloads BIRD (`birdc configure`).");
    let _ = writeln!(o);
    let _ = writeln!(o, "# BIRD runs in the foreground (-f) under the node agent, which keeps its stderr.");
    let _ = writeln!(o, "log stderr all;");
    let _ = writeln!(o, "router id {};", intent.node_ip);
    let _ = writeln!(o, "# Dates with their UTC offset: `vrouterctl node status` computes session uptimes from them.");
    let _ = writeln!(o, "timeformat protocol \"%F %T %z\";");
    if gr > 0 {
        let _ = writeln!(o, "# Started with -R after a graceful restart, BIRD leaves the kernel table as it was until");
        let _ = writeln!(o, "# every session has sent its routes again, or this many seconds have passed (a peer that");
        let _ = writeln!(o, "# is down holds the wait to its end: no learned route reaches the kernel meanwhile).");
        let _ = writeln!(o, "graceful restart wait {};", gr.min(MAX_RECOVERY_WAIT_SECS));
    }
    let _ = writeln!(o);
    let _ = writeln!(o, "# The cluster's IP pools: the only prefixes taken from peers (a pool, or longer).");
    let set: Vec<String> = pools.iter().map(|p| format!("{p}+")).collect();
    let _ = writeln!(o, "define POOLS = [ {} ];", set.join(", "));
    let _ = writeln!(o);
    let _ = writeln!(o, "# BGP next hops resolve in this table, which holds one device route: any next hop, on");
    let _ = writeln!(o, "# the node's subnet or not, is reached as itself on {} (never via an underlay", intent.device);
    let _ = writeln!(o, "# gateway), so that vrouter sees the announcing node's address.");
    let _ = writeln!(o, "ipv4 table nexthops;");
    let _ = writeln!(o);
    let _ = writeln!(o, "protocol device {{");
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    let _ = writeln!(o, "protocol static nexthop_device {{");
    let _ = writeln!(o, "  ipv4 {{ table nexthops; }};");
    let _ = writeln!(o, "  route 0.0.0.0/0 via \"{}\";", intent.device);
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    let _ = writeln!(o, "# The node's blocks, announced to peers. Never exported to the kernel: vrouter");
    let _ = writeln!(o, "# blackholes them itself.");
    let _ = writeln!(o, "protocol static {BLOCKS_PROTOCOL} {{");
    let _ = writeln!(o, "  ipv4;");
    for b in &blocks {
        let _ = writeln!(o, "  route {b} blackhole;");
    }
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    let _ = writeln!(o, "# The pools themselves, unreachable: an address in a pool that no node announces (a");
    let _ = writeln!(o, "# dead node's block) gets ICMP net unreachable from vrouter at once, instead of following");
    let _ = writeln!(o, "# the default route into the underlay. Any announced block is longer, and wins.");
    let _ = writeln!(o, "protocol static {POOLS_PROTOCOL} {{");
    let _ = writeln!(o, "  ipv4;");
    for p in &pools {
        let _ = writeln!(o, "  route {p} unreachable;");
    }
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "# Routes learned over BGP, and the pools' unreachable routes, go to kernel table {} (vrouter",
        intent.kernel_table
    );
    let _ = writeln!(o, "# imports it), the learned ones as `PREFIX via NODE-IP dev {} onlink`.", intent.device);
    let _ = writeln!(o, "protocol kernel {KERNEL_PROTOCOL} {{");
    let _ = writeln!(o, "  ipv4 {{");
    let _ = writeln!(o, "    import none;");
    let _ = writeln!(o, "    export filter {{");
    let _ = writeln!(o, "      if source = RTS_BGP && dest = RTD_UNICAST then {{");
    let _ = writeln!(o, "        onlink = true;");
    let _ = writeln!(o, "        accept;");
    let _ = writeln!(o, "      }}");
    let _ = writeln!(o, "      if proto = \"{POOLS_PROTOCOL}\" then accept;");
    let _ = writeln!(o, "      reject;");
    let _ = writeln!(o, "    }};");
    let _ = writeln!(o, "  }};");
    let _ = writeln!(o, "  kernel table {};", intent.kernel_table);
    if gr > 0 {
        let _ = writeln!(
            o,
            "  # After a restart with -R, no sync with the kernel table until the sessions have converged."
        );
        let _ = writeln!(o, "  graceful restart on;");
    }
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    if peers.iter().any(|(_, p)| p.bfd) {
        let t = intent.bfd;
        let timing = format!("interval {} ms; multiplier {};", t.interval_ms, t.multiplier);
        let _ = writeln!(
            o,
            "# BFD for sessions that ask for it: a dead peer is noticed within {} ms.",
            t.interval_ms * t.multiplier
        );
        let _ = writeln!(o, "# Single-hop for direct (eBGP) sessions, multihop for the others.");
        let _ = writeln!(o, "protocol bfd {{");
        let _ = writeln!(o, "  interface \"*\" {{ {timing} }};");
        let _ = writeln!(o, "  multihop {{ {timing} }};");
        let _ = writeln!(o, "}}");
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "filter pools_only {{");
    let _ = writeln!(o, "  # A route back to this node would loop.");
    let _ = writeln!(o, "  if bgp_next_hop = {} then reject;", intent.node_ip);
    let _ = writeln!(o, "  if net ~ POOLS then accept;");
    let _ = writeln!(o, "  reject;");
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    let _ = writeln!(o, "filter node_blocks_only {{");
    let _ = writeln!(o, "  if proto = \"{BLOCKS_PROTOCOL}\" then accept;");
    let _ = writeln!(o, "  reject;");
    let _ = writeln!(o, "}}");
    let _ = writeln!(o);
    if reflector.is_some() {
        let _ = writeln!(o, "# A route reflector also passes on the pool routes it learned (BIRD's iBGP rules decide");
        let _ = writeln!(o, "# to whom), next hops unchanged.");
        let _ = writeln!(o, "filter node_blocks_and_reflected {{");
        let _ = writeln!(o, "  if proto = \"{BLOCKS_PROTOCOL}\" then accept;");
        let _ = writeln!(o, "  if source = RTS_BGP && net ~ POOLS then accept;");
        let _ = writeln!(o, "  reject;");
        let _ = writeln!(o, "}}");
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "template bgp vrouter_peer {{");
    let _ = writeln!(o, "  local {} as {};", intent.node_ip, intent.asn);
    let _ = writeln!(o, "  debug {{ states }};");
    let _ = writeln!(o, "  # Calico's timers: a session comes back within seconds, not BIRD's default minutes.");
    let _ = writeln!(o, "  connect delay time 2;");
    let _ = writeln!(o, "  connect retry time 5;");
    let _ = writeln!(o, "  error wait time 5, 30;");
    if gr > 0 {
        let _ = writeln!(o, "  # Peers keep this node's routes for {gr} s while it restarts, and it keeps theirs.");
        let _ = writeln!(o, "  graceful restart on;");
        let _ = writeln!(o, "  graceful restart time {gr};");
    } else {
        let _ = writeln!(o, "  graceful restart off;");
    }
    let _ = writeln!(o, "  ipv4 {{");
    let _ = writeln!(o, "    gateway recursive;");
    let _ = writeln!(o, "    igp table nexthops;");
    let _ = writeln!(o, "    # Refused routes are kept (not used) so that they are counted as \"filtered\".");
    let _ = writeln!(o, "    import keep filtered;");
    let _ = writeln!(o, "    import filter pools_only;");
    let _ = writeln!(o, "    export filter node_blocks_only;");
    let _ = writeln!(o, "  }};");
    let _ = writeln!(o, "}}");
    for (name, p) in &peers {
        let ebgp = p.asn != intent.asn;
        let _ = writeln!(o);
        let _ = writeln!(o, "protocol bgp {name} from vrouter_peer {{");
        let md5 = if p.password.is_some() { MD5_MARK } else { "" };
        let _ = writeln!(o, "  description \"{}: {}{md5}\";", p.role.describe(), p.name);
        let _ = writeln!(o, "  neighbor {} as {};", p.ip, p.asn);
        if ebgp {
            let _ = writeln!(o, "  # eBGP to a router on the node's subnet: single hop (TTL 1, single-hop BFD).");
            let _ = writeln!(o, "  direct;");
        } else {
            let _ = writeln!(o, "  # iBGP: the peer may be on another subnet (multihop BFD).");
            let _ = writeln!(o, "  multihop;");
        }
        // On a reflector, the node sessions (not the external ones) carry the cluster ID and
        // pass on reflected routes.
        let reflecting = reflector.filter(|_| p.role != PeerRole::External);
        if let Some(id) = reflecting {
            if p.role == PeerRole::ReflectorClient {
                let _ = writeln!(o, "  rr client;");
            }
            let _ = writeln!(o, "  rr cluster id {id};");
        }
        if p.bfd {
            let _ = writeln!(o, "  bfd on;");
        }
        if let Some(pw) = &p.password {
            let _ = writeln!(o, "  password \"{pw}\";");
        }
        let export = if reflecting.is_some() { "node_blocks_and_reflected" } else { "node_blocks_only" };
        if export != "node_blocks_only" || ebgp {
            let _ = writeln!(o, "  ipv4 {{");
            if export != "node_blocks_only" {
                let _ = writeln!(o, "    export filter {export};");
            }
            if ebgp {
                let _ = writeln!(o, "    # Our blocks are reached through this node.");
                let _ = writeln!(o, "    next hop self;");
            }
            let _ = writeln!(o, "  }};");
        }
        let _ = writeln!(o, "}}");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BfdTiming;

    fn peer(name: &str, ip: &str, asn: u32, role: PeerRole) -> BgpPeer {
        BgpPeer { name: name.into(), ip: ip.parse().unwrap(), asn, role, password: None, bfd: false }
    }

    /// Node 1 of a three-node mesh.
    pub(crate) fn mesh_node() -> BgpIntent {
        BgpIntent {
            node: "node1".into(),
            node_ip: "192.168.1.10".parse().unwrap(),
            asn: 64512,
            export_blocks: vec!["10.244.1.0/26".parse().unwrap()],
            pools: vec!["10.244.0.0/16".parse().unwrap()],
            kernel_table: 100,
            device: "vrhost".into(),
            route_reflector_cluster_id: None,
            peers: vec![
                peer("node2", "192.168.1.20", 64512, PeerRole::Mesh),
                peer("node3", "192.168.2.30", 64512, PeerRole::Mesh),
            ],
            bfd: BfdTiming::default(),
            graceful_restart_secs: 120,
        }
    }

    fn err(i: &BgpIntent) -> RenderError {
        render(i).unwrap_err()
    }

    /// The lines of `text` from the one starting with `start` to the next `}` at line start.
    fn block<'a>(text: &'a str, start: &str) -> &'a str {
        let from = text.find(start).unwrap_or_else(|| panic!("no {start:?} in:\n{text}"));
        let len = text[from..].find("\n}\n").map_or(text.len() - from, |e| e + 3);
        &text[from..from + len]
    }

    #[test]
    fn mesh_node_renders_router_id_blocks_kernel_table_and_one_protocol_per_peer() {
        let c = render(&mesh_node()).unwrap();
        assert!(c.contains("\nrouter id 192.168.1.10;\n"), "{c}");
        assert!(c.contains("define POOLS = [ 10.244.0.0/16+ ];"), "{c}");
        assert!(block(&c, "protocol static node_blocks").contains("route 10.244.1.0/26 blackhole;"));
        let k = block(&c, "protocol kernel kernel_routes");
        assert!(k.contains("kernel table 100;") && k.contains("if source = RTS_BGP && dest = RTD_UNICAST then"), "{k}");
        assert!(k.contains("onlink = true;"), "{k}");
        assert!(block(&c, "protocol static nexthop_device").contains("route 0.0.0.0/0 via \"vrhost\";"));
        let m = block(&c, "protocol bgp mesh_node2 from vrouter_peer");
        assert!(m.contains("neighbor 192.168.1.20 as 64512;") && m.contains("multihop;"), "{m}");
        assert!(m.contains("description \"node-to-node mesh: node2\";"), "{m}");
        assert!(!m.contains("bfd") && !m.contains("password") && !m.contains("rr "), "{m}");
        assert!(c.contains("protocol bgp mesh_node3 from vrouter_peer"));
        let t = block(&c, "template bgp vrouter_peer");
        assert!(t.contains("local 192.168.1.10 as 64512;") && t.contains("gateway recursive;"), "{t}");
        assert!(t.contains("import keep filtered;") && t.contains("import filter pools_only;"), "{t}");
        assert!(t.contains("export filter node_blocks_only;"), "{t}");
        assert!(!c.contains("protocol bfd"), "no BFD protocol when no peer asks for it:\n{c}");
    }

    #[test]
    fn render_is_deterministic_whatever_the_order_of_peers_pools_and_blocks() {
        let a = mesh_node();
        let mut b = mesh_node();
        b.peers.reverse();
        b.pools.push("10.96.0.0/12".parse().unwrap());
        b.pools.reverse();
        b.export_blocks.push("10.244.9.0/26".parse().unwrap());
        b.export_blocks.reverse();
        let mut a2 = a.clone();
        a2.pools.push("10.96.0.0/12".parse().unwrap());
        a2.export_blocks.push("10.244.9.0/26".parse().unwrap());
        assert_eq!(render(&a2).unwrap(), render(&b).unwrap());
        let c = render(&b).unwrap();
        assert!(c.find("mesh_node2 from").unwrap() < c.find("mesh_node3 from").unwrap());
        assert!(c.contains("define POOLS = [ 10.96.0.0/12+, 10.244.0.0/16+ ];"), "{c}");
        assert_eq!(render(&a).unwrap(), render(&a).unwrap());
    }

    #[test]
    fn reflector_marks_clients_sets_the_cluster_id_and_reflects_pool_routes() {
        let mut i = mesh_node();
        i.route_reflector_cluster_id = Some("10.255.0.1".parse().unwrap());
        i.peers = vec![
            peer("node2", "192.168.1.20", 64512, PeerRole::ReflectorClient),
            peer("rr2", "192.168.1.30", 64512, PeerRole::Reflector),
            peer("tor", "192.168.1.1", 65001, PeerRole::External),
        ];
        let c = render(&i).unwrap();
        assert!(
            block(&c, "filter node_blocks_and_reflected").contains("if source = RTS_BGP && net ~ POOLS then accept;")
        );
        let client = block(&c, "protocol bgp rrclient_node2 from");
        assert!(client.contains("rr client;") && client.contains("rr cluster id 10.255.0.1;"), "{client}");
        assert!(client.contains("export filter node_blocks_and_reflected;"), "{client}");
        let rr = block(&c, "protocol bgp rr_rr2 from");
        assert!(!rr.contains("rr client;") && rr.contains("rr cluster id 10.255.0.1;"), "{rr}");
        assert!(rr.contains("export filter node_blocks_and_reflected;"), "{rr}");
        let tor = block(&c, "protocol bgp peer_tor from");
        assert!(!tor.contains("rr ") && !tor.contains("reflected"), "an external peer gets our blocks only: {tor}");
    }

    #[test]
    fn client_of_a_reflector_exports_only_its_blocks() {
        let mut i = mesh_node();
        i.peers = vec![peer("rr1", "192.168.1.30", 64512, PeerRole::Reflector)];
        let c = render(&i).unwrap();
        let rr = block(&c, "protocol bgp rr_rr1 from");
        assert!(!rr.contains("rr client") && !rr.contains("cluster id") && !rr.contains("export filter"), "{rr}");
        assert!(!c.contains("node_blocks_and_reflected"));
    }

    #[test]
    fn external_ebgp_peer_is_direct_with_next_hop_self_and_ibgp_external_is_multihop() {
        let mut i = mesh_node();
        i.peers = vec![
            peer("tor", "192.168.1.1", 65001, PeerRole::External),
            peer("tor-ibgp", "192.168.1.2", 64512, PeerRole::External),
        ];
        let c = render(&i).unwrap();
        let e = block(&c, "protocol bgp peer_tor from");
        assert!(e.contains("neighbor 192.168.1.1 as 65001;") && e.contains("direct;"), "{e}");
        assert!(e.contains("next hop self;") && !e.contains("multihop"), "{e}");
        assert!(e.contains("description \"external: tor\";"), "{e}");
        let ib = block(&c, "protocol bgp peer_tor_ibgp from");
        assert!(ib.contains("multihop;") && !ib.contains("next hop self"), "{ib}");
    }

    #[test]
    fn bfd_peers_get_bfd_and_a_bfd_protocol_with_the_timing() {
        let mut i = mesh_node();
        i.peers[0].bfd = true;
        i.bfd = BfdTiming { interval_ms: 50, multiplier: 4 };
        let c = render(&i).unwrap();
        let b = block(&c, "protocol bfd");
        assert!(b.contains("interface \"*\" { interval 50 ms; multiplier 4; };"), "{b}");
        assert!(b.contains("multihop { interval 50 ms; multiplier 4; };"), "{b}");
        assert!(block(&c, "protocol bgp mesh_node2 from").contains("bfd on;"));
        assert!(!block(&c, "protocol bgp mesh_node3 from").contains("bfd"));
    }

    #[test]
    fn graceful_restart_off_turns_it_off_everywhere() {
        let mut i = mesh_node();
        let on = render(&i).unwrap();
        assert!(on.contains("graceful restart wait 30;"), "at most MAX_RECOVERY_WAIT_SECS");
        i.graceful_restart_secs = 10;
        assert!(render(&i).unwrap().contains("graceful restart wait 10;"));
        assert!(block(&on, "template bgp").contains("graceful restart on;\n  graceful restart time 120;"));
        assert!(block(&on, "protocol kernel").contains("graceful restart on;"));
        i.graceful_restart_secs = 0;
        let off = render(&i).unwrap();
        assert!(!off.contains("graceful restart wait"), "{off}");
        assert!(block(&off, "template bgp").contains("graceful restart off;"));
        assert!(!block(&off, "protocol kernel").contains("graceful"));
    }

    #[test]
    fn passwords_are_written_as_given_and_those_bird_cannot_hold_are_refused() {
        let mut i = mesh_node();
        // A backslash is taken literally by BIRD 2.0.12 (its strings have no escapes).
        i.peers[0].password = Some(r"s3cr\et 'x' #1".into());
        let c = render(&i).unwrap();
        let m = block(&c, "protocol bgp mesh_node2");
        assert!(m.contains(r#"password "s3cr\et 'x' #1";"#), "{c}");
        assert!(m.contains("description \"node-to-node mesh: node2, TCP MD5\";"), "{m}");
        for (pw, why) in [
            ("a\"b", "'\"'"),
            ("a\nb", "control character"),
            ("a\0b", "control character"),
            ("", "empty"),
            (&"x".repeat(81), "at most 80 bytes"),
        ] {
            i.peers[0].password = Some(pw.to_string());
            let e = err(&i);
            assert!(matches!(&e, RenderError::Password { peer, .. } if peer == "node2"), "{e}");
            assert!(e.to_string().contains(why), "{pw:?}: {e}");
        }
        i.peers[0].password = Some("x".repeat(80));
        assert!(render(&i).is_ok(), "80 bytes is the limit, included");
    }

    #[test]
    fn protocol_names_are_bird_symbols_unique_and_bounded() {
        assert_eq!(protocol_name(PeerRole::Mesh, "ip-10-0-1-5.ec2.internal"), "mesh_ip_10_0_1_5_ec2_internal");
        assert_eq!(PeerRole::from_protocol_name("rrclient_x"), Some(PeerRole::ReflectorClient));
        assert_eq!(PeerRole::from_protocol_name("rr_x"), Some(PeerRole::Reflector));
        assert_eq!(PeerRole::from_protocol_name("peer_x"), Some(PeerRole::External));
        assert_eq!(PeerRole::from_protocol_name("bgp1"), None);
        let long_a = format!("{}-a", "n".repeat(100));
        let long_b = format!("{}-b", "n".repeat(100));
        let (a, b) = (protocol_name(PeerRole::Mesh, &long_a), protocol_name(PeerRole::Mesh, &long_b));
        assert_eq!(a.len(), MAX_PROTOCOL_NAME);
        assert_ne!(a, b, "cut names keep a hash of the whole name");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        // Unicode is replaced, not cut in the middle of a character.
        assert_eq!(protocol_name(PeerRole::Mesh, "nœud"), "mesh_n_ud");
    }

    #[test]
    fn peer_names_that_become_the_same_protocol_are_refused() {
        let mut i = mesh_node();
        i.peers[1].name = "node.2".into();
        i.peers[0].name = "node-2".into();
        let e = err(&i);
        assert!(matches!(&e, RenderError::DuplicateName { protocol, .. } if protocol == "mesh_node_2"), "{e}");
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let check = |f: &dyn Fn(&mut BgpIntent), want: &str| {
            let mut i = mesh_node();
            f(&mut i);
            let e = err(&i).to_string();
            assert!(e.contains(want), "want {want:?} in: {e}");
        };
        check(&|i| i.asn = 0, "asn: AS 0 is reserved");
        check(&|i| i.asn = 23456, "AS_TRANS");
        check(&|i| i.peers[0].asn = 65535, "peers[\"node2\"].asn: AS 65535 is reserved");
        check(&|i| i.peers[0].asn = 64513, "a node-to-node mesh session is iBGP");
        check(&|i| i.peers[0].ip = i.node_ip, "is this node's own IP");
        check(&|i| i.peers[1].ip = i.peers[0].ip, "both have IP 192.168.1.20");
        check(&|i| i.peers[0].ip = Ipv4Addr::UNSPECIFIED, "is unspecified");
        check(&|i| i.peers[0].name = String::new(), "the name is empty");
        check(&|i| i.peers[0].name = "a\"b".into(), "'\"'");
        check(&|i| i.device = String::new(), "device: \"\" is empty");
        check(&|i| i.device = "a-very-long-device".into(), "longer than 15 bytes");
        check(&|i| i.device = "vr host".into(), "not a Linux interface name");
        check(&|i| i.pools.clear(), "pools: empty");
        check(&|i| i.export_blocks.push("10.99.0.0/26".parse().unwrap()), "10.99.0.0/26 is inside none of the pools");
        check(&|i| i.kernel_table = 0, "kernel_table: 0");
        check(&|i| i.kernel_table = 255, "kernel_table: 255");
        check(&|i| i.node_ip = Ipv4Addr::UNSPECIFIED, "node_ip: 0.0.0.0");
        check(&|i| i.node = String::new(), "node: \"\"");
        check(&|i| i.route_reflector_cluster_id = Some(Ipv4Addr::UNSPECIFIED), "route_reflector_cluster_id");
        check(&|i| i.peers[0].role = PeerRole::ReflectorClient, "needs this node to be a reflector");
        check(&|i| i.graceful_restart_secs = 4096, "graceful_restart_secs: 4096");
        check(
            &|i| {
                i.peers[0].bfd = true;
                i.bfd.multiplier = 0
            },
            "multiplier 0",
        );
        check(
            &|i| {
                i.peers[0].bfd = true;
                i.bfd.interval_ms = 1
            },
            "interval_ms 1",
        );
        // BFD timing only matters when a peer uses it.
        let mut i = mesh_node();
        i.bfd.multiplier = 0;
        assert!(render(&i).is_ok());
    }
}
