//! Routes as the protocol names them: next hops by what they are ([`NhKey`]), where a route
//! came from ([`RouteSource`]), and the rows of `routes` and the reports of changes.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{NhId, PortId};
use vrouter_types::Ipv4Prefix;

/// A next hop, named by what it is rather than by an index.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NhKey {
    /// ICMP net unreachable (its own next hop: not "no route", so it wins over what covers it).
    Unreachable,
    /// ICMP communication administratively prohibited.
    Prohibit,
    Blackhole,
    /// The node's kernel (host port).
    Host,
    /// The pod on this port slot.
    Local(PortId),
    /// A neighbour on the uplink.
    Gateway(Ipv4Addr),
    /// The uplink's own subnet: the destination is the L2 next hop.
    Connected,
    /// IPIP to `remote`, sent to the L2 neighbour `via`.
    Tunnel {
        remote: Ipv4Addr,
        via: Ipv4Addr,
    },
    /// Equal-cost paths (members are never `Ecmp`); a member may repeat (weights).
    Ecmp(Vec<NhKey>),
}

impl std::fmt::Display for NhKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NhKey::Unreachable => write!(f, "unreachable"),
            NhKey::Prohibit => write!(f, "prohibit"),
            NhKey::Blackhole => write!(f, "blackhole"),
            NhKey::Host => write!(f, "host"),
            NhKey::Local(p) => write!(f, "local port {p}"),
            NhKey::Gateway(v) => write!(f, "via {v}"),
            NhKey::Connected => write!(f, "connected"),
            NhKey::Tunnel { remote, via } => write!(f, "ipip to {remote} via {via}"),
            NhKey::Ecmp(m) => {
                write!(f, "ecmp [")?;
                for (i, k) in m.iter().enumerate() {
                    write!(f, "{}{k}", if i > 0 { ", " } else { "" })?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Where a route came from. Lower wins when several sources give the same prefix: what the
/// node itself implies and the config file first, then the CLI, then the kernel table (BGP).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSource {
    /// Implied by the node: pod /32s, the blackholed pod block, the connected subnet.
    Node,
    /// Peers' pod blocks and `[[routes]]` of the config file.
    Config,
    /// `vrouterctl route add`.
    Cli,
    /// Imported from a kernel routing table over netlink.
    Kernel,
}

impl RouteSource {
    pub const ALL: [RouteSource; 4] = [RouteSource::Node, RouteSource::Config, RouteSource::Cli, RouteSource::Kernel];
}

/// One route as `vrouterctl routes` shows it.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct RouteView {
    pub prefix: Ipv4Prefix,
    pub source: RouteSource,
    pub nexthop: String,
    pub nh_id: NhId,
    /// Routes to the same prefix from other sources, shadowed by this one.
    pub shadowed: Vec<(RouteSource, String)>,
}

/// What an `apply` would change (`vrouterctl apply --dry-run`).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Plan {
    pub endpoints_added: Vec<String>,
    pub endpoints_removed: Vec<String>,
    /// Port-level settings changed: removed and created again.
    pub endpoints_replaced: Vec<String>,
    pub endpoints_policy_changed: Vec<String>,
    pub peers_added: Vec<String>,
    pub peers_removed: Vec<String>,
    pub peers_changed: Vec<String>,
    pub policies_added: Vec<String>,
    pub policies_removed: Vec<String>,
    pub policies_changed: Vec<String>,
    pub global_rules_changed: bool,
    /// `prefix next-hop`, for the node's and the config's routes.
    pub routes_added: Vec<String>,
    pub routes_removed: Vec<String>,
    pub routes_changed: Vec<String>,
    pub neighbours_added: Vec<String>,
    pub neighbours_removed: Vec<String>,
}

/// Counts of what an operation changed.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ChangeReport {
    pub routes_changed: usize,
    pub endpoints_added: Vec<String>,
    pub endpoints_removed: Vec<String>,
    pub snapshots_published: usize,
}
