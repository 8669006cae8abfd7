//! `vrouterctl` (also `vrouter ctl`): the operator's client for the control socket. Readable
//! tables by default, `--json` for scripts (the daemon's reply, as is). Exit status: 0 done,
//! 1 the daemon refused (the error says why), 2 bad arguments or no daemon to talk to.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

use crate::control::api::{Envelope, Reply, Request, VERSION};
use crate::control::build::{NhKey, RouteSource};
use crate::control::config::{EndpointConfig, PeerConfig, DEFAULT_SOCKET};
use crate::dataplane::IpipMode;
use crate::fib::Ipv4Prefix;
use crate::wire::MacAddr;

#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, short = 's', env = "VROUTER_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print the daemon's JSON reply instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
pub enum CtlCmd {
    /// Node, uptime, workers, routes, generation.
    Status,
    /// The routing table: the winning route per prefix, its source, what it shadows.
    Routes {
        #[arg(long, value_enum)]
        source: Option<Source>,
        /// Only routes inside this prefix.
        within: Option<Ipv4Prefix>,
    },
    /// Add or delete a route (source `cli`).
    Route {
        #[command(subcommand)]
        cmd: RouteCmd,
    },
    Peers,
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// Pods.
    Endpoints,
    Endpoint {
        #[command(subcommand)]
        cmd: EndpointCmd,
    },
    Policies,
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Ports with their counters.
    Ports,
    /// The ARP cache; `neighbours flush [IP]` removes learnt entries (all, or IP's).
    #[command(alias = "neigh")]
    Neighbours {
        #[command(subcommand)]
        cmd: Option<NeighCmd>,
    },
    /// Tracked connections (all workers).
    #[command(alias = "conns")]
    Connections {
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Counters and drops by reason, per worker and in total.
    Counters,
    /// Drops by reason (non-zero ones; --all for every reason).
    Drops {
        #[arg(long)]
        all: bool,
    },
    /// Make the node match a config file (only what differs changes).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-read the daemon's own config file (as SIGHUP does).
    Reload,
    /// What each pipeline stage decided for the next N packets.
    Trace {
        #[arg(long, short = 'c', default_value_t = 10)]
        count: u32,
        /// Only packets received on this port (name as `ports` shows it).
        #[arg(long, short = 'p')]
        port: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
    /// Write frames of a port to a pcap file (tcpdump and Wireshark read it).
    Capture {
        #[arg(long, short = 'p')]
        port: Option<String>,
        #[arg(long, short = 'c', default_value_t = 100)]
        count: u32,
        #[arg(short = 'w')]
        write: PathBuf,
        /// Before processing (rx), after (tx), or both.
        #[arg(long, value_enum, default_value_t = Point::Both)]
        point: Point,
        #[arg(long, default_value_t = 2048)]
        snaplen: u32,
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
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
pub enum RouteCmd {
    /// `route add PREFIX via GW [via GW2 ...]` (several: ECMP) | blackhole | unreachable | host
    Add {
        prefix: Ipv4Prefix,
        #[arg(num_args = 1.., required = true)]
        nexthop: Vec<String>,
    },
    Del {
        prefix: Ipv4Prefix,
    },
    /// Withdraw every route imported from the kernel.
    FlushKernel,
}

#[derive(Subcommand, Debug)]
pub enum NeighCmd {
    /// Forget learnt neighbours (static ones stay); they are resolved again on next use.
    /// Example: `vrouterctl neighbours flush 192.168.1.1`
    Flush {
        /// Only this address (default: every learnt entry).
        ip: Option<Ipv4Addr>,
    },
}

#[derive(Subcommand, Debug)]
pub enum PeerCmd {
    Add {
        name: String,
        ip: Ipv4Addr,
        #[arg(long = "pod-block")]
        pod_blocks: Vec<Ipv4Prefix>,
        #[arg(long, value_parser = parse_mode)]
        ipip_mode: Option<IpipMode>,
    },
    Del {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum EndpointCmd {
    Add {
        name: String,
        #[arg(long)]
        tap: String,
        #[arg(long)]
        mac: MacAddr,
        #[arg(long = "addr", required = true)]
        addrs: Vec<Ipv4Addr>,
        #[arg(long)]
        netns: Option<String>,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        #[arg(long, default_value_t = 1480)]
        mtu: u16,
        #[arg(long)]
        ingress: Vec<String>,
        #[arg(long)]
        egress: Vec<String>,
    },
    Del {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Define or replace a policy from a TOML file with `rules = [ {...}, ... ]`.
    Set {
        name: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    Del {
        name: String,
    },
    /// Replace the global rules from a TOML file with `rules = [...]`.
    SetGlobal {
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
        ["host"] => Ok(NhKey::Host),
        _ if w.len() >= 2 && w.len() % 2 == 0 => {
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
            "'{}': give 'via GATEWAY' (repeat for ECMP), 'blackhole', 'unreachable' or 'host'",
            words.join(" ")
        )),
    }
}

fn read_rules(file: &Path) -> Result<Vec<crate::acl::Rule>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        rules: Vec<crate::acl::Rule>,
    }
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let r: Rules = toml::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(r.rules)
}

/// One request, one reply.
pub fn call(socket: &Path, req: Request, timeout: Duration) -> Result<Reply, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e} (is `vrouter run` running? --socket / VROUTER_SOCKET)",
            socket.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(timeout));
    let mut line = serde_json::to_vec(&Envelope { version: VERSION, request: req }).map_err(|e| e.to_string())?;
    line.push(b'\n');
    s.write_all(&line).map_err(|e| format!("sending: {e}"))?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(|e| format!("reading the reply: {e}"))?;
    serde_json::from_str(&reply).map_err(|e| format!("bad reply from the daemon ({e}): {}", reply.trim()))
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
        CtlCmd::Routes { source, within } => Request::Routes {
            source: source.map(|s| match s {
                Source::Node => RouteSource::Node,
                Source::Config => RouteSource::Config,
                Source::Cli => RouteSource::Cli,
                Source::Kernel => RouteSource::Kernel,
            }),
            within: *within,
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
        CtlCmd::Counters | CtlCmd::Drops { .. } => Request::Counters,
        CtlCmd::Apply { file, dry_run } => {
            let config = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            // Check it here first: the error then names the operator's file.
            crate::control::config::Config::parse(&config, file).map_err(|e| e.to_string())?;
            Request::Apply { config, dry_run: *dry_run }
        }
        CtlCmd::Reload => Request::Reload,
        CtlCmd::Trace { count, port, timeout } => {
            let ms = (timeout.max(0.0) * 1000.0) as u64;
            wait = Duration::from_millis(ms + 30_000);
            Request::Trace { count: *count, port: port.clone(), timeout_ms: ms }
        }
        CtlCmd::Capture { port, count, point, snaplen, timeout, write } => {
            // Fail before capturing if the file cannot be written.
            std::fs::File::create(write).map_err(|e| format!("{}: {e}", write.display()))?;
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
        let n = write_pcap(write, &v)?;
        if args.json {
            println!("{}", serde_json::json!({"frames": n, "file": write}));
        } else {
            println!("wrote {n} frames to {}", write.display());
        }
        return Ok(true);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v).expect("JSON"));
        return Ok(true);
    }
    print!("{}", render(&args.cmd, &v));
    Ok(true)
}

/// Writes captured frames (the daemon's `frames` list) as a pcap file with nanosecond times.
pub fn write_pcap(path: &Path, v: &Value) -> Result<usize, String> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let frames: Vec<crate::dataplane::observe::Captured> =
        serde_json::from_value(v["frames"].clone()).map_err(|e| format!("bad capture reply: {e}"))?;
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header =
        PcapHeader { snaplen: 65_535, ts_resolution: pcap_file::TsResolution::NanoSecond, ..PcapHeader::default() };
    let mut w = PcapWriter::with_header(std::io::BufWriter::new(file), header).map_err(|e| e.to_string())?;
    for f in &frames {
        let pkt = PcapPacket::new(Duration::from_nanos(f.ts_ns), f.orig_len, &f.data);
        w.write_packet(&pkt).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    w.into_writer().flush().map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(frames.len())
}

/// The human-readable form of a reply.
pub fn render(cmd: &CtlCmd, v: &Value) -> String {
    let rows = |key: &str| v[key].as_array().cloned().unwrap_or_default();
    match cmd {
        CtlCmd::Status => {
            let mut out = String::new();
            if let Value::Object(m) = v {
                for (k, x) in m {
                    out.push_str(&format!("{k:<20} {}\n", s(x)));
                }
            }
            out
        }
        CtlCmd::Routes { .. } => {
            let r: Vec<Vec<String>> = rows("routes")
                .iter()
                .map(|r| {
                    let shadowed: Vec<String> = r["shadowed"]
                        .as_array()
                        .map(|a| a.iter().map(|x| format!("{}: {}", s(&x[0]), s(&x[1]))).collect())
                        .unwrap_or_default();
                    vec![s(&r["prefix"]), s(&r["source"]), s(&r["nexthop"]), s(&r["nh_id"]), shadowed.join("; ")]
                })
                .collect();
            let mut out = table(&["PREFIX", "SOURCE", "NEXT HOP", "ID", "SHADOWS"], &r);
            for n in rows("not_installed") {
                out.push_str(&format!(
                    "not installed: {} ({}): {}\n",
                    s(&n["prefix"]),
                    s(&n["source"]),
                    s(&n["error"])
                ));
            }
            out
        }
        CtlCmd::Peers => {
            let r: Vec<Vec<String>> = rows("peers")
                .iter()
                .map(|p| vec![s(&p["name"]), s(&p["ip"]), s(&p["pod_blocks"]), s(&p["ipip_mode"])])
                .collect();
            table(&["NAME", "IP", "POD BLOCKS", "IPIP MODE"], &r)
        }
        CtlCmd::Endpoints => {
            let r: Vec<Vec<String>> = rows("endpoints")
                .iter()
                .map(|e| {
                    vec![
                        s(&e["name"]),
                        s(&e["port"]),
                        s(&e["tap"]),
                        s(&e["netns"]),
                        s(&e["mac"]),
                        s(&e["addrs"]),
                        s(&e["ingress"]),
                        s(&e["egress"]),
                    ]
                })
                .collect();
            table(&["NAME", "PORT", "TAP", "NETNS", "MAC", "ADDRS", "INGRESS", "EGRESS"], &r)
        }
        CtlCmd::Policies => {
            let mut out = format!("global rules: {}\n", v["global_rules"].as_array().map_or(0, Vec::len));
            if let Some(m) = v["policies"].as_object() {
                for (name, rules) in m {
                    out.push_str(&format!("policy {name}: {} rules\n", rules.as_array().map_or(0, Vec::len)));
                    for (i, r) in rules.as_array().into_iter().flatten().enumerate() {
                        out.push_str(&format!("  {i}: {r}\n"));
                    }
                }
            }
            out
        }
        CtlCmd::Ports => {
            let r: Vec<Vec<String>> = rows("ports")
                .iter()
                .map(|p| {
                    let st = &p["stats"];
                    vec![
                        s(&p["id"]),
                        s(&p["name"]),
                        s(&p["kind"]),
                        s(&p["mac"]),
                        s(&p["mtu"]),
                        s(&p["endpoint"]),
                        s(&st["rx_packets"]),
                        s(&st["tx_packets"]),
                        s(&st["rx_bytes"]),
                        s(&st["tx_bytes"]),
                    ]
                })
                .collect();
            table(&["ID", "NAME", "KIND", "MAC", "MTU", "ENDPOINT", "RX PKTS", "TX PKTS", "RX BYTES", "TX BYTES"], &r)
        }
        CtlCmd::Neighbours { cmd: None } => {
            let r: Vec<Vec<String>> = rows("neighbours")
                .iter()
                .map(|n| vec![s(&n["ip"]), s(&n["mac"]), s(&n["state"]), s(&n["probes"])])
                .collect();
            table(&["IP", "MAC", "STATE", "PROBES"], &r)
        }
        CtlCmd::Connections { .. } => {
            let r: Vec<Vec<String>> = rows("connections")
                .iter()
                .map(|c| {
                    vec![
                        s(&c["worker"]),
                        s(&c["proto"]),
                        format!("{}:{}", s(&c["src"]), s(&c["sport"])),
                        format!("{}:{}", s(&c["dst"]), s(&c["dport"])),
                        s(&c["state"]),
                    ]
                })
                .collect();
            let mut out = table(&["WORKER", "PROTO", "SOURCE", "DESTINATION", "STATE"], &r);
            out.push_str(&format!("{} connections\n", s(&v["total"])));
            out
        }
        CtlCmd::Counters => {
            let t = &v["total"];
            let mut out = String::new();
            if let Some(ports) = t["ports"].as_object() {
                let r: Vec<Vec<String>> = ports
                    .iter()
                    .filter(|(n, _)| !n.is_empty())
                    .map(|(n, p)| {
                        vec![n.clone(), s(&p["rx_packets"]), s(&p["tx_packets"]), s(&p["rx_bytes"]), s(&p["tx_bytes"])]
                    })
                    .collect();
                out.push_str(&table(&["PORT", "RX PKTS", "TX PKTS", "RX BYTES", "TX BYTES"], &r));
            }
            if let Some(c) = t["counters"].as_object() {
                out.push('\n');
                for (k, x) in c {
                    out.push_str(&format!("{k:<26} {}\n", s(x)));
                }
            }
            let workers = v["workers"].as_array().cloned().unwrap_or_default();
            if workers.len() > 1 {
                let mut r = Vec::new();
                for w in &workers {
                    for (port, p) in w["ports"].as_object().into_iter().flatten() {
                        r.push(vec![s(&w["worker"]), port.clone(), s(&p["rx_packets"]), s(&p["tx_packets"])]);
                    }
                    for (reason, n) in w["drops"].as_object().into_iter().flatten() {
                        r.push(vec![s(&w["worker"]), format!("drop {reason}"), s(n), String::new()]);
                    }
                }
                out.push('\n');
                out.push_str(&table(&["WORKER", "PORT / DROP", "RX PKTS", "TX PKTS"], &r));
            }
            out.push('\n');
            out.push_str(&render(&CtlCmd::Drops { all: false }, v));
            out
        }
        CtlCmd::Drops { all } => {
            let r: Vec<Vec<String>> = v["total"]["drops"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, n)| *all || n.as_u64() != Some(0))
                        .map(|(k, n)| vec![k.clone(), s(n)])
                        .collect()
                })
                .unwrap_or_default();
            if r.is_empty() {
                "no drops\n".into()
            } else {
                table(&["DROP REASON", "PACKETS"], &r)
            }
        }
        CtlCmd::Trace { .. } => {
            let pkts = rows("packets");
            let mut out = String::new();
            for (i, p) in pkts.iter().enumerate() {
                out.push_str(&format!("packet {} (worker {}, port {})\n", i + 1, s(&p["worker"]), s(&p["in_port"])));
                out.push_str(&format!("  received: {}\n", s(&p["received"])));
                for st in p["steps"].as_array().into_iter().flatten() {
                    out.push_str(&format!("  {}\n", s(st)));
                    // The route the lookup matched, right under it.
                    let is_lookup = st.as_str().is_some_and(|x| x.starts_with("lookup:"));
                    if let (true, Some(r)) = (is_lookup, p["route"].as_object()) {
                        let (pfx, src, nh) = (s(&r["prefix"]), s(&r["source"]), s(&r["nexthop"]));
                        out.push_str(&format!("    route: {pfx} ({src}) {nh}\n"));
                    }
                }
                match p["drop_reason"].as_str() {
                    Some(r) => out.push_str(&format!("  verdict: drop {r}\n")),
                    None => out.push_str(&format!("  verdict: {}\n", s(&p["verdict"]))),
                }
                if let Some(sent) = p["sent"].as_str() {
                    out.push_str(&format!("  sent: {sent}\n"));
                }
            }
            out.push_str(&format!("{} of {} packets traced\n", pkts.len(), s(&v["wanted"])));
            out
        }
        CtlCmd::Apply { dry_run: true, .. } => {
            let mut out = String::new();
            for (k, x) in v.as_object().into_iter().flatten() {
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
        _ => match v {
            Value::Object(m) if m.is_empty() => "ok\n".into(),
            Value::Object(m) => m.iter().map(|(k, x)| format!("{k}: {}\n", s(x))).collect(),
            other => format!("{other}\n"),
        },
    }
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
        assert!(parse_nexthop(&w("via")).unwrap_err().contains("give 'via GATEWAY'"));
        assert!(parse_nexthop(&w("via 1.2.3")).unwrap_err().contains("not an IPv4 address"));
        assert!(parse_nexthop(&w("dev eth0")).unwrap_err().contains("expected 'via GATEWAY'"));
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()], vec!["z".into(), "w".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\nz    w\n");
    }

    #[test]
    fn pcap_files_are_readable_back() {
        let dir = std::env::temp_dir().join(format!("vr-pcap-{}", std::process::id()));
        let f = crate::dataplane::observe::Captured {
            ts_ns: 1_700_000_000_123_456_789,
            port: 2,
            point: crate::dataplane::observe::CapturePoint::Rx,
            orig_len: 100,
            data: vec![0xab; 60],
        };
        let v = serde_json::json!({ "frames": [f] });
        assert_eq!(write_pcap(&dir, &v).unwrap(), 1);
        let mut r = pcap_file::pcap::PcapReader::new(std::fs::File::open(&dir).unwrap()).unwrap();
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!((p.orig_len, p.data.len(), p.timestamp.as_nanos()), (100, 60, 1_700_000_000_123_456_789));
        assert!(r.next_packet().is_none());
        std::fs::remove_file(dir).unwrap();
    }
}
