//! The control socket: a Unix socket (mode 0660, owner root and an optional group) that
//! `vrouterctl` talks to with the protocol of [`super::api`].
//!
//! Forwarding never waits for it: requests run on the socket's own threads and reach the
//! workers only through [`super::node::Node`] (snapshots, FIB updates, grace periods) and
//! [`vrouter_core::dataplane::observe`]. A client is checked by its peer credentials (root, the
//! daemon's own user, or a member of the configured group), may keep at most one request in
//! flight, is cut off when a request has not arrived whole within [`api::REQUEST_TIMEOUT_MS`]
//! (however slowly it trickles in) or is over [`api::MAX_REQUEST`] bytes, and at most
//! [`MAX_CLIENTS`] are served at once: when all slots are taken, the client idle the longest
//! (connected, no request running) is closed to make room, so idle or trickling clients cannot
//! lock operators out. A trace or capture ends when its client goes away (the socket is
//! watched while waiting) or on `trace-stop`.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::api::reply::{self as r, CapturedFrame, TraceRoute, TracedPacket};
use super::api::{self, Reply, Request};
use super::config::Config;
use super::node::{Node, NodeError};
use vrouter_core::dataplane::observe::{CaptureSpec, Captured, TraceRecord};
use vrouter_core::dataplane::{PortId, Shared};
use vrouter_core::stats::Counters;

/// Clients served at once; more are told so and closed.
pub const MAX_CLIENTS: usize = 16;

/// What requests act on.
pub struct Control {
    pub node: Mutex<Node>,
    pub shared: Arc<Shared>,
    /// One per worker.
    pub counters: Vec<Arc<Counters>>,
    /// The file `reload` (and SIGHUP) re-reads.
    pub config_path: Option<PathBuf>,
    pub started: Instant,
    /// Link states, the XDP attachment, the workers (the daemon's timer keeps it current).
    pub status: Arc<super::status::NodeStatus>,
    /// Bumped by `trace-stop`: sessions that started before end.
    sessions_stopped: AtomicU64,
    /// The counters as `counters-clear` found them: `counters` shows what came since.
    baseline: Mutex<Option<r::Counters>>,
}

/// Who sent a request, and whether they are still there (for long waits).
pub struct Session<'a> {
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    /// True once the client has gone away (its socket closed).
    pub gone: &'a dyn Fn() -> bool,
}

impl Session<'_> {
    /// A request from inside the daemon (SIGHUP, tests): nobody to lose.
    pub fn local() -> Session<'static> {
        Session { uid: None, pid: None, gone: &|| false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control socket {path}: {msg}")]
    Socket { path: String, msg: String },
}

/// A reply struct as the `result` of a reply.
fn ok<T: Serialize>(t: T) -> Result<Value, String> {
    serde_json::to_value(t).map_err(|e| format!("cannot encode the reply: {e}"))
}

impl Control {
    pub fn new(
        node: Node,
        counters: Vec<Arc<Counters>>,
        config_path: Option<PathBuf>,
        started: Instant,
        status: Arc<super::status::NodeStatus>,
    ) -> Control {
        Control {
            shared: node.shared().clone(),
            node: Mutex::new(node),
            counters,
            config_path,
            started,
            status,
            sessions_stopped: AtomicU64::new(0),
            baseline: Mutex::new(None),
        }
    }

    pub fn node(&self) -> MutexGuard<'_, Node> {
        // A panic while holding it would have been a bug in Node; its state is still the last
        // consistent one published, so keep serving.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The daemon's timer work on the node, skipped while a change holds it (that change
    /// frees what it replaced itself): FIB tables the workers let go of late.
    pub fn housekeeping(&self) {
        let mut node = match self.node.try_lock() {
            Ok(n) => n,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        node.collect();
    }

    /// Re-reads the config file and applies it.
    pub fn reload(&self) -> Result<api::ChangeReport, NodeError> {
        let path = self
            .config_path
            .as_ref()
            .ok_or_else(|| NodeError::Refused("the daemon was not started from a config file".into()))?;
        let cfg = Config::load(path).map_err(|e| NodeError::Refused(e.to_string()))?;
        self.node().apply(cfg)
    }

    fn port_id(&self, name: &str) -> Result<PortId, String> {
        let snap = self.shared.snapshot.load();
        snap.ports.iter().position(|p| p.as_ref().is_some_and(|p| p.name == name)).map(|i| i as PortId).ok_or_else(
            || {
                let names: Vec<&str> = snap.ports.iter().flatten().map(|p| p.name.as_str()).collect();
                format!("no port '{name}' (ports: {})", names.join(", "))
            },
        )
    }

    /// Answers one request.
    pub fn handle(&self, req: Request) -> Reply {
        self.handle_in(req, &Session::local())
    }

    /// Answers one request from `who`. Changes are logged with who asked (uid and pid from
    /// the socket's peer credentials).
    pub fn handle_in(&self, req: Request, who: &Session<'_>) -> Reply {
        let change = req.is_change().then(|| req.describe());
        let r = self.dispatch(req, who);
        if let Some(what) = change {
            let (uid, pid) = (who.uid, who.pid);
            match &r {
                Ok(v) => tracing::info!(?uid, ?pid, request = %what, result = %v, "control: change made"),
                Err(e) => tracing::warn!(?uid, ?pid, request = %what, "control: change refused: {e}"),
            }
        }
        match r {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(e),
        }
    }

    fn edit(&self, f: impl FnOnce(&mut Config) -> Result<(), NodeError>) -> Result<Value, String> {
        ok(self.node().edit(f).map_err(|e| e.to_string())?)
    }

    fn dispatch(&self, req: Request, who: &Session<'_>) -> Result<Value, String> {
        let refuse = |m: String| Err(NodeError::Refused(m));
        match req {
            Request::Status => {
                let node = self.node();
                let snap = self.shared.snapshot.load();
                ok(r::Status {
                    node: node.config().node.name.clone(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    protocol: api::VERSION,
                    uptime_s: self.started.elapsed().as_secs(),
                    workers: self.counters.len(),
                    generation: snap.generation,
                    routes: node.fib_len(),
                    fib_bytes: node.fib_memory_bytes(),
                    endpoints: snap.endpoints.len(),
                    peers: snap.peers.len(),
                    nexthops: snap.nexthops.len(),
                    neighbours: self.shared.neigh.len(),
                    connections: self.connections(),
                    policy_generation: snap.policy.generation(),
                    snapshots_published: node.snapshots_published() as u64,
                    grace_timeouts: node.grace_timeouts,
                })
            }
            Request::Routes { source, within } => {
                let node = self.node();
                let not_installed = node
                    .kernel_rejected()
                    .iter()
                    .map(|(p, why)| r::NotInstalled {
                        prefix: *p,
                        source: api::RouteSource::Kernel,
                        error: why.clone(),
                    })
                    .collect();
                ok(r::Routes { routes: node.routes(source, within), not_installed })
            }
            Request::RouteLookup { addr } => {
                let node = self.node();
                let dst = u32::from(addr);
                let fib_id = self.shared.fib.pin().lookup(dst);
                let fib_nh = self.shared.snapshot.load().nexthop(fib_id).map(|n| format!("{n:?}"));
                let (prefix, source, nexthop) = match node.route_for(dst) {
                    Some((p, src, nh)) => (Some(p), Some(src), nh),
                    None => (None, None, "unreachable (no route)".to_string()),
                };
                ok(r::RouteLookup { address: addr, prefix, source, nexthop, nh_id: fib_id, forwarding: fib_nh })
            }
            Request::CountersClear => {
                *self.baseline.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.counters_reply());
                ok(r::Cleared { cleared: true })
            }
            Request::ConfigShow => {
                let node = self.node();
                let running = node.config();
                let text = toml::to_string(running).map_err(|e| format!("cannot show the config: {e}"))?;
                let warning = match &self.config_path {
                    None => None,
                    Some(p) => match Config::load(p) {
                        Ok(c) if &c == running => None,
                        Ok(_) => Some(format!(
                            "{} differs from the running config (changed since, or changed through the control socket): a reload or SIGHUP would apply the file",
                            p.display()
                        )),
                        Err(e) => Some(format!("a reload or SIGHUP would fail: {e}")),
                    },
                };
                ok(r::ConfigShow {
                    generation: node.generation(),
                    config: text,
                    file: self.config_path.clone(),
                    matches_file: warning.is_none(),
                    warning,
                })
            }
            Request::RouteAdd { prefix, nexthop } => {
                let n = self.node().cli_route(prefix, Some(nexthop)).map_err(|e| e.to_string())?;
                ok(r::RoutesChanged { routes_changed: n })
            }
            Request::RouteDel { prefix } => {
                let n = self.node().cli_route(prefix, None).map_err(|e| e.to_string())?;
                ok(r::RoutesChanged { routes_changed: n })
            }
            Request::RouteFlushKernel => {
                let n = self.node().flush_kernel_routes().map_err(|e| e.to_string())?;
                ok(r::RoutesChanged { routes_changed: n })
            }
            Request::Peers => ok(r::Peers { peers: self.node().config().peers.clone() }),
            Request::PeerAdd { peer } => self.edit(|c| add_named(&mut c.peers, peer, "peer", |p| &p.name)),
            Request::PeerDel { name } => self.edit(|c| del_named(&mut c.peers, &name, "peer", |p| &p.name)),
            Request::Endpoints => {
                let node = self.node();
                let ports = node.pod_ports();
                let endpoints = node
                    .config()
                    .endpoints
                    .iter()
                    .map(|e| r::EndpointInfo {
                        config: e.clone(),
                        port: ports.iter().find(|(n, _)| *n == e.name).map(|(_, p)| *p),
                    })
                    .collect();
                ok(r::Endpoints { endpoints })
            }
            Request::EndpointAdd { endpoint } => {
                // The same port as the running endpoint's is no change: the CNI plugin and the
                // node agent may both add a new pod, in either order. Its running policy lists
                // stay (the agent's compiled ones are newer than the plugin's pending ones).
                // Checked and added under one lock.
                let mut node = self.node();
                if node.config().endpoints.iter().any(|e| e.name == endpoint.name && e.same_port(&endpoint)) {
                    return ok(api::ChangeReport::default());
                }
                ok(node
                    .edit(|c| add_named(&mut c.endpoints, endpoint, "endpoint", |e| &e.name))
                    .map_err(|e| e.to_string())?)
            }
            Request::EndpointDel { name } => self.edit(|c| del_named(&mut c.endpoints, &name, "endpoint", |e| &e.name)),
            Request::Policies => {
                let node = self.node();
                let c = node.config();
                ok(r::Policies { global_rules: c.global_rules.clone(), policies: c.policies.clone() })
            }
            Request::PolicySet { name, rules } => self.edit(|c| {
                if name.is_empty() {
                    return refuse("a policy needs a name".into());
                }
                c.policies.insert(name, rules);
                Ok(())
            }),
            Request::PolicyDel { name } => self.edit(|c| {
                if c.policies.remove(&name).is_none() {
                    return refuse(format!("no policy '{name}'"));
                }
                Ok(())
            }),
            Request::GlobalRulesSet { rules } => self.edit(|c| {
                c.global_rules = rules;
                Ok(())
            }),
            Request::Ports => {
                let snap = self.shared.snapshot.load();
                let ports = snap
                    .ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
                    .map(|(i, p)| {
                        let st: vrouter_core::stats::counters::PortStats =
                            self.counters.iter().map(|c| c.port(i)).sum();
                        let endpoint = snap
                            .port_endpoint
                            .get(i)
                            .copied()
                            .flatten()
                            .map(|e| snap.endpoints[e as usize].name.clone());
                        use vrouter_core::dataplane::state::PortKind;
                        let uplink = p.kind == PortKind::Uplink;
                        let xdp = match (uplink, self.status.uplink.get()) {
                            (true, Some(u)) => Some(r::Xdp { mode: u.xdp_mode.into(), zero_copy: u.zero_copy }),
                            _ => None,
                        };
                        r::Port {
                            id: i as api::PortId,
                            name: p.name.clone(),
                            kind: match p.kind {
                                PortKind::Uplink => r::PortKind::Uplink,
                                PortKind::Pod => r::PortKind::Pod,
                                PortKind::Host => r::PortKind::Host,
                            },
                            mac: p.mac,
                            mtu: p.mtu,
                            endpoint,
                            stats: super::stats::port_stats(st),
                            link: self.status.port_link(i, uplink).name().into(),
                            xdp,
                        }
                    })
                    .collect();
                ok(r::Ports { ports })
            }
            Request::Neighbours => {
                let neighbours = self
                    .shared
                    .neigh
                    .entries()
                    .iter()
                    .map(|e| r::Neighbour {
                        ip: Ipv4Addr::from(e.ip),
                        mac: e.mac.map(vrouter_core::wire::MacAddr),
                        state: format!("{:?}", e.state).to_lowercase(),
                        probes: e.probes,
                    })
                    .collect();
                ok(r::Neighbours { neighbours })
            }
            Request::NeighboursFlush { ip } => {
                let neigh = &self.shared.neigh;
                if let Some(a) = ip {
                    let at = u32::from(a);
                    if neigh.entries().iter().any(|e| e.ip == at && e.state == vrouter_core::neigh::NeighState::Static)
                    {
                        return Err(format!(
                            "{a} is a static neighbour from the config: remove it from [[neighbours]] and apply"
                        ));
                    }
                }
                let n = neigh.flush(ip.map(u32::from));
                tracing::info!(ip = ?ip, flushed = n, "neighbours flushed (control socket)");
                ok(r::Flushed { flushed: n })
            }
            Request::Connections { limit } => {
                let obs = &self.shared.observe;
                let n = obs.request_ct_dump();
                let deadline = Instant::now() + Duration::from_secs(2);
                let mut dumps = obs.ct_dumps_for(n);
                while dumps.len() < self.counters.len() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                    dumps = obs.ct_dumps_for(n);
                }
                obs.finish_ct_dump(n);
                let missing = self.counters.len().saturating_sub(dumps.len());
                let mut conns = Vec::new();
                let mut total = 0;
                for (w, entries) in dumps {
                    total += entries.len();
                    for e in entries {
                        if limit.is_some_and(|l| conns.len() >= l) {
                            break;
                        }
                        let k = e.original;
                        conns.push(r::Connection {
                            worker: w,
                            proto: k.proto,
                            src: Ipv4Addr::from(k.src),
                            sport: k.sport,
                            dst: Ipv4Addr::from(k.dst),
                            dport: k.dport,
                            state: e.state.name().into(),
                            policy_generation: e.generation,
                        });
                    }
                }
                ok(r::Connections { connections: conns, total, workers_not_answering: missing })
            }
            Request::Counters => {
                let c = self.counters_reply();
                match &*self.baseline.lock().unwrap_or_else(|e| e.into_inner()) {
                    Some(b) => ok(c.since(b)),
                    None => ok(c),
                }
            }
            Request::Apply { config, dry_run, file, if_generation } => {
                let name = Path::new(file.as_deref().unwrap_or("<apply>"));
                let cfg = Config::parse(&config, name).map_err(|e| e.to_string())?;
                let mut node = self.node();
                // Compared and applied under one lock: nothing can come in between.
                match if_generation {
                    Some(g) if g != node.generation() => {
                        return Err(format!(
                            "{}: the node runs generation {}, not {g} (changed since it was read: read it again with config-show and redo the change)",
                            api::GENERATION_CHANGED,
                            node.generation()
                        ))
                    }
                    _ => {}
                }
                match dry_run {
                    true => ok(node.plan(&cfg).map_err(|e| e.to_string())?),
                    false => ok(node.apply(cfg).map_err(|e| e.to_string())?),
                }
            }
            Request::Reload => ok(self.reload().map_err(|e| e.to_string())?),
            Request::Trace { count, port, timeout_ms } => ok(self.trace(count, port, timeout_ms, who)?),
            Request::Capture { count, port, rx, tx, snaplen, timeout_ms } => {
                let port = port.map(|p| self.port_id(&p)).transpose()?;
                let frames = self.capture(CaptureSpec { count, port, rx, tx, snaplen }, timeout_ms, who)?;
                ok(r::Capture { frames })
            }
            Request::TraceStop => {
                let active = self.shared.observe.active() != 0;
                if active {
                    self.sessions_stopped.fetch_add(1, Ordering::AcqRel);
                }
                ok(r::Stopped { stopped: active })
            }
        }
    }

    /// Counters per worker and summed: ports, drops by reason, the rest.
    pub fn counters_reply(&self) -> r::Counters {
        let names: Vec<String> = self.shared.snapshot.load().port_names();
        let node_name = self.node().config().node.name.clone();
        super::stats::counters(&node_name, &names, &self.counters)
    }

    /// What the daemon's `--stats` file holds: the counters summed over workers (the `total`
    /// of the `counters` reply, never reset by `counters-clear`).
    pub fn stats_document(&self) -> String {
        serde_json::to_string(&self.counters_reply().total).unwrap_or_default()
    }

    /// Connections tracked by all workers (their gauges).
    fn connections(&self) -> u64 {
        self.counters.iter().map(|c| c.conntrack_entries.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// The Prometheus page (see [`super::metrics`]).
    pub fn metrics_text(&self) -> String {
        use super::metrics::{render_with_pods, Extra};
        let snap = self.shared.snapshot.load();
        let names: Vec<String> = snap.port_names();
        let (node_name, routes) = {
            let n = self.node();
            (n.config().node.name.clone(), n.fib_len())
        };
        let conns = self.connections();
        let extra = [
            Extra::routes(routes),
            Extra::neighbours(self.shared.neigh.len()),
            Extra::conntrack_entries(conns as usize),
            Extra::snapshot_generation(snap.generation),
            Extra::uptime(self.started.elapsed()),
            Extra::gauge(
                "vrouter_uplink_link_up",
                "1 while the uplink has carrier, 0 while it is down (-1: unknown, or no uplink).",
                match self.status.link() {
                    super::status::LinkState::Up => 1.0,
                    super::status::LinkState::Down => 0.0,
                    super::status::LinkState::Unknown => -1.0,
                },
            ),
            Extra::counter(
                "vrouter_uplink_link_changes_total",
                "Changes of the uplink's link state seen since start.",
                self.status.link_changes.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
            Extra::counter(
                "vrouter_uplink_xdp_detached_total",
                "Times the uplink's XDP program was found removed by someone else (attached again when the hook was free).",
                self.status.xdp_lost.load(std::sync::atomic::Ordering::Relaxed) as f64,
            ),
        ];
        let pods: Vec<Option<&str>> = (0..names.len())
            .map(|i| snap.port_endpoint.get(i).copied().flatten().map(|e| snap.endpoints[e as usize].name.as_str()))
            .collect();
        let mut out = String::new();
        render_with_pods(&mut out, &node_name, &names, &pods, &self.counters, &extra);
        let bird = self.node().config().metrics.as_ref().and_then(|m| m.bird_socket.clone());
        if let Some(sock) = bird {
            // Read at scrape time, bounded: a stuck BIRD costs a scrape a second at most.
            let birdc = vrouter_bgp::Birdc::new(sock).with_timeout(std::time::Duration::from_secs(1));
            out.push_str(&vrouter_bgp::prometheus_text(birdc.peers().ok().as_deref()));
        }
        out
    }

    fn trace(&self, count: u32, port: Option<String>, timeout_ms: u64, who: &Session<'_>) -> Result<r::Trace, String> {
        let port = port.map(|p| self.port_id(&p)).transpose()?;
        let obs = &self.shared.observe;
        obs.start_trace(count, port).map_err(|e| e.to_string())?;
        let end = self.session_end(timeout_ms, who);
        let mut records: Vec<TraceRecord> = collect(end, || obs.take_trace(), || obs.stop_trace());
        records.sort_by_key(|r| r.seq);
        let node = self.node();
        let packets = records
            .into_iter()
            .map(|t| {
                let route = t.lookup.and_then(|(dst, _)| node.route_for(dst));
                traced_packet(t, route.map(|(prefix, source, nexthop)| TraceRoute { prefix, source, nexthop }))
            })
            .collect();
        Ok(r::Trace { packets, wanted: count })
    }

    fn capture(&self, spec: CaptureSpec, timeout_ms: u64, who: &Session<'_>) -> Result<Vec<CapturedFrame>, String> {
        let obs = &self.shared.observe;
        obs.start_capture(spec).map_err(|e| e.to_string())?;
        let end = self.session_end(timeout_ms, who);
        let frames: Vec<Captured> = collect(end, || obs.take_capture(), || obs.stop_capture());
        Ok(frames)
    }

    /// When an observation session started now must end early: after `timeout_ms`, when its
    /// client has gone, or on `trace-stop`.
    fn session_end<'a>(&'a self, timeout_ms: u64, who: &'a Session<'a>) -> impl Fn() -> bool + 'a {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(api::MAX_WAIT_MS));
        let stops = self.sessions_stopped.load(Ordering::Acquire);
        move || Instant::now() >= deadline || self.sessions_stopped.load(Ordering::Acquire) != stops || (who.gone)()
    }
}

/// A traced packet as the protocol has it (the data plane's record, and the route it used).
fn traced_packet(packet: TraceRecord, route: Option<TraceRoute>) -> TracedPacket {
    TracedPacket { packet, route }
}

/// What an observation session records until it has all it wanted (`take` says so) or `end`
/// says to stop; then the session is stopped (`stop` returns the rest).
fn collect<T>(end: impl Fn() -> bool, take: impl Fn() -> (Vec<T>, bool), stop: impl FnOnce() -> Vec<T>) -> Vec<T> {
    let mut all = Vec::new();
    loop {
        let (mut got, done) = take();
        all.append(&mut got);
        if done || end() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    all.append(&mut stop());
    all
}

/// Adds `item` to a config list of named things, refusing a name already there.
fn add_named<T>(list: &mut Vec<T>, item: T, what: &str, name: fn(&T) -> &String) -> Result<(), NodeError> {
    if list.iter().any(|x| name(x) == name(&item)) {
        return Err(NodeError::Refused(format!("{what} '{}' exists; delete it first", name(&item))));
    }
    list.push(item);
    Ok(())
}

/// Deletes the thing called `wanted` from a config list, refusing a name not there.
fn del_named<T>(list: &mut Vec<T>, wanted: &str, what: &str, name: fn(&T) -> &String) -> Result<(), NodeError> {
    let before = list.len();
    list.retain(|x| name(x) != wanted);
    if list.len() == before {
        return Err(NodeError::Refused(format!("no {what} '{wanted}'")));
    }
    Ok(())
}

/// Who may talk to the daemon: root, the daemon's own user, members of `group`.
struct Access {
    uid: u32,
    gid: Option<u32>,
}

impl Access {
    fn allows(&self, stream: &UnixStream) -> Result<(), String> {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        let cred = getsockopt(stream, PeerCredentials).map_err(|e| format!("peer credentials: {e}"))?;
        if cred.uid() == 0 || cred.uid() == self.uid {
            return Ok(());
        }
        if let Some(g) = self.gid {
            if cred.gid() == g || supplementary_groups(cred.pid()).contains(&g) {
                return Ok(());
            }
        }
        Err(format!("uid {} is not allowed: use root or a member of the control group", cred.uid()))
    }
}

/// A process's supplementary groups, from /proc (empty if it is gone).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| g.split_whitespace().filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_default()
}

fn resolve_group(g: &str) -> Result<u32, String> {
    if let Ok(n) = g.parse::<u32>() {
        return Ok(n);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(gr)) => Ok(gr.gid.as_raw()),
        Ok(None) => Err(format!("group '{g}' does not exist")),
        Err(e) => Err(format!("group '{g}': {e}")),
    }
}

/// How the socket is shared among clients (see the module docs).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_clients: usize,
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_clients: MAX_CLIENTS, request_timeout: Duration::from_millis(api::REQUEST_TIMEOUT_MS) }
    }
}

/// The clients being served: what eviction needs to know of each.
#[derive(Default)]
struct Clients {
    next_id: u64,
    list: Vec<ClientSlot>,
}

struct ClientSlot {
    id: u64,
    /// A handle on its socket, to close it when evicted.
    stream: UnixStream,
    /// Running a request (never evicted then).
    busy: bool,
    /// Since when it has been waiting for its next request.
    idle_since: Instant,
    pid: Option<i32>,
}

fn lock_clients(c: &Mutex<Clients>) -> MutexGuard<'_, Clients> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

impl Clients {
    /// Takes a slot for `stream`, closing the client idle the longest when all are taken.
    /// `None`: every slot is running a request.
    fn admit(&mut self, stream: &UnixStream, max: usize) -> Option<u64> {
        if self.list.len() >= max {
            let oldest = self.list.iter().enumerate().filter(|(_, c)| !c.busy).min_by_key(|(_, c)| c.idle_since);
            let (i, _) = oldest?;
            let c = self.list.swap_remove(i);
            tracing::info!(
                pid = ?c.pid,
                idle_ms = c.idle_since.elapsed().as_millis() as u64,
                "control socket full: closing the client idle the longest"
            );
            // Never toggles O_NONBLOCK: the client's own thread shares the open file.
            send_reply_dontwait(&c.stream, &Reply::err("closed: idle while every control slot was taken"));
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
        let stream = stream.try_clone().ok()?;
        self.next_id += 1;
        let pid = peer_pid(&stream);
        self.list.push(ClientSlot { id: self.next_id, stream, busy: false, idle_since: Instant::now(), pid });
        Some(self.next_id)
    }

    fn set_busy(&mut self, id: u64, busy: bool) {
        if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
            c.busy = busy;
            c.idle_since = Instant::now();
        }
    }

    fn leave(&mut self, id: u64) {
        self.list.retain(|c| c.id != id);
    }
}

fn peer_pid(stream: &UnixStream) -> Option<i32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    getsockopt(stream, PeerCredentials).ok().map(|c| c.pid())
}

/// Binds the socket at `path` (refusing if another daemon answers there) and serves it until
/// `stop` is set. The socket file is removed when serving ends.
pub fn serve(
    path: &Path,
    group: Option<&str>,
    ctl: Arc<Control>,
    stop: Arc<AtomicBool>,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    serve_with(path, group, ctl, stop, Limits::default())
}

/// [`serve`] with other [`Limits`] (tests).
pub fn serve_with(
    path: &Path,
    group: Option<&str>,
    ctl: Arc<Control>,
    stop: Arc<AtomicBool>,
    limits: Limits,
) -> Result<std::thread::JoinHandle<()>, ServerError> {
    let err = |msg: String| ServerError::Socket { path: path.display().to_string(), msg };
    let gid = group.map(resolve_group).transpose().map_err(err)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err("exists and is not a socket; remove it or choose another control.socket".into()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(err("another vrouter is listening there".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(format!("removing the stale socket: {e}")))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|e| err(format!("chmod: {e}")))?;
    if let Some(g) = gid {
        nix::unistd::chown(path, Some(nix::unistd::Uid::from_raw(0)), Some(nix::unistd::Gid::from_raw(g)))
            .map_err(|e| err(format!("chown root:{g}: {e}")))?;
    }
    listener.set_nonblocking(true).map_err(|e| err(e.to_string()))?;
    let access = Arc::new(Access { uid: nix::unistd::geteuid().as_raw(), gid });
    let path = path.to_path_buf();
    let clients = Arc::new(Mutex::new(Clients::default()));
    std::thread::Builder::new()
        .name("vr-control".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let Some(id) = lock_clients(&clients).admit(&stream, limits.max_clients) else {
                            send_reply_dontwait(
                                &stream,
                                &Reply::err(format!(
                                    "too many clients: all {} are running requests; try again",
                                    limits.max_clients
                                )),
                            );
                            continue;
                        };
                        let (ctl, access, clients, stop) = (ctl.clone(), access.clone(), clients.clone(), stop.clone());
                        let spawned = std::thread::Builder::new().name("vr-control-client".into()).spawn(move || {
                            let busy = |b: bool| lock_clients(&clients).set_busy(id, b);
                            client(stream, &ctl, &access, &stop, limits.request_timeout, &busy);
                            lock_clients(&clients).leave(id);
                        });
                        if let Err(e) = spawned {
                            tracing::warn!("control client thread: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        // Wait for the next connection, not for a timer: a request is taken at
                        // once (it waited 25 ms on average behind a 50 ms sleep, which every
                        // agent reconcile and CNI ADD paid twice); `stop` is seen within 100 ms.
                        let mut p = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                        // SAFETY: one pollfd we own, for the listener's fd, which outlives the call.
                        unsafe { libc::poll(&mut p, 1, 100) };
                    }
                    Err(e) => {
                        tracing::warn!("control socket accept: {e}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            let _ = std::fs::remove_file(&path);
        })
        .map_err(|e| ServerError::Socket { path: String::new(), msg: e.to_string() })
}

/// Sends a reply if it fits in the socket now, without waiting (a client that does not read
/// loses it) and without touching the file's O_NONBLOCK, which another handle on the same
/// socket (a client's thread in the middle of a reply) shares: MSG_DONTWAIT is per call.
fn send_reply_dontwait(stream: &UnixStream, r: &Reply) {
    use nix::sys::socket::{send, MsgFlags};
    let mut line = serde_json::to_vec(r).expect("replies serialize");
    line.push(b'\n');
    let _ = send(stream.as_raw_fd(), &line, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
}

/// Whether the peer of `stream` has closed the connection (not merely shut down its sending
/// side, as `nc -N` does after a request): POLLHUP, which a Unix stream socket reports once
/// the other end is closed.
fn peer_gone(stream: &UnixStream) -> bool {
    let mut p = libc::pollfd { fd: stream.as_raw_fd(), events: 0, revents: 0 };
    // SAFETY: one pollfd we own, for a fd that lives as long as `stream`; timeout 0 never blocks.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Request bytes read but not yet handled. Large requests (a whole config for `apply`) take
/// up to [`api::MAX_REQUEST`]; what they took is given back once they are handled.
#[derive(Default)]
pub struct LineReader {
    buf: Vec<u8>,
}

/// Bytes a connection keeps for its next request between requests.
pub const KEEP_BUFFER: usize = 64 << 10;

#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The client closed the connection (or went silent) between requests.
    Closed,
    /// A request did not arrive whole in time, or is too large: say so and close.
    Refused(String),
}

impl LineReader {
    /// The next request line (without its newline), which must be complete by `deadline`.
    pub fn next_line(
        &mut self,
        mut stream: &UnixStream,
        deadline: Instant,
        stop: &AtomicBool,
    ) -> Result<Vec<u8>, ReadEnd> {
        let mut searched = 0;
        loop {
            if let Some(i) = self.buf[searched..].iter().position(|b| *b == b'\n') {
                let end = searched + i;
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                return Ok(line);
            }
            searched = self.buf.len();
            if self.buf.len() > api::MAX_REQUEST {
                return Err(ReadEnd::Refused(format!("request larger than {} bytes", api::MAX_REQUEST)));
            }
            let now = Instant::now();
            if now >= deadline || stop.load(Ordering::Relaxed) {
                return Err(match self.buf.is_empty() {
                    true => ReadEnd::Closed,
                    false => ReadEnd::Refused(format!(
                        "request not complete (no newline) within {} ms; closing",
                        api::REQUEST_TIMEOUT_MS
                    )),
                });
            }
            // Wake at least every 200 ms to see `stop`.
            let wait = (deadline - now).min(Duration::from_millis(200)).max(Duration::from_millis(1));
            let _ = stream.set_read_timeout(Some(wait));
            let mut chunk = [0u8; 16 << 10];
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(match self.buf.is_empty() {
                        true => ReadEnd::Closed,
                        false => ReadEnd::Refused("request not terminated by a newline".into()),
                    })
                }
                Ok(n) => {
                    let room = (api::MAX_REQUEST + 1).saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("control client: {e}");
                    return Err(ReadEnd::Closed);
                }
            }
        }
    }

    /// Gives back what a large request took (called after each request).
    pub fn release(&mut self) {
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf.shrink_to(KEEP_BUFFER.max(self.buf.len()));
        }
    }

    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

fn write_reply(mut stream: &UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).expect("replies serialize");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Serves one connection: request lines in, reply lines out. `busy` says when a request is
/// running or its reply is being written (the client is not idle then: a client reading a
/// large reply slowly is not closed to make room).
fn client(
    stream: UnixStream,
    ctl: &Control,
    access: &Access,
    stop: &AtomicBool,
    request_timeout: Duration,
    busy: &dyn Fn(bool),
) {
    if let Err(e) = access.allows(&stream) {
        tracing::warn!("control client refused: {e}");
        let _ = write_reply(&stream, &Reply::err(e));
        return;
    }
    let _ = stream.set_write_timeout(Some(request_timeout));
    let (uid, pid) = {
        use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
        match getsockopt(&stream, PeerCredentials) {
            Ok(c) => (Some(c.uid()), Some(c.pid())),
            Err(_) => (None, None),
        }
    };
    let gone = || peer_gone(&stream);
    let who = Session { uid, pid, gone: &gone };
    let mut reader = LineReader::default();
    while !stop.load(Ordering::Relaxed) {
        let line = match reader.next_line(&stream, Instant::now() + request_timeout, stop) {
            Ok(line) => line,
            Err(ReadEnd::Closed) => return,
            Err(ReadEnd::Refused(e)) => {
                let _ = write_reply(&stream, &Reply::err(e));
                return;
            }
        };
        let reply = match std::str::from_utf8(&line) {
            Err(_) => Reply::err("request is not UTF-8"),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => match api::parse_request(text.trim()) {
                Ok(req) => {
                    busy(true);
                    ctl.handle_in(req, &who)
                }
                Err(e) => Reply::err(e),
            },
        };
        drop(line);
        reader.release();
        let written = write_reply(&stream, &reply);
        busy(false);
        if written.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::build::NhKey;
    use crate::control::config::EndpointConfig;
    use crate::control::fixtures;
    use crate::control::node::NoIo;
    use std::io::{BufRead, BufReader};
    use vrouter_core::neigh::{NeighConfig, NeighTable};
    use vrouter_core::stats::DropReason;
    use vrouter_core::wire::MacAddr;

    /// A control socket over an in-memory node (no workers, no root), served until dropped.
    pub(crate) struct TestServer {
        pub path: PathBuf,
        pub ctl: Arc<Control>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    pub(crate) fn test_control() -> Arc<Control> {
        let text = format!("{}{}", fixtures::node_toml("t"), fixtures::endpoint_toml("a", 2));
        let c = Config::parse(&text, Path::new("t.toml")).unwrap();
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let (shared, fib) =
            Shared::new(Node::empty_snapshot(&c, mac), NeighTable::new(NeighConfig::default()).unwrap());
        let node = Node::new(c, mac, shared, fib, Box::new(NoIo)).unwrap();
        Arc::new(Control::new(
            node,
            vec![Arc::new(Counters::new(vrouter_core::dataplane::MAX_PORTS))],
            None,
            Instant::now(),
            Arc::new(crate::control::status::NodeStatus::new(Default::default())),
        ))
    }

    pub(crate) fn server(tag: &str, limits: Limits) -> TestServer {
        let path = std::env::temp_dir().join(format!("vr-srv-{tag}-{}.sock", std::process::id()));
        let ctl = test_control();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = serve_with(&path, None, ctl.clone(), stop.clone(), limits).unwrap();
        TestServer { path, ctl, stop, thread: Some(thread) }
    }

    fn connect(s: &TestServer) -> UnixStream {
        let c = UnixStream::connect(&s.path).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c
    }

    fn send(c: &UnixStream, req: &str) {
        (&*c).write_all(format!("{{\"version\":1,\"request\":{req}}}\n").as_bytes()).unwrap();
    }

    /// The next reply line; `None` on EOF.
    fn reply(c: &UnixStream) -> Option<Reply> {
        let mut line = String::new();
        match BufReader::new(c).read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
        }
    }

    #[test]
    fn a_request_trickled_in_is_cut_off_at_the_request_deadline() {
        let s = server("trickle", Limits { max_clients: 4, request_timeout: Duration::from_millis(400) });
        let c = connect(&s);
        let t0 = Instant::now();
        let w = c.try_clone().unwrap();
        // One byte every 100 ms: each read is quick, the request never completes.
        let writer = std::thread::spawn(move || {
            for _ in 0..30 {
                if (&w).write_all(b"{").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r = reply(&c).expect("an error reply before the close");
        assert!(!r.ok && r.error.as_deref().unwrap().contains("not complete"), "{r:?}");
        assert!(t0.elapsed() < Duration::from_millis(1500), "cut off after {:?}", t0.elapsed());
        assert!(reply(&c).is_none(), "closed");
        writer.join().unwrap();
    }

    #[test]
    fn when_every_slot_is_taken_the_client_idle_the_longest_is_closed() {
        // Idle clients would be closed after 10 s: only eviction can free a slot here.
        let s = server("evict", Limits { max_clients: 2, ..Limits::default() });
        let old = connect(&s);
        std::thread::sleep(Duration::from_millis(50));
        let newer = connect(&s);
        send(&newer, r#"{"cmd":"status"}"#);
        assert!(reply(&newer).unwrap().ok);
        // A third client is served: the one idle the longest (`old`) makes room.
        let third = connect(&s);
        send(&third, r#"{"cmd":"status"}"#);
        let r = reply(&third).unwrap();
        assert!(r.ok, "{r:?}");
        let r = reply(&old);
        assert!(r.as_ref().is_none_or(|r| r.error.as_deref().unwrap().contains("idle")), "{r:?}");
        assert!(reply(&old).is_none(), "the oldest idle client is closed");
        send(&newer, r#"{"cmd":"status"}"#);
        assert!(reply(&newer).unwrap().ok, "the other one is still served");
    }

    #[test]
    fn a_client_receiving_a_large_reply_is_not_evicted_as_idle() {
        use crate::control::build::RouteSource;
        use vrouter_core::fib::Ipv4Prefix;
        // A reply of some MB, far more than the socket buffers hold: writing it waits for the
        // client to read.
        const ROUTES: u32 = 30_000;
        let s = server("bigreply", Limits { max_clients: 2, ..Limits::default() });
        let routes =
            (0..ROUTES).map(|i| (Ipv4Prefix::new(0x0a00_0000 | (i << 8), 24).unwrap(), Some(NhKey::Blackhole)));
        s.ctl.node().set_routes(RouteSource::Cli, routes).unwrap();
        let slow = connect(&s);
        send(&slow, r#"{"cmd":"routes"}"#);
        // The reply has begun (the request was handled) and cannot all fit in the socket.
        let mut p = libc::pollfd { fd: slow.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd we own, for a fd that outlives the call.
        assert_eq!(unsafe { libc::poll(&mut p, 1, 5000) }, 1, "no reply within 5 s");
        std::thread::sleep(Duration::from_millis(100));
        let idle = connect(&s);
        send(&idle, r#"{"cmd":"status"}"#);
        assert!(reply(&idle).unwrap().ok);
        // The socket is full: the client idle the longest makes room, and that is `idle`, not
        // the one still receiving its reply.
        let third = connect(&s);
        send(&third, r#"{"cmd":"status"}"#);
        assert!(reply(&third).unwrap().ok);
        let mut line = String::new();
        slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        BufReader::new(&slow).read_line(&mut line).unwrap();
        let r: Reply =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("a whole reply, not {e}: {} bytes", line.len()));
        assert!(r.ok, "{:?}", r.error);
        let n = r.result.unwrap()["routes"].as_array().unwrap().len();
        assert!(n >= ROUTES as usize, "{n} routes");
        let r = reply(&idle);
        assert!(r.as_ref().is_none_or(|r| r.error.as_deref().unwrap().contains("idle")), "{r:?}");
        assert!(reply(&idle).is_none(), "the idle client is the one closed");
    }

    /// Waits (up to 10 s, for a loaded machine) until a trace session is running.
    fn wait_for_trace(s: &TestServer) {
        let t0 = Instant::now();
        while s.ctl.shared.observe.active() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(10), "the trace did not start within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_trace_ends_when_its_client_goes_away() {
        let s = server("gone", Limits::default());
        let c1 = connect(&s);
        send(&c1, r#"{"cmd":"trace","count":1,"timeout_ms":600000}"#);
        wait_for_trace(&s);
        drop(c1);
        let c2 = connect(&s);
        let t0 = Instant::now();
        loop {
            send(&c2, r#"{"cmd":"trace","count":1,"timeout_ms":10}"#);
            let r = reply(&c2).unwrap();
            if r.ok {
                break;
            }
            assert!(r.error.as_deref().unwrap().contains("already running"), "{r:?}");
            assert!(t0.elapsed() < Duration::from_secs(2), "the abandoned trace still holds the session");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn trace_stop_ends_a_running_trace_and_its_client_gets_the_reply() {
        let s = server("stop", Limits::default());
        let c1 = connect(&s);
        let c2 = connect(&s);
        send(&c2, r#"{"cmd":"trace-stop"}"#);
        assert_eq!(reply(&c2).unwrap().result.unwrap()["stopped"], false, "nothing to stop");
        send(&c1, r#"{"cmd":"trace","count":5,"timeout_ms":600000}"#);
        wait_for_trace(&s);
        let t0 = Instant::now();
        send(&c2, r#"{"cmd":"trace-stop"}"#);
        assert_eq!(reply(&c2).unwrap().result.unwrap()["stopped"], true);
        let r = reply(&c1).unwrap();
        assert!(r.ok && r.result.unwrap()["packets"].as_array().unwrap().is_empty());
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(s.ctl.shared.observe.active(), 0);
    }

    fn ok(ctl: &Control, req: Request) -> Value {
        let r = ctl.handle(req);
        assert!(r.ok, "{r:?}");
        r.result.unwrap()
    }

    #[test]
    fn route_lookup_answers_the_longest_match() {
        let ctl = test_control();
        let lookup = |a: &str| ok(&ctl, Request::RouteLookup { addr: a.parse().unwrap() });
        let v = lookup("10.244.1.2");
        assert_eq!((v["prefix"].as_str(), v["source"].as_str()), (Some("10.244.1.2/32"), Some("node")), "{v}");
        assert!(v["nexthop"].as_str().unwrap().contains("local port 2"), "{v}");
        assert_eq!(lookup("10.244.1.9")["prefix"], "10.244.1.0/26", "the blackholed block");
        assert_eq!(lookup("192.168.1.77")["nexthop"], "connected");
        assert_eq!(lookup("8.8.8.8")["prefix"], Value::Null, "no default route in this config");
        ctl.node()
            .cli_route("0.0.0.0/0".parse().unwrap(), Some(NhKey::Gateway("192.168.1.1".parse().unwrap())))
            .unwrap();
        let v = lookup("8.8.8.8");
        assert_eq!((v["prefix"].as_str(), v["nexthop"].as_str()), (Some("0.0.0.0/0"), Some("via 192.168.1.1")), "{v}");
        assert!(v["forwarding"].as_str().unwrap().contains("Gateway"), "{v}");
    }

    #[test]
    fn counters_clear_counts_from_zero_without_touching_the_workers_counters() {
        let ctl = test_control();
        let c = &ctl.counters[0];
        c.punted.fetch_add(5, Ordering::Relaxed);
        c.count_drop(DropReason::PolicyDeny);
        let total = |ctl: &Control| ok(ctl, Request::Counters)["total"].clone();
        assert_eq!(total(&ctl)["counters"]["punted"], 5);
        assert_eq!(ok(&ctl, Request::CountersClear)["cleared"], true);
        let t = total(&ctl);
        assert_eq!((t["counters"]["punted"].as_u64(), t["drops"]["policy/deny"].as_u64()), (Some(0), Some(0)), "{t}");
        c.punted.fetch_add(2, Ordering::Relaxed);
        let v = ok(&ctl, Request::Counters);
        assert_eq!(v["total"]["counters"]["punted"], 2);
        assert_eq!(v["workers"][0]["worker"], 0);
        assert_eq!(v["total"]["node"], "t", "names are kept");
        assert_eq!(c.punted.load(Ordering::Relaxed), 7, "the worker's counter is not reset");
        assert!(ctl.stats_document().contains(r#""punted":7"#), "nor the stats file's");
    }

    #[test]
    fn apply_errors_name_the_file_the_client_read() {
        let ctl = test_control();
        let apply = |file: Option<&str>| Request::Apply {
            config: "[node]\nname = 1\n".into(),
            dry_run: true,
            file: file.map(String::from),
            if_generation: None,
        };
        let e = ctl.handle(apply(Some("/etc/vrouter/node.toml"))).error.unwrap();
        assert!(e.contains("/etc/vrouter/node.toml"), "{e}");
        let e = ctl.handle(apply(None)).error.unwrap();
        assert!(e.contains("<apply>"), "{e}");
        let line = r#"{"version":1,"request":{"cmd":"apply","config":"","file":"a.toml"}}"#;
        assert!(matches!(api::parse_request(line).unwrap(), Request::Apply { file: Some(f), .. } if f == "a.toml"));
    }

    #[test]
    fn apply_with_if_generation_refuses_a_config_changed_since_it_was_read() {
        let ctl = test_control();
        let g0 = ok(&ctl, Request::ConfigShow)["generation"].as_u64().unwrap();
        assert!(g0 > 0, "the first config is a change");
        let shown = ok(&ctl, Request::ConfigShow)["config"].as_str().unwrap().to_string();
        let apply =
            |config: String, g: Option<u64>| Request::Apply { config, dry_run: false, file: None, if_generation: g };
        // An unchanged config applied is no change: same generation.
        ok(&ctl, apply(shown.clone(), Some(g0)));
        assert_eq!(ok(&ctl, Request::ConfigShow)["generation"].as_u64(), Some(g0));
        // Someone else changes it (an endpoint edit counts) ...
        ok(&ctl, Request::EndpointAdd { endpoint: fixtures::endpoint("b", 3) });
        let g1 = ok(&ctl, Request::ConfigShow)["generation"].as_u64().unwrap();
        assert_eq!(g1, g0 + 1);
        // ... so a change computed from the old read is refused, distinctly, and changes nothing.
        let mine = shown.replace("10.244.1.2", "10.244.1.9");
        let r = ctl.handle(apply(mine.clone(), Some(g0)));
        let e = r.clone().into_result::<Value>().unwrap_err();
        assert!(e.is_generation_changed(), "{r:?}");
        assert!(e.to_string().contains(&format!("runs generation {g1}, not {g0}")), "{e}");
        assert_eq!(ctl.node().config().endpoints.len(), 2, "nothing applied");
        // Read again, redo: accepted, and the generation moves on.
        ok(&ctl, apply(mine.clone(), Some(g1)));
        assert_eq!(ok(&ctl, Request::ConfigShow)["generation"].as_u64(), Some(g1 + 1));
        // Without if_generation, apply is as before (last writer wins).
        ok(&ctl, apply(shown, None));
        assert_eq!(ctl.node().config().endpoints[0].addrs, ["10.244.1.2".parse::<Ipv4Addr>().unwrap()]);
    }

    #[test]
    fn endpoint_add_of_the_running_endpoint_is_no_change() {
        let ctl = test_control();
        let mut e = fixtures::endpoint("default/n1-cni-0123456789ab-eth0", 3);
        e.tap = "vr0123456789a".into();
        let r = ok(&ctl, Request::EndpointAdd { endpoint: e.clone() });
        assert_eq!(r["endpoints_added"][0], "default/n1-cni-0123456789ab-eth0", "a name with '/' is fine: {r}");
        let g = ok(&ctl, Request::ConfigShow)["generation"].clone();
        let published = ctl.node().snapshots_published();
        // The same again (the CNI plugin and the agent racing): success, nothing done.
        let r = ok(&ctl, Request::EndpointAdd { endpoint: e.clone() });
        assert_eq!(r["endpoints_added"], serde_json::json!([]), "{r}");
        assert_eq!(ctl.node().snapshots_published(), published, "nothing published");
        assert_eq!(ok(&ctl, Request::ConfigShow)["generation"], g);
        // The same port with other policy lists: no change either, the running lists stay.
        ctl.handle(Request::PolicySet { name: "vrouter.pending".into(), rules: vec![] });
        let pending = EndpointConfig { ingress: vec!["vrouter.pending".into()], ..e.clone() };
        ok(&ctl, Request::EndpointAdd { endpoint: pending });
        let running = ctl.node().config().endpoints.iter().find(|x| x.name == e.name).unwrap().clone();
        assert!(running.ingress.is_empty(), "{running:?}");
        assert_eq!(
            ok(&ctl, Request::ConfigShow)["generation"].as_u64(),
            g.as_u64().map(|g| g + 1),
            "only the policy set"
        );
        // Another port under the same name is still refused.
        let other = EndpointConfig { addrs: vec!["10.244.1.4".parse().unwrap()], ..e.clone() };
        let r = ctl.handle(Request::EndpointAdd { endpoint: other });
        assert!(r.error.as_deref().unwrap_or("").contains("exists; delete it first"), "{r:?}");
        // And it goes by its name, slash and all.
        ok(&ctl, Request::EndpointDel { name: e.name.clone() });
        assert!(ctl.node().config().endpoints.iter().all(|x| x.name != e.name));
    }

    #[test]
    fn config_show_warns_when_the_file_no_longer_matches() {
        let dir = std::env::temp_dir().join(format!("vr-cfgshow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("node.toml");
        let text = format!("{}{}", fixtures::node_toml("t"), fixtures::endpoint_toml("a", 2));
        std::fs::write(&f, &text).unwrap();
        let mut ctl = Arc::into_inner(test_control()).unwrap();
        ctl.config_path = Some(f.clone());
        let v = ok(&ctl, Request::ConfigShow);
        assert_eq!((v["matches_file"].as_bool(), &v["warning"]), (Some(true), &Value::Null), "{v}");
        let shown = Config::parse(v["config"].as_str().unwrap(), Path::new("shown")).unwrap();
        assert_eq!(&shown, ctl.node().config(), "the TOML shown parses back to the running config");
        std::fs::write(&f, text.replace("10.244.1.2", "10.244.1.5")).unwrap();
        let v = ok(&ctl, Request::ConfigShow);
        assert_eq!(v["matches_file"], false);
        assert!(v["warning"].as_str().unwrap().contains("differs from the running config"), "{v}");
        std::fs::write(&f, "bogus").unwrap();
        assert!(ok(&ctl, Request::ConfigShow)["warning"].as_str().unwrap().contains("would fail"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_change_is_logged_with_who_made_it() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt().with_ansi(false).with_writer(move || w.clone()).finish();
        let ctl = test_control();
        let who = Session { uid: Some(1000), pid: Some(4242), gone: &|| false };
        tracing::subscriber::with_default(sub, || {
            let add = Request::RouteAdd { prefix: "203.0.113.0/24".parse().unwrap(), nexthop: NhKey::Blackhole };
            assert!(ctl.handle_in(add, &who).ok);
            assert!(!ctl.handle_in(Request::RouteDel { prefix: "198.51.100.0/24".parse().unwrap() }, &who).ok);
            assert!(ctl.handle_in(Request::Status, &who).ok);
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "two changes, no line for status: {log}");
        assert!(lines[0].contains("INFO") && lines[0].contains("control: change made"), "{log}");
        assert!(lines[0].contains("uid=Some(1000)") && lines[0].contains("pid=Some(4242)"), "{log}");
        assert!(lines[0].contains("203.0.113.0/24"), "{log}");
        assert!(
            lines[1].contains("WARN") && lines[1].contains("change refused") && lines[1].contains("no CLI route"),
            "{log}"
        );
    }

    #[test]
    fn a_large_request_buffer_is_given_back_after_the_request() {
        let (a, b) = UnixStream::pair().unwrap();
        let big = std::thread::spawn(move || {
            let mut line = vec![b'x'; 3 << 20];
            line.extend_from_slice(b"\nnext\n");
            (&a).write_all(&line).unwrap();
            a
        });
        let mut r = LineReader::default();
        let stop = AtomicBool::new(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(r.next_line(&b, deadline, &stop).unwrap().len(), 3 << 20);
        assert!(r.capacity() >= 3 << 20);
        r.release();
        assert!(r.capacity() <= KEEP_BUFFER, "{} bytes kept", r.capacity());
        assert_eq!(r.next_line(&b, deadline, &stop).unwrap(), b"next", "what followed is kept");
        drop(big.join().unwrap());
        assert_eq!(r.next_line(&b, deadline, &stop), Err(ReadEnd::Closed));
    }
}
