//! The IPIP modes of a node and its peers (config, control protocol and data plane agree on
//! them; vrouter-core's `dataplane::state` re-exports [`IpipMode`]).

use crate::fib::Ipv4Prefix;

/// Calico's IPIP modes: when traffic to a remote node's pods is encapsulated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum IpipMode {
    Always,
    CrossSubnet,
    Never,
}

impl IpipMode {
    /// Whether traffic to pods on the node at `peer` is encapsulated, given our node subnet.
    /// CrossSubnet encapsulates only when the peer is outside our subnet, as Calico does.
    pub fn encapsulates(self, node_subnet: Ipv4Prefix, peer: u32) -> bool {
        match self {
            IpipMode::Always => true,
            IpipMode::Never => false,
            IpipMode::CrossSubnet => !node_subnet.contains(peer),
        }
    }
}
