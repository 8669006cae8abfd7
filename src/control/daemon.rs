//! `vrouter run`: build the node from its config, open the ports, start the workers, serve the
//! control socket (and metrics, and the kernel route import when configured), publish
//! counters; SIGHUP re-reads the config and applies the difference; on SIGINT/SIGTERM stop and
//! leave nothing behind (TAPs close with their fds, the XDP program detaches with the last
//! AF_XDP socket, and is removed again to be sure, the socket file is removed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use arc_swap::ArcSwap;

use super::build::{HOST_PORT, UPLINK};
use super::config::{Config, ConfigError, EndpointConfig};
use super::node::{Node, NodeError, PortIo};
use super::server::{self, Control};
use crate::dataplane::{PortId, Shared, Worker, WorkerConfig, MAX_PORTS};
use crate::neigh::NeighTable;
use crate::port::afxdp::{self, XskPort};
use crate::port::tap::{PodSetup, TapPort};
use crate::stats::{Counters, DropReason};
use crate::wire::MacAddr;
use crate::worker::{PortSet, TxTarget, WorkerRt};

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
    #[error("uplink {dev}: {msg}")]
    Uplink { dev: String, msg: String },
    #[error("endpoint {name}: {msg}")]
    Endpoint { name: String, msg: String },
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

/// Sums the workers' counters into the stats document.
pub fn stats_json(node: &str, port_names: &[String], counters: &[Arc<Counters>]) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let mut ports = serde_json::Map::new();
    for (i, name) in port_names.iter().enumerate().filter(|(_, n)| !n.is_empty()) {
        let t: crate::stats::counters::PortStats = counters.iter().map(|c| c.port(i)).sum();
        ports.insert(name.clone(), serde_json::to_value(t).expect("plain struct"));
    }
    let mut drops = BTreeMap::new();
    for r in DropReason::ALL {
        let n: u64 = counters.iter().map(|c| c.drops(*r)).sum();
        drops.insert(r.name(), n);
    }
    let sum = |f: fn(&Counters) -> &std::sync::atomic::AtomicU64| -> u64 {
        counters.iter().map(|c| f(c).load(Relaxed)).sum()
    };
    serde_json::json!({
        "node": node,
        "ports": ports,
        "drops": drops,
        "counters": {
            "icmp_errors_sent": sum(|c| &c.icmp_errors_sent),
            "icmp_errors_ratelimited": sum(|c| &c.icmp_errors_ratelimited),
            "arp_requests_sent": sum(|c| &c.arp_requests_sent),
            "arp_replies_sent": sum(|c| &c.arp_replies_sent),
            "ipip_encap": sum(|c| &c.ipip_encap),
            "ipip_decap": sum(|c| &c.ipip_decap),
            "fragmented": sum(|c| &c.fragmented),
            "fragments_out": sum(|c| &c.fragments_out),
            "punted": sum(|c| &c.punted),
        }
    })
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
    host: Option<Arc<TapPort>>,
    uplink: bool,
    version: u64,
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

impl PortIo for TapIo {
    fn add_pod(&mut self, slot: PortId, e: &EndpointConfig, pod_gateway: std::net::Ipv4Addr) -> Result<(), String> {
        let tap = TapPort::create(&e.tap, slot).map_err(|x| format!("TAP {}: {x}", e.tap))?;
        if let Some(ns) = &e.netns {
            tap.setup_pod(&PodSetup {
                netns: ns,
                ifname: &e.ifname,
                mac: e.mac.to_string(),
                mtu: e.mtu,
                addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                gateway: pod_gateway.to_string(),
            })
            .map_err(|x| x.to_string())?;
        }
        info!(endpoint = %e.name, tap = %e.tap, netns = ?e.netns, port = slot, "pod port ready");
        self.pods.insert(slot, Arc::new(tap));
        self.publish();
        Ok(())
    }

    fn remove_pod(&mut self, slot: PortId) {
        if self.pods.remove(&slot).is_some() {
            info!(port = slot, "pod port removed");
        }
        self.publish();
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
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| DaemonError::Other(format!("signal handler: {e}")))?;
    }
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())
        .map_err(|e| DaemonError::Other(format!("signal handler: {e}")))?;

    let uplink_mac = match &cfg.uplink {
        Some(u) => {
            let mac = read_mac(&u.device)?;
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
            afxdp::detach_xdp(&u.device); // a killed predecessor may have left its program
            mac
        }
        None => MacAddr([0x02, 0, 0, 0, 0, 0x01]),
    };
    let neigh = NeighTable::new(cfg.neigh.table_config()).map_err(|e| DaemonError::Other(e.to_string()))?;
    let (shared, fib) = Shared::new(Node::empty_snapshot(&cfg, uplink_mac), neigh);

    // Ports. Everything created here is removed when dropped, including on early return.
    let port_set = Arc::new(ArcSwap::from_pointee(PortSet::default()));
    let mut io =
        TapIo { set: port_set.clone(), pods: BTreeMap::new(), host: None, uplink: cfg.uplink.is_some(), version: 0 };
    if let Some(h) = &cfg.host {
        let tap = TapPort::create(&h.tap, HOST_PORT).map_err(|e| DaemonError::Host(e.to_string()))?;
        let cidr = format!("{}/{}", cfg.node.ip, cfg.node.subnet.len());
        let mtu = cfg.uplink.as_ref().map(|u| u.mtu).unwrap_or(1500);
        tap.setup_host(&uplink_mac.to_string(), &cidr, mtu, cfg.node.gateway.map(|g| g.to_string()).as_deref())
            .map_err(|e| DaemonError::Host(e.to_string()))?;
        info!(tap = %h.tap, addr = %cidr, "host port ready");
        io.host = Some(Arc::new(tap));
    }
    io.publish();
    let mut xsks = Vec::new();
    if let Some(u) = &cfg.uplink {
        for q in 0..u.queues {
            let mut x = XskPort::open(&u.device, q, u.xdp_mode, UPLINK)
                .map_err(|e| DaemonError::Uplink { dev: u.device.clone(), msg: e.to_string() })?;
            x.set_tx_queue(u.tx_queue);
            xsks.push(Some(x));
        }
    }

    // Workers: one per uplink queue (at least one); worker 0 also receives from the TAPs.
    let n_workers = xsks.len().max(1);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut counters = Vec::new();
    let mut handles = Vec::new();
    for id in 0..n_workers {
        let wcfg = WorkerConfig {
            conntrack_capacity: cfg.conntrack.capacity,
            conntrack_endpoint_share_pct: cfg.conntrack.endpoint_share_percent,
            ..WorkerConfig::default()
        };
        let pipeline = Worker::new(shared.clone(), wcfg);
        counters.push(pipeline.counters().clone());
        let core = cfg.workers.cores.get(id).and_then(|c| cores.iter().find(|x| x.id == *c).copied());
        let rt = WorkerRt {
            id,
            pipeline,
            uplink: xsks.get_mut(id).and_then(Option::take),
            rx_taps: id == 0,
            ports: port_set.clone(),
            idle: cfg.workers.idle,
            spin: Duration::from_micros(cfg.workers.spin_us),
            core,
            stop: stop.clone(),
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("vr-worker{id}"))
                .spawn(move || rt.run())
                .map_err(|e| DaemonError::Other(e.to_string()))?,
        );
    }
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
    let ctl = Arc::new(Control {
        node: std::sync::Mutex::new(node),
        shared: shared.clone(),
        counters: counters.clone(),
        config_path: Some(config.to_path_buf()),
        started,
    });
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
                RouteEvent::Set(r) => {
                    let nh = node.kernel_nexthop(&r.nh);
                    node.kernel_route(r.prefix, nh)
                }
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
        match super::metrics::serve(m.listen, stop.clone(), move || c.metrics_text()) {
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

    while !stop.load(Ordering::Relaxed) {
        if reload.swap(false, Ordering::Relaxed) {
            match ctl.reload() {
                Ok(r) => info!(change = %r, "config reloaded (SIGHUP)"),
                Err(e) => error!("config reload (SIGHUP) refused, still running the previous config: {e}"),
            }
        }
        if let Some(p) = &stats {
            let doc = ctl.counters_json()["total"].clone();
            if let Err(e) = write_atomically(p, &doc.to_string()) {
                error!(path = %p.display(), "cannot write stats: {e}");
            }
        }
        if handles.iter().any(|h| h.is_finished()) {
            error!("a worker exited unexpectedly; stopping");
            stop.store(true, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    info!("stopping");
    stop_threads(&stop, handles.into_iter().chain(services));
    if let Some(p) = &stats {
        let _ = write_atomically(p, &ctl.counters_json()["total"].to_string());
    }
    drop(ctl);
    port_set.store(Arc::new(PortSet::default()));
    if let Some(u) = &cfg.uplink {
        afxdp::detach_xdp(&u.device);
    }
    info!("stopped cleanly");
    Ok(())
}
