//! The namespace lab: three vrouter nodes, six pods and an underlay router in network namespaces
//! of this machine, driven by the real daemon, so that BGP mode, IPIP (CrossSubnet), policy and
//! the drop counters can be checked with real frames and independent tools (ping, iperf3,
//! tcpdump).
//!
//! Everything of one lab carries a random prefix (`vrl` + 4 hex digits): its namespaces
//! (`<p>-rt`, `<p>-n1..3`, `<p>-p1a..p3b`) and its directory (`/tmp/vrouter-lab/<p>/`: generated
//! configs, daemon logs and stats, `state.json`). Interface names live inside the namespaces and
//! need no prefix. See [`topo`] for the addressing plan.
//!
//! A lab never outlives its owner by accident: [`LabHandle`] tears down on drop unless kept, a
//! failure midway through [`up`] tears down what was built, and Ctrl-C (SIGINT/SIGTERM) and
//! process exit tear down every lab of the process that was not kept. [`down`] cleans a kept lab,
//! or what a killed process left, from the state file and the namespace names alone.

pub mod bgp;
mod cli;
pub mod cluster;
pub(crate) mod demo;
pub(crate) mod sys;
pub mod topo;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use cli::{run_cli, LabArgs, LabCommand};
pub use demo::{demo, measure, DemoReport, PingResult, TcpResult};
pub use topo::{LabNode, LabPod, PathMode};

/// Where labs keep their files unless told otherwise.
pub const DEFAULT_ROOT: &str = "/tmp/vrouter-lab";

/// What forwards between pods and nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Backend {
    /// The vrouter daemon, one per node namespace (the lab's purpose).
    #[default]
    Vrouter,
    /// Linux forwarding with veth pods and static routes, no IPIP (the kernel has no ipip
    /// module here): the same topology and addressing, as a baseline and to check the lab
    /// itself without the daemon.
    Kernel,
}

/// Choices for [`up`] and [`demo`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Namespace prefix; default `vrl` + 4 random hex digits. ASCII letters and digits, at most
    /// 12 characters, starting with a letter.
    pub prefix: Option<String>,
    /// Parent of the lab directory.
    pub root: PathBuf,
    /// The vrouter binary to run in the nodes; default: this executable.
    pub vrouter: Option<PathBuf>,
    pub backend: Backend,
    /// How long the daemons get to write stats and answer pods' pings to their gateway.
    pub ready_timeout: Duration,
    /// The daemons' `[workers] idle` mode: `poll`, `adaptive` (default) or `interrupt`.
    pub idle: String,
    /// The cluster does the wiring ([`cluster`]): etcd, an agent per node, pods through the
    /// CNI plugin, addresses from IPAM; instead of each node's file listing everything.
    pub cluster: bool,
    /// etcd members of a cluster lab: 1 (default) or 3 (each on its own ports in the router
    /// namespace; one can fail without effect).
    pub etcd_members: usize,
    /// Nodes (default 3; see [`topo::plan`] for where further ones go).
    pub nodes: usize,
    /// A cluster lab's routes between nodes come from BGP: BIRD on every node, its config
    /// rendered by the node's agent (default); off, the agents program them from the datastore.
    pub bgp: bool,
    /// Route reflectors (nodes 1..=K) instead of the node-to-node mesh; 0: full mesh.
    pub route_reflectors: usize,
    /// The underlay's MTU (veths, router, `[uplink] mtu`); pods get 20 bytes less.
    pub mtu: u16,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            prefix: None,
            root: PathBuf::from(DEFAULT_ROOT),
            vrouter: None,
            backend: Backend::Vrouter,
            ready_timeout: Duration::from_secs(20),
            idle: "adaptive".into(),
            cluster: false,
            etcd_members: 1,
            nodes: topo::DEFAULT_NODES,
            bgp: true,
            route_reflectors: 0,
            mtu: topo::DEFAULT_MTU,
        }
    }
}

/// Slow-path errors of the namespace lab and the perf lab (`crate::perf`), which share the
/// command runners of [`sys`]; each says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// `needs`: what the lab does that needs root.
    #[error("{lab} needs root (it {needs}): run it as root or with sudo")]
    NotRoot { lab: &'static str, needs: &'static str },
    #[error("command `{tool}` not found: {hint}")]
    MissingTool { tool: String, hint: String },
    #[error("vrouter binary {path}: {msg}")]
    Binary { path: PathBuf, msg: String },
    #[error("invalid lab prefix '{0}': use 1..=12 ASCII letters and digits, starting with a letter")]
    BadPrefix(String),
    #[error("{0}")]
    BadOption(String),
    #[error("a lab with prefix {0} already exists: `vrouter lab down --prefix {0}` first, or pick another prefix")]
    Exists(String),
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command { cmd: String, status: String, stderr: String },
    #[error("`{cmd}` did not finish within {secs} s")]
    Timeout { cmd: String, secs: f64 },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("generated config for {node} is invalid (a lab bug): {msg}")]
    Config { node: String, msg: String },
    #[error("{node} not ready after {secs:.0} s: {what}; daemon log {log}, last lines:\n{tail}")]
    NotReady { node: String, secs: f64, what: String, log: PathBuf, tail: String },
    /// The perf lab's forwarder (`vrouter bench e2e`).
    #[error("forwarder not ready: {what}; last lines of its log:\n{tail}")]
    ForwarderNotReady { what: String, tail: String },
    /// A perf run's traffic did not get through.
    #[error("{what}; last lines of the log:\n{tail}")]
    NoTraffic { what: String, tail: String },
    #[error("no running lab found (no {DEFAULT_ROOT}/*/state.json, no *-rt namespace): nothing to do")]
    NoLab,
    #[error("several labs exist ({0}): choose one with --prefix")]
    Ambiguous(String),
    #[error("state file {path}: {msg}")]
    State { path: PathBuf, msg: String },
    #[error("teardown of lab {prefix} left namespaces behind: {left} (delete with `ip netns del NAME`)")]
    Teardown { prefix: String, left: String },
    #[error("interrupted")]
    Interrupted,
}

/// Lists the lab for teardown at exit or on Ctrl-C (again after each change of its state).
fn register(state: &LabState) {
    let s = state.clone();
    sys::register(&state.prefix, move || {
        eprintln!("vrouter lab: tearing down lab {} at exit", s.prefix);
        let _ = teardown(&s);
    });
}

const NOT_ROOT: LabError = LabError::NotRoot { lab: "the lab", needs: "creates network namespaces, veths and TAPs" };

/// One daemon of a lab, as recorded in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonState {
    pub node: String,
    pub ns: String,
    pub pid: u32,
    pub config: PathBuf,
    pub stats: PathBuf,
    pub log: PathBuf,
}

/// What `down` and `status` need to know about a lab (`<dir>/state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub prefix: String,
    pub dir: PathBuf,
    pub backend: Backend,
    pub namespaces: Vec<String>,
    pub daemons: Vec<DaemonState>,
    pub nodes: Vec<LabNode>,
    pub pods: Vec<LabPod>,
    /// Wired by the cluster (etcd, agents, CNI): pods' addresses came from IPAM.
    #[serde(default)]
    pub cluster: bool,
    /// The vrouter binary the daemons run.
    #[serde(default)]
    pub vrouter: Option<PathBuf>,
    /// etcd members of a cluster lab (1 or 3).
    #[serde(default)]
    pub etcd_members: usize,
    /// A cluster lab whose routes between nodes come from BIRD over BGP.
    #[serde(default)]
    pub bgp: bool,
    /// Route reflectors (nodes 1..=K) of a BGP lab; 0: full mesh.
    #[serde(default)]
    pub route_reflectors: usize,
    /// The underlay's MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    topo::DEFAULT_MTU
}

impl LabState {
    fn new(prefix: &str, dir: PathBuf, backend: Backend, n_nodes: usize) -> LabState {
        let (nodes, pods) = topo::plan(prefix, n_nodes);
        LabState {
            prefix: prefix.into(),
            dir,
            backend,
            namespaces: all_namespaces(prefix, n_nodes),
            daemons: vec![],
            nodes,
            pods,
            cluster: false,
            vrouter: None,
            etcd_members: 0,
            bgp: false,
            route_reflectors: 0,
            mtu: topo::DEFAULT_MTU,
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn save(&self) -> Result<(), LabError> {
        let p = self.path();
        let tmp = self.dir.join("state.json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &p))
            .map_err(|err| LabError::Io { what: format!("writing {}", p.display()), err })
    }

    fn load(path: &Path) -> Result<LabState, LabError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| LabError::Io { what: format!("reading {}", path.display()), err })?;
        serde_json::from_str(&text).map_err(|e| LabError::State { path: path.into(), msg: e.to_string() })
    }
}

/// Every namespace name of a lab of `n_nodes`, router first, then nodes, then pods.
fn all_namespaces(prefix: &str, n_nodes: usize) -> Vec<String> {
    let (nodes, pods) = topo::plan(prefix, n_nodes);
    std::iter::once(format!("{prefix}-rt"))
        .chain(nodes.into_iter().map(|n| n.ns))
        .chain(pods.into_iter().map(|p| p.ns))
        .collect()
}

/// A running lab. Dropping it tears the lab down unless [`LabHandle::keep`] was called.
pub struct LabHandle {
    state: LabState,
    children: Mutex<Vec<Child>>,
    kept: bool,
}

impl LabHandle {
    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// The lab directory (configs, logs, stats, state).
    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    /// The underlay router's namespace.
    pub fn router_ns(&self) -> String {
        format!("{}-rt", self.state.prefix)
    }

    pub fn nodes(&self) -> &[LabNode] {
        &self.state.nodes
    }

    pub fn pods(&self) -> &[LabPod] {
        &self.state.pods
    }

    /// Node 1, 2 or 3. Panics on another index (a test bug).
    pub fn node(&self, index: u8) -> &LabNode {
        self.state.nodes.iter().find(|n| n.index == index).unwrap_or_else(|| panic!("no node {index} in the lab"))
    }

    /// Pod by name: `1a`, `1b`, `2a`, `2b`, `3a`, `3b`. Panics on another name (a test bug).
    pub fn pod(&self, name: &str) -> &LabPod {
        self.state.pods.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no pod {name} in the lab"))
    }

    pub fn pod_ip(&self, name: &str) -> Ipv4Addr {
        self.pod(name).ip
    }

    /// Runs a command in a namespace of the lab (60 s at most) and returns what it did; a
    /// command that cannot run shows as exit status 127 with the reason on stderr.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        sys::exec_in(ns, args, Duration::from_secs(60))
    }

    pub fn exec_timeout(&self, ns: &str, args: &[&str], timeout: Duration) -> Output {
        sys::exec_in(ns, args, timeout)
    }

    /// Starts a background command in a namespace (a capture, a server), output discarded.
    /// Processes still running at teardown are killed with their namespace.
    pub fn spawn(&self, ns: &str, args: &[&str], log: Option<&Path>) -> Result<Child, LabError> {
        sys::spawn_in(ns, args, log)
    }

    /// The latest stats of node 1, 2 or 3 (`Value::Null` if unreadable; kernel backend: always).
    pub fn stats(&self, node: u8) -> serde_json::Value {
        let name = &self.node(node).name;
        match self.state.daemons.iter().find(|d| &d.node == name) {
            Some(d) => read_stats(&d.stats).unwrap_or(serde_json::Value::Null),
            None => serde_json::Value::Null,
        }
    }

    /// A drop counter of a node by stable reason name (`ipip/unknown-peer`), 0 if absent.
    pub fn drops(&self, node: u8, reason: &str) -> u64 {
        self.stats(node)["drops"][reason].as_u64().unwrap_or(0)
    }

    /// A named counter of a node (`ipip_encap`), 0 if absent.
    pub fn counter(&self, node: u8, name: &str) -> u64 {
        self.stats(node)["counters"][name].as_u64().unwrap_or(0)
    }

    /// Waits until something in `ns` listens on TCP `port` (`udp`: has bound UDP `port`),
    /// instead of guessing how long a server takes to start; returns whether it did before
    /// `timeout` (false too if the lab is being cancelled).
    pub fn wait_listening(&self, ns: &str, udp: bool, port: u16, timeout: Duration) -> bool {
        sys::wait_listening(ns, udp, port, timeout)
    }

    /// Waits until `f(stats of node)` holds, re-reading the stats file (rewritten about every
    /// 200 ms); returns whether it held before `timeout`.
    pub fn wait_stats(&self, node: u8, timeout: Duration, f: impl Fn(&serde_json::Value) -> bool) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if f(&self.stats(node)) {
                return true;
            }
            if Instant::now() >= end || sys::cancelled() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether each node's daemon is alive, in node order (kernel backend: empty).
    pub fn daemons_alive(&self) -> Vec<(String, bool)> {
        self.state.daemons.iter().map(|d| (d.node.clone(), sys::alive(d.pid))).collect()
    }

    /// The last lines of a node's daemon log.
    pub fn log_tail(&self, node: u8, lines: usize) -> String {
        let name = &self.node(node).name;
        match self.state.daemons.iter().find(|d| &d.node == name) {
            Some(d) => sys::tail(&d.log, lines),
            None => String::new(),
        }
    }

    /// Stops node `index`'s daemon (SIGTERM, as an operator's restart) and starts it again on
    /// the same config file, waiting for its stats; the pods it had are the config's (or, in a
    /// cluster lab, the agent's to give back).
    pub fn restart_daemon(&mut self, index: u8) -> Result<(), LabError> {
        let name = self.node(index).name.clone();
        let i = self.state.daemons.iter().position(|d| d.node == name).ok_or(LabError::NoLab)?;
        let d = self.state.daemons[i].clone();
        let end = Instant::now() + Duration::from_secs(10);
        sys::signal(d.pid, sys::Signal::SIGTERM);
        sys::wait_gone(&[d.pid], Duration::from_secs(10), &format!("stopping {name}'s daemon"))?;
        let bin = match &self.state.vrouter {
            Some(b) => b.to_string_lossy().into_owned(),
            None => return Err(LabError::BadOption("this lab's state does not name its vrouter binary".into())),
        };
        let _ = std::fs::remove_file(&d.stats);
        let log = d.log.with_extension("restarted.log");
        let (cfg, stats) = (d.config.to_string_lossy(), d.stats.to_string_lossy());
        let child = sys::spawn_in(&d.ns, &[&bin, "run", "--config", &cfg, "--stats", &stats], Some(&log))?;
        self.state.daemons[i].pid = child.id();
        self.state.daemons[i].log = log;
        self.adopt(child);
        self.state.save()?;
        register(&self.state);
        while !d.stats.exists() {
            if Instant::now() >= end + Duration::from_secs(10) {
                return Err(LabError::Timeout { cmd: format!("restarting {name}'s daemon"), secs: 20.0 });
            }
            sys::sleep(Duration::from_millis(50))?;
        }
        Ok(())
    }

    /// Keeps a child of the lab (etcd, an agent) to be reaped with it; it runs in a namespace
    /// of the lab, so teardown kills it with the namespace.
    pub(crate) fn adopt(&self, child: Child) {
        self.children.lock().unwrap_or_else(|e| e.into_inner()).push(child);
    }

    /// Leaves the lab running after this handle is dropped (and at exit); `down` removes it.
    pub fn keep(&mut self) {
        self.kept = true;
        sys::unregister(&self.state.prefix);
    }

    /// Tears the lab down now, reporting failures (drop does the same, silently).
    pub fn down(mut self) -> Result<(), LabError> {
        self.kept = true;
        let r = teardown(&self.state);
        self.children.lock().unwrap_or_else(|e| e.into_inner()).clear();
        r
    }
}

impl Drop for LabHandle {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(e) = teardown(&self.state) {
                eprintln!("vrouter lab: {e}");
            }
        }
    }
}

fn read_stats(path: &Path) -> Option<serde_json::Value> {
    // The daemon may be rewriting the file: a short read parses badly, so retry.
    for _ in 0..5 {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(v) = serde_json::from_str(&text) {
                return Some(v);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn check_prefix(p: &str) -> Result<(), LabError> {
    let ok = !p.is_empty()
        && p.len() <= 12
        && p.starts_with(|c: char| c.is_ascii_alphabetic())
        && p.chars().all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(LabError::BadPrefix(p.into()))
    }
}

fn preflight(opts: &LabOptions) -> Result<Option<PathBuf>, LabError> {
    if !sys::is_root() {
        return Err(NOT_ROOT);
    }
    for t in ["ip", "sysctl", "ping", "ethtool"] {
        sys::need_tool(t)?;
    }
    check_options(opts)?;
    if opts.backend == Backend::Kernel {
        return Ok(None);
    }
    vrouter_binary(opts.vrouter.as_deref()).map(Some)
}

/// The vrouter binary to run: `given`, or this executable; it must exist.
pub(crate) fn vrouter_binary(given: Option<&Path>) -> Result<PathBuf, LabError> {
    let bin = match given {
        Some(p) => p.to_path_buf(),
        None => {
            std::env::current_exe().map_err(|err| LabError::Io { what: "finding the vrouter binary".into(), err })?
        }
    };
    if !bin.is_file() {
        return Err(LabError::Binary { path: bin, msg: "not found: build it with `cargo build --release`".into() });
    }
    Ok(bin)
}

/// Refuses options that do not make a lab, each with what to use instead.
fn check_options(opts: &LabOptions) -> Result<(), LabError> {
    if !["poll", "adaptive", "interrupt"].contains(&opts.idle.as_str()) {
        return Err(LabError::BadOption(format!("idle mode '{}': use poll, adaptive or interrupt", opts.idle)));
    }
    if opts.cluster && !(1..=9).contains(&opts.etcd_members) {
        return Err(LabError::BadOption(format!(
            "{} etcd members: use 1 to 9 (3 survives one failure)",
            opts.etcd_members
        )));
    }
    if !(topo::DEFAULT_NODES..=topo::MAX_NODES).contains(&opts.nodes) {
        return Err(LabError::BadOption(format!(
            "{} nodes: use {} to {} (nodes 1 to 3 are the demo's)",
            opts.nodes,
            topo::DEFAULT_NODES,
            topo::MAX_NODES
        )));
    }
    if !topo::mtu_ok(opts.mtu) {
        return Err(LabError::BadOption(format!(
            "MTU {}: use {} to {} (a frame in one 4 KiB page, as veth's native XDP takes it under libxdp's program) or {} to {} (multi-buffer AF_XDP); pods get 20 less",
            opts.mtu,
            vrouter_api::config::MIN_MTU + topo::IPIP_OVERHEAD,
            topo::MAX_SINGLE_BUFFER_MTU,
            topo::MAX_CHUNK_MTU + 1,
            topo::MAX_MTU
        )));
    }
    if opts.route_reflectors > 0 && !(opts.cluster && opts.bgp) {
        return Err(LabError::BadOption(
            "route reflectors need a cluster lab with BGP (not --static, --kernel or --no-bgp)".into(),
        ));
    }
    if opts.route_reflectors >= opts.nodes {
        return Err(LabError::BadOption(format!(
            "{} route reflectors among {} nodes: at least one node must be a client",
            opts.route_reflectors, opts.nodes
        )));
    }
    if opts.backend == Backend::Kernel && opts.cluster {
        return Err(LabError::BadOption("a cluster lab needs vrouter on the nodes (not --kernel)".into()));
    }
    Ok(())
}

/// Builds a lab and starts its daemons; on any failure, tears down what was built.
pub fn up(opts: &LabOptions) -> Result<LabHandle, LabError> {
    let bin = preflight(opts)?;
    let existing = sys::netns_list()?;
    let taken = |p: &str| {
        all_namespaces(p, opts.nodes).iter().any(|ns| existing.contains(ns))
            || opts.root.join(p).join("state.json").exists()
    };
    let prefix = match &opts.prefix {
        Some(p) => {
            check_prefix(p)?;
            if taken(p) {
                return Err(LabError::Exists(p.clone()));
            }
            p.clone()
        }
        None => {
            let mut p = format!("vrl{:04x}", vrouter_core::random_seed() as u16);
            for _ in 0..16 {
                if !taken(&p) {
                    break;
                }
                p = format!("vrl{:04x}", vrouter_core::random_seed() as u16);
            }
            if taken(&p) {
                return Err(LabError::Exists(p));
            }
            p
        }
    };
    let dir = opts.root.join(&prefix);
    std::fs::create_dir_all(&dir).map_err(|err| LabError::Io { what: format!("creating {}", dir.display()), err })?;
    let mut state = LabState::new(&prefix, dir, opts.backend, opts.nodes);
    state.mtu = opts.mtu;
    register(&state);
    let mut lab = LabHandle { state, children: Mutex::new(vec![]), kept: false };
    // From here on, an error drops `lab`, which tears down.
    lab.state.save()?;
    build(&lab)?;
    match bin {
        Some(bin) if opts.cluster => {
            let tools = cluster::Tools::beside(&bin)?;
            lab.state.cluster = true;
            lab.state.etcd_members = opts.etcd_members;
            lab.state.bgp = opts.bgp;
            lab.state.route_reflectors = opts.route_reflectors;
            cluster::start_etcd(&lab, true)?;
            cluster::seed(&lab, &tools)?;
            start_daemons(&mut lab, &bin, &opts.idle)?;
            cluster::start_agents(&lab, &tools)?;
            cluster::wait_agents(&lab, opts.ready_timeout)?;
            if lab.state.bgp {
                bgp::start_birds(&lab, opts.ready_timeout)?;
            }
            for i in 0..lab.state.pods.len() {
                let pod = lab.state.pods[i].clone();
                let wired = cluster::add_pod(&lab, &tools, &pod)?;
                lab.state.pods[i].ip = wired.ip;
                lab.state.pods[i].mac = wired.mac;
            }
            lab.state.save()?;
            cluster::wait_programmed(&lab, opts.ready_timeout)?;
            if lab.state.bgp {
                bgp::wait_routes(&lab, opts.ready_timeout)?;
            }
        }
        Some(bin) => start_daemons(&mut lab, &bin, &opts.idle)?,
        None => kernel_forwarding(&lab)?,
    }
    wait_ready(&lab, opts.ready_timeout)?;
    Ok(lab)
}

fn sysctl(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "sysctl", "-q", "-w"]).args(settings);
    sys::run_ok(&mut cmd, Duration::from_secs(10), true).map(|_| ())
}

/// Namespaces, the underlay router and the node uplinks (common to both backends).
fn build(lab: &LabHandle) -> Result<(), LabError> {
    let st = &lab.state;
    let rt = lab.router_ns();
    for ns in &st.namespaces {
        sys::ip(&["netns", "add", ns])?;
    }
    for ns in &st.namespaces {
        // IPv6 off before any interface exists: no DAD or ND noise in captures and counters.
        sysctl(ns, &["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"])?;
        sys::ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    sysctl(&rt, &["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])?;
    // br_netfilter (container runtimes load it) hands every frame a bridge forwards to the IP
    // hooks, in every namespace (the sysctls start on). A switch does not filter, and the
    // cost falls per frame: on vrouter's wire-sized frames, not the kernel lab's 64 KiB
    // segments (cross-node TCP 3.5 -> 3.9 Gbit/s). Off where the module is there, so the lab
    // is the same switch on every machine.
    if sys::exec_in(&rt, &["test", "-d", "/proc/sys/net/bridge"], Duration::from_secs(5)).status.success() {
        sysctl(
            &rt,
            &[
                "net.bridge.bridge-nf-call-iptables=0",
                "net.bridge.bridge-nf-call-ip6tables=0",
                "net.bridge.bridge-nf-call-arptables=0",
            ],
        )?;
    }
    let mut subnets: Vec<u8> = st.nodes.iter().map(|n| topo::subnet_of(n.index)).collect();
    subnets.sort_unstable();
    subnets.dedup();
    for s in subnets {
        let br = topo::bridge(s);
        sys::ip(&["-n", &rt, "link", "add", &br, "type", "bridge", "stp_state", "0", "forward_delay", "0"])?;
        sys::ip(&["-n", &rt, "addr", "add", &format!("192.168.{s}.1/24"), "dev", &br])?;
        sys::ip(&["-n", &rt, "link", "set", &br, "up"])?;
    }
    for n in &st.nodes {
        let dev = n.router_dev.as_str();
        add_veth(&n.ns, topo::UPLINK_DEV, dev, &rt, st.mtu)?;
        sys::ip(&["-n", &rt, "link", "set", dev, "master", &topo::bridge(topo::subnet_of(n.index))])?;
        // A wire carries whole checksums; a veth hands on partial ones, which AF_XDP sees as
        // they are (and the node's kernel drops TCP from the router, BGP included). Only in
        // front of vrouter: the kernel backend's nodes take partial checksums and big
        // segments from the router as a kernel does, and its figures should not pay for this.
        if st.backend == Backend::Vrouter {
            sys::ns_ok(&rt, &["ethtool", "-K", dev, "tx", "off"], Duration::from_secs(10))?;
        }
        sys::ip(&["-n", &rt, "link", "set", dev, "up"])?;
        sys::ip(&["-n", &n.ns, "link", "set", topo::UPLINK_DEV, "up"])?;
    }
    Ok(())
}

/// A veth pair of `mtu`: `name` in namespace `ns`, `peer` in `peer_ns`.
fn add_veth(ns: &str, name: &str, peer: &str, peer_ns: &str, mtu: u16) -> Result<(), LabError> {
    let mtu = mtu.to_string();
    let args = ["-n", ns, "link", "add", name, "mtu", &mtu, "type", "veth", "peer", "name", peer, "mtu", &mtu];
    sys::ip(&[&args[..], &["netns", peer_ns]].concat()).map(|_| ())
}

/// Kernel backend: Calico's own layout (veth pods, /32 routes, gateway 169.254.1.1) with Linux
/// forwarding and plain routes between nodes.
fn kernel_forwarding(lab: &LabHandle) -> Result<(), LabError> {
    let st = &lab.state;
    let rt = lab.router_ns();
    for n in &st.nodes {
        let ns = n.ns.as_str();
        let prefix_len = n.subnet.rsplit('/').next().unwrap_or("24");
        sysctl(ns, &["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"])?;
        sys::ip(&["-n", ns, "addr", "add", &format!("{}/{prefix_len}", n.ip), "dev", topo::UPLINK_DEV])?;
        // The pods' gateway answers ARP and ping as a local address (arp_ignore=0).
        sys::ip(&["-n", ns, "addr", "add", "169.254.1.1/32", "dev", "lo"])?;
        sys::ip(&["-n", ns, "route", "add", "default", "via", &n.gateway.to_string()])?;
        for peer in st.nodes.iter().filter(|p| p.index != n.index && p.subnet == n.subnet) {
            sys::ip(&["-n", ns, "route", "add", &peer.pod_block, "via", &peer.ip.to_string()])?;
        }
        sys::ip(&["-n", &rt, "route", "add", &n.pod_block, "via", &n.ip.to_string()])?;
        for pod in st.pods.iter().filter(|p| p.node == n.index) {
            let tap = format!("tap{}", pod.name);
            let pns = pod.ns.as_str();
            add_veth(ns, &tap, topo::POD_IF, pns, topo::pod_mtu(st.mtu))?;
            let mtu = topo::pod_mtu(st.mtu).to_string();
            sys::ip(&["-n", pns, "link", "set", topo::POD_IF, "address", &pod.mac, "mtu", &mtu, "up"])?;
            sys::ip(&["-n", pns, "addr", "add", &format!("{}/32", pod.ip), "dev", topo::POD_IF])?;
            sys::ip(&["-n", pns, "route", "add", "169.254.1.1", "dev", topo::POD_IF, "scope", "link"])?;
            sys::ip(&["-n", pns, "route", "add", "default", "via", "169.254.1.1", "dev", topo::POD_IF])?;
            sys::ip(&["-n", ns, "link", "set", &tap, "up"])?;
            sys::ip(&["-n", ns, "route", "add", &format!("{}/32", pod.ip), "dev", &tap])?;
        }
    }
    Ok(())
}

/// Writes and validates each node's config, then starts its daemon in the node namespace.
fn start_daemons(lab: &mut LabHandle, bin: &Path, idle: &str) -> Result<(), LabError> {
    lab.state.vrouter = Some(bin.to_path_buf());
    let nodes = lab.state.nodes.clone();
    for n in &nodes {
        let text = match lab.state.cluster {
            true => {
                let sock = lab.state.bgp.then(|| bgp::files(lab, n.index).socket);
                topo::cluster_node_config(n, idle, lab.state.mtu, sock.as_deref())
            }
            false => topo::node_config(n, &lab.state.nodes, &lab.state.pods, idle, lab.state.mtu),
        }
        .map_err(|msg| LabError::Config { node: n.name.clone(), msg })?;
        let config = lab.state.dir.join(format!("{}.toml", n.name));
        crate::control::config::Config::parse(&text, &config)
            .map_err(|e| LabError::Config { node: n.name.clone(), msg: e.to_string() })?;
        std::fs::write(&config, &text)
            .map_err(|err| LabError::Io { what: format!("writing {}", config.display()), err })?;
        let stats = lab.state.dir.join(format!("{}.stats.json", n.name));
        let _ = std::fs::remove_file(&stats);
        let log = lab.state.dir.join(format!("{}.log", n.name));
        let bin_s = bin.to_string_lossy();
        let (cfg_s, stats_s) = (config.to_string_lossy(), stats.to_string_lossy());
        let child = sys::spawn_in(&n.ns, &[&bin_s, "run", "--config", &cfg_s, "--stats", &stats_s], Some(&log))?;
        lab.state.daemons.push(DaemonState {
            node: n.name.clone(),
            ns: n.ns.clone(),
            pid: child.id(),
            config,
            stats,
            log,
        });
        lab.children.lock().unwrap_or_else(|e| e.into_inner()).push(child);
        lab.state.save()?;
        register(&lab.state);
    }
    Ok(())
}

/// Waits until every daemon writes stats and every pod gets an answer from its gateway.
fn wait_ready(lab: &LabHandle, timeout: Duration) -> Result<(), LabError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let not_ready = |node: &str, what: String| {
        let d = lab.state.daemons.iter().find(|d| d.node == node);
        LabError::NotReady {
            node: node.into(),
            secs: start.elapsed().as_secs_f64(),
            what,
            log: d.map(|d| d.log.clone()).unwrap_or_default(),
            tail: d.map(|d| sys::tail(&d.log, 15)).unwrap_or_else(|| "(kernel backend: no daemon)".into()),
        }
    };
    for d in &lab.state.daemons {
        loop {
            if !sys::alive(d.pid) {
                return Err(not_ready(&d.node, format!("daemon (pid {}) exited", d.pid)));
            }
            if d.stats.exists() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(not_ready(&d.node, format!("no stats file {}", d.stats.display())));
            }
            sys::sleep(Duration::from_millis(50))?;
        }
    }
    for pod in &lab.state.pods {
        let node = &lab.node(pod.node).name;
        loop {
            let out = sys::exec_in(&pod.ns, &["ping", "-c", "1", "-W", "1", "169.254.1.1"], Duration::from_secs(5));
            sys::check_cancelled()?;
            if out.status.success() {
                break;
            }
            if let Some(d) = lab.state.daemons.iter().find(|d| &d.node == node) {
                if !sys::alive(d.pid) {
                    return Err(not_ready(node, format!("daemon (pid {}) exited", d.pid)));
                }
            }
            if Instant::now() >= deadline {
                let why = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stderr).lines())
                    .last()
                    .map(String::from)
                    .unwrap_or_default();
                return Err(not_ready(
                    node,
                    format!("pod {} ({}) gets no answer from 169.254.1.1 ({why})", pod.name, pod.ns),
                ));
            }
            sys::sleep(Duration::from_millis(100))?;
        }
    }
    Ok(())
}

/// Stops the daemons (SIGTERM, then SIGKILL after 5 s), kills whatever else runs in the lab's
/// namespaces and deletes them. Works from the state alone, without the process that built it.
fn teardown(state: &LabState) -> Result<(), LabError> {
    let prefix = &state.prefix;
    let mut names: Vec<String> = state.namespaces.clone();
    // Whatever carries the lab's prefix, whatever its size (the state file may be gone).
    let mine = |ns: &String| ns.strip_prefix(prefix.as_str()).is_some_and(|r| r.starts_with('-'));
    let prefixed = sys::netns_list().map(|l| l.into_iter().filter(mine).collect::<Vec<_>>()).unwrap_or_default();
    for ns in all_namespaces(prefix, topo::DEFAULT_NODES).into_iter().chain(prefixed) {
        if !names.contains(&ns) {
            names.push(ns);
        }
    }
    let present: Vec<String> = match sys::netns_list() {
        Ok(l) => names.iter().filter(|n| l.contains(n)).cloned().collect(),
        Err(_) => names.clone(),
    };
    // Daemons first, gently: they remove their TAPs and detach their XDP program.
    let mut daemons: Vec<u32> = state
        .daemons
        .iter()
        .filter(|d| sys::alive(d.pid) && sys::cmdline(d.pid).is_some_and(|c| c.contains(&*d.config.to_string_lossy())))
        .map(|d| d.pid)
        .collect();
    for n in &state.nodes {
        if present.contains(&n.ns) {
            for pid in sys::netns_pids(&n.ns) {
                if !daemons.contains(&pid) {
                    daemons.push(pid);
                }
            }
        }
    }
    for &pid in &daemons {
        sys::signal(pid, sys::Signal::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end && daemons.iter().any(|&p| sys::alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    for &pid in daemons.iter().filter(|&&p| sys::alive(p)) {
        eprintln!("vrouter lab: pid {pid} ignored SIGTERM for 5 s: SIGKILL");
        sys::signal(pid, sys::Signal::SIGKILL);
    }
    // Anything else (pings, iperf3 servers, captures) dies with its namespace.
    for ns in &present {
        for pid in sys::netns_pids(ns) {
            sys::signal(pid, sys::Signal::SIGKILL);
        }
    }
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end && present.iter().any(|ns| sys::netns_pids(ns).iter().any(|&p| sys::alive(p))) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut left = vec![];
    for ns in &present {
        let del = sys::run_ok(Command::new("ip").args(["netns", "del", ns]), Duration::from_secs(10), false);
        if let Err(e) = del {
            left.push(format!("{ns} ({e})"));
        }
    }
    let _ = std::fs::remove_file(state.path());
    // A cluster lab's etcd data (its WAL alone preallocates 64 MiB).
    let _ = std::fs::remove_dir_all(state.dir.join("etcd"));
    sys::unregister(prefix);
    if left.is_empty() {
        Ok(())
    } else {
        Err(LabError::Teardown { prefix: prefix.clone(), left: left.join(", ") })
    }
}

/// Prefixes of the labs on this machine: from state files under `root` whose namespaces exist,
/// and from `*-rt` namespaces that look like a lab's.
fn find_labs(root: &Path) -> Result<Vec<String>, LabError> {
    let nss = sys::netns_list()?;
    let mut found = vec![];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let p = e.file_name().to_string_lossy().into_owned();
            // A state file whose namespaces are all gone is stale (its process was killed and
            // the namespaces removed by hand): not a lab.
            let live = all_namespaces(&p, topo::DEFAULT_NODES).iter().any(|ns| nss.contains(ns));
            if e.path().join("state.json").is_file() && check_prefix(&p).is_ok() && live {
                found.push(p);
            }
        }
    }
    for ns in &nss {
        if let Some(p) = ns.strip_suffix("-rt") {
            if check_prefix(p).is_ok() && nss.contains(&format!("{p}-n1")) && !found.iter().any(|f| f == p) {
                found.push(p.to_string());
            }
        }
    }
    found.sort();
    Ok(found)
}

fn resolve(root: &Path, prefix: Option<&str>) -> Result<LabState, LabError> {
    let prefix = match prefix {
        Some(p) => {
            check_prefix(p)?;
            p.to_string()
        }
        None => {
            let labs = find_labs(root)?;
            match labs.len() {
                0 => return Err(LabError::NoLab),
                1 => labs[0].clone(),
                _ => return Err(LabError::Ambiguous(labs.join(", "))),
            }
        }
    };
    let dir = root.join(&prefix);
    let path = dir.join("state.json");
    if path.is_file() {
        LabState::load(&path)
    } else {
        // A lab whose state file is gone (or never written): the namespace names suffice.
        Ok(LabState::new(&prefix, dir, Backend::Vrouter, topo::DEFAULT_NODES))
    }
}

/// Tears down a lab kept by `up` (or left by a killed process). `None`: the only lab there is.
pub fn down(prefix: Option<&str>) -> Result<(), LabError> {
    down_in(Path::new(DEFAULT_ROOT), prefix)
}

/// [`down`] for labs under another root directory.
pub fn down_in(root: &Path, prefix: Option<&str>) -> Result<(), LabError> {
    if !sys::is_root() {
        return Err(NOT_ROOT);
    }
    sys::need_tool("ip")?;
    let state = resolve(root, prefix)?;
    teardown(&state)
}

/// A report on a lab: namespaces present, daemons alive, per-node key counters.
pub fn status(prefix: Option<&str>) -> Result<String, LabError> {
    status_in(Path::new(DEFAULT_ROOT), prefix)
}

/// [`status`] for labs under another root directory.
pub fn status_in(root: &Path, prefix: Option<&str>) -> Result<String, LabError> {
    use std::fmt::Write as _;
    sys::need_tool("ip")?;
    let st = resolve(root, prefix)?;
    let nss = sys::netns_list()?;
    let mut s = String::new();
    let _ = writeln!(s, "lab {} ({:?} backend), files in {}", st.prefix, st.backend, st.dir.display());
    let missing: Vec<&str> = st.namespaces.iter().filter(|n| !nss.contains(n)).map(String::as_str).collect();
    let _ = writeln!(
        s,
        "namespaces: {}/{} present{}",
        st.namespaces.len() - missing.len(),
        st.namespaces.len(),
        if missing.is_empty() { String::new() } else { format!(" (missing: {})", missing.join(", ")) }
    );
    for n in &st.nodes {
        let _ = write!(s, "{} {} {}:", n.name, n.ns, n.ip);
        let Some(d) = st.daemons.iter().find(|d| d.node == n.name) else {
            let _ = writeln!(s, " no daemon");
            continue;
        };
        let alive = sys::alive(d.pid);
        let _ = writeln!(s, " daemon pid {} {}", d.pid, if alive { "alive" } else { "NOT RUNNING" });
        let Some(v) = read_stats(&d.stats) else {
            let _ = writeln!(s, "  no stats ({})", d.stats.display());
            continue;
        };
        if let Some(ports) = v["ports"].as_object() {
            let list: Vec<String> = ports
                .iter()
                .map(|(name, p)| {
                    format!(
                        "{name} rx {} tx {}",
                        p["rx_packets"].as_u64().unwrap_or(0),
                        p["tx_packets"].as_u64().unwrap_or(0)
                    )
                })
                .collect();
            let _ = writeln!(s, "  ports: {}", list.join(", "));
        }
        if let Some(c) = v["counters"].as_object() {
            let list: Vec<String> =
                c.iter().filter(|(_, x)| x.as_u64() != Some(0)).map(|(k, x)| format!("{k}={x}")).collect();
            let _ = writeln!(s, "  counters: {}", if list.is_empty() { "all zero".into() } else { list.join(", ") });
        }
        if let Some(dr) = v["drops"].as_object() {
            let list: Vec<String> =
                dr.iter().filter(|(_, x)| x.as_u64() != Some(0)).map(|(k, x)| format!("{k}={x}")).collect();
            let _ = writeln!(s, "  drops: {}", if list.is_empty() { "none".into() } else { list.join(", ") });
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_make_no_lab_are_refused_with_what_to_use() {
        let bad = |o: LabOptions| check_options(&o).unwrap_err().to_string();
        assert!(check_options(&LabOptions::default()).is_ok());
        assert!(check_options(&LabOptions { mtu: topo::MAX_MTU, ..Default::default() }).is_ok());
        assert!(check_options(&LabOptions { mtu: 3506, ..Default::default() }).is_ok());
        assert!(check_options(&LabOptions { mtu: 3827, ..Default::default() }).is_ok());
        let e = bad(LabOptions { mtu: 3600, ..Default::default() });
        assert!(e.contains("MTU 3600: use 596 to 3506") && e.contains("or 3827 to 9000"), "{e}");
        let e = bad(LabOptions { mtu: 9001, ..Default::default() });
        assert!(e.contains("MTU 9001: use"), "{e}");
        let e = bad(LabOptions { mtu: 590, ..Default::default() });
        assert!(e.contains("MTU 590: use 596 to 3506"), "{e}");
        let e = bad(LabOptions { idle: "nap".into(), ..Default::default() });
        assert!(e.contains("idle mode 'nap'"), "{e}");
        let e = bad(LabOptions { backend: Backend::Kernel, cluster: true, ..Default::default() });
        assert!(e.contains("needs vrouter on the nodes"), "{e}");
        let e = bad(LabOptions { nodes: 3, route_reflectors: 3, cluster: true, ..Default::default() });
        assert!(e.contains("at least one node must be a client"), "{e}");
    }
}
