//! Prometheus metrics: the workers' counters in the text exposition format 0.0.4, and a small
//! HTTP server that hands them to a scraper.
//!
//! Every counter series is per worker (`worker="0"`). Sums across workers are PromQL's job
//! (`sum without (worker) (rate(vrouter_drops_total[5m]))`), so no totals are emitted and no
//! series changes meaning when the number of workers does. Every drop reason is emitted, zero or
//! not: `rate()` and `increase()` only see an increment on a series that existed before it, and
//! a stable set of series lets an alert name a reason that has never fired yet.
//!
//! Per-port series carry the port's name and, on a pod's port, the pod's (`pod="web-1"`,
//! [`render_with_pods`]): TAP names are the node's business, pod names are what dashboards
//! and alerts select on.
//!
//! The node's name is a label on one `vrouter_node_info` series rather than on every series:
//! which target a sample came from is the scraper's knowledge (its `instance` and `job` labels),
//! and `* on (instance) group_left (node) vrouter_node_info` adds the name where a query wants it.
//!
//! The server ([`serve`]) answers one request per connection on a single thread, with
//! non-blocking sockets, so that no client can hold it or hurt the node:
//! - a request head must arrive complete within [`HEAD_TIMEOUT`] and [`MAX_HEAD`] bytes, and a
//!   response must be taken within [`WRITE_TIMEOUT`], or the connection is closed;
//! - at most [`MAX_CONNECTIONS`] are open; a new one displaces the oldest that has not sent its
//!   request yet, so clients that connect and say nothing cannot lock a scraper out;
//! - the stop flag is checked at least every 50 ms.
//!
//! The thread only reads the counters the workers publish; it never waits on a worker.
//!
//! Wiring it into the daemon: the stats loop, which owns the FIB and the other node-wide state,
//! renders the page each round; the server hands out the latest one.
//!
//! ```no_run
//! # use std::sync::{atomic::AtomicBool, Arc, Mutex};
//! # use vrouter::control::metrics::{self, Extra};
//! # use vrouter_core::stats::Counters;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let (stop, started) = (Arc::new(AtomicBool::new(false)), std::time::Instant::now());
//! # let (counters, port_names) = (vec![Arc::new(Counters::new(64))], vec!["eth0".to_string()]);
//! # let (routes, generation) = (12, 1);
//! let page = Arc::new(Mutex::new(String::new()));
//! let served = page.clone();
//! let (thread, addr) =
//!     metrics::serve("0.0.0.0:9469".parse()?, stop.clone(), move || served.lock().unwrap().clone())?;
//! tracing::info!("metrics at http://{addr}/metrics");
//! // Each round of the stats loop:
//! let mut text = String::new();
//! let extra = [Extra::routes(routes), Extra::snapshot_generation(generation), Extra::uptime(started.elapsed())];
//! metrics::render(&mut text, "node-a", &port_names, &counters, &extra);
//! *page.lock().unwrap() = text;
//! // After the workers have stopped (the same `stop` flag ends the server):
//! thread.join().ok();
//! # Ok(())
//! # }
//! ```

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::stats::WORKER_COUNTERS;
use vrouter_core::stats::counters::PortStats;
use vrouter_core::stats::{Counters, DropReason};

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Most connections open at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time from accepting a connection to having its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a client to take the whole response.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// After the response, how long to read and discard what the client still sends, so that
/// closing with unread data does not reset the connection and destroy the response in flight.
const LINGER: Duration = Duration::from_millis(500);
/// Sleep between passes with no connection open; bounds the reaction to `stop` and to a new client.
const TICK_IDLE: Duration = Duration::from_millis(50);
/// Sleep between passes while connections wait on their clients.
const TICK_WAITING: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

/// How a metric behaves over time (its `# TYPE`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (resets to zero when the daemon restarts). The name must end in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A node-wide value the daemon knows and the workers' counters do not (routes, neighbours,
/// uptime...). Emitted without labels. The constructors for the usual ones fix their names, so
/// dashboards do not depend on how the daemon spells them.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Extra {
    /// A metric name starting `vrouter_`; a counter's ends in `_total`.
    pub name: &'static str,
    /// One line for `# HELP`.
    pub help: &'static str,
    pub kind: Kind,
    pub value: f64,
}

impl Extra {
    pub const fn gauge(name: &'static str, help: &'static str, value: f64) -> Extra {
        Extra { name, help, kind: Kind::Gauge, value }
    }

    pub const fn counter(name: &'static str, help: &'static str, value: f64) -> Extra {
        Extra { name, help, kind: Kind::Counter, value }
    }

    /// `vrouter_fib_routes`: routes installed in the FIB.
    pub fn routes(n: usize) -> Extra {
        Extra::gauge("vrouter_fib_routes", "Routes installed in the FIB.", n as f64)
    }

    /// `vrouter_neighbours`: entries in the neighbour (ARP) table.
    pub fn neighbours(n: usize) -> Extra {
        Extra::gauge("vrouter_neighbours", "Entries in the neighbour (ARP) table, resolved or not.", n as f64)
    }

    /// `vrouter_conntrack_entries`: connection-tracking entries in use, all workers together.
    pub fn conntrack_entries(n: usize) -> Extra {
        Extra::gauge("vrouter_conntrack_entries", "Connection-tracking entries in use, all workers together.", n as f64)
    }

    /// `vrouter_snapshot_generation`: the generation of the forwarding snapshot in use.
    pub fn snapshot_generation(generation: u64) -> Extra {
        Extra::gauge(
            "vrouter_snapshot_generation",
            "Generation of the forwarding snapshot the workers use; changes on every reconfiguration.",
            generation as f64,
        )
    }

    /// `vrouter_uptime_seconds`: time since the daemon started.
    pub fn uptime(up: Duration) -> Extra {
        Extra::gauge("vrouter_uptime_seconds", "Seconds since the daemon started.", up.as_secs_f64())
    }
}

const NODE_INFO: &str = "vrouter_node_info";

/// A family of per-worker counters: its name, its help, and where each worker keeps it.
struct Family<F> {
    name: &'static str,
    help: &'static str,
    read: F,
}

const fn fam<F>(name: &'static str, help: &'static str, read: F) -> Family<F> {
    Family { name, help, read }
}

type PortField = fn(&PortStats) -> u64;

const PORT_FAMILIES: [Family<PortField>; 4] = [
    fam("vrouter_port_receive_packets_total", "Frames received on a port.", |p| p.rx_packets),
    fam("vrouter_port_receive_bytes_total", "Bytes received on a port, Ethernet header included.", |p| p.rx_bytes),
    fam("vrouter_port_transmit_packets_total", "Frames sent on a port.", |p| p.tx_packets),
    fam("vrouter_port_transmit_bytes_total", "Bytes sent on a port, Ethernet header included.", |p| p.tx_bytes),
];

const DROPS: &str = "vrouter_drops_total";

/// Whether `name` is one of the families [`render`] emits itself.
fn is_builtin(name: &str) -> bool {
    name == NODE_INFO
        || name == DROPS
        || PORT_FAMILIES.iter().any(|f| f.name == name)
        || WORKER_COUNTERS.iter().any(|f| f.metric == name)
}

/// Why an extra cannot be emitted, if it cannot: a bad name would make the scraper reject the
/// whole page, not just that series.
fn extra_problem(e: &Extra, earlier: &[Extra]) -> Option<&'static str> {
    let name_ok =
        e.name.starts_with("vrouter_") && e.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    if !name_ok {
        Some("the name must start with `vrouter_` and hold only ASCII letters, digits, `_` and `:`")
    } else if (e.kind == Kind::Counter) != e.name.ends_with("_total") {
        Some("counter names, and only they, end in `_total`")
    } else if is_builtin(e.name) || earlier.iter().any(|x| x.name == e.name) {
        Some("the name is already in use")
    } else {
        None
    }
}

/// Appends the metrics page to `out`.
///
/// `counters` holds one entry per worker, the worker id being its index. `port_names` gives each
/// port's name by port index; ports without a name (an empty string, or past the end of
/// `port_names`) are left out, and so is a later port with the same name as an earlier one.
/// Extras with an unusable name are left out (and fail a debug assertion).
pub fn render<S: AsRef<str>>(
    out: &mut String,
    node: &str,
    port_names: &[S],
    counters: &[Arc<Counters>],
    extra: &[Extra],
) {
    render_with_pods(out, node, port_names, &[] as &[Option<&str>], counters, extra)
}

/// [`render`], with the name of the pod behind each port (by port index, `None` for the
/// uplink and the host port) as a `pod` label on the per-port series, so a dashboard can
/// select a pod's traffic by its name rather than by its TAP's.
pub fn render_with_pods<S: AsRef<str>, P: AsRef<str>>(
    out: &mut String,
    node: &str,
    port_names: &[S],
    pods: &[Option<P>],
    counters: &[Arc<Counters>],
    extra: &[Extra],
) {
    family(out, NODE_INFO, "Constant 1, labelled with the node's name and the vrouter version.", Kind::Gauge);
    out.push_str(NODE_INFO);
    out.push_str("{node=\"");
    push_label_value(out, node);
    out.push_str("\",version=\"");
    push_label_value(out, env!("CARGO_PKG_VERSION"));
    out.push_str("\"} 1\n");

    let ports: Vec<(usize, &str)> = port_names
        .iter()
        .map(AsRef::as_ref)
        .enumerate()
        .filter(|&(i, name)| !name.is_empty() && !port_names[..i].iter().any(|n| n.as_ref() == name))
        .collect();
    for f in &PORT_FAMILIES {
        family(out, f.name, f.help, Kind::Counter);
        for &(port, port_name) in &ports {
            for (worker, c) in counters.iter().enumerate() {
                if port < c.ports() {
                    let pod = pods.get(port).and_then(|p| p.as_ref()).map(AsRef::as_ref);
                    port_sample(out, f.name, port_name, pod, worker, (f.read)(&c.port(port)));
                }
            }
        }
    }

    family(out, DROPS, "Frames dropped, by reason (stable names, as in the stats file).", Kind::Counter);
    for reason in DropReason::ALL {
        for (worker, c) in counters.iter().enumerate() {
            sample(out, DROPS, ("reason", reason.name()), worker, c.drops(*reason));
        }
    }

    for f in &WORKER_COUNTERS {
        family(out, f.metric, f.help, Kind::Counter);
        for (worker, c) in counters.iter().enumerate() {
            let _ = writeln!(out, "{}{{worker=\"{worker}\"}} {}", f.metric, (f.read)(c).load(Relaxed));
        }
    }

    for (i, e) in extra.iter().enumerate() {
        if let Some(problem) = extra_problem(e, &extra[..i]) {
            debug_assert!(false, "metrics: extra {:?} left out: {problem}", e.name);
            continue;
        }
        family(out, e.name, e.help, e.kind);
        out.push_str(e.name);
        out.push(' ');
        push_value(out, e.value);
        out.push('\n');
    }
}

/// `# HELP` and `# TYPE` for one family.
fn family(out: &mut String, name: &str, help: &str, kind: Kind) {
    let _ = write!(out, "# HELP {name} ");
    for ch in help.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = writeln!(out, "\n# TYPE {name} {}", kind.as_str());
}

/// `name{label="value",worker="N"} v`
fn sample(out: &mut String, name: &str, (label, value): (&str, &str), worker: usize, v: u64) {
    let _ = write!(out, "{name}{{{label}=\"");
    push_label_value(out, value);
    let _ = writeln!(out, "\",worker=\"{worker}\"}} {v}");
}

/// `name{port="p",pod="x",worker="N"} v` (no `pod` label for ports without a pod).
fn port_sample(out: &mut String, name: &str, port: &str, pod: Option<&str>, worker: usize, v: u64) {
    let _ = write!(out, "{name}{{port=\"");
    push_label_value(out, port);
    if let Some(p) = pod {
        out.push_str("\",pod=\"");
        push_label_value(out, p);
    }
    let _ = writeln!(out, "\",worker=\"{worker}\"}} {v}");
}

/// A label value with `\`, `"` and newline escaped, as the format requires.
fn push_label_value(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as Go's `ParseFloat` reads it: `NaN`, `+Inf`, `-Inf`, or Rust's shortest round-trip
/// decimal (never an exponent, and no `.0` on whole numbers).
fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

// ---------------------------------------------------------------------------------------------
// Serving
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics endpoint: cannot listen on {addr}: {source}{}", bind_hint(.source))]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("metrics endpoint: cannot start its thread: {0}")]
    Spawn(io::Error),
}

fn bind_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::AddrInUse => " (another socket holds that port: choose another, or port 0 for any free one)",
        io::ErrorKind::AddrNotAvailable => " (no interface of this host has that address)",
        io::ErrorKind::PermissionDenied => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
        _ => "",
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own until `stop` is set, answering each
/// scrape with what `render` returns (usually [`render`] over the daemon's counters, or the
/// last page its stats loop rendered). Returns the thread, which ends within about 50 ms of
/// `stop`, and the address actually bound (so port 0 can be used).
///
/// `GET /` answers with a pointer to `/metrics`, `GET /healthz` with 200 (see
/// [`serve_with_health`]), other paths with 404, other methods with 405.
pub fn serve(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    render: impl Fn() -> String + Send + Sync + 'static,
) -> Result<(JoinHandle<()>, SocketAddr), MetricsError> {
    serve_with_health(addr, stop, render, || true)
}

/// [`serve`], and `GET /healthz`: 200 `ok` while `healthy` says so (the daemon: while its
/// workers run), 503 otherwise, for a liveness probe.
pub fn serve_with_health(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    render: impl Fn() -> String + Send + Sync + 'static,
    healthy: impl Fn() -> bool + Send + Sync + 'static,
) -> Result<(JoinHandle<()>, SocketAddr), MetricsError> {
    let bind_err = |source| MetricsError::Bind { addr, source };
    let listener = TcpListener::bind(addr).map_err(bind_err)?;
    let bound = listener.local_addr().map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let thread = std::thread::Builder::new()
        .name("vr-metrics".into())
        .spawn(move || run(listener, &stop, &Pages { render: &render, healthy: &healthy }))
        .map_err(MetricsError::Spawn)?;
    Ok((thread, bound))
}

/// What the server answers with.
struct Pages<'a> {
    render: &'a dyn Fn() -> String,
    healthy: &'a dyn Fn() -> bool,
}

fn run(listener: TcpListener, stop: &AtomicBool, render: &Pages<'_>) {
    let mut conns: Vec<Conn> = Vec::with_capacity(MAX_CONNECTIONS);
    let mut accept_failing = false;
    while !stop.load(Relaxed) {
        let mut busy = false;
        // Bounded, so a connection flood cannot starve the open connections.
        for _ in 0..MAX_CONNECTIONS {
            match listener.accept() {
                Ok((stream, _)) => {
                    accept_failing = false;
                    busy = true;
                    admit(&mut conns, stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // Out of descriptors and the like: wait for the next pass.
                    if !accept_failing {
                        tracing::warn!("metrics endpoint: accept failed: {e}");
                        accept_failing = true;
                    }
                    break;
                }
            }
        }
        let now = Instant::now();
        conns.retain_mut(|c| match c.step(now, render) {
            Step::Waiting => true,
            Step::Progress => {
                busy = true;
                true
            }
            Step::Done => false,
        });
        std::thread::sleep(match () {
            _ if busy => Duration::ZERO,
            _ if conns.is_empty() => TICK_IDLE,
            _ => TICK_WAITING,
        });
    }
}

/// Adds `stream` to `conns`, making room if needed by closing the oldest connection that has not
/// sent its request (or failing that, one that has had its answer); drops `stream` instead if
/// all are being answered.
fn admit(conns: &mut Vec<Conn>, stream: TcpStream) {
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    if conns.len() >= MAX_CONNECTIONS {
        // Waiting for a request first, oldest first; then those lingering after their answer.
        let oldest = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| !matches!(c.state, State::Reply { .. }))
            .min_by_key(|(_, c)| (matches!(c.state, State::Linger), c.since))
            .map(|(i, _)| i);
        match oldest {
            Some(i) => drop(conns.swap_remove(i)),
            None => return,
        }
    }
    conns.push(Conn {
        stream,
        since: Instant::now(),
        deadline: Instant::now() + HEAD_TIMEOUT,
        state: State::Head(vec![]),
    });
}

struct Conn {
    stream: TcpStream,
    /// When it was accepted.
    since: Instant,
    /// When the current state gives up.
    deadline: Instant,
    state: State,
}

enum State {
    /// Reading the request head.
    Head(Vec<u8>),
    /// Writing the response.
    Reply { buf: Vec<u8>, sent: usize },
    /// Response written and our side shut: discarding input until the client closes.
    Linger,
}

enum Step {
    /// Nothing to do until the client acts.
    Waiting,
    /// Moved forward; worth another pass at once.
    Progress,
    /// Finished or failed: close it.
    Done,
}

impl Conn {
    fn step(&mut self, now: Instant, render: &Pages<'_>) -> Step {
        if now >= self.deadline {
            return Step::Done;
        }
        match &mut self.state {
            State::Head(head) => {
                let mut chunk = [0u8; 2048];
                let n = match self.stream.read(&mut chunk) {
                    Ok(0) => return Step::Done,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Waiting,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => return Step::Progress,
                    Err(_) => return Step::Done,
                };
                head.extend_from_slice(&chunk[..n]);
                let Some(reply) = answer(head, render) else {
                    return Step::Progress;
                };
                self.state = State::Reply { buf: reply, sent: 0 };
                self.deadline = now + WRITE_TIMEOUT;
                Step::Progress
            }
            State::Reply { buf, sent } => match self.stream.write(&buf[*sent..]) {
                Ok(0) => Step::Done,
                Ok(n) => {
                    *sent += n;
                    if *sent == buf.len() {
                        let _ = self.stream.shutdown(Shutdown::Write);
                        self.state = State::Linger;
                        self.deadline = now + LINGER;
                    }
                    Step::Progress
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Waiting,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Progress,
                Err(_) => Step::Done,
            },
            State::Linger => {
                let mut sink = [0u8; 2048];
                match self.stream.read(&mut sink) {
                    Ok(0) => Step::Done,
                    Ok(_) => Step::Progress,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Step::Waiting,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => Step::Progress,
                    Err(_) => Step::Done,
                }
            }
        }
    }
}

/// The response to the request whose head starts `head`, or `None` while the head is
/// incomplete and may still arrive.
fn answer(head: &[u8], pages: &Pages<'_>) -> Option<Vec<u8>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let (method, path) = match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => (req.method.unwrap_or(""), req.path.unwrap_or("")),
        Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return Some(response(431, "Request Header Fields Too Large", "text/plain", "request head too large\n"));
        }
        Err(_) => return Some(response(400, "Bad Request", "text/plain", "malformed request\n")),
    };
    if method != "GET" {
        return Some(response(405, "Method Not Allowed", "text/plain", "only GET is served\n"));
    }
    Some(match path.split(['?', '#']).next().unwrap_or("") {
        "/metrics" => response(200, "OK", CONTENT_TYPE, &(pages.render)()),
        "/healthz" if (pages.healthy)() => response(200, "OK", "text/plain", "ok\n"),
        "/healthz" => response(503, "Service Unavailable", "text/plain", "workers not running\n"),
        "/" => response(
            200,
            "OK",
            "text/html; charset=utf-8",
            "<html><head><title>vrouter</title></head><body><h1>vrouter</h1>\
             <p>Prometheus metrics are at <a href=\"/metrics\">/metrics</a>.</p></body></html>\n",
        ),
        _ => response(404, "Not Found", "text/plain", "not found; metrics are at /metrics\n"),
    })
}

fn response(code: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    let allow = if code == 405 { "Allow: GET\r\n" } else { "" };
    let mut r = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body.as_bytes());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Two workers, two named ports (and the unnamed rest of the counters' 4), a few counts.
    fn fixture() -> Vec<Arc<Counters>> {
        let (w0, w1) = (Counters::new(4), Counters::new(4));
        w0.rx(0, 100);
        w0.rx(0, 60);
        w0.tx(1, 60);
        w0.rx(3, 9999); // port 3 has no name: never shown
        w1.rx(1, 1500);
        w1.tx(0, 1500);
        w0.count_drop(DropReason::Ipv4BadChecksum);
        w0.count_drop(DropReason::Ipv4BadChecksum);
        w1.drop_n(DropReason::NoRoute, 3);
        w0.inc(&w0.icmp_errors_sent);
        w1.inc(&w1.ipip_encap);
        w1.inc(&w1.ipip_encap);
        vec![Arc::new(w0), Arc::new(w1)]
    }

    const PORTS: [&str; 2] = ["eth0", "tap-pod1"];

    fn fixture_text() -> String {
        let mut out = String::new();
        let extra = [Extra::routes(3), Extra::uptime(Duration::from_millis(90_500))];
        render(&mut out, "node-a", &PORTS, &fixture(), &extra);
        out
    }

    #[test]
    fn renders_fixture_exactly() {
        let head = concat!(
            "# HELP vrouter_node_info Constant 1, labelled with the node's name and the vrouter version.\n",
            "# TYPE vrouter_node_info gauge\n",
            "vrouter_node_info{node=\"node-a\",version=\"0.1.0\"} 1\n",
            "# HELP vrouter_port_receive_packets_total Frames received on a port.\n",
            "# TYPE vrouter_port_receive_packets_total counter\n",
            "vrouter_port_receive_packets_total{port=\"eth0\",worker=\"0\"} 2\n",
            "vrouter_port_receive_packets_total{port=\"eth0\",worker=\"1\"} 0\n",
            "vrouter_port_receive_packets_total{port=\"tap-pod1\",worker=\"0\"} 0\n",
            "vrouter_port_receive_packets_total{port=\"tap-pod1\",worker=\"1\"} 1\n",
            "# HELP vrouter_port_receive_bytes_total Bytes received on a port, Ethernet header included.\n",
            "# TYPE vrouter_port_receive_bytes_total counter\n",
            "vrouter_port_receive_bytes_total{port=\"eth0\",worker=\"0\"} 160\n",
            "vrouter_port_receive_bytes_total{port=\"eth0\",worker=\"1\"} 0\n",
            "vrouter_port_receive_bytes_total{port=\"tap-pod1\",worker=\"0\"} 0\n",
            "vrouter_port_receive_bytes_total{port=\"tap-pod1\",worker=\"1\"} 1500\n",
            "# HELP vrouter_port_transmit_packets_total Frames sent on a port.\n",
            "# TYPE vrouter_port_transmit_packets_total counter\n",
            "vrouter_port_transmit_packets_total{port=\"eth0\",worker=\"0\"} 0\n",
            "vrouter_port_transmit_packets_total{port=\"eth0\",worker=\"1\"} 1\n",
            "vrouter_port_transmit_packets_total{port=\"tap-pod1\",worker=\"0\"} 1\n",
            "vrouter_port_transmit_packets_total{port=\"tap-pod1\",worker=\"1\"} 0\n",
            "# HELP vrouter_port_transmit_bytes_total Bytes sent on a port, Ethernet header included.\n",
            "# TYPE vrouter_port_transmit_bytes_total counter\n",
            "vrouter_port_transmit_bytes_total{port=\"eth0\",worker=\"0\"} 0\n",
            "vrouter_port_transmit_bytes_total{port=\"eth0\",worker=\"1\"} 1500\n",
            "vrouter_port_transmit_bytes_total{port=\"tap-pod1\",worker=\"0\"} 60\n",
            "vrouter_port_transmit_bytes_total{port=\"tap-pod1\",worker=\"1\"} 0\n",
            "# HELP vrouter_drops_total Frames dropped, by reason (stable names, as in the stats file).\n",
            "# TYPE vrouter_drops_total counter\n",
        );
        // Every reason for both workers, in `DropReason::ALL` order; only these two are non-zero.
        let mut drops = String::new();
        for r in DropReason::ALL {
            for w in 0..2 {
                let n = match (r, w) {
                    (DropReason::Ipv4BadChecksum, 0) => 2,
                    (DropReason::NoRoute, 1) => 3,
                    _ => 0,
                };
                drops += &format!("vrouter_drops_total{{reason=\"{}\",worker=\"{w}\"}} {n}\n", r.name());
            }
        }
        let tail = concat!(
            "# HELP vrouter_icmp_errors_sent_total ICMP errors sent (time exceeded, destination unreachable, fragmentation needed).\n",
            "# TYPE vrouter_icmp_errors_sent_total counter\n",
            "vrouter_icmp_errors_sent_total{worker=\"0\"} 1\n",
            "vrouter_icmp_errors_sent_total{worker=\"1\"} 0\n",
            "# HELP vrouter_icmp_errors_ratelimited_total ICMP errors not sent because of the rate limit (RFC 1812 4.3.2.8).\n",
            "# TYPE vrouter_icmp_errors_ratelimited_total counter\n",
            "vrouter_icmp_errors_ratelimited_total{worker=\"0\"} 0\n",
            "vrouter_icmp_errors_ratelimited_total{worker=\"1\"} 0\n",
            "# HELP vrouter_arp_requests_sent_total ARP requests sent to resolve next hops.\n",
            "# TYPE vrouter_arp_requests_sent_total counter\n",
            "vrouter_arp_requests_sent_total{worker=\"0\"} 0\n",
            "vrouter_arp_requests_sent_total{worker=\"1\"} 0\n",
            "# HELP vrouter_arp_replies_sent_total ARP replies sent for the router's addresses.\n",
            "# TYPE vrouter_arp_replies_sent_total counter\n",
            "vrouter_arp_replies_sent_total{worker=\"0\"} 0\n",
            "vrouter_arp_replies_sent_total{worker=\"1\"} 0\n",
            "# HELP vrouter_ipip_encapsulated_packets_total Packets encapsulated in IPIP (RFC 2003) toward peer nodes.\n",
            "# TYPE vrouter_ipip_encapsulated_packets_total counter\n",
            "vrouter_ipip_encapsulated_packets_total{worker=\"0\"} 0\n",
            "vrouter_ipip_encapsulated_packets_total{worker=\"1\"} 2\n",
            "# HELP vrouter_ipip_decapsulated_packets_total IPIP packets from peer nodes decapsulated.\n",
            "# TYPE vrouter_ipip_decapsulated_packets_total counter\n",
            "vrouter_ipip_decapsulated_packets_total{worker=\"0\"} 0\n",
            "vrouter_ipip_decapsulated_packets_total{worker=\"1\"} 0\n",
            "# HELP vrouter_ipv4_fragmented_packets_total Packets fragmented to fit the egress MTU.\n",
            "# TYPE vrouter_ipv4_fragmented_packets_total counter\n",
            "vrouter_ipv4_fragmented_packets_total{worker=\"0\"} 0\n",
            "vrouter_ipv4_fragmented_packets_total{worker=\"1\"} 0\n",
            "# HELP vrouter_ipv4_fragments_created_total Fragments created by fragmenting packets.\n",
            "# TYPE vrouter_ipv4_fragments_created_total counter\n",
            "vrouter_ipv4_fragments_created_total{worker=\"0\"} 0\n",
            "vrouter_ipv4_fragments_created_total{worker=\"1\"} 0\n",
            "# HELP vrouter_punted_packets_total Packets punted to the host port.\n",
            "# TYPE vrouter_punted_packets_total counter\n",
            "vrouter_punted_packets_total{worker=\"0\"} 0\n",
            "vrouter_punted_packets_total{worker=\"1\"} 0\n",
            "# HELP vrouter_gso_frames_total Big segments from pods (TSO/USO) cut into wire-sized ones by software GSO.\n",
            "# TYPE vrouter_gso_frames_total counter\n",
            "vrouter_gso_frames_total{worker=\"0\"} 0\n",
            "vrouter_gso_frames_total{worker=\"1\"} 0\n",
            "# HELP vrouter_gso_segments_total Wire-sized segments made by software GSO.\n",
            "# TYPE vrouter_gso_segments_total counter\n",
            "vrouter_gso_segments_total{worker=\"0\"} 0\n",
            "vrouter_gso_segments_total{worker=\"1\"} 0\n",
            "# HELP vrouter_gro_merged_total Merged TCP segments (GRO) written to pods, each replacing several from the wire.\n",
            "# TYPE vrouter_gro_merged_total counter\n",
            "vrouter_gro_merged_total{worker=\"0\"} 0\n",
            "vrouter_gro_merged_total{worker=\"1\"} 0\n",
            "# HELP vrouter_gro_segments_total Segments from the wire merged by GRO.\n",
            "# TYPE vrouter_gro_segments_total counter\n",
            "vrouter_gro_segments_total{worker=\"0\"} 0\n",
            "vrouter_gro_segments_total{worker=\"1\"} 0\n",
            "# HELP vrouter_gro_bad_checksum_total TCP segments from the wire with a wrong checksum, passed to the pod unmerged for it to drop.\n",
            "# TYPE vrouter_gro_bad_checksum_total counter\n",
            "vrouter_gro_bad_checksum_total{worker=\"0\"} 0\n",
            "vrouter_gro_bad_checksum_total{worker=\"1\"} 0\n",
            "# HELP vrouter_checksums_completed_total Partial transport checksums from pods completed before a wire.\n",
            "# TYPE vrouter_checksums_completed_total counter\n",
            "vrouter_checksums_completed_total{worker=\"0\"} 0\n",
            "vrouter_checksums_completed_total{worker=\"1\"} 0\n",
            "# HELP vrouter_handed_off_total Frames passed to the worker that owns their flow (several workers with stateful policy).\n",
            "# TYPE vrouter_handed_off_total counter\n",
            "vrouter_handed_off_total{worker=\"0\"} 0\n",
            "vrouter_handed_off_total{worker=\"1\"} 0\n",
            "# HELP vrouter_fib_routes Routes installed in the FIB.\n",
            "# TYPE vrouter_fib_routes gauge\n",
            "vrouter_fib_routes 3\n",
            "# HELP vrouter_uptime_seconds Seconds since the daemon started.\n",
            "# TYPE vrouter_uptime_seconds gauge\n",
            "vrouter_uptime_seconds 90.5\n",
        );
        let text = fixture_text();
        assert!(text.contains("vrouter_drops_total{reason=\"ipv4/bad-checksum\",worker=\"0\"} 2\n"));
        assert!(text.contains("vrouter_drops_total{reason=\"fib/no-route\",worker=\"1\"} 3\n"));
        assert_eq!(text, format!("{head}{drops}{tail}"));
    }

    #[test]
    fn every_drop_reason_is_emitted_for_every_worker_even_at_zero() {
        let counters: Vec<_> = (0..3).map(|_| Arc::new(Counters::new(1))).collect();
        let mut text = String::new();
        render(&mut text, "n", &[] as &[&str], &counters, &[]);
        for r in DropReason::ALL {
            for w in 0..3 {
                let line = format!("vrouter_drops_total{{reason=\"{}\",worker=\"{w}\"}} 0\n", r.name());
                assert!(text.contains(&line), "missing {line}");
            }
        }
        let drop_lines = text.lines().filter(|l| l.starts_with("vrouter_drops_total{")).count();
        assert_eq!(drop_lines, 3 * DropReason::COUNT);
    }

    #[test]
    fn escapes_label_values_and_help() {
        let counters = [Arc::new(Counters::new(1))];
        let extra = [Extra::gauge("vrouter_test", "a \\ back\nslash", 1.0)];
        let mut text = String::new();
        render(&mut text, "n\"ode\\1\n", &["p\"o\\rt\n0"], &counters, &extra);
        assert!(text.contains("vrouter_node_info{node=\"n\\\"ode\\\\1\\n\",version="), "{text}");
        assert!(text.contains("vrouter_port_receive_packets_total{port=\"p\\\"o\\\\rt\\n0\",worker=\"0\"} 0\n"));
        assert!(text.contains("# HELP vrouter_test a \\\\ back\\nslash\n"));
        // Nothing unescaped leaked a line break: every line is a comment or a sample.
        assert!(text
            .lines()
            .all(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE ") || l.starts_with("vrouter_")));
    }

    #[test]
    fn leaves_out_unnamed_duplicate_and_missing_ports() {
        let counters = [Arc::new(Counters::new(3))];
        let mut text = String::new();
        // Port 1 unnamed, port 2 repeats port 0's name, port 3 is beyond the counters.
        render(&mut text, "n", &["eth0", "", "eth0", "tap9"], &counters, &[]);
        let rx: Vec<&str> = text.lines().filter(|l| l.starts_with("vrouter_port_receive_packets_total{")).collect();
        assert_eq!(rx, ["vrouter_port_receive_packets_total{port=\"eth0\",worker=\"0\"} 0"]);
    }

    #[test]
    fn rejects_unusable_extra_names() {
        let ok = Extra::gauge("vrouter_x", "", 0.0);
        assert_eq!(extra_problem(&ok, &[]), None);
        assert_eq!(extra_problem(&Extra::counter("vrouter_x_total", "", 0.0), &[]), None);
        for bad in [
            Extra::gauge("x", "", 0.0),                     // no prefix
            Extra::gauge("vrouter_a-b", "", 0.0),           // invalid character
            Extra::gauge("vrouter_x_total", "", 0.0),       // gauge named like a counter
            Extra::counter("vrouter_x", "", 0.0),           // counter without _total
            Extra::counter("vrouter_drops_total", "", 0.0), // built-in family
        ] {
            assert!(extra_problem(&bad, &[]).is_some(), "{bad:?}");
        }
        assert!(extra_problem(&ok, &[ok]).is_some(), "duplicate");
    }

    #[test]
    fn formats_values_as_go_parses_them() {
        let cases =
            [(3.0, "3"), (90.5, "90.5"), (f64::NAN, "NaN"), (f64::INFINITY, "+Inf"), (f64::NEG_INFINITY, "-Inf")];
        for (v, want) in cases {
            let mut s = String::new();
            push_value(&mut s, v);
            assert_eq!(s, want);
        }
    }

    /// Structure the format requires and a loose parser would not notice: each family's HELP
    /// and TYPE come once, before its samples, and its samples are contiguous.
    #[test]
    fn families_are_declared_once_and_contiguous() {
        let text = fixture_text();
        let (mut helped, mut typed, mut done) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut current: Option<&str> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(helped.insert(name), "second HELP for {name}");
                if let Some(prev) = current.replace(name) {
                    done.insert(prev);
                }
                assert!(!done.contains(name), "{name} resumed after another family");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert_eq!(Some(name), current, "TYPE right after HELP");
                assert!(typed.insert(name), "second TYPE for {name}");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                assert_eq!(Some(name), current, "sample {line} outside its family");
                assert!(typed.contains(name));
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn an_independent_parser_reads_the_values() {
        let text = fixture_text();
        let lines = text.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("parses");
        let samples = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(scrape.samples.len(), samples, "a sample was skipped as unreadable");
        let value = |metric: &str, labels: &[(&str, &str)]| -> prometheus_parse::Value {
            let found: Vec<_> = scrape
                .samples
                .iter()
                .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
                .collect();
            assert_eq!(found.len(), 1, "{metric} {labels:?}");
            found[0].value.clone()
        };
        use prometheus_parse::Value::{Counter, Gauge};
        assert_eq!(value("vrouter_port_receive_bytes_total", &[("port", "eth0"), ("worker", "0")]), Counter(160.0));
        assert_eq!(value("vrouter_port_transmit_bytes_total", &[("port", "eth0"), ("worker", "1")]), Counter(1500.0));
        assert_eq!(value("vrouter_drops_total", &[("reason", "ipv4/bad-checksum"), ("worker", "0")]), Counter(2.0));
        assert_eq!(value("vrouter_drops_total", &[("reason", "fib/no-route"), ("worker", "1")]), Counter(3.0));
        assert_eq!(value("vrouter_drops_total", &[("reason", "tx/full"), ("worker", "1")]), Counter(0.0));
        assert_eq!(value("vrouter_ipip_encapsulated_packets_total", &[("worker", "1")]), Counter(2.0));
        assert_eq!(value("vrouter_node_info", &[("node", "node-a")]), Gauge(1.0));
        assert_eq!(value("vrouter_fib_routes", &[]), Gauge(3.0));
        assert_eq!(value("vrouter_uptime_seconds", &[]), Gauge(90.5));
        let families = PORT_FAMILIES.iter().map(|f| f.name).chain(WORKER_COUNTERS.iter().map(|f| f.metric));
        for name in families.chain([NODE_INFO, DROPS, "vrouter_fib_routes", "vrouter_uptime_seconds"]) {
            assert!(scrape.docs.contains_key(name), "no HELP for {name}");
        }
        let reasons: HashSet<&str> =
            scrape.samples.iter().filter(|s| s.metric == DROPS).filter_map(|s| s.labels.get("reason")).collect();
        assert_eq!(reasons, DropReason::ALL.iter().map(|r| r.name()).collect());
    }

    #[test]
    fn per_port_series_carry_the_pod_name() {
        let counters = [Arc::new(Counters::new(3))];
        counters[0].rx(2, 60);
        let mut text = String::new();
        render_with_pods(&mut text, "n", &["up0", "", "tapa"], &[None, None, Some("web-1")], &counters, &[]);
        assert!(text.contains("vrouter_port_receive_packets_total{port=\"up0\",worker=\"0\"} 0\n"), "{text}");
        assert!(
            text.contains("vrouter_port_receive_packets_total{port=\"tapa\",pod=\"web-1\",worker=\"0\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("vrouter_port_transmit_bytes_total{port=\"tapa\",pod=\"web-1\",worker=\"0\"} 0\n"),
            "{text}"
        );
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
        assert!(scrape.samples.iter().any(|s| s.labels.get("pod") == Some("web-1")));
    }

    #[test]
    fn healthz_says_whether_the_workers_run() {
        let (up, down) = (|| true, || false);
        let page = String::new;
        let get = |healthy: &dyn Fn() -> bool| {
            let r = answer(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", &Pages { render: &page, healthy }).unwrap();
            String::from_utf8(r).unwrap()
        };
        let ok = get(&up);
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n") && ok.ends_with("\r\n\r\nok\n"), "{ok}");
        let bad = get(&down);
        assert!(bad.starts_with("HTTP/1.1 503 Service Unavailable\r\n"), "{bad}");
    }

    // --- HTTP ---

    fn start() -> (Arc<AtomicBool>, JoinHandle<()>, SocketAddr) {
        let stop = Arc::new(AtomicBool::new(false));
        let (thread, addr) =
            serve("127.0.0.1:0".parse().unwrap(), stop.clone(), || "vrouter_x 1\n".to_string()).expect("serve");
        assert_ne!(addr.port(), 0);
        (stop, thread, addr)
    }

    /// Sends `request`, returns the whole response (the server closes after one).
    fn exchange(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    fn stop_within(stop: &AtomicBool, thread: JoinHandle<()>, limit: Duration) {
        let t = Instant::now();
        stop.store(true, Relaxed);
        thread.join().unwrap();
        assert!(t.elapsed() < limit, "took {:?} to stop", t.elapsed());
    }

    #[test]
    fn serves_metrics_root_404_and_405() {
        let (stop, thread, addr) = start();
        let r = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n");
        let (head, body) = r.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"), "{r}");
        assert!(head.contains("\r\nContent-Length: 12\r\n"), "{r}");
        assert_eq!(body, "vrouter_x 1\n");

        let r = exchange(addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.ends_with("\r\n\r\nvrouter_x 1\n"), "{r}");
        let r = exchange(addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("href=\"/metrics\""), "{r}");
        assert!(exchange(addr, "GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 Not Found\r\n"));
        let r = exchange(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        assert!(r.starts_with("HTTP/1.1 405 Method Not Allowed\r\n") && r.contains("\r\nAllow: GET\r\n"), "{r}");
        assert!(exchange(addr, "HEAD /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405 "));
        assert!(exchange(addr, "\u{1}\u{2} nonsense\r\n\r\n").starts_with("HTTP/1.1 400 "));
        let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(exchange(addr, &huge).starts_with("HTTP/1.1 431 "));
        stop_within(&stop, thread, Duration::from_millis(250));
    }

    #[test]
    fn silent_clients_do_not_hold_up_others_nor_stop() {
        let (stop, thread, addr) = start();
        // One that sends nothing, one that sends half a request: both stay open.
        let _silent = TcpStream::connect(addr).unwrap();
        let mut partial = TcpStream::connect(addr).unwrap();
        partial.write_all(b"GET /metr").unwrap();
        let t = Instant::now();
        assert!(exchange(addr, "GET /metrics HTTP/1.1\r\n\r\n").ends_with("vrouter_x 1\n"));
        assert!(t.elapsed() < Duration::from_secs(1), "served after {:?}", t.elapsed());
        // More silent clients than the server keeps: the oldest make way, a scrape still works.
        let crowd: Vec<_> = (0..MAX_CONNECTIONS + 4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        assert!(exchange(addr, "GET /metrics HTTP/1.1\r\n\r\n").ends_with("vrouter_x 1\n"));
        stop_within(&stop, thread, Duration::from_millis(250));
        drop(crowd);
    }

    #[test]
    fn bind_error_names_the_address() {
        let (stop, thread, addr) = start();
        let err = serve(addr, Arc::new(AtomicBool::new(false)), String::new).map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&addr.to_string()) && msg.contains("another socket holds that port"), "{msg}");
        stop_within(&stop, thread, Duration::from_millis(250));
    }
}
