//! What the BIRD tests share: intents, real BIRDs in network namespaces (root), waiting.
//!
//! Namespaces are named `vbgp-<pid>-<n>-<node>` and deleted on drop, even on panic; each BIRD
//! runs in the foreground (`-f`) as a child with its own socket, pidfile and log in the lab's
//! temporary directory, and is killed on drop. Declare BIRDs after their [`Lab`]: they drop
//! first.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use vrouter_bgp::{BfdTiming, BgpIntent, BgpPeer, Birdc, PeerRole, PeerStatus};

/// Why this test cannot run here, if it cannot: a failure under CI (`CI` set: CI runs as root
/// with BIRD installed, and a test that did not run must not pass), a skip only when
/// `VROUTER_ALLOW_SKIP` is set by someone who knows they are skipping, a failure otherwise.
pub fn skip(root: bool) -> Option<String> {
    let why = if root && !nix_is_root() {
        Some("needs root (network namespaces)".to_string())
    } else {
        ["bird", "ip"]
            .iter()
            .find(|t| {
                !Command::new("sh")
                    .args(["-c", &format!("command -v {t} >/dev/null")])
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .map(|t| format!("{t} is not installed (Debian: bird2, iproute2)"))
    }?;
    assert!(std::env::var_os("CI").is_none(), "cannot run under CI: {why}");
    assert!(
        std::env::var_os("VROUTER_ALLOW_SKIP").is_some(),
        "cannot run: {why} (set VROUTER_ALLOW_SKIP=1 to skip knowingly)"
    );
    eprintln!("SKIP: {why}");
    Some(why)
}

fn nix_is_root() -> bool {
    // Without a libc dependency: the effective UID from /proc.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

pub fn peer(name: &str, addr: &str, asn: u32, role: PeerRole) -> BgpPeer {
    BgpPeer { name: name.into(), ip: ip(addr), asn, role, password: None, bfd: false }
}

/// A node of AS 64512 in pool 10.244.0.0/16, learned routes to table 100 through `device`.
pub fn intent(node: &str, node_ip: &str, device: &str, blocks: &[&str], peers: Vec<BgpPeer>) -> BgpIntent {
    BgpIntent {
        node: node.into(),
        node_ip: ip(node_ip),
        asn: 64512,
        export_blocks: blocks.iter().map(|b| b.parse().unwrap()).collect(),
        pools: vec!["10.244.0.0/16".parse().unwrap()],
        kernel_table: 100,
        device: device.into(),
        route_reflector_cluster_id: None,
        peers,
        bfd: BfdTiming::default(),
        graceful_restart_secs: 120,
    }
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn ok(args: &[&str]) {
    let o = run(args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
}

/// Polls `f` every 20 ms until it holds; how long that took, or a failure naming `what`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if f() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Namespaces and a temporary directory, removed on drop.
pub struct Lab {
    pub prefix: String,
    pub dir: PathBuf,
    namespaces: Vec<String>,
}

impl Lab {
    pub fn new(tag: &str) -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let prefix = format!("vbgp-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(format!("{prefix}-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Lab { prefix, dir, namespaces: Vec::new() }
    }

    /// A new namespace (loopback up); its full name.
    pub fn netns(&mut self, node: &str) -> String {
        let name = format!("{}-{node}", self.prefix);
        ok(&["ip", "netns", "add", &name]);
        self.namespaces.push(name.clone());
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }

    /// A veth pair between two namespaces, each end named and addressed (`a.b.c.d/len`, or
    /// empty for none) and up.
    pub fn veth(&self, (ns_a, if_a, addr_a): (&str, &str, &str), (ns_b, if_b, addr_b): (&str, &str, &str)) {
        ok(&["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b, "netns", ns_b]);
        for (ns, dev, addr) in [(ns_a, if_a, addr_a), (ns_b, if_b, addr_b)] {
            if !addr.is_empty() {
                ok(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            }
            ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
    }

    /// A bridge `br0` in namespace `sw` (created here) with every `(namespace, device, address)`
    /// on it: one subnet.
    pub fn lan(&mut self, members: &[(&str, &str, &str)]) -> String {
        let sw = self.netns("sw");
        ok(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"]);
        ok(&["ip", "-n", &sw, "link", "set", "br0", "up"]);
        for (i, (ns, dev, addr)) in members.iter().enumerate() {
            let port = format!("p{i}");
            self.veth((ns, dev, addr), (&sw, &port, ""));
            ok(&["ip", "-n", &sw, "link", "set", &port, "master", "br0"]);
        }
        sw
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut a = vec!["ip", "netns", "exec", ns];
        a.extend_from_slice(args);
        run(&a)
    }

    /// `ip route show table N` of a namespace.
    pub fn table(&self, ns: &str, table: u32) -> String {
        let o = run(&["ip", "-n", ns, "route", "show", "table", &table.to_string()]);
        // A table without routes does not exist.
        if !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("FIB table does not exist") {
            return String::new();
        }
        assert!(o.status.success(), "{}", text(&o));
        // The pools' own unreachable routes (always there) are left out: what was learned.
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with("unreachable "))
            .map(|l| format!("{l}\n"))
            .collect()
    }

    /// The line of table 100 for `prefix`, if it has one.
    pub fn route(&self, ns: &str, prefix: &str) -> Option<String> {
        self.table(ns, 100)
            .lines()
            .find(|l| l.split_whitespace().next() == Some(prefix))
            .map(|l| l.trim_end().to_string())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A BIRD in a namespace, killed on drop.
pub struct Bird {
    pub name: String,
    pub ns: String,
    pub conf: PathBuf,
    pub sock: PathBuf,
    pub pidfile: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Bird {
    /// Renders `intent` into `<dir>/<name>.conf` and starts BIRD on it in `ns`.
    pub fn start(lab: &Lab, ns: &str, name: &str, intent: &BgpIntent) -> Bird {
        let conf = lab.dir.join(format!("{name}.conf"));
        vrouter_bgp::install(&conf, &vrouter_bgp::render(intent).unwrap()).unwrap();
        let mut b = Bird {
            name: name.into(),
            ns: ns.into(),
            sock: lab.dir.join(format!("{name}.ctl")),
            pidfile: lab.dir.join(format!("{name}.pid")),
            log: lab.dir.join(format!("{name}.log")),
            conf,
            child: None,
        };
        b.spawn(&[]);
        b
    }

    /// Starts (again) with these extra arguments (`-R` after a graceful restart); waits until
    /// it answers on its socket.
    pub fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let (conf, sock, pid) = (path(&self.conf), path(&self.sock), path(&self.pidfile));
        let mut args = vec!["netns", "exec", &self.ns, "bird", "-f", "-c", conf, "-s", sock, "-P", pid];
        args.extend_from_slice(extra);
        // `ip netns exec` execs BIRD in place: the child is BIRD.
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let c = self.birdc();
        let what = format!("BIRD {} answering (its log: {})", self.name, self.log.display());
        wait_until(&what, Duration::from_secs(10), || c.status().is_ok());
    }

    pub fn birdc(&self) -> Birdc {
        Birdc::new(&self.sock)
    }

    /// BIRD's process ID (the child, which `-P` also names).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process still runs (reaps it if it exited).
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit by itself (after `graceful restart` or `down`).
    pub fn wait_exit(&mut self, limit: Duration) {
        wait_until(&format!("BIRD {} to exit", self.name), limit, || !self.running());
        self.child = None;
    }

    /// Writes a new config for `intent` over the file BIRD reads, and `configure`s.
    pub fn reconfigure(&self, intent: &BgpIntent) -> vrouter_bgp::ConfigureOutcome {
        assert!(vrouter_bgp::install(&self.conf, &vrouter_bgp::render(intent).unwrap()).unwrap(), "no change");
        self.birdc().configure().unwrap_or_else(|e| panic!("{e}\n{}", self.log_text()))
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        self.birdc().peers().unwrap_or_else(|e| panic!("{e}"))
    }

    /// The session named `protocol`.
    pub fn peer(&self, protocol: &str) -> PeerStatus {
        let peers = self.peers();
        peers.iter().find(|p| p.name == protocol).cloned().unwrap_or_else(|| panic!("no {protocol} in {peers:#?}"))
    }

    pub fn established(&self, protocol: &str) -> bool {
        self.peer(protocol).established()
    }
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `ip monitor route` of a namespace into a file, stopped on drop.
pub struct Monitor(Option<Child>);

impl Monitor {
    pub fn start(ns: &str, out: &Path) -> Monitor {
        let f = std::fs::File::create(out).unwrap();
        let child =
            Command::new("ip").args(["-n", ns, "monitor", "route"]).stdout(f).stderr(Stdio::null()).spawn().unwrap();
        // Let it subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(200));
        Monitor(Some(child))
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}
