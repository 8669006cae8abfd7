//! The bench's namespaces, addressing and forwarder set-ups.
//!
//! ```text
//!   <p>-gen                                   <p>-fwd
//!   eth0 192.168.50.2 + 10.251.0.2/32 ------- up0 192.168.50.1
//!   |  XDP: drop IPv4 protocol 17 and 4       kernel forwarding (RPS -> forwarding CPU), or
//!   |  (the sink's counter)                   vrouter on AF_XDP (native XDP; threaded NAPI
//!   |  trafgen, ping                          pinned to the forwarding CPU)
//!   +- macvlan (bridge mode) -> <p>-snk eth0 192.168.50.3 + 10.250.0.1/32: answers ping
//! ```
//!
//! One veth pair. The generator sends to 10.250.0.0/16, routed via the sink's address; the
//! forwarder receives the frame on `up0` and sends it back out of `up0` to the sink's MAC
//! (vrouter has one uplink, its other ports are TAP pods, so it has to hairpin; the kernel
//! gets exactly the same path). The frame arrives at the generator's veth, whose XDP program
//! drops UDP and IPIP before anything else sees them: that drop counter is the sink. What the
//! program passes (ICMP, ARP) reaches the sink namespace through a macvlan on that veth, so
//! the latency pings have a real receiver whose replies go back through the forwarder too.
//! All neighbours are static on every side: no ARP during a measurement. (TCP is measured pod
//! to pod in the namespace lab instead: see `perf::tcp`.)
//!
//! A first version put generator, forwarder and sink on a Linux bridge: the bridge hops cost
//! more than the forwarding (kernel 0.36 Mpps instead of 0.95), and with RPS the generator's
//! flood and vrouter's transmitted frames shared one backlog, which starved vrouter.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::sys;
use crate::control::config::{
    Config, ControlConfig, NeighbourConfig, NodeConfig, PeerConfig, RpfMode, UplinkConfig, WorkersConfig, XdpMode,
};
use crate::lab::LabError;
use vrouter_core::dataplane::state::IpipMode;
use vrouter_core::fib::Ipv4Prefix;
use vrouter_core::wire::MacAddr;

pub(crate) const GEN_MAC: &str = "02:76:70:00:00:02";
pub(crate) const FWD_MAC: &str = "02:76:70:00:00:01";
pub(crate) const SINK_MAC: &str = "02:76:70:00:00:03";
pub(crate) const FWD_IP: &str = "192.168.50.1";
pub(crate) const GEN_IP: &str = "192.168.50.2";
pub(crate) const SINK_IP: &str = "192.168.50.3";
/// The generator's own source address and the block routed back to it.
pub(crate) const GEN_SRC: &str = "10.251.0.2";
pub(crate) const GEN_BLOCK: &str = "10.251.0.0/16";
/// The sink's address (the latency pings' target) inside the block routed to it.
pub(crate) const SINK_DST: &str = "10.250.0.1";
pub(crate) const SINK_BLOCK: &str = "10.250.0.0/16";

/// The sink's XDP program: drops IPv4 UDP (plain runs) and IPv4-in-IPv4 (protocol 4, IPIP
/// runs) so that the sink spends almost nothing per frame and the veth's `xdp_drops` counter
/// counts exactly the frames of the expected protocol; everything else (ARP, ICMP for the
/// latency pings) goes to the sink's kernel stack.
const SINK_XDP_C: &str = r#"
struct xdp_md { unsigned int data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex; };
#define SEC(n) __attribute__((section(n), used))
SEC("xdp") int sink(struct xdp_md *ctx) {
    unsigned char *d = (unsigned char *)(unsigned long)ctx->data;
    unsigned char *end = (unsigned char *)(unsigned long)ctx->data_end;
    if (d + 34 > end) return 2;                   /* XDP_PASS */
    if (d[12] != 0x08 || d[13] != 0x00) return 2; /* not IPv4 */
    if (d[23] == 17 || d[23] == 4) return 1;      /* XDP_DROP: UDP or IPIP */
    return 2;
}
char _license[] SEC("license") = "GPL";
"#;

/// What forwards in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarder {
    /// Linux IPv4 forwarding in `<p>-fwd`.
    Kernel,
    /// vrouter on AF_XDP, BGP mode: the sink is an on-link peer, routed without encapsulation.
    Vrouter,
    /// vrouter encapsulating towards the sink as an IPIP peer (`ipip_mode = "Always"`).
    Ipip,
}

impl Forwarder {
    pub fn name(self) -> &'static str {
        match self {
            Forwarder::Kernel => "kernel",
            Forwarder::Vrouter => "vrouter",
            Forwarder::Ipip => "ipip",
        }
    }
}

/// A bench's namespaces, `<prefix>-<role>` under a prefix (`vrpf` and four hex digits) that no
/// namespace uses yet: created with IPv6 off and `lo` up, deleted at exit (a signal too), by
/// [`Namespaces::down`] or on drop.
pub(crate) struct Namespaces {
    pub prefix: String,
    names: Vec<String>,
    done: bool,
}

impl Namespaces {
    /// Creates one namespace per role; on error, the drop deletes those that exist.
    pub fn create(roles: &[&str]) -> Result<Namespaces, LabError> {
        let existing = sys::netns_list()?;
        let new = || format!("{}{:04x}", super::NS_PREFIX, vrouter_core::random_seed() as u16);
        let mut prefix = new();
        while existing.iter().any(|n| n.starts_with(&format!("{prefix}-"))) {
            prefix = new();
        }
        let names: Vec<String> = roles.iter().map(|r| format!("{prefix}-{r}")).collect();
        let (p, all) = (prefix.clone(), names.clone());
        sys::register(&prefix, move || {
            eprintln!("vrouter bench: deleting namespaces of {p} at exit");
            let _ = sys::delete_namespaces(&all);
        });
        let n = Namespaces { prefix, names, done: false };
        let to = Duration::from_secs(10);
        for ns in &n.names {
            sys::ip(&["netns", "add", ns])?;
            sys::ns_ok(
                ns,
                &["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
                to,
            )?;
            sys::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(n)
    }

    /// The namespace of the `i`th role given to [`Namespaces::create`].
    pub fn name(&self, i: usize) -> String {
        self.names[i].clone()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Leaves them for a look by hand: no longer deleted at exit or on drop.
    pub fn keep(mut self) {
        self.done = true;
        sys::unregister(&self.prefix);
    }

    /// Deletes them now, reporting failures (the drop does the same, and only prints them).
    pub fn down(mut self) -> Result<(), LabError> {
        self.done = true;
        let left = sys::delete_namespaces(&self.names);
        sys::unregister(&self.prefix);
        if left.is_empty() {
            Ok(())
        } else {
            Err(LabError::Teardown { prefix: self.prefix.clone(), left: left.join(", ") })
        }
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        if !self.done {
            let left = sys::delete_namespaces(&self.names);
            sys::unregister(&self.prefix);
            if !left.is_empty() {
                eprintln!("vrouter bench: could not delete {}", left.join(", "));
            }
        }
    }
}

/// The UDP hairpin's namespaces; deleted on drop.
pub(crate) struct Topo {
    pub ns: Namespaces,
    pub dir: PathBuf,
    pub gen: String,
    pub fwd: String,
    pub snk: String,
    /// The CPU that forwards (RPS target, vrouter's worker) and the generator's CPU.
    pub fwd_cpu: usize,
    pub gen_cpu: usize,
}

impl Topo {
    /// Creates everything but the forwarder's set-up; on error, the drop deletes what exists.
    pub fn up(root: &Path, gen_cpu: Option<usize>, fwd_cpu: Option<usize>) -> Result<Topo, LabError> {
        let (gen_cpu, fwd_cpu) = super::cpus(gen_cpu, fwd_cpu);
        super::check_cpus(gen_cpu, fwd_cpu)?;
        let ns = Namespaces::create(&["gen", "fwd", "snk"])?;
        let dir = root.join(&ns.prefix);
        std::fs::create_dir_all(&dir)
            .map_err(|err| LabError::Io { what: format!("creating {}", dir.display()), err })?;
        let t = Topo { gen: ns.name(0), fwd: ns.name(1), snk: ns.name(2), ns, dir, fwd_cpu, gen_cpu };
        t.build()?;
        Ok(t)
    }

    fn build(&self) -> Result<(), LabError> {
        let to = Duration::from_secs(10);
        let (gen, fwd, snk) = (self.gen.as_str(), self.fwd.as_str(), self.snk.as_str());
        sys::ip(&[
            "-n", gen, "link", "add", "eth0", "address", GEN_MAC, "type", "veth", "peer", "name", "up0", "netns", fwd,
        ])?;
        sys::ip(&["-n", fwd, "link", "set", "up0", "address", FWD_MAC])?;
        sys::ip(&[
            "-n", gen, "link", "add", "snk0", "link", "eth0", "address", SINK_MAC, "type", "macvlan", "mode", "bridge",
        ])?;
        sys::ip(&["-n", gen, "link", "set", "snk0", "netns", snk])?;
        sys::ip(&["-n", snk, "link", "set", "snk0", "name", "eth0"])?;
        sys::ip(&["-n", gen, "link", "set", "eth0", "up"])?;
        sys::ip(&["-n", fwd, "link", "set", "up0", "up"])?;
        sys::ip(&["-n", snk, "link", "set", "eth0", "up"])?;
        // Kernel forwarding: the generator's frames are received on the forwarding CPU. (With
        // XDP on up0 the veth uses NAPI instead; `vrouter_on` pins its thread.)
        let mask = format!("{:x}", 1u64 << self.fwd_cpu);
        sys::ns_ok(fwd, &["sh", "-c", &format!("echo {mask} > /sys/class/net/up0/queues/rx-0/rps_cpus")], to)?;
        sys::ip(&["-n", gen, "addr", "add", &format!("{GEN_IP}/24"), "dev", "eth0"])?;
        sys::ip(&["-n", gen, "addr", "add", &format!("{GEN_SRC}/32"), "dev", "eth0"])?;
        sys::ip(&["-n", gen, "neigh", "replace", FWD_IP, "lladdr", FWD_MAC, "dev", "eth0", "nud", "permanent"])?;
        sys::ip(&["-n", gen, "route", "add", SINK_BLOCK, "via", FWD_IP, "src", GEN_SRC])?;
        sys::ip(&["-n", snk, "addr", "add", &format!("{SINK_IP}/24"), "dev", "eth0"])?;
        sys::ip(&["-n", snk, "addr", "add", &format!("{SINK_DST}/32"), "dev", "eth0"])?;
        sys::ip(&["-n", snk, "neigh", "replace", FWD_IP, "lladdr", FWD_MAC, "dev", "eth0", "nud", "permanent"])?;
        sys::ip(&["-n", snk, "route", "add", GEN_BLOCK, "via", FWD_IP, "src", SINK_DST])?;
        sys::ns_ok(
            snk,
            &["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.eth0.rp_filter=0"],
            to,
        )?;
        let obj = self.compile_xdp()?;
        let obj_s = obj.to_string_lossy();
        let before = napi_threads("eth0");
        sys::ip(&["-n", gen, "link", "set", "dev", "eth0", "xdpdrv", "obj", &obj_s, "sec", "xdp"])?;
        pin_napi(gen, "eth0", &before, self.fwd_cpu).map_err(LabError::BadOption)?;
        Ok(())
    }

    fn compile_xdp(&self) -> Result<PathBuf, LabError> {
        let src = self.dir.join("sink_xdp.c");
        let obj = self.dir.join("sink_xdp.o");
        std::fs::write(&src, SINK_XDP_C)
            .map_err(|err| LabError::Io { what: format!("writing {}", src.display()), err })?;
        let mut cmd = std::process::Command::new("clang");
        cmd.args(["-O2", "-g", "-target", "bpf", "-c"]).arg(&src).arg("-o").arg(&obj);
        sys::run_ok(&mut cmd, Duration::from_secs(60), true)?;
        Ok(obj)
    }

    /// Linux forwarding on `up0`: address, routes to both blocks, static neighbours, no ICMP
    /// redirects (every frame leaves on the interface it came in on).
    pub fn kernel_on(&self) -> Result<(), LabError> {
        let fwd = self.fwd.as_str();
        let to = Duration::from_secs(10);
        sys::ns_ok(
            fwd,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.up0.send_redirects=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.up0.rp_filter=0",
            ],
            to,
        )?;
        sys::ip(&["-n", fwd, "addr", "add", &format!("{FWD_IP}/24"), "dev", "up0"])?;
        sys::ip(&["-n", fwd, "neigh", "replace", GEN_IP, "lladdr", GEN_MAC, "dev", "up0", "nud", "permanent"])?;
        sys::ip(&["-n", fwd, "neigh", "replace", SINK_IP, "lladdr", SINK_MAC, "dev", "up0", "nud", "permanent"])?;
        sys::ip(&["-n", fwd, "route", "add", SINK_BLOCK, "via", SINK_IP])?;
        sys::ip(&["-n", fwd, "route", "add", GEN_BLOCK, "via", GEN_IP])?;
        Ok(())
    }

    pub fn kernel_off(&self) -> Result<(), LabError> {
        let fwd = self.fwd.as_str();
        sys::ip(&["-n", fwd, "addr", "flush", "dev", "up0"])?;
        sys::ip(&["-n", fwd, "neigh", "flush", "dev", "up0", "nud", "permanent"])?;
        sys::ns_ok(fwd, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"], Duration::from_secs(10))?;
        Ok(())
    }

    /// The daemon's config: one uplink queue, the worker pinned to the forwarding CPU, the
    /// sink and the generator as peers (the sink encapsulated for [`Forwarder::Ipip`]).
    pub fn vrouter_config(&self, fwd: Forwarder, idle: &str) -> Result<String, String> {
        let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|e| format!("{s}: {e}"));
        let prefix = |s: &str| s.parse::<Ipv4Prefix>().map_err(|e| format!("{s}: {e}"));
        let mac = |s: &str| s.parse::<MacAddr>().map_err(|e| format!("{s}: {e}"));
        let sink_mode = if fwd == Forwarder::Ipip { IpipMode::Always } else { IpipMode::Never };
        let config = Config {
            node: NodeConfig {
                name: "fwd".into(),
                ip: ip(FWD_IP)?,
                subnet: prefix("192.168.50.0/24")?,
                pod_block: Some(prefix("10.249.0.0/26")?),
                pod_gateway: Ipv4Addr::new(169, 254, 1, 1),
                ipip_mode: IpipMode::Never,
                gateway: None,
                ipip_rpf: RpfMode::default(),
            },
            uplink: Some(UplinkConfig {
                device: "up0".into(),
                queues: 1,
                xdp_mode: XdpMode::Native,
                bind: Default::default(),
                mtu: 1500,
                tx_queue: crate::port::afxdp::DEFAULT_TX_QUEUE,
            }),
            host: None,
            workers: WorkersConfig {
                idle: crate::lab::topo::config_enum(idle)?,
                cores: vec![self.fwd_cpu],
                ..Default::default()
            },
            pod_blocks: vec![],
            peers: vec![
                PeerConfig {
                    name: "sink".into(),
                    ip: ip(SINK_IP)?,
                    pod_blocks: vec![prefix(SINK_BLOCK)?],
                    ipip_mode: Some(sink_mode),
                },
                PeerConfig {
                    name: "gen".into(),
                    ip: ip(GEN_IP)?,
                    pod_blocks: vec![prefix(GEN_BLOCK)?],
                    ipip_mode: None,
                },
            ],
            endpoints: vec![],
            routes: vec![],
            neighbours: vec![
                NeighbourConfig { ip: ip(SINK_IP)?, mac: mac(SINK_MAC)? },
                NeighbourConfig { ip: ip(GEN_IP)?, mac: mac(GEN_MAC)? },
            ],
            global_rules: vec![],
            policies: Default::default(),
            control: ControlConfig { socket: String::new(), group: None },
            metrics: None,
            kernel_routes: None,
            conntrack: Default::default(),
            neigh: Default::default(),
        };
        toml::to_string(&config).map_err(|e| e.to_string())
    }

    /// Starts `vrouter run` in the forwarder namespace and waits until it answers a ping to
    /// its node IP from the generator (from the generator's routed address: vrouter has no
    /// connected route for its subnet, only the peers' blocks).
    pub fn vrouter_on(&self, bin: &Path, fwd: Forwarder, idle: &str) -> Result<Daemon, LabError> {
        let name = fwd.name();
        let config = self.dir.join(format!("{name}.toml"));
        let invalid =
            |e: String| LabError::BadOption(format!("generated vrouter config is invalid (a bench bug): {e}"));
        let text = self.vrouter_config(fwd, idle).map_err(invalid)?;
        Config::parse(&text, &config).map_err(|e| invalid(e.to_string()))?;
        std::fs::write(&config, text)
            .map_err(|err| LabError::Io { what: format!("writing {}", config.display()), err })?;
        let stats = self.dir.join(format!("{name}.stats.json"));
        let _ = std::fs::remove_file(&stats);
        let log = self.dir.join(format!("{name}.log"));
        let napi_before = napi_threads("up0");
        let child = sys::spawn_in(
            &self.fwd,
            &[
                &bin.to_string_lossy(),
                "run",
                "--config",
                &config.to_string_lossy(),
                "--stats",
                &stats.to_string_lossy(),
            ],
            Some(&log),
        )?;
        let mut d = Daemon { child, stats, log };
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(LabError::ForwarderNotReady {
                    what: format!("vrouter exited ({st})"),
                    tail: sys::tail(&d.log, 15),
                });
            }
            let ping = sys::ns_status(
                &self.gen,
                &["ping", "-c", "1", "-W", "1", "-I", GEN_SRC, FWD_IP],
                Duration::from_secs(3),
            )?;
            if ping.success() && d.stats.exists() {
                pin_napi(&self.fwd, "up0", &napi_before, self.fwd_cpu)
                    .map_err(|what| LabError::ForwarderNotReady { what, tail: sys::tail(&d.log, 5) })?;
                return Ok(d);
            }
            if start.elapsed() > Duration::from_secs(20) {
                d.stop();
                return Err(LabError::ForwarderNotReady {
                    what: "vrouter does not answer ping to its node IP after 20 s".into(),
                    tail: sys::tail(&d.log, 15),
                });
            }
            sys::sleep(Duration::from_millis(100))?;
        }
    }

    /// Back to the kernel's receive path on `up0` (backlog and RPS) after a vrouter run.
    /// Without XDP the veth has no NAPI left and the write fails with EIO: nothing to undo.
    pub fn vrouter_off(&self) -> Result<(), LabError> {
        let _ = sys::ns_ok(&self.fwd, &["sh", "-c", "echo 0 > /sys/class/net/up0/threaded"], Duration::from_secs(5));
        Ok(())
    }

    /// Deletes the namespaces now, reporting failures.
    pub fn down(self) -> Result<(), LabError> {
        self.ns.down()
    }
}

/// With XDP attached, a veth receives through NAPI, which runs wherever it was first scheduled
/// and stays there while busy (the generator's CPU, or the forwarder's: runs came out bimodal).
/// Threaded NAPI moves that work (the XDP program, for vrouter the copy into UMEM) into a
/// kernel thread, pinned here to `cpu`; `before` are the NAPI threads that existed before.
pub(crate) fn pin_napi(ns: &str, dev: &str, before: &[u32], cpu: usize) -> Result<(), String> {
    let to = Duration::from_secs(5);
    sys::ns_ok(ns, &["sh", "-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")], to)
        .map_err(|e| format!("enabling threaded NAPI on {dev}: {e}"))?;
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let new: Vec<u32> = napi_threads(dev).into_iter().filter(|p| !before.contains(p)).collect();
        if !new.is_empty() {
            for pid in new {
                let mut cmd = std::process::Command::new("taskset");
                cmd.args(["-pc", &cpu.to_string(), &pid.to_string()]);
                sys::run_ok(&mut cmd, to, true).map_err(|e| format!("pinning NAPI thread {pid}: {e}"))?;
            }
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("no NAPI thread for {dev} appeared after enabling threaded NAPI"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kernel threads named `napi/<dev>-<id>` (threaded NAPI), by pid.
pub(crate) fn napi_threads(dev: &str) -> Vec<u32> {
    let want = format!("napi/{dev}-");
    let Ok(rd) = std::fs::read_dir("/proc") else { return vec![] };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with(&want)))
        .collect()
}

/// A running vrouter; stopped (SIGTERM: workers joined, XDP detached) on drop.
pub(crate) struct Daemon {
    pub child: Child,
    pub stats: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            sys::stop(&mut self.child, Duration::from_secs(5));
        }
    }

    /// The daemon's drop counters by reason, from its stats file (written every 200 ms).
    pub fn drops_by_reason(&self) -> BTreeMap<String, u64> {
        for _ in 0..5 {
            if let Ok(text) = std::fs::read_to_string(&self.stats) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    let drops = v["drops"].as_object().into_iter().flatten();
                    return drops.filter_map(|(k, x)| Some((k.clone(), x.as_u64()?))).collect();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        BTreeMap::new()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_vrouter_configs_pass_validation() {
        let t = Topo {
            // Nothing created, nothing to delete.
            ns: Namespaces { prefix: "vrpf0000".into(), names: vec![], done: true },
            dir: "/nonexistent".into(),
            gen: "g".into(),
            fwd: "f".into(),
            snk: "s".into(),
            fwd_cpu: 1,
            gen_cpu: 0,
        };
        for (fwd, sink_mode) in [(Forwarder::Vrouter, IpipMode::Never), (Forwarder::Ipip, IpipMode::Always)] {
            let text = t.vrouter_config(fwd, "poll").unwrap();
            let cfg = Config::parse(&text, Path::new("gen.toml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert_eq!(cfg.peers[0].ipip_mode, Some(sink_mode));
            assert_eq!((cfg.workers.cores.as_slice(), cfg.neighbours.len()), (&[1usize][..], 2));
            assert_eq!(cfg.uplink.map(|u| u.xdp_mode), Some(XdpMode::Native));
        }
        assert!(t.vrouter_config(Forwarder::Vrouter, "turbo").is_err());
    }
}
