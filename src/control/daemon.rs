//! `vrouter run`: build the node from its config, open the ports, start the workers, publish
//! counters, and on SIGINT/SIGTERM stop and leave nothing behind (TAPs close with their fds,
//! the XDP program detaches with the last AF_XDP socket, and is removed again to be sure).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use super::build::{self, pod_port, UPLINK};
use super::config::{Config, ConfigError};
use crate::dataplane::{Shared, Worker, WorkerConfig};
use crate::neigh::{NeighConfig, NeighTable};
use crate::port::afxdp::{self, XskPort};
use crate::port::tap::{PodSetup, TapPort};
use crate::stats::{Counters, DropReason};
use crate::wire::MacAddr;
use crate::worker::{TxTarget, WorkerRt};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Build(#[from] build::BuildError),
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
    for (i, name) in port_names.iter().enumerate() {
        let mut t = crate::stats::counters::PortStats::default();
        for c in counters {
            let p = c.port(i);
            t.rx_packets += p.rx_packets;
            t.rx_bytes += p.rx_bytes;
            t.tx_packets += p.tx_packets;
            t.tx_bytes += p.tx_bytes;
        }
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

/// Runs the node described by `config` until SIGINT or SIGTERM.
pub fn run(config: &Path, stats: Option<PathBuf>) -> Result<(), DaemonError> {
    let cfg = Config::load(config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| DaemonError::Other(format!("signal handler: {e}")))?;
    }

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
    let state = build::build(&cfg, uplink_mac, 1)?;
    let port_names: Vec<String> = state.snapshot.ports.iter().map(|p| p.name.clone()).collect();
    let neigh = NeighTable::new(NeighConfig::default()).map_err(|e| DaemonError::Other(e.to_string()))?;
    let (shared, mut fib) = Shared::new(state.snapshot, neigh);
    fib.load(state.routes.iter().copied());
    for n in &cfg.neighbours {
        shared
            .neigh
            .add_static(u32::from(n.ip), n.mac.0)
            .map_err(|e| DaemonError::Other(format!("neighbour {}: {e}", n.ip)))?;
    }

    // Ports. Everything created here is removed when dropped, including on early return.
    let mut targets = vec![TxTarget::None; port_names.len()];
    let mut taps = Vec::new();
    for (i, e) in cfg.endpoints.iter().enumerate() {
        let ep_err = |msg: String| DaemonError::Endpoint { name: e.name.clone(), msg };
        let tap = Arc::new(TapPort::create(&e.tap, pod_port(i)).map_err(|x| ep_err(x.to_string()))?);
        if let Some(ns) = &e.netns {
            tap.setup_pod(&PodSetup {
                netns: ns,
                ifname: &e.ifname,
                mac: e.mac.to_string(),
                mtu: e.mtu,
                addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                gateway: cfg.node.pod_gateway.to_string(),
            })
            .map_err(|x| ep_err(x.to_string()))?;
        }
        info!(endpoint = %e.name, tap = %e.tap, netns = ?e.netns, "pod port ready");
        targets[pod_port(i) as usize] = TxTarget::Tap(tap.clone());
        taps.push(tap);
    }
    if let (Some(h), Some(hp)) = (&cfg.host, state.host_port) {
        let tap = Arc::new(TapPort::create(&h.tap, hp).map_err(|e| DaemonError::Host(e.to_string()))?);
        let cidr = format!("{}/{}", cfg.node.ip, cfg.node.subnet.len());
        let mtu = cfg.uplink.as_ref().map(|u| u.mtu).unwrap_or(1500);
        tap.setup_host(&uplink_mac.to_string(), &cidr, mtu, cfg.node.gateway.map(|g| g.to_string()).as_deref())
            .map_err(|e| DaemonError::Host(e.to_string()))?;
        info!(tap = %h.tap, addr = %cidr, "host port ready");
        targets[hp as usize] = TxTarget::Tap(tap.clone());
        taps.push(tap);
    }
    let mut xsks = Vec::new();
    if let Some(u) = &cfg.uplink {
        for q in 0..u.queues {
            xsks.push(Some(
                XskPort::open(&u.device, q, u.xdp_mode, UPLINK)
                    .map_err(|e| DaemonError::Uplink { dev: u.device.clone(), msg: e.to_string() })?,
            ));
        }
        targets[UPLINK as usize] = TxTarget::Uplink;
    }
    let targets = Arc::new(targets);

    // Workers: one per uplink queue (at least one); worker 0 also receives from the TAPs.
    let n_workers = xsks.len().max(1);
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut counters = Vec::new();
    let mut handles = Vec::new();
    for id in 0..n_workers {
        let pipeline = Worker::new(shared.clone(), WorkerConfig::default());
        counters.push(pipeline.counters().clone());
        let core = cfg.workers.cores.get(id).and_then(|c| cores.iter().find(|x| x.id == *c).copied());
        let rt = WorkerRt {
            id,
            pipeline,
            uplink: xsks.get_mut(id).and_then(Option::take),
            rx_taps: if id == 0 { taps.clone() } else { vec![] },
            targets: targets.clone(),
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
    info!(node = %cfg.node.name, workers = n_workers, routes = fib.len(), "forwarding");

    while !stop.load(Ordering::Relaxed) {
        if let Some(p) = &stats {
            let doc = stats_json(&cfg.node.name, &port_names, &counters);
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
    for h in handles {
        let _ = h.join();
    }
    if let Some(p) = &stats {
        let _ = write_atomically(p, &stats_json(&cfg.node.name, &port_names, &counters).to_string());
    }
    drop(taps);
    drop(targets);
    if let Some(u) = &cfg.uplink {
        afxdp::detach_xdp(&u.device);
    }
    info!("stopped cleanly");
    Ok(())
}
