//! `vrouter lab up|down|status|demo`: the subcommands, so that `main.rs` only forwards to
//! [`run_cli`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::{Backend, LabOptions};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a lab and start its daemons; print its prefix and leave it running.
    Up {
        #[command(flatten)]
        opts: LabArgs,
    },
    /// Stop a lab's daemons and delete its namespaces.
    Down {
        /// The lab's prefix; default: the only lab there is.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Namespaces, daemons and key counters of a lab.
    Status {
        /// The lab's prefix; default: the only lab there is.
        #[arg(long)]
        prefix: Option<String>,
    },
    /// Up, ping every pod pair and move TCP between them (iperf3), print a table, down.
    /// Exits non-zero if any pair failed.
    Demo {
        #[command(flatten)]
        opts: LabArgs,
    },
    /// Benchmark: bring up a cluster lab with BGP (`--nodes N`, `--route-reflectors K`), and
    /// time how long a new pod block and a node's BIRD dying take to reach every other node's
    /// FIB (p50, max), with CPU and memory per node; then tear down.
    BenchBgp {
        #[command(flatten)]
        opts: LabArgs,
        /// Rounds of each event (a new block, a node's BIRD killed), on the clients in turn.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Append the result (one JSON line) to this file.
        #[arg(long)]
        append: Option<PathBuf>,
        /// Then plot every result in the --append file as SVG into this file.
        #[arg(long, requires = "append")]
        svg: Option<PathBuf>,
    },
    /// Benchmark: bring up a cluster lab, change a policy selecting every pod N times, and
    /// print how long each change took from `vrouterctl apply` to every node's data plane
    /// (p50, p99, max), then tear down.
    BenchPolicy {
        #[command(flatten)]
        opts: LabArgs,
        /// Policy changes to time.
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
}

#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// Namespace prefix (default: vrl + 4 random hex digits).
    #[arg(long)]
    prefix: Option<String>,
    /// Linux forwarding instead of vrouter (a baseline; no IPIP).
    #[arg(long)]
    kernel: bool,
    /// Workers' idle mode in the daemons: poll, adaptive or interrupt.
    #[arg(long, default_value = "adaptive")]
    idle: String,
    /// The vrouter binary for the nodes (default: this one).
    #[arg(long)]
    vrouter: Option<PathBuf>,
    /// Each node's file lists its peers, pods and policies (10.244.N.2, .3), no etcd, no agent,
    /// no CNI. Without it the lab is a cluster: etcd, an agent per node, pods added through
    /// the CNI plugin with addresses from IPAM (needs etcd, and vrouterctl, vrouter-agent and
    /// vrouter-cni beside the vrouter binary).
    #[arg(long = "static")]
    static_files: bool,
    /// etcd members in a cluster lab (3: one may fail without effect).
    #[arg(long, default_value_t = 1)]
    etcd_members: usize,
    /// Nodes in the lab (3 to 200): further nodes go round four underlay subnets, one pod each.
    #[arg(long, default_value_t = super::topo::DEFAULT_NODES)]
    nodes: usize,
    /// Route reflectors (nodes 1..=K, cluster ID 244.0.0.1) instead of the node-to-node BGP mesh.
    #[arg(long, default_value_t = 0)]
    route_reflectors: usize,
    /// In a cluster lab, the agents program routes between nodes from the datastore instead of
    /// BIRD learning them over BGP.
    #[arg(long)]
    no_bgp: bool,
    /// Seconds the daemons get to come up.
    #[arg(long, default_value_t = 20)]
    ready_timeout: u64,
    /// The underlay's MTU (the nodes' uplinks, the router, `[uplink] mtu`): up to 3506 (a
    /// frame in one page, as veth's native XDP takes it under libxdp's program) or 3827 to
    /// 9000 (multi-buffer AF_XDP); pods get 20 bytes less, room for IPIP.
    #[arg(long, default_value_t = super::topo::DEFAULT_MTU)]
    mtu: u16,
}

impl LabArgs {
    fn options(self) -> LabOptions {
        LabOptions {
            prefix: self.prefix,
            backend: if self.kernel { Backend::Kernel } else { Backend::Vrouter },
            idle: self.idle,
            vrouter: self.vrouter,
            ready_timeout: Duration::from_secs(self.ready_timeout),
            cluster: !self.static_files && !self.kernel,
            etcd_members: self.etcd_members,
            nodes: self.nodes,
            route_reflectors: self.route_reflectors,
            bgp: !self.no_bgp,
            mtu: self.mtu,
            ..LabOptions::default()
        }
    }
}

/// Runs a lab subcommand; the text to print on success, or the message to print on failure.
pub fn run_cli(cmd: LabCommand) -> Result<String, String> {
    match cmd {
        LabCommand::Up { opts } => {
            let mut lab = super::up(&opts.options()).map_err(|e| e.to_string())?;
            lab.keep();
            let etcd = match lab.state().cluster {
                true => format!(
                    "; the cluster: `ip netns exec {p}-rt vrouterctl --etcd-endpoints {e} get wep -A`",
                    p = lab.prefix(),
                    e = super::cluster::etcd_endpoints(&lab)
                ),
                false => String::new(),
            };
            Ok(format!(
                "{p}\nlab {p} is up (files in {d}); try `ip netns exec {p}-p1a ping {ip}` (pod 3a){etcd}; `vrouter lab down --prefix {p}` removes it",
                p = lab.prefix(),
                d = lab.dir().display(),
                ip = lab.pod_ip("3a"),
            ))
        }
        LabCommand::Down { prefix } => {
            super::down(prefix.as_deref()).map(|()| String::new()).map_err(|e| e.to_string())
        }
        LabCommand::Status { prefix } => super::status(prefix.as_deref()).map_err(|e| e.to_string()),
        LabCommand::BenchPolicy { opts, changes } => {
            let mut o = opts.options();
            o.cluster = true;
            let bin = o.vrouter.clone().map_or_else(std::env::current_exe, Ok).map_err(|e| e.to_string())?;
            let tools = super::cluster::Tools::beside(&bin).map_err(|e| e.to_string())?;
            let lab = super::up(&o).map_err(|e| e.to_string())?;
            let mut t = super::cluster::policy_propagation(&lab, &tools, changes.max(1)).map_err(|e| e.to_string())?;
            t.sort();
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
            let q = |f: f64| t[((t.len() - 1) as f64 * f).round() as usize];
            Ok(format!(
                "policy propagation over {} changes, 3 nodes (apply to every node's data plane): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms",
                t.len(),
                ms(q(0.5)),
                ms(q(0.9)),
                ms(q(0.99)),
                ms(t[t.len() - 1]),
                ms(t[0])
            ))
        }
        LabCommand::BenchBgp { opts, rounds, append, svg } => {
            let mut o = opts.options();
            if !o.cluster || !o.bgp {
                return Err("bench-bgp measures a cluster lab with BGP (not --static, --kernel or --no-bgp)".into());
            }
            o.ready_timeout = o.ready_timeout.max(Duration::from_secs(20 + 4 * o.nodes as u64));
            let bin = o.vrouter.clone().map_or_else(std::env::current_exe, Ok).map_err(|e| e.to_string())?;
            let tools = super::cluster::Tools::beside(&bin).map_err(|e| e.to_string())?;
            let lab = super::up(&o).map_err(|e| e.to_string())?;
            let r = super::bgp::convergence(&lab, &tools, rounds.max(1)).map_err(|e| e.to_string())?;
            drop(lab);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            let (nb, nd) = (super::bgp::p50_max(&r.new_block), super::bgp::p50_max(&r.node_death));
            let mut text = format!(
                "BGP convergence, {} ({} rounds), until every other node's FIB has it:\n  new pod block: p50 {:.0} ms, max {:.0} ms\n  node's BIRD killed: p50 {:.0} ms, max {:.0} ms\nper node over the run (mean / max):\n",
                r.shape(),
                r.new_block.len(),
                ms(nb.0),
                ms(nb.1),
                ms(nd.0),
                ms(nd.1)
            );
            for u in &r.usage {
                text += &format!(
                    "  {:8} CPU {:5.1} / {:5.1} % of a core, RSS {:6.1} / {:6.1} MiB\n",
                    u.process, u.cpu_pct_mean, u.cpu_pct_max, u.rss_mib_mean, u.rss_mib_max
                );
            }
            if let Some(path) = &append {
                use std::io::Write;
                let line = serde_json::to_string(&r).map_err(|e| e.to_string())?;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .and_then(|mut f| writeln!(f, "{line}"))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if let Some(out) = &svg {
                    let all = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                    let results = all
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .map(serde_json::from_str)
                        .collect::<Result<Vec<super::bgp::Convergence>, _>>()
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    std::fs::write(out, super::bgp::svg(&results)).map_err(|e| format!("{}: {e}", out.display()))?;
                    text += &format!("plot of {} results: {}\n", results.len(), out.display());
                }
            }
            Ok(text)
        }
        LabCommand::Demo { opts } => {
            let report = super::demo(&opts.options()).map_err(|e| e.to_string())?;
            if report.ok() {
                Ok(report.to_string())
            } else {
                Err(report.to_string())
            }
        }
    }
}
