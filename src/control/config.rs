//! The node configuration file (TOML): what a node is, its ports, peers, pods, routes and
//! policies. Parsed whole and validated whole; on any error nothing is applied, and the error
//! names the file, the field and what is valid. `docs/config.md` documents every field.

use std::collections::{BTreeMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vrouter_core::acl::{PolicyConfig, Rule};
use vrouter_core::dataplane::state::IpipMode;
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::wire::MacAddr;

// Defined with the layer that uses them (config sits above port and worker).
pub use crate::port::afxdp::{BindMode, XdpMode};
pub use crate::worker::IdleMode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    #[serde(default)]
    pub uplink: Option<UplinkConfig>,
    #[serde(default)]
    pub host: Option<HostConfig>,
    #[serde(default)]
    pub workers: WorkersConfig,
    /// Pod blocks besides `node.pod_block`, changed live by `apply` (the node agent's blocks
    /// from IPAM; a /32 is an address borrowed from another node's block).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_blocks: Vec<Ipv4Prefix>,
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub neighbours: Vec<NeighbourConfig>,
    #[serde(default)]
    pub global_rules: Vec<Rule>,
    #[serde(default)]
    pub policies: BTreeMap<String, Vec<Rule>>,
    #[serde(default)]
    pub control: ControlConfig,
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    #[serde(default)]
    pub kernel_routes: Option<KernelRoutesConfig>,
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    #[serde(default)]
    pub neigh: NeighTableConfig,
}

/// The uplink's neighbour (ARP) cache (read at start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighTableConfig {
    #[serde(default = "default_neigh_capacity")]
    pub capacity: usize,
    /// Unresolved entries one sender may have created (see `neigh::table`).
    #[serde(default = "default_unresolved_per_source")]
    pub unresolved_per_source: usize,
}

fn default_neigh_capacity() -> usize {
    vrouter_core::neigh::NeighConfig::default().capacity
}
fn default_unresolved_per_source() -> usize {
    vrouter_core::neigh::NeighConfig::default().unresolved_per_source
}

impl Default for NeighTableConfig {
    fn default() -> Self {
        NeighTableConfig { capacity: default_neigh_capacity(), unresolved_per_source: default_unresolved_per_source() }
    }
}

impl NeighTableConfig {
    pub fn table_config(&self) -> vrouter_core::neigh::NeighConfig {
        vrouter_core::neigh::NeighConfig {
            capacity: self.capacity,
            unresolved_per_source: self.unresolved_per_source,
            ..Default::default()
        }
    }
}

/// Connection tracking (one table per worker; read at start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackConfig {
    /// Connections per worker.
    #[serde(default = "default_ct_capacity")]
    pub capacity: usize,
    /// The most of `capacity` one pod may hold, in percent (100: no cap).
    #[serde(default = "default_ct_share")]
    pub endpoint_share_percent: u8,
}

fn default_ct_capacity() -> usize {
    1 << 16
}
fn default_ct_share() -> u8 {
    50
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig { capacity: default_ct_capacity(), endpoint_share_percent: default_ct_share() }
    }
}

/// The control socket `vrouterctl` talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Path of the Unix socket; empty: no control socket.
    #[serde(default = "default_socket")]
    pub socket: String,
    /// Group (name or number) allowed to use the socket besides root; the socket is mode 0660.
    #[serde(default)]
    pub group: Option<String>,
}

pub use vrouter_api::DEFAULT_SOCKET;

fn default_socket() -> String {
    DEFAULT_SOCKET.into()
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig { socket: default_socket(), group: None }
    }
}

/// The Prometheus endpoint (off unless configured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `GET /metrics` on, e.g. "127.0.0.1:9420".
    pub listen: std::net::SocketAddr,
    /// The node's BIRD control socket: its BGP sessions are added to each scrape
    /// (`vrouter_bgp_*`, read from BIRD at scrape time, `vrouter_bgp_bird_up 0` while it is down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bird_socket: Option<std::path::PathBuf>,
}

/// Importing routes from a kernel routing table (where BIRD programs what it learns).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRoutesConfig {
    /// Kernel table id (254 is `main`).
    #[serde(default = "main_table")]
    pub table: u32,
    /// Routes through this device are IPIP tunnels to their gateway (Calico's `tunl0`).
    #[serde(default = "default_tunnel_device")]
    pub tunnel_device: String,
    /// Devices whose routes mean "out of the uplink", besides the uplink device itself and the
    /// host TAP (where the kernel sees the node's subnet).
    #[serde(default)]
    pub uplink_aliases: Vec<String>,
}

fn main_table() -> u32 {
    254
}
fn default_tunnel_device() -> String {
    "tunl0".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub name: String,
    /// The node IP: our address on the uplink and the IPIP tunnel endpoint.
    pub ip: Ipv4Addr,
    /// The node's subnet on the uplink (decides CrossSubnet encapsulation).
    pub subnet: Ipv4Prefix,
    /// This node's static pod block (optional: a node driven by the agent has top-level
    /// `pod_blocks` instead); its aggregate is blackholed (pods not present are unreachable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_block: Option<Ipv4Prefix>,
    /// The gateway pods use (answered by proxy ARP).
    #[serde(default = "default_gateway")]
    pub pod_gateway: Ipv4Addr,
    /// Default IPIP mode for peers: Always, CrossSubnet or Never.
    #[serde(default = "default_mode")]
    pub ipip_mode: IpipMode,
    /// The underlay default gateway on the uplink, if any.
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// Reverse-path check of IPIP inner sources: strict (routed back through the sending peer)
    /// or loose (any route).
    #[serde(default)]
    pub ipip_rpf: RpfMode,
}

/// How decapsulated inner sources are checked against the FIB.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum RpfMode {
    /// The inner source must be the peer itself or routed back through that peer.
    #[default]
    Strict,
    /// The inner source must have a route (not unreachable, prohibit or blackhole).
    Loose,
}

fn default_gateway() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 1, 1)
}
fn default_mode() -> IpipMode {
    IpipMode::CrossSubnet
}
fn default_mtu() -> u16 {
    1500
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// The netdev vrouter drives through AF_XDP.
    pub device: String,
    /// RX/TX queues to bind (one AF_XDP socket and one worker each); must not exceed the
    /// device's queue count.
    #[serde(default = "one")]
    pub queues: u32,
    #[serde(default)]
    pub xdp_mode: XdpMode,
    /// Zero-copy or copy-mode AF_XDP sockets (auto: zero-copy where the driver can).
    #[serde(default)]
    pub bind: BindMode,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Frames allowed to wait on each TX ring (32..=2048): when the device drains slower than
    /// vrouter forwards, more are dropped (`tx/full`) instead of queued. Lower: less delay.
    #[serde(default = "default_tx_queue")]
    pub tx_queue: usize,
}

fn default_tx_queue() -> usize {
    crate::port::afxdp::DEFAULT_TX_QUEUE
}

pub use vrouter_api::config::{MAX_MTU, MIN_MTU};
// The pipeline's own frames (fragments, held frames) take a frame of any MTU vrouter accepts.
const _: () = assert!(
    vrouter_core::dataplane::HEADROOM + vrouter_core::wire::ethernet::HEADER_LEN + MAX_MTU as usize
        <= vrouter_core::dataplane::FRAME_BUF_SIZE,
    "MAX_MTU must fit the pipeline's frame buffers"
);

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Name of the TAP vrouter creates for the node's kernel; it gets the node IP and the
    /// uplink's MAC, and host-bound traffic is punted to it.
    pub tap: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    #[serde(default)]
    pub idle: IdleMode,
    /// Cores to pin workers to, in order; empty: no pinning.
    #[serde(default)]
    pub cores: Vec<usize>,
    /// Microseconds of empty polls before an adaptive worker sleeps.
    #[serde(default = "default_spin")]
    pub spin_us: u64,
    /// ICMP errors each worker may send per second, and at once (RFC 1812 4.3.2.8).
    #[serde(default = "default_icmp_rate")]
    pub icmp_rate: u32,
    #[serde(default = "default_icmp_burst")]
    pub icmp_burst: u32,
    /// The same, per destination of the errors (one sender cannot use up the rest's share).
    #[serde(default = "default_icmp_rate_per_dest")]
    pub icmp_rate_per_dest: u32,
    #[serde(default = "default_icmp_burst_per_dest")]
    pub icmp_burst_per_dest: u32,
    /// Whether a local pod's policy judges traffic between it and the node's own kernel.
    #[serde(default)]
    pub host_pod_policy: HostPodPolicy,
}

/// Policy for traffic between a local pod and its node (kubelet probes, hostNetwork pods).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum HostPodPolicy {
    /// Always allowed, whatever the pod's policy (Kubernetes' rule).
    #[default]
    Allow,
    /// Judged by the pod's ingress (node -> pod) and egress (pod -> node) policy.
    Enforce,
}

fn default_icmp_rate() -> u32 {
    vrouter_core::dataplane::PipelineConfig::default().icmp_rate_per_sec
}
fn default_icmp_burst() -> u32 {
    vrouter_core::dataplane::PipelineConfig::default().icmp_burst
}
fn default_icmp_rate_per_dest() -> u32 {
    vrouter_core::dataplane::PipelineConfig::default().icmp_rate_per_dest
}
fn default_icmp_burst_per_dest() -> u32 {
    vrouter_core::dataplane::PipelineConfig::default().icmp_burst_per_dest
}

impl WorkersConfig {
    /// The pipeline settings this section gives (the rest at their defaults).
    pub fn pipeline(&self) -> vrouter_core::dataplane::PipelineConfig {
        vrouter_core::dataplane::PipelineConfig {
            icmp_rate_per_sec: self.icmp_rate,
            icmp_burst: self.icmp_burst,
            icmp_rate_per_dest: self.icmp_rate_per_dest,
            icmp_burst_per_dest: self.icmp_burst_per_dest,
            enforce_host_pod_policy: self.host_pod_policy == HostPodPolicy::Enforce,
            ..Default::default()
        }
    }
}

fn default_spin() -> u64 {
    200
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            idle: IdleMode::default(),
            cores: vec![],
            spin_us: default_spin(),
            icmp_rate: default_icmp_rate(),
            icmp_burst: default_icmp_burst(),
            icmp_rate_per_dest: default_icmp_rate_per_dest(),
            icmp_burst_per_dest: default_icmp_burst_per_dest(),
            host_pod_policy: HostPodPolicy::default(),
        }
    }
}

pub use vrouter_api::{EndpointConfig, PeerConfig};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub prefix: Ipv4Prefix,
    /// A neighbour on the uplink.
    #[serde(default)]
    pub via: Option<Ipv4Addr>,
    /// Drop silently.
    #[serde(default)]
    pub blackhole: bool,
    /// Drop and answer ICMP net unreachable.
    #[serde(default)]
    pub unreachable: bool,
    /// Drop and answer ICMP communication administratively prohibited.
    #[serde(default)]
    pub prohibit: bool,
    /// Deliver to the node's kernel.
    #[serde(default)]
    pub host: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighbourConfig {
    pub ip: Ipv4Addr,
    pub mac: MacAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {err}")]
    Read { file: PathBuf, err: std::io::Error },
    #[error("{file}: {msg}")]
    Parse { file: PathBuf, msg: String },
    #[error("{file}: {field}: {msg}")]
    Invalid { file: PathBuf, field: String, msg: String },
}

impl Config {
    /// Reads, parses and validates `path`, and checks it against this machine where a file
    /// alone cannot say (`workers.cores`, see [`Config::check_cores`]): what `check-config`
    /// and `run` use.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read { file: path.into(), err })?;
        let cfg = Config::parse(&text, path)?;
        cfg.check_cores(&usable_cores()).map_err(|(field, msg)| ConfigError::Invalid {
            file: path.into(),
            field,
            msg,
        })?;
        Ok(cfg)
    }

    /// Every `workers.cores` entry is one of `usable` (the cores this process may run on, its
    /// affinity mask, for [`Config::load`]). Apart from [`Config::validate`], which depends on
    /// the file alone.
    pub fn check_cores(&self, usable: &[usize]) -> Result<(), (String, String)> {
        match self.workers.cores.iter().enumerate().find(|(_, c)| !usable.contains(c)) {
            Some((i, c)) => Err((
                format!("workers.cores[{i}]"),
                format!("core {c} is not one this machine lets vrouter run on (usable: {})", core_list(usable)),
            )),
            None => Ok(()),
        }
    }

    /// Parses and validates; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { file: file.into(), msg: e.to_string() })?;
        cfg.validate().map_err(|(field, msg)| ConfigError::Invalid { file: file.into(), field, msg })?;
        Ok(cfg)
    }

    /// Cross-field checks serde cannot express.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |f: &str, m: String| Err((f.to_string(), m));
        let node_ip = u32::from(self.node.ip);
        if !self.node.subnet.contains(node_ip) {
            return err("node.ip", format!("{} is not inside node.subnet {}", self.node.ip, self.node.subnet));
        }
        let subnet = self.node.subnet;
        if subnet.len() <= 30 && (node_ip == subnet.addr() || node_ip == subnet.addr() | !subnet.mask()) {
            let which = if node_ip == subnet.addr() { "network" } else { "broadcast" };
            return err("node.ip", format!("{} is the {which} address of node.subnet {subnet}", self.node.ip));
        }
        let mut seen_blocks = HashSet::new();
        for (field, pb) in self.pod_block_fields() {
            let sn = subnet;
            if (pb.len() <= sn.len() && pb.contains(sn.addr())) || (sn.len() <= pb.len() && sn.contains(pb.addr())) {
                return err(
                    &field,
                    format!("{pb} overlaps node.subnet {sn}: pods' addresses must be apart from the uplink's subnet"),
                );
            }
            if !seen_blocks.insert(pb) {
                return err(&field, format!("{pb} is listed twice (node.pod_block and pod_blocks together)"));
            }
        }
        if let Some(g) = self.node.gateway {
            if !self.node.subnet.contains(u32::from(g)) {
                return err("node.gateway", format!("{g} must be on node.subnet {} (on-link)", self.node.subnet));
            }
            if g == self.node.ip {
                return err("node.gateway", format!("{g} is node.ip itself; give the underlay router's address"));
            }
        }
        if let Some(h) = &self.host {
            if h.tap.is_empty() || h.tap.len() > 15 {
                return err("host.tap", format!("'{}' must be 1..=15 characters (a Linux interface name)", h.tap));
            }
            if self.uplink.as_ref().is_some_and(|u| u.device == h.tap) {
                return err("host.tap", format!("'{}' is the uplink device; name a new TAP", h.tap));
            }
            if let Some(e) = self.endpoints.iter().find(|e| e.tap == h.tap) {
                return err(
                    "host.tap",
                    format!("'{}' is also the TAP of endpoint {}; each TAP needs its own name", h.tap, e.name),
                );
            }
        }
        if let Some(u) = &self.uplink {
            if u.queues == 0 || u.queues > 64 {
                return err("uplink.queues", format!("{} must be 1..=64", u.queues));
            }
            if u.bind == BindMode::ZeroCopy && u.xdp_mode == XdpMode::Generic {
                return err(
                    "uplink.bind",
                    "\"zerocopy\" needs the driver's XDP, and xdp_mode = \"generic\" copies every frame; use xdp_mode = \"native\" or \"auto\", or bind = \"auto\" or \"copy\"".to_string(),
                );
            }
            if !(32..=crate::port::afxdp::TX_RING).contains(&u.tx_queue) {
                return err("uplink.tx_queue", format!("{} must be 32..={}", u.tx_queue, crate::port::afxdp::TX_RING));
            }
            if !(MIN_MTU..=MAX_MTU).contains(&u.mtu) {
                return err("uplink.mtu", format!("{} must be {MIN_MTU}..={MAX_MTU}", u.mtu));
            }
        }
        if !(1..=1 << 24).contains(&self.conntrack.capacity) {
            return err("conntrack.capacity", format!("{} must be 1..=16777216", self.conntrack.capacity));
        }
        if !(1..=100).contains(&self.conntrack.endpoint_share_percent) {
            return err(
                "conntrack.endpoint_share_percent",
                format!("{} must be 1..=100 (100: no per-pod cap)", self.conntrack.endpoint_share_percent),
            );
        }
        if !(1..=1 << 24).contains(&self.neigh.capacity) {
            return err("neigh.capacity", format!("{} must be 1..=16777216", self.neigh.capacity));
        }
        if !(1..=self.neigh.capacity).contains(&self.neigh.unresolved_per_source) {
            return err(
                "neigh.unresolved_per_source",
                format!("{} must be 1..=neigh.capacity ({})", self.neigh.unresolved_per_source, self.neigh.capacity),
            );
        }
        let mut names = HashSet::new();
        let mut taps = HashSet::new();
        let mut addrs = HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            let f = |x: &str| format!("endpoints[{i}] ({}).{x}", e.name);
            if !names.insert(e.name.as_str()) {
                return err(&f("name"), "duplicate endpoint name".into());
            }
            // `<namespace>/<workload endpoint>` (what the CNI plugin and the agent name pods) is
            // fine; blanks and control characters would garble logs and tables.
            if e.name.is_empty() || e.name.len() > 253 || e.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return err(&f("name"), "must be 1..=253 characters without blanks or control characters".into());
            }
            if let Some(ns) = &e.netns {
                if crate::port::netns_path(ns).is_none() {
                    return err(
                        &f("netns"),
                        format!("'{ns}' must be a namespace name under /run/netns (no '/') or an absolute path without '.' or '..' components (e.g. /run/netns/cni-1234 or /proc/42/ns/net)"),
                    );
                }
            }
            if e.tap.is_empty() || e.tap.len() > 15 {
                return err(&f("tap"), format!("'{}' must be 1..=15 characters (a Linux interface name)", e.tap));
            }
            if e.ifname.is_empty() || e.ifname.len() > 15 || e.ifname.contains(['/', ' ']) {
                return err(
                    &f("ifname"),
                    format!("'{}' must be 1..=15 characters without '/' or spaces (a Linux interface name)", e.ifname),
                );
            }
            if !taps.insert(e.tap.as_str()) {
                return err(&f("tap"), format!("'{}' is used by another endpoint", e.tap));
            }
            if e.addrs.is_empty() {
                return err(&f("addrs"), "at least one address is needed".into());
            }
            for a in &e.addrs {
                if !self.pod_blocks().iter().any(|b| b.contains(u32::from(*a))) {
                    let blocks: Vec<String> = self.pod_blocks().iter().map(|b| b.to_string()).collect();
                    let blocks = if blocks.is_empty() { "none".to_string() } else { blocks.join(", ") };
                    return err(
                        &f("addrs"),
                        format!("{a} is outside node.pod_block and pod_blocks (this node's blocks: {blocks})"),
                    );
                }
                if !addrs.insert(*a) {
                    return err(&f("addrs"), format!("{a} belongs to another endpoint"));
                }
            }
            if !e.mac.is_unicast() {
                return err(&f("mac"), format!("{} must be a unicast MAC", e.mac));
            }
            if !(MIN_MTU..=MAX_MTU).contains(&e.mtu) {
                return err(&f("mtu"), format!("{} must be {MIN_MTU}..={MAX_MTU}", e.mtu));
            }
            for p in e.ingress.iter().chain(&e.egress) {
                if !self.policies.contains_key(p) {
                    let known: Vec<_> = self.policies.keys().cloned().collect();
                    return err(&f("ingress/egress"), format!("unknown policy '{p}' (defined: {})", known.join(", ")));
                }
            }
        }
        let mut peer_ips = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let f = |x: &str| format!("peers[{i}] ({}).{x}", p.name);
            if p.ip == self.node.ip || !peer_ips.insert(p.ip) {
                return err(&f("ip"), format!("{} is our node IP or another peer's", p.ip));
            }
            let mode = p.ipip_mode.unwrap_or(self.node.ipip_mode);
            let encap = mode.encapsulates(self.node.subnet, u32::from(p.ip));
            if !encap && !self.node.subnet.contains(u32::from(p.ip)) && self.node.gateway.is_none() {
                return err(
                    &f("ip"),
                    format!("{} is off our subnet with IPIP mode {mode:?} and no node.gateway", p.ip),
                );
            }
            if encap && !self.node.subnet.contains(u32::from(p.ip)) && self.node.gateway.is_none() {
                return err(&f("ip"), format!("{} is off our subnet: IPIP to it needs node.gateway", p.ip));
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            let kinds =
                r.via.is_some() as u8 + r.blackhole as u8 + r.unreachable as u8 + r.prohibit as u8 + r.host as u8;
            if kinds != 1 {
                return err(
                    &format!("routes[{i}] ({})", r.prefix),
                    "give exactly one of via, blackhole, unreachable, prohibit, host".into(),
                );
            }
            if let Some(v) = r.via {
                if !self.node.subnet.contains(u32::from(v)) {
                    return err(
                        &format!("routes[{i}].via"),
                        format!("{v} must be on node.subnet {}", self.node.subnet),
                    );
                }
                if v == self.node.ip {
                    return err(
                        &format!("routes[{i}].via"),
                        format!("{v} is node.ip itself: a next hop must be another host on node.subnet (or use host = true)"),
                    );
                }
            }
            if r.host && self.host.is_none() {
                return err(&format!("routes[{i}].host"), "needs a [host] tap".into());
            }
        }
        if let Some(k) = &self.kernel_routes {
            if k.table == 0 || k.table == 255 {
                return err(
                    "kernel_routes.table",
                    format!("{} is not a routing table to import (1..=254, 256..)", k.table),
                );
            }
        }
        if self.control.socket.len() > 100 {
            return err("control.socket", "a Unix socket path must be shorter than 108 bytes".into());
        }
        // Policy rules compile now so that errors surface at check time.
        vrouter_core::acl::PolicySet::compile(&self.policy_config(), 0)
            .map_err(|e| ("policies".to_string(), e.to_string()))?;
        Ok(())
    }

    /// Why the uplink device cannot carry `uplink.mtu`, from its MTU in sysfs (`None` when it
    /// can, or there is no such device: that is said elsewhere). A device MTU below it would
    /// lose bigger frames on the way out, unseen by vrouter's counters.
    pub fn uplink_mtu_problem(&self) -> Option<String> {
        let u = self.uplink.as_ref()?;
        let have = std::fs::read_to_string(format!("/sys/class/net/{}/mtu", u.device)).ok()?;
        mtu_problem(&u.device, have.trim().parse().ok()?, u.mtu)
    }

    /// Devices, namespaces, groups and facilities the config needs from this machine
    /// (`vrouter check-config --env`): one line per problem, empty when all is there. Run in
    /// the namespace the daemon will run in.
    pub fn check_env(&self) -> Vec<String> {
        let mut bad = Vec::new();
        let sys = |dev: &str, f: &str| std::fs::read_to_string(format!("/sys/class/net/{dev}/{f}"));
        if let Some(u) = &self.uplink {
            match sys(&u.device, "flags") {
                Err(_) => bad.push(format!("uplink.device: no device '{}' in this network namespace", u.device)),
                Ok(flags) => {
                    let up = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).is_ok_and(|f| f & 1 != 0);
                    if !up {
                        bad.push(format!("uplink.device: '{}' is down (ip link set {} up)", u.device, u.device));
                    }
                }
            }
            bad.extend(self.uplink_mtu_problem());
        }
        let taps = self.host.iter().map(|h| ("host.tap".to_string(), &h.tap));
        let pods = self.endpoints.iter().map(|e| (format!("endpoints ({}).tap", e.name), &e.tap));
        for (field, tap) in taps.chain(pods) {
            if sys(tap, "flags").is_ok() {
                bad.push(format!("{field}: a device '{tap}' exists already; vrouter creates its TAPs itself"));
            }
        }
        if (self.host.is_some() || !self.endpoints.is_empty()) && !Path::new("/dev/net/tun").exists() {
            bad.push("TAPs need /dev/net/tun (modprobe tun)".into());
        }
        for e in &self.endpoints {
            if let Some(ns) = &e.netns {
                if !crate::port::netns_path(ns).is_some_and(|p| p.exists()) {
                    let fix =
                        if ns.starts_with('/') { "no such file".to_string() } else { format!("ip netns add {ns}") };
                    bad.push(format!("endpoints ({}).netns: no namespace '{ns}' ({fix})", e.name));
                }
            }
        }
        if let Some(g) = &self.control.group {
            if g.parse::<u32>().is_err() && !matches!(nix::unistd::Group::from_name(g), Ok(Some(_))) {
                bad.push(format!("control.group: no group '{g}' (groupadd {g})"));
            }
        }
        if !nix::unistd::geteuid().is_root() {
            bad.push("not root: `vrouter run` needs root (AF_XDP, TAPs, namespaces)".into());
        }
        bad
    }

    /// This node's pod blocks: `node.pod_block` (if any), then `pod_blocks`.
    pub fn pod_blocks(&self) -> Vec<Ipv4Prefix> {
        self.node.pod_block.iter().chain(&self.pod_blocks).copied().collect()
    }

    /// [`Config::pod_blocks`] with the field each comes from, for errors.
    fn pod_block_fields(&self) -> impl Iterator<Item = (String, Ipv4Prefix)> + '_ {
        let node = self.node.pod_block.map(|b| ("node.pod_block".to_string(), b));
        node.into_iter().chain(self.pod_blocks.iter().enumerate().map(|(i, b)| (format!("pod_blocks[{i}]"), *b)))
    }

    /// The policy part, with endpoints in the order of `endpoints`.
    pub fn policy_config(&self) -> PolicyConfig {
        PolicyConfig {
            global: self.global_rules.clone(),
            policies: self.policies.clone(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| vrouter_core::acl::EndpointPolicy { ingress: e.ingress.clone(), egress: e.egress.clone() })
                .collect(),
        }
    }
}

/// Cores this process may run on (its affinity mask).
fn usable_cores() -> Vec<usize> {
    core_affinity::get_core_ids().unwrap_or_default().into_iter().map(|c| c.id).collect()
}

fn core_list(cores: &[usize]) -> String {
    match (cores.first(), cores.last()) {
        (Some(a), Some(b)) if b - a + 1 == cores.len() && cores.len() > 2 => format!("{a}-{b}"),
        _ => cores.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(","),
    }
}

fn mtu_problem(dev: &str, device_mtu: u32, mtu: u16) -> Option<String> {
    (device_mtu < u32::from(mtu)).then(|| {
        format!(
            "uplink.mtu: {mtu} is above {dev}'s MTU {device_mtu}, which would lose bigger frames: raise the device's (ip link set dev {dev} mtu {mtu}) or lower uplink.mtu"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    const NODE: &str = r#"
[node]
name = "n1"
ip = "192.168.1.10"
subnet = "192.168.1.0/24"
pod_block = "10.244.1.0/26"
"#;

    #[test]
    fn shipped_examples_are_valid() {
        for f in ["single-node.toml", "bgp-pair-node1.toml", "ipip-crosssubnet-node3.toml"] {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(f);
            Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn minimal_config_gets_calico_defaults() {
        let c = parse(NODE).unwrap();
        assert_eq!(c.node.pod_gateway, Ipv4Addr::new(169, 254, 1, 1));
        assert_eq!(c.node.ipip_mode, IpipMode::CrossSubnet);
        assert_eq!(c.workers.idle, IdleMode::Adaptive);
    }

    #[test]
    fn icmp_rate_limits_and_rpf_mode_are_configurable() {
        let c = parse(NODE).unwrap();
        assert_eq!(c.node.ipip_rpf, RpfMode::Strict);
        let d = vrouter_core::dataplane::PipelineConfig::default();
        let p = c.workers.pipeline();
        assert_eq!((p.icmp_rate_per_sec, p.icmp_burst), (d.icmp_rate_per_sec, d.icmp_burst));
        assert_eq!((p.icmp_rate_per_dest, p.icmp_burst_per_dest), (d.icmp_rate_per_dest, d.icmp_burst_per_dest));
        let text = format!(
            "{}ipip_rpf = \"loose\"\n[workers]\nicmp_rate = 50\nicmp_burst = 5\nicmp_rate_per_dest = 2\nicmp_burst_per_dest = 1\n",
            NODE
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.node.ipip_rpf, RpfMode::Loose);
        let p = c.workers.pipeline();
        assert_eq!((p.icmp_rate_per_sec, p.icmp_burst, p.icmp_rate_per_dest, p.icmp_burst_per_dest), (50, 5, 2, 1));
    }

    #[test]
    fn host_pod_policy_is_allow_unless_set_to_enforce() {
        assert!(!parse(NODE).unwrap().workers.pipeline().enforce_host_pod_policy);
        let c = parse(&format!("{NODE}[workers]\nhost_pod_policy = \"enforce\"\n")).unwrap();
        assert!(c.workers.pipeline().enforce_host_pod_policy);
        let c = parse(&format!("{NODE}[workers]\nhost_pod_policy = \"allow\"\n")).unwrap();
        assert!(!c.workers.pipeline().enforce_host_pod_policy);
        assert!(parse(&format!("{NODE}[workers]\nhost_pod_policy = \"deny\"\n")).is_err());
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_file_field_and_what_is_valid() {
        let e = err(&NODE.replace("192.168.1.10", "10.0.0.1"));
        assert!(e.starts_with("test.toml: node.ip: 10.0.0.1 is not inside node.subnet"), "{e}");
        let e = err(&NODE.replace("/26", "/33"));
        assert!(e.contains("test.toml") && e.contains("pod_block") && e.contains("0..=32"), "{e}");
        let e = err(&format!("{NODE}\nbogus = 1\n"));
        assert!(e.contains("unknown field `bogus`"), "{e}");
        let e = err(&format!("{NODE}\n[uplink]\ndevice = \"eth1\"\nqueues = 0\n"));
        assert!(e.contains("uplink.queues: 0 must be 1..=64"), "{e}");
        let e = err(&format!("{NODE}\n[uplink]\ndevice = \"eth1\"\ntx_queue = 8\n"));
        assert!(e.contains("uplink.tx_queue: 8 must be 32..=2048"), "{e}");
        let e = err(&format!("{NODE}\n[uplink]\ndevice = \"eth1\"\nmtu = 9001\n"));
        assert!(e.contains("uplink.mtu: 9001 must be 576..=9000"), "{e}");
        // Several queues with policy: each flow meets one worker (handoff), so it is allowed.
        assert!(parse(&format!(
            "{NODE}\n[uplink]\ndevice = \"eth1\"\nqueues = 2\n[[global_rules]]\naction = \"deny\"\n"
        ))
        .is_ok());
        let e = err(&format!("{NODE}\n[uplink]\ndevice = \"eth1\"\nxdp_mode = \"turbo\"\n"));
        assert!(e.contains("unknown variant `turbo`"), "{e}");
    }

    #[test]
    fn uplink_bind_defaults_to_auto_and_zerocopy_is_refused_with_generic_xdp() {
        let up = |extra: &str| format!("{NODE}\n[uplink]\ndevice = \"eth1\"\n{extra}");
        assert_eq!(parse(&up("")).unwrap().uplink.unwrap().bind, BindMode::Auto);
        for (text, mode) in [("auto", BindMode::Auto), ("zerocopy", BindMode::ZeroCopy), ("copy", BindMode::Copy)] {
            assert_eq!(parse(&up(&format!("bind = \"{text}\"\n"))).unwrap().uplink.unwrap().bind, mode);
        }
        let e = err(&up("bind = \"zero-copy\"\n"));
        assert!(e.contains("uplink.bind") || e.contains("unknown variant `zero-copy`"), "{e}");
        assert!(e.contains("`auto`, `zerocopy`, `copy`"), "the valid values: {e}");
        let e = err(&up("bind = \"zerocopy\"\nxdp_mode = \"generic\"\n"));
        assert!(e.contains("uplink.bind: \"zerocopy\" needs the driver's XDP"), "{e}");
        for ok in ["bind = \"zerocopy\"\nxdp_mode = \"native\"\n", "bind = \"copy\"\nxdp_mode = \"generic\"\n"] {
            assert!(parse(&up(ok)).is_ok(), "{ok}");
        }
        // Written back the way it is read (the lab and perf lab serialize configs).
        let c = parse(&up("bind = \"zerocopy\"\n")).unwrap();
        assert!(toml::to_string(&c).unwrap().contains("bind = \"zerocopy\""));
    }

    #[test]
    fn table_limits_have_defaults_and_are_checked() {
        let c = parse(NODE).unwrap();
        assert_eq!((c.conntrack.capacity, c.conntrack.endpoint_share_percent), (65536, 50));
        let c = parse(&format!("{NODE}\n[conntrack]\ncapacity = 1000\nendpoint_share_percent = 100\n")).unwrap();
        assert_eq!((c.conntrack.capacity, c.conntrack.endpoint_share_percent), (1000, 100));
        let e = err(&format!("{NODE}\n[conntrack]\nendpoint_share_percent = 0\n"));
        assert!(e.contains("conntrack.endpoint_share_percent: 0 must be 1..=100"), "{e}");
        let e = err(&format!("{NODE}\n[conntrack]\ncapacity = 0\n"));
        assert!(e.contains("conntrack.capacity: 0 must be 1..=16777216"), "{e}");
        let c = parse(NODE).unwrap();
        assert_eq!((c.neigh.capacity, c.neigh.unresolved_per_source), (1024, 64));
        let c = parse(&format!("{NODE}\n[neigh]\ncapacity = 4096\nunresolved_per_source = 16\n")).unwrap();
        assert_eq!(c.neigh.table_config().capacity, 4096);
        let e = err(&format!("{NODE}\n[neigh]\ncapacity = 8\nunresolved_per_source = 9\n"));
        assert!(e.contains("neigh.unresolved_per_source: 9 must be 1..=neigh.capacity (8)"), "{e}");
    }

    #[test]
    fn endpoints_are_checked() {
        let ep = |addr: &str, pol: &str| {
            format!(
                "{NODE}\n[[endpoints]]\nname = \"p\"\ntap = \"tapp\"\nmac = \"0a:00:00:00:00:01\"\naddrs = [\"{addr}\"]\ningress = [{pol}]\n"
            )
        };
        assert!(parse(&ep("10.244.1.2", "")).is_ok());
        assert!(err(&ep("10.9.9.9", "")).contains("outside node.pod_block and pod_blocks"));
        assert!(err(&ep("10.244.1.2", "\"nope\"")).contains("unknown policy 'nope'"));
        let two = format!(
            "{}\n[[endpoints]]\nname = \"q\"\ntap = \"tapp\"\nmac = \"0a:00:00:00:00:02\"\naddrs = [\"10.244.1.3\"]\n",
            ep("10.244.1.2", "")
        );
        assert!(err(&two).contains("'tapp' is used by another endpoint"));
        let long = ep("10.244.1.2", "").replace("tap = \"tapp\"", "tap = \"tapp\"\nifname = \"eth0-sixteen-chr\"");
        let e = err(&long);
        assert!(e.contains("endpoints[0] (p).ifname: 'eth0-sixteen-chr' must be 1..=15 characters"), "{e}");
    }

    #[test]
    fn pod_blocks_are_optional_live_and_hold_the_endpoints() {
        let agent_node = "[node]\nname = \"n1\"\nip = \"192.168.1.10\"\nsubnet = \"192.168.1.0/24\"\n";
        let c = parse(agent_node).unwrap();
        assert_eq!((c.node.pod_block, c.pod_blocks()), (None, vec![]), "a node with no block yet");
        let pod = |a: &str| {
            format!(
                "[[endpoints]]\nname = \"default/p\"\ntap = \"tapp\"\nmac = \"0a:00:00:00:00:01\"\naddrs = [\"{a}\"]\n"
            )
        };
        let e = err(&format!("{agent_node}{}", pod("10.244.1.2")));
        assert!(e.contains("10.244.1.2 is outside node.pod_block and pod_blocks (this node's blocks: none)"), "{e}");
        let blocks = "pod_blocks = [\"10.244.1.64/26\", \"10.244.7.9/32\"]\n";
        let c = parse(&format!("{blocks}{agent_node}{}", pod("10.244.7.9"))).unwrap();
        assert_eq!(c.pod_blocks(), ["10.244.1.64/26".parse().unwrap(), "10.244.7.9/32".parse().unwrap()]);
        let c = parse(&format!("pod_blocks = [\"10.244.1.64/26\"]\n{NODE}{}", pod("10.244.1.70"))).unwrap();
        assert_eq!(c.pod_blocks().len(), 2, "node.pod_block first, then pod_blocks");
        let e = err(&format!("{blocks}{agent_node}{}", pod("10.244.1.2")));
        assert!(e.contains("(this node's blocks: 10.244.1.64/26, 10.244.7.9/32)"), "{e}");
        let e = err(&format!("pod_blocks = [\"192.168.1.128/25\"]\n{agent_node}"));
        assert!(e.contains("pod_blocks[0]: 192.168.1.128/25 overlaps node.subnet"), "{e}");
        let e = err(&format!("pod_blocks = [\"10.244.1.0/26\"]\n{NODE}"));
        assert!(e.contains("pod_blocks[0]: 10.244.1.0/26 is listed twice"), "{e}");
        // Written back the way it is read: no empty list, no pod_block when there is none.
        let text = toml::to_string(&parse(agent_node).unwrap()).unwrap();
        assert!(!text.contains("pod_block"), "{text}");
        let c = parse(&format!("{blocks}{agent_node}")).unwrap();
        assert_eq!(parse(&toml::to_string(&c).unwrap()).unwrap(), c);
    }

    #[test]
    fn endpoint_names_may_have_slashes_and_netns_may_be_a_path() {
        let pod = |name: &str, netns: &str| {
            format!(
                "{NODE}[[endpoints]]\nname = \"{name}\"\ntap = \"tapp\"\nnetns = \"{netns}\"\nmac = \"0a:00:00:00:00:01\"\naddrs = [\"10.244.1.2\"]\n"
            )
        };
        let c = parse(&pod("kube-system/n1-cni-0123456789ab-eth0", "/run/netns/netns-4f2a")).unwrap();
        assert_eq!(c.endpoints[0].netns.as_deref(), Some("/run/netns/netns-4f2a"));
        assert!(parse(&pod("p", "/var/run/netns/cni-1")).is_ok());
        assert!(parse(&pod("p", "plain")).is_ok());
        for bad in ["run/netns/x", "/run/../etc", "/"] {
            let e = err(&pod("p", bad));
            assert!(e.contains("endpoints[0] (p).netns") && e.contains("absolute path"), "{bad}: {e}");
        }
        let e = err(&pod("a b", "x"));
        assert!(e.contains("(a b).name: must be 1..=253 characters without blanks"), "{e}");
        assert!(err(&pod("", "x")).contains(".name: must be"));
    }

    #[test]
    fn routes_and_peers_are_checked() {
        let r = format!("{NODE}\n[[routes]]\nprefix = \"0.0.0.0/0\"\nvia = \"192.168.1.1\"\nblackhole = true\n");
        assert!(err(&r).contains("exactly one of via, blackhole, unreachable, prohibit, host"));
        let r = format!("{NODE}\n[[routes]]\nprefix = \"0.0.0.0/0\"\nvia = \"10.0.0.1\"\n");
        assert!(err(&r).contains("must be on node.subnet"));
        let p = format!("{NODE}\n[[peers]]\nname = \"far\"\nip = \"192.168.2.20\"\n");
        assert!(err(&p).contains("IPIP to it needs node.gateway"));
        let p = format!("{NODE}\n[[peers]]\nname = \"me\"\nip = \"192.168.1.10\"\n");
        assert!(err(&p).contains("our node IP"));
    }

    #[test]
    fn what_run_would_fail_on_is_refused_at_check_time() {
        let e = err(&NODE.replace("ip = \"192.168.1.10\"", "ip = \"192.168.1.0\""));
        assert!(e.contains("node.ip: 192.168.1.0 is the network address of node.subnet"), "{e}");
        let e = err(&NODE.replace("ip = \"192.168.1.10\"", "ip = \"192.168.1.255\""));
        assert!(e.contains("node.ip: 192.168.1.255 is the broadcast address"), "{e}");
        let e = err(&NODE.replace("10.244.1.0/26", "192.168.1.64/26"));
        assert!(e.contains("node.pod_block: 192.168.1.64/26 overlaps node.subnet 192.168.1.0/24"), "{e}");
        let e = err(&NODE.replace("10.244.1.0/26", "192.0.0.0/8"));
        assert!(e.contains("overlaps node.subnet"), "{e}");
        let e = err(&format!("{NODE}\n[[routes]]\nprefix = \"0.0.0.0/0\"\nvia = \"192.168.1.10\"\n"));
        assert!(e.contains("routes[0].via: 192.168.1.10 is node.ip itself"), "{e}");
        let e = err(&format!("{NODE}gateway = \"192.168.1.10\"\n"));
        assert!(e.contains("node.gateway: 192.168.1.10 is node.ip itself"), "{e}");
        let pod =
            "[[endpoints]]\nname = \"p\"\ntap = \"tapp\"\nmac = \"0a:00:00:00:00:01\"\naddrs = [\"10.244.1.2\"]\n";
        let e = err(&format!("{NODE}\n[host]\ntap = \"tapp\"\n{pod}"));
        assert!(e.contains("host.tap: 'tapp' is also the TAP of endpoint p"), "{e}");
        let e = err(&format!("{NODE}\n[uplink]\ndevice = \"eth1\"\n[host]\ntap = \"eth1\"\n"));
        assert!(e.contains("host.tap: 'eth1' is the uplink device"), "{e}");
    }

    #[test]
    fn cores_are_checked_against_the_usable_set_and_the_file_alone_does_not_depend_on_the_machine() {
        // No machine has core 100000: parsing (what tests and apply use) accepts it all the same.
        let c = parse(&format!("{NODE}\n[workers]\ncores = [2, 100000]\n")).unwrap();
        let (field, msg) = c.check_cores(&[0, 1, 2, 3]).unwrap_err();
        assert_eq!(field, "workers.cores[1]");
        assert_eq!(msg, "core 100000 is not one this machine lets vrouter run on (usable: 0-3)");
        let (_, msg) = c.check_cores(&[2, 5]).unwrap_err();
        assert!(msg.ends_with("(usable: 2,5)"), "{msg}");
        assert!(c.check_cores(&[2, 100000]).is_ok());
        // What check-config and run load is checked against this machine.
        let f = std::env::temp_dir().join(format!("vr-cores-{}.toml", std::process::id()));
        std::fs::write(&f, format!("{NODE}\n[workers]\ncores = [100000]\n")).unwrap();
        let e = Config::load(&f).unwrap_err().to_string();
        std::fs::remove_file(&f).unwrap();
        assert!(e.contains("workers.cores[0]: core 100000 is not one this machine lets vrouter run on"), "{e}");
    }

    #[test]
    fn check_env_names_what_is_missing_on_this_machine() {
        let text = format!(
            "{NODE}\n[uplink]\ndevice = \"vr-no-such0\"\n[control]\ngroup = \"vr-no-such-group\"\n\
             [[endpoints]]\nname = \"p\"\ntap = \"lo\"\nnetns = \"vr-no-such-ns\"\nmac = \"0a:00:00:00:00:01\"\naddrs = [\"10.244.1.2\"]\n"
        );
        let bad = parse(&text).unwrap().check_env().join("\n");
        assert!(bad.contains("uplink.device: no device 'vr-no-such0'"), "{bad}");
        assert!(bad.contains("endpoints (p).tap: a device 'lo' exists already"), "{bad}");
        assert!(bad.contains("endpoints (p).netns: no namespace 'vr-no-such-ns'"), "{bad}");
        assert!(bad.contains("control.group: no group 'vr-no-such-group'"), "{bad}");
        let ok = parse(&format!("{NODE}\n[uplink]\ndevice = \"lo\"\n")).unwrap().check_env();
        assert!(ok.iter().all(|l| !l.contains("uplink")), "{ok:?}");
    }

    #[test]
    fn an_uplink_mtu_above_the_devices_is_named() {
        let e = mtu_problem("eth1", 1500, 3500).unwrap();
        assert!(
            e.starts_with("uplink.mtu: 3500 is above eth1's MTU 1500") && e.contains("ip link set dev eth1 mtu 3500")
        );
        assert_eq!(mtu_problem("eth1", 1500, 1500), None);
        assert_eq!(mtu_problem("eth1", 9000, 3500), None);
    }

    #[test]
    fn bad_policy_rules_fail_at_check_time() {
        let p = format!("{NODE}\n[policies]\nweb = [{{ action = \"allow\", dst_ports = [\"80\"] }}]\n");
        let e = err(&p);
        assert!(e.contains("policies") && e.contains("ports need protocol"), "{e}");
    }
}
