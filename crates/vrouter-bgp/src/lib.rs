//! BIRD 2 beside vrouter, in the role Calico gives confd: what a node's BGP speaker must do
//! ([`BgpIntent`], built from the datastore by the node agent) is rendered into a `bird.conf`,
//! reloaded with `configure` on BIRD's control socket (never a restart), and BIRD's view of its
//! sessions is read back for `vrouterctl node status` and the metrics.
//!
//! Routes BIRD learns go into a kernel table of the node's namespace that vrouter imports
//! (`[kernel_routes]`), as `via NODE-IP dev DEVICE onlink`: the announcing node's address is the
//! next hop whatever its subnet, and vrouter decides direct or IPIP from the pool's mode.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use vrouter_types::Ipv4Prefix;

mod birdc;
mod install;
mod render;
mod status;

pub use birdc::{Birdc, BirdcError, ConfigureOutcome, Reply, ReplyLine, DEFAULT_SOCKET};
pub use install::install;
pub use render::{
    protocol_name, render, validate, RenderError, BLOCKS_PROTOCOL, KERNEL_PROTOCOL, MAX_DEVICE_LEN,
    MAX_GRACEFUL_RESTART_SECS, MAX_PASSWORD_LEN, MAX_PROTOCOL_NAME, MAX_RECOVERY_WAIT_SECS, MD5_MARK, POOLS_PROTOCOL,
};
pub use status::{parse_protocols, parse_status, prometheus_text, BirdStatus, PeerStatus, RouteCounts, TcpMd5Counters};

/// Everything one node's BIRD is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpIntent {
    /// The node's name (for descriptions and messages).
    pub node: String,
    /// The node IP: BGP router ID, session source address and the next hop it announces.
    pub node_ip: Ipv4Addr,
    /// The node's AS number.
    pub asn: u32,
    /// The node's pod blocks, announced as aggregates (their blackholes stay local: vrouter
    /// has them; BIRD does not put them in the kernel).
    pub export_blocks: Vec<Ipv4Prefix>,
    /// The cluster's IP pools: only prefixes inside one (as long as the pool or longer) are
    /// accepted from peers; anything else is refused and counted (BIRD's "filtered").
    pub pools: Vec<Ipv4Prefix>,
    /// The kernel table learned routes go to (vrouter imports it).
    pub kernel_table: u32,
    /// The device of the node's own address (vrouter's host TAP): learned routes point there.
    pub device: String,
    /// Set when this node is a route reflector: its cluster ID.
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// The sessions, sorted by name.
    pub peers: Vec<BgpPeer>,
    /// BFD on every session that asks for it.
    pub bfd: BfdTiming,
    /// Graceful restart: how long peers keep this node's routes while it restarts (seconds, at
    /// most 4095); 0 turns graceful restart off. A restart is graceful when BIRD is stopped
    /// with `birdc graceful restart` (or crashes) and started again with `-R` on the same
    /// config: without `-R` it empties the kernel table at start, and its peers drop its
    /// routes when it reconnects. Sessions with `bfd` do not keep routes through it (see
    /// [`BgpPeer::bfd`]).
    pub graceful_restart_secs: u32,
}

/// One BGP session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpPeer {
    /// A name unique in the node's config; the BIRD protocol name is derived from it.
    pub name: String,
    pub ip: Ipv4Addr,
    pub asn: u32,
    pub role: PeerRole,
    /// TCP MD5 signature (RFC 2385) password, when the peer has one.
    pub password: Option<String>,
    /// Fast failure detection with BFD on this session: a dead peer's routes go within
    /// `interval_ms * multiplier` plus a few ms (measured: ~0.3 s at 100 ms x 3), where
    /// graceful restart would keep them `graceful_restart_secs`. With BIRD 2.0.12 this excludes
    /// graceful restart on the session: a BIRD restarting gracefully stops answering BFD (it
    /// sends no AdminDown, and 2.0.12 would take one as a failure anyway), so its peers drop
    /// its routes within the detection time instead of keeping them (tests/bird_live.rs).
    pub bfd: bool,
}

/// What a session is for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRole {
    /// Node-to-node mesh: another node, iBGP.
    Mesh,
    /// This node reflects routes to the peer (this node is a route reflector, the peer its client).
    ReflectorClient,
    /// The peer is a route reflector serving this node (or another reflector of the cluster).
    Reflector,
    /// An explicit `BGPPeer` that is not a node (a top-of-rack router), iBGP or eBGP by AS.
    External,
}

/// BFD timers: detection takes `interval_ms * multiplier`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BfdTiming {
    pub interval_ms: u32,
    pub multiplier: u32,
}

impl Default for BfdTiming {
    /// 100 ms x 3: a dead peer is noticed within 300 ms, its routes gone well inside a second.
    fn default() -> Self {
        BfdTiming { interval_ms: 100, multiplier: 3 }
    }
}
