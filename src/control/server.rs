//! The control socket: a Unix socket (mode 0660, owner root and an optional group) that
//! `vrouterctl` talks to with the protocol of [`super::api`].
//!
//! Forwarding never waits for it: requests run on the socket's own threads and reach the
//! workers only through [`super::node::Node`] (snapshots, FIB updates, grace periods) and
//! [`crate::dataplane::observe`]. A client is checked by its peer credentials (root, the
//! daemon's own user, or a member of the configured group), may keep at most one request in
//! flight, is cut off after [`api::IDLE_TIMEOUT_MS`] of silence or a request line over
//! [`api::MAX_REQUEST`] bytes, and at most [`MAX_CLIENTS`] are served at once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::api::{self, Reply, Request};
use super::config::Config;
use super::node::{Node, NodeError};
use crate::dataplane::observe::{CaptureSpec, Captured, TraceRecord};
use crate::dataplane::{PortId, Shared};
use crate::stats::{Counters, DropReason};

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
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control socket {path}: {msg}")]
    Socket { path: String, msg: String },
}

fn ipstr(a: u32) -> String {
    Ipv4Addr::from(a).to_string()
}

impl Control {
    pub fn node(&self) -> MutexGuard<'_, Node> {
        // A panic while holding it would have been a bug in Node; its state is still the last
        // consistent one published, so keep serving.
        self.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the config file and applies it.
    pub fn reload(&self) -> Result<Value, String> {
        let path = self.config_path.as_ref().ok_or("the daemon was not started from a config file")?;
        let cfg = Config::load(path).map_err(|e| e.to_string())?;
        let r = self.node().apply(cfg).map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(r).expect("plain struct"))
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
        match self.dispatch(req) {
            Ok(v) => Reply::ok(v),
            Err(e) => Reply::err(e),
        }
    }

    fn edit(&self, f: impl FnOnce(&mut Config) -> Result<(), NodeError>) -> Result<Value, String> {
        let r = self.node().edit(f).map_err(|e| e.to_string())?;
        Ok(serde_json::to_value(r).expect("plain struct"))
    }

    fn dispatch(&self, req: Request) -> Result<Value, String> {
        let refuse = |m: String| Err(NodeError::Refused(m));
        match req {
            Request::Status => {
                let node = self.node();
                let snap = self.shared.snapshot.load();
                Ok(json!({
                    "node": node.config().node.name,
                    "version": env!("CARGO_PKG_VERSION"),
                    "protocol": api::VERSION,
                    "uptime_s": self.started.elapsed().as_secs(),
                    "workers": self.counters.len(),
                    "generation": snap.generation,
                    "routes": node.fib_len(),
                    "fib_bytes": node.fib_memory_bytes(),
                    "endpoints": snap.endpoints.len(),
                    "peers": snap.peers.len(),
                    "nexthops": snap.nexthops.len(),
                    "neighbours": self.shared.neigh.len(),
                    "connections": self.connections(),
                    "policy_generation": snap.policy.generation(),
                    "snapshots_published": node.snapshots_published(),
                    "grace_timeouts": node.grace_timeouts,
                }))
            }
            Request::Routes { source, within } => {
                let node = self.node();
                let rejected: Vec<Value> = node
                    .kernel_rejected()
                    .iter()
                    .map(|(p, why)| json!({"prefix": p, "source": "kernel", "error": why}))
                    .collect();
                Ok(json!({"routes": node.routes(source, within), "not_installed": rejected}))
            }
            Request::RouteAdd { prefix, nexthop } => {
                let n = self.node().cli_route(prefix, Some(nexthop)).map_err(|e| e.to_string())?;
                Ok(json!({"routes_changed": n}))
            }
            Request::RouteDel { prefix } => {
                let n = self.node().cli_route(prefix, None).map_err(|e| e.to_string())?;
                Ok(json!({"routes_changed": n}))
            }
            Request::RouteFlushKernel => {
                let n = self.node().flush_kernel_routes().map_err(|e| e.to_string())?;
                Ok(json!({"routes_changed": n}))
            }
            Request::Peers => Ok(json!({"peers": self.node().config().peers})),
            Request::PeerAdd { peer } => self.edit(|c| add_named(&mut c.peers, peer, "peer", |p| &p.name)),
            Request::PeerDel { name } => self.edit(|c| del_named(&mut c.peers, &name, "peer", |p| &p.name)),
            Request::Endpoints => {
                let node = self.node();
                let ports = node.pod_ports();
                let eps: Vec<Value> = node
                    .config()
                    .endpoints
                    .iter()
                    .map(|e| {
                        let port = ports.iter().find(|(n, _)| *n == e.name).map(|(_, p)| *p);
                        let mut v = serde_json::to_value(e).expect("plain struct");
                        v["port"] = json!(port);
                        v
                    })
                    .collect();
                Ok(json!({"endpoints": eps}))
            }
            Request::EndpointAdd { endpoint } => {
                self.edit(|c| add_named(&mut c.endpoints, endpoint, "endpoint", |e| &e.name))
            }
            Request::EndpointDel { name } => self.edit(|c| del_named(&mut c.endpoints, &name, "endpoint", |e| &e.name)),
            Request::Policies => {
                let node = self.node();
                let c = node.config();
                Ok(json!({"global_rules": c.global_rules, "policies": c.policies}))
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
                let ports: Vec<Value> = snap
                    .ports
                    .iter()
                    .enumerate()
                    .filter_map(|(i, p)| p.as_ref().map(|p| (i, p)))
                    .map(|(i, p)| {
                        let st: crate::stats::counters::PortStats = self.counters.iter().map(|c| c.port(i)).sum();
                        let endpoint = snap
                            .port_endpoint
                            .get(i)
                            .copied()
                            .flatten()
                            .map(|e| snap.endpoints[e as usize].name.clone());
                        json!({"id": i, "name": p.name, "kind": p.kind, "mac": p.mac.to_string(), "mtu": p.mtu,
                               "endpoint": endpoint, "stats": st})
                    })
                    .collect();
                Ok(json!({"ports": ports}))
            }
            Request::Neighbours => {
                let n: Vec<Value> = self
                    .shared
                    .neigh
                    .entries()
                    .iter()
                    .map(|e| {
                        json!({"ip": ipstr(e.ip), "mac": e.mac.map(|m| crate::wire::MacAddr(m).to_string()),
                               "state": format!("{:?}", e.state).to_lowercase(), "probes": e.probes})
                    })
                    .collect();
                Ok(json!({"neighbours": n}))
            }
            Request::NeighboursFlush { ip } => {
                let neigh = &self.shared.neigh;
                if let Some(a) = ip {
                    let at = u32::from(a);
                    if neigh.entries().iter().any(|e| e.ip == at && e.state == crate::neigh::NeighState::Static) {
                        return Err(format!(
                            "{a} is a static neighbour from the config: remove it from [[neighbours]] and apply"
                        ));
                    }
                }
                let n = neigh.flush(ip.map(u32::from));
                tracing::info!(ip = ?ip, flushed = n, "neighbours flushed (control socket)");
                Ok(json!({"flushed": n}))
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
                        conns.push(json!({"worker": w, "proto": k.proto, "src": ipstr(k.src), "sport": k.sport,
                            "dst": ipstr(k.dst), "dport": k.dport, "state": e.state.name(),
                            "policy_generation": e.generation}));
                    }
                }
                Ok(json!({"connections": conns, "total": total, "workers_not_answering": missing}))
            }
            Request::Counters => Ok(self.counters_json()),
            Request::Apply { config, dry_run } => {
                let cfg = Config::parse(&config, Path::new("<apply>")).map_err(|e| e.to_string())?;
                let r = match dry_run {
                    true => serde_json::to_value(self.node().plan(&cfg).map_err(|e| e.to_string())?),
                    false => serde_json::to_value(self.node().apply(cfg).map_err(|e| e.to_string())?),
                };
                Ok(r.expect("plain struct"))
            }
            Request::Reload => self.reload(),
            Request::Trace { count, port, timeout_ms } => self.trace(count, port, timeout_ms),
            Request::Capture { count, port, rx, tx, snaplen, timeout_ms } => {
                let port = port.map(|p| self.port_id(&p)).transpose()?;
                let frames = self.capture(CaptureSpec { count, port, rx, tx, snaplen }, timeout_ms)?;
                Ok(json!({"frames": frames}))
            }
        }
    }

    /// Counters per worker and summed: ports, drops by reason, the rest.
    pub fn counters_json(&self) -> Value {
        use std::sync::atomic::Ordering::Relaxed;
        let snap = self.shared.snapshot.load();
        let names: Vec<String> = snap.port_names();
        let per_worker: Vec<Value> = self
            .counters
            .iter()
            .enumerate()
            .map(|(w, c)| {
                let drops: serde_json::Map<String, Value> =
                    c.drop_table().into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect();
                let ports: serde_json::Map<String, Value> = names
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| !n.is_empty())
                    .map(|(i, n)| (n.clone(), serde_json::to_value(c.port(i)).expect("plain struct")))
                    .collect();
                json!({"worker": w, "ports": ports, "drops": drops,
                       "icmp_errors_sent": c.icmp_errors_sent.load(Relaxed),
                       "ipip_encap": c.ipip_encap.load(Relaxed), "ipip_decap": c.ipip_decap.load(Relaxed),
                       "punted": c.punted.load(Relaxed)})
            })
            .collect();
        let node_name = self.node().config().node.name.clone();
        let mut total = super::daemon::stats_json(&node_name, &names, &self.counters);
        total["drop_reasons"] = json!(DropReason::ALL.iter().map(|r| r.name()).collect::<Vec<_>>());
        json!({"total": total, "workers": per_worker})
    }

    /// Connections tracked by all workers (their gauges).
    fn connections(&self) -> u64 {
        self.counters.iter().map(|c| c.conntrack_entries.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// The Prometheus page (see [`super::metrics`]).
    pub fn metrics_text(&self) -> String {
        use super::metrics::{render, Extra};
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
        ];
        let mut out = String::new();
        render(&mut out, &node_name, &names, &self.counters, &extra);
        out
    }

    fn trace(&self, count: u32, port: Option<String>, timeout_ms: u64) -> Result<Value, String> {
        let port = port.map(|p| self.port_id(&p)).transpose()?;
        let obs = &self.shared.observe;
        obs.start_trace(count, port).map_err(|e| e.to_string())?;
        let mut records: Vec<TraceRecord> = collect(timeout_ms, || obs.take_trace(), || obs.stop_trace());
        records.sort_by_key(|r| r.seq);
        let node = self.node();
        let out: Vec<Value> = records
            .into_iter()
            .map(|r| {
                let route = r.lookup.and_then(|(dst, _)| node.route_for(dst));
                let mut v = serde_json::to_value(&r).expect("plain struct");
                v["route"] = match route {
                    Some((p, src, nh)) => json!({"prefix": p, "source": src, "nexthop": nh}),
                    None => Value::Null,
                };
                v
            })
            .collect();
        Ok(json!({"packets": out, "wanted": count}))
    }

    fn capture(&self, spec: CaptureSpec, timeout_ms: u64) -> Result<Vec<Captured>, String> {
        let obs = &self.shared.observe;
        obs.start_capture(spec).map_err(|e| e.to_string())?;
        Ok(collect(timeout_ms, || obs.take_capture(), || obs.stop_capture()))
    }
}

/// What an observation session records until it has all it wanted (`take` says so) or
/// `timeout_ms` passed; then the session is stopped (`stop` returns the rest).
fn collect<T>(timeout_ms: u64, take: impl Fn() -> (Vec<T>, bool), stop: impl FnOnce() -> Vec<T>) -> Vec<T> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms.min(api::MAX_WAIT_MS));
    let mut all = Vec::new();
    loop {
        let (mut got, done) = take();
        all.append(&mut got);
        if done || Instant::now() >= deadline {
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

/// Binds the socket at `path` (refusing if another daemon answers there) and serves it until
/// `stop` is set. The socket file is removed when serving ends.
pub fn serve(
    path: &Path,
    group: Option<&str>,
    ctl: Arc<Control>,
    stop: Arc<AtomicBool>,
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
    let clients = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("vr-control".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
                            clients.fetch_sub(1, Ordering::AcqRel);
                            let _ =
                                write_reply(&stream, &Reply::err(format!("too many clients (at most {MAX_CLIENTS})")));
                            continue;
                        }
                        let (ctl, access, clients, stop) = (ctl.clone(), access.clone(), clients.clone(), stop.clone());
                        let spawned = std::thread::Builder::new().name("vr-control-client".into()).spawn(move || {
                            client(stream, &ctl, &access, &stop);
                            clients.fetch_sub(1, Ordering::AcqRel);
                        });
                        if let Err(e) = spawned {
                            tracing::warn!("control client thread: {e}");
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(50));
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

fn write_reply(mut stream: &UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).expect("replies serialize");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Serves one connection: request lines in, reply lines out.
fn client(stream: UnixStream, ctl: &Control, access: &Access, stop: &AtomicBool) {
    if let Err(e) = access.allows(&stream) {
        tracing::warn!("control client refused: {e}");
        let _ = write_reply(&stream, &Reply::err(e));
        return;
    }
    let idle = Duration::from_millis(api::IDLE_TIMEOUT_MS);
    let _ = stream.set_read_timeout(Some(idle));
    let _ = stream.set_write_timeout(Some(idle));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut line = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match (&mut reader).take(api::MAX_REQUEST as u64 + 1).read_until(b'\n', &mut line) {
            Ok(0) => return, // closed
            Ok(_) if line.len() > api::MAX_REQUEST => {
                let _ = write_reply(&stream, &Reply::err(format!("request larger than {} bytes", api::MAX_REQUEST)));
                return;
            }
            Ok(_) if !line.ends_with(b"\n") => {
                let _ = write_reply(&stream, &Reply::err("request not terminated by a newline"));
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
                    tracing::debug!("control client: {e}");
                }
                return;
            }
        }
        let reply = match std::str::from_utf8(&line) {
            Err(_) => Reply::err("request is not UTF-8"),
            Ok(text) if text.trim().is_empty() => continue,
            Ok(text) => match api::parse_request(text.trim()) {
                Ok(req) => ctl.handle(req),
                Err(e) => Reply::err(e),
            },
        };
        if write_reply(&stream, &reply).is_err() {
            return;
        }
    }
}
