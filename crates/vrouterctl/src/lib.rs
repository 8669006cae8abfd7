//! `vrouterctl` (also `vrouter ctl`): the operator's client for the control socket. Readable
//! tables by default, `--json` for scripts (the daemon's reply, as is). Exit status: 0 done,
//! 1 the daemon refused (the error says why), 2 bad arguments or no daemon to talk to.
//!
//! Built on the control protocol alone ([`vrouter_api`]): replies are read as the typed structs
//! of [`vrouter_api::reply`], never by string key, and nothing of the data plane or the daemon
//! is linked in (it starts in milliseconds and builds without clang; `vrouter ctl` in the
//! daemon's binary runs this same code).

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

#[cfg(feature = "datastore")]
mod datastore;
mod node;
use serde_json::Value;

use vrouter_api::reply as r;
use vrouter_api::{
    EndpointConfig, Envelope, NhKey, PeerConfig, Reply, ReplyError, Request, RouteSource, DEFAULT_SOCKET, VERSION,
};
use vrouter_types::acl::Rule;
use vrouter_types::{IpipMode, Ipv4Prefix, MacAddr};

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The daemon's control socket (`[control] socket` of its config); anywhere on the line.
    #[arg(long, short = 's', env = "VROUTER_SOCKET", default_value = DEFAULT_SOCKET, global = true)]
    pub socket: PathBuf,
    /// Print the daemon's JSON reply instead of tables; anywhere on the line.
    #[arg(long, global = true)]
    pub json: bool,
    /// etcd endpoints of the cluster's datastore, comma-separated (datastore commands: apply
    /// of manifests, create, replace, get, delete, ipam).
    #[arg(long, env = "ETCD_ENDPOINTS", value_delimiter = ',', default_value = "http://127.0.0.1:2379", global = true)]
    pub etcd_endpoints: Vec<String>,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Node, uptime, workers, routes, generation.
    #[command(after_help = "Example:\n  vrouterctl -s /run/vrouter/node1.sock status")]
    Status,
    /// The routing table (the winning route per prefix, its source, what it shadows), or with
    /// an address the route it uses (longest-prefix match, as the workers look it up).
    #[command(
        after_help = "Examples:\n  vrouterctl routes\n  vrouterctl routes 10.244.0.0/16 --source config\n  vrouterctl routes 10.244.2.7        # which route does this address use?"
    )]
    Routes {
        /// Only routes of this source.
        #[arg(long, value_enum)]
        source: Option<Source>,
        /// A prefix: only routes inside it. An address: the route it uses.
        target: Option<String>,
    },
    /// Add or delete a route (source `cli`).
    #[command(
        after_help = "Examples:\n  vrouterctl route add 203.0.113.0/24 via 192.168.1.1 via 192.168.1.2\n  vrouterctl route del 203.0.113.0/24"
    )]
    Route {
        #[command(subcommand)]
        cmd: RouteCmd,
    },
    /// Peer nodes: their IP, pod blocks and IPIP mode.
    #[command(after_help = "Example:\n  vrouterctl peers")]
    Peers,
    /// Add or delete a peer node.
    #[command(
        after_help = "Examples:\n  vrouterctl peer add node2 192.168.1.11 --pod-block 10.244.2.0/26\n  vrouterctl peer del node2"
    )]
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// Pods: name, port, TAP, namespace, MAC, addresses, policies.
    #[command(after_help = "Example:\n  vrouterctl endpoints")]
    Endpoints,
    /// Add or delete a pod.
    #[command(
        after_help = "Examples:\n  vrouterctl endpoint add web --tap tapweb --mac 0a:58:0a:f4:01:05 --addr 10.244.1.5 --netns web\n  vrouterctl endpoint del web"
    )]
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    /// Policies and global rules.
    #[command(after_help = "Example:\n  vrouterctl policies")]
    Policies,
    /// Define, replace or delete a policy, or replace the global rules.
    #[command(after_help = "Examples:\n  vrouterctl policy set web -f web-rules.toml\n  vrouterctl policy del web")]
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Ports with their link state (up/down; a pod's TAP removed under us is down), the
    /// uplink's XDP mode (native/generic, copy/zero-copy) and their counters.
    #[command(after_help = "Example:\n  vrouterctl ports")]
    Ports,
    /// The ARP cache; `neighbours flush [IP]` removes learnt entries (all, or IP's).
    #[command(
        alias = "neigh",
        after_help = "Examples:\n  vrouterctl neighbours\n  vrouterctl neighbours flush 192.168.1.1"
    )]
    Neighbours {
        #[command(subcommand)]
        cmd: Option<NeighCmd>,
    },
    /// Tracked connections (all workers).
    #[command(alias = "conns", after_help = "Example:\n  vrouterctl connections --limit 50")]
    Connections {
        /// Show at most this many (the total is always given).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Counters and drops by reason, per worker and in total; `counters clear` to count from
    /// zero.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  vrouterctl counters\n  vrouterctl counters clear"
    )]
    Counters {
        #[command(subcommand)]
        action: Option<CountersCmd>,
    },
    /// Drops by reason (non-zero ones; --all for every reason). docs/drops.md says what each
    /// means.
    #[command(after_help = "Example:\n  vrouterctl drops --all")]
    Drops {
        /// Every reason, zeros included.
        #[arg(long)]
        all: bool,
    },
    /// Apply a file: resource manifests (YAML/JSON documents with apiVersion and kind) go to
    /// the cluster's datastore (created or replaced); a node's TOML config goes to the node
    /// (only what differs changes; refused whole before anything is removed, see
    /// docs/control.md). The output says which.
    #[command(
        after_help = "Examples:\n  vrouterctl apply -f pools.yaml          # to etcd (--etcd-endpoints / ETCD_ENDPOINTS)\n  vrouterctl apply -f node.toml --dry-run\n  vrouterctl apply -f node.toml           # to the node (--socket)"
    )]
    Apply {
        /// Manifests (YAML/JSON, multi-document), or the whole node's TOML as `vrouter run
        /// --config` takes; `-` reads stdin.
        #[arg(short = 'f', long = "file", alias = "filename")]
        file: PathBuf,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
        /// Refuse unless the running config is still this generation (`config show --json`
        /// says it): a read-modify-write that cannot undo a change made in between.
        #[arg(long, value_name = "N")]
        if_generation: Option<u64>,
    },
    /// Create resources in the datastore from manifests (refused if one exists).
    #[cfg(feature = "datastore")]
    #[command(after_help = "Example:\n  vrouterctl create -f policy.yaml")]
    Create {
        /// Manifests (YAML/JSON, multi-document); `-` reads stdin.
        #[arg(short = 'f', long = "file", alias = "filename")]
        file: PathBuf,
    },
    /// Replace resources in the datastore (refused if one does not exist, or if its
    /// metadata.resourceVersion is stale).
    #[cfg(feature = "datastore")]
    #[command(after_help = "Example:\n  vrouterctl replace -f pool.yaml")]
    Replace {
        /// Manifests (YAML/JSON, multi-document); `-` reads stdin.
        #[arg(short = 'f', long = "file", alias = "filename")]
        file: PathBuf,
    },
    /// Show resources of the datastore: nodes, ippools, workloadendpoints (wep),
    /// networkpolicies (np), globalnetworkpolicies (gnp), profiles, bgpconfigurations
    /// (bgpconfig), bgppeers (bgpp).
    #[cfg(feature = "datastore")]
    #[command(
        after_help = "Examples:\n  vrouterctl get ippools\n  vrouterctl get wep -A -o wide\n  vrouterctl get gnp deny-all -o yaml"
    )]
    Get {
        /// The kind (calicoctl's spellings: ippool, ippools, gnp, wep, ...).
        kind: String,
        /// One resource; all of the kind without it.
        name: Option<String>,
        /// Namespace of a namespaced kind (default: default).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format (yaml and json print manifests that apply back unchanged).
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Delete resources from the datastore, by kind and name or as named in manifests.
    #[cfg(feature = "datastore")]
    #[command(after_help = "Examples:\n  vrouterctl delete gnp deny-all\n  vrouterctl delete -f policy.yaml")]
    Delete {
        /// The kind (calicoctl's spellings).
        kind: Option<String>,
        /// The resource's name.
        name: Option<String>,
        /// Namespace of a namespaced kind (default: default).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Delete what these manifests name (a resourceVersion in them must still be current).
        #[arg(short = 'f', long = "file", alias = "filename", conflicts_with_all = ["kind", "name"])]
        file: Option<PathBuf>,
        /// A resource that does not exist is not an error.
        #[arg(long)]
        skip_not_exists: bool,
    },
    /// The cluster's addresses: blocks and their use, one address, release, consistency.
    #[cfg(feature = "datastore")]
    #[command(
        after_help = "Examples:\n  vrouterctl ipam show\n  vrouterctl ipam show --ip 10.244.0.5\n  vrouterctl ipam release --ip 10.244.0.5\n  vrouterctl ipam check"
    )]
    Ipam {
        #[command(subcommand)]
        cmd: IpamCmd,
    },
    /// The node's BGP speaker (BIRD beside vrouter): `node status` shows its sessions, as
    /// `calicoctl node status` does.
    #[command(
        after_help = "Examples:\n  vrouterctl node status\n  vrouterctl node status --bird-socket /run/bird/bird.ctl --json"
    )]
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Re-read the daemon's own config file (as SIGHUP does).
    #[command(after_help = "Example:\n  vrouterctl reload")]
    Reload,
    /// The running config.
    #[command(after_help = "Example:\n  vrouterctl config show > running.toml")]
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// What each pipeline stage decided for the next N packets; `trace stop` ends a running
    /// trace or capture.
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "Examples:\n  vrouterctl trace --count 5 --port tapweb\n  vrouterctl trace stop"
    )]
    Trace {
        #[command(subcommand)]
        action: Option<TraceCmd>,
        /// Packets to trace.
        #[arg(long, short = 'c', default_value_t = 10)]
        count: u32,
        /// Only packets received on this port (name as `ports` shows it).
        #[arg(long, short = 'p')]
        port: Option<String>,
        /// Give up waiting after this many seconds (at most 600).
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Write frames of a port to a pcap file (tcpdump and Wireshark read it); `-w -` writes
    /// to stdout.
    #[command(
        after_help = "Examples:\n  vrouterctl capture --port up0 --count 100 -w up0.pcap\n  vrouterctl capture -p tapweb -c 20 -w - | tcpdump -nn -r -"
    )]
    Capture {
        /// Only frames of this port (name as `ports` shows it); all ports without it.
        #[arg(long, short = 'p')]
        port: Option<String>,
        /// Frames to capture (at most 10,000).
        #[arg(long, short = 'c', default_value_t = 100)]
        count: u32,
        /// The pcap file to write; `-` for stdout.
        #[arg(short = 'w')]
        write: PathBuf,
        /// Before processing (rx), after (tx), or both.
        #[arg(long, value_enum, default_value_t = Point::Both)]
        point: Point,
        /// Bytes kept of each frame.
        #[arg(long, default_value_t = 2048)]
        snaplen: u32,
        /// Give up waiting after this many seconds (at most 600).
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}

/// How `get` prints resources.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// The BGP sessions of the node's BIRD: peer address, type, state, since, uptime, BGP
    /// state, routes imported / refused (outside the pools) / exported, and why a session is
    /// not up.
    #[command(after_help = "Example:\n  vrouterctl node status --bird-socket /run/bird/bird.ctl")]
    Status {
        /// BIRD's control socket (its -s).
        #[arg(long, env = "BIRD_SOCKET", default_value = vrouter_bgp::DEFAULT_SOCKET)]
        bird_socket: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum IpamCmd {
    /// Blocks (affinity, addresses in use), or with --ip what holds that address.
    #[command(after_help = "Examples:\n  vrouterctl ipam show\n  vrouterctl ipam show --ip 10.244.0.5")]
    Show {
        /// One address: free or allocated, its block, handle and pod.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
    },
    /// Frees an address, or every address of a handle (a container ID).
    #[command(
        after_help = "Examples:\n  vrouterctl ipam release --ip 10.244.0.5\n  vrouterctl ipam release --handle 4f1c2a..."
    )]
    Release {
        /// The address to free.
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// Free every address of this handle (the CNI container ID).
        #[arg(long)]
        handle: Option<String>,
    },
    /// Leaks (allocated, no endpoint), duplicates, orphan handles; exit status 1 if any.
    #[command(after_help = "Example:\n  vrouterctl ipam check")]
    Check,
    /// Claims one more block for a node, from the pools it may use (as its agent or CNI
    /// plugin would once its blocks are full): pre-provisioning, and the BGP benchmark.
    #[command(after_help = "Example:\n  vrouterctl ipam claim --node node1")]
    Claim {
        /// The node's name (a `Node` in the datastore).
        #[arg(long)]
        node: String,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum Source {
    Node,
    Config,
    Cli,
    Kernel,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum Point {
    Rx,
    Tx,
    Both,
}

#[derive(Subcommand, Debug)]
pub enum TraceCmd {
    /// End the running trace and capture (whoever started them).
    #[command(after_help = "Example:\n  vrouterctl trace stop")]
    Stop,
}

#[derive(Subcommand, Debug)]
pub enum CountersCmd {
    /// Count from zero from now on (`counters` and `drops` only: the stats file and
    /// Prometheus keep counting, as counters must).
    #[command(after_help = "Example:\n  vrouterctl counters clear && sleep 10 && vrouterctl drops")]
    Clear,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// The config the node runs (TOML), with a warning on stderr when it differs from the
    /// file a reload (SIGHUP) would apply.
    #[command(after_help = "Example:\n  vrouterctl config show > running.toml")]
    Show,
}

#[derive(Subcommand, Debug)]
pub enum RouteCmd {
    /// `route add PREFIX via GW [via GW2 ...]` (several: ECMP) | blackhole | unreachable | prohibit | host
    #[command(
        after_help = "Examples:\n  vrouterctl route add 0.0.0.0/0 via 192.168.1.1\n  vrouterctl route add 203.0.113.0/24 via 192.168.1.1 via 192.168.1.2\n  vrouterctl route add 198.51.100.0/24 blackhole"
    )]
    Add {
        /// The destination, a.b.c.d/len.
        prefix: Ipv4Prefix,
        /// `via GATEWAY` (repeat for ECMP), `blackhole`, `unreachable`, `prohibit` or `host`.
        #[arg(num_args = 1.., required = true)]
        nexthop: Vec<String>,
    },
    /// Delete a route added with `route add`.
    #[command(after_help = "Example:\n  vrouterctl route del 203.0.113.0/24")]
    Del {
        /// The destination, a.b.c.d/len.
        prefix: Ipv4Prefix,
    },
    /// Withdraw every route imported from the kernel.
    #[command(after_help = "Example:\n  vrouterctl route flush-kernel")]
    FlushKernel,
}

#[derive(Subcommand, Debug)]
pub enum NeighCmd {
    /// Forget learnt neighbours (static ones stay); they are resolved again on next use.
    #[command(after_help = "Examples:\n  vrouterctl neighbours flush\n  vrouterctl neighbours flush 192.168.1.1")]
    Flush {
        /// Only this address (default: every learnt entry).
        ip: Option<Ipv4Addr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeerCmd {
    /// Add a peer node.
    #[command(
        after_help = "Example:\n  vrouterctl peer add node3 192.168.2.20 --pod-block 10.244.3.0/26 --ipip-mode always"
    )]
    Add {
        /// Its name.
        name: String,
        /// Its node IP.
        ip: Ipv4Addr,
        /// One of its pod blocks (repeat for several).
        #[arg(long = "pod-block")]
        pod_blocks: Vec<Ipv4Prefix>,
        /// Always, CrossSubnet or Never (default: node.ipip_mode).
        #[arg(long, value_parser = parse_mode)]
        ipip_mode: Option<IpipMode>,
    },
    /// Delete a peer node.
    #[command(after_help = "Example:\n  vrouterctl peer del node3")]
    Del {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    /// Add a pod: creates its TAP (and configures it in its namespace).
    #[command(
        after_help = "Example:\n  vrouterctl endpoint add web --tap tapweb --mac 0a:58:0a:f4:01:05 --addr 10.244.1.5 --netns web --ingress web"
    )]
    Add {
        /// Its name.
        name: String,
        /// The TAP to create (at most 15 characters).
        #[arg(long)]
        tap: String,
        /// The pod's MAC.
        #[arg(long)]
        mac: MacAddr,
        /// One of its addresses, in the node's pod block (repeat for several).
        #[arg(long = "addr", required = true)]
        addrs: Vec<Ipv4Addr>,
        /// The pod's network namespace (`ip netns` name): the TAP is moved there.
        #[arg(long)]
        netns: Option<String>,
        /// The interface name inside the namespace (at most 15 characters).
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// The pod interface's MTU.
        #[arg(long, default_value_t = 1480)]
        mtu: u16,
        /// A policy for traffic into the pod (repeat for several).
        #[arg(long)]
        ingress: Vec<String>,
        /// A policy for traffic from the pod (repeat for several).
        #[arg(long)]
        egress: Vec<String>,
    },
    /// Delete a pod (its TAP is removed).
    #[command(after_help = "Example:\n  vrouterctl endpoint del web")]
    Del {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Define or replace a policy from a TOML file with `rules = [ {...}, ... ]`.
    #[command(
        after_help = "Example (web.toml: rules = [{ action = \"allow\", protocol = \"tcp\", dst_ports = [\"80\"] }]):\n  vrouterctl policy set web -f web.toml"
    )]
    Set {
        /// The policy's name.
        name: String,
        /// TOML with `rules = [...]`.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Delete a policy (no pod may use it).
    #[command(after_help = "Example:\n  vrouterctl policy del web")]
    Del {
        /// The policy's name.
        name: String,
    },
    /// Replace the global rules from a TOML file with `rules = [...]`.
    #[command(after_help = "Example:\n  vrouterctl policy set-global -f global.toml")]
    SetGlobal {
        /// TOML with `rules = [...]`.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
}

fn parse_mode(s: &str) -> Result<IpipMode, String> {
    match s.to_ascii_lowercase().as_str() {
        "always" => Ok(IpipMode::Always),
        "crosssubnet" | "cross-subnet" => Ok(IpipMode::CrossSubnet),
        "never" => Ok(IpipMode::Never),
        _ => Err(format!("'{s}': one of Always, CrossSubnet, Never")),
    }
}

/// `via A [via B ...]` | `blackhole` | `unreachable` | `host`.
pub fn parse_nexthop(words: &[String]) -> Result<NhKey, String> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    match w.as_slice() {
        ["blackhole"] => Ok(NhKey::Blackhole),
        ["unreachable"] => Ok(NhKey::Unreachable),
        ["prohibit"] => Ok(NhKey::Prohibit),
        ["host"] => Ok(NhKey::Host),
        _ if w.len() >= 2 && w.len().is_multiple_of(2) => {
            let mut gws = Vec::new();
            for pair in w.chunks(2) {
                if pair[0] != "via" {
                    return Err(format!("expected 'via GATEWAY', got '{}'", pair[0]));
                }
                let ip = pair[1].parse::<Ipv4Addr>().map_err(|_| format!("'{}' is not an IPv4 address", pair[1]))?;
                gws.push(NhKey::Gateway(ip));
            }
            Ok(if gws.len() == 1 { gws.pop().expect("one") } else { NhKey::Ecmp(gws) })
        }
        _ => Err(format!(
            "'{}': give 'via GATEWAY' (repeat for ECMP), 'blackhole', 'unreachable', 'prohibit' or 'host'",
            words.join(" ")
        )),
    }
}

/// What `routes TARGET` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum RouteTarget {
    /// The routes inside a prefix (or all).
    Within(Option<Ipv4Prefix>),
    /// The route an address uses.
    Address(Ipv4Addr),
}

pub fn parse_route_target(t: Option<&str>) -> Result<RouteTarget, String> {
    match t {
        None => Ok(RouteTarget::Within(None)),
        Some(t) if t.contains('/') => {
            t.parse().map(|p| RouteTarget::Within(Some(p))).map_err(|e| format!("'{t}': not a prefix: {e}"))
        }
        Some(t) => t
            .parse()
            .map(RouteTarget::Address)
            .map_err(|_| format!("'{t}': give an IPv4 address (the route it uses) or a prefix a.b.c.d/len")),
    }
}

fn read_rules(file: &Path) -> Result<Vec<Rule>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        rules: Vec<Rule>,
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let r: Rules = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(r.rules)
}

/// One request, one reply.
pub fn call(socket: &Path, req: Request, timeout: Duration) -> Result<Reply, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| connect_error(socket, &e))?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = serde_json::to_vec(&Envelope { version: VERSION, request: req }).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| format!("sending: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(|e| format!("reading the reply: {e}"))?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply from the daemon ({e}): {}", reply.trim()))
}

/// Why a typed request ([`request`]) has no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The daemon could not be reached, or went away before it answered (try again later).
    Unreachable(String),
    /// It answered: refused the request, or with a result of another shape.
    Daemon(ReplyError),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(e) => f.write_str(e),
            CallError::Daemon(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for CallError {}

/// One request, its result as the [`r`] struct it answers with: for programs (the CNI plugin,
/// the node agent) that must tell a daemon that is not there from one that said no.
pub fn request<T: serde::de::DeserializeOwned>(socket: &Path, req: Request, timeout: Duration) -> Result<T, CallError> {
    let mut s = UnixStream::connect(socket).map_err(|e| CallError::Unreachable(connect_error(socket, &e)))?;
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    let mut line = serde_json::to_vec(&Envelope { version: VERSION, request: req })
        .map_err(|e| CallError::Daemon(ReplyError::Malformed(e.to_string())))?;
    line.push(b'\n');
    let gone = |what: &str, e: std::io::Error| CallError::Unreachable(format!("{}: {what}: {e}", socket.display()));
    s.write_all(&line).map_err(|e| gone("sending", e))?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(|e| gone("reading the reply", e))?;
    if reply.is_empty() {
        return Err(CallError::Unreachable(format!("{}: the daemon closed the connection", socket.display())));
    }
    let reply: Reply = serde_json::from_str(&reply)
        .map_err(|e| CallError::Daemon(ReplyError::Malformed(format!("{e}: {}", reply.trim()))))?;
    reply.into_result().map_err(CallError::Daemon)
}

/// `apply` of a whole config, compare-and-swap when `if_generation` is given: a refusal because
/// the config changed since is `CallError::Daemon(e)` with `e.is_generation_changed()`.
pub fn apply_config(
    socket: &Path,
    config: String,
    if_generation: Option<u64>,
    timeout: Duration,
) -> Result<vrouter_api::ChangeReport, CallError> {
    request(socket, Request::Apply { config, dry_run: false, file: None, if_generation }, timeout)
}

/// Why the daemon could not be reached, said so that the operator knows what to do.
pub fn connect_error(socket: &Path, e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    let at = socket.display();
    match e.kind() {
        PermissionDenied => format!(
            "permission denied on {at}: run as root or as a member of the daemon's control group (`[control] group`)"
        ),
        NotFound => format!("no daemon at {at}: no such socket (is `vrouter run` running? --socket / VROUTER_SOCKET)"),
        ConnectionRefused => {
            format!("no daemon at {at}: nothing listens on the socket (the daemon stopped?)")
        }
        _ => format!("cannot reach the daemon at {at}: {e}"),
    }
}

/// Column-aligned text.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<width$}  ", width = w[i]));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Runs one `vrouterctl` command.
pub fn run(args: CtlArgs) -> ExitCode {
    match run_inner(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("vrouterctl: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_inner(args: &CtlArgs) -> Result<bool, String> {
    let mut wait = Duration::from_secs(60);
    let req = match &args.cmd {
        CtlCmd::Status => Request::Status,
        CtlCmd::Routes { source, target } => match parse_route_target(target.as_deref())? {
            RouteTarget::Address(addr) => Request::RouteLookup { addr },
            RouteTarget::Within(within) => Request::Routes {
                source: source.map(|s| match s {
                    Source::Node => RouteSource::Node,
                    Source::Config => RouteSource::Config,
                    Source::Cli => RouteSource::Cli,
                    Source::Kernel => RouteSource::Kernel,
                }),
                within,
            },
        },
        CtlCmd::Route { cmd: RouteCmd::Add { prefix, nexthop } } => {
            Request::RouteAdd { prefix: *prefix, nexthop: parse_nexthop(nexthop)? }
        }
        CtlCmd::Route { cmd: RouteCmd::Del { prefix } } => Request::RouteDel { prefix: *prefix },
        CtlCmd::Route { cmd: RouteCmd::FlushKernel } => Request::RouteFlushKernel,
        CtlCmd::Peers => Request::Peers,
        CtlCmd::Peer { cmd: PeerCmd::Add { name, ip, pod_blocks, ipip_mode } } => Request::PeerAdd {
            peer: PeerConfig { name: name.clone(), ip: *ip, pod_blocks: pod_blocks.clone(), ipip_mode: *ipip_mode },
        },
        CtlCmd::Peer { cmd: PeerCmd::Del { name } } => Request::PeerDel { name: name.clone() },
        CtlCmd::Endpoints => Request::Endpoints,
        CtlCmd::Endpoint { cmd: EndpointCmd::Add { name, tap, mac, addrs, netns, ifname, mtu, ingress, egress } } => {
            Request::EndpointAdd {
                endpoint: EndpointConfig {
                    name: name.clone(),
                    tap: tap.clone(),
                    netns: netns.clone(),
                    ifname: ifname.clone(),
                    mac: *mac,
                    addrs: addrs.clone(),
                    mtu: *mtu,
                    ingress: ingress.clone(),
                    egress: egress.clone(),
                },
            }
        }
        CtlCmd::Endpoint { cmd: EndpointCmd::Del { name } } => Request::EndpointDel { name: name.clone() },
        CtlCmd::Policies => Request::Policies,
        CtlCmd::Policy { cmd: PolicyCmd::Set { name, file } } => {
            Request::PolicySet { name: name.clone(), rules: read_rules(file)? }
        }
        CtlCmd::Policy { cmd: PolicyCmd::Del { name } } => Request::PolicyDel { name: name.clone() },
        CtlCmd::Policy { cmd: PolicyCmd::SetGlobal { file } } => Request::GlobalRulesSet { rules: read_rules(file)? },
        CtlCmd::Ports => Request::Ports,
        CtlCmd::Neighbours { cmd: None } => Request::Neighbours,
        CtlCmd::Neighbours { cmd: Some(NeighCmd::Flush { ip }) } => Request::NeighboursFlush { ip: *ip },
        CtlCmd::Connections { limit } => Request::Connections { limit: Some(*limit) },
        CtlCmd::Counters { action: Some(CountersCmd::Clear) } => Request::CountersClear,
        CtlCmd::Counters { action: None } | CtlCmd::Drops { .. } => Request::Counters,
        CtlCmd::Config { cmd: ConfigCmd::Show } => Request::ConfigShow,
        #[cfg(feature = "datastore")]
        CtlCmd::Create { file } => {
            return datastore::write(&args.etcd_endpoints, file, None, datastore::Verb::Create, args.json)
        }
        #[cfg(feature = "datastore")]
        CtlCmd::Replace { file } => {
            return datastore::write(&args.etcd_endpoints, file, None, datastore::Verb::Replace, args.json)
        }
        #[cfg(feature = "datastore")]
        CtlCmd::Get { kind, name, namespace, all_namespaces, output } => {
            let output = if args.json { Output::Json } else { *output };
            return datastore::get(
                &args.etcd_endpoints,
                kind,
                name.as_deref(),
                namespace.as_deref(),
                *all_namespaces,
                output,
            );
        }
        #[cfg(feature = "datastore")]
        CtlCmd::Delete { kind, name, namespace, file, skip_not_exists } => {
            let target = match (file, kind, name) {
                (Some(f), _, _) => datastore::DeleteTarget::File(f.clone()),
                (None, Some(k), Some(n)) => datastore::DeleteTarget::Named { kind: k.clone(), name: n.clone() },
                _ => return Err("delete needs KIND NAME or -f FILE".into()),
            };
            return datastore::delete(&args.etcd_endpoints, target, namespace.as_deref(), *skip_not_exists);
        }
        #[cfg(feature = "datastore")]
        CtlCmd::Ipam { cmd } => return datastore::ipam(&args.etcd_endpoints, cmd, args.json),
        CtlCmd::Apply { file, dry_run, if_generation } => {
            let config = read_input(file)?;
            if looks_like_manifest(&config) {
                #[cfg(feature = "datastore")]
                {
                    if *dry_run {
                        return Err(
                            "--dry-run is for a node's config; manifests are checked whole before any is written"
                                .into(),
                        );
                    }
                    return datastore::write(
                        &args.etcd_endpoints,
                        file,
                        Some(config),
                        datastore::Verb::Apply,
                        args.json,
                    );
                }
                #[cfg(not(feature = "datastore"))]
                return Err(format!(
                    "{} holds resource manifests (apiVersion/kind): they go to the cluster's datastore, which this build cannot reach; use the vrouterctl binary",
                    file.display()
                ));
            }
            eprintln!("applying {} to the node at {}", file.display(), args.socket.display());
            // The daemon checks it; its errors then name the operator's file.
            Request::Apply {
                config,
                dry_run: *dry_run,
                file: Some(file.display().to_string()),
                if_generation: *if_generation,
            }
        }
        CtlCmd::Reload => Request::Reload,
        CtlCmd::Node { cmd: NodeCmd::Status { bird_socket } } => return node::status(bird_socket, args.json),
        CtlCmd::Trace { action: Some(TraceCmd::Stop), .. } => Request::TraceStop,
        CtlCmd::Trace { action: None, count, port, timeout } => {
            let ms = (timeout.max(0.0) * 1000.0) as u64;
            wait = Duration::from_millis(ms + 30_000);
            Request::Trace { count: *count, port: port.clone(), timeout_ms: ms }
        }
        CtlCmd::Capture { port, count, point, snaplen, timeout, write } => {
            // Fail before capturing if the file cannot be written.
            if !is_stdout(write) {
                std::fs::File::create(write).map_err(|e| format!("{}: {e}", write.display()))?;
            }
            let ms = (timeout.max(0.0) * 1000.0) as u64;
            wait = Duration::from_millis(ms + 30_000);
            Request::Capture {
                count: *count,
                port: port.clone(),
                rx: *point != Point::Tx,
                tx: *point != Point::Rx,
                snaplen: *snaplen,
                timeout_ms: ms,
            }
        }
    };
    let reply = call(&args.socket, req, wait)?;
    if !reply.ok {
        eprintln!("error: {}", reply.error.unwrap_or_default());
        return Ok(false);
    }
    let v = reply.result.unwrap_or(Value::Null);
    if let CtlCmd::Capture { write, .. } = &args.cmd {
        let n = write_pcap(write, &typed(&v)?)?;
        // With `-w -` stdout is the pcap: the summary goes to stderr.
        let summary = match args.json {
            true => serde_json::json!({"frames": n, "file": write}).to_string(),
            false => format!(
                "wrote {n} frames to {}",
                if is_stdout(write) { "stdout".into() } else { write.display().to_string() }
            ),
        };
        match is_stdout(write) {
            true => eprintln!("{summary}"),
            false => println!("{summary}"),
        }
        return Ok(true);
    }
    if let (CtlCmd::Config { cmd: ConfigCmd::Show }, false) = (&args.cmd, args.json) {
        let c: r::ConfigShow = typed(&v)?;
        print!("{}", c.config);
        if let Some(w) = c.warning {
            eprintln!("warning: {w}");
        }
        return Ok(true);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return Ok(true);
    }
    print!("{}", render(&args.cmd, &v)?);
    Ok(true)
}

/// A file's text, or stdin's for `-`.
fn read_input(file: &Path) -> Result<String, String> {
    if file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| format!("stdin: {e}"))?;
        return Ok(s);
    }
    std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))
}

/// Manifests (for the datastore) rather than a node's TOML.
fn looks_like_manifest(text: &str) -> bool {
    #[cfg(feature = "datastore")]
    return datastore::is_manifest(text);
    // Without the datastore: a TOML config never has these at the start of a line.
    #[cfg(not(feature = "datastore"))]
    text.lines().any(|l| l.starts_with("apiVersion:") || l.contains("\"apiVersion\""))
}

/// `-w -`: stdout, as tcpdump has it.
fn is_stdout(p: &Path) -> bool {
    p.as_os_str() == "-"
}

/// A reply's result as the struct its request expects: a daemon whose reply lacks a field (or
/// has it renamed) is reported, never shown as a blank.
fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, String> {
    Reply::ok(v.clone()).into_result().map_err(|e| e.to_string())
}

/// Writes captured frames (the daemon's `frames` list) as a pcap file with nanosecond times;
/// `-` is stdout.
pub fn write_pcap(path: &Path, v: &r::Capture) -> Result<usize, String> {
    if is_stdout(path) {
        let out = std::io::stdout();
        return write_pcap_to(&mut out.lock(), v).map_err(|e| format!("stdout: {e}"));
    }
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    write_pcap_to(&mut std::io::BufWriter::new(file), v).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes the frames of a capture reply as pcap to `out`.
pub fn write_pcap_to(out: &mut dyn Write, v: &r::Capture) -> Result<usize, String> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let frames = &v.frames;
    let header =
        PcapHeader { snaplen: 65_535, ts_resolution: pcap_file::TsResolution::NanoSecond, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(out, header).map_err(|e| e.to_string())?;
    for f in frames {
        let pkt = PcapPacket::new(Duration::from_nanos(f.ts_ns), f.orig_len, &f.data);
        w.write_packet(&pkt).map_err(|e| e.to_string())?;
    }
    w.into_writer().flush().map_err(|e| e.to_string())?;
    Ok(frames.len())
}

/// The human-readable form of a reply: `v` read as the reply struct `cmd` expects.
pub fn render(cmd: &CtlCmd, v: &Value) -> Result<String, String> {
    Ok(match cmd {
        CtlCmd::Status => {
            let st = serde_json::to_value(typed::<r::Status>(v)?).map_err(|e| e.to_string())?;
            st.as_object().into_iter().flatten().map(|(k, x)| format!("{k:<20} {}\n", s(x))).collect()
        }
        CtlCmd::Routes { target, .. }
            if matches!(parse_route_target(target.as_deref()), Ok(RouteTarget::Address(_))) =>
        {
            let l: r::RouteLookup = typed(v)?;
            match (l.prefix, l.source) {
                (Some(p), Some(src)) => {
                    format!("{} uses {p} ({}): {} [next-hop id {}]\n", l.address, source_name(src), l.nexthop, l.nh_id)
                }
                _ => format!("{}: no route (unreachable)\n", l.address),
            }
        }
        CtlCmd::Counters { action: Some(CountersCmd::Clear) } => {
            let _: r::Cleared = typed(v)?;
            "counters cleared: `counters` and `drops` count from now on\n".into()
        }
        CtlCmd::Routes { .. } => {
            let routes: r::Routes = typed(v)?;
            let rows: Vec<Vec<String>> = routes
                .routes
                .iter()
                .map(|r| {
                    let shadowed: Vec<String> =
                        r.shadowed.iter().map(|(src, nh)| format!("{}: {nh}", source_name(*src))).collect();
                    vec![
                        r.prefix.to_string(),
                        source_name(r.source),
                        r.nexthop.clone(),
                        r.nh_id.to_string(),
                        shadowed.join("; "),
                    ]
                })
                .collect();
            let mut out = table(&["PREFIX", "SOURCE", "NEXT HOP", "ID", "SHADOWS"], &rows);
            for n in &routes.not_installed {
                out.push_str(&format!("not installed: {} ({}): {}\n", n.prefix, source_name(n.source), n.error));
            }
            out
        }
        CtlCmd::Peers => {
            let peers: r::Peers = typed(v)?;
            let rows: Vec<Vec<String>> = peers
                .peers
                .iter()
                .map(|p| {
                    vec![
                        p.name.clone(),
                        p.ip.to_string(),
                        join(&p.pod_blocks),
                        p.ipip_mode.map_or("-".into(), |m| format!("{m:?}")),
                    ]
                })
                .collect();
            table(&["NAME", "IP", "POD BLOCKS", "IPIP MODE"], &rows)
        }
        CtlCmd::Endpoints => {
            let eps: r::Endpoints = typed(v)?;
            let rows: Vec<Vec<String>> = eps
                .endpoints
                .iter()
                .map(|e| {
                    let c = &e.config;
                    vec![
                        c.name.clone(),
                        opt(e.port),
                        c.tap.clone(),
                        opt(c.netns.as_ref()),
                        c.mac.to_string(),
                        join(&c.addrs),
                        c.ingress.join(","),
                        c.egress.join(","),
                    ]
                })
                .collect();
            table(&["NAME", "PORT", "TAP", "NETNS", "MAC", "ADDRS", "INGRESS", "EGRESS"], &rows)
        }
        CtlCmd::Policies => {
            let p: r::Policies = typed(v)?;
            let mut out = format!("global rules: {}\n", p.global_rules.len());
            for (name, rules) in &p.policies {
                out.push_str(&format!("policy {name}: {} rules\n", rules.len()));
                for (i, rule) in rules.iter().enumerate() {
                    let text = serde_json::to_value(rule).map_err(|e| e.to_string())?;
                    out.push_str(&format!("  {i}: {text}\n"));
                }
            }
            out
        }
        CtlCmd::Ports => {
            let ports: r::Ports = typed(v)?;
            let rows: Vec<Vec<String>> = ports
                .ports
                .iter()
                .map(|p| {
                    let st = &p.stats;
                    let xdp = match &p.xdp {
                        Some(x) => format!("{}/{}", x.mode, if x.zero_copy { "zero-copy" } else { "copy" }),
                        None => "-".to_string(),
                    };
                    vec![
                        p.id.to_string(),
                        p.name.clone(),
                        p.kind.to_string(),
                        p.link.clone(),
                        xdp,
                        p.mac.to_string(),
                        p.mtu.to_string(),
                        opt(p.endpoint.as_ref()),
                        st.rx_packets.to_string(),
                        st.tx_packets.to_string(),
                        st.rx_bytes.to_string(),
                        st.tx_bytes.to_string(),
                    ]
                })
                .collect();
            table(
                &[
                    "ID", "NAME", "KIND", "LINK", "XDP", "MAC", "MTU", "ENDPOINT", "RX PKTS", "TX PKTS", "RX BYTES",
                    "TX BYTES",
                ],
                &rows,
            )
        }
        CtlCmd::Neighbours { cmd: None } => {
            let n: r::Neighbours = typed(v)?;
            let rows: Vec<Vec<String>> = n
                .neighbours
                .iter()
                .map(|n| vec![n.ip.to_string(), opt(n.mac), n.state.clone(), n.probes.to_string()])
                .collect();
            table(&["IP", "MAC", "STATE", "PROBES"], &rows)
        }
        CtlCmd::Neighbours { cmd: Some(NeighCmd::Flush { .. }) } => key_values(&typed::<r::Flushed>(v)?),
        CtlCmd::Connections { .. } => {
            let c: r::Connections = typed(v)?;
            let rows: Vec<Vec<String>> = c
                .connections
                .iter()
                .map(|c| {
                    vec![
                        c.worker.to_string(),
                        c.proto.to_string(),
                        format!("{}:{}", c.src, c.sport),
                        format!("{}:{}", c.dst, c.dport),
                        c.state.clone(),
                    ]
                })
                .collect();
            let mut out = table(&["WORKER", "PROTO", "SOURCE", "DESTINATION", "STATE"], &rows);
            out.push_str(&format!("{} connections\n", c.total));
            out
        }
        CtlCmd::Counters { .. } => {
            let c: r::Counters = typed(v)?;
            let t = &c.total;
            let mut out = String::new();
            if c.since_clear {
                out.push_str("(since `vrouterctl counters clear`)\n");
            }
            let rows: Vec<Vec<String>> = t
                .ports
                .iter()
                .filter(|(n, _)| !n.is_empty())
                .map(|(n, p)| {
                    vec![
                        n.clone(),
                        p.rx_packets.to_string(),
                        p.tx_packets.to_string(),
                        p.rx_bytes.to_string(),
                        p.tx_bytes.to_string(),
                    ]
                })
                .collect();
            out.push_str(&table(&["PORT", "RX PKTS", "TX PKTS", "RX BYTES", "TX BYTES"], &rows));
            out.push('\n');
            for (k, x) in &t.counters {
                out.push_str(&format!("{k:<26} {x}\n"));
            }
            if c.workers.len() > 1 {
                let mut rows = Vec::new();
                for w in &c.workers {
                    for (port, p) in &w.ports {
                        rows.push(vec![
                            w.worker.to_string(),
                            port.clone(),
                            p.rx_packets.to_string(),
                            p.tx_packets.to_string(),
                        ]);
                    }
                    for (reason, n) in &w.drops {
                        rows.push(vec![w.worker.to_string(), format!("drop {reason}"), n.to_string(), String::new()]);
                    }
                }
                out.push('\n');
                out.push_str(&table(&["WORKER", "PORT / DROP", "RX PKTS", "TX PKTS"], &rows));
            }
            out.push('\n');
            out.push_str(&drops(&c, false));
            out
        }
        CtlCmd::Drops { all } => drops(&typed(v)?, *all),
        CtlCmd::Trace { action: Some(TraceCmd::Stop), .. } => match typed::<r::Stopped>(v)?.stopped {
            true => "stopped the running trace/capture\n".into(),
            false => "no trace or capture was running\n".into(),
        },
        CtlCmd::Trace { .. } => {
            let t: r::Trace = typed(v)?;
            let mut out = String::new();
            for (i, (p, route)) in t.packets.iter().map(|tp| (&tp.packet, &tp.route)).enumerate() {
                out.push_str(&format!("packet {} (worker {}, port {})\n", i + 1, p.worker, p.in_port));
                out.push_str(&format!("  received: {}\n", p.received));
                for st in &p.steps {
                    out.push_str(&format!("  {st}\n"));
                    // The route the lookup matched, right under it.
                    if let (true, Some(r)) = (st.starts_with("lookup:"), route) {
                        out.push_str(&format!("    route: {} ({}) {}\n", r.prefix, source_name(r.source), r.nexthop));
                    }
                }
                match &p.drop_reason {
                    Some(r) => out.push_str(&format!("  verdict: drop {r}\n")),
                    None => out.push_str(&format!("  verdict: {}\n", p.verdict)),
                }
                if let Some(sent) = &p.sent {
                    out.push_str(&format!("  sent: {sent}\n"));
                }
            }
            out.push_str(&format!("{} of {} packets traced\n", t.packets.len(), t.wanted));
            out
        }
        CtlCmd::Apply { dry_run: true, .. } => {
            let plan = serde_json::to_value(typed::<vrouter_api::Plan>(v)?).map_err(|e| e.to_string())?;
            let mut out = String::new();
            for (k, x) in plan.as_object().into_iter().flatten() {
                match x {
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{}:\n", k.replace('_', " ")));
                        for i in a {
                            out.push_str(&format!("  {}\n", s(i)));
                        }
                    }
                    Value::Bool(true) => out.push_str(&format!("{}\n", k.replace('_', " "))),
                    _ => {}
                }
            }
            if out.is_empty() {
                out.push_str("no change\n");
            }
            out
        }
        CtlCmd::Route { .. } => key_values(&typed::<r::RoutesChanged>(v)?),
        CtlCmd::Config { .. } => key_values(&typed::<r::ConfigShow>(v)?),
        CtlCmd::Capture { .. } => key_values(&typed::<r::Capture>(v)?),
        CtlCmd::Peer { .. }
        | CtlCmd::Endpoint { .. }
        | CtlCmd::Policy { .. }
        | CtlCmd::Apply { .. }
        | CtlCmd::Reload => key_values(&typed::<vrouter_api::ChangeReport>(v)?),
        CtlCmd::Node { .. } => return Err("`node` asks BIRD, not the daemon: no daemon reply to show".into()),
        // Printed by `datastore` as they run; no node reply to render.
        #[cfg(feature = "datastore")]
        CtlCmd::Create { .. }
        | CtlCmd::Replace { .. }
        | CtlCmd::Get { .. }
        | CtlCmd::Delete { .. }
        | CtlCmd::Ipam { .. } => return Err("a datastore command has no node reply to show".into()),
    })
}

/// `key: value` lines of a reply struct, `ok` for an empty one.
fn key_values<T: serde::Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(Value::Object(m)) if m.is_empty() => "ok\n".into(),
        Ok(Value::Object(m)) => m.iter().map(|(k, x)| format!("{k}: {}\n", s(x))).collect(),
        Ok(other) => format!("{other}\n"),
        Err(e) => format!("{e}\n"),
    }
}

/// Drops by reason, non-zero ones unless `all`.
fn drops(c: &r::Counters, all: bool) -> String {
    let rows: Vec<Vec<String>> =
        c.total.drops.iter().filter(|(_, n)| all || **n != 0).map(|(k, n)| vec![k.clone(), n.to_string()]).collect();
    if rows.is_empty() {
        "no drops\n".into()
    } else {
        table(&["DROP REASON", "PACKETS"], &rows)
    }
}

/// A route source as the protocol names it (`node`, `config`, `cli`, `kernel`).
fn source_name(src: RouteSource) -> String {
    match serde_json::to_value(src) {
        Ok(Value::String(x)) => x,
        _ => format!("{src:?}"),
    }
}

fn opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(|| "-".to_string(), |x| x.to_string())
}

fn join<T: std::fmt::Display>(xs: &[T]) -> String {
    xs.iter().map(T::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn nexthops_parse_like_ip_route() {
        let a = |x: &str| x.parse::<Ipv4Addr>().unwrap();
        assert_eq!(parse_nexthop(&w("via 192.168.1.1")).unwrap(), NhKey::Gateway(a("192.168.1.1")));
        assert_eq!(
            parse_nexthop(&w("via 192.168.1.1 via 192.168.1.2")).unwrap(),
            NhKey::Ecmp(vec![NhKey::Gateway(a("192.168.1.1")), NhKey::Gateway(a("192.168.1.2"))])
        );
        assert_eq!(parse_nexthop(&w("blackhole")).unwrap(), NhKey::Blackhole);
        assert_eq!(parse_nexthop(&w("prohibit")).unwrap(), NhKey::Prohibit);
        assert!(parse_nexthop(&w("via")).unwrap_err().contains("give 'via GATEWAY'"));
        assert!(parse_nexthop(&w("via 1.2.3")).unwrap_err().contains("not an IPv4 address"));
        assert!(parse_nexthop(&w("dev eth0")).unwrap_err().contains("expected 'via GATEWAY'"));
    }

    /// Parses `vrouterctl ARGS` as the binary does.
    fn parse(args: &str) -> Result<CtlArgs, clap::Error> {
        use clap::{CommandFactory, FromArgMatches};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CtlArgs,
        }
        let m = Cli::command().try_get_matches_from(std::iter::once("vrouterctl").chain(args.split_whitespace()))?;
        Ok(Cli::from_arg_matches(&m)?.args)
    }

    #[test]
    fn trace_stop_is_a_subcommand_and_trace_options_still_parse() {
        assert!(matches!(parse("trace stop").unwrap().cmd, CtlCmd::Trace { action: Some(TraceCmd::Stop), .. }));
        match parse("trace --count 5 -p tapa").unwrap().cmd {
            CtlCmd::Trace { action: None, count: 5, port: Some(p), .. } => assert_eq!(p, "tapa"),
            other => panic!("{other:?}"),
        }
        assert!(parse("trace stop --count 5").is_err());
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        for line in [
            "-s /tmp/x.sock --json routes",
            "routes -s /tmp/x.sock --json",
            "route del 10.0.0.0/8 -s /tmp/x.sock --json",
        ] {
            let a = parse(line).unwrap();
            assert_eq!((a.socket.to_str(), a.json), (Some("/tmp/x.sock"), true), "{line}");
        }
    }

    #[test]
    fn routes_takes_an_address_or_a_prefix() {
        assert_eq!(parse_route_target(None).unwrap(), RouteTarget::Within(None));
        assert_eq!(
            parse_route_target(Some("10.244.0.0/16")).unwrap(),
            RouteTarget::Within(Some("10.244.0.0/16".parse().unwrap()))
        );
        assert_eq!(
            parse_route_target(Some("10.244.2.7")).unwrap(),
            RouteTarget::Address("10.244.2.7".parse().unwrap())
        );
        assert!(parse_route_target(Some("10.244.2")).unwrap_err().contains("give an IPv4 address"));
        assert!(parse_route_target(Some("10.0.0.0/33")).unwrap_err().contains("not a prefix"));
        let v = serde_json::json!({"address": "10.244.2.7", "prefix": "10.244.2.0/26", "source": "config",
            "nexthop": "via 192.168.1.20", "nh_id": 5});
        let cmd = parse("routes 10.244.2.7").unwrap().cmd;
        assert_eq!(
            render(&cmd, &v).unwrap(),
            "10.244.2.7 uses 10.244.2.0/26 (config): via 192.168.1.20 [next-hop id 5]\n"
        );
    }

    #[test]
    fn counters_clear_and_config_show_parse() {
        assert!(matches!(parse("counters").unwrap().cmd, CtlCmd::Counters { action: None }));
        assert!(matches!(parse("counters clear").unwrap().cmd, CtlCmd::Counters { action: Some(CountersCmd::Clear) }));
        assert!(matches!(parse("config show").unwrap().cmd, CtlCmd::Config { cmd: ConfigCmd::Show }));
    }

    #[test]
    fn permission_denied_is_not_reported_as_a_missing_daemon() {
        let p = Path::new("/run/vrouter/vrouter.sock");
        let e = connect_error(p, &std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(e.starts_with("permission denied on /run/vrouter/vrouter.sock") && !e.contains("running?"), "{e}");
        let e = connect_error(p, &std::io::Error::from(std::io::ErrorKind::NotFound));
        assert!(e.contains("no daemon") && e.contains("running?"), "{e}");
    }

    #[test]
    fn every_subcommand_and_option_has_help_and_an_example() {
        use clap::CommandFactory;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: CtlArgs,
        }
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") || a.is_global_set() && path.contains(' ') {
                    continue;
                }
                if a.get_help().is_none_or(|h| h.to_string().trim().is_empty()) {
                    missing.push(format!("{path} {id}: no help"));
                }
            }
            for sub in c.get_subcommands().filter(|s| s.get_name() != "help") {
                let p = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(format!("{p}: no about"));
                }
                if !sub.get_after_help().is_some_and(|h| h.to_string().contains("vrouterctl ")) {
                    missing.push(format!("{p}: no example"));
                }
                walk(sub, &p, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "vrouterctl", &mut missing);
        assert!(missing.is_empty(), "{missing:#?}");
    }

    #[test]
    fn capture_to_stdout_is_a_pcap_stream() {
        assert!(is_stdout(Path::new("-")) && !is_stdout(Path::new("./-")));
        let f = r::CapturedFrame { ts_ns: 5, port: 0, point: r::CapturePoint::Tx, orig_len: 64, data: vec![1; 64] };
        let mut out = Vec::new();
        assert_eq!(write_pcap_to(&mut out, &r::Capture { frames: vec![f] }).unwrap(), 1);
        let mut r = pcap_file::pcap::PcapReader::new(&out[..]).unwrap();
        assert_eq!(r.next_packet().unwrap().unwrap().data.len(), 64);
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\nz    w\n");
    }

    #[test]
    fn pcap_files_are_readable_back() {
        let dir = std::env::temp_dir().join(format!("vr-pcap-{}", std::process::id()));
        let f = r::CapturedFrame {
            ts_ns: 1_700_000_000_123_456_789,
            port: 2,
            point: r::CapturePoint::Rx,
            orig_len: 100,
            data: vec![0xab; 60],
        };
        assert_eq!(write_pcap(&dir, &r::Capture { frames: vec![f] }).unwrap(), 1);
        let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(&dir).unwrap()).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.orig_len, p.data.len(), p.timestamp.as_nanos()), (100, 60, 1_700_000_000_123_456_789));
        assert!(r.next_packet().is_none());
        std::fs::remove_file(dir).unwrap();
    }

    #[test]
    fn a_reply_missing_a_field_is_an_error_not_a_dash() {
        let cmd = parse("status").unwrap().cmd;
        let e = render(&cmd, &serde_json::json!({"node": "n1"})).unwrap_err();
        assert!(e.contains("unexpected reply") && e.contains("missing field"), "{e}");
        // A renamed field (`next_hop` for `nexthop`) is refused too, not shown as "-".
        let v = serde_json::json!({"routes": [{"prefix": "10.0.0.0/8", "source": "cli", "next_hop": "blackhole",
            "nh_id": 1, "shadowed": []}], "not_installed": []});
        let e = render(&parse("routes").unwrap().cmd, &v).unwrap_err();
        assert!(e.contains("nexthop"), "{e}");
    }

    #[test]
    fn tables_are_rendered_from_the_typed_reply() {
        let v = serde_json::json!({"routes": [{"prefix": "10.0.0.0/8", "source": "cli", "nexthop": "blackhole",
            "nh_id": 1, "shadowed": [["kernel", "via 192.168.1.1"]]}],
            "not_installed": [{"prefix": "10.1.0.0/16", "source": "kernel", "error": "no device"}]});
        assert_eq!(
            render(&parse("routes").unwrap().cmd, &v).unwrap(),
            "PREFIX      SOURCE  NEXT HOP   ID  SHADOWS\n10.0.0.0/8  cli     blackhole  1   kernel: via 192.168.1.1\nnot installed: 10.1.0.0/16 (kernel): no device\n"
        );
        let v = serde_json::json!({"routes_changed": 2, "endpoints_added": ["a", "b"], "endpoints_removed": [],
            "snapshots_published": 1});
        assert_eq!(
            render(&parse("reload").unwrap().cmd, &v).unwrap(),
            "endpoints_added: a,b\nendpoints_removed: \nroutes_changed: 2\nsnapshots_published: 1\n"
        );
    }
}
