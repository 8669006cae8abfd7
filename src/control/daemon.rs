//! `vrouter run`: build the node from its config, open the ports, start the workers, serve the
//! control socket (and metrics, and the kernel route import when configured), publish
//! counters; SIGHUP re-reads the config and applies the difference; on SIGINT/SIGTERM stop and
//! leave nothing behind (TAPs close with their fds, the XDP program detaches with the last
//! AF_XDP socket, and is removed again to be sure, the socket file is removed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use arc_swap::ArcSwap;

use super::build::{HOST_PORT, UPLINK};
use super::config::{Config, ConfigError, EndpointConfig};
use super::node::{Node, NodeError, PortIo};
use super::server::{self, Control};
use super::status::{LinkState, NodeStatus, UplinkInfo};
use crate::port::afxdp::{self, XskPort};
use crate::port::tap::{PodSetup, TapPort};
use crate::port::xdp;
use crate::repeat::{Hit, Repeated};
use crate::worker::{PortSet, TxTarget, WorkerRt};
use vrouter_core::dataplane::{Pipeline, PipelineConfig, PortId, Shared, MAX_PORTS};
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::neigh::NeighTable;
use vrouter_core::wire::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Node(#[from] NodeError),
    #[error("{0}")]
    Server(#[from] server::ServerError),
    #[error("{0}")]
    Metrics(#[from] super::metrics::MetricsError),
    #[error("{0}")]
    Owner(#[from] xdp::OwnerError),
    #[error("uplink {dev}: {msg}")]
    Uplink { dev: String, msg: String },
    #[error("endpoint {name}: {msg}")]
    Endpoint { name: String, msg: String },
    #[error("--stats {path}: {msg}")]
    Stats { path: String, msg: String },
    #[error("host port: {0}")]
    Host(String),
    #[error("{0}")]
    Other(String),
}

fn read_mac(dev: &str) -> Result<MacAddr, DaemonError> {
    let uplink_err = |msg: String| DaemonError::Uplink { dev: dev.to_string(), msg };
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))
        .map_err(|e| uplink_err(format!("no such device in this network namespace ({e})")))?;
    s.trim().parse().map_err(uplink_err)
}

/// Refuses a `--stats` path that cannot be written (missing directory, no permission), which
/// would otherwise fail on every tick for as long as the daemon runs.
fn check_stats_path(path: &Path) -> Result<(), DaemonError> {
    let err = |msg: String| DaemonError::Stats { path: path.display().to_string(), msg };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(err(format!("the directory {} does not exist; create it or choose another path", dir.display())));
    }
    let probe = path.with_extension("tmp");
    std::fs::write(&probe, b"{}").map_err(|e| err(format!("cannot write there ({e})")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// The daemon's ports as the workers see them: pods' TAPs are created and removed here on the
/// node's behalf, and each change is published as a new [`PortSet`].
struct TapIo {
    set: Arc<ArcSwap<PortSet>>,
    pods: BTreeMap<PortId, Arc<TapPort>>,
    /// Created for pods that replace running ones, not yet given to the workers.
    staged: BTreeMap<PortId, TapPort>,
    host: Option<Arc<TapPort>>,
    /// The kernel's routes to pod blocks through the host TAP ([`PortIo::host_routes`]).
    host_routes: BTreeSet<Ipv4Prefix>,
    uplink: bool,
    /// Queues per TAP: one per worker (`IFF_MULTI_QUEUE` when more than one).
    queues: usize,
    version: u64,
    /// Removed pods' TAPs, closed here once no worker holds a port set that has them.
    retired: Retired<TapPort>,
}

/// How long [`PortIo::remove_pod`] waits for the workers to let go of a removed pod's TAP (a
/// worker holds its port set for one pass, asleep or not: at most about 10 ms).
const RETIRE_WAIT: Duration = Duration::from_millis(500);

/// Ports taken out of the workers' port set, kept until the workers have let go of them and
/// then dropped by the caller (the control thread), never by a worker.
///
/// Closing a TAP is slow: the kernel detaches its queue and unregisters the device, waiting for
/// RCU grace periods (milliseconds each). Whoever drops the last reference does it, and a
/// worker's last reference to a removed pod's TAP went with the port set it held for a pass: a
/// worker stopped forwarding while it closed TAPs (54 pods removed from each of two nodes,
/// one `vrouterctl endpoint del` after another, stopped pings between other pods for 1.2 s;
/// BENCHMARKS.md).
struct Retired<T> {
    ports: Vec<Arc<T>>,
}

impl<T> Default for Retired<T> {
    fn default() -> Self {
        Retired { ports: Vec::new() }
    }
}

impl<T> Retired<T> {
    fn push(&mut self, port: Arc<T>) {
        self.ports.push(port);
    }

    /// Drops every retired port nobody else holds, waiting up to `wait` for the others to be
    /// let go of. Returns how many are still held (dropped by a later call).
    fn close(&mut self, wait: Duration) -> usize {
        let deadline = std::time::Instant::now() + wait;
        loop {
            // Only threads still holding an old port set (workers for a pass, the status
            // reader) can have another reference, and those are only ever dropped, so a count
            // of one stays one.
            self.ports.retain(|p| Arc::strong_count(p) > 1);
            if self.ports.is_empty() || std::time::Instant::now() >= deadline {
                return self.ports.len();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl TapIo {
    fn publish(&mut self) {
        let mut targets = vec![TxTarget::None; MAX_PORTS];
        if self.uplink {
            targets[UPLINK as usize] = TxTarget::Uplink;
        }
        let mut taps = Vec::new();
        if let Some(h) = &self.host {
            targets[HOST_PORT as usize] = TxTarget::Tap(h.clone());
            taps.push(h.clone());
        }
        for (slot, t) in &self.pods {
            targets[*slot as usize] = TxTarget::Tap(t.clone());
            taps.push(t.clone());
        }
        self.version += 1;
        self.set.store(Arc::new(PortSet { version: self.version, targets, taps }));
    }
}

/// The log line for a reload (SIGHUP) that failed: refused with the previous config still
/// running, or applied in part (pods down until the next apply), as the error says.
fn reload_failed(e: &NodeError) -> String {
    match e {
        NodeError::PodsDown { .. } | NodeError::Unfinished(_) => format!("config reload (SIGHUP): {e}"),
        e => format!("config reload (SIGHUP) refused, still running the previous config: {e}"),
    }
}

/// Whether the network namespace `ns` (a name under /run/netns, as `ip netns` makes, an
/// absolute path to a namespace file, or a pid) exists.
fn netns_exists(ns: &str) -> bool {
    match ns.parse::<u32>() {
        Ok(pid) => Path::new(&format!("/proc/{pid}/ns/net")).exists(),
        Err(_) => crate::port::netns_path(ns).is_some_and(|p| p.exists()),
    }
}

impl PortIo for TapIo {
    fn check_pod(&self, e: &EndpointConfig) -> Result<(), String> {
        match &e.netns {
            Some(ns) if ns.starts_with('/') && !netns_exists(ns) => {
                Err(format!("network namespace '{ns}' does not exist (no such file, or not a clean absolute path)"))
            }
            Some(ns) if !netns_exists(ns) => Err(format!(
                "network namespace '{ns}' does not exist (no /run/netns/{ns}; `ip netns add {ns}` creates one)"
            )),
            _ => Ok(()),
        }
    }

    fn stage_pod(&mut self, slot: PortId, e: &EndpointConfig) -> Result<(), String> {
        self.retired.close(Duration::ZERO);
        let name = format!("vrstage{slot}");
        let tap = TapPort::create(&name, slot, self.queues).map_err(|x| format!("TAP {name}: {x}"))?;
        if let Some(ns) = &e.netns {
            tap.move_to(ns).map_err(|x| x.to_string())?;
        }
        self.staged.insert(slot, tap);
        Ok(())
    }

    fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, pod_gateway: std::net::Ipv4Addr) -> Result<(), String> {
        // A removed pod's TAP still open would keep its name (a leftover from `RETIRE_WAIT`).
        self.retired.close(Duration::ZERO);
        let setup = |tap: &TapPort, ns: &str| {
            tap.configure_pod(&PodSetup {
                netns: ns,
                ifname: &e.ifname,
                mac: e.mac.to_string(),
                mtu: e.mtu,
                addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                gateway: pod_gateway.to_string(),
            })
            .map_err(|x| x.to_string())
        };
        let tap = match self.staged.remove(&slot) {
            // Staged: already in its namespace under a temporary name. The replaced pod's
            // TAP was closed when it was removed, unless a worker held it longer than
            // `RETIRE_WAIT`: then its name may still be taken for a moment.
            Some(mut tap) => {
                let deadline = std::time::Instant::now() + Duration::from_secs(2);
                loop {
                    let r = match &e.netns {
                        Some(ns) => setup(&tap, ns),
                        None => tap.rename(&e.tap).map_err(|x| format!("TAP {}: {x}", e.tap)),
                    };
                    match r {
                        Err(m) if m.contains("File exists") && std::time::Instant::now() < deadline => {
                            self.retired.close(Duration::ZERO);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        r => break r?,
                    }
                }
                tap
            }
            None => match &e.netns {
                // Created in the pod's namespace: no move (a move waits for an RCU grace period).
                Some(ns) => {
                    let tap = TapPort::create_in(&e.tap, slot, ns, self.queues)
                        .map_err(|x| format!("TAP {} in {ns}: {x}", e.tap))?;
                    setup(&tap, ns)?;
                    tap
                }
                None => TapPort::create(&e.tap, slot, self.queues).map_err(|x| format!("TAP {}: {x}", e.tap))?,
            },
        };
        info!(endpoint = %e.name, tap = %e.tap, netns = ?e.netns, port = slot, offloads = %tap.offload_names(), "pod port ready");
        self.pods.insert(slot, Arc::new(tap));
        self.publish();
        Ok(())
    }

    fn remove_pod(&mut self, slot: PortId) {
        self.remove_pods(&[slot]);
    }

    /// All out of the workers' port set at once, so the workers are waited for once.
    fn remove_pods(&mut self, slots: &[PortId]) {
        for slot in slots {
            self.staged.remove(slot);
            if let Some(tap) = self.pods.remove(slot) {
                info!(port = slot, "pod port removed");
                self.retired.push(tap);
            }
        }
        self.publish();
        // Closed here, and before the names are needed again (pods replacing these).
        let held = self.retired.close(RETIRE_WAIT);
        if held > 0 {
            warn!(ports = held, "removed pods' TAPs still held after 500 ms; closed at the next pod change");
        }
    }

    fn port_gone(&self, slot: PortId) -> bool {
        self.pods.get(&slot).is_some_and(|t| t.is_gone())
    }

    fn host_routes(&mut self, blocks: &[Ipv4Prefix], via: std::net::Ipv4Addr) {
        let Some(tap) = &self.host else { return };
        let want: BTreeSet<Ipv4Prefix> = blocks.iter().copied().collect();
        for p in self.host_routes.difference(&want) {
            if let Err(e) = tap.unroute(&p.to_string()) {
                warn!(prefix = %p, "host route not removed: {e}");
            }
        }
        for p in want.difference(&self.host_routes) {
            match tap.route_via(&p.to_string(), &via.to_string()) {
                Ok(()) => info!(prefix = %p, %via, tap = %tap.name, "host route to pods"),
                Err(e) => warn!(prefix = %p, "host route not installed: {e}"),
            }
        }
        self.host_routes = want;
    }
}

/// Marks the workers as not running when one ends, however it ends (`/healthz` says 503).
struct WorkerExit(Arc<NodeStatus>);

impl Drop for WorkerExit {
    fn drop(&mut self) {
        self.0.workers_running.store(false, Ordering::Relaxed);
    }
}

/// One look at the uplink's link state (each timer tick), logging a change.
fn follow_link(dev: &str, status: &NodeStatus) {
    let now = LinkState::read(dev);
    match status.set_link(now) {
        Some(_) if now == LinkState::Up => info!(dev, "uplink link up: forwarding on it again"),
        Some(before) => error!(
            dev,
            link = now.name(),
            was = before.name(),
            "uplink link lost (no carrier): frames for it are dropped (tx/link-down)"
        ),
        None => {}
    }
}

/// One look at the uplink's XDP hook (each timer tick): a program removed by someone else
/// (`ip link set dev X xdp off`) loses every frame, so it is logged, counted and put back.
/// `lost` says whether the previous look already found it missing (one log line per episode).
fn watch_xdp(dev: &str, w: &xdp::XdpWatch, status: &NodeStatus, lost: bool) -> bool {
    match w.check() {
        xdp::XdpCheck::Attached => {
            if lost {
                info!(dev, prog_id = w.prog_id(), "uplink XDP program attached again");
            }
            false
        }
        xdp::XdpCheck::Reattached if lost => {
            info!(dev, prog_id = w.prog_id(), "uplink XDP hook free again: vrouter's program attached again");
            false
        }
        xdp::XdpCheck::Reattached => {
            status.xdp_lost.fetch_add(1, Ordering::Relaxed);
            error!(
                dev,
                prog_id = w.prog_id(),
                "the uplink's XDP program was removed by someone else (every frame was lost); attached it again"
            );
            false
        }
        xdp::XdpCheck::ReattachFailed(errno) => {
            if !lost {
                status.xdp_lost.fetch_add(1, Ordering::Relaxed);
                error!(dev, prog_id = w.prog_id(), "the uplink's XDP program was removed by someone else and cannot be put back ({}); no frame reaches vrouter", std::io::Error::from_raw_os_error(errno));
            }
            true
        }
        xdp::XdpCheck::Replaced(other) => {
            if !lost {
                status.xdp_lost.fetch_add(1, Ordering::Relaxed);
                error!(dev, prog_id = w.prog_id(), other_prog_id = other, "another XDP program replaced vrouter's on the uplink; no frame reaches vrouter until it is removed (then vrouter's is put back)");
            }
            true
        }
    }
}

/// Tells every worker and service thread to stop and waits for them (on shutdown, and when
/// starting fails part-way).
fn stop_threads(stop: &AtomicBool, threads: impl IntoIterator<Item = std::thread::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for h in threads {
        let _ = h.join();
    }
}

/// Runs the node described by `config` until SIGINT or SIGTERM; SIGHUP reloads it.
pub fn run(config: &Path, stats: Option<PathBuf>) -> Result<(), DaemonError> {
    let cfg = Config::load(config)?;
    if let Some(p) = &stats {
        check_stats_path(p)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| DaemonError::Other(format!("signal handler: {e}")))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| DaemonError::Other(format!("signal handler: {e}")))?;

    // One vrouter per uplink: taken before anything on the device is touched, held until exit.
    let _uplink_lock = match &cfg.uplink {
        Some(u) => Some(xdp::UplinkLock::acquire(&u.device, Path::new(xdp::LOCK_DIR))?),
        None => None,
    };
    let uplink_mac = match &cfg.uplink {
        Some(u) => {
            let mac = read_mac(&u.device)?;
            if let Some(msg) = cfg.uplink_mtu_problem() {
                return Err(DaemonError::Uplink { dev: u.device.clone(), msg });
            }
            let have = afxdp::queue_count(&u.device)
                .map_err(|e| DaemonError::Uplink { dev: u.device.clone(), msg: e.to_string() })?;
            if u.queues > have {
                return Err(DaemonError::Uplink {
                    dev: u.device.clone(),
                    msg: format!(
                        "uplink.queues = {} but the device has {have} RX queue(s); lower it, or add queues (ethtool -L {} combined N; veth: create with numrxqueues N)",
                        u.queues, u.device
                    ),
                });
            }
            // We own the device (the lock), so a program on it is not a live vrouter's: a
            // killed predecessor left it (libxdp's), or something else did.
            let index = xdp::ifindex(&u.device).unwrap_or(0);
            for mode in [xdp::AttachMode::Native, xdp::AttachMode::Generic] {
                if let Ok(id @ 1..) = xdp::attached_prog(index, mode) {
                    warn!(dev = %u.device, prog_id = id, ?mode, "removing the XDP program left on the uplink (no live vrouter owns it)");
                }
            }
            afxdp::detach_xdp(&u.device);
            if let Some(w) = xdp::veth_warning(&u.device) {
                warn!("{w}");
            }
            mac
        }
        None => MacAddr([0x02, 0, 0, 0, 0, 0x01]),
    };
    let neigh = NeighTable::new(cfg.neigh.table_config()).map_err(|e| DaemonError::Other(e.to_string()))?;
    let (shared, fib) = Shared::new(Node::empty_snapshot(&cfg, uplink_mac), neigh);

    // Ports. Everything created here is removed when dropped, including on early return.
    let port_set = Arc::new(ArcSwap::from_pointee(PortSet::default()));
    let mut io = TapIo {
        set: port_set.clone(),
        pods: BTreeMap::new(),
        staged: BTreeMap::new(),
        host: None,
        host_routes: BTreeSet::new(),
        uplink: cfg.uplink.is_some(),
        queues: cfg.uplink.as_ref().map_or(1, |u| u.queues as usize),
        version: 0,
        retired: Retired::default(),
    };
    if let Some(h) = &cfg.host {
        let tap = TapPort::create(&h.tap, HOST_PORT, io.queues).map_err(|e| DaemonError::Host(e.to_string()))?;
        let cidr = format!("{}/{}", cfg.node.ip, cfg.node.subnet.len());
        let mtu = cfg.uplink.as_ref().map(|u| u.mtu).unwrap_or(1500);
        tap.setup_host(&uplink_mac.to_string(), &cidr, mtu, cfg.node.gateway.map(|g| g.to_string()).as_deref())
            .map_err(|e| DaemonError::Host(e.to_string()))?;
        info!(tap = %h.tap, addr = %cidr, offloads = %tap.offload_names(), "host port ready");
        io.host = Some(Arc::new(tap));
    }
    io.publish();
    let mut xsks = Vec::new();
    if let Some(u) = &cfg.uplink {
        for q in 0..u.queues {
            let mut x = XskPort::open(&u.device, q, u.xdp_mode, u.bind, u.mtu, UPLINK)
                .map_err(|e| DaemonError::Uplink { dev: u.device.clone(), msg: e.to_string() })?;
            if q == 0 {
                // AF_XDP has no TSO; TX checksum offload through TX metadata needs a driver that
                // has it (mlx5, stmmac; not veth), and xsk-rs sets up no TX metadata.
                info!(
                    dev = %u.device,
                    multi_buffer = x.is_multi_buffer(),
                    "uplink offloads: segmentation (GSO) and checksums in software; AF_XDP TX checksum offload not used; multi-buffer (XDP_USE_SG) {}",
                    if x.is_multi_buffer() { "on: frames above one chunk span chains of chunks" } else { "off: every frame fits one chunk" }
                );
            }
            x.set_tx_queue(u.tx_queue);
            xsks.push(Some(x));
        }
    }
    let status = Arc::new(NodeStatus::new(port_set.clone()));
    // The program the sockets attached, kept so it can be put back if someone removes it.
    let xdp_watch = match (&cfg.uplink, xsks.first()) {
        (Some(u), Some(Some(x))) => {
            let mode = if x.mode == "native" { xdp::AttachMode::Native } else { xdp::AttachMode::Generic };
            let _ =
                status.uplink.set(UplinkInfo { device: u.device.clone(), xdp_mode: x.mode, zero_copy: x.zero_copy() });
            match xdp::XdpWatch::new(&u.device, mode) {
                Ok(w) => Some((u.device.clone(), w)),
                Err(e) => {
                    warn!(dev = %u.device, "cannot hold the uplink's XDP program ({e}); a removed program will not be put back");
                    None
                }
            }
        }
        _ => None,
    };

    if let Some(u) = &cfg.uplink {
        let link = LinkState::read(&u.device);
        status.set_link(link);
        if link != LinkState::Up {
            warn!(dev = %u.device, link = link.name(), "uplink link is not up (no carrier): frames for it are dropped (tx/link-down) until it is");
        }
    }
    // Workers: one per uplink queue (at least one); worker 0 also receives from the TAPs.
    let n_workers = xsks.len().max(1);
    let handoff = match n_workers {
        1 => None,
        n => Some(Arc::new(
            crate::worker::handoff::Handoff::new(n)
                .map_err(|e| DaemonError::Other(format!("worker handoff eventfd: {e}")))?,
        )),
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut counters = Vec::new();
    let mut handles = Vec::new();
    for id in 0..n_workers {
        let wcfg = PipelineConfig {
            conntrack_capacity: cfg.conntrack.capacity,
            conntrack_endpoint_share_pct: cfg.conntrack.endpoint_share_percent,
            ..cfg.workers.pipeline()
        };
        let pipeline = Pipeline::new(shared.clone(), wcfg);
        counters.push(pipeline.counters().clone());
        let core = cfg.workers.cores.get(id).and_then(|c| cores.iter().find(|x| x.id == *c).copied());
        let rt = WorkerRt {
            id,
            pipeline,
            uplink: xsks.get_mut(id).and_then(Option::take),
            handoff: handoff.clone(),
            ports: port_set.clone(),
            idle: cfg.workers.idle,
            spin: Duration::from_micros(cfg.workers.spin_us),
            core,
            stop: stop.clone(),
            uplink_link: status.link_cell(),
        };
        let st = status.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("vr-worker{id}"))
                .spawn(move || {
                    let _exit = WorkerExit(st);
                    rt.run()
                })
                .map_err(|e| DaemonError::Other(e.to_string()))?,
        );
    }
    status.workers_running.store(true, Ordering::Relaxed);
    // The node: pods, routes, policy. Workers are running, so every change from here on goes
    // through the same make-before-break path as live updates.
    let started = std::time::Instant::now();
    let node = match Node::new(cfg.clone(), uplink_mac, shared.clone(), fib, Box::new(io)) {
        Ok(n) => n,
        Err(e) => {
            stop_threads(&stop, handles);
            return Err(e.into());
        }
    };
    info!(node = %cfg.node.name, workers = n_workers, routes = node.fib_len(), "forwarding");
    let ctl = Arc::new(Control::new(node, counters.clone(), Some(config.to_path_buf()), started, status.clone()));
    let mut services = Vec::new();
    if !cfg.control.socket.is_empty() {
        match server::serve(Path::new(&cfg.control.socket), cfg.control.group.as_deref(), ctl.clone(), stop.clone()) {
            Ok(h) => {
                info!(socket = %cfg.control.socket, "control socket ready");
                services.push(h);
            }
            Err(e) => {
                stop_threads(&stop, handles);
                return Err(e.into());
            }
        }
    }

    if let Some(k) = &cfg.kernel_routes {
        use super::netlink::{spawn_watcher, RouteEvent, WatchConfig};
        let c = ctl.clone();
        let on_event = move |ev: RouteEvent| {
            let mut node = c.node();
            let r = match ev {
                RouteEvent::Set(r) => node.kernel_set(r.prefix, &r.nh),
                RouteEvent::Unset(p) => node.kernel_route_gone(p),
            };
            if let Err(e) = r {
                error!("kernel route import: {e}");
            }
        };
        match spawn_watcher(WatchConfig { table: k.table, netns: None }, stop.clone(), on_event) {
            Ok(h) => {
                info!(table = k.table, tunnel_device = %k.tunnel_device, "importing kernel routes");
                services.push(h);
            }
            Err(e) => {
                stop_threads(&stop, handles.into_iter().chain(services));
                return Err(DaemonError::Other(format!("kernel route import: {e}")));
            }
        }
    }
    if let Some(m) = &cfg.metrics {
        let c = ctl.clone();
        let st = status.clone();
        let healthy = move || st.workers_running.load(Ordering::Relaxed);
        match super::metrics::serve_with_health(m.listen, stop.clone(), move || c.metrics_text(), healthy) {
            Ok((h, addr)) => {
                info!("metrics at http://{addr}/metrics");
                services.push(h);
            }
            Err(e) => {
                stop_threads(&stop, handles.into_iter().chain(services));
                return Err(e.into());
            }
        }
    }

    let mut xdp_lost = false;
    let mut stats_failing = Repeated::new(Duration::from_secs(60));
    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            match ctl.reload() {
                Ok(r) => info!(change = %serde_json::to_string(&r).unwrap_or_default(), "config reloaded (SIGHUP)"),
                Err(e) => error!("{}", reload_failed(&e)),
            }
        }
        if let Some(p) = &stats {
            match write_atomically(p, &ctl.stats_document()) {
                Ok(()) => {
                    if let Some(n) = stats_failing.clear() {
                        info!(path = %p.display(), failures = n, "stats file written again");
                    }
                }
                Err(e) => match stats_failing.hit(std::time::Instant::now()) {
                    Hit::Log { suppressed } => error!(
                        path = %p.display(),
                        "cannot write stats: {e} (retried every 200 ms; logged once a minute; {suppressed} failures since the last line)"
                    ),
                    Hit::Quiet => {}
                },
            }
        }
        if let Some(u) = &cfg.uplink {
            follow_link(&u.device, &status);
        }
        if let Some((dev, w)) = &xdp_watch {
            xdp_lost = watch_xdp(dev, w, &status, xdp_lost);
        }
        ctl.housekeeping();
        if handles.iter().any(|h| h.is_finished()) {
            error!("a worker exited unexpectedly; stopping");
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    info!("stopping");
    stop_threads(&stop, handles.into_iter().chain(services));
    if let Some(p) = &stats {
        let _ = write_atomically(p, &ctl.stats_document());
    }
    drop(ctl);
    drop(xdp_watch);
    port_set.store(Arc::new(PortSet::default()));
    if let Some(u) = &cfg.uplink {
        afxdp::detach_xdp(&u.device);
    }
    info!("stopped cleanly");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_applied_in_part_is_not_logged_as_refused() {
        let down = NodeError::PodsDown { pods: vec!["a".into()], msg: "endpoint a: File exists".into() };
        let line = reload_failed(&down);
        assert!(!line.contains("refused") && !line.contains("previous config"), "{line}");
        assert!(line.contains("applied, but pod a could not be finished and is down until the next apply"), "{line}");
        let line = reload_failed(&NodeError::Unfinished("snapshot refused".into()));
        assert!(!line.contains("previous config") && line.contains("applied, but not completed"), "{line}");
        let line = reload_failed(&NodeError::Endpoint { name: "a".into(), msg: "no netns".into() });
        assert!(line.contains("refused, still running the previous config"), "{line}");
    }

    /// A port that records the thread it was dropped on.
    struct Port(Arc<std::sync::Mutex<Option<std::thread::ThreadId>>>);

    impl Drop for Port {
        fn drop(&mut self) {
            *self.0.lock().unwrap() = Some(std::thread::current().id());
        }
    }

    /// A removed port still in a port set a worker holds is not dropped (nor waited for past
    /// the limit); once the worker lets go, it is dropped by whoever closes the retired ports,
    /// not by the worker.
    #[test]
    fn a_retired_port_is_dropped_by_the_closer_once_the_workers_let_go_never_by_a_worker() {
        let dropped_on = Arc::new(std::sync::Mutex::new(None));
        let port = Arc::new(Port(dropped_on.clone()));
        // The worker's port set, with a reference to the port.
        let (give, held) = std::sync::mpsc::channel::<Arc<Port>>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let set = held.recv().unwrap();
            released.recv().unwrap();
            drop(set);
            std::thread::current().id()
        });
        give.send(port.clone()).unwrap();
        let mut retired = Retired::default();
        retired.push(port);
        assert_eq!(retired.close(Duration::from_millis(20)), 1, "still held by the worker");
        assert_eq!(*dropped_on.lock().unwrap(), None);
        release.send(()).unwrap();
        let worker_id = worker.join().unwrap();
        assert_eq!(*dropped_on.lock().unwrap(), None, "the worker's drop was not the last");
        assert_eq!(retired.close(Duration::ZERO), 0);
        let on = dropped_on.lock().unwrap().expect("dropped once the worker let go");
        assert_eq!(on, std::thread::current().id());
        assert_ne!(on, worker_id);
    }

    /// As the daemon holds them: a worker's guard on the published port set keeps the port
    /// after the control thread stored a new set, and the port is dropped by the closer once
    /// that guard is gone.
    #[test]
    fn a_workers_guard_on_the_published_set_holds_a_retired_port_until_it_is_dropped() {
        let dropped_on = Arc::new(std::sync::Mutex::new(None));
        let port = Arc::new(Port(dropped_on.clone()));
        let set = Arc::new(ArcSwap::from_pointee(vec![port.clone()]));
        let (loaded, guard_taken) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let worker = {
            let set = set.clone();
            std::thread::spawn(move || {
                let guard = set.load();
                assert_eq!(guard.len(), 1);
                loaded.send(()).unwrap();
                released.recv().unwrap();
                drop(guard);
            })
        };
        guard_taken.recv().unwrap();
        let mut retired = Retired::default();
        retired.push(port);
        set.store(Arc::new(vec![]));
        assert_eq!(retired.close(Duration::from_millis(20)), 1, "the worker's guard holds the old set");
        release.send(()).unwrap();
        worker.join().unwrap();
        assert_eq!(retired.close(Duration::ZERO), 0);
        assert_eq!(*dropped_on.lock().unwrap(), Some(std::thread::current().id()));
    }

    /// `close` waits for a worker that lets go within the limit.
    #[test]
    fn closing_waits_for_a_worker_that_lets_go_in_time() {
        let dropped_on = Arc::new(std::sync::Mutex::new(None));
        let port = Arc::new(Port(dropped_on.clone()));
        let set = port.clone();
        let worker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            drop(set);
        });
        let mut retired = Retired::default();
        retired.push(port);
        assert_eq!(retired.close(Duration::from_secs(10)), 0);
        assert_eq!(*dropped_on.lock().unwrap(), Some(std::thread::current().id()));
        worker.join().unwrap();
    }
}
