//! The `vrouter` command: thin; all logic lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vrouter", version, about = "Userspace IPv4 forwarding engine for Kubernetes nodes")]
struct Cli {
    /// Log level: off, error, warn, info, debug or trace, optionally with per-target levels
    /// (`info,libxdp=debug`). The VROUTER_LOG environment variable (same syntax) overrides it.
    /// libbpf's and libxdp's messages are logged under the targets `libbpf` and `libxdp`.
    #[arg(long, global = true, default_value = "info", value_parser = parse_log_filter)]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node's vRouter: `vrouter run --config FILE`. Stops cleanly on SIGINT/SIGTERM.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Rewrite the counters (JSON) to this file about every 200 ms.
        #[arg(long)]
        stats: Option<PathBuf>,
    },
    /// Talk to a running daemon (the same as the `vrouterctl` command).
    Ctl(vrouterctl::CtlArgs),
    /// Validate a config file without running anything: `vrouter check-config node.toml`.
    #[command(
        after_help = "Examples:\n  vrouter check-config node.toml\n  ip netns exec node1 vrouter check-config --env node.toml"
    )]
    CheckConfig {
        file: PathBuf,
        /// Also check this machine (run it where the daemon will run, in its network
        /// namespace): the uplink exists and is up, no device already has a TAP's name, pod
        /// namespaces and the control group exist, /dev/net/tun is there, running as root.
        #[arg(long)]
        env: bool,
    },
    /// The namespace lab (root): three vrouter nodes, six pods, an underlay router.
    Lab {
        #[command(subcommand)]
        cmd: vrouter::lab::LabCommand,
    },
    /// Run one frame of each kind through an in-memory node (no root needed) and show what
    /// happened. The namespace lab is `vrouter lab demo`.
    Demo,
    /// Benchmarks that print one JSON object of figures.
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// FIB lookups and updates on a full Internet table vs the prefix-trie crate.
    Fib {
        /// Route table (a.b.c.d/len per line, optionally .gz). Default: ../shared/data/ipv4-full-table.txt.gz
        /// when present, else a synthetic table with the same prefix-length distribution.
        #[arg(long)]
        table: Option<PathBuf>,
        /// Seconds per measured phase.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// The whole pipeline on one core: plain forwarding, IPIP encap with a 1,000-rule policy,
    /// decapsulation; 64-byte frames in batches of 64 over the full table.
    Pipeline {
        #[arg(long)]
        table: Option<PathBuf>,
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
    /// End to end (root): the same UDP traffic through Linux forwarding, vrouter on AF_XDP
    /// and vrouter with IPIP, in namespaces it builds and deletes (trafgen 64/512/1500-byte
    /// frames); then TCP pod to pod (iperf3, 1 and 8 streams; same node, two nodes, IPIP) in
    /// the namespace lab, vrouter's against `lab --kernel`, offloads on and off. Rounds repeat
    /// until each ratio's medians hold still. A table on stdout, progress on stderr.
    E2e {
        /// Measured seconds per UDP run.
        #[arg(long)]
        duration: Option<f64>,
        /// Rounds of the alternating sequence at least (medians with min and max over them).
        #[arg(long)]
        reps: Option<u32>,
        /// Rounds at most: a ratio whose median after a round differs from the one before by
        /// more than --tolerance gets another round, up to this many.
        #[arg(long)]
        max_reps: Option<u32>,
        /// How close two consecutive medians of a ratio must be (0.1: within 10 %).
        #[arg(long)]
        tolerance: Option<f64>,
        /// About two minutes: 2 rounds of 1-second runs.
        #[arg(long)]
        quick: bool,
        /// Print JSON (flat figures `ratio_64`, `tcp1_local_ratio`, ..., each ratio's spread
        /// and verdict, every run) on stdout; the table goes to stderr.
        #[arg(long)]
        json: bool,
        /// Also write an SVG plot of throughput by frame size.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Skip the iperf3 TCP runs.
        #[arg(long)]
        no_tcp: bool,
        /// Skip the UDP runs (and the latency runs, which take their load from them).
        #[arg(long)]
        no_udp: bool,
        /// Skip the ping latency runs under load.
        #[arg(long)]
        no_latency: bool,
        /// Frame sizes with FCS, comma-separated.
        #[arg(long, value_delimiter = ',')]
        sizes: Option<Vec<u32>>,
        /// Measured seconds per iperf3 run (whole seconds; default 3).
        #[arg(long)]
        tcp_duration: Option<f64>,
        /// The pods' offloads in the TCP runs: on (as they come), off, or both (two tables).
        #[arg(long, default_value = "both")]
        tcp_offloads: String,
        /// vrouter's worker idle mode in the UDP hairpin: poll, adaptive or interrupt.
        #[arg(long)]
        idle: Option<String>,
        /// The idle mode of the TCP lab's three daemons (default adaptive, as `vrouter lab`).
        #[arg(long)]
        lab_idle: Option<String>,
        /// The TCP labs' underlay MTU (both labs, as `vrouter lab up --mtu`; default 1500).
        #[arg(long)]
        lab_mtu: Option<u16>,
        /// Leave iperf3's client and server to the scheduler (default: client on the
        /// generator's CPU, server on the forwarding CPU, which makes runs repeat closer).
        #[arg(long)]
        tcp_unpinned: bool,
        /// Core for the generator and the iperf3 client (default 0).
        #[arg(long)]
        gen_cpu: Option<usize>,
        /// Core for the forwarder: kernel forwarding via RPS, or vrouter's worker and NAPI
        /// thread; and for the iperf3 server (default: the last core).
        #[arg(long)]
        fwd_cpu: Option<usize>,
    },
    /// The uplink's ceiling (root): full-size frames from one AF_XDP socket into another
    /// across a veth pair, bound as vrouter binds its uplink, beside one iperf3 TCP stream
    /// through the kernel over the same veth. Frames/s as TCP goodput over the kernel's figure
    /// bounds what any forwarder on AF_XDP can reach across nodes here (`bench e2e`'s
    /// `tcp1_remote_ratio`).
    Uplink {
        /// Underlay MTUs, comma-separated (as `lab --mtu`).
        #[arg(long, value_delimiter = ',', default_values_t = [1500u16, 9000])]
        mtus: Vec<u16>,
        /// Measured seconds per run (iperf3 rounds it to whole seconds).
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Rounds (kernel, then AF_XDP, at each MTU); medians with min and max over them.
        #[arg(long, default_value_t = 3)]
        reps: u32,
        /// Print JSON on stdout; the table goes to stderr.
        #[arg(long)]
        json: bool,
        /// Core for the sender and the iperf3 client (default 0).
        #[arg(long)]
        gen_cpu: Option<usize>,
        /// Core for the receiver, the receiving veth's NAPI thread and the iperf3 server
        /// (default: the last core).
        #[arg(long)]
        fwd_cpu: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match std::env::var("VROUTER_LOG") {
        Ok(v) => match parse_log_filter(&v) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("vrouter: VROUTER_LOG: {e}");
                return ExitCode::FAILURE;
            }
        },
        Err(_) => cli.log_level.clone(),
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::new(level);
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
    vrouter::port::xdp::route_library_logs();
    let result: Result<String, String> = match cli.cmd {
        Cmd::Run { config, stats } => {
            vrouter::control::daemon::run(&config, stats).map(|()| String::new()).map_err(|e| e.to_string())
        }
        Cmd::CheckConfig { file, env } => {
            vrouter::control::config::Config::load(&file).map_err(|e| e.to_string()).and_then(|c| {
                let valid = format!(
                    "{}: valid (node {}, {} endpoints, {} peers, {} routes)",
                    file.display(),
                    c.node.name,
                    c.endpoints.len(),
                    c.peers.len(),
                    c.routes.len()
                );
                let problems = if env { c.check_env() } else { vec![] };
                match problems.is_empty() {
                    true if env => Ok(format!("{valid}\nthis machine has what it needs")),
                    true => Ok(valid),
                    false => Err(format!("{valid}, but this machine is not ready:\n  {}", problems.join("\n  "))),
                }
            })
        }
        Cmd::Demo => in_memory::demo(),
        Cmd::Lab { cmd } => vrouter::lab::run_cli(cmd),
        Cmd::Bench { what } => bench(what),
        Cmd::Ctl(args) => return vrouterctl::run(args),
    };
    match result {
        Ok(s) => {
            if !s.is_empty() {
                println!("{s}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("vrouter: {e}");
            ExitCode::FAILURE
        }
    }
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// A log filter that means what it says: a level, or comma-separated `LEVEL` and
/// `TARGET=LEVEL` directives. tracing's own parser takes any other word as a target name
/// (`warning` would enable only a target called "warning", silencing every log), so the
/// levels are checked here.
fn parse_log_filter(s: &str) -> Result<String, String> {
    let valid = || {
        format!("use one of {}, optionally with per-target levels (`info,vrouter::port=debug`)", LOG_LEVELS.join(", "))
    };
    let level_ok = |l: &str| LOG_LEVELS.iter().any(|v| v.eq_ignore_ascii_case(l));
    let target_ok = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if s.trim().is_empty() {
        return Err(format!("empty log level: {}", valid()));
    }
    for d in s.split(',').map(str::trim) {
        let ok = match d.split_once('=') {
            Some((target, level)) => target_ok(target) && level_ok(level),
            None => level_ok(d),
        };
        if !ok {
            return Err(format!("invalid log level `{d}`: {}", valid()));
        }
    }
    Ok(s.to_string())
}

fn check_seconds(s: f64) -> Result<f64, String> {
    if s.is_finite() && (0.01..=600.0).contains(&s) {
        Ok(s)
    } else {
        Err(format!("--seconds {s}: must be between 0.01 and 600"))
    }
}

fn bench(what: BenchCmd) -> Result<String, String> {
    match what {
        BenchCmd::Fib { table, seconds } => in_memory::bench_fib(table, check_seconds(seconds)?),
        BenchCmd::Pipeline { table, seconds } => in_memory::bench_pipeline(table, check_seconds(seconds)?),
        BenchCmd::E2e {
            duration,
            reps,
            max_reps,
            tolerance,
            quick,
            json,
            svg,
            no_tcp,
            no_udp,
            no_latency,
            sizes,
            tcp_duration,
            tcp_offloads,
            idle,
            lab_idle,
            lab_mtu,
            tcp_unpinned,
            gen_cpu,
            fwd_cpu,
        } => {
            use vrouter::perf::Offloads;
            let mut o = if quick { vrouter::perf::E2eOptions::quick() } else { vrouter::perf::E2eOptions::default() };
            if let Some(d) = duration {
                o.duration = d;
            }
            if let Some(n) = reps {
                o.reps = n;
                // Asking for more rounds than the default maximum raises the maximum with it.
                o.max_reps = o.max_reps.max(n);
            }
            if let Some(n) = max_reps {
                o.max_reps = n;
            }
            if let Some(t) = tolerance {
                o.tolerance = t;
            }
            o.tcp = !no_tcp;
            o.udp = !no_udp;
            o.latency = !no_latency && !no_udp;
            if let Some(z) = sizes {
                o.sizes = z;
            }
            if let Some(d) = tcp_duration {
                o.tcp_duration = d;
            }
            o.tcp_offloads = match tcp_offloads.as_str() {
                "both" => vec![Offloads::On, Offloads::Off],
                "on" => vec![Offloads::On],
                "off" => vec![Offloads::Off],
                other => return Err(format!("--tcp-offloads {other}: use on, off or both")),
            };
            (o.gen_cpu, o.fwd_cpu) = (gen_cpu, fwd_cpu);
            if let Some(i) = idle {
                o.idle = i;
            }
            if let Some(i) = lab_idle {
                o.lab_idle = i;
            }
            if let Some(m) = lab_mtu {
                o.lab_mtu = m;
            }
            o.tcp_pin = !tcp_unpinned;
            let r = vrouter::perf::run(&o, &mut |line| eprintln!("{line}")).map_err(|e| e.to_string())?;
            if let Some(p) = svg {
                std::fs::write(&p, vrouter::perf::svg(&r)).map_err(|e| format!("writing {}: {e}", p.display()))?;
            }
            if json {
                // The table still goes to stderr, so one run gives both.
                eprint!("{}", vrouter::perf::table(&r));
                serde_json::to_string_pretty(&r.to_json()).map_err(|e| e.to_string())
            } else {
                Ok(vrouter::perf::table(&r))
            }
        }
        BenchCmd::Uplink { mtus, seconds, reps, json, gen_cpu, fwd_cpu } => {
            use vrouter::perf::uplink;
            let o = uplink::UplinkOptions { mtus, seconds, reps, gen_cpu, fwd_cpu, ..Default::default() };
            let r = uplink::run(&o, &mut |line| eprintln!("{line}")).map_err(|e| e.to_string())?;
            if json {
                eprintln!("{}", uplink::table(&r, &o));
                serde_json::to_string_pretty(&r).map_err(|e| e.to_string())
            } else {
                Ok(uplink::table(&r, &o))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_log_filter;

    #[test]
    fn log_filter_takes_levels_and_target_levels() {
        for ok in ["info", "WARN", "off", "trace", "info,libxdp=debug", "vrouter::port=debug,warn"] {
            assert_eq!(parse_log_filter(ok).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn log_filter_refuses_words_that_are_not_levels() {
        for bad in ["warning", "bogus", "", "info,", "=debug", "vrouter=loud", "info,[span]=debug"] {
            let e = parse_log_filter(bad).unwrap_err();
            assert!(e.contains("error, warn, info, debug, trace"), "{bad}: {e}");
        }
    }
}

/// The commands that run the in-memory node and benchmarks of `vrouter-core`'s `testing`
/// feature (prefix-trie, flate2): in a build with `--features testing` only, so the daemon a
/// node runs does not link them.
#[cfg(feature = "testing")]
mod in_memory {
    use std::path::PathBuf;

    pub fn demo() -> Result<String, String> {
        Ok(vrouter_core::dataplane::sim::demo())
    }

    pub fn bench_fib(table: Option<PathBuf>, seconds: f64) -> Result<String, String> {
        let table = table.or_else(vrouter_core::fib::table::default_table_path);
        let r = vrouter_core::fib::bench::run_fib_bench(table.as_deref(), seconds).map_err(|e| e.to_string())?;
        serde_json::to_string_pretty(&r).map_err(|e| e.to_string())
    }

    pub fn bench_pipeline(table: Option<PathBuf>, seconds: f64) -> Result<String, String> {
        let r =
            vrouter_core::dataplane::bench::run_pipeline_bench(table.as_deref(), seconds).map_err(|e| e.to_string())?;
        // The encap + policy scenario on one worker and on two with handoff, side by side.
        let (prefixes, _) =
            vrouter_core::dataplane::bench::load_prefixes(table.as_deref()).map_err(|e| e.to_string())?;
        let scaling = vrouter::perf::scaling::run(&prefixes, seconds / 10.0, 5);
        let mut v = serde_json::to_value(&r).map_err(|e| e.to_string())?;
        v["encap_acl_workers"] = serde_json::to_value(&scaling).map_err(|e| e.to_string())?;
        serde_json::to_string_pretty(&v).map_err(|e| e.to_string())
    }
}

#[cfg(not(feature = "testing"))]
mod in_memory {
    use std::path::PathBuf;

    const WHY: &str = "this vrouter was built without the in-memory node and benchmarks; \
        build it with `cargo build --release --features testing`";

    pub fn demo() -> Result<String, String> {
        Err(WHY.into())
    }

    pub fn bench_fib(_: Option<PathBuf>, _: f64) -> Result<String, String> {
        Err(WHY.into())
    }

    pub fn bench_pipeline(_: Option<PathBuf>, _: f64) -> Result<String, String> {
        Err(WHY.into())
    }
}
