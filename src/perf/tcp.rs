//! TCP pod to pod with iperf3, in the namespace lab's topology (`crate::lab`): the pods, nodes
//! and paths `vrouter lab demo` builds, once with vrouter on the nodes and once with Linux
//! forwarding (`lab --kernel`). Both labs stay up side by side for the whole phase, so that the
//! runs of the two forwarders alternate (ABBA) without rebuilding anything between them.
//!
//! # Paths
//! The client is pod 1a; the server is the first pod on each path the lab's
//! [`path_mode`] names: `local` (1b, the same node), `remote` (2a,
//! another node on the same subnet: routed, BGP mode) and `ipip` (3a, a node on another subnet:
//! vrouter encapsulates, CrossSubnet). The kernel lab does not encapsulate: this kernel has no
//! `ipip` module (`CONFIG_NET_IPIP` is not set; the bench probes for it and reports what it
//! found), so the lab's kernel backend routes 1a -> 3a through the underlay router without
//! encapsulation, and the `ipip` ratios compare vrouter's IPIP with that plain cross-subnet
//! path, as the UDP part compares vrouter's IPIP with plain kernel forwarding.
//!
//! # Offloads
//! By default the pods' interfaces keep what they come with: a veth as Linux creates it (kernel
//! lab: tx checksum, TSO and GSO on; GRO off, as a veth has it until something turns on its
//! NAPI) and a TAP as the daemon sets it up (vrouter lab). The offloads-off runs turn tx
//! checksum, TSO, GSO and GRO off in the pods with `ethtool -K`, and the next offloads-on runs
//! restore exactly what each interface had. The report records what the client pod's interface
//! showed in each lab and mode. The router's veth ends keep the lab's `tx off` (a wire carries
//! whole checksums; see `lab::build`): both labs get the same underlay.
//!
//! # Measures
//! iperf3, 1 and 8 streams, client and server in the pods, the client pinned to the first CPU
//! and the server to the last (iperf3's `-A`; `--tcp-unpinned` leaves them to the scheduler).
//! The forwarders are not pinned: the kernel forwards in the softirqs of whoever sends, and the
//! vrouter lab's three daemons share both cores with iperf3, as on a node. In two runs each
//! (BENCHMARKS.md), the same command's single-stream ratios moved by up to 22 % between runs
//! unpinned (which core iperf3 and a daemon's worker happened to share) and by up to 8 %
//! pinned; their spread within a run (max - min) averaged 0.19 unpinned and 0.04 pinned
//! (eight streams gain less: 0.17 and 0.13). Pinning favours the kernel (same node, one stream:
//! 18 Gbit/s pinned, 14.5 unpinned; vrouter 11.5-12 either way). Gbit/s: iperf3's received rate after
//! `--omit` (the warm-up). CPU: the busy time of all CPUs from /proc/stat (user, nice, system,
//! irq, softirq; steal is kept apart) over a window inside the measured seconds, in cores;
//! divided by Gbit/s, the CPU seconds spent per Gbit moved. That is the whole machine's: the
//! iperf3 ends, the forwarding, and whatever else runs (the other lab's idle daemons: adaptive
//! idle, well under 1 % of a core each; another tenant's build would show).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::rounds::{self, Ratio};
use super::{E2eOptions, Forwarder, Spread};
use crate::lab::topo::{path_mode, PathMode, POD_IF};
use crate::lab::{self, sys, Backend, LabError, LabHandle, LabOptions, LabPod};

/// The iperf3 servers' port (the guarded pod's policy allows it; the bench does not use that pod).
const PORT: &str = "5201";

/// Which two pods a TCP run connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpPath {
    /// Pods on one node.
    Local,
    /// Pods on two nodes on one subnet: routed, not encapsulated.
    Remote,
    /// Pods on two nodes on different subnets: vrouter encapsulates (the kernel lab routes).
    Ipip,
}

pub const PATHS: [TcpPath; 3] = [TcpPath::Local, TcpPath::Remote, TcpPath::Ipip];
pub const STREAMS: [u32; 2] = [1, 8];

impl TcpPath {
    pub fn name(self) -> &'static str {
        match self {
            TcpPath::Local => "local",
            TcpPath::Remote => "remote",
            TcpPath::Ipip => "ipip",
        }
    }

    fn mode(self) -> PathMode {
        match self {
            TcpPath::Local => PathMode::Local,
            TcpPath::Remote => PathMode::Bgp,
            TcpPath::Ipip => PathMode::Ipip,
        }
    }

    /// Issue 13's single-stream target with offloads on, as a fraction of the kernel.
    pub fn target(self) -> f64 {
        match self {
            TcpPath::Local => 0.8,
            TcpPath::Remote => 0.6,
            TcpPath::Ipip => 0.5,
        }
    }
}

/// The pods' offloads in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Offloads {
    /// As the interfaces come (the default runs).
    On,
    /// tx checksum, TSO, GSO and GRO off in the pods.
    Off,
}

impl Offloads {
    pub fn name(self) -> &'static str {
        match self {
            Offloads::On => "on",
            Offloads::Off => "off",
        }
    }

    /// What the figures of this mode end with: nothing for the default, `_nooffload`.
    pub fn suffix(self) -> &'static str {
        match self {
            Offloads::On => "",
            Offloads::Off => "_nooffload",
        }
    }
}

/// The name of a TCP ratio in the JSON: `tcp1_local_ratio`, `tcp8_ipip_ratio_nooffload`.
pub fn ratio_name(streams: u32, path: TcpPath, off: Offloads) -> String {
    format!("tcp{streams}_{}_ratio{}", path.name(), off.suffix())
}

/// One iperf3 run.
#[derive(Debug, Clone, Serialize)]
pub struct TcpSample {
    /// `kernel` (the `--kernel` lab) or `vrouter`.
    pub forwarder: Forwarder,
    pub rep: u32,
    pub path: TcpPath,
    pub streams: u32,
    pub offloads: Offloads,
    /// Received, after the warm-up; 0 when the run failed.
    pub gbps: f64,
    /// Busy CPUs of the whole machine over the window, in cores (steal not included).
    pub busy_cores: f64,
    /// Stolen by the hypervisor over the window, in cores.
    pub steal_cores: f64,
    /// CPU seconds per Gbit moved (`busy_cores / gbps`); 0 when nothing moved.
    pub cpu_per_gbit: f64,
    pub retransmits: u64,
    /// false: iperf3 failed (`error` says why).
    pub ok: bool,
    pub error: Option<String>,
}

/// What the TCP phase found about its labs.
#[derive(Debug, Clone, Serialize)]
pub struct TcpLab {
    /// The two labs' prefixes (deleted at the end).
    pub kernel_lab: String,
    pub vrouter_lab: String,
    /// The vrouter lab's `[workers] idle`.
    pub idle: String,
    /// Both labs' underlay MTU.
    pub mtu: u16,
    /// The iperf3 client's and server's CPUs (`None`: unpinned).
    pub iperf3_cpus: Option<(usize, usize)>,
    /// What `ethtool -k` showed on the client pod's interface, by `<lab>/<mode>`:
    /// `"kernel/on": "tx on, tso on, gso on, gro off"`.
    pub pod_offloads: BTreeMap<String, String>,
    /// Whether this kernel could create an ipip device (probed in the kernel lab's node 1).
    pub kernel_ipip: bool,
    /// What the kernel runs of the `ipip` path measure.
    pub kernel_ipip_path: String,
}

/// The TCP phase's runs and what it found.
pub(crate) struct TcpPhase {
    pub samples: Vec<TcpSample>,
    pub lab: TcpLab,
}

/// A cell of the TCP table: one ratio, measured with both forwarders each round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Cell {
    pub offloads: Offloads,
    pub path: TcpPath,
    pub streams: u32,
}

impl Cell {
    fn name(self) -> String {
        ratio_name(self.streams, self.path, self.offloads)
    }

    fn holds(self, s: &TcpSample) -> bool {
        s.offloads == self.offloads && s.path == self.path && s.streams == self.streams
    }
}

/// Every cell of a run with `offloads`, in table order.
pub(crate) fn cells(offloads: &[Offloads]) -> Vec<Cell> {
    let mut v = vec![];
    for &o in offloads {
        for path in PATHS {
            for streams in STREAMS {
                v.push(Cell { offloads: o, path, streams });
            }
        }
    }
    v
}

/// The per-round vrouter/kernel ratios of a cell, in round order (a round whose kernel run
/// moved nothing has none).
pub(crate) fn per_round(samples: &[TcpSample], cell: Cell) -> Vec<f64> {
    let mut reps: Vec<u32> = samples.iter().filter(|s| cell.holds(s)).map(|s| s.rep).collect();
    reps.sort_unstable();
    reps.dedup();
    reps.into_iter()
        .filter_map(|rep| {
            let of = |f: Forwarder| samples.iter().find(|s| cell.holds(s) && s.rep == rep && s.forwarder == f);
            let (k, v) = (of(Forwarder::Kernel)?, of(Forwarder::Vrouter)?);
            rounds::round_ratio(v.gbps, k.gbps)
        })
        .collect()
}

/// The flat figures and the ratios of the TCP runs. For each offload mode, path and stream
/// count (`S` 1 or 8, `P` local, remote or ipip, `X` empty or `_nooffload`):
/// `tcpS_P_ratioX` (median of the per-round vrouter/kernel ratios),
/// `kernel_tcpS_P_gbpsX` / `vrouter_tcpS_P_gbpsX` (medians; a failed run counts 0) and
/// `kernel_tcpS_P_cpu_per_gbitX` / `vrouter_...` (medians over the runs that moved data).
pub fn figures(samples: &[TcpSample], tol: f64) -> (BTreeMap<String, f64>, BTreeMap<String, Ratio>) {
    let mut f = BTreeMap::new();
    let mut ratios = BTreeMap::new();
    let mut modes: Vec<Offloads> = samples.iter().map(|s| s.offloads).collect();
    modes.sort_unstable();
    modes.dedup();
    for cell in cells(&modes) {
        let of = |fwd: Forwarder| samples.iter().filter(move |s| cell.holds(s) && s.forwarder == fwd);
        if of(Forwarder::Kernel).next().is_none() || of(Forwarder::Vrouter).next().is_none() {
            continue;
        }
        let (p, x) = (cell.path.name(), cell.offloads.suffix());
        for fwd in [Forwarder::Kernel, Forwarder::Vrouter] {
            let n = fwd.name();
            let gbps: Vec<f64> = of(fwd).map(|s| s.gbps).collect();
            let cpu: Vec<f64> = of(fwd).filter(|s| s.ok && s.gbps > 0.0).map(|s| s.cpu_per_gbit).collect();
            f.insert(format!("{n}_tcp{}_{p}_gbps{x}", cell.streams), Spread::of(&gbps).median);
            f.insert(format!("{n}_tcp{}_{p}_cpu_per_gbit{x}", cell.streams), Spread::of(&cpu).median);
        }
        let r = Ratio::of(&per_round(samples, cell), tol);
        f.insert(cell.name(), r.median);
        ratios.insert(cell.name(), r);
    }
    (f, ratios)
}

/// The four offloads the bench turns off, as `ethtool -k` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PodOffloads {
    pub tx: bool,
    pub tso: bool,
    pub gso: bool,
    pub gro: bool,
}

impl PodOffloads {
    pub const OFF: PodOffloads = PodOffloads { tx: false, tso: false, gso: false, gro: false };

    /// From `ethtool -k DEV`'s output (`tx-checksumming: on`, `generic-receive-offload: off
    /// [fixed]` ...); `None` if one of the four is missing.
    pub fn parse(text: &str) -> Option<PodOffloads> {
        let get = |key: &str| {
            text.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .find(|(k, _)| k.trim() == key)
                .and_then(|(_, v)| v.split_whitespace().next())
                .map(|v| v == "on")
        };
        Some(PodOffloads {
            tx: get("tx-checksumming")?,
            tso: get("tcp-segmentation-offload")?,
            gso: get("generic-segmentation-offload")?,
            gro: get("generic-receive-offload")?,
        })
    }

    /// `ethtool -K DEV` arguments that set all four as they are here.
    fn ethtool_args(self) -> [&'static str; 8] {
        let w = |b: bool| if b { "on" } else { "off" };
        ["tx", w(self.tx), "tso", w(self.tso), "gso", w(self.gso), "gro", w(self.gro)]
    }
}

impl std::fmt::Display for PodOffloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let w = |b: bool| if b { "on" } else { "off" };
        write!(f, "tx {}, tso {}, gso {}, gro {}", w(self.tx), w(self.tso), w(self.gso), w(self.gro))
    }
}

fn read_offloads(ns: &str) -> Result<PodOffloads, LabError> {
    let out = sys::ns_ok(ns, &["ethtool", "-k", POD_IF], Duration::from_secs(10))?;
    PodOffloads::parse(&out).ok_or_else(|| LabError::Command {
        cmd: format!("ip netns exec {ns} ethtool -k {POD_IF}"),
        status: "unreadable output".into(),
        stderr: out.chars().take(300).collect(),
    })
}

fn set_offloads(ns: &str, o: PodOffloads) -> Result<(), LabError> {
    let mut args = vec!["ethtool", "-K", POD_IF];
    args.extend(o.ethtool_args());
    sys::ns_ok(ns, &args, Duration::from_secs(10)).map(|_| ())
}

/// `(busy, steal)` jiffies of all CPUs from /proc/stat's `cpu` line: busy is user, nice,
/// system, irq and softirq (guest time is inside user already); idle and iowait are not busy.
pub(crate) fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
    super::cpu_jiffies(line).map(|c| (c.work, c.steal))
}

fn cpu_now() -> (u64, u64) {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").unwrap_or_default()).unwrap_or((0, 0))
}

/// Brings up the two labs, runs every cell round after round until each ratio converged (or
/// `max_reps`), and deletes the labs on every path out.
pub(crate) fn run(bin: &Path, opts: &E2eOptions, progress: &mut dyn FnMut(&str)) -> Result<TcpPhase, LabError> {
    let (kernel, vrouter) = labs_up(bin, opts, progress)?;
    let result = run_in(&kernel, &vrouter, opts, progress);
    let (dk, dv) = (kernel.down(), vrouter.down());
    let phase = result?;
    dk?;
    dv?;
    Ok(phase)
}

fn labs_up(bin: &Path, opts: &E2eOptions, progress: &mut dyn FnMut(&str)) -> Result<(LabHandle, LabHandle), LabError> {
    let lab_opts = |prefix: String, backend: Backend| LabOptions {
        prefix: Some(prefix),
        root: opts.root.clone(),
        vrouter: Some(bin.to_path_buf()),
        backend,
        idle: opts.lab_idle.clone(),
        mtu: opts.lab_mtu,
        ..LabOptions::default()
    };
    // `vrpf` like the UDP part's namespaces, then `k` or `v`: `vrpf1a2bk-p1a`.
    let mut tries = 0;
    let (kernel, base) = loop {
        let base = format!("{}{:04x}", super::NS_PREFIX, vrouter_core::random_seed() as u16);
        match lab::up(&lab_opts(format!("{base}k"), Backend::Kernel)) {
            Ok(l) => break (l, base),
            Err(LabError::Exists(_)) if tries < 8 => tries += 1,
            Err(e) => return Err(e),
        }
    };
    progress(&format!("TCP: kernel lab {} up (Linux forwarding, veth pods)", kernel.prefix()));
    let vrouter = lab::up(&lab_opts(format!("{base}v"), Backend::Vrouter))?;
    progress(&format!("TCP: vrouter lab {} up (3 daemons, idle = \"{}\", TAP pods)", vrouter.prefix(), opts.lab_idle));
    Ok((kernel, vrouter))
}

/// The client pod and, for each path, its server (pods without a policy), by the lab's plan.
fn pairs(pods: &[LabPod]) -> Result<Vec<(TcpPath, LabPod, LabPod)>, LabError> {
    let free: Vec<&LabPod> = pods.iter().filter(|p| p.ingress.is_empty()).collect();
    let client =
        free.iter().find(|p| p.node == 1).ok_or_else(|| LabError::BadOption("the lab has no pod on node 1".into()))?;
    PATHS
        .iter()
        .map(|&path| {
            free.iter()
                .find(|p| p.name != client.name && path_mode(client.node, p.node) == path.mode())
                .map(|s| (path, (*client).clone(), (*s).clone()))
                .ok_or_else(|| {
                    LabError::BadOption(format!("the lab has no pod on a {} path from {}", path.name(), client.name))
                })
        })
        .collect()
}

/// Whether this kernel can create an ipip device (in the kernel lab's node 1; removed again).
fn probe_ipip(lab: &LabHandle) -> bool {
    let n = lab.node(1);
    let (ns, ip) = (n.ns.as_str(), n.ip.to_string());
    let made = lab.exec(ns, &["ip", "link", "add", "ipipprobe", "type", "ipip", "local", &ip, "remote", "192.0.2.1"]);
    if made.status.success() {
        let _ = lab.exec(ns, &["ip", "link", "del", "ipipprobe"]);
    }
    made.status.success()
}

fn run_in(
    kernel: &LabHandle,
    vrouter: &LabHandle,
    opts: &E2eOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<TcpPhase, LabError> {
    let labs = [(Forwarder::Kernel, kernel), (Forwarder::Vrouter, vrouter)];
    let pairs = pairs(kernel.pods())?;
    let client = pairs[0].1.name.clone();
    let pod_ns = |lab: &LabHandle, name: &str| lab.pod(name).ns.clone();
    let mut involved: Vec<String> = vec![client.clone()];
    involved.extend(pairs.iter().map(|(_, _, s)| s.name.clone()));
    let kernel_ipip = probe_ipip(kernel);
    let kernel_ipip_path = format!(
        "the kernel lab routes {} -> {} across subnets through the underlay router without encapsulation ({}); \
         the ipip ratios compare vrouter's IPIP with that plain cross-subnet path",
        client,
        pairs[2].2.name,
        if kernel_ipip {
            "this kernel could create an ipip device, but the lab's kernel backend does not use one"
        } else {
            "this kernel cannot create an ipip device: no ipip module"
        }
    );
    progress(&format!("TCP: kernel ipip path: {kernel_ipip_path}"));
    // What each pod's interface came with, to restore after the offloads-off runs.
    let mut defaults: BTreeMap<String, PodOffloads> = BTreeMap::new();
    for (_, lab) in labs {
        for name in &involved {
            let ns = pod_ns(lab, name);
            defaults.insert(ns.clone(), read_offloads(&ns)?);
        }
    }
    let mut servers = vec![];
    for (_, lab) in labs {
        for (_, _, s) in &pairs {
            let log = lab.dir().join(format!("iperf3-{}.log", s.name));
            servers.push(lab.spawn(&pod_ns(lab, &s.name), &["iperf3", "-s", "-p", PORT], Some(&log))?);
        }
    }
    let result = (|| {
        sys::sleep(Duration::from_millis(300))?;
        // Resolves the neighbours on every path before the first run, and says early which
        // path does not work.
        for (fwd, lab) in labs {
            for (path, _, s) in &pairs {
                let ip = lab.pod_ip(&s.name).to_string();
                let o = lab.exec(&pod_ns(lab, &client), &["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip]);
                sys::check_cancelled()?;
                if !o.status.success() {
                    progress(&format!(
                        "TCP: WARNING {} {} path {client} -> {} does not answer ping",
                        fwd.name(),
                        path.name(),
                        s.name
                    ));
                }
            }
        }
        rounds_loop(&labs, &pairs, &defaults, opts, progress)
    })();
    for mut s in servers {
        sys::kill_group(&mut s);
    }
    let (samples, pod_offloads) = result?;
    Ok(TcpPhase {
        samples,
        lab: TcpLab {
            kernel_lab: kernel.prefix().to_string(),
            vrouter_lab: vrouter.prefix().to_string(),
            idle: opts.lab_idle.clone(),
            mtu: opts.lab_mtu,
            iperf3_cpus: opts.tcp_pins(),
            pod_offloads,
            kernel_ipip,
            kernel_ipip_path,
        },
    })
}

type Labs<'a> = [(Forwarder, &'a LabHandle); 2];

fn rounds_loop(
    labs: &Labs<'_>,
    pairs: &[(TcpPath, LabPod, LabPod)],
    defaults: &BTreeMap<String, PodOffloads>,
    opts: &E2eOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<TcpSample>, BTreeMap<String, String>), LabError> {
    let all = cells(&opts.tcp_offloads);
    let mut samples: Vec<TcpSample> = vec![];
    let mut seen = BTreeMap::new();
    for rep in 0..opts.max_reps {
        let active: Vec<Cell> = all
            .iter()
            .copied()
            .filter(|&c| rep < opts.reps || !rounds::converged(&per_round(&samples, c), opts.tolerance))
            .collect();
        if active.is_empty() {
            break;
        }
        if rep >= opts.reps {
            let names: Vec<String> = active.iter().map(|c| c.name()).collect();
            progress(&format!(
                "TCP round {}: medians still moving by more than {:.0} %: {}",
                rep + 1,
                opts.tolerance * 100.0,
                names.join(", ")
            ));
        }
        for &mode in &opts.tcp_offloads {
            let group: Vec<Cell> = active.iter().copied().filter(|c| c.offloads == mode).collect();
            if group.is_empty() {
                continue;
            }
            for (fwd, lab) in labs {
                for (i, name) in pods_of(pairs).iter().enumerate() {
                    let ns = lab.pod(name).ns.clone();
                    let want = match mode {
                        Offloads::On => defaults.get(&ns).copied().unwrap_or(PodOffloads::OFF),
                        Offloads::Off => PodOffloads::OFF,
                    };
                    set_offloads(&ns, want)?;
                    if i == 0 {
                        seen.insert(format!("{}/{}", fwd.name(), mode.name()), read_offloads(&ns)?.to_string());
                    }
                }
            }
            for cell in group {
                let (_, client, server) =
                    pairs.iter().find(|(p, _, _)| *p == cell.path).expect("a pair for every path");
                let order = if rep % 2 == 0 { [labs[0], labs[1]] } else { [labs[1], labs[0]] };
                for (fwd, lab) in order {
                    let s = measure(lab, fwd, rep, cell, &client.name, &server.name, opts)?;
                    progress(&sample_line(&s, rep, opts));
                    samples.push(s);
                }
            }
        }
    }
    Ok((samples, seen))
}

/// The pods of the pairs, client first, each once.
fn pods_of(pairs: &[(TcpPath, LabPod, LabPod)]) -> Vec<String> {
    let mut v: Vec<String> = vec![];
    for (_, c, s) in pairs {
        for n in [&c.name, &s.name] {
            if !v.contains(n) {
                v.push(n.clone());
            }
        }
    }
    v
}

fn sample_line(s: &TcpSample, rep: u32, opts: &E2eOptions) -> String {
    let head = format!(
        "TCP rep {}/{} {:<7} {:<6} x{} offloads {:<3}",
        rep + 1,
        opts.max_reps,
        s.forwarder.name(),
        s.path.name(),
        s.streams,
        s.offloads.name()
    );
    match &s.error {
        Some(e) => format!("{head}: FAILED: {e}"),
        None => format!(
            "{head}: {:.2} Gbit/s, {:.2} cores busy ({:.3} CPU s/Gbit), {} retransmits",
            s.gbps, s.busy_cores, s.cpu_per_gbit, s.retransmits
        ),
    }
}

/// One run; iperf3's own failures make a failed sample (0 Gbit/s), Ctrl-C an error.
fn measure(
    lab: &LabHandle,
    fwd: Forwarder,
    rep: u32,
    cell: Cell,
    client: &str,
    server: &str,
    opts: &E2eOptions,
) -> Result<TcpSample, LabError> {
    let mut sample = TcpSample {
        forwarder: fwd,
        rep,
        path: cell.path,
        streams: cell.streams,
        offloads: cell.offloads,
        gbps: 0.0,
        busy_cores: 0.0,
        steal_cores: 0.0,
        cpu_per_gbit: 0.0,
        retransmits: 0,
        ok: false,
        error: None,
    };
    let ns = lab.pod(client).ns.clone();
    let ip = lab.pod_ip(server).to_string();
    let mut last = String::new();
    for attempt in 0..2 {
        match iperf(&ns, &ip, cell.streams, opts)? {
            Ok(m) => {
                sample.gbps = m.gbps;
                sample.busy_cores = m.busy_cores;
                sample.steal_cores = m.steal_cores;
                sample.cpu_per_gbit = if m.gbps > 0.0 { m.busy_cores / m.gbps } else { 0.0 };
                sample.retransmits = m.retransmits;
                sample.ok = m.gbps > 0.0;
                if !sample.ok {
                    sample.error = Some("iperf3 received nothing".into());
                }
                return Ok(sample);
            }
            // The server may still be closing the previous test.
            Err(e) if attempt == 0 && e.contains("busy") => {
                last = e;
                sys::sleep(Duration::from_secs(1))?;
            }
            Err(e) => {
                last = e;
                break;
            }
        }
    }
    sample.error = Some(last);
    Ok(sample)
}

struct Measured {
    gbps: f64,
    busy_cores: f64,
    steal_cores: f64,
    retransmits: u64,
}

/// iperf3 from `ns` to `ip`: warm-up (`--omit`) then the measured seconds, with /proc/stat read
/// 0.2 s into them and 0.1 s before their end (inside the transfer whatever iperf3's start-up
/// took). The outer error is Ctrl-C; the inner one iperf3's.
fn iperf(ns: &str, ip: &str, streams: u32, opts: &E2eOptions) -> Result<Result<Measured, String>, LabError> {
    let secs = opts.tcp_duration.round().max(1.0) as u64;
    let omit = opts.warmup.ceil().max(0.0) as u64;
    let args: Vec<String> = [
        "iperf3",
        "-c",
        ip,
        "-p",
        PORT,
        "-t",
        &secs.to_string(),
        "-O",
        &omit.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
        "--connect-timeout",
        "3000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut args = args;
    if let Some((client, server)) = opts.tcp_pins() {
        args.extend(["-A".to_string(), format!("{client},{server}")]);
    }
    let ns = ns.to_string();
    let limit = Duration::from_secs(secs + omit + 15);
    let start = Instant::now();
    let client = std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        sys::exec_in(&ns, &a, limit)
    });
    let until = |t: f64| sys::sleep((start + Duration::from_secs_f64(t)).saturating_duration_since(Instant::now()));
    until(omit as f64 + 0.2)?;
    let (a, ta) = (cpu_now(), Instant::now());
    until(omit as f64 + secs as f64 - 0.1)?;
    let (b, tb) = (cpu_now(), Instant::now());
    let out = client.join().map_err(|_| LabError::BadOption("the iperf3 thread panicked".into()))?;
    sys::check_cancelled()?;
    let (bps, retransmits) = match crate::lab::demo::parse_iperf_run(&String::from_utf8_lossy(&out.stdout)) {
        Ok(r) => r,
        Err(e) => {
            let err = String::from_utf8_lossy(&out.stderr);
            return Ok(Err(format!("iperf3: {e} ({}; stderr: {})", out.status, err.trim())));
        }
    };
    let window = (tb - ta).as_secs_f64().max(1e-3);
    let tck = super::clk_tck();
    Ok(Ok(Measured {
        gbps: bps / 1e9,
        busy_cores: b.0.saturating_sub(a.0) as f64 / tck / window,
        steal_cores: b.1.saturating_sub(a.1) as f64 / tck / window,
        retransmits,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(fwd: Forwarder, rep: u32, path: TcpPath, streams: u32, off: Offloads, gbps: f64) -> TcpSample {
        TcpSample {
            forwarder: fwd,
            rep,
            path,
            streams,
            offloads: off,
            gbps,
            busy_cores: 1.5,
            steal_cores: 0.0,
            cpu_per_gbit: if gbps > 0.0 { 1.5 / gbps } else { 0.0 },
            retransmits: 0,
            ok: gbps > 0.0,
            error: None,
        }
    }

    /// Two rounds of every cell: the kernel at 10 Gbit/s, vrouter at 5 then 6.
    fn two_rounds(modes: &[Offloads]) -> Vec<TcpSample> {
        let mut v = vec![];
        for c in cells(modes) {
            for (rep, vg) in [(0, 5.0), (1, 6.0)] {
                v.push(sample(Forwarder::Kernel, rep, c.path, c.streams, c.offloads, 10.0));
                v.push(sample(Forwarder::Vrouter, rep, c.path, c.streams, c.offloads, vg));
            }
        }
        v
    }

    #[test]
    fn figures_name_every_path_stream_count_and_offload_mode() {
        let (f, r) = figures(&two_rounds(&[Offloads::On, Offloads::Off]), 0.1);
        for s in [1, 8] {
            for p in ["local", "remote", "ipip"] {
                for x in ["", "_nooffload"] {
                    let ratio = format!("tcp{s}_{p}_ratio{x}");
                    assert_eq!(f[&ratio], 0.55, "{ratio}");
                    assert_eq!((r[&ratio].min, r[&ratio].max, r[&ratio].rounds), (0.5, 0.6, 2));
                    // Medians 0.5 then 0.55: 0.05 apart, within 10 % of 0.55.
                    assert!(r[&ratio].converged);
                    assert_eq!(f[&format!("kernel_tcp{s}_{p}_gbps{x}")], 10.0);
                    assert_eq!(f[&format!("vrouter_tcp{s}_{p}_gbps{x}")], 5.5);
                    assert_eq!(f[&format!("kernel_tcp{s}_{p}_cpu_per_gbit{x}")], 0.15);
                }
            }
        }
        assert_eq!(r.len(), 12);
        assert_eq!(f.len(), 12 * 5);
        assert!(f.values().all(|x| x.is_finite()));
        assert_eq!(ratio_name(1, TcpPath::Local, Offloads::On), "tcp1_local_ratio");
    }

    #[test]
    fn figures_of_one_mode_only_have_that_mode() {
        let (f, _) = figures(&two_rounds(&[Offloads::Off]), 0.1);
        assert!(f.contains_key("tcp1_ipip_ratio_nooffload"));
        assert!(!f.contains_key("tcp1_ipip_ratio"));
    }

    #[test]
    fn a_failed_run_counts_zero_and_a_failed_kernel_run_drops_its_round() {
        let c = Cell { offloads: Offloads::On, path: TcpPath::Local, streams: 1 };
        let mut v = vec![
            sample(Forwarder::Kernel, 0, c.path, 1, c.offloads, 10.0),
            sample(Forwarder::Vrouter, 0, c.path, 1, c.offloads, 0.0),
            sample(Forwarder::Kernel, 1, c.path, 1, c.offloads, 0.0),
            sample(Forwarder::Vrouter, 1, c.path, 1, c.offloads, 9.0),
            sample(Forwarder::Kernel, 2, c.path, 1, c.offloads, 10.0),
        ];
        // Round 2 has no vrouter run (yet): no ratio for it.
        assert_eq!(per_round(&v, c), vec![0.0]);
        v.push(sample(Forwarder::Vrouter, 2, c.path, 1, c.offloads, 8.0));
        assert_eq!(per_round(&v, c), vec![0.0, 0.8]);
        let (f, _) = figures(&v, 0.1);
        // cpu per Gbit only over the runs that moved data: kernel 0.15 (twice), vrouter 1.5/9, 1.5/8.
        assert_eq!(f["kernel_tcp1_local_cpu_per_gbit"], 0.15);
        assert_eq!(f["vrouter_tcp1_local_gbps"], 8.0);
    }

    #[test]
    fn ethtool_features_parse_and_print() {
        let veth = "Features for eth0:\nrx-checksumming: on\ntx-checksumming: on\n\ttx-checksum-ipv4: off [fixed]\nscatter-gather: on\ntcp-segmentation-offload: on\ngeneric-segmentation-offload: on\ngeneric-receive-offload: off\n";
        let o = PodOffloads::parse(veth).unwrap();
        assert_eq!(o, PodOffloads { tx: true, tso: true, gso: true, gro: false });
        assert_eq!(o.to_string(), "tx on, tso on, gso on, gro off");
        assert_eq!(o.ethtool_args(), ["tx", "on", "tso", "on", "gso", "on", "gro", "off"]);
        let tap = "tx-checksumming: off\ntcp-segmentation-offload: off [fixed]\ngeneric-segmentation-offload: on\ngeneric-receive-offload: on\n";
        assert_eq!(PodOffloads::parse(tap), Some(PodOffloads { tx: false, tso: false, gso: true, gro: true }));
        assert_eq!(PodOffloads::parse("tx-checksumming: on\n"), None);
    }

    #[test]
    fn proc_stat_busy_leaves_out_idle_iowait_and_steal() {
        let text = "cpu  100 5 50 1000 20 3 7 11 0 0\ncpu0 50 2 25 500 10 1 3 5 0 0\nintr 1 2 3\n";
        assert_eq!(parse_proc_stat(text), Some((100 + 5 + 50 + 3 + 7, 11)));
        assert_eq!(parse_proc_stat("cpu0 1 2 3 4\n"), None);
        assert_eq!(parse_proc_stat(""), None);
    }

    #[test]
    fn pairs_follow_the_labs_path_modes() {
        let (_, pods) = crate::lab::topo::plan("vrl0000", crate::lab::topo::DEFAULT_NODES);
        let p = pairs(&pods).unwrap();
        let names: Vec<(&str, &str, &str)> =
            p.iter().map(|(t, c, s)| (t.name(), c.name.as_str(), s.name.as_str())).collect();
        assert_eq!(names, vec![("local", "1a", "1b"), ("remote", "1a", "2a"), ("ipip", "1a", "3a")]);
        assert_eq!(pods_of(&p), vec!["1a", "1b", "2a", "3a"]);
    }
}
