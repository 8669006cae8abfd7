//! The perf lab (`vrouter bench e2e`): the same traffic through Linux forwarding and through
//! vrouter on AF_XDP, on this machine, in namespaces the bench builds and deletes itself: UDP
//! frames through a hairpin of its own (below), then TCP pod to pod in two namespace labs
//! ([`tcp`]), each figure a ratio of the two forwarders repeated until it holds still
//! ([`rounds`]).
//!
//! # UDP: the topology, and why this one
//! vrouter has one uplink (AF_XDP) and TAP pods. Forwarding from the uplink into a pod would
//! make the sink a TAP, which is much slower than a veth, and Linux has no natural equivalent
//! (a kernel router does not forward into a TAP owned by a process). So the forwarder hairpins
//! on its one interface: one veth pair joins the generator's namespace and the forwarder's;
//! the generator sends to a block routed via the sink's address, and the forwarder sends each
//! frame back out of the same veth to the sink's MAC, where an XDP program on the generator's
//! veth counts and drops it (see [`topo`]). The kernel forwarder and vrouter get the same veth
//! and the same sink, and both receive and send every frame exactly once. For vrouter the
//! sink is a peer node in BGP mode (plain routing to the peer's MAC) or, for the IPIP runs, a
//! peer node reached through IPIP (`ipip_mode = "Always"`): the sink counts the protocol-4
//! frames that arrive. The kernel has no `ipip` module here, so IPIP has no kernel
//! counterpart; its ratio is against plain kernel forwarding.
//!
//! # Who runs where (2 cores)
//! On veth the receive work of a frame runs on the sender's CPU unless something moves it.
//! The generator (trafgen, the latency pings) is pinned to CPU 0; everything the
//! forwarder does runs on the last CPU (CPU 1 here). Kernel: RPS on `up0` moves the receive,
//! the forwarding and the transmit back (and the sink's XDP drop, which runs in the
//! transmitter's context) there. vrouter: with XDP attached the veth receives through NAPI,
//! not the backlog, so RPS does not apply; threaded NAPI on `up0`, its thread pinned to that
//! CPU, moves the XDP program and the copy into UMEM there, and the worker is pinned there
//! too. The sink's XDP drop runs in a threaded NAPI pinned to the forwarding CPU as well
//! (left alone, it stuck to whichever CPU first scheduled it, and the figures were bimodal). "Forwarding CPU %" is the
//! busy time of that CPU from `/proc/stat`, the same measure for both forwarders; for vrouter
//! the daemon's own CPU time (`/proc/PID/stat`, all threads) is reported as well.
//!
//! The veth pushes back when its receive ring is full, so trafgen's offered rate follows
//! what the forwarder drains: "offered" is what the generator got onto the wire, "loss" what
//! was offered and not forwarded.
//!
//! # Counting
//! Offered: the generator veth's transmit counter (packets + dropped) over the window.
//! Forwarded: the `xdp_drops` counter of the generator's veth (the sink), where an XDP program drops exactly
//! the IPv4 frames of the expected protocol (17, or 4 for IPIP) and passes the rest (ARP,
//! ICMP) to the sink namespace. Counters are read after a warm-up and after the
//! window, generator first then sink both times, so the few milliseconds between the reads
//! cancel. Gbit/s is forwarded frames x frame size (with FCS, without preamble and gap) x 8.
//! Runs alternate between forwarders in ABBA order (kernel, vrouter, IPIP, then IPIP, vrouter,
//! kernel ...), and the report gives the median with min and max over the repetitions;
//! `ratio_Z` and `ratio_ipip_Z` are the medians of each round's vrouter/kernel and IPIP/kernel.
//!
//! Latency: after the UDP throughput runs, trafgen offers 64-byte frames at half the smaller
//! forwarder's median 64-byte rate (its rate-limited "slow mode" may fall short; the load it
//! achieved is reported), and `ping -i 0.01` from the generator to the sink measures round
//! trips that cross the forwarder both ways; p50, p90, p99 and max. Kernel and vrouter only.
//!
//! # TCP, pod to pod
//! A hairpin is not a pod's path, and TCP's speed depends on what the pods' interfaces offload.
//! So TCP runs in the namespace lab's own topology ([`tcp`], built by `crate::lab`, the one
//! `vrouter lab demo` uses): pods on one node, on two nodes of one subnet, and on two subnets
//! (IPIP for vrouter), iperf3 with 1 and 8 streams, vrouter's lab against the kernel's (`lab
//! --kernel`), with the pods' offloads as they come (TSO, GSO, GRO, tx checksum), then again
//! with them off (`*_nooffload`); CPU seconds per Gbit for both.
//!
//! # The ceiling
//! After the TCP runs, [`uplink`] measures what AF_XDP on this machine carries at all at the
//! labs' MTU (full-size frames socket to socket over one veth, beside the kernel's TCP over
//! it): `tcp_remote_ceiling` and `tcp_ipip_ceiling`, which the cross-node verdicts quote. A
//! cross-node ratio cannot exceed them, whatever vrouter does.
//!
//! # Rounds until the figures hold still
//! Two runs of the same command disagree by up to 2x on this VM. Each ratio is the median of
//! per-round ratios, and after `reps` rounds the bench repeats the rounds of the ratios that
//! still move until two consecutive medians agree within `tolerance`, at most `max_reps`
//! rounds (see [`rounds`]); the report gives each ratio's spread and whether it converged.
//!
//! `VROUTER_PERF_KEEP=1` leaves the namespaces in place after the run, for a look by hand.

pub(crate) mod report;
pub mod rounds;
#[cfg(feature = "testing")]
pub mod scaling;
pub mod tcp;
pub mod topo;
pub mod uplink;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::lab::sys;
pub use crate::lab::LabError;

pub use report::{svg, table};
pub use rounds::Ratio;
pub use tcp::{Offloads, TcpLab, TcpPath, TcpSample};
pub use topo::Forwarder;

/// Where the bench keeps its generated files (configs, logs, the XDP object).
pub const DEFAULT_ROOT: &str = "/tmp/vrouter-perf";
/// Namespace names start with this, then 4 hex digits.
pub const NS_PREFIX: &str = "vrpf";

/// Choices for [`run`].
#[derive(Debug, Clone, Serialize)]
pub struct E2eOptions {
    /// Measured seconds per UDP run (after `warmup`).
    pub duration: f64,
    /// Seconds before counting: UDP runs wait this long, iperf3 omits this many (rounded up).
    pub warmup: f64,
    /// Rounds of the alternating sequence at least (every figure).
    pub reps: u32,
    /// Rounds at most: after `reps`, the rounds of the ratios whose median still moved by more
    /// than `tolerance` are repeated, up to this many.
    pub max_reps: u32,
    /// How close two consecutive medians of a ratio must be (a fraction: 0.1 is 10 %).
    pub tolerance: f64,
    /// UDP through the hairpin (and latency); off: TCP only.
    pub udp: bool,
    /// Frame sizes on the wire, with FCS (a frame of 64 is 60 bytes handed to the veth).
    pub sizes: Vec<u32>,
    /// TCP pod to pod in the namespace lab (iperf3, 1 and 8 streams, three paths).
    pub tcp: bool,
    /// Measured seconds per iperf3 run (whole seconds, after `warmup`).
    pub tcp_duration: f64,
    /// The pods' offloads in the TCP runs: as they come (`On`), off (`Off`), or both tables.
    pub tcp_offloads: Vec<Offloads>,
    /// The vrouter lab's `[workers] idle` (three daemons share the cores with iperf3: not poll).
    pub lab_idle: String,
    /// The TCP labs' underlay MTU (both labs; pods get 20 bytes less).
    pub lab_mtu: u16,
    /// iperf3's client on the generator's CPU and its server on the forwarding CPU (`-A`);
    /// false: wherever the scheduler puts them.
    pub tcp_pin: bool,
    /// Also measure ping latency under half the smaller forwarder's 64-byte capacity.
    pub latency: bool,
    /// vrouter's `[workers] idle` mode in the UDP hairpin.
    pub idle: String,
    /// Cores for the generator and for the forwarder (default: the first and the last).
    pub gen_cpu: Option<usize>,
    pub fwd_cpu: Option<usize>,
    /// The vrouter binary; default: this executable.
    #[serde(skip)]
    pub vrouter: Option<PathBuf>,
    #[serde(skip)]
    pub root: PathBuf,
}

impl Default for E2eOptions {
    /// About 9 minutes on the 2-vCPU VM when every ratio holds still after 3 rounds.
    fn default() -> Self {
        E2eOptions {
            duration: 3.0,
            warmup: 1.0,
            reps: 3,
            max_reps: 5,
            tolerance: 0.10,
            udp: true,
            sizes: vec![64, 512, 1500],
            tcp: true,
            tcp_duration: 3.0,
            tcp_offloads: vec![Offloads::On, Offloads::Off],
            lab_idle: crate::lab::LabOptions::default().idle,
            lab_mtu: crate::lab::LabOptions::default().mtu,
            tcp_pin: true,
            latency: true,
            idle: "poll".into(),
            gen_cpu: None,
            fwd_cpu: None,
            vrouter: None,
            root: PathBuf::from(DEFAULT_ROOT),
        }
    }
}

impl E2eOptions {
    /// About two minutes: 2 rounds of 1-second runs, no further rounds.
    pub fn quick() -> Self {
        E2eOptions { duration: 1.0, warmup: 0.3, reps: 2, max_reps: 2, tcp_duration: 1.0, ..Default::default() }
    }

    /// The generator's and the forwarding CPU: as given, else the first and the last.
    pub fn cpus(&self) -> (usize, usize) {
        cpus(self.gen_cpu, self.fwd_cpu)
    }

    /// The iperf3 client's and server's CPUs, if pinned.
    pub fn tcp_pins(&self) -> Option<(usize, usize)> {
        self.tcp_pin.then(|| self.cpus())
    }
}

fn ncpu() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// The generator's and the forwarding CPU: as given, else the first and the last.
pub(crate) fn cpus(gen: Option<usize>, fwd: Option<usize>) -> (usize, usize) {
    (gen.unwrap_or(0), fwd.unwrap_or(ncpu().saturating_sub(1)))
}

/// Refuses a generator and a forwarding CPU that are the same or not on this machine.
pub(crate) fn check_cpus(gen: usize, fwd: usize) -> Result<(), LabError> {
    let n = ncpu();
    if gen >= n || fwd >= n || gen == fwd {
        return Err(LabError::BadOption(format!(
            "generator CPU {gen} and forwarding CPU {fwd}: need two different CPUs below {n}"
        )));
    }
    Ok(())
}

/// One UDP run of one forwarder at one frame size.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub forwarder: Forwarder,
    pub rep: u32,
    /// The frame size asked for, and the one sent (IPIP at 1500 sends the largest frame whose
    /// encapsulation fits the 1500-byte MTU).
    pub size: u32,
    pub frame: u32,
    pub seconds: f64,
    pub offered_pps: f64,
    pub forwarded_pps: f64,
    pub gbps: f64,
    /// 1 - forwarded / offered, clamped at 0.
    pub loss: f64,
    /// Busy fraction of the forwarding CPU and of the generator's CPU.
    pub fwd_cpu: f64,
    pub gen_cpu: f64,
    /// vrouter's own CPU time, in cores (0 for the kernel).
    pub proc_cpu: f64,
    /// Where frames were lost, as counter deltas over the window.
    pub drops: BTreeMap<String, u64>,
}

/// Round-trip times of pings through the forwarder (both ways) while trafgen offers a fixed
/// load of 64-byte frames.
#[derive(Debug, Clone, Serialize)]
pub struct LatencySample {
    pub forwarder: Forwarder,
    /// The load asked for and the load trafgen achieved (its slow mode may fall short).
    pub target_pps: f64,
    pub load_pps: f64,
    pub sent: u32,
    pub received: u32,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Frames dropped while the pings ran (the load's too), where they were: vrouter's drop
    /// reasons (the kernel's AF_XDP drops among them, `xsk/*`), the kernel's backlog
    /// (`softnet_backlog_dropped`) and the generator's veth (`generator_tx_dropped`). Only
    /// those that moved.
    pub drops: BTreeMap<String, u64>,
}

impl std::fmt::Display for LatencySample {
    /// `kernel   load 0.177 Mpps (asked 0.169): p50 71  p90 178  p99 474  max 3370  (496/500 replies)`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<8} load {:.3} Mpps (asked {:.3}): p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}  ({}/{} replies)",
            self.forwarder.name(),
            self.load_pps / 1e6,
            self.target_pps / 1e6,
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.max_us,
            self.received,
            self.sent
        )?;
        if !self.drops.is_empty() {
            let d: Vec<String> = self.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
            write!(f, "; dropped meanwhile: {}", d.join(", "))?;
        }
        Ok(())
    }
}

/// Median, min and max of a figure over the repetitions.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(v: &[f64]) -> Spread {
        let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Spread::default();
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[n - 1] }
    }
}

/// The figures of one forwarder at one frame size, over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub forwarder: Forwarder,
    pub size: u32,
    pub frame: u32,
    pub offered_mpps: Spread,
    pub forwarded_mpps: Spread,
    pub gbps: Spread,
    pub loss: Spread,
    pub fwd_cpu: Spread,
    pub proc_cpu: Spread,
}

#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    pub options: E2eOptions,
    pub fwd_cpu: usize,
    pub gen_cpu: usize,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/loadavg` when the bench started (another tenant's load shows in every figure).
    pub loadavg: String,
    pub samples: Vec<Sample>,
    pub tcp: Vec<TcpSample>,
    /// The TCP phase's labs, what the pods' offloads were and what the kernel's ipip path is.
    pub tcp_lab: Option<TcpLab>,
    pub latency: Vec<LatencySample>,
    pub summaries: Vec<Summary>,
    /// What AF_XDP on this machine can carry at the TCP labs' MTU (`bench uplink`, measured
    /// after the TCP runs): the bound of the cross-node ratios.
    pub uplink: Option<uplink::UplinkFigures>,
    /// Every ratio over the rounds (`ratio_64`, `tcp1_local_ratio` ...): spread, verdict.
    pub ratios: BTreeMap<String, Ratio>,
    /// Flat figures: `kernel_mpps_64`, `vrouter_mpps_64`, `ipip_mpps_64`, `ratio_64`,
    /// `tcp1_local_ratio`, `vrouter_tcp1_local_gbps`, ...
    pub figures: BTreeMap<String, f64>,
}

impl E2eReport {
    /// Whether every ratio's last two medians agreed within the tolerance.
    pub fn converged(&self) -> bool {
        self.ratios.values().all(|r| r.converged)
    }

    /// The most rounds any figure took.
    pub fn rounds(&self) -> u32 {
        let udp = self.samples.iter().map(|s| s.rep + 1).max().unwrap_or(0);
        let tcp = self.tcp.iter().map(|s| s.rep + 1).max().unwrap_or(0);
        udp.max(tcp)
    }

    /// The `--json` document: the flat figures at the top level, then the details.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (k, v) in &self.figures {
            m.insert(k.clone(), serde_json::json!(v));
        }
        m.insert("converged".into(), self.converged().into());
        m.insert("rounds".into(), self.rounds().into());
        m.insert("options".into(), serde_json::to_value(&self.options).expect("plain struct"));
        m.insert("fwd_cpu".into(), self.fwd_cpu.into());
        m.insert("gen_cpu".into(), self.gen_cpu.into());
        m.insert("kernel".into(), self.kernel.clone().into());
        m.insert("loadavg".into(), self.loadavg.clone().into());
        m.insert("ratios".into(), serde_json::to_value(&self.ratios).expect("plain struct"));
        m.insert("summaries".into(), serde_json::to_value(&self.summaries).expect("plain struct"));
        m.insert("runs".into(), serde_json::to_value(&self.samples).expect("plain struct"));
        m.insert("tcp_runs".into(), serde_json::to_value(&self.tcp).expect("plain struct"));
        m.insert("tcp_lab".into(), serde_json::to_value(&self.tcp_lab).expect("plain struct"));
        m.insert("uplink".into(), serde_json::to_value(&self.uplink).expect("plain struct"));
        m.insert("latency_runs".into(), serde_json::to_value(&self.latency).expect("plain struct"));
        serde_json::Value::Object(m)
    }
}

fn preflight(opts: &E2eOptions) -> Result<PathBuf, LabError> {
    if !sys::is_root() {
        return Err(LabError::NotRoot {
            lab: "the perf lab",
            needs: "creates network namespaces and veths, attaches XDP",
        });
    }
    let mut tools = vec!["ip", "sysctl", "ethtool", "ping"];
    if opts.udp {
        tools.extend(["bridge", "taskset", "trafgen", "clang"]);
    }
    if opts.tcp {
        tools.push("iperf3");
    }
    for t in tools {
        sys::need_tool(t)?;
    }
    if !(opts.udp || opts.tcp) {
        return Err(LabError::BadOption("--no-udp and --no-tcp: nothing left to measure".into()));
    }
    if !(opts.duration.is_finite() && (0.2..=600.0).contains(&opts.duration)) {
        return Err(LabError::BadOption(format!("--duration {}: use 0.2 to 600 seconds", opts.duration)));
    }
    if !(opts.warmup.is_finite() && (0.0..=60.0).contains(&opts.warmup)) {
        return Err(LabError::BadOption(format!("warm-up {}: use 0 to 60 seconds", opts.warmup)));
    }
    if !(opts.tcp_duration.is_finite() && (1.0..=600.0).contains(&opts.tcp_duration)) {
        return Err(LabError::BadOption(format!("--tcp-duration {}: use 1 to 600 seconds", opts.tcp_duration)));
    }
    if opts.reps == 0 || opts.reps > 100 {
        return Err(LabError::BadOption(format!("--reps {}: use 1 to 100", opts.reps)));
    }
    if opts.max_reps < opts.reps || opts.max_reps > 100 {
        return Err(LabError::BadOption(format!("--max-reps {}: use --reps ({}) to 100", opts.max_reps, opts.reps)));
    }
    if !(opts.tolerance.is_finite() && opts.tolerance > 0.0 && opts.tolerance <= 1.0) {
        return Err(LabError::BadOption(format!(
            "--tolerance {}: a fraction above 0 and at most 1 (0.1 is 10 %)",
            opts.tolerance
        )));
    }
    if opts.sizes.iter().any(|&s| !(64..=1518).contains(&s)) || opts.sizes.is_empty() {
        return Err(LabError::BadOption(format!("frame sizes {:?}: each 64 to 1518", opts.sizes)));
    }
    if opts.udp || (opts.tcp && opts.tcp_pin) {
        let (g, f) = opts.cpus();
        check_cpus(g, f)?;
    }
    if opts.tcp && opts.tcp_offloads.is_empty() {
        return Err(LabError::BadOption("TCP offload modes: at least one of on, off".into()));
    }
    for (what, idle) in [("idle", &opts.idle), ("lab idle", &opts.lab_idle)] {
        if !["poll", "adaptive", "interrupt"].contains(&idle.as_str()) {
            return Err(LabError::BadOption(format!("{what} mode '{idle}': use poll, adaptive or interrupt")));
        }
    }
    crate::lab::vrouter_binary(opts.vrouter.as_deref())
}

/// Runs the UDP hairpin (every forwarder at every frame size, then latency) in namespaces of
/// its own, then TCP in two namespace labs ([`tcp`]), each round after round until its
/// ratios hold still (see [`rounds`]); deletes every namespace on every exit path and returns
/// the figures. `progress` gets one line per run.
pub fn run(opts: &E2eOptions, progress: &mut dyn FnMut(&str)) -> Result<E2eReport, LabError> {
    let bin = preflight(opts)?;
    let (gen_cpu, fwd_cpu) = opts.cpus();
    let mut report = E2eReport {
        options: opts.clone(),
        gen_cpu,
        fwd_cpu,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
        loadavg: std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
        samples: vec![],
        tcp: vec![],
        tcp_lab: None,
        uplink: None,
        latency: vec![],
        summaries: vec![],
        ratios: BTreeMap::new(),
        figures: BTreeMap::new(),
    };
    if opts.udp {
        udp(&bin, opts, &mut report, progress)?;
    }
    if opts.tcp {
        let phase = tcp::run(&bin, opts, progress)?;
        let (f, r) = tcp::figures(&phase.samples, opts.tolerance);
        report.figures.extend(f);
        report.ratios.extend(r);
        report.tcp = phase.samples;
        report.tcp_lab = Some(phase.lab);
        // The ceiling under the cross-node ratios, at the labs' MTU, so the table can say how
        // far a target is from what this machine allows at all.
        let o = uplink::UplinkOptions {
            mtus: vec![opts.lab_mtu],
            seconds: opts.tcp_duration.max(1.0),
            warmup: opts.warmup,
            reps: opts.reps,
            gen_cpu: opts.gen_cpu,
            fwd_cpu: opts.fwd_cpu,
        };
        let ceiling = uplink::run(&o, progress)?.pop();
        if let Some(c) = &ceiling {
            report.figures.insert("tcp_remote_ceiling".into(), c.ceiling_ratio.median);
            report.figures.insert("tcp_ipip_ceiling".into(), c.ceiling_ratio_ipip.median);
        }
        report.uplink = ceiling;
    }
    Ok(report)
}

/// The UDP hairpin and the latency runs, in the bench's own namespaces.
fn udp(bin: &Path, opts: &E2eOptions, report: &mut E2eReport, progress: &mut dyn FnMut(&str)) -> Result<(), LabError> {
    let topo = topo::Topo::up(&opts.root, opts.gen_cpu, opts.fwd_cpu)?;
    progress(&format!(
        "perf lab {}: generator on CPU {}, forwarding (kernel: RPS; vrouter: NAPI thread and worker; sink XDP drop) on CPU {}",
        topo.ns.prefix, topo.gen_cpu, topo.fwd_cpu
    ));
    (report.gen_cpu, report.fwd_cpu) = (topo.gen_cpu, topo.fwd_cpu);
    let result = udp_in(&topo, bin, opts, report, progress);
    if std::env::var_os("VROUTER_PERF_KEEP").is_some() {
        // Debugging aid: leave the namespaces for a look by hand (`ip netns del` them after).
        progress(&format!("VROUTER_PERF_KEEP: leaving namespaces {}", topo.ns.names().join(" ")));
        topo.ns.keep();
        return result;
    }
    // Delete before returning, even on error; the drop would do it silently.
    let down = topo.down();
    result?;
    down
}

/// The per-round ratios of `fwd` over the kernel at frame size `size`, in round order.
fn udp_per_round(samples: &[Sample], fwd: Forwarder, size: u32) -> Vec<f64> {
    let mut reps: Vec<u32> = samples.iter().filter(|s| s.size == size).map(|s| s.rep).collect();
    reps.sort_unstable();
    reps.dedup();
    reps.into_iter()
        .filter_map(|rep| {
            let of = |f: Forwarder| samples.iter().find(|s| s.size == size && s.rep == rep && s.forwarder == f);
            rounds::round_ratio(of(fwd)?.forwarded_pps, of(Forwarder::Kernel)?.forwarded_pps)
        })
        .collect()
}

fn udp_in(
    t: &topo::Topo,
    bin: &Path,
    opts: &E2eOptions,
    report: &mut E2eReport,
    progress: &mut dyn FnMut(&str),
) -> Result<(), LabError> {
    let mut samples = vec![];
    let abba = [Forwarder::Kernel, Forwarder::Vrouter, Forwarder::Ipip];
    for rep in 0..opts.max_reps {
        // After `reps` rounds, only the sizes whose ratios still move.
        let settled = |z: u32| {
            [Forwarder::Vrouter, Forwarder::Ipip]
                .iter()
                .all(|&f| rounds::converged(&udp_per_round(&samples, f, z), opts.tolerance))
        };
        let sizes: Vec<u32> = opts.sizes.iter().copied().filter(|&z| rep < opts.reps || !settled(z)).collect();
        if sizes.is_empty() {
            break;
        }
        if rep >= opts.reps {
            progress(&format!(
                "UDP round {}: medians still moving by more than {:.0} % at {:?} B",
                rep + 1,
                opts.tolerance * 100.0,
                sizes
            ));
        }
        let order: Vec<Forwarder> = if rep % 2 == 0 { abba.to_vec() } else { abba.iter().rev().copied().collect() };
        for fwd in order {
            let daemon = match fwd {
                Forwarder::Kernel => {
                    t.kernel_on()?;
                    None
                }
                _ => Some(t.vrouter_on(bin, fwd, &opts.idle)?),
            };
            for &size in &sizes {
                let s = udp_run(t, fwd, rep, size, opts, daemon.as_ref())?;
                progress(&format!(
                    "rep {}/{} {:<7} {:>4} B: offered {:.3} Mpps, forwarded {:.3} Mpps ({:.2} Gbit/s, loss {:.1} %), forwarding CPU {:.0} %{}",
                    rep + 1,
                    opts.max_reps,
                    fwd.name(),
                    size,
                    s.offered_pps / 1e6,
                    s.forwarded_pps / 1e6,
                    s.gbps,
                    s.loss * 100.0,
                    s.fwd_cpu * 100.0,
                    if fwd == Forwarder::Kernel { String::new() } else { format!(", vrouter {:.0} %", s.proc_cpu * 100.0) }
                ));
                samples.push(s);
            }
            match daemon {
                Some(mut d) => {
                    d.stop();
                    t.vrouter_off()?;
                }
                None => t.kernel_off()?,
            }
        }
    }
    let summaries = summarise(&samples, &opts.sizes);
    let mut figures = figures(&summaries, &opts.sizes);
    for &z in &opts.sizes {
        for (name, fwd) in [(format!("ratio_{z}"), Forwarder::Vrouter), (format!("ratio_ipip_{z}"), Forwarder::Ipip)] {
            let r = Ratio::of(&udp_per_round(&samples, fwd, z), opts.tolerance);
            figures.insert(name.clone(), r.median);
            report.ratios.insert(name, r);
        }
    }
    let mut latency = vec![];
    if opts.latency {
        let cap = |n: &str| {
            summaries
                .iter()
                .find(|x| x.forwarder.name() == n && x.size == opts.sizes[0])
                .map(|x| x.forwarded_mpps.median * 1e6)
                .unwrap_or(0.0)
        };
        let target = 0.5 * cap("kernel").min(cap("vrouter"));
        figures.insert("latency_target_mpps".into(), target / 1e6);
        for fwd in [Forwarder::Kernel, Forwarder::Vrouter] {
            let daemon = match fwd {
                Forwarder::Kernel => {
                    t.kernel_on()?;
                    None
                }
                _ => Some(t.vrouter_on(bin, fwd, &opts.idle)?),
            };
            match latency_run(t, fwd, target, opts, daemon.as_ref()) {
                Ok(l) => {
                    progress(&format!("latency {l}"));
                    let n = fwd.name();
                    figures.insert(format!("{n}_lat_p50_us"), l.p50_us);
                    figures.insert(format!("{n}_lat_p99_us"), l.p99_us);
                    figures.insert(format!("{n}_lat_load_mpps"), l.load_pps / 1e6);
                    latency.push(l);
                }
                Err(LabError::Interrupted) => return Err(LabError::Interrupted),
                Err(e) => progress(&format!("latency {} FAILED: {e}", fwd.name())),
            }
            match daemon {
                Some(mut d) => {
                    d.stop();
                    t.vrouter_off()?;
                }
                None => t.kernel_off()?,
            }
        }
    }
    report.samples = samples;
    report.summaries = summaries;
    report.figures.extend(figures);
    report.latency = latency;
    Ok(())
}

/// The frame trafgen sends for `size` (with FCS) through `fwd`.
fn frame_len(fwd: Forwarder, size: u32) -> u32 {
    let frame = size;
    if fwd == Forwarder::Ipip {
        // Outer header 20 bytes; the outer frame must fit 1500 bytes of IP (1518 with FCS).
        frame.min(1518 - 20)
    } else {
        frame
    }
}

/// trafgen's packet: UDP from the generator to the sink's block, 8,192 flows (source ports
/// 1024..9215 and destination ports 5000..5255 step together).
fn trafgen_config(frame: u32) -> String {
    let pad = frame - 4 - 14 - 20 - 8;
    format!(
        "{{\n  eth(da={}, sa={}, type=0x0800),\n  ipv4(saddr={}, daddr={}, ttl=64),\n  udp(sport=dinc(1024, 9215), dport=dinc(5000, 5255)),\n  fill(0x00, {pad})\n}}\n",
        topo::FWD_MAC,
        topo::GEN_MAC,
        topo::GEN_SRC,
        topo::SINK_DST
    )
}

#[derive(Debug, Clone, Default)]
struct Counters {
    at: Option<Instant>,
    gen_tx: u64,
    gen_tx_dropped: u64,
    sink_xdp: u64,
    sink_rx: u64,
    cpu: Vec<(u64, u64)>,
    proc_ticks: u64,
    /// The daemon's drop counters by reason (empty for the kernel).
    vrouter_drops: BTreeMap<String, u64>,
    softnet_dropped: u64,
}

fn link_stats(ns: &str, dev: &str) -> Result<serde_json::Value, LabError> {
    let out = sys::ns_ok(ns, &["ip", "-j", "-s", "link", "show", "dev", dev], Duration::from_secs(5))?;
    let v: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| LabError::BadOption(format!("unreadable `ip -j -s link` output for {dev}: {e}")))?;
    Ok(v[0]["stats64"].clone())
}

/// Sum of the veth's per-queue `xdp_drops` (`ethtool -S`).
fn xdp_drops(ns: &str, dev: &str) -> Result<u64, LabError> {
    let out = sys::ns_ok(ns, &["ethtool", "-S", dev], Duration::from_secs(5))?;
    Ok(out
        .lines()
        .filter_map(|l| l.trim().split_once(':'))
        .filter(|(k, _)| k.ends_with("xdp_drops"))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum())
}

/// One `cpu` line of /proc/stat, in jiffies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct CpuJiffies {
    /// user, nice, system, irq and softirq (guest time is inside user already).
    pub work: u64,
    /// idle and iowait.
    pub idle: u64,
    /// Time the hypervisor gave to someone else.
    pub steal: u64,
}

/// Reads a `cpu` or `cpuN` line's fields (user nice system idle iowait irq softirq steal ...);
/// `None` unless it has at least the first four, all numbers.
pub(crate) fn cpu_jiffies(line: &str) -> Option<CpuJiffies> {
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    (f.len() >= 4).then(|| CpuJiffies {
        work: get(0) + get(1) + get(2) + get(5) + get(6),
        idle: get(3) + get(4),
        steal: get(7),
    })
}

/// (busy, total) jiffies per CPU from /proc/stat; steal counts as busy (the forwarder did not
/// get that time).
fn cpu_times() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            let c = cpu_jiffies(l).unwrap_or_default();
            let busy = c.work + c.steal;
            (busy, busy + c.idle)
        })
        .collect()
}

/// utime + stime of a process (all threads), in clock ticks.
pub(crate) fn proc_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn softnet_dropped() -> u64 {
    let text = std::fs::read_to_string("/proc/net/softnet_stat").unwrap_or_default();
    text.lines().filter_map(|l| l.split_whitespace().nth(1)).filter_map(|x| u64::from_str_radix(x, 16).ok()).sum()
}

fn read_counters(t: &topo::Topo, daemon: Option<&topo::Daemon>) -> Result<Counters, LabError> {
    let at = Instant::now();
    let cpu = cpu_times();
    let proc_ticks = daemon.map(|d| proc_ticks(d.pid())).unwrap_or(0);
    let g = link_stats(&t.gen, "eth0")?;
    let sink_xdp = xdp_drops(&t.gen, "eth0")?;
    Ok(Counters {
        at: Some(at),
        gen_tx: g["tx"]["packets"].as_u64().unwrap_or(0),
        gen_tx_dropped: g["tx"]["dropped"].as_u64().unwrap_or(0),
        sink_xdp,
        sink_rx: g["rx"]["packets"].as_u64().unwrap_or(0),
        cpu,
        proc_ticks,
        vrouter_drops: daemon.map(topo::Daemon::drops_by_reason).unwrap_or_default(),
        softnet_dropped: softnet_dropped(),
    })
}

fn cpu_frac(a: &Counters, b: &Counters, cpu: usize) -> f64 {
    match (a.cpu.get(cpu), b.cpu.get(cpu)) {
        (Some(x), Some(y)) if y.1 > x.1 => (y.0 - x.0) as f64 / (y.1 - x.1) as f64,
        _ => 0.0,
    }
}

fn udp_run(
    t: &topo::Topo,
    fwd: Forwarder,
    rep: u32,
    size: u32,
    opts: &E2eOptions,
    daemon: Option<&topo::Daemon>,
) -> Result<Sample, LabError> {
    let frame = frame_len(fwd, size);
    let cfg = t.dir.join(format!("trafgen-{frame}.cfg"));
    std::fs::write(&cfg, trafgen_config(frame))
        .map_err(|err| LabError::Io { what: format!("writing {}", cfg.display()), err })?;
    let log = t.dir.join("trafgen.log");
    let mut child = start_trafgen(t, &cfg, None, &log)?;
    // Stops trafgen's whole process group on every path out of the measurement.
    struct Gen<'a>(&'a mut std::process::Child);
    impl Drop for Gen<'_> {
        fn drop(&mut self) {
            sys::kill_group(self.0);
        }
    }
    let gen = Gen(&mut child);
    let measured = (|| {
        sys::sleep(Duration::from_secs_f64(opts.warmup))?;
        let a = read_counters(t, daemon)?;
        sys::sleep(Duration::from_secs_f64(opts.duration))?;
        let b = read_counters(t, daemon)?;
        Ok::<_, LabError>((a, b))
    })();
    drop(gen);
    let (a, b) = measured?;
    let secs = b.at.zip(a.at).map(|(y, x)| (y - x).as_secs_f64()).unwrap_or(opts.duration).max(1e-3);
    let offered = (b.gen_tx + b.gen_tx_dropped).saturating_sub(a.gen_tx + a.gen_tx_dropped);
    if offered == 0 {
        return Err(LabError::NoTraffic {
            what: format!("trafgen sent nothing ({} B frames)", frame),
            tail: sys::tail(&log, 10),
        });
    }
    let forwarded = b.sink_xdp.saturating_sub(a.sink_xdp);
    let ticks = clk_tck();
    let mut drops = BTreeMap::new();
    drops.insert("generator_tx_dropped".to_string(), b.gen_tx_dropped.saturating_sub(a.gen_tx_dropped));
    drops.insert("softnet_backlog_dropped".to_string(), b.softnet_dropped.saturating_sub(a.softnet_dropped));
    drops.insert("sink_rx_not_counted".to_string(), (b.sink_rx.saturating_sub(a.sink_rx)).saturating_sub(forwarded));
    if daemon.is_some() {
        let sum = |c: &Counters| c.vrouter_drops.values().sum::<u64>();
        drops.insert("vrouter_drops".to_string(), sum(&b).saturating_sub(sum(&a)));
    }
    let offered_pps = offered as f64 / secs;
    let forwarded_pps = forwarded as f64 / secs;
    Ok(Sample {
        forwarder: fwd,
        rep,
        size,
        frame,
        seconds: secs,
        offered_pps,
        forwarded_pps,
        gbps: forwarded_pps * frame as f64 * 8.0 / 1e9,
        loss: (1.0 - forwarded as f64 / offered as f64).max(0.0),
        fwd_cpu: cpu_frac(&a, &b, t.fwd_cpu),
        gen_cpu: cpu_frac(&a, &b, t.gen_cpu),
        proc_cpu: b.proc_ticks.saturating_sub(a.proc_ticks) as f64 / ticks / secs,
        drops,
    })
}

/// trafgen on the generator's CPU, in its own process group: flat out (`-t 0`, send mode), or
/// at `rate` packets per second (trafgen's slow mode, which may fall short: callers measure).
fn start_trafgen(t: &topo::Topo, cfg: &Path, rate: Option<u64>, log: &Path) -> Result<std::process::Child, LabError> {
    let cpu = t.gen_cpu.to_string();
    let cfg = cfg.to_string_lossy();
    let rate_s = rate.map(|r| format!("{r}pps"));
    let mut args: Vec<&str> = vec!["taskset", "-c", &cpu, "trafgen", "--in", &cfg, "--out", "eth0"];
    match &rate_s {
        Some(r) => args.extend(["-b", r.as_str()]),
        None => args.extend(["-t", "0"]),
    }
    args.extend(["--no-sock-mem", "-P", "1", "-q"]);
    sys::spawn_in(&t.gen, &args, Some(log))
}

fn clk_tck() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

fn latency_run(
    t: &topo::Topo,
    fwd: Forwarder,
    target: f64,
    opts: &E2eOptions,
    daemon: Option<&topo::Daemon>,
) -> Result<LatencySample, LabError> {
    let frame = 64;
    let cfg = t.dir.join(format!("trafgen-{frame}.cfg"));
    std::fs::write(&cfg, trafgen_config(frame))
        .map_err(|err| LabError::Io { what: format!("writing {}", cfg.display()), err })?;
    let log = t.dir.join("trafgen-latency.log");
    let mut child = start_trafgen(t, &cfg, Some(target.max(1.0) as u64), &log)?;
    struct Gen<'a>(&'a mut std::process::Child);
    impl Drop for Gen<'_> {
        fn drop(&mut self) {
            sys::kill_group(self.0);
        }
    }
    let gen = Gen(&mut child);
    let count = ((opts.duration * 100.0) as u32).max(100);
    let measured = (|| {
        sys::sleep(Duration::from_secs_f64(opts.warmup))?;
        let a = read_counters(t, daemon)?;
        let out = sys::ns_ok(
            &t.gen,
            &["ping", "-n", "-i", "0.01", "-c", &count.to_string(), "-W", "1", "-I", topo::GEN_SRC, topo::SINK_DST],
            Duration::from_secs(count as u64 / 50 + 20),
        );
        // The daemon writes its stats every 200 ms: wait for a file from after the pings.
        sys::sleep(Duration::from_millis(300))?;
        let b = read_counters(t, daemon)?;
        Ok::<_, LabError>((a, b, out))
    })();
    drop(gen);
    let (a, b, out) = measured?;
    // ping exits non-zero when a reply is missing: the replies it got still count.
    let out = match out {
        Ok(o) => o,
        Err(LabError::Command { stderr, .. }) => stderr,
        Err(e) => return Err(e),
    };
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|x| x.split_whitespace().next())
        .filter_map(|x| x.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    if rtts.is_empty() {
        return Err(LabError::NoTraffic {
            what: "no ping replies through the forwarder under load".into(),
            tail: sys::tail(&log, 5),
        });
    }
    rtts.sort_by(|x, y| x.total_cmp(y));
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p).round() as usize];
    let secs = b.at.zip(a.at).map(|(y, x)| (y - x).as_secs_f64()).unwrap_or(0.0).max(1e-3);
    Ok(LatencySample {
        forwarder: fwd,
        target_pps: target,
        load_pps: b.gen_tx.saturating_sub(a.gen_tx) as f64 / secs,
        sent: count,
        received: rtts.len() as u32,
        p50_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        max_us: rtts[rtts.len() - 1],
        drops: moved_drops(&a, &b),
    })
}

/// The drop counters that moved from `a` to `b`, by where: the daemon's reasons, the kernel's
/// backlog and the generator veth's TX drops; only those that moved.
fn moved_drops(a: &Counters, b: &Counters) -> BTreeMap<String, u64> {
    let mut d: BTreeMap<String, u64> = b
        .vrouter_drops
        .iter()
        .map(|(k, n)| (k.clone(), n.saturating_sub(a.vrouter_drops.get(k).copied().unwrap_or(0))))
        .collect();
    d.insert("softnet_backlog_dropped".into(), b.softnet_dropped.saturating_sub(a.softnet_dropped));
    d.insert("generator_tx_dropped".into(), b.gen_tx_dropped.saturating_sub(a.gen_tx_dropped));
    d.retain(|_, n| *n > 0);
    d
}

fn summarise(samples: &[Sample], sizes: &[u32]) -> Vec<Summary> {
    let mut out = vec![];
    for fwd in [Forwarder::Kernel, Forwarder::Vrouter, Forwarder::Ipip] {
        for &size in sizes {
            let s: Vec<&Sample> = samples.iter().filter(|s| s.forwarder == fwd && s.size == size).collect();
            if s.is_empty() {
                continue;
            }
            let sp = |f: &dyn Fn(&Sample) -> f64| Spread::of(&s.iter().map(|x| f(x)).collect::<Vec<_>>());
            out.push(Summary {
                forwarder: fwd,
                size,
                frame: s[0].frame,
                offered_mpps: sp(&|x| x.offered_pps / 1e6),
                forwarded_mpps: sp(&|x| x.forwarded_pps / 1e6),
                gbps: sp(&|x| x.gbps),
                loss: sp(&|x| x.loss),
                fwd_cpu: sp(&|x| x.fwd_cpu),
                proc_cpu: sp(&|x| x.proc_cpu),
            });
        }
    }
    out
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 && a.is_finite() {
        a / b
    } else {
        0.0
    }
}

/// The flat UDP figures from the summaries (medians over the rounds); `ratio_Z` and
/// `ratio_ipip_Z` come from the per-round ratios instead (see [`udp_in`]).
fn figures(summaries: &[Summary], sizes: &[u32]) -> BTreeMap<String, f64> {
    let mut f = BTreeMap::new();
    for s in summaries {
        let (n, z) = (s.forwarder.name(), s.size);
        f.insert(format!("{n}_mpps_{z}"), s.forwarded_mpps.median);
        f.insert(format!("{n}_offered_mpps_{z}"), s.offered_mpps.median);
        f.insert(format!("{n}_gbps_{z}"), s.gbps.median);
        f.insert(format!("{n}_loss_{z}"), s.loss.median);
        f.insert(format!("{n}_fwd_cpu_{z}"), s.fwd_cpu.median);
        // Forwarding work per busy core: the figure to compare when one side is not saturated.
        f.insert(format!("{n}_mpps_per_core_{z}"), ratio(s.forwarded_mpps.median, s.fwd_cpu.median));
        if s.forwarder != Forwarder::Kernel {
            f.insert(format!("{n}_proc_cpu_{z}"), s.proc_cpu.median);
        }
    }
    for &z in sizes {
        let per_core = |n: &str| f.get(&format!("{n}_mpps_per_core_{z}")).copied().unwrap_or(0.0);
        f.insert(format!("ratio_per_core_{z}"), ratio(per_core("vrouter"), per_core("kernel")));
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_the_middle_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 4.0, 3.0]).median, 2.5);
        assert_eq!(Spread::of(&[]).median, 0.0);
    }

    #[test]
    fn a_latency_line_says_where_frames_were_dropped_meanwhile() {
        let mut l = LatencySample {
            forwarder: Forwarder::Vrouter,
            target_pps: 114_000.0,
            load_pps: 132_000.0,
            sent: 200,
            received: 187,
            p50_us: 61.0,
            p90_us: 74.0,
            p99_us: 8250.0,
            max_us: 8590.0,
            drops: BTreeMap::new(),
        };
        assert!(l.to_string().ends_with("(187/200 replies)"), "{l}");
        l.drops = [("tx/full".to_string(), 4), ("generator_tx_dropped".to_string(), 12)].into();
        assert!(
            l.to_string().ends_with("(187/200 replies); dropped meanwhile: generator_tx_dropped 12, tx/full 4"),
            "{l}"
        );
    }

    #[test]
    fn a_cpu_line_splits_into_work_idle_and_steal() {
        let c = cpu_jiffies("cpu1 100 5 50 1000 20 3 7 11 0 0").unwrap();
        assert_eq!(c, CpuJiffies { work: 100 + 5 + 50 + 3 + 7, idle: 1000 + 20, steal: 11 });
        assert_eq!(cpu_jiffies("cpu1 1 2 3"), None);
        assert_eq!(cpu_jiffies("cpu1 1 x 3 4"), None);
    }

    #[test]
    fn moved_drops_names_only_the_counters_that_moved() {
        let a = Counters {
            vrouter_drops: [("tx/full".to_string(), 5), ("fib/no-route".to_string(), 2)].into(),
            gen_tx_dropped: 10,
            softnet_dropped: 3,
            ..Default::default()
        };
        let mut b = a.clone();
        b.vrouter_drops.insert("tx/full".into(), 9);
        b.vrouter_drops.insert("uplink/rx-dropped".into(), 4);
        b.gen_tx_dropped = 12;
        let d = moved_drops(&a, &b);
        let want: BTreeMap<String, u64> =
            [("tx/full".into(), 4), ("uplink/rx-dropped".into(), 4), ("generator_tx_dropped".into(), 2)].into();
        assert_eq!(d, want);
    }

    #[test]
    fn ipip_frames_leave_room_for_the_outer_header() {
        assert_eq!(frame_len(Forwarder::Ipip, 1500), 1498);
        assert_eq!(frame_len(Forwarder::Ipip, 64), 64);
        assert_eq!(frame_len(Forwarder::Kernel, 1500), 1500);
        assert!(trafgen_config(64).contains("fill(0x00, 18)"));
    }

    #[test]
    fn ratios_are_finite_when_the_kernel_forwarded_nothing() {
        assert_eq!(ratio(1.0, 0.0), 0.0);
        assert_eq!(ratio(1.0, 2.0), 0.5);
    }

    fn udp(fwd: Forwarder, rep: u32, size: u32, mpps: f64) -> Sample {
        Sample {
            forwarder: fwd,
            rep,
            size,
            frame: size,
            seconds: 1.0,
            offered_pps: mpps * 1e6,
            forwarded_pps: mpps * 1e6,
            gbps: 0.0,
            loss: 0.0,
            fwd_cpu: 1.0,
            gen_cpu: 1.0,
            proc_cpu: 0.0,
            drops: BTreeMap::new(),
        }
    }

    #[test]
    fn udp_ratios_pair_runs_of_the_same_round_and_size() {
        let mut v = vec![];
        for (rep, k, vr, ip) in [(0, 1.0, 0.5, 0.4), (1, 0.5, 0.5, 0.5), (2, 1.0, 0.9, 0.0)] {
            v.push(udp(Forwarder::Kernel, rep, 64, k));
            v.push(udp(Forwarder::Vrouter, rep, 64, vr));
            v.push(udp(Forwarder::Ipip, rep, 64, ip));
            v.push(udp(Forwarder::Kernel, rep, 512, 1.0));
        }
        assert_eq!(udp_per_round(&v, Forwarder::Vrouter, 64), vec![0.5, 1.0, 0.9]);
        assert_eq!(udp_per_round(&v, Forwarder::Ipip, 64), vec![0.4, 1.0, 0.0]);
        // No vrouter run at 512: no ratio.
        assert!(udp_per_round(&v, Forwarder::Vrouter, 512).is_empty());
    }

    #[test]
    fn json_carries_flat_tcp_ratios_their_spread_and_the_verdict() {
        let mut tcp = vec![];
        for rep in 0..3 {
            for fwd in [Forwarder::Kernel, Forwarder::Vrouter] {
                tcp.push(TcpSample {
                    forwarder: fwd,
                    rep,
                    path: TcpPath::Ipip,
                    streams: 1,
                    offloads: Offloads::On,
                    gbps: if fwd == Forwarder::Kernel { 10.0 } else { 6.0 },
                    busy_cores: 1.2,
                    steal_cores: 0.0,
                    cpu_per_gbit: 0.1,
                    retransmits: 0,
                    ok: true,
                    error: None,
                });
            }
        }
        let (figures, ratios) = tcp::figures(&tcp, 0.1);
        let mut report = E2eReport {
            options: E2eOptions::quick(),
            fwd_cpu: 1,
            gen_cpu: 0,
            kernel: "6.18".into(),
            loadavg: "0.1 0.1 0.1 1/100 1".into(),
            samples: vec![],
            tcp,
            tcp_lab: None,
            uplink: None,
            latency: vec![],
            summaries: vec![],
            ratios,
            figures,
        };
        let j = report.to_json();
        assert_eq!(j["tcp1_ipip_ratio"], 0.6);
        assert_eq!(j["vrouter_tcp1_ipip_gbps"], 6.0);
        assert_eq!(j["kernel_tcp1_ipip_cpu_per_gbit"], 0.1);
        assert_eq!(j["ratios"]["tcp1_ipip_ratio"]["rounds"], 3);
        assert_eq!(j["ratios"]["tcp1_ipip_ratio"]["min"], 0.6);
        assert_eq!((j["converged"].as_bool(), j["rounds"].as_u64()), (Some(true), Some(3)));
        assert_eq!(j["tcp_runs"].as_array().map(Vec::len), Some(6));
        report.ratios.insert("ratio_64".into(), Ratio::of(&[0.5, 1.0], 0.1));
        assert_eq!(report.to_json()["converged"], false);
        let table = table(&report);
        assert!(table.contains(">= 0.5: met"), "{table}");
        assert!(table.contains("NOT converged") && table.contains("ratio_64"), "{table}");
        // With the uplink's ceiling measured, the cross-node verdicts say how far it allows.
        let c = |m| Spread { median: m, min: m, max: m };
        let afxdp =
            uplink::AfxdpFigures { napi: uplink::Napi::Softirq, mpps: c(0.9), tcp_equiv_gbps: c(10.4), lost: c(0.0) };
        report.uplink = Some(uplink::UplinkFigures {
            mtu: 1500,
            kernel_tcp_gbps: c(20.0),
            afxdp: vec![afxdp],
            ceiling_ratio: c(0.52),
            ceiling_ratio_ipip: c(0.51),
        });
        let table = super::table(&report);
        assert!(table.contains(">= 0.5: met (AF_XDP here: at most 0.51)"), "{table}");
        assert!(table.contains("at most 10.40 Gbit/s of TCP against the kernel's 20.00"), "{table}");
    }
}
