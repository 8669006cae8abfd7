//! The pieces of a node's config that requests carry: a peer node, a pod (endpoint). The
//! daemon's config (`vrouter::control::config`) is built of these.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use vrouter_types::{IpipMode, Ipv4Prefix, MacAddr};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    /// The peer node's IP (its tunnel endpoint; BGP-mode next hop when on our subnet).
    pub ip: Ipv4Addr,
    /// Its pod blocks.
    #[serde(default)]
    pub pod_blocks: Vec<Ipv4Prefix>,
    /// Overrides `node.ipip_mode` for this peer.
    #[serde(default)]
    pub ipip_mode: Option<IpipMode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub name: String,
    /// The TAP vrouter creates for this pod.
    pub tap: String,
    /// Network namespace to move the TAP into (configured there as the pod's interface).
    #[serde(default)]
    pub netns: Option<String>,
    /// Interface name inside the namespace.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// The pod's MAC (set on its interface).
    pub mac: MacAddr,
    pub addrs: Vec<Ipv4Addr>,
    #[serde(default = "default_pod_mtu")]
    pub mtu: u16,
    #[serde(default)]
    pub ingress: Vec<String>,
    #[serde(default)]
    pub egress: Vec<String>,
}

impl EndpointConfig {
    /// Whether `other` is this endpoint but for its policy lists: the same port (TAP,
    /// namespace, interface, MAC, addresses, MTU), which a change of policy keeps.
    pub fn same_port(&self, other: &EndpointConfig) -> bool {
        let bare = |e: &EndpointConfig| EndpointConfig { ingress: vec![], egress: vec![], ..e.clone() };
        bare(self) == bare(other)
    }
}

fn default_ifname() -> String {
    "eth0".into()
}
fn default_pod_mtu() -> u16 {
    DEFAULT_POD_MTU
}

/// A pod interface's MTU unless told otherwise: 1500 less 20 bytes, room for IPIP.
pub const DEFAULT_POD_MTU: u16 = 1480;
/// The smallest MTU vrouter takes (an IPv4 host must accept 576-byte datagrams, RFC 791).
pub const MIN_MTU: u16 = 576;
/// Largest IP MTU vrouter takes: a jumbo underlay. Up to 3,826 a frame fits one 4 KiB AF_XDP
/// chunk; above, frames span chains of chunks (multi-buffer AF_XDP, kernel 6.6 or later).
pub const MAX_MTU: u16 = 9000;
