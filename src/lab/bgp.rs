//! Routes between the cluster lab's nodes over BGP, as Calico distributes them: BIRD on every
//! node (in the node's namespace, speaking from the node IP through vrouter's host path), its
//! configuration rendered by the node's agent from etcd (`--bird-config`, confd's role) and
//! reloaded by it; what BIRD learns goes to kernel table [`KERNEL_TABLE`], which the node's
//! vrouter imports (`[kernel_routes]`).
//!
//! The lab starts BIRD once the agent has written its first configuration, as a supervisor
//! would, and can kill it or restart it gracefully for the failover tests. With
//! `--route-reflectors K`, nodes 1..=K are reflectors (label `route-reflector=true`, cluster ID
//! [`RR_CLUSTER_ID`]), the mesh is off and every node peers with them (Calico's recipe).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vrouter_api::reply::Routes;
use vrouter_api::{Request, RouteSource};
use vrouter_core::fib::Ipv4Prefix;

use super::{sys, topo, LabError, LabHandle};

/// The kernel table BIRD writes learned routes to, in each node's namespace.
pub const KERNEL_TABLE: u32 = 100;
/// The route reflectors' cluster ID (as in Calico's documentation).
pub const RR_CLUSTER_ID: &str = "244.0.0.1";
/// The label that makes a node a route reflector (the BGPPeer's peerSelector).
pub const RR_LABEL: (&str, &str) = ("route-reflector", "true");

/// Node `index`'s BIRD files in the lab directory: config (written by the agent), control
/// socket, pid file and log.
pub struct BirdFiles {
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pid: PathBuf,
    pub log: PathBuf,
}

pub fn files(lab: &LabHandle, index: u8) -> BirdFiles {
    let name = &lab.node(index).name;
    let f = |ext: &str| lab.dir().join(format!("{name}.bird.{ext}"));
    BirdFiles { config: f("conf"), socket: f("ctl"), pid: f("pid"), log: f("log") }
}

/// Whether node `index` is a route reflector in this lab.
pub fn is_reflector(lab: &LabHandle, index: u8) -> bool {
    usize::from(index) <= lab.state().route_reflectors
}

/// The agent's arguments for node `index` in a BGP lab.
pub fn agent_args(lab: &LabHandle, index: u8) -> Vec<String> {
    let f = files(lab, index);
    let mut args = vec![
        "--bird-config".to_string(),
        f.config.to_string_lossy().into_owned(),
        "--bird-socket".to_string(),
        f.socket.to_string_lossy().into_owned(),
        "--secrets-dir".to_string(),
        lab.dir().join("secrets").to_string_lossy().into_owned(),
    ];
    if is_reflector(lab, index) {
        args.extend([
            "--label".to_string(),
            format!("{}={}", RR_LABEL.0, RR_LABEL.1),
            "--route-reflector-cluster-id".to_string(),
            RR_CLUSTER_ID.to_string(),
        ]);
    }
    args
}

/// The BGP resources of a lab with route reflectors: the mesh off, every node peering with the
/// reflectors (the reflectors with each other too, as plain iBGP in one cluster). Empty for a
/// full mesh (Calico's default needs no resource).
pub fn manifest(route_reflectors: usize) -> String {
    if route_reflectors == 0 {
        return String::new();
    }
    format!(
        r#"---
apiVersion: projectcalico.org/v3
kind: BGPConfiguration
metadata:
  name: default
spec:
  nodeToNodeMeshEnabled: false
  asNumber: 64512
---
apiVersion: projectcalico.org/v3
kind: BGPPeer
metadata:
  name: peer-with-route-reflectors
spec:
  nodeSelector: all()
  peerSelector: {k} == '{v}'
"#,
        k = RR_LABEL.0,
        v = RR_LABEL.1
    )
}

/// Starts BIRD on every node, each once its agent has written the configuration.
pub fn start_birds(lab: &LabHandle, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    for n in lab.nodes() {
        let f = files(lab, n.index);
        while !f.config.exists() {
            if Instant::now() >= deadline {
                return Err(LabError::ForwarderNotReady {
                    what: format!(
                        "{}: the agent wrote no BIRD configuration ({}) within {timeout:?}",
                        n.name,
                        f.config.display()
                    ),
                    tail: sys::tail(&lab.dir().join(format!("{}.agent.log", n.name)), 15),
                });
            }
            sys::sleep(Duration::from_millis(50))?;
        }
        start_bird(lab, n.index)?;
    }
    Ok(())
}

/// Starts node `index`'s BIRD (in the foreground, a child of the lab) and waits until its
/// control socket answers.
pub fn start_bird(lab: &LabHandle, index: u8) -> Result<(), LabError> {
    start(lab, index, false)
}

/// `recovery`: after a graceful restart (`bird -R`: the kernel table is left alone until the
/// sessions are back).
fn start(lab: &LabHandle, index: u8, recovery: bool) -> Result<(), LabError> {
    sys::need_tool("bird")?;
    let n = lab.node(index);
    let f = files(lab, index);
    let _ = std::fs::remove_file(&f.socket);
    let log = if f.log.exists() { f.log.with_extension("restarted.log") } else { f.log.clone() };
    let (conf, sock, pid) = (f.config.to_string_lossy(), f.socket.to_string_lossy(), f.pid.to_string_lossy());
    let mut args = vec!["bird", "-f", "-c", &conf, "-s", &sock, "-P", &pid];
    if recovery {
        args.push("-R");
    }
    let child = sys::spawn_in(&n.ns, &args, Some(&log))?;
    lab.adopt(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&f.socket).is_err() {
        if Instant::now() >= deadline {
            return Err(LabError::ForwarderNotReady {
                what: format!("{}: BIRD's control socket {} did not open within 10 s", n.name, f.socket.display()),
                tail: sys::tail(&log, 15),
            });
        }
        sys::sleep(Duration::from_millis(20))?;
    }
    Ok(())
}

/// The pid of node `index`'s BIRD, if it runs.
pub fn bird_pid(lab: &LabHandle, index: u8) -> Option<u32> {
    let conf = files(lab, index).config.to_string_lossy().into_owned();
    sys::netns_pids(&lab.node(index).ns)
        .into_iter()
        .find(|&p| sys::cmdline(p).is_some_and(|c| c.starts_with("bird ") && c.contains(&conf)))
}

/// The pid of node `index`'s BIRD, or an error saying none runs.
fn running_bird(lab: &LabHandle, index: u8) -> Result<u32, LabError> {
    bird_pid(lab, index).ok_or_else(|| LabError::BadOption(format!("no BIRD running on {}", lab.node(index).name)))
}

/// SIGKILLs node `index`'s BIRD (a crash: no goodbye to its peers) and waits until it is gone.
pub fn kill_bird(lab: &LabHandle, index: u8) -> Result<(), LabError> {
    let pid = running_bird(lab, index)?;
    sys::signal(pid, sys::Signal::SIGKILL);
    sys::wait_gone(&[pid], Duration::from_secs(5), &format!("kill BIRD {pid}"))
}

/// Runs `f` (a planned restart on node `index`) with BFD drained from node `index`'s
/// sessions, as an operator would on BIRD 2.0.12, which takes BFD going down as a failure even
/// during a graceful restart: the node is annotated
/// [`vrouter_api::BGP_GRACEFUL_RESTART_ANNOTATION`], every agent turns BFD off on the sessions
/// with it, `f` runs once no peer runs BFD with it, and the annotation goes once its sessions
/// are established again (BFD then comes back).
pub fn with_bfd_drained<T>(
    lab: &mut LabHandle,
    tools: &super::cluster::Tools,
    index: u8,
    f: impl FnOnce(&mut LabHandle) -> Result<T, LabError>,
) -> Result<T, LabError> {
    let n = lab.node(index).clone();
    annotate(lab, tools, index, Some("true"))?;
    let ip = n.ip.to_string();
    wait_all(lab, index, Duration::from_secs(15), "BFD drained from the sessions with it", |other| {
        let out = birdc(lab, other, "show bfd sessions")?;
        Ok(!out.lines().any(|l| l.split_whitespace().next() == Some(ip.as_str())))
    })?;
    let out = f(lab)?;
    let suffix = format!("_{}", n.name);
    wait_all(lab, index, Duration::from_secs(30), "sessions with it established again", |other| {
        let out = birdc(lab, other, "show protocols")?;
        Ok(out
            .lines()
            .any(|l| l.contains("Established") && l.split_whitespace().next().is_some_and(|p| p.ends_with(&suffix))))
    })?;
    annotate(lab, tools, index, None)?;
    Ok(out)
}

/// Restarts node `index`'s BIRD gracefully with BFD drained ([`with_bfd_drained`]): `birdc
/// graceful restart` (its peers keep its routes as stale until it is back and has sent them
/// again), then BIRD started again with `-R` (it keeps its own kernel table until its sessions
/// are back).
pub fn graceful_restart_bird(lab: &mut LabHandle, tools: &super::cluster::Tools, index: u8) -> Result<(), LabError> {
    let pid = running_bird(lab, index)?;
    with_bfd_drained(lab, tools, index, |lab| {
        birdc(lab, index, "graceful restart")?;
        sys::wait_gone(&[pid], Duration::from_secs(10), &format!("BIRD {pid} ending for a graceful restart"))?;
        start(lab, index, true)
    })
}

/// Restarts node `index`'s vrouter daemon with BFD drained ([`with_bfd_drained`]): its BGP
/// sessions cross the daemon, and a restart longer than BFD's 300 ms would otherwise look like
/// a dead node to its peers. The sessions ride it out (hold time), so the peers keep its routes.
pub fn planned_vrouter_restart(lab: &mut LabHandle, tools: &super::cluster::Tools, index: u8) -> Result<(), LabError> {
    with_bfd_drained(lab, tools, index, |lab| lab.restart_daemon(index))
}

/// `birdc CMD` against node `index`'s BIRD.
pub fn birdc(lab: &LabHandle, index: u8, cmd: &str) -> Result<String, LabError> {
    let mut args = vec!["birdc", "-s"];
    let sock = files(lab, index).socket.to_string_lossy().into_owned();
    args.push(&sock);
    args.extend(cmd.split_whitespace());
    sys::ns_ok(&lab.node(index).ns, &args, Duration::from_secs(10))
}

/// Waits until `ok` holds for every node that has a session with node `index`.
fn wait_all(
    lab: &LabHandle,
    index: u8,
    timeout: Duration,
    what: &str,
    ok: impl Fn(u8) -> Result<bool, LabError>,
) -> Result<(), LabError> {
    let name = lab.node(index).name.clone();
    let peers: Vec<u8> = lab
        .nodes()
        .iter()
        .map(|n| n.index)
        .filter(|&i| i != index)
        .filter(|&i| birdc(lab, i, "show protocols").is_ok_and(|o| o.contains(&format!("_{name} "))))
        .collect();
    let deadline = Instant::now() + timeout;
    for i in peers {
        while !ok(i)? {
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    cmd: format!("{name}: {what} (on {})", lab.node(i).name),
                    secs: timeout.as_secs_f64(),
                });
            }
            sys::sleep(Duration::from_millis(50))?;
        }
    }
    Ok(())
}

/// Sets (`Some`) or removes the graceful restart annotation on node `index`'s `Node`
/// (`vrouterctl get` then `replace`, again if the agent wrote it in between).
pub fn annotate(
    lab: &LabHandle,
    tools: &super::cluster::Tools,
    index: u8,
    value: Option<&str>,
) -> Result<(), LabError> {
    let key = vrouter_api::BGP_GRACEFUL_RESTART_ANNOTATION;
    let name = lab.node(index).name.clone();
    let ctl = tools.vrouterctl.to_string_lossy().into_owned();
    let etcd = super::cluster::etcd_endpoints(lab);
    let file = lab.dir().join(format!("{name}.annotated.json"));
    let mut last = String::new();
    for _ in 0..10 {
        let out = sys::ns_ok(
            &lab.router_ns(),
            &[&ctl, "--etcd-endpoints", &etcd, "get", "node", &name, "-o", "json"],
            Duration::from_secs(30),
        )?;
        let mut v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| LabError::BadOption(format!("vrouterctl get node {name}: {e}: {out}")))?;
        let meta = v
            .get_mut("metadata")
            .and_then(|m| m.as_object_mut())
            .ok_or_else(|| LabError::BadOption(format!("no metadata in {out}")))?;
        let ann = meta.entry("annotations").or_insert_with(|| serde_json::json!({}));
        match (ann.as_object_mut(), value) {
            (Some(a), Some(val)) => {
                a.insert(key.into(), val.into());
            }
            (Some(a), None) => {
                a.remove(key);
            }
            (None, _) => return Err(LabError::BadOption(format!("annotations of {name} are not a map: {out}"))),
        }
        std::fs::write(&file, v.to_string())
            .map_err(|err| LabError::Io { what: format!("writing {}", file.display()), err })?;
        match sys::ns_ok(
            &lab.router_ns(),
            &[&ctl, "--etcd-endpoints", &etcd, "replace", "-f", &file.to_string_lossy()],
            Duration::from_secs(30),
        ) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(), // the agent wrote the Node in between: again
        }
    }
    Err(LabError::BadOption(format!("annotating node {name}: {last}")))
}

/// The pod blocks each node holds (its blackholed aggregates inside the lab's pool), by node
/// index, read from the node's own routes.
pub fn node_blocks(lab: &LabHandle) -> Result<BTreeMap<u8, BTreeSet<Ipv4Prefix>>, LabError> {
    let pool: Ipv4Prefix = super::cluster::POOL.parse().expect("the lab's pool parses");
    let mut out = BTreeMap::new();
    for n in lab.nodes() {
        let r = routes(n, RouteSource::Node, pool)?;
        let blocks = r.routes.iter().filter(|v| v.prefix.len() < 32 && v.nexthop == "blackhole").map(|v| v.prefix);
        out.insert(n.index, blocks.collect());
    }
    Ok(out)
}

/// Node `n`'s routes of `source` inside `within`.
pub fn routes(n: &topo::LabNode, source: RouteSource, within: Ipv4Prefix) -> Result<Routes, LabError> {
    let sock = topo::socket_path(n);
    vrouterctl::request(
        Path::new(&sock),
        Request::Routes { source: Some(source), within: Some(within) },
        Duration::from_secs(5),
    )
    .map_err(|e| LabError::ForwarderNotReady { what: format!("{}: routes: {e}", n.name), tail: String::new() })
}

/// The kernel (BGP-learned) prefixes inside the pool that node `n`'s FIB holds.
pub fn learned(n: &topo::LabNode) -> Result<BTreeSet<Ipv4Prefix>, LabError> {
    let pool: Ipv4Prefix = super::cluster::POOL.parse().expect("the lab's pool parses");
    Ok(routes(n, RouteSource::Kernel, pool)?.routes.into_iter().map(|v| v.prefix).collect())
}

/// Waits until every node has learned every other node's blocks over BGP (in its FIB).
pub fn wait_routes(lab: &LabHandle, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let blocks = node_blocks(lab)?;
        let mut missing = Vec::new();
        for n in lab.nodes() {
            let have = learned(n)?;
            let want = blocks.iter().filter(|(i, _)| **i != n.index).flat_map(|(_, b)| b.iter());
            let lacking: Vec<String> = want.filter(|b| !have.contains(b)).map(|b| b.to_string()).collect();
            if !lacking.is_empty() {
                missing.push((n.clone(), lacking));
            }
        }
        let Some((n, lacking)) = missing.first() else { return Ok(()) };
        if Instant::now() >= deadline {
            return Err(LabError::ForwarderNotReady {
                what: format!(
                    "{}: BGP routes to {} not learned within {timeout:?} ({} nodes still missing some)",
                    n.name,
                    lacking.join(", "),
                    missing.len()
                ),
                tail: sys::tail(&files(lab, n.index).log, 15),
            });
        }
        sys::sleep(Duration::from_millis(100))?;
    }
}

/// What `vrouter lab bench-bgp` measures: per event, the time from the event until every other
/// node's FIB agrees with it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Convergence {
    pub nodes: usize,
    pub route_reflectors: usize,
    /// A node claims a new pod block (`vrouterctl ipam claim`): until every other node has it.
    pub new_block: Vec<Duration>,
    /// A node's BIRD is killed (SIGKILL): until no other node has its blocks.
    pub node_death: Vec<Duration>,
    /// Per node, over the run: CPU (% of one core) and resident memory (MiB) of its vrouter,
    /// its agent and its BIRD, as (mean, max) over the nodes.
    pub usage: Vec<Usage>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub process: String,
    pub cpu_pct_mean: f64,
    pub cpu_pct_max: f64,
    pub rss_mib_mean: f64,
    pub rss_mib_max: f64,
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The pids of each node's vrouter, agent and BIRD.
fn node_pids(lab: &LabHandle) -> Vec<[Option<u32>; 3]> {
    lab.nodes()
        .iter()
        .map(|n| {
            let daemon = lab.state().daemons.iter().find(|d| d.node == n.name).map(|d| d.pid);
            let agent = super::cluster::pids(lab, super::cluster::Service::Agent(n.index)).first().copied();
            [daemon, agent, bird_pid(lab, n.index)]
        })
        .collect()
}

/// Times until `done(node)` holds for every node but `except`, polling them in turn.
fn until_all(
    lab: &LabHandle,
    except: u8,
    start: Instant,
    what: &str,
    done: impl Fn(&BTreeSet<Ipv4Prefix>) -> bool,
) -> Result<Duration, LabError> {
    let mut pending: Vec<&topo::LabNode> = lab.nodes().iter().filter(|n| n.index != except).collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for n in pending {
            if !done(&learned(n)?) {
                still.push(n);
            }
        }
        pending = still;
        if !pending.is_empty() {
            // The poller must not take a core from the cluster it measures (2 cores here):
            // a round of requests, then a pause; the resolution stays a few ms.
            std::thread::sleep(Duration::from_millis(5));
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(LabError::Timeout {
                cmd: format!("{what} reaching every node ({} left)", pending.len()),
                secs: 30.0,
            });
        }
    }
    Ok(start.elapsed())
}

/// Runs `rounds` of each event on the lab (clients only: reflectors stay up), then reads what
/// every node's processes used over the run.
pub fn convergence(lab: &LabHandle, tools: &super::cluster::Tools, rounds: usize) -> Result<Convergence, LabError> {
    let pids = node_pids(lab);
    let ticks0: Vec<[u64; 3]> = pids.iter().map(|p| p.map(|x| x.map_or(0, crate::perf::proc_ticks))).collect();
    let t0 = Instant::now();
    let clients: Vec<u8> = lab.nodes().iter().map(|n| n.index).filter(|&i| !is_reflector(lab, i)).collect();
    let ctl = tools.vrouterctl.to_string_lossy().into_owned();
    let etcd = super::cluster::etcd_endpoints(lab);
    let (mut new_block, mut node_death) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let k = clients[r % clients.len()];
        let name = lab.node(k).name.clone();
        // A new block: claimed in etcd, rendered into node k's BIRD by its agent, announced.
        let start = Instant::now();
        let out = sys::ns_ok(
            &lab.router_ns(),
            &[&ctl, "--etcd-endpoints", &etcd, "ipam", "claim", "--node", &name],
            Duration::from_secs(30),
        )?;
        let block: Ipv4Prefix = out
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .ok_or_else(|| LabError::BadOption(format!("`vrouterctl ipam claim` named no block: {out}")))?;
        new_block.push(until_all(lab, k, start, &format!("block {block} of {name}"), |have| have.contains(&block))?);
        // Node k's BGP speaker dies: its blocks must leave every other node.
        let blocks = node_blocks(lab)?.remove(&k).unwrap_or_default();
        kill_bird(lab, k)?;
        let start = Instant::now();
        node_death.push(until_all(lab, k, start, &format!("withdrawal of {name}'s blocks"), |have| {
            blocks.is_disjoint(have)
        })?);
        start_bird(lab, k)?;
        until_all(lab, k, Instant::now(), &format!("{name}'s blocks back"), |have| blocks.is_subset(have))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let hz = 100.0; // USER_HZ
    let pids = node_pids(lab);
    let mut usage = Vec::new();
    for (i, process) in ["vrouter", "agent", "bird"].into_iter().enumerate() {
        let cpu: Vec<f64> = pids
            .iter()
            .zip(&ticks0)
            .filter_map(|(p, t)| {
                p[i].map(|pid| (crate::perf::proc_ticks(pid).saturating_sub(t[i])) as f64 / hz / secs * 100.0)
            })
            .collect();
        let rss: Vec<f64> = pids.iter().filter_map(|p| p[i].map(|pid| rss_kib(pid) as f64 / 1024.0)).collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        usage.push(Usage {
            process: process.into(),
            cpu_pct_mean: mean(&cpu),
            cpu_pct_max: max(&cpu),
            rss_mib_mean: mean(&rss),
            rss_mib_max: max(&rss),
        });
    }
    Ok(Convergence {
        nodes: lab.nodes().len(),
        route_reflectors: lab.state().route_reflectors,
        new_block,
        node_death,
        usage,
    })
}

/// The median and the largest of `v`.
pub fn p50_max(v: &[Duration]) -> (Duration, Duration) {
    let mut s = v.to_vec();
    s.sort();
    (s.get(s.len().saturating_sub(1) / 2).copied().unwrap_or_default(), s.last().copied().unwrap_or_default())
}

impl Convergence {
    /// The cluster's shape, for tables and the plot: `20 nodes, full mesh`.
    pub fn shape(&self) -> String {
        match self.route_reflectors {
            0 => format!("{} nodes, full mesh", self.nodes),
            k => format!("{} nodes, {k} route reflectors", self.nodes),
        }
    }
}

/// Convergence per cluster shape: for each event a bar at the median with a whisker to the
/// largest, and the 1 s goal as a line; hand-written SVG.
pub fn svg(results: &[Convergence]) -> String {
    use std::fmt::Write;
    let (w, h) = (640.0, 380.0);
    let (left, right, top, bottom) = (60.0, 20.0, 40.0, 70.0);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let ymax =
        results.iter().flat_map(|r| r.new_block.iter().chain(&r.node_death)).map(|d| ms(*d)).fold(1000.0f64, f64::max);
    let ymax = crate::perf::report::nice_ceil(ymax * 1.05);
    let (plot_w, plot_h) = (w - left - right, h - top - bottom);
    let y = |v: f64| top + plot_h * (1.0 - v / ymax);
    use crate::perf::report::{svg_open, Frame};
    let title = "BGP convergence: event until every node's FIB has it (p50, whisker to max)";
    let mut s = svg_open(Frame { w, h, left, right, top, plot_h, ymax, prec: 0, unit: "ms" }, title);
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="#c44e52" stroke-dasharray="6 4"/>"##,
        y(1000.0),
        w - right
    );
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="#c44e52" font-size="10">goal: 1 s</text>"##,
        w - right - 4.0,
        y(1000.0) - 4.0
    );
    type Event = (&'static str, &'static str, fn(&Convergence) -> &[Duration]);
    let events: [Event; 2] =
        [("new pod block", "#4c72b0", |r| &r.new_block), ("node's BIRD killed", "#dd8452", |r| &r.node_death)];
    let group_w = plot_w / results.len().max(1) as f64;
    let bar_w = group_w * 0.7 / events.len() as f64;
    for (gi, r) in results.iter().enumerate() {
        let gx = left + group_w * gi as f64 + group_w * 0.15;
        for (ei, (name, color, get)) in events.iter().enumerate() {
            let (p50, max) = p50_max(get(r));
            let x = gx + bar_w * ei as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{color}"><title>{}: {name}: p50 {:.0} ms, max {:.0} ms</title></rect>"#,
                y(ms(p50)),
                bar_w * 0.9,
                (y(0.0) - y(ms(p50))).max(0.0),
                r.shape(),
                ms(p50),
                ms(max)
            );
            let cx = x + bar_w * 0.45;
            let _ = writeln!(
                s,
                r#"<line x1="{cx:.1}" y1="{:.1}" x2="{cx:.1}" y2="{:.1}" stroke="black"/>"#,
                y(ms(p50)),
                y(ms(max))
            );
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.0}</text>"#,
                y(ms(max)) - 4.0,
                ms(p50)
            );
        }
        let label = match r.route_reflectors {
            0 => format!("{} mesh", r.nodes),
            k => format!("{} ({k} RR)", r.nodes),
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{label}</text>"#,
            gx + group_w * 0.35,
            h - bottom + 18.0
        );
    }
    let _ = writeln!(s, r#"<line x1="{left}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}" stroke="black"/>"#, y(0.0), w - right);
    for (ei, (name, color, _)) in events.iter().enumerate() {
        let lx = left + 20.0 + 200.0 * ei as f64;
        let ly = h - 18.0;
        let _ = writeln!(s, r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{color}"/>"#, ly - 10.0);
        let _ = writeln!(s, r#"<text x="{}" y="{ly}">{name}</text>"#, lx + 16.0);
    }
    s.push_str("</svg>\n");
    s
}
